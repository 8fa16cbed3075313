//! Finding the parent of a new snapshot reads O(1) objects: the volume's head and the snapshot
//! it names, not every snapshot document (on an object store each is a request). Counted with
//! the operation log of a [`FaultBackend`] around a memory backend: a snapshot create in a store
//! of 3 snapshots and in one of 30 (of the same volume and of others) reads the same number of
//! snapshot documents, lists none, and records the right parent. Without the head (the fallback
//! for stores made before heads existed) the same count grows with the store: the measure sees
//! the difference.

use std::sync::Arc;

use crate::support::*;
use blocksnap_backend::{Backend, FaultBackend, FaultPlan, MemoryBackend};
use blocksnap_store::{ChunkerKind, SnapshotId};

/// A store over a counting backend holding `n` snapshots, half of them of volume `disk`.
fn store_with(n: usize) -> (Mem, FaultBackend, SnapshotId) {
    let objects = Arc::new(MemoryBackend::new());
    let counting = FaultBackend::new(objects.clone(), FaultPlan::default());
    let m = Mem::through(
        objects,
        Arc::new(counting.clone()),
        &mut small_chunks(ChunkerKind::Cdc),
    );
    let mut last = None;
    for i in 0..n {
        let data = random_bytes(8192, i as u64);
        if i % 2 == 0 {
            last = Some(m.snapshot("disk.img", &data, "disk").id);
        } else {
            m.snapshot(&format!("other{i}.img"), &data, &format!("other{i}"));
        }
    }
    (m, counting, last.expect("n >= 1"))
}

/// One snapshot create of volume `disk`: its parent, and the operations it made on snapshot
/// documents (`snapshots/…`).
fn create_counting(m: &Mem, counting: &FaultBackend) -> (Option<SnapshotId>, Vec<String>) {
    let (parent, all) = create_logged(m, counting);
    let ops = all
        .into_iter()
        .filter(|l| {
            l.split(' ')
                .nth(2)
                .is_some_and(|k| k.starts_with("snapshots/"))
        })
        .collect();
    (parent, ops)
}

/// One snapshot create of volume `disk`: its parent, and every operation it made.
fn create_logged(m: &Mem, counting: &FaultBackend) -> (Option<SnapshotId>, Vec<String>) {
    let from = counting.log().len();
    let r = m.snapshot("disk.img", &random_bytes(8192, 999), "disk");
    (r.parent, counting.log()[from..].to_vec())
}

#[test]
fn the_parent_of_a_new_snapshot_is_found_reading_the_same_few_objects_however_many_there_are() {
    let (small, small_log, small_last) = store_with(3);
    let (large, large_log, large_last) = store_with(30);
    let (parent_small, ops_small) = create_counting(&small, &small_log);
    let (parent_large, ops_large) = create_counting(&large, &large_log);
    assert_eq!(parent_small, Some(small_last));
    assert_eq!(parent_large, Some(large_last));
    assert_eq!(
        ops_small.len(),
        ops_large.len(),
        "3 snapshots: {ops_small:?}\n30 snapshots: {ops_large:?}"
    );
    assert!(
        ops_large.iter().all(|l| !l.contains(" list ")),
        "no listing of the snapshots: {ops_large:?}"
    );
    // The head names the parent; its document is read (by the source check and the parent
    // lookup), and the new one created.
    let reads = ops_large.iter().filter(|l| !l.contains(" create ")).count();
    assert!(reads <= 3, "{ops_large:?}");
    assert_eq!(
        ops_large.iter().filter(|l| l.contains(" create ")).count(),
        1,
        "{ops_large:?}"
    );
}

#[test]
fn a_whole_snapshot_create_makes_as_many_requests_in_a_large_store_as_in_a_small_one() {
    let (small, small_log, _) = store_with(3);
    let (large, large_log, _) = store_with(30);
    let (_, ops_small) = create_logged(&small, &small_log);
    let (_, ops_large) = create_logged(&large, &large_log);
    assert_eq!(
        ops_small.len(),
        ops_large.len(),
        "3 snapshots: {ops_small:?}\n30 snapshots: {ops_large:?}"
    );
    // The only listings are of the few lock objects, the keys, the packs and prune's condemned
    // records (one request each), never of the snapshots or other documents.
    for l in ops_large.iter().filter(|l| l.contains(" list ")) {
        let prefix = l.rsplit(' ').next().unwrap();
        assert!(
            ["locks/", "packs/", "keys/", "condemned/"].contains(&prefix),
            "{l} in {ops_large:?}"
        );
    }
}

#[test]
fn without_a_head_the_same_measure_grows_with_the_store() {
    // Stores made before heads existed: the parent is found by listing, as the count shows.
    let (m, log, last) = store_with(30);
    m.store.backend().delete("heads/disk.json").unwrap();
    let (parent, ops) = create_counting(&m, &log);
    assert_eq!(parent, Some(last), "the fallback finds the same parent");
    let reads = ops.iter().filter(|l| l.contains(" get ")).count();
    assert!(reads >= 30, "every document is read: {ops:?}");
    // The head is back: the next one reads O(1) again.
    let (parent2, ops2) = create_counting(&m, &log);
    assert!(parent2.is_some() && parent2 != parent);
    assert!(ops2.len() <= 4, "{ops2:?}");
}

