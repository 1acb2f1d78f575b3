//! The operator-triggered cutover, run inside `ferry run` (DESIGN.md §7).
//!
//! 1. Preconditions ([`preconditions`], pure): phase `stream`, every table
//!    streaming, lag within `max_lag`, no other cutover running.
//! 2. Fence (optional): `ALTER DATABASE … SET default_transaction_read_only
//!    = on`, then end the other client sessions of the source database, so
//!    no write can start or finish after the final position is read.
//! 3. Final position: once the ended sessions are gone, the end of a
//!    logical message written then (`pg_logical_emit_message`): past every
//!    commit record inserted before it, also those of `synchronous_commit =
//!    off` transactions not yet flushed (`pg_current_wal_lsn()` would miss
//!    them). Without fencing: at the request; later writes are not included.
//! 4. Drain: wait until the applied (committed and acknowledged) position
//!    reaches the final position — never reported earlier, however quiet
//!    the stream is (the message makes an idle stream carry it).
//! 5. Sequences: every sequence of the carried tables is read from the
//!    source (`SELECT last_value, is_called` — a missing privilege is an
//!    error, never a skipped sequence) and `setval` on the target under its
//!    target name (an owned sequence follows its table's `tables.rename`).
//!    The count synced equals the count found, or the cutover fails.
//! 6. Row counts per table, source vs target (unless `skip_counts`): any
//!    difference fails the cutover.
//! 7. Record (`ferry.runs.cutover`): times, fence and write-freeze duration,
//!    final position, counts, outcome.
//! 8. Stop streaming; put back the target schema changes made for applying
//!    (identity columns `ALWAYS`, triggers and rules enabled again, see
//!    `overrides`; listed in the record's `restored`); drop the slot and
//!    publication unless `keep_slot`; `ferry run` then exits 0.
//!
//! On a failure or timeout after fencing, the source is unfenced and
//! replication continues; the error says which step failed. Step errors are
//! [`ferry_core::Error`]s that keep their class (transient: a session was
//! ended, try again; needs an operator: the fix) and their cause; only the
//! control API's answer turns them into text, class included.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferry_core::schema::quote_ident;
use ferry_core::{Error, ErrorClass, Lsn};
use ferry_monitor::{CutoverRecord, Phase, TableCheck};
use ferry_postgres::connect::query_error;
use tokio::sync::oneshot;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::live::{Finish, Live};
use crate::control::CutoverRequest;

const DEFAULT_MAX_LAG: f64 = 5.0;
const DEFAULT_TIMEOUT: f64 = 60.0;
/// How long ended source sessions may take to go away when fencing.
const SESSIONS_GONE_WITHIN: Duration = Duration::from_secs(30);

/// Why a cutover may not start, or `Ok`. Pure.
pub fn preconditions(
    phase: Phase,
    table_states: &[(String, String)],
    lag_seconds: f64,
    max_lag: f64,
) -> Result<(), String> {
    if phase != Phase::Stream {
        return Err(format!(
            "phase is {}, not stream: wait until the load and catch-up are done",
            phase.as_str()
        ));
    }
    let not_streaming: Vec<String> = table_states
        .iter()
        .filter(|(_, s)| s != "streaming")
        .map(|(t, s)| format!("{t} ({s})"))
        .collect();
    if !not_streaming.is_empty() {
        return Err(format!(
            "tables not streaming yet: {}",
            not_streaming.join(", ")
        ));
    }
    if lag_seconds > max_lag {
        return Err(format!(
            "lag is {lag_seconds:.1}s, above the bound of {max_lag:.1}s: wait for it to fall or raise --max-lag"
        ));
    }
    Ok(())
}

