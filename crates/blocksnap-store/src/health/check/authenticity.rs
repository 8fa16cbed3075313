//! The authenticity phase of `check`: every snapshot and image document (live and in the
//! trash), every volume and policy document, and every key this account unwraps, verified
//! under its key. A document that fails is listed in `tampered` and as a problem: someone who
//! can write to the store may have changed it.

use blocksnap_manifest::{HeadDoc, PolicyDoc, Sealed, VolumeDoc};

use super::documents::Documents;
use super::{CheckReport, Keys};
use crate::ErrorKind;
use crate::repo::Store;
use crate::repo::layout::Kind;

impl Store {
    /// Verifies what `docs` holds and the volume and policy documents; documents under a key
    /// this account cannot use are left to the not-verified summary.
    pub(super) fn check_authenticity(
        &self,
        docs: &Documents,
        keys: &mut Keys<'_>,
        report: &mut CheckReport,
    ) {
        for (doc, place) in &docs.snapshots {
            self.judge_document(doc, place, keys, report);
        }
        for (doc, place) in &docs.images {
            self.judge_document(doc, place, keys, report);
            // Launch permissions count only as the owner signed them.
            if let Err(e) = self.verify_image_signature(doc) {
                let what = format!("{e}{place}");
                if !report.tampered.contains(&what) {
                    report.tampered.push(what.clone());
                    report.problems.push(what);
                }
            }
        }
        // A volume head counting fewer snapshots than this client saw was put back.
        for (volume, head) in self.docs::<HeadDoc>(Kind::Head).unwrap_or_default() {
            let pinned = self.pinned_seq(&volume).unwrap_or(0);
            if head.seq < pinned {
                let why = self
                    .tampered(
                        "volume head",
                        &volume,
                        &format!(
                            "it counts {} snapshots of the volume, but this client saw snapshot \
                             number {pinned}: an older head was put back",
                            head.seq
                        ),
                    )
                    .to_string();
                report.tampered.push(why.clone());
                report.problems.push(why);
            }
        }
        for name in self.names(Kind::Account).unwrap_or_default() {
            if let Err(e @ crate::StoreError::Tampered(_)) = self.verified_account(&name) {
                report.tampered.push(e.to_string());
                report.problems.push(e.to_string());
            }
        }
        for doc in self.docs::<VolumeDoc>(Kind::Volume).unwrap_or_default() {
            self.judge_document(&doc.1, "", keys, report);
        }
        for doc in self.docs::<PolicyDoc>(Kind::Policy).unwrap_or_default() {
            self.judge_document(&doc.1, "", keys, report);
        }
    }

    /// Lists the keys this account could not use because they failed authentication (their
    /// document, or what this client pinned), and plaintext asked of an encrypted store: after
    /// every phase that asked for keys.
    pub(super) fn report_refused_keys(keys: &Keys<'_>, report: &mut CheckReport) {
        // Keys whose document failed verification, or that are not the key this client pinned.
        let mut refused: Vec<String> = keys
            .codecs
            .values()
            .filter_map(|c| match c {
                Err((ErrorKind::Tampered, why)) => Some(why.clone()),
                _ => None,
            })
            .collect();
        refused.sort();
        refused.dedup();
        for why in refused {
            if !report.tampered.contains(&why) {
                report.tampered.push(why.clone());
                report.problems.push(why);
            }
        }
    }

    fn judge_document<D: Sealed>(
        &self,
        doc: &D,
        place: &str,
        keys: &mut Keys<'_>,
        report: &mut CheckReport,
    ) {
        let result = self.verify_unkeyed(doc).and_then(|()| {
            match keys.get(doc.sealing_key()) {
                Some(codec) => self.verify(codec, doc),
                None => Ok(()), // not verified: the summary says why
            }
        });
        if let Err(e) = result {
            let what = format!("{e}{place}");
            report.tampered.push(what.clone());
            report.problems.push(what);
        }
    }
}
