//! `prune`: delete what nothing references, rewrite packs that are mostly garbage.
//!
//! Live = every chunk of every snapshot document, live or in the trash (metadata chunks
//! included). A copy of a chunk in pack P is live when its id is live and the index points at P
//! (a chunk stored twice, after an interrupted run, keeps the indexed copy). Order, for crash
//! safety: live chunks of rewritten packs go to new packs, which are made durable and indexed
//! (index flushed) before any old pack is deleted; index entries of deleted packs are removed
//! before the pack file. Prune holds the index for its whole run, so no snapshot, restore or
//! other prune runs beside it: they wait.

use std::collections::{HashMap, HashSet};

use blocksnap_manifest::{ChunkId, Extent, KeyId, PackId};
use blocksnap_pack::{ChunkCodec, PackHeader, read_trailer};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::packs::PackObject;
use crate::packs::reader::ChunkReader;
use crate::packs::writer::{ChunkWriter, location};
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::pack_key;

/// Options of `prune`.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Rewrite a pack when more than this fraction of its bytes is garbage (0.0 to 1.0).
    pub repack_threshold: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            repack_threshold: 0.5,
        }
    }
}

/// What `prune` did or, with `--dry-run`, would do.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Packs deleted whole.
    pub packs_deleted: u64,
    /// Packs rewritten without their garbage.
    pub packs_rewritten: u64,
    /// Bytes freed on disk (deleted and rewritten packs, minus the new packs).
    pub bytes_reclaimed: u64,
    /// Live chunks moved to new packs.
    pub chunks_moved: u64,
    /// Garbage chunks dropped.
    pub chunks_deleted: u64,
    /// Expired trash entries removed for good first.
    pub trash_expired: u64,
    /// Temporary files of interrupted runs removed.
    pub tmp_files_removed: u64,
    /// Packs left alone because they could not be read (see `check`).
    pub packs_unreadable: Vec<String>,
    /// True for `--dry-run`.
    pub dry_run: bool,
}

impl Store {
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
        let mut report = PruneReport {
            dry_run: opts.dry_run,
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

        // Sweep: decide per pack.
        let packs = self.list_packs()?;
        let listed: HashSet<PackId> = packs.iter().map(|p| p.id).collect();
        let mut to_delete: Vec<(PackId, Vec<ChunkId>)> = Vec::new();
        let mut to_rewrite: Vec<Rewrite> = Vec::new();
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
            let pack_len = p.size;
            let (mut keep, mut drop_ids, mut garbage) = (Vec::new(), Vec::new(), 0u64);
            for e in &entries {
                let here = location(*pack_id, e);
                let is_live = live.contains(&e.id)
                    && match index.get(&e.id)? {
                        // The index names the copy dedup uses; one in a pack that is not in the
                        // store (a stale cache: the store was put back from a backup, or an
                        // interrupted run) is no copy, and this one becomes it.
                        Some(loc) if listed.contains(&loc.pack) => loc.pack == *pack_id,
                        Some(_) | None => {
                            // Live but unindexed (an interrupted run): this copy becomes the one.
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
                    report.chunks_deleted += 1;
                }
            }
            if keep.is_empty() {
                report.packs_deleted += 1;
                report.bytes_reclaimed += pack_len;
                to_delete.push((*pack_id, drop_ids));
            } else if garbage as f64 > opts.repack_threshold * pack_len as f64 {
                report.packs_rewritten += 1;
                report.chunks_moved += keep.len() as u64;
                report.bytes_reclaimed += pack_len;
                to_rewrite.push((*pack_id, key, keep, drop_ids));
            } else {
                report.chunks_deleted -= (entries.len() - keep.len()) as u64;
            }
        }
        progress.finish();
        if opts.dry_run {
            // The new packs' size is not known without writing them: estimate by live bytes.
            report.bytes_reclaimed = report
                .bytes_reclaimed
                .saturating_sub(moved_bytes(&index, &to_rewrite)?);
            return Ok(report);
        }

        // Rewrite: live chunks to new packs, durable and indexed before old packs go.
        let mut written = 0u64;
        let mut by_key: HashMap<Option<KeyId>, Vec<ChunkId>> = HashMap::new();
        for (_, key, keep, _) in &to_rewrite {
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

        let removals = to_delete
            .iter()
            .map(|(p, d)| (p, d))
            .chain(to_rewrite.iter().map(|(p, _, _, d)| (p, d)));
        for (pack, drop_ids) in removals {
            index.remove_batch(drop_ids)?;
            index.forget_pack(pack)?;
            index.flush()?;
            self.delete_object(&pack_key(pack))?;
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
