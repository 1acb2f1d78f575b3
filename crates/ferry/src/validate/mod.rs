//! Validation: prove that the target holds the source's rows while changes
//! keep flowing, and repair what differs (`ferry validate`, `POST
//! /validate`, the `[validate]` schedule of `ferry run`).
//!
//! ```text
//!  source (short REPEATABLE READ snapshot per range, position P)
//!     │ count + digest of (lo, hi]           ┌─ applied checkpoint ≥ P ─┐
//!     ▼                                      ▼                          │
//!  compare with the target's digest of (lo, hi] ── differ ──▶ narrow ──▶ leaf:
//!  per-row hashes ──▶ candidate keys ──▶ confirm (source read, applied
//!  ≥ P, target read, source read again; value by value; two rounds)
//!  ──▶ differences / unsettled ──▶ [repair]
//!  ──▶ confirm again ──▶ result per table in <state>.validations
//! ```
//!
//! Modules: [`background`] (validations a running `ferry run` starts),
//! [`digest`] (the SQL, the same on both PostgreSQL sides and the
//! normalized row text it hashes), [`side`] (the source and target sides
//! of one table, per source kind), [`session`] (the target sessions, the
//! applied checkpoint wait), [`table`] (scan, narrow, confirm of one table),
//! [`settle`] (the pure decisions: settled or not, differing keys, the
//! rows/s budget, whether a cutover may rely on the results), [`repair`]
//! (the exactly-once argument), [`store`] (results in the target).
//!
//! Invariants: the target is read for a range only once the applier has
//! passed the source position the range was read at, so lag is never a
//! difference; a key is reported different only when two rounds in a row
//! saw it differ, each with the source row unchanged from before the
//! position it waited for until after the target read; nothing on the
//! source is ever locked (the application's writers never wait for
//! validation); a key
//! still changing after `validate.rounds` rounds is reported unsettled and
//! the table is not clean — never called equal. Source reads stay within
//! `validate.rows_per_second`.
//!
//! Sources: every source. PostgreSQL computes digests inside both
//! databases; MariaDB and SQLite sources are read through their crate's
//! [`KeyReader`](ferry_core::source::KeyReader) and both sides are hashed
//! by ferry over the normalized values ([`side`] says which side does
//! what; [`ferry_core::normalize`] is the normalization table).

pub mod background;
mod digest;
mod repair;
mod session;
pub mod settle;
mod side;
pub mod store;
mod table;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use ferry_apply::state::StateStore;
use ferry_core::config::{Config, EndpointKind};
use ferry_core::source::{BoxFuture, Catalog, KeyReading, Source, SourceTable};
use ferry_core::{TableId, TableSchema};
use ferry_monitor::{Metrics, Phase, TableValidation};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::digest::Shape;
use self::session::Sessions;
use self::settle::Key;
use self::side::{Side, SourceSide};

/// What to validate (`ferry validate` options, `POST /validate` body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidateRequest {
    /// Source or target table names (`schema.table`, or `table` in
    /// `public`); empty: every carried table.
    pub tables: Vec<String>,
    /// Re-copy differing keys from the source.
    pub repair: bool,
}

