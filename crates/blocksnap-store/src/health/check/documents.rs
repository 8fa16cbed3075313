//! The documents phase of `check`: every document of the store parses (those in the trash
//! too), no lock object is damaged, and leftovers of interrupted runs are noted.

use blocksnap_manifest::{Document, ImageDoc, SnapshotDoc, TrashDoc};

use super::{CheckReport, DAMAGED_SUFFIX};
use crate::error::Result;
use crate::repo::Store;
use crate::repo::layout::Kind;
use crate::repo::lock::LockStatus;

/// The snapshots and images the documents phase read, each with where it is (`""`, or
/// `", in the trash"`).
#[derive(Default)]
pub(super) struct Documents {
    pub snapshots: Vec<(SnapshotDoc, &'static str)>,
    pub images: Vec<(ImageDoc, &'static str)>,
}

impl Store {
    /// Reads and parses every document; a document that does not parse is a problem, one that
    /// cannot be read is not verified. Then damaged lock objects (problems) and leftovers
    /// (notes). Returns the snapshots and images found.
    pub(super) fn check_documents(&self, report: &mut CheckReport) -> Result<Documents> {
        let mut docs = Documents::default();
        for kind in Kind::DOCUMENTS {
            let names = match self.names(kind) {
                Ok(n) => n,
                Err(e) => {
                    report
                        .not_verified
                        .push(format!("the {} documents: {e}", kind.noun()));
                    continue;
                }
            };
            for name in names {
                let key = kind.key(&name);
                let bytes = match self.doc_bytes(&key) {
                    Ok(Some(Ok(b))) => b,
                    Ok(None) => continue,
                    // Larger than any document: damage, not read.
                    Ok(Some(Err(e))) => {
                        report
                            .problems
                            .push(format!("{}: {e}", self.describe(&key)));
                        continue;
                    }
                    Err(e) => {
                        report.not_verified.push(e.to_string());
                        continue;
                    }
                };
                let parsed = match kind {
                    Kind::Trash => TrashDoc::from_json(&bytes).map(|t| {
                        if let Some(s) = t.snapshot {
                            docs.snapshots.push((s, ", in the trash"));
                        }
                        if let Some(i) = t.image {
                            docs.images.push((i, ", in the trash"));
                        }
                    }),
                    Kind::Image => ImageDoc::from_json(&bytes).map(|d| docs.images.push((d, ""))),
                    Kind::Snapshot => {
                        SnapshotDoc::from_json(&bytes).map(|d| docs.snapshots.push((d, "")))
                    }
                    other => match crate::repo::documents::problem(other, &bytes) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    },
                };
                if let Err(e) = parsed {
                    report
                        .problems
                        .push(format!("{}: {e}", self.describe(&key)));
                }
            }
        }

        self.check_lock_objects(report)?;
        self.note_leftovers(report);
        Ok(docs)
    }

    /// Lock objects: those of running commands come and go; only damaged ones are problems
    /// (taking check's lock already removed stale ones of this host).
    fn check_lock_objects(&self, report: &mut CheckReport) -> Result<()> {
        for e in self.locks()? {
            if e.status == LockStatus::Damaged {
                report.problems.push(format!(
                    "damaged lock file {}: {}; `blocksnap unlock` removes it",
                    e.file.display(),
                    e.detail
                ));
            }
        }
        Ok(())
    }

    /// Notes temporary files of interrupted runs and packs set aside by `repair packs`.
    fn note_leftovers(&self, report: &mut CheckReport) {
        for t in self.backend().temporaries().unwrap_or_default() {
            report.notes.push(format!(
                "{} ({} bytes) is a temporary file left by an interrupted run (or written by a \
                 command still running); `blocksnap prune` removes it",
                self.describe(&t.key),
                t.size
            ));
        }
        let prefix = Kind::Pack.prefix();
        for m in self.backend().list(&prefix).unwrap_or_default() {
            if m.key.ends_with(DAMAGED_SUFFIX) {
                report.notes.push(format!(
                    "{} is a damaged pack `blocksnap repair packs` set aside (its intact chunks \
                     were moved to new packs); delete it once you no longer want to examine it",
                    self.describe(&m.key)
                ));
            }
        }
    }
}
