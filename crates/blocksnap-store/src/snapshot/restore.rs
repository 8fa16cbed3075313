//! `snapshot restore`: extents are read in batches, chunks fetched and decoded in parallel,
//! verified against their ids and written with positioned writes. Holes stay holes.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use blocksnap_index::Location;
use blocksnap_manifest::{ChunkId, SnapshotDoc, SnapshotId};
use rayon::prelude::*;
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::packs::reader::ChunkReader;
use crate::progress::Progress;
use crate::repo::Store;
use crate::snapshot::direct::{DirectFile, Run};
use crate::snapshot::target::{
    RestoreOptions, Target, TargetFormat, TargetKind, human, parent_dir, rename_new,
};

/// What `snapshot restore` did (the `--json` output).
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// The snapshot.
    pub id: SnapshotId,
    /// The volume's size, and the output's.
    pub size: u64,
    /// Data bytes written (holes are not written).
    pub bytes_written: u64,
    /// Wall time.
    pub seconds: f64,
    /// Where it went: the path as given.
    pub output: PathBuf,
    /// A file or a block device.
    pub kind: TargetKind,
    /// The image format written: `raw` or `qcow2`.
    pub format: TargetFormat,
    /// What was written: `output`, or the file or device its symbolic link points to.
    pub written_to: PathBuf,
    /// An existing file was replaced (`--force`).
    pub replaced: bool,
    /// The block device's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_size: Option<u64>,
    /// Bytes of the block device past the snapshot's size, left as they were (0 for a file).
    pub tail_left: u64,
    /// The snapshot's source was written while it was being read: the image may not be
    /// consistent.
    pub source_changed: bool,
}

/// Data bytes decoded per batch: bounds restore's memory.
const BATCH_BYTES: u64 = 64 << 20;

/// Stored bytes per batch of a restore that follows the packs ([`batches_by_pack`]): whole
/// packs (32 MiB by default) while they fit. Two batches' records are in memory at once (one
/// written, the next fetched): 64 MiB per batch cut anywhere doubled a restore's peak RSS (95 to
/// 182 MiB, `benches/compare-s3.sh`).
const PACK_BATCH_BYTES: u64 = 40 << 20;

thread_local! {
    /// A restore worker's run buffer, kept from group to group.
    static RUN: std::cell::Cell<Run> = const { std::cell::Cell::new(Run::new()) };
}

/// Chunks a worker decodes together, writing each run of adjacent ones with one positioned
/// write (about 1 MiB with the default chunk size). One write per chunk cost 14% more time and
/// CPU: the writers took the file's lock in turn for every 32 KiB (measured, cold restores).
const WRITE_RUN: usize = 32;

/// Where a restore's bytes go: the file or device itself (raw; whole blocks written past the
/// page cache where it can be), or a qcow2 image in the file.
enum Sink {
    Raw(DirectFile),
    /// The image, and the file under it (for the syncs of writeback between batches).
    Qcow2(blocksnap_source::qcow2::Qcow2Writer, fs::File),
}

impl Sink {
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match self {
            Sink::Raw(f) => f.cached.write_all_at(buf, offset),
            Sink::Qcow2(q, _) => q.write_at(buf, offset),
        }
    }

    fn write_run(&self, run: &Run) -> std::io::Result<()> {
        match self {
            Sink::Raw(f) => f.write_run(run),
            Sink::Qcow2(q, _) => q.write_at(run.bytes(), run.start()),
        }
    }

    /// Starts writeback of what was written so far (the image's metadata is written at the
    /// end, by [`Sink::sync_all`]).
    fn sync_data(&self) -> std::io::Result<()> {
        match self {
            Sink::Raw(DirectFile { cached: f, .. }) | Sink::Qcow2(_, f) => f.sync_data(),
        }
    }

    /// Makes everything durable: for qcow2, its tables written first.
    fn sync_all(&self) -> std::io::Result<()> {
        match self {
            Sink::Raw(f) => f.cached.sync_all(),
            Sink::Qcow2(q, f) => {
                q.finish()?;
                f.sync_all()
            }
        }
    }
}

impl Store {
    /// Rebuilds a snapshot's volume into `output`: a new file, or with `force` an existing
    /// regular file (replaced) or a block device (written over). See [`Store::plan_target`].
    pub fn restore(
        &self,
        access: &Access,
        snapshot: &str,
        output: &Path,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        self.restore_with(
            access,
            snapshot,
            output,
            &RestoreOptions::default(),
            progress,
        )
    }

