//! A store in a local directory (or any mounted filesystem).
//!
//! An object is the file at its key under the root. Every write goes to a temporary file
//! (`.tmp-…`, beside its destination so the rename is atomic), is fsynced, renamed into place
//! without replacing (`renameat2(RENAME_NOREPLACE)`, or `link` + `unlink` where the filesystem
//! lacks it), and its directory fsynced — a directory created for it fsynced in its parent
//! too. So a crash leaves the old state or the new one, plus at worst a temporary file.
//! A compare-and-swap holds an exclusive `flock` on `.cas.lock` in the root while it reads,
//! compares and renames: local writers on one machine (or an NFS mount with working locks)
//! never lose an update.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{
    Backend, BackendError, ObjectMeta, Result, Staged, Version, content_version, validate_key,
    validate_prefix,
};

/// Prefix of the backend's temporary files.
pub const TMP_PREFIX: &str = ".tmp-";

/// Called with the path of each temporary file the backend creates (see
/// [`LocalBackend::with_temp_hook`]).
pub type TempHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// A directory holding a store's objects.
#[derive(Clone)]
pub struct LocalBackend {
    root: PathBuf,
    location: String,
    mode: u32,
    dir_mode: u32,
    temp_hook: Option<TempHook>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("root", &self.root)
            .field("mode", &self.mode)
            .field("dir_mode", &self.dir_mode)
            .finish()
    }
}

