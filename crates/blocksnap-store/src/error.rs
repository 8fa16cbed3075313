//! The store's error: one type whose message names the object and the fix, and whose
//! [`ErrorKind`] the CLI maps to an exit status.

use std::path::PathBuf;

/// What kind of failure, for exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input from the user (exit 2).
    Usage,
    /// A launch permission or key grant is missing (exit 3).
    Denied,
    /// Stored data is damaged (exit 1 from restore; `check` reports it as 4).
    Damaged,
    /// Another command holds the store in a conflicting way (a lock object of another host, or
    /// of this host past `BLOCKSNAP_LOCK_WAIT`), or another process holds this user's index of
    /// it past that wait (exit 1).
    Locked,
    /// A filesystem is full (ENOSPC) (exit 1; the CLI adds what frees space).
    NoSpace,
    /// Stopped by a cancellation request (a signal): exit 130 or 143.
    Interrupted,
    /// No object of that kind has that id or name (exit 2).
    NotFound,
    /// A prefix matches several objects (exit 2); the message lists them.
    Ambiguous,
    /// The store cannot be written: read-only media, or no permission (exit 1).
    ReadOnly,
    /// A failure of the store's backend that may pass (a timeout, throttling): try again (exit 1).
    Transient,
    /// A document or pack fails authentication, or the store contradicts what this client
    /// pinned (its encryption, a key, a recipient, a volume's snapshot count): someone who can
    /// write to the store may have tampered with it (exit 6).
    Tampered,
    /// Anything else (exit 1).
    Other,
}

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The user asked for something that cannot be (bad name, unknown id, ...).
    #[error("{0}")]
    Usage(String),
    /// Access denied: the message says what is missing and how to grant it.
    #[error("{0}")]
    Denied(String),
    /// Stored data is damaged: the message names the pack, chunk or document.
    #[error("{0}")]
    Damaged(String),
    /// A lock of another host (or one this blocksnap cannot read) conflicts with the command:
    /// the message names the holder, its age and the command that clears it. Also another
    /// process holding the index past the wait: the message names its pid and command line
    /// where the system says.
    #[error("{0}")]
    Locked(String),
    /// A document or pack that fails authentication, or a store that contradicts what this
    /// client pinned: the message names the object, what is wrong and what to do.
    #[error("{0}")]
    Tampered(String),
    /// An I/O error on a named path.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing ("cannot read", "cannot write").
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Anything else, already worded for the user.
    #[error("{0}")]
    Other(String),
    /// A filesystem is full: `path` is where a write failed (the store, or a restore's
    /// output), `message` says what was being done.
    #[error("{message}")]
    NoSpace {
        /// What failed, with the path and the OS error.
        message: String,
        /// The path that could not be written.
        path: PathBuf,
    },
    /// The operation stopped at a cancellation request ([`crate::cancel::request`]), having
    /// removed its temporary files.
    #[error("interrupted")]
    Interrupted,
    /// No object of `kind` is named `name`; `hint` says where to look.
    #[error("no {kind} {}'{name}'{hint}", if *kind == "snapshot" { "matches " } else { "" })]
    NotFound {
        /// What was looked for (`snapshot`, `key`).
        kind: &'static str,
        /// The id, name or prefix given.
        name: String,
        /// What to do (`; see `blocksnap snapshot list``), or empty.
        hint: String,
    },
    /// A prefix that matches several objects.
    #[error("'{text}' matches {} {}: {}; give more of it", candidates.len(), plural_kind(kind), shown(candidates))]
    Ambiguous {
        /// What was looked for.
        kind: &'static str,
        /// The prefix given.
        text: String,
        /// Every object it matches.
        candidates: Vec<String>,
    },
    /// A create met an object of that name.
    #[error("a {kind} named '{name}' already exists")]
    Exists {
        /// What was created.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Another writer changed a document between our read and our write, again and again.
    #[error("the {kind} '{name}' was changed by another writer meanwhile; run the command again")]
    Conflict {
        /// The document's kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The store's backend failed; `context` names the object.
    #[error("{context}{}{source}", if context.is_empty() { "" } else { ": " })]
    Backend {
        /// What was being done, and on which object.
        context: String,
        /// The backend's error.
        source: blocksnap_backend::BackendError,
    },
}

/// True for "no space left on device" (ENOSPC).
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull
}

