//! How the process's allocator gives memory back.
//!
//! glibc's malloc serves a block of at least its mmap threshold (128 KiB to start) with its own
//! mapping, returned to the kernel when freed, but it raises that threshold to the size of every
//! such block freed, up to 32 MiB. The pipelines here allocate and free buffers of 2 to 32 MiB
//! on many threads (batches, ranged reads of packs), so after the first few are freed the rest
//! come from the per-thread arenas, whose freed space is kept, not returned: peak RSS then grows
//! with the run. Measured with e2e `s3::memory` (restore from S3 of a disk of random data):
//! 328 MiB for 512 MiB and 432 MiB for 1 GiB with the moving threshold; 197 and 206 MiB with
//! it fixed at 1 MiB. Local snapshots and restores of 768 MiB took the same time either way.

/// Fixes glibc's mmap threshold at 1 MiB (see the module's text). Called first in `main`,
/// before any other thread exists; a no-op elsewhere than on glibc.
#[allow(unsafe_code)]
pub(crate) fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator, and no other thread is
    // allocating yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
