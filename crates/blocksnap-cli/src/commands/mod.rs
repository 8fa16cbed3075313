//! One file per command group: its clap definitions (the flags and help texts of its
//! subcommands) and its glue: turn the arguments into store options, call one store function,
//! render the report as text or JSON through [`crate::Ctx::output`].
//!
//! The top-level list of commands, with the one-line help of each, is `crate::Command`.

pub(crate) mod account;
pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod image;
pub(crate) mod init;
pub(crate) mod key;
pub(crate) mod migrate;
pub(crate) mod policy;
pub(crate) mod prune;
pub(crate) mod recovery;
pub(crate) mod repair;
pub(crate) mod serve;
pub(crate) mod snapshot;
pub(crate) mod trash;
pub(crate) mod unlock;
pub(crate) mod volume;
