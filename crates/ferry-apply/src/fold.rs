//! Folding the changes of a batch per (table, key), without changing the
//! final state (DESIGN.md §5 "fold changes per key inside the batch").
//!
//! Consumes: [`Change`]s of whole, committed source transactions in source
//! order. Emits: per table either one [`RowOp`] per key (keyed tables) or the
//! changes in order (tables without a key, and tables the caller asks to keep
//! in source order, are never folded), plus
//! [`Barrier`]s the caller must apply on their own after everything folded so
//! far (the caller applies the fold, then the barrier, then continues).
//!
//! Rules (the per-key state is relative to the target before this fold):
//!
//! | earlier      | later             | result                                   |
//! |--------------|-------------------|------------------------------------------|
//! | —/Delete     | Insert            | Upsert(row)                              |
//! | Upsert(r)    | Update(u)         | Upsert(r ⊕ u)  (u's Unchanged keep r)    |
//! | Update(r)/—  | Update(u)         | Update(r ⊕ u)                            |
//! | any          | Delete            | Delete(original key)                     |
//! | any          | key change a→b    | Delete(a) + Upsert(b, full row)          |
//!
//! `Insert` then `Delete` folds to `Delete`, not to nothing: deleting an
//! absent key costs little, and it keeps catch-up idempotent when a batch
//! straddles the snapshot point (the snapshot may hold that row).
//! A key-changing update whose new row still has Unchanged columns (unchanged
//! TOAST we cannot fill from the fold) becomes a [`Barrier::KeyChange`].
//! `Truncate` is a barrier for every table: pending changes of the truncated
//! tables are dropped (the truncate would erase them), the rest is applied
//! first.
//!
//! Why set-wise application is then correct: after folding, every key has at
//! most one op, ops on distinct keys commute, and the writer applies all
//! deletes before all upserts/updates of a table. Ops on distinct keys
//! commute only while no other constraint sees them: a target table with a
//! non-deferrable unique index or exclusion constraint besides the key (a
//! value freed by one row and taken by another) must see its changes in
//! source order, so the caller pushes those with `in_source_order` (see
//! [`crate::writer::Writer::source_order`]) and they stay a sequence.
//!
//! Keys are compared by their PostgreSQL text form (encoded as a COPY text
//! row, see [`key_text`]); two spellings of one value (`1.0` vs `1.00` in a
//! numeric key) would not fold together.
//!
//! Cost: this runs once per row change, so keys are encoded into a reused
//! buffer (one allocation per new key only) and same-key merges move values
//! instead of cloning them.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use ferry_core::{Change, OldRow, Row, TableId, TableSchema, Value};
use foldhash::{HashMap, HashMapExt};

use crate::copy_text::push_copy_text_row;
use crate::error::FoldError;

/// Text form of a row's key columns: the COPY text encoding of the key
/// values (tab-separated, `\N` for NULL, special bytes escaped), which is
/// injective, so two keys are equal exactly when their texts are.
pub type KeyText = Vec<u8>;

/// The net effect of a batch on one key.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOp {
    /// The key is absent afterwards. Full-width row; only key columns matter.
    Delete(Row),
    /// The key holds exactly this row afterwards (from an insert; complete
    /// unless the source sent Unchanged in an insert).
    Upsert(Row),
    /// Present columns are set on an existing row; `Value::Unchanged`
    /// columns keep the target's value. No-op when the key is absent.
    Update(Row),
}

/// A change that cannot be folded: apply everything folded so far, then it.
#[derive(Debug, Clone, PartialEq)]
pub enum Barrier {
    Truncate {
        tables: Vec<TableId>,
        cascade: bool,
        restart_identity: bool,
    },
    /// Key change with Unchanged columns: `UPDATE … SET <present columns>
    /// WHERE key = old_key`. `old_key` is full-width (key columns matter).
    KeyChange {
        table: TableId,
        old_key: Row,
        new: Row,
    },
}

/// Pending changes of one table.
#[derive(Debug, Clone)]
pub struct TableFold {
    pub schema: Arc<TableSchema>,
    /// Keyed tables: one op per key, in first-touched order.
    pub ops: Vec<RowOp>,
    index: HashMap<KeyText, usize>,
    /// Tables without a key, or kept in source order: the changes in order.
    pub sequential: Vec<Change>,
    /// A keyed table whose changes are kept in source order (`sequential`).
    pub in_source_order: bool,
    /// Source row changes folded in (for stats).
    pub changes: u64,
}

impl TableFold {
    fn new(schema: Arc<TableSchema>) -> Self {
        TableFold {
            schema,
            ops: Vec::new(),
            index: HashMap::new(),
            sequential: Vec::new(),
            in_source_order: false,
            changes: 0,
        }
    }

