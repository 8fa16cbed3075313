//! Volumes: names for image files and block devices, with the tags policies select them by.

use std::collections::BTreeMap;
use std::path::Path;

use blocksnap_manifest::{Document, VolumeDoc};

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::repo::Store;
use crate::repo::layout::Kind;

impl Store {
    /// Registers a volume: a name for an image file or block device, with tags.
    pub fn add_volume(
        &self,
        access: &Access,
        name: &str,
        path: &Path,
        tags: BTreeMap<String, String>,
    ) -> Result<VolumeDoc> {
        self.require_writable("volume add")?;
        // The path a snapshot would record (a block device keeps its stable name), checked
        // like a snapshot's source.
        let id = crate::snapshot::source::Source::open(path, None)
            .map_err(|e| e.context(&format!("volume '{name}'")))?
            .id;
        let key = self.document_key()?;
        let mut doc = VolumeDoc {
            format: VolumeDoc::FORMAT.into(),
            name: name.into(),
            path: id.path,
            tags,
            created: fsutil::now_rfc3339(),
            host: Some(id.host),
            key,
            mac: None,
        };
        doc.validate()
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        let codec = self.codec(access, key)?;
        self.seal(&codec, &mut doc)?;
        self.create_doc(Kind::Volume, name, &doc)?;
        Ok(doc)
    }

    /// Replaces a registered volume's document (its source moved).
    /// Replaces a registered volume's document (its source moved), sealed under the acting
    /// account's key.
    pub(crate) fn rewrite_volume(&self, access: &Access, doc: &VolumeDoc) -> Result<()> {
        let key = self.document_key()?;
        let codec = self.codec(access, key)?;
        self.update_doc::<VolumeDoc>(Kind::Volume, &doc.name, |d| {
            d.clone_from(doc);
            d.key = key;
            self.seal(&codec, d)
        })?;
        Ok(())
    }

    /// A registered volume, if `name` is one, its document verified: a snapshot reads the file
    /// it names, so a path changed by someone without the key is refused, never read.
    pub(crate) fn verified_volume(&self, access: &Access, name: &str) -> Result<Option<VolumeDoc>> {
        let Some(doc) = self.volume(name)? else {
            return Ok(None);
        };
        self.verify_with_access(access, &doc)?;
        Ok(Some(doc))
    }

    /// Every registered volume, by name.
    pub fn list_volumes(&self) -> Result<Vec<VolumeDoc>> {
        self.list_docs(Kind::Volume)
    }

    /// A registered volume, if `name` is one.
    pub fn volume(&self, name: &str) -> Result<Option<VolumeDoc>> {
        if blocksnap_manifest::validate_name("volume", "name", name).is_err() {
            return Ok(None);
        }
        self.doc(Kind::Volume, name)
    }
}
