//! The store's objects: opening and creating a store on a [`Backend`], its layout, its
//! documents, prefix resolution, locks, and what can be known about a store that cannot be
//! written.

pub(crate) mod documents;
pub(crate) mod host;
pub(crate) mod layout;
pub(crate) mod location;
pub(crate) mod lock;
pub(crate) mod objects;
pub(crate) mod readonly;
pub(crate) mod resolve;
pub(crate) mod tags;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use blocksnap_backend::{Backend, LocalBackend};
use blocksnap_chunker::{ChunkerKind, ChunkerParams};
use blocksnap_manifest::{ChunkerDoc, ChunkerKindDoc, ConfigDoc, Document, StoreId};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;

pub use objects::{DamageWarnings, DamagedDoc};

/// Default average chunk size (see docs/CHUNKING.md for the measurements behind it).
pub const DEFAULT_CHUNK_SIZE: u32 = 32 * 1024;
/// Default pack size.
pub const DEFAULT_PACK_SIZE: u64 = 32 << 20;
/// Default zstd level.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// Options of `blocksnap init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Encrypt chunks (default) or keep a plain store.
    pub encryption: bool,
    /// Chunker algorithm.
    pub chunker: ChunkerKind,
    /// Average (cdc) or exact (fixed) chunk size.
    pub chunk_size: u32,
    /// The first account's name.
    pub account: String,
    /// Where to write the first account's identity; default under the config directory.
    pub identity: Option<PathBuf>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            encryption: true,
            chunker: ChunkerKind::Cdc,
            chunk_size: DEFAULT_CHUNK_SIZE,
            account: default_account_name(),
            identity: None,
        }
    }
}

/// The name of the first account when none is given: the user's login name if it is a valid
/// name, else `owner`.
pub fn default_account_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| blocksnap_manifest::validate_name("account", "name", u).is_ok())
        .unwrap_or_else(|| "owner".into())
}

/// What `init` made.
#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    /// The store's path.
    pub store: PathBuf,
    /// Its id.
    pub id: StoreId,
    /// Whether it encrypts.
    pub encryption: bool,
    /// The first account.
    pub account: String,
    /// Where its identity was written.
    pub identity: PathBuf,
    /// The default key's id (encrypted stores).
    pub key: Option<blocksnap_manifest::KeyId>,
    /// Chunker settings.
    pub chunker: ChunkerDoc,
}

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
    /// Documents found damaged while listing (skipped, reported once through a progress sink).
    pub(crate) damaged: Arc<objects::DamageLog>,
    /// Why the store cannot be written, once asked (see `readonly.rs`).
    pub(crate) read_only: OnceLock<Option<String>>,
    /// True once a reader was told that no lock could be taken.
    pub(crate) read_only_noted: AtomicBool,
    /// Where the per-user caches of stores live (default `$XDG_CACHE_HOME`, see
    /// [`Store::with_cache_home`]).
    cache_home: PathBuf,
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

    /// Creates a store in the local directory `path` (new, or empty) with its first account,
    /// identity and (when encrypted) the key named `default`.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<(Store, InitReport)> {
        let path = &crate::repo::location::local_store_path(path)?;
        if !Self::exists(path)
            && path.exists()
            && fs::read_dir(path)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
            && objects::store_data_held(&local_backend(path)).is_none()
        {
            return Err(StoreError::Usage(format!(
                "{} exists and is not empty; choose an empty or new directory for the store",
                path.display()
            )));
        }
        Self::init_in(
            Arc::new(local_backend(path)),
            Place::Local(path.clone()),
            opts,
        )
    }

    /// Creates a store in `backend` (which must hold no store) with its first account,
    /// identity and (when encrypted) the key named `default`.
    pub fn init_in(
        backend: Arc<dyn Backend>,
        place: Place,
        opts: &InitOptions,
    ) -> Result<(Store, InitReport)> {
        blocksnap_manifest::validate_name("account", "name", &opts.account)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        if backend.head(CONFIG).map_err(StoreError::backend)?.is_some() {
            return Err(StoreError::Usage(format!(
                "{place} already holds a blocksnap store"
            )));
        }
        if let Some(held) = objects::store_data_held(&*backend) {
            return Err(StoreError::Usage(format!(
                "{place} holds the data of a blocksnap store ({held}) whose config is missing: \
                 `init` would make a new store that cannot read it. {}",
                recovery_hint(&place)
            )));
        }
        let params = match opts.chunker {
            ChunkerKind::Cdc => ChunkerParams::cdc(opts.chunk_size),
            ChunkerKind::Fixed => ChunkerParams::fixed(opts.chunk_size),
        };
        params
            .validate()
            .map_err(|e| StoreError::Usage(format!("--chunk-size: {e}")))?;
        let id = StoreId(u64::from_le_bytes(fsutil::random_bytes()));
        let config = ConfigDoc {
            format: ConfigDoc::FORMAT.into(),
            id,
            created: fsutil::now_rfc3339(),
            encryption: opts.encryption,
            chunker: chunker_doc(params),
            pack_size: DEFAULT_PACK_SIZE,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            default_account: opts.account.clone(),
            trash_retention_days: 7,
        };
        let store = Store::with_config(backend, place.clone(), config);
        let identity = opts
            .identity
            .clone()
            .unwrap_or_else(|| store.default_identity_path(&opts.account));
        store.create_account_inner(&opts.account, &identity)?;
        let access = Access {
            account: opts.account.clone(),
            identity: identity.clone(),
        };
        let key = if opts.encryption {
            Some(store.create_key_inner(&access, "default")?)
        } else {
            None
        };
        // The config is written last: a store exists once it is complete.
        store
            .backend
            .create(CONFIG, &store.config.to_json())
            .map_err(StoreError::backend)?;
        let report = InitReport {
            store: match &place {
                Place::Local(p) => p.clone(),
                Place::Remote(u) => PathBuf::from(u),
            },
            id,
            encryption: opts.encryption,
            account: opts.account.clone(),
            identity,
            key,
            chunker: store.config.chunker,
        };
        Ok((store, report))
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
        let bytes = match backend.get(CONFIG) {
            Ok(b) => b,
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
            cache_home: cache_home(),
        }
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
        let kind = match c.kind {
            ChunkerKindDoc::Cdc => ChunkerKind::Cdc,
            ChunkerKindDoc::Fixed => ChunkerKind::Fixed,
        };
        ChunkerParams {
            kind,
            min: c.min,
            avg: c.avg,
            max: c.max,
        }
    }

    /// Where an account's identity lives unless `--identity` says otherwise:
    /// `$XDG_CONFIG_HOME/blocksnap/<store id>/<account>.key`.
    pub fn default_identity_path(&self, account: &str) -> PathBuf {
        config_home()
            .join("blocksnap")
            .join(self.config.id.to_string())
            .join(format!("{account}.key"))
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

pub(crate) fn chunker_doc(p: ChunkerParams) -> ChunkerDoc {
    let kind = match p.kind {
        ChunkerKind::Cdc => ChunkerKindDoc::Cdc,
        ChunkerKind::Fixed => ChunkerKindDoc::Fixed,
    };
    ChunkerDoc {
        kind,
        min: p.min,
        avg: p.avg,
        max: p.max,
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
    use crate::{NoProgress, SnapshotOptions};

    #[test]
    fn init_open_snapshot_restore_through_the_library() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            account: "alice".into(),
            identity: Some(dir.path().join("alice.key")),
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
