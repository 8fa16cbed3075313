//! Crash tests that enumerate, not sample: each operation that writes a store runs over a fault
//! backend stopping dead before its operation 1, 2, … N in turn, and every stop is judged — see
//! `crash_lab` for what is asserted after each.

use std::collections::BTreeMap;

use crate::crash_lab::*;
use blocksnap_store::{
    CopyOptions, ImageOptions, NoProgress, PruneOptions, SnapshotOptions, StoreError, TAG_SCHEDULE,
};

#[test]
fn snapshot_create_stopped_at_every_operation() {
    let mut lab = Lab::new("snapshot");
    let store = lab.init(MAIN, "alice");
    let (a, b) = (lab.src("a.img"), lab.src("b.img"));
    ext4_image(&a, 8 << 20, 24, 48, 1);
    ext4_image(&b, 6 << 20, 12, 48, 2);
    lab.snapshot(&store, MAIN, &a);
    lab.snapshot(&store, MAIN, &b);
    // The disk changes: the next snapshot of it is incremental, with new data in several packs.
    ext4_add_file(&a, "new-bin", &random_bytes(1_500_000, 3));
    ext4_add_file(&a, "new-text", &text_bytes(600_000, 4));
    drop(store);
    let points = lab.enumerate(&Scenario {
        op: &|ctx, _| {
            let store = ctx.open(MAIN)?;
            let access = ctx.access(&store, MAIN)?;
            let opts = SnapshotOptions {
                source: ctx.lab.src("a.img"),
                ..SnapshotOptions::default()
            };
            store.snapshot(&access, &opts, &NoProgress).map(drop)
        },
        ..Scenario::default()
    });
    assert!(points >= 10, "{points}");
}

#[test]
fn key_grant_stopped_at_every_operation() {
    let mut lab = Lab::new("grant");
    let store = lab.init(MAIN, "alice");
    let a = lab.src("a.img");
    ext4_image(&a, 4 << 20, 8, 32, 11);
    let s = lab.snapshot(&store, MAIN, &a);
    store
        .create_account("bob", Some(&lab.identity(MAIN, "bob")))
        .unwrap();
    drop(store);
    let snap = s.id;
    lab.enumerate(&Scenario {
        op: &|ctx, again| {
            let store = ctx.open(MAIN)?;
            let access = ctx.access(&store, MAIN)?;
            match store.grant_key(&access, "default", "bob", None) {
                // The stopped run may have granted it already.
                Err(StoreError::Usage(m)) if again && m.contains("already holds a grant") => Ok(()),
                r => r.map(drop),
            }
        },
        after: &|ctx| {
            // Bob can now read the data under the key.
            let store = ctx.open(MAIN).unwrap();
            let bob = store
                .access(Some("bob"), Some(&ctx.lab.identity(MAIN, "bob")))
                .unwrap();
            let expected = ctx.lab.path("expect").join(snap.to_string());
            ctx.assert_restores(&store, &bob, snap, &expected, "bob after the grant");
        },
        ..Scenario::default()
    });
}

/// The stopped run may have committed the object named `name` already: a second one of that
/// name is refused (as it must be), and the re-run makes it under another name.
fn name_for_again(
    exists: bool,
    again: bool,
    name: &str,
    attempt: impl FnOnce(&str) -> StoreError,
) -> String {
    if again && exists {
        let e = attempt(name);
        assert!(
            matches!(e, StoreError::Usage(ref m) if m.contains("exists already")),
            "a second '{name}': {e}"
        );
        format!("{name}-2")
    } else {
        name.to_string()
    }
}

#[test]
fn image_create_stopped_at_every_operation() {
    let mut lab = Lab::new("image-create");
    let store = lab.init(MAIN, "alice");
    let (a, c) = (lab.src("a.img"), lab.src("c.img"));
    ext4_image(&a, 6 << 20, 16, 48, 21);
    ext4_image(&c, 6 << 20, 12, 48, 22);
    lab.snapshot(&store, MAIN, &a);
    ext4_add_file(&a, "update", &random_bytes(700_000, 23));
    drop(store);
    lab.enumerate(&Scenario {
        op: &|ctx, again| {
            let store = ctx.open(MAIN)?;
            let access = ctx.access(&store, MAIN)?;
            let mut opts = ImageOptions {
                name: "web".into(),
                volumes: vec![
                    ("vda".into(), ctx.lab.src("a.img")),
                    ("vdb".into(), ctx.lab.src("c.img")),
                ],
                ..ImageOptions::default()
            };
            let exists = store.list_images()?.iter().any(|i| i.name == "web");
            opts.name = name_for_again(exists, again, "web", |name| {
                let mut o = opts.clone();
                o.name = name.into();
                store.create_image(&access, &o, &NoProgress).unwrap_err()
            });
            store.create_image(&access, &opts, &NoProgress).map(drop)
        },
        ..Scenario::default()
    });
}

