//! `ferry run`: the pipeline that moves a PostgreSQL source into the target.
//!
//! ```text
//!  source PostgreSQL                                           target PostgreSQL
//!  ─────────────────                                           ─────────────────
//!  publication + slot ──(exported snapshot)──┐
//!  pg_dump pre-data ─────────────────────────┼──▶ schema  (one txn: DDL, table
//!                                            │            registry, chunk plan,
//!                                            │            checkpoint, phase=load)
//!  COPY … TO STDOUT (binary), N sessions ────┴──▶ load    (per chunk: COPY FROM
//!                                                          + chunk mark, one txn)
//!  pg_dump post-data ────────────────────────────▶ indexes (parallel builds),
//!                                                 FKs NOT VALID, renames,
//!                                                 ALWAYS/REPLICA triggers off
//!                                                 (no-replica-role mode:
//!                                                 ORIGIN/ALWAYS off, FKs dropped)
//!  pgoutput via START_REPLICATION ─▶ decode ─▶ bounded channel ─▶ applier
//!        ▲                                                  (batch + checkpoint,
//!        └──────── standby status (flush = acked) ◀── ack ── one txn, then ack)
//! ```
//!
//! Phases (`plan → schema → load → catchup → stream`) are durable in the
//! target's state schema; every run reads them and continues whatever is
//! unfinished. Stages: [`schema`], [`load`], [`stream`]; the durable load plan
//! lives in [`plan_store`]; reconnect policy in [`retry`].
//!
//! Resume rules: a crash during `schema` recreates the slot (ferry wrote the
//! phase before creating it; a slot created beforehand is advanced again);
//! a crash during `load` keeps every fully loaded table and copies the
//! others again from a fresh snapshot whose position is recorded per table
//! (row versions move between ctid ranges, so chunks of two snapshots are
//! never mixed in one table); the stream replays from the
//! slot's consistent point and skips, per table, what its snapshot holds;
//! foreign keys, built `NOT VALID`, are validated once catch-up has passed
//! every snapshot. Target schema changes made for applying are recorded in
//! [`overrides`] and put back at cutover.

mod cutover;
pub mod live;
pub mod load;
mod overrides;
mod partitions;
mod plan_store;
mod progress;
mod retry;
mod schema;
mod stream;

use std::sync::Arc;

use anyhow::Context;
use ferry_apply::state::{Phase, StateStore, TableState};
use ferry_core::Lsn;
use ferry_core::config::{Config, EndpointKind};
use ferry_postgres::catalog::{SourceCatalog, read_catalog};
use ferry_postgres::replication::ReplicationConnection;
use tokio_postgres::Client;
use tracing::info;

use self::live::Live;
use crate::Outcome;
use crate::shutdown::{Shutdown, Trigger};

/// Checkpoint row name of the change stream.
pub const STREAM: &str = "main";

/// Run the migration until shutdown or cutover.
pub async fn run(config: &Config, trigger: Trigger, shutdown: Shutdown) -> anyhow::Result<Outcome> {
    match config.source.kind().map_err(anyhow::Error::msg)? {
        EndpointKind::Postgres => run_postgres_retrying(config, trigger, shutdown).await,
        EndpointKind::MySql | EndpointKind::Sqlite(_) => Err(ferry_core::Error::operator(
            format!("`ferry run` from {} is not available yet", config.source.url),
            "this release migrates PostgreSQL sources; `ferry plan` already checks MySQL/MariaDB and SQLite sources",
        )
        .into()),
    }
}

/// [`run_postgres`] again after a transient failure outside the stream
/// (which reconnects by itself): a session ended or a server restarting
/// during start-up, the schema or the load. Resuming from the state in the
/// target is the normal path, so the next attempt continues where this one
/// stopped; operator errors are returned.
async fn run_postgres_retrying(
    config: &Config,
    trigger: Trigger,
    shutdown: Shutdown,
) -> anyhow::Result<Outcome> {
    let mut backoff = retry::Backoff::default();
    loop {
        let err = match run_postgres(config, trigger.clone(), shutdown.clone()).await {
            Err(e)
                if !shutdown.is_triggered()
                    && stream::classify(&e) == ferry_core::ErrorClass::Transient =>
            {
                e
            }
            other => return other,
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %format!("{err:#}"), attempt = backoff.attempts(), delay_ms = delay.as_millis() as u64, "transient failure; will reconnect");
        let mut sd = shutdown.clone();
        tokio::select! {
            biased;
            () = sd.wait() => return Ok(Outcome::Ok),
            () = tokio::time::sleep(delay) => {}
        }
        info!(
            attempt = backoff.attempts(),
            "starting again from the state in the target"
        );
    }
}

