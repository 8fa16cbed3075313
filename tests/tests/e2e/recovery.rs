//! `recovery import` into a store whose config is gone: the store's own data (its accounts'
//! public keys, its identity files' directory, the key ids of its key documents, snapshots and
//! pack headers) decides whether the file is its export; another store's is refused, nothing
//! written.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;

/// Every file under `dir`, with its bytes: what the store holds.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn refused(r: &Output, env: &Env, before: &[(PathBuf, Vec<u8>)], want: &str) {
    let err = stderr(r);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("another store") && err.contains("nothing was changed") && err.contains(want),
        "{err}"
    );
    assert_eq!(
        contents(&env.store),
        before,
        "the refused import changed the store"
    );
}

#[test]
fn import_without_config_refuses_the_export_of_another_store() {
    let env = Env::new("recovery-other");
    env.init(&[]);
    let disk = env.path("disk.img");
    fs::write(&disk, random_bytes(3 << 20, 5)).unwrap();
    let snap = env.snapshot(&disk, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let own = env.path("own.json");
    env.json(&["recovery", "export", own.to_str().unwrap()]);

    // Another store, same user, same account name, its own data and export.
    let other = env.path("other");
    let ok = |o: Output| assert!(o.status.success(), "{}", stderr(&o));
    ok(env
        .cmd_at(&other)
        .args(["init", "--account", "alice"])
        .output()
        .unwrap());
    ok(env
        .cmd_at(&other)
        .args(["snapshot", "create", disk.to_str().unwrap()])
        .output()
        .unwrap());
    let theirs = env.path("theirs.json");
    ok(env
        .cmd_at(&other)
        .args(["recovery", "export", theirs.to_str().unwrap()])
        .output()
        .unwrap());

    let config = env.store.join("config");
    let kept = env.path("config.kept");
    fs::rename(&config, &kept).unwrap();
    let before = contents(&env.store);
    assert!(!config.exists());
    let import = |config_home: Option<&Path>| {
        let mut c = env.cmd();
        if let Some(h) = config_home {
            c.env("XDG_CONFIG_HOME", h);
        }
        c.args(["recovery", "import", theirs.to_str().unwrap()])
            .output()
            .unwrap()
    };

    // The identity file of the store's account is kept under the store's own id.
    refused(&import(None), &env, &before, "kept for store");
    // Elsewhere (no identity files): the account 'alice' of the store has another public key.
    let elsewhere = env.path("elsewhere");
    refused(&import(Some(&elsewhere)), &env, &before, "public key");
    // Without account documents: the key documents name a key the file does not hold.
    let moved = env.path("moved");
    fs::create_dir(&moved).unwrap();
    fs::rename(env.store.join("accounts"), moved.join("accounts")).unwrap();
    let before = contents(&env.store);
    refused(
        &import(Some(&elsewhere)),
        &env,
        &before,
        "holds none of them",
    );
    // Without key documents either: the snapshots and the pack headers name it.
    fs::rename(env.store.join("keys"), moved.join("keys")).unwrap();
    let before = contents(&env.store);
    refused(&import(Some(&elsewhere)), &env, &before, "snapshots/");
    // Packs alone still name their key.
    fs::rename(env.store.join("snapshots"), moved.join("snapshots")).unwrap();
    let before = contents(&env.store);
    refused(&import(Some(&elsewhere)), &env, &before, "packs/");
    fs::rename(moved.join("snapshots"), env.store.join("snapshots")).unwrap();

    // A damaged config that still names its id refuses the other store's file too.
    fs::rename(moved.join("keys"), env.store.join("keys")).unwrap();
    fs::rename(moved.join("accounts"), env.store.join("accounts")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&kept).unwrap()).unwrap();
    doc.as_object_mut().unwrap().remove("chunker");
    let damaged = serde_json::to_vec(&doc).unwrap();
    fs::write(&config, &damaged).unwrap();
    let before = contents(&env.store);
    let r = import(Some(&elsewhere));
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("another store") && err.contains("damaged") && err.contains("names store"),
        "{err}"
    );
    assert_eq!(contents(&env.store), before);
    fs::remove_file(&config).unwrap();

    // The store's own export is taken, and the data restores.
    let r = env.json(&["recovery", "import", own.to_str().unwrap()]);
    assert_eq!(r["restored"][0], config.to_str().unwrap(), "{r}");
    assert_eq!(fs::read(&config).unwrap(), fs::read(&kept).unwrap());
    let out = env.path("out.img");
    env.restore(&snap, &out);
    assert_same(&disk, &out);
}
