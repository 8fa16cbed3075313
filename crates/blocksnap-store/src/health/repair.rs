//! `repair index`: rebuild the dedup index from the pack trailers alone.
//! `repair packs`: heal the store after packs were damaged or deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use blocksnap_index::{Index, Location};
use blocksnap_manifest::{ChunkId, KeyId, PackId};
use blocksnap_pack::{ChunkCodec, Entry, PackError, PackHeader, read_layout, read_trailer};
use rayon::prelude::*;
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::packs::PackObject;
use crate::packs::writer::{ChunkWriter, location};
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::{damaged_pack_key, index_object_key, pack_key};

/// What `repair packs` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairPacksReport {
    /// Pack files examined.
    pub packs: u64,
    /// Packs the index pointed at that are missing: the index forgot their chunks.
    pub missing_packs: Vec<PackId>,
    /// Damaged packs: their intact chunks were moved to new packs, the rest forgotten, and the
    /// pack renamed to `packs/XX/ID.damaged` (no command reads it any more).
    pub damaged_packs: Vec<PackId>,
    /// Where the damaged packs are now.
    pub set_aside: Vec<PathBuf>,
    /// Intact chunks of damaged packs, verified and moved to new packs.
    pub chunks_moved: u64,
    /// Index entries removed: chunks that are lost until a snapshot stores them again.
    pub chunks_forgotten: u64,
    /// Records decrypted and verified (`--read-data`).
    pub chunks_verified: u64,
    /// What could not be examined or repaired, and why (and who can).
    pub not_repaired: Vec<String>,
    /// Packs left as they were for want of their key (the acting account holds no grant on
    /// it): not examined (damage in them is neither found nor repaired by this run), or found
    /// damaged but not repaired. An account holding the key repairs them.
    pub not_examined: Vec<PackId>,
}

/// A damaged pack found by `repair packs`.
struct Damaged {
    id: PackId,
    header: Option<PackHeader>,
    /// The trailer's entries when it could be read, and the offsets of damaged records.
    entries: Vec<Entry>,
    bad: HashSet<u64>,
}

/// What `repair index` did.
#[derive(Clone, Debug, Serialize)]
pub struct RepairReport {
    /// Packs whose trailers were read.
    pub packs: u64,
    /// Chunks now in the index.
    pub chunks: u64,
    /// Packs that could not be read, and why.
    pub problems: Vec<String>,
}

impl Store {
    /// Clears the index and fills it again from every pack's trailer.
    pub fn repair_index(&self, access: &Access, progress: &dyn Progress) -> Result<RepairReport> {
        let _lock = self.lock_exclusive("repair", progress)?;
        let wait = std::time::Duration::from_secs(3600);
        let index = match self.open_index_raw(wait, progress) {
            Ok(index) => index,
            // An index sled cannot open is rebuilt from nothing: it holds only what the packs say.
            Err(blocksnap_index::IndexError::Damaged { detail, .. }) => {
                progress.message(&format!(
                    "the index cannot be opened ({detail}); starting a new one"
                ));
                std::fs::remove_dir_all(self.index_path())
                    .map_err(StoreError::io("cannot remove", self.index_path()))?;
                self.open_index_raw(wait, progress)?
            }
            Err(e) => return Err(e.into()),
        };
        index.clear()?;
        self.fill_index_from_trailers(&index, access, progress)
    }
}

