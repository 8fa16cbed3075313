//! The `blocksnap` command line: argument parsing, progress, tables and JSON over
//! `blocksnap-store`. Each command turns its arguments into store options, calls one store
//! function and renders the report; nothing worth testing lives here.

mod args;
mod image;
mod parse;
mod progress;
mod signals;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use args::{
    AccountCmd, ChunkerArg, Cli, Command, KeyCmd, PolicyCmd, RecoveryCmd, RepairCmd, SnapshotCmd,
    TrashCmd, VolumeCmd,
};
use blocksnap_store::{
    ChunkerKind, ErrorKind, InitOptions, SnapshotDoc, SnapshotId, SnapshotOptions, Store,
    StoreError,
};
use clap::Parser;
use parse::human;
use progress::Bar;
use serde::Serialize;

/// Runs the command line; returns the exit status of CLI.md.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
            eprintln!("blocksnap: error: {}", message(&e));
        }
        eprintln!("blocksnap: interrupted");
        return ExitCode::from(u8::try_from(128 + sig).unwrap_or(130));
    }
    if e.downcast_ref::<DamageFound>().is_some() {
        return ExitCode::from(4);
    }
    if e.downcast_ref::<NotVerified>().is_some() {
        return ExitCode::from(5);
    }
    let code = match kind {
        Some(ErrorKind::Usage) => 2,
        Some(ErrorKind::Denied) => 3,
        _ => 1,
    };
    eprintln!("blocksnap: error: {}", message(&e));
    if let Some(path) = store_error.and_then(StoreError::no_space_path) {
        eprintln!("{}", no_space_hint(&cli, path));
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
struct DamageFound;

impl std::fmt::Display for DamageFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("check found damage")
    }
}

impl std::error::Error for DamageFound {}

