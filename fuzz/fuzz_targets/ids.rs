//! Ids, names and host names as users and documents give them, from arbitrary text: never
//! panics; an id that parses prints as itself (in canonical form) and parses again to the same
//! value.
#![no_main]

use std::fmt::Display;
use std::str::FromStr;

use blocksnap_manifest::{
    ChunkId, ImageId, KeyId, PackId, SnapshotId, StoreId, validate_host, validate_name,
};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: FromStr + Display + PartialEq + std::fmt::Debug>(text: &str) {
    if let Ok(id) = text.parse::<T>() {
        let printed = id.to_string();
        assert_eq!(printed.parse::<T>().ok(), Some(id));
        assert!(printed.eq_ignore_ascii_case(text), "{printed} from {text}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    round_trip::<SnapshotId>(text);
    round_trip::<KeyId>(text);
    round_trip::<ImageId>(text);
    round_trip::<StoreId>(text);
    round_trip::<ChunkId>(text);
    round_trip::<PackId>(text);
    let _ = validate_name("volume", "name", text);
    let _ = validate_host(text);
});
