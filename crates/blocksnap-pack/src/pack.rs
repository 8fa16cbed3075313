//! Pack writer and reader.

use std::io::{Read, Seek, SeekFrom, Write};

use blocksnap_manifest::{ChunkId, KeyId, PackId};

use crate::codec::{ChunkCodec, PackCipher, nonce_for};
use crate::error::PackError;
use crate::format::*;

/// One chunk's place in a pack, as listed in the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The chunk.
    pub id: ChunkId,
    /// Byte offset of its record in the pack.
    pub offset: u64,
    /// Length of the record on disk (codec byte, payload and tag).
    pub stored_len: u32,
    /// Length of the chunk itself.
    pub raw_len: u32,
}

/// A pack's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackHeader {
    /// The key the records are sealed with; none in a plain pack.
    pub key_id: Option<KeyId>,
    /// The pack's random salt, from which its subkey is derived.
    pub salt: [u8; 32],
}

impl PackHeader {
    /// The header's 64 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&PACK_MAGIC);
        h[8..10].copy_from_slice(&PACK_VERSION.to_le_bytes());
        h[10] = if self.key_id.is_some() {
            CIPHER_AES256GCM
        } else {
            CIPHER_NONE
        };
        h[16..24].copy_from_slice(&self.key_id.map_or(0, |k| k.0).to_le_bytes());
        h[24..56].copy_from_slice(&self.salt);
        h
    }

    /// Parses a header from untrusted bytes.
    pub fn decode(h: &[u8]) -> Result<Self, PackError> {
        if h.len() < HEADER_LEN {
            return Err(PackError::NotAPack(format!(
                "{} bytes is shorter than a pack header",
                h.len()
            )));
        }
        if h[..6] != PACK_MAGIC[..6] {
            return Err(PackError::NotAPack(
                "the file does not start with the pack magic".into(),
            ));
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if h[..8] != PACK_MAGIC || version != PACK_VERSION {
            return Err(PackError::UnknownVersion(format!("{version}")));
        }
        let key = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        let key_id = match h[10] {
            CIPHER_NONE => None,
            CIPHER_AES256GCM => Some(KeyId(key)),
            other => return Err(PackError::UnknownVersion(format!("cipher {other}"))),
        };
        Ok(PackHeader {
            key_id,
            salt: h[24..56].try_into().expect("32 bytes"),
        })
    }
}

/// Writes one pack to `W`: header, records, sealed trailer, footer. The pack id is the BLAKE3
/// hash of everything written.
pub struct PackWriter<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    header: [u8; HEADER_LEN],
    cipher: Option<PackCipher>,
    offset: u64,
    entries: Vec<Entry>,
}

impl<W: Write> PackWriter<W> {
    /// Starts a pack for `codec`'s key with a fresh random `salt`.
    pub fn new(mut out: W, codec: &ChunkCodec, salt: [u8; 32]) -> Result<Self, PackError> {
        let header = PackHeader {
            key_id: codec.key_id(),
            salt,
        }
        .encode();
        out.write_all(&header)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header);
        Ok(PackWriter {
            out,
            hasher,
            header,
            cipher: codec.pack_cipher(&salt),
            offset: HEADER_LEN as u64,
            entries: Vec::new(),
        })
    }

    /// The offset the next record will have; the pack's length so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of records written.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no record was written.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Length a record of `plain_len` plaintext bytes takes in this pack.
    pub fn sealed_len(&self, plain_len: usize) -> usize {
        plain_len + if self.cipher.is_some() { TAG_LEN } else { 0 }
    }

    /// Seals a record's plaintext (from [`ChunkCodec::compress`]) for `offset` in place. Records
    /// may be sealed in parallel once their offsets are planned, then written in order.
    pub fn seal(&self, offset: u64, id: &ChunkId, record: &mut Vec<u8>) {
        if let Some(c) = &self.cipher {
            c.seal(&nonce_for(offset), id.as_bytes(), record);
        }
    }

    /// Writes a sealed record; `offset` must be [`PackWriter::offset`].
    pub fn write_sealed(
        &mut self,
        offset: u64,
        id: ChunkId,
        raw_len: u32,
        sealed: &[u8],
    ) -> Result<(), PackError> {
        assert_eq!(
            offset, self.offset,
            "records must be written in planned order"
        );
        self.out.write_all(sealed)?;
        self.hasher.update(sealed);
        self.entries.push(Entry {
            id,
            offset,
            stored_len: sealed.len() as u32,
            raw_len,
        });
        self.offset += sealed.len() as u64;
        Ok(())
    }

    /// Seals and writes one record.
    pub fn append(
        &mut self,
        id: ChunkId,
        raw_len: u32,
        mut record: Vec<u8>,
    ) -> Result<(), PackError> {
        let offset = self.offset;
        self.seal(offset, &id, &mut record);
        self.write_sealed(offset, id, raw_len, &record)
    }

    /// Writes the trailer and footer; returns the writer, the pack id, the entries and the length.
    pub fn finish(self) -> Result<(W, PackId, Vec<Entry>, u64), PackError> {
        self.finish_with_tail()
            .map(|(out, id, entries, len, _)| (out, id, entries, len))
    }

    /// [`PackWriter::finish`], also returning the pack's header and sealed trailer as written,
    /// from which its index object is made ([`crate::encode_index_object`]).
    #[allow(clippy::type_complexity)]
    pub fn finish_with_tail(mut self) -> Result<(W, PackId, Vec<Entry>, u64, PackTail), PackError> {
        let mut trailer =
            Vec::with_capacity(TRAILER_HEAD_LEN + self.entries.len() * ENTRY_LEN + TAG_LEN);
        trailer.extend_from_slice(&TRAILER_MAGIC);
        trailer.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            trailer.extend_from_slice(e.id.as_bytes());
            trailer.extend_from_slice(&e.offset.to_le_bytes());
            trailer.extend_from_slice(&e.stored_len.to_le_bytes());
            trailer.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        if let Some(c) = &self.cipher {
            c.seal(&TRAILER_NONCE, &self.header, &mut trailer);
        }
        let mut footer = [0u8; FOOTER_LEN];
        footer[..4].copy_from_slice(&(trailer.len() as u32).to_le_bytes());
        footer[8..].copy_from_slice(&FOOTER_MAGIC);
        for part in [&trailer[..], &footer[..]] {
            self.out.write_all(part)?;
            self.hasher.update(part);
        }
        let len = self.offset + trailer.len() as u64 + FOOTER_LEN as u64;
        Ok((
            self.out,
            PackId(*self.hasher.finalize().as_bytes()),
            self.entries,
            len,
            PackTail {
                header: self.header,
                trailer,
            },
        ))
    }
}