/// `check` found no damage but could not verify everything: exit status 5 (already said).
#[derive(Debug)]
struct NotVerified;

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
            eprintln!("{text}");
        }
    }

    /// The acting account's access to `store`.
    pub(crate) fn access(&self, store: &Store) -> anyhow::Result<blocksnap_store::Access> {
        Ok(store.access(self.cli.account.as_deref(), self.cli.identity.as_deref())?)
    }

    fn store_path(&self) -> (PathBuf, bool) {
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
        let store = Store::open(&path)?;
        self.damage.borrow_mut().push(store.damage_warnings());
        Ok(store)
    }

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
        Command::Init(a) => {
            let (path, _) = ctx.store_path();
            let opts = InitOptions {
                encryption: !a.no_encryption,
                chunker: match a.chunker {
                    ChunkerArg::Cdc => ChunkerKind::Cdc,
                    ChunkerArg::Fixed => ChunkerKind::Fixed,
                },
                chunk_size: a.chunk_size,
                account: a
                    .account
                    .clone()
                    .or_else(|| cli.account.clone())
                    .unwrap_or_else(blocksnap_store::default_account_name),
                identity: cli.identity.clone(),
            };
            let (_, r) = Store::init(&path, &opts)?;
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
        Command::Snapshot(cmd) => snapshot(&ctx, cmd),
        Command::Image(cmd) => image::run(&ctx, cmd),
        Command::Serve(args::ServeCmd::Nbd { what, listen }) => {
            let store = ctx.open()?;
            let access = ctx.access(&store)?;
            store.serve_nbd(&access, what, listen, &ctx.progress, |info| {
                // Printed once listening; the command then serves until stopped.
                let _ = ctx.output(info, String::new);
                ctx.note(&format!(
                    "serving {} ({}) read-only over NBD on {}: e.g. `qemu-img convert -O raw nbd://{}/{} disk.img`; Ctrl-C stops",
                    info.export,
                    human(info.size),
                    info.listen,
                    info.listen,
                    info.export
                ));
            })?;
            Ok(())
        }
        Command::Account(cmd) => account(&ctx, cmd),
        Command::Volume(cmd) => volume(&ctx, cmd),
        Command::Trash(cmd) => trash(&ctx, cmd),
        Command::Policy(cmd) => policy(&ctx, cmd),
        Command::Key(cmd) => key(&ctx, cmd),
        Command::Prune {
            dry_run,
            repack_threshold,
        } => {
            let store = ctx.open()?;
            let access = store.access(cli.account.as_deref(), cli.identity.as_deref())?;
            let opts = blocksnap_store::PruneOptions {
                dry_run: *dry_run,
                repack_threshold: *repack_threshold,
            };
            let r = store.prune(&access, opts, &ctx.progress)?;
            for p in &r.packs_unreadable {
                ctx.note(&format!("kept, unreadable: {p}"));
            }
            ctx.output(&r, || {
                format!(
                    "{}{} packs deleted, {} rewritten ({} chunks moved, {} dropped): {} reclaimed",
                    if r.dry_run { "dry run: " } else { "" },
                    r.packs_deleted,
                    r.packs_rewritten,
                    r.chunks_moved,
                    r.chunks_deleted,
                    human(r.bytes_reclaimed)
                )
            })
        }
        Command::Check { read_data } => {
            let store = ctx.open()?;
            let access = store.access(cli.account.as_deref(), cli.identity.as_deref())?;
            let r = store.check(&access, *read_data, &ctx.progress)?;
            // What was not verified is said even under -q: a green result would be false.
            for s in &r.not_verified {
                eprintln!("not verified: {s}");
            }
            if r.unindexed_chunks > 0 {
                ctx.note(&format!(
                    "note: {} stored chunks are not in the index (left by an interrupted run?); \
                     `blocksnap repair index` adds them",
                    r.unindexed_chunks
                ));
            }
            for n in &r.notes {
                ctx.note(&format!("note: {n}"));
            }
            ctx.output(&r, || check_text(&r, *read_data))?;
            if !r.problems.is_empty() {
                Err(DamageFound.into())
            } else if !r.not_verified.is_empty() {
                Err(NotVerified.into())
            } else {
                Ok(())
            }
        }
        Command::Repair(RepairCmd::Packs { read_data }) => {
            let store = ctx.open()?;
            let access = store.access(cli.account.as_deref(), cli.identity.as_deref())?;
            let r = store.repair_packs(&access, *read_data, &ctx.progress)?;
            for p in &r.not_repaired {
                eprintln!("not repaired: {p}");
            }
            ctx.output(&r, || {
                let mut t = String::new();
                for p in &r.missing_packs {
                    t += &format!("missing pack {p}: the index forgot its chunks\n");
                }
                for (p, aside) in r.damaged_packs.iter().zip(&r.set_aside) {
                    t += &format!("damaged pack {p}: set aside as {}\n", aside.display());
                }
                t += &format!(
                    "{} packs examined{}: {} missing, {} damaged; {} intact chunks moved to new \
                     packs, {} lost chunks forgotten",
                    r.packs,
                    if *read_data {
                        format!(", {} chunks verified", r.chunks_verified)
                    } else {
                        String::new()
                    },
                    r.missing_packs.len(),
                    r.damaged_packs.len(),
                    r.chunks_moved,
                    r.chunks_forgotten
                );
                if r.chunks_forgotten > 0 {
                    t += "\nnext: snapshot the affected volumes again from their sources (the \
                          lost chunks a source still holds are stored again), then run \
                          `blocksnap check --read-data`";
                }
                t
            })?;
            if r.not_repaired.is_empty() {
                Ok(())
            } else {
                anyhow::bail!(
                    "{} packs could not be examined or repaired (listed above)",
                    r.not_repaired.len()
                )
            }
        }
        Command::Repair(RepairCmd::Documents { dry_run }) => {
            let r = ctx.open()?.repair_documents(*dry_run, &ctx.progress)?;
            for d in &r.left {
                ctx.note(&format!(
                    "left {}: {} (a newer blocksnap reads it)",
                    d.path.display(),
                    d.problem
                ));
            }
            ctx.output(&r, || {
                let mut t = String::new();
                for m in &r.moved {
                    t += &format!(
                        "{} {} to {} ({})\n",
                        if r.dry_run { "would move" } else { "moved" },
                        m.from.display(),
                        m.to.display(),
                        m.problem
                    );
                }
                t + &format!(
                    "{}{} damaged documents {}",
                    if r.dry_run { "dry run: " } else { "" },
                    r.moved.len(),
                    if r.dry_run {
                        "would be moved to quarantine/"
                    } else {
                        "moved to quarantine/ (kept there; nothing was deleted)"
                    }
                )
            })
        }
        Command::Recovery(RecoveryCmd::Export { file }) => {
            let r = ctx.open()?.export_recovery(file, &ctx.progress)?;
            ctx.output(&r, || {
                format!(
                    "wrote {} (store {}: its config, {} accounts, {} keys); keep it with the \
                     identities, apart from the store",
                    r.file.display(),
                    r.store,
                    r.accounts.len(),
                    r.keys.len()
                )
            })
        }
        Command::Recovery(RecoveryCmd::Import { file }) => {
            let (path, _) = ctx.store_path();
            let r = Store::import_recovery(&path, file, &ctx.progress)?;
            ctx.output(&r, || {
                let mut t = String::new();
                for q in &r.quarantined {
                    t += &format!(
                        "moved the damaged {} to {}\n",
                        q.from.display(),
                        q.to.display()
                    );
                }
                for p in &r.restored {
                    t += &format!("put back {}\n", p.display());
                }
                t + &format!(
                    "{} documents put back, {} kept as they were",
                    r.restored.len(),
                    r.kept.len()
                )
            })
        }
        Command::Repair(RepairCmd::Index) => {
            let store = ctx.open()?;
            let access = store.access(cli.account.as_deref(), cli.identity.as_deref())?;
            let r = store.repair_index(&access, &ctx.progress)?;
            for p in &r.problems {
                ctx.note(&format!("warning: {p}"));
            }
            ctx.output(&r, || {
                format!(
                    "index rebuilt: {} chunks from {} packs, {} problems",
                    r.chunks,
                    r.packs,
                    r.problems.len()
                )
            })
        }
        Command::Unlock { all } => {
            let r = ctx.open()?.unlock(*all)?;
            ctx.output(&r, || {
                let mut t = String::new();
                for e in &r.removed {
                    t += &format!("removed {}\n", e.describe());
                }
                for e in &r.kept {
                    t += &format!(
                        "kept {}{}\n",
                        e.describe(),
                        match e.status {
                            blocksnap_store::LockStatus::Running => " (running on this host)",
                            _ => " (another host's: `blocksnap unlock --all` removes it)",
                        }
                    );
                }
                t += &format!("{} lock(s) removed, {} kept", r.removed.len(), r.kept.len());
                t
            })
        }
        Command::Bench(a) => bench(&ctx, a),
    }
}

