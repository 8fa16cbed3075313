//! A store that cannot be written — a read-only bind mount, or a user without write permission —
//! serves every reading command (restore byte-identical, diff, image rebuild, check, every list
//! and show, serve nbd read by qemu-img) with a note that no lock could be taken, and every
//! writing command fails at once, naming the store and saying it is read-only, changing nothing.
//! Needs root (mount, setpriv) and qemu-img: without them these tests fail.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::common::*;
use serde_json::Value;

/// A read-only bind mount of a directory, unmounted when dropped.
struct RoMount(PathBuf);

impl RoMount {
    fn new(from: &Path, at: &Path) -> RoMount {
        fs::create_dir_all(at).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("mount")
                .args(args)
                .output()
                .expect("mount is installed");
            assert!(
                out.status.success(),
                "mount {args:?} (these tests need root): {}",
                stderr(&out)
            );
        };
        run(&["--bind", from.to_str().unwrap(), at.to_str().unwrap()]);
        let mount = RoMount(at.to_path_buf());
        run(&["-o", "remount,bind,ro", at.to_str().unwrap()]);
        mount
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// What the store holds, to compare with the results read from it.
struct Fixture {
    /// The disk as snapshot A saw it, and as B saw it.
    disk_a: PathBuf,
    disk_b: PathBuf,
    a: String,
    b: String,
    /// `snapshot diff A B --json` on the writable store.
    diff: Value,
}

/// A store with two snapshots of a real ext4 disk, an image, a volume and a policy.
fn fixture(env: &Env) -> Fixture {
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 20, 41);
    let disk_a = env.path("disk-a.img");
    make_ext4(&disk_a, 32 << 20, &tree);
    let disk_b = env.path("disk-b.img");
    copy_sparse(&disk_a, &disk_b);
    let new_file = env.path("new.bin");
    fs::write(&new_file, random_bytes(200_000, 42)).unwrap();
    debugfs(
        &disk_b,
        &[
            "rm /bin/prog0".into(),
            format!("write {} /bin/new", new_file.display()),
        ],
    );
    let a = env.snapshot(&disk_a, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = env.snapshot(&disk_b, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.json(&[
        "image",
        "register",
        "web",
        "--volume",
        &format!("/dev/vda={a}"),
    ]);
    env.json(&[
        "volume",
        "add",
        "vol-b",
        disk_b.to_str().unwrap(),
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
    let diff = env.json(&["snapshot", "diff", &a, &b]);
    assert!(!diff["changed"].as_array().unwrap().is_empty(), "{diff}");
    Fixture {
        disk_a,
        disk_b,
        a,
        b,
        diff,
    }
}

/// Every file under `dir` with its length, mode and modification time.
fn state(dir: &Path) -> Vec<(PathBuf, u64, u32, i64, i64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            out.push((p.clone(), m.len(), m.mode(), m.mtime(), m.mtime_nsec()));
            if m.is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs a command built by `cmd` with `args`.
fn run(cmd: &dyn Fn() -> Command, args: &[&str]) -> Output {
    cmd().args(args).output().unwrap()
}

/// Runs with `--json`, asserts success and the read-only note when `noted`, parses stdout.
fn json(cmd: &dyn Fn() -> Command, args: &[&str], noted: bool) -> Value {
    let out = cmd().arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "blocksnap {args:?} on a read-only store failed ({:?}):\n{}",
        out.status,
        stderr(&out)
    );
    if noted {
        assert_read_only_note(&stderr(&out), args);
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout of {args:?} is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_read_only_note(err: &str, what: &[&str]) {
    assert!(
        err.contains("is read-only") && err.contains("without a lock") && err.contains("prune"),
        "{what:?}: no note that no lock was taken:\n{err}"
    );
}

/// A running `serve nbd`, killed when dropped; its stderr goes to a file.
struct Server {
    child: Child,
    addr: String,
    export: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(cmd: &dyn Fn() -> Command, snapshot: &str, log: &Path) -> Server {
    let mut child = cmd()
        .arg("--json")
        .args(["serve", "nbd", snapshot, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "serve nbd exited: {text}{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        text += &line;
        if line.trim_end() == "}" {
            break;
        }
    }
    let info: Value = serde_json::from_str(&text).unwrap();
    Server {
        child,
        addr: info["listen"].as_str().unwrap().to_string(),
        export: info["export"].as_str().unwrap().to_string(),
        log: log.to_path_buf(),
    }
}

/// Every reading command through `cmd` (a command on the read-only store), its outputs in
/// `out` (a directory the acting user may write).
fn reads_everything(cmd: &dyn Fn() -> Command, f: &Fixture, out: &Path) {
    // Restore: byte-identical, with the note.
    let restored = out.join("a.img");
    let r = json(
        cmd,
        &["snapshot", "restore", &f.a, restored.to_str().unwrap()],
        true,
    );
    assert_eq!(r["id"], f.a.as_str());
    assert_same(&f.disk_a, &restored);
    let restored_b = out.join("b.img");
    json(
        cmd,
        &["snapshot", "restore", &f.b, restored_b.to_str().unwrap()],
        true,
    );
    assert_same(&f.disk_b, &restored_b);

    // Diff: the same ranges as on the writable store.
    let d = json(cmd, &["snapshot", "diff", &f.a, &f.b], true);
    assert_eq!(d["changed"], f.diff["changed"]);

    // Image rebuild.
    let rebuilt = out.join("rebuilt");
    let r = json(
        cmd,
        &["image", "rebuild", "web", rebuilt.to_str().unwrap()],
        true,
    );
    assert_eq!(r["volumes"].as_array().unwrap().len(), 1, "{r}");
    assert_same(&f.disk_a, &rebuilt.join("vda.img"));

    // Check: everything verified, nothing wrong, exit 0.
    let c = json(cmd, &["check", "--read-data"], true);
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["snapshots"], 2, "{c}");
    assert!(c["chunks_verified"].as_u64().unwrap() > 0, "{c}");

    // Lists and shows.
    let list = json(cmd, &["snapshot", "list"], false);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [f.a.as_str(), f.b.as_str()]);
    let show = json(cmd, &["snapshot", "show", &f.b], false);
    assert_eq!(show["parent"], f.a.as_str());
    let images = json(cmd, &["image", "list"], false);
    assert_eq!(images[0]["name"], "web");
    assert_eq!(json(cmd, &["image", "show", "web"], false)["name"], "web");
    assert_eq!(json(cmd, &["volume", "list"], false)[0]["name"], "vol-b");
    assert_eq!(json(cmd, &["key", "list"], false)[0]["name"], "default");
    assert_eq!(json(cmd, &["account", "list"], false)[0]["name"], "alice");
    assert_eq!(json(cmd, &["trash", "list"], false), Value::Array(vec![]));
    assert_eq!(json(cmd, &["policy", "list"], false)[0]["name"], "nightly");
    assert_eq!(
        json(cmd, &["policy", "show", "nightly"], false)["name"],
        "nightly"
    );

    // serve nbd: qemu-img reads it.
    let server = serve(cmd, &f.a, &out.join("serve.log"));
    let url = format!("nbd://{}/{}", server.addr, server.export);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", &url])
        .output()
        .expect("qemu-img is installed (qemu-utils; .ci/run installs it)");
    assert!(info.status.success(), "{}", stderr(&info));
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 32 << 20, "{info}");
    let via_nbd = out.join("via-nbd.img");
    let r = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &url])
        .arg(&via_nbd)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", stderr(&r));
    assert_same(&f.disk_a, &via_nbd);
    let log = server.log.clone();
    drop(server);
    assert_read_only_note(&fs::read_to_string(log).unwrap(), &["serve", "nbd"]);
}

/// Every writing command through `cmd` fails at once, saying the store `shown` is read-only.
fn writes_nothing(cmd: &dyn Fn() -> Command, f: &Fixture, shown: &Path, why: &str) {
    let disk = f.disk_b.to_str().unwrap();
    for args in [
        &["snapshot", "create", disk, "--volume", "disk"][..],
        &[
            "image",
            "create",
            "web2",
            "--volume",
            &format!("/dev/vda={disk}"),
        ],
        &["prune"],
        &["policy", "run"],
        &["repair", "index"],
        &["repair", "documents"],
        &["snapshot", "delete", &f.b],
        &["volume", "add", "other", disk],
        &["key", "create", "second"],
        &["unlock"],
    ] {
        let out = run(cmd, args);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} on a read-only store:\n{err}"
        );
        assert!(
            err.contains(&format!("the store {} is read-only", shown.display()))
                && err.contains(why)
                && err.contains("nothing was changed"),
            "{args:?} does not say the store is read-only:\n{err}"
        );
    }
}

#[test]
fn a_read_only_bind_mount_serves_every_reading_command() {
    let env = Env::new("ro-bind");
    let f = fixture(&env);
    let ro = env.path("ro-store");
    let mount = RoMount::new(&env.store, &ro);
    let before = state(&env.store);
    let cmd = || env.cmd_at(&ro);
    reads_everything(&cmd, &f, &env.dir);
    writes_nothing(&cmd, &f, &ro, "read-only file system");
    assert!(
        state(&env.store) == before,
        "the store changed under a read-only mount"
    );
    drop(mount);
    // The writable store still works, with no lock object left behind.
    env.json(&["check"]);
    assert!(
        env.json(&["unlock"])["removed"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// The unprivileged user 65534 (nobody) with its own copy of the binary, of alice's identity
/// (mode 0600, its own) and a home with `out/` for results, the test's store given to its group; returns
/// the home and the command (through `setpriv`) that acts as alice on `store`.
fn as_nobody(env: &Env, store: &Path) -> (PathBuf, impl Fn() -> Command + use<>) {
    let home = env.path("nobody");
    fs::create_dir_all(home.join("out")).unwrap();
    let bin = home.join("blocksnap");
    fs::copy(env!("CARGO_BIN_EXE_blocksnap-e2e"), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let config = env.dir.join("config").join("blocksnap");
    let store_dir = fs::read_dir(&config)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let identity = home.join("alice.key");
    fs::copy(store_dir.join("alice.key"), &identity).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&home)
        .status()
        .unwrap();
    assert!(chown.success());
    // The store is shared with nobody the way a store is shared with other users: through its
    // group (blocksnap makes its files 0640 and folders 0750, never world-readable).
    // (`store` may be a read-only mount of the test's store: its group is given beneath.)
    let chgrp = Command::new("chgrp")
        .args(["-R", "65534"])
        .arg(&env.store)
        .status()
        .unwrap();
    assert!(chgrp.success());
    fs::set_permissions(&identity, fs::Permissions::from_mode(0o600)).unwrap();
    for d in [&env.dir, &env.dir.parent().unwrap().to_path_buf()] {
        let mode = fs::metadata(d).unwrap().mode();
        fs::set_permissions(d, fs::Permissions::from_mode(mode | 0o755)).unwrap();
    }
    let (h, store) = (home.clone(), store.to_path_buf());
    let cmd = move || {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .env("HOME", &h)
            .env("XDG_CONFIG_HOME", h.join("config"))
            .env("XDG_CACHE_HOME", h.join("cache"))
            .env("XDG_DATA_HOME", h.join("data"))
            .env_remove("BLOCKSNAP_STORE")
            .env_remove("BLOCKSNAP_ACCOUNT")
            .env_remove("BLOCKSNAP_IDENTITY")
            .arg("--store")
            .arg(&store)
            .arg("--identity")
            .arg(&identity);
        c
    };
    let who = cmd()
        .arg("--version")
        .output()
        .expect("setpriv is installed");
    assert!(
        who.status.success(),
        "setpriv (these tests need root): {}",
        stderr(&who)
    );
    (home, cmd)
}

#[test]
fn a_user_without_write_permission_reads_the_store() {
    let env = Env::new("ro-user");
    let f = fixture(&env);
    let before = state(&env.store);
    let (home, cmd) = as_nobody(&env, &env.store);
    reads_everything(&cmd, &f, &home.join("out"));
    writes_nothing(&cmd, &f, &env.store, "this user may not write to");
    assert!(
        state(&env.store) == before,
        "the store changed under a user who may not write it"
    );
    // root still writes to it.
    env.snapshot(&f.disk_b, "disk");
}

/// Runs `check --json [args]` through `cmd`; returns the status, the report and stderr.
fn check_of(cmd: &dyn Fn() -> Command, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = cmd().args(["--json", "check"]).args(args).output().unwrap();
    let err = stderr(&out);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}): {err}"));
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code(), v, err)
}

/// The human report's `result:` line of `check [args]` through `cmd`, and its status.
fn check_result(cmd: &dyn Fn() -> Command, args: &[&str]) -> (Option<i32>, String) {
    let out = cmd().arg("check").args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("result:"))
        .unwrap_or_else(|| panic!("no result line: {text}{}", stderr(&out)))
        .to_string();
    (out.status.code(), line)
}

