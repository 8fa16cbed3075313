//! The dedup index: chunk id -> pack location, a local cache of the packs' trailers.
//!
//! It lives outside the store, in the user's cache directory, per store id
//! (`$XDG_CACHE_HOME/blocksnap/<store id>/index`): the store itself holds only immutable objects,
//! and every user or host that writes to one store keeps its own index. The index also records
//! which packs it holds; opening it for a command that stores chunks lists the packs once and
//! reads the trailers of those it does not know (written by another user or host), and forgets
//! the entries of packs that are gone (pruned elsewhere). A missing or unreadable index is
//! rebuilt from the trailers, with a note. An index inside a local store (where blocksnap kept
//! it before) is moved to the cache directory on first open, or rebuilt there.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use blocksnap_index::{Index, IndexError};
use blocksnap_manifest::{KeyId, PackId};
use blocksnap_pack::{ChunkCodec, read_trailer};

use crate::access::Access;
use crate::error::Result;
use crate::health::repair::RepairReport;
use crate::packs::PackInfo;
use crate::packs::writer::location;
use crate::progress::Progress;
use crate::repo::Store;

/// How long to wait for another process holding the index: `BLOCKSNAP_LOCK_WAIT` seconds,
/// default an hour.
fn lock_wait() -> Duration {
    std::env::var("BLOCKSNAP_LOCK_WAIT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(3600), Duration::from_secs)
}

impl Store {
    /// Where this store's index lives: `<cache dir>/index`.
    pub(crate) fn index_path(&self) -> PathBuf {
        self.cache_dir().join("index")
    }

    /// Opens the dedup index, waiting (with a note to `progress`) while another process holds
    /// it, and brings it up to date with the packs (see the module doc). An index sled cannot
    /// read (a process killed at the wrong moment can leave one: see docs/DESIGN-NOTES.md) is
    /// rebuilt from the pack trailers, with a note: it is a cache.
    pub(crate) fn open_index(&self, access: &Access, progress: &dyn Progress) -> Result<Index> {
        let index = self.open_index_healing(access, lock_wait(), progress)?;
        self.sync_index(&index, access, true, progress)?;
        Ok(index)
    }

    /// [`Store::open_index`] for `check`, which reports what is wrong rather than mending it:
    /// the trailers of new packs are added, but the entries of packs that are gone stay, to be
    /// named.
    pub(crate) fn open_index_as_is(
        &self,
        access: &Access,
        progress: &dyn Progress,
    ) -> Result<Index> {
        let index = self.open_index_healing(access, lock_wait(), progress)?;
        self.sync_index(&index, access, false, progress)?;
        Ok(index)
    }

    /// [`Store::open_index`] waiting at most `wait` for another process, without the sync.
    pub(crate) fn open_index_healing(
        &self,
        access: &Access,
        wait: Duration,
        progress: &dyn Progress,
    ) -> Result<Index> {
        self.migrate_index(progress);
        let missing = !self.index_path().exists();
        match self.open_index_raw(wait, progress) {
            Ok(index) if missing && !self.list_packs()?.is_empty() => {
                let r = self.fill_index(&index, access, progress)?;
                progress.message(&format!(
                    "the index of {} was missing; rebuilt it from the pack trailers: {} chunks from {} packs",
                    self.place(),
                    r.chunks,
                    r.packs
                ));
                Ok(index)
            }
            Err(IndexError::Damaged { detail, .. }) => {
                // Move it aside (atomically, so that a second process finding it damaged at the
                // same moment cannot remove a fresh one), start a new one, fill it.
                let aside = self.cache_dir().join(format!(
                    ".tmp-index-damaged-{}",
                    crate::fsutil::random_hex(8)
                ));
                if std::fs::rename(self.index_path(), &aside).is_err() {
                    // Another process moved it first and is rebuilding: wait for its index.
                    return Ok(self.open_index_raw(wait, progress)?);
                }
                let index = self.open_index_raw(wait, progress)?;
                let r = self.fill_index(&index, access, progress)?;
                progress.message(&format!(
                    "the index of {} could not be read ({detail}), as a killed process can leave \
                     it; rebuilt it from the pack trailers: {} chunks from {} packs{}",
                    self.place(),
                    r.chunks,
                    r.packs,
                    if r.problems.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; {} packs left out (an account holding their keys can run `blocksnap repair index`)",
                            r.problems.len()
                        )
                    }
                ));
                let _ = std::fs::remove_dir_all(&aside);
                Ok(index)
            }
            other => Ok(other?),
        }
    }

    /// Opens the dedup index as it is (after moving an old one out of the store: every way to
    /// the index passes here, a restore's too).
    pub(crate) fn open_index_raw(
        &self,
        wait: Duration,
        progress: &dyn Progress,
    ) -> std::result::Result<Index, IndexError> {
        self.migrate_index(progress);
        if let Some(parent) = self.index_path().parent() {
            let _ = crate::fsutil::create_private_dirs(parent);
        }
        Index::open(&self.index_path(), wait, |waited| {
            progress.message(&format!(
                "waiting for the index of {}: another blocksnap process is using it ({}s so far)",
                self.place(),
                waited.as_secs()
            ));
        })
    }

    /// Moves the index an older blocksnap kept inside a local store (`STORE/index`) to the
    /// cache directory, or removes it when the cache already has one (it is a cache: the next
    /// open rebuilds what is missing). A store that cannot be written keeps it.
    fn migrate_index(&self, progress: &dyn Progress) {
        let Some(root) = self.local_root() else {
            return;
        };
        let old = root.join("index");
        if !old.is_dir() || self.read_only().is_some() {
            return;
        }
        let new = self.index_path();
        if let Some(parent) = new.parent() {
            let _ = crate::fsutil::create_private_dirs(parent);
        }
        if !new.exists() && std::fs::rename(&old, &new).is_ok() {
            progress.message(&format!(
                "moved the index of {} from {} to {} (the index is a cache of each user's, kept \
                 outside the store)",
                self.place(),
                old.display(),
                new.display()
            ));
            return;
        }
        // Another filesystem, or a cache already there: this one is rebuilt there instead.
        if std::fs::remove_dir_all(&old).is_ok() {
            progress.message(&format!(
                "removed the old index {} of {}: the index is now a cache in {} (rebuilt from \
                 the pack trailers where needed)",
                old.display(),
                self.place(),
                new.display()
            ));
        }
    }

    /// Brings `index` up to date with the store's packs: adds the trailers of packs it does not
    /// know (another user or host wrote them) and, with `forget_gone`, rebuilds it from the
    /// trailers when packs it knew are gone (with a note naming them). Packs under keys `access` holds no grant
    /// on stay unknown (their chunks cannot be read or deduplicated by this account anyway) and
    /// are looked at again next time.
    pub(crate) fn sync_index(
        &self,
        index: &Index,
        access: &Access,
        forget_gone: bool,
        progress: &dyn Progress,
    ) -> Result<()> {
        let packs = self.list_packs()?;
        let known = index.known_packs()?;
        let listed: HashSet<PackId> = packs.iter().map(|p| p.id).collect();
        let gone: HashSet<PackId> = known
            .keys()
            .filter(|p| !listed.contains(p))
            .copied()
            .collect();
        if forget_gone && !gone.is_empty() {
            // Packs the index knew are gone: pruned by another process or host (whose chunks
            // may now live in packs this index has not read), or the store was put back from a
            // backup (whose packs may hold chunks this index places elsewhere). Either way no
            // entry can be trusted to be the only copy: rebuild from the trailers.
            let mut names: Vec<String> = gone.iter().map(ToString::to_string).collect();
            names.sort();
            index.clear()?;
            let r = self.fill_index(index, access, progress)?;
            progress.message(&format!(
                "note: {} packs the index knew are gone from the store (pruned by another process \
                 or host, deleted by hand, or the store was put back from a backup): {}; rebuilt \
                 the index from the pack trailers ({} chunks from {} packs). `blocksnap check` \
                 lists any snapshot that used a chunk no pack holds any more",
                gone.len(),
                names.join(", "),
                r.chunks,
                r.packs
            ));
            return Ok(());
        }
        let new: Vec<PackInfo> = packs
            .into_iter()
            // Unknown, or known but not completely indexed (a process killed part way).
            .filter(|p| known.get(&p.id) != Some(&true))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let r = self.index_packs(index, access, &new, progress)?;
        if !known.is_empty() && r.packs > 0 {
            progress.message(&format!(
                "indexed {} packs written by another process or host ({} chunks)",
                r.packs, r.chunks
            ));
        }
        Ok(())
    }

    /// Adds every chunk of every pack whose trailer `access` can read to `index`, and flushes.
    pub(crate) fn fill_index(
        &self,
        index: &Index,
        access: &Access,
        progress: &dyn Progress,
    ) -> Result<RepairReport> {
        let packs = self.list_packs()?;
        self.index_packs(index, access, &packs, progress)
    }

    /// Adds the chunks of `packs` to `index`, each pack recorded as known before its entries go
    /// in (so that entries of a pack the index does not know never exist); flushes.
    fn index_packs(
        &self,
        index: &Index,
        access: &Access,
        packs: &[PackInfo],
        progress: &dyn Progress,
    ) -> Result<RepairReport> {
        let mut codecs: HashMap<Option<KeyId>, Result<ChunkCodec>> = HashMap::new();
        let mut report = RepairReport {
            packs: 0,
            chunks: 0,
            problems: Vec::new(),
        };
        progress.start_count("index packs", packs.len() as u64, "packs");
        for p in packs {
            crate::cancel::check()?;
            progress.advance(1);
            let object = match self.open_pack(&p.id) {
                Ok(o) => o,
                Err(e) => {
                    report.problems.push(e.to_string());
                    continue;
                }
            };
            let mut wanted = None;
            let trailer = read_trailer(&object, |key| {
                wanted = Some(key);
                let codec = codecs.entry(key).or_insert_with(|| self.codec(access, key));
                codec.as_ref().ok()
            });
            match trailer {
                Ok((_, entries)) => {
                    let locs: Vec<_> = entries.iter().map(|e| (e.id, location(p.id, e))).collect();
                    index.mark_pack(&p.id)?;
                    index.insert_batch(&locs)?;
                    index.mark_pack_complete(&p.id)?;
                    report.packs += 1;
                    report.chunks += locs.len() as u64;
                }
                Err(e) => {
                    let why = match wanted.and_then(|k| codecs.get(&k)) {
                        Some(Err(denied)) => denied.to_string(),
                        _ => e.to_string(),
                    };
                    report.problems.push(format!(
                        "pack {} ({}): {why}",
                        p.id,
                        self.describe_pack(&p.id)
                    ));
                }
            }
        }
        index.flush()?;
        progress.finish();
        Ok(report)
    }
}
