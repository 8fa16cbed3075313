//! Data for the benchmarks: seeded, reproducible buffers (no files).

/// `len` bytes: random, text-like (compressible) or zero-heavy, from a fixed seed.
pub fn data(kind: &str, len: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    match kind {
        "random" => (0..len).map(|_| next() as u8).collect(),
        "text" => (0..len)
            .map(|_| b"abcdefgh  \n"[(next() % 11) as usize])
            .collect(),
        _ => (0..len)
            .map(|i| if (i / 4096) % 4 == 0 { next() as u8 } else { 0 })
            .collect(),
    }
}