/// `check`'s report for people: the problems, then a summary whose counts add up, then what to
/// do.
fn check_text(r: &blocksnap_store::CheckReport, read_data: bool) -> String {
    let ids = |v: &[SnapshotId]| -> String {
        const SHOWN: usize = 10;
        let mut s: Vec<String> = v.iter().take(SHOWN).map(ToString::to_string).collect();
        if v.len() > SHOWN {
            s.push(format!("and {} more", v.len() - SHOWN));
        }
        s.join(", ")
    };
    let mut t = String::new();
    for p in &r.problems {
        t += &format!("problem: {p}\n");
    }
    t += &format!("snapshots: {} checked", r.snapshots);
    if r.snapshots > 0 {
        t += &format!(
            ", {} damaged{}, {} intact{}",
            r.damaged_snapshots.len(),
            if r.damaged_snapshots.is_empty() {
                String::new()
            } else {
                format!(" ({})", ids(&r.damaged_snapshots))
            },
            r.intact_snapshots.len(),
            if r.intact_snapshots.is_empty() {
                String::new()
            } else {
                format!(" ({})", ids(&r.intact_snapshots))
            },
        );
    }
    if !r.unverified_snapshots.is_empty() {
        t += &format!(
            "; {} not verified ({})",
            r.unverified_snapshots.len(),
            ids(&r.unverified_snapshots)
        );
    }
    t += &format!("\npacks: {}", r.packs);
    if !r.damaged_packs.is_empty() {
        t += &format!(", {} damaged", r.damaged_packs.len());
    }
    if !r.missing_packs.is_empty() {
        t += &format!(", {} missing", r.missing_packs.len());
    }
    t += &format!(
        "\nchunks: {}: {} verified, {} damaged, {} not verified{}",
        r.chunks,
        r.chunks_verified,
        r.chunks_damaged,
        r.chunks_not_verified,
        if read_data {
            ""
        } else {
            " (data not read: `--read-data` verifies it)"
        }
    );
    t += &format!("\nimages: {}", r.images);
    if !r.damaged_images.is_empty() {
        t += &format!(", {} damaged", r.damaged_images.len());
    }
    t += &format!(
        "\nresult: {}",
        match (r.problems.len(), r.not_verified.len()) {
            (0, 0) => "no problems".to_string(),
            (0, n) => format!(
                "no problems found, but not everything was verified ({n} {}, on stderr)",
                plural(n, "item", "items")
            ),
            (p, 0) => format!("{p} {}", plural(p, "problem", "problems")),
            (p, n) => format!(
                "{p} {}; not everything was verified ({n} {}, on stderr)",
                plural(p, "problem", "problems"),
                plural(n, "item", "items")
            ),
        }
    );
    if !r.next_steps.is_empty() {
        t += "\nwhat to do:";
        for (i, s) in r.next_steps.iter().enumerate() {
            t += &format!("\n  {}. {s}", i + 1);
        }
    }
    t
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// A snapshot as `snapshot list` and `show` print it.
#[derive(Serialize)]
struct SnapshotView<'a> {
    id: String,
    volume: &'a str,
    size: u64,
    created: &'a str,
    tags: &'a BTreeMap<String, String>,
    parent: Option<String>,
    key: Option<String>,
    owner: &'a str,
    description: &'a str,
    data_bytes: u64,
    chunker: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_host: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    source_changed: bool,
}

