//! Damaged and lost documents: one damaged document never stops unrelated work (lists, snapshot
//! create of any volume, policy run skip it with a warning naming the file); prune refuses until
//! `repair documents` has moved it to quarantine/; a store that lost its config (or a key
//! document) says what is missing and how to recover, `init` refuses to run over it, and
//! `recovery export|import` brings back config, accounts and keys so the data restores.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use serde_json::Value;

/// The path of a snapshot's document.
fn doc_path(env: &Env, id: &str) -> PathBuf {
    env.store.join("snapshots").join(format!("{id}.json"))
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Runs with `--json`, asserts success; returns stdout parsed and stderr.
fn json_err(env: &Env, args: &[&str]) -> (Value, String) {
    let out = env.cmd().arg("--json").args(args).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "blocksnap {args:?} failed:\n{err}");
    (serde_json::from_slice(&out.stdout).unwrap(), err)
}

fn assert_warns(err: &str, file: &Path, what: &str) {
    assert!(
        err.contains("warning") && err.contains(&file.display().to_string()),
        "{what}: no warning naming {}:\n{err}",
        file.display()
    );
}

/// Two volumes, two snapshots of `a` (the second to be damaged), one of `b`.
fn two_volumes(env: &Env) -> (PathBuf, PathBuf, String, String, String) {
    env.init(&[]);
    let a = env.path("a.img");
    write_at(&a, 8 << 20, 1 << 20, &random_bytes(2 << 20, 1));
    let b = env.path("b.img");
    write_at(&b, 8 << 20, 0, &random_bytes(3 << 20, 2));
    let a1 = id(&env.snapshot(&a, "a"));
    write_at(&a, 8 << 20, 5 << 20, &random_bytes(1 << 20, 3));
    let a2 = id(&env.snapshot(&a, "a"));
    let b1 = id(&env.snapshot(&b, "b"));
    (a, b, a1, a2, b1)
}

