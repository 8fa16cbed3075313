//! `check [--read-data]`: find every inconsistency in a store, name what it affects, and say
//! what could not be verified.
//!
//! What needs no key is always checked: every document parses, every pack's header parses and
//! its length agrees with its trailer's, every index entry points at a pack that is there. With
//! the key, each pack's trailer is opened and every snapshot's extent list walked, so each chunk a
//! snapshot needs is known to be indexed, in a pack that is there, and not in a record known to
//! be damaged. `--read-data` also decrypts and verifies every record.
//!
//! Damage is reported per chunk: one flipped byte in a record is one damaged chunk, and only the
//! snapshots that use that chunk are damaged. A pack whose trailer cannot be read (truncated,
//! damaged) is damaged, but its records are judged one by one through the index entries that
//! point into it (those past its end are lost; with `--read-data` the others are decoded).

mod authenticity;
mod documents;
mod images;
mod index_entries;
mod packs;
mod snapshots;
mod summary;

use std::collections::{BTreeMap, HashMap};

use blocksnap_manifest::{ImageId, KeyId, PackId, SnapshotId};
use blocksnap_pack::{ChunkCodec, PackHeader};
use serde::Serialize;

use crate::access::Access;
use crate::error::{ErrorKind, Result};
use crate::packs::reader::Locator;
use crate::progress::Progress;
use crate::repo::Store;

/// At most this many damaged chunks are listed per snapshot and per pack; the rest are counted.
const MAX_PER_SNAPSHOT: usize = 10;

/// The suffix `repair packs` gives a damaged pack it sets aside (`packs/XX/ID.damaged`).
pub(crate) const DAMAGED_SUFFIX: &str = ".damaged";

/// What `check` found (the `--json` output).
///
/// The counts add up: `snapshots` = `damaged_snapshots` + `intact_snapshots` (snapshots
/// that could not be checked in full are in `unverified_snapshots`, not counted), and `chunks`
/// = `chunks_verified` + `chunks_damaged` + `chunks_not_verified`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// True when no problem was found and everything asked was verified: `problems` and
    /// `not_verified` are both empty. A monitor may trust `ok: true` as "all is well".
    pub ok: bool,
    /// Every inconsistency, each naming the object (exit status 4).
    pub problems: Vec<String>,
    /// What was asked but could not be verified, and why (exit status 5 when there are no
    /// problems): keys this account holds no grant on, packs that could not be read.
    pub not_verified: Vec<String>,
    /// The same as `not_verified` (its older name).
    pub skipped: Vec<String>,
    /// Harmless findings: leftovers of interrupted runs, packs no snapshot uses, damaged packs
    /// set aside; each says what removes it.
    pub notes: Vec<String>,
    /// What to do about the problems, in order (empty when there are none).
    pub next_steps: Vec<String>,
    /// Snapshots (live and in the trash) checked in full.
    pub snapshots: u64,
    /// Snapshots that cannot be restored in full.
    pub damaged_snapshots: Vec<SnapshotId>,
    /// Snapshots checked and found restorable (every chunk indexed, in a pack that is there,
    /// and, with `--read-data`, verified).
    pub intact_snapshots: Vec<SnapshotId>,
    /// Snapshots whose data could not be checked (no usable key), and found no damage in what
    /// could be.
    pub unverified_snapshots: Vec<SnapshotId>,
    /// Pack files in the store.
    pub packs: u64,
    /// Chunks in the store: those listed by the packs' trailers (or counted from a trailer's
    /// length when the key is not available), and those the index places in packs whose trailer
    /// cannot be read or that are missing.
    pub chunks: u64,
    /// Chunks decrypted and verified (`--read-data`).
    pub chunks_verified: u64,
    /// Chunks that are damaged or lost: a record that does not decode to its id, lies past the
    /// end of a truncated pack, or is in a missing pack.
    pub chunks_damaged: u64,
    /// Chunks whose data was not read: without `--read-data`, or without the key.
    pub chunks_not_verified: u64,
    /// Chunks in packs that the index does not list (dedup misses them until `repair index`).
    pub unindexed_chunks: u64,
    /// Index entries pointing at packs that are missing (`repair packs` removes them).
    pub stale_index_entries: u64,
    /// Packs that are there but damaged (`repair packs` sets them aside).
    pub damaged_packs: Vec<PackId>,
    /// Packs the index points at that are not there.
    pub missing_packs: Vec<PackId>,
    /// Images checked.
    pub images: u64,
    /// Images with a device that cannot be rebuilt.
    pub damaged_images: Vec<ImageId>,
    /// Documents and keys that fail authentication (each also in `problems`): someone who can
    /// write to the store may have changed them.
    pub tampered: Vec<String>,
}

