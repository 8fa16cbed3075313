//! Each stage of the pipeline timed on its own, on one core and on all cores, and the stage
//! limit they allow (see the module documentation of `bench`).

use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use blocksnap_chunker::{Chunker, ChunkerParams};
use blocksnap_index::{Index, Location};
use blocksnap_manifest::{ChunkId, KeyId, PackId};
use blocksnap_pack::{ChunkCodec, DataKey, PackCipher, PackWriter, nonce_for};
use rayon::prelude::*;

use super::report::{StageLimit, StageResult};
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::repo::{DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL};

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

/// Measures every stage on `sample` with the settings of a default store; the I/O and index
/// stages use files in `dir`.
pub fn measure_stages(sample: &[u8], min_seconds: f64, dir: &Path) -> Result<Vec<StageResult>> {
    let t = Timing {
        min_seconds,
        cores: rayon::current_num_threads().max(1),
        bytes: sample.len() as u64,
    };
    let cdc = Chunker::new(ChunkerParams::cdc(DEFAULT_CHUNK_SIZE)).expect("default is valid");
    let fixed = Chunker::new(ChunkerParams::fixed(DEFAULT_CHUNK_SIZE)).expect("default is valid");
    let codec = StageCodec::new();

    let mut stages = vec![read_stage(&t, sample, &cdc, dir)?];
    stages.extend(chunk_stages(&t, sample, &cdc, &fixed)?);
    let chunks = cut(&cdc, sample);
    stages.push(hash_stage(&t, &codec, &chunks)?);
    let ids: Vec<ChunkId> = chunks.iter().map(|c| codec.codec.chunk_id(c)).collect();
    stages.push(index_stage(&t, &chunks, &ids, dir)?);
    stages.push(encode_stage(&t, &codec, &chunks, &ids)?);
    let records: Vec<Vec<u8>> = (0..chunks.len())
        .map(|i| codec.encode(i, chunks[i], &ids[i]))
        .collect();
    let encoded = Encoded {
        chunks: &chunks,
        ids: &ids,
        records: &records,
    };
    stages.push(pack_write_stage(&t, &codec, &encoded, dir)?);
    stages.push(decode_stage(&t, &codec, &encoded)?);
    Ok(stages)
}

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

/// How the stages are timed: for at least `min_seconds` each, on one core and on `cores`.
struct Timing {
    min_seconds: f64,
    cores: usize,
    /// The sample's length: the bytes of one pass of every stage but `read`.
    bytes: u64,
}

impl Timing {
    /// Times one stage: `one` on the calling thread, then `all` on rayon's pool, each one pass
    /// over `bytes` bytes.
    fn stage(
        &self,
        name: &str,
        description: &str,
        bytes: u64,
        one: impl FnMut() -> Result<()>,
        all: impl FnMut() -> Result<()>,
    ) -> Result<StageResult> {
        let one_core = throughput(bytes, self.min_seconds, one)?;
        let all_cores = throughput(bytes, self.min_seconds, all)?;
        Ok(StageResult {
            name: name.into(),
            description: description.into(),
            sample_bytes: bytes,
            one_core_bytes_per_sec: one_core,
            all_cores_bytes_per_sec: all_cores,
            speedup: all_cores / one_core,
        })
    }

    /// Times a stage that does `f(i)` for every `i` below `n` (one chunk each), in turn on one
    /// core and spread over the pool on all.
    fn per_chunk<T>(
        &self,
        name: &str,
        description: &str,
        n: usize,
        f: impl Fn(usize) -> T + Sync,
    ) -> Result<StageResult> {
        self.stage(
            name,
            description,
            self.bytes,
            || {
                (0..n).for_each(|i| {
                    std::hint::black_box(f(i));
                });
                Ok(())
            },
            || {
                (0..n).into_par_iter().for_each(|i| {
                    std::hint::black_box(f(i));
                });
                Ok(())
            },
        )
    }

