//! Throughput of each stage of the snapshot pipeline, on random, text-like and zero-heavy data.
//!
//! Groups: `chunk` (FastCDC 64 KiB, fixed 64 KiB), `hash` (keyed BLAKE3), `encode` (zstd +
//! AES-256-GCM), `decode`.
//!
//! Compare before and after a change:
//! `cargo bench -p blocksnap-benches -- --save-baseline before`, change, then
//! `cargo bench -p blocksnap-benches -- --baseline before`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use blocksnap_benches::data;
use blocksnap_chunker::{Chunker, ChunkerParams};
use blocksnap_manifest::KeyId;
use blocksnap_pack::{ChunkCodec, DataKey, nonce_for};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const LEN: usize = 16 << 20;
const KINDS: [&str; 3] = ["random", "text", "zero-heavy"];

fn chunk(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(LEN as u64));
    for kind in KINDS {
        let buf = data(kind, LEN);
        for (name, params) in [
            ("cdc-64k", ChunkerParams::cdc(65536)),
            ("fixed-64k", ChunkerParams::fixed(65536)),
        ] {
            let chunker = Chunker::new(params).unwrap();
            g.bench_function(format!("{name}/{kind}"), |b| {
                b.iter(|| chunker.cut(black_box(&buf), 0, true).len())
            });
        }
    }
}

fn codec() -> ChunkCodec {
    ChunkCodec::encrypted(KeyId(1), DataKey::from_bytes([7; 32]), 3)
}

fn hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    let codec = codec();
    let buf = data("random", 64 << 10);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("keyed-blake3/64k", |b| {
        b.iter(|| codec.chunk_id(black_box(&buf)))
    });
}

fn encode_decode(c: &mut Criterion) {
    let codec = codec();
    let cipher = codec.pack_cipher(&[1; 32]).unwrap();
    let mut g = c.benchmark_group("encode");
    for kind in KINDS {
        let buf = data(kind, 64 << 10);
        let id = codec.chunk_id(&buf);
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(format!("zstd3+aes-gcm/{kind}"), |b| {
            b.iter(|| {
                let mut rec = codec.compress(black_box(&buf));
                cipher.seal(&nonce_for(64), id.as_bytes(), &mut rec);
                rec
            })
        });
    }
    drop(g);
    let mut g = c.benchmark_group("decode");
    for kind in KINDS {
        let buf = data(kind, 64 << 10);
        let id = codec.chunk_id(&buf);
        let mut rec = codec.compress(&buf);
        cipher.seal(&nonce_for(64), id.as_bytes(), &mut rec);
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(format!("verify/{kind}"), |b| {
            b.iter(|| {
                codec
                    .decode(
                        Some(&cipher),
                        &id,
                        64,
                        buf.len() as u32,
                        black_box(rec.clone()),
                    )
                    .unwrap()
            })
        });
    }
}

criterion_group!(benches, chunk, hash, encode_decode);
criterion_main!(benches);
