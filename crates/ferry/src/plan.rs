//! `ferry plan`: connect to source and target, check every prerequisite,
//! print the tables and the type mapping. Nothing is changed on either side.
//!
//! A server that cannot be reached is reported as a failed check (with the
//! error), like any other prerequisite, so the operator sees everything that
//! is wrong in one run.

use std::fmt::Write as _;

use ferry_apply::state::{Phase, StateStore};
use ferry_core::config::{Config, EndpointKind, parse_table_name};
use ferry_core::plan::{Check, CheckStatus, PlanReport, SourcePlan, TablePlan};
use ferry_core::schema::Column;
use ferry_core::{ReplicaIdentity, TableId, TableSchema};
use ferry_postgres::catalog::SharedCatalog;
use ferry_postgres::preflight::SlotOwnership;

use crate::Outcome;

pub async fn run(config: &Config, json: bool) -> anyhow::Result<Outcome> {
    let report = build(config).await;
    if json {
        #[allow(clippy::print_stdout)]
        {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    } else {
        #[allow(clippy::print_stdout)]
        {
            print!("{}", render(&report));
        }
    }
    Ok(if report.runnable() {
        Outcome::Ok
    } else {
        Outcome::Refused
    })
}

/// Check the target, then the source (whose slot check depends on what the
/// target's state records), then the target against the planned tables.
pub async fn build(config: &Config) -> PlanReport {
    build_for(config, Purpose::Plan, None).await
}

/// Who asks for the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// `ferry plan`: every check.
    Plan,
    /// `ferry run` before it starts: a resumed SQLite migration skips the
    /// file's `quick_check` ([`ferry_sqlite::preflight::Checking::Resume`]).
    Run,
}

async fn build_for(config: &Config, purpose: Purpose, shared: Option<SharedCatalog>) -> PlanReport {
    let state = StateStore::new(config.state.schema.clone());
    let target = ferry_postgres::connect::connect(&config.target, "target").await;
    let ownership = match &target {
        Ok(client) => match state.phase_if_present(client).await {
            Ok(Some(Phase::Schema)) => SlotOwnership::Interrupted,
            Ok(Some(phase)) if phase > Phase::Schema => SlotOwnership::Resuming,
            Err(e) if e.is_transient() => SlotOwnership::Unknown,
            _ => SlotOwnership::Fresh,
        },
        // Restarting, perhaps: a run may be recorded there.
        Err(e) if e.is_transient() => SlotOwnership::Unknown,
        Err(_) => SlotOwnership::Fresh,
    };
    let source = source_plan(config, ownership, purpose, shared).await;
    let mut report = PlanReport {
        source_flavor: source.flavor,
        source_version: source.version,
        target_version: String::new(),
        checks: source.checks,
        tables: source.tables,
    };
    match target {
        Ok(client) => {
            // Existing target tables may hold rows: checked by their mode.
            let tables: Vec<TableId> = match config.target_tables.existing() {
                true => Vec::new(),
                false => report
                    .tables
                    .iter()
                    .filter_map(|t| parse_table_name(&t.target))
                    .collect(),
            };
            report
                .checks
                .extend(ferry_apply::preflight::check_target(&client, &state, &tables).await);
            report.checks.push(fallback_check(config, &client).await);
            if config.target_tables.existing() {
                let fresh = matches!(ownership, SlotOwnership::Fresh | SlotOwnership::Interrupted);
                existing_tables(config, &client, &mut report, fresh).await;
            }
            report.target_version = client
                .query_one("SELECT current_setting('server_version')", &[])
                .await
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_default();
        }
        Err(e) => report.checks.push(
            Check::fail(
                "target",
                "connect",
                e.to_string(),
                "make the target reachable with the credentials in target.url",
            )
            .with_transient(e.is_transient()),
        ),
    }
    report
}

/// Whether `ferry cutover --with-fallback` can keep a way back: a
/// PostgreSQL source and a target that allows logical replication. Only a
/// warning: a cutover without fallback does not need it.
async fn fallback_check(config: &Config, client: &tokio_postgres::Client) -> Check {
    const NAME: &str = "fallback";
    if let Some(why) = crate::pipeline::fallback::unavailable(config) {
        return Check::warn(
            "target",
            NAME,
            why,
            "cut over without --with-fallback; a way back needs a PostgreSQL source",
        );
    }
    match ferry_postgres::fallback::logical_replication_problem(client).await {
        Ok(None) => Check::pass(
            "target",
            NAME,
            "cutover --with-fallback can stream the target back into the old source",
        ),
        Ok(Some(why)) => Check::warn(
            "target",
            NAME,
            format!("cutover --with-fallback is not available: {why}"),
            "only needed for --with-fallback: see the detail",
        ),
        Err(e) => Check::warn(
            "target",
            NAME,
            format!("could not check whether the target allows logical replication: {e}"),
            "only needed for --with-fallback",
        ),
    }
}

