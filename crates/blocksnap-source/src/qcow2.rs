//! qcow2 images as disks: the guest-visible disk, through the backing chain, reading only
//! clusters that hold data. Zero clusters and unallocated ranges (with no backing file, or
//! unallocated down the whole chain) are holes. Parsing is imago's; this module gates what an
//! image may pull in (its backing files and external data file: only regular files and block
//! devices, read-only, at most [`MAX_CHAIN`] deep, so a loop ends) and turns every failure —
//! a damaged or hostile header included — into an error that names the file.

use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imago::file::File;
use imago::format::gate::ImplicitOpenGate;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, Mapping, Storage, StorageOpenOptions};

use crate::Disk;

/// The deepest backing chain followed (QEMU's own limit is deeper, but no real chain is; a
/// chain that refers back to itself ends here with an error).
pub const MAX_CHAIN: usize = 64;

/// Why a qcow2 image cannot be read.
#[derive(Debug)]
pub struct OpenError {
    /// The image given.
    pub path: PathBuf,
    /// What is wrong, with the library's own words.
    pub detail: String,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cannot be read as a qcow2 image: {}. If the file is damaged, `qemu-img check {}` says how; if it is not qcow2 at all, pass --format raw",
            self.path.display(),
            self.detail,
            self.path.display()
        )
    }
}

impl std::error::Error for OpenError {}

/// A qcow2 image opened read-only, with its backing chain.
pub struct Qcow2Disk {
    access: FormatAccess<File>,
    size: u64,
    chain: Vec<PathBuf>,
}

impl fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("size", &self.size)
            .field("chain", &self.chain)
            .finish()
    }
}

/// Opens what an image refers to only if it is a disk, read-only, and not past [`MAX_CHAIN`].
#[derive(Clone, Default)]
struct ChainGate {
    depth: usize,
    opened: Arc<Mutex<Vec<PathBuf>>>,
}

impl ImplicitOpenGate<File> for ChainGate {
    fn open_format<F: FormatDriverBuilder<File>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<File>> {
        if self.depth >= MAX_CHAIN {
            return Err(io::Error::other(format!(
                "its backing chain is more than {MAX_CHAIN} images deep (does a backing file refer back to an image of the chain?)"
            )));
        }
        let child = ChainGate {
            depth: self.depth + 1,
            opened: Arc::clone(&self.opened),
        };
        Ok(FormatAccess::new(builder.write(false).open(child)?))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<File> {
        let opts = opts.write(false);
        if let Some(p) = opts.get_filename() {
            crate::check_disk_path(p)?;
            self.opened
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(p.to_path_buf());
        }
        File::open(opts)
    }
}

/// Runs a call into the qcow2 library, turning a panic (a bug it has on some hostile input)
/// into an error: nothing from a file may crash blocksnap.
fn guarded<T>(what: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(io::Error::other(format!(
            "the qcow2 library failed on its metadata while {what} (the image is damaged or hostile)"
        ))),
    }
}

/// The chain of contexts in an error, outermost first, as one line.
fn detail(e: &io::Error) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Refuses a qcow2 file whose L1 table lies (even partly) past the file's end: the library
/// reads such a table as empty, so the damaged disk would read as zeros, silently. Files that
/// are not qcow2 (a raw backing file, an external data file) are not looked at; neither is
/// anything the library already checked.
fn l1_within_file(file: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut header = [0u8; 48];
    let mut f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(_) => return Ok(()), // the library opened it; a race is the library's to report
    };
    if f.read_exact(&mut header).is_err() || header[..4] != *b"QFI\xfb" {
        return Ok(());
    }
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let be32 =
        |r: std::ops::Range<usize>| u32::from_be_bytes(header[r].try_into().unwrap_or([0; 4]));
    let l1_size = u64::from(be32(36..40));
    let l1_offset = u64::from_be_bytes(header[40..48].try_into().unwrap_or([0; 8]));
    let end = l1_size
        .checked_mul(8)
        .and_then(|n| n.checked_add(l1_offset));
    match end {
        Some(end) if l1_size == 0 || end <= len => Ok(()),
        _ => Err(format!(
            "its L1 table ({l1_size} entries at byte {l1_offset}) lies past the end of the file \
             ({len} bytes), so its data cannot be found: the image is damaged or cut short"
        )),
    }
}

