//! The writer's staging tables: one temporary table per source table and
//! session, the changes of a batch COPYed into it before the set-wise
//! statements merge them into the target (see the parent module). Rows that
//! go into the target as they are (new keys, a keyless table's inserts) are
//! COPYed straight into it instead ([`copy_into_target`]), in the same text
//! encoding.
//!
//! Staging tables live as long as the session: created on first use, emptied
//! by the server at each COMMIT (`ON COMMIT DELETE ROWS`: no catalog churn
//! per batch), and `TRUNCATE`d before a second use in one transaction. A
//! table created in a transaction (or subtransaction) that is rolled back is
//! forgotten and created again under a new name; the target transaction's
//! owner ([`crate::applier::TargetTxn`]) reports every end. A schema change
//! (Relation) drops and recreates the table's staging.
//!
//! Columns have the target columns' BASE types (domains resolved): delete
//! rows and unchanged-TOAST updates carry NULL in non-key columns, which a
//! `NOT NULL` domain would refuse.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use ferry_core::schema::quote_ident;
use ferry_core::{Error, Result, TableId, TableSchema, Value};
use futures_util::SinkExt;
use tokio_postgres::Client;

use super::sql::{copy_stage_sql, create_stage_sql};
use crate::conversion::{TargetKind, convert};
use crate::copy_text::push_copy_text;
use crate::error::pg_error;

/// Bytes of COPY data sent at a time.
const COPY_CHUNK: usize = 64 * 1024;

/// The session's staging tables and the target column types they use.
#[derive(Debug, Default)]
pub(super) struct Staging {
    tables: HashMap<TableId, Stage>,
    /// Target column types per source table (`format_type`), by column name.
    types: HashMap<TableId, HashMap<String, String>>,
    next_stage: u64,
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

/// One staging row: the values, op (`sql::OP_*`) and seq; the mask is
/// derived from the values.
pub(super) struct StageRow<'a> {
    pub(super) values: &'a [Value],
    pub(super) op: i16,
    pub(super) seq: i32,
}

/// The values of a row in COPY text, converted to the kinds of their
/// target columns ([`crate::conversion`]), each followed by a tab.
fn push_values(buf: &mut BytesMut, values: &[Value], kinds: &[TargetKind]) {
    for (v, k) in values.iter().zip(kinds) {
        push_copy_text(buf, &convert(v, *k));
        buf.put_u8(b'\t');
    }
}

/// One target row in COPY text: the values alone (see [`copy_rows`]).
fn push_target_row(buf: &mut BytesMut, r: &StageRow<'_>, kinds: &[TargetKind]) {
    push_values(buf, r.values, kinds);
    // The last value's tab ends the line instead.
    if let Some(last) = buf.last_mut() {
        *last = b'\n';
    }
}

