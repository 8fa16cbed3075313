//! The conformance suite: the contract of [`Backend`] as checks that every backend must pass.
//!
//! Call [`run`] from a test with a function that makes a fresh, empty backend; it runs every
//! check on its own fresh backend and panics with the name of the first that fails.
//!
//! ```
//! blocksnap_backend::conformance::run(&|| std::sync::Arc::new(blocksnap_backend::MemoryBackend::new()));
//! ```

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Backend, BackendError};

/// A check: its name and its body.
type Check = (&'static str, fn(&dyn Backend));

/// Every check, in order.
pub const CHECKS: &[Check] = &[
    ("create_then_get", create_then_get),
    ("create_is_create_only", create_is_create_only),
    ("racing_creates_one_wins", racing_creates_one_wins),
    ("missing_objects_are_typed", missing_objects_are_typed),
    (
        "bounded_reads_refuse_larger_objects",
        bounded_reads_refuse_larger_objects,
    ),
    ("range_reads_at_the_edges", range_reads_at_the_edges),
    ("listing_by_prefix", listing_by_prefix),
    (
        "listing_while_another_thread_writes",
        listing_while_another_thread_writes,
    ),
    ("delete_is_idempotent", delete_is_idempotent),
    ("staged_objects", staged_objects),
    ("compare_and_swap", compare_and_swap),
    (
        "compare_and_swap_under_contention",
        compare_and_swap_under_contention,
    ),
    ("invalid_keys_are_refused", invalid_keys_are_refused),
];

/// Runs every check, each on a backend `make` returns fresh and empty.
pub fn run(make: &dyn Fn() -> Arc<dyn Backend>) {
    for (name, check) in CHECKS {
        let backend = make();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&*backend)));
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "backend {} fails conformance check `{name}`: {msg}",
                backend.location()
            );
        }
    }
}

fn create_then_get(b: &dyn Backend) {
    b.create("config", b"cfg").unwrap();
    b.create("packs/ab/abcdef", &[7u8; 100_000]).unwrap();
    b.create("empty", b"").unwrap();
    assert_eq!(b.get("config").unwrap(), b"cfg");
    assert_eq!(b.get("packs/ab/abcdef").unwrap(), vec![7u8; 100_000]);
    assert_eq!(b.get("empty").unwrap(), b"");
    let head = b.head("packs/ab/abcdef").unwrap().expect("exists");
    assert_eq!(head.size, 100_000);
    assert_eq!(head.key, "packs/ab/abcdef");
}

fn create_is_create_only(b: &dyn Backend) {
    b.create("snapshots/s.json", b"first").unwrap();
    let e = b.create("snapshots/s.json", b"second").unwrap_err();
    assert!(e.is_already_exists(), "second create gave {e:?}");
    assert_eq!(b.get("snapshots/s.json").unwrap(), b"first", "overwritten");
}

fn racing_creates_one_wins(b: &dyn Backend) {
    for round in 0..5 {
        let key = format!("race/k{round}");
        let wins = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let (key, wins) = (&key, &wins);
                s.spawn(move || match b.create(key, &[t; 4096]) {
                    Ok(()) => {
                        wins.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => assert!(e.is_already_exists(), "{e:?}"),
                });
            }
        });
        assert_eq!(wins.load(Ordering::SeqCst), 1, "exactly one create wins");
        let data = b.get(&key).unwrap();
        assert_eq!(data.len(), 4096);
        assert!(data.iter().all(|&x| x == data[0]), "a mix of two writes");
    }
}

