//! blocksnap's NBD client against a server that sends arbitrary bytes: the handshake, a block
//! status and a read give errors or answers inside what was asked, never a panic, and nothing
//! is allocated past the client's bounds.
#![no_main]

use std::io::{self, Read, Write};

use blocksnap_nbd::client::{BASE_ALLOCATION, Client};
use libfuzzer_sys::fuzz_target;

struct Server<'a>(&'a [u8]);

impl Read for Server<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}

impl Write for Server<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut c) = Client::handshake(
        Server(data),
        "disk",
        &[BASE_ALLOCATION, "qemu:dirty-bitmap:b"],
    ) else {
        return;
    };
    let size = c.size();
    if size == 0 {
        return;
    }
    if let Ok(ext) = c.block_status(BASE_ALLOCATION, 0, size) {
        let total: u64 = ext.iter().map(|e| e.len).sum();
        assert!(total <= size && ext.iter().all(|e| e.len > 0));
    }
    let mut buf = vec![0u8; size.min(1 << 20) as usize];
    let _ = c.read_at(&mut buf, 0);
});
