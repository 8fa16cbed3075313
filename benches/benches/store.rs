//! The index, and snapshot and restore end to end through the `blocksnap-store` library.
//!
//! Groups:
//! - `index`: `insert_batch` of 10 000 locations into a fresh index; `get` and `contains` of
//!   1 000 ids, all hits or all misses, in an index of 100 000 entries (throughput in lookups;
//!   measured before the inserts, whose databases keep sled busy in the background).
//! - `snapshot`: a 64 MiB seeded image (half text-like, half random 1 MiB blocks) into an
//!   encrypted store holding 0%, 50% or 100% of its chunks already: a fresh store; a store
//!   holding a snapshot of an image that shares every other 4 MiB with it; a store holding the
//!   image itself. Throughput in image bytes per second.
//! - `restore`: the snapshot each of those runs took, restored to a file (fsync included).
//!
//! Set `BLOCKSNAP_BENCH_MIB` for another image size. Short runs while developing:
//! `cargo bench -p blocksnap-benches --bench store -- --warm-up-time 1 --measurement-time 3`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blocksnap_index::{Index, Location};
use blocksnap_manifest::{ChunkId, PackId};
use blocksnap_store::bench::{ContentMix, fill_random, write_image};
use blocksnap_store::{Access, InitOptions, NoProgress, SnapshotOptions, Store};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;

fn ids(n: usize, seed: u64) -> Vec<ChunkId> {
    let mut bytes = vec![0u8; n * 32];
    fill_random(seed, &mut bytes);
    bytes
        .chunks_exact(32)
        .map(|c| ChunkId(c.try_into().unwrap()))
        .collect()
}

fn locations(ids: &[ChunkId]) -> Vec<(ChunkId, Location)> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let loc = Location {
                pack: PackId([(i % 251) as u8; 32]),
                offset: i as u64 * 20_000,
                stored_len: 20_000,
                raw_len: 32_768,
            };
            (*id, loc)
        })
        .collect()
}

fn open_index(dir: &Path) -> Index {
    Index::open(dir, Duration::from_secs(1), |_| {}).unwrap()
}

fn index(c: &mut Criterion) {
    let mut g = c.benchmark_group("index");
    // Lookups first: the insert benchmark leaves sled databases flushing in the background,
    // which slowed the lookups measured after it fifty-fold in a first run.
    let dir = TempDir::new().unwrap();
    let index = open_index(dir.path());
    let stored = ids(100_000, 2);
    for part in locations(&stored).chunks(10_000) {
        index.insert_batch(part).unwrap();
    }
    index.flush().unwrap();
    let hits: Vec<ChunkId> = stored.iter().step_by(100).copied().collect();
    let misses = ids(hits.len(), 3);
    g.throughput(Throughput::Elements(hits.len() as u64));
    for (name, probe) in [("hit", &hits), ("miss", &misses)] {
        g.bench_function(format!("get/{name}"), |b| {
            b.iter(|| {
                probe
                    .iter()
                    .filter(|id| index.get(id).unwrap().is_some())
                    .count()
            })
        });
        g.bench_function(format!("contains/{name}"), |b| {
            b.iter(|| {
                probe
                    .iter()
                    .filter(|id| index.contains(id).unwrap())
                    .count()
            })
        });
    }
    let batch = locations(&ids(10_000, 1));
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("insert_batch/10000", |b| {
        b.iter_batched(
            || {
                let dir = TempDir::new().unwrap();
                let index = open_index(dir.path());
                (dir, index)
            },
            |(dir, index)| {
                index.insert_batch(black_box(&batch)).unwrap();
                (dir, index)
            },
            BatchSize::PerIteration,
        )
    });
}

/// A fresh encrypted store in its own temporary directory.
struct Fixture {
    dir: TempDir,
    store: Store,
    access: Access,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempDir::new().unwrap();
        let identity = dir.path().join("bench.key");
        let (store, _) = Store::init(
            &dir.path().join("store"),
            &InitOptions {
                account: "bench".into(),
                identity: Some(identity.clone()),
                ..InitOptions::default()
            },
        )
        .unwrap();
        let access = store.access(Some("bench"), Some(&identity)).unwrap();
        Fixture { dir, store, access }
    }

    fn snapshot(&self, image: &Path) -> String {
        let opts = SnapshotOptions {
            source: image.into(),
            volume: Some("bench".into()),
            ..SnapshotOptions::default()
        };
        self.store
            .snapshot(&self.access, &opts, &NoProgress)
            .unwrap()
            .id
            .to_string()
    }

    fn restore(&self, snapshot: &str, out: &Path) {
        self.store
            .restore(&self.access, snapshot, out, &NoProgress)
            .unwrap();
    }
}

struct Images {
    _dir: TempDir,
    image: PathBuf,
    /// Shares every other 4 MiB with `image`.
    half: PathBuf,
    size: u64,
}

fn images() -> Images {
    let size = std::env::var("BLOCKSNAP_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(64)
        << 20;
    let dir = TempDir::new().unwrap();
    let (image, half) = (dir.path().join("image"), dir.path().join("half"));
    write_image(&image, size, ContentMix::DATA_ONLY, |_| 1).unwrap();
    write_image(&half, size, ContentMix::DATA_ONLY, |i| {
        if (i / 4) % 2 == 0 { 1 } else { 2 }
    })
    .unwrap();
    Images {
        _dir: dir,
        image,
        half,
        size,
    }
}

/// The store state before the timed snapshot at `dup` percent duplicate data.
fn prepared(dup: u32, imgs: &Images) -> Fixture {
    let f = Fixture::new();
    match dup {
        0 => {}
        50 => drop(f.snapshot(&imgs.half)),
        _ => drop(f.snapshot(&imgs.image)),
    }
    f
}

fn end_to_end(c: &mut Criterion) {
    let imgs = images();
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(imgs.size));
    for dup in [0, 50] {
        g.bench_function(format!("{}MiB/dup-{dup}%", imgs.size >> 20), |b| {
            b.iter_batched(
                || prepared(dup, &imgs),
                |f| {
                    f.snapshot(black_box(&imgs.image));
                    f
                },
                BatchSize::PerIteration,
            )
        });
    }
    // 100%: one store that holds the image; every snapshot of it stores nothing new.
    let full = prepared(100, &imgs);
    g.bench_function(format!("{}MiB/dup-100%", imgs.size >> 20), |b| {
        b.iter(|| full.snapshot(black_box(&imgs.image)))
    });
    drop(g);

    // Restore what each snapshot run above wrote: at 50% the chunks lie in two snapshots' packs.
    let mut g = c.benchmark_group("restore");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(imgs.size));
    for dup in [0, 50, 100] {
        let f = prepared(dup, &imgs);
        let snap = f.snapshot(&imgs.image);
        let out = f.dir.path().join("out.img");
        g.bench_function(format!("{}MiB/dup-{dup}%", imgs.size >> 20), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let _ = std::fs::remove_file(&out);
                    let start = Instant::now();
                    f.restore(&snap, &out);
                    total += start.elapsed();
                }
                total
            })
        });
    }
}

criterion_group!(benches, index, end_to_end);
criterion_main!(benches);
