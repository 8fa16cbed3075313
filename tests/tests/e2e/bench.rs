//! `blocksnap bench`: every stage and end-to-end figure is there, the restore was verified, and
//! the temporary files are gone. No timing assertions: the figures depend on the machine.

use crate::common::*;

fn positive(v: &serde_json::Value, field: &str) -> f64 {
    let x = v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no numeric field {field} in {v}"));
    assert!(x > 0.0 && x.is_finite(), "{field} = {x} in {v}");
    x
}

#[test]
fn bench_json_reports_every_stage_and_a_verified_restore() {
    let env = Env::new("bench_json");
    let tmp = env.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = env
        .cmd()
        .env("TMPDIR", &tmp)
        .args(["bench", "--size", "16MiB", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "bench failed: {}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    assert_eq!(r["size"], 16 << 20);
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
    let stages = r["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "read",
            "chunk-fastcdc",
            "chunk-fixed",
            "hash-blake3-keyed",
            "index",
            "encode",
            "pack-write",
            "decode-verify"
        ]
    );
    for s in stages {
        positive(s, "one_core_bytes_per_sec");
        positive(s, "all_cores_bytes_per_sec");
    }
    positive(&r["stage_limit"], "snapshot_bytes_per_sec");
    positive(&r["stage_limit"], "snapshot_compute_bytes_per_sec");
    positive(&r["stage_limit"], "restore_bytes_per_sec");
    // Every stage of the snapshot limit is in the compute limit's sum or adds to it.
    assert!(
        r["stage_limit"]["snapshot_bytes_per_sec"].as_f64().unwrap()
            < r["stage_limit"]["snapshot_compute_bytes_per_sec"]
                .as_f64()
                .unwrap()
    );
    for run in ["snapshot", "incremental", "restore"] {
        positive(&r[run], "seconds");
        positive(&r[run], "bytes_per_sec");
        positive(&r[run], "data_bytes_per_sec");
        positive(&r[run], "cpu_seconds");
        positive(&r[run], "cores_busy");
        assert_eq!(r[run]["size"], 16 << 20, "{run}");
    }
    positive(&r, "snapshot_vs_limit");
    positive(&r, "restore_vs_limit");
    // The first snapshot stores all the data; the incremental one only about what changed.
    let data = r["snapshot"]["data_bytes"].as_u64().unwrap();
    assert_eq!(r["snapshot"]["bytes_new"].as_u64().unwrap(), data);
    let new = r["incremental"]["bytes_new"].as_u64().unwrap();
    assert!(
        new > 0 && new < data / 4,
        "incremental stored {new} of {data}"
    );
    assert_eq!(r["verified"], true);
    // Everything it made in TMPDIR is gone.
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn bench_rejects_sizes_out_of_range() {
    let env = Env::new("bench_sizes");
    for size in ["0", "1000", "2TiB"] {
        let out = env.run(&["bench", "--size", size]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--size {size}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("1MiB to 1TiB"), "{}", stderr(&out));
    }
}
