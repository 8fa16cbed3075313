//! `blocksnap recovery …`: export and import the documents a store needs besides the identities.

use std::path::PathBuf;

use blocksnap_store::Store;
use clap::Subcommand;

use crate::Ctx;
use crate::table::count;

#[derive(Debug, Subcommand)]
pub(crate) enum RecoveryCmd {
    /// Write the store's config, account documents and key documents into FILE (mode 0600).
    /// Keep it with the identities: without these documents the data cannot be read, even with
    /// an identity. Export again after `account create` and `key create|grant|revoke`.
    Export {
        /// The file to write (it must not exist).
        file: PathBuf,
    },
    /// Put back, from an exported FILE, the config, account and key documents that are
    /// missing or damaged in the store (damaged ones are moved to quarantine/ first). One that
    /// reads is never replaced. Works on a store that lost its config.
    Import {
        /// The file `recovery export` wrote.
        file: PathBuf,
    },
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &RecoveryCmd) -> anyhow::Result<()> {
    match cmd {
        RecoveryCmd::Export { file } => {
            let r = ctx.open()?.export_recovery(file, &ctx.progress)?;
            ctx.output(&r, || {
                format!(
                    "wrote {} (store {}: its config, {}, {}); keep it with the identities, \
                     apart from the store",
                    r.file.display(),
                    r.store,
                    count(r.accounts.len() as u64, "account"),
                    count(r.keys.len() as u64, "key")
                )
            })
        }
        RecoveryCmd::Import { file } => {
            let (path, _) = ctx.store_path();
            if let Some(url) = crate::s3_url(&path) {
                return Err(blocksnap_store::StoreError::Usage(format!(
                    "recovery import into {url}: this blocksnap imports a recovery file into a \
                     local store only, not yet into an s3:// one. Nothing was written."
                ))
                .into());
            }
            let r = Store::import_recovery(&path, file, &ctx.progress)?;
            ctx.output(&r, || {
                let mut t = String::new();
                for q in &r.quarantined {
                    t += &format!(
                        "moved the damaged {} to {}\n",
                        q.from.display(),
                        q.to.display()
                    );
                }
                for p in &r.restored {
                    t += &format!("put back {}\n", p.display());
                }
                t + &format!(
                    "{} put back, {} kept as they were",
                    count(r.restored.len() as u64, "document"),
                    r.kept.len()
                )
            })
        }
    }
}
