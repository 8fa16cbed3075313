//! The store lock, in two layers.
//!
//! 1. `locks/store.lock`, an OS file lock (flock), arbitrates between the processes of this
//!    host: snapshots, restores and checks hold it shared; prune and repair hold it exclusively
//!    and wait for the others. The kernel releases it however a process ends.
//! 2. A **lock object** `locks/HOST-PID-RANDOM.json` ([`LockDoc`]) is written once the flock is
//!    held and removed when the lock is dropped, so that other hosts sharing the store (an OS
//!    lock does not reach them over NFS and the like) see who holds it. After writing its own
//!    object a command reads all the others:
//!    - an object of this host whose process is gone (no `/proc/PID`, another boot id, or the
//!      pid now belongs to a process started later) is stale: it is removed, with a note;
//!    - an object of this host whose process lives is already arbitrated by the flock;
//!    - an object of another host that conflicts (either side exclusive) makes the command
//!      fail at once ([`StoreError::Locked`]), naming the holder, its age and
//!      `blocksnap unlock --all`;
//!    - an object of an unknown format (a newer blocksnap) conflicts with everything;
//!    - a damaged object (not a valid `blocksnap.lock/v1`) is ignored with a note: blocksnap
//!      writes lock objects atomically, so no running blocksnap holds the store through it.
//!
//!    Writing before reading means two hosts starting conflicting commands at once both see
//!    the other's object, and both fail, rather than both running.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use blocksnap_manifest::{DocError, Document, LockDoc, LockKind, MAX_HOST_LEN};
use rustix::fs::{FlockOperation, flock};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::fsutil::{self, TMP_PREFIX};
use crate::progress::Progress;
use crate::repo::Store;

/// Held until dropped: the flock, and this command's lock object (removed on drop). A reader of
/// a read-only store may hold neither (see [`Store::lock_reading`]).
#[derive(Debug)]
pub(crate) struct StoreLock {
    object: Option<PathBuf>,
    _file: Option<File>,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // The object goes first, while the flock (released when `_file` drops) is still held.
        if let Some(path) = self.object.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// What `unlock` found about one lock object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockStatus {
    /// Of this host, its process is gone: safe to remove.
    Stale,
    /// Of this host, its process is running.
    Running,
    /// Of another host: this host cannot tell whether it still runs.
    OtherHost,
    /// Not a valid lock object; never honoured.
    Damaged,
    /// Written by a newer blocksnap (a format this one does not know); honoured as exclusive.
    UnknownFormat,
}

/// One lock object in `locks/`, as `unlock` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct LockEntry {
    /// The lock object's path.
    pub file: PathBuf,
    /// Stale, running, of another host, damaged or of an unknown format.
    pub status: LockStatus,
    /// The holder's host (none when damaged).
    pub host: Option<String>,
    /// The holder's process id.
    pub pid: Option<u32>,
    /// Shared or exclusive.
    pub kind: Option<LockKind>,
    /// The command holding it.
    pub command: Option<String>,
    /// When it was taken (RFC 3339).
    pub started: Option<String>,
    /// Seconds since it was taken (none if `started` does not parse).
    pub age_seconds: Option<u64>,
    /// Why it is stale, or what is wrong with a damaged one; empty otherwise.
    pub detail: String,
}

impl LockEntry {
    /// One line for people: who holds it, since when (and why it is stale, if it is).
    pub fn describe(&self) -> String {
        match (
            &self.host,
            self.pid,
            self.kind,
            &self.command,
            &self.started,
        ) {
            (Some(host), Some(pid), Some(kind), Some(command), Some(started)) => format!(
                "{command} ({}) on host {host}, pid {pid}, started {started} ({} ago){}",
                kind.as_str(),
                self.age(),
                if self.status == LockStatus::Stale {
                    format!(": stale, {}", self.detail)
                } else {
                    String::new()
                }
            ),
            _ => format!("lock file {}: {}", self.file.display(), self.detail),
        }
    }

    fn age(&self) -> String {
        self.age_seconds.map_or_else(|| "unknown time".into(), ago)
    }
}

/// What `unlock` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UnlockReport {
    /// Lock objects removed.
    pub removed: Vec<LockEntry>,
    /// Lock objects left in place (running here, or of other hosts without `--all`).
    pub kept: Vec<LockEntry>,
}

/// This process, as lock objects name it.
#[derive(Clone, Debug)]
struct Me {
    host: String,
    boot_id: String,
    pid: u32,
}

