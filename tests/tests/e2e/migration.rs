//! A store made by the release before issue 14 — the dedup index inside the store at
//! `STORE/index`, the flock-era lock file `STORE/locks/store.lock`, no volume heads — opens with
//! this blocksnap: the index is moved to the cache directory (or rebuilt there) with a note, every
//! old snapshot restores byte-identical, `check --read-data` is clean, and new snapshots dedup
//! against the old ones and find their parent.
//!
//! The fixture `tests/fixtures/pre14-store.tar.xz` was written by that release's binary with
//! `tests/fixtures/make-pre14-store.sh` (which says how); it holds the store and the account's
//! identity (under `config/`, where `Env` points `XDG_CONFIG_HOME`). The disk images are the
//! bytes of [`random_bytes`] and [`text_bytes`], regenerated here. Needs `tar` with xz.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use serde_json::Value;

const K: usize = 1024;

/// The first version of the old store's volume `disk`, as the fixture script made it.
fn disk_v1() -> Vec<u8> {
    let mut v = random_bytes(96 * K, 1);
    v.extend(text_bytes(96 * K, 2));
    v.extend(vec![0u8; 64 * K]);
    v
}

/// Its second version: 8 KiB of new random bytes and 2 KiB of new text.
fn disk_v2() -> Vec<u8> {
    let mut v = disk_v1();
    v[40 * K..48 * K].copy_from_slice(&random_bytes(8 * K, 3));
    v[150 * K..152 * K].copy_from_slice(&b"changed ".repeat(256));
    v
}

/// The old store's volume `other`.
fn other() -> Vec<u8> {
    let mut v = text_bytes(64 * K, 4);
    v.extend(random_bytes(32 * K, 5));
    v
}

/// Unpacks the fixture into the test's directory: `store/` and `config/`.
fn unpack(env: &Env) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pre14-store.tar.xz");
    let out = Command::new("tar")
        .arg("-xJf")
        .arg(&fixture)
        .arg("-C")
        .arg(&env.dir)
        .output()
        .expect("tar is installed");
    assert!(
        out.status.success(),
        "tar -xJf {}: {}",
        fixture.display(),
        stderr(&out)
    );
    assert!(
        env.store.join("index").is_dir(),
        "the fixture keeps its index in the store"
    );
    assert!(env.store.join("locks/store.lock").is_file());
    assert!(
        !env.store.join("heads").exists(),
        "the old release had no heads"
    );
    assert!(!env.index_dir().exists());
}

