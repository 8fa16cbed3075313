//! A random-access view of a snapshot: any byte range of the volume, read and verified on
//! demand. The extent list is decoded once into spans (one per extent: about 40 bytes per
//! chunk of the volume); a read finds its spans by binary search and decodes each chunk it
//! touches through the [`ChunkReader`], which verifies it against its id. Holes read as zeros.
//!
//! Restore walks the spans in order, diff walks two views side by side, the NBD server reads
//! ranges as clients ask; a mount or a qcow2 export would be one more reader of a view.

use std::sync::{Arc, Mutex};

use blocksnap_index::Index;
use blocksnap_manifest::{ChunkId, Extent, SnapshotDoc, SnapshotId};
use blocksnap_pack::ChunkCodec;

use crate::error::{Result, StoreError};
use crate::packs::reader::ChunkReader;
use crate::progress::Progress;
use crate::repo::Store;

impl Store {
    /// The view of snapshot `doc`, its chunks read through the index where it serves them
    /// (else through locations read from the pack trailers, with a note): its extent list is
    /// read once, by the check that the index serves it.
    pub(crate) fn view_of<'i>(
        &'i self,
        index: Option<&'i Index>,
        doc: &SnapshotDoc,
        codec: &'i ChunkCodec,
        progress: &dyn Progress,
    ) -> Result<SnapshotView<'i>> {
        match self.reader_with_extents(index, doc, codec, progress)? {
            (reader, Some(extents)) => SnapshotView::with_extents(doc, extents, reader),
            (reader, None) => SnapshotView::open(doc, reader),
        }
    }
}

/// One extent of the volume: where it starts, how long it is, and its chunk (none for a hole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub offset: u64,
    pub len: u64,
    pub chunk: Option<ChunkId>,
}

impl Span {
    /// One past its last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A snapshot, readable at any offset.
pub(crate) struct SnapshotView<'a> {
    id: SnapshotId,
    size: u64,
    spans: Vec<Span>,
    reader: ChunkReader<'a>,
    /// The last chunk decoded: sequential reads smaller than a chunk decode it once.
    last: Mutex<Option<(ChunkId, Arc<Vec<u8>>)>>,
}

impl<'a> SnapshotView<'a> {
    /// The view of `doc`, its chunks read through `reader`: the extent list is read, verified
    /// and checked to cover the volume exactly.
    pub fn open(doc: &SnapshotDoc, reader: ChunkReader<'a>) -> Result<Self> {
        let mut extents = Vec::new();
        reader.for_each_extent(doc, |offset, extent| {
            extents.push((offset, extent));
            Ok(())
        })?;
        Self::with_extents(doc, extents, reader)
    }

    /// The view of `doc` from its extent list, already read (each extent with its offset), checked
    /// to cover the volume exactly.
    pub fn with_extents(
        doc: &SnapshotDoc,
        extents: Vec<(u64, Extent)>,
        reader: ChunkReader<'a>,
    ) -> Result<Self> {
        let spans: Vec<Span> = extents
            .into_iter()
            .map(|(offset, extent)| match extent {
                Extent::Hole { len } => Span {
                    offset,
                    len,
                    chunk: None,
                },
                Extent::Data { len, id } => Span {
                    offset,
                    len: u64::from(len),
                    chunk: Some(id),
                },
            })
            .collect();
        if spans.last().map_or(0, Span::end) != doc.size {
            return Err(StoreError::Damaged(format!(
                "snapshot {}: its extent list does not cover its {} bytes",
                doc.id, doc.size
            )));
        }
        Ok(Self::from_spans(doc.id, doc.size, spans, reader))
    }

    /// A view of spans already known (they must cover `size` bytes in order).
    pub fn from_spans(
        id: SnapshotId,
        size: u64,
        spans: Vec<Span>,
        reader: ChunkReader<'a>,
    ) -> Self {
        SnapshotView {
            id,
            size,
            spans,
            reader,
            last: Mutex::new(None),
        }
    }