impl Store {
    /// Heals the store after packs were damaged or deleted: the index forgets the chunks of
    /// missing packs; each damaged pack (its layout or trailer does not read, or with
    /// `read_data` a record does not decode) has its intact chunks verified and moved to new
    /// packs, the rest forgotten, and is renamed to `packs/XX/ID.damaged`. The next snapshot of
    /// a source that holds the lost chunks stores them again.
    ///
    /// Order, for crash safety: new packs are durable and indexed before the damaged pack is
    /// renamed, and it is renamed before its entries are removed (an entry pointing at a pack
    /// that is not there is ignored by dedup and found again by the next run).
    pub fn repair_packs(
        &self,
        access: &Access,
        read_data: bool,
        progress: &dyn Progress,
    ) -> Result<RepairPacksReport> {
        let _lock = self.lock_exclusive("repair", progress)?;
        // As it is: the entries of missing packs are this command's to find and report.
        let index = self.open_index_as_is(access, progress)?;
        let mut report = RepairPacksReport::default();
        let mut codecs: HashMap<Option<KeyId>, Result<ChunkCodec>> = HashMap::new();
        let packs = self.list_packs()?;
        report.packs = packs.len() as u64;
        let present: HashSet<PackId> = packs.iter().map(|p| p.id).collect();
        let mut damaged: Vec<Damaged> = Vec::new();
        // Packs whose key this account cannot use, by key, with the reason.
        let mut keyless: BTreeMap<Option<KeyId>, (String, Vec<PackId>)> = BTreeMap::new();
        progress.start_count(
            if read_data {
                "repair packs: read data"
            } else {
                "repair packs"
            },
            packs.len() as u64,
            "packs",
        );
        for p in &packs {
            let id = &p.id;
            let path = self.describe_pack(id);
            crate::cancel::check()?;
            progress.advance(1);
            let file = match self.open_pack(id) {
                Ok(f) => f,
                Err(e) => {
                    report.not_repaired.push(format!("pack {id}: {e}"));
                    continue;
                }
            };
            let broken = |header: Option<PackHeader>| Damaged {
                id: *id,
                header,
                entries: Vec::new(),
                bad: HashSet::new(),
            };
            let layout = match read_layout(&file) {
                Ok(l) => l,
                Err(PackError::Io(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                    report
                        .not_repaired
                        .push(format!("pack {id}: cannot read {}: {e}", path));
                    continue;
                }
                Err(_) => {
                    damaged.push(broken(read_header(&file)));
                    continue;
                }
            };
            let key = layout.header.key_id;
            let codec = codecs.entry(key).or_insert_with(|| self.codec(access, key));
            let codec = match codec {
                Ok(c) => c,
                Err(e) => {
                    keyless
                        .entry(key)
                        .or_insert_with(|| (e.to_string(), Vec::new()))
                        .1
                        .push(*id);
                    continue;
                }
            };
            let entries = match read_trailer(&file, |_| Some(&*codec)) {
                Ok((_, entries)) => entries,
                Err(_) => {
                    damaged.push(broken(Some(layout.header)));
                    continue;
                }
            };
            if read_data {
                let cipher = codec.pack_cipher(&layout.header.salt);
                let results: Vec<(u64, std::result::Result<(), std::io::Error>, bool)> = entries
                    .par_iter()
                    .map(|e| {
                        let mut rec = vec![0u8; e.stored_len as usize];
                        match file.read_exact_at(&mut rec, e.offset) {
                            Err(err) => (e.offset, Err(err), false),
                            Ok(()) => {
                                let ok = codec
                                    .decode(cipher.as_ref(), &e.id, e.offset, e.raw_len, rec)
                                    .is_ok();
                                (e.offset, Ok(()), ok)
                            }
                        }
                    })
                    .collect();
                let mut bad = HashSet::new();
                for (offset, read, ok) in results {
                    match read {
                        Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                            report.not_repaired.push(format!(
                                "pack {id}: cannot read the record at offset {offset} of {}: {e}",
                                path
                            ));
                        }
                        _ if ok => report.chunks_verified += 1,
                        _ => {
                            bad.insert(offset);
                        }
                    }
                }
                if !bad.is_empty() {
                    damaged.push(Damaged {
                        id: *id,
                        header: Some(layout.header),
                        entries,
                        bad,
                    });
                }
            }
        }
        progress.finish();
        for (key, (why, ids)) in keyless {
            report
                .not_repaired
                .push(self.not_examined(access, key, &why, &ids, read_data));
            report.not_examined.extend(ids);
        }

        // The index: entries into missing packs go; entries into damaged packs are collected.
        let damaged_ids: HashSet<PackId> = damaged.iter().map(|d| d.id).collect();
        let mut into: HashMap<PackId, Vec<(ChunkId, Location)>> = HashMap::new();
        let mut missing: BTreeMap<PackId, u64> = BTreeMap::new();
        for entry in index.iter() {
            let (id, loc) = entry?;
            if !present.contains(&loc.pack) {
                if index.remove_if(&id, &loc)? {
                    report.chunks_forgotten += 1;
                    *missing.entry(loc.pack).or_default() += 1;
                }
            } else if damaged_ids.contains(&loc.pack) {
                into.entry(loc.pack).or_default().push((id, loc));
            }
        }
        index.flush()?;
        report.missing_packs = missing.into_keys().collect();

        // Damaged packs: move what is intact, set the pack aside, forget the rest.
        progress.start_count(
            "repair packs: move intact chunks",
            damaged.len() as u64,
            "packs",
        );
        for d in damaged {
            crate::cancel::check()?;
            progress.advance(1);
            let indexed = into.remove(&d.id).unwrap_or_default();
            let codec = match &d.header {
                None => None,
                Some(h) => {
                    let key = h.key_id;
                    match codecs.entry(key).or_insert_with(|| self.codec(access, key)) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            report.not_repaired.push(format!(
                                "pack {} is damaged, but its chunks cannot be moved without its \
                                 key: {e}; {}",
                                d.id,
                                self.who_can_repair(access, key, read_data)
                            ));
                            report.not_examined.push(d.id);
                            continue;
                        }
                    }
                }
            };
            let (moved, lost) = self.move_intact(&index, &d, codec.map(|c| &*c), &indexed)?;
            let aside = self.set_pack_aside(&d.id)?;
            index.forget_pack(&d.id)?;
            for (id, loc) in &lost {
                if index.remove_if(id, loc)? {
                    report.chunks_forgotten += 1;
                }
            }
            index.flush()?;
            report.chunks_moved += moved;
            report.damaged_packs.push(d.id);
            report.set_aside.push(aside);
        }
        progress.finish();
        Ok(report)
    }

    /// The line for the packs `ids` under `key` that could not be examined (`why`: the key
    /// cannot be used by this account), naming them and who can repair them.
    fn not_examined(
        &self,
        access: &Access,
        key: Option<KeyId>,
        why: &str,
        ids: &[PackId],
        read_data: bool,
    ) -> String {
        const SHOWN: usize = 10;
        let mut shown: Vec<String> = ids.iter().take(SHOWN).map(ToString::to_string).collect();
        if ids.len() > SHOWN {
            shown.push(format!("and {} more", ids.len() - SHOWN));
        }
        format!(
            "{} under key {} not examined ({}): {why}. Damage in {} is neither found nor \
             repaired by this run; {}",
            if ids.len() == 1 {
                "1 pack".to_string()
            } else {
                format!("{} packs", ids.len())
            },
            key.map_or("-".into(), |k| k.to_string()),
            shown.join(", "),
            if ids.len() == 1 { "it" } else { "them" },
            self.who_can_repair(access, key, read_data)
        )
    }

    /// Who can repair packs under `key`: the accounts holding a grant on it, with the command.
    fn who_can_repair(&self, access: &Access, key: Option<KeyId>, read_data: bool) -> String {
        let holders: Vec<String> = key
            .and_then(|k| self.key_by_id(k).ok())
            .map(|d| {
                d.grants
                    .iter()
                    .map(|g| g.account.clone())
                    .filter(|a| *a != access.account)
                    .collect()
            })
            .unwrap_or_default();
        let rd = if read_data { " --read-data" } else { "" };
        match holders.first() {
            Some(first) => format!(
                "an account holding the key ({}) can run `blocksnap --account {first} repair \
                 packs{rd}`",
                holders.join(", ")
            ),
            None => format!(
                "no other account holds a grant on the key: with the right identity for \
                 account '{}' (--identity FILE), run `blocksnap repair packs{rd}` again",
                access.account
            ),
        }
    }

    /// Reads every chunk of a damaged pack that may still be intact (where the index places
    /// it, or where the trailer does for a chunk the index lacks), verifies it and stores it in
    /// new packs, which are then durable and indexed. Returns how many were moved and the index
    /// entries of those that are lost.
    fn move_intact(
        &self,
        index: &Index,
        d: &Damaged,
        codec: Option<&ChunkCodec>,
        indexed: &[(ChunkId, Location)],
    ) -> Result<(u64, Vec<(ChunkId, Location)>)> {
        let mut candidates: BTreeMap<u64, (ChunkId, Location, bool)> = BTreeMap::new();
        for (id, loc) in indexed {
            candidates.insert(loc.offset, (*id, *loc, true));
        }
        for e in &d.entries {
            if !candidates.contains_key(&e.offset) && index.get(&e.id)?.is_none() {
                candidates.insert(e.offset, (e.id, location(d.id, e), false));
            }
        }
        let mut lost = Vec::new();
        let (Some(codec), Some(header)) = (codec, &d.header) else {
            lost.extend(
                candidates
                    .into_values()
                    .filter(|c| c.2)
                    .map(|(id, loc, _)| (id, loc)),
            );
            return Ok((0, lost));
        };
        let file = self.open_pack(&d.id)?;
        let cipher = codec.pack_cipher(&header.salt);
        let mut writer = ChunkWriter::relocating(self, codec, index)?;
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let mut moved = 0u64;
        for (offset, (id, loc, in_index)) in candidates {
            let data = if d.bad.contains(&offset) {
                None
            } else {
                let mut rec = Vec::new();
                crate::packs::reader::check_place(&loc, &id, file.size())
                    .ok()
                    .and_then(|()| {
                        rec.resize(loc.stored_len as usize, 0);
                        file.read_exact_at(&mut rec, loc.offset).ok()
                    })
                    .and_then(|()| {
                        codec
                            .decode(cipher.as_ref(), &id, loc.offset, loc.raw_len, rec)
                            .ok()
                    })
            };
            match data {
                Some(data) => {
                    moved += 1;
                    batch_bytes += data.len();
                    batch.push((id, data));
                    if batch_bytes >= 64 << 20 {
                        writer.put(std::mem::take(&mut batch))?;
                        batch_bytes = 0;
                    }
                }
                None if in_index => lost.push((id, loc)),
                None => {}
            }
        }
        writer.put(batch)?;
        writer.finish()?;
        Ok((moved, lost))
    }
}

impl Store {
    /// Sets a damaged pack aside as `packs/XX/ID.damaged` (copied there, then the pack deleted:
    /// a crash between leaves both, never neither); returns where it went.
    fn set_pack_aside(&self, id: &PackId) -> Result<PathBuf> {
        let key = pack_key(id);
        let aside = damaged_pack_key(id);
        // In pieces: a pack can be gigabytes long.
        match self.copy_object(&key, &aside) {
            Ok(()) => {}
            // Set aside before, by a run that stopped before deleting the pack.
            Err(e) if e.is_already_exists() => {}
            // Gone meanwhile: nothing left to set aside.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(self.object_error(&aside)(e)),
        }
        self.delete_object(&key)?;
        // Its index object describes a pack no longer there (a crash before this leaves it to
        // the next prune, which sweeps index objects without their pack).
        self.delete_object(&index_object_key(id))?;
        Ok(self.describe(&aside).into())
    }
}

fn read_header(file: &PackObject) -> Option<PackHeader> {
    let mut h = [0u8; blocksnap_pack::format::HEADER_LEN];
    file.read_exact_at(&mut h, 0).ok()?;
    PackHeader::decode(&h).ok()
}
