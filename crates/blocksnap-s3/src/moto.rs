//! For tests: a real S3 server. By default moto's `moto_server`, started on a free 127.0.0.1
//! port and stopped by the test; or, for the optional suite against another implementation
//! (Ceph radosgw, s3s-fs, MinIO), a server already running that `BLOCKSNAP_TEST_S3_ENDPOINT`
//! names (see [`S3Server::start`]).
//!
//! The moto server is found at `$BLOCKSNAP_MOTO`, else in the virtual environment `.ci/run`
//! makes (`~/.cache/blocksnap-ci/venv/bin/moto_server`), else as `moto_server` on the `PATH`. A
//! test that cannot find it fails, saying how to install it: an S3 test that skips would hide
//! that nothing was tested.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// moto_server's main with Werkzeug's server on one thread (see [`S3Server::start`]).
const SERIAL_MOTO: &str = "import sys\n\
import moto.server as s\n\
real = s.run_simple\n\
def serial(*a, **k):\n    k['threaded'] = False\n    return real(*a, **k)\n\
s.run_simple = serial\n\
s.main(sys.argv[1:])\n";

/// Makes bucket `argv[2]` on the endpoint `argv[1]` (credentials from the environment) if it is
/// missing, and deletes every object in it: each test starts from an empty bucket, as it does
/// on a moto server of its own. boto3 comes with moto.
const FRESH_BUCKET: &str = r#"
import sys, boto3
s3 = boto3.client('s3', endpoint_url=sys.argv[1])
name = sys.argv[2]
try:
    s3.head_bucket(Bucket=name)
except Exception:
    s3.create_bucket(Bucket=name)
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=name):
    for o in page.get('Contents', []):
        s3.delete_object(Bucket=name, Key=o['Key'])
"#;

/// The Python interpreter of the moto_server script `bin` (its `#!` line).
fn interpreter(bin: &std::path::Path) -> PathBuf {
    let text = std::fs::read(bin).unwrap_or_else(|e| panic!("cannot read {}: {e}", bin.display()));
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first);
    match line
        .strip_prefix("#!")
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        // `#!/usr/bin/env python3`
        Some(words) if words.len() == 2 && words[0].ends_with("/env") => PathBuf::from(words[1]),
        Some(words) if words.len() == 1 => PathBuf::from(words[0]),
        _ => panic!(
            "{} does not start with a #! line naming its Python: not a moto_server script",
            bin.display()
        ),
    }
}

/// A real S3 server for one test: moto of its own, or the external one, held by this test
/// alone until dropped.
#[derive(Debug)]
pub struct S3Server {
    port: u16,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A moto server this test started; stopped when dropped.
    Moto { child: Child, log: PathBuf },
    /// The server `BLOCKSNAP_TEST_S3_ENDPOINT` names; `lock` keeps every other test of any
    /// test process off it meanwhile (their buckets share names).
    External { external: External, _lock: File },
}

/// What `BLOCKSNAP_TEST_S3_*` say of an external server.
#[derive(Debug, Clone)]
struct External {
    port: u16,
    access_key: String,
    secret_key: String,
    region: String,
}

impl External {
    /// The external server the environment names, if any; panics (failing the test) on a
    /// setting it cannot use.
    fn from_env() -> Option<External> {
        let endpoint = std::env::var("BLOCKSNAP_TEST_S3_ENDPOINT").ok()?;
        let port = ["http://127.0.0.1:", "http://localhost:"]
            .iter()
            .find_map(|p| endpoint.strip_prefix(p))
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "BLOCKSNAP_TEST_S3_ENDPOINT={endpoint}: the tests take http://127.0.0.1:PORT \
                     (their proxies read plain HTTP on this machine); reach another host \
                     through a tunnel, e.g. `ssh -L PORT:HOST:PORT`"
                )
            });
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("BLOCKSNAP_TEST_S3_ENDPOINT is set but {name} is not: set both keys")
            })
        };
        Some(External {
            port,
            access_key: var("BLOCKSNAP_TEST_S3_ACCESS_KEY_ID"),
            secret_key: var("BLOCKSNAP_TEST_S3_SECRET_ACCESS_KEY"),
            region: std::env::var("BLOCKSNAP_TEST_S3_REGION")
                .unwrap_or_else(|_| "us-east-1".into()),
        })
    }
}

/// Where the moto server is, or a message saying how to install it.
pub fn find() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BLOCKSNAP_MOTO") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "BLOCKSNAP_MOTO={} is not a file; point it at moto_server",
                p.display()
            ))
        };
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cache/blocksnap-ci/venv/bin/moto_server");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("moto_server");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(
        "no moto_server: the S3 tests need a real local S3 server. Install it with \
         `python3 -m venv ~/.cache/blocksnap-ci/venv && ~/.cache/blocksnap-ci/venv/bin/pip install \
         'moto[s3]' flask flask-cors` (what .ci/run does), or set BLOCKSNAP_MOTO to a moto_server"
            .into(),
    )
}