/// Run (or dry-run) the cutover. `Err` is the refusal or failure message.
pub async fn run(live: Arc<Live>, req: CutoverRequest) -> Result<CutoverRecord, String> {
    let Ok(_guard) = live.cutover_lock.try_lock() else {
        return Err("refused: a cutover is already running".into());
    };
    let lag = live.lag();
    let mut rec = CutoverRecord {
        dry_run: req.dry_run,
        started_at: SystemTime::now(),
        finished_at: None,
        fenced: false,
        write_freeze_seconds: None,
        final_position: None,
        lag_seconds_at_start: lag.seconds,
        sequences_synced: 0,
        validation: Vec::new(),
        slot_dropped: false,
        restored: Vec::new(),
        steps: Vec::new(),
        outcome: String::new(),
    };
    let max_lag = req.max_lag_seconds.unwrap_or(DEFAULT_MAX_LAG);
    // Table states come from the target itself, never from a cached view.
    let target = ferry_postgres::connect::connect(&live.config.target, "target")
        .await
        .map_err(|e| failed_text(&e))?;
    let records = live
        .state
        .tables(&target)
        .await
        .map_err(|e| failed_text(&e))?;
    let states: Vec<(String, String)> = records
        .into_iter()
        .map(|t| (t.source_table, t.state.as_str().to_owned()))
        .collect();
    if states.is_empty() {
        return Err("refused: no table is registered yet; wait for the load to finish".into());
    }
    if let Err(why) = preconditions(live.phase(), &states, lag.seconds, max_lag) {
        return Err(format!("refused: {why}"));
    }
    if req.dry_run {
        // What would fail the sequence step is known now: say so.
        let source = ferry_postgres::connect::connect(&live.config.source, "source")
            .await
            .map_err(|e| e.to_string())?;
        let sequences = carried_sequences(&live, &source)
            .await
            .map_err(|e| format!("dry run: the cutover would fail: {e}"))?;
        rec.steps = planned_steps(&req, &live);
        rec.steps.push(format!(
            "{} sequences readable and to be synced",
            sequences.len()
        ));
        rec.restored = super::overrides::planned(&target, &live.state)
            .await
            .map_err(|e| format!("{e:#}"))?;
        rec.outcome = format!(
            "dry run: preconditions hold (lag {:.1}s); nothing was changed",
            lag.seconds
        );
        rec.finished_at = Some(SystemTime::now());
        return Ok(rec);
    }
    match execute(&live, &req, &mut rec).await {
        Ok(()) => {
            rec.outcome = "done".into();
            rec.finished_at = Some(SystemTime::now());
            record(&live, &rec).await;
            Ok(rec)
        }
        Err(e) => {
            warn!(error = %e, class = %e.class(), cause = ?std::error::Error::source(&e).map(ToString::to_string), "cutover failed");
            rec.outcome = format!("failed ({}): {e}", e.class());
            rec.finished_at = Some(SystemTime::now());
            record(&live, &rec).await;
            Err(format!("{}; replication continues", failed_text(&e)))
        }
    }
}

/// The control API's text of a failed step: class, message and what to do.
fn failed_text(e: &Error) -> String {
    match e.class() {
        ErrorClass::Transient => format!("cutover failed (transient, try again): {e}"),
        ErrorClass::Operator => format!("cutover failed (needs operator): {e}"),
    }
}

fn planned_steps(req: &CutoverRequest, live: &Live) -> Vec<String> {
    let db = source_database(live).unwrap_or_default();
    let mut steps = Vec::new();
    if req.fence {
        steps.push(format!(
            "fence: ALTER DATABASE {db} SET default_transaction_read_only = on; end other sessions"
        ));
    } else {
        steps.push("no fence: writes after the final position are not included".into());
    }
    steps.push("read the final source position and drain until it is applied".into());
    steps.push("sync sequences to their source values".into());
    steps.push("restore the target's identity columns, triggers and rules (see restored)".into());
    steps.push(if req.skip_counts {
        "skip row counts (--skip-counts)".into()
    } else {
        "compare row counts of every table".into()
    });
    steps.push(if live.config.postgres.existing_slot {
        format!(
            "keep slot '{}' (created beforehand: yours to drop){}",
            live.config.postgres.slot,
            if req.keep_slot {
                " and the publication"
            } else {
                "; drop the publication if ferry created it"
            }
        )
    } else if req.keep_slot {
        "keep the slot and publication".into()
    } else {
        "drop the slot and publication".into()
    });
    steps
}

