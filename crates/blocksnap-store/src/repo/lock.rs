//! The store lock: lock objects in the store, `locks/HOST-PID-RANDOM.json` ([`LockDoc`]).
//!
//! No OS lock crosses the storage seam (an object store has none, and flock does not reach
//! other hosts over NFS), so every command that needs the store in a known state — snapshots,
//! restores and checks shared; prune and repair exclusive — creates its own lock object
//! (create-only), then reads all the others, and removes its object when it ends:
//!
//! - an object of this host whose process is gone (no `/proc/PID`, another boot id, or the
//!   pid now belongs to a process started later) is stale: it is removed, with a note;
//! - an object of this host whose process lives and conflicts (either side exclusive): this
//!   command removes its own object and waits (a note, then a retry every half second or so,
//!   for up to `BLOCKSNAP_LOCK_WAIT` seconds, default an hour), so a prune waits for the
//!   snapshots of this host and they wait for it;
//! - an object of another host whose `expires` has passed (a `blocksnap.lock/v2` object not
//!   refreshed in time: its host crashed, was cut off, or its process hangs) is expired: it is
//!   removed, with a note, and does not conflict;
//! - an object of another host that conflicts makes the command fail at once
//!   ([`StoreError::Locked`]), naming the holder, its age and `blocksnap unlock --all`;
//! - an object of an unknown format (a newer blocksnap) conflicts with everything, and so does
//!   one that cannot be read (another user's, say): it may be a real lock;
//! - a damaged object (not a valid `blocksnap.lock/v2` or `v1`, or longer than [`MAX_LOCK_LEN`]: it is
//!   then not read at all) is ignored with a note: blocksnap writes lock objects whole, so no
//!   running blocksnap holds the store through it.
//!
//! Whatever is in `locks/`, no command fails on it without naming the lock file and the
//! command that clears it (`blocksnap unlock`, or `blocksnap unlock --all`).
//!
//! Writing before reading means two commands starting conflicting work at once both see the
//! other's object: both back off (each after its own random delay) and one of them wins the
//! next round, rather than both running.
//!
//! **Refresh and expiry.** While held, a thread rewrites the object (compare-and-swap on its
//! version) every `BLOCKSNAP_LOCK_REFRESH` seconds (default 300) with a new `expires`
//! `BLOCKSNAP_LOCK_STALE` seconds ahead (default 1800). A refresh that finds the object gone or
//! changed (another host found it expired and removed it, or `unlock --all`) loses the lock at
//! once; one that fails otherwise (the store unreachable) keeps trying, and the lock is lost once
//! no refresh succeeded for the stale time less one refresh interval. A command checks that it
//! still holds its lock right before each commit point ([`Store::ensure_lock_held`]: before a
//! snapshot or image document, before the index is flushed, before prune deletes a pack) and
//! stops with [`StoreError::Locked`] if not, having committed nothing the lost lock should
//! have protected. See docs/ARCHITECTURE.md, "Locks and prune".

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blocksnap_backend::{Backend, BackendError, Version};
use blocksnap_manifest::{DocError, Document, LockDoc, LockKind};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::progress::Progress;
use crate::repo::Store;
#[cfg(test)]
use crate::repo::host::host_name;
use crate::repo::host::{Me, gone_reason, process_start};
use crate::repo::layout::Kind;

/// How often a held lock is refreshed and when an unrefreshed one is stale:
/// `BLOCKSNAP_LOCK_REFRESH` and `BLOCKSNAP_LOCK_STALE` seconds (fractions allowed, for tests),
/// default 300 and 1800.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LockTiming {
    pub refresh: Duration,
    pub stale: Duration,
}

fn env_seconds(var: &str, default: u64) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map_or(Duration::from_secs(default), Duration::from_secs_f64)
}

impl LockTiming {
    pub fn get() -> LockTiming {
        let stale = env_seconds("BLOCKSNAP_LOCK_STALE", 1800);
        let refresh = env_seconds("BLOCKSNAP_LOCK_REFRESH", 300).min(stale / 3);
        LockTiming { refresh, stale }
    }

    /// How long after its last successful refresh a holder still trusts its lock: the stale
    /// time less one refresh interval, so that it stops before any other host may take the
    /// lock for expired (with that interval to spare for clock skew).
    pub fn trusted(&self) -> Duration {
        self.stale.saturating_sub(self.refresh)
    }
}

