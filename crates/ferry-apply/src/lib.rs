//! ferry-apply: the TARGET side of ferry (DESIGN.md §3, §5).
//!
//! Source-agnostic: PostgreSQL, MySQL and SQLite readers all feed it
//! [`ferry_core::Event<P>`]. The caller connects to the target (TLS per
//! sslmode lives in `ferry-postgres`) and hands over a `tokio_postgres::Client`.
//!
//! ```text
//!  full load:  source COPY bytes / Value rows ──▶ load ──▶ COPY FROM STDIN ─┐
//!                                                                          ▼
//!  CDC:  mpsc<Event<P>> ──▶ applier ──▶ fold ──▶ writer ──▶ target txn (+ checkpoint)
//!                             │                                   │
//!                             └──────── ack(P) after COMMIT ◀─────┘
//! ```
//!
//! - [`state`]: the `ferry` state schema in the target (checkpoint, tables,
//!   chunks, runs, events, lag history, pipeline phase); every table of it
//!   and its versioned migrations are in [`state::schema`].
//! - [`copy_text`]: COPY text encoding of values (loader and staging; in
//!   `ferry-core`, shared with sources that encode rows themselves).
//! - [`conversion`]: values converted to an existing target column's type.
//! - [`ddl`]: CREATE/ALTER TABLE for non-PostgreSQL sources.
//! - [`existing`]: target tables the application created, matched by name.
//! - [`load`]: bulk COPY loader (binary pass-through or encoded rows), chunk
//!   done-marks in the same transaction, parallel index builds.
//! - [`fold`]: pure per-key folding of a batch's changes.
//! - [`writer`]: set-wise apply of folded changes through staging tables
//!   ([`writer::sql`]: the statement texts).
//! - [`checkpoint`]: the durable position and restart skipping.
//! - [`applier`]: the CDC apply loop (whole transactions, flush policy,
//!   pause, snapshot skip, ack) and the one owner of the target transaction
//!   ([`applier::TargetTxn`]).
//! - [`preflight`]: target prerequisite checks for `ferry plan`.
//! - [`relation`]: a source Relation against the target table (schema drift).
//! - [`schema_sync`]: schema changes carried from a PostgreSQL source's
//!   event trigger, applied at their place in the stream.
//! - [`truncate`]: a source TRUNCATE on the target (`ONLY` each listed table).

pub mod applier;
pub mod checkpoint;
pub mod conversion;
pub use ferry_core::copy_text;
pub mod ddl;
mod error;
pub mod existing;
pub mod fold;
pub mod load;
pub mod preflight;
pub mod relation;
pub mod schema_sync;
pub mod state;
pub mod truncate;
pub mod writer;

pub use applier::{
    Adopt, Adopted, Applier, ApplierConfig, ApplyStats, FlushInput, RunOutcome, TargetTxn,
    should_flush, skip_for_snapshot,
};
pub use checkpoint::{Checkpoint, Failpoint, read_checkpoint, should_skip, write_checkpoint};
pub use error::{CopyFailure, FoldError, find_copy_failure, pg_error, value_refused};
pub use fold::{Barrier, Fold, RowOp};
pub use load::{LoadData, LoadProgress, LoadResult, LoadTarget, load_chunk, run_parallel};
pub use preflight::check_target;
pub use state::{Phase, StateStore, TableState};
pub use writer::Writer;
