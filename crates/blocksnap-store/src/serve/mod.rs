//! Serving snapshots to other programs: the NBD export.

pub(crate) mod cache;
pub(crate) mod nbd;
