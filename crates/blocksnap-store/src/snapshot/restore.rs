//! `snapshot restore`: extents are read in batches, chunks fetched and decoded in parallel,
//! verified against their ids and written with positioned writes. Holes stay holes.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use blocksnap_manifest::{ChunkId, SnapshotDoc, SnapshotId};
use rayon::prelude::*;
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::packs::reader::ChunkReader;
use crate::progress::Progress;
use crate::repo::Store;
use crate::snapshot::target::{
    RestoreOptions, Target, TargetFormat, TargetKind, human, parent_dir, rename_new,
};
use crate::snapshot::view::SnapshotView;

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

/// Chunks a worker decodes together, writing each run of adjacent ones with one positioned
/// write (about 1 MiB with the default chunk size). One write per chunk cost 14% more time and
/// CPU: the writers took the file's lock in turn for every 32 KiB (measured, cold restores).
const WRITE_RUN: usize = 32;

/// Where a restore's bytes go: the file or device itself (raw), or a qcow2 image in the file.
enum Sink {
    Raw(fs::File),
    /// The image, and the file under it (for the syncs of writeback between batches).
    Qcow2(blocksnap_source::qcow2::Qcow2Writer, fs::File),
}

impl Sink {
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match self {
            Sink::Raw(f) => f.write_all_at(buf, offset),
            Sink::Qcow2(q, _) => q.write_at(buf, offset),
        }
    }

    /// Starts writeback of what was written so far (the image's metadata is written at the
    /// end, by [`Sink::sync_all`]).
    fn sync_data(&self) -> std::io::Result<()> {
        match self {
            Sink::Raw(f) | Sink::Qcow2(_, f) => f.sync_data(),
        }
    }

    /// Makes everything durable: for qcow2, its tables written first.
    fn sync_all(&self) -> std::io::Result<()> {
        match self {
            Sink::Raw(f) => f.sync_all(),
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
        let locator = self.locator(index.as_ref(), doc, &codec, progress)?;
        let view = SnapshotView::open(doc, ChunkReader::with_locator(self, &codec, locator))?;
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
            Some((f, _)) => Sink::Raw(f.try_clone().map_err(|e| target.fail("cannot open", e))?),
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
                        .map(|()| Sink::Raw(f))
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
            let mut batch: Vec<(u64, u32, ChunkId)> = Vec::new();
            let mut batch_bytes = 0u64;
            let mut written = 0u64;
            // On an object store the records of a batch are fetched ahead, coalesced into few
            // ranged reads, while the batch before is decoded and written: at most two batches'
            // records are in memory.
            let prefetching = reader.prefetches();
            type Ahead<'s> = (
                Vec<(u64, u32, ChunkId)>,
                std::thread::ScopedJoinHandle<'s, crate::packs::reader::Prefetched>,
            );
            let mut ahead: Option<Ahead<'_>> = None;
            let flush = |batch: &mut Vec<(u64, u32, ChunkId)>,
                         fetched: Option<&crate::packs::reader::Prefetched>,
                         written: &mut u64|
             -> Result<()> {
                crate::cancel::check()?;
                batch
                    .par_chunks(WRITE_RUN)
                    .try_for_each(|group| -> Result<()> {
                        // `run` holds adjacent chunks' bytes, from volume offset `start`.
                        let mut run: Vec<u8> = Vec::new();
                        let mut start = 0u64;
                        let write = |run: &[u8], start: u64| {
                            file.write_at(run, start)
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
                                    write(&run, start)?;
                                    run.clear();
                                }
                                zeros_skipped.fetch_add(
                                    u64::from(*len),
                                    std::sync::atomic::Ordering::Relaxed,
                                );
                                continue;
                            }
                            if !run.is_empty() && start + run.len() as u64 != *off {
                                write(&run, start)?;
                                run.clear();
                            }
                            if run.is_empty() {
                                start = *off;
                            }
                            run.extend_from_slice(&data);
                        }
                        if !run.is_empty() {
                            write(&run, start)?;
                        }
                        Ok(())
                    })?;
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
                for span in view.spans() {
                    let (off, len) = (span.offset, span.len);
                    match span.chunk {
                        Some(id) => {
                            batch.push((off, len as u32, id));
                            batch_bytes += len;
                            if batch_bytes >= BATCH_BYTES {
                                if prefetching {
                                    let full = std::mem::take(&mut batch);
                                    let ids: Vec<ChunkId> = full.iter().map(|b| b.2).collect();
                                    let next = scope.spawn(move || reader.prefetch(&ids));
                                    if let Some((mut prev, fetch)) = ahead.replace((full, next)) {
                                        let fetched = fetch.join().unwrap_or_default();
                                        flush(&mut prev, Some(&fetched), &mut written)?;
                                    }
                                } else {
                                    flush(&mut batch, None, &mut written)?;
                                }
                                batch_bytes = 0;
                            }
                        }
                        None => {
                            if device {
                                // A device keeps old bytes: holes must be written as zeros.
                                let mut p = 0;
                                while p < len {
                                    let n = (len - p).min(zeros.len() as u64);
                                    file.write_at(&zeros[..n as usize], off + p)
                                        .map_err(|e| target.fail("cannot write", e))?;
                                    p += n;
                                }
                                progress.advance(len);
                            }
                        }
                    }
                }
                if let Some((mut prev, fetch)) = ahead.take() {
                    let fetched = fetch.join().unwrap_or_default();
                    flush(&mut prev, Some(&fetched), &mut written)?;
                }
                let fetched = prefetching.then(|| reader.prefetch(batch.iter().map(|b| &b.2)));
                flush(&mut batch, fetched.as_ref(), &mut written)
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
