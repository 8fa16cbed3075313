//! [`CountingBackend`]: another backend, with every request it is asked for counted.
//!
//! What an operation costs on an object store is its number of requests: this wrapper records
//! each call of the trait (and each read of an [`ObjectReader`] it opened) by kind and key, so
//! a test or a benchmark can say "opening the store did one listing and two reads".
//!
//! ```
//! use std::sync::Arc;
//! use blocksnap_backend::{Backend, CountingBackend, MemoryBackend, Op};
//! let b = CountingBackend::new(Arc::new(MemoryBackend::new()));
//! b.create("a/1", b"x").unwrap();
//! b.list("a/").unwrap();
//! assert_eq!(b.count(Op::List, ""), 1);
//! assert_eq!(b.count(Op::Create, "a/"), 1);
//! ```

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::{Backend, ObjectMeta, ObjectReader, Result, Staged, Version};

/// The kinds of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// A listing ([`Backend::list`]).
    List,
    /// A whole read ([`Backend::get`], `get_bounded`, `get_versioned`, …).
    Get,
    /// A ranged read ([`Backend::get_range`], [`ObjectReader::read_at`]).
    Range,
    /// A size query ([`Backend::head`], [`Backend::open`]).
    Head,
    /// A create ([`Backend::create`], [`Staged::commit`]).
    Create,
    /// A compare-and-swap ([`Backend::replace`]).
    Replace,
    /// A delete.
    Delete,
}

/// A backend that counts the requests made of `inner`.
#[derive(Debug)]
pub struct CountingBackend {
    inner: Arc<dyn Backend>,
    log: Arc<Mutex<Vec<(Op, String)>>>,
}

impl CountingBackend {
    /// Counts what is asked of `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        CountingBackend {
            inner,
            log: Arc::default(),
        }
    }

    fn note(&self, op: Op, key: &str) {
        self.log
            .lock()
            .expect("not poisoned")
            .push((op, key.to_string()));
    }

    /// Requests of kind `op` on keys starting with `prefix` since the last [`Self::reset`].
    pub fn count(&self, op: Op, prefix: &str) -> u64 {
        self.log
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(o, k)| *o == op && k.starts_with(prefix))
            .count() as u64
    }

    /// Every request since the last [`Self::reset`], in order.
    pub fn requests(&self) -> Vec<(Op, String)> {
        self.log.lock().expect("not poisoned").clone()
    }

    /// Forgets what was counted.
    pub fn reset(&self) {
        self.log.lock().expect("not poisoned").clear();
    }
}

impl Backend for CountingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn create(&self, key: &str, data: &[u8]) -> Result<()> {
        self.note(Op::Create, key);
        self.inner.create(key, data)
    }

    fn stage(&self, under: &str) -> Result<Box<dyn Staged>> {
        Ok(Box::new(CountingStaged {
            inner: self.inner.stage(under)?,
            log: self.log.clone(),
        }))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.note(Op::Get, key);
        self.inner.get(key)
    }

    fn get_bounded(&self, key: &str, max: u64) -> Result<Vec<u8>> {
        self.note(Op::Get, key);
        self.inner.get_bounded(key, max)
    }

    fn get_versioned_bounded(&self, key: &str, max: u64) -> Result<(Vec<u8>, Version)> {
        self.note(Op::Get, key);
        self.inner.get_versioned_bounded(key, max)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.note(Op::Range, key);
        self.inner.get_range(key, offset, len)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.note(Op::Head, key);
        self.inner.head(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.note(Op::List, prefix);
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.note(Op::Delete, key);
        self.inner.delete(key)
    }

    fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, Version)> {
        self.note(Op::Get, key);
        self.inner.get_versioned(key)
    }

    fn open(&self, key: &str) -> Result<Arc<dyn ObjectReader>> {
        self.note(Op::Head, key);
        Ok(Arc::new(CountingReader {
            inner: self.inner.open(key)?,
            key: key.into(),
            log: self.log.clone(),
        }))
    }

    fn temporaries(&self) -> Result<Vec<ObjectMeta>> {
        self.inner.temporaries()
    }

    fn remove_temporary(&self, name: &str) -> Result<()> {
        self.inner.remove_temporary(name)
    }

    fn replace(&self, key: &str, data: &[u8], expected: Option<&Version>) -> Result<Version> {
        self.note(Op::Replace, key);
        self.inner.replace(key, data, expected)
    }

    fn parallelism(&self) -> usize {
        self.inner.parallelism()
    }

    fn conditional_writes_server(&self) -> Option<String> {
        self.inner.conditional_writes_server()
    }

    fn probe_conditional_writes(&self) -> Result<()> {
        self.inner.probe_conditional_writes()
    }
}

struct CountingReader {
    inner: Arc<dyn ObjectReader>,
    key: String,
    log: Arc<Mutex<Vec<(Op, String)>>>,
}

impl ObjectReader for CountingReader {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.log
            .lock()
            .expect("not poisoned")
            .push((Op::Range, self.key.clone()));
        self.inner.read_at(offset, len)
    }
}

struct CountingStaged {
    inner: Box<dyn Staged>,
    log: Arc<Mutex<Vec<(Op, String)>>>,
}

impl Write for CountingStaged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Staged for CountingStaged {
    fn commit(self: Box<Self>, key: &str) -> Result<()> {
        self.log
            .lock()
            .expect("not poisoned")
            .push((Op::Create, key.to_string()));
        self.inner.commit(key)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn passes_the_conformance_suite_and_counts() {
        crate::conformance::run(&|| Arc::new(CountingBackend::new(Arc::new(MemoryBackend::new()))));
        let b = CountingBackend::new(Arc::new(MemoryBackend::new()));
        let mut s = b.stage("packs/").unwrap();
        s.write_all(b"abc").unwrap();
        s.commit("packs/p").unwrap();
        let r = b.open("packs/p").unwrap();
        r.read_at(0, 2).unwrap();
        r.read_at(1, 2).unwrap();
        b.get("packs/p").unwrap();
        assert_eq!(b.count(Op::Create, "packs/"), 1);
        assert_eq!(b.count(Op::Head, "packs/"), 1);
        assert_eq!(b.count(Op::Range, "packs/p"), 2);
        assert_eq!(b.count(Op::Get, ""), 1);
        assert_eq!(b.count(Op::List, ""), 0);
        b.reset();
        assert!(b.requests().is_empty());
    }
}
