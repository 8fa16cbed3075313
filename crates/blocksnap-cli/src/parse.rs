//! Parsers for argument values.

/// Parses a size: `4096`, `64KiB`, `4MiB`, `10GiB`, `1TiB` (also `K`, `M`, `G`, `T`, `KB`...; all binary).
pub fn size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size (try 64KiB, 4MiB, 10GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit (use KiB, MiB, GiB or TiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// A size that fits 32 bits.
pub fn size_u32(text: &str) -> Result<u32, String> {
    u32::try_from(size(text)?).map_err(|_| format!("'{text}' is too large"))
}

/// Parses `K=V`.
pub fn tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not a tag; write KEY=VALUE")),
    }
}

/// Parses `DEVICE=SOURCE` (a device of an image and what it is made from).
pub fn mapping(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((d, v)) if !d.is_empty() && !v.is_empty() => Ok((d.to_string(), v.to_string())),
        _ => Err(format!(
            "'{text}' is not a mapping; write DEVICE=PATH or DEVICE=SNAPSHOT (/dev/sda=disk.img)"
        )),
    }
}

/// The first global flag (`--store`, `--identity`, `--json`, `-q`) given more than once in
/// `args` (the whole command line, program name first), as `--long`. clap refuses a flag given
/// twice on one level itself, but lets a global flag given before and after the command
/// (`--store A snapshot list --store B`) keep the later value silently. Call it once clap has
/// accepted `args`: a token that looks like a flag was then parsed as one (no argument takes
/// values that start with `-`), up to a `--` after which all are positional.
pub fn repeated_global(
    cmd: &clap::Command,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Option<String> {
    let globals: Vec<(&str, Option<char>)> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| a.get_long().map(|l| (l, a.get_short())))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for arg in args.into_iter().skip(1) {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        let given: Vec<&str> = if let Some(long) = arg.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or(long);
            globals
                .iter()
                .filter(|g| g.0 == name)
                .map(|g| g.0)
                .collect()
        } else if let Some(shorts) = arg.strip_prefix('-') {
            shorts
                .chars()
                .filter_map(|c| globals.iter().find(|g| g.1 == Some(c)).map(|g| g.0))
                .collect()
        } else {
            Vec::new()
        };
        for long in given {
            if !seen.insert(long) {
                return Some(format!("--{long}"));
            }
        }
    }
    None
}

/// Formats bytes for people: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("64KiB"), Ok(65536));
        assert_eq!(size("4MiB"), Ok(4 << 20));
        assert_eq!(size("10GiB"), Ok(10 << 30));
        assert_eq!(size("512"), Ok(512));
        assert!(size("4XB").is_err());
        assert!(size("").is_err());
        assert!(size("99999999999TiB").is_err());
        assert!(size_u32("8GiB").is_err());
    }

    #[test]
    fn tags_and_human() {
        assert_eq!(tag("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(tag("=x").is_err());
        assert!(tag("x").is_err());
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10), "10 B");
    }

    #[test]
    fn repeated_globals() {
        use clap::{Arg, ArgAction, Command};
        let cmd = Command::new("b")
            .arg(Arg::new("store").long("store").global(true))
            .arg(
                Arg::new("quiet")
                    .short('q')
                    .long("quiet")
                    .global(true)
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("account").long("account"));
        let run = |a: &[&str]| repeated_global(&cmd, a.iter().map(|s| s.into()));
        assert_eq!(
            run(&["b", "--store", "A", "ls", "--store=B"]),
            Some("--store".into())
        );
        assert_eq!(run(&["b", "-q", "ls", "--quiet"]), Some("--quiet".into()));
        assert_eq!(run(&["b", "--store", "A", "ls", "-q"]), None);
        assert_eq!(run(&["b", "--account", "x", "ls", "--account", "y"]), None);
        assert_eq!(run(&["b", "--store", "A", "ls", "--", "--store"]), None);
    }
}
