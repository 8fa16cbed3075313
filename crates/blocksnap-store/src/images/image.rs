//! Images: named sets of snapshots by device (a block device mapping) with an owner, launch
//! permissions, tags and a key — listed, resolved, created (its volumes snapshotted at once) and
//! registered (from snapshots already taken). Launching one is in [`crate::images::launch`],
//! sharing and deregistering in [`crate::images::sharing`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use blocksnap_manifest::{
    Document, ImageDoc, ImageId, ImageVolume, LaunchPermissions, SnapshotDoc, SnapshotId,
    validate_device,
};
use blocksnap_pack::ChunkCodec;
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::Kind;
use crate::repo::resolve::resolve;
use crate::snapshot::create::{SnapshotOptions, SnapshotReport, Within};

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
        mac: None,
        owner_signature: None,
    }
}

impl Store {
    /// Signs a new image's document as its owner `access`, seals it under `codec` (the image's
    /// key) and creates it.
    pub(crate) fn write_new_image(
        &self,
        access: &Access,
        codec: &ChunkCodec,
        doc: &mut ImageDoc,
    ) -> Result<()> {
        self.sign_image(access, doc)?;
        self.seal(codec, doc)?;
        self.write_image(doc)
    }

    /// Creates an image's document (a new image, or one back from the trash, sealed).
    pub(crate) fn write_image(&self, doc: &ImageDoc) -> Result<()> {
        self.ensure_lock_held(&format!("committing image {}", doc.id), true)?;
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
                format: None,
                dirty_bitmap: None,
            };
            let source = self
                .open_source(access, &snap, progress)
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
        let mut total = 0;
        for (_, _, source) in &jobs {
            total += source.bytes_to_read()?;
        }
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
            reports.push(self.commit_snapshot(access, doc, &s, started)?);
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
        self.write_new_image(access, &codec, &mut doc)?;
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
        // The registering account must be able to read what it registers, and every snapshot
        // must be one the key's holders wrote.
        for s in &snaps {
            self.verify_unkeyed(s)?;
        }
        let codec = self.codec(access, key)?;
        for s in &snaps {
            self.verify(&codec, s)?;
        }
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
        let mut doc = new_image(name, &access.account, root, volumes, key);
        self.write_new_image(access, &codec, &mut doc)?;
        Ok(ImageReport {
            image: doc,
            snapshots: Vec::new(),
            seconds: None,
        })
    }
}
