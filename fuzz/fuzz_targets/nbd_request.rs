//! One NBD request header and an export size from arbitrary bytes: parsing never panics, and
//! what the server decides to do stays within the export and the protocol's bounds; the name
//! of an info request, and the queries of a meta context request, lie within their payloads.
#![no_main]

use blocksnap_nbd::{
    Action, MAX_REQUEST_LEN, REQUEST_LEN, REQUEST_MAGIC, info_request, info_request_name,
    meta_request, parse_request,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = info_request_name(data) {
        assert!(name.len() + 4 <= data.len());
    }
    if let Some((name, infos)) = info_request(data) {
        assert!(name.len() + 4 + 2 * infos.len() <= data.len());
    }
    // The queries of a meta context request lie within it, each with its 4-byte length.
    if let Some((name, queries)) = meta_request(data) {
        let used: usize = queries.iter().map(|q| q.len() + 4).sum();
        assert_eq!(name.len() + 8 + used, data.len());
    }
    if data.len() < REQUEST_LEN + 8 {
        return;
    }
    let header: [u8; REQUEST_LEN] = data[..REQUEST_LEN].try_into().unwrap();
    let size = u64::from_le_bytes(data[REQUEST_LEN..REQUEST_LEN + 8].try_into().unwrap());
    let Some(req) = parse_request(&header) else {
        assert_ne!(&header[..4], &REQUEST_MAGIC.to_be_bytes());
        return;
    };
    match req.action(size) {
        Action::Read { offset, len } => {
            assert!(len <= MAX_REQUEST_LEN);
            assert!(
                offset
                    .checked_add(u64::from(len))
                    .is_some_and(|e| e <= size)
            );
        }
        Action::BlockStatus { offset, len } => {
            assert!(len > 0);
            assert!(
                offset
                    .checked_add(u64::from(len))
                    .is_some_and(|e| e <= size)
            );
        }
        Action::SkipWrite(len) => assert!(len <= MAX_REQUEST_LEN),
        Action::Refuse(_) | Action::Ack | Action::End => {}
    }
});
