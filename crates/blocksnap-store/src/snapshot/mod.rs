//! Taking a snapshot of a disk, and reading one back: restore and diff.

pub(crate) mod catalog;
pub(crate) mod create;
pub(crate) mod diff;
pub(crate) mod direct;
pub(crate) mod pipeline;
pub(crate) mod restore;
pub(crate) mod source;
pub(crate) mod split;
pub(crate) mod target;
pub(crate) mod view;
