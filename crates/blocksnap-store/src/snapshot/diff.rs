//! `snapshot diff`: the byte ranges whose content differs between two snapshots.
//!
//! Both extent lists are walked side by side, a metadata chunk at a time (memory does not grow
//! with the disk). Where both sides are holes, or the same chunk id under the same key, nothing
//! is read: those bytes are equal. Everywhere else the data is read, verified and compared
//! byte for byte, so the ranges are exact: a chunk that moved, a chunk rewritten with the same
//! bytes, or two snapshots under different keys (whose chunk ids differ for equal content)
//! report only the bytes that really differ.

use std::collections::VecDeque;
use std::sync::Arc;

use blocksnap_manifest::{ChunkId, Extent, ExtentDecoder, SnapshotDoc, SnapshotId};
use blocksnap_pack::ChunkCodec;
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::packs::reader::ChunkReader;
use crate::progress::Progress;
use crate::repo::Store;

/// What `snapshot diff` found (the `--json` output of CLI.md).
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    /// The first snapshot.
    pub a: SnapshotId,
    /// The second snapshot.
    pub b: SnapshotId,
    /// The second snapshot's size; bytes past the first's end count as changed.
    pub size: u64,
    /// `[offset, length]` of every range whose bytes differ, merged and sorted.
    pub changed: Vec<[u64; 2]>,
    /// Data bytes read to compare (chunks whose ids alone could not decide).
    pub bytes_read: u64,
}

/// A pull cursor over a snapshot's extents, decoding one metadata chunk at a time.
struct Cursor<'r, 's> {
    reader: &'r ChunkReader<'s>,
    doc: &'r SnapshotDoc,
    meta: usize,
    decoder: Option<ExtentDecoder>,
    queue: VecDeque<(u64, Extent)>,
    /// The current extent and how much of it was consumed.
    current: Option<(u64, Extent, u64)>,
    /// The current data chunk's bytes, once read.
    data: Option<(ChunkId, Arc<Vec<u8>>)>,
}

impl<'r, 's> Cursor<'r, 's> {
    fn new(reader: &'r ChunkReader<'s>, doc: &'r SnapshotDoc) -> Self {
        Cursor {
            reader,
            doc,
            meta: 0,
            decoder: Some(ExtentDecoder::new(doc.size)),
            queue: VecDeque::new(),
            current: None,
            data: None,
        }
    }

    /// The extent at the cursor, with the offset into it; none past the end.
    fn peek(&mut self) -> Result<Option<(u64, Extent, u64)>> {
        if self.current.is_none() {
            while self.queue.is_empty() && self.meta < self.doc.extents.chunks.len() {
                let bytes = self.reader.read(&self.doc.extents.chunks[self.meta])?;
                self.meta += 1;
                let queue = &mut self.queue;
                self.decoder
                    .as_mut()
                    .expect("decoding")
                    .feed(&bytes, |o, e| {
                        queue.push_back((o, e));
                        Ok::<_, StoreError>(())
                    })?;
            }
            match self.queue.pop_front() {
                Some((o, e)) => self.current = Some((o, e, 0)),
                None => {
                    if let Some(d) = self.decoder.take() {
                        let count = d.finish()?;
                        if count != self.doc.extents.count {
                            return Err(StoreError::Damaged(format!(
                                "snapshot {}: the extent list has {count} records, the document says {}",
                                self.doc.id, self.doc.extents.count
                            )));
                        }
                    }
                    return Ok(None);
                }
            }
        }
        Ok(self.current)
    }

    fn advance(&mut self, n: u64) {
        if let Some((o, e, used)) = self.current {
            let len = extent_len(&e);
            if used + n >= len {
                self.current = None;
            } else {
                self.current = Some((o, e, used + n));
            }
        }
    }

    /// The bytes of data chunk `id` (read once per chunk).
    fn bytes(&mut self, id: ChunkId, len: u32, read: &mut u64) -> Result<Arc<Vec<u8>>> {
        if let Some((have, data)) = &self.data {
            if *have == id {
                return Ok(data.clone());
            }
        }
        let data = self.reader.read(&id)?;
        if data.len() != len as usize {
            return Err(StoreError::Damaged(format!(
                "chunk {id} has {} bytes, the extent list says {len}",
                data.len()
            )));
        }
        *read += data.len() as u64;
        let data = Arc::new(data);
        self.data = Some((id, data.clone()));
        Ok(data)
    }
}

