//! `image copy` between a local store and a store in a bucket, both ways, with another account
//! and key on each side: re-encrypted, rebuilt byte-identical on the target, and moving only
//! the chunks the target lacks.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::*;

fn sum(report: &Value, field: &str) -> u64 {
    report["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("no snapshots in {report}"))
        .iter()
        .map(|s| s[field].as_u64().unwrap())
        .sum()
}

/// The command on `store` (a path or an s3:// URL) acting with `identity`.
fn on(env: &Env, moto: &S3Server, store: &str, identity: &Path) -> Command {
    let mut c = env.cmd_at(Path::new(store));
    c.envs(moto.env())
        .env("BLOCKSNAP_S3_RETRY_TIMEOUT", "5")
        .arg("--identity")
        .arg(identity);
    c
}

fn ok(mut c: Command, args: &[&str]) -> Value {
    let out = c.arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "blocksnap {args:?} failed ({:?}):\n{}",
        out.status,
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One side of the copies: a store, its account and that account's identity file.
struct Side<'a> {
    env: &'a Env,
    moto: &'a S3Server,
    store: String,
    account: &'static str,
    identity: PathBuf,
}

impl Side<'_> {
    fn cmd(&self) -> Command {
        on(self.env, self.moto, &self.store, &self.identity)
    }

    fn init(&self) -> Value {
        ok(self.cmd(), &["init", "--account", self.account])
    }

    /// `image copy IMAGE` from this side to `to`, named `name` there.
    fn copy(&self, image: &str, to: &Side<'_>, name: &str) -> Value {
        ok(
            self.cmd(),
            &[
                "image",
                "copy",
                image,
                "--to",
                &to.store,
                "--name",
                name,
                "--to-account",
                to.account,
                "--to-identity",
                to.identity.to_str().unwrap(),
            ],
        )
    }

    /// Rebuilds `image` here and compares it with the disks it was made from.
    fn assert_rebuilds(&self, image: &str, root: &Path, data: &Path) {
        let out = self.env.path(&format!("rebuilt-{}-{image}", self.account));
        let r = ok(
            self.cmd(),
            &["image", "rebuild", image, out.to_str().unwrap()],
        );
        assert_eq!(r["volumes"].as_array().unwrap().len(), 2, "{r}");
        assert_same(&out.join("sda.img"), root);
        assert_same(&out.join("sdb.img"), data);
    }

    fn check(&self) {
        let check = ok(self.cmd(), &["check", "--read-data"]);
        assert_eq!(check["ok"], true, "{} : {check}", self.store);
    }
}

/// Asserts that a copy moved nothing: no chunk read or stored, no pack written.
fn assert_moved_nothing(report: &Value) {
    for field in ["bytes_new", "chunks_new", "bytes_read", "packs"] {
        assert_eq!(sum(report, field), 0, "{field}: {report}");
    }
}

#[test]
fn image_copy_between_a_local_store_and_s3_both_ways_moves_only_what_the_target_lacks() {
    let moto = S3Server::start();
    moto.create_bucket("fleet");
    let env = Env::new("s3_copy");
    let local = Side {
        env: &env,
        moto: &moto,
        store: env.path("local").to_str().unwrap().to_string(),
        account: "alice",
        identity: env.path("alice.key"),
    };
    let s3 = Side {
        env: &env,
        moto: &moto,
        store: "s3://fleet/images".into(),
        account: "tina",
        identity: env.path("tina.key"),
    };
    let other = Side {
        env: &env,
        moto: &moto,
        store: env.path("other").to_str().unwrap().to_string(),
        account: "bob",
        identity: env.path("bob.key"),
    };
    let keys_of: Vec<String> = [&local, &s3, &other]
        .iter()
        .map(|side| side.init()["key"].as_str().unwrap().to_string())
        .collect();

    // Two real ext4 disks, and a copy of the first version of the root disk.
    let (root_tree, data_tree) = (env.path("root-tree"), env.path("data-tree"));
    make_tree(&root_tree, 24, 81);
    make_tree(&data_tree, 6, 82);
    let (root, data) = (env.path("root.img"), env.path("data.img"));
    make_ext4(&root, 48 << 20, &root_tree);
    make_ext4(&data, 16 << 20, &data_tree);
    let root_v1 = env.path("root-v1.img");
    copy_sparse(&root, &root_v1);
    let create = |name: &str| {
        ok(
            local.cmd(),
            &[
                "image",
                "create",
                name,
                "--volume",
                &format!("/dev/sda={}", root.display()),
                "--volume",
                &format!("/dev/sdb={}", data.display()),
            ],
        )
    };
    let img = create("web");
    let stored_here = sum(&img, "bytes_new");
    assert!(stored_here > 4 << 20, "{img}");

    // Local to S3: re-encrypted under the bucket store's key, owned by its account, every
    // chunk moved once, rebuilt byte-identical there.
    let first = local.copy("web", &s3, "web");
    assert_eq!(first["owner"], "tina", "{first}");
    assert_eq!(first["key"], keys_of[1].as_str(), "{first}");
    assert_ne!(first["key"], img["key"]);
    let moved = sum(&first, "bytes_new");
    assert_eq!(moved, stored_here, "{first}");
    assert_eq!(
        sum(&first, "chunks_new"),
        sum(&img, "chunks_new"),
        "{first}"
    );
    s3.assert_rebuilds("web", &root, &data);
    let s3_packs = keys(&moto, &s3.store);

    // The same image again moves nothing: no chunk, no pack.
    let again = local.copy("web", &s3, "web-again");
    assert_moved_nothing(&again);
    let packs = |ks: &[String]| -> Vec<String> {
        ks.iter()
            .filter(|k| k.starts_with("packs/"))
            .cloned()
            .collect()
    };
    assert_eq!(packs(&keys(&moto, &s3.store)), packs(&s3_packs));

    // A new version of the root disk: only its changed chunks travel.
    let new_file = env.path("new.txt");
    std::fs::write(&new_file, text_bytes(300_000, 83)).unwrap();
    debugfs(
        &root,
        &[
            "rm /doc/text1.txt".into(),
            format!("write {} /doc/new.txt", new_file.display()),
        ],
    );
    create("web-v2");
    let v2 = local.copy("web-v2", &s3, "web-v2");
    let moved_v2 = sum(&v2, "bytes_new");
    assert!(
        moved_v2 > 0 && moved_v2 < moved / 5,
        "{moved_v2} of {moved}: {v2}"
    );
    s3.assert_rebuilds("web-v2", &root, &data);
    s3.check();

    // S3 to another local store, with yet another account and key: the same, the other way.
    let back = s3.copy("web", &other, "web");
    assert_eq!(back["owner"], "bob", "{back}");
    assert_eq!(back["key"], keys_of[2].as_str(), "{back}");
    assert_eq!(sum(&back, "bytes_new"), moved, "{back}");
    other.assert_rebuilds("web", &root_v1, &data);
    let again = s3.copy("web", &other, "web-again");
    assert_moved_nothing(&again);
    let back_v2 = s3.copy("web-v2", &other, "web-v2");
    let moved_back = sum(&back_v2, "bytes_new");
    assert!(
        moved_back > 0 && moved_back < moved / 5,
        "{moved_back} of {moved}: {back_v2}"
    );
    other.assert_rebuilds("web-v2", &root, &data);
    other.check();
}
