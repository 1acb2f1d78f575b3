//! Source-order apply: tables without a key, and keyed tables whose target
//! has a constraint that sees the order of changes across keys (see the
//! parent module docs).
//!
//! A batch's changes of such a table are staged once (seq = position in the
//! batch), then turned into steps: a run of consecutive inserts is one
//! statement over a seq range, so is a run of deletes of a keyed table;
//! every other change is one statement over its own seq. Steps are sent
//! pipelined, in order (tokio-postgres sends a request when its future is
//! first polled), and their results read in order; the server runs them one
//! after the other, so the target sees exactly the source's order.
//!
//! A keyless table's batch that holds inserts alone is not staged: its rows
//! are COPYed straight into the target, in source order (see
//! `Writer::copy_inserts`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use ferry_core::{Change, Error, Result, TableSchema, Value};
use futures_util::future::{MaybeDone, maybe_done};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};
use tracing::info;

use super::Writer;
use super::sql::{
    InOrderSql, OP_DELETE, OP_NEW, OP_OLD, OP_UPSERT, StepKind, copy_target_sql, mask_of,
    match_pattern,
};
use super::staging::{self, StageRow, Staging};
use crate::error::pg_error;
use crate::fold::TableFold;

/// Steps sent before their results are read (bounds what is in flight).
const PIPELINE_WINDOW: usize = 1024;

/// A unique index or exclusion constraint of a target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetIndex {
    pub name: String,
    pub exclusion: bool,
    /// Belongs to a DEFERRABLE constraint.
    pub deferrable: bool,
    /// Plain key columns of the index (expressions and INCLUDE columns left
    /// out).
    pub columns: Vec<String>,
}

/// The first index that can see the order of changes across keys: a
/// non-deferrable exclusion constraint, or a non-deferrable unique index
/// that does not hold every key column (one that does is implied by the
/// key, partial or not). Deferrable constraints are not checked under
/// `session_replication_role = replica`, and a batch ends in the source's
/// state, so they never need the order.
pub fn order_sensitive<'a>(key: &[&str], indexes: &'a [TargetIndex]) -> Option<&'a TargetIndex> {
    indexes.iter().find(|ix| {
        !ix.deferrable && (ix.exclusion || !key.iter().all(|k| ix.columns.iter().any(|c| c == k)))
    })
}

const TARGET_INDEXES: &str = "
SELECT i.indexrelid::regclass::text, i.indisexclusion, COALESCE(c.condeferrable, false),
       ARRAY(SELECT a.attname::text
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE k.n <= i.indnkeyatts ORDER BY k.n)
FROM pg_index i
LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
     AND c.contype IN ('p', 'u', 'x')
WHERE i.indrelid = $1::text::regclass AND (i.indisunique OR i.indisexclusion)
ORDER BY 1";

/// A statement over the staged changes `first..=last`.
#[derive(Debug)]
struct Step {
    stmt: usize,
    first: i32,
    last: i32,
}

impl Writer {
    /// Whether `schema`'s table must be applied in source order: keyed, and
    /// the target has a unique index or exclusion constraint that can see
    /// the order of changes across keys ([`order_sensitive`]). Read once
    /// per table and session (a constraint added on the target while ferry
    /// runs is seen after a restart).
    pub async fn source_order(&mut self, client: &Client, schema: &TableSchema) -> Result<bool> {
        if !schema.has_key() {
            return Ok(false);
        }
        if let Some(&b) = self.source_order.get(&schema.id) {
            return Ok(b);
        }
        let target = self.target_of(&schema.id);
        let rows = client
            .query(TARGET_INDEXES, &[&target.quoted()])
            .await
            .map_err(|e| pg_error(format!("reading unique indexes of {target}"), e))?;
        let indexes: Vec<TargetIndex> = rows
            .iter()
            .map(|r| TargetIndex {
                name: r.get(0),
                exclusion: r.get(1),
                deferrable: r.get(2),
                columns: r.get(3),
            })
            .collect();
        let key: Vec<&str> = schema.key_names().collect();
        let hit = order_sensitive(&key, &indexes);
        if let Some(ix) = hit {
            info!(
                table = %target,
                index = %ix.name,
                "applying changes in source order: the target has a unique or exclusion constraint besides the key"
            );
        }
        self.source_order.insert(schema.id.clone(), hit.is_some());
        Ok(hit.is_some())
    }

