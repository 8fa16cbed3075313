//! What this client trusts about a store, kept beside its identities, outside the store:
//! `$XDG_CONFIG_HOME/blocksnap/<store id>/trust.json` (mode 0600).
//!
//! Someone who can write to the store can change any of its documents. The MACs catch a
//! document changed by someone without the data key; what they cannot catch — a config that
//! says "unencrypted" now, a key document swapped for one under another key, an account's
//! recipient replaced before a grant, an old volume head or key document put back — this
//! state catches: it pins, on first use, the store's encryption and whether its documents are
//! authenticated, the check value and latest revision of every key this client unwrapped (and
//! the accounts it revoked from each), the recipient of every account it granted to, and the
//! highest snapshot number of every volume it saw. A change of any of these is refused
//! (`StoreError::Tampered`, exit 6), never followed.
//!
//! Losing the file is survivable: the next command pins what the store says then (trust on
//! first use again), as docs/SECURITY.md describes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use blocksnap_manifest::{KeyDoc, KeyId, StoreId};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::repo::Store;
use crate::repo::layout::Kind;

/// The format of the trust file.
const FORMAT: &str = "blocksnap.trust/v1";
/// The largest trust file read.
const MAX_LEN: u64 = 16 << 20;

/// A key as this client last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PinnedKey {
    /// Its name then.
    pub name: String,
    /// Its check value (see `ChunkCodec::key_check`).
    pub check: String,
    /// The highest revision of its document seen.
    #[serde(default)]
    pub revision: u64,
    /// Accounts this client revoked from it (and did not grant again).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub revoked: BTreeSet<String>,
}

/// The trust file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustState {
    format: String,
    store: StoreId,
    /// The store's encryption, pinned on first use.
    encrypted: bool,
    /// Whether its documents must carry MACs (config format v2), pinned once seen.
    authenticated: bool,
    /// Keys by id.
    #[serde(default)]
    keys: BTreeMap<String, PinnedKey>,
    /// Recipients of the accounts this client granted a key to, by account.
    #[serde(default)]
    recipients: BTreeMap<String, String>,
    /// The highest snapshot number seen per volume.
    #[serde(default)]
    volumes: BTreeMap<String, u64>,
}

/// The trust state of one open store: loaded on first use, saved after every change.
#[derive(Debug, Default)]
pub(crate) struct Trust {
    state: Mutex<Option<TrustState>>,
}

impl Store {
    /// Where this client keeps what it trusts about the store.
    pub fn trust_path(&self) -> PathBuf {
        self.client_dir().join("trust.json")
    }

    /// Checks the store's config against what this client pinned (pinning it on first use):
    /// the store's id, its encryption, whether its documents are authenticated. Also refuses a
    /// config that says "unencrypted" in a store holding key documents.
    pub(crate) fn check_trust(&self) -> Result<()> {
        self.update_trust(|_, _| Ok(false))
    }

