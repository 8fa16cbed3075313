//! `blocksnap migrate`: authenticate the documents of a store made before they were.

use clap::Args;

use crate::Ctx;

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {}

pub(crate) fn run(ctx: &Ctx<'_>, _a: &MigrateArgs) -> anyhow::Result<()> {
    let store = ctx.open()?;
    let r = store.migrate(&ctx.access(&store)?, &ctx.progress)?;
    ctx.output(&r, || {
        let mut t = format!(
            "sealed {} document(s), {} already sealed; config format {} -> {}",
            r.sealed, r.already, r.from, r.to
        );
        if !r.left.is_empty() {
            t += &format!(
                "\nleft unsealed (under keys account '{}' holds no grant on; run `blocksnap \
                 migrate` as an account holding them): {}",
                ctx.access(&store).map(|a| a.account).unwrap_or_default(),
                r.left.join(", ")
            );
        }
        t
    })
}
