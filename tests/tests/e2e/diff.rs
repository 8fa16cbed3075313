//! `snapshot diff`: the changed 4 KiB blocks (or exact byte ranges) between two snapshots of
//! real ext4 disks, checked against a comparison of the image files themselves.

use std::fs;
use std::path::Path;

use crate::common::*;
use serde_json::Value;

/// The blocks of `granularity` bytes (from offset 0, the last cut at `b`'s end) where `b`
/// differs from `a` read as zeros past its end, touching ones merged. A granularity of 1 gives
/// the exact byte ranges.
fn true_diff(a: &Path, b: &Path, granularity: usize) -> Vec<[u64; 2]> {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    let mut out: Vec<[u64; 2]> = Vec::new();
    for (k, block) in y.chunks(granularity).enumerate() {
        let at = k * granularity;
        let differs = block
            .iter()
            .enumerate()
            .any(|(i, byte)| x.get(at + i).copied().unwrap_or(0) != *byte);
        if differs {
            match out.last_mut() {
                Some([o, l]) if *o + *l == at as u64 => *l += block.len() as u64,
                _ => out.push([at as u64, block.len() as u64]),
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

fn id(v: Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn diff_of_an_ext4_disk_changed_with_debugfs_is_its_changed_4k_blocks() {
    let env = Env::new("diff-ext4");
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 40, 11);
    let base = env.path("base.img");
    make_ext4(&base, 64 << 20, &tree);
    let changed = env.path("changed.img");
    copy_sparse(&base, &changed);
    // One 3 MB file written, plus two removals: bytes that happen to be equal inside the new
    // file split its exact ranges into thousands; its blocks are a handful of ranges.
    let new_file = env.path("new.bin");
    fs::write(&new_file, random_bytes(3_000_000, 12)).unwrap();
    debugfs(
        &changed,
        &[
            "rm /bin/prog0".into(),
            format!("write {} /bin/new", new_file.display()),
            "rm /doc/text3.txt".into(),
        ],
    );
    let a = id(env.snapshot(&base, "disk"));
    // The changed copy is the same disk later, in another file.
    let b = id(env.json(&[
        "snapshot",
        "create",
        changed.to_str().unwrap(),
        "--volume",
        "disk",
        "--source-moved",
    ]));

    let d = env.json(&["snapshot", "diff", &a, &b]);
    assert_eq!(d["a"], a.as_str());
    assert_eq!(d["b"], b.as_str());
    assert_eq!(d["size"], 64 << 20);
    assert_eq!(d["size_a"], 64 << 20);
    assert_eq!(d["granularity"], 4096);
    let blocks = true_diff(&base, &changed, 4096);
    assert!(!blocks.is_empty());
    assert_eq!(ranges(&d), blocks);
    assert!(
        blocks.len() < 40,
        "a 3 MB file is a few runs of blocks: {blocks:?}"
    );
    let total: u64 = blocks.iter().map(|r| r[1]).sum();
    assert_eq!(d["bytes_changed"], total);
    assert_eq!(total, changed_block_bytes(&base, &changed));
    // Only the chunks around the change were read, not the disk.
    assert!(d["bytes_read"].as_u64().unwrap() < 16 << 20, "{d}");

    // --exact: the exact byte ranges, thousands of them.
    let exact = env.json(&["snapshot", "diff", &a, &b, "--exact"]);
    assert_eq!(exact["granularity"], 1);
    let bytes = true_diff(&base, &changed, 1);
    assert!(bytes.len() > 1000, "{}", bytes.len());
    assert_eq!(ranges(&exact), bytes);
    // Another block size, aligned to the start of the disk.
    let big = env.json(&["snapshot", "diff", &a, &b, "--granularity", "64KiB"]);
    assert_eq!(big["granularity"], 65536);
    assert_eq!(ranges(&big), true_diff(&base, &changed, 65536));

    // The text: a table of ranges and a summary sentence.
    let out = env.run(&["snapshot", "diff", &a, &b]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.trim_start().starts_with("OFFSET"), "{text}");
    assert!(!text.lines().any(|l| l.ends_with(' ')), "{text}");
    let last = text.lines().last().unwrap();
    assert!(
        last.contains(&format!("{} ranges of whole 4.0 KiB blocks", blocks.len())),
        "{last}"
    );

    // A snapshot against itself, and the reverse direction.
    assert!(ranges(&env.json(&["snapshot", "diff", &a, &a])).is_empty());
    let same = env.run(&["snapshot", "diff", &a, &a]);
    assert!(String::from_utf8_lossy(&same.stdout).starts_with("no change from"));
    assert_eq!(
        ranges(&env.json(&["snapshot", "diff", &b, &a])),
        true_diff(&changed, &base, 4096)
    );

    // The same disk under another key: different chunk ids, equal bytes, no change.
    env.json(&["key", "create", "other"]);
    let c = id(env.json(&[
        "snapshot",
        "create",
        base.to_str().unwrap(),
        "--volume",
        "disk2",
        "--key",
        "other",
    ]));
    assert!(ranges(&env.json(&["snapshot", "diff", &a, &c])).is_empty());
    assert_eq!(ranges(&env.json(&["snapshot", "diff", &c, &b])), blocks);

    // Flags that make no sense are usage errors.
    for bad in [
        vec!["--granularity", "0"],
        vec!["--exact", "--granularity", "4KiB"],
        vec!["--granularity", "4XB"],
    ] {
        let mut args = vec!["snapshot", "diff", &a, &b];
        args.extend(bad.iter().copied());
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
}

#[test]
fn a_grown_tail_counts_only_where_it_holds_data_and_a_shrunk_volume_says_so() {
    let env = Env::new("diff-sizes");
    env.init(&[]);
    let small = env.path("small.img");
    write_at(&small, 4 << 20, 1 << 20, &random_bytes(100_000, 3));
    // Grown to 8 MiB: a change inside the old size, a hole from 4 to 6 MiB, data at 6 MiB.
    let big = env.path("big.img");
    copy_sparse(&small, &big);
    write_at(&big, 8 << 20, 2 << 20, &random_bytes(5000, 4));
    write_at(&big, 8 << 20, 6 << 20, &random_bytes(10_000, 5));
    let a = id(env.snapshot(&small, "v"));
    let b = id(env.json(&[
        "snapshot",
        "create",
        big.to_str().unwrap(),
        "--volume",
        "v",
        "--source-moved",
    ]));
    let d = env.json(&["snapshot", "diff", &a, &b]);
    assert_eq!(d["size"], 8 << 20);
    assert_eq!(d["size_a"], 4 << 20);
    let got = ranges(&d);
    assert_eq!(got, true_diff(&small, &big, 4096));
    // The change at 2 MiB, then the data at 6 MiB; the hole from 4 to 6 MiB is no change.
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], [2 << 20, 8192]);
    assert_eq!(got[1], [6 << 20, 12288]);
    let exact = env.json(&["snapshot", "diff", &a, &b, "--exact"]);
    assert_eq!(ranges(&exact), true_diff(&small, &big, 1));
    let text = String::from_utf8(env.run(&["snapshot", "diff", &a, &b]).stdout).unwrap();
    assert!(
        text.contains("the volume grew from 4.0 MiB to 8.0 MiB"),
        "{text}"
    );

    // The other way: the volume shrank; the ranges stop at the smaller size, and it is said.
    let d = env.json(&["snapshot", "diff", &b, &a]);
    assert_eq!(d["size"], 4 << 20);
    assert_eq!(d["size_a"], 8 << 20);
    assert_eq!(ranges(&d), [[2 << 20, 8192]]);
    let out = env.run(&["snapshot", "diff", &b, &a]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "the volume shrank from 8.0 MiB to 4.0 MiB: {b}'s last 4.0 MiB are not in {a}"
        )),
        "{text}"
    );
    // A last block cut short by an unaligned size.
    let odd = env.path("odd.img");
    write_at(&odd, (4 << 20) + 100, (4 << 20) + 10, b"tail");
    let o = id(env.snapshot(&odd, "odd"));
    let e = id(env.snapshot(&small, "odd-base"));
    let d = env.json(&["snapshot", "diff", &e, &o]);
    assert_eq!(ranges(&d), true_diff(&small, &odd, 4096));
    assert_eq!(ranges(&d).last(), Some(&[4 << 20, 100]));

    let bad = env.run(&["snapshot", "diff", &a, "snap-nothing"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}
