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

mod data;
mod end_to_end;
mod report;
mod stages;

use std::fs;
use std::path::{Path, PathBuf};

pub use data::{
    BlockKind, ContentMix, ImageContent, fill_block, fill_random, fill_text, write_image,
};
pub use end_to_end::first_difference;
pub use report::{BenchReport, EndToEnd, Machine, StageLimit, StageResult};
pub use stages::{COMPUTE_STAGES, SNAPSHOT_STAGES, measure_stages, stage_limit};

use crate::error::{Result, StoreError};
use crate::progress::Progress;
use end_to_end::TempDir;

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

/// Runs the whole benchmark: the stages, then snapshot, incremental snapshot and restore of a
/// generated image in a temporary directory, which is removed before returning (also on
/// errors). The restore is compared byte for byte with the image: `verified` says whether they
/// are identical, and `difference` where they first differ (the CLI then exits 1).
pub fn run(opts: &BenchOptions, progress: &dyn Progress) -> Result<BenchReport> {
    let parent = opts.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    check_options(opts, &parent)?;
    let machine = Machine::now();
    let mix = ContentMix::REALISTIC;
    let tmp = TempDir::new(&parent)?;
    let stages = time_stages(opts, mix, machine.cores, &tmp.0, progress)?;
    let limit = stage_limit(&stages, machine.cores);
    let runs = end_to_end::run_all(opts.size, mix, &tmp.0, progress)?;
    let report = BenchReport {
        machine,
        size: opts.size,
        temp_dir: tmp.0.clone(),
        image: runs.image,
        snapshot_vs_limit: runs.snapshot.data_bytes_per_sec / limit.snapshot_bytes_per_sec,
        restore_vs_limit: runs.restore.data_bytes_per_sec / limit.restore_bytes_per_sec,
        stages,
        stage_limit: limit,
        snapshot: runs.snapshot,
        incremental: runs.incremental,
        changed_bytes: runs.changed_bytes,
        restore: runs.restore,
        verified: runs.difference.is_none(),
        difference: runs.difference,
    };
    drop(tmp);
    Ok(report)
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

/// Times every stage on a sample of the data part of `mix` (at most 32 MiB of it, at least
/// 4 MiB), in a directory under `dir` removed afterwards.
fn time_stages(
    opts: &BenchOptions,
    mix: ContentMix,
    cores: usize,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<Vec<StageResult>> {
    let sample_len = opts.size.clamp(4 << 20, 32 << 20) as usize;
    let sample = data::data_sample(mix, sample_len);
    progress.message(&format!(
        "bench: timing each stage on a {} MiB sample, on one core and on {cores} cores",
        sample_len >> 20
    ));
    let stage_dir = dir.join("stages");
    fs::create_dir(&stage_dir).map_err(StoreError::io("cannot create", &stage_dir))?;
    let stages = measure_stages(&sample, opts.stage_seconds, &stage_dir)?;
    let _ = fs::remove_dir_all(&stage_dir);
    Ok(stages)
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
    fn the_comparison_finds_the_first_difference() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut bytes = vec![0u8; (3 << 20) + 7];
        fill_random(1, &mut bytes);
        fs::write(&a, &bytes).unwrap();
        fs::write(&b, &bytes).unwrap();
        assert_eq!(first_difference(&a, &b).unwrap(), None);
        // One byte in the second MiB: its offset is named.
        bytes[(1 << 20) + 5] ^= 1;
        fs::write(&b, &bytes).unwrap();
        let d = first_difference(&a, &b).unwrap().expect("they differ");
        assert!(
            d.contains(&format!("differ at byte {}", (1 << 20) + 5)),
            "{d}"
        );
        fs::write(&b, &bytes[..100]).unwrap();
        let d = first_difference(&a, &b).unwrap().expect("they differ");
        assert!(d.ends_with("has 100"), "{d}");
        // A file that cannot be read is an error, not a difference.
        assert!(first_difference(&a, &dir.path().join("missing")).is_err());
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
