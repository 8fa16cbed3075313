//! Images: named sets of snapshots by device (a block device mapping) with an owner, launch
//! permissions, tags and a key.
//!
//! Launching (rebuilding) an image takes two things: a launch permission, which is a line in
//! the image document, and a grant on its key, which is cryptography. Only the owner changes the
//! first; nobody can forge the second. An account that edits a document to give itself launch
//! permission still cannot decrypt a chunk.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blocksnap_manifest::{
    Document, ImageDoc, ImageId, ImageVolume, LaunchPermissions, SnapshotDoc, SnapshotId,
    device_file_name, validate_device,
};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::lifecycle::trash::TrashEntry;
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::Kind;
use crate::repo::resolve::resolve;
use crate::snapshot::create::{SnapshotOptions, SnapshotReport, Within};
use crate::snapshot::restore::RestoreReport;
use crate::snapshot::target::{RestoreOptions, TargetKind};

/// Options of `image create`.
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// The image's name, unique in the store.
    pub name: String,
    /// Each device and the disk image or block device (or registered volume) it is made from.
    pub volumes: Vec<(String, PathBuf)>,
    /// The boot device [default: the first volume's].
    pub root_device: Option<String>,
    /// The key to encrypt with (name or id) [default: `default`].
    pub key: Option<String>,
    /// Tags of the image (and of its snapshots).
    pub tags: BTreeMap<String, String>,
    /// Free text.
    pub description: String,
    /// Each source is its volume's disk, moved (see [`SnapshotOptions::source_moved`]).
    pub source_moved: bool,
}

/// An image as `image create`, `show` and `list` print it: the document, and for `create` and
/// `copy` what each volume's snapshot stored.
#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    /// The image document.
    #[serde(flatten)]
    pub image: ImageDoc,
    /// What was stored for each volume (`create`, `copy`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotReport>,
    /// Wall time (`create`, `copy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

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
    /// The file written (OUTDIR/<device's last path part>.img).
    pub output: PathBuf,
    /// A file or a block device (when `output` is a symbolic link to one).
    pub kind: TargetKind,
    /// What was written: `output`, or what its symbolic link points to.
    pub written_to: PathBuf,
    /// An existing file was replaced (`--force`).
    pub replaced: bool,
    /// Bytes of a block device past the snapshot's size, left as they were.
    pub tail_left: u64,
    /// The snapshot's source was written while it was being read.
    pub source_changed: bool,
}

/// What `image deregister` did.
#[derive(Clone, Debug, Serialize)]
pub struct DeregisterReport {
    /// The image, now in the trash.
    pub image: TrashEntry,
    /// Its snapshots moved to the trash (`--delete-snapshots`).
    pub snapshots_deleted: Vec<TrashEntry>,
    /// Its snapshots kept because another image maps them.
    pub snapshots_kept: Vec<SnapshotId>,
}

/// Who a sharing change is about.
#[derive(Clone, Debug)]
pub enum Audience {
    /// Every account of the store.
    Public,
    /// One account.
    Account(String),
}

/// A new, private image document: a fresh id, created now, no description or tags.
pub(crate) fn new_image(
    name: &str,
    owner: &str,
    root_device: &str,
    volumes: Vec<ImageVolume>,
    key: Option<blocksnap_manifest::KeyId>,
) -> ImageDoc {
    ImageDoc {
        format: ImageDoc::FORMAT.into(),
        id: ImageId(u64::from_le_bytes(fsutil::random_bytes())),
        name: name.into(),
        owner: owner.into(),
        created: fsutil::now_rfc3339(),
        description: String::new(),
        tags: BTreeMap::new(),
        root_device: root_device.into(),
        volumes,
        launch_permissions: LaunchPermissions::default(),
        key,
    }
}

impl Store {
    /// Creates an image's document (a new image, or one back from the trash).
    pub(crate) fn write_image(&self, doc: &ImageDoc) -> Result<()> {
        self.create_doc(Kind::Image, &doc.id.to_string(), doc)
            .map(|_| ())
    }