/// A pack's header and sealed trailer, byte for byte as in the pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackTail {
    /// The 64-byte header.
    pub header: [u8; HEADER_LEN],
    /// The trailer as sealed in the pack.
    pub trailer: Vec<u8>,
}

/// What can be known of a pack without its key: its header, its length, where its records end
/// and how many entries its trailer holds, all checked against each other and the file length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackLayout {
    /// The header.
    pub header: PackHeader,
    /// The file's length.
    pub len: u64,
    /// Where the records end and the (sealed) trailer starts.
    pub records_end: u64,
    /// The sealed trailer's length.
    pub trailer_len: u64,
    /// How many entries the trailer holds (from its length).
    pub entries: u64,
}

/// Reads and checks what a pack's header and footer say, without a key: the magic and version,
/// the footer, and that the trailer length fits the file and a whole number of entries. A
/// truncated or extended pack fails here.
pub fn read_layout<R: Read + Seek>(mut r: R) -> Result<PackLayout, PackError> {
    let len = r.seek(SeekFrom::End(0))?;
    if len < (HEADER_LEN + FOOTER_LEN + TRAILER_HEAD_LEN) as u64 || len > MAX_PACK_LEN {
        return Err(PackError::NotAPack(format!(
            "length {len} is outside what a pack can be"
        )));
    }
    let mut header = [0u8; HEADER_LEN];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut header)?;
    let parsed = PackHeader::decode(&header)?;
    let mut footer = [0u8; FOOTER_LEN];
    r.seek(SeekFrom::Start(len - FOOTER_LEN as u64))?;
    r.read_exact(&mut footer)?;
    if footer[8..] != FOOTER_MAGIC {
        return Err(PackError::BadTrailer(
            "the footer magic is missing (truncated pack?)".into(),
        ));
    }
    let tlen = u64::from(u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")));
    let room = len - (HEADER_LEN + FOOTER_LEN) as u64;
    if tlen < TRAILER_HEAD_LEN as u64 || tlen > room {
        return Err(PackError::BadTrailer(format!(
            "trailer length {tlen} does not fit a pack of {len} bytes"
        )));
    }
    let tag = if parsed.key_id.is_some() {
        TAG_LEN as u64
    } else {
        0
    };
    let body = tlen.checked_sub(TRAILER_HEAD_LEN as u64 + tag);
    let entries = match body {
        Some(b) if b % ENTRY_LEN as u64 == 0 => b / ENTRY_LEN as u64,
        _ => {
            return Err(PackError::BadTrailer(format!(
                "trailer length {tlen} is not a whole number of entries"
            )));
        }
    };
    if entries > MAX_PACK_ENTRIES {
        return Err(PackError::BadTrailer(format!(
            "trailer length {tlen} means {entries} entries, more than a pack holds ({MAX_PACK_ENTRIES})"
        )));
    }
    let records_end = len - FOOTER_LEN as u64 - tlen;
    // Every record takes at least one byte (plus a tag when sealed).
    if entries.saturating_mul(1 + tag) > records_end - HEADER_LEN as u64 {
        return Err(PackError::BadTrailer(format!(
            "{entries} entries do not fit the {} bytes of records",
            records_end - HEADER_LEN as u64
        )));
    }
    Ok(PackLayout {
        header: parsed,
        len,
        records_end,
        trailer_len: tlen,
        entries,
    })
}

