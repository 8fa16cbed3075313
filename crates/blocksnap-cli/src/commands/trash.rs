//! `blocksnap trash …`: deleted snapshots and images, restorable until the retention ends.

use clap::Subcommand;

use crate::Ctx;

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
    let table = |entries: &[blocksnap_store::TrashEntry]| {
        let mut t = format!(
            "{:<22} {:<9} {:<20} {:<25} {}",
            "ID", "KIND", "NAME", "DELETED", "EXPIRES"
        );
        for e in entries {
            t += &format!(
                "\n{:<22} {:<9} {:<20} {:<25} {}",
                e.id, e.kind, e.name, e.deleted, e.expires
            );
        }
        t
    };
    match cmd {
        TrashCmd::List => {
            let entries = store.trash_entries()?;
            ctx.output(&entries, || table(&entries))
        }
        TrashCmd::Restore { id } => {
            ctx.writing(&store);
            let e = store.restore_trash(id)?;
            ctx.output(&e, || format!("restored {} from the trash", e.id))
        }
        TrashCmd::Empty { expired } => {
            ctx.writing(&store);
            let removed = store.empty_trash(*expired)?;
            ctx.output(&removed, || format!("removed {} entries from the trash for good; `blocksnap prune` reclaims their space", removed.len()))
        }
    }
}
