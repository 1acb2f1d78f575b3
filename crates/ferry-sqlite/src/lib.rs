//! SQLite source for ferry.
//!
//! Today this crate answers `ferry plan` for a SQLite file:
//!
//! - [`connect`]: opens the file read-only (ferry never writes the source
//!   file during planning).
//! - [`catalog`]: tables, columns (`PRAGMA table_xinfo`), primary keys,
//!   exact row counts and a value sample per table.
//! - [`typemap`]: declared type + sampled values → PostgreSQL type, with the
//!   rows whose values do not fit reported by rowid.
//! - [`preflight`]: file, integrity, journal-mode and key checks and the
//!   table plan ([`plan`]).
//!
//! rusqlite is blocking: the async entry point runs the work on
//! `tokio::task::spawn_blocking`. The snapshot reader (`snapshot`) and the
//! trigger-based change log (`changelog`) come next.

pub mod catalog;
pub mod connect;
pub mod preflight;
pub mod typemap;

pub use preflight::plan;