/// One staging row in COPY text: the values, then op, mask and seq.
fn push_stage_row(buf: &mut BytesMut, r: &StageRow<'_>, kinds: &[TargetKind]) {
    push_values(buf, r.values, kinds);
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

impl Staging {
    /// Transaction end: staging tables are empty again; those created in
    /// the transaction survive only if it committed.
    pub(super) fn txn_ended(&mut self, committed: bool) {
        self.tables.retain(|_, st| committed || !st.created_in_txn);
        for st in self.tables.values_mut() {
            st.created_in_txn = false;
            st.used_in_txn = false;
        }
    }

    /// After a `ROLLBACK TO SAVEPOINT`: staging tables created in this
    /// transaction may be gone (forget them, dropping any that survived);
    /// the others may hold rows from before the savepoint (truncate before
    /// reuse).
    pub(super) async fn savepoint_rolled_back(&mut self, client: &Client) -> Result<()> {
        let mut gone = Vec::new();
        self.tables.retain(|_, st| {
            if st.created_in_txn {
                gone.push(format!("pg_temp.{}", quote_ident(&st.name)));
            }
            !st.created_in_txn
        });
        for st in self.tables.values_mut() {
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

    /// A table's schema changed: drop its staging table and forget the
    /// target's column types.
    pub(super) async fn forget(&mut self, client: &Client, table: &TableId) {
        if let Some(stage) = self.tables.remove(table) {
            let _ = client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS pg_temp.{}",
                    quote_ident(&stage.name)
                ))
                .await;
        }
        self.types.remove(table);
    }

    /// The target's column types by name, domains resolved to their base
    /// type (`format_type`, typmod included).
    pub(super) async fn column_types(
        &mut self,
        client: &Client,
        table: &TableId,
        target: &TableId,
    ) -> Result<&HashMap<String, String>> {
        if !self.types.contains_key(table) {
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
            self.types.insert(table.clone(), map);
        }
        Ok(&self.types[table])
    }

    /// The empty staging table of `schema`'s table (created on first use,
    /// truncated when already used in this transaction). `by_seq`: index
    /// `__ferry_seq` (source-order statements each find one staged change).
    pub(super) async fn stage(
        &mut self,
        client: &Client,
        schema: &TableSchema,
        target: &TableId,
        by_seq: bool,
    ) -> Result<String> {
        if let Some(st) = self.tables.get_mut(&schema.id) {
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
        let types = self.column_types(client, &schema.id, target).await?;
        let sql = create_stage_sql(&name, target, schema, types, by_seq)?;
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| pg_error(format!("creating staging table for {target}"), e))?;
        let stage = Stage {
            name: name.clone(),
            created_in_txn: true,
            used_in_txn: true,
        };
        self.tables.insert(schema.id.clone(), stage);
        Ok(name)
    }

    /// COPY `rows` into the staging table `stage`.
    pub(super) async fn copy(
        client: &Client,
        stage: &str,
        schema: &TableSchema,
        rows: &[StageRow<'_>],
    ) -> Result<()> {
        copy_rows(
            client,
            &copy_stage_sql(stage, schema),
            schema,
            rows,
            push_stage_row,
        )
        .await
        .map_err(|e| copy_error("copying into staging table", schema, rows, e))
    }
}

/// COPY `rows` (their values only, no op, mask or seq) straight into the
/// target table with `copy_sql` ([`super::sql::copy_target_sql`]); the
/// caller sorts out a failure ([`copy_error`]).
pub(super) async fn copy_into_target(
    client: &Client,
    copy_sql: &str,
    schema: &TableSchema,
    rows: &[StageRow<'_>],
) -> std::result::Result<(), tokio_postgres::Error> {
    copy_rows(client, copy_sql, schema, rows, push_target_row).await
}

/// COPY `rows`, each written by `push_row`, with the statement `sql`.
async fn copy_rows(
    client: &Client,
    sql: &str,
    schema: &TableSchema,
    rows: &[StageRow<'_>],
    push_row: fn(&mut BytesMut, &StageRow<'_>, &[TargetKind]),
) -> std::result::Result<(), tokio_postgres::Error> {
    let sink = client.copy_in::<_, bytes::Bytes>(sql).await?;
    futures_util::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK);
    let kinds: Vec<TargetKind> = schema
        .columns
        .iter()
        .map(|c| TargetKind::of(&c.pg_type))
        .collect();
    for r in rows {
        push_row(&mut buf, r, &kinds);
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze()).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(buf.freeze()).await?;
    }
    sink.as_mut().finish().await?;
    Ok(())
}

/// A failed COPY of `rows` (into a staging table or the target): a value
/// the target column's type refused names the table, the key of its row
/// (one row per COPY line) and the column, with the fix; `what` names the
/// COPY in any other failure.
pub(super) fn copy_error(
    what: &str,
    schema: &TableSchema,
    rows: &[StageRow<'_>],
    e: tokio_postgres::Error,
) -> Error {
    let Some(failure) = crate::error::copy_failure(&e) else {
        return pg_error(what, e);
    };
    let Some(row) = failure.line.checked_sub(1).and_then(|i| rows.get(i)) else {
        return pg_error(what, e);
    };
    let key = schema.key_text(row.values);
    crate::error::value_refused(
        "applying a change",
        schema,
        &key,
        &failure,
        "the change is read again from the checkpoint when ferry run starts, so it must fit: give the target column a type that takes the value (ALTER TABLE … ALTER COLUMN … TYPE …, and the same in its `tables.columns` type override if one chose the type), then run ferry run again",
        e,
    )
}
