//! `check` over the memory backend: a sound store is clean and its counts add up; one flipped
//! byte in a record is one damaged chunk that damages only the snapshot using it; a lost or
//! truncated pack and a damaged document are found and named; an account without a grant is
//! told what it could not verify, never given a green result.

use crate::support::*;
use blocksnap_backend::Backend;
use blocksnap_store::{CheckReport, NoProgress};

fn check(m: &Mem, read_data: bool) -> CheckReport {
    m.store.check(&m.access, read_data, &NoProgress).unwrap()
}

/// Two snapshots with nothing in common, in packs of their own: (store, a's id, b's id).
fn two_snapshots() -> (Mem, String, String) {
    let m = Mem::new();
    let a = m.snapshot("a.img", &random_bytes(400_000, 1), "a");
    let b = m.snapshot("b.img", &disk_image(600_000, 2), "b");
    (m, a.id.to_string(), b.id.to_string())
}

/// The key of the pack holding chunk `n` of snapshot `id`, and that record's offset and length.
fn record_of(m: &Mem, id: &str, n: usize) -> (String, u64, u32) {
    let chunk = m.data_chunks(id)[n];
    for (pack, entries) in m.trailers() {
        if let Some(e) = entries.iter().find(|e| e.id == chunk) {
            let p = pack.to_string();
            return (format!("packs/{}/{p}", &p[..2]), e.offset, e.stored_len);
        }
    }
    panic!("no pack holds chunk {n} of {id}");
}

fn ids(v: &[blocksnap_store::SnapshotId]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

#[test]
fn a_sound_store_is_clean_and_the_counts_add_up() {
    let (m, a, b) = two_snapshots();
    let r = check(&m, true);
    assert!(r.ok, "{r:#?}");
    assert!(r.problems.is_empty() && r.not_verified.is_empty());
    assert_eq!(r.snapshots, 2);
    let mut intact = ids(&r.intact_snapshots);
    intact.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(intact, want);
    assert_eq!(r.packs as usize, m.pack_objects().len());
    let entries: usize = m.trailers().iter().map(|(_, e)| e.len()).sum();
    assert_eq!(r.chunks as usize, entries);
    assert_eq!(r.chunks_verified, r.chunks);
    assert_eq!(r.chunks_damaged + r.chunks_not_verified, 0);

    let quick = check(&m, false);
    assert!(quick.ok, "{quick:#?}");
    assert_eq!(quick.chunks_not_verified, quick.chunks, "data not read");
    assert_eq!(quick.chunks_verified, 0);
}

#[test]
fn a_flipped_byte_is_one_damaged_chunk_of_one_snapshot() {
    let (m, a, b) = two_snapshots();
    let (key, offset, len) = record_of(&m, &a, 2);
    let mut bytes = m.backend.get(&key).unwrap();
    bytes[(offset + u64::from(len) / 2) as usize] ^= 1;
    m.put(&key, &bytes);

    let r = check(&m, true);
    assert!(!r.ok, "{r:#?}");
    assert_eq!(r.chunks_damaged, 1, "{r:#?}");
    assert_eq!(ids(&r.damaged_snapshots), vec![a.clone()]);
    assert_eq!(ids(&r.intact_snapshots), vec![b.clone()]);
    assert_eq!(r.chunks, r.chunks_verified + r.chunks_damaged);
    let pack = key.rsplit('/').next().unwrap();
    assert!(
        r.problems.iter().any(|p| p.contains(pack)),
        "names the pack: {:?}",
        r.problems
    );
    assert!(!r.next_steps.is_empty());
    // b still restores; a does not.
    assert_eq!(m.restored(&b), disk_image(600_000, 2));
    assert!(
        m.store
            .restore(&m.access, &a, &m.path("a.out"), &NoProgress)
            .is_err()
    );
}

#[test]
fn a_lost_pack_is_named_with_the_snapshots_it_damages() {
    let (m, a, b) = two_snapshots();
    let (key, _, _) = record_of(&m, &a, 0);
    m.backend.delete(&key).unwrap();
    let pack = key.rsplit('/').next().unwrap();
    let r = check(&m, false);
    assert!(!r.ok, "{r:#?}");
    assert_eq!(
        r.missing_packs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![pack.to_string()]
    );
    assert_eq!(ids(&r.damaged_snapshots), vec![a]);
    assert_eq!(ids(&r.intact_snapshots), vec![b]);
    assert!(
        r.problems.iter().any(|p| p.contains(pack)),
        "{:?}",
        r.problems
    );
}

#[test]
fn a_truncated_pack_is_damaged_and_so_is_its_snapshot() {
    let (m, a, b) = two_snapshots();
    let (key, offset, _) = record_of(&m, &a, 3);
    let bytes = m.backend.get(&key).unwrap();
    m.put(&key, &bytes[..offset as usize + 10]);
    let r = check(&m, false);
    assert!(!r.ok, "{r:#?}");
    let pack = key.rsplit('/').next().unwrap();
    assert!(
        r.damaged_packs.iter().any(|p| p.to_string() == pack),
        "{r:#?}"
    );
    assert_eq!(ids(&r.damaged_snapshots), vec![a]);
    assert_eq!(ids(&r.intact_snapshots), vec![b]);
    assert!(r.chunks_damaged >= 1);
}

#[test]
fn a_damaged_document_is_a_problem_naming_it() {
    let (m, a, _) = two_snapshots();
    let key = format!("snapshots/{a}.json");
    let mut doc = m.backend.get(&key).unwrap();
    doc.truncate(doc.len() / 2);
    m.put(&key, &doc);
    let r = check(&m, false);
    assert!(!r.ok, "{r:#?}");
    assert!(
        r.problems.iter().any(|p| p.contains(&key)),
        "{:?}",
        r.problems
    );
}

#[test]
fn an_account_without_a_grant_is_told_what_it_could_not_verify() {
    let (m, a, b) = two_snapshots();
    let bob = m.add_account("bob");
    let r = m.store.check(&bob, true, &NoProgress).unwrap();
    assert!(!r.ok, "never green without the data checked: {r:#?}");
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(!r.not_verified.is_empty());
    let said = r.not_verified.join("\n");
    assert!(said.contains(&a) && said.contains(&b), "{said}");
    assert_eq!(r.chunks_verified, 0);
    assert!(r.intact_snapshots.is_empty());
    assert_eq!(r.unverified_snapshots.len(), 2);
}
