//! The applier's target transaction: the ONE place that opens it, splits it
//! with a savepoint, writes the checkpoint into it and ends it (DESIGN.md §1
//! invariants 1 and 2).
//!
//! Consumes: calls from the [`super::Applier`] at batch and source
//! transaction boundaries. Emits: `BEGIN` (with the session settings, see
//! [`TargetTxn::begin`]), `SAVEPOINT` / `RELEASE` / `ROLLBACK TO` around a
//! source transaction applied in pieces, the checkpoint upsert
//! ([`crate::checkpoint::write_checkpoint`]) and `COMMIT` or `ROLLBACK`.
//! Batches and heartbeat-only checkpoints go through the same `BEGIN`, so
//! both run under the same session settings.
//!
//! Invariants: the checkpoint is written in the same transaction as the
//! data it covers, so they commit together; `open` is set before `BEGIN` is
//! sent, so after any error the caller rolls back (a failed `COMMIT` rolled
//! back already). The [`Writer`]'s staging tables hear of every end (and of
//! a rollback to the savepoint): a table created in a transaction that did
//! not commit is gone.
//!
//! Restart: nothing here survives a crash but what committed; the
//! [`Failpoint`]s sit between checkpoint and `COMMIT` and between `COMMIT`
//! and the acknowledgement.

use ferry_core::value::Timestamp;
use ferry_core::{Position, Result};
use tokio_postgres::Client;

use crate::checkpoint::{Failpoint, write_checkpoint};
use crate::error::pg_error;
use crate::state::StateStore;
use crate::writer::Writer;

/// The savepoint a source transaction applied in pieces sits behind.
const SAVEPOINT: &str = "ferry_txn";

/// The target session of one source stream and its open transaction.
#[derive(Debug)]
pub struct TargetTxn {
    client: Client,
    state: StateStore,
    /// Checkpoint row name.
    stream: String,
    /// `BEGIN` sets `session_replication_role = replica`.
    replica_role: bool,
    failpoint: Option<Failpoint>,
    /// `BEGIN` was sent and no `COMMIT`/`ROLLBACK` since.
    open: bool,
    /// The savepoint is set.
    savepoint: bool,
}

impl TargetTxn {
    /// No transaction open yet. `replica_role`: see [`TargetTxn::begin`].
    /// Reads `FERRY_FAILPOINT` (test only).
    pub fn new(
        client: Client,
        state: StateStore,
        stream: impl Into<String>,
        replica_role: bool,
    ) -> Self {
        TargetTxn {
            client,
            state,
            stream: stream.into(),
            replica_role,
            failpoint: Failpoint::from_env(),
            open: false,
            savepoint: false,
        }
    }

