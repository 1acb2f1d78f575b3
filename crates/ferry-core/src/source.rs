//! The source seam: what a source database must do for `ferry run`.
//!
//! The pipeline in the `ferry` binary is generic over [`Source`] and holds
//! no source SQL: PostgreSQL implements these traits in `ferry-postgres`,
//! and every other source (MySQL/MariaDB, SQLite, the in-memory source the
//! tests script) plugs in the same way. One change travels
//!
//! ```text
//! Source::changes ──Event<P>──▶ bounded channel ──▶ applier (ferry-apply)
//!      ▲                                              │ data + checkpoint,
//!      └──────────── ChangeHandle::ack(P) ◀───────────┘ one target txn
//! ```
//!
//! The traits, by phase:
//!
//! - schema and load: [`Source::catalog`] (the selected tables),
//!   [`Source::prepare_capture`] and [`Source::start_capture`] (start
//!   recording changes and take a
//!   consistent [`Snapshot`] at the same position), [`Source::catalog_at`]
//!   (the tables as the snapshot sees them), [`Source::target_schema`]
//!   (the DDL the target gets before and after the load),
//!   [`Source::plan_chunks`], and [`SnapshotReader::read`] per chunk;
//!   [`Source::new_snapshot`] when an interrupted load resumes;
//!   [`Source::identity`] recorded with the checkpoint and compared on
//!   every resume;
//! - streaming: [`Source::changes`] from a position, acknowledged through
//!   [`ChangeHandle::ack`] only after the target committed;
//! - watching: [`Probe`] (head position, heartbeats, retention) and
//!   [`Source::supervise`] for what the log cannot carry;
//! - cutover: [`Cutover`] (fence, final position, sequences, row counts)
//!   and [`Source::release_capture`].
//!
//! Every method returns the shared [`Error`], classified transient (the
//! pipeline reconnects and resumes from the target's state) or operator
//! (the run stops with the fix).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::change::{Event, Row};
use crate::config::Endpoint;
use crate::error::Error;
use crate::position::Position;
use crate::schema::{TableId, TableSchema};

/// A boxed stream of `T`s, `Send`, owning what it reads.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Error>> + Send + 'static>>;

/// A boxed `Send` future, for hooks handed across the seam.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One selected source table.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub schema: TableSchema,
    /// Planner estimate, for progress; `None` when the source has none.
    pub row_estimate: Option<u64>,
    /// Size in bytes (PostgreSQL: heap and TOAST on disk; SQLite: its
    /// values, estimated from sampled rows), for loading the largest tables
    /// first; `None` when the source does not say.
    pub bytes: Option<u64>,
}

/// What [`Source::catalog`] returns: the selected tables, plus whatever the
/// source keeps for planning (its own type).
pub trait Catalog: Send + Sync + 'static {
    fn tables(&self) -> Vec<SourceTable>;
}

/// One unit of the full load: a range of one table, copied and marked done
/// in one target transaction. Saved in the target's load plan so that a
/// resumed load copies exactly the same ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The selected table the rows belong to.
    pub table: TableId,
    /// The relation rows are read from and written to (a partition, or the
    /// table itself).
    pub relation: TableId,
    pub index: usize,
    pub total: usize,
    /// The source's own range condition (e.g. a ctid or key range), `None`
    /// for the whole relation. Only the source that planned it reads it.
    pub predicate: Option<String>,
    /// Read the relation without its inheritance children.
    pub only: bool,
}

/// Values a source's policy replaced in the chunk a [`SnapshotReader`]
/// read last, per column (MySQL/MariaDB: zero and partial dates loaded as
/// NULL under `mysql.zero_dates = "null"`): complete once that chunk's
/// data stream has ended, when the loader writes them into the chunk's
/// state row in the chunk's own target transaction (so a chunk loaded
/// again replaces its counts instead of adding to them). Cheap to clone:
/// the reader and its reading task share it.
#[derive(Debug, Clone, Default)]
pub struct ChunkReplaced(Arc<std::sync::Mutex<BTreeMap<String, u64>>>);

