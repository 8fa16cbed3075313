//! `blocksnap repair …`: rebuild derived state from the packs; quarantine damaged documents.

use clap::Subcommand;

use crate::table::count;
use crate::{Ctx, NotVerified};

#[derive(Debug, Subcommand)]
pub(crate) enum RepairCmd {
    /// Rebuild the dedup index from the pack trailers alone.
    Index,
    /// Move every damaged document (one that is not valid JSON or not a valid document) into
    /// quarantine/ in the store, keeping it. Until then prune refuses to run. Documents of a
    /// newer format stay: a newer blocksnap reads them.
    Documents {
        /// Say what would be moved; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Heal the store after packs were damaged or deleted: the index forgets the chunks of
    /// missing packs; the intact chunks of each damaged pack are verified and moved to new
    /// packs, the rest forgotten, and the pack renamed to packs/XX/ID.damaged. The next
    /// snapshot of a source that holds the lost chunks stores them again.
    Packs {
        /// Also decrypt and verify every record, to find damage inside packs whose trailer is
        /// intact (what `check --read-data` finds).
        #[arg(long)]
        read_data: bool,
    },
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &RepairCmd) -> anyhow::Result<()> {
    match cmd {
        RepairCmd::Index => {
            let store = ctx.open()?;
            let access = ctx.access(&store)?;
            let r = store.repair_index(&access, &ctx.progress)?;
            for p in &r.problems {
                ctx.note(&format!("warning: {p}"));
            }
            ctx.output(&r, || {
                format!(
                    "index rebuilt: {} from {}, {}",
                    count(r.chunks, "chunk"),
                    count(r.packs, "pack"),
                    count(r.problems.len() as u64, "problem")
                )
            })
        }
        RepairCmd::Packs { read_data } => {
            let store = ctx.open()?;
            ctx.writing(&store);
            let access = ctx.access(&store)?;
            let r = store.repair_packs(&access, *read_data, &ctx.progress)?;
            for p in &r.not_repaired {
                say!("not repaired: {p}");
            }
            ctx.output(&r, || {
                let mut t = String::new();
                for p in &r.missing_packs {
                    t += &format!("missing pack {p}: the index forgot its chunks\n");
                }
                for (p, aside) in r.damaged_packs.iter().zip(&r.set_aside) {
                    t += &format!("damaged pack {p}: set aside as {}\n", aside.display());
                }
                t += &format!(
                    "{} examined{}: {} missing, {} damaged; {} moved to new packs, {} \
                     forgotten",
                    count(r.packs, "pack"),
                    if *read_data {
                        format!(", {} verified", count(r.chunks_verified, "chunk"))
                    } else {
                        String::new()
                    },
                    r.missing_packs.len(),
                    r.damaged_packs.len(),
                    count(r.chunks_moved, "intact chunk"),
                    count(r.chunks_forgotten, "lost chunk")
                );
                if r.chunks_forgotten > 0 {
                    t += "\nnext: snapshot the affected volumes again from their sources (the \
                          lost chunks a source still holds are stored again), then run \
                          `blocksnap check --read-data`";
                }
                t
            })?;
            if r.not_repaired.is_empty() {
                Ok(())
            } else {
                // Exit 5, like `check`: it could not do everything it was asked to.
                say!(
                    "blocksnap: error: not everything could be examined or repaired ({} {}, \
                     listed above as `not repaired`): exit 5",
                    r.not_repaired.len(),
                    if r.not_repaired.len() == 1 {
                        "item"
                    } else {
                        "items"
                    }
                );
                Err(NotVerified.into())
            }
        }
        RepairCmd::Documents { dry_run } => {
            let store = ctx.open()?;
            if !dry_run {
                ctx.writing(&store);
            }
            let r = store.repair_documents(*dry_run, &ctx.progress)?;
            for d in &r.left {
                ctx.note(&format!(
                    "left {}: {} (a newer blocksnap reads it)",
                    d.path.display(),
                    d.problem
                ));
            }
            ctx.output(&r, || {
                let mut t = String::new();
                for m in &r.moved {
                    t += &format!(
                        "{} {} to {} ({})\n",
                        if r.dry_run { "would move" } else { "moved" },
                        m.from.display(),
                        m.to.display(),
                        m.problem
                    );
                }
                t + &format!(
                    "{}{} {}",
                    if r.dry_run {
                        "dry run, nothing changed: "
                    } else {
                        ""
                    },
                    count(r.moved.len() as u64, "damaged document"),
                    if r.dry_run {
                        "would be moved to quarantine/"
                    } else {
                        "moved to quarantine/ (kept there; nothing was deleted)"
                    }
                )
            })
        }
    }
}
