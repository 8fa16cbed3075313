//! Opening and creating a store; its layout; documents by id or prefix.

pub(crate) mod documents;
pub(crate) mod location;
pub(crate) mod lock;
pub(crate) mod readonly;
pub(crate) mod tags;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use blocksnap_chunker::{ChunkerKind, ChunkerParams};
use blocksnap_index::{Index, IndexError};
use blocksnap_manifest::{
    ChunkerDoc, ChunkerKindDoc, ConfigDoc, DocError, Document, PackId, SnapshotDoc, SnapshotId,
    StoreId,
};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil::{self, TMP_PREFIX};
use crate::progress::Progress;

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

/// An open store.
pub struct Store {
    root: PathBuf,
    config: ConfigDoc,
    /// Documents found damaged while listing (skipped, reported once through a progress sink).
    damaged: Arc<DamageLog>,
    /// Why the store cannot be written, once asked (see `read_only.rs`).
    pub(crate) read_only: OnceLock<Option<String>>,
    /// True once a reader was told that no lock could be taken.
    pub(crate) read_only_noted: AtomicBool,
}

/// A document that cannot be read: not JSON, invalid, or of a format this blocksnap does not know.
#[derive(Clone, Debug, Serialize)]
pub struct DamagedDoc {
    /// The document's path.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
    /// True when it is of a newer format (a newer blocksnap wrote it), not damaged.
    pub newer: bool,
}

impl DamagedDoc {
    pub(crate) fn new(path: PathBuf, e: &DocError) -> DamagedDoc {
        DamagedDoc {
            path,
            problem: e.to_string(),
            newer: matches!(e, DocError::UnknownFormat { .. }),
        }
    }
}

/// The damaged documents a store's listings skipped, each reported once.
#[derive(Debug, Default)]
struct DamageLog(Mutex<BTreeMap<PathBuf, (DamagedDoc, bool)>>);

/// A handle on the damaged documents a store skipped, to report them after a command
/// ([`Store::damage_warnings`]).
#[derive(Clone, Debug)]
pub struct DamageWarnings(Arc<DamageLog>);

impl DamageWarnings {
    /// Reports, through `progress`, each skipped document not reported yet.
    pub fn warn(&self, progress: &dyn Progress) {
        let mut log = self.0.0.lock().expect("not poisoned");
        for (doc, reported) in log.values_mut() {
            if !*reported {
                *reported = true;
                progress.message(&damage_warning(doc));
            }
        }
    }
}

/// The warning for a document a listing skipped.
fn damage_warning(d: &DamagedDoc) -> String {
    if d.newer {
        format!("warning: skipped {}: {}", d.path.display(), d.problem)
    } else {
        format!(
            "warning: skipped the damaged document {}: {}; `blocksnap repair documents` moves it \
             to quarantine/ in the store",
            d.path.display(),
            d.problem
        )
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("id", &self.config.id)
            .finish()
    }
}

/// The directories of a store.
pub(crate) const DIRS: [&str; 9] = [
    "images",
    "policies",
    "accounts",
    "keys",
    "packs",
    "snapshots",
    "volumes",
    "trash",
    "locks",
];

impl Store {
    /// True if `path` holds a store (has a `config`).
    pub fn exists(path: &Path) -> bool {
        crate::repo::location::local_store_path(path).is_ok_and(|p| p.join("config").is_file())
    }

