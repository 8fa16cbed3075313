//! `blocksnap snapshot …`: take, list, show, restore, diff and delete snapshots of disk images.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use blocksnap_store::{SnapshotDoc, SnapshotOptions};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::Ctx;
use crate::parse::human;
use crate::table::{Table, count, fields, tags};

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Snapshot a disk image or block device, storing only chunks the store lacks.
    Create(CreateArgs),
    /// List snapshots, oldest first.
    List(ListArgs),
    /// Show one snapshot.
    Show {
        /// Snapshot id or unique prefix.
        snapshot: String,
    },
    /// The ranges whose content differs between two snapshots (of the same disk, or of any two
    /// disks), in 4 KiB blocks, merged and sorted.
    ///
    /// The volume is cut into blocks from offset 0 (4 KiB, or --granularity); a block is
    /// changed if any byte of it differs, and touching changed blocks make one range. --exact
    /// gives the exact byte ranges instead. Equal chunk ids are not read; the rest is compared
    /// byte for byte (also across keys). SNAPSHOT_A is read as zeros past its end, so a tail
    /// the volume grew by is changed only where it holds data; a volume that shrank is said
    /// to have.
    Diff {
        /// The older snapshot (id or unique prefix).
        #[arg(value_name = "SNAPSHOT_A")]
        a: String,
        /// The newer snapshot (id or unique prefix).
        #[arg(value_name = "SNAPSHOT_B")]
        b: String,
        /// The block size ranges are rounded out to, aligned to the start of the volume.
        #[arg(long, value_name = "SIZE", value_parser = crate::parse::size, default_value = "4KiB")]
        granularity: u64,
        /// The exact byte ranges that differ, not rounded out to blocks.
        #[arg(long, conflicts_with = "granularity")]
        exact: bool,
    },
    /// Move a snapshot to the trash (restorable with `trash restore` until it expires).
    Delete {
        /// Snapshot id or unique prefix.
        snapshot: String,
    },
    /// Rebuild a snapshot's image as a sparse file (or onto a block device), verifying every chunk.
    ///
    /// OUTPUT is a new file; an existing regular file is replaced, and a block device written
    /// over, only with --force. A block device is opened exclusively (a mounted one is refused)
    /// and must be at least the snapshot's size. Directories, character devices (/dev/null),
    /// FIFOs, sockets and new names under /dev are refused. A symbolic link is followed.
    ///
    /// The image is raw unless --format qcow2 is given (the name of OUTPUT is never used to
    /// guess); other formats: export the snapshot with `blocksnap serve nbd` and convert it
    /// (`qemu-img convert -O vmdk nbd://… disk.vmdk`, see docs/VM-DISKS.md).
    Restore {
        /// Snapshot id or unique prefix.
        snapshot: String,
        /// The file (or block device) to write.
        output: PathBuf,
        /// Replace OUTPUT if it is an existing file, or write over it if it is a block device.
        #[arg(long)]
        force: bool,
        /// The image format to write: `raw` (the disk's bytes, a sparse file) or `qcow2` (a
        /// qcow2 image holding only the data: holes and all-zero chunks stay unallocated;
        /// into files only, not onto block devices).
        #[arg(long, value_name = "raw|qcow2", default_value = "raw", value_parser = parse_target_format)]
        format: blocksnap_store::TargetFormat,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The disk image or block device, or the name of a volume registered with `volume add`.
    #[arg(value_name = "PATH|VOLUME")]
    pub(crate) source: PathBuf,
    /// The volume's name [default: the file name of PATH].
    #[arg(long, value_name = "NAME")]
    pub(crate) volume: Option<String>,
    /// The key to encrypt with, by name or id [default: `default`].
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
    /// A tag for the snapshot; repeat for more.
    #[arg(long = "tag", value_name = "K=V", value_parser = crate::parse::tag)]
    pub(crate) tags: Vec<(String, String)>,
    /// Free text describing the snapshot.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub(crate) description: String,
    /// PATH is the volume's disk, moved, renamed or now on another host: accept it although
    /// it is not where the volume's snapshots were taken from, and record the new place.
    #[arg(long)]
    pub(crate) source_moved: bool,
    /// How to read PATH: `raw` (its bytes are the disk) or `qcow2` (the guest disk it maps,
    /// through its backing chain, reading only allocated clusters) [default: what its first
    /// bytes say: qcow2 by its magic, else raw]. Other formats (vmdk, vhdx, vdi) are read
    /// through an NBD export: `qemu-nbd` them and snapshot `nbd://…`.
    #[arg(long, value_name = "raw|qcow2", value_parser = parse_format)]
    pub(crate) format: Option<blocksnap_store::DiskFormat>,
    /// With an NBD source: read only the ranges QEMU's dirty bitmap NAME
    /// (`qemu:dirty-bitmap:NAME`) marks, and take every other range from the volume's latest
    /// snapshot without reading it. The bitmap must have been started when that snapshot was
    /// taken (docs/VM-DISKS.md shows the QMP and libvirt commands); refused without a parent
    /// of the same volume and size.
    #[arg(long, value_name = "NAME")]
    pub(crate) dirty_bitmap: Option<String>,
}