    /// [`Store::restore`] with options.
    pub fn restore_with(
        &self,
        access: &Access,
        snapshot: &str,
        output: &Path,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let doc = self.resolve_snapshot(snapshot)?;
        self.snapshot_codec(access, &doc)?;
        let target = self.plan_target(output, &doc, opts)?;
        self.restore_into(access, &doc, target, progress)
    }

    /// Writes snapshot `doc` into a planned target.
    pub(crate) fn restore_into(
        &self,
        access: &Access,
        doc: &SnapshotDoc,
        target: Target,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let codec = self.snapshot_codec(access, doc)?;
        let _lock = self.lock_reading("restore", progress)?;
        let index = self.index_if_free(access, progress)?;
        let view = self.view_of(index.as_ref(), doc, &codec, progress)?;
        let reader = view.reader();
        if doc.source_changed {
            progress.message(&format!(
                "note: snapshot {} was taken while its source was being written: the image may not be consistent (like a disk pulled from a running machine)",
                doc.id
            ));
        }
        let device = target.kind == TargetKind::BlockDevice;
        let tail_left = target.device.as_ref().map_or(0, |(_, n)| n - doc.size);
        if tail_left > 0 {
            progress.message(&format!(
                "note: {} is {}, the snapshot {}: its last {} (from byte {}) are left as they were",
                target.shown(),
                human(doc.size + tail_left),
                human(doc.size),
                human(tail_left),
                doc.size
            ));
        }
        // A file is written beside its place and renamed at the end: a failed restore leaves
        // no half image, and an existing file stays as it was until then.
        let tmp = fsutil::tmp_path_for(&target.path);
        let qcow2 = target.format == TargetFormat::Qcow2;
        let file = match &target.device {
            Some(_) if qcow2 => {
                // Refused when planned; never formats a device.
                return Err(StoreError::Usage(format!(
                    "{} is a block device: qcow2 images are written only into files",
                    target.shown()
                )));
            }
            Some((f, _)) => Sink::Raw(DirectFile::new(
                f.try_clone().map_err(|e| target.fail("cannot open", e))?,
            )),
            None => {
                let mut o = OpenOptions::new();
                // A qcow2 image's library reads back its own tables: open it for reading too.
                o.read(qcow2).write(true).create_new(true).mode(0o600);
                let f = o.open(&tmp).map_err(|e| target.fail("cannot create", e))?;
                let made = if qcow2 {
                    f.try_clone()
                        .and_then(|under| {
                            let q = blocksnap_source::qcow2::Qcow2Writer::create(under, doc.size)?;
                            Ok(Sink::Qcow2(q, f))
                        })
                        .map_err(|e| target.fail("cannot create a qcow2 image in", e))
                } else {
                    f.set_len(doc.size)
                        .map(|()| Sink::Raw(DirectFile::new(f)))
                        .map_err(|e| target.fail("cannot size", e))
                };
                match made {
                    Ok(sink) => sink,
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
            }
        };
        let cleanup = |e: StoreError| {
            if !device {
                let _ = fs::remove_file(&tmp);
            }
            e
        };

        // The work is writing: data, and on a device the holes too (as zeros).
        let to_write: u64 = view
            .spans()
            .iter()
            .filter(|s| device || s.chunk.is_some())
            .map(|s| s.len)
            .sum();
        progress.start("restore", to_write);
        // Writeback starts while the next batch is decoded: a syncer thread runs fdatasync after
        // each batch (at most one waiting), so the final fsync waits for the last batch alone,
        // not for the whole image. Its errors fail the restore like the final fsync's.
        let (sync_tx, sync_rx) = crossbeam_channel::bounded::<()>(1);
        let target = &target;
        // Chunks of zeros not written into a qcow2 image (its unwritten clusters read as
        // zeros): subtracted from the bytes written.
        let zeros_skipped = std::sync::atomic::AtomicU64::new(0);
        let written = std::thread::scope(|scope| -> Result<u64> {
            let syncer = scope.spawn(|| -> Result<()> {
                for () in sync_rx {
                    file.sync_data()
                        .map_err(|e| target.fail("cannot sync", e))?;
                }
                Ok(())
            });
            let mut written = 0u64;
            // On an object store the records of a batch are fetched ahead, coalesced into few
            // ranged reads, while the batch before is decoded and written: at most two batches'
            // records are in memory. There the batches follow the packs, not the disk (see
            // `batches_by_pack`).
            let prefetching = reader.prefetches();
            type Ahead<'s> = (
                Vec<Piece>,
                std::thread::ScopedJoinHandle<'s, crate::packs::reader::Prefetched>,
            );
            let mut ahead: Option<Ahead<'_>> = None;
            // Twice as many workers as cores: a worker waits for its pack reads and its
            // writes, and the others decode meanwhile (cold 8 GiB restores, alternating: 5.75 /
            // 6.32 / 5.83 s against 6.06 / 7.52 / 6.06 s with one per core). Without a pool of
            // its own (threads refused), the shared one.
            let workers = rayon::ThreadPoolBuilder::new()
                .num_threads(2 * rayon::current_num_threads())
                .thread_name(|i| format!("restore-{i}"))
                .build()
                .ok();
            let flush = |batch: &mut Vec<Piece>,
                         fetched: Option<&crate::packs::reader::Prefetched>,
                         written: &mut u64|
             -> Result<()> {
                crate::cancel::check()?;
                // Decodes a group of pieces, writing each run of adjacent chunks at once.
                let write_group = |group: &[Piece], run: &mut Run| -> Result<()> {
                    let write = |run: &Run| {
                        file.write_run(run)
                            .map_err(|e| target.fail("cannot write", e))
                    };
                    for (off, len, id) in group {
                        let data = reader.read_with(id, fetched)?;
                        if data.len() != *len as usize {
                            return Err(StoreError::Damaged(format!(
                                "chunk {id} has {} bytes, the extent list says {len}",
                                data.len()
                            )));
                        }
                        if qcow2 && data.iter().all(|b| *b == 0) {
                            // Verified above; a qcow2 leaves it unallocated.
                            if !run.is_empty() {
                                write(run)?;
                                run.begin(0);
                            }
                            zeros_skipped
                                .fetch_add(u64::from(*len), std::sync::atomic::Ordering::Relaxed);
                            continue;
                        }
                        if !run.is_empty() && run.end() != *off {
                            write(run)?;
                            run.begin(0);
                        }
                        if run.is_empty() {
                            run.begin(*off);
                        }
                        run.push(&data);
                    }
                    if !run.is_empty() {
                        write(run)?;
                    }
                    Ok(())
                };
                let decode = || {
                    batch
                        .par_chunks(WRITE_RUN)
                        .try_for_each(|group| -> Result<()> {
                            // Each worker's buffer, taken (not borrowed) so that a nested task
                            // on this thread would get its own.
                            let mut run = RUN.take();
                            run.begin(0);
                            let result = write_group(group, &mut run);
                            RUN.set(run);
                            result
                        })
                };
                match &workers {
                    Some(pool) => pool.install(decode),
                    None => decode(),
                }?;
                let n: u64 = batch.iter().map(|b| u64::from(b.1)).sum();
                *written += n;
                progress.advance(n);
                batch.clear();
                // A sync already waiting covers this batch too.
                let _ = sync_tx.try_send(());
                Ok(())
            };
            let zeros = vec![0u8; 1 << 20];
            let result = (|| -> Result<()> {
                if device {
                    // A device keeps old bytes: holes must be written as zeros.
                    for span in view.spans().iter().filter(|s| s.chunk.is_none()) {
                        let mut p = 0;
                        while p < span.len {
                            let n = (span.len - p).min(zeros.len() as u64);
                            file.write_at(&zeros[..n as usize], span.offset + p)
                                .map_err(|e| target.fail("cannot write", e))?;
                            p += n;
                        }
                        progress.advance(span.len);
                    }
                }
                let data = view
                    .spans()
                    .iter()
                    .filter_map(|s| s.chunk.map(|id| (s.offset, s.len as u32, id)));
                let batches: Box<dyn Iterator<Item = Vec<Piece>>> = if prefetching {
                    Box::new(batches_by_pack(data.collect(), reader).into_iter())
                } else {
                    Box::new(batches_in_order(data))
                };
                for mut batch in batches {
                    if prefetching {
                        let ids: Vec<ChunkId> = batch.iter().map(|b| b.2).collect();
                        let next = scope.spawn(move || reader.prefetch(&ids));
                        if let Some((mut prev, fetch)) = ahead.replace((batch, next)) {
                            let fetched = fetch.join().unwrap_or_default();
                            flush(&mut prev, Some(&fetched), &mut written)?;
                        }
                    } else {
                        flush(&mut batch, None, &mut written)?;
                    }
                }
                if let Some((mut prev, fetch)) = ahead.take() {
                    let fetched = fetch.join().unwrap_or_default();
                    flush(&mut prev, Some(&fetched), &mut written)?;
                }
                Ok(())
            })();
            drop(sync_tx);
            let synced = syncer
                .join()
                .map_err(|_| StoreError::Other("the restore's sync thread panicked".into()))?;
            result?;
            synced?;
            file.sync_all().map_err(|e| target.fail("cannot sync", e))?;
            Ok(written - zeros_skipped.load(std::sync::atomic::Ordering::Relaxed))
        })
        .map_err(cleanup)?;
        // The image's library holds the file open until here.
        drop(file);
        progress.finish();
        if !device {
            let placed = if target.replaces {
                fs::rename(&tmp, &target.path)
            } else {
                rename_new(&tmp, &target.path)
            };
            placed
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        StoreError::Other(format!(
                            "{} was created by another program during the restore; it was left as it is. Run again with --force to replace it, or give another name",
                            target.output.display()
                        ))
                    } else {
                        target.fail("cannot rename into place", e)
                    }
                })
                .map_err(cleanup)?;
            fsutil::sync_dir(parent_dir(&target.path))?;
        }
        Ok(RestoreReport {
            id: doc.id,
            size: doc.size,
            bytes_written: written,
            seconds: started.elapsed().as_secs_f64(),
            output: target.output.clone(),
            kind: target.kind,
            format: target.format,
            written_to: target.path.clone(),
            replaced: target.replaces,
            device_size: target.device.as_ref().map(|(_, n)| *n),
            tail_left,
            source_changed: doc.source_changed,
        })
    }
}

