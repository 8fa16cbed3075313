//! Hostile store content: whoever can write to the store directory can plant packs, documents
//! and lock objects of any length and content. Every length is checked before anything is
//! allocated: each test runs blocksnap with its address space limited to 1 GiB (`ulimit -v`)
//! against objects that claim (or are) gigabytes long — sparse files, so they cost no disk — and
//! asserts a clean error with the documented exit status, naming the object and the fix, and no
//! panic.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// The address space a command may use, in KiB: a multi-GB allocation from a crafted length
/// fails under it (and would abort the process), everything blocksnap needs fits.
const ADDRESS_SPACE_KIB: u64 = 1 << 20;

/// Runs blocksnap with `args` under the address-space limit.
fn bounded(env: &Env, args: &[&str]) -> Output {
    let base = env.cmd();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$@\""))
        .arg("sh")
        .arg(base.get_program())
        .args(base.get_args())
        .args(args);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = c.output().unwrap();
    let err = stderr(&out);
    assert!(
        !err.contains("panicked"),
        "blocksnap {args:?} panicked: {err}"
    );
    assert!(
        !err.contains("memory allocation") && out.status.code().is_some(),
        "blocksnap {args:?} ran out of memory or was killed ({:?}): {err}",
        out.status
    );
    assert_ne!(out.status.code(), Some(101), "{err}");
    out
}

/// A file of `len` bytes (sparse: no disk) with `head` at its start and `tail` at its end.
fn sparse(path: &Path, len: u64, head: &[u8], tail: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    f.write_all_at(head, 0).unwrap();
    f.write_all_at(tail, len - tail.len() as u64).unwrap();
}

