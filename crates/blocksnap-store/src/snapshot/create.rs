//! `snapshot create`: source -> extents -> chunks -> ids -> lookup -> encode -> pack -> commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blocksnap_index::Index;
use blocksnap_manifest::{Document, KeyId, SnapshotDoc, SnapshotId, VolumeDoc};

use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::packs::writer::Pending;
use crate::progress::Progress;
use crate::repo::Store;
use crate::snapshot::pipeline::Stored;
use crate::snapshot::source::{Source, SourceId};

/// Options of `snapshot create`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// The disk image or block device.
    pub source: PathBuf,
    /// The volume's name; default: the source's file name.
    pub volume: Option<String>,
    /// The key to encrypt with (name or id); default: `default`.
    pub key: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Free text.
    pub description: String,
    /// The time to record as the snapshot's creation (RFC 3339); default: now. Policies that
    /// run for a given `--at` time record that time.
    pub created: Option<String>,
    /// The source is the disk the volume's snapshots were taken of, moved, renamed or now on
    /// another host: accept it although its path or host differs from the recorded one, and
    /// record the new place (in the snapshot, and in the registered volume if there is one).
    pub source_moved: bool,
    /// How to read the source file: raw or qcow2; default: what its first bytes say.
    pub format: Option<blocksnap_source::Format>,
    /// Read only what this dirty bitmap of the NBD source (`qemu:dirty-bitmap:NAME`) marks,
    /// taking the rest from the parent snapshot (which must be of this volume and size, and
    /// taken when the bitmap was started).
    pub dirty_bitmap: Option<String>,
}

/// What `snapshot create` did (the `--json` output).
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    /// The new snapshot.
    pub id: SnapshotId,
    /// Its volume.
    pub volume: String,
    /// The volume's size.
    pub size: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes skipped as holes or zeros.
    pub bytes_hole: u64,
    /// Data chunks in the snapshot.
    pub chunks: u64,
    /// Data chunks the store did not have yet.
    pub chunks_new: u64,
    /// Raw bytes of those new chunks.
    pub bytes_new: u64,
    /// Bytes added to the store on disk: packs (after compression and encryption) and documents.
    pub bytes_stored: u64,
    /// Wall time.
    pub seconds: f64,
    /// The previous snapshot of the volume.
    pub parent: Option<SnapshotId>,
    /// The key used.
    pub key: Option<KeyId>,
    /// Packs written.
    pub packs: u64,
    /// The source read (absolute path), as the snapshot records it.
    pub source: Option<String>,
    /// The source was written while it was being read: the snapshot is committed, but may not
    /// be consistent (like a disk pulled from a running machine).
    pub source_changed: bool,
    /// Data bytes taken from the parent snapshot without reading (`--dirty-bitmap`).
    pub bytes_from_parent: u64,
    /// Of the chunks taken from the parent, those looked up in the index one by one: 0 when
    /// the index had recorded the parent's packs and all of them were there (checked instead).
    pub parent_chunks_checked: u64,
    /// The dirty bitmap that said what to read, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_bitmap: Option<String>,
}

/// Progress of one of several operations that share a bar: phases are the caller's.
pub(crate) struct Within<'a>(pub &'a dyn Progress);

impl Progress for Within<'_> {
    fn advance(&self, bytes: u64) {
        self.0.advance(bytes);
    }
    fn message(&self, text: &str) {
        self.0.message(text);
    }
}