/// The bytes of a data extent (none for a hole).
fn data_of(c: &mut Cursor<'_, '_>, e: Extent, read: &mut u64) -> Result<Option<Arc<Vec<u8>>>> {
    match e {
        Extent::Hole { .. } => Ok(None),
        Extent::Data { id, len } => c.bytes(id, len, read).map(Some),
    }
}

fn extent_len(e: &Extent) -> u64 {
    match e {
        Extent::Hole { len } => *len,
        Extent::Data { len, .. } => u64::from(*len),
    }
}

/// Collects changed ranges, merging touching ones.
#[derive(Default)]
struct Ranges(Vec<[u64; 2]>);

impl Ranges {
    fn add(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        match self.0.last_mut() {
            Some([o, l]) if *o + *l == off => *l += len,
            _ => self.0.push([off, len]),
        }
    }

    /// Adds the ranges where `a` and `b` (equal lengths, at volume offset `off`) differ.
    fn compare(&mut self, off: u64, a: &[u8], b: &[u8]) {
        let mut i = 0;
        while i < a.len() {
            // Skip equal bytes quickly in 64-byte steps, then find the exact edges.
            if a[i..].len() >= 64 && a[i..i + 64] == b[i..i + 64] {
                i += 64;
                continue;
            }
            if a[i] == b[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < a.len() && a[i] != b[i] {
                i += 1;
            }
            self.add(off + start as u64, (i - start) as u64);
        }
    }
}

impl Store {
    /// The byte ranges whose content differs between snapshots `a` and `b`.
    pub fn diff(
        &self,
        access: &Access,
        a: &str,
        b: &str,
        progress: &dyn Progress,
    ) -> Result<DiffReport> {
        let (doc_a, doc_b) = (self.resolve_snapshot(a)?, self.resolve_snapshot(b)?);
        let (codec_a, codec_b): (ChunkCodec, ChunkCodec) = (
            self.codec(access, doc_a.key)?,
            self.codec(access, doc_b.key)?,
        );
        let same_key = doc_a.key == doc_b.key;
        let _lock = self.lock_reading("diff", progress)?;
        let index = self.index_if_free(access, progress)?;
        let locator_a = self.locator(index.as_ref(), &doc_a, &codec_a, progress)?;
        let locator_b = self.locator(index.as_ref(), &doc_b, &codec_b, progress)?;
        let reader_a = ChunkReader::with_locator(self, &codec_a, locator_a);
        let reader_b = ChunkReader::with_locator(self, &codec_b, locator_b);
        let (mut ca, mut cb) = (
            Cursor::new(&reader_a, &doc_a),
            Cursor::new(&reader_b, &doc_b),
        );
        let mut ranges = Ranges::default();
        let mut read = 0u64;
        let common = doc_a.size.min(doc_b.size);
        progress.start("diff", common);
        let mut pos = 0u64;
        while pos < common {
            let (Some((_, ea, ua)), Some((_, eb, ub))) = (ca.peek()?, cb.peek()?) else {
                return Err(StoreError::Damaged(format!(
                    "the extent lists of {} and {} end before their sizes",
                    doc_a.id, doc_b.id
                )));
            };
            let n = (extent_len(&ea) - ua).min(extent_len(&eb) - ub);
            match (ea, eb) {
                (Extent::Hole { .. }, Extent::Hole { .. }) => {}
                (Extent::Data { id: x, .. }, Extent::Data { id: y, .. })
                    if same_key && x == y && ua == ub => {}
                (ea, eb) => {
                    crate::cancel::check()?;
                    let da = data_of(&mut ca, ea, &mut read)?;
                    let db = data_of(&mut cb, eb, &mut read)?;
                    let zeros = if da.is_none() || db.is_none() {
                        vec![0u8; n as usize]
                    } else {
                        Vec::new()
                    };
                    let bytes_a = da
                        .as_ref()
                        .map_or(&zeros[..], |d| &d[ua as usize..(ua + n) as usize]);
                    let bytes_b = db
                        .as_ref()
                        .map_or(&zeros[..], |d| &d[ub as usize..(ub + n) as usize]);
                    ranges.compare(pos, bytes_a, bytes_b);
                }
            }
            ca.advance(n);
            cb.advance(n);
            pos += n;
            progress.advance(n);
        }
        progress.finish();
        if doc_b.size > common {
            ranges.add(common, doc_b.size - common);
        }
        Ok(DiffReport {
            a: doc_a.id,
            b: doc_b.id,
            size: doc_b.size,
            changed: ranges.0,
            bytes_read: read,
        })
    }
}
