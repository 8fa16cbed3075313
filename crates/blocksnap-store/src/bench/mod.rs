//! `blocksnap bench`: how fast this machine runs each stage of the pipeline, and the whole of it.
//!
//! Two kinds of figures, the way `kopia benchmark` and `borg benchmark crud` give them:
//!
//! - **Stages**, on a sample of generated data (text-like and random, in the proportions of the
//!   test image's data): reading it back from the page cache in the reader's positioned reads,
//!   FastCDC chunking, fixed-size chunking, keyed BLAKE3 chunk ids, index lookup and insert
//!   (sled, a store's settings), zstd + AES-256-GCM encode, pack writing (records appended
//!   through the page cache, the pack's BLAKE3 id, the trailer; no fsync), and decode + verify.
//!   Each is timed on one core (the calling thread) and on all cores (rayon's pool, the one the
//!   pipelines use), with the same functions and settings a default store uses (32 KiB average
//!   chunks, zstd level 3).
//! - **End to end**, through the library, on a generated image of `size` bytes in a temporary
//!   directory (under `TMPDIR`, removed afterwards): a snapshot into a fresh store, an
//!   incremental snapshot after a few percent of the image changed, and a restore of that
//!   snapshot, compared byte for byte with the image. These include what the stages leave out:
//!   the threads handing batches to each other, fsync, and the documents; and each reports the
//!   CPU time it used, so that the cores it kept busy can be read off.
//!
//! The **stage limit** is the end-to-end snapshot throughput the work of the stages allows: the
//! per-byte cost of every stage a snapshot runs over its data (read, chunk, hash, index,
//! encode, pack write), each measured with all cores busy, summed —
//! `limit = 1 / Σ 1/stage` in data bytes per second. It assumes the stages share the cores
//! perfectly, with no fsync and no stage waiting for another; the ratio of the measured
//! snapshot (per data byte: holes and zero runs cost no stage work and are left out) to it
//! says how much of that ceiling the pipeline reaches. The **compute limit** is the same sum
//! over chunking, hashing and encoding alone, a ceiling no pipeline that reads and writes
//! reaches. The restore limit is the decode + verify throughput on all cores.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blocksnap_chunker::{Chunker, ChunkerParams};
use blocksnap_index::{Index, Location};
use blocksnap_manifest::{ChunkId, KeyId, PackId};
use blocksnap_pack::{ChunkCodec, DataKey, PackWriter, nonce_for};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::init::InitOptions;
use crate::progress::Progress;
use crate::repo::{DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL, Store};
use crate::snapshot::create::{SnapshotOptions, SnapshotReport};

/// The smallest image `bench` accepts.
pub const MIN_SIZE: u64 = 1 << 20;
/// The largest image `bench` accepts.
pub const MAX_SIZE: u64 = 1 << 40;
/// The default image size.
pub const DEFAULT_SIZE: u64 = 256 << 20;
/// Generated images are made of blocks of this size, each of one kind of content.
pub const IMAGE_BLOCK: u64 = 1 << 20;

/// Options of `blocksnap bench`.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Size of the generated test image, in bytes.
    pub size: u64,
    /// Where to make the temporary directory; default: [`std::env::temp_dir`] (`TMPDIR`).
    pub temp_dir: Option<PathBuf>,
    /// Minimum wall time of each stage measurement, in seconds.
    pub stage_seconds: f64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            size: DEFAULT_SIZE,
            temp_dir: None,
            stage_seconds: 0.5,
        }
    }
}

/// The machine the figures come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Threads in rayon's pool: the cores the pipelines use.
    pub cores: usize,
    /// The CPU's model name (from /proc/cpuinfo), when known.
    pub cpu: Option<String>,
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// The load average over 1, 5 and 15 minutes when the run started (from /proc/loadavg):
    /// other work on the machine lowers every figure.
    pub load_average: Option<[f64; 3]>,
    /// blocksnap's version.
    pub version: String,
}

