//! `blocksnap volume …`: register disk images and block devices by name, with tags.

use std::path::PathBuf;

use clap::Subcommand;

use crate::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum VolumeCmd {
    /// Register a volume: `snapshot create NAME` then snapshots PATH under that name.
    Add {
        /// The volume's name.
        name: String,
        /// The disk image or block device.
        path: PathBuf,
        /// A tag for the volume; repeat for more (policies select volumes by tag).
        #[arg(long = "tag", value_name = "K=V", value_parser = crate::parse::tag)]
        tags: Vec<(String, String)>,
    },
    /// List registered volumes.
    List,
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &VolumeCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    let row = |v: &blocksnap_store::VolumeDoc| {
        let tags: Vec<_> = v.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{:<20} {:<40} {}", v.name, v.path, tags.join(","))
    };
    match cmd {
        VolumeCmd::Add { name, path, tags } => {
            ctx.writing(&store);
            let v = store.add_volume(
                &ctx.access(&store)?,
                name,
                path,
                blocksnap_store::tag_map(tags)?,
            )?;
            ctx.output(&v, || format!("added volume {}", row(&v)))
        }
        VolumeCmd::List => {
            let vols = store.list_volumes()?;
            store.warn_quarantined_volumes(&ctx.progress)?;
            ctx.output(&vols, || {
                let mut t = format!("{:<20} {:<40} {}", "NAME", "PATH", "TAGS");
                for v in &vols {
                    t += &format!("\n{}", row(v));
                }
                t
            })
        }
    }
}
