//! The capability check at open: before a command writes to a store on a server that must
//! prove it honours conditional writes (an object store), the server is probed once and the
//! answer cached per store and server in this user's cache directory, so that later opens cost
//! nothing. A server that fails is refused unless the store was made with `init
//! --single-writer`. See docs/S3.md.

use blocksnap_backend::BackendError;

use crate::error::{Result, StoreError};
use crate::progress::Progress;
use crate::repo::Store;

/// The cache file's name in the store's cache directory.
const CACHE_FILE: &str = "conditional-writes";

impl Store {
    /// Checks (once per server, then from the cache) that the store's server refuses a second
    /// create of one key and a stale compare-and-swap. A store recorded single-writer is not
    /// checked; a backend that decides those itself (a local directory) needs no check; a
    /// credential that may not write cannot race anyone and is let through unchecked.
    pub fn check_conditional_writes(&self, progress: &dyn Progress) -> Result<()> {
        let backend = self.backend();
        let Some(server) = backend.conditional_writes_server() else {
            return Ok(());
        };
        if self.config().single_writer {
            return Ok(());
        }
        let cache = self.cache_dir().join(CACHE_FILE);
        let line = format!("honoured by {server}\n");
        if std::fs::read_to_string(&cache).is_ok_and(|s| s == line) {
            return Ok(());
        }
        match backend.probe_conditional_writes() {
            Ok(()) => {
                self.remember_conditional_writes(&line);
                Ok(())
            }
            Err(e) if e.is_unsupported() => Err(StoreError::Usage(format!(
                "{}. This store was made for several writers (without `init --single-writer`), \
                 and on a server that ignores these conditions two hosts could overwrite each \
                 other's locks and volume heads, so blocksnap does not use it there. Point \
                 AWS_ENDPOINT_URL at a server that refuses a second create of one key \
                 (If-None-Match) and a stale swap (If-Match): AWS S3, MinIO, Ceph RGW 18+, or \
                 the server this store was used on before. On a server like this one only a \
                 store made with `blocksnap init --single-writer` (one host writing at a time) \
                 can be used; see docs/S3.md, \"The capability check\"",
                ignored_conditional_writes(&e)
            ))),
            Err(blocksnap_backend::BackendError::ReadOnly { .. }) => {
                progress.message(&format!(
                    "{server}: not checked for conditional writes (these credentials may not \
                     write there)"
                ));
                Ok(())
            }
            Err(e) => Err(StoreError::backend(e)),
        }
    }
}

impl Store {
    /// Records that the store's server passed the capability probe, as `init` proved before it
    /// made the store: the first command after `init` then does not probe again.
    pub fn conditional_writes_proven(&self) {
        if let Some(server) = self.backend().conditional_writes_server() {
            self.remember_conditional_writes(&format!("honoured by {server}\n"));
        }
    }

    /// Writes the capability cache (best effort: without it the next open probes again).
    fn remember_conditional_writes(&self, line: &str) {
        let _ = crate::fsutil::create_private_dirs(&self.cache_dir());
        let _ = std::fs::write(self.cache_dir().join(CACHE_FILE), line);
    }
}

/// What a failed capability probe says, for people: the store and its endpoint, and which of
/// the two conditional writes the server ignored (`STORE (endpoint URL): the server does not
/// honour conditional writes: …`), without the probe object's random name.
pub fn ignored_conditional_writes(e: &BackendError) -> String {
    match e {
        BackendError::Io {
            location, source, ..
        } if e.is_unsupported() => format!("{location}: {source}"),
        e => e.to_string(),
    }
}
