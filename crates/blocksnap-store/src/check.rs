//! `check [--read-data]`: find every inconsistency in a store, and name what it affects.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::path::Path;

use blocksnap_manifest::{
    AccountDoc, Document, Extent, ImageDoc, ImageId, KeyDoc, KeyId, PackId, PolicyDoc, SnapshotDoc,
    SnapshotId, TrashDoc, VolumeDoc,
};
use blocksnap_pack::{ChunkCodec, Entry, read_trailer};
use rayon::prelude::*;
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil::{self, TMP_PREFIX};
use crate::progress::Progress;
use crate::restore::{ChunkReader, Locator};
use crate::store::Store;

/// At most this many problems are listed per snapshot; the rest are counted.
const MAX_PER_SNAPSHOT: usize = 10;

/// What `check` found (the `--json` output).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// True when nothing is wrong.
    pub ok: bool,
    /// Every inconsistency, each naming the object.
    pub problems: Vec<String>,
    /// What could not be checked (keys this account holds no grant on).
    pub skipped: Vec<String>,
    /// Snapshots checked.
    pub snapshots: u64,
    /// Packs whose trailer was read.
    pub packs: u64,
    /// Chunks listed in those trailers.
    pub chunks: u64,
    /// Chunks in packs that the index does not list (dedup misses them until `repair index`).
    pub unindexed_chunks: u64,
    /// Chunks decrypted and verified (`--read-data`).
    pub chunks_verified: u64,
    /// Snapshots that cannot be restored in full.
    pub damaged_snapshots: Vec<SnapshotId>,
    /// Packs that are damaged or missing.
    pub damaged_packs: Vec<PackId>,
    /// Images checked.
    pub images: u64,
    /// Images with a device that cannot be rebuilt.
    pub damaged_images: Vec<ImageId>,
}

