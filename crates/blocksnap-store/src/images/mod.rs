//! Images (named sets of snapshots by device, with launch permissions) and copies between stores.

pub(crate) mod copy;
pub(crate) mod image;
pub(crate) mod launch;
pub(crate) mod sharing;
pub(crate) mod volumes;
