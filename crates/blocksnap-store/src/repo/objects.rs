//! Documents through the backend: read one, create one, swap one, list a kind — in one place.
//!
//! Every document of the store is read here ([`Store::doc`], [`Store::docs`]) and written here
//! ([`Store::create_doc`], [`Store::update_doc`], [`Store::replace_doc`]). A document that does
//! not parse is an error naming it when asked for by name, and is skipped and remembered when a
//! listing meets it ([`Store::warn_damaged`] reports each once): one bad file never stops
//! unrelated work.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use blocksnap_backend::{Backend, BackendError, Version};
use blocksnap_manifest::{DocError, Document, SnapshotDoc};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::Kind;

/// The largest document read, in bytes. Documents are small (a snapshot's extent list is
/// stored as chunks; a key with the most grants allowed is a few MiB): anything larger in the
/// store is damage, or hostile, and is not read into memory.
pub(crate) const MAX_DOCUMENT_LEN: u64 = 16 << 20;

/// Documents a [`DocCache`] holds at most; past this, reads are not remembered.
const DOC_CACHE_ENTRIES: usize = 4096;

/// The documents a command read, by key, when [`Store::cache_documents`] turned it on: snapshot
/// documents (created once, never rewritten), key and account documents (changed only by a
/// grant, a revocation or a migration) and volume heads (swapped at each snapshot's commit).
/// The command sees each as it was when it first read it, as if it had read each once: on an
/// object store, reading the keys, the head or the parent snapshot again was a request each
/// time. A compare-and-swap first tries the version it read (a head read at the start is
/// swapped at the commit without being read again); if another writer changed the document
/// meanwhile the swap fails, and it is read afresh and tried again, as without the cache.
/// Writes and deletes through [`Store`] update it; volumes, images, policies, locks and the
/// config are never in it. Off by default: a process that keeps a store open for long (a
/// server, a library user) would otherwise never see a grant revoked or a snapshot deleted.
#[derive(Debug, Default)]
pub(crate) struct DocCache {
    on: std::sync::atomic::AtomicBool,
    docs: Mutex<std::collections::HashMap<String, Cached>>,
    /// Heads found missing (a volume's first snapshot): creating one is create-only, so a head
    /// another writer made meanwhile fails the create and is read afresh.
    absent: Mutex<std::collections::HashSet<String>>,
    /// The newest snapshot of a volume found by listing the snapshots (a volume without a head),
    /// when: reused for [`LISTING_REUSE`] (one snapshot create asks twice), forgotten when this
    /// command writes or deletes a snapshot document.
    latest: Mutex<std::collections::HashMap<String, (std::time::Instant, Option<SnapshotDoc>)>>,
}

/// How long [`DocCache`] reuses the newest snapshot of a volume found by a listing: as long as
/// the steps of one snapshot create, so that it stands for one listing.
const LISTING_REUSE: std::time::Duration = std::time::Duration::from_secs(10);

/// A document's bytes as read or written, with their version when known.
#[derive(Debug, Clone)]
struct Cached {
    bytes: Arc<Vec<u8>>,
    version: Option<Version>,
}

/// The cache's maps, locked: a panic while one was held leaves nothing half-done that matters
/// to a cache of documents, so a poisoned lock is taken as it is.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True if `key` is an object of `kind` (under its folder).
fn is_of(key: &str, kind: Kind) -> bool {
    key.strip_prefix(kind.dir())
        .is_some_and(|r| r.starts_with('/'))
}

