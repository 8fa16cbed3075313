//! Pack and chunk errors. The store adds the pack's id and path.

use blocksnap_manifest::ChunkId;

/// What is wrong with a pack or a record.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The file is too short or too long to be a pack.
    #[error("not a pack: {0}")]
    NotAPack(String),
    /// The header's magic or version is not known.
    #[error("unknown pack format (magic or version {0}); a newer blocksnap may read it")]
    UnknownVersion(String),
    /// The trailer is damaged or inconsistent with the file.
    #[error("pack trailer is damaged: {0}")]
    BadTrailer(String),
    /// The pack needs a key that was not given, or the wrong one.
    #[error("pack is encrypted with key {0}, which is not available")]
    WrongKey(String),
    /// Authentication failed: the bytes were changed.
    #[error(
        "chunk {id:?} at offset {offset}: authentication failed, the pack is damaged or was altered"
    )]
    Auth {
        /// The chunk.
        id: ChunkId,
        /// Its offset in the pack.
        offset: u64,
    },
    /// The record decoded, but its content does not hash to its id.
    #[error("chunk {id:?} at offset {offset}: content does not match its id, the pack is damaged")]
    IdMismatch {
        /// The chunk.
        id: ChunkId,
        /// Its offset in the pack.
        offset: u64,
    },
    /// The record's codec byte or compressed payload is invalid.
    #[error("chunk {id:?} at offset {offset}: {detail}")]
    BadRecord {
        /// The chunk.
        id: ChunkId,
        /// Its offset in the pack.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing the pack failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
