//! Lock objects (`locks/*.json`): locks of other hosts stop conflicting commands with a message
//! that names the holder, its age and `blocksnap unlock --all`; locks left by dead processes of
//! this host are removed automatically with a note; damaged lock files never cause a panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// This host's name as blocksnap records it (plain host names are kept as they are).
fn this_host() -> String {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = h.trim();
    if h.is_empty() {
        "localhost".into()
    } else {
        h.into()
    }
}

/// Writes a lock object by hand, as a blocksnap on `host` would.
fn put_lock(env: &Env, file: &str, host: &str, pid: u32, kind: &str, command: &str) -> PathBuf {
    let dir = env.store.join("locks");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    let doc = serde_json::json!({
        "format": "blocksnap.lock/v1",
        "host": host,
        "pid": pid,
        "kind": kind,
        "command": command,
        "started": "2020-01-01T00:00:00.000Z",
    });
    fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

/// The lock objects in the store (not the flock file, not temporary files).
fn lock_objects(env: &Env) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(env.store.join("locks"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".json") && !n.starts_with(".tmp-")
        })
        .collect();
    v.sort();
    v
}

fn image(env: &Env, name: &str, seed: u64) -> PathBuf {
    let img = env.path(name);
    write_at(&img, 16 << 20, 1 << 20, &random_bytes(2 << 20, seed));
    img
}

fn create_args(img: &Path) -> Vec<&str> {
    vec![
        "snapshot",
        "create",
        img.to_str().unwrap(),
        "--volume",
        "disk",
    ]
}

fn assert_no_panic(out: &std::process::Output) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn exclusive_lock_of_another_host_stops_a_snapshot_until_unlock_all() {
    let env = Env::new("locks_other_exclusive");
    env.init(&[]);
    let img = image(&env, "d.img", 1);
    let theirs = put_lock(
        &env,
        "otherhost-4242-aa.json",
        "otherhost",
        4242,
        "exclusive",
        "prune",
    );

    let out = env.run(&create_args(&img));
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    for part in [
        "otherhost",
        "pid 4242",
        "prune (exclusive)",
        "started 2020-01-01T00:00:00.000Z",
        " d ago)",
        "`blocksnap unlock --all`",
    ] {
        assert!(err.contains(part), "the error lacks {part:?}:\n{err}");
    }
    // The failed command removed its own lock object and left theirs.
    assert_eq!(lock_objects(&env), vec![theirs.clone()]);
    assert!(
        env.json(&["snapshot", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Plain `unlock` keeps another host's lock; `--all` removes it and says so.
    let kept = env.json(&["unlock"]);
    assert_eq!(kept["removed"].as_array().unwrap().len(), 0, "{kept}");
    assert_eq!(kept["kept"][0]["host"], "otherhost", "{kept}");
    assert_eq!(kept["kept"][0]["status"], "other_host", "{kept}");
    let r = env.json(&["unlock", "--all"]);
    let removed = r["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{r}");
    assert_eq!(removed[0]["host"], "otherhost");
    assert_eq!(removed[0]["pid"], 4242);
    assert_eq!(removed[0]["kind"], "exclusive");
    assert_eq!(removed[0]["command"], "prune");
    assert!(removed[0]["age_seconds"].as_u64().unwrap() > 86_400);
    assert!(!theirs.exists());

    let s = env.json(&create_args(&img));
    let out_img = env.path("r.img");
    env.restore(s["id"].as_str().unwrap(), &out_img);
    assert_same(&img, &out_img);
    assert!(lock_objects(&env).is_empty(), "commands remove their locks");
}

#[test]
fn lock_of_a_dead_process_of_this_host_is_removed_with_a_note() {
    let env = Env::new("locks_dead_pid");
    env.init(&[]);
    let img = image(&env, "d.img", 2);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let stale = put_lock(&env, "stale.json", &this_host(), pid, "shared", "snapshot");

    let out = env
        .cmd()
        .arg("--json")
        .args(create_args(&img))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "removed a stale lock of pid {pid} (snapshot, started 2020-01-01T00:00:00.000Z, "
        )) && err.contains("its process is gone"),
        "{err}"
    );
    assert!(!stale.exists());
    assert!(lock_objects(&env).is_empty());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = env.path("r.img");
    env.restore(s["id"].as_str().unwrap(), &r);
    assert_same(&img, &r);
}

