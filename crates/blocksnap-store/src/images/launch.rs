//! Launching an image: `image rebuild` writes every device of an image, each byte-identical
//! and verified, for an account that may launch it.
//!
//! Launching takes two things: a launch permission, which is a line in the image document, and
//! a grant on its key, which is cryptography. Only the owner changes the first
//! ([`crate::images::sharing`]); nobody can forge the second. An account that edits a document
//! to give itself launch permission still cannot decrypt a chunk.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blocksnap_manifest::{ImageDoc, ImageId, SnapshotDoc, SnapshotId, device_file_name};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::Kind;
use crate::snapshot::restore::RestoreReport;
use crate::snapshot::target::{RestoreOptions, TargetFormat, TargetKind};

/// What `image rebuild` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct RebuildReport {
    /// The image.
    pub id: ImageId,
    /// Its name.
    pub name: String,
    /// One entry per device.
    pub volumes: Vec<RebuiltVolume>,
    /// Wall time.
    pub seconds: f64,
}

/// One device of a rebuilt image.
#[derive(Clone, Debug, Serialize)]
pub struct RebuiltVolume {
    /// The device name.
    pub device: String,
    /// The snapshot it was built from.
    pub snapshot: SnapshotId,
    /// Its size.
    pub size: u64,
    /// Data bytes written.
    pub bytes_written: u64,
    /// The file written (OUTDIR/<device's last path part>.img, or .qcow2 with `--format
    /// qcow2`).
    pub output: PathBuf,
    /// A file or a block device (when `output` is a symbolic link to one).
    pub kind: TargetKind,
    /// The image format written: `raw` or `qcow2`.
    pub format: TargetFormat,
    /// What was written: `output`, or what its symbolic link points to.
    pub written_to: PathBuf,
    /// An existing file was replaced (`--force`).
    pub replaced: bool,
    /// Bytes of a block device past the snapshot's size, left as they were.
    pub tail_left: u64,
    /// The snapshot's source was written while it was being read.
    pub source_changed: bool,
}

