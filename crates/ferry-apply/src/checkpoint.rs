//! The durable source position in the target (DESIGN.md §1 invariant 1).
//!
//! Consumes: the position and commit time of the last source transaction in
//! a batch. Emits: an upsert of `<state>.checkpoint` executed INSIDE the
//! batch's target transaction, so data and position commit together.
//!
//! Invariants: checkpoint ≤ applied ≤ received; the checkpoint only moves
//! forward; the source is acknowledged only after the target COMMIT
//! succeeded (see [`crate::applier`]).
//! Restart: [`read_checkpoint`] gives the position to resume from, and
//! [`should_skip`] drops transactions a source resends that are already in
//! the target (commit position ≤ checkpoint).
//!
//! Failure injection (TEST ONLY): `FERRY_FAILPOINT=after-apply-before-commit`
//! or `after-commit-before-ack` makes the applier `std::process::abort()` at
//! that point, for crash tests that restart ferry and check nothing was lost
//! or doubled. Never set it in production.

use ferry_core::value::Timestamp;
use ferry_core::{Error, Position, Result, Value};
use tokio_postgres::Client;

use crate::error::pg_error;
use crate::state::StateStore;

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint<P> {
    pub position: P,
    /// Commit time of the transaction (or heartbeat time) at `position`.
    pub commit_time: Option<Timestamp>,
}

/// Whether a transaction committed at `commit` is already applied.
pub fn should_skip<P: Ord>(commit: &P, checkpoint: Option<&P>) -> bool {
    checkpoint.is_some_and(|c| commit <= c)
}

/// Read the checkpoint of `stream`, `None` before the first commit.
pub async fn read_checkpoint<P: Position>(
    client: &Client,
    state: &StateStore,
    stream: &str,
) -> Result<Option<Checkpoint<P>>> {
    let sql = format!(
        "SELECT source_kind, position,
                CASE WHEN isfinite(commit_time)
                     THEN (extract(epoch FROM commit_time) * 1000000)::int8 END
         FROM {} WHERE stream = $1",
        state.table("checkpoint")
    );
    let Some(row) = client
        .query_opt(&sql, &[&stream])
        .await
        .map_err(|e| pg_error(format!("reading checkpoint of stream {stream}"), e))?
    else {
        return Ok(None);
    };
    let kind: String = row.get(0);
    if kind != P::KIND.as_str() {
        return Err(Error::operator(
            format!(
                "checkpoint of stream {stream} belongs to a {kind} source, this source is {}",
                P::KIND
            ),
            "use another stream name or state schema for a different source, or run `ferry cleanup`",
        ));
    }
    let text: String = row.get(1);
    let position = text.parse::<P>().map_err(|e| {
        Error::operator(
            format!("checkpoint of stream {stream} is unreadable"),
            "the state schema was edited or written by another ferry version",
        )
        .with_source(e)
    })?;
    let micros: Option<i64> = row.get(2);
    Ok(Some(Checkpoint {
        position,
        commit_time: micros.map(Timestamp::from_unix_micros),
    }))
}

/// Upsert the checkpoint of `stream` (call inside the data's transaction).
pub async fn write_checkpoint<P: Position>(
    client: &Client,
    state: &StateStore,
    stream: &str,
    position: &P,
    commit_time: Timestamp,
) -> Result<()> {
    let sql = format!(
        "INSERT INTO {} (stream, source_kind, position, commit_time, updated_at)
         VALUES ($1, $2, $3, $4::text::timestamptz, now())
         ON CONFLICT (stream) DO UPDATE SET source_kind = EXCLUDED.source_kind,
             position = EXCLUDED.position, commit_time = EXCLUDED.commit_time,
             updated_at = now()",
        state.table("checkpoint")
    );
    let time = Value::TimestampTz(commit_time).to_pg_text();
    client
        .execute(
            &sql,
            &[&stream, &P::KIND.as_str(), &position.to_string(), &time],
        )
        .await
        .map_err(|e| {
            pg_error(
                format!("writing checkpoint {position} of stream {stream}"),
                e,
            )
        })?;
    Ok(())
}

/// Crash points for tests (`FERRY_FAILPOINT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    AfterApplyBeforeCommit,
    AfterCommitBeforeAck,
}

impl Failpoint {
    /// Read `FERRY_FAILPOINT` (test only).
    pub fn from_env() -> Option<Failpoint> {
        // The config loader rejects any other value of this variable.
        match std::env::var(ferry_core::config::FAILPOINT_ENV)
            .ok()?
            .as_str()
        {
            "after-apply-before-commit" => Some(Failpoint::AfterApplyBeforeCommit),
            "after-commit-before-ack" => Some(Failpoint::AfterCommitBeforeAck),
            _ => None,
        }
    }

    /// Abort the process when `armed` is this point.
    pub fn hit(armed: Option<Failpoint>, here: Failpoint) {
        if armed == Some(here) {
            tracing::error!(failpoint = ?here, "FERRY_FAILPOINT reached: aborting (test only)");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::Lsn;

    #[test]
    fn skip_table() {
        let cases: [(u64, Option<u64>, bool); 5] = [
            (10, None, false),
            (10, Some(9), false),
            (10, Some(10), true),
            (10, Some(11), true),
            (0, Some(0), true),
        ];
        for (commit, cp, skip) in cases {
            assert_eq!(
                should_skip(&Lsn(commit), cp.map(Lsn).as_ref()),
                skip,
                "commit {commit} checkpoint {cp:?}"
            );
        }
    }
}
