//! The dedup index: where each chunk is stored.
//!
//! It maps a chunk id to its pack and the record's offset and lengths, on sled. It is a cache:
//! every fact in it is also in a pack trailer, and [`Index::clear`] plus re-inserting every
//! trailer's entries (`blocksnap repair index`) rebuilds it. The store writes entries only after
//! the pack that holds them is durable, so an entry never points at a pack that is not there
//! (unless the pack was later damaged or deleted by hand: `check` reports it, a snapshot's dedup
//! trusts an entry only if its pack exists, and `blocksnap repair packs` makes the index forget
//! the chunks that are lost).
//!
//! It also remembers, per snapshot, the packs that every one of the snapshot's chunks had its
//! entry in when the snapshot was taken ([`Index::record_snapshot_packs`]): a dirty-bitmap
//! snapshot takes its parent's chunks unread, and this lets it check the parent's few packs
//! instead of each of its chunks. A record is only true while no entry changes, so every
//! removal or change of an entry forgets all records first (the change epoch,
//! [`Index::epoch`]).
//!
//! sled opens a database in one process at a time. [`Index::open`] therefore waits, calling
//! back so the caller can tell the user, until the other process lets go; when it gives up, the
//! error ([`IndexError::Busy`]) names that process ([`Holder`]) where the system says which it is.
//!
//! ```
//! use blocksnap_index::{Index, Location};
//! use blocksnap_manifest::{ChunkId, PackId};
//! let dir = tempfile::tempdir().unwrap();
//! let index = Index::open(dir.path(), std::time::Duration::from_secs(1), |_| {}).unwrap();
//! let loc = Location { pack: PackId([1; 32]), offset: 64, stored_len: 100, raw_len: 200 };
//! index.insert_batch(&[(ChunkId([2; 32]), loc)]).unwrap();
//! assert_eq!(index.get(&ChunkId([2; 32])).unwrap(), Some(loc));
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blocksnap_manifest::{ChunkId, PackId, SnapshotId};

/// Where a chunk's record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pack.
    pub pack: PackId,
    /// The record's offset in the pack.
    pub offset: u64,
    /// The record's length on disk.
    pub stored_len: u32,
    /// The chunk's length.
    pub raw_len: u32,
}

const VALUE_LEN: usize = 48;

impl Location {
    fn encode(&self) -> [u8; VALUE_LEN] {
        let mut v = [0u8; VALUE_LEN];
        v[..32].copy_from_slice(self.pack.as_bytes());
        v[32..40].copy_from_slice(&self.offset.to_le_bytes());
        v[40..44].copy_from_slice(&self.stored_len.to_le_bytes());
        v[44..48].copy_from_slice(&self.raw_len.to_le_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Self> {
        if v.len() != VALUE_LEN {
            return None;
        }
        Some(Location {
            pack: PackId(v[..32].try_into().ok()?),
            offset: u64::from_le_bytes(v[32..40].try_into().ok()?),
            stored_len: u32::from_le_bytes(v[40..44].try_into().ok()?),
            raw_len: u32::from_le_bytes(v[44..48].try_into().ok()?),
        })
    }
}

/// The process that holds an index open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// Its command line (at most 200 characters of it), empty if it cannot be read.
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.command.is_empty() {
            write!(f, "pid {}", self.pid)
        } else {
            write!(f, "pid {}: {}", self.pid, self.command)
        }
    }
}

/// Index errors.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Another process held the index for longer than we were willing to wait.
    #[error(
        "the index at {path} is in use by another blocksnap process{}; waited {waited:?}. \
         Try again when it finishes, or raise BLOCKSNAP_LOCK_WAIT (seconds)",
        holder.as_ref().map_or(String::new(), |h| format!(" ({h})"))
    )]
    Busy {
        /// The index directory.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// The process holding it, when the system says (Linux: `/proc/locks`).
        holder: Option<Holder>,
    },
    /// sled failed, or an entry is damaged.
    #[error(
        "the index at {path} is damaged or unreadable ({detail}); run `blocksnap repair index`"
    )]
    Damaged {
        /// The index directory.
        path: PathBuf,
        /// What sled said.
        detail: String,
    },
}

