//! Damaged documents: found, skipped, quarantined.
//!
//! One document that does not parse (cut short, overwritten, of an unknown format) never stops
//! unrelated work: listings skip it with a warning naming the file ([`Store::warn_damaged`]).
//! Only `prune` refuses while any document is damaged, since it cannot know what a damaged
//! snapshot references. `repair documents` moves each damaged document into `quarantine/` in
//! the store (kept, never deleted), after which prune runs again. Documents of a format this
//! blocksnap does not know were written by a newer blocksnap: they are left in place (a newer
//! blocksnap can read them, and what they reference must not be pruned).

use std::path::PathBuf;

use blocksnap_manifest::{
    AccountDoc, DocError, Document, HeadDoc, ImageDoc, KeyDoc, PolicyDoc, SnapshotDoc, TrashDoc,
    VolumeDoc,
};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::repo::layout::Kind;
use crate::repo::{DamagedDoc, Store};

/// Where `repair documents` moves damaged documents: `quarantine/<dir>/<file>`.
pub const QUARANTINE: &str = "quarantine";

/// Why the document `bytes` of `kind` cannot be read, if it cannot.
pub(crate) fn problem(kind: Kind, bytes: &[u8]) -> Option<DocError> {
    match kind {
        Kind::Account => AccountDoc::from_json(bytes).err(),
        Kind::Key => KeyDoc::from_json(bytes).err(),
        Kind::Snapshot => SnapshotDoc::from_json(bytes).err(),
        Kind::Trash => TrashDoc::from_json(bytes).err(),
        Kind::Volume => VolumeDoc::from_json(bytes).err(),
        Kind::Policy => PolicyDoc::from_json(bytes).err(),
        Kind::Image => ImageDoc::from_json(bytes).err(),
        Kind::Head => HeadDoc::from_json(bytes).err(),
        _ => None,
    }
}

/// One document `repair documents` moved (or, with `--dry-run`, would move).
#[derive(Clone, Debug, Serialize)]
pub struct QuarantinedDoc {
    /// Where it was.
    pub from: PathBuf,
    /// Where it is now, in `quarantine/`.
    pub to: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// What `repair documents` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairDocumentsReport {
    /// Damaged documents moved to `quarantine/`.
    pub moved: Vec<QuarantinedDoc>,
    /// Documents of a newer format, left in place (a newer blocksnap reads them).
    pub left: Vec<DamagedDoc>,
    /// True for `--dry-run`: nothing was moved.
    pub dry_run: bool,
}

impl Store {
    /// Every document of the store that cannot be read (damaged or of an unknown format),
    /// found by reading them all. Changes nothing.
    pub fn damaged_documents(&self) -> Result<Vec<DamagedDoc>> {
        let mut out = Vec::new();
        for kind in Kind::DOCUMENTS {
            for name in self.names(kind)? {
                let key = kind.key(&name);
                let Some(bytes) = self.doc_bytes(&key)? else {
                    continue;
                };
                let found = match bytes {
                    Ok(bytes) => problem(kind, &bytes),
                    Err(too_large) => Some(too_large),
                };
                if let Some(e) = found {
                    out.push(DamagedDoc::new(self, &key, &e));
                }
            }
        }
        Ok(out)
    }

    /// Fails, naming the damaged documents and `blocksnap repair documents`, unless every
    /// document reads: for `prune`, which must know everything that is referenced.
    pub(crate) fn require_sound_documents(&self, command: &str) -> Result<()> {
        let damaged = self.damaged_documents()?;
        if damaged.is_empty() {
            return Ok(());
        }
        let mut msg = format!(
            "{command} cannot run while documents are unreadable: it could delete data one of them \
             references. Unreadable:"
        );
        for d in &damaged {
            msg += &format!("\n  {}: {}", d.path.display(), d.problem);
        }
        if damaged.iter().any(|d| !d.newer) {
            msg += "\nRun `blocksnap repair documents` (it moves damaged documents to quarantine/ \
                    in the store, deleting nothing), then `blocksnap check`, then prune again. \
                    Whatever only a quarantined snapshot references is reclaimed by that prune: \
                    repair a document by hand first if it matters.";
        }
        if damaged.iter().any(|d| d.newer) {
            msg += "\nDocuments of a newer format were written by a newer blocksnap: prune with \
                    that version.";
        }
        Err(StoreError::Damaged(msg))
    }

