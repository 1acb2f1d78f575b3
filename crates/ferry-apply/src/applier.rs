//! The CDC applier: batches whole source transactions into target
//! transactions (DESIGN.md §1 invariants 1, 2, 4 and §5).
//!
//! Consumes: [`Event<P>`]s in source commit order from a BOUNDED
//! `tokio::sync::mpsc::Receiver` (a slow target slows the reader). Emits:
//! target transactions, each holding whole source transactions plus the
//! checkpoint of the last one, and `ack(position)` calls made only after the
//! target COMMIT succeeded.
//!
//! The stages, in the order an event passes them:
//!
//! ```text
//!  mpsc<Event<P>> ─▶ intake ─▶ snapshot_skip ─▶ batch (fold) ─▶ writer ─▶ txn (+ checkpoint, COMMIT) ─▶ ack(P)
//! ```
//!
//! - `intake`: the channel plus events received ahead while the target
//!   works; `ahead`: those of them folded into the next batch meanwhile.
//! - [`snapshot_skip`]: drops changes of tables (re)loaded from a snapshot
//!   that already holds them ([`Applier::skip_before_snapshots`]).
//! - [`batch`]: the batch being built and the flush policy
//!   ([`should_flush`]).
//! - [`crate::writer`]: set-wise SQL for the folded changes.
//! - [`txn`]: the one owner of the target transaction ([`TargetTxn`]):
//!   `BEGIN`, savepoints, the checkpoint write, `COMMIT`, heartbeat
//!   checkpoints.
//!
//! Guarantees:
//! - A batch closes at a transaction boundary once it holds
//!   `apply.batch_rows` row changes, or half the applier's byte share
//!   (`buffer_bytes`, a quarter of `apply.max_buffered_bytes`) of row data,
//!   or `apply.batch_ms` passed since it started ([`should_flush`]); a
//!   source transaction is never split across checkpoints. A batch whose
//!   transactions changed no row (a heartbeat's, ones the load's snapshot
//!   holds) closes at once when no batch committed for `apply.batch_ms`:
//!   it only moves the position, which a catch-up may be waiting for.
//! - A transaction larger than `batch_rows` changes or half of
//!   `buffer_bytes` is applied in several steps of ONE target transaction
//!   (behind a savepoint), a piece at a time, and committed only after its
//!   `Commit`: memory stays bounded in bytes, whatever the row size.
//! - While the target executes a batch (and each step of a large
//!   transaction), up to `batch_rows` further events and `buffer_bytes`
//!   of row data are received ahead (`intake`), so the source
//!   reader, decoder and walsender keep working instead of stalling on a
//!   full channel. While a batch commits, the next batch's plain
//!   transactions are folded as they arrive (`ahead`: the applier's work
//!   overlaps the target's); from the first event that needs the target
//!   on, the events wait in a queue, handled in order before the channel
//!   is read again. Memory (sizes per [`ApproxBytes`]): the batch and the
//!   open transaction together about `buffer_bytes`, what is received
//!   ahead (folded or queued) `buffer_bytes`.
//! - `Heartbeat` with nothing pending moves the checkpoint (at most once per
//!   second) and is acknowledged after that commit.
//! - Pause ([`ApplierConfig::pause`], the same for every source): at the
//!   next source transaction boundary the applier commits and acknowledges
//!   what it holds, then reads and applies nothing until the switch goes
//!   back to `false` (a source transaction open when the switch flips is
//!   completed first: no target transaction stays open while paused, and
//!   nothing is received ahead meanwhile). The bounded channel fills and the source reader waits
//!   on it (keeping its connection alive); lag grows.
//! - Restart: the checkpoint is read at [`Applier::new`]; transactions with
//!   commit position ≤ checkpoint are skipped ([`should_skip`]), also large
//!   ones (their savepoint is rolled back).
//! - Shutdown: the in-flight batch of complete transactions is committed and
//!   acknowledged; an incomplete source transaction is dropped (the source
//!   resends it from the checkpoint).
//! - A table the source starts publishing mid-stream (PostgreSQL DDL
//!   capture: a key or `REPLICA IDENTITY FULL` added to a table created
//!   without one, `CREATE TABLE AS`, `SET LOGGED`) already holds rows the
//!   stream never carried: in the target transaction of the schema change
//!   that published it, an [`Adopt`] hook copies it from a new snapshot of
//!   the source and the table joins [`Applier::skip_before_snapshots`] at
//!   that snapshot's position, so the changes the copy holds are dropped and
//!   the later ones applied (exactly once across a crash: the copy, its
//!   snapshot position and the checkpoint commit together). A schema change
//!   of a table that commits before the position of the snapshot the table
//!   was copied from (a load resumed from a later snapshot, a change racing
//!   the copy) copies it again, after that change: the copy always has the
//!   shape the target has when it is taken.
//! - Values a source policy replaced ([`Event::Replaced`], e.g. MySQL zero
//!   dates written as NULL) are counted per source column in the state
//!   schema ([`TargetTxn::count_replaced`]) in the target transaction that
//!   holds their source transaction, and not for a transaction skipped
//!   (already applied, or held by its table's snapshot): exact across
//!   crashes and replays.
//! - Failure injection for crash tests: see [`crate::checkpoint::Failpoint`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_core::config::{ApplyConfig, TablesConfig};
use ferry_core::size::ApproxBytes;
use ferry_core::value::Timestamp;
use ferry_core::{Error, Event, Position, Result, TableId, TableSchema};
use futures_util::FutureExt;
use tokio::sync::mpsc::Receiver;
use tokio::sync::watch;
use tokio::time::{Instant as TokioInstant, sleep_until};
use tokio_postgres::Client;
use tracing::{debug, info};