fn view(s: &SnapshotDoc) -> SnapshotView<'_> {
    SnapshotView {
        id: s.id.to_string(),
        volume: &s.volume,
        size: s.size,
        created: &s.created,
        tags: &s.tags,
        parent: s.parent.map(|p| p.to_string()),
        key: s.key.map(|k| k.to_string()),
        owner: &s.owner,
        description: &s.description,
        data_bytes: s.data_bytes,
        chunker: format!("{:?} {}", s.chunker.kind, human(s.chunker.avg.into())).to_lowercase(),
        source_path: s.source_path.as_deref(),
        source_host: s.source_host.as_deref(),
        source_changed: s.source_changed,
    }
}

fn snapshot(ctx: &Ctx<'_>, cmd: &SnapshotCmd) -> anyhow::Result<()> {
    let cli = ctx.cli;
    let store = ctx.open()?;
    let access = || store.access(cli.account.as_deref(), cli.identity.as_deref());
    match cmd {
        SnapshotCmd::Create(a) => {
            let opts = SnapshotOptions {
                source: a.source.clone(),
                volume: a.volume.clone(),
                key: a.key.clone(),
                tags: blocksnap_store::tag_map(&a.tags)?,
                description: a.description.clone(),
                created: None,
                source_moved: a.source_moved,
            };
            let r = store
                .snapshot(&access()?, &opts, &ctx.progress)
                .with_context(|| format!("snapshot of {}", a.source.display()))?;
            ctx.output(&r, || {
                format!(
                    "{} of volume '{}' ({}): read {}, {} new in {} of {} chunks, stored {} in {:.1} s ({}/s)",
                    r.id,
                    r.volume,
                    human(r.size),
                    human(r.bytes_read),
                    human(r.bytes_new),
                    r.chunks_new,
                    r.chunks,
                    human(r.bytes_stored),
                    r.seconds,
                    human((r.bytes_read as f64 / r.seconds.max(1e-6)) as u64)
                )
            })
        }
        SnapshotCmd::List(a) => {
            let snaps = store.snapshots_with_tags(a.volume.as_deref(), &a.tags)?;
            let views: Vec<_> = snaps.iter().map(view).collect();
            ctx.output(&views, || {
                let mut t = format!(
                    "{:<22} {:<20} {:>10} {:<20} {}",
                    "ID", "VOLUME", "SIZE", "CREATED", "TAGS"
                );
                for v in &views {
                    let tags: Vec<_> = v.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    t += &format!(
                        "\n{:<22} {:<20} {:>10} {:<20} {}",
                        v.id,
                        v.volume,
                        human(v.size),
                        v.created,
                        tags.join(",")
                    );
                }
                t
            })
        }
        SnapshotCmd::Show { snapshot } => {
            let s = store.resolve_snapshot(snapshot)?;
            let v = view(&s);
            ctx.output(&v, || {
                let mut t = String::new();
                for (k, val) in serde_json::to_value(&v)
                    .ok()
                    .and_then(|j| j.as_object().cloned())
                    .unwrap_or_default()
                {
                    let shown = match val {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Null => "-".into(),
                        other => other.to_string(),
                    };
                    t += &format!("{k:<12} {shown}\n");
                }
                t.trim_end().to_string()
            })
        }
        SnapshotCmd::Diff { a, b } => {
            let r = store.diff(&access()?, a, b, &ctx.progress)?;
            ctx.output(&r, || {
                let total: u64 = r.changed.iter().map(|c| c[1]).sum();
                let mut t = String::new();
                for [off, len] in &r.changed {
                    t += &format!("{off:>16} {len:>12}  ({})\n", human(*len));
                }
                t + &format!(
                    "{} ranges, {} of {} changed from {} to {} ({} read to compare)",
                    r.changed.len(),
                    human(total),
                    human(r.size),
                    r.a,
                    r.b,
                    human(r.bytes_read)
                )
            })
        }
        SnapshotCmd::Delete { snapshot } => {
            let e = store.delete_snapshot(&access()?, snapshot)?;
            ctx.output(&e, || {
                format!(
                    "moved {} to the trash; restorable until {} with `blocksnap trash restore {}`",
                    e.id, e.expires, e.id
                )
            })
        }
        SnapshotCmd::Restore {
            snapshot,
            output,
            force,
        } => {
            let opts = blocksnap_store::RestoreOptions { force: *force };
            let r = store.restore_with(&access()?, snapshot, output, &opts, &ctx.progress)?;
            ctx.output(&r, || restored(&r))
        }
    }
}

