//! Folding ahead: while the target commits a batch, the next batch's plain
//! source transactions are folded as they arrive ([`Ahead::take`]), so the
//! applier's own work on them (the fold's key encoding and merging)
//! overlaps the target's instead of waiting for it. Measured on the
//! pgbench tpcb-like backlog before this existed: the applier spent a
//! fifth of the drain folding between two batches while the target sat
//! idle.
//!
//! Only what needs nothing of the target is handled here, exactly as
//! [`super::Applier::handle`] would: `Begin`, replaced-value counts, row
//! changes while the transaction stays within its share (it would spill
//! otherwise), and the `Commit` of a transaction that is not skipped and
//! whose changes are all inserts, deletes and updates that keep their key,
//! of tables whose schema and apply order are known. The first event that
//! needs more (a `Relation`, a schema change, a heartbeat, a truncate, a
//! key change, a table whose apply order is not decided yet, a transaction
//! the checkpoint skips) is given back: it and every event after it wait
//! in the intake queue and are handled in order once the batch committed.
//! The next batch is the same either way. Nothing is folded ahead while
//! the applier decides apply orders afresh per batch
//! ([`super::ApplierConfig::recheck_order`]): that decision needs the
//! target.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_core::size::ApproxBytes;
use ferry_core::{Change, Error, Event, Position, TableId, TableSchema};

use super::batch::{Batch, TxnItem};
use super::snapshot_skip::skip_for_snapshot;
use crate::checkpoint::should_skip;

/// What handling an event ahead reads and writes: the next batch and what
/// the applier knows without the target.
pub(super) struct Ahead<'a, P> {
    pub(super) batch: &'a mut Batch<P>,
    pub(super) schemas: &'a foldhash::HashMap<TableId, Arc<TableSchema>>,
    pub(super) snapshots: &'a HashMap<TableId, P>,
    pub(super) checkpoint: Option<&'a P>,
    /// The writer's apply order per table decided so far.
    pub(super) in_order: foldhash::HashMap<TableId, bool>,
    pub(super) copied_in_txn: &'a mut bool,
    /// The limits the applier flushes and spills at: with `batch_rows`
    /// changes or `max_bytes` folded no further transaction begins here;
    /// an open one takes fewer than `batch_rows` changes and `max_bytes`
    /// before it is given back (it would spill).
    pub(super) batch_rows: usize,
    pub(super) max_bytes: usize,
    /// A change could not be folded: the error, returned once the batch
    /// being committed is done; nothing more is taken.
    pub(super) failed: Option<Error>,
    /// Transactions folded here.
    pub(super) folded: u64,
}