impl LocalBackend {
    /// The backend of the directory `root` (which need not exist yet: the first write creates
    /// it). Objects are created with mode 0640 and directories with 0750 (narrowed further by
    /// the umask): never readable by other users than the owner and the group, in any store
    /// (see [`LocalBackend::with_mode`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        LocalBackend {
            location: root.display().to_string(),
            root,
            mode: 0o640,
            dir_mode: 0o750,
            temp_hook: None,
        }
    }

    /// The same backend telling `hook` the path of every temporary file it creates, before
    /// anything is written to it: a process that must exit without unwinding (a second
    /// Ctrl-C) can then remove those still there.
    pub fn with_temp_hook(mut self, hook: TempHook) -> Self {
        self.temp_hook = Some(hook);
        self
    }

    /// The same backend creating objects with permission bits `mode` (e.g. 0600 for a store
    /// whose objects only its owner may read).
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// The same backend creating directories with permission bits `mode` (e.g. 0700).
    pub fn with_dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = mode;
        self
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn io(&self, op: &'static str, key: &str) -> impl FnOnce(std::io::Error) -> BackendError {
        let location = self.location.clone();
        let key = key.to_string();
        move |e| BackendError::from_io(op, &key, &location, e)
    }

    /// Creates `dir` and any missing parents, fsyncing each new one in its parent.
    fn ensure_dir(&self, dir: &Path, key: &str) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.ensure_dir(parent, key)?;
        }
        let mut builder = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, self.dir_mode);
        match builder.create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(self.io("create", key)(e)),
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(self.io("create", key))?;
        }
        Ok(())
    }

    /// Opens the object `key` for reading: only a regular file is an object. A FIFO, a device
    /// or a directory someone put in the store is refused without blocking (the file is opened
    /// non-blocking, then checked) and without reading it (a link to `/dev/zero` never ends).
    fn open_file(&self, key: &str) -> Result<(File, u64)> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(self.path(key)?)
            .map_err(self.io("read", key))?;
        let meta = f.metadata().map_err(self.io("read", key))?;
        if !meta.is_file() {
            return Err(self.io("read", key)(std::io::Error::other(
                "not a regular file, so not a store object (remove it from the store)",
            )));
        }
        Ok((f, meta.len()))
    }

    /// Exactly `len` bytes from `offset` of the open object `f` of `size` bytes.
    fn read_exact_at(
        &self,
        f: &File,
        key: &str,
        size: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let range = || BackendError::OutOfRange {
            key: key.into(),
            offset,
            len,
            size,
        };
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(range());
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                // Shrunk since: objects never do, so the file was damaged by hand.
                range()
            } else {
                self.io("read", key)(e)
            }
        })?;
        Ok(buf)
    }

    /// A new temporary file in `dir`.
    fn temp_in(&self, dir: &Path, key: &str) -> Result<(File, PathBuf)> {
        self.ensure_dir(dir, key)?;
        loop {
            let tmp = dir.join(format!("{TMP_PREFIX}{}", random_hex(8)));
            match OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(self.mode)
                .open(&tmp)
            {
                Ok(f) => {
                    if let Some(hook) = &self.temp_hook {
                        hook(&tmp);
                    }
                    return Ok((f, tmp));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io("create", key)(e)),
            }
        }
    }

    /// Moves the synced temporary `tmp` to `key`'s path without replacing, then syncs the
    /// directory. On failure `tmp` is removed.
    fn publish(&self, tmp: &Path, key: &str) -> Result<()> {
        let dest = self.path(key)?;
        let result = (|| {
            let dir = dest.parent().unwrap_or(Path::new("."));
            self.ensure_dir(dir, key)?;
            rename_noreplace(tmp, &dest).map_err(self.io("create", key))?;
            sync_dir(dir).map_err(self.io("create", key))
        })();
        if result.is_err() {
            let _ = fs::remove_file(tmp);
        }
        result
    }

    fn write_temp(&self, dir: &Path, key: &str, data: &[u8]) -> Result<PathBuf> {
        let (mut f, tmp) = self.temp_in(dir, key)?;
        let r = f
            .write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(self.io("create", key));
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn create(&self, key: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(key)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        if dest.exists() {
            return Err(BackendError::AlreadyExists { key: key.into() });
        }
        let tmp = self.write_temp(dir, key, data)?;
        self.publish(&tmp, key)
    }

    fn stage(&self, under: &str) -> Result<Box<dyn Staged>> {
        // The temporary file is written in the folder of `under` and renamed into its own
        // folder at commit: one filesystem, so the rename is atomic.
        validate_prefix(under)?;
        let dir = match under.rfind('/') {
            Some(i) => self.root.join(&under[..i]),
            None => self.root.clone(),
        };
        let (file, tmp) = self.temp_in(&dir, under)?;
        Ok(Box::new(LocalStaged {
            backend: self.clone(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            len: 0,
        }))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let (f, size) = self.open_file(key)?;
        self.read_exact_at(&f, key, size, 0, size)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (f, size) = self.open_file(key)?;
        self.read_exact_at(&f, key, size, offset, len)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match fs::metadata(self.path(key)?) {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.into(),
                size: m.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read", key)(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        // Walk from the deepest directory the prefix names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut out = Vec::new();
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        walk(&start, dir_part, prefix, &mut out).map_err(self.io("list", prefix))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    sync_dir(dir).map_err(self.io("delete", key))?;
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete", key)(e)),
        }
    }

    fn open(&self, key: &str) -> Result<Arc<dyn crate::ObjectReader>> {
        let (f, size) = self.open_file(key)?;
        Ok(Arc::new(LocalReader {
            backend: self.clone(),
            key: key.into(),
            file: f,
            size,
        }))
    }

    fn temporaries(&self) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        temps(&self.root, "", &mut out).map_err(self.io("list", ""))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn remove_temporary(&self, name: &str) -> Result<()> {
        let file = Path::new(name).file_name().and_then(|n| n.to_str());
        if !file.is_some_and(|n| n.starts_with(TMP_PREFIX)) || name.contains("..") {
            return Err(BackendError::InvalidKey {
                key: name.into(),
                reason: "it is not a temporary file of this backend",
            });
        }
        let path = self.root.join(name);
        let r = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete", name)(e)),
        }
    }

    fn get_versioned_bounded(&self, key: &str, max: u64) -> Result<(Vec<u8>, Version)> {
        // The size of the file opened, then at most that many bytes of it: one version.
        let reader = self.open(key)?;
        let size = reader.size();
        if size > max {
            return Err(BackendError::TooLarge {
                key: key.into(),
                size,
                max,
            });
        }
        let data = reader.read_at(0, size)?;
        let v = content_version(&data);
        Ok((data, v))
    }

    fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, Version)> {
        let data = self.get(key)?;
        let v = content_version(&data);
        Ok((data, v))
    }

    fn replace(&self, key: &str, data: &[u8], expected: Option<&Version>) -> Result<Version> {
        let dest = self.path(key)?;
        let dir = dest.parent().unwrap_or(Path::new(".")).to_path_buf();
        let _guard = CasLock::take(&self.root).map_err(self.io("replace", key))?;
        let current = match fs::read(&dest) {
            Ok(d) => Some(content_version(&d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.io("replace", key)(e)),
        };
        match (expected, &current) {
            (None, None) => {}
            (None, Some(_)) => return Err(BackendError::AlreadyExists { key: key.into() }),
            (Some(want), Some(have)) if want == have => {}
            (Some(_), _) => return Err(BackendError::Conflict { key: key.into() }),
        }
        let tmp = self.write_temp(&dir, key, data)?;
        let r = if current.is_none() {
            rename_noreplace(&tmp, &dest)
        } else {
            fs::rename(&tmp, &dest)
        };
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(self.io("replace", key)(e));
        }
        sync_dir(&dir).map_err(self.io("replace", key))?;
        Ok(content_version(data))
    }
}

/// An open object: the file, kept open for positioned reads.
struct LocalReader {
    backend: LocalBackend,
    key: String,
    file: File,
    size: u64,
}

impl crate::ObjectReader for LocalReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.backend
            .read_exact_at(&self.file, &self.key, self.size, offset, len)
    }
}

/// A staged object: a temporary file in the root.
struct LocalStaged {
    backend: LocalBackend,
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    len: u64,
}