impl DocCache {
    fn on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn cacheable(&self, key: &str) -> bool {
        self.on()
            && [Kind::Snapshot, Kind::Key, Kind::Account, Kind::Head]
                .into_iter()
                .any(|k| is_of(key, k))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Cached>> {
        locked(&self.docs)
    }

    fn get(&self, key: &str) -> Option<Arc<Vec<u8>>> {
        if !self.cacheable(key) {
            return None;
        }
        self.lock().get(key).map(|c| c.bytes.clone())
    }

    /// The bytes of `key` with their version, if both are remembered.
    fn get_versioned(&self, key: &str) -> Option<(Arc<Vec<u8>>, Version)> {
        if !self.cacheable(key) {
            return None;
        }
        let map = self.lock();
        let c = map.get(key)?;
        Some((c.bytes.clone(), c.version.clone()?))
    }

    /// Remembers `bytes` (at `version`, when known) as the content of `key`, if it is a kind
    /// that is cached.
    fn put(&self, key: &str, bytes: &[u8], version: Option<Version>) {
        if !self.cacheable(key) {
            return;
        }
        self.absent_set().remove(key);
        self.snapshots_changed(key);
        let mut map = self.lock();
        if map.len() < DOC_CACHE_ENTRIES || map.contains_key(key) {
            let bytes = Arc::new(bytes.to_vec());
            map.insert(key.to_string(), Cached { bytes, version });
        }
    }

    /// Forgets `key`: it was deleted, or written with content not known here.
    pub(crate) fn forget(&self, key: &str) {
        self.lock().remove(key);
        self.absent_set().remove(key);
        self.snapshots_changed(key);
    }

    /// A snapshot document was written or deleted: no listing found before stands.
    fn snapshots_changed(&self, key: &str) {
        if is_of(key, Kind::Snapshot) {
            self.latest_map().clear();
        }
    }

    fn latest_map(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, (std::time::Instant, Option<SnapshotDoc>)>,
    > {
        locked(&self.latest)
    }

    /// The newest snapshot of `volume` a listing found less than [`LISTING_REUSE`] ago.
    pub(crate) fn latest_listed(&self, volume: &str) -> Option<Option<SnapshotDoc>> {
        if !self.on() {
            return None;
        }
        let map = self.latest_map();
        let (at, doc) = map.get(volume)?;
        (at.elapsed() < LISTING_REUSE).then(|| doc.clone())
    }

    /// Remembers what a listing found as the newest snapshot of `volume`.
    pub(crate) fn put_latest_listed(&self, volume: &str, doc: Option<SnapshotDoc>) {
        if self.on() {
            self.latest_map()
                .insert(volume.to_string(), (std::time::Instant::now(), doc));
        }
    }

    fn absent_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        locked(&self.absent)
    }

    /// Remembers that the head `key` was not there.
    fn put_absent(&self, key: &str) {
        if self.cacheable(key) && is_of(key, Kind::Head) {
            self.absent_set().insert(key.to_string());
        }
    }

    /// True if the head `key` was found missing (and not written since).
    fn is_absent(&self, key: &str) -> bool {
        self.cacheable(key) && self.absent_set().contains(key)
    }
}

impl Store {
    /// Turns on (or off, forgetting all) the reading of snapshot, key, account and head
    /// documents once per command (see [`DocCache`]). For a store opened for one command, as the CLI does; a
    /// process that keeps the store open for long leaves it off.
    pub fn cache_documents(&self, on: bool) {
        self.doc_cache
            .on
            .store(on, std::sync::atomic::Ordering::Relaxed);
        if !on {
            self.doc_cache.lock().clear();
            self.doc_cache.absent_set().clear();
            self.doc_cache.latest_map().clear();
        }
    }
}

/// The problem of the document `key`, `size` bytes long, larger than any document.
fn too_large(key: &str, size: u64) -> DocError {
    let kind = Kind::DOCUMENTS
        .into_iter()
        .find(|k| k.name_of(key).is_some())
        .map_or("store", Kind::noun);
    DocError::Malformed {
        doc: kind,
        detail: format!(
            "it is {size} bytes long, more than any document can be ({MAX_DOCUMENT_LEN} bytes); \
             it was not read"
        ),
    }
}

/// A document that cannot be read: not JSON, invalid, or of a format this blocksnap does not know.
#[derive(Clone, Debug, Serialize)]
pub struct DamagedDoc {
    /// The document as a person finds it (its path in a local store).
    pub path: std::path::PathBuf,
    /// Its key in the store.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
    /// True when it is of a newer format (a newer blocksnap wrote it), not damaged.
    pub newer: bool,
}

impl DamagedDoc {
    pub(crate) fn new(store: &Store, key: &str, e: &DocError) -> DamagedDoc {
        DamagedDoc {
            path: store.describe(key).into(),
            key: key.into(),
            problem: e.to_string(),
            newer: matches!(e, DocError::UnknownFormat { .. }),
        }
    }
}

/// The damaged documents a store's listings skipped, each reported once.
#[derive(Debug, Default)]
pub(crate) struct DamageLog(Mutex<BTreeMap<String, (DamagedDoc, bool)>>);

impl DamageLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (DamagedDoc, bool)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle on the damaged documents a store skipped, to report them after a command
/// ([`Store::damage_warnings`]).
#[derive(Clone, Debug)]
pub struct DamageWarnings(Arc<DamageLog>);

impl DamageWarnings {
    /// Reports, through `progress`, each skipped document not reported yet.
    pub fn warn(&self, progress: &dyn Progress) {
        let mut log = self.0.lock();
        for (doc, reported) in log.values_mut() {
            if !*reported {
                *reported = true;
                progress.message(&damage_warning(doc));
            }
        }
    }
}

/// The warning for a document a listing skipped.
fn damage_warning(d: &DamagedDoc) -> String {
    if d.newer {
        format!("warning: skipped {}: {}", d.path.display(), d.problem)
    } else {
        format!(
            "warning: skipped the damaged document {}: {}; `blocksnap repair documents` moves it \
             to quarantine/ in the store",
            d.path.display(),
            d.problem
        )
    }
}

impl Store {
    /// Records a document a listing skipped, to be reported once (see [`Store::warn_damaged`]).
    pub(crate) fn note_damaged(&self, doc: DamagedDoc) {
        self.damaged
            .lock()
            .entry(doc.key.clone())
            .or_insert((doc, false));
    }

