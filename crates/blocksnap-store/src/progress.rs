//! Progress is a trait the library calls; the CLI draws it.

/// Receives progress of long operations. Implementations must be cheap: `advance` is called
/// once per batch of chunks.
///
/// A phase counts what its work really is: a snapshot the data bytes it will read (holes are
/// known before and left out), `check --read-data` the bytes of the packs it reads, a restore
/// the bytes it writes. A phase whose work is a number of things (packs whose trailers are
/// read, snapshots marked) counts them with [`Progress::start_count`].
pub trait Progress: Sync {
    /// A phase starts; `total` bytes are expected (0 if unknown).
    fn start(&self, _phase: &str, _total: u64) {}
    /// A phase starts that counts `total` things, each called `unit` (`"packs"`); `advance`
    /// then counts things, not bytes.
    fn start_count(&self, phase: &str, total: u64, _unit: &'static str) {
        self.start(phase, total);
    }
    /// `bytes` more are done (or things, in a phase started with `start_count`).
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
