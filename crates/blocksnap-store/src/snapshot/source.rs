//! Reading a volume: only its allocated data (`SEEK_DATA`/`SEEK_HOLE`), in large positioned
//! reads straight into batch buffers, cut into chunks where the bytes lie, on a reader thread.
//! Zero runs and all-zero chunks become holes.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use blocksnap_chunker::{Chunker, ZERO_BLOCK};
use blocksnap_source::{Disk, Format};
use crossbeam_channel::Sender;

use crate::error::{Result, StoreError};
pub(crate) use crate::snapshot::split::read_sizes;
use crate::snapshot::split::{ReadBatch, Splitter, ZERO_RUN_MIN};
use crate::snapshot::view::Span;

/// An open volume: a [`Disk`] (a raw file or block device, a qcow2 image, an NBD export) and
/// what tells whether it changed while being read.
pub(crate) struct Source {
    disk: Box<dyn Disk>,
    /// The local file whose size and times are watched; none for a disk on the network.
    file: Option<File>,
    path: PathBuf,
    /// The volume's (guest-visible) size.
    pub size: u64,
    /// How the disk is read.
    pub format: SourceFormat,
    /// The volume's name (set by the store when it resolves the source).
    pub volume: String,
    /// Where the source is, as a snapshot records it.
    pub id: SourceId,
    /// Size and times when opened, to tell whether it changed while being read.
    before: Stamp,
    /// The dirty bitmap asked for (`--dirty-bitmap`) and the ranges it marks, merged and in
    /// order: only those are read, the rest is taken from the parent snapshot.
    pub dirty: Option<(String, Vec<(u64, u64)>)>,
}

/// How a source's disk is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceFormat {
    /// A raw image file or a block device.
    Raw,
    /// A qcow2 image, through its backing chain.
    Qcow2,
    /// An NBD export.
    Nbd,
}

/// A raw image file (holes found with `SEEK_DATA`/`SEEK_HOLE`) or a block device (all data).
struct FileDisk {
    file: File,
    size: u64,
    sparse_aware: bool,
}

