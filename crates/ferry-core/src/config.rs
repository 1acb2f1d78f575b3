//! `ferry.toml`, environment overrides and validation.
//!
//! Loading is three pure steps: parse the TOML text, overlay `FERRY_*`
//! environment variables (`FERRY_SOURCE_URL` → `source.url`,
//! `FERRY_APPLY_BATCH_ROWS` → `apply.batch_rows`, …), deserialize into plain
//! serde types with `deny_unknown_fields`. [`Config::validate`] then checks
//! everything that can be checked without connecting and reports every
//! problem at once. Nothing here does I/O except [`Config::load`] reading the
//! file it is given.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use globset::{GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::schema::TableId;
use crate::secret::{RedactedUrl, Secret};

mod proxy;
mod sources;

pub use proxy::ProxyConfig;

pub use sources::{
    EnumPolicy, MisfitPolicy, MySqlSourceConfig, PostgresSourceConfig, SnapshotMethod,
    SqliteSourceConfig, Tinyint1, ZeroDates,
};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: Endpoint,
    pub target: Endpoint,
    #[serde(default)]
    pub tables: TablesConfig,
    #[serde(default)]
    pub target_tables: TargetTablesConfig,
    #[serde(default)]
    pub load: LoadConfig,
    #[serde(default)]
    pub apply: ApplyConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub postgres: PostgresSourceConfig,
    #[serde(default)]
    pub mysql: MySqlSourceConfig,
    #[serde(default)]
    pub validate: ValidateConfig,
    #[serde(default)]
    pub sqlite: SqliteSourceConfig,
    /// Which way changes flow: set by ferry, never read from the file
    /// (after a cutover with fallback, `ferry run` streams the new
    /// database back into the old source with a reversed config).
    #[serde(skip)]
    pub direction: Direction,
    #[serde(default)]
    pub proxy: ProxyConfig,
}

/// Which way a run carries changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Direction {
    /// Source → target: the migration.
    #[default]
    Forward,
    /// Target → old source, after a cutover with fallback: the source
    /// endpoint is the new database, the target endpoint the old source.
    Reverse,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

/// A database to connect to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `postgres://…`, `mysql://…` (MariaDB too), `sqlite:///abs.db` or `sqlite:rel.db`.
    pub url: RedactedUrl,
    /// TLS mode; defaults to `prefer` for network sources.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// PEM file with the CA certificate(s) to trust (e.g. the RDS/Aurora bundle).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
}

/// libpq's TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn verifies_certificate(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// The kind of database behind a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointKind {
    Postgres,
    MySql,
    /// Path of the SQLite file.
    Sqlite(PathBuf),
}

impl EndpointKind {
    /// The source kind of positions read from this kind of database.
    pub fn source_kind(&self) -> crate::position::SourceKind {
        match self {
            EndpointKind::Postgres => crate::position::SourceKind::Postgres,
            EndpointKind::MySql => crate::position::SourceKind::MySql,
            EndpointKind::Sqlite(_) => crate::position::SourceKind::Sqlite,
        }
    }
}

impl Endpoint {
    /// What the URL points at, or why it is not usable.
    pub fn kind(&self) -> Result<EndpointKind, String> {
        let raw = self.url.expose();
        match self.url.scheme().as_str() {
            "postgres" | "postgresql" => Ok(EndpointKind::Postgres),
            "mysql" | "mariadb" => Ok(EndpointKind::MySql),
            "sqlite" => {
                let rest = &raw["sqlite:".len()..];
                let path = match rest.strip_prefix("//") {
                    Some(abs) if abs.starts_with('/') => abs,
                    Some(_) => {
                        return Err(
                            "sqlite URLs are sqlite:///abs/path.db or sqlite:rel/path.db".into(),
                        );
                    }
                    None => rest,
                };
                let path = path.split(['?', '#']).next().unwrap_or_default();
                if path.is_empty() {
                    return Err("sqlite URL has no file path".into());
                }
                Ok(EndpointKind::Sqlite(PathBuf::from(path)))
            }
            "" => Err("is not a URL (expected postgres://, mysql:// or sqlite:)".into()),
            other => Err(format!(
                "has unsupported scheme '{other}' (expected postgres, mysql or sqlite)"
            )),
        }
    }

    /// The TLS mode in force: the explicit setting, else `sslmode` in the URL
    /// query, else `prefer`.
    pub fn effective_sslmode(&self) -> SslMode {
        self.sslmode
            .or_else(|| self.url_param("sslmode").and_then(|m| SslMode::parse(&m)))
            .unwrap_or(SslMode::Prefer)
    }

