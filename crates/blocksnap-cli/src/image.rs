//! `blocksnap image …`: arguments to store calls, reports to tables and JSON.

use std::path::PathBuf;

use blocksnap_store::{
    Audience, CopyOptions, ImageDoc, ImageOptions, ImageReport, RestoreOptions, Store,
};

use crate::Ctx;
use crate::args::{AudienceArgs, ImageCmd};
use crate::parse::human;

fn audience(a: &AudienceArgs) -> Audience {
    match &a.account {
        Some(name) => Audience::Account(name.clone()),
        None => Audience::Public,
    }
}

/// One image in a few lines.
fn describe(i: &ImageDoc) -> String {
    let mut t = format!(
        "{} '{}' owned by {}, key {}, root {}",
        i.id,
        i.name,
        i.owner,
        i.key.map_or("-".into(), |k| k.to_string()),
        i.root_device
    );
    for v in &i.volumes {
        t += &format!("\n  {:<16} {} {:>10}", v.device, v.snapshot, human(v.size));
    }
    let p = &i.launch_permissions;
    t += &format!(
        "\n  launch: {}{}",
        if p.public { "public" } else { "owner" },
        if p.accounts.is_empty() {
            String::new()
        } else {
            format!(", {}", p.accounts.join(", "))
        }
    );
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
                let mut t = format!(
                    "{:<21} {:<24} {:<12} {:>7} {:>10} {}",
                    "ID", "NAME", "OWNER", "DEVICES", "SIZE", "LAUNCH"
                );
                for i in &images {
                    let p = &i.launch_permissions;
                    t += &format!(
                        "\n{:<21} {:<24} {:<12} {:>7} {:>10} {}",
                        i.id,
                        i.name,
                        i.owner,
                        i.volumes.len(),
                        human(i.volumes.iter().map(|v| v.size).sum()),
                        if p.public {
                            "public".to_string()
                        } else {
                            p.accounts.join(",")
                        }
                    );
                }
                t
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
        } => {
            let opts = RestoreOptions { force: *force };
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
            let i = store.share_image(&ctx.access(&store)?, image, &audience(a))?;
            ctx.output(&i, || describe(&i))
        }
        ImageCmd::Unshare { image, audience: a } => {
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
            let target = Store::open(to)?;
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