impl<P: Position> Ahead<'_, P> {
    /// Handle `ev` (of `bytes`, as the intake counted it) into the next
    /// batch when that needs nothing of the target (see the module docs);
    /// otherwise give it back.
    pub(super) fn take(&mut self, ev: Event<P>, bytes: usize) -> Option<Event<P>> {
        if self.failed.is_some() {
            return Some(ev);
        }
        let batch = &mut *self.batch;
        match ev {
            Event::Begin { final_position, .. }
                if !batch.in_txn
                    && batch.rows < self.batch_rows
                    && batch.fold_bytes < self.max_bytes =>
            {
                batch.begin(final_position);
                *self.copied_in_txn = false;
                None
            }
            Event::Change(change) if batch.in_txn && !matches!(change, Change::Truncate { .. }) => {
                let (change, bytes) = match self.snapshots.is_empty() {
                    true => (change, bytes),
                    false => {
                        let c =
                            skip_for_snapshot(change, batch.txn_final.as_ref(), self.snapshots)?;
                        let b = c.approx_bytes();
                        (c, b)
                    }
                };
                if batch.txn.len() + 1 >= self.batch_rows
                    || batch.txn_bytes + bytes >= self.max_bytes
                {
                    return Some(Event::Change(change));
                }
                batch.txn_bytes += bytes;
                batch.txn.push(TxnItem::Change(change, bytes));
                None
            }
            Event::Replaced {
                table,
                column,
                values,
            } if batch.in_txn => {
                let held = super::snapshot_skip::held_by_snapshot(
                    &table,
                    batch.txn_final.as_ref(),
                    self.snapshots,
                );
                if !held {
                    *batch.txn_replaced.entry((table, column)).or_insert(0) += values;
                }
                None
            }
            Event::Commit {
                position,
                commit_time,
            } if batch.in_txn && !*self.copied_in_txn && self.foldable(&position) => {
                self.commit(position, commit_time);
                None
            }
            ev => Some(ev),
        }
    }

    /// Whether the open transaction, committing at `position`, folds here.
    fn foldable(&self, position: &P) -> bool {
        let batch = &*self.batch;
        let skipped = should_skip(position, self.checkpoint)
            || batch.end.as_ref().is_some_and(|(p, _)| position <= p);
        !skipped
            && batch.txn.iter().all(|item| match item {
                TxnItem::Change(c, _) => self.order(c).is_some(),
                TxnItem::Relation(_) | TxnItem::Ddl(_) => false,
            })
    }

    /// The apply order of `c`'s table when `c` folds without a barrier:
    /// `None` for an unknown table or order, and for an update that
    /// carries its old row (a key change, or a full replica identity).
    fn order(&self, c: &Change) -> Option<bool> {
        self.order_in(self.schemas.get(c.table()?)?, c)
    }

    /// [`Ahead::order`] with `c`'s schema looked up already.
    fn order_in(&self, schema: &TableSchema, c: &Change) -> Option<bool> {
        let in_order = match schema.has_key() {
            true => *self.in_order.get(&schema.id)?,
            false => false,
        };
        let key_change =
            schema.has_key() && !in_order && matches!(c, Change::Update { old: Some(_), .. });
        (!key_change).then_some(in_order)
    }

    /// Fold the open transaction (every change [`Ahead::order`] allowed)
    /// and commit it into the batch.
    fn commit(&mut self, position: P, time: ferry_core::value::Timestamp) {
        let items = std::mem::take(&mut self.batch.txn);
        self.batch.txn_bytes = 0;
        self.batch.in_txn = false;
        for item in items {
            let TxnItem::Change(c, bytes) = item else {
                continue;
            };
            // One lookup per change: this runs for every change folded.
            let schema = c.table().and_then(|t| self.schemas.get(t)).cloned();
            let in_order = schema
                .as_ref()
                .and_then(|s| self.order_in(s, &c))
                .unwrap_or(false);
            match self.batch.fold_change(c, bytes, schema.as_ref(), in_order) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    self.failed = Some(Error::operator(
                        "a change folded ahead of the target needed a barrier",
                        "this is a ferry bug in the applier; report it with the log",
                    ));
                    return;
                }
                Err(e) => {
                    self.failed = Some(e.into());
                    return;
                }
            }
        }
        self.batch.committed(position, time);
        self.folded += 1;
    }
}

#[cfg(test)]
mod tests {
    use ferry_core::value::Timestamp;
    use ferry_core::{Column, Lsn, OldRow, ReplicaIdentity, Row, Value};

    use super::*;

    fn schema(name: &str, keyed: bool) -> Arc<TableSchema> {
        let col = |name: &str| Column {
            name: name.into(),
            source_type: "int4".into(),
            pg_type: "int4".into(),
            type_oid: None,
            nullable: true,
        };
        Arc::new(TableSchema {
            id: TableId::new("public", name),
            columns: vec![col("id"), col("n")],
            key: if keyed { vec![0] } else { vec![] },
            replica_identity: ReplicaIdentity::Default,
        })
    }

    fn row(id: i32, n: i32) -> Row {
        Row::new(vec![Value::Int4(id), Value::Int4(n)])
    }

    fn begin() -> Event<Lsn> {
        Event::Begin {
            xid: None,
            commit_time: Timestamp::from_unix_micros(0),
            final_position: None,
        }
    }

    fn commit(lsn: u64) -> Event<Lsn> {
        Event::Commit {
            position: Lsn(lsn),
            commit_time: Timestamp::from_unix_micros(0),
        }
    }

    fn ins(t: &str, id: i32, n: i32) -> Event<Lsn> {
        Event::Change(Change::Insert {
            table: TableId::new("public", t),
            new: row(id, n),
        })
    }

    fn upd(t: &str, old: Option<i32>, id: i32, n: i32) -> Event<Lsn> {
        Event::Change(Change::Update {
            table: TableId::new("public", t),
            old: old.map(|o| OldRow::Key(row(o, 0))),
            new: row(id, n),
        })
    }

    /// Tables: `t` keyed and folded, `k` without a key, `o` keyed with
    /// its apply order not decided yet.
    struct World {
        batch: Batch<Lsn>,
        schemas: foldhash::HashMap<TableId, Arc<TableSchema>>,
        snapshots: HashMap<TableId, Lsn>,
        copied: bool,
    }

    impl World {
        fn new() -> Self {
            let schemas = [schema("t", true), schema("k", false), schema("o", true)]
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect();
            World {
                batch: Batch::default(),
                schemas,
                snapshots: HashMap::new(),
                copied: false,
            }
        }