    /// The root certificate path in force (setting, else URL `sslrootcert`).
    pub fn effective_sslrootcert(&self) -> Option<PathBuf> {
        self.sslrootcert
            .clone()
            .or_else(|| self.url_param("sslrootcert").map(PathBuf::from))
    }

    fn url_param(&self, name: &str) -> Option<String> {
        let url = self.url.parsed().ok()?;
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Which tables to carry and what to call them on the target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    /// Globs over `schema.table`; default everything.
    #[serde(default = "default_include")]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `"src_schema.table" = "dst_schema.table"`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Globs over `schema.table`: tables the application only ever inserts
    /// into. They are published for inserts (and truncates) alone, in their
    /// own publication, so a keyless table without a replica identity stays
    /// writable on the source; their updates and deletes are not carried.
    #[serde(default)]
    pub insert_only: Vec<String>,
    /// `"schema.table.column" = { type = "…", on_misfit = "…" }`: per-column
    /// type overrides and misfit policies.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnOverride>,
}

fn default_include() -> Vec<String> {
    vec!["*.*".into()]
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            include: default_include(),
            exclude: Vec::new(),
            rename: BTreeMap::new(),
            insert_only: Vec::new(),
            columns: BTreeMap::new(),
        }
    }
}

impl TablesConfig {
    /// A compiled filter; `validate()` has already checked the globs.
    pub fn filter(&self) -> Result<TableFilter, String> {
        Ok(TableFilter {
            include: build_globs(&self.include)?,
            exclude: build_globs(&self.exclude)?,
            insert_only: build_globs(&self.insert_only)?,
        })
    }

    /// The override of `column` of `table` in `tables.columns`, if any.
    pub fn column_override(&self, table: &TableId, column: &str) -> Option<&ColumnOverride> {
        self.columns.iter().find_map(|(k, o)| {
            let (t, c) = crate::schema::parse_column(k)?;
            (&t == table && c == column).then_some(o)
        })
    }

    /// The target name of a source table.
    pub fn target_name(&self, source: &TableId) -> TableId {
        self.rename
            .iter()
            .find(|(from, _)| parse_table_name(from).as_ref() == Some(source))
            .and_then(|(_, to)| parse_table_name(to))
            .unwrap_or_else(|| source.clone())
    }
}

fn build_globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("table glob '{p}' is invalid: {e}"))?;
        b.add(glob);
    }
    b.build().map_err(|e| e.to_string())
}

/// Parse `schema.table`; a part with a dot, a quote or any spelling that
/// must be kept is double-quoted (`"Sales"."Order Items"`,
/// `public."v1.2_data"`). The same form ferry writes ([`TableId::parse`]).
pub fn parse_table_name(s: &str) -> Option<TableId> {
    TableId::parse(s)
}

/// Include/exclude globs over `schema.table`.
#[derive(Debug, Clone)]
pub struct TableFilter {
    include: GlobSet,
    exclude: GlobSet,
    insert_only: GlobSet,
}

impl TableFilter {
    /// Globs match the raw `schema.table` or the quoted text form
    /// (`Sales.Order Items` or `"Sales"."Order Items"`).
    pub fn matches(&self, t: &TableId) -> bool {
        let names = [format!("{}.{}", t.schema, t.name), t.to_string()];
        names.iter().any(|n| self.include.is_match(n))
            && !names.iter().any(|n| self.exclude.is_match(n))
    }

    /// Whether `tables.insert_only` declares `t` insert-only.
    pub fn insert_only(&self, t: &TableId) -> bool {
        self.insert_only
            .is_match(format!("{}.{}", t.schema, t.name))
    }
}

/// Whether ferry creates the target tables or loads into tables the
/// application's own migrations created (`[target_tables]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetTablesConfig {
    pub mode: SchemaMode,
    /// `existing` mode: what to do with a target table that holds rows.
    pub existing_rows: ExistingRows,
    /// `existing` mode: the target schema the tables are looked up in
    /// (default: the source table's schema; `tables.rename` wins).
    pub schema: Option<String>,
}

/// Who creates the target tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchemaMode {
    /// ferry creates them from the source's schema (the default).
    #[default]
    Create,
    /// They exist already: matched by name, values converted to their types.
    Existing,
}

