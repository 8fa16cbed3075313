//! The store's objects: opening and creating a store on a [`Backend`], its layout, its
//! documents, prefix resolution, locks, and what can be known about a store that cannot be
//! written.

pub(crate) mod capability;
pub(crate) mod documents;
pub(crate) mod host;
pub(crate) mod layout;
pub(crate) mod location;
pub(crate) mod lock;
pub(crate) mod objects;
pub(crate) mod readonly;
pub(crate) mod resolve;
pub(crate) mod tags;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use blocksnap_backend::{Backend, LocalBackend};
use blocksnap_chunker::ChunkerParams;
use blocksnap_manifest::{ChunkerDoc, ConfigDoc, Document};

use crate::error::{Result, StoreError};

pub use objects::{DamageWarnings, DamagedDoc};

/// Default average chunk size (see docs/CHUNKING.md for the measurements behind it).
pub const DEFAULT_CHUNK_SIZE: u32 = 32 * 1024;
/// Default pack size.
pub const DEFAULT_PACK_SIZE: u64 = 32 << 20;
/// Default zstd level.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// Where a store lives, for messages and for what only a local directory has (its index
/// migration, the read-only probe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A local directory.
    Local(PathBuf),
    /// Anything else, by its URL.
    Remote(String),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Local(p) => write!(f, "{}", p.display()),
            Place::Remote(u) => f.write_str(u),
        }
    }
}

/// An open store: its objects behind a [`Backend`], its configuration, and what this process
/// learned about it (damaged documents it skipped, whether it can be written).
pub struct Store {
    backend: Arc<dyn Backend>,
    place: Place,
    config: ConfigDoc,
    /// Documents found damaged while listing (skipped, reported once through a [`crate::Progress`]).
    pub(crate) damaged: Arc<objects::DamageLog>,
    /// Why the store cannot be written, once asked (see `readonly.rs`).
    pub(crate) read_only: OnceLock<Option<String>>,
    /// True once a reader was told that no lock could be taken.
    pub(crate) read_only_noted: AtomicBool,
    /// The locks this process holds on the store, checked before each commit point (see
    /// `lock.rs`).
    pub(crate) held_locks: std::sync::Mutex<Vec<std::sync::Weak<lock::Held>>>,
    /// How locks are refreshed and when they are stale (from the environment, once).
    pub(crate) lock_timing: OnceLock<lock::LockTiming>,
    /// Where the per-user caches of stores live (default `$XDG_CACHE_HOME`, see
    /// [`Store::with_cache_home`]).
    cache_home: PathBuf,
    /// Where this client keeps its identities and trust state of stores (default
    /// `$XDG_CONFIG_HOME`, see [`Store::with_config_home`]).
    config_home: PathBuf,
    /// What this client pinned about the store (see `access/trust.rs`).
    pub(crate) trust: crate::access::trust::Trust,
    /// The last listing of the packs, and when it was made (see `Store::list_packs_recent`).
    pub(crate) packs_listed:
        std::sync::Mutex<Option<(std::time::Instant, Vec<crate::packs::PackInfo>)>>,
    /// Documents read once per command (see [`objects::DocCache`]).
    pub(crate) doc_cache: objects::DocCache,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("place", &self.place)
            .field("id", &self.config.id)
            .finish()
    }
}

/// The local backend of the directory `path`: temporary files it makes are registered with
/// [`crate::cancel`], so that a process ended by a second signal removes them.
pub(crate) fn local_backend(path: &Path) -> LocalBackend {
    LocalBackend::new(path).with_temp_hook(Arc::new(|p: &Path| {
        crate::cancel::register(crate::cancel::Kind::Temp, p);
    }))
}

impl Store {
    /// True if `path` holds a store (has a `config`).
    pub fn exists(path: &Path) -> bool {
        crate::repo::location::local_store_path(path).is_ok_and(|p| p.join("config").is_file())
    }

    /// Opens the store in the local directory `path`. A directory holding a store's data but
    /// no `config` (or a damaged one) is an error saying what is missing and how to recover it.
    pub fn open(path: &Path) -> Result<Store> {
        let path = &crate::repo::location::local_store_path(path)?;
        Self::open_in(Arc::new(local_backend(path)), Place::Local(path.clone()))
    }