    /// The part of `0..len` that core `c` of [`Timing::cores`] works on.
    fn share(&self, c: usize, len: usize) -> Range<usize> {
        let per_core = len.div_ceil(self.cores).max(1);
        (c * per_core).min(len)..((c + 1) * per_core).min(len)
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

/// A default store's chunk codec under a random key, and the cipher of one pack.
struct StageCodec {
    codec: ChunkCodec,
    cipher: PackCipher,
}

impl StageCodec {
    fn new() -> Self {
        let codec = ChunkCodec::encrypted(
            KeyId(0),
            DataKey::from_bytes(fsutil::random_bytes()),
            DEFAULT_COMPRESSION_LEVEL,
        );
        let cipher = codec
            .pack_cipher(&fsutil::random_bytes())
            .expect("an encrypted codec has a cipher");
        StageCodec { codec, cipher }
    }

    /// The record of chunk `i` of a pack: compressed, then sealed.
    fn encode(&self, i: usize, chunk: &[u8], id: &ChunkId) -> Vec<u8> {
        let mut rec = self.codec.compress(chunk);
        self.cipher
            .seal(&nonce_for(i as u64), id.as_bytes(), &mut rec);
        rec
    }
}

/// The sample cut into chunks, their ids and their encoded records.
struct Encoded<'a> {
    chunks: &'a [&'a [u8]],
    ids: &'a [ChunkId],
    records: &'a [Vec<u8>],
}

/// The sample's FastCDC chunks.
fn cut<'a>(cdc: &Chunker, sample: &'a [u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut p = 0;
    for len in cdc.cut(sample, 0, true) {
        chunks.push(&sample[p..p + len]);
        p += len;
    }
    chunks
}

