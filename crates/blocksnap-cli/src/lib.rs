//! The `blocksnap` command line: argument parsing, progress, tables and JSON over
//! `blocksnap-store`. Each command turns its arguments into store options, calls one store
//! function and renders the report; nothing worth testing lives here.
//!
//! This file holds what every command shares: the global flags and the list of commands
//! (`Cli`, `Command`), the context a command runs in (`Ctx`: the store, progress, output in
//! text or JSON) and the mapping of errors to exit statuses. Each command group lives in its own
//! file under `commands/`, with its clap definitions and its glue.

/// `eprintln!` that never panics: after SIGHUP the terminal may be gone, and a line on stderr
/// that cannot be written must not turn a clean stop into a crash.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod allocator;
mod commands;
mod parse;
mod progress;
mod signals;
mod table;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use blocksnap_store::{ErrorKind, InitOptions, Store, StoreError};
use clap::{CommandFactory, Parser, Subcommand};
use commands::{
    account, bench, check, image, init, key, migrate, policy, prune, recovery, repair, serve,
    snapshot, trash, unlock, volume,
};
use progress::Bar;
use serde::Serialize;

/// Snapshot raw disk images into a deduplicating, encrypted store, and rebuild them exactly.
#[derive(Debug, Parser)]
#[command(name = "blocksnap", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// The store: a local directory, file:///PATH, or s3://BUCKET/PREFIX (endpoint, region and
    /// credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY;
    /// other URLs are refused) [default: $XDG_DATA_HOME/blocksnap/store, created on first use].
    #[arg(long, global = true, env = "BLOCKSNAP_STORE", value_name = "PATH")]
    pub(crate) store: Option<PathBuf>,
    /// The account that acts [default: the account created with the store]. Give it before the
    /// command (`blocksnap --account bob image rebuild …`): after `image share` and `unshare`,
    /// `--account` names the account being shared with.
    #[arg(long, env = "BLOCKSNAP_ACCOUNT", value_name = "NAME")]
    pub(crate) account: Option<String>,
    /// The account's secret identity file [default: $XDG_CONFIG_HOME/blocksnap/<store id>/<account>.key].
    #[arg(long, global = true, env = "BLOCKSNAP_IDENTITY", value_name = "FILE")]
    pub(crate) identity: Option<PathBuf>,
    /// Print one JSON document on stdout and nothing else there.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// No progress and no notes on stderr; errors still show.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands, in the order `blocksnap --help` lists them. Each one's first line here is its
/// line in that list; its arguments and the rest are in its file under `commands/`.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a store with its first account (--account) and a key named `default`.
    Init(init::InitArgs),
    /// Create and list accounts (identities that hold keys).
    #[command(subcommand)]
    Account(account::AccountCmd),
    /// Create, list, grant and revoke data keys.
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// Register disk images and block devices by name, with tags.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Deleted snapshots and images, restorable until the trash retention ends (default 7 days).
    #[command(subcommand)]
    Trash(trash::TrashCmd),
    /// Lifecycle policies: scheduled snapshots of tagged volumes, with retention.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Take, list, show, restore, diff and delete snapshots of disk images.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Machine images: named sets of snapshots by device, with launch permissions and a key.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Serve a snapshot to other programs without restoring it first.
    #[command(subcommand)]
    Serve(serve::ServeCmd),
    /// Rebuild derived state from the packs; quarantine damaged documents.
    #[command(subcommand)]
    Repair(repair::RepairCmd),
    /// Export and import what a store needs besides the identities to be read: its config,
    /// account and key documents.
    #[command(subcommand)]
    Recovery(recovery::RecoveryCmd),
    /// Delete what no snapshot (live or in the trash) references, and rewrite packs that are
    /// mostly garbage. Removes expired trash entries first.
    Prune(prune::PruneArgs),
    /// Verify the store: documents, pack trailers, the index, every snapshot's chunks.
    /// Exits 4 when it finds damage, and lists the packs, chunks, snapshots and images affected
    /// and the steps that heal it; exits 5 when it found none but could not verify everything
    /// (no grant on a key, a pack it could not read), and says what was not verified.
    Check(check::CheckArgs),
    /// Remove lock objects that no running command holds: those of this host whose process is
    /// gone, and damaged ones. (Locks left by killed commands of this host are also removed
    /// automatically by the next command.)
    Unlock(unlock::UnlockArgs),
    /// Authenticate a store made before documents carried MACs (config format v1): seal every
    /// snapshot, image, volume, policy and key document under its key, then raise the
    /// config's format so that a document without a MAC is refused from then on. Run it as an
    /// account holding every key (or as each key's holder in turn); running it again is
    /// harmless.
    Migrate(migrate::MigrateArgs),
    /// Measure this machine: each stage's throughput on one core and on all cores, then an
    /// end-to-end snapshot, incremental snapshot and restore of a generated image.
    #[command(long_about = bench::BENCH_ABOUT)]
    Bench(bench::BenchArgs),
}

