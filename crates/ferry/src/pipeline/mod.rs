//! `ferry run`: the pipeline that moves any [`Source`] into the target.
//!
//! ```text
//!  source (any Source impl)                                    target PostgreSQL
//!  ────────────────────────                                    ─────────────────
//!  prepare_capture + start_capture ──(snapshot)─┐
//!  target_schema (pre-data) ────────────────────┼──▶ schema  (one txn: DDL, table
//!                                               │            registry, chunk plan,
//!                                               │            checkpoint, phase=load)
//!  SnapshotReader::read per chunk, N workers ───┴──▶ load    (per chunk: COPY FROM
//!                                                             + chunk mark, one txn)
//!  target_schema (post-data) ───────────────────────▶ indexes (parallel builds),
//!                                                    FKs NOT VALID, renames,
//!                                                    ALWAYS/REPLICA triggers off
//!                                                    (no-replica-role mode:
//!                                                    ORIGIN/ALWAYS off, FKs dropped)
//!  Source::changes ─▶ bounded channel ─▶ applier (batch + checkpoint, one txn)
//!        ▲                                  │
//!        └──────── ChangeHandle::ack ◀──────┘ (after COMMIT, never before)
//! ```
//!
//! Phases (`plan → schema → load → catchup → stream`) are durable in the
//! target's state schema; every run reads them and continues whatever is
//! unfinished. Stages: [`schema`], [`load`], [`stream`]; the durable load plan
//! lives in [`plan_store`]; reconnect policy in [`retry`]; the lag monitor,
//! status in [`live`]; the control API's handler in [`handler`]; the
//! cutover in [`cutover`]; loading into tables the application created
//! (`[target_tables] mode = "existing"`) in [`existing`]; the way back
//! after a cutover with fallback (the same pipeline, reversed) in
//! [`fallback`].
//! Nothing here holds source SQL: PostgreSQL is
//! `ferry_postgres::source::PgSource`, MariaDB
//! `ferry_mysql::source::MySqlSource`, SQLite
//! `ferry_sqlite::source::SqliteSource`, picked in [`run`]; a new source adds
//! its crate and one arm there (see `docs/architecture.md`).
//!
//! Resume rules: a crash during `schema` replaces the capture it started
//! (ferry wrote the phase before starting it; a PostgreSQL slot created
//! beforehand is advanced again instead); a crash during a watermark load
//! (MySQL/MariaDB `mysql.snapshot`) keeps every finished chunk and reads
//! the missing ones; a crash during any other `load` keeps
//! every fully loaded table and copies the others again from a new snapshot
//! whose position is recorded per table (chunks of two snapshots are never
//! mixed in one table); the stream replays from the first snapshot's
//! position and skips, per table, what its snapshot holds; foreign keys,
//! built `NOT VALID`, are validated once catch-up has passed every
//! snapshot. Target schema changes made for applying are recorded in
//! [`overrides`] and put back at cutover.

mod adopt;
mod console;
mod cutover;
pub(crate) mod existing;
pub mod fallback;
mod handler;
pub mod live;
pub mod load;
mod overrides;
mod plan_store;
mod progress;
pub(crate) mod proxy;
mod retry;
mod schema;
mod state_ready;
mod stream;

use std::sync::Arc;

use anyhow::Context;
use ferry_apply::existing::Mapping;
use ferry_apply::state::{Phase, StateStore, TableState};
use ferry_core::config::{Config, EndpointKind};
use ferry_core::source::{Catalog, Snapshot, Source, SourceTable};
use ferry_postgres::source::PgSource;
use tokio_postgres::Client;
use tracing::info;

use self::live::Live;
use crate::Outcome;
use crate::shutdown::Shutdown;

/// Checkpoint row name of the change stream.
pub const STREAM: &str = "main";

/// The event kind recording [`Source::identity`] at capture start.
pub const SOURCE_IDENTITY: &str = "source_identity";

