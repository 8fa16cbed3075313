//! Where to cut a disk image into chunks.
//!
//! This crate turns bytes into chunk boundaries and finds runs of zeros. It never does I/O and
//! never spawns threads: the store reads the image and calls it on buffers.
//!
//! Two chunkers are offered:
//!
//! * [`ChunkerKind::Cdc`] — FastCDC 2020 (the `fastcdc` crate): content-defined cut points, so an
//!   insertion or a moved file shifts only the chunks around it. The default.
//! * [`ChunkerKind::Fixed`] — cuts at multiples of a fixed size, counted from the start of the
//!   volume (as Proxmox Backup Server does for VM disks). Cheapest, and good for disks whose
//!   writes are block-aligned.
//!
//! The [`Chunker`] works on a stream: give it a buffer that starts at a cut point and it returns
//! the lengths of the chunks it can be sure of; when more data follows (`last == false`) the tail
//! it is unsure of is left for the next call.
//!
//! ```
//! use blocksnap_chunker::{Chunker, ChunkerParams};
//! let chunker = Chunker::new(ChunkerParams::fixed(4096)).unwrap();
//! let data = vec![7u8; 10_000];
//! assert_eq!(chunker.cut(&data, 0, true), vec![4096, 4096, 1808]);
//! ```

mod zero;

pub use zero::{ZERO_BLOCK, is_zero, zero_runs};

/// The chunking algorithm of a store: one type from the chunker through the documents (`"kind":
/// "cdc"` in `config` and snapshot documents) to the command line (`init --chunker cdc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkerKind {
    /// FastCDC 2020, content-defined.
    Cdc,
    /// Fixed-size chunks aligned to the start of the volume.
    Fixed,
}

impl ChunkerKind {
    /// Every kind, the default first.
    pub const ALL: [ChunkerKind; 2] = [ChunkerKind::Cdc, ChunkerKind::Fixed];

    /// The name used in configuration and on the command line (`cdc`, `fixed`).
    pub fn name(self) -> &'static str {
        match self {
            ChunkerKind::Cdc => "cdc",
            ChunkerKind::Fixed => "fixed",
        }
    }

    /// The kind of that [`ChunkerKind::name`].
    pub fn from_name(name: &str) -> Option<ChunkerKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Chunk size limits. For [`ChunkerKind::Fixed`] all three are the chunk size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// The algorithm.
    pub kind: ChunkerKind,
    /// Smallest chunk (except the last one of a data run).
    pub min: u32,
    /// Target average chunk size.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

/// Smallest average chunk size accepted.
pub const MIN_AVG: u32 = 1024;
/// Largest maximum chunk size accepted (16 MiB, fastcdc's own limit).
pub const MAX_MAX: u32 = 16 * 1024 * 1024;

/// Chunker parameters out of range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    /// The sizes are not ordered or out of the supported range.
    #[error(
        "chunk sizes min={min} avg={avg} max={max} are invalid: need {MIN_AVG} <= avg, \
         min <= avg <= max <= {MAX_MAX}, and a power-of-two average for cdc"
    )]
    Range {
        /// min
        min: u32,
        /// avg
        avg: u32,
        /// max
        max: u32,
    },
}

impl ChunkerParams {
    /// FastCDC with the given average; min is avg/4 and max is avg*4, as the FastCDC paper suggests.
    pub fn cdc(avg: u32) -> Self {
        ChunkerParams {
            kind: ChunkerKind::Cdc,
            min: avg / 4,
            avg,
            max: avg.saturating_mul(4),
        }
    }

    /// Fixed-size chunks of `size` bytes.
    pub fn fixed(size: u32) -> Self {
        ChunkerParams {
            kind: ChunkerKind::Fixed,
            min: size,
            avg: size,
            max: size,
        }
    }

    /// Checks the ranges; every constructor's output passes for sane sizes, documents may not.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let err = ParamsError::Range {
            min: self.min,
            avg: self.avg,
            max: self.max,
        };
        if self.avg < MIN_AVG || self.max > MAX_MAX || self.min > self.avg || self.avg > self.max {
            return Err(err);
        }
        match self.kind {
            ChunkerKind::Fixed if self.min != self.avg || self.avg != self.max => Err(err),
            ChunkerKind::Cdc
                if !self.avg.is_power_of_two()
                    // fastcdc names these oddly: MINIMUM_* bound `min`, MAXIMUM_* bound `max`.
                    || self.min < fastcdc::v2020::MINIMUM_MIN
                    || self.min > fastcdc::v2020::MINIMUM_MAX
                    || self.avg > fastcdc::v2020::AVERAGE_MAX
                    || self.max < fastcdc::v2020::MAXIMUM_MIN =>
            {
                Err(err)
            }
            _ => Ok(()),
        }
    }
}

/// Cuts buffers into chunks according to [`ChunkerParams`].
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    /// FastCDC's gear seed: 0 for the published gear table; otherwise every gear value is
    /// mixed with it, so cut points depend on a secret and do not reveal known content.
    seed: u64,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("params", &self.params)
            .field("seeded", &(self.seed != 0))
            .finish()
    }
}

impl Chunker {
    /// A chunker for validated parameters, with FastCDC's published gear table.
    pub fn new(params: ChunkerParams) -> Result<Self, ParamsError> {
        Self::with_seed(params, 0)
    }

