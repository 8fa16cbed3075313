//! Damaged documents: found, skipped, quarantined.
//!
//! One document that does not parse (cut short, overwritten, of an unknown format) never stops
//! unrelated work: listings skip it with a warning naming the file ([`Store::warn_damaged`]).
//! Only `prune` refuses while any document is damaged, since it cannot know what a damaged
//! snapshot references. `repair documents` moves each damaged document into `quarantine/` in
//! the store (kept, never deleted), after which prune runs again. Documents of a format this
//! blocksnap does not know were written by a newer blocksnap: they are left in place (a newer
//! blocksnap can read them, and what they reference must not be pruned).

use std::fs;
use std::path::{Path, PathBuf};

use blocksnap_manifest::{
    AccountDoc, DocError, Document, ImageDoc, KeyDoc, PolicyDoc, SnapshotDoc, SnapshotId, TrashDoc,
    VolumeDoc,
};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::fsutil::{self, TMP_PREFIX};
use crate::progress::Progress;
use crate::repo::{DamagedDoc, Store};

/// The document directories of a store.
pub(crate) const DOC_DIRS: [&str; 7] = [
    "accounts",
    "keys",
    "snapshots",
    "trash",
    "volumes",
    "policies",
    "images",
];

/// Where `repair documents` moves damaged documents: `quarantine/<dir>/<file>`.
pub const QUARANTINE: &str = "quarantine";

/// Why the document `bytes` of directory `dir` cannot be read, if it cannot.
pub(crate) fn problem(dir: &str, bytes: &[u8]) -> Option<DocError> {
    match dir {
        "accounts" => AccountDoc::from_json(bytes).err(),
        "keys" => KeyDoc::from_json(bytes).err(),
        "snapshots" => SnapshotDoc::from_json(bytes).err(),
        "trash" => TrashDoc::from_json(bytes).err(),
        "volumes" => VolumeDoc::from_json(bytes).err(),
        "policies" => PolicyDoc::from_json(bytes).err(),
        "images" => ImageDoc::from_json(bytes).err(),
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
        for dir in DOC_DIRS {
            for path in doc_files(&self.root().join(dir))? {
                let bytes = match fs::read(&path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::io("cannot read", &path)(e)),
                };
                if let Some(e) = problem(dir, &bytes) {
                    out.push(DamagedDoc::new(path, &e));
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
                self.quarantine_path(&d.path)
            } else {
                self.quarantine(&d.path)?
            };
            report.moved.push(QuarantinedDoc {
                from: d.path,
                to,
                problem: d.problem,
            });
        }
        Ok(report)
    }

    /// Where `path` (a file of the store) goes in `quarantine/`: the same directory name and
    /// file name, with `.1`, `.2`, … added if that is taken.
    fn quarantine_path(&self, path: &Path) -> PathBuf {
        let dir_name = path
            .parent()
            .and_then(Path::file_name)
            .filter(|_| path.parent() != Some(self.root()))
            .map_or_else(PathBuf::new, PathBuf::from);
        let dir = self.root().join(QUARANTINE).join(dir_name);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let mut to = dir.join(&*name);
        let mut n = 1;
        while to.exists() {
            to = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        to
    }

    /// Moves a file of the store into `quarantine/` (see [`Store::quarantine_path`]) durably,
    /// and returns where it went.
    pub(crate) fn quarantine(&self, path: &Path) -> Result<PathBuf> {
        let to = self.quarantine_path(path);
        let dir = to.parent().expect("under quarantine/");
        fs::create_dir_all(dir).map_err(StoreError::io("cannot create", dir))?;
        fs::rename(path, &to).map_err(StoreError::io("cannot move to quarantine", path))?;
        fsutil::sync_dir(dir)?;
        if let Some(from) = path.parent() {
            fsutil::sync_dir(from)?;
        }
        Ok(to)
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
        let latest = self.latest_snapshot(volume)?;
        self.warn_damaged(progress);
        let suspects: Vec<DamagedDoc> = self
            .skipped_in(&self.root().join("snapshots"))
            .into_iter()
            .filter(|d| {
                let Ok(bytes) = fs::read(&d.path) else {
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
}

/// The `.json` files of `dir` (none if it does not exist), sorted.
fn doc_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io("cannot list", dir)(e)),
    };
    for e in entries {
        let path = e.map_err(StoreError::io("cannot list", dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".json") && !name.starts_with(TMP_PREFIX) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
