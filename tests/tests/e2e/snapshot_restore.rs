//! Snapshot and restore of real disk images, driven through the binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;

fn id(v: &serde_json::Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn u(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric field {field} in {v}"))
}

/// The ext4 workflow of the issue: build an image from real files, change it with debugfs,
/// snapshot both, restore both, compare bytes; the change costs about what changed.
#[test]
fn ext4_image_changed_with_debugfs_restores_byte_identical_and_incrementally() {
    let env = Env::new("ext4_change");
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 120, 1);
    let base = env.path("base.img");
    make_ext4(&base, 256 << 20, &tree);

    let changed = env.path("changed.img");
    copy_sparse(&base, &changed);
    let extra = env.path("extra");
    make_tree(&extra, 12, 2);
    let mut cmds = Vec::new();
    for i in (0..40).step_by(4) {
        cmds.push(format!("rm /bin/prog{i}"));
    }
    for (n, f) in fs::read_dir(extra.join("bin")).unwrap().enumerate() {
        cmds.push(format!("write {} /bin/new{n}", f.unwrap().path().display()));
    }
    // Replace files in place: remove, then write new content under the same name.
    for i in [41, 43, 45] {
        cmds.push(format!("rm /doc/text{i}.txt"));
        cmds.push(format!(
            "write {} /doc/text{i}.txt",
            extra.join("doc/text1.txt").display()
        ));
    }
    debugfs(&changed, &cmds);
    let changed_bytes = changed_block_bytes(&base, &changed);
    assert!(
        changed_bytes > 100_000,
        "the change must change something ({changed_bytes})"
    );

    let s1 = env.snapshot(&base, "vol");
    // The changed copy is the same disk later, in another file.
    let s2 = env.json(&[
        "snapshot",
        "create",
        changed.to_str().unwrap(),
        "--volume",
        "vol",
        "--source-moved",
    ]);
    assert_eq!(s2["parent"], s1["id"]);
    assert_eq!(u(&s1, "size"), 256 << 20);
    assert!(
        u(&s1, "bytes_hole") > 100 << 20,
        "holes must not be read: {s1}"
    );
    // The incremental snapshot stores new bytes of the order of the changed blocks, not the disk.
    let new2 = u(&s2, "bytes_new");
    assert!(
        new2 >= changed_bytes / 4,
        "incremental stored {new2} for {changed_bytes} changed bytes"
    );
    assert!(
        new2 <= 3 * changed_bytes + (1 << 20),
        "incremental stored {new2} for {changed_bytes} changed bytes"
    );
    assert!(
        new2 < u(&s1, "bytes_new") / 2,
        "incremental {new2} vs full {}",
        u(&s1, "bytes_new")
    );

    let (r1, r2) = (env.path("r1.img"), env.path("r2.img"));
    let out1 = env.restore(&id(&s1), &r1);
    env.restore(&id(&s2), &r2);
    assert_same(&base, &r1);
    assert_same(&changed, &r2);
    assert_eq!(u(&out1, "size"), 256 << 20);
    // Sparse output: allocation near the data, not the size.
    assert!(
        allocated(&r1) < allocated(&base) + (8 << 20),
        "restored image is not sparse"
    );
}

#[test]
fn unchanged_resnapshot_stores_no_new_chunk() {
    let env = Env::new("unchanged");
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 40, 3);
    let img = env.path("disk.img");
    make_ext4(&img, 64 << 20, &tree);
    let s1 = env.snapshot(&img, "d");
    assert!(u(&s1, "chunks_new") > 0);
    let s2 = env.snapshot(&img, "d");
    assert_eq!(u(&s2, "chunks_new"), 0, "{s2}");
    assert_eq!(u(&s2, "bytes_new"), 0);
    assert_eq!(u(&s2, "chunks"), u(&s1, "chunks"));
    // Only the snapshot document is new (the extent list dedups too).
    assert!(u(&s2, "bytes_stored") < 4096, "{s2}");
}

