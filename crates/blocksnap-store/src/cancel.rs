//! Cancellation: how a signal (or any caller) stops a running operation cleanly.
//!
//! [`request`] sets a process-wide flag. Long loops call [`check`] at batch boundaries (a
//! snapshot's batches, a restore's batches, prune's packs, a policy run's volumes, the NBD
//! server's accept loop), which returns [`StoreError::Interrupted`] once the flag is set; the
//! ordinary error path and the Drop guards then remove the operation's temporary files and lock
//! objects, as for any other error.
//!
//! As a backstop for an operation blocked in I/O (a stalled disk or socket), everything the
//! store creates that must not outlive the process is registered here: temporary files
//! ([`crate::fsutil::tmp_path_for`]) and the command's lock objects. [`remove_registered`]
//! removes them all — temporary files first, lock objects last — so that a caller that gives up
//! waiting can exit at once without leaving them behind. Entries whose file is gone (renamed
//! into place, or removed by their owner) are forgotten as new ones come.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, StoreError};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks every running operation to stop at its next batch boundary (async-signal-safe: it only
/// stores to an atomic).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// True once [`request`] was called.
pub fn is_requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(StoreError::Interrupted)` once cancellation was requested.
pub fn check() -> Result<()> {
    if is_requested() {
        Err(StoreError::Interrupted)
    } else {
        Ok(())
    }
}

/// What a registered path is, which decides the order of removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A temporary file.
    Temp,
    /// A temporary directory, removed with its contents.
    TempDir,
    /// A lock object: removed last, once nothing of the operation is left.
    Lock,
}

struct Registry {
    entries: Vec<(Kind, PathBuf)>,
    /// The size at which entries whose file is gone are next forgotten.
    sweep_at: usize,
}

impl Registry {
    const fn new() -> Registry {
        Registry {
            entries: Vec::new(),
            sweep_at: 64,
        }
    }

    fn add(&mut self, kind: Kind, path: &Path) {
        if self.entries.len() >= self.sweep_at {
            self.entries
                .retain(|(_, p)| fs::symlink_metadata(p).is_ok());
            self.sweep_at = (self.entries.len() * 2).max(64);
        }
        self.entries.push((kind, path.to_path_buf()));
    }

    /// Removes every entry's file: temporary files first, lock objects last.
    fn remove_all(&mut self) {
        let entries = std::mem::take(&mut self.entries);
        for kind in [Kind::Temp, Kind::TempDir, Kind::Lock] {
            for (_, path) in entries.iter().filter(|(k, _)| *k == kind) {
                let _ = match kind {
                    Kind::TempDir => fs::remove_dir_all(path),
                    _ => fs::remove_file(path),
                };
            }
        }
    }
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry::new());

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers `path` for [`remove_registered`]; it is forgotten some time after its file is gone.
pub(crate) fn register(kind: Kind, path: &Path) {
    registry().add(kind, path);
}

/// Removes every registered temporary file and directory, then every registered lock object
/// (files already gone are skipped). For a process about to exit without unwinding: the
/// operations that own them must not go on afterwards.
pub fn remove_registered() {
    registry().remove_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_files_are_removed_and_gone_ones_forgotten() {
        // A registry of its own: the process-wide one holds other tests' files.
        let mut reg = Registry::new();
        let dir = tempfile::tempdir().unwrap();
        let (tmp, tmp_dir, lock, kept) = (
            dir.path().join(".tmp-a"),
            dir.path().join(".tmp-d"),
            dir.path().join("lock.json"),
            dir.path().join("kept"),
        );
        for p in [&tmp, &lock, &kept] {
            fs::write(p, b"x").unwrap();
        }
        fs::create_dir(&tmp_dir).unwrap();
        fs::write(tmp_dir.join("f"), b"x").unwrap();
        reg.add(Kind::Temp, &tmp);
        reg.add(Kind::TempDir, &tmp_dir);
        reg.add(Kind::Lock, &lock);
        // Many short-lived entries: those whose file is gone do not pile up.
        for i in 0..1000 {
            reg.add(Kind::Temp, &dir.path().join(format!("never-created-{i}")));
        }
        assert!(
            reg.entries.len() < 200,
            "{} entries kept",
            reg.entries.len()
        );
        reg.remove_all();
        assert!(!tmp.exists() && !tmp_dir.exists() && !lock.exists() && kept.exists());
        assert!(reg.entries.is_empty());
    }
}
