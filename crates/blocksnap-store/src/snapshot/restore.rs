//! `snapshot restore`: extents are read in batches, chunks fetched and decoded in parallel,
//! verified against their ids and written with positioned writes. Holes stay holes.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blocksnap_index::{Index, IndexError, Location};
use blocksnap_manifest::{
    ChunkId, Extent, ExtentDecoder, ExtentError, PackId, SnapshotDoc, SnapshotId,
};
use blocksnap_pack::{ChunkCodec, PackCipher, PackHeader, format::HEADER_LEN};
use rayon::prelude::*;
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::progress::Progress;
use crate::repo::Store;

/// Options of `snapshot restore`, and of each device of `image rebuild`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Replace an existing regular file, or write over a block device's content. Without it
    /// only a new file is written.
    pub force: bool,
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

/// What `snapshot restore` did (the `--json` output).
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// The snapshot.
    pub id: SnapshotId,
    /// The volume's size, and the output's.
    pub size: u64,
    /// Data bytes written (holes are not written).
    pub bytes_written: u64,
    /// Wall time.
    pub seconds: f64,
    /// Where it went: the path as given.
    pub output: PathBuf,
    /// A file or a block device.
    pub kind: TargetKind,
    /// What was written: `output`, or the file or device its symbolic link points to.
    pub written_to: PathBuf,
    /// An existing file was replaced (`--force`).
    pub replaced: bool,
    /// The block device's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_size: Option<u64>,
    /// Bytes of the block device past the snapshot's size, left as they were (0 for a file).
    pub tail_left: u64,
    /// The snapshot's source was written while it was being read: the image may not be
    /// consistent.
    pub source_changed: bool,
}

/// A restore's target, checked before the first byte is written: the path as given, what it
/// is, and for a block device the device opened exclusively.
pub(crate) struct Target {
    /// The path the user gave: every message names it.
    output: PathBuf,
    /// What is written: `output`, or the file or device its symbolic link points to.
    path: PathBuf,
    kind: TargetKind,
    /// An existing regular file is replaced.
    replaces: bool,
    /// The block device (opened with `O_EXCL`) and its size.
    device: Option<(File, u64)>,
    /// The snapshot's size and data bytes (for the full-filesystem message).
    size: u64,
    data_bytes: u64,
    /// The device of the store's filesystem.
    store_dev: Option<u64>,
}

