//! `repair index`: rebuild the dedup index from the pack trailers alone.

use std::collections::HashMap;
use std::fs::File;

use blocksnap_index::Index;
use blocksnap_manifest::KeyId;
use blocksnap_pack::{ChunkCodec, read_trailer};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::sink::location;
use crate::store::Store;

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
        self.fill_index(&index, access, progress)
    }

    /// Adds every chunk of every pack whose trailer `access` can read to `index`, and flushes.
    pub(crate) fn fill_index(
        &self,
        index: &Index,
        access: &Access,
        progress: &dyn Progress,
    ) -> Result<RepairReport> {
        let packs = self.list_packs()?;
        let mut codecs: HashMap<Option<KeyId>, Result<ChunkCodec>> = HashMap::new();
        let mut report = RepairReport {
            packs: 0,
            chunks: 0,
            problems: Vec::new(),
        };
        progress.start("rebuild index", packs.len() as u64);
        for (id, path) in packs {
            progress.advance(1);
            let file = File::open(&path).map_err(StoreError::io("cannot open pack", &path))?;
            let mut wanted = None;
            let trailer = read_trailer(&file, |key| {
                wanted = Some(key);
                let codec = codecs.entry(key).or_insert_with(|| self.codec(access, key));
                codec.as_ref().ok()
            });
            match trailer {
                Ok((_, entries)) => {
                    let locs: Vec<_> = entries.iter().map(|e| (e.id, location(id, e))).collect();
                    index.insert_batch(&locs)?;
                    report.packs += 1;
                    report.chunks += locs.len() as u64;
                }
                Err(e) => {
                    let why = match wanted.and_then(|k| codecs.get(&k)) {
                        Some(Err(denied)) => denied.to_string(),
                        _ => e.to_string(),
                    };
                    report
                        .problems
                        .push(format!("pack {id} ({}): {why}", path.display()));
                }
            }
        }
        index.flush()?;
        progress.finish();
        Ok(report)
    }
}