impl S3Server {
    /// A server for this test, answering; panics (failing the test) if there is none.
    ///
    /// By default a moto server of its own, started within 30 seconds. With
    /// `BLOCKSNAP_TEST_S3_ENDPOINT=http://127.0.0.1:PORT` (and `BLOCKSNAP_TEST_S3_ACCESS_KEY_ID`,
    /// `BLOCKSNAP_TEST_S3_SECRET_ACCESS_KEY`, optionally `BLOCKSNAP_TEST_S3_REGION`) the server
    /// running there, taken by one test at a time, each of its buckets emptied when the test
    /// makes it ([`S3Server::create_bucket`]).
    pub fn start() -> S3Server {
        match External::from_env() {
            Some(external) => S3Server::external(external),
            None => S3Server::moto(),
        }
    }

    fn external(external: External) -> S3Server {
        let path = std::env::temp_dir().join(format!("blocksnap-test-s3-{}.lock", external.port));
        let lock =
            File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
        let server = S3Server {
            port: external.port,
            kind: Kind::External {
                external,
                _lock: lock,
            },
        };
        if !server.request("GET", "/").is_ok_and(|s| s < 500) {
            panic!(
                "nothing answers at {} (BLOCKSNAP_TEST_S3_ENDPOINT): start the server first",
                server.endpoint()
            );
        }
        server
    }

    /// A moto server of its own, whatever `BLOCKSNAP_TEST_S3_ENDPOINT` says: for the tests that
    /// tamper with the traffic. A proxy that drops the conditional headers breaks the request
    /// signature, which moto does not check and a real server does.
    pub fn moto() -> S3Server {
        let bin = find().unwrap_or_else(|e| panic!("{e}"));
        // A free port: bind port 0, read the port, let it go. Another process could take it in
        // between; the start then fails loudly rather than talking to a stranger.
        let port = free_port();
        let log = std::env::temp_dir().join(format!("blocksnap-moto-{port}.log"));
        let out = File::create(&log).expect("moto's log file");
        // moto's server answers requests on several threads, and its conditional PUT checks
        // and writes without a lock: two racing `If-None-Match: *` PUTs can both succeed, and
        // two racing `If-Match` PUTs both win (seen in the conformance suite's racing checks).
        // Real S3 decides each condition atomically. So the server runs single-threaded here,
        // with moto_server's own interpreter: each request is decided whole, as S3 does.
        let python = interpreter(&bin);
        let child = Command::new(&python)
            .args([
                "-c",
                SERIAL_MOTO,
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let logged = {
            let log = log.clone();
            move || std::fs::read_to_string(&log).unwrap_or_default()
        };
        let mut moto = S3Server {
            port,
            kind: Kind::Moto { child, log },
        };
        let start = Instant::now();
        loop {
            if let Kind::Moto { child, .. } = &mut moto.kind
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited ({status}) before answering: {}",
                    bin.display(),
                    logged()
                );
            }
            if moto.request("GET", "/").is_ok_and(|s| s < 500) {
                return moto;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let text = logged();
                moto.stop();
                panic!(
                    "{} did not answer on 127.0.0.1:{port} within 30 s: {text}",
                    bin.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its endpoint URL, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether this is the external server.
    fn is_external(&self) -> bool {
        matches!(self.kind, Kind::External { .. })
    }

    /// The settings a client needs to talk to it, as environment variables (for moto, dummy
    /// credentials: it checks none).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let (key, secret, region) = match &self.kind {
            Kind::Moto { .. } => (
                "blocksnap-test".to_string(),
                "blocksnap-test-secret".to_string(),
                "us-east-1".to_string(),
            ),
            Kind::External { external, .. } => (
                external.access_key.clone(),
                external.secret_key.clone(),
                external.region.clone(),
            ),
        };
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", region),
            ("AWS_ACCESS_KEY_ID", key),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ]
    }

    /// Makes an empty bucket. (The object_store client has no bucket calls. moto takes an
    /// unsigned `PUT /BUCKET`, so on moto this one test-only request is made by hand; on an
    /// external server, which checks signatures, boto3 makes the bucket or empties the one
    /// an earlier test left.)
    pub fn create_bucket(&self, name: &str) {
        if !self.is_external() {
            match self.request("PUT", &format!("/{name}")) {
                Ok(200) => return,
                other => panic!("moto: creating bucket {name} gave {other:?}"),
            }
        }
        let python = find()
            .map(|bin| interpreter(&bin))
            .unwrap_or_else(|_| PathBuf::from("python3"));
        let out = Command::new(&python)
            .args(["-c", FRESH_BUCKET, &self.endpoint(), name])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        assert!(
            out.status.success(),
            "making an empty bucket {name} on {} with boto3 ({}) failed: {}",
            self.endpoint(),
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One plain HTTP/1.1 request with an empty body; the status code.
    fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )?;
        let mut head = Vec::new();
        s.read_to_end(&mut head)?;
        let line = String::from_utf8_lossy(&head);
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:.100}")))
    }

    fn stop(&mut self) {
        if let Kind::Moto { child, .. } = &mut self.kind {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if let Kind::Moto { log, .. } = &self.kind {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
