//! The extent list: a snapshot's volume as an ordered run of data chunks and holes.
//!
//! Binary, little-endian, streamed (a 1 TiB disk has millions of extents, so neither the encoder
//! nor the decoder ever holds the whole list):
//!
//! ```text
//! header  8 bytes   "BSXT" 0x01 0x00 0x00 0x00      magic and version 1
//! data    37 bytes  0x01, length u32, chunk id [32]  length in 1..=MAX_DATA_EXTENT
//! hole    9 bytes   0x02, length u64                 length >= 1 (unallocated or all zeros)
//! ```
//!
//! Extents are contiguous from offset 0; their lengths add up to the snapshot's size.

use crate::error::ExtentError;
use crate::id::ChunkId;

/// The stream's header.
pub const EXTENT_MAGIC: [u8; 8] = *b"BSXT\x01\0\0\0";
/// The largest data extent (one chunk).
pub const MAX_DATA_EXTENT: u32 = 16 << 20;
const TAG_DATA: u8 = 1;
const TAG_HOLE: u8 = 2;
const DATA_LEN: usize = 37;
const HOLE_LEN: usize = 9;

/// One extent of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// `len` bytes stored as the chunk `id`.
    Data {
        /// Length in bytes.
        len: u32,
        /// The chunk.
        id: ChunkId,
    },
    /// `len` bytes of zeros, not stored.
    Hole {
        /// Length in bytes.
        len: u64,
    },
}

impl Extent {
    /// The extent's length in bytes.
    pub fn len(&self) -> u64 {
        match *self {
            Extent::Data { len, .. } => u64::from(len),
            Extent::Hole { len } => len,
        }
    }
    /// True for an empty extent (never produced by the encoder).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends extents to a byte stream, merging adjacent holes.
#[derive(Debug)]
pub struct ExtentEncoder {
    out: Vec<u8>,
    pending_hole: u64,
    count: u64,
    total: u64,
}

impl Default for ExtentEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ExtentEncoder {
    /// A new stream, starting with the header.
    pub fn new() -> Self {
        ExtentEncoder {
            out: EXTENT_MAGIC.to_vec(),
            pending_hole: 0,
            count: 0,
            total: 0,
        }
    }

    /// Adds a data extent. Panics if `len` is 0 or over [`MAX_DATA_EXTENT`] (a caller bug).
    pub fn data(&mut self, len: u32, id: ChunkId) {
        assert!(
            len > 0 && len <= MAX_DATA_EXTENT,
            "data extent length {len}"
        );
        self.flush_hole();
        self.out.push(TAG_DATA);
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(id.as_bytes());
        self.count += 1;
        self.total += u64::from(len);
    }

    /// Adds a hole; adjacent holes become one record.
    pub fn hole(&mut self, len: u64) {
        self.pending_hole += len;
    }

    fn flush_hole(&mut self) {
        if self.pending_hole > 0 {
            self.out.push(TAG_HOLE);
            self.out.extend_from_slice(&self.pending_hole.to_le_bytes());
            self.count += 1;
            self.total += self.pending_hole;
            self.pending_hole = 0;
        }
    }

    /// Takes the bytes encoded so far (the caller stores them), leaving the encoder empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Bytes waiting to be taken.
    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    /// Ends the stream and returns the last bytes, the record count and the total length.
    pub fn finish(mut self) -> (Vec<u8>, u64, u64) {
        self.flush_hole();
        (self.out, self.count, self.total)
    }
}

/// Parses an extent stream fed in pieces of any size. Never panics on bad input.
#[derive(Debug)]
pub struct ExtentDecoder {
    buf: Vec<u8>,
    header_seen: bool,
    consumed: u64,
    offset: u64,
    size: u64,
    count: u64,
}

impl ExtentDecoder {
    /// A decoder for a volume of `size` bytes.
    pub fn new(size: u64) -> Self {
        ExtentDecoder {
            buf: Vec::new(),
            header_seen: false,
            consumed: 0,
            offset: 0,
            size,
            count: 0,
        }
    }

