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
    /// Seconds a condemned pack waits before a prune deletes it. Prune first condemns what no
    /// snapshot needs and deletes it in a later run, after the grace, if still unneeded; no
    /// snapshot reuses a chunk of a condemned pack meanwhile. Default: 0 on a local directory
    /// (both phases in one run), on a store other hosts may share the lock stale time and a
    /// sixth (35 min); there, a grace no longer than the stale time is refused. Also
    /// BLOCKSNAP_PRUNE_GRACE.
    #[arg(long, value_name = "SECONDS")]
    pub(crate) grace: Option<f64>,
}

pub(crate) fn run(ctx: &Ctx<'_>, a: &PruneArgs) -> anyhow::Result<()> {
    let store = ctx.open()?;
    if !a.dry_run {
        ctx.writing(&store);
    }
    let access = ctx.access(&store)?;
    let grace = match a.grace {
        Some(g) if g.is_finite() && (0.0..1e9).contains(&g) => {
            Some(std::time::Duration::from_secs_f64(g))
        }
        Some(g) => anyhow::bail!("--grace {g}: give a number of seconds, 0 or more"),
        None => None,
    };
    let opts = blocksnap_store::PruneOptions {
        dry_run: a.dry_run,
        repack_threshold: a.repack_threshold,
        grace,
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
    if r.packs_marked > 0 && r.packs_pending > 0 {
        t += &format!(
            "; condemned {} (deleted by a prune after the {} s grace)",
            count(r.packs_marked, "pack"),
            r.grace_seconds
        );
    }
    if r.packs_pending > 0 {
        t += &format!(
            "; {} waiting for the grace ({})",
            count(r.packs_pending, "condemned pack"),
            human(r.bytes_pending)
        );
    }
    if r.packs_unmarked > 0 {
        t += &format!(
            "; kept {} a snapshot needs again",
            count(r.packs_unmarked, "condemned pack")
        );
    }
    if r.trash_expired > 0 {
        t += &format!(
            "; removed {} from the trash for good",
            count(r.trash_expired, "expired entry")
        );
    }
    t
}
