//! blocksnap's pack format.
//!
//! A pack is an immutable file holding many chunks. Each chunk is a record: a codec byte and
//! its zstd-compressed (or raw) bytes, sealed with AES-256-GCM in encrypted stores. After the
//! records comes a sealed trailer listing every chunk's id, offset and lengths, so the dedup
//! index can always be rebuilt from the packs alone. This crate knows the format and nothing
//! else: it never chooses file names, never does I/O except through the readers and writers it
//! is given.
//!
//! No nonce is ever reused: each pack has a random 32-byte salt, its AES key is derived from the
//! data key and the salt, and a record's nonce is its byte offset in the pack. The chunk id is
//! the associated data, so records cannot be swapped undetected; the trailer's associated data
//! is the pack header.
//!
//! ```
//! use blocksnap_pack::{ChunkCodec, DataKey, PackWriter, read_trailer};
//! use blocksnap_manifest::KeyId;
//! let codec = ChunkCodec::encrypted(KeyId(1), DataKey::from_bytes([9; 32]), 3);
//! let data = b"hello, disk".repeat(100);
//! let id = codec.chunk_id(&data);
//! let mut w = PackWriter::new(Vec::new(), &codec, [1; 32]).unwrap();
//! w.append(id, data.len() as u32, codec.compress(&data)).unwrap();
//! let (bytes, _pack_id, entries, _len) = w.finish().unwrap();
//! let (header, read) = read_trailer(std::io::Cursor::new(&bytes), |_| Some(&codec)).unwrap();
//! assert_eq!(read, entries);
//! let e = read[0];
//! let record = bytes[e.offset as usize..][..e.stored_len as usize].to_vec();
//! let cipher = codec.pack_cipher(&header.salt);
//! assert_eq!(codec.decode(cipher.as_ref(), &id, e.offset, e.raw_len, record).unwrap(), data);
//! ```

mod codec;
mod error;
pub mod format;
mod pack;

pub use codec::{AuthFailed, ChunkCodec, DataKey, PackCipher, decompress, nonce_for};
pub use error::PackError;
pub use pack::{
    Entry, PackHeader, PackLayout, PackWriter, parse_trailer, read_layout, read_trailer,
};

#[cfg(test)]
mod tests {
    use super::*;
    use blocksnap_manifest::KeyId;
    use std::io::Cursor;