impl Store {
    /// Fails with `Denied` unless `access` may launch `image`: it needs the launch permission
    /// and a grant on the image's key. The message names what is missing and the commands that
    /// grant it. Whether the grant really unwraps is proven when the key is used.
    pub fn check_launch(&self, access: &Access, image: &ImageDoc) -> Result<()> {
        // The launch permissions count only as the owner signed them.
        self.verify_image_signature(image)?;
        let who = &access.account;
        let permitted = image.may_launch(who);
        let key = match image.key {
            Some(id) => Some(self.key_by_id(id)?),
            None => None,
        };
        let granted = key
            .as_ref()
            .is_none_or(|k| k.grants.iter().any(|g| &g.account == who));
        if permitted && granted {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut fixes = Vec::new();
        if !permitted {
            missing.push("the launch permission".to_string());
            fixes.push(format!(
                "the owner '{}' can run `blocksnap --account {} image share {} --account {who}`",
                image.owner, image.owner, image.name
            ));
        }
        if let (false, Some(k)) = (granted, &key) {
            missing.push(format!("a grant on its key '{}' ({})", k.name, k.id));
            fixes.push(format!(
                "an account holding the key ({}) can run `blocksnap --account {} key grant {} {who}`",
                k.grants
                    .iter()
                    .map(|g| g.account.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                k.grants.first().map_or("OWNER", |g| g.account.as_str()),
                k.name
            ));
        }
        Err(StoreError::Denied(format!(
            "account '{who}' may not launch image '{}' ({}): it lacks {}; {}",
            image.name,
            image.id,
            missing.join(" and "),
            fixes.join("; ")
        )))
    }

    /// Rebuilds every device of an image into `outdir/<device's last path part>.img`, each
    /// byte-identical and sparse, verified chunk by chunk (with `opts.format` qcow2, into
    /// `….qcow2` images holding only the data). Each output follows the rules of
    /// `snapshot restore` ([`Store::plan_target`]), and every one is checked before the
    /// first is written.
    pub fn rebuild_image(
        &self,
        access: &Access,
        image: &str,
        outdir: &Path,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RebuildReport> {
        let started = Instant::now();
        let doc = self.resolve_image(image)?;
        self.check_launch(access, &doc)?;
        let codec = self.image_codec(access, &doc)?;
        let snaps = self.image_snapshots(&doc)?;
        for s in &snaps {
            self.verify(&codec, s)?;
        }
        // Every check before anything is created: the format, the directory, then each
        // output in it.
        for (v, snap) in doc.volumes.iter().zip(&snaps) {
            crate::snapshot::target::check_format(snap, opts.format)
                .map_err(|e| e.context(&format!("image {} device {}", doc.name, v.device)))?;
        }
        let created = self.plan_outdir(outdir)?;
        let mut targets = Vec::new();
        for (v, snap) in doc.volumes.iter().zip(&snaps) {
            let mut output = outdir.join(device_file_name(&v.device));
            if opts.format == TargetFormat::Qcow2 {
                output.set_extension("qcow2");
            }
            let target = if created.is_some() {
                // A new directory holds only new files.
                self.new_file_target(&output, snap, opts.format)
            } else {
                self.plan_target(&output, snap, opts)
                    .map_err(|e| e.context(&format!("image {} device {}", doc.name, v.device)))?
            };
            targets.push(target);
        }
        if created.is_some() {
            fs::create_dir_all(outdir).map_err(StoreError::io("cannot create", outdir))?;
        }
        let result = self.rebuild_into(access, &doc, &snaps, targets, progress);
        if let (Err(_), Some(first)) = (&result, &created) {
            // Nothing was rebuilt: remove the directories this run created, if still empty.
            let abs = std::path::absolute(outdir).unwrap_or_else(|_| outdir.to_path_buf());
            for d in abs.ancestors() {
                if fs::remove_dir(d).is_err() || d == first {
                    break;
                }
            }
        }
        let volumes = result?;
        Ok(RebuildReport {
            id: doc.id,
            name: doc.name,
            volumes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Restores each of an image's snapshots into its planned target.
    fn rebuild_into(
        &self,
        access: &Access,
        doc: &ImageDoc,
        snaps: &[SnapshotDoc],
        targets: Vec<crate::snapshot::target::Target>,
        progress: &dyn Progress,
    ) -> Result<Vec<RebuiltVolume>> {
        let mut volumes = Vec::new();
        for ((v, snap), target) in doc.volumes.iter().zip(snaps).zip(targets) {
            let r: RestoreReport = self
                .restore_into(access, snap, target, progress)
                .map_err(|e| e.context(&format!("image {} device {}", doc.name, v.device)))?;
            volumes.push(RebuiltVolume {
                device: v.device.clone(),
                snapshot: v.snapshot,
                size: r.size,
                bytes_written: r.bytes_written,
                output: r.output,
                kind: r.kind,
                format: r.format,
                written_to: r.written_to,
                replaced: r.replaced,
                tail_left: r.tail_left,
                source_changed: r.source_changed,
            });
        }
        Ok(volumes)
    }

    /// The snapshot of each volume of an image, checked against the mapping: present, of the
    /// recorded size, under the image's key.
    pub(crate) fn image_snapshots(&self, doc: &ImageDoc) -> Result<Vec<SnapshotDoc>> {
        doc.volumes
            .iter()
            .map(|v| {
                let Some(s) = self.snapshot_doc(v.snapshot)? else {
                    return Err(StoreError::Damaged(format!(
                        "image '{}' device {}: snapshot {} is not in the store{}",
                        doc.name,
                        v.device,
                        v.snapshot,
                        if self
                            .get_object(&Kind::Trash.key(&v.snapshot.to_string()))?
                            .is_some()
                        {
                            format!(
                                " (it is in the trash: `blocksnap trash restore {}`)",
                                v.snapshot
                            )
                        } else {
                            String::new()
                        }
                    )));
                };
                if s.size != v.size || s.key != doc.key {
                    return Err(StoreError::Damaged(format!(
                        "image '{}' device {}: snapshot {} has size {} and key {:?}, the image says {} and {:?}",
                        doc.name, v.device, s.id, s.size, s.key, v.size, doc.key
                    )));
                }
                Ok(s)
            })
            .collect()
    }
}