/// `[target_tables] mode = "existing"`: match the planned tables against
/// the target's tables (as `ferry run` will) and report every finding; the
/// table rows show the matched target tables. Before a migration started
/// (`fresh`), target tables that hold rows are refused or to be emptied
/// (`existing_rows`).
async fn existing_tables(
    config: &Config,
    client: &tokio_postgres::Client,
    report: &mut PlanReport,
    fresh: bool,
) {
    let named;
    let config = match config.source.kind() {
        Ok(EndpointKind::Sqlite(_)) => {
            match ferry_sqlite::source::with_target_names(config).await {
                Ok(c) => {
                    named = c;
                    &named
                }
                Err(_) => config,
            }
        }
        _ => config,
    };
    let schemas: Vec<TableSchema> = report.tables.iter().filter_map(plan_schema).collect();
    let binary = config.source.kind().ok() == Some(EndpointKind::Postgres);
    match crate::pipeline::existing::find(config, client, &schemas, binary).await {
        Ok((mapping, findings)) => {
            for t in &mut report.tables {
                let target = parse_table_name(&t.source)
                    .and_then(|s| mapping.table(&s).map(|m| m.target.to_string()));
                if let Some(target) = target {
                    t.target = target;
                }
            }
            report
                .checks
                .extend(crate::pipeline::existing::checks(&findings));
            if fresh {
                let targets: Vec<TableId> = mapping.targets().map(|(_, t)| t.clone()).collect();
                report
                    .checks
                    .extend(crate::pipeline::existing::rows_check(config, client, &targets).await);
            }
        }
        Err(e) => report.checks.push(Check::fail(
            "target",
            "existing tables",
            format!("{e:#}"),
            "check that the target role may read the catalog of the target schema",
        )),
    }
}

/// The source table a plan row describes (names, types, key).
fn plan_schema(t: &TablePlan) -> Option<TableSchema> {
    let columns: Vec<Column> = t
        .columns
        .iter()
        .map(|c| Column {
            name: c.name.clone(),
            source_type: c.source_type.clone(),
            pg_type: c.pg_type.clone(),
            type_oid: None,
            nullable: c.nullable,
        })
        .collect();
    let key = t
        .key
        .iter()
        .filter_map(|k| columns.iter().position(|c| &c.name == k))
        .collect();
    Some(TableSchema {
        id: parse_table_name(&t.source)?,
        columns,
        key,
        replica_identity: ReplicaIdentity::Default,
    })
}

async fn source_plan(
    config: &Config,
    ownership: SlotOwnership,
    purpose: Purpose,
    shared: Option<SharedCatalog>,
) -> SourcePlan {
    let kind = match config.source.kind() {
        Ok(k) => k,
        Err(e) => return unreachable_source("unknown", format!("source.url {e}"), false),
    };
    match kind {
        EndpointKind::Postgres => {
            ferry_postgres::preflight::check_source_sharing(config, ownership, shared).await
        }
        EndpointKind::MySql => ferry_mysql::preflight::plan(config)
            .await
            .unwrap_or_else(|e| unreachable_source("mysql", e.to_string(), e.is_transient())),
        EndpointKind::Sqlite(_) => {
            let checking = match (purpose, ownership) {
                (Purpose::Run, SlotOwnership::Resuming) => {
                    ferry_sqlite::preflight::Checking::Resume
                }
                _ => ferry_sqlite::preflight::Checking::Full,
            };
            ferry_sqlite::preflight::plan_with(config, checking)
                .await
                .unwrap_or_else(|e| unreachable_source("sqlite", e.to_string(), e.is_transient()))
        }
    }
}

/// Why `ferry run` must not start: the failed checks, said with their
/// fixes, and whether they may pass by themselves.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Every failure with its fix, for the log.
    pub message: String,
    /// What the failed checks found, on one line.
    pub found: String,
    /// Every failure is one that may pass by itself (a server that was
    /// unreachable, e.g. restarting), none an operator must fix.
    pub transient: bool,
}

