//! Authenticated documents: the documents that say what a snapshot holds, what an image maps,
//! which file a volume reads, what a policy keeps and who holds a key carry a MAC under a data
//! key. This module says what the MAC covers; computing it (a keyed BLAKE3 under a subkey of
//! the data key) is the codec's job, checking it on every read the store's.

use serde::Serialize;

use crate::docs::{Document, KeyDoc, SnapshotDoc, VolumeDoc};
use crate::error::DocError;
use crate::id::KeyId;
use crate::image::ImageDoc;
use crate::policy::PolicyDoc;

/// A document that carries a MAC under the data key [`Sealed::sealing_key`] names.
pub trait Sealed: Document + Clone + Serialize {
    /// The key whose MAC the document carries; none in a plain store.
    fn sealing_key(&self) -> Option<KeyId>;
    /// The name the document is stored under (the MAC binds it: a document cannot be copied
    /// to another name).
    fn seal_name(&self) -> String;
    /// Its MAC in hex, if it carries one.
    fn mac(&self) -> Option<&str>;
    /// Sets (or clears) the MAC.
    fn set_mac(&mut self, mac: Option<String>);

    /// The bytes the MAC covers: the document's compact JSON without its `mac`. Documents are
    /// parsed with every field known (unknown fields are refused) and maps are ordered, so the
    /// bytes a reader computes from what it parsed are those the writer computed.
    fn sealed_bytes(&self) -> Vec<u8> {
        let mut plain = self.clone();
        plain.set_mac(None);
        serde_json::to_vec(&plain).expect("documents always serialize")
    }
}

/// Checks a `mac` field: 64 hex digits.
pub(crate) fn validate_mac(doc: &'static str, mac: Option<&str>) -> Result<(), DocError> {
    match mac {
        Some(m) if m.len() != 64 || !m.bytes().all(|b| b.is_ascii_hexdigit()) => Err(
            DocError::invalid(doc, "mac", "is not a MAC (64 hex digits)"),
        ),
        _ => Ok(()),
    }
}

macro_rules! sealed {
    ($ty:ty, |$d:ident| key: $key:expr, name: $name:expr) => {
        impl Sealed for $ty {
            fn sealing_key(&self) -> Option<KeyId> {
                let $d = self;
                $key
            }
            fn seal_name(&self) -> String {
                let $d = self;
                $name
            }
            fn mac(&self) -> Option<&str> {
                self.mac.as_deref()
            }
            fn set_mac(&mut self, mac: Option<String>) {
                self.mac = mac;
            }
        }
    };
}

sealed!(SnapshotDoc, |d| key: d.key, name: d.id.to_string());
sealed!(ImageDoc, |d| key: d.key, name: d.id.to_string());
sealed!(VolumeDoc, |d| key: d.key, name: d.name.clone());
sealed!(PolicyDoc, |d| key: d.key, name: d.name.clone());
sealed!(KeyDoc, |d| key: Some(d.id), name: d.id.to_string());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_covers_everything_but_itself() {
        let mut s = crate::docs::tests::sample_snapshot();
        let before = s.sealed_bytes();
        s.set_mac(Some("ab".repeat(32)));
        assert_eq!(s.sealed_bytes(), before);
        s.size += 1;
        assert_ne!(s.sealed_bytes(), before);
        let read = SnapshotDoc::from_json(&s.to_json()).unwrap();
        assert_eq!(read.sealed_bytes(), s.sealed_bytes());
        s.mac = Some("not hex".into());
        assert!(SnapshotDoc::from_json(&s.to_json()).is_err());
    }

    #[test]
    fn the_dirty_bitmap_is_covered_and_absent_from_older_documents() {
        let mut s = crate::docs::tests::sample_snapshot();
        let old = s.sealed_bytes();
        assert!(!String::from_utf8_lossy(&old).contains("dirty_bitmap"));
        s.dirty_bitmap = Some("b0".into());
        let with = s.sealed_bytes();
        assert_ne!(with, old);
        let read = SnapshotDoc::from_json(&s.to_json()).unwrap();
        assert_eq!(read.sealed_bytes(), with);
        s.dirty_bitmap = Some("a\nb".into());
        assert!(SnapshotDoc::from_json(&s.to_json()).is_err());
    }
}
