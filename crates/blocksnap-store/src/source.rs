//! Reading a volume: only its allocated data (`SEEK_DATA`/`SEEK_HOLE`), in large positioned
//! reads, cut into chunks on a reader thread. Zero runs and all-zero chunks become holes.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use blocksnap_chunker::{Chunker, ZERO_BLOCK, is_zero};
use crossbeam_channel::Sender;

use crate::error::{Result, StoreError};

/// Zero runs at least this long (whole aligned 4 KiB blocks) are holes even inside allocated
/// data, before chunking.
pub const ZERO_RUN_MIN: usize = 64 * 1024;

/// What the reader found, in volume order.
pub(crate) enum Piece {
    /// Bytes not stored: unallocated, or zeros.
    Hole(u64),
    /// One chunk's bytes.
    Data(Vec<u8>),
}

/// A run of pieces.
#[derive(Default)]
pub(crate) struct ReadBatch {
    pub pieces: Vec<Piece>,
    pub bytes_read: u64,
    pub bytes_hole: u64,
    pub volume_bytes: u64,
}

impl ReadBatch {
    fn hole(&mut self, len: u64) {
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
}

/// An open volume.
pub(crate) struct Source {
    file: File,
    path: PathBuf,
    /// The volume's size.
    pub size: u64,
    sparse_aware: bool,
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                StoreError::Usage(format!("no such disk image or volume: {}", path.display()))
            }
            _ => StoreError::Io {
                what: "cannot open",
                path: path.into(),
                source: e,
            },
        })?;
        let meta = file
            .metadata()
            .map_err(StoreError::io("cannot stat", path))?;
        let ft = meta.file_type();
        let size = if ft.is_block_device() {
            use std::io::Seek;
            (&file)
                .seek(std::io::SeekFrom::End(0))
                .map_err(StoreError::io("cannot size block device", path))?
        } else if ft.is_file() {
            meta.len()
        } else {
            return Err(StoreError::Usage(format!(
                "{} is not a regular file or a block device",
                path.display()
            )));
        };
        Ok(Source {
            file,
            path: path.into(),
            size,
            sparse_aware: ft.is_file(),
        })
    }

    /// The next allocated range at or after `pos`, or none.
    fn next_data(&self, pos: u64) -> Result<Option<(u64, u64)>> {
        if pos >= self.size {
            return Ok(None);
        }
        if !self.sparse_aware {
            return Ok(Some((pos, self.size)));
        }
        use rustix::fs::{SeekFrom, seek};
        let start = match seek(&self.file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => return Ok(None),
            // The filesystem does not know SEEK_DATA: everything is data.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                return Ok(Some((pos, self.size)));
            }
            Err(e) => {
                return Err(StoreError::Io {
                    what: "cannot seek in",
                    path: self.path.clone(),
                    source: e.into(),
                });
            }
        };
        let end = match seek(&self.file, SeekFrom::Hole(start)) {
            Ok(e) => e,
            Err(_) => self.size,
        };
        Ok(Some((start.min(self.size), end.min(self.size))))
    }

    /// Reads the whole volume and sends batches of pieces. Stops when the receiver is gone (the
    /// consumer failed) or on the first error, which it sends.
    pub fn read_into(&self, chunker: &Chunker, tx: &Sender<Result<ReadBatch>>) {
        if let Err(e) = self.read_all(chunker, tx) {
            let _ = tx.send(Err(e));
        }
    }

    fn read_all(&self, chunker: &Chunker, tx: &Sender<Result<ReadBatch>>) -> Result<()> {
        let window = (chunker.min_window() + (1 << 20))
            .max(8 << 20)
            .next_multiple_of(ZERO_BLOCK);
        // Reads of a quarter window, a batch sent once it covers a window: batches stay close to
        // the window's size, which bounds what waits in the channels.
        let read_size = (window / 4).next_multiple_of(ZERO_BLOCK);
        let mut split = Splitter::new(chunker);
        let mut buf = vec![0u8; read_size];
        let mut pos = 0u64;
        while pos < self.size {
            let Some((start, end)) = self.next_data(pos)? else {
                split.zeros(self.size - pos);
                break;
            };
            // Read from a block boundary: the bytes before SEEK_DATA's answer are zeros anyway.
            // Likewise to the end of a block: the Splitter is told of zeros only in whole blocks.
            let start = (start - start % ZERO_BLOCK as u64).max(pos);
            let end = end.next_multiple_of(ZERO_BLOCK as u64).min(self.size);
            split.zeros(start - pos);
            let mut cur = start;
            while cur < end {
                let n = (end - cur).min(read_size as u64) as usize;
                self.file
                    .read_exact_at(&mut buf[..n], cur)
                    .map_err(|e| StoreError::Io {
                        what: "cannot read (did the image shrink while being read?)",
                        path: self.path.clone(),
                        source: e,
                    })?;
                split.batch.bytes_read += n as u64;
                split.bytes(&buf[..n], cur);
                cur += n as u64;
                if split.batch.volume_bytes >= window as u64
                    && tx.send(Ok(std::mem::take(&mut split.batch))).is_err()
                {
                    return Ok(());
                }
            }
            pos = end.max(pos + 1).min(self.size);
        }
        split.finish(self.size);
        let _ = tx.send(Ok(split.batch));
        Ok(())
    }
}

