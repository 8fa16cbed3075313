//! Cutting a volume's bytes into holes and chunks, into batches whose buffers come from a
//! small pool: the reader's half of the snapshot pipeline, with no I/O of its own.

use std::ops::Range;

use blocksnap_chunker::{Chunker, ZERO_BLOCK, is_zero};
use blocksnap_manifest::ChunkId;
use crossbeam_channel::{Receiver, Sender};

use crate::error::Result;

/// Batches encoded at once. With one, the cores that finish their share of a batch wait at its
/// end for the slowest chunk, and for the pack stage to take it and the next batch to be handed
/// out; with more they go on with the next. Each holds a read buffer (about 2 MiB) and its
/// records until the pack stage takes it. Measured on a first snapshot (2 cores): one batch of
/// 4 MiB kept 1.70 cores busy; four of 2 MiB 1.78, at the same peak RSS; six 1.81, at 10 MiB
/// more.
pub(crate) const ENCODING: usize = 4;

/// Zero runs at least this long (whole aligned 4 KiB blocks) are holes even inside allocated
/// data, before chunking.
pub const ZERO_RUN_MIN: usize = 64 * 1024;

/// What the reader found, in volume order.
pub(crate) enum Piece {
    /// Bytes not stored: unallocated, or zeros.
    Hole(u64),
    /// One chunk: its bytes' place in the batch's buffer.
    Data(Range<usize>),
    /// A chunk the store has, taken without reading (from the parent snapshot, for a range a
    /// dirty bitmap says is unchanged): its length and id.
    Known(u32, ChunkId),
}

/// The bytes a batch's chunks are slices of. A reader's buffers come from a small pool and go
/// back to it when the batch is dropped, so that reading allocates (and the kernel zeroes) a
/// few buffers per snapshot, not one per chunk.
#[derive(Default)]
pub(crate) struct BatchBuf {
    data: Vec<u8>,
    home: Option<Sender<Vec<u8>>>,
}

impl Drop for BatchBuf {
    fn drop(&mut self) {
        if let Some(home) = &self.home {
            let _ = home.try_send(std::mem::take(&mut self.data));
        }
    }
}

/// A run of pieces.
#[derive(Default)]
pub(crate) struct ReadBatch {
    pub pieces: Vec<Piece>,
    /// The chunks' bytes.
    buf: BatchBuf,
    pub bytes_read: u64,
    pub bytes_hole: u64,
    pub volume_bytes: u64,
    /// Bytes of [`Piece::Known`] chunks.
    pub bytes_known: u64,
}

impl ReadBatch {
    /// Appends a hole, merged with a hole just before it.
    pub fn push_hole(&mut self, len: u64) {
        if len == 0 {
            return;
        }
        self.bytes_hole += len;
        self.volume_bytes += len;
        match self.pieces.last_mut() {
            Some(Piece::Hole(l)) => *l += len,
            _ => self.pieces.push(Piece::Hole(len)),
        }
    }

    /// Makes room for `bytes` more bytes of chunks in the batch's buffer.
    pub fn reserve(&mut self, bytes: usize) {
        self.buf.data.reserve(bytes);
    }

    /// Appends a chunk, copying its bytes into the batch's buffer (for producers other than
    /// the reader).
    pub fn push_data(&mut self, data: &[u8]) {
        let start = self.buf.data.len();
        self.buf.data.extend_from_slice(data);
        self.pieces.push(Piece::Data(start..start + data.len()));
        self.bytes_read += data.len() as u64;
        self.volume_bytes += data.len() as u64;
    }

    /// The bytes of a data piece's range.
    pub fn bytes(&self, range: &Range<usize>) -> &[u8] {
        &self.buf.data[range.clone()]
    }
}

/// The reader's batch window and read size for `chunker`. Reads of a quarter window, a batch
/// sent once it covers a window: batches stay close to the window's size, which bounds what
/// waits in the channels. 4 MiB windows made peak RSS of a first snapshot a third lower than
/// 8 MiB ones, at the same speed; 2 MiB windows with four batches encoding at once keep the
/// cores busier than 4 MiB ones with one or two, at the same memory (measured).
pub(crate) fn read_sizes(chunker: &Chunker) -> (usize, usize) {
    let window = (chunker.min_window() + (1 << 20))
        .max(2 << 20)
        .next_multiple_of(ZERO_BLOCK);
    (window, (window / 4).next_multiple_of(ZERO_BLOCK))
}

