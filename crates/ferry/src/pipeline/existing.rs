//! `[target_tables] mode = "existing"`: the run's side of loading into
//! target tables the application created (the matching itself is
//! `ferry_apply::existing`).
//!
//! Every run resolves the [`Mapping`] from the target's catalog after
//! reading the source catalog, and refuses (like `ferry plan`) when a table
//! or column has no match. The resolved target tables become renames
//! ([`with_renames`]) so every stage names them as usual; the load copies
//! into them directly (nothing to rename after post-data, which is empty:
//! the application owns its indexes and keys); the change stream's
//! `Relation`s are rewritten to the target's column names and types
//! ([`Mapping::view`]) before the applier sees them.
//!
//! Before the load (schema stage): target tables that hold rows are
//! refused or truncated (`existing_rows`), and, in the load's
//! no-replica-role way, their foreign keys are dropped and user triggers
//! disabled (recorded; the cutover puts them back and validates the keys):
//! chunks of different tables load in parallel and in no key order.

use anyhow::{Context, bail};
use ferry_apply::existing::{Finding, Mapping, Severity, read_tables, resolve};
use ferry_core::TableId;
use ferry_core::TableSchema;
use ferry_core::config::{Config, ExistingRows};
use ferry_core::plan::Check;
use tokio_postgres::Client;
use tracing::info;

/// The name a source table is looked up under on the target:
/// `tables.rename`, else `target_tables.schema` (or the source's schema)
/// with the source's table name.
pub fn wanted(config: &Config, id: &TableId) -> TableId {
    let renamed = config.tables.target_name(id);
    if &renamed != id {
        return renamed;
    }
    let schema = config
        .target_tables
        .schema
        .clone()
        .unwrap_or_else(|| id.schema.clone());
    TableId::new(schema, id.name.clone())
}

/// Match `tables` against the target's catalog.
pub async fn find(
    config: &Config,
    target: &Client,
    tables: &[TableSchema],
    binary_load: bool,
) -> anyhow::Result<(Mapping, Vec<Finding>)> {
    let mut schemas: Vec<String> = tables
        .iter()
        .map(|t| wanted(config, &t.id).schema)
        .collect();
    schemas.sort();
    schemas.dedup();
    let targets = read_tables(target, &schemas).await?;
    let excluded = |t: &TableId, c: &str| {
        config
            .tables
            .column_override(t, c)
            .is_some_and(|o| o.exclude)
    };
    Ok(resolve(
        tables,
        |id| wanted(config, id),
        excluded,
        &targets,
        binary_load,
    ))
}

/// The mapping for `ferry run`, or the refusals with their fixes.
pub async fn resolve_for_run(
    config: &Config,
    target: &Client,
    tables: &[TableSchema],
    binary_load: bool,
) -> anyhow::Result<Mapping> {
    let (mapping, findings) = find(config, target, tables, binary_load).await?;
    let refused: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Refuse)
        .map(|f| {
            format!(
                "  {}: {}\n       fix: {}",
                f.table,
                f.detail,
                f.fix.as_deref().unwrap_or("see `ferry plan`")
            )
        })
        .collect();
    if !refused.is_empty() {
        bail!(
            "the existing target tables (target_tables.mode = \"existing\") cannot take the source tables:\n{}\nnothing was written; fix the above and check with `ferry plan`",
            refused.join("\n")
        );
    }
    for (s, t) in mapping.targets() {
        info!(source = %s, target = %t, "existing target table");
    }
    Ok(mapping)
}

/// `config` with every mapped table renamed to its target table.
pub fn with_renames(config: &Config, mapping: &Mapping) -> Config {
    let mut out = config.clone();
    let mapped: Vec<(&TableId, &TableId)> = mapping.targets().collect();
    out.tables.rename.retain(|from, _| {
        ferry_core::config::parse_table_name(from)
            .is_none_or(|f| !mapped.iter().any(|(s, _)| **s == f))
    });
    for (s, t) in mapped {
        out.tables.rename.insert(s.to_string(), t.to_string());
    }
    out
}

