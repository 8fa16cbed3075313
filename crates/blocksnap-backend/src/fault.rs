//! A backend that fails on purpose: for crash-point tests that enumerate every operation.
//!
//! Every call of a [`Backend`] method (and every [`Staged::commit`]) is one operation, numbered
//! from 1. A [`FaultPlan`] makes the backend *stop dead* before operation N — that operation and
//! every later one fail without any effect, as if the machine had lost power right there, and a
//! staged object being written is left behind as a crash would leave it (a temporary file in a
//! local directory) — or fail given operations once with a transient error and go on.
//!
//! A crash test first runs a command on a plain wrapper to learn how many operations it makes
//! ([`FaultBackend::ops`]), then once per N in `1..=ops` on a fresh copy of the store with
//! `stop_before: Some(N)`, and checks what the store looks like afterwards with the plain
//! backend underneath.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Backend, BackendError, ObjectMeta, Result, Staged, Version};

/// When to fail.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Stop dead before this operation (1-based): it and all later ones fail, with no effect.
    pub stop_before: Option<u64>,
    /// Fail these operations once each with a transient error, with no effect; others go on.
    pub transient: Vec<u64>,
}

/// Wraps another backend and fails by plan. Clones share the counter and the plan.
#[derive(Debug, Clone)]
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    plan: Arc<FaultPlan>,
    ops: Arc<AtomicU64>,
    dead: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
}

impl FaultBackend {
    /// `inner`, failing as `plan` says.
    pub fn new(inner: Arc<dyn Backend>, plan: FaultPlan) -> Self {
        FaultBackend {
            inner,
            plan: Arc::new(plan),
            ops: Arc::new(AtomicU64::new(0)),
            dead: Arc::new(AtomicBool::new(false)),
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Operations started so far (including refused ones).
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// True once the backend has stopped dead.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Every operation so far, as `N op key` lines: which operation a stop hit.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts one operation; an error if the plan says it fails.
    fn op(&self, what: &str, key: &str) -> Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{n} {what} {key}"));
        if self.plan.stop_before.is_some_and(|s| n >= s) {
            self.dead.store(true, Ordering::SeqCst);
        }
        if self.is_dead() {
            return Err(BackendError::Io {
                op: "reach",
                key: key.into(),
                location: self.inner.location(),
                source: std::io::Error::other(format!(
                    "injected fault: stopped dead before operation {}",
                    self.plan.stop_before.unwrap_or(n)
                )),
            });
        }
        if self.plan.transient.contains(&n) {
            return Err(BackendError::Transient {
                location: self.inner.location(),
                key: key.into(),
                detail: format!("injected transient failure of operation {n}"),
            });
        }
        Ok(())
    }
}

impl Backend for FaultBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn create(&self, key: &str, data: &[u8]) -> Result<()> {
        self.op("create", key)?;
        self.inner.create(key, data)
    }

    fn stage(&self, under: &str) -> Result<Box<dyn Staged>> {
        self.op("stage", under)?;
        Ok(Box::new(FaultStaged {
            backend: self.clone(),
            inner: Some(self.inner.stage(under)?),
        }))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.op("get", key)?;
        self.inner.get(key)
    }

    fn get_bounded(&self, key: &str, max: u64) -> Result<Vec<u8>> {
        self.op("get", key)?;
        self.inner.get_bounded(key, max)
    }

    fn get_versioned_bounded(&self, key: &str, max: u64) -> Result<(Vec<u8>, Version)> {
        self.op("get_versioned", key)?;
        self.inner.get_versioned_bounded(key, max)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.op("get_range", key)?;
        self.inner.get_range(key, offset, len)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.op("head", key)?;
        self.inner.head(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.op("list", prefix)?;
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.op("delete", key)?;
        self.inner.delete(key)
    }

    fn open(&self, key: &str) -> Result<Arc<dyn crate::ObjectReader>> {
        self.op("open", key)?;
        Ok(Arc::new(FaultReader {
            backend: self.clone(),
            key: key.into(),
            inner: self.inner.open(key)?,
        }))
    }

    fn temporaries(&self) -> Result<Vec<ObjectMeta>> {
        self.op("temporaries", "")?;
        self.inner.temporaries()
    }

    fn remove_temporary(&self, name: &str) -> Result<()> {
        self.op("remove_temporary", name)?;
        self.inner.remove_temporary(name)
    }

    fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, Version)> {
        self.op("get_versioned", key)?;
        self.inner.get_versioned(key)
    }

