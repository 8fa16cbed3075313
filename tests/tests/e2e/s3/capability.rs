//! The capability check (docs/S3.md, "The capability check") against a server that accepts
//! conditional writes and ignores them: moto behind a [`Proxy::stripping`], which drops every
//! `If-None-Match` and `If-Match` header before moto sees it (what Garage does with them).
//! Always a moto of its own ([`S3Server::moto`]), even when the suite runs on another server:
//! a request stripped of a header no longer matches its signature there.

use super::*;

/// `blocksnap ARGS` through `proxy`; the output whatever the status.
fn through(env: &Env, moto: &S3Server, proxy: &Proxy, args: &[&str]) -> Output {
    via(env, moto, proxy).args(args).output().unwrap()
}

/// A small disk: random data (unique chunks), a hole, text.
fn disk(env: &Env, name: &str, seed: u64) -> PathBuf {
    let image = env.path(name);
    let mut data = random_bytes(2 << 20, seed);
    data.extend(vec![0u8; 1 << 20]);
    data.extend(text_bytes(1 << 20, seed + 1));
    std::fs::write(&image, &data).unwrap();
    image
}

/// The store's id, from its config in the bucket.
fn store_id(moto: &S3Server, url: &str) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&bucket(moto, url).get("config").unwrap()).unwrap();
    config["id"].as_str().unwrap().to_string()
}