impl ChunkReplaced {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forget the previous chunk's counts (a new chunk's read starts).
    pub fn reset(&self) {
        self.lock().clear();
    }

    /// `n` values of `column` replaced in the chunk.
    pub fn add(&self, column: &str, n: u64) {
        *self.lock().entry(column.to_owned()).or_default() += n;
    }

    /// The chunk's counts, by column; empty afterwards.
    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.lock())
    }
}

/// One column's count of values a source's policy replaced, as the state
/// schema holds it (committed with the data: see [`ChunkReplaced`] and
/// [`crate::Event::Replaced`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnCount {
    /// `schema.table` (MySQL: `database.table`).
    pub table: String,
    pub column: String,
    /// Values replaced in the load.
    pub load: u64,
    /// Values replaced in the change stream.
    pub stream: u64,
}

/// Ends the [`PostStatement::kind`] of a statement that waits until
/// catch-up has passed the stream's start (the position where the target
/// is one consistent state of the source), e.g. `UNIQUE INDEX AFTER
/// CATCH-UP`: after a watermark load ([`Snapshot::chunk_resumable`]) the
/// rows are not one state before then, so a unique value the application
/// moved between rows during the load can be held by two rows.
pub const AFTER_CATCH_UP: &str = " AFTER CATCH-UP";

/// Whether a post-data statement of `kind` is built after catch-up
/// ([`AFTER_CATCH_UP`]) instead of right after the load.
pub fn after_catch_up(kind: &str) -> bool {
    kind.ends_with(AFTER_CATCH_UP)
}

/// One post-data statement (index, constraint, trigger, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostStatement {
    /// `INDEX`, `CONSTRAINT`, `FK CONSTRAINT`, `TRIGGER`, …; ending in
    /// [`AFTER_CATCH_UP`] when built after catch-up, written against the
    /// tables' target names (renames are done by then).
    pub kind: String,
    pub name: String,
    pub sql: String,
}

/// The DDL the target gets: tables before the load, the rest after it.
#[derive(Debug, Clone, Default)]
pub struct TargetSchema {
    /// Types, tables, sequences: run in the schema transaction.
    pub pre_data: String,
    /// `SET …` lines every post-data session runs first.
    pub post_preamble: String,
    /// Independent builds (indexes, keys): run several at a time.
    pub post_parallel: Vec<PostStatement>,
    /// Everything else, in order, after those.
    pub post_sequential: Vec<PostStatement>,
}

/// The rows of one chunk.
pub enum ChunkData {
    /// PostgreSQL binary COPY bytes, passed through to the target as is.
    BinaryCopy(BoxStream<Bytes>),
    /// Rows of values in the table's column order.
    Rows(BoxStream<Row>),
    /// PostgreSQL COPY text-format bytes of whole rows (tab-separated
    /// columns in the table's column order, `\N` for NULL, each row ended
    /// by a newline: [`crate::copy_text`]), encoded by the source itself
    /// for a table ferry created ([`SnapshotReader::read_copy_text`]).
    TextCopy(BoxStream<Bytes>),
}

impl std::fmt::Debug for ChunkData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkData::BinaryCopy(_) => "ChunkData::BinaryCopy",
            ChunkData::Rows(_) => "ChunkData::Rows",
            ChunkData::TextCopy(_) => "ChunkData::TextCopy",
        })
    }
}

/// A consistent cut of the source, at [`Snapshot::position`]: the load
/// reads every chunk from it, and the change stream starts there. A
/// watermark snapshot ([`Snapshot::chunk_resumable`]) instead reads each
/// chunk at its own moment after `position`.
pub trait Snapshot: Send + Sync + 'static {
    type Position: Position;
    type Reader: SnapshotReader;

    /// Every transaction committed before this position is in the
    /// snapshot; every later one is in the change stream.
    fn position(&self) -> Self::Position;

    /// A new reading session of this snapshot (one per load worker).
    fn reader(&self) -> impl Future<Output = Result<Self::Reader, Error>> + Send;

    /// Let the snapshot go once the load is done.
    fn release(self) -> impl Future<Output = ()> + Send;

    /// Whether chunks are read at different moments, each in a short
    /// transaction of its own, all after [`Snapshot::position`] (the low
    /// watermark): replaying the change stream from that position over
    /// them (full row images, applied as keyed upserts and deletes) brings
    /// every table to one state, so an interrupted load keeps its finished
    /// chunks and reads only the missing ones, with no new position.
    fn chunk_resumable(&self) -> bool {
        false
    }
}

