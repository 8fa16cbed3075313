//! Accounts, identities and data keys. A grant is cryptographic: the data key wrapped with age
//! (X25519) to the grantee's recipient. Without the identity that unwraps a grant, a key cannot
//! be had, whatever any document says.

pub(crate) mod migrate;
mod private_file;
pub(crate) mod recovery;
pub(crate) mod signing;
pub(crate) mod trust;
pub(crate) mod verify;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use blocksnap_manifest::{AccountDoc, Document, GrantDoc, KeyDoc, KeyId};
use blocksnap_pack::{ChunkCodec, DataKey};
use zeroize::Zeroizing;

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::repo::layout::Kind;
use crate::repo::resolve::resolve;
use crate::repo::{Store, recovery_hint};

/// Who acts: an account name and the path of its secret identity.
#[derive(Clone, Debug)]
pub struct Access {
    /// The account's name.
    pub account: String,
    /// Its identity file.
    pub identity: PathBuf,
}

impl Access {
    pub(crate) fn load_identity(&self) -> Result<age::x25519::Identity> {
        let path = &self.identity;
        // Not through a symbolic link, owned by this user, mode 0600 or narrower.
        let text = private_file::read_private(path, "identity file").map_err(|r| {
            r.into_error(path, || {
                StoreError::Denied(format!(
                    "no identity file for account '{}' at {}; pass --identity FILE or set BLOCKSNAP_IDENTITY",
                    self.account,
                    path.display()
                ))
            })
        })?;
        let text = std::str::from_utf8(&text).map_err(|_| self.bad_identity("it is not text"))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| self.bad_identity("it holds no AGE-SECRET-KEY line"))?;
        line.parse::<age::x25519::Identity>()
            .map_err(|_| self.bad_identity("its key line is not an age X25519 identity"))
    }

    /// Proves that the identity file belongs to the account: its public key must be the one
    /// the store records for the account.
    pub fn prove(&self, store: &Store) -> Result<()> {
        let identity = self.load_identity()?;
        let account = store.verified_account(&self.account)?;
        if identity.to_public().to_string() != account.recipient {
            return Err(StoreError::Denied(format!(
                "identity {} is not the identity of account '{}'; pass the right --identity or --account",
                self.identity.display(),
                self.account
            )));
        }
        Ok(())
    }

    fn bad_identity(&self, why: &str) -> StoreError {
        StoreError::Usage(format!(
            "identity file {} for account '{}' is unusable: {why}",
            self.identity.display(),
            self.account
        ))
    }
}

impl Store {
    /// The access of `account` (default: the store's first account) with `identity` (default:
    /// [`Store::default_identity_path`]).
    pub fn access(&self, account: Option<&str>, identity: Option<&Path>) -> Result<Access> {
        let account = account
            .unwrap_or(&self.config().default_account)
            .to_string();
        blocksnap_manifest::validate_name("account", "name", &account)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        let key = Kind::Account.key(&account);
        // Read rather than asked about: the command reads the account next anyway, and the
        // document cache then answers.
        if self
            .get_bounded(&key, crate::repo::objects::MAX_DOCUMENT_LEN)?
            .is_none()
        {
            if account == self.config().default_account {
                return Err(StoreError::Damaged(format!(
                    "the document of the store's first account '{account}' is missing ({}). {}",
                    self.describe(&key),
                    recovery_hint(self.place())
                )));
            }
            return Err(StoreError::NotFound {
                kind: "account",
                name: account,
                hint: format!(" in store {}; see `blocksnap account list`", self.place()),
            });
        }
        self.check_trust()?;
        let identity =
            identity.map_or_else(|| self.default_identity_path(&account), Path::to_path_buf);
        Ok(Access { account, identity })
    }
}

