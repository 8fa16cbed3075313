//! What people read: tables aligned whatever the names' lengths and without trailing spaces,
//! `show` in human units, counts in the singular for one, a dry run that says "would", an
//! ambiguous prefix that lists its candidates, `volume add` in a sentence.

use crate::common::*;

fn text(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts that `table` is a header and rows whose cells start (left-aligned columns) or end
/// (`right`, by header) where their heading does, and that no line ends in a space; returns the
/// rows' cells.
fn aligned(table: &str, right: &[&str]) -> Vec<Vec<String>> {
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.len() >= 2, "a header and rows: {table}");
    for l in &lines {
        assert!(!l.ends_with(' '), "a line ends in a space: {l:?}\n{table}");
    }
    let header = lines[0];
    // The headings and their places (all headings are single words).
    let mut heads: Vec<(usize, usize, &str)> = Vec::new();
    let mut i = 0;
    for word in header.split(' ').filter(|w| !w.is_empty()) {
        let at = header[i..].find(word).unwrap() + i;
        heads.push((at, at + word.len(), word));
        i = at + word.len();
    }
    let mut rows = Vec::new();
    for l in &lines[1..] {
        let chars: Vec<char> = l.chars().collect();
        // Cells are two spaces or more apart (only a last cell may be empty).
        let mut cells: Vec<String> = l
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        assert!(cells.len() <= heads.len(), "{l:?}");
        cells.resize(heads.len(), String::new());
        for (&(start, end, word), cell) in heads.iter().zip(&cells) {
            if cell.is_empty() {
                continue;
            }
            let cell: Vec<char> = cell.chars().collect();
            if right.contains(&word) {
                assert!(
                    end >= cell.len() && chars[end - cell.len()..end] == cell[..],
                    "column {word} does not end at {end}: {l:?}\n{table}"
                );
            } else {
                assert!(
                    chars.get(start..start + cell.len()) == Some(&cell[..])
                        && (start == 0 || chars[start - 1] == ' '),
                    "column {word} does not start at {start}: {l:?}\n{table}"
                );
            }
        }
        rows.push(cells);
    }
    rows
}

#[test]
fn tables_line_up_for_any_name_and_messages_read_as_sentences() {
    let env = Env::new("tables");
    env.init(&[]);
    let long = "a-volume-with-a-name-much-longer-than-any-column-was-ever-meant-for-0123456789";
    let disk = env.path("disk.img");
    write_at(&disk, 3 << 20, 1 << 20, &random_bytes(200_000, 1));
    let small = env.path("s.img");
    write_at(&small, 1 << 20, 0, &random_bytes(10_000, 2));

    // volume add says what it did.
    let said = text(
        &env,
        &[
            "volume",
            "add",
            long,
            disk.to_str().unwrap(),
            "--tag",
            "env=prod",
        ],
    );
    assert_eq!(
        said.trim_end(),
        format!(
            "added volume '{long}' for {}, tagged env=prod: `blocksnap snapshot create {long}` \
             snapshots it",
            disk.display()
        )
    );
    text(&env, &["volume", "add", "s", small.to_str().unwrap()]);
    let rows = aligned(&text(&env, &["volume", "list"]), &[]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], long);
    assert_eq!(rows[0][2], "env=prod");
    assert_eq!(rows[1][0], "s");

    // Snapshots of both; the list lines up, sizes to the right.
    let a = env.json(&["snapshot", "create", long, "--tag", "k=v"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.json(&["snapshot", "create", "s"]);
    let rows = aligned(&text(&env, &["snapshot", "list"]), &["SIZE"]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][1], long);
    assert_eq!(rows[0][2], "3.0 MiB");
    assert_eq!(rows[0][4], "k=v");
    assert_eq!(rows[1][2], "1.0 MiB");
    assert_eq!(
        text(&env, &["snapshot", "list", "--volume", "nothing"]).trim(),
        "no snapshots match"
    );

    // show: human units, one field a line, values lined up.
    let show = text(&env, &["snapshot", "show", &a]);
    assert!(
        show.contains("size         3.0 MiB (3145728 bytes)"),
        "{show}"
    );
    assert!(show.contains(&format!("volume       {long}")), "{show}");
    assert!(!show.lines().any(|l| l.ends_with(' ')), "{show}");

    // Images: the owner shows, a long name lines up.
    let img = "an-image-whose-name-is-longer-than-the-old-twenty-four-columns";
    env.json(&[
        "image",
        "create",
        img,
        "--volume",
        &format!("/dev/sda={long}"),
    ]);
    env.json(&["image", "create", "web", "--volume", "/dev/vda=s"]);
    let rows = aligned(&text(&env, &["image", "list"]), &["DEVICES", "SIZE"]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][1], img);
    assert_eq!(rows[0][2], "alice");
    assert_eq!(rows[0][5], "owner only");
    let show = text(&env, &["image", "show", "web"]);
    assert!(show.contains("owned by alice"), "{show}");
    assert!(!show.lines().any(|l| l.ends_with(' ')), "{show}");

    // The trash: a table, and counts in the singular for one.
    env.json(&["snapshot", "delete", &a]);
    let rows = aligned(&text(&env, &["trash", "list"]), &["SIZE"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], a);
    assert_eq!(rows[0][2], long);
    assert_eq!(
        text(&env, &["trash", "empty"]).trim(),
        "removed 1 entry from the trash for good; `blocksnap prune` reclaims their space"
    );
    assert_eq!(text(&env, &["trash", "list"]).trim(), "the trash is empty");

    // Policies of different name lengths line up.
    env.json(&[
        "policy",
        "create",
        "p",
        "--target-tag",
        "env=prod",
        "--schedule",
        "daily: every 1d keep 7",
    ]);
    env.json(&[
        "policy",
        "create",
        "a-policy-with-a-long-name",
        "--target-tag",
        "env=dev",
        "--schedule",
        "every 1w keep 4",
        "--schedule",
        "every 1mo keep 1y",
    ]);
    let rows = aligned(&text(&env, &["policy", "list"]), &[]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], "a-policy-with-a-long-name");
    assert_eq!(
        rows[0][2],
        "every-1w: every 1w keep 4; every-1mo: every 1mo keep 1y"
    );
    let run = text(&env, &["policy", "run"]);
    assert!(run.contains(": 1 snapshot taken, 0 expired"), "{run}");

    // A dry run says what it would do.
    let dry = text(&env, &["prune", "--dry-run"]);
    assert!(
        dry.starts_with("dry run, nothing changed: would delete 0 packs and rewrite 0 ")
            && dry.contains("reclaiming 0 B"),
        "{dry}"
    );
    let done = text(&env, &["prune"]);
    assert!(!done.contains("would"), "{done}");

    // An ambiguous prefix lists the snapshots it matches: take snapshots until two ids share
    // their first digit (17 are sure to).
    let mut ids: Vec<String> = Vec::new();
    let shared = loop {
        let id = env.json(&["snapshot", "create", "s"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let digit = &id[5..6];
        if let Some(other) = ids.iter().find(|o| &o[5..6] == digit) {
            break (other.clone(), id);
        }
        ids.push(id);
        assert!(ids.len() <= 16);
    };
    let prefix = &shared.0[..6];
    let out = env.run(&["snapshot", "show", prefix]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("'{prefix}' matches "))
            && err.contains(&shared.0)
            && err.contains(&shared.1)
            && err.contains("give more of it"),
        "{err}"
    );
}
