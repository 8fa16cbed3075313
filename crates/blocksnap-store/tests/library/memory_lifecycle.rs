//! Trash and prune over the memory backend: a deleted snapshot stays restorable (and its chunks
//! stay) until the trash is emptied; prune then reclaims exactly the bytes it reports, rewrites a
//! mostly-garbage pack keeping its live chunks (which dedup finds again), changes nothing on a
//! dry run or a second run, and refuses an account that cannot read every snapshot.

use crate::support::*;
use blocksnap_backend::Backend;
use blocksnap_store::{ErrorKind, NoProgress, PruneOptions, PruneReport};

fn prune(m: &Mem, dry_run: bool) -> PruneReport {
    m.store
        .prune(
            &m.access,
            PruneOptions {
                dry_run,
                ..PruneOptions::default()
            },
            &NoProgress,
        )
        .unwrap()
}

fn check_is_clean(m: &Mem) {
    let r = m.store.check(&m.access, true, &NoProgress).unwrap();
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.chunks_verified, r.chunks);
}

#[test]
fn the_trash_keeps_a_snapshot_and_its_chunks_until_emptied_then_prune_reclaims_them() {
    let m = Mem::new();
    let a = random_bytes(1 << 20, 1);
    let b = random_bytes(1 << 20, 2);
    let ra = m.snapshot("a.img", &a, "a");
    let rb = m.snapshot("b.img", &b, "b");
    let (a_id, b_id) = (ra.id.to_string(), rb.id.to_string());

    let entry = m.store.delete_snapshot(&m.access, &a_id).unwrap();
    assert_eq!(entry.id, a_id);
    assert_eq!(entry.kind, "snapshot");
    assert!(
        m.store
            .list_snapshots()
            .unwrap()
            .iter()
            .all(|s| s.id != ra.id)
    );
    let (kind, msg) = kind_of(m.store.restore(&m.access, &a_id, &m.path("x"), &NoProgress));
    assert_eq!(kind, ErrorKind::NotFound, "{msg}");

    // Prune keeps what the trash holds.
    let packs = m.pack_objects();
    let r = prune(&m, false);
    assert_eq!(
        (r.packs_deleted, r.packs_rewritten, r.bytes_reclaimed),
        (0, 0, 0),
        "{r:?}"
    );
    assert_eq!(m.pack_objects(), packs);
    m.store.restore_trash(&a_id).unwrap();
    assert_eq!(m.restored(&a_id), a, "back from the trash, whole");

    m.store.delete_snapshot(&m.access, &a_id).unwrap();
    let emptied = m.store.empty_trash(false).unwrap();
    assert_eq!(emptied.len(), 1);
    assert!(m.store.trash_entries().unwrap().is_empty());
    let before = m.pack_bytes();
    let r = prune(&m, false);
    assert!(r.packs_deleted >= 1, "{r:?}");
    assert_eq!(r.packs_rewritten, 0, "{r:?}");
    assert!(r.bytes_reclaimed > 1 << 20, "1 MiB of random data: {r:?}");
    assert_eq!(
        before - m.pack_bytes(),
        r.bytes_reclaimed,
        "reports what it freed"
    );
    assert_eq!(m.restored(&b_id), b);
    check_is_clean(&m);

    let again = prune(&m, false);
    assert_eq!(
        (
            again.packs_deleted,
            again.packs_rewritten,
            again.bytes_reclaimed
        ),
        (0, 0, 0),
        "{again:?}"
    );
}

#[test]
fn prune_rewrites_a_mostly_garbage_pack_and_keeps_its_live_chunks() {
    let m = Mem::new();
    let x = random_bytes(3 << 20, 1);
    let y = random_bytes(512 << 10, 2);
    let both: Vec<u8> = [x.clone(), y.clone()].concat();
    let r1 = m.snapshot("both.img", &both, "both");
    assert_eq!(r1.packs, 1, "one pack holds both: {r1:?}");
    let r2 = m.snapshot("y.img", &y, "y");
    assert!(
        r2.chunks_new * 4 < r2.chunks,
        "y is mostly in the first pack: {r2:?}"
    );
    m.store
        .delete_snapshot(&m.access, &r1.id.to_string())
        .unwrap();
    m.store.empty_trash(false).unwrap();

    // A dry run says what it would do and changes nothing.
    let all = objects(&*m.backend, "");
    let dry = prune(&m, true);
    assert!(dry.dry_run);
    assert_eq!(dry.packs_rewritten, 1, "{dry:?}");
    assert_eq!(objects(&*m.backend, ""), all, "a dry run writes nothing");

    let before = m.pack_bytes();
    let r = prune(&m, false);
    assert_eq!(r.packs_rewritten, 1, "{r:?}");
    assert_eq!(r.packs_deleted, dry.packs_deleted);
    assert_eq!(r.chunks_moved, dry.chunks_moved);
    assert_eq!(r.chunks_deleted, dry.chunks_deleted);
    assert!(r.chunks_moved > 0 && r.chunks_deleted > 0, "{r:?}");
    assert!(r.bytes_reclaimed > 5 << 19, "about 3 MiB of garbage: {r:?}");
    assert_eq!(before - m.pack_bytes(), r.bytes_reclaimed);
    // No pack of the first snapshot is left: every pack now holds only live chunks.
    assert!(
        m.pack_bytes() < (y.len() as u64) * 11 / 10 + (64 << 10),
        "{}",
        m.pack_bytes()
    );
    assert_eq!(m.restored(&r2.id.to_string()), y);
    check_is_clean(&m);

    // The moved chunks are where dedup looks: y again stores nothing.
    let r3 = m.snapshot("y.img", &y, "y");
    assert_eq!(r3.chunks_new, 0, "{r3:?}");
    let again = prune(&m, false);
    assert_eq!(
        (again.packs_deleted, again.packs_rewritten),
        (0, 0),
        "{again:?}"
    );
}

#[test]
fn prune_refuses_an_account_that_cannot_read_every_snapshot() {
    let m = Mem::new();
    let a = random_bytes(300_000, 3);
    let r = m.snapshot("a.img", &a, "a");
    m.store
        .delete_snapshot(&m.access, &r.id.to_string())
        .unwrap();
    m.store.empty_trash(false).unwrap();
    let keep = m.snapshot("k.img", &random_bytes(200_000, 4), "k");
    let bob = m.add_account("bob");
    let all = objects(&*m.backend, "packs/");
    let (kind, msg) = kind_of(m.store.prune(&bob, PruneOptions::default(), &NoProgress));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(
        msg.contains(&keep.id.to_string()),
        "names the snapshot: {msg}"
    );
    assert_eq!(objects(&*m.backend, "packs/"), all, "nothing deleted");
    assert!(
        m.backend.list("locks/").unwrap().is_empty(),
        "its lock is gone"
    );
}