/// What a restore wrote where, in a sentence.
fn restored(r: &blocksnap_store::RestoreReport) -> String {
    let place = if r.written_to != r.output {
        format!(
            "{} (a link to {})",
            r.output.display(),
            r.written_to.display()
        )
    } else {
        r.output.display().to_string()
    };
    let what = match (r.kind, r.replaced) {
        (blocksnap_store::TargetKind::BlockDevice, _) => format!("onto block device {place}"),
        (_, true) => format!("to {place}, replacing the file that was there"),
        (_, false) => format!("to {place}, a new sparse file"),
    };
    let mut t = format!(
        "restored {} {what}: {}, {} of data written, verified, in {:.1} s",
        r.id,
        human(r.size),
        human(r.bytes_written),
        r.seconds
    );
    if r.tail_left > 0 {
        t += &format!(
            "; the device's last {} (past the snapshot's size) are left as they were",
            human(r.tail_left)
        );
    }
    t
}

fn account(ctx: &Ctx<'_>, cmd: &AccountCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    match cmd {
        AccountCmd::Create { name } => {
            let (doc, path) = store.create_account(name, ctx.cli.identity.as_deref())?;
            #[derive(Serialize)]
            struct Created<'a> {
                name: &'a str,
                recipient: &'a str,
                identity: &'a std::path::Path,
            }
            let out = Created {
                name: &doc.name,
                recipient: &doc.recipient,
                identity: &path,
            };
            ctx.output(&out, || {
                format!(
                    "created account '{}' ({}); its identity is {} (keep it secret and backed up)",
                    doc.name,
                    doc.recipient,
                    path.display()
                )
            })
        }
        AccountCmd::List => {
            let accounts = store.list_accounts()?;
            #[derive(Serialize)]
            struct Row<'a> {
                name: &'a str,
                recipient: &'a str,
                created: &'a str,
            }
            let rows: Vec<_> = accounts
                .iter()
                .map(|a| Row {
                    name: &a.name,
                    recipient: &a.recipient,
                    created: &a.created,
                })
                .collect();
            ctx.output(&rows, || {
                let mut t = format!("{:<20} {:<64} {}", "NAME", "RECIPIENT", "CREATED");
                for r in &rows {
                    t += &format!("\n{:<20} {:<64} {}", r.name, r.recipient, r.created);
                }
                t
            })
        }
    }
}

