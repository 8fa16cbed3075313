//! A restore's data written past the page cache (`O_DIRECT`) where the target allows it.
//!
//! Writing a 3 GB image through the page cache costs the kernel a copy of every byte into
//! cache pages, their allocation, dirty accounting and writeback: on the comparison VM the
//! system time of a restore was twice its user time, and a buffered `dd` of 3 GB took 18–23 s
//! where the same `dd` with `oflag=direct` took 3.8 s (docs/COMPARISON.md). So a raw restore
//! writes every whole 4 KiB block of a run of chunks with `O_DIRECT` from a buffer laid out for
//! it ([`Run`]), and only the partial blocks at a run's ends (where a hole or another worker's
//! run begins) through the page cache: a block is never written both ways, so the two paths do
//! not meet. Where the filesystem refuses `O_DIRECT` (tmpfs, some FUSE filesystems) the first
//! refusal turns it off and everything goes through the page cache as before.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of a direct write's offset, length and memory: the page size, which covers every
/// logical block size Linux supports for `O_DIRECT` on the usual filesystems and devices.
pub(crate) const ALIGN: usize = 4096;

/// The bytes of adjacent chunks for one positioned write, placed in memory so that the bytes
/// of every `ALIGN`-aligned block of the volume begin at an `ALIGN`-aligned address. Reused
/// from run to run (a fresh buffer per run costs page faults for every byte).
pub(crate) struct Run {
    mem: Vec<u8>,
    /// Index of the first aligned address in `mem`.
    base: usize,
    /// Volume offset of the run's first byte.
    start: u64,
    len: usize,
}

impl Default for Run {
    fn default() -> Self {
        Run::new()
    }
}

