//! `snapshot diff`: the ranges whose content differs between two snapshots.
//!
//! Both snapshots' views ([`SnapshotView`]) are walked side by side, span by span. Where both
//! sides are holes, or the same chunk id under the same key at the same place in it, nothing
//! is read: those bytes are equal. Everywhere else the data is read, verified and compared, so
//! a chunk that moved, a chunk rewritten with the same bytes, or two snapshots under different
//! keys (whose chunk ids differ for equal content) report only what really differs.
//!
//! What is reported is a set of blocks: the volume is cut into blocks of `granularity` bytes
//! from offset 0 (4 KiB by default, a filesystem's block), and a block is changed if any of its
//! bytes differs. Touching changed blocks are merged into one range. A granularity of one byte
//! gives the exact byte ranges (`--exact`).
//!
//! The first snapshot is read as zeros past its end, so a volume that grew reports as changed
//! only the blocks of its new tail that hold data (a grown tail that is a hole is unchanged).
//! Ranges stop at the second snapshot's size; a volume that shrank says so through `size_a`.

use std::sync::Arc;

use blocksnap_manifest::SnapshotId;
use blocksnap_pack::ChunkCodec;
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::repo::Store;
use crate::snapshot::view::{SnapshotView, Span};

/// The block size `snapshot diff` reports in unless told otherwise: 4 KiB.
pub const DEFAULT_DIFF_GRANULARITY: u64 = 4096;

/// How `snapshot diff` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffOptions {
    /// The block size, in bytes, that changed ranges are rounded out to (aligned to offset 0 of
    /// the volume); 1 gives the exact byte ranges.
    pub granularity: u64,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            granularity: DEFAULT_DIFF_GRANULARITY,
        }
    }
}

impl DiffOptions {
    /// The exact byte ranges.
    pub fn exact() -> Self {
        DiffOptions { granularity: 1 }
    }
}

/// What `snapshot diff` found (the `--json` output of CLI.md).
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    /// The first snapshot.
    pub a: SnapshotId,
    /// The second snapshot.
    pub b: SnapshotId,
    /// The second snapshot's size: the ranges lie below it.
    pub size: u64,
    /// `[offset, length]` of every changed range, merged and sorted: whole blocks of
    /// `granularity` bytes (the last one cut at `size`), or exact bytes for a granularity of 1.
    pub changed: Vec<[u64; 2]>,
    /// Data bytes read to compare (chunks whose ids alone could not decide).
    pub bytes_read: u64,
    /// The block size of `changed`, in bytes (1: exact byte ranges).
    pub granularity: u64,
    /// The first snapshot's size: larger than `size` when the volume shrank.
    pub size_a: u64,
    /// The sum of the lengths in `changed`.
    pub bytes_changed: u64,
}

impl DiffReport {
    /// The volume shrank between the two snapshots: its last `size_a - size` bytes are gone.
    pub fn shrank(&self) -> bool {
        self.size_a > self.size
    }
}

/// Collects changed ranges in order, rounded out to blocks and merged where they touch.
struct Ranges {
    out: Vec<[u64; 2]>,
    granularity: u64,
    /// Where the ranges stop (the second snapshot's size).
    size: u64,
}

impl Ranges {
    /// Marks bytes `off..off + len` changed: with blocks, every block they touch.
    fn add(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let g = self.granularity;
        let start = off - off % g;
        let end = (off + len).div_ceil(g).saturating_mul(g).min(self.size);
        if end <= start {
            return;
        }
        match self.out.last_mut() {
            Some([o, l]) if *o + *l >= start => *l = (*o + *l).max(end) - *o,
            _ => self.out.push([start, end - start]),
        }
    }

    /// The end of the last range marked (0 if none).
    fn marked_to(&self) -> u64 {
        self.out.last().map_or(0, |[o, l]| o + l)
    }

    /// Marks where `a` and `b` (equal lengths, at volume offset `off`) differ.
    fn compare(&mut self, off: u64, a: &[u8], b: &[u8]) {
        if self.granularity == 1 {
            self.compare_bytes(off, a, b);
            return;
        }
        // Block by block: one differing byte decides its block, the rest of it is not looked at.
        let g = self.granularity;
        let end = off + a.len() as u64;
        let mut pos = off;
        while pos < end {
            let block_end = (pos - pos % g).saturating_add(g).min(end);
            let (i, j) = ((pos - off) as usize, (block_end - off) as usize);
            if self.marked_to() < block_end && a[i..j] != b[i..j] {
                self.add(pos, block_end - pos);
            }
            pos = block_end;
        }
    }