    fn get(&self, key: &[u8]) -> Option<&RowOp> {
        self.index.get(key).map(|&i| &self.ops[i])
    }

    fn set(&mut self, key: &[u8], op: RowOp) {
        match self.index.get(key) {
            Some(&i) => self.ops[i] = op,
            None => {
                self.index.insert(key.to_vec(), self.ops.len());
                self.ops.push(op);
            }
        }
    }

    /// Replace the op of `key` by `f(previous op)`, moving the previous op.
    fn update(&mut self, key: &[u8], f: impl FnOnce(Option<RowOp>) -> RowOp) {
        match self.index.get(key) {
            Some(&i) => {
                let prev = std::mem::replace(&mut self.ops[i], RowOp::Update(Row::default()));
                self.ops[i] = f(Some(prev));
            }
            None => {
                self.index.insert(key.to_vec(), self.ops.len());
                self.ops.push(f(None));
            }
        }
    }
}

/// The folded, not yet applied part of a batch.
#[derive(Debug, Clone, Default)]
pub struct Fold {
    tables: BTreeMap<TableId, TableFold>,
    changes: usize,
    /// Reused key-encoding buffers (old and new key of an update).
    scratch: [BytesMut; 2],
}

/// Text form of the key columns of `row`.
pub fn key_text(row: &Row, key: &[usize]) -> KeyText {
    let mut buf = BytesMut::new();
    encode_key(&mut buf, row, key);
    buf.to_vec()
}

/// Encode the key columns of `row` into `buf` (cleared first).
fn encode_key<'a>(buf: &'a mut BytesMut, row: &Row, key: &[usize]) -> &'a [u8] {
    buf.clear();
    push_copy_text_row(
        buf,
        key.iter()
            .map(|&i| row.values.get(i).unwrap_or(&Value::Null)),
    );
    &buf[..]
}

/// `later` with its Unchanged columns taken from `base`, by move.
fn merge_owned(base: Row, mut later: Row) -> Row {
    for (l, b) in later.values.iter_mut().zip(base.values) {
        if matches!(l, Value::Unchanged) {
            *l = b;
        }
    }
    later
}

/// `later` with its Unchanged columns taken from `base`.
pub fn merge_row(base: &Row, later: &Row) -> Row {
    Row::new(
        later
            .values
            .iter()
            .zip(&base.values)
            .map(|(l, b)| match l {
                Value::Unchanged => b.clone(),
                v => v.clone(),
            })
            .collect(),
    )
}

/// Fold a same-key update onto the earlier op: an update of a row the
/// fold inserted stays an insert (upsert); otherwise it stays an update,
/// which, like the source's, does nothing when the row is absent.
fn fold_update(prev: Option<RowOp>, new: Row) -> RowOp {
    match prev {
        Some(RowOp::Upsert(r)) => RowOp::Upsert(merge_owned(r, new)),
        Some(RowOp::Update(r)) => RowOp::Update(merge_owned(r, new)),
        Some(RowOp::Delete(_)) | None => RowOp::Update(new),
    }
}

/// A full-width row holding only the key columns of `row`.
fn key_row(row: &Row, key: &[usize]) -> Row {
    let mut values = vec![Value::Null; row.values.len()];
    for &i in key {
        values[i] = row.values[i].clone();
    }
    Row::new(values)
}

fn check_width(schema: &TableSchema, row: &Row) -> Result<(), FoldError> {
    if row.values.len() != schema.columns.len() {
        return Err(FoldError::Width {
            table: schema.id.clone(),
            got: row.values.len(),
            expected: schema.columns.len(),
        });
    }
    Ok(())
}

impl Fold {
    pub fn new() -> Self {
        Fold::default()
    }

