//! Lock objects: `locks/HOST-PID-RANDOM.json`, written while a command holds the store lock, so
//! that other hosts sharing the store (over NFS, on an object store, where an OS file lock does
//! not reach) see who holds it, and this host can tell a lock left by a killed process.
//!
//! `blocksnap.lock/v2` adds `refreshed` and `expires`: the holder rewrites its object every few
//! minutes, and another host may treat one whose `expires` has passed as stale. `v1` objects
//! (written by blocksnap before v2) are still read: they have no expiry, so another host's v1
//! lock is honoured until `unlock --all` removes it, as before. A blocksnap that knows only v1
//! sees a v2 object as an unknown format and honours it as exclusive: it never runs beside a
//! newer one believing itself alone.

use serde::{Deserialize, Serialize};

use crate::docs::{Document, validate_time};
use crate::error::DocError;

/// Longest host name accepted (a fully qualified DNS name is at most 253 characters).
pub const MAX_HOST_LEN: usize = 253;
/// Longest command name accepted.
pub const MAX_LOCK_COMMAND_LEN: usize = 64;

/// How a lock holds the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// Beside other shared holders: snapshot, restore, check.
    Shared,
    /// Alone: prune, repair.
    Exclusive,
}

impl LockKind {
    /// `shared` or `exclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockKind::Shared => "shared",
            LockKind::Exclusive => "exclusive",
        }
    }

    /// Whether a lock of this kind and one of `other` cannot be held at once.
    pub fn conflicts_with(self, other: LockKind) -> bool {
        self == LockKind::Exclusive || other == LockKind::Exclusive
    }
}

/// `locks/HOST-PID-RANDOM.json`: one command's hold on the store. The file name is only
/// unique; the content is what counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockDoc {
    /// `blocksnap.lock/v2` (`blocksnap.lock/v1` read too).
    pub format: String,
    /// The holder's host name.
    pub host: String,
    /// The holder's process id on that host.
    pub pid: u32,
    /// Shared or exclusive.
    pub kind: LockKind,
    /// The command holding it (`snapshot`, `prune`).
    pub command: String,
    /// When it was taken (RFC 3339, UTC).
    pub started: String,
    /// The holder's kernel boot id (`/proc/sys/kernel/random/boot_id`); empty if unknown. A
    /// lock of this host with another boot id was left before a reboot.
    #[serde(default)]
    pub boot_id: String,
    /// The holder's start time in clock ticks after boot (`/proc/PID/stat` field 22); 0 if
    /// unknown. Tells a live holder from a new process that reuses its pid.
    #[serde(default)]
    pub pid_start: u64,
    /// When the holder last rewrote the object (RFC 3339, UTC; v2). Absent in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<String>,
    /// When the lock is stale unless refreshed again (RFC 3339, UTC; v2): the holder stops
    /// before committing anything once it could not refresh in time. Absent in v1: a v1 lock
    /// never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl LockDoc {
    /// The format blocksnap wrote before v2 (no `refreshed`, no `expires`).
    pub const FORMAT_V1: &'static str = "blocksnap.lock/v1";
}

impl Document for LockDoc {
    const KIND: &'static str = "lock";
    const FORMAT: &'static str = "blocksnap.lock/v2";
    const OLDER_FORMATS: &'static [&'static str] = &[LockDoc::FORMAT_V1];
    fn validate(&self) -> Result<(), DocError> {
        validate_host(&self.host)?;
        if self.pid == 0 {
            return Err(DocError::invalid(Self::KIND, "pid", "must not be 0"));
        }
        if self.command.is_empty()
            || self.command.len() > MAX_LOCK_COMMAND_LEN
            || !self
                .command
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " -_".contains(c))
        {
            return Err(DocError::invalid(
                Self::KIND,
                "command",
                format!("must be 1 to {MAX_LOCK_COMMAND_LEN} letters, digits, spaces, - or _"),
            ));
        }
        validate_time(Self::KIND, "started", &self.started)?;
        if let Some(t) = &self.refreshed {
            validate_time(Self::KIND, "refreshed", t)?;
        }
        if let Some(t) = &self.expires {
            validate_time(Self::KIND, "expires", t)?;
        }
        if self.format == Self::FORMAT && self.expires.is_none() {
            return Err(DocError::invalid(
                Self::KIND,
                "expires",
                "is missing (a v2 lock always has one)",
            ));
        }
        if self.boot_id.len() > 64
            || !self
                .boot_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return Err(DocError::invalid(
                Self::KIND,
                "boot_id",
                "must be at most 64 hex digits and dashes",
            ));
        }
        Ok(())
    }
}

