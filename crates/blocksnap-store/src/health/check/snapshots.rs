//! The snapshots phase of `check`: every chunk a snapshot references (those of its extent list,
//! then, with its key, every data chunk the list names) is indexed, in a pack that is there, and
//! not in a record known to be damaged.

use std::collections::{BTreeSet, HashSet};

use blocksnap_index::Location;
use blocksnap_manifest::{ChunkId, Extent, KeyId, PackId, SnapshotDoc};

use super::packs::Packs;
use super::{CheckReport, Keys, MAX_PER_SNAPSHOT, PackState};
use crate::error::Result;
use crate::packs::reader::{ChunkReader, Locator};
use crate::repo::Store;

/// What the snapshots phase found, for the summary.
pub(super) struct Walk {
    /// Packs that hold a chunk some snapshot uses (if only a damaged one).
    pub referenced: HashSet<PackId>,
    /// Every snapshot's extent list was read to the end: only then are packs no snapshot uses
    /// known.
    pub all_walked: bool,
    /// Volumes with a damaged snapshot: those to snapshot again.
    pub damaged_volumes: BTreeSet<String>,
}

impl Store {
    /// Judges every chunk of every snapshot in `docs` (placed by `locator`, against what the
    /// packs phase found) and files each snapshot as damaged, intact or not verified.
    pub(super) fn check_snapshots<'l>(
        &'l self,
        docs: &[(SnapshotDoc, &str)],
        locator: impl Fn() -> Locator<'l>,
        packs: &Packs,
        keys: &mut Keys<'_>,
        report: &mut CheckReport,
    ) -> Result<Walk> {
        let mut walk = Walk {
            referenced: HashSet::new(),
            all_walked: true,
            damaged_volumes: BTreeSet::new(),
        };
        for (doc, place) in docs {
            let f = self.judge_snapshot(doc, &locator, packs, keys, &mut walk.referenced)?;
            walk.all_walked &= f.walked;
            file_snapshot(doc, place, f, keys, &mut walk, report);
        }
        Ok(walk)
    }

    /// Judges the chunks of one snapshot: those of its extent list, then, when they are all
    /// fine and its key is available, every data chunk the list names.
    fn judge_snapshot<'l>(
        &'l self,
        doc: &SnapshotDoc,
        locator: &impl Fn() -> Locator<'l>,
        packs: &Packs,
        keys: &mut Keys<'_>,
        referenced: &mut HashSet<PackId>,
    ) -> Result<Findings> {
        let mut f = Findings::default();
        for id in &doc.extents.chunks {
            f.note(judge(id, doc.key, &locator(), packs)?, referenced);
        }
        let codec = keys.get(doc.key);
        f.no_key = codec.is_none();
        if let Some(codec) = codec.filter(|_| f.count == 0 && f.unknown.is_empty()) {
            let reader = ChunkReader::with_locator(self, codec, locator());
            let walk = reader.for_each_extent(doc, |_, extent| {
                if let Extent::Data { id, .. } = extent {
                    f.note(judge(&id, doc.key, &locator(), packs)?, referenced);
                }
                Ok(())
            });
            match walk {
                Ok(()) => f.walked = true,
                Err(e) => f.note(
                    ChunkState::Damaged(format!("its extent list cannot be read: {e}")),
                    referenced,
                ),
            }
        } else if f.count > 0 {
            f.note(
                ChunkState::Damaged(
                    "its extent list is damaged, so its data chunks could not be checked".into(),
                ),
                referenced,
            );
        }
        Ok(f)
    }
}

/// Files one snapshot by what was found about its chunks: damaged (its problems listed), not
/// verified (no key, or chunks that could not be judged), or intact.
fn file_snapshot(
    doc: &SnapshotDoc,
    place: &str,
    f: Findings,
    keys: &mut Keys<'_>,
    walk: &mut Walk,
    report: &mut CheckReport,
) {
    let what = format!("snapshot {} (volume {}{place})", doc.id, doc.volume);
    if f.count > 0 {
        report.snapshots += 1;
        report.damaged_snapshots.push(doc.id);
        walk.damaged_volumes.insert(doc.volume.clone());
        for found in f.found {
            report.problems.push(format!("{what}: {found}"));
        }
        if f.count > MAX_PER_SNAPSHOT {
            report.problems.push(format!(
                "snapshot {}: and {} more damaged chunks",
                doc.id,
                f.count - MAX_PER_SNAPSHOT
            ));
        }
    } else if f.no_key {
        report.unverified_snapshots.push(doc.id);
        keys.unverified
            .entry(doc.key)
            .or_default()
            .snapshots
            .push(doc.id);
    } else if !f.unknown.is_empty() {
        report.unverified_snapshots.push(doc.id);
        let more = f.unknown_count - f.unknown.len();
        report.not_verified.push(format!(
            "{what}: {}{}",
            f.unknown.join("; "),
            if more > 0 {
                format!("; and {more} more chunks not verified")
            } else {
                String::new()
            }
        ));
    } else {
        report.snapshots += 1;
        report.intact_snapshots.push(doc.id);
    }
}

