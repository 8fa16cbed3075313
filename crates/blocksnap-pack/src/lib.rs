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
mod index_object;
mod pack;

pub use codec::{AuthFailed, ChunkCodec, DataKey, DocMacKey, PackCipher, decompress, nonce_for};
pub use error::PackError;
pub use index_object::{encode_index_object, read_index_object};
pub use pack::{
    Entry, PackHeader, PackLayout, PackTail, PackWriter, check_record_place, parse_trailer,
    read_layout, read_trailer,
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

    /// A file of `len` bytes, all zero but the bytes `patches` give, that counts what is read
    /// from it: a crafted pack of gigabytes costs no memory in a test.
    struct Crafted {
        len: u64,
        pos: u64,
        patches: Vec<(u64, Vec<u8>)>,
        read: u64,
    }

    impl std::io::Read for Crafted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
            buf[..n].fill(0);
            for (at, bytes) in &self.patches {
                for (i, b) in bytes.iter().enumerate() {
                    let p = at + i as u64;
                    if p >= self.pos && p < self.pos + n as u64 {
                        buf[(p - self.pos) as usize] = *b;
                    }
                }
            }
            self.pos += n as u64;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl std::io::Seek for Crafted {
        fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
            self.pos = match to {
                std::io::SeekFrom::Start(p) => p,
                std::io::SeekFrom::End(d) => self.len.checked_add_signed(d).unwrap(),
                std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d).unwrap(),
            };
            Ok(self.pos)
        }
    }

    /// A plain pack of `len` bytes whose footer says its trailer is `tlen` bytes long.
    fn crafted(len: u64, tlen: u32) -> Crafted {
        let header = PackHeader {
            key_id: None,
            salt: [0; 32],
        }
        .encode()
        .to_vec();
        let mut footer = tlen.to_le_bytes().to_vec();
        footer.extend_from_slice(&[0; 4]);
        footer.extend_from_slice(&format::FOOTER_MAGIC);
        Crafted {
            len,
            pos: 0,
            patches: vec![(0, header), (len - 16, footer)],
            read: 0,
        }
    }

    #[test]
    fn crafted_trailer_lengths_are_refused_before_allocating() {
        let plain = ChunkCodec::plain(3);
        // A 3 GiB pack (no memory: the file is made up as it is read) whose footer gives a
        // trailer of almost all of it: more entries than a pack holds, refused having read only
        // the header and the footer.
        let tlen = (3u64 << 30) - 100;
        let tlen = tlen - (tlen - format::TRAILER_HEAD_LEN as u64) % format::ENTRY_LEN as u64;
        let mut big = crafted(3 << 30, tlen as u32);
        let e = read_trailer(&mut big, |_| Some(&plain)).unwrap_err();
        assert!(
            matches!(&e, PackError::BadTrailer(m) if m.contains("more than a pack holds")),
            "{e}"
        );
        assert!(big.read <= 1024, "read {} bytes", big.read);
        // Footers that lie about the trailer in other ways.
        for (len, tlen) in [
            (4096, u32::MAX),
            (4096, 4096),
            (4096, 0),
            (4096, 7),
            (4096, 8 + 47),
        ] {
            let mut f = crafted(len, tlen);
            assert!(
                matches!(
                    read_trailer(&mut f, |_| Some(&plain)),
                    Err(PackError::BadTrailer(_))
                ),
                "trailer length {tlen} of {len}"
            );
            assert!(f.read <= 1024);
        }
        // A file longer than any pack is not read at all.
        let mut huge = crafted(format::MAX_PACK_LEN + 1, 8);
        assert!(matches!(
            read_trailer(&mut huge, |_| Some(&plain)),
            Err(PackError::NotAPack(_))
        ));
        assert_eq!(huge.read, 0);
    }

    #[test]
    fn a_trailer_counting_more_entries_than_it_holds_is_refused() {
        for count in [u32::MAX, (format::MAX_PACK_ENTRIES + 1) as u32, 2] {
            let mut t = format::TRAILER_MAGIC.to_vec();
            t.extend_from_slice(&count.to_le_bytes());
            t.extend_from_slice(&[0; 48]);
            assert!(matches!(
                parse_trailer(&t, 1 << 20),
                Err(PackError::BadTrailer(_))
            ));
        }
    }

    #[test]
    fn record_places_from_outside_the_trailer_are_checked() {
        let id = blocksnap_manifest::ChunkId([1; 32]);
        let len = 10_000;
        check_record_place(&id, 64, 100, 200, len).unwrap();
        for (offset, stored, raw) in [
            (64, 0, 1),
            (64, u32::MAX, 1),
            (64, format::MAX_RECORD_LEN + 1, 1),
            (64, 100, 0),
            (64, 100, u32::MAX),
            (0, 100, 1),
            (63, 100, 1),
            (9_990, 100, 1),
            (u64::MAX - 10, 100, 1),
        ] {
            let e = check_record_place(&id, offset, stored, raw, len).unwrap_err();
            assert!(
                matches!(e, PackError::BadRecord { .. }),
                "{offset} {stored} {raw}"
            );
        }
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
