//! Every command on a store in a bucket (`s3://BUCKET/PREFIX` on moto), each asserting what it
//! did: snapshots of a real ext4 disk and their diff, restores and an NBD export read back by
//! qemu-img byte-identical, images, a policy run, the trash, prune, check, repair and unlock.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::*;

/// This test's S3 store: the environment of `moto`, short retries.
struct S3<'a> {
    env: Env,
    moto: &'a S3Server,
}

impl S3<'_> {
    fn cmd(&self) -> Command {
        let mut c = self.env.cmd();
        c.envs(self.moto.env())
            .env("BLOCKSNAP_S3_RETRY_TIMEOUT", "5")
            .env_remove("BLOCKSNAP_PRUNE_GRACE");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        json(&self.env, self.moto, args)
    }

    fn url(&self) -> String {
        self.env.store.to_str().unwrap().to_string()
    }

    /// The keys of the store's objects (relative to its prefix).
    fn keys(&self) -> Vec<String> {
        keys(self.moto, &self.url())
    }

    /// The store's packs (not their index objects).
    fn packs(&self) -> Vec<String> {
        self.keys()
            .into_iter()
            .filter(|k| k.starts_with("packs/") && !k.ends_with(".idx"))
            .collect()
    }
}

fn store<'a>(moto: &'a S3Server, name: &str) -> S3<'a> {
    let mut env = Env::new(name);
    env.store = PathBuf::from(format!("s3://cmds/{name}"));
    let s = S3 { env, moto };
    let init = s.json(&["init", "--account", "alice"]);
    assert_eq!(init["store"], s.url().as_str(), "{init}");
    s
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// The 4 KiB blocks where `b` differs from `a` (same size), touching ones merged.
fn changed_blocks(a: &Path, b: &Path) -> Vec<[u64; 2]> {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len());
    let mut out: Vec<[u64; 2]> = Vec::new();
    for (k, (p, q)) in x.chunks(4096).zip(y.chunks(4096)).enumerate() {
        if p != q {
            let at = (k * 4096) as u64;
            match out.last_mut() {
                Some([o, l]) if *o + *l == at => *l += q.len() as u64,
                _ => out.push([at, q.len() as u64]),
            }
        }
    }
    out
}

/// `serve nbd ARGS` listening on a free port; the child and the `host:port/export` it serves.
fn serve(s: &S3<'_>, what: &str) -> (std::process::Child, String) {
    let mut child = s
        .cmd()
        .args(["--json", "serve", "nbd", what, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "serve nbd exited: {text}"
        );
        text += &line;
        if line.trim_end() == "}" {
            break;
        }
    }
    let info: Value = serde_json::from_str(&text).unwrap();
    let at = format!(
        "{}/{}",
        info["listen"].as_str().unwrap(),
        info["export"].as_str().unwrap()
    );
    (child, at)
}