/// One session reading a [`Snapshot`].
pub trait SnapshotReader: Send + 'static {
    /// The rows of `chunk`; `schema` gives the columns in target order.
    fn read(
        &mut self,
        chunk: &Chunk,
        schema: &TableSchema,
    ) -> impl Future<Output = Result<ChunkData, Error>> + Send;

    /// The rows of `chunk` for a table ferry created, whose columns have
    /// exactly the types of `schema` (no conversion to an existing table's
    /// types): a source that can encode its values as COPY text straight
    /// from its own rows returns [`ChunkData::TextCopy`] and skips building
    /// a [`Row`] per row. Default: [`SnapshotReader::read`].
    fn read_copy_text(
        &mut self,
        chunk: &Chunk,
        schema: &TableSchema,
    ) -> impl Future<Output = Result<ChunkData, Error>> + Send {
        self.read(chunk, schema)
    }

    /// Where this reader counts the values its source's policy replaced in
    /// the chunk read last ([`ChunkReplaced`]); `None` (the default): the
    /// source replaces nothing.
    fn replaced(&self) -> Option<ChunkReplaced> {
        None
    }
}

/// Run on every event before it is sent; may change or drop it.
pub type EventMap<P> = Box<dyn FnMut(Event<P>) -> Option<Event<P>> + Send>;

/// The receiving end of a change stream.
pub type Events<P> = mpsc::Receiver<Event<P>>;

/// How [`Source::changes`] is to deliver events.
pub struct ChangeOptions<P> {
    /// Bytes of events ([`crate::size::ApproxBytes`]) the channel may hold.
    pub channel_bytes: usize,
    /// A source transaction larger than this is spilled to disk (sources
    /// that must hold a whole transaction before sending it).
    pub spill_threshold: usize,
    /// Run on every event before it is sent: may change or drop it (the
    /// pipeline records received transactions here).
    pub map: Option<EventMap<P>>,
}

impl<P> std::fmt::Debug for ChangeOptions<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeOptions")
            .field("channel_bytes", &self.channel_bytes)
            .field("spill_threshold", &self.spill_threshold)
            .field("map", &self.map.is_some())
            .finish()
    }
}

/// The running change stream.
pub trait ChangeHandle<P: Position>: Send + Sync + 'static {
    /// Everything up to `position` is committed in the target: the source
    /// may forget it. Never called with more than was applied.
    fn ack(&self, position: P);

    /// Stop reading; the error the stream ended with, if any.
    fn shutdown(self) -> impl Future<Output = Result<(), Error>> + Send;
}

/// How much log the source keeps for ferry (a replication slot, retained
/// binlogs, the SQLite change log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// What holds it (slot name, log table).
    pub name: String,
    pub retained_bytes: Option<u64>,
    /// The source's own word for its state (e.g. `reserved`, `lost`).
    pub status: Option<String>,
}

/// A monitoring session on the source.
pub trait Probe<P: Position>: Send + 'static {
    /// The newest position the source has written.
    fn head(&mut self) -> impl Future<Output = Result<P, Error>> + Send;

    /// Write a heartbeat into the change log and return its position, so
    /// that lag keeps being measured while the application is idle; `None`
    /// when the source cannot.
    fn heartbeat(&mut self) -> impl Future<Output = Result<Option<P>, Error>> + Send;

    /// What the source keeps for ferry.
    fn retention(&mut self) -> impl Future<Output = Result<Option<Retention>, Error>> + Send;

    /// The session is gone: open a new probe.
    fn is_closed(&self) -> bool;
}

/// One sequence of the carried tables and its value on the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceValue {
    pub id: TableId,
    /// Table and column that own it; renames of the table carry it along.
    pub owned_by: Option<(TableId, String)>,
    pub last_value: i64,
    pub is_called: bool,
}