/// The throughput of one stage.
#[derive(Clone, Debug, Serialize)]
pub struct StageResult {
    /// Short name: `read`, `chunk-fastcdc`, `chunk-fixed`, `hash-blake3-keyed`, `index`,
    /// `encode`, `pack-write`, `decode-verify`.
    pub name: String,
    /// What was measured, for people.
    pub description: String,
    /// Input bytes per pass over the sample.
    pub sample_bytes: u64,
    /// Bytes per second on one core.
    pub one_core_bytes_per_sec: f64,
    /// Bytes per second on all cores.
    pub all_cores_bytes_per_sec: f64,
    /// `all_cores / one_core`.
    pub speedup: f64,
}

/// The throughput the work of the stages allows (see the module documentation).
#[derive(Clone, Debug, Serialize)]
pub struct StageLimit {
    /// Snapshot: `1 / Σ 1/stage` over [`SNAPSHOT_STAGES`], all-cores figures, data bytes per
    /// second.
    pub snapshot_bytes_per_sec: f64,
    /// The same over [`COMPUTE_STAGES`] alone (chunk, hash, encode): the ceiling if reading,
    /// the index and pack writes cost nothing.
    pub snapshot_compute_bytes_per_sec: f64,
    /// The snapshot sum from the one-core figures, times the cores: what perfect scaling would
    /// give.
    pub snapshot_ideal_bytes_per_sec: f64,
    /// The slowest of the snapshot stages on all cores.
    pub snapshot_slowest_stage: String,
    /// Restore: decode + verify on all cores, data bytes per second.
    pub restore_bytes_per_sec: f64,
    /// The model, in words.
    pub model: String,
}

/// One end-to-end run.
#[derive(Clone, Debug, Serialize)]
pub struct EndToEnd {
    /// The image's size.
    pub size: u64,
    /// Bytes that hold data (not holes or zero runs): what the stages work on.
    pub data_bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// `size / seconds`.
    pub bytes_per_sec: f64,
    /// `data_bytes / seconds`.
    pub data_bytes_per_sec: f64,
    /// Raw bytes of chunks the store did not have (snapshots), or data bytes written (restore).
    pub bytes_new: u64,
    /// Bytes added to the store on disk (snapshots; 0 for restore).
    pub bytes_stored: u64,
    /// CPU time of the whole process (all threads, user and system) during the run.
    pub cpu_seconds: f64,
    /// `cpu_seconds / seconds`: how many cores the run kept busy on average.
    pub cores_busy: f64,
}

/// What `blocksnap bench` measured (the `--json` output).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The machine.
    pub machine: Machine,
    /// The test image's size.
    pub size: u64,
    /// Where the temporary files were (already removed).
    pub temp_dir: PathBuf,
    /// The test image: bytes of text-like, random, written-zero and unallocated blocks.
    pub image: ImageContent,
    /// Each stage, in pipeline order.
    pub stages: Vec<StageResult>,
    /// The throughput the stages allow.
    pub stage_limit: StageLimit,
    /// The first snapshot, into a fresh store.
    pub snapshot: EndToEnd,
    /// A snapshot of the same volume after `changed_bytes` of it changed.
    pub incremental: EndToEnd,
    /// Bytes the incremental run overwrote with new random data before snapshotting.
    pub changed_bytes: u64,
    /// The restore of the incremental snapshot.
    pub restore: EndToEnd,
    /// The restored image was compared byte for byte with the image and is identical.
    pub verified: bool,
    /// Measured first snapshot (data bytes per second) / the stage limit.
    pub snapshot_vs_limit: f64,
    /// Measured restore (data bytes per second) / the restore limit.
    pub restore_vs_limit: f64,
}

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
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed: nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
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

