//! Sealing and verifying documents: the one place a document's MAC is made and checked.
//!
//! Snapshot, image, volume, policy and key documents carry a MAC under a data key (see
//! [`blocksnap_manifest::Sealed`]). Whatever reads one to act on it — restore, rebuild, diff,
//! serve, copy, prune, a snapshot reading its volume's path — gets its codec through
//! [`Store::snapshot_codec`], [`Store::image_codec`] or [`Store::verify`], which refuse a
//! document whose MAC does not match, one without a MAC in an authenticated store, and one that
//! names no key in an encrypted store (a plaintext document planted beside encrypted ones).

use blocksnap_manifest::{ImageDoc, KeyId, Sealed, SnapshotDoc};
use blocksnap_pack::ChunkCodec;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::repo::Store;

/// The docs' sentence on a refused document.
const TAMPERED_HINT: &str = "Someone who can write to the store may have changed it; nothing \
                             was read or written on its word. `blocksnap check` lists every such \
                             document; compare them with a backup of the store.";

impl Store {
    /// Sets the MAC of `doc` under `codec` (its sealing key's codec). In a plain store there is
    /// no key and no MAC.
    pub(crate) fn seal<D: Sealed>(&self, codec: &ChunkCodec, doc: &mut D) -> Result<()> {
        if codec.key_id() != doc.sealing_key() {
            return Err(StoreError::Other(format!(
                "internal error: a {} is sealed under key {:?} but names key {:?}",
                D::KIND,
                codec.key_id(),
                doc.sealing_key()
            )));
        }
        doc.set_mac(None);
        let mac = codec.document_mac(D::KIND, &doc.seal_name(), &doc.sealed_bytes());
        doc.set_mac(mac.map(hex::encode));
        Ok(())
    }

    /// Checks the MAC of `doc` under `codec` (its sealing key's codec).
    pub(crate) fn verify<D: Sealed>(&self, codec: &ChunkCodec, doc: &D) -> Result<()> {
        self.verify_unkeyed(doc)?;
        let name = doc.seal_name();
        if codec.key_id() != doc.sealing_key() {
            return Err(StoreError::Other(format!(
                "internal error: {} {name} is checked under key {:?} but names key {:?}",
                D::KIND,
                codec.key_id(),
                doc.sealing_key()
            )));
        }
        let Some(expected) = codec.document_mac(D::KIND, &name, &doc.sealed_bytes()) else {
            return Ok(()); // a plain store: nothing to check
        };
        match doc.mac() {
            None if !self.config().authenticated() => Ok(()),
            None => Err(self.tampered(
                D::KIND,
                &name,
                "it carries no MAC, in a store whose documents all do",
            )),
            Some(mac) => {
                let given = hex::decode(mac)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                // blake3::Hash compares in constant time.
                if given.map(blake3::Hash::from) == Some(blake3::Hash::from(expected)) {
                    Ok(())
                } else {
                    Err(self.tampered(
                        D::KIND,
                        &name,
                        "its MAC does not match its content: it was changed by someone without \
                         its key",
                    ))
                }
            }
        }
    }

    /// The checks that need no key: a document of an encrypted store must name a key.
    pub(crate) fn verify_unkeyed<D: Sealed>(&self, doc: &D) -> Result<()> {
        if self.config().encryption && doc.sealing_key().is_none() {
            return Err(self.tampered(
                D::KIND,
                &doc.seal_name(),
                "it names no key, in a store whose data is all encrypted (a plaintext document \
                 planted beside the encrypted ones)",
            ));
        }
        Ok(())
    }

    /// The error for document `name` of `kind`, refused for `why`.
    pub(crate) fn tampered(&self, kind: &str, name: &str, why: &str) -> StoreError {
        StoreError::Tampered(format!(
            "{kind} {name} in store {} is refused: {why}. {TAMPERED_HINT}",
            self.place()
        ))
    }

    /// The codec of `doc`'s key as `access` holds it, `doc` verified under it.
    fn sealed_codec<D: Sealed>(&self, access: &Access, doc: &D) -> Result<ChunkCodec> {
        self.verify_unkeyed(doc)?;
        let codec = self.codec(access, doc.sealing_key())?;
        self.verify(&codec, doc)?;
        Ok(codec)
    }

    /// The codec of snapshot `doc`, its document verified.
    pub fn snapshot_codec(&self, access: &Access, doc: &SnapshotDoc) -> Result<ChunkCodec> {
        self.sealed_codec(access, doc)
    }

    /// The codec of image `doc`, its document verified.
    pub fn image_codec(&self, access: &Access, doc: &ImageDoc) -> Result<ChunkCodec> {
        self.sealed_codec(access, doc)
    }

    /// Verifies `doc` under its own key as `access` holds it: for documents whose key is not
    /// the one the command works with (a volume's, a policy's).
    pub(crate) fn verify_with_access<D: Sealed>(&self, access: &Access, doc: &D) -> Result<()> {
        self.sealed_codec(access, doc).map(drop)
    }

    /// The key that volume and policy documents are sealed under: the store's `default` key as
    /// this client pinned it (none in a plain store).
    pub(crate) fn document_key(&self) -> Result<Option<KeyId>> {
        if !self.config().encryption {
            return Ok(None);
        }
        Ok(Some(self.resolve_key_for_use("default")?.id))
    }
}