#[test]
fn image_copy_stopped_at_every_operation() {
    let mut lab = Lab::new("image-copy");
    let store = lab.init(MAIN, "alice");
    let other = lab.init("other", "carol");
    let (a, b, d) = (lab.src("a.img"), lab.src("b.img"), lab.src("d.img"));
    ext4_image(&a, 4 << 20, 8, 32, 31);
    ext4_image(&b, 4 << 20, 8, 32, 32);
    ext4_image(&d, 4 << 20, 6, 32, 33);
    lab.snapshot(&other, "other", &d);
    let access = lab.access(&store, MAIN);
    let opts = ImageOptions {
        name: "web".into(),
        volumes: vec![("vda".into(), a.clone()), ("vdb".into(), b.clone())],
        ..ImageOptions::default()
    };
    let image = store.create_image(&access, &opts, &NoProgress).unwrap();
    lab.remember(image.snapshots[0].id, &a);
    lab.remember(image.snapshots[1].id, &b);
    drop((store, other));
    lab.enumerate(&Scenario {
        op: &|ctx, again| {
            let (source, target) = (ctx.open(MAIN)?, ctx.open("other")?);
            let (from, to) = (ctx.access(&source, MAIN)?, ctx.access(&target, "other")?);
            let exists = target.list_images()?.iter().any(|i| i.name == "web");
            let name = name_for_again(exists, again, "web", |name| {
                let o = CopyOptions {
                    name: Some(name.into()),
                    ..CopyOptions::default()
                };
                source
                    .copy_image(&from, "web", &target, &to, &o, &NoProgress)
                    .unwrap_err()
            });
            let opts = CopyOptions {
                name: Some(name),
                ..CopyOptions::default()
            };
            source
                .copy_image(&from, "web", &target, &to, &opts, &NoProgress)
                .map(drop)
        },
        ..Scenario::default()
    });
}

#[test]
fn policy_run_stopped_at_every_operation() {
    let mut lab = Lab::new("policy");
    let store = lab.init(MAIN, "alice");
    let access = lab.access(&store, MAIN);
    let (a, b) = (lab.src("a.img"), lab.src("b.img"));
    ext4_image(&a, 4 << 20, 10, 32, 41);
    ext4_image(&b, 4 << 20, 10, 32, 42);
    let tags = BTreeMap::from([("backup".to_string(), "daily".to_string())]);
    store.add_volume(&access, "a", &a, tags.clone()).unwrap();
    store.add_volume(&access, "b", &b, tags).unwrap();
    store
        .create_policy(
            &access,
            "nightly",
            &[("backup".into(), "daily".into())],
            &["daily: every 1d at 03:00 keep 2".into()],
        )
        .unwrap();
    for day in 1..=2 {
        let r = store
            .run_policies(
                &access,
                Some(&format!("2026-01-0{day}T04:00:00Z")),
                &NoProgress,
            )
            .unwrap();
        assert_eq!(r.taken.len(), 2, "{r:?}");
        for t in &r.taken {
            let source = if t.volume == "a" { &a } else { &b };
            lab.remember(t.snapshot.parse().unwrap(), source);
        }
        ext4_add_file(&a, &format!("day{day}"), &random_bytes(300_000, 43 + day));
    }
    ext4_add_file(&b, "day3", &text_bytes(300_000, 49));
    drop(store);
    const AT: &str = "2026-01-03T04:00:00Z";
    lab.enumerate(&Scenario {
        op: &|ctx, again| {
            let store = ctx.open(MAIN)?;
            let access = ctx.access(&store, MAIN)?;
            let r = store.run_policies(&access, Some(AT), &NoProgress)?;
            if again {
                assert!(r.errors.is_empty(), "{r:?}");
            }
            Ok(())
        },
        may_trash: true,
        after: &|ctx| {
            // The run is complete: each volume keeps the two newest, one of them taken now;
            // the oldest is in the trash.
            let store = ctx.open(MAIN).unwrap();
            for volume in ["a", "b"] {
                let kept: Vec<String> = store
                    .list_snapshots()
                    .unwrap()
                    .into_iter()
                    .filter(|s| s.volume == volume && s.tags.contains_key(TAG_SCHEDULE))
                    .map(|s| s.created)
                    .collect();
                assert_eq!(kept.len(), 2, "volume {volume}: {kept:?}");
                assert!(kept.iter().any(|c| c.starts_with("2026-01-03")), "{kept:?}");
            }
            assert_eq!(store.list_trash().unwrap().len(), 2);
        },
        ..Scenario::default()
    });
}

