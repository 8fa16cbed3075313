//! `snapshot create`: source -> extents -> chunks -> ids -> lookup -> encode -> pack -> commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blocksnap_chunker::Chunker;
use blocksnap_index::Index;
use blocksnap_manifest::{
    Document, ExtentEncoder, ExtentsDoc, KeyId, SnapshotDoc, SnapshotId, VolumeDoc,
};
use blocksnap_pack::ChunkCodec;
use std::collections::HashSet;

use blocksnap_manifest::ChunkId;
use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::packs::writer::{ChunkWriter, Dedup, MetaWriter, Pending, WriterStats};
use crate::progress::Progress;
use crate::repo::{Store, chunker_doc};
use crate::snapshot::source::{Piece, ReadBatch, Source, SourceId};

/// Options of `snapshot create`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// The disk image or block device.
    pub source: PathBuf,
    /// The volume's name; default: the source's file name.
    pub volume: Option<String>,
    /// The key to encrypt with (name or id); default: `default`.
    pub key: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Free text.
    pub description: String,
    /// The time to record as the snapshot's creation (RFC 3339); default: now. Policies that
    /// run for a given `--at` time record that time.
    pub created: Option<String>,
    /// The source is the disk the volume's snapshots were taken of, moved, renamed or now on
    /// another host: accept it although its path or host differs from the recorded one, and
    /// record the new place (in the snapshot, and in the registered volume if there is one).
    pub source_moved: bool,
}

/// What `snapshot create` did (the `--json` output).
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    /// The new snapshot.
    pub id: SnapshotId,
    /// Its volume.
    pub volume: String,
    /// The volume's size.
    pub size: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes skipped as holes or zeros.
    pub bytes_hole: u64,
    /// Data chunks in the snapshot.
    pub chunks: u64,
    /// Data chunks the store did not have yet.
    pub chunks_new: u64,
    /// Raw bytes of those new chunks.
    pub bytes_new: u64,
    /// Bytes added to the store on disk: packs (after compression and encryption) and documents.
    pub bytes_stored: u64,
    /// Wall time.
    pub seconds: f64,
    /// The previous snapshot of the volume.
    pub parent: Option<SnapshotId>,
    /// The key used.
    pub key: Option<KeyId>,
    /// Packs written.
    pub packs: u64,
    /// The source read (absolute path), as the snapshot records it.
    pub source: Option<String>,
    /// The source was written while it was being read: the snapshot is committed, but may not
    /// be consistent (like a disk pulled from a running machine).
    pub source_changed: bool,
}

/// What storing a stream of pieces produced: the parts of a snapshot document and counters.
pub(crate) struct Stored {
    pub extents: ExtentsDoc,
    pub size: u64,
    pub data_bytes: u64,
    pub bytes_read: u64,
    pub bytes_hole: u64,
    pub stats: WriterStats,
}

/// One piece of the volume after encoding: a hole, or a data chunk's length and id.
enum Item {
    Hole(u64),
    Data(u32, ChunkId),
}

/// A batch of pieces, hashed, with the chunks the index lacks compressed.
struct Encoded {
    items: Vec<Item>,
    /// `(id, raw length, compressed record)` of chunks the index lacked (each id once).
    records: Vec<(ChunkId, u32, Vec<u8>)>,
    data_chunks: u64,
    bytes_read: u64,
    bytes_hole: u64,
    volume_bytes: u64,
}

/// Batches encoded at once. With one, the cores that finish their share of a batch wait at its
/// end for the slowest chunk, and for the sink to take it and the next batch to be handed out;
/// with more they go on with the next. Each holds a read buffer (about 2 MiB) and its records
/// until the sink takes it. Measured on a first snapshot (2 cores): one batch of 4 MiB kept
/// 1.70 cores busy; four of 2 MiB 1.78, at the same peak RSS; six 1.81, at 10 MiB more.
pub(crate) const ENCODING: usize = 4;

