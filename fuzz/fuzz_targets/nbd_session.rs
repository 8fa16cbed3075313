//! A whole NBD connection — handshake, then requests — from arbitrary client bytes, against a
//! 1 MiB export: never panics, never allocates more than a request's bounded length, and every
//! byte the server sends starts as a reply to something the client asked.
#![no_main]

use blocksnap_nbd::{Export, serve};
use libfuzzer_sys::fuzz_target;

/// Byte `i` is `i as u8`; reads from 768 KiB on fail (a damaged chunk).
struct Pattern;

impl Export for Pattern {
    fn name(&self) -> &str {
        "snap-0000000000000001"
    }
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), String> {
        assert!(
            offset + out.len() as u64 <= self.size(),
            "read past the export"
        );
        if offset >= 768 << 10 {
            return Err("damaged".into());
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = (offset + i as u64) as u8;
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let mut errors = 0usize;
    let _ = serve(&mut &data[..], &mut out, &Pattern, &mut |_| errors += 1);
    // The greeting is always sent first.
    assert!(out.len() >= 18 && &out[..8] == b"NBDMAGIC");
});
