//! Storing chunks: dedup against the index, compress in parallel, seal in parallel, append to
//! the open pack, and make each full pack durable before its chunks enter the index.
//!
//! Closing a pack (fsync, rename, directory fsync, index insert) runs on a closer thread while
//! the next pack fills, so the pipeline does not stall on the disk. A chunk stays in the writer's
//! `pending` set until the closer has indexed its pack; `finish` waits for every pack.
//!
//! Dedup trusts an index entry only if its pack exists ([`Dedup`]): a pack deleted by hand must
//! not make a new snapshot reference chunks that no pack holds. Nor does it trust one in a pack
//! a prune has condemned (`condemned/`, see `lifecycle/prune.rs`): a later prune deletes that
//! pack, so the chunk is stored again instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use blocksnap_backend::{Backend, Staged};
use blocksnap_index::{Index, Location};
use blocksnap_manifest::{ChunkId, PackId};
use blocksnap_pack::{ChunkCodec, DocMacKey, PackWriter, encode_index_object};
use rayon::prelude::*;

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::repo::layout::{Kind, index_object_key, pack_key};
use crate::repo::{Place, Store, describe};

/// The index as dedup may trust it: an entry counts only if its pack exists. The packs are
/// listed once when the writer starts, and packs it writes are added as they are committed; a
/// pack neither listed nor written is looked up once (another process may have written it
/// since). An entry found pointing at a missing pack is removed from the index, unless it
/// changed meanwhile ([`Index::remove_if`]), and the chunk is stored again.
///
/// It also collects the packs that every chunk it found or stored is in, for the snapshot
/// record of [`Index::record_snapshot_packs`]; and a dirty-bitmap snapshot whose parent has a
/// record trusts the parent's chunks when the parent's packs all exist and none is condemned
/// ([`Dedup::trust_parent`]) instead of looking each chunk up: the same facts, checked per pack.
#[derive(Clone)]
pub(crate) struct Dedup {
    index: Index,
    backend: Arc<dyn Backend>,
    place: Place,
    /// Each pack looked at: whether it exists, and whether a chunk was found or stored in it
    /// (what the snapshot record names).
    packs: Arc<RwLock<HashMap<PackId, Seen>>>,
    /// Packs found missing, with the number of entries dropped for each.
    missing: Arc<Mutex<BTreeMap<PackId, u64>>>,
    /// Packs a prune condemned when the writer started: never deduplicated against.
    condemned: Arc<HashSet<PackId>>,
    /// The index's change epoch before the first lookup.
    epoch: u64,
    /// The parent's chunks are known to be in the store ([`Dedup::trust_parent`]).
    parent_trusted: Arc<AtomicBool>,
    /// Chunks of the parent looked up one by one (without a trusted parent).
    parent_checked: Arc<AtomicU64>,
}

impl Dedup {
    pub fn new(store: &Store, index: &Index) -> Result<Self> {
        let epoch = index.epoch();
        let packs = store
            .list_packs_recent()?
            .into_iter()
            .map(|p| (p.id, Seen::new(true, false)))
            .collect();
        Ok(Dedup {
            index: index.clone(),
            backend: store.backend().clone(),
            place: store.place().clone(),
            packs: Arc::new(RwLock::new(packs)),
            missing: Arc::default(),
            condemned: Arc::new(store.condemned_packs()?),
            epoch,
            parent_trusted: Arc::default(),
            parent_checked: Arc::default(),
        })
    }

    /// Records that pack `id` exists (this writer committed it).
    fn add_pack(&self, id: PackId) {
        self.packs
            .write()
            .expect("not poisoned")
            .insert(id, Seen::new(true, true));
    }

    /// Trusts the chunks of a parent whose record names `packs` (every chunk of it had its
    /// entry in one of them, and no entry changed since) if each of those packs exists and
    /// none is condemned: then each chunk's entry points at an existing pack, which is what
    /// [`Dedup::contains`] checks chunk by chunk. True if trusted.
    pub fn trust_parent(&self, packs: &[PackId]) -> Result<bool> {
        for p in packs {
            if self.condemned.contains(p) || !self.pack_exists(p, false)? {
                return Ok(false);
            }
        }
        for p in packs {
            self.pack_exists(p, true)?;
        }
        self.parent_trusted.store(true, Ordering::SeqCst);
        Ok(true)
    }