use crate::checkpoint::{read_checkpoint, should_skip};
use crate::fold::Fold;
use crate::state::StateStore;
use crate::writer::Writer;

mod ahead;
pub mod batch;
mod intake;
pub mod snapshot_skip;
pub mod txn;

pub use batch::{ApplyStats, FlushInput, should_flush};
pub use snapshot_skip::skip_for_snapshot;
pub use txn::TargetTxn;

use ahead::Ahead;
use batch::{Batch, TxnItem};
use intake::{Intake, switched};

/// Minimum time between two heartbeat-only checkpoint writes.
const HEARTBEAT_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Applier settings.
#[derive(Debug, Clone)]
pub struct ApplierConfig {
    /// Checkpoint row name (one per source stream).
    pub stream: String,
    pub batch_rows: usize,
    pub batch_ms: u64,
    /// Bytes of row data ([`ApproxBytes`]) the intake queue may hold, and
    /// the open source transaction plus the batch: a share of
    /// `apply.max_buffered_bytes`.
    pub buffer_bytes: usize,
    /// ALTER target tables on schema changes (non-PostgreSQL sources).
    pub apply_ddl: bool,
    /// Apply under `session_replication_role = replica` (default); off in
    /// no-replica-role mode (see [`crate::preflight::replica_role_allowed`]).
    pub replica_role: bool,
    /// The target tables are the application's (`[target_tables] mode =
    /// "existing"`): their extra columns are not drift
    /// ([`crate::relation::keep_extra_target_columns`]).
    pub existing_tables: bool,
    /// The operator's pause switch: while it reads `true`, the applier
    /// commits what it holds at the next source transaction boundary and
    /// applies nothing more (see the module docs). `None`: never paused; a
    /// switch whose sender is gone reads as not paused.
    pub pause: Option<watch::Receiver<bool>>,
    /// While it reads `true`, whether a table is applied in source order
    /// ([`crate::writer::Writer::source_order`]) is decided afresh each
    /// time it enters a batch, after locking it (`ROW EXCLUSIVE`, held
    /// until the batch commits) in the batch's transaction: set by a
    /// pipeline that builds unique indexes while the applier runs (after a
    /// watermark load's catch-up) and cleared once they exist. An index
    /// build waits for a batch that decided to fold the table, and a batch
    /// deciding after the build sees the index, so no batch folds across
    /// keys of a table whose unique index appeared under it.
    pub recheck_order: Option<Arc<AtomicBool>>,
}

impl ApplierConfig {
    pub fn new(stream: impl Into<String>, apply: &ApplyConfig, apply_ddl: bool) -> Self {
        ApplierConfig {
            stream: stream.into(),
            batch_rows: apply.batch_rows.max(1),
            batch_ms: apply.batch_ms,
            buffer_bytes: apply.buffer_share(),
            apply_ddl,
            replica_role: true,
            existing_tables: false,
            pause: None,
            recheck_order: None,
        }
    }
}

/// Copies a table that the source started publishing mid-stream (see the
/// module docs) into the target, inside the applier's open transaction.
pub trait Adopt<P>: Send + Sync + std::fmt::Debug {
    /// Take a new snapshot of the source; when `source` has there the
    /// `columns` (name, type; generated ones aside) the schema change just
    /// applied gave it, replace the rows of `target` by every row of the
    /// snapshot, through `client`; otherwise (the table changed again
    /// before the snapshot: that change is still to come in the stream,
    /// and copies the table then) empty `target`. Either way record the
    /// snapshot's position for the table (ferry's `table_snapshots`, in the
    /// same transaction) and return it.
    fn adopt<'a>(
        &'a self,
        client: &'a Client,
        source: &'a TableId,
        target: &'a TableId,
        columns: &'a [(String, String)],
    ) -> ferry_core::source::BoxFuture<'a, Result<Adopted<P>>>;
}