#[test]
fn init_on_a_server_ignoring_conditional_writes_is_refused_unless_single_writer() {
    let moto = S3Server::moto();
    moto.create_bucket("cap");
    let proxy = Proxy::stripping(moto.port());
    let mut env = Env::new("s3_cap_init");
    env.store = PathBuf::from("s3://cap/multi");

    // Refused, naming the endpoint, what it ignored and the way out; nothing is created.
    let out = through(&env, &moto, &proxy, &["init", "--account", "alice"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(proxy.stripped() > 0, "the proxy stripped nothing");
    for needle in [
        proxy.endpoint().as_str(),
        "s3://cap/multi",
        "If-None-Match",
        "--single-writer",
        "Nothing was created",
    ] {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
    assert!(!err.contains(".blocksnap-probe"), "{err}");
    assert_eq!(keys(&moto, "s3://cap"), Vec::<String>::new());
    assert!(
        !env.path("config").join("blocksnap").exists(),
        "no identity is written for a store that was not made"
    );

    // A server that refuses a second create but ignores If-Match: refused too, saying so.
    proxy.strip_if_match_only();
    let out = through(&env, &moto, &proxy, &["init", "--account", "alice"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("stale If-Match"), "{err}");
    assert!(err.contains("--single-writer"), "{err}");
    assert_eq!(keys(&moto, "s3://cap"), Vec::<String>::new());
    proxy.set_strip(true);

    // Told it is single-writer, init makes the store and records it.
    env.store = PathBuf::from("s3://cap/single");
    let out = through(
        &env,
        &moto,
        &proxy,
        &["--json", "init", "--account", "alice", "--single-writer"],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("single-writer"), "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&bucket(&moto, "s3://cap/single").get("config").unwrap()).unwrap();
    assert_eq!(config["single_writer"], true, "{config}");

    // The store works through that server: snapshot, list, restore, check; every conditional
    // header on the way was dropped, so this is what one writer gets on such a server.
    let before = proxy.stripped();
    let image = disk(&env, "disk.img", 31);
    let snap = ok_json(
        via(&env, &moto, &proxy),
        &[
            "snapshot",
            "create",
            image.to_str().unwrap(),
            "--volume",
            "vm1",
        ],
    );
    assert!(
        proxy.stripped() > before,
        "the snapshot's writes were not conditional"
    );
    let id = snap["id"].as_str().unwrap();
    let list = ok_json(via(&env, &moto, &proxy), &["snapshot", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let out = env.path("restored.img");
    ok_json(
        via(&env, &moto, &proxy),
        &["snapshot", "restore", id, out.to_str().unwrap()],
    );
    assert_same(&image, &out);
    // A second version: the volume's head moves (an in-place update, unconditional here) and
    // only the changed data is stored.
    let mut data = std::fs::read(&image).unwrap();
    data[..1 << 20].copy_from_slice(&random_bytes(1 << 20, 32));
    std::fs::write(&image, &data).unwrap();
    let second = ok_json(
        via(&env, &moto, &proxy),
        &[
            "snapshot",
            "create",
            image.to_str().unwrap(),
            "--volume",
            "vm1",
        ],
    );
    assert_eq!(second["parent"], id, "{second}");
    let new = second["bytes_new"].as_u64().unwrap();
    assert!(new < 2 << 20, "{second}");
    let out = env.path("restored-2.img");
    ok_json(
        via(&env, &moto, &proxy),
        &[
            "snapshot",
            "restore",
            second["id"].as_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert_same(&image, &out);
    let check = ok_json(via(&env, &moto, &proxy), &["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    // Nothing of the probes is left in the bucket.
    assert!(
        keys(&moto, "s3://cap")
            .iter()
            .all(|k| k.starts_with("single/") && !k.contains(".blocksnap-probe")),
        "{:?}",
        keys(&moto, "s3://cap")
    );
}

#[test]
fn a_store_for_several_writers_is_refused_on_a_server_ignoring_conditional_writes() {
    let moto = S3Server::moto();
    moto.create_bucket("cap");
    let mut env = Env::new("s3_cap_open");
    env.store = PathBuf::from("s3://cap/store");
    // Made on moto itself, which honours both headers.
    json(&env, &moto, &["init", "--account", "alice"]);
    // `init` proved the server before it made the store, and cached the answer: the first
    // command does not probe it again.
    let cache = env
        .path("cache")
        .join("blocksnap")
        .join(store_id(&moto, "s3://cap/store"))
        .join("conditional-writes");
    let cached = std::fs::read_to_string(&cache).unwrap_or_default();
    assert!(cached.contains(&moto.endpoint()), "{cached:?}");
    let image = disk(&env, "disk.img", 41);
    let first = json(
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
    let before = keys(&moto, "s3://cap/store");

    // The same store through a server that ignores them: the first open from there checks it,
    // and a command that writes is refused, naming the server and what to do; nothing written.
    let proxy = Proxy::stripping(moto.port());
    let out = through(
        &env,
        &moto,
        &proxy,
        &[
            "snapshot",
            "create",
            image.to_str().unwrap(),
            "--volume",
            "vm1",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(proxy.stripped() > 0, "the proxy stripped nothing");
    for needle in [
        proxy.endpoint().as_str(),
        "s3://cap/store",
        "If-None-Match",
        "made for several writers",
        "AWS_ENDPOINT_URL",
        "--single-writer",
    ] {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
    assert_eq!(keys(&moto, "s3://cap/store"), before);
    // Every later command from there is checked again (a refusal is not cached).
    let out = through(&env, &moto, &proxy, &["snapshot", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // So is the store as the target of `image copy` from a local store.
    let local = env.path("local");
    let on_local = || {
        let mut c = env.cmd_at(&local);
        c.envs(moto.env())
            .env("AWS_ENDPOINT_URL", proxy.endpoint())
            .env("BLOCKSNAP_S3_RETRY_TIMEOUT", "5");
        c
    };
    ok_json(on_local(), &["init", "--account", "bob"]);
    ok_json(
        on_local(),
        &[
            "image",
            "create",
            "web",
            "--volume",
            &format!("/dev/sda={}", image.display()),
        ],
    );
    let out = on_local()
        .args(["image", "copy", "web", "--to", "s3://cap/store"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("made for several writers"), "{err}");
    assert_eq!(keys(&moto, "s3://cap/store"), before);

    // Moto's own endpoint is still the one cached as honouring them: the store works there.
    let cached = std::fs::read_to_string(&cache).unwrap();
    assert!(cached.contains(&moto.endpoint()), "{cached}");
    let list = json(&env, &moto, &["snapshot", "list"]);
    assert_eq!(list[0]["id"], first["id"], "{list}");

    // The answer is cached per store and endpoint (docs/S3.md): a server that starts ignoring
    // the headers behind an endpoint already checked is trusted until the cache file goes.
    let same = Proxy::stripping(moto.port());
    same.set_strip(false);
    ok_json(via(&env, &moto, &same), &["snapshot", "list"]);
    assert!(
        std::fs::read_to_string(&cache)
            .unwrap()
            .contains(&same.endpoint())
    );
    same.set_strip(true);
    ok_json(via(&env, &moto, &same), &["snapshot", "list"]);
    std::fs::remove_file(&cache).unwrap();
    let out = through(&env, &moto, &same, &["snapshot", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&same.endpoint()), "{}", stderr(&out));
}
