//! MySQL / MariaDB source for ferry.
//!
//! This crate answers `ferry plan` for a MySQL or MariaDB source and is the
//! MariaDB source of `ferry run` ([`source::MySqlSource`]):
//!
//! - [`connect`]: a connection from the configured endpoint (TLS, redacted
//!   errors classified transient / needs-operator), server [`connect::Flavor`].
//! - [`catalog`]: the selected tables with columns, primary keys, engines and
//!   row estimates from `information_schema`, as [`ferry_core::TableSchema`]s.
//! - [`typemap`]: the documented MySQL → PostgreSQL type table.
//! - [`preflight`]: binlog settings, privileges, retention and GTID checks and
//!   the table plan ([`plan`]).
//!
//! - [`binlog`]: the row-based binlog decoder (live replication stream as a
//!   registered replica, or binlog files) turning binlog events into ferry
//!   `Begin`/`Change`/`Commit` events with binlog positions and GTID sets.
//!
//! - [`snapshot`]: the consistent full-load snapshot (MariaDB `START
//!   TRANSACTION WITH CONSISTENT SNAPSHOT` at an exact binlog position),
//!   rows converted with the value rules of [`binlog::value`].
//! - [`source`]: all of it behind the source seam (`ferry_core::source`),
//!   with the target DDL ([`ddl`]), the change stream ([`changes`]), the
//!   schema changes it carries ([`schema_change`]) and the cutover
//!   ([`cutover`]).

pub mod binlog;
pub mod catalog;
pub mod changes;
pub mod connect;
pub mod cutover;
pub mod ddl;
pub mod keys;
pub mod overrides;
pub mod preflight;
pub mod schema_change;
pub mod snapshot;
pub mod source;
pub mod typemap;

pub use preflight::plan;
