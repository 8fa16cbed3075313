//! Reading a volume: only its allocated data (`SEEK_DATA`/`SEEK_HOLE`), in large positioned
//! reads straight into batch buffers, cut into chunks where the bytes lie, on a reader thread.
//! Zero runs and all-zero chunks become holes.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use blocksnap_chunker::{Chunker, ZERO_BLOCK};
use crossbeam_channel::Sender;

use crate::error::{Result, StoreError};
pub(crate) use crate::snapshot::split::read_sizes;
use crate::snapshot::split::{ReadBatch, Splitter, ZERO_RUN_MIN};

/// An open volume.
pub(crate) struct Source {
    file: File,
    path: PathBuf,
    /// The volume's size.
    pub size: u64,
    sparse_aware: bool,
    /// The volume's name (set by the store when it resolves the source).
    pub volume: String,
    /// Where the source is, as a snapshot records it.
    pub id: SourceId,
    /// Size and times when opened, to tell whether it changed while being read.
    before: Stamp,
}

/// Where a source is: what a snapshot records, and what a volume's next snapshot is compared
/// with (two different disks must never share one volume's chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SourceId {
    /// The absolute path: a regular file's canonical path; a block device's path as given,
    /// made absolute with its directory resolved (`/dev/vg0/web`, `/dev/disk/by-id/…`: the
    /// names that stay when `/dev/dm-N` and `/dev/sdX` change at the next boot).
    pub path: String,
    /// This host's name.
    pub host: String,
}

/// What may change while a source is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// What the source is, in a message: `a FIFO (named pipe)`.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Filesystems whose files are kernel interfaces, not disks (`f_type` magic numbers): proc,
/// sysfs, debugfs, tracefs, securityfs, cgroup, cgroup2, configfs, efivarfs, pstore, bpf.
const PSEUDO_FS: [(u64, &str); 11] = [
    (0x9fa0, "/proc"),
    (0x6265_6572, "/sys"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6265_6570, "configfs"),
    (0xde5e_81e4, "efivarfs"),
    (0x6165_676c, "pstore"),
    (0xcafe_4a11, "bpf"),
];

/// Refuses what is not a disk: anything but a regular file or a block device, and files of
/// kernel pseudo-filesystems. Never opens `path` (opening a FIFO blocks).
fn refuse_non_disk(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let ft = meta.file_type();
    let shown = path.display();
    if !ft.is_file() && !ft.is_block_device() {
        let hint = if ft.is_dir() {
            "give the disk image file inside it, or the block device the filesystem is on"
        } else if ft.is_fifo() || ft.is_socket() {
            "a snapshot reads a disk at any offset, and a stream cannot be: write it to a file first, then snapshot that"
        } else {
            "a snapshot reads disk image files and block devices"
        };
        return Err(StoreError::Usage(format!(
            "{shown} is {}, not a regular file (a disk image) or a block device; {hint}",
            kind_of(ft)
        )));
    }
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let pseudo = if real.starts_with("/proc") {
        Some("/proc")
    } else if real.starts_with("/sys") {
        Some("/sys")
    } else {
        let magic = rustix::fs::statfs(path).map(|st| st.f_type as u64 & 0xffff_ffff);
        PSEUDO_FS
            .iter()
            .find(|(m, _)| magic.as_ref().is_ok_and(|x| x == m))
            .map(|(_, name)| *name)
    };
    if let Some(fs_name) = pseudo {
        return Err(StoreError::Usage(format!(
            "{shown} is a file of {fs_name}, a kernel interface, not a disk; snapshot a disk image file or a block device"
        )));
    }
    Ok(())
}

