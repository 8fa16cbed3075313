//! Restore targets: what a restore may write to, checked before the first byte is written.
//! Only a new file, or with `--force` an existing regular file or a block device (opened
//! exclusively, its size compared with the snapshot's); never a character device, FIFO, socket
//! or directory, and never a new name under `/dev`.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::repo::Store;
use blocksnap_manifest::SnapshotDoc;
use serde::Serialize;

/// Options of `snapshot restore`, and of each device of `image rebuild`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Replace an existing regular file, or write over a block device's content. Without it
    /// only a new file is written.
    pub force: bool,
    /// The format of the image written [default: raw]. Never guessed from the file name.
    pub format: TargetFormat,
}

/// The format a restore writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetFormat {
    /// The disk's bytes, holes as holes of a sparse file (or zeros on a block device).
    #[default]
    Raw,
    /// A qcow2 image (made by the `imago` library) holding only the chunks with data: holes
    /// and all-zero chunks stay unallocated clusters. Files only, not block devices.
    Qcow2,
}

impl TargetFormat {
    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            TargetFormat::Raw => "raw",
            TargetFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for TargetFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "raw" => Ok(TargetFormat::Raw),
            "qcow2" => Ok(TargetFormat::Qcow2),
            other => Err(format!(
                "unknown image format '{other}': give raw or qcow2 (for any other format, export the snapshot with `blocksnap serve nbd` and convert it: `qemu-img convert -O vmdk nbd://…`)"
            )),
        }
    }
}

/// What a restore writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A regular file: written beside its place and renamed into it.
    File,
    /// A block device, written in place.
    BlockDevice,
}

/// A restore's target, checked before the first byte is written: the path as given, what it
/// is, and for a block device the device opened exclusively.
pub(crate) struct Target {
    /// The path the user gave: every message names it.
    pub(crate) output: PathBuf,
    /// What is written: `output`, or the file or device its symbolic link points to.
    pub(crate) path: PathBuf,
    pub(crate) kind: TargetKind,
    /// The format written.
    pub(crate) format: TargetFormat,
    /// An existing regular file is replaced.
    pub(crate) replaces: bool,
    /// The block device (opened with `O_EXCL`) and its size.
    pub(crate) device: Option<(File, u64)>,
    /// The snapshot's size and data bytes (for the full-filesystem message).
    pub(crate) size: u64,
    pub(crate) data_bytes: u64,
    /// The device of the store's filesystem.
    pub(crate) store_dev: Option<u64>,
}

