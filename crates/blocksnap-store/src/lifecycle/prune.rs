//! `prune`: delete what nothing references, rewrite packs that are mostly garbage — in two
//! phases, so that no chunk a snapshot reuses is ever lost.
//!
//! Live = every chunk of every snapshot document, live or in the trash (metadata chunks
//! included). A copy of a chunk in pack P is live when its id is live and the index points at P
//! (a chunk stored twice, after an interrupted run or because a snapshot stored it again, keeps
//! the indexed copy, preferring one in a pack that is not condemned).
//!
//! **Two phases.** A pack with no live copy, or a pack rewritten (its live chunks copied to new
//! packs), is first *condemned*: named in a record `condemned/TIME-RANDOM.json` with the time.
//! It is deleted only by a prune that runs at least the grace later and finds it still holding no
//! live copy; one found holding one (a snapshot committed meanwhile references it) is un-marked:
//! it drops out of the record and is a pack like any other. Between the two, no snapshot
//! deduplicates against a chunk in a condemned pack: it stores the chunk again (see
//! `packs/writer.rs`, `Dedup`). The grace is longer than a lock's stale time on a store other
//! hosts may share (default: the stale time and a sixth), so a command whose lock lapsed has
//! stopped, or committed what the next mark sees, before anything it used is deleted. On a
//! local directory the default grace is 0: both phases run in one prune (see
//! docs/ARCHITECTURE.md, "Locks and prune", for why that holds and when to set `--grace`).
//!
//! Order, for crash safety: live chunks of rewritten packs go to new packs, which are made
//! durable and indexed (index flushed); then the record of the packs condemned now is created;
//! then, with the lock checked, each pack due is deleted — its index entries removed and flushed
//! before the pack; last, records whose packs are all gone or un-marked are rewritten or removed.
//! A stop anywhere leaves a record naming packs that are gone (skipped), or condemned packs that
//! wait one more run. Prune holds the store exclusively and the index for its whole run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use blocksnap_manifest::{ChunkId, CondemnedDoc, Document, Extent, KeyId, PackId};
use blocksnap_pack::{ChunkCodec, PackHeader, read_trailer};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::packs::PackObject;
use crate::packs::reader::ChunkReader;
use crate::packs::writer::{ChunkWriter, location};
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::{Kind, index_object_key, pack_key};

/// Options of `prune`.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Rewrite a pack when more than this fraction of its bytes is garbage (0.0 to 1.0).
    pub repack_threshold: f64,
    /// How long a condemned pack waits before a prune may delete it. `None`: the store's
    /// default ([`Store::default_grace`]).
    pub grace: Option<Duration>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            repack_threshold: 0.5,
            grace: None,
        }
    }
}

/// What `prune` did or, with `--dry-run`, would do.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Packs deleted whole (condemned packs whose grace has passed; those rewritten by this
    /// same run are counted in `packs_rewritten` only).
    pub packs_deleted: u64,
    /// Packs rewritten without their garbage (their live chunks copied to new packs; the old
    /// pack is condemned, and deleted after the grace).
    pub packs_rewritten: u64,
    /// Bytes freed (deleted packs, minus the new packs written).
    pub bytes_reclaimed: u64,
    /// Live chunks moved to new packs.
    pub chunks_moved: u64,
    /// Garbage chunks dropped (in the packs condemned by this run).
    pub chunks_deleted: u64,
    /// Expired trash entries removed for good first.
    pub trash_expired: u64,
    /// Temporary files of interrupted runs removed.
    pub tmp_files_removed: u64,
    /// Index objects (`packs/XX/ID.idx`) left without their pack, removed.
    pub index_objects_removed: u64,
    /// Packs left alone because they could not be read (see `check`).
    pub packs_unreadable: Vec<String>,
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// Packs condemned by this run (first phase): deleted by a prune once the grace has passed.
    pub packs_marked: u64,
    /// Condemned packs still waiting for the grace after this run.
    pub packs_pending: u64,
    /// Their bytes: what a prune after the grace reclaims.
    pub bytes_pending: u64,
    /// Condemned packs found holding a chunk a snapshot needs: un-marked, kept.
    pub packs_unmarked: u64,
    /// The grace, in seconds.
    pub grace_seconds: f64,
}

