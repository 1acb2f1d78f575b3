//! Set-wise apply of folded changes into the target (DESIGN.md §5).
//!
//! Consumes: a [`Fold`] (per table: one [`RowOp`] per key, or ordered
//! changes for tables without a key) and [`Barrier`]s, inside ONE target
//! transaction opened by [`Writer::begin`] with `SET LOCAL
//! session_replication_role = replica` (target triggers and FK checks do not
//! fire twice). Emits: SQL against the target; nothing is committed here
//! except by [`Writer::commit`].
//!
//! Per keyed table: the ops are COPYed (text format) into a temporary
//! staging table (`CREATE TEMP TABLE … ON COMMIT DELETE ROWS`: the target
//! columns on their base types without NOT NULL, plus `__ferry_op`,
//! `__ferry_mask`, `__ferry_seq`), then
//! 1. `DELETE … USING staging` for deleted keys,
//! 2. `INSERT … SELECT … ON CONFLICT (key) DO UPDATE` for upserts,
//! 3. `UPDATE … FROM staging` once per present-column bitmap, so an
//!    unchanged TOAST column is never in the SET list and keeps its value.
//!
//! Deletes go first: after folding each key has one op, so this order gives
//! the final state (see [`crate::fold`]). Tables are independent of each
//! other here because FK checks are off under the replica role.
//!
//! Tables without a key, and keyed tables whose target has another
//! non-deferrable unique index or exclusion constraint ([`Writer::source_order`]:
//! folding would reorder a value freed by one row and taken by another),
//! are applied in source order ([`Writer::apply_fold`], `apply_in_order`):
//! each run of consecutive inserts is one `INSERT … SELECT … ORDER BY
//! __ferry_seq`, a run of deletes of a keyed table one `DELETE … USING`, and
//! every other change one statement that finds its staged row by the index
//! on `__ferry_seq`; those statements are pipelined (sent back to back, in
//! order, before their results are read). A change of a table without a key
//! matches a row on all columns the source sent (`=` or `IS NULL`, so a
//! target index on any of them is used; types without equality, e.g. json
//! or point, compare as text) and touches ONE row via `ctid = (SELECT ctid …
//! LIMIT 1)`, so duplicate rows stay duplicates. Deferrable constraints need
//! no order: under `session_replication_role = replica` the server does not
//! run their deferred checks, and the batch ends in the source's state.
//!
//! Staging columns have the target columns' BASE types (domains resolved):
//! delete rows and unchanged-TOAST updates carry NULL in non-key columns,
//! which a `NOT NULL` domain would refuse.
//!
//! Staging tables live as long as the session: created on first use, emptied
//! by the server at each COMMIT (`ON COMMIT DELETE ROWS`: no catalog churn
//! per batch), and `TRUNCATE`d before a second use in one transaction. A
//! table created in a transaction (or subtransaction) that is rolled back is
//! forgotten and created again under a new name. A schema change (Relation)
//! drops and recreates the table's staging.
//!
//! Restart: nothing here is durable until the caller commits together with
//! the checkpoint; a crash rolls all of it back.
//! Identifiers are always quoted; target names come from
//! `TablesConfig::target_name` (renames).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use ferry_core::config::TablesConfig;
use ferry_core::schema::quote_ident;
use ferry_core::{Change, Error, Result, Row, TableId, TableSchema, Value};
use futures_util::SinkExt;
use tokio_postgres::Client;
use tracing::debug;

use crate::copy_text::push_copy_text;
use crate::error::pg_error;
use crate::fold::{Barrier, Fold, RowOp, TableFold};
use crate::relation;

const OP_DELETE: i16 = 0;
const OP_UPSERT: i16 = 1;
const OP_NEW: i16 = 2;
const OP_OLD: i16 = 3;

/// Types without a btree equality operator: compared as text.
const TEXT_COMPARED: [&str; 9] = [
    "json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle",
];

/// Applies folds and barriers inside one open target transaction.
#[derive(Debug)]
pub struct Writer {
    tables: TablesConfig,
    /// Staging table per source table (session-lived).
    staging: HashMap<TableId, Stage>,
    /// Target column types per source table (`format_type`), by column name.
    types: HashMap<TableId, HashMap<String, String>>,
    /// Per source table: applied in source order (see [`Writer::source_order`]).
    source_order: HashMap<TableId, bool>,
    next_stage: u64,
    /// `begin` sets `session_replication_role = replica`.
    replica_role: bool,
}

/// A session-lived staging table.
#[derive(Debug)]
struct Stage {
    name: String,
    /// Created in the open transaction: gone if it rolls back.
    created_in_txn: bool,
    /// Holds rows of the open transaction: `TRUNCATE` before reuse.
    used_in_txn: bool,
}

