//! `blocksnap migrate`: a store made before documents were authenticated (config format v1)
//! becomes one whose every document carries a MAC (v2). The acting account seals every
//! snapshot, image, volume, policy and key document that has no MAC yet under its key, then
//! the config's format goes up; from then on a document without a MAC is refused. Documents
//! under a key the account does not hold are listed, and the format stays until an account
//! holding them runs it too.

use blocksnap_manifest::{
    ConfigDoc, Document, ImageDoc, KeyDoc, PolicyDoc, Sealed, SnapshotDoc, VolumeDoc,
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
        if self.config().encryption {
            self.seal_all::<KeyDoc>(access, Kind::Key, &mut report)?;
            self.seal_all::<SnapshotDoc>(access, Kind::Snapshot, &mut report)?;
            self.seal_all::<ImageDoc>(access, Kind::Image, &mut report)?;
            self.seal_all::<VolumeDoc>(access, Kind::Volume, &mut report)?;
            self.seal_all::<PolicyDoc>(access, Kind::Policy, &mut report)?;
        }
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