    fn pack_of(codec: &ChunkCodec, chunks: &[Vec<u8>]) -> (Vec<u8>, Vec<Entry>) {
        let mut w = PackWriter::new(Vec::new(), codec, [5; 32]).unwrap();
        for c in chunks {
            w.append(codec.chunk_id(c), c.len() as u32, codec.compress(c))
                .unwrap();
        }
        let (bytes, id, entries, len) = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, len);
        assert_eq!(id.0, *blake3::hash(&bytes).as_bytes());
        (bytes, entries)
    }

    fn decode_all(codec: &ChunkCodec, bytes: &[u8]) -> Result<Vec<Vec<u8>>, PackError> {
        let (header, entries) = read_trailer(Cursor::new(bytes), |_| Some(codec))?;
        let cipher = codec.pack_cipher(&header.salt);
        entries
            .iter()
            .map(|e| {
                let rec = bytes[e.offset as usize..][..e.stored_len as usize].to_vec();
                codec.decode(cipher.as_ref(), &e.id, e.offset, e.raw_len, rec)
            })
            .collect()
    }

    fn sample() -> Vec<Vec<u8>> {
        vec![
            b"compressible ".repeat(1000),
            (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
            vec![1],
        ]
    }

    #[test]
    fn round_trip_encrypted_and_plain() {
        for codec in [
            ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([3; 32]), 3),
            ChunkCodec::plain(3),
        ] {
            let (bytes, _) = pack_of(&codec, &sample());
            assert_eq!(decode_all(&codec, &bytes).unwrap(), sample());
        }
    }

    #[test]
    fn no_plaintext_in_encrypted_pack() {
        let codec = ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([3; 32]), 3);
        let secret = b"TOP-SECRET-MARKER".repeat(3);
        let (bytes, _) = pack_of(&codec, std::slice::from_ref(&secret));
        assert!(!bytes.windows(17).any(|w| w == b"TOP-SECRET-MARKER"));
        let plain = ChunkCodec::plain(3);
        let (bytes, _) = pack_of(&plain, &[secret]);
        assert!(bytes.windows(17).any(|w| w == b"TOP-SECRET-MARKER"));
    }

    #[test]
    fn keyed_ids_differ_by_key() {
        let a = ChunkCodec::encrypted(KeyId(1), DataKey::from_bytes([1; 32]), 3);
        let b = ChunkCodec::encrypted(KeyId(2), DataKey::from_bytes([2; 32]), 3);
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_eq!(
            ChunkCodec::plain(3).chunk_id(b"x").0,
            *blake3::hash(b"x").as_bytes()
        );
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let codec = ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([3; 32]), 3);
        let (bytes, _) = pack_of(&codec, &sample());
        for i in (0..bytes.len()).step_by(97) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                decode_all(&codec, &bad).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn plain_packs_detect_damage_by_id() {
        let codec = ChunkCodec::plain(3);
        let (bytes, entries) = pack_of(&codec, &sample());
        let mut bad = bytes.clone();
        bad[entries[1].offset as usize + 10] ^= 1;
        assert!(decode_all(&codec, &bad).is_err());
    }

    #[test]
    fn truncated_and_wrong_key_packs_are_errors() {
        let codec = ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([3; 32]), 3);
        let (bytes, _) = pack_of(&codec, &sample());
        for cut in [0, 10, 64, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_trailer(Cursor::new(&bytes[..cut]), |_| Some(&codec)).is_err());
        }
        let other = ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([4; 32]), 3);
        assert!(matches!(
            read_trailer(Cursor::new(&bytes), |_| Some(&other)),
            Err(PackError::BadTrailer(_))
        ));
        assert!(matches!(
            read_trailer(Cursor::new(&bytes), |_| None),
            Err(PackError::WrongKey(_))
        ));
    }

    #[test]
    fn layout_is_read_and_checked_without_a_key() {
        for codec in [
            ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([3; 32]), 3),
            ChunkCodec::plain(3),
        ] {
            let (bytes, entries) = pack_of(&codec, &sample());
            let layout = read_layout(Cursor::new(&bytes)).unwrap();
            assert_eq!(layout.entries, entries.len() as u64);
            assert_eq!(layout.len, bytes.len() as u64);
            let last = entries.last().unwrap();
            assert_eq!(layout.records_end, last.offset + u64::from(last.stored_len));
            for cut in [bytes.len() - 1, bytes.len() / 2, 100] {
                assert!(
                    read_layout(Cursor::new(&bytes[..cut])).is_err(),
                    "cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[0; 48]);
            assert!(read_layout(Cursor::new(&longer)).is_err());
        }
    }

    #[test]
    fn golden_header_bytes() {
        let h = PackHeader {
            key_id: Some(KeyId(0x0102030405060708)),
            salt: [0xaa; 32],
        }
        .encode();
        assert_eq!(&h[..16], b"BSPACK\x00\x01\x01\x00\x01\x00\x00\x00\x00\x00");
        assert_eq!(&h[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(
            PackHeader::decode(&h).unwrap().key_id,
            Some(KeyId(0x0102030405060708))
        );
    }

    proptest::proptest! {
        #[test]
        fn trailer_parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), end in 0u64..10_000) {
            let _ = parse_trailer(&bytes, end);
        }

        #[test]
        fn chunks_round_trip(chunks in proptest::collection::vec(proptest::collection::vec(0u8..4, 1..3000), 1..8)) {
            let codec = ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([3; 32]), 1);
            let (bytes, _) = pack_of(&codec, &chunks);
            proptest::prop_assert_eq!(decode_all(&codec, &bytes).unwrap(), chunks);
        }
    }
}
