//! `serve nbd`: a snapshot of a real ext4 disk served read-only over NBD and read back by
//! qemu-img (an independent NBD client) byte-identical; images by IMAGE:DEVICE with their launch
//! rules; a client sending garbage does not take the server down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::*;

/// A running `serve nbd`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    export: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(env: &Env, args: &[&str]) -> Server {
    let mut all = args.to_vec();
    all.extend(["--listen", "127.0.0.1:0"]);
    serve_with(env, &all)
}

/// `serve nbd ARGS` as given (no `--listen` added).
fn serve_with(env: &Env, args: &[&str]) -> Server {
    let mut child = env
        .cmd()
        .arg("--json")
        .args(["serve", "nbd"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first JSON document on stdout says where it listens.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "serve nbd exited: {text}"
        );
        text += &line;
        if line.trim_end() == "}" {
            break;
        }
    }
    let info: serde_json::Value = serde_json::from_str(&text).unwrap();
    Server {
        child,
        addr: info["listen"].as_str().unwrap().to_string(),
        export: info["export"].as_str().unwrap().to_string(),
    }
}

fn qemu_read(server: &Server, out: &Path) -> std::process::Output {
    Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(format!("nbd://{}/{}", server.addr, server.export))
        .arg(out)
        .output()
        .expect("qemu-img is installed (qemu-utils; .ci/run installs it)")
}

