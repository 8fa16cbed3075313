//! Where a store lives: a local directory. A store given as a URL (`s3://BUCKET/PREFIX`,
//! `http://…`, any `SCHEME://`) names a backend this blocksnap does not have: it is refused
//! before anything is created, so that no local directory named `s3:` appears. `file://` URLs
//! name local directories and are accepted.

use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// The schemes a store may be given with, besides a plain path.
pub const SUPPORTED_SCHEMES: &[&str] = &["file"];

/// The URL scheme `text` starts with (`s3` for `s3://b/p`), if it has one.
fn scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .then_some(scheme)
}

/// `%XX` escapes decoded; `None` if one is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The local directory of the store given as `location`: the path itself, or the path of a
/// `file://` URL. Any other URL is refused (a usage error naming the supported forms).
pub fn local_store_path(location: &Path) -> Result<PathBuf> {
    let Some(text) = location.to_str() else {
        return Ok(location.to_path_buf());
    };
    let Some(scheme) = scheme(text) else {
        return Ok(location.to_path_buf());
    };
    let rest = &text[scheme.len() + 3..];
    if scheme.eq_ignore_ascii_case("file") {
        // file:///PATH or file://localhost/PATH; a query or fragment has no meaning here.
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if path.starts_with('/') && !path.contains(['?', '#']) {
            if let Some(p) = percent_decode(path) {
                return Ok(PathBuf::from(p));
            }
        }
        return Err(StoreError::Usage(format!(
            "store '{text}': a file:// URL must name an absolute local path, as in \
             file:///srv/blocksnap (or give the path itself)"
        )));
    }
    Err(StoreError::Usage(format!(
        "store '{text}': {scheme}:// stores are not supported by this blocksnap; a store is a \
         local directory, given as a path or a file:///PATH URL. Nothing was created. (For a \
         local directory whose name looks like a URL, write ./{text})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_refused_and_paths_and_file_urls_kept() {
        for url in [
            "s3://bucket/prefix",
            "http://host:9000/b",
            "https://x",
            "S3+ssl://b",
            "gs://b",
            "nbd+unix:///e",
        ] {
            let e = local_store_path(Path::new(url)).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Usage, "{url}");
            assert!(e.to_string().contains("not supported"), "{url}: {e}");
        }
        for path in [
            "/srv/store",
            "store",
            "./s3://b",
            "s3:b",
            "a/b://c",
            "1s://x",
            "",
        ] {
            assert_eq!(local_store_path(Path::new(path)).unwrap(), Path::new(path));
        }
        for (url, path) in [
            ("file:///srv/store", "/srv/store"),
            ("file://localhost/srv/s", "/srv/s"),
            ("FILE:///a%20b", "/a b"),
        ] {
            assert_eq!(local_store_path(Path::new(url)).unwrap(), Path::new(path));
        }
        for bad in [
            "file://relative/x",
            "file://",
            "file:///a%zz",
            "file:///a?x=1",
        ] {
            assert!(local_store_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