/// The dedup index of one store.
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    path: PathBuf,
    /// Per snapshot, the packs its chunks' entries were in ([`Index::record_snapshot_packs`]).
    snapshot_packs: sled::Tree,
    /// Bumped (and `snapshot_packs` emptied) before any entry is removed or changed. The lock
    /// makes "the epoch is still e, so record" and "bump, then forget the records" exclusive.
    epoch: Arc<Mutex<u64>>,
    /// The epoch as last bumped, readable without the lock.
    epoch_seen: Arc<AtomicU64>,
}

impl Index {
    /// Opens (creating if needed) the index at `path`. When another process holds it, calls
    /// `on_wait(elapsed)` at once and then every 30 seconds, and retries until `max_wait` has passed.
    pub fn open(
        path: &Path,
        max_wait: Duration,
        mut on_wait: impl FnMut(Duration),
    ) -> Result<Self, IndexError> {
        let start = Instant::now();
        let mut last_note = None::<Instant>;
        loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(32 << 20)
                .mode(sled::Mode::HighThroughput)
                .open()
            {
                Ok(db) => {
                    let snapshot_packs =
                        db.open_tree("snapshot_packs")
                            .map_err(|e| IndexError::Damaged {
                                path: path.to_path_buf(),
                                detail: e.to_string(),
                            })?;
                    return Ok(Index {
                        db,
                        path: path.to_path_buf(),
                        snapshot_packs,
                        epoch: Arc::default(),
                        epoch_seen: Arc::default(),
                    });
                }
                Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                    let waited = start.elapsed();
                    if waited >= max_wait {
                        return Err(IndexError::Busy {
                            path: path.to_path_buf(),
                            waited,
                            holder: holder(path),
                        });
                    }
                    if last_note.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                        on_wait(waited);
                        last_note = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(IndexError::Damaged {
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    });
                }
            }
        }
    }

    fn damaged(&self, e: impl std::fmt::Display) -> IndexError {
        IndexError::Damaged {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// The location of a chunk, if known.
    pub fn get(&self, id: &ChunkId) -> Result<Option<Location>, IndexError> {
        match self.db.get(id.as_bytes()).map_err(|e| self.damaged(e))? {
            None => Ok(None),
            Some(v) => Location::decode(&v)
                .map(Some)
                .ok_or_else(|| self.damaged(format!("entry for chunk {id:?} has a bad length"))),
        }
    }

    /// True if the chunk is known.
    pub fn contains(&self, id: &ChunkId) -> Result<bool, IndexError> {
        self.db
            .contains_key(id.as_bytes())
            .map_err(|e| self.damaged(e))
    }

    /// Records locations (of chunks in a pack that is already durable).
    ///
    /// Entry by entry, not as a sled batch: once a process applies one batch, sled makes every
    /// later lookup take a shared lock that each batch takes exclusively, and a pack's few
    /// thousand entries at once stalled a snapshot's encoder for ~10 ms each time (measured).
    /// Without batches lookups take no lock. A crash part way leaves some of a pack's chunks
    /// unindexed: a later snapshot stores them again, nothing is lost, `repair` rebuilds the
    /// index.
    ///
    /// An entry that changes (a chunk stored again elsewhere) forgets the snapshot records
    /// just after: a process killed in between leaves a record whose snapshot has a chunk in
    /// a pack the record does not name, which still holds the chunk in the pack it names.
    pub fn insert_batch(&self, entries: &[(ChunkId, Location)]) -> Result<(), IndexError> {
        let mut changed = false;
        for (id, loc) in entries {
            let value = loc.encode();
            let old = self
                .db
                .insert(&id.as_bytes()[..], &value[..])
                .map_err(|e| self.damaged(e))?;
            changed |= old.is_some_and(|old| old.as_ref() != value);
        }
        if changed {
            self.changing()?;
        }
        Ok(())
    }

    /// The change epoch: a count of the times an entry was removed or changed since this
    /// process opened the index. A caller that reads it before its lookups and finds it the
    /// same when it records knows that no entry it looked up changed in between.
    pub fn epoch(&self) -> u64 {
        self.epoch_seen.load(Ordering::SeqCst)
    }

    /// Bumps the epoch and forgets every snapshot record: called before an entry is removed
    /// (and just after one changed).
    fn changing(&self) -> Result<(), IndexError> {
        let mut epoch = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        *epoch += 1;
        self.epoch_seen.store(*epoch, Ordering::SeqCst);
        self.snapshot_packs.clear().map_err(|e| self.damaged(e))
    }

    /// Records that every chunk of `snapshot` has its entry in one of `packs`, if the epoch is
    /// still `epoch` (read before the lookups that found them); false if it moved on and
    /// nothing was recorded. A record is a cache like the rest: lost, it costs lookups.
    pub fn record_snapshot_packs(
        &self,
        snapshot: SnapshotId,
        packs: &[PackId],
        epoch: u64,
    ) -> Result<bool, IndexError> {
        let now = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        if *now != epoch {
            return Ok(false);
        }
        let value: Vec<u8> = packs.iter().flat_map(|p| p.0).collect();
        self.snapshot_packs
            .insert(snapshot.0.to_be_bytes(), value)
            .map_err(|e| self.damaged(e))?;
        Ok(true)
    }

    /// Forgets the record of `snapshot` (a parent whose child now heads its volume: only a
    /// volume's newest snapshot is taken from, so records stay one per volume).
    pub fn forget_snapshot_packs(&self, snapshot: SnapshotId) -> Result<(), IndexError> {
        self.snapshot_packs
            .remove(snapshot.0.to_be_bytes())
            .map(|_| ())
            .map_err(|e| self.damaged(e))
    }

    /// The packs recorded for `snapshot` ([`Index::record_snapshot_packs`]), if any: every
    /// chunk of it has its entry in one of them, as no entry was removed or changed since.
    pub fn snapshot_packs(&self, snapshot: SnapshotId) -> Result<Option<Vec<PackId>>, IndexError> {
        let Some(v) = self
            .snapshot_packs
            .get(snapshot.0.to_be_bytes())
            .map_err(|e| self.damaged(e))?
        else {
            return Ok(None);
        };
        if v.len() % 32 != 0 {
            return Err(self.damaged(format!(
                "the packs recorded for snapshot {snapshot} have a bad length"
            )));
        }
        Ok(Some(
            v.chunks_exact(32)
                .map(|c| PackId(c.try_into().expect("32 bytes")))
                .collect(),
        ))
    }

    /// Removes entries (entry by entry, as [`Index::insert_batch`] inserts).
    pub fn remove_batch(&self, ids: &[ChunkId]) -> Result<(), IndexError> {
        if !ids.is_empty() {
            self.changing()?;
        }
        for id in ids {
            self.db
                .remove(&id.as_bytes()[..])
                .map_err(|e| self.damaged(e))?;
        }
        Ok(())
    }

    /// Removes the entry of `id` if it is still `expected`; true if it was removed. A concurrent
    /// insert of a new location for the chunk (its pack stored again) is never undone.
    pub fn remove_if(&self, id: &ChunkId, expected: &Location) -> Result<bool, IndexError> {
        self.changing()?;
        let swapped = self
            .db
            .compare_and_swap(
                &id.as_bytes()[..],
                Some(&expected.encode()[..]),
                None::<&[u8]>,
            )
            .map_err(|e| self.damaged(e))?;
        Ok(swapped.is_ok())
    }

    /// Makes every change so far durable.
    pub fn flush(&self) -> Result<(), IndexError> {
        self.db.flush().map(|_| ()).map_err(|e| self.damaged(e))
    }

    /// Removes every entry, and forgets every pack.
    pub fn clear(&self) -> Result<(), IndexError> {
        // Packs first: a process killed in between leaves entries of packs no longer known,
        // which are read again, never a pack known as complete whose entries are gone.
        self.changing()?;
        self.packs()?.clear().map_err(|e| self.damaged(e))?;
        self.db.clear().map_err(|e| self.damaged(e))
    }

    /// The tree of packs whose trailers the index holds.
    fn packs(&self) -> Result<sled::Tree, IndexError> {
        self.db.open_tree("packs").map_err(|e| self.damaged(e))
    }

    /// Records that pack `id`'s entries are going into the index: call before inserting them,
    /// then [`Index::mark_pack_complete`] after. A pack marked but not complete (a process
    /// killed between the two) counts as known — its disappearance is noticed — and as not
    /// indexed: it is read again.
    pub fn mark_pack(&self, id: &PackId) -> Result<(), IndexError> {
        self.packs()?
            .insert(&id.as_bytes()[..], &[0u8][..])
            .map(|_| ())
            .map_err(|e| self.damaged(e))
    }

    /// Records that every entry of pack `id` is in the index.
    pub fn mark_pack_complete(&self, id: &PackId) -> Result<(), IndexError> {
        self.packs()?
            .insert(&id.as_bytes()[..], &[1u8][..])
            .map(|_| ())
            .map_err(|e| self.damaged(e))
    }

    /// Forgets that pack `id` is in the index (its entries are removed separately).
    pub fn forget_pack(&self, id: &PackId) -> Result<(), IndexError> {
        self.changing()?;
        self.packs()?
            .remove(&id.as_bytes()[..])
            .map(|_| ())
            .map_err(|e| self.damaged(e))
    }

    /// The packs whose entries the index holds: a host adds only the trailers of packs not in
    /// this set when it opens a store others write to.
    ///
    /// Returns every known pack with whether its entries are all in.
    pub fn known_packs(&self) -> Result<std::collections::HashMap<PackId, bool>, IndexError> {
        let mut out = std::collections::HashMap::new();
        for r in self.packs()?.iter() {
            let (k, v) = r.map_err(|e| self.damaged(e))?;
            let id: [u8; 32] = k
                .as_ref()
                .try_into()
                .map_err(|_| self.damaged("a pack key has a bad length"))?;
            // Marks written before completeness was recorded (empty values) were complete.
            out.insert(PackId(id), v.as_ref() != [0u8]);
        }
        Ok(out)
    }

    /// Number of entries (walks the whole index).
    pub fn len(&self) -> usize {
        self.db.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }

    /// Every entry, in id order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(ChunkId, Location), IndexError>> + '_ {
        self.db.iter().map(move |r| {
            let (k, v) = r.map_err(|e| self.damaged(e))?;
            let id = ChunkId(
                k.as_ref()
                    .try_into()
                    .map_err(|_| self.damaged("a key has a bad length"))?,
            );
            let loc =
                Location::decode(&v).ok_or_else(|| self.damaged("a value has a bad length"))?;
            Ok((id, loc))
        })
    }
}

