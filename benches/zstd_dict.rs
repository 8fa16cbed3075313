//! Would a zstd dictionary make the store smaller? A trial on a real disk image (issue 19's
//! store-size candidates), outside the store: nothing here changes the format.
//!
//! ```text
//! zstd-dict IMAGE [--level N] [--chunk-size BYTES] [--sample-mb N] [--json]
//! ```
//!
//! Cuts IMAGE (a raw disk image; holes and all-zero chunks are skipped, as the store skips
//! them) with FastCDC at blocksnap's default average, keeps each distinct chunk once (BLAKE3),
//! and compresses every one of them at the store's zstd level: without a dictionary (what the
//! store does today), and with dictionaries of 16, 64 and 110 KiB trained by zstd's
//! `ZDICT_trainFromBuffer` on two samples: `spread` (every k-th distinct chunk over the whole
//! disk, about `--sample-mb` MB) and `prefix` (the first `--sample-mb` MB of distinct chunks:
//! what a store could train on at the start of its first snapshot, before it has seen the
//! rest). Reports, for each, the compressed bytes (the dictionary's own size added once), the
//! gain against no dictionary, the training time and the compression time (two cores, rayon),
//! and the decompression time of every chunk. Nothing but the samples is kept in memory: the
//! image is read once for the prefix sample, once for the spread one, and once for each
//! dictionary's compression pass.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::time::Instant;

use blocksnap_chunker::{Chunker, ChunkerParams};
use rayon::prelude::*;

/// Bytes read and cut at once.
const WINDOW: usize = 64 << 20;

struct Args {
    image: String,
    level: i32,
    chunk_size: u32,
    sample_mb: usize,
    json: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        image: String::new(),
        level: 3,
        chunk_size: 32 * 1024,
        sample_mb: 32,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .and_then(|v| v.parse::<u64>().map_err(|e| format!("{name} {v}: {e}")))
        };
        match a.as_str() {
            "--level" => args.level = value("--level")? as i32,
            "--chunk-size" => args.chunk_size = value("--chunk-size")? as u32,
            "--sample-mb" => args.sample_mb = value("--sample-mb")? as usize,
            "--json" => args.json = true,
            "-h" | "--help" => {
                return Err(
                    "usage: zstd-dict IMAGE [--level N] [--chunk-size BYTES] [--sample-mb N] [--json]"
                        .into(),
                );
            }
            _ if args.image.is_empty() && !a.starts_with('-') => args.image = a,
            _ => return Err(format!("unexpected argument {a}; see --help")),
        }
    }
    if args.image.is_empty() {
        return Err("no image given; see --help".into());
    }
    Ok(args)
}

/// Calls `each` with every distinct non-zero chunk of the image, in disk order.
fn for_each_chunk(
    path: &str,
    chunker: &Chunker,
    mut each: impl FnMut(&[u8]),
) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut seen = HashSet::new();
    let mut buf = Vec::with_capacity(WINDOW + chunker.min_window());
    let mut offset = 0u64;
    let mut eof = false;
    while !eof || !buf.is_empty() {
        while !eof && buf.len() < WINDOW {
            let start = buf.len();
            buf.resize(WINDOW, 0);
            let n = file
                .read(&mut buf[start..])
                .map_err(|e| format!("{path}: {e}"))?;
            buf.truncate(start + n);
            eof = n == 0;
        }
        let cuts = chunker.cut(&buf, offset, eof);
        let mut p = 0;
        for len in &cuts {
            let chunk = &buf[p..p + len];
            p += len;
            if chunk.iter().all(|&b| b == 0) || !seen.insert(*blake3::hash(chunk).as_bytes()) {
                continue;
            }
            each(chunk);
        }
        offset += p as u64;
        buf.drain(..p);
        if eof && cuts.is_empty() {
            break;
        }
    }
    Ok(())
}

struct Trial {
    name: String,
    dict_bytes: usize,
    train_s: f64,
    stored: u64,
    compress_s: f64,
    decompress_s: f64,
}