fn bounded_reads_refuse_larger_objects(b: &dyn Backend) {
    b.create("locks/big.json", &[b' '; 5000]).unwrap();
    assert_eq!(b.get_bounded("locks/big.json", 5000).unwrap().len(), 5000);
    let (data, v) = b.get_versioned_bounded("locks/big.json", 5000).unwrap();
    assert_eq!(
        (data.len(), &v),
        (5000, &b.get_versioned("locks/big.json").unwrap().1)
    );
    for e in [
        b.get_bounded("locks/big.json", 4999).unwrap_err(),
        b.get_versioned_bounded("locks/big.json", 4999).unwrap_err(),
    ] {
        assert!(
            matches!(
                &e,
                BackendError::TooLarge {
                    size: 5000,
                    max: 4999,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("locks/big.json"), "{e}");
    }
    assert!(b.get_bounded("nope", 10).unwrap_err().is_not_found());
    assert!(
        b.get_versioned_bounded("nope", 10)
            .unwrap_err()
            .is_not_found()
    );
}

fn missing_objects_are_typed(b: &dyn Backend) {
    assert!(b.get("nope").unwrap_err().is_not_found());
    assert!(b.get_range("nope", 0, 1).unwrap_err().is_not_found());
    assert!(b.get_versioned("nope").unwrap_err().is_not_found());
    assert_eq!(b.head("nope").unwrap(), None);
    assert!(b.list("nope/").unwrap().is_empty());
}

fn range_reads_at_the_edges(b: &dyn Backend) {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    b.create("obj", &data).unwrap();
    assert_eq!(b.get_range("obj", 0, 10).unwrap(), &data[..10]);
    assert_eq!(b.get_range("obj", 9_999, 1).unwrap(), &data[9_999..]);
    assert_eq!(b.get_range("obj", 0, 10_000).unwrap(), data);
    assert_eq!(b.get_range("obj", 10_000, 0).unwrap(), b"");
    assert_eq!(b.get_range("obj", 1234, 4321).unwrap(), &data[1234..5555]);
    let r = b.open("obj").unwrap();
    assert_eq!(r.size(), 10_000);
    assert_eq!(r.read_at(1234, 4321).unwrap(), &data[1234..5555]);
    assert_eq!(r.read_at(9_999, 1).unwrap(), &data[9_999..]);
    assert!(matches!(
        r.read_at(9_999, 2),
        Err(BackendError::OutOfRange { .. })
    ));
    assert!(b.open("nope").err().expect("missing").is_not_found());
    for (off, len) in [(9_999, 2), (10_000, 1), (20_000, 1), (u64::MAX, 2)] {
        match b.get_range("obj", off, len) {
            Err(BackendError::OutOfRange { size, .. }) => assert_eq!(size, 10_000),
            other => panic!("range {off}+{len} gave {other:?}"),
        }
    }
}

fn listing_by_prefix(b: &dyn Backend) {
    for k in ["a/b", "a/bc", "a/bd/c", "ab", "a/x/y/z", "b"] {
        b.create(k, k.as_bytes()).unwrap();
    }
    let keys = |p: &str| -> Vec<String> { b.list(p).unwrap().into_iter().map(|m| m.key).collect() };
    assert_eq!(keys(""), ["a/b", "a/bc", "a/bd/c", "a/x/y/z", "ab", "b"]);
    assert_eq!(keys("a/"), ["a/b", "a/bc", "a/bd/c", "a/x/y/z"]);
    assert_eq!(keys("a/b"), ["a/b", "a/bc", "a/bd/c"]);
    assert_eq!(keys("a/bd/"), ["a/bd/c"]);
    assert!(keys("a/b/").is_empty());
    assert_eq!(keys("a"), ["a/b", "a/bc", "a/bd/c", "a/x/y/z", "ab"]);
    assert_eq!(keys("a/x/"), ["a/x/y/z"]);
    assert!(keys("c").is_empty());
    let sizes: Vec<u64> = b.list("a/b").unwrap().into_iter().map(|m| m.size).collect();
    assert_eq!(sizes, [3, 4, 6]);
}

fn listing_while_another_thread_writes(b: &dyn Backend) {
    let before: BTreeSet<String> = (0..200).map(|i| format!("l/old/{i:04}")).collect();
    for k in &before {
        b.create(k, b"x").unwrap();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..300 {
                b.create(&format!("l/new/{i:04}"), b"y").unwrap();
            }
        });
        for _ in 0..10 {
            let listed: Vec<String> = b.list("l/").unwrap().into_iter().map(|m| m.key).collect();
            let old: Vec<&String> = listed.iter().filter(|k| k.starts_with("l/old/")).collect();
            assert_eq!(
                old.len(),
                before.len(),
                "an object present throughout was missed or repeated"
            );
            let mut sorted = listed.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, listed, "listing not sorted or repeats a key");
        }
    });
    assert_eq!(b.list("l/new/").unwrap().len(), 300);
}

