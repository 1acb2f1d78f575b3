//! The `ferry` binary's library: the CLI's commands and the generic
//! pipeline, usable from tests with any [`ferry_core::source::Source`]
//! (see [`pipeline::run_source`] and `docs/architecture.md`).

pub mod control;
pub mod operations;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod shutdown;
pub mod terminal;
pub mod validate;

/// Outcome of a command, mapped to the process exit code.
#[derive(Debug)]
pub enum Outcome {
    Ok,
    /// A prerequisite or precondition failed; the output said the fix.
    Refused,
}
