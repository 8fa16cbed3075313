//! A store on S3: `init`, `snapshot create` and `snapshot restore` through the binary against a
//! real local S3 server (moto) that the test starts and stops.

use std::path::PathBuf;
use std::process::Output;

use blocksnap_backend::Backend;
use blocksnap_s3::moto::Moto;

use crate::common::*;

/// The store's commands, with the S3 settings of `moto` in their environment.
fn run(env: &Env, moto: &Moto, args: &[&str]) -> Output {
    env.cmd()
        .envs(moto.env())
        .env("BLOCKSNAP_S3_RETRY_TIMEOUT", "5")
        .args(args)
        .output()
        .unwrap()
}

fn json(env: &Env, moto: &Moto, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(env, moto, &all);
    assert!(
        out.status.success(),
        "blocksnap {args:?} failed ({:?}):\n{}",
        out.status,
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn init_snapshot_and_restore_on_s3_byte_identical() {
    let moto = Moto::start();
    moto.create_bucket("e2e");
    let mut env = Env::new("s3_store");
    env.store = PathBuf::from("s3://e2e/stores/one");

    // Opening before init says how to make the store; nothing appears locally.
    let out = run(&env, &moto, &["snapshot", "list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("s3://e2e/stores/one"),
        "{}",
        stderr(&out)
    );
    assert!(!PathBuf::from("s3:").exists());

    let init = json(&env, &moto, &["init", "--account", "alice"]);
    assert_eq!(init["store"], "s3://e2e/stores/one", "{init}");
    // A second init is refused: the bucket already holds the store.
    let again = run(&env, &moto, &["init", "--account", "alice"]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));

    // A small disk image: random data (unique chunks), text (compressible) and a hole.
    let image = env.path("disk.img");
    let mut data = random_bytes(3 << 20, 7);
    data.extend(vec![0u8; 1 << 20]);
    data.extend(text_bytes(2 << 20, 8));
    std::fs::write(&image, &data).unwrap();

    let snap = json(
        &env,
        &moto,
        &[
            "snapshot",
            "create",
            image.to_str().unwrap(),
            "--volume",
            "vm1",
        ],
    );
    let id = snap["id"].as_str().unwrap().to_string();
    let out = env.path("restored.img");
    json(
        &env,
        &moto,
        &["snapshot", "restore", &id, out.to_str().unwrap()],
    );
    assert_same(&image, &out);
    // The objects are in the bucket, under the prefix, and nothing of the probe is left.
    let env_vars = moto.env();
    let settings: Vec<(&str, &str)> = env_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bucket = blocksnap_s3::S3Backend::from_url_with("s3://e2e", &settings).unwrap();
    let keys: Vec<String> = bucket
        .list("")
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("stores/one/")),
        "{keys:?}"
    );
    assert!(keys.contains(&"stores/one/config".to_string()), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with("stores/one/packs/")),
        "{keys:?}"
    );

    // A second snapshot of the same image dedups against the first (its chunks are in the
    // bucket), and check reads every pack back.
    json(
        &env,
        &moto,
        &[
            "snapshot",
            "create",
            image.to_str().unwrap(),
            "--volume",
            "vm1",
        ],
    );
    json(&env, &moto, &["check", "--read-data"]);
}

#[test]
fn a_bad_s3_url_and_recovery_import_into_s3_are_usage_errors() {
    let moto = Moto::start();
    let mut env = Env::new("s3_bad_url");
    env.store = PathBuf::from("s3://Bad_Bucket/x");
    let out = run(&env, &moto, &["init", "--account", "alice"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bucket name"), "{}", stderr(&out));
    // recovery import takes local stores only, and says so before reading anything.
    env.store = PathBuf::from("s3://some-bucket/x");
    let file = env.path("recovery.json");
    let out = run(&env, &moto, &["recovery", "import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("local store only"),
        "{}",
        stderr(&out)
    );
}