/// Turns the volume's bytes into holes and chunks as a function of content alone: whether a
/// range is unallocated or allocated zeros makes no difference, so the same disk always cuts
/// the same way. Runs of at least [`ZERO_RUN_MIN`] bytes of aligned zero blocks are holes and
/// end a data region; each data region is cut by the chunker; all-zero chunks are holes too.
struct Splitter<'a> {
    chunker: &'a Chunker,
    /// Zero bytes seen since the last data, not yet classified.
    pending_zero: u64,
    /// Uncut data of the current region, starting at volume offset `carry_off`.
    carry: Vec<u8>,
    carry_off: u64,
    batch: ReadBatch,
}

impl<'a> Splitter<'a> {
    fn new(chunker: &'a Chunker) -> Self {
        Splitter {
            chunker,
            pending_zero: 0,
            carry: Vec::new(),
            carry_off: 0,
            batch: ReadBatch::default(),
        }
    }

    /// `len` bytes of zeros not read from the disk. They must cover whole aligned blocks (or
    /// end at the volume's end), as the reader guarantees.
    fn zeros(&mut self, len: u64) {
        self.pending_zero += len;
    }

    /// Bytes read at volume offset `off`: split into zero and non-zero block runs.
    fn bytes(&mut self, buf: &[u8], off: u64) {
        let mut p = 0usize;
        let mut data_start: Option<usize> = None;
        while p < buf.len() {
            let to_boundary = ZERO_BLOCK - ((off + p as u64) % ZERO_BLOCK as u64) as usize;
            let end = (p + to_boundary).min(buf.len());
            let zero = is_zero(&buf[p..end]);
            match (zero, data_start) {
                (true, Some(s)) => {
                    self.data(&buf[s..p], off + s as u64);
                    data_start = None;
                    self.zeros((end - p) as u64);
                }
                (true, None) => self.zeros((end - p) as u64),
                (false, None) => data_start = Some(p),
                (false, Some(_)) => {}
            }
            p = end;
        }
        if let Some(s) = data_start {
            self.data(&buf[s..], off + s as u64);
        }
    }

    fn data(&mut self, bytes: &[u8], off: u64) {
        self.settle_zeros(off);
        if self.carry.is_empty() {
            self.carry_off = off;
        }
        debug_assert_eq!(self.carry_off + self.carry.len() as u64, off);
        self.carry.extend_from_slice(bytes);
        if self.carry.len() >= self.chunker.min_window() {
            self.cut(false);
        }
    }

    /// Classifies the zeros that end at volume offset `zeros_end`: a long run ends the data
    /// region and is a hole; a short one is part of the data.
    fn settle_zeros(&mut self, zeros_end: u64) {
        if self.pending_zero == 0 {
            return;
        }
        if self.pending_zero >= ZERO_RUN_MIN as u64 {
            self.cut(true);
            self.batch.hole(self.pending_zero);
        } else {
            if self.carry.is_empty() {
                self.carry_off = zeros_end - self.pending_zero;
            }
            let n = self.carry.len() + self.pending_zero as usize;
            self.carry.resize(n, 0);
        }
        self.pending_zero = 0;
    }

    fn cut(&mut self, last: bool) {
        if self.carry.is_empty() {
            return;
        }
        let cuts = self.chunker.cut(&self.carry, self.carry_off, last);
        let mut p = 0;
        for len in cuts {
            let chunk = &self.carry[p..p + len];
            if is_zero(chunk) {
                self.batch.hole(len as u64);
            } else {
                self.batch.volume_bytes += len as u64;
                self.batch.pieces.push(Piece::Data(chunk.to_vec()));
            }
            p += len;
        }
        self.carry.drain(..p);
        self.carry_off += p as u64;
    }

    fn finish(&mut self, size: u64) {
        self.settle_zeros(size);
        self.cut(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blocksnap_chunker::ChunkerParams;

    fn pieces(feed: &[(bool, Vec<u8>)], chunker: &Chunker) -> Vec<(bool, u64)> {
        let mut s = Splitter::new(chunker);
        let mut off = 0u64;
        for (hole, bytes) in feed {
            if *hole {
                s.zeros(bytes.len() as u64);
            } else {
                s.bytes(bytes, off);
            }
            off += bytes.len() as u64;
        }
        s.finish(off);
        s.batch
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Hole(l) => (true, *l),
                Piece::Data(d) => (false, d.len() as u64),
            })
            .collect()
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
}
