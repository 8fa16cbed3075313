//! Snapshot deletion and the trash.
//!
//! Deleting a snapshot (or deregistering an image) moves its document into a tombstone in
//! `trash/` (written first, then the live document removed), where it stays restorable until the
//! store's trash retention ends. Nothing a tombstone references is reclaimed before then: prune
//! counts tombstones as live. A snapshot that a live image maps cannot be deleted.

use blocksnap_manifest::{Document, ImageDoc, SnapshotDoc, TrashDoc};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::repo::Store;
use crate::repo::layout::Kind;

/// A trash entry as `trash list` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct TrashEntry {
    /// The deleted object's id.
    pub id: String,
    /// `snapshot` or `image`.
    pub kind: String,
    /// The snapshot's volume or the image's name.
    pub name: String,
    /// When it was deleted.
    pub deleted: String,
    /// When it may be removed for good.
    pub expires: String,
    /// The snapshot's volume (empty for an image).
    pub volume: String,
    /// The snapshot's size, or the sum of the image's volumes.
    pub size: u64,
}

impl Store {
    /// Writes a tombstone for `id` holding `snapshot` or `image`, expiring after the store's
    /// trash retention.
    pub(crate) fn tombstone(
        &self,
        access: &Access,
        snapshot: Option<SnapshotDoc>,
        image: Option<ImageDoc>,
    ) -> Result<TrashDoc> {
        let now = jiff::Timestamp::now();
        let days = i64::from(self.config().trash_retention_days);
        let expires = now
            .checked_add(jiff::SignedDuration::from_hours(24 * days))
            .map_err(|e| StoreError::Other(format!("trash expiry: {e}")))?;
        let (id, kind) = match (&snapshot, &image) {
            (Some(s), _) => (s.id.to_string(), "snapshot"),
            (None, Some(i)) => (i.id.to_string(), "image"),
            (None, None) => return Err(StoreError::Other("an empty tombstone".into())),
        };
        let tomb = TrashDoc {
            format: TrashDoc::FORMAT.into(),
            id,
            kind: kind.into(),
            deleted: fsutil::rfc3339(now),
            expires: fsutil::rfc3339(expires),
            deleted_by: access.account.clone(),
            snapshot,
            image,
        };
        // A second deletion of an object already in the trash (it was put back by hand, or a
        // crash left it in both places) replaces the older tombstone.
        match self.create_doc(Kind::Trash, &tomb.id, &tomb) {
            Err(StoreError::Exists { .. }) => {
                self.delete_object(&Kind::Trash.key(&tomb.id))?;
                self.create_doc(Kind::Trash, &tomb.id, &tomb)?;
            }
            r => {
                r?;
            }
        }
        Ok(tomb)
    }

    /// Moves a snapshot to the trash, restorable for the store's trash retention. A snapshot
    /// that a live image maps is refused: deregister the image first.
    pub fn delete_snapshot(&self, access: &Access, snapshot: &str) -> Result<TrashEntry> {
        self.require_writable("snapshot delete")?;
        let doc = self.resolve_snapshot(snapshot)?;
        if let Some(image) = self.images_using(doc.id)?.first() {
            return Err(StoreError::Usage(format!(
                "snapshot {} is device {} of image '{}' ({}); deregister the image first \
                 (`blocksnap image deregister {} --delete-snapshots` deletes its snapshots too)",
                doc.id,
                image
                    .volumes
                    .iter()
                    .find(|v| v.snapshot == doc.id)
                    .map_or("?", |v| v.device.as_str()),
                image.name,
                image.id,
                image.name
            )));
        }
        self.trash_snapshot(access, doc)
    }

    /// Moves a snapshot document to the trash. Tombstone first: a crash in between leaves the
    /// snapshot both live and in the trash, never in neither.
    pub(crate) fn trash_snapshot(&self, access: &Access, doc: SnapshotDoc) -> Result<TrashEntry> {
        let (id, volume) = (doc.id, doc.volume.clone());
        let tomb = self.tombstone(access, Some(doc), None)?;
        self.delete_object(&Kind::Snapshot.key(&id.to_string()))?;
        self.refresh_head(&volume)?;
        Ok(entry(&tomb))
    }

