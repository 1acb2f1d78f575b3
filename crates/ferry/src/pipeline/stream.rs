//! The streaming stage: pgoutput from the slot, through the decoder and a
//! bounded channel, into the batching applier; acknowledgement after commit.
//!
//! Consumes the checkpoint in the target (the slot's consistent point on the
//! first run, then the end of the last applied transaction) and streams from
//! there. Emits target transactions (data + checkpoint, see
//! `ferry_apply::applier`) and standby status updates whose flush position is
//! what the applier acknowledged after COMMIT — never more. Invariant:
//! `confirmed_flush ≤ checkpoint ≤ received`.
//!
//! Restart: every (re)connection reads the checkpoint again, verifies the
//! slot has not moved past it, and starts there; the server skips commits at
//! or before it. Transient failures (source or target restarted, connection
//! dropped) reconnect with backoff; operator errors stop the run.
//!
//! Phase: `catchup` becomes `stream` once the applied position reaches the
//! source's WAL position read when streaming started.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_apply::checkpoint::read_checkpoint;
use ferry_apply::state::{Phase, StateStore, TableState};
use ferry_apply::{Applier, ApplierConfig, RunOutcome};
use ferry_core::config::Config;
use ferry_core::{ErrorClass, Event, Lsn, ReplicaIdentity, TableId, TableSchema};
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::stream::{
    AckHandle, CatalogTypeResolver, PgChangeStream, StreamConfig, StreamHooks,
};
use tracing::{info, warn};

use super::STREAM;
use super::live::Live;
use super::retry::Backoff;
use crate::shutdown::Shutdown;

