//! Crash safety under SIGKILL, cumulative: a snapshot (and a prune) killed at twenty moments,
//! each kill acting on the store the previous one left (no fresh copies). After every kill the
//! store is valid (`check` passes), every snapshot committed so far restores byte-identical,
//! and the next run completes. Every kill is triggered by what the process has written — its
//! lock object, a staged pack, a committed pack, the volume's head swapped, the snapshot
//! document, a prune's first deletion — never by a timer, so each lands at its moment however
//! fast or slow the machine is: the tests count the kills after which the killed run had
//! committed its result and those after which it had not, and require both. (The library's
//! crash lab stops a run before each of its backend operations in turn; these kill the real
//! binary.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// When to send SIGKILL: as soon as this is true (polled every 100 µs).
type Kill<'a> = &'a dyn Fn() -> bool;

/// Starts `cmd` and kills it as `kill` says; true if it was still running then (false: it had
/// finished first).
fn kill(mut cmd: Command, kill: Kill) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if kill() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the command neither finished nor reached its kill point"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

/// `check` exits 0 on the store (unreferenced packs and temporary files are allowed).
fn assert_check_passes(env: &Env, when: &str) {
    let out = env.run(&["--json", "check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{when}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// The BLAKE2b digest of a file's bytes.
fn digest(path: &Path) -> String {
    let out = Command::new("b2sum").arg(path).output().unwrap();
    assert!(out.status.success(), "b2sum: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Restores every snapshot of `committed` (id, digest of what it was taken of) and asserts
/// each is byte-identical to it, and that no other snapshot is listed.
fn assert_all_restore(env: &Env, committed: &[(String, String)], when: &str) {
    let listed: Vec<String> = env.json(&["snapshot", "list"]).as_array().unwrap()[..]
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<&String> = committed.iter().map(|(id, _)| id).collect();
    let mut got: Vec<&String> = listed.iter().collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "{when}: the snapshots listed");
    let r = env.path("r.img");
    for (id, want) in committed {
        let _ = std::fs::remove_file(&r);
        env.restore(id, &r);
        assert_eq!(
            &digest(&r),
            want,
            "{when}: snapshot {id} does not restore byte-identical"
        );
    }
    let _ = std::fs::remove_file(&r);
}

/// Snapshot ids listed in the store's `snapshots/` folder.
fn snapshot_ids(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.store.join("snapshots"))
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json")
                    .filter(|_| !name.starts_with('.'))
                    .map(str::to_string)
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The committed packs of the store (not the temporary files of packs being written).
fn packs(env: &Env) -> Vec<std::path::PathBuf> {
    env.packs()
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

fn packs_size(env: &Env) -> u64 {
    packs(env)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// The lock objects in the store's `locks/` folder.
fn locks(env: &Env) -> Vec<PathBuf> {
    std::fs::read_dir(env.store.join("locks"))
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// The temporary files of packs being written (in `packs/` and its folders).
fn staged_packs(env: &Env) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut dirs = vec![env.store.join("packs")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                v.push(path);
            }
        }
    }
    v
}

/// Something in `now` that is not in `before`.
fn any_new(before: &[PathBuf], now: Vec<PathBuf>) -> bool {
    now.iter().any(|p| !before.contains(p))
}

fn assert_no_leftovers(env: &Env) {
    for sub in std::fs::read_dir(env.store.join("packs")).unwrap() {
        let sub = sub.unwrap().path();
        let names: Vec<String> = if sub.is_dir() {
            std::fs::read_dir(&sub)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        } else {
            vec![sub.file_name().unwrap().to_string_lossy().into_owned()]
        };
        for n in names {
            assert!(
                !n.starts_with(".tmp-"),
                "prune removes the temporary packs of killed runs: {n} is left"
            );
        }
    }
}

#[test]
fn snapshot_killed_at_twenty_moments_loses_nothing_committed() {
    let env = Env::new("crash_snapshot");
    env.init(&[]);
    // A reference store takes the same snapshots without kills: the size a store without
    // crashes has.
    let clean = Env::new("crash_snapshot_clean");
    clean.init(&[]);

    // A real ext4 image; every run finds one more region of it rewritten (a disk in use), so
    // each has new data to store, and the state of each kill builds on the last.
    let tree = env.path("tree");
    make_tree(&tree, 24, 31);
    let big = env.path("big.img");
    make_ext4(&big, 96 << 20, &tree);
    let first = env.snapshot(&big, "big");
    clean.snapshot(&big, "big");
    let mut committed = vec![(first["id"].as_str().unwrap().to_string(), digest(&big))];

    let head = env.store.join("heads/big.json");
    let (mut mid_run, mut committed_mid_run, mut cut_mid_run) = (0, 0, 0);
    for i in 0..20u64 {
        write_at(
            &big,
            96 << 20,
            (40 << 20) + (i << 21),
            &random_bytes(3 << 19, 100 + i),
        );
        clean.snapshot(&big, "big");
        let before = snapshot_ids(&env);
        let (locks_before, staged_before, packs_before) =
            (locks(&env), staged_packs(&env), packs(&env));
        let head_before = std::fs::read(&head).unwrap_or_default();
        let lock_taken = || any_new(&locks_before, locks(&env));
        let pack_staged = || any_new(&staged_before, staged_packs(&env));
        let pack_committed = || any_new(&packs_before, packs(&env));
        let head_swapped = || std::fs::read(&head).unwrap_or_default() != head_before;
        let doc_written = || snapshot_ids(&env).len() > before.len();
        // The moments in the order a snapshot reaches them.
        let when: Kill = match i % 5 {
            0 => &lock_taken,
            1 => &pack_staged,
            2 => &pack_committed,
            3 => &head_swapped,
            _ => &doc_written,
        };
        let mut cmd = env.cmd();
        cmd.args([
            "-q",
            "snapshot",
            "create",
            big.to_str().unwrap(),
            "--volume",
            "big",
        ]);
        let was_running = kill(cmd, when);
        let after = snapshot_ids(&env);
        let new: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
        assert!(new.len() <= 1, "kill {i}: {new:?}");
        if let Some(id) = new.first() {
            committed.push(((*id).clone(), digest(&big)));
        }
        if was_running {
            mid_run += 1;
            if new.is_empty() {
                cut_mid_run += 1;
            } else {
                committed_mid_run += 1;
            }
        }
        // The store is valid, and every snapshot committed so far restores byte-identical.
        let when = format!("after kill {i}");
        assert_check_passes(&env, &when);
        assert_all_restore(&env, &committed, &when);
    }
    eprintln!(
        "{mid_run} kills mid-run: {committed_mid_run} after the commit, {cut_mid_run} before; \
         {} snapshots committed",
        committed.len()
    );
    assert!(mid_run >= 10, "only {mid_run} kills landed mid-run");
    assert!(
        committed_mid_run >= 2 && cut_mid_run >= 2,
        "kills must land on both sides of the commit: {committed_mid_run} killed runs had \
         committed their snapshot, {cut_mid_run} had not"
    );

    // The next snapshot completes and restores; prune then reclaims what the killed runs left:
    // the store ends the size of the clean one, give or take.
    let done = env.snapshot(&big, "big");
    committed.push((done["id"].as_str().unwrap().to_string(), digest(&big)));
    env.json(&["prune"]);
    assert_no_leftovers(&env);
    assert_all_restore(&env, &committed, "at the end");
    let (size, clean_size) = (packs_size(&env), packs_size(&clean));
    assert!(
        size <= clean_size + clean_size / 5,
        "after kills and prune the store holds {size}, a clean one {clean_size}"
    );
    let out = env.run(&["--json", "check", "--read-data"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Garbage for one round of prune kills: `mixed` holds files A and B, `keep` only A, `gone`
/// C. Once mixed and gone are deleted, prune deletes C's pack and rewrites the pack mixing A
/// and B. Returns keep's snapshot id and digest.
fn make_garbage(env: &Env, round: u64) -> (String, String) {
    let dir = env.path(&format!("round{round}"));
    let (tree_mixed, tree_keep, tree_gone) =
        (dir.join("t-mixed"), dir.join("t-keep"), dir.join("t-gone"));
    let seed = 80 + 10 * round;
    make_tree(&tree_mixed.join("a"), 8, seed);
    make_tree(&tree_mixed.join("b"), 24, seed + 1);
    make_tree(&tree_keep.join("a"), 8, seed);
    make_tree(&tree_gone, 24, seed + 2);
    let (mixed, keep, gone) = (
        dir.join("mixed.img"),
        dir.join("keep.img"),
        dir.join("gone.img"),
    );
    make_ext4(&mixed, 64 << 20, &tree_mixed);
    make_ext4(&keep, 32 << 20, &tree_keep);
    make_ext4(&gone, 48 << 20, &tree_gone);
    let m = env.snapshot(&mixed, &format!("mixed{round}"));
    let k = env.snapshot(&keep, &format!("keep{round}"));
    let g = env.snapshot(&gone, &format!("gone{round}"));
    for s in [&m, &g] {
        env.json(&["snapshot", "delete", s["id"].as_str().unwrap()]);
    }
    env.json(&["trash", "empty"]);
    let kept = (k["id"].as_str().unwrap().to_string(), digest(&keep));
    std::fs::remove_dir_all(&dir).unwrap();
    kept
}

/// A prune killed at twenty moments, in five rounds of four kills on the garbage of that round
/// (each kill on what the last left; a completed prune ends each round): afterwards `check`
/// passes, every live snapshot restores byte-identical, and a new prune completes.
#[test]
fn prune_killed_at_twenty_moments_loses_nothing_live() {
    let env = Env::new("crash_prune");
    env.init(&[]);
    let mut live = Vec::new();
    let (mut mid_run, mut progressed_mid_run, mut idle_mid_run) = (0, 0, 0);
    for round in 0..5u64 {
        live.push(make_garbage(&env, round));
        for k in 0..4u64 {
            let i = round * 4 + k;
            let before = packs(&env);
            let (locks_before, staged_before) = (locks(&env), staged_packs(&env));
            let lock_taken = || any_new(&locks_before, locks(&env));
            let pack_staged = || any_new(&staged_before, staged_packs(&env));
            let new_pack = || any_new(&before, packs(&env));
            let deleted = || before.iter().any(|p| !p.exists());
            // Before prune changed anything (its lock taken, its rewritten pack being
            // written), then after (the rewritten pack committed, the first pack deleted).
            let when: Kill = match k {
                0 => &lock_taken,
                1 => &pack_staged,
                2 => &new_pack,
                _ => &deleted,
            };
            let mut cmd = env.cmd();
            cmd.args(["-q", "prune"]);
            let was_running = kill(cmd, when);
            if was_running {
                mid_run += 1;
                if packs(&env) == before {
                    idle_mid_run += 1;
                } else {
                    progressed_mid_run += 1;
                }
            }
            let when = format!("after kill {i}");
            assert_check_passes(&env, &when);
            assert_all_restore(&env, &live, &when);
        }
        // The next prune completes and leaves a sound store.
        env.json(&["prune"]);
        let out = env.run(&["--json", "check", "--read-data"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "after round {round} and prune: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    eprintln!(
        "{mid_run} kills mid-run: {progressed_mid_run} after some of prune's commits, \
         {idle_mid_run} before any"
    );
    assert!(mid_run >= 10, "only {mid_run} kills landed mid-run");
    assert!(
        progressed_mid_run >= 2 && idle_mid_run >= 2,
        "kills must land on both sides of prune's commits: {progressed_mid_run} killed prunes \
         had changed packs, {idle_mid_run} had not"
    );
    // Nothing is left to reclaim, and nothing of the killed runs is left over.
    let again = env.json(&["prune"]);
    assert_eq!(again["packs_deleted"], 0, "{again}");
    assert_eq!(again["packs_rewritten"], 0, "{again}");
    assert_no_leftovers(&env);
    assert_all_restore(&env, &live, "at the end");
}
