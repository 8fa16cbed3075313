//! `blocksnap prune`: delete what no snapshot references, rewrite packs that are mostly garbage.

use clap::Args;

use crate::Ctx;
use crate::parse::human;
use crate::table::count;

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Show what would be reclaimed; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Rewrite a pack when more than this fraction of it is garbage.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
    pub(crate) repack_threshold: f64,
}

pub(crate) fn run(ctx: &Ctx<'_>, a: &PruneArgs) -> anyhow::Result<()> {
    let store = ctx.open()?;
    if !a.dry_run {
        ctx.writing(&store);
    }
    let access = ctx.access(&store)?;
    let opts = blocksnap_store::PruneOptions {
        dry_run: a.dry_run,
        repack_threshold: a.repack_threshold,
    };
    let r = store.prune(&access, opts, &ctx.progress)?;
    for p in &r.packs_unreadable {
        ctx.note(&format!("kept, unreadable: {p}"));
    }
    ctx.output(&r, || pruned(&r))
}

/// What prune did, or with --dry-run would do, in a sentence.
fn pruned(r: &blocksnap_store::PruneReport) -> String {
    let mut t = if r.dry_run {
        "dry run, nothing changed: would delete".to_string()
    } else {
        "deleted".to_string()
    };
    t += &format!(
        " {} and {} {} (moving {}, dropping {}), reclaiming {}",
        count(r.packs_deleted, "pack"),
        if r.dry_run { "rewrite" } else { "rewrote" },
        r.packs_rewritten,
        count(r.chunks_moved, "live chunk"),
        r.chunks_deleted,
        human(r.bytes_reclaimed)
    );
    if r.trash_expired > 0 {
        t += &format!(
            "; removed {} from the trash for good",
            count(r.trash_expired, "expired entry")
        );
    }
    t
}