    /// The documents of `kind` that listings so far skipped.
    pub(crate) fn skipped(&self, kind: Kind) -> Vec<DamagedDoc> {
        self.damaged
            .lock()
            .values()
            .filter(|(d, _)| kind.name_of(&d.key).is_some())
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Reports, through `progress`, each damaged document listings skipped and did not
    /// report yet.
    pub fn warn_damaged(&self, progress: &dyn Progress) {
        self.damage_warnings().warn(progress);
    }

    /// A handle that reports the damaged documents this store's listings skip, usable after
    /// the store is gone (the CLI reports them when a command ends, whatever its result).
    pub fn damage_warnings(&self) -> DamageWarnings {
        DamageWarnings(self.damaged.clone())
    }

    /// The error for a backend failure on `key`, naming the object as a person finds it.
    pub(crate) fn object_error(&self, key: &str) -> impl FnOnce(BackendError) -> StoreError {
        let described = self.describe(key);
        move |e| StoreError::backend(e).context(&described)
    }

    /// The bytes of `key` if it is at most `max` bytes long (`Err(size)` if longer, found
    /// before reading it), or `None` if there is no such object.
    pub(crate) fn get_bounded(
        &self,
        key: &str,
        max: u64,
    ) -> Result<Option<std::result::Result<Vec<u8>, u64>>> {
        if let Some(bytes) = self.doc_cache.get(key) {
            if bytes.len() as u64 <= max {
                return Ok(Some(Ok(bytes.to_vec())));
            }
        }
        if self.doc_cache.is_absent(key) {
            return Ok(None);
        }
        match self.backend().get_bounded(key, max) {
            Ok(b) => {
                self.doc_cache.put(key, &b, None);
                Ok(Some(Ok(b)))
            }
            Err(BackendError::TooLarge { size, .. }) => Ok(Some(Err(size))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.object_error(key)(e)),
        }
    }

    /// The bytes of the document (or other small object) `key`, or `None` if there is no such
    /// object. One larger than [`MAX_DOCUMENT_LEN`] is not read: it is
    /// [`StoreError::Damaged`], naming it and the command that sets it aside.
    pub(crate) fn get_object(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.get_bounded(key, MAX_DOCUMENT_LEN)? {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(bytes)),
            Some(Err(size)) => Err(self.damaged_doc(key, &too_large(key, size))),
        }
    }

    /// The bytes of the document `key` of `kind`: `None` if there is none, `Some(Err)` if it is
    /// larger than any document can be (then it is damaged, like one that does not parse).
    pub(crate) fn doc_bytes(
        &self,
        key: &str,
    ) -> Result<Option<std::result::Result<Vec<u8>, DocError>>> {
        Ok(self
            .get_bounded(key, MAX_DOCUMENT_LEN)?
            .map(|r| r.map_err(|size| too_large(key, size))))
    }

