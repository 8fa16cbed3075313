//! Damaged stores and wrong identities: clear errors that name the object, never a silent
//! wrong byte, never a panic; and `repair index` rebuilding the index from the packs alone.

use std::fs;
use std::path::PathBuf;

use crate::common::*;

struct Fixture {
    env: Env,
    image: PathBuf,
    snap: String,
}

fn fixture(name: &str) -> Fixture {
    let env = Env::new(name);
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 40, 11);
    let image = env.path("disk.img");
    make_ext4(&image, 64 << 20, &tree);
    let s = env.snapshot(&image, "disk");
    let snap = s["id"].as_str().unwrap().to_string();
    Fixture { env, image, snap }
}

fn restore_fails(f: &Fixture, expect: &[&str]) -> String {
    let out_path = f.env.path("out.img");
    let out = f
        .env
        .run(&["snapshot", "restore", &f.snap, out_path.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "restore of a damaged store must fail with 1: {err}"
    );
    for e in expect {
        assert!(err.contains(e), "error should mention {e:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !out_path.exists(),
        "a failed restore must not leave an output file"
    );
    let leftovers: Vec<_> = fs::read_dir(&f.env.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "a failed restore left temporary files"
    );
    err
}

/// Flips bits (`mask`) of the byte at 1/`part` of the largest pack; returns the pack's id.
fn flip_byte_in_largest_pack(f: &Fixture, part: usize, mask: u8) -> String {
    let pack = f
        .env
        .packs()
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes.len() / part;
    bytes[at] ^= mask;
    fs::write(&pack, bytes).unwrap();
    pack.file_name().unwrap().to_str().unwrap().to_string()
}

#[test]
fn flipped_byte_in_a_pack_is_reported_with_pack_and_chunk() {
    let f = fixture("flipped");
    let pack_id = flip_byte_in_largest_pack(&f, 3, 0x01);
    let err = restore_fails(&f, &[&pack_id, "chunk", "authentication failed"]);
    assert!(err.contains("damaged"), "{err}");
}

#[test]
fn truncated_pack_is_reported() {
    let f = fixture("truncated");
    let pack = f
        .env
        .packs()
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let len = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_string();
    restore_fails(&f, &[&pack_id, "truncated"]);
}

#[test]
fn missing_pack_is_reported() {
    let f = fixture("missing");
    let pack = f.env.packs().into_iter().next().unwrap();
    fs::remove_file(&pack).unwrap();
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_string();
    restore_fails(&f, &[&pack_id, "missing"]);
}

#[test]
fn deleted_index_is_rebuilt_from_pack_trailers() {
    let f = fixture("repair");
    fs::remove_dir_all(f.env.index_dir()).unwrap();
    // The next command that needs the index rebuilds it from the packs, and says so.
    let out = f.env.path("after-rebuild.img");
    let restored = f
        .env
        .run(&["snapshot", "restore", &f.snap, out.to_str().unwrap()]);
    assert!(restored.status.success(), "{}", stderr(&restored));
    assert!(
        stderr(&restored).contains("rebuilt it from the pack trailers"),
        "{}",
        stderr(&restored)
    );
    assert_same(&f.image, &out);
    // `repair index` does the same on demand.
    let r = f.env.json(&["repair", "index"]);
    assert!(r["chunks"].as_u64().unwrap() > 10, "{r}");
    assert_eq!(r["packs"].as_u64().unwrap() as usize, f.env.packs().len());
    assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");
    let out = f.env.path("after-repair.img");
    f.env.restore(&f.snap, &out);
    assert_same(&f.image, &out);
    // And the rebuilt index still dedups: an unchanged snapshot stores nothing new.
    let again = f.env.snapshot(&f.image, "disk");
    assert_eq!(again["chunks_new"], 0);
}

/// sled can leave an index it cannot read when a process is killed at the wrong moment (seen
/// in the crash tests): the index is a cache, so the next command rebuilds it from the packs.
#[test]
fn garbage_index_is_rebuilt_by_the_next_command_and_by_repair() {
    let f = fixture("garbage_index");
    let index = f.env.index_dir();
    let garble = || {
        fs::remove_dir_all(&index).unwrap();
        fs::create_dir_all(&index).unwrap();
        fs::write(index.join("conf"), b"not a sled config").unwrap();
        fs::write(index.join("db"), vec![0xAB; 10_000]).unwrap();
    };
    garble();
    let r = f.env.json(&["repair", "index"]);
    assert!(r["chunks"].as_u64().unwrap() > 10, "{r}");
    let out = f.env.path("after.img");
    f.env.restore(&f.snap, &out);
    assert_same(&f.image, &out);
    // Without repair: check, snapshot and restore each heal it.
    for args in [
        vec!["check"],
        vec![
            "snapshot",
            "create",
            f.image.to_str().unwrap(),
            "--volume",
            "disk",
        ],
        // --force: `out` holds the restore above (a restore never replaces a file unasked).
        vec![
            "snapshot",
            "restore",
            "--force",
            &f.snap,
            out.to_str().unwrap(),
        ],
    ] {
        garble();
        let run = f.env.run(&args);
        assert!(run.status.success(), "{args:?}: {}", stderr(&run));
        assert!(
            stderr(&run).contains("could not be read"),
            "{args:?}: {}",
            stderr(&run)
        );
        assert!(!f.env.store.read_dir().unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .contains("index-damaged")
        }));
    }
    assert_same(&f.image, &out);
    // The healed index dedups like the old one.
    let again = f.env.snapshot(&f.image, "disk");
    assert_eq!(again["chunks_new"], 0);
}

