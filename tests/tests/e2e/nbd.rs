//! `serve nbd`: a snapshot of a real ext4 disk served read-only over NBD and read back by
//! qemu-img (an independent NBD client) byte-identical; images by IMAGE:DEVICE with their launch
//! rules; a client sending garbage does not take the server down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::*;

/// A running `serve nbd`, killed when dropped; its log goes to a file.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    pub(crate) export: String,
    log: std::path::PathBuf,
}

/// What one connection was sent and what the server had decoded, from its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    data: u64,
    holes: u64,
    status: u64,
    decoded: u64,
}

impl Server {
    /// The log lines of the first `n` connections to end (waiting for them: a client exits
    /// before the server writes its line).
    fn served(&self, n: usize) -> Vec<Served> {
        for _ in 0..600 {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<Served> = text.lines().filter_map(parse_served).collect();
            if lines.len() >= n {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "fewer than {n} connections logged: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// `PEER: disconnected after N requests: D bytes sent as data, H as holes, S block status
/// replies; the server has decoded X bytes in C chunks`.
fn parse_served(line: &str) -> Option<Served> {
    let num = |after: &str| -> Option<u64> {
        let i = line.find(after)? + after.len();
        line[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let (_, rest) = line.split_once(" requests: ")?;
    let data: u64 = rest.split(' ').next()?.parse().ok()?;
    Some(Served {
        data,
        holes: num("as data, ")?,
        status: num("as holes, ")?,
        decoded: num("has decoded ")?,
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve nbd ARGS --listen 127.0.0.1:0`, once it listens.
pub(crate) fn serve(env: &Env, args: &[&str]) -> Server {
    let mut all = args.to_vec();
    all.extend(["--listen", "127.0.0.1:0"]);
    serve_with(env, &all)
}

/// `serve nbd ARGS` as given (no `--listen` added).
fn serve_with(env: &Env, args: &[&str]) -> Server {
    let log = env.path(&format!("serve-{}.log", rand_suffix()));
    let mut child = env
        .cmd()
        .arg("--json")
        .args(["serve", "nbd"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
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
        log,
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
    // The snapshot itself, by id: bob has no grant on its key, refused before listening (the
    // command exits instead of serving).
    let snap = env.json(&["snapshot", "list"]);
    let snap = snap
        .as_array()
        .or_else(|| snap["snapshots"].as_array())
        .unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let no_grant = env.run(&[
        "--account",
        "bob",
        "serve",
        "nbd",
        &snap,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(no_grant.status.code(), Some(3), "{}", stderr(&no_grant));
    assert!(stderr(&no_grant).contains("grant"), "{}", stderr(&no_grant));
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

/// A 64 GiB snapshot holding 16 MiB: `qemu-img map` (block status, `base:allocation`) lists
/// exactly the data ranges as data, and `qemu-img convert` (structured reads) makes a sparse
/// copy equal to the disk, while the server decodes and sends only the 16 MiB of data (its own
/// count, from its log): the holes were told, never read.
#[test]
fn a_sparse_snapshot_is_mapped_and_copied_touching_only_its_data() {
    let env = Env::new("nbd-sparse");
    env.init(&[]);
    let disk = env.path("disk.img");
    let size = 64u64 << 30;
    let ranges = [(1u64 << 30, 4u64 << 20), (40 << 30, 12 << 20)];
    for (i, (off, len)) in ranges.iter().enumerate() {
        write_at(
            &disk,
            size,
            *off,
            &random_bytes(*len as usize, 80 + i as u64),
        );
    }
    let snap = env.snapshot(&disk, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let server = serve(&env, &[&snap]);
    let url = format!("nbd://{}/{}", server.addr, server.export);

    let map = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw", &url])
        .output()
        .unwrap();
    assert!(
        map.status.success(),
        "{}",
        String::from_utf8_lossy(&map.stderr)
    );
    let map: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    let data: Vec<(u64, u64)> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"].as_bool().unwrap())
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, ranges, "{map}");
    let covered: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(covered, size);
    let after_map = server.served(1);
    assert_eq!(
        (after_map[0].data, after_map[0].decoded),
        (0, 0),
        "mapping read nothing: {after_map:?}"
    );
    assert!(after_map[0].status > 0);

    let out = env.path("copy.img");
    let r = qemu_read(&server, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let copied = server.served(2)[1];
    let data_bytes: u64 = ranges.iter().map(|r| r.1).sum();
    assert_eq!(
        copied.data, data_bytes,
        "only the data was sent: {copied:?}"
    );
    assert_eq!(
        copied.decoded, data_bytes,
        "only the data was decoded, once: {copied:?}"
    );
    // The copy: the same length and bytes, and sparse.
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    assert!(
        allocated(&out) <= data_bytes + (4 << 20),
        "{}",
        allocated(&out)
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&disk)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    use std::os::unix::fs::FileExt;
    let (a, b) = (
        std::fs::File::open(&disk).unwrap(),
        std::fs::File::open(&out).unwrap(),
    );
    for (off, len) in ranges {
        let (mut x, mut y) = (vec![0u8; len as usize], vec![1u8; len as usize]);
        a.read_exact_at(&mut x, off).unwrap();
        b.read_exact_at(&mut y, off).unwrap();
        assert!(x == y, "data at {off} differs");
    }
}

/// Runs openssl with `args` in `dir`, asserting success.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

/// A CA, a server certificate it signed for 127.0.0.1 and a client certificate it signed, in
/// qemu's x509 layout: `server/` (server-cert.pem, server-key.pem, and ca-cert.pem only if
/// `verify_clients`) and `client/` (ca-cert.pem, client-cert.pem, client-key.pem).
fn make_x509(dir: &Path, verify_clients: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "[srv]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n\
         [cli]\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=blocksnap test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca-key.pem", "-out", "ca-cert.pem"]);
    openssl(dir, &ca);
    for (who, section) in [("server", "srv"), ("client", "cli")] {
        let mut req = vec!["req", "-subj"];
        let subj = format!("/CN={who}");
        req.push(&subj);
        req.extend(ec);
        let (key, csr, cert) = (
            format!("{who}-key.pem"),
            format!("{who}.csr"),
            format!("{who}-cert.pem"),
        );
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca-cert.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-extensions",
                section,
                "-out",
                &cert,
            ],
        );
    }
    let (server, client) = (dir.join("server"), dir.join("client"));
    std::fs::create_dir_all(&server).unwrap();
    std::fs::create_dir_all(&client).unwrap();
    for f in ["server-cert.pem", "server-key.pem"] {
        std::fs::copy(dir.join(f), server.join(f)).unwrap();
    }
    if verify_clients {
        std::fs::copy(dir.join("ca-cert.pem"), server.join("ca-cert.pem")).unwrap();
    }
    for f in ["ca-cert.pem", "client-cert.pem", "client-key.pem"] {
        std::fs::copy(dir.join(f), client.join(f)).unwrap();
    }
    (server, client)
}

/// `qemu-img ARGS...` through TLS credentials in `client` (x509, endpoint=client) against the
/// export at `port` on 127.0.0.1.
fn qemu_tls(
    args: &[&str],
    client: &Path,
    port: &str,
    export: &str,
    out: Option<&Path>,
) -> std::process::Output {
    let mut c = Command::new("timeout");
    c.arg("60").arg("qemu-img").args(args).args([
        "--object",
        &format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            client.display()
        ),
        "--image-opts",
        &format!("driver=nbd,host=127.0.0.1,port={port},export={export},tls-creds=tls0"),
    ]);
    if let Some(out) = out {
        c.arg(out);
    }
    c.output().unwrap()
}

/// TLS (rustls): qemu-img with x509 credentials reads the export byte-identical, also from a
/// server listening on every address (allowed with TLS, no --insecure); a plaintext client is
/// refused (every option before STARTTLS is, as the spec's FORCEDTLS mode says). With a CA in
/// --tls-creds, a client without a certificate it signed is refused too.
#[test]
fn tls_is_required_when_configured_and_qemu_speaks_it() {
    let env = Env::new("nbd-tls");
    env.init(&[]);
    let disk = env.path("disk.img");
    write_at(&disk, 8 << 20, 1 << 20, &random_bytes(2 << 20, 81));
    let snap = env.snapshot(&disk, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (server_dir, client_dir) = make_x509(&env.path("pki"), false);
    let cert = server_dir.join("server-cert.pem");
    let key = server_dir.join("server-key.pem");
    let server = serve_with(
        &env,
        &[
            &snap,
            "--listen",
            "0.0.0.0:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let info = qemu_tls(&["info"], &client_dir, &port, &snap, None);
    assert!(info.status.success(), "{}", stderr(&info));
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("8 MiB"),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );
    let out = env.path("via-tls.img");
    let copy = qemu_tls(
        &["convert", "-O", "raw"],
        &client_dir,
        &port,
        &snap,
        Some(&out),
    );
    assert!(copy.status.success(), "{}", stderr(&copy));
    assert_same(&disk, &out);
    // Plaintext: refused, qemu says the server wants TLS.
    let plain = Command::new("timeout")
        .args(["60", "qemu-img", "info", "-f", "raw"])
        .arg(format!("nbd://127.0.0.1:{port}/{snap}"))
        .output()
        .unwrap();
    assert!(!plain.status.success());
    assert!(stderr(&plain).contains("TLS"), "{}", stderr(&plain));
    drop(server);

    // Client certificates required (ca-cert.pem in --tls-creds): with one, served; without,
    // refused.
    let (server_dir, client_dir) = make_x509(&env.path("pki2"), true);
    let server = serve(&env, &[&snap, "--tls-creds", server_dir.to_str().unwrap()]);
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let ok = qemu_tls(&["info"], &client_dir, &port, &snap, None);
    assert!(ok.status.success(), "{}", stderr(&ok));
    std::fs::remove_file(client_dir.join("client-cert.pem")).unwrap();
    std::fs::remove_file(client_dir.join("client-key.pem")).unwrap();
    let anonymous = qemu_tls(&["info"], &client_dir, &port, &snap, None);
    assert!(
        !anonymous.status.success(),
        "a client without a certificate was served"
    );
    // A key file that is not one is refused before listening, naming it.
    let bad = env.run(&[
        "serve",
        "nbd",
        &snap,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        disk.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("disk.img"), "{}", stderr(&bad));
}

/// `qemu-io ARGS` on a qcow2 image; asserts success and no failed pattern check.
fn qemu_io(image: &Path, commands: &[String]) -> String {
    let mut c = Command::new("timeout");
    c.args(["60", "qemu-io", "-f", "qcow2"]);
    for cmd in commands {
        c.arg("-c").arg(cmd);
    }
    let out = c
        .arg(image)
        .output()
        .expect("qemu-io is installed (qemu-utils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(out.status.success(), "qemu-io {commands:?}: {text}");
    assert!(!text.contains("failed"), "qemu-io {commands:?}: {text}");
    text
}

/// Booting from a snapshot: a qcow2 overlay whose backing file is the export (over the Unix
/// socket, as a local hypervisor would), written with qemu-io; the written ranges and the
/// untouched ones read back right; the overlay converts to a standalone image equal to the
/// snapshot plus the writes, and `qemu-img rebase -b ''` pulls the rest in so the overlay no
/// longer needs the server.
#[test]
fn a_qcow2_overlay_boots_from_the_export_and_pulls_it_in() {
    let env = Env::new("nbd-overlay");
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 20, 22);
    let disk = env.path("disk.img");
    make_ext4(&disk, 64 << 20, &tree);
    let snap = env.snapshot(&disk, "disk")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let socket = env.path("nbd.sock");
    let server = serve_with(&env, &[&snap, "--socket", socket.to_str().unwrap()]);
    let backing = format!("nbd+unix:///{snap}?socket={}", socket.display());

    let overlay = env.path("overlay.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "raw", "-b", &backing])
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Writes, as the guest's would be: a superblock-area block, a run across two chunks, the
    // last sector.
    let size = 64u64 << 20;
    let writes = [
        (0x400u64, 4096u64, 0xabu8),
        (5 << 20, 200 << 10, 0xcd),
        (size - 512, 512, 0x5e),
    ];
    let cmds: Vec<String> = writes
        .iter()
        .map(|(off, len, p)| format!("write -P {p} {off} {len}"))
        .collect();
    qemu_io(&overlay, &cmds);
    let mut expected = std::fs::read(&disk).unwrap();
    for (off, len, p) in writes {
        expected[off as usize..(off + len) as usize].fill(p);
    }
    // The writes read back; untouched ranges read the snapshot's bytes: compare a few with a
    // pattern check where the snapshot holds one byte value, and the whole disk below.
    let mut reads: Vec<String> = writes
        .iter()
        .map(|(off, len, p)| format!("read -P {p} {off} {len}"))
        .collect();
    let zeros = (0..expected.len() / 65536)
        .map(|i| i * 65536)
        .find(|&o| expected[o..o + 65536].iter().all(|&b| b == 0))
        .expect("an all-zero 64 KiB block in the ext4 image");
    reads.push(format!("read -P 0 {zeros} 65536"));
    qemu_io(&overlay, &reads);

    let standalone = env.path("standalone.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&overlay)
        .arg(&standalone)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&standalone).unwrap() == expected,
        "standalone image != snapshot + writes"
    );

    // Pull the rest of the disk into the overlay; then it stands alone, the server stopped.
    let out = Command::new("qemu-img")
        .args(["rebase", "-f", "qcow2", "-b", ""])
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let served = server.served(1);
    assert!(served.iter().any(|s| s.data > 0), "{served:?}");
    drop(server);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    let alone = env.path("alone.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&overlay)
        .arg(&alone)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&alone).unwrap() == expected,
        "rebased overlay != snapshot + writes"
    );
}