impl Store {
    /// Checks documents, packs, the index and every snapshot; with `read_data`, decrypts and
    /// verifies every chunk of every pack.
    pub fn check(
        &self,
        access: &Access,
        read_data: bool,
        progress: &dyn Progress,
    ) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let _lock = self.lock_reading("check", progress)?;
        // sled cannot open the index of a read-only store: chunk locations then come from the
        // trailers read below.
        let index = match self.read_only() {
            Some(_) => None,
            None => Some(self.open_index(access, progress)?),
        };
        let mut trailer_locations = HashMap::new();
        let mut codecs: HashMap<Option<KeyId>, Option<ChunkCodec>> = HashMap::new();
        // Documents.
        for (dir, kind) in [
            ("accounts", "account"),
            ("keys", "key"),
            ("snapshots", "snapshot"),
            ("trash", "trash"),
            ("volumes", "volume"),
            ("policies", "policy"),
            ("images", "image"),
        ] {
            for path in json_files(&self.root().join(dir))? {
                let bytes = fsutil::read(&path)?;
                let parsed = match kind {
                    "account" => AccountDoc::from_json(&bytes).map(|_| ()),
                    "key" => KeyDoc::from_json(&bytes).map(|_| ()),
                    "trash" => TrashDoc::from_json(&bytes).map(|_| ()),
                    "volume" => VolumeDoc::from_json(&bytes).map(|_| ()),
                    "policy" => PolicyDoc::from_json(&bytes).map(|_| ()),
                    "image" => ImageDoc::from_json(&bytes).map(|_| ()),
                    _ => SnapshotDoc::from_json(&bytes).map(|_| ()),
                };
                if let Err(e) = parsed {
                    report.problems.push(format!("{}: {e}", path.display()));
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

        // Packs: every trailer reads; with --read-data every chunk decodes to its id.
        let packs = self.list_packs()?;
        let mut bad_packs: BTreeSet<PackId> = BTreeSet::new();
        progress.start(
            if read_data {
                "check data"
            } else {
                "check packs"
            },
            packs.len() as u64,
        );
        for (id, path) in &packs {
            progress.advance(1);
            let file = File::open(path).map_err(StoreError::io("cannot open pack", path))?;
            let mut key = None;
            let header_key =
                blocksnap_pack::PackHeader::decode(&read_head(&file)).map(|h| h.key_id);
            if let Ok(k) = header_key {
                key = Some(k);
                if !load_codec(self, access, &mut codecs, k, &mut report) {
                    continue;
                }
            }
            let codec = key.and_then(|k| codecs.get(&k)).and_then(Option::as_ref);
            match read_trailer(&file, |_| codec) {
                Err(e) => {
                    report
                        .problems
                        .push(format!("pack {id} ({}): {e}", path.display()));
                    bad_packs.insert(*id);
                }
                Ok((header, entries)) => {
                    report.packs += 1;
                    report.chunks += entries.len() as u64;
                    let codec = codec.expect("the trailer read with a codec");
                    for e in &entries {
                        // Harmless on its own (a crash between a pack and its index entries
                        // leaves this): only snapshots' chunks must be indexed, checked below.
                        match &index {
                            Some(index) if index.get(&e.id)?.is_none() => {
                                report.unindexed_chunks += 1;
                            }
                            Some(_) => {}
                            None => {
                                trailer_locations.insert(e.id, crate::sink::location(*id, e));
                            }
                        }
                    }
                    if read_data {
                        let errors = verify_records(&file, path, codec, &header, &entries);
                        report.chunks_verified += (entries.len() - errors.len()) as u64;
                        if !errors.is_empty() {
                            bad_packs.insert(*id);
                        }
                        report
                            .problems
                            .extend(errors.into_iter().map(|e| format!("pack {id}: {e}")));
                    }
                }
            }
        }
        progress.finish();

        // Snapshots: every chunk they reference is indexed, in a pack that is there and sound.
        let pack_ids: BTreeSet<PackId> = packs.iter().map(|(id, _)| *id).collect();
        // Snapshots in the trash are restorable, so their chunks must be sound too.
        let mut docs: Vec<(SnapshotDoc, &str)> = Vec::new();
        for path in json_files(&self.root().join("snapshots"))? {
            if let Ok(doc) = SnapshotDoc::from_json(&fsutil::read(&path)?) {
                docs.push((doc, ""));
            }
        }
        let mut images: Vec<(ImageDoc, &str)> = Vec::new();
        for path in json_files(&self.root().join("images"))? {
            if let Ok(doc) = ImageDoc::from_json(&fsutil::read(&path)?) {
                images.push((doc, ""));
            }
        }
        for path in json_files(&self.root().join("trash"))? {
            if let Ok(t) = TrashDoc::from_json(&fsutil::read(&path)?) {
                if let Some(s) = t.snapshot {
                    docs.push((s, ", in the trash"));
                }
                if let Some(i) = t.image {
                    images.push((i, ", in the trash"));
                }
            }
        }
        let known: HashMap<SnapshotId, (u64, Option<KeyId>)> =
            docs.iter().map(|(d, _)| (d.id, (d.size, d.key))).collect();
        for (doc, place) in docs {
            report.snapshots += 1;
            if !load_codec(self, access, &mut codecs, doc.key, &mut report) {
                continue;
            }
            let codec = codecs
                .get(&doc.key)
                .and_then(Option::as_ref)
                .expect("checked above");
            let locator = || match &index {
                Some(index) => Locator::Index(index),
                None => Locator::Shared(&trailer_locations),
            };
            let (reader, lookup) = (ChunkReader::with_locator(self, codec, locator()), locator());
            let mut found: Vec<String> = Vec::new();
            let mut count = 0usize;
            let mut note = |text: String| {
                count += 1;
                if found.len() < MAX_PER_SNAPSHOT {
                    found.push(text);
                }
            };
            for id in &doc.extents.chunks {
                check_chunk(&lookup, &pack_ids, &bad_packs, id, &mut note)?;
            }
            let walked = reader.for_each_extent(&doc, |_, extent| {
                if let Extent::Data { id, .. } = extent {
                    check_chunk(&lookup, &pack_ids, &bad_packs, &id, &mut note)?;
                }
                Ok(())
            });
            if let Err(e) = walked {
                note(format!("its extent list cannot be read: {e}"));
            }
            if count > 0 {
                report.damaged_snapshots.push(doc.id);
                for f in found {
                    report.problems.push(format!(
                        "snapshot {} (volume {}{place}): {f}",
                        doc.id, doc.volume
                    ));
                }
                if count > MAX_PER_SNAPSHOT {
                    report.problems.push(format!(
                        "snapshot {}: and {} more problems",
                        doc.id,
                        count - MAX_PER_SNAPSHOT
                    ));
                }
            }
        }
        // Images: every device's snapshot is there, of the recorded size, under the image's key,
        // and restorable.
        for (image, place) in &images {
            report.images += 1;
            let mut damaged = false;
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
                    damaged = true;
                    report.problems.push(format!(
                        "image '{}' ({}{place}) device {}: {p}",
                        image.name, image.id, v.device
                    ));
                }
            }
            if damaged {
                report.damaged_images.push(image.id);
            }
        }
        report.damaged_packs = bad_packs.into_iter().collect();
        report.ok = report.problems.is_empty();
        Ok(report)
    }
}