/// One chunk of the volume to write: its offset, length and id.
type Piece = (u64, u32, ChunkId);

/// The data pieces in volume order, in batches of about [`BATCH_BYTES`] made as they are taken
/// (a local store: each chunk is read where it lies, and writes go forward through the file),
/// the last one possibly empty.
fn batches_in_order(mut pieces: impl Iterator<Item = Piece>) -> impl Iterator<Item = Vec<Piece>> {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while bytes < BATCH_BYTES {
            let Some(p) = pieces.next() else {
                done = true;
                return Some(batch);
            };
            bytes += u64::from(p.1);
            batch.push(p);
        }
        Some(batch)
    })
}

/// The data pieces in batches that follow the packs: ordered by pack and by place in the pack
/// (pieces whose chunk the reader cannot place last, in volume order), whole packs to a batch as
/// far as [`PACK_BATCH_BYTES`] of stored records allows (a larger pack is cut, never between two
/// pieces of one chunk), each batch then in volume order so that adjacent chunks are written
/// together. On an object store a batch is then a ranged read of each of its packs: the records
/// of a pack an incremental snapshot wrote lie all over the disk, and batches in volume order read
/// that pack again in every batch (14 reads of one pack in a restore measured in docs/S3.md);
/// and a pack cut between two batches fetched at once is opened by both (a read of its header
/// more).
fn batches_by_pack(pieces: Vec<Piece>, reader: &ChunkReader<'_>) -> Vec<Vec<Piece>> {
    let mut places: std::collections::HashMap<ChunkId, Option<Location>> =
        std::collections::HashMap::new();
    let mut keyed: Vec<(Option<Location>, Piece)> = pieces
        .into_iter()
        .map(|p| {
            let loc = *places.entry(p.2).or_insert_with(|| reader.location(&p.2));
            (loc, p)
        })
        .collect();
    keyed.sort_by_key(|(loc, p)| (loc.is_none(), loc.map(|l| (l.pack, l.offset)), p.0));
    // Runs of one pack (or of unplaced pieces), each cut into parts of at most the budget.
    let mut parts: Vec<(u64, Vec<Piece>)> = Vec::new();
    let mut last_pack = None;
    for (loc, p) in keyed {
        let pack = loc.map(|l| l.pack);
        let same_chunk = parts
            .last()
            .and_then(|(_, v)| v.last())
            .is_some_and(|last| last.2 == p.2);
        let full = parts
            .last()
            .is_none_or(|(bytes, _)| *bytes >= PACK_BATCH_BYTES);
        if !same_chunk && (pack != last_pack || full) {
            parts.push((0, Vec::new()));
        }
        last_pack = pack;
        let Some((bytes, part)) = parts.last_mut() else {
            continue;
        };
        if !same_chunk {
            *bytes += loc.map_or(u64::from(p.1), |l| u64::from(l.stored_len));
        }
        part.push(p);
    }
    // Whole parts to a batch while they fit the budget.
    let mut out: Vec<Vec<Piece>> = Vec::new();
    let mut stored = 0u64;
    for (bytes, part) in parts {
        match out.last_mut() {
            Some(batch) if stored + bytes <= PACK_BATCH_BYTES => batch.extend(part),
            _ => {
                out.push(part);
                stored = 0;
            }
        }
        stored += bytes;
    }
    for b in &mut out {
        b.sort_by_key(|p| p.0);
    }
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}