/// The keys of the documents (snapshots, keys, accounts, heads) among `ops`' reads, with how often each
/// was read.
fn document_reads(ops: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut reads = std::collections::BTreeMap::new();
    for l in ops.iter().filter(|l| l.contains(" get")) {
        if let Some(key) = l.split(' ').nth(2).filter(|k| {
            ["snapshots/", "keys/", "accounts/", "heads/"]
                .iter()
                .any(|p| k.starts_with(p))
        }) {
            *reads.entry(key.to_string()).or_insert(0) += 1;
        }
    }
    reads
}

#[test]
fn with_documents_cached_a_command_reads_each_snapshot_key_account_and_head_document_once() {
    let (m, log, last) = store_with(3);
    // Uncached, as a library user gets it: the same documents are read more than once.
    let (_, plain) = create_logged(&m, &log);
    let plain_reads = document_reads(&plain);
    assert!(plain_reads.values().any(|&n| n > 1), "{plain:?}");
    // A command's cache: each is read once, and fewer requests are made in all.
    m.store.cache_documents(true);
    let (parent, cached) = create_logged(&m, &log);
    assert!(parent.is_some() && parent != Some(last));
    let cached_reads = document_reads(&cached);
    assert!(cached_reads.values().all(|&n| n == 1), "{cached:?}");
    assert!(cached.len() < plain.len(), "{cached:?}\n{plain:?}");
    // A volume's first snapshot: its missing head is asked for once (the commit creates it
    // create-only, so a head another writer made meanwhile would fail it and be read).
    let from = log.log().len();
    m.snapshot("new.img", &random_bytes(8192, 1000), "new");
    let first = log.log()[from..].to_vec();
    let head_reads = document_reads(&first).get("heads/new.json").copied();
    assert_eq!(head_reads, Some(1), "{first:?}");
    // Without a head the snapshots are listed to find the newest: once, though the source
    // check and the parent lookup both ask.
    let listings = first
        .iter()
        .filter(|l| l.contains(" list ") && l.ends_with("snapshots/"))
        .count();
    assert_eq!(listings, 1, "{first:?}");
    // Written or deleted through the store, it is never stale: the snapshot just created is
    // read from the cache, a deleted one is gone.
    let from = log.log().len();
    let id = parent.unwrap().to_string();
    assert!(m.store.resolve_snapshot(&id).is_ok());
    assert!(
        log.log()[from..]
            .iter()
            .all(|l| !l.contains(&format!("snapshots/{id}"))),
        "{:?}",
        &log.log()[from..]
    );
    m.store.delete_snapshot(&m.access, &id).unwrap();
    assert!(m.store.resolve_snapshot(&id).is_err());
    // Turned off, it forgets: a document changed behind the store's back is read as it is.
    m.store.cache_documents(false);
    let key = format!("snapshots/{last}.json");
    let bytes = m.backend.get(&key).unwrap();
    m.put(&key, &bytes[..bytes.len() / 2]);
    assert!(m.store.resolve_snapshot(&last.to_string()).is_err());
}

#[test]
fn a_head_another_writer_swapped_after_the_command_read_it_is_read_again_not_overwritten() {
    let (m, _, _) = store_with(3);
    m.store.cache_documents(true);
    // This command reads the volume's head (cached, with its version) ...
    assert!(m.store.latest_snapshot("disk").unwrap().is_some());
    // ... another process commits a snapshot of the volume meanwhile ...
    let other = m.reopen();
    let theirs = other
        .snapshot(
            &m.access,
            &blocksnap_store::SnapshotOptions {
                source: m.file("theirs.img", &random_bytes(8192, 5)),
                volume: Some("disk".into()),
                ..Default::default()
            },
            &blocksnap_store::NoProgress,
        )
        .unwrap();
    let head = || -> serde_json::Value {
        serde_json::from_slice(&m.backend.get("heads/disk.json").unwrap()).unwrap()
    };
    assert_eq!(head()["snapshot"], theirs.id.to_string());
    let their_seq = head()["seq"].as_u64().unwrap();
    // ... and this command's commit swaps against the version it read: refused, it reads the
    // head again and swaps that. Neither commit is lost, the numbers still grow.
    let ours = m.snapshot("ours.img", &random_bytes(8192, 6), "disk");
    assert_eq!(head()["snapshot"], ours.id.to_string());
    assert_eq!(head()["seq"].as_u64().unwrap(), their_seq + 1);
    let ids: Vec<_> = m
        .store
        .list_snapshots()
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert!(ids.contains(&theirs.id) && ids.contains(&ours.id));
}
