//! `blocksnap unlock`: remove lock objects that no running command holds.

use clap::Args;

use crate::Ctx;

#[derive(Debug, Args)]
pub(crate) struct UnlockArgs {
    /// Also remove the locks of other hosts sharing the store. Use it only when sure that
    /// those blocksnap processes are gone (their host crashed or was switched off): a
    /// prune running there could otherwise delete data a snapshot here still needs.
    #[arg(long)]
    pub(crate) all: bool,
}

pub(crate) fn run(ctx: &Ctx<'_>, a: &UnlockArgs) -> anyhow::Result<()> {
    let store = ctx.open()?;
    ctx.writing(&store);
    let r = store.unlock(a.all)?;
    ctx.output(&r, || {
        let mut t = String::new();
        for e in &r.removed {
            t += &format!("removed {}\n", e.describe());
        }
        for e in &r.kept {
            t += &format!(
                "kept {}{}\n",
                e.describe(),
                match e.status {
                    blocksnap_store::LockStatus::Running => " (running on this host)",
                    blocksnap_store::LockStatus::UnknownFormat
                    | blocksnap_store::LockStatus::Unreadable => {
                        " (this blocksnap cannot read it: `blocksnap unlock --all` removes it)"
                    }
                    _ => " (another host's: `blocksnap unlock --all` removes it)",
                }
            );
        }
        t += &format!("{} lock(s) removed, {} kept", r.removed.len(), r.kept.len());
        t
    })
}
