//! VM disks as they are: qcow2 images (with backing chains) as sources, read as the guest disk
//! they map; the same disk as qcow2 and as raw dedups; damaged or hostile images are refused
//! with an error naming the file. Needs qemu-utils (qemu-img, qemu-io; .ci/run installs it).

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Runs a qemu tool, asserting success; returns stdout.
pub(crate) fn qemu(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} runs (qemu-utils; .ci/run installs it): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 64 MiB ext4 guest disk (raw, sparse) holding a tree of files.
pub(crate) fn guest_disk(env: &Env, name: &str, seed: u64) -> std::path::PathBuf {
    let tree = env.path(&format!("{name}-tree"));
    make_tree(&tree, 24, seed);
    let raw = env.path(&format!("{name}.raw"));
    make_ext4(&raw, 64 << 20, &tree);
    raw
}

/// The guest disk a qcow2 image (and its chain) maps, as a raw file made by qemu-img.
pub(crate) fn qemu_raw(image: &Path, out: &Path) {
    qemu(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", s(image), s(out)],
    );
}

/// Bytes `qemu-img map` says hold data in a qcow2 image (through its chain).
fn mapped_data(image: &Path) -> u64 {
    let map = qemu("qemu-img", &["map", "--output=json", s(image)]);
    let v: serde_json::Value = serde_json::from_str(&map).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"].as_bool() == Some(true))
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_qcow2_image_snapshots_as_its_guest_disk_and_dedups_with_the_raw_one() {
    let env = Env::new("vm-qcow2");
    env.init(&[]);
    let raw = guest_disk(&env, "guest", 7);
    let qcow2 = env.path("guest.qcow2");
    qemu(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)],
    );

    // Recognised by its header: the guest disk, not the file's bytes.
    let a = env.snapshot(&qcow2, "vm");
    assert_eq!(a["size"], 64 << 20, "{a}");
    let data = mapped_data(&qcow2);
    let read = a["bytes_read"].as_u64().unwrap();
    assert!(
        read > 0 && read <= data + (64 << 10),
        "read {read} of {data} mapped: {a}"
    );
    let out = env.path("restored.raw");
    env.restore(a["id"].as_str().unwrap(), &out);
    let reference = env.path("reference.raw");
    qemu_raw(&qcow2, &reference);
    assert_same(&out, &reference);
    assert_same(&out, &raw);

    // The raw disk it came from: the same chunks, nothing new stored.
    let b = env.snapshot(&raw, "vm-raw");
    assert_eq!(b["chunks"], a["chunks"], "{a}\n{b}");
    assert_eq!(b["bytes_new"], 0, "{b}");
    assert_eq!(b["chunks_new"], 0, "{b}");
}

#[test]
fn a_backing_chain_is_followed_and_only_its_changes_are_new() {
    let env = Env::new("vm-chain");
    env.init(&[]);
    let raw = guest_disk(&env, "base", 11);
    let base = env.path("base.qcow2");
    qemu(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&base)],
    );
    let first = env.snapshot(&base, "vm");

    // An overlay on it (relative backing name, as libvirt writes them), written by the guest:
    // new data, zeroed clusters over data of the base, and data past the base's end of data.
    let top = env.path("top.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 1M 256k",
            "-c",
            "write -z 0 64k",
            "-c",
            "write -P 0x5c 40M 128k",
            s(&top),
        ],
    );
    let second = env.json(&["snapshot", "create", s(&top), "--volume", "vm"]);
    let out = env.path("top-restored.raw");
    env.restore(second["id"].as_str().unwrap(), &out);
    let reference = env.path("top-reference.raw");
    qemu_raw(&top, &reference);
    assert_same(&out, &reference);
    // 384 KiB were written (256 KiB of one repeated byte, whose chunks repeat): what is new is
    // about those bytes and the chunks around them.
    let new = second["bytes_new"].as_u64().unwrap();
    assert!((64 << 10..2 << 20).contains(&new), "{second}");
    assert_eq!(second["parent"], first["id"], "{second}");

    // --format raw reads the file's own bytes (qcow2 metadata and all).
    let as_file = env.json(&[
        "snapshot",
        "create",
        s(&top),
        "--volume",
        "top-file",
        "--format",
        "raw",
    ]);
    assert_eq!(
        as_file["size"],
        fs::metadata(&top).unwrap().len(),
        "{as_file}"
    );
    let file_out = env.path("top-file.out");
    env.restore(as_file["id"].as_str().unwrap(), &file_out);
    assert_same(&file_out, &top);
}