    /// Opens the store in `backend`.
    pub fn open_in(backend: Arc<dyn Backend>, place: Place) -> Result<Store> {
        let described = |key: &str| describe(&place, key);
        let bytes = match backend.get_bounded(CONFIG, objects::MAX_DOCUMENT_LEN) {
            Ok(b) => b,
            Err(blocksnap_backend::BackendError::TooLarge { size, max, .. }) => {
                return Err(StoreError::Damaged(format!(
                    "{}: it is {size} bytes long, more than a config can be ({max} bytes): it \
                     was not read, and the store cannot be opened without it. {}",
                    described(CONFIG),
                    recovery_hint(&place)
                )));
            }
            Err(e) if e.is_not_found() => {
                if let Some(held) = objects::store_data_held(&*backend) {
                    return Err(StoreError::Damaged(format!(
                        "the store at {place} has lost its config file {} (it still holds \
                         {held}): it cannot be opened without it. {} Do not run `init` there: a \
                         new store cannot read this data.",
                        described(CONFIG),
                        recovery_hint(&place)
                    )));
                }
                return Err(StoreError::Usage(format!(
                    "no blocksnap store at {place}: create one with `blocksnap --store {place} init`"
                )));
            }
            Err(e) => return Err(StoreError::backend(e)),
        };
        let config = ConfigDoc::from_json(&bytes).map_err(|e| {
            StoreError::Damaged(format!(
                "{}: {e}; the store cannot be opened without it. {}",
                described(CONFIG),
                recovery_hint(&place)
            ))
        })?;
        Ok(Store::with_config(backend, place, config))
    }

    /// A store in `backend` with `config`, as read (or about to be written).
    pub(crate) fn with_config(backend: Arc<dyn Backend>, place: Place, config: ConfigDoc) -> Store {
        Store {
            backend,
            place,
            config,
            damaged: Arc::default(),
            read_only: OnceLock::new(),
            read_only_noted: AtomicBool::new(false),
            held_locks: Default::default(),
            lock_timing: OnceLock::new(),
            cache_home: cache_home(),
            config_home: config_home(),
            trust: Default::default(),
            packs_listed: Default::default(),
            doc_cache: Default::default(),
        }
    }

    /// The same store keeping this client's identities and trust state under `dir` instead of
    /// `$XDG_CONFIG_HOME`: for tests and embedders that run several clients in one process.
    pub fn with_config_home(mut self, dir: impl Into<PathBuf>) -> Store {
        self.config_home = dir.into();
        self
    }

    /// This client's directory for the store: `$XDG_CONFIG_HOME/blocksnap/<store id>/`
    /// (identities, trust state).
    pub fn client_dir(&self) -> PathBuf {
        self.config_home
            .join("blocksnap")
            .join(self.config.id.to_string())
    }

    /// The same store keeping its cache (the dedup index) under `dir` instead of
    /// `$XDG_CACHE_HOME`: for tests and embedders that run several stores in one process.
    pub fn with_cache_home(mut self, dir: impl Into<PathBuf>) -> Store {
        self.cache_home = dir.into();
        self
    }

    /// The backend holding the store's objects.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Where the store lives.
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// The local directory of the store, if it is one.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.place {
            Place::Local(p) => Some(p),
            Place::Remote(_) => None,
        }
    }

    /// The object `key` as a person finds it: its path in a local store, else its URL.
    pub fn describe(&self, key: &str) -> String {
        describe(&self.place, key)
    }

    /// The store's configuration.
    pub fn config(&self) -> &ConfigDoc {
        &self.config
    }

    /// The chunker parameters of this store.
    pub fn chunker_params(&self) -> ChunkerParams {
        let c = self.config.chunker;
        ChunkerParams {
            kind: c.kind,
            min: c.min,
            avg: c.avg,
            max: c.max,
        }
    }

    /// The chunker for data under `codec`: FastCDC with its gear table seeded from the key when
    /// the store says so (stores made since 2026-12-02), else the published table.
    pub(crate) fn chunker_for(
        &self,
        codec: &blocksnap_pack::ChunkCodec,
    ) -> std::result::Result<blocksnap_chunker::Chunker, blocksnap_chunker::ParamsError> {
        let seed = if self.config.chunker.seeded {
            codec.chunker_seed().unwrap_or(0)
        } else {
            0
        };
        blocksnap_chunker::Chunker::with_seed(self.chunker_params(), seed)
    }

    /// Where an account's identity lives unless `--identity` says otherwise:
    /// `$XDG_CONFIG_HOME/blocksnap/<store id>/<account>.key`.
    pub fn default_identity_path(&self, account: &str) -> PathBuf {
        self.client_dir().join(format!("{account}.key"))
    }

    /// This store's local cache: `$XDG_CACHE_HOME/blocksnap/<store id>/` (the dedup index).
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_home
            .join("blocksnap")
            .join(self.config.id.to_string())
    }
}

pub(crate) use layout::CONFIG;

/// `key` of the store at `place` as a person finds it.
pub(crate) fn describe(place: &Place, key: &str) -> String {
    match place {
        Place::Local(p) => p.join(key).display().to_string(),
        Place::Remote(u) => format!("{}/{key}", u.trim_end_matches('/')),
    }
}