impl Me {
    fn get() -> Me {
        Me {
            host: host_name(),
            boot_id: boot_id(),
            pid: std::process::id(),
        }
    }
}

/// This host's name from `/proc/sys/kernel/hostname`, reduced to the characters a lock object
/// allows (others become `_`); `localhost` if it cannot be read.
pub(crate) fn host_name() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    sanitize_host(raw.trim())
}

fn sanitize_host(raw: &str) -> String {
    let mut h: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    h = h.trim_start_matches(['.', '-']).to_string();
    h.truncate(MAX_HOST_LEN);
    if h.is_empty() { "localhost".into() } else { h }
}

/// The kernel's boot id; empty if it cannot be read.
fn boot_id() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let id = raw.trim();
    if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        id.to_string()
    } else {
        String::new()
    }
}

/// A process's start time in clock ticks after boot (`/proc/PID/stat` field 22).
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_start(&stat)
}

fn parse_stat_start(stat: &str) -> Option<u64> {
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses, so split after the
    // last ')'. The field after it is field 3; field 22 is the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Why a lock of this host is stale, or `None` if its process may still run.
fn gone_reason(doc: &LockDoc, me: &Me) -> Option<String> {
    if !doc.boot_id.is_empty() && !me.boot_id.is_empty() && doc.boot_id != me.boot_id {
        return Some("this host has restarted since".into());
    }
    if !Path::new("/proc/self").exists() {
        // Without /proc nothing can be told: assume the holder runs.
        return None;
    }
    if !Path::new(&format!("/proc/{}", doc.pid)).exists() {
        return Some("its process is gone".into());
    }
    match process_start(doc.pid) {
        Some(start) if doc.pid_start != 0 && start != doc.pid_start => Some(format!(
            "its process is gone (pid {} now belongs to another process)",
            doc.pid
        )),
        _ => None,
    }
}

/// Seconds as a short age: `42 s`, `12 min`, `5 h`, `3 d`.
fn ago(secs: u64) -> String {
    match secs {
        0..90 => format!("{secs} s"),
        90..5400 => format!("{} min", secs / 60),
        5400..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

fn age_seconds(started: &str) -> Option<u64> {
    let t: jiff::Timestamp = started.parse().ok()?;
    let secs = jiff::Timestamp::now().duration_since(t).as_secs();
    Some(u64::try_from(secs).unwrap_or(0))
}

/// Every lock object in `dir` (not the flock file, not temporary files), classified. An
/// object removed while we list is skipped.
fn scan(dir: &Path, me: &Me, skip: Option<&Path>) -> Result<Vec<LockEntry>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io("cannot list", dir)(e)),
    };
    let mut paths = Vec::new();
    for e in entries {
        let path = e.map_err(StoreError::io("cannot list", dir))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".json") && !name.starts_with(TMP_PREFIX) && Some(&*path) != skip {
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("cannot read lock object", &path)(e)),
        };
        out.push(classify(path, &bytes, me));
    }
    Ok(out)
}

fn classify(file: PathBuf, bytes: &[u8], me: &Me) -> LockEntry {
    match LockDoc::from_json(bytes) {
        Ok(doc) => {
            let (status, detail) = if doc.host == me.host {
                match gone_reason(&doc, me) {
                    Some(reason) => (LockStatus::Stale, reason),
                    None => (LockStatus::Running, String::new()),
                }
            } else {
                (LockStatus::OtherHost, String::new())
            };
            LockEntry {
                file,
                status,
                age_seconds: age_seconds(&doc.started),
                host: Some(doc.host),
                pid: Some(doc.pid),
                kind: Some(doc.kind),
                command: Some(doc.command),
                started: Some(doc.started),
                detail,
            }
        }
        Err(e) => LockEntry {
            file,
            status: if matches!(e, DocError::UnknownFormat { .. }) {
                LockStatus::UnknownFormat
            } else {
                LockStatus::Damaged
            },
            host: None,
            pid: None,
            kind: None,
            command: None,
            started: None,
            age_seconds: None,
            detail: e.to_string(),
        },
    }
}