fn parse_format(s: &str) -> Result<blocksnap_store::DiskFormat, String> {
    s.parse()
}

/// `--format` of `snapshot restore` and `image rebuild`.
pub(crate) fn parse_target_format(s: &str) -> Result<blocksnap_store::TargetFormat, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only snapshots of this volume.
    #[arg(long, value_name = "NAME")]
    pub(crate) volume: Option<String>,
    /// Only snapshots carrying this tag; repeat to require several.
    #[arg(long = "tag", value_name = "K=V", value_parser = crate::parse::tag)]
    pub(crate) tags: Vec<(String, String)>,
}

/// A snapshot as `snapshot list` and `show` print it.
#[derive(Serialize)]
struct SnapshotView<'a> {
    id: String,
    volume: &'a str,
    size: u64,
    created: &'a str,
    tags: &'a BTreeMap<String, String>,
    parent: Option<String>,
    key: Option<String>,
    owner: &'a str,
    description: &'a str,
    data_bytes: u64,
    chunker: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_host: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    source_changed: bool,
}

fn view(s: &SnapshotDoc) -> SnapshotView<'_> {
    SnapshotView {
        id: s.id.to_string(),
        volume: &s.volume,
        size: s.size,
        created: &s.created,
        tags: &s.tags,
        parent: s.parent.map(|p| p.to_string()),
        key: s.key.map(|k| k.to_string()),
        owner: &s.owner,
        description: &s.description,
        data_bytes: s.data_bytes,
        chunker: format!("{:?} {}", s.chunker.kind, human(s.chunker.avg.into())).to_lowercase(),
        source_path: s.source_path.as_deref(),
        source_host: s.source_host.as_deref(),
        source_changed: s.source_changed,
    }
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &SnapshotCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    let access = || ctx.access(&store);
    match cmd {
        SnapshotCmd::Create(a) => {
            ctx.writing(&store);
            let opts = SnapshotOptions {
                source: a.source.clone(),
                volume: a.volume.clone(),
                key: a.key.clone(),
                tags: blocksnap_store::tag_map(&a.tags)?,
                description: a.description.clone(),
                created: None,
                source_moved: a.source_moved,
                format: a.format,
                dirty_bitmap: a.dirty_bitmap.clone(),
            };
            let r = store
                .snapshot(&access()?, &opts, &ctx.progress)
                .with_context(|| format!("snapshot of {}", a.source.display()))?;
            ctx.output(&r, || {
                format!(
                    "{} of volume '{}' ({}): read {}, {} new in {} of {} chunks, stored {} in {:.1} s ({}/s)",
                    r.id,
                    r.volume,
                    human(r.size),
                    human(r.bytes_read),
                    human(r.bytes_new),
                    r.chunks_new,
                    r.chunks,
                    human(r.bytes_stored),
                    r.seconds,
                    human((r.bytes_read as f64 / r.seconds.max(1e-6)) as u64)
                )
            })
        }
        SnapshotCmd::List(a) => {
            let snaps = store.snapshots_with_tags(a.volume.as_deref(), &a.tags)?;
            let views: Vec<_> = snaps.iter().map(view).collect();
            ctx.output(&views, || {
                if views.is_empty() {
                    let filtered = a.volume.is_some() || !a.tags.is_empty();
                    return if filtered {
                        "no snapshots match".to_string()
                    } else {
                        "no snapshots yet: `blocksnap snapshot create PATH` takes one".to_string()
                    };
                }
                let mut t = Table::new(&["ID", "VOLUME", "SIZE", "CREATED", "TAGS"]).right(&[2]);
                for v in &views {
                    t.row([
                        v.id.clone(),
                        v.volume.to_string(),
                        human(v.size),
                        v.created.to_string(),
                        tags(v.tags),
                    ]);
                }
                t.render()
            })
        }
        SnapshotCmd::Show { snapshot } => {
            let s = store.resolve_snapshot(snapshot)?;
            let v = view(&s);
            ctx.output(&v, || {
                let bytes = |n: u64| format!("{} ({n} bytes)", human(n));
                let mut f = vec![
                    ("id", v.id.clone()),
                    ("volume", v.volume.to_string()),
                    ("size", bytes(v.size)),
                    ("data", bytes(v.data_bytes)),
                    ("created", v.created.to_string()),
                    ("owner", v.owner.to_string()),
                    ("parent", v.parent.clone().unwrap_or_default()),
                    (
                        "key",
                        v.key.clone().unwrap_or_else(|| "none (plain store)".into()),
                    ),
                    (
                        "chunker",
                        format!(
                            "{} {}",
                            format!("{:?}", s.chunker.kind).to_lowercase(),
                            human(s.chunker.avg.into())
                        ),
                    ),
                    ("tags", tags(v.tags)),
                    ("description", v.description.to_string()),
                ];
                if let Some(p) = v.source_path {
                    f.push((
                        "source",
                        match v.source_host {
                            Some(h) => format!("{p} on {h}"),
                            None => p.to_string(),
                        },
                    ));
                }
                if v.source_changed {
                    f.push((
                        "warning",
                        "the source was written while it was read: the image may not be \
                         consistent"
                            .into(),
                    ));
                }
                fields(&f)
            })
        }
        SnapshotCmd::Diff {
            a,
            b,
            granularity,
            exact,
        } => {
            let opts = blocksnap_store::DiffOptions {
                granularity: if *exact { 1 } else { *granularity },
            };
            let r = store.diff_with(&access()?, a, b, &opts, &ctx.progress)?;
            ctx.output(&r, || diffed(&r))
        }
        SnapshotCmd::Delete { snapshot } => {
            ctx.writing(&store);
            let e = store.delete_snapshot(&access()?, snapshot)?;
            ctx.output(&e, || {
                format!(
                    "moved {} to the trash; restorable until {} with `blocksnap trash restore {}`",
                    e.id, e.expires, e.id
                )
            })
        }
        SnapshotCmd::Restore {
            snapshot,
            output,
            force,
            format,
        } => {
            let opts = blocksnap_store::RestoreOptions {
                force: *force,
                format: *format,
            };
            let r = store.restore_with(&access()?, snapshot, output, &opts, &ctx.progress)?;
            ctx.output(&r, || restored(&r))
        }
    }
}