#[test]
fn repair_reports_damaged_packs_and_keeps_the_rest() {
    let f = fixture("repair_damaged");
    let pack = f.env.packs().into_iter().next().unwrap();
    let len = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let r = f.env.json(&["repair", "index"]);
    let problems = r["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{r}");
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .contains(pack.file_name().unwrap().to_str().unwrap())
    );
}

#[test]
fn missing_identity_is_denied_with_the_fix() {
    let f = fixture("no_identity");
    let out = f.env.run(&[
        "--identity",
        "/nonexistent/alice.key",
        "snapshot",
        "restore",
        &f.snap,
        f.env.path("o.img").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/alice.key") && err.contains("--identity"),
        "{err}"
    );
}

#[test]
fn wrong_identity_cannot_unwrap_the_key() {
    let f = fixture("wrong_identity");
    // Another store's identity: a valid age identity, but not alice's.
    let other = Env::new("wrong_identity_other");
    other.init(&[]);
    let other_key = walk_keys(&other.dir.join("config"));
    let out = f.env.run(&[
        "--identity",
        other_key.to_str().unwrap(),
        "snapshot",
        "restore",
        &f.snap,
        f.env.path("o.img").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot unwrap"), "{}", stderr(&out));
    // A snapshot with the wrong identity is refused too, before anything is stored.
    let before = f.env.packs().len();
    let out = f.env.run(&[
        "--identity",
        other_key.to_str().unwrap(),
        "snapshot",
        "create",
        f.image.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(f.env.packs().len(), before);
}

#[test]
fn world_readable_identity_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture("loose_identity");
    let key = walk_keys(&f.env.dir.join("config"));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = f.env.run(&[
        "snapshot",
        "restore",
        &f.snap,
        f.env.path("o.img").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

#[test]
fn linked_identity_is_refused_naming_the_target() {
    // The identity is opened without following a link (O_NOFOLLOW): a link someone put in its
    // place is not read, and the error names where it points and what to pass instead.
    let f = fixture("linked_identity");
    let key = walk_keys(&f.env.dir.join("config"));
    let moved = f.env.path("moved.key");
    fs::rename(&key, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &key).unwrap();
    let out = f.env.run(&[
        "snapshot",
        "restore",
        &f.snap,
        f.env.path("o.img").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("symbolic link"), "{err}");
    assert!(
        err.contains(&format!("--identity {}", moved.display())),
        "{err}"
    );
    assert!(!f.env.path("o.img").exists());
    // Passing the file itself works.
    let out = f.env.run(&[
        "--identity",
        moved.to_str().unwrap(),
        "snapshot",
        "restore",
        &f.snap,
        f.env.path("o.img").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_input_gets_clear_errors() {
    let f = fixture("bad_input");
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["snapshot", "create", "/nonexistent.img"],
            2,
            "no such disk image",
        ),
        (&["snapshot", "create", "/tmp"], 2, "not a regular file"),
        (
            &["snapshot", "restore", "snap-ffffffffffffffff", "/tmp/x.img"],
            2,
            "no snapshot matches",
        ),
        (&["snapshot", "show", "nonsense"], 2, "no snapshot matches"),
        (
            &["snapshot", "create", "/etc/hostname", "--volume", "../x"],
            2,
            "volume",
        ),
        (
            &["snapshot", "create", "/etc/hostname", "--key", "nokey"],
            2,
            "no key 'nokey'",
        ),
        (&["init"], 2, "already holds a blocksnap store"),
        (&["--account", "mallory", "snapshot", "list"], 0, ""),
        (
            &[
                "--account",
                "mallory",
                "snapshot",
                "restore",
                "snap-",
                "/tmp/x.img",
            ],
            2,
            "account",
        ),
    ];
    for (args, code, text) in cases {
        let out = f.env.run(args);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(text), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{args:?}");
    }
    let out = f.env.run(&["init", "--chunk-size", "3000"]);
    assert_eq!(out.status.code(), Some(2));
    // A damaged snapshot document is skipped by the list with a warning naming the file, and
    // asking for it is an error naming the file; never a panic.
    let doc = f
        .env
        .store
        .join("snapshots")
        .join(format!("{}.json", f.snap));
    fs::write(&doc, b"{\"format\": \"blocksnap.snapshot/v1\", \"id\": 5}").unwrap();
    let out = f.env.run(&["snapshot", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(&f.snap), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&f.snap));
    let out = f.env.run(&["snapshot", "show", &f.snap]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&f.snap), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}

fn walk_keys(dir: &std::path::Path) -> PathBuf {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let found = walk_keys(&p);
            if !found.as_os_str().is_empty() {
                return found;
            }
        } else if p.extension().and_then(|x| x.to_str()) == Some("key") {
            return p;
        }
    }
    PathBuf::new()
}

fn check(f: &Fixture, read_data: bool) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["--json", "check"];
    if read_data {
        args.push("--read-data");
    }
    let out = f.env.run(&args);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    for field in ["ok", "problems"] {
        assert!(v.get(field).is_some(), "check --json lacks {field}: {v}");
    }
    (out.status.code(), v)
}

#[test]
fn check_passes_on_a_sound_store_and_verifies_every_chunk() {
    let f = fixture("check_ok");
    let (code, v) = check(&f, false);
    assert_eq!((code, v["ok"].as_bool()), (Some(0), Some(true)), "{v}");
    let (code, v) = check(&f, true);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["chunks_verified"], v["chunks"]);
    assert!(v["chunks_verified"].as_u64().unwrap() > 10);
}

#[test]
fn check_read_data_finds_a_flipped_byte_and_names_what_it_affects() {
    let f = fixture("check_flip");
    let pack_id = flip_byte_in_largest_pack(&f, 2, 0x40);
    let (code, v) = check(&f, true);
    assert_eq!(code, Some(4), "{v}");
    let text = v["problems"].to_string();
    assert!(text.contains(&pack_id), "{v}");
    assert!(
        text.contains(&f.snap),
        "the damaged snapshot must be named: {v}"
    );
    assert_eq!(v["damaged_snapshots"][0], f.snap.as_str());
}

#[test]
fn check_finds_missing_and_truncated_packs() {
    let f = fixture("check_missing");
    let packs = f.env.packs();
    fs::remove_file(&packs[0]).unwrap();
    let (code, v) = check(&f, false);
    assert_eq!(code, Some(4), "{v}");
    assert!(v["problems"].to_string().contains("missing"), "{v}");
    assert!(v["problems"].to_string().contains(&f.snap), "{v}");

    let g = fixture("check_truncated");
    let pack = g.env.packs().into_iter().next().unwrap();
    let len = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let (code, v) = check(&g, false);
    assert_eq!(code, Some(4), "{v}");
    assert!(
        v["problems"]
            .to_string()
            .contains(pack.file_name().unwrap().to_str().unwrap()),
        "{v}"
    );
}

/// Unmounts a test filesystem even when the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk: the snapshot fails with a clear error, leaves no temporary pack, and everything
/// committed before stays intact and restorable; the store keeps working.
#[test]
fn full_disk_fails_cleanly_and_loses_nothing() {
    let env = Env::new("full_disk");
    let mnt = env.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    assert!(
        root,
        "full_disk_fails_cleanly_and_loses_nothing needs root (it mounts a tmpfs): run the tests \
         as root, as CI does"
    );
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        mounted,
        "mounting a 24 MiB tmpfs at {} failed",
        mnt.display()
    );
    let _guard = Mount(mnt.clone());
    let store = mnt.join("store");
    let run = |args: &[&str]| env.cmd_at(&store).args(args).output().unwrap();
    assert!(run(&["init", "--account", "alice"]).status.success());
    let small = env.path("small.img");
    write_at(&small, 4 << 20, 0, &random_bytes(2 << 20, 95));
    let big = env.path("big.img");
    write_at(&big, 64 << 20, 0, &random_bytes(64 << 20, 96));
    let first = run(&["--json", "snapshot", "create", small.to_str().unwrap()]);
    assert!(first.status.success());
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();

    let full = run(&["snapshot", "create", big.to_str().unwrap()]);
    assert_eq!(full.status.code(), Some(1));
    let err = stderr(&full);
    assert!(
        err.contains("No space left on device")
            && err.contains("hint: the store's filesystem is full"),
        "{err}"
    );
    assert_eq!(
        err.matches("No space left on device").count(),
        1,
        "the OS error is said once: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let tmp: Vec<_> = fs::read_dir(store.join("packs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(
        tmp.is_empty(),
        "a failed snapshot must remove its temporary pack"
    );

    let check = run(&["--json", "check", "--read-data"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let list = run(&["--json", "snapshot", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "the failed snapshot is not committed"
    );
    let out = env.path("out.img");
    assert!(
        run(&[
            "snapshot",
            "restore",
            first["id"].as_str().unwrap(),
            out.to_str().unwrap()
        ])
        .status
        .success()
    );
    assert_same(&small, &out);
    // The store still takes snapshots that fit.
    assert!(
        run(&[
            "snapshot",
            "create",
            small.to_str().unwrap(),
            "--volume",
            "again"
        ])
        .status
        .success()
    );
}

#[test]
fn check_covers_snapshots_in_the_trash() {
    let f = fixture("check_trash");
    f.env.json(&["snapshot", "delete", &f.snap]);
    let (code, v) = check(&f, false);
    assert_eq!(code, Some(0), "{v}");
    fs::remove_file(&f.env.packs()[0]).unwrap();
    let (code, v) = check(&f, false);
    assert_eq!(code, Some(4), "{v}");
    assert!(v["problems"].to_string().contains("in the trash"), "{v}");
}
