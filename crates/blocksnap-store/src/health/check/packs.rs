//! The packs phase of `check`: the layout of every pack without a key; with its key the trailer
//! (its entries compared with the index), and with `--read-data` every record.

use std::collections::{BTreeSet, HashMap};

use blocksnap_index::{Index, Location};
use blocksnap_manifest::{ChunkId, KeyId, PackId};
use blocksnap_pack::{ChunkCodec, Entry, PackError, PackHeader, read_layout, read_trailer};
use rayon::prelude::*;

use super::{CheckReport, Keys, PackState, PerPack};
use crate::error::Result;
use crate::packs::{PackInfo, PackObject};
use crate::progress::Progress;
use crate::repo::Store;

/// What the packs phase found, for the phases after it.
pub(super) struct Packs {
    /// The packs of the store, as listed.
    pub listed: Vec<PackInfo>,
    /// How far each listed pack could be read.
    pub states: HashMap<PackId, PackState>,
    /// The length of each pack that could be opened.
    pub sizes: HashMap<PackId, u64>,
    /// Packs found damaged.
    pub damaged_packs: BTreeSet<PackId>,
    /// Records known to be damaged, by pack and offset, with the reason.
    pub damaged: HashMap<(PackId, u64), String>,
    /// Damaged records listed per pack.
    pub per_pack: PerPack,
    /// Where the trailers read place each chunk: the chunk locations of a store without an index
    /// (read-only); empty when there is an index.
    pub trailer_locations: HashMap<ChunkId, Location>,
    /// Packs whose trailer was not read for want of their key, by key: without an index, a
    /// chunk of that key found in no trailer may be in one of them.
    pub keyless: HashMap<Option<KeyId>, Vec<PackId>>,
    /// Packs that could not be read at all (permissions, I/O errors), by id.
    pub unreadable: Vec<PackId>,
}

impl Store {
    /// Reads every pack as far as it can: its layout, and with its key its trailer (each entry
    /// compared with `index`, when there is one) and with `read_data` every record. A pack that
    /// cannot be read is not verified; one whose layout, trailer or records do not decode is
    /// damaged. Packs whose key is not available count in `keys.unverified`.
    pub(super) fn check_packs(
        &self,
        index: Option<&Index>,
        keys: &mut Keys<'_>,
        read_data: bool,
        progress: &dyn Progress,
        report: &mut CheckReport,
    ) -> Result<Packs> {
        let listed = self.list_packs()?;
        report.packs = listed.len() as u64;
        let mut packs = Packs {
            listed: Vec::new(),
            states: HashMap::new(),
            sizes: HashMap::new(),
            damaged_packs: BTreeSet::new(),
            damaged: HashMap::new(),
            per_pack: PerPack::default(),
            trailer_locations: HashMap::new(),
            keyless: HashMap::new(),
            unreadable: Vec::new(),
        };
        // Reading every record, the work is the packs' bytes; reading trailers, it is packs.
        if read_data {
            progress.start("check data", listed.iter().map(|p| p.size).sum());
        } else {
            progress.start_count("check packs", listed.len() as u64, "packs");
        }
        for p in &listed {
            crate::cancel::check()?;
            let state = self.check_pack(&p.id, index, keys, read_data, &mut packs, report)?;
            progress.advance(if read_data { p.size } else { 1 });
            if matches!(state, PackState::Unreadable) {
                packs.unreadable.push(p.id);
            }
            packs.states.insert(p.id, state);
        }
        progress.finish();
        packs.listed = listed;
        Ok(packs)
    }

