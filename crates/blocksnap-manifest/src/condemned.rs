//! Condemnation records: `condemned/TIME-RANDOM.json`, written by `prune` for the packs it will
//! delete, so that deleting is two-phase. A pack named here is deleted only by a later prune, once
//! the record is older than the grace (longer than a lock's expiry) and the pack still holds no
//! chunk a snapshot needs; meanwhile a snapshot never deduplicates against a chunk in it (it
//! stores the chunk again). See docs/ARCHITECTURE.md, "Locks and prune".

use serde::{Deserialize, Serialize};

use crate::docs::{Document, validate_time};
use crate::error::DocError;
use crate::id::PackId;
use crate::lock::validate_host;

/// Most packs one record names (a prune run writes several records when it condemns more).
pub const MAX_CONDEMNED_PACKS: usize = 100_000;

/// `condemned/TIME-RANDOM.json`: packs one prune run condemned, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondemnedDoc {
    /// `blocksnap.condemned/v1`.
    pub format: String,
    /// When the packs were condemned (RFC 3339, UTC, the prune host's clock).
    pub condemned: String,
    /// The host that ran the prune.
    pub host: String,
    /// The packs, each to be deleted by a prune run after the grace.
    pub packs: Vec<PackId>,
}

impl Document for CondemnedDoc {
    const KIND: &'static str = "condemnation record";
    const FORMAT: &'static str = "blocksnap.condemned/v1";
    fn validate(&self) -> Result<(), DocError> {
        validate_time(Self::KIND, "condemned", &self.condemned)?;
        validate_host(&self.host)
            .map_err(|_| DocError::invalid(Self::KIND, "host", "is not a valid host name"))?;
        if self.packs.is_empty() || self.packs.len() > MAX_CONDEMNED_PACKS {
            return Err(DocError::invalid(
                Self::KIND,
                "packs",
                format!("must name 1 to {MAX_CONDEMNED_PACKS} packs"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condemned_round_trips_and_rejects_bad_fields() {
        let d = CondemnedDoc {
            format: CondemnedDoc::FORMAT.into(),
            condemned: "2026-11-23T19:30:24.000Z".into(),
            host: "host-a".into(),
            packs: vec![PackId([7; 32])],
        };
        assert_eq!(CondemnedDoc::from_json(&d.to_json()).unwrap(), d);
        let mut e = d.clone();
        e.packs.clear();
        assert!(
            CondemnedDoc::from_json(&e.to_json())
                .unwrap_err()
                .to_string()
                .contains("'packs'")
        );
        let mut e = d.clone();
        e.condemned = "later".into();
        assert!(CondemnedDoc::from_json(&e.to_json()).is_err());
        let mut e = d;
        e.host = "../x".into();
        assert!(CondemnedDoc::from_json(&e.to_json()).is_err());
        assert!(CondemnedDoc::from_json(b"\xff").is_err());
    }
}
