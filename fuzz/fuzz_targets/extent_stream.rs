//! The extent list decoder, fed in two pieces: never panics, offsets stay within the size.
#![no_main]

use blocksnap_manifest::{ExtentDecoder, ExtentError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[8] % 64);
    let body = &data[9..];
    let split = body.len() / 2;
    let mut d = ExtentDecoder::new(size);
    let mut check = |off: u64, e: blocksnap_manifest::Extent| -> Result<(), ExtentError> {
        assert!(off + e.len() <= size);
        Ok(())
    };
    if d.feed(&body[..split], &mut check).is_ok() && d.feed(&body[split..], &mut check).is_ok() {
        let _ = d.finish();
    }
});