/// Compares two files byte for byte; the error names the first difference.
pub fn compare_files(a: &Path, b: &Path) -> Result<()> {
    let fa = File::open(a).map_err(StoreError::io("cannot open", a))?;
    let fb = File::open(b).map_err(StoreError::io("cannot open", b))?;
    let la = fa
        .metadata()
        .map_err(StoreError::io("cannot stat", a))?
        .len();
    let lb = fb
        .metadata()
        .map_err(StoreError::io("cannot stat", b))?
        .len();
    if la != lb {
        return Err(StoreError::Other(format!(
            "{} has {la} bytes, {} has {lb}",
            a.display(),
            b.display()
        )));
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0;
    while off < la {
        let n = (la - off).min(1 << 20) as usize;
        fa.read_exact_at(&mut ba[..n], off)
            .map_err(StoreError::io("cannot read", a))?;
        fb.read_exact_at(&mut bb[..n], off)
            .map_err(StoreError::io("cannot read", b))?;
        if ba[..n] != bb[..n] {
            let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y);
            return Err(StoreError::Other(format!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                off + i.unwrap_or(0) as u64
            )));
        }
        off += n as u64;
    }
    Ok(())
}

/// A directory removed (with everything in it) when dropped, also on errors.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<Self> {
        let path = parent.join(format!("blocksnap-bench-{}", fsutil::random_hex(6)));
        fs::create_dir(&path).map_err(|e| {
            StoreError::Other(format!(
                "cannot create the benchmark's temporary directory {}: {e}; set TMPDIR to a \
                 writable directory",
                path.display()
            ))
        })?;
        crate::cancel::register(crate::cancel::Kind::TempDir, &path);
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Times `f` (one pass over `bytes` bytes) until at least `min_seconds` have passed and it ran
/// at least twice, after one untimed pass; returns bytes per second.
fn throughput(bytes: u64, min_seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let start = Instant::now();
    let mut reps = 0u64;
    loop {
        crate::cancel::check()?;
        f()?;
        reps += 1;
        let t = start.elapsed().as_secs_f64();
        if reps >= 2 && t >= min_seconds {
            return Ok((bytes * reps) as f64 / t);
        }
    }
}

fn stage(
    name: &str,
    description: &str,
    bytes: u64,
    min_seconds: f64,
    one: impl FnMut() -> Result<()>,
    all: impl FnMut() -> Result<()>,
) -> Result<StageResult> {
    let one_core = throughput(bytes, min_seconds, one)?;
    let all_cores = throughput(bytes, min_seconds, all)?;
    Ok(StageResult {
        name: name.into(),
        description: description.into(),
        sample_bytes: bytes,
        one_core_bytes_per_sec: one_core,
        all_cores_bytes_per_sec: all_cores,
        speedup: all_cores / one_core,
    })
}

