//! blocksnap's storage seam: every object of a store goes through [`Backend`].
//!
//! A store is a set of named objects — packs, documents, lock objects — and nothing else; the
//! dedup index is a local cache kept outside it. This crate says what a place that holds those
//! objects must do, in terms an object store (S3 and its kin) also offers, and provides three
//! implementations: [`LocalBackend`] (a directory), [`MemoryBackend`] (for tests) and
//! [`FaultBackend`] (wraps another and fails, or stops dead, at the Nth operation). The
//! [`conformance`] suite is the contract in code: every backend runs it.
//!
//! # The contract
//!
//! - **Keys** are `/`-separated names (`packs/3f/3f0a…`, `snapshots/snap-….json`): segments of
//!   ASCII letters, digits, `.`, `_`, `-`, `+`, `@` and `:`, none empty, none starting with `.`
//!   (names starting with `.` belong to the backend itself, for temporaries), at most
//!   [`MAX_KEY_LEN`] bytes. [`validate_key`] checks them; every method rejects a bad key with
//!   [`BackendError::InvalidKey`] before touching anything. A key is never also the folder of
//!   another (`a/b` and `a/b/c` do not both exist): a directory cannot hold both, and the
//!   store's layout never asks for it.
//! - **Create is create-only** ([`Backend::create`], [`Staged::commit`]): an existing key is
//!   [`BackendError::AlreadyExists`] and the existing object is left as it was — never an
//!   overwrite. Of several racing creates of one key exactly one succeeds.
//! - **Objects appear whole.** A reader sees no object or the whole object, never a part; when
//!   create returns `Ok` the object is durable (it survives a crash of the machine).
//! - **Reads** return the whole object ([`Backend::get`]), the whole object only if it is no
//!   larger than a bound ([`Backend::get_bounded`], else [`BackendError::TooLarge`] before
//!   anything is read) or an exact byte range ([`Backend::get_range`]); a range beyond the end
//!   is [`BackendError::OutOfRange`], a missing object [`BackendError::NotFound`].
//! - **Listing** ([`Backend::list`]) returns every object whose key starts with a prefix, sorted
//!   by key, with its size. An object that exists for the whole listing appears exactly once; one
//!   created or deleted meanwhile may or may not appear. Temporaries never appear.
//! - **Delete is idempotent**: deleting a missing object is `Ok`.
//! - **Compare-and-swap** for the few documents that change in place: [`Backend::get_versioned`]
//!   returns an object with its [`Version`]; [`Backend::replace`] writes a new content only if
//!   the object still has the version given (or, given `None`, does not exist yet), else
//!   [`BackendError::Conflict`]. The swap is atomic and durable like a create.
//! - **Synchronous.** Each method returns when its work is done; an asynchronous client sits
//!   behind the trait with its own runtime. Backends are `Send + Sync`: callers share one among
//!   threads.
//! - **Errors are typed** ([`BackendError`]): not found, already exists, conflict, out of range,
//!   invalid key, read-only, no space, transient (worth retrying) and permanent I/O, each naming
//!   the key and, where a person must act, the place.
//!
//! There is no rename, no directory sync, no lock and no path in the trait: a local directory
//! implements create with a temporary file, fsync, a no-replace rename and a directory fsync,
//! an object store with a conditional PUT.
//!
//! ```
//! use blocksnap_backend::{Backend, BackendError, MemoryBackend};
//! let b = MemoryBackend::new();
//! b.create("snapshots/snap-1.json", b"{}").unwrap();
//! assert!(matches!(b.create("snapshots/snap-1.json", b"[]"), Err(BackendError::AlreadyExists { .. })));
//! assert_eq!(b.get("snapshots/snap-1.json").unwrap(), b"{}");
//! assert_eq!(b.list("snapshots/").unwrap().len(), 1);
//! ```

pub mod conformance;
mod counting;
mod error;
mod fault;
mod local;
mod memory;

use std::io::Write;
use std::sync::Arc;

pub use counting::{CountingBackend, Op};
pub use error::{BackendError, Result};
pub use fault::{FaultBackend, FaultPlan};
pub use local::{LocalBackend, TMP_PREFIX, TempHook};
pub use memory::MemoryBackend;