/// Reads a pack's header and trailer from untrusted bytes. `codec_for` returns the codec of the
/// key named in the header (or the plain codec), or none when that key is not available.
pub fn read_trailer<'c, R: Read + Seek>(
    mut r: R,
    codec_for: impl FnOnce(Option<KeyId>) -> Option<&'c ChunkCodec>,
) -> Result<(PackHeader, Vec<Entry>), PackError> {
    let layout = read_layout(&mut r)?;
    let parsed = layout.header;
    // The trailer's associated data is the header as written (reserved bytes included).
    let mut header = [0u8; HEADER_LEN];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut header)?;
    let mut trailer = vec![0u8; layout.trailer_len as usize];
    r.seek(SeekFrom::Start(layout.records_end))?;
    r.read_exact(&mut trailer)?;
    let codec = codec_for(parsed.key_id).ok_or_else(|| {
        PackError::WrongKey(
            parsed
                .key_id
                .map_or_else(|| "none (a plain pack)".into(), |k| k.to_string()),
        )
    })?;
    if codec.key_id() != parsed.key_id {
        return Err(PackError::WrongKey(format!("{:?}", parsed.key_id)));
    }
    if let Some(cipher) = codec.pack_cipher(&parsed.salt) {
        cipher
            .open(&TRAILER_NONCE, &header, &mut trailer)
            .map_err(|_| {
                PackError::BadTrailer("authentication failed (damaged, or another key)".into())
            })?;
    }
    let entries = parse_trailer(&trailer, layout.records_end)?;
    Ok((parsed, entries))
}

/// Parses a trailer's plaintext; every record must lie between the header and `records_end`,
/// in order and without overlap.
pub fn parse_trailer(t: &[u8], records_end: u64) -> Result<Vec<Entry>, PackError> {
    let bad = |m: String| PackError::BadTrailer(m);
    if t.len() < TRAILER_HEAD_LEN || t[..4] != TRAILER_MAGIC {
        return Err(bad("the trailer magic is missing".into()));
    }
    let count = u32::from_le_bytes(t[4..8].try_into().expect("4 bytes")) as usize;
    if count as u64 > MAX_PACK_ENTRIES {
        return Err(bad(format!(
            "{count} entries are more than a pack holds ({MAX_PACK_ENTRIES})"
        )));
    }
    if (t.len() - TRAILER_HEAD_LEN) != count.saturating_mul(ENTRY_LEN) {
        return Err(bad(format!(
            "{count} entries do not fit a trailer of {} bytes",
            t.len()
        )));
    }
    let mut entries = Vec::with_capacity(count);
    let mut expect = HEADER_LEN as u64;
    for (i, e) in t[TRAILER_HEAD_LEN..].chunks_exact(ENTRY_LEN).enumerate() {
        let entry = Entry {
            id: ChunkId(e[..32].try_into().expect("32 bytes")),
            offset: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
            stored_len: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
            raw_len: u32::from_le_bytes(e[44..48].try_into().expect("4 bytes")),
        };
        if entry.offset != expect
            || entry.stored_len == 0
            || entry.stored_len > MAX_RECORD_LEN
            || entry.raw_len == 0
            || entry.raw_len > MAX_CHUNK_LEN
        {
            return Err(bad(format!(
                "entry {i} (chunk {:?}) has an invalid offset or length",
                entry.id
            )));
        }
        expect += u64::from(entry.stored_len);
        if expect > records_end {
            return Err(bad(format!(
                "entry {i} (chunk {:?}) runs past the records",
                entry.id
            )));
        }
        entries.push(entry);
    }
    if expect != records_end {
        return Err(bad("the records do not end where the trailer starts".into()));
    }
    Ok(entries)
}

/// Checks where a record is said to be — by the index, or anything else that is not the pack's
/// own checked trailer — against the format's limits and the pack's length `pack_len`, before
/// anything is allocated or read: a crafted length cannot make a reader allocate gigabytes or
/// read outside the records.
pub fn check_record_place(
    id: &ChunkId,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
    pack_len: u64,
) -> Result<(), PackError> {
    let bad = |why: String| PackError::BadRecord {
        id: *id,
        offset,
        detail: why,
    };
    if stored_len == 0 || stored_len > MAX_RECORD_LEN {
        return Err(bad(format!(
            "a stored length of {stored_len} bytes is outside what a record can be (1 to {MAX_RECORD_LEN})"
        )));
    }
    if raw_len == 0 || raw_len > MAX_CHUNK_LEN {
        return Err(bad(format!(
            "a length of {raw_len} bytes is outside what a chunk can be (1 to {MAX_CHUNK_LEN})"
        )));
    }
    let records_end = pack_len.saturating_sub((FOOTER_LEN + TRAILER_HEAD_LEN) as u64);
    let end = offset.checked_add(u64::from(stored_len));
    if offset < HEADER_LEN as u64 || end.is_none_or(|end| end > records_end) {
        return Err(bad(format!(
            "{stored_len} bytes at offset {offset} do not lie within the records of a pack of \
             {pack_len} bytes"
        )));
    }
    Ok(())
}