impl Disk for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn next_data(&self, pos: u64) -> std::io::Result<Option<(u64, u64)>> {
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
            Err(e) => return Err(e.into()),
        };
        if start >= self.size {
            return Ok(None);
        }
        let end = match seek(&self.file, SeekFrom::Hole(start)) {
            Ok(e) => e,
            Err(_) => self.size,
        };
        Ok(Some((start, end.min(self.size))))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
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
    /// one. Its format is `format`, or what its first bytes say (qcow2 by its magic, else raw).
    pub fn open(path: &Path, format: Option<Format>) -> Result<Source> {
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
        let format = match format {
            Some(f) => f,
            None => blocksnap_source::probe(&file).map_err(StoreError::io("cannot read", path))?,
        };
        let watched = file
            .try_clone()
            .map_err(StoreError::io("cannot open", path))?;
        let (disk, format): (Box<dyn Disk>, _) = match format {
            Format::Raw => {
                // The raw disk is the file: its size is the one watched.
                let size = stamp_of(Some(&file), SourceFormat::Raw, path)?.size;
                let sparse_aware = ft.is_file();
                let disk = FileDisk {
                    file,
                    size,
                    sparse_aware,
                };
                (Box::new(disk) as Box<dyn Disk>, SourceFormat::Raw)
            }
            Format::Qcow2 => {
                let q = blocksnap_source::qcow2::Qcow2Disk::open(path)
                    .map_err(|e| StoreError::Usage(e.to_string()))?;
                (Box::new(q) as Box<dyn Disk>, SourceFormat::Qcow2)
            }
        };
        let before = stamp_of(Some(&watched), format, path)?;
        Ok(Source {
            size: disk.size(),
            disk,
            file: Some(watched),
            path: path.into(),
            format,
            volume: String::new(),
            id: SourceId {
                path: id_path.to_string_lossy().into_owned(),
                host: crate::repo::host::host_name(),
            },
            before,
            dirty: None,
        })
    }

    /// Connects to an NBD export (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`),
    /// with the ranges of dirty bitmap `bitmap` if one is asked for.
    pub fn open_nbd(uri: &str, bitmap: Option<&str>) -> Result<Source> {
        let disk = blocksnap_source::nbd::NbdDisk::connect(uri, bitmap)
            .map_err(|e| StoreError::Usage(format!("NBD source {uri}: {e}")))?;
        let dirty = match bitmap {
            Some(name) => Some((
                name.to_string(),
                disk.dirty_ranges(name).map_err(|e| {
                    StoreError::Other(format!(
                        "NBD source {uri}: cannot read dirty bitmap '{name}': {e}"
                    ))
                })?,
            )),
            None => None,
        };
        Ok(Source {
            size: disk.size(),
            disk: Box::new(disk),
            file: None,
            path: uri.into(),
            format: SourceFormat::Nbd,
            volume: String::new(),
            id: SourceId {
                path: uri.to_string(),
                host: crate::repo::host::host_name(),
            },
            before: Stamp {
                size: 0,
                mtime: (0, 0),
                ctime: (0, 0),
            },
            dirty,
        })
    }

    /// The size and times now (see [`stamp_of`]).
    fn stamp(&self) -> Result<Stamp> {
        stamp_of(self.file.as_ref(), self.format, &self.path)
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
        match self.disk.next_data(pos) {
            Ok(None) => Ok(None),
            Ok(Some((s, e))) if s >= pos && s < e && e <= self.size => Ok(Some((s, e))),
            // A disk that answers nonsense (a bug, or a hostile server) must not make a range
            // that holds data read as zeros.
            Ok(Some((s, e))) => Err(StoreError::Other(format!(
                "{} said its data at or after byte {pos} is bytes {s}..{e} of a {}-byte disk, which is no range of it; nothing was committed",
                self.path.display(),
                self.size
            ))),
            Err(e) => Err(StoreError::Io {
                what: "cannot find the data in",
                path: self.path.clone(),
                source: e,
            }),
        }
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
        let mut r = Reader::new(self, chunker);
        if !r.read_range(0, self.size, tx)? {
            return Ok(());
        }
        let _ = tx.send(Ok(r.split.finish()));
        Ok(())
    }

    /// Reads only what a dirty bitmap marks (`dirty`: merged ranges, in order) and takes the
    /// rest from the parent snapshot's extents (`parent`, covering the volume) without
    /// reading: see [`read_regions`]. Sends batches like [`Source::read_into`].
    pub fn read_dirty_into(
        &self,
        chunker: &Chunker,
        parent: &[Span],
        dirty: &[(u64, u64)],
        tx: &Sender<Result<ReadBatch>>,
    ) {
        if let Err(e) = self.read_dirty(chunker, parent, dirty, tx) {
            let _ = tx.send(Err(e));
        }
    }

    fn read_dirty(
        &self,
        chunker: &Chunker,
        parent: &[Span],
        dirty: &[(u64, u64)],
        tx: &Sender<Result<ReadBatch>>,
    ) -> Result<()> {
        let mut r = Reader::new(self, chunker);
        let mut pos = 0u64;
        for (from, to) in read_regions(parent, dirty, self.size)
            .into_iter()
            .chain([(self.size, self.size)])
        {
            if !r.take_parent(parent, pos, from, tx)? || !r.read_range(from, to, tx)? {
                return Ok(());
            }
            pos = to;
        }
        let _ = tx.send(Ok(r.split.finish()));
        Ok(())
    }
}

/// The ranges a dirty-bitmap snapshot reads: each dirty range widened to whole chunks of the
/// parent where it touches data (a chunk is stored whole or not at all), and to 4 KiB blocks
/// inside the parent's holes (a hole can be cut anywhere); merged, in order. Everything
/// outside them is taken from the parent.
pub(crate) fn read_regions(parent: &[Span], dirty: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let block = ZERO_BLOCK as u64;
    // The span holding byte `at` (spans cover the volume in order).
    let span_at = |at: u64| {
        let i = parent.partition_point(|s| s.end() <= at);
        parent.get(i).copied()
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(a, b) in dirty {
        let (a, b) = (a.min(size), b.min(size));
        if a >= b {
            continue;
        }
        let from = match span_at(a) {
            Some(s) if s.chunk.is_some() => s.offset,
            Some(s) => (a - a % block).max(s.offset),
            None => a,
        };
        let to = match span_at(b - 1) {
            Some(s) if s.chunk.is_some() => s.end(),
            Some(s) => b.next_multiple_of(block).min(s.end()),
            None => b,
        };
        match out.last_mut() {
            Some((_, end)) if *end >= from => *end = (*end).max(to),
            _ => out.push((from, to)),
        }
    }
    out
}

/// The reader's state while it walks a source: the splitter and its limits.
struct Reader<'a> {
    source: &'a Source,
    split: Splitter<'a>,
    window: usize,
    read_size: usize,
    /// Room for a read and for the zeros before it, else the batch goes first.
    room: usize,
}

/// Pieces taken from a parent that make a batch on their own (they hold no bytes).
const KNOWN_BATCH: usize = 4096;

