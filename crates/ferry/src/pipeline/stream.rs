//! The streaming stage: changes from the source ([`Source::changes`]),
//! through a bounded channel, into the batching applier; acknowledgement
//! after commit.
//!
//! Consumes the checkpoint in the target (the snapshot's position on the
//! first run, then the end of the last applied transaction) and streams from
//! there. Emits target transactions (data + checkpoint, see
//! `ferry_apply::applier`) and acknowledgements to the source of what the
//! applier committed — never more. Invariant:
//! `acknowledged ≤ checkpoint ≤ received`.
//!
//! Restart: every (re)connection reads the checkpoint again and starts
//! there; the source refuses a checkpoint it can no longer serve. Transient
//! failures (source or target restarted, connection dropped) reconnect with
//! backoff; operator errors stop the run.
//!
//! Phase: `catchup` becomes `stream` once the applied position reaches the
//! source's head read when streaming started. The post-data statements that
//! waited for that moment (after a watermark load: unique indexes and the
//! foreign keys that need them) are built first, under the running applier,
//! which until they exist decides per batch, under a lock the builds wait
//! for, whether a table's changes may be folded across keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_apply::checkpoint::read_checkpoint;
use ferry_apply::existing::Mapping;
use ferry_apply::state::{Phase, StateStore, TableState};
use ferry_apply::{Applier, ApplierConfig, RunOutcome};
use ferry_core::config::{Config, EndpointKind};
use ferry_core::source::{ChangeHandle, ChangeOptions, Probe, Source, SuperviseContext};
use ferry_core::{ErrorClass, Event, Position};
use tracing::{info, warn};

use super::STREAM;
use super::live::Live;
use super::retry::Backoff;
use crate::shutdown::Shutdown;

/// A connection that stayed up this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Stream until shutdown, reconnecting after transient failures.
pub async fn run<S: Source>(
    config: &Config,
    state: &StateStore,
    shutdown: Shutdown,
    live: Arc<Live<S::Position>>,
    source: &Arc<S>,
    catalog: &S::Catalog,
    mapping: Option<Arc<Mapping>>,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let once = stream_once(
            config,
            state,
            shutdown.clone(),
            &live,
            source,
            catalog,
            mapping.clone(),
        );
        let err = match once.await {
            Ok(()) => return Ok(()),
            Err(e) if shutdown.is_cancelled() => {
                warn!(error = %format!("{e:#}"), "stream ended with an error during shutdown");
                return Ok(());
            }
            Err(e) if classify(&e) == ErrorClass::Transient => {
                live.metrics.error("transient");
                live.set_error(format!("{e:#}"));
                e
            }
            Err(e) => return Err(e),
        };
        if started.elapsed() > HEALTHY_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        warn!(error = %format!("{err:#}"), attempt = backoff.attempts(), delay_ms = delay.as_millis() as u64, "transient failure; will reconnect");
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
        info!(
            attempt = backoff.attempts(),
            "reconnecting to source and target"
        );
    }
}

