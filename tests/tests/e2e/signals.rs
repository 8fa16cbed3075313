//! SIGINT, SIGTERM and SIGHUP stop any command cleanly: its lock objects and temporary files
//! are removed, "interrupted" is printed, the exit status is 130 (SIGINT), 143 (SIGTERM) or 129
//! (SIGHUP), and the store goes on working; under `nohup` SIGHUP stays ignored. A command blocked in I/O is ended by the handler after a grace period,
//! with the same clean-up.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use rustix::process::{Pid, Signal, kill_process};

/// A sparse image of 1 GiB with `mib` MiB of random data in four extents: big enough that a
/// snapshot or a restore of it runs for a second or more.
fn big_image(env: &Env, name: &str, mib: u64) -> PathBuf {
    let path = env.path(name);
    let f = fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    let piece = 16u64 << 20;
    let per_extent = mib / 4 * (1 << 20);
    for extent in 0..4u64 {
        let base = extent * (256 << 20) + (1 << 20);
        let mut off = 0;
        while off < per_extent {
            let data = random_bytes(piece as usize, extent * 1000 + off / piece + 1);
            std::os::unix::fs::FileExt::write_all_at(&f, &data, base + off).unwrap();
            off += piece;
        }
    }
    f.sync_all().unwrap();
    path
}

/// Files under `dir` (recursively) whose name starts with `.tmp-`.
fn tmp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            out.push(p);
        } else if p.is_dir() && !p.is_symlink() {
            out.extend(tmp_files(&p));
        }
    }
    out
}

/// The lock objects in the store's `locks/`.
fn lock_objects(env: &Env) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(env.store.join("locks")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect()
}

