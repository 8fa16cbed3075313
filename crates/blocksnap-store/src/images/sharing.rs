//! Sharing an image and taking it away: `image share|unshare` change its launch permissions,
//! `image deregister` moves it to the trash. All are for the owner only, who proves itself with
//! its identity.

use blocksnap_manifest::{ImageDoc, SnapshotId};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::lifecycle::trash::TrashEntry;
use crate::repo::Store;
use crate::repo::layout::Kind;

/// What `image deregister` did.
#[derive(Clone, Debug, Serialize)]
pub struct DeregisterReport {
    /// The image, now in the trash.
    pub image: TrashEntry,
    /// Its snapshots moved to the trash (`--delete-snapshots`).
    pub snapshots_deleted: Vec<TrashEntry>,
    /// Its snapshots kept because another image maps them.
    pub snapshots_kept: Vec<SnapshotId>,
}

/// Who a sharing change is about.
#[derive(Clone, Debug)]
pub enum Audience {
    /// Every account of the store.
    Public,
    /// One account.
    Account(String),
}

impl Store {
    /// Gives an account (or every account) launch permission. Owner only.
    pub fn share_image(&self, access: &Access, image: &str, to: &Audience) -> Result<ImageDoc> {
        self.change_sharing(access, image, to, true)
    }

    /// Takes launch permission away from an account (or from the public). Owner only.
    pub fn unshare_image(&self, access: &Access, image: &str, to: &Audience) -> Result<ImageDoc> {
        self.change_sharing(access, image, to, false)
    }

    fn change_sharing(
        &self,
        access: &Access,
        image: &str,
        to: &Audience,
        share: bool,
    ) -> Result<ImageDoc> {
        self.require_writable(if share {
            "image share"
        } else {
            "image unshare"
        })?;
        let doc = self.resolve_image(image)?;
        self.require_owner(access, &doc, if share { "share" } else { "unshare" })?;
        if let Audience::Account(name) = to {
            self.account(name)?;
        }
        let codec = self.image_codec(access, &doc)?;
        // A compare-and-swap: a share by another process meanwhile is kept.
        self.update_doc::<ImageDoc>(Kind::Image, &doc.id.to_string(), |doc| {
            self.verify(&codec, doc)?;
            let perms = &mut doc.launch_permissions;
            match to {
                Audience::Public => perms.public = share,
                Audience::Account(name) => {
                    perms.accounts.retain(|a| a != name);
                    if share {
                        perms.accounts.push(name.clone());
                        perms.accounts.sort();
                    }
                }
            }
            self.seal(&codec, doc)
        })?
        .ok_or_else(|| StoreError::NotFound {
            kind: "image",
            name: image.into(),
            hint: " (it was deregistered meanwhile)".into(),
        })
    }

    fn require_owner(&self, access: &Access, doc: &ImageDoc, what: &str) -> Result<()> {
        if doc.owner != access.account {
            return Err(StoreError::Denied(format!(
                "only the owner '{}' of image '{}' may {what} it, not '{}'",
                doc.owner, doc.name, access.account
            )));
        }
        // Prove the acting account is who it says: its identity must open its own grants.
        access.prove(self)
    }

    /// Removes an image (to the trash, restorable like a snapshot). With `delete_snapshots`
    /// its snapshots go to the trash too, except those another live image still maps.
    pub fn deregister_image(
        &self,
        access: &Access,
        image: &str,
        delete_snapshots: bool,
    ) -> Result<DeregisterReport> {
        self.require_writable("image deregister")?;
        let doc = self.resolve_image(image)?;
        self.require_owner(access, &doc, "deregister")?;
        let tomb = self.tombstone(access, None, Some(doc.clone()))?;
        self.delete_object(&Kind::Image.key(&doc.id.to_string()))?;
        let mut report = DeregisterReport {
            image: crate::lifecycle::trash::entry(&tomb),
            snapshots_deleted: Vec::new(),
            snapshots_kept: Vec::new(),
        };
        if delete_snapshots {
            for v in &doc.volumes {
                if !self.images_using(v.snapshot)?.is_empty() {
                    report.snapshots_kept.push(v.snapshot);
                    continue;
                }
                let Some(s) = self.snapshot_doc(v.snapshot)? else {
                    continue;
                };
                report
                    .snapshots_deleted
                    .push(self.trash_snapshot(access, s)?);
            }
        }
        Ok(report)
    }
}
