//! The generated data `bench` works on: text-like and random blocks, written zeros and holes, in
//! chosen proportions, from a seed, so that every run sees the same bytes.

use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

use super::IMAGE_BLOCK;
use crate::error::{Result, StoreError};
use crate::fsutil;

/// Which kinds of content a generated image holds, in percent of its 1 MiB blocks. The parts
/// must add up to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ContentMix {
    /// Text-like, compressible bytes (zstd shrinks them about 3x).
    pub text: u8,
    /// Random bytes (incompressible).
    pub random: u8,
    /// Allocated zeros (read, then found to be zeros: holes in the snapshot).
    pub zeros: u8,
    /// Unallocated blocks (never read).
    pub holes: u8,
}

impl ContentMix {
    /// A used disk: 45% text-like, 30% random, 10% written zeros, 15% unallocated.
    pub const REALISTIC: ContentMix = ContentMix {
        text: 45,
        random: 30,
        zeros: 10,
        holes: 15,
    };
    /// Data only: half text-like, half random.
    pub const DATA_ONLY: ContentMix = ContentMix {
        text: 50,
        random: 50,
        zeros: 0,
        holes: 0,
    };

    fn valid(&self) -> bool {
        u32::from(self.text)
            + u32::from(self.random)
            + u32::from(self.zeros)
            + u32::from(self.holes)
            == 100
    }

    /// The data blocks of this mix alone, in their proportions: 45:30 text to random is 60:40.
    fn data_part(&self) -> ContentMix {
        let text =
            (u32::from(self.text) * 100 / (u32::from(self.text) + u32::from(self.random))) as u8;
        ContentMix {
            text,
            random: 100 - text,
            zeros: 0,
            holes: 0,
        }
    }
}

/// The kind of one block of a generated image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Text-like bytes.
    Text,
    /// Random bytes.
    Random,
    /// Zeros, written.
    Zeros,
    /// Not written.
    Hole,
}

/// What a generated image holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageContent {
    /// Text-like bytes.
    pub text: u64,
    /// Random bytes.
    pub random: u64,
    /// Written zeros.
    pub zeros: u64,
    /// Unallocated bytes.
    pub holes: u64,
}

impl ImageContent {
    /// Bytes of text and random data: what is chunked, hashed and encoded.
    pub fn data(&self) -> u64 {
        self.text + self.random
    }
}

/// A fast, seedable generator (xorshift64*).
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        // splitmix64 of the seed: nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Fills `buf` with random bytes from `seed`.
pub fn fill_random(seed: u64, buf: &mut [u8]) {
    let mut rng = Rng::new(seed);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let last = rng.next().to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

/// Fills `buf` with text-like bytes from `seed`: words from a small vocabulary, with numbers.
pub fn fill_text(seed: u64, buf: &mut [u8]) {
    const WORDS: [&[u8]; 32] = [
        b"the ",
        b"block ",
        b"of ",
        b"snapshot ",
        b"volume ",
        b"and ",
        b"chunk ",
        b"pack ",
        b"a ",
        b"disk ",
        b"image ",
        b"to ",
        b"restore ",
        b"store ",
        b"in ",
        b"index\n",
        b"key ",
        b"is ",
        b"data ",
        b"extent ",
        b"for ",
        b"file ",
        b"with ",
        b"system\n",
        b"error: ",
        b"kernel ",
        b"user ",
        b"time ",
        b"0x1f ",
        b"2026 ",
        b"config ",
        b"log\n",
    ];
    let mut rng = Rng::new(seed);
    let mut p = 0;
    'fill: loop {
        let mut r = rng.next();
        for _ in 0..8 {
            let w = WORDS[(r & 31) as usize];
            // One word in eight gets a random number after it: text is not all repeats.
            let extra = if r & 0xe0 == 0 { 6 } else { 0 };
            r >>= 8;
            let n = w.len().min(buf.len() - p);
            buf[p..p + n].copy_from_slice(&w[..n]);
            p += n;
            if extra > 0 && p < buf.len() {
                let digits = format!("{:05} ", rng.next() % 100_000);
                let n = digits.len().min(buf.len() - p);
                buf[p..p + n].copy_from_slice(&digits.as_bytes()[..n]);
                p += n;
            }
            if p == buf.len() {
                break 'fill;
            }
        }
    }
}

/// The kind of block `index` of an image made from `seed` with `mix`, and its content in `buf`
/// (left alone for holes and zeroed for zeros).
pub fn fill_block(mix: ContentMix, seed: u64, index: u64, buf: &mut [u8]) -> BlockKind {
    let block_seed = seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let pick = (Rng::new(block_seed ^ 0x5151).next() % 100) as u8;
    let kind = if pick < mix.text {
        BlockKind::Text
    } else if pick < mix.text + mix.random {
        BlockKind::Random
    } else if pick < mix.text + mix.random + mix.zeros {
        BlockKind::Zeros
    } else {
        BlockKind::Hole
    };
    match kind {
        BlockKind::Text => fill_text(block_seed, buf),
        BlockKind::Random => fill_random(block_seed, buf),
        BlockKind::Zeros => buf.fill(0),
        BlockKind::Hole => {}
    }
    kind
}

/// Writes a new image of `size` bytes at `path`: block `i` (of [`IMAGE_BLOCK`] bytes) is made
/// from seed `seed_of(i)` and `mix`. Unallocated blocks stay holes. The file is fsynced, so
/// writeback does not disturb what is timed next.
pub fn write_image(
    path: &Path,
    size: u64,
    mix: ContentMix,
    seed_of: impl Fn(u64) -> u64,
) -> Result<ImageContent> {
    if !mix.valid() {
        return Err(StoreError::Usage(format!(
            "content mix {mix:?} does not add up to 100%"
        )));
    }
    let file = fsutil::create_new(path, 0o600)?;
    file.set_len(size)
        .map_err(StoreError::io("cannot size", path))?;
    let mut content = ImageContent::default();
    let mut buf = vec![0u8; IMAGE_BLOCK as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(IMAGE_BLOCK);
        let i = off / IMAGE_BLOCK;
        let block = &mut buf[..n as usize];
        let kind = fill_block(mix, seed_of(i), i, block);
        match kind {
            BlockKind::Text => content.text += n,
            BlockKind::Random => content.random += n,
            BlockKind::Zeros => content.zeros += n,
            BlockKind::Hole => content.holes += n,
        }
        if kind != BlockKind::Hole {
            file.write_all_at(block, off)
                .map_err(StoreError::io("cannot write", path))?;
        }
        off += n;
    }
    file.sync_all()
        .map_err(StoreError::io("cannot sync", path))?;
    Ok(content)
}

/// `len` bytes of the data blocks of `mix` in their proportions (seed 7): the sample the stages
/// are timed on.
pub(super) fn data_sample(mix: ContentMix, len: usize) -> Vec<u8> {
    let data_mix = mix.data_part();
    let mut sample = vec![0u8; len];
    for (i, block) in sample.chunks_mut(IMAGE_BLOCK as usize).enumerate() {
        fill_block(data_mix, 7, i as u64, block);
    }
    sample
}
