//! The layout of a store: every kind of object, its prefix and its naming rule. No other file
//! names a folder of the store.
//!
//! ```text
//! config                     the store's configuration (written once, last, by init)
//! accounts/NAME.json         an account's public part
//! keys/KEY-ID.json           a data key's grants
//! packs/XX/PACK-ID           an immutable pack (XX: the id's first two hex digits)
//! packs/XX/PACK-ID.damaged   a damaged pack set aside by `repair packs`
//! snapshots/SNAP-ID.json     a snapshot document
//! heads/VOLUME.json          the newest snapshot of a volume and its sequence number
//! images/IMG-ID.json         an image document
//! volumes/NAME.json          a registered volume
//! policies/NAME.json         a lifecycle policy
//! trash/ID.json              a tombstone of a deleted snapshot or image
//! locks/HOST-PID-RAND.json   a lock object of a running command
//! condemned/TIME-RAND.json   packs a prune condemned, deleted by a later prune after the grace
//! quarantine/DIR/NAME        a damaged document moved aside by `repair documents`
//! ```

use blocksnap_manifest::PackId;

/// The key of the store's configuration, written once, last, by `init`.
pub(crate) const CONFIG: &str = "config";

/// A kind of object in a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Account,
    Key,
    Pack,
    Snapshot,
    Head,
    Image,
    Volume,
    Policy,
    Trash,
    Lock,
    Condemned,
    Quarantine,
}

impl Kind {
    /// The kinds that are JSON documents, in the order `check` and recovery go through them.
    pub const DOCUMENTS: [Kind; 8] = [
        Kind::Account,
        Kind::Key,
        Kind::Snapshot,
        Kind::Trash,
        Kind::Volume,
        Kind::Policy,
        Kind::Image,
        Kind::Head,
    ];

    /// The folder of this kind.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Account => "accounts",
            Kind::Key => "keys",
            Kind::Pack => "packs",
            Kind::Snapshot => "snapshots",
            Kind::Head => "heads",
            Kind::Image => "images",
            Kind::Volume => "volumes",
            Kind::Policy => "policies",
            Kind::Trash => "trash",
            Kind::Lock => "locks",
            Kind::Condemned => "condemned",
            Kind::Quarantine => "quarantine",
        }
    }

    /// The prefix every key of this kind starts with (`snapshots/`).
    pub fn prefix(self) -> String {
        format!("{}/", self.dir())
    }

    /// What a person calls one (`snapshot`, `key`).
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Key => "key",
            Kind::Pack => "pack",
            Kind::Snapshot => "snapshot",
            Kind::Head => "volume head",
            Kind::Image => "image",
            Kind::Volume => "volume",
            Kind::Policy => "policy",
            Kind::Trash => "trash entry",
            Kind::Lock => "lock object",
            Kind::Condemned => "condemnation record",
            Kind::Quarantine => "quarantined document",
        }
    }

    /// The key of the object named `name` (for a pack, its hex id).
    pub fn key(self, name: &str) -> String {
        match self {
            Kind::Pack => format!("packs/{}/{name}", name.get(..2).unwrap_or("00")),
            Kind::Quarantine => format!("quarantine/{name}"),
            k => format!("{}/{name}.json", k.dir()),
        }
    }

    /// The name of the object at `key`, if `key` is one of this kind (the inverse of
    /// [`Kind::key`]); temporaries and foreign files are not.
    pub fn name_of(self, key: &str) -> Option<&str> {
        match self {
            Kind::Pack => {
                let rest = key.strip_prefix("packs/")?;
                let (dir, name) = rest.split_once('/')?;
                (dir.len() == 2 && name.starts_with(dir) && !name.contains('/')).then_some(name)
            }
            Kind::Quarantine => key.strip_prefix("quarantine/"),
            k => {
                let rest = key.strip_prefix(k.dir())?.strip_prefix('/')?;
                let name = rest.strip_suffix(".json")?;
                (!name.is_empty() && !name.contains('/')).then_some(name)
            }
        }
    }
}

/// The key of pack `id`.
pub(crate) fn pack_key(id: &PackId) -> String {
    Kind::Pack.key(&id.to_string())
}

/// The key of pack `id`'s index object (its trailer, copied out: see docs/FORMAT.md), beside
/// it so that one listing of `packs/` finds both.
pub(crate) fn index_object_key(id: &PackId) -> String {
    format!("{}{INDEX_OBJECT_SUFFIX}", pack_key(id))
}

/// What ends the name of an index object.
pub(crate) const INDEX_OBJECT_SUFFIX: &str = ".idx";

/// The key a damaged pack is set aside under by `repair packs`.
pub(crate) fn damaged_pack_key(id: &PackId) -> String {
    format!("{}.damaged", pack_key(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names_are_inverse() {
        for kind in Kind::DOCUMENTS
            .into_iter()
            .chain([Kind::Lock, Kind::Condemned])
        {
            let key = kind.key("x-1");
            assert!(key.starts_with(&kind.prefix()), "{key}");
            assert_eq!(kind.name_of(&key), Some("x-1"), "{key}");
            assert_eq!(kind.name_of(&format!("{}.tmp-x", kind.prefix())), None);
            blocksnap_backend::validate_key(&key).unwrap();
        }
        let id = PackId([0xab; 32]);
        let key = pack_key(&id);
        assert_eq!(&key[..9], "packs/ab/");
        assert_eq!(Kind::Pack.name_of(&key), Some(&*id.to_string()));
        assert_eq!(
            Kind::Pack.name_of(&damaged_pack_key(&id)),
            None.or(Some(&*format!("{id}.damaged")))
        );
        assert_eq!(Kind::Pack.name_of("packs/ab"), None);
        assert_eq!(Kind::Snapshot.name_of("snapshots/a/b.json"), None);
        assert_eq!(Kind::Snapshot.name_of("snapshotsx/a.json"), None);
    }
}
