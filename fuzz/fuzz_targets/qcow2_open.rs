//! A qcow2 image from arbitrary bytes, opened and read as a snapshot source reads it: opening
//! gives an error or a disk, never a panic; the ranges it says hold data lie inside the disk,
//! one after the other; reading them gives an error or bytes, never a panic.
#![no_main]

use blocksnap_source::Disk;
use blocksnap_source::qcow2::Qcow2Disk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // imago reads files: the input is one, in a directory of this process's own.
    let dir = std::env::temp_dir().join(format!("blocksnap-fuzz-qcow2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("image.qcow2");
    std::fs::write(&path, data).unwrap();
    let Ok(disk) = Qcow2Disk::open(&path) else {
        return;
    };
    let size = disk.size();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    // A bounded walk: a hostile image may claim an exabyte disk.
    for _ in 0..64 {
        let Ok(Some((start, end))) = disk.next_data(pos) else {
            break;
        };
        assert!(
            pos <= start && start < end && end <= size,
            "{pos} {start} {end} {size}"
        );
        let n = ((end - start) as usize).min(buf.len());
        let _ = disk.read_at(&mut buf[..n], start);
        pos = end;
    }
});