    /// The document of `kind` named `name`, or `None` if there is none. One that does not
    /// parse is [`StoreError::Damaged`], naming it and the command that sets it aside.
    pub(crate) fn doc<D: Document>(&self, kind: Kind, name: &str) -> Result<Option<D>> {
        let key = kind.key(name);
        let Some(bytes) = self.get_object(&key)? else {
            return Ok(None);
        };
        D::from_json(&bytes)
            .map(Some)
            .map_err(|e| self.damaged_doc(&key, &e))
    }

    /// [`Store::doc`] with the version to swap it against.
    pub(crate) fn doc_versioned<D: Document>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<(D, Version)>> {
        let key = kind.key(name);
        let (bytes, version) = match self.backend().get_versioned_bounded(&key, MAX_DOCUMENT_LEN) {
            Ok(v) => {
                // Read afresh (what a swap that failed needs), and the cache brought up to date.
                self.doc_cache.put(&key, &v.0, Some(v.1.clone()));
                v
            }
            Err(e) if e.is_not_found() => {
                self.doc_cache.put_absent(&key);
                return Ok(None);
            }
            Err(BackendError::TooLarge { size, .. }) => {
                return Err(self.damaged_doc(&key, &too_large(&key, size)));
            }
            Err(e) => return Err(self.object_error(&key)(e)),
        };
        let doc = D::from_json(&bytes).map_err(|e| self.damaged_doc(&key, &e))?;
        Ok(Some((doc, version)))
    }

    /// [`Store::doc_versioned`], from the document cache when it holds the document with its
    /// version: for the first try of a swap (one that fails because the document changed
    /// meanwhile reads it afresh with [`Store::doc_versioned`]).
    pub(crate) fn doc_versioned_cached<D: Document>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<(D, Version)>> {
        let key = kind.key(name);
        match self.doc_cache.get_versioned(&key) {
            Some((bytes, version)) => {
                let doc = D::from_json(&bytes).map_err(|e| self.damaged_doc(&key, &e))?;
                Ok(Some((doc, version)))
            }
            None if self.doc_cache.is_absent(&key) => Ok(None),
            None => self.doc_versioned(kind, name),
        }
    }

    /// The error for the document at `key` that does not parse.
    pub(crate) fn damaged_doc(&self, key: &str, e: &DocError) -> StoreError {
        StoreError::Damaged(format!(
            "{}: {e}; `blocksnap repair documents` moves it to quarantine/ in the store, \
             `blocksnap check` lists all damage",
            self.describe(key)
        ))
    }

    /// Creates the document of `kind` named `name`; one that exists already is
    /// [`StoreError::Exists`]. Returns its size in bytes.
    pub(crate) fn create_doc<D: Document>(&self, kind: Kind, name: &str, doc: &D) -> Result<u64> {
        let key = kind.key(name);
        let bytes = doc.to_json();
        match self.backend().create(&key, &bytes) {
            Ok(()) => {
                self.doc_cache.put(&key, &bytes, None);
                Ok(bytes.len() as u64)
            }
            Err(e) if e.is_already_exists() => Err(StoreError::Exists {
                kind: kind.noun(),
                name: name.into(),
            }),
            Err(e) => Err(self.object_error(&key)(e)),
        }
    }

    /// Writes `doc` over the document of `kind` named `name` if it is still at `version`
    /// (`None`: if there is none yet). [`StoreError::Conflict`] if another writer changed it.
    pub(crate) fn replace_doc<D: Document>(
        &self,
        kind: Kind,
        name: &str,
        doc: &D,
        version: Option<&Version>,
    ) -> Result<Version> {
        let key = kind.key(name);
        let bytes = doc.to_json();
        match self.backend().replace(&key, &bytes, version) {
            Ok(v) => {
                self.doc_cache.put(&key, &bytes, Some(v.clone()));
                Ok(v)
            }
            Err(BackendError::Conflict { .. } | BackendError::AlreadyExists { .. }) => {
                Err(StoreError::Conflict {
                    kind: kind.noun(),
                    name: name.into(),
                })
            }
            Err(e) => Err(self.object_error(&key)(e)),
        }
    }