/// Loads the codec of `key` once; a key the account cannot use is noted as skipped.
fn load_codec(
    store: &Store,
    access: &Access,
    codecs: &mut HashMap<Option<KeyId>, Option<ChunkCodec>>,
    key: Option<KeyId>,
    report: &mut CheckReport,
) -> bool {
    codecs
        .entry(key)
        .or_insert_with(|| match store.codec(access, key) {
            Ok(c) => Some(c),
            Err(e) => {
                report.skipped.push(format!(
                    "data under key {}: {e}",
                    key.map_or("-".into(), |k| k.to_string())
                ));
                None
            }
        })
        .is_some()
}

fn check_chunk(
    index: &Locator<'_>,
    packs: &BTreeSet<PackId>,
    bad: &BTreeSet<PackId>,
    id: &blocksnap_manifest::ChunkId,
    note: &mut impl FnMut(String),
) -> Result<()> {
    match index.get(id)? {
        None => note(format!(
            "chunk {id} is not in the index (run `blocksnap repair index`; if it stays missing, its data is lost)"
        )),
        Some(loc) if !packs.contains(&loc.pack) => note(format!(
            "chunk {id} is in pack {}, which is missing",
            loc.pack
        )),
        Some(loc) if bad.contains(&loc.pack) => note(format!(
            "chunk {id} is in pack {}, which is damaged",
            loc.pack
        )),
        Some(_) => {}
    }
    Ok(())
}

fn read_head(file: &File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut h = vec![0u8; blocksnap_pack::format::HEADER_LEN];
    match file.read_exact_at(&mut h, 0) {
        Ok(()) => h,
        Err(_) => Vec::new(),
    }
}

fn verify_records(
    file: &File,
    path: &Path,
    codec: &ChunkCodec,
    header: &blocksnap_pack::PackHeader,
    entries: &[Entry],
) -> Vec<String> {
    use std::os::unix::fs::FileExt;
    let cipher = codec.pack_cipher(&header.salt);
    let mut errors: Vec<String> = entries
        .par_iter()
        .filter_map(|e| {
            let mut rec = vec![0u8; e.stored_len as usize];
            if let Err(err) = file.read_exact_at(&mut rec, e.offset) {
                return Some(format!(
                    "chunk {} at offset {}: cannot read {}: {err}",
                    e.id,
                    e.offset,
                    path.display()
                ));
            }
            codec
                .decode(cipher.as_ref(), &e.id, e.offset, e.raw_len, rec)
                .err()
                .map(|err| err.to_string())
        })
        .collect();
    errors.sort();
    errors
}

fn json_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in fs::read_dir(dir).map_err(StoreError::io("cannot list", dir))? {
        let path = e.map_err(StoreError::io("cannot list", dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".json") && !name.starts_with(TMP_PREFIX) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