/// Checks a host name: 1 to 253 characters, letters, digits and `-_.`, not starting with a dot
/// or a dash (it is part of the lock's file name).
pub fn validate_host(host: &str) -> Result<(), DocError> {
    let ok = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !host.starts_with('.')
        && !host.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(DocError::invalid(
            LockDoc::KIND,
            "host",
            format!(
                "'{}' must be 1 to {MAX_HOST_LEN} letters, digits, - _ or ., not starting with . or -",
                host.chars().take(40).collect::<String>()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LockDoc {
        LockDoc {
            format: LockDoc::FORMAT.into(),
            host: "otherhost".into(),
            pid: 4242,
            kind: LockKind::Exclusive,
            command: "prune".into(),
            started: "2026-11-23T19:30:24.000Z".into(),
            boot_id: "6f0c5c1e-8a1b-4a2e-9d6e-0123456789ab".into(),
            pid_start: 123_456,
            refreshed: Some("2026-11-23T19:35:24.000Z".into()),
            expires: Some("2026-11-23T20:05:24.000Z".into()),
        }
    }

    #[test]
    fn lock_round_trips() {
        let l = sample();
        assert_eq!(LockDoc::from_json(&l.to_json()).unwrap(), l);
        // A v1 lock (older blocksnap): boot_id and pid_start may be left out, and it has no
        // expiry.
        let minimal = br#"{"format":"blocksnap.lock/v1","host":"h","pid":7,"kind":"shared",
            "command":"snapshot","started":"2026-11-23T19:30:24Z"}"#;
        let l = LockDoc::from_json(minimal).unwrap();
        assert_eq!((l.boot_id.as_str(), l.pid_start), ("", 0));
        assert_eq!((l.refreshed.as_deref(), l.expires.as_deref()), (None, None));
        // A v2 lock must say when it expires.
        let mut v2 = sample();
        v2.expires = None;
        let err = LockDoc::from_json(&v2.to_json()).unwrap_err().to_string();
        assert!(err.contains("'expires'"), "{err}");
    }

    #[test]
    fn bad_locks_are_named() {
        for (field, edit) in [
            (
                "host",
                Box::new(|l: &mut LockDoc| l.host = "../x".into()) as Box<dyn Fn(&mut LockDoc)>,
            ),
            ("host", Box::new(|l: &mut LockDoc| l.host = String::new())),
            ("pid", Box::new(|l: &mut LockDoc| l.pid = 0)),
            (
                "command",
                Box::new(|l: &mut LockDoc| l.command = "rm\n".into()),
            ),
            (
                "started",
                Box::new(|l: &mut LockDoc| l.started = "yesterday".into()),
            ),
            (
                "boot_id",
                Box::new(|l: &mut LockDoc| l.boot_id = "zz".into()),
            ),
            (
                "expires",
                Box::new(|l: &mut LockDoc| l.expires = Some("soon".into())),
            ),
            (
                "refreshed",
                Box::new(|l: &mut LockDoc| l.refreshed = Some("1".into())),
            ),
        ] {
            let mut l = sample();
            edit(&mut l);
            let err = LockDoc::from_json(&l.to_json()).unwrap_err().to_string();
            assert!(err.contains(&format!("'{field}'")), "{err}");
        }
        assert!(LockDoc::from_json(b"garbage").is_err());
        assert!(LockDoc::from_json(br#"{"format":"blocksnap.lock/v1","kind":"weird"}"#).is_err());
        assert!(matches!(
            LockDoc::from_json(br#"{"format":"blocksnap.lock/v3"}"#),
            Err(DocError::UnknownFormat { .. })
        ));
    }

    #[test]
    fn only_shared_with_shared_is_compatible() {
        use LockKind::*;
        assert!(!Shared.conflicts_with(Shared));
        assert!(Shared.conflicts_with(Exclusive));
        assert!(Exclusive.conflicts_with(Shared));
        assert!(Exclusive.conflicts_with(Exclusive));
    }
}