/// A lock this process holds: its object, its content and version, and whether it is still
/// held (shared by the guard, its refresh thread and the store's list of held locks).
#[derive(Debug)]
pub(crate) struct Held {
    backend: Arc<dyn Backend>,
    key: String,
    file: String,
    timing: LockTiming,
    state: Mutex<HeldState>,
    /// Set (and notified) when the guard is dropped: the refresher ends.
    stop: (Mutex<bool>, Condvar),
}

#[derive(Debug)]
struct HeldState {
    doc: LockDoc,
    version: Version,
    last_ok: Instant,
    /// Why the lock is no longer held.
    lost: Option<String>,
}

impl Held {
    /// Rewrites the object with a new expiry, if it is still ours.
    fn refresh(&self) {
        let mut st = self.state.lock().expect("not poisoned");
        if st.lost.is_some() {
            return;
        }
        let mut doc = st.doc.clone();
        let now = jiff::Timestamp::now();
        doc.refreshed = Some(fsutil::rfc3339(now));
        doc.expires = Some(fsutil::rfc3339(add(now, self.timing.stale)));
        match self
            .backend
            .replace(&self.key, &doc.to_json(), Some(&st.version))
        {
            Ok(v) => {
                st.doc = doc;
                st.version = v;
                st.last_ok = Instant::now();
            }
            Err(
                BackendError::Conflict { .. }
                | BackendError::NotFound { .. }
                | BackendError::AlreadyExists { .. },
            ) => {
                st.lost = Some(format!(
                    "its lock object {} was removed or replaced by another process (a command \
                     of another host that found it expired, or `blocksnap unlock --all`)",
                    self.file
                ));
            }
            Err(e) if st.last_ok.elapsed() >= self.timing.trusted() => {
                st.lost = Some(format!(
                    "its lock object {} could not be refreshed for {} s (the last error: {e}), \
                     so other hosts may take it for expired",
                    self.file,
                    st.last_ok.elapsed().as_secs()
                ));
            }
            Err(_) => {} // tried again at the next tick
        }
    }

    /// Why this lock is no longer held, if it is not: lost, or not refreshed in time. With
    /// `fresh`, the object is read back too (one request): it must still be ours.
    fn why_not_held(&self, fresh: bool) -> Option<String> {
        let mut st = self.state.lock().expect("not poisoned");
        if st.lost.is_none() && st.last_ok.elapsed() >= self.timing.trusted() {
            st.lost = Some(format!(
                "its lock object {} was last refreshed {} s ago, too long for other hosts to \
                 still honour it (BLOCKSNAP_LOCK_STALE is {} s)",
                self.file,
                st.last_ok.elapsed().as_secs(),
                self.timing.stale.as_secs_f64()
            ));
        }
        if st.lost.is_none() && fresh {
            match self.backend.get_versioned_bounded(&self.key, MAX_LOCK_LEN) {
                Ok((_, v)) if v == st.version => {}
                Ok(_) | Err(BackendError::NotFound { .. }) => {
                    st.lost = Some(format!(
                        "its lock object {} was removed or replaced by another process (a \
                         command of another host that found it expired, or `blocksnap unlock \
                         --all`)",
                        self.file
                    ));
                }
                // The store cannot be read now: the commit that follows fails the same way,
                // or it succeeds within the time the lock is trusted.
                Err(_) => {}
            }
        }
        st.lost.clone()
    }
}

fn add(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    let d = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    t.checked_add(d).unwrap_or(jiff::Timestamp::MAX)
}

/// Held until dropped: this command's lock object (removed on drop), refreshed meanwhile by a
/// thread of its own. A reader of a read-only store holds none (see [`Store::lock_reading`]).
#[derive(Debug)]
pub(crate) struct StoreLock {
    object: Option<(Arc<dyn Backend>, String)>,
    held: Option<Arc<Held>>,
    refresher: Option<JoinHandle<()>>,
}