/// Asserts `snapshot create IMAGE` fails with exit status 2 and a message that names the file
/// and holds `words`, without a panic.
fn refused(env: &Env, image: &Path, words: &[&str]) {
    let out = env.run(&["snapshot", "create", s(image), "--volume", "bad"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(s(image)), "the error names the file: {err}");
    for w in words {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn damaged_and_hostile_qcow2_images_are_refused_naming_the_file() {
    let env = Env::new("vm-hostile");
    env.init(&[]);
    let good = env.path("good.qcow2");
    qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&good), "16M"],
    );
    qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 1 0 64k", s(&good)],
    );
    let bytes = fs::read(&good).unwrap();

    // Cut short inside its header.
    let cut = env.path("cut.qcow2");
    fs::write(&cut, &bytes[..40]).unwrap();
    refused(&env, &cut, &["qcow2"]);

    // An L1 table past the end of the file (header bytes 40..48: l1_table_offset).
    let far = env.path("far-l1.qcow2");
    let mut b = bytes.clone();
    b[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
    fs::write(&far, &b).unwrap();
    // imago reads the missing table as empty: the disk would read as zeros, silently.
    refused(&env, &far, &["L1 table", "past the end"]);

    // An absurd cluster size (header bytes 20..24: cluster_bits).
    let bits = env.path("cluster-bits.qcow2");
    let mut b = bytes.clone();
    b[20..24].copy_from_slice(&63u32.to_be_bytes());
    fs::write(&bits, &b).unwrap();
    refused(&env, &bits, &["cluster"]);

    // A backing file that is no disk, and a chain that loops.
    let dev = env.path("devzero.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "/dev/zero",
            "-F",
            "raw",
            s(&dev),
            "16M",
        ],
    );
    refused(&env, &dev, &["/dev/zero", "not a regular file"]);
    let (a, b) = (env.path("a.qcow2"), env.path("b.qcow2"));
    qemu("qemu-img", &["create", "-q", "-f", "qcow2", s(&a), "16M"]);
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            s(&b),
        ],
    );
    qemu(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            s(&a),
        ],
    );
    refused(&env, &a, &["backing chain"]);
    let list = env.json(&["snapshot", "list", "--volume", "bad"]);
    assert!(
        list.as_array().unwrap().is_empty(),
        "nothing was committed: {list}"
    );
}

/// A `qemu-nbd` serving one image read-only, stopped when dropped.
struct QemuNbd {
    child: std::process::Child,
    uri: String,
}

impl QemuNbd {
    /// Serves `image` (of `format`) as export `disk`: on a free 127.0.0.1 port, or on the
    /// Unix socket `socket`; `extra` are more qemu-nbd arguments (`--bitmap NAME`).
    fn start(image: &Path, format: &str, socket: Option<&Path>, extra: &[&str]) -> QemuNbd {
        let mut c = Command::new("qemu-nbd");
        c.args([
            "--read-only",
            "--persistent",
            "--shared=4",
            "-x",
            "disk",
            "-f",
            format,
        ]);
        c.args(extra);
        let uri = match socket {
            Some(sock) => {
                c.arg("-k").arg(sock);
                format!("nbd+unix:///disk?socket={}", s(sock))
            }
            None => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                c.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
                format!("nbd://127.0.0.1:{port}/disk")
            }
        };
        let child = c
            .arg(image)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("qemu-nbd runs (qemu-utils; .ci/run installs it)");
        let server = QemuNbd { child, uri };
        // Ready once qemu-img can read its size.
        for _ in 0..200 {
            let info = Command::new("qemu-img")
                .args(["info", "--image-opts"])
                .arg(server.image_opts())
                .output()
                .unwrap();
            if info.status.success() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("qemu-nbd did not start serving {}", server.uri);
    }

