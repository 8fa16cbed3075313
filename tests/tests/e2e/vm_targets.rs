//! VM disks out: `snapshot restore --format qcow2` and `image rebuild --format qcow2` write qcow2
//! images holding only the data (qemu-img finds them clean and identical to the raw restore,
//! and maps data only where the snapshot has some); every other format through the NBD export
//! (`qemu-img convert -O vmdk nbd://…`). Needs qemu-utils (.ci/run installs it).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::nbd::serve;
use crate::vm_sources::{guest_disk, qemu};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The virtual size of the big disk: the ext4 filesystem is a 64 MiB partition inside it.
const DISK: u64 = 1 << 30;
/// Where the partition starts.
const PART: u64 = 256 << 20;

/// A 1 GiB sparse disk holding a real 64 MiB ext4 filesystem at 256 MiB (its own holes kept)
/// and a little data near its end: mostly holes.
fn sparse_disk(env: &Env) -> PathBuf {
    let ext4 = guest_disk(env, "part", 31);
    let disk = env.path("disk.raw");
    let out = fs::File::create(&disk).unwrap();
    out.set_len(DISK).unwrap();
    let inp = fs::File::open(&ext4).unwrap();
    let len = inp.metadata().unwrap().len();
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        inp.read_exact_at(&mut buf[..n], off).unwrap();
        if buf[..n].iter().any(|b| *b != 0) {
            out.write_all_at(&buf[..n], PART + off).unwrap();
        }
        off += n as u64;
    }
    out.write_all_at(&random_bytes(300 << 10, 5), DISK - (1 << 20))
        .unwrap();
    out.sync_all().unwrap();
    disk
}

/// `qemu-img check` of a qcow2 image: no errors, no leaks, no corruptions.
fn assert_clean(image: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", "-f", "qcow2", s(image)])
        .output()
        .expect("qemu-img runs (qemu-utils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {}: {text}{}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["check-errors"], 0, "{v}");
    for k in ["corruptions", "leaks", "corruptions-fixed", "leaks-fixed"] {
        assert!(v[k].as_u64().unwrap_or(0) == 0, "{k}: {v}");
    }
    assert_eq!(v["format"], "qcow2", "{v}");
}

/// `qemu-img compare` exits 0: the two images are identical as guest disks.
fn assert_identical(a: &Path, fa: &str, b: &Path, fb: &str) {
    let out = qemu("qemu-img", &["compare", "-f", fa, "-F", fb, s(a), s(b)]);
    assert!(out.contains("identical"), "{out}");
}

/// Bytes `qemu-img map` says hold data in a qcow2 image, and its virtual size.
fn mapped(image: &Path) -> (u64, u64) {
    let map = qemu(
        "qemu-img",
        &["map", "--output=json", "-f", "qcow2", s(image)],
    );
    let v: serde_json::Value = serde_json::from_str(&map).unwrap();
    let entries = v.as_array().unwrap();
    let data = entries
        .iter()
        .filter(|e| e["data"].as_bool() == Some(true))
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    let end = entries
        .iter()
        .map(|e| e["start"].as_u64().unwrap() + e["length"].as_u64().unwrap())
        .max()
        .unwrap();
    (data, end)
}

/// The file's first bytes are the qcow2 magic.
fn is_qcow2(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut magic, 0)
        .is_ok()
        && &magic == b"QFI\xfb"
}

