//! Damage heals by the obvious step, and `check` never gives a false green: after a pack is
//! deleted, truncated or has a flipped byte, `check` names it and what it affects, `repair packs`
//! makes the index forget what is lost, and the next snapshot of the intact image stores it again
//! so that it restores byte-identical and `check --read-data` is clean. `check` exits 5 when it
//! could not verify what it was asked to, and names leftovers of killed runs as notes.

use std::fs;
use std::path::PathBuf;
use std::process::Output;

use crate::common::*;
use serde_json::Value;

struct Fixture {
    env: Env,
    image: PathBuf,
    snap: String,
}

/// A store with one snapshot of a real ext4 image.
fn fixture(name: &str) -> Fixture {
    let env = Env::new(name);
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 40, 23);
    let image = env.path("disk.img");
    make_ext4(&image, 64 << 20, &tree);
    let s = env.snapshot(&image, "disk");
    let snap = s["id"].as_str().unwrap().to_string();
    Fixture { env, image, snap }
}

fn largest_pack(env: &Env) -> PathBuf {
    env.packs()
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .expect("the store has a pack")
}

fn name_of(p: &std::path::Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

/// Runs `blocksnap --json [pre...] check [args...]`; returns the exit status, the report and
/// stderr, after checking that the report's counts add up.
fn check_with(env: &Env, pre: &[&str], args: &[&str]) -> (Option<i32>, Value, String) {
    let mut all: Vec<&str> = pre.to_vec();
    all.extend(["--json", "check"]);
    all.extend_from_slice(args);
    let out = env.run(&all);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}): {}", stderr(&out)));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("check --json lacks {k}: {v}"))
    };
    let len = |k: &str| {
        v[k].as_array()
            .unwrap_or_else(|| panic!("check --json lacks {k}: {v}"))
            .len() as u64
    };
    assert_eq!(
        n("chunks"),
        n("chunks_verified") + n("chunks_damaged") + n("chunks_not_verified"),
        "chunk counts must add up: {v}"
    );
    assert_eq!(
        n("snapshots"),
        len("damaged_snapshots") + len("intact_snapshots"),
        "snapshot counts must add up: {v}"
    );
    (out.status.code(), v, stderr(&out))
}

fn check(env: &Env, args: &[&str]) -> (Option<i32>, Value, String) {
    check_with(env, &[], args)
}

fn text(v: &Value, field: &str) -> String {
    v[field].to_string()
}

