//! The dedup index as the store grows: fills a sled index with synthetic entries up to ten
//! million chunks and, at each step, measures what a snapshot pays for it.
//!
//! ```text
//! index-scale [--dir DIR] [--steps 0,1000000,5000000,10000000] [--json]
//! index-scale fill DIR COUNT      add COUNT entries to the index at DIR (a store's index cache)
//! index-scale probe DIR COUNT     one step's measurements of the index at DIR holding COUNT
//! ```
//!
//! Each step is measured by a fresh process (`probe`), so that its open time is a cold open and
//! its peak RSS is what a command holding an index of that size pays, not what filling it cost.
//! The entries are what the store writes: 32-byte keyed-hash-like ids (BLAKE3 of a counter: as
//! uniformly spread as real chunk ids), 48-byte locations, 1,000 to a pack, inserted a pack at a
//! time through [`Index::insert_batch`]. `benches/index-scale.sh` runs this and then times real
//! snapshots into a store whose index holds ten million entries against an empty one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blocksnap_index::{Index, Location};
use blocksnap_manifest::{ChunkId, PackId};

/// Entries per synthetic pack (a 32 MiB pack of 32 KiB chunks holds about 1,000).
const PER_PACK: u64 = 1000;
/// Lookups of each kind a probe times.
const LOOKUPS: u64 = 100_000;
/// Inserts a probe times (these ids are the next ones of the fill, so a later fill goes on
/// after them).
const INSERTS: u64 = 50_000;

fn chunk_id(i: u64) -> ChunkId {
    ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

fn location(i: u64) -> Location {
    let pack = i / PER_PACK;
    let mut id = *blake3::hash(&pack.to_be_bytes()).as_bytes();
    id[0] ^= 0x5a;
    Location {
        pack: PackId(id),
        offset: 64 + (i % PER_PACK) * 20_000,
        stored_len: 20_000,
        raw_len: 32_768,
    }
}

/// Inserts the entries `from..to`, a pack's worth at a time, and flushes.
fn fill(index: &Index, from: u64, to: u64) -> Result<(), String> {
    let mut i = from;
    while i < to {
        let end = (i / PER_PACK + 1) * PER_PACK;
        let end = end.min(to);
        let batch: Vec<(ChunkId, Location)> =
            (i..end).map(|j| (chunk_id(j), location(j))).collect();
        index.insert_batch(&batch).map_err(|e| e.to_string())?;
        i = end;
    }
    index.flush().map_err(|e| e.to_string())
}

fn open(dir: &Path) -> Result<Index, String> {
    Index::open(dir, Duration::from_secs(60), |_| {}).map_err(|e| e.to_string())
}

/// Bytes the files under `dir` take on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// This process's peak resident set, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// A small seeded generator (xorshift64*), for lookups in a random order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// One step's measurements, printed as a JSON object on one line.
fn probe(dir: &Path, count: u64) -> Result<(), String> {
    let t = Instant::now();
    let index = open(dir)?;
    let open_s = t.elapsed().as_secs_f64();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ count);
    // Hits: ids the index holds, in random order. Misses: ids it does not (a snapshot's new
    // data asks these, once per chunk).
    let t = Instant::now();
    let mut found = 0u64;
    if count > 0 {
        for _ in 0..LOOKUPS {
            let i = rng.next() % count;
            found += u64::from(
                index
                    .get(&chunk_id(i))
                    .map_err(|e| e.to_string())?
                    .is_some(),
            );
        }
        if found != LOOKUPS {
            return Err(format!(
                "{} of {LOOKUPS} ids the index should hold were not found",
                LOOKUPS - found
            ));
        }
    }
    let hits = t.elapsed();
    let t = Instant::now();
    for _ in 0..LOOKUPS {
        let i = (1u64 << 62) | rng.next() >> 2;
        if index.contains(&chunk_id(i)).map_err(|e| e.to_string())? {
            return Err("an id never inserted was found".into());
        }
    }
    let misses = t.elapsed();
    let t = Instant::now();
    fill(&index, count, count + INSERTS)?;
    let inserts = t.elapsed();
    let row = serde_json::json!({
        "entries": count,
        "open_s": open_s,
        "hit_lookups_per_s": if count > 0 { per_sec(LOOKUPS, hits).round() } else { 0.0 },
        "miss_lookups_per_s": per_sec(LOOKUPS, misses).round(),
        "inserts_per_s": per_sec(INSERTS, inserts).round(),
        "peak_rss_bytes": peak_rss(),
    });
    println!("{row}");
    Ok(())
}