/// `existing` mode: a target table that is not empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExistingRows {
    /// Stop before anything is written, naming the tables (the default).
    #[default]
    Refuse,
    /// Empty them (in the schema transaction, before the load).
    Truncate,
}

impl TargetTablesConfig {
    pub fn existing(&self) -> bool {
        self.mode == SchemaMode::Existing
    }
}

/// Full-load knobs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Tables/chunks copied at once. Default: number of CPUs, at least 2.
    pub parallelism: Option<usize>,
    /// Tables larger than this many rows (estimate) are split into chunks
    /// of this many rows. Unset: [`DEFAULT_CHUNK_ROWS`], and a source that
    /// reads a chunk slower than a whole table (PostgreSQL) splits only the
    /// tables the workers need split ([`LoadConfig::split_for`]).
    pub chunk_rows: Option<u64>,
    /// Index builds run at once after the load.
    pub index_parallelism: Option<usize>,
}

/// `load.chunk_rows` when unset.
pub const DEFAULT_CHUNK_ROWS: u64 = 500_000;

impl LoadConfig {
    /// Rows of one chunk of a split table.
    pub fn chunk_rows(&self) -> u64 {
        self.chunk_rows.unwrap_or(DEFAULT_CHUNK_ROWS)
    }

    /// `Some(workers)`: split only the tables over their share of the load
    /// at `workers` copies at once (`load.chunk_rows` unset); `None`: split
    /// every table over `load.chunk_rows` rows, as configured.
    pub fn split_for(&self) -> Option<usize> {
        match self.chunk_rows {
            None => Some(self.effective_parallelism()),
            Some(_) => None,
        }
    }

    pub fn effective_parallelism(&self) -> usize {
        self.parallelism.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2)
                .max(2)
        })
    }
}

/// CDC batching knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyConfig {
    /// A batch closes after this many row changes (at a transaction boundary).
    pub batch_rows: usize,
    /// …or this many milliseconds after its first change.
    pub batch_ms: u64,
    /// Memory budget, in bytes of row data, of all change buffers together
    /// (see [`ApplyConfig::buffer_share`]).
    pub max_buffered_bytes: usize,
}

impl ApplyConfig {
    /// The share of `max_buffered_bytes` each of the four buffers on the
    /// change path may hold: the reader's channel, the in-memory part of
    /// the streamed (protocol v2) transactions (all together), the
    /// applier's intake queue, and its open source transaction plus batch.
    pub fn buffer_share(&self) -> usize {
        (self.max_buffered_bytes / 4).max(1)
    }
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            batch_rows: 20_000,
            batch_ms: 200,
            max_buffered_bytes: 256 << 20,
        }
    }
}

/// The control API of a running `ferry run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub listen: String,
    /// Optional bearer token required by the API.
    pub token: Option<Secret>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: "127.0.0.1:7433".into(),
            token: None,
        }
    }
}

/// The psql admin console of a running `ferry run` (PostgreSQL wire).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Where to listen; unset means [`ConsoleConfig::DEFAULT_LISTEN`], and
    /// then a port already in use only turns the console off (with a
    /// warning) instead of stopping the run. `off` disables it.
    pub listen: Option<String>,
    /// The user name clients log in with (SCRAM-SHA-256).
    pub user: String,
    /// The password; unset means `control.token`; neither means no
    /// authentication, which only a loopback address allows.
    pub password: Option<Secret>,
    /// PEM certificate chain and private key: TLS when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl ConsoleConfig {
    /// The console's address when `console.listen` is not set.
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:7434";

    /// The address to listen on, and whether the operator chose it; `None`
    /// when the console is off.
    pub fn address(&self) -> Option<(&str, bool)> {
        match self.listen.as_deref() {
            None => Some((Self::DEFAULT_LISTEN, false)),
            Some(l) if l.eq_ignore_ascii_case("off") => None,
            Some(l) => Some((l, true)),
        }
    }
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: None,
            user: "ferry".into(),
            password: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Where ferry keeps its state in the target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub schema: String,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            schema: "ferry".into(),
        }
    }
}

/// `ferry validate` and the validations a running `ferry run` starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Most source rows read per second (0: no limit).
    pub rows_per_second: u64,
    /// Rows of one key range, hashed on each side in one short snapshot.
    pub chunk_rows: u64,
    /// A differing range of at most this many rows is compared row by row.
    pub leaf_rows: u64,
    /// Times a differing key is checked again before it is reported as
    /// unsettled (changing too fast to compare); at least 2, since a
    /// difference counts once two rounds in a row see it.
    pub rounds: u32,
    /// Longest wait for the applier to pass a range's source position.
    pub wait_seconds: u64,
    /// `ferry run` validates every table this often (0: only on request).
    pub every_seconds: u64,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            rows_per_second: 100_000,
            chunk_rows: 10_000,
            leaf_rows: 500,
            rounds: 5,
            wait_seconds: 120,
            every_seconds: 0,
        }
    }
}

