//! Decoding a record from arbitrary bytes: never panics, and never returns data that does not
//! hash to the id it was asked for.
#![no_main]

use blocksnap_manifest::{ChunkId, KeyId};
use blocksnap_pack::{ChunkCodec, DataKey, decompress};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let raw_len = u32::from_le_bytes(data[..4].try_into().unwrap()) % (1 << 20);
    let record = &data[4..];
    let _ = decompress(record, raw_len);
    let plain = ChunkCodec::plain(3);
    let id = ChunkId([7; 32]);
    if let Ok(out) = plain.decode(None, &id, 64, raw_len, record.to_vec()) {
        assert_eq!(plain.chunk_id(&out), id);
    }
    let enc = ChunkCodec::encrypted(KeyId(1), DataKey::from_bytes([1; 32]), 3);
    let cipher = enc.pack_cipher(&[0; 32]);
    let _ = enc.decode(cipher.as_ref(), &id, 64, raw_len, record.to_vec());
});
