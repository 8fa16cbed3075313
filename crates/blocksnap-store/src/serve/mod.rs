//! Serving snapshots to other programs: the NBD export.

pub(crate) mod nbd;