    /// True if a chunk of the parent (taken unread) is in the store: at once for a trusted
    /// parent, else as [`Dedup::contains`] says (or the writers' `pending` set).
    pub fn parent_has(&self, id: &ChunkId, pending: &Pending) -> Result<bool> {
        if self.parent_trusted.load(Ordering::Relaxed) {
            return Ok(true);
        }
        self.parent_checked.fetch_add(1, Ordering::Relaxed);
        Ok(pending.lock().expect("not poisoned").contains(id) || self.contains(id)?)
    }

    /// The chunks of the parent looked up one by one.
    pub fn parent_checked(&self) -> u64 {
        self.parent_checked.load(Ordering::Relaxed)
    }

    /// What to record for the snapshot just stored (after its writer finished: the last packs
    /// close then): the packs its chunks were found or stored in, and the epoch those lookups
    /// began at.
    pub fn snapshot_packs(&self) -> (Vec<PackId>, u64) {
        let packs = self.packs.read().expect("not poisoned");
        let used = packs
            .iter()
            .filter(|(_, s)| s.used.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        (used.collect(), self.epoch)
    }

    /// True if the store holds `id` in a pack that exists and is not condemned.
    pub fn contains(&self, id: &ChunkId) -> Result<bool> {
        let Some(loc) = self.index.get(id)? else {
            return Ok(false);
        };
        if self.condemned.contains(&loc.pack) {
            return Ok(false);
        }
        if self.pack_exists(&loc.pack, true)? {
            return Ok(true);
        }
        if self.index.remove_if(id, &loc)? {
            *self
                .missing
                .lock()
                .expect("not poisoned")
                .entry(loc.pack)
                .or_default() += 1;
        }
        Ok(false)
    }

    /// True if pack `pack` exists (listed, written, or found by a HEAD, once); noted as used
    /// (a chunk is taken from it, so the snapshot record names it) when `use_it` and it does.
    fn pack_exists(&self, pack: &PackId, use_it: bool) -> Result<bool> {
        if let Some(seen) = self.packs.read().expect("not poisoned").get(pack) {
            if use_it && seen.exists {
                seen.used.store(true, Ordering::Relaxed);
            }
            return Ok(seen.exists);
        }
        let key = pack_key(pack);
        let exists = self
            .backend
            .head(&key)
            .map_err(|e| StoreError::backend(e).context(&describe(&self.place, &key)))?
            .is_some();
        self.packs
            .write()
            .expect("not poisoned")
            .insert(*pack, Seen::new(exists, use_it && exists));
        Ok(exists)
    }

    /// The packs found missing so far, with the number of index entries dropped for each.
    pub fn missing(&self) -> BTreeMap<PackId, u64> {
        self.missing.lock().expect("not poisoned").clone()
    }
}

/// What [`Dedup`] knows of a pack.
struct Seen {
    exists: bool,
    /// A chunk was found or stored in it.
    used: AtomicBool,
}

impl Seen {
    fn new(exists: bool, used: bool) -> Self {
        Seen {
            exists,
            used: AtomicBool::new(used),
        }
    }
}

struct OpenPack {
    writer: PackWriter<Box<dyn Staged>>,
    /// What MACs its index object (none in a plain store).
    mac: Option<DocMacKey>,
    /// How a failure names it: the store's packs folder (its name is known only at its end).
    shown: PathBuf,
}

/// Counters of what was stored.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WriterStats {
    pub chunks: u64,
    pub chunks_new: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub packs: u64,
}

/// Stores chunks for one operation.
pub(crate) struct ChunkWriter<'a> {
    store: &'a Store,
    codec: &'a ChunkCodec,
    index: &'a Index,
    dedup: Dedup,
    pack: Option<OpenPack>,
    /// Chunks written to a pack that is not yet indexed: this writer's own, or shared by writers
    /// that run at once (the volumes of an image), so that none stores what another already is.
    pending: Pending,
    /// Store chunks even when the index knows them (prune moving live chunks to new packs).
    relocate: bool,
    /// `pending` is shared with other writers, whose packs this one does not see.
    shared: bool,
    closer: Closer,
    pub stats: WriterStats,
}

/// Chunk ids written to packs not yet indexed, shareable between writers.
pub(crate) type Pending = std::sync::Arc<std::sync::Mutex<HashSet<ChunkId>>>;

/// A full pack to make durable and index.
struct CloseJob {
    pack: OpenPack,
}