/// How a file type is named in messages.
pub(crate) fn kind_name(ft: fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

/// A size in words: `64.0 MiB`.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Whether an I/O error is a full filesystem (ENOSPC).
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// The mount point of the filesystem holding directory `dir`: the highest ancestor on the same
/// device.
pub(crate) fn mount_point(dir: &Path) -> PathBuf {
    let Ok(mut cur) = fs::canonicalize(dir) else {
        return dir.to_path_buf();
    };
    let Ok(dev) = fs::metadata(&cur).map(|m| m.dev()) else {
        return cur;
    };
    while let Some(up) = cur.parent() {
        if fs::metadata(up).map(|m| m.dev()).ok() != Some(dev) {
            break;
        }
        cur = up.to_path_buf();
    }
    cur
}

/// Whether an error inspecting a path means that it does not exist (ENOENT, or ENOTDIR: a
/// part of it is not a directory).
fn absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Refuses a format a snapshot cannot be written in without loss: a qcow2 image's size is in
/// whole 512-byte sectors for QEMU (it rounds a qcow2 image's size down, losing the tail).
pub(crate) fn check_format(doc: &SnapshotDoc, format: TargetFormat) -> Result<()> {
    if format == TargetFormat::Qcow2 && doc.size % 512 != 0 {
        return Err(StoreError::Usage(format!(
            "snapshot {} is {} bytes, not a whole number of 512-byte sectors: QEMU would read a qcow2 image of it {} bytes short (it rounds a qcow2 image's size down to a sector); nothing was written. Restore it raw",
            doc.id,
            doc.size,
            doc.size % 512
        )));
    }
    Ok(())
}

/// Whether `path` (absolute) is in `/dev` (but not `/dev/shm`, a place for files).
pub(crate) fn in_dev(path: &Path) -> bool {
    path.starts_with("/dev") && !path.starts_with("/dev/shm")
}

impl Target {
    /// An I/O error on the target, naming the user's path (never the temporary file's); a full
    /// filesystem names that filesystem and what frees space on it.
    pub(crate) fn fail(&self, what: &'static str, e: std::io::Error) -> StoreError {
        if is_full(&e) && self.kind == TargetKind::File {
            let dir = parent_dir(&self.path);
            let mnt = mount_point(dir);
            let mnt = mnt.display();
            let same_fs = self.store_dev.is_some()
                && fs::metadata(dir).map(|m| m.dev()).ok() == self.store_dev;
            return StoreError::Other(format!(
                "cannot restore to {}: the filesystem mounted at {mnt} is full (the image needs room for {} of data, in a sparse file of {}); the partial image was removed. Free space on {mnt} or restore to another filesystem; {}",
                self.output.display(),
                human(self.data_bytes),
                human(self.size),
                if same_fs {
                    "the store is on that filesystem too: `blocksnap prune` reclaims what deleted snapshots held"
                } else {
                    "`blocksnap prune` frees nothing there (the store is on another filesystem)"
                }
            ));
        }
        StoreError::Io {
            what,
            path: self.output.clone(),
            source: e,
        }
    }

    /// How it is described in sentences: `/dev/loop3` or `out.img (a symbolic link to …)`.
    pub(crate) fn shown(&self) -> String {
        if self.path == self.output {
            self.output.display().to_string()
        } else {
            format!(
                "{} (a symbolic link to {})",
                self.output.display(),
                self.path.display()
            )
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Renames `from` to `to` unless `to` exists (`RENAME_NOREPLACE`; where the filesystem lacks
/// it, a hard link and an unlink, which fail the same way).
pub(crate) fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

impl Store {
    /// Checks where a snapshot of `doc`'s size may be restored, before anything is written or
    /// locked. The rules:
    ///
    /// - A path that does not exist becomes a new regular file, except under `/dev` (but
    ///   `/dev/shm`): a mistyped device name must not become a file in memory.
    /// - An existing regular file is replaced only with `force`.
    /// - A block device is written only with `force` (it overwrites the device's content); it
    ///   is opened exclusively (a mounted or otherwise claimed device is refused), and must be
    ///   at least the snapshot's size (a larger one keeps its tail as it was).
    /// - Anything else (directory, character device, FIFO, socket) is refused, whatever `force`.
    /// - A symbolic link is followed: the rules apply to what it points to (a link to a regular
    ///   file replaces that file and keeps the link); a dangling link is refused.
    /// - Nothing inside the store is written.
    pub(crate) fn plan_target(
        &self,
        output: &Path,
        doc: &SnapshotDoc,
        opts: &RestoreOptions,
    ) -> Result<Target> {
        let shown = output.display();
        check_format(doc, opts.format)?;
        let mut target = self.new_file_target(output, doc, opts.format);
        if output.as_os_str().is_empty() || output.as_os_str().as_encoded_bytes().ends_with(b"/") {
            return Err(StoreError::Usage(format!(
                "'{shown}' is not a file name; give the file (or block device) to restore into"
            )));
        }
        let meta = match fs::symlink_metadata(output) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io("cannot inspect", output)(e)),
            Ok(m) if m.file_type().is_symlink() => {
                let to = fs::read_link(output).unwrap_or_default();
                match fs::metadata(output) {
                    Ok(m) => {
                        target.path = fs::canonicalize(output)
                            .map_err(StoreError::io("cannot resolve", output))?;
                        Some(m)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::Usage(format!(
                            "{shown} is a symbolic link to {}, which does not exist; blocksnap does not write through a dangling link: give the path itself",
                            to.display()
                        )));
                    }
                    Err(e) => return Err(StoreError::io("cannot inspect", output)(e)),
                }
            }
            Ok(m) => Some(m),
        };
        let Some(meta) = meta else {
            // A new file.
            let abs = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
            let dir = parent_dir(output);
            let real_dir = fs::canonicalize(dir);
            if in_dev(&abs) || real_dir.as_deref().is_ok_and(in_dev) {
                return Err(StoreError::Usage(format!(
                    "{shown} does not exist, and blocksnap does not create files under /dev (a mistyped device name would become a file in memory); check the device's name (`lsblk`), or give a path outside /dev"
                )));
            }
            match real_dir {
                Ok(d) if d.is_dir() => {}
                Ok(_) => {
                    return Err(StoreError::Usage(format!(
                        "cannot restore to {shown}: {} is not a directory",
                        dir.display()
                    )));
                }
                Err(_) => {
                    return Err(StoreError::Usage(format!(
                        "cannot restore to {shown}: the directory {} does not exist; create it first",
                        dir.display()
                    )));
                }
            }
            self.refuse_inside_store(&target)?;
            return Ok(target);
        };
        let ft = meta.file_type();
        if ft.is_file() {
            if !opts.force {
                return Err(StoreError::Usage(format!(
                    "{} exists ({}, {}); restoring would replace it: pass --force to replace it, or give a new file name",
                    target.shown(),
                    kind_name(ft),
                    human(meta.len())
                )));
            }
            target.replaces = true;
            self.refuse_inside_store(&target)?;
            return Ok(target);
        }
        if !ft.is_block_device() {
            return Err(StoreError::Usage(format!(
                "{} is {}: blocksnap restores only into a regular file (a new one, or an existing one with --force) or onto a block device; nothing was written",
                target.shown(),
                kind_name(ft)
            )));
        }
        target.kind = TargetKind::BlockDevice;
        if opts.format == TargetFormat::Qcow2 {
            return Err(StoreError::Usage(format!(
                "{} is a block device: blocksnap writes qcow2 images only into files; nothing was written. Restore raw onto the device (without --format qcow2), or give a file name for the qcow2 image",
                target.shown()
            )));
        }
        if !opts.force {
            return Err(StoreError::Usage(format!(
                "{} is a block device: restoring overwrites its content. Pass --force to write the snapshot onto it",
                target.shown()
            )));
        }
        // O_EXCL on a block device: the kernel refuses (EBUSY) a device that is mounted, or
        // claimed by LVM, md, swap or another exclusive opener.
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
            .open(&target.path)
            .map_err(|e| {
                if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                    StoreError::Other(format!(
                        "{} is in use: it (or one of its partitions) is mounted, or held by LVM, md RAID, swap or another program; nothing was written. Unmount or release it first (`findmnt`, `lsblk {}`)",
                        target.shown(),
                        target.path.display()
                    ))
                } else {
                    StoreError::io("cannot open", output)(e)
                }
            })?;
        use std::io::Seek;
        let dev_size = (&file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(StoreError::io("cannot size block device", output))?;
        if dev_size < doc.size {
            return Err(StoreError::Usage(format!(
                "{} is too small: {} ({dev_size} bytes), the snapshot {} is {} ({} bytes); nothing was written. Restore onto a device of at least that size, or into a file",
                target.shown(),
                human(dev_size),
                doc.id,
                human(doc.size),
                doc.size
            )));
        }
        target.device = Some((file, dev_size));
        Ok(target)
    }

    /// A new regular file at `output` for a snapshot of `doc`, written in `format`, as yet
    /// unchecked.
    pub(crate) fn new_file_target(
        &self,
        output: &Path,
        doc: &SnapshotDoc,
        format: TargetFormat,
    ) -> Target {
        Target {
            output: output.to_path_buf(),
            path: output.to_path_buf(),
            kind: TargetKind::File,
            format,
            replaces: false,
            device: None,
            size: doc.size,
            data_bytes: doc.data_bytes,
            store_dev: self
                .local_root()
                .and_then(|r| fs::metadata(r).ok())
                .map(|m| m.dev()),
        }
    }

    /// Checks the directory `image rebuild` writes into, before anything is created. An
    /// existing directory is used as it is (each output in it is then checked by
    /// [`Store::plan_target`]). One that does not exist is created later, and only if the
    /// path it resolves to (symbolic links in its existing part followed) is neither under
    /// `/dev` (but `/dev/shm`) nor inside the store. Returns the directory that will be
    /// created first (the highest missing one), or `None` when `dir` exists.
    pub(crate) fn plan_outdir(&self, dir: &Path) -> Result<Option<PathBuf>> {
        let shown = dir.display();
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => return Ok(None),
            Ok(m) => {
                return Err(StoreError::Usage(format!(
                    "{shown} is {}, not a directory; give a directory for the image's devices",
                    kind_name(m.file_type())
                )));
            }
            Err(e) if absent(&e) => {}
            Err(e) => return Err(StoreError::io("cannot inspect", dir)(e)),
        }
        // The nearest ancestor that exists, and the missing parts below it.
        let abs = std::path::absolute(dir).map_err(StoreError::io("cannot resolve", dir))?;
        let mut base = abs.as_path();
        let mut missing = Vec::new();
        loop {
            match fs::symlink_metadata(base) {
                Ok(m) if m.file_type().is_symlink() && fs::metadata(base).is_err() => {
                    return Err(StoreError::Usage(format!(
                        "cannot create {shown}: {} is a symbolic link to {}, which does not exist; blocksnap does not create directories through a dangling link",
                        base.display(),
                        fs::read_link(base).unwrap_or_default().display()
                    )));
                }
                Ok(_) => break,
                Err(e) if absent(&e) => {}
                Err(e) => return Err(StoreError::io("cannot inspect", base)(e)),
            }
            let (Some(up), Some(name)) = (base.parent(), base.file_name()) else {
                break;
            };
            missing.push(name.to_os_string());
            base = up;
        }
        let real_base = fs::canonicalize(base).map_err(StoreError::io("cannot resolve", base))?;
        if !real_base.is_dir() {
            return Err(StoreError::Usage(format!(
                "cannot create {shown}: {} is not a directory",
                base.display()
            )));
        }
        // The missing parts hold no links: `..` among them goes up lexically, as
        // `create_dir_all` will.
        let mut resolved = real_base.clone();
        for part in missing.iter().rev() {
            if part == ".." {
                resolved.pop();
            } else if part != "." {
                resolved.push(part);
            }
        }
        let via = if resolved == abs {
            String::new()
        } else {
            format!(" (it resolves to {})", resolved.display())
        };
        if in_dev(&resolved) {
            return Err(StoreError::Usage(format!(
                "{shown} does not exist{via}, and blocksnap does not create directories under /dev (a mistyped name would become files in memory); nothing was created. Give a directory outside /dev"
            )));
        }
        if let Some(root) = self.local_root().and_then(|r| fs::canonicalize(r).ok()) {
            if resolved.starts_with(&root) {
                return Err(StoreError::Usage(format!(
                    "{shown}{via} is inside the store ({}); nothing was created. Rebuild outside it",
                    root.display()
                )));
            }
        }
        let first = missing.last().map_or(abs.clone(), |name| base.join(name));
        Ok(Some(first))
    }

    /// Refuses a target inside the store's directory.
    fn refuse_inside_store(&self, target: &Target) -> Result<()> {
        let Some(root) = self.local_root() else {
            return Ok(());
        };
        let dir = fs::canonicalize(parent_dir(&target.path));
        let root = fs::canonicalize(root);
        if let (Ok(dir), Ok(root)) = (dir, root) {
            if dir.starts_with(&root) {
                return Err(StoreError::Usage(format!(
                    "{} is inside the store ({}); restore outside it",
                    target.output.display(),
                    root.display()
                )));
            }
        }
        Ok(())
    }
}