fn is_lock_error(e: &std::io::Error) -> bool {
    // sled reports the lock held by another process as WouldBlock, or as an error naming the lock.
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.raw_os_error() == Some(11)
        || e.to_string().contains("lock")
}

/// The process holding sled's lock (an exclusive `flock` on `path/db`), from `/proc/locks`:
/// the flock on that file's device and inode, taken by a process that has the file open (a pid
/// in `/proc/locks` can be stale or, across pid namespaces, another process's).
fn holder(path: &Path) -> Option<Holder> {
    use std::os::unix::fs::MetadataExt;
    let db = path.join("db");
    let meta = std::fs::metadata(&db).ok()?;
    let dev = meta.dev();
    // Linux's dev_t encoding, as /proc/locks prints it: hex major, hex minor, decimal inode.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let file = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let real = std::fs::canonicalize(&db).ok()?;
    std::fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .filter_map(|line| {
            // "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"; waiters have "->" after "1:".
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 6 && f[1] == "FLOCK" && f[5] == file)
                .then(|| f[4].parse::<u32>().ok())
                .flatten()
        })
        .find(|pid| holds_open(*pid, &real))
        .map(|pid| Holder {
            pid,
            command: command_line(pid),
        })
}

/// True if process `pid` has `file` open.
fn holds_open(pid: u32, file: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == file))
}