    /// [`Writer::source_order`] read afresh (not cached) after locking the
    /// table `ROW EXCLUSIVE` in the caller's open transaction: a unique
    /// index being built on it is either committed before the read, or
    /// waits until that transaction ends.
    pub async fn source_order_locked(
        &mut self,
        client: &Client,
        schema: &TableSchema,
    ) -> Result<bool> {
        if !schema.has_key() {
            return Ok(false);
        }
        let target = self.target_of(&schema.id);
        client
            .batch_execute(&format!(
                "LOCK TABLE {} IN ROW EXCLUSIVE MODE",
                target.quoted()
            ))
            .await
            .map_err(|e| pg_error(format!("locking {target} to read its unique indexes"), e))?;
        self.source_order.remove(&schema.id);
        let in_order = self.source_order(client, schema).await;
        self.source_order.remove(&schema.id);
        in_order
    }

    /// Apply `tf.sequential` in source order.
    pub(super) async fn apply_in_order(&mut self, client: &Client, tf: &TableFold) -> Result<()> {
        let schema = &*tf.schema;
        let keyed = schema.has_key();
        if !keyed && self.copy_inserts(client, tf).await? {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(tf.sequential.len());
        let mut kinds: Vec<(StepKind, i32)> = Vec::with_capacity(tf.sequential.len());
        for (i, change) in tf.sequential.iter().enumerate() {
            let seq = i32::try_from(i).map_err(|_| {
                Error::operator(
                    format!("batch of {} holds more than 2^31 changes", schema.id),
                    "lower apply.batch_rows",
                )
            })?;
            match change {
                Change::Insert { new, .. } => {
                    rows.push(StageRow {
                        values: &new.values,
                        op: OP_UPSERT,
                        seq,
                    });
                    kinds.push((StepKind::Inserts, seq));
                }
                Change::Delete { old, .. } => {
                    let old = &old.row().values;
                    rows.push(StageRow {
                        values: old,
                        op: OP_DELETE,
                        seq,
                    });
                    let kind = if keyed {
                        StepKind::Deletes
                    } else {
                        StepKind::DeleteOne(match_pattern(old))
                    };
                    kinds.push((kind, seq));
                }
                Change::Update { old, new, .. } => {
                    // A keyed update without an old row kept its key.
                    let old = old.as_ref().map_or(&new.values, |o| &o.row().values);
                    rows.push(StageRow {
                        values: old,
                        op: OP_OLD,
                        seq,
                    });
                    rows.push(StageRow {
                        values: &new.values,
                        op: OP_NEW,
                        seq,
                    });
                    let key_change = keyed
                        && schema.key.iter().any(|&k| {
                            !matches!(new.values[k], Value::Unchanged) && new.values[k] != old[k]
                        });
                    let pattern = if keyed {
                        String::new()
                    } else {
                        match_pattern(old)
                    };
                    let mask = mask_of(&new.values);
                    kinds.push((
                        StepKind::UpdateOne {
                            pattern,
                            mask,
                            key_change,
                        },
                        seq,
                    ));
                }
                Change::Truncate { .. } => {}
            }
        }
        let stage = self.stage(client, schema).await?;
        Staging::copy(client, &stage, schema, &rows).await?;
        drop(rows);
        let target = self.target(client, &schema.id).await?;
        let types = self
            .staging
            .column_types(client, &schema.id, &target.id)
            .await?
            .clone();
        let sqls = InOrderSql {
            target: &target,
            stage: &stage,
            schema,
            types: &types,
        };
        // Steps, with one prepared statement per distinct statement text.
        let mut texts: HashMap<String, usize> = HashMap::new();
        let mut stmts: Vec<Statement> = Vec::new();
        let mut steps: Vec<Step> = Vec::new();
        let mut last_kind: Option<StepKind> = None;
        for (kind, seq) in kinds {
            let is_run = matches!(kind, StepKind::Inserts | StepKind::Deletes);
            if is_run
                && last_kind.as_ref() == Some(&kind)
                && let Some(step) = steps.last_mut()
            {
                step.last = seq;
                continue;
            }
            let Some(sql) = sqls.sql(&kind) else {
                // Nothing to set: the change is a no-op on the target.
                last_kind = None;
                continue;
            };
            let stmt = match texts.get(&sql) {
                Some(&i) => i,
                None => {
                    let prepared = client
                        .prepare_typed(&sql, &[Type::INT4, Type::INT4])
                        .await
                        .map_err(|e| pg_error(format!("preparing writes to {target}"), e))?;
                    stmts.push(prepared);
                    texts.insert(sql, stmts.len() - 1);
                    stmts.len() - 1
                }
            };
            steps.push(Step {
                stmt,
                first: seq,
                last: seq,
            });
            last_kind = Some(kind);
        }
        run_pipelined(client, &stmts, &steps, &target).await
    }
}

impl Writer {
    /// A keyless table's batch of inserts alone (an append-only table's
    /// usual batch) COPYed straight into the target in source order, where
    /// `COPY` does what `INSERT` does ([`super::InsertPath`]): the same
    /// rows in the same order as the staged `INSERT … SELECT … ORDER BY
    /// __ferry_seq`, without writing and indexing a staging row each.
    /// `false`: nothing done, stage them.
    async fn copy_inserts(&mut self, client: &Client, tf: &TableFold) -> Result<bool> {
        let mut rows = Vec::with_capacity(tf.sequential.len());
        for change in &tf.sequential {
            match change {
                Change::Insert { new, .. } if !new.has_unchanged() => rows.push(StageRow {
                    values: &new.values,
                    op: OP_UPSERT,
                    seq: 0,
                }),
                _ => return Ok(false),
            }
        }
        let schema = &*tf.schema;
        let target = self.target(client, &schema.id).await?;
        if !self.read_insert_path(client, &target, schema).await?.copy {
            return Ok(false);
        }
        let copy = copy_target_sql(&target, schema);
        staging::copy_into_target(client, &copy, schema, &rows)
            .await
            .map_err(|e| staging::copy_error(&format!("writing {target}"), schema, &rows, e))?;
        Ok(true)
    }
}

/// Send `steps` back to back (in order), then read their results in order.
async fn run_pipelined(
    client: &Client,
    stmts: &[Statement],
    steps: &[Step],
    target: &super::sql::Target,
) -> Result<()> {
    for window in steps.chunks(PIPELINE_WINDOW) {
        let params: Vec<[&(dyn ToSql + Sync); 2]> = window
            .iter()
            .map(|s| [&s.first as &(dyn ToSql + Sync), &s.last as _])
            .collect();
        let mut pending: Vec<Pin<Box<MaybeDone<_>>>> = window
            .iter()
            .zip(&params)
            .map(|(s, p)| Box::pin(maybe_done(client.execute(&stmts[s.stmt], &p[..]))))
            .collect();
        // The first poll of each future sends its request.
        std::future::poll_fn(|cx| {
            for f in &mut pending {
                let _ = f.as_mut().poll(cx);
            }
            Poll::Ready(())
        })
        .await;
        for (f, s) in pending.iter_mut().zip(window) {
            f.as_mut().await;
            if let Some(Err(e)) = f.as_mut().take_output() {
                return Err(pg_error(
                    format!(
                        "writing {target} in source order (change {} of the batch's changes to it)",
                        s.first + 1
                    ),
                    e,
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ix(name: &str, exclusion: bool, deferrable: bool, cols: &[&str]) -> TargetIndex {
        TargetIndex {
            name: name.into(),
            exclusion,
            deferrable,
            columns: cols.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn which_constraints_need_source_order() {
        let cases: [(&str, Vec<TargetIndex>, Option<&str>); 7] = [
            (
                "primary key only",
                vec![ix("pk", false, false, &["id"])],
                None,
            ),
            (
                "unique email",
                vec![
                    ix("pk", false, false, &["id"]),
                    ix("em", false, false, &["email"]),
                ],
                Some("em"),
            ),
            (
                "unique on key plus more is implied by the key",
                vec![ix("u", false, false, &["org", "id"])],
                None,
            ),
            (
                "partial unique without the key (expressions dropped)",
                vec![ix("one_primary", false, false, &["user_id"])],
                Some("one_primary"),
            ),
            (
                "unique on an expression only",
                vec![ix("lower_email", false, false, &[])],
                Some("lower_email"),
            ),
            (
                "exclusion constraint",
                vec![ix("no_overlap", true, false, &["room", "during"])],
                Some("no_overlap"),
            ),
            (
                "deferrable unique and exclusion: not checked under the replica role",
                vec![
                    ix("pos", false, true, &["pos"]),
                    ix("x", true, true, &["during"]),
                ],
                None,
            ),
        ];
        for (name, indexes, want) in cases {
            let got = order_sensitive(&["id"], &indexes).map(|i| i.name.as_str());
            assert_eq!(got, want, "{name}");
        }
    }
}
