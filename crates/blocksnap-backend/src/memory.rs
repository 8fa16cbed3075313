//! A store in memory, for tests: the contract with nothing else.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::{
    Backend, BackendError, ObjectMeta, Result, Staged, Version, content_version, slice_range,
    validate_key, validate_prefix,
};

/// Objects in a map behind a mutex. Clones share the same objects.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    objects: Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Vec<u8>>>> {
        // A panic while holding the lock leaves the map consistent (every change is one insert
        // or remove), so a poisoned lock is still good.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn object(&self, key: &str) -> Result<Arc<Vec<u8>>> {
        validate_key(key)?;
        self.map()
            .get(key)
            .cloned()
            .ok_or_else(|| BackendError::NotFound { key: key.into() })
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".into()
    }

    fn create(&self, key: &str, data: &[u8]) -> Result<()> {
        validate_key(key)?;
        let mut map = self.map();
        if map.contains_key(key) {
            return Err(BackendError::AlreadyExists { key: key.into() });
        }
        map.insert(key.into(), Arc::new(data.to_vec()));
        Ok(())
    }

    fn stage(&self, under: &str) -> Result<Box<dyn Staged>> {
        crate::validate_prefix(under)?;
        Ok(Box::new(MemoryStaged {
            backend: self.clone(),
            data: Vec::new(),
        }))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self.object(key)?.to_vec())
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        slice_range(key, &self.object(key)?, offset, len)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        validate_key(key)?;
        Ok(self.map().get(key).map(|d| ObjectMeta {
            key: key.into(),
            size: d.len() as u64,
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        Ok(self
            .map()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, d)| ObjectMeta {
                key: k.clone(),
                size: d.len() as u64,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.map().remove(key);
        Ok(())
    }

    fn open(&self, key: &str) -> Result<Arc<dyn crate::ObjectReader>> {
        Ok(Arc::new(MemoryReader {
            key: key.into(),
            data: self.object(key)?,
        }))
    }

    fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, Version)> {
        let d = self.object(key)?;
        Ok((d.to_vec(), content_version(&d)))
    }

    fn replace(&self, key: &str, data: &[u8], expected: Option<&Version>) -> Result<Version> {
        validate_key(key)?;
        let mut map = self.map();
        match (expected, map.get(key)) {
            (None, None) => {}
            (None, Some(_)) => return Err(BackendError::AlreadyExists { key: key.into() }),
            (Some(want), Some(have)) if *want == content_version(have) => {}
            (Some(_), _) => return Err(BackendError::Conflict { key: key.into() }),
        }
        map.insert(key.into(), Arc::new(data.to_vec()));
        Ok(content_version(data))
    }
}

struct MemoryReader {
    key: String,
    data: Arc<Vec<u8>>,
}

impl crate::ObjectReader for MemoryReader {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        slice_range(&self.key, &self.data, offset, len)
    }
}

struct MemoryStaged {
    backend: MemoryBackend,
    data: Vec<u8>,
}

impl Write for MemoryStaged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Staged for MemoryStaged {
    fn commit(self: Box<Self>, key: &str) -> Result<()> {
        self.backend.create(key, &self.data)
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_the_conformance_suite() {
        crate::conformance::run(&|| std::sync::Arc::new(super::MemoryBackend::new()));
    }
}
