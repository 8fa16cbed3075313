//! Packs: the immutable objects that hold the chunks. This layer alone names, lists, opens and
//! writes them; everything above (snapshot, restore, check, prune, repair, copy) goes through it.
//!
//! - [`Store::list_packs`]: every pack, by id, with its size — one listing of the backend.
//! - [`Store::open_pack`]: a [`PackObject`], read by ranges (`read_exact_at`, or as a
//!   `Read + Seek` for the pack crate's trailer parser); a missing pack is damage, named.
//! - [`reader::ChunkReader`]: chunks by id, decoded and verified, through the index or a map.
//! - [`writer::ChunkWriter`]: chunks into new packs, each committed create-only by its id.
//! - [`index`]: the dedup index, a local cache of the packs' trailers.

pub(crate) mod index;
pub(crate) mod reader;
pub(crate) mod writer;

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blocksnap_backend::{BackendError, ObjectReader};
use blocksnap_manifest::PackId;

use crate::error::{Result, StoreError};
use crate::repo::Store;
use crate::repo::layout::{INDEX_OBJECT_SUFFIX, Kind, pack_key};

/// How long a listing of the packs is reused by the later steps of one command.
const RECENT_LISTING: Duration = Duration::from_secs(10);

/// A pack as listed: its id and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackInfo {
    /// The pack's id.
    pub id: PackId,
    /// Its size in bytes.
    pub size: u64,
}

/// An open pack, read by ranges.
pub(crate) struct PackObject {
    reader: Arc<dyn ObjectReader>,
    /// The position of the `Read + Seek` view (used by one thread at a time).
    pos: AtomicU64,
}

impl PackObject {
    /// The pack's size.
    pub fn size(&self) -> u64 {
        self.reader.size()
    }

    /// Fills `buf` from `offset`, like `FileExt::read_exact_at`: bytes beyond the end are an
    /// `UnexpectedEof`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let bytes = self
            .reader
            .read_at(offset, buf.len() as u64)
            .map_err(backend_io)?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }
}

/// A backend error as an I/O error for readers that speak `std::io` (the pack parser): a range
/// beyond the end is an unexpected end of file, as with a file.
fn backend_io(e: BackendError) -> std::io::Error {
    match e {
        BackendError::OutOfRange { .. } => {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e.to_string())
        }
        BackendError::Io { source, .. } => source,
        e => std::io::Error::other(e.to_string()),
    }
}

impl Read for &PackObject {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let pos = self.pos.load(Ordering::Relaxed);
        let n = (buf.len() as u64).min(self.size().saturating_sub(pos));
        if n == 0 {
            return Ok(0);
        }
        self.read_exact_at(&mut buf[..n as usize], pos)?;
        self.pos.store(pos + n, Ordering::Relaxed);
        Ok(n as usize)
    }
}

impl Seek for &PackObject {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let size = self.size();
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.load(Ordering::Relaxed).checked_add_signed(d),
        }
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before 0"))?;
        self.pos.store(pos, Ordering::Relaxed);
        Ok(pos)
    }
}

impl Store {
    /// Every pack in the store, by id, with its size. Objects under `packs/` that are not
    /// packs (index objects, a damaged pack set aside, anything foreign) are left out.
    pub fn list_packs(&self) -> Result<Vec<PackInfo>> {
        Ok(self.list_pack_objects()?.0)
    }

    /// Every pack in the store, by id, with its size, and the packs that have an index object
    /// beside them (`packs/XX/ID.idx`): one listing of the backend. The packs are remembered for
    /// [`Store::list_packs_recent`].
    pub(crate) fn list_pack_objects(&self) -> Result<(Vec<PackInfo>, HashSet<PackId>)> {
        let prefix = Kind::Pack.prefix();
        let mut packs = Vec::new();
        let mut objects = HashSet::new();
        for m in self
            .backend()
            .list(&prefix)
            .map_err(self.object_error(&prefix))?
        {
            let Some(name) = Kind::Pack.name_of(&m.key) else {
                continue;
            };
            if let Some(id) = name.strip_suffix(INDEX_OBJECT_SUFFIX) {
                if let Ok(id) = id.parse::<PackId>() {
                    objects.insert(id);
                }
            } else if let Ok(id) = name.parse::<PackId>() {
                packs.push(PackInfo { id, size: m.size });
            }
        }
        packs.sort();
        *self.packs_listed.lock().expect("not poisoned") = Some((Instant::now(), packs.clone()));
        Ok((packs, objects))
    }

    /// [`Store::list_packs`], or the listing this process made less than a few seconds ago
    /// (the index sync at the start of the same command): what a command's later steps use, so
    /// that opening a store costs one listing, not one per step.
    pub(crate) fn list_packs_recent(&self) -> Result<Vec<PackInfo>> {
        if let Some((at, packs)) = &*self.packs_listed.lock().expect("not poisoned") {
            if at.elapsed() < RECENT_LISTING {
                return Ok(packs.clone());
            }
        }
        self.list_packs()
    }

    /// The pack `id` as a person finds it (its path in a local store).
    pub fn describe_pack(&self, id: &PackId) -> String {
        self.describe(&pack_key(id))
    }

    /// Opens pack `id`; a missing pack is [`StoreError::Damaged`], naming it and `check`.
    pub(crate) fn open_pack(&self, id: &PackId) -> Result<PackObject> {
        let key = pack_key(id);
        let reader = self
            .backend()
            .open(&key)
            .map_err(|e| self.pack_open_error(id, e))?;
        Ok(PackObject {
            reader,
            pos: AtomicU64::new(0),
        })
    }

    /// [`Store::open_pack`] and its first `len` bytes (on an object store, one request for
    /// both). `Ok(Err(_))`: the pack exists but its first bytes could not be read (it is
    /// shorter, or the read failed), for the caller to name.
    pub(crate) fn open_pack_reading(
        &self,
        id: &PackId,
        len: usize,
    ) -> Result<std::result::Result<(PackObject, Vec<u8>), std::io::Error>> {
        let key = pack_key(id);
        match self.backend().open_reading(&key, len as u64) {
            Ok((reader, head)) => Ok(Ok((
                PackObject {
                    reader,
                    pos: AtomicU64::new(0),
                },
                head,
            ))),
            Err(e) if e.is_not_found() => Err(self.pack_open_error(id, e)),
            Err(e @ BackendError::OutOfRange { .. }) => Ok(Err(backend_io(e))),
            Err(e) => Err(self.object_error(&key)(e)),
        }
    }

    fn pack_open_error(&self, id: &PackId, e: BackendError) -> StoreError {
        let key = pack_key(id);
        if e.is_not_found() {
            StoreError::Damaged(format!(
                "pack {id} is missing ({}); `blocksnap check` lists what it affects",
                self.describe(&key)
            ))
        } else {
            self.object_error(&key)(e)
        }
    }
}