/// What [`Adopt::adopt`] did.
#[derive(Debug, Clone)]
pub struct Adopted<P> {
    /// The snapshot's position: the table's changes in transactions that
    /// commit before it are in the copy.
    pub position: P,
    /// Rows copied; `None` when the table's columns had changed again by
    /// the snapshot (emptied, waiting for that change).
    pub rows: Option<u64>,
}

/// Why [`Applier::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The shutdown future completed.
    Shutdown,
    /// The event channel closed.
    SourceClosed,
}

/// The CDC applier for one source stream.
#[derive(Debug)]
pub struct Applier<P: Position> {
    txn: TargetTxn,
    writer: Writer,
    cfg: ApplierConfig,
    stats: Arc<ApplyStats>,
    schemas: foldhash::HashMap<TableId, Arc<TableSchema>>,
    /// Per table, the position of the snapshot it was (re)loaded from.
    snapshots: HashMap<TableId, P>,
    checkpoint: Option<P>,
    last_heartbeat_write: Option<Instant>,
    /// When the last batch committed ([`FlushInput::since_flush`]).
    last_flush: Option<Instant>,
    pending_heartbeat: Option<(P, Timestamp)>,
    batch: Batch<P>,
    /// Carried schema changes ([`crate::schema_sync`]).
    schema_sync: crate::schema_sync::SchemaSync,
    /// A schema change was applied in the batch: commit at the end of its
    /// source transaction (a new enum label is usable only after COMMIT).
    ddl_in_batch: bool,
    /// Copies tables the source starts publishing mid-stream.
    adopter: Option<Arc<dyn Adopt<P>>>,
    /// A table was copied by a schema change of the open source
    /// transaction: its later changes in it are in the copy.
    copied_in_txn: bool,
}

impl<P: Position> Applier<P> {
    /// Ensure the state schema and read the checkpoint of `cfg.stream`.
    pub async fn new(
        client: Client,
        state: StateStore,
        tables: TablesConfig,
        cfg: ApplierConfig,
    ) -> Result<Self> {
        state.ensure(&client).await?;
        let checkpoint = read_checkpoint::<P>(&client, &state, &cfg.stream)
            .await?
            .map(|c| c.position);
        info!(stream = %cfg.stream, checkpoint = ?checkpoint.as_ref().map(ToString::to_string), "applier ready");
        Ok(Applier {
            schema_sync: crate::schema_sync::SchemaSync::new(tables.clone(), cfg.replica_role)
                .with_overrides(state.table("overrides")),
            ddl_in_batch: false,
            adopter: None,
            copied_in_txn: false,
            txn: TargetTxn::new(client, state, cfg.stream.clone(), cfg.replica_role),
            writer: Writer::new(tables),
            cfg,
            stats: Arc::new(ApplyStats::default()),
            schemas: foldhash::HashMap::default(),
            snapshots: HashMap::new(),
            checkpoint,
            last_heartbeat_write: None,
            last_flush: None,
            pending_heartbeat: None,
            batch: Batch::default(),
        })
    }

    pub fn stats(&self) -> Arc<ApplyStats> {
        Arc::clone(&self.stats)
    }

    /// The durable checkpoint (position of the last committed batch).
    pub fn checkpoint(&self) -> Option<&P> {
        self.checkpoint.as_ref()
    }

    /// Known table schemas (e.g. seeded from the plan before streaming).
    pub fn set_schema(&mut self, schema: Arc<TableSchema>) {
        self.schemas.insert(schema.id.clone(), schema);
    }

    /// Tables (re)loaded from a snapshot at a position after the
    /// checkpoint: their changes in transactions that commit before it are
    /// already in the target and are dropped ([`skip_for_snapshot`]).
    pub fn skip_before_snapshots(&mut self, snapshots: HashMap<TableId, P>) {
        self.snapshots = snapshots;
    }

    /// How tables the source starts publishing mid-stream are copied
    /// ([`Adopt`]); without it their earlier rows are recorded as not
    /// carried.
    pub fn adopt_with(&mut self, adopter: Arc<dyn Adopt<P>>) {
        self.adopter = Some(adopter);
    }

    pub fn client(&self) -> &Client {
        self.txn.client()
    }

    pub fn into_client(self) -> Client {
        self.txn.into_client()
    }

    /// Apply events until `shutdown` completes or the channel closes; see
    /// the module docs for the guarantees. `ack` receives each position
    /// after it is durable in the target. On error the open target
    /// transaction is rolled back; reconnect and build a new `Applier`.
    pub async fn run<A, S>(
        &mut self,
        rx: &mut Receiver<Event<P>>,
        mut ack: A,
        shutdown: S,
    ) -> Result<RunOutcome>
    where
        A: FnMut(&P),
        S: Future<Output = ()>,
    {
        let result = self.run_inner(rx, &mut ack, shutdown).await;
        if result.is_err() {
            if self.txn.is_open() {
                let _ = self.txn.rollback(&mut self.writer).await;
            }
            self.batch = Batch::default();
        }
        result
    }

