//! `blocksnap key …`: create, list, grant and revoke data keys.

use clap::Subcommand;
use serde::Serialize;

use crate::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCmd {
    /// Create a data key, granted to the acting account.
    Create {
        /// The key's name.
        name: String,
    },
    /// List keys and the accounts holding grants on them.
    List,
    /// Grant a key to an account: wraps the data key to that account's public key. Only an
    /// account holding the key can grant it.
    Grant {
        /// Key name or id.
        key: String,
        /// The account to grant it to.
        #[arg(id = "grantee", value_name = "ACCOUNT")]
        account: String,
    },
    /// Remove an account's grant. Data it already read stays read; rotate to a new key
    /// (`key create`, then `snapshot create --key`) to protect future snapshots.
    Revoke {
        /// Key name or id.
        key: String,
        /// The account whose grant is removed.
        #[arg(id = "grantee", value_name = "ACCOUNT")]
        account: String,
    },
}

/// A key as `key list` and friends print it.
#[derive(Serialize)]
struct KeyView {
    id: String,
    name: String,
    created: String,
    created_by: String,
    grants: Vec<String>,
}

fn key_view(k: &blocksnap_store::KeyDoc) -> KeyView {
    KeyView {
        id: k.id.to_string(),
        name: k.name.clone(),
        created: k.created.clone(),
        created_by: k.created_by.clone(),
        grants: k.grants.iter().map(|g| g.account.clone()).collect(),
    }
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &KeyCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    let show = |k: &blocksnap_store::KeyDoc, what: &str| {
        let v = key_view(k);
        ctx.output(&v, || {
            format!(
                "{what} key '{}' ({}); held by {}",
                v.name,
                v.id,
                v.grants.join(", ")
            )
        })
    };
    match cmd {
        KeyCmd::Create { name } => show(&store.create_key(&ctx.access(&store)?, name)?, "created"),
        KeyCmd::Grant { key, account } => show(
            &store.grant_key(&ctx.access(&store)?, key, account)?,
            "granted",
        ),
        KeyCmd::Revoke { key, account } => show(
            &store.revoke_key(&ctx.access(&store)?, key, account)?,
            "revoked a grant on",
        ),
        KeyCmd::List => {
            let keys: Vec<_> = store.list_keys()?.iter().map(key_view).collect();
            ctx.output(&keys, || {
                let mut t = format!("{:<22} {:<20} {:<26} {}", "ID", "NAME", "CREATED", "GRANTS");
                for k in &keys {
                    t += &format!(
                        "\n{:<22} {:<20} {:<26} {}",
                        k.id,
                        k.name,
                        k.created,
                        k.grants.join(",")
                    );
                }
                t
            })
        }
    }
}