fn small_store(name: &str, extra: &[&str]) -> (Env, PathBuf, String) {
    let env = Env::new(name);
    env.init(extra);
    let img = env.path("disk.img");
    write_at(&img, 8 << 20, 1 << 20, &random_bytes(2 << 20, 7));
    let snap = env.snapshot(&img, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    (env, img, snap)
}

/// A pack's header ("BSPACK", version 1, no cipher) and a footer whose trailer length is
/// `tlen`.
fn pack_ends(tlen: u32) -> (Vec<u8>, Vec<u8>) {
    let mut head = b"BSPACK\x00\x01\x01\x00".to_vec();
    head.resize(64, 0);
    let mut tail = tlen.to_le_bytes().to_vec();
    tail.extend_from_slice(&[0; 4]);
    tail.extend_from_slice(b"BSPKEND1");
    (head, tail)
}

#[test]
fn a_crafted_pack_is_refused_in_bounded_memory() {
    let (env, img, snap) = small_store("hostile_pack", &["--no-encryption"]);
    // 3 GiB whose footer says the trailer is nearly all of it; and one that says u32::MAX.
    let huge = env
        .store
        .join("packs/ab")
        .join(format!("ab{}", "0".repeat(62)));
    let tlen = (3u32 << 30) - 100;
    let tlen = tlen - (tlen - 8) % 48;
    let (head, tail) = pack_ends(tlen);
    sparse(&huge, 3 << 30, &head, &tail);
    let liar = env
        .store
        .join("packs/cd")
        .join(format!("cd{}", "1".repeat(62)));
    let (head, tail) = pack_ends(u32::MAX);
    sparse(&liar, 4096, &head, &tail);

    // check names both packs as damage (exit 4) and the steps that heal it.
    let out = bounded(&env, &["--json", "check"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].to_string();
    assert!(
        problems.contains(&format!("ab{}", "0".repeat(62)))
            && problems.contains(&format!("cd{}", "1".repeat(62))),
        "{problems}"
    );
    // The index is rebuilt past them, and the snapshot reads back exactly.
    let out = bounded(&env, &["repair", "index"]);
    assert!(
        matches!(out.status.code(), Some(0 | 1 | 5)),
        "{}",
        stderr(&out)
    );
    let restored = env.path("r.img");
    let out = bounded(
        &env,
        &["snapshot", "restore", &snap, restored.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same(&img, &restored);
    // repair packs sets them aside (copied in pieces, never whole in memory).
    let (head, tail) = pack_ends(tlen);
    sparse(&huge, 64 << 20, &head, &tail);
    let out = bounded(&env, &["repair", "packs"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!huge.exists() && !liar.exists());
    let out = bounded(&env, &["check"]);
    assert!(matches!(out.status.code(), Some(0)), "{}", stderr(&out));
}

#[test]
fn a_huge_or_garbage_document_is_named_and_not_read() {
    let (env, _img, snap) = small_store("hostile_docs", &[]);
    let huge = env.store.join("snapshots/snap-ffffffffffffffff.json");
    sparse(
        &huge,
        3 << 30,
        b"{\"format\": \"blocksnap.snapshot/v1\", ",
        b"}",
    );
    let garbage = env.store.join("snapshots/snap-eeeeeeeeeeeeeeee.json");
    fs::write(&garbage, random_bytes(5000, 9)).unwrap();

    // A listing skips both with a warning naming each; the good snapshot is listed.
    let out = bounded(&env, &["--json", "snapshot", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("snap-ffffffffffffffff.json")
            && err.contains("more than any document can be")
            && err.contains("snap-eeeeeeeeeeeeeeee.json")
            && err.contains("blocksnap repair documents"),
        "{err}"
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], snap.as_str());
    // Asked for by name, it is an error naming it and the fix (exit 1: damaged data).
    let out = bounded(&env, &["snapshot", "show", "snap-ffffffffffffffff"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("snap-ffffffffffffffff.json")
            && stderr(&out).contains("blocksnap repair documents"),
        "{}",
        stderr(&out)
    );
    // check reports both (exit 4); prune refuses to run past them.
    let out = bounded(&env, &["--json", "check"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let problems = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        problems.contains("snap-ffffffffffffffff.json")
            && problems.contains("snap-eeeeeeeeeeeeeeee.json"),
        "{problems}"
    );
    let out = bounded(&env, &["prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("snap-ffffffffffffffff.json"));
    // repair documents moves both to quarantine/ (the big one copied in pieces); a smaller
    // huge one keeps the test's disk use small.
    fs::File::create(&huge).unwrap().set_len(20 << 20).unwrap();
    let out = bounded(&env, &["--json", "repair", "documents"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["moved"].as_array().unwrap().len(), 2, "{r}");
    assert!(!huge.exists() && !garbage.exists());
    assert_eq!(
        fs::metadata(
            env.store
                .join("quarantine/snapshots/snap-ffffffffffffffff.json")
        )
        .unwrap()
        .len(),
        20 << 20
    );
    let out = bounded(&env, &["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_huge_config_or_a_fifo_in_its_place_is_an_error_not_a_hang() {
    let (env, _img, _snap) = small_store("hostile_config", &[]);
    let config = env.store.join("config");
    let saved = fs::read(&config).unwrap();
    sparse(&config, 3 << 30, b"{", b"}");
    let out = bounded(&env, &["snapshot", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("more than a config can be") && stderr(&out).contains("config"),
        "{}",
        stderr(&out)
    );
    // A FIFO (or a device) is not an object: refused at once, never waited on.
    fs::remove_file(&config).unwrap();
    let status = Command::new("mkfifo").arg(&config).status().unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    let out = bounded(&env, &["snapshot", "list"]);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    fs::remove_file(&config).unwrap();
    fs::write(&config, saved).unwrap();
    assert!(bounded(&env, &["snapshot", "list"]).status.success());
}

#[test]
fn a_crafted_lock_object_names_itself_and_the_command_that_clears_it() {
    let (env, img, snap) = small_store("hostile_lock", &[]);
    let locks = env.store.join("locks");
    // Gigabytes long: not read, ignored with a note naming it and `blocksnap unlock`.
    let huge = locks.join("huge.json");
    sparse(&huge, 3 << 30, b"{", b"}");
    let out = bounded(
        &env,
        &[
            "snapshot",
            "create",
            img.to_str().unwrap(),
            "--volume",
            "disk",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("huge.json")
            && err.contains("more than a lock object can be")
            && err.contains("`blocksnap unlock`"),
        "{err}"
    );
    // A lock of another host, crafted to stop everything: the commands it stops name the file
    // and `blocksnap unlock --all`.
    let crafted = locks.join("crafted.json");
    fs::write(
        &crafted,
        serde_json::to_vec(&serde_json::json!({
            "format": "blocksnap.lock/v1",
            "host": "elsewhere",
            "pid": 1,
            "kind": "exclusive",
            "command": "prune",
            "started": "2020-01-01T00:00:00.000Z",
        }))
        .unwrap(),
    )
    .unwrap();
    let out = bounded(
        &env,
        &[
            "snapshot",
            "restore",
            &snap,
            env.path("r.img").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("crafted.json") && err.contains("`blocksnap unlock --all`"),
        "{err}"
    );
    // `unlock` removes the huge one (damaged); `unlock --all` the crafted one.
    let out = bounded(&env, &["--json", "unlock"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["removed"][0]["status"], "damaged", "{r}");
    assert_eq!(r["kept"][0]["status"], "other_host", "{r}");
    let out = bounded(&env, &["--json", "unlock", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!huge.exists() && !crafted.exists());
    let out = bounded(&env, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