impl Write for LocalStaged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self
            .file
            .as_mut()
            .expect("present until commit")
            .write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("present until commit").flush()
    }
}

impl Staged for LocalStaged {
    fn commit(mut self: Box<Self>, key: &str) -> Result<()> {
        let b = self.backend.clone();
        validate_key(key)?;
        let file = self.file.take().expect("present until commit");
        let file = file
            .into_inner()
            .map_err(|e| b.io("create", key)(e.into_error()))?;
        file.sync_all().map_err(b.io("create", key))?;
        drop(file);
        let tmp = std::mem::take(&mut self.tmp);
        b.publish(&tmp, key)
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for LocalStaged {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Lists regular files under `dir` (whose key is `dir_key`) whose key starts with `prefix`.
fn walk(dir: &Path, dir_key: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc_enotdir()) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue; // not a key: a name that is not UTF-8
        };
        if name.starts_with('.') {
            continue; // temporaries and the backend's own files
        }
        let key = if dir_key.is_empty() {
            name.clone()
        } else {
            format!("{dir_key}/{name}")
        };
        let ft = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if ft.is_dir() {
            // Descend only where keys below can still match the prefix.
            let below = format!("{key}/");
            if below.starts_with(prefix) || prefix.starts_with(&below) {
                walk(&entry.path(), &key, prefix, out)?;
            }
        } else if ft.is_file() && key.starts_with(prefix) && crate::validate_key(&key).is_ok() {
            match entry.metadata() {
                Ok(m) => out.push(ObjectMeta { key, size: m.len() }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The `.tmp-…` files and folders under `dir` (whose path in the store is `rel`).
fn temps(dir: &Path, rel: &str, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if name.starts_with(TMP_PREFIX) {
            out.push(ObjectMeta {
                key: path,
                size: if meta.is_file() { meta.len() } else { 0 },
            });
        } else if meta.is_dir() && !name.starts_with('.') {
            temps(&entry.path(), &path, out)?;
        }
    }
    Ok(())
}

fn libc_enotdir() -> i32 {
    rustix::io::Errno::NOTDIR.raw_os_error()
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            // The filesystem cannot rename without replacing: a hard link can't replace either.
            fs::hard_link(from, to)?;
            let _ = fs::remove_file(from);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// fsyncs a directory, so that a rename or unlink in it is durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the OS random source is available");
    hex::encode(b)
}

/// The exclusive lock of a local compare-and-swap.
struct CasLock(#[allow(dead_code)] File);

impl CasLock {
    fn take(root: &Path) -> std::io::Result<CasLock> {
        fs::create_dir_all(root)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o640)
            .open(root.join(".cas.lock"))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(CasLock(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_conformance_suite() {
        let dirs = std::sync::Mutex::new(Vec::new());
        crate::conformance::run(&|| {
            let d = tempfile::tempdir().unwrap();
            let b = LocalBackend::new(d.path().join("store"));
            dirs.lock().unwrap().push(d);
            std::sync::Arc::new(b)
        });
    }

    #[test]
    fn temporaries_are_never_listed_and_staged_drops_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(d.path());
        b.create("packs/ab/x", b"1").unwrap();
        fs::write(d.path().join("packs/ab/.tmp-dead"), b"half").unwrap();
        assert_eq!(b.list("").unwrap().len(), 1);
        let mut s = b.stage("").unwrap();
        s.write_all(b"abc").unwrap();
        drop(s);
        let left: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(TMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let t = b.temporaries().unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key, "packs/ab/.tmp-dead");
        assert_eq!(t[0].size, 4);
        assert!(b.remove_temporary("packs/ab/x").is_err());
        b.remove_temporary("packs/ab/.tmp-dead").unwrap();
        assert!(b.temporaries().unwrap().is_empty());
        assert_eq!(b.list("").unwrap().len(), 1);
    }

    #[test]
    fn objects_and_directories_are_not_world_readable_by_default() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(d.path().join("store"));
        b.create("packs/ab/abcd", b"x").unwrap();
        b.replace("heads/v.json", b"{}", None).unwrap();
        let mut staged = b.stage("packs/").unwrap();
        staged.write_all(b"y").unwrap();
        staged.commit("packs/cd/cdef").unwrap();
        let mode = |p: &str| {
            fs::metadata(d.path().join("store").join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        for f in ["packs/ab/abcd", "heads/v.json", "packs/cd/cdef"] {
            assert_eq!(mode(f) & 0o007, 0, "{f}: {:o}", mode(f));
            assert_eq!(mode(f) & !0o640, 0, "{f}: {:o}", mode(f));
        }
        for dir in ["", "packs", "packs/ab", "heads"] {
            assert_eq!(mode(dir) & 0o007, 0, "{dir}: {:o}", mode(dir));
        }
    }

    #[test]
    fn objects_get_the_mode_asked_for() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(d.path()).with_mode(0o600);
        b.create("k", b"secret").unwrap();
        let mode = fs::metadata(d.path().join("k"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