#[test]
fn prune_stopped_at_every_operation() {
    let mut lab = Lab::new("prune");
    let store = lab.init(MAIN, "alice");
    let access = lab.access(&store, MAIN);
    // `mixed` interleaves pieces of A (which `keep` holds too) with pieces of B; `gone` holds
    // C. Once mixed and gone are deleted, prune deletes C's packs and rewrites the packs that
    // mix A and B.
    let (mut mixed, mut keep) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let piece = random_bytes(128 << 10, 50 + i);
        keep.extend_from_slice(&piece);
        mixed.extend_from_slice(&piece);
        mixed.extend_from_slice(&if i % 2 == 0 {
            random_bytes(384 << 10, 60 + i)
        } else {
            text_bytes(384 << 10, 60 + i)
        });
    }
    let (m, k, g) = (
        lab.src("mixed.img"),
        lab.src("keep.img"),
        lab.src("gone.img"),
    );
    std::fs::write(&m, &mixed).unwrap();
    std::fs::write(&k, &keep).unwrap();
    std::fs::write(&g, random_bytes(2 << 20, 70)).unwrap();
    let gone = [lab.snapshot(&store, MAIN, &m).id];
    lab.snapshot(&store, MAIN, &k);
    let gone = [gone[0], lab.snapshot(&store, MAIN, &g).id];
    for id in gone {
        store.delete_snapshot(&access, &id.to_string()).unwrap();
    }
    store.empty_trash(false).unwrap();
    let dry = PruneOptions {
        dry_run: true,
        ..PruneOptions::default()
    };
    let plan = store.prune(&access, dry, &NoProgress).unwrap();
    assert!(
        plan.packs_deleted >= 1 && plan.packs_rewritten >= 1,
        "{plan:?}"
    );
    drop(store);
    lab.enumerate(&Scenario {
        op: &|ctx, _| {
            let store = ctx.open(MAIN)?;
            let access = ctx.access(&store, MAIN)?;
            store
                .prune(&access, PruneOptions::default(), &NoProgress)
                .map(drop)
        },
        after: &|ctx| {
            // The re-run finished the job: nothing is left to reclaim.
            let store = ctx.open(MAIN).unwrap();
            let access = ctx.access(&store, MAIN).unwrap();
            let r = store
                .prune(&access, PruneOptions::default(), &NoProgress)
                .unwrap();
            assert!(
                r.packs_deleted == 0 && r.packs_rewritten == 0 && r.chunks_deleted == 0,
                "{r:?}"
            );
        },
        ..Scenario::default()
    });
}

