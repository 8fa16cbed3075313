//! The chunk codec: id, compression, encryption of one chunk.

use std::cell::RefCell;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::{Aes256Gcm, KeyInit};
use blocksnap_manifest::{ChunkId, KeyId};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::PackError;
use crate::format::{
    CODEC_RAW, CODEC_ZSTD, CONTEXT_CHUNK_ID, CONTEXT_CHUNKER_SEED, CONTEXT_DOC_MAC,
    CONTEXT_KEY_CHECK, CONTEXT_PACK_KEY, MAX_CHUNK_LEN, TAG_LEN,
};

/// A 256-bit data key. Zeroed when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// Wraps key bytes (the caller zeroes its copy).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    /// Copies a key out of `bytes` (an unwrapped grant, held in a zeroizing buffer by the
    /// caller) straight into its place, with no other copy on the way; none unless it is 32
    /// bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut key = DataKey([0u8; 32]);
        if bytes.len() != key.0.len() {
            return None;
        }
        key.0.copy_from_slice(bytes);
        Some(key)
    }
    /// The key's bytes, for wrapping to a grantee.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Encodes and decodes chunks for one key (or for a plain store).
pub struct ChunkCodec {
    key: Option<(KeyId, DataKey, IdHasher)>,
    level: i32,
}

/// The key that MACs documents and index objects under one data key (zeroed when dropped).
pub struct DocMacKey(Zeroizing<[u8; 32]>);

impl DocMacKey {
    /// Keyed BLAKE3 over kind, name and body, each length-prefixed.
    pub fn mac(&self, kind: &str, name: &str, body: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for part in [kind.as_bytes(), name.as_bytes(), body] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let mac = *h.finalize().as_bytes();
        h.zeroize(); // the keyed hasher holds the MAC key
        mac
    }
}

impl std::fmt::Debug for DocMacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DocMacKey(..)")
    }
}

/// The keyed BLAKE3 hasher of chunk ids, set up once with the id key. Each id is hashed by a
/// clone of it that is zeroed after use, so no copy of the id key outlives its hash; the
/// template is zeroed when dropped.
struct IdHasher(blake3::Hasher);

impl IdHasher {
    fn new(key: &DataKey) -> Self {
        let id_key = derive_key(CONTEXT_CHUNK_ID, &[key.expose()]);
        IdHasher(blake3::Hasher::new_keyed(&id_key))
    }

    fn hash(&self, data: &[u8]) -> blake3::Hash {
        let mut h = self.0.clone();
        h.update(data);
        let out = h.finalize();
        h.zeroize();
        out
    }
}

impl Drop for IdHasher {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// BLAKE3's key derivation of `context` over the concatenated `parts`, with the hasher (which
/// holds the key material it was fed) zeroed before it is dropped.
fn derive_key(context: &str, parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    for p in parts {
        hasher.update(p);
    }
    let mut hash = hasher.finalize();
    hasher.zeroize();
    let out = Zeroizing::new(*hash.as_bytes());
    hash.zeroize();
    out
}

impl std::fmt::Debug for ChunkCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCodec")
            .field("key", &self.key_id())
            .field("level", &self.level)
            .finish()
    }
}

/// A record's plaintext holding `data` uncompressed.
fn raw_record(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + data.len() + TAG_LEN);
    out.push(CODEC_RAW);
    out.extend_from_slice(data);
    out
}