    /// The volume's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Every extent, in volume order, covering the volume.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// The reader of the view's chunks.
    pub fn reader(&self) -> &ChunkReader<'a> {
        &self.reader
    }

    /// The bytes of a data span's chunk, verified and of the span's length (the last one read
    /// is kept).
    pub fn chunk(&self, span: &Span) -> Result<Arc<Vec<u8>>> {
        let Some(id) = span.chunk else {
            return Ok(Arc::new(vec![0u8; span.len as usize]));
        };
        if let Some((have, data)) = &*self.last.lock().unwrap_or_else(|p| p.into_inner()) {
            if *have == id {
                return Ok(data.clone());
            }
        }
        let data = self.reader.read(&id)?;
        if data.len() as u64 != span.len {
            return Err(StoreError::Damaged(format!(
                "chunk {id} has {} bytes, the extent list says {}",
                data.len(),
                span.len
            )));
        }
        let data = Arc::new(data);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, data.clone()));
        Ok(data)
    }

    /// The index of the span holding byte `offset` (`spans().len()` at or past the end).
    pub fn span_at(&self, offset: u64) -> usize {
        self.spans.partition_point(|s| s.end() <= offset)
    }

    /// Fills `out` with the volume's bytes from `offset`; a range past the end is refused.
    /// (`serve nbd` reads through its own shared cache, in parallel; this is the plain way.)
    #[allow(dead_code)]
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|&e| e <= self.size())
            .ok_or_else(|| {
                StoreError::Usage(format!(
                    "bytes {offset}..+{} lie beyond the end of snapshot {} ({} bytes)",
                    out.len(),
                    self.id,
                    self.size()
                ))
            })?;
        let mut i = self.span_at(offset);
        let mut pos = offset;
        while pos < end {
            let span = self.spans[i];
            let from = (pos - span.offset) as usize;
            let n = (span.end().min(end) - pos) as usize;
            let dst = &mut out[(pos - offset) as usize..][..n];
            match span.chunk {
                None => dst.fill(0),
                Some(_) => dst.copy_from_slice(&self.chunk(&span)?[from..from + n]),
            }
            pos += n as u64;
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitOptions, NoProgress, SnapshotOptions, Store};

    #[test]
    fn any_range_reads_as_the_volume_and_past_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            account: "alice".into(),
            identity: Some(dir.path().join("alice.key")),
            config_home: Some(dir.path().join("config")),
            chunk_size: 16 * 1024,
            ..InitOptions::default()
        };
        let (store, _) = Store::init(&dir.path().join("store"), &opts).unwrap();
        let store = store.with_cache_home(dir.path().join("cache"));
        let access = store
            .access(None, Some(&dir.path().join("alice.key")))
            .unwrap();
        // Data, a long zero run (a hole), data.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut vol: Vec<u8> = (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        vol[1 << 20..2 << 20].fill(0);
        let img = dir.path().join("disk.img");
        std::fs::write(&img, &vol).unwrap();
        let r = store
            .snapshot(
                &access,
                &SnapshotOptions {
                    source: img,
                    ..Default::default()
                },
                &NoProgress,
            )
            .unwrap();
        let doc = store.resolve_snapshot(&r.id.to_string()).unwrap();
        let codec = store.codec(&access, doc.key).unwrap();
        let index = store.open_index(&access, &NoProgress).unwrap();
        let view = SnapshotView::open(&doc, ChunkReader::new(&store, &codec, &index)).unwrap();
        assert!(
            view.spans().iter().any(|s| s.chunk.is_none()),
            "the zero run is a hole"
        );
        for (off, len) in [
            (0, 1),
            (12_345, 70_000),
            ((1 << 20) - 5, 10),
            (0, 3 << 20),
            ((3 << 20) - 1, 1),
        ] {
            let mut out = vec![0xffu8; len];
            view.read_at(off as u64, &mut out).unwrap();
            assert!(out == vol[off..off + len], "bytes {off}+{len}");
        }
        let mut out = vec![0u8; 2];
        assert!(view.read_at((3 << 20) - 1, &mut out).is_err());
    }
}