/// Reading: the sample as a file (in the page cache: just written), read back the way the
/// snapshot reader does, in positioned reads of its read size into successive slots of a
/// buffer of its window's size. The file holds the sample four times, so that it is larger
/// than the CPU's caches are likely to be, as an image is.
fn read_stage(t: &Timing, sample: &[u8], cdc: &Chunker, dir: &Path) -> Result<StageResult> {
    let sample_path = dir.join("stage-sample");
    {
        let mut f =
            File::create(&sample_path).map_err(StoreError::io("cannot create", &sample_path))?;
        for _ in 0..4 {
            std::io::Write::write_all(&mut f, sample)
                .map_err(StoreError::io("cannot write", &sample_path))?;
        }
    }
    let file_len = t.bytes * 4;
    let file_segment = file_len.div_ceil(t.cores as u64).max(1);
    let sample_file =
        File::open(&sample_path).map_err(StoreError::io("cannot open", &sample_path))?;
    let (window, read_size) = crate::snapshot::source::read_sizes(cdc);
    let read_range = |range: Range<u64>| -> Result<()> {
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
    let result = t.stage(
        "read",
        &format!(
            "{} KiB positioned reads of a file in the page cache (the kernel's copy)",
            read_size >> 10
        ),
        file_len,
        || read_range(0..file_len),
        || {
            (0..t.cores as u64).into_par_iter().try_for_each(|i| {
                read_range(i * file_segment..((i + 1) * file_segment).min(file_len))
            })
        },
    )?;
    drop(sample_file);
    let _ = fs::remove_file(&sample_path);
    Ok(result)
}

/// Chunking, content-defined and fixed-size; on all cores the sample is cut in one segment per
/// core, each on its own.
fn chunk_stages(
    t: &Timing,
    sample: &[u8],
    cdc: &Chunker,
    fixed: &Chunker,
) -> Result<Vec<StageResult>> {
    let segment = sample.len().div_ceil(t.cores).max(1);
    [
        (
            "chunk-fastcdc",
            "FastCDC 2020 cut points, 32 KiB average",
            cdc,
        ),
        (
            "chunk-fixed",
            "fixed-size cut points, 32 KiB (reads no data: a cost per chunk, not per byte)",
            fixed,
        ),
    ]
    .into_iter()
    .map(|(name, description, chunker)| {
        t.stage(
            name,
            description,
            t.bytes,
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
        )
    })
    .collect()
}

/// Chunk ids: keyed BLAKE3 of every chunk.
fn hash_stage(t: &Timing, codec: &StageCodec, chunks: &[&[u8]]) -> Result<StageResult> {
    t.per_chunk(
        "hash-blake3-keyed",
        "chunk ids: BLAKE3 keyed with the data key's subkey",
        chunks.len(),
        |i| codec.codec.chunk_id(chunks[i]),
    )
}

/// The index: a lookup of every chunk (a miss, as in a first snapshot) and an insert of each,
/// a pack's worth at a time, into a sled index like a store's. Every pass uses new ids (the
/// pass number mixed into the first bytes).
fn index_stage(t: &Timing, chunks: &[&[u8]], ids: &[ChunkId], dir: &Path) -> Result<StageResult> {
    let index_path = dir.join("stage-index");
    let index = Index::open(&index_path, std::time::Duration::ZERO, |_| {})?;
    let pass = AtomicU64::new(0);
    let index_pass = |range: Range<usize>, n: u64| -> Result<()> {
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
    let next_pass = || pass.fetch_add(1, Ordering::Relaxed);
    let result = t.stage(
        "index",
        "sled index: a lookup of every chunk id (a miss) and an insert of each",
        t.bytes,
        || index_pass(0..ids.len(), next_pass()),
        || {
            let n = next_pass();
            (0..t.cores)
                .into_par_iter()
                .try_for_each(|c| index_pass(t.share(c, ids.len()), n))
        },
    )?;
    drop(index);
    Ok(result)
}

/// Encoding: zstd, then AES-256-GCM, every chunk.
fn encode_stage(
    t: &Timing,
    codec: &StageCodec,
    chunks: &[&[u8]],
    ids: &[ChunkId],
) -> Result<StageResult> {
    t.per_chunk(
        "encode",
        "zstd level 3 (raw when it does not shrink), then AES-256-GCM",
        chunks.len(),
        |i| codec.encode(i, chunks[i], &ids[i]),
    )
}

/// Writing packs: the encoded records appended to a pack file (through the page cache, with
/// the pack's BLAKE3 id), trailer and all; no fsync, which waits for the disk on the closer's
/// thread, not for the CPU. On all cores each core writes its share to a pack of its own.
fn pack_write_stage(
    t: &Timing,
    codec: &StageCodec,
    e: &Encoded<'_>,
    dir: &Path,
) -> Result<StageResult> {
    let n = e.chunks.len();
    t.stage(
        "pack-write",
        "encoded records appended to a pack file with its BLAKE3 id (page cache, no fsync)",
        t.bytes,
        || write_pack(&dir.join("stage-pack-0"), &codec.codec, e, 0..n),
        || {
            (0..t.cores).into_par_iter().try_for_each(|c| {
                write_pack(
                    &dir.join(format!("stage-pack-{c}")),
                    &codec.codec,
                    e,
                    t.share(c, n),
                )
            })
        },
    )
}

/// Writes the records `range` of `e` as one pack at `path`.
fn write_pack(path: &Path, codec: &ChunkCodec, e: &Encoded<'_>, range: Range<usize>) -> Result<()> {
    let file = File::create(path).map_err(StoreError::io("cannot create", path))?;
    let pack_error = |err: blocksnap_pack::PackError| {
        StoreError::Other(format!("cannot write pack {}: {err}", path.display()))
    };
    let mut w = PackWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, file),
        codec,
        [0u8; 32],
    )
    .map_err(pack_error)?;
    for i in range {
        let offset = w.offset();
        w.write_sealed(offset, e.ids[i], e.chunks[i].len() as u32, &e.records[i])
            .map_err(pack_error)?;
    }
    let (out, ..) = w.finish().map_err(pack_error)?;
    out.into_inner()
        .map_err(|err| StoreError::io("cannot write", path)(err.into_error()))?;
    Ok(())
}

/// Decoding: AES-256-GCM open, zstd decompress and the id check, every record.
fn decode_stage(t: &Timing, codec: &StageCodec, e: &Encoded<'_>) -> Result<StageResult> {
    t.per_chunk(
        "decode-verify",
        "AES-256-GCM open, zstd decompress, BLAKE3 id check",
        e.chunks.len(),
        |i| {
            codec
                .codec
                .decode(
                    Some(&codec.cipher),
                    &e.ids[i],
                    i as u64,
                    e.chunks[i].len() as u32,
                    e.records[i].clone(),
                )
                .expect("a record just encoded decodes")
        },
    )
}