fn run() -> Result<(), String> {
    let args = parse()?;
    let chunker = Chunker::new(ChunkerParams::cdc(args.chunk_size)).map_err(|e| e.to_string())?;
    let sample_bytes = args.sample_mb << 20;

    // Pass 1: the distinct chunks' count and bytes, and the prefix sample.
    let (mut count, mut raw) = (0u64, 0u64);
    let mut prefix: Vec<Vec<u8>> = Vec::new();
    let mut prefix_len = 0;
    for_each_chunk(&args.image, &chunker, |c| {
        count += 1;
        raw += c.len() as u64;
        if prefix_len < sample_bytes {
            prefix_len += c.len();
            prefix.push(c.to_vec());
        }
    })?;
    // Pass 2 (reading again): the spread sample, every k-th chunk.
    let every = (raw / sample_bytes.max(1) as u64).max(1);
    let mut spread = Vec::new();
    let mut i = 0u64;
    for_each_chunk(&args.image, &chunker, |c| {
        if i % every == 0 {
            spread.push(c.to_vec());
        }
        i += 1;
    })?;

    let mut dicts: Vec<(String, Vec<u8>, f64)> = vec![("none".into(), Vec::new(), 0.0)];
    for (sample_name, sample) in [("spread", &spread), ("prefix", &prefix)] {
        for kib in [16usize, 64, 110] {
            let t = Instant::now();
            let dict = zstd::dict::from_samples(sample, kib << 10)
                .map_err(|e| format!("training a {kib} KiB dictionary on {sample_name}: {e}"))?;
            dicts.push((
                format!("{sample_name} {kib} KiB"),
                dict,
                t.elapsed().as_secs_f64(),
            ));
        }
    }

    // Pass 3 for each dictionary: compress every chunk (a window at a time, in parallel), then
    // decompress the window's records.
    let mut trials = Vec::new();
    for (name, dict, train_s) in &dicts {
        let (mut stored, mut compress_s, mut decompress_s) = (dict.len() as u64, 0.0, 0.0);
        let cdict = zstd::dict::EncoderDictionary::copy(dict, args.level);
        let ddict = zstd::dict::DecoderDictionary::copy(dict);
        let mut window: Vec<Vec<u8>> = Vec::new();
        let mut window_len = 0;
        let mut flush = |window: &mut Vec<Vec<u8>>| -> Result<(), String> {
            let t = Instant::now();
            let records: Vec<Vec<u8>> = window
                .par_iter()
                .map_init(
                    || {
                        if dict.is_empty() {
                            zstd::bulk::Compressor::new(args.level)
                        } else {
                            zstd::bulk::Compressor::with_prepared_dictionary(&cdict)
                        }
                    },
                    |z, c| match z {
                        Ok(z) => z.compress(c).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                )
                .collect::<Result<_, String>>()?;
            compress_s += t.elapsed().as_secs_f64();
            stored += records.iter().map(|r| r.len() as u64).sum::<u64>();
            let t = Instant::now();
            records
                .par_iter()
                .zip(window.par_iter())
                .map_init(
                    || {
                        if dict.is_empty() {
                            zstd::bulk::Decompressor::new()
                        } else {
                            zstd::bulk::Decompressor::with_prepared_dictionary(&ddict)
                        }
                    },
                    |z, (r, c)| {
                        let z = z.as_mut().map_err(|e| e.to_string())?;
                        let out = z.decompress(r, c.len()).map_err(|e| e.to_string())?;
                        if out != *c {
                            return Err("a chunk did not decompress to itself".to_string());
                        }
                        Ok(())
                    },
                )
                .collect::<Result<(), String>>()?;
            decompress_s += t.elapsed().as_secs_f64();
            window.clear();
            Ok(())
        };
        for_each_chunk(&args.image, &chunker, |c| {
            window_len += c.len();
            window.push(c.to_vec());
            if window_len >= WINDOW {
                window_len = 0;
                if let Err(e) = flush(&mut window) {
                    eprintln!("zstd-dict: {e}");
                    std::process::exit(1);
                }
            }
        })?;
        flush(&mut window)?;
        eprintln!("{name}: {stored} bytes");
        trials.push(Trial {
            name: name.clone(),
            dict_bytes: dict.len(),
            train_s: *train_s,
            stored,
            compress_s,
            decompress_s,
        });
    }

    let base = trials[0].stored as f64;
    if args.json {
        let rows: Vec<_> = trials
            .iter()
            .map(|t| {
                serde_json::json!({
                    "dictionary": t.name, "dict_bytes": t.dict_bytes, "train_s": t.train_s,
                    "stored_bytes": t.stored, "gain": 1.0 - t.stored as f64 / base,
                    "compress_s": t.compress_s, "decompress_s": t.decompress_s,
                })
            })
            .collect();
        let report = serde_json::json!({
            "image": args.image, "level": args.level, "chunk_size": args.chunk_size,
            "chunks": count, "raw_bytes": raw, "sample_mb": args.sample_mb, "trials": rows,
        });
        println!("{report}");
    } else {
        println!(
            "{} distinct chunks, {:.1} MB, zstd level {}, samples of {} MB",
            count,
            raw as f64 / 1e6,
            args.level,
            args.sample_mb
        );
        println!();
        println!(
            "| dictionary | stored MB (dictionary included) | smaller by | train s | compress s | decompress s |"
        );
        println!("|---|--:|--:|--:|--:|--:|");
        for t in &trials {
            println!(
                "| {} | {:.1} | {:.2}% | {:.2} | {:.2} | {:.2} |",
                t.name,
                t.stored as f64 / 1e6,
                100.0 * (1.0 - t.stored as f64 / base),
                t.train_s,
                t.compress_s,
                t.decompress_s
            );
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("zstd-dict: {e}");
        std::process::exit(2);
    }
}
