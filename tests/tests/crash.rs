//! Crash safety: a snapshot killed with SIGKILL at many moments leaves the store valid; every
//! snapshot committed before stays restorable, and the next snapshot completes.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn snapshot_killed_at_twenty_moments_loses_nothing_committed() {
    // How long an uninterrupted snapshot of the big image takes, measured in a scratch store,
    // so the kills spread over the whole run.
    let probe = Env::new("crash_snapshot_probe");
    probe.init(&[]);
    let big = probe.path("big.img");
    write_at(&big, 160 << 20, 0, &random_bytes(120 << 20, 32));
    let started = Instant::now();
    probe.snapshot(&big, "probe");
    let duration = started.elapsed().max(Duration::from_millis(200));

    let env2 = Env::new("crash_snapshot");
    env2.init(&[]);
    let tree = env2.path("tree");
    make_tree(&tree, 60, 31);
    let base = env2.path("base.img");
    make_ext4(&base, 96 << 20, &tree);
    let committed2 = env2.snapshot(&base, "disk");
    let committed2_id = committed2["id"].as_str().unwrap().to_string();

    let mut killed_mid_run = 0;
    for i in 0..20u64 {
        let delay = duration.mul_f64((i as f64 + 0.5) / 20.0);
        let mut child = env2
            .cmd()
            .args([
                "-q",
                "snapshot",
                "create",
                big.to_str().unwrap(),
                "--volume",
                "big",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The store is valid: check passes (unreferenced packs are allowed), the committed
        // snapshot restores byte-identical.
        let out = env2.run(&["--json", "check"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "after kill {i}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        if i % 5 == 4 {
            let r = env2.path("r.img");
            env2.restore(&committed2_id, &r);
            assert_same(&base, &r);
            std::fs::remove_file(&r).unwrap();
        }
    }
    assert!(
        killed_mid_run >= 10,
        "only {killed_mid_run} kills landed mid-run"
    );
    // The next snapshot completes and restores; every snapshot listed is complete.
    let done = env2.snapshot(&big, "big");
    let r = env2.path("big-r.img");
    env2.restore(done["id"].as_str().unwrap(), &r);
    assert_same(&big, &r);
    let out = env2.run(&["--json", "check", "--read-data"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
