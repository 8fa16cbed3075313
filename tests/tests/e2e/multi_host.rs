//! Several hosts on one store (issue 15, "Locks and prune" in docs/S3.md): each "host" is the
//! binary run with its own `BLOCKSNAP_HOSTNAME` and its own cache (index), sharing the store and
//! the account's identity; against a local directory and against a real S3 server (moto).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use blocksnap_s3::moto::S3Server;
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

use crate::common::*;

/// One host of a shared store.
struct Host<'a> {
    env: &'a Env,
    name: &'static str,
    moto: Option<&'a S3Server>,
    /// Extra environment (lock timing for the tests).
    vars: Vec<(&'static str, String)>,
}

impl Host<'_> {
    fn cmd(&self) -> Command {
        let mut c = self.env.cmd();
        c.env("BLOCKSNAP_HOSTNAME", self.name)
            .env(
                "XDG_CACHE_HOME",
                self.env.path(&format!("cache-{}", self.name)),
            )
            .env("BLOCKSNAP_S3_RETRY_TIMEOUT", "5")
            .env_remove("BLOCKSNAP_PRUNE_GRACE");
        if let Some(m) = self.moto {
            c.envs(m.env());
        }
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd().arg("--json").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "host {}: blocksnap {args:?} failed ({:?}):\n{}",
            self.name,
            out.status,
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn snapshot(&self, image: &Path, volume: &str) -> Value {
        self.json(&[
            "snapshot",
            "create",
            image.to_str().unwrap(),
            "--volume",
            volume,
        ])
    }

    fn spawn_snapshot(&self, image: &Path, volume: &str) -> Child {
        self.cmd()
            .args([
                "--json",
                "snapshot",
                "create",
                image.to_str().unwrap(),
                "--volume",
                volume,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn finished(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

/// Prune runs on host A while host B snapshots data that shares chunks with the snapshot the
/// prune reclaims. Made deterministic: B's snapshot starts after A's prune condemned the packs
/// and would dedup against every chunk of them; A's next prune, after the grace, deletes them.
/// B stored those chunks again (a condemned pack is never reused), so nothing B needs is gone:
/// everything restores byte-identical and `check --read-data` is clean. Had B reused them, its
/// snapshot would name chunks of deleted packs, and the last prune would not have deleted
/// exactly the condemned packs (it would have had to keep them).
fn prune_while_another_host_snapshots(env: &Env, moto: Option<&S3Server>, grace: &str) {
    // On S3 a grace must exceed the lock stale time: both short, for the test.
    let vars = vec![
        ("BLOCKSNAP_LOCK_STALE", "1".to_string()),
        ("BLOCKSNAP_LOCK_REFRESH", "0.2".to_string()),
    ];
    let a = Host {
        env,
        name: "host-a",
        moto,
        vars: vars.clone(),
    };
    let b = Host {
        env,
        name: "host-b",
        moto,
        vars,
    };
    a.json(&["init", "--account", "alice"]);

    let mut shared = random_bytes(3 << 20, 21);
    shared.extend(text_bytes(1 << 20, 22));
    let old = env.path("old.img");
    std::fs::write(&old, &shared).unwrap();
    let gone = a.snapshot(&old, "old");
    // A keeps one volume of its own meanwhile.
    let keep = env.path("keep.img");
    std::fs::write(&keep, random_bytes(2 << 20, 23)).unwrap();
    let kept = a.snapshot(&keep, "keep");
    a.json(&["snapshot", "delete", gone["id"].as_str().unwrap()]);
    a.json(&["trash", "empty"]);

    // Phase one: the packs of the deleted snapshot are condemned, none deleted.
    let first = a.json(&["prune", "--grace", grace]);
    let marked = n(&first, "packs_marked");
    assert!(marked >= 1, "{first}");
    assert_eq!(n(&first, "packs_deleted"), 0, "{first}");
    assert_eq!(n(&first, "packs_pending"), marked, "{first}");

    // Host B snapshots the same data and more, while host A snapshots too: two hosts at once.
    let mut data_b = shared.clone();
    data_b.extend(random_bytes(1 << 20, 24));
    let img_b = env.path("b.img");
    std::fs::write(&img_b, &data_b).unwrap();
    let mut more_a = random_bytes(1 << 20, 25);
    more_a.extend(&shared[..1 << 20]);
    let img_a = env.path("a2.img");
    std::fs::write(&img_a, &more_a).unwrap();
    let (ca, cb) = (
        a.spawn_snapshot(&img_a, "a2"),
        b.spawn_snapshot(&img_b, "b"),
    );
    let (sa, sb) = (finished(ca), finished(cb));
    // Every chunk shared with the condemned packs was stored again, none reused from them. The
    // two run at once and share the first MiB of `shared`: what one of them reused can only be
    // the other's fresh copy of that MiB (a chunk boundary may widen it by a chunk), never the
    // other 3 MiB that only the condemned packs held.
    let overlap = (1u64 << 20) + (64 << 10);
    let reused_b = data_b.len() as u64 - n(&sb, "bytes_new");
    let reused_a = more_a.len() as u64 - n(&sa, "bytes_new");
    assert!(reused_b <= overlap, "{sb}");
    assert!(reused_a <= overlap, "{sa}");

    // Phase two, after the grace: exactly the condemned packs go.
    let secs: f64 = grace.parse().unwrap();
    std::thread::sleep(Duration::from_secs_f64(secs + 0.2));
    let second = a.json(&["prune", "--grace", grace]);
    assert_eq!(n(&second, "packs_deleted"), marked, "{second}");
    assert_eq!(n(&second, "packs_unmarked"), 0, "{second}");

    // Everything restores byte-identical, on either host, and the store is sound.
    for (host, snap, bytes) in [
        (&b, &sb, &data_b),
        (&a, &sa, &more_a),
        (&b, &kept, &std::fs::read(&keep).unwrap()),
    ] {
        let out = env.path(&format!(
            "out-{}-{}.img",
            host.name,
            snap["volume"].as_str().unwrap()
        ));
        host.json(&[
            "snapshot",
            "restore",
            snap["id"].as_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(
            std::fs::read(&out).unwrap() == **bytes,
            "{} differs",
            out.display()
        );
    }
    let check = b.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    let check = a.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}

#[test]
fn prune_while_another_host_snapshots_on_a_local_store() {
    let env = Env::new("multi_host_local");
    prune_while_another_host_snapshots(&env, None, "1.5");
}

#[test]
fn prune_while_another_host_snapshots_on_s3() {
    let moto = S3Server::start();
    moto.create_bucket("hosts");
    let mut env = Env::new("multi_host_s3");
    env.store = PathBuf::from("s3://hosts/shared");
    prune_while_another_host_snapshots(&env, Some(&moto), "1.5");
}

/// Host B's snapshot is frozen (SIGSTOP) while it holds its lock, so the lock is not
/// refreshed: while it is live, host A's prune is refused; once it has expired, A's prune
/// ignores and removes it and runs. B, thawed, finds its lock gone and stops before
/// committing: no snapshot of it appears, and the store is sound.
#[test]
fn an_expired_lock_does_not_block_and_its_holder_stops_before_committing() {
    let env = Env::new("multi_host_expiry");
    let vars = vec![
        ("BLOCKSNAP_LOCK_STALE", "3".to_string()),
        ("BLOCKSNAP_LOCK_REFRESH", "1".to_string()),
    ];
    let a = Host {
        env: &env,
        name: "host-a",
        moto: None,
        vars: vars.clone(),
    };
    let b = Host {
        env: &env,
        name: "host-b",
        moto: None,
        vars,
    };
    a.json(&["init", "--account", "alice"]);
    let big = env.path("big.img");
    std::fs::write(&big, random_bytes(160 << 20, 31)).unwrap();
    let child = b.spawn_snapshot(&big, "big");
    let locks = env.store.join("locks");
    let start = Instant::now();
    loop {
        let held = std::fs::read_dir(&locks).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("host-b-"))
        });
        if held {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "host B never took its lock"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // Past the lock's creation (its refresh, every second, swaps in a few milliseconds).
    std::thread::sleep(Duration::from_millis(100));
    kill_process(Pid::from_child(&child), Signal::STOP).unwrap();
    let listed = a.json(&["snapshot", "list"]);
    assert_eq!(
        listed.as_array().map_or(0, Vec::len),
        0,
        "host B committed before it was stopped: make the image larger ({listed})"
    );

    // Live: the prune is refused, naming B.
    let out = a.run(&["prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("host host-b"), "{}", stderr(&out));

    // Expired (not refreshed for longer than the stale time): the prune runs and removes it.
    std::thread::sleep(Duration::from_secs(4));
    let out = a.cmd().args(["--json", "prune"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("removed a stale lock of host host-b"),
        "{}",
        stderr(&out)
    );

    kill_process(Pid::from_child(&child), Signal::CONT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    // It stops at its next commit point, or earlier: the prune that ran alone removed the
    // temporary file of the pack it was writing.
    assert!(
        (err.contains("no longer holds the store lock") && err.contains("Nothing was committed"))
            || err.contains("cannot create packs/"),
        "{err}"
    );
    let listed = a.json(&["snapshot", "list"]);
    assert_eq!(listed.as_array().map_or(0, Vec::len), 0, "{listed}");
    let check = a.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    // A run that holds its lock completes.
    b.snapshot(&big, "big");
}
