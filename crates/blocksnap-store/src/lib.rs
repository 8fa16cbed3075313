//! The blocksnap store: the one crate that orchestrates.
//!
//! A store is a directory of immutable objects — packs of encrypted, compressed chunks and JSON
//! documents — plus a local sled index that is only a cache. This crate creates and opens
//! stores, holds accounts and keys, and runs the snapshot and restore pipelines:
//!
//! ```text
//! snapshot: source -> extents -> chunks -> ids -> lookup -> encode -> pack -> commit
//! restore:  snapshot -> extents -> locations -> read -> decrypt -> decompress -> verify -> pwrite
//! ```
//!
//! The write order is the commit protocol: a pack is written to a temporary name, fsynced,
//! renamed into place and its directory fsynced; only then do its chunks enter the index; the
//! snapshot document is written (atomically, the same way) after every pack it needs is durable
//! and the index flushed. A snapshot exists if and only if its document does.
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
mod check;
mod copy;
mod diff;
mod documents;
mod error;
mod fsutil;
mod image;
mod lifecycle;
mod location;
mod lock;
mod nbd;
mod policy;
mod progress;
mod prune;
mod readonly;
mod recovery;
mod repair;
mod restore;
mod sink;
mod snapshot;
mod source;
mod store;
mod tags;

pub use access::Access;
pub use check::CheckReport;
pub use copy::{CopyOptions, TAG_COPIED_FROM};
pub use diff::DiffReport;
pub use documents::{QUARANTINE, QuarantinedDoc, RepairDocumentsReport};
pub use error::{ErrorKind, Result, StoreError};
pub use image::{
    Audience, DeregisterReport, ImageOptions, ImageReport, RebuildReport, RebuiltVolume,
};
pub use lifecycle::TrashEntry;
pub use location::{SUPPORTED_SCHEMES, local_store_path};
pub use lock::{LockEntry, LockStatus, UnlockReport};
pub use nbd::ServeInfo;
pub use policy::{PolicyAction, PolicyRunReport, TAG_POLICY, TAG_SCHEDULE};
pub use progress::{NoProgress, Progress};
pub use prune::{PruneOptions, PruneReport};
pub use recovery::{RECOVERY_FORMAT, RecoveryExportReport, RecoveryImportReport};
pub use repair::{RepairPacksReport, RepairReport};
pub use restore::{RestoreOptions, RestoreReport, TargetKind};
pub use snapshot::{SnapshotOptions, SnapshotReport};
pub use store::{
    DEFAULT_CHUNK_SIZE, DamageWarnings, DamagedDoc, InitOptions, InitReport, Store, config_home,
    data_home, default_account_name, default_store_path,
};
pub use tags::tag_map;

pub use blocksnap_chunker::ChunkerKind;
pub use blocksnap_manifest::{
    AccountDoc, Document, ImageDoc, ImageId, KeyDoc, LockDoc, LockKind, PolicyDoc, SnapshotDoc,
    SnapshotId, VolumeDoc,
};