/// How a file type is named in messages.
fn kind_name(ft: fs::FileType) -> &'static str {
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
fn is_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// The mount point of the filesystem holding directory `dir`: the highest ancestor on the same
/// device.
fn mount_point(dir: &Path) -> PathBuf {
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

/// Whether `path` (absolute) is in `/dev` (but not `/dev/shm`, a place for files).
fn in_dev(path: &Path) -> bool {
    path.starts_with("/dev") && !path.starts_with("/dev/shm")
}

impl Target {
    /// An I/O error on the target, naming the user's path (never the temporary file's); a full
    /// filesystem names that filesystem and what frees space on it.
    fn fail(&self, what: &'static str, e: std::io::Error) -> StoreError {
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
    fn shown(&self) -> String {
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
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Data bytes decoded per batch: bounds restore's memory.
const BATCH_BYTES: u64 = 64 << 20;

/// Chunks a worker decodes together, writing each run of adjacent ones with one positioned
/// write (about 1 MiB with the default chunk size). One write per chunk cost 14% more time and
/// CPU: the writers took the file's lock in turn for every 32 KiB (measured, cold restores).
const WRITE_RUN: usize = 32;

impl From<ExtentError> for StoreError {
    fn from(e: ExtentError) -> Self {
        StoreError::Damaged(format!("extent list: {e}"))
    }
}

struct OpenPack {
    file: File,
    cipher: Option<PackCipher>,
}

/// Where chunk locations come from: the index, or (when another process holds the index) a
/// map read from the pack trailers.
pub(crate) enum Locator<'a> {
    Index(&'a Index),
    Map(HashMap<ChunkId, Location>),
    /// A map read from the trailers that several readers share (`check` of a read-only store).
    Shared(&'a HashMap<ChunkId, Location>),
}

impl Locator<'_> {
    pub(crate) fn get(&self, id: &ChunkId) -> Result<Option<Location>> {
        match self {
            Locator::Index(index) => Ok(index.get(id)?),
            Locator::Map(map) => Ok(map.get(id).copied()),
            Locator::Shared(map) => Ok(map.get(id).copied()),
        }
    }
}

/// Reads chunks of one key from packs, through the index; shared by restore and check.
pub(crate) struct ChunkReader<'a> {
    store: &'a Store,
    codec: &'a ChunkCodec,
    locator: Locator<'a>,
    packs: Mutex<HashMap<PackId, Arc<OpenPack>>>,
}

impl<'a> ChunkReader<'a> {
    pub fn new(store: &'a Store, codec: &'a ChunkCodec, index: &'a Index) -> Self {
        Self::with_locator(store, codec, Locator::Index(index))
    }

    pub fn with_locator(store: &'a Store, codec: &'a ChunkCodec, locator: Locator<'a>) -> Self {
        ChunkReader {
            store,
            codec,
            locator,
            packs: Mutex::new(HashMap::new()),
        }
    }

    fn pack(&self, id: &PackId) -> Result<Arc<OpenPack>> {
        if let Some(p) = self.packs.lock().expect("not poisoned").get(id) {
            return Ok(p.clone());
        }
        let path = self.store.pack_path(id);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::Damaged(format!(
                    "pack {id} is missing ({}); `blocksnap check` lists what it affects",
                    path.display()
                ))
            } else {
                StoreError::Io {
                    what: "cannot open pack",
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0).map_err(|e| {
            StoreError::Damaged(format!(
                "pack {id} ({}): cannot read its header: {e}",
                path.display()
            ))
        })?;
        let header = PackHeader::decode(&header)
            .map_err(|e| StoreError::Damaged(format!("pack {id} ({}): {e}", path.display())))?;
        if header.key_id != self.codec.key_id() {
            return Err(StoreError::Damaged(format!(
                "pack {id} is sealed with key {:?}, not the snapshot's key {:?}",
                header.key_id,
                self.codec.key_id()
            )));
        }
        let pack = Arc::new(OpenPack {
            file,
            cipher: self.codec.pack_cipher(&header.salt),
        });
        let mut packs = self.packs.lock().expect("not poisoned");
        if packs.len() >= 256 {
            packs.clear();
        }
        packs.insert(*id, pack.clone());
        Ok(pack)
    }

    /// Reads, decrypts, decompresses and verifies one chunk.
    pub fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.locator.get(id)?.ok_or_else(|| {
            StoreError::Damaged(format!(
                "chunk {id} is not in the index; run `blocksnap repair index`, then `blocksnap check` if it stays missing"
            ))
        })?;
        let pack = self.pack(&loc.pack)?;
        let mut record = vec![0u8; loc.stored_len as usize];
        pack.file.read_exact_at(&mut record, loc.offset).map_err(|e| {
            StoreError::Damaged(format!("pack {}: cannot read chunk {id} at offset {} ({e}); the pack is truncated or damaged", loc.pack, loc.offset))
        })?;
        self.codec
            .decode(pack.cipher.as_ref(), id, loc.offset, loc.raw_len, record)
            .map_err(|e| {
                StoreError::Damaged(format!(
                    "pack {} ({}): {e}",
                    loc.pack,
                    self.store.pack_path(&loc.pack).display()
                ))
            })
    }

    /// Streams a snapshot's extents to `f` in volume order, reading its metadata chunks.
    pub fn for_each_extent(
        &self,
        doc: &SnapshotDoc,
        mut f: impl FnMut(u64, Extent) -> Result<()>,
    ) -> Result<()> {
        let mut decoder = ExtentDecoder::new(doc.size);
        for id in &doc.extents.chunks {
            let bytes = self.read(id)?;
            decoder.feed(&bytes, &mut f)?;
        }
        let count = decoder.finish()?;
        if count != doc.extents.count {
            return Err(StoreError::Damaged(format!(
                "snapshot {}: the extent list has {count} records, the document says {}",
                doc.id, doc.extents.count
            )));
        }
        Ok(())
    }
}

impl Store {
    /// Rebuilds a snapshot's volume into `output`: a new file, or with `force` an existing
    /// regular file (replaced) or a block device (written over). See [`Store::plan_target`].
    pub fn restore(
        &self,
        access: &Access,
        snapshot: &str,
        output: &Path,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        self.restore_with(
            access,
            snapshot,
            output,
            &RestoreOptions::default(),
            progress,
        )
    }

    /// [`Store::restore`] with options.
    pub fn restore_with(
        &self,
        access: &Access,
        snapshot: &str,
        output: &Path,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let doc = self.resolve_snapshot(snapshot)?;
        self.codec(access, doc.key)?;
        let target = self.plan_target(output, &doc, opts)?;
        self.restore_into(access, &doc, target, progress)
    }

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
        let mut target = Target {
            output: output.to_path_buf(),
            path: output.to_path_buf(),
            kind: TargetKind::File,
            replaces: false,
            device: None,
            size: doc.size,
            data_bytes: doc.data_bytes,
            store_dev: fs::metadata(self.root()).map(|m| m.dev()).ok(),
        };
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

    /// Refuses a target inside the store's directory.
    fn refuse_inside_store(&self, target: &Target) -> Result<()> {
        let dir = fs::canonicalize(parent_dir(&target.path));
        let root = fs::canonicalize(self.root());
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

    /// Writes snapshot `doc` into a planned target.
    pub(crate) fn restore_into(
        &self,
        access: &Access,
        doc: &SnapshotDoc,
        target: Target,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let codec = self.codec(access, doc.key)?;
        let _lock = self.lock_reading("restore", progress)?;
        let index = self.index_if_free(access, progress)?;
        let locator = self.locator(index.as_ref(), doc, &codec, progress)?;
        let reader = ChunkReader::with_locator(self, &codec, locator);
        if doc.source_changed {
            progress.message(&format!(
                "note: snapshot {} was taken while its source was being written: the image may not be consistent (like a disk pulled from a running machine)",
                doc.id
            ));
        }
        let device = target.kind == TargetKind::BlockDevice;
        let tail_left = target.device.as_ref().map_or(0, |(_, n)| n - doc.size);
        if tail_left > 0 {
            progress.message(&format!(
                "note: {} is {}, the snapshot {}: its last {} (from byte {}) are left as they were",
                target.shown(),
                human(doc.size + tail_left),
                human(doc.size),
                human(tail_left),
                doc.size
            ));
        }
        // A file is written beside its place and renamed at the end: a failed restore leaves
        // no half image, and an existing file stays as it was until then.
        let tmp = fsutil::tmp_path_for(&target.path);
        let file = match &target.device {
            Some((f, _)) => f.try_clone().map_err(|e| target.fail("cannot open", e))?,
            None => {
                let mut o = OpenOptions::new();
                o.write(true).create_new(true).mode(0o600);
                let f = o.open(&tmp).map_err(|e| target.fail("cannot create", e))?;
                if let Err(e) = f.set_len(doc.size) {
                    let _ = fs::remove_file(&tmp);
                    return Err(target.fail("cannot size", e));
                }
                f
            }
        };
        let cleanup = |e: StoreError| {
            if !device {
                let _ = fs::remove_file(&tmp);
            }
            e
        };

        progress.start("restore", doc.size);
        // Writeback starts while the next batch is decoded: a syncer thread runs fdatasync after
        // each batch (at most one waiting), so the final fsync waits for the last batch alone,
        // not for the whole image. Its errors fail the restore like the final fsync's.
        let (sync_tx, sync_rx) = crossbeam_channel::bounded::<()>(1);
        let target = &target;
        let written = std::thread::scope(|scope| -> Result<u64> {
            let syncer = scope.spawn(|| -> Result<()> {
                for () in sync_rx {
                    file.sync_data()
                        .map_err(|e| target.fail("cannot sync", e))?;
                }
                Ok(())
            });
            let mut batch: Vec<(u64, u32, ChunkId)> = Vec::new();
            let mut batch_bytes = 0u64;
            let mut written = 0u64;
            let flush = |batch: &mut Vec<(u64, u32, ChunkId)>, written: &mut u64| -> Result<()> {
                crate::cancel::check()?;
                batch
                    .par_chunks(WRITE_RUN)
                    .try_for_each(|group| -> Result<()> {
                        // `run` holds adjacent chunks' bytes, from volume offset `start`.
                        let mut run: Vec<u8> = Vec::new();
                        let mut start = 0u64;
                        let write = |run: &[u8], start: u64| {
                            file.write_all_at(run, start)
                                .map_err(|e| target.fail("cannot write", e))
                        };
                        for (off, len, id) in group {
                            let data = reader.read(id)?;
                            if data.len() != *len as usize {
                                return Err(StoreError::Damaged(format!(
                                    "chunk {id} has {} bytes, the extent list says {len}",
                                    data.len()
                                )));
                            }
                            if !run.is_empty() && start + run.len() as u64 != *off {
                                write(&run, start)?;
                                run.clear();
                            }
                            if run.is_empty() {
                                start = *off;
                            }
                            run.extend_from_slice(&data);
                        }
                        if !run.is_empty() {
                            write(&run, start)?;
                        }
                        Ok(())
                    })?;
                let n: u64 = batch.iter().map(|b| u64::from(b.1)).sum();
                *written += n;
                progress.advance(n);
                batch.clear();
                // A sync already waiting covers this batch too.
                let _ = sync_tx.try_send(());
                Ok(())
            };
            let zeros = vec![0u8; 1 << 20];
            let result = reader
                .for_each_extent(doc, |off, extent| {
                    match extent {
                        Extent::Data { len, id } => {
                            batch.push((off, len, id));
                            batch_bytes += u64::from(len);
                            if batch_bytes >= BATCH_BYTES {
                                flush(&mut batch, &mut written)?;
                                batch_bytes = 0;
                            }
                        }
                        Extent::Hole { len } => {
                            if device {
                                // A device keeps old bytes: holes must be written as zeros.
                                let mut p = 0;
                                while p < len {
                                    let n = (len - p).min(zeros.len() as u64);
                                    file.write_all_at(&zeros[..n as usize], off + p)
                                        .map_err(|e| target.fail("cannot write", e))?;
                                    p += n;
                                }
                            }
                            progress.advance(len);
                        }
                    }
                    Ok(())
                })
                .and_then(|()| flush(&mut batch, &mut written));
            drop(sync_tx);
            let synced = syncer
                .join()
                .map_err(|_| StoreError::Other("the restore's sync thread panicked".into()))?;
            result?;
            synced?;
            file.sync_all().map_err(|e| target.fail("cannot sync", e))?;
            Ok(written)
        })
        .map_err(cleanup)?;
        progress.finish();
        if !device {
            let placed = if target.replaces {
                fs::rename(&tmp, &target.path)
            } else {
                rename_new(&tmp, &target.path)
            };
            placed
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        StoreError::Other(format!(
                            "{} was created by another program during the restore; it was left as it is. Run again with --force to replace it, or give another name",
                            target.output.display()
                        ))
                    } else {
                        target.fail("cannot rename into place", e)
                    }
                })
                .map_err(cleanup)?;
            fsutil::sync_dir(parent_dir(&target.path))?;
        }
        Ok(RestoreReport {
            id: doc.id,
            size: doc.size,
            bytes_written: written,
            seconds: started.elapsed().as_secs_f64(),
            output: target.output.clone(),
            kind: target.kind,
            written_to: target.path.clone(),
            replaced: target.replaces,
            device_size: target.device.as_ref().map(|(_, n)| *n),
            tail_left,
            source_changed: doc.source_changed,
        })
    }
}

