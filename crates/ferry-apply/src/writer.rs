//! Set-wise apply of folded changes into the target (DESIGN.md §5).
//!
//! Consumes: a [`Fold`] (per table: one [`RowOp`] per key, or ordered
//! changes for tables without a key) and [`Barrier`]s, inside ONE target
//! transaction that [`crate::applier::TargetTxn`] opened with `SET LOCAL
//! session_replication_role = replica` (target triggers and FK checks do not
//! fire twice). Emits: SQL against the target; nothing is committed here.
//!
//! Parts: [`sql`] builds every statement text (pure, golden-tested);
//! `staging` owns the session's staging tables and COPYs into them; this
//! module merges staged changes into the target; `in_order` does so change
//! by change for the tables that need source order.
//!
//! Per keyed table: the ops are COPYed (text format) into a temporary
//! staging table (`CREATE TEMP TABLE … ON COMMIT DELETE ROWS`: the target
//! columns on their base types without NOT NULL, plus `__ferry_op`,
//! `__ferry_mask`, `__ferry_seq`), then
//! 1. `DELETE … USING staging` for deleted keys,
//! 2. `INSERT … SELECT … ON CONFLICT (key) DO UPDATE` for upserts, tried
//!    first as a plain insert behind a savepoint (see below),
//! 3. `UPDATE … FROM staging` once per present-column bitmap, so an
//!    unchanged TOAST column is never in the SET list and keeps its value.
//!
//! Deletes go first: after folding each key has one op, so this order gives
//! the final state (see [`crate::fold`]). Tables are independent of each
//! other here because FK checks are off under the replica role.
//!
//! Upserts, plain insert first: `ON CONFLICT` costs the target a
//! speculative insertion per row (a pre-check of the key index, a
//! speculative heap tuple and a second WAL record to confirm it), about
//! twice a plain insert, and in a CDC stream nearly every upsert is an
//! insert of a new key. So the upserts go in as a plain `INSERT` behind a
//! savepoint; when a key is already there (a unique violation: a delete and
//! re-insert folded into one upsert, rows a snapshot already held) the
//! savepoint is rolled back, the same rows go in with the `ON CONFLICT`
//! statement, and the table keeps using it for its next
//! [`CONFLICT_BACKOFF`] batches. The result is the same rows either way,
//! and the failed insert leaves nothing behind. Only a unique violation
//! falls back: on these tables no other non-deferrable unique index can
//! fire (those tables are applied in source order), so it is the key's;
//! and only where the target enforces the key with an immediate,
//! non-partial unique index ([`INSERT_PATH`]: a deferrable one is not
//! checked under the replica role, and without one a plain insert would
//! double a row where `ON CONFLICT` refuses to run). At
//! most [`MAX_INSERT_SAVEPOINTS`] such savepoints per target transaction
//! (each is a subtransaction; a backend tracks 64 in shared memory).
//!
//! The plain insert is a `COPY` straight into the target table where that
//! does what an `INSERT` does ([`InsertPath`]: no rewrite rule, no row
//! security) and no upsert has an unchanged TOAST column: those rows are
//! never staged, which spares the target a staging row written and read
//! per new key (measured in one backend: a 5,000-row batch of
//! `pgbench_history`-like rows cost 3.6–4.7 µs of CPU per row staged and
//! inserted, 2.4–3.5 µs COPYed straight in). A COPY refused by a key that
//! is there rolls back to the savepoint like the `INSERT`, and then the
//! rows are staged and upserted. A keyless table's batch of inserts alone
//! goes in the same way, in source order (`in_order`).
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
//! Staging columns have the target columns' BASE types (domains resolved);
//! staging tables live as long as the session (see `staging`).
//!
//! Restart: nothing here is durable until the caller commits together with
//! the checkpoint; a crash rolls all of it back.
//! Identifiers are always quoted; target names come from
//! `TablesConfig::target_name` (renames).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ferry_core::config::TablesConfig;
use ferry_core::{Error, Result, Row, TableId, TableSchema};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tracing::debug;

use crate::error::pg_error;
use crate::fold::{Barrier, Fold, RowOp, TableFold};
use crate::relation;

mod in_order;
pub mod sql;
mod staging;

use sql::{OP_DELETE, OP_NEW, OP_UPSERT};
use staging::{StageRow, Staging};

/// Batches of a table that upsert with `ON CONFLICT` after a plain
/// `INSERT` of its upserts met a key that was there (see the module docs).
const CONFLICT_BACKOFF: u32 = 64;

/// Plain-insert savepoints per target transaction, at most.
const MAX_INSERT_SAVEPOINTS: usize = 32;

/// The savepoint a plain `INSERT` of upserts runs behind.
const INSERT_SAVEPOINT: &str = "ferry_insert";

