//! `snapshot restore`: extents are read in batches, chunks fetched and decoded in parallel,
//! verified against their ids and written with positioned writes. Holes stay holes.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
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
use crate::store::Store;

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
    /// Where it went.
    pub output: PathBuf,
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
}

impl Locator<'_> {
    fn get(&self, id: &ChunkId) -> Result<Option<Location>> {
        match self {
            Locator::Index(index) => Ok(index.get(id)?),
            Locator::Map(map) => Ok(map.get(id).copied()),
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
    /// Rebuilds a snapshot's volume into `output` (a new or existing file, or a block device).
    pub fn restore(
        &self,
        access: &Access,
        snapshot: &str,
        output: &Path,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let doc = self.resolve_snapshot(snapshot)?;
        let codec = self.codec(access, doc.key)?;
        let _lock = self.lock_shared("restore", progress)?;
        let index = self.index_if_free(access, progress)?;
        let locator = self.locator(index.as_ref(), &doc, &codec, progress)?;
        let reader = ChunkReader::with_locator(self, &codec, locator);

        let device = fs::metadata(output)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let (target, file) = if device {
            let f = OpenOptions::new()
                .write(true)
                .open(output)
                .map_err(StoreError::io("cannot open", output))?;
            (output.to_path_buf(), f)
        } else {
            if output.is_dir() {
                return Err(StoreError::Usage(format!(
                    "{} is a directory; give a file name for the restored image",
                    output.display()
                )));
            }
            // Write beside the output and rename at the end: a failed restore leaves no half image.
            let tmp = fsutil::tmp_path_for(output);
            let f = fsutil::create_new(&tmp, 0o600)?;
            f.set_len(doc.size)
                .map_err(StoreError::io("cannot size", &tmp))?;
            (tmp, f)
        };
        let cleanup = |e: StoreError| {
            if !device {
                let _ = fs::remove_file(&target);
            }
            e
        };

        progress.start("restore", doc.size);
        // Writeback starts while the next batch is decoded: a syncer thread runs fdatasync after
        // each batch (at most one waiting), so the final fsync waits for the last batch alone,
        // not for the whole image. Its errors fail the restore like the final fsync's.
        let (sync_tx, sync_rx) = crossbeam_channel::bounded::<()>(1);
        let written = std::thread::scope(|scope| -> Result<u64> {
            let syncer = scope.spawn(|| -> Result<()> {
                for () in sync_rx {
                    file.sync_data()
                        .map_err(StoreError::io("cannot sync", &target))?;
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
                                .map_err(StoreError::io("cannot write", &target))
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
                .for_each_extent(&doc, |off, extent| {
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
                                        .map_err(StoreError::io("cannot write", &target))?;
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
            file.sync_all()
                .map_err(StoreError::io("cannot sync", &target))?;
            Ok(written)
        })
        .map_err(cleanup)?;
        progress.finish();
        if !device {
            fs::rename(&target, output)
                .map_err(StoreError::io("cannot rename into place", output))
                .map_err(cleanup)?;
            if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
                fsutil::sync_dir(dir)?;
            }
        }
        Ok(RestoreReport {
            id: doc.id,
            size: doc.size,
            bytes_written: written,
            seconds: started.elapsed().as_secs_f64(),
            output: output.to_path_buf(),
        })
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
                    "the index is in use by another blocksnap process: reading the locations of {}'s chunks from the pack trailers",
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
                out.insert(e.id, crate::sink::location(id, e));
            }
        }
        Ok(out)
    }
}