#[test]
fn snapshots_diff_restore_nbd_and_images_on_s3() {
    let moto = S3Server::start();
    moto.create_bucket("cmds");
    let s = store(&moto, "snapshots");

    // A real ext4 disk, and the same disk later: a file written, two removed (debugfs).
    let tree = s.env.path("tree");
    make_tree(&tree, 30, 51);
    let base = s.env.path("base.img");
    make_ext4(&base, 64 << 20, &tree);
    let changed = s.env.path("changed.img");
    copy_sparse(&base, &changed);
    let new_file = s.env.path("new.bin");
    std::fs::write(&new_file, random_bytes(2_000_000, 52)).unwrap();
    debugfs(
        &changed,
        &[
            "rm /bin/prog0".into(),
            format!("write {} /bin/new", new_file.display()),
            "rm /doc/text3.txt".into(),
        ],
    );

    let a = s.json(&[
        "snapshot",
        "create",
        base.to_str().unwrap(),
        "--volume",
        "disk",
    ]);
    assert_eq!(a["chunks_new"], a["chunks"], "{a}");
    assert!(a["bytes_stored"].as_u64().unwrap() > 1 << 20, "{a}");
    let b = s.json(&[
        "snapshot",
        "create",
        changed.to_str().unwrap(),
        "--volume",
        "disk",
        "--source-moved",
    ]);
    assert_eq!(b["parent"], id(&a).as_str(), "{b}");
    // The second version stores about the new file, not the disk again.
    let new = b["bytes_new"].as_u64().unwrap();
    assert!(new > 1_900_000 && new < 4 << 20, "{b}");

    let list = s.json(&["snapshot", "list"]);
    let ids: Vec<String> = list.as_array().unwrap().iter().map(id).collect();
    assert_eq!(ids, [id(&a), id(&b)], "{list}");
    assert_eq!(list[1]["volume"], "disk");
    let show = s.json(&["snapshot", "show", &id(&b)]);
    assert_eq!(show["parent"], id(&a).as_str(), "{show}");
    assert_eq!(show["size"], 64 << 20, "{show}");
    assert_eq!(show["owner"], "alice", "{show}");
    assert!(show["key"].as_str().unwrap().starts_with("key-"), "{show}");

    // The diff is exactly the changed 4 KiB blocks of the two images.
    let d = s.json(&["snapshot", "diff", &id(&a), &id(&b)]);
    let ranges: Vec<[u64; 2]> = d["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| [r[0].as_u64().unwrap(), r[1].as_u64().unwrap()])
        .collect();
    let blocks = changed_blocks(&base, &changed);
    assert!(!blocks.is_empty());
    assert_eq!(ranges, blocks);
    assert_eq!(d["bytes_changed"], changed_block_bytes(&base, &changed));

    // Both versions restore byte-identical.
    for (snap, image) in [(&a, &base), (&b, &changed)] {
        let out = s.env.path(&format!("restored-{}.img", id(snap)));
        let r = s.json(&["snapshot", "restore", &id(snap), out.to_str().unwrap()]);
        assert_eq!(r["size"], 64 << 20, "{r}");
        assert_same(image, &out);
    }

    // Served over NBD and read back by qemu-img: the changed disk.
    let (mut server, at) = serve(&s, &id(&b));
    let read = s.env.path("nbd.img");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(format!("nbd://{at}"))
        .arg(&read)
        .output()
        .expect("qemu-img is installed (qemu-utils; .ci/run installs it)");
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same(&changed, &read);

    // An image of two disks, made from the files, rebuilt byte-identical.
    let data_tree = s.env.path("data-tree");
    make_tree(&data_tree, 8, 53);
    let data = s.env.path("data.img");
    make_ext4(&data, 16 << 20, &data_tree);
    let img = s.json(&[
        "image",
        "create",
        "web",
        "--volume",
        &format!("/dev/sda={}", changed.display()),
        "--volume",
        &format!("/dev/sdb={}", data.display()),
    ]);
    assert_eq!(img["name"], "web");
    let reports = img["snapshots"].as_array().unwrap();
    assert_eq!(reports.len(), 2, "{img}");
    // The root disk is already in the bucket: nothing of it is new.
    let sda = reports.iter().find(|r| r["size"] == 64 << 20).unwrap();
    assert_eq!(sda["chunks_new"], 0, "{img}");
    let images = s.json(&["image", "list"]);
    assert_eq!(images[0]["id"], img["id"], "{images}");
    let shown = s.json(&["image", "show", "web"]);
    assert_eq!(shown["volumes"].as_array().unwrap().len(), 2, "{shown}");
    let outdir = s.env.path("rebuilt");
    let r = s.json(&["image", "rebuild", "web", outdir.to_str().unwrap()]);
    assert_eq!(r["volumes"].as_array().unwrap().len(), 2, "{r}");
    assert_same(&outdir.join("sda.img"), &changed);
    assert_same(&outdir.join("sdb.img"), &data);
    let check = s.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}

/// A lock object as a blocksnap on `host` writes it (v2), expiring `expires`.
fn lock(host: &str, pid: u32, expires: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "format": "blocksnap.lock/v2",
        "host": host,
        "pid": pid,
        "kind": "shared",
        "command": "snapshot",
        "started": "2026-01-01T00:00:00.000Z",
        "refreshed": "2026-01-01T00:00:00.000Z",
        "expires": expires,
    }))
    .unwrap()
}

/// This host's name as blocksnap records it.
fn this_host() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    match h.trim() {
        "" => "localhost".into(),
        h => h.into(),
    }
}

