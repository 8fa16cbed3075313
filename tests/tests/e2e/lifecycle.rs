//! Volumes, snapshot deletion and the trash.

use crate::common::*;

#[test]
fn volumes_delete_and_trash_round_trip() {
    let env = Env::new("trash");
    env.init(&[]);
    let img = env.path("d.img");
    write_at(&img, 8 << 20, 0, &random_bytes(1 << 20, 50));
    let v = env.json(&[
        "volume",
        "add",
        "web",
        img.to_str().unwrap(),
        "--tag",
        "tier=gold",
    ]);
    assert_eq!(v["tags"]["tier"], "gold");
    assert_eq!(env.json(&["volume", "list"]).as_array().unwrap().len(), 1);
    // A registered volume is snapshotted by name.
    let s = env.json(&["snapshot", "create", "web"]);
    assert_eq!(s["volume"], "web");
    let id = s["id"].as_str().unwrap().to_string();

    let d = env.json(&["snapshot", "delete", &id]);
    assert_eq!(d["id"], id.as_str());
    assert!(
        env.json(&["snapshot", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let trash = env.json(&["trash", "list"]);
    let entry = &trash.as_array().unwrap()[0];
    for f in ["id", "kind", "deleted", "expires"] {
        assert!(entry.get(f).is_some(), "trash list lacks {f}: {entry}");
    }
    assert_eq!(entry["kind"], "snapshot");
    assert!(entry["expires"].as_str().unwrap() > entry["deleted"].as_str().unwrap());
    // Not expired: `empty --expired` keeps it.
    assert!(
        env.json(&["trash", "empty", "--expired"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    env.json(&["trash", "restore", &id[..9]]);
    let out = env.path("o.img");
    env.restore(&id, &out);
    assert_same(&img, &out);

    env.json(&["snapshot", "delete", &id]);
    assert_eq!(env.json(&["trash", "empty"]).as_array().unwrap().len(), 1);
    let gone = env.run(&["trash", "restore", &id]);
    assert_eq!(gone.status.code(), Some(2), "{}", stderr(&gone));
    let gone = env.run(&["snapshot", "restore", &id, out.to_str().unwrap()]);
    assert_eq!(gone.status.code(), Some(2));
}

fn store_bytes(env: &Env) -> u64 {
    env.packs()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// After deleting a disk's snapshots and emptying the trash, prune shrinks the store by about
/// that disk's unique data, keeps everything the other disk needs, and check still passes.
#[test]
fn prune_reclaims_a_deleted_disk_and_keeps_the_rest() {
    let env = Env::new("prune");
    env.init(&[]);
    let keep_img = env.path("keep.img");
    let gone_img = env.path("gone.img");
    let shared = random_bytes(4 << 20, 60);
    write_at(&keep_img, 32 << 20, 0, &shared);
    write_at(&keep_img, 32 << 20, 8 << 20, &random_bytes(6 << 20, 61));
    write_at(&gone_img, 32 << 20, 0, &shared);
    write_at(&gone_img, 32 << 20, 16 << 20, &random_bytes(10 << 20, 62));
    let keep = env.snapshot(&keep_img, "keep");
    let gone1 = env.snapshot(&gone_img, "gone");
    write_at(&gone_img, 32 << 20, 28 << 20, &random_bytes(2 << 20, 63));
    let gone2 = env.snapshot(&gone_img, "gone");
    let before = store_bytes(&env);

    // Nothing is garbage yet.
    let dry = env.json(&["prune", "--dry-run"]);
    assert_eq!(dry["packs_deleted"], 0, "{dry}");
    for s in [&gone1, &gone2] {
        env.json(&["snapshot", "delete", s["id"].as_str().unwrap()]);
    }
    // In the trash: still referenced, nothing reclaimed.
    let r = env.json(&["prune"]);
    assert_eq!(r["bytes_reclaimed"], 0, "{r}");
    assert_eq!(store_bytes(&env), before);

    env.json(&["trash", "empty"]);
    let dry = env.json(&["prune", "--dry-run"]);
    assert_eq!(store_bytes(&env), before, "a dry run changes nothing");
    let r = env.json(&["prune"]);
    for f in ["packs_deleted", "bytes_reclaimed"] {
        assert!(r.get(f).is_some(), "prune --json lacks {f}: {r}");
    }
    let after = store_bytes(&env);
    let unique = (12u64 << 20) as f64; // 10 MiB + 2 MiB only the deleted disk had
    let shrunk = (before - after) as f64;
    assert!(
        shrunk > unique * 0.8 && shrunk < unique * 1.2,
        "shrunk by {shrunk}, unique {unique}; {r}"
    );
    assert!(dry["bytes_reclaimed"].as_u64().unwrap() > 0);

    let out = env.path("o.img");
    env.restore(keep["id"].as_str().unwrap(), &out);
    assert_same(&keep_img, &out);
    let check = env.run(&["--json", "check", "--read-data"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // The shared chunks are still deduplicated against: re-snapshotting keep stores nothing.
    assert_eq!(env.snapshot(&keep_img, "keep")["chunks_new"], 0);
}

/// A pack that is mostly garbage is rewritten with only its live chunks.
#[test]
fn prune_rewrites_mostly_garbage_packs() {
    let env = Env::new("prune_repack");
    env.init(&[]);
    let a = random_bytes(2 << 20, 70);
    let mixed = env.path("mixed.img");
    write_at(&mixed, 16 << 20, 0, &a);
    write_at(&mixed, 16 << 20, 4 << 20, &random_bytes(8 << 20, 71));
    let only_a = env.path("a.img");
    write_at(&only_a, 16 << 20, 0, &a);
    let m = env.snapshot(&mixed, "mixed");
    let k = env.snapshot(&only_a, "a");
    assert_eq!(k["chunks_new"], 0, "a's data is all in mixed's pack");
    env.json(&["snapshot", "delete", m["id"].as_str().unwrap()]);
    env.json(&["trash", "empty"]);
    let r = env.json(&["prune"]);
    assert_eq!(r["packs_rewritten"], 1, "{r}");
    assert!(r["chunks_moved"].as_u64().unwrap() > 0);
    assert!(r["bytes_reclaimed"].as_u64().unwrap() > 6 << 20, "{r}");
    let out = env.path("o.img");
    env.restore(k["id"].as_str().unwrap(), &out);
    assert_same(&only_a, &out);
    let check = env.run(&["--json", "check", "--read-data"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Ten simulated days of a daily policy with `keep 7` leave exactly the newest seven
/// snapshots; a schedule missed for days is caught up once; untagged volumes are left alone.
#[test]
fn policy_keeps_the_newest_seven_and_catches_up_once() {
    let env = Env::new("policy");
    env.init(&[]);
    let img = env.path("db.img");
    write_at(&img, 8 << 20, 0, &random_bytes(1 << 20, 90));
    let other = env.path("other.img");
    write_at(&other, 8 << 20, 0, &random_bytes(1 << 20, 91));
    env.json(&[
        "volume",
        "add",
        "db",
        img.to_str().unwrap(),
        "--tag",
        "backup=daily",
    ]);
    env.json(&[
        "volume",
        "add",
        "scratch",
        other.to_str().unwrap(),
        "--tag",
        "backup=never",
    ]);
    let bad = env.run(&[
        "policy",
        "create",
        "p",
        "--target-tag",
        "backup=daily",
        "--schedule",
        "every day keep 7",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let p = env.json(&[
        "policy",
        "create",
        "nightly",
        "--target-tag",
        "backup=daily",
        "--schedule",
        "daily: every 1d at 03:00 keep 7",
    ]);
    assert_eq!(p["schedules"].as_array().unwrap().len(), 1);

    let mut taken = Vec::new();
    for day in 1..=10 {
        // Run twice a day: only the first run after 03:00 takes a snapshot.
        for hour in ["04:00", "18:00"] {
            let at = format!("2026-01-{day:02}T{hour}:00Z");
            let r = env.json(&["policy", "run", "--at", &at]);
            if hour == "04:00" {
                assert_eq!(r["taken"].as_array().unwrap().len(), 1, "{at}: {r}");
                taken.push(r["taken"][0]["snapshot"].as_str().unwrap().to_string());
            } else {
                assert!(r["taken"].as_array().unwrap().is_empty(), "{at}: {r}");
            }
        }
        // Change the disk a little every day.
        write_at(&img, 8 << 20, 2 << 20, &random_bytes(64 << 10, 100 + day));
    }
    let list = env.json(&["snapshot", "list", "--tag", "blocksnap:policy=nightly"]);
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, taken[3..].to_vec(), "exactly the newest seven remain");
    assert_eq!(list[0]["tags"]["blocksnap:schedule"], "daily");
    assert_eq!(env.json(&["trash", "list"]).as_array().unwrap().len(), 3);
    assert!(
        env.json(&["snapshot", "list", "--volume", "scratch"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Off for five days: the next run takes one snapshot, not five.
    let r = env.json(&["policy", "run", "--at", "2026-01-15T12:00:00Z"]);
    assert_eq!(r["taken"].as_array().unwrap().len(), 1, "{r}");
    let r = env.json(&["policy", "run", "--at", "2026-01-15T13:00:00Z"]);
    assert!(r["taken"].as_array().unwrap().is_empty(), "{r}");
    // A snapshot the policy did not take is never expired by it.
    let manual = env.json(&["snapshot", "create", "db"]);
    env.json(&["policy", "run", "--at", "2026-01-20T04:00:00Z"]);
    let all = env
        .json(&["snapshot", "list", "--volume", "db"])
        .to_string();
    assert!(all.contains(manual["id"].as_str().unwrap()));
    assert_eq!(env.json(&["policy", "list"]).as_array().unwrap().len(), 1);
    env.json(&["policy", "delete", "nightly"]);
}
