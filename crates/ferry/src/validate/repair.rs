//! `ferry validate --repair`: re-copy the keys validation found different
//! from the source to the target, exactly once with respect to the change
//! stream, touching no other row.
//!
//! The argument. The applier writes its checkpoint (stream `main`) in the
//! same target transaction as the data it applies, and it applies source
//! transactions in commit order; every change it applies is a full-row
//! write by key (an upsert, an update of the changed columns, a delete),
//! so applying a change again over a newer row is undone by the later
//! changes to the same key that follow it in the stream.
//!
//! 1. The applier is paused (its own switch: it commits what it holds and
//!    applies nothing more) — through the control API when `ferry validate`
//!    runs beside a `ferry run`, directly when the run asked for it.
//! 2. In one target transaction, the checkpoint row is locked (`FOR
//!    UPDATE`) and read: A. No applier transaction can commit while it is
//!    held (each one writes that row), paused or not.
//! 3. The rows of the keys are read from the source now, at some position
//!    P ≥ A (the source committed everything the target applied).
//! 4. Each key is written as the source holds it at P (upsert by key, or
//!    delete when the source has no such row) and the transaction commits.
//! 5. The applier resumes from A. Changes in (A, P] to a repaired key are
//!    applied again over the row at P — each is a full-row write, and the
//!    last of them leaves the row as it is at P; changes after P are
//!    applied as always. Changes to other keys are untouched.
//!
//! So after the stream passes P the repaired rows equal the source's, and
//! no change is lost or applied twice to a row that was not repaired. A
//! lock not granted quickly (the applier holds a row the repair needs) rolls
//! the repair back and tries again. The repaired keys are then confirmed
//! again like any candidate.

use std::time::Duration;

use anyhow::Context;
use ferry_apply::state::StateStore;
use tracing::{info, warn};

use super::digest::Shape;
use super::session::Sessions;
use super::settle::Key;
use super::side::SourceSide;

/// Attempts when a lock is not granted in time.
const ATTEMPTS: u32 = 10;

/// Re-copy `keys` of one table; the number of rows written or deleted.
pub async fn repair<P: ferry_core::Position>(
    sessions: &Sessions,
    state: &StateStore,
    source: &dyn SourceSide<P>,
    target: &Shape,
    types: &[String],
    keys: &[Key],
) -> anyhow::Result<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match once(sessions, state, source, target, types, keys).await {
            Ok(n) => return Ok(n),
            Err(e) if attempt < ATTEMPTS && is_lock_wait(&e) => {
                warn!(table = %target.relation, attempt, "repair waited too long for a lock; trying again");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("repairing {} keys of {}", keys.len(), target.relation)
                });
            }
        }
    }
}

fn is_lock_wait(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>()
            .is_some_and(super::table::is_lock_wait)
    })
}

async fn once<P: ferry_core::Position>(
    sessions: &Sessions,
    state: &StateStore,
    source: &dyn SourceSide<P>,
    target: &Shape,
    types: &[String],
    keys: &[Key],
) -> anyhow::Result<u64> {
    let t = &sessions.target;
    let replica = ferry_apply::preflight::replica_role_allowed(t)
        .await
        .unwrap_or(false);
    t.batch_execute("BEGIN; SET LOCAL lock_timeout = '500ms'")
        .await?;
    let result = async {
        if replica {
            // As the applier: target triggers do not fire for copied rows.
            t.batch_execute("SET LOCAL session_replication_role = replica")
                .await?;
        }
        let applied: Option<String> = t
            .query_opt(
                &format!(
                    "SELECT position FROM {} WHERE stream = $1 FOR UPDATE",
                    state.table("checkpoint")
                ),
                &[&crate::pipeline::STREAM],
            )
            .await?
            .map(|r| r.get(0));
        let rows = source
            .repair_rows(keys)
            .await
            .context("reading the source rows to repair")?;
        let at = source.position().await?;
        let upsert = target.upsert_sql(types);
        let mut written = 0u64;
        let mut gone = Vec::new();
        for k in keys {
            match rows.get(k) {
                Some(values) => {
                    t.execute(&upsert, &[values]).await?;
                    written += 1;
                }
                None => gone.push(k.clone()),
            }
        }
        if !gone.is_empty() {
            let columns: Vec<Vec<&str>> = (0..target.key_width())
                .map(|i| gone.iter().map(|k| k[i].as_str()).collect())
                .collect();
            let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
                .iter()
                .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            written += t.execute(&target.delete_sql(), &p).await?;
        }
        info!(table = %target.relation, applied = ?applied, source_at = %at, upserted = keys.len() - gone.len(), deleted = gone.len(), "repair written");
        anyhow::Ok(written)
    }
    .await;
    match result {
        Ok(n) => {
            t.batch_execute("COMMIT").await?;
            Ok(n)
        }
        Err(e) => {
            let _ = t.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