fn ids(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field}: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Snapshots the intact image again, restores that snapshot, compares it with the image, and
/// checks that `check --read-data` is clean, for the old snapshot too.
fn snapshot_again_restores_identical_and_check_is_clean(f: &Fixture) -> Value {
    let again = f.env.snapshot(&f.image, "disk");
    let out = f.env.path("again.img");
    f.env.restore(again["id"].as_str().unwrap(), &out);
    assert_same(&f.image, &out);
    let (code, v, err) = check(&f.env, &["--read-data"]);
    assert_eq!(code, Some(0), "check --read-data after healing: {v}\n{err}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    // The old snapshot shared the lost chunks with the image: it is whole again.
    assert!(ids(&v, "intact_snapshots").contains(&f.snap), "{v}");
    assert_eq!(v["chunks_verified"], v["chunks"], "{v}");
    let old = f.env.path("old.img");
    f.env.restore(&f.snap, &old);
    assert_same(&f.image, &old);
    again
}

#[test]
fn a_deleted_pack_heals_by_repair_packs_and_a_new_snapshot() {
    let f = fixture("heal_deleted");
    let pack = largest_pack(&f.env);
    let pack_id = name_of(&pack);
    fs::remove_file(&pack).unwrap();

    let (code, v, _) = check(&f.env, &[]);
    assert_eq!(code, Some(4), "{v}");
    assert_eq!(v["ok"], false);
    assert!(text(&v, "problems").contains(&pack_id), "{v}");
    assert_eq!(ids(&v, "missing_packs"), vec![pack_id.clone()], "{v}");
    assert_eq!(ids(&v, "damaged_snapshots"), vec![f.snap.clone()], "{v}");
    assert!(v["stale_index_entries"].as_u64().unwrap() > 0, "{v}");
    let steps = text(&v, "next_steps");
    assert!(
        steps.contains("blocksnap repair packs") && steps.contains("disk"),
        "check must name the repair and the volume to snapshot again: {v}"
    );
    // The human report says the same, in words.
    let human = f.env.run(&["check"]);
    let out = String::from_utf8_lossy(&human.stdout);
    assert!(
        out.contains(&format!("1 damaged ({})", f.snap))
            && out.contains("blocksnap repair packs")
            && out.contains("Recovering from damage"),
        "{out}"
    );

    let r = f.env.json(&["repair", "packs"]);
    assert_eq!(ids(&r, "missing_packs"), vec![pack_id.clone()], "{r}");
    assert!(r["chunks_forgotten"].as_u64().unwrap() > 0, "{r}");
    // The index no longer points at the missing pack; the snapshot is still damaged until the
    // next snapshot stores its chunks again.
    let (code, v, _) = check(&f.env, &[]);
    assert_eq!(code, Some(4), "{v}");
    assert_eq!(v["stale_index_entries"], 0, "{v}");
    assert!(ids(&v, "missing_packs").is_empty(), "{v}");
    assert_eq!(ids(&v, "damaged_snapshots"), vec![f.snap.clone()], "{v}");

    let again = snapshot_again_restores_identical_and_check_is_clean(&f);
    assert!(again["chunks_new"].as_u64().unwrap() > 0, "{again}");
}

#[test]
fn a_snapshot_after_a_pack_was_deleted_is_restorable_without_any_repair() {
    let f = fixture("heal_no_repair");
    let pack = largest_pack(&f.env);
    fs::remove_file(&pack).unwrap();
    let out = f.env.run(&[
        "--json",
        "snapshot",
        "create",
        f.image.to_str().unwrap(),
        "--volume",
        "disk",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    let restored = f.env.path("again.img");
    f.env.restore(again["id"].as_str().unwrap(), &restored);
    assert_same(&f.image, &restored);
    assert!(again["chunks_new"].as_u64().unwrap() > 0, "{again}");
    assert!(
        stderr(&out).contains(&name_of(&pack)),
        "the snapshot says it met a missing pack: {}",
        stderr(&out)
    );
    // The same image held every lost chunk: the old snapshot is whole again too.
    let (code, v, err) = check(&f.env, &["--read-data"]);
    assert_eq!(code, Some(0), "{v}\n{err}");
}

/// Flips one byte in the middle of the largest pack: inside one chunk's record.
fn flip_one_byte(f: &Fixture) -> String {
    let pack = largest_pack(&f.env);
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    fs::write(&pack, bytes).unwrap();
    name_of(&pack)
}

#[test]
fn one_flipped_byte_is_one_damaged_chunk_and_heals() {
    let f = fixture("heal_flipped");
    let pack_id = flip_one_byte(&f);

    let (code, v, _) = check(&f.env, &["--read-data"]);
    assert_eq!(code, Some(4), "{v}");
    assert_eq!(
        v["chunks_damaged"], 1,
        "one flipped byte is one damaged chunk: {v}"
    );
    assert_eq!(
        v["chunks_verified"].as_u64().unwrap() + 1,
        v["chunks"].as_u64().unwrap(),
        "every other chunk verifies: {v}"
    );
    assert_eq!(ids(&v, "damaged_packs"), vec![pack_id.clone()], "{v}");
    assert_eq!(ids(&v, "damaged_snapshots"), vec![f.snap.clone()], "{v}");
    let problems: Vec<String> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    // One line for the damaged record, one for the snapshot that uses it: not one per chunk
    // of the pack.
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains(&pack_id), "{problems:#?}");
    assert!(problems[1].contains(&f.snap), "{problems:#?}");
    assert!(
        text(&v, "next_steps").contains("blocksnap repair packs --read-data"),
        "{v}"
    );

    let r = f.env.json(&["repair", "packs", "--read-data"]);
    assert_eq!(ids(&r, "damaged_packs"), vec![pack_id.clone()], "{r}");
    assert_eq!(r["chunks_forgotten"], 1, "{r}");
    assert_eq!(
        r["chunks_moved"].as_u64().unwrap() + 1,
        v["chunks"].as_u64().unwrap(),
        "every intact chunk is kept: {r}"
    );
    let aside = PathBuf::from(r["set_aside"][0].as_str().unwrap());
    assert!(
        aside.is_file(),
        "the damaged pack is set aside, not deleted: {r}"
    );
    assert!(!f.env.packs().iter().any(|p| name_of(p) == pack_id), "{r}");

    // The intact chunks are reused: the new snapshot stores only the lost one again.
    let again = snapshot_again_restores_identical_and_check_is_clean(&f);
    assert!(again["chunks_new"].as_u64().unwrap() <= 1, "{again}");
    // `repair index` cannot bring the damaged record back: the pack is set aside.
    f.env.json(&["repair", "index"]);
    let (code, v, _) = check(&f.env, &["--read-data"]);
    assert_eq!(code, Some(0), "{v}");
    assert!(text(&v, "notes").contains(".damaged"), "{v}");
}

#[test]
fn a_truncated_pack_loses_only_the_chunks_past_its_end_and_heals() {
    let f = fixture("heal_truncated");
    let pack = largest_pack(&f.env);
    let len = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (code, v, _) = check(&f.env, &[]);
    assert_eq!(code, Some(4), "{v}");
    assert_eq!(ids(&v, "damaged_packs"), vec![name_of(&pack)], "{v}");
    let lost = v["chunks_damaged"].as_u64().unwrap();
    assert!(
        lost > 0 && lost < v["chunks"].as_u64().unwrap() - 1,
        "only the chunks past the end are lost: {v}"
    );
    // Listed per pack up to a limit, then counted: a report a person can read.
    assert!(v["problems"].as_array().unwrap().len() < 30, "{v}");
    assert!(text(&v, "problems").contains("more damaged chunks"), "{v}");
    let r = f.env.json(&["repair", "packs"]);
    assert_eq!(ids(&r, "damaged_packs"), vec![name_of(&pack)], "{r}");
    assert_eq!(r["chunks_forgotten"].as_u64().unwrap(), lost, "{r}");
    assert!(r["chunks_moved"].as_u64().unwrap() > 0, "{r}");
    snapshot_again_restores_identical_and_check_is_clean(&f);
}

#[test]
fn check_finds_index_entries_pointing_at_missing_packs() {
    let f = fixture("heal_stale_entries");
    // No snapshot uses the pack any more, but the index still lists its chunks.
    f.env.json(&["snapshot", "delete", &f.snap]);
    f.env.json(&["trash", "empty"]);
    let pack = largest_pack(&f.env);
    fs::remove_file(&pack).unwrap();
    // The index is each user's cache, outside the store: entries that no snapshot uses, into a
    // pack that is gone, are what a prune on another host leaves in it. Found and named, with
    // the fix, but not damage (exit 0); entries a snapshot uses are damage (the tests above).
    let (code, v, _) = check(&f.env, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert!(v["stale_index_entries"].as_u64().unwrap() > 0, "{v}");
    let notes = text(&v, "notes");
    assert!(
        notes.contains(&name_of(&pack)) && notes.contains("blocksnap repair packs"),
        "{v}"
    );
    f.env.json(&["repair", "packs"]);
    let (code, v, _) = check(&f.env, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["stale_index_entries"], 0, "{v}");
}

/// bob has an account and an identity but no grant on the key.
fn add_bob(env: &Env) {
    env.json(&["account", "create", "bob"]);
}

fn assert_not_verified(code: Option<i32>, v: &Value, err: &str, snap: &str) {
    assert_eq!(
        code,
        Some(5),
        "check that could not verify must exit 5: {v}\n{err}"
    );
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    let nv = text(v, "not_verified");
    assert!(nv.contains("bob") && nv.contains(snap), "{v}");
    assert!(
        err.contains("not verified") && err.contains(snap) && err.contains("key grant"),
        "stderr names what was not verified and the fix: {err}"
    );
    assert!(
        ids(v, "unverified_snapshots").contains(&snap.to_string()),
        "{v}"
    );
}

#[test]
fn check_without_a_grant_exits_5_and_names_what_was_not_verified() {
    let f = fixture("heal_no_grant");
    add_bob(&f.env);
    let (code, v, err) = check_with(&f.env, &["--account", "bob"], &[]);
    assert_not_verified(code, &v, &err, &f.snap);
    let (code, v, err) = check_with(&f.env, &["--account", "bob"], &["--read-data"]);
    assert_not_verified(code, &v, &err, &f.snap);
    assert_eq!(v["chunks_verified"], 0, "{v}");

    // Under -q, in human form: still said, on stderr, and still exit 5.
    let out: Output = f.env.run(&["-q", "--account", "bob", "check"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not verified") && stderr(&out).contains(&f.snap),
        "{}",
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("result: no problems\n") && stdout.contains("not everything was verified"),
        "{stdout}"
    );

    // No identity at all for the account: the same, naming the identity file it looked for.
    let missing = f.env.path("no-such.key");
    let (code, v, err) = check_with(
        &f.env,
        &["--identity", missing.to_str().unwrap()],
        &["--read-data"],
    );
    assert_eq!(code, Some(5), "{v}\n{err}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert!(
        text(&v, "not_verified").contains(missing.to_str().unwrap())
            && err.contains(missing.to_str().unwrap()),
        "{v}\n{err}"
    );
    assert!(ids(&v, "unverified_snapshots").contains(&f.snap), "{v}");

    // What needs no key is checked all the same: a truncated pack is damage (4 wins over 5).
    let pack = largest_pack(&f.env);
    let len = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let (code, v, _) = check_with(&f.env, &["--account", "bob"], &[]);
    assert_eq!(code, Some(4), "{v}");
    assert!(text(&v, "problems").contains(&name_of(&pack)), "{v}");
    assert!(!v["not_verified"].as_array().unwrap().is_empty(), "{v}");
}

/// `repair packs` by an account without a grant on some packs' key cannot examine them: it
/// repairs what it can (a damaged pack under a key it holds), then exits 5 naming the packs it
/// could not examine and the account that can; that account's run repairs them.
#[test]
fn repair_packs_without_a_grant_exits_5_naming_the_packs_and_who_can() {
    let f = fixture("heal_repair_no_grant");
    let before: Vec<PathBuf> = f.env.packs();
    f.env.json(&["key", "create", "private"]);
    // Two snapshots under `private`, each writing its own pack.
    let other = f.env.path("other.img");
    for seed in [31, 32] {
        write_at(&other, 8 << 20, 0, &random_bytes(3 << 20, seed));
        f.env.json(&[
            "snapshot",
            "create",
            other.to_str().unwrap(),
            "--volume",
            "other",
            "--key",
            "private",
        ]);
    }
    let private: Vec<PathBuf> = f
        .env
        .packs()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(private.len() >= 2, "{private:?}");
    add_bob(&f.env);
    f.env.json(&["key", "grant", "default", "bob"]);
    // A pack of `default` and one of `private` lose their tail; the other `private` one is
    // intact.
    let truncate = |p: &PathBuf| {
        let len = fs::metadata(p).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
    };
    let public = largest_pack(&f.env);
    assert!(!private.contains(&public), "the largest pack is default's");
    truncate(&public);
    truncate(&private[0]);

    let out = f
        .env
        .run(&["--account", "bob", "--json", "repair", "packs"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&r, "damaged_packs"), vec![name_of(&public)], "{r}");
    let mut expected: Vec<String> = private.iter().map(|p| name_of(p)).collect();
    expected.sort();
    let mut got = ids(&r, "not_examined");
    got.sort();
    assert_eq!(got, expected, "{r}");
    let line = text(&r, "not_repaired");
    for w in [
        name_of(&private[0]).as_str(),
        name_of(&private[1]).as_str(),
        "not examined",
        "is damaged, but its chunks cannot be moved",
        "holds no grant on key 'private'",
        "blocksnap --account alice repair packs",
    ] {
        assert!(line.contains(w), "not_repaired lacks {w:?}: {r}");
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
    assert!(
        err.contains("not repaired") && err.contains("exit 5"),
        "{err}"
    );
    assert!(private[0].exists(), "bob could not examine it: it stays");

    // Human form, -q: still said, still 5.
    let out = f.env.run(&["-q", "--account", "bob", "repair", "packs"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&name_of(&private[0])),
        "{}",
        stderr(&out)
    );

    // alice holds both keys: her run repairs the private pack and ends 0.
    let r = f.env.json(&["repair", "packs"]);
    assert_eq!(ids(&r, "damaged_packs"), vec![name_of(&private[0])], "{r}");
    assert!(r["not_examined"].as_array().unwrap().is_empty(), "{r}");
    assert!(!private[0].exists());
}

#[test]
fn leftovers_of_killed_runs_are_notes_with_prune_as_the_fix() {
    let f = fixture("heal_leftovers");
    // What a killed snapshot leaves: a temporary pack, and a durable pack no snapshot uses.
    let tmp = f.env.store.join("packs").join(".tmp-0123456789abcdef");
    fs::write(&tmp, random_bytes(5000, 7)).unwrap();
    let other = f.env.path("other.img");
    write_at(&other, 8 << 20, 0, &random_bytes(3 << 20, 8));
    let s = f.env.snapshot(&other, "other");
    f.env
        .json(&["snapshot", "delete", s["id"].as_str().unwrap()]);
    f.env.json(&["trash", "empty"]);

    let (code, v, err) = check(&f.env, &[]);
    assert_eq!(code, Some(0), "leftovers are not damage: {v}");
    assert_eq!(v["ok"], true, "{v}");
    let notes: Vec<String> = v["notes"]
        .as_array()
        .unwrap_or_else(|| panic!("no notes: {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains(".tmp-0123456789abcdef") && n.contains("blocksnap prune")),
        "{notes:#?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("hold no chunk any snapshot uses") && n.contains("blocksnap prune")),
        "{notes:#?}"
    );
    assert!(
        err.contains(".tmp-0123456789abcdef"),
        "notes are on stderr too: {err}"
    );

    f.env.json(&["prune"]);
    let (code, v, _) = check(&f.env, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert!(
        v["notes"].as_array().unwrap().is_empty(),
        "prune removed them: {v}"
    );
}