/// The longest key a backend accepts.
pub const MAX_KEY_LEN: usize = 1024;

/// An object's version, for compare-and-swap: opaque, equal only for the same content written
/// by the same write (a hash of the content locally, an ETag on an object store).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(pub String);

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Where a store's objects live. See the crate documentation for the contract.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where this backend keeps its objects, for messages: a path or a URL.
    fn location(&self) -> String;

    /// Creates `key` holding `data`; [`BackendError::AlreadyExists`] if it exists.
    fn create(&self, key: &str, data: &[u8]) -> Result<()>;

    /// A writer for a large object whose name is known only at its end (a pack is named by the
    /// hash of its content): write to it, then [`Staged::commit`] it under a key. `under` is
    /// the prefix the key will start with (`packs/`): a local directory keeps the object's
    /// temporary file there.
    fn stage(&self, under: &str) -> Result<Box<dyn Staged>>;

    /// The whole object.
    fn get(&self, key: &str) -> Result<Vec<u8>>;

    /// The whole object if it is at most `max` bytes, else [`BackendError::TooLarge`], known
    /// from its size before anything is read: what a store holds may be hostile, and a
    /// document or lock object of many gigabytes must not be read into memory.
    fn get_bounded(&self, key: &str, max: u64) -> Result<Vec<u8>> {
        let reader = self.open(key)?;
        let size = reader.size();
        if size > max {
            return Err(BackendError::TooLarge {
                key: key.into(),
                size,
                max,
            });
        }
        reader.read_at(0, size)
    }

    /// [`Backend::get_versioned`] of an object of at most `max` bytes, else
    /// [`BackendError::TooLarge`]. The default asks the size first; a backend that can read
    /// the size and the content of one version at once does so.
    fn get_versioned_bounded(&self, key: &str, max: u64) -> Result<(Vec<u8>, Version)> {
        if let Some(meta) = self.head(key)? {
            if meta.size > max {
                return Err(BackendError::TooLarge {
                    key: key.into(),
                    size: meta.size,
                    max,
                });
            }
        }
        let (data, version) = self.get_versioned(key)?;
        if data.len() as u64 > max {
            return Err(BackendError::TooLarge {
                key: key.into(),
                size: data.len() as u64,
                max,
            });
        }
        Ok((data, version))
    }

    /// Exactly `len` bytes of the object from `offset`; [`BackendError::OutOfRange`] when the
    /// range does not lie within it.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// The object's size, or `None` if it does not exist.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes the object; a missing one is `Ok`.
    fn delete(&self, key: &str) -> Result<()>;

    /// The whole object and its version.
    fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, Version)>;

    /// A handle for many range reads of one object (a pack read chunk by chunk): a local backend
    /// keeps the file open; an object store makes one ranged GET per read. The handle sees the
    /// object as it was when opened.
    fn open(&self, key: &str) -> Result<Arc<dyn ObjectReader>>;

    /// [`Backend::open`] and the object's first `len` bytes (a pack's header), read as
    /// [`ObjectReader::read_at`] reads them. An object store does both in one ranged GET, whose
    /// answer carries the size and version the handle then keeps; the default opens and reads.
    fn open_reading(&self, key: &str, len: u64) -> Result<(Arc<dyn ObjectReader>, Vec<u8>)> {
        let reader = self.open(key)?;
        let head = reader.read_at(0, len)?;
        Ok((reader, head))
    }

    /// What interrupted writes left behind (a local directory's `.tmp-…` files), by path
    /// relative to the store; none where writes leave nothing (an object store).
    fn temporaries(&self) -> Result<Vec<ObjectMeta>> {
        Ok(Vec::new())
    }

    /// Removes one of [`Backend::temporaries`]. Only for a caller that knows no write is under
    /// way (one holding the store alone).
    fn remove_temporary(&self, name: &str) -> Result<()> {
        let _ = name;
        Ok(())
    }

    /// Writes `data` to `key` if its version is still `expected` (`None`: if it does not exist),
    /// else [`BackendError::Conflict`] (or [`BackendError::AlreadyExists`] for `None`). Returns
    /// the new version.
    fn replace(&self, key: &str, data: &[u8], expected: Option<&Version>) -> Result<Version>;

    /// How many requests are worth having in flight at once: 1 for a local disk (one writer
    /// keeps it busy), several for an object store, where each request waits mostly on the
    /// network. Callers bound their memory by it (a pack in flight is held whole).
    fn parallelism(&self) -> usize {
        1
    }

    /// The server whose conditional writes make creates create-only and swaps atomic, where
    /// that must be proved before several writers share a store (an object store: its endpoint
    /// and bucket); `None` where the backend decides them itself (a local directory, memory).
    fn conditional_writes_server(&self) -> Option<String> {
        None
    }

    /// Proves that [`Backend::conditional_writes_server`] honours conditional writes: a
    /// second create of one key is refused and a stale swap is refused. A server that accepts
    /// the headers and ignores them fails with an [`std::io::ErrorKind::Unsupported`] I/O
    /// error saying so. Writes and deletes a probe object outside the store's keys.
    fn probe_conditional_writes(&self) -> Result<()> {
        Ok(())
    }
}

