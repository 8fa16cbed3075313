//! Reading a volume: only its allocated data (`SEEK_DATA`/`SEEK_HOLE`), in large positioned
//! reads, cut into chunks on a reader thread. Zero runs and all-zero chunks become holes.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use blocksnap_chunker::{Chunker, ZERO_BLOCK, is_zero, zero_runs};
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

    /// Reads the whole volume and sends batches of pieces of about `window` bytes. Stops when
    /// the receiver is gone (the consumer failed) or on the first error, which it sends.
    pub fn read_into(&self, chunker: &Chunker, tx: &Sender<Result<ReadBatch>>) {
        if let Err(e) = self.read_all(chunker, tx) {
            let _ = tx.send(Err(e));
        }
    }

    fn read_all(&self, chunker: &Chunker, tx: &Sender<Result<ReadBatch>>) -> Result<()> {
        let window = (chunker.min_window() + (1 << 20))
            .max(16 << 20)
            .next_multiple_of(ZERO_BLOCK);
        let mut batch = ReadBatch::default();
        let mut pos = 0u64;
        let mut buf: Vec<u8> = Vec::with_capacity(window);
        while let Some((start, end)) = self.next_data(pos)? {
            if start < pos {
                break;
            }
            batch.hole(start - pos);
            buf.clear();
            let mut buf_off = start;
            let mut cur = start;
            loop {
                let want = ((window - buf.len()) as u64).min(end - cur) as usize;
                let old = buf.len();
                buf.resize(old + want, 0);
                self.file
                    .read_exact_at(&mut buf[old..], cur)
                    .map_err(|e| StoreError::Io {
                        what: "cannot read (did the image shrink while being read?)",
                        path: self.path.clone(),
                        source: e,
                    })?;
                cur += want as u64;
                batch.bytes_read += want as u64;
                let seg_done = cur == end;
                let consumed = split_pieces(chunker, &buf, buf_off, seg_done, &mut batch);
                buf.drain(..consumed);
                buf_off += consumed as u64;
                if batch.volume_bytes >= window as u64
                    && tx.send(Ok(std::mem::take(&mut batch))).is_err()
                {
                    return Ok(());
                }
                if seg_done {
                    debug_assert!(buf.is_empty());
                    break;
                }
            }
            pos = end;
        }
        batch.hole(self.size.saturating_sub(pos));
        let _ = tx.send(Ok(batch));
        Ok(())
    }
}

/// Cuts `buf` (at volume offset `off`) into holes and chunks; returns how many bytes were
/// consumed. Unless `done`, the uncertain tail is left for the next call.
fn split_pieces(
    chunker: &Chunker,
    buf: &[u8],
    off: u64,
    done: bool,
    batch: &mut ReadBatch,
) -> usize {
    let runs = zero_runs(buf, off, ZERO_RUN_MIN);
    let mut p = 0usize;
    for (s, l) in runs.into_iter().chain(std::iter::once((buf.len(), 0))) {
        if s > p {
            let last = s < buf.len() || done;
            let cuts = chunker.cut(&buf[p..s], off + p as u64, last);
            for len in cuts {
                let chunk = &buf[p..p + len];
                if is_zero(chunk) {
                    batch.hole(len as u64);
                } else {
                    batch.volume_bytes += len as u64;
                    batch.pieces.push(Piece::Data(chunk.to_vec()));
                }
                p += len;
            }
            if !last {
                return p;
            }
        }
        batch.hole(l as u64);
        p = s + l;
    }
    buf.len()
}