/// Measures every stage on `sample` with the settings of a default store; the I/O and index
/// stages use files in `dir`.
pub fn measure_stages(sample: &[u8], min_seconds: f64, dir: &Path) -> Result<Vec<StageResult>> {
    let bytes = sample.len() as u64;
    let cores = rayon::current_num_threads().max(1);
    let segment = sample.len().div_ceil(cores).max(1);
    let cdc = Chunker::new(ChunkerParams::cdc(DEFAULT_CHUNK_SIZE)).expect("default is valid");
    let fixed = Chunker::new(ChunkerParams::fixed(DEFAULT_CHUNK_SIZE)).expect("default is valid");
    let codec = ChunkCodec::encrypted(
        KeyId(0),
        DataKey::from_bytes(fsutil::random_bytes()),
        DEFAULT_COMPRESSION_LEVEL,
    );
    let cipher = codec
        .pack_cipher(&fsutil::random_bytes())
        .expect("an encrypted codec has a cipher");
    let mut stages = Vec::new();

    // Reading: the sample as a file (in the page cache: just written), read back the way the
    // snapshot reader does, in positioned reads of its read size into successive slots of a
    // buffer of its window's size. The file holds the sample four times, so that it is larger
    // than the CPU's caches are likely to be, as an image is.
    let sample_path = dir.join("stage-sample");
    {
        let mut f =
            File::create(&sample_path).map_err(StoreError::io("cannot create", &sample_path))?;
        for _ in 0..4 {
            std::io::Write::write_all(&mut f, sample)
                .map_err(StoreError::io("cannot write", &sample_path))?;
        }
    }
    let file_len = bytes * 4;
    let file_segment = file_len.div_ceil(cores as u64).max(1);
    let sample_file =
        File::open(&sample_path).map_err(StoreError::io("cannot open", &sample_path))?;
    let (window, read_size) = crate::snapshot::source::read_sizes(&cdc);
    let read_range = |range: std::ops::Range<u64>| -> Result<()> {
        let mut buf = vec![0u8; window];
        let mut slot = 0usize;
        let mut off = range.start;
        while off < range.end {
            let n = (range.end - off).min(read_size as u64) as usize;
            if slot + n > buf.len() {
                slot = 0;
            }
            sample_file
                .read_exact_at(&mut buf[slot..slot + n], off)
                .map_err(StoreError::io("cannot read", &sample_path))?;
            slot += n;
            off += n as u64;
        }
        std::hint::black_box(&buf);
        Ok(())
    };
    stages.push(stage(
        "read",
        &format!(
            "{} KiB positioned reads of a file in the page cache (the kernel's copy)",
            read_size >> 10
        ),
        file_len,
        min_seconds,
        || read_range(0..file_len),
        || {
            (0..cores as u64).into_par_iter().try_for_each(|i| {
                read_range(i * file_segment..((i + 1) * file_segment).min(file_len))
            })
        },
    )?);
    drop(sample_file);
    let _ = fs::remove_file(&sample_path);

    for (name, description, chunker) in [
        (
            "chunk-fastcdc",
            "FastCDC 2020 cut points, 32 KiB average",
            &cdc,
        ),
        (
            "chunk-fixed",
            "fixed-size cut points, 32 KiB (reads no data: a cost per chunk, not per byte)",
            &fixed,
        ),
    ] {
        // All cores: the sample in one segment per core, each cut on its own.
        stages.push(stage(
            name,
            description,
            bytes,
            min_seconds,
            || {
                std::hint::black_box(chunker.cut(sample, 0, true));
                Ok(())
            },
            || {
                sample.par_chunks(segment).for_each(|s| {
                    std::hint::black_box(chunker.cut(s, 0, true));
                });
                Ok(())
            },
        )?);
    }
    let mut chunks = Vec::new();
    let mut p = 0;
    for len in cdc.cut(sample, 0, true) {
        chunks.push(&sample[p..p + len]);
        p += len;
    }
    stages.push(stage(
        "hash-blake3-keyed",
        "chunk ids: BLAKE3 keyed with the data key's subkey",
        bytes,
        min_seconds,
        || {
            chunks.iter().for_each(|c| {
                std::hint::black_box(codec.chunk_id(c));
            });
            Ok(())
        },
        || {
            chunks.par_iter().for_each(|c| {
                std::hint::black_box(codec.chunk_id(c));
            });
            Ok(())
        },
    )?);
    let ids: Vec<_> = chunks.iter().map(|c| codec.chunk_id(c)).collect();

    // The index: a lookup of every chunk (a miss, as in a first snapshot) and an insert of
    // each, a pack's worth at a time, into a sled index like a store's. Every pass uses
    // new ids (the pass number mixed into the first bytes).
    let index_path = dir.join("stage-index");
    let index = Index::open(&index_path, std::time::Duration::ZERO, |_| {})?;
    let pass = std::sync::atomic::AtomicU64::new(0);
    let index_pass = |range: std::ops::Range<usize>, n: u64| -> Result<()> {
        let mut batch = Vec::with_capacity(range.len());
        for (i, id) in ids[range.clone()].iter().enumerate() {
            let mut bytes = id.0;
            bytes[..8].copy_from_slice(&n.to_le_bytes());
            let id = ChunkId(bytes);
            if !index.contains(&id)? {
                let loc = Location {
                    pack: PackId(bytes),
                    offset: (range.start + i) as u64 * DEFAULT_CHUNK_SIZE as u64,
                    stored_len: chunks[range.start + i].len() as u32,
                    raw_len: chunks[range.start + i].len() as u32,
                };
                batch.push((id, loc));
            }
        }
        index.insert_batch(&batch)?;
        Ok(())
    };
    let next_pass = || pass.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let per_core = ids.len().div_ceil(cores).max(1);
    stages.push(stage(
        "index",
        "sled index: a lookup of every chunk id (a miss) and an insert of each",
        bytes,
        min_seconds,
        || index_pass(0..ids.len(), next_pass()),
        || {
            let n = next_pass();
            (0..cores).into_par_iter().try_for_each(|c| {
                let start = (c * per_core).min(ids.len());
                index_pass(start..((c + 1) * per_core).min(ids.len()), n)
            })
        },
    )?);
    drop(index);

    let encode = |i: usize| {
        let mut rec = codec.compress(chunks[i]);
        cipher.seal(&nonce_for(i as u64), ids[i].as_bytes(), &mut rec);
        rec
    };
    stages.push(stage(
        "encode",
        "zstd level 3 (raw when it does not shrink), then AES-256-GCM",
        bytes,
        min_seconds,
        || {
            (0..chunks.len()).for_each(|i| {
                std::hint::black_box(encode(i));
            });
            Ok(())
        },
        || {
            (0..chunks.len()).into_par_iter().for_each(|i| {
                std::hint::black_box(encode(i));
            });
            Ok(())
        },
    )?);
    let records: Vec<Vec<u8>> = (0..chunks.len()).map(encode).collect();

    // Writing packs: the encoded records appended to a pack file (through the page cache, with
    // the pack's BLAKE3 id), trailer and all; no fsync, which waits for the disk on the
    // closer's thread, not for the CPU.
    let write_pack = |core: usize, range: std::ops::Range<usize>| -> Result<()> {
        let path = dir.join(format!("stage-pack-{core}"));
        let file = File::create(&path).map_err(StoreError::io("cannot create", &path))?;
        let pack_error = |e: blocksnap_pack::PackError| {
            StoreError::Other(format!("cannot write pack {}: {e}", path.display()))
        };
        let mut w = PackWriter::new(
            std::io::BufWriter::with_capacity(1 << 20, file),
            &codec,
            [0u8; 32],
        )
        .map_err(pack_error)?;
        for i in range {
            let offset = w.offset();
            w.write_sealed(offset, ids[i], chunks[i].len() as u32, &records[i])
                .map_err(pack_error)?;
        }
        let (out, ..) = w.finish().map_err(pack_error)?;
        out.into_inner()
            .map_err(|e| StoreError::io("cannot write", &path)(e.into_error()))?;
        Ok(())
    };
    stages.push(stage(
        "pack-write",
        "encoded records appended to a pack file with its BLAKE3 id (page cache, no fsync)",
        bytes,
        min_seconds,
        || write_pack(0, 0..chunks.len()),
        || {
            (0..cores).into_par_iter().try_for_each(|c| {
                let start = (c * per_core).min(chunks.len());
                write_pack(c, start..((c + 1) * per_core).min(chunks.len()))
            })
        },
    )?);

    let decode = |i: usize| {
        codec
            .decode(
                Some(&cipher),
                &ids[i],
                i as u64,
                chunks[i].len() as u32,
                records[i].clone(),
            )
            .expect("a record just encoded decodes")
    };
    stages.push(stage(
        "decode-verify",
        "AES-256-GCM open, zstd decompress, BLAKE3 id check",
        bytes,
        min_seconds,
        || {
            (0..chunks.len()).for_each(|i| {
                std::hint::black_box(decode(i));
            });
            Ok(())
        },
        || {
            (0..chunks.len()).into_par_iter().for_each(|i| {
                std::hint::black_box(decode(i));
            });
            Ok(())
        },
    )?);
    Ok(stages)
}