    fn image_opts(&self) -> String {
        match self.uri.split_once("socket=") {
            Some((_, sock)) => {
                format!("driver=nbd,export=disk,server.type=unix,server.path={sock}")
            }
            None => {
                let port = self
                    .uri
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .trim_end_matches("/disk");
                format!(
                    "driver=nbd,export=disk,server.type=inet,server.host=127.0.0.1,server.port={port}"
                )
            }
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nbd_exports_over_tcp_and_unix_sockets_snapshot_their_allocated_data() {
    let env = Env::new("vm-nbd");
    env.init(&[]);
    let raw = guest_disk(&env, "guest", 21);
    let qcow2 = env.path("guest.qcow2");
    qemu(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)],
    );
    let from_raw = env.snapshot(&raw, "vm-raw");

    let server = QemuNbd::start(&qcow2, "qcow2", None, &[]);
    let a = env.json(&["snapshot", "create", &server.uri, "--volume", "vm"]);
    drop(server);
    assert_eq!(a["size"], 64 << 20, "{a}");
    let read = a["bytes_read"].as_u64().unwrap();
    assert!(read > 0 && read <= mapped_data(&qcow2) + (64 << 10), "{a}");
    assert_eq!(a["chunks"], from_raw["chunks"], "{a}");
    assert_eq!(a["bytes_new"], 0, "the same disk as the raw one: {a}");
    let out = env.path("nbd.out");
    env.restore(a["id"].as_str().unwrap(), &out);
    assert_same(&out, &raw);

    // A VMDK, which blocksnap does not parse itself, through a Unix socket.
    let vmdk = env.path("guest.vmdk");
    qemu(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vmdk", s(&raw), s(&vmdk)],
    );
    let sock = env.path("nbd.sock");
    let server = QemuNbd::start(&vmdk, "vmdk", Some(&sock), &[]);
    let b = env.json(&["snapshot", "create", &server.uri, "--volume", "vm-vmdk"]);
    drop(server);
    assert_eq!(b["bytes_new"], 0, "{b}");
    let out = env.path("vmdk.out");
    env.restore(b["id"].as_str().unwrap(), &out);
    assert_same(&out, &raw);

    // Nobody listening: a clear error, nothing committed.
    let gone = env.run(&[
        "snapshot",
        "create",
        "nbd+unix:///disk?socket=/nonexistent.sock",
    ]);
    let err = stderr(&gone);
    assert_eq!(gone.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/nonexistent.sock") && !err.contains("panicked"),
        "{err}"
    );
}

/// The arguments of a `--dirty-bitmap b0` snapshot of `source` as volume `vm`.
fn bitmap_snapshot(source: &str) -> [&str; 7] {
    [
        "snapshot",
        "create",
        source,
        "--volume",
        "vm",
        "--dirty-bitmap",
        "b0",
    ]
}

#[test]
fn a_dirty_bitmap_snapshot_reads_only_the_dirty_ranges_and_restores_identical() {
    let env = Env::new("vm-bitmap");
    env.init(&[]);
    let raw = guest_disk(&env, "guest", 31);
    let qcow2 = env.path("guest.qcow2");
    qemu(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)],
    );

    // No parent yet: refused.
    let server = QemuNbd::start(&qcow2, "qcow2", None, &[]);
    let out = env.run(&bitmap_snapshot(&server.uri));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("b0") && !err.contains("panicked"), "{err}");
    let first = env.json(&["snapshot", "create", &server.uri, "--volume", "vm"]);
    drop(server);

    // The bitmap starts right after the first snapshot; the guest writes through qemu-io.
    qemu(
        "qemu-img",
        &["bitmap", "--add", "-f", "qcow2", s(&qcow2), "b0"],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x77 8M 256k",
            "-c",
            "write -P 0x78 30M 128k",
            "-c",
            "write -z 1M 64k",
            s(&qcow2),
        ],
    );
    let reference = env.path("reference.raw");
    qemu_raw(&qcow2, &reference);
    let written: u64 = (256 + 128 + 64) << 10;

    let server = QemuNbd::start(&qcow2, "qcow2", None, &["--bitmap", "b0"]);
    let inc = env.json(&bitmap_snapshot(&server.uri));
    let full = env.json(&["snapshot", "create", &server.uri, "--volume", "vm-full"]);
    drop(server);
    assert_eq!(inc["parent"], first["id"], "{inc}");
    assert_eq!(inc["dirty_bitmap"], "b0", "{inc}");
    let read = inc["bytes_read"].as_u64().unwrap();
    // The dirty bytes, widened to the parent's chunks around them: far less than a full read.
    assert!(read <= written + (2 << 20), "read {read}: {inc}");
    assert!(
        read * 4 < full["bytes_read"].as_u64().unwrap(),
        "{inc}\n{full}"
    );
    assert!(inc["bytes_from_parent"].as_u64().unwrap() > 0, "{inc}");
    // The index recorded the first snapshot's packs: those were checked, not its chunks.
    assert_eq!(inc["parent_chunks_checked"], 0, "{inc}");
    let a = env.path("inc.out");
    env.restore(inc["id"].as_str().unwrap(), &a);
    assert_same(&a, &reference);
    let b = env.path("full.out");
    env.restore(full["id"].as_str().unwrap(), &b);
    assert_same(&b, &reference);

    // An index rebuilt (as after any change of its entries) has no record of the parent: each
    // chunk taken unread is looked up, and the snapshot is as good.
    let out = env.run(&["repair", "index"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let server = QemuNbd::start(&qcow2, "qcow2", None, &["--bitmap", "b0"]);
    let again = env.json(&bitmap_snapshot(&server.uri));
    drop(server);
    assert_eq!(again["parent"], inc["id"], "{again}");
    let checked = again["parent_chunks_checked"].as_u64().unwrap();
    assert!(
        checked > 0 && checked < again["chunks"].as_u64().unwrap(),
        "{again}"
    );
    let c = env.path("again.out");
    env.restore(again["id"].as_str().unwrap(), &c);
    assert_same(&c, &reference);

    // A bitmap the server does not export, and a bitmap on a file: refused.
    let server = QemuNbd::start(&qcow2, "qcow2", None, &[]);
    let out = env.run(&bitmap_snapshot(&server.uri));
    drop(server);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("qemu-nbd --bitmap b0"), "{err}");
    let out = env.run(&bitmap_snapshot(s(&qcow2)));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
