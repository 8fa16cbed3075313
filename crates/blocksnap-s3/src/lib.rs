//! blocksnap's S3 backend: the synchronous [`Backend`] trait on S3-compatible object storage.
//!
//! [`S3Backend`] keeps a store's objects under one prefix of one bucket, through the
//! `object_store` crate (its AWS client, rustls, its built-in retries with backoff) driven by a
//! small private tokio runtime, so that callers see the same synchronous contract as a local
//! directory. How each part of the contract maps to S3:
//!
//! - **create-only** ([`Backend::create`], [`Staged::commit`]): a PUT with `If-None-Match: *`
//!   (`PutMode::Create`); the server's 412 (or 409 for a racing create) is
//!   [`BackendError::AlreadyExists`]. A staged object is held in memory and goes up as one PUT
//!   when committed, so every write is conditional (packs are at most a few tens of MiB).
//! - **compare-and-swap** ([`Backend::replace`]): a PUT with `If-Match: ETAG`
//!   (`PutMode::Update`); the object's [`Version`] is its ETag. A 412, or a missing object, is
//!   [`BackendError::Conflict`].
//! - **reads**: GET, ranged GET (`Range: bytes=a-b`) and HEAD; **listing**: `ListObjectsV2`
//!   under the prefix's folder, filtered to the exact prefix and sorted; **delete**: DELETE,
//!   which S3 answers with success for a missing object.
//! - **errors**: not found → [`BackendError::NotFound`], already exists →
//!   [`BackendError::AlreadyExists`], precondition failed → [`BackendError::Conflict`],
//!   timeouts, connection failures, 5xx and throttling (after the client's own retries) →
//!   [`BackendError::Transient`], a refused credential → [`BackendError::ReadOnly`], anything
//!   else [`BackendError::Io`] naming the operation, the key and the `s3://` place.
//!
//! Endpoint, region and credentials come from the usual environment (`AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, and
//! `AWS_ALLOW_HTTP=true` for a local http endpoint), as the AWS tools read it.
//!
//! Some S3-compatible servers accept the conditional headers and ignore them; on such a server
//! two writers could overwrite each other's objects. [`S3Backend::probe`] proves that a second
//! create of one key is refused and that a swap with a stale version is refused.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use blocksnap_backend::{
    Backend, BackendError, ObjectMeta, ObjectReader, Result, Staged, Version, validate_key,
    validate_prefix,
};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig, UpdateVersion,
};

pub mod moto;

/// How long the client keeps retrying one request that fails transiently (timeouts, 5xx,
/// throttling, dropped connections) before the error reaches the caller, unless
/// `BLOCKSNAP_S3_RETRY_TIMEOUT` (seconds) says otherwise: a dead endpoint fails a command in
/// about this long.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one request may take before it counts as failed (and is retried), unless
/// `BLOCKSNAP_S3_REQUEST_TIMEOUT` (seconds) says otherwise: long enough for a 32 MiB pack over
/// a slow link, short enough that a server that stops answering is noticed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How many requests are in flight at once (uploads of packs, reads of chunk ranges), unless
/// `BLOCKSNAP_S3_CONNECTIONS` says otherwise; each upload in flight holds one pack in memory.
pub const CONNECTIONS: usize = 4;

/// A store's objects under `s3://BUCKET/PREFIX`.
/// Clones share the client and the runtime.
#[derive(Clone)]
pub struct S3Backend {
    store: Arc<AmazonS3>,
    runtime: Arc<tokio::runtime::Runtime>,
    /// `""` or the prefix with a trailing `/`.
    prefix: String,
    location: String,
    /// The endpoint, for messages: `AWS_ENDPOINT_URL` or AWS's regional one.
    endpoint: String,
    /// How many requests are worth having in flight.
    connections: usize,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("location", &self.location)
            .finish()
    }
}

/// A bad `s3://` URL or client configuration, for the one who typed it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not `s3://BUCKET[/PREFIX]`.
    #[error("{url}: not an S3 store URL ({reason}); write s3://BUCKET or s3://BUCKET/PREFIX")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The client could not be set up from the environment.
    #[error(
        "{url}: cannot set up the S3 client: {detail} (set AWS_REGION, AWS_ACCESS_KEY_ID, \
         AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a server other than AWS)"
    )]
    Client {
        /// The store URL.
        url: String,
        /// What the client said.
        detail: String,
    },
}

