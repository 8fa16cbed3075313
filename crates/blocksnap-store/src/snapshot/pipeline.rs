//! The snapshot pipeline: pieces a producer sends (on its own thread, in volume order) are
//! hashed and, where the store lacks them, compressed on the rayon pool, a few batches at a
//! time; put back in order; the extent list built and itself stored as chunks; new chunks
//! sealed and packed by the [`ChunkWriter`]. Used by `snapshot create`, `image create` and
//! `image copy`.

use std::collections::{BTreeMap, HashSet};

use blocksnap_index::Index;
use blocksnap_manifest::{ChunkId, ExtentEncoder, ExtentsDoc, PackId, SnapshotId};
use blocksnap_pack::ChunkCodec;
use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;

use crate::error::{Result, StoreError};
use crate::packs::writer::{ChunkWriter, Dedup, MetaWriter, Pending, WriterStats};
use crate::progress::Progress;
use crate::repo::Store;
use crate::snapshot::split::{ENCODING, Piece, ReadBatch};

/// What storing a stream of pieces produced: the parts of a snapshot document and counters.
pub(crate) struct Stored {
    pub extents: ExtentsDoc,
    pub size: u64,
    pub data_bytes: u64,
    pub bytes_read: u64,
    pub bytes_hole: u64,
    /// Data bytes taken from the parent snapshot without reading.
    pub bytes_known: u64,
    /// Of the chunks taken from the parent, those looked up one by one (all of them, unless
    /// the parent's packs were checked instead).
    pub parent_checked: u64,
    pub stats: WriterStats,
    /// The record to keep once the snapshot is committed (by `snapshot create`, whose
    /// children a dirty bitmap takes from), when there is one to keep.
    pub packs: Option<SnapshotPacks>,
}

/// What the index will remember of a snapshot once it is committed: the packs its chunks are
/// in ([`Index::record_snapshot_packs`]), which lets a dirty-bitmap child check those packs
/// instead of each of its chunks.
pub(crate) struct SnapshotPacks {
    packs: Vec<PackId>,
    epoch: u64,
}

impl SnapshotPacks {
    /// Records the packs for committed snapshot `id`, and forgets its parent's record (its
    /// volume's newest snapshot is now `id`). A record that cannot be written (the index moved
    /// on, or failed) is left out: it is a cache, and its absence costs lookups.
    pub fn record(&self, index: &Index, id: SnapshotId, parent: Option<SnapshotId>) {
        let _ = index.record_snapshot_packs(id, &self.packs, self.epoch);
        if let Some(parent) = parent {
            let _ = index.forget_snapshot_packs(parent);
        }
    }
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
    bytes_known: u64,
}

/// The encoder stage: hands each batch the reader produces to the rayon pool, at most
/// [`ENCODING`] at once (a slot is taken from `slots` per batch; the pack stage gives it back), and
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
                return; // the pack stage stopped
            }
            let tx = tx.clone();
            scope.spawn(move |_| {
                // A closed channel means the pack stage stopped: the result is not wanted.
                let _ = tx.send((
                    seq,
                    batch.and_then(|b| encode_batch(&b, codec, dedup, pending)),
                ));
            });
        }
    });
}

/// Ids for every data piece of a batch and compression of those neither the index nor the
/// writer's pending set has, in parallel. The writer decides for good what to store: a chunk
/// whose first copy is in a batch still being encoded is compressed twice and the second record
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
            Piece::Known(_, id) => {
                // Taken from the parent without reading: the store must still have it.
                if !dedup.parent_has(id, pending)? {
                    return Err(StoreError::Damaged(format!(
                        "chunk {id} of the parent snapshot is not in the store (its index lacks it), so a dirty-bitmap snapshot cannot take it unread; run `blocksnap check`, and snapshot without --dirty-bitmap"
                    )));
                }
                Ok((Some(*id), None))
            }
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
        bytes_known: batch.bytes_known,
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
            (Piece::Known(len, _), Some(id)) => {
                out.items.push(Item::Data(*len, id));
                out.data_chunks += 1;
            }
            (Piece::Data(_) | Piece::Known(..), None) => {
                unreachable!("ids are computed for every data piece")
            }
        }
    }
    Ok(out)
}