impl Run {
    pub(crate) const fn new() -> Self {
        Run {
            mem: Vec::new(),
            base: 0,
            start: 0,
            len: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The volume offset of the run's first byte.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// The volume offset just past the run.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Empties the run; the next bytes pushed go at volume offset `start`.
    pub(crate) fn begin(&mut self, start: u64) {
        self.start = start;
        self.len = 0;
    }

    /// Bytes before the run's first byte in its first block.
    fn pad(&self) -> usize {
        (self.start % ALIGN as u64) as usize
    }

    /// Appends bytes at the run's end.
    pub(crate) fn push(&mut self, data: &[u8]) {
        let need = self.pad() + self.len + data.len();
        if self.base + need > self.mem.len() {
            self.grow(need);
        }
        let at = self.base + self.pad() + self.len;
        self.mem[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    fn grow(&mut self, need: usize) {
        let cap = need.next_power_of_two().max(1 << 20);
        let mut mem = vec![0u8; cap + ALIGN];
        let base = mem.as_ptr().align_offset(ALIGN);
        let (pad, len) = (self.pad(), self.len);
        if len > 0 {
            mem[base + pad..base + pad + len]
                .copy_from_slice(&self.mem[self.base + pad..self.base + pad + len]);
        }
        self.mem = mem;
        self.base = base;
    }

    /// The run's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        let at = self.base + self.pad();
        &self.mem[at..at + self.len]
    }

    /// The run cut at the block boundaries inside it: the partial block at its start, the
    /// whole blocks (their volume offset, and their bytes at an aligned address), the partial
    /// block at its end. Either part may be empty.
    fn split(&self) -> (&[u8], u64, &[u8], &[u8]) {
        let align = ALIGN as u64;
        let first = self.start.div_ceil(align) * align;
        let last = self.end() / align * align;
        let bytes = self.bytes();
        if last <= first {
            return (bytes, first, &[], &[]);
        }
        let head = (first - self.start) as usize;
        let body = (last - first) as usize;
        (
            &bytes[..head],
            first,
            &bytes[head..head + body],
            &bytes[head + body..],
        )
    }
}

/// A target file (or device) open twice: through the page cache and, if the filesystem takes
/// it, with `O_DIRECT`.
pub(crate) struct DirectFile {
    /// The file as opened by the restore: partial blocks, syncs, and everything once direct
    /// writes are off.
    pub(crate) cached: File,
    direct: Option<File>,
    /// Set at the first direct write refused (`EINVAL`): from then on all goes through `cached`.
    off: AtomicBool,
}

impl DirectFile {
    /// `cached`, and the same file opened again for direct writes if that works. It is
    /// reopened through `/proc/self/fd`, not by its path: a name can be replaced between two
    /// opens, and then the direct writes would go to another file than the rest.
    pub(crate) fn new(cached: File) -> Self {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(format!("/proc/self/fd/{}", cached.as_raw_fd()))
            .ok()
            .filter(|d| same_file(d, &cached));
        DirectFile {
            cached,
            direct,
            off: AtomicBool::new(false),
        }
    }

    /// Writes a run at its place in the volume.
    pub(crate) fn write_run(&self, run: &Run) -> std::io::Result<()> {
        let direct = match &self.direct {
            Some(d) if !self.off.load(Ordering::Relaxed) => d,
            _ => return self.cached.write_all_at(run.bytes(), run.start),
        };
        let (head, at, body, tail) = run.split();
        if !head.is_empty() {
            self.cached.write_all_at(head, run.start)?;
        }
        if !body.is_empty() {
            self.write_direct(direct, body, at)?;
        }
        if !tail.is_empty() {
            self.cached.write_all_at(tail, at + body.len() as u64)?;
        }
        Ok(())
    }

    /// Writes whole aligned blocks directly; if the filesystem refuses, through the cache
    /// (and direct writes are off from then on).
    fn write_direct(&self, direct: &File, mut buf: &[u8], mut at: u64) -> std::io::Result<()> {
        while !buf.is_empty() {
            match direct.write_at(buf, at) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "the target took no bytes",
                    ));
                }
                // A short write ends on a block boundary, unless the device did something odd:
                // then the rest goes through the cache.
                Ok(n) if n % ALIGN == 0 || n == buf.len() => {
                    buf = &buf[n..];
                    at += n as u64;
                }
                Ok(n) => return self.cached.write_all_at(&buf[n..], at + n as u64),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    self.off.store(true, Ordering::Relaxed);
                    return self.cached.write_all_at(buf, at);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Whether two open files are one (same device and inode).
fn same_file(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_its_whole_blocks_aligned_in_memory_and_splits_at_block_boundaries() {
        let mut run = Run::new();
        for (start, lens) in [
            (100u64, vec![5000usize, 3000, 70_000]),
            (8192, vec![4096]),
            (4000, vec![50]),
            (0, vec![3 << 20]),
        ] {
            run.begin(start);
            let mut want = Vec::new();
            for (i, n) in lens.iter().enumerate() {
                let data: Vec<u8> = (0..*n).map(|j| (j * 7 + i) as u8).collect();
                run.push(&data);
                want.extend_from_slice(&data);
            }
            assert_eq!(run.bytes(), &want[..]);
            assert_eq!(run.end(), start + want.len() as u64);
            let (head, at, body, tail) = run.split();
            assert_eq!([head, body, tail].concat(), want);
            assert_eq!(at % ALIGN as u64, 0);
            assert_eq!(body.len() % ALIGN, 0);
            assert!(head.len() < ALIGN && tail.len() < ALIGN);
            if !body.is_empty() {
                assert_eq!(body.as_ptr() as usize % ALIGN, 0, "start {start}");
                assert_eq!(at, start + head.len() as u64);
            }
        }
    }

    #[test]
    fn direct_and_cached_writes_of_runs_make_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.img");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        f.set_len(1 << 20).unwrap();
        let out = DirectFile::new(f);
        // Where the filesystem takes O_DIRECT, the reopen through /proc/self/fd found the file.
        let takes_direct = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&path)
            .is_ok();
        assert_eq!(out.direct.is_some(), takes_direct);
        let mut want = vec![0u8; 1 << 20];
        let mut run = Run::new();
        // Runs that end and begin inside one block, a hole between, one inside a block.
        for (start, len, byte) in [
            (10u64, 9000usize, 1u8),
            (9010, 20_000, 2),
            (40_000, 300, 3),
            (65_536, 131_072, 4),
            (300_001, 1, 5),
        ] {
            run.begin(start);
            run.push(&vec![byte; len]);
            out.write_run(&run).unwrap();
            want[start as usize..start as usize + len].fill(byte);
        }
        out.cached.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
        // Where the filesystem takes direct writes, none was refused (a misaligned one would
        // be, and would silently turn them off).
        if out.direct.is_some() {
            assert!(
                !out.off.load(Ordering::Relaxed),
                "a direct write was refused"
            );
        }
    }
}