#[test]
fn two_phase_prune_stopped_at_every_operation() {
    let mut lab = Lab::new("prune2");
    let store = lab.init(MAIN, "alice");
    let access = lab.access(&store, MAIN);
    // `mixed` interleaves pieces of A (which `keep` holds too) with pieces of B; `gone` holds
    // C. Once mixed and gone are deleted, prune deletes C's packs and rewrites the packs that
    // mix A and B.
    let (mut mixed, mut keep) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let piece = random_bytes(128 << 10, 50 + i);
        keep.extend_from_slice(&piece);
        mixed.extend_from_slice(&piece);
        mixed.extend_from_slice(&if i % 2 == 0 {
            random_bytes(384 << 10, 60 + i)
        } else {
            text_bytes(384 << 10, 60 + i)
        });
    }
    let (m, k, g) = (
        lab.src("mixed.img"),
        lab.src("keep.img"),
        lab.src("gone.img"),
    );
    std::fs::write(&m, &mixed).unwrap();
    std::fs::write(&k, &keep).unwrap();
    std::fs::write(&g, random_bytes(2 << 20, 70)).unwrap();
    let gone = [lab.snapshot(&store, MAIN, &m).id];
    lab.snapshot(&store, MAIN, &k);
    let gone = [gone[0], lab.snapshot(&store, MAIN, &g).id];
    for id in gone {
        store.delete_snapshot(&access, &id.to_string()).unwrap();
    }
    store.empty_trash(false).unwrap();
    let dry = PruneOptions {
        dry_run: true,
        ..PruneOptions::default()
    };
    let plan = store.prune(&access, dry, &NoProgress).unwrap();
    assert!(
        plan.packs_deleted >= 1 && plan.packs_rewritten >= 1,
        "{plan:?}"
    );
    // Phase one in the template: everything to reclaim is condemned, nothing deleted.
    let hour = PruneOptions {
        grace: Some(std::time::Duration::from_secs(3600)),
        ..PruneOptions::default()
    };
    let marked = store.prune(&access, hour, &NoProgress).unwrap();
    assert!(
        marked.packs_marked >= 2 && marked.packs_deleted == 0,
        "{marked:?}"
    );
    drop(store);
    // Phase two is what is stopped: the condemned packs are due (grace 0).
    lab.enumerate(&Scenario {
        op: &|ctx, _| {
            let store = ctx.open(MAIN)?;
            let access = ctx.access(&store, MAIN)?;
            store
                .prune(&access, PruneOptions::default(), &NoProgress)
                .map(|r| assert!(r.packs_unmarked == 0, "{r:?}"))
        },
        after: &|ctx| {
            // The re-run finished the job: nothing is left to reclaim.
            let store = ctx.open(MAIN).unwrap();
            let access = ctx.access(&store, MAIN).unwrap();
            let r = store
                .prune(&access, PruneOptions::default(), &NoProgress)
                .unwrap();
            assert!(
                r.packs_deleted == 0
                    && r.packs_rewritten == 0
                    && r.chunks_deleted == 0
                    && r.packs_pending == 0,
                "{r:?}"
            );
            assert!(
                std::fs::read_dir(store.local_root().unwrap().join("condemned"))
                    .map_or(true, |d| d.count() == 0),
                "condemnation records left"
            );
        },
        ..Scenario::default()
    });
}

#[test]
fn trash_empty_stopped_at_every_operation() {
    let mut lab = Lab::new("trash");
    let store = lab.init(MAIN, "alice");
    let access = lab.access(&store, MAIN);
    let (a, b, c) = (lab.src("a.img"), lab.src("b.img"), lab.src("c.img"));
    ext4_image(&a, 4 << 20, 8, 32, 81);
    ext4_image(&b, 4 << 20, 8, 32, 82);
    ext4_image(&c, 4 << 20, 8, 32, 83);
    lab.snapshot(&store, MAIN, &a);
    let sb = lab.snapshot(&store, MAIN, &b);
    store.delete_snapshot(&access, &sb.id.to_string()).unwrap();
    let opts = ImageOptions {
        name: "old".into(),
        volumes: vec![("vda".into(), c.clone())],
        ..ImageOptions::default()
    };
    store.create_image(&access, &opts, &NoProgress).unwrap();
    store.deregister_image(&access, "old", true).unwrap();
    // A deletion a crash cut short leaves the snapshot both live and in the trash (the
    // tombstone is written first): emptying the trash must leave the live one alone.
    let e = lab.src("e.img");
    ext4_image(&e, 4 << 20, 6, 32, 84);
    let se = lab.snapshot(&store, MAIN, &e).id;
    let doc = lab
        .path("template")
        .join(MAIN)
        .join(format!("snapshots/{se}.json"));
    let bytes = std::fs::read(&doc).unwrap();
    store.delete_snapshot(&access, &se.to_string()).unwrap();
    std::fs::write(&doc, bytes).unwrap();
    assert_eq!(store.list_trash().unwrap().len(), 4);
    drop(store);
    lab.enumerate(&Scenario {
        op: &|ctx, _| {
            let store = ctx.open(MAIN)?;
            store.empty_trash(false).map(drop)
        },
        after: &|ctx| {
            let store = ctx.open(MAIN).unwrap();
            assert!(store.list_trash().unwrap().is_empty());
        },
        ..Scenario::default()
    });
}