/// What refuses a run before anything is created on the source (the
/// checks `ferry plan` fails on); `None` to go on.
pub type Refusal<'a> = &'a (dyn Fn() -> Checked<'a> + Send + Sync);

/// The answer of the checks of `ferry plan` for [`Refusal`].
pub type Checked<'a> = ferry_core::source::BoxFuture<'a, Option<crate::plan::Refused>>;

/// Run the migration until shutdown or cutover: pick the source and hand
/// it to the generic pipeline ([`run_source`]).
pub async fn run(config: &Config, shutdown: Shutdown) -> anyhow::Result<Outcome> {
    match config.source.kind().map_err(anyhow::Error::msg)? {
        EndpointKind::Postgres => {
            // The proxy serves across the forward and the reverse run.
            proxy::serve(config).await?;
            let outcome = run_postgres(config, shutdown.clone()).await;
            proxy::after_run(&shutdown, outcome.is_ok()).await;
            outcome
        }
        EndpointKind::MySql => {
            let refusal = || -> Checked<'_> { Box::pin(crate::plan::refusal(config)) };
            run_source(
                Arc::new(ferry_mysql::source::MySqlSource::new(config.clone())),
                config,
                &refusal,
                shutdown,
            )
            .await
        }
        EndpointKind::Sqlite(_) => {
            // Tables land in `public` unless renamed, as `ferry plan` shows.
            let config = &ferry_sqlite::source::with_target_names(config).await?;
            let refusal = || -> Checked<'_> { Box::pin(crate::plan::refusal(config)) };
            run_source(
                Arc::new(ferry_sqlite::source::SqliteSource::new(config)?),
                config,
                &refusal,
                shutdown,
            )
            .await
        }
    }
}

/// A PostgreSQL source: forward until the cutover, then, after a cutover
/// with fallback, in reverse.
async fn run_postgres(config: &Config, shutdown: Shutdown) -> anyhow::Result<Outcome> {
    // After a cutover with fallback: the way back. A target that
    // cannot answer yet is the forward pipeline's to retry (it
    // looks again once that ends).
    // The session that looks is the forward run's first (a login fewer
    // on the way to the load).
    let first = match ferry_postgres::connect::connect(&config.target, "target").await {
        Ok(target) => match fallback::reverse_live_on(config, &target).await {
            Ok(true) => return fallback::run_reverse(config, shutdown.child_token()).await,
            Ok(false) => Some(target),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "fallback state not readable yet");
                Some(target)
            }
        },
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "fallback state not readable yet");
            None
        }
    };
    let source = Arc::new(PgSource::new(config.clone()));
    // Each attempt's checks and catalog read the source's catalog once.
    let refusal = || -> Checked<'_> {
        Box::pin(crate::plan::refusal_sharing(
            config,
            Some(source.share_catalog()),
        ))
    };
    // A finished cutover (or rollback) cancels its run's token only: the
    // proxy may serve on.
    let outcome = run_source_on(
        source.clone(),
        config,
        &refusal,
        shutdown.child_token(),
        first,
    )
    .await?;
    if !shutdown.is_cancelled() && fallback::reverse_live(config).await? {
        return fallback::run_reverse(config, shutdown.child_token()).await;
    }
    Ok(outcome)
}

/// The pipeline for any [`Source`], again after a transient failure
/// outside the stream (which reconnects by itself): a session ended or a
/// server restarting during start-up, the schema or the load. Resuming from
/// the state in the target is the normal path, so the next attempt
/// continues where this one stopped; operator errors are returned.
pub async fn run_source<S: Source>(
    source: Arc<S>,
    config: &Config,
    refusal: Refusal<'_>,
    shutdown: Shutdown,
) -> anyhow::Result<Outcome> {
    run_source_on(source, config, refusal, shutdown, None).await
}