#[test]
fn a_damaged_snapshot_document_stops_nothing_but_prune_until_quarantined() {
    let env = Env::new("docs-damaged");
    let (_, b, a1, a2, b1) = two_volumes(&env);
    env.json(&[
        "volume",
        "add",
        "vb",
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
        "d: every 1d keep 3",
    ]);
    env.json(&[
        "image",
        "register",
        "web",
        "--volume",
        &format!("/dev/vda={b1}"),
    ]);
    // A stray image document that is not JSON at all.
    let bad_image = env.store.join("images").join("img-00000000000000ff.json");
    fs::write(&bad_image, b"\x00\x01 not json").unwrap();

    // Cut a2's document short, as a failing disk or a careless editor might.
    let bad = doc_path(&env, &a2);
    let bytes = fs::read(&bad).unwrap();
    fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();

    // Lists show the others and name the damaged file.
    let (list, err) = json_err(&env, &["snapshot", "list"]);
    let ids: Vec<String> = list.as_array().unwrap().iter().map(id).collect();
    assert_eq!(ids, [a1.clone(), b1.clone()]);
    assert_warns(&err, &bad, "snapshot list");
    assert!(err.contains("repair documents"), "{err}");
    let (images, err) = json_err(&env, &["image", "list"]);
    assert_eq!(images.as_array().unwrap().len(), 1, "{images}");
    assert_eq!(images[0]["name"], "web");
    assert_warns(&err, &bad_image, "image list");

    // A snapshot of the other volume works. Its head (heads/b.json) names its latest snapshot,
    // so the damaged document of volume a does not matter to it: b1 is its parent, found
    // without reading any other document.
    let (s, _) = json_err(
        &env,
        &["snapshot", "create", b.to_str().unwrap(), "--volume", "b"],
    );
    assert_eq!(s["parent"], b1.as_str(), "{s}");
    assert_eq!(s["chunks_new"], 0, "dedup still works: {s}");
    // Without the head (a store made before heads existed) the parent is found by listing:
    // the damaged document could be b's latest (it cannot be read), so the snapshot records
    // no parent and says so; it restores byte-identical all the same.
    fs::remove_file(env.store.join("heads").join("b.json")).unwrap();
    let (s, err) = json_err(
        &env,
        &["snapshot", "create", b.to_str().unwrap(), "--volume", "b"],
    );
    assert_eq!(s["parent"], Value::Null, "{s}");
    assert!(
        err.contains("no parent") && err.contains(&bad.display().to_string()),
        "{err}"
    );
    let out = env.path("b-out.img");
    env.restore(&id(&s), &out);
    assert_same(&b, &out);

    // A policy run takes what is due and expires as usual.
    let (r, err) = json_err(&env, &["policy", "run"]);
    assert_eq!(r["taken"].as_array().unwrap().len(), 1, "{r}");
    assert!(r["errors"].as_array().unwrap().is_empty(), "{r}");
    assert_warns(&err, &bad, "policy run");

    // Prune refuses and names the file and the command that fixes it.
    let p = env.run(&["prune"]);
    let err = stderr(&p);
    assert_eq!(p.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&bad.display().to_string())
            && err.contains(&bad_image.display().to_string())
            && err.contains("blocksnap repair documents"),
        "{err}"
    );
    let p = env.run(&["prune", "--dry-run"]);
    assert_eq!(p.status.code(), Some(1), "{}", stderr(&p));

    // The dry run moves nothing.
    let dry = env.json(&["repair", "documents", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["moved"].as_array().unwrap().len(), 2, "{dry}");
    assert!(bad.exists() && bad_image.exists());

    // The repair moves both into quarantine/, keeping their bytes.
    let r = env.json(&["repair", "documents"]);
    let moved = r["moved"].as_array().unwrap();
    assert_eq!(moved.len(), 2, "{r}");
    let q = env.store.join("quarantine");
    let snap_to = q.join("snapshots").join(bad.file_name().unwrap());
    let image_to = q.join("images").join(bad_image.file_name().unwrap());
    for (from, to) in [(&bad, &snap_to), (&bad_image, &image_to)] {
        let m = moved
            .iter()
            .find(|m| m["from"] == from.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} not moved: {r}", from.display()));
        assert_eq!(m["to"], to.to_str().unwrap(), "{r}");
        assert!(!from.exists() && to.exists());
    }
    assert_eq!(fs::read(&snap_to).unwrap(), &bytes[..bytes.len() / 2]);
    assert!(
        env.json(&["repair", "documents"])["moved"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Now prune runs, and the store is sound; the listings are quiet.
    env.json(&["prune"]);
    assert_eq!(env.json(&["check", "--read-data"])["ok"], true);
    let (_, err) = json_err(&env, &["snapshot", "list"]);
    assert!(!err.contains("warning"), "{err}");
    let out = env.path("a1.img");
    env.restore(&a1, &out);
}

/// A registered volume whose document is damaged, then quarantined by `repair documents`:
/// every command that needs that volume (snapshot create NAME, image create DEVICE=NAME, policy
/// run, volume list) names the damaged file or the quarantined one, and the command that fixes
/// it; registered again, it works as before.
#[test]
fn a_quarantined_volume_document_is_named_by_the_commands_that_need_it() {
    let env = Env::new("docs-volume-quarantined");
    env.init(&[]);
    let disk = env.path("vb.img");
    write_at(&disk, 4 << 20, 0, &random_bytes(1 << 20, 9));
    let real = fs::canonicalize(&disk).unwrap();
    env.json(&[
        "volume",
        "add",
        "vb",
        disk.to_str().unwrap(),
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
        "d: every 1d keep 3",
    ]);
    let first = id(&env.json(&["snapshot", "create", "vb"]));
    let doc = env.store.join("volumes").join("vb.json");
    fs::write(&doc, b"{\"format\": \"blocksnap.volume/v1\", \"name\":").unwrap();
    let needs: [&[&str]; 2] = [
        &["snapshot", "create", "vb"],
        &["image", "create", "im", "--volume", "/dev/vda=vb"],
    ];

    // Damaged: the file and `repair documents` are named.
    for args in needs {
        let out = env.run(args);
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            err.contains(doc.to_str().unwrap()) && err.contains("blocksnap repair documents"),
            "{args:?}: {err}"
        );
    }
    let (_, err) = json_err(&env, &["policy", "run"]);
    assert_warns(&err, &doc, "policy run");
    assert!(err.contains("repair documents"), "{err}");
    // Unrelated work goes on: a snapshot of another disk, the volume list.
    let other = env.path("other.img");
    write_at(&other, 2 << 20, 0, &random_bytes(1 << 20, 10));
    env.snapshot(&other, "other");
    let (_, err) = json_err(&env, &["volume", "list"]);
    assert_warns(&err, &doc, "volume list");

    // Quarantined: no longer registered, and each command says where it went and what to do.
    let r = env.json(&["repair", "documents"]);
    let moved_to = env.store.join("quarantine").join("volumes").join("vb.json");
    assert_eq!(r["moved"][0]["to"], moved_to.to_str().unwrap(), "{r}");
    let fix = format!("blocksnap volume add vb {}", real.display());
    for args in needs {
        let out = env.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for w in [
            "no such disk image or volume: vb",
            moved_to.to_str().unwrap(),
            "repair documents",
            &fix,
        ] {
            assert!(err.contains(w), "{args:?}: lacks {w:?}: {err}");
        }
    }
    for args in [&["policy", "run"][..], &["volume", "list"][..]] {
        let (v, err) = json_err(&env, args);
        assert!(
            err.contains("warning")
                && err.contains(moved_to.to_str().unwrap())
                && err.contains(&fix),
            "{args:?}: {err}"
        );
        if args[0] == "policy" {
            assert!(v["taken"].as_array().unwrap().is_empty(), "{v}");
        }
    }
    assert_eq!(env.json(&["image", "list"]), serde_json::json!([]));

    // Registered again: snapshots continue the chain and the warnings stop.
    env.json(&[
        "volume",
        "add",
        "vb",
        disk.to_str().unwrap(),
        "--tag",
        "tier=gold",
    ]);
    let (s, err) = json_err(&env, &["snapshot", "create", "vb"]);
    assert_eq!(s["parent"], first.as_str(), "{s}");
    assert!(!err.contains("warning"), "{err}");
    let (_, err) = json_err(&env, &["volume", "list"]);
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn a_damaged_document_of_another_volume_keeps_the_parent() {
    let env = Env::new("docs-parent");
    let (a, b, _, a2, b1) = two_volumes(&env);
    // Valid JSON naming volume `a`, but not a valid snapshot document.
    let bad = doc_path(&env, &a2);
    let mut doc: Value = serde_json::from_slice(&fs::read(&bad).unwrap()).unwrap();
    doc["size"] = Value::from("big");
    fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    // b's latest snapshot is known for sure (from its head; and by listing, where the damaged
    // document names volume a): it stays the parent.
    let (s, err) = json_err(
        &env,
        &["snapshot", "create", b.to_str().unwrap(), "--volume", "b"],
    );
    assert_eq!(s["parent"], b1.as_str(), "{s}\n{err}");
    fs::remove_file(env.store.join("heads").join("b.json")).unwrap();
    let (s2, err) = json_err(
        &env,
        &["snapshot", "create", b.to_str().unwrap(), "--volume", "b"],
    );
    assert_eq!(s2["parent"], s["id"], "{s2}\n{err}");
    assert_warns(&err, &bad, "snapshot create b");
    // a's latest is the damaged one (its head names it): none.
    let (s, err) = json_err(
        &env,
        &["snapshot", "create", a.to_str().unwrap(), "--volume", "a"],
    );
    assert_eq!(s["parent"], Value::Null, "{s}");
    assert!(err.contains("no parent"), "{err}");
}

#[test]
fn a_document_of_a_newer_format_is_skipped_and_left_in_place() {
    let env = Env::new("docs-newer");
    let (_, _, a1, a2, b1) = two_volumes(&env);
    let newer = doc_path(&env, &a2);
    let mut doc: Value = serde_json::from_slice(&fs::read(&newer).unwrap()).unwrap();
    doc["format"] = Value::from("blocksnap.snapshot/v2");
    fs::write(&newer, serde_json::to_vec(&doc).unwrap()).unwrap();
    let (list, err) = json_err(&env, &["snapshot", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(
        err.contains(&newer.display().to_string()) && err.contains("upgrade blocksnap"),
        "{err}"
    );
    let r = env.json(&["repair", "documents"]);
    assert!(r["moved"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["left"][0]["path"], newer.to_str().unwrap(), "{r}");
    assert!(newer.exists());
    let p = env.run(&["prune"]);
    assert_eq!(p.status.code(), Some(1));
    assert!(stderr(&p).contains("newer blocksnap"), "{}", stderr(&p));
    let _ = (a1, b1);
}

#[test]
fn a_store_that_lost_its_config_and_keys_is_recovered_from_an_export() {
    let env = Env::new("docs-recovery");
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 12, 7);
    let disk = env.path("disk.img");
    make_ext4(&disk, 24 << 20, &tree);
    let snap = id(&env.snapshot(&disk, "disk"));

    // The export: one 0600 file with the config, the accounts and the keys.
    let file = env.path("recovery.json");
    let r = env.json(&["recovery", "export", file.to_str().unwrap()]);
    assert_eq!(r["accounts"][0], "alice", "{r}");
    assert_eq!(r["keys"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let exported: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(exported["format"], "blocksnap.recovery/v1");
    let again = env.run(&["recovery", "export", file.to_str().unwrap()]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an export never replaces a file"
    );

    // A lost key document: the restore says what is missing and how to recover.
    let keys: Vec<PathBuf> = fs::read_dir(env.store.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1);
    let key_bytes = fs::read(&keys[0]).unwrap();
    fs::remove_file(&keys[0]).unwrap();
    let out = env.path("out.img");
    let r = env.run(&["snapshot", "restore", &snap, out.to_str().unwrap()]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is missing") && err.contains("recovery import"),
        "{err}"
    );

    // Then the config goes too, and the account document is overwritten with garbage.
    let config = env.store.join("config");
    fs::remove_file(&config).unwrap();
    let account = env.store.join("accounts").join("alice.json");
    fs::write(&account, b"garbage").unwrap();
    let r = env.run(&["snapshot", "list"]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&config.display().to_string())
            && err.contains("recovery import")
            && err.contains("snapshot document")
            && !err.contains("create one with"),
        "{err}"
    );
    // init refuses to make a new store over the data.
    let r = env.run(&["init", "--account", "alice"]);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("recovery import"), "{err}");
    assert!(!config.exists());

    // A recovery file of another store is refused, changing nothing.
    let other = Env::new("docs-recovery-other");
    other.init(&[]);
    let other_file = other.path("recovery.json");
    other.json(&["recovery", "export", other_file.to_str().unwrap()]);
    let r = env.run(&["recovery", "import", other_file.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).contains("another store"), "{}", stderr(&r));
    assert!(!config.exists());

    // The import puts back the config and the key, quarantines the damaged account document
    // and writes the good one.
    let r = env.json(&["recovery", "import", file.to_str().unwrap()]);
    let restored: Vec<&str> = r["restored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in [&config, &keys[0], &account] {
        assert!(
            restored.contains(&p.to_str().unwrap()),
            "{} not restored: {r}",
            p.display()
        );
    }
    assert_eq!(
        r["quarantined"][0]["from"],
        account.to_str().unwrap(),
        "{r}"
    );
    let q = env
        .store
        .join("quarantine")
        .join("accounts")
        .join("alice.json");
    assert_eq!(fs::read(&q).unwrap(), b"garbage");
    assert_eq!(fs::read(&keys[0]).unwrap(), key_bytes);

    // The data restores with the identity, and the store is sound.
    env.restore(&snap, &out);
    assert_same(&disk, &out);
    assert_eq!(env.json(&["check", "--read-data"])["ok"], true);
    // A second import finds everything in place and replaces nothing.
    let r = env.json(&["recovery", "import", file.to_str().unwrap()]);
    assert!(r["restored"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["kept"].as_array().unwrap().len(), 3, "{r}");
}