/// The old snapshots by their `gen` tag or volume: (gen=1, gen=2, other).
fn old_snapshots(env: &Env) -> (String, String, String) {
    let list = env.json(&["snapshot", "list"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let find = |f: &dyn Fn(&Value) -> bool| {
        let s: Vec<&Value> = list.iter().filter(|s| f(s)).collect();
        assert_eq!(s.len(), 1, "{list:?}");
        s[0]["id"].as_str().unwrap().to_string()
    };
    let g1 = find(&|s| s["tags"]["gen"] == "1");
    let g2 = find(&|s| s["tags"]["gen"] == "2");
    let o = find(&|s| s["volume"] == "other");
    let doc2 = list.iter().find(|s| s["id"] == g2.as_str()).unwrap();
    assert_eq!(doc2["volume"], "disk");
    assert_eq!(
        doc2["parent"],
        g1.as_str(),
        "the old release recorded lineage"
    );
    (g1, g2, o)
}

/// Restores `id` with `--json` and asserts the output is `want`; returns stderr.
fn restore_is(env: &Env, id: &str, want: &[u8], name: &str) -> String {
    let out = env.path(name);
    let o = env
        .cmd()
        .args(["--json", "snapshot", "restore", id, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "restore {id}: {}", stderr(&o));
    assert!(
        fs::read(&out).unwrap() == want,
        "restore of {id} differs from its source"
    );
    stderr(&o)
}

#[test]
fn a_store_of_the_previous_release_moves_its_index_restores_checks_and_dedups() {
    let env = Env::new("migration-move");
    unpack(&env);
    let (g1, g2, o) = old_snapshots(&env);

    // The first command that needs the index moves it, with a note.
    let err = restore_is(&env, &g1, &disk_v1(), "g1.img");
    assert!(
        err.contains("moved the index") && err.contains(&env.index_dir().display().to_string()),
        "{err}"
    );
    assert!(
        !env.store.join("index").exists(),
        "the store keeps no index"
    );
    assert!(!err.contains("rebuilt"), "moved, not rebuilt: {err}");
    assert!(env.index_dir().join("db").is_file());
    let err = restore_is(&env, &g2, &disk_v2(), "g2.img");
    assert!(!err.contains("index"), "moved once: {err}");
    restore_is(&env, &o, &other(), "other.img");

    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["snapshots"], 3);
    assert_eq!(check["intact_snapshots"].as_array().unwrap().len(), 3);
    assert_eq!(check["chunks_damaged"], 0);
    assert_eq!(check["chunks_not_verified"], 0);
    assert!(check["chunks_verified"].as_u64().unwrap() > 0);

    // A new snapshot of the same disk stores nothing new: the moved index knows every chunk.
    // Its parent is the old latest snapshot, found without a head (the old store has none).
    let v2 = env.path("disk-v2.img");
    fs::write(&v2, disk_v2()).unwrap();
    let s = env.snapshot(&v2, "disk");
    assert_eq!(s["chunks_new"], 0, "{s}");
    assert_eq!(s["packs"], 0, "{s}");
    assert_eq!(s["parent"], g2.as_str(), "{s}");
    assert!(env.store.join("heads/disk.json").is_file());
    let s_id = s["id"].as_str().unwrap().to_string();

    // The next one, with a change, finds the new snapshot as its parent (through the head now)
    // and stores only the change.
    let mut v3 = disk_v2();
    v3[10 * K..14 * K].copy_from_slice(&random_bytes(4 * K, 6));
    let v3_path = env.path("disk-v3.img");
    fs::write(&v3_path, &v3).unwrap();
    let s3 = env.snapshot(&v3_path, "disk");
    assert_eq!(s3["parent"], s_id.as_str(), "{s3}");
    let new = s3["chunks_new"].as_u64().unwrap();
    assert!(
        (1..=4).contains(&new),
        "a 4 KiB change stores a few chunks: {s3}"
    );
    restore_is(&env, s3["id"].as_str().unwrap(), &v3, "v3.img");
    restore_is(&env, &s_id, &disk_v2(), "s.img");
    restore_is(&env, &g1, &disk_v1(), "g1-again.img");

    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["intact_snapshots"].as_array().unwrap().len(), 5);
}

#[test]
fn a_damaged_index_of_the_previous_release_is_rebuilt_in_the_cache() {
    let env = Env::new("migration-damaged");
    unpack(&env);
    fs::write(env.store.join("index/conf"), b"not a sled config").unwrap();
    let (g1, g2, o) = old_snapshots(&env);
    let err = restore_is(&env, &g2, &disk_v2(), "g2.img");
    assert!(err.contains("moved the index"), "{err}");
    assert!(
        err.contains("could not be read") && err.contains("rebuilt it from the pack trailers"),
        "{err}"
    );
    assert!(!env.store.join("index").exists());
    restore_is(&env, &g1, &disk_v1(), "g1.img");
    restore_is(&env, &o, &other(), "other.img");
    // The rebuilt index dedups as the old one did.
    let v1 = env.path("disk-v1.img");
    fs::write(&v1, disk_v1()).unwrap();
    let s = env.snapshot(&v1, "disk");
    assert_eq!(s["chunks_new"], 0, "{s}");
    assert_eq!(s["parent"], g2.as_str(), "{s}");
    assert_eq!(env.json(&["check", "--read-data"])["ok"], true);
}

#[test]
fn an_old_index_beside_a_cache_index_is_removed_with_a_note() {
    let env = Env::new("migration-both");
    unpack(&env);
    // This user already has a cache index of the store (made while the old one was away).
    let away = env.path("old-index");
    fs::rename(env.store.join("index"), &away).unwrap();
    let check = env.cmd().args(["--json", "check"]).output().unwrap();
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("was missing; rebuilt it"),
        "{}",
        stderr(&check)
    );
    assert!(env.index_dir().is_dir());
    fs::rename(&away, env.store.join("index")).unwrap();

    let (g1, _, _) = old_snapshots(&env);
    let err = restore_is(&env, &g1, &disk_v1(), "g1.img");
    assert!(
        err.contains("removed the old index") && err.contains("store/index"),
        "{err}"
    );
    assert!(!env.store.join("index").exists());
    let v1 = env.path("disk-v1.img");
    fs::write(&v1, disk_v1()).unwrap();
    assert_eq!(env.snapshot(&v1, "disk")["chunks_new"], 0);
}