/// Splits `s3://BUCKET/PREFIX` into the bucket and the prefix (without slashes at its ends).
pub fn parse_url(url: &str) -> std::result::Result<(String, String), ConfigError> {
    let bad = |reason| ConfigError::BadUrl {
        url: url.into(),
        reason,
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("it does not start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("it names no bucket"));
    }
    if bucket.len() > 63
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(bad(
            "a bucket name is 1 to 63 lowercase letters, digits, '-' and '.'",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() && validate_key(prefix).is_err() {
        return Err(bad(
            "the prefix must be '/'-separated segments of letters, digits and . _ - + @ :",
        ));
    }
    Ok((bucket.into(), prefix.into()))
}

impl S3Backend {
    /// The backend of `s3://BUCKET/PREFIX`, configured from the environment. Makes no request:
    /// the first operation finds out whether the bucket is reachable.
    pub fn from_url(url: &str) -> std::result::Result<Self, ConfigError> {
        Self::from_url_with(url, &[])
    }

    /// [`S3Backend::from_url`] with settings that take precedence over the environment's, named
    /// as the environment names them (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, …): for a caller that must not change its process's environment.
    pub fn from_url_with(
        url: &str,
        settings: &[(&str, &str)],
    ) -> std::result::Result<Self, ConfigError> {
        let (bucket, prefix) = parse_url(url)?;
        let client_err = |detail: String| ConfigError::Client {
            url: url.into(),
            detail,
        };
        let setting = |name: &str| {
            settings
                .iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
                .or_else(|| std::env::var(name).ok())
        };
        let number = |name: &str, default: u64| -> std::result::Result<u64, ConfigError> {
            match setting(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| client_err(format!("{name}={v} is not a whole number"))),
            }
        };
        let retry_timeout = Duration::from_secs(number(
            "BLOCKSNAP_S3_RETRY_TIMEOUT",
            RETRY_TIMEOUT.as_secs(),
        )?);
        let request_timeout = Duration::from_secs(
            number("BLOCKSNAP_S3_REQUEST_TIMEOUT", REQUEST_TIMEOUT.as_secs())?.max(1),
        );
        let connections =
            number("BLOCKSNAP_S3_CONNECTIONS", CONNECTIONS as u64)?.clamp(1, 64) as usize;
        let endpoint = setting("AWS_ENDPOINT_URL")
            .or_else(|| setting("AWS_ENDPOINT"))
            .unwrap_or_else(|| {
                let region = setting("AWS_REGION")
                    .or_else(|| setting("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|| "us-east-1".into());
                format!("https://s3.{region}.amazonaws.com")
            });
        let mut builder = AmazonS3Builder::new()
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10).min(request_timeout))
                    .with_timeout(request_timeout),
            )
            .with_retry(RetryConfig {
                // 100 ms doubling to at most 5 s between attempts: a dead endpoint is tried
                // about a dozen times in the retry timeout, a throttled one backs off.
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 12,
                retry_timeout,
            });
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        let given = settings.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        for (key, value) in env.into_iter().chain(given) {
            // What the client does not know (AWS_PROFILE, AWS_CONFIG_FILE, …) is not its.
            if let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(k, value);
            }
        }
        builder = builder.with_bucket_name(&bucket);
        let store = builder.build().map_err(|e| client_err(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(connections.clamp(2, 8))
            .thread_name("blocksnap-s3")
            .enable_all()
            .build()
            .map_err(|e| client_err(format!("cannot start its runtime: {e}")))?;
        let location = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let prefix = if prefix.is_empty() {
            prefix
        } else {
            prefix + "/"
        };
        Ok(S3Backend {
            store: Arc::new(store),
            runtime: Arc::new(runtime),
            prefix,
            location,
            endpoint,
            connections,
        })
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The place as errors name it: the store's URL and the endpoint.
    fn shown(&self) -> String {
        format!("{} (endpoint {})", self.location, self.endpoint)
    }

    /// The store's URL, `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    pub fn url(&self) -> &str {
        &self.location
    }

    /// Proves that the server honours conditional writes, with an object under
    /// `.blocksnap-probe/` (a name starting with `.`, outside the key rules, so no store object
    /// can clash with it and no listing shows it), deleted afterwards: a
    /// second create-only PUT of one key must be refused, and so must a swap with a stale
    /// version, and of eight creates of one new key sent at once exactly one may win. A server
    /// that ignores `If-None-Match` or `If-Match` (some S3-compatible ones accept the headers
    /// and overwrite), or decides them in two steps, fails with a message that says so.
    /// Fifteen requests.
    pub fn probe(&self) -> Result<()> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| {
            self.io(
                "probe",
                ".blocksnap-probe/",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let key = format!(".blocksnap-probe/{}", hex::encode(nonce));
        let path = self.path_unchecked(&key);
        let put = |data: &'static [u8], mode: PutMode| {
            let store = self.store.clone();
            let path = path.clone();
            self.block_on(async move {
                store
                    .put_opts(
                        &path,
                        PutPayload::from_static(data),
                        PutOptions {
                            mode,
                            ..Default::default()
                        },
                    )
                    .await
            })
        };
        let result = (|| {
            let first = put(b"1", PutMode::Create).map_err(|e| self.map_err("probe", &key, e))?;
            let refused_create = match put(b"2", PutMode::Create) {
                Err(object_store::Error::AlreadyExists { .. }) => true,
                Ok(_) => false,
                Err(e) => return Err(self.map_err("probe", &key, e)),
            };
            let second = self.read_unchecked(&key)?;
            if !refused_create || second != b"1" {
                return Err(self.unsupported(
                    &key,
                    "a second create-only PUT (If-None-Match: *) of one key overwrote the first",
                ));
            }
            let v1 = UpdateVersion {
                e_tag: first.e_tag.clone(),
                version: first.version.clone(),
            };
            put(b"3", PutMode::Update(v1.clone())).map_err(|e| self.map_err("probe", &key, e))?;
            match put(b"4", PutMode::Update(v1)) {
                Err(object_store::Error::Precondition { .. }) => {}
                Ok(_) => {
                    return Err(self.unsupported(
                        &key,
                        "a PUT with a stale If-Match version replaced the object",
                    ));
                }
                Err(e) => return Err(self.map_err("probe", &key, e)),
            }
            self.probe_racing_creates(&key)
        })();
        let store = self.store.clone();
        let _ = self.block_on(async move { store.delete(&path).await });
        result
    }

    /// The probe's last part: eight create-only PUTs of one new key sent at once; exactly
    /// one may succeed. A server that checks the condition and then writes, without deciding
    /// both as one step, lets several win (s3s-fs 0.14 does: 4 of 8 in a run here), and then
    /// two hosts could both take one lock or both commit one head. A pass does not prove the
    /// server atomic (a race may be lost by chance); a refusal is always right, since on an
    /// atomic server two creates of one key can never both succeed.
    fn probe_racing_creates(&self, key: &str) -> Result<()> {
        const RACERS: usize = 8;
        let key = format!("{key}-race");
        let path = self.path_unchecked(&key);
        let store = self.store.clone();
        let outcomes = {
            let path = path.clone();
            self.block_on(async move {
                let puts = (0..RACERS).map(|i| {
                    let (store, path) = (store.clone(), path.clone());
                    async move {
                        store
                            .put_opts(
                                &path,
                                PutPayload::from(vec![i as u8; 64]),
                                PutOptions {
                                    mode: PutMode::Create,
                                    ..Default::default()
                                },
                            )
                            .await
                    }
                });
                futures::future::join_all(puts).await
            })
        };
        let store = self.store.clone();
        let _ = self.block_on(async move { store.delete(&path).await });
        let mut won = 0;
        for outcome in outcomes {
            match outcome {
                Ok(_) => won += 1,
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(self.map_err("probe", &key, e)),
            }
        }
        match won {
            1 => Ok(()),
            0 => Err(self.unsupported(
                &key,
                &format!(
                    "of {RACERS} create-only PUTs (If-None-Match: *) of one new key sent at \
                     once, none succeeded: the server refused every create of a key it did not have"
                ),
            )),
            _ => Err(self.unsupported(
                &key,
                &format!(
                    "of {RACERS} create-only PUTs (If-None-Match: *) of one key sent at once, \
                     {won} succeeded: the server checks the condition and writes in two steps, \
                     so two writers could both take one lock"
                ),
            )),
        }
    }

    fn unsupported(&self, key: &str, what: &str) -> BackendError {
        self.io(
            "probe",
            key,
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("the server does not honour conditional writes: {what}"),
            ),
        )
    }

    fn read_unchecked(&self, key: &str) -> Result<Vec<u8>> {
        let store = self.store.clone();
        let path = self.path_unchecked(key);
        self.block_on(async move { store.get(&path).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| self.map_err("read", key, e))
    }

    /// Runs one request on the private runtime.
    fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    fn path_unchecked(&self, key: &str) -> Path {
        Path::from_iter(format!("{}{key}", self.prefix).split('/'))
    }

    fn path(&self, key: &str) -> Result<Path> {
        validate_key(key)?;
        Ok(self.path_unchecked(key))
    }

    fn io(&self, op: &'static str, key: &str, e: std::io::Error) -> BackendError {
        BackendError::Io {
            op,
            key: key.into(),
            location: self.shown(),
            source: e,
        }
    }

    /// Maps a client error of `op` on `key` to its typed variant.
    fn map_err(&self, op: &'static str, key: &str, e: object_store::Error) -> BackendError {
        use object_store::Error as E;
        match e {
            e if no_bucket(&e) => self.io(
                op,
                key,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "the bucket does not exist (create it, or check the URL and \
                         AWS_ENDPOINT_URL): {}",
                        chain(&e)
                    ),
                ),
            ),
            E::NotFound { .. } => BackendError::NotFound { key: key.into() },
            E::AlreadyExists { .. } => BackendError::AlreadyExists { key: key.into() },
            E::Precondition { .. } => BackendError::Conflict { key: key.into() },
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => BackendError::ReadOnly {
                location: self.location.clone(),
                key: key.into(),
                detail: format!("the server refused the credentials: {}", chain(&e)),
            },
            e if is_transient(&e) => BackendError::Transient {
                location: self.shown(),
                key: key.into(),
                detail: chain(&e),
            },
            e => self.io(op, key, std::io::Error::other(chain(&e))),
        }
    }

    fn put(&self, op: &'static str, key: &str, data: Vec<u8>, mode: PutMode) -> Result<Version> {
        let path = self.path(key)?;
        let store = self.store.clone();
        let r = self.block_on(async move {
            store
                .put_opts(
                    &path,
                    PutPayload::from(data),
                    PutOptions {
                        mode,
                        ..Default::default()
                    },
                )
                .await
        });
        match r {
            Ok(put) => Ok(Version(put.e_tag.unwrap_or_default())),
            // A create that meets an existing object: S3 says 412, a racing create 409; the
            // client maps both to AlreadyExists.
            Err(e) => Err(self.map_err(op, key, e)),
        }
    }

    fn head_meta(&self, key: &str) -> Result<Option<object_store::ObjectMeta>> {
        let path = self.path(key)?;
        let store = self.store.clone();
        match self.block_on(async move { store.head(&path).await }) {
            Ok(meta) => Ok(Some(meta)),
            Err(e @ object_store::Error::NotFound { .. }) if !no_bucket(&e) => Ok(None),
            Err(e) => Err(self.map_err("read", key, e)),
        }
    }

    /// One ranged GET of `range` (of the version `e_tag` if given): the object's metadata and
    /// the bytes the server sent, or its error for the caller to map.
    fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        e_tag: Option<String>,
    ) -> Result<std::result::Result<(object_store::ObjectMeta, bytes::Bytes), object_store::Error>>
    {
        let path = self.path(key)?;
        let store = self.store.clone();
        Ok(self.block_on(async move {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(range)),
                if_match: e_tag,
                ..Default::default()
            };
            let got = store.get_opts(&path, opts).await?;
            let meta = got.meta.clone();
            Ok::<_, object_store::Error>((meta, got.bytes().await?))
        }))
    }

    /// Exactly `len` bytes from `offset`, of the version `e_tag` if given.
    fn range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        known_size: Option<u64>,
        e_tag: Option<String>,
    ) -> Result<Vec<u8>> {
        let out_of_range = |size| BackendError::OutOfRange {
            key: key.into(),
            offset,
            len,
            size,
        };
        let size = match known_size {
            Some(size) => Some(size),
            // An empty range or one whose end overflows needs the size alone: no ranged GET
            // can express it.
            None if len == 0 || offset.checked_add(len).is_none() => Some(
                self.head_meta(key)?
                    .ok_or_else(|| BackendError::NotFound { key: key.into() })?
                    .size,
            ),
            None => None,
        };
        let end = match (offset.checked_add(len), size) {
            (Some(end), Some(size)) if end > size => return Err(out_of_range(size)),
            (None, Some(size)) => return Err(out_of_range(size)),
            (Some(end), _) => end,
            (None, None) => unreachable!("an overflowing range asked for the size"),
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        let r = self
            .get_range(key, offset..end, e_tag)?
            .map(|(meta, bytes)| (meta.size, bytes));
        match r {
            // The body, collected into one buffer, becomes the Vec without a copy.
            Ok((_, bytes)) if bytes.len() as u64 == len => Ok(Vec::from(bytes)),
            // The server returns what there is of a range that runs past the end.
            Ok((size, _)) => Err(out_of_range(size)),
            Err(e @ object_store::Error::NotFound { .. }) => Err(self.map_err("read", key, e)),
            Err(e) => {
                // A range that starts at or past the end is refused (416); tell it apart from
                // a failure by the object's size.
                if size.is_none() {
                    if let Some(meta) = self.head_meta(key)? {
                        if end > meta.size {
                            return Err(out_of_range(meta.size));
                        }
                    }
                }
                Err(self.map_err("read", key, e))
            }
        }
    }
}

