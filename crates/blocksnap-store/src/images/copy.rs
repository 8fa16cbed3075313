//! `image copy`: an image into another store (or into this one under another key), its data
//! decrypted with the source key and re-encrypted under the target's.
//!
//! Chunk ids are keyed, so the target's ids of the source's chunks are known only after
//! reading them: every chunk of the image is read and verified here, and only those the target
//! lacks are written there. A snapshot the target already holds as a copy of the same source
//! snapshot under the same key (tag `blocksnap:copied-from`) is reused as is, so copying an
//! image a second time reads and writes almost nothing.

use std::time::Instant;

use blocksnap_index::Index;
use blocksnap_manifest::{Document, Extent, ImageVolume, SnapshotDoc, SnapshotId};
use blocksnap_pack::ChunkCodec;
use crossbeam_channel::Sender;
use rayon::prelude::*;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::images::image::{ImageReport, new_image};
use crate::packs::reader::ChunkReader;
use crate::progress::Progress;
use crate::repo::Store;
use crate::snapshot::create::{SnapshotReport, Within};
use crate::snapshot::split::ReadBatch;

/// The tag naming the snapshot a copy was made from: `STORE-ID/SNAPSHOT-ID`.
pub const TAG_COPIED_FROM: &str = "blocksnap:copied-from";

/// Data bytes read and decoded per batch.
const BATCH_BYTES: u64 = 16 << 20;

/// Options of `image copy`.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// The target's key to encrypt with (name or id) [default: the target's `default`].
    pub key: Option<String>,
    /// The copy's name [default: the source image's name].
    pub name: Option<String>,
}

impl Store {
    /// Copies `image` into `target` as a new image owned by `target_access`, re-encrypting
    /// under the target's key. `access` must be allowed to launch the image here.
    pub fn copy_image(
        &self,
        access: &Access,
        image: &str,
        target: &Store,
        target_access: &Access,
        opts: &CopyOptions,
        progress: &dyn Progress,
    ) -> Result<ImageReport> {
        let started = Instant::now();
        let doc = self.resolve_image(image)?;
        self.check_launch(access, &doc)?;
        let source_codec = self.image_codec(access, &doc)?;
        let snaps = self.image_snapshots(&doc)?;
        for s in &snaps {
            self.verify(&source_codec, s)?;
        }
        let name = opts.name.clone().unwrap_or_else(|| doc.name.clone());
        let devices: Vec<&str> = doc.volumes.iter().map(|v| v.device.as_str()).collect();
        target.check_new_image(&name, &devices, Some(&doc.root_device))?;
        let target_codec = target.codec_for_new(target_access, opts.key.as_deref())?;
        let same_store = self.config().id == target.config().id;

        let _lock = self.lock_shared("image copy", progress)?;
        let _target_lock = if same_store {
            None
        } else {
            Some(target.lock_shared("image copy", progress)?)
        };
        let target_index = target.open_index(target_access, progress)?;
        let source_index = if same_store {
            None
        } else {
            Some(self.open_index(access, progress)?)
        };
        let source_index = source_index.as_ref().unwrap_or(&target_index);

        // The work is the data chunks read from this store (holes cost nothing).
        progress.start("copy", snaps.iter().map(|s| s.data_bytes).sum());
        let within = Within(progress);
        let mut reports = Vec::new();
        // Copies made before, newest first (read once), and those this loop makes (an image
        // may map one snapshot to two devices).
        let copied: Vec<SnapshotDoc> = target.list_snapshots()?.into_iter().rev().collect();
        let mut made: Vec<(SnapshotId, SnapshotReport)> = Vec::new();
        for snap in &snaps {
            crate::cancel::check()?;
            if let Some((_, r)) = made.iter().find(|(id, _)| *id == snap.id) {
                progress.advance(snap.data_bytes);
                reports.push(reused_report(r));
                continue;
            }
            let from = format!("{}/{}", self.config().id, snap.id);
            let existing = copied.iter().find(|s| {
                s.tags.get(TAG_COPIED_FROM) == Some(&from) && s.key == target_codec.key_id()
            });
            let report = match existing {
                Some(s) => {
                    progress.advance(snap.data_bytes);
                    reused(s)
                }
                None => self
                    .copy_snapshot(
                        snap,
                        &from,
                        (&source_codec, source_index),
                        target,
                        target_access,
                        (&target_codec, &target_index),
                        &within,
                    )
                    .map_err(|e| e.context(&format!("snapshot {}", snap.id)))?,
            };
            made.push((snap.id, report.clone()));
            reports.push(report);
        }
        progress.finish();

        let volumes = doc
            .volumes
            .iter()
            .zip(&reports)
            .map(|(v, r)| ImageVolume {
                device: v.device.clone(),
                snapshot: r.id,
                size: v.size,
            })
            .collect();
        let mut copy = new_image(
            &name,
            &target_access.account,
            &doc.root_device,
            volumes,
            target_codec.key_id(),
        );
        copy.description.clone_from(&doc.description);
        copy.tags.clone_from(&doc.tags);
        target.write_new_image(target_access, &target_codec, &mut copy)?;
        Ok(ImageReport {
            image: copy,
            snapshots: reports,
            seconds: Some(started.elapsed().as_secs_f64()),
        })
    }

