//! The summary of `check`: what could not be verified, by key; index entries into packs that
//! are gone; packs no snapshot uses; and the steps that heal what was found.

use std::collections::{BTreeMap, BTreeSet};

use blocksnap_manifest::PackId;

use super::packs::Packs;
use super::snapshots::Walk;
use super::{CheckReport, Keys};
use crate::error::ErrorKind;
use crate::repo::Store;

/// Says what could not be verified under each key that could not be used, and why; a key whose
/// grant is damaged is also a problem.
pub(super) fn report_unverified(keys: &Keys<'_>, report: &mut CheckReport) {
    for (key, u) in &keys.unverified {
        let why = match keys.codecs.get(key) {
            Some(Err((kind, why))) => {
                if *kind == ErrorKind::Damaged {
                    report.problems.push(why.clone());
                }
                why.clone()
            }
            _ => "not available".into(),
        };
        let mut what = Vec::new();
        if u.packs > 0 {
            what.push(format!(
                "{} {} ({} chunks)",
                u.packs,
                if u.packs == 1 { "pack" } else { "packs" },
                u.chunks
            ));
        }
        if !u.snapshots.is_empty() {
            let ids: Vec<String> = u.snapshots.iter().map(ToString::to_string).collect();
            what.push(format!(
                "the data of {} ({})",
                if ids.len() == 1 {
                    "1 snapshot".to_string()
                } else {
                    format!("{} snapshots", ids.len())
                },
                ids.join(", ")
            ));
        }
        report.not_verified.push(format!(
            "{} under key {}: {why}",
            what.join(" and "),
            key.map_or("-".into(), |k| k.to_string())
        ));
    }
}

impl Store {
    /// Index entries into packs that are gone (`stale`, per pack). The index is a cache of each
    /// user's, kept outside the store: a prune by another user or host leaves such entries in
    /// it, which are harmless (a note) unless a snapshot uses a chunk they place (damage).
    pub(super) fn report_stale_entries(
        &self,
        stale: &BTreeMap<PackId, u64>,
        walk: &Walk,
        report: &mut CheckReport,
    ) {
        for (pack, n) in stale {
            report.stale_index_entries += n;
            if walk.referenced.contains(pack) {
                report.problems.push(format!(
                    "pack {pack} is missing ({}), and the index places {n} chunks in it; \
                     `blocksnap repair packs` makes the index forget them",
                    self.describe_pack(pack)
                ));
            } else {
                // No snapshot uses them: not chunks of the store, and not damage.
                report.chunks -= n;
                report.chunks_damaged -= n;
                report.notes.push(format!(
                    "the index places {n} chunks in pack {pack}, which is not in the store \
                     ({}): pruned by another process or host, or deleted by hand; no snapshot \
                     uses them. The next snapshot (or `blocksnap repair packs`) makes the index \
                     forget them",
                    self.describe_pack(pack)
                ));
            }
        }
        report.missing_packs = stale
            .keys()
            .filter(|p| walk.referenced.contains(*p))
            .copied()
            .collect();
    }
}

/// Notes the packs that hold no chunk any snapshot uses (only known when every snapshot could
/// be walked).
pub(super) fn note_unused_packs(packs: &Packs, walk: &Walk, report: &mut CheckReport) {
    let mut unused: Vec<(PackId, u64)> = packs
        .listed
        .iter()
        .filter(|p| !walk.referenced.contains(&p.id))
        .map(|p| (p.id, packs.sizes.get(&p.id).copied().unwrap_or(p.size)))
        .collect();
    unused.sort();
    if !unused.is_empty() {
        let bytes: u64 = unused.iter().map(|(_, n)| n).sum();
        let ids: Vec<String> = unused.iter().map(|(id, _)| id.to_string()).collect();
        report.notes.push(format!(
            "{} packs ({bytes} bytes) hold no chunk any snapshot uses (left by deleted \
             snapshots or an interrupted run, or written by a snapshot still running): \
             {}; `blocksnap prune` removes them",
            unused.len(),
            ids.join(", ")
        ));
    }
}

/// The recovery procedure for what `report` found (docs/DESIGN-NOTES.md, "Recovering from
/// damage").
pub(super) fn next_steps(
    report: &CheckReport,
    read_data: bool,
    volumes: &BTreeSet<String>,
) -> Vec<String> {
    let mut steps = Vec::new();
    let record_damage = read_data && report.chunks_damaged > report.stale_index_entries;
    if !report.damaged_packs.is_empty() || !report.missing_packs.is_empty() {
        steps.push(format!(
            "run `blocksnap repair packs{}`: it moves the intact chunks of damaged packs to new \
             packs, sets the damaged packs aside (packs/XX/ID.damaged) and makes the index forget \
             the chunks that are lost, so that the next snapshots store them again",
            if record_damage { " --read-data" } else { "" }
        ));
    }
    if !report.damaged_snapshots.is_empty() {
        let vols: Vec<&str> = volumes.iter().map(String::as_str).collect();
        steps.push(format!(
            "snapshot the affected volumes again from their sources ({}): every lost chunk a \
             source still holds is stored again, and older snapshots that used it become whole \
             again",
            vols.join(", ")
        ));
        steps.push(
            "run `blocksnap check --read-data`: snapshots still damaged then hold data that no \
             source has any more, which cannot come back (they cannot be restored); delete them \
             (`blocksnap snapshot delete ID`) once nothing more is wanted from them"
                .into(),
        );
    }
    if !steps.is_empty() {
        steps.push(
            "the whole procedure is in docs/DESIGN-NOTES.md, \"Recovering from damage\"".into(),
        );
    }
    if !report.not_verified.is_empty() {
        steps.push(
            "what was not verified: run `blocksnap check` as an account holding a grant on each \
             key named (`--account NAME --identity FILE`; an account holding the key can run \
             `blocksnap key grant KEY ACCOUNT`), and make unreadable packs readable"
                .into(),
        );
    }
    steps
}