#[test]
fn policy_trash_prune_check_repair_and_unlock_on_s3() {
    let moto = S3Server::start();
    moto.create_bucket("cmds");
    let s = store(&moto, "lifecycle");

    // A volume a daily policy keeps one snapshot of.
    let img = s.env.path("db.img");
    write_at(&img, 8 << 20, 0, &random_bytes(2 << 20, 61));
    let v1 = std::fs::read(&img).unwrap();
    let v = s.json(&[
        "volume",
        "add",
        "db",
        img.to_str().unwrap(),
        "--tag",
        "backup=daily",
    ]);
    assert_eq!(v["tags"]["backup"], "daily");
    s.json(&[
        "policy",
        "create",
        "nightly",
        "--target-tag",
        "backup=daily",
        "--schedule",
        "daily: every 1d at 03:00 keep 1",
    ]);
    let day1 = s.json(&["policy", "run", "--at", "2026-01-01T04:00:00Z"]);
    assert_eq!(day1["taken"].as_array().unwrap().len(), 1, "{day1}");
    let p1 = day1["taken"][0]["snapshot"].as_str().unwrap().to_string();
    // The same run again takes nothing.
    let again = s.json(&["policy", "run", "--at", "2026-01-01T05:00:00Z"]);
    assert!(again["taken"].as_array().unwrap().is_empty(), "{again}");
    // The disk is rewritten; the next day's run takes it and expires the first to the trash.
    write_at(&img, 8 << 20, 0, &random_bytes(2 << 20, 62));
    let v2 = std::fs::read(&img).unwrap();
    let day2 = s.json(&["policy", "run", "--at", "2026-01-02T04:00:00Z"]);
    assert_eq!(day2["taken"].as_array().unwrap().len(), 1, "{day2}");
    let p2 = day2["taken"][0]["snapshot"].as_str().unwrap().to_string();
    assert_eq!(day2["expired"][0]["snapshot"], p1.as_str(), "{day2}");
    let list = s.json(&["snapshot", "list", "--tag", "blocksnap:policy=nightly"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], p2.as_str());
    // The store named by BLOCKSNAP_STORE instead of --store: the same list.
    let out = Command::new(env!("CARGO_BIN_EXE_blocksnap-e2e"))
        .env("XDG_CONFIG_HOME", s.env.path("config"))
        .env("XDG_CACHE_HOME", s.env.path("cache"))
        .env("XDG_DATA_HOME", s.env.path("data"))
        .env_remove("BLOCKSNAP_ACCOUNT")
        .env_remove("BLOCKSNAP_IDENTITY")
        .env("BLOCKSNAP_STORE", s.url())
        .envs(moto.env())
        .args(["--json", "snapshot", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let by_env: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_env[0]["id"], p2.as_str(), "{by_env}");

    // The trash: the expired snapshot is there and comes back, restorable.
    let trash = s.json(&["trash", "list"]);
    assert_eq!(trash.as_array().unwrap().len(), 1, "{trash}");
    assert_eq!(trash[0]["id"], p1.as_str());
    assert_eq!(trash[0]["kind"], "snapshot");
    let back = s.json(&["trash", "restore", &p1]);
    assert_eq!(back["id"], p1.as_str());
    assert!(s.json(&["trash", "list"]).as_array().unwrap().is_empty());
    let out = s.env.path("p1.img");
    s.json(&["snapshot", "restore", &p1, out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == v1,
        "the first version differs"
    );
    // Deleted again and emptied: gone for good.
    let d = s.json(&["snapshot", "delete", &p1]);
    assert_eq!(d["id"], p1.as_str());
    let emptied = s.json(&["trash", "empty"]);
    assert_eq!(emptied.as_array().unwrap().len(), 1, "{emptied}");
    assert_eq!(emptied[0]["id"], p1.as_str());
    let gone = s.run(&["trash", "restore", &p1]);
    assert_eq!(gone.status.code(), Some(2), "{}", stderr(&gone));

    // Prune in two phases (a grace longer than the lock stale time, both short for the test):
    // the first condemns the packs only the emptied snapshot used, the second deletes them.
    let packs_before = s.packs();
    let prune = |extra: &[&str]| -> Value {
        let out = s
            .cmd()
            .env("BLOCKSNAP_LOCK_STALE", "1")
            .env("BLOCKSNAP_LOCK_REFRESH", "0.2")
            .args(["--json", "prune", "--grace", "1.5"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "prune: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let dry = prune(&["--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    let first = prune(&[]);
    let marked = first["packs_marked"].as_u64().unwrap();
    assert!(marked >= 1, "{first}");
    assert_eq!(first["packs_deleted"], 0, "{first}");
    assert_eq!(
        s.packs(),
        packs_before,
        "nothing is deleted before the grace"
    );
    std::thread::sleep(std::time::Duration::from_millis(1700));
    let second = prune(&[]);
    assert_eq!(
        second["packs_deleted"].as_u64().unwrap(),
        marked,
        "{second}"
    );
    assert!(
        second["bytes_reclaimed"].as_u64().unwrap() > 1 << 20,
        "{second}"
    );
    assert_eq!(s.packs().len(), packs_before.len() - marked as usize);
    let out = s.env.path("p2.img");
    s.json(&["snapshot", "restore", &p2, out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == v2,
        "the kept version differs"
    );

    // check reads every chunk of every pack back.
    let check = s.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    assert!(check["chunks"].as_u64().unwrap() > 0, "{check}");
    assert_eq!(check["chunks_verified"], check["chunks"], "{check}");

    // repair index rebuilds the index from the packs' trailers in the bucket: every pack read,
    // every chunk known (the next snapshot of the same disk stores nothing new).
    let repaired = s.json(&["repair", "index"]);
    assert_eq!(
        repaired["packs"].as_u64().unwrap() as usize,
        s.packs().len(),
        "{repaired}"
    );
    assert_eq!(repaired["chunks"], check["chunks"], "{repaired}");
    assert_eq!(repaired["problems"], serde_json::json!([]), "{repaired}");
    let same = s.json(&["snapshot", "create", "db"]);
    assert_eq!(same["chunks_new"], 0, "{same}");

    // unlock: a lock of a process of this host that is gone, an expired lock of another host
    // (both removed) and a live one of another host (kept without --all).
    let backend = bucket(&moto, &s.url());
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let mine = format!("locks/{}-{dead_pid}-0a1b2c3d.json", this_host());
    backend
        .create(
            &mine,
            &lock(&this_host(), dead_pid, "2099-01-01T00:00:00.000Z"),
        )
        .unwrap();
    let expired = "locks/old-host-7-00000001.json";
    backend
        .create(expired, &lock("old-host", 7, "2026-01-01T00:30:00.000Z"))
        .unwrap();
    let live = "locks/other-host-8-00000002.json";
    backend
        .create(live, &lock("other-host", 8, "2099-01-01T00:00:00.000Z"))
        .unwrap();
    let u = s.json(&["unlock"]);
    let status = |list: &Value| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["host"].as_str().unwrap().to_string(),
                    e["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        status(&u["removed"]),
        [
            ("old-host".to_string(), "expired".to_string()),
            (this_host(), "stale".to_string())
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>(),
        "{u}"
    );
    assert_eq!(
        status(&u["kept"]),
        [("other-host".to_string(), "other_host".to_string())],
        "{u}"
    );
    let locks: Vec<String> = s
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("locks/"))
        .collect();
    assert_eq!(locks, [live.to_string()]);
    let all = s.json(&["unlock", "--all"]);
    assert_eq!(
        status(&all["removed"]),
        [("other-host".to_string(), "other_host".to_string())]
    );
    assert!(
        s.keys().iter().all(|k| !k.starts_with("locks/")),
        "{:?}",
        s.keys()
    );
    // The store is sound after all of it.
    let check = s.json(&["check"]);
    assert_eq!(check["ok"], true, "{check}");
}

/// `repair packs` on a bucket: a pack whose bytes were changed in the bucket is found by `check
/// --read-data` (exit 4), set aside by `repair packs --read-data`, and the next snapshot of the
/// intact disk stores what was lost, after which everything restores and check is clean.
#[test]
fn a_damaged_pack_in_the_bucket_is_found_set_aside_and_healed() {
    let moto = S3Server::start();
    moto.create_bucket("cmds");
    let s = store(&moto, "heal");
    let img = s.env.path("disk.img");
    let mut data = random_bytes(3 << 20, 71);
    data.extend(text_bytes(1 << 20, 72));
    std::fs::write(&img, &data).unwrap();
    let snap = s.json(&[
        "snapshot",
        "create",
        img.to_str().unwrap(),
        "--volume",
        "disk",
    ]);
    let packs = s.packs();
    let backend = bucket(&moto, &s.url());
    // The largest pack, one byte flipped in its middle (its trailer intact), put back in place.
    let pack = packs
        .iter()
        .max_by_key(|k| backend.head(k).unwrap().unwrap().size)
        .unwrap()
        .clone();
    let mut bytes = backend.get(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    backend.delete(&pack).unwrap();
    backend.create(&pack, &bytes).unwrap();
    let pack_id = pack.rsplit('/').next().unwrap().to_string();

    let out = s.run(&["--json", "check", "--read-data"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["damaged_snapshots"],
        serde_json::json!([id(&snap)]),
        "{report}"
    );
    assert!(
        report["problems"].to_string().contains(&pack_id),
        "{report}"
    );

    let repaired = s.json(&["repair", "packs", "--read-data"]);
    assert_eq!(
        repaired["damaged_packs"],
        serde_json::json!([pack_id]),
        "{repaired}"
    );
    assert!(
        repaired["chunks_forgotten"].as_u64().unwrap() >= 1,
        "{repaired}"
    );
    let keys = s.keys();
    assert!(!keys.contains(&pack), "{keys:?}");
    assert!(keys.contains(&format!("{pack}.damaged")), "{keys:?}");

    // The intact disk snapshotted again stores the lost chunks; both snapshots restore.
    let again = s.json(&[
        "snapshot",
        "create",
        img.to_str().unwrap(),
        "--volume",
        "disk",
    ]);
    assert!(again["chunks_new"].as_u64().unwrap() >= 1, "{again}");
    for snap in [&snap, &again] {
        let out = s.env.path(&format!("out-{}.img", id(snap)));
        s.json(&["snapshot", "restore", &id(snap), out.to_str().unwrap()]);
        assert_same(&img, &out);
    }
    let check = s.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}