impl Store {
    /// Creates an account: writes its identity file (mode 0600) and records its public part.
    pub(crate) fn create_account_inner(
        &self,
        name: &str,
        identity_path: &Path,
    ) -> Result<AccountDoc> {
        blocksnap_manifest::validate_name("account", "name", name)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        if self
            .backend()
            .head(&Kind::Account.key(name))
            .map_err(self.object_error(&Kind::Account.key(name)))?
            .is_some()
        {
            return Err(StoreError::Exists {
                kind: "account",
                name: name.into(),
            });
        }
        if identity_path.exists() {
            return Err(StoreError::Usage(format!(
                "identity file {} already exists; move it away or pass another --identity",
                identity_path.display()
            )));
        }
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let created = fsutil::now_rfc3339();
        let secret = Zeroizing::new(format!(
            "# blocksnap identity of account {name} in store {}\n# created: {created}\n# public key: {recipient}\n{}\n",
            self.config().id,
            identity.to_string().expose_secret()
        ));
        if let Some(dir) = identity_path.parent() {
            create_private_dir(dir)?;
        }
        let mut f = fsutil::create_new(identity_path, 0o600)?;
        f.write_all(secret.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(StoreError::io("cannot write", identity_path))?;
        let mut doc = AccountDoc {
            format: AccountDoc::FORMAT.into(),
            name: name.into(),
            recipient,
            created,
            signing_key: None,
            signature: None,
        };
        signing::sign_account(&mut doc, &identity);
        self.create_doc(Kind::Account, name, &doc)?;
        Ok(doc)
    }

    /// Creates an account: its identity file (mode 0600, at `identity` or the default path)
    /// and its public part in the store. Returns the document and the identity's path.
    pub fn create_account(
        &self,
        name: &str,
        identity: Option<&Path>,
    ) -> Result<(AccountDoc, PathBuf)> {
        self.require_writable("account create")?;
        let path = identity.map_or_else(|| self.default_identity_path(name), Path::to_path_buf);
        let doc = self.create_account_inner(name, &path)?;
        Ok((doc, path))
    }

    /// Every account, by name.
    pub fn list_accounts(&self) -> Result<Vec<AccountDoc>> {
        let mut out: Vec<AccountDoc> = self.list_docs(Kind::Account)?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates a data key named `name`, granted to the acting account.
    pub fn create_key(&self, access: &Access, name: &str) -> Result<KeyDoc> {
        self.require_writable("key create")?;
        if !self.config().encryption {
            return Err(StoreError::Usage(
                "this store was made with --no-encryption: it has no keys".into(),
            ));
        }
        let id = self.create_key_inner(access, name)?;
        self.key_by_id(id)
    }

    /// Grants `key` to `grantee`: the acting account unwraps the data key with its own identity
    /// and wraps it to the grantee's public key. Only an account holding the key can grant it.
    /// The grantee's recipient must be the one this client granted to before (pinned on the
    /// first grant), or `expect` (its fingerprint, which the grantee's owner confirms).
    pub fn grant_key(
        &self,
        access: &Access,
        key: &str,
        grantee: &str,
        expect: Option<&str>,
    ) -> Result<(KeyDoc, String)> {
        self.require_writable("key grant")?;
        let doc = self.resolve_key_for_use(key)?;
        let target = self.verified_account(grantee)?;
        let found = fingerprint(&target.recipient);
        match expect {
            Some(want) if normalize_fingerprint(want) != normalize_fingerprint(&found) => {
                return Err(StoreError::Tampered(format!(
                    "account '{grantee}' has recipient fingerprint {found}, not {want}: its document ({}) is not the account you meant (it may have been replaced to redirect the grant). Nothing was granted.",
                    self.describe(&Kind::Account.key(grantee))
                )));
            }
            Some(_) => self.repin_recipient(grantee, &target.recipient)?,
            None => self.pin_recipient(grantee, &target.recipient)?,
        }
        let data_key = self.unwrap_key(access, &doc)?;
        let codec =
            ChunkCodec::encrypted(doc.id, data_key.clone(), self.config().compression_level);
        let wrapped = wrap(data_key.expose(), &target)?;
        // A compare-and-swap: a grant or revoke by another process meanwhile is kept.
        let doc = self
            .update_doc::<KeyDoc>(Kind::Key, &doc.id.to_string(), |doc| {
                self.verify(&codec, doc)?;
                if doc.grants.iter().any(|g| g.account == grantee) {
                    return Err(StoreError::Usage(format!(
                        "account '{grantee}' already holds a grant on key '{}'",
                        doc.name
                    )));
                }
                doc.grants.push(GrantDoc {
                    account: grantee.into(),
                    wrapped: wrapped.clone(),
                });
                doc.revision += 1;
                self.sign_key_doc(access, doc)?;
                self.seal(&codec, doc)
            })?
            .ok_or_else(|| self.missing_key(doc.id))?;
        self.pin_grant_change(doc.id, grantee, true, doc.revision)?;
        Ok((doc, found))
    }

    /// Removes `grantee`'s wrapped copy of `key`. The acting account must hold the key; the
    /// last grant cannot be removed (the key, and all data under it, would be lost).
    pub fn revoke_key(&self, access: &Access, key: &str, grantee: &str) -> Result<KeyDoc> {
        self.require_writable("key revoke")?;
        let doc = self.resolve_key_for_use(key)?;
        if !doc.grants.iter().any(|g| g.account == grantee) {
            return Err(StoreError::Usage(format!(
                "account '{grantee}' holds no grant on key '{}'",
                doc.name
            )));
        }
        let data_key = self.unwrap_key(access, &doc)?;
        let codec = ChunkCodec::encrypted(doc.id, data_key, self.config().compression_level);
        let doc = self
            .update_doc::<KeyDoc>(Kind::Key, &doc.id.to_string(), |doc| {
                self.verify(&codec, doc)?;
                if !doc.grants.iter().any(|g| g.account == grantee) {
                    return Err(StoreError::Usage(format!(
                        "account '{grantee}' holds no grant on key '{}'",
                        doc.name
                    )));
                }
                if doc.grants.len() == 1 {
                    return Err(StoreError::Usage(format!(
                        "'{grantee}' holds the last grant on key '{}'; revoking it would make all data under the key unreadable",
                        doc.name
                    )));
                }
                doc.grants.retain(|g| g.account != grantee);
                doc.revision += 1;
                self.sign_key_doc(access, doc)?;
                self.seal(&codec, doc)
            })?
            .ok_or_else(|| self.missing_key(doc.id))?;
        self.pin_grant_change(doc.id, grantee, false, doc.revision)?;
        Ok(doc)
    }

    /// Reads an account document.
    pub fn account(&self, name: &str) -> Result<AccountDoc> {
        blocksnap_manifest::validate_name("account", "name", name)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        self.doc(Kind::Account, name)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "account",
                name: name.into(),
                hint: "; see `blocksnap account list`".into(),
            })
    }