    /// Creates a store at `path` with its first account, identity and (when encrypted) the key
    /// named `default`.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<(Store, InitReport)> {
        let path = &crate::repo::location::local_store_path(path)?;
        blocksnap_manifest::validate_name("account", "name", &opts.account)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        if Self::exists(path) {
            return Err(StoreError::Usage(format!(
                "{} already holds a blocksnap store",
                path.display()
            )));
        }
        if let Some(held) = store_data_held(path) {
            return Err(StoreError::Usage(format!(
                "{} holds the data of a blocksnap store ({held}) whose config is missing: `init` \
                 would make a new store that cannot read it. {}",
                path.display(),
                recovery_hint(path)
            )));
        }
        if path.exists()
            && fs::read_dir(path)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(StoreError::Usage(format!(
                "{} exists and is not empty; choose an empty or new directory for the store",
                path.display()
            )));
        }
        let params = match opts.chunker {
            ChunkerKind::Cdc => ChunkerParams::cdc(opts.chunk_size),
            ChunkerKind::Fixed => ChunkerParams::fixed(opts.chunk_size),
        };
        params
            .validate()
            .map_err(|e| StoreError::Usage(format!("--chunk-size: {e}")))?;
        fs::create_dir_all(path).map_err(StoreError::io("cannot create store directory", path))?;
        for d in DIRS {
            fs::create_dir_all(path.join(d))
                .map_err(StoreError::io("cannot create", path.join(d)))?;
        }
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
        let store = Store::with_config(path, config);
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
        fsutil::write_atomic(&path.join("config"), &store.config.to_json(), 0o644)?;
        let report = InitReport {
            store: path.to_path_buf(),
            id,
            encryption: opts.encryption,
            account: opts.account.clone(),
            identity,
            key,
            chunker: store.config.chunker,
        };
        Ok((store, report))
    }

    /// Opens the store at `path`. A directory holding a store's data but no `config` (or a
    /// damaged one) is an error saying what is missing and how to recover it.
    pub fn open(path: &Path) -> Result<Store> {
        let path = &crate::repo::location::local_store_path(path)?;
        let cfg_path = path.join("config");
        if !cfg_path.is_file() {
            if let Some(held) = store_data_held(path) {
                return Err(StoreError::Damaged(format!(
                    "the store at {} has lost its config file {} (it still holds {held}): it \
                     cannot be opened without it. {} Do not run `init` there: a new store cannot \
                     read this data.",
                    path.display(),
                    cfg_path.display(),
                    recovery_hint(path)
                )));
            }
            return Err(StoreError::Usage(format!(
                "no blocksnap store at {}: create one with `blocksnap --store {} init`",
                path.display(),
                path.display()
            )));
        }
        let config = ConfigDoc::from_json(&fsutil::read(&cfg_path)?).map_err(|e| {
            StoreError::Damaged(format!(
                "{}: {e}; the store cannot be opened without it. {}",
                cfg_path.display(),
                recovery_hint(path)
            ))
        })?;
        Ok(Store::with_config(path, config))
    }

    /// A store at `root` with `config`, as read (or about to be written).
    pub(crate) fn with_config(root: &Path, config: ConfigDoc) -> Store {
        Store {
            root: root.to_path_buf(),
            config,
            damaged: Arc::default(),
            read_only: OnceLock::new(),
            read_only_noted: AtomicBool::new(false),
        }
    }

    /// Records a document a listing skipped, to be reported once (see [`Store::warn_damaged`]).
    pub(crate) fn note_damaged(&self, doc: DamagedDoc) {
        self.damaged
            .0
            .lock()
            .expect("not poisoned")
            .entry(doc.path.clone())
            .or_insert((doc, false));
    }

    /// The documents under `dir` that listings so far skipped.
    pub(crate) fn skipped_in(&self, dir: &Path) -> Vec<DamagedDoc> {
        self.damaged
            .0
            .lock()
            .expect("not poisoned")
            .values()
            .filter(|(d, _)| d.path.parent() == Some(dir))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Reports, through `progress`, each damaged document listings skipped and did not
    /// report yet.
    pub fn warn_damaged(&self, progress: &dyn Progress) {
        self.damage_warnings().warn(progress);
    }

    /// A handle that reports the damaged documents this store's listings skip, usable after
    /// the store is gone (the CLI reports them when a command ends, whatever its result).
    pub fn damage_warnings(&self) -> DamageWarnings {
        DamageWarnings(self.damaged.clone())
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
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

    /// The access of `account` (default: the store's first account) with `identity` (default:
    /// [`Store::default_identity_path`]).
    pub fn access(&self, account: Option<&str>, identity: Option<&Path>) -> Result<Access> {
        let account = account.unwrap_or(&self.config.default_account).to_string();
        blocksnap_manifest::validate_name("account", "name", &account)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        if !self.account_path(&account).is_file() {
            if account == self.config.default_account {
                return Err(StoreError::Damaged(format!(
                    "the document of the store's first account '{account}' is missing ({}). {}",
                    self.account_path(&account).display(),
                    recovery_hint(&self.root)
                )));
            }
            return Err(StoreError::Usage(format!(
                "no account '{account}' in store {}; see `blocksnap account list`",
                self.root.display()
            )));
        }
        let identity =
            identity.map_or_else(|| self.default_identity_path(&account), Path::to_path_buf);
        Ok(Access { account, identity })
    }

    pub(crate) fn account_path(&self, name: &str) -> PathBuf {
        self.root.join("accounts").join(format!("{name}.json"))
    }

    pub(crate) fn key_path(&self, id: blocksnap_manifest::KeyId) -> PathBuf {
        self.root.join("keys").join(format!("{id}.json"))
    }

    pub(crate) fn snapshot_path(&self, id: SnapshotId) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.json"))
    }

    /// The path of a pack.
    pub fn pack_path(&self, id: &PackId) -> PathBuf {
        pack_path(&self.root, id)
    }

    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join("index")
    }

    /// Opens the dedup index, waiting (with a note to `progress`) while another process holds it.
    /// An index sled cannot read (a process killed at the wrong moment can leave one: see
    /// docs/DESIGN-NOTES.md) is rebuilt from the pack trailers, with a note: it is a cache.
    pub(crate) fn open_index(&self, access: &Access, progress: &dyn Progress) -> Result<Index> {
        let wait = std::env::var("BLOCKSNAP_LOCK_WAIT")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(Duration::from_secs(3600), Duration::from_secs);
        self.open_index_healing(access, wait, progress)
    }

    /// [`Store::open_index`] waiting at most `wait` for another process.
    pub(crate) fn open_index_healing(
        &self,
        access: &Access,
        wait: Duration,
        progress: &dyn Progress,
    ) -> Result<Index> {
        let missing = !self.index_path().exists();
        match self.open_index_raw(wait, progress) {
            Ok(index) if missing && !self.list_packs()?.is_empty() => {
                let r = self.fill_index(&index, access, progress)?;
                progress.message(&format!(
                    "the index of {} was missing; rebuilt it from the pack trailers: {} chunks from {} packs",
                    self.root.display(),
                    r.chunks,
                    r.packs
                ));
                Ok(index)
            }
            Err(IndexError::Damaged { detail, .. }) => {
                // Move it aside (atomically, so that a second process finding it damaged at the
                // same moment cannot remove a fresh one), start a new one, fill it.
                let aside = self.root.join(format!(
                    "{}index-damaged-{}",
                    TMP_PREFIX,
                    fsutil::random_hex(8)
                ));
                if fs::rename(self.index_path(), &aside).is_err() {
                    // Another process moved it first and is rebuilding: wait for its index.
                    return Ok(self.open_index_raw(wait, progress)?);
                }
                let index = self.open_index_raw(wait, progress)?;
                let r = self.fill_index(&index, access, progress)?;
                progress.message(&format!(
                    "the index of {} could not be read ({detail}), as a killed process can leave \
                     it; rebuilt it from the pack trailers: {} chunks from {} packs{}",
                    self.root.display(),
                    r.chunks,
                    r.packs,
                    if r.problems.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; {} packs left out (an account holding their keys can run `blocksnap repair index`)",
                            r.problems.len()
                        )
                    }
                ));
                let _ = fs::remove_dir_all(&aside);
                Ok(index)
            }
            other => Ok(other?),
        }
    }

    /// Opens the dedup index as it is.
    pub(crate) fn open_index_raw(
        &self,
        wait: Duration,
        progress: &dyn Progress,
    ) -> std::result::Result<Index, IndexError> {
        Index::open(&self.index_path(), wait, |waited| {
            progress.message(&format!(
                "waiting for the index of {}: another blocksnap process is using it ({}s so far)",
                self.root.display(),
                waited.as_secs()
            ));
        })
    }

    /// Every pack in the store, by id.
    pub fn list_packs(&self) -> Result<Vec<(PackId, PathBuf)>> {
        let mut out = Vec::new();
        let packs = self.root.join("packs");
        for sub in fs::read_dir(&packs).map_err(StoreError::io("cannot list", &packs))? {
            let sub = sub.map_err(StoreError::io("cannot list", &packs))?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub).map_err(StoreError::io("cannot list", &sub))? {
                let f = f.map_err(StoreError::io("cannot list", &sub))?.path();
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if let Ok(id) = name.parse::<PackId>() {
                    out.push((id, f));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every snapshot document, oldest first. A damaged document is skipped and recorded, to be
    /// reported through [`Store::warn_damaged`]: one bad file never stops unrelated work.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotDoc>> {
        let dir = self.root.join("snapshots");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(StoreError::io("cannot list", &dir))? {
            let path = e.map_err(StoreError::io("cannot list", &dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with(TMP_PREFIX) || !name.ends_with(".json") {
                continue;
            }
            match SnapshotDoc::from_json(&fsutil::read(&path)?) {
                Ok(doc) => out.push(doc),
                Err(e) => self.note_damaged(DamagedDoc::new(path, &e)),
            }
        }
        out.sort_by(|a, b| (&a.created, a.id).cmp(&(&b.created, b.id)));
        Ok(out)
    }

    fn read_snapshot_file(&self, path: &Path) -> Result<SnapshotDoc> {
        SnapshotDoc::from_json(&fsutil::read(path)?).map_err(|e| {
            StoreError::Damaged(format!(
                "{}: {e}; `blocksnap repair documents` moves it to quarantine/ in the store, \
                 `blocksnap check` lists all damage",
                path.display()
            ))
        })
    }

    /// Resolves a snapshot by full id or unique prefix (`snap-0f3a`, `0f3a`).
    pub fn resolve_snapshot(&self, text: &str) -> Result<SnapshotDoc> {
        let dir = self.root.join("snapshots");
        let want = if text.starts_with(SnapshotId::PREFIX) {
            text.to_string()
        } else {
            format!("{}{text}", SnapshotId::PREFIX)
        };
        if want.len() <= SnapshotId::PREFIX.len() {
            return Err(StoreError::Usage(
                "give a snapshot id or a prefix of one (snap-…)".into(),
            ));
        }
        let mut matches = Vec::new();
        for e in fs::read_dir(&dir).map_err(StoreError::io("cannot list", &dir))? {
            let path = e.map_err(StoreError::io("cannot list", &dir))?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if name.starts_with(&want) && name.parse::<SnapshotId>().is_ok() {
                matches.push(path);
            }
        }
        match matches.len() {
            0 => Err(StoreError::Usage(format!(
                "no snapshot matches '{text}'; see `blocksnap snapshot list`"
            ))),
            1 => self.read_snapshot_file(&matches[0]),
            n => Err(StoreError::Usage(format!(
                "'{text}' matches {n} snapshots; give more of the id"
            ))),
        }
    }

    /// The newest snapshot of a volume.
    pub fn latest_snapshot(&self, volume: &str) -> Result<Option<SnapshotDoc>> {
        Ok(self
            .list_snapshots()?
            .into_iter()
            .rev()
            .find(|s| s.volume == volume))
    }

    pub(crate) fn write_snapshot(&self, doc: &SnapshotDoc) -> Result<u64> {
        let bytes = doc.to_json();
        fsutil::write_atomic(&self.snapshot_path(doc.id), &bytes, 0o644)?;
        Ok(bytes.len() as u64)
    }

    /// Snapshots matching a volume and every given tag.
    pub fn find_snapshots(
        &self,
        volume: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<SnapshotDoc>> {
        Ok(self
            .list_snapshots()?
            .into_iter()
            .filter(|s| volume.is_none_or(|v| s.volume == v))
            .filter(|s| tags.iter().all(|(k, v)| s.tags.get(k) == Some(v)))
            .collect())
    }
}

/// The path of pack `id` in the store at `root`: `packs/XX/ID`.
pub(crate) fn pack_path(root: &Path, id: &PackId) -> PathBuf {
    let hex = id.to_string();
    root.join("packs").join(&hex[..2]).join(hex)
}

impl Store {
    /// Every document in `dir` (none if it does not exist). A damaged one is skipped and
    /// recorded, to be reported through [`Store::warn_damaged`].
    pub(crate) fn read_docs<D: Document>(&self, dir: &Path) -> Result<Vec<D>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(StoreError::Io {
                    what: "cannot list",
                    path: dir.into(),
                    source: e,
                });
            }
        };
        for e in entries {
            let path = e.map_err(StoreError::io("cannot list", dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !name.ends_with(".json") || name.starts_with(TMP_PREFIX) {
                continue;
            }
            match D::from_json(&fsutil::read(&path)?) {
                Ok(doc) => out.push(doc),
                Err(e) => self.note_damaged(DamagedDoc::new(path, &e)),
            }
        }
        Ok(out)
    }
}

/// What store data `path` holds, in words (`3 packs, 2 snapshot documents`), if any: a
/// directory with this and no `config` is a store that lost its config, not an empty one.
pub(crate) fn store_data_held(path: &Path) -> Option<String> {
    let count = |dir: &str, json: bool| -> usize {
        fs::read_dir(path.join(dir)).map_or(0, |d| {
            d.filter_map(std::result::Result::ok)
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    !name.starts_with(TMP_PREFIX) && (!json || name.ends_with(".json"))
                })
                .count()
        })
    };
    let packs: usize = fs::read_dir(path.join("packs")).map_or(0, |d| {
        d.filter_map(std::result::Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| fs::read_dir(e.path()).map_or(0, Iterator::count))
            .sum()
    });
    let parts: Vec<String> = [
        (packs, "pack"),
        (count("snapshots", true), "snapshot document"),
        (count("images", true), "image document"),
        (count("trash", true), "trash entry"),
        (count("keys", true), "key document"),
        (count("accounts", true), "account document"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}{}", if n == 1 { "" } else { "s" }))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// How to bring back a lost or damaged `config`, account or key document of the store at `path`.
pub(crate) fn recovery_hint(path: &Path) -> String {
    format!(
        "To recover, run `blocksnap --store {} recovery import FILE` with the file `blocksnap \
         recovery export FILE` wrote (it puts back the config, account and key documents that are \
         missing or damaged, and never replaces a good one), or copy them back from a backup of \
         the store.",
        path.display()
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
        let store2 = Store::open(store.root()).unwrap();
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
