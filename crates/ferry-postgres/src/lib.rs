//! ferry-postgres: the PostgreSQL source.
//!
//! - [`replication`]: a replication-protocol client on `postgres-protocol`
//!   (startup with `replication=database`, SCRAM/MD5, TLS, CopyBoth,
//!   keepalives and standby status updates).
//! - [`slot`]: publication and slot lifecycle (create with an exported
//!   snapshot, verify on resume, drop).
//! - [`decode`]: pgoutput (protocol v1 and v2) into `ferry_core::Event<Lsn>`,
//!   with typed values from the text tuple format.
//! - [`stream`]: the task that reads the slot, decodes and hands events to
//!   the applier over a bounded channel, reporting the acknowledged position.
//! - [`ddl_capture`]: event triggers that write schema changes into the WAL
//!   (`postgres.capture_ddl`); [`ddl_text`] reads `USING` out of the text.
//! - [`source`]: all of the above behind the source seam
//!   ([`ferry_core::source::Source`]) for the generic pipeline; [`partitions`]:
//!   the partition watch (what the log cannot carry).
//! - [`fallback`]: the way back after a cutover (reverse slot on the new
//!   database, replication-origin tagging and the echo filter).
//! - [`connect`], [`catalog`], [`snapshot`], [`dump`], [`preflight`]: the
//!   plain (non-replication) side: catalog reads, exported-snapshot full load,
//!   schema dump and prerequisite checks; [`schema_hold`] and
//!   [`snapshot_names`]: the schema copy and the load read the snapshot's
//!   schema although PostgreSQL resolves names in its current catalog.

pub mod catalog;
pub mod connect;
pub mod ddl_capture;
mod ddl_text;
pub mod decode;
pub mod dump;
pub mod fallback;
pub mod partitions;
pub mod preflight;
pub mod replication;
pub mod schema_hold;
pub mod slot;
pub mod snapshot;
pub mod snapshot_names;
pub mod source;
pub mod stream;
