//! Another process holding this user's index of a store: a command that needs the index waits
//! up to `BLOCKSNAP_LOCK_WAIT` seconds, then fails as locked (exit 1), naming the process that
//! holds it; a restore does not wait (it reads chunk locations from the pack trailers); once the
//! holder lets go, snapshots run again.

use std::fs;
use std::time::Duration;

use crate::common::*;

#[test]
fn a_held_index_fails_a_snapshot_as_locked_naming_the_holder() {
    let env = Env::new("index_busy");
    env.init(&[]);
    let img = env.path("d.img");
    fs::write(&img, random_bytes(1 << 20, 3)).unwrap();
    let first = env.snapshot(&img, "d");

    // This test process holds the index, as a running snapshot, check or prune would.
    let held = blocksnap_index::Index::open(&env.index_dir(), Duration::from_secs(5), |_| {})
        .expect("the index opens");
    let out = env
        .cmd()
        .env("BLOCKSNAP_LOCK_WAIT", "0")
        .args(["snapshot", "create", img.to_str().unwrap(), "--volume", "d"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for part in [
        "is in use by another blocksnap process".to_string(),
        format!("(pid {}: ", std::process::id()),
        "Try again when it finishes, or raise BLOCKSNAP_LOCK_WAIT".to_string(),
    ] {
        assert!(err.contains(&part), "the error lacks {part:?}:\n{err}");
    }
    let listed = env.json(&["snapshot", "list"]);
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "a failed snapshot committed nothing: {listed}"
    );

    // A restore does not need the index.
    let r = env.path("r.img");
    env.restore(first["id"].as_str().unwrap(), &r);
    assert_same(&img, &r);

    drop(held);
    env.snapshot(&img, "d");
}
