//! Repeated flags: every repeatable flag keeps every value, with one documented meaning each
//! (any-of for policy targets, all-of for list filters, one value per key for the tags of new
//! documents, one entry per device for images); every other flag given twice is a usage error.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use crate::common::*;
use serde_json::{Value, json};

/// The repeatable flags, by command. Each is exercised by a test below; the audit checks that
/// no other flag accepts a second value and that each of these says "repeat" in its help.
const REPEATABLE: &[(&str, &str)] = &[
    ("image create", "--tag"),
    ("image create", "--volume"),
    ("image register", "--volume"),
    ("policy create", "--schedule"),
    ("policy create", "--target-tag"),
    ("snapshot create", "--tag"),
    ("snapshot list", "--tag"),
    ("volume add", "--tag"),
];

/// One option of a `--help` page: its long name, whether it takes a value (and its value
/// name), and its description (continuation lines joined).
struct Opt {
    long: String,
    value: Option<String>,
    help: String,
}

/// The subcommands and options of one `--help` page.
fn help_page(env: &Env, path: &[&str]) -> (Vec<String>, Vec<Opt>) {
    let out = env.cmd().args(path).arg("--help").output().unwrap();
    assert!(out.status.success(), "{path:?} --help: {}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let (mut commands, mut opts) = (Vec::new(), Vec::<Opt>::new());
    let mut section = "";
    for line in text.lines() {
        if line.trim().is_empty() {
            continue; // long help puts blank lines between options
        }
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match section {
            "Commands:" if indent == 2 => {
                let name = trimmed.split_whitespace().next().unwrap();
                if name != "help" {
                    commands.push(name.to_string());
                }
            }
            "Options:" if trimmed.starts_with('-') && indent <= 6 => {
                let spec = trimmed.split("  ").next().unwrap();
                let long = spec
                    .split([',', ' '])
                    .find(|w| w.starts_with("--"))
                    .unwrap_or_else(|| panic!("{path:?}: no long name in {line:?}"))
                    .to_string();
                let value = spec
                    .split_once('<')
                    .map(|(_, v)| v.trim_end_matches('>').to_string());
                let help = trimmed[spec.len()..].trim().to_string();
                opts.push(Opt { long, value, help });
            }
            "Options:" => {
                if let Some(last) = opts.last_mut() {
                    last.help = format!("{} {}", last.help, trimmed);
                }
            }
            _ => {}
        }
    }
    (commands, opts)
}

/// A value each option's parser accepts.
fn sample(value: &str) -> &str {
    if let Some((first, _)) = value.split_once('|') {
        // A choice (`raw|qcow2`): its first value.
        return first;
    }
    match value {
        "SIZE" => "64KiB",
        "SECONDS" => "1",
        "FRACTION" => "0.5",
        "CHUNKER" => "cdc",
        "N" => "2",
        "MIB" => "64",
        _ => "k=v",
    }
}

/// Every flag of every command (the whole `--help` tree), given twice: a usage error for all
/// but the documented repeatable flags, which accept it and say "repeat" in their help.
#[test]
fn every_flag_given_twice_is_kept_or_refused() {
    let env = Env::new("flags_audit");
    let mut found = BTreeSet::new();
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut pages = 0;
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let (commands, opts) = help_page(&env, &args);
        pages += 1;
        for c in commands {
            let mut sub = path.clone();
            sub.push(c);
            todo.push(sub);
        }
        if path.is_empty() {
            assert!(
                opts.iter().any(|o| o.long == "--store"),
                "top-level options parsed"
            );
        }
        for o in opts {
            if o.long == "--help" || o.long == "--version" {
                continue;
            }
            let mut cmd = env.cmd();
            cmd.env_remove("BLOCKSNAP_STORE").args(&args);
            for _ in 0..2 {
                cmd.arg(&o.long);
                if let Some(v) = &o.value {
                    cmd.arg(sample(v));
                }
            }
            let out = cmd.output().unwrap();
            let err = stderr(&out);
            let name = args.join(" ");
            let refused = err.contains("cannot be used multiple times");
            let documented = REPEATABLE.contains(&(name.as_str(), o.long.as_str()));
            if refused {
                assert_eq!(out.status.code(), Some(2), "{name} {}: {err}", o.long);
                assert!(
                    !documented,
                    "{name} {} is documented as repeatable but refused twice: {err}",
                    o.long
                );
            } else {
                assert!(
                    documented,
                    "{name} {} accepts two values but is not known to be repeatable \
                     (a value silently dropped?): {err}",
                    o.long
                );
                assert!(
                    o.help.contains("repeat"),
                    "{name} {}: its help must say how repeating works: {}",
                    o.long,
                    o.help
                );
                found.insert((name.clone(), o.long.clone()));
            }
        }
    }
    assert!(pages > 30, "only {pages} help pages found");
    let expected: BTreeSet<(String, String)> = REPEATABLE
        .iter()
        .map(|(c, f)| (c.to_string(), f.to_string()))
        .collect();
    assert_eq!(found, expected, "the repeatable flags");
}