fn delete_is_idempotent(b: &dyn Backend) {
    b.delete("never-was").unwrap();
    b.create("d/x", b"1").unwrap();
    b.delete("d/x").unwrap();
    assert!(b.get("d/x").unwrap_err().is_not_found());
    b.delete("d/x").unwrap();
    assert!(b.list("d/").unwrap().is_empty());
    b.create("d/x", b"2").unwrap();
    assert_eq!(b.get("d/x").unwrap(), b"2");
}

fn staged_objects(b: &dyn Backend) {
    let mut s = b.stage("packs/").unwrap();
    for i in 0..100u32 {
        s.write_all(&i.to_le_bytes().repeat(1000)).unwrap();
    }
    assert_eq!(s.len(), 400_000);
    assert!(
        b.list("").unwrap().is_empty(),
        "a staged object is visible before commit"
    );
    s.commit("packs/00/p1").unwrap();
    let got = b.get("packs/00/p1").unwrap();
    assert_eq!(got.len(), 400_000);
    assert_eq!(&got[4000..4004], &1u32.to_le_bytes());

    let mut s = b.stage("packs/").unwrap();
    s.write_all(b"other").unwrap();
    assert!(s.commit("packs/00/p1").unwrap_err().is_already_exists());
    assert_eq!(
        b.get("packs/00/p1").unwrap().len(),
        400_000,
        "overwritten by a commit"
    );

    let mut s = b.stage("packs/").unwrap();
    s.write_all(b"abandoned").unwrap();
    drop(s);
    assert_eq!(
        b.list("").unwrap().len(),
        1,
        "a dropped staged object became visible"
    );
}

fn compare_and_swap(b: &dyn Backend) {
    let v1 = b.replace("volumes/web.json", b"one", None).unwrap();
    assert!(
        b.replace("volumes/web.json", b"again", None)
            .unwrap_err()
            .is_already_exists()
    );
    let (data, v) = b.get_versioned("volumes/web.json").unwrap();
    assert_eq!((data.as_slice(), &v), (&b"one"[..], &v1));
    let v2 = b.replace("volumes/web.json", b"two", Some(&v1)).unwrap();
    assert_ne!(v1, v2);
    assert!(matches!(
        b.replace("volumes/web.json", b"three", Some(&v1)),
        Err(BackendError::Conflict { .. })
    ));
    assert_eq!(b.get("volumes/web.json").unwrap(), b"two");
    b.delete("volumes/web.json").unwrap();
    assert!(matches!(
        b.replace("volumes/web.json", b"four", Some(&v2)),
        Err(BackendError::Conflict { .. })
    ));
    // A created object can be swapped too.
    b.create("heads/x", b"a").unwrap();
    let (_, v) = b.get_versioned("heads/x").unwrap();
    b.replace("heads/x", b"b", Some(&v)).unwrap();
    assert_eq!(b.get("heads/x").unwrap(), b"b");
}

fn compare_and_swap_under_contention(b: &dyn Backend) {
    b.replace("counter", b"0", None).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    loop {
                        let (data, v) = b.get_versioned("counter").unwrap();
                        let n: u64 = std::str::from_utf8(&data).unwrap().parse().unwrap();
                        match b.replace("counter", (n + 1).to_string().as_bytes(), Some(&v)) {
                            Ok(_) => break,
                            Err(BackendError::Conflict { .. }) => continue,
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(b.get("counter").unwrap(), b"100", "an update was lost");
}

fn invalid_keys_are_refused(b: &dyn Backend) {
    for key in [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a//b",
        "a/.hidden",
        "a b",
    ] {
        let bad = |r: Result<(), BackendError>| {
            assert!(
                matches!(r, Err(BackendError::InvalidKey { .. })),
                "key {key:?} gave {r:?}"
            )
        };
        bad(b.create(key, b"x"));
        bad(b.get(key).map(|_| ()));
        bad(b.get_range(key, 0, 0).map(|_| ()));
        bad(b.head(key).map(|_| ()));
        bad(b.delete(key));
        bad(b.replace(key, b"x", None).map(|_| ()));
        let s = b.stage("packs/").unwrap();
        bad(s.commit(key));
    }
    assert!(b.list("").unwrap().is_empty());
}