/// How to bring back a lost or damaged `config`, account or key document of the store at `place`.
pub(crate) fn recovery_hint(place: &Place) -> String {
    format!(
        "To recover, run `blocksnap --store {place} recovery import FILE` with the file `blocksnap \
         recovery export FILE` wrote (it puts back the config, account and key documents that are \
         missing or damaged, and never replaces a good one), or copy them back from a backup of \
         the store."
    )
}

/// The chunker settings `p` as documents record them.
pub(crate) fn chunker_doc(p: ChunkerParams) -> ChunkerDoc {
    ChunkerDoc {
        kind: p.kind,
        min: p.min,
        avg: p.avg,
        max: p.max,
        seeded: false,
    }
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_home() -> PathBuf {
    env_dir("XDG_CONFIG_HOME", ".config")
}

/// `$XDG_CACHE_HOME`, else `~/.cache`.
pub fn cache_home() -> PathBuf {
    env_dir("XDG_CACHE_HOME", ".cache")
}

/// `$XDG_DATA_HOME`, else `~/.local/share`.
pub fn data_home() -> PathBuf {
    env_dir("XDG_DATA_HOME", ".local/share")
}

fn env_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() && Path::new(&v).is_absolute() => PathBuf::from(v),
        _ => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(fallback),
    }
}

/// The default store: `$XDG_DATA_HOME/blocksnap/store`.
pub fn default_store_path() -> PathBuf {
    data_home().join("blocksnap").join("store")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitOptions, NoProgress, SnapshotOptions};

    /// A new encrypted store seeds FastCDC from its key: two stores cut the same bytes at
    /// different points, each always at the same ones; a store made before keeps the published
    /// table (its dedup carries on).
    #[test]
    fn new_stores_seed_the_chunker_from_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let opts = InitOptions {
                account: "alice".into(),
                identity: Some(dir.path().join(format!("{name}.key"))),
                config_home: Some(dir.path().join("config")),
                ..InitOptions::default()
            };
            let (store, report) = Store::init(&dir.path().join(name), &opts).unwrap();
            let access = store.access(Some("alice"), Some(&report.identity)).unwrap();
            let codec = store.codec(&access, report.key).unwrap();
            (store, codec)
        };
        let (a, codec_a) = make("a");
        let (b, codec_b) = make("b");
        assert!(a.config().chunker.seeded);
        let mut x = 7u64;
        let data: Vec<u8> = (0..1_000_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        let cuts = |s: &Store, c| s.chunker_for(c).unwrap().cut(&data, 0, true);
        assert_eq!(cuts(&a, &codec_a), cuts(&a, &codec_a));
        assert_ne!(cuts(&a, &codec_a), cuts(&b, &codec_b));
        let published = blocksnap_chunker::Chunker::new(a.chunker_params())
            .unwrap()
            .cut(&data, 0, true);
        assert_ne!(cuts(&a, &codec_a), published);
        let mut older = a.config().clone();
        older.chunker.seeded = false;
        let older = Store::with_config(a.backend().clone(), a.place().clone(), older);
        assert_eq!(cuts(&older, &codec_a), published);
    }

    #[test]
    fn init_open_snapshot_restore_through_the_library() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            account: "alice".into(),
            identity: Some(dir.path().join("alice.key")),
            config_home: Some(dir.path().join("config")),
            chunk_size: 16 * 1024,
            ..InitOptions::default()
        };
        let (store, report) = Store::init(&dir.path().join("store"), &opts).unwrap();
        assert!(report.key.is_some());
        assert!(Store::init(&dir.path().join("store"), &opts).is_err());
        let store2 = Store::open(store.local_root().unwrap()).unwrap();
        assert_eq!(store2.config(), store.config());
        let access = store
            .access(Some("alice"), Some(&dir.path().join("alice.key")))
            .unwrap();
        let img = dir.path().join("disk.img");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        std::fs::write(&img, &data).unwrap();
        let snap = store
            .snapshot(
                &access,
                &SnapshotOptions {
                    source: img.clone(),
                    ..Default::default()
                },
                &NoProgress,
            )
            .unwrap();
        assert_eq!(snap.volume, "disk.img");
        assert_eq!(snap.bytes_new, data.len() as u64);
        let out = dir.path().join("out.img");
        let r = store
            .restore(&access, &snap.id.to_string()[..10], &out, &NoProgress)
            .unwrap();
        assert_eq!(r.size, data.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert_eq!(
            store.latest_snapshot("disk.img").unwrap().unwrap().id,
            snap.id
        );
    }

    #[test]
    fn unknown_store_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(&dir.path().join("nothing")).unwrap_err();
        assert!(err.to_string().contains("init"), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::Usage);
    }
}
