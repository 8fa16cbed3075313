//! Crash safety: a snapshot killed with SIGKILL at many moments leaves the store valid; every
//! snapshot committed before stays restorable, and the next snapshot completes.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// The two tests time a clean run and then kill runs at fractions of that time: run side by side
/// they would disturb each other's timing, so they take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `cmd`, sends SIGKILL after `delay`; true if it was still running then.
fn kill_after(mut cmd: std::process::Command, delay: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    running
}

/// `check` exits 0 on the store (unreferenced packs and temporary files are allowed).
fn assert_check_passes(env: &Env, when: &str) {
    let out = env.run(&["--json", "check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{when}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[test]
fn snapshot_killed_at_twenty_moments_loses_nothing_committed() {
    let _turn = one_at_a_time();
    // How long an uninterrupted snapshot of the big image takes, measured in a scratch store,
    // so the kills spread over the whole run.
    let probe = Env::new("crash_snapshot_probe");
    probe.init(&[]);
    // A real ext4 image of about 110 MiB of files, mostly new to the store under test.
    let big_tree = probe.path("big-tree");
    make_tree(&big_tree, 150, 32);
    let big = probe.path("big.img");
    make_ext4(&big, 256 << 20, &big_tree);
    let started = Instant::now();
    probe.snapshot(&big, "probe");
    let mut duration = started.elapsed().max(Duration::from_millis(200));

    let env2 = Env::new("crash_snapshot");
    env2.init(&[]);
    let tree = env2.path("tree");
    make_tree(&tree, 60, 31);
    let base = env2.path("base.img");
    make_ext4(&base, 96 << 20, &tree);
    let committed2 = env2.snapshot(&base, "disk");
    let committed2_id = committed2["id"].as_str().unwrap().to_string();
    // Every kill starts from this state, so the kill points spread over a whole run (a run after
    // a killed one is shorter: it reuses what the killed run stored).
    let template = env2.path("template");
    copy_dir(&env2.store, &template);

    let mut killed_mid_run = 0;
    for i in 0..20u64 {
        copy_dir(&template, &env2.store);
        let delay = duration.mul_f64((i as f64 + 0.5) / 20.0);
        let mut cmd = env2.cmd();
        cmd.args([
            "-q",
            "snapshot",
            "create",
            big.to_str().unwrap(),
            "--volume",
            "big",
        ]);
        let mid_run = kill_after(cmd, delay);
        killed_mid_run += u32::from(mid_run);
        if !mid_run {
            // The run was quicker than the probe: aim the later kills earlier.
            duration = duration.mul_f64(0.8);
        }
        // The store is valid: check passes (unreferenced packs are allowed), the committed
        // snapshot restores byte-identical.
        assert_check_passes(&env2, &format!("after kill {i}"));
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
    // The next snapshot completes and restores; every snapshot listed is complete. Prune then
    // reclaims what the killed runs left: the store ends the size of a clean one, give or take.
    let done = env2.snapshot(&big, "big");
    env2.json(&["prune"]);
    let store_size: u64 = env2
        .packs()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let clean: u64 = probe
        .packs()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum::<u64>()
        + committed2["bytes_stored"].as_u64().unwrap();
    assert!(
        store_size <= clean + clean / 5,
        "after kills and prune the store holds {store_size}, a clean one {clean}"
    );
    let leftovers = std::fs::read_dir(env2.store.join("packs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-")
        });
    assert_eq!(
        leftovers.count(),
        0,
        "prune removes the temporary packs of killed runs"
    );
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

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A prune killed at twenty moments, each time on a fresh copy of the same store: afterwards
/// `check` passes, the live snapshot restores byte-identical, and a new prune completes.
#[test]
fn prune_killed_at_twenty_moments_loses_nothing_live() {
    let _turn = one_at_a_time();
    let env = Env::new("crash_prune");
    env.init(&[]);
    // Real ext4 images: `mixed` holds files A and B, `keep` holds only A, `gone` holds C. After
    // deleting mixed and gone, prune deletes C's packs and rewrites the packs mixing A and B.
    let (tree_mixed, tree_keep, tree_gone) =
        (env.path("t-mixed"), env.path("t-keep"), env.path("t-gone"));
    make_tree(&tree_mixed.join("a"), 12, 80);
    make_tree(&tree_mixed.join("b"), 60, 81);
    make_tree(&tree_keep.join("a"), 12, 80);
    make_tree(&tree_gone, 60, 82);
    let (mixed, keep_img, gone_img) = (
        env.path("mixed.img"),
        env.path("keep.img"),
        env.path("gone.img"),
    );
    make_ext4(&mixed, 128 << 20, &tree_mixed);
    make_ext4(&keep_img, 64 << 20, &tree_keep);
    make_ext4(&gone_img, 128 << 20, &tree_gone);
    let m = env.snapshot(&mixed, "mixed");
    let keep = env.snapshot(&keep_img, "keep");
    let g = env.snapshot(&gone_img, "gone");
    for s in [&m, &g] {
        env.json(&["snapshot", "delete", s["id"].as_str().unwrap()]);
    }
    env.json(&["trash", "empty"]);
    let keep_id = keep["id"].as_str().unwrap().to_string();

    let template = env.path("template");
    copy_dir(&env.store, &template);
    let started = Instant::now();
    let full = env.json(&["prune"]);
    let mut duration = started.elapsed().max(Duration::from_millis(100));
    assert!(
        full["packs_deleted"].as_u64().unwrap() >= 1
            && full["packs_rewritten"].as_u64().unwrap() >= 1,
        "{full}"
    );

    let mut killed_mid_run = 0;
    for i in 0..20u64 {
        copy_dir(&template, &env.store);
        let delay = duration.mul_f64((i as f64 + 0.5) / 20.0);
        let mut cmd = env.cmd();
        cmd.args(["-q", "prune"]);
        let mid_run = kill_after(cmd, delay);
        killed_mid_run += u32::from(mid_run);
        if !mid_run {
            duration = duration.mul_f64(0.8);
        }
        assert_check_passes(&env, &format!("after kill {i}"));
        if i % 4 == 3 {
            let r = env.path("r.img");
            env.restore(&keep_id, &r);
            assert_same(&keep_img, &r);
            std::fs::remove_file(&r).unwrap();
            // The next prune completes and leaves a sound store.
            env.json(&["prune"]);
            let out = env.run(&["--json", "check", "--read-data"]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "after kill {i} and prune: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    assert!(
        killed_mid_run >= 10,
        "only {killed_mid_run} kills landed mid-run"
    );
}
