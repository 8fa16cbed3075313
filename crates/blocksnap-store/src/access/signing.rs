//! Signatures of accounts: what only the account that made a document can vouch for.
//!
//! A MAC under a data key proves that a holder of the key wrote a document, and every account
//! granted the key is one. Some statements belong to one account only: that its recipient is
//! its own (its account document), and whom an image's owner lets launch it (the launch
//! permissions). Those are signed with the account's Ed25519 key, derived from its age
//! identity (so there is no second secret to keep), and checked with the public key in its
//! account document, which this client pins on first sight like the recipient.

use age::secrecy::ExposeSecret;
use blocksnap_manifest::{AccountDoc, ImageDoc, KeyDoc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::repo::Store;
use crate::repo::layout::Kind;

/// BLAKE3 key-derivation context for an account's Ed25519 seed (input: its age identity, as
/// the `AGE-SECRET-KEY-1…` text).
const CONTEXT_SIGNING_KEY: &str = "blocksnap 2026-12-02 account signing key v1";
/// What every signed message starts with.
const DOMAIN: &[u8] = b"blocksnap signature v1";

/// The Ed25519 key of `identity`.
pub(crate) fn signing_key_of(identity: &age::x25519::Identity) -> SigningKey {
    let secret = identity.to_string();
    let seed = Zeroizing::new(blake3::derive_key(
        CONTEXT_SIGNING_KEY,
        secret.expose_secret().as_bytes(),
    ));
    SigningKey::from_bytes(&seed)
}

/// The message signed for the document of `kind` named `name` with content `body`.
fn message(kind: &str, name: &str, body: &[u8]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    for part in [kind.as_bytes(), name.as_bytes(), body] {
        m.extend_from_slice(&(part.len() as u64).to_le_bytes());
        m.extend_from_slice(part);
    }
    m
}

fn sign(key: &SigningKey, kind: &str, name: &str, body: &[u8]) -> String {
    hex::encode(key.sign(&message(kind, name, body)).to_bytes())
}

/// True if `signature` (hex) is `public`'s (hex) signature of the document.
fn verifies(public: &str, signature: &str, kind: &str, name: &str, body: &[u8]) -> bool {
    let key = hex::decode(public)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
    let sig = hex::decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    match (key, sig) {
        (Some(k), Some(s)) => k.verify_strict(&message(kind, name, body), &s).is_ok(),
        _ => false,
    }
}

/// Sets `doc`'s signing key and self-signature from `identity`.
pub(crate) fn sign_account(doc: &mut AccountDoc, identity: &age::x25519::Identity) {
    let key = signing_key_of(identity);
    doc.signing_key = Some(hex::encode(key.verifying_key().to_bytes()));
    // signed_bytes leaves the signature out.
    doc.signature = Some(sign(&key, "account", &doc.name, &doc.signed_bytes()));
}

impl Store {
    /// The account document of `name` with its self-signature checked (when it has one) and
    /// its signing key pinned: a document whose signature fails, or that lost or changed the
    /// signing key this client saw, is refused.
    pub(crate) fn verified_account(&self, name: &str) -> Result<AccountDoc> {
        let doc = self.account(name)?;
        let what = || self.describe(&Kind::Account.key(name));
        match (&doc.signing_key, &doc.signature) {
            (Some(k), Some(s)) => {
                if !verifies(k, s, "account", &doc.name, &doc.signed_bytes()) {
                    return Err(self.tampered(
                        "account",
                        name,
                        &format!("its signature does not match its content ({})", what()),
                    ));
                }
                self.pin_signer(name, Some(k))?;
            }
            (None, None) => self.pin_signer(name, None)?,
            _ => {
                return Err(self.tampered(
                    "account",
                    name,
                    &format!("it has a signing key or a signature, not both ({})", what()),
                ));
            }
        }
        Ok(doc)
    }

    /// Signs image `doc` as its owner `access` (its launch permissions are then valid).
    pub(crate) fn sign_image(&self, access: &Access, doc: &mut ImageDoc) -> Result<()> {
        if doc.owner != access.account {
            return Err(StoreError::Other(format!(
                "internal error: image {} is signed by '{}', not its owner '{}'",
                doc.id, access.account, doc.owner
            )));
        }
        let key = signing_key_of(&access.load_identity()?);
        doc.owner_signature = Some(sign(
            &key,
            "image",
            &doc.id.to_string(),
            &doc.signed_bytes(),
        ));
        Ok(())
    }

    /// Signs key document `doc` as `access`, the account making this version of it.
    pub(crate) fn sign_key_doc(&self, access: &Access, doc: &mut KeyDoc) -> Result<()> {
        let key = signing_key_of(&access.load_identity()?);
        doc.signed_by = Some(access.account.clone());
        doc.signature = Some(sign(&key, "key", &doc.id.to_string(), &doc.signed_bytes()));
        Ok(())
    }

    /// Checks that the account key document `doc` names signed it as it is. An unsigned one
    /// is accepted only in a store not yet authenticated.
    pub(crate) fn verify_key_signature(&self, doc: &KeyDoc) -> Result<()> {
        let name = doc.id.to_string();
        let (Some(by), Some(sig)) = (&doc.signed_by, &doc.signature) else {
            if self.config().authenticated() || doc.signature.is_some() {
                return Err(self.tampered(
                    "key",
                    &name,
                    "no account signed this version of its document",
                ));
            }
            return Ok(());
        };
        let signer = self.verified_account(by)?;
        let ok = signer
            .signing_key
            .as_ref()
            .is_some_and(|k| verifies(k, sig, "key", &name, &doc.signed_bytes()));
        if !ok {
            return Err(self.tampered(
                "key",
                &name,
                &format!("account '{by}' did not sign its document as it is"),
            ));
        }
        Ok(())
    }

    /// Checks that image `doc`'s owner signed it as it is: its launch permissions are the
    /// owner's. An unsigned image is accepted only in a store not yet authenticated.
    pub(crate) fn verify_image_signature(&self, doc: &ImageDoc) -> Result<()> {
        let name = doc.id.to_string();
        let Some(sig) = &doc.owner_signature else {
            if self.config().authenticated() {
                return Err(self.tampered(
                    "image",
                    &name,
                    &format!(
                        "its owner '{}' did not sign it, so its launch permissions are nobody's",
                        doc.owner
                    ),
                ));
            }
            return Ok(());
        };
        let owner = self.verified_account(&doc.owner)?;
        let Some(public) = &owner.signing_key else {
            return Err(self.tampered(
                "image",
                &name,
                &format!(
                    "it is signed, but its owner '{}' has no signing key",
                    doc.owner
                ),
            ));
        };
        if !verifies(public, sig, "image", &name, &doc.signed_bytes()) {
            return Err(self.tampered(
                "image",
                &name,
                &format!(
                    "its owner '{}' did not sign it as it is (its launch permissions or \
                     devices were changed)",
                    doc.owner
                ),
            ));
        }
        Ok(())
    }
}