thread_local! {
    /// This thread's zstd context (for the level it was made for) and output scratch buffer.
    static COMPRESSOR: RefCell<(Option<i32>, Option<zstd::bulk::Compressor<'static>>, Vec<u8>)> =
        const { RefCell::new((None, None, Vec::new())) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

impl ChunkCodec {
    /// A codec for a plain store: ids are plain BLAKE3, records are not encrypted.
    pub fn plain(level: i32) -> Self {
        ChunkCodec { key: None, level }
    }

    /// A codec for data key `key`: ids are BLAKE3 keyed by a subkey of it, records are sealed
    /// with AES-256-GCM under a per-pack subkey.
    pub fn encrypted(key_id: KeyId, key: DataKey, level: i32) -> Self {
        let ids = IdHasher::new(&key);
        ChunkCodec {
            key: Some((key_id, key, ids)),
            level,
        }
    }

    /// The key's id, none for a plain store.
    pub fn key_id(&self) -> Option<KeyId> {
        self.key.as_ref().map(|k| k.0)
    }

    /// The zstd level.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// The chunk's id.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        let hash = match &self.key {
            Some((_, _, ids)) => ids.hash(data),
            None => blake3::hash(data),
        };
        ChunkId(*hash.as_bytes())
    }

    /// Compresses a chunk into a record's plaintext: a codec byte, then the zstd frame, or the
    /// raw bytes when compression does not shrink them. Room for the tag is reserved.
    pub fn compress(&self, data: &[u8]) -> Vec<u8> {
        // Compress into this thread's scratch buffer, then copy out exactly what was written:
        // the record holds no slack (it waits in queues), and no buffer is zeroed per chunk.
        let bound = zstd::zstd_safe::compress_bound(data.len());
        COMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (level, compressor, scratch) = &mut *cell;
            if *level != Some(self.level) {
                *compressor = zstd::bulk::Compressor::new(self.level).ok();
                *level = Some(self.level);
            }
            if scratch.len() < bound {
                scratch.resize(bound, 0);
            }
            let written = compressor
                .as_mut()
                .and_then(|c| c.compress_to_buffer(data, &mut scratch[..bound]).ok());
            match written {
                Some(n) if n < data.len() => {
                    let mut out = Vec::with_capacity(1 + n + TAG_LEN);
                    out.push(CODEC_ZSTD);
                    out.extend_from_slice(&scratch[..n]);
                    out
                }
                _ => raw_record(data),
            }
        })
    }

    /// The MAC of a document under this key, none for a plain store: keyed BLAKE3 (under a
    /// subkey for documents) over the document's kind, its name in the store and its canonical
    /// bytes, each length-prefixed, so that no document can stand in for one of another kind or
    /// name.
    pub fn document_mac(&self, kind: &str, name: &str, body: &[u8]) -> Option<[u8; 32]> {
        Some(self.doc_mac_key()?.mac(kind, name, body))
    }

    /// The key of [`ChunkCodec::document_mac`], for a thread that MACs without the codec (the
    /// pack closer making index objects); none for a plain store.
    pub fn doc_mac_key(&self) -> Option<DocMacKey> {
        let (_, key, _) = self.key.as_ref()?;
        Some(DocMacKey(derive_key(CONTEXT_DOC_MAC, &[key.expose()])))
    }

    /// FastCDC's gear seed for this key (never 0), none for a plain store.
    pub fn chunker_seed(&self) -> Option<u64> {
        let (_, key, _) = self.key.as_ref()?;
        let bytes = derive_key(CONTEXT_CHUNKER_SEED, &[key.expose()]);
        let seed = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        Some(seed.max(1))
    }

    /// The key's check value (16 bytes of a BLAKE3 key derivation, in hex), none for a plain
    /// store: equal check values mean the same key; it reveals nothing of the key.
    pub fn key_check(&self) -> Option<String> {
        let (_, key, _) = self.key.as_ref()?;
        let check = derive_key(CONTEXT_KEY_CHECK, &[key.expose()]);
        Some(hex_encode(&check[..16]))
    }

    /// The cipher of a pack with `salt`; none for a plain store.
    pub fn pack_cipher(&self, salt: &[u8; 32]) -> Option<PackCipher> {
        self.key.as_ref().map(|(_, key, _)| {
            let subkey = derive_key(CONTEXT_PACK_KEY, &[key.expose(), salt]);
            PackCipher(Aes256Gcm::new(GenericArray::from_slice(&subkey[..])))
        })
    }

    /// Decodes a record read from a pack: opens it, decompresses it and checks the id.
    pub fn decode(
        &self,
        cipher: Option<&PackCipher>,
        id: &ChunkId,
        offset: u64,
        raw_len: u32,
        mut record: Vec<u8>,
    ) -> Result<Vec<u8>, PackError> {
        if let Some(cipher) = cipher {
            cipher
                .open(&nonce_for(offset), id.as_bytes(), &mut record)
                .map_err(|_| PackError::Auth { id: *id, offset })?;
        }
        let data = decompress(&record, raw_len).map_err(|detail| PackError::BadRecord {
            id: *id,
            offset,
            detail,
        })?;
        if self.chunk_id(&data) != *id {
            return Err(PackError::IdMismatch { id: *id, offset });
        }
        Ok(data)
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The nonce of the record at `offset`: offsets strictly increase inside a pack, and each pack
/// has its own subkey, so no (key, nonce) pair ever repeats.
pub fn nonce_for(offset: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&offset.to_le_bytes());
    n
}

