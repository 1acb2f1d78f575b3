//! The batch the applier builds: whole source transactions folded per key,
//! the open source transaction's items until its `Commit`, the figures the
//! flush policy looks at ([`should_flush`], a pure function), and the
//! counters recorded once the batch committed ([`ApplyStats`]).
//!
//! Invariant: a batch ends at a source transaction boundary (`end` is the
//! commit position of its last transaction, or of a heartbeat after it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::ddl::DdlMessage;
use ferry_core::value::Timestamp;
use ferry_core::{Change, TableId, TableSchema};

use crate::error::FoldError;
use crate::fold::{Barrier, Fold};

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
    /// The batch's complete transactions changed no row (a heartbeat's
    /// transaction, changes the load's snapshot holds): committing it only
    /// moves the position.
    pub positions_only: bool,
    /// Time since this applier last committed a batch (`None`: not yet);
    /// read only with `positions_only`.
    pub since_flush: Option<Duration>,
}

/// Whether the batch must be committed now. Never inside a source
/// transaction, never with nothing complete to commit. A batch that only
/// moves the position goes at once when no batch committed for
/// `batch_ms` (so a catch-up that waits for a position does not wait for
/// the batch window), else when it is `batch_ms` old.
pub fn should_flush(i: &FlushInput) -> bool {
    if i.in_txn || i.pending_commits == 0 {
        return false;
    }
    i.shutting_down
        || i.rows >= i.batch_rows
        || i.bytes >= i.max_bytes
        || i.age >= Duration::from_millis(i.batch_ms)
        || (i.positions_only
            && i.since_flush
                .is_none_or(|d| d >= Duration::from_millis(i.batch_ms)))
}

/// Items of the open source transaction, buffered until its Commit.
#[derive(Debug)]
pub(super) enum TxnItem {
    Relation(Arc<TableSchema>),
    /// A row change and its [`ferry_core::size::ApproxBytes`] size (counted
    /// once).
    Change(Change, usize),
    /// A schema change at its place ([`crate::schema_sync`]).
    Ddl(Arc<DdlMessage>),
}

/// The batch being built.
#[derive(Debug)]
pub(super) struct Batch<P> {
    pub(super) fold: Fold,
    /// The open source transaction's items not yet folded.
    pub(super) txn: Vec<TxnItem>,
    pub(super) in_txn: bool,
    /// Commit position the open source transaction announced at its Begin
    /// (PostgreSQL's final LSN), for the snapshot skip.
    pub(super) txn_final: Option<P>,
    pub(super) rows: usize,
    /// Bytes of the open source transaction's buffered changes (`txn`).
    pub(super) txn_bytes: usize,
    /// Bytes of the changes in `fold` (not yet sent to the target).
    pub(super) fold_bytes: usize,
    pub(super) started: Option<Instant>,
    pub(super) commits: usize,
    pub(super) end: Option<(P, Timestamp)>,
    pub(super) tables: BTreeMap<TableId, u64>,
    /// Changes of keyed tables kept in source order (see [`ApplyStats`]).
    pub(super) source_order: u64,
    /// Values a source policy replaced ([`ferry_core::Event::Replaced`]) in
    /// the open source transaction, per (source table, column).
    pub(super) txn_replaced: BTreeMap<(TableId, String), u64>,
    /// The same for the batch's applied transactions: written into the
    /// state schema in the batch's target transaction.
    pub(super) replaced: BTreeMap<(TableId, String), u64>,
}

impl<P> Default for Batch<P> {
    fn default() -> Self {
        Batch {
            fold: Fold::new(),
            txn: Vec::new(),
            in_txn: false,
            txn_final: None,
            rows: 0,
            txn_bytes: 0,
            fold_bytes: 0,
            started: None,
            commits: 0,
            end: None,
            tables: BTreeMap::new(),
            source_order: 0,
            txn_replaced: BTreeMap::new(),
            replaced: BTreeMap::new(),
        }
    }
}

impl<P> Batch<P> {
    /// Take the fold to apply it, counting its changes per table.
    pub(super) fn take_fold(&mut self) -> Fold {
        let fold = self.fold.take();
        self.fold_bytes = 0;
        for tf in fold.tables() {
            *self.tables.entry(tf.schema.id.clone()).or_default() += tf.changes;
            if tf.in_source_order {
                self.source_order += tf.changes;
            }
        }
        fold
    }

    /// A source transaction begins; `final_position`: its commit position
    /// as its `Begin` announced it (PostgreSQL), for the snapshot skip.
    pub(super) fn begin(&mut self, final_position: Option<P>) {
        self.in_txn = true;
        self.txn_final = final_position;
        self.txn_replaced.clear();
        self.started.get_or_insert_with(Instant::now);
    }

