//! Format constants of a pack. Do not change these without a new format version: every store
//! written so far depends on them. docs/FORMAT.md describes the layout byte by byte.

/// First 8 bytes of every pack: "BSPACK", then the format version 0x0001 (big-endian).
pub const PACK_MAGIC: [u8; 8] = *b"BSPACK\x00\x01";
/// Last 8 bytes of every pack.
pub const FOOTER_MAGIC: [u8; 8] = *b"BSPKEND1";
/// The pack format version this code writes and reads.
pub const PACK_VERSION: u16 = 1;
/// Header length: magic 8, version 2, cipher 1, reserved 5, key id 8, salt 32, reserved 8.
pub const HEADER_LEN: usize = 64;
/// Footer length: trailer length u32, reserved u32, magic 8.
pub const FOOTER_LEN: usize = 16;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// One trailer entry: chunk id 32, offset u64, stored length u32, raw length u32.
pub const ENTRY_LEN: usize = 48;
/// Trailer plaintext header: magic "BSTR" and entry count u32.
pub const TRAILER_HEAD_LEN: usize = 8;
/// Magic at the start of the trailer plaintext.
pub const TRAILER_MAGIC: [u8; 4] = *b"BSTR";
/// The largest chunk (raw bytes).
pub const MAX_CHUNK_LEN: u32 = 16 << 20;
/// The largest record on disk: codec byte, a chunk that did not compress, the tag.
pub const MAX_RECORD_LEN: u32 = MAX_CHUNK_LEN + 1 + TAG_LEN as u32;
/// The largest pack accepted.
pub const MAX_PACK_LEN: u64 = 4 << 30;
/// The most records one pack holds: a writer closes a pack that reaches it, and a reader
/// refuses a trailer that says more, so a trailer never needs more than
/// [`MAX_TRAILER_LEN`] bytes of memory (192 MiB), whatever a crafted footer says. A pack of the
/// largest configured size (1 GiB) reaches it only with records of under 256 bytes.
pub const MAX_PACK_ENTRIES: u64 = 1 << 22;
/// The longest sealed trailer: head, [`MAX_PACK_ENTRIES`] entries, tag.
pub const MAX_TRAILER_LEN: u64 =
    TRAILER_HEAD_LEN as u64 + MAX_PACK_ENTRIES * ENTRY_LEN as u64 + TAG_LEN as u64;
/// Cipher byte: no encryption.
pub const CIPHER_NONE: u8 = 0;
/// Cipher byte: AES-256-GCM with a per-pack subkey.
pub const CIPHER_AES256GCM: u8 = 1;
/// Record codec byte: payload stored raw.
pub const CODEC_RAW: u8 = 0;
/// Record codec byte: payload is a zstd frame.
pub const CODEC_ZSTD: u8 = 1;
/// BLAKE3 key-derivation context for the chunk-id key.
pub const CONTEXT_CHUNK_ID: &str = "blocksnap 2026-11-23 chunk id key v1";
/// BLAKE3 key-derivation context for a pack's subkey (input: data key, then the pack's salt).
pub const CONTEXT_PACK_KEY: &str = "blocksnap 2026-11-23 pack key v1";
/// BLAKE3 key-derivation context for the key that authenticates a store's documents (snapshot,
/// image, volume, policy and key documents) under a data key.
pub const CONTEXT_DOC_MAC: &str = "blocksnap 2026-12-02 document mac key v1";
/// BLAKE3 key-derivation context for a data key's check value: what a client pins to know it
/// unwrapped the same key as before, without keeping the key.
pub const CONTEXT_KEY_CHECK: &str = "blocksnap 2026-12-02 key check v1";
/// BLAKE3 key-derivation context for FastCDC's gear seed (the first 8 bytes, little-endian).
pub const CONTEXT_CHUNKER_SEED: &str = "blocksnap 2026-12-02 chunker gear seed v1";
/// The trailer's nonce; record nonces are their byte offsets, which never reach it.
pub const TRAILER_NONCE: [u8; 12] = [0xff; 12];

/// First 8 bytes of a pack's index object (`packs/XX/PACK-ID.idx`), version 1.
pub const INDEX_MAGIC: [u8; 8] = *b"BSPKIX01";
/// An index object's head: magic 8, pack id 32, pack length u64, the pack's header 64, the
/// sealed trailer's length u32, reserved u32.
pub const INDEX_HEAD_LEN: usize = 8 + 32 + 8 + HEADER_LEN + 4 + 4;
/// The MAC that ends an index object (zero in a plain store).
pub const INDEX_MAC_LEN: usize = 32;
/// The longest index object: head, the longest sealed trailer, MAC.
pub const MAX_INDEX_OBJECT_LEN: u64 =
    INDEX_HEAD_LEN as u64 + MAX_TRAILER_LEN + INDEX_MAC_LEN as u64;
/// The kind an index object's MAC names (see `ChunkCodec::document_mac`): no document of
/// another kind, and no index object of another pack, can stand in for one.
pub const INDEX_MAC_KIND: &str = "pack-index";

const _: () = assert!(HEADER_LEN == 8 + 2 + 1 + 5 + 8 + 32 + 8);
const _: () = assert!(FOOTER_LEN == 4 + 4 + 8);
const _: () = assert!(ENTRY_LEN == 32 + 8 + 4 + 4);
