//! The CDC apply loop: batches whole source transactions into target
//! transactions (DESIGN.md §1 invariants 1, 2, 4 and §5).
//!
//! Consumes: [`Event<P>`]s in source commit order from a BOUNDED
//! `tokio::sync::mpsc::Receiver` (a slow target slows the reader). Emits:
//! target transactions, each holding whole source transactions plus the
//! checkpoint of the last one, and `ack(position)` calls made only after the
//! target COMMIT succeeded.
//!
//! - A batch closes at a transaction boundary once it holds
//!   `apply.batch_rows` row changes, or half the applier's byte share
//!   (`buffer_bytes`, a quarter of `apply.max_buffered_bytes`) of row data,
//!   or `apply.batch_ms` passed since it started ([`should_flush`]); a
//!   source transaction is never split across checkpoints.
//! - A transaction larger than `batch_rows` changes or half of
//!   `buffer_bytes` is applied in several steps of ONE target transaction
//!   (behind a savepoint), a piece at a time, and committed only after its
//!   `Commit`: memory stays bounded in bytes, whatever the row size.
//! - While the target executes a batch (and each step of a large
//!   transaction), up to `batch_rows` further events and `buffer_bytes` of
//!   row data are received into a queue ([`run::Intake`]), so the source
//!   reader, decoder and walsender keep working instead of stalling on a
//!   full channel; the queue is handled in order before the channel is read
//!   again. Memory (sizes per [`ApproxBytes`]): the batch and the open
//!   transaction together about `buffer_bytes`, the queue `buffer_bytes`.
//! - `Heartbeat` with nothing pending moves the checkpoint (at most once per
//!   second) and is acknowledged after that commit.
//! - Restart: the checkpoint is read at [`Applier::new`]; transactions with
//!   commit position ≤ checkpoint are skipped ([`should_skip`]), also large
//!   ones (their savepoint is rolled back).
//! - Shutdown: the in-flight batch of complete transactions is committed and
//!   acknowledged; an incomplete source transaction is dropped (the source
//!   resends it from the checkpoint).
//! - Failure injection for crash tests: see [`crate::checkpoint::Failpoint`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::config::{ApplyConfig, TablesConfig};
use ferry_core::size::ApproxBytes;
use ferry_core::value::Timestamp;
use ferry_core::{Change, Error, Event, Position, Result, TableId, TableSchema};
use tokio::sync::mpsc::Receiver;
use tokio_postgres::Client;
use tracing::{debug, info};

use crate::checkpoint::{Failpoint, read_checkpoint, should_skip, write_checkpoint};
use crate::error::pg_error;
use crate::fold::Fold;
use crate::state::StateStore;
use crate::writer::Writer;

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
        }
    }
}

/// What [`should_flush`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushInput {
    /// A source transaction is open (between Begin and Commit).
    pub in_txn: bool,
    /// Complete source transactions (or heartbeats) waiting in the batch.
    pub pending_commits: usize,
    /// Row changes in the batch.
    pub rows: usize,
    /// Bytes of the changes folded into the batch.
    pub bytes: usize,
    /// The batch's share of the memory budget.
    pub max_bytes: usize,
    /// Time since the batch's first event.
    pub age: Duration,
    pub batch_rows: usize,
    pub batch_ms: u64,
    pub shutting_down: bool,
}

/// Whether the batch must be committed now. Never inside a source
/// transaction, never with nothing complete to commit.
pub fn should_flush(i: &FlushInput) -> bool {
    if i.in_txn || i.pending_commits == 0 {
        return false;
    }
    i.shutting_down
        || i.rows >= i.batch_rows
        || i.bytes >= i.max_bytes
        || i.age >= Duration::from_millis(i.batch_ms)
}

/// Counters for the monitor. Locks are never held across `.await`.
#[derive(Debug, Default)]
pub struct ApplyStats {
    pub changes_applied: AtomicU64,
    pub transactions_applied: AtomicU64,
    pub transactions_skipped: AtomicU64,
    pub batches: AtomicU64,
    pub batch_micros_total: AtomicU64,
    pub last_batch_micros: AtomicU64,
    /// Changes of keyed tables applied in source order instead of folded
    /// (the target has another unique or exclusion constraint).
    pub source_order_changes: AtomicU64,
    per_table: Mutex<BTreeMap<TableId, u64>>,
    last_applied: Mutex<Option<(String, Timestamp)>>,
}

