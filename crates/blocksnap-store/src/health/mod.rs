//! Health: `check` finds every inconsistency, `repair` heals what it can.

pub(crate) mod check;
pub(crate) mod repair;
