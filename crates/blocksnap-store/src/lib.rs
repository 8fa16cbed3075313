//! The blocksnap store: the one crate that orchestrates.
//!
//! A store is a set of objects behind a [`blocksnap_backend::Backend`] (a local directory today) —
//! packs of encrypted, compressed chunks and JSON documents — plus a sled index that is only each
//! user's cache, kept outside the store. This crate creates and opens stores, holds accounts and
//! keys, and runs the snapshot and restore pipelines (the layers: docs/ARCHITECTURE.md):
//!
//! ```text
//! snapshot: source -> extents -> chunks -> ids -> lookup -> encode -> pack -> commit
//! restore:  snapshot -> extents -> locations -> read -> decrypt -> decompress -> verify -> pwrite
//! ```
//!
//! The write order is the commit protocol: a pack is committed create-only and durable (in a
//! local directory: a temporary name, fsync, a no-replace rename, a directory fsync); only then
//! do its chunks enter the index; after every pack a snapshot needs is durable and the index
//! flushed, the volume's head is swapped to name it and the snapshot document is created. A
//! snapshot exists if and only if its document does.
//!
//! ```no_run
//! use blocksnap_store::{InitOptions, NoProgress, SnapshotOptions, Store};
//! let dir = std::path::Path::new("/tmp/store");
//! let (store, _) = Store::init(dir, &InitOptions::default())?;
//! let access = store.access(None, None)?;
//! let opts = SnapshotOptions { source: "disk.img".into(), ..Default::default() };
//! let snap = store.snapshot(&access, &opts, &NoProgress)?;
//! store.restore(&access, &snap.id.to_string(), "copy.img".as_ref(), &NoProgress)?;
//! # Ok::<(), blocksnap_store::StoreError>(())
//! ```

mod access;
pub mod bench;
pub mod cancel;
mod error;
mod fsutil;
mod health;
mod images;
mod init;
mod lifecycle;
mod packs;
mod progress;
mod repo;
mod serve;
mod snapshot;

pub use access::migrate::MigrateReport;
pub use access::recovery::{RECOVERY_FORMAT, RecoveryExportReport, RecoveryImportReport};
pub use access::{Access, fingerprint};
pub use error::{ErrorKind, Result, StoreError};
pub use health::check::CheckReport;
pub use health::repair::{RepairPacksReport, RepairReport};
pub use images::copy::{CopyOptions, TAG_COPIED_FROM};
pub use images::image::{ImageOptions, ImageReport};
pub use images::launch::{RebuildReport, RebuiltVolume};
pub use images::sharing::{Audience, DeregisterReport};
pub use init::{InitOptions, InitReport, default_account_name};
pub use lifecycle::policy::{PolicyAction, PolicyRunReport, TAG_POLICY, TAG_SCHEDULE};
pub use lifecycle::prune::{PruneOptions, PruneReport};
pub use lifecycle::trash::TrashEntry;
pub use packs::index::IndexRefresh;
pub use progress::{NoProgress, Progress};
pub use repo::capability::ignored_conditional_writes;
pub use repo::documents::{QUARANTINE, QuarantinedDoc, RepairDocumentsReport};
pub use repo::location::{SUPPORTED_SCHEMES, local_store_path};
pub use repo::lock::{LockEntry, LockStatus, UnlockReport};
pub use repo::tags::tag_map;
pub use repo::{
    DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL, DamageWarnings, DamagedDoc, Place, Store,
    cache_home, config_home, data_home, default_store_path,
};
pub use serve::nbd::{ServeInfo, ServeOptions, TlsFiles};
pub use snapshot::create::{SnapshotOptions, SnapshotReport};
pub use snapshot::diff::{DEFAULT_DIFF_GRANULARITY, DiffOptions, DiffReport};
pub use snapshot::restore::RestoreReport;
pub use snapshot::target::{RestoreOptions, TargetFormat, TargetKind};

pub use blocksnap_chunker::ChunkerKind;
pub use blocksnap_manifest::{
    AccountDoc, Document, ImageDoc, ImageId, KeyDoc, LaunchPermissions, LockDoc, LockKind,
    PolicyDoc, SnapshotDoc, SnapshotId, VolumeDoc,
};
pub use blocksnap_source::Format as DiskFormat;
