//! `blocksnap account …`: create and list accounts (identities that hold keys).

use clap::Subcommand;
use serde::Serialize;

use crate::Ctx;
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub(crate) enum AccountCmd {
    /// Create an account: writes its secret identity (mode 0600) to --identity or the default
    /// path, and records its public key in the store.
    Create {
        /// The account's name.
        name: String,
    },
    /// List the store's accounts.
    List,
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &AccountCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    match cmd {
        AccountCmd::Create { name } => {
            ctx.writing(&store);
            let (doc, path) = store.create_account(name, ctx.cli.identity.as_deref())?;
            #[derive(Serialize)]
            struct Created<'a> {
                name: &'a str,
                recipient: &'a str,
                fingerprint: String,
                identity: &'a std::path::Path,
            }
            let out = Created {
                name: &doc.name,
                recipient: &doc.recipient,
                fingerprint: blocksnap_store::fingerprint(&doc.recipient),
                identity: &path,
            };
            ctx.output(&out, || {
                format!(
                    "created account '{}' ({}, fingerprint {}); its identity is {} (keep it secret and backed up)",
                    doc.name,
                    doc.recipient,
                    out.fingerprint,
                    path.display()
                )
            })
        }
        AccountCmd::List => {
            let accounts = store.list_accounts()?;
            #[derive(Serialize)]
            struct Row<'a> {
                name: &'a str,
                recipient: &'a str,
                fingerprint: String,
                created: &'a str,
            }
            let rows: Vec<_> = accounts
                .iter()
                .map(|a| Row {
                    name: &a.name,
                    recipient: &a.recipient,
                    fingerprint: blocksnap_store::fingerprint(&a.recipient),
                    created: &a.created,
                })
                .collect();
            ctx.output(&rows, || {
                let mut t = Table::new(&["NAME", "RECIPIENT", "FINGERPRINT", "CREATED"]);
                for r in &rows {
                    t.row([r.name, r.recipient, &r.fingerprint, r.created]);
                }
                t.render()
            })
        }
    }
}