/// Waits until `cond` holds; panics after `secs`, or if `child` ends first.
fn wait_until(child: &mut Child, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the command ended ({status}) before {what}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn send(child: &Child, sig: Signal) {
    kill_process(Pid::from_child(child), sig).unwrap();
}

/// Waits for the child (at most `secs`) and returns its status and stderr.
fn finish(mut child: Child, secs: u64) -> (ExitStatus, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status, err);
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("the command did not end within {secs} s of the signal");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.cmd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The store after an interrupted command: no lock object, no temporary file, check clean.
fn assert_clean(env: &Env, what: &str) {
    assert!(
        lock_objects(env).is_empty(),
        "{what} left lock objects: {:?}",
        lock_objects(env)
    );
    assert!(
        tmp_files(&env.store).is_empty(),
        "{what} left temporary files in the store: {:?}",
        tmp_files(&env.store)
    );
    let check = env.run(&["check"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "check after {what}: {}{}",
        String::from_utf8_lossy(&check.stdout),
        stderr(&check)
    );
}

/// A snapshot, then a restore, each stopped mid-way by `sig`; then both run to the end and the
/// restore is byte-identical.
fn interrupt_snapshot_and_restore(name: &str, sig: Signal, code: i32) {
    let env = Env::new(name);
    env.init(&[]);
    let img = big_image(&env, "big.img", 384);

    // The snapshot: signalled once it holds the lock and writes packs.
    let mut child = spawn(
        &env,
        &[
            "snapshot",
            "create",
            img.to_str().unwrap(),
            "--volume",
            "big",
        ],
    );
    wait_until(&mut child, 60, "the snapshot wrote a pack", || {
        !lock_objects(&env).is_empty() && !tmp_files(&env.store.join("packs")).is_empty()
    });
    std::thread::sleep(Duration::from_millis(200));
    send(&child, sig);
    let (status, err) = finish(child, 10);
    assert_eq!(status.code(), Some(code), "snapshot: {err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        !err.contains("did not stop within"),
        "the snapshot stops at its next batch, not by the backstop: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        env.json(&["snapshot", "list"])
            .as_array()
            .unwrap()
            .is_empty(),
        "an interrupted snapshot is not committed"
    );
    assert_clean(&env, "the interrupted snapshot");

    // The store still works: the whole snapshot, then a restore stopped mid-way.
    let id = env.snapshot(&img, "big")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.path("out.img");
    let mut child = spawn(&env, &["snapshot", "restore", &id, out.to_str().unwrap()]);
    wait_until(&mut child, 60, "the restore wrote data", || {
        tmp_files(&env.dir)
            .iter()
            .any(|p| p.parent() == Some(&*env.dir) && allocated_or_zero(p) > 0)
    });
    send(&child, sig);
    let (status, err) = finish(child, 10);
    assert_eq!(status.code(), Some(code), "restore: {err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!err.contains("did not stop within"), "{err}");
    assert!(!out.exists(), "an interrupted restore leaves no output");
    let left: Vec<_> = tmp_files(&env.dir)
        .into_iter()
        .filter(|p| p.parent() == Some(&*env.dir))
        .collect();
    assert!(
        left.is_empty(),
        "the restore's temporary output is left: {left:?}"
    );
    assert_clean(&env, "the interrupted restore");

    env.restore(&id, &out);
    assert_same(&img, &out);
}

fn allocated_or_zero(p: &Path) -> u64 {
    fs::metadata(p).map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
}

#[test]
fn sigint_stops_snapshot_and_restore_cleanly_with_130() {
    interrupt_snapshot_and_restore("sig_int", Signal::INT, 130);
}

#[test]
fn sigterm_stops_snapshot_and_restore_cleanly_with_143() {
    interrupt_snapshot_and_restore("sig_term", Signal::TERM, 143);
}

#[test]
fn sighup_stops_snapshot_and_restore_cleanly_with_129() {
    interrupt_snapshot_and_restore("sig_hup", Signal::HUP, 129);
}

/// `check --read-data` (decrypting every chunk of a 384 MiB disk: seconds of work) stopped by
/// SIGINT while it holds its lock: exit 130, "interrupted", its lock object removed, the store
/// as clean as before; then it runs to the end.
#[test]
fn sigint_stops_check_read_data_cleanly_with_130() {
    let env = Env::new("sig_check");
    env.init(&[]);
    let img = big_image(&env, "big.img", 384);
    env.snapshot(&img, "big");
    let mut child = spawn(&env, &["check", "--read-data"]);
    wait_until(&mut child, 60, "check took its lock", || {
        !lock_objects(&env).is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    send(&child, Signal::INT);
    let (status, err) = finish(child, 10);
    assert_eq!(status.code(), Some(130), "check: {err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("did not stop within"), "{err}");
    assert_clean(&env, "the interrupted check");
    let full = env.json(&["check", "--read-data"]);
    assert_eq!(full["ok"], true, "{full}");
}

/// Started with SIGHUP ignored (`nohup blocksnap …`), a command keeps running through a SIGHUP
/// and commits its snapshot.
#[test]
fn under_nohup_sighup_is_ignored_and_the_snapshot_completes() {
    let env = Env::new("sig_nohup");
    env.init(&[]);
    let img = big_image(&env, "big.img", 256);
    let base = env.cmd();
    let mut cmd = std::process::Command::new("nohup");
    cmd.arg(base.get_program()).args(base.get_args());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .args([
            "snapshot",
            "create",
            img.to_str().unwrap(),
            "--volume",
            "big",
        ])
        .current_dir(&env.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nohup (coreutils) is installed");
    wait_until(&mut child, 60, "the snapshot wrote a pack", || {
        !lock_objects(&env).is_empty() && !tmp_files(&env.store.join("packs")).is_empty()
    });
    send(&child, Signal::HUP);
    let (status, err) = finish(child, 120);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("interrupted"), "{err}");
    assert_eq!(env.json(&["snapshot", "list"]).as_array().unwrap().len(), 1);
    assert_clean(&env, "the snapshot under nohup");
}

/// A running `serve nbd` and the address it listens on.
fn serve(env: &Env, id: &str) -> (Child, String) {
    let mut child = env
        .cmd()
        .args(["--json", "serve", "nbd", id, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "serve ended: {text}");
        text += &line;
        if line.trim_end() == "}" {
            break;
        }
    }
    let info: serde_json::Value = serde_json::from_str(&text).unwrap();
    (child, info["listen"].as_str().unwrap().to_string())
}

/// `serve nbd` stops at Ctrl-C with 130, idle or while a client is connected; a client that
/// stops reading a large reply blocks the server in a write, and the handler's backstop then
/// ends it within the grace period, removing its lock object.
#[test]
fn serve_nbd_stops_at_sigint() {
    let env = Env::new("sig_serve");
    env.init(&[]);
    let img = env.path("disk.img");
    write_at(&img, 64 << 20, 0, &random_bytes(48 << 20, 7));
    let id = env.snapshot(&img, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Idle.
    let (child, _) = serve(&env, &id);
    assert_eq!(lock_objects(&env).len(), 1, "serve holds a lock object");
    let start = Instant::now();
    send(&child, Signal::INT);
    let (status, err) = finish(child, 10);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && !err.contains("did not stop within"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(lock_objects(&env).is_empty());

    // A client connected, between requests.
    let (child, addr) = serve(&env, &id);
    let mut client = handshake(&addr);
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    send(&child, Signal::INT);
    let (status, err) = finish(child, 10);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!err.contains("did not stop within"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(lock_objects(&env).is_empty());
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);

    // A client that asks for 32 MiB and reads none of it: the server blocks writing.
    let (child, addr) = serve(&env, &id);
    let mut client = handshake(&addr);
    let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
    req.extend_from_slice(&0u16.to_be_bytes()); // flags
    req.extend_from_slice(&0u16.to_be_bytes()); // NBD_CMD_READ
    req.extend_from_slice(&1u64.to_be_bytes()); // handle
    req.extend_from_slice(&0u64.to_be_bytes()); // offset
    req.extend_from_slice(&(32u32 << 20).to_be_bytes());
    client.write_all(&req).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let start = Instant::now();
    send(&child, Signal::INT);
    let (status, err) = finish(child, 15);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("did not stop within"),
        "the backstop ended it: {err}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        lock_objects(&env).is_empty(),
        "the backstop removed the lock object"
    );
    drop(client);
    assert_clean(&env, "the interrupted server");
}

/// The fixed-newstyle handshake with NBD_OPT_EXPORT_NAME (default export); returns the socket
/// in the transmission phase.
fn handshake(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&2u32.to_be_bytes()).unwrap(); // NBD_FLAG_C_NO_ZEROES
    s.write_all(&0x4948_4156_454f_5054u64.to_be_bytes())
        .unwrap(); // IHAVEOPT
    s.write_all(&1u32.to_be_bytes()).unwrap(); // NBD_OPT_EXPORT_NAME
    s.write_all(&0u32.to_be_bytes()).unwrap(); // empty name
    let mut info = [0u8; 10];
    s.read_exact(&mut info).unwrap();
    assert_eq!(u64::from_be_bytes(info[..8].try_into().unwrap()), 64 << 20);
    s
}
