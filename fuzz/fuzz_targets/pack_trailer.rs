//! Reading a pack's header and trailer from arbitrary bytes, plain and encrypted: never panics.
#![no_main]

use blocksnap_manifest::KeyId;
use blocksnap_pack::{ChunkCodec, DataKey, PackHeader, parse_trailer, read_trailer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let plain = ChunkCodec::plain(3);
    let enc = ChunkCodec::encrypted(KeyId(1), DataKey::from_bytes([1; 32]), 3);
    let _ = PackHeader::decode(data);
    let _ = read_trailer(std::io::Cursor::new(data), |k| {
        Some(if k.is_some() { &enc } else { &plain })
    });
    let _ = parse_trailer(data, data.len() as u64 * 3);
});