/// What the closer did with one pack: its chunk ids, and its size or the error.
struct Closed {
    ids: Vec<ChunkId>,
    result: Result<u64>,
}

/// The closer threads, and the channels to them.
struct Closer {
    jobs: Option<Sender<CloseJob>>,
    done: Receiver<Closed>,
    threads: Vec<JoinHandle<()>>,
    in_flight: usize,
}

impl Closer {
    /// `threads` closers (the backend's [`Backend::parallelism`]: one for a local disk, a few
    /// for an object store, where an upload waits on the network): each holds the pack it
    /// uploads, so at most `threads` + 2 packs are in memory (those, one queued, one filling).
    fn start(dedup: Dedup, threads: usize) -> Closer {
        // One pack queued while others are being made durable: bounded memory, the disk or the
        // network kept busy.
        let (jobs, job_rx) = crossbeam_channel::bounded::<CloseJob>(1);
        let (done_tx, done) = crossbeam_channel::unbounded();
        let threads = (0..threads.max(1))
            .map(|_| {
                let (dedup, job_rx, done_tx) = (dedup.clone(), job_rx.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    for job in job_rx {
                        let closed = close(&dedup, job.pack);
                        if done_tx.send(closed).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Closer {
            jobs: Some(jobs),
            done,
            threads,
            in_flight: 0,
        }
    }

    /// Stops taking jobs and waits for the threads; every queued pack is closed first.
    fn stop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Makes a full pack durable and visible — committed create-only under its id, which is the
/// hash of its bytes, so a pack already there is the same pack and counts as committed — then
/// its index object (create-only too; its bytes are a function of the pack, so one already
/// there from a retried or earlier run is the same), then indexes it. On failure the staged
/// object is discarded and nothing is indexed; a pack committed without its index object (a
/// failure or a crash between the two) is found by the next host through its trailer.
fn close(dedup: &Dedup, pack: OpenPack) -> Closed {
    let OpenPack { writer, mac, shown } = pack;
    let mut ids = Vec::new();
    let result = (|| {
        let (out, id, entries, len, tail) = writer
            .finish_with_tail()
            .map_err(StoreError::pack_write(&shown))?;
        ids = entries.iter().map(|e| e.id).collect();
        let key = pack_key(&id);
        match out.commit(&key) {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                return Err(StoreError::backend(e).context(&describe(&dedup.place, &key)));
            }
        }
        dedup.add_pack(id);
        let index_key = index_object_key(&id);
        let object = encode_index_object(mac.as_ref(), &id, len, &tail);
        drop(tail);
        match dedup.backend.create(&index_key, &object) {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                return Err(StoreError::backend(e).context(&describe(&dedup.place, &index_key)));
            }
        }
        // Known before its entries go in, complete after: an index never holds entries of a
        // pack it does not know (a pack that disappears is always noticed), and a pack whose
        // entries a kill cut short is read again (see `Store::sync_index`).
        dedup.index.mark_pack(&id)?;
        let locs: Vec<_> = entries.iter().map(|e| (e.id, location(id, e))).collect();
        dedup.index.insert_batch(&locs)?;
        dedup.index.mark_pack_complete(&id)?;
        Ok(len)
    })();
    Closed { ids, result }
}

impl<'a> ChunkWriter<'a> {
    pub fn new(store: &'a Store, codec: &'a ChunkCodec, index: &'a Index) -> Result<Self> {
        let dedup = Dedup::new(store, index)?;
        Ok(ChunkWriter {
            store,
            codec,
            index,
            closer: Closer::start(dedup.clone(), store.backend().parallelism()),
            dedup,
            pack: None,
            pending: Pending::default(),
            relocate: false,
            shared: false,
            stats: WriterStats::default(),
        })
    }

    /// A writer whose pending chunks are shared with other writers running at once. A snapshot
    /// stored through it may reference chunks another writer is still writing: commit it only
    /// after every writer sharing `pending` has finished.
    pub fn sharing(
        store: &'a Store,
        codec: &'a ChunkCodec,
        index: &'a Index,
        pending: Pending,
    ) -> Result<Self> {
        let mut writer = Self::new(store, codec, index)?;
        writer.pending = pending;
        writer.shared = true;
        Ok(writer)
    }

    /// A writer that writes every chunk it is given, and points the index at the new copies.
    pub fn relocating(store: &'a Store, codec: &'a ChunkCodec, index: &'a Index) -> Result<Self> {
        let mut writer = Self::new(store, codec, index)?;
        writer.relocate = true;
        Ok(writer)
    }

    /// The chunks taken on by this writer (and those sharing its set) but not indexed yet. An
    /// encoder need not compress those: the writer would drop the records.
    pub fn pending(&self) -> Pending {
        self.pending.clone()
    }

    /// What this writer dedups against: lookups for an encoder that runs ahead of it.
    pub fn dedup(&self) -> Dedup {
        self.dedup.clone()
    }

    /// What will know, once this writer has finished, the packs every chunk it was given is
    /// in ([`Dedup::snapshot_packs`]); none for a writer sharing its pending chunks, some of
    /// which are in other writers' packs.
    pub fn recorder(&self) -> Option<Dedup> {
        (!self.shared).then(|| self.dedup.clone())
    }

    /// Stores whichever of `chunks` the store lacks.
    pub fn put(&mut self, chunks: Vec<(ChunkId, Vec<u8>)>) -> Result<()> {
        self.collect(false)?;
        self.stats.chunks += chunks.len() as u64;
        let mut fresh = Vec::new();
        for (id, data) in chunks {
            if self.claim(&id)? {
                fresh.push((id, data));
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        self.stats.chunks_new += fresh.len() as u64;
        self.stats.bytes_new += fresh.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
        let codec = self.codec;
        let records: Vec<(ChunkId, u32, Vec<u8>)> = fresh
            .into_par_iter()
            .map(|(id, data)| (id, data.len() as u32, codec.compress(&data)))
            .collect();
        self.write_records(records)
    }

    /// Stores chunks already compressed by the caller (`(id, raw length, compressed record)`),
    /// those the store lacks; `chunks` more data chunks were seen in all (for the counters).
    pub fn put_compressed(
        &mut self,
        chunks: u64,
        records: Vec<(ChunkId, u32, Vec<u8>)>,
    ) -> Result<()> {
        self.collect(false)?;
        self.stats.chunks += chunks;
        let mut fresh = Vec::with_capacity(records.len());
        for r in records {
            if self.claim(&r.0)? {
                self.stats.chunks_new += 1;
                self.stats.bytes_new += u64::from(r.1);
                fresh.push(r);
            }
        }
        self.write_records(fresh)
    }

    /// True if the writer should store `id` (it is neither stored nor pending); marks it pending.
    fn claim(&mut self, id: &ChunkId) -> Result<bool> {
        let mut pending = self.pending.lock().expect("not poisoned");
        if pending.contains(id) || (!self.relocate && self.dedup.contains(id)?) {
            return Ok(false);
        }
        pending.insert(*id);
        Ok(true)
    }

    /// Seals compressed records and appends them to packs, in order. Sealing runs on this
    /// thread: it is a small share of the work, and handing it to the rayon pool made this
    /// thread wait behind the encoder's batches while the pipeline stalled (measured: cores busy
    /// 1.70 -> 1.78 of 2 in a first snapshot).
    fn write_records(&mut self, records: Vec<(ChunkId, u32, Vec<u8>)>) -> Result<()> {
        let target = self.store.config().pack_size;
        for (id, raw_len, record) in records {
            let full = self.pack.as_ref().is_some_and(|p| {
                let len = p.writer.sealed_len(record.len()) as u64;
                !p.writer.is_empty()
                    && (p.writer.offset() + len > target
                        || p.writer.len() as u64 >= blocksnap_pack::format::MAX_PACK_ENTRIES)
            });
            if full {
                self.close_pack()?;
            }
            if self.pack.is_none() {
                self.open_pack()?;
            }
            let pack = self.pack.as_mut().expect("opened above");
            pack.writer
                .append(id, raw_len, record)
                .map_err(StoreError::pack_write(&pack.shown))?;
        }
        if self
            .pack
            .as_ref()
            .is_some_and(|p| p.writer.offset() >= target)
        {
            self.close_pack()?;
        }
        Ok(())
    }

    fn open_pack(&mut self) -> Result<()> {
        let shown = PathBuf::from(self.store.describe("packs"));
        let staged = self
            .store
            .backend()
            .stage(&Kind::Pack.prefix())
            .map_err(|e| StoreError::backend(e).context(&shown.display().to_string()))?;
        let writer = PackWriter::new(staged, self.codec, fsutil::random_bytes())
            .map_err(StoreError::pack_write(&shown))?;
        self.pack = Some(OpenPack {
            writer,
            mac: self.codec.doc_mac_key(),
            shown,
        });
        Ok(())
    }

    /// Hands the open pack to the closer, which makes it durable and then indexes it.
    fn close_pack(&mut self) -> Result<()> {
        let Some(pack) = self.pack.take() else {
            return Ok(());
        };
        let jobs = self
            .closer
            .jobs
            .as_ref()
            .expect("the closer runs until finish");
        if let Err(job) = jobs.send(CloseJob { pack }) {
            // The closer is gone (it can only stop by panicking): close here.
            let closed = close(&self.dedup, job.into_inner().pack);
            return self.account(closed);
        }
        self.closer.in_flight += 1;
        Ok(())
    }

    /// Takes in what the closer has finished; with `all`, waits for every pack in flight.
    fn collect(&mut self, all: bool) -> Result<()> {
        while self.closer.in_flight > 0 {
            let closed = if all {
                match self.closer.done.recv() {
                    Ok(c) => c,
                    Err(_) => return Err(StoreError::Other("the pack closer thread died".into())),
                }
            } else {
                match self.closer.done.try_recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(()),
                }
            };
            self.closer.in_flight -= 1;
            self.account(closed)?;
        }
        Ok(())
    }

    fn account(&mut self, closed: Closed) -> Result<()> {
        let len = closed.result?;
        for id in &closed.ids {
            self.pending.lock().expect("not poisoned").remove(id);
        }
        self.stats.bytes_stored += len;
        self.stats.packs += 1;
        Ok(())
    }

    /// Closes the open pack, waits for every pack to be durable and indexed, and makes the
    /// index durable. Everything put so far is then stored.
    pub fn finish(mut self) -> Result<WriterStats> {
        self.close_pack()?;
        self.closer.jobs = None;
        self.collect(true)?;
        self.closer.stop();
        self.store.ensure_lock_held("flushing the index", false)?;
        self.index.flush()?;
        Ok(self.stats)
    }
}

impl Drop for ChunkWriter<'_> {
    fn drop(&mut self) {
        // An abandoned pack (an error elsewhere) is not part of the store: remove it. Full packs
        // already handed to the closer are finished (durable and indexed, merely unreferenced).
        if let Some(p) = self.pack.take() {
            drop(p.writer); // a staged object dropped uncommitted is discarded
        }
        self.closer.stop();
    }
}

/// A writer of the metadata stream (the extent list) into chunks of the same store.
pub(crate) struct MetaWriter {
    chunker: blocksnap_chunker::Chunker,
    pub chunks: Vec<ChunkId>,
    pub bytes: u64,
}

impl MetaWriter {
    pub fn new() -> Self {
        let params = blocksnap_chunker::ChunkerParams::cdc(64 * 1024);
        MetaWriter {
            chunker: blocksnap_chunker::Chunker::new(params).expect("valid"),
            chunks: Vec::new(),
            bytes: 0,
        }
    }

    /// Stores the complete chunks of `buf` (or all of it when `last`), draining what it stored.
    pub fn write(
        &mut self,
        buf: &mut Vec<u8>,
        last: bool,
        writer: &mut ChunkWriter<'_>,
    ) -> Result<()> {
        if !last && buf.len() < 2 * self.chunker.min_window() {
            return Ok(());
        }
        let cuts = self.chunker.cut(buf, self.bytes, last);
        let mut chunks = Vec::with_capacity(cuts.len());
        let mut p = 0;
        for len in cuts {
            let data = buf[p..p + len].to_vec();
            let id = writer.codec.chunk_id(&data);
            self.chunks.push(id);
            chunks.push((id, data));
            p += len;
        }
        buf.drain(..p);
        self.bytes += p as u64;
        let before = writer.stats;
        writer.put(chunks)?;
        // Metadata chunks are not the volume's chunks: keep the counters about the volume.
        let after = &mut writer.stats;
        after.chunks = before.chunks;
        after.chunks_new = before.chunks_new;
        after.bytes_new = before.bytes_new;
        Ok(())
    }
}

/// Where a trailer entry of pack `pack` is, as the index records it.
pub(crate) fn location(pack: blocksnap_manifest::PackId, e: &blocksnap_pack::Entry) -> Location {
    Location {
        pack,
        offset: e.offset,
        stored_len: e.stored_len,
        raw_len: e.raw_len,
    }
}