/// [`run_source`] whose first attempt starts on `target`, a target session
/// the caller opened already.
async fn run_source_on<S: Source>(
    source: Arc<S>,
    config: &Config,
    refusal: Refusal<'_>,
    shutdown: Shutdown,
    mut target: Option<tokio_postgres::Client>,
) -> anyhow::Result<Outcome> {
    let mut backoff = retry::Backoff::default();
    // Once the checks passed, a server they cannot reach is restarting.
    let mut checks_passed = false;
    loop {
        let attempt = run_once(
            &source,
            config,
            refusal,
            &mut checks_passed,
            shutdown.clone(),
            target.take(),
        );
        let err = match attempt.await {
            Err(e)
                if !shutdown.is_cancelled()
                    && stream::classify(&e) == ferry_core::ErrorClass::Transient =>
            {
                e
            }
            other => return other,
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %format!("{err:#}"), attempt = backoff.attempts(), delay_ms = delay.as_millis() as u64, "transient failure; will reconnect");
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(Outcome::Ok),
            () = tokio::time::sleep(delay) => {}
        }
        info!(
            attempt = backoff.attempts(),
            "starting again from the state in the target"
        );
    }
}

/// One attempt. Once `checks_passed` (set here), or when resuming a run
/// past its plan, a server the checks cannot reach is retried (it is
/// restarting), not refused.
async fn run_once<S: Source>(
    source: &Arc<S>,
    config: &Config,
    refusal: Refusal<'_>,
    checks_passed: &mut bool,
    shutdown: Shutdown,
    opened: Option<tokio_postgres::Client>,
) -> anyhow::Result<Outcome> {
    let state = StateStore::new(config.state.schema.clone());
    // The checks of `ferry plan` (read-only, on their own sessions) run
    // while the state schema is made ready; their answer is awaited before
    // anything is created on the source, and not at all once cut over.
    let mut refused = refusal();
    let mut checked = None;
    let ready = async {
        let target = match opened {
            Some(target) if !target.is_closed() => target,
            _ => ferry_postgres::connect::connect(&config.target, "target").await?,
        };
        // On a fresh target, the rest of the state schema is created
        // beside what follows (see `state_ready`).
        let started = state.ensure_start(&target).await?;
        let phase = state.read_phase(&target).await?;
        anyhow::Ok((target, phase, started))
    };
    tokio::pin!(ready);
    // The source's catalog is read meanwhile too (read only; dropped
    // unread when the run stops here).
    let read_catalog = source.catalog();
    tokio::pin!(read_catalog);
    let mut catalog_read = None;
    let (target, phase, started) = loop {
        tokio::select! {
            ready = &mut ready => break ready?,
            why = &mut refused, if checked.is_none() => checked = Some(why),
            c = &mut read_catalog, if catalog_read.is_none() => catalog_read = Some(c),
        }
    };
    let state_ready = state_ready::StateReady::start(config, &state, started);
    if phase == Some(Phase::Done) {
        drop(refused);
        // A crash right after the cutover may have left keys to validate.
        validate_after_cutover(config, &state).await?;
        match config.direction {
            ferry_core::config::Direction::Forward => {
                info!("this migration is already cut over (phase done); nothing to do")
            }
            ferry_core::config::Direction::Reverse => {
                info!("the reverse stream is already cut over (rolled back); nothing to do")
            }
        }
        return Ok(Outcome::Ok);
    }
    // Before capture starts: e.g. publishing updates of a table without a
    // replica identity would make the application's UPDATEs fail.
    let why = match checked {
        Some(why) => why,
        None => loop {
            tokio::select! {
                why = &mut refused => break why,
                c = &mut read_catalog, if catalog_read.is_none() => catalog_read = Some(c),
            }
        },
    };
    if let Some(why) = why {
        // This run (or the one whose state it resumes) got past the checks
        // before: a server that cannot be reached now is restarting, not
        // misconfigured.
        let passed_before = *checks_passed || phase.is_some_and(|p| p > Phase::Plan);
        if passed_before && why.transient {
            return Err(ferry_core::Error::transient(format!(
                "starting again: the checks of `ferry plan` cannot reach the server yet ({})",
                why.found
            ))
            .into());
        }
        tracing::error!("{}", why.message);
        return Ok(Outcome::Refused);
    }
    *checks_passed = true;
    let run_id = state
        .start_run(
            &target,
            phase.unwrap_or(Phase::Plan),
            &config.source.url.to_string(),
        )
        .await?;
    info!(run = run_id, phase = phase.map_or("new", Phase::as_str), source = %config.source.url, "ferry run");

    if phase.is_some_and(|p| p > Phase::Schema) {
        same_source(source.as_ref(), &state, &target).await?;
    }

    let mut catalog = match catalog_read {
        Some(c) => c?,
        None => read_catalog.await?,
    };
    let tables = catalog.tables();
    // Existing target tables: matched now, named as renames from here on.
    let mapping = match config.target_tables.existing() {
        true => {
            state_ready.wait().await?;
            let schemas: Vec<_> = tables.iter().map(|t| t.schema.clone()).collect();
            let binary = config.source.kind().ok() == Some(EndpointKind::Postgres);
            Some(Arc::new(
                existing::resolve_for_run(config, &target, &schemas, binary).await?,
            ))
        }
        false => None,
    };
    let renamed;
    let config = match &mapping {
        Some(m) => {
            renamed = existing::with_renames(config, m);
            &renamed
        }
        None => config,
    };
    let live = Live::<S::Position>::new(
        config.clone(),
        state.clone(),
        run_id,
        shutdown.clone(),
        state_ready,
    );
    if let Some(p) = phase {
        live.set_phase(p);
    }
    set_carried(config, live.as_ref(), &tables);
    let mut background = start_background(config, &live, source, &target).await?;

    let result = async {
        if phase.is_none_or(|p| p <= Phase::Load)
            && !load_phase(
                config,
                &state,
                &target,
                source.as_ref(),
                &mut catalog,
                phase,
                &live,
                &shutdown,
                mapping.as_deref(),
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
                let carried: Vec<_> = tables
                    .iter()
                    .map(|t| config.tables.target_name(&t.schema.id))
                    .collect();
                overrides::disable_for_apply(&mut t, &state, &carried, false).await?;
            }
        }
        stream::run(
            config,
            &state,
            shutdown.clone(),
            live.clone(),
            source,
            &catalog,
            mapping.clone(),
        )
        .await
    }
    .await;
    if let Err(e) = &result {
        live.set_error(format!("{e:#}"));
    }
    let mut validate = Ok(());
    if let Some(finish) = live.take_finish() {
        let mut dropped =
            finish_after_cutover(config, &state, source.as_ref(), finish.keep_slot, run_id).await;
        // The reverse stream's rollback or finish: the old source takes
        // writes again.
        if let (Ok(f), Some(how)) = (&mut dropped, finish.fallback_end) {
            match fallback::end(config, how).await {
                Ok(note) => f.release_note = format!("{}; {note}", f.release_note),
                Err(e) => dropped = Err(e.context("ending the fallback")),
            }
        }
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

/// A resumed migration continues only on the server it started on: the
/// identity recorded at capture start must be the source's now.
async fn same_source<S: Source>(
    source: &S,
    state: &StateStore,
    target: &Client,
) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT message FROM {} WHERE kind = $1 ORDER BY id DESC LIMIT 1",
        state.table("events")
    );
    let recorded: Option<String> = target
        .query_opt(&sql, &[&SOURCE_IDENTITY])
        .await
        .context("reading the recorded source identity")?
        .map(|r| r.get(0));
    let (Some(recorded), Some(now)) = (recorded, source.identity().await?) else {
        return Ok(());
    };
    if recorded != now {
        return Err(ferry_core::Error::operator(
            format!(
                "the source is not the server this migration started on (recorded at capture start: {recorded}; now: {now}): its log positions do not continue the target's checkpoint, so a new full load is needed"
            ),
            "point source.url at the original server, or start a new full load: `ferry cleanup --state`, drop the target tables, then `ferry run`",
        )
        .into());
    }
    Ok(())
}