/// A connection that stayed up this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Stream until shutdown, reconnecting after transient failures. `keys`
/// holds each carried table's primary-key columns ([`primary_keys`]).
pub async fn run(
    config: &Config,
    state: &StateStore,
    shutdown: Shutdown,
    live: Arc<Live>,
    keys: &HashMap<TableId, Vec<String>>,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let err = match stream_once(config, state, shutdown.clone(), &live, keys).await {
            Ok(()) => return Ok(()),
            Err(e) if shutdown.is_triggered() => {
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
        let mut sd = shutdown.clone();
        tokio::select! {
            biased;
            () = sd.wait() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
        info!(
            attempt = backoff.attempts(),
            "reconnecting to source and target"
        );
    }
}

/// One connection's worth of streaming; `Ok` only on shutdown.
async fn stream_once(
    config: &Config,
    state: &StateStore,
    shutdown: Shutdown,
    live: &Arc<Live>,
    keys: &HashMap<TableId, Vec<String>>,
) -> anyhow::Result<()> {
    let target = ferry_postgres::connect::connect(&config.target, "target").await?;
    let source = Arc::new(ferry_postgres::connect::connect(&config.source, "source").await?);
    let checkpoint = read_checkpoint::<Lsn>(&target, state, STREAM)
        .await?
        .context("no stream checkpoint in the target: the schema stage never finished; run `ferry cleanup` and start again")?;
    ferry_postgres::slot::verify_slot(&source, &config.postgres.slot, checkpoint.position).await?;
    // Lag counts from what the target already holds, not from zero.
    live.applied(checkpoint.position);
    let snapshots = super::plan_store::table_snapshots(&target, state).await?;
    let head = current_wal_lsn(&source).await?;
    let phase = state.read_phase(&target).await?;

    let conn = ReplicationConnection::connect(&config.source).await?;
    let mut stream_config = StreamConfig::new(
        &config.postgres.slot,
        &config.postgres.publication,
        checkpoint.position,
    );
    stream_config.proto_version = config.postgres.proto_version;
    // Two of the four shares of apply.max_buffered_bytes; the applier holds
    // the other two.
    stream_config.channel_bytes = config.apply.buffer_share();
    stream_config.spill_threshold = config.apply.buffer_share();
    stream_config.extra_publications =
        ferry_postgres::slot::stream_publications(&source, &config.postgres.publication)
            .await?
            .split_off(1);
    let resolver = Arc::new(CatalogTypeResolver::new(source.clone()));
    let hooks = StreamHooks {
        map: Some(Box::new(event_map(keys.clone(), live.clone()))),
    };
    let (mut rx, handle) = PgChangeStream::start_with(conn, resolver, stream_config, hooks).await?;
    info!(from = %checkpoint.position, source_head = %head, "streaming changes");

    let acked = handle.ack_handle();
    let promoter = (phase == Some(Phase::Catchup)).then(|| {
        let (config, state, acked, live) =
            (config.clone(), state.clone(), acked.clone(), live.clone());
        tokio::spawn(async move {
            // Transient failures (target restarted, session ended) retry:
            // a lost promotion would leave the phase at catchup for good.
            let mut backoff = Backoff::default();
            loop {
                let Err(e) = promote_when_caught_up(&config, &state, &acked, head, &live).await
                else {
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
        })
    });

    let mut applier_cfg = ApplierConfig::new(STREAM, &config.apply, true);
    applier_cfg.replica_role = super::replica_role_mode(&target).await?;
    applier_cfg.pause = Some(live.paused());
    let mut applier =
        Applier::<Lsn>::new(target, state.clone(), config.tables.clone(), applier_cfg).await?;
    applier.skip_before_snapshots(snapshots);
    live.set_stats(applier.stats());
    let watch = tokio::spawn(super::partitions::watch(live.clone()));
    let ack = |p: &Lsn| {
        acked.ack(*p);
        live.applied(*p);
    };
    let mut sd = shutdown.clone();
    let outcome = applier
        .run(&mut rx, ack, async move { sd.wait().await })
        .await;
    if let Some(p) = promoter {
        p.abort();
    }
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

/// Primary-key column names per table, from the source catalog.
pub fn primary_keys(
    catalog: &ferry_postgres::catalog::SourceCatalog,
) -> HashMap<TableId, Vec<String>> {
    catalog
        .tables
        .iter()
        .map(|t| {
            (
                t.schema.id.clone(),
                t.schema.key_names().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// What the applier must see differently from what pgoutput sends, fixed
/// inline in the reader ([`StreamHooks::map`]):
///
/// - pgoutput flags every column as part of the key under REPLICA IDENTITY
///   FULL; the applier matches on the table's real primary key (none: all
///   columns, one row at a time), so Relation events get the catalog's key.
///
/// It also records each transaction as received, for the lag figures.
/// (Changes a table reloaded from a later snapshot already holds are dropped
/// by the applier: `Applier::skip_before_snapshots`.)
fn event_map(
    keys: HashMap<TableId, Vec<String>>,
    live: Arc<Live>,
) -> impl FnMut(Event<Lsn>) -> Option<Event<Lsn>> + Send + 'static {
    move |event| match event {
        Event::Relation(schema) if schema.replica_identity == ReplicaIdentity::Full => {
            let names = keys.get(&schema.id).cloned().unwrap_or_default();
            let key: Option<Vec<usize>> = names.iter().map(|n| schema.column_index(n)).collect();
            let mut fixed = TableSchema::clone(&schema);
            fixed.key = key.unwrap_or_default();
            Some(Event::Relation(Arc::new(fixed)))
        }
        Event::Begin {
            final_position,
            commit_time,
            ..
        } => {
            if let Some(f) = final_position {
                live.forwarded(f, commit_time);
            }
            Some(event)
        }
        other => Some(other),
    }
}

async fn current_wal_lsn(source: &tokio_postgres::Client) -> anyhow::Result<Lsn> {
    let text: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("reading the source WAL position")?
        .get(0);
    Ok(text.parse()?)
}

/// Mark the pipeline `stream` once everything up to `head` is applied.
async fn promote_when_caught_up(
    config: &Config,
    state: &StateStore,
    acked: &AckHandle,
    head: Lsn,
    live: &Live,
) -> anyhow::Result<()> {
    while acked.acked() < head {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut target = ferry_postgres::connect::connect(&config.target, "target").await?;
    // Every table is now past its snapshot: one consistent position.
    super::overrides::validate_foreign_keys(&mut target, state).await?;
    for t in state.tables(&target).await? {
        if let Some(id) = ferry_core::config::parse_table_name(&t.source_table) {
            state
                .set_table_state(&target, &id, &TableState::Streaming)
                .await?;
        }
    }
    state.write_phase(&target, Phase::Stream).await?;
    live.set_phase(Phase::Stream);
    info!(applied = %acked.acked(), "caught up; streaming");
    Ok(())
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