    fn replace(&self, key: &str, data: &[u8], expected: Option<&Version>) -> Result<Version> {
        self.op("replace", key)?;
        self.inner.replace(key, data, expected)
    }
}

struct FaultReader {
    backend: FaultBackend,
    key: String,
    inner: Arc<dyn crate::ObjectReader>,
}

impl crate::ObjectReader for FaultReader {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.backend.op("read_at", &self.key)?;
        self.inner.read_at(offset, len)
    }
}

struct FaultStaged {
    backend: FaultBackend,
    inner: Option<Box<dyn Staged>>,
}

impl Write for FaultStaged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.backend.is_dead() {
            return Err(std::io::Error::other("injected fault: the backend is dead"));
        }
        self.inner
            .as_mut()
            .expect("present until commit")
            .write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.as_mut().expect("present until commit").flush()
    }
}

impl Staged for FaultStaged {
    fn commit(mut self: Box<Self>, key: &str) -> Result<()> {
        let inner = self.inner.take().expect("present until commit");
        if let Err(e) = self.backend.op("commit", key) {
            if self.backend.is_dead() {
                // A crash cleans nothing up: leave the staged object where it lies.
                std::mem::forget(inner);
            }
            return Err(e);
        }
        inner.commit(key)
    }

    fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, |s| s.len())
    }
}

impl Drop for FaultStaged {
    fn drop(&mut self) {
        if self.backend.is_dead() {
            if let Some(inner) = self.inner.take() {
                std::mem::forget(inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn passes_the_conformance_suite_when_planned_to_never_fail() {
        crate::conformance::run(&|| {
            Arc::new(FaultBackend::new(
                Arc::new(MemoryBackend::new()),
                FaultPlan::default(),
            ))
        });
    }

    #[test]
    fn stops_dead_at_the_planned_operation_and_stays_dead() {
        let mem = Arc::new(MemoryBackend::new());
        let f = FaultBackend::new(
            mem.clone(),
            FaultPlan {
                stop_before: Some(3),
                ..FaultPlan::default()
            },
        );
        f.create("a", b"1").unwrap();
        f.create("b", b"2").unwrap();
        assert!(f.create("c", b"3").is_err());
        assert!(f.get("a").is_err(), "dead stays dead");
        assert!(f.is_dead());
        assert_eq!(
            mem.list("").unwrap().len(),
            2,
            "the refused create had no effect"
        );
        assert_eq!(f.ops(), 4);
        assert_eq!(f.log()[2], "3 create c");
    }

    #[test]
    fn transient_failures_fail_once() {
        let f = FaultBackend::new(
            Arc::new(MemoryBackend::new()),
            FaultPlan {
                transient: vec![1],
                ..FaultPlan::default()
            },
        );
        assert!(f.create("a", b"1").unwrap_err().is_transient());
        f.create("a", b"1").unwrap();
        assert!(!f.is_dead());
    }

    #[test]
    fn a_crash_leaves_a_local_staged_object_behind() {
        let d = tempfile::tempdir().unwrap();
        let f = FaultBackend::new(
            Arc::new(crate::LocalBackend::new(d.path())),
            FaultPlan {
                stop_before: Some(2),
                ..FaultPlan::default()
            },
        );
        let mut s = f.stage("packs/").unwrap();
        s.write_all(b"pack bytes").unwrap();
        assert!(s.commit("packs/ab/abcd").is_err());
        let temps = std::fs::read_dir(d.path().join("packs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .count();
        assert_eq!(temps, 1);
    }
}