    /// Reads one pack as far as it can; returns how far that was.
    fn check_pack(
        &self,
        id: &PackId,
        index: Option<&Index>,
        keys: &mut Keys<'_>,
        read_data: bool,
        packs: &mut Packs,
        report: &mut CheckReport,
    ) -> Result<PackState> {
        let path = self.describe_pack(id);
        let file = match self.open_pack(id) {
            Ok(f) => f,
            Err(e) => {
                report.not_verified.push(format!("pack {id}: {e}"));
                return Ok(PackState::Unreadable);
            }
        };
        let len = file.size();
        packs.sizes.insert(*id, len);
        let layout = match read_layout(&file) {
            Ok(l) => l,
            Err(PackError::Io(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                report
                    .not_verified
                    .push(format!("pack {id}: cannot read {}: {e}", path));
                return Ok(PackState::Unreadable);
            }
            Err(e) => {
                report.problems.push(format!("pack {id} ({}): {e}", path));
                packs.damaged_packs.insert(*id);
                let header = PackHeader::decode(&read_head(&file)).ok();
                return Ok(PackState::NoTrailer { len, header });
            }
        };
        let key = layout.header.key_id;
        let Some(codec) = keys.get(key) else {
            packs.keyless.entry(key).or_default().push(*id);
            let u = keys.unverified.entry(key).or_default();
            u.packs += 1;
            u.chunks += layout.entries;
            report.chunks += layout.entries;
            report.chunks_not_verified += layout.entries;
            return Ok(PackState::Unverified);
        };
        let (header, entries) = match read_trailer(&file, |_| Some(codec)) {
            Ok(t) => t,
            Err(e) => {
                report.problems.push(format!("pack {id} ({}): {e}", path));
                packs.damaged_packs.insert(*id);
                return Ok(PackState::NoTrailer {
                    len,
                    header: Some(layout.header),
                });
            }
        };
        report.chunks += entries.len() as u64;
        match index {
            Some(index) => compare_with_index(index, id, &entries, report)?,
            None => packs.trailer_locations.extend(
                entries
                    .iter()
                    .map(|e| (e.id, crate::packs::writer::location(*id, e))),
            ),
        }
        if read_data {
            let found = verify_records(&file, &path, codec, &header, &entries);
            note_records(id, entries.len() as u64, found, packs, report);
        } else {
            report.chunks_not_verified += entries.len() as u64;
        }
        Ok(PackState::Sound)
    }
}

/// Counts and notes what [`verify_records`] found in the `total` records of pack `id`: damaged
/// records (problems, and the pack damaged) and records that could not be read (not verified).
fn note_records(
    id: &PackId,
    total: u64,
    (errors, unread): (Vec<(Entry, String)>, Vec<String>),
    packs: &mut Packs,
    report: &mut CheckReport,
) {
    let bad = errors.len() as u64;
    report.chunks_verified += total - bad - unread.len() as u64;
    report.chunks_damaged += bad;
    report.chunks_not_verified += unread.len() as u64;
    if bad > 0 {
        packs.damaged_packs.insert(*id);
    }
    for (e, why) in errors {
        packs.per_pack.note(&mut report.problems, *id, &why);
        packs.damaged.insert((*id, e.offset), why);
    }
    report.not_verified.extend(unread);
}

/// Compares the trailer entries of pack `id` with the index: a chunk the index places at
/// another offset of the same pack is a problem; one it lacks is counted as unindexed.
fn compare_with_index(
    index: &Index,
    id: &PackId,
    entries: &[Entry],
    report: &mut CheckReport,
) -> Result<()> {
    for e in entries {
        match index.get(&e.id)? {
            // Harmless on its own (a crash between a pack and its index entries leaves this):
            // only snapshots' chunks must be indexed, checked in the snapshots phase.
            None => report.unindexed_chunks += 1,
            Some(loc)
                if loc.pack == *id
                    && (loc.offset, loc.stored_len, loc.raw_len)
                        != (e.offset, e.stored_len, e.raw_len) =>
            {
                report.problems.push(format!(
                    "the index places chunk {} at offset {} of pack {id}, its trailer at {}; \
                     `blocksnap repair index` rebuilds the index",
                    e.id, loc.offset, e.offset
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn read_head(file: &PackObject) -> Vec<u8> {
    let mut h = vec![0u8; blocksnap_pack::format::HEADER_LEN];
    match file.read_exact_at(&mut h, 0) {
        Ok(()) => h,
        Err(_) => Vec::new(),
    }
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
