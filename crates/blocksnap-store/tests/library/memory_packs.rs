//! The pack writer over the memory backend: packs are named by the hash of their bytes and hold
//! every new chunk exactly once, a chunk the store has is never stored again, packs close at the
//! configured size, dedup does not trust an index entry whose pack is gone, and an encrypted
//! store's packs hold none of the data in the clear.

use std::collections::HashMap;

use crate::support::*;
use blocksnap_backend::Backend;
use blocksnap_manifest::ChunkId;
use blocksnap_store::{ChunkerKind, InitOptions};

const BLOCK: usize = 4096;

/// 64 distinct random blocks, then 16 of them four times over, then 16 zero blocks.
fn repetitive_image() -> Vec<u8> {
    let distinct: Vec<Vec<u8>> = (0..64).map(|i| random_bytes(BLOCK, 100 + i)).collect();
    let mut img: Vec<u8> = distinct.concat();
    for _ in 0..4 {
        img.extend(distinct[..16].concat());
    }
    img.extend(vec![0u8; 16 * BLOCK]);
    img
}

#[test]
fn packs_are_named_by_their_hash_and_hold_each_new_chunk_once() {
    let m = Mem::with(small_chunks(ChunkerKind::Fixed));
    let img = repetitive_image();
    let r = m.snapshot("disk.img", &img, "disk");
    assert_eq!(r.chunks, 128, "{r:?}");
    assert_eq!(r.chunks_new, 64, "{r:?}");
    assert_eq!(r.bytes_new, 64 * BLOCK as u64);
    assert_eq!(r.bytes_hole, 16 * BLOCK as u64);
    assert!(r.packs >= 1);

    let objects = m.pack_objects();
    assert_eq!(objects.len() as u64, r.packs);
    for (key, bytes) in &objects {
        let hash = blake3::hash(bytes).to_hex().to_string();
        assert_eq!(
            key,
            &format!("packs/{}/{hash}", &hash[..2]),
            "named by content"
        );
    }
    let listed: Vec<String> = m
        .store
        .list_packs()
        .unwrap()
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    let mut keys: Vec<String> = objects
        .iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap().to_string())
        .collect();
    keys.sort();
    assert_eq!(listed, keys);

    // Every data chunk of the image is in exactly one pack's trailer, and nothing else is but
    // the snapshot's extent list.
    let codec = m.store.codec(&m.access, m.default_key()).unwrap();
    let mut held: HashMap<ChunkId, usize> = HashMap::new();
    for (_, entries) in m.trailers() {
        for e in entries {
            *held.entry(e.id).or_default() += 1;
        }
    }
    let doc = m.store.resolve_snapshot(&r.id.to_string()).unwrap();
    let data_ids: Vec<ChunkId> = img[..64 * BLOCK]
        .chunks(BLOCK)
        .map(|b| codec.chunk_id(b))
        .collect();
    for id in &data_ids {
        assert_eq!(held.get(id), Some(&1), "chunk {id} stored once");
    }
    assert_eq!(
        held.len(),
        data_ids.len() + doc.extents.chunks.len(),
        "only the image's chunks and its extent list"
    );
    assert!(held.values().all(|&n| n == 1));
    // The extent list names the chunks in order: the repeated blocks by the same ids.
    let order = m.data_chunks(&r.id.to_string());
    assert_eq!(order.len(), 128);
    assert_eq!(&order[..64], &data_ids[..]);
    assert_eq!(&order[64..80], &data_ids[..16]);
    assert_eq!(&order[112..128], &data_ids[..16]);
    assert_eq!(m.restored(&r.id.to_string()), img);
}