/// A 64 GiB sparse file with 16 MiB of data: only the data is read, the restore is sparse.
#[test]
fn sparse_64gib_disk_reads_and_restores_only_its_data() {
    let env = Env::new("sparse64");
    env.init(&[]);
    let img = env.path("big.img");
    let size = 64u64 << 30;
    let mut pieces = Vec::new();
    for i in 0..16u64 {
        let off = i * (4 << 30) + (i * 12345 + 1) * 4096;
        let data = random_bytes(1 << 20, 100 + i);
        write_at(&img, size, off, &data);
        pieces.push((off, data));
    }
    let s = env.snapshot(&img, "big");
    assert_eq!(u(&s, "size"), size);
    assert!(
        u(&s, "bytes_read") <= 17 << 20,
        "read {} bytes",
        u(&s, "bytes_read")
    );
    assert!(u(&s, "bytes_hole") >= size - (17 << 20), "{s}");

    let out = env.path("restored.img");
    let r = env.restore(&id(&s), &out);
    let written = u(&r, "bytes_written");
    assert!((16 << 20..=17 << 20).contains(&written), "{r}");
    assert_eq!(fs::metadata(&out).unwrap().len(), size);
    assert!(
        allocated(&out) <= 20 << 20,
        "restored allocation {} is not sparse",
        allocated(&out)
    );
    let f = fs::File::open(&out).unwrap();
    for (off, data) in &pieces {
        let mut buf = vec![0u8; data.len() + 8192];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, off - 4096).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert_eq!(&buf[4096..4096 + data.len()], &data[..]);
        assert!(buf[4096 + data.len()..].iter().all(|&b| b == 0));
    }
}

#[test]
fn zero_runs_and_all_zero_data_are_not_stored() {
    let env = Env::new("zeros");
    env.init(&["--no-encryption"]);
    let img = env.path("zeros.img");
    // 32 MiB written as real zeros (allocated, not a hole), 1 MiB of data in the middle.
    fs::write(&img, vec![0u8; 32 << 20]).unwrap();
    write_at(&img, 32 << 20, 8 << 20, &random_bytes(1 << 20, 5));
    let s = env.snapshot(&img, "z");
    assert_eq!(u(&s, "bytes_read"), 32 << 20);
    assert!(u(&s, "bytes_new") <= (1 << 20) + (512 << 10), "{s}");
    let out = env.path("out.img");
    env.restore(&id(&s), &out);
    assert_same(&img, &out);
    assert!(allocated(&out) <= 3 << 20);
}

#[test]
fn fixed_chunker_round_trips() {
    let env = Env::new("fixed");
    env.init(&["--chunker", "fixed", "--chunk-size", "16KiB"]);
    let tree = env.path("tree");
    make_tree(&tree, 30, 7);
    let img = env.path("disk.img");
    make_ext4(&img, 48 << 20, &tree);
    let s = env.snapshot(&img, "d");
    let show = env.json(&["snapshot", "show", &id(&s)]);
    assert!(
        show["chunker"].as_str().unwrap().starts_with("fixed"),
        "{show}"
    );
    let out = env.path("out.img");
    env.restore(&id(&s), &out);
    assert_same(&img, &out);
}

/// Random sparse images: restore(snapshot(image)) == image.
#[test]
fn random_sparse_images_round_trip() {
    let env = Env::new("random_sparse");
    env.init(&[]);
    for case in 0..6u64 {
        let r = random_bytes(64, 900 + case);
        let size = 1 + (u64::from(r[0]) << 16) + u64::from(r[1]) * 333 + (16 << 20);
        let img = env.path(&format!("r{case}.img"));
        fs::File::create(&img).unwrap().set_len(size).unwrap();
        for k in 0..(r[2] % 8) as usize {
            let len = 1 + (r[3 + k] as usize) * 1111 + (r[10 + k] as usize) * 3;
            let off = (u64::from(r[20 + k]) << 16) % size;
            let len = len.min((size - off) as usize);
            let data = if k % 2 == 0 {
                random_bytes(len, case * 10 + k as u64)
            } else {
                text_bytes(len, k as u64)
            };
            write_at(&img, size, off, &data);
        }
        let s = env.snapshot(&img, &format!("r{case}"));
        let out = env.path(&format!("o{case}.img"));
        env.restore(&id(&s), &out);
        assert_same(&img, &out);
    }
}

