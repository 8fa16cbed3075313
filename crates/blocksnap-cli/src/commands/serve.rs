//! `blocksnap serve …`: serve a snapshot to other programs without restoring it first.

use clap::Subcommand;

use crate::Ctx;
use crate::parse::human;

#[derive(Debug, Subcommand)]
pub(crate) enum ServeCmd {
    /// Export a snapshot read-only over NBD: usable at once, its chunks fetched, verified and
    /// decoded as they are read (`qemu-img convert nbd://127.0.0.1:10809 disk.img`, `nbd-client`,
    /// or a VM booting from it). Serves one client at a time until stopped (Ctrl-C).
    Nbd {
        /// A snapshot (id or unique prefix), or IMAGE:DEVICE of an image you may launch.
        #[arg(value_name = "SNAPSHOT|IMAGE:DEVICE")]
        what: String,
        /// The address to listen on (port 0 picks a free one).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
        listen: String,
    },
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &ServeCmd) -> anyhow::Result<()> {
    match cmd {
        ServeCmd::Nbd { what, listen } => {
            let store = ctx.open()?;
            let access = ctx.access(&store)?;
            store.serve_nbd(&access, what, listen, &ctx.progress, |info| {
                // Printed once listening; the command then serves until stopped.
                let _ = ctx.output(info, String::new);
                ctx.note(&format!(
                    "serving {} ({}) read-only over NBD on {}: e.g. `qemu-img convert -O raw nbd://{}/{} disk.img`; Ctrl-C stops",
                    info.export,
                    human(info.size),
                    info.listen,
                    info.listen,
                    info.export
                ));
            })?;
            Ok(())
        }
    }
}