impl StoreError {
    /// The kind, for exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Usage(_) => ErrorKind::Usage,
            StoreError::Denied(_) => ErrorKind::Denied,
            StoreError::Damaged(_) => ErrorKind::Damaged,
            StoreError::Tampered(_) => ErrorKind::Tampered,
            StoreError::Locked(_) => ErrorKind::Locked,
            StoreError::Io { source, .. } if is_no_space(source) => ErrorKind::NoSpace,
            StoreError::Io { .. } | StoreError::Other(_) => ErrorKind::Other,
            StoreError::NoSpace { .. } => ErrorKind::NoSpace,
            StoreError::Interrupted => ErrorKind::Interrupted,
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Ambiguous { .. } => ErrorKind::Ambiguous,
            StoreError::Exists { .. } => ErrorKind::Usage,
            StoreError::Conflict { .. } => ErrorKind::Other,
            StoreError::Backend { source, .. } => {
                use blocksnap_backend::BackendError as B;
                match source {
                    B::NoSpace { .. } => ErrorKind::NoSpace,
                    B::ReadOnly { .. } => ErrorKind::ReadOnly,
                    B::Transient { .. } => ErrorKind::Transient,
                    B::InvalidKey { .. } => ErrorKind::Usage,
                    _ => ErrorKind::Other,
                }
            }
        }
    }

    /// An error of the store's backend, typed.
    pub fn backend(source: blocksnap_backend::BackendError) -> StoreError {
        StoreError::Backend {
            context: String::new(),
            source,
        }
    }

    /// The same error, its message prefixed with `what` (`device /dev/sdb: …`); the kind stays.
    pub fn context(self, what: &str) -> StoreError {
        match self {
            StoreError::Usage(m) => StoreError::Usage(format!("{what}: {m}")),
            StoreError::Denied(m) => StoreError::Denied(format!("{what}: {m}")),
            StoreError::Damaged(m) => StoreError::Damaged(format!("{what}: {m}")),
            StoreError::Tampered(m) => StoreError::Tampered(format!("{what}: {m}")),
            StoreError::Other(m) => StoreError::Other(format!("{what}: {m}")),
            StoreError::Locked(m) => StoreError::Locked(format!("{what}: {m}")),
            e @ StoreError::Io { .. } => {
                let message = format!("{what}: {e}");
                match e {
                    StoreError::Io { path, source, .. } if is_no_space(&source) => {
                        StoreError::NoSpace { message, path }
                    }
                    _ => StoreError::Other(message),
                }
            }
            StoreError::NoSpace { message, path } => StoreError::NoSpace {
                message: format!("{what}: {message}"),
                path,
            },
            StoreError::Interrupted => StoreError::Interrupted,
            StoreError::Backend { context, source } => StoreError::Backend {
                context: if context.is_empty() {
                    what.to_string()
                } else {
                    format!("{what}: {context}")
                },
                source,
            },
            e @ (StoreError::NotFound { .. }
            | StoreError::Ambiguous { .. }
            | StoreError::Exists { .. }
            | StoreError::Conflict { .. }) => e,
        }
    }

    /// The path a full filesystem refused, for a [`ErrorKind::NoSpace`] error.
    pub fn no_space_path(&self) -> Option<&std::path::Path> {
        match self {
            StoreError::NoSpace { path, .. } => Some(path),
            StoreError::Io { path, source, .. } if is_no_space(source) => Some(path),
            StoreError::Backend {
                source: blocksnap_backend::BackendError::NoSpace { location, .. },
                ..
            } => Some(std::path::Path::new(location.as_str())),
            _ => None,
        }
    }

    /// An error of writing a pack at `path` (a full disk keeps its kind).
    pub(crate) fn pack_write(
        path: &std::path::Path,
    ) -> impl FnOnce(blocksnap_pack::PackError) -> StoreError {
        let path = path.to_path_buf();
        move |e| match e {
            blocksnap_pack::PackError::Io(source) => StoreError::Io {
                what: "cannot write pack",
                path,
                source,
            },
            e => StoreError::Other(format!("cannot write pack {}: {e}", path.display())),
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { what, path, source }
    }
}

