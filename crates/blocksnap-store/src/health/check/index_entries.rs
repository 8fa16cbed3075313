//! The index-entries phase of `check` (a store with an index): entries into packs that are
//! missing, and the records of packs whose trailer cannot be read, judged one by one through the
//! entries that point into them.

use std::collections::BTreeMap;

use blocksnap_index::{Index, Location};
use blocksnap_manifest::{ChunkId, PackId};
use blocksnap_pack::{ChunkCodec, PackHeader};

use super::packs::Packs;
use super::{CheckReport, Keys, PackState};
use crate::error::Result;
use crate::repo::Store;

impl Store {
    /// Walks every index entry: one into a pack that is not there is stale (counted per pack,
    /// returned; whether it is damage depends on whether a snapshot uses it); one into a pack
    /// without a readable trailer is judged by where it lies and, with `read_data`, by decoding
    /// its record (damaged records go to `packs.damaged`).
    pub(super) fn check_index_entries(
        &self,
        index: &Index,
        packs: &mut Packs,
        keys: &mut Keys<'_>,
        read_data: bool,
        report: &mut CheckReport,
    ) -> Result<BTreeMap<PackId, u64>> {
        let mut stale: BTreeMap<PackId, u64> = BTreeMap::new();
        for entry in index.iter() {
            let (id, loc) = entry?;
            match packs.states.get(&loc.pack) {
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
                            packs.per_pack.note(&mut report.problems, loc.pack, &why);
                            packs.damaged.insert((loc.pack, loc.offset), why);
                        }
                        None => report.chunks_not_verified += 1,
                    }
                }
                Some(PackState::Sound | PackState::Unverified) => {}
            }
        }
        Ok(stale)
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
    blocksnap_pack::check_record_place(id, loc.offset, loc.stored_len, loc.raw_len, file.size())
        .map_err(|e| e.to_string())?;
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