#[test]
fn json_fields_of_the_cli_contract() {
    let env = Env::new("json");
    env.init(&[]);
    let img = env.path("d.img");
    write_at(&img, 8 << 20, 4096, &random_bytes(100_000, 1));
    let s = env.json(&[
        "snapshot",
        "create",
        img.to_str().unwrap(),
        "--tag",
        "env=prod",
        "--description",
        "first",
    ]);
    for f in [
        "id",
        "volume",
        "size",
        "bytes_read",
        "bytes_hole",
        "chunks",
        "chunks_new",
        "bytes_new",
        "bytes_stored",
        "seconds",
    ] {
        assert!(s.get(f).is_some(), "snapshot create lacks {f}: {s}");
    }
    assert_eq!(s["volume"], "d.img");
    assert!(id(&s).starts_with("snap-") && id(&s).len() == 21);
    let list = env.json(&["snapshot", "list", "--tag", "env=prod"]);
    let item = &list.as_array().unwrap()[0];
    for f in ["id", "volume", "size", "created", "tags"] {
        assert!(item.get(f).is_some(), "snapshot list lacks {f}: {item}");
    }
    assert_eq!(item["tags"]["env"], "prod");
    assert!(
        env.json(&["snapshot", "list", "--tag", "env=dev"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let prefix = &id(&s)[..9];
    let show = env.json(&["snapshot", "show", prefix]);
    assert_eq!(show["id"], s["id"]);
    assert!(show.get("parent").is_some() && show.get("key").is_some());
    assert!(show["key"].as_str().unwrap().starts_with("key-"));
    let r = env.json(&[
        "snapshot",
        "restore",
        prefix,
        env.path("o.img").to_str().unwrap(),
    ]);
    for f in ["id", "size", "bytes_written", "seconds"] {
        assert!(r.get(f).is_some(), "snapshot restore lacks {f}: {r}");
    }
}

/// The README's first command works on a fresh machine: the default store is created on first
/// use with an account, its identity at mode 0600, and a key named `default`.
#[test]
fn default_store_is_created_on_first_use() {
    let env = Env::new("default_store");
    let img = env.path("d.img");
    write_at(&img, 4 << 20, 0, &random_bytes(200_000, 2));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_blocksnap-e2e"));
    cmd.env("XDG_CONFIG_HOME", env.path("config"))
        .env("XDG_CACHE_HOME", env.path("cache"))
        .env("XDG_DATA_HOME", env.path("data"))
        .env("USER", "tester");
    cmd.env_remove("BLOCKSNAP_STORE")
        .env_remove("BLOCKSNAP_ACCOUNT")
        .env_remove("BLOCKSNAP_IDENTITY");
    let out = cmd
        .args(["--json", "snapshot", "create"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("created the default store"),
        "{}",
        stderr(&out)
    );
    let store = env.path("data/blocksnap/store");
    assert!(store.join("config").is_file());
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("config")).unwrap()).unwrap();
    let key = env
        .path("config/blocksnap")
        .join(config["id"].as_str().unwrap())
        .join("tester.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let keys: Vec<_> = fs::read_dir(store.join("keys")).unwrap().collect();
    assert_eq!(keys.len(), 1);
    let key_doc = fs::read_to_string(keys[0].as_ref().unwrap().path()).unwrap();
    assert!(key_doc.contains("\"name\": \"default\""));
    // No secret in the store: the identity's secret line is not in any store file.
    let secret = fs::read_to_string(&key).unwrap();
    let secret_line = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    for entry in walk(&store) {
        let bytes = fs::read(&entry).unwrap();
        assert!(
            !bytes
                .windows(secret_line.len())
                .any(|w| w == secret_line.as_bytes()),
            "secret in {}",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// No plain text of the image appears anywhere in an encrypted store; a plain store shows it
/// (which proves the search would find it).
#[test]
fn encrypted_store_holds_no_plaintext() {
    let marker = b"BLOCKSNAP-PLAINTEXT-MARKER-4f2a";
    let mut data = Vec::new();
    for i in 0..2000 {
        data.extend_from_slice(marker);
        data.extend_from_slice(&random_bytes(97, i));
    }
    for (flags, expect_visible) in [(&[][..], false), (&["--no-encryption"][..], true)] {
        let env = Env::new(if expect_visible {
            "plain_visible"
        } else {
            "encrypted_hidden"
        });
        env.init(flags);
        let img = env.path("secret.img");
        write_at(&img, 8 << 20, 1 << 20, &data);
        env.snapshot(&img, "s");
        let found = walk(&env.store).iter().any(|p| {
            let b = fs::read(p).unwrap();
            b.windows(marker.len()).any(|w| w == marker)
        });
        assert_eq!(found, expect_visible, "flags {flags:?}");
    }
}

/// Chunking depends on content alone: the same disk with its holes written out as zeros cuts
/// into the same chunks, so the second snapshot stores nothing new.
#[test]
fn holes_and_allocated_zeros_chunk_the_same() {
    let env = Env::new("holes_vs_zeros");
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 40, 21);
    let sparse = env.path("sparse.img");
    make_ext4(&sparse, 64 << 20, &tree);
    let dense = env.path("dense.img");
    let st = std::process::Command::new("cp")
        .arg("--sparse=never")
        .arg(&sparse)
        .arg(&dense)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        allocated(&dense) > allocated(&sparse) + (4 << 20),
        "{} vs {}",
        allocated(&dense),
        allocated(&sparse)
    );
    let a = env.snapshot(&sparse, "v");
    let b = env.json(&[
        "snapshot",
        "create",
        dense.to_str().unwrap(),
        "--volume",
        "v",
        "--source-moved",
    ]);
    assert_eq!(b["chunks_new"], 0, "{a}\n{b}");
    assert_eq!(a["chunks"], b["chunks"]);
    assert!(u(&b, "bytes_read") > u(&a, "bytes_read"));
}

/// Two processes on one store: a snapshot and a restore started together both complete (the
/// second waits for the index while the first holds it), and the restore is exact.
#[test]
fn concurrent_snapshot_and_restore_both_complete() {
    let env = Env::new("concurrent");
    env.init(&[]);
    let img = env.path("d.img");
    write_at(&img, 96 << 20, 0, &random_bytes(64 << 20, 77));
    let s = env.snapshot(&img, "a");
    let other = env.path("e.img");
    write_at(&other, 96 << 20, 4096, &random_bytes(48 << 20, 78));
    let mut snap = env
        .cmd()
        .args([
            "--json",
            "snapshot",
            "create",
            other.to_str().unwrap(),
            "--volume",
            "b",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = env.path("out.img");
    let restore = env.run(&["snapshot", "restore", &id(&s), out.to_str().unwrap()]);
    assert!(restore.status.success(), "{}", stderr(&restore));
    assert!(snap.wait().unwrap().success());
    assert_same(&img, &out);
    let list = env.json(&["snapshot", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
}

/// A restore does not wait for a process that holds the index (a running snapshot): it reads
/// the chunk locations from the pack trailers instead.
#[test]
fn restore_runs_beside_a_process_holding_the_index() {
    let env = Env::new("beside");
    env.init(&[]);
    let img = env.path("d.img");
    write_at(&img, 48 << 20, 1 << 20, &random_bytes(20 << 20, 120));
    let s = env.snapshot(&img, "d");
    let held =
        blocksnap_index::Index::open(&env.index_dir(), std::time::Duration::from_secs(5), |_| {})
            .unwrap();
    let out = env.path("o.img");
    let r = env.run(&["snapshot", "restore", &id(&s), out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("pack trailers"), "{}", stderr(&r));
    assert_same(&img, &out);
    drop(held);
}

/// Prune needs the store alone: it waits while another command of this host holds the store
/// lock shared (a running `serve nbd`, whose lock object names it), and goes on once it ends.
#[test]
fn prune_waits_for_running_commands() {
    let env = Env::new("prune_waits");
    env.init(&[]);
    let img = env.path("d.img");
    write_at(&img, 8 << 20, 0, &random_bytes(1 << 20, 121));
    let snap = env.snapshot(&img, "d")["id"].as_str().unwrap().to_string();
    let mut serve = env
        .cmd()
        .args(["serve", "nbd", &snap, "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let locks = env.store.join("locks");
    let start = std::time::Instant::now();
    while fs::read_dir(&locks).map_or(0, |d| d.count()) == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "serve nbd took no lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut prune = env
        .cmd()
        .args(["--json", "prune"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        prune.try_wait().unwrap().is_none(),
        "prune must wait while the store is locked"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&serve),
        rustix::process::Signal::INT,
    )
    .unwrap();
    serve.wait().unwrap();
    let out = prune.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for other blocksnap commands"));
}