/// Range reads of one object (see [`Backend::open`]).
pub trait ObjectReader: Send + Sync {
    /// The object's size.
    fn size(&self) -> u64;

    /// Exactly `len` bytes from `offset`; [`BackendError::OutOfRange`] beyond the end.
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>>;
}

/// An object being written, not yet visible. Dropped without [`Staged::commit`], it is
/// discarded.
pub trait Staged: Write + Send {
    /// Makes the object visible under `key`, create-only and durable like [`Backend::create`].
    fn commit(self: Box<Self>, key: &str) -> Result<()>;

    /// Bytes written so far.
    fn len(&self) -> u64;

    /// True if nothing was written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks a key against the contract's rules.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason: &'static str| {
        Err(BackendError::InvalidKey {
            key: key.chars().take(200).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("it is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("it is longer than 1024 bytes");
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return bad("it has an empty segment (a leading, trailing or doubled '/')");
        }
        if seg.starts_with('.') {
            return bad("a segment starts with '.' (reserved for the backend's temporaries)");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+@:".contains(&b))
        {
            return bad("it has a character other than letters, digits and . _ - + @ :");
        }
    }
    Ok(())
}

/// Checks a listing prefix: empty, or a key's beginning (it may end with `/` or part of a
/// segment, but may not climb out with `..` or start with `/`).
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return Err(BackendError::InvalidKey {
            key: prefix.into(),
            reason: "a prefix may not start with '/'",
        });
    }
    // A prefix may end inside a segment ("snapshots/snap-0f"), so check it as a key.
    validate_key(trimmed)
}

/// The version of a content in backends that version by content (local, memory).
pub(crate) fn content_version(data: &[u8]) -> Version {
    Version(blake3::hash(data).to_hex()[..32].to_string())
}

/// Reads exactly `len` bytes from `offset` of an object of `size` bytes held in `data`, or the
/// range error.
pub(crate) fn slice_range(key: &str, data: &[u8], offset: u64, len: u64) -> Result<Vec<u8>> {
    let size = data.len() as u64;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(data[offset as usize..end as usize].to_vec()),
        _ => Err(BackendError::OutOfRange {
            key: key.into(),
            offset,
            len,
            size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_rules() {
        for good in [
            "config",
            "packs/3f/3f0a",
            "snapshots/snap-0123.json",
            "locks/host-1-ab.json",
        ] {
            validate_key(good).unwrap();
        }
        for bad in [
            "", "/abs", "a//b", "a/", "../x", "a/../b", "a/.tmp-1", "sp ace", "nul\0", "ü",
        ] {
            assert!(
                matches!(validate_key(bad), Err(BackendError::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
        validate_prefix("").unwrap();
        validate_prefix("snapshots/").unwrap();
        validate_prefix("snapshots/snap-0").unwrap();
        assert!(validate_prefix("/").is_err());
        assert!(validate_prefix("../").is_err());
    }
}
