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
//! normalized row text it hashes), [`session`] (snapshots, the applied
//! checkpoint wait), [`table`] (scan, narrow, confirm of one table),
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
//! Sources: PostgreSQL. MySQL/MariaDB and SQLite sources are refused with
//! a message until their digests (ferry-side hashing over the type
//! mapping's normalized values) exist.

pub mod background;
mod digest;
mod repair;
mod session;
pub mod settle;
pub mod store;
mod table;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use ferry_apply::state::StateStore;
use ferry_core::TableId;
use ferry_core::config::{Config, EndpointKind};
use ferry_core::source::{BoxFuture, Catalog, Source, SourceTable};
use ferry_monitor::{Metrics, Phase, TableValidation};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::digest::Shape;
use self::session::Sessions;
use self::settle::Key;

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
    match config.source.kind().map_err(anyhow::Error::msg)? {
        EndpointKind::Postgres => {}
        other => bail!(
            "ferry validate reads PostgreSQL sources; this source is {other:?} (MySQL/MariaDB and SQLite digests are not built yet)"
        ),
    }
    let state = StateStore::new(config.state.schema.clone());
    let target = ferry_postgres::connect::connect(&config.target, "target").await?;
    state.ensure(&target).await?;
    let phase = state.read_phase(&target).await?;
    if !matches!(phase, Some(Phase::Catchup | Phase::Stream)) {
        bail!(
            "validation needs a migration that is streaming (phase is {}); wait until `ferry status` shows catchup or stream",
            phase.map_or("none", Phase::as_str)
        );
    }
    let source = ferry_postgres::source::PgSource::new(config.clone());
    let tables = select(config, source.catalog().await?.tables(), &req.tables)?;
    let sessions = Sessions::open(config).await?;
    let mut budget = Budget::new(config.validate.rows_per_second);
    let mut results = Vec::new();
    for t in &tables {
        let v = one_table(
            config,
            &sessions,
            &state,
            t,
            req.repair,
            applier,
            &mut budget,
        )
        .await?;
        store::record(&target, &state, &v).await?;
        if let Some(m) = metrics {
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

async fn one_table(
    config: &Config,
    sessions: &Sessions,
    state: &StateStore,
    t: &SourceTable,
    repair: bool,
    applier: &dyn PauseSwitch,
    budget: &mut Budget,
) -> anyhow::Result<TableValidation> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let schema = &t.schema;
    let target_id = config.tables.target_name(&schema.id);
    let mut check = table::TableCheck {
        sessions,
        config: &config.validate,
        source: Shape::new(schema, &schema.id),
        target: Shape::new(schema, &target_id),
        budget,
    };
    let mut found = table::Found::default();
    let context = || format!("validating {}", schema.id);
    if check.source.has_key() {
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
        let paused = applier.pause().await?;
        let written =
            repair::repair(sessions, state, &check.source, &check.target, &types, &keys).await;
        if paused && let Err(e) = applier.resume().await {
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
