//! A pack's index object: its trailer, copied out of the pack into a small object of its own,
//! so that a host that does not know the pack learns its entries with one read of a few tens of
//! KiB instead of three ranged reads of the pack (its size, its footer, its trailer).
//!
//! ```text
//! offset  size  field
//! 0       8     magic "BSPKIX01"
//! 8       32    pack id
//! 40      8     pack length (u64)
//! 48      64    the pack's header, as in the pack
//! 112     4     T = sealed trailer length (u32)
//! 116     4     reserved, zero
//! 120     T     the pack's sealed trailer, as in the pack
//! 120+T   32    MAC (zero in a plain store)
//! ```
//!
//! The trailer is the pack's own, sealed as it is there (AES-256-GCM under the pack's subkey,
//! nonce `ff × 12`, the header as associated data), so the index object reveals nothing the
//! pack does not and no new nonce is used; the bytes are a function of the pack alone, so a
//! retried create writes the same bytes. The MAC (keyed BLAKE3 under the document MAC key,
//! kind [`INDEX_MAC_KIND`], name the pack id) binds it to its pack: an index object copied
//! under another pack's name is refused.

use blocksnap_manifest::{KeyId, PackId};

use crate::codec::{ChunkCodec, DocMacKey};
use crate::error::PackError;
use crate::format::*;
use crate::pack::{Entry, PackHeader, PackTail, parse_trailer};

/// The index object of pack `id` of `len` bytes, from its tail ([`crate::PackWriter::finish_with_tail`]),
/// MACed under `mac` (the pack key's [`ChunkCodec::doc_mac_key`]; none in a plain store).
pub fn encode_index_object(
    mac: Option<&DocMacKey>,
    id: &PackId,
    len: u64,
    tail: &PackTail,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_HEAD_LEN + tail.trailer.len() + INDEX_MAC_LEN);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&tail.header);
    out.extend_from_slice(&(tail.trailer.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&tail.trailer);
    let mac = mac.map_or([0; 32], |k| k.mac(INDEX_MAC_KIND, &id.to_string(), &out));
    out.extend_from_slice(&mac);
    out
}

