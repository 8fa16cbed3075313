//! Volumes, snapshot deletion and the trash.
//!
//! Deleting a snapshot moves its document into a tombstone in `trash/` (written first, then the
//! snapshot document removed), where it stays restorable until the store's trash retention ends.
//! Nothing a tombstone references is reclaimed before then: prune counts tombstones as live.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use blocksnap_manifest::{Document, SnapshotDoc, TrashDoc, VolumeDoc};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::store::Store;

/// A trash entry as `trash list` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct TrashEntry {
    /// The deleted object's id.
    pub id: String,
    /// `snapshot`.
    pub kind: String,
    /// When it was deleted.
    pub deleted: String,
    /// When it may be removed for good.
    pub expires: String,
    /// Its volume.
    pub volume: String,
    /// Its size.
    pub size: u64,
}

impl Store {
    fn volume_path(&self, name: &str) -> PathBuf {
        self.root().join("volumes").join(format!("{name}.json"))
    }

    fn trash_path(&self, id: blocksnap_manifest::SnapshotId) -> PathBuf {
        self.root().join("trash").join(format!("{id}.json"))
    }

    /// Registers a volume: a name for an image file or block device, with tags.
    pub fn add_volume(
        &self,
        name: &str,
        path: &Path,
        tags: BTreeMap<String, String>,
    ) -> Result<VolumeDoc> {
        let abs = fs::canonicalize(path)
            .map_err(|e| StoreError::Usage(format!("volume path {}: {e}", path.display())))?;
        let doc = VolumeDoc {
            format: VolumeDoc::FORMAT.into(),
            name: name.into(),
            path: abs.to_string_lossy().into_owned(),
            tags,
            created: fsutil::now_rfc3339(),
        };
        doc.validate()
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        if self.volume_path(name).exists() {
            return Err(StoreError::Usage(format!("volume '{name}' already exists")));
        }
        fsutil::write_atomic(&self.volume_path(name), &doc.to_json(), 0o644)?;
        Ok(doc)
    }

    /// Every registered volume, by name.
    pub fn list_volumes(&self) -> Result<Vec<VolumeDoc>> {
        crate::store::read_docs(&self.root().join("volumes"))
    }

    /// A registered volume, if `name` is one.
    pub fn volume(&self, name: &str) -> Result<Option<VolumeDoc>> {
        if blocksnap_manifest::validate_name("volume", "name", name).is_err() {
            return Ok(None);
        }
        let path = self.volume_path(name);
        if !path.is_file() {
            return Ok(None);
        }
        VolumeDoc::from_json(&fsutil::read(&path)?)
            .map(Some)
            .map_err(|e| StoreError::Damaged(format!("{}: {e}", path.display())))
    }

    /// Moves a snapshot to the trash, restorable for the store's trash retention.
    pub fn delete_snapshot(&self, access: &Access, snapshot: &str) -> Result<TrashEntry> {
        let doc = self.resolve_snapshot(snapshot)?;
        let now = jiff::Timestamp::now();
        let days = i64::from(self.config().trash_retention_days);
        let expires = now
            .checked_add(jiff::SignedDuration::from_hours(24 * days))
            .map_err(|e| StoreError::Other(format!("trash expiry: {e}")))?;
        let tomb = TrashDoc {
            format: TrashDoc::FORMAT.into(),
            id: doc.id,
            kind: "snapshot".into(),
            deleted: fsutil::rfc3339(now),
            expires: fsutil::rfc3339(expires),
            deleted_by: access.account.clone(),
            snapshot: doc,
        };
        // Tombstone first: a crash in between leaves the snapshot both live and in the trash,
        // never in neither.
        fsutil::write_atomic(&self.trash_path(tomb.id), &tomb.to_json(), 0o644)?;
        let live = self.snapshot_path(tomb.id);
        fs::remove_file(&live).map_err(StoreError::io("cannot remove", &live))?;
        fsutil::sync_dir(live.parent().expect("snapshots/"))?;
        Ok(entry(&tomb))
    }

    /// Every tombstone, oldest deletion first.
    pub fn list_trash(&self) -> Result<Vec<TrashDoc>> {
        let mut v: Vec<TrashDoc> = crate::store::read_docs(&self.root().join("trash"))?;
        v.sort_by(|a, b| (&a.deleted, a.id).cmp(&(&b.deleted, b.id)));
        Ok(v)
    }

    /// The trash as `trash list` shows it.
    pub fn trash_entries(&self) -> Result<Vec<TrashEntry>> {
        Ok(self.list_trash()?.iter().map(entry).collect())
    }

    /// Brings a snapshot back from the trash.
    pub fn restore_trash(&self, id: &str) -> Result<TrashEntry> {
        let want = if id.starts_with("snap-") {
            id.to_string()
        } else {
            format!("snap-{id}")
        };
        let matches: Vec<TrashDoc> = self
            .list_trash()?
            .into_iter()
            .filter(|t| t.id.to_string().starts_with(&want))
            .collect();
        let tomb = match matches.len() {
            1 => matches.into_iter().next().expect("one"),
            0 => {
                return Err(StoreError::Usage(format!(
                    "nothing in the trash matches '{id}'; see `blocksnap trash list`"
                )));
            }
            n => {
                return Err(StoreError::Usage(format!(
                    "'{id}' matches {n} entries in the trash; give more of the id"
                )));
            }
        };
        self.write_snapshot(&tomb.snapshot)?;
        let path = self.trash_path(tomb.id);
        fs::remove_file(&path).map_err(StoreError::io("cannot remove", &path))?;
        Ok(entry(&tomb))
    }

    /// Removes tombstones for good: all of them, or only those past their expiry. Their data is
    /// reclaimed by `prune`. Returns what was removed.
    pub fn empty_trash(&self, expired_only: bool) -> Result<Vec<TrashEntry>> {
        let now = fsutil::now_rfc3339();
        let mut removed = Vec::new();
        for tomb in self.list_trash()? {
            if expired_only && tomb.expires.as_str() > now.as_str() {
                continue;
            }
            let path = self.trash_path(tomb.id);
            fs::remove_file(&path).map_err(StoreError::io("cannot remove", &path))?;
            removed.push(entry(&tomb));
        }
        Ok(removed)
    }

    /// Every snapshot document that keeps data alive: live ones and those in the trash.
    pub fn referenced_snapshots(&self) -> Result<Vec<SnapshotDoc>> {
        let mut v = self.list_snapshots()?;
        v.extend(self.list_trash()?.into_iter().map(|t| t.snapshot));
        Ok(v)
    }
}

fn entry(t: &TrashDoc) -> TrashEntry {
    TrashEntry {
        id: t.id.to_string(),
        kind: t.kind.clone(),
        deleted: t.deleted.clone(),
        expires: t.expires.clone(),
        volume: t.snapshot.volume.clone(),
        size: t.snapshot.size,
    }
}