/// Removes a lock object; one already gone is fine.
fn remove(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn stale_note(e: &LockEntry) -> String {
    format!(
        "removed a stale lock of pid {} ({}, started {}, {} ago): {}",
        e.pid.unwrap_or(0),
        e.command.as_deref().unwrap_or("?"),
        e.started.as_deref().unwrap_or("?"),
        e.age(),
        e.detail
    )
}

impl Store {
    fn lock(&self, kind: LockKind, command: &str, progress: &dyn Progress) -> Result<StoreLock> {
        self.require_writable(command)?;
        let exclusive = kind == LockKind::Exclusive;
        let dir = self.root().join("locks");
        std::fs::create_dir_all(&dir).map_err(StoreError::io("cannot create", &dir))?;
        let path = dir.join("store.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("cannot open lock", &path))?;
        let (try_op, op) = if exclusive {
            (
                FlockOperation::NonBlockingLockExclusive,
                FlockOperation::LockExclusive,
            )
        } else {
            (
                FlockOperation::NonBlockingLockShared,
                FlockOperation::LockShared,
            )
        };
        if flock(&file, try_op).is_err() {
            progress.message(&if exclusive {
                format!("waiting for other blocksnap commands on {} to finish (prune and repair need the store alone)", self.root().display())
            } else {
                format!("waiting for a prune or repair on {} to finish", self.root().display())
            });
            flock(&file, op).map_err(|e| StoreError::Io {
                what: "cannot lock",
                path: path.clone(),
                source: e.into(),
            })?;
        }

        // The lock object: written first, then the others are read (see the module doc).
        let me = Me::get();
        let doc = LockDoc {
            format: LockDoc::FORMAT.into(),
            host: me.host.clone(),
            pid: me.pid,
            kind,
            command: command.into(),
            started: fsutil::now_rfc3339(),
            boot_id: me.boot_id.clone(),
            pid_start: process_start(me.pid).unwrap_or(0),
        };
        let host_part: String = me.host.chars().take(64).collect();
        let object = dir.join(format!(
            "{host_part}-{}-{}.json",
            me.pid,
            fsutil::random_hex(4)
        ));
        fsutil::write_atomic(&object, &doc.to_json(), 0o644)?;
        crate::cancel::register(crate::cancel::Kind::Lock, &object);
        let guard = StoreLock {
            object: Some(object.clone()),
            _file: Some(file),
        };

        let mut conflicts = Vec::new();
        for e in scan(&dir, &me, Some(&object))? {
            match e.status {
                LockStatus::Stale => match remove(&e.file) {
                    Ok(()) => progress.message(&stale_note(&e)),
                    Err(err) => progress.message(&format!(
                        "cannot remove the stale lock {} ({err}); `blocksnap unlock` retries",
                        e.file.display()
                    )),
                },
                LockStatus::Running => {}
                LockStatus::OtherHost => {
                    if e.kind.is_some_and(|k| kind.conflicts_with(k)) {
                        conflicts.push(e);
                    }
                }
                LockStatus::UnknownFormat => conflicts.push(e),
                LockStatus::Damaged => progress.message(&format!(
                    "ignored a damaged lock file {}: {}; `blocksnap unlock` removes it",
                    e.file.display(),
                    e.detail
                )),
            }
        }
        if conflicts.is_empty() {
            return Ok(guard);
        }
        let mut msg = if exclusive {
            format!(
                "cannot start {command}: it needs the store {} alone, and another host uses it:",
                self.root().display()
            )
        } else {
            format!(
                "cannot start {command}: another host holds the store {} exclusively:",
                self.root().display()
            )
        };
        for e in &conflicts {
            msg += "\n  ";
            msg += &e.describe();
        }
        msg += "\nIf that is still running, wait for it to finish and try again. If it is not \
                (its host crashed or was switched off), `blocksnap unlock --all` removes its lock.";
        drop(guard);
        Err(StoreError::Locked(msg))
    }

    /// For commands that only read (restore, diff, serve, check): the shared lock; on a
    /// read-only store, what can be had without writing, with a note saying so. That is this
    /// host's flock when `locks/store.lock` exists (it keeps this host's prunes off), but no lock
    /// object: a prune on another host sharing the store is not kept off. Lock objects of other
    /// hosts that conflict are named in a note, not honoured: on a read-only copy of a store they
    /// may be frozen there forever.
    pub(crate) fn lock_reading(&self, command: &str, progress: &dyn Progress) -> Result<StoreLock> {
        let Some(why) = self.read_only().map(str::to_owned) else {
            return self.lock_shared(command, progress);
        };
        let dir = self.root().join("locks");
        let path = dir.join("store.lock");
        let file = match File::open(&path) {
            Ok(f) => match flock(&f, FlockOperation::NonBlockingLockShared) {
                Ok(()) => Some(f),
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    progress.message(&format!(
                        "waiting for a prune or repair on {} to finish",
                        self.root().display()
                    ));
                    flock(&f, FlockOperation::LockShared).map_err(|e| StoreError::Io {
                        what: "cannot lock",
                        path: path.clone(),
                        source: e.into(),
                    })?;
                    Some(f)
                }
                Err(_) => None,
            },
            Err(_) => None,
        };
        if !self
            .read_only_noted
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            progress.message(&format!(
                "note: the store {} is read-only ({why}): {command} reads it without a lock {}",
                self.root().display(),
                if file.is_some() {
                    "object (this host's lock file is held, so prunes on this host wait), so a \
                     prune on another host sharing the store is not excluded"
                } else {
                    "(none could be taken), so a prune running at the same time, on this host or \
                     another, is not excluded"
                }
            ));
            for e in scan(&dir, &Me::get(), None).unwrap_or_default() {
                let conflicts = match e.status {
                    LockStatus::OtherHost => e.kind == Some(LockKind::Exclusive),
                    LockStatus::UnknownFormat => true,
                    _ => false,
                };
                if conflicts {
                    progress.message(&format!(
                        "note: the store's locks show {}; if that still runs, {command} may fail \
                         on data it removes (what is read is verified, never wrong)",
                        e.describe()
                    ));
                }
            }
        }
        Ok(StoreLock {
            object: None,
            _file: file,
        })
    }

    /// Shared: for snapshot, restore and check. `command` names the holder in its lock object.
    pub(crate) fn lock_shared(&self, command: &str, progress: &dyn Progress) -> Result<StoreLock> {
        self.lock(LockKind::Shared, command, progress)
    }

    /// Exclusive: for prune and repair.
    pub(crate) fn lock_exclusive(
        &self,
        command: &str,
        progress: &dyn Progress,
    ) -> Result<StoreLock> {
        self.lock(LockKind::Exclusive, command, progress)
    }

    /// Lists the lock objects in `locks/`, each classified (stale, running, other host,
    /// damaged, unknown format). Changes nothing.
    pub fn locks(&self) -> Result<Vec<LockEntry>> {
        scan(&self.root().join("locks"), &Me::get(), None)
    }

    /// Removes lock objects that no running command holds: stale ones of this host (their
    /// process is gone) and damaged ones, which are never honoured. With `all`, also those of
    /// other hosts and of unknown formats: only when sure that no blocksnap runs on those
    /// hosts. Locks of running processes of this host are always kept.
    pub fn unlock(&self, all: bool) -> Result<UnlockReport> {
        self.require_writable("unlock")?;
        let mut report = UnlockReport::default();
        for e in self.locks()? {
            let go = match e.status {
                LockStatus::Stale | LockStatus::Damaged => true,
                LockStatus::OtherHost | LockStatus::UnknownFormat => all,
                LockStatus::Running => false,
            };
            if go {
                remove(&e.file).map_err(StoreError::io("cannot remove lock object", &e.file))?;
                report.removed.push(e);
            } else {
                report.kept.push(e);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitOptions, NoProgress};

    #[test]
    fn stat_start_time_is_field_22() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 200 18446744073709551615";
        assert_eq!(parse_stat_start(stat), Some(987_654));
        assert_eq!(parse_stat_start("garbage"), None);
        assert_eq!(parse_stat_start("1 (x) S 1"), None);
        assert!(process_start(std::process::id()).is_some());
    }

    #[test]
    fn host_names_are_made_safe() {
        assert_eq!(
            sanitize_host("build-01.example.com"),
            "build-01.example.com"
        );
        assert_eq!(sanitize_host("a b/c"), "a_b_c");
        assert_eq!(sanitize_host(""), "localhost");
        assert_eq!(sanitize_host("..-x"), "x");
        assert!(blocksnap_manifest::validate_host(&host_name()).is_ok());
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(ago(5), "5 s");
        assert_eq!(ago(600), "10 min");
        assert_eq!(ago(7200), "2 h");
        assert_eq!(ago(3 * 86_400), "3 d");
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            account: "alice".into(),
            identity: Some(dir.path().join("alice.key")),
            encryption: false,
            ..InitOptions::default()
        };
        let (store, _) = Store::init(&dir.path().join("store"), &opts).unwrap();
        (dir, store)
    }

    fn put(store: &Store, name: &str, doc: &LockDoc) -> PathBuf {
        let p = store.root().join("locks").join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, doc.to_json()).unwrap();
        p
    }

    fn lock_doc(host: &str, pid: u32, kind: LockKind) -> LockDoc {
        LockDoc {
            format: LockDoc::FORMAT.into(),
            host: host.into(),
            pid,
            kind,
            command: "prune".into(),
            started: "2020-01-01T00:00:00.000Z".into(),
            boot_id: String::new(),
            pid_start: 0,
        }
    }

    /// Collects messages.
    #[derive(Default)]
    struct Notes(std::sync::Mutex<Vec<String>>);
    impl Progress for Notes {
        fn message(&self, text: &str) {
            self.0.lock().unwrap().push(text.into());
        }
    }

    #[test]
    fn lock_object_lives_as_long_as_the_lock() {
        let (_d, store) = store();
        let lock = store.lock_shared("snapshot", &NoProgress).unwrap();
        let locks = store.locks().unwrap();
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].status, LockStatus::Running);
        assert_eq!(locks[0].command.as_deref(), Some("snapshot"));
        assert_eq!(locks[0].pid, Some(std::process::id()));
        // Shared beside shared in one process: the flock allows it, and so do the objects.
        let second = store.lock_shared("restore", &NoProgress).unwrap();
        assert_eq!(store.locks().unwrap().len(), 2);
        // `unlock --all` keeps locks of running processes of this host.
        let r = store.unlock(true).unwrap();
        assert!(r.removed.is_empty());
        assert_eq!(r.kept.len(), 2);
        drop((lock, second));
        assert!(store.locks().unwrap().is_empty());
    }

    #[test]
    fn other_hosts_conflict_by_kind_and_stale_locks_go() {
        let (_d, store) = store();
        let shared = put(
            &store,
            "b.json",
            &lock_doc("otherhost", 7, LockKind::Shared),
        );
        store.lock_shared("snapshot", &NoProgress).unwrap();
        let err = store.lock_exclusive("prune", &NoProgress).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Locked);
        let msg = err.to_string();
        for part in [
            "otherhost",
            "pid 7",
            "unlock --all",
            "cannot start prune",
            " d ago",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        // The failed command left no object of its own.
        assert_eq!(store.locks().unwrap().len(), 1);
        fs::remove_file(shared).unwrap();

        // A stale lock of this host: a pid that cannot exist.
        let stale = put(
            &store,
            "c.json",
            &lock_doc(&host_name(), u32::MAX - 1, LockKind::Exclusive),
        );
        let notes = Notes::default();
        drop(store.lock_exclusive("prune", &notes).unwrap());
        assert!(!stale.exists());
        let notes = notes.0.into_inner().unwrap();
        assert!(
            notes[0].starts_with(&format!("removed a stale lock of pid {}", u32::MAX - 1))
                && notes[0].ends_with("its process is gone"),
            "{notes:?}"
        );
    }

    #[test]
    fn damaged_and_unknown_locks() {
        let (_d, store) = store();
        let garbage = store.root().join("locks").join("x.json");
        fs::create_dir_all(garbage.parent().unwrap()).unwrap();
        fs::write(&garbage, b"\xff{not json").unwrap();
        let notes = Notes::default();
        drop(store.lock_exclusive("prune", &notes).unwrap());
        assert!(notes.0.into_inner().unwrap()[0].contains("x.json"));
        let newer = store.root().join("locks").join("y.json");
        fs::write(&newer, br#"{"format": "blocksnap.lock/v2"}"#).unwrap();
        let err = store.lock_shared("check", &NoProgress).unwrap_err();
        assert!(err.to_string().contains("y.json"), "{err}");
        // Plain unlock removes the damaged one only; --all the newer one too.
        let r = store.unlock(false).unwrap();
        assert_eq!((r.removed.len(), r.kept.len()), (1, 1));
        assert_eq!(r.removed[0].status, LockStatus::Damaged);
        let r = store.unlock(true).unwrap();
        assert_eq!(r.removed[0].status, LockStatus::UnknownFormat);
        assert!(store.locks().unwrap().is_empty());
    }

    #[test]
    fn reused_pid_and_reboot_make_a_lock_stale() {
        let me = Me::get();
        let mut doc = lock_doc(&me.host, me.pid, LockKind::Shared);
        assert_eq!(gone_reason(&doc, &me), None);
        doc.pid_start = process_start(me.pid).unwrap() + 1;
        assert!(gone_reason(&doc, &me).unwrap().contains("another process"));
        doc.pid_start = 0;
        if !me.boot_id.is_empty() {
            doc.boot_id = "0000".into();
            assert!(gone_reason(&doc, &me).unwrap().contains("restarted"));
        }
    }
}
