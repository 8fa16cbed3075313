//! The dedup index's workload on sled (what blocksnap uses) and on two candidates to replace
//! it: redb (a copy-on-write B-tree) and fjall (an LSM tree with bloom filters).
//!
//! ```text
//! index-candidates fill KIND DIR FROM TO   insert entries FROM..TO, 1,000 per batch, then flush
//! index-candidates probe KIND DIR COUNT    open, 100,000 lookups that hit and 100,000 that miss,
//!                                          50 batches of 1,000 inserts (entries COUNT..), flush
//! ```
//!
//! KIND is `sled`, `redb` or `fjall`. The entries are the dedup index's: a 32-byte id (BLAKE3
//! of the entry's number: spread like real chunk ids) and a 48-byte location, 1,000 to a pack,
//! inserted a pack at a time. Each engine gets a 32 MiB cache, as blocksnap gives sled; sled is
//! opened as `blocksnap-index` opens it. `run.sh` fills each to 1, 5 and 10 million entries and
//! probes each step twice, with the page cache dropped and then warm.

use std::path::Path;
use std::time::Instant;

/// Cache given to each engine (blocksnap gives sled 32 MiB).
const CACHE: u64 = 32 << 20;

fn id(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn location(i: u64) -> [u8; 48] {
    let mut v = [0u8; 48];
    v[..32].copy_from_slice(blake3::hash(&(i / 1000).to_be_bytes()).as_bytes());
    v[32..40].copy_from_slice(&(64 + (i % 1000) * 20_000).to_le_bytes());
    v[40..44].copy_from_slice(&20_000u32.to_le_bytes());
    v[44..48].copy_from_slice(&32_768u32.to_le_bytes());
    v
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

trait Engine {
    /// Inserts entries `from..to` as one batch (one pack's).
    fn insert(&self, from: u64, to: u64) -> Res<()>;
    fn contains(&self, id: &[u8; 32]) -> Res<bool>;
    /// Makes everything durable.
    fn flush(&self) -> Res<()>;
}

struct Sled(sled::Db);

impl Engine for Sled {
    fn insert(&self, from: u64, to: u64) -> Res<()> {
        // Entry by entry, as `Index::insert_batch` does (see its doc).
        for i in from..to {
            self.0.insert(&id(i)[..], &location(i)[..])?;
        }
        Ok(())
    }
    fn contains(&self, id: &[u8; 32]) -> Res<bool> {
        Ok(self.0.get(id)?.is_some())
    }
    fn flush(&self) -> Res<()> {
        self.0.flush()?;
        Ok(())
    }
}

const TABLE: redb::TableDefinition<&[u8; 32], &[u8; 48]> = redb::TableDefinition::new("chunks");

struct Redb(redb::Database);

impl Engine for Redb {
    fn insert(&self, from: u64, to: u64) -> Res<()> {
        let mut w = self.0.begin_write()?;
        // A durable commit every 32 batches: redb frees the pages of non-durable commits only
        // at a durable one (committing none durably grew the file to 4.7 GB at 1M entries).
        w.set_durability(if (from / 1000) % 32 == 31 {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        });
        {
            let mut t = w.open_table(TABLE)?;
            for i in from..to {
                t.insert(&id(i), &location(i))?;
            }
        }
        w.commit()?;
        Ok(())
    }
    fn contains(&self, id: &[u8; 32]) -> Res<bool> {
        let r = self.0.begin_read()?;
        match r.open_table(TABLE) {
            Ok(t) => Ok(t.get(id)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    fn flush(&self) -> Res<()> {
        let mut w = self.0.begin_write()?;
        w.set_durability(redb::Durability::Immediate);
        w.open_table(TABLE)?;
        w.commit()?;
        Ok(())
    }
}

struct Fjall(fjall::Keyspace, fjall::PartitionHandle);

impl Engine for Fjall {
    fn insert(&self, from: u64, to: u64) -> Res<()> {
        let mut b = self.0.batch();
        for i in from..to {
            b.insert(&self.1, id(i), location(i));
        }
        b.commit()?;
        Ok(())
    }
    fn contains(&self, id: &[u8; 32]) -> Res<bool> {
        Ok(self.1.get(id)?.is_some())
    }
    fn flush(&self) -> Res<()> {
        self.0.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }
}

fn open(kind: &str, dir: &Path) -> Res<Box<dyn Engine>> {
    Ok(match kind {
        "sled" => Box::new(Sled(
            sled::Config::new()
                .path(dir)
                .cache_capacity(CACHE)
                .mode(sled::Mode::HighThroughput)
                .open()?,
        )),
        "redb" => {
            std::fs::create_dir_all(dir)?;
            let file = dir.join("index.redb");
            let mut b = redb::Builder::new();
            b.set_cache_size(CACHE as usize);
            Box::new(Redb(if file.exists() {
                b.open(&file)?
            } else {
                b.create(&file)?
            }))
        }
        "fjall" => {
            let ks = fjall::Config::new(dir).cache_size(CACHE).open()?;
            let p = ks.open_partition("chunks", fjall::PartitionCreateOptions::default())?;
            Box::new(Fjall(ks, p))
        }
        other => return Err(format!("unknown engine `{other}`: sled, redb or fjall").into()),
    })
}

fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

fn fill(e: &dyn Engine, from: u64, to: u64) -> Res<()> {
    let mut i = from;
    while i < to {
        let end = ((i / 1000 + 1) * 1000).min(to);
        e.insert(i, end)?;
        i = end;
    }
    e.flush()
}

fn rate(n: u64, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64().max(1e-9)
}

fn probe(kind: &str, dir: &Path, count: u64) -> Res<()> {
    let t = Instant::now();
    let e = open(kind, dir)?;
    let open_s = t.elapsed().as_secs_f64();
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ count;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let t = Instant::now();
    for _ in 0..100_000 {
        if !e.contains(&id(next() % count))? {
            return Err("an inserted id was not found".into());
        }
    }
    let hits = rate(100_000, t);
    let t = Instant::now();
    for _ in 0..100_000 {
        if e.contains(&id((1 << 62) | next() >> 2))? {
            return Err("an id never inserted was found".into());
        }
    }
    let misses = rate(100_000, t);
    let t = Instant::now();
    fill(&*e, count, count + 50_000)?;
    let inserts = rate(50_000, t);
    drop(e);
    println!(
        "{kind:>5} {count:>9}: open {open_s:.3} s, hits {hits:>7.0}/s, misses {misses:>7.0}/s, \
         inserts {inserts:>7.0}/s, disk {:>5} MiB, peak RSS {:>4} MiB",
        disk_usage(dir) >> 20,
        peak_rss_mib()
    );
    Ok(())
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| a.get(i).and_then(|s| s.parse::<u64>().ok());
    let result = match (a.first().map(String::as_str), a.get(1), a.get(2)) {
        (Some("fill"), Some(kind), Some(dir)) if a.len() == 5 => match (num(3), num(4)) {
            (Some(from), Some(to)) => (|| {
                let e = open(kind, Path::new(dir))?;
                let t = Instant::now();
                fill(&*e, from, to)?;
                println!(
                    "{kind:>5} fill {from}..{to}: {:.0} inserts/s",
                    rate(to - from, t)
                );
                Ok(())
            })(),
            _ => Err("fill KIND DIR FROM TO: FROM and TO are numbers".into()),
        },
        (Some("probe"), Some(kind), Some(dir)) if a.len() == 4 => match num(3) {
            Some(n) if n > 0 => probe(kind, Path::new(dir), n),
            _ => Err("probe KIND DIR COUNT: COUNT is a number above 0".into()),
        },
        _ => Err("usage: index-candidates fill KIND DIR FROM TO | probe KIND DIR COUNT".into()),
    };
    if let Err(e) = result {
        eprintln!("index-candidates: {e}");
        std::process::exit(1);
    }
}