        /// Feed `events` as the intake does while the target works: the
        /// given-back ones (and every one after the first) are returned.
        fn feed(
            &mut self,
            checkpoint: Option<Lsn>,
            events: Vec<Event<Lsn>>,
        ) -> (Vec<Event<Lsn>>, u64) {
            let mut ahead = Ahead {
                batch: &mut self.batch,
                schemas: &self.schemas,
                snapshots: &self.snapshots,
                checkpoint: checkpoint.as_ref(),
                in_order: [(TableId::new("public", "t"), false)].into_iter().collect(),
                copied_in_txn: &mut self.copied,
                batch_rows: 5,
                max_bytes: 1 << 20,
                failed: None,
                folded: 0,
            };
            let mut back = Vec::new();
            for ev in events {
                match back.is_empty() {
                    true => {
                        let bytes = ev.approx_bytes();
                        back.extend(ahead.take(ev, bytes));
                    }
                    false => back.push(ev),
                }
            }
            assert!(ahead.failed.is_none());
            (back, ahead.folded)
        }
    }

    #[test]
    fn plain_transactions_fold_into_the_next_batch() {
        let mut w = World::new();
        let (back, folded) = w.feed(
            None,
            vec![
                begin(),
                ins("t", 1, 1),
                upd("t", None, 1, 2),
                ins("k", 7, 7),
                commit(10),
                begin(),
                upd("t", None, 2, 5),
                commit(20),
            ],
        );
        assert!(back.is_empty(), "{back:?}");
        assert_eq!(folded, 2);
        let b = &w.batch;
        assert_eq!((b.commits, b.rows, b.in_txn), (2, 4, false));
        assert_eq!(b.end.as_ref().map(|(p, _)| *p), Some(Lsn(20)));
        assert!(b.started.is_some());
        let t = b.fold.tables().find(|tf| tf.schema.id.name == "t").unwrap();
        assert_eq!(t.ops.len(), 2, "key 1 folded into one op");
    }

    #[test]
    fn what_needs_the_target_is_given_back_with_everything_after_it() {
        // A key change (an update carrying its old key) of a folded table.
        let mut w = World::new();
        let events = vec![begin(), upd("t", Some(1), 2, 0), commit(10), begin()];
        let (back, folded) = w.feed(None, events.clone());
        assert_eq!((folded, back), (0, events[2..].to_vec()));
        assert!(
            w.batch.in_txn,
            "Begin and the change wait in the open transaction"
        );
        assert_eq!(w.batch.txn.len(), 1);

        // A table whose apply order is not decided, a truncate, a
        // relation, a heartbeat.
        for ev in [
            ins("o", 1, 1),
            Event::Change(Change::Truncate {
                tables: vec![TableId::new("public", "t")],
                cascade: false,
                restart_identity: false,
            }),
        ] {
            let mut w = World::new();
            let (back, _) = w.feed(None, vec![begin(), ev.clone(), commit(10)]);
            let want = match ev {
                Event::Change(Change::Truncate { .. }) => vec![ev, commit(10)],
                _ => vec![commit(10)],
            };
            assert_eq!(back, want);
        }
        let mut w = World::new();
        let relation = Event::Relation(schema("t", true));
        let heartbeat = Event::Heartbeat {
            position: Lsn(5),
            time: Timestamp::from_unix_micros(0),
        };
        let (back, _) = w.feed(None, vec![relation.clone(), begin()]);
        assert_eq!(back, vec![relation, begin()]);
        let (back, _) = w.feed(None, vec![heartbeat.clone()]);
        assert_eq!(back, vec![heartbeat]);

        // A transaction at or before the checkpoint (skipped).
        let mut w = World::new();
        let (back, folded) = w.feed(Some(Lsn(10)), vec![begin(), ins("t", 1, 1), commit(10)]);
        assert_eq!((folded, back), (0, vec![commit(10)]));
    }

    #[test]
    fn the_batch_and_the_transaction_keep_their_limits() {
        // A transaction reaching `batch_rows` changes would spill: its
        // change is given back.
        let mut w = World::new();
        let mut events = vec![begin()];
        events.extend((0..5).map(|i| ins("t", i, i)));
        let (back, _) = w.feed(None, events.clone());
        assert_eq!(back, events[5..].to_vec());
        assert_eq!(w.batch.txn.len(), 4);

        // A full batch begins no further transaction here.
        let mut w = World::new();
        let mut events = Vec::new();
        for i in 0..3 {
            events.extend([begin(), ins("t", 2 * i, 0), ins("t", 2 * i + 1, 0)]);
            events.push(commit(10 * (i as u64 + 1)));
        }
        let (back, folded) = w.feed(None, events.clone());
        assert_eq!(folded, 3);
        assert!(back.is_empty());
        let (back, _) = w.feed(None, vec![begin()]);
        assert_eq!(back, vec![begin()], "6 rows folded: the batch is full");
    }
}