    /// Creates a data key named `name`, granted to the acting account.
    pub(crate) fn create_key_inner(&self, access: &Access, name: &str) -> Result<KeyId> {
        blocksnap_manifest::validate_name("key", "name", name)
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        if self.list_keys()?.iter().any(|k| k.name == name) {
            return Err(StoreError::Exists {
                kind: "key",
                name: name.into(),
            });
        }
        let key = Zeroizing::new(fsutil::random_bytes::<32>());
        let account = self.account(&access.account)?;
        let wrapped = wrap(&key, &account)?;
        let id = KeyId(u64::from_le_bytes(fsutil::random_bytes()));
        let mut doc = KeyDoc {
            format: KeyDoc::FORMAT.into(),
            id,
            name: name.into(),
            created: fsutil::now_rfc3339(),
            created_by: access.account.clone(),
            grants: vec![GrantDoc {
                account: access.account.clone(),
                wrapped,
            }],
            revision: 0,
            mac: None,
            signed_by: None,
            signature: None,
        };
        self.sign_key_doc(access, &mut doc)?;
        let codec = ChunkCodec::encrypted(
            id,
            DataKey::from_bytes(*key),
            self.config().compression_level,
        );
        self.seal(&codec, &mut doc)?;
        self.create_doc(Kind::Key, &id.to_string(), &doc)?;
        if let Some(check) = codec.key_check() {
            self.pin_key(&doc, &check)?;
        }
        Ok(id)
    }

