//! `blocksnap init`: a new store with its first account, that account's identity, and (when
//! encrypted) the key named `default` — the one operation that spans the store's objects and
//! its accounts and keys, so it sits above both.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blocksnap_backend::Backend;
use blocksnap_chunker::{ChunkerKind, ChunkerParams};
use blocksnap_manifest::{ChunkerDoc, ConfigDoc, Document, StoreId};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::repo::objects::store_data_held;
use crate::repo::{
    CONFIG, DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL, DEFAULT_PACK_SIZE, Place, Store,
    chunker_doc, local_backend, recovery_hint,
};

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
    /// This client's config directory (identities, trust state) instead of `$XDG_CONFIG_HOME`
    /// (see [`Store::with_config_home`]).
    pub config_home: Option<PathBuf>,
    /// Record in the config that only one host writes to the store at a time (`init
    /// --single-writer`): a server that fails the capability check is then not refused.
    pub single_writer: bool,
    /// The zstd level of the store's chunks (-7..=22).
    pub compression_level: i32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            encryption: true,
            chunker: ChunkerKind::Cdc,
            chunk_size: DEFAULT_CHUNK_SIZE,
            account: default_account_name(),
            identity: None,
            config_home: None,
            single_writer: false,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
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

impl Store {
    /// Creates a store in the local directory `path` (new, or empty) with its first account,
    /// identity and (when encrypted) the key named `default`.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<(Store, InitReport)> {
        let path = &crate::repo::location::local_store_path(path)?;
        if !Self::exists(path)
            && path.exists()
            && fs::read_dir(path)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
            && store_data_held(&local_backend(path)).is_none()
        {
            return Err(StoreError::Usage(format!(
                "{} exists and is not empty; choose an empty or new directory for the store",
                path.display()
            )));
        }
        if !path.exists() && !Self::exists(path) {
            // The store's own directory: an unencrypted store's only to its owner (its packs and
            // documents are plain; widen it by hand to share it), an encrypted one's to the
            // owner's group too. Objects are 0640 and folders 0750 inside (the local backend).
            let mode = if opts.encryption { 0o750 } else { 0o700 };
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent)
                    .map_err(StoreError::io("cannot create directory", parent))?;
            }
            let mut b = fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut b, mode);
            match b.create(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io("cannot create directory", path)(e)),
            }
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
        if let Some(held) = store_data_held(&*backend) {
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
        if !(-7..=22).contains(&opts.compression_level) {
            return Err(StoreError::Usage(format!(
                "--compression-level {}: zstd levels are -7 to 22",
                opts.compression_level
            )));
        }
        let id = StoreId(u64::from_le_bytes(fsutil::random_bytes()));
        let config = ConfigDoc {
            format: ConfigDoc::FORMAT.into(),
            id,
            created: fsutil::now_rfc3339(),
            encryption: opts.encryption,
            // New encrypted stores seed FastCDC's gear table from each data key.
            chunker: ChunkerDoc {
                seeded: opts.encryption && params.kind == ChunkerKind::Cdc,
                ..chunker_doc(params)
            },
            pack_size: DEFAULT_PACK_SIZE,
            compression_level: opts.compression_level,
            default_account: opts.account.clone(),
            trash_retention_days: 7,
            single_writer: opts.single_writer,
        };
        let mut store = Store::with_config(backend, place.clone(), config);
        if let Some(home) = &opts.config_home {
            store = store.with_config_home(home);
        }
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
            .backend()
            .create(CONFIG, &store.config().to_json())
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
            chunker: store.config().chunker,
        };
        Ok((store, report))
    }
}
