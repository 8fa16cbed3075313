//! blocksnap's documents and ids.
//!
//! Everything a store records about its data, apart from the chunks themselves, is a document
//! defined here: the store's `config`, `accounts/`, `keys/`, `snapshots/`, `images/`,
//! `volumes/`, `policies/`, `trash/`, `locks/` and `condemned/`, and the binary extent list of a snapshot. Every document
//! carries a versioned format name (`blocksnap.snapshot/v1`) and is validated on read: this crate
//! parses untrusted bytes and returns an error naming the document and the field, never a panic.
//! It does no I/O.
//!
//! ```
//! use blocksnap_manifest::{Document, SnapshotDoc};
//! let err = SnapshotDoc::from_json(br#"{"format": "blocksnap.snapshot/v7"}"#).unwrap_err();
//! assert!(err.to_string().contains("v7"));
//! ```

mod condemned;
mod docs;
mod error;
mod extent;
mod id;
mod image;
mod lock;
mod policy;
mod seal;
mod trash;

pub use condemned::{CondemnedDoc, MAX_CONDEMNED_PACKS};
pub use docs::{
    AccountDoc, ChunkerDoc, ConfigDoc, Document, ExtentsDoc, GrantDoc, HeadDoc, KeyDoc,
    MAX_NAME_LEN, MAX_TAGS, MAX_VOLUME_SIZE, SnapshotDoc, VolumeDoc, validate_name, validate_tags,
};
pub use error::{DocError, ExtentError};
pub use extent::{EXTENT_MAGIC, Extent, ExtentDecoder, ExtentEncoder, MAX_DATA_EXTENT};
pub use id::{ChunkId, IdError, ImageId, KeyId, PackId, SnapshotId, StoreId};
pub use image::{
    ImageDoc, ImageVolume, LaunchPermissions, MAX_IMAGE_VOLUMES, device_file_name, validate_device,
};
pub use lock::{LockDoc, LockKind, MAX_HOST_LEN, validate_host};
pub use policy::{Keep, Period, PolicyDoc, Schedule, TagValues, TargetTags, Unit};
pub use seal::Sealed;
pub use trash::TrashDoc;