/// A global flag given once before and once after the command is a usage error naming it:
/// clap alone would keep the later value silently (`--store A snapshot list --store B` lists B,
/// `--store A init --store B` creates B). Nothing is created, and the flag once on either side
/// still works.
#[test]
fn global_flag_before_and_after_the_command_is_refused() {
    let env = Env::new("flags_global_twice");
    env.init(&[]);
    let other = env.path("other-store");
    let other_s = other.to_str().unwrap();
    let key = env.path("other.key");
    let key_s = key.to_str().unwrap();
    // env.cmd() gives `--store` before the command.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: &[Case] = &[
        ("--store", &[], &["snapshot", "list"], &["--store", other_s]),
        (
            "--store",
            &[],
            &["init", "--account", "x"],
            &[&format!("--store={other_s}")],
        ),
        (
            "--identity",
            &["--identity", key_s],
            &["snapshot", "list"],
            &["--identity", key_s],
        ),
        ("--json", &["--json"], &["volume", "list"], &["--json"]),
        ("--quiet", &["-q"], &["snapshot", "list"], &["--quiet"]),
        ("--quiet", &["--quiet"], &["check"], &["-q"]),
    ];
    for (flag, before, command, after) in cases {
        let out = env
            .cmd()
            .args(*before)
            .args(*command)
            .args(*after)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{before:?} {command:?} {after:?}: {err}"
        );
        assert!(
            err.contains(&format!("'{flag}' cannot be used multiple times"))
                && err.contains("before and after the command"),
            "{before:?} {command:?} {after:?}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{command:?} printed {:?}",
            out.stdout
        );
        assert!(!other.exists(), "{command:?} created {}", other.display());
        assert!(!key.exists(), "{command:?} created {}", key.display());
    }
    // Once, on either side of the command, is fine.
    for args in [
        &["snapshot", "list", "--json"][..],
        &["--json", "snapshot", "list", "-q"][..],
        &["volume", "list", "--quiet", "--json"][..],
    ] {
        let out = env.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
}

fn small_image(env: &Env, name: &str, seed: u64) -> String {
    let p = env.path(name);
    write_at(&p, 1 << 20, 4096, &random_bytes(64 << 10, seed));
    p.to_str().unwrap().to_string()
}

