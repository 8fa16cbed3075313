//! Someone who can write to the store, and has an account of their own in it, attacks the
//! owner's data: every attack of the security review, through the binary on a real store. The
//! attacker ("mallory", or "bob" once revoked) runs blocksnap from their own machine (their own
//! config directory: their own identity and trust state) and edits the store's files by hand.
//! Each attack ends in a refusal with exit 6 ("tampered") that names the object, `check`
//! listing it, and none gives the attacker's data to the owner or the owner's to the attacker.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::common::*;

/// The attacker's blocksnap: the same store, their own config directory.
fn as_other(env: &Env, who: &str, args: &[&str]) -> Output {
    env.cmd()
        .env("XDG_CONFIG_HOME", env.path(&format!("{who}-config")))
        .args(["--account", who])
        .args(args)
        .output()
        .unwrap()
}

/// The attacker's account, made from the attacker's machine.
fn attacker(env: &Env, who: &str) {
    let out = as_other(env, who, &["account", "create", who]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn write_json(path: &Path, v: &Value) {
    fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn snapshot_file(env: &Env, id: &str) -> PathBuf {
    env.store.join("snapshots").join(format!("{id}.json"))
}

/// Asserts exit 6 with a message naming `what`.
fn assert_tampered(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(6), "{}", stderr(out));
    let err = stderr(out);
    assert!(err.contains(what), "expected '{what}' in: {err}");
    assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("verified"));
}

/// `check` exits 4 and lists something containing `what` as tampered.
fn assert_check_lists(env: &Env, what: &str) {
    let out = env.run(&["--json", "check"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tampered = report["tampered"].as_array().unwrap();
    assert!(
        tampered.iter().any(|t| t.as_str().unwrap().contains(what)),
        "check's tampered list lacks '{what}': {tampered:?}"
    );
    assert_eq!(report["ok"], false);
}

fn disk(env: &Env, name: &str, seed: u64) -> PathBuf {
    let p = env.path(name);
    write_at(&p, 8 << 20, 1 << 20, &random_bytes(2 << 20, seed));
    p
}

#[test]
fn a_forged_plaintext_snapshot_is_refused_and_listed() {
    let env = Env::new("tamper-plain");
    env.init(&[]);
    let owner_disk = disk(&env, "owner.img", 1);
    let real = env.snapshot(&owner_disk, "vm")["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The attacker makes a plaintext snapshot of their own disk in a store of their own, then
    // drops its packs and document into the owner's store.
    let evil = Env::new("tamper-plain-evil");
    evil.init(&["--no-encryption"]);
    let evil_disk = disk(&evil, "evil.img", 666);
    let forged = evil.snapshot(&evil_disk, "vm")["id"]
        .as_str()
        .unwrap()
        .to_string();
    for pack in evil.packs() {
        let rel = pack.strip_prefix(&evil.store).unwrap();
        let to = env.store.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&pack, &to).unwrap();
    }
    fs::copy(
        evil.store.join("snapshots").join(format!("{forged}.json")),
        snapshot_file(&env, &forged),
    )
    .unwrap();

    let out_path = env.path("restored.img");
    let out = env.run(&["snapshot", "restore", &forged, out_path.to_str().unwrap()]);
    assert_tampered(&out, &forged);
    assert!(
        !out_path.exists(),
        "nothing of the attacker's disk is written"
    );

    // The owner's own snapshot with its key taken away: the same refusal.
    let file = snapshot_file(&env, &real);
    let mut doc = json_file(&file);
    doc["key"] = Value::Null;
    write_json(&file, &doc);
    let out = env.run(&["snapshot", "restore", &real, out_path.to_str().unwrap()]);
    assert_tampered(&out, "names no key");
    let out = env.run(&["snapshot", "diff", &real, &forged]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    // Nothing serves it, registers it as an image, or prunes on its word.
    let out = env.run(&["serve", "nbd", &forged, "--listen", "127.0.0.1:0"]);
    assert_tampered(&out, &forged);
    let out = env.run(&[
        "image",
        "register",
        "evil",
        "--volume",
        &format!("vda={forged}"),
    ]);
    assert_tampered(&out, &forged);
    let out = env.run(&["prune"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));

    assert_check_lists(&env, &forged);
    assert_check_lists(&env, &real);
}

#[test]
fn turning_encryption_off_in_the_config_is_refused() {
    let env = Env::new("tamper-config");
    env.init(&[]);
    let d = disk(&env, "d.img", 2);
    env.snapshot(&d, "vm");
    let packs_before = env.packs().len();

    let config = env.store.join("config");
    let mut doc = json_file(&config);
    doc["encryption"] = Value::Bool(false);
    write_json(&config, &doc);
    write_at(&d, 8 << 20, 0, &random_bytes(1 << 20, 3));
    let out = env.run(&["snapshot", "create", d.to_str().unwrap(), "--volume", "vm"]);
    assert_tampered(&out, "not encrypted");
    assert_eq!(env.packs().len(), packs_before, "no pack was written");
    assert_eq!(
        fs::read_dir(env.store.join("snapshots")).unwrap().count(),
        1,
        "no snapshot was written"
    );

    // A downgrade of the format (documents without MACs) is refused the same way.
    doc["encryption"] = Value::Bool(true);
    doc["format"] = Value::from("blocksnap.config/v1");
    write_json(&config, &doc);
    let out = env.run(&["snapshot", "create", d.to_str().unwrap(), "--volume", "vm"]);
    assert_tampered(&out, "authenticated");
}

#[test]
fn a_key_named_like_the_owners_and_an_edited_volume_path_are_not_followed() {
    let env = Env::new("tamper-keysub");
    env.init(&[]);
    let d = disk(&env, "d.img", 4);
    let secret = env.path("secret.img");
    write_at(&secret, 8 << 20, 0, b"the attacker wants this file");
    assert!(
        env.run(&["volume", "add", "vm", d.to_str().unwrap()])
            .status
            .success()
    );
    let first = env.json(&["snapshot", "create", "vm"]);
    let owner_key = first["key"].as_str().unwrap().to_string();

    // Mallory makes a key of his own, grants it to the owner (wrapping it to the owner's
    // public recipient, which anyone can do) and names it "default" in its document. (He
    // could seal the renamed document too, holding the key; the owner never looks at it.)
    attacker(&env, "mallory");
    assert!(
        as_other(&env, "mallory", &["key", "create", "evil"])
            .status
            .success()
    );
    let out = as_other(&env, "mallory", &["key", "grant", "evil", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let keys: Value =
        serde_json::from_slice(&as_other(&env, "mallory", &["--json", "key", "list"]).stdout)
            .unwrap();
    let evil_key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "evil")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let evil_file = env.store.join("keys").join(format!("{evil_key}.json"));
    let text = fs::read_to_string(&evil_file)
        .unwrap()
        .replace("\"name\": \"evil\"", "\"name\": \"default\"");
    fs::write(&evil_file, text).unwrap();

    // The owner's next snapshot is under the owner's pinned key, not mallory's.
    write_at(&d, 8 << 20, 0, &random_bytes(1 << 20, 5));
    let next = env.json(&["snapshot", "create", "vm"]);
    assert_eq!(next["key"], owner_key.as_str());
    // A client that never pinned the name sees two keys called "default": ambiguous, exit 2.
    let id = json_file(&env.store.join("config"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let alice_identity = env.path("config/blocksnap").join(&id).join("alice.key");
    let fresh = env
        .cmd()
        .env("XDG_CONFIG_HOME", env.path("new-machine"))
        .arg("--identity")
        .arg(&alice_identity)
        .args(["snapshot", "create", d.to_str().unwrap(), "--volume", "vm2"])
        .output()
        .unwrap();
    assert_eq!(fresh.status.code(), Some(2), "{}", stderr(&fresh));
    assert!(
        stderr(&fresh).contains("matches 2 keys"),
        "{}",
        stderr(&fresh)
    );

    // Mallory points the owner's volume at a file of his choosing: the nightly run reads
    // nothing of it.
    let vol = env.store.join("volumes/vm.json");
    let mut doc = json_file(&vol);
    doc["path"] = Value::from(secret.to_str().unwrap());
    write_json(&vol, &doc);
    let out = env.run(&["snapshot", "create", "vm"]);
    assert_tampered(&out, "volume vm");
    assert_check_lists(&env, "volume vm");
}

#[test]
fn rollback_by_extent_copy_and_an_old_head_are_refused() {
    let env = Env::new("tamper-rollback");
    env.init(&[]);
    let d = disk(&env, "d.img", 6);
    let v1 = env.snapshot(&d, "vm")["id"].as_str().unwrap().to_string();
    let head = fs::read(env.store.join("heads/vm.json")).unwrap();
    write_at(&d, 8 << 20, 0, &random_bytes(1 << 20, 7));
    let v2 = env.snapshot(&d, "vm")["id"].as_str().unwrap().to_string();

    // v1's extents copied into v2's document: v2 would restore the old disk.
    let (f1, f2) = (snapshot_file(&env, &v1), snapshot_file(&env, &v2));
    let original_v2 = fs::read(&f2).unwrap();
    let mut doc2 = json_file(&f2);
    doc2["extents"] = json_file(&f1)["extents"].clone();
    doc2["data_bytes"] = json_file(&f1)["data_bytes"].clone();
    write_json(&f2, &doc2);
    let out_path = env.path("r.img");
    let out = env.run(&["snapshot", "restore", &v2, out_path.to_str().unwrap()]);
    assert_tampered(&out, &v2);
    assert!(!out_path.exists());
    assert_check_lists(&env, &v2);

    // v1's whole document copied over v2's: its MAC is valid, but it is not v2.
    fs::copy(&f1, &f2).unwrap();
    let out = env.run(&["snapshot", "restore", &v2, out_path.to_str().unwrap()]);
    assert_tampered(&out, "instead");
    fs::write(&f2, original_v2).unwrap();

    // The volume's head put back to what it was after v1: the next snapshot is refused.
    fs::write(env.store.join("heads/vm.json"), head).unwrap();
    write_at(&d, 8 << 20, 0, &random_bytes(1 << 20, 8));
    let out = env.run(&["snapshot", "create", d.to_str().unwrap(), "--volume", "vm"]);
    assert_tampered(&out, "older head");
    assert_check_lists(&env, "older head");
}

#[test]
fn an_image_pointed_at_a_foreign_snapshot_is_refused() {
    let env = Env::new("tamper-image");
    env.init(&[]);
    let d = disk(&env, "root.img", 9);
    let image = env.json(&[
        "image",
        "create",
        "web",
        "--volume",
        &format!("/dev/vda={}", d.display()),
    ]);
    let old = image["volumes"][0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // Another snapshot of the same size and key, the one the attacker wants booted.
    let other = disk(&env, "other.img", 10);
    let foreign = env.snapshot(&other, "other")["id"]
        .as_str()
        .unwrap()
        .to_string();

    let id = image["id"].as_str().unwrap();
    let file = env.store.join("images").join(format!("{id}.json"));
    let text = fs::read_to_string(&file).unwrap().replace(&old, &foreign);
    fs::write(&file, text).unwrap();
    let out = env.run(&["image", "rebuild", "web", env.path("out").to_str().unwrap()]);
    assert_tampered(&out, "image");
    assert!(!env.path("out").exists(), "nothing was rebuilt");
    assert_check_lists(&env, id);

    // An image whose key is taken away (in a plain store it would need no grant).
    let mut doc = json_file(&file);
    doc["key"] = Value::Null;
    write_json(&file, &doc);
    let out = env.run(&["image", "rebuild", "web", env.path("out").to_str().unwrap()]);
    assert_tampered(&out, id);
}

#[test]
fn a_grant_redirected_to_another_recipient_is_refused() {
    let env = Env::new("tamper-grant");
    env.init(&[]);
    let bob = env.json(&["account", "create", "bob"]);
    let bob_fingerprint = bob["fingerprint"].as_str().unwrap().to_string();
    let granted = env.json(&[
        "key",
        "grant",
        "default",
        "bob",
        "--expect",
        &bob_fingerprint,
    ]);
    assert_eq!(granted["grantee_fingerprint"], bob_fingerprint.as_str());

    // Mallory swaps bob's account document for one of his own making: an account named bob
    // whose recipient and signing key are Mallory's, properly self-signed (made with his own
    // identity in a store of his own).
    attacker(&env, "mallory");
    let elsewhere = Env::new("tamper-grant-mallory");
    elsewhere.init(&[]);
    let made = elsewhere.json(&["account", "create", "bob"]);
    let mallory_fingerprint = made["fingerprint"].as_str().unwrap().to_string();
    fs::copy(
        elsewhere.store.join("accounts/bob.json"),
        env.store.join("accounts/bob.json"),
    )
    .unwrap();
    // Merely swapping the recipient breaks the document's signature.
    let mut half = json_file(&env.store.join("accounts/bob.json"));
    half["recipient"] = json_file(&env.store.join("accounts/mallory.json"))["recipient"].clone();
    write_json(&env.path("half.json"), &half);

    // A grant of another key to bob: this client pinned bob's recipient at the first grant.
    assert!(env.run(&["key", "create", "k2"]).status.success());
    let out = env.run(&["key", "grant", "k2", "bob"]);
    assert_tampered(&out, "another signing key");
    assert_check_lists(&env, "account bob");
    // A client that never granted to bob is stopped by the fingerprint bob gave.
    let fresh = env
        .cmd()
        .env("XDG_CONFIG_HOME", env.path("config-copy"))
        .args(["key", "grant", "k2", "bob", "--expect", &bob_fingerprint])
        .output()
        .unwrap();
    assert_tampered(&fresh, &mallory_fingerprint);
    // A document whose recipient alone was swapped fails its own signature.
    fs::copy(env.path("half.json"), env.store.join("accounts/bob.json")).unwrap();
    let out = env.run(&["key", "grant", "k2", "bob"]);
    assert_tampered(&out, "signature does not match");
    // Mallory cannot read k2: no grant went to him.
    let keys = env.json(&["key", "list"]);
    let k2 = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "k2")
        .unwrap();
    assert_eq!(k2["grants"], serde_json::json!(["alice"]));
}

#[test]
fn a_revoked_account_cannot_put_its_old_key_document_back() {
    let env = Env::new("tamper-revoked");
    env.init(&[]);
    let d = disk(&env, "d.img", 11);
    env.snapshot(&d, "vm");
    attacker(&env, "bob");
    assert!(
        env.run(&["key", "grant", "default", "bob"])
            .status
            .success()
    );
    let key_file = fs::read_dir(env.store.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let with_bob = fs::read(&key_file).unwrap();
    assert!(
        env.run(&["key", "revoke", "default", "bob"])
            .status
            .success()
    );

    // Bob puts back the document that held his grant.
    fs::write(&key_file, &with_bob).unwrap();
    write_at(&d, 8 << 20, 0, &random_bytes(1 << 20, 12));
    let out = env.run(&["snapshot", "create", d.to_str().unwrap(), "--volume", "vm"]);
    assert_tampered(&out, "key 'default'");
    assert_check_lists(&env, "key 'default'");
}

#[test]
fn migrate_authenticates_a_store_made_before() {
    let env = Env::new("tamper-migrate");
    env.init(&[]);
    let d = disk(&env, "d.img", 13);
    let snap = env.snapshot(&d, "vm")["id"].as_str().unwrap().to_string();
    // Make it look like a store of the previous format: no MACs, config v1, no trust state.
    let strip = |p: &Path| {
        let mut v = json_file(p);
        v.as_object_mut().unwrap().remove("mac");
        write_json(p, &v);
    };
    for dir in ["snapshots", "keys"] {
        for f in fs::read_dir(env.store.join(dir)).unwrap() {
            strip(&f.unwrap().path());
        }
    }
    let config = env.store.join("config");
    let mut c = json_file(&config);
    c["format"] = Value::from("blocksnap.config/v1");
    write_json(&config, &c);
    let trust = fs::read_dir(env.path("config/blocksnap"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("trust.json");
    fs::remove_file(&trust).unwrap();

    // It still works as before.
    env.restore(&snap, &env.path("a.img"));
    let r = env.json(&["migrate"]);
    assert_eq!(r["to"], "blocksnap.config/v2");
    assert!(r["sealed"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(json_file(&config)["format"], "blocksnap.config/v2");
    env.restore(&snap, &env.path("b.img"));
    let check = env.json(&["check"]);
    assert_eq!(check["ok"], true, "{check}");
    // Now a document without a MAC is refused.
    strip(&snapshot_file(&env, &snap));
    let out = env.run(&[
        "snapshot",
        "restore",
        &snap,
        env.path("c.img").to_str().unwrap(),
    ]);
    assert_tampered(&out, "carries no MAC");
}