    /// Marks the exact bytes where `a` and `b` differ.
    fn compare_bytes(&mut self, off: u64, a: &[u8], b: &[u8]) {
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

/// One stretch of the walk: `len` bytes at `pos`, inside span `ia` of A and span `ib` of B.
#[derive(Clone, Copy)]
struct Piece {
    pos: u64,
    len: u64,
    ia: usize,
    ib: usize,
    /// Equal without reading: both holes, or one chunk at one place under one key.
    same: bool,
}

/// The pieces of `0..end` where neither side's span changes, A's spans and B's side by side
/// (both must cover `0..end`).
fn pieces<'s>(
    spans_a: &'s [Span],
    spans_b: &'s [Span],
    end: u64,
    same_key: bool,
) -> impl Iterator<Item = Piece> + 's {
    let (mut ia, mut ib, mut pos) = (0usize, 0usize, 0u64);
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let (sa, sb) = (spans_a[ia], spans_b[ib]);
        let len = sa.end().min(sb.end()).min(end) - pos;
        let same = match (sa.chunk, sb.chunk) {
            (None, None) => true,
            (Some(x), Some(y)) => same_key && x == y && pos - sa.offset == pos - sb.offset,
            _ => false,
        };
        let piece = Piece {
            pos,
            len,
            ia,
            ib,
            same,
        };
        pos += len;
        if pos == sa.end() {
            ia += 1;
        }
        if pos == sb.end() {
            ib += 1;
        }
        Some(piece)
    })
}

/// `spans` (covering `size` bytes) followed by a hole up to `end`, if `end` lies further.
fn padded(spans: &[Span], size: u64, end: u64) -> Vec<Span> {
    let mut v = spans.to_vec();
    if end > size {
        v.push(Span {
            offset: size,
            len: end - size,
            chunk: None,
        });
    }
    v
}

impl Store {
    /// The changed 4 KiB blocks between snapshots `a` and `b` ([`DiffOptions::default`]).
    pub fn diff(
        &self,
        access: &Access,
        a: &str,
        b: &str,
        progress: &dyn Progress,
    ) -> Result<DiffReport> {
        self.diff_with(access, a, b, &DiffOptions::default(), progress)
    }

