//! Reading chunks back: by id, through the index (or a map of locations read from the pack
//! trailers when the index cannot be had), decrypted, decompressed and verified against the id.
//! Shared by restore, diff, copy, check and the NBD server.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blocksnap_index::{Index, IndexError, Location};
use blocksnap_manifest::{ChunkId, Extent, ExtentDecoder, ExtentError, PackId, SnapshotDoc};
use blocksnap_pack::{ChunkCodec, PackCipher, PackHeader, format::HEADER_LEN};

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::packs::PackObject;
use crate::progress::Progress;
use crate::repo::Store;

impl From<ExtentError> for StoreError {
    fn from(e: ExtentError) -> Self {
        StoreError::Damaged(format!("extent list: {e}"))
    }
}

struct OpenPack {
    object: PackObject,
    cipher: Option<PackCipher>,
}

/// A snapshot's extent list as read: each extent with its offset in the volume.
pub(crate) type Extents = Vec<(u64, Extent)>;

/// Where chunk locations come from: the index, or (when another process holds the index) a
/// map read from the pack trailers.
pub(crate) enum Locator<'a> {
    Index(&'a Index),
    Map(HashMap<ChunkId, Location>),
    /// A map read from the trailers because the index places chunks in packs that are gone;
    /// the index then only names the pack a lost chunk was in.
    Lagging(HashMap<ChunkId, Location>, &'a Index),
    /// A map read from the trailers that several readers share (`check` of a read-only store).
    Shared(&'a HashMap<ChunkId, Location>),
}

impl Locator<'_> {
    pub(crate) fn get(&self, id: &ChunkId) -> Result<Option<Location>> {
        match self {
            Locator::Index(index) => Ok(index.get(id)?),
            Locator::Map(map) | Locator::Lagging(map, _) => Ok(map.get(id).copied()),
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
    /// The threads that fetch ranges ahead ([`ChunkReader::prefetch`]), made on first use.
    pool: std::sync::OnceLock<Option<rayon::ThreadPool>>,
}

/// Chunk records fetched ahead by [`ChunkReader::prefetch`], sealed as in their packs. Each
/// record stays in the buffer of the ranged read that fetched it, shared (a copy of each record
/// would double what a prefetch holds): `(place, buffer, where in it)`.
#[derive(Default)]
pub(crate) struct Prefetched(HashMap<ChunkId, (Location, Arc<Vec<u8>>, usize)>);

/// Two records of one pack at most this far apart are fetched by one ranged read (the bytes
/// between are read and dropped): on an object store a request costs more than the bytes.
const COALESCE_GAP: u64 = 1 << 20;
/// One coalesced read: pack, start, end, the records in it.
type Range = (PackId, u64, u64, Vec<(ChunkId, Location)>);
/// A record read ahead.
type Fetched = (ChunkId, (Location, Arc<Vec<u8>>, usize));

/// The longest ranged read a prefetch makes: a whole pack (packs go up as single PUTs of at
/// most 32 MiB). What a prefetch holds is bounded by its batch, not by this: the records of
/// one restore batch (64 MiB of disk data) are held until it is written.
const MAX_RANGE: u64 = 32 << 20;

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
            pool: std::sync::OnceLock::new(),
        }
    }

    /// Where chunk `id`'s record is, if the reader can place it.
    pub fn location(&self, id: &ChunkId) -> Option<Location> {
        self.locator.get(id).ok().flatten()
    }

    /// True if reads are worth fetching ahead, coalesced: the backend wants several requests
    /// in flight (an object store, where each request waits on the network). A local store
    /// reads each record where it is needed.
    pub fn prefetches(&self) -> bool {
        self.store.backend().parallelism() > 1
    }

    /// Fetches the records of `ids` with as few ranged reads as their places allow — the
    /// records of one pack closer than [`COALESCE_GAP`] to each other in one read of at most
    /// [`MAX_RANGE`] bytes — with [`Backend::parallelism`] reads in flight. What cannot be
    /// fetched here (unknown, damaged, a failed read) is left out: [`ChunkReader::read_with`]
    /// then reads it alone and says what is wrong.
    ///
    /// [`Backend::parallelism`]: blocksnap_backend::Backend::parallelism
    pub fn prefetch<'i>(&self, ids: impl IntoIterator<Item = &'i ChunkId>) -> Prefetched {
        use rayon::prelude::*;
        let mut seen = HashSet::new();
        let mut by_pack: HashMap<PackId, Vec<(ChunkId, Location)>> = HashMap::new();
        for id in ids {
            if !seen.insert(*id) {
                continue;
            }
            if let Ok(Some(loc)) = self.locator.get(id) {
                by_pack.entry(loc.pack).or_default().push((*id, loc));
            }
        }
        // (pack, start, end, the records in it)
        let mut ranges: Vec<Range> = Vec::new();
        for (pack, mut locs) in by_pack {
            locs.sort_by_key(|(_, l)| l.offset);
            for (id, loc) in locs {
                let end = loc.offset.saturating_add(u64::from(loc.stored_len));
                match ranges.last_mut() {
                    Some(r)
                        if r.0 == pack
                            && loc.offset >= r.1
                            && loc.offset <= r.2.saturating_add(COALESCE_GAP)
                            && end.saturating_sub(r.1) <= MAX_RANGE =>
                    {
                        r.2 = r.2.max(end);
                        r.3.push((id, loc));
                    }
                    _ => ranges.push((pack, loc.offset, end, vec![(id, loc)])),
                }
            }
        }
        let fetch = |(pack, start, end, locs): Range| {
            // A range near the start of a pack not yet open is read from byte 0 by the request
            // that opens it (the header comes with it); a failure there falls back to opening
            // alone, which names what is wrong.
            let opened = (start <= COALESCE_GAP)
                .then(|| self.pack_reading(&pack, end as usize).ok())
                .flatten();
            let (open, head) = match opened {
                Some(o) => o,
                None => match self.pack(&pack) {
                    Ok(p) => (p, None),
                    Err(_) => return Vec::new(),
                },
            };
            let size = open.object.size();
            if locs
                .iter()
                .any(|(id, loc)| check_place(loc, id, size).is_err())
            {
                return Vec::new();
            }
            let (buf, base) = match head {
                Some(head) => (head, 0),
                None => {
                    let mut buf = vec![0u8; (end - start) as usize];
                    if open.object.read_exact_at(&mut buf, start).is_err() {
                        return Vec::new();
                    }
                    (buf, start)
                }
            };
            let buf = Arc::new(buf);
            locs.into_iter()
                .map(|(id, loc)| {
                    let at = (loc.offset - base) as usize;
                    (id, (loc, buf.clone(), at))
                })
                .collect::<Vec<_>>()
        };
        let pool = self.pool.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.store.backend().parallelism().max(1))
                .thread_name(|i| format!("blocksnap-fetch-{i}"))
                .build()
                .ok()
        });
        // Packs not yet open are opened first, each by the read of its first range (so a range
        // at its start brings the header along); then the other ranges, all open.
        ranges.sort_by_key(|r| (r.0, r.1));
        let (first, rest): (Vec<Range>, Vec<Range>) = {
            let open = self.packs.lock().expect("not poisoned");
            let mut seen = HashSet::new();
            ranges
                .into_iter()
                .partition(|r| !open.contains_key(&r.0) && seen.insert(r.0))
        };
        let mut fetched: Vec<Vec<Fetched>> = Vec::new();
        for phase in [first, rest] {
            match pool {
                Some(pool) => fetched
                    .extend(pool.install(|| phase.into_par_iter().map(fetch).collect::<Vec<_>>())),
                None => fetched.extend(phase.into_iter().map(fetch)),
            }
        }
        Prefetched(fetched.into_iter().flatten().collect())
    }

    /// [`ChunkReader::read`], from `ahead` if it holds the record.
    pub fn read_with(&self, id: &ChunkId, ahead: Option<&Prefetched>) -> Result<Vec<u8>> {
        let Some((loc, buf, at)) = ahead.and_then(|a| a.0.get(id)) else {
            return self.read(id);
        };
        let record = buf[*at..*at + loc.stored_len as usize].to_vec();
        let pack = self.pack(&loc.pack)?;
        self.codec
            .decode(pack.cipher.as_ref(), id, loc.offset, loc.raw_len, record)
            .map_err(|e| {
                StoreError::Damaged(format!(
                    "pack {} ({}): {e}",
                    loc.pack,
                    self.store.describe_pack(&loc.pack)
                ))
            })
    }

    fn pack(&self, id: &PackId) -> Result<Arc<OpenPack>> {
        if let Some(p) = self.packs.lock().expect("not poisoned").get(id) {
            return Ok(p.clone());
        }
        Ok(self.open(id, HEADER_LEN)?.0)
    }

    /// Pack `id`, opened if it is not yet, with its first `len` bytes (at least the header) when
    /// this call opened it: the read that opens a pack on an object store also fetches what
    /// lies just after the header.
    fn pack_reading(&self, id: &PackId, len: usize) -> Result<(Arc<OpenPack>, Option<Vec<u8>>)> {
        if let Some(p) = self.packs.lock().expect("not poisoned").get(id) {
            return Ok((p.clone(), None));
        }
        let (pack, head) = self.open(id, len.max(HEADER_LEN))?;
        Ok((pack, Some(head)))
    }

    /// Opens pack `id` reading its first `len` (>= [`HEADER_LEN`]) bytes, checks its header and
    /// keeps it open.
    fn open(&self, id: &PackId, len: usize) -> Result<(Arc<OpenPack>, Vec<u8>)> {
        let described = || self.store.describe_pack(id);
        let (object, head) = self.store.open_pack_reading(id, len)?.map_err(|e| {
            StoreError::Damaged(format!(
                "pack {id} ({}): cannot read its header: {e}",
                described()
            ))
        })?;
        let header = PackHeader::decode(&head[..HEADER_LEN])
            .map_err(|e| StoreError::Damaged(format!("pack {id} ({}): {e}", described())))?;
        if header.key_id != self.codec.key_id() {
            return Err(StoreError::Damaged(format!(
                "pack {id} is sealed with key {:?}, not the snapshot's key {:?}",
                header.key_id,
                self.codec.key_id()
            )));
        }
        let pack = Arc::new(OpenPack {
            object,
            cipher: self.codec.pack_cipher(&header.salt),
        });
        let mut packs = self.packs.lock().expect("not poisoned");
        if packs.len() >= 256 {
            packs.clear();
        }
        packs.insert(*id, pack.clone());
        Ok((pack, head))
    }

    /// Reads, decrypts, decompresses and verifies one chunk.
    pub fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let Some(loc) = self.locator.get(id)? else {
            return Err(self.lost(id));
        };
        let pack = self.pack(&loc.pack)?;
        check_place(&loc, id, pack.object.size())?;
        let mut record = vec![0u8; loc.stored_len as usize];
        pack.object.read_exact_at(&mut record, loc.offset).map_err(|e| {
            StoreError::Damaged(format!("pack {}: cannot read chunk {id} at offset {} ({e}); the pack is truncated or damaged", loc.pack, loc.offset))
        })?;
        self.codec
            .decode(pack.cipher.as_ref(), id, loc.offset, loc.raw_len, record)
            .map_err(|e| {
                StoreError::Damaged(format!(
                    "pack {} ({}): {e}",
                    loc.pack,
                    self.store.describe_pack(&loc.pack)
                ))
            })
    }

    /// The error for a chunk the locator does not place: the index may lag behind the packs;
    /// read from the trailers, no pack holds it.
    fn lost(&self, id: &ChunkId) -> StoreError {
        let in_no_pack = |was: String| {
            StoreError::Damaged(format!(
                "chunk {id} is in none of the store's packs (no pack trailer lists it){was}; \
                 `blocksnap check` lists the packs and snapshots affected"
            ))
        };
        match &self.locator {
            Locator::Index(_) => StoreError::Damaged(format!(
                "chunk {id} is not in the index; run `blocksnap repair index`, then `blocksnap check` if it stays missing"
            )),
            Locator::Lagging(_, index) => match index.get(id) {
                Ok(Some(loc)) => in_no_pack(format!(
                    ": the index places it in pack {}, which is missing ({})",
                    loc.pack,
                    self.store.describe_pack(&loc.pack)
                )),
                _ => in_no_pack(String::new()),
            },
            Locator::Map(_) | Locator::Shared(_) => in_no_pack(String::new()),
        }
    }

    /// Streams a snapshot's extents to `f` in volume order, reading its metadata chunks.
    pub fn for_each_extent(
        &self,
        doc: &SnapshotDoc,
        mut f: impl FnMut(u64, Extent) -> Result<()>,
    ) -> Result<()> {
        let mut decoder = ExtentDecoder::new(doc.size);
        // On an object store the list's chunks are fetched a group at a time, coalesced (they
        // lie together in the pack of the snapshot that wrote them): one ranged read for the
        // group rather than one per chunk.
        const GROUP: usize = 64;
        for group in doc.extents.chunks.chunks(GROUP) {
            let ahead = self.prefetches().then(|| self.prefetch(group));
            for id in group {
                let bytes = self.read_with(id, ahead.as_ref())?;
                decoder.feed(&bytes, &mut f)?;
            }
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

/// Checks a location (from the index, a cache that can be damaged or edited) against the
/// format's limits and its pack's length before a buffer for the record is allocated.
pub(crate) fn check_place(loc: &Location, id: &ChunkId, pack_len: u64) -> Result<()> {
    blocksnap_pack::check_record_place(id, loc.offset, loc.stored_len, loc.raw_len, pack_len)
        .map_err(|e| {
            StoreError::Damaged(format!(
                "the index places chunk {id} in pack {} where no record can be ({e}); run \
                 `blocksnap repair index`",
                loc.pack
            ))
        })
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
        let index = if !self.index_path().exists() {
            self.open_index_healing(access, Duration::ZERO, progress)?
        } else {
            match self.open_index_raw(Duration::ZERO, progress) {
                Ok(index) => index,
                Err(IndexError::Busy { .. }) => return Ok(None),
                Err(IndexError::Damaged { .. }) => {
                    self.open_index_healing(access, Duration::ZERO, progress)?
                }
            }
        };
        // Packs another user or host wrote (or an interrupted `repair index` left out) are
        // indexed before reading; entries of packs that are gone stay, reading then names them.
        self.sync_index(&index, access, false, progress)?;
        Ok(Some(index))
    }

    /// A reader of snapshot `doc`'s chunks, and the snapshot's extent list when choosing the
    /// reader read it: through the index if it places every chunk of `doc` in a pack the store
    /// holds (checked by reading the list through it, the list then kept so that it is not read
    /// again, and the packs that reading opened stay open), else through locations read from the
    /// pack trailers. See [`Store::view_of`].
    pub(crate) fn reader_with_extents<'i>(
        &'i self,
        index: Option<&'i Index>,
        doc: &SnapshotDoc,
        codec: &'i ChunkCodec,
        progress: &dyn Progress,
    ) -> Result<(ChunkReader<'i>, Option<Extents>)> {
        if let Some(index) = index {
            let reader = ChunkReader::new(self, codec, index);
            if let Some(extents) = self.index_serves(&reader, index, doc)? {
                return Ok((reader, Some(extents)));
            }
        }
        let locator = self.locator_not_served(index, doc, codec, progress)?;
        Ok((ChunkReader::with_locator(self, codec, locator), None))
    }

    /// The locator when the index does not serve `doc`: the pack trailers.
    fn locator_not_served<'i>(
        &self,
        index: Option<&'i Index>,
        doc: &SnapshotDoc,
        codec: &ChunkCodec,
        progress: &dyn Progress,
    ) -> Result<Locator<'i>> {
        Ok(match index {
            Some(index) => {
                progress.message(&format!(
                    "the index places chunks of {} in packs the store does not hold (it is a \
                     cache that can lag behind the store): reading their locations from the pack \
                     trailers",
                    doc.id
                ));
                Locator::Lagging(self.locations_naming(doc, codec, Some(index))?, index)
            }
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

    /// True if `index` places every chunk of `doc` in a pack the store holds: one pass over
    /// the extent list (index lookups only, no data read) and one listing of the packs.
    /// The snapshot's extent list, read through `reader` (over `index`), if the index places
    /// every chunk of it (the list's own and its data's) in a pack the store holds; `None` if it
    /// does not, or the list cannot be read through it.
    fn index_serves(
        &self,
        reader: &ChunkReader<'_>,
        index: &Index,
        doc: &SnapshotDoc,
    ) -> Result<Option<Extents>> {
        let listed: HashSet<PackId> = self
            .list_packs_recent()?
            .into_iter()
            .map(|p| p.id)
            .collect();
        let held = |id: &ChunkId| -> Result<bool> {
            Ok(index.get(id)?.is_some_and(|l| listed.contains(&l.pack)))
        };
        for id in &doc.extents.chunks {
            if !held(id)? {
                return Ok(None);
            }
        }
        let mut all = true;
        let mut extents = Vec::new();
        let walk = reader.for_each_extent(doc, |offset, e| {
            if let Extent::Data { id, .. } = e {
                if all && !held(&id)? {
                    all = false;
                }
            }
            extents.push((offset, e));
            Ok(())
        });
        Ok((walk.is_ok() && all).then_some(extents))
    }

    /// The locations of every chunk `doc` needs, read from the pack trailers alone: first those
    /// of its extent list, then, from the extent list, those of its data. Memory is one entry per
    /// chunk of the snapshot.
    pub(crate) fn locations_for(
        &self,
        doc: &SnapshotDoc,
        codec: &ChunkCodec,
    ) -> Result<HashMap<ChunkId, Location>> {
        self.locations_naming(doc, codec, None)
    }

    /// [`Store::locations_for`]; a lagging `index`, if given, names the missing pack of an
    /// extent-list chunk no trailer lists.
    fn locations_naming(
        &self,
        doc: &SnapshotDoc,
        codec: &ChunkCodec,
        index: Option<&Index>,
    ) -> Result<HashMap<ChunkId, Location>> {
        let meta: HashSet<ChunkId> = doc.extents.chunks.iter().copied().collect();
        let meta_locs = self.locations_from_trailers(codec, &meta)?;
        let mut needed = meta;
        let locator = match index {
            Some(index) => Locator::Lagging(meta_locs, index),
            None => Locator::Map(meta_locs),
        };
        ChunkReader::with_locator(self, codec, locator).for_each_extent(doc, |_, e| {
            if let Extent::Data { id, .. } = e {
                needed.insert(id);
            }
            Ok(())
        })?;
        self.locations_from_trailers(codec, &needed)
    }

    fn locations_from_trailers(
        &self,
        codec: &ChunkCodec,
        wanted: &HashSet<ChunkId>,
    ) -> Result<HashMap<ChunkId, Location>> {
        let mut out = HashMap::new();
        for p in self.list_packs()? {
            let Ok(object) = self.open_pack(&p.id) else {
                continue;
            };
            // Packs under other keys, or damaged ones, hold nothing this restore can use.
            let Ok((_, entries)) = blocksnap_pack::read_trailer(&object, |_| Some(codec)) else {
                continue;
            };
            for e in entries.iter().filter(|e| wanted.contains(&e.id)) {
                out.insert(e.id, crate::packs::writer::location(p.id, e));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitOptions, NoProgress, SnapshotOptions};

    #[test]
    fn a_crafted_index_entry_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            account: "alice".into(),
            identity: Some(dir.path().join("alice.key")),
            ..InitOptions::default()
        };
        let (store, _) = Store::init(&dir.path().join("store"), &opts).unwrap();
        let store = store.with_cache_home(dir.path().join("cache"));
        let access = store
            .access(None, Some(&dir.path().join("alice.key")))
            .unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, b"some data of a disk ".repeat(10_000)).unwrap();
        let r = store
            .snapshot(
                &access,
                &SnapshotOptions {
                    source: img,
                    ..Default::default()
                },
                &NoProgress,
            )
            .unwrap();
        let doc = store.resolve_snapshot(&r.id.to_string()).unwrap();
        let codec = store.codec(&access, doc.key).unwrap();
        let index = store.open_index(&access, &NoProgress).unwrap();
        let (id, loc) = index.iter().next().unwrap().unwrap();
        for bad in [
            Location {
                stored_len: u32::MAX,
                ..loc
            },
            Location {
                raw_len: u32::MAX,
                ..loc
            },
            Location {
                offset: u64::MAX - 4,
                ..loc
            },
            Location { offset: 0, ..loc },
        ] {
            index.insert_batch(&[(id, bad)]).unwrap();
            let e = ChunkReader::new(&store, &codec, &index)
                .read(&id)
                .unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Damaged);
            let msg = e.to_string();
            assert!(
                msg.contains("where no record can be") && msg.contains("blocksnap repair index"),
                "{msg}"
            );
        }
        index.insert_batch(&[(id, loc)]).unwrap();
        ChunkReader::new(&store, &codec, &index).read(&id).unwrap();
    }
}