impl From<blocksnap_index::IndexError> for StoreError {
    fn from(e: blocksnap_index::IndexError) -> Self {
        match e {
            // Another process holds the index (the message names it, and says to try again or
            // raise BLOCKSNAP_LOCK_WAIT): a lock, by kind, not by its words.
            blocksnap_index::IndexError::Busy { .. } => StoreError::Locked(e.to_string()),
            // sled reports its I/O errors as text only: a full disk is known by the OS's words.
            blocksnap_index::IndexError::Damaged {
                ref path,
                ref detail,
            } if detail.contains("(os error 28)") => StoreError::NoSpace {
                message: e.to_string(),
                path: path.clone(),
            },
            e => StoreError::Other(e.to_string()),
        }
    }
}

/// Short for `Result<T, StoreError>`.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A kind of object in the plural: `snapshots`, `trash entries`.
fn plural_kind(kind: &str) -> String {
    match kind.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{kind}s"),
    }
}

/// The candidates of an ambiguous prefix, the first twenty of them.
fn shown(candidates: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = candidates
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if candidates.len() > SHOWN {
        s += &format!(" and {} more", candidates.len() - SHOWN);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use blocksnap_index::{Holder, IndexError};

    #[test]
    fn an_ambiguous_prefix_names_its_candidates_in_the_plural() {
        let e = |kind, n: usize| StoreError::Ambiguous {
            kind,
            text: "0".into(),
            candidates: (0..n).map(|i| format!("x-{i}")).collect(),
        };
        assert_eq!(
            e("trash entry", 2).to_string(),
            "'0' matches 2 trash entries: x-0, x-1; give more of it"
        );
        assert!(e("key", 2).to_string().contains("2 keys: "));
        let many = e("snapshot", 25).to_string();
        assert!(many.contains("x-19 and 5 more"), "{many}");
        assert!(!many.contains("x-20"), "{many}");
    }

    #[test]
    fn a_busy_index_is_locked_naming_its_holder() {
        let busy = IndexError::Busy {
            path: "/home/u/.cache/blocksnap/store-1/index".into(),
            waited: std::time::Duration::from_secs(3600),
            holder: Some(Holder {
                pid: 4242,
                command: "blocksnap snapshot create disk.img".into(),
            }),
        };
        let e = StoreError::from(busy);
        assert_eq!(e.kind(), ErrorKind::Locked);
        let text = e.to_string();
        assert!(
            text.contains("pid 4242: blocksnap snapshot create disk.img"),
            "{text}"
        );
        assert!(text.contains("BLOCKSNAP_LOCK_WAIT"), "{text}");
        // The kind survives the context a caller adds.
        assert_eq!(e.context("snapshot").kind(), ErrorKind::Locked);
    }

    #[test]
    fn a_damaged_index_is_other_and_a_full_one_no_space() {
        let damaged = |detail: &str| IndexError::Damaged {
            path: "/i".into(),
            detail: detail.into(),
        };
        assert_eq!(StoreError::from(damaged("bad")).kind(), ErrorKind::Other);
        assert_eq!(
            StoreError::from(damaged("No space left on device (os error 28)")).kind(),
            ErrorKind::NoSpace
        );
    }
}