/// ferry's list of the carried tables: (source, target) names.
fn set_carried<P: ferry_core::Position>(config: &Config, live: &Live<P>, tables: &[SourceTable]) {
    if let Ok(mut c) = live.carried.lock() {
        *c = tables
            .iter()
            .map(|t| (t.schema.id.clone(), config.tables.target_name(&t.schema.id)))
            .collect();
    }
}

/// Schema, load and post-data; `Ok(false)` when shutdown interrupted the load.
#[allow(clippy::too_many_arguments)]
async fn load_phase<S: Source>(
    config: &Config,
    state: &StateStore,
    target: &Client,
    source: &S,
    catalog: &mut S::Catalog,
    phase: Option<Phase>,
    live: &Live<S::Position>,
    shutdown: &Shutdown,
    mapping: Option<&Mapping>,
) -> anyhow::Result<bool> {
    let mut tables = catalog.tables();
    let existing = mapping.is_some();
    if existing {
        live.state_ready.wait().await?;
        // Chunks load in parallel, in no key order: the application's
        // foreign keys and triggers wait until cutover (recorded; done
        // again, idempotently, by a run resuming the load).
        let mut t = ferry_postgres::connect::connect(&config.target, "target").await?;
        let carried: Vec<_> = tables
            .iter()
            .map(|t| config.tables.target_name(&t.schema.id))
            .collect();
        overrides::disable_for_apply(&mut t, state, &carried, false).await?;
    }
    // The load's target sessions, for the post-data builds.
    let mut spare = Vec::new();
    if phase.is_none_or(|p| p < Phase::Load) {
        let (snapshot, at_snapshot, sessions) = schema::run(
            config,
            state,
            &live.state_ready,
            target,
            source,
            catalog,
            phase,
            existing,
        )
        .await?;
        // From here on the tables are as the snapshot has them.
        if let Some(at_snapshot) = at_snapshot {
            *catalog = at_snapshot;
            tables = catalog.tables();
            set_carried(config, live, &tables);
        }
        live.set_phase(Phase::Load);
        let loaded = load_and_release(
            config, state, target, &tables, snapshot, sessions, shutdown, mapping,
        );
        match loaded.await? {
            Some(sessions) => spare = sessions,
            None => return Ok(false),
        }
    } else {
        resume_load(config, state, target, source, catalog, shutdown, mapping).await?;
        if shutdown.is_cancelled() {
            return Ok(false);
        }
    }
    let ids: Vec<_> = tables.iter().map(|t| t.schema.id.clone()).collect();
    state
        .set_tables_state(target, &ids, &TableState::Loaded)
        .await?;
    // One session for post-data and the steps after it (a login each
    // costs the critical path a few milliseconds): one the load used.
    spare.retain(|c: &Client| !c.is_closed());
    let mut target_tx = match spare.pop() {
        Some(session) => session,
        None => ferry_postgres::connect::connect(&config.target, "target").await?,
    };
    let others = load::build_post_data(config, state, &mut target_tx, spare).await?;
    schema::apply_renames(&mut target_tx, &tables, config).await?;
    let carried: Vec<_> = tables
        .iter()
        .map(|t| config.tables.target_name(&t.schema.id))
        .collect();
    let replica_role = replica_role_mode(&target_tx).await?;
    overrides::disable_for_apply(&mut target_tx, state, &carried, replica_role).await?;
    state
        .set_tables_state(target, &ids, &TableState::CatchingUp)
        .await?;
    state.write_phase(target, Phase::Catchup).await?;
    live.set_phase(Phase::Catchup);
    // For the key validation, which follows at once when catch-up may
    // validate from its start.
    live.keep_targets(std::iter::once(target_tx).chain(others).collect());
    info!("load complete; catching up from the snapshot's position");
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

/// The control API, the monitor, the lag-history sampler and the
/// validation schedule (`validate.every_seconds`).
async fn start_background<S: Source>(
    config: &Config,
    live: &Arc<Live<S::Position>>,
    source: &Arc<S>,
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
    if config.direction == ferry_core::config::Direction::Reverse {
        fallback::publish_address(config, &live.state, &addr.to_string()).await;
    }
    info!(address = %addr, "control API listening");
    let handler = Arc::new(handler::Handler {
        live: live.clone(),
        source: source.clone(),
        target: config.target.clone(),
        state_schema: config.state.schema.clone(),
    });
    let control: Arc<dyn crate::control::ControlHandler> = handler.clone();
    let token = config.control.token.clone();
    let stop = live.stopped();
    // What reads or writes the state waits for the whole state schema
    // (a fresh target's is created meanwhile: `state_ready`); a request
    // to the control API or the console waits with it. Its error, if
    // any, is the run's, from the schema stage.
    let ready = live.state_ready.clone();
    let ready_then = move || {
        let ready = ready.clone();
        async move { ready.wait().await.is_ok() }
    };
    let ready = ready_then();
    set.spawn(async move {
        if !ready.await {
            return;
        }
        if let Err(e) = crate::control::serve(listener, control, token, stop).await {
            tracing::warn!(error = %e, "control API stopped");
        }
    });
    console::start(config, handler, ready_then(), live.stopped(), &mut set).await?;
    proxy::start(config, live);
    if config.validate.every_seconds > 0 {
        let (l, ready) = (live.clone(), ready_then());
        let every = std::time::Duration::from_secs(config.validate.every_seconds);
        set.spawn(async move {
            if ready.await {
                crate::validate::background::schedule(l.clone(), every, l.stopped()).await;
            }
        });
    }
    let (l, s, ready) = (live.clone(), source.clone(), ready_then());
    set.spawn(async move {
        if ready.await {
            live::run_monitor(l.clone(), s, l.stopped()).await;
        }
    });
    let (l, target_cfg) = (live.clone(), config.target.clone());
    let cfg = ferry_monitor::history::SamplerConfig::new(&config.state.schema);
    let ready = ready_then();
    set.spawn(async move {
        if !ready.await {
            return;
        }
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
/// triggers are enabled again); then release the source's capture (slot
/// and publication, unless kept) and close the run.
async fn finish_after_cutover<S: Source>(
    config: &Config,
    state: &StateStore,
    source: &S,
    keep_slot: bool,
    run_id: i64,
) -> anyhow::Result<live::Finished> {
    // The source must answer before the target is marked done: releasing
    // its capture follows, and a done migration is never started again.
    drop(source.probe().await?);
    // A fresh session: the one opened at start may have been ended since
    // (terminated backend, server restart) while the stream reconnected.
    let target = &ferry_postgres::connect::connect(&config.target, "target").await?;
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
    let released = source.release_capture(keep_slot).await?;
    state.finish_run(target, run_id).await?;
    info!(
        slot_dropped = released.dropped,
        "cutover complete; the target is ready for writes"
    );
    Ok(live::Finished {
        slot_dropped: released.dropped,
        release_note: released.note,
        restored,
    })
}

/// Validate the foreign keys the cutover re-created `NOT VALID`
/// (no-replica-role mode); each in its own transaction with its done mark.
async fn validate_after_cutover(config: &Config, state: &StateStore) -> anyhow::Result<()> {
    let mut target = ferry_postgres::connect::connect(&config.target, "target").await?;
    for v in overrides::validate_foreign_keys(config, &mut target, state, Vec::new())
        .await
        .context(
            "validating the foreign keys re-created at cutover; run `ferry run` again to retry",
        )?
    {
        info!(restored = %v, "target schema restored");
    }
    Ok(())
}

/// Load `tables` from `snapshot` ([`load::run`]), then let the snapshot
/// go: `Ok(Some(the load's target sessions))` to go on, `Ok(None)` when
/// shutdown interrupted the load.
#[allow(clippy::too_many_arguments)]
async fn load_and_release<T: Snapshot>(
    config: &Config,
    state: &StateStore,
    target: &Client,
    tables: &[SourceTable],
    snapshot: T,
    sessions: load::Sessions<T::Reader>,
    shutdown: &Shutdown,
    mapping: Option<&Mapping>,
) -> anyhow::Result<Option<Vec<Client>>> {
    let loaded = load::run(
        config,
        state,
        target,
        tables,
        &snapshot,
        sessions,
        shutdown.clone(),
        mapping,
    )
    .await;
    snapshot.release().await;
    match loaded {
        Ok(sessions) => Ok(Some(sessions)),
        Err(_) if shutdown.is_cancelled() => {
            info!("load interrupted by shutdown; the next run resumes it");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Resume an interrupted load. A watermark snapshot
/// ([`Snapshot::chunk_resumable`]) reads only the missing chunks. Otherwise
/// fully loaded tables are kept; every other
/// table is (emptied and) copied from a new snapshot whose exact position
/// is known ([`Source::new_snapshot`]): the stream, which replays from the
/// first snapshot's position, skips those tables' changes committed before
/// it (see [`stream`]), so nothing is applied twice — also for tables
/// without a key, where replaying would duplicate rows.
///
/// A table whose columns the source changed since the first snapshot (the
/// target has them as that snapshot had them) cannot be copied into the
/// target as it is: with DDL capture it is left empty at the new snapshot's
/// position, and the stream, applying those changes (they commit before that
/// position), copies it after them (`adopt`); without it the load stops
/// with the table named.
async fn resume_load<S: Source>(
    config: &Config,
    state: &StateStore,
    target: &Client,
    source: &S,
    catalog: &S::Catalog,
    shutdown: &Shutdown,
    mapping: Option<&Mapping>,
) -> anyhow::Result<()> {
    let tables = catalog.tables();
    let mut reload = Vec::new();
    for t in &tables {
        let planned = plan_store::chunks(target, state, &t.schema.id).await?.len();
        let done = state.chunks_done(target, &t.schema.id).await?.len();
        if done < planned {
            reload.push((t.clone(), done));
        }
    }
    if reload.is_empty() {
        return Ok(());
    }
    let snapshot = source.new_snapshot().await?;
    if snapshot.chunk_resumable() {
        // A watermark load: the stream replays from the first low
        // watermark over chunks read at any later moment, so finished
        // chunks stay and only the missing ones are read.
        info!(
            tables = reload.len(),
            "resuming the watermark load with its missing chunks"
        );
        let tables: Vec<_> = reload.into_iter().map(|(t, _)| t).collect();
        let loaded = load_and_release(
            config,
            state,
            target,
            &tables,
            snapshot,
            Vec::new(),
            shutdown,
            mapping,
        );
        return loaded.await.map(|_| ());
    }
    let at = snapshot.position();
    info!(at = %at, tables = reload.len(), "resuming the full load from a new snapshot");
    let now = source.catalog_at(&snapshot, catalog).await?;
    let mut deferred = Vec::new();
    if mapping.is_none() {
        for (t, _) in &reload {
            let Some(now) = now
                .as_ref()
                .and_then(|c| c.tables().into_iter().find(|n| n.schema.id == t.schema.id))
            else {
                continue;
            };
            let to = load::relation(config, &t.schema.id, false);
            let there = adopt::target_columns(target, &to).await?;
            if adopt::shape(there.clone()) == adopt::shape(adopt::source_columns(&now.schema)) {
                continue;
            }
            if !config.postgres.capture_ddl {
                anyhow::bail!(ferry_core::Error::operator(
                    format!(
                        "{} changed columns on the source while the load was interrupted: the target has ({}), the new snapshot ({})",
                        t.schema.id,
                        adopt::show(&there),
                        adopt::show(&adopt::source_columns(&now.schema))
                    ),
                    "start the migration over (`ferry cleanup --state`, drop the tables ferry created on the target, `ferry run`), or set postgres.capture_ddl = true, with which ferry carries such changes",
                ));
            }
            info!(table = %t.schema.id, "its columns changed since the first snapshot: copied once the stream has applied the changes");
            deferred.push(t.schema.id.clone());
        }
    }

    target.batch_execute("BEGIN").await?;
    for (t, done) in &reload {
        if *done > 0 || deferred.contains(&t.schema.id) {
            // Still under its source name (renames follow post-data), or
            // the application's table.
            let to = &load::relation(config, &t.schema.id, mapping.is_some());
            info!(table = %t.schema.id, done, "copying a partially loaded table again");
            let empty = ferry_apply::truncate::empty_sql(target, &[to.quoted()]).await?;
            target.batch_execute(&empty).await?;
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
        plan_store::set_table_snapshot(target, state, &t.schema.id, &at).await?;
    }
    target
        .batch_execute("COMMIT")
        .await
        .context("recording the reload plan")?;

    let tables: Vec<_> = reload
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| !deferred.contains(&t.schema.id))
        .collect();
    load_and_release(
        config,
        state,
        target,
        &tables,
        snapshot,
        Vec::new(),
        shutdown,
        mapping,
    )
    .await
    .map(|_| ())
}