    /// A chunker whose FastCDC gear table is mixed with `seed` (a secret derived from the data
    /// key): the same content cuts the same way under one seed, differently under another.
    /// Seed 0 is [`Chunker::new`]. Fixed chunks ignore it.
    pub fn with_seed(params: ChunkerParams, seed: u64) -> Result<Self, ParamsError> {
        params.validate()?;
        Ok(Chunker { params, seed })
    }

    /// The parameters.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// The smallest buffer that guarantees [`Chunker::cut`] makes progress when `last` is false.
    pub fn min_window(&self) -> usize {
        2 * self.params.max as usize
    }

    /// Returns the lengths of the chunks at the start of `data`.
    ///
    /// `data` must start at a cut point: the start of a data run or the end of the previous
    /// chunk. `offset` is its position in the volume (fixed chunks are aligned to it). When `last`
    /// is true, `data` ends a data run and the lengths cover all of it; otherwise the final,
    /// uncertain chunk is left out and must be passed again, followed by more data. An empty
    /// result with `last == false` means `data` is shorter than [`Chunker::min_window`].
    pub fn cut(&self, data: &[u8], offset: u64, last: bool) -> Vec<usize> {
        let mut cuts = match self.params.kind {
            ChunkerKind::Fixed => {
                let size = u64::from(self.params.avg);
                let mut out = Vec::with_capacity(data.len() / size as usize + 2);
                let mut pos = 0usize;
                while pos < data.len() {
                    let abs = offset + pos as u64;
                    let to_boundary = (size - abs % size) as usize;
                    let len = to_boundary.min(data.len() - pos);
                    out.push(len);
                    pos += len;
                }
                out
            }
            ChunkerKind::Cdc => fastcdc::v2020::FastCDC::with_level_and_seed(
                data,
                self.params.min,
                self.params.avg,
                self.params.max,
                fastcdc::v2020::Normalization::Level1,
                self.seed,
            )
            .map(|c| c.length)
            .collect(),
        };
        if !last {
            // The final chunk ends only because the buffer does; the next call decides it.
            cuts.pop();
        }
        cuts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeded(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn fixed_cuts_align_to_volume_offsets() {
        let c = Chunker::new(ChunkerParams::fixed(4096)).unwrap();
        assert_eq!(c.cut(&[1u8; 5000], 1000, true), vec![3096, 1904]);
        assert_eq!(c.cut(&[1u8; 5000], 1000, false), vec![3096]);
    }

    #[test]
    fn a_seed_moves_cut_points_and_the_same_seed_keeps_them() {
        let p = ChunkerParams::cdc(16 * 1024);
        let data = seeded(512 * 1024, 7);
        let plain = Chunker::new(p).unwrap().cut(&data, 0, true);
        let a = Chunker::with_seed(p, 0x1234_5678_9abc_def1).unwrap();
        let b = Chunker::with_seed(p, 0x0fed_cba9_8765_4321).unwrap();
        assert_eq!(a.cut(&data, 0, true), a.cut(&data, 0, true));
        assert_ne!(a.cut(&data, 0, true), plain);
        assert_ne!(a.cut(&data, 0, true), b.cut(&data, 0, true));
        assert_eq!(a.cut(&data, 0, true).iter().sum::<usize>(), data.len());
    }

    #[test]
    fn cdc_golden_cut_points() {
        // Golden vector: a change to the chunker that moves cut points changes every store's dedup.
        let c = Chunker::new(ChunkerParams::cdc(16 * 1024)).unwrap();
        let data = seeded(256 * 1024, 0x9E37_79B9_7F4A_7C15);
        let cuts = c.cut(&data, 0, true);
        assert_eq!(cuts.iter().sum::<usize>(), data.len());
        assert_eq!(
            cuts,
            vec![
                6191, 8763, 17021, 17777, 15442, 16619, 24411, 10767, 23092, 24826, 30843, 26719,
                5435, 22882, 11356
            ]
        );
    }

    #[test]
    fn streaming_equals_whole_buffer() {
        let c = Chunker::new(ChunkerParams::cdc(4096)).unwrap();
        let data = seeded(300_000, 42);
        let whole = c.cut(&data, 0, true);
        let mut streamed = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let end = (pos + 50_000).min(data.len());
            let last = end == data.len();
            let cuts = c.cut(&data[pos..end], pos as u64, last);
            pos += cuts.iter().sum::<usize>();
            streamed.extend(cuts);
        }
        assert_eq!(whole, streamed);
    }

    #[test]
    fn params_are_validated() {
        assert!(ChunkerParams::cdc(65536).validate().is_ok());
        assert!(ChunkerParams::cdc(3000).validate().is_err());
        assert!(ChunkerParams::cdc(512).validate().is_err());
        assert!(ChunkerParams::fixed(32 * 1024 * 1024).validate().is_err());
        assert!(
            ChunkerParams {
                kind: ChunkerKind::Fixed,
                min: 1,
                avg: 4096,
                max: 4096
            }
            .validate()
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn cuts_cover_every_byte(len in 0usize..200_000, seed in any::<u64>(), fixed in any::<bool>(), offset in 0u64..1_000_000) {
            let params = if fixed { ChunkerParams::fixed(8192) } else { ChunkerParams::cdc(8192) };
            let c = Chunker::new(params).unwrap();
            let data = seeded(len, seed | 1);
            let cuts = c.cut(&data, offset, true);
            prop_assert_eq!(cuts.iter().sum::<usize>(), len);
            prop_assert!(cuts.iter().all(|&l| l > 0 && l <= params.max as usize));
        }
    }
}
