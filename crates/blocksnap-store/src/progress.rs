//! Progress is a trait the library calls; the CLI draws it.

/// Receives progress of long operations. Implementations must be cheap: `advance` is called
/// once per batch of chunks.
pub trait Progress: Sync {
    /// A phase starts; `total` bytes are expected (0 if unknown).
    fn start(&self, _phase: &str, _total: u64) {}
    /// `bytes` more are done.
    fn advance(&self, _bytes: u64) {}
    /// The phase is over.
    fn finish(&self) {}
    /// A note for the user (waiting for a lock, a skipped file).
    fn message(&self, _text: &str) {}
}

/// Progress that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