/// Turns the volume's bytes into holes and chunks as a function of content alone: whether a
/// range is unallocated or allocated zeros makes no difference, so the same disk always cuts
/// the same way. Runs of at least [`ZERO_RUN_MIN`] bytes of aligned zero blocks are holes and
/// end a data region; each data region is cut by the chunker; all-zero chunks are holes too.
///
/// The bytes are read straight into the batch's buffer and cut where they lie: a chunk is a
/// range of the buffer, not a copy. `buf[start..len]` is the current region's uncut data,
/// followed by the zeros seen since its last data (`pending_zero`) while their run is still
/// short; once the run is long enough to be a hole, the region is cut to its end and the zeros
/// are only counted. When the buffer is full the batch takes it, and the uncut rest (less than
/// a chunker window) moves to the next buffer.
pub(crate) struct Splitter<'a> {
    chunker: &'a Chunker,
    buf: Vec<u8>,
    /// Bytes of `buf` in use.
    len: usize,
    /// Where the current region's uncut data starts in `buf`, and its volume offset.
    start: usize,
    start_off: u64,
    /// Zero bytes seen since the last data, not yet classified.
    pending_zero: u64,
    /// `pending_zero` is at least [`ZERO_RUN_MIN`]: the region before it is cut, and the zeros
    /// are not in `buf`.
    in_hole: bool,
    batch: ReadBatch,
    /// Buffers that batches gave back, and where batches send them.
    pool: Receiver<Vec<u8>>,
    home: Sender<Vec<u8>>,
}

impl<'a> Splitter<'a> {
    pub fn new(chunker: &'a Chunker, capacity: usize) -> Self {
        // The reader's buffer, one in the channel, those being encoded.
        let (home, pool) = crossbeam_channel::bounded(ENCODING + 2);
        Splitter {
            chunker,
            buf: vec![0u8; capacity],
            len: 0,
            start: 0,
            start_off: 0,
            pending_zero: 0,
            in_hole: false,
            batch: ReadBatch::default(),
            pool,
            home,
        }
    }

    /// Free bytes at the end of the buffer.
    /// Bytes of volume the batch being filled covers.
    pub(crate) fn batch_bytes(&self) -> u64 {
        self.batch.volume_bytes
    }

    /// Pieces in the batch being filled.
    pub(crate) fn pieces(&self) -> usize {
        self.batch.pieces.len()
    }

    pub(crate) fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    /// The batch so far, with the buffer its chunks are in; the uncut rest of the region
    /// moves to a fresh buffer.
    pub(crate) fn take_batch(&mut self) -> ReadBatch {
        let capacity = self.buf.len();
        let mut next = self.pool.try_recv().unwrap_or_else(|_| vec![0u8; capacity]);
        let rest = self.len - self.start;
        next[..rest].copy_from_slice(&self.buf[self.start..self.len]);
        let full = std::mem::replace(&mut self.buf, next);
        self.len = rest;
        self.start = 0;
        let mut batch = std::mem::take(&mut self.batch);
        batch.buf = BatchBuf {
            data: full,
            home: Some(self.home.clone()),
        };
        batch
    }

    /// `len` bytes of zeros not read from the disk. They must cover whole aligned blocks (or
    /// end at the volume's end), as the reader guarantees. While their run may still turn out
    /// short, they are written into the buffer (at most [`ZERO_RUN_MIN`] bytes; the caller
    /// leaves that much room).
    pub(crate) fn zeros(&mut self, len: u64) {
        if len == 0 {
            return;
        }
        if !self.in_hole && self.pending_zero + len >= ZERO_RUN_MIN as u64 {
            self.enter_hole(self.len - self.pending_zero as usize);
        }
        if !self.in_hole {
            let n = len as usize;
            self.buf[self.len..self.len + n].fill(0);
            self.len += n;
        }
        self.pending_zero += len;
    }