async fn run_postgres(
    config: &Config,
    trigger: Trigger,
    shutdown: Shutdown,
) -> anyhow::Result<Outcome> {
    let state = StateStore::new(config.state.schema.clone());
    let target = ferry_postgres::connect::connect(&config.target, "target").await?;
    state.ensure(&target).await?;
    plan_store::ensure(&target, &state).await?;
    let phase = state.read_phase(&target).await?;
    if phase == Some(Phase::Done) {
        // A crash right after the cutover may have left keys to validate.
        validate_after_cutover(config, &state).await?;
        info!("this migration is already cut over (phase done); nothing to do");
        return Ok(Outcome::Ok);
    }
    // Before the publication exists: publishing updates of a table without
    // a replica identity would make the application's UPDATEs fail.
    if let Some(why) = crate::plan::refusal(config).await {
        tracing::error!("{why}");
        return Ok(Outcome::Refused);
    }
    let run_id = state
        .start_run(
            &target,
            phase.unwrap_or(Phase::Plan),
            &config.source.url.to_string(),
        )
        .await?;
    info!(run = run_id, phase = phase.map_or("new", Phase::as_str), source = %config.source.url, "ferry run");

    let live = Live::new(config.clone(), state.clone(), run_id, trigger);
    if let Some(p) = phase {
        live.set_phase(p);
    }
    let source = ferry_postgres::connect::connect(&config.source, "source").await?;
    let filter = config.tables.filter().map_err(anyhow::Error::msg)?;
    let catalog = read_catalog(&source, &filter, &config.state.schema).await?;
    let keys = stream::primary_keys(&catalog);
    if let Ok(mut c) = live.carried.lock() {
        *c = catalog
            .tables
            .iter()
            .map(|t| (t.schema.id.clone(), config.tables.target_name(&t.schema.id)))
            .collect();
    }
    let mut background = start_background(config, &live, &target).await?;

    let result = async {
        if phase.is_none_or(|p| p <= Phase::Load)
            && !load_phase(
                config, &state, &target, &source, &catalog, phase, &live, &shutdown,
            )
            .await?
        {
            return Ok(());
        }
        // A run resumed by a role that may not set session_replication_role
        // after one that could: make the same changes now (idempotent).
        if phase.is_some_and(|p| p > Phase::Load) {
            let mut t = ferry_postgres::connect::connect(&config.target, "target").await?;
            if !replica_role_mode(&t).await? {
                let carried: Vec<_> = catalog
                    .tables
                    .iter()
                    .map(|t| config.tables.target_name(&t.schema.id))
                    .collect();
                overrides::disable_for_apply(&mut t, &state, &carried, false).await?;
            }
        }
        stream::run(config, &state, shutdown.clone(), live.clone(), &keys).await
    }
    .await;
    if let Err(e) = &result {
        live.set_error(format!("{e:#}"));
    }
    let mut validate = Ok(());
    if let Some(finish) = live.take_finish() {
        let dropped = finish_after_cutover(config, &state, finish.keep_slot, run_id).await;
        let finished = dropped.is_ok();
        let _ = finish.reply.send(dropped.map_err(|e| format!("{e:#}")));
        if finished {
            // The target is released: keys re-created NOT VALID by the
            // restore are validated while the application writes.
            validate = validate_after_cutover(config, &state).await;
        }
    }
    // Stops the control API (after in-flight requests), monitor and sampler.
    live.request_stop();
    while background.join_next().await.is_some() {}
    result.and(validate).map(|()| Outcome::Ok)
}

/// Schema, load and post-data; `Ok(false)` when shutdown interrupted the load.
#[allow(clippy::too_many_arguments)]
async fn load_phase(
    config: &Config,
    state: &StateStore,
    target: &Client,
    source: &Client,
    catalog: &SourceCatalog,
    phase: Option<Phase>,
    live: &Live,
    shutdown: &Shutdown,
) -> anyhow::Result<bool> {
    if phase.is_none_or(|p| p < Phase::Load) {
        let slot = schema::run(config, state, target, source, catalog, phase).await?;
        live.set_phase(Phase::Load);
        let name = slot.snapshot_name().unwrap_or_default().to_owned();
        let loaded = load::run(config, state, &catalog.tables, &name, shutdown.clone()).await;
        slot.release().await;
        if !finish_load_step(loaded, shutdown)? {
            return Ok(false);
        }
    } else {
        resume_load(config, state, target, catalog, shutdown).await?;
        if shutdown.is_triggered() {
            return Ok(false);
        }
    }
    for t in &catalog.tables {
        state
            .set_table_state(target, &t.schema.id, &TableState::Loaded)
            .await?;
    }
    load::build_post_data(config, state).await?;
    let mut target_tx = ferry_postgres::connect::connect(&config.target, "target").await?;
    schema::apply_renames(&mut target_tx, catalog, config).await?;
    let carried: Vec<_> = catalog
        .tables
        .iter()
        .map(|t| config.tables.target_name(&t.schema.id))
        .collect();
    let replica_role = replica_role_mode(&target_tx).await?;
    overrides::disable_for_apply(&mut target_tx, state, &carried, replica_role).await?;
    for t in &catalog.tables {
        state
            .set_table_state(target, &t.schema.id, &TableState::CatchingUp)
            .await?;
    }
    state.write_phase(target, Phase::Catchup).await?;
    live.set_phase(Phase::Catchup);
    info!("load complete; catching up from the slot's consistent point");
    Ok(true)
}