#[test]
fn qemu_reads_a_served_ext4_snapshot_byte_identical() {
    let env = Env::new("nbd-ext4");
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 30, 21);
    let disk = env.path("disk.img");
    make_ext4(&disk, 64 << 20, &tree);
    let snap = env.snapshot(&disk, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();

    let server = serve(&env, &[&snap]);
    assert_eq!(server.export, snap);
    // A client that speaks nonsense, and one that hangs up mid-handshake, change nothing.
    let mut junk = TcpStream::connect(&server.addr).unwrap();
    let mut greeting = [0u8; 18];
    junk.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    junk.write_all(&[0xff; 64]).unwrap();
    drop(junk);
    drop(TcpStream::connect(&server.addr).unwrap());

    let out = env.path("via-nbd.img");
    let r = qemu_read(&server, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same(&disk, &out);
    // Again, with the default export name.
    let out2 = env.path("via-nbd-2.img");
    let r = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(format!("nbd://{}", server.addr))
        .arg(&out2)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same(&disk, &out2);
}

#[test]
fn an_image_device_is_served_only_to_who_may_launch_it() {
    let env = Env::new("nbd-image");
    env.init(&[]);
    let disk = env.path("d.img");
    write_at(&disk, 16 << 20, 3 << 20, &random_bytes(2 << 20, 9));
    env.json(&[
        "image",
        "create",
        "web",
        "--volume",
        &format!("/dev/vda={}", disk.display()),
    ]);
    let server = serve(&env, &["web:/dev/vda"]);
    let out = env.path("vda.img");
    let r = qemu_read(&server, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same(&disk, &out);
    drop(server);

    env.json(&["account", "create", "bob"]);
    let denied = env.run(&[
        "--account",
        "bob",
        "serve",
        "nbd",
        "web:/dev/vda",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    let missing = env.run(&["serve", "nbd", "web:/dev/vdz", "--listen", "127.0.0.1:0"]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("/dev/vda"),
        "{}",
        stderr(&missing)
    );
}

/// Several clients at once: one that connects and goes quiet does not stop `qemu-img info` or
/// two `qemu-img convert`s running side by side (each byte-identical); a quiet client is
/// disconnected after --idle-timeout; one past --max-connections is closed at once.
#[test]
fn many_clients_at_once_with_an_idle_timeout_and_a_bound() {
    let env = Env::new("nbd-many");
    env.init(&[]);
    let disk = env.path("disk.img");
    write_at(&disk, 32 << 20, 1 << 20, &random_bytes(6 << 20, 77));
    let snap = env.snapshot(&disk, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let server = serve(
        &env,
        &[&snap, "--idle-timeout", "2", "--max-connections", "3"],
    );

    // A client that takes the greeting and then says nothing.
    let mut quiet = TcpStream::connect(&server.addr).unwrap();
    let mut greeting = [0u8; 18];
    quiet.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");

    // (Bounded: a server that serves one client at a time would hang here.)
    let info = Command::new("timeout")
        .args(["60", "qemu-img", "info", "-f", "raw"])
        .arg(format!("nbd://{}/{}", server.addr, server.export))
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(String::from_utf8_lossy(&info.stdout).contains("33554432"));

    let (a, b) = (env.path("a.img"), env.path("b.img"));
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| qemu_read(&server, &a));
        let tb = s.spawn(|| qemu_read(&server, &b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(
        ra.status.success(),
        "{}",
        String::from_utf8_lossy(&ra.stderr)
    );
    assert!(
        rb.status.success(),
        "{}",
        String::from_utf8_lossy(&rb.stderr)
    );
    assert_same(&disk, &a);
    assert_same(&disk, &b);

    // The quiet client is let go once it was quiet for 2 s.
    quiet
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = quiet.read_to_end(&mut rest);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "the idle client was not disconnected"
    );

    // Three quiet clients fill the server; a fourth is closed at once (no greeting).
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(&server.addr).unwrap();
            c.read_exact(&mut greeting).unwrap();
            c
        })
        .collect();
    let mut extra = TcpStream::connect(&server.addr).unwrap();
    extra
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let n = extra.read_to_end(&mut got).unwrap_or(0);
    assert_eq!(n, 0, "a connection past --max-connections gets no greeting");
    drop(held);
}

/// `--socket PATH`: a Unix socket qemu-img reads through (`nbd+unix://`), byte-identical; a socket
/// left by a killed server is replaced, a file that is not a socket is refused and kept.
#[test]
fn a_unix_socket_serves_local_hypervisors() {
    let env = Env::new("nbd-unix");
    env.init(&[]);
    let disk = env.path("disk.img");
    write_at(&disk, 16 << 20, 4096, &random_bytes(3 << 20, 78));
    let snap = env.snapshot(&disk, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let socket = env.path("nbd.sock");
    let socket_s = socket.to_str().unwrap();

    let server = serve_with(&env, &[&snap, "--socket", socket_s]);
    assert_eq!(server.addr, format!("unix:{socket_s}"));
    let export = server.export.clone();
    let read = || {
        let out = env.path(&format!("via-unix-{}.img", rand_suffix()));
        let r = Command::new("timeout")
            .args(["60", "qemu-img", "convert", "-f", "raw", "-O", "raw"])
            .arg(format!("nbd+unix:///{export}?socket={socket_s}"))
            .arg(&out)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_same(&disk, &out);
    };
    read();
    // Killed (SIGKILL): the socket file stays; the next server replaces it.
    drop(server);
    assert!(socket.exists());
    let server = serve_with(&env, &[&snap, "--socket", socket_s]);
    read();
    drop(server);

    // A regular file at the path is not a socket: refused, left as it was.
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, b"keep me").unwrap();
    let out = env.run(&["serve", "nbd", &snap, "--socket", socket_s]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a socket"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&socket).unwrap(), b"keep me");
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The export is the decrypted disk: an address other than loopback is refused (exit 2, saying
/// why and what to do) unless --insecure says the network is trusted.
#[test]
fn a_non_loopback_address_needs_insecure() {
    let env = Env::new("nbd-insecure");
    env.init(&[]);
    let disk = env.path("disk.img");
    write_at(&disk, 4 << 20, 0, &random_bytes(1 << 20, 79));
    let snap = env.snapshot(&disk, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.run(&["serve", "nbd", &snap, "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a loopback address"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--insecure"), "{}", stderr(&out));
    let server = serve_with(&env, &[&snap, "--listen", "0.0.0.0:0", "--insecure"]);
    assert!(server.addr.starts_with("0.0.0.0:"), "{}", server.addr);
}