impl<'a> Reader<'a> {
    fn new(source: &'a Source, chunker: &'a Chunker) -> Self {
        let (window, read_size) = read_sizes(chunker);
        // A disk whose reads each wait a round trip reads more at once; the window (a batch's
        // size) stays, and a batch may hold one such read.
        let read_size = read_size
            .max(source.disk.min_read().next_multiple_of(ZERO_BLOCK))
            .min(window);
        Reader {
            source,
            split: Splitter::new(chunker, window + chunker.min_window() + 2 * ZERO_RUN_MIN),
            window,
            read_size,
            room: read_size + ZERO_RUN_MIN,
        }
    }

    /// Sends the batch so far; false when the consumer is gone.
    fn send(&mut self, tx: &Sender<Result<ReadBatch>>) -> bool {
        tx.send(Ok(self.split.take_batch())).is_ok()
    }

    /// Reads `[from, to)` of the source: its data ranges read, the rest zeros. False when the
    /// consumer is gone.
    fn read_range(&mut self, from: u64, to: u64, tx: &Sender<Result<ReadBatch>>) -> Result<bool> {
        let src = self.source;
        let mut pos = from;
        while pos < to {
            if self.split.room() < self.room && !self.send(tx) {
                return Ok(false);
            }
            let Some((start, end)) = src.next_data(pos)?.filter(|(s, _)| *s < to) else {
                self.split.zeros(to - pos);
                break;
            };
            // Read from a block boundary: the bytes before SEEK_DATA's answer are zeros anyway.
            // Likewise to the end of a block: the Splitter is told of zeros only in whole blocks.
            let start = (start - start % ZERO_BLOCK as u64).max(pos);
            let end = end.next_multiple_of(ZERO_BLOCK as u64).min(to);
            self.split.zeros(start - pos);
            let mut cur = start;
            while cur < end {
                if self.split.room() < self.room && !self.send(tx) {
                    return Ok(false);
                }
                let n = (end - cur).min(self.read_size as u64) as usize;
                self.split.read(n, cur, |buf| {
                    src.disk.read_at(buf, cur).map_err(|e| src.read_failed(e))
                })?;
                cur += n as u64;
                if self.split.batch_bytes() >= self.window as u64 && !self.send(tx) {
                    return Ok(false);
                }
            }
            pos = end.max(pos + 1).min(to);
        }
        Ok(true)
    }

    /// Takes `[from, to)` from the parent's spans unread: its chunks as they are, its holes
    /// (or the part of one in the range). The range never cuts a chunk ([`read_regions`]).
    fn take_parent(
        &mut self,
        parent: &[Span],
        from: u64,
        to: u64,
        tx: &Sender<Result<ReadBatch>>,
    ) -> Result<bool> {
        let mut i = parent.partition_point(|s| s.end() <= from);
        let mut pos = from;
        while pos < to {
            let Some(s) = parent.get(i) else {
                return Err(StoreError::Other(format!(
                    "the parent's extents end at byte {pos}, before the volume's {to}"
                )));
            };
            let (a, b) = (pos.max(s.offset), to.min(s.end()));
            if s.chunk.is_some() && (a != s.offset || b != s.end()) {
                return Err(StoreError::Other(format!(
                    "bytes {from}..{to} would cut the parent's chunk at {}..{}",
                    s.offset,
                    s.end()
                )));
            }
            self.split.known(a, b - a, s.chunk);
            if (self.split.pieces() >= KNOWN_BATCH
                || self.split.batch_bytes() >= self.window as u64)
                && !self.send(tx)
            {
                return Ok(false);
            }
            pos = b;
            i += 1;
        }
        Ok(true)
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

/// The size and times of a source's file now. A block device's times say nothing of its
/// content: only its size counts. An image file's own size says nothing of its disk's (a
/// qcow2 image grows as clusters are allocated): only its times count. A disk on the network
/// (no file) has neither.
fn stamp_of(file: Option<&File>, format: SourceFormat, path: &Path) -> Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let Some(file) = file else {
        return Ok(Stamp {
            size: 0,
            mtime: (0, 0),
            ctime: (0, 0),
        });
    };
    let meta = file
        .metadata()
        .map_err(StoreError::io("cannot stat", path))?;
    if meta.file_type().is_block_device() {
        use std::io::Seek;
        let size = match format {
            SourceFormat::Raw => (&*file)
                .seek(std::io::SeekFrom::End(0))
                .map_err(StoreError::io("cannot size block device", path))?,
            _ => 0,
        };
        return Ok(Stamp {
            size,
            mtime: (0, 0),
            ctime: (0, 0),
        });
    }
    Ok(Stamp {
        size: if format == SourceFormat::Raw {
            meta.len()
        } else {
            0
        },
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}