    pub fn state(&self) -> &StateStore {
        &self.state
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn into_client(self) -> Client {
        self.client
    }

    /// A transaction is open (possibly broken: roll it back).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The savepoint is set (a source transaction is partly applied).
    pub fn in_savepoint(&self) -> bool {
        self.savepoint
    }

    /// `BEGIN` + `SET LOCAL session_replication_role = replica` (target
    /// triggers and FK checks do not fire twice), or just `BEGIN` in
    /// no-replica-role mode (see [`crate::preflight::replica_role_allowed`]:
    /// ferry then keeps target triggers disabled and foreign keys off
    /// itself). Nothing when a transaction is open.
    pub async fn begin(&mut self, writer: &mut Writer) -> Result<()> {
        if self.open {
            return Ok(());
        }
        writer.txn_ended(true);
        // Set before sending: on any error the caller rolls back.
        self.open = true;
        let sql = if self.replica_role {
            "BEGIN; SET LOCAL session_replication_role = replica"
        } else {
            "BEGIN"
        };
        self.client.batch_execute(sql).await.map_err(|e| {
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

    /// Set the savepoint a large source transaction is applied behind
    /// (opening the transaction first). Nothing when it is set.
    pub async fn savepoint(&mut self, writer: &mut Writer) -> Result<()> {
        if self.savepoint {
            return Ok(());
        }
        self.begin(writer).await?;
        self.client
            .batch_execute(&format!("SAVEPOINT {SAVEPOINT}"))
            .await
            .map_err(|e| pg_error("creating savepoint", e))?;
        self.savepoint = true;
        Ok(())
    }

    /// The source transaction behind the savepoint is complete: keep it.
    pub async fn release_savepoint(&mut self) -> Result<()> {
        if !self.savepoint {
            return Ok(());
        }
        self.client
            .batch_execute(&format!("RELEASE SAVEPOINT {SAVEPOINT}"))
            .await
            .map_err(|e| pg_error("releasing savepoint", e))?;
        self.savepoint = false;
        Ok(())
    }

    /// Undo what was applied behind the savepoint (the transaction stays
    /// open with what came before it).
    pub async fn rollback_to_savepoint(&mut self, writer: &mut Writer) -> Result<()> {
        if !self.savepoint {
            return Ok(());
        }
        self.client
            .batch_execute(&format!(
                "ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
            ))
            .await
            .map_err(|e| pg_error("rolling back a partly applied transaction", e))?;
        self.savepoint = false;
        writer.savepoint_rolled_back(&self.client).await
    }

    /// Add `counts` (per source table and column: values a source policy
    /// replaced, [`ferry_core::Event::Replaced`]) to the state's
    /// `replaced_values`, in the open transaction (opening it if needed), so
    /// they commit with the rows they were counted in.
    pub async fn count_replaced(
        &mut self,
        counts: &std::collections::BTreeMap<(ferry_core::TableId, String), u64>,
    ) -> Result<()> {
        if !self.open {
            return Err(ferry_core::Error::transient(
                "replaced-value counts outside the batch's transaction",
            ));
        }
        let sql = format!(
            "INSERT INTO {} AS r (source_table, column_name, streamed) VALUES ($1, $2, $3) \
             ON CONFLICT (source_table, column_name) DO UPDATE SET streamed = r.streamed + EXCLUDED.streamed, updated_at = now()",
            self.state.table("replaced_values")
        );
        for ((table, column), n) in counts {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            self.client
                .execute(&sql, &[&crate::state::table_key(table), column, &n])
                .await
                .map_err(|e| {
                    pg_error(format!("counting replaced values of {table}.{column}"), e)
                })?;
        }
        Ok(())
    }

    /// Write the checkpoint `position` into the batch's transaction (opening
    /// it if nothing was applied) and `COMMIT`: data and position become
    /// durable together. The caller acknowledges `position` afterwards.
    pub async fn commit<P: Position>(
        &mut self,
        writer: &mut Writer,
        position: &P,
        time: Timestamp,
    ) -> Result<()> {
        self.begin(writer).await?;
        write_checkpoint(&self.client, &self.state, &self.stream, position, time).await?;
        Failpoint::hit(self.failpoint, Failpoint::AfterApplyBeforeCommit);
        self.end(writer, true).await?;
        Failpoint::hit(self.failpoint, Failpoint::AfterCommitBeforeAck);
        Ok(())
    }

    /// Move the checkpoint alone (a heartbeat with nothing pending), in a
    /// transaction of its own opened like every other.
    pub async fn commit_checkpoint<P: Position>(
        &mut self,
        writer: &mut Writer,
        position: &P,
        time: Timestamp,
    ) -> Result<()> {
        self.begin(writer).await?;
        write_checkpoint(&self.client, &self.state, &self.stream, position, time)
            .await
            .map_err(|e| e.context("checkpointing heartbeat"))?;
        self.end(writer, true)
            .await
            .map_err(|e| e.context("checkpointing heartbeat"))
    }

    /// Roll back the open transaction (best effort on a broken connection).
    pub async fn rollback(&mut self, writer: &mut Writer) -> Result<()> {
        self.end(writer, false).await
    }

    /// `COMMIT` (`commit`) or `ROLLBACK`. A failed `COMMIT` rolled back.
    async fn end(&mut self, writer: &mut Writer, commit: bool) -> Result<()> {
        self.open = false;
        self.savepoint = false;
        let (sql, what) = if commit {
            ("COMMIT", "committing target transaction")
        } else {
            ("ROLLBACK", "rolling back target transaction")
        };
        let done = self
            .client
            .batch_execute(sql)
            .await
            .map_err(|e| pg_error(what, e));
        writer.txn_ended(commit && done.is_ok());
        done
    }
}
