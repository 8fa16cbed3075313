//! `blocksnap trash …`: deleted snapshots and images, restorable until the retention ends.

use clap::Subcommand;

use crate::Ctx;
use crate::parse::human;
use crate::table::{Table, count};

#[derive(Debug, Subcommand)]
pub(crate) enum TrashCmd {
    /// List deleted snapshots and images, and when they expire.
    List,
    /// Bring a deleted snapshot (or image, with its trashed snapshots) back.
    Restore {
        /// The id (snap-… or img-…) or a unique prefix of it.
        id: String,
    },
    /// Remove deleted snapshots for good (their data is reclaimed by prune).
    Empty {
        /// Only those whose retention has ended.
        #[arg(long)]
        expired: bool,
    },
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &TrashCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    match cmd {
        TrashCmd::List => {
            let entries = store.trash_entries()?;
            ctx.output(&entries, || {
                if entries.is_empty() {
                    return "the trash is empty".into();
                }
                let mut t =
                    Table::new(&["ID", "KIND", "NAME", "SIZE", "DELETED", "EXPIRES"]).right(&[3]);
                for e in &entries {
                    t.row([
                        e.id.clone(),
                        e.kind.clone(),
                        e.name.clone(),
                        human(e.size),
                        e.deleted.clone(),
                        e.expires.clone(),
                    ]);
                }
                t.render()
            })
        }
        TrashCmd::Restore { id } => {
            ctx.writing(&store);
            let e = store.restore_trash(id)?;
            ctx.output(&e, || format!("restored {} from the trash", e.id))
        }
        TrashCmd::Empty { expired } => {
            ctx.writing(&store);
            let removed = store.empty_trash(*expired)?;
            ctx.output(&removed, || {
                if removed.is_empty() {
                    return if *expired {
                        "nothing in the trash has expired; nothing removed".into()
                    } else {
                        "the trash was already empty".into()
                    };
                }
                format!(
                    "removed {} from the trash for good; `blocksnap prune` reclaims their space",
                    count(removed.len() as u64, "entry")
                )
            })
        }
    }
}
