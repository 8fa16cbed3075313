//! `blocksnap init`: create a store with its first account and a key named `default`.

use blocksnap_store::{ChunkerKind, InitOptions, Place, Store, StoreError};
use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use crate::Ctx;

/// `--chunker`: a [`ChunkerKind`] by its name, each described in `--help`.
fn chunker_kind() -> impl TypedValueParser<Value = ChunkerKind> {
    PossibleValuesParser::new(ChunkerKind::ALL.map(|k| {
        PossibleValue::new(k.name()).help(match k {
            ChunkerKind::Cdc => "FastCDC 2020: content-defined boundaries, robust to shifted data",
            ChunkerKind::Fixed => "Fixed-size chunks aligned to the start of the disk",
        })
    }))
    .try_map(|name| ChunkerKind::from_name(&name).ok_or("not a chunker"))
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Store chunks unencrypted, with plain BLAKE3 ids.
    #[arg(long)]
    pub(crate) no_encryption: bool,
    /// How to cut images into chunks.
    #[arg(long, value_parser = chunker_kind(), default_value = "cdc")]
    pub(crate) chunker: ChunkerKind,
    /// Average chunk size for cdc (a power of two), exact size for fixed: 4KiB to 4MiB.
    #[arg(long, value_name = "SIZE", value_parser = crate::parse::size_u32, default_value = "32KiB")]
    pub(crate) chunk_size: u32,
    /// The first account's name [default: $USER].
    #[arg(long = "account", value_name = "NAME")]
    pub(crate) account: Option<String>,
    /// Record that only one host at a time writes to this store. On an S3-compatible server
    /// that ignores conditional writes (fails the capability check), blocksnap then works
    /// instead of refusing; two hosts writing at once could overwrite each other's objects
    /// there. See docs/S3.md.
    #[arg(long)]
    pub(crate) single_writer: bool,
    /// zstd level of the chunks, -7 (fastest) to 22 (smallest); recorded in the store, used by
    /// every snapshot into it. docs/COMPARISON.md measures levels on the 8 GiB disk.
    #[arg(long, value_name = "N", default_value_t = blocksnap_store::DEFAULT_COMPRESSION_LEVEL,
          value_parser = clap::value_parser!(i32).range(-7..=22), allow_negative_numbers = true)]
    pub(crate) compression_level: i32,
}

pub(crate) fn run(ctx: &Ctx<'_>, a: &InitArgs) -> anyhow::Result<()> {
    let cli = ctx.cli;
    let (path, _) = ctx.store_path();
    let opts = InitOptions {
        encryption: !a.no_encryption,
        chunker: a.chunker,
        chunk_size: a.chunk_size,
        account: a
            .account
            .clone()
            .or_else(|| cli.account.clone())
            .unwrap_or_else(blocksnap_store::default_account_name),
        identity: cli.identity.clone(),
        config_home: None,
        single_writer: a.single_writer,
        compression_level: a.compression_level,
    };
    let (_, r) = match crate::s3_url(&path) {
        Some(url) => {
            let backend = crate::s3_backend(url)?;
            // Several writers can share a bucket only where the server refuses a second
            // create of one key and a stale compare-and-swap: prove it before making the store.
            let proven = match backend.probe() {
                Ok(()) => true,
                Err(e) if e.is_unsupported() && a.single_writer => {
                    ctx.note(&format!(
                        "note: {}; the store is made single-writer (--single-writer): only one \
                         host at a time may write to it",
                        blocksnap_store::ignored_conditional_writes(&e)
                    ));
                    false
                }
                Err(e) if e.is_unsupported() => {
                    return Err(StoreError::Usage(format!(
                        "{}. On such a server two hosts sharing a store could overwrite each \
                         other's locks and volume heads. Use a server that honours If-None-Match \
                         and If-Match (AWS S3, MinIO, Ceph RGW 18+; see docs/S3.md), or, if only \
                         one host at a time will ever write to this store, `blocksnap init \
                         --single-writer`. Nothing was created.",
                        blocksnap_store::ignored_conditional_writes(&e)
                    ))
                    .into());
                }
                Err(e) => return Err(StoreError::backend(e).into()),
            };
            let place = Place::Remote(backend.url().to_string());
            let (store, report) = Store::init_in(std::sync::Arc::new(backend), place, &opts)?;
            if proven {
                // The next command need not probe the server again.
                store.conditional_writes_proven();
            }
            (store, report)
        }
        None => Store::init(&path, &opts)?,
    };
    ctx.output(&r, || {
        format!(
            "created store {} at {}\naccount '{}', identity {} (keep it safe: without it the data cannot be read)\n{}",
            r.id,
            r.store.display(),
            r.account,
            r.identity.display(),
            match r.key {
                Some(k) => format!("encrypted with key 'default' ({k})"),
                None => "not encrypted".into(),
            }
        )
    })
}
