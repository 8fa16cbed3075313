//! Durable file operations: every object is written whole to a temporary name, fsynced, renamed
//! into place, and its directory fsynced, so a crash leaves either the old state or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// Prefix of temporary files; anything starting with it is garbage from an interrupted write.
pub const TMP_PREFIX: &str = ".tmp-";

/// A random hex string of `n` bytes.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the OS random source is available");
    hex::encode(b)
}

/// Random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b
}

/// A temporary path beside `path`, in the same directory (so rename is atomic).
pub fn tmp_path_for(path: &Path) -> PathBuf {
    tmp_path_in(path.parent().unwrap_or(Path::new(".")))
}

/// A new temporary path in `dir`. It is registered with [`crate::cancel`], so that a process
/// that must exit without unwinding can remove the file if it still exists.
pub fn tmp_path_in(dir: &Path) -> PathBuf {
    let path = dir.join(format!("{TMP_PREFIX}{}", random_hex(8)));
    crate::cancel::register(crate::cancel::Kind::Temp, &path);
    path
}

/// fsyncs a directory, so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("cannot sync directory", dir))
}

/// Writes `bytes` to `path` atomically and durably. `mode` sets the permissions (Unix).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    // A bare file name's parent is "": the current directory.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(StoreError::io("cannot create directory", dir))?;
    let tmp = tmp_path_for(path);
    let result = (|| {
        let mut f = create_new(&tmp, mode)?;
        f.write_all(bytes)
            .map_err(StoreError::io("cannot write", &tmp))?;
        f.sync_all().map_err(StoreError::io("cannot sync", &tmp))?;
        fs::rename(&tmp, path).map_err(StoreError::io("cannot rename into place", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file with `mode` (fails if it exists).
pub fn create_new(path: &Path, mode: u32) -> Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, mode);
    o.open(path).map_err(StoreError::io("cannot create", path))
}

/// Creates `dir` and its missing parents with mode 0700 (a user's cache of a store: the index
/// names every chunk the user stored).
pub fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(StoreError::io("cannot read", path))
}

/// The current time in RFC 3339, UTC, to the millisecond.
pub fn now_rfc3339() -> String {
    rfc3339(jiff::Timestamp::now())
}

/// A time in RFC 3339, UTC, to the millisecond (sortable as text).
pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}