    /// Reads `n` bytes at volume offset `off` into the buffer with `fill` (the caller leaves
    /// room), then splits them into zero and non-zero block runs.
    pub(crate) fn read(
        &mut self,
        n: usize,
        off: u64,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let base = self.len;
        fill(&mut self.buf[base..base + n])?;
        self.batch.bytes_read += n as u64;
        let mut p = 0usize;
        while p < n {
            let to_boundary = ZERO_BLOCK - ((off + p as u64) % ZERO_BLOCK as u64) as usize;
            let end = (p + to_boundary).min(n);
            let block = end - p;
            if is_zero(&self.buf[base + p..base + end]) {
                self.pending_zero += block as u64;
                if !self.in_hole && self.pending_zero >= ZERO_RUN_MIN as u64 {
                    // The run started `pending_zero` bytes before this block's end.
                    self.enter_hole(base + end - self.pending_zero as usize);
                }
            } else if self.in_hole {
                // Data after a hole: a new region starts at this block.
                let hole = std::mem::take(&mut self.pending_zero);
                self.batch.push_hole(hole);
                self.in_hole = false;
                self.start = base + p;
                self.start_off = off + p as u64;
            } else {
                // Zeros before it, if any, were a short run: data, and already in place.
                self.pending_zero = 0;
            }
            p = end;
        }
        self.len = if self.in_hole { self.start } else { base + n };
        let data_end = self.len - self.pending_zero_in_buf();
        if data_end - self.start >= self.chunker.min_window() {
            self.cut(data_end, false);
        }
        Ok(())
    }

    /// Zero bytes at the end of the buffer that wait for their run to be classified.
    fn pending_zero_in_buf(&self) -> usize {
        if self.in_hole {
            0
        } else {
            self.pending_zero as usize
        }
    }

    /// A zero run long enough to be a hole starts at `data_end` in the buffer: the region ends
    /// there.
    fn enter_hole(&mut self, data_end: usize) {
        self.cut(data_end, true);
        self.start = data_end;
        self.len = data_end;
        self.in_hole = true;
    }

    /// Cuts the region's data, `buf[start..data_end]`: all of it when `last`, else all but the
    /// final, uncertain chunk.
    fn cut(&mut self, data_end: usize, last: bool) {
        if data_end <= self.start {
            return;
        }
        let data = &self.buf[self.start..data_end];
        let cuts = self.chunker.cut(data, self.start_off, last);
        let mut p = self.start;
        for len in cuts {
            if is_zero(&self.buf[p..p + len]) {
                self.batch.push_hole(len as u64);
            } else {
                self.batch.volume_bytes += len as u64;
                self.batch.pieces.push(Piece::Data(p..p + len));
            }
            p += len;
        }
        self.start_off += (p - self.start) as u64;
        self.start = p;
    }

    /// Ends the current region: the zeros after it classified, its data cut to its end.
    fn end_region(&mut self) {
        if self.in_hole {
            let hole = std::mem::take(&mut self.pending_zero);
            self.batch.push_hole(hole);
            self.in_hole = false;
        } else {
            self.pending_zero = 0;
            self.cut(self.len, true);
        }
    }

    /// A piece of `len` bytes at volume offset `at` taken as it is, not read: a chunk the
    /// store has (`Some`), or a hole. The region before it ends there; the next read starts
    /// a new one at `at + len`. Its length must fit a chunk when it is one.
    pub(crate) fn known(&mut self, at: u64, len: u64, chunk: Option<ChunkId>) {
        self.end_region();
        match chunk {
            None => self.batch.push_hole(len),
            Some(id) => {
                self.batch.volume_bytes += len;
                self.batch.bytes_known += len;
                self.batch.pieces.push(Piece::Known(
                    u32::try_from(len).expect("a chunk's length"),
                    id,
                ));
            }
        }
        self.start_off = at + len;
    }

