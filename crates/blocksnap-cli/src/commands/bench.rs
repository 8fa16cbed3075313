//! `blocksnap bench`: measure this machine's stages and an end-to-end run. Needs no store.

use clap::Args;

use crate::Ctx;
use crate::parse::human;

/// `bench --help`: what is measured, and how the limits are computed.
pub(crate) const BENCH_ABOUT: &str = "\
Measure this machine: each stage's throughput on one core and on all cores, then an end-to-end \
snapshot, incremental snapshot and restore of a generated image. Needs no store.

Stages run on a sample of generated data with a default store's settings: read (the \
snapshot reader's positioned reads of a file in the page cache), FastCDC and fixed-size chunking \
(32 KiB), keyed BLAKE3 chunk ids, index (a sled lookup and an insert per chunk), encode (zstd \
level 3 + \
AES-256-GCM), pack-write (records appended to a pack file with its BLAKE3 id, no fsync), and \
decode + verify.

End to end: a SIZE-byte image (45% text-like, 30% random, 10% written zeros, 15% unallocated) is \
written to a temporary directory under TMPDIR, snapshotted into a fresh encrypted store, changed \
in about 2% of its bytes and snapshotted again, and that snapshot is restored and compared byte \
for byte with the image. The directory is removed afterwards; it needs about 3 x SIZE of space. \
The image is read from the page cache (it was just written), so disk reads are not measured; \
pack and restore fsyncs are. CORES is the CPU time a run used over its wall time.

Stage limit: the snapshot throughput the work of its stages allows, 1 / (1/read + 1/chunk + \
1/hash + 1/index + 1/encode + 1/pack-write) with each stage measured on all cores: the per-byte \
costs summed, as if the stages shared the cores perfectly with no fsync or waiting. The compute \
limit is the same sum over chunk, hash and encode alone. Both count data bytes (holes and zero \
runs cost no stage work), and so do the ratios of the measured snapshot to them. The restore \
limit is decode + verify on all cores.";

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Size of the generated test image (1MiB to 1TiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::parse::size, default_value = "256MiB")]
    pub(crate) size: u64,
    /// Minimum time of each stage measurement, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.5)]
    pub(crate) stage_seconds: f64,
}

/// Bytes per second for people: `123.4 MiB/s`.
fn rate(bytes_per_sec: f64) -> String {
    if bytes_per_sec >= f64::from(1u32 << 30) {
        format!("{:.2} GiB/s", bytes_per_sec / f64::from(1u32 << 30))
    } else {
        format!("{:.1} MiB/s", bytes_per_sec / f64::from(1u32 << 20))
    }
}

pub(crate) fn run(ctx: &Ctx<'_>, a: &BenchArgs) -> anyhow::Result<()> {
    use blocksnap_store::bench::{self, BenchOptions};
    let opts = BenchOptions {
        size: a.size,
        stage_seconds: a.stage_seconds,
        ..BenchOptions::default()
    };
    let r = bench::run(&opts, &ctx.progress)?;
    ctx.output(&r, || {
        let m = &r.machine;
        let cores = format!("{} cores", m.cores);
        let load = m.load_average.map_or(String::new(), |l| {
            format!(", load average {:.2} {:.2} {:.2}", l[0], l[1], l[2])
        });
        let mut t = format!(
            "blocksnap {} bench on {} ({}), {}{load}\n\n",
            m.version,
            m.cpu.as_deref().unwrap_or("unknown CPU"),
            cores,
            m.date
        );
        t += &format!(
            "{:<19} {:>13} {:>13} {:>8}  {}\n",
            "STAGE", "ONE CORE", cores.to_uppercase(), "SPEEDUP", "WHAT"
        );
        for s in &r.stages {
            t += &format!(
                "{:<19} {:>13} {:>13} {:>7.2}x  {}\n",
                s.name,
                rate(s.one_core_bytes_per_sec),
                rate(s.all_cores_bytes_per_sec),
                s.speedup,
                s.description
            );
        }
        let l = &r.stage_limit;
        t += &format!(
            "\nstage limit, snapshot: {} of data on {} (1/(1/read + 1/chunk + 1/hash + 1/index + \
             1/encode + 1/pack-write); slowest stage: {}; {} if one core's work scaled perfectly)\n\
             compute limit:         {} (chunk, hash and encode alone)\n\
             stage limit, restore:  {} of data (decode-verify on {})\n",
            rate(l.snapshot_bytes_per_sec),
            cores,
            l.snapshot_slowest_stage,
            rate(l.snapshot_ideal_bytes_per_sec),
            rate(l.snapshot_compute_bytes_per_sec),
            rate(l.restore_bytes_per_sec),
            cores,
        );
        let i = &r.image;
        t += &format!(
            "\nend to end: a {} image in {}: {} text-like, {} random, {} written zeros, {} unallocated\n",
            human(r.size),
            r.temp_dir.display(),
            human(i.text),
            human(i.random),
            human(i.zeros),
            human(i.holes)
        );
        t += &format!(
            "{:<30} {:>8} {:>6} {:>13} {:>13} {:>10} {:>10}\n",
            "RUN", "SECONDS", "CORES", "IMAGE", "DATA", "NEW", "STORED"
        );
        let changed = format!("incremental ({} changed)", human(r.changed_bytes));
        for (name, e) in [
            ("snapshot, fresh store", &r.snapshot),
            (changed.as_str(), &r.incremental),
            ("restore of the incremental", &r.restore),
        ] {
            t += &format!(
                "{:<30} {:>8.2} {:>6.2} {:>13} {:>13} {:>10} {:>10}\n",
                name,
                e.seconds,
                e.cores_busy,
                rate(e.bytes_per_sec),
                rate(e.data_bytes_per_sec),
                human(e.bytes_new),
                if std::ptr::eq(e, &r.restore) {
                    "-".to_string()
                } else {
                    human(e.bytes_stored)
                }
            );
        }
        t += &format!(
            "\nthe snapshot reached {:.0}% of the snapshot stage limit ({:.0}% of the compute \
             limit) and the restore {:.0}% of the restore limit (data bytes per second);\nthe \
             restore was compared byte for byte with the image: {}",
            r.snapshot_vs_limit * 100.0,
            r.snapshot.data_bytes_per_sec / l.snapshot_compute_bytes_per_sec * 100.0,
            r.restore_vs_limit * 100.0,
            if r.verified { "identical" } else { "DIFFERENT" }
        );
        t
    })?;
    match &r.difference {
        // After the report, whose `verified` is false: exit 1.
        Some(d) => Err(blocksnap_store::StoreError::Damaged(format!(
            "bench: the restore does not reproduce the image: {d}; this is a bug in blocksnap, \
             please report it"
        ))
        .into()),
        None => Ok(()),
    }
}