/// Whether the target session may set `session_replication_role =
/// replica`; without it ferry runs in no-replica-role mode (see
/// [`overrides`]).
pub(crate) async fn replica_role_mode(target: &Client) -> anyhow::Result<bool> {
    let allowed = ferry_apply::preflight::replica_role_allowed(target)
        .await
        .context("checking whether the target role may set session_replication_role")?;
    if !allowed {
        info!(
            "no-replica-role mode: the target role cannot set session_replication_role; target triggers stay disabled and foreign keys dropped until cutover"
        );
    }
    Ok(allowed)
}

/// The control API, the monitor and the lag-history sampler.
async fn start_background(
    config: &Config,
    live: &Arc<Live>,
    target: &Client,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let mut set = tokio::task::JoinSet::new();
    let listener = tokio::net::TcpListener::bind(&config.control.listen)
        .await
        .with_context(|| {
            format!(
                "binding the control API to {}; set control.listen to a free address",
                config.control.listen
            )
        })?;
    let addr = listener.local_addr()?;
    live::publish_address(target, &live.state, &addr.to_string()).await?;
    info!(address = %addr, "control API listening");
    let handler: Arc<dyn crate::control::ControlHandler> = Arc::new(live::Handler(live.clone()));
    let token = config.control.token.clone();
    let stop = live.stopped();
    set.spawn(async move {
        if let Err(e) = crate::control::serve(listener, handler, token, stop).await {
            tracing::warn!(error = %e, "control API stopped");
        }
    });
    set.spawn(live::run_monitor(live.clone(), live.stopped()));
    let (l, target_cfg) = (live.clone(), config.target.clone());
    let cfg = ferry_monitor::history::SamplerConfig::new(&config.state.schema);
    set.spawn(async move {
        // A lost target session (restart, terminated backend) reconnects
        // with backoff; only shutdown or an operator error ends the sampler.
        let mut backoff = retry::Backoff::default();
        loop {
            let l2 = l.clone();
            let result = match ferry_postgres::connect::connect(&target_cfg, "target").await {
                Ok(t) => ferry_monitor::history::run_sampler(t, cfg.clone(), move || l2.lag(), l.stopped())
                    .await
                    .map_err(ferry_core::Error::from),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return,
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "lag history sampler lost the target; will reconnect");
                    tokio::select! {
                        biased;
                        () = l.stopped() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lag history sampler stopped");
                    return;
                }
            }
        }
    });
    Ok(set)
}

/// After a cutover stopped the stream: put back the target schema changes
/// ferry made for applying ([`overrides`]) and mark the pipeline done, in one
/// transaction (the stream is down, so nothing is applied after the
/// triggers are enabled again); then drop slot and publication (unless
/// kept; a slot created beforehand, `postgres.existing_slot`, always is)
/// and close the run.
async fn finish_after_cutover(
    config: &Config,
    state: &StateStore,
    keep_slot: bool,
    run_id: i64,
) -> anyhow::Result<live::Finished> {
    // Fresh sessions: those opened at start may have been ended since
    // (terminated backend, server restart) while the stream reconnected.
    let source = &ferry_postgres::connect::connect(&config.source, "source").await?;
    let target = &ferry_postgres::connect::connect(&config.target, "target").await?;
    // A fenced source database defaults new sessions to read-only.
    source
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .context("preparing to drop the slot and publication")?;
    target.batch_execute("BEGIN").await?;
    let restored = async {
        let restored = overrides::restore_all(target, state).await?;
        state.write_phase(target, Phase::Done).await?;
        anyhow::Ok(restored)
    }
    .await;
    let restored = match restored {
        Ok(r) => {
            target.batch_execute("COMMIT").await?;
            r
        }
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            return Err(e.context("restoring the target schema after the cutover"));
        }
    };
    for r in &restored {
        info!(restored = %r, "target schema restored");
    }
    let mut dropped = false;
    let existing = config.postgres.existing_slot;
    if existing {
        let slot = &config.postgres.slot;
        tracing::warn!(slot = %slot, fix = %format!("SELECT pg_drop_replication_slot('{slot}')"),
            "replication slot created beforehand kept (postgres.existing_slot): it is yours and retains WAL on the source until you drop it");
    }
    if !keep_slot {
        if !existing {
            drop_slot_once_released(source, &config.postgres.slot).await?;
        }
        ferry_postgres::slot::drop_publication(source, &config.postgres.publication).await?;
        dropped = !existing;
    }
    state.finish_run(target, run_id).await?;
    info!(
        slot_dropped = dropped,
        "cutover complete; the target is ready for writes"
    );
    Ok(live::Finished {
        slot_dropped: dropped,
        restored,
    })
}