/// The encoder stage: hands each batch the reader produces to the rayon pool, at most
/// [`ENCODING`] at once (a slot is taken from `slots` per batch; the sink gives it back), and
/// sends the results tagged with the batch's position, since they may finish out of order.
fn encode(
    rx: &Receiver<Result<ReadBatch>>,
    tx: &Sender<(usize, Result<Encoded>)>,
    slots: &Receiver<()>,
    codec: &ChunkCodec,
    dedup: &Dedup,
    pending: &Pending,
) {
    rayon::in_place_scope(|scope| {
        for (seq, batch) in rx.iter().enumerate() {
            if slots.recv().is_err() {
                return; // the sink stopped
            }
            let tx = tx.clone();
            scope.spawn(move |_| {
                // A closed channel means the sink stopped: the result is not wanted.
                let _ = tx.send((
                    seq,
                    batch.and_then(|b| encode_batch(&b, codec, dedup, pending)),
                ));
            });
        }
    });
}

/// Ids for every data piece of a batch and compression of those neither the index nor the
/// sink's pending set has, in parallel. The sink decides for good what to store: a chunk whose
/// first copy is in a batch still being encoded is compressed twice and the second record
/// dropped, nothing worse.
fn encode_batch(
    batch: &ReadBatch,
    codec: &ChunkCodec,
    dedup: &Dedup,
    pending: &Pending,
) -> Result<Encoded> {
    let coded: Vec<(Option<ChunkId>, Option<Vec<u8>>)> = batch
        .pieces
        .par_iter()
        .map(|p| match p {
            Piece::Hole(_) => Ok((None, None)),
            Piece::Data(r) => {
                let d = batch.bytes(r);
                let id = codec.chunk_id(d);
                // Pending: an earlier batch's copy is on its way into a pack. Checking it cut
                // the records compressed only to be dropped from 385 to 74-155 of ~8000 in a
                // first snapshot of the comparison image (measured).
                let known =
                    pending.lock().expect("not poisoned").contains(&id) || dedup.contains(&id)?;
                Ok((Some(id), (!known).then(|| codec.compress(d))))
            }
        })
        .collect::<Result<_>>()?;
    let mut out = Encoded {
        items: Vec::with_capacity(batch.pieces.len()),
        records: Vec::new(),
        data_chunks: 0,
        bytes_read: batch.bytes_read,
        bytes_hole: batch.bytes_hole,
        volume_bytes: batch.volume_bytes,
    };
    let mut seen = HashSet::new();
    for (piece, (id, record)) in batch.pieces.iter().zip(coded) {
        match (piece, id) {
            (Piece::Hole(len), _) => out.items.push(Item::Hole(*len)),
            (Piece::Data(r), Some(id)) => {
                let len = r.len() as u32;
                out.items.push(Item::Data(len, id));
                out.data_chunks += 1;
                if let Some(r) = record.filter(|_| seen.insert(id)) {
                    out.records.push((id, len, r));
                }
            }
            (Piece::Data(_), None) => unreachable!("ids are computed for every data piece"),
        }
    }
    Ok(out)
}

/// Progress of one of several operations that share a bar: phases are the caller's.
pub(crate) struct Within<'a>(pub &'a dyn Progress);

impl Progress for Within<'_> {
    fn advance(&self, bytes: u64) {
        self.0.advance(bytes);
    }
    fn message(&self, text: &str) {
        self.0.message(text);
    }
}