/// The applier's pause switch, as validation reaches it.
pub trait PauseSwitch: Send + Sync {
    /// Pause; `true` when this call paused it (it was running).
    fn pause(&self) -> BoxFuture<'_, anyhow::Result<bool>>;
    fn resume(&self) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// No `ferry run` to pause: the stream is stopped at its checkpoint anyway.
#[derive(Debug)]
pub struct NoApplier;

impl PauseSwitch for NoApplier {
    fn pause(&self) -> BoxFuture<'_, anyhow::Result<bool>> {
        Box::pin(async { Ok(false) })
    }
    fn resume(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// The rows/s budget of one validation.
#[derive(Debug)]
pub struct Budget {
    per_second: u64,
    rows: u64,
    started: Instant,
}

impl Budget {
    fn new(per_second: u64) -> Self {
        Budget {
            per_second,
            rows: 0,
            started: Instant::now(),
        }
    }

    /// `rows` more were read: sleep as long as the budget asks.
    pub async fn spend(&mut self, rows: u64) {
        self.rows += rows;
        let delay = settle::budget_delay(self.rows, self.started.elapsed(), self.per_second);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Validate (and with `repair`, repair) the requested tables; each result
/// is stored in the target, published to `metrics` and returned.
pub async fn run(
    config: &Config,
    req: &ValidateRequest,
    applier: &dyn PauseSwitch,
    metrics: Option<&Metrics>,
) -> anyhow::Result<Vec<TableValidation>> {
    let kind = config.source.kind().map_err(anyhow::Error::msg)?;
    // SQLite tables land in `public` unless renamed, as `ferry run` puts them.
    let sqlite_config;
    let config = match kind {
        EndpointKind::Sqlite(_) => {
            sqlite_config = ferry_sqlite::source::with_target_names(config).await?;
            &sqlite_config
        }
        _ => config,
    };
    let state = StateStore::new(config.state.schema.clone());
    let sessions = Sessions::open(config).await?;
    state.ensure(&sessions.target).await?;
    let phase = state.read_phase(&sessions.target).await?;
    if !matches!(phase, Some(Phase::Catchup | Phase::Stream)) {
        bail!(
            "validation needs a migration that is streaming (phase is {}); wait until `ferry status` shows catchup or stream",
            phase.map_or("none", Phase::as_str)
        );
    }
    let target_partitioned = partitioned_tables(&sessions.target).await?;
    let run = Run {
        config,
        req,
        applier,
        metrics,
        state: &state,
        sessions: &sessions,
        target_partitioned,
    };
    match kind {
        EndpointKind::Postgres => {
            let source = ferry_postgres::source::PgSource::new(config.clone());
            let tables = select(config, source.catalog().await?.tables(), &req.tables)?;
            let client = session::open(&config.source, "source").await?;
            let source_partitioned = partitioned_tables(&client).await?;
            run.tables(&tables, |t| {
                let source = side::Pg {
                    client: &client,
                    shape: Shape::new(&t.schema, &t.schema.id)
                        .partitioned(source_partitioned.contains(&t.schema.id)),
                };
                let target = side::Pg {
                    client: &sessions.target,
                    shape: run.target_shape(&t.schema),
                };
                (
                    Box::new(source) as Box<dyn SourceSide<_>>,
                    Box::new(target) as Box<dyn Side>,
                )
            })
            .await
        }
        EndpointKind::MySql => {
            let source = ferry_mysql::source::MySqlSource::new(config.clone());
            let tables = select(config, source.catalog().await?.tables(), &req.tables)?;
            let reader = tokio::sync::Mutex::new(source.key_reader().await?);
            run.tables(&tables, |t| run.read_sides(&reader, t)).await
        }
        EndpointKind::Sqlite(_) => {
            let source = ferry_sqlite::source::SqliteSource::new(config)?;
            let tables = select(config, source.catalog().await?.tables(), &req.tables)?;
            let reader = tokio::sync::Mutex::new(source.key_reader().await?);
            run.tables(&tables, |t| run.read_sides(&reader, t)).await
        }
    }
}

/// The sides of one table: the source side and the target side.
type Sides<'a, P> = (Box<dyn SourceSide<P> + 'a>, Box<dyn Side + 'a>);

/// One validation's settings and sessions.
struct Run<'a> {
    config: &'a Config,
    req: &'a ValidateRequest,
    applier: &'a dyn PauseSwitch,
    metrics: Option<&'a Metrics>,
    state: &'a StateStore,
    sessions: &'a Sessions,
    /// The target's partitioned tables ([`Shape::partitioned`]).
    target_partitioned: HashSet<TableId>,
}

/// The partitioned tables of one PostgreSQL side: validation reads every
/// other table `ONLY` (see [`Shape::partitioned`]).
async fn partitioned_tables(client: &tokio_postgres::Client) -> anyhow::Result<HashSet<TableId>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'p'",
            &[],
        )
        .await
        .context("reading the partitioned tables")?;
    Ok(rows
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

impl<'a> Run<'a> {
    /// `schema`'s table as validation reads it on the target.
    fn target_shape(&self, schema: &TableSchema) -> Shape {
        let id = self.config.tables.target_name(&schema.id);
        let partitioned = self.target_partitioned.contains(&id);
        Shape::new(schema, &id).partitioned(partitioned)
    }

    /// Validate `tables` one by one, each with the sides `sides` gives;
    /// store and publish each result.
    async fn tables<'s, P: ferry_core::Position>(
        &self,
        tables: &'s [SourceTable],
        sides: impl Fn(&'s SourceTable) -> Sides<'s, P>,
    ) -> anyhow::Result<Vec<TableValidation>>
    where
        'a: 's,
    {
        let mut budget = Budget::new(self.config.validate.rows_per_second);
        let mut results = Vec::new();
        for t in tables {
            let (source, target) = sides(t);
            let v = self
                .one_table(t, source.as_ref(), target.as_ref(), &mut budget)
                .await?;
            store::record(&self.sessions.target, self.state, &v).await?;
            if let Some(m) = self.metrics {
                m.set_validation(
                    &v.table,
                    v.clean,
                    v.differences.len() as u64,
                    v.rows_checked,
                    v.rows_per_second,
                    store::unix_seconds(v.finished_at),
                );
            }
            info!(
                table = %v.table,
                clean = v.clean,
                rows = v.rows_checked,
                ranges = v.ranges,
                differences = v.differences.len(),
                unsettled = v.unsettled.len(),
                repaired = v.repaired,
                rows_per_second = v.rows_per_second.round(),
                "table validated"
            );
            results.push(v);
        }
        Ok(results)
    }

    /// The sides of a table of a source read through a [`KeyReader`]: rows
    /// hashed by ferry on both sides, text keys in byte order.
    fn read_sides<'s, R, P>(
        &self,
        reader: &'s tokio::sync::Mutex<R>,
        t: &'s SourceTable,
    ) -> Sides<'s, P>
    where
        'a: 's,
        R: ferry_core::source::KeyReader<P>,
        P: ferry_core::Position,
    {
        let schema = &t.schema;
        let source = side::Reader {
            reader,
            schema: schema.clone(),
            relation: schema.id.to_string(),
            position: std::marker::PhantomData,
        };
        let target = side::Normalized {
            client: &self.sessions.target,
            shape: self.target_shape(schema).byte_ordered(),
            types: schema.columns.iter().map(|c| c.pg_type.clone()).collect(),
            key_types: schema
                .key
                .iter()
                .map(|&i| schema.columns[i].pg_type.clone())
                .collect(),
        };
        (Box::new(source), Box::new(target))
    }
}

/// The carried tables named in `names` (all when empty); an unknown name
/// is an error listing the carried ones.
fn select(
    config: &Config,
    carried: Vec<SourceTable>,
    names: &[String],
) -> anyhow::Result<Vec<SourceTable>> {
    if names.is_empty() {
        return Ok(carried);
    }
    let mut out = Vec::new();
    for n in names {
        let id = ferry_core::config::parse_table_name(n)
            .or_else(|| (!n.contains('.')).then(|| TableId::new("public", n.as_str())));
        let found = id.and_then(|id| {
            carried
                .iter()
                .find(|t| t.schema.id == id || config.tables.target_name(&t.schema.id) == id)
        });
        match found {
            Some(t) => out.push(t.clone()),
            None => bail!(
                "{n} is not a carried table; carried: {}",
                carried
                    .iter()
                    .map(|t| t.schema.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(out)
}

impl Run<'_> {
    async fn one_table<P: ferry_core::Position>(
        &self,
        t: &SourceTable,
        source: &dyn SourceSide<P>,
        target: &dyn Side,
        budget: &mut Budget,
    ) -> anyhow::Result<TableValidation> {
        let (config, repair) = (self.config, self.req.repair);
        let started_at = SystemTime::now();
        let clock = Instant::now();
        let schema = &t.schema;
        let target_id = config.tables.target_name(&schema.id);
        let mut check = table::TableCheck {
            sessions: self.sessions,
            config: &config.validate,
            source,
            target,
            columns: schema.columns.iter().map(|c| c.name.clone()).collect(),
            budget,
        };
        let mut found = table::Found::default();
        let context = || format!("validating {}", schema.id);
        if !schema.key.is_empty() {
            let candidates = check.scan(&mut found).await.with_context(context)?;
            check
                .confirm(candidates, &mut found)
                .await
                .with_context(context)?;
        } else {
            check.keyless(&mut found).await.with_context(context)?;
        }
        let mut repaired = 0;
        let mut remaining: BTreeSet<Key> = found.differences.keys().cloned().collect();
        if repair && !remaining.is_empty() {
            let keys: Vec<Key> = remaining.iter().cloned().collect();
            let types: Vec<String> = schema.columns.iter().map(|c| c.pg_type.clone()).collect();
            let target_shape = self.target_shape(schema);
            let paused = self.applier.pause().await?;
            let written = repair::repair(
                self.sessions,
                self.state,
                source,
                &target_shape,
                &types,
                &keys,
            )
            .await;
            if paused && let Err(e) = self.applier.resume().await {
                warn!(error = %format!("{e:#}"), "could not resume the applier after the repair; run `ferry resume`");
            }
            written.with_context(context)?;
            // The repaired keys are candidates again: confirmed like any other.
            let mut again = table::Found::default();
            check
                .confirm(keys.iter().cloned().collect(), &mut again)
                .await
                .with_context(context)?;
            remaining = again.differences.keys().cloned().collect();
            remaining.extend(again.unsettled.iter().cloned());
            // A repaired key the application kept changing through every
            // round of the re-check is named like any unsettled key: not
            // repaired, not different, validate again once it is quiet.
            found.unsettled.extend(again.unsettled);
            repaired = keys.iter().filter(|k| !remaining.contains(*k)).count() as u64;
        }
        let finished_at = SystemTime::now();
        let seconds = clock.elapsed().as_secs_f64().max(1e-6);
        let clean = match found.clean_digest {
            Some(c) => c,
            None => remaining.is_empty() && found.unsettled.is_empty(),
        };
        Ok(TableValidation {
            table: schema.id.to_string(),
            target_table: target_id.to_string(),
            key_columns: schema.key_names().map(str::to_owned).collect(),
            started_at,
            finished_at,
            rows_checked: found.rows_checked,
            ranges: found.ranges,
            differences: found.differences.into_values().collect(),
            unsettled: found.unsettled.into_iter().collect(),
            repaired,
            clean,
            rows_per_second: found.rows_checked as f64 / seconds,
            note: found.note,
        })
    }
}

/// One table's result as text lines (for `ferry validate`).
pub fn render(v: &TableValidation) -> String {
    let verdict = if v.clean { "clean" } else { "NOT CLEAN" };
    let mut out = format!(
        "{}: {verdict}; {} rows in {} ranges, {} differences, {} unsettled, {} repaired, {:.1}s, {:.0} rows/s",
        v.table,
        v.rows_checked,
        v.ranges,
        v.differences.len(),
        v.unsettled.len(),
        v.repaired,
        v.duration_seconds(),
        v.rows_per_second
    );
    for d in &v.differences {
        let cols = if d.columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", d.columns.join(", "))
        };
        out.push_str(&format!(
            "\n  key ({}) = ({}): {}{cols}",
            v.key_columns.join(", "),
            d.key.join(", "),
            d.kind
        ));
    }
    for k in &v.unsettled {
        out.push_str(&format!("\n  unsettled ({}): still changing", k.join(", ")));
    }
    if let Some(n) = &v.note {
        out.push_str(&format!("\n  note: {n}"));
    }
    out
}

/// Whether a cutover may proceed under `--require-validated <max_age>`:
/// every carried table's newest validation is clean and recent enough.
pub async fn check_validated(
    target: &tokio_postgres::Client,
    state: &StateStore,
    tables: &[String],
    max_age: Duration,
) -> Result<(), String> {
    let latest = store::latest(target, state)
        .await
        .map_err(|e| format!("{e:#}"))?;
    settle::validated_enough(tables, &latest, SystemTime::now(), max_age)
}