    /// Runs `f` on the trust state (loaded, and checked against the config, first); saves the
    /// state when `f` returns true (it changed it).
    fn update_trust(&self, f: impl FnOnce(&mut TrustState, &Store) -> Result<bool>) -> Result<()> {
        let mut guard = self.trust.state.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let (state, fresh) = self.load_trust()?;
            if fresh {
                self.save_trust(&state)?;
            }
            *guard = Some(state);
        }
        let state = guard.as_mut().expect("loaded above");
        if f(state, self)? {
            self.save_trust(state)?;
        }
        Ok(())
    }

    /// What `f` reads from the trust state (loaded and checked first).
    fn read_trust<T>(&self, f: impl FnOnce(&TrustState) -> T) -> Result<T> {
        let mut out = None;
        self.update_trust(|state, _| {
            out = Some(f(state));
            Ok(false)
        })?;
        Ok(out.expect("set by the closure"))
    }

    /// The trust file, checked against the config; or a new state pinning what the config
    /// says (true: nothing was pinned before).
    fn load_trust(&self) -> Result<(TrustState, bool)> {
        let config = self.config();
        if !config.encryption && !self.names(Kind::Key)?.is_empty() {
            return Err(StoreError::Tampered(format!(
                "the config of store {} says it is not encrypted, but the store holds key \
                 documents: the config may have been changed to turn encryption off. Nothing was \
                 read or written. Compare {} with a backup of the store.",
                self.place(),
                self.describe(crate::repo::CONFIG)
            )));
        }
        let path = self.trust_path();
        let state = match read_bounded(&path)? {
            None => {
                return Ok((
                    TrustState {
                        format: FORMAT.into(),
                        store: config.id,
                        encrypted: config.encryption,
                        authenticated: config.authenticated(),
                        keys: BTreeMap::new(),
                        recipients: BTreeMap::new(),
                        volumes: BTreeMap::new(),
                    },
                    true,
                ));
            }
            Some(bytes) => serde_json::from_slice::<TrustState>(&bytes)
                .ok()
                .filter(|s| s.format == FORMAT)
                .ok_or_else(|| {
                    StoreError::Usage(format!(
                        "{} is not a blocksnap trust file this version reads; move it away to \
                         trust the store {} afresh (see docs/SECURITY.md)",
                        path.display(),
                        self.place()
                    ))
                })?,
        };
        let told = |what: String| {
            StoreError::Tampered(format!(
                "store {}: {what}. Someone who can write to the store may have changed its \
                 config; nothing was read or written. If the change is yours (a store put back \
                 from another copy), move {} away to trust the store afresh.",
                self.place(),
                path.display()
            ))
        };
        if state.store != config.id {
            return Err(told(format!(
                "its config names store id {}, but this client knows it as {}",
                config.id, state.store
            )));
        }
        if state.encrypted != config.encryption {
            return Err(told(format!(
                "its config says it is {}, but it was {} when this client first used it",
                if config.encryption {
                    "encrypted"
                } else {
                    "not encrypted"
                },
                if state.encrypted {
                    "encrypted"
                } else {
                    "not encrypted"
                }
            )));
        }
        let mut state = state;
        if state.authenticated && !config.authenticated() {
            return Err(told(format!(
                "its config has format {}, whose documents carry no MACs, but this client saw it \
                 with authenticated documents",
                config.format
            )));
        }
        let upgraded = !state.authenticated && config.authenticated();
        state.authenticated |= config.authenticated();
        Ok((state, upgraded))
    }

    fn save_trust(&self, state: &TrustState) -> Result<()> {
        let path = self.trust_path();
        let dir = path.parent().expect("the trust file has a directory");
        super::create_private_dir(dir)?;
        let mut bytes = serde_json::to_vec_pretty(state).expect("the trust state serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(&path, &bytes, 0o600)
    }

    /// Checks key `doc`, whose data key has check value `check`, against the pin (pinning it
    /// on first use): the same key as before, a revision no older than seen, and no grant
    /// this client revoked come back.
    pub(crate) fn pin_key(&self, doc: &KeyDoc, check: &str) -> Result<()> {
        self.update_trust(|state, store| {
            let tampered = |what: String| {
                StoreError::Tampered(format!(
                    "key '{}' ({}): {what}. Someone who can write to the store may have replaced \
                     its document ({}); nothing was read or written under it. Compare it with a \
                     backup of the store.",
                    doc.name,
                    doc.id,
                    store.describe(&Kind::Key.key(&doc.id.to_string()))
                ))
            };
            let Some(pin) = state.keys.get_mut(&doc.id.to_string()) else {
                state.keys.insert(
                    doc.id.to_string(),
                    PinnedKey {
                        name: doc.name.clone(),
                        check: check.into(),
                        revision: doc.revision,
                        revoked: BTreeSet::new(),
                    },
                );
                return Ok(true);
            };
            if pin.check != check {
                return Err(tampered(
                    "the data key its grant unwraps to is not the key this client used under \
                     that id before"
                        .into(),
                ));
            }
            if doc.revision < pin.revision {
                return Err(tampered(format!(
                    "its document is revision {}, older than revision {} this client saw: an old \
                     copy was put back",
                    doc.revision, pin.revision
                )));
            }
            if let Some(a) = doc.grants.iter().find(|g| pin.revoked.contains(&g.account)) {
                return Err(tampered(format!(
                    "it holds a grant for account '{}', which this client revoked",
                    a.account
                )));
            }
            let changed = pin.revision != doc.revision || pin.name != doc.name;
            pin.revision = doc.revision;
            pin.name.clone_from(&doc.name);
            Ok(changed)
        })
    }

    /// Records that this client granted (`granted`) or revoked key `id` for `account`, and
    /// the key document's new revision.
    pub(crate) fn pin_grant_change(
        &self,
        id: KeyId,
        account: &str,
        granted: bool,
        revision: u64,
    ) -> Result<()> {
        self.update_trust(|state, _| {
            if let Some(pin) = state.keys.get_mut(&id.to_string()) {
                if granted {
                    pin.revoked.remove(account);
                } else {
                    pin.revoked.insert(account.into());
                }
                pin.revision = pin.revision.max(revision);
            }
            Ok(true)
        })
    }

    /// The id of the key this client pinned under `name`, if one.
    pub(crate) fn pinned_key_named(&self, name: &str) -> Result<Option<KeyId>> {
        self.read_trust(|state| {
            let mut named = state.keys.iter().filter(|(_, k)| k.name == name);
            named.next().and_then(|(id, _)| id.parse().ok())
        })
    }

    /// Checks the recipient of `account` against the one this client granted to before
    /// (pinning it on the first grant).
    pub(crate) fn pin_recipient(&self, account: &str, recipient: &str) -> Result<()> {
        self.update_trust(|state, store| match state.recipients.get(account) {
            Some(r) if r == recipient => Ok(false),
            Some(r) => Err(StoreError::Tampered(format!(
                "account '{account}' now has recipient {}, but this client granted to it as {} \
                 before: its document ({}) may have been replaced to redirect the grant. Nothing \
                 was granted. If the account was really made again, check the new fingerprint \
                 with its owner, then pass --expect FINGERPRINT.",
                super::fingerprint(recipient),
                super::fingerprint(r),
                store.describe(&Kind::Account.key(account))
            ))),
            None => {
                state.recipients.insert(account.into(), recipient.into());
                Ok(true)
            }
        })
    }

    /// Replaces the pinned recipient of `account` (the user confirmed the new one).
    pub(crate) fn repin_recipient(&self, account: &str, recipient: &str) -> Result<()> {
        self.update_trust(|state, _| {
            state.recipients.insert(account.into(), recipient.into());
            Ok(true)
        })
    }

    /// The highest snapshot number of `volume` this client saw.
    pub(crate) fn pinned_seq(&self, volume: &str) -> Result<u64> {
        self.read_trust(|state| state.volumes.get(volume).copied().unwrap_or(0))
    }

    /// Raises the pinned snapshot number of `volume` to `seq`.
    pub(crate) fn pin_seq(&self, volume: &str, seq: u64) -> Result<()> {
        self.update_trust(|state, _| {
            let pinned = state.volumes.entry(volume.into()).or_default();
            let changed = seq > *pinned;
            *pinned = (*pinned).max(seq);
            Ok(changed)
        })
    }
}

/// The file at `path`, if it exists, read up to [`MAX_LEN`].
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("cannot read", path)(e)),
        Ok(m) if m.len() > MAX_LEN => {
            return Err(StoreError::Usage(format!(
                "{} is larger than a trust file can be; move it away to trust the store afresh",
                path.display()
            )));
        }
        Ok(_) => {}
    }
    fsutil::read(path).map(Some)
}