/// One connection's worth of streaming; `Ok` only on shutdown.
async fn stream_once<S: Source>(
    config: &Config,
    state: &StateStore,
    shutdown: Shutdown,
    live: &Arc<Live<S::Position>>,
    source: &Arc<S>,
    catalog: &S::Catalog,
    mapping: Option<Arc<Mapping>>,
) -> anyhow::Result<()> {
    // The source's head is read while the target session logs in (each
    // login costs a few milliseconds before catch-up can start).
    let (target, head) = tokio::join!(
        ferry_postgres::connect::connect(&config.target, "target"),
        async { anyhow::Ok(source.probe().await?.head().await?) }
    );
    let (target, head) = (target?, head?);
    let checkpoint = read_checkpoint::<S::Position>(&target, state, STREAM)
        .await?
        .context("no stream checkpoint in the target: the schema stage never finished; run `ferry cleanup` and start again")?;
    // Lag counts from what the target already holds, not from zero.
    live.applied(checkpoint.position.clone());
    let snapshots = super::plan_store::table_snapshots::<S::Position>(&target, state).await?;
    let phase = state.read_phase(&target).await?;

    // A watermark load's unique indexes are built under the running
    // applier once catch-up has passed `head`; until they exist the
    // applier decides each table's apply order afresh per batch, under a
    // lock the builds wait for (`ApplierConfig::recheck_order`).
    let hold = (phase == Some(Phase::Catchup)
        && super::load::pending_after_catch_up(&target, state).await? > 0)
        .then(|| Arc::new(AtomicBool::new(true)));
    // Every committed state of the target is one state of the source
    // already when no table was loaded from a later snapshot than the
    // stream's start (nor chunk by chunk: that has `hold`): the foreign
    // keys are validated from the start of catch-up, beside the applier.
    let consistent = hold.is_none()
        && config.source.kind().ok() == Some(EndpointKind::Postgres)
        && snapshots.values().all(|at| *at <= checkpoint.position);
    // Spawned before the stream opens, so that this work overlaps it; a
    // return before the applier runs aborts it (`Aborting`).
    let promoter = (phase == Some(Phase::Catchup)).then(|| {
        let (config, state, live) = (config.clone(), state.clone(), live.clone());
        let (head, hold) = (head.clone(), hold.clone());
        Aborting(tokio::spawn(async move {
            // Transient failures (target restarted, session ended) retry:
            // a lost promotion would leave the phase at catchup for good.
            let mut backoff = Backoff::default();
            loop {
                let promoted = promote_when_caught_up(
                    &config,
                    &state,
                    &head,
                    &live,
                    hold.as_deref(),
                    consistent,
                );
                let Err(e) = promoted.await else {
                    return;
                };
                if classify(&e) != ErrorClass::Transient {
                    tracing::error!(error = %format!("{e:#}"), "catch-up could not finish; the phase stays catchup");
                    live.set_error(format!("{e:#}"));
                    return;
                }
                let delay = backoff.next_delay();
                warn!(error = %format!("{e:#}"), delay_ms = delay.as_millis() as u64, "transient failure marking the pipeline streaming; will retry");
                tokio::time::sleep(delay).await;
            }
        }))
    });

    let options = ChangeOptions {
        // Two of the four shares of apply.max_buffered_bytes; the applier
        // holds the other two.
        channel_bytes: config.apply.buffer_share(),
        spill_threshold: config.apply.buffer_share(),
        map: Some(Box::new(event_map(live.clone(), mapping.clone()))),
    };
    let (mut rx, handle) = source
        .changes(catalog, checkpoint.position.clone(), options)
        .await?;
    info!(from = %checkpoint.position, source_head = %head, "streaming changes");

    // Tag what ferry applies with a replication origin, which a reverse
    // stream (fallback after cutover) skips; best effort.
    let origin = ferry_postgres::fallback::origin_name(state.schema());
    if ferry_postgres::fallback::tag_session(&target, &origin).await {
        tracing::debug!(origin = %origin, "apply session tagged with its replication origin");
    }
    let mut applier_cfg = ApplierConfig::new(STREAM, &config.apply, true);
    applier_cfg.replica_role = super::replica_role_mode(&target).await?;
    applier_cfg.pause = Some(live.paused());
    applier_cfg.existing_tables = mapping.is_some();
    applier_cfg.recheck_order = hold;
    let mut applier =
        Applier::<S::Position>::new(target, state.clone(), config.tables.clone(), applier_cfg)
            .await?;
    applier.skip_before_snapshots(snapshots);
    applier.adopt_with(Arc::new(super::adopt::Adopter::new(
        source.clone(),
        config.clone(),
        state.clone(),
    )));
    live.set_stats(applier.stats());
    let watch = tokio::spawn(source.supervise(supervise_context(config, live)));
    let ack = |p: &S::Position| {
        handle.ack(p.clone());
        live.applied(p.clone());
    };
    let outcome = applier
        .run(&mut rx, ack, shutdown.clone().cancelled_owned())
        .await;
    drop(promoter);
    watch.abort();
    drop(rx);
    let stream_result = handle.shutdown().await;
    match outcome? {
        RunOutcome::Shutdown => {
            info!(checkpoint = ?applier.checkpoint().map(ToString::to_string), "stopped after the last batch");
            Ok(())
        }
        RunOutcome::SourceClosed => {
            stream_result?;
            Err(ferry_core::Error::transient("the change stream ended").into())
        }
    }
}

