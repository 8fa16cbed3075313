//! Packs: the immutable objects that hold the chunks.

pub(crate) mod writer;
