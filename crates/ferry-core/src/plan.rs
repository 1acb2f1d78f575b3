//! The result of `ferry plan`: prerequisite checks and the table plan.
//!
//! Each source crate and the target crate produce [`Check`]s; the CLI prints
//! them and exits 2 when any check failed. A failed check always carries the
//! fix. The report serialises to JSON for `ferry plan --json`.

use serde::Serialize;

use crate::schema::{TableId, TableSchema};

/// Outcome of one prerequisite check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    /// Runnable, but the operator should know (short binlog retention, …).
    Warn,
    /// Not runnable until fixed.
    Fail,
}

/// One prerequisite, what was found, and how to fix it when it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Which side: `source` or `target`.
    pub side: &'static str,
    /// Short name, e.g. `wal_level`, `binlog_format`, `replication privilege`.
    pub name: String,
    pub status: CheckStatus,
    /// What was found (`wal_level = replica`).
    pub detail: String,
    /// What to do, for `Warn` and `Fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// A failure that may pass by itself (the server was unreachable,
    /// e.g. restarting), not one an operator must fix. Only a run that
    /// already got past the checks once retries on it.
    #[serde(skip)]
    pub transient: bool,
}

impl Check {
    pub fn pass(side: &'static str, name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            side,
            name: name.into(),
            status: CheckStatus::Pass,
            detail: detail.into(),
            fix: None,
            transient: false,
        }
    }

    pub fn warn(
        side: &'static str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            side,
            name: name.into(),
            status: CheckStatus::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
            transient: false,
        }
    }

    pub fn fail(
        side: &'static str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            side,
            name: name.into(),
            status: CheckStatus::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
            transient: false,
        }
    }

    /// Mark a failure as one that may pass by itself (the `transient` field).
    pub fn with_transient(mut self, transient: bool) -> Self {
        self.transient = transient;
        self
    }
}

/// A column as it will be created on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnPlan {
    pub name: String,
    pub source_type: String,
    pub pg_type: String,
    pub nullable: bool,
}

/// One table ferry will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TablePlan {
    /// `schema.table` on the source.
    pub source: String,
    /// `schema.table` on the target.
    pub target: String,
    pub row_estimate: Option<u64>,
    /// Key columns changes are matched on (empty: none).
    pub key: Vec<String>,
    pub replica_identity: String,
    /// Declared in `tables.insert_only`: only inserts (and truncates) are
    /// published and carried.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insert_only: bool,
    pub columns: Vec<ColumnPlan>,
}

impl TablePlan {
    /// The plan row of a table as ferry carries it, under its target name.
    pub fn new(schema: &TableSchema, target: &TableId, row_estimate: Option<u64>) -> Self {
        TablePlan {
            source: schema.id.to_string(),
            target: target.to_string(),
            row_estimate,
            key: schema.key_names().map(str::to_owned).collect(),
            replica_identity: schema.replica_identity.to_string(),
            insert_only: false,
            columns: schema
                .columns
                .iter()
                .map(|c| ColumnPlan {
                    name: c.name.clone(),
                    source_type: c.source_type.clone(),
                    pg_type: c.pg_type.clone(),
                    nullable: c.nullable,
                })
                .collect(),
        }
    }
}

/// Everything `ferry plan` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanReport {
    /// `postgres`, `mysql`, `mariadb` or `sqlite`.
    pub source_flavor: String,
    pub source_version: String,
    pub target_version: String,
    pub checks: Vec<Check>,
    pub tables: Vec<TablePlan>,
}

impl PlanReport {
    /// Whether nothing failed (warnings allowed).
    pub fn runnable(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Fail)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == CheckStatus::Fail)
    }
}

/// What a source's preflight found: its flavour and version, the checks,
/// and the tables it will carry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourcePlan {
    /// `postgres`, `mysql`, `mariadb` or `sqlite`.
    pub flavor: String,
    pub version: String,
    pub checks: Vec<Check>,
    pub tables: Vec<TablePlan>,
}