impl Source {
    /// Opens a disk image or block device, refusing (before opening it) anything that is not
    /// one.
    pub fn open(path: &Path) -> Result<Source> {
        let not_found =
            || StoreError::Usage(format!("no such disk image or volume: {}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_found(),
            _ => StoreError::Io {
                what: "cannot inspect",
                path: path.into(),
                source: e,
            },
        })?;
        refuse_non_disk(path, &meta)?;
        // O_NONBLOCK: should a FIFO take the file's place after the check, the open still
        // returns (and the check below refuses it). Reads of files and devices ignore it.
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => not_found(),
                _ => StoreError::Io {
                    what: "cannot open",
                    path: path.into(),
                    source: e,
                },
            })?;
        let opened = file
            .metadata()
            .map_err(StoreError::io("cannot stat", path))?;
        refuse_non_disk(path, &opened)?;
        let ft = opened.file_type();
        let id_path = if ft.is_block_device() {
            // Keep the device's name (a stable symlink stays itself); resolve its directory.
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            match (abs.parent(), abs.file_name()) {
                (Some(dir), Some(name)) => std::fs::canonicalize(dir)
                    .map(|d| d.join(name))
                    .unwrap_or(abs),
                _ => abs,
            }
        } else {
            std::fs::canonicalize(path).map_err(StoreError::io("cannot resolve", path))?
        };
        let mut source = Source {
            file,
            path: path.into(),
            size: 0,
            sparse_aware: ft.is_file(),
            volume: String::new(),
            id: SourceId {
                path: id_path.to_string_lossy().into_owned(),
                host: crate::repo::host::host_name(),
            },
            before: Stamp {
                size: 0,
                mtime: (0, 0),
                ctime: (0, 0),
            },
        };
        source.before = source.stamp()?;
        source.size = source.before.size;
        Ok(source)
    }

    /// The size and times now. A block device's times say nothing of its content: only its
    /// size counts.
    fn stamp(&self) -> Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = self
            .file
            .metadata()
            .map_err(StoreError::io("cannot stat", &self.path))?;
        if meta.file_type().is_block_device() {
            use std::io::Seek;
            let size = (&self.file)
                .seek(std::io::SeekFrom::End(0))
                .map_err(StoreError::io("cannot size block device", &self.path))?;
            return Ok(Stamp {
                size,
                mtime: (0, 0),
                ctime: (0, 0),
            });
        }
        Ok(Stamp {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// After reading: fails if the size changed (the image was resized while being read: what
    /// was read is neither the old disk nor the new one); returns whether it was written (its
    /// modification or change time moved).
    pub fn changed_while_read(&self) -> Result<bool> {
        let now = self.stamp()?;
        if now.size != self.before.size {
            return Err(self.resized(now.size));
        }
        Ok(now != self.before)
    }

    /// The error for a source whose size went from the one read at the start to `now`: what
    /// was read is neither the old disk nor the new one.
    pub(crate) fn resized(&self, now: u64) -> StoreError {
        resized(&self.path.display().to_string(), self.before.size, now)
    }

    /// A read that failed: a source cut shorter meanwhile is said as such, anything else is
    /// the I/O error on the source.
    fn read_failed(&self, e: std::io::Error) -> StoreError {
        match self.stamp() {
            Ok(now) if now.size < self.before.size => self.resized(now.size),
            _ => StoreError::Io {
                what: "cannot read",
                path: self.path.clone(),
                source: e,
            },
        }
    }

    /// The next allocated range at or after `pos`, or none.
    fn next_data(&self, pos: u64) -> Result<Option<(u64, u64)>> {
        if pos >= self.size {
            return Ok(None);
        }
        if !self.sparse_aware {
            return Ok(Some((pos, self.size)));
        }
        use rustix::fs::{SeekFrom, seek};
        let start = match seek(&self.file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => return Ok(None),
            // The filesystem does not know SEEK_DATA: everything is data.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                return Ok(Some((pos, self.size)));
            }
            Err(e) => {
                return Err(StoreError::Io {
                    what: "cannot seek in",
                    path: self.path.clone(),
                    source: e.into(),
                });
            }
        };
        let end = match seek(&self.file, SeekFrom::Hole(start)) {
            Ok(e) => e,
            Err(_) => self.size,
        };
        Ok(Some((start.min(self.size), end.min(self.size))))
    }

    /// The bytes a read of the whole volume will read: its allocated ranges (`SEEK_DATA` /
    /// `SEEK_HOLE`) rounded out to blocks as [`Source::read_into`] reads them; the whole size
    /// where holes cannot be told (a block device). Asks the filesystem only where the ranges
    /// are, reads nothing: progress counts this, so holes are not counted as work done.
    pub fn bytes_to_read(&self) -> Result<u64> {
        let block = ZERO_BLOCK as u64;
        let (mut pos, mut total) = (0u64, 0u64);
        while pos < self.size {
            let Some((start, end)) = self.next_data(pos)? else {
                break;
            };
            let start = (start - start % block).max(pos);
            let end = end.next_multiple_of(block).min(self.size);
            total += end.saturating_sub(start);
            pos = end.max(pos + 1).min(self.size);
        }
        Ok(total)
    }

    /// Reads the whole volume and sends batches of pieces. Stops when the receiver is gone (the
    /// consumer failed) or on the first error, which it sends.
    pub fn read_into(&self, chunker: &Chunker, tx: &Sender<Result<ReadBatch>>) {
        if let Err(e) = self.read_all(chunker, tx) {
            let _ = tx.send(Err(e));
        }
    }

    fn read_all(&self, chunker: &Chunker, tx: &Sender<Result<ReadBatch>>) -> Result<()> {
        let (window, read_size) = read_sizes(chunker);
        let mut split = Splitter::new(chunker, window + chunker.min_window() + 2 * ZERO_RUN_MIN);
        // Room for a read and for the zeros before it, else the batch goes first.
        let room = read_size + ZERO_RUN_MIN;
        let mut pos = 0u64;
        while pos < self.size {
            if split.room() < room && tx.send(Ok(split.take_batch())).is_err() {
                return Ok(());
            }
            let Some((start, end)) = self.next_data(pos)? else {
                split.zeros(self.size - pos);
                break;
            };
            // Read from a block boundary: the bytes before SEEK_DATA's answer are zeros anyway.
            // Likewise to the end of a block: the Splitter is told of zeros only in whole blocks.
            let start = (start - start % ZERO_BLOCK as u64).max(pos);
            let end = end.next_multiple_of(ZERO_BLOCK as u64).min(self.size);
            split.zeros(start - pos);
            let mut cur = start;
            while cur < end {
                if split.room() < room && tx.send(Ok(split.take_batch())).is_err() {
                    return Ok(());
                }
                let n = (end - cur).min(read_size as u64) as usize;
                split.read(n, cur, |buf| {
                    self.file
                        .read_exact_at(buf, cur)
                        .map_err(|e| self.read_failed(e))
                })?;
                cur += n as u64;
                if split.batch_bytes() >= window as u64 && tx.send(Ok(split.take_batch())).is_err()
                {
                    return Ok(());
                }
            }
            pos = end.max(pos + 1).min(self.size);
        }
        let _ = tx.send(Ok(split.finish()));
        Ok(())
    }
}

/// The error for a source (`shown`) that changed size while being read, from `before` bytes to
/// `now`: nothing was committed, and it must be snapshotted while nothing resizes it.
pub(crate) fn resized(shown: &str, before: u64, now: u64) -> StoreError {
    StoreError::Other(format!(
        "{shown} {} while being read (it changed size from {before} to {now} bytes); nothing was committed. Snapshot it when it is not being resized: with the VM shut down or paused, or from an LVM or filesystem snapshot of it",
        if now < before { "shrank" } else { "grew" }
    ))
}