/// The state of chunk `id` (of a snapshot under `key`): where `locator` places it, judged
/// against what the packs phase (and the index-entries phase) found.
fn judge(
    id: &ChunkId,
    key: Option<KeyId>,
    locator: &Locator<'_>,
    packs: &Packs,
) -> Result<ChunkState> {
    Ok(match locator.get(id)? {
        None if matches!(locator, Locator::Index(_)) => ChunkState::Damaged(format!(
            "chunk {id} is not in the index (its pack is missing or damaged, or an \
             interrupted run left it unindexed: `blocksnap repair index` finds it if a \
             pack holds it)"
        )),
        // Without an index (a read-only store) chunks are placed by the trailers read: one
        // found in none may still be in a pack whose trailer could not be read.
        None => unlocated(id, key, packs),
        Some(loc) => match packs.states.get(&loc.pack) {
            // Marks the missing pack as used: its stale entries are then damage.
            None => ChunkState::InDamagedRecord(
                format!("chunk {id} is in pack {}, which is missing", loc.pack),
                loc.pack,
            ),
            Some(PackState::Unreadable) => ChunkState::Unknown(format!(
                "chunk {id} is in pack {}, which could not be read",
                loc.pack
            )),
            Some(_) => match packs.damaged.get(&(loc.pack, loc.offset)) {
                Some(_) => ChunkState::InDamagedRecord(
                    format!(
                        "chunk {id} (pack {}, offset {}) is damaged (see the pack's problem)",
                        loc.pack, loc.offset
                    ),
                    loc.pack,
                ),
                None => ChunkState::Fine(loc),
            },
        },
    })
}

/// A chunk in no trailer the packs phase read: not verified if a pack it may be in (one that
/// could not be read, or one of its key that the account holds no grant on) was not read;
/// else damaged (no pack of the store holds it).
fn unlocated(id: &ChunkId, key: Option<KeyId>, packs: &Packs) -> ChunkState {
    let shown = |v: &[PackId]| {
        let mut s: Vec<String> = v.iter().take(3).map(ToString::to_string).collect();
        if v.len() > 3 {
            s.push(format!("and {} more", v.len() - 3));
        }
        s.join(", ")
    };
    let mut maybe = Vec::new();
    if !packs.unreadable.is_empty() {
        maybe.push(format!(
            "{} that could not be read ({})",
            if packs.unreadable.len() == 1 {
                "a pack"
            } else {
                "packs"
            },
            shown(&packs.unreadable)
        ));
    }
    if let Some(keyless) = packs.keyless.get(&key).filter(|v| !v.is_empty()) {
        maybe.push(format!(
            "{} of its key whose trailer needs a grant this account lacks ({})",
            if keyless.len() == 1 {
                "a pack"
            } else {
                "packs"
            },
            shown(keyless)
        ));
    }
    if maybe.is_empty() {
        ChunkState::Damaged(format!(
            "chunk {id} is in no pack of the store (every pack's trailer was read, the store \
             being read-only): its pack is missing or damaged"
        ))
    } else {
        ChunkState::Unknown(format!(
            "chunk {id} is in none of the packs read, and may be in {}",
            maybe.join(" or in ")
        ))
    }
}

/// What was found about one snapshot's chunks.
#[derive(Default)]
struct Findings {
    /// The first damaged chunks, described.
    found: Vec<String>,
    /// The first chunks that could not be checked, described.
    unknown: Vec<String>,
    /// Chunks that could not be checked, in all.
    unknown_count: usize,
    /// Damaged chunks in all.
    count: usize,
    /// Its extent list was read to the end and every data chunk judged.
    walked: bool,
    /// Its key is not available: its data chunks could not be judged.
    no_key: bool,
}

impl Findings {
    fn note(&mut self, state: ChunkState, referenced: &mut HashSet<PackId>) {
        match state {
            ChunkState::Fine(loc) => {
                referenced.insert(loc.pack);
            }
            ChunkState::InDamagedRecord(text, pack) => {
                // The pack is used, if only by a damaged chunk: prune must not be suggested.
                referenced.insert(pack);
                self.note(ChunkState::Damaged(text), referenced);
            }
            ChunkState::Damaged(text) => {
                self.count += 1;
                if self.found.len() < MAX_PER_SNAPSHOT {
                    self.found.push(text);
                }
            }
            ChunkState::Unknown(text) => {
                self.unknown_count += 1;
                if self.unknown.len() < MAX_PER_SNAPSHOT {
                    self.unknown.push(text);
                }
            }
        }
    }
}

/// The state of one chunk a snapshot needs.
enum ChunkState {
    Fine(Location),
    Damaged(String),
    /// Damaged, in a record of this pack.
    InDamagedRecord(String, PackId),
    Unknown(String),
}
