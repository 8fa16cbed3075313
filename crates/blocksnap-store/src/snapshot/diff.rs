//! `snapshot diff`: the byte ranges whose content differs between two snapshots.
//!
//! Both snapshots' views ([`SnapshotView`]) are walked side by side, span by span. Where both
//! sides are holes, or the same chunk id under the same key, nothing
//! is read: those bytes are equal. Everywhere else the data is read, verified and compared
//! byte for byte, so the ranges are exact: a chunk that moved, a chunk rewritten with the same
//! bytes, or two snapshots under different keys (whose chunk ids differ for equal content)
//! report only the bytes that really differ.

use blocksnap_manifest::SnapshotId;
use blocksnap_pack::ChunkCodec;
use serde::Serialize;

use crate::access::Access;
use crate::error::Result;
use crate::packs::reader::ChunkReader;
use crate::progress::Progress;
use crate::repo::Store;
use crate::snapshot::view::SnapshotView;

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
            self.snapshot_codec(access, &doc_a)?,
            self.snapshot_codec(access, &doc_b)?,
        );
        let same_key = doc_a.key == doc_b.key;
        let _lock = self.lock_reading("diff", progress)?;
        let index = self.index_if_free(access, progress)?;
        let locator_a = self.locator(index.as_ref(), &doc_a, &codec_a, progress)?;
        let locator_b = self.locator(index.as_ref(), &doc_b, &codec_b, progress)?;
        let view_a =
            SnapshotView::open(&doc_a, ChunkReader::with_locator(self, &codec_a, locator_a))?;
        let view_b =
            SnapshotView::open(&doc_b, ChunkReader::with_locator(self, &codec_b, locator_b))?;
        let (spans_a, spans_b) = (view_a.spans(), view_b.spans());
        let mut ranges = Ranges::default();
        let mut read = 0u64;
        let common = doc_a.size.min(doc_b.size);
        progress.start("diff", common);
        let (mut ia, mut ib, mut pos) = (0usize, 0usize, 0u64);
        // The chunks read last on each side: a span is compared piece by piece against the
        // other side's spans, and read once.
        let mut last_a: Option<(usize, std::sync::Arc<Vec<u8>>)> = None;
        let mut last_b: Option<(usize, std::sync::Arc<Vec<u8>>)> = None;
        while pos < common {
            let (sa, sb) = (spans_a[ia], spans_b[ib]);
            let (ua, ub) = (pos - sa.offset, pos - sb.offset);
            let n = sa.end().min(sb.end()).min(common) - pos;
            let same = match (sa.chunk, sb.chunk) {
                (None, None) => true,
                (Some(x), Some(y)) => same_key && x == y && ua == ub,
                _ => false,
            };
            if !same {
                crate::cancel::check()?;
                let mut bytes = |view: &SnapshotView<'_>,
                                 i: usize,
                                 last: &mut Option<(usize, std::sync::Arc<Vec<u8>>)>|
                 -> Result<Option<std::sync::Arc<Vec<u8>>>> {
                    let span = view.spans()[i];
                    if span.chunk.is_none() {
                        return Ok(None);
                    }
                    if let Some((j, d)) = last {
                        if *j == i {
                            return Ok(Some(d.clone()));
                        }
                    }
                    let d = view.chunk(&span)?;
                    read += d.len() as u64;
                    *last = Some((i, d.clone()));
                    Ok(Some(d))
                };
                let da = bytes(&view_a, ia, &mut last_a)?;
                let db = bytes(&view_b, ib, &mut last_b)?;
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
            pos += n;
            if pos == sa.end() {
                ia += 1;
            }
            if pos == sb.end() {
                ib += 1;
            }
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