async fn execute(live: &Live, req: &CutoverRequest, rec: &mut CutoverRecord) -> Result<(), Error> {
    let source = ferry_postgres::connect::connect(&live.config.source, "source").await?;
    let target = ferry_postgres::connect::connect(&live.config.target, "target").await?;
    let db = source_database(live)?;
    let fenced_at = if req.fence {
        fence(&source, &db).await?;
        rec.fenced = true;
        rec.steps.push(format!("fenced database {db}"));
        Some(Instant::now())
    } else {
        rec.steps
            .push("not fenced: writes after the final position are not included".into());
        None
    };
    let result = after_fence(live, req, rec, &source, &target).await;
    if let Err(e) = &result {
        if req.fence {
            warn!(error = %e, "cutover failed; unfencing the source");
            if let Err(u) = unfence(&source, &db).await {
                warn!(error = %u, "unfencing failed; run: ALTER DATABASE {db} RESET default_transaction_read_only");
            }
            rec.steps.push("unfenced the source".into());
        }
        return result;
    }
    if let Some(at) = fenced_at {
        rec.write_freeze_seconds = Some(at.elapsed().as_secs_f64());
    }
    // Stop streaming; the pipeline drops the slot once the stream is down.
    let (reply, answer) = oneshot::channel();
    live.request_finish(Finish {
        keep_slot: req.keep_slot,
        reply,
    });
    let finished = answer
        .await
        .map_err(|_| Error::transient("the pipeline stopped before finishing the cutover"))?
        .map_err(|e| {
            Error::transient(format!(
                "restoring the target schema or dropping the slot and publication after the cutover: {e}"
            ))
        })?;
    rec.slot_dropped = finished.slot_dropped;
    rec.restored = finished.restored;
    rec.steps.push(format!(
        "restored {} target identity columns, triggers and rules",
        rec.restored.len()
    ));
    rec.steps.push(if live.config.postgres.existing_slot {
        ferry_postgres::slot::existing_slot_kept(&live.config.postgres.slot)
    } else if rec.slot_dropped {
        "dropped slot and publication".into()
    } else {
        "kept slot and publication".into()
    });
    Ok(())
}