/// The command line of process `pid`, its arguments joined by spaces, at most 200 characters.
fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let words: Vec<&str> = text.split('\0').filter(|w| !w.is_empty()).collect();
    words.join(" ").chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_names_the_process_holding_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Index::open(dir.path(), Duration::from_secs(1), |_| {}).unwrap();
        // A second open, even in this process, meets sled's lock on another file description.
        let Err(e) = Index::open(dir.path(), Duration::ZERO, |_| {}) else {
            panic!("a held index opened twice");
        };
        let IndexError::Busy { holder, .. } = &e else {
            panic!("not Busy: {e}");
        };
        let holder = holder.as_ref().expect("the holder is found in /proc/locks");
        assert_eq!(holder.pid, std::process::id());
        assert!(!holder.command.is_empty());
        assert!(
            e.to_string().contains(&format!(
                "in use by another blocksnap process (pid {}",
                holder.pid
            )),
            "{e}"
        );
    }

    #[test]
    fn insert_get_remove_clear() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), Duration::from_secs(1), |_| {}).unwrap();
        let loc = Location {
            pack: PackId([1; 32]),
            offset: 64,
            stored_len: 10,
            raw_len: 20,
        };
        index
            .insert_batch(&[(ChunkId([1; 32]), loc), (ChunkId([2; 32]), loc)])
            .unwrap();
        assert_eq!(index.len(), 2);
        assert!(index.contains(&ChunkId([1; 32])).unwrap());
        index.remove_batch(&[ChunkId([1; 32])]).unwrap();
        let other = Location { offset: 65, ..loc };
        assert!(!index.remove_if(&ChunkId([2; 32]), &other).unwrap());
        assert!(index.contains(&ChunkId([2; 32])).unwrap());
        assert!(index.remove_if(&ChunkId([2; 32]), &loc).unwrap());
        assert!(!index.contains(&ChunkId([2; 32])).unwrap());
        index.insert_batch(&[(ChunkId([2; 32]), loc)]).unwrap();
        assert_eq!(index.get(&ChunkId([1; 32])).unwrap(), None);
        assert_eq!(index.iter().count(), 1);
        index.clear().unwrap();
        assert!(index.is_empty());
    }

    #[test]
    fn a_snapshot_record_lasts_until_an_entry_is_removed_or_changed() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), Duration::from_secs(1), |_| {}).unwrap();
        let at = |pack: u8, offset: u64| Location {
            pack: PackId([pack; 32]),
            offset,
            stored_len: 10,
            raw_len: 20,
        };
        let (a, b, c) = (ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32]));
        index.insert_batch(&[(a, at(1, 0)), (b, at(2, 0))]).unwrap();
        let snap = SnapshotId(7);
        let packs = [PackId([1; 32]), PackId([2; 32])];
        let record = |epoch| index.record_snapshot_packs(snap, &packs, epoch).unwrap();

        // Recorded at the epoch the lookups began at; inserts of new chunks, and an insert
        // that says again what an entry says, leave it.
        let e = index.epoch();
        assert!(record(e));
        index.insert_batch(&[(c, at(3, 0)), (a, at(1, 0))]).unwrap();
        assert_eq!(index.epoch(), e);
        assert_eq!(index.snapshot_packs(snap).unwrap(), Some(packs.to_vec()));
        assert_eq!(index.snapshot_packs(SnapshotId(8)).unwrap(), None);
        assert!(
            index
                .record_snapshot_packs(SnapshotId(8), &packs, e)
                .unwrap()
        );
        index.forget_snapshot_packs(SnapshotId(8)).unwrap();
        assert_eq!(index.snapshot_packs(SnapshotId(8)).unwrap(), None);
        assert!(index.snapshot_packs(snap).unwrap().is_some());

        // Each way an entry goes or changes forgets every record and moves the epoch, so a
        // record of lookups made before it is refused.
        type Change<'a> = &'a dyn Fn(&Index);
        let changes: [(&str, Change); 6] = [
            ("changed", &|i| i.insert_batch(&[(a, at(9, 64))]).unwrap()),
            ("removed", &|i| i.remove_batch(&[c]).unwrap()),
            ("removed if", &|i| {
                assert!(i.remove_if(&a, &at(9, 64)).unwrap())
            }),
            ("not removed if", &|i| {
                assert!(!i.remove_if(&b, &at(5, 5)).unwrap())
            }),
            ("pack forgotten", &|i| {
                i.forget_pack(&PackId([2; 32])).unwrap()
            }),
            ("cleared", &|i| i.clear().unwrap()),
        ];
        for (what, change) in changes {
            let before = index.epoch();
            assert!(record(before), "{what}");
            change(&index);
            assert!(index.epoch() > before, "{what}");
            assert_eq!(index.snapshot_packs(snap).unwrap(), None, "{what}");
            assert!(!record(before), "{what}: a stale record was kept");
        }
    }

    #[test]
    fn reopen_keeps_entries() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location {
            pack: PackId([9; 32]),
            offset: 1,
            stored_len: 2,
            raw_len: 3,
        };
        {
            let index = Index::open(dir.path(), Duration::from_secs(1), |_| {}).unwrap();
            index.insert_batch(&[(ChunkId([5; 32]), loc)]).unwrap();
            index.flush().unwrap();
        }
        let index = Index::open(dir.path(), Duration::from_secs(1), |_| {}).unwrap();
        assert_eq!(index.get(&ChunkId([5; 32])).unwrap(), Some(loc));
    }
}