    /// Fold a change of a committed transaction into the batch (`bytes`:
    /// its size, `in_order`: its table's apply order, see
    /// [`Fold::push_with`]).
    pub(super) fn fold_change(
        &mut self,
        change: Change,
        bytes: usize,
        schema: Option<&Arc<TableSchema>>,
        in_order: bool,
    ) -> Result<Option<Barrier>, FoldError> {
        self.rows += 1;
        self.fold_bytes += bytes;
        self.fold.push_with(change, schema, in_order)
    }

    /// The open source transaction, folded, committed at `position`: it
    /// ends the batch so far.
    pub(super) fn committed(&mut self, position: P, time: Timestamp) {
        for (column, n) in std::mem::take(&mut self.txn_replaced) {
            *self.replaced.entry(column).or_insert(0) += n;
        }
        self.commits += 1;
        self.end = Some((position, time));
    }

    /// Forget the open source transaction (its buffered items).
    pub(super) fn drop_txn(&mut self) {
        self.in_txn = false;
        self.txn_final = None;
        self.txn.clear();
        self.txn_bytes = 0;
    }
}

/// Counters for the monitor. Locks are never held across `.await`.
#[derive(Debug, Default)]
pub struct ApplyStats {
    pub changes_applied: AtomicU64,
    pub transactions_applied: AtomicU64,
    pub transactions_skipped: AtomicU64,
    /// Transactions folded into the next batch while the target committed
    /// the one before (see `applier::ahead`).
    pub transactions_folded_ahead: AtomicU64,
    pub batches: AtomicU64,
    pub batch_micros_total: AtomicU64,
    pub last_batch_micros: AtomicU64,
    /// Changes of keyed tables applied in source order instead of folded
    /// (the target has another unique or exclusion constraint).
    pub source_order_changes: AtomicU64,
    /// Source schema changes applied (`postgres.capture_ddl`).
    pub ddl_applied: AtomicU64,
    /// Parts of source schema changes recorded as not carried.
    pub ddl_not_carried: AtomicU64,
    per_table: Mutex<BTreeMap<TableId, u64>>,
    last_applied: Mutex<Option<(String, Timestamp)>>,
    /// Batch durations the monitor has not published yet (for the
    /// `ferry_apply_batch_seconds` histogram), at most
    /// [`UNPUBLISHED_BATCHES`].
    unpublished: Mutex<Vec<Duration>>,
}

/// Batch durations kept for the monitor, at most: it takes them every
/// second or so, and a batch is at least one target round trip.
const UNPUBLISHED_BATCHES: usize = 65_536;

impl ApplyStats {
    /// Changes applied per source table.
    pub fn per_table(&self) -> BTreeMap<TableId, u64> {
        self.per_table.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The durations of the batches committed since the last call.
    pub fn take_batch_durations(&self) -> Vec<Duration> {
        self.unpublished
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Last applied position (as text) and its commit time.
    pub fn last_applied(&self) -> Option<(String, Timestamp)> {
        self.last_applied.lock().ok().and_then(|l| l.clone())
    }

    pub(super) fn record_batch<P>(&self, batch: &Batch<P>, took: Duration) {
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
        if let Ok(mut d) = self.unpublished.lock()
            && d.len() < UNPUBLISHED_BATCHES
        {
            d.push(took);
        }
    }

    pub(super) fn record_position(&self, position: String, time: Timestamp) {
        if let Ok(mut l) = self.last_applied.lock() {
            *l = Some((position, time));
        }
    }
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
            positions_only: false,
            since_flush: None,
        }
    }

    fn positions(commits: usize, age_ms: u64, since_flush_ms: Option<u64>) -> FlushInput {
        FlushInput {
            positions_only: true,
            since_flush: since_flush_ms.map(Duration::from_millis),
            ..input(false, commits, 0, age_ms, false)
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
            (
                "positions only, no batch committed yet",
                positions(1, 0, None),
                true,
            ),
            (
                "positions only, the last batch long ago",
                positions(1, 0, Some(500)),
                true,
            ),
            (
                "positions only, the last batch just now",
                positions(1, 0, Some(499)),
                false,
            ),
            (
                "positions only, the last batch just now, old enough",
                positions(3, 500, Some(10)),
                true,
            ),
            (
                "positions only inside a transaction",
                FlushInput {
                    in_txn: true,
                    ..positions(1, 0, None)
                },
                false,
            ),
            (
                "rows changed: the batch window holds",
                FlushInput {
                    positions_only: false,
                    ..positions(1, 0, None)
                },
                false,
            ),
        ];
        for (name, i, want) in cases {
            assert_eq!(should_flush(&i), want, "{name}");
        }
    }
}