/// A condemned pack: when, and in which record.
#[derive(Clone, Debug)]
struct Condemned {
    at: jiff::Timestamp,
    record: String,
}

/// What the sweep decided for the packs.
#[derive(Default)]
struct Plan {
    /// Packs to condemn now.
    condemn: Vec<PackId>,
    /// Packs to rewrite (a subset of `condemn`).
    rewrite: Vec<Rewrite>,
    /// Packs to delete, with their garbage index entries and their size; `true` if condemned
    /// by this run.
    delete: Vec<(PackId, Vec<ChunkId>, u64, bool)>,
    /// Condemned packs to un-mark.
    unmark: HashSet<PackId>,
}

impl Store {
    /// The grace of a prune on this store unless told: `BLOCKSNAP_PRUNE_GRACE` seconds if set;
    /// else 0 on a local directory or an in-memory store (both phases in one run) and, on a
    /// store other hosts may share, the lock stale time and a sixth (35 minutes by default).
    pub fn default_grace(&self) -> Duration {
        if let Some(g) = std::env::var("BLOCKSNAP_PRUNE_GRACE")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        {
            return Duration::from_secs_f64(g);
        }
        if !self.reachable_by_other_hosts() {
            return Duration::ZERO;
        }
        let stale = self.lock_timing().stale;
        stale + stale / 6
    }

    /// False for a local directory and an in-memory store (`memory://`, one process's): the
    /// stores whose default grace is 0. Any other (an object store) other hosts may share.
    fn reachable_by_other_hosts(&self) -> bool {
        match self.place() {
            crate::repo::Place::Local(_) => false,
            crate::repo::Place::Remote(u) => !u.starts_with("memory:"),
        }
    }

    /// Every condemnation record, by name. A damaged one is skipped (and reported as damage):
    /// its packs are then not condemned, which keeps them longer, never shorter.
    fn condemnation_records(&self) -> Result<Vec<(String, CondemnedDoc)>> {
        self.docs::<CondemnedDoc>(Kind::Condemned)
    }

    /// The packs condemned by a prune: a snapshot stores their chunks again rather than
    /// reusing them.
    pub(crate) fn condemned_packs(&self) -> Result<HashSet<PackId>> {
        Ok(self
            .condemnation_records()?
            .into_iter()
            .flat_map(|(_, d)| d.packs)
            .collect())
    }

    /// Creates a condemnation record of `packs` at `at`; returns its name.
    fn write_condemnation(&self, at: jiff::Timestamp, packs: Vec<PackId>) -> Result<String> {
        let name = format!(
            "{}-{}",
            at.strftime("%Y%m%dT%H%M%S%.3fZ"),
            fsutil::random_hex(4)
        );
        let doc = CondemnedDoc {
            format: CondemnedDoc::FORMAT.into(),
            condemned: fsutil::rfc3339(at),
            host: crate::repo::host::host_name(),
            packs,
        };
        self.create_doc(Kind::Condemned, &name, &doc)?;
        Ok(name)
    }

