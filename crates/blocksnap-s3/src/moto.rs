//! For tests: a real local S3 server (moto's `moto_server`) on a free 127.0.0.1 port, started
//! and stopped by the test.
//!
//! The server is found at `$BLOCKSNAP_MOTO`, else in the virtual environment `.ci/run` makes
//! (`~/.cache/blocksnap-ci/venv/bin/moto_server`), else as `moto_server` on the `PATH`. A test
//! that cannot find it fails, saying how to install it: an S3 test that skips would hide that
//! nothing was tested.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// moto_server's main with Werkzeug's server on one thread (see [`Moto::start`]).
const SERIAL_MOTO: &str = "import sys\n\
import moto.server as s\n\
real = s.run_simple\n\
def serial(*a, **k):\n    k['threaded'] = False\n    return real(*a, **k)\n\
s.run_simple = serial\n\
s.main(sys.argv[1:])\n";

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

/// A running moto server; stopped when dropped.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
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

impl Moto {
    /// Starts a server and waits until it answers; panics (failing the test) if moto is not
    /// installed or does not start within 30 seconds.
    pub fn start() -> Moto {
        let bin = find().unwrap_or_else(|e| panic!("{e}"));
        // A free port: bind port 0, read the port, let it go. Another process could take it in
        // between; the start then fails loudly rather than talking to a stranger.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        let log = std::env::temp_dir().join(format!("blocksnap-moto-{port}.log"));
        let out = std::fs::File::create(&log).expect("moto's log file");
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
        let mut moto = Moto { child, port, log };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "{} exited ({status}) before answering: {}",
                    bin.display(),
                    std::fs::read_to_string(&moto.log).unwrap_or_default()
                );
            }
            if moto.request("GET", "/").is_ok_and(|s| s < 500) {
                return moto;
            }
            if start.elapsed() > Duration::from_secs(30) {
                moto.stop();
                panic!(
                    "{} did not answer on 127.0.0.1:{port} within 30 s: {}",
                    bin.display(),
                    std::fs::read_to_string(&moto.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its endpoint URL, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The settings a client needs to talk to it (dummy credentials; moto checks none), as
    /// environment variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "blocksnap-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "blocksnap-test-secret".into()),
        ]
    }

    /// Creates a bucket. (The object_store client has no bucket calls; moto takes an unsigned
    /// `PUT /BUCKET`, so this one test-only request is made by hand.)
    pub fn create_bucket(&self, name: &str) {
        match self.request("PUT", &format!("/{name}")) {
            Ok(200) => {}
            other => panic!("moto: creating bucket {name} gave {other:?}"),
        }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
