//! What `blocksnap bench` reports (its `--json` output): the machine, each stage, the stage
//! limit and the end-to-end runs.

use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use super::data::ImageContent;
use crate::fsutil;

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
    /// Snapshot: `1 / Σ 1/stage` over [`SNAPSHOT_STAGES`](super::SNAPSHOT_STAGES), all-cores figures, data bytes per
    /// second.
    pub snapshot_bytes_per_sec: f64,
    /// The same over [`COMPUTE_STAGES`](super::COMPUTE_STAGES) alone (chunk, hash, encode): the ceiling if reading,
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
    /// The restored image was compared byte for byte with the image and is identical (false:
    /// `difference` says where they differ).
    pub verified: bool,
    /// Where the restored image first differs from the image, when it does (not in the JSON:
    /// `verified` is false, and the CLI says it in its error).
    #[serde(skip)]
    pub difference: Option<String>,
    /// Measured first snapshot (data bytes per second) / the stage limit.
    pub snapshot_vs_limit: f64,
    /// Measured restore (data bytes per second) / the restore limit.
    pub restore_vs_limit: f64,
}

impl Machine {
    /// This machine, now.
    pub(super) fn now() -> Machine {
        Machine {
            cores: rayon::current_num_threads().max(1),
            cpu: cpu_model(),
            date: fsutil::now_rfc3339(),
            load_average: load_average(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
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
