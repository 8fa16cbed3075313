//! What happens to snapshots over time: policies that take and expire them, the trash, and prune.

pub(crate) mod policy;
pub(crate) mod prune;
pub(crate) mod trash;