    /// The last batch: the zeros at the volume's end classified, the last region cut.
    pub(crate) fn finish(mut self) -> ReadBatch {
        if self.in_hole {
            let hole = std::mem::take(&mut self.pending_zero);
            self.batch.push_hole(hole);
        } else {
            self.pending_zero = 0;
            self.cut(self.len, true);
        }
        let mut batch = self.batch;
        batch.buf = BatchBuf {
            data: self.buf,
            home: None,
        };
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blocksnap_chunker::ChunkerParams;

    /// Feeds `feed` (holes and read bytes) the way the reader does, in reads of at most
    /// `read_size` bytes into buffers of `capacity`; returns the pieces of every batch and the
    /// volume they spell out.
    fn split(
        feed: &[(bool, Vec<u8>)],
        chunker: &Chunker,
        capacity: usize,
        read_size: usize,
    ) -> (Vec<(bool, u64)>, Vec<u8>) {
        let mut s = Splitter::new(chunker, capacity);
        let mut batches = Vec::new();
        let room = read_size + ZERO_RUN_MIN;
        let mut off = 0u64;
        for (hole, bytes) in feed {
            if s.room() < room {
                batches.push(s.take_batch());
            }
            if *hole {
                s.zeros(bytes.len() as u64);
            } else {
                for part in bytes.chunks(read_size) {
                    if s.room() < room {
                        batches.push(s.take_batch());
                    }
                    s.read(part.len(), off, |b| {
                        b.copy_from_slice(part);
                        Ok(())
                    })
                    .unwrap();
                    off += part.len() as u64;
                }
                continue;
            }
            off += bytes.len() as u64;
        }
        batches.push(s.finish());
        let mut pieces = Vec::new();
        let mut volume = Vec::new();
        for b in &batches {
            for p in &b.pieces {
                match p {
                    Piece::Hole(l) => {
                        volume.resize(volume.len() + *l as usize, 0);
                        match pieces.last_mut() {
                            Some((true, n)) => *n += l,
                            _ => pieces.push((true, *l)),
                        }
                    }
                    Piece::Data(r) => {
                        volume.extend_from_slice(b.bytes(r));
                        pieces.push((false, r.len() as u64));
                    }
                    Piece::Known(..) => panic!("the reader takes no chunk unread"),
                }
            }
        }
        (pieces, volume)
    }

    fn pieces(feed: &[(bool, Vec<u8>)], chunker: &Chunker) -> Vec<(bool, u64)> {
        split(feed, chunker, 64 << 20, 1 << 20).0
    }

    fn noise(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    #[test]
    fn holes_and_zero_bytes_split_alike() {
        let chunker = Chunker::new(ChunkerParams::cdc(4096)).unwrap();
        let (a, b) = (noise(49_152, 1), noise(70_000, 2));
        let short_gap = vec![0u8; 8192];
        let long_gap = vec![0u8; 128 * 1024];
        for gap in [short_gap, long_gap] {
            let as_hole = pieces(
                &[(false, a.clone()), (true, gap.clone()), (false, b.clone())],
                &chunker,
            );
            let as_zeros = pieces(
                &[(false, a.clone()), (false, gap.clone()), (false, b.clone())],
                &chunker,
            );
            let whole: Vec<u8> = [a.clone(), gap.clone(), b.clone()].concat();
            let in_one = pieces(&[(false, whole)], &chunker);
            assert_eq!(as_hole, as_zeros);
            assert_eq!(as_hole, in_one);
            let total: u64 = as_hole.iter().map(|p| p.1).sum();
            assert_eq!(total, (a.len() + gap.len() + b.len()) as u64);
        }
    }

    #[test]
    fn long_zero_runs_are_holes_short_ones_data() {
        let chunker = Chunker::new(ChunkerParams::fixed(1 << 20)).unwrap();
        let a = noise(4096, 3);
        let got = pieces(
            &[
                (false, a.clone()),
                (true, vec![0; ZERO_RUN_MIN]),
                (false, a.clone()),
            ],
            &chunker,
        );
        assert_eq!(
            got,
            vec![(false, 4096), (true, ZERO_RUN_MIN as u64), (false, 4096)]
        );
        let got = pieces(
            &[(false, a.clone()), (true, vec![0; 8192]), (false, a)],
            &chunker,
        );
        assert_eq!(got, vec![(false, 4096 + 8192 + 4096)]);
    }

    #[test]
    fn small_buffers_and_reads_cut_as_one_big_read_does() {
        // Regions of data, written zeros and holes of assorted lengths (whole 4 KiB blocks,
        // as the reader gives them), split with buffers and reads of many sizes: the same
        // pieces every time, and the pieces spell out the volume.
        let chunker = Chunker::new(ChunkerParams::cdc(4096)).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..12 {
            let mut feed = Vec::new();
            let mut volume = Vec::new();
            for i in 0..24 {
                let blocks = 1 + (next() % 40) as usize;
                let len = blocks * ZERO_BLOCK;
                let (hole, bytes) = match next() % 4 {
                    0 => (true, vec![0u8; len]),
                    1 => (false, vec![0u8; len]),
                    _ => (false, noise(len, (round * 31 + i) as u8)),
                };
                volume.extend_from_slice(&bytes);
                feed.push((hole, bytes));
            }
            let (whole, spelled) = split(&feed, &chunker, 64 << 20, 64 << 20);
            assert_eq!(spelled, volume, "round {round}: one big read");
            for (capacity, read_size) in [(4 * 16384 + 3 * ZERO_RUN_MIN, 8192), (300_000, 65536)] {
                let (got, spelled) = split(&feed, &chunker, capacity, read_size);
                assert_eq!(spelled, volume, "round {round}: {capacity}/{read_size}");
                assert_eq!(got, whole, "round {round}: {capacity}/{read_size}");
            }
        }
    }
}
