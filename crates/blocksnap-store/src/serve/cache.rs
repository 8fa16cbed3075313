//! The decoded chunks `serve nbd` keeps, shared by every connection: bounded in bytes, least
//! recently used out first. A chunk being decoded has its entry already, so a reader that needs
//! it (another connection, or the read-ahead of the same one) waits for that decode instead of
//! decoding it again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use blocksnap_manifest::ChunkId;

/// A chunk's bytes once decoded, or why it could not be.
type Slot = Arc<OnceLock<Result<Arc<Vec<u8>>, String>>>;

struct Entry {
    slot: Slot,
    len: u64,
    used: u64,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<ChunkId, Entry>,
    /// Last use → chunk: the oldest first.
    order: BTreeMap<u64, ChunkId>,
    bytes: u64,
    tick: u64,
}

/// Decoded chunks, at most `budget` bytes of them (one chunk more while it is being decoded).
pub(crate) struct ChunkCache {
    lru: Mutex<Lru>,
    budget: u64,
    /// Bytes of chunks decoded (each decode counted once, however many readers it served).
    pub decoded_bytes: AtomicU64,
    /// Chunks decoded.
    pub decoded_chunks: AtomicU64,
}

impl ChunkCache {
    pub fn new(budget: u64) -> Self {
        ChunkCache {
            lru: Mutex::new(Lru::default()),
            budget,
            decoded_bytes: AtomicU64::new(0),
            decoded_chunks: AtomicU64::new(0),
        }
    }

    /// True if `id` is decoded or being decoded.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.lock().entries.contains_key(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes of chunk `id` (`len` long), decoded by `decode` unless they are cached or
    /// being decoded by another thread (then this one waits for it). A failed decode is not
    /// kept: the next reader tries again.
    pub fn get(
        &self,
        id: &ChunkId,
        len: u64,
        decode: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<Arc<Vec<u8>>, String> {
        let slot = {
            let mut lru = self.lock();
            lru.tick += 1;
            let tick = lru.tick;
            if let Some(e) = lru.entries.get_mut(id) {
                let old = std::mem::replace(&mut e.used, tick);
                let slot = e.slot.clone();
                lru.order.remove(&old);
                lru.order.insert(tick, *id);
                slot
            } else {
                let slot = Slot::default();
                lru.entries.insert(
                    *id,
                    Entry {
                        slot: slot.clone(),
                        len,
                        used: tick,
                    },
                );
                lru.order.insert(tick, *id);
                lru.bytes += len;
                // Evict the oldest until within budget (never the one just added).
                while lru.bytes > self.budget && lru.order.len() > 1 {
                    let Some((_, old)) = lru.order.pop_first() else {
                        break;
                    };
                    if let Some(e) = lru.entries.remove(&old) {
                        lru.bytes -= e.len;
                    }
                }
                slot
            }
        };
        let result = slot.get_or_init(|| {
            let r = decode().map(Arc::new);
            if r.is_ok() {
                self.decoded_bytes.fetch_add(len, Ordering::Relaxed);
                self.decoded_chunks.fetch_add(1, Ordering::Relaxed);
            }
            r
        });
        if result.is_err() {
            let mut lru = self.lock();
            if lru
                .entries
                .get(id)
                .is_some_and(|e| Arc::ptr_eq(&e.slot, &slot))
            {
                if let Some(e) = lru.entries.remove(id) {
                    lru.order.remove(&e.used);
                    lru.bytes -= e.len;
                }
            }
        }
        result.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_decoded_once_and_the_budget_holds() {
        let cache = ChunkCache::new(100);
        let id = |n: u8| ChunkId([n; 32]);
        let calls = AtomicU64::new(0);
        let decode = |n: u8| {
            calls.fetch_add(1, Ordering::Relaxed);
            Ok(vec![n; 40])
        };
        assert_eq!(cache.get(&id(1), 40, || decode(1)).unwrap()[0], 1);
        assert_eq!(cache.get(&id(1), 40, || decode(9)).unwrap()[0], 1, "cached");
        cache.get(&id(2), 40, || decode(2)).unwrap();
        // A third one passes the budget: the least recently used (1) goes.
        cache.get(&id(1), 40, || decode(1)).unwrap();
        cache.get(&id(3), 40, || decode(3)).unwrap();
        assert!(cache.has(&id(1)) && cache.has(&id(3)) && !cache.has(&id(2)));
        assert!(cache.lock().bytes <= 100);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(cache.decoded_bytes.load(Ordering::Relaxed), 120);
        // A failure is told and not kept.
        assert!(cache.get(&id(4), 40, || Err("damaged".into())).is_err());
        assert!(!cache.has(&id(4)));
        // Many threads asking for one chunk decode it once.
        let cache = ChunkCache::new(1 << 20);
        let calls = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    cache
                        .get(&id(7), 10, || {
                            calls.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            Ok(vec![7; 10])
                        })
                        .unwrap()
                });
            }
        });
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
