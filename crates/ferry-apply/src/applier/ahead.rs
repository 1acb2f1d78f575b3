//! Folding the next batch while the target commits this one.
//!
//! During a batch's flush (staging, apply, checkpoint, `COMMIT`) the
//! applier's own work — buffering each source transaction's changes and
//! folding them per key at its `Commit` — would otherwise wait until the
//! target answered, and the target would then wait for it. [`FoldAhead`]
//! does that work for events received meanwhile ([`super::intake::Intake::overlap`]),
//! into the next batch, exactly as [`super::Applier`]'s own handling
//! would, for the events that need nothing from the target: `Begin`,
//! row changes of tables whose schema and apply order are known, and
//! `Commit` of a transaction to apply. The first event that needs more (a
//! schema, a schema change, a truncate, a possible key-change barrier, a
//! heartbeat, replaced-value counts, a transaction to spill or to skip, a
//! full next batch) stops it, and stays in the queue for the applier.
//!
//! Nothing reaches the target or the acknowledgement before the batch being
//! flushed committed: the next batch is only folded in memory, and commits
//! in its own target transaction with its own checkpoint, as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_core::{Change, Error, Event, Position, TableId, TableSchema};

use super::batch::{ApplyStats, Batch, FlushInput, TxnItem, should_flush};
use super::snapshot_skip::skip_for_snapshot;
use crate::checkpoint::should_skip;

/// Handles events received during a flush, or declines them.
pub(super) trait Ahead<P> {
    /// Whether `ev` (of `bytes`, [`ferry_core::size::ApproxBytes`]) can be
    /// handled now; `false` stops folding ahead for this flush.
    fn accepts(&self, ev: &Event<P>, bytes: usize) -> bool;
    /// Handle an event [`Ahead::accepts`] accepted.
    fn handle(&mut self, ev: Event<P>, bytes: usize);
}

/// The next batch and what folding it needs, borrowed from the applier
/// while the target connection is busy with the flush.
pub(super) struct FoldAhead<'a, P> {
    pub(super) batch: &'a mut Batch<P>,
    pub(super) schemas: &'a HashMap<TableId, Arc<TableSchema>>,
    pub(super) snapshots: &'a HashMap<TableId, P>,
    /// The checkpoint before the flush (transactions at or before it are
    /// skipped, by the applier).
    pub(super) checkpoint: Option<&'a P>,
    /// Apply-order decisions already made ([`crate::writer::Writer::source_order`]).
    pub(super) orders: HashMap<TableId, bool>,
    /// [`super::ApplierConfig::recheck_order`]: while it reads `true`
    /// every table's order is decided under a lock, by the applier.
    pub(super) recheck: Option<&'a AtomicBool>,
    pub(super) batch_rows: usize,
    pub(super) buffer_bytes: usize,
    pub(super) batch_ms: u64,
    pub(super) stats: &'a ApplyStats,
    /// [`super::Applier`]'s flag: a table was copied by a schema change of
    /// the open source transaction (reset at each `Begin`).
    pub(super) copied_in_txn: &'a mut bool,
    /// Set if a fold failed; returned once the flush is done.
    pub(super) error: Option<Error>,
}

