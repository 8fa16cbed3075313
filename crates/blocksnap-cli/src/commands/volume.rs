//! `blocksnap volume …`: register disk images and block devices by name, with tags.

use std::path::PathBuf;

use clap::Subcommand;

use crate::Ctx;
use crate::table::{self, Table};

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
    match cmd {
        VolumeCmd::Add { name, path, tags } => {
            ctx.writing(&store);
            let v = store.add_volume(
                &ctx.access(&store)?,
                name,
                path,
                blocksnap_store::tag_map(tags)?,
            )?;
            ctx.output(&v, || {
                let tagged = if v.tags.is_empty() {
                    String::new()
                } else {
                    format!(", tagged {}", table::tags(&v.tags))
                };
                format!(
                    "added volume '{}' for {}{tagged}: `blocksnap snapshot create {}` snapshots it",
                    v.name, v.path, v.name
                )
            })
        }
        VolumeCmd::List => {
            let vols = store.list_volumes()?;
            store.warn_quarantined_volumes(&ctx.progress)?;
            ctx.output(&vols, || {
                if vols.is_empty() {
                    return "no volumes yet: `blocksnap volume add NAME PATH` adds one".into();
                }
                let mut t = Table::new(&["NAME", "PATH", "TAGS"]);
                for v in &vols {
                    t.row([v.name.clone(), v.path.clone(), table::tags(&v.tags)]);
                }
                t.render()
            })
        }
    }
}