    /// Copies one snapshot: its chunks are read, verified and decrypted here, and stored in the
    /// target under the target's key (only those it lacks); then its document is committed there.
    #[allow(clippy::too_many_arguments)]
    fn copy_snapshot(
        &self,
        snap: &SnapshotDoc,
        from: &str,
        (source_codec, source_index): (&ChunkCodec, &Index),
        target: &Store,
        target_access: &Access,
        (target_codec, target_index): (&ChunkCodec, &Index),
        progress: &dyn Progress,
    ) -> Result<SnapshotReport> {
        let started = Instant::now();
        let reader = ChunkReader::new(self, source_codec, source_index);
        let stored = target.store_pieces(
            target_codec,
            target_index,
            |tx| read_snapshot(&reader, snap, tx),
            progress,
        )?;
        if stored.size != snap.size {
            return Err(StoreError::Damaged(format!(
                "snapshot {}: its extents cover {} bytes, its size is {}",
                snap.id, stored.size, snap.size
            )));
        }
        let mut tags = snap.tags.clone();
        tags.insert(TAG_COPIED_FROM.into(), from.into());
        let doc = SnapshotDoc {
            format: SnapshotDoc::FORMAT.into(),
            id: SnapshotId(u64::from_le_bytes(fsutil::random_bytes())),
            volume: snap.volume.clone(),
            size: snap.size,
            created: fsutil::now_rfc3339(),
            parent: target.latest_snapshot(&snap.volume)?.map(|s| s.id),
            key: target_codec.key_id(),
            owner: target_access.account.clone(),
            chunker: snap.chunker,
            tags,
            description: snap.description.clone(),
            data_bytes: stored.data_bytes,
            extents: stored.extents.clone(),
            source_path: snap.source_path.clone(),
            source_host: snap.source_host.clone(),
            source_changed: snap.source_changed,
            dirty_bitmap: snap.dirty_bitmap.clone(),
            seq: None,
            mac: None,
        };
        target.commit_snapshot(target_access, doc, &stored, started)
    }
}

/// Sends a snapshot's pieces, in volume order, in batches read and decoded in parallel. Stops
/// at the first error (which it sends) or when the receiver is gone.
fn read_snapshot(reader: &ChunkReader<'_>, snap: &SnapshotDoc, tx: &Sender<Result<ReadBatch>>) {
    let mut extents = Vec::new();
    let mut bytes = 0u64;
    let send = |extents: &mut Vec<Extent>| -> Result<()> {
        /// An extent, with its chunk's bytes read.
        enum Part {
            Hole(u64),
            Data(Vec<u8>),
        }
        let parts: Vec<Part> = extents
            .par_iter()
            .map(|e| match *e {
                Extent::Hole { len } => Ok(Part::Hole(len)),
                Extent::Data { len, id } => {
                    let data = reader.read(&id)?;
                    if data.len() != len as usize {
                        return Err(StoreError::Damaged(format!(
                            "chunk {id} has {} bytes, the extent list says {len}",
                            data.len()
                        )));
                    }
                    Ok(Part::Data(data))
                }
            })
            .collect::<Result<_>>()?;
        let mut batch = ReadBatch::default();
        batch.reserve(
            parts
                .iter()
                .map(|p| match p {
                    Part::Data(d) => d.len(),
                    Part::Hole(_) => 0,
                })
                .sum(),
        );
        // Each chunk's own buffer is freed once copied into the batch's.
        for part in parts {
            match part {
                Part::Hole(len) => batch.push_hole(len),
                Part::Data(data) => batch.push_data(&data),
            }
        }
        extents.clear();
        tx.send(Ok(batch))
            .map_err(|_| StoreError::Other("the copy was stopped".into()))
    };
    let result = reader
        .for_each_extent(snap, |_, e| {
            if let Extent::Data { len, .. } = e {
                bytes += u64::from(len);
            }
            extents.push(e);
            if bytes >= BATCH_BYTES {
                bytes = 0;
                send(&mut extents)?;
            }
            Ok(())
        })
        .and_then(|()| send(&mut extents));
    if let Err(e) = result {
        let _ = tx.send(Err(e));
    }
}

/// The report of a snapshot this copy already made for another device.
fn reused_report(r: &SnapshotReport) -> SnapshotReport {
    SnapshotReport {
        bytes_read: 0,
        bytes_hole: 0,
        chunks: 0,
        chunks_new: 0,
        bytes_new: 0,
        bytes_stored: 0,
        seconds: 0.0,
        packs: 0,
        ..r.clone()
    }
}

/// The report of a snapshot the target already held: nothing read, nothing stored.
fn reused(s: &SnapshotDoc) -> SnapshotReport {
    SnapshotReport {
        id: s.id,
        volume: s.volume.clone(),
        size: s.size,
        bytes_read: 0,
        bytes_hole: 0,
        chunks: 0,
        chunks_new: 0,
        bytes_new: 0,
        bytes_stored: 0,
        seconds: 0.0,
        parent: s.parent,
        key: s.key,
        packs: 0,
        source: s.source_path.clone(),
        source_changed: s.source_changed,
        bytes_from_parent: 0,
        parent_chunks_checked: 0,
        dirty_bitmap: s.dirty_bitmap.clone(),
    }
}