/// The source's part of a cutover.
pub trait Cutover<P: Position>: Send + 'static {
    /// What [`Cutover::fence`] does, for a dry run.
    fn fence_description(&self) -> String;

    /// Stop every write on the source (and make sure none is still
    /// finishing) so that no change can follow the final position.
    fn fence(&mut self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Undo [`Cutover::fence`] after a failed cutover.
    fn unfence(&mut self) -> impl Future<Output = Result<(), Error>> + Send;

    /// A position past every commit made so far, that the change stream
    /// is sure to deliver (also on an idle source).
    fn final_position(&mut self) -> impl Future<Output = Result<P, Error>> + Send;

    /// The sequences of the carried tables with their values; any that
    /// cannot be read is an error naming it, never a skip.
    fn sequences(&mut self) -> impl Future<Output = Result<Vec<SequenceValue>, Error>> + Send;

    /// Exact row count of one carried table.
    fn count_rows(&mut self, table: &TableId) -> impl Future<Output = Result<u64, Error>> + Send;
}

/// What [`Source::release_capture`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// ferry's capture (slot, publication) was dropped.
    pub dropped: bool,
    /// What was done and what is left to the operator, for the record.
    pub note: String,
}

/// What the pipeline hands a [`Source::supervise`] task.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // holds closures
pub struct SuperviseContext<P> {
    /// (source, target) names of the carried tables.
    pub carried: Vec<(TableId, TableId)>,
    pub target: Endpoint,
    /// Everything up to this position is applied.
    pub applied: Arc<dyn Fn() -> Option<P> + Send + Sync>,
    /// Show a problem as the status error (also log it).
    pub report: Arc<dyn Fn(String) + Send + Sync>,
}

