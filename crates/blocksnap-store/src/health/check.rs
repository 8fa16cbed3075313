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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use blocksnap_index::Location;
use blocksnap_manifest::{
    ChunkId, Document, Extent, ImageDoc, ImageId, KeyId, PackId, SnapshotDoc, SnapshotId, TrashDoc,
};
use blocksnap_pack::{ChunkCodec, Entry, PackHeader, read_layout, read_trailer};
use rayon::prelude::*;
use serde::Serialize;

use crate::access::Access;
use crate::error::{ErrorKind, Result};
use crate::packs::PackObject;
use crate::packs::reader::{ChunkReader, Locator};
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::Kind;

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

/// Codecs by key, loaded once; a key that cannot be used is remembered with the reason.
struct Keys<'a> {
    store: &'a Store,
    access: &'a Access,
    codecs: HashMap<Option<KeyId>, std::result::Result<ChunkCodec, (ErrorKind, String)>>,
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

/// What was found about one snapshot's chunks.
#[derive(Default)]
struct Findings {
    /// The first damaged chunks, described.
    found: Vec<String>,
    /// Chunks that could not be checked.
    unknown: Vec<String>,
    /// Damaged chunks in all.
    count: usize,
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
            ChunkState::Unknown(text) => self.unknown.push(text),
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

impl Store {
    /// Checks documents, packs, the index and every snapshot; with `read_data`, decrypts and
    /// verifies every chunk of every pack. See the module documentation.
    pub fn check(
        &self,
        access: &Access,
        read_data: bool,
        progress: &dyn Progress,
    ) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let _lock = self.lock_reading("check", progress)?;
        // sled cannot open the index of a read-only store: chunk locations then come from the
        // trailers read below, and there is no index whose entries could be stale.
        let index = match self.read_only() {
            Some(_) => None,
            None => Some(self.open_index_as_is(access, progress)?),
        };
        let mut trailer_locations: HashMap<ChunkId, Location> = HashMap::new();
        let mut keys = Keys {
            store: self,
            access,
            codecs: HashMap::new(),
        };
        let mut unverified: BTreeMap<Option<KeyId>, Unverified> = BTreeMap::new();

