//! The JSON documents of a store: config, account, key and snapshot. Every document carries a
//! `format` name with a version; readers check it first and reject what they do not know.

use std::collections::BTreeMap;

use blocksnap_chunker::ChunkerKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::DocError;
use crate::id::{ChunkId, KeyId, SnapshotId, StoreId};

/// Longest name (volume, account, key) accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Most tags on one object.
pub const MAX_TAGS: usize = 64;
/// Longest tag key.
pub const MAX_TAG_KEY_LEN: usize = 128;
/// Longest tag value or description.
pub const MAX_TAG_VALUE_LEN: usize = 1024;
/// Most grants on one key.
pub const MAX_GRANTS: usize = 10_000;
/// Largest volume (2^60 bytes, an exbibyte).
pub const MAX_VOLUME_SIZE: u64 = 1 << 60;
/// Most metadata chunks one snapshot's extent list may span (2^24 × 16 MiB chunks).
pub const MAX_EXTENT_CHUNKS: usize = 1 << 24;

/// A document type with a versioned format name.
pub trait Document: Serialize + DeserializeOwned {
    /// The document kind, for messages (`snapshot`).
    const KIND: &'static str;
    /// The format name this version writes and reads (`blocksnap.snapshot/v1`).
    const FORMAT: &'static str;
    /// Older format names this version still reads (and never writes).
    const OLDER_FORMATS: &'static [&'static str] = &[];

    /// Checks every field; called by [`Document::from_json`].
    fn validate(&self) -> Result<(), DocError>;

    /// Parses and validates a document from untrusted bytes. Never panics.
    fn from_json(bytes: &[u8]) -> Result<Self, DocError> {
        #[derive(Deserialize)]
        struct Peek {
            format: Option<String>,
        }
        let malformed = |e: serde_json::Error| DocError::Malformed {
            doc: Self::KIND,
            detail: e.to_string(),
        };
        let peek: Peek = serde_json::from_slice(bytes).map_err(malformed)?;
        match peek.format {
            Some(f) if f == Self::FORMAT || Self::OLDER_FORMATS.contains(&f.as_str()) => {}
            Some(f) => {
                return Err(DocError::UnknownFormat {
                    doc: Self::KIND,
                    found: f.chars().take(80).collect(),
                    expected: Self::FORMAT,
                });
            }
            None => return Err(DocError::invalid(Self::KIND, "format", "is missing")),
        }
        let doc: Self = serde_json::from_slice(bytes).map_err(malformed)?;
        doc.validate()?;
        Ok(doc)
    }

    /// Encodes the document as pretty JSON.
    fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("documents always serialize");
        v.push(b'\n');
        v
    }
}

