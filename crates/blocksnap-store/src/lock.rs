//! The store lock: `locks/store.lock`, an OS file lock (flock). Snapshots, restores and checks
//! hold it shared; prune and repair hold it exclusively. The kernel releases it when the process
//! ends, however it ends, so a killed blocksnap never leaves a stale lock behind.

use std::fs::{File, OpenOptions};

use rustix::fs::{FlockOperation, flock};

use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::store::Store;

/// Held until dropped.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

impl Store {
    fn lock(&self, exclusive: bool, progress: &dyn Progress) -> Result<StoreLock> {
        let dir = self.root().join("locks");
        std::fs::create_dir_all(&dir).map_err(StoreError::io("cannot create", &dir))?;
        let path = dir.join("store.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("cannot open lock", &path))?;
        let (try_op, op) = if exclusive {
            (
                FlockOperation::NonBlockingLockExclusive,
                FlockOperation::LockExclusive,
            )
        } else {
            (
                FlockOperation::NonBlockingLockShared,
                FlockOperation::LockShared,
            )
        };
        if flock(&file, try_op).is_err() {
            progress.message(&if exclusive {
                format!("waiting for other blocksnap commands on {} to finish (prune and repair need the store alone)", self.root().display())
            } else {
                format!("waiting for a prune or repair on {} to finish", self.root().display())
            });
            flock(&file, op).map_err(|e| StoreError::Io {
                what: "cannot lock",
                path: path.clone(),
                source: e.into(),
            })?;
        }
        Ok(StoreLock { _file: file })
    }

    /// Shared: for snapshot, restore and check.
    pub(crate) fn lock_shared(&self, progress: &dyn Progress) -> Result<StoreLock> {
        self.lock(false, progress)
    }

    /// Exclusive: for prune and repair.
    pub(crate) fn lock_exclusive(&self, progress: &dyn Progress) -> Result<StoreLock> {
        self.lock(true, progress)
    }
}
