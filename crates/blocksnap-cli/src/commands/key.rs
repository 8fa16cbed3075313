//! `blocksnap key …`: create, list, grant and revoke data keys.

use clap::Subcommand;
use serde::Serialize;

use crate::Ctx;
use crate::table::Table;

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
    ///
    /// It prints the fingerprint of the public key it wrapped to: check it with the account's
    /// owner (`blocksnap account list` shows it on their side). The first grant to an account
    /// pins its public key on this machine; a later grant to a changed one is refused (exit 6)
    /// unless --expect names the new fingerprint.
    Grant {
        /// Key name or id.
        key: String,
        /// The account to grant it to.
        #[arg(id = "grantee", value_name = "ACCOUNT")]
        account: String,
        /// The fingerprint the account's public key must have (as `account list` shows it,
        /// with or without the colons); the grant is refused, exit 6, if it differs.
        #[arg(long, value_name = "FINGERPRINT")]
        expect: Option<String>,
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
    /// `key grant`: the fingerprint of the public key the grant was wrapped to.
    #[serde(skip_serializing_if = "Option::is_none")]
    grantee_fingerprint: Option<String>,
}

fn key_view(k: &blocksnap_store::KeyDoc) -> KeyView {
    KeyView {
        id: k.id.to_string(),
        name: k.name.clone(),
        created: k.created.clone(),
        created_by: k.created_by.clone(),
        grants: k.grants.iter().map(|g| g.account.clone()).collect(),
        grantee_fingerprint: None,
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
        KeyCmd::Grant {
            key,
            account,
            expect,
        } => {
            let (doc, fingerprint) =
                store.grant_key(&ctx.access(&store)?, key, account, expect.as_deref())?;
            let mut v = key_view(&doc);
            v.grantee_fingerprint = Some(fingerprint.clone());
            ctx.output(&v, || {
                format!(
                    "granted key '{}' ({}) to account '{account}', public key fingerprint {fingerprint}; held by {}",
                    v.name,
                    v.id,
                    v.grants.join(", ")
                )
            })
        }
        KeyCmd::Revoke { key, account } => show(
            &store.revoke_key(&ctx.access(&store)?, key, account)?,
            "revoked a grant on",
        ),
        KeyCmd::List => {
            let keys: Vec<_> = store.list_keys()?.iter().map(key_view).collect();
            ctx.output(&keys, || {
                let mut t = Table::new(&["ID", "NAME", "CREATED", "GRANTS"]);
                for k in &keys {
                    t.row([
                        k.id.clone(),
                        k.name.clone(),
                        k.created.clone(),
                        k.grants.join(","),
                    ]);
                }
                t.render()
            })
        }
    }
}