#[test]
fn a_chunk_the_store_has_is_never_stored_again() {
    let m = Mem::with(small_chunks(ChunkerKind::Fixed));
    let img = repetitive_image();
    let first = m.snapshot("disk.img", &img, "disk");
    let before = m.pack_objects();

    // The same data again, from a store opened anew (the index is the cache on disk).
    let m2 = Mem {
        store: m.reopen(),
        dir: tempfile::tempdir().unwrap(),
        backend: m.backend.clone(),
        via: m.via.clone(),
        access: m.access.clone(),
    };
    let again = m2.snapshot("disk.img", &img, "disk");
    assert_eq!(again.chunks, 128);
    assert_eq!(again.chunks_new, 0, "{again:?}");
    assert_eq!(again.packs, 0, "{again:?}");
    assert_eq!(m.pack_objects(), before, "no pack written or changed");

    // One block changed: one new chunk, in one new pack with the new extent list.
    let mut edited = img.clone();
    edited[5 * BLOCK..6 * BLOCK].copy_from_slice(&random_bytes(BLOCK, 999));
    let third = m.snapshot("disk.img", &edited, "disk");
    assert_eq!(third.chunks_new, 1, "{third:?}");
    assert_eq!(third.bytes_new, BLOCK as u64);
    assert_eq!(third.packs, 1);
    assert_eq!(m.pack_objects().len(), before.len() + 1);
    assert_eq!(third.parent, Some(again.id));
    assert_eq!(m.restored(&first.id.to_string()), img);
    assert_eq!(m.restored(&third.id.to_string()), edited);
}

#[test]
fn packs_close_at_the_configured_size() {
    let mut m = Mem::new();
    m.set_pack_size(1 << 20);
    let img = random_bytes(5 << 20, 7);
    let r = m.snapshot("big.img", &img, "big");
    let trailers = m.trailers();
    assert_eq!(trailers.len() as u64, r.packs);
    assert!(r.packs >= 5, "5 MiB of random data in 1 MiB packs: {r:?}");
    let mut full = 0;
    for (id, entries) in &trailers {
        let records_end = entries
            .iter()
            .map(|e| e.offset + u64::from(e.stored_len))
            .max()
            .unwrap();
        assert!(records_end <= 1 << 20, "pack {id} is over its size");
        if records_end > (1 << 20) - (64 << 10) {
            full += 1;
        }
    }
    assert!(full >= trailers.len() - 1, "only the last pack is short");
    assert_eq!(m.restored(&r.id.to_string()), img);
}

#[test]
fn dedup_does_not_trust_an_index_entry_whose_pack_is_gone() {
    let m = Mem::with(small_chunks(ChunkerKind::Fixed));
    let img = repetitive_image();
    let first = m.snapshot("disk.img", &img, "disk");
    // The packs vanish behind the index's back (deleted by hand, or pruned by another host).
    for (key, _) in m.pack_objects() {
        m.backend.delete(&key).unwrap();
    }
    let second = m.snapshot("disk.img", &img, "disk");
    assert_eq!(second.chunks_new, 64, "stored again: {second:?}");
    assert!(second.packs >= 1);
    assert_eq!(m.restored(&second.id.to_string()), img);
    // The first snapshot's chunks are back too (same ids, same key): it restores again.
    assert_eq!(m.restored(&first.id.to_string()), img);
}

#[test]
fn encrypted_packs_hold_no_data_in_the_clear() {
    let secret = random_bytes(256 << 10, 42);
    let windows = |m: &Mem| {
        let packs: Vec<u8> = m.pack_objects().into_iter().flat_map(|(_, b)| b).collect();
        secret
            .chunks(4096)
            .filter(|w| packs.windows(64).any(|p| p == &w[..64]))
            .count()
    };
    let enc = Mem::new();
    enc.snapshot("s.img", &secret, "s");
    assert_eq!(windows(&enc), 0, "an encrypted pack shows no plaintext");

    // The same check finds the data in a plain store's packs: it can see plaintext.
    let plain = Mem::with(InitOptions {
        encryption: false,
        ..small_chunks(ChunkerKind::Cdc)
    });
    let r = plain.snapshot("s.img", &secret, "s");
    assert!(
        windows(&plain) > 32,
        "random data is stored raw in a plain store"
    );
    assert_eq!(plain.restored(&r.id.to_string()), secret);
}
