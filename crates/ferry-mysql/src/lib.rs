//! MySQL / MariaDB source for ferry.
//!
//! Today this crate answers `ferry plan` for a MySQL or MariaDB source:
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
//! The consistent snapshot (`snapshot`) comes next and reuses `connect`,
//! `catalog` and the value rules of [`binlog::value`].

pub mod binlog;
pub mod catalog;
pub mod connect;
pub mod preflight;
pub mod typemap;

pub use preflight::plan;