/// A key as `key list` and friends print it.
#[derive(Serialize)]
struct KeyView {
    id: String,
    name: String,
    created: String,
    created_by: String,
    grants: Vec<String>,
}

fn key_view(k: &blocksnap_store::KeyDoc) -> KeyView {
    KeyView {
        id: k.id.to_string(),
        name: k.name.clone(),
        created: k.created.clone(),
        created_by: k.created_by.clone(),
        grants: k.grants.iter().map(|g| g.account.clone()).collect(),
    }
}

fn key(ctx: &Ctx<'_>, cmd: &KeyCmd) -> anyhow::Result<()> {
    let cli = ctx.cli;
    let store = ctx.open()?;
    let access = || store.access(cli.account.as_deref(), cli.identity.as_deref());
    let show = |k: &blocksnap_store::KeyDoc, what: &str| {
        let v = key_view(k);
        ctx.output(&v, || {
            format!(
                "{what} key '{}' ({}); held by {}",
                v.name,
                v.id,
                v.grants.join(", ")
            )
        })
    };
    match cmd {
        KeyCmd::Create { name } => show(&store.create_key(&access()?, name)?, "created"),
        KeyCmd::Grant { key, account } => {
            show(&store.grant_key(&access()?, key, account)?, "granted")
        }
        KeyCmd::Revoke { key, account } => show(
            &store.revoke_key(&access()?, key, account)?,
            "revoked a grant on",
        ),
        KeyCmd::List => {
            let keys: Vec<_> = store.list_keys()?.iter().map(key_view).collect();
            ctx.output(&keys, || {
                let mut t = format!("{:<22} {:<20} {:<26} {}", "ID", "NAME", "CREATED", "GRANTS");
                for k in &keys {
                    t += &format!(
                        "\n{:<22} {:<20} {:<26} {}",
                        k.id,
                        k.name,
                        k.created,
                        k.grants.join(",")
                    );
                }
                t
            })
        }
    }
}

fn volume(ctx: &Ctx<'_>, cmd: &VolumeCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    let row = |v: &blocksnap_store::VolumeDoc| {
        let tags: Vec<_> = v.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{:<20} {:<40} {}", v.name, v.path, tags.join(","))
    };
    match cmd {
        VolumeCmd::Add { name, path, tags } => {
            let v = store.add_volume(name, path, blocksnap_store::tag_map(tags)?)?;
            ctx.output(&v, || format!("added volume {}", row(&v)))
        }
        VolumeCmd::List => {
            let vols = store.list_volumes()?;
            ctx.output(&vols, || {
                let mut t = format!("{:<20} {:<40} {}", "NAME", "PATH", "TAGS");
                for v in &vols {
                    t += &format!("\n{}", row(v));
                }
                t
            })
        }
    }
}

