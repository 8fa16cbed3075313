//! Every document parser: never panics; what parses re-encodes to the same value.
#![no_main]

use blocksnap_manifest::{
    AccountDoc, ConfigDoc, Document, ImageDoc, KeyDoc, LockDoc, PolicyDoc, SnapshotDoc, TrashDoc,
    VolumeDoc,
};
use libfuzzer_sys::fuzz_target;

fn round_trip<D: Document + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(doc) = D::from_json(data) {
        let again = D::from_json(&doc.to_json()).expect("an encoded document parses");
        assert_eq!(doc, again);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<SnapshotDoc>(data);
    round_trip::<KeyDoc>(data);
    round_trip::<AccountDoc>(data);
    round_trip::<ConfigDoc>(data);
    round_trip::<ImageDoc>(data);
    round_trip::<TrashDoc>(data);
    round_trip::<PolicyDoc>(data);
    round_trip::<VolumeDoc>(data);
    round_trip::<LockDoc>(data);
});