/// Decompresses a record's plaintext; `raw_len` bounds the output.
pub fn decompress(record: &[u8], raw_len: u32) -> Result<Vec<u8>, String> {
    if raw_len == 0 || raw_len > MAX_CHUNK_LEN {
        return Err(format!("raw length {raw_len} is out of range"));
    }
    let (&codec, payload) = record.split_first().ok_or("empty record")?;
    let data = match codec {
        CODEC_RAW => payload.to_vec(),
        CODEC_ZSTD => DECOMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
            }
            let d = cell.as_mut().expect("set above");
            d.decompress(payload, raw_len as usize)
                .map_err(|e| format!("zstd: {e}"))
        })?,
        other => return Err(format!("unknown codec byte {other}")),
    };
    if data.len() != raw_len as usize {
        return Err(format!("decoded {} bytes, expected {raw_len}", data.len()));
    }
    Ok(data)
}

/// AES-256-GCM under one pack's subkey.
pub struct PackCipher(Aes256Gcm);

impl PackCipher {
    /// Encrypts `buf` in place and appends the tag.
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut Vec<u8>) {
        self.0
            .encrypt_in_place(GenericArray::from_slice(nonce), aad, buf)
            .expect("AES-GCM encryption of a buffer under 64 GiB cannot fail");
    }

    /// Checks the tag at the end of `buf` and decrypts in place, removing the tag.
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), AuthFailed> {
        if buf.len() < TAG_LEN {
            return Err(AuthFailed);
        }
        self.0
            .decrypt_in_place(GenericArray::from_slice(nonce), aad, buf)
            .map_err(|_| AuthFailed)
    }
}

/// A sealed buffer failed authentication: it was changed, or sealed under another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailed;

#[cfg(test)]
mod tests {
    use super::*;

    // The zeroize features are on: these bounds hold only with them.
    const _: fn() = || {
        fn zeroed_on_drop<T: ZeroizeOnDrop>() {}
        fn zeroizable<T: Zeroize>() {}
        zeroed_on_drop::<aes::Aes256>();
        zeroizable::<blake3::Hasher>();
        zeroizable::<blake3::Hash>();
        zeroed_on_drop::<DataKey>();
    };

    #[test]
    fn key_derivation_is_blake3s_and_ids_are_keyed_hashes() {
        // The zeroizing derivation and id hasher give exactly what BLAKE3's one-shot functions
        // give: stores written before them read the same.
        let key = DataKey::from_bytes([7; 32]);
        let id_key = blake3::derive_key(CONTEXT_CHUNK_ID, key.expose());
        assert_eq!(*derive_key(CONTEXT_CHUNK_ID, &[key.expose()]), id_key);
        let mut salted = key.expose().to_vec();
        salted.extend_from_slice(&[9; 32]);
        assert_eq!(
            *derive_key(CONTEXT_PACK_KEY, &[key.expose(), &[9; 32]]),
            blake3::derive_key(CONTEXT_PACK_KEY, &salted)
        );
        let codec = ChunkCodec::encrypted(KeyId(1), key, 3);
        for data in [&b""[..], b"x", &[5u8; 100_000]] {
            assert_eq!(
                codec.chunk_id(data).0,
                *blake3::keyed_hash(&id_key, data).as_bytes()
            );
        }
    }

    #[test]
    fn data_keys_from_slices_are_32_bytes() {
        assert_eq!(DataKey::from_slice(&[3; 32]).unwrap().expose(), &[3; 32]);
        assert!(DataKey::from_slice(&[3; 31]).is_none());
        assert!(DataKey::from_slice(&[3; 33]).is_none());
        assert_eq!(format!("{:?}", DataKey::from_bytes([1; 32])), "DataKey(..)");
    }
}
