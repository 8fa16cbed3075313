//! Tags as users give them: `K=V` pairs, turned into a document's tag map.

use std::collections::BTreeMap;

use blocksnap_manifest::SnapshotDoc;

use crate::error::{Result, StoreError};
use crate::repo::Store;

/// The tags of a new snapshot, volume or image from `K=V` pairs. A document holds one value
/// per key, so a key given twice is a usage error naming it (never a silent choice of one).
pub fn tag_map(pairs: &[(String, String)]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if let Some(first) = map.insert(k.clone(), v.clone()) {
            return Err(StoreError::Usage(format!(
                "tag key '{k}' is given twice ({k}={first} and {k}={v}); a tag key holds one \
                 value: give each key once"
            )));
        }
    }
    Ok(map)
}

impl Store {
    /// Snapshots (oldest first) of `volume` (any if `None`) carrying every `K=V` of `filters`:
    /// repeated filters all apply, so two values of one key match nothing.
    pub fn snapshots_with_tags(
        &self,
        volume: Option<&str>,
        filters: &[(String, String)],
    ) -> Result<Vec<SnapshotDoc>> {
        let mut v = self.find_snapshots(volume, &BTreeMap::new())?;
        v.retain(|s| has_all_tags(&s.tags, filters));
        Ok(v)
    }
}

/// True if `tags` carries every `K=V` of `filters` (all of them: two values of one key match
/// nothing, since a document holds one value per key).
fn has_all_tags(tags: &BTreeMap<String, String>, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(k, v)| tags.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn one_value_per_key_and_filters_need_every_pair() {
        let m = tag_map(&pairs(&[("env", "prod"), ("tier", "db")])).unwrap();
        assert_eq!(m.len(), 2);
        for twice in [
            &[("env", "prod"), ("env", "dev")],
            &[("env", "prod"), ("env", "prod")],
        ] {
            let e = tag_map(&pairs(twice)).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Usage);
            assert!(
                e.to_string().contains("tag key 'env' is given twice"),
                "{e}"
            );
        }
        assert!(has_all_tags(&m, &pairs(&[("env", "prod"), ("tier", "db")])));
        assert!(!has_all_tags(
            &m,
            &pairs(&[("env", "prod"), ("env", "dev")])
        ));
        assert!(!has_all_tags(
            &m,
            &pairs(&[("env", "prod"), ("tier", "web")])
        ));
        assert!(has_all_tags(&m, &[]));
    }
}