fn ids(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `policy create --target-tag` repeated keeps every tag, also several values of one key, and
/// the policy snapshots every volume carrying any of them. One value per key is still written
/// as `blocksnap.policy/v1`; several need v2; a v1 document written by an older blocksnap reads.
#[test]
fn policy_target_tags_keep_every_value_and_any_one_selects() {
    let env = Env::new("flags_policy");
    env.init(&["--no-encryption"]);
    for (vol, tag, seed) in [
        ("vprod", "env=prod", 1),
        ("vdev", "env=dev", 2),
        ("vtest", "env=test", 3),
        ("vdb", "tier=db", 4),
        ("vweb", "tier=web", 5),
    ] {
        let img = small_image(&env, &format!("{vol}.img"), seed);
        env.json(&["volume", "add", vol, &img, "--tag", tag]);
    }
    let p = env.json(&[
        "policy",
        "create",
        "multi",
        "--target-tag",
        "env=prod",
        "--target-tag",
        "env=dev",
        "--target-tag",
        "tier=db",
        "--schedule",
        "every 1d keep 2",
    ]);
    assert_eq!(
        p["target_tags"],
        json!({"env": ["dev", "prod"], "tier": "db"}),
        "{p}"
    );
    let shown = env.json(&["policy", "show", "multi"]);
    assert_eq!(shown["target_tags"], p["target_tags"]);
    assert_eq!(shown["format"], "blocksnap.policy/v2");
    let human = env.run(&["policy", "show", "multi"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("env=dev or env=prod or tier=db"),
        "the human view names every target: {text}"
    );

    // One value per key: the document is exactly what older versions write and read.
    let single = env.json(&[
        "policy",
        "create",
        "single",
        "--target-tag",
        "tier=web",
        "--schedule",
        "every 1d keep 2",
    ]);
    assert_eq!(single["format"], "blocksnap.policy/v1");
    let on_disk: Value =
        serde_json::from_slice(&fs::read(env.store.join("policies/single.json")).unwrap()).unwrap();
    assert_eq!(on_disk["target_tags"], json!({"tier": "web"}));

    let r = env.json(&["policy", "run", "--at", "2026-03-01T12:00:00Z"]);
    let mut taken: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in r["taken"].as_array().unwrap() {
        taken
            .entry(a["policy"].as_str().unwrap().into())
            .or_default()
            .insert(a["volume"].as_str().unwrap().into());
    }
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(taken["multi"], set(&["vdb", "vdev", "vprod"]), "{r}");
    assert_eq!(taken["single"], set(&["vweb"]), "{r}");
    assert_eq!(taken.len(), 2, "vtest carries no target tag: {r}");

    // A policy written by an older blocksnap (v1, one string per key) still reads and runs.
    fs::write(
        env.store.join("policies/old.json"),
        r#"{"format": "blocksnap.policy/v1", "name": "old", "target_tags": {"env": "test"},
            "schedules": [{"name": "d", "every": {"n": 1, "unit": "d"}, "at_minutes": null,
            "keep": {"count": 3}}], "created": "2026-01-01T00:00:00.000Z"}"#,
    )
    .unwrap();
    assert_eq!(
        env.json(&["policy", "show", "old"])["target_tags"],
        json!({"env": "test"})
    );
    let r = env.json(&["policy", "run", "--at", "2026-03-01T13:00:00Z"]);
    let vols: Vec<_> = r["taken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["policy"].as_str().unwrap(), a["volume"].as_str().unwrap()))
        .collect();
    assert_eq!(vols, [("old", "vtest")], "{r}");
    let check = env.run(&["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
}

/// `policy create --schedule` repeated keeps each schedule (one to four).
#[test]
fn policy_schedules_repeat_up_to_four() {
    let env = Env::new("flags_schedules");
    env.init(&["--no-encryption"]);
    let p = env.json(&[
        "policy",
        "create",
        "two",
        "--target-tag",
        "a=b",
        "--schedule",
        "hourly: every 6h keep 4",
        "--schedule",
        "daily: every 1d keep 7",
    ]);
    let names: Vec<_> = p["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hourly", "daily"]);
    let mut args = vec!["policy", "create", "five", "--target-tag", "a=b"];
    let specs: Vec<String> = (1..=5)
        .map(|i| format!("s{i}: every {i}d keep 1"))
        .collect();
    for s in &specs {
        args.extend(["--schedule", s.as_str()]);
    }
    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("one to four"), "{}", stderr(&out));
}

/// `snapshot list --tag` repeated: every filter applies (all-of), so two values of one key
/// match nothing.
#[test]
fn list_tag_filters_all_apply() {
    let env = Env::new("flags_list");
    env.init(&["--no-encryption"]);
    let img = small_image(&env, "a.img", 7);
    let snap = |tags: &[&str]| {
        let mut args = vec!["snapshot", "create", img.as_str(), "--volume", "a"];
        for t in tags {
            args.extend(["--tag", t]);
        }
        env.json(&args)["id"].as_str().unwrap().to_string()
    };
    let prod_db = snap(&["env=prod", "tier=db"]);
    let dev = snap(&["env=dev"]);
    let prod = snap(&["env=prod"]);
    let list = |filters: &[&str]| {
        let mut args = vec!["snapshot", "list"];
        for f in filters {
            args.extend(["--tag", f]);
        }
        ids(&env.json(&args))
    };
    let set = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(list(&[]), set(&[&prod_db, &dev, &prod]));
    assert_eq!(list(&["env=prod"]), set(&[&prod_db, &prod]));
    assert_eq!(list(&["env=prod", "tier=db"]), set(&[&prod_db]));
    assert_eq!(list(&["tier=db", "env=dev"]), BTreeSet::new());
    assert_eq!(
        list(&["env=prod", "env=dev"]),
        BTreeSet::new(),
        "all-of: no snapshot has env=prod and env=dev"
    );
    assert_eq!(list(&["env=dev", "env=dev"]), set(&[&dev]));
}

/// `--tag` of `snapshot create`, `volume add` and `image create`: every key is kept; a key given
/// twice is a usage error naming it, and nothing is created.
#[test]
fn create_tags_keep_every_key_and_refuse_a_key_twice() {
    let env = Env::new("flags_create_tags");
    env.init(&["--no-encryption"]);
    let img = small_image(&env, "a.img", 8);

    let s = env.json(&[
        "snapshot", "create", &img, "--tag", "a=1", "--tag", "b=2", "--tag", "c=",
    ]);
    let shown = env.json(&["snapshot", "show", s["id"].as_str().unwrap()]);
    assert_eq!(shown["tags"], json!({"a": "1", "b": "2", "c": ""}));
    let v = env.json(&["volume", "add", "vol", &img, "--tag", "a=1", "--tag", "b=2"]);
    assert_eq!(v["tags"], json!({"a": "1", "b": "2"}));
    let i = env.json(&[
        "image",
        "create",
        "im",
        "--volume",
        &format!("/dev/sda={img}"),
        "--tag",
        "a=1",
        "--tag",
        "b=2",
    ]);
    assert_eq!(i["tags"], json!({"a": "1", "b": "2"}));
    let snap = env.json(&[
        "snapshot",
        "show",
        i["volumes"][0]["snapshot"].as_str().unwrap(),
    ]);
    assert_eq!(snap["tags"], json!({"a": "1", "b": "2"}));

    let before = (
        ids(&env.json(&["snapshot", "list"])),
        env.json(&["volume", "list"]),
        env.json(&["image", "list", "--all"]),
    );
    for args in [
        vec![
            "snapshot", "create", &img, "--tag", "env=prod", "--tag", "env=dev",
        ],
        vec![
            "snapshot", "create", &img, "--tag", "env=prod", "--tag", "env=prod",
        ],
        vec![
            "volume", "add", "v2", &img, "--tag", "env=prod", "--tag", "env=dev",
        ],
        vec![
            "image",
            "create",
            "im2",
            "--volume",
            "/dev/sda=a.img",
            "--tag",
            "env=prod",
            "--tag",
            "env=dev",
        ],
    ] {
        let out = env.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("tag key 'env' is given twice"),
            "{args:?}: {err}"
        );
    }
    let after = (
        ids(&env.json(&["snapshot", "list"])),
        env.json(&["volume", "list"]),
        env.json(&["image", "list", "--all"]),
    );
    assert_eq!(before, after, "a refused command creates nothing");
}

/// `image create --volume` and `image register --volume` repeated: one device each; the same
/// device twice is a usage error naming it.
#[test]
fn image_volumes_repeat_once_per_device() {
    let env = Env::new("flags_image_volumes");
    env.init(&["--no-encryption"]);
    let a = small_image(&env, "a.img", 9);
    let b = small_image(&env, "b.img", 10);
    let i = env.json(&[
        "image",
        "create",
        "two",
        "--volume",
        &format!("/dev/sda={a}"),
        "--volume",
        &format!("/dev/sdb={b}"),
    ]);
    let devices: Vec<_> = i["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["/dev/sda", "/dev/sdb"]);
    let (sa, sb) = (
        i["volumes"][0]["snapshot"].as_str().unwrap(),
        i["volumes"][1]["snapshot"].as_str().unwrap(),
    );
    let r = env.json(&[
        "image",
        "register",
        "again",
        "--volume",
        &format!("/dev/vda={sa}"),
        "--volume",
        &format!("/dev/vdb={sb}"),
    ]);
    assert_eq!(r["volumes"].as_array().unwrap().len(), 2, "{r}");
    let snapshots = ids(&env.json(&["snapshot", "list"]));
    for args in [
        vec![
            "image".to_string(),
            "create".into(),
            "dup".into(),
            "--volume".into(),
            format!("/dev/sda={a}"),
            "--volume".into(),
            format!("/dev/sda={b}"),
        ],
        vec![
            "image".to_string(),
            "register".into(),
            "dup".into(),
            "--volume".into(),
            format!("/dev/sda={sa}"),
            "--volume".into(),
            format!("/dev/sda={sb}"),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("/dev/sda"), "{args:?}: {err}");
    }
    assert_eq!(ids(&env.json(&["snapshot", "list"])), snapshots);
    assert_eq!(
        env.json(&["image", "list", "--all"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