impl ApplyStats {
    /// Changes applied per source table.
    pub fn per_table(&self) -> BTreeMap<TableId, u64> {
        self.per_table.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Last applied position (as text) and its commit time.
    pub fn last_applied(&self) -> Option<(String, Timestamp)> {
        self.last_applied.lock().ok().and_then(|l| l.clone())
    }

    fn record_batch(&self, batch: &Batch<impl Sized>, took: Duration) {
        let (tables, txns) = (&batch.tables, batch.commits as u64);
        self.source_order_changes
            .fetch_add(batch.source_order, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.transactions_applied.fetch_add(txns, Ordering::Relaxed);
        self.batch_micros_total.fetch_add(micros, Ordering::Relaxed);
        self.last_batch_micros.store(micros, Ordering::Relaxed);
        let total: u64 = tables.values().sum();
        self.changes_applied.fetch_add(total, Ordering::Relaxed);
        if let Ok(mut m) = self.per_table.lock() {
            for (t, n) in tables {
                *m.entry(t.clone()).or_default() += n;
            }
        }
    }

    fn record_position(&self, position: String, time: Timestamp) {
        if let Ok(mut l) = self.last_applied.lock() {
            *l = Some((position, time));
        }
    }
}

/// Why [`Applier::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The shutdown future completed.
    Shutdown,
    /// The event channel closed.
    SourceClosed,
}

/// Items of the open source transaction, buffered until its Commit.
#[derive(Debug)]
enum TxnItem {
    Relation(Arc<TableSchema>),
    Change(Change),
}

/// The batch being built (target transaction state included).
#[derive(Debug)]
struct Batch<P> {
    fold: Fold,
    txn: Vec<TxnItem>,
    in_txn: bool,
    /// The open source transaction was partly applied (behind a savepoint).
    spilled: bool,
    target_open: bool,
    rows: usize,
    /// Bytes of the open source transaction's buffered changes (`txn`).
    txn_bytes: usize,
    /// Bytes of the changes in `fold` (not yet sent to the target).
    fold_bytes: usize,
    started: Option<Instant>,
    commits: usize,
    end: Option<(P, Timestamp)>,
    tables: BTreeMap<TableId, u64>,
    /// Changes of keyed tables kept in source order (see [`ApplyStats`]).
    source_order: u64,
}

impl<P> Default for Batch<P> {
    fn default() -> Self {
        Batch {
            fold: Fold::new(),
            txn: Vec::new(),
            in_txn: false,
            spilled: false,
            target_open: false,
            rows: 0,
            txn_bytes: 0,
            fold_bytes: 0,
            started: None,
            commits: 0,
            end: None,
            tables: BTreeMap::new(),
            source_order: 0,
        }
    }
}

/// The CDC applier for one source stream.
#[derive(Debug)]
pub struct Applier<P: Position> {
    client: Client,
    writer: Writer,
    state: StateStore,
    cfg: ApplierConfig,
    stats: Arc<ApplyStats>,
    schemas: HashMap<TableId, Arc<TableSchema>>,
    checkpoint: Option<P>,
    failpoint: Option<Failpoint>,
    last_heartbeat_write: Option<Instant>,
    pending_heartbeat: Option<(P, Timestamp)>,
    batch: Batch<P>,
}

mod run;

use run::Intake;

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
        let mut writer = Writer::new(tables);
        writer.set_replica_role(cfg.replica_role);
        Ok(Applier {
            client,
            writer,
            state,
            cfg,
            stats: Arc::new(ApplyStats::default()),
            schemas: HashMap::new(),
            checkpoint,
            failpoint: Failpoint::from_env(),
            last_heartbeat_write: None,
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

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn into_client(self) -> Client {
        self.client
    }

    fn flush_input(&self, shutting_down: bool) -> FlushInput {
        FlushInput {
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

    async fn ensure_open(&mut self) -> Result<()> {
        if !self.batch.target_open {
            self.writer.begin(&self.client).await?;
            self.batch.target_open = true;
        }
        Ok(())
    }

    /// Count the fold's changes into the batch's per-table figures.
    fn count_tables(&mut self, fold: &Fold) {
        for tf in fold.tables() {
            *self.batch.tables.entry(tf.schema.id.clone()).or_default() += tf.changes;
            if tf.in_source_order {
                self.batch.source_order += tf.changes;
            }
        }
    }

    /// Apply the pending fold into the open target transaction, receiving
    /// events ahead meanwhile when `intake` is given.
    async fn apply_pending(&mut self, intake: Option<&mut Intake<'_, P>>) -> Result<()> {
        if self.batch.fold.is_empty() {
            return Ok(());
        }
        let fold = self.batch.fold.take();
        self.batch.fold_bytes = 0;
        self.count_tables(&fold);
        let open = std::mem::replace(&mut self.batch.target_open, true);
        let Applier { client, writer, .. } = self;
        let work = async {
            if !open {
                writer.begin(client).await?;
            }
            writer.apply_fold(client, &fold).await
        };
        match intake {
            Some(i) => i.overlap(work).await?,
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
        let fold = self.batch.fold.take();
        self.batch.fold_bytes = 0;
        self.count_tables(&fold);
        // Set before BEGIN is sent: on any error below, `run` rolls back.
        let open = std::mem::replace(&mut self.batch.target_open, true);
        let Applier {
            client,
            writer,
            state,
            cfg,
            failpoint,
            ..
        } = self;
        let work = async {
            if !open {
                writer.begin(client).await?;
            }
            if !fold.is_empty() {
                writer.apply_fold(client, &fold).await?;
            }
            write_checkpoint(client, state, &cfg.stream, &position, time).await?;
            Failpoint::hit(*failpoint, Failpoint::AfterApplyBeforeCommit);
            writer.commit(client).await
        };
        match intake {
            Some(i) => i.overlap(work).await?,
            None => work.await?,
        }
        drop(fold);
        let batch = std::mem::take(&mut self.batch);
        Failpoint::hit(self.failpoint, Failpoint::AfterCommitBeforeAck);
        self.checkpoint = Some(position.clone());
        self.pending_heartbeat = None;
        ack(&position);
        let took = started.elapsed();
        self.stats.record_batch(&batch, took);
        self.stats.record_position(position.to_string(), time);
        debug!(lsn = %position, rows = batch.rows, txns = batch.commits, ms = took.as_millis() as u64, "batch applied");
        Ok(())
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
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| pg_error("checkpointing heartbeat", e))?;
        let written =
            write_checkpoint(&self.client, &self.state, &self.cfg.stream, &position, time).await;
        if let Err(e) = written {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg_error("checkpointing heartbeat", e))?;
        self.last_heartbeat_write = Some(Instant::now());
        self.checkpoint = Some(position.clone());
        self.pending_heartbeat = None;
        ack(&position);
        self.stats.record_position(position.to_string(), time);
        Ok(())
    }
}

fn protocol_error(what: &str) -> Error {
    Error::operator(
        format!("source event stream out of order: {what}"),
        "this is a ferry bug in the source reader; report it with the log",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(in_txn: bool, commits: usize, rows: usize, age_ms: u64, shutdown: bool) -> FlushInput {
        FlushInput {
            in_txn,
            pending_commits: commits,
            rows,
            age: Duration::from_millis(age_ms),
            bytes: 0,
            max_bytes: 1000,
            batch_rows: 100,
            batch_ms: 500,
            shutting_down: shutdown,
        }
    }

    #[test]
    fn flush_table() {
        let cases = [
            ("empty batch", input(false, 0, 0, 10_000, true), false),
            (
                "inside a transaction, full",
                input(true, 3, 1000, 10_000, true),
                false,
            ),
            ("rows reached", input(false, 1, 100, 0, false), true),
            ("rows below, young", input(false, 2, 99, 499, false), false),
            ("old enough", input(false, 1, 1, 500, false), true),
            (
                "empty transactions age out",
                input(false, 1, 0, 600, false),
                true,
            ),
            (
                "bytes reached",
                FlushInput {
                    bytes: 1000,
                    ..input(false, 1, 1, 0, false)
                },
                true,
            ),
            (
                "bytes reached inside a transaction",
                FlushInput {
                    bytes: 5000,
                    ..input(true, 1, 1, 0, false)
                },
                false,
            ),
            (
                "shutdown commits what is complete",
                input(false, 1, 1, 0, true),
                true,
            ),
        ];
        for (name, i, want) in cases {
            assert_eq!(should_flush(&i), want, "{name}");
        }
    }
}