/// Applies folds and barriers inside one open target transaction.
#[derive(Debug)]
pub struct Writer {
    tables: TablesConfig,
    /// Staging table per source table (session-lived).
    staging: Staging,
    /// Per source table: applied in source order (see [`Writer::source_order`]).
    source_order: foldhash::HashMap<TableId, bool>,
    /// Per source table: batches left that upsert with `ON CONFLICT` right
    /// away (a plain `INSERT` met an existing key).
    upsert_backoff: HashMap<TableId, u32>,
    /// Plain-insert savepoints set in the open target transaction.
    insert_savepoints: usize,
    /// Per source table: how its new keys may go in ([`InsertPath`]).
    insert_path: HashMap<TableId, InsertPath>,
    /// Per source table: the target table is partitioned (see
    /// [`sql::Target`]).
    partitioned: HashMap<TableId, bool>,
}

/// Of the target table `$1` with the key columns `$2`:
/// 1. whether it has a valid, immediate (not deferrable), non-partial
///    unique index on exactly the key columns: only then does a plain
///    `INSERT` of a key that is there fail instead of doubling the row (a
///    deferrable key is not checked under the replica role);
/// 2. whether `COPY` into it does what `INSERT` does ([`InsertPath`]).
const INSERT_PATH: &str = "
SELECT EXISTS (
  SELECT FROM pg_index i
  WHERE i.indrelid = $1::text::regclass AND i.indisunique AND i.indimmediate
    AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
    AND i.indnkeyatts = cardinality($2::text[])
    AND (SELECT bool_and(a.attname = ANY($2::text[]))
         FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE k.n <= i.indnkeyatts)),
  (SELECT c.relkind IN ('r', 'p') AND NOT c.relhasrules AND NOT c.relrowsecurity
   FROM pg_class c WHERE c.oid = $1::text::regclass)";

/// How a table's new keys may go in without `ON CONFLICT` (read once per
/// table and session).
#[derive(Debug, Clone, Copy)]
struct InsertPath {
    /// The target enforces the key (see [`INSERT_PATH`]): a plain insert
    /// may be tried.
    key_enforced: bool,
    /// `COPY` into the table does what `INSERT` does: a plain table or a
    /// partitioned one (rows routed to their partitions), without rewrite
    /// rules (an `INSERT` runs them, `COPY` does not) and without row
    /// security (`COPY FROM` refuses it).
    copy: bool,
}

impl Writer {
    pub fn new(tables: TablesConfig) -> Self {
        Writer {
            tables,
            staging: Staging::default(),
            source_order: foldhash::HashMap::default(),
            upsert_backoff: HashMap::new(),
            insert_savepoints: 0,
            insert_path: HashMap::new(),
            partitioned: HashMap::new(),
        }
    }

    /// The target table of a source table.
    pub fn target_of(&self, source: &TableId) -> TableId {
        self.tables.target_name(source)
    }

    /// A table's shape changed on the target (a carried schema change):
    /// forget its staging table and its apply-order decision.
    pub async fn forget(&mut self, client: &Client, table: &TableId) {
        self.staging.forget(client, table).await;
        self.source_order.remove(table);
        self.insert_path.remove(table);
        self.partitioned.remove(table);
    }

    /// The target of the source table `source` as the change statements
    /// name it ([`sql::Target`]); whether it is partitioned is read once
    /// per table and session.
    async fn target(&mut self, client: &Client, source: &TableId) -> Result<sql::Target> {
        let id = self.target_of(source);
        let partitioned = match self.partitioned.get(source) {
            Some(&p) => p,
            None => {
                let p = !crate::truncate::partitioned(client, &[id.quoted()])
                    .await?
                    .is_empty();
                self.partitioned.insert(source.clone(), p);
                p
            }
        };
        Ok(sql::Target { id, partitioned })
    }

    /// The apply order ([`Writer::source_order`]) of every table it was
    /// decided for so far in this session.
    pub(crate) fn known_source_order(&self) -> foldhash::HashMap<TableId, bool> {
        self.source_order.clone()
    }

    /// The target transaction ended (committed or not): see `staging`.
    pub(crate) fn txn_ended(&mut self, committed: bool) {
        self.staging.txn_ended(committed);
        self.insert_savepoints = 0;
    }