/// Renames `from` to `to` unless `to` exists (`RENAME_NOREPLACE`; where the filesystem lacks
/// it, a hard link and an unlink, which fail the same way).
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
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
    /// The index, if no other process holds it (a snapshot may be running: readers need not
    /// wait); a damaged one is rebuilt like [`Store::open_index`] does.
    pub(crate) fn index_if_free(
        &self,
        access: &Access,
        progress: &dyn Progress,
    ) -> Result<Option<Index>> {
        // sled cannot open an index without writing: a read-only store is read through the
        // pack trailers.
        if self.read_only().is_some() {
            return Ok(None);
        }
        if !self.index_path().exists() {
            return self
                .open_index_healing(access, Duration::ZERO, progress)
                .map(Some);
        }
        match self.open_index_raw(Duration::ZERO, progress) {
            Ok(index) => Ok(Some(index)),
            Err(IndexError::Busy { .. }) => Ok(None),
            Err(IndexError::Damaged { .. }) => self
                .open_index_healing(access, Duration::ZERO, progress)
                .map(Some),
        }
    }

    /// Where a reader of `doc` finds chunks: the index if it is free, else locations read from
    /// the pack trailers (with a note).
    pub(crate) fn locator<'i>(
        &self,
        index: Option<&'i Index>,
        doc: &SnapshotDoc,
        codec: &ChunkCodec,
        progress: &dyn Progress,
    ) -> Result<Locator<'i>> {
        Ok(match index {
            Some(index) => Locator::Index(index),
            None => {
                progress.message(&format!(
                    "{}: reading the locations of {}'s chunks from the pack trailers",
                    if self.read_only().is_some() {
                        "the index of a read-only store cannot be opened"
                    } else {
                        "the index is in use by another blocksnap process"
                    },
                    doc.id
                ));
                Locator::Map(self.locations_for(doc, codec)?)
            }
        })
    }

    /// The locations of every chunk `doc` needs, read from the pack trailers alone: first those
    /// of its extent list, then, from the extent list, those of its data. Memory is one entry per
    /// chunk of the snapshot.
    pub(crate) fn locations_for(
        &self,
        doc: &SnapshotDoc,
        codec: &ChunkCodec,
    ) -> Result<HashMap<ChunkId, Location>> {
        let meta: HashSet<ChunkId> = doc.extents.chunks.iter().copied().collect();
        let meta_locs = self.locations_from_trailers(codec, &meta)?;
        let mut needed = meta;
        ChunkReader::with_locator(self, codec, Locator::Map(meta_locs)).for_each_extent(
            doc,
            |_, e| {
                if let Extent::Data { id, .. } = e {
                    needed.insert(id);
                }
                Ok(())
            },
        )?;
        self.locations_from_trailers(codec, &needed)
    }

    fn locations_from_trailers(
        &self,
        codec: &ChunkCodec,
        wanted: &HashSet<ChunkId>,
    ) -> Result<HashMap<ChunkId, Location>> {
        let mut out = HashMap::new();
        for (id, path) in self.list_packs()? {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            // Packs under other keys, or damaged ones, hold nothing this restore can use.
            let Ok((_, entries)) = blocksnap_pack::read_trailer(&file, |_| Some(codec)) else {
                continue;
            };
            for e in entries.iter().filter(|e| wanted.contains(&e.id)) {
                out.insert(e.id, crate::packs::writer::location(id, e));
            }
        }
        Ok(out)
    }
}
