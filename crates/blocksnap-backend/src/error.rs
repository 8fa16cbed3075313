//! The backend's one error type: what went wrong, with which key, and where a person must act.

/// A backend error. Each variant names the key; those a person must act on name the place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// No object has this key.
    #[error("{key}: no such object")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A create met an existing object (left as it was).
    #[error("{key}: already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// A compare-and-swap met another version: someone else changed the object first.
    #[error("{key}: changed by another writer meanwhile")]
    Conflict {
        /// The key.
        key: String,
    },
    /// A range read beyond the object's end.
    #[error("{key}: bytes {offset}..{} are beyond its end ({size} bytes)", offset.saturating_add(*len))]
    OutOfRange {
        /// The key.
        key: String,
        /// The range's start.
        offset: u64,
        /// The range's length.
        len: u64,
        /// The object's size.
        size: u64,
    },
    /// A bounded read ([`crate::Backend::get_bounded`]) met an object larger than its bound:
    /// found from the object's size, before anything was read.
    #[error("{key}: {size} bytes, more than the {max} bytes such an object can be")]
    TooLarge {
        /// The key.
        key: String,
        /// The object's size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// A key that breaks the naming rules.
    #[error("{key:?} is not a valid object name: {reason}")]
    InvalidKey {
        /// The key (at most 200 characters of it).
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The place cannot be written: read-only media, or no permission to write.
    #[error("{location} cannot be written ({detail}) while writing {key}")]
    ReadOnly {
        /// The store's place.
        location: String,
        /// The key being written.
        key: String,
        /// What the system said ("read-only file system", "permission denied").
        detail: String,
    },
    /// The place is full.
    #[error("no space left on {location} while writing {key}")]
    NoSpace {
        /// The store's place.
        location: String,
        /// The key being written.
        key: String,
    },
    /// A failure worth retrying (a timeout, a 5xx, throttling); already retried where the
    /// backend retries.
    #[error("{key}: temporary failure at {location}: {detail}")]
    Transient {
        /// The store's place.
        location: String,
        /// The key.
        key: String,
        /// What failed.
        detail: String,
    },
    /// Any other failure of the place itself.
    #[error("cannot {op} {key} at {location}: {source}")]
    Io {
        /// What we were doing ("read", "create", "list", …).
        op: &'static str,
        /// The key.
        key: String,
        /// The store's place.
        location: String,
        /// The system's error.
        source: std::io::Error,
    },
}

impl BackendError {
    /// True for [`BackendError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }

    /// True for [`BackendError::AlreadyExists`].
    pub fn is_already_exists(&self) -> bool {
        matches!(self, BackendError::AlreadyExists { .. })
    }

    /// True if the error says the server does not do what the contract needs
    /// ([`crate::Backend::probe_conditional_writes`] failed).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, BackendError::Io { source, .. } if source.kind() == std::io::ErrorKind::Unsupported)
    }

    /// True for a failure worth retrying later.
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient { .. })
    }

    /// Maps an I/O error of `op` on `key` at `location` to its typed variant.
    pub fn from_io(op: &'static str, key: &str, location: &str, e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound if op != "create" && op != "replace" && op != "list" => {
                BackendError::NotFound { key: key.into() }
            }
            K::AlreadyExists => BackendError::AlreadyExists { key: key.into() },
            K::StorageFull | K::QuotaExceeded => BackendError::NoSpace {
                location: location.into(),
                key: key.into(),
            },
            K::ReadOnlyFilesystem | K::PermissionDenied => BackendError::ReadOnly {
                location: location.into(),
                key: key.into(),
                detail: if e.kind() == K::ReadOnlyFilesystem {
                    "read-only file system".into()
                } else {
                    "permission denied".into()
                },
            },
            K::Interrupted | K::TimedOut | K::WouldBlock => BackendError::Transient {
                location: location.into(),
                key: key.into(),
                detail: e.to_string(),
            },
            _ => BackendError::Io {
                op,
                key: key.into(),
                location: location.into(),
                source: e,
            },
        }
    }
}

/// Short for `Result<T, BackendError>`.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;