/// A diff's ranges as a table, then what they add up to.
fn diffed(r: &blocksnap_store::DiffReport) -> String {
    let mut t = String::new();
    if !r.changed.is_empty() {
        let mut table = Table::new(&["OFFSET", "LENGTH", ""]).right(&[0, 1]);
        for [off, len] in &r.changed {
            table.row([off.to_string(), len.to_string(), human(*len)]);
        }
        t = table.render() + "\n";
    }
    let unit = if r.granularity == 1 {
        "exact bytes".to_string()
    } else {
        format!("whole {} blocks", human(r.granularity))
    };
    t += &if r.changed.is_empty() {
        format!(
            "no change from {} to {} ({}; {} read to compare)",
            r.a,
            r.b,
            human(r.size),
            human(r.bytes_read)
        )
    } else {
        format!(
            "{} of {} changed from {} to {}: {} of {unit} ({} read to compare)",
            human(r.bytes_changed),
            human(r.size),
            r.a,
            r.b,
            count(r.changed.len() as u64, "range"),
            human(r.bytes_read)
        )
    };
    if r.shrank() {
        t += &format!(
            "\nthe volume shrank from {} to {}: {}'s last {} are not in {}",
            human(r.size_a),
            human(r.size),
            r.a,
            human(r.size_a - r.size),
            r.b
        );
    } else if r.size > r.size_a {
        t += &format!(
            "\nthe volume grew from {} to {} (its new tail is compared as if {} held zeros there)",
            human(r.size_a),
            human(r.size),
            r.a
        );
    }
    t
}

/// What a restore wrote where, in a sentence.
fn restored(r: &blocksnap_store::RestoreReport) -> String {
    let place = if r.written_to != r.output {
        format!(
            "{} (a link to {})",
            r.output.display(),
            r.written_to.display()
        )
    } else {
        r.output.display().to_string()
    };
    let image = match r.format {
        blocksnap_store::TargetFormat::Raw => "sparse file",
        blocksnap_store::TargetFormat::Qcow2 => "qcow2 image",
    };
    let what = match (r.kind, r.replaced) {
        (blocksnap_store::TargetKind::BlockDevice, _) => format!("onto block device {place}"),
        (_, true) => format!("to {place}, replacing the file that was there, as a {image}"),
        (_, false) => format!("to {place}, a new {image}"),
    };
    let mut t = format!(
        "restored {} {what}: {}, {} of data written, verified, in {:.1} s",
        r.id,
        human(r.size),
        human(r.bytes_written),
        r.seconds
    );
    if r.tail_left > 0 {
        t += &format!(
            "; the device's last {} (past the snapshot's size) are left as they were",
            human(r.tail_left)
        );
    }
    t
}