    /// Every tombstone, oldest deletion first.
    pub fn list_trash(&self) -> Result<Vec<TrashDoc>> {
        let mut v: Vec<TrashDoc> = self.list_docs(Kind::Trash)?;
        v.sort_by(|a, b| (&a.deleted, &a.id).cmp(&(&b.deleted, &b.id)));
        Ok(v)
    }

    /// The trash as `trash list` shows it.
    pub fn trash_entries(&self) -> Result<Vec<TrashEntry>> {
        Ok(self.list_trash()?.iter().map(entry).collect())
    }

    /// Brings a snapshot or an image back from the trash. An image brings back those of its
    /// snapshots that are in the trash too.
    pub fn restore_trash(&self, id: &str) -> Result<TrashEntry> {
        self.require_writable("trash restore")?;
        let trash = self.list_trash()?;
        let matches: Vec<&TrashDoc> = trash
            .iter()
            .filter(|t| {
                t.id.starts_with(id)
                    || t.id
                        .split_once('-')
                        .is_some_and(|(_, hex)| !id.is_empty() && hex.starts_with(id))
            })
            .collect();
        let tomb = match matches.as_slice() {
            [one] => *one,
            [] => {
                return Err(StoreError::NotFound {
                    kind: "trash entry",
                    name: id.into(),
                    hint: "; see `blocksnap trash list`".into(),
                });
            }
            many => {
                return Err(StoreError::Ambiguous {
                    kind: "trash entry",
                    text: id.into(),
                    candidates: many.iter().map(|t| t.id.clone()).collect(),
                });
            }
        };
        if let Some(snapshot) = &tomb.snapshot {
            self.put_back_snapshot(snapshot)?;
        }
        if let Some(image) = &tomb.image {
            if self.list_images()?.iter().any(|i| i.name == image.name) {
                return Err(StoreError::Usage(format!(
                    "an image named '{}' exists; deregister or rename it before restoring {}",
                    image.name, image.id
                )));
            }
            for v in &image.volumes {
                if self.snapshot_doc(v.snapshot)?.is_some() {
                    continue;
                }
                let Some(t) = trash.iter().find(|t| t.id == v.snapshot.to_string()) else {
                    return Err(StoreError::Usage(format!(
                        "image {} cannot come back: the snapshot {} of its device {} was removed for good",
                        image.id, v.snapshot, v.device
                    )));
                };
                if let Some(s) = &t.snapshot {
                    self.put_back_snapshot(s)?;
                }
                self.remove_tombstone(&t.id)?;
            }
            self.write_image(image)?;
        }
        self.remove_tombstone(&tomb.id)?;
        Ok(entry(tomb))
    }

    fn remove_tombstone(&self, id: &str) -> Result<()> {
        self.delete_object(&Kind::Trash.key(id))
    }

    /// Removes tombstones for good: all of them, or only those past their expiry. Their data is
    /// reclaimed by `prune`. Returns what was removed.
    pub fn empty_trash(&self, expired_only: bool) -> Result<Vec<TrashEntry>> {
        self.require_writable("trash empty")?;
        let now = fsutil::now_rfc3339();
        let mut removed = Vec::new();
        for tomb in self.list_trash()? {
            if expired_only && tomb.expires.as_str() > now.as_str() {
                continue;
            }
            self.remove_tombstone(&tomb.id)?;
            removed.push(entry(&tomb));
        }
        Ok(removed)
    }

    /// Every snapshot document that keeps data alive: live ones and those in the trash.
    pub fn referenced_snapshots(&self) -> Result<Vec<SnapshotDoc>> {
        let mut v = self.list_snapshots()?;
        v.extend(self.list_trash()?.into_iter().filter_map(|t| t.snapshot));
        Ok(v)
    }
}

pub(crate) fn entry(t: &TrashDoc) -> TrashEntry {
    let (name, volume, size) = match (&t.snapshot, &t.image) {
        (Some(s), _) => (s.volume.clone(), s.volume.clone(), s.size),
        (None, Some(i)) => (
            i.name.clone(),
            String::new(),
            i.volumes.iter().map(|v| v.size).sum(),
        ),
        (None, None) => (String::new(), String::new(), 0),
    };
    TrashEntry {
        id: t.id.clone(),
        kind: t.kind.clone(),
        name,
        deleted: t.deleted.clone(),
        expires: t.expires.clone(),
        volume,
        size,
    }
}