    async fn run_inner<A, S>(
        &mut self,
        rx: &mut Receiver<Event<P>>,
        ack: &mut A,
        shutdown: S,
    ) -> Result<RunOutcome>
    where
        A: FnMut(&P),
        S: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let pause = self.cfg.pause.clone();
        let mut intake = Intake::new(rx, self.cfg.batch_rows, self.cfg.buffer_bytes, pause);
        loop {
            if !self.batch.in_txn && intake.paused() {
                self.settle(ack).await?;
                info!(checkpoint = ?self.checkpoint.as_ref().map(ToString::to_string), "applier paused");
                if !hold(&mut intake, shutdown.as_mut()).await {
                    self.finish(ack).await?;
                    return Ok(RunOutcome::Shutdown);
                }
                info!("applier resumed");
            }
            if let Some(ev) = intake.pop() {
                // Events received ahead: handle them first, in order, but
                // still notice a shutdown between two of them.
                if shutdown.as_mut().now_or_never().is_some() {
                    self.finish(ack).await?;
                    return Ok(RunOutcome::Shutdown);
                }
                self.handle(ev, ack, &mut intake).await?;
            } else if intake.closed {
                self.finish(ack).await?;
                return Ok(RunOutcome::SourceClosed);
            } else {
                let deadline = self
                    .batch
                    .started
                    .map(|s| TokioInstant::from_std(s + Duration::from_millis(self.cfg.batch_ms)));
                let timer_armed =
                    deadline.is_some() && !self.batch.in_txn && self.batch.commits > 0;
                let deadline = deadline.unwrap_or_else(TokioInstant::now);
                let at_boundary = !self.batch.in_txn;
                tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        self.finish(ack).await?;
                        return Ok(RunOutcome::Shutdown);
                    }
                    // Checked at the top of the loop.
                    () = switched(&mut intake.pause), if at_boundary => {}
                    ev = intake.rx.recv() => match ev {
                        None => intake.closed = true,
                        Some(ev) => self.handle(ev, ack, &mut intake).await?,
                    },
                    () = sleep_until(deadline), if timer_armed => {}
                }
            }
            // Inside a source transaction nothing flushes: no clock read
            // per change.
            if !self.batch.in_txn && should_flush(&self.flush_input(false)) {
                self.flush(ack, Some(&mut intake)).await?;
            }
        }
    }

    fn flush_input(&self, shutting_down: bool) -> FlushInput {
        let positions_only = self.batch.rows == 0
            && self.batch.fold.is_empty()
            && self.batch.replaced.is_empty()
            && !self.txn.is_open();
        FlushInput {
            positions_only,
            since_flush: positions_only
                .then(|| self.last_flush.map(|t| t.elapsed()))
                .flatten(),
            in_txn: self.batch.in_txn,
            pending_commits: self.batch.commits,
            rows: self.batch.rows,
            bytes: self.batch.fold_bytes,
            max_bytes: self.cfg.buffer_bytes / 2,
            age: self.batch.started.map(|s| s.elapsed()).unwrap_or_default(),
            batch_rows: self.cfg.batch_rows,
            batch_ms: self.cfg.batch_ms,
            shutting_down,
        }
    }

    /// Shutdown: drop an incomplete source transaction, commit the rest.
    async fn finish<A: FnMut(&P)>(&mut self, ack: &mut A) -> Result<()> {
        if self.batch.in_txn {
            if self.txn.in_savepoint() {
                self.txn.rollback_to_savepoint(&mut self.writer).await?;
                self.batch.fold = Fold::new();
                self.batch.fold_bytes = 0;
            }
            self.batch.drop_txn();
        }
        self.settle(ack).await
    }

    /// At a source transaction boundary: commit and acknowledge what is
    /// complete (the batch, a heartbeat held back by the rate limit), so no
    /// target transaction stays open.
    async fn settle<A: FnMut(&P)>(&mut self, ack: &mut A) -> Result<()> {
        if self.batch.end.is_some() {
            self.flush(ack, None).await?;
        } else if self.txn.is_open() {
            self.txn.rollback(&mut self.writer).await?;
            self.batch = Batch::default();
        }
        if let Some((p, t)) = self.pending_heartbeat.take() {
            self.heartbeat(p, t, ack, true).await?;
        }
        Ok(())
    }

    async fn handle<A: FnMut(&P)>(
        &mut self,
        ev: Event<P>,
        ack: &mut A,
        intake: &mut Intake<'_, P>,
    ) -> Result<()> {
        match ev {
            Event::Relation(schema) => {
                // After a carried schema change in the same transaction the
                // target gets its new shape only when the transaction is
                // applied; `relation` checks it then.
                let ddl_pending = self.batch.txn.iter().any(|i| matches!(i, TxnItem::Ddl(_)));
                if !ddl_pending {
                    self.check_relation(&schema, ack).await?;
                }
                if self.batch.in_txn {
                    self.batch.txn.push(TxnItem::Relation(schema));
                } else {
                    self.relation(schema).await?;
                }
            }
            Event::Ddl(msg) => {
                if !self.batch.in_txn {
                    return Err(protocol_error("schema change outside a transaction"));
                }
                self.batch.txn.push(TxnItem::Ddl(msg));
            }
            Event::Begin { final_position, .. } => {
                if self.batch.in_txn {
                    return Err(protocol_error("Begin inside a transaction"));
                }
                self.batch.begin(final_position);
                self.copied_in_txn = false;
            }
            Event::Change(change) => {
                if !self.batch.in_txn {
                    return Err(protocol_error("change outside a transaction"));
                }
                let change = if self.snapshots.is_empty() {
                    change
                } else {
                    let final_position = self.batch.txn_final.as_ref();
                    match skip_for_snapshot(change, final_position, &self.snapshots) {
                        Some(c) => c,
                        None => return Ok(()),
                    }
                };
                let bytes = change.approx_bytes();
                self.batch.txn_bytes += bytes;
                self.batch.txn.push(TxnItem::Change(change, bytes));
                // Rows or bytes: a transaction larger than its share of the
                // budget is applied in pieces (behind a savepoint).
                if self.batch.txn.len() >= self.cfg.batch_rows
                    || self.batch.txn_bytes >= self.cfg.buffer_bytes / 2
                {
                    self.spill(intake).await?;
                }
            }
            Event::Replaced {
                table,
                column,
                values,
            } => {
                if !self.batch.in_txn {
                    return Err(protocol_error("replaced values outside a transaction"));
                }
                // Counted like the rows they belong to: not for a table
                // whose snapshot already holds the transaction.
                let final_position = self.batch.txn_final.as_ref();
                if !snapshot_skip::held_by_snapshot(&table, final_position, &self.snapshots) {
                    *self.batch.txn_replaced.entry((table, column)).or_insert(0) += values;
                }
            }
            Event::Commit {
                position,
                commit_time,
            } => {
                if !self.batch.in_txn {
                    return Err(protocol_error("Commit without Begin"));
                }
                self.commit_txn(position, commit_time, ack, intake).await?;
            }
            Event::Heartbeat { position, time } => {
                let idle = !self.batch.in_txn && self.batch.end.is_none() && !self.txn.is_open();
                if idle {
                    self.heartbeat(position, time, ack, false).await?;
                } else if !self.batch.in_txn
                    && self.batch.end.as_ref().is_some_and(|(p, _)| *p < position)
                {
                    // Nothing between the last commit and here: the batch
                    // may end at the heartbeat.
                    self.batch.end = Some((position, time));
                }
            }
        }
        Ok(())
    }

    async fn commit_txn<A: FnMut(&P)>(
        &mut self,
        position: P,
        time: Timestamp,
        ack: &mut A,
        intake: &mut Intake<'_, P>,
    ) -> Result<()> {
        let items = std::mem::take(&mut self.batch.txn);
        self.batch.txn_bytes = 0;
        let was_spilled = self.txn.in_savepoint();
        self.batch.in_txn = false;
        if should_skip(&position, self.checkpoint.as_ref())
            || self.batch.end.as_ref().is_some_and(|(p, _)| position <= *p)
        {
            if was_spilled {
                self.txn.rollback_to_savepoint(&mut self.writer).await?;
            }
            for item in items {
                if let TxnItem::Relation(s) = item {
                    self.schemas.insert(s.id.clone(), s);
                }
            }
            if self.batch.end.is_none() && !self.txn.is_open() {
                self.batch.started = None;
            }
            self.batch.txn_replaced.clear();
            self.stats
                .transactions_skipped
                .fetch_add(1, Ordering::Relaxed);
            debug!(lsn = %position, "skipping transaction already applied");
            return Ok(());
        }
        self.fold_in(items).await?;
        if was_spilled {
            self.txn.release_savepoint().await?;
        }
        self.batch.committed(position, time);
        if was_spilled || std::mem::take(&mut self.ddl_in_batch) {
            // A transaction larger than a batch, or one with a schema
            // change: commit it now.
            self.flush(ack, Some(intake)).await?;
        }
        Ok(())
    }

    /// Fold a transaction's items into the batch, applying barriers and
    /// schema changes in order.
    async fn fold_in(&mut self, items: Vec<TxnItem>) -> Result<()> {
        for item in items {
            match item {
                TxnItem::Relation(s) => self.relation(s).await?,
                TxnItem::Ddl(msg) => self.schema_change(&msg).await?,
                TxnItem::Change(c, bytes) => {
                    // A table copied by a schema change earlier in this
                    // transaction holds its later changes too.
                    let c = if !self.copied_in_txn {
                        c
                    } else {
                        match skip_for_snapshot(c, self.batch.txn_final.as_ref(), &self.snapshots) {
                            Some(c) => c,
                            None => continue,
                        }
                    };
                    let schema = c.table().and_then(|t| self.schemas.get(t)).cloned();
                    let recheck = self
                        .cfg
                        .recheck_order
                        .as_ref()
                        .is_some_and(|h| h.load(Ordering::Acquire));
                    let in_order = match &schema {
                        // Decided when the table enters the batch.
                        Some(s) if recheck && self.batch.fold.contains(&s.id) => false,
                        Some(s) if recheck => {
                            self.txn.begin(&mut self.writer).await?;
                            self.writer
                                .source_order_locked(self.txn.client(), s)
                                .await?
                        }
                        Some(s) => self.writer.source_order(self.txn.client(), s).await?,
                        None => false,
                    };
                    if let Some(barrier) =
                        self.batch
                            .fold_change(c, bytes, schema.as_ref(), in_order)?
                    {
                        self.apply_pending(None).await?;
                        self.txn.begin(&mut self.writer).await?;
                        self.writer
                            .apply_barrier(self.txn.client(), &barrier, &self.schemas)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A carried schema change: apply what is folded so far, then the
    /// change, in the open target transaction.
    async fn schema_change(&mut self, msg: &ferry_core::ddl::DdlMessage) -> Result<()> {
        self.apply_pending(None).await?;
        self.txn.begin(&mut self.writer).await?;
        let applied = self.schema_sync.apply(self.txn.client(), msg).await?;
        for t in &applied.tables {
            self.writer.forget(self.txn.client(), t).await;
        }
        // ferry's table list follows (status, cutover row counts, restarts).
        let (state, client) = (self.txn.state(), self.txn.client());
        for (src, tgt) in &applied.created {
            state
                .register_table(client, src, tgt, None, Some(0))
                .await?;
            state
                .set_table_state(client, src, &crate::state::TableState::Streaming)
                .await?;
        }
        for (old, src, tgt) in &applied.renamed {
            state.rename_table(client, old, src, tgt).await?;
        }
        for src in &applied.dropped {
            state.forget_table(client, src).await?;
        }
        let mut applied = applied;
        self.adopt_published(msg, &mut applied).await?;
        if !applied.not_carried.is_empty() {
            self.stats
                .ddl_not_carried
                .fetch_add(applied.not_carried.len() as u64, Ordering::Relaxed);
        }
        for what in &applied.not_carried {
            self.txn
                .state()
                .record_event(self.txn.client(), "ddl_not_carried", what)
                .await?;
        }
        if applied.statements > 0 {
            let what = format!(
                "{} ({} statements on the target)",
                crate::schema_sync::summary(msg),
                applied.statements
            );
            self.txn
                .state()
                .record_event(self.txn.client(), "ddl_applied", &what)
                .await?;
        }
        self.stats.ddl_applied.fetch_add(1, Ordering::Relaxed);
        self.ddl_in_batch = true;
        Ok(())
    }

    /// Tables `msg` shows published whose rows the target may lack or hold
    /// under an older shape: copied by the [`Adopt`] hook (see the module
    /// docs). That is a table ferry does not carry yet (and did not just
    /// create), and a table copied from a snapshot that this schema change
    /// precedes (its transaction commits before the snapshot's position):
    /// the copy was read with the change already made, and the stream is
    /// applying it only now, so the table is copied again after it.
    async fn adopt_published(
        &mut self,
        msg: &ferry_core::ddl::DdlMessage,
        applied: &mut crate::schema_sync::Applied,
    ) -> Result<()> {
        for t in msg
            .tables
            .iter()
            .filter(|t| t.published && t.parent.is_none())
        {
            let src = t.id();
            if applied.created.iter().any(|(s, _)| *s == src) || applied.dropped.contains(&src) {
                continue;
            }
            let final_position = self.batch.txn_final.as_ref();
            let precedes_copy = self
                .snapshots
                .get(&src)
                .is_some_and(|s| final_position.is_some_and(|f| f < s));
            let registered = self
                .txn
                .state()
                .is_registered(self.txn.client(), &src)
                .await?;
            if registered && !precedes_copy {
                continue;
            }
            let tgt = self.writer.target_of(&src);
            if !crate::relation::exists(self.txn.client(), &tgt).await? {
                continue;
            }
            let Some(adopter) = self.adopter.clone() else {
                applied.not_carried.push(format!(
                    "table {src} published on the source mid-stream: its rows from before are not copied by this run"
                ));
                continue;
            };
            let columns: Vec<(String, String)> = t
                .columns
                .iter()
                .filter(|c| c.generated.is_none())
                .map(|c| (c.name.clone(), c.type_name.clone()))
                .collect();
            let copied = adopter
                .adopt(self.txn.client(), &src, &tgt, &columns)
                .await?;
            let (state, client) = (self.txn.state(), self.txn.client());
            let rows = copied
                .rows
                .map_or(0, |r| i64::try_from(r).unwrap_or(i64::MAX));
            state
                .register_table(client, &src, &tgt, Some(rows), Some(0))
                .await?;
            state.set_rows_copied(client, &src, rows).await?;
            state
                .set_table_state(client, &src, &crate::state::TableState::Streaming)
                .await?;
            let what = match copied.rows {
                Some(n) => format!(
                    "table {src} published on the source mid-stream: {n} rows copied from a snapshot at {}; its changes from there on are carried",
                    copied.position
                ),
                None => format!(
                    "table {src} published on the source mid-stream: its columns changed again before the snapshot at {}; emptied, and copied at that schema change, which the stream brings next",
                    copied.position
                ),
            };
            state.record_event(client, "table_copied", &what).await?;
            info!(table = %src, rows = ?copied.rows, snapshot = %copied.position, again = precedes_copy, "table published mid-stream copied");
            self.writer.forget(self.txn.client(), &src).await;
            self.snapshots.insert(src, copied.position);
            self.copied_in_txn = true;
        }
        Ok(())
    }

    async fn relation(&mut self, schema: Arc<TableSchema>) -> Result<()> {
        let old = self.schemas.get(&schema.id).cloned();
        if old.as_deref() == Some(&*schema) {
            return Ok(());
        }
        if old.is_some() || self.cfg.apply_ddl {
            self.apply_pending(None).await?;
            self.txn.begin(&mut self.writer).await?;
            let created = self
                .writer
                .apply_relation(
                    self.txn.client(),
                    &schema,
                    self.cfg.apply_ddl,
                    self.cfg.existing_tables,
                )
                .await?;
            if created {
                // A table the source created mid-stream (MySQL/MariaDB):
                // ferry's table list follows in the same transaction
                // (status, the cutover's row counts, restarts).
                let (state, client) = (self.txn.state(), self.txn.client());
                let target = self.writer.target_of(&schema.id);
                state
                    .register_table(client, &schema.id, &target, None, Some(0))
                    .await?;
                state
                    .set_table_state(client, &schema.id, &crate::state::TableState::Streaming)
                    .await?;
            }
        }
        info!(table = %schema.id, "table schema received");
        self.schemas.insert(schema.id.clone(), schema);
        Ok(())
    }

    /// A changed Relation that the target cannot take ([`crate::relation`])
    /// stops the run as soon as it arrives: the complete transactions before
    /// it are committed and acknowledged first (as at shutdown), so after the
    /// operator fixed the target the stream resumes exactly at the change;
    /// nothing of the new shape (nor of its transaction) is applied.
    async fn check_relation<A: FnMut(&P)>(
        &mut self,
        schema: &TableSchema,
        ack: &mut A,
    ) -> Result<()> {
        let old = self.schemas.get(&schema.id);
        if old.is_some_and(|o| **o == *schema) || (old.is_none() && !self.cfg.apply_ddl) {
            return Ok(());
        }
        let target = self.writer.target_of(&schema.id);
        if old.is_none() && !crate::relation::exists(self.txn.client(), &target).await? {
            // A new table: `relation` creates it.
            return Ok(());
        }
        let shape = crate::relation::read_shape(self.txn.client(), &target).await?;
        let mut drifts = crate::relation::drift(schema, &shape);
        if self.cfg.existing_tables {
            crate::relation::keep_extra_target_columns(&mut drifts);
        }
        if let Err(e) = crate::relation::check(&schema.id, &target, &drifts, self.cfg.apply_ddl) {
            self.finish(ack).await?;
            return Err(e);
        }
        Ok(())
    }

    /// The open source transaction outgrew a batch: apply what is folded,
    /// then this transaction's changes so far, behind a savepoint.
    async fn spill(&mut self, intake: &mut Intake<'_, P>) -> Result<()> {
        if !self.txn.in_savepoint() {
            self.apply_pending(None).await?;
            self.txn.savepoint(&mut self.writer).await?;
        }
        let items = std::mem::take(&mut self.batch.txn);
        self.batch.txn_bytes = 0;
        self.fold_in(items).await?;
        self.apply_pending(Some(intake)).await
    }

    /// Apply the pending fold into the open target transaction, receiving
    /// events ahead meanwhile when `intake` is given.
    async fn apply_pending(&mut self, intake: Option<&mut Intake<'_, P>>) -> Result<()> {
        if self.batch.fold.is_empty() {
            return Ok(());
        }
        let fold = self.batch.take_fold();
        let Applier { txn, writer, .. } = self;
        let work = async {
            txn.begin(writer).await?;
            writer.apply_fold(txn.client(), &fold).await
        };
        match intake {
            Some(i) => i.overlap(work, |ev, _| Some(ev)).await?,
            None => work.await?,
        };
        Ok(())
    }

    /// Commit the batch with its checkpoint, then acknowledge. With
    /// `intake`, events are received ahead while the target works.
    async fn flush<A: FnMut(&P)>(
        &mut self,
        ack: &mut A,
        intake: Option<&mut Intake<'_, P>>,
    ) -> Result<()> {
        let Some((position, time)) = self.batch.end.clone() else {
            return Ok(());
        };
        let started = Instant::now();
        let mut done = std::mem::take(&mut self.batch);
        let fold = done.take_fold();
        let in_order = match (&intake, &self.cfg.recheck_order) {
            (Some(_), None) => Some(self.writer.known_source_order()),
            _ => None,
        };
        let Applier {
            txn,
            writer,
            batch,
            schemas,
            snapshots,
            checkpoint,
            copied_in_txn,
            cfg,
            stats,
            ..
        } = self;
        let replaced = &done.replaced;
        let work = async {
            txn.begin(writer).await?;
            if !fold.is_empty() {
                writer.apply_fold(txn.client(), &fold).await?;
            }
            if !replaced.is_empty() {
                txn.count_replaced(replaced).await?;
            }
            txn.commit(writer, &position, time).await
        };
        // The next batch's events are folded while the target works
        // (`ahead`), unless apply orders are decided afresh per batch.
        let mut failed = None;
        match (intake, in_order) {
            (Some(i), Some(in_order)) => {
                let mut ahead = Ahead {
                    batch,
                    schemas,
                    snapshots,
                    checkpoint: checkpoint.as_ref(),
                    in_order,
                    copied_in_txn,
                    batch_rows: cfg.batch_rows,
                    max_bytes: cfg.buffer_bytes / 2,
                    failed: None,
                    folded: 0,
                };
                let committed = i.overlap(work, |ev, bytes| ahead.take(ev, bytes)).await;
                stats
                    .transactions_folded_ahead
                    .fetch_add(ahead.folded, Ordering::Relaxed);
                committed?;
                failed = ahead.failed;
            }
            (Some(i), None) => i.overlap(work, |ev, _| Some(ev)).await?,
            (None, _) => work.await?,
        }
        drop(fold);
        let batch = done;
        self.last_flush = Some(Instant::now());
        self.checkpoint = Some(position.clone());
        self.pending_heartbeat = None;
        ack(&position);
        let took = started.elapsed();
        self.stats.record_batch(&batch, took);
        self.stats.record_position(position.to_string(), time);
        debug!(lsn = %position, rows = batch.rows, txns = batch.commits, ms = took.as_millis() as u64, "batch applied");
        failed.map_or(Ok(()), Err)
    }

    /// Checkpoint a heartbeat with nothing pending (rate-limited).
    async fn heartbeat<A: FnMut(&P)>(
        &mut self,
        position: P,
        time: Timestamp,
        ack: &mut A,
        force: bool,
    ) -> Result<()> {
        if should_skip(&position, self.checkpoint.as_ref()) {
            return Ok(());
        }
        let due = self
            .last_heartbeat_write
            .is_none_or(|t| t.elapsed() >= HEARTBEAT_WRITE_INTERVAL);
        if !due && !force {
            self.pending_heartbeat = Some((position, time));
            return Ok(());
        }
        self.txn
            .commit_checkpoint(&mut self.writer, &position, time)
            .await?;
        self.last_heartbeat_write = Some(Instant::now());
        self.checkpoint = Some(position.clone());
        self.pending_heartbeat = None;
        ack(&position);
        self.stats.record_position(position.to_string(), time);
        Ok(())
    }
}

/// Wait while paused: `true` once resumed, `false` on shutdown.
async fn hold<P>(
    intake: &mut Intake<'_, P>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> bool {
    while intake.paused() {
        tokio::select! {
            biased;
            () = &mut shutdown => return false,
            () = switched(&mut intake.pause) => {}
        }
    }
    true
}

fn protocol_error(what: &str) -> Error {
    Error::operator(
        format!("source event stream out of order: {what}"),
        "this is a ferry bug in the source reader; report it with the log",
    )
}
