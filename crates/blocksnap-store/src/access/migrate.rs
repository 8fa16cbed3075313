//! `blocksnap migrate`: a store made before documents were authenticated (config format v1)
//! becomes one whose every document carries a MAC (v2). The acting account seals every
//! snapshot, image, volume, policy and key document that has no MAC yet under its key, then
//! the config's format goes up; from then on a document without a MAC is refused. Documents
//! under a key the account does not hold are listed, and the format stays until an account
//! holding them runs it too. The acting account also signs its own account document and the
//! images it owns (their launch permissions); another owner's unsigned image waits for them.

use blocksnap_manifest::{
    AccountDoc, ConfigDoc, Document, ImageDoc, KeyDoc, PolicyDoc, Sealed, SnapshotDoc, VolumeDoc,
};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::repo::layout::Kind;
use crate::repo::{CONFIG, Store};

/// What `migrate` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MigrateReport {
    /// The config's format before.
    pub from: String,
    /// The config's format after.
    pub to: String,
    /// Documents sealed now.
    pub sealed: u64,
    /// Documents that carried a MAC already.
    pub already: u64,
    /// Documents left unsealed (under a key the account holds no grant on), by path.
    pub left: Vec<String>,
}

impl Store {
    /// Seals every document the acting account can and, if none is left, raises the config's
    /// format to the authenticated one. Running it again is harmless.
    pub fn migrate(&self, access: &Access, progress: &dyn Progress) -> Result<MigrateReport> {
        self.require_writable("migrate")?;
        let _lock = self.lock_exclusive("migrate", progress)?;
        let mut report = MigrateReport {
            from: self.config().format.clone(),
            ..MigrateReport::default()
        };
        // The acting account signs its own account document and its own images; images of
        // other owners wait for them.
        self.sign_own_account(access, &mut report)?;
        if self.config().encryption {
            self.migrate_keys(access, &mut report)?;
            self.seal_all::<SnapshotDoc>(access, Kind::Snapshot, &mut report)?;
            self.seal_all::<VolumeDoc>(access, Kind::Volume, &mut report)?;
            self.seal_all::<PolicyDoc>(access, Kind::Policy, &mut report)?;
        }
        self.migrate_images(access, &mut report)?;
        if report.left.is_empty() && !self.config().authenticated() {
            let (bytes, version) = self
                .backend()
                .get_versioned(CONFIG)
                .map_err(self.object_error(CONFIG))?;
            let mut config =
                ConfigDoc::from_json(&bytes).map_err(|e| self.damaged_doc(CONFIG, &e))?;
            config.format = ConfigDoc::FORMAT.into();
            self.backend()
                .replace(CONFIG, &config.to_json(), Some(&version))
                .map_err(self.object_error(CONFIG))?;
        }
        report.to = if report.left.is_empty() {
            ConfigDoc::FORMAT.into()
        } else {
            report.from.clone()
        };
        self.check_trust()?;
        Ok(report)
    }

    /// Signs (as their owner) and seals the images that lack it; another owner's unsigned
    /// image is left for that owner.
    fn migrate_images(&self, access: &Access, report: &mut MigrateReport) -> Result<()> {
        let encrypted = self.config().encryption;
        for (name, doc) in self.docs::<ImageDoc>(Kind::Image)? {
            let unsigned = doc.owner_signature.is_none();
            if !unsigned && (doc.mac.is_some() || !encrypted) {
                report.already += 1;
                continue;
            }
            if unsigned && doc.owner != access.account {
                report.left.push(self.describe(&Kind::Image.key(&name)));
                continue;
            }
            self.verify_unkeyed(&doc)?;
            let codec = match self.codec(access, doc.key) {
                Ok(c) => c,
                Err(e) if e.kind() == crate::ErrorKind::Denied => {
                    report.left.push(self.describe(&Kind::Image.key(&name)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Only what the MAC says is the owner's is signed: an image changed by someone
            // without the key is not vouched for now.
            self.verify(&codec, &doc)?;
            self.update_doc::<ImageDoc>(Kind::Image, &name, |d| {
                if d.owner_signature.is_none() {
                    self.sign_image(access, d)?;
                }
                self.seal(&codec, d)
            })?;
            report.sealed += 1;
        }
        Ok(())
    }

    /// Signs (as the acting account, which vouches for them) and seals the key documents it
    /// holds a grant on that lack either.
    fn migrate_keys(&self, access: &Access, report: &mut MigrateReport) -> Result<()> {
        for (name, doc) in self.docs::<KeyDoc>(Kind::Key)? {
            if doc.signature.is_some() && doc.mac.is_some() {
                report.already += 1;
                continue;
            }
            let codec = match self.codec(access, Some(doc.id)) {
                Ok(c) => c,
                Err(e) if e.kind() == crate::ErrorKind::Denied => {
                    report.left.push(self.describe(&Kind::Key.key(&name)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.update_doc::<KeyDoc>(Kind::Key, &name, |d| {
                if d.signature.is_none() {
                    self.sign_key_doc(access, d)?;
                }
                self.seal(&codec, d)
            })?;
            report.sealed += 1;
        }
        Ok(())
    }

    /// Signs the acting account's document if it is not signed yet.
    fn sign_own_account(&self, access: &Access, report: &mut MigrateReport) -> Result<()> {
        let doc = self.account(&access.account)?;
        if doc.signature.is_some() {
            report.already += 1;
            return Ok(());
        }
        access.prove(self)?;
        let identity = access.load_identity()?;
        self.update_doc::<AccountDoc>(Kind::Account, &access.account, |d| {
            if d.signature.is_none() {
                super::signing::sign_account(d, &identity);
            }
            Ok(())
        })?;
        report.sealed += 1;
        Ok(())
    }

    /// Seals every document of `kind` that has no MAC and whose key `access` holds.
    fn seal_all<D: Sealed>(
        &self,
        access: &Access,
        kind: Kind,
        report: &mut MigrateReport,
    ) -> Result<()> {
        for (name, doc) in self.docs::<D>(kind)? {
            if doc.mac().is_some() {
                report.already += 1;
                continue;
            }
            self.verify_unkeyed(&doc)?;
            let codec = match self.codec(access, doc.sealing_key()) {
                Ok(c) => c,
                Err(e) if e.kind() == crate::ErrorKind::Denied => {
                    report.left.push(self.describe(&kind.key(&name)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.update_doc::<D>(kind, &name, |d| {
                if d.mac().is_none() {
                    self.seal(&codec, d)?;
                }
                Ok(())
            })?
            .ok_or_else(|| StoreError::Conflict {
                kind: kind.noun(),
                name: name.clone(),
            })?;
            report.sealed += 1;
        }
        Ok(())
    }
}