async fn after_fence(
    live: &Live,
    req: &CutoverRequest,
    rec: &mut CutoverRecord,
    source: &Client,
    target: &Client,
) -> Result<(), Error> {
    // The message's end is past every record inserted before it (also
    // unflushed async commits), and it makes an idle stream carry the position.
    let final_lsn: Lsn = query_text(
        source,
        "SELECT pg_logical_emit_message(false, 'ferry.heartbeat', 'cutover')::text",
    )
    .await?
    .parse()
    .map_err(|e| {
        Error::operator(
            format!("reading the final source position: {e}"),
            "report this as a ferry bug",
        )
    })?;
    rec.final_position = Some(final_lsn.to_string());
    let drain_started = Instant::now();
    let timeout = Duration::from_secs_f64(req.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT).max(0.1));
    while live.applied_position() < final_lsn {
        if drain_started.elapsed() > timeout {
            return Err(Error::operator(
                format!(
                    "drain timed out after {:.0}s at {} of final position {final_lsn}",
                    timeout.as_secs_f64(),
                    live.applied_position()
                ),
                "raise --timeout",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rec.steps.push(format!(
        "drained to {} in {:.2}s",
        live.applied_position(),
        drain_started.elapsed().as_secs_f64()
    ));
    let (found, synced) = sync_sequences(live, source, target)
        .await
        .map_err(|e| Error::operator(e, "check the sequences on the source and the target"))?;
    rec.sequences_synced = synced;
    if synced != found {
        return Err(Error::operator(
            format!("synced {synced} of {found} sequences; the target's sequences would collide"),
            "check the sequences on the source and the target",
        ));
    }
    rec.steps
        .push(format!("synced {synced} of {found} sequences"));
    if req.skip_counts {
        rec.steps.push("row counts skipped (--skip-counts)".into());
    } else {
        rec.validation = count_rows(live, source, target).await?;
        let insert_only = super::live::insert_only_tables(
            &live.config,
            rec.validation.iter().map(|c| c.table.clone()),
        );
        let bad: Vec<String> = rec
            .validation
            .iter()
            .filter(|c| !c.ok)
            .map(|c| {
                let note = if insert_only.contains(&c.table) {
                    "; it is insert-only (tables.insert_only): deletes on the source are not carried, use --skip-counts if they are expected"
                } else {
                    ""
                };
                format!(
                    "{} (source {:?}, target {:?}{note})",
                    c.table, c.source_rows, c.target_rows
                )
            })
            .collect();
        if !bad.is_empty() {
            return Err(Error::operator(
                format!("row counts differ: {}", bad.join(", ")),
                "find the difference with `ferry validate`; the status and log name any partition or schema change the stream could not carry",
            ));
        }
        rec.steps.push(format!(
            "row counts equal for {} tables",
            rec.validation.len()
        ));
    }
    info!(final_position = %final_lsn, "cutover validated");
    Ok(())
}

fn source_database(live: &Live) -> Result<String, Error> {
    let url = live
        .config
        .source
        .url
        .parsed()
        .map_err(|e| Error::operator(format!("source.url: {e}"), "fix source.url"))?;
    Ok(url.path().trim_start_matches('/').to_owned())
}

async fn fence(source: &Client, db: &str) -> Result<(), Error> {
    source
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            quote_ident(db)
        ))
        .await
        .map_err(|e| {
            query_error("fencing the source", e).with_fix(
                "connect as the database owner or a superuser, or cut over without --fence",
            )
        })?;
    // Sessions opened before the ALTER keep writing: end them, except ferry's
    // own (application_name 'ferry'; the walsender is not a client backend).
    // Without pg_read_all_stats a role sees no backend_type of another
    // role's session (the application's): such a session is ended unless it
    // is a WAL sender or a superuser's (which only a superuser may end).
    let ended: Vec<i32> = source
        .query(
            // OFFSET 0 keeps the filter ahead of pg_terminate_backend.
            "SELECT pid FROM (SELECT a.pid FROM pg_stat_activity a
                WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                  AND a.application_name <> 'ferry'
                  AND (a.backend_type = 'client backend'
                       OR (a.backend_type IS NULL
                           AND a.pid NOT IN (SELECT w.pid FROM pg_stat_get_wal_senders() w)
                           AND EXISTS (SELECT 1 FROM pg_roles r
                                        WHERE r.oid = a.usesysid AND NOT r.rolsuper)))
                OFFSET 0) s
             WHERE pg_terminate_backend(pid)",
            &[],
        )
        .await
        .map_err(|e| query_error("ending writer sessions on the source", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // A session told to end may still be writing its commit record: the
    // final position is read only once every one of them is gone.
    let started = Instant::now();
    loop {
        let left: Vec<i32> = source
            .query(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&ended],
            )
            .await
            .map_err(|e| query_error("waiting for ended sessions on the source", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if started.elapsed() > SESSIONS_GONE_WITHIN {
            return Err(Error::operator(
                format!(
                    "source sessions {left:?} did not end within {}s of pg_terminate_backend; the final position cannot be read safely",
                    SESSIONS_GONE_WITHIN.as_secs()
                ),
                "find what keeps those sessions alive (pg_stat_activity) and end them, then cut over again",
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn unfence(source: &Client, db: &str) -> Result<(), Error> {
    source
        .batch_execute(&format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            quote_ident(db)
        ))
        .await
        .map_err(|e| query_error("unfencing the source", e))
}

/// `setval` on the target every sequence of the carried tables (owned by
/// one, or unowned and matched by the table filter). Returns (found,
/// synced); any sequence that cannot be read or placed is an error naming
/// it, never a skip.
async fn sync_sequences(
    live: &Live,
    source: &Client,
    target: &Client,
) -> Result<(u64, u64), String> {
    let sequences = carried_sequences(live, source).await?;
    let mut synced = 0u64;
    for seq in &sequences {
        let name = seq.id.quoted();
        let row = source
            .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
            .await
            .map_err(|e| format!("reading sequence {name} on the source: {e}"))?;
        let (value, called): (i64, bool) = (row.get(0), row.get(1));
        let on_target = target_sequence(&live.config, target, seq).await?;
        target
            .execute(
                "SELECT setval($1::text::regclass, $2, $3)",
                &[&on_target, &value, &called],
            )
            .await
            .map_err(|e| format!("setting sequence {on_target} on the target: {e}"))?;
        info!(source = %name, target = %on_target, value, called, "sequence synced");
        synced += 1;
    }
    Ok((sequences.len() as u64, synced))
}

/// The source sequences the cutover syncs (see the catalog), or the error
/// naming those the source user may not read.
async fn carried_sequences(
    live: &Live,
    source: &Client,
) -> Result<Vec<ferry_postgres::catalog::SourceSequence>, String> {
    let config = &live.config;
    let filter = config.tables.filter().map_err(|e| format!("tables: {e}"))?;
    let catalog = ferry_postgres::catalog::read_catalog(source, &filter, &config.state.schema)
        .await
        .map_err(|e| format!("reading source sequences: {e}"))?;
    if let Some(unreadable) = catalog.unreadable_sequences() {
        return Err(format!(
            "the source user may not read sequence {}, so its value cannot be carried; GRANT SELECT ON SEQUENCE {} TO <source user> and run the cutover again",
            unreadable.names, unreadable.quoted
        ));
    }
    Ok(catalog.sequences)
}

/// The target's name of a source sequence: an owned sequence is found
/// through its table's target name (renames move it along), any other
/// under its own name.
async fn target_sequence(
    config: &ferry_core::config::Config,
    target: &Client,
    seq: &ferry_postgres::catalog::SourceSequence,
) -> Result<String, String> {
    let found: Option<String> = match &seq.owned_by {
        Some((table, column)) => {
            let to = config.tables.target_name(table).quoted();
            target
                .query_one("SELECT pg_get_serial_sequence($1, $2)", &[&to, column])
                .await
                .map_err(|e| {
                    format!(
                        "finding the sequence of {to}.{column} on the target (source {}): {e}",
                        seq.id
                    )
                })?
                .get(0)
        }
        None => target
            .query_one("SELECT to_regclass($1)::text", &[&seq.id.quoted()])
            .await
            .map_err(|e| format!("finding sequence {} on the target: {e}", seq.id))?
            .get(0),
    };
    found.ok_or_else(|| {
        format!(
            "source sequence {} has no counterpart on the target{}; create it there",
            seq.id,
            seq.owned_by
                .as_ref()
                .map(|(t, c)| format!(" (owned by {t}.{c})"))
                .unwrap_or_default()
        )
    })
}

async fn count_rows(
    live: &Live,
    source: &Client,
    target: &Client,
) -> Result<Vec<TableCheck>, Error> {
    let carried = live.carried.lock().map(|c| c.clone()).unwrap_or_default();
    let mut checks = Vec::new();
    for (src, dst) in carried {
        let s = count(source, &src.quoted()).await?;
        let t = count(target, &dst.quoted()).await?;
        checks.push(TableCheck {
            table: src.to_string(),
            source_rows: Some(s),
            target_rows: Some(t),
            ok: s == t,
        });
    }
    Ok(checks)
}

async fn count(client: &Client, table: &str) -> Result<u64, Error> {
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(|e| query_error(&format!("counting {table}"), e))?
        .get(0);
    Ok(n as u64)
}

async fn query_text(client: &Client, sql: &str) -> Result<String, Error> {
    Ok(client
        .query_one(sql, &[])
        .await
        .map_err(|e| query_error(sql, e))?
        .get(0))
}

async fn record(live: &Live, rec: &CutoverRecord) {
    if let Ok(mut l) = live.last_cutover.lock() {
        *l = Some(rec.clone());
    }
    let json = serde_json::to_string(rec).unwrap_or_default();
    match ferry_postgres::connect::connect(&live.config.target, "target").await {
        Ok(t) => {
            if let Err(e) = live.state.record_cutover(&t, live.run_id, &json).await {
                warn!(error = %e, "could not record the cutover in the target");
            }
        }
        Err(e) => warn!(error = %e, "could not record the cutover in the target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(states: &[&str]) -> Vec<(String, String)> {
        states
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("public.t{i}"), (*s).to_owned()))
            .collect()
    }

    #[test]
    fn cutover_preconditions() {
        // (phase, table states, lag, max lag, allowed?, reason contains)
        let cases = [
            (
                Phase::Stream,
                tables(&["streaming", "streaming"]),
                0.5,
                5.0,
                true,
                "",
            ),
            (
                Phase::Catchup,
                tables(&["streaming"]),
                0.0,
                5.0,
                false,
                "phase is catchup",
            ),
            (
                Phase::Load,
                tables(&["loading"]),
                0.0,
                5.0,
                false,
                "phase is load",
            ),
            (
                Phase::Stream,
                tables(&["streaming", "loading"]),
                0.0,
                5.0,
                false,
                "public.t1 (loading)",
            ),
            (
                Phase::Stream,
                tables(&["streaming"]),
                7.5,
                5.0,
                false,
                "above the bound",
            ),
            (Phase::Stream, tables(&["streaming"]), 5.0, 5.0, true, ""),
        ];
        for (phase, states, lag, max, ok, why) in cases {
            let r = preconditions(phase, &states, lag, max);
            assert_eq!(r.is_ok(), ok, "{phase:?} {states:?} {lag}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains(why), "{e}");
            }
        }
    }
}
