//! `snapshot diff`: the exact byte ranges that differ between two snapshots of real ext4 disks,
//! checked against a byte-by-byte comparison of the image files themselves.

use std::fs;
use std::path::Path;

use crate::common::*;
use serde_json::Value;

/// The ranges where two files differ (the shorter one read as zeros past its end), merged.
fn true_diff(a: &Path, b: &Path) -> Vec<[u64; 2]> {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    let mut out: Vec<[u64; 2]> = Vec::new();
    for i in 0..y.len() {
        let differs = i >= x.len() || x[i] != y[i];
        if differs {
            match out.last_mut() {
                Some([o, l]) if *o + *l == i as u64 => *l += 1,
                _ => out.push([i as u64, 1]),
            }
        }
    }
    out
}

fn ranges(v: &Value) -> Vec<[u64; 2]> {
    v["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| [r[0].as_u64().unwrap(), r[1].as_u64().unwrap()])
        .collect()
}

#[test]
fn diff_of_an_ext4_disk_changed_with_debugfs_is_exact() {
    let env = Env::new("diff-ext4");
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 40, 11);
    let base = env.path("base.img");
    make_ext4(&base, 64 << 20, &tree);
    let changed = env.path("changed.img");
    copy_sparse(&base, &changed);
    let new_file = env.path("new.bin");
    fs::write(&new_file, random_bytes(300_000, 12)).unwrap();
    debugfs(
        &changed,
        &[
            "rm /bin/prog0".into(),
            format!("write {} /bin/new", new_file.display()),
            "rm /doc/text3.txt".into(),
        ],
    );
    let a = env.snapshot(&base, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The changed copy is the same disk later, in another file.
    let b = env.json(&[
        "snapshot",
        "create",
        changed.to_str().unwrap(),
        "--volume",
        "disk",
        "--source-moved",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();

    let d = env.json(&["snapshot", "diff", &a, &b]);
    assert_eq!(d["a"], a.as_str());
    assert_eq!(d["b"], b.as_str());
    assert_eq!(d["size"], 64 << 20);
    let expected = true_diff(&base, &changed);
    assert!(!expected.is_empty());
    assert_eq!(ranges(&d), expected);
    // Only the chunks around the change were read, not the disk.
    assert!(d["bytes_read"].as_u64().unwrap() < 8 << 20, "{d}");

    // A snapshot against itself, and the reverse direction.
    assert!(ranges(&env.json(&["snapshot", "diff", &a, &a])).is_empty());
    assert_eq!(
        ranges(&env.json(&["snapshot", "diff", &b, &a])),
        true_diff(&changed, &base)
    );

    // The same disk under another key: different chunk ids, equal bytes, no change.
    env.json(&["key", "create", "other"]);
    let c = env.json(&[
        "snapshot",
        "create",
        base.to_str().unwrap(),
        "--volume",
        "disk2",
        "--key",
        "other",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ranges(&env.json(&["snapshot", "diff", &a, &c])).is_empty());
    assert_eq!(ranges(&env.json(&["snapshot", "diff", &c, &b])), expected);
}

#[test]
fn diff_of_disks_of_different_sizes_counts_the_tail() {
    let env = Env::new("diff-sizes");
    env.init(&[]);
    let small = env.path("small.img");
    write_at(&small, 4 << 20, 1 << 20, &random_bytes(100_000, 3));
    let big = env.path("big.img");
    copy_sparse(&small, &big);
    fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(6 << 20)
        .unwrap();
    write_at(&big, 6 << 20, 2 << 20, &random_bytes(5000, 4));
    let a = env.snapshot(&small, "v")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = env.json(&[
        "snapshot",
        "create",
        big.to_str().unwrap(),
        "--volume",
        "v",
        "--source-moved",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d = env.json(&["snapshot", "diff", &a, &b]);
    assert_eq!(d["size"], 6 << 20);
    // The written range inside the common size is exact (random bytes that happen to be zero
    // are not changes); everything past the old end counts as changed.
    let got = ranges(&d);
    assert_eq!(got, true_diff(&small, &big));
    assert_eq!(got.last(), Some(&[4 << 20, 2 << 20]));
    assert!(got.len() > 2 && got[0][0] >= 2 << 20 && got[got.len() - 2][0] < (2 << 20) + 5000);
    let bad = env.run(&["snapshot", "diff", &a, "snap-nothing"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}