/// A source database, as `ferry run` drives it.
pub trait Source: Send + Sync + Sized + 'static {
    type Position: Position;
    type Catalog: Catalog;
    type Snapshot: Snapshot<Position = Self::Position>;
    type Changes: ChangeHandle<Self::Position>;
    type Probe: Probe<Self::Position>;
    type Cutover: Cutover<Self::Position>;

    /// The selected tables, read now.
    fn catalog(&self) -> impl Future<Output = Result<Self::Catalog, Error>> + Send;

    /// Which server this is, as text recorded on the target when capture
    /// starts (MySQL `server_uuid`, MariaDB `server_id` and GTID domain);
    /// a run resuming against a source that answers differently stops with
    /// "a new full load is needed", as its log positions do not continue
    /// ferry's checkpoint. `None` (the default): nothing to check (the
    /// source's own capture, e.g. a replication slot, already fails then).
    fn identity(&self) -> impl Future<Output = Result<Option<String>, Error>> + Send {
        std::future::ready(Ok(None))
    }

    /// Before [`Source::start_capture`]: make sure nothing of another
    /// migration is in the way. `after_interrupted` says a previous attempt
    /// got as far as starting capture and died before the target recorded
    /// it, so what it left is ferry's own and may be replaced; otherwise
    /// anything found is an operator error naming it.
    fn prepare_capture(
        &self,
        after_interrupted: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Start recording changes (slot, binlog coordinates, change log) and
    /// take a snapshot at the same position.
    fn start_capture(
        &self,
        catalog: &Self::Catalog,
    ) -> impl Future<Output = Result<Self::Snapshot, Error>> + Send;

    /// A new snapshot while capture runs (a resumed load reloads tables
    /// from it; their changes before its position are skipped).
    fn new_snapshot(&self) -> impl Future<Output = Result<Self::Snapshot, Error>> + Send;

    /// The selected tables as `snapshot` sees them, read right after
    /// [`Source::start_capture`]: the schema and the load then describe
    /// the snapshot, and every later schema change is in the change stream.
    /// `None` (the default): `catalog`, read before capture, stands.
    fn catalog_at(
        &self,
        snapshot: &Self::Snapshot,
        catalog: &Self::Catalog,
    ) -> impl Future<Output = Result<Option<Self::Catalog>, Error>> + Send {
        let _ = (snapshot, catalog);
        std::future::ready(Ok(None))
    }

    /// The DDL for the target, as of `snapshot`.
    fn target_schema(
        &self,
        catalog: &Self::Catalog,
        snapshot: &Self::Snapshot,
    ) -> impl Future<Output = Result<TargetSchema, Error>> + Send;

    /// The load's chunks of every selected table, of `chunk_rows` rows.
    /// `split_for`: `Some(workers)` when `load.chunk_rows` is not set, the
    /// number of chunks the load copies at once (a source whose range reads
    /// cost more than whole-table reads may split only what those workers
    /// need to stay busy); `None`: split by `chunk_rows` as configured.
    fn plan_chunks(
        &self,
        catalog: &Self::Catalog,
        chunk_rows: u64,
        split_for: Option<usize>,
    ) -> Vec<Chunk>;

    /// Changes committed after `from`, in commit order, into a bounded
    /// channel. Fails if the source can no longer serve `from` (its log
    /// was removed) rather than skip anything.
    fn changes(
        &self,
        catalog: &Self::Catalog,
        from: Self::Position,
        options: ChangeOptions<Self::Position>,
    ) -> impl Future<Output = Result<(Events<Self::Position>, Self::Changes), Error>> + Send;

    /// A monitoring session.
    fn probe(&self) -> impl Future<Output = Result<Self::Probe, Error>> + Send;

    /// Watch, until aborted, for source changes the log does not carry
    /// (e.g. a PostgreSQL partition detached); report each once.
    fn supervise(
        &self,
        context: SuperviseContext<Self::Position>,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// A session for the cutover.
    fn cutover(&self) -> impl Future<Output = Result<Self::Cutover, Error>> + Send;

    /// What [`Source::release_capture`] will do, for a dry run.
    fn release_plan(&self, keep: bool) -> String;

    /// After the cutover: stop capture for good (drop what ferry created,
    /// unless `keep`).
    fn release_capture(&self, keep: bool) -> impl Future<Output = Result<Released, Error>> + Send;
}

/// One key range `(lo, hi]` in the source's key order, as validation asks
/// for it. Bounds are key texts in key-column order, in the normal form of
/// [`crate::normalize`] (each source parses them back into its own
/// literals).
#[derive(Debug, Clone, Copy)]
pub struct KeyRange<'a> {
    pub lo: Option<&'a [String]>,
    pub hi: Option<&'a [String]>,
    /// Skip this many rows first.
    pub offset: u64,
    /// At most this many rows (`None`: all).
    pub limit: Option<u64>,
    /// Read the key columns only (the rest of each row is `Value::Null`).
    pub keys_only: bool,
}

/// Short consistent reads of key ranges of a source that cannot hash rows
/// itself (MySQL/MariaDB, SQLite), for `ferry validate`: validation hashes
/// the rows on ferry's side over their normalized text.
///
/// Order: rows come in key order, and text key columns in byte order of
/// their UTF-8 text (the order PostgreSQL's `COLLATE "C"` gives the
/// target), so both sides cut ranges at the same keys. Reads never lock
/// rows: the application's writers never wait for validation.
pub trait KeyReader<P: Position>: Send + 'static {
    /// Begin a short consistent read; every transaction committed before
    /// the returned position is visible in it, none after.
    fn begin(&mut self) -> impl Future<Output = Result<P, Error>> + Send;

    /// End the read [`KeyReader::begin`] started.
    fn end(&mut self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The source's position now (at or after every commit already made).
    fn position(&mut self) -> impl Future<Output = Result<P, Error>> + Send;

    /// The rows of `range`, in key order, values in `schema`'s column
    /// order and target types (the type mapping's conversion).
    fn range(
        &mut self,
        schema: &TableSchema,
        range: KeyRange<'_>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send;

    /// The rows whose keys are among `keys` (any order).
    fn rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<String>],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send;
}

/// A [`Source`] whose rows validation reads through a [`KeyReader`].
pub trait KeyReading: Source {
    type KeyReader: KeyReader<Self::Position>;

    /// A reading session for one validation.
    fn key_reader(&self) -> impl Future<Output = Result<Self::KeyReader, Error>> + Send;
}
