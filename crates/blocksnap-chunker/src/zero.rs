//! Zero detection: all-zero chunks and long zero runs become holes and are never stored.

/// Zero runs are found in whole blocks of this size, aligned to the volume's start.
pub const ZERO_BLOCK: usize = 4096;

/// True when every byte of `data` is zero.
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// Finds runs of zero bytes in `data` of at least `min_run` bytes that consist of whole
/// [`ZERO_BLOCK`]-sized blocks aligned to the volume (`offset` is `data`'s position in it).
/// Returns `(start, len)` pairs relative to `data`, sorted and disjoint. A run that touches the
/// end of `data` is included when long enough; the caller decides how to join runs across buffers.
pub fn zero_runs(data: &[u8], offset: u64, min_run: usize) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let first = ((ZERO_BLOCK as u64 - offset % ZERO_BLOCK as u64) % ZERO_BLOCK as u64) as usize;
    let mut pos = first;
    let mut run_start: Option<usize> = None;
    while pos + ZERO_BLOCK <= data.len() {
        let zero = block_is_zero(&data[pos..pos + ZERO_BLOCK]);
        match (zero, run_start) {
            (true, None) => run_start = Some(pos),
            (false, Some(s)) => {
                if pos - s >= min_run {
                    runs.push((s, pos - s));
                }
                run_start = None;
            }
            _ => {}
        }
        pos += ZERO_BLOCK;
    }
    if let Some(s) = run_start {
        if pos - s >= min_run {
            runs.push((s, pos - s));
        }
    }
    runs
}

fn block_is_zero(block: &[u8]) -> bool {
    // Most data blocks differ from zero in their first bytes: check those before the rest.
    is_zero(&block[..64]) && is_zero(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_zero() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 100]));
        let mut v = vec![0u8; 100];
        v[99] = 1;
        assert!(!is_zero(&v));
        v[99] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn finds_aligned_runs() {
        let mut data = vec![1u8; 64 * 1024];
        data[8192..8192 + 16384].fill(0);
        data[40000..40010].fill(0);
        assert_eq!(zero_runs(&data, 0, 8192), vec![(8192, 16384)]);
        assert_eq!(zero_runs(&data, 0, 32768), vec![]);
        // With the buffer shifted by 100 bytes in the volume, only whole aligned blocks count.
        assert_eq!(zero_runs(&data[100..], 100, 4096), vec![(8092, 16384)]);
        assert_eq!(zero_runs(&data[200..], 0, 4096), vec![(8192, 12288)]);
    }

    #[test]
    fn run_at_the_end_is_reported() {
        let mut data = vec![1u8; 32 * 1024];
        data[16384..].fill(0);
        assert_eq!(zero_runs(&data, 0, 4096), vec![(16384, 16384)]);
    }
}