/// Staging rows for one table: (values, op, mask, seq).
struct StageRow<'a> {
    values: &'a [Value],
    op: i16,
    seq: i32,
}

fn mask_of(values: &[Value]) -> String {
    let mut mask = String::with_capacity(values.len());
    push_mask(&mut mask, values);
    mask
}

/// Append the present-column bitmap of `values` ('1' present, '0' Unchanged).
fn push_mask(out: &mut String, values: &[Value]) {
    out.extend(values.iter().map(|v| {
        if matches!(v, Value::Unchanged) {
            '0'
        } else {
            '1'
        }
    }));
}

/// One staging row in COPY text: the values, then op, mask and seq.
fn push_stage_row(buf: &mut BytesMut, r: &StageRow<'_>) {
    for v in r.values {
        push_copy_text(buf, v);
        buf.put_u8(b'\t');
    }
    push_copy_text(buf, &Value::Int2(r.op));
    buf.put_u8(b'\t');
    for v in r.values {
        buf.put_u8(if matches!(v, Value::Unchanged) {
            b'0'
        } else {
            b'1'
        });
    }
    buf.put_u8(b'\t');
    push_copy_text(buf, &Value::Int4(r.seq));
    buf.put_u8(b'\n');
}

impl Writer {
    pub fn new(tables: TablesConfig) -> Self {
        Writer {
            tables,
            staging: HashMap::new(),
            types: HashMap::new(),
            source_order: HashMap::new(),
            next_stage: 0,
            replica_role: true,
        }
    }

    /// Whether [`Writer::begin`] sets `session_replication_role = replica`
    /// (default). Off for a target role that may not set it: ferry then
    /// keeps target triggers disabled and foreign keys off itself
    /// (no-replica-role mode, see the `ferry` pipeline's overrides).
    pub fn set_replica_role(&mut self, on: bool) {
        self.replica_role = on;
    }

    /// The target table of a source table.
    pub fn target_of(&self, source: &TableId) -> TableId {
        self.tables.target_name(source)
    }

    /// `BEGIN` + `SET LOCAL session_replication_role = replica` (just
    /// `BEGIN` with [`Writer::set_replica_role`] off).
    pub async fn begin(&mut self, client: &Client) -> Result<()> {
        self.end_of_txn(true);
        let sql = if self.replica_role {
            "BEGIN; SET LOCAL session_replication_role = replica"
        } else {
            "BEGIN"
        };
        client
            .batch_execute(sql)
            .await
            .map_err(|e| {
                let err = pg_error("starting target apply transaction", e);
                if err.is_transient() {
                    err
                } else {
                    err.with_fix(
                        "the target role cannot set session_replication_role: connect as a superuser (or, on RDS/Aurora, a member of rds_superuser)",
                    )
                }
            })
    }

