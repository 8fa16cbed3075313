//! A whole NBD connection — handshake, then requests — from arbitrary client bytes, against a
//! 1 MiB export with holes: never panics, never allocates more than a request's bounded length,
//! never asks the export for a read or an allocation past its end, and every byte the server
//! sends starts as a reply to something the client asked. The first byte picks whether the
//! server offers TLS (then it must stop at STARTTLS or refuse everything else).
#![no_main]

use std::cell::Cell;

use blocksnap_nbd::{Export, Handshake, Run, Stats, Step, Tls, transmission_session};
use libfuzzer_sys::fuzz_target;

/// Byte `i` is `i as u8` in the data, [0, 256 KiB) and [512 KiB, 640 KiB); holes elsewhere.
/// Reads from 768 KiB on fail (a damaged chunk).
#[derive(Default)]
struct Sparse {
    /// Reads that touched a hole (structured reads send holes as holes; DF reads may not).
    hole_reads: Cell<u64>,
}

const DATA: [(u64, u64); 2] = [(0, 256 << 10), (512 << 10, 640 << 10)];

impl Export for Sparse {
    fn name(&self) -> &str {
        "snap-0000000000000001"
    }
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), String> {
        let end = offset + out.len() as u64;
        assert!(end <= self.size(), "read past the export");
        if offset >= 768 << 10 {
            return Err("damaged".into());
        }
        if !DATA.iter().any(|&(s, e)| s <= offset && end <= e) {
            self.hole_reads.set(self.hole_reads.get() + 1);
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = (offset + i as u64) as u8;
        }
        Ok(())
    }
    fn allocation(&self, offset: u64, len: u64, max: usize, out: &mut Vec<Run>) {
        assert!(
            len > 0 && offset + len <= self.size(),
            "allocation past the export"
        );
        let bounds = [0, DATA[0].1, DATA[1].0, DATA[1].1, self.size()];
        let mut pos = offset;
        let end = offset + len;
        let start = out.len();
        while pos < end && out.len() - start < max {
            let next = bounds
                .iter()
                .copied()
                .find(|&b| b > pos)
                .unwrap_or(end)
                .min(end);
            let hole = !DATA.iter().any(|&(s, e)| s <= pos && pos < e);
            out.push(Run {
                len: next - pos,
                hole,
            });
            pos = next;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let tls = if mode & 1 == 1 {
        Tls::Required
    } else {
        Tls::Off
    };
    let export = Sparse::default();
    let mut r = data;
    let mut out = Vec::new();
    let mut stats = Stats::default();
    if let Ok(mut h) = Handshake::greet(&mut r, &mut out, tls) {
        match h.options(&mut r, &mut out, &export) {
            Ok(Step::Transmission(session)) => {
                assert!(
                    tls == Tls::Off,
                    "transmission without TLS when it is required"
                );
                let _ = transmission_session(
                    &mut r,
                    &mut out,
                    &export,
                    session,
                    &mut |_| {},
                    &mut stats,
                );
            }
            Ok(Step::StartTls) => assert!(tls == Tls::Required),
            Err(_) => {}
        }
    }
    // The greeting is always sent first.
    assert!(out.len() >= 18 && &out[..8] == b"NBDMAGIC");
});