/// True for a 404 that is about the bucket, not the object.
fn no_bucket(e: &object_store::Error) -> bool {
    chain(e).contains("NoSuchBucket")
}

/// The error and its sources, for a message.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// True for a failure worth retrying later: a timeout or a connection failure, a 5xx or a
/// throttling answer (429, 503 SlowDown), once the client's own retries are spent.
fn is_transient(e: &object_store::Error) -> bool {
    use object_store::client::HttpErrorKind as K;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<object_store::client::HttpError>() {
            if matches!(
                h.kind(),
                K::Connect | K::Request | K::Timeout | K::Interrupted
            ) {
                return true;
            }
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as I;
            if matches!(
                io.kind(),
                I::TimedOut
                    | I::ConnectionRefused
                    | I::ConnectionReset
                    | I::ConnectionAborted
                    | I::NotConnected
                    | I::Interrupted
            ) {
                return true;
            }
        }
        cur = c.source();
    }
    // The client's status error type is private; its message carries the status code.
    let text = chain(e);
    match text.find("status code: ") {
        Some(i) => {
            let code: String = text[i + 13..].chars().take(3).collect();
            code.starts_with('5') || code == "429"
        }
        None => false,
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn create(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put("create", key, data.to_vec(), PutMode::Create)
            .map(|_| ())
    }

    fn stage(&self, under: &str) -> Result<Box<dyn Staged>> {
        validate_prefix(under)?;
        Ok(Box::new(S3Staged {
            backend: self.clone(),
            data: Vec::new(),
        }))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.get_versioned(key).map(|(data, _)| data)
    }

    fn get_bounded(&self, key: &str, max: u64) -> Result<Vec<u8>> {
        self.get_versioned_bounded(key, max).map(|(data, _)| data)
    }

    fn get_versioned_bounded(&self, key: &str, max: u64) -> Result<(Vec<u8>, Version)> {
        let path = self.path(key)?;
        let store = self.store.clone();
        // One GET: the size is known from its headers before the body is read.
        let r = self.block_on(async move {
            let got = store.get(&path).await?;
            let (size, e_tag) = (got.meta.size, got.meta.e_tag.clone());
            if size > max {
                return Ok(Err(size));
            }
            Ok::<_, object_store::Error>(Ok((got.bytes().await?, e_tag)))
        });
        match r {
            Ok(Ok((bytes, e_tag))) if bytes.len() as u64 <= max => {
                Ok((bytes.to_vec(), Version(e_tag.unwrap_or_default())))
            }
            Ok(Ok((bytes, _))) => Err(BackendError::TooLarge {
                key: key.into(),
                size: bytes.len() as u64,
                max,
            }),
            Ok(Err(size)) => Err(BackendError::TooLarge {
                key: key.into(),
                size,
                max,
            }),
            Err(e) => Err(self.map_err("read", key, e)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        validate_key(key)?;
        self.range(key, offset, len, None, None)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        Ok(self.head_meta(key)?.map(|m| ObjectMeta {
            key: key.into(),
            size: m.size,
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        let full = format!("{}{prefix}", self.prefix);
        // object_store lists by folder: list the folder the prefix ends in, keep what starts
        // with the whole prefix.
        let folder = full.rfind('/').map(|i| &full[..i]).unwrap_or("");
        let folder = (!folder.is_empty()).then(|| Path::from_iter(folder.split('/')));
        let store = self.store.clone();
        let r = self.block_on(async move {
            store
                .list(folder.as_ref())
                .try_collect::<Vec<object_store::ObjectMeta>>()
                .await
        });
        let metas = r.map_err(|e| self.map_err("list", prefix, e))?;
        let mut out: Vec<ObjectMeta> = metas
            .into_iter()
            .filter_map(|m| {
                let loc = m.location.as_ref();
                if !loc.starts_with(&full) {
                    return None;
                }
                let key = loc.strip_prefix(&self.prefix)?;
                // Objects outside the key rules (a probe's, another tool's) are not the
                // store's.
                validate_key(key).ok()?;
                Some(ObjectMeta {
                    key: key.into(),
                    size: m.size,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let store = self.store.clone();
        match self.block_on(async move { store.delete(&path).await }) {
            Ok(()) => Ok(()),
            Err(e @ object_store::Error::NotFound { .. }) if !no_bucket(&e) => Ok(()),
            Err(e) => Err(self.map_err("delete", key, e)),
        }
    }

    fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, Version)> {
        self.get_versioned_bounded(key, u64::MAX)
    }

    fn open(&self, key: &str) -> Result<Arc<dyn ObjectReader>> {
        let meta = self
            .head_meta(key)?
            .ok_or_else(|| BackendError::NotFound { key: key.into() })?;
        Ok(Arc::new(S3Reader {
            backend: self.clone(),
            key: key.into(),
            size: meta.size,
            e_tag: meta.e_tag,
        }))
    }

    fn open_reading(&self, key: &str, len: u64) -> Result<(Arc<dyn ObjectReader>, Vec<u8>)> {
        if len == 0 {
            return Ok((self.open(key)?, Vec::new()));
        }
        let (meta, bytes) = self
            .get_range(key, 0..len, None)?
            .map_err(|e| self.map_err("read", key, e))?;
        if bytes.len() as u64 != len {
            return Err(BackendError::OutOfRange {
                key: key.into(),
                offset: 0,
                len,
                size: meta.size,
            });
        }
        let reader = S3Reader {
            backend: self.clone(),
            key: key.into(),
            size: meta.size,
            e_tag: meta.e_tag,
        };
        Ok((Arc::new(reader), Vec::from(bytes)))
    }

    fn parallelism(&self) -> usize {
        self.connections
    }

    fn conditional_writes_server(&self) -> Option<String> {
        Some(format!("{} (bucket {})", self.endpoint, self.location))
    }

    fn probe_conditional_writes(&self) -> Result<()> {
        self.probe()
    }

    fn replace(&self, key: &str, data: &[u8], expected: Option<&Version>) -> Result<Version> {
        let mode = match expected {
            None => PutMode::Create,
            Some(v) => PutMode::Update(UpdateVersion {
                e_tag: Some(v.0.clone()),
                version: None,
            }),
        };
        self.put("replace", key, data.to_vec(), mode)
    }
}

struct S3Reader {
    backend: S3Backend,
    key: String,
    size: u64,
    e_tag: Option<String>,
}

impl ObjectReader for S3Reader {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        // The handle sees the object as it was when opened: each read is of that ETag.
        self.backend
            .range(&self.key, offset, len, Some(self.size), self.e_tag.clone())
    }
}

/// A staged object: held in memory, one conditional PUT when committed.
struct S3Staged {
    backend: S3Backend,
    data: Vec<u8>,
}

impl Write for S3Staged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Staged for S3Staged {
    fn commit(self: Box<Self>, key: &str) -> Result<()> {
        let S3Staged { backend, data } = *self;
        backend
            .put("create", key, data, PutMode::Create)
            .map(|_| ())
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    fn backend(moto: &moto::S3Server, url: &str) -> S3Backend {
        let env = moto.env();
        let settings: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        S3Backend::from_url_with(url, &settings).unwrap()
    }

    #[test]
    fn passes_the_conformance_suite() {
        let moto = moto::S3Server::start();
        moto.create_bucket("conformance");
        // Each check on a fresh, empty store: its own prefix of one bucket.
        let n = AtomicUsize::new(0);
        blocksnap_backend::conformance::run(&|| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            Arc::new(backend(&moto, &format!("s3://conformance/run/c{i}")))
        });
        // And at the bucket's root.
        let root = backend(&moto, "s3://conformance");
        let keys: Vec<String> = root
            .list("run/c0/")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert!(keys.contains(&"run/c0/config".to_string()), "{keys:?}");
    }

    #[test]
    fn the_server_honours_conditional_writes() {
        let moto = moto::S3Server::start();
        moto.create_bucket("probe");
        let b = backend(&moto, "s3://probe/store");
        b.probe().unwrap();
        // The probe leaves nothing behind and nothing of it is listed.
        assert!(b.list("").unwrap().is_empty());
        let root = backend(&moto, "s3://probe");
        assert!(root.list("").unwrap().is_empty());
    }

    /// What a test proxy does to the conditional headers it forwards.
    #[derive(Clone, Copy, PartialEq)]
    enum Conditions {
        /// Forwards them as they are.
        Kept,
        /// Drops them all: a server that accepts `If-None-Match` and `If-Match` and ignores
        /// them, as some do.
        Dropped,
        /// Decides `If-None-Match: *` itself, in two steps: a HEAD of the key, then (if absent)
        /// the PUT without the condition after a pause. A server that checks, then writes: one
        /// create after another is refused, creates sent at once all succeed.
        CheckedThenWritten,
    }

    /// A proxy in front of `upstream` that drops the conditional headers of every request.
    fn forgetful_proxy(upstream: u16) -> u16 {
        proxy(upstream, Conditions::Dropped, Arc::default())
    }

    /// Whether `upstream` has the object at `path` (`/bucket/key`): an unsigned HEAD.
    fn exists(upstream: u16, path: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
            return false;
        };
        let ask = format!("HEAD {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
        let _ = server.write_all(ask.as_bytes());
        let mut answer = String::new();
        let _ = server.read_to_string(&mut answer);
        // moto refuses an unsigned read of a private object it has (403): only 404 says absent.
        answer.split(' ').nth(1) != Some("404")
    }

    /// A proxy in front of `upstream` that notes each request's first line (`GET /b/k HTTP/1.1`)
    /// in `log`, and treats the conditional headers as `conditions` says. One request per
    /// connection (it asks the server to close), so each request head is seen.
    fn proxy(
        upstream: u16,
        conditions: Conditions,
        log: Arc<std::sync::Mutex<Vec<String>>>,
    ) -> u16 {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        match client.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let first = head.split("\r\n").next().unwrap_or_default().to_string();
                    log.lock().unwrap().push(first.clone());
                    let create = head
                        .to_ascii_lowercase()
                        .split("\r\n")
                        .any(|l| l.starts_with("if-none-match:"));
                    let mut strip = conditions == Conditions::Dropped;
                    if conditions == Conditions::CheckedThenWritten && create {
                        let path = first.split(' ').nth(1).unwrap_or_default();
                        if !exists(upstream, path) {
                            // Absent when checked: written, whatever came in between.
                            std::thread::sleep(std::time::Duration::from_millis(300));
                            strip = true;
                        }
                    }
                    let mut out: String = head
                        .split("\r\n")
                        .filter(|l| {
                            let l = l.to_ascii_lowercase();
                            let conditional =
                                l.starts_with("if-none-match:") || l.starts_with("if-match:");
                            let dropped = l.starts_with("connection:") || (strip && conditional);
                            !dropped
                        })
                        .map(|l| format!("{l}\r\n"))
                        .collect();
                    out.push_str("connection: close\r\n\r\n");
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        return;
                    };
                    let _ = server.write_all(out.as_bytes());
                    let _ = server.write_all(&buf[end + 4..]);
                    let (mut c2, mut s2) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut s2);
                    });
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.shutdown(Shutdown::Both);
                });
            }
        });
        port
    }

    /// `url` on `moto` through a proxy at `port`.
    fn backend_via(moto: &moto::S3Server, port: u16, url: &str) -> S3Backend {
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut settings: Vec<(&str, String)> = moto.env();
        settings.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
        settings.push(("AWS_ENDPOINT_URL", endpoint));
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        S3Backend::from_url_with(url, &settings).unwrap()
    }

    #[test]
    fn the_probe_refuses_a_server_whose_conditional_creates_race() {
        let moto = moto::S3Server::moto();
        moto.create_bucket("racy");
        let port = proxy(moto.port(), Conditions::CheckedThenWritten, Arc::default());
        let b = backend_via(&moto, port, "s3://racy/store");
        // One create after another is refused there...
        b.create("one", b"first").unwrap();
        let e = b.create("one", b"second").unwrap_err();
        assert!(matches!(e, BackendError::AlreadyExists { .. }), "{e}");
        b.delete("one").unwrap();
        // ...but creates sent at once all win, and the probe says so.
        let e = b.probe().unwrap_err();
        assert!(
            e.to_string().contains("of 8 create-only PUTs")
                && e.to_string()
                    .contains("checks the condition and writes in two steps"),
            "{e}"
        );
        assert!(backend(&moto, "s3://racy").list("").unwrap().is_empty());
        // The same bucket without the proxy passes.
        backend(&moto, "s3://racy/store").probe().unwrap();
    }

    #[test]
    fn the_probe_refuses_a_server_that_ignores_conditional_writes() {
        let moto = moto::S3Server::moto();
        moto.create_bucket("forgetful");
        let port = forgetful_proxy(moto.port());
        let b = backend_via(&moto, port, "s3://forgetful/store");
        // Through the proxy a second create overwrites: the probe says so.
        let e = b.probe().unwrap_err();
        assert!(
            e.to_string().contains("does not honour conditional writes")
                && e.to_string().contains("If-None-Match"),
            "{e}"
        );
        // Nothing of it is listed.
        assert!(
            backend(&moto, "s3://forgetful")
                .list("")
                .unwrap()
                .is_empty()
        );
        // The same bucket without the proxy passes.
        backend(&moto, "s3://forgetful/store").probe().unwrap();
    }

    #[test]
    fn opening_with_a_read_is_one_request() {
        let moto = moto::S3Server::start();
        moto.create_bucket("packs");
        let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let port = proxy(moto.port(), Conditions::Kept, log.clone());
        let b = backend_via(&moto, port, "s3://packs/store");
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        b.create("packs/ab/p1", &data).unwrap();
        log.lock().unwrap().clear();

        // One ranged GET opens the object and brings its first bytes; the handle knows the size.
        let (reader, head) = b.open_reading("packs/ab/p1", 100).unwrap();
        assert_eq!(head, data[..100]);
        assert_eq!(reader.size(), 5000);
        let seen: Vec<String> = log.lock().unwrap().drain(..).collect();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with("GET /packs/store/packs/ab/p1"),
            "{seen:?}"
        );
        // Later reads are ranged GETs of the version opened.
        assert_eq!(reader.read_at(4990, 10).unwrap(), data[4990..]);
        assert!(matches!(
            reader.read_at(4990, 11),
            Err(BackendError::OutOfRange { size: 5000, .. })
        ));
        b.delete("packs/ab/p1").unwrap();
        b.create("packs/ab/p1", b"another version").unwrap();
        assert!(reader.read_at(0, 4).is_err(), "a read of a replaced object");

        // An object shorter than the read, and a missing one.
        assert!(matches!(
            b.open_reading("packs/ab/p1", 100),
            Err(BackendError::OutOfRange { size: 15, .. })
        ));
        let e = b.open_reading("packs/ab/none", 100).err().unwrap();
        assert!(e.is_not_found(), "{e:?}");
    }

    #[test]
    fn errors_name_the_place() {
        let moto = moto::S3Server::start();
        // A bucket that does not exist: the read fails naming the place.
        let b = backend(&moto, "s3://no-such-bucket/x");
        let e = b.create("config", b"x").unwrap_err();
        assert!(e.to_string().contains("s3://no-such-bucket/x"), "{e}");
        assert!(e.to_string().contains("bucket does not exist"), "{e}");
        assert!(
            !e.is_not_found(),
            "a missing bucket is not a missing object: {e:?}"
        );
        // A server that is gone (a port nothing listens on): a connection failure is
        // transient, after the client's own retries (bounded by RETRY_TIMEOUT), and names the
        // place.
        let port = moto::free_port();
        let gone = S3Backend::from_url_with(
            "s3://gone/x",
            &[
                ("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}")),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "a"),
                ("AWS_SECRET_ACCESS_KEY", "b"),
                ("BLOCKSNAP_S3_RETRY_TIMEOUT", "3"),
            ],
        )
        .unwrap();
        let t = std::time::Instant::now();
        let e = gone.get("config").unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(e.to_string().contains("s3://gone/x"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            parse_url("s3://bkt/a/b/").unwrap(),
            ("bkt".into(), "a/b".into())
        );
        assert_eq!(parse_url("s3://bkt").unwrap(), ("bkt".into(), "".into()));
        for bad in [
            "s3://",
            "s3:///x",
            "file:///x",
            "s3://Bad_Bucket/x",
            "s3://b/../x",
            "s3://b/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} accepted");
        }
    }
}
