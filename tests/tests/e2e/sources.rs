//! What `snapshot create` (and `image create`, `policy run`, `volume add`) accepts as a source:
//! a disk image file or a block device, checked before any lock is taken; never another disk
//! under a volume's name; and a source written or resized while read is detected.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// Fails the test (never skips it) unless it runs as root.
fn require_root(what: &str) {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test needs root ({what}); run the tests as root, as CI does"
    );
}

/// Asserts exit status `code` and that stderr holds every one of `words`; returns stderr.
fn refused(out: &Output, code: i32, words: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for w in words {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The lock objects in the store's `locks/` (not the flock file).
fn lock_objects(env: &Env) -> Vec<String> {
    match fs::read_dir(env.store.join("locks")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "store.lock")
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs `args`, killing the command if it has not finished within `limit`.
fn run_within(env: &Env, args: &[&str], limit: Duration) -> Output {
    let mut child = env
        .cmd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "blocksnap {args:?} still ran after {limit:?} (killed): {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_fifo_source_is_refused_at_once_and_leaves_no_lock() {
    let env = Env::new("source-fifo");
    env.init(&[]);
    let fifo = env.path("disk.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let out = run_within(
        &env,
        &["snapshot", "create", fifo.to_str().unwrap()],
        Duration::from_secs(20),
    );
    refused(&out, 2, &["disk.fifo", "FIFO"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(lock_objects(&env), Vec::<String>::new());
    assert!(
        !env.store.join("locks").join("store.lock").exists(),
        "the store lock was taken before the source was checked"
    );
    let unlock = env.json(&["unlock"]);
    assert_eq!(unlock["removed"], serde_json::json!([]), "{unlock}");
    assert_eq!(unlock["kept"], serde_json::json!([]), "{unlock}");
    // The store is free: a real snapshot goes through at once.
    let disk = env.path("disk.img");
    write_at(&disk, 1 << 20, 0, &random_bytes(100_000, 1));
    let out = run_within(
        &env,
        &["snapshot", "create", disk.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A registered volume can be no FIFO either.
    let out = env.run(&["volume", "add", "pipe", fifo.to_str().unwrap()]);
    refused(&out, 2, &["FIFO"]);
}

#[test]
fn character_devices_directories_sockets_and_kernel_files_are_refused() {
    let env = Env::new("source-kinds");
    env.init(&[]);
    let dir = env.path("adir");
    fs::create_dir(&dir).unwrap();
    let sock = env.path("a.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let cases: [(&str, &str); 6] = [
        ("/dev/zero", "character device"),
        ("/dev/null", "character device"),
        (dir.to_str().unwrap(), "directory"),
        (sock.to_str().unwrap(), "socket"),
        ("/proc/self/status", "/proc"),
        ("/sys/kernel/mm/transparent_hugepage/enabled", "/sys"),
    ];
    for (path, kind) in cases {
        assert!(
            fs::metadata(path).is_ok(),
            "{path} is missing on this machine"
        );
        let out = run_within(
            &env,
            &["snapshot", "create", path, "--volume", "v"],
            Duration::from_secs(20),
        );
        refused(&out, 2, &[path, kind]);
        let out = run_within(
            &env,
            &[
                "image",
                "create",
                "img",
                "--volume",
                &format!("/dev/sda={path}"),
            ],
            Duration::from_secs(20),
        );
        refused(&out, 2, &[path, kind]);
    }
    assert_eq!(lock_objects(&env), Vec::<String>::new());
    assert_eq!(env.json(&["snapshot", "list"]), serde_json::json!([]));
}

#[test]
fn an_empty_source_gets_a_note_and_round_trips() {
    let env = Env::new("source-empty");
    env.init(&[]);
    let disk = env.path("empty.img");
    fs::write(&disk, b"").unwrap();
    let out = env.run(&["--json", "snapshot", "create", disk.to_str().unwrap()]);
    let err = stderr(&out);
    let v = json_of(&out);
    assert!(err.contains("empty (0 bytes)"), "no note: {err}");
    assert_eq!(v["size"], 0, "{v}");
    let back = env.path("back.img");
    env.restore(v["id"].as_str().unwrap(), &back);
    assert_eq!(fs::metadata(&back).unwrap().len(), 0);
}

/// Two directories each holding a different `disk.img`.
fn two_disks(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (env.path("vmA/disk.img"), env.path("vmB/disk.img"));
    fs::create_dir_all(a.parent().unwrap()).unwrap();
    fs::create_dir_all(b.parent().unwrap()).unwrap();
    write_at(&a, 2 << 20, 0, &random_bytes(1 << 20, 10));
    write_at(&b, 2 << 20, 0, &random_bytes(1 << 20, 11));
    (a, b)
}

#[test]
fn same_named_disks_in_two_directories_never_share_a_volume() {
    let env = Env::new("source-same-name");
    env.init(&[]);
    let (a, b) = two_disks(&env);
    let first = env.json(&["snapshot", "create", a.to_str().unwrap()]);
    assert_eq!(first["volume"], "disk.img");
    let real_a = fs::canonicalize(&a).unwrap();
    assert_eq!(first["source"], real_a.to_str().unwrap(), "{first}");
    let show = env.json(&["snapshot", "show", first["id"].as_str().unwrap()]);
    assert_eq!(show["source_path"], real_a.to_str().unwrap(), "{show}");
    assert!(
        show["source_host"].as_str().is_some_and(|h| !h.is_empty()),
        "{show}"
    );

    // The other disk under the same (default) name: refused, naming both and both ways out.
    let out = env.run(&["snapshot", "create", b.to_str().unwrap()]);
    refused(
        &out,
        2,
        &[
            "vmB/disk.img",
            "vmA/disk.img",
            "disk.img",
            "--volume",
            "--source-moved",
        ],
    );
    // And in an image, whose volumes take the file's name.
    let out = env.run(&[
        "image",
        "create",
        "vm-b",
        "--volume",
        &format!("/dev/vda={}", b.display()),
    ]);
    refused(&out, 2, &["vmA/disk.img", "volume add"]);
    let list = env.json(&["snapshot", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // Its own volume works, and the first chain is untouched.
    let own = env.json(&[
        "snapshot",
        "create",
        b.to_str().unwrap(),
        "--volume",
        "vmB-disk",
    ]);
    assert_eq!(own["parent"], Value::Null, "{own}");
    let again = env.json(&["snapshot", "create", a.to_str().unwrap()]);
    assert_eq!(again["parent"], first["id"], "{again}");

    // Naming the volume explicitly is the user's choice (versions of an image kept as
    // separate files): taken, with a note naming both files.
    let out = env.run(&[
        "--json",
        "snapshot",
        "create",
        b.to_str().unwrap(),
        "--volume",
        "disk.img",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["was last snapshotted from", "vmA/disk.img", "vmB/disk.img"] {
        assert!(err.contains(part), "{part}: {err}");
    }
}

#[test]
fn a_registered_volume_and_its_policy_refuse_another_disk() {
    let env = Env::new("source-registered");
    env.init(&[]);
    let (a, b) = two_disks(&env);
    env.json(&[
        "volume",
        "add",
        "web",
        a.to_str().unwrap(),
        "--tag",
        "tier=gold",
    ]);
    let vols = env.json(&["volume", "list"]);
    assert!(vols[0]["host"].as_str().is_some(), "{vols}");
    env.json(&["snapshot", "create", "web"]);
    let out = env.run(&["snapshot", "create", b.to_str().unwrap(), "--volume", "web"]);
    refused(
        &out,
        2,
        &[
            "registered as volume 'web'",
            "vmA/disk.img",
            "--source-moved",
        ],
    );

    // Volume disk.img's chain is vmA's disk; registering vmB's under that name does not make
    // the policy mix them: that volume fails, by name, and the others are taken.
    env.json(&["snapshot", "create", a.to_str().unwrap()]);
    env.json(&[
        "volume",
        "add",
        "disk.img",
        b.to_str().unwrap(),
        "--tag",
        "tier=gold",
    ]);
    env.json(&[
        "policy",
        "create",
        "nightly",
        "--target-tag",
        "tier=gold",
        "--schedule",
        "daily: every 1d keep 7",
    ]);
    let out = env.run(&["--json", "policy", "run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = r["errors"].to_string();
    assert!(
        errors.contains("volume disk.img") && errors.contains("vmA/disk.img"),
        "{r}"
    );
    let taken: Vec<_> = r["taken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["volume"])
        .collect();
    assert_eq!(taken, ["web"], "{r}");

    // --source-moved says it is the same disk: accepted, and the registration follows it.
    env.json(&[
        "snapshot",
        "create",
        b.to_str().unwrap(),
        "--volume",
        "web",
        "--source-moved",
    ]);
    let vols = env.json(&["volume", "list"]);
    let web = vols
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web")
        .unwrap();
    assert_eq!(
        web["path"],
        fs::canonicalize(&b).unwrap().to_str().unwrap(),
        "{vols}"
    );
}

#[test]
fn a_moved_disk_is_accepted_with_source_moved_and_its_new_place_recorded() {
    let env = Env::new("source-moved");
    env.init(&[]);
    let (a, _) = two_disks(&env);
    let first = env.json(&["snapshot", "create", a.to_str().unwrap()]);
    let moved = env.path("vmC/disk.img");
    fs::create_dir_all(moved.parent().unwrap()).unwrap();
    fs::rename(&a, &moved).unwrap();
    let out = env.run(&["snapshot", "create", moved.to_str().unwrap()]);
    refused(&out, 2, &["--source-moved"]);
    let second = env.json(&[
        "snapshot",
        "create",
        moved.to_str().unwrap(),
        "--source-moved",
    ]);
    assert_eq!(second["parent"], first["id"], "{second}");
    assert_eq!(
        second["bytes_new"], 0,
        "the moved disk is the same: {second}"
    );
    let real = fs::canonicalize(&moved).unwrap();
    assert_eq!(second["source"], real.to_str().unwrap(), "{second}");
    // From now on the new place is the volume's.
    let third = env.json(&["snapshot", "create", moved.to_str().unwrap()]);
    assert_eq!(third["parent"], second["id"], "{third}");
}

#[test]
fn snapshots_that_recorded_no_source_are_not_held_against_a_new_one() {
    let env = Env::new("source-old-docs");
    env.init(&[]);
    let (a, b) = two_disks(&env);
    let first = env.json(&["snapshot", "create", a.to_str().unwrap()]);
    // Make it a document of before this change: no source_path, no source_host.
    let path = env
        .store
        .join("snapshots")
        .join(format!("{}.json", first["id"].as_str().unwrap()));
    let mut doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let obj = doc.as_object_mut().unwrap();
    assert!(obj.remove("source_path").is_some() && obj.remove("source_host").is_some());
    fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let show = env.json(&["snapshot", "show", first["id"].as_str().unwrap()]);
    assert!(show.get("source_path").is_none(), "{show}");
    let next = env.json(&["snapshot", "create", b.to_str().unwrap()]);
    assert_eq!(next["parent"], first["id"], "{next}");
    // The new one recorded its source: from now on the chain is held to it.
    let out = env.run(&["snapshot", "create", a.to_str().unwrap()]);
    refused(&out, 2, &["vmB/disk.img"]);
}

/// Runs `change` on a thread, over and over, while `blocksnap args` runs.
fn while_running(env: &Env, args: &[&str], mut change: impl FnMut() + Send + 'static) -> Output {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let changed = Arc::new(AtomicBool::new(false));
    let seen = changed.clone();
    let writer = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            change();
            seen.store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    while !changed.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = env.run(args);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    out
}

#[test]
fn a_source_written_during_the_snapshot_is_committed_with_a_warning() {
    let env = Env::new("source-written");
    env.init(&[]);
    let disk = env.path("live.img");
    fs::write(&disk, random_bytes(96 << 20, 20)).unwrap();
    let quiet = env.json(&["snapshot", "create", disk.to_str().unwrap()]);
    assert_eq!(quiet["source_changed"], false, "{quiet}");
    let d = disk.clone();
    let f = fs::OpenOptions::new().write(true).open(&d).unwrap();
    let mut i = 0u64;
    let out = while_running(
        &env,
        &["--json", "snapshot", "create", disk.to_str().unwrap()],
        move || {
            use std::os::unix::fs::FileExt;
            i += 1;
            f.write_all_at(&i.to_le_bytes(), (i * 4096) % (90 << 20))
                .unwrap();
        },
    );
    let err = stderr(&out);
    let v = json_of(&out);
    assert!(err.contains("was written while it was being read"), "{err}");
    assert_eq!(v["source_changed"], true, "{v}");
    let id = v["id"].as_str().unwrap();
    let show = env.json(&["snapshot", "show", id]);
    assert_eq!(show["source_changed"], true, "{show}");
    // Whoever restores it is told.
    let back = env.path("back.img");
    let out = env.run(&["--json", "snapshot", "restore", id, back.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("may not be consistent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(json_of(&out)["source_changed"], true);
}

#[test]
fn a_source_that_grows_during_the_snapshot_fails_it() {
    let env = Env::new("source-grows");
    env.init(&[]);
    let disk = env.path("growing.img");
    fs::write(&disk, random_bytes(96 << 20, 21)).unwrap();
    let d = disk.clone();
    let out = while_running(
        &env,
        &["snapshot", "create", disk.to_str().unwrap()],
        move || append(&d, &[7u8; 4096]),
    );
    refused(&out, 1, &["growing.img", "changed size"]);
    assert_eq!(env.json(&["snapshot", "list"]), serde_json::json!([]));
}

/// A source cut shorter while it is read (a read past its new end, or a size that differs at
/// the end) fails the snapshot with one clear message: the source, its sizes, that nothing was
/// committed and what to do. Not a bare "failed to fill whole buffer".
#[test]
fn a_source_that_shrinks_during_the_snapshot_fails_it_clearly() {
    let env = Env::new("source-shrinks");
    env.init(&[]);
    let disk = env.path("shrinking.img");
    let size = 128u64 << 20;
    fs::write(&disk, random_bytes(size as usize, 23)).unwrap();
    let d = disk.clone();
    let mut len = size;
    let out = while_running(
        &env,
        &["snapshot", "create", disk.to_str().unwrap()],
        move || {
            len = len.saturating_sub(64 << 10).max(1 << 20);
            fs::OpenOptions::new()
                .write(true)
                .open(&d)
                .unwrap()
                .set_len(len)
                .unwrap();
        },
    );
    let err = refused(
        &out,
        1,
        &[
            disk.to_str().unwrap(),
            "shrank while being read",
            "nothing was committed",
            "not being resized",
        ],
    );
    assert!(!err.contains("fill whole buffer"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one message: {err}");
    assert_eq!(env.json(&["snapshot", "list"]), serde_json::json!([]));
    assert_eq!(lock_objects(&env), Vec::<String>::new());
}

#[test]
fn a_block_device_that_changes_size_during_the_snapshot_fails_it() {
    require_root("losetup");
    let env = Env::new("source-dev-grows");
    env.init(&[]);
    let backing = env.path("dev.bin");
    fs::write(&backing, random_bytes(128 << 20, 22)).unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .expect("losetup is installed");
    assert!(out.status.success(), "losetup: {}", stderr(&out));
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    let (b, d) = (backing.clone(), dev.clone());
    let out = while_running(
        &env,
        &["snapshot", "create", &dev, "--volume", "dev"],
        move || {
            append(&b, &[1u8; 1 << 16]);
            let st = Command::new("losetup").args(["-c", &d]).status().unwrap();
            assert!(st.success());
        },
    );
    refused(&out, 1, &[&dev, "changed size"]);
    let _ = Path::new(&dev);
}

#[test]
fn one_image_cannot_map_two_disks_of_the_same_name_to_one_volume() {
    let env = Env::new("source-image-twins");
    env.init(&[]);
    let (a, b) = two_disks(&env);
    let out = env.run(&[
        "image",
        "create",
        "pair",
        "--volume",
        &format!("/dev/sda={}", a.display()),
        "--volume",
        &format!("/dev/sdb={}", b.display()),
    ]);
    refused(&out, 2, &["/dev/sda", "/dev/sdb", "disk.img", "volume add"]);
    assert_eq!(env.json(&["snapshot", "list"]), serde_json::json!([]));
    assert_eq!(env.json(&["image", "list"]), serde_json::json!([]));
    assert_eq!(lock_objects(&env), Vec::<String>::new());
}
