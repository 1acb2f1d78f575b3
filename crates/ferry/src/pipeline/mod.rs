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
//!  pg_dump post-data ────────────────────────────▶ indexes (parallel builds)
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
//! phase before creating it); a crash during `load` keeps every fully loaded
//! table and copies the others again from a fresh snapshot whose position is
//! recorded per table (row versions move between ctid ranges, so chunks of
//! two snapshots are never mixed in one table); the stream replays from the
//! slot's consistent point and skips, per table, what its snapshot holds.

pub mod load;
mod plan_store;
mod retry;
mod schema;
mod stream;

use std::sync::Arc;

use anyhow::Context;
use ferry_apply::load::LoadProgress;
use ferry_apply::state::{Phase, StateStore, TableState};
use ferry_core::Lsn;
use ferry_core::config::{Config, EndpointKind};
use ferry_core::schema::quote_ident;
use ferry_postgres::catalog::{SourceCatalog, read_catalog};
use ferry_postgres::replication::ReplicationConnection;
use tokio_postgres::Client;
use tracing::info;

use crate::Outcome;
use crate::shutdown::Shutdown;

/// Checkpoint row name of the change stream.
pub const STREAM: &str = "main";

/// Run the migration until shutdown (or, later, cutover).
pub async fn run(config: &Config, shutdown: Shutdown) -> anyhow::Result<Outcome> {
    match config.source.kind().map_err(anyhow::Error::msg)? {
        EndpointKind::Postgres => run_postgres(config, shutdown).await,
        EndpointKind::MySql | EndpointKind::Sqlite(_) => Err(ferry_core::Error::operator(
            format!("`ferry run` from {} is not available yet", config.source.url),
            "this release migrates PostgreSQL sources; `ferry plan` already checks MySQL/MariaDB and SQLite sources",
        )
        .into()),
    }
}

async fn run_postgres(config: &Config, shutdown: Shutdown) -> anyhow::Result<Outcome> {
    let state = StateStore::new(config.state.schema.clone());
    let target = ferry_postgres::connect::connect(&config.target, "target").await?;
    state.ensure(&target).await?;
    plan_store::ensure(&target, &state).await?;
    let phase = state.read_phase(&target).await?;
    let run_id = state
        .start_run(
            &target,
            phase.unwrap_or(Phase::Plan),
            &config.source.url.to_string(),
        )
        .await?;
    info!(run = run_id, phase = phase.map_or("new", Phase::as_str), source = %config.source.url, "ferry run");

    if phase.is_none_or(|p| p <= Phase::Load) {
        let source = ferry_postgres::connect::connect(&config.source, "source").await?;
        let filter = config.tables.filter().map_err(anyhow::Error::msg)?;
        let catalog = read_catalog(&source, &filter, &config.state.schema).await?;
        let progress = Arc::new(LoadProgress::default());
        if phase.is_none_or(|p| p < Phase::Load) {
            let slot = schema::run(config, &state, &target, &source, &catalog, phase).await?;
            let name = slot.snapshot_name().unwrap_or_default().to_owned();
            let loaded = load::run(
                config,
                &state,
                &catalog.tables,
                &name,
                progress,
                shutdown.clone(),
            )
            .await;
            slot.release().await;
            if !finish_load_step(loaded, &shutdown)? {
                return Ok(Outcome::Ok);
            }
        } else {
            resume_load(config, &state, &target, &catalog, progress, &shutdown).await?;
            if shutdown.is_triggered() {
                return Ok(Outcome::Ok);
            }
        }
        load::build_post_data(config, &state).await?;
        for t in &catalog.tables {
            state
                .set_table_state(&target, &t.schema.id, &TableState::CatchingUp)
                .await?;
        }
        state.write_phase(&target, Phase::Catchup).await?;
        info!("load complete; catching up from the slot's consistent point");
    }
    stream::run(config, &state, shutdown).await?;
    Ok(Outcome::Ok)
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
    progress: Arc<LoadProgress>,
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
    let rows = conn
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')",
            quote_ident(&temp_slot)
        ))
        .await?;
    let row = rows
        .first()
        .context("CREATE_REPLICATION_SLOT returned no row")?;
    let at: Lsn = row
        .get(1)
        .cloned()
        .flatten()
        .context("no consistent point")?
        .parse()?;
    let name = row
        .get(2)
        .cloned()
        .flatten()
        .context("no exported snapshot")?;
    info!(snapshot = %name, at = %at, tables = reload.len(), "resuming the full load from a new snapshot");

    target.batch_execute("BEGIN").await?;
    for (t, done) in &reload {
        if *done > 0 {
            let to = config.tables.target_name(&t.schema.id);
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
    let loaded = load::run(config, state, &tables, &name, progress, shutdown.clone()).await;
    conn.close().await;
    finish_load_step(loaded, shutdown).map(|_| ())
}
