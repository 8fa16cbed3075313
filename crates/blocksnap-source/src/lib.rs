//! The disks a snapshot reads, as one mechanism: a [`Disk`] has a size, tells which ranges may
//! hold data (everything else reads as zeros and is not read at all), and reads bytes at any
//! offset. The store's snapshot reader walks any `Disk` the same way — next allocated range,
//! large positioned reads, cut into chunks where the bytes lie — so a raw file
//! (`SEEK_DATA`/`SEEK_HOLE`), a block device (all data), a qcow2 image ([`qcow2::Qcow2Disk`],
//! allocated clusters through its backing chain) and an NBD export (`base:allocation` block
//! status) are implementations of one seam, and the same guest bytes give the same chunks
//! whatever container they came in.
//!
//! This crate holds the trait, the format probe and the qcow2 implementation (through `imago`,
//! a maintained qcow2 library by a QEMU block-layer maintainer: see docs/VM-DISKS.md for why
//! not `qcow2-rs`). It does no chunking and knows nothing of the store.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub mod nbd;
pub mod qcow2;

/// A disk a snapshot reads.
pub trait Disk: Send + Sync {
    /// The guest-visible size in bytes.
    fn size(&self) -> u64;

    /// The first range at or after `pos` that may hold data, as `(start, end)` with
    /// `pos <= start < end <= size`; `None` when nothing after `pos` does. Bytes outside every
    /// such range read as zeros and are never read. A disk that cannot tell returns
    /// `(pos, size)`.
    fn next_data(&self, pos: u64) -> io::Result<Option<(u64, u64)>>;

    /// Fills `buf` with the guest bytes at `offset` (`offset + buf.len() <= size`).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The smallest read worth asking for, in bytes: a disk whose every read waits a round
    /// trip (an NBD export) says how much one read should cover to keep it busy. 0 (the
    /// default): the reader's own size is fine.
    fn min_read(&self) -> usize {
        0
    }
}

/// How a disk image file is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The file's bytes are the disk's.
    Raw,
    /// A qcow2 image: the disk is what its clusters (and its backing chain) map.
    Qcow2,
}

impl Format {
    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(format!(
                "unknown disk format '{other}': give raw or qcow2 (other formats are read through an NBD export: `qemu-nbd --read-only -f vmdk disk.vmdk`, then `snapshot create nbd://…`)"
            )),
        }
    }
}

/// The magic at the start of every qcow2 image, `QFI\xfb`.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// The format a file's first bytes say it has: qcow2 if it starts with [`QCOW2_MAGIC`], else
/// raw (a raw disk's first sector is a boot sector, a partition table or a filesystem, never
/// that magic; `--format raw` reads such a file as raw anyway).
pub fn probe(file: &std::fs::File) -> io::Result<Format> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read_at(&mut magic[got..], got as u64) {
            Ok(0) => return Ok(Format::Raw),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(if magic == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Refuses, by its path, a file a qcow2 image may not pull in as its backing or data file:
/// anything but a regular file or a block device (a FIFO would block, a character device
/// like `/dev/zero` or `/dev/urandom` is no disk), and files of `/proc` and `/sys`.
pub(crate) fn check_disk_path(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path)?;
    let ft = meta.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file or a block device, so it cannot be part of a disk",
                path.display()
            ),
        ));
    }
    let real = std::fs::canonicalize(path)?;
    if real.starts_with("/proc") || real.starts_with("/sys") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a kernel interface, not a disk", path.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_tells_qcow2_by_its_magic_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for (bytes, want) in [
            (&b""[..], Format::Raw),
            (&b"QFI"[..], Format::Raw),
            (&b"QFI\xfb\0\0\0\x03"[..], Format::Qcow2),
            (&b"\xebX\x90mkfs.fat"[..], Format::Raw),
        ] {
            std::fs::write(&p, bytes).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            assert_eq!(probe(&f).unwrap(), want, "{bytes:?}");
        }
        assert_eq!("qcow2".parse::<Format>(), Ok(Format::Qcow2));
        assert!("vmdk".parse::<Format>().unwrap_err().contains("nbd"));
    }
}