/// Why `ferry run` must not start, if it must not: it refuses exactly what
/// `ferry plan` refuses (the same checks), before it creates anything on the
/// source, and says every failure with its fix.
pub async fn refusal(config: &Config) -> Option<Refused> {
    refusal_sharing(config, None).await
}

/// [`refusal`] for a PostgreSQL source whose catalog read is `shared` with
/// the pipeline's ([`ferry_postgres::source::PgSource::share_catalog`]).
pub async fn refusal_sharing(config: &Config, shared: Option<SharedCatalog>) -> Option<Refused> {
    let report = build_for(config, Purpose::Run, shared).await;
    if report.runnable() {
        return None;
    }
    let failures: Vec<String> = report
        .failures()
        .map(|c| {
            let fix = c.fix.as_deref().unwrap_or("see `ferry plan`");
            format!(
                "  FAIL {} {}: {}\n       fix: {fix}",
                c.side, c.name, c.detail
            )
        })
        .collect();
    Some(Refused {
        message: format!(
            "ferry run refuses to start: {} prerequisite(s) failed (the checks of `ferry plan`); nothing was created on the source:\n{}\napply the fixes above and check with `ferry plan`",
            failures.len(),
            failures.join("\n")
        ),
        found: report
            .failures()
            .map(|c| format!("{} {}: {}", c.side, c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; "),
        transient: report.failures().all(|c| c.transient),
    })
}

fn unreachable_source(flavor: &str, detail: String, transient: bool) -> SourcePlan {
    SourcePlan {
        flavor: flavor.to_owned(),
        version: String::new(),
        checks: vec![
            Check::fail(
                "source",
                "connect",
                detail,
                "make the source reachable with the credentials in source.url",
            )
            .with_transient(transient),
        ],
        tables: Vec::new(),
    }
}

/// The human-readable plan.
pub fn render(report: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "source: {} {}    target: PostgreSQL {}",
        report.source_flavor,
        or_unknown(&report.source_version),
        or_unknown(&report.target_version)
    );
    let _ = writeln!(out, "\nchecks");
    let name_width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &report.checks {
        let status = match c.status {
            CheckStatus::Pass => "ok  ",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        };
        let _ = writeln!(
            out,
            "  {status}  {:<6}  {:<name_width$}  {}",
            c.side, c.name, c.detail
        );
        if let (Some(fix), true) = (&c.fix, c.status != CheckStatus::Pass) {
            let _ = writeln!(out, "        {:<6}  {:<name_width$}  fix: {fix}", "", "");
        }
    }
    render_tables(&mut out, report);
    let failed = report.failures().count();
    if failed == 0 {
        let _ = writeln!(out, "\nplan: runnable ({} tables)", report.tables.len());
    } else {
        let _ = writeln!(
            out,
            "\nplan: NOT runnable: {failed} prerequisite(s) failed; apply the fixes above and run `ferry plan` again"
        );
    }
    out
}

fn render_tables(out: &mut String, report: &PlanReport) {
    let _ = writeln!(out, "\ntables ({})", report.tables.len());
    let w = report
        .tables
        .iter()
        .map(|t| t.source.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "  {:<w$}  {:>12}  {:<24}  target",
        "table", "rows (est.)", "key"
    );
    for t in &report.tables {
        let rows = t
            .row_estimate
            .map_or_else(|| "?".to_owned(), |r| r.to_string());
        let mut key = if t.key.is_empty() {
            format!("(none; identity {})", t.replica_identity)
        } else {
            t.key.join(", ")
        };
        if t.insert_only {
            key.push_str(" [insert-only]");
        }
        let _ = writeln!(
            out,
            "  {:<w$}  {rows:>12}  {key:<24}  {}",
            t.source, t.target
        );
    }
    let _ = writeln!(out, "\ncolumn types (source → target)");
    for t in &report.tables {
        let _ = writeln!(out, "  {}", t.source);
        let cw = t.columns.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &t.columns {
            let null = if c.nullable { "" } else { " not null" };
            let _ = writeln!(
                out,
                "    {:<cw$}  {} → {}{null}",
                c.name, c.source_type, c.pg_type
            );
        }
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "(unknown)" } else { s }
}