    /// Every key document.
    pub fn list_keys(&self) -> Result<Vec<KeyDoc>> {
        let mut out: Vec<KeyDoc> = self.list_docs(Kind::Key)?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A key by name, full id or unique id prefix ([`crate::repo::resolve`]).
    pub fn resolve_key(&self, text: &str) -> Result<KeyDoc> {
        let keys = self.list_keys()?;
        match resolve(
            "key",
            "blocksnap key list",
            KeyId::PREFIX,
            text,
            &keys,
            |k| Some(k.id.to_string()),
            |k| Some(k.name.as_str()),
        ) {
            Ok(k) => Ok(k.clone()),
            Err(StoreError::NotFound { .. }) => {
                // A key that should be there: the store's documents are damaged or gone.
                let damaged = self.skipped(Kind::Key);
                if damaged.is_empty() && !(self.config().encryption && keys.is_empty()) {
                    return Err(StoreError::NotFound {
                        kind: "key",
                        name: text.into(),
                        hint: "; see `blocksnap key list`".into(),
                    });
                }
                Err(StoreError::Damaged(format!(
                    "no key '{text}' in the store {}: {}. {}",
                    self.place(),
                    if damaged.is_empty() {
                        "it holds no key document at all".to_string()
                    } else {
                        format!(
                            "unreadable key documents: {}",
                            damaged
                                .iter()
                                .map(|d| d.path.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    },
                    recovery_hint(self.place())
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// The key to encrypt (or grant) with, named `text`: a name this client pinned resolves to
    /// the pinned key's id, whatever other key documents say they are called (a key someone
    /// added under the same name is never picked); anything else as [`Store::resolve_key`].
    pub(crate) fn resolve_key_for_use(&self, text: &str) -> Result<KeyDoc> {
        if let Some(id) = self.pinned_key_named(text)? {
            return self.key_by_id(id);
        }
        self.resolve_key(text)
    }

    /// The error for key `id`, which documents name but the store lacks.
    fn missing_key(&self, id: KeyId) -> StoreError {
        StoreError::Damaged(format!(
            "key {id} is missing from the store ({}): the data under it cannot be read, even \
             with an identity. {}",
            self.describe(&Kind::Key.key(&id.to_string())),
            recovery_hint(self.place())
        ))
    }

    pub(crate) fn key_by_id(&self, id: KeyId) -> Result<KeyDoc> {
        let key = Kind::Key.key(&id.to_string());
        let Some(bytes) = self.get_object(&key)? else {
            return Err(self.missing_key(id));
        };
        KeyDoc::from_json(&bytes).map_err(|e| {
            StoreError::Damaged(format!(
                "{}: {e}; the data under key {id} cannot be read until it is put back. {}",
                self.describe(&key),
                recovery_hint(self.place())
            ))
        })
    }

    /// The data key of `doc` as `access` holds it: its grant, unwrapped with its identity.
    fn unwrap_key(&self, access: &Access, doc: &KeyDoc) -> Result<DataKey> {
        let key_id = doc.id;
        let Some(grant) = doc.grants.iter().find(|g| g.account == access.account) else {
            return Err(StoreError::Denied(format!(
                "account '{}' holds no grant on key '{}' ({key_id}); an account holding it can run \
                 `blocksnap key grant {} {}`",
                access.account, doc.name, doc.name, access.account
            )));
        };
        let identity = access.load_identity()?;
        let wrapped = hex::decode(&grant.wrapped).map_err(|_| {
            StoreError::Damaged(format!(
                "key {key_id}: the grant of '{}' is not hex",
                access.account
            ))
        })?;
        let plain = Zeroizing::new(age::decrypt(&identity, &wrapped).map_err(|_| {
            StoreError::Denied(format!(
                "identity {} cannot unwrap the grant of account '{}' on key '{}' ({key_id}): it is not \
                 that account's identity; pass the right --identity or --account",
                access.identity.display(),
                access.account,
                doc.name
            ))
        })?);
        // Straight from the zeroizing buffer into the key, with no copy on the stack.
        let key = DataKey::from_slice(&plain).ok_or_else(|| {
            StoreError::Damaged(format!(
                "key {key_id}: the unwrapped key has the wrong length"
            ))
        })?;
        // The key document is authenticated under the key it wraps, and the key is the one
        // this client used under that id before.
        let codec = ChunkCodec::encrypted(key_id, key.clone(), self.config().compression_level);
        self.verify(&codec, doc)?;
        self.verify_key_signature(doc)?;
        if let Some(check) = codec.key_check() {
            self.pin_key(doc, &check)?;
        }
        Ok(key)
    }

    /// The codec for chunks under `key` (none: a plain store) as `access` may use it.
    pub fn codec(&self, access: &Access, key: Option<KeyId>) -> Result<ChunkCodec> {
        let level = self.config().compression_level;
        self.check_trust()?;
        let Some(key_id) = key else {
            if self.config().encryption {
                return Err(StoreError::Tampered(format!(
                    "store {} is encrypted, but something in it (a document or a pack) asks to be read as plaintext: someone who can write to the store may have planted it. Nothing was read on its word; `blocksnap check` names it.",
                    self.place()
                )));
            }
            return Ok(ChunkCodec::plain(level));
        };
        let doc = self.key_by_id(key_id)?;
        Ok(ChunkCodec::encrypted(
            key_id,
            self.unwrap_key(access, &doc)?,
            level,
        ))
    }

    /// The codec new snapshots use: the key given by name or id, else `default`.
    pub fn codec_for_new(&self, access: &Access, key: Option<&str>) -> Result<ChunkCodec> {
        if !self.config().encryption {
            if let Some(k) = key {
                return Err(StoreError::Usage(format!(
                    "--key {k}: this store was made with --no-encryption"
                )));
            }
            return self.codec(access, None);
        }
        let doc = self.resolve_key_for_use(key.unwrap_or("default"))?;
        self.codec(access, Some(doc.id))
    }
}

/// The fingerprint of an account's recipient, as `key grant` shows it and `--expect` takes it:
/// 16 bytes of its BLAKE3 hash, in hex groups of four (`3f2a:91bc:…`).
pub fn fingerprint(recipient: &str) -> String {
    let hash = blake3::hash(recipient.as_bytes());
    hash.as_bytes()[..16]
        .chunks(2)
        .map(hex::encode)
        .collect::<Vec<_>>()
        .join(":")
}

/// A fingerprint as typed: lower case, without separators.
fn normalize_fingerprint(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn wrap(key: &[u8; 32], account: &AccountDoc) -> Result<String> {
    let recipient: age::x25519::Recipient = account.recipient.parse().map_err(|_| {
        StoreError::Damaged(format!(
            "account '{}' has an invalid recipient",
            account.name
        ))
    })?;
    let ct = age::encrypt(&recipient, key)
        .map_err(|e| StoreError::Other(format!("cannot wrap key: {e}")))?;
    Ok(hex::encode(ct))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .map_err(StoreError::io("cannot create directory", dir))
}
