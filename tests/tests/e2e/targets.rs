//! Where `snapshot restore` and `image rebuild` may write: a new file; with --force an existing
//! regular file or a block device (opened exclusively, large enough); never a character device,
//! FIFO, socket or directory, nor a new name under /dev. Run as root (loop devices, mounts).

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use serde_json::Value;

/// Fails the test (never skips it) unless it runs as root.
fn require_root(what: &str) {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test needs root ({what}); run the tests as root, as CI does"
    );
}

/// A loop device over a file, detached when dropped.
pub(crate) struct Loop(String);

impl Loop {
    pub(crate) fn new(file: &Path) -> Loop {
        require_root("losetup");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("losetup is installed");
        assert!(out.status.success(), "losetup: {}", stderr(&out));
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
    pub(crate) fn path(&self) -> &str {
        &self.0
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(args: &[&str], source: &str, at: &Path) -> Mount {
        require_root("mount");
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(args)
            .arg(source)
            .arg(at)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "mount {args:?}: {}", stderr(&out));
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A store holding one snapshot of a 3 MiB disk with a 1 MiB hole in the middle (data at
/// 0..1 MiB and 2..3 MiB, random); returns the env, the disk and the snapshot id.
fn fixture(name: &str) -> (Env, PathBuf, String) {
    let env = Env::new(name);
    env.init(&[]);
    let disk = env.path("disk.img");
    write_at(&disk, 3 << 20, 0, &random_bytes(1 << 20, 1));
    write_at(&disk, 3 << 20, 2 << 20, &random_bytes(1 << 20, 2));
    let s = env.snapshot(&disk, "disk");
    let id = s["id"].as_str().unwrap().to_string();
    (env, disk, id)
}

fn restore(env: &Env, id: &str, out: &Path, force: bool) -> Output {
    let mut args = vec!["snapshot", "restore", id, out.to_str().unwrap()];
    if force {
        args.push("--force");
    }
    env.run(&args)
}

/// Asserts exit status `code` and that stderr holds every one of `words`; returns stderr.
fn refused(out: &Output, code: i32, words: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for w in words {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
    assert!(!err.contains(".tmp-"), "names a temporary file: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn restore_onto_dev_null_is_refused_and_dev_null_stays_a_character_device() {
    require_root("writing to /dev");
    let (env, _, id) = fixture("target-devnull");
    for force in [false, true] {
        let out = restore(&env, &id, Path::new("/dev/null"), force);
        refused(&out, 2, &["/dev/null", "character device"]);
        let meta = fs::symlink_metadata("/dev/null").unwrap();
        assert!(
            meta.file_type().is_char_device(),
            "/dev/null is no longer a character device"
        );
    }
    // A symbolic link to it is refused the same way.
    let link = env.path("null-link");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let out = restore(&env, &id, &link, true);
    refused(&out, 2, &["null-link", "/dev/null", "character device"]);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn a_new_name_under_dev_is_refused_and_not_created() {
    require_root("writing to /dev");
    let (env, _, id) = fixture("target-devnew");
    let name = format!("/dev/blocksnap-xyz-{}", std::process::id());
    for force in [false, true] {
        let out = restore(&env, &id, Path::new(&name), force);
        refused(&out, 2, &[&name, "does not exist", "/dev"]);
        assert!(
            fs::symlink_metadata(&name).is_err(),
            "{name} was created by a refused restore"
        );
    }
    // image rebuild into a new directory under /dev, likewise.
    let disk = env.path("disk.img");
    env.json(&[
        "image",
        "create",
        "one",
        "--volume",
        &format!("/dev/sda={}", disk.display()),
    ]);
    let dir = format!("/dev/blocksnap-dir-{}", std::process::id());
    let out = env.run(&["image", "rebuild", "one", &dir, "--force"]);
    refused(&out, 2, &[&dir, "/dev"]);
    assert!(fs::symlink_metadata(&dir).is_err(), "{dir} was created");
}

#[test]
fn an_existing_file_is_kept_without_force_and_replaced_with_force() {
    let (env, disk, id) = fixture("target-existing");
    let out = env.path("precious.img");
    let precious = text_bytes(200_000, 7);
    fs::write(&out, &precious).unwrap();
    let r = restore(&env, &id, &out, false);
    refused(&r, 2, &["precious.img", "exists", "--force"]);
    assert_eq!(fs::read(&out).unwrap(), precious, "the file was changed");
    assert_eq!(
        fs::read_dir(&env.dir)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-"))
            .count(),
        0,
        "a refused restore left a temporary file"
    );

    let r = env
        .cmd()
        .args(["--json", "snapshot", "restore", &id])
        .arg(&out)
        .arg("--force")
        .output()
        .unwrap();
    let v = json_of(&r);
    assert_same(&disk, &out);
    assert_eq!(v["kind"], "file", "{v}");
    assert_eq!(v["replaced"], true, "{v}");
    assert_eq!(v["tail_left"], 0, "{v}");
    assert_eq!(v["output"], out.to_str().unwrap(), "{v}");
    for field in ["id", "size", "bytes_written", "seconds"] {
        assert!(v.get(field).is_some(), "{field} missing: {v}");
    }

    // A new file: not "replaced"; the human output says what was written where.
    let fresh = env.path("fresh.img");
    let r = restore(&env, &id, &fresh, false);
    assert!(r.status.success(), "{}", stderr(&r));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("fresh.img") && text.contains("new"), "{text}");
    assert_same(&disk, &fresh);
}

#[test]
fn fifos_sockets_directories_and_links_to_them_are_refused_even_with_force() {
    let (env, _, id) = fixture("target-kinds");
    let fifo = env.path("fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let sock = env.path("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let dir = env.path("dir");
    fs::create_dir(&dir).unwrap();
    let to_fifo = env.path("to-fifo");
    std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
    let to_dir = env.path("to-dir");
    std::os::unix::fs::symlink(&dir, &to_dir).unwrap();
    let dangling = env.path("dangling");
    std::os::unix::fs::symlink(env.path("nowhere"), &dangling).unwrap();
    let cases: [(&Path, &str); 6] = [
        (&fifo, "FIFO"),
        (&sock, "socket"),
        (&dir, "directory"),
        (&to_fifo, "FIFO"),
        (&to_dir, "directory"),
        (&dangling, "does not exist"),
    ];
    for (path, kind) in cases {
        for force in [false, true] {
            let out = restore(&env, &id, path, force);
            refused(
                &out,
                2,
                &[path.file_name().unwrap().to_str().unwrap(), kind],
            );
        }
    }
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(fs::metadata(&sock).unwrap().file_type().is_socket());
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        0,
        "written into the directory"
    );
    assert!(
        fs::symlink_metadata(&to_fifo)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        !env.path("nowhere").exists(),
        "wrote through a dangling link"
    );
}

#[test]
fn a_link_to_a_file_is_followed_with_force_and_stays_a_link() {
    let (env, disk, id) = fixture("target-link");
    let real = env.path("real.img");
    fs::write(&real, b"old content").unwrap();
    let link = env.path("link.img");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = restore(&env, &id, &link, false);
    refused(&out, 2, &["link.img", "real.img", "--force"]);
    assert_eq!(fs::read(&real).unwrap(), b"old content");
    let out = env
        .cmd()
        .args(["--json", "snapshot", "restore", &id])
        .arg(&link)
        .arg("--force")
        .output()
        .unwrap();
    let v = json_of(&out);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_same(&disk, &real);
    assert_eq!(
        v["written_to"],
        fs::canonicalize(&real).unwrap().to_str().unwrap(),
        "{v}"
    );
}

#[test]
fn a_block_device_needs_force_and_a_too_small_one_is_refused_untouched() {
    let (env, _, id) = fixture("target-small-dev");
    let backing = env.path("small.bin");
    let original = random_bytes(2 << 20, 40);
    fs::write(&backing, &original).unwrap();
    let dev = Loop::new(&backing);
    let out = restore(&env, &id, Path::new(dev.path()), false);
    refused(&out, 2, &[dev.path(), "block device", "--force"]);
    let out = restore(&env, &id, Path::new(dev.path()), true);
    refused(&out, 2, &[dev.path(), "too small", "2.0 MiB", "3.0 MiB"]);
    drop(dev);
    assert!(
        fs::read(&backing).unwrap() == original,
        "the device was written"
    );
}

#[test]
fn a_larger_block_device_gets_the_snapshot_and_keeps_its_tail() {
    let (env, disk, id) = fixture("target-big-dev");
    let backing = env.path("big.bin");
    let original = random_bytes(8 << 20, 41);
    fs::write(&backing, &original).unwrap();
    let dev = Loop::new(&backing);
    let out = env
        .cmd()
        .args(["--json", "snapshot", "restore", &id, dev.path(), "--force"])
        .output()
        .unwrap();
    let v = json_of(&out);
    let err = stderr(&out);
    assert!(
        err.contains("left as they were"),
        "no note of the tail: {err}"
    );
    assert_eq!(v["kind"], "block_device", "{v}");
    assert_eq!(v["device_size"], 8 << 20, "{v}");
    assert_eq!(v["tail_left"], (8 << 20) - (3 << 20), "{v}");
    assert_eq!(v["size"], 3 << 20, "{v}");
    drop(dev);
    let now = fs::read(&backing).unwrap();
    // The snapshot's bytes, the hole written as zeros over the old random bytes...
    assert!(
        now[..3 << 20] == fs::read(&disk).unwrap()[..],
        "head differs"
    );
    assert!(now[1 << 20..2 << 20].iter().all(|&b| b == 0));
    // ... and the tail exactly as it was.
    assert!(
        now[3 << 20..] == original[3 << 20..],
        "the tail was changed"
    );
}

#[test]
fn a_mounted_block_device_is_refused() {
    let (env, _, id) = fixture("target-mounted");
    let backing = env.path("fs.bin");
    let tree = env.path("tree");
    make_tree(&tree, 4, 3);
    make_ext4(&backing, 16 << 20, &tree);
    let before = fs::read(&backing).unwrap();
    let dev = Loop::new(&backing);
    let mnt = env.path("mnt");
    let mounted = Mount::new(&["-o", "ro"], dev.path(), &mnt);
    let out = restore(&env, &id, Path::new(dev.path()), true);
    refused(&out, 1, &[dev.path(), "in use", "mounted"]);
    drop(mounted);
    drop(dev);
    assert!(
        fs::read(&backing).unwrap() == before,
        "the mounted device was written"
    );
}

#[test]
fn image_rebuild_checks_every_output_before_writing_any() {
    let env = Env::new("target-rebuild");
    env.init(&[]);
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    write_at(&a, 2 << 20, 0, &random_bytes(1 << 20, 50));
    write_at(&b, 2 << 20, 4096, &random_bytes(1 << 20, 51));
    env.json(&[
        "image",
        "create",
        "pair",
        "--volume",
        &format!("/dev/sda={}", a.display()),
        "--volume",
        &format!("/dev/sdb={}", b.display()),
    ]);
    let out = env.path("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("sdb.img"), b"keep me").unwrap();
    let r = env.run(&["image", "rebuild", "pair", out.to_str().unwrap()]);
    refused(&r, 2, &["sdb.img", "exists", "--force"]);
    assert!(
        !out.join("sda.img").exists(),
        "sda.img was written before sdb.img was checked"
    );
    assert_eq!(fs::read(out.join("sdb.img")).unwrap(), b"keep me");

    // A link to /dev/null among the outputs: refused with --force too, nothing written.
    fs::remove_file(out.join("sdb.img")).unwrap();
    std::os::unix::fs::symlink("/dev/null", out.join("sdb.img")).unwrap();
    let r = env.run(&["image", "rebuild", "pair", out.to_str().unwrap(), "--force"]);
    refused(&r, 2, &["sdb.img", "character device"]);
    assert!(!out.join("sda.img").exists());
    fs::remove_file(out.join("sdb.img")).unwrap();

    let r = env.run(&["--json", "image", "rebuild", "pair", out.to_str().unwrap()]);
    let v = json_of(&r);
    assert_same(&a, &out.join("sda.img"));
    assert_same(&b, &out.join("sdb.img"));
    assert_eq!(v["volumes"][0]["kind"], "file", "{v}");
    // Again: refused without --force, replaced with it.
    let r = env.run(&["image", "rebuild", "pair", out.to_str().unwrap()]);
    refused(&r, 2, &["sda.img", "--force"]);
    let r = env.run(&[
        "--json",
        "image",
        "rebuild",
        "pair",
        out.to_str().unwrap(),
        "--force",
    ]);
    let v = json_of(&r);
    assert_eq!(v["volumes"][1]["replaced"], true, "{v}");
    assert_same(&b, &out.join("sdb.img"));
}

/// `image rebuild IMAGE OUTDIR` creates OUTDIR only once every check passed: a refused rebuild
/// (OUTDIR under /dev through a symbolic link, inside the store directly or through a link,
/// below a regular file, a missing image, an account without permission and grant) creates
/// nothing at all; and a rebuild that fails after creating it removes what it created.
#[test]
fn a_refused_image_rebuild_creates_nothing() {
    require_root("writing to /dev");
    let (env, disk, _) = fixture("target-rebuild-none");
    env.json(&[
        "image",
        "create",
        "one",
        "--volume",
        &format!("/dev/sda={}", disk.display()),
    ]);
    env.json(&["account", "create", "bob"]);
    let pid = std::process::id();
    let dev_link = env.path("dev-link");
    std::os::unix::fs::symlink("/dev", &dev_link).unwrap();
    let store_link = env.path("store-link");
    std::os::unix::fs::symlink(&env.store, &store_link).unwrap();
    let a_file = env.path("a-file");
    fs::write(&a_file, b"x").unwrap();
    let store_before = tree(&env.store);

    // (OUTDIR, what must not exist afterwards, account, exit status, words of the message)
    let in_dev = dev_link
        .join(format!("blocksnap-rebuild-{pid}"))
        .join("sub");
    let dev_made = PathBuf::from(format!("/dev/blocksnap-rebuild-{pid}"));
    let in_store = env.store.join("new-dir").join("sub");
    let via_link = store_link.join("other-dir");
    let below_file = a_file.join("sub");
    let fresh = env.path("fresh").join("sub");
    type Case<'a> = (&'a Path, &'a Path, &'a str, &'a str, i32, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            &in_dev,
            &dev_made,
            "alice",
            "one",
            2,
            vec!["dev-link", "/dev", "nothing was created"],
        ),
        (
            &in_store,
            &in_store,
            "alice",
            "one",
            2,
            vec!["new-dir", "inside the store"],
        ),
        (
            &via_link,
            &via_link,
            "alice",
            "one",
            2,
            vec!["store-link", "inside the store"],
        ),
        (
            &below_file,
            &below_file,
            "alice",
            "one",
            2,
            vec!["a-file", "not a directory"],
        ),
        (
            &fresh,
            &fresh,
            "alice",
            "no-such-image",
            2,
            vec!["no-such-image"],
        ),
        (
            &fresh,
            &fresh,
            "bob",
            "one",
            3,
            vec!["launch permission", "key grant default bob"],
        ),
    ];
    for (outdir, made, account, image, code, words) in cases {
        for force in [false, true] {
            let mut args = vec!["--account", account, "image", "rebuild", image];
            args.push(outdir.to_str().unwrap());
            if force {
                args.push("--force");
            }
            let out = env.run(&args);
            let created = fs::symlink_metadata(made).is_ok();
            if created && made.starts_with("/dev") {
                fs::remove_dir_all(made).unwrap(); // clean /dev before failing
            }
            refused(&out, code, &words);
            assert!(
                !created,
                "a refused `{}` created {}",
                args.join(" "),
                made.display()
            );
            assert!(
                fs::symlink_metadata(env.path("fresh")).is_err(),
                "a refused `{}` created {}",
                args.join(" "),
                env.path("fresh").display()
            );
        }
    }
    assert_eq!(
        tree(&env.store),
        store_before,
        "a refused rebuild changed the store"
    );
    assert_eq!(fs::read(&a_file).unwrap(), b"x");

    // A rebuild that fails once it has created the directory (its pack is gone) removes the
    // directories it created, and only those.
    for p in env.packs() {
        fs::remove_file(p).unwrap();
    }
    let out = env.run(&["image", "rebuild", "one", fresh.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        fs::symlink_metadata(env.path("fresh")).is_err(),
        "a failed rebuild left {}",
        env.path("fresh").display()
    );
    assert!(env.dir.is_dir());
}

/// Every path under `dir` (not the index cache, which is outside the store).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn a_full_target_filesystem_is_named_and_nothing_is_left_there() {
    let env = Env::new("target-full");
    env.init(&[]);
    let disk = env.path("disk.img");
    write_at(&disk, 8 << 20, 0, &random_bytes(6 << 20, 60));
    let s = env.snapshot(&disk, "disk");
    let id = s["id"].as_str().unwrap();
    let mnt = env.path("small-fs");
    let _m = Mount::new(&["-t", "tmpfs", "-o", "size=2m"], "tmpfs", &mnt);
    let out = restore(&env, id, &mnt.join("out.img"), false);
    let err = refused(
        &out,
        1,
        &[
            "out.img",
            "full",
            mnt.to_str().unwrap(),
            "prune` frees nothing there",
        ],
    );
    assert!(
        !err.contains("prune` reclaims deleted snapshots"),
        "the hint says prune helps: {err}"
    );
    assert_eq!(
        fs::read_dir(&mnt).unwrap().count(),
        0,
        "a failed restore left files on the full filesystem"
    );
}

#[test]
fn errors_name_the_users_path_not_a_temporary_file() {
    let (env, _, id) = fixture("target-ro");
    let mnt = env.path("ro-fs");
    let _m = Mount::new(&["-t", "tmpfs", "-o", "ro,size=1m"], "tmpfs", &mnt);
    let target = mnt.join("out.img");
    let out = restore(&env, &id, &target, false);
    refused(
        &out,
        1,
        &[target.to_str().unwrap(), "Read-only file system"],
    );
}

#[test]
fn nothing_is_restored_into_the_store() {
    let (env, _, id) = fixture("target-store");
    let out = restore(&env, &id, &env.store.join("snapshots").join("x.img"), false);
    refused(&out, 2, &["inside the store"]);
    assert!(!env.store.join("snapshots").join("x.img").exists());
}