impl Qcow2Disk {
    /// Opens `path` (a qcow2 image) and its backing chain, read-only.
    pub fn open(path: &Path) -> Result<Qcow2Disk, OpenError> {
        let gate = ChainGate::default();
        let opened = Arc::clone(&gate.opened);
        let access = guarded("opening it", || {
            let q = Qcow2::<File>::builder_path(path).write(false).open(gate)?;
            Ok(FormatAccess::new(q))
        })
        .map_err(|e| OpenError {
            path: path.to_path_buf(),
            detail: detail(&e),
        })?;
        let size = access.size();
        let chain = opened.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for file in std::iter::once(path).chain(chain.iter().map(PathBuf::as_path)) {
            l1_within_file(file).map_err(|detail| OpenError {
                path: path.to_path_buf(),
                detail: if file == path {
                    detail
                } else {
                    format!("its backing file {}: {detail}", file.display())
                },
            })?;
        }
        Ok(Qcow2Disk {
            access,
            size,
            chain,
        })
    }

    /// The files read: the image itself, then its backing chain (and external data files).
    pub fn chain(&self) -> &[PathBuf] {
        &self.chain
    }

    /// Whether the range at `pos` holds data, and how far the answer goes (at least 1 byte).
    fn mapped(&self, pos: u64) -> io::Result<(bool, u64)> {
        let max = self.size - pos;
        let (data, len) = guarded("mapping it", || {
            let (m, len) = self.access.get_mapping(pos, max)?;
            let data = match m {
                Mapping::Zero { .. } | Mapping::Eof { .. } => false,
                // Raw clusters, compressed or otherwise special ones, and any kind a later
                // library version adds: data.
                _ => true,
            };
            Ok((data, len))
        })?;
        if len == 0 {
            // End of image before its size: read as zeros (as QEMU does).
            return Ok((false, max));
        }
        Ok((data, len.min(max)))
    }
}

impl Disk for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn next_data(&self, mut pos: u64) -> io::Result<Option<(u64, u64)>> {
        while pos < self.size {
            let (data, len) = self.mapped(pos)?;
            if !data {
                pos += len;
                continue;
            }
            let start = pos;
            let mut end = pos + len;
            while end < self.size {
                let (data, len) = self.mapped(end)?;
                if !data {
                    break;
                }
                end += len;
            }
            return Ok(Some((start, end)));
        }
        Ok(None)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the disk",
            ));
        }
        guarded("reading it", || self.access.read(buf, offset))
    }
}

/// A new qcow2 image being written (a restore target): imago formats it and maps every write
/// to clusters it allocates; what is never written stays unallocated (reads as zeros, takes no
/// room). Every call into the library is guarded like the reader's: an error, never a panic.
pub struct Qcow2Writer {
    access: FormatAccess<File>,
    size: u64,
    /// Writes go one at a time: each may allocate clusters and L2 tables, and a partial
    /// cluster's neighbours may be written by another thread; serialised, no two allocations
    /// race (the bytes were decoded in parallel already; a write is a copy to the page cache).
    writing: Mutex<()>,
}

impl fmt::Debug for Qcow2Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Writer")
            .field("size", &self.size)
            .finish()
    }
}

impl Qcow2Writer {
    /// Formats `file` (new and empty, opened for writing) as a qcow2 image of virtual size
    /// `size` bytes, with no backing file, 64 KiB clusters, nothing allocated.
    pub fn create(file: std::fs::File, size: u64) -> io::Result<Qcow2Writer> {
        use imago::{DenyImplicitOpenGate, FormatCreateBuilder};
        let access = guarded("creating the image", || {
            let storage = File::try_from(file)?;
            let q = Qcow2::<File>::create_builder(storage)
                .size(size)
                .create_open(DenyImplicitOpenGate::default(), |image| {
                    Ok(Qcow2::<File>::builder(image))
                })?;
            Ok(FormatAccess::new(q))
        })
        .map_err(|e| io::Error::new(e.kind(), detail(&e)))?;
        if access.size() != size {
            return Err(io::Error::other(format!(
                "the qcow2 library made an image of {} bytes, not {size}",
                access.size()
            )));
        }
        Ok(Qcow2Writer {
            access,
            size,
            writing: Mutex::new(()),
        })
    }

    /// The virtual size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `buf` at guest offset `offset` (`offset + buf.len() <= size`).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end of the disk",
            ));
        }
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        guarded("writing it", || self.access.write(buf, offset))
            .map_err(|e| io::Error::new(e.kind(), detail(&e)))
    }

    /// Writes out the library's cached metadata (L1/L2 tables, refcounts) and syncs the file:
    /// after this the image is complete and durable.
    pub fn finish(&self) -> io::Result<()> {
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        guarded("writing its metadata", || {
            self.access.flush()?;
            self.access.sync()
        })
        .map_err(|e| io::Error::new(e.kind(), detail(&e)))
    }
}