/// Drop slot `name`; the walsender may take a moment to let go of it.
async fn drop_slot_once_released(source: &Client, name: &str) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match ferry_postgres::slot::drop_slot(source, name).await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() < std::time::Duration::from_secs(30) => {
                tracing::debug!(error = %e, "slot still active; retrying the drop");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Validate the foreign keys the cutover re-created `NOT VALID`
/// (no-replica-role mode); each in its own transaction with its done mark.
async fn validate_after_cutover(config: &Config, state: &StateStore) -> anyhow::Result<()> {
    let mut target = ferry_postgres::connect::connect(&config.target, "target").await?;
    for v in overrides::validate_foreign_keys(&mut target, state)
        .await
        .context(
            "validating the foreign keys re-created at cutover; run `ferry run` again to retry",
        )?
    {
        info!(restored = %v, "target schema restored");
    }
    Ok(())
}

/// `Ok(true)` to go on, `Ok(false)` when shutdown interrupted the load.
fn finish_load_step(result: anyhow::Result<()>, shutdown: &Shutdown) -> anyhow::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(_) if shutdown.is_triggered() => {
            info!("load interrupted by shutdown; the next run resumes it");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Resume an interrupted load. Fully loaded tables are kept; every other
/// table is (emptied and) copied from a new snapshot, taken with a temporary
/// slot so its exact position is known: the stream, which replays from the
/// first slot's consistent point, skips those tables' changes committed
/// before it (see [`stream`]), so nothing is applied twice — also for tables
/// without a key, where replaying would duplicate rows.
async fn resume_load(
    config: &Config,
    state: &StateStore,
    target: &Client,
    catalog: &SourceCatalog,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let mut reload = Vec::new();
    for t in &catalog.tables {
        let planned = plan_store::chunks(target, state, &t.schema.id).await?.len();
        let done = state.chunks_done(target, &t.schema.id).await?.len();
        if done < planned {
            reload.push((t.clone(), done));
        }
    }
    if reload.is_empty() {
        return Ok(());
    }
    let mut conn = ReplicationConnection::connect(&config.source).await?;
    let temp_slot = format!("{}_resync_{}", config.postgres.slot, std::process::id());
    let created = conn.create_temporary_slot(&temp_slot).await?;
    let at: Lsn = created.consistent_point;
    let name = created
        .snapshot_name
        .context("the temporary slot exported no snapshot")?;
    info!(snapshot = %name, at = %at, tables = reload.len(), "resuming the full load from a new snapshot");

    target.batch_execute("BEGIN").await?;
    for (t, done) in &reload {
        if *done > 0 {
            // Still under its source name: renames follow post-data.
            let to = &t.schema.id;
            info!(table = %t.schema.id, done, "copying a partially loaded table again");
            target
                .batch_execute(&format!("TRUNCATE {}", to.quoted()))
                .await?;
            target
                .execute(
                    &format!(
                        "DELETE FROM {} WHERE source_table = $1",
                        state.table("chunks")
                    ),
                    &[&ferry_apply::state::table_key(&t.schema.id)],
                )
                .await?;
        }
        plan_store::set_table_snapshot(target, state, &t.schema.id, at).await?;
    }
    target
        .batch_execute("COMMIT")
        .await
        .context("recording the reload plan")?;

    let tables: Vec<_> = reload.into_iter().map(|(t, _)| t).collect();
    let loaded = load::run(config, state, &tables, &name, shutdown.clone()).await;
    conn.close().await;
    finish_load_step(loaded, shutdown).map(|_| ())
}
