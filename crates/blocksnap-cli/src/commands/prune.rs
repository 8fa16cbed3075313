//! `blocksnap prune`: delete what no snapshot references, rewrite packs that are mostly garbage.

use clap::Args;

use crate::Ctx;
use crate::parse::human;

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
    ctx.output(&r, || {
        format!(
            "{}{} packs deleted, {} rewritten ({} chunks moved, {} dropped): {} reclaimed",
            if r.dry_run { "dry run: " } else { "" },
            r.packs_deleted,
            r.packs_rewritten,
            r.chunks_moved,
            r.chunks_deleted,
            human(r.bytes_reclaimed)
        )
    })
}