/// `ferry plan`'s checks for the findings: one per refusal and warning,
/// one summary of the notes per table.
pub fn checks(findings: &[Finding]) -> Vec<Check> {
    let mut out = Vec::new();
    let mut notes: std::collections::BTreeMap<&TableId, Vec<&str>> = Default::default();
    for f in findings {
        let name = format!("existing table for {}", f.table);
        let fix = f.fix.clone().unwrap_or_default();
        match f.severity {
            Severity::Refuse => out.push(Check::fail("target", name, f.detail.clone(), fix)),
            Severity::Warn => out.push(Check::warn("target", name, f.detail.clone(), fix)),
            Severity::Note => notes.entry(&f.table).or_default().push(&f.detail),
        }
    }
    for (t, n) in notes {
        out.push(Check::pass(
            "target",
            format!("existing table for {t}"),
            n.join("; "),
        ));
    }
    out
}

/// `ferry plan` before a migration starts: the target tables that hold
/// rows, refused or to be emptied (`existing_rows`).
pub async fn rows_check(config: &Config, target: &Client, tables: &[TableId]) -> Option<Check> {
    let full = match non_empty(target, tables).await {
        Ok(f) => f,
        Err(e) => {
            return Some(Check::fail(
                "target",
                "existing rows",
                format!("{e:#}"),
                "check that the target role may read the target tables",
            ));
        }
    };
    if full.is_empty() {
        return None;
    }
    let names: Vec<String> = full.iter().map(|t| t.quoted()).collect();
    let shown: Vec<String> = full.iter().map(|t| t.to_string()).collect();
    let detail = format!("target tables {} are not empty", shown.join(", "));
    Some(match config.target_tables.existing_rows {
        ExistingRows::Refuse => Check::fail(
            "target",
            "existing rows",
            detail,
            format!(
                "empty them (TRUNCATE {}) or set target_tables.existing_rows = \"truncate\" to let ferry empty them before the load",
                names.join(", ")
            ),
        ),
        ExistingRows::Truncate => Check::warn(
            "target",
            "existing rows",
            format!("{detail}: ferry empties them before the load (existing_rows = \"truncate\")"),
            "nothing to do if their rows may go",
        ),
    })
}

async fn non_empty<'a>(target: &Client, tables: &'a [TableId]) -> anyhow::Result<Vec<&'a TableId>> {
    let mut full = Vec::new();
    let names: Vec<String> = tables.iter().map(TableId::quoted).collect();
    let own = ferry_apply::truncate::own_rows(target, &names)
        .await
        .context("reading which target tables are partitioned")?;
    for (t, own) in tables.iter().zip(own) {
        // A parent's own rows: its inheritance children are checked as
        // tables of their own.
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {own})");
        if target.query_one(&sql, &[]).await?.get::<_, bool>(0) {
            full.push(t);
        }
    }
    Ok(full)
}

/// Schema stage, inside its transaction: refuse or empty target tables
/// that hold rows.
pub async fn prepare_tables(
    config: &Config,
    target: &Client,
    tables: &[TableId],
) -> anyhow::Result<()> {
    let full = non_empty(target, tables).await?;
    if full.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = full.iter().map(|t| t.quoted()).collect();
    match config.target_tables.existing_rows {
        ExistingRows::Refuse => bail!(
            "target tables {} are not empty; nothing was written. Empty them (TRUNCATE {}) or set target_tables.existing_rows = \"truncate\" to let ferry empty them before the load",
            names.join(", "),
            names.join(", ")
        ),
        ExistingRows::Truncate => {
            // All carried tables at once: foreign keys between them allow
            // no other order.
            let all: Vec<String> = tables.iter().map(TableId::quoted).collect();
            let empty = ferry_apply::truncate::empty_sql(target, &all)
                .await
                .context("reading which target tables are partitioned")?;
            target.batch_execute(&empty).await.with_context(|| {
                format!(
                    "emptying the target tables (existing_rows = \"truncate\"): {}",
                    names.join(", ")
                )
            })?;
            info!(tables = %names.join(", "), "emptied existing target tables (existing_rows = truncate)");
            Ok(())
        }
    }
}
