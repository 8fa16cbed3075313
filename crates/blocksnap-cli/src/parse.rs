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
}
