//! The operator-triggered cutover, run inside `ferry run` (DESIGN.md §7).
//!
//! 1. Preconditions ([`preconditions`], pure): phase `stream`, every table
//!    streaming, lag within `max_lag`, no other cutover running.
//! 2. Fence (optional, [`Cutover::fence`]; PostgreSQL: `ALTER DATABASE …
//!    SET default_transaction_read_only = on`, then end the other client
//!    sessions of the source database), so no write can start or finish
//!    after the final position is read.
//! 3. Final position ([`Cutover::final_position`]; PostgreSQL: once the
//!    ended sessions are gone, the end of a logical message written then,
//!    past every commit record inserted before it, also those of
//!    `synchronous_commit = off` transactions not yet flushed). Without
//!    fencing: at the request; later writes are not included.
//! 4. Drain: wait until the applied (committed and acknowledged) position
//!    reaches the final position — never reported earlier, however quiet
//!    the stream is (the message makes an idle stream carry it).
//! 5. Sequences: every sequence of the carried tables is read from the
//!    source ([`Cutover::sequences`] — a missing privilege is an error,
//!    never a skipped sequence) and `setval` on the target under its
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
//! With `--with-fallback` (PostgreSQL sources, fenced), the reverse
//! publication is created before the fence and the reverse slot right after
//! step 6, still inside the fence; the run then streams back (see
//! `fallback`). The reverse stream's own cutover is `ferry rollback`, and
//! `ferry finish` ends it without one.
//!
//! With `--via-proxy` (cutover or rollback), the proxy holds new statements
//! at transaction boundaries around steps 3–8 instead of step 2; on success
//! it moves every proxied session to the side that is live now, and only
//! then does `--fence` fence the side left behind (`proxy`).
//!
//! On a failure or timeout after fencing, the source is unfenced and
//! replication continues; the error says which step failed. Step errors are
//! [`ferry_core::Error`]s that keep their class (transient: a session was
//! ended, try again; needs an operator: the fix) and their cause; only the
//! control API's answer turns them into text, class included.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferry_core::source::{Cutover, SequenceValue, Source};
use ferry_core::{Error, ErrorClass, Position};
use ferry_monitor::{CutoverRecord, Phase, TableCheck};
use ferry_postgres::connect::query_error;
use tokio::sync::oneshot;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::live::{Finish, Live};
use crate::control::CutoverRequest;