/// What the source's supervision task needs from the running pipeline.
fn supervise_context<P: Position>(config: &Config, live: &Arc<Live<P>>) -> SuperviseContext<P> {
    let carried = live.carried.lock().map(|c| c.clone()).unwrap_or_default();
    let (applied, report) = (live.clone(), live.clone());
    SuperviseContext {
        carried,
        target: config.target.clone(),
        applied: Arc::new(move || applied.applied_position()),
        report: Arc::new(move |message| report.set_error(message)),
    }
}

/// Run inline in the reader ([`ChangeOptions::map`]) on every event: each
/// transaction is recorded as received, for the lag figures, and each row
/// change counted (`ferry_received_changes_total`); each carried
/// schema change, and the `Relation` of a table not carried yet, updates
/// the list of carried tables; with existing
/// target tables, each `Relation` gets the target's column names and types
/// (`Mapping::view`; values are converted where they are written) and each
/// change loses the values of excluded columns (`Mapping::project_change`). (Changes
/// a table reloaded from a later snapshot already holds are dropped by the
/// applier: `Applier::skip_before_snapshots`.)
fn event_map<P: Position>(
    live: Arc<Live<P>>,
    mapping: Option<Arc<Mapping>>,
) -> impl FnMut(Event<P>) -> Option<Event<P>> + Send + 'static {
    let schema_sync = ferry_apply::schema_sync::SchemaSync::new(live.config.tables.clone(), true);
    let received = live.metrics.received_counter();
    move |event| {
        if let Event::Change(_) = &event {
            received.add(1);
        }
        if let Event::Ddl(msg) = &event
            && let Ok(mut carried) = live.carried.lock()
        {
            // The cutover's row counts and status follow carried renames,
            // drops and new tables.
            schema_sync.follow(&mut carried, msg);
        }
        if let Event::Relation(schema) = &event
            && let Ok(mut carried) = live.carried.lock()
            && !carried.iter().any(|(src, _)| *src == schema.id)
        {
            // A table the source created mid-stream (MySQL/MariaDB send
            // its Relation, no DDL message): counted by the cutover.
            let target = live.config.tables.target_name(&schema.id);
            carried.push((schema.id.clone(), target));
        }
        let event = match (event, &mapping) {
            (Event::Relation(schema), Some(m)) => Event::Relation(Arc::new(m.view(&schema))),
            (Event::Change(c), Some(m)) => Event::Change(m.project_change(c)),
            (event, _) => event,
        };
        if let Event::Begin {
            final_position: Some(f),
            commit_time,
            ..
        } = &event
        {
            live.forwarded(f.clone(), *commit_time);
        }
        Some(event)
    }
}