/// Reads the index object of pack `id`, whose listing says it is `len` bytes long, from
/// untrusted bytes: every length is checked before it is used, the MAC (in an encrypted store)
/// and the trailer's seal are checked, and the entries must fill the pack's records exactly as
/// the pack's own trailer must. `codec_for` is as for [`crate::read_trailer`].
pub fn read_index_object<'c>(
    bytes: &[u8],
    id: &PackId,
    len: u64,
    codec_for: impl FnOnce(Option<KeyId>) -> Option<&'c ChunkCodec>,
) -> Result<(PackHeader, Vec<Entry>), PackError> {
    let bad = |m: String| PackError::BadTrailer(format!("index object: {m}"));
    if (bytes.len() as u64) < (INDEX_HEAD_LEN + INDEX_MAC_LEN) as u64
        || bytes.len() as u64 > MAX_INDEX_OBJECT_LEN
    {
        return Err(bad(format!(
            "{} bytes is outside what an index object can be",
            bytes.len()
        )));
    }
    if bytes[..8] != INDEX_MAGIC {
        return Err(bad("the magic is missing or of an unknown version".into()));
    }
    if bytes[8..40] != id.0 {
        return Err(bad("it names another pack".into()));
    }
    let said = u64::from_le_bytes(bytes[40..48].try_into().expect("8 bytes"));
    if said != len {
        return Err(bad(format!(
            "it says the pack is {said} bytes long, the store holds {len}"
        )));
    }
    let header_bytes: [u8; HEADER_LEN] = bytes[48..112].try_into().expect("64 bytes");
    let header = PackHeader::decode(&header_bytes)?;
    let tlen = u32::from_le_bytes(bytes[112..116].try_into().expect("4 bytes")) as usize;
    if bytes.len() - INDEX_HEAD_LEN - INDEX_MAC_LEN != tlen {
        return Err(bad(format!(
            "a trailer of {tlen} bytes does not fit an object of {} bytes",
            bytes.len()
        )));
    }
    let records_end = len
        .checked_sub((FOOTER_LEN + tlen) as u64)
        .filter(|&e| e >= HEADER_LEN as u64)
        .ok_or_else(|| bad(format!("a trailer of {tlen} bytes does not fit the pack")))?;
    let codec = codec_for(header.key_id).ok_or_else(|| {
        PackError::WrongKey(
            header
                .key_id
                .map_or_else(|| "none (a plain pack)".into(), |k| k.to_string()),
        )
    })?;
    if codec.key_id() != header.key_id {
        return Err(PackError::WrongKey(format!("{:?}", header.key_id)));
    }
    let body = &bytes[..bytes.len() - INDEX_MAC_LEN];
    if let Some(mac) = codec.document_mac(INDEX_MAC_KIND, &id.to_string(), body) {
        let given: [u8; 32] = bytes[body.len()..].try_into().expect("32 bytes");
        // Constant-time comparison.
        if blake3::Hash::from(mac) != blake3::Hash::from(given) {
            return Err(bad(
                "authentication failed (damaged, another pack's, or another key)".into(),
            ));
        }
    }
    let mut trailer = bytes[INDEX_HEAD_LEN..INDEX_HEAD_LEN + tlen].to_vec();
    if let Some(cipher) = codec.pack_cipher(&header.salt) {
        cipher
            .open(&TRAILER_NONCE, &header_bytes, &mut trailer)
            .map_err(|_| bad("the trailer's authentication failed".into()))?;
    }
    let entries = parse_trailer(&trailer, records_end)?;
    Ok((header, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataKey, PackWriter, read_trailer};

    fn pack(codec: &ChunkCodec) -> (Vec<u8>, PackId, Vec<Entry>, u64, PackTail) {
        let mut w = PackWriter::new(Vec::new(), codec, [7; 32]).unwrap();
        for i in 0..20u32 {
            let data = format!("chunk {i} ").repeat(100 + i as usize).into_bytes();
            w.append(
                codec.chunk_id(&data),
                data.len() as u32,
                codec.compress(&data),
            )
            .unwrap();
        }
        w.finish_with_tail().unwrap()
    }

    #[test]
    fn round_trips_and_agrees_with_the_trailer() {
        for codec in [
            ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([3; 32]), 3),
            ChunkCodec::plain(3),
        ] {
            let (bytes, id, entries, len, tail) = pack(&codec);
            let obj = encode_index_object(codec.doc_mac_key().as_ref(), &id, len, &tail);
            // Deterministic: a retried create writes the same bytes.
            assert_eq!(
                obj,
                encode_index_object(codec.doc_mac_key().as_ref(), &id, len, &tail)
            );
            let (h, read) = read_index_object(&obj, &id, len, |_| Some(&codec)).unwrap();
            assert_eq!(read, entries);
            let (h2, trailer) =
                read_trailer(std::io::Cursor::new(&bytes), |_| Some(&codec)).unwrap();
            assert_eq!((h, read), (h2, trailer));
        }
    }

    #[test]
    fn damage_another_pack_and_another_key_are_refused() {
        let codec = ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([3; 32]), 3);
        let (_, id, _, len, tail) = pack(&codec);
        let obj = encode_index_object(codec.doc_mac_key().as_ref(), &id, len, &tail);
        for i in (0..obj.len()).step_by(13) {
            let mut bad = obj.clone();
            bad[i] ^= 0x04;
            assert!(
                read_index_object(&bad, &id, len, |_| Some(&codec)).is_err(),
                "flip at {i}"
            );
        }
        let other = PackId([9; 32]);
        assert!(read_index_object(&obj, &other, len, |_| Some(&codec)).is_err());
        assert!(read_index_object(&obj, &id, len + 1, |_| Some(&codec)).is_err());
        let wrong = ChunkCodec::encrypted(KeyId(7), DataKey::from_bytes([4; 32]), 3);
        assert!(read_index_object(&obj, &id, len, |_| Some(&wrong)).is_err());
        assert!(matches!(
            read_index_object(&obj, &id, len, |_| None),
            Err(PackError::WrongKey(_))
        ));
        for cut in [0, 10, 119, 120, obj.len() - 1] {
            assert!(read_index_object(&obj[..cut], &id, len, |_| Some(&codec)).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), len in 0u64..100_000) {
            let plain = ChunkCodec::plain(3);
            let mut b = bytes;
            // Past the magic, the pack id and the length, so the rest is what gets parsed.
            if b.len() >= 48 {
                b[..8].copy_from_slice(&INDEX_MAGIC);
                b[8..40].fill(0);
                b[40..48].copy_from_slice(&len.to_le_bytes());
            }
            let _ = read_index_object(&b, &PackId([0; 32]), len, |_| Some(&plain));
        }
    }
}