    /// Feeds bytes; calls `f(offset, extent)` for every complete record, in order.
    pub fn feed<E: From<ExtentError>>(
        &mut self,
        bytes: &[u8],
        mut f: impl FnMut(u64, Extent) -> Result<(), E>,
    ) -> Result<(), E> {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0usize;
        if !self.header_seen {
            if self.buf.len() < EXTENT_MAGIC.len() {
                return Ok(());
            }
            if self.buf[..8] != EXTENT_MAGIC {
                return Err(ExtentError::BadHeader.into());
            }
            self.header_seen = true;
            pos = 8;
        }
        loop {
            let rest = &self.buf[pos..];
            let Some(&tag) = rest.first() else { break };
            let at = self.consumed + pos as u64;
            let extent = match tag {
                TAG_DATA if rest.len() >= DATA_LEN => {
                    let len = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes"));
                    if len == 0 || len > MAX_DATA_EXTENT {
                        return Err(ExtentError::BadLength {
                            len: len.into(),
                            at,
                        }
                        .into());
                    }
                    let id = ChunkId(rest[5..37].try_into().expect("32 bytes"));
                    pos += DATA_LEN;
                    Extent::Data { len, id }
                }
                TAG_HOLE if rest.len() >= HOLE_LEN => {
                    let len = u64::from_le_bytes(rest[1..9].try_into().expect("8 bytes"));
                    if len == 0 {
                        return Err(ExtentError::BadLength { len, at }.into());
                    }
                    pos += HOLE_LEN;
                    Extent::Hole { len }
                }
                TAG_DATA | TAG_HOLE => break,
                tag => return Err(ExtentError::BadTag { tag, at }.into()),
            };
            let end = self
                .offset
                .checked_add(extent.len())
                .filter(|&e| e <= self.size);
            let Some(end) = end else {
                return Err(ExtentError::Inconsistent(format!(
                    "extent at volume offset {} of length {} runs past the volume size {}",
                    self.offset,
                    extent.len(),
                    self.size
                ))
                .into());
            };
            let offset = self.offset;
            self.offset = end;
            self.count += 1;
            f(offset, extent)?;
        }
        self.buf.drain(..pos);
        self.consumed += pos as u64;
        Ok(())
    }

    /// Checks that the stream ended cleanly and covered the whole volume; returns the record count.
    pub fn finish(self) -> Result<u64, ExtentError> {
        if !self.header_seen || !self.buf.is_empty() {
            return Err(ExtentError::Inconsistent(
                "the stream ends inside a record".into(),
            ));
        }
        if self.offset != self.size {
            return Err(ExtentError::Inconsistent(format!(
                "extents cover {} bytes but the volume has {}",
                self.offset, self.size
            )));
        }
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8], size: u64, piece: usize) -> Result<Vec<(u64, Extent)>, ExtentError> {
        let mut d = ExtentDecoder::new(size);
        let mut out = Vec::new();
        for p in bytes.chunks(piece.max(1)) {
            d.feed(p, |o, e| {
                out.push((o, e));
                Ok::<_, ExtentError>(())
            })?;
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn holes_merge_and_offsets_add_up() {
        let mut e = ExtentEncoder::new();
        e.hole(10);
        e.hole(5);
        e.data(100, ChunkId([1; 32]));
        e.hole(7);
        let (bytes, count, total) = e.finish();
        assert_eq!((count, total), (3, 122));
        let got = decode(&bytes, 122, 5).unwrap();
        assert_eq!(
            got[1],
            (
                15,
                Extent::Data {
                    len: 100,
                    id: ChunkId([1; 32])
                }
            )
        );
        assert_eq!(got[2], (115, Extent::Hole { len: 7 }));
    }

    #[test]
    fn bad_streams_are_errors() {
        let mut e = ExtentEncoder::new();
        e.data(100, ChunkId([1; 32]));
        let (bytes, _, _) = e.finish();
        assert!(matches!(
            decode(&bytes, 99, 64),
            Err(ExtentError::Inconsistent(_))
        ));
        assert!(matches!(
            decode(&bytes, 101, 64),
            Err(ExtentError::Inconsistent(_))
        ));
        assert!(matches!(
            decode(&bytes[..20], 100, 64),
            Err(ExtentError::Inconsistent(_))
        ));
        assert!(matches!(
            decode(b"XXXXXXXXX", 100, 64),
            Err(ExtentError::BadHeader)
        ));
        let mut bad = bytes.clone();
        bad[8] = 9;
        assert!(matches!(
            decode(&bad, 100, 64),
            Err(ExtentError::BadTag { tag: 9, at: 8 })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(items in proptest::collection::vec((any::<bool>(), 1u32..1_000_000, any::<u8>()), 0..200), piece in 1usize..100) {
            let mut e = ExtentEncoder::new();
            let mut expect: Vec<Extent> = Vec::new();
            for (data, len, b) in &items {
                if *data {
                    e.data(*len, ChunkId([*b; 32]));
                    expect.push(Extent::Data { len: *len, id: ChunkId([*b; 32]) });
                } else {
                    e.hole(u64::from(*len));
                    match expect.last_mut() {
                        Some(Extent::Hole { len: l }) => *l += u64::from(*len),
                        _ => expect.push(Extent::Hole { len: u64::from(*len) }),
                    }
                }
            }
            let (bytes, count, total) = e.finish();
            prop_assert_eq!(count as usize, expect.len());
            let got: Vec<Extent> = decode(&bytes, total, piece).unwrap().into_iter().map(|(_, e)| e).collect();
            prop_assert_eq!(got, expect);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), size in any::<u64>()) {
            let _ = decode(&bytes, size, 7);
        }
    }
}