/// Mark the pipeline `stream` once everything up to `head` is applied:
/// build what waited for catch-up (a watermark load's unique indexes, see
/// [`super::load::build_after_catch_up`]; then `hold`, the applier's
/// per-batch order check, is released), validate the foreign keys, then
/// write the phase. With `consistent` (every committed state of the target
/// is already one state of the source) the foreign keys are validated
/// first, while the applier catches up. Each step is idempotent: a crash
/// before the phase is written does them again on the next run's catch-up.
async fn promote_when_caught_up<P: Position>(
    config: &Config,
    state: &StateStore,
    head: &P,
    live: &Live<P>,
    hold: Option<&AtomicBool>,
    consistent: bool,
) -> anyhow::Result<()> {
    // The head may sit inside a WAL record written but not flushed (a
    // PostgreSQL source's `pg_current_wal_lsn()` is the write position):
    // no walsender sends past it before the flush. A heartbeat flushes it;
    // asked now, its way to the applier overlaps the key validation.
    live.want_heartbeat();
    // One session for every step here (a login each costs the critical
    // path a few milliseconds): one post-data used, when this run loaded.
    let mut idle = live.take_targets();
    let mut target = match idle.pop() {
        Some(session) => session,
        None => ferry_postgres::connect::connect(&config.target, "target").await?,
    };
    if consistent {
        info!(
            "validating foreign keys while catching up: every table was loaded at the stream's start"
        );
        super::overrides::validate_foreign_keys(config, &mut target, state, idle).await?;
    } else {
        // Not kept idle through a catch-up of unknown length.
        drop(idle);
    }
    // A cheap read of the applier's position: polled often, so that the
    // phase (and what waits for it) follows catch-up closely.
    let waited = std::time::Instant::now();
    while live.applied_position().is_none_or(|a| a < *head) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if waited.elapsed() > Duration::from_secs(10) || target.is_closed() {
        // Idle through a long catch-up: a server's idle_session_timeout
        // may have ended the session.
        target = ferry_postgres::connect::connect(&config.target, "target").await?;
    }
    // The target holds a committed state of the source at or after `head`:
    // every unique value is on one row again.
    let built = super::load::build_after_catch_up(config, state, &mut target).await?;
    if built > 0 {
        info!(
            built,
            "built the unique indexes and keys that waited for catch-up"
        );
        if !super::replica_role_mode(&target).await? {
            // No-replica-role mode: a foreign key built now is dropped
            // until cutover like the others (idempotent).
            let carried: Vec<_> = live
                .carried
                .lock()
                .map(|c| c.iter().map(|(_, t)| t.clone()).collect())
                .unwrap_or_default();
            super::overrides::disable_for_apply(&mut target, state, &carried, false).await?;
        }
    }
    if let Some(h) = hold {
        h.store(false, Ordering::Release);
    }
    // Every table is now past its snapshot: one consistent position (with
    // `consistent`, the keys are validated already: none is left).
    super::overrides::validate_foreign_keys(config, &mut target, state, Vec::new()).await?;
    let ids: Vec<_> = state
        .tables(&target)
        .await?
        .iter()
        .filter_map(|t| ferry_core::config::parse_table_name(&t.source_table))
        .collect();
    state
        .set_tables_state(&target, &ids, &TableState::Streaming)
        .await?;
    state.write_phase(&target, Phase::Stream).await?;
    live.set_phase(Phase::Stream);
    info!(applied = ?live.applied_position().map(|a| a.to_string()), "caught up; streaming");
    Ok(())
}

/// A task aborted when this is dropped.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Transient or needs-an-operator, for errors of any layer: a classified
/// [`ferry_core::Error`] keeps its class; a raw server error of the
/// binary's own queries is classed by its SQLSTATE with the same table
/// ([`ferry_core::sqlstate_class`]); a lost connection or I/O error is
/// transient.
pub(crate) fn classify(err: &anyhow::Error) -> ErrorClass {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ferry_core::Error>() {
            return e.class();
        }
        if let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() {
            return match e.code() {
                Some(code) => ferry_core::sqlstate_class(code.code()),
                // Lost connection, I/O, timeout: transient. A conversion or
                // protocol error would fail again: it needs an operator
                // (and is a ferry bug), not an endless retry.
                None if e.is_closed()
                    || lost_connection(e)
                    || e.to_string().starts_with("timeout") =>
                {
                    ErrorClass::Transient
                }
                None => ErrorClass::Operator,
            };
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return ErrorClass::Transient;
        }
    }
    ErrorClass::Operator
}

/// Whether an I/O error is among the causes of `e`.
fn lost_connection(e: &tokio_postgres::Error) -> bool {
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        if c.is::<std::io::Error>() {
            return true;
        }
        cur = c.source();
    }
    false
}