    pub async fn commit(&mut self, client: &Client) -> Result<()> {
        let done = client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg_error("committing target transaction", e));
        // A failed COMMIT rolled back: tables created in it are gone.
        self.end_of_txn(done.is_ok());
        done
    }

    /// Transaction end: staging tables are empty again; those created in
    /// the transaction survive only if it committed.
    fn end_of_txn(&mut self, committed: bool) {
        self.staging.retain(|_, st| committed || !st.created_in_txn);
        for st in self.staging.values_mut() {
            st.created_in_txn = false;
            st.used_in_txn = false;
        }
    }

    /// After a `ROLLBACK TO SAVEPOINT`: staging tables created in this
    /// transaction may be gone (forget them, dropping any that survived);
    /// the others may hold rows from before the savepoint (truncate before
    /// reuse).
    pub async fn after_savepoint_rollback(&mut self, client: &Client) -> Result<()> {
        let mut gone = Vec::new();
        self.staging.retain(|_, st| {
            if st.created_in_txn {
                gone.push(format!("pg_temp.{}", quote_ident(&st.name)));
            }
            !st.created_in_txn
        });
        for st in self.staging.values_mut() {
            st.used_in_txn = true;
        }
        if gone.is_empty() {
            return Ok(());
        }
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", gone.join(", ")))
            .await
            .map_err(|e| pg_error("dropping staging tables", e))
    }

    /// Roll back the open transaction (best effort on a broken connection).
    pub async fn rollback(&mut self, client: &Client) -> Result<()> {
        self.end_of_txn(false);
        client
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| pg_error("rolling back target transaction", e))
    }

    /// Apply everything in `fold`; returns source changes applied.
    pub async fn apply_fold(&mut self, client: &Client, fold: &Fold) -> Result<u64> {
        let mut n = 0;
        for tf in fold.tables() {
            let table = &tf.schema.id;
            let res = if tf.schema.has_key() && !tf.in_source_order {
                self.apply_keyed(client, tf).await
            } else {
                self.apply_in_order(client, tf).await
            };
            res.map_err(|e| e.context(format!("applying changes to {table}")))?;
            n += tf.changes;
        }
        Ok(n)
    }

    /// Apply a barrier after the fold before it.
    pub async fn apply_barrier(
        &mut self,
        client: &Client,
        barrier: &Barrier,
        schemas: &HashMap<TableId, Arc<TableSchema>>,
    ) -> Result<()> {
        match barrier {
            Barrier::Truncate {
                tables,
                cascade,
                restart_identity,
            } => {
                let names: Vec<String> =
                    tables.iter().map(|t| self.target_of(t).quoted()).collect();
                let partitioned = crate::truncate::partitioned(client, &names).await?;
                let sql = truncate_sql(
                    &crate::truncate::targets(&names, &partitioned),
                    *cascade,
                    *restart_identity,
                );
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| pg_error(format!("truncating {}", names.join(", ")), e))
            }
            Barrier::KeyChange {
                table,
                old_key,
                new,
            } => {
                let schema = schemas.get(table).ok_or_else(|| {
                    Error::from(crate::error::FoldError::UnknownTable(table.clone()))
                })?;
                self.apply_key_change(client, schema, old_key, new)
                    .await
                    .map_err(|e| e.context(format!("changing a key of {table}")))
            }
        }
    }

    /// A table's schema changed: forget cached staging/types, then compare
    /// the new shape with the target table ([`crate::relation`]): a column
    /// added on the source is added on the target when `apply_ddl`; any
    /// other difference (rename, drop, type or key change) is an operator
    /// error before a row of the new shape is written. `old` is not needed:
    /// the target is the reference (also after a restart).
    pub async fn apply_relation(
        &mut self,
        client: &Client,
        _old: Option<&TableSchema>,
        new: &TableSchema,
        apply_ddl: bool,
    ) -> Result<()> {
        if let Some(stage) = self.staging.remove(&new.id) {
            let _ = client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS pg_temp.{}",
                    quote_ident(&stage.name)
                ))
                .await;
        }
        self.types.remove(&new.id);
        let target = self.target_of(&new.id);
        let drifts = relation::drift(new, &relation::read_shape(client, &target).await?);
        relation::check(&new.id, &target, &drifts, apply_ddl)?;
        for sql in relation::add_columns_sql(&target, &drifts) {
            debug!(table = %target, "adding a column the source added");
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| pg_error(format!("altering {target}"), e))?;
        }
        Ok(())
    }

    /// The target's column types by name, domains resolved to their base
    /// type (`format_type`, typmod included).
    async fn column_types(
        &mut self,
        client: &Client,
        schema: &TableSchema,
    ) -> Result<&HashMap<String, String>> {
        if !self.types.contains_key(&schema.id) {
            let target = self.target_of(&schema.id);
            let rows = client
                .query(
                    "WITH RECURSIVE c(name, typid, typmod) AS (
                         SELECT attname::text, atttypid, atttypmod FROM pg_attribute
                         WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
                       UNION ALL
                         SELECT c.name, t.typbasetype, t.typtypmod
                         FROM c JOIN pg_type t ON t.oid = c.typid WHERE t.typtype = 'd')
                     SELECT c.name, format_type(c.typid, c.typmod)
                     FROM c JOIN pg_type t ON t.oid = c.typid WHERE t.typtype <> 'd'",
                    &[&target.quoted()],
                )
                .await
                .map_err(|e| pg_error(format!("reading columns of {target}"), e))?;
            let map = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
            self.types.insert(schema.id.clone(), map);
        }
        Ok(&self.types[&schema.id])
    }

    /// The empty staging table of `schema`'s table (created on first use,
    /// truncated when already used in this transaction).
    /// Tables applied in source order get an index on `__ferry_seq` (their
    /// statements each find one staged change).
    async fn stage(&mut self, client: &Client, schema: &TableSchema) -> Result<String> {
        if let Some(st) = self.staging.get_mut(&schema.id) {
            if st.used_in_txn {
                let sql = format!("TRUNCATE pg_temp.{}", quote_ident(&st.name));
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| pg_error("emptying staging table", e))?;
            }
            st.used_in_txn = true;
            return Ok(st.name.clone());
        }
        self.next_stage += 1;
        let name = format!("ferry_stage_{}", self.next_stage);
        let target = self.target_of(&schema.id);
        let by_seq = !schema.has_key() || self.source_order.get(&schema.id) == Some(&true);
        let types = self.column_types(client, schema).await?;
        let sql = create_stage_sql(&name, &target, schema, types, by_seq)?;
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| pg_error(format!("creating staging table for {target}"), e))?;
        let stage = Stage {
            name: name.clone(),
            created_in_txn: true,
            used_in_txn: true,
        };
        self.staging.insert(schema.id.clone(), stage);
        Ok(name)
    }

    /// COPY rows into the staging table.
    async fn copy_stage(
        &self,
        client: &Client,
        stage: &str,
        schema: &TableSchema,
        rows: &[StageRow<'_>],
    ) -> Result<()> {
        let mut cols: Vec<String> = schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        cols.extend(["__ferry_op", "__ferry_mask", "__ferry_seq"].map(quote_ident));
        let sql = format!(
            "COPY pg_temp.{} ({}) FROM STDIN",
            quote_ident(stage),
            cols.join(", ")
        );
        let sink = client
            .copy_in::<_, bytes::Bytes>(&sql)
            .await
            .map_err(|e| pg_error("copying into staging table", e))?;
        futures_util::pin_mut!(sink);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        for r in rows {
            push_stage_row(&mut buf, r);
            if buf.len() >= 64 * 1024 {
                sink.send(buf.split().freeze())
                    .await
                    .map_err(|e| pg_error("copying into staging table", e))?;
            }
        }
        if !buf.is_empty() {
            sink.send(buf.freeze())
                .await
                .map_err(|e| pg_error("copying into staging table", e))?;
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| pg_error("copying into staging table", e))?;
        Ok(())
    }

    async fn apply_keyed(&mut self, client: &Client, tf: &TableFold) -> Result<()> {
        let schema = &*tf.schema;
        let mut rows = Vec::with_capacity(tf.ops.len());
        let mut masks = BTreeSet::new();
        let mut mask = String::new();
        let (mut deletes, mut upserts) = (false, false);
        for op in &tf.ops {
            let (values, op) = match op {
                RowOp::Delete(r) => {
                    deletes = true;
                    (&r.values[..], OP_DELETE)
                }
                RowOp::Upsert(r) => {
                    upserts = true;
                    (&r.values[..], OP_UPSERT)
                }
                RowOp::Update(r) => {
                    mask.clear();
                    push_mask(&mut mask, &r.values);
                    if !masks.contains(mask.as_str()) {
                        masks.insert(mask.clone());
                    }
                    (&r.values[..], OP_NEW)
                }
            };
            rows.push(StageRow { values, op, seq: 0 });
        }
        let stage = self.stage(client, schema).await?;
        self.copy_stage(client, &stage, schema, &rows).await?;
        let target = self.target_of(&schema.id);
        let mut stmts = Vec::new();
        if deletes {
            stmts.push(delete_sql(&target, &stage, schema));
        }
        if upserts {
            stmts.push(upsert_sql(&target, &stage, schema));
        }
        stmts.extend(
            masks
                .iter()
                .filter_map(|m| update_sql(&target, &stage, schema, m)),
        );
        for sql in stmts {
            client
                .execute(&sql, &[])
                .await
                .map_err(|e| pg_error(format!("writing {target}"), e))?;
        }
        Ok(())
    }

    async fn apply_key_change(
        &mut self,
        client: &Client,
        schema: &TableSchema,
        old_key: &Row,
        new: &Row,
    ) -> Result<()> {
        let rows = [
            StageRow {
                values: &old_key.values,
                op: OP_DELETE,
                seq: 0,
            },
            StageRow {
                values: &new.values,
                op: OP_NEW,
                seq: 0,
            },
        ];
        let stage = self.stage(client, schema).await?;
        self.copy_stage(client, &stage, schema, &rows).await?;
        let target = self.target_of(&schema.id);
        let sql = key_change_sql(&target, &stage, schema, &mask_of(&new.values));
        client
            .execute(&sql, &[])
            .await
            .map_err(|e| pg_error(format!("changing a key of {target}"), e))?;
        Ok(())
    }
}