/// Checks a user-chosen name: 1 to 128 characters, letters, digits and `-_.:@`, not starting
/// with a dot or a dash (so it is safe as a file name and unambiguous on a command line).
pub fn validate_name(doc: &'static str, field: &str, name: &str) -> Result<(), DocError> {
    let ok_char = |c: char| c.is_alphanumeric() || "-_.:@+".contains(c);
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(DocError::invalid(
            doc,
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if !name.chars().all(ok_char) || name.starts_with('.') || name.starts_with('-') {
        return Err(DocError::invalid(
            doc,
            field,
            format!(
                "'{}' may hold only letters, digits and - _ . : @ +, and not start with . or -",
                name.chars().take(40).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Checks a tag set.
pub fn validate_tags(doc: &'static str, tags: &BTreeMap<String, String>) -> Result<(), DocError> {
    if tags.len() > MAX_TAGS {
        return Err(DocError::invalid(
            doc,
            "tags",
            format!("has {} tags, at most {MAX_TAGS} allowed", tags.len()),
        ));
    }
    for (k, v) in tags {
        if k.is_empty()
            || k.len() > MAX_TAG_KEY_LEN
            || k.contains('=')
            || k.chars().any(char::is_control)
        {
            return Err(DocError::invalid(
                doc,
                "tags",
                format!(
                    "key '{}' must be 1 to {MAX_TAG_KEY_LEN} bytes, without '=' or control characters",
                    k.chars().take(40).collect::<String>()
                ),
            ));
        }
        if v.len() > MAX_TAG_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(DocError::invalid(
                doc,
                format!("tags.{k}"),
                format!(
                    "value must be at most {MAX_TAG_VALUE_LEN} bytes, without control characters"
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn validate_text(doc: &'static str, field: &str, text: &str) -> Result<(), DocError> {
    if text.len() > MAX_TAG_VALUE_LEN {
        return Err(DocError::invalid(
            doc,
            field,
            format!("is longer than {MAX_TAG_VALUE_LEN} bytes"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_time(doc: &'static str, field: &str, text: &str) -> Result<(), DocError> {
    // RFC 3339 in UTC as written by blocksnap: 2026-11-23T19:30:24Z (fraction optional).
    let b = text.as_bytes();
    let shape = b.len() >= 20
        && b.len() <= 40
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && text.ends_with('Z')
        && text.is_ascii();
    if !shape {
        return Err(DocError::invalid(
            doc,
            field,
            format!(
                "'{}' is not an RFC 3339 UTC time",
                text.chars().take(40).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Chunker settings as stored in config and snapshot documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerDoc {
    /// `cdc` or `fixed`.
    pub kind: ChunkerKind,
    /// Smallest chunk.
    pub min: u32,
    /// Average chunk.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
    /// FastCDC's gear table is seeded from the data key (stores made since 2026-12-02): cut
    /// points do not reveal known content. Absent (false) in older stores, which keep the
    /// published table so that their dedup carries on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seeded: bool,
}

impl ChunkerDoc {
    fn validate(&self, doc: &'static str) -> Result<(), DocError> {
        let ok =
            self.min >= 64 && self.min <= self.avg && self.avg <= self.max && self.max <= 16 << 20;
        if !ok {
            return Err(DocError::invalid(
                doc,
                "chunker",
                format!(
                    "sizes min={} avg={} max={} are out of range",
                    self.min, self.avg, self.max
                ),
            ));
        }
        Ok(())
    }
}

/// `config`: the store's settings, written once by `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDoc {
    /// `blocksnap.config/v2` (documents are authenticated), or `blocksnap.config/v1` for a
    /// store made before that and not yet migrated.
    pub format: String,
    /// The store's id.
    pub id: StoreId,
    /// When the store was created.
    pub created: String,
    /// Whether chunks are encrypted (and ids keyed).
    pub encryption: bool,
    /// The chunker every snapshot of this store uses.
    pub chunker: ChunkerDoc,
    /// Target size of a pack file in bytes.
    pub pack_size: u64,
    /// zstd level for chunks.
    pub compression_level: i32,
    /// The account created with the store: the default `--account`.
    pub default_account: String,
    /// Days a deleted snapshot stays restorable in the trash.
    #[serde(default = "default_trash_days")]
    pub trash_retention_days: u32,
    /// Made with `init --single-writer`: one host at a time writes to the store, so blocksnap
    /// does not refuse a server that fails the capability check (it ignores conditional
    /// writes). Absent (false) in every other store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_writer: bool,
}

fn default_trash_days() -> u32 {
    7
}

impl ConfigDoc {
    /// The format of stores made before documents were authenticated.
    pub const FORMAT_V1: &'static str = "blocksnap.config/v1";

    /// True if every snapshot, image, volume, policy and key document of the store must carry a
    /// valid MAC (format v2); false for a store made before, until `blocksnap migrate`.
    pub fn authenticated(&self) -> bool {
        self.format == Self::FORMAT
    }
}

impl Document for ConfigDoc {
    const KIND: &'static str = "config";
    const FORMAT: &'static str = "blocksnap.config/v2";
    const OLDER_FORMATS: &'static [&'static str] = &[Self::FORMAT_V1];
    fn validate(&self) -> Result<(), DocError> {
        validate_time(Self::KIND, "created", &self.created)?;
        self.chunker.validate(Self::KIND)?;
        if !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(DocError::invalid(
                Self::KIND,
                "pack_size",
                "must be between 1 MiB and 1 GiB",
            ));
        }
        if !(-7..=22).contains(&self.compression_level) {
            return Err(DocError::invalid(
                Self::KIND,
                "compression_level",
                "must be between -7 and 22",
            ));
        }
        if self.trash_retention_days > 36_500 {
            return Err(DocError::invalid(
                Self::KIND,
                "trash_retention_days",
                "must be at most 36500",
            ));
        }
        validate_name(Self::KIND, "default_account", &self.default_account)
    }
}

/// `accounts/NAME.json`: the public part of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountDoc {
    /// `blocksnap.account/v1`.
    pub format: String,
    /// The account's name.
    pub name: String,
    /// The account's age X25519 recipient (`age1…`), to which keys are granted.
    pub recipient: String,
    /// When it was created.
    pub created: String,
    /// The account's Ed25519 public key (hex), derived from its identity: what its signatures
    /// (of this document, of its images' launch permissions) are checked with. Absent in
    /// accounts made before signatures, until their owner runs `blocksnap migrate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    /// The account's signature of this document (without this field), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl AccountDoc {
    /// The bytes its signature covers: the compact JSON without `signature`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut plain = self.clone();
        plain.signature = None;
        serde_json::to_vec(&plain).expect("documents always serialize")
    }
}

/// Checks a hex field of `len` digits.
pub(crate) fn validate_hex(
    doc: &'static str,
    field: &str,
    value: Option<&str>,
    len: usize,
) -> Result<(), DocError> {
    match value {
        Some(v) if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) => Err(
            DocError::invalid(doc, field, format!("is not {len} hex digits")),
        ),
        _ => Ok(()),
    }
}

impl Document for AccountDoc {
    const KIND: &'static str = "account";
    const FORMAT: &'static str = "blocksnap.account/v1";
    fn validate(&self) -> Result<(), DocError> {
        validate_name(Self::KIND, "name", &self.name)?;
        validate_time(Self::KIND, "created", &self.created)?;
        validate_hex(Self::KIND, "signing_key", self.signing_key.as_deref(), 64)?;
        validate_hex(Self::KIND, "signature", self.signature.as_deref(), 128)?;
        if !self.recipient.starts_with("age1")
            || self.recipient.len() > 200
            || !self.recipient.is_ascii()
        {
            return Err(DocError::invalid(
                Self::KIND,
                "recipient",
                "is not an age X25519 recipient (age1…)",
            ));
        }
        Ok(())
    }
}

/// One account's copy of a data key, wrapped (age-encrypted) to that account's recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantDoc {
    /// The grantee's account name.
    pub account: String,
    /// The age ciphertext of the 32-byte data key, in hex.
    pub wrapped: String,
}

/// `keys/KEY-ID.json`: a data key and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDoc {
    /// `blocksnap.key/v1`.
    pub format: String,
    /// The key's id.
    pub id: KeyId,
    /// The key's name, unique in the store.
    pub name: String,
    /// When it was created.
    pub created: String,
    /// The account that created it.
    pub created_by: String,
    /// One wrapped copy per account that holds a grant.
    pub grants: Vec<GrantDoc>,
    /// Counts the changes to the grants (each grant and revoke adds one), under the MAC: a
    /// client that saw revision N refuses a document with a lower one (an old copy put back).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// MAC under the key itself (see [`crate::Sealed`]); absent in stores not yet migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The account that made this version of the document (created the key, or granted or
    /// revoked last) and signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// Its Ed25519 signature (hex) of the document without `mac` and this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl KeyDoc {
    /// The bytes its signature covers: the compact JSON without `mac` and `signature`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut plain = self.clone();
        plain.mac = None;
        plain.signature = None;
        serde_json::to_vec(&plain).expect("documents always serialize")
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Document for KeyDoc {
    const KIND: &'static str = "key";
    const FORMAT: &'static str = "blocksnap.key/v1";
    fn validate(&self) -> Result<(), DocError> {
        validate_name(Self::KIND, "name", &self.name)?;
        validate_name(Self::KIND, "created_by", &self.created_by)?;
        validate_time(Self::KIND, "created", &self.created)?;
        crate::seal::validate_mac(Self::KIND, self.mac.as_deref())?;
        validate_hex(Self::KIND, "signature", self.signature.as_deref(), 128)?;
        if let Some(a) = &self.signed_by {
            validate_name(Self::KIND, "signed_by", a)?;
        }
        if self.grants.len() > MAX_GRANTS {
            return Err(DocError::invalid(
                Self::KIND,
                "grants",
                format!("has more than {MAX_GRANTS} entries"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, g) in self.grants.iter().enumerate() {
            validate_name(Self::KIND, &format!("grants[{i}].account"), &g.account)?;
            if !seen.insert(g.account.as_str()) {
                return Err(DocError::invalid(
                    Self::KIND,
                    format!("grants[{i}].account"),
                    format!("'{}' appears twice", g.account),
                ));
            }
            if g.wrapped.is_empty()
                || g.wrapped.len() > 4096
                || !g.wrapped.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(DocError::invalid(
                    Self::KIND,
                    format!("grants[{i}].wrapped"),
                    "is not a hex age ciphertext",
                ));
            }
        }
        Ok(())
    }
}

/// Where a snapshot's extent list lives: a stream of chunks in the same store, so the metadata
/// of successive snapshots of one disk dedups like its data does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtentsDoc {
    /// Number of extent records.
    pub count: u64,
    /// Bytes of the stream (sum of the chunk lengths).
    pub bytes: u64,
    /// The stream's chunks, in order.
    pub chunks: Vec<ChunkId>,
}

/// `snapshots/SNAP-ID.json`: one volume at one point in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDoc {
    /// `blocksnap.snapshot/v1`.
    pub format: String,
    /// The snapshot's id.
    pub id: SnapshotId,
    /// The volume's name.
    pub volume: String,
    /// The volume's size in bytes.
    pub size: u64,
    /// When the snapshot was taken (RFC 3339, UTC).
    pub created: String,
    /// The previous snapshot of the same volume, if any.
    pub parent: Option<SnapshotId>,
    /// The data key the chunks are encrypted with; none in a plain store.
    pub key: Option<KeyId>,
    /// The account that took it.
    pub owner: String,
    /// The chunker used.
    pub chunker: ChunkerDoc,
    /// User tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Bytes of data (not holes) in the snapshot.
    pub data_bytes: u64,
    /// The extent list.
    pub extents: ExtentsDoc,
    /// The source read, as an absolute path (a regular file's canonical path; a block device's
    /// path as given, made absolute, since `/dev/dm-N` and `/dev/sdX` names change across
    /// boots while `/dev/vg/lv` and `/dev/disk/by-id/…` do not). Absent in snapshots taken
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    /// The host the source was read on. Absent in snapshots taken before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_host: Option<String>,
    /// The source was written while it was being read (its modification or change time
    /// moved): the snapshot may not be consistent, like a disk pulled from a running machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_changed: bool,
    /// The dirty bitmap (`qemu:dirty-bitmap:NAME` of an NBD source) that said which ranges to
    /// read; every other range was taken from the parent unread. Absent for snapshots that
    /// read the whole disk (all snapshots before it was recorded); under the MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_bitmap: Option<String>,
    /// The volume's snapshot number (1, 2, …), under the MAC: numbers only grow, so a client
    /// that pinned number N notices an older volume head put back. Absent in snapshots taken
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// MAC under the snapshot's data key (see [`crate::Sealed`]); absent in plain stores and in
    /// stores not yet migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Document for SnapshotDoc {
    const KIND: &'static str = "snapshot";
    const FORMAT: &'static str = "blocksnap.snapshot/v1";
    fn validate(&self) -> Result<(), DocError> {
        validate_name(Self::KIND, "volume", &self.volume)?;
        validate_name(Self::KIND, "owner", &self.owner)?;
        validate_time(Self::KIND, "created", &self.created)?;
        validate_tags(Self::KIND, &self.tags)?;
        validate_text(Self::KIND, "description", &self.description)?;
        if let Some(b) = &self.dirty_bitmap {
            if b.is_empty() || b.len() > 1023 || b.chars().any(char::is_control) {
                return Err(DocError::invalid(
                    Self::KIND,
                    "dirty_bitmap",
                    "is not a bitmap name (1-1023 bytes, no control characters)",
                ));
            }
        }
        crate::seal::validate_mac(Self::KIND, self.mac.as_deref())?;
        self.chunker.validate(Self::KIND)?;
        if self.size > MAX_VOLUME_SIZE {
            return Err(DocError::invalid(
                Self::KIND,
                "size",
                format!("{} exceeds the limit of 2^60 bytes", self.size),
            ));
        }
        if self.data_bytes > self.size {
            return Err(DocError::invalid(
                Self::KIND,
                "data_bytes",
                "is larger than size",
            ));
        }
        if self.extents.chunks.len() > MAX_EXTENT_CHUNKS {
            return Err(DocError::invalid(
                Self::KIND,
                "extents.chunks",
                "has too many entries",
            ));
        }
        // Each record is at least 9 bytes and covers at least one byte of the volume.
        if self.extents.count > self.size
            || self.extents.bytes > self.extents.count.saturating_mul(64) + 64
        {
            return Err(DocError::invalid(
                Self::KIND,
                "extents",
                "count and bytes do not agree with size",
            ));
        }
        if (self.extents.bytes == 0) != self.extents.chunks.is_empty() {
            return Err(DocError::invalid(
                Self::KIND,
                "extents",
                "bytes and chunks do not agree",
            ));
        }
        if let Some(p) = &self.source_path {
            validate_abs_path(Self::KIND, "source_path", p)?;
        }
        if let Some(h) = &self.source_host {
            validate_host(Self::KIND, "source_host", h)?;
        }
        Ok(())
    }
}

/// Checks a recorded path: absolute (or an NBD URI: a snapshot of an NBD export records it),
/// at most 4096 bytes, no NUL.
fn validate_abs_path(doc: &'static str, field: &str, path: &str) -> Result<(), DocError> {
    let uri = path.starts_with("nbd://") || path.starts_with("nbd+unix://");
    if !(path.starts_with('/') || uri) || path.len() > 4096 || path.contains('\0') {
        return Err(DocError::invalid(doc, field, "must be an absolute path"));
    }
    Ok(())
}

/// Checks a recorded host name: 1 to 255 bytes, no control characters.
fn validate_host(doc: &'static str, field: &str, host: &str) -> Result<(), DocError> {
    if host.is_empty() || host.len() > 255 || host.chars().any(char::is_control) {
        return Err(DocError::invalid(
            doc,
            field,
            "must be 1 to 255 bytes without control characters",
        ));
    }
    Ok(())
}

/// `volumes/NAME.json`: a named disk image or block device with tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDoc {
    /// `blocksnap.volume/v1`.
    pub format: String,
    /// The volume's name.
    pub name: String,
    /// The image file or block device, as an absolute path.
    pub path: String,
    /// Tags (policies select volumes by them).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// When it was added.
    pub created: String,
    /// The host it was registered on (the path is that host's). Absent in volumes registered
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The data key whose MAC the document carries (the key of the account that wrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyId>,
    /// MAC under `key` (see [`crate::Sealed`]); absent in plain stores and in stores not yet
    /// migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Document for VolumeDoc {
    const KIND: &'static str = "volume";
    const FORMAT: &'static str = "blocksnap.volume/v1";
    fn validate(&self) -> Result<(), DocError> {
        validate_name(Self::KIND, "name", &self.name)?;
        validate_tags(Self::KIND, &self.tags)?;
        validate_time(Self::KIND, "created", &self.created)?;
        validate_abs_path(Self::KIND, "path", &self.path)?;
        crate::seal::validate_mac(Self::KIND, self.mac.as_deref())?;
        if let Some(h) = &self.host {
            validate_host(Self::KIND, "host", h)?;
        }
        Ok(())
    }
}

/// `heads/VOLUME.json`: the newest snapshot of a volume, so that a new snapshot finds its
/// parent by reading one object, and a counter that numbers the volume's snapshots. It is
/// swapped (compare-and-swap) before the new snapshot's document is written: a crash between
/// the two leaves a head naming a snapshot that does not exist, which readers treat as no head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadDoc {
    /// `blocksnap.head/v1`.
    pub format: String,
    /// The volume's name.
    pub volume: String,
    /// Its newest snapshot (one being committed, until its document is written).
    pub snapshot: SnapshotId,
    /// How many snapshots of the volume were begun: the newest one's sequence number.
    pub seq: u64,
    /// When it was last swapped.
    pub updated: String,
}

impl Document for HeadDoc {
    const KIND: &'static str = "volume head";
    const FORMAT: &'static str = "blocksnap.head/v1";
    fn validate(&self) -> Result<(), DocError> {
        validate_name(Self::KIND, "volume", &self.volume)?;
        validate_time(Self::KIND, "updated", &self.updated)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_snapshot() -> SnapshotDoc {
        SnapshotDoc {
            format: SnapshotDoc::FORMAT.into(),
            id: SnapshotId(0x0f3a_9c2b_7d1e_4a55),
            volume: "disk.img".into(),
            size: 1 << 30,
            created: "2026-11-23T19:30:24Z".into(),
            parent: None,
            key: Some(KeyId(1)),
            owner: "alice".into(),
            chunker: ChunkerDoc {
                kind: ChunkerKind::Cdc,
                min: 16384,
                avg: 65536,
                max: 262144,
                seeded: false,
            },
            tags: BTreeMap::from([("env".into(), "prod".into())]),
            description: String::new(),
            data_bytes: 4096,
            extents: ExtentsDoc {
                count: 2,
                bytes: 60,
                chunks: vec![ChunkId([3; 32])],
            },
            source_path: None,
            source_host: None,
            source_changed: false,
            dirty_bitmap: None,
            seq: None,
            mac: None,
        }
    }

    #[test]
    fn the_recorded_source_round_trips_and_older_documents_read() {
        let mut s = sample_snapshot();
        let old = String::from_utf8(s.to_json()).unwrap();
        assert!(!old.contains("source"), "{old}");
        s.source_path = Some("/vmA/disk.img".into());
        s.source_host = Some("hv1".into());
        s.source_changed = true;
        assert_eq!(SnapshotDoc::from_json(&s.to_json()).unwrap(), s);
        let read = SnapshotDoc::from_json(old.as_bytes()).unwrap();
        assert_eq!(read.source_path, None);
        assert!(!read.source_changed);
        s.source_path = Some("relative/disk.img".into());
        let err = SnapshotDoc::from_json(&s.to_json()).unwrap_err();
        assert!(err.to_string().contains("source_path"), "{err}");
    }

    #[test]
    fn snapshot_round_trips() {
        let s = sample_snapshot();
        assert_eq!(SnapshotDoc::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn unknown_format_is_named() {
        let mut s = sample_snapshot();
        s.format = "blocksnap.snapshot/v9".into();
        let err = SnapshotDoc::from_json(&s.to_json()).unwrap_err();
        assert!(err.to_string().contains("blocksnap.snapshot/v9"), "{err}");
        assert!(err.to_string().contains("upgrade"), "{err}");
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut s = sample_snapshot();
        s.volume = "../etc".into();
        assert!(
            SnapshotDoc::from_json(&s.to_json())
                .unwrap_err()
                .to_string()
                .contains("'volume'")
        );
        let mut s = sample_snapshot();
        s.data_bytes = s.size + 1;
        assert!(
            SnapshotDoc::from_json(&s.to_json())
                .unwrap_err()
                .to_string()
                .contains("data_bytes")
        );
        assert!(SnapshotDoc::from_json(b"{").is_err());
        assert!(SnapshotDoc::from_json(b"[]").is_err());
        assert!(SnapshotDoc::from_json(b"{\"format\":\"blocksnap.snapshot/v1\"}").is_err());
    }

    fn arb_snapshot() -> impl proptest::strategy::Strategy<Value = SnapshotDoc> {
        use proptest::prelude::*;
        (
            any::<u64>(),
            "[a-zA-Z0-9][a-zA-Z0-9_.:@+-]{0,40}",
            0u64..MAX_VOLUME_SIZE,
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::collection::btree_map("[a-z:]{1,12}", "[ -~]{0,30}", 0..6),
            proptest::collection::vec(any::<[u8; 32]>(), 0..5),
            any::<bool>(),
        )
            .prop_map(|(id, volume, size, parent, key, tags, chunks, fixed)| {
                let count = size.min(chunks.len() as u64 * 1000);
                SnapshotDoc {
                    format: SnapshotDoc::FORMAT.into(),
                    id: SnapshotId(id),
                    volume,
                    size,
                    created: "2026-11-24T08:00:00.5Z".into(),
                    parent: parent.map(SnapshotId),
                    key: key.map(KeyId),
                    owner: "alice".into(),
                    chunker: ChunkerDoc {
                        kind: if fixed {
                            ChunkerKind::Fixed
                        } else {
                            ChunkerKind::Cdc
                        },
                        min: 4096,
                        avg: 32768,
                        max: 131072,
                        seeded: false,
                    },
                    tags,
                    description: "a snapshot".into(),
                    data_bytes: size / 2,
                    extents: ExtentsDoc {
                        count,
                        bytes: if chunks.is_empty() {
                            0
                        } else {
                            count.max(1) * 9
                        },
                        chunks: chunks.into_iter().map(ChunkId).collect(),
                    },
                    source_path: fixed.then(|| "/vm/disk.img".into()),
                    source_host: fixed.then(|| "host-1".into()),
                    source_changed: fixed,
                    dirty_bitmap: None,
                    seq: None,
                    mac: None,
                }
            })
    }

    proptest::proptest! {
        #[test]
        fn every_valid_snapshot_round_trips(s in arb_snapshot()) {
            proptest::prop_assume!(s.validate().is_ok());
            proptest::prop_assert_eq!(SnapshotDoc::from_json(&s.to_json()).unwrap(), s);
        }

        #[test]
        fn no_document_parser_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = SnapshotDoc::from_json(&bytes);
            let _ = KeyDoc::from_json(&bytes);
            let _ = AccountDoc::from_json(&bytes);
            let _ = ConfigDoc::from_json(&bytes);
            let _ = VolumeDoc::from_json(&bytes);
            let _ = crate::TrashDoc::from_json(&bytes);
        }
    }
}
