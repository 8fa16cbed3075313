//! The store as a library, on the memory and fault backends: one test binary (one link).
//! `cargo test -p blocksnap-store --test library MODULE::` runs one area.

mod crash_lab;
mod support;

mod crash_points;
mod memory_access;
mod memory_check;
mod memory_images;
mod memory_index_objects;
mod memory_lifecycle;
mod memory_packs;
mod memory_parent;
mod memory_restore;
