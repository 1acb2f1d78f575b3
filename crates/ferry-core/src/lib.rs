//! The change model every ferry crate speaks.
//!
//! A source reader turns its log (pgoutput, binlog, SQLite change log) into
//! [`Event`]s: `Begin`, [`Change`]s, `Commit`, each commit carrying the source
//! [`Position`] of that transaction. The applier consumes events in order and
//! stores the position of the last applied commit in the target. Everything
//! here is plain data: no I/O, no async, no heavy dependencies.
//!
//! - [`value`]: typed column values, lossless for PostgreSQL targets.
//! - [`schema`]: table identity and table schemas (source and target types).
//! - [`change`]: row changes, transactions and the event stream.
//! - [`position`]: per-source log positions, ordered within one source and
//!   impossible to compare across sources (distinct types).
//! - [`ddl`]: schema changes carried in the stream (PostgreSQL event trigger).
//! - [`copy_text`]: PostgreSQL COPY text encoding of values.
//! - [`config`]: `ferry.toml` with `FERRY_*` overrides and a pure `validate()`.
//! - [`secret`]: redacting wrappers for passwords and connection URLs.
//! - [`plan`]: prerequisite checks and the table plan of `ferry plan`.
//! - [`error`]: the shared error type, classified by consequence.
//! - [`calendar`]: civil-date arithmetic (days ↔ year, month, day).
//! - [`duration`]: durations as operators write them (`5s`, `500ms`).
//! - [`source`]: the traits a source implements for `ferry run` (the seam).
//! - [`size`]: approximate bytes of values and events, the unit of every
//!   memory bound on the data path.

pub mod calendar;
pub mod change;
pub mod config;
pub mod copy_text;
pub mod ddl;
pub mod duration;
pub mod error;
pub mod normalize;
pub mod phase;
pub mod plan;
pub mod position;
pub mod schema;
pub mod secret;
pub mod size;
pub mod source;
pub mod value;

pub use change::{Change, Event, OldRow, Row, Transaction};
pub use error::{Error, ErrorClass, Result, sqlstate_class};
pub use phase::Phase;
pub use position::{ChangeLogSeq, GtidSet, Lsn, MySqlPosition, Position, SourceKind};
pub use schema::{Column, ReplicaIdentity, TableId, TableSchema};
pub use secret::{RedactedUrl, Secret};
pub use value::Value;
