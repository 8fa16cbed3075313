//! Images: multi-volume machine images on real ext4 disks, launched (rebuilt) only with both a
//! launch permission and a key grant; copied between stores with re-encryption; deregistered.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;
use serde_json::Value;

/// Two real ext4 disks: a root disk and a data disk.
fn disks(env: &Env) -> (PathBuf, PathBuf) {
    let (root_tree, data_tree) = (env.path("root-tree"), env.path("data-tree"));
    make_tree(&root_tree, 40, 71);
    make_tree(&data_tree, 12, 72);
    let (root, data) = (env.path("root.img"), env.path("data.img"));
    make_ext4(&root, 64 << 20, &root_tree);
    make_ext4(&data, 32 << 20, &data_tree);
    (root, data)
}

fn create_image(env: &Env, name: &str, root: &Path, data: &Path) -> Value {
    env.json(&[
        "image",
        "create",
        name,
        "--volume",
        &format!("/dev/sda={}", root.display()),
        "--volume",
        &format!("/dev/sdb={}", data.display()),
        "--tag",
        "role=web",
    ])
}

/// Runs `image rebuild` as `account`; returns the output.
fn rebuild_as(env: &Env, account: &str, image: &str, out: &Path) -> std::process::Output {
    env.run(&[
        "--account",
        account,
        "image",
        "rebuild",
        image,
        out.to_str().unwrap(),
    ])
}

fn assert_rebuilt(out: &Path, root: &Path, data: &Path) {
    assert_same(&out.join("sda.img"), root);
    assert_same(&out.join("sdb.img"), data);
    // Sparse: the 64 MiB disk holds a few MiB of files.
    assert!(allocated(&out.join("sda.img")) < fs::metadata(root).unwrap().len() / 2);
}

