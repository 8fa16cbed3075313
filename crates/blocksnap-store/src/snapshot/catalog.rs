//! The snapshot documents: listed, resolved by id or prefix, committed — and each volume's
//! head, which names its newest snapshot so that a new snapshot finds its parent by reading one
//! object instead of every snapshot document (on an object store each is a request).
//!
//! The commit of a snapshot is two writes: the volume's head is swapped (compare-and-swap) to
//! name the new snapshot and count it, then the snapshot's document is created. A crash between
//! the two leaves a head naming a snapshot that does not exist; a head whose snapshot is gone
//! (never committed, deleted to the trash, or unreadable) is not trusted: the volume's snapshots
//! are then listed to find the newest, as before heads existed.

use std::collections::BTreeMap;

use blocksnap_manifest::{Document, HeadDoc, SnapshotDoc, SnapshotId};
use blocksnap_pack::ChunkCodec;

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::Kind;
use crate::repo::objects::DamagedDoc;
use crate::repo::resolve::resolve;

impl Store {
    /// Every snapshot document, oldest first. A damaged document is skipped and recorded, to be
    /// reported through [`Store::warn_damaged`]: one bad file never stops unrelated work.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotDoc>> {
        let mut out: Vec<SnapshotDoc> = self.list_docs(Kind::Snapshot)?;
        out.sort_by(|a, b| (&a.created, a.id).cmp(&(&b.created, b.id)));
        Ok(out)
    }

    /// The snapshot `id`, or `None` if it has no document.
    pub(crate) fn snapshot_doc(&self, id: SnapshotId) -> Result<Option<SnapshotDoc>> {
        let doc: Option<SnapshotDoc> = self.doc(Kind::Snapshot, &id.to_string())?;
        if let Some(d) = &doc {
            self.check_named(d, &id.to_string())?;
        }
        Ok(doc)
    }

    /// Refuses a snapshot document stored under another snapshot's name (an older one copied
    /// over a newer one: its MAC, bound to its own id, is valid, but it is not the snapshot
    /// asked for).
    fn check_named(&self, doc: &SnapshotDoc, name: &str) -> Result<()> {
        if doc.id.to_string() == name {
            return Ok(());
        }
        Err(self.tampered(
            "snapshot",
            name,
            &format!("its document holds snapshot {} instead", doc.id),
        ))
    }

    /// Resolves a snapshot by full id or unique prefix (`snap-0f3a`, `0f3a`).
    pub fn resolve_snapshot(&self, text: &str) -> Result<SnapshotDoc> {
        // A whole id is read directly: on an object store, one request rather than a listing
        // and a read. Anything else (a prefix, a missing id) goes through the listing, whose
        // errors name the candidates.
        if let Ok(id) = text.parse::<SnapshotId>() {
            let name = id.to_string();
            if let Some(doc) = self.doc::<SnapshotDoc>(Kind::Snapshot, &name)? {
                self.check_named(&doc, &name)?;
                return Ok(doc);
            }
        }
        let ids = self.names(Kind::Snapshot)?;
        let id = resolve(
            "snapshot",
            "blocksnap snapshot list",
            SnapshotId::PREFIX,
            text,
            &ids,
            |n| n.parse::<SnapshotId>().is_ok().then(|| n.clone()),
            |_| None,
        )?;
        let doc: SnapshotDoc =
            self.doc(Kind::Snapshot, id)?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "snapshot",
                    name: text.into(),
                    hint: " (it was deleted meanwhile)".into(),
                })?;
        self.check_named(&doc, id)?;
        Ok(doc)
    }

    /// The newest snapshot of a volume: the one its head names, else (no head, or a head whose
    /// snapshot is gone) the newest of the volume's snapshot documents.
    pub fn latest_snapshot(&self, volume: &str) -> Result<Option<SnapshotDoc>> {
        if let Some(head) = self.head(volume)? {
            match self.snapshot_doc(head.snapshot) {
                Ok(Some(doc)) if doc.volume == volume => return Ok(Some(doc)),
                Ok(_) | Err(StoreError::Damaged(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.latest_listed(volume)
    }

    /// The newest snapshot of `volume` among all snapshot documents.
    fn latest_listed(&self, volume: &str) -> Result<Option<SnapshotDoc>> {
        // With the document cache on, a listing of a few seconds ago stands (the source check
        // and the parent lookup of one snapshot create both ask, for a volume without a head).
        if let Some(doc) = self.doc_cache.latest_listed(volume) {
            return Ok(doc);
        }
        let latest = self
            .list_snapshots()?
            .into_iter()
            .rev()
            .find(|s| s.volume == volume);
        self.doc_cache.put_latest_listed(volume, latest.clone());
        Ok(latest)
    }

    /// The head of `volume`, if it has one that reads (a damaged head is no head: it is only an
    /// index of the snapshot documents).
    pub(crate) fn head(&self, volume: &str) -> Result<Option<HeadDoc>> {
        // Read with its version: with the document cache on, the commit's swap uses it.
        match self.doc_versioned_cached::<HeadDoc>(Kind::Head, volume) {
            Ok(h) => Ok(h.map(|(h, _)| h)),
            Err(StoreError::Damaged(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The parent a new snapshot of `volume` records: its latest snapshot, unless a damaged
    /// snapshot document might be a later one of the same volume. Then none, with a note: the
    /// parent is only the record of lineage, and every snapshot is complete on its own (each
    /// chunk is looked up in the index, none is taken from the parent), so a snapshot without
    /// one is always correct.
    pub(crate) fn parent_for(
        &self,
        volume: &str,
        progress: &dyn Progress,
    ) -> Result<Option<SnapshotId>> {
        // A head whose snapshot reads is the truth: it was swapped at that snapshot's commit.
        if let Some(head) = self.head(volume)? {
            match self.snapshot_doc(head.snapshot) {
                Ok(Some(doc)) if doc.volume == volume => return Ok(Some(doc.id)),
                Err(StoreError::Damaged(why)) => {
                    progress.message(&format!(
                        "note: the latest snapshot of volume '{volume}' cannot be read ({why}), so \
                         this snapshot records no parent. It is complete on its own: every chunk \
                         is looked up in the store, none is taken from a parent."
                    ));
                    return Ok(None);
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        let latest = self.latest_listed(volume)?;
        self.warn_damaged(progress);
        let suspects: Vec<DamagedDoc> = self
            .skipped(Kind::Snapshot)
            .into_iter()
            .filter(|d| {
                let Ok(Some(bytes)) = self.get_object(&d.key) else {
                    return true;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                    return true;
                };
                let other_volume = v["volume"].as_str().is_some_and(|v| v != volume);
                let older = match (v["created"].as_str(), &latest) {
                    (Some(c), Some(l)) => c < l.created.as_str(),
                    _ => false,
                };
                !other_volume && !older
            })
            .collect();
        if suspects.is_empty() {
            return Ok(latest.map(|s| s.id));
        }
        progress.message(&format!(
            "note: {} cannot be read and may be the latest snapshot of volume '{volume}', so this \
             snapshot records no parent{}. It is complete on its own: every chunk is looked up in \
             the store, none is taken from a parent.",
            suspects
                .iter()
                .map(|d| d.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            latest.map_or(String::new(), |l| format!(
                " (the latest readable one is {})",
                l.id
            ))
        ));
        Ok(None)
    }

    /// Commits a snapshot whose data is durable: swaps its volume's head to name it, then
    /// creates its document (the commit point). Returns the document's size.
    /// Its number in the volume (`seq`) is set here and it is sealed under `codec` (its key's).
    pub(crate) fn write_snapshot(&self, codec: &ChunkCodec, doc: &mut SnapshotDoc) -> Result<u64> {
        let seq = self.point_head(&doc.volume, doc.id, true)?;
        doc.seq = Some(seq);
        self.seal(codec, doc)?;
        self.ensure_lock_held(&format!("committing snapshot {}", doc.id), true)?;
        let n = self.create_doc(Kind::Snapshot, &doc.id.to_string(), &*doc)?;
        self.pin_seq(&doc.volume, seq)?;
        Ok(n)
    }

    /// Writes the document of a snapshot back from the trash (or a copy): it becomes the
    /// volume's head only if it is newer than the head's snapshot.
    pub(crate) fn put_back_snapshot(&self, doc: &SnapshotDoc) -> Result<u64> {
        self.ensure_lock_held(&format!("committing snapshot {}", doc.id), true)?;
        let n = self.create_doc(Kind::Snapshot, &doc.id.to_string(), doc)?;
        self.refresh_head(&doc.volume)?;
        Ok(n)
    }

    /// Swaps the head of `volume` to name `snapshot`; with `count`, one more snapshot of the
    /// volume was begun (its sequence number goes up).
    /// Returns the head's number. With `count`, a head numbered below what this client pinned
    /// for the volume is refused (an old head put back would reuse numbers); the new number is
    /// above both.
    fn point_head(&self, volume: &str, snapshot: SnapshotId, count: bool) -> Result<u64> {
        // First with the head as this command read it (from the document cache, when on): a
        // swap against a version another writer replaced fails, and the head is read afresh.
        let mut fresh = false;
        loop {
            let read = if fresh {
                self.doc_versioned::<HeadDoc>(Kind::Head, volume)
            } else {
                self.doc_versioned_cached::<HeadDoc>(Kind::Head, volume)
            };
            let current = match read {
                Ok(c) => c,
                // A damaged head is replaced: it only indexes the snapshot documents.
                Err(StoreError::Damaged(_)) => {
                    self.delete_object(&Kind::Head.key(volume))?;
                    None
                }
                Err(e) => return Err(e),
            };
            let head_seq = current.as_ref().map_or(0, |(h, _)| h.seq);
            let pinned = if count { self.pinned_seq(volume)? } else { 0 };
            if current.is_some() && head_seq < pinned {
                return Err(self.tampered(
                    "volume head",
                    volume,
                    &format!(
                        "it counts {head_seq} snapshots of the volume, but this client saw snapshot number {pinned}: an older head was put back"
                    ),
                ));
            }
            let seq = head_seq.max(pinned) + u64::from(count);
            let head = HeadDoc {
                format: HeadDoc::FORMAT.into(),
                volume: volume.into(),
                snapshot,
                seq,
                updated: fsutil::now_rfc3339(),
            };
            match self.replace_doc(Kind::Head, volume, &head, current.as_ref().map(|(_, v)| v)) {
                Ok(_) => return Ok(seq),
                Err(StoreError::Conflict { .. }) => fresh = true,
                Err(e) => return Err(e),
            }
        }
    }

    /// Points the head of `volume` at its newest snapshot document after one was removed or
    /// put back; a volume with no snapshot left keeps its head (and its count), which readers
    /// then do not trust.
    pub(crate) fn refresh_head(&self, volume: &str) -> Result<()> {
        if let Some(latest) = self.latest_listed(volume)? {
            if self.head(volume)?.is_none_or(|h| h.snapshot != latest.id) {
                self.point_head(volume, latest.id, false).map(|_| ())?;
            }
        }
        Ok(())
    }

    /// Snapshots matching a volume and every given tag.
    pub fn find_snapshots(
        &self,
        volume: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<SnapshotDoc>> {
        Ok(self
            .list_snapshots()?
            .into_iter()
            .filter(|s| volume.is_none_or(|v| s.volume == v))
            .filter(|s| tags.iter().all(|(k, v)| s.tags.get(k) == Some(v)))
            .collect())
    }
}
