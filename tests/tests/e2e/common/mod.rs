//! Test helpers: a private environment per test, the binary runner, real disk images.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A number no other `Env` of this test process has: one test binary holds every area's tests,
/// so a name alone (or a name and the pid) could be shared.
fn next_env_number() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A test's own directory, store and config home.
pub struct Env {
    pub dir: PathBuf,
    pub store: PathBuf,
}

impl Env {
    pub fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join("blocksnap-tests").join(format!(
            "{name}-{}-{}",
            std::process::id(),
            next_env_number()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Env {
            store: dir.join("store"),
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The dedup index of this test's store: a cache outside the store, in
    /// `$XDG_CACHE_HOME/blocksnap/<store id>/index`.
    pub fn index_dir(&self) -> PathBuf {
        let config: Value =
            serde_json::from_slice(&fs::read(self.store.join("config")).unwrap()).unwrap();
        self.dir
            .join("cache")
            .join("blocksnap")
            .join(config["id"].as_str().unwrap())
            .join("index")
    }

    /// The command with this test's store and config directories.
    pub fn cmd(&self) -> Command {
        self.cmd_at(&self.store)
    }

    /// The command with this test's config directories and another store.
    pub fn cmd_at(&self, store: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_blocksnap-e2e"));
        c.env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env("XDG_DATA_HOME", self.dir.join("data"))
            .env_remove("BLOCKSNAP_STORE")
            .env_remove("BLOCKSNAP_ACCOUNT")
            .env_remove("BLOCKSNAP_IDENTITY")
            .arg("--store")
            .arg(store);
        c
    }

    /// Runs with `args`; returns the output whatever the status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs with `--json`, asserts success, parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd().arg("--json").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "blocksnap {args:?} failed ({:?}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of {args:?} is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn init(&self, extra: &[&str]) {
        let mut args = vec!["init", "--account", "alice"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn snapshot(&self, image: &Path, volume: &str) -> Value {
        self.json(&[
            "snapshot",
            "create",
            image.to_str().unwrap(),
            "--volume",
            volume,
        ])
    }

    pub fn restore(&self, id: &str, out: &Path) -> Value {
        self.json(&["snapshot", "restore", id, out.to_str().unwrap()])
    }

    /// Every pack file of the store (not the index objects beside them, `ID.idx`).
    pub fn packs(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for sub in fs::read_dir(self.store.join("packs")).unwrap() {
            let sub = sub.unwrap().path();
            if sub.is_dir() {
                for f in fs::read_dir(&sub).unwrap() {
                    let f = f.unwrap().path();
                    if f.extension().is_none_or(|e| e != "idx") {
                        v.push(f);
                    }
                }
            }
        }
        v.sort();
        v
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like, compressible bytes.
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "block", "snapshot", "volume", "chunk", "pack", "the", "disk", "image", "restore", "store",
        "\n",
    ];
    let r = random_bytes(len / 4 + 16, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        out.push(b' ');
        i += 1;
    }
    out.truncate(len);
    out
}

/// A directory of files like a small system: binaries (random), text, a marker file.
pub fn make_tree(dir: &Path, files: usize, seed: u64) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("doc")).unwrap();
    for i in 0..files {
        let s = seed * 1000 + i as u64;
        let len = 4096 + (random_bytes(8, s)[0] as usize) * 6000;
        if i % 2 == 0 {
            fs::write(
                dir.join("bin").join(format!("prog{i}")),
                random_bytes(len, s),
            )
            .unwrap();
        } else {
            fs::write(
                dir.join("doc").join(format!("text{i}.txt")),
                text_bytes(len, s),
            )
            .unwrap();
        }
    }
}

fn tool(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: install e2fsprogs (.ci/run does)");
}

/// A sparse ext4 image of `size` bytes holding a copy of `tree`.
pub fn make_ext4(image: &Path, size: u64, tree: &Path) {
    File::create(image).unwrap().set_len(size).unwrap();
    let out = Command::new(tool("mkfs.ext4"))
        .args(["-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d"])
        .arg(tree)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs debugfs write commands against an image.
pub fn debugfs(image: &Path, commands: &[String]) {
    let script = image.with_extension("debugfs");
    fs::write(&script, commands.join("\n") + "\n").unwrap();
    let out = Command::new(tool("debugfs"))
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("rror"), "debugfs reported: {err}");
    fs::remove_file(script).unwrap();
}

/// Copies a file keeping holes.
pub fn copy_sparse(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Asserts that two files have the same length and bytes.
pub fn assert_same(a: &Path, b: &Path) {
    let (ma, mb) = (fs::metadata(a).unwrap(), fs::metadata(b).unwrap());
    assert_eq!(
        ma.len(),
        mb.len(),
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                off + i as u64
            );
        }
        off += n as u64;
    }
}

/// Bytes of 4 KiB blocks that differ between two images of equal size.
pub fn changed_block_bytes(a: &Path, b: &Path) -> u64 {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut changed = 0;
    let mut off = 0;
    while off < len {
        let n = ((len - off) as usize).min(ba.len());
        fa.read_exact_at(&mut ba[..n], off).unwrap();
        fb.read_exact_at(&mut bb[..n], off).unwrap();
        for (x, y) in ba[..n].chunks(4096).zip(bb[..n].chunks(4096)) {
            if x != y {
                changed += x.len() as u64;
            }
        }
        off += n as u64;
    }
    changed
}

/// Bytes actually allocated on disk for a file.
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// Writes `data` at `offset` in a file, creating it sparse with length `size`.
pub fn write_at(path: &Path, size: u64, offset: u64, data: &[u8]) {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Appends bytes to a file.
pub fn append(path: &Path, data: &[u8]) {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(data)
        .unwrap();
}
