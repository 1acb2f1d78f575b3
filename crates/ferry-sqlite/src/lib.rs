//! SQLite source for ferry.
//!
//! Planning a SQLite file (`ferry plan`):
//!
//! - [`connect`]: opens the file read-only (ferry never writes the source
//!   file during planning).
//! - [`catalog`]: tables, columns (`PRAGMA table_xinfo`), primary keys,
//!   exact row counts and a value sample per table.
//! - [`typemap`]: declared type + sampled values → PostgreSQL type, with the
//!   rows whose values do not fit reported by rowid.
//! - [`preflight`]: file, integrity, journal-mode, write-access and key
//!   checks, what change capture installs (or the state of an installed
//!   one), and the table plan ([`plan`]).
//!
//! Change data capture (what `ferry run` drives through [`source`]):
//!
//! - [`capture`]: installs / removes the change-log table and the triggers
//!   that fill it; schema fingerprints, ADD COLUMN carried, any other
//!   schema change an operator error.
//! - [`snapshot`]: every captured table's rows and the change-log position
//!   read in the same read transaction (gap-free hand-off); through a
//!   `VACUUM INTO` copy in rollback-journal mode.
//! - [`reader`]: entries after a position → `Event<ChangeLogSeq>`; trim
//!   after acknowledgement; lag in entries and seconds.
//! - [`fence`]: the write lock held through the cutover.
//! - [`value`]: SQLite values → typed ferry values by the chosen type.
//!
//! `ferry run`: [`source::SqliteSource`] puts these behind the source seam
//! ([`ferry_core::source::Source`]) for the generic pipeline.
//!
//! rusqlite is blocking: the async entry point runs the work on
//! `tokio::task::spawn_blocking`; the capture modules are blocking and
//! belong on a dedicated thread or `spawn_blocking` as well.

pub mod capture;
pub mod catalog;
pub mod connect;
pub mod fence;
pub mod preflight;
pub mod reader;
pub mod snapshot;
pub mod source;
pub mod typemap;
pub mod value;

pub use preflight::plan;
