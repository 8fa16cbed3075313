//! The end-to-end runs: a generated image snapshotted into a fresh store, changed in about 2% of
//! its bytes and snapshotted again, and that snapshot restored and compared with the image, each
//! run timed with the CPU time it used.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::data::{ContentMix, ImageContent, Rng, fill_random, write_image};
use super::report::EndToEnd;
use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::init::InitOptions;
use crate::progress::Progress;
use crate::repo::Store;
use crate::snapshot::create::{SnapshotOptions, SnapshotReport};

/// What the three runs measured.
pub(super) struct Runs {
    /// What the generated image holds.
    pub image: ImageContent,
    pub snapshot: EndToEnd,
    pub incremental: EndToEnd,
    pub restore: EndToEnd,
    /// Bytes the incremental run overwrote before snapshotting.
    pub changed_bytes: u64,
    /// Where the restored image first differs from the image; `None` when they are identical.
    pub difference: Option<String>,
}

/// Writes an image of `size` bytes of `mix` in `dir`, then times its snapshot into a fresh store
/// there, an incremental snapshot after a few percent of it changed, and the restore of that
/// snapshot, which is compared byte for byte with the image (a difference is in
/// [`Runs::difference`]; failing to read either file is an error).
pub(super) fn run_all(
    size: u64,
    mix: ContentMix,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<Runs> {
    let image = dir.join("disk.img");
    progress.message(&format!(
        "bench: writing a {} MiB test image in {}",
        size >> 20,
        dir.display()
    ));
    let content = write_image(&image, size, mix, |_| 1)?;

    let (store, access) = bench_store(dir)?;
    let snap_opts = SnapshotOptions {
        source: image.clone(),
        volume: Some("bench".into()),
        ..SnapshotOptions::default()
    };
    let (first, first_cpu) = with_cpu(|| store.snapshot(&access, &snap_opts, progress))?;
    let changed_bytes = change_image(&image, size)?;
    let (second, second_cpu) = with_cpu(|| store.snapshot(&access, &snap_opts, progress))?;

    let out = dir.join("restored.img");
    let (restored, restore_cpu) =
        with_cpu(|| store.restore(&access, &second.id.to_string(), &out, progress))?;
    progress.message("bench: comparing the restored image with the test image");
    let difference = first_difference(&image, &out)?;

    Ok(Runs {
        image: content,
        snapshot: from_snapshot(&first, first_cpu),
        incremental: from_snapshot(&second, second_cpu),
        restore: end_to_end(
            restored.size,
            second.size - second.bytes_hole,
            (restored.seconds, restore_cpu),
            restored.bytes_written,
            0,
        ),
        changed_bytes,
        difference,
    })
}

/// A fresh store in `dir` with one account, `bench`, whose identity is in `dir` too.
fn bench_store(dir: &Path) -> Result<(Store, Access)> {
    let identity = dir.join("bench.key");
    let (store, _) = Store::init(
        &dir.join("store"),
        &InitOptions {
            account: "bench".into(),
            identity: Some(identity.clone()),
            // The trust state of this throwaway store stays in `dir` too.
            config_home: Some(dir.join("config")),
            ..InitOptions::default()
        },
    )?;
    let access = store.access(Some("bench"), Some(&identity))?;
    Ok((store, access))
}

/// Changes about 2% of the image at `path` (of `size` bytes): new random data in 64 KiB pieces
/// spread over it, fsynced. Returns the bytes written.
fn change_image(path: &Path, size: u64) -> Result<u64> {
    let piece = 64 << 10;
    let pieces = (size / 50 / piece).max(1);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(StoreError::io("cannot open", path))?;
    let mut buf = vec![0u8; piece as usize];
    let mut rng = Rng::new(99);
    for i in 0..pieces {
        fill_random(1000 + i, &mut buf);
        let slots = (size / piece).max(1);
        let off = (rng.next() % slots) * piece;
        let n = piece.min(size - off) as usize;
        f.write_all_at(&buf[..n], off)
            .map_err(StoreError::io("cannot write", path))?;
    }
    f.sync_all().map_err(StoreError::io("cannot sync", path))?;
    Ok(pieces * piece)
}

/// Runs `f`; returns its result and the CPU time the process used meanwhile.
fn with_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let cpu = cpu_seconds();
    let t = f()?;
    Ok((t, cpu_seconds() - cpu))
}

/// CPU time this process has used so far, all threads, user and system, in seconds.
fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn end_to_end(
    size: u64,
    data_bytes: u64,
    (seconds, cpu_seconds): (f64, f64),
    new: u64,
    stored: u64,
) -> EndToEnd {
    let seconds = seconds.max(1e-9);
    EndToEnd {
        cpu_seconds,
        cores_busy: cpu_seconds / seconds,
        size,
        data_bytes,
        seconds,
        bytes_per_sec: size as f64 / seconds,
        data_bytes_per_sec: data_bytes as f64 / seconds,
        bytes_new: new,
        bytes_stored: stored,
    }
}

fn from_snapshot(r: &SnapshotReport, cpu: f64) -> EndToEnd {
    end_to_end(
        r.size,
        r.size - r.bytes_hole,
        (r.seconds, cpu),
        r.bytes_new,
        r.bytes_stored,
    )
}

/// Compares two files byte for byte: `None` when they are identical, else where they first
/// differ (their lengths, or the first byte that differs). Failing to read either is an error.
pub fn first_difference(a: &Path, b: &Path) -> Result<Option<String>> {
    let fa = File::open(a).map_err(StoreError::io("cannot open", a))?;
    let fb = File::open(b).map_err(StoreError::io("cannot open", b))?;
    let la = fa
        .metadata()
        .map_err(StoreError::io("cannot stat", a))?
        .len();
    let lb = fb
        .metadata()
        .map_err(StoreError::io("cannot stat", b))?
        .len();
    if la != lb {
        return Ok(Some(format!(
            "{} has {la} bytes, {} has {lb}",
            a.display(),
            b.display()
        )));
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0;
    while off < la {
        let n = (la - off).min(1 << 20) as usize;
        fa.read_exact_at(&mut ba[..n], off)
            .map_err(StoreError::io("cannot read", a))?;
        fb.read_exact_at(&mut bb[..n], off)
            .map_err(StoreError::io("cannot read", b))?;
        if ba[..n] != bb[..n] {
            let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y);
            return Ok(Some(format!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                off + i.unwrap_or(0) as u64
            )));
        }
        off += n as u64;
    }
    Ok(None)
}

/// A directory removed (with everything in it) when dropped, also on errors.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(parent: &Path) -> Result<Self> {
        let path = parent.join(format!("blocksnap-bench-{}", fsutil::random_hex(6)));
        fs::create_dir(&path).map_err(|e| {
            StoreError::Other(format!(
                "cannot create the benchmark's temporary directory {}: {e}; set TMPDIR to a \
                 writable directory",
                path.display()
            ))
        })?;
        crate::cancel::register(crate::cancel::Kind::TempDir, &path);
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