const DEFAULT_MAX_LAG: f64 = 5.0;
const DEFAULT_TIMEOUT: f64 = 60.0;

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
pub async fn run<S: Source>(
    live: Arc<Live<S::Position>>,
    source: Arc<S>,
    req: CutoverRequest,
) -> Result<CutoverRecord, String> {
    let Ok(_guard) = live.cutover_lock.try_lock() else {
        return Err("refused: a cutover is already running".into());
    };
    super::fallback::guard(&live.config, &req).await?;
    if req.finish_fallback {
        return super::fallback::finish_now(&live).await;
    }
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
    if let Some(age) = req.require_validated_seconds {
        let tables: Vec<String> = states.iter().map(|(t, _)| t.clone()).collect();
        let age = Duration::from_secs_f64(age.max(0.0));
        crate::validate::check_validated(&target, &live.state, &tables, age)
            .await
            .map_err(|why| {
                format!("refused: --require-validated: {why}; run `ferry validate` (with --repair to fix differences) first")
            })?;
        rec.steps
            .push("every table validated clean recently enough (--require-validated)".into());
    }
    if req.dry_run && req.via_proxy {
        super::proxy::check(&live, &req)?;
    }
    if req.dry_run {
        // What would fail the sequence step is known now: say so.
        let mut session = source.cutover().await.map_err(|e| e.to_string())?;
        let sequences = session
            .sequences()
            .await
            .map_err(|e| format!("dry run: the cutover would fail: {e}"))?;
        rec.steps = planned_steps(&req, source.as_ref(), &session);
        if req.with_fallback {
            rec.steps.push(super::fallback::planned_step(&live.config));
        }
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
    // Through the proxy: statements held at transaction boundaries for the
    // whole cutover (or rollback), released to the side that is live now on
    // success, unchanged on failure (`super::proxy`); `--fence` follows
    // the switch.
    let held = super::proxy::hold(&live, &req).await?;
    let result = execute(&live, source.as_ref(), &req, &mut rec).await;
    super::proxy::release(&live, &held, result.is_ok(), &mut rec).await;
    let mut outcome = "done".to_owned();
    if let (Ok(()), Some(h), true) = (&result, &held, req.fence) {
        let fence = async {
            let mut session = source.cutover().await?;
            session.fence().await?;
            Ok::<_, Error>(session.fence_description())
        };
        match super::proxy::fence_after_switch(h, fence).await {
            Ok(step) => {
                rec.fenced = true;
                rec.steps.push(step);
            }
            Err(e) => {
                warn!(error = %e, "fencing after the proxy's switch failed");
                rec.steps
                    .push(format!("fencing after the switch failed: {e}"));
                outcome = format!(
                    "done, but not fenced ({e}): the proxied clients moved; fence the database left behind by hand (ALTER DATABASE … SET default_transaction_read_only = on)"
                );
            }
        }
    }
    match result {
        Ok(()) => {
            rec.outcome = outcome;
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

fn planned_steps<S: Source>(
    req: &CutoverRequest,
    source: &S,
    session: &impl Cutover<S::Position>,
) -> Vec<String> {
    let mut steps = Vec::new();
    if req.via_proxy {
        steps.push(match req.fence {
            true => format!(
                "the proxy holds new statements at transaction boundaries; once it has moved every session: fence: {}",
                session.fence_description()
            ),
            false => "the proxy holds new statements at transaction boundaries (writes that bypass it are not held)".into(),
        });
    } else if req.fence {
        steps.push(format!("fence: {}", session.fence_description()));
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
    steps.push(source.release_plan(req.keep_slot));
    steps
}

async fn execute<S: Source>(
    live: &Live<S::Position>,
    source: &S,
    req: &CutoverRequest,
    rec: &mut CutoverRecord,
) -> Result<(), Error> {
    let mut session = source.cutover().await?;
    let target = ferry_postgres::connect::connect(&live.config.target, "target").await?;
    let carried = live.carried.lock().map(|c| c.clone()).unwrap_or_default();
    let prepared = match req.with_fallback {
        true => Some(super::fallback::prepare(&live.config, &carried).await?),
        false => None,
    };
    // Through the proxy, its hold is the fence; `--fence` follows the switch.
    let fenced_at = if req.fence && !req.via_proxy {
        session.fence().await?;
        rec.fenced = true;
        rec.steps.push(format!(
            "fenced the source: {}",
            session.fence_description()
        ));
        Some(Instant::now())
    } else if req.via_proxy {
        rec.steps
            .push("the proxy holds new statements (writes that bypass it are not held)".into());
        None
    } else {
        rec.steps
            .push("not fenced: writes after the final position are not included".into());
        None
    };
    let mut result = after_fence(live, req, rec, &mut session, &target).await;
    if let (true, Some(prepared)) = (result.is_ok(), &prepared) {
        // Still fenced, drained: the way back starts exactly here.
        match super::fallback::open(prepared, &carried).await {
            Ok((at, note)) => rec.steps.push(format!(
                "opened the way back: reverse slot on the target at {at} ({note}); ferry run streams the target back into the old source, which stays fenced"
            )),
            Err(e) => {
                super::fallback::abandon(&live.config, &carried).await;
                result = Err(e);
            }
        }
    }
    if let Err(e) = &result {
        if fenced_at.is_some() {
            warn!(error = %e, "cutover failed; unfencing the source");
            if let Err(u) = session.unfence().await {
                warn!(error = %u, "unfencing failed");
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
        fallback_end: req
            .rollback
            .then_some(super::fallback::FallbackEnd::RolledBack),
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
    rec.steps.push(finished.release_note);
    Ok(())
}

async fn after_fence<P: Position>(
    live: &Live<P>,
    req: &CutoverRequest,
    rec: &mut CutoverRecord,
    session: &mut impl Cutover<P>,
    target: &Client,
) -> Result<(), Error> {
    let final_position = session.final_position().await?;
    rec.final_position = Some(final_position.to_string());
    let drain_started = Instant::now();
    let timeout = Duration::from_secs_f64(req.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT).max(0.1));
    let applied = || {
        live.applied_position()
            .map_or_else(|| "nothing".to_owned(), |a| a.to_string())
    };
    while live.applied_position().is_none_or(|a| a < final_position) {
        if drain_started.elapsed() > timeout {
            return Err(Error::operator(
                format!(
                    "drain timed out after {:.0}s at {} of final position {final_position}",
                    timeout.as_secs_f64(),
                    applied()
                ),
                "raise --timeout",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rec.steps.push(format!(
        "drained to {} in {:.2}s",
        applied(),
        drain_started.elapsed().as_secs_f64()
    ));
    let sequences = session.sequences().await?;
    let (found, synced) = sync_sequences(&live.config, &sequences, target)
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
        rec.validation = count_rows(live, session, target).await?;
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
    info!(final_position = %final_position, "cutover validated");
    Ok(())
}

/// `setval` on the target every sequence read from the source. Returns
/// (found, synced); any sequence that cannot be placed is an error naming
/// it, never a skip.
async fn sync_sequences(
    config: &ferry_core::config::Config,
    sequences: &[SequenceValue],
    target: &Client,
) -> Result<(u64, u64), String> {
    let mut synced = 0u64;
    for seq in sequences {
        let on_target = target_sequence(config, target, seq).await?;
        let (value, called) = (seq.last_value, seq.is_called);
        target
            .execute(
                "SELECT setval($1::text::regclass, $2, $3)",
                &[&on_target, &value, &called],
            )
            .await
            .map_err(|e| format!("setting sequence {on_target} on the target: {e}"))?;
        info!(source = %seq.id, target = %on_target, value, called, "sequence synced");
        synced += 1;
    }
    Ok((sequences.len() as u64, synced))
}

/// The target's name of a source sequence: an owned sequence is found
/// through its table's target name (renames move it along), any other
/// under its own name.
pub(super) async fn target_sequence(
    config: &ferry_core::config::Config,
    target: &Client,
    seq: &SequenceValue,
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

async fn count_rows<P: Position>(
    live: &Live<P>,
    session: &mut impl Cutover<P>,
    target: &Client,
) -> Result<Vec<TableCheck>, Error> {
    let carried = live.carried.lock().map(|c| c.clone()).unwrap_or_default();
    let mut checks = Vec::new();
    for (src, dst) in carried {
        let s = session.count_rows(&src).await?;
        let table = dst.quoted();
        // The table's own rows, as on the source.
        let own = ferry_apply::truncate::own_rows(target, std::slice::from_ref(&table)).await?;
        let t: i64 = target
            .query_one(&format!("SELECT count(*) FROM {}", own[0]), &[])
            .await
            .map_err(|e| query_error(&format!("counting {table} on the target"), e))?
            .get(0);
        let t = t as u64;
        checks.push(TableCheck {
            table: src.to_string(),
            source_rows: Some(s),
            target_rows: Some(t),
            ok: s == t,
        });
    }
    Ok(checks)
}

pub(super) async fn record<P: Position>(live: &Live<P>, rec: &CutoverRecord) {
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