    /// Reads the document of `kind` named `name`, lets `change` edit it, and writes it back
    /// if nobody changed it meanwhile — else reads it again and retries, so concurrent edits
    /// (two grants of one key) are never lost. `change` may refuse with an error; a missing
    /// document is `Ok(None)` without calling it.
    pub(crate) fn update_doc<D: Document>(
        &self,
        kind: Kind,
        name: &str,
        mut change: impl FnMut(&mut D) -> Result<()>,
    ) -> Result<Option<D>> {
        let mut fresh = false;
        loop {
            let read = if fresh {
                self.doc_versioned::<D>(kind, name)?
            } else {
                self.doc_versioned_cached::<D>(kind, name)?
            };
            let Some((mut doc, version)) = read else {
                return Ok(None);
            };
            change(&mut doc)?;
            match self.replace_doc(kind, name, &doc, Some(&version)) {
                Ok(_) => return Ok(Some(doc)),
                Err(StoreError::Conflict { .. }) => fresh = true,
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies the object `from` to `to` (create-only, durable), in pieces of at most 8 MiB:
    /// never whole in memory, whatever its size. `to` existing is
    /// [`BackendError::AlreadyExists`].
    pub(crate) fn copy_object(
        &self,
        from: &str,
        to: &str,
    ) -> std::result::Result<(), BackendError> {
        const PIECE: u64 = 8 << 20;
        let backend = self.backend();
        let reader = backend.open(from)?;
        let under = to
            .rsplit_once('/')
            .map_or(String::new(), |(dir, _)| format!("{dir}/"));
        let mut staged = backend.stage(&under)?;
        let size = reader.size();
        let mut at = 0;
        while at < size {
            let n = (size - at).min(PIECE);
            let piece = reader.read_at(at, n)?;
            std::io::Write::write_all(&mut staged, &piece)
                .map_err(|e| BackendError::from_io("create", to, &backend.location(), e))?;
            at += n;
        }
        staged.commit(to)
    }

    /// Deletes the object `key` (a missing one is fine).
    pub(crate) fn delete_object(&self, key: &str) -> Result<()> {
        // A remembered listing of the packs may name this one: forget it.
        *self.packs_listed.lock().expect("not poisoned") = None;
        self.doc_cache.forget(key);
        self.backend()
            .delete(key)
            .map_err(|e| self.object_error(key)(e))
    }

    /// The names of every object of `kind`, sorted.
    pub(crate) fn names(&self, kind: Kind) -> Result<Vec<String>> {
        let prefix = kind.prefix();
        Ok(self
            .backend()
            .list(&prefix)
            .map_err(|e| self.object_error(&prefix)(e))?
            .into_iter()
            .filter_map(|m| kind.name_of(&m.key).map(str::to_string))
            .collect())
    }

    /// Every document of `kind` with its name. A damaged one is skipped and recorded, to be
    /// reported through [`Store::warn_damaged`]; one deleted while listing is skipped.
    pub(crate) fn docs<D: Document>(&self, kind: Kind) -> Result<Vec<(String, D)>> {
        let mut out = Vec::new();
        for name in self.names(kind)? {
            let key = kind.key(&name);
            let Some(bytes) = self.doc_bytes(&key)? else {
                continue;
            };
            match bytes.and_then(|b| D::from_json(&b)) {
                Ok(doc) => out.push((name, doc)),
                Err(e) => self.note_damaged(DamagedDoc::new(self, &key, &e)),
            }
        }
        Ok(out)
    }

    /// [`Store::docs`] without the names.
    pub(crate) fn list_docs<D: Document>(&self, kind: Kind) -> Result<Vec<D>> {
        Ok(self.docs(kind)?.into_iter().map(|(_, d)| d).collect())
    }
}

/// What store data `backend` holds, in words (`3 packs, 2 snapshot documents`), if any: a
/// place with this and no `config` is a store that lost its config, not an empty one.
pub(crate) fn store_data_held(backend: &dyn Backend) -> Option<String> {
    let count = |kind: Kind| -> usize {
        backend.list(&kind.prefix()).map_or(0, |l| {
            l.iter().filter(|m| kind.name_of(&m.key).is_some()).count()
        })
    };
    let parts: Vec<String> = [
        (count(Kind::Pack), "pack"),
        (count(Kind::Snapshot), "snapshot document"),
        (count(Kind::Image), "image document"),
        (count(Kind::Trash), "trash entry"),
        (count(Kind::Key), "key document"),
        (count(Kind::Account), "account document"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}{}", if n == 1 { "" } else { "s" }))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}