impl Store {
    /// Takes a snapshot of a disk image or block device.
    pub fn snapshot(
        &self,
        access: &Access,
        opts: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<SnapshotReport> {
        // The source is checked before any lock is taken: a FIFO, a directory or another
        // disk under the volume's name is refused at once.
        let source = self.open_source(access, opts, progress)?;
        let _lock = self.lock_shared("snapshot", progress)?;
        let index = self.open_index(access, progress)?;
        progress.start("snapshot", source.bytes_to_read()?);
        let r = self.snapshot_with(access, opts, source, &index, progress)?;
        progress.finish();
        Ok(r)
    }

    /// Opens the source of a snapshot (a path, or the name of a registered volume) and checks
    /// that it is the disk its volume's chain was taken of.
    pub(crate) fn open_source(
        &self,
        access: &Access,
        opts: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<Source> {
        let text = opts.source.to_string_lossy();
        if blocksnap_nbd::client::is_uri(&text) {
            if opts.format.is_some() {
                return Err(StoreError::Usage(format!(
                    "--format is for image files; {text} is an NBD export, read as the server exports it"
                )));
            }
            let mut source = Source::open_nbd(&text, opts.dirty_bitmap.as_deref())?;
            source.volume = match &opts.volume {
                Some(v) => v.clone(),
                None => nbd_volume_name(&text)?,
            };
            blocksnap_manifest::validate_name("snapshot", "volume", &source.volume)
                .map_err(|e| StoreError::Usage(format!("volume name: {e}")))?;
            self.check_chain(access, &source, opts, progress)?;
            return Ok(source);
        }
        if opts.dirty_bitmap.is_some() {
            return Err(StoreError::Usage(format!(
                "--dirty-bitmap reads QEMU's dirty bitmap through an NBD export, and {text} is not one: export the disk with `qemu-nbd --bitmap NAME` (or QEMU's NBD server) and snapshot nbd://HOST:PORT/EXPORT"
            )));
        }
        let (path, registered) = self.source_path(access, opts)?;
        let mut source = Source::open(&path, opts.format)?;
        source.volume = volume_of(opts, registered.as_ref())?;
        self.check_chain(access, &source, opts, progress)?;
        if source.size == 0 {
            progress.message(&format!(
                "note: {} is empty (0 bytes): the snapshot records an empty volume",
                path.display()
            ));
        }
        Ok(source)
    }

    /// The path of a snapshot's source, and the registered volume it names if it is one.
    fn source_path(
        &self,
        access: &Access,
        opts: &SnapshotOptions,
    ) -> Result<(PathBuf, Option<VolumeDoc>)> {
        let registered = match opts.source.to_str() {
            Some(name) if !opts.source.exists() => {
                let v = self.verified_volume(access, name)?;
                if v.is_none() {
                    // Not a file, not a registered volume: maybe a quarantined one.
                    if let Some((_, at)) = self
                        .quarantined(crate::repo::layout::Kind::Volume)?
                        .into_iter()
                        .find(|(n, _)| n == name)
                    {
                        return Err(StoreError::Usage(format!(
                            "no such disk image or volume: {name}; {}",
                            self.quarantined_volume_hint(name, &at)
                        )));
                    }
                }
                v
            }
            _ => None,
        };
        let path = registered
            .as_ref()
            .map_or_else(|| opts.source.clone(), |v| PathBuf::from(&v.path));
        Ok((path, registered))
    }

    /// Refuses a source that is not the disk its volume is: not the registered volume's path
    /// (or host), or not the source the volume's latest snapshot recorded. Snapshots that
    /// recorded no source (taken before blocksnap recorded it) and volumes without a recorded
    /// host are not held against it. With `--source-moved` the difference is accepted, and a
    /// registered volume is updated to the new place. A volume named explicitly with
    /// `--volume` (and not registered: a registered volume's path is the truth) whose latest
    /// snapshot read another file is the user's choice (successive versions of an image kept
    /// as separate files): it is taken, with a note.
    fn check_chain(
        &self,
        access: &Access,
        source: &Source,
        opts: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<()> {
        let moved = opts.source_moved;
        let volume = &source.volume;
        let here = &source.id;
        // Hosts are named only when they differ.
        let recorded = |path: &str, host: Option<&str>| match host {
            Some(h) if h != here.host => format!("{path} on host {h}"),
            _ => path.to_string(),
        };
        let current = |host: Option<&str>| match host {
            Some(h) if h != here.host => format!("{} on host {}", here.path, here.host),
            _ => here.path.clone(),
        };
        let remedy = format!(
            "If it is another disk, give it a volume of its own: `blocksnap snapshot create {p} --volume NEW-NAME`, or `blocksnap volume add NEW-NAME {p}` and use that name (also in `image create --volume DEVICE=NEW-NAME`). If it is the same disk, moved, renamed or now on another host, pass --source-moved: the snapshot then records its new place",
            p = here.path
        );
        let registered = self.verified_volume(access, volume)?;
        if let Some(mut reg) = registered.clone() {
            if differs(&reg.path, reg.host.as_deref(), here) {
                if !moved {
                    return Err(StoreError::Usage(format!(
                        "{} is not the disk registered as volume '{volume}' ({}). Two different disks must never share one volume's snapshots. {remedy}",
                        current(reg.host.as_deref()),
                        recorded(&reg.path, reg.host.as_deref())
                    )));
                }
                reg.path.clone_from(&here.path);
                reg.host = Some(here.host.clone());
                self.rewrite_volume(access, &reg)?;
            }
        }
        if moved {
            return Ok(());
        }
        let Some(latest) = self.latest_snapshot(volume)? else {
            return Ok(());
        };
        let Some(path) = &latest.source_path else {
            return Ok(());
        };
        if differs(path, latest.source_host.as_deref(), here) {
            if opts.volume.is_some() && registered.is_none() {
                progress.message(&format!(
                    "note: volume '{volume}' was last snapshotted from {} ({}); this snapshot \
                     reads {}, as --volume {volume} asks",
                    recorded(path, latest.source_host.as_deref()),
                    latest.id,
                    current(latest.source_host.as_deref())
                ));
                return Ok(());
            }
            return Err(StoreError::Usage(format!(
                "{} is not the disk volume '{volume}' was snapshotted from: its latest snapshot {} read {}. Two different disks must never share one volume's snapshots (the next one would be stored as a change of the other disk, and restoring the volume would give back the wrong one). {remedy}",
                current(latest.source_host.as_deref()),
                latest.id,
                recorded(path, latest.source_host.as_deref())
            )));
        }
        Ok(())
    }

    /// Takes a snapshot of an opened source with the store lock held and the index open.
    pub(crate) fn snapshot_with(
        &self,
        access: &Access,
        opts: &SnapshotOptions,
        source: Source,
        index: &Index,
        progress: &dyn Progress,
    ) -> Result<SnapshotReport> {
        let (doc, stored, started) =
            self.snapshot_uncommitted(access, opts, source, index, None, progress)?;
        let report = self.commit_snapshot(access, doc, &stored, started)?;
        if let Some(packs) = &stored.packs {
            packs.record(index, report.id, report.parent);
        }
        Ok(report)
    }

    /// Stores a snapshot's data and returns its document, not yet written. With `pending`
    /// shared between snapshots running at once, the document may be written only after every
    /// one of them has returned (one may reference chunks another was writing).
    pub(crate) fn snapshot_uncommitted(
        &self,
        access: &Access,
        opts: &SnapshotOptions,
        source: Source,
        index: &Index,
        pending: Option<Pending>,
        progress: &dyn Progress,
    ) -> Result<(SnapshotDoc, Stored, Instant)> {
        let started = Instant::now();
        let volume = source.volume.clone();
        blocksnap_manifest::validate_tags("snapshot", &opts.tags)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        let codec = self.codec_for_new(access, opts.key.as_deref())?;
        let parent = self.parent_for(&volume, progress)?;
        let chunker = self
            .chunker_for(&codec)
            .map_err(|e| StoreError::Damaged(format!("store config: {e}")))?;
        let (parent_spans, parent_packs) = match &source.dirty {
            Some((name, _)) => {
                let (spans, packs) = self.bitmap_parent(&codec, index, &source, name, parent)?;
                (Some(spans), packs)
            }
            None => (None, None),
        };
        let stored = self.store_pieces_with(
            &codec,
            index,
            pending,
            parent_packs.as_deref(),
            |tx| match (&parent_spans, &source.dirty) {
                (Some(spans), Some((_, dirty))) => {
                    source.read_dirty_into(&chunker, spans, dirty, tx)
                }
                _ => source.read_into(&chunker, tx),
            },
            progress,
        )?;
        // A size that differs now is the error (with both sizes); one read short of the size
        // seen at the start is the same error, with what was read.
        let changed = source.changed_while_read()?;
        if stored.size != source.size {
            return Err(source.resized(stored.size));
        }
        if changed {
            progress.message(&format!(
                "warning: {} was written while it was being read: the snapshot is committed, but may not be consistent (like a disk pulled from a running machine). For a consistent one, snapshot it quiet: the VM paused or shut down, or an LVM or filesystem snapshot of it",
                source.id.path
            ));
        }
        let doc = SnapshotDoc {
            format: SnapshotDoc::FORMAT.into(),
            id: SnapshotId(u64::from_le_bytes(fsutil::random_bytes())),
            volume,
            size: source.size,
            created: opts.created.clone().unwrap_or_else(fsutil::now_rfc3339),
            parent,
            key: codec.key_id(),
            owner: access.account.clone(),
            chunker: self.config().chunker,
            tags: opts.tags.clone(),
            description: opts.description.clone(),
            data_bytes: stored.data_bytes,
            extents: stored.extents.clone(),
            source_path: Some(source.id.path.clone()),
            source_host: Some(source.id.host.clone()),
            source_changed: changed,
            dirty_bitmap: source.dirty.as_ref().map(|(n, _)| n.clone()),
            seq: None,
            mac: None,
        };
        Ok((doc, stored, started))
    }

    /// Writes the document of a snapshot whose data is stored, durable and indexed: the commit.
    pub(crate) fn commit_snapshot(
        &self,
        access: &Access,
        mut doc: SnapshotDoc,
        stored: &Stored,
        started: Instant,
    ) -> Result<SnapshotReport> {
        let codec = self.codec(access, doc.key)?;
        let doc_bytes = self.write_snapshot(&codec, &mut doc)?;
        Ok(SnapshotReport {
            id: doc.id,
            volume: doc.volume,
            size: doc.size,
            bytes_read: stored.bytes_read,
            bytes_hole: stored.bytes_hole,
            chunks: stored.stats.chunks,
            chunks_new: stored.stats.chunks_new,
            bytes_new: stored.stats.bytes_new,
            bytes_stored: stored.stats.bytes_stored + doc_bytes,
            seconds: started.elapsed().as_secs_f64(),
            parent: doc.parent,
            key: doc.key,
            packs: stored.stats.packs,
            source: doc.source_path,
            source_changed: doc.source_changed,
            bytes_from_parent: stored.bytes_known,
            parent_chunks_checked: stored.parent_checked,
            dirty_bitmap: doc.dirty_bitmap,
        })
    }
}

impl Store {
    /// The parent's extents for a `--dirty-bitmap` snapshot, after checking that there is a
    /// parent of the same volume, size and key to take the unchanged ranges from; and the
    /// packs the index recorded for it, if it did.
    fn bitmap_parent(
        &self,
        codec: &blocksnap_pack::ChunkCodec,
        index: &Index,
        source: &Source,
        bitmap: &str,
        parent: Option<blocksnap_manifest::SnapshotId>,
    ) -> Result<(
        Vec<crate::snapshot::view::Span>,
        Option<Vec<blocksnap_manifest::PackId>>,
    )> {
        let volume = &source.volume;
        let full = "take a full snapshot without --dirty-bitmap first (it reads the whole disk), and start the bitmap when it is taken";
        let Some(pid) = parent else {
            return Err(StoreError::Usage(format!(
                "--dirty-bitmap {bitmap}: volume '{volume}' has no snapshot yet to take the unchanged ranges from; {full}"
            )));
        };
        let doc = self.snapshot_doc(pid)?.ok_or_else(|| {
            StoreError::Usage(format!(
                "--dirty-bitmap {bitmap}: the parent snapshot {pid} of volume '{volume}' is gone; {full}"
            ))
        })?;
        if doc.size != source.size {
            return Err(StoreError::Usage(format!(
                "--dirty-bitmap {bitmap}: the disk is {} bytes, its parent snapshot {pid} {} bytes: it was resized, and a bitmap does not say what a resize changed; {full}",
                source.size, doc.size
            )));
        }
        if doc.key != codec.key_id() {
            return Err(StoreError::Usage(format!(
                "--dirty-bitmap {bitmap}: the parent snapshot {pid} is under another key than this snapshot's, so its chunks cannot be taken as they are; snapshot with --key of the parent, or without --dirty-bitmap"
            )));
        }
        let reader = crate::packs::reader::ChunkReader::new(self, codec, index);
        let view = crate::snapshot::view::SnapshotView::open(&doc, reader)?;
        Ok((view.spans().to_vec(), index.snapshot_packs(pid)?))
    }
}

/// The default volume name of an NBD source: its export's name, else `nbd`.
fn nbd_volume_name(uri: &str) -> Result<String> {
    let export = uri
        .parse::<blocksnap_nbd::client::Uri>()
        .map_err(StoreError::Usage)?
        .export;
    let name = if export.is_empty() {
        "nbd".to_string()
    } else {
        export
    };
    volume_name_of(Path::new(&name))
}

/// Whether a recorded source (`path` on `host`) is another disk than `here`: another host, or
/// another path that does not now name the same file (an older record may hold a resolved
/// device name, or a hard link).
fn differs(path: &str, host: Option<&str>, here: &SourceId) -> bool {
    if host.is_some_and(|h| h != here.host) {
        return true;
    }
    if path == here.path {
        return false;
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (std::fs::metadata(path), std::fs::metadata(&here.path)) {
        (Ok(a), Ok(b)) => {
            let block = a.file_type().is_block_device() && b.file_type().is_block_device();
            !((block && a.rdev() == b.rdev())
                || (!block && a.dev() == b.dev() && a.ino() == b.ino()))
        }
        _ => true,
    }
}

/// The volume name of a snapshot: `--volume`, else the registered volume's, else the source's
/// file name.
fn volume_of(opts: &SnapshotOptions, registered: Option<&VolumeDoc>) -> Result<String> {
    let volume = match (&opts.volume, registered) {
        (Some(v), _) => v.clone(),
        (None, Some(r)) => r.name.clone(),
        (None, None) => volume_name_of(&opts.source)?,
    };
    blocksnap_manifest::validate_name("snapshot", "volume", &volume)
        .map_err(|e| StoreError::Usage(format!("volume name: {e}")))?;
    Ok(volume)
}

/// The default volume name of a source path: its file name, made into a valid name.
fn volume_name_of(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.:@+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']).to_string();
    if cleaned.is_empty() {
        return Err(StoreError::Usage(format!(
            "cannot name a volume after {}; pass --volume NAME",
            path.display()
        )));
    }
    Ok(cleaned
        .chars()
        .take(blocksnap_manifest::MAX_NAME_LEN)
        .collect())
}