#[test]
fn snapshot_killed_holding_the_lock_leaves_an_object_the_next_command_removes() {
    let env = Env::new("locks_killed");
    env.init(&[]);
    // Sparse with 128 MiB of data: long enough to be killed mid-run.
    let big = env.path("big.img");
    for i in 0..8u64 {
        write_at(
            &big,
            1 << 30,
            i * (100 << 20),
            &random_bytes(16 << 20, 10 + i),
        );
    }
    let mut child = env
        .cmd()
        .args(["-q", "snapshot", "create", big.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    while lock_objects(&env).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no lock object appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the snapshot ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "finished too soon");
    child.kill().unwrap();
    child.wait().unwrap();

    let left = lock_objects(&env);
    assert_eq!(left.len(), 1, "the killed snapshot leaves its lock object");
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&left[0]).unwrap()).unwrap();
    assert_eq!(doc["pid"], pid);
    assert_eq!(doc["kind"], "shared");
    assert_eq!(doc["command"], "snapshot");

    // The next command (a check) removes it with a note, and finds nothing wrong.
    let out = env.run(&["--json", "check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "removed a stale lock of pid {pid} (snapshot, started "
        )) && err.contains("its process is gone"),
        "{err}"
    );
    assert!(lock_objects(&env).is_empty());
    // And the next snapshot completes.
    let small = image(&env, "small.img", 3);
    env.json(&create_args(&small));
}

#[test]
fn damaged_lock_files_are_reported_never_a_panic() {
    let env = Env::new("locks_damaged");
    env.init(&[]);
    let img = image(&env, "d.img", 4);
    let locks = env.store.join("locks");
    fs::create_dir_all(&locks).unwrap();
    let garbage = locks.join("garbage.json");
    fs::write(&garbage, b"\x00\xff{\"format\": not json").unwrap();
    let empty = locks.join("empty.json");
    fs::write(&empty, b"").unwrap();

    // Not a lock any blocksnap holds (they are written atomically): ignored, with a note.
    let out = env
        .cmd()
        .arg("--json")
        .args(create_args(&img))
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("garbage.json") && err.contains("empty.json") && err.contains("unlock"),
        "{err}"
    );
    // `check` lists them as problems (exit 4), and `unlock` removes them.
    let out = env.run(&["--json", "check"]);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("garbage.json") && problems.contains("empty.json"),
        "{problems}"
    );
    let r = env.json(&["unlock"]);
    assert_eq!(r["removed"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["removed"][0]["status"], "damaged", "{r}");
    assert_eq!(env.run(&["check"]).status.code(), Some(0));

    // A lock of a format this blocksnap does not know (a newer one wrote it) is honoured as
    // exclusive: the command stops, names the file, and says how to clear it.
    let newer = locks.join("newer.json");
    fs::write(
        &newer,
        br#"{"format": "blocksnap.lock/v9", "host": "future"}"#,
    )
    .unwrap();
    let out = env.run(&create_args(&img));
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("newer.json")
            && err.contains("blocksnap.lock/v9")
            && err.contains("`blocksnap unlock --all`"),
        "{err}"
    );
    env.json(&["unlock", "--all"]);
    env.json(&create_args(&img));
}

#[test]
fn shared_lock_of_another_host_allows_snapshots_but_stops_prune() {
    let env = Env::new("locks_other_shared");
    env.init(&[]);
    let img = image(&env, "d.img", 5);
    put_lock(
        &env,
        "otherhost-77-bb.json",
        "otherhost",
        77,
        "shared",
        "snapshot",
    );

    let s = env.json(&create_args(&img));
    let r = env.path("r.img");
    env.restore(s["id"].as_str().unwrap(), &r);
    assert_same(&img, &r);
    assert_eq!(env.run(&["check"]).status.code(), Some(0));

    for args in [&["prune"][..], &["repair", "index"][..]] {
        let out = env.run(args);
        assert_no_panic(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        for part in [
            "alone",
            "snapshot (shared) on host otherhost, pid 77",
            " d ago)",
            "`blocksnap unlock --all`",
        ] {
            assert!(
                err.contains(part),
                "{args:?}: the error lacks {part:?}:\n{err}"
            );
        }
    }
    env.json(&["unlock", "--all"]);
    env.json(&["prune"]);
    assert_eq!(lock_objects(&env).len(), 0);
}