fn sum(report: &Value, field: &str) -> u64 {
    report["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[field].as_u64().unwrap())
        .sum()
}

#[test]
fn launching_needs_the_permission_and_the_key_grant() {
    let env = Env::new("image-share");
    env.init(&[]);
    let (root, data) = disks(&env);
    env.json(&["account", "create", "bob"]);
    env.json(&["account", "create", "carol"]);

    let img = create_image(&env, "web", &root, &data);
    assert!(img["id"].as_str().unwrap().starts_with("img-"));
    assert_eq!(img["name"], "web");
    assert_eq!(img["owner"], "alice");
    assert!(img["key"].as_str().unwrap().starts_with("key-"));
    assert_eq!(img["launch_permissions"]["public"], false);
    assert_eq!(img["launch_permissions"]["accounts"], serde_json::json!([]));
    let vols = img["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2);
    assert_eq!(vols[0]["device"], "/dev/sda");
    assert_eq!(vols[0]["size"], 64 << 20);
    assert_eq!(vols[1]["device"], "/dev/sdb");
    assert!(vols[1]["snapshot"].as_str().unwrap().starts_with("snap-"));
    let shown = env.json(&["image", "show", "web"]);
    assert_eq!(shown["volumes"], img["volumes"]);
    assert_eq!(shown["root_device"], "/dev/sda");

    // The owner rebuilds every device, byte-identical and sparse.
    let out = env.path("alice-out");
    let r = rebuild_as(&env, "alice", "web", &out);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_rebuilt(&out, &root, &data);

    // Bob has neither the permission nor the grant: exit 3, both named, with the commands.
    let bob_out = env.path("bob-out");
    let denied = rebuild_as(&env, "bob", "web", &bob_out);
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    let msg = stderr(&denied);
    assert!(msg.contains("launch permission"), "{msg}");
    assert!(msg.contains("image share web --account bob"), "{msg}");
    assert!(msg.contains("key grant default bob"), "{msg}");
    assert!(!bob_out.join("sda.img").exists());
    assert!(
        env.json(&["--account", "bob", "image", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Only the owner shares.
    let not_owner = env.run(&[
        "--account",
        "bob",
        "image",
        "share",
        "web",
        "--account",
        "bob",
    ]);
    assert_eq!(not_owner.status.code(), Some(3), "{}", stderr(&not_owner));

    // With the permission alone, the key grant is still missing.
    let shared = env.json(&["image", "share", "web", "--account", "bob"]);
    assert_eq!(
        shared["launch_permissions"]["accounts"],
        serde_json::json!(["bob"])
    );
    let denied = rebuild_as(&env, "bob", "web", &bob_out);
    assert_eq!(denied.status.code(), Some(3));
    let msg = stderr(&denied);
    assert!(!msg.contains("launch permission"), "{msg}");
    assert!(msg.contains("key grant default bob"), "{msg}");
    assert_eq!(
        env.json(&["--account", "bob", "image", "list"])[0]["name"],
        "web"
    );

    // Carol edits the image document to give herself launch permission: the owner did not
    // sign that (exit 6, tampered), and she has no key anyway.
    let doc_path = env
        .store
        .join("images")
        .join(format!("{}.json", img["id"].as_str().unwrap()));
    let text = fs::read_to_string(&doc_path).unwrap();
    let forged = text.replacen("\"bob\"", "\"bob\", \"carol\"", 1);
    assert_ne!(text, forged);
    fs::write(&doc_path, forged).unwrap();
    let carol_out = env.path("carol-out");
    let denied = rebuild_as(&env, "carol", "web", &carol_out);
    assert_eq!(denied.status.code(), Some(6), "{}", stderr(&denied));
    assert!(
        stderr(&denied).contains("did not sign it as it is"),
        "{}",
        stderr(&denied)
    );
    let self_grant = env.run(&["--account", "carol", "key", "grant", "default", "carol"]);
    assert_eq!(self_grant.status.code(), Some(3), "{}", stderr(&self_grant));
    assert!(!carol_out.join("sda.img").exists());
    fs::write(&doc_path, text).unwrap();

    // With both, bob rebuilds.
    env.json(&["key", "grant", "default", "bob"]);
    let ok = rebuild_as(&env, "bob", "web", &bob_out);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_rebuilt(&bob_out, &root, &data);

    // Unshared, he may not; public, he may again (he holds the grant); carol still lacks it.
    env.json(&["image", "unshare", "web", "--account", "bob"]);
    let denied = rebuild_as(&env, "bob", "web", &env.path("bob-2"));
    assert_eq!(denied.status.code(), Some(3));
    assert!(stderr(&denied).contains("launch permission"));
    let public = env.json(&["image", "share", "web", "--public"]);
    assert_eq!(public["launch_permissions"]["public"], true);
    let ok = rebuild_as(&env, "bob", "web", &env.path("bob-3"));
    assert!(ok.status.success(), "{}", stderr(&ok));
    let denied = rebuild_as(&env, "carol", "web", &carol_out);
    assert_eq!(denied.status.code(), Some(3));
    assert!(!stderr(&denied).contains("launch permission"));

    // Revoked, bob cannot read the data any more, public image or not.
    env.json(&["key", "revoke", "default", "bob"]);
    let denied = rebuild_as(&env, "bob", "web", &env.path("bob-4"));
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    assert!(stderr(&denied).contains("key grant default bob"));
}

#[test]
fn copy_reencrypts_and_moves_only_what_the_target_lacks() {
    let env = Env::new("image-copy");
    env.init(&[]);
    let (root, data) = disks(&env);
    let img = create_image(&env, "web", &root, &data);
    let stored_here = sum(&img, "bytes_new");
    assert!(stored_here > 1 << 20, "{img}");

    let target = env.path("target");
    let init = env
        .cmd_at(&target)
        .args(["init", "--account", "tina"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let copy_to = |name: &str, image: &str| {
        env.json(&[
            "image",
            "copy",
            image,
            "--to",
            target.to_str().unwrap(),
            "--name",
            name,
        ])
    };

    let first = copy_to("web", "web");
    assert_eq!(first["owner"], "tina");
    assert_ne!(
        first["key"], img["key"],
        "re-encrypted under the target's key"
    );
    let moved = sum(&first, "bytes_new");
    assert_eq!(moved, stored_here, "{first}");
    let out = env.path("copy-out");
    let rebuilt = env
        .cmd_at(&target)
        .args(["image", "rebuild", "web", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    assert_rebuilt(&out, &root, &data);
    // The target holds no chunk the source's key can open: every pack there is under its key.
    let check = env
        .cmd_at(&target)
        .args(["--json", "check", "--read-data"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stderr(&check));

    // The same image again moves nothing.
    let again = copy_to("web-again", "web");
    assert_eq!(sum(&again, "bytes_new"), 0, "{again}");
    assert_eq!(sum(&again, "bytes_read"), 0, "{again}");

    // A new version of the image: only its changed chunks travel.
    debugfs(
        &root,
        &[
            "rm /doc/text1.txt".into(),
            format!("write {} /doc/new.txt", {
                let p = env.path("new.txt");
                fs::write(&p, text_bytes(200_000, 9)).unwrap();
                p.display().to_string()
            }),
        ],
    );
    create_image(&env, "web-v2", &root, &data);
    let v2 = copy_to("web-v2", "web-v2");
    let moved_v2 = sum(&v2, "bytes_new");
    assert!(
        moved_v2 > 0 && moved_v2 < moved / 5,
        "{moved_v2} of {moved}"
    );
    let out2 = env.path("copy-out-2");
    let rebuilt = env
        .cmd_at(&target)
        .args(["image", "rebuild", "web-v2", out2.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    assert_rebuilt(&out2, &root, &data);

    // Within one store, a copy under a new key rotates the image's key.
    env.json(&["key", "create", "rotated"]);
    let rotated = env.json(&[
        "image",
        "copy",
        "web-v2",
        "--to",
        env.store.to_str().unwrap(),
        "--key",
        "rotated",
        "--name",
        "web-v3",
    ]);
    assert_ne!(rotated["key"], img["key"]);
    let out3 = env.path("rotated-out");
    let r = rebuild_as(&env, "alice", "web-v3", &out3);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_rebuilt(&out3, &root, &data);

    // Copying an image you may not launch fails.
    env.json(&["account", "create", "bob"]);
    let denied = env.run(&[
        "--account",
        "bob",
        "image",
        "copy",
        "web",
        "--to",
        target.to_str().unwrap(),
        "--name",
        "stolen",
    ]);
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
}

#[test]
fn deregister_keeps_what_another_image_uses_and_the_trash_brings_it_back() {
    let env = Env::new("image-deregister");
    env.init(&[]);
    let (root, data) = disks(&env);
    let a = create_image(&env, "a", &root, &data);
    let sda = a["volumes"][0]["snapshot"].as_str().unwrap().to_string();
    let sdb = a["volumes"][1]["snapshot"].as_str().unwrap().to_string();
    let b = env.json(&[
        "image",
        "register",
        "b",
        "--volume",
        &format!("/dev/vda={sda}"),
    ]);
    assert_eq!(b["volumes"][0]["snapshot"], sda.as_str());
    assert_eq!(b["root_device"], "/dev/vda");

    // A snapshot an image maps cannot be deleted on its own.
    let refused = env.run(&["snapshot", "delete", &sda]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("image 'a'") || stderr(&refused).contains("image 'b'"));

    // Only the owner deregisters.
    env.json(&["account", "create", "bob"]);
    let denied = env.run(&["--account", "bob", "image", "deregister", "a"]);
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));

    let r = env.json(&["image", "deregister", "a", "--delete-snapshots"]);
    let deleted: Vec<&str> = r["snapshots_deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, [sdb.as_str()]);
    assert_eq!(r["snapshots_kept"], serde_json::json!([sda]));
    let names: Vec<Value> = env
        .json(&["image", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].clone())
        .collect();
    assert_eq!(names, ["b"]);
    let out = env.path("b-out");
    let ok = rebuild_as(&env, "alice", "b", &out);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_same(&out.join("vda.img"), &root);

    // The trash brings the image back with its deleted snapshot.
    let trash = env.json(&["trash", "list"]);
    assert_eq!(trash.as_array().unwrap().len(), 2, "{trash}");
    env.json(&["trash", "restore", a["id"].as_str().unwrap()]);
    assert!(env.json(&["trash", "list"]).as_array().unwrap().is_empty());
    let out = env.path("a-out");
    let ok = rebuild_as(&env, "alice", "a", &out);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_rebuilt(&out, &root, &data);
    let check = env.run(&["check"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn bad_mappings_and_damaged_image_documents_are_named() {
    let env = Env::new("image-bad");
    env.init(&[]);
    let disk = env.path("d.img");
    write_at(&disk, 8 << 20, 0, &random_bytes(1 << 20, 5));
    let d = disk.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "--volume",
                &format!("/dev/sda={d}") as &str,
                "--volume",
                &format!("/dev/sda={d}"),
            ],
            "appears twice",
        ),
        (
            vec![
                "--volume",
                &format!("/dev/sda={d}"),
                "--root-device",
                "/dev/sdz",
            ],
            "root_device",
        ),
        (vec!["--volume", &format!("/dev/../x={d}")], "device"),
        (vec!["--volume", "no-equals-sign"], "DEVICE=PATH"),
    ] {
        let mut all = vec!["image", "create", "x"];
        all.extend(args.iter().map(|s| &**s));
        let out = env.run(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{all:?}: {}", stderr(&out));
    }
    assert!(
        env.json(&["snapshot", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    let img = env.json(&["image", "create", "x", "--volume", &format!("/dev/sda={d}")]);
    let doc_path = env
        .store
        .join("images")
        .join(format!("{}.json", img["id"].as_str().unwrap()));
    let text = fs::read_to_string(&doc_path).unwrap();
    fs::write(
        &doc_path,
        text.replace(
            "\"root_device\": \"/dev/sda\"",
            "\"root_device\": \"/dev/sdq\"",
        ),
    )
    .unwrap();
    let check = env.run(&["check"]);
    assert_eq!(check.status.code(), Some(4), "{}", stderr(&check));
    let listed = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(listed.contains("root_device"), "{listed}");
    // The list skips it with a warning naming the file; asking for it names the file too.
    let list = env.run(&["--json", "image", "list"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    assert!(stderr(&list).contains(doc_path.file_name().unwrap().to_str().unwrap()));
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");
    let show = env.run(&["image", "show", "x"]);
    assert_ne!(show.status.code(), Some(0));
    assert!(
        stderr(&show).contains(doc_path.file_name().unwrap().to_str().unwrap()),
        "{}",
        stderr(&show)
    );

    // A mapping whose snapshot is gone is damage that check names, with the image.
    fs::write(&doc_path, &text).unwrap();
    let snap = img["volumes"][0]["snapshot"].as_str().unwrap();
    fs::remove_file(env.store.join("snapshots").join(format!("{snap}.json"))).unwrap();
    let out = env.run(&["--json", "check"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["damaged_images"], serde_json::json!([img["id"]]));
}

#[test]
fn volumes_snapshotted_at_once_store_shared_content_once() {
    let env = Env::new("image-shared");
    env.init(&[]);
    let (root, _) = disks(&env);
    let twin = env.path("twin.img");
    copy_sparse(&root, &twin);
    let img = env.json(&[
        "image",
        "create",
        "twins",
        "--volume",
        &format!("/dev/sda={}", root.display()),
        "--volume",
        &format!("/dev/sdb={}", twin.display()),
    ]);
    let new = sum(&img, "bytes_new");
    let one: u64 = img["snapshots"][0]["bytes_read"].as_u64().unwrap();
    // Stored once, not twice (a small margin: the twin is a sparse copy, read as holes where
    // the original has allocated zeros).
    assert!(
        new <= one + one / 50,
        "two identical disks stored {new} new bytes, one holds {one}"
    );
    let out = env.path("twins-out");
    let r = rebuild_as(&env, "alice", "twins", &out);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_same(&out.join("sda.img"), &root);
    assert_same(&out.join("sdb.img"), &twin);
    let check = env.run(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", stderr(&check));
}
