//! What blocksnap says and where it stops: store URLs refused before anything is created, an
//! OS error said once, a closed stdout ending quietly, a full restore target named as such.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;

/// The command with this test's config directories, run in `cwd`, without a `--store`.
fn bare(env: &Env, cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blocksnap-e2e"));
    c.current_dir(cwd)
        .env("XDG_CONFIG_HOME", env.dir.join("config"))
        .env("XDG_CACHE_HOME", env.dir.join("cache"))
        .env("XDG_DATA_HOME", env.dir.join("data"))
        .env_remove("BLOCKSNAP_STORE")
        .env_remove("BLOCKSNAP_ACCOUNT")
        .env_remove("BLOCKSNAP_IDENTITY");
    c
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `--store` (or BLOCKSNAP_STORE, or `image copy --to`) with a URL scheme other than `file` and
/// `s3` (tests/e2e/s3.rs) is refused with exit 2 and the supported forms, and creates nothing (no
/// `gs:` directory, no default store); `file:///PATH` is the local directory PATH.
#[test]
fn store_urls_are_refused_and_nothing_is_created() {
    let env = Env::new("msg_urls");
    let cwd = env.path("cwd");
    fs::create_dir(&cwd).unwrap();
    let img = env.path("a.img");
    write_at(&img, 1 << 20, 0, &random_bytes(64 << 10, 1));
    for url in ["swift://bucket/p", "http://127.0.0.1:9000/b", "gs://b/p"] {
        for args in [
            vec!["init"],
            vec!["snapshot", "list"],
            vec!["snapshot", "create", img.to_str().unwrap()],
            vec!["account", "list"],
        ] {
            for via_env in [false, true] {
                let mut c = bare(&env, &cwd);
                if via_env {
                    c.env("BLOCKSNAP_STORE", url);
                } else {
                    c.args(["--store", url]);
                }
                let out = c.args(&args).output().unwrap();
                let err = stderr(&out);
                assert_eq!(out.status.code(), Some(2), "{url} {args:?}: {err}");
                let scheme = url.split("://").next().unwrap();
                assert!(
                    err.contains(&format!("{scheme}:// stores are not supported"))
                        && err.contains("file:///PATH")
                        && err.contains(url),
                    "{url} {args:?}: {err}"
                );
                assert!(
                    entries(&cwd).is_empty(),
                    "{url} {args:?} created {:?}",
                    entries(&cwd)
                );
            }
        }
    }
    assert!(
        !env.dir.join("data").exists(),
        "no default store was created"
    );

    // file:///PATH names a local directory.
    let store = env.store.clone();
    let url = format!("file://{}", store.display());
    let out = bare(&env, &cwd)
        .args(["--store", &url, "init", "--account", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        store.join("config").is_file(),
        "the store is at {}",
        store.display()
    );
    assert!(entries(&cwd).is_empty());
    let id = env.json(&["snapshot", "create", img.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = bare(&env, &cwd)
        .args(["--store", &url, "--json", "snapshot", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    env.json(&[
        "image",
        "register",
        "im",
        "--volume",
        &format!("/dev/sda={id}"),
    ]);

    // A copy to a URL store is refused the same way, before anything is read or written.
    let out = env.run(&["image", "copy", "im", "--to", "gs://bucket/copy"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("gs:// stores are not supported"));
    assert!(!env.dir.join("gs:").exists() && !Path::new("gs:").exists());
}

/// An OS error appears once in the message, not once per level of the error chain.
#[test]
fn the_os_error_is_said_once() {
    let env = Env::new("msg_once");
    env.init(&[]);
    let out = env.run(&[
        "--identity",
        "/dev/null/bob.key",
        "account",
        "create",
        "bob",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/dev/null"), "the path is named: {err}");
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
}

/// Makes `volume list` print a few hundred KiB: larger than a pipe's buffer, so the writer
/// meets the closed pipe.
fn many_tags(env: &Env) {
    let img = env.path("a.img");
    write_at(&img, 1 << 20, 0, b"x");
    let value = "v".repeat(1000);
    for vol in ["a", "b", "c", "d"] {
        let tags: Vec<String> = (0..64).map(|i| format!("k{i}={value}")).collect();
        let mut args = vec!["volume", "add", vol, img.to_str().unwrap()];
        for t in &tags {
            args.extend(["--tag", t.as_str()]);
        }
        env.json(&args);
    }
}

/// `blocksnap --json … | head -c1`: the reader closes the pipe early; blocksnap ends quietly
/// with status 0, for JSON and for tables.
#[test]
fn a_closed_stdout_ends_quietly() {
    let env = Env::new("msg_pipe");
    env.init(&["--no-encryption"]);
    many_tags(&env);
    let full = env
        .cmd()
        .args(["--json", "volume", "list"])
        .output()
        .unwrap();
    assert!(full.stdout.len() > 200_000, "{} bytes", full.stdout.len());
    for args in [&["--json", "volume", "list"][..], &["volume", "list"][..]] {
        // A pipe read for one byte, then closed.
        let mut child = env
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut one = [0u8; 1];
        stdout.read_exact(&mut one).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(out.stderr.is_empty(), "{args:?}: {}", stderr(&out));

        // The same through a shell pipeline with `head -c1`.
        let bin = env!("CARGO_BIN_EXE_blocksnap-e2e");
        let line = format!(
            "set -o pipefail; '{bin}' --store '{}' {} | head -c1 >/dev/null",
            env.store.display(),
            args.join(" ")
        );
        let out = Command::new("bash")
            .args(["-c", &line])
            .env("XDG_CONFIG_HOME", env.dir.join("config"))
            .env("XDG_CACHE_HOME", env.dir.join("cache"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{line}: {}", stderr(&out));
        assert!(out.stderr.is_empty(), "{line}: {}", stderr(&out));
    }
}

/// Unmounts a test filesystem even when the test fails.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A restore onto a full filesystem that is not the store's: the error names that filesystem,
/// says the OS error once, and does not send the user to `prune` (which frees nothing there);
/// no temporary output is left.
#[test]
fn a_full_restore_target_names_its_filesystem() {
    let env = Env::new("msg_full_target");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    assert!(
        root,
        "a_full_restore_target_names_its_filesystem needs root (it mounts a tmpfs): run the \
         tests as root, as CI does"
    );
    env.init(&["--no-encryption"]);
    let img = env.path("a.img");
    write_at(&img, 16 << 20, 0, &random_bytes(12 << 20, 2));
    let id = env.snapshot(&img, "a")["id"].as_str().unwrap().to_string();
    let mnt = env.path("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "mounting a 4 MiB tmpfs at {} failed",
        mnt.display()
    );
    let _guard = Mount(mnt.clone());
    let out_path = mnt.join("out.img");
    let out = env.run(&["snapshot", "restore", &id, out_path.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The restore names the full filesystem in its own words: the OS error text at most once.
    assert!(err.matches("No space left on device").count() <= 1, "{err}");
    assert!(
        err.contains(&format!(
            "the filesystem mounted at {} is full",
            mnt.display()
        )) && err.contains("prune` frees nothing there"),
        "{err}"
    );
    assert!(!err.contains("reclaims deleted snapshots"), "{err}");
    assert!(entries(&mnt).is_empty(), "left behind: {:?}", entries(&mnt));
}