impl Store {
    /// Takes a snapshot of a disk image or block device.
    pub fn snapshot(
        &self,
        access: &Access,
        opts: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<SnapshotReport> {
        // The source is checked before any lock is taken: a FIFO, a directory or another
        // disk under the volume's name is refused at once.
        let source = self.open_source(opts, progress)?;
        let _lock = self.lock_shared("snapshot", progress)?;
        let index = self.open_index(access, progress)?;
        progress.start("snapshot", source.size);
        let r = self.snapshot_with(access, opts, source, &index, progress)?;
        progress.finish();
        Ok(r)
    }

    /// Opens the source of a snapshot (a path, or the name of a registered volume) and checks
    /// that it is the disk its volume's chain was taken of.
    pub(crate) fn open_source(
        &self,
        opts: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<Source> {
        let (path, registered) = self.source_path(opts)?;
        let mut source = Source::open(&path)?;
        source.volume = volume_of(opts, registered.as_ref())?;
        self.check_chain(&source, opts, progress)?;
        if source.size == 0 {
            progress.message(&format!(
                "note: {} is empty (0 bytes): the snapshot records an empty volume",
                path.display()
            ));
        }
        Ok(source)
    }

    /// The path of a snapshot's source, and the registered volume it names if it is one.
    fn source_path(&self, opts: &SnapshotOptions) -> Result<(PathBuf, Option<VolumeDoc>)> {
        let registered = match opts.source.to_str() {
            Some(name) if !opts.source.exists() => self.volume(name)?,
            _ => None,
        };
        let path = registered
            .as_ref()
            .map_or_else(|| opts.source.clone(), |v| PathBuf::from(&v.path));
        Ok((path, registered))
    }

    /// Refuses a source that is not the disk its volume is: not the registered volume's path
    /// (or host), or not the source the volume's latest snapshot recorded. Snapshots that
    /// recorded no source (taken before blocksnap recorded it) and volumes without a recorded
    /// host are not held against it. With `--source-moved` the difference is accepted, and a
    /// registered volume is updated to the new place. A volume named explicitly with
    /// `--volume` (and not registered: a registered volume's path is the truth) whose latest
    /// snapshot read another file is the user's choice (successive versions of an image kept
    /// as separate files): it is taken, with a note.
    fn check_chain(
        &self,
        source: &Source,
        opts: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<()> {
        let moved = opts.source_moved;
        let volume = &source.volume;
        let here = &source.id;
        // Hosts are named only when they differ.
        let recorded = |path: &str, host: Option<&str>| match host {
            Some(h) if h != here.host => format!("{path} on host {h}"),
            _ => path.to_string(),
        };
        let current = |host: Option<&str>| match host {
            Some(h) if h != here.host => format!("{} on host {}", here.path, here.host),
            _ => here.path.clone(),
        };
        let remedy = format!(
            "If it is another disk, give it a volume of its own: `blocksnap snapshot create {p} --volume NEW-NAME`, or `blocksnap volume add NEW-NAME {p}` and use that name (also in `image create --volume DEVICE=NEW-NAME`). If it is the same disk, moved, renamed or now on another host, pass --source-moved: the snapshot then records its new place",
            p = here.path
        );
        let registered = self.volume(volume)?;
        if let Some(mut reg) = registered.clone() {
            if differs(&reg.path, reg.host.as_deref(), here) {
                if !moved {
                    return Err(StoreError::Usage(format!(
                        "{} is not the disk registered as volume '{volume}' ({}). Two different disks must never share one volume's snapshots. {remedy}",
                        current(reg.host.as_deref()),
                        recorded(&reg.path, reg.host.as_deref())
                    )));
                }
                reg.path.clone_from(&here.path);
                reg.host = Some(here.host.clone());
                self.rewrite_volume(&reg)?;
            }
        }
        if moved {
            return Ok(());
        }
        let Some(latest) = self.latest_snapshot(volume)? else {
            return Ok(());
        };
        let Some(path) = &latest.source_path else {
            return Ok(());
        };
        if differs(path, latest.source_host.as_deref(), here) {
            if opts.volume.is_some() && registered.is_none() {
                progress.message(&format!(
                    "note: volume '{volume}' was last snapshotted from {} ({}); this snapshot \
                     reads {}, as --volume {volume} asks",
                    recorded(path, latest.source_host.as_deref()),
                    latest.id,
                    current(latest.source_host.as_deref())
                ));
                return Ok(());
            }
            return Err(StoreError::Usage(format!(
                "{} is not the disk volume '{volume}' was snapshotted from: its latest snapshot {} read {}. Two different disks must never share one volume's snapshots (the next one would be stored as a change of the other disk, and restoring the volume would give back the wrong one). {remedy}",
                current(latest.source_host.as_deref()),
                latest.id,
                recorded(path, latest.source_host.as_deref())
            )));
        }
        Ok(())
    }

    /// Takes a snapshot of an opened source with the store lock held and the index open.
    pub(crate) fn snapshot_with(
        &self,
        access: &Access,
        opts: &SnapshotOptions,
        source: Source,
        index: &Index,
        progress: &dyn Progress,
    ) -> Result<SnapshotReport> {
        let (doc, stored, started) =
            self.snapshot_uncommitted(access, opts, source, index, None, progress)?;
        self.commit_snapshot(doc, &stored, started)
    }

    /// Stores a snapshot's data and returns its document, not yet written. With `pending`
    /// shared between snapshots running at once, the document may be written only after every
    /// one of them has returned (one may reference chunks another was writing).
    pub(crate) fn snapshot_uncommitted(
        &self,
        access: &Access,
        opts: &SnapshotOptions,
        source: Source,
        index: &Index,
        pending: Option<Pending>,
        progress: &dyn Progress,
    ) -> Result<(SnapshotDoc, Stored, Instant)> {
        let started = Instant::now();
        let volume = source.volume.clone();
        blocksnap_manifest::validate_tags("snapshot", &opts.tags)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        let codec = self.codec_for_new(access, opts.key.as_deref())?;
        let parent = self.parent_for(&volume, progress)?;
        let chunker = Chunker::new(self.chunker_params())
            .map_err(|e| StoreError::Damaged(format!("store config: {e}")))?;
        let stored = self.store_pieces_with(
            &codec,
            index,
            pending,
            |tx| source.read_into(&chunker, tx),
            progress,
        )?;
        if stored.size != source.size {
            return Err(StoreError::Other(format!(
                "{} changed size while being read ({} bytes, then {}); nothing was committed. Snapshot it when it is not being resized",
                source.id.path, source.size, stored.size
            )));
        }
        let changed = source.changed_while_read()?;
        if changed {
            progress.message(&format!(
                "warning: {} was written while it was being read: the snapshot is committed, but may not be consistent (like a disk pulled from a running machine). For a consistent one, snapshot it quiet: the VM paused or shut down, or an LVM or filesystem snapshot of it",
                source.id.path
            ));
        }
        let doc = SnapshotDoc {
            format: SnapshotDoc::FORMAT.into(),
            id: SnapshotId(u64::from_le_bytes(fsutil::random_bytes())),
            volume,
            size: source.size,
            created: opts.created.clone().unwrap_or_else(fsutil::now_rfc3339),
            parent,
            key: codec.key_id(),
            owner: access.account.clone(),
            chunker: chunker_doc(self.chunker_params()),
            tags: opts.tags.clone(),
            description: opts.description.clone(),
            data_bytes: stored.data_bytes,
            extents: stored.extents.clone(),
            source_path: Some(source.id.path.clone()),
            source_host: Some(source.id.host.clone()),
            source_changed: changed,
        };
        Ok((doc, stored, started))
    }

    /// Writes the document of a snapshot whose data is stored, durable and indexed: the commit.
    pub(crate) fn commit_snapshot(
        &self,
        doc: SnapshotDoc,
        stored: &Stored,
        started: Instant,
    ) -> Result<SnapshotReport> {
        let doc_bytes = self.write_snapshot(&doc)?;
        Ok(SnapshotReport {
            id: doc.id,
            volume: doc.volume,
            size: doc.size,
            bytes_read: stored.bytes_read,
            bytes_hole: stored.bytes_hole,
            chunks: stored.stats.chunks,
            chunks_new: stored.stats.chunks_new,
            bytes_new: stored.stats.bytes_new,
            bytes_stored: stored.stats.bytes_stored + doc_bytes,
            seconds: started.elapsed().as_secs_f64(),
            parent: doc.parent,
            key: doc.key,
            packs: stored.stats.packs,
            source: doc.source_path,
            source_changed: doc.source_changed,
        })
    }

    /// Stores the pieces `produce` sends (on its own thread, in volume order): ids in parallel,
    /// the extent list built and itself stored as chunks, new chunks encoded and packed. When it
    /// returns, everything is durable and indexed; the caller commits the document.
    pub(crate) fn store_pieces(
        &self,
        codec: &ChunkCodec,
        index: &Index,
        produce: impl FnOnce(&Sender<Result<ReadBatch>>) + Send,
        progress: &dyn Progress,
    ) -> Result<Stored> {
        self.store_pieces_with(codec, index, None, produce, progress)
    }

    /// [`Store::store_pieces`], with the pending chunks shared with other sinks when given.
    pub(crate) fn store_pieces_with(
        &self,
        codec: &ChunkCodec,
        index: &Index,
        pending: Option<Pending>,
        produce: impl FnOnce(&Sender<Result<ReadBatch>>) + Send,
        progress: &dyn Progress,
    ) -> Result<Stored> {
        let mut sink = match pending {
            Some(p) => ChunkWriter::sharing(self, codec, index, p)?,
            None => ChunkWriter::new(self, codec, index)?,
        };
        let mut meta = MetaWriter::new();
        let mut extents = ExtentEncoder::new();
        let mut meta_buf = Vec::new();
        let (mut bytes_read, mut bytes_hole, mut data_bytes) = (0u64, 0u64, 0u64);
        // Three stages overlap: the producer reads and cuts (its own thread); the encoder hashes
        // and compresses what neither the index nor the sink has, in parallel (the rayon pool,
        // fed by its own thread); this thread puts the batches back in order, builds the extent list and seals
        // and writes packs.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (etx, erx) = crossbeam_channel::unbounded();
        let (slot_tx, slots) = crossbeam_channel::bounded(ENCODING);
        for _ in 0..ENCODING {
            slot_tx
                .send(())
                .expect("the channel has room for every slot");
        }
        std::thread::scope(|scope| -> Result<()> {
            let reader = scope.spawn(move || produce(&tx));
            let pending = sink.pending();
            let dedup = sink.dedup();
            let encoder = scope.spawn(move || encode(&rx, &etx, &slots, codec, &dedup, &pending));
            let result = (|| {
                let mut done = BTreeMap::new();
                let mut next = 0;
                for (seq, batch) in erx.iter() {
                    done.insert(seq, batch);
                    while let Some(batch) = done.remove(&next) {
                        next += 1;
                        // Never blocks: slots in the channel and batches out never exceed
                        // ENCODING. An error is the encoder having stopped.
                        let _ = slot_tx.send(());
                        let batch: Encoded = batch?;
                        crate::cancel::check()?;
                        bytes_read += batch.bytes_read;
                        bytes_hole += batch.bytes_hole;
                        for item in batch.items {
                            match item {
                                Item::Hole(len) => extents.hole(len),
                                Item::Data(len, id) => {
                                    extents.data(len, id);
                                    data_bytes += u64::from(len);
                                }
                            }
                        }
                        sink.put_compressed(batch.data_chunks, batch.records)?;
                        meta_buf.extend(extents.take());
                        meta.write(&mut meta_buf, false, &mut sink)?;
                        progress.advance(batch.volume_bytes);
                    }
                }
                Ok(())
            })();
            // Stops the encoder (a closed slot channel) and, through it, the reader.
            drop(slot_tx);
            drop(erx);
            for (name, handle) in [("reader", reader), ("encoder", encoder)] {
                handle
                    .join()
                    .map_err(|_| StoreError::Other(format!("the {name} thread panicked")))?;
            }
            result
        })?;
        let (tail, count, size) = extents.finish();
        meta_buf.extend(tail);
        meta.write(&mut meta_buf, true, &mut sink)?;
        let missing = sink.dedup().missing();
        let stats = sink.finish()?;
        if !missing.is_empty() {
            let packs: Vec<String> = missing.keys().map(ToString::to_string).collect();
            progress.message(&format!(
                "note: the index placed {} chunks in packs that are missing ({}); they were stored \
                 again where this source holds them, and the index no longer points there. \
                 `blocksnap check` lists the snapshots the missing packs affect, \
                 `blocksnap repair packs` makes the index forget the rest of their chunks",
                missing.values().sum::<u64>(),
                packs.join(", ")
            ));
        }
        Ok(Stored {
            extents: ExtentsDoc {
                count,
                bytes: meta.bytes,
                chunks: meta.chunks,
            },
            size,
            data_bytes,
            bytes_read,
            bytes_hole,
            stats,
        })
    }
}

/// Whether a recorded source (`path` on `host`) is another disk than `here`: another host, or
/// another path that does not now name the same file (an older record may hold a resolved
/// device name, or a hard link).
fn differs(path: &str, host: Option<&str>, here: &SourceId) -> bool {
    if host.is_some_and(|h| h != here.host) {
        return true;
    }
    if path == here.path {
        return false;
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (std::fs::metadata(path), std::fs::metadata(&here.path)) {
        (Ok(a), Ok(b)) => {
            let block = a.file_type().is_block_device() && b.file_type().is_block_device();
            !((block && a.rdev() == b.rdev())
                || (!block && a.dev() == b.dev() && a.ino() == b.ino()))
        }
        _ => true,
    }
}

/// The volume name of a snapshot: `--volume`, else the registered volume's, else the source's
/// file name.
fn volume_of(opts: &SnapshotOptions, registered: Option<&VolumeDoc>) -> Result<String> {
    let volume = match (&opts.volume, registered) {
        (Some(v), _) => v.clone(),
        (None, Some(r)) => r.name.clone(),
        (None, None) => volume_name_of(&opts.source)?,
    };
    blocksnap_manifest::validate_name("snapshot", "volume", &volume)
        .map_err(|e| StoreError::Usage(format!("volume name: {e}")))?;
    Ok(volume)
}

/// The default volume name of a source path: its file name, made into a valid name.
fn volume_name_of(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.:@+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']).to_string();
    if cleaned.is_empty() {
        return Err(StoreError::Usage(format!(
            "cannot name a volume after {}; pass --volume NAME",
            path.display()
        )));
    }
    Ok(cleaned
        .chars()
        .take(blocksnap_manifest::MAX_NAME_LEN)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packs::reader::ChunkReader;
    use crate::repo::InitOptions;
    use crate::{NoProgress, StoreError};
    use blocksnap_manifest::{Extent, ExtentDecoder};

    /// A new encrypted store in `dir`, its default key's codec and its index.
    fn new_store(dir: &Path) -> (Store, ChunkCodec, Index) {
        let opts = InitOptions {
            account: "alice".into(),
            identity: Some(dir.join("alice.key")),
            ..InitOptions::default()
        };
        let (store, _) = Store::init(&dir.join("store"), &opts).unwrap();
        let access = store
            .access(Some("alice"), Some(&dir.join("alice.key")))
            .unwrap();
        let codec = store.codec_for_new(&access, None).unwrap();
        let index = store.open_index(&access, &NoProgress).unwrap();
        (store, codec, index)
    }

    /// Chunk `i` of batch `b`: distinct, compressible bytes of `len`.
    fn chunk(b: usize, i: usize, len: usize) -> Vec<u8> {
        let tag = format!("batch {b} chunk {i} ");
        tag.bytes().cycle().take(len).collect()
    }

    #[test]
    fn batches_finishing_out_of_order_are_stored_in_volume_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, codec, index) = new_store(dir.path());
        // Ten times as many batches as encode at once; even batches carry many large chunks
        // and odd ones a single small one, so later batches often finish first. Batch 7 repeats
        // a chunk of batch 2 (pending or indexed by then, not stored twice).
        let batches = 10 * ENCODING;
        let layout = |b: usize| -> Vec<(usize, usize)> {
            let mut v: Vec<(usize, usize)> = if b % 2 == 0 {
                (0..24).map(|i| (b, i)).collect()
            } else {
                vec![(b, 0)]
            };
            if b == 7 {
                v.push((2, 5));
            }
            v
        };
        let len_of = |b: usize, i: usize| {
            if b % 2 == 0 {
                40_000 + i * 97
            } else {
                1_000 + b
            }
        };
        let stored = store
            .store_pieces(
                &codec,
                &index,
                |tx| {
                    for b in 0..batches {
                        let mut batch = ReadBatch::default();
                        for (cb, i) in layout(b) {
                            batch.push_data(&chunk(cb, i, len_of(cb, i)));
                        }
                        batch.push_hole(4096 * (b as u64 + 1));
                        if tx.send(Ok(batch)).is_err() {
                            return;
                        }
                    }
                },
                &NoProgress,
            )
            .unwrap();
        let mut expected = Vec::new();
        for b in 0..batches {
            for (cb, i) in layout(b) {
                expected.extend(chunk(cb, i, len_of(cb, i)));
            }
            expected.extend(std::iter::repeat_n(0u8, 4096 * (b + 1)));
        }
        assert_eq!(stored.size, expected.len() as u64);
        let unique: usize = (0..batches).map(|b| layout(b).len()).sum::<usize>() - 1;
        assert_eq!(stored.stats.chunks_new, unique as u64);

        // Read the volume back through the extent list: every byte in its place.
        let reader = ChunkReader::new(&store, &codec, &index);
        let mut decoder = ExtentDecoder::new(stored.size);
        let mut volume = Vec::new();
        for id in &stored.extents.chunks {
            let bytes = reader.read(id).unwrap();
            decoder
                .feed::<StoreError>(&bytes, &mut |_, extent| {
                    match extent {
                        Extent::Data { id, .. } => volume.extend(reader.read(&id)?),
                        Extent::Hole { len } => {
                            volume.extend(std::iter::repeat_n(0u8, len as usize))
                        }
                    }
                    Ok(())
                })
                .unwrap();
        }
        decoder.finish().unwrap();
        assert!(
            volume == expected,
            "the stored volume differs from what was given"
        );
    }

    #[test]
    fn a_producer_error_fails_the_store_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let (store, codec, index) = new_store(dir.path());
        let sent = std::sync::atomic::AtomicUsize::new(0);
        let err = store
            .store_pieces(
                &codec,
                &index,
                |tx| {
                    // A few good batches, an error, then a producer that would go on forever
                    // if nobody stopped it: it must be stopped by its channel closing.
                    for b in 0.. {
                        let batch = if b == 3 * ENCODING {
                            Err(StoreError::Other("the disk went away".into()))
                        } else {
                            let mut batch = ReadBatch::default();
                            batch.push_data(&chunk(b, 0, 50_000));
                            Ok(batch)
                        };
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if tx.send(batch).is_err() {
                            return;
                        }
                    }
                },
                &NoProgress,
            )
            .err()
            .expect("the producer's error fails the store");
        assert!(err.to_string().contains("the disk went away"), "{err}");
        // The producer stopped soon after the error: what was in flight, no more.
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            sent <= 3 * ENCODING + 2 * ENCODING + 4,
            "{sent} batches sent"
        );
    }
}