/// Runs the command line; returns the exit status of CLI.md.
pub fn main() -> ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    if let Some(flag) = parse::repeated_global(&Cli::command(), std::env::args_os()) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "the argument '{flag}' cannot be used multiple times (it is given both \
                     before and after the command): give it once"
                ),
            )
            .exit();
    }
    signals::install();
    let result = run(&cli);
    if !signals::finish() {
        // The signal thread gave up waiting and is ending the process with its own status.
        loop {
            std::thread::park();
        }
    }
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    if e.downcast_ref::<StdoutClosed>().is_some() {
        // `blocksnap --json … | head`: the reader has all it wanted.
        return ExitCode::SUCCESS;
    }
    let store_error = e.downcast_ref::<StoreError>();
    let kind = store_error.map(StoreError::kind);
    let interrupted = kind == Some(ErrorKind::Interrupted);
    if let Some(sig) = signals::received().or(interrupted.then_some(2)) {
        // Whatever failed after a signal failed because of it; a different error is still shown.
        if !interrupted
            && e.downcast_ref::<DamageFound>().is_none()
            && e.downcast_ref::<NotVerified>().is_none()
        {
            say!("blocksnap: error: {}", message(&e));
        }
        say!("blocksnap: interrupted");
        return ExitCode::from(u8::try_from(128 + sig).unwrap_or(130));
    }
    if e.downcast_ref::<DamageFound>().is_some() {
        return ExitCode::from(4);
    }
    if e.downcast_ref::<NotVerified>().is_some() {
        return ExitCode::from(5);
    }
    let code = match kind {
        Some(ErrorKind::Usage | ErrorKind::NotFound | ErrorKind::Ambiguous) => 2,
        Some(ErrorKind::Denied) => 3,
        Some(ErrorKind::Tampered) => 6,
        _ => 1,
    };
    say!("blocksnap: error: {}", message(&e));
    if let Some(path) = store_error.and_then(StoreError::no_space_path) {
        say!("{}", no_space_hint(&cli, path));
    }
    ExitCode::from(code)
}

/// The error and its causes, each said once: a cause whose text an outer message already
/// holds (an error that prints its OS error and also returns it as its source) is skipped.
fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg += ": ";
        }
        msg += &text;
    }
    msg
}

/// What to do about a full filesystem at `path`: prune helps only if it is the store's.
fn no_space_hint(cli: &Cli, path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let device = |p: &std::path::Path| {
        p.ancestors()
            .find_map(|a| std::fs::metadata(a).ok())
            .map(|m| m.dev())
    };
    let store = cli
        .store
        .clone()
        .and_then(|s| blocksnap_store::local_store_path(&s).ok())
        .unwrap_or_else(blocksnap_store::default_store_path);
    let in_store =
        path.starts_with(&store) || device(path).is_some_and(|d| device(&store) == Some(d));
    if in_store {
        "hint: the store's filesystem is full. Nothing committed was lost and the store is \
         consistent; free space (`blocksnap prune` reclaims deleted snapshots) and run the \
         command again"
            .to_string()
    } else {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(path);
        format!(
            "hint: the filesystem holding {} is full. It is not the store's, so `blocksnap prune` \
             frees nothing there: free space on it (or write elsewhere) and run the command again",
            dir.display()
        )
    }
}

/// Standard output was closed by its reader (a broken pipe).
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// `check` found damage: exit status 4 (the report is already printed).
#[derive(Debug)]
pub(crate) struct DamageFound;

impl std::fmt::Display for DamageFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("check found damage")
    }
}

impl std::error::Error for DamageFound {}

/// `check` found no damage but could not verify everything, or `repair packs` could not
/// examine or repair everything: exit status 5 (already said).
#[derive(Debug)]
pub(crate) struct NotVerified;

impl std::fmt::Display for NotVerified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("check could not verify everything")
    }
}

impl std::error::Error for NotVerified {}

pub(crate) struct Ctx<'a> {
    pub(crate) cli: &'a Cli,
    pub(crate) progress: Bar,
    /// The damaged documents of the stores opened, reported when the command ends.
    damage: std::cell::RefCell<Vec<blocksnap_store::DamageWarnings>>,
}

impl Drop for Ctx<'_> {
    /// Names the damaged documents skipped along the way, each once, whatever the result.
    fn drop(&mut self) {
        for d in self.damage.borrow().iter() {
            d.warn(&self.progress);
        }
    }
}