fn cols(schema: &TableSchema, prefix: &str) -> String {
    schema
        .columns
        .iter()
        .map(|c| format!("{prefix}{}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_match(schema: &TableSchema, t: &str, s: &str) -> String {
    schema
        .key_names()
        .map(|k| format!("{t}.{q} = {s}.{q}", q = quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The staging table DDL: the target's columns on their base `types`, plus
/// op, mask and seq (indexed when `by_seq`).
pub fn create_stage_sql(
    stage: &str,
    target: &TableId,
    schema: &TableSchema,
    types: &HashMap<String, String>,
    by_seq: bool,
) -> Result<String> {
    let mut defs = Vec::with_capacity(schema.columns.len() + 3);
    for c in &schema.columns {
        let ty = types.get(&c.name).ok_or_else(|| {
            Error::operator(
                format!("target table {target} has no column {:?}", c.name),
                "add the column on the target (or map the table to one that has it), then restart ferry run",
            )
        })?;
        defs.push(format!("{} {ty}", quote_ident(&c.name)));
    }
    defs.extend(
        [
            "__ferry_op smallint",
            "__ferry_mask text",
            "__ferry_seq int",
        ]
        .map(str::to_owned),
    );
    let s = quote_ident(stage);
    let mut sql = format!(
        "CREATE TEMP TABLE {s} ({}) ON COMMIT DELETE ROWS",
        defs.join(", ")
    );
    if by_seq {
        sql.push_str(&format!("; CREATE INDEX ON pg_temp.{s} (__ferry_seq)"));
    }
    Ok(sql)
}

pub fn delete_sql(target: &TableId, stage: &str, schema: &TableSchema) -> String {
    format!(
        "DELETE FROM {} AS t USING pg_temp.{} AS s WHERE s.__ferry_op = {OP_DELETE} AND {}",
        target.quoted(),
        quote_ident(stage),
        key_match(schema, "t", "s")
    )
}

pub fn upsert_sql(target: &TableId, stage: &str, schema: &TableSchema) -> String {
    format!(
        "INSERT INTO {} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM pg_temp.{} WHERE __ferry_op = {OP_UPSERT} {}",
        target.quoted(),
        quote_ident(stage),
        on_conflict_sql(schema),
        c = cols(schema, ""),
    )
}

/// `ON CONFLICT (key) DO UPDATE SET <non-key columns>` (or `DO NOTHING`).
fn on_conflict_sql(schema: &TableSchema) -> String {
    let keys: Vec<String> = schema.key_names().map(quote_ident).collect();
    let sets: Vec<String> = schema
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !schema.key.contains(i))
        .map(|(_, c)| format!("{q} = EXCLUDED.{q}", q = quote_ident(&c.name)))
        .collect();
    let action = if sets.is_empty() {
        "NOTHING".to_owned()
    } else {
        format!("UPDATE SET {}", sets.join(", "))
    };
    format!("ON CONFLICT ({}) DO {action}", keys.join(", "))
}

/// `UPDATE … FROM staging` for rows whose present-column bitmap is `mask`;
/// `None` when no non-key column is present.
pub fn update_sql(
    target: &TableId,
    stage: &str,
    schema: &TableSchema,
    mask: &str,
) -> Option<String> {
    let sets: Vec<String> = schema
        .columns
        .iter()
        .zip(mask.chars())
        .enumerate()
        .filter(|(i, (_, m))| *m == '1' && !schema.key.contains(i))
        .map(|(_, (c, _))| format!("{q} = s.{q}", q = quote_ident(&c.name)))
        .collect();
    if sets.is_empty() {
        return None;
    }
    Some(format!(
        "UPDATE {} AS t SET {} FROM pg_temp.{} AS s WHERE s.__ferry_op = {OP_NEW} AND s.__ferry_mask = '{mask}' AND {}",
        target.quoted(),
        sets.join(", "),
        quote_ident(stage),
        key_match(schema, "t", "s")
    ))
}

/// Key change with Unchanged columns: set the present columns (key
/// included) of the row found by the old key.
pub fn key_change_sql(target: &TableId, stage: &str, schema: &TableSchema, mask: &str) -> String {
    let sets: Vec<String> = schema
        .columns
        .iter()
        .zip(mask.chars())
        .filter(|(_, m)| *m == '1')
        .map(|(c, _)| format!("{q} = n.{q}", q = quote_ident(&c.name)))
        .collect();
    format!(
        "UPDATE {} AS t SET {} FROM pg_temp.{s} AS n, pg_temp.{s} AS o WHERE n.__ferry_op = {OP_NEW} AND o.__ferry_op = {OP_DELETE} AND {}",
        target.quoted(),
        sets.join(", "),
        key_match(schema, "t", "o"),
        s = quote_ident(stage),
    )
}

pub fn truncate_sql(targets: &[String], cascade: bool, restart_identity: bool) -> String {
    format!(
        "TRUNCATE {}{}{}",
        targets.join(", "),
        if restart_identity {
            " RESTART IDENTITY"
        } else {
            ""
        },
        if cascade { " CASCADE" } else { "" }
    )
}

mod in_order;

#[cfg(test)]
mod tests;