/// `[tables.columns."schema.table.column"]`: one column's type and policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnOverride {
    /// The PostgreSQL type the target column gets (instead of the one
    /// ferry infers).
    #[serde(default, rename = "type")]
    pub pg_type: Option<String>,
    /// Values that do not fit the column's type (default: the source's
    /// global policy, e.g. `sqlite.misfits`).
    #[serde(default)]
    pub on_misfit: Option<MisfitPolicy>,
    /// Leave the column out (`target_tables.mode = "existing"`: a source
    /// column the application's table does not have).
    #[serde(default)]
    pub exclude: bool,
}

/// A config that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {origin} is not valid TOML: {message}")]
    Parse { origin: String, message: String },
    #[error("environment variable {var} does not name a setting; known sections: {sections}")]
    UnknownEnv { var: String, sections: String },
    #[error("config is invalid:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// `target_tables` before `target`: the longest section prefix wins.
const SECTIONS: &[&str] = &[
    "source",
    "target_tables",
    "target",
    "tables",
    "load",
    "apply",
    "control",
    "console",
    "state",
    "postgres",
    "mysql",
    "sqlite",
    "validate",
    "proxy",
];
const LIST_KEYS: &[&str] = &["tables.include", "tables.exclude", "tables.insert_only"];
/// `FERRY_*` variables that configure the CLI itself, not `ferry.toml`.
const NON_CONFIG_ENV: &[&str] = &[
    "FERRY_CONFIG",
    "FERRY_LOG",
    "FERRY_DATASETS",
    "FERRY_PG_DUMP",
    FAILPOINT_ENV,
];
/// The crash-injection variable of the applier (tests only); its values.
pub const FAILPOINT_ENV: &str = "FERRY_FAILPOINT";
pub const FAILPOINTS: &[&str] = &["after-apply-before-commit", "after-commit-before-ack"];

