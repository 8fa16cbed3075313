//! Who this process is, as lock objects name it, and whether the process a lock object names
//! still runs: host name, boot id, pid and the pid's start time.

use std::fs;
use std::path::Path;

use blocksnap_manifest::{LockDoc, MAX_HOST_LEN};

/// This process, as lock objects name it.
#[derive(Clone, Debug)]
pub(crate) struct Me {
    pub host: String,
    pub boot_id: String,
    pub pid: u32,
}

impl Me {
    pub fn get() -> Me {
        Me {
            host: host_name(),
            boot_id: boot_id(),
            pid: std::process::id(),
        }
    }
}

/// This host's name: `BLOCKSNAP_HOSTNAME` when set (a container whose host name is not unique
/// among the hosts sharing a store, or tests playing several hosts), else
/// `/proc/sys/kernel/hostname`; reduced to the characters a lock object allows (others become
/// `_`); `localhost` if it cannot be read.
pub(crate) fn host_name() -> String {
    let raw = match std::env::var("BLOCKSNAP_HOSTNAME") {
        Ok(h) if !h.trim().is_empty() => h,
        _ => fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
    };
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
pub(crate) fn process_start(pid: u32) -> Option<u64> {
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
pub(crate) fn gone_reason(doc: &LockDoc, me: &Me) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