        // Documents.
        let mut docs: Vec<(SnapshotDoc, &str)> = Vec::new();
        let mut images: Vec<(ImageDoc, &str)> = Vec::new();
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
                let bytes = match self.get_object(&key) {
                    Ok(Some(b)) => b,
                    Ok(None) => continue,
                    Err(e) => {
                        report.not_verified.push(e.to_string());
                        continue;
                    }
                };
                let parsed = match kind {
                    Kind::Trash => TrashDoc::from_json(&bytes).map(|t| {
                        if let Some(s) = t.snapshot {
                            docs.push((s, ", in the trash"));
                        }
                        if let Some(i) = t.image {
                            images.push((i, ", in the trash"));
                        }
                    }),
                    Kind::Image => ImageDoc::from_json(&bytes).map(|d| images.push((d, ""))),
                    Kind::Snapshot => SnapshotDoc::from_json(&bytes).map(|d| docs.push((d, ""))),
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

        // Lock objects: those of running commands come and go; only damaged ones are problems
        // (taking the lock above already removed stale ones of this host).
        for e in self.locks()? {
            if e.status == crate::LockStatus::Damaged {
                report.problems.push(format!(
                    "damaged lock file {}: {}; `blocksnap unlock` removes it",
                    e.file.display(),
                    e.detail
                ));
            }
        }
        self.note_leftovers(&mut report);

        // Packs: the layout of each without a key; with its key the trailer, and with
        // --read-data every record.
        let packs = self.list_packs()?;
        report.packs = packs.len() as u64;
        let mut states: HashMap<PackId, PackState> = HashMap::new();
        let mut sizes: HashMap<PackId, u64> = HashMap::new();
        let mut damaged_packs: BTreeSet<PackId> = BTreeSet::new();
        let mut per_pack = PerPack::default();
        // Records known to be damaged, by pack and offset, with the reason.
        let mut damaged: HashMap<(PackId, u64), String> = HashMap::new();
        progress.start(
            if read_data {
                "check data"
            } else {
                "check packs"
            },
            packs.len() as u64,
        );
        for p in &packs {
            let id = &p.id;
            let path = self.describe_pack(id);
            crate::cancel::check()?;
            progress.advance(1);
            let file = match self.open_pack(id) {
                Ok(f) => f,
                Err(e) => {
                    report.not_verified.push(format!("pack {id}: {e}"));
                    states.insert(*id, PackState::Unreadable);
                    continue;
                }
            };
            let len = file.size();
            sizes.insert(*id, len);
            let layout = match read_layout(&file) {
                Ok(l) => l,
                Err(blocksnap_pack::PackError::Io(e))
                    if e.kind() != std::io::ErrorKind::UnexpectedEof =>
                {
                    report
                        .not_verified
                        .push(format!("pack {id}: cannot read {}: {e}", path));
                    states.insert(*id, PackState::Unreadable);
                    continue;
                }
                Err(e) => {
                    report.problems.push(format!("pack {id} ({}): {e}", path));
                    damaged_packs.insert(*id);
                    let header = PackHeader::decode(&read_head(&file)).ok();
                    states.insert(*id, PackState::NoTrailer { len, header });
                    continue;
                }
            };
            let key = layout.header.key_id;
            let Some(codec) = keys.get(key) else {
                let u = unverified.entry(key).or_default();
                u.packs += 1;
                u.chunks += layout.entries;
                report.chunks += layout.entries;
                report.chunks_not_verified += layout.entries;
                states.insert(*id, PackState::Unverified);
                continue;
            };
            match read_trailer(&file, |_| Some(codec)) {
                Err(e) => {
                    report.problems.push(format!("pack {id} ({}): {e}", path));
                    damaged_packs.insert(*id);
                    states.insert(
                        *id,
                        PackState::NoTrailer {
                            len,
                            header: Some(layout.header),
                        },
                    );
                }
                Ok((header, entries)) => {
                    states.insert(*id, PackState::Sound);
                    report.chunks += entries.len() as u64;
                    for e in &entries {
                        let Some(index) = &index else {
                            trailer_locations.insert(e.id, crate::packs::writer::location(*id, e));
                            continue;
                        };
                        match index.get(&e.id)? {
                            // Harmless on its own (a crash between a pack and its index entries
                            // leaves this): only snapshots' chunks must be indexed, checked below.
                            None => report.unindexed_chunks += 1,
                            Some(loc)
                                if loc.pack == *id
                                    && (loc.offset, loc.stored_len, loc.raw_len)
                                        != (e.offset, e.stored_len, e.raw_len) =>
                            {
                                report.problems.push(format!(
                                    "the index places chunk {} at offset {} of pack {id}, its \
                                     trailer at {}; `blocksnap repair index` rebuilds the index",
                                    e.id, loc.offset, e.offset
                                ));
                            }
                            Some(_) => {}
                        }
                    }
                    if read_data {
                        let (errors, unread) =
                            verify_records(&file, &path, codec, &header, &entries);
                        let bad = errors.len() as u64;
                        report.chunks_verified += entries.len() as u64 - bad - unread.len() as u64;
                        report.chunks_damaged += bad;
                        report.chunks_not_verified += unread.len() as u64;
                        if bad > 0 {
                            damaged_packs.insert(*id);
                        }
                        for (e, why) in errors {
                            per_pack.note(&mut report.problems, *id, &why);
                            damaged.insert((*id, e.offset), why);
                        }
                        report.not_verified.extend(unread);
                    } else {
                        report.chunks_not_verified += entries.len() as u64;
                    }
                }
            }
        }
        progress.finish();

        // The index: entries into missing packs, and the records of packs without a trailer.
        let mut stale: BTreeMap<PackId, u64> = BTreeMap::new();
        for entry in index.iter().flat_map(|i| i.iter()) {
            let (id, loc) = entry?;
            match states.get(&loc.pack) {
                None => {
                    *stale.entry(loc.pack).or_default() += 1;
                    report.chunks += 1;
                    report.chunks_damaged += 1;
                }
                Some(PackState::Unreadable) => {
                    report.chunks += 1;
                    report.chunks_not_verified += 1;
                }
                Some(PackState::NoTrailer { len, header }) => {
                    report.chunks += 1;
                    let end = loc.offset + u64::from(loc.stored_len);
                    let verdict = if end > *len {
                        Some(Err(format!(
                            "chunk {id} at offset {} lies past the end of the pack ({len} bytes): \
                             the pack is truncated",
                            loc.offset
                        )))
                    } else if let Some(h) = header {
                        match keys.get(h.key_id) {
                            Some(codec) if read_data => {
                                Some(read_record(self, codec, h, &id, &loc))
                            }
                            _ => None,
                        }
                    } else {
                        Some(Err(format!(
                            "chunk {id}: the pack's header is damaged, its records cannot be decoded"
                        )))
                    };
                    match verdict {
                        Some(Ok(())) => report.chunks_verified += 1,
                        Some(Err(why)) => {
                            report.chunks_damaged += 1;
                            per_pack.note(&mut report.problems, loc.pack, &why);
                            damaged.insert((loc.pack, loc.offset), why);
                        }
                        None => report.chunks_not_verified += 1,
                    }
                }
                Some(PackState::Sound | PackState::Unverified) => {}
            }
        }
        per_pack.finish(&mut report.problems);

        // Snapshots: every chunk they reference is indexed, in a pack that is there and sound.
        let known: HashMap<SnapshotId, (u64, Option<KeyId>)> =
            docs.iter().map(|(d, _)| (d.id, (d.size, d.key))).collect();
        let locator = || match &index {
            Some(index) => Locator::Index(index),
            None => Locator::Shared(&trailer_locations),
        };
        let judge = |id: &ChunkId| -> Result<ChunkState> {
            Ok(match locator().get(id)? {
                None => ChunkState::Damaged(format!(
                    "chunk {id} is not in the index (its pack is missing or damaged, or an \
                     interrupted run left it unindexed: `blocksnap repair index` finds it if a \
                     pack holds it)"
                )),
                Some(loc) => match states.get(&loc.pack) {
                    // Marks the missing pack as used: its stale entries are then damage.
                    None => ChunkState::InDamagedRecord(
                        format!("chunk {id} is in pack {}, which is missing", loc.pack),
                        loc.pack,
                    ),
                    Some(PackState::Unreadable) => ChunkState::Unknown(format!(
                        "chunk {id} is in pack {}, which could not be read",
                        loc.pack
                    )),
                    Some(_) => match damaged.get(&(loc.pack, loc.offset)) {
                        Some(_) => ChunkState::InDamagedRecord(
                            format!(
                                "chunk {id} (pack {}, offset {}) is damaged (see the pack's \
                                 problem)",
                                loc.pack, loc.offset
                            ),
                            loc.pack,
                        ),
                        None => ChunkState::Fine(loc),
                    },
                },
            })
        };
        let mut referenced: HashSet<PackId> = HashSet::new();
        let mut all_walked = true;
        let mut damaged_volumes: BTreeSet<String> = BTreeSet::new();
        for (doc, place) in &docs {
            let mut f = Findings::default();
            for id in &doc.extents.chunks {
                f.note(judge(id)?, &mut referenced);
            }
            let codec = keys.get(doc.key);
            let mut walked = false;
            if let Some(codec) = codec.filter(|_| f.count == 0 && f.unknown.is_empty()) {
                let reader = ChunkReader::with_locator(self, codec, locator());
                let walk = reader.for_each_extent(doc, |_, extent| {
                    if let Extent::Data { id, .. } = extent {
                        f.note(judge(&id)?, &mut referenced);
                    }
                    Ok(())
                });
                match walk {
                    Ok(()) => walked = true,
                    Err(e) => f.note(
                        ChunkState::Damaged(format!("its extent list cannot be read: {e}")),
                        &mut referenced,
                    ),
                }
            } else if f.count > 0 {
                f.note(
                    ChunkState::Damaged(
                        "its extent list is damaged, so its data chunks could not be checked"
                            .into(),
                    ),
                    &mut referenced,
                );
            }
            let Findings {
                found,
                unknown,
                count,
            } = f;
            all_walked &= walked;
            let what = format!("snapshot {} (volume {}{place})", doc.id, doc.volume);
            if count > 0 {
                report.snapshots += 1;
                report.damaged_snapshots.push(doc.id);
                damaged_volumes.insert(doc.volume.clone());
                for f in found {
                    report.problems.push(format!("{what}: {f}"));
                }
                if count > MAX_PER_SNAPSHOT {
                    report.problems.push(format!(
                        "snapshot {}: and {} more damaged chunks",
                        doc.id,
                        count - MAX_PER_SNAPSHOT
                    ));
                }
            } else if codec.is_none() {
                report.unverified_snapshots.push(doc.id);
                unverified
                    .entry(doc.key)
                    .or_default()
                    .snapshots
                    .push(doc.id);
            } else if !unknown.is_empty() {
                report.unverified_snapshots.push(doc.id);
                report
                    .not_verified
                    .push(format!("{what}: {}", unknown.join("; ")));
            } else {
                report.snapshots += 1;
                report.intact_snapshots.push(doc.id);
            }
        }

        // Images: every device's snapshot is there, of the recorded size, under the image's key,
        // and restorable.
        for (image, place) in &images {
            report.images += 1;
            let mut bad = false;
            for v in &image.volumes {
                let problem = match known.get(&v.snapshot) {
                    None => Some(format!("snapshot {} is missing", v.snapshot)),
                    Some((size, key)) if *size != v.size || *key != image.key => Some(format!(
                        "snapshot {} has size {size} and key {key:?}, the image says {} and {:?}",
                        v.snapshot, v.size, image.key
                    )),
                    Some(_) if report.damaged_snapshots.contains(&v.snapshot) => {
                        Some(format!("snapshot {} is damaged (see above)", v.snapshot))
                    }
                    Some(_) => None,
                };
                if let Some(p) = problem {
                    bad = true;
                    report.problems.push(format!(
                        "image '{}' ({}{place}) device {}: {p}",
                        image.name, image.id, v.device
                    ));
                }
            }
            if bad {
                report.damaged_images.push(image.id);
            }
        }

        // What could not be verified, by key.
        for (key, u) in &unverified {
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

        // Index entries into packs that are gone. The index is a cache of each user's, kept
        // outside the store: a prune by another user or host leaves such entries in it, which
        // are harmless (a note) unless a snapshot uses a chunk they place (damage).
        for (pack, n) in &stale {
            report.stale_index_entries += n;
            if referenced.contains(pack) {
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
            .filter(|p| referenced.contains(*p))
            .copied()
            .collect();

        // Packs no snapshot uses: only known when every snapshot could be walked.
        if all_walked {
            let mut unused: Vec<(PackId, u64)> = packs
                .iter()
                .filter(|p| !referenced.contains(&p.id))
                .map(|p| (p.id, sizes.get(&p.id).copied().unwrap_or(p.size)))
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

        report.damaged_packs = damaged_packs.into_iter().collect();
        report.next_steps = next_steps(&report, read_data, &damaged_volumes);
        report.skipped = report.not_verified.clone();
        report.ok = report.problems.is_empty() && report.not_verified.is_empty();
        Ok(report)
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

/// The recovery procedure for what `report` found (docs/DESIGN-NOTES.md, "Recovering from
/// damage").
fn next_steps(report: &CheckReport, read_data: bool, volumes: &BTreeSet<String>) -> Vec<String> {
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

fn read_head(file: &PackObject) -> Vec<u8> {
    let mut h = vec![0u8; blocksnap_pack::format::HEADER_LEN];
    match file.read_exact_at(&mut h, 0) {
        Ok(()) => h,
        Err(_) => Vec::new(),
    }
}

/// Reads and decodes one record where the index says it is.
fn read_record(
    store: &Store,
    codec: &ChunkCodec,
    header: &PackHeader,
    id: &ChunkId,
    loc: &Location,
) -> std::result::Result<(), String> {
    let file = store.open_pack(&loc.pack).map_err(|e| e.to_string())?;
    let mut rec = vec![0u8; loc.stored_len as usize];
    file.read_exact_at(&mut rec, loc.offset)
        .map_err(|e| format!("chunk {id} at offset {}: cannot read: {e}", loc.offset))?;
    codec
        .decode(
            codec.pack_cipher(&header.salt).as_ref(),
            id,
            loc.offset,
            loc.raw_len,
            rec,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Decodes every record of a pack. Returns the damaged ones with the reason, and the records
/// that could not be read for another reason than damage (I/O errors), as not verified.
fn verify_records(
    file: &PackObject,
    path: &str,
    codec: &ChunkCodec,
    header: &PackHeader,
    entries: &[Entry],
) -> (Vec<(Entry, String)>, Vec<String>) {
    let cipher = codec.pack_cipher(&header.salt);
    let results: Vec<(Entry, std::result::Result<String, String>)> = entries
        .par_iter()
        .filter_map(|e| {
            let mut rec = vec![0u8; e.stored_len as usize];
            if let Err(err) = file.read_exact_at(&mut rec, e.offset) {
                let text = format!(
                    "chunk {} at offset {}: cannot read {path}: {err}",
                    e.id, e.offset
                );
                return Some((
                    *e,
                    if err.kind() == std::io::ErrorKind::UnexpectedEof {
                        Ok(text)
                    } else {
                        Err(text)
                    },
                ));
            }
            codec
                .decode(cipher.as_ref(), &e.id, e.offset, e.raw_len, rec)
                .err()
                .map(|err| (*e, Ok(err.to_string())))
        })
        .collect();
    let mut damaged = Vec::new();
    let mut unread = Vec::new();
    for (e, r) in results {
        match r {
            Ok(why) => damaged.push((e, why)),
            Err(text) => unread.push(text),
        }
    }
    damaged.sort_by_key(|(e, _)| e.offset);
    unread.sort();
    (damaged, unread)
}
