//! The settings of each source kind: `[postgres]`, `[mysql]` (with its
//! type policies) and `[sqlite]`.

use std::fmt;

use serde::Deserialize;

/// PostgreSQL-source settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSourceConfig {
    pub slot: String,
    /// `slot` was created beforehand (e.g. by a DBA): ferry advances it to
    /// its load snapshot instead of creating it, and never drops it.
    pub existing_slot: bool,
    pub publication: String,
    /// pgoutput protocol version (1, or 2 for streaming of large transactions).
    pub proto_version: u32,
    /// Carry schema changes: ferry installs event triggers on the source
    /// that write each DDL command into the WAL (see `ferry plan`; needs
    /// superuser, on RDS/Aurora `rds_superuser`, and PostgreSQL 14+).
    pub capture_ddl: bool,
}

impl Default for PostgresSourceConfig {
    fn default() -> Self {
        PostgresSourceConfig {
            slot: "ferry".into(),
            existing_slot: false,
            publication: "ferry".into(),
            proto_version: 2,
            capture_ddl: false,
        }
    }
}

/// MySQL/MariaDB-source settings. The type policies apply to every column
/// of their kind (per-column type overrides belong to the tables section,
/// not here).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MySqlSourceConfig {
    /// server_id ferry uses as a replica; must be unique among replicas.
    pub server_id: u32,
    /// Zero and partial dates (`0000-00-00`, `2024-00-10`).
    pub zero_dates: ZeroDates,
    /// What `tinyint(1)` becomes on the target.
    pub tinyint1: Tinyint1,
    /// What `enum(...)` becomes on the target.
    #[serde(rename = "enum")]
    pub enums: EnumPolicy,
    /// How the full load reads the source (`auto`, `consistent`,
    /// `watermark`).
    pub snapshot: SnapshotMethod,
    // Per-column type overrides plug in at the generic `tables` column
    // overrides (another section), not here.
}

impl Default for MySqlSourceConfig {
    fn default() -> Self {
        MySqlSourceConfig {
            server_id: 8_470_001,
            zero_dates: ZeroDates::default(),
            tinyint1: Tinyint1::default(),
            enums: EnumPolicy::default(),
            snapshot: SnapshotMethod::default(),
        }
    }
}

/// `mysql.snapshot`: how the full load reads a MySQL/MariaDB source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMethod {
    /// `watermark` on MySQL (no consistent snapshot with an exact binlog
    /// position without a global lock), `consistent` on MariaDB.
    #[default]
    Auto,
    /// One `START TRANSACTION WITH CONSISTENT SNAPSHOT` session whose
    /// binlog position MariaDB reports (`binlog_snapshot_*`); MariaDB only.
    Consistent,
    /// Chunks read in short transactions of their own, in parallel, after
    /// a low watermark the change stream replays from (every table needs
    /// a primary key).
    Watermark,
}

/// `mysql.zero_dates`: what a zero or partial date becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroDates {
    /// NULL, counted per column and reported.
    #[default]
    Null,
    /// Stop with an error naming table, key and column.
    Error,
}

/// `mysql.tinyint1`: the target type of `tinyint(1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tinyint1 {
    /// `boolean` (values other than 0 and 1 stop the run, never coerced).
    #[default]
    Boolean,
    /// `smallint`: every value kept.
    Smallint,
}

/// `mysql.enum`: the target type of `enum(...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnumPolicy {
    /// `text` with a CHECK constraint listing the labels (and `''`, MySQL's
    /// value for an invalid one).
    #[default]
    Text,
    /// A PostgreSQL enum type per column, `<table>_<column>` in the
    /// table's schema.
    Type,
}

/// SQLite-source settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteSourceConfig {
    /// What to do with a column whose sampled values do not all fit the
    /// type its declaration calls for (`tables.columns` may say otherwise
    /// per column).
    pub misfits: MisfitPolicy,
}

/// A column whose values do not all fit its type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MisfitPolicy {
    /// Give the column a type that holds every sampled value (e.g. `text`
    /// for integers mixed with strings): nothing is lost (the default).
    #[default]
    Widen,
    /// Refuse (`ferry plan` fails, naming the rows).
    Fail,
    /// Keep the type; values that do not fit it become NULL.
    Null,
}

impl fmt::Display for MisfitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MisfitPolicy::Widen => "widen",
            MisfitPolicy::Fail => "fail",
            MisfitPolicy::Null => "null",
        })
    }
}