impl Config {
    /// Read `path` (optional: env alone can configure ferry) and apply the
    /// process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path.map_or_else(|| "(environment)".to_owned(), |p| p.display().to_string());
        Config::from_parts(&text, &origin, std::env::vars())
    }

    /// Parse TOML text and overlay `FERRY_*` variables from `env`.
    pub fn from_parts(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let mut env: Vec<_> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FERRY_"))
            .collect();
        env.sort();
        for (var, value) in env {
            if var == FAILPOINT_ENV && !FAILPOINTS.contains(&value.as_str()) {
                return Err(ConfigError::Parse {
                    origin: "environment".to_owned(),
                    message: format!(
                        "{FAILPOINT_ENV}={value:?} is not a failpoint; use one of {}",
                        FAILPOINTS.join(", ")
                    ),
                });
            }
            if NON_CONFIG_ENV.contains(&var.as_str()) {
                continue;
            }
            let rest = var["FERRY_".len()..].to_ascii_lowercase();
            let Some((section, key)) = SECTIONS.iter().find_map(|s| {
                rest.strip_prefix(&format!("{s}_"))
                    .map(|k| (*s, k.to_owned()))
            }) else {
                return Err(ConfigError::UnknownEnv {
                    var,
                    sections: SECTIONS.join(", "),
                });
            };
            let entry = doc
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(table) = entry.as_table_mut() else {
                return Err(ConfigError::Parse {
                    origin: origin.to_owned(),
                    message: format!("'{section}' must be a table"),
                });
            };
            table.insert(key.clone(), env_value(&format!("{section}.{key}"), &value));
        }
        Config::deserialize(doc).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Every problem that can be found without connecting, at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let source_kind = check_endpoint("source", &self.source, &mut problems);
        let target_kind = check_endpoint("target", &self.target, &mut problems);
        if let Some(k) = &target_kind
            && *k != EndpointKind::Postgres
        {
            problems.push(format!(
                "target.url ({}) must be a postgres:// URL: ferry writes into PostgreSQL",
                self.target.url
            ));
        }
        if source_kind.is_some() && self.source.url.expose() == self.target.url.expose() {
            problems.push("source.url and target.url are the same database; point target.url at the new database".into());
        }
        if let Some(EndpointKind::Sqlite(_)) = source_kind
            && (self.source.sslmode.is_some() || self.source.sslrootcert.is_some())
        {
            problems.push(
                "source.sslmode/sslrootcert do not apply to an sqlite source; remove them".into(),
            );
        }
        if let Err(e) = self.tables.filter() {
            problems.push(format!("tables: {e}"));
        }
        if !self.tables.insert_only.is_empty()
            && source_kind
                .as_ref()
                .is_some_and(|k| *k != EndpointKind::Postgres)
        {
            problems.push(
                "tables.insert_only applies to PostgreSQL sources (a publication for inserts alone); remove it".into(),
            );
        }
        for (from, to) in &self.tables.rename {
            for (which, name) in [("source", from), ("target", to)] {
                if parse_table_name(name).is_none() {
                    problems.push(format!(
                        "tables.rename: {which} name '{name}' must be schema.table (double-quote a part with a dot or quote: public.\"v1.2_data\")"
                    ));
                }
            }
        }
        if !self.target_tables.existing()
            && (self.target_tables.schema.is_some()
                || self.target_tables.existing_rows != ExistingRows::Refuse)
        {
            problems.push(
                "target_tables.schema and target_tables.existing_rows apply to mode = \"existing\"; set it or remove them".into(),
            );
        }
        for (name, o) in &self.tables.columns {
            if crate::schema::parse_column(name).is_none() {
                problems.push(format!(
                    "tables.columns: '{name}' must be schema.table.column (double-quote a part with a dot or quote)"
                ));
            }
            if o.pg_type.as_deref().is_some_and(|t| t.trim().is_empty()) {
                problems.push(format!("tables.columns.\"{name}\".type is empty"));
            }
        }
        let typed = self.tables.columns.values().any(|o| o.pg_type.is_some());
        let misfit = self.tables.columns.values().any(|o| o.on_misfit.is_some());
        match source_kind.as_ref() {
            Some(EndpointKind::Sqlite(_)) | None => {}
            Some(EndpointKind::MySql) => {
                if misfit {
                    problems.push(
                        "tables.columns on_misfit applies to SQLite sources (MySQL/MariaDB values always fit their mapped type or are an error); remove it".into(),
                    );
                }
            }
            Some(_) if typed || misfit => problems.push(
                "tables.columns type and on_misfit apply to SQLite and MySQL/MariaDB sources so far (PostgreSQL sources: not yet); remove them".into(),
            ),
            Some(_) => {}
        }
        if self.tables.columns.values().any(|o| o.exclude) && !self.target_tables.existing() {
            problems.push(
                "tables.columns exclude applies to target_tables.mode = \"existing\" so far; remove it".into(),
            );
        }
        if self.load.parallelism == Some(0) {
            problems.push("load.parallelism must be at least 1".into());
        }
        if self.load.index_parallelism == Some(0) {
            problems.push("load.index_parallelism must be at least 1".into());
        }
        if self.load.chunk_rows == Some(0) {
            problems.push("load.chunk_rows must be at least 1".into());
        }
        if self.apply.batch_rows == 0 {
            problems.push("apply.batch_rows must be at least 1".into());
        }
        if self.apply.batch_ms == 0 {
            problems.push("apply.batch_ms must be at least 1".into());
        }
        if self.apply.max_buffered_bytes < 4 << 20 {
            problems.push(format!(
                "apply.max_buffered_bytes = {} is below the minimum of 4 MiB (4194304)",
                self.apply.max_buffered_bytes
            ));
        }
        match self.control.listen.parse::<SocketAddr>() {
            Err(_) => problems.push(format!(
                "control.listen '{}' is not an address such as 127.0.0.1:7433",
                self.control.listen
            )),
            Ok(addr) if !addr.ip().is_loopback() && self.control.token.is_none() => problems.push(format!(
                "control.listen {addr} is not a loopback address; set control.token so the API requires a bearer token"
            )),
            Ok(_) => {}
        }
        if let Some((listen, _)) = self.console.address() {
            match listen.parse::<SocketAddr>() {
                Err(_) => problems.push(format!(
                    "console.listen '{listen}' is not an address such as 127.0.0.1:7434 (or off)"
                )),
                Ok(addr)
                    if !addr.ip().is_loopback()
                        && self.console.password.is_none()
                        && self.control.token.is_none() =>
                {
                    problems.push(format!(
                        "console.listen {addr} is not a loopback address and no credentials are set; set console.password (or control.token), or listen on 127.0.0.1"
                    ))
                }
                Ok(_) => {}
            }
        }
        if self.console.tls_cert.is_some() != self.console.tls_key.is_some() {
            problems.push(
                "console.tls_cert and console.tls_key go together: set both (PEM files) or neither"
                    .into(),
            );
        }
        if self.console.user.is_empty() {
            problems.push("console.user must not be empty".into());
        }
        problems.extend(self.proxy.problems());
        if self.proxy.listen.is_some()
            && self
                .source
                .kind()
                .ok()
                .is_some_and(|k| k != EndpointKind::Postgres)
        {
            problems.push(
                "proxy.listen is set but the source is not PostgreSQL: the proxy speaks PostgreSQL's protocol to the source; remove [proxy]".into(),
            );
        }
        if !is_identifier(&self.state.schema) {
            problems.push(format!(
                "state.schema '{}' must be a lowercase identifier (letters, digits, _)",
                self.state.schema
            ));
        }
        for (name, value) in [
            ("postgres.slot", &self.postgres.slot),
            ("postgres.publication", &self.postgres.publication),
        ] {
            if !is_identifier(value) {
                problems.push(format!(
                    "{name} '{value}' must be a lowercase identifier of at most 63 characters"
                ));
            }
        }
        if !matches!(self.postgres.proto_version, 1 | 2) {
            problems.push(format!(
                "postgres.proto_version {} is not 1 or 2",
                self.postgres.proto_version
            ));
        }
        if self.postgres.capture_ddl && self.target_tables.existing() {
            problems.push(
                "postgres.capture_ddl cannot be combined with target_tables.mode = \"existing\": the application's own migrations own the target schema there (run them on the target; ferry stops with the fix when a table's shape no longer matches)"
                    .into(),
            );
        }
        if self.validate.chunk_rows == 0 || self.validate.leaf_rows == 0 {
            problems.push("validate.chunk_rows and validate.leaf_rows must be at least 1".into());
        }
        if self.validate.rounds < 2 {
            problems.push(
                "validate.rounds must be at least 2: a difference counts once two rounds in a row see it (nothing on the source is locked)"
                    .into(),
            );
        }
        if self.validate.wait_seconds == 0 {
            problems.push("validate.wait_seconds must be at least 1".into());
        }
        if self.mysql.server_id == 0 {
            problems.push(
                "mysql.server_id must be non-zero and unique among the source's replicas".into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

fn check_endpoint(which: &str, ep: &Endpoint, problems: &mut Vec<String>) -> Option<EndpointKind> {
    let kind = match ep.kind() {
        Ok(k) => k,
        Err(e) => {
            problems.push(format!("{which}.url ({}) {e}", ep.url));
            return None;
        }
    };
    if kind != EndpointKind::Postgres && kind != EndpointKind::MySql {
        return Some(kind);
    }
    match ep.url.parsed() {
        Err(e) => problems.push(format!("{which}.url ({}) does not parse: {e}", ep.url)),
        Ok(u) => {
            if u.host_str().is_none_or(str::is_empty) {
                problems.push(format!("{which}.url ({}) has no host", ep.url));
            }
            if u.path().trim_start_matches('/').is_empty() {
                problems.push(format!(
                    "{which}.url ({}) names no database; add /dbname",
                    ep.url
                ));
            }
            if let Some((_, m)) = u.query_pairs().find(|(k, _)| k == "sslmode")
                && SslMode::parse(&m).is_none()
            {
                problems.push(format!(
                        "{which}.url sslmode '{m}' is not one of disable, prefer, require, verify-ca, verify-full"
                    ));
            }
        }
    }
    let mode = ep.effective_sslmode();
    let root = ep.effective_sslrootcert();
    if mode.verifies_certificate() && root.is_none() {
        problems.push(format!(
            "{which}.sslmode is {mode} but no sslrootcert is set; set {which}.sslrootcert to the CA bundle (e.g. the RDS global-bundle.pem)"
        ));
    }
    if mode == SslMode::Disable && root.is_some() {
        problems.push(format!(
            "{which}.sslrootcert is set but sslmode is disable; use sslmode=verify-full"
        ));
    }
    Some(kind)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// An environment value as TOML: numbers and booleans typed, lists split on
/// commas, anything else a string.
fn env_value(key: &str, raw: &str) -> toml::Value {
    if LIST_KEYS.contains(&key) {
        return toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        );
    }
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests;