/// Names in a directory (to see that no temporary file was left).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_qcow2_restore_holds_only_the_data_and_is_identical_to_the_raw_one() {
    let env = Env::new("vm-qcow2-target");
    env.init(&[]);
    let disk = sparse_disk(&env);
    let snap = env.snapshot(&disk, "vm");
    let id = snap["id"].as_str().unwrap();
    let shown = env.json(&["snapshot", "show", id]);
    let data_bytes = shown["data_bytes"].as_u64().unwrap();
    assert!(
        data_bytes > (1 << 20) && data_bytes < DISK / 16,
        "a sparse disk: {snap}"
    );

    let raw = env.path("raw-rebuild.img");
    let r = env.restore(id, &raw);
    assert_eq!(r["format"], "raw", "{r}");
    assert_same(&raw, &disk);

    let out_dir = env.path("out");
    fs::create_dir(&out_dir).unwrap();
    let q = out_dir.join("out.qcow2");
    let r = env.json(&["snapshot", "restore", id, s(&q), "--format", "qcow2"]);
    assert_eq!(r["format"], "qcow2", "{r}");
    assert_eq!(r["kind"], "file", "{r}");
    assert_eq!(r["size"], DISK, "{r}");
    let written = r["bytes_written"].as_u64().unwrap();
    assert!(written > 0 && written <= data_bytes, "{r}\n{snap}");
    assert!(is_qcow2(&q));
    assert_eq!(names(&out_dir), ["out.qcow2"], "no temporary file left");

    assert_clean(&q);
    assert_identical(&q, "qcow2", &raw, "raw");
    assert_identical(&q, "qcow2", &disk, "raw");

    // Only the data is allocated: about the snapshot's data bytes (whole 64 KiB clusters),
    // far below the virtual size; and the file is about as small.
    let (alloc, virt) = mapped(&q);
    assert_eq!(virt, DISK);
    assert!(
        alloc >= written && alloc <= written + (4 << 20),
        "allocated {alloc}, written {written}, data {data_bytes}"
    );
    assert!(alloc < DISK / 16, "allocated {alloc} of {DISK}");
    let file_len = fs::metadata(&q).unwrap().len();
    assert!(
        file_len < alloc + (4 << 20) && file_len < DISK / 16,
        "the qcow2 file is {file_len} bytes for {alloc} of data"
    );
    assert!(allocated(&q) < DISK / 16, "on disk: {}", allocated(&q));
    // Nothing is mapped where the snapshot has holes: the first 256 MiB hold no data.
    let map = qemu("qemu-img", &["map", "--output=json", "-f", "qcow2", s(&q)]);
    let v: serde_json::Value = serde_json::from_str(&map).unwrap();
    let first = &v.as_array().unwrap()[0];
    assert_eq!(first["start"], 0, "{first}");
    assert_eq!(first["data"], false, "{first}");
    assert!(first["length"].as_u64().unwrap() >= PART, "{first}");

    // The name does not choose the format: without --format the output is raw.
    let named = env.path("named.qcow2");
    let r = env.restore(id, &named);
    assert_eq!(r["format"], "raw", "{r}");
    assert!(!is_qcow2(&named));
    assert_same(&named, &disk);

    // `--format raw` explicitly; an unknown format is a usage error pointing to NBD.
    let r = env.json(&[
        "snapshot",
        "restore",
        id,
        s(&env.path("explicit.img")),
        "--format",
        "raw",
    ]);
    assert_eq!(r["format"], "raw", "{r}");
    assert_same(&env.path("explicit.img"), &disk);
    let out = env.run(&[
        "snapshot",
        "restore",
        id,
        s(&env.path("x.vmdk")),
        "--format",
        "vmdk",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nbd"), "{}", stderr(&out));
    assert!(!env.path("x.vmdk").exists());
}

#[test]
fn a_qcow2_restore_onto_an_existing_file_needs_force_and_leaves_it_untouched() {
    let env = Env::new("vm-qcow2-exists");
    env.init(&[]);
    let disk = guest_disk(&env, "guest", 41);
    let id = env.snapshot(&disk, "vm")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = env.path("out");
    fs::create_dir(&dir).unwrap();
    let target = dir.join("keep.qcow2");
    fs::write(&target, b"precious bytes").unwrap();

    let out = env.run(&["snapshot", "restore", &id, s(&target), "--format", "qcow2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(fs::read(&target).unwrap(), b"precious bytes");
    assert_eq!(names(&dir), ["keep.qcow2"], "nothing else was created");

    // With --force it is replaced by the image.
    let r = env.json(&[
        "snapshot",
        "restore",
        &id,
        s(&target),
        "--format",
        "qcow2",
        "--force",
    ]);
    assert_eq!(r["replaced"], true, "{r}");
    assert_eq!(r["format"], "qcow2", "{r}");
    assert_eq!(names(&dir), ["keep.qcow2"]);
    assert_clean(&target);
    assert_identical(&target, "qcow2", &disk, "raw");
}

#[test]
fn image_rebuild_writes_qcow2_devices() {
    let env = Env::new("vm-qcow2-rebuild");
    env.init(&[]);
    let disk = sparse_disk(&env);
    let img = env.json(&[
        "image",
        "create",
        "vm",
        "--volume",
        &format!("/dev/vda={}", s(&disk)),
    ]);
    assert_eq!(img["volumes"].as_array().unwrap().len(), 1, "{img}");
    let outdir = env.path("rebuilt");
    let r = env.json(&["image", "rebuild", "vm", s(&outdir), "--format", "qcow2"]);
    let v = &r["volumes"][0];
    assert_eq!(v["format"], "qcow2", "{r}");
    let q = outdir.join("vda.qcow2");
    assert_eq!(v["output"], s(&q), "{r}");
    assert_eq!(names(&outdir), ["vda.qcow2"]);
    assert_clean(&q);
    assert_identical(&q, "qcow2", &disk, "raw");
    let (alloc, virt) = mapped(&q);
    assert_eq!(virt, DISK);
    assert!(alloc < DISK / 16, "allocated {alloc}");

    // The default stays raw: OUTDIR/vda.img.
    let outdir2 = env.path("rebuilt-raw");
    let r = env.json(&["image", "rebuild", "vm", s(&outdir2)]);
    assert_eq!(r["volumes"][0]["format"], "raw", "{r}");
    assert_same(&outdir2.join("vda.img"), &disk);
}

#[test]
fn any_other_format_through_the_nbd_export_vmdk() {
    let env = Env::new("vm-vmdk-nbd");
    env.init(&[]);
    let disk = sparse_disk(&env);
    let id = env.snapshot(&disk, "vm")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let raw = env.path("raw-rebuild.img");
    env.restore(&id, &raw);

    let server = serve(&env, &[&id]);
    let vmdk = env.path("out.vmdk");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            &format!("nbd://{}/{}", server.addr, server.export),
            s(&vmdk),
        ],
    );
    drop(server);
    assert_identical(&vmdk, "vmdk", &raw, "raw");
    // Converted from the export's block status: the holes stayed holes.
    assert!(
        fs::metadata(&vmdk).unwrap().len() < DISK / 16,
        "{}",
        fs::metadata(&vmdk).unwrap().len()
    );
}

#[test]
fn qcow2_is_refused_onto_a_block_device_and_for_a_size_qemu_would_cut() {
    let env = Env::new("vm-qcow2-refused");
    env.init(&[]);
    let disk = guest_disk(&env, "guest", 43);
    let id = env.snapshot(&disk, "vm")["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A block device (also through a link), even with --force: nothing is written.
    let backing = env.path("dev.bin");
    let original = random_bytes(80 << 20, 44);
    fs::write(&backing, &original).unwrap();
    let dev = crate::targets::Loop::new(&backing);
    let link = env.path("dev.qcow2");
    std::os::unix::fs::symlink(dev.path(), &link).unwrap();
    for (target, force) in [(Path::new(dev.path()), true), (&link, true), (&link, false)] {
        let mut args = vec!["snapshot", "restore", &id, s(target), "--format", "qcow2"];
        if force {
            args.push("--force");
        }
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("block device") && err.contains("qcow2") && err.contains("raw"),
            "{err}"
        );
    }
    drop(dev);
    assert!(
        fs::read(&backing).unwrap() == original,
        "the device was written"
    );

    // A size that is not whole 512-byte sectors: QEMU would cut the tail of a qcow2 image.
    let odd = env.path("odd.raw");
    fs::write(&odd, random_bytes(1_000_001, 45)).unwrap();
    let id = env.snapshot(&odd, "odd")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let q = env.path("odd.qcow2");
    let out = env.run(&["snapshot", "restore", &id, s(&q), "--format", "qcow2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("512"), "{}", stderr(&out));
    assert!(!q.exists());
    let r = env.restore(&id, &env.path("odd.img"));
    assert_eq!(r["format"], "raw", "{r}");
    assert_same(&env.path("odd.img"), &odd);
}
