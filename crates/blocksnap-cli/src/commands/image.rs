//! `blocksnap image …`: arguments to store calls, reports to tables and JSON.

use std::path::PathBuf;

use blocksnap_store::{Audience, CopyOptions, ImageDoc, ImageOptions, ImageReport, RestoreOptions};

use clap::{Args, Subcommand};

use crate::Ctx;
use crate::parse::human;
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCmd {
    /// Snapshot each volume (several at once) and record them as a new image you own.
    Create {
        /// The image's name, unique in the store.
        name: String,
        /// A device and the disk image, block device or registered volume it is made from;
        /// repeat for each device (`--volume /dev/sda=root.img --volume /dev/sdb=data.img`).
        #[arg(long = "volume", value_name = "DEVICE=PATH", value_parser = crate::parse::mapping, required = true)]
        volumes: Vec<(String, String)>,
        /// The boot device [default: the first --volume's].
        #[arg(long, value_name = "DEVICE")]
        root_device: Option<String>,
        /// The key to encrypt with, by name or id [default: `default`].
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// A tag for the image and its snapshots; repeat for more.
        #[arg(long = "tag", value_name = "K=V", value_parser = crate::parse::tag)]
        tags: Vec<(String, String)>,
        /// Free text describing the image.
        #[arg(long, value_name = "TEXT", default_value = "")]
        description: String,
        /// Each PATH is its volume's disk, moved, renamed or now on another host (see
        /// `snapshot create --help`).
        #[arg(long)]
        source_moved: bool,
    },
    /// Record existing snapshots (all under one key) as a new image you own.
    Register {
        /// The image's name, unique in the store.
        name: String,
        /// A device and its snapshot (id or unique prefix); repeat for each device.
        #[arg(long = "volume", value_name = "DEVICE=SNAPSHOT", value_parser = crate::parse::mapping, required = true)]
        volumes: Vec<(String, String)>,
        /// The boot device [default: the first --volume's].
        #[arg(long, value_name = "DEVICE")]
        root_device: Option<String>,
    },
    /// List the images you may launch: your own, those shared with you, public ones.
    List {
        /// Every image of the store, whoever may launch it.
        #[arg(long)]
        all: bool,
    },
    /// Show one image.
    Show {
        /// Image name, id or unique id prefix.
        image: String,
    },
    /// Write every device of an image into OUTDIR/<device's last path part>.img, each
    /// byte-identical and sparse (or, with --format qcow2, into ….qcow2 images). Needs the
    /// launch permission and a grant on the image's key.
    Rebuild {
        /// Image name, id or unique id prefix.
        image: String,
        /// The directory to write the devices into (created if missing).
        outdir: PathBuf,
        /// Replace existing files in OUTDIR (or write over the block devices they link to).
        /// Every output is checked before the first is written.
        #[arg(long)]
        force: bool,
        /// The image format to write: `raw` (OUTDIR/NAME.img, sparse files) or `qcow2`
        /// (OUTDIR/NAME.qcow2, holding only the data; not through links to block devices).
        #[arg(long, value_name = "raw|qcow2", default_value = "raw", value_parser = crate::commands::snapshot::parse_target_format)]
        format: blocksnap_store::TargetFormat,
    },
    /// Let an account (or every account of the store) launch the image. Owner only. An
    /// encrypted image also needs a grant on its key: `blocksnap key grant KEY ACCOUNT`.
    Share {
        /// Image name, id or unique id prefix.
        image: String,
        #[command(flatten)]
        audience: AudienceArgs,
    },
    /// Take launch permission away. Owner only. To stop an account from reading data it may
    /// already have a grant for, revoke the key too (`key revoke`), and see `key revoke --help`.
    Unshare {
        /// Image name, id or unique id prefix.
        image: String,
        #[command(flatten)]
        audience: AudienceArgs,
    },
    /// Copy an image into another store, re-encrypting under the target's key. Only chunks the
    /// target lacks are written; snapshots already copied there are reused.
    Copy {
        /// Image name, id or unique id prefix.
        image: String,
        /// The target store (it may be this store: then the copy is re-encrypted under --key).
        #[arg(long, value_name = "STORE")]
        to: PathBuf,
        /// The target's key, by name or id [default: the target's `default`].
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// The copy's name [default: the image's name].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The account that owns the copy in the target [default: the target's first account].
        #[arg(long, value_name = "NAME", env = "BLOCKSNAP_TO_ACCOUNT")]
        to_account: Option<String>,
        /// That account's identity file [default: its default path for the target store].
        #[arg(long, value_name = "FILE", env = "BLOCKSNAP_TO_IDENTITY")]
        to_identity: Option<PathBuf>,
    },
    /// Remove an image (to the trash: `trash restore` brings it back until it expires). Owner only.
    Deregister {
        /// Image name, id or unique id prefix.
        image: String,
        /// Also move its snapshots to the trash, except those another image still uses.
        #[arg(long)]
        delete_snapshots: bool,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct AudienceArgs {
    /// The account to share with (or unshare from).
    #[arg(long, value_name = "ACCOUNT")]
    pub(crate) account: Option<String>,
    /// Every account of the store.
    #[arg(long)]
    pub(crate) public: bool,
}

fn audience(a: &AudienceArgs) -> Audience {
    match &a.account {
        Some(name) => Audience::Account(name.clone()),
        None => Audience::Public,
    }
}

/// Who may launch an image, in a few words.
fn launch(p: &blocksnap_store::LaunchPermissions) -> String {
    let mut who = vec![if p.public { "public" } else { "owner" }.to_string()];
    who.extend(p.accounts.iter().cloned());
    if who.len() == 1 && !p.public {
        return "owner only".into();
    }
    who.join(", ")
}

/// One image in a few lines.
fn describe(i: &ImageDoc) -> String {
    let mut t = format!(
        "{} '{}' owned by {}, key {}, root device {}",
        i.id,
        i.name,
        i.owner,
        i.key.map_or("none (plain store)".into(), |k| k.to_string()),
        i.root_device
    );
    let mut devices = Table::new(&["DEVICE", "SNAPSHOT", "SIZE"]).right(&[2]);
    for v in &i.volumes {
        devices.row([v.device.clone(), v.snapshot.to_string(), human(v.size)]);
    }
    for line in devices.render().lines() {
        t += &format!("\n  {line}");
    }
    t += &format!("\n  launch: {}", launch(&i.launch_permissions));
    t
}

fn made(r: &ImageReport, what: &str) -> String {
    let new: u64 = r.snapshots.iter().map(|s| s.bytes_new).sum();
    let stored: u64 = r.snapshots.iter().map(|s| s.bytes_stored).sum();
    let mut t = describe(&r.image);
    if let Some(secs) = r.seconds {
        t += &format!(
            "\n{what} in {secs:.1} s: {} new, {} stored",
            human(new),
            human(stored)
        );
    }
    t
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &ImageCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    match cmd {
        ImageCmd::Create {
            name,
            volumes,
            root_device,
            key,
            tags,
            description,
            source_moved,
        } => {
            ctx.writing(&store);
            let opts = ImageOptions {
                name: name.clone(),
                volumes: volumes
                    .iter()
                    .map(|(d, p)| (d.clone(), PathBuf::from(p)))
                    .collect(),
                root_device: root_device.clone(),
                key: key.clone(),
                tags: blocksnap_store::tag_map(tags)?,
                description: description.clone(),
                source_moved: *source_moved,
            };
            let r = store.create_image(&ctx.access(&store)?, &opts, &ctx.progress)?;
            ctx.output(&r, || made(&r, "created"))
        }
        ImageCmd::Register {
            name,
            volumes,
            root_device,
        } => {
            ctx.writing(&store);
            let r = store.register_image(
                &ctx.access(&store)?,
                name,
                volumes,
                root_device.as_deref(),
            )?;
            ctx.output(&r, || describe(&r.image))
        }
        ImageCmd::List { all } => {
            let images = if *all {
                store.list_images()?
            } else {
                store.visible_images(&ctx.access(&store)?)?
            };
            ctx.output(&images, || {
                if images.is_empty() {
                    return if *all {
                        "no images yet: `blocksnap image create NAME --volume DEVICE=PATH` makes one"
                            .into()
                    } else {
                        "no images you may launch (`--all` lists every image of the store)".into()
                    };
                }
                let mut t = Table::new(&["ID", "NAME", "OWNER", "DEVICES", "SIZE", "LAUNCH"])
                    .right(&[3, 4]);
                for i in &images {
                    t.row([
                        i.id.to_string(),
                        i.name.clone(),
                        i.owner.clone(),
                        i.volumes.len().to_string(),
                        human(i.volumes.iter().map(|v| v.size).sum()),
                        launch(&i.launch_permissions),
                    ]);
                }
                t.render()
            })
        }
        ImageCmd::Show { image } => {
            let i = store.resolve_image(image)?;
            ctx.output(&i, || describe(&i))
        }
        ImageCmd::Rebuild {
            image,
            outdir,
            force,
            format,
        } => {
            let opts = RestoreOptions {
                force: *force,
                format: *format,
            };
            let r =
                store.rebuild_image(&ctx.access(&store)?, image, outdir, &opts, &ctx.progress)?;
            ctx.output(&r, || {
                let mut t = format!(
                    "rebuilt image '{}' ({}) in {:.1} s",
                    r.name, r.id, r.seconds
                );
                for v in &r.volumes {
                    t += &format!(
                        "\n  {:<16} -> {}{} ({}, verified{}{})",
                        v.device,
                        v.output.display(),
                        if v.written_to != v.output {
                            format!(" -> {}", v.written_to.display())
                        } else {
                            String::new()
                        },
                        human(v.size),
                        if v.replaced { ", replaced" } else { "" },
                        if v.tail_left > 0 {
                            format!(
                                ", the device's last {} left as they were",
                                human(v.tail_left)
                            )
                        } else {
                            String::new()
                        }
                    );
                }
                t
            })
        }
        ImageCmd::Share { image, audience: a } => {
            ctx.writing(&store);
            let i = store.share_image(&ctx.access(&store)?, image, &audience(a))?;
            ctx.output(&i, || describe(&i))
        }
        ImageCmd::Unshare { image, audience: a } => {
            ctx.writing(&store);
            let i = store.unshare_image(&ctx.access(&store)?, image, &audience(a))?;
            ctx.output(&i, || describe(&i))
        }
        ImageCmd::Copy {
            image,
            to,
            key,
            name,
            to_account,
            to_identity,
        } => {
            let target = crate::open_at(to)?;
            ctx.writing(&target);
            let target_access = target.access(to_account.as_deref(), to_identity.as_deref())?;
            let opts = CopyOptions {
                key: key.clone(),
                name: name.clone(),
            };
            let r = store.copy_image(
                &ctx.access(&store)?,
                image,
                &target,
                &target_access,
                &opts,
                &ctx.progress,
            )?;
            ctx.output(&r, || made(&r, &format!("copied to {}", to.display())))
        }
        ImageCmd::Deregister {
            image,
            delete_snapshots,
        } => {
            ctx.writing(&store);
            let r = store.deregister_image(&ctx.access(&store)?, image, *delete_snapshots)?;
            ctx.output(&r, || {
                let mut t = format!(
                    "deregistered image '{}' ({}): in the trash until {} (`blocksnap trash restore {}`)",
                    r.image.name, r.image.id, r.image.expires, r.image.id
                );
                for s in &r.snapshots_deleted {
                    t += &format!("\n  snapshot {} moved to the trash", s.id);
                }
                for s in &r.snapshots_kept {
                    t += &format!("\n  snapshot {s} kept: another image uses it");
                }
                t
            })
        }
    }
}
