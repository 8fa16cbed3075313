//! Typed identifiers. Each kind of id is its own type, so a pack id can never be passed where a
//! chunk id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An id that failed to parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{text}' is not a valid {kind} id (expected {expected})")]
pub struct IdError {
    /// What kind of id was expected.
    pub kind: &'static str,
    /// What it should look like.
    pub expected: &'static str,
    /// The text that was given (shortened).
    pub text: String,
}

fn id_error(kind: &'static str, expected: &'static str, text: &str) -> IdError {
    IdError {
        kind,
        expected,
        text: text.chars().take(80).collect(),
    }
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id's bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// The first 8 bytes in hex, for messages.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..8])
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($kind, "({})"), self.short())
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let mut out = [0u8; 32];
                if s.len() != 64 || hex::decode_to_slice(s, &mut out).is_err() {
                    return Err(id_error($kind, "64 hex digits", s));
                }
                Ok($name(out))
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hash_id!(
    /// A chunk's id: its BLAKE3 hash, keyed by a subkey of the data key in encrypted stores.
    ChunkId,
    "chunk"
);
hash_id!(
    /// A pack's id: the BLAKE3 hash of the pack file's bytes.
    PackId,
    "pack"
);

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:016x}"), self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let expected = concat!("'", $prefix, "' and 16 hex digits");
                let hex = s.strip_prefix($prefix).ok_or_else(|| id_error($kind, expected, s))?;
                if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(id_error($kind, expected, s));
                }
                u64::from_str_radix(hex, 16).map($name).map_err(|_| id_error($kind, expected, s))
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A snapshot's id, `snap-` and 16 hex digits.
    SnapshotId,
    "snap-",
    "snapshot"
);
name_id!(
    /// A data key's id, `key-` and 16 hex digits.
    KeyId,
    "key-",
    "key"
);
name_id!(
    /// An image's id, `img-` and 16 hex digits.
    ImageId,
    "img-",
    "image"
);
name_id!(
    /// A store's id, `store-` and 16 hex digits.
    StoreId,
    "store-",
    "store"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let s = SnapshotId(0x0f3a_9c2b_7d1e_4a55);
        assert_eq!(s.to_string(), "snap-0f3a9c2b7d1e4a55");
        assert_eq!("snap-0f3a9c2b7d1e4a55".parse::<SnapshotId>().unwrap(), s);
        assert!("snap-0f3a".parse::<SnapshotId>().is_err());
        assert!("snap-+f3a9c2b7d1e4a55".parse::<SnapshotId>().is_err());
        assert!("key-0f3a9c2b7d1e4a55".parse::<SnapshotId>().is_err());
        let c = ChunkId([7; 32]);
        assert_eq!(c.to_string().parse::<ChunkId>().unwrap(), c);
        assert!("zz".repeat(32).parse::<ChunkId>().is_err());
        assert!("é".parse::<ChunkId>().is_err());
    }
}