fn run(dir: &Path, steps: &[u64], json: bool) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // Entries in the index so far: the fill's, plus each probe's inserts.
    let mut held = open(dir)?.len() as u64;
    if held > 0 {
        return Err(format!(
            "{} already holds {held} entries: give --dir a new directory",
            dir.display()
        ));
    }
    let mut rows = Vec::new();
    if !json {
        println!(
            "{:>10}  {:>12}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>9}",
            "entries",
            "fill ins/s",
            "open s",
            "hits/s",
            "misses/s",
            "inserts/s",
            "disk MiB",
            "RSS MiB"
        );
    }
    for &step in steps {
        let mut fill_rate = f64::NAN;
        if step > held {
            let index = open(dir)?;
            let t = Instant::now();
            fill(&index, held, step)?;
            fill_rate = per_sec(step - held, t.elapsed());
            held = step;
        }
        let disk = disk_usage(dir);
        let out = std::process::Command::new(&me)
            .arg("probe")
            .arg(dir)
            .arg(held.to_string())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let mut row: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("the probe's report does not parse: {e}"))?;
        let field = |name: &str| row[name].as_f64().unwrap_or(f64::NAN);
        held += INSERTS;
        if json {
            let fill = if fill_rate.is_nan() {
                0.0
            } else {
                fill_rate.round()
            };
            row["fill_inserts_per_s"] = fill.into();
            row["disk_bytes"] = disk.into();
            rows.push(row);
        } else {
            println!(
                "{:>10}  {:>12.0}  {:>8.3}  {:>10.0}  {:>10.0}  {:>10.0}  {:>10.1}  {:>9.1}",
                field("entries"),
                fill_rate,
                field("open_s"),
                field("hit_lookups_per_s"),
                field("miss_lookups_per_s"),
                field("inserts_per_s"),
                disk as f64 / (1 << 20) as f64,
                field("peak_rss_bytes") / (1 << 20) as f64
            );
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}

fn parse_count(s: &str) -> Result<u64, String> {
    let (digits, scale) = match s.strip_suffix(['M', 'm']) {
        Some(d) => (d, 1_000_000),
        None => match s.strip_suffix(['K', 'k']) {
            Some(d) => (d, 1_000),
            None => (s, 1),
        },
    };
    digits
        .parse::<u64>()
        .map(|n| n * scale)
        .map_err(|_| format!("`{s}` is not a count (a number, optionally with K or M)"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fill") if args.len() == 3 => {
            let dir = PathBuf::from(&args[1]);
            parse_count(&args[2]).and_then(|n| {
                let index = open(&dir)?;
                let from = index.len() as u64;
                let t = Instant::now();
                // Ids continue after those a previous fill of this index wrote.
                fill(&index, from, from + n)?;
                eprintln!(
                    "{}: {n} entries added in {:.1} s, {} in all",
                    dir.display(),
                    t.elapsed().as_secs_f64(),
                    from + n
                );
                Ok(())
            })
        }
        Some("probe") if args.len() == 3 => {
            parse_count(&args[2]).and_then(|n| probe(Path::new(&args[1]), n))
        }
        _ => {
            let mut dir = None;
            let mut steps = vec![0, 1_000_000, 5_000_000, 10_000_000];
            let mut json = false;
            let mut it = args.iter();
            let mut bad = None;
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--dir" => dir = it.next().map(PathBuf::from),
                    "--steps" => {
                        match it
                            .next()
                            .map(|s| s.split(',').map(parse_count).collect::<Result<Vec<_>, _>>())
                        {
                            Some(Ok(s)) if s.windows(2).all(|w| w[0] < w[1]) => steps = s,
                            _ => bad = Some("--steps takes increasing counts: 0,1M,5M,10M".into()),
                        }
                    }
                    "--json" => json = true,
                    other => {
                        bad = Some(format!(
                            "unknown argument `{other}`; see the doc comment of benches/index_scale.rs"
                        ))
                    }
                }
            }
            match bad {
                Some(e) => Err(e),
                None => {
                    let temp;
                    let dir = match dir {
                        Some(d) => d,
                        None => {
                            temp = tempfile::tempdir().map_err(|e| e.to_string());
                            match &temp {
                                Ok(t) => t.path().join("index"),
                                Err(e) => {
                                    eprintln!("index-scale: {e}");
                                    std::process::exit(1);
                                }
                            }
                        }
                    };
                    run(&dir, &steps, json)
                }
            }
        }
    };
    if let Err(e) = result {
        eprintln!("index-scale: {e}");
        std::process::exit(1);
    }
}
