//! Progress under a real terminal (`script` gives the command one): a snapshot counts the data
//! it reads, holes left out before it starts, and `check --read-data` the bytes of the packs;
//! without a terminal there is no bar.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Runs blocksnap with `args` under `script`, on a pseudo-terminal; returns what the terminal
/// showed, one line per redraw, without escape sequences.
fn on_terminal(env: &Env, args: &[&str]) -> Vec<String> {
    let bin = env!("CARGO_BIN_EXE_blocksnap-e2e");
    let line = std::iter::once(bin.to_string())
        .chain(["--store".to_string(), env.store.display().to_string()])
        .chain(args.iter().map(|a| (*a).to_string()))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("XDG_CONFIG_HOME", env.dir.join("config"))
        .env("XDG_CACHE_HOME", env.dir.join("cache"))
        .env("XDG_DATA_HOME", env.dir.join("data"))
        .env("COLUMNS", "120")
        .env_remove("BLOCKSNAP_STORE")
        .output()
        .expect("`script` (util-linux or bsdutils) runs the command on a terminal");
    assert!(out.status.success(), "{args:?} under script: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then one letter.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
        .lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A 1 GiB disk holding 32 MiB of data at each end and a hole between.
fn sparse_disk(path: &Path) {
    write_at(path, 1 << 30, 0, &random_bytes(32 << 20, 1));
    write_at(
        path,
        1 << 30,
        (1 << 30) - (32 << 20),
        &random_bytes(32 << 20, 2),
    );
}

#[test]
fn a_snapshot_counts_the_data_it_reads_and_check_read_data_the_bytes_of_the_packs() {
    let env = Env::new("progress");
    env.init(&[]);
    let disk = env.path("disk.img");
    sparse_disk(&disk);

    let shown = on_terminal(&env, &["snapshot", "create", disk.to_str().unwrap()]);
    let bars: Vec<&String> = shown
        .iter()
        .filter(|l| l.starts_with("snapshot ["))
        .collect();
    assert!(!bars.is_empty(), "a bar on a terminal: {shown:#?}");
    for b in &bars {
        // The total is the 64 MiB of data, not the 1 GiB volume.
        assert!(b.contains("/64.00 MiB"), "{b}\n{shown:#?}");
    }
    // The bar never passes the data from the first end straight to done: every redraw that
    // shows a rate shows one in MiB/s or less (holes are not read, so never GiB/s).
    assert!(
        !bars.iter().any(|b| b.contains("GiB/s")),
        "holes counted as instant gigabytes: {bars:#?}"
    );
    let report = shown.last().unwrap();
    assert!(report.contains("read 64.0 MiB"), "{report}");

    let shown = on_terminal(&env, &["check", "--read-data"]);
    let bars: Vec<&String> = shown
        .iter()
        .filter(|l| l.starts_with("check data ["))
        .collect();
    assert!(!bars.is_empty(), "{shown:#?}");
    for b in &bars {
        // Bytes of packs (a little more than the data they hold), not packs shown as bytes.
        assert!(
            b.contains("B/64.") && b.contains(" MiB") && !b.contains("pack"),
            "{b}\n{shown:#?}"
        );
    }
    assert!(
        shown.iter().any(|l| l == "result: no problems"),
        "{shown:#?}"
    );

    // Without a terminal: the report and no bar.
    let out = env.run(&["snapshot", "create", disk.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(!stderr(&out).contains('['), "{}", stderr(&out));
}