fn trash(ctx: &Ctx<'_>, cmd: &TrashCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    let table = |entries: &[blocksnap_store::TrashEntry]| {
        let mut t = format!(
            "{:<22} {:<9} {:<20} {:<25} {}",
            "ID", "KIND", "NAME", "DELETED", "EXPIRES"
        );
        for e in entries {
            t += &format!(
                "\n{:<22} {:<9} {:<20} {:<25} {}",
                e.id, e.kind, e.name, e.deleted, e.expires
            );
        }
        t
    };
    match cmd {
        TrashCmd::List => {
            let entries = store.trash_entries()?;
            ctx.output(&entries, || table(&entries))
        }
        TrashCmd::Restore { id } => {
            let e = store.restore_trash(id)?;
            ctx.output(&e, || format!("restored {} from the trash", e.id))
        }
        TrashCmd::Empty { expired } => {
            let removed = store.empty_trash(*expired)?;
            ctx.output(&removed, || format!("removed {} entries from the trash for good; `blocksnap prune` reclaims their space", removed.len()))
        }
    }
}

fn policy(ctx: &Ctx<'_>, cmd: &PolicyCmd) -> anyhow::Result<()> {
    let cli = ctx.cli;
    let store = ctx.open()?;
    let describe = |p: &blocksnap_store::PolicyDoc| {
        let tags: Vec<_> = p.target_pairs().map(|(k, v)| format!("{k}={v}")).collect();
        let mut t = format!("{} (targets {})", p.name, tags.join(" or "));
        for s in &p.schedules {
            t += &format!("\n  {s}");
        }
        t
    };
    match cmd {
        PolicyCmd::Create {
            name,
            target_tags,
            schedules,
        } => {
            let p = store.create_policy(name, target_tags, schedules)?;
            ctx.output(&p, || format!("created policy {}", describe(&p)))
        }
        PolicyCmd::List => {
            let ps = store.list_policies()?;
            ctx.output(&ps, || {
                ps.iter().map(describe).collect::<Vec<_>>().join("\n")
            })
        }
        PolicyCmd::Show { name } => {
            let p = store.policy(name)?;
            ctx.output(&p, || describe(&p))
        }
        PolicyCmd::Delete { name } => {
            let p = store.delete_policy(name)?;
            ctx.output(&p, || {
                format!("deleted policy {} (its snapshots stay)", p.name)
            })
        }
        PolicyCmd::Run { at } => {
            let access = store.access(cli.account.as_deref(), cli.identity.as_deref())?;
            let r = store.run_policies(&access, at.as_deref(), &ctx.progress)?;
            for e in &r.errors {
                ctx.note(&format!("error: {e}"));
            }
            ctx.output(&r, || {
                let mut t = String::new();
                for a in &r.taken {
                    t += &format!(
                        "took {} of {} ({}/{})\n",
                        a.snapshot, a.volume, a.policy, a.schedule
                    );
                }
                for a in &r.expired {
                    t += &format!(
                        "expired {} of {} to the trash ({}/{})\n",
                        a.snapshot, a.volume, a.policy, a.schedule
                    );
                }
                t + &format!(
                    "policy run at {}: {} taken, {} expired",
                    r.at,
                    r.taken.len(),
                    r.expired.len()
                )
            })?;
            if r.errors.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("{} volumes could not be snapshotted", r.errors.len())
            }
        }
    }
}

/// Bytes per second for people: `123.4 MiB/s`.
fn rate(bytes_per_sec: f64) -> String {
    if bytes_per_sec >= f64::from(1u32 << 30) {
        format!("{:.2} GiB/s", bytes_per_sec / f64::from(1u32 << 30))
    } else {
        format!("{:.1} MiB/s", bytes_per_sec / f64::from(1u32 << 20))
    }
}