    /// Reclaims space: see the module documentation for what is kept and in which order.
    pub fn prune(
        &self,
        access: &Access,
        opts: PruneOptions,
        progress: &dyn Progress,
    ) -> Result<PruneReport> {
        if !(0.0..=1.0).contains(&opts.repack_threshold) {
            return Err(StoreError::Usage(
                "the repack threshold must be between 0 and 1".into(),
            ));
        }
        let grace = opts.grace.unwrap_or_else(|| self.default_grace());
        let stale = self.lock_timing().stale;
        if self.reachable_by_other_hosts() && grace <= stale {
            return Err(StoreError::Usage(format!(
                "a grace of {} s is too short for the store {}: other hosts may share it, and a \
                 condemned pack must wait longer than a lock stays valid ({} s, \
                 BLOCKSNAP_LOCK_STALE) before it is deleted, or a snapshot whose lock lapsed \
                 could lose chunks; leave --grace out for the default ({} s)",
                grace.as_secs_f64(),
                self.place(),
                stale.as_secs_f64(),
                (stale + stale / 6).as_secs_f64()
            )));
        }
        let mut report = PruneReport {
            dry_run: opts.dry_run,
            grace_seconds: grace.as_secs_f64(),
            ..PruneReport::default()
        };
        let _lock = self.lock_exclusive("prune", progress)?;
        self.require_sound_documents("prune")?;
        let index = self.open_index(access, progress)?;
        if !opts.dry_run {
            report.trash_expired = self.empty_trash(true)?.len() as u64;
        }
        // Mark: every chunk a snapshot (live or in the trash) needs.
        let mut codecs: HashMap<Option<KeyId>, ChunkCodec> = HashMap::new();
        let mut live: HashSet<ChunkId> = HashSet::new();
        let snapshots = self.referenced_snapshots()?;
        progress.start_count("prune: mark", snapshots.len() as u64, "snapshots");
        for doc in &snapshots {
            crate::cancel::check()?;
            if let std::collections::hash_map::Entry::Vacant(slot) = codecs.entry(doc.key) {
                let codec = self.codec(access, doc.key).map_err(|e| {
                    if e.kind() != crate::ErrorKind::Denied {
                        return e;
                    }
                    StoreError::Denied(format!(
                        "prune must read every snapshot, and snapshot {} is under a key it cannot use: {e}",
                        doc.id
                    ))
                })?;
                slot.insert(codec);
            }
            // A document changed by someone without the key could make prune delete what the
            // real snapshot needs: prune deletes nothing unless every snapshot verifies.
            self.verify(&codecs[&doc.key], doc)?;
            let reader = ChunkReader::new(self, &codecs[&doc.key], &index);
            live.extend(doc.extents.chunks.iter().copied());
            reader
                .for_each_extent(doc, |_, e| {
                    if let Extent::Data { id, .. } = e {
                        live.insert(id);
                    }
                    Ok(())
                })
                .map_err(|e| {
                    StoreError::Damaged(format!(
                        "prune stopped: snapshot {} cannot be read ({e}); run `blocksnap check`",
                        doc.id
                    ))
                })?;
            progress.advance(1);
        }
        progress.finish();

        // Sweep: decide per pack, those not condemned first (a live chunk with a copy in one of
        // them keeps that copy, not one in a condemned pack).
        let now = jiff::Timestamp::now();
        let records = self.condemnation_records()?;
        let mut condemned: HashMap<PackId, Condemned> = HashMap::new();
        for (name, doc) in &records {
            let at: jiff::Timestamp = doc.condemned.parse().unwrap_or(now);
            for p in &doc.packs {
                let c = condemned.entry(*p).or_insert_with(|| Condemned {
                    at,
                    record: name.clone(),
                });
                if at < c.at {
                    *c = Condemned {
                        at,
                        record: name.clone(),
                    };
                }
            }
        }
        let due = |c: &Condemned| {
            jiff::SignedDuration::try_from(grace)
                .ok()
                .and_then(|g| c.at.checked_add(g).ok())
                .is_some_and(|t| t <= now)
        };
        let (mut packs, index_objects) = self.list_pack_objects()?;
        packs.sort_by_key(|p| condemned.contains_key(&p.id));
        let listed: HashSet<PackId> = packs.iter().map(|p| p.id).collect();
        let mut plan = Plan::default();
        progress.start_count("prune: sweep", packs.len() as u64, "packs");
        for p in &packs {
            let pack_id = &p.id;
            crate::cancel::check()?;
            progress.advance(1);
            let file = self.open_pack(pack_id)?;
            let key = match read_header_key(&file) {
                Some(k) => k,
                None => {
                    report
                        .packs_unreadable
                        .push(format!("pack {pack_id}: its header cannot be read"));
                    continue;
                }
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = codecs.entry(key) {
                match self.codec(access, key) {
                    Ok(c) => {
                        slot.insert(c);
                    }
                    Err(e) => {
                        report.packs_unreadable.push(format!("pack {pack_id}: {e}"));
                        continue;
                    }
                }
            }
            let entries = match read_trailer(&file, |_| codecs.get(&key)) {
                Ok((_, entries)) => entries,
                Err(e) => {
                    report.packs_unreadable.push(format!("pack {pack_id}: {e}"));
                    continue;
                }
            };
            let this_condemned = condemned.get(pack_id);
            let pack_len = p.size;
            let (mut keep, mut drop_ids, mut garbage) = (Vec::new(), Vec::new(), 0u64);
            for e in &entries {
                let here = location(*pack_id, e);
                let is_live = live.contains(&e.id)
                    && match index.get(&e.id)? {
                        Some(loc) if loc.pack == *pack_id => true,
                        // The index names the copy dedup uses, in a pack that is not condemned.
                        Some(loc)
                            if listed.contains(&loc.pack) && !condemned.contains_key(&loc.pack) =>
                        {
                            false
                        }
                        // The indexed copy is in a condemned pack: one in a pack that is not
                        // becomes the copy (those are swept first); between two condemned
                        // copies the indexed one stays.
                        Some(loc) if listed.contains(&loc.pack) => {
                            if this_condemned.is_none() && !opts.dry_run {
                                index.insert_batch(&[(e.id, here)])?;
                            }
                            this_condemned.is_none()
                        }
                        // Live but unindexed (an interrupted run), or indexed in a pack that is
                        // not in the store (a stale cache: the store was put back from a backup,
                        // or an interrupted run): this copy becomes the one.
                        Some(_) | None => {
                            if !opts.dry_run {
                                index.insert_batch(&[(e.id, here)])?;
                            }
                            true
                        }
                    };
                if is_live {
                    keep.push(e.id);
                } else {
                    garbage += u64::from(e.stored_len);
                    if index.get(&e.id)?.is_some_and(|l| l.pack == *pack_id) {
                        drop_ids.push(e.id);
                    }
                }
            }
            let dropped = (entries.len() - keep.len()) as u64;
            match this_condemned {
                None if keep.is_empty() => {
                    report.packs_marked += 1;
                    report.chunks_deleted += dropped;
                    plan.condemn.push(*pack_id);
                    if grace.is_zero() {
                        report.packs_deleted += 1;
                        report.bytes_reclaimed += pack_len;
                        plan.delete.push((*pack_id, drop_ids, pack_len, true));
                    } else {
                        report.packs_pending += 1;
                        report.bytes_pending += pack_len;
                    }
                }
                None if garbage as f64 > opts.repack_threshold * pack_len as f64 => {
                    report.packs_marked += 1;
                    report.packs_rewritten += 1;
                    report.chunks_moved += keep.len() as u64;
                    report.chunks_deleted += dropped;
                    plan.condemn.push(*pack_id);
                    if grace.is_zero() {
                        report.bytes_reclaimed += pack_len;
                        // Its live chunks: the rewrite points the index at their new copies.
                        plan.delete.push((*pack_id, drop_ids, pack_len, true));
                    } else {
                        report.packs_pending += 1;
                        report.bytes_pending += pack_len;
                    }
                    plan.rewrite.push((*pack_id, key, keep, Vec::new()));
                }
                None => {}
                Some(_) if !keep.is_empty() => {
                    // A snapshot committed since it was condemned needs it: keep it.
                    report.packs_unmarked += 1;
                    plan.unmark.insert(*pack_id);
                }
                Some(c) if due(c) => {
                    report.packs_deleted += 1;
                    report.bytes_reclaimed += pack_len;
                    plan.delete.push((*pack_id, drop_ids, pack_len, false));
                }
                Some(_) => {
                    report.packs_pending += 1;
                    report.bytes_pending += pack_len;
                }
            }
        }
        progress.finish();
        if opts.dry_run {
            // The new packs' size is not known without writing them: estimate by live bytes.
            report.bytes_reclaimed = report
                .bytes_reclaimed
                .saturating_sub(moved_bytes(&index, &plan.rewrite)?);
            return Ok(report);
        }

        // Rewrite: live chunks to new packs, durable and indexed before old packs go.
        let mut written = 0u64;
        let mut by_key: HashMap<Option<KeyId>, Vec<ChunkId>> = HashMap::new();
        for (_, key, keep, _) in &plan.rewrite {
            by_key.entry(*key).or_default().extend(keep.iter().copied());
        }
        for (key, ids) in by_key {
            let codec = &codecs[&key];
            let reader = ChunkReader::new(self, codec, &index);
            let mut writer = ChunkWriter::relocating(self, codec, &index)?;
            let mut batch = Vec::new();
            let mut batch_bytes = 0usize;
            for id in ids {
                crate::cancel::check()?;
                let data = reader.read(&id)?;
                batch_bytes += data.len();
                batch.push((id, data));
                if batch_bytes >= 64 << 20 {
                    writer.put(std::mem::take(&mut batch))?;
                    batch_bytes = 0;
                }
            }
            writer.put(batch)?;
            written += writer.finish()?.bytes_stored;
        }
        report.bytes_reclaimed = report.bytes_reclaimed.saturating_sub(written);

        // Phase one: the record of what this run condemns.
        let mut new_record = None;
        for part in plan.condemn.chunks(blocksnap_manifest::MAX_CONDEMNED_PACKS) {
            let name = self.write_condemnation(now, part.to_vec())?;
            new_record.get_or_insert_with(Vec::new).push(name);
        }

        // Phase two: delete what is due, each pack only while the lock is surely held.
        if !plan.delete.is_empty() {
            self.ensure_lock_held("deleting packs", true)?;
        }
        let mut deleted: HashSet<PackId> = HashSet::new();
        for (pack, drop_ids, _, _) in &plan.delete {
            crate::cancel::check()?;
            self.ensure_lock_held(&format!("deleting pack {pack}"), false)?;
            index.remove_batch(drop_ids)?;
            index.forget_pack(pack)?;
            index.flush()?;
            self.delete_object(&pack_key(pack))?;
            // After the pack: an index object never describes a pack that a reader could
            // still find, and one a crash leaves behind is swept below by a later run.
            self.delete_object(&index_object_key(pack))?;
            deleted.insert(*pack);
        }
        // Index objects whose pack is gone (a run stopped between the two deletes, or a pack
        // set aside by `repair`): a writer creates the pack before its index object, so none of
        // these is a pack still being written.
        for pack in index_objects.iter().filter(|p| !listed.contains(p)) {
            crate::cancel::check()?;
            self.delete_object(&index_object_key(pack))?;
            report.index_objects_removed += 1;
        }

        // Records: drop the packs deleted, un-marked or gone; a record left empty goes.
        let mut records = records;
        if let Some(names) = new_record {
            for name in names {
                if let Some(doc) = self.doc::<CondemnedDoc>(Kind::Condemned, &name)? {
                    records.push((name, doc));
                }
            }
        }
        for (name, doc) in records {
            let remaining: Vec<PackId> = doc
                .packs
                .iter()
                .copied()
                .filter(|p| listed.contains(p) && !deleted.contains(p) && !plan.unmark.contains(p))
                .filter(|p| condemned.get(p).is_none_or(|c| c.record == name))
                .collect();
            if remaining.len() == doc.packs.len() {
                continue;
            }
            if !remaining.is_empty() {
                // Same time: un-marking one pack restarts no other's grace.
                let at = doc.condemned.parse().unwrap_or(now);
                self.write_condemnation(at, remaining)?;
            }
            self.delete_object(&Kind::Condemned.key(&name))?;
        }
        // Temporary files of interrupted runs: no writer runs while we hold the store alone.
        for t in self.backend().temporaries().map_err(StoreError::backend)? {
            if self.backend().remove_temporary(&t.key).is_ok() {
                report.tmp_files_removed += 1;
                report.bytes_reclaimed += t.size;
            }
        }
        Ok(report)
    }
}

fn read_header_key(file: &PackObject) -> Option<Option<KeyId>> {
    let mut h = [0u8; blocksnap_pack::format::HEADER_LEN];
    file.read_exact_at(&mut h, 0).ok()?;
    PackHeader::decode(&h).ok().map(|h| h.key_id)
}

type Rewrite = (PackId, Option<KeyId>, Vec<ChunkId>, Vec<ChunkId>);

fn moved_bytes(index: &blocksnap_index::Index, rewrites: &[Rewrite]) -> Result<u64> {
    let mut n = 0;
    for (_, _, keep, _) in rewrites {
        for id in keep {
            n += index.get(id)?.map_or(0, |l| u64::from(l.stored_len));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitOptions, NoProgress, SnapshotOptions};
    use std::path::{Path, PathBuf};

    struct Env {
        dir: tempfile::TempDir,
        store: Store,
        access: Access,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            account: "alice".into(),
            identity: Some(dir.path().join("alice.key")),
            config_home: Some(dir.path().join("config")),
            chunk_size: 16 * 1024,
            ..InitOptions::default()
        };
        let (store, report) = Store::init(&dir.path().join("store"), &opts).unwrap();
        let store = store.with_cache_home(dir.path().join("cache"));
        let access = store.access(Some("alice"), Some(&report.identity)).unwrap();
        Env { dir, store, access }
    }

    fn image(dir: &Path, name: &str, seed: u64, len: usize) -> PathBuf {
        let mut x = seed | 1;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn prune(e: &Env, grace: Duration) -> PruneReport {
        let opts = PruneOptions {
            grace: Some(grace),
            ..PruneOptions::default()
        };
        e.store.prune(&e.access, opts, &NoProgress).unwrap()
    }

    /// A snapshot as a writer whose lock lapsed stores it: its data now, its document later
    /// (after prune runs), and no lock held meanwhile (another host took it for expired).
    fn store_uncommitted(e: &Env, src: &Path) -> (SnapshotDoc, Stored, std::time::Instant) {
        let opts = SnapshotOptions {
            source: src.to_path_buf(),
            volume: Some("b".into()),
            ..Default::default()
        };
        let source = e.store.open_source(&e.access, &opts, &NoProgress).unwrap();
        let index = e.store.open_index(&e.access, &NoProgress).unwrap();
        e.store
            .snapshot_uncommitted(&e.access, &opts, source, &index, None, &NoProgress)
            .unwrap()
    }

    fn assert_restores(e: &Env, id: SnapshotId, src: &Path) {
        let out = e.dir.path().join("out.img");
        let _ = std::fs::remove_file(&out);
        e.store
            .restore(&e.access, &id.to_string(), &out, &NoProgress)
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(src).unwrap());
        let r = e.store.check(&e.access, true, &NoProgress).unwrap();
        assert!(r.ok, "{r:#?}");
    }

    fn snapshot(e: &Env, src: &Path) -> SnapshotId {
        let opts = SnapshotOptions {
            source: src.to_path_buf(),
            ..Default::default()
        };
        e.store.snapshot(&e.access, &opts, &NoProgress).unwrap().id
    }

    fn forget(e: &Env, id: SnapshotId) {
        e.store.delete_snapshot(&e.access, &id.to_string()).unwrap();
        e.store.empty_trash(false).unwrap();
    }

    use crate::snapshot::pipeline::Stored;
    use blocksnap_manifest::{SnapshotDoc, SnapshotId};

    /// The race of restic #2452 / #3486 and PBS's upload-vs-GC, made deterministic: a writer
    /// starts after prune condemned a pack, would reuse its chunks, and commits only after the
    /// prune that deletes the pack. The chunks survive because the writer stored them again
    /// (without that, the document would name chunks of a deleted pack: the restore fails).
    #[test]
    fn a_writer_never_reuses_a_condemned_chunk() {
        let e = env();
        let a = image(e.dir.path(), "a.img", 7, 3 << 20);
        let first = snapshot(&e, &a);
        forget(&e, first);
        let grace = Duration::from_millis(300);
        let r = prune(&e, grace);
        assert!(r.packs_marked >= 1 && r.packs_deleted == 0, "{r:?}");
        assert_eq!(r.packs_pending, r.packs_marked, "{r:?}");
        let condemned = e.store.condemned_packs().unwrap();
        assert_eq!(condemned.len() as u64, r.packs_marked);

        // The same data again, as another volume: every chunk is in a condemned pack, so it is
        // stored again rather than reused.
        let (doc, stored, started) = store_uncommitted(&e, &a);
        assert_eq!(
            stored.stats.chunks_new, stored.stats.chunks,
            "{:?}",
            stored.stats
        );
        std::thread::sleep(grace + Duration::from_millis(50));
        let r = prune(&e, grace);
        assert_eq!(r.packs_deleted as usize, condemned.len(), "{r:?}");
        // The copies just stored are unreferenced yet: condemned, not deleted.
        assert!(r.packs_marked >= 1 && r.packs_unmarked == 0, "{r:?}");
        for p in &condemned {
            assert!(e.store.backend().head(&pack_key(p)).unwrap().is_none());
            assert!(
                e.store
                    .backend()
                    .head(&index_object_key(p))
                    .unwrap()
                    .is_none(),
                "the index object of pack {p} goes with it"
            );
        }
        let report = e
            .store
            .commit_snapshot(&e.access, doc, &stored, started)
            .unwrap();
        assert_restores(&e, report.id, &a);
        // The next prune finds the new copies needed: un-marked, kept; the store is clean.
        std::thread::sleep(grace + Duration::from_millis(50));
        let r = prune(&e, grace);
        assert!(r.packs_unmarked >= 1 && r.packs_deleted == 0, "{r:?}");
        assert!(e.store.condemned_packs().unwrap().is_empty());
        assert_restores(&e, report.id, &a);
    }

    /// A writer that reused chunks before prune condemned their pack (its lock lapsed, so the
    /// prune ran) and commits after: the next prune finds them needed and un-marks the pack.
    /// Deleting at once (grace 0) would have lost them.
    #[test]
    fn a_pack_a_late_commit_needs_is_unmarked_not_deleted() {
        let e = env();
        let a = image(e.dir.path(), "a.img", 9, 2 << 20);
        let first = snapshot(&e, &a);
        let (doc, stored, started) = store_uncommitted(&e, &a);
        assert_eq!(stored.stats.chunks_new, 0, "all reused: {:?}", stored.stats);
        forget(&e, first);
        let grace = Duration::from_millis(200);
        let r = prune(&e, grace);
        assert!(r.packs_marked >= 1 && r.packs_deleted == 0, "{r:?}");
        let report = e
            .store
            .commit_snapshot(&e.access, doc, &stored, started)
            .unwrap();
        std::thread::sleep(grace + Duration::from_millis(50));
        let r = prune(&e, grace);
        assert_eq!(r.packs_deleted, 0, "{r:?}");
        assert!(r.packs_unmarked >= 1, "{r:?}");
        assert!(e.store.condemned_packs().unwrap().is_empty());
        assert_restores(&e, report.id, &a);
    }

    /// An index object whose pack is gone (a prune stopped between the pack's delete and its
    /// index object's) is swept by the next prune; the index objects of live packs stay.
    #[test]
    fn an_index_object_left_without_its_pack_is_removed() {
        let e = env();
        let a = image(e.dir.path(), "a.img", 11, 1 << 20);
        let id = snapshot(&e, &a);
        let (packs, objects) = e.store.list_pack_objects().unwrap();
        assert!(!packs.is_empty() && objects.len() == packs.len());
        let live = packs[0].id;
        let bytes = e.store.backend().get(&index_object_key(&live)).unwrap();
        let gone: PackId = "ab".repeat(32).parse().unwrap();
        e.store
            .backend()
            .create(&index_object_key(&gone), &bytes)
            .unwrap();
        let r = prune(&e, Duration::ZERO);
        assert_eq!(r.index_objects_removed, 1, "{r:?}");
        assert!(
            e.store
                .backend()
                .head(&index_object_key(&gone))
                .unwrap()
                .is_none()
        );
        let (_, after) = e.store.list_pack_objects().unwrap();
        assert_eq!(after, objects, "the live packs keep theirs");
        assert_restores(&e, id, &a);
    }

    #[test]
    fn a_short_grace_is_refused_where_other_hosts_may_share_the_store() {
        let e = env();
        let remote = Store::with_config(
            e.store.backend().clone(),
            crate::repo::Place::Remote("s3://bucket/x".into()),
            e.store.config().clone(),
        );
        let opts = PruneOptions {
            grace: Some(Duration::from_secs(60)),
            ..PruneOptions::default()
        };
        let err = remote.prune(&e.access, opts, &NoProgress).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Usage);
        assert!(err.to_string().contains("BLOCKSNAP_LOCK_STALE"), "{err}");
        assert_eq!(e.store.default_grace(), Duration::ZERO);
        assert!(remote.default_grace() > remote.lock_timing().stale);
    }
}