    /// The ranges whose content differs between snapshots `a` and `b`, at the block size of
    /// `opts` (1: exact bytes).
    pub fn diff_with(
        &self,
        access: &Access,
        a: &str,
        b: &str,
        opts: &DiffOptions,
        progress: &dyn Progress,
    ) -> Result<DiffReport> {
        if opts.granularity == 0 {
            return Err(StoreError::Usage(
                "a diff granularity of 0 bytes means nothing: give a block size such as 4KiB \
                 (or --exact for byte ranges)"
                    .into(),
            ));
        }
        let (doc_a, doc_b) = (self.resolve_snapshot(a)?, self.resolve_snapshot(b)?);
        let (codec_a, codec_b): (ChunkCodec, ChunkCodec) = (
            self.snapshot_codec(access, &doc_a)?,
            self.snapshot_codec(access, &doc_b)?,
        );
        let same_key = doc_a.key == doc_b.key;
        let _lock = self.lock_reading("diff", progress)?;
        let index = self.index_if_free(access, progress)?;
        let view_a = self.view_of(index.as_ref(), &doc_a, &codec_a, progress)?;
        let view_b = self.view_of(index.as_ref(), &doc_b, &codec_b, progress)?;
        // A is read as zeros past its end; nothing past B's end is compared.
        let end = doc_b.size;
        let spans_a = padded(view_a.spans(), doc_a.size, end);
        let spans_b = view_b.spans();
        let mut ranges = Ranges {
            out: Vec::new(),
            granularity: opts.granularity,
            size: end,
        };
        // The work is the bytes that must be read and compared; equal ids cost nothing.
        let to_compare: u64 = pieces(&spans_a, spans_b, end, same_key)
            .filter(|p| !p.same)
            .map(|p| p.len)
            .sum();
        progress.start("diff", to_compare);
        let mut read = 0u64;
        // The chunk read last on each side: a span is compared piece by piece against the
        // other side's spans, and read once.
        let mut last_a: Option<(usize, Arc<Vec<u8>>)> = None;
        let mut last_b: Option<(usize, Arc<Vec<u8>>)> = None;
        let mut zeros: Vec<u8> = Vec::new();
        for p in pieces(&spans_a, spans_b, end, same_key) {
            if p.same {
                continue;
            }
            crate::cancel::check()?;
            let mut bytes = |view: &SnapshotView<'_>,
                             span: Span,
                             i: usize,
                             last: &mut Option<(usize, Arc<Vec<u8>>)>|
             -> Result<Option<Arc<Vec<u8>>>> {
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
            let (sa, sb) = (spans_a[p.ia], spans_b[p.ib]);
            let da = bytes(&view_a, sa, p.ia, &mut last_a)?;
            let db = bytes(&view_b, sb, p.ib, &mut last_b)?;
            if zeros.len() < p.len as usize && (da.is_none() || db.is_none()) {
                zeros.resize(p.len as usize, 0);
            }
            let (ua, ub) = ((p.pos - sa.offset) as usize, (p.pos - sb.offset) as usize);
            let n = p.len as usize;
            let bytes_a = match &da {
                Some(d) => &d[ua..ua + n],
                None => &zeros[..n],
            };
            let bytes_b = match &db {
                Some(d) => &d[ub..ub + n],
                None => &zeros[..n],
            };
            ranges.compare(p.pos, bytes_a, bytes_b);
            progress.advance(p.len);
        }
        progress.finish();
        let bytes_changed = ranges.out.iter().map(|r| r[1]).sum();
        Ok(DiffReport {
            a: doc_a.id,
            b: doc_b.id,
            size: doc_b.size,
            changed: ranges.out,
            bytes_read: read,
            granularity: opts.granularity,
            size_a: doc_a.size,
            bytes_changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(g: u64, size: u64) -> Ranges {
        Ranges {
            out: Vec::new(),
            granularity: g,
            size,
        }
    }

    #[test]
    fn bytes_round_out_to_aligned_blocks_and_touching_blocks_merge() {
        let mut r = ranges(4096, 3 * 4096 + 100);
        r.add(10, 1);
        r.add(4095, 2);
        r.add(3 * 4096 + 50, 1);
        assert_eq!(r.out, vec![[0, 2 * 4096], [3 * 4096, 100]]);
        let mut exact = ranges(1, 1000);
        exact.add(10, 1);
        exact.add(11, 4);
        exact.add(20, 1);
        assert_eq!(exact.out, vec![[10, 5], [20, 1]]);
    }

    #[test]
    fn a_block_is_changed_if_any_byte_differs_and_equal_blocks_are_not() {
        let a = vec![7u8; 5 * 4096];
        let mut b = a.clone();
        b[4096 + 17] = 0;
        b[3 * 4096] = 0;
        b[3 * 4096 + 4095] = 0;
        let mut r = ranges(4096, a.len() as u64 + 4096);
        // Compared from an unaligned offset, in two pieces split inside a block.
        r.compare(100, &a[100..9000], &b[100..9000]);
        r.compare(9000, &a[9000..], &b[9000..]);
        assert_eq!(r.out, vec![[4096, 4096], [3 * 4096, 4096]]);
        let mut exact = ranges(1, a.len() as u64);
        exact.compare(0, &a, &b);
        assert_eq!(
            exact.out,
            vec![[4096 + 17, 1], [3 * 4096, 1], [3 * 4096 + 4095, 1]]
        );
    }

    #[test]
    fn a_huge_granularity_is_one_block_cut_at_the_size() {
        let mut r = ranges(1 << 40, 10_000);
        r.compare(0, &[1, 2, 3], &[1, 0, 3]);
        assert_eq!(r.out, vec![[0, 10_000]]);
        let mut r = ranges(u64::MAX, 10_000);
        r.add(9_999, 1);
        assert_eq!(r.out, vec![[0, 10_000]]);
    }
}