/// `check` of a store that cannot be written (so it reads the packs' trailers instead of the
/// index) tells damage from what it could not read, as README's exit-status paragraph says:
/// 5 (nothing found damaged, but not everything verified) for a pack it may not read and for
/// snapshots under a key the account holds no grant on; 4 for a pack that is damaged or gone.
/// The result line says which.
#[test]
fn check_of_a_read_only_store_tells_damage_from_what_it_could_not_verify() {
    let env = Env::new("ro-check");
    let f = fixture(&env);
    // A snapshot under a key only alice holds, and bob, who holds a grant on `default` only.
    env.json(&["key", "create", "private"]);
    let other = env.path("other.img");
    write_at(&other, 8 << 20, 0, &random_bytes(3 << 20, 77));
    let private = env.json(&[
        "snapshot",
        "create",
        other.to_str().unwrap(),
        "--volume",
        "other",
        "--key",
        "private",
    ]);
    let private = private["id"].as_str().unwrap().to_string();
    env.json(&["account", "create", "bob"]);
    env.json(&["key", "grant", "default", "bob"]);
    let ro = env.path("ro-store");
    let mount = RoMount::new(&env.store, &ro);
    let root_cmd = || env.cmd_at(&ro);

    // Sound: 0 for alice, 5 for bob (the private key's snapshot and packs), no damage.
    let (code, v, err) = check_of(&root_cmd, &["--read-data"]);
    assert_eq!(code, Some(0), "{v}\n{err}");
    let bob = || {
        let mut c = env.cmd_at(&ro);
        c.args(["--account", "bob"]);
        c
    };
    for args in [&[][..], &["--read-data"][..]] {
        let (code, v, err) = check_of(&bob, args);
        assert_eq!(code, Some(5), "bob {args:?}: {v}\n{err}");
        assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
        assert!(
            v["not_verified"].to_string().contains(&private),
            "bob {args:?}: {v}"
        );
        assert!(
            err.contains("not verified") && err.contains("key grant"),
            "{err}"
        );
        assert_eq!(v["intact_snapshots"].as_array().unwrap().len(), 2, "{v}");
    }
    let (code, line) = check_result(&bob, &[]);
    assert_eq!(code, Some(5));
    assert!(
        line.contains("no problems found") && line.contains("exit 5"),
        "{line}"
    );

    // A pack the user may not read: 5, naming it, nothing called damaged.
    let packs = env.packs();
    let unreadable = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let name = unreadable
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    let (_, nobody) = as_nobody(&env, &ro);
    for args in [&[][..], &["--read-data"][..]] {
        let (code, v, err) = check_of(&nobody, args);
        assert_eq!(code, Some(5), "unreadable pack, {args:?}: {v}\n{err}");
        assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
        assert!(v["damaged_snapshots"].as_array().unwrap().is_empty(), "{v}");
        assert!(v["not_verified"].to_string().contains(&name), "{v}");
        assert!(
            err.contains(&name) && err.contains("could not be read"),
            "{err}"
        );
    }
    let (code, line) = check_result(&nobody, &[]);
    assert_eq!(code, Some(5), "{line}");
    assert!(line.contains("exit 5"), "{line}");
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o644)).unwrap();
    drop(mount);

    // A damaged pack (one flipped byte in a record) and a deleted one: 4, naming them.
    let mut bytes = fs::read(&unreadable).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    fs::write(&unreadable, &bytes).unwrap();
    let mount = RoMount::new(&env.store, &ro);
    let (code, v, err) = check_of(&root_cmd, &["--read-data"]);
    assert_eq!(code, Some(4), "flipped byte: {v}\n{err}");
    assert!(v["problems"].to_string().contains(&name), "{v}");
    assert_eq!(v["chunks_damaged"], 1, "{v}");
    let (code, line) = check_result(&root_cmd, &["--read-data"]);
    assert_eq!(code, Some(4));
    // The pack's problem, and one per snapshot using the chunk.
    let problems = v["problems"].as_array().unwrap().len();
    assert!(
        line.contains(&format!("{problems} problems")) && line.contains("exit 4, damage found"),
        "{line}"
    );
    drop(mount);
    fs::remove_file(&unreadable).unwrap();
    let _mount = RoMount::new(&env.store, &ro);
    let (code, v, err) = check_of(&root_cmd, &[]);
    assert_eq!(code, Some(4), "deleted pack: {v}\n{err}");
    assert!(
        !v["damaged_snapshots"].as_array().unwrap().is_empty(),
        "{v}"
    );
    assert!(
        !v["problems"].to_string().contains("not in the index"),
        "a read-only store's check uses no index: {v}"
    );
    let _ = f;
}