impl Ctx<'_> {
    pub(crate) fn note(&self, text: &str) {
        if !self.cli.quiet {
            say!("{text}");
        }
    }

    /// For a command about to write to `store`: a one-line note on stderr when the store is
    /// unencrypted (its packs and documents are plain), so no write to such a store goes unsaid.
    pub(crate) fn writing(&self, store: &Store) {
        if !store.config().encryption {
            self.note(&format!(
                "note: the store {} is unencrypted: what this command writes is readable by \
                 anyone who can read the store's files",
                store.place()
            ));
        }
    }

    /// The acting account's access to `store`.
    pub(crate) fn access(&self, store: &Store) -> anyhow::Result<blocksnap_store::Access> {
        Ok(store.access(self.cli.account.as_deref(), self.cli.identity.as_deref())?)
    }

    /// The store's path, and whether it is the default one.
    pub(crate) fn store_path(&self) -> (PathBuf, bool) {
        match &self.cli.store {
            Some(p) => (p.clone(), false),
            None => (blocksnap_store::default_store_path(), true),
        }
    }

    /// Opens the store; the default store is created on first use.
    pub(crate) fn open(&self) -> anyhow::Result<Store> {
        let (path, default) = self.store_path();
        if default && !Store::exists(&path) {
            let opts = InitOptions {
                account: self
                    .cli
                    .account
                    .clone()
                    .unwrap_or_else(blocksnap_store::default_account_name),
                identity: self.cli.identity.clone(),
                ..InitOptions::default()
            };
            let (store, report) = Store::init(&path, &opts)?;
            self.note(&format!(
                "created the default store at {} (account '{}', identity {}, key 'default')",
                path.display(),
                report.account,
                report.identity.display()
            ));
            return Ok(store);
        }
        let store = open_at(&path)?;
        // One command per process: each snapshot, key, account and head document is read once
        // (`serve`, which runs for long, turns it off again).
        store.cache_documents(true);
        self.damage.borrow_mut().push(store.damage_warnings());
        Ok(store)
    }
}

/// The URL of a store given as `s3://BUCKET/PREFIX`, if it is one.
pub(crate) fn s3_url(location: &std::path::Path) -> Option<&str> {
    location.to_str().filter(|t| t.starts_with("s3://"))
}

/// The S3 backend of `url`, configured from the environment; a bad URL is a usage error.
pub(crate) fn s3_backend(url: &str) -> anyhow::Result<blocksnap_s3::S3Backend> {
    Ok(blocksnap_s3::S3Backend::from_url(url).map_err(|e| StoreError::Usage(e.to_string()))?)
}

/// Opens the store at `location`: a local directory (a path or file:// URL) or an s3:// URL.
pub(crate) fn open_at(location: &std::path::Path) -> anyhow::Result<Store> {
    if let Some(url) = s3_url(location) {
        let backend = s3_backend(url)?;
        let place = blocksnap_store::Place::Remote(backend.url().to_string());
        let store = Store::open_in(std::sync::Arc::new(backend), place)?;
        // Once per server (then from the cache): a server that ignores conditional writes is
        // refused unless the store is single-writer.
        store.check_conditional_writes(&blocksnap_store::NoProgress)?;
        return Ok(store);
    }
    Ok(Store::open(location)?)
}

impl Ctx<'_> {
    pub(crate) fn output<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        let written = if self.cli.json {
            serde_json::to_writer_pretty(&mut out, value)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
        } else {
            let text = human();
            if text.is_empty() {
                Ok(())
            } else {
                writeln!(out, "{text}")
            }
        }
        .and_then(|()| out.flush());
        match written {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
            r => Ok(r.context("cannot write to standard output")?),
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        cli,
        progress: Bar::new(cli.quiet),
        damage: std::cell::RefCell::default(),
    };
    match &cli.command {
        Command::Init(a) => init::run(&ctx, a),
        Command::Account(cmd) => account::run(&ctx, cmd),
        Command::Key(cmd) => key::run(&ctx, cmd),
        Command::Volume(cmd) => volume::run(&ctx, cmd),
        Command::Trash(cmd) => trash::run(&ctx, cmd),
        Command::Policy(cmd) => policy::run(&ctx, cmd),
        Command::Snapshot(cmd) => snapshot::run(&ctx, cmd),
        Command::Image(cmd) => image::run(&ctx, cmd),
        Command::Serve(cmd) => serve::run(&ctx, cmd),
        Command::Repair(cmd) => repair::run(&ctx, cmd),
        Command::Recovery(cmd) => recovery::run(&ctx, cmd),
        Command::Prune(a) => prune::run(&ctx, a),
        Command::Check(a) => check::run(&ctx, a),
        Command::Unlock(a) => unlock::run(&ctx, a),
        Command::Migrate(a) => migrate::run(&ctx, a),
        Command::Bench(a) => bench::run(&ctx, a),
    }
}