fn bench(ctx: &Ctx<'_>, a: &args::BenchArgs) -> anyhow::Result<()> {
    use blocksnap_store::bench::{self, BenchOptions};
    let opts = BenchOptions {
        size: a.size,
        stage_seconds: a.stage_seconds,
        ..BenchOptions::default()
    };
    let r = bench::run(&opts, &ctx.progress)?;
    ctx.output(&r, || {
        let m = &r.machine;
        let cores = format!("{} cores", m.cores);
        let load = m.load_average.map_or(String::new(), |l| {
            format!(", load average {:.2} {:.2} {:.2}", l[0], l[1], l[2])
        });
        let mut t = format!(
            "blocksnap {} bench on {} ({}), {}{load}\n\n",
            m.version,
            m.cpu.as_deref().unwrap_or("unknown CPU"),
            cores,
            m.date
        );
        t += &format!(
            "{:<19} {:>13} {:>13} {:>8}  {}\n",
            "STAGE", "ONE CORE", cores.to_uppercase(), "SPEEDUP", "WHAT"
        );
        for s in &r.stages {
            t += &format!(
                "{:<19} {:>13} {:>13} {:>7.2}x  {}\n",
                s.name,
                rate(s.one_core_bytes_per_sec),
                rate(s.all_cores_bytes_per_sec),
                s.speedup,
                s.description
            );
        }
        let l = &r.stage_limit;
        t += &format!(
            "\nstage limit, snapshot: {} of data on {} (1/(1/read + 1/chunk + 1/hash + 1/index + \
             1/encode + 1/pack-write); slowest stage: {}; {} if one core's work scaled perfectly)\n\
             compute limit:         {} (chunk, hash and encode alone)\n\
             stage limit, restore:  {} of data (decode-verify on {})\n",
            rate(l.snapshot_bytes_per_sec),
            cores,
            l.snapshot_slowest_stage,
            rate(l.snapshot_ideal_bytes_per_sec),
            rate(l.snapshot_compute_bytes_per_sec),
            rate(l.restore_bytes_per_sec),
            cores,
        );
        let i = &r.image;
        t += &format!(
            "\nend to end: a {} image in {}: {} text-like, {} random, {} written zeros, {} unallocated\n",
            human(r.size),
            r.temp_dir.display(),
            human(i.text),
            human(i.random),
            human(i.zeros),
            human(i.holes)
        );
        t += &format!(
            "{:<30} {:>8} {:>6} {:>13} {:>13} {:>10} {:>10}\n",
            "RUN", "SECONDS", "CORES", "IMAGE", "DATA", "NEW", "STORED"
        );
        let changed = format!("incremental ({} changed)", human(r.changed_bytes));
        for (name, e) in [
            ("snapshot, fresh store", &r.snapshot),
            (changed.as_str(), &r.incremental),
            ("restore of the incremental", &r.restore),
        ] {
            t += &format!(
                "{:<30} {:>8.2} {:>6.2} {:>13} {:>13} {:>10} {:>10}\n",
                name,
                e.seconds,
                e.cores_busy,
                rate(e.bytes_per_sec),
                rate(e.data_bytes_per_sec),
                human(e.bytes_new),
                if std::ptr::eq(e, &r.restore) {
                    "-".to_string()
                } else {
                    human(e.bytes_stored)
                }
            );
        }
        t += &format!(
            "\nthe snapshot reached {:.0}% of the snapshot stage limit ({:.0}% of the compute \
             limit) and the restore {:.0}% of the restore limit (data bytes per second);\nthe \
             restore was compared byte for byte with the image: {}",
            r.snapshot_vs_limit * 100.0,
            r.snapshot.data_bytes_per_sec / l.snapshot_compute_bytes_per_sec * 100.0,
            r.restore_vs_limit * 100.0,
            if r.verified { "identical" } else { "DIFFERENT" }
        );
        t
    })
}