    /// Moves every damaged document into `quarantine/<its directory>/` in the store (never
    /// deleting one, never replacing a file there), or with `dry_run` says what it would move.
    /// Documents of a newer format stay where they are.
    pub fn repair_documents(
        &self,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<RepairDocumentsReport> {
        let mut report = RepairDocumentsReport {
            dry_run,
            ..RepairDocumentsReport::default()
        };
        let _lock = if dry_run {
            None
        } else {
            Some(self.lock_exclusive("repair documents", progress)?)
        };
        for d in self.damaged_documents()? {
            if d.newer {
                report.left.push(d);
                continue;
            }
            let to = if dry_run {
                self.quarantine_key(&d.key)?
            } else {
                self.quarantine(&d.key)?
            };
            let to = PathBuf::from(self.describe(&to));
            report.moved.push(QuarantinedDoc {
                from: d.path,
                to,
                problem: d.problem,
            });
        }
        Ok(report)
    }

    /// Where the object `key` goes in `quarantine/`: the same folder and name, with `.1`, `.2`,
    /// … added if that is taken.
    fn quarantine_key(&self, key: &str) -> Result<String> {
        let base = Kind::Quarantine.key(key);
        let mut to = base.clone();
        let mut n = 1;
        while self
            .backend()
            .head(&to)
            .map_err(self.object_error(&to))?
            .is_some()
        {
            to = format!("{base}.{n}");
            n += 1;
        }
        Ok(to)
    }

    /// Moves the object `key` into `quarantine/` (see [`Store::quarantine_key`]): copied there
    /// (create-only, durable), then deleted; returns its new key. A crash between the two leaves
    /// it in both places, never in neither.
    pub(crate) fn quarantine(&self, key: &str) -> Result<String> {
        let not_found = || StoreError::NotFound {
            kind: "document",
            name: self.describe(key),
            hint: String::new(),
        };
        // A document larger than any can be is copied in pieces, never read whole.
        let bytes = match self.get_bounded(key, super::objects::MAX_DOCUMENT_LEN)? {
            None => return Err(not_found()),
            Some(Ok(bytes)) => Some(bytes),
            Some(Err(_)) => None,
        };
        loop {
            let to = self.quarantine_key(key)?;
            let copied = match &bytes {
                Some(bytes) => self.backend().create(&to, bytes),
                None => self.copy_object(key, &to),
            };
            match copied {
                Ok(()) => {
                    self.delete_object(key)?;
                    return Ok(to);
                }
                Err(e) if e.is_already_exists() => continue,
                Err(e) if e.is_not_found() => return Err(not_found()),
                Err(e) => return Err(self.object_error(&to)(e)),
            }
        }
    }

    /// The documents of `kind` that `repair documents` set aside in `quarantine/` and that
    /// have not been written again since: each name with where its quarantined copy is (as a
    /// person finds it), by name.
    pub(crate) fn quarantined(&self, kind: Kind) -> Result<Vec<(String, String)>> {
        let prefix = Kind::Quarantine.key(&kind.prefix());
        let mut out: Vec<(String, String)> = Vec::new();
        let listed = self
            .backend()
            .list(&prefix)
            .map_err(self.object_error(&prefix))?;
        for m in listed {
            let Some(file) = m.key.strip_prefix(&prefix) else {
                continue;
            };
            // `NAME.json`, or `NAME.json.N` when that was taken.
            let Some((name, _)) = file.split_once(".json") else {
                continue;
            };
            if name.is_empty() || name.contains('/') || out.iter().any(|(n, _)| n == name) {
                continue;
            }
            if self.get_object(&kind.key(name))?.is_some() {
                continue; // written again since
            }
            out.push((name.to_string(), self.describe(&m.key)));
        }
        out.sort();
        Ok(out)
    }

    /// The sentence for volume `name`, whose document is in quarantine at `at`: what happened
    /// and how to register it again (with the path its latest snapshot read, if known).
    pub(crate) fn quarantined_volume_hint(&self, name: &str, at: &str) -> String {
        let path = self
            .latest_snapshot(name)
            .ok()
            .flatten()
            .and_then(|s| s.source_path)
            .unwrap_or_else(|| "PATH".into());
        format!(
            "volume '{name}' is not registered any more: its document was damaged and \
             `blocksnap repair documents` moved it to {at}. Register it again with \
             `blocksnap volume add {name} {path}` (add its --tag K=V for policies), or repair \
             that file by hand and move it back to volumes/{name}.json (or delete it, if the \
             volume is gone for good)"
        )
    }

    /// Warns, through `progress`, of every volume whose document is in quarantine: it is not
    /// registered, so nothing (no policy, no `snapshot create NAME`) reaches it until it is
    /// registered again.
    pub fn warn_quarantined_volumes(&self, progress: &dyn Progress) -> Result<()> {
        for (name, at) in self.quarantined(Kind::Volume)? {
            progress.message(&format!(
                "warning: {}",
                self.quarantined_volume_hint(&name, &at)
            ));
        }
        Ok(())
    }
}