    /// The target transaction rolled back to its savepoint: see `staging`.
    pub(crate) async fn savepoint_rolled_back(&mut self, client: &Client) -> Result<()> {
        self.staging.savepoint_rolled_back(client).await
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
        schemas: &foldhash::HashMap<TableId, Arc<TableSchema>>,
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
                let sql = sql::truncate_sql(
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

    /// A table's schema changed (or a new table appeared: it is created
    /// when `apply_ddl`): forget cached staging/types, then compare
    /// the new shape with the target table ([`crate::relation`]): a column
    /// added on the source is added on the target when `apply_ddl`; any
    /// other difference (rename, drop, type or key change) is an operator
    /// error before a row of the new shape is written. The target is the
    /// reference (also after a restart), not the previous shape. `true`
    /// when it created the table.
    pub async fn apply_relation(
        &mut self,
        client: &Client,
        new: &TableSchema,
        apply_ddl: bool,
        existing_tables: bool,
    ) -> Result<bool> {
        self.staging.forget(client, &new.id).await;
        self.insert_path.remove(&new.id);
        self.partitioned.remove(&new.id);
        let target = self.target_of(&new.id);
        if apply_ddl && !relation::exists(client, &target).await? {
            debug!(table = %target, "creating a table the source created");
            let sql = format!(
                "{};\n{}",
                crate::ddl::create_schema(&target),
                crate::ddl::create_table(&target, new)
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| pg_error(format!("creating {target}"), e))?;
            return Ok(true);
        }
        let mut drifts = relation::drift(new, &relation::read_shape(client, &target).await?);
        if existing_tables {
            relation::keep_extra_target_columns(&mut drifts);
        }
        relation::check(&new.id, &target, &drifts, apply_ddl)?;
        for sql in relation::add_columns_sql(&target, &drifts) {
            debug!(table = %target, "adding a column the source added");
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| pg_error(format!("altering {target}"), e))?;
        }
        Ok(false)
    }

    /// The empty staging table of `schema`'s table; tables applied in
    /// source order get an index on `__ferry_seq`.
    async fn stage(&mut self, client: &Client, schema: &TableSchema) -> Result<String> {
        let target = self.target_of(&schema.id);
        let by_seq = !schema.has_key() || self.source_order.get(&schema.id) == Some(&true);
        self.staging.stage(client, schema, &target, by_seq).await
    }

    /// Keyed table: stage the folded ops, then delete, upsert and update
    /// (once per present-column bitmap) set-wise. Upserts that may go in
    /// as a plain insert and `COPY` like an `INSERT` ([`InsertPath`]) are
    /// not staged: they are COPYed straight into the target (see the
    /// module docs).
    async fn apply_keyed(&mut self, client: &Client, tf: &TableFold) -> Result<()> {
        let schema = &*tf.schema;
        let target = self.target(client, &schema.id).await?;
        let upserts = tf.ops.iter().any(|op| matches!(op, RowOp::Upsert(_)));
        let plain = match upserts {
            true => self.insert_path(client, &target, schema).await?,
            false => None,
        };
        // Upserts with an unchanged (TOASTed) column keep the staged way,
        // whose statements say what becomes of that column.
        let direct = plain.is_some_and(|p| p.copy)
            && tf.ops.iter().all(|op| match op {
                RowOp::Upsert(r) => !r.has_unchanged(),
                _ => true,
            });
        let mut staged = Vec::with_capacity(tf.ops.len());
        let mut new_keys = Vec::new();
        let mut masks = BTreeSet::new();
        let mut mask = String::new();
        let mut deletes = false;
        for op in &tf.ops {
            let (values, op) = match op {
                RowOp::Delete(r) => {
                    deletes = true;
                    (&r.values[..], OP_DELETE)
                }
                RowOp::Upsert(r) if direct => {
                    new_keys.push(StageRow {
                        values: &r.values,
                        op: OP_UPSERT,
                        seq: 0,
                    });
                    continue;
                }
                RowOp::Upsert(r) => (&r.values[..], OP_UPSERT),
                RowOp::Update(r) => {
                    mask.clear();
                    sql::push_mask(&mut mask, &r.values);
                    if !masks.contains(mask.as_str()) {
                        masks.insert(mask.clone());
                    }
                    (&r.values[..], OP_NEW)
                }
            };
            staged.push(StageRow { values, op, seq: 0 });
        }
        let mut stage = None;
        if !staged.is_empty() {
            let name = self.stage(client, schema).await?;
            Staging::copy(client, &name, schema, &staged).await?;
            stage = Some(name);
        }
        drop(staged);
        let t = &target;
        let write = |sql: String| async move {
            client
                .execute(&sql, &[])
                .await
                .map(drop)
                .map_err(|e| pg_error(format!("writing {t}"), e))
        };
        if deletes && let Some(stage) = &stage {
            write(sql::delete_sql(&target, stage, schema)).await?;
        }
        if upserts {
            let inserted = match (plain, stage.as_deref()) {
                (Some(_), _) if direct => {
                    let copy = sql::copy_target_sql(&target, schema);
                    let rows = &new_keys[..];
                    let attempt = staging::copy_into_target(client, &copy, schema, rows);
                    let refused =
                        |e| staging::copy_error(&format!("writing {target}"), schema, rows, e);
                    self.insert_plainly(client, &target, schema, attempt, refused)
                        .await?
                }
                (Some(_), Some(stage)) => {
                    let insert = sql::insert_sql(&target, stage, schema);
                    let attempt = async { client.execute(&insert, &[]).await.map(drop) };
                    let failed = |e| pg_error(format!("writing {target}"), e);
                    self.insert_plainly(client, &target, schema, attempt, failed)
                        .await?
                }
                _ => false,
            };
            if !inserted {
                let name = match stage.take() {
                    Some(name) => name,
                    None => self.stage(client, schema).await?,
                };
                // Rows meant for the COPY are staged now, beside the
                // deletes and updates if any.
                if !new_keys.is_empty() {
                    Staging::copy(client, &name, schema, &new_keys).await?;
                }
                write(sql::upsert_sql(&target, &name, schema)).await?;
                stage = Some(name);
            }
        }
        if let Some(stage) = &stage {
            for m in &masks {
                if let Some(sql) = sql::update_sql(&target, stage, schema, m) {
                    write(sql).await?;
                }
            }
        }
        Ok(())
    }

    /// Whether `schema`'s upserts may be tried as a plain insert in this
    /// batch, and how ([`InsertPath`]); `None`: upsert them with `ON
    /// CONFLICT` (the table met a key that was there in a recent batch,
    /// the transaction has used its savepoints, or the target does not
    /// enforce the key).
    async fn insert_path(
        &mut self,
        client: &Client,
        target: &sql::Target,
        schema: &TableSchema,
    ) -> Result<Option<InsertPath>> {
        if let Some(left) = self.upsert_backoff.get_mut(&schema.id) {
            *left -= 1;
            if *left == 0 {
                self.upsert_backoff.remove(&schema.id);
            }
            return Ok(None);
        }
        if self.insert_savepoints >= MAX_INSERT_SAVEPOINTS {
            return Ok(None);
        }
        let path = self.read_insert_path(client, target, schema).await?;
        Ok(path.key_enforced.then_some(path))
    }

    /// The [`InsertPath`] of `schema`'s target table, read once per table
    /// and session.
    async fn read_insert_path(
        &mut self,
        client: &Client,
        target: &sql::Target,
        schema: &TableSchema,
    ) -> Result<InsertPath> {
        if let Some(&path) = self.insert_path.get(&schema.id) {
            return Ok(path);
        }
        let key: Vec<String> = schema.key_names().map(str::to_owned).collect();
        let row = client
            .query_one(INSERT_PATH, &[&target.id.quoted(), &key])
            .await
            .map_err(|e| pg_error(format!("reading the key index and rules of {target}"), e))?;
        let path = InsertPath {
            key_enforced: row.get(0),
            copy: row.get::<_, Option<bool>>(1) == Some(true),
        };
        self.insert_path.insert(schema.id.clone(), path);
        Ok(path)
    }

    /// Run `attempt` (a plain insert of `schema`'s upserts) behind a
    /// savepoint (see the module docs): `true` when the rows went in,
    /// `false` when a key was there and the caller must upsert them
    /// (nothing of the attempt is left). `failed` describes any other
    /// failure.
    async fn insert_plainly(
        &mut self,
        client: &Client,
        target: &sql::Target,
        schema: &TableSchema,
        attempt: impl std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>>,
        failed: impl FnOnce(tokio_postgres::Error) -> Error,
    ) -> Result<bool> {
        self.insert_savepoints += 1;
        client
            .batch_execute(&format!("SAVEPOINT {INSERT_SAVEPOINT}"))
            .await
            .map_err(|e| pg_error("creating savepoint", e))?;
        match attempt.await {
            Ok(()) => {
                client
                    .batch_execute(&format!("RELEASE SAVEPOINT {INSERT_SAVEPOINT}"))
                    .await
                    .map_err(|e| pg_error("releasing savepoint", e))?;
                Ok(true)
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                debug!(table = %target, "a key to insert is there already: upserting");
                client
                    .batch_execute(&format!(
                        "ROLLBACK TO SAVEPOINT {INSERT_SAVEPOINT}; RELEASE SAVEPOINT {INSERT_SAVEPOINT}"
                    ))
                    .await
                    .map_err(|e| pg_error("rolling back a plain insert", e))?;
                self.upsert_backoff
                    .insert(schema.id.clone(), CONFLICT_BACKOFF);
                Ok(false)
            }
            Err(e) => Err(failed(e)),
        }
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
        Staging::copy(client, &stage, schema, &rows).await?;
        let target = self.target(client, &schema.id).await?;
        let sql = sql::key_change_sql(&target, &stage, schema, &sql::mask_of(&new.values));
        client
            .execute(&sql, &[])
            .await
            .map_err(|e| pg_error(format!("changing a key of {target}"), e))?;
        Ok(())
    }
}