    /// Every image document, by name.
    pub fn list_images(&self) -> Result<Vec<ImageDoc>> {
        let mut v: Vec<ImageDoc> = self.list_docs(Kind::Image)?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// The images `access` may launch (owned, shared with it, or public), by name.
    pub fn visible_images(&self, access: &Access) -> Result<Vec<ImageDoc>> {
        let mut v = self.list_images()?;
        v.retain(|i| i.may_launch(&access.account));
        Ok(v)
    }

    /// An image by name, full id or unique id prefix ([`crate::repo::resolve`]).
    pub fn resolve_image(&self, text: &str) -> Result<ImageDoc> {
        let images = self.list_images()?;
        resolve(
            "image",
            "blocksnap image list",
            ImageId::PREFIX,
            text,
            &images,
            |i| Some(i.id.to_string()),
            |i| Some(i.name.as_str()),
        )
        .cloned()
    }

    /// The live images that map snapshot `id`.
    pub fn images_using(&self, id: SnapshotId) -> Result<Vec<ImageDoc>> {
        let mut v = self.list_images()?;
        v.retain(|i| i.volumes.iter().any(|vol| vol.snapshot == id));
        Ok(v)
    }

    /// Checks a new image's name and devices before any data moves.
    pub(crate) fn check_new_image(
        &self,
        name: &str,
        devices: &[&str],
        root: Option<&str>,
    ) -> Result<()> {
        let usage = |e: blocksnap_manifest::DocError| StoreError::Usage(e.to_string());
        blocksnap_manifest::validate_name("image", "name", name).map_err(usage)?;
        if self.list_images()?.iter().any(|i| i.name == name) {
            return Err(StoreError::Usage(format!(
                "an image named '{name}' exists already; choose another name"
            )));
        }
        if devices.is_empty() {
            return Err(StoreError::Usage(
                "an image needs at least one --volume DEVICE=…".into(),
            ));
        }
        // Validate the mapping as the document will be, with placeholder snapshots.
        let draft = new_image(
            name,
            "owner",
            root.unwrap_or(devices[0]),
            devices
                .iter()
                .map(|d| ImageVolume {
                    device: (*d).into(),
                    snapshot: SnapshotId(0),
                    size: 0,
                })
                .collect(),
            None,
        );
        for d in devices {
            validate_device("image", "device", d).map_err(|e| match e {
                blocksnap_manifest::DocError::Invalid { problem, .. } => {
                    StoreError::Usage(format!("--volume {d}=…: the device name {problem}"))
                }
                other => usage(other),
            })?;
        }
        draft.validate().map_err(usage)
    }

    /// Snapshots every volume (several at once, as many as there are cores) and records the
    /// mapping as a new image owned by `access`. The image exists once its document does; its
    /// snapshots are committed before it.
    pub fn create_image(
        &self,
        access: &Access,
        opts: &ImageOptions,
        progress: &dyn Progress,
    ) -> Result<ImageReport> {
        let started = Instant::now();
        let devices: Vec<&str> = opts.volumes.iter().map(|(d, _)| d.as_str()).collect();
        self.check_new_image(&opts.name, &devices, opts.root_device.as_deref())?;
        blocksnap_manifest::validate_tags("image", &opts.tags)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        let codec = self.codec_for_new(access, opts.key.as_deref())?;
        // Every source is checked before the lock is taken (see `Store::snapshot`).
        let mut jobs = Vec::new();
        for (device, path) in &opts.volumes {
            let snap = SnapshotOptions {
                source: path.clone(),
                volume: None,
                key: opts.key.clone(),
                tags: opts.tags.clone(),
                description: format!("image {} device {device}", opts.name),
                created: None,
                source_moved: opts.source_moved,
            };
            let source = self
                .open_source(&snap, progress)
                .map_err(|e| e.context(&format!("device {device}")))?;
            if let Some((other, _, _)) = jobs.iter().find(
                |(_, _, s): &&(String, SnapshotOptions, crate::snapshot::source::Source)| {
                    s.volume == source.volume
                },
            ) {
                return Err(StoreError::Usage(format!(
                    "devices {other} and {device} would both be snapshots of volume '{}'; register each disk under its own name (`blocksnap volume add NAME PATH`) and give --volume DEVICE=NAME",
                    source.volume
                )));
            }
            jobs.push((device.clone(), snap, source));
        }
        let _lock = self.lock_shared("image create", progress)?;
        let index = self.open_index(access, progress)?;
        let total = jobs.iter().map(|(_, _, s)| s.size).sum();
        progress.start("image", total);
        let within = Within(progress);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // The volumes share one set of pending chunks, so that content common to two volumes
        // is stored once; a snapshot may then reference chunks another volume's pipeline wrote,
        // so the snapshot documents are written only after every pipeline has finished (every
        // pack durable and indexed).
        let pending = crate::packs::writer::Pending::default();
        let mut stored = Vec::new();
        let mut queue = jobs.into_iter();
        loop {
            let group: Vec<_> = queue.by_ref().take(cores).collect();
            if group.is_empty() {
                break;
            }
            let results: Vec<Result<_>> = std::thread::scope(|scope| {
                let handles: Vec<_> = group
                    .into_iter()
                    .map(|(device, snap, source)| {
                        let (index, within, pending) = (&index, &within, pending.clone());
                        scope.spawn(move || {
                            self.snapshot_uncommitted(
                                access,
                                &snap,
                                source,
                                index,
                                Some(pending),
                                within,
                            )
                            .map_err(|e| e.context(&format!("device {device}")))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(StoreError::Other("a snapshot thread panicked".into()))
                        })
                    })
                    .collect()
            });
            for r in results {
                stored.push(r?);
            }
        }
        let mut reports: Vec<SnapshotReport> = Vec::new();
        for (doc, s, started) in stored {
            reports.push(self.commit_snapshot(doc, &s, started)?);
        }
        progress.finish();
        let volumes = devices
            .iter()
            .zip(&reports)
            .map(|(d, r)| ImageVolume {
                device: (*d).to_string(),
                snapshot: r.id,
                size: r.size,
            })
            .collect();
        let root = opts.root_device.as_deref().unwrap_or(devices[0]);
        let mut doc = new_image(&opts.name, &access.account, root, volumes, codec.key_id());
        doc.description.clone_from(&opts.description);
        doc.tags.clone_from(&opts.tags);
        self.write_image(&doc)?;
        Ok(ImageReport {
            image: doc,
            snapshots: reports,
            seconds: Some(started.elapsed().as_secs_f64()),
        })
    }

    /// Registers an image from existing snapshots. They must all be under one key, which the
    /// acting account must hold.
    pub fn register_image(
        &self,
        access: &Access,
        name: &str,
        volumes: &[(String, String)],
        root_device: Option<&str>,
    ) -> Result<ImageReport> {
        self.require_writable("image register")?;
        let devices: Vec<&str> = volumes.iter().map(|(d, _)| d.as_str()).collect();
        self.check_new_image(name, &devices, root_device)?;
        let snaps: Vec<SnapshotDoc> = volumes
            .iter()
            .map(|(_, s)| self.resolve_snapshot(s))
            .collect::<Result<_>>()?;
        let key = snaps[0].key;
        if let Some(other) = snaps.iter().find(|s| s.key != key) {
            return Err(StoreError::Usage(format!(
                "snapshots {} and {} are under different keys; an image has one key \
                 (copy one with `blocksnap image copy` to re-encrypt it)",
                snaps[0].id, other.id
            )));
        }
        // The registering account must be able to read what it registers.
        self.codec(access, key)?;
        let volumes = devices
            .iter()
            .zip(&snaps)
            .map(|(d, s)| ImageVolume {
                device: (*d).to_string(),
                snapshot: s.id,
                size: s.size,
            })
            .collect();
        let root = root_device.unwrap_or(devices[0]);
        let doc = new_image(name, &access.account, root, volumes, key);
        self.write_image(&doc)?;
        Ok(ImageReport {
            image: doc,
            snapshots: Vec::new(),
            seconds: None,
        })
    }

    /// Fails with `Denied` unless `access` may launch `image`: it needs the launch permission
    /// and a grant on the image's key. The message names what is missing and the commands that
    /// grant it. Whether the grant really unwraps is proven when the key is used.
    pub fn check_launch(&self, access: &Access, image: &ImageDoc) -> Result<()> {
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
    /// byte-identical and sparse, verified chunk by chunk. Each output follows the rules of
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
        let snaps = self.image_snapshots(&doc)?;
        for s in &snaps {
            self.codec(access, s.key)?;
        }
        // Every check before anything is created: the directory, then each output in it.
        let created = self.plan_outdir(outdir)?;
        let mut targets = Vec::new();
        for (v, snap) in doc.volumes.iter().zip(&snaps) {
            let output = outdir.join(device_file_name(&v.device));
            let target = if created.is_some() {
                // A new directory holds only new files.
                self.new_file_target(&output, snap)
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

    /// Gives an account (or every account) launch permission. Owner only.
    pub fn share_image(&self, access: &Access, image: &str, to: &Audience) -> Result<ImageDoc> {
        self.change_sharing(access, image, to, true)
    }

    /// Takes launch permission away from an account (or from the public). Owner only.
    pub fn unshare_image(&self, access: &Access, image: &str, to: &Audience) -> Result<ImageDoc> {
        self.change_sharing(access, image, to, false)
    }

    fn change_sharing(
        &self,
        access: &Access,
        image: &str,
        to: &Audience,
        share: bool,
    ) -> Result<ImageDoc> {
        self.require_writable(if share {
            "image share"
        } else {
            "image unshare"
        })?;
        let doc = self.resolve_image(image)?;
        self.require_owner(access, &doc, if share { "share" } else { "unshare" })?;
        if let Audience::Account(name) = to {
            self.account(name)?;
        }
        // A compare-and-swap: a share by another process meanwhile is kept.
        self.update_doc::<ImageDoc>(Kind::Image, &doc.id.to_string(), |doc| {
            let perms = &mut doc.launch_permissions;
            match to {
                Audience::Public => perms.public = share,
                Audience::Account(name) => {
                    perms.accounts.retain(|a| a != name);
                    if share {
                        perms.accounts.push(name.clone());
                        perms.accounts.sort();
                    }
                }
            }
            Ok(())
        })?
        .ok_or_else(|| StoreError::NotFound {
            kind: "image",
            name: image.into(),
            hint: " (it was deregistered meanwhile)".into(),
        })
    }

    fn require_owner(&self, access: &Access, doc: &ImageDoc, what: &str) -> Result<()> {
        if doc.owner != access.account {
            return Err(StoreError::Denied(format!(
                "only the owner '{}' of image '{}' may {what} it, not '{}'",
                doc.owner, doc.name, access.account
            )));
        }
        // Prove the acting account is who it says: its identity must open its own grants.
        access.prove(self)
    }

    /// Removes an image (to the trash, restorable like a snapshot). With `delete_snapshots`
    /// its snapshots go to the trash too, except those another live image still maps.
    pub fn deregister_image(
        &self,
        access: &Access,
        image: &str,
        delete_snapshots: bool,
    ) -> Result<DeregisterReport> {
        self.require_writable("image deregister")?;
        let doc = self.resolve_image(image)?;
        self.require_owner(access, &doc, "deregister")?;
        let tomb = self.tombstone(access, None, Some(doc.clone()))?;
        self.delete_object(&Kind::Image.key(&doc.id.to_string()))?;
        let mut report = DeregisterReport {
            image: crate::lifecycle::trash::entry(&tomb),
            snapshots_deleted: Vec::new(),
            snapshots_kept: Vec::new(),
        };
        if delete_snapshots {
            for v in &doc.volumes {
                if !self.images_using(v.snapshot)?.is_empty() {
                    report.snapshots_kept.push(v.snapshot);
                    continue;
                }
                let Some(s) = self.snapshot_doc(v.snapshot)? else {
                    continue;
                };
                report
                    .snapshots_deleted
                    .push(self.trash_snapshot(access, s)?);
            }
        }
        Ok(report)
    }
}