/// How far a pack could be read.
enum PackState {
    /// Trailer read: its chunks are counted from it.
    Sound,
    /// Key not available, but header, footer and lengths agree: `entries` chunks not verified.
    Unverified,
    /// The trailer cannot be read: its chunks are judged through the index entries into it.
    NoTrailer {
        len: u64,
        header: Option<PackHeader>,
    },
    /// The file could not be read at all (permissions, I/O error): nothing about it is known.
    Unreadable,
}

/// Codecs by key, loaded once; a key that cannot be used is remembered with the reason, and
/// what could not be verified for want of it.
struct Keys<'a> {
    store: &'a Store,
    access: &'a Access,
    codecs: HashMap<Option<KeyId>, std::result::Result<ChunkCodec, (ErrorKind, String)>>,
    /// What could not be verified under each key that could not be used.
    unverified: BTreeMap<Option<KeyId>, Unverified>,
}

impl Keys<'_> {
    fn get(&mut self, key: Option<KeyId>) -> Option<&ChunkCodec> {
        let (store, access) = (self.store, self.access);
        self.codecs
            .entry(key)
            .or_insert_with(|| {
                store
                    .codec(access, key)
                    .map_err(|e| (e.kind(), e.to_string()))
            })
            .as_ref()
            .ok()
    }
}

/// What could not be verified under one key.
#[derive(Default)]
struct Unverified {
    packs: u64,
    chunks: u64,
    snapshots: Vec<SnapshotId>,
}

/// Damaged records listed per pack: the first few, then a count.
#[derive(Default)]
struct PerPack(BTreeMap<PackId, usize>);

impl PerPack {
    fn note(&mut self, problems: &mut Vec<String>, pack: PackId, why: &str) {
        let n = self.0.entry(pack).or_default();
        *n += 1;
        if *n <= MAX_PER_SNAPSHOT {
            problems.push(format!("pack {pack}: {why}"));
        }
    }

    fn finish(&self, problems: &mut Vec<String>) {
        for (pack, n) in &self.0 {
            if *n > MAX_PER_SNAPSHOT {
                problems.push(format!(
                    "pack {pack}: and {} more damaged chunks ({n} in all)",
                    n - MAX_PER_SNAPSHOT
                ));
            }
        }
    }
}

impl Store {
    /// Checks documents, packs, the index and every snapshot; with `read_data`, decrypts and
    /// verifies every chunk of every pack. See the module documentation.
    ///
    /// The phases run in this order, each adding to the report: documents (and lock objects and
    /// leftovers), packs, index entries, snapshots, images, then the summary (what could not be
    /// verified, stale index entries, unused packs, the next steps).
    pub fn check(
        &self,
        access: &Access,
        read_data: bool,
        progress: &dyn Progress,
    ) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let _lock = self.lock_reading("check", progress)?;
        // sled cannot open the index of a read-only store: chunk locations then come from the
        // trailers the packs phase reads, and there is no index whose entries could be stale.
        let index = match self.read_only() {
            Some(_) => None,
            None => Some(self.open_index_as_is(access, progress)?),
        };
        let mut keys = Keys {
            store: self,
            access,
            codecs: HashMap::new(),
            unverified: BTreeMap::new(),
        };

        let docs = self.check_documents(&mut report)?;
        self.check_authenticity(&docs, &mut keys, &mut report);
        let mut packs =
            self.check_packs(index.as_ref(), &mut keys, read_data, progress, &mut report)?;
        let stale = match &index {
            Some(index) => {
                self.check_index_entries(index, &mut packs, &mut keys, read_data, &mut report)?
            }
            None => BTreeMap::new(),
        };
        packs.per_pack.finish(&mut report.problems);
        let locator = || match &index {
            Some(index) => Locator::Index(index),
            None => Locator::Shared(&packs.trailer_locations),
        };
        let walk =
            self.check_snapshots(&docs.snapshots, locator, &packs, &mut keys, &mut report)?;
        images::check_images(&docs, &mut report);
        Self::report_refused_keys(&keys, &mut report);

        summary::report_unverified(&keys, &mut report);
        self.report_stale_entries(&stale, &walk, &mut report);
        if walk.all_walked {
            summary::note_unused_packs(&packs, &walk, &mut report);
        }
        report.damaged_packs = packs.damaged_packs.into_iter().collect();
        report.next_steps = summary::next_steps(&report, read_data, &walk.damaged_volumes);
        report.skipped = report.not_verified.clone();
        report.ok = report.problems.is_empty() && report.not_verified.is_empty();
        Ok(report)
    }
}