impl Store {
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
        self.store_pieces_with(codec, index, None, None, produce, progress)
    }

    /// [`Store::store_pieces`], with the pending chunks shared with other writers when given,
    /// and the packs recorded for the parent whose chunks the pieces take unread, if any
    /// (checked as a whole instead of chunk by chunk when they are all there).
    pub(crate) fn store_pieces_with(
        &self,
        codec: &ChunkCodec,
        index: &Index,
        pending: Option<Pending>,
        parent_packs: Option<&[PackId]>,
        produce: impl FnOnce(&Sender<Result<ReadBatch>>) + Send,
        progress: &dyn Progress,
    ) -> Result<Stored> {
        let mut writer = match pending {
            Some(p) => ChunkWriter::sharing(self, codec, index, p)?,
            None => ChunkWriter::new(self, codec, index)?,
        };
        if let Some(packs) = parent_packs {
            writer.dedup().trust_parent(packs)?;
        }
        let mut meta = MetaWriter::new();
        let mut extents = ExtentEncoder::new();
        let mut meta_buf = Vec::new();
        let (mut bytes_read, mut bytes_hole, mut data_bytes) = (0u64, 0u64, 0u64);
        let mut bytes_known = 0u64;
        // Three stages overlap: the producer reads and cuts (its own thread); the encoder hashes
        // and compresses what neither the index nor the writer has, in parallel (the rayon pool,
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
            let pending = writer.pending();
            let dedup = writer.dedup();
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
                        bytes_known += batch.bytes_known;
                        for item in batch.items {
                            match item {
                                Item::Hole(len) => extents.hole(len),
                                Item::Data(len, id) => {
                                    extents.data(len, id);
                                    data_bytes += u64::from(len);
                                }
                            }
                        }
                        writer.put_compressed(batch.data_chunks, batch.records)?;
                        meta_buf.extend(extents.take());
                        meta.write(&mut meta_buf, false, &mut writer)?;
                        // The work is reading: holes were never counted in the total.
                        progress.advance(batch.bytes_read);
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
        meta.write(&mut meta_buf, true, &mut writer)?;
        let missing = writer.dedup().missing();
        let parent_checked = writer.dedup().parent_checked();
        let recorder = writer.recorder();
        let stats = writer.finish()?;
        let packs = recorder.map(|dedup| {
            let (packs, epoch) = dedup.snapshot_packs();
            SnapshotPacks { packs, epoch }
        });
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
            bytes_known,
            parent_checked,
            stats,
            packs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InitOptions;
    use crate::packs::reader::ChunkReader;
    use crate::{NoProgress, StoreError};
    use blocksnap_manifest::{Extent, ExtentDecoder};
    use std::path::Path;

    /// A new encrypted store in `dir`, its default key's codec and its index.
    fn new_store(dir: &Path) -> (Store, ChunkCodec, Index) {
        let opts = InitOptions {
            account: "alice".into(),
            identity: Some(dir.join("alice.key")),
            config_home: Some(dir.join("config")),
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
    fn a_parent_is_checked_by_its_recorded_packs_only_while_they_are_all_there() {
        let dir = tempfile::tempdir().unwrap();
        let (store, codec, index) = new_store(dir.path());
        // The parent: 300 chunks of 40 kB (its pack closes as the writer finishes).
        let chunks: Vec<Vec<u8>> = (0..300).map(|i| chunk(0, i, 40_000)).collect();
        let parent = store
            .store_pieces(
                &codec,
                &index,
                |tx| {
                    let mut batch = ReadBatch::default();
                    for c in &chunks {
                        batch.push_data(c);
                    }
                    let _ = tx.send(Ok(batch));
                },
                &NoProgress,
            )
            .unwrap();
        let record = parent.packs.as_ref().expect("one writer records its packs");
        assert!(!record.packs.is_empty());
        parent
            .packs
            .as_ref()
            .unwrap()
            .record(&index, SnapshotId(1), None);
        let recorded = index.snapshot_packs(SnapshotId(1)).unwrap().unwrap();

        // A child taking every chunk of the parent unread.
        let ids: Vec<ChunkId> = chunks.iter().map(|c| codec.chunk_id(c)).collect();
        let child = |packs: Option<&[PackId]>| {
            store.store_pieces_with(
                &codec,
                &index,
                None,
                packs,
                |tx| {
                    let mut batch = ReadBatch::default();
                    for id in &ids {
                        batch.pieces.push(Piece::Known(40_000, *id));
                        batch.volume_bytes += 40_000;
                        batch.bytes_known += 40_000;
                    }
                    let _ = tx.send(Ok(batch));
                },
                &NoProgress,
            )
        };
        let trusted = child(Some(&recorded)).unwrap();
        assert_eq!(trusted.parent_checked, 0);
        assert_eq!(trusted.bytes_known, 300 * 40_000);
        let looked_up = child(None).unwrap();
        assert_eq!(looked_up.parent_checked, 300);

        // One of the recorded packs deleted by hand: the record no longer serves, the chunks
        // are looked up, and those of the missing pack are not taken.
        std::fs::remove_file(store.describe_pack(&recorded[0])).unwrap();
        let err = child(Some(&recorded))
            .err()
            .expect("a chunk of the deleted pack is refused");
        assert!(err.to_string().contains("is not in the store"), "{err}");
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