    /// Source row changes folded in since the last [`Fold::take`].
    pub fn changes(&self) -> usize {
        self.changes
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Everything folded so far; leaves the fold empty.
    pub fn take(&mut self) -> Fold {
        Fold {
            tables: std::mem::take(&mut self.tables),
            changes: std::mem::take(&mut self.changes),
            scratch: Default::default(),
        }
    }

    /// The pending tables.
    /// Whether `table` has entered this fold (its apply order is decided).
    pub fn contains(&self, table: &TableId) -> bool {
        self.tables.contains_key(table)
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableFold> {
        self.tables.values()
    }

    /// Fold one change. `schema` is the table's current schema (ignored for
    /// truncate). On `Some(barrier)` the caller applies this fold first,
    /// then the barrier.
    pub fn push(
        &mut self,
        change: Change,
        schema: Option<&Arc<TableSchema>>,
    ) -> Result<Option<Barrier>, FoldError> {
        self.push_with(change, schema, false)
    }

    /// [`Fold::push`]; with `in_source_order` a keyed table's changes are
    /// kept in order instead of folded (decided when the table first enters
    /// this fold).
    pub fn push_with(
        &mut self,
        change: Change,
        schema: Option<&Arc<TableSchema>>,
        in_source_order: bool,
    ) -> Result<Option<Barrier>, FoldError> {
        self.changes += 1;
        if let Change::Truncate {
            tables,
            cascade,
            restart_identity,
        } = change
        {
            for t in &tables {
                self.tables.remove(t);
            }
            return Ok(Some(Barrier::Truncate {
                tables,
                cascade,
                restart_identity,
            }));
        }
        let Some(schema) = schema else {
            let table = change.table().cloned();
            return Err(FoldError::UnknownTable(
                table.unwrap_or_else(|| TableId::new("", "")),
            ));
        };
        let table = &schema.id;
        if !self.tables.contains_key(table) {
            let mut tf = TableFold::new(Arc::clone(schema));
            tf.in_source_order = in_source_order && schema.has_key();
            self.tables.insert(table.clone(), tf);
        }
        let Some(tf) = self.tables.get_mut(table) else {
            return Err(FoldError::UnknownTable(table.clone()));
        };
        tf.changes += 1;
        if schema.has_key() && !tf.in_source_order {
            fold_keyed(tf, change, &mut self.scratch)
        } else {
            push_sequential(tf, change).map(|()| None)
        }
    }
}

fn push_sequential(tf: &mut TableFold, change: Change) -> Result<(), FoldError> {
    match &change {
        Change::Insert { new, .. } => check_width(&tf.schema, new)?,
        Change::Update { old, new, .. } => {
            check_width(&tf.schema, new)?;
            // A keyed table's update without an old row kept its key.
            match old {
                Some(old) => check_width(&tf.schema, old.row())?,
                None if tf.schema.has_key() => {}
                None => return Err(FoldError::NoOldRow(tf.schema.id.clone())),
            }
        }
        Change::Delete { old, .. } => check_width(&tf.schema, old.row())?,
        Change::Truncate { .. } => {}
    }
    tf.sequential.push(change);
    Ok(())
}

fn fold_keyed(
    tf: &mut TableFold,
    change: Change,
    scratch: &mut [BytesMut; 2],
) -> Result<Option<Barrier>, FoldError> {
    let schema = Arc::clone(&tf.schema);
    let key = &schema.key;
    let [buf_new, buf_old] = scratch;
    match change {
        Change::Insert { new, .. } => {
            check_width(&schema, &new)?;
            let k = encode_key(buf_new, &new, key);
            tf.set(k, RowOp::Upsert(new));
        }
        Change::Delete { old, .. } => {
            let old = old.row();
            check_width(&schema, old)?;
            let k = encode_key(buf_new, old, key);
            tf.set(k, RowOp::Delete(key_row(old, key)));
        }
        Change::Update { table, old, new } => {
            check_width(&schema, &new)?;
            let old_row = old.as_ref().map(OldRow::row);
            if let Some(o) = old_row {
                check_width(&schema, o)?;
            }
            // Key columns the new row left Unchanged keep the old key's value.
            let new = match old_row {
                Some(o) => fill_key(new, o, key),
                None => new,
            };
            let k_new = encode_key(buf_new, &new, key);
            let k_old = match old_row {
                Some(o) => encode_key(buf_old, o, key),
                None => k_new,
            };
            if k_old == k_new {
                tf.update(k_new, |prev| fold_update(prev, new));
                return Ok(None);
            }
            let resolved = match tf.get(k_old) {
                Some(RowOp::Upsert(r)) | Some(RowOp::Update(r)) => merge_row(r, &new),
                _ => new,
            };
            let old_key = key_row(old_row.unwrap_or(&resolved), key);
            if resolved.has_unchanged() {
                return Ok(Some(Barrier::KeyChange {
                    table,
                    old_key,
                    new: resolved,
                }));
            }
            tf.set(k_old, RowOp::Delete(old_key));
            tf.set(k_new, RowOp::Upsert(resolved));
        }
        Change::Truncate { .. } => {}
    }
    Ok(None)
}

fn fill_key(mut new: Row, old: &Row, key: &[usize]) -> Row {
    for &i in key {
        if matches!(new.values[i], Value::Unchanged) {
            new.values[i] = old.values[i].clone();
        }
    }
    new
}

#[cfg(test)]
mod tests;