#[test]
fn repair_index_stopped_at_every_operation() {
    let mut lab = Lab::new("repair-index");
    let store = lab.init(MAIN, "alice");
    let (a, b) = (lab.src("a.img"), lab.src("b.img"));
    ext4_image(&a, 6 << 20, 16, 48, 91);
    ext4_image(&b, 4 << 20, 8, 32, 92);
    lab.snapshot(&store, MAIN, &a);
    lab.snapshot(&store, MAIN, &b);
    drop(store);
    lab.enumerate(&Scenario {
        op: &|ctx, _| {
            let store = ctx.open(MAIN)?;
            let access = ctx.access(&store, MAIN)?;
            store.repair_index(&access, &NoProgress).map(drop)
        },
        after: &|ctx| {
            // The index places every chunk again.
            let store = ctx.open(MAIN).unwrap();
            let access = ctx.access(&store, MAIN).unwrap();
            let r = store.check(&access, false, &NoProgress).unwrap();
            assert!(
                r.unindexed_chunks == 0 && r.stale_index_entries == 0,
                "{r:?}"
            );
        },
        ..Scenario::default()
    });
}

#[test]
fn repair_packs_stopped_at_every_operation() {
    let mut lab = Lab::new("repair-packs");
    let store = lab.init(MAIN, "alice");
    let (k, x) = (lab.src("k.img"), lab.src("x.img"));
    ext4_image(&k, 4 << 20, 8, 32, 101);
    std::fs::write(&x, random_bytes(5 << 18, 102)).unwrap();
    lab.snapshot(&store, MAIN, &k);
    let root = lab.path("template").join(MAIN);
    let before = pack_files(&root);
    let damaged = lab.snapshot(&store, MAIN, &x).id;
    let mut new: Vec<_> = pack_files(&root).difference(&before).cloned().collect();
    assert!(new.len() >= 2, "{new:?}");
    // x's smallest pack loses its end (its trailer and its last records), as a disk can lose
    // a file's tail: some chunks of x are lost, the others must be moved to new packs.
    new.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let pack = &new[0];
    let len = std::fs::metadata(pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(pack)
        .unwrap()
        .set_len(len * 3 / 4)
        .unwrap();
    let pack_id = pack.file_name().unwrap().to_string_lossy().into_owned();
    let access = lab.access(&store, MAIN);
    let r = store.check(&access, true, &NoProgress).unwrap();
    assert_eq!(r.damaged_snapshots, vec![damaged], "{r:?}");
    drop(store);
    // How many chunks a repair run to its end loses: a new snapshot of x stores just those.
    // With the index cache it keeps the chunks before the cut; without, it cannot tell what
    // the pack without its trailer holds, and loses the pack.
    let heal = |store: &blocksnap_store::Store, access: &blocksnap_store::Access| {
        let opts = SnapshotOptions {
            source: x.clone(),
            ..SnapshotOptions::default()
        };
        store.snapshot(access, &opts, &NoProgress).unwrap()
    };
    let lost = [true, false].map(|cache_kept| {
        let scratch = lab.path("scratch");
        copy_dir(&root, &scratch.join(MAIN));
        if cache_kept {
            copy_dir(&lab.path("template/cache"), &scratch.join("cache"));
        }
        let clean = open_plain(&scratch.join(MAIN), &scratch.join("cache"));
        clean.repair_packs(&access, false, &NoProgress).unwrap();
        let healed = heal(&clean, &access);
        drop(clean);
        std::fs::remove_dir_all(&scratch).unwrap();
        healed.chunks_new
    });
    assert!(lost[0] >= 1 && lost[0] < lost[1], "{lost:?}");
    let (sid, pid) = (damaged.to_string(), pack_id.clone());
    lab.enumerate(&Scenario {
        op: &|ctx, _| {
            let store = ctx.open(MAIN)?;
            let access = ctx.access(&store, MAIN)?;
            store.repair_packs(&access, false, &NoProgress).map(drop)
        },
        damaged: vec![damaged],
        tolerated: &|p| p.contains(&sid) || p.contains(&pid) || p.contains("volume 'x.img'"),
        after: &|ctx| {
            // Only the chunks past the cut are lost (the others were moved to new packs), and a
            // new snapshot of the disk stores them again: the damaged snapshot heals.
            let store = ctx.open(MAIN).unwrap();
            let access = ctx.access(&store, MAIN).unwrap();
            let r = heal(&store, &access);
            // Without the cache, a stop after the move left the moved chunks in new packs.
            let most = if ctx.cache_kept() { lost[0] } else { lost[1] };
            assert!(
                (lost[0]..=most).contains(&r.chunks_new),
                "{} chunks lost, a run to its end loses {lost:?}: {r:?}",
                r.chunks_new
            );
        },
        ..Scenario::default()
    });
}