/// The stages a snapshot runs over every data byte, in pipeline order.
pub const SNAPSHOT_STAGES: [&str; 6] = [
    "read",
    "chunk-fastcdc",
    "hash-blake3-keyed",
    "index",
    "encode",
    "pack-write",
];
/// Those of them that are computation alone (no kernel, no index).
pub const COMPUTE_STAGES: [&str; 3] = ["chunk-fastcdc", "hash-blake3-keyed", "encode"];

/// The stage limit of `stages` (as [`measure_stages`] returns them) on `cores` cores.
pub fn stage_limit(stages: &[StageResult], cores: usize) -> StageLimit {
    let get = |name: &str| stages.iter().find(|s| s.name == name);
    let pick =
        |names: &[&str]| -> Vec<&StageResult> { names.iter().filter_map(|n| get(n)).collect() };
    let snapshot = pick(&SNAPSHOT_STAGES);
    let compute = pick(&COMPUTE_STAGES);
    let limit = |set: &[&StageResult], rate: fn(&StageResult) -> f64| {
        1.0 / set.iter().map(|s| 1.0 / rate(s)).sum::<f64>()
    };
    let slowest = snapshot
        .iter()
        .min_by(|a, b| {
            a.all_cores_bytes_per_sec
                .total_cmp(&b.all_cores_bytes_per_sec)
        })
        .map(|s| s.name.clone())
        .unwrap_or_default();
    StageLimit {
        snapshot_bytes_per_sec: limit(&snapshot, |s| s.all_cores_bytes_per_sec),
        snapshot_compute_bytes_per_sec: limit(&compute, |s| s.all_cores_bytes_per_sec),
        snapshot_ideal_bytes_per_sec: cores as f64 * limit(&snapshot, |s| s.one_core_bytes_per_sec),
        snapshot_slowest_stage: slowest,
        restore_bytes_per_sec: get("decode-verify").map_or(0.0, |s| s.all_cores_bytes_per_sec),
        model: "snapshot limit = 1 / (1/read + 1/chunk-fastcdc + 1/hash-blake3-keyed + 1/index + \
                1/encode + 1/pack-write), each measured on all cores: the per-byte costs of every \
                stage a snapshot runs, summed, as if the stages shared the cores perfectly with \
                no fsync and no waiting; compute limit = the same over chunk, hash and encode \
                alone; restore limit = decode-verify on all cores; all per data byte (holes and \
                zero runs cost no stage work)"
            .into(),
    }
}

fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn cpu_model() -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// CPU time this process has used so far, all threads, user and system, in seconds.
fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn end_to_end(
    size: u64,
    data_bytes: u64,
    (seconds, cpu_seconds): (f64, f64),
    new: u64,
    stored: u64,
) -> EndToEnd {
    let seconds = seconds.max(1e-9);
    EndToEnd {
        cpu_seconds,
        cores_busy: cpu_seconds / seconds,
        size,
        data_bytes,
        seconds,
        bytes_per_sec: size as f64 / seconds,
        data_bytes_per_sec: data_bytes as f64 / seconds,
        bytes_new: new,
        bytes_stored: stored,
    }
}

fn from_snapshot(r: &SnapshotReport, cpu: f64) -> EndToEnd {
    end_to_end(
        r.size,
        r.size - r.bytes_hole,
        (r.seconds, cpu),
        r.bytes_new,
        r.bytes_stored,
    )
}

/// Checks the options: the size's range, and room for the image, the store and the restore.
fn check_options(opts: &BenchOptions, parent: &Path) -> Result<()> {
    if opts.size < MIN_SIZE || opts.size > MAX_SIZE {
        return Err(StoreError::Usage(format!(
            "bench --size: a test image of {} bytes is out of range; give 1MiB to 1TiB (for example --size 256MiB)",
            opts.size
        )));
    }
    if !(opts.stage_seconds.is_finite() && opts.stage_seconds > 0.0 && opts.stage_seconds <= 60.0) {
        return Err(StoreError::Usage(format!(
            "bench --stage-seconds {}: give a number of seconds above 0 and at most 60",
            opts.stage_seconds
        )));
    }
    // The image, the store (at most about the image's data) and the restored image.
    let needed = opts.size.saturating_mul(3);
    if let Ok(st) = rustix::fs::statvfs(parent) {
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < needed {
            return Err(StoreError::Usage(format!(
                "bench --size {} needs about {} MiB free in {} (image, store and restore) and \
                 there are {} MiB; use a smaller --size or set TMPDIR to a roomier directory",
                opts.size,
                needed >> 20,
                parent.display(),
                free >> 20
            )));
        }
    }
    Ok(())
}

