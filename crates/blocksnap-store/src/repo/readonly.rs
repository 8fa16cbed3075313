//! Stores that cannot be written: a read-only mount, a read-only snapshot of the backup disk, a
//! user without write permission.
//!
//! Reading commands (restore, diff, serve nbd, image rebuild, check, every list and show) work
//! on such a store: they take what lock they can without writing (see
//! [`Store::lock_reading`](crate::repo::Store)) and read chunk locations from the pack trailers
//! instead of the index, which sled cannot open without writing. Writing commands fail at once,
//! before changing anything, with an error naming the store and saying why it is read-only.

use std::path::Path;

use rustix::fs::{Access, AtFlags, CWD, accessat};
use rustix::io::Errno;

use crate::error::{Result, StoreError};
use crate::repo::Store;

/// The directories a writing command writes into.
const WRITTEN: [&str; 3] = ["locks", "snapshots", "packs"];

impl Store {
    /// Why this store cannot be written (`it is on a read-only file system`, `this user may not
    /// write to …`), or `None` if it can. Asked once per open store.
    pub fn read_only(&self) -> Option<&str> {
        self.read_only
            .get_or_init(|| self.local_root().and_then(probe))
            .as_deref()
    }

    /// Fails, naming the store and why it is read-only, unless this store can be written.
    /// Writing commands call it before they change anything.
    pub(crate) fn require_writable(&self, command: &str) -> Result<()> {
        match self.read_only() {
            None => Ok(()),
            Some(why) => Err(StoreError::Other(format!(
                "the store {} is read-only ({why}): {command} must write to it; nothing was \
                 changed. Run it where the store is writable (mounted read-write, or as a user \
                 who may write to it). Reading commands (snapshot list|show|restore|diff, image \
                 list|show|rebuild, serve nbd, check, and the other lists) work on it as it is.",
                self.place()
            ))),
        }
    }
}

/// Why the store at `root` cannot be written, if it cannot: the store directory and those
/// written by commands are asked (as the effective user) for write access.
fn probe(root: &Path) -> Option<String> {
    let dirs = std::iter::once(root.to_path_buf())
        .chain(WRITTEN.iter().map(|d| root.join(d)))
        .filter(|d| d.exists());
    for dir in dirs {
        match accessat(CWD, &dir, Access::WRITE_OK, AtFlags::EACCESS) {
            Err(Errno::ROFS) => return Some("it is on a read-only file system".into()),
            Err(Errno::ACCESS | Errno::PERM) => {
                return Some(format!("this user may not write to {}", dir.display()));
            }
            _ => {}
        }
    }
    None
}
