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
use blocksnap_pack::format::MAX_INDEX_OBJECT_LEN;
use blocksnap_pack::{ChunkCodec, PackHeader, read_index_object, read_trailer};
use rayon::prelude::*;
use serde::Serialize;

use crate::access::Access;
use crate::error::Result;
use crate::health::repair::RepairReport;
use crate::packs::PackInfo;
use crate::packs::writer::location;
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::index_object_key;

/// How many index objects are fetched at once when a host learns of new packs.
const INDEX_FETCH_BATCH: usize = 16;

/// What bringing the index cache up to date read ([`Store::refresh_index`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexRefresh {
    /// Packs the store holds (one listing of `packs/` found them and their index objects).
    pub packs: u64,
    /// Packs added to the index.
    pub new_packs: u64,
    /// Packs whose entries came from their index object (one read each).
    pub from_index_objects: u64,
    /// Packs whose entries came from their trailer (no usable index object: written by an
    /// older blocksnap, or a crash came between the pack and its index object).
    pub from_trailers: u64,
    /// True if the index was rebuilt (missing, or packs it knew were gone).
    pub rebuilt: bool,
}

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
        let (index, synced) = self.open_index_mended(access, lock_wait(), progress)?;
        if !synced {
            self.sync_index(&index, access, true, progress)?;
        }
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
        let (index, synced) = self.open_index_mended(access, lock_wait(), progress)?;
        if !synced {
            self.sync_index(&index, access, false, progress)?;
        }
        Ok(index)
    }

    /// [`Store::open_index`] waiting at most `wait` for another process, without the sync.
    pub(crate) fn open_index_healing(
        &self,
        access: &Access,
        wait: Duration,
        progress: &dyn Progress,
    ) -> Result<Index> {
        Ok(self.open_index_mended(access, wait, progress)?.0)
    }

    /// [`Store::open_index_healing`], and whether the index was just made from a listing of
    /// the packs (a missing or unreadable one rebuilt, or a missing one of a store without
    /// packs): then it needs no sync, which would list them again.
    fn open_index_mended(
        &self,
        access: &Access,
        wait: Duration,
        progress: &dyn Progress,
    ) -> Result<(Index, bool)> {
        self.migrate_index(progress);
        let missing = !self.index_path().exists();
        match self.open_index_raw(wait, progress) {
            Ok(index) if missing && self.list_packs()?.is_empty() => Ok((index, true)),
            Ok(index) if missing => {
                let r = self.fill_index(&index, access, progress)?;
                progress.message(&format!(
                    "the index of {} was missing; rebuilt it from the pack trailers: {} chunks from {} packs",
                    self.place(),
                    r.chunks,
                    r.packs
                ));
                Ok((index, true))
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
                    return Ok((self.open_index_raw(wait, progress)?, false));
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
                Ok((index, true))
            }
            other => Ok((other?, false)),
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

    /// Brings `index` up to date with the store's packs: adds the entries of packs it does not
    /// know (another user or host wrote them), from their index objects where they have one
    /// (one small read each) and else from their trailers, and, with `forget_gone`, rebuilds it
    /// when packs it knew are gone (with a note naming them). One listing of `packs/` finds
    /// both the packs and their index objects: an index that knows every pack costs that
    /// listing alone. Packs under keys `access` holds no grant on stay unknown (their chunks
    /// cannot be read or deduplicated by this account anyway) and are looked at again next time.
    pub(crate) fn sync_index(
        &self,
        index: &Index,
        access: &Access,
        forget_gone: bool,
        progress: &dyn Progress,
    ) -> Result<()> {
        self.sync_index_counted(index, access, forget_gone, progress)
            .map(drop)
    }

    fn sync_index_counted(
        &self,
        index: &Index,
        access: &Access,
        forget_gone: bool,
        progress: &dyn Progress,
    ) -> Result<IndexRefresh> {
        let (packs, objects) = self.list_pack_objects()?;
        let known = index.known_packs()?;
        let listed: HashSet<PackId> = packs.iter().map(|p| p.id).collect();
        let gone: HashSet<PackId> = known
            .keys()
            .filter(|p| !listed.contains(p))
            .copied()
            .collect();
        let mut refresh = IndexRefresh {
            packs: packs.len() as u64,
            ..IndexRefresh::default()
        };
        if forget_gone && !gone.is_empty() {
            // Packs the index knew are gone: pruned by another process or host (whose chunks
            // may now live in packs this index has not read), or the store was put back from a
            // backup (whose packs may hold chunks this index places elsewhere). Either way no
            // entry can be trusted to be the only copy: rebuild.
            let mut names: Vec<String> = gone.iter().map(ToString::to_string).collect();
            names.sort();
            index.clear()?;
            let r = self.index_packs(
                index,
                access,
                &packs,
                Some(&objects),
                &mut refresh,
                progress,
            )?;
            refresh.rebuilt = true;
            progress.message(&format!(
                "note: {} packs the index knew are gone from the store (pruned by another process \
                 or host, deleted by hand, or the store was put back from a backup): {}; rebuilt \
                 the index from the index objects and pack trailers ({} chunks from {} packs). \
                 `blocksnap check` lists any snapshot that used a chunk no pack holds any more",
                gone.len(),
                names.join(", "),
                r.chunks,
                r.packs
            ));
            return Ok(refresh);
        }
        let new: Vec<PackInfo> = packs
            .into_iter()
            // Unknown, or known but not completely indexed (a process killed part way).
            .filter(|p| known.get(&p.id) != Some(&true))
            .collect();
        if new.is_empty() {
            return Ok(refresh);
        }
        let r = self.index_packs(index, access, &new, Some(&objects), &mut refresh, progress)?;
        if !known.is_empty() && r.packs > 0 {
            progress.message(&format!(
                "indexed {} packs written by another process or host ({} chunks)",
                r.packs, r.chunks
            ));
        }
        Ok(refresh)
    }

    /// Brings this host's index cache of the store up to date (what every command that stores
    /// or reads chunks does first) and says what that read: see [`IndexRefresh`].
    pub fn refresh_index(&self, access: &Access, progress: &dyn Progress) -> Result<IndexRefresh> {
        let missing = !self.index_path().exists();
        let index = self.open_index_raw(lock_wait(), progress)?;
        let mut r = self.sync_index_counted(&index, access, true, progress)?;
        r.rebuilt |= missing;
        index.flush()?;
        Ok(r)
    }

    /// Adds every chunk of every pack to `index` from the index objects (and, for a pack
    /// without a readable one, its trailer), and flushes: a lost or damaged cache.
    pub(crate) fn fill_index(
        &self,
        index: &Index,
        access: &Access,
        progress: &dyn Progress,
    ) -> Result<RepairReport> {
        let (packs, objects) = self.list_pack_objects()?;
        self.index_packs(
            index,
            access,
            &packs,
            Some(&objects),
            &mut IndexRefresh::default(),
            progress,
        )
    }

    /// Adds every chunk of every pack whose trailer `access` can read to `index`, from the
    /// trailers alone (`repair index`: the index objects are not trusted to be complete).
    pub(crate) fn fill_index_from_trailers(
        &self,
        index: &Index,
        access: &Access,
        progress: &dyn Progress,
    ) -> Result<RepairReport> {
        let packs = self.list_packs()?;
        self.index_packs(
            index,
            access,
            &packs,
            None,
            &mut IndexRefresh::default(),
            progress,
        )
    }

    /// Adds the chunks of `packs` to `index`, each pack recorded as known before its entries go
    /// in (so that entries of a pack the index does not know never exist); flushes. A pack in
    /// `objects` is read from its index object (fetched several at a time), the others, and
    /// any whose index object does not read, from their trailers.
    fn index_packs(
        &self,
        index: &Index,
        access: &Access,
        packs: &[PackInfo],
        objects: Option<&HashSet<PackId>>,
        refresh: &mut IndexRefresh,
        progress: &dyn Progress,
    ) -> Result<RepairReport> {
        let mut codecs: HashMap<Option<KeyId>, Result<ChunkCodec>> = HashMap::new();
        let mut report = RepairReport {
            packs: 0,
            chunks: 0,
            problems: Vec::new(),
        };
        progress.start_count("index packs", packs.len() as u64, "packs");
        for batch in packs.chunks(INDEX_FETCH_BATCH) {
            crate::cancel::check()?;
            // The index objects of this batch, fetched in parallel: on an object store each is
            // one request, and their latency, not their size, is the cost.
            let fetched: Vec<Option<Vec<u8>>> = batch
                .par_iter()
                .map(|p| {
                    objects.filter(|o| o.contains(&p.id)).and_then(|_| {
                        self.backend()
                            .get_bounded(&index_object_key(&p.id), MAX_INDEX_OBJECT_LEN)
                            .ok()
                    })
                })
                .collect();
            for (p, object) in batch.iter().zip(fetched) {
                progress.advance(1);
                let mut wanted = None;
                let from_object = object.and_then(|bytes| {
                    // The key the object's copy of the pack header names; the object is then
                    // read with that key's codec (and checked to match it).
                    let key = bytes
                        .get(48..112)
                        .and_then(|h| PackHeader::decode(h).ok())?
                        .key_id;
                    let codec = codecs
                        .entry(key)
                        .or_insert_with(|| self.codec(access, key))
                        .as_ref()
                        .ok()?;
                    match read_index_object(&bytes, &p.id, p.size, |_| Some(codec)) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            progress.message(&format!(
                                "the index object of pack {} ({}) cannot be used ({e}); reading \
                                 the pack's trailer instead",
                                p.id,
                                self.describe(&index_object_key(&p.id))
                            ));
                            None
                        }
                    }
                });
                let trailer = match from_object {
                    Some((_, entries)) => {
                        refresh.from_index_objects += 1;
                        Ok(entries)
                    }
                    None => {
                        refresh.from_trailers += 1;
                        match self.open_pack(&p.id) {
                            Ok(object) => read_trailer(&object, |key| {
                                wanted = Some(key);
                                let codec =
                                    codecs.entry(key).or_insert_with(|| self.codec(access, key));
                                codec.as_ref().ok()
                            })
                            .map(|(_, e)| e),
                            Err(e) => {
                                report.problems.push(e.to_string());
                                continue;
                            }
                        }
                    }
                };
                match trailer {
                    Ok(entries) => {
                        let locs: Vec<_> =
                            entries.iter().map(|e| (e.id, location(p.id, e))).collect();
                        index.mark_pack(&p.id)?;
                        index.insert_batch(&locs)?;
                        index.mark_pack_complete(&p.id)?;
                        report.packs += 1;
                        report.chunks += locs.len() as u64;
                        refresh.new_packs += 1;
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
        }
        index.flush()?;
        progress.finish();
        Ok(report)
    }
}