impl<P: Position> FoldAhead<'_, P> {
    fn batch_full(&self) -> bool {
        let b = &*self.batch;
        should_flush(&FlushInput {
            in_txn: b.in_txn,
            pending_commits: b.commits,
            rows: b.rows,
            bytes: b.fold_bytes,
            max_bytes: self.buffer_bytes / 2,
            // Counted from the commit of the batch before it (see
            // `Applier::flush`).
            age: Duration::ZERO,
            batch_rows: self.batch_rows,
            batch_ms: self.batch_ms,
            shutting_down: false,
        })
    }

    /// The apply order of a known table, if decided (keyless: folded in
    /// order, nothing to decide).
    fn order(&self, schema: &TableSchema) -> Option<bool> {
        if schema.has_key() {
            self.orders.get(&schema.id).copied()
        } else {
            Some(false)
        }
    }

    /// A change the fold takes without the target: its table's schema and
    /// order are known, and it cannot become a barrier (a truncate, or an
    /// update that moves a key while leaving a TOASTed value unchanged).
    fn foldable(&self, c: &Change) -> bool {
        if let Change::Update {
            old: Some(_), new, ..
        } = c
            && new.has_unchanged()
        {
            return false;
        }
        if matches!(c, Change::Truncate { .. }) {
            return false;
        }
        c.table()
            .and_then(|t| self.schemas.get(t))
            .is_some_and(|s| self.order(s).is_some())
    }

    fn fold_txn(&mut self, items: Vec<TxnItem>) -> Result<(), Error> {
        for item in items {
            let TxnItem::Change(c, bytes) = item else {
                return Err(declined("a schema item"));
            };
            self.batch.rows += 1;
            self.batch.fold_bytes += bytes;
            let schema = c.table().and_then(|t| self.schemas.get(t));
            let in_order = schema.and_then(|s| self.order(s)).unwrap_or(false);
            if self.batch.fold.push_with(c, schema, in_order)?.is_some() {
                return Err(declined("a barrier"));
            }
        }
        Ok(())
    }
}

impl<P: Position> Ahead<P> for FoldAhead<'_, P> {
    fn accepts(&self, ev: &Event<P>, bytes: usize) -> bool {
        if self.error.is_some() || self.recheck.is_some_and(|r| r.load(Ordering::Acquire)) {
            return false;
        }
        let b = &*self.batch;
        match ev {
            Event::Begin { .. } => !b.in_txn && !self.batch_full(),
            // The applier spills a transaction that reaches this size.
            Event::Change(c) => {
                b.in_txn
                    && b.txn.len() + 1 < self.batch_rows
                    && b.txn_bytes + bytes < self.buffer_bytes / 2
                    && self.foldable(c)
            }
            Event::Commit { position, .. } => {
                b.in_txn
                    && !should_skip(position, self.checkpoint)
                    && b.end.as_ref().is_none_or(|(p, _)| position > p)
            }
            _ => false,
        }
    }

    fn handle(&mut self, ev: Event<P>, bytes: usize) {
        let b = &mut *self.batch;
        match ev {
            Event::Begin { final_position, .. } => {
                b.in_txn = true;
                b.txn_final = final_position;
                b.txn_replaced.clear();
                *self.copied_in_txn = false;
                b.started.get_or_insert_with(Instant::now);
            }
            Event::Change(change) => {
                let change = if self.snapshots.is_empty() {
                    change
                } else {
                    match skip_for_snapshot(change, b.txn_final.as_ref(), self.snapshots) {
                        Some(c) => c,
                        None => return,
                    }
                };
                b.txn_bytes += bytes;
                b.txn.push(TxnItem::Change(change, bytes));
            }
            Event::Commit {
                position,
                commit_time,
            } => {
                let items = std::mem::take(&mut b.txn);
                b.txn_bytes = 0;
                b.in_txn = false;
                self.stats
                    .changes_folded_ahead
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                if let Err(e) = self.fold_txn(items) {
                    self.error = Some(e);
                    return;
                }
                let b = &mut *self.batch;
                for (column, n) in std::mem::take(&mut b.txn_replaced) {
                    *b.replaced.entry(column).or_insert(0) += n;
                }
                b.commits += 1;
                b.end = Some((position, commit_time));
            }
            _ => self.error = Some(declined("an event it does not take")),
        }
    }
}

/// [`FoldAhead`] met what [`Ahead::accepts`] should have declined.
fn declined(what: &str) -> Error {
    Error::operator(
        format!("folding ahead met {what}"),
        "this is a ferry bug in the applier; report it with the log (restarting resumes from the checkpoint)",
    )
}