/// Runs the whole benchmark: the stages, then snapshot, incremental snapshot and restore of a
/// generated image in a temporary directory, which is removed before returning (also on
/// errors). The restore is compared byte for byte with the image; a difference is an error.
pub fn run(opts: &BenchOptions, progress: &dyn Progress) -> Result<BenchReport> {
    let parent = opts.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    check_options(opts, &parent)?;
    let cores = rayon::current_num_threads().max(1);
    let machine = Machine {
        cores,
        cpu: cpu_model(),
        date: fsutil::now_rfc3339(),
        load_average: load_average(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let mix = ContentMix::REALISTIC;
    let tmp = TempDir::new(&parent)?;

    // Stages: the data part of the image's mix, at most 32 MiB of it, at least 4 MiB.
    let sample_len = opts.size.clamp(4 << 20, 32 << 20) as usize;
    // The data blocks of the image in their proportions: 45:30 text to random is 60:40.
    let text = (u32::from(mix.text) * 100 / (u32::from(mix.text) + u32::from(mix.random))) as u8;
    let data_mix = ContentMix {
        text,
        random: 100 - text,
        zeros: 0,
        holes: 0,
    };
    let mut sample = vec![0u8; sample_len];
    for (i, block) in sample.chunks_mut(IMAGE_BLOCK as usize).enumerate() {
        fill_block(data_mix, 7, i as u64, block);
    }
    progress.message(&format!(
        "bench: timing each stage on a {} MiB sample, on one core and on {cores} cores",
        sample_len >> 20
    ));
    let stage_dir = tmp.0.join("stages");
    fs::create_dir(&stage_dir).map_err(StoreError::io("cannot create", &stage_dir))?;
    let stages = measure_stages(&sample, opts.stage_seconds, &stage_dir)?;
    let _ = fs::remove_dir_all(&stage_dir);
    drop(sample);
    let limit = stage_limit(&stages, cores);

    let image = tmp.0.join("disk.img");
    progress.message(&format!(
        "bench: writing a {} MiB test image in {}",
        opts.size >> 20,
        tmp.0.display()
    ));
    let content = write_image(&image, opts.size, mix, |_| 1)?;

    let identity = tmp.0.join("bench.key");
    let (store, _) = Store::init(
        &tmp.0.join("store"),
        &InitOptions {
            account: "bench".into(),
            identity: Some(identity.clone()),
            ..InitOptions::default()
        },
    )?;
    let access = store.access(Some("bench"), Some(&identity))?;
    let snap_opts = SnapshotOptions {
        source: image.clone(),
        volume: Some("bench".into()),
        ..SnapshotOptions::default()
    };
    let cpu = cpu_seconds();
    let first = store.snapshot(&access, &snap_opts, progress)?;
    let first_cpu = cpu_seconds() - cpu;

    // Change about 2% of the image: new random data in 64 KiB pieces spread over it.
    let piece = 64 << 10;
    let pieces = (opts.size / 50 / piece).max(1);
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .map_err(StoreError::io("cannot open", &image))?;
        let mut buf = vec![0u8; piece as usize];
        let mut rng = Rng::new(99);
        for i in 0..pieces {
            fill_random(1000 + i, &mut buf);
            let slots = (opts.size / piece).max(1);
            let off = (rng.next() % slots) * piece;
            let n = piece.min(opts.size - off) as usize;
            f.write_all_at(&buf[..n], off)
                .map_err(StoreError::io("cannot write", &image))?;
        }
        f.sync_all()
            .map_err(StoreError::io("cannot sync", &image))?;
    }
    let cpu = cpu_seconds();
    let second = store.snapshot(&access, &snap_opts, progress)?;
    let second_cpu = cpu_seconds() - cpu;

    let out = tmp.0.join("restored.img");
    let cpu = cpu_seconds();
    let restored = store.restore(&access, &second.id.to_string(), &out, progress)?;
    let restore_cpu = cpu_seconds() - cpu;
    progress.message("bench: comparing the restored image with the test image");
    compare_files(&image, &out).map_err(|e| {
        StoreError::Damaged(format!(
            "bench: the restore does not reproduce the image: {e}; this is a bug in blocksnap, please report it"
        ))
    })?;

    let snapshot = from_snapshot(&first, first_cpu);
    let incremental = from_snapshot(&second, second_cpu);
    let restore = end_to_end(
        restored.size,
        second.size - second.bytes_hole,
        (restored.seconds, restore_cpu),
        restored.bytes_written,
        0,
    );
    let report = BenchReport {
        machine,
        size: opts.size,
        temp_dir: tmp.0.clone(),
        image: content,
        snapshot_vs_limit: snapshot.data_bytes_per_sec / limit.snapshot_bytes_per_sec,
        restore_vs_limit: restore.data_bytes_per_sec / limit.restore_bytes_per_sec,
        stages,
        stage_limit: limit,
        snapshot,
        incremental,
        changed_bytes: pieces * piece,
        restore,
        verified: true,
    };
    drop(tmp);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoProgress;

    #[test]
    fn generated_content_is_deterministic_and_mixed() {
        let mut a = vec![0u8; 100_003];
        let mut b = vec![0u8; 100_003];
        fill_text(5, &mut a);
        fill_text(5, &mut b);
        assert_eq!(a, b);
        assert!(a.iter().all(|c| c.is_ascii()));
        fill_random(5, &mut b);
        assert_ne!(a, b);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.img");
        let c = write_image(&img, 40 << 20 | 5, ContentMix::REALISTIC, |_| 3).unwrap();
        assert_eq!(c.text + c.random + c.zeros + c.holes, 40 << 20 | 5);
        assert!(c.text > 0 && c.random > 0 && c.holes + c.zeros > 0, "{c:?}");
    }

    #[test]
    fn bad_sizes_are_usage_errors() {
        for size in [0, 1000, MAX_SIZE + 1] {
            let opts = BenchOptions {
                size,
                ..BenchOptions::default()
            };
            let e = run(&opts, &NoProgress).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Usage, "{e}");
            assert!(e.to_string().contains("--size"), "{e}");
        }
    }

    #[test]
    fn small_run_verifies_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BenchOptions {
            size: 4 << 20,
            temp_dir: Some(dir.path().into()),
            stage_seconds: 0.01,
        };
        let r = run(&opts, &NoProgress).unwrap();
        assert!(r.verified);
        assert_eq!(r.stages.len(), 8);
        for name in SNAPSHOT_STAGES {
            assert!(r.stages.iter().any(|s| s.name == name), "{name}");
        }
        assert!(r.stages.iter().all(|s| s.all_cores_bytes_per_sec > 0.0));
        assert!(r.stage_limit.snapshot_bytes_per_sec > 0.0);
        assert!(r.incremental.bytes_new > 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
