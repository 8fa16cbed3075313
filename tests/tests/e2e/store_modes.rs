//! What a store looks like to others on the machine: its files are never world-readable (0640,
//! folders 0750; an unencrypted store's own directory 0700), and every command that writes to an
//! unencrypted store says so on stderr.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;

/// Every file and folder under `dir`, with its permission bits.
fn modes(dir: &Path, out: &mut Vec<(String, u32, bool)>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        out.push((
            e.path().display().to_string(),
            meta.permissions().mode() & 0o777,
            meta.is_dir(),
        ));
        if meta.is_dir() {
            modes(&e.path(), out);
        }
    }
}

fn assert_private(env: &Env) {
    let mut all = Vec::new();
    modes(&env.store, &mut all);
    assert!(all.iter().any(|(p, _, _)| p.contains("/packs/")), "{all:?}");
    for (path, mode, dir) in &all {
        assert_eq!(mode & 0o007, 0, "{path} is open to other users: {mode:o}");
        assert_eq!(mode & 0o022, 0, "{path} is writable by its group: {mode:o}");
        if !dir {
            assert_eq!(mode & 0o111, 0, "{path}: {mode:o}");
        }
    }
}

fn root_mode(env: &Env) -> u32 {
    fs::metadata(&env.store).unwrap().permissions().mode() & 0o777
}

#[test]
fn an_unencrypted_store_says_so_on_every_write_and_keeps_its_files_private() {
    let env = Env::new("modes_plain");
    env.init(&["--no-encryption"]);
    assert_eq!(root_mode(&env), 0o700);
    let img = env.path("disk.img");
    write_at(&img, 8 << 20, 1 << 20, &random_bytes(2 << 20, 5));
    let writes: Vec<Vec<String>> = vec![
        vec![
            "volume".into(),
            "add".into(),
            "disk".into(),
            img.display().to_string(),
        ],
        vec!["snapshot".into(), "create".into(), "disk".into()],
        vec!["snapshot".into(), "create".into(), "disk".into()],
        vec![
            "policy".into(),
            "create".into(),
            "nightly".into(),
            "--target-tag".into(),
            "a=b".into(),
            "--schedule".into(),
            "every 1d keep 3".into(),
        ],
        vec!["policy".into(), "run".into()],
        vec!["account".into(), "create".into(), "bob".into()],
        vec!["unlock".into()],
    ];
    for args in &writes {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "note: the store {} is unencrypted",
                env.store.display()
            )),
            "{args:?} did not say so: {err}"
        );
        assert_eq!(err.matches("unencrypted").count(), 1, "one line: {err}");
    }
    let snaps = env.json(&["snapshot", "list"]);
    let first = snaps[0]["id"].as_str().unwrap().to_string();
    for args in [
        vec!["snapshot", "delete", first.as_str()],
        vec!["trash", "restore", first.as_str()],
        vec!["prune"],
        vec!["repair", "packs"],
    ] {
        let out = env.run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is unencrypted"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Reading commands, and writes that only look (--dry-run), say nothing of it.
    for args in [
        vec!["snapshot", "list"],
        vec!["check"],
        vec!["prune", "--dry-run"],
        vec!["repair", "documents", "--dry-run"],
    ] {
        let out = env.run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("unencrypted"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_private(&env);
    // The identities and the index cache are the user's alone: their folders (one per store)
    // are 0700, the identity files 0600.
    let mut checked = 0;
    for dir in [env.dir.join("config"), env.dir.join("cache")] {
        let mut all = Vec::new();
        modes(&dir, &mut all);
        for (path, mode, is_dir) in &all {
            let per_store = *is_dir
                && Path::new(path)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("store-"));
            if per_store || path.ends_with(".key") {
                assert_eq!(mode & 0o077, 0, "{path}: {mode:o}");
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 4,
        "the config and cache folders and two identities"
    );
}

#[test]
fn an_encrypted_store_is_quiet_about_it_and_keeps_its_files_from_other_users() {
    let env = Env::new("modes_encrypted");
    env.init(&[]);
    assert_eq!(root_mode(&env), 0o750);
    let img = env.path("disk.img");
    write_at(&img, 8 << 20, 1 << 20, &random_bytes(2 << 20, 6));
    let out = env.run(&[
        "snapshot",
        "create",
        img.to_str().unwrap(),
        "--volume",
        "disk",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("unencrypted"), "{}", stderr(&out));
    assert_private(&env);
}

/// `init --compression-level N` is recorded in the store and used by its snapshots: the same
/// text-like disk stores smaller at level 19 than at level 1, and restores identical from both.
/// A level zstd does not have is a usage error, and nothing is created.
#[test]
fn the_compression_level_chosen_at_init_is_the_store_s() {
    let mut stored = Vec::new();
    for level in ["1", "19"] {
        let mut env = Env::new(&format!("compression_level_{level}"));
        env.store = env.path("store");
        env.init(&["--compression-level", level]);
        let image = env.path("disk.img");
        fs::write(&image, text_bytes(4 << 20, 77)).unwrap();
        let snap = env.json(&[
            "snapshot",
            "create",
            image.to_str().unwrap(),
            "--volume",
            "d",
        ]);
        let out = env.path("restored.img");
        env.json(&[
            "snapshot",
            "restore",
            snap["id"].as_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert_same(&image, &out);
        stored.push(snap["bytes_stored"].as_u64().unwrap());
    }
    assert!(
        stored[1] < stored[0],
        "level 19 stored {} bytes, level 1 {}",
        stored[1],
        stored[0]
    );

    let env = Env::new("compression_level_bad");
    for bad in ["23", "-8", "high"] {
        let out = env.run(&["init", "--compression-level", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(!env.store.join("config").exists(), "{bad} made a store");
    }
}