impl StoreLock {
    /// Starts the thread that refreshes the lock while it is held.
    fn start_refresh(&mut self) {
        let Some(held) = self.held.clone() else {
            return;
        };
        self.refresher = Some(std::thread::spawn(move || {
            let (flag, cv) = &held.stop;
            let mut stopped = flag.lock().expect("not poisoned");
            loop {
                // Checked before each wait: a guard dropped before this thread first waits
                // must not keep it (and the drop joining it) waiting a whole interval.
                if *stopped {
                    return;
                }
                let (s, timeout) = cv
                    .wait_timeout(stopped, held.timing.refresh)
                    .expect("not poisoned");
                stopped = s;
                if *stopped {
                    return;
                }
                if timeout.timed_out() {
                    drop(stopped);
                    held.refresh();
                    stopped = flag.lock().expect("not poisoned");
                }
            }
        }));
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            *held.stop.0.lock().expect("not poisoned") = true;
            held.stop.1.notify_all();
        }
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        if let Some((backend, key)) = self.object.take() {
            let _ = backend.delete(&key);
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
    /// Of another host, and its `expires` has passed: not refreshed in time, so not honoured
    /// (its holder stops before committing anything): safe to remove.
    Expired,
    /// Not a valid lock object; never honoured.
    Damaged,
    /// Written by a newer blocksnap (a format this one does not know); honoured as exclusive.
    UnknownFormat,
    /// Cannot be read (no permission, an I/O error); honoured as exclusive, as it may be real.
    Unreadable,
}

/// The longest lock object read (one is a few hundred bytes): a longer one is damaged, and is
/// not read into memory.
pub const MAX_LOCK_LEN: u64 = 64 << 10;

/// One lock object in `locks/`, as `unlock` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct LockEntry {
    /// The lock object as a person finds it (its path in a local store).
    pub file: PathBuf,
    /// Its key in the store.
    pub key: String,
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
    /// When it expires unless refreshed (RFC 3339; none for a v1 lock, which never expires).
    pub expires: Option<String>,
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
                "{command} ({}) on host {host}, pid {pid}, started {started} ({} ago){} (lock \
                 file {})",
                kind.as_str(),
                self.age(),
                if matches!(self.status, LockStatus::Stale | LockStatus::Expired) {
                    format!(": stale, {}", self.detail)
                } else {
                    String::new()
                },
                self.file.display()
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

/// Every lock object of `store` but `skip`, classified. An object removed while we list is
/// skipped.
fn scan(store: &Store, me: &Me, skip: Option<&str>) -> Result<Vec<LockEntry>> {
    let mut out = Vec::new();
    for name in store.names(Kind::Lock)? {
        let key = Kind::Lock.key(&name);
        if Some(key.as_str()) == skip {
            continue;
        }
        let file: PathBuf = store.describe(&key).into();
        let entry = match store.get_bounded(&key, MAX_LOCK_LEN) {
            Ok(None) => continue,
            Ok(Some(Ok(bytes))) => classify(file, key, &bytes, me),
            Ok(Some(Err(size))) => unparsed(
                file,
                key,
                LockStatus::Damaged,
                format!(
                    "it is {size} bytes long, more than a lock object can be ({MAX_LOCK_LEN} \
                     bytes); it was not read"
                ),
            ),
            Err(e) => unparsed(
                file,
                key,
                LockStatus::Unreadable,
                format!("cannot be read: {e}"),
            ),
        };
        out.push(entry);
    }
    Ok(out)
}

/// The entry of a lock object whose content is not known.
fn unparsed(file: PathBuf, key: String, status: LockStatus, detail: String) -> LockEntry {
    LockEntry {
        file,
        key,
        status,
        host: None,
        pid: None,
        kind: None,
        command: None,
        started: None,
        age_seconds: None,
        expires: None,
        detail,
    }
}

/// Seconds since `expires` passed, if it did.
fn expired_for(expires: &str) -> Option<u64> {
    let t: jiff::Timestamp = expires.parse().ok()?;
    let d = jiff::Timestamp::now().duration_since(t);
    (d > jiff::SignedDuration::ZERO).then(|| u64::try_from(d.as_secs()).unwrap_or(0))
}

fn classify(file: PathBuf, key: String, bytes: &[u8], me: &Me) -> LockEntry {
    match LockDoc::from_json(bytes) {
        Ok(doc) => {
            let (status, detail) = if doc.host == me.host {
                match gone_reason(&doc, me) {
                    Some(reason) => (LockStatus::Stale, reason),
                    None => (LockStatus::Running, String::new()),
                }
            } else {
                match doc.expires.as_deref().and_then(expired_for) {
                    Some(secs) => (
                        LockStatus::Expired,
                        format!(
                            "it expired {} ago (not refreshed since {})",
                            ago(secs),
                            doc.refreshed.as_deref().unwrap_or(&doc.started)
                        ),
                    ),
                    None => (LockStatus::OtherHost, String::new()),
                }
            };
            LockEntry {
                file,
                key,
                status,
                age_seconds: age_seconds(&doc.started),
                host: Some(doc.host),
                pid: Some(doc.pid),
                kind: Some(doc.kind),
                command: Some(doc.command),
                started: Some(doc.started),
                expires: doc.expires,
                detail,
            }
        }
        Err(e) => unparsed(
            file,
            key,
            if matches!(e, DocError::UnknownFormat { .. }) {
                LockStatus::UnknownFormat
            } else {
                LockStatus::Damaged
            },
            e.to_string(),
        ),
    }
}

fn stale_note(e: &LockEntry) -> String {
    format!(
        "removed a stale lock of {}pid {} ({}, started {}, {} ago): {}",
        if e.status == LockStatus::Expired {
            format!("host {}, ", e.host.as_deref().unwrap_or("?"))
        } else {
            String::new()
        },
        e.pid.unwrap_or(0),
        e.command.as_deref().unwrap_or("?"),
        e.started.as_deref().unwrap_or("?"),
        e.age(),
        e.detail
    )
}

/// How long a command waits for conflicting commands of this host: `BLOCKSNAP_LOCK_WAIT`
/// seconds, default an hour.
fn lock_wait() -> Duration {
    std::env::var("BLOCKSNAP_LOCK_WAIT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(3600), Duration::from_secs)
}

impl Store {
    fn lock(&self, kind: LockKind, command: &str, progress: &dyn Progress) -> Result<StoreLock> {
        self.require_writable(command)?;
        let exclusive = kind == LockKind::Exclusive;
        let me = Me::get();
        let started = Instant::now();
        let mut noted = false;
        loop {
            crate::cancel::check()?;
            let guard = self.write_lock_object(&me, kind, command)?;
            let own = guard.object.as_ref().map(|(_, k)| k.clone());
            let (mut others, mut here) = (Vec::new(), Vec::new());
            for e in scan(self, &me, own.as_deref())? {
                match e.status {
                    LockStatus::Stale | LockStatus::Expired => match self.delete_object(&e.key) {
                        Ok(()) => progress.message(&stale_note(&e)),
                        Err(err) => progress.message(&format!(
                            "cannot remove the stale lock {} ({err}); `blocksnap unlock` retries",
                            e.file.display()
                        )),
                    },
                    LockStatus::Running => {
                        if e.kind.is_some_and(|k| kind.conflicts_with(k)) {
                            here.push(e);
                        }
                    }
                    LockStatus::OtherHost => {
                        if e.kind.is_some_and(|k| kind.conflicts_with(k)) {
                            others.push(e);
                        }
                    }
                    LockStatus::UnknownFormat | LockStatus::Unreadable => others.push(e),
                    LockStatus::Damaged => progress.message(&format!(
                        "ignored a damaged lock file {}: {}; `blocksnap unlock` removes it",
                        e.file.display(),
                        e.detail
                    )),
                }
            }
            if !others.is_empty() {
                drop(guard);
                return Err(self.locked_error(command, exclusive, &others, false));
            }
            if here.is_empty() {
                let mut guard = guard;
                guard.start_refresh();
                return Ok(guard);
            }
            // A conflicting command of this host runs: step back, wait, try again.
            drop(guard);
            if started.elapsed() >= lock_wait() {
                return Err(self.locked_error(command, exclusive, &here, true));
            }
            if !noted {
                noted = true;
                progress.message(&if exclusive {
                    format!(
                        "waiting for other blocksnap commands on {} to finish (prune and repair \
                         need the store alone): {}",
                        self.place(),
                        here[0].describe()
                    )
                } else {
                    format!(
                        "waiting for a prune or repair on {} to finish: {}",
                        self.place(),
                        here[0].describe()
                    )
                });
            }
            let jitter = u64::from(u16::from_le_bytes(fsutil::random_bytes())) % 400;
            std::thread::sleep(Duration::from_millis(300 + jitter));
        }
    }

    /// Creates this command's lock object (not yet refreshed: see
    /// [`StoreLock::start_refresh`]).
    fn write_lock_object(&self, me: &Me, kind: LockKind, command: &str) -> Result<StoreLock> {
        let timing = self.lock_timing();
        let now = jiff::Timestamp::now();
        let doc = LockDoc {
            format: LockDoc::FORMAT.into(),
            host: me.host.clone(),
            pid: me.pid,
            kind,
            command: command.into(),
            started: fsutil::rfc3339(now),
            boot_id: me.boot_id.clone(),
            pid_start: process_start(me.pid).unwrap_or(0),
            refreshed: Some(fsutil::rfc3339(now)),
            expires: Some(fsutil::rfc3339(add(now, timing.stale))),
        };
        let host_part: String = me.host.chars().take(64).collect();
        let name = format!("{host_part}-{}-{}", me.pid, fsutil::random_hex(4));
        let key = Kind::Lock.key(&name);
        let created = Instant::now();
        // Create-only (no compare-and-swap: on a local store that would take the store's swap
        // lock, which a frozen process could then hold), then its version: the refresher swaps
        // it only while it is still ours.
        self.create_doc(Kind::Lock, &name, &doc)?;
        let version = match self.backend().get_versioned_bounded(&key, MAX_LOCK_LEN) {
            Ok((_, v)) => v,
            Err(e) => {
                let _ = self.backend().delete(&key);
                return Err(self.object_error(&key)(e));
            }
        };
        if let Some(root) = self.local_root() {
            // A process ended by a second signal removes it on its way out.
            crate::cancel::register(crate::cancel::Kind::Lock, &root.join(&key));
        }
        let held = Arc::new(Held {
            backend: self.backend().clone(),
            file: self.describe(&key),
            key: key.clone(),
            timing,
            state: Mutex::new(HeldState {
                doc,
                version,
                last_ok: created,
                lost: None,
            }),
            stop: (Mutex::new(false), Condvar::new()),
        });
        self.held_locks
            .lock()
            .expect("not poisoned")
            .push(Arc::downgrade(&held));
        Ok(StoreLock {
            object: Some((self.backend().clone(), key)),
            held: Some(held),
            refresher: None,
        })
    }

    /// The lock timing of this store's commands ([`LockTiming::get`], read once).
    pub(crate) fn lock_timing(&self) -> LockTiming {
        *self.lock_timing.get_or_init(LockTiming::get)
    }

    /// Fails with [`StoreError::Locked`] if this process took a lock on the store and no longer
    /// holds it (see the module doc): called right before each commit point, so that a command
    /// whose lock was lost commits nothing. `what` names the commit (`commit snapshot …`).
    /// With `fresh`, each lock object is read back (one request each).
    pub(crate) fn ensure_lock_held(&self, what: &str, fresh: bool) -> Result<()> {
        let held: Vec<Arc<Held>> = {
            let mut list = self.held_locks.lock().expect("not poisoned");
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for h in held {
            if let Some(why) = h.why_not_held(fresh) {
                return Err(StoreError::Locked(format!(
                    "stopped before {what} on {}: this command no longer holds the store lock: \
                     {why}. Nothing was committed that the lock had to protect; run the command \
                     again (what it stored is reused, and prune reclaims the rest)",
                    self.place()
                )));
            }
        }
        Ok(())
    }

    /// The error of a command that cannot take the lock because of `holders`.
    fn locked_error(
        &self,
        command: &str,
        exclusive: bool,
        holders: &[LockEntry],
        waited: bool,
    ) -> StoreError {
        let mut msg = match (exclusive, waited) {
            (true, false) => format!(
                "cannot start {command}: it needs the store {} alone, and another host uses it:",
                self.place()
            ),
            (false, false) => format!(
                "cannot start {command}: another host holds the store {} exclusively:",
                self.place()
            ),
            (_, true) => format!(
                "cannot start {command}: waited {} s (BLOCKSNAP_LOCK_WAIT) for these commands \
                 on the store {}:",
                lock_wait().as_secs(),
                self.place()
            ),
        };
        for e in holders {
            msg += "\n  ";
            msg += &e.describe();
        }
        let unknown = holders
            .iter()
            .any(|e| matches!(e.status, LockStatus::UnknownFormat | LockStatus::Unreadable));
        msg += if waited {
            "\nTry again when they finish."
        } else if unknown {
            "\nA lock this blocksnap cannot read is honoured, as it may be real. If no blocksnap \
             (a newer one, or another user's) is running on this store, `blocksnap unlock --all` \
             removes it."
        } else {
            "\nIf that is still running, wait for it to finish and try again. If it is not \
             (its host crashed or was switched off), `blocksnap unlock --all` removes its lock."
        };
        StoreError::Locked(msg)
    }

    /// For commands that only read (restore, diff, serve, check): the shared lock; on a
    /// read-only store no lock at all, with a note saying so: a prune running elsewhere at the
    /// same time is not kept off. Lock objects of other hosts that conflict are named in a
    /// note, not honoured: on a read-only copy of a store they may be frozen there forever.
    pub(crate) fn lock_reading(&self, command: &str, progress: &dyn Progress) -> Result<StoreLock> {
        let Some(why) = self.read_only().map(str::to_owned) else {
            return self.lock_shared(command, progress);
        };
        if !self
            .read_only_noted
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            progress.message(&format!(
                "note: the store {} is read-only ({why}): {command} reads it without a lock \
                 (none could be taken), so a prune running at the same time, on this host or \
                 another, is not excluded",
                self.place()
            ));
            for e in scan(self, &Me::get(), None).unwrap_or_default() {
                let conflicts = match e.status {
                    LockStatus::OtherHost | LockStatus::Running => {
                        e.kind == Some(LockKind::Exclusive)
                    }
                    LockStatus::UnknownFormat | LockStatus::Unreadable => true,
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
            held: None,
            refresher: None,
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
        scan(self, &Me::get(), None)
    }

    /// Removes lock objects that no running command holds: stale ones of this host (their
    /// process is gone), expired ones of other hosts and damaged ones, which are never honoured. With `all`, also those of
    /// other hosts and of unknown formats: only when sure that no blocksnap runs on those
    /// hosts. Locks of running processes of this host are always kept.
    pub fn unlock(&self, all: bool) -> Result<UnlockReport> {
        self.require_writable("unlock")?;
        let mut report = UnlockReport::default();
        for e in self.locks()? {
            let go = match e.status {
                LockStatus::Stale | LockStatus::Expired | LockStatus::Damaged => true,
                LockStatus::OtherHost | LockStatus::UnknownFormat | LockStatus::Unreadable => all,
                LockStatus::Running => false,
            };
            if go {
                self.delete_object(&e.key)?;
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
    use std::fs;

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
            config_home: Some(dir.path().join("config")),
            encryption: false,
            ..InitOptions::default()
        };
        let (store, _) = Store::init(&dir.path().join("store"), &opts).unwrap();
        (dir, store)
    }

    fn put(store: &Store, name: &str, doc: &LockDoc) -> PathBuf {
        let p = store.local_root().unwrap().join("locks").join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, doc.to_json()).unwrap();
        p
    }

    /// A v1 lock object (no expiry), as blocksnap wrote them before v2.
    fn lock_doc(host: &str, pid: u32, kind: LockKind) -> LockDoc {
        LockDoc {
            format: LockDoc::FORMAT_V1.into(),
            host: host.into(),
            pid,
            kind,
            command: "prune".into(),
            started: "2020-01-01T00:00:00.000Z".into(),
            boot_id: String::new(),
            pid_start: 0,
            refreshed: None,
            expires: None,
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
        let garbage = store.local_root().unwrap().join("locks").join("x.json");
        fs::create_dir_all(garbage.parent().unwrap()).unwrap();
        fs::write(&garbage, b"\xff{not json").unwrap();
        let notes = Notes::default();
        drop(store.lock_exclusive("prune", &notes).unwrap());
        assert!(notes.0.into_inner().unwrap()[0].contains("x.json"));
        let newer = store.local_root().unwrap().join("locks").join("y.json");
        fs::write(&newer, br#"{"format": "blocksnap.lock/v9"}"#).unwrap();
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

    /// A local backend that cannot read the lock object `locks/theirs.json` (as another user's
    /// lock without read permission would be to a user who is not root).
    #[derive(Debug)]
    struct NoRead(blocksnap_backend::LocalBackend);

    impl NoRead {
        fn refuse(&self, key: &str) -> blocksnap_backend::Result<()> {
            if key == "locks/theirs.json" {
                return Err(blocksnap_backend::BackendError::from_io(
                    "read",
                    key,
                    "here",
                    std::io::Error::other("permission denied (simulated)"),
                ));
            }
            Ok(())
        }
    }

    impl Backend for NoRead {
        fn location(&self) -> String {
            self.0.location()
        }
        fn create(&self, key: &str, data: &[u8]) -> blocksnap_backend::Result<()> {
            self.0.create(key, data)
        }
        fn stage(
            &self,
            under: &str,
        ) -> blocksnap_backend::Result<Box<dyn blocksnap_backend::Staged>> {
            self.0.stage(under)
        }
        fn get(&self, key: &str) -> blocksnap_backend::Result<Vec<u8>> {
            self.refuse(key)?;
            self.0.get(key)
        }
        fn get_bounded(&self, key: &str, max: u64) -> blocksnap_backend::Result<Vec<u8>> {
            self.refuse(key)?;
            self.0.get_bounded(key, max)
        }
        fn get_range(
            &self,
            key: &str,
            offset: u64,
            len: u64,
        ) -> blocksnap_backend::Result<Vec<u8>> {
            self.refuse(key)?;
            self.0.get_range(key, offset, len)
        }
        fn head(
            &self,
            key: &str,
        ) -> blocksnap_backend::Result<Option<blocksnap_backend::ObjectMeta>> {
            self.0.head(key)
        }
        fn list(
            &self,
            prefix: &str,
        ) -> blocksnap_backend::Result<Vec<blocksnap_backend::ObjectMeta>> {
            self.0.list(prefix)
        }
        fn delete(&self, key: &str) -> blocksnap_backend::Result<()> {
            self.0.delete(key)
        }
        fn get_versioned(
            &self,
            key: &str,
        ) -> blocksnap_backend::Result<(Vec<u8>, blocksnap_backend::Version)> {
            self.refuse(key)?;
            self.0.get_versioned(key)
        }
        fn open(
            &self,
            key: &str,
        ) -> blocksnap_backend::Result<Arc<dyn blocksnap_backend::ObjectReader>> {
            self.refuse(key)?;
            self.0.open(key)
        }
        fn replace(
            &self,
            key: &str,
            data: &[u8],
            expected: Option<&blocksnap_backend::Version>,
        ) -> blocksnap_backend::Result<blocksnap_backend::Version> {
            self.0.replace(key, data, expected)
        }
    }

    #[test]
    fn unreadable_and_oversized_locks_name_themselves_and_the_fix() {
        let (_d, store) = store();
        let root = store.local_root().unwrap().to_path_buf();
        // Longer than a lock object can be: not read (a sparse file of 1 GiB), ignored with a
        // note naming it and `blocksnap unlock`, removed by it.
        let big = root.join("locks").join("big.json");
        fs::create_dir_all(big.parent().unwrap()).unwrap();
        fs::File::create(&big).unwrap().set_len(1 << 30).unwrap();
        let notes = Notes::default();
        drop(store.lock_exclusive("prune", &notes).unwrap());
        let notes = notes.0.into_inner().unwrap();
        assert!(
            notes[0].contains("big.json")
                && notes[0].contains("more than a lock object can be")
                && notes[0].contains("`blocksnap unlock`"),
            "{notes:?}"
        );

        // One that cannot be read stops what it may conflict with, named with `unlock --all`.
        fs::write(root.join("locks").join("theirs.json"), b"{}").unwrap();
        let store = Store::open_in(
            Arc::new(NoRead(blocksnap_backend::LocalBackend::new(&root))),
            crate::repo::Place::Local(root.clone()),
        )
        .unwrap();
        let err = store.lock_shared("snapshot", &NoProgress).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), crate::ErrorKind::Locked);
        assert!(
            msg.contains("theirs.json")
                && msg.contains("cannot be read")
                && msg.contains("blocksnap unlock --all"),
            "{msg}"
        );
        let r = store.unlock(false).unwrap();
        assert_eq!(r.removed.len(), 1, "the big one");
        assert_eq!(r.kept[0].status, LockStatus::Unreadable);
        let r = store.unlock(true).unwrap();
        assert_eq!(r.removed[0].status, LockStatus::Unreadable);
        drop(store.lock_exclusive("prune", &NoProgress).unwrap());
    }

    #[test]
    fn every_holder_is_named_with_its_file() {
        let (_d, store) = store();
        put(
            &store,
            "h.json",
            &lock_doc("otherhost", 7, LockKind::Exclusive),
        );
        let msg = store
            .lock_shared("snapshot", &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("h.json") && msg.contains("unlock --all"),
            "{msg}"
        );
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

    /// A v2 lock object of `host` expiring `secs` seconds from now (in the past if negative).
    fn v2_doc(host: &str, kind: LockKind, secs: i64) -> LockDoc {
        let now = jiff::Timestamp::now();
        let at = now
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap();
        LockDoc {
            format: LockDoc::FORMAT.into(),
            refreshed: Some(fsutil::rfc3339(now)),
            expires: Some(fsutil::rfc3339(at)),
            ..lock_doc(host, 4242, kind)
        }
    }

    #[test]
    fn expired_locks_of_other_hosts_do_not_block_live_ones_do() {
        let (_d, store) = store();
        // Expired an hour ago: not honoured; the command removes it, saying so.
        let expired = put(
            &store,
            "old.json",
            &v2_doc("otherhost", LockKind::Exclusive, -3600),
        );
        assert_eq!(store.locks().unwrap()[0].status, LockStatus::Expired);
        let notes = Notes::default();
        drop(store.lock_shared("snapshot", &notes).unwrap());
        assert!(!expired.exists());
        let notes = notes.0.into_inner().unwrap();
        assert!(
            notes[0].contains("removed a stale lock of host otherhost")
                && notes[0].contains("expired"),
            "{notes:?}"
        );
        // Live (expires in an hour): it blocks, as a v1 lock of another host does.
        let live = put(
            &store,
            "live.json",
            &v2_doc("otherhost", LockKind::Exclusive, 3600),
        );
        let err = store.lock_shared("snapshot", &NoProgress).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Locked, "{err}");
        assert!(err.to_string().contains("live.json"), "{err}");
        // `unlock` without --all removes expired ones and keeps live ones.
        put(
            &store,
            "old.json",
            &v2_doc("otherhost", LockKind::Shared, -10),
        );
        let r = store.unlock(false).unwrap();
        assert_eq!(r.removed.len(), 1, "{r:?}");
        assert_eq!(r.removed[0].status, LockStatus::Expired);
        assert_eq!(r.kept[0].status, LockStatus::OtherHost);
        assert!(live.exists());
    }

    /// Waits (up to a minute) until `f` holds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn held_locks_are_refreshed_and_a_lost_one_stops_the_commit() {
        let (_d, store) = store();
        store
            .lock_timing
            .set(LockTiming {
                refresh: Duration::from_millis(100),
                stale: Duration::from_secs(30),
            })
            .unwrap();
        let lock = store.lock_shared("snapshot", &NoProgress).unwrap();
        let (_, key) = lock.object.clone().unwrap();
        let read = || LockDoc::from_json(&store.backend().get(&key).unwrap()).unwrap();
        let first = read();
        assert_eq!(first.format, LockDoc::FORMAT);
        eventually("the lock is refreshed", || read().expires != first.expires);
        store.ensure_lock_held("committing", true).unwrap();
        // Another host found it expired and removed it: the next commit point stops.
        store.backend().delete(&key).unwrap();
        let err = store
            .ensure_lock_held("committing snapshot x", true)
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Locked);
        let msg = err.to_string();
        assert!(
            msg.contains("stopped before committing snapshot x")
                && msg.contains("removed or replaced")
                && msg.contains(&key),
            "{msg}"
        );
        drop(lock);
        // A new lock is a new hold.
        let again = store.lock_shared("snapshot", &NoProgress).unwrap();
        store.ensure_lock_held("committing", true).unwrap();
        drop(again);
    }

    #[test]
    fn a_lock_taken_over_by_its_refresh_is_lost_at_once() {
        let (_d, store) = store();
        store
            .lock_timing
            .set(LockTiming {
                refresh: Duration::from_millis(50),
                stale: Duration::from_secs(30),
            })
            .unwrap();
        let lock = store.lock_exclusive("prune", &NoProgress).unwrap();
        let (_, key) = lock.object.clone().unwrap();
        // Replaced under its name: its refresh's compare-and-swap fails.
        let mut other = LockDoc::from_json(&store.backend().get(&key).unwrap()).unwrap();
        other.command = "someone else".into();
        std::fs::write(store.local_root().unwrap().join(&key), other.to_json()).unwrap();
        eventually("the refresh notices", || {
            lock.held
                .as_ref()
                .unwrap()
                .state
                .lock()
                .unwrap()
                .lost
                .is_some()
        });
        let err = store.ensure_lock_held("deleting packs", false).unwrap_err();
        assert!(err.to_string().contains("removed or replaced"), "{err}");
    }

    #[test]
    fn a_lock_not_refreshed_in_time_is_not_trusted() {
        let (_d, store) = store();
        // A refresh interval it never reaches before the lock is no longer trusted: as if
        // every refresh failed (the store unreachable).
        let timing = LockTiming {
            refresh: Duration::from_millis(100),
            stale: Duration::from_millis(300),
        };
        assert_eq!(timing.trusted(), Duration::from_millis(200));
        store.lock_timing.set(timing).unwrap();
        let lock = store
            .write_lock_object(&Me::get(), LockKind::Shared, "snapshot")
            .unwrap();
        store.ensure_lock_held("committing", false).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        let err = store.ensure_lock_held("committing", false).unwrap_err();
        assert!(err.to_string().contains("last refreshed"), "{err}");
        drop(lock);
    }

    #[test]
    fn lock_timing_comes_from_the_environment_with_sane_bounds() {
        assert_eq!(
            env_seconds("BLOCKSNAP_NO_SUCH_VARIABLE", 300),
            Duration::from_secs(300)
        );
        let t = LockTiming::get();
        assert!(t.refresh <= t.stale / 3, "{t:?}");
    }
}
