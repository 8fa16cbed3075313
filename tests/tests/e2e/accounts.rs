//! Accounts and key grants: access is decided by cryptography. An account without a grant
//! cannot restore, whatever it is told; a grant lets it; a revoke stops it again.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;

#[test]
fn grant_and_revoke_decide_who_can_restore() {
    let env = Env::new("grants");
    env.init(&[]);
    let img = env.path("d.img");
    write_at(&img, 16 << 20, 1 << 20, &random_bytes(3 << 20, 40));
    let snap = env.snapshot(&img, "d")["id"].as_str().unwrap().to_string();

    let bob = env.json(&["account", "create", "bob"]);
    let identity = std::path::PathBuf::from(bob["identity"].as_str().unwrap());
    assert_eq!(
        fs::metadata(&identity).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let accounts = env.json(&["account", "list"]);
    assert_eq!(accounts.as_array().unwrap().len(), 2);

    let out_path = env.path("bob.img");
    let bob_restore = || {
        env.run(&[
            "--account",
            "bob",
            "snapshot",
            "restore",
            &snap,
            out_path.to_str().unwrap(),
        ])
    };
    let denied = bob_restore();
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    assert!(
        stderr(&denied).contains("blocksnap key grant default bob"),
        "{}",
        stderr(&denied)
    );

    // Bob cannot grant himself the key: he holds no copy to wrap.
    let self_grant = env.run(&["--account", "bob", "key", "grant", "default", "bob"]);
    assert_eq!(self_grant.status.code(), Some(3), "{}", stderr(&self_grant));

    // Editing the key document by hand to add a grant for bob gains nothing: the wrapped copy
    // must be the key encrypted to bob's identity, which only a holder of the key can make.
    let key_file = fs::read_dir(env.store.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let original = fs::read_to_string(&key_file).unwrap();
    let forged = original.replacen("\"account\": \"alice\"", "\"account\": \"bob\"", 1);
    fs::write(&key_file, &forged).unwrap();
    let forged_try = bob_restore();
    assert_eq!(forged_try.status.code(), Some(3), "{}", stderr(&forged_try));
    fs::write(&key_file, &original).unwrap();

    let granted = env.json(&["key", "grant", "default", "bob"]);
    assert_eq!(granted["grants"].as_array().unwrap().len(), 2);
    let ok = bob_restore();
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_same(&img, &out_path);
    fs::remove_file(&out_path).unwrap();

    env.json(&["key", "revoke", "default", "bob"]);
    assert_eq!(bob_restore().status.code(), Some(3));
    // The last grant cannot be revoked.
    let last = env.run(&["key", "revoke", "default", "alice"]);
    assert_eq!(last.status.code(), Some(2), "{}", stderr(&last));
}

#[test]
fn snapshots_under_another_key_do_not_dedup_across_keys() {
    let env = Env::new("keys");
    env.init(&[]);
    let img = env.path("d.img");
    write_at(&img, 8 << 20, 0, &random_bytes(2 << 20, 41));
    let a = env.snapshot(&img, "d");
    let k = env.json(&["key", "create", "team"]);
    assert!(k["id"].as_str().unwrap().starts_with("key-"));
    let b = env.json(&[
        "snapshot",
        "create",
        img.to_str().unwrap(),
        "--volume",
        "d",
        "--key",
        "team",
    ]);
    assert_eq!(b["key"], k["id"]);
    // Chunk ids are keyed (and, in a new store, cut points too): the same data under another
    // key is stored again, every chunk of it (dedup scope is a key).
    assert_eq!(b["chunks_new"], b["chunks"]);
    assert!(a["chunks_new"].as_u64().unwrap() > 0);
    let keys = env.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let out = env.path("o.img");
    env.restore(b["id"].as_str().unwrap(), &out);
    assert_same(&img, &out);
}
