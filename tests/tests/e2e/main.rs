//! End-to-end tests: one binary (one link) that drives the blocksnap binary on real disk images.
//! Each module is one area; `cargo test --test e2e MODULE::` runs one of them.

mod common;

mod accounts;
mod bench;
mod crash;
mod damage_and_access;
mod diff;
mod documents;
mod flags;
mod heal;
mod hostile_store;
mod images;
mod index_busy;
mod lifecycle;
mod locks;
mod messages;
mod migration;
mod multi_host;
mod nbd;
mod progress;
mod readonly;
mod recovery;
mod s3;
mod signals;
mod snapshot_restore;
mod sources;
mod store_modes;
mod tables;
mod tampering;
mod targets;
mod vm_sources;
mod vm_targets;
