//! One rule for naming an object on the command line, for snapshots, images, keys and accounts:
//! its full id, its name (images, keys and accounts have one), or a unique prefix of its id,
//! with or without the id's type prefix (`snap-0f3a`, `0f3a`). Names are matched whole only: a
//! shortened name could pick another object than meant. A prefix that matches several objects
//! is an error listing them all.

use crate::error::{Result, StoreError};

/// Finds the one item of `items` that `text` names. `id` gives an item's id (with its type
/// prefix, `snap-…`), `name` its name if it has one; `kind` (`snapshot`) and `list` (the
/// command that lists them) word the errors.
pub(crate) fn resolve<'a, T>(
    kind: &'static str,
    list: &str,
    type_prefix: &str,
    text: &str,
    items: &'a [T],
    id: impl Fn(&T) -> Option<String>,
    name: impl Fn(&T) -> Option<&str>,
) -> Result<&'a T> {
    let not_found = || StoreError::NotFound {
        kind,
        name: text.into(),
        hint: format!("; see `{list}`"),
    };
    if text.is_empty() {
        return Err(not_found());
    }
    let ambiguous = |many: &[&T]| StoreError::Ambiguous {
        kind,
        text: text.into(),
        candidates: many
            .iter()
            .map(|i| match (id(i), name(i)) {
                (Some(id), Some(n)) => format!("{id} ({n})"),
                (Some(id), None) => id,
                (None, n) => n.unwrap_or_default().to_string(),
            })
            .collect(),
    };
    if let Some(hit) = items.iter().find(|i| id(i).as_deref() == Some(text)) {
        return Ok(hit);
    }
    // Two objects of one name (a store written by hand, or by someone adding a key named like
    // the owner's) are never resolved by guessing: both are listed.
    let named: Vec<&T> = items.iter().filter(|i| name(i) == Some(text)).collect();
    match named.as_slice() {
        [one] => return Ok(one),
        [] => {}
        many => return Err(ambiguous(many)),
    }
    // An id prefix: the type prefix may be left out, but not all that follows it.
    let want = if type_prefix.is_empty() || text.starts_with(type_prefix) {
        text.to_string()
    } else {
        format!("{type_prefix}{text}")
    };
    if type_prefix.is_empty() || want.len() <= type_prefix.len() {
        return Err(not_found());
    }
    let hits: Vec<&T> = items
        .iter()
        .filter(|i| id(i).is_some_and(|id| id.starts_with(&want)))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found()),
        many => Err(ambiguous(many)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(items: &'a [(String, Option<&'a str>)], text: &str) -> Result<&'a str> {
        resolve(
            "image",
            "blocksnap image list",
            "img-",
            text,
            items,
            |i| Some(i.0.clone()),
            |i| i.1,
        )
        .map(|i| i.0.as_str())
    }

    #[test]
    fn ids_names_and_prefixes_by_one_rule() {
        let items = vec![
            ("img-0f3a000000000001".to_string(), Some("web")),
            ("img-0f3b000000000002".to_string(), Some("db")),
            ("img-1234000000000003".to_string(), None),
        ];
        assert_eq!(find(&items, "web").unwrap(), "img-0f3a000000000001");
        assert_eq!(
            find(&items, "img-0f3b000000000002").unwrap(),
            "img-0f3b000000000002"
        );
        assert_eq!(find(&items, "0f3a").unwrap(), "img-0f3a000000000001");
        assert_eq!(find(&items, "img-12").unwrap(), "img-1234000000000003");
        let e = find(&items, "0f3").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Ambiguous);
        let msg = e.to_string();
        assert!(
            msg.contains("img-0f3a000000000001 (web)") && msg.contains("img-0f3b000000000002 (db)"),
            "{msg}"
        );
        for missing in ["we", "img-", "", "9"] {
            let e = find(&items, missing).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::NotFound, "{missing}");
            assert!(e.to_string().contains("blocksnap image list"), "{e}");
        }
    }
}
