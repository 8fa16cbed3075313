//! Volumes, snapshot deletion and the trash.

mod common;

use common::*;

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
