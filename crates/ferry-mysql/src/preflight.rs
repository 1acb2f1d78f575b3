//! `ferry plan` for a MySQL / MariaDB source: prerequisite checks and the
//! table plan.
//!
//! Consumes the config; reads (never writes) server variables, the current
//! user's grants and the catalog; emits a [`SourcePlan`] whose checks all
//! have side `source`. Every failed check carries the fix. The decisions are
//! pure functions over [`ServerFacts`] so they are tested without a server.
//!
//! What must hold for binlog CDC (see the MySQL replication docs,
//! <https://dev.mysql.com/doc/refman/8.0/en/replication-options-binary-log.html>,
//! and MariaDB's <https://mariadb.com/kb/en/replication-and-binary-log-system-variables/>):
//! `log_bin=ON`, `binlog_format=ROW`, `binlog_row_image=FULL`, a non-zero
//! `server_id` different from ferry's, REPLICATION SLAVE + REPLICATION CLIENT
//! (MariaDB 10.5+: BINLOG MONITOR), SELECT on the tables, and binlogs kept
//! long enough (warned below 24 h). GTIDs and `binlog_row_metadata` are
//! reported for information. MySQL's `binlog_row_value_options=PARTIAL_JSON`
//! passes with a FULL row image (the binlog decoder applies the JSON diffs to
//! the before image) and fails otherwise.

mod grants;

use std::collections::BTreeMap;

use ferry_core::Error;
use ferry_core::config::{Config, EndpointKind, SnapshotMethod, TablesConfig};
use ferry_core::plan::{Check, SourcePlan, TablePlan};
use ferry_core::schema::quote_ident_with;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::catalog::{self, SourceTable, query_error, take};
use crate::connect::{self, Flavor};
pub use grants::{Grant, Privileges};

const SIDE: &str = "source";
/// Binlogs kept for less than this get a warning.
const MIN_RETENTION_SECS: u64 = 24 * 3600;
const VARIABLES: &[&str] = &[
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "binlog_row_value_options",
    "server_id",
    "expire_logs_days",
    "binlog_expire_logs_seconds",
    "gtid_mode",
    "gtid_strict_mode",
    "gtid_current_pos",
    "basedir",
];

/// Everything the checks look at, read once from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    /// `SELECT VERSION()`.
    pub version: String,
    /// `@@version_comment`.
    pub version_comment: String,
    /// Global variables by lower-case name (only those in `VARIABLES`).
    pub variables: BTreeMap<String, String>,
    /// RDS `binlog retention hours`: `None` when not RDS or unreadable,
    /// `Some(None)` when RDS reports NULL (purged as soon as possible).
    pub rds_retention_hours: Option<Option<u64>>,
    /// `CURRENT_USER()`, e.g. `ferry@%`.
    pub current_user: String,
    pub privileges: Privileges,
}

impl ServerFacts {
    pub fn flavor(&self) -> Flavor {
        Flavor::detect(&self.version, &self.version_comment)
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.variables.get(name).map(String::as_str)
    }

    /// Amazon RDS / Aurora MySQL install under `/rdsdbbin/`.
    pub fn is_rds(&self) -> bool {
        self.var("basedir")
            .is_some_and(|b| b.starts_with("/rdsdbbin"))
    }

    /// `'user'@'host'` for GRANT statements in fixes.
    fn grantee(&self) -> String {
        match self.current_user.rsplit_once('@') {
            Some((u, h)) => format!("'{u}'@'{h}'"),
            None => "'ferry'@'%'".to_owned(),
        }
    }
}

/// Numeric `major.minor.patch` from `VERSION()` (MariaDB's `5.5.5-` prefix dropped).
pub fn numeric_version(version: &str) -> Option<(u32, u32, u32)> {
    let v = version.strip_prefix("5.5.5-").unwrap_or(version);
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Runs every source check and builds the table plan.
pub async fn plan(config: &Config) -> Result<SourcePlan, Error> {
    match config.source.kind() {
        Ok(EndpointKind::MySql) => {}
        _ => {
            return Err(Error::operator(
                format!("source {} is not a MySQL/MariaDB URL", config.source.url),
                "use mysql://user:password@host:3306/database",
            ));
        }
    }
    let filter = config.tables.filter().map_err(|e| {
        Error::operator(
            format!("tables: {e}"),
            "fix tables.include / tables.exclude",
        )
    })?;
    let mut conn = connect::connect(&config.source).await?;
    let facts = read_facts(&mut conn).await?;
    let flavor = facts.flavor();
    let url_db = connect::url_database(&config.source)?;
    let databases = catalog::databases(&mut conn, url_db.as_deref()).await?;
    let mut tables = catalog::read_tables(&mut conn, flavor, &databases, &filter).await?;
    let overrides = crate::overrides::Overrides::new(&config.mysql, &config.tables);
    for t in &mut tables {
        crate::typemap::apply_policies(&config.mysql, &mut t.schema);
        overrides.apply(&mut t.schema);
    }
    let cascades = cascading_keys(&mut conn, &databases).await?;
    if let Err(error) = conn.disconnect().await {
        tracing::debug!(error = %error, "closing the plan connection");
    }
    let mut checks = server_checks(&facts, config.mysql.server_id);
    checks.extend(privilege_checks(&facts, &tables));
    checks.extend(table_checks(&tables, &databases));
    checks.push(snapshot_check(flavor, config.mysql.snapshot));
    if crate::snapshot::method(config.mysql.snapshot, flavor) == SnapshotMethod::Watermark {
        checks.extend(watermark_key_checks(&tables));
    }
    checks.extend(cascade_checks(&cascades, &tables));
    let version = numeric_version(&facts.version)
        .map(|(a, b, c)| format!("{a}.{b}.{c}"))
        .unwrap_or_else(|| facts.version.clone());
    tracing::info!(%flavor, %version, tables = tables.len(), "mysql source planned");
    Ok(SourcePlan {
        flavor: flavor.to_string(),
        version,
        checks,
        tables: tables
            .iter()
            .map(|t| table_plan(t, &config.tables))
            .collect(),
    })
}

/// A foreign key whose ON DELETE / ON UPDATE rule changes other rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CascadingKey {
    pub table: ferry_core::TableId,
    pub name: String,
    pub update_rule: String,
    pub delete_rule: String,
}

async fn cascading_keys(conn: &mut Conn, databases: &[String]) -> Result<Vec<CascadingKey>, Error> {
    if databases.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; databases.len()].join(",");
    let rows: Vec<(String, String, String, String, String)> = conn
        .exec(
            format!(
                "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, UPDATE_RULE, DELETE_RULE \
                 FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA IN ({marks}) \
                 ORDER BY 1, 2, 3"
            ),
            databases.to_vec(),
        )
        .await
        .map_err(|e| query_error("reading foreign key rules", e))?;
    Ok(rows
        .into_iter()
        .map(|(db, table, name, update_rule, delete_rule)| CascadingKey {
            table: ferry_core::TableId::new(db, table),
            name,
            update_rule,
            delete_rule,
        })
        .filter(|k| changes_rows(&k.update_rule) || changes_rows(&k.delete_rule))
        .collect())
}

fn changes_rows(rule: &str) -> bool {
    matches!(rule, "CASCADE" | "SET NULL" | "SET DEFAULT")
}

/// InnoDB performs ON DELETE/ON UPDATE CASCADE and SET NULL itself and
/// does not write the rows it changes to the binlog, so the target misses
/// them: one warning per such key of a carried table.
pub fn cascade_checks(keys: &[CascadingKey], tables: &[SourceTable]) -> Vec<Check> {
    keys.iter()
        .filter(|k| tables.iter().any(|t| t.schema.id == k.table))
        .map(|k| {
            let rules: Vec<String> = [("ON DELETE", &k.delete_rule), ("ON UPDATE", &k.update_rule)]
                .into_iter()
                .filter(|(_, r)| changes_rows(r))
                .map(|(on, r)| format!("{on} {r}"))
                .collect();
            Check::warn(
                "source",
                format!("cascading key {}.{}", k.table, k.name),
                format!(
                    "foreign key {} of {} has {}: the rows InnoDB changes by it are not in the binlog, so the target would miss them",
                    k.name,
                    k.table,
                    rules.join(", ")
                ),
                "make sure no statement fires it during the migration (no delete or key update of the parent rows), or change the rule to RESTRICT/NO ACTION and let the application delete the children itself",
            )
        })
        .collect()
}

/// Which snapshot method the full load will use (`mysql.snapshot`), and
/// why.
pub fn snapshot_check(flavor: Flavor, setting: SnapshotMethod) -> Check {
    let set = format!("mysql.snapshot = \"{}\"", method_name(setting));
    match (crate::snapshot::method(setting, flavor), flavor) {
        (SnapshotMethod::Watermark, Flavor::MariaDb) => Check::pass(
            "source",
            "snapshot method",
            format!(
                "watermark ({set}): a low watermark (the binlog position of a consistent snapshot ended at once), then each chunk read in a short transaction of its own, in parallel, while the application writes; the binlog from the watermark is replayed over the chunks as keyed upserts and deletes of full rows, so every row ends as its last change; an interrupted load keeps its finished chunks; no global lock, no read view held for the whole load"
            ),
        ),
        (_, Flavor::MariaDb) => Check::pass(
            "source",
            "snapshot method",
            format!(
                "consistent ({set}): START TRANSACTION WITH CONSISTENT SNAPSHOT: its binlog position (binlog_snapshot_file/pos) is exact and no global lock is taken (works where FLUSH TABLES WITH READ LOCK is not allowed); chunks read in parallel only while nothing is written, and a load interrupted mid-table copies that table again; mysql.snapshot = \"watermark\" reads in parallel while the application writes and resumes by chunk"
            ),
        ),
        (method, Flavor::MySql) => Check::warn(
            "source",
            "snapshot method",
            format!(
                "{} ({set}): MySQL has no consistent snapshot with an exact binlog position without a global lock (FLUSH TABLES WITH READ LOCK, forbidden on RDS/Aurora), so it needs the watermark load; `ferry run` does not enable it on MySQL yet (its binlog status can precede a transaction InnoDB has not made visible, and no MySQL server tested it), so `ferry run` refuses this source",
                method_name(method)
            ),
            "migrate from MariaDB, or load the tables another way; this plan still checks the binlog settings and tables",
        ),
    }
}

/// `mysql.snapshot`'s config spelling of `m`.
fn method_name(m: SnapshotMethod) -> &'static str {
    match m {
        SnapshotMethod::Auto => "auto",
        SnapshotMethod::Consistent => "consistent",
        SnapshotMethod::Watermark => "watermark",
    }
}

/// The watermark load replays the binlog over chunks read later: a table
/// without a primary key would get its replayed rows twice.
pub fn watermark_key_checks(tables: &[SourceTable]) -> Vec<Check> {
    tables
        .iter()
        .filter(|t| !t.schema.has_key())
        .map(|t| {
            let id = &t.schema.id;
            Check::fail(
                SIDE,
                format!("watermark key {id}"),
                format!("{id} has no primary key: the watermark load replays the binlog over rows read later and would double this table's changed rows"),
                format!("add a primary key (ALTER TABLE {id} ADD PRIMARY KEY (…)), exclude the table, or use mysql.snapshot = \"consistent\""),
            )
        })
        .collect()
}

/// Reads version, variables, RDS retention and grants.
pub async fn read_facts(conn: &mut Conn) -> Result<ServerFacts, Error> {
    let row: Option<(String, String, String)> = conn
        .query_first("SELECT VERSION(), @@version_comment, CURRENT_USER()")
        .await
        .map_err(|e| query_error("reading the server version", e))?;
    let (version, version_comment, current_user) = row.unwrap_or_default();
    let list = VARIABLES
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(",");
    let rows: Vec<(String, String)> = conn
        .query(format!(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})"
        ))
        .await
        .map_err(|e| query_error("reading server variables", e))?;
    let variables = rows
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let grant_rows: Vec<mysql_async::Row> = conn
        .query("SHOW GRANTS FOR CURRENT_USER()")
        .await
        .map_err(|e| query_error("reading the user's grants", e))?;
    let mut lines = Vec::new();
    for mut r in grant_rows {
        lines.push(take::<String>(&mut r, 0, "SHOW GRANTS")?);
    }
    let mut facts = ServerFacts {
        version,
        version_comment,
        variables,
        rds_retention_hours: None,
        current_user,
        privileges: Privileges::parse(lines.iter().map(String::as_str)),
    };
    if facts.is_rds() {
        facts.rds_retention_hours = rds_retention_hours(conn).await;
    }
    Ok(facts)
}

/// `binlog retention hours` from `CALL mysql.rds_show_configuration`.
async fn rds_retention_hours(conn: &mut Conn) -> Option<Option<u64>> {
    let rows: Vec<mysql_async::Row> = match conn.query("CALL mysql.rds_show_configuration").await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::debug!(error = %error, "rds_show_configuration not available");
            return None;
        }
    };
    for mut r in rows {
        let name: Option<String> = r.take_opt(0).and_then(Result::ok);
        if name.as_deref() == Some("binlog retention hours") {
            let value: Option<Option<String>> = r.take_opt(1).and_then(Result::ok);
            return Some(value.flatten().and_then(|v| v.trim().parse().ok()));
        }
    }
    None
}

/// Version, binlog settings, server_id, retention and GTID checks.
pub fn server_checks(f: &ServerFacts, ferry_server_id: u32) -> Vec<Check> {
    let rds = f.is_rds();
    let param_group = if rds {
        " (RDS/Aurora: set it in the DB parameter group and reboot)"
    } else {
        ""
    };
    let mut out = vec![version_check(f)];
    out.push(match f.var("log_bin") {
        Some(v) if v.eq_ignore_ascii_case("ON") || v == "1" => Check::pass(SIDE, "log_bin", "log_bin = ON"),
        other => Check::fail(
            SIDE,
            "log_bin",
            format!("log_bin = {}", other.unwrap_or("unknown")),
            if rds {
                "enable automated backups (backup retention > 0) on the RDS instance; Aurora: set binlog_format in the cluster parameter group and reboot".to_owned()
            } else {
                "add log_bin=mysql-bin (and server_id=1) under [mysqld] in my.cnf and restart the server".to_owned()
            },
        ),
    });
    out.push(setting_check(f, "binlog_format", "ROW", param_group, false));
    out.push(setting_check(
        f,
        "binlog_row_image",
        "FULL",
        param_group,
        true,
    ));
    out.push(server_id_check(f, ferry_server_id));
    out.push(retention_check(f));
    out.push(gtid_check(f));
    if let Some(check) = partial_json_check(f) {
        out.push(check);
    }
    if let Some(meta) = f.var("binlog_row_metadata") {
        out.push(Check::pass(
            SIDE,
            "binlog_row_metadata",
            format!("binlog_row_metadata = {meta} (FULL puts column names in the binlog; optional, ferry tracks the schema itself)"),
        ));
    }
    out
}

/// MySQL 8 `binlog_row_value_options = PARTIAL_JSON` logs JSON updates as
/// diffs; ferry applies them exactly to the before image, which only a FULL
/// row image carries.
fn partial_json_check(f: &ServerFacts) -> Option<Check> {
    let opts = f.var("binlog_row_value_options")?;
    if !opts.to_ascii_uppercase().contains("PARTIAL_JSON") {
        return None;
    }
    let full = f
        .var("binlog_row_image")
        .is_some_and(|v| v.eq_ignore_ascii_case("FULL"));
    Some(if full {
        Check::pass(
            SIDE,
            "binlog_row_value_options",
            "binlog_row_value_options = PARTIAL_JSON (JSON diffs are applied exactly to the full before image)",
        )
    } else {
        Check::fail(
            SIDE,
            "binlog_row_value_options",
            format!(
                "binlog_row_value_options = {opts} with binlog_row_image = {}",
                f.var("binlog_row_image").unwrap_or("unknown")
            ),
            "partial JSON updates need the full before image: SET GLOBAL binlog_row_image=FULL, or SET GLOBAL binlog_row_value_options=''",
        )
    })
}

fn version_check(f: &ServerFacts) -> Check {
    let flavor = f.flavor();
    let (min, name) = match flavor {
        Flavor::MariaDb => ((10, 3), "MariaDB"),
        Flavor::MySql => ((5, 7), "MySQL"),
    };
    let detail = format!("{name} {} ({})", f.version, f.version_comment);
    match numeric_version(&f.version) {
        Some((a, b, _)) if (a, b) >= min => Check::pass(SIDE, "server version", detail),
        _ => Check::fail(
            SIDE,
            "server version",
            detail,
            format!(
                "ferry needs {name} {}.{} or later; upgrade the server",
                min.0, min.1
            ),
        ),
    }
}

/// `name` must equal `want`; `missing_ok` when old servers lack the variable
/// and behave as wanted.
fn setting_check(
    f: &ServerFacts,
    name: &str,
    want: &str,
    param_group: &str,
    missing_ok: bool,
) -> Check {
    match f.var(name) {
        Some(v) if v.eq_ignore_ascii_case(want) => Check::pass(SIDE, name, format!("{name} = {v}")),
        None if missing_ok => Check::pass(
            SIDE,
            name,
            format!("{name} not present (server default {want})"),
        ),
        other => Check::fail(
            SIDE,
            name,
            format!("{name} = {}", other.unwrap_or("unknown")),
            format!(
                "run SET GLOBAL {name}={want} and add {name}={want} under [mysqld] in my.cnf{param_group}; \
                 sessions already open keep the old value until they reconnect"
            ),
        ),
    }
}

fn server_id_check(f: &ServerFacts, ferry_server_id: u32) -> Check {
    let id = f.var("server_id").and_then(|v| v.parse::<u64>().ok());
    match id {
        Some(0) | None => Check::fail(
            SIDE,
            "server_id",
            format!("server_id = {}", f.var("server_id").unwrap_or("unknown")),
            "set server_id to a non-zero value unique in the replication topology (server_id=1 under [mysqld]) and restart",
        ),
        Some(id) if id == u64::from(ferry_server_id) => Check::fail(
            SIDE,
            "server_id",
            format!("server_id = {id}, the same as ferry's mysql.server_id"),
            "set mysql.server_id in ferry.toml to a value no server or replica uses",
        ),
        Some(id) => Check::pass(SIDE, "server_id", format!("server_id = {id}")),
    }
}

/// Binlog retention: warn below 24 h or when unknown; 0 means never purged.
pub fn retention_check(f: &ServerFacts) -> Check {
    const NAME: &str = "binlog retention";
    if f.is_rds() {
        let fix = "CALL mysql.rds_set_configuration('binlog retention hours', 72)";
        return match f.rds_retention_hours {
            Some(Some(h)) if h >= 24 => {
                Check::pass(SIDE, NAME, format!("binlog retention hours = {h}"))
            }
            Some(Some(h)) => Check::warn(SIDE, NAME, format!("binlog retention hours = {h}"), fix),
            Some(None) => Check::warn(
                SIDE,
                NAME,
                "binlog retention hours = NULL: RDS purges binlogs as soon as it can",
                fix,
            ),
            None => Check::warn(SIDE, NAME, "RDS binlog retention could not be read", fix),
        };
    }
    let secs = f
        .var("binlog_expire_logs_seconds")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let days = f
        .var("expire_logs_days")
        .and_then(|v| v.trim().parse::<f64>().ok());
    let fix = match f.flavor() {
        Flavor::MariaDb => {
            "SET GLOBAL binlog_expire_logs_seconds=604800 (MariaDB < 10.6: expire_logs_days=7) and the same in my.cnf"
        }
        Flavor::MySql => "SET PERSIST binlog_expire_logs_seconds=604800",
    };
    let effective = match (secs, days) {
        (Some(s), _) if s > 0 => Some(s),
        (_, Some(d)) if d > 0.0 => Some((d * 86_400.0) as u64),
        (None, None) => None,
        _ => Some(0),
    };
    match effective {
        Some(0) => Check::pass(
            SIDE,
            NAME,
            "binlogs are never purged automatically (watch the disk)",
        ),
        Some(s) if s >= MIN_RETENTION_SECS => {
            Check::pass(SIDE, NAME, format!("binlogs kept {}", hours(s)))
        }
        Some(s) => Check::warn(
            SIDE,
            NAME,
            format!(
                "binlogs kept only {}: a stop longer than that loses the stream position",
                hours(s)
            ),
            fix,
        ),
        None => Check::warn(SIDE, NAME, "binlog retention unknown", fix),
    }
}

fn hours(secs: u64) -> String {
    if secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else {
        format!("{secs} s")
    }
}

fn gtid_check(f: &ServerFacts) -> Check {
    const NAME: &str = "gtid";
    match f.flavor() {
        Flavor::MariaDb => {
            let pos = f
                .var("gtid_current_pos")
                .filter(|p| !p.is_empty())
                .unwrap_or("(empty)");
            match f.var("gtid_strict_mode") {
                Some(m) if m.eq_ignore_ascii_case("ON") => Check::pass(
                    SIDE,
                    NAME,
                    format!("gtid_strict_mode = ON, gtid_current_pos = {pos}"),
                ),
                m => Check::warn(
                    SIDE,
                    NAME,
                    format!(
                        "gtid_strict_mode = {}, gtid_current_pos = {pos}",
                        m.unwrap_or("unknown")
                    ),
                    "SET GLOBAL gtid_strict_mode=ON (and gtid_strict_mode=ON in my.cnf) so GTID positions stay ordered",
                ),
            }
        }
        Flavor::MySql => match f.var("gtid_mode") {
            Some(m) if m.eq_ignore_ascii_case("ON") => Check::pass(SIDE, NAME, "gtid_mode = ON"),
            m => Check::warn(
                SIDE,
                NAME,
                format!(
                    "gtid_mode = {}: positions are binlog file:offset, which do not survive a failover to another server",
                    m.unwrap_or("unknown")
                ),
                "enable GTIDs: enforce_gtid_consistency=ON, then gtid_mode OFF_PERMISSIVE → ON_PERMISSIVE → ON",
            ),
        },
    }
}

/// Replication privileges and SELECT on every selected table.
pub fn privilege_checks(f: &ServerFacts, tables: &[SourceTable]) -> Vec<Check> {
    let p = &f.privileges;
    let maria = f.flavor() == Flavor::MariaDb;
    let mut missing = Vec::new();
    if !p.has_global(&["REPLICATION SLAVE", "REPLICATION REPLICA"]) {
        missing.push("REPLICATION SLAVE");
    }
    if !p.has_global(&["REPLICATION CLIENT", "BINLOG MONITOR"]) {
        missing.push(if maria {
            "BINLOG MONITOR"
        } else {
            "REPLICATION CLIENT"
        });
    }
    let grantee = f.grantee();
    let roles = if p.has_roles {
        " (privileges granted through roles were not checked)"
    } else {
        ""
    };
    let mut out = Vec::new();
    out.push(if missing.is_empty() {
        Check::pass(
            SIDE,
            "replication privileges",
            format!("{} may read the binlog", f.current_user),
        )
    } else {
        let detail = format!("{} lacks {}{roles}", f.current_user, missing.join(", "));
        let fix = format!("GRANT {} ON *.* TO {grantee}", missing.join(", "));
        if p.has_roles {
            Check::warn(SIDE, "replication privileges", detail, fix)
        } else {
            Check::fail(SIDE, "replication privileges", detail, fix)
        }
    });
    let denied: Vec<_> = tables
        .iter()
        .filter(|t| !p.can_select(&t.schema.id.schema, &t.schema.id.name))
        .map(|t| t.schema.id.clone())
        .collect();
    out.push(match denied.first() {
        None => Check::pass(
            SIDE,
            "select privilege",
            format!("SELECT on all {} tables", tables.len()),
        ),
        Some(first) => {
            let names: Vec<_> = denied.iter().take(5).map(ToString::to_string).collect();
            let more = denied.len().saturating_sub(5);
            let detail = format!(
                "{} lacks SELECT on {}{}{roles}",
                f.current_user,
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
            let fix = format!(
                "GRANT SELECT ON {}.* TO {grantee}",
                quote_ident_with(&first.schema, '`')
            );
            if p.has_roles {
                Check::warn(SIDE, "select privilege", detail, fix)
            } else {
                Check::fail(SIDE, "select privilege", detail, fix)
            }
        }
    });
    out
}

/// Per-table warnings (no key, non-InnoDB engine, unknown types) and "no tables".
pub fn table_checks(tables: &[SourceTable], databases: &[String]) -> Vec<Check> {
    let mut out = Vec::new();
    if tables.is_empty() {
        out.push(Check::fail(
            SIDE,
            "tables",
            format!("no tables selected in database(s) {}", databases.join(", ")),
            "check the database in source.url and tables.include / tables.exclude (globs over database.table)",
        ));
        return out;
    }
    for t in tables {
        let id = &t.schema.id;
        if !t.schema.has_key() {
            out.push(Check::warn(
                SIDE,
                format!("primary key {id}"),
                format!("{id} has no primary key: updates and deletes are matched on all columns, one row at a time"),
                format!("add a primary key: ALTER TABLE {id} ADD PRIMARY KEY (…)"),
            ));
        }
        if let Some(engine) = t
            .engine
            .as_deref()
            .filter(|e| !e.eq_ignore_ascii_case("InnoDB"))
        {
            out.push(Check::warn(
                SIDE,
                format!("engine {id}"),
                format!("{id} uses {engine}, which is not transactional: the snapshot of it is not consistent with the binlog position"),
                format!("ALTER TABLE {id} ENGINE=InnoDB, or keep writes off it during the load"),
            ));
        }
        if !t.unknown_types.is_empty() {
            out.push(Check::warn(
                SIDE,
                format!("types {id}"),
                format!(
                    "{id}: columns {} have types ferry does not know; carried as text",
                    t.unknown_types.join(", ")
                ),
                "check the values survive as text, or exclude the table",
            ));
        }
    }
    out
}

/// The plan row of one table.
pub fn table_plan(t: &SourceTable, tables: &TablesConfig) -> TablePlan {
    TablePlan::new(&t.schema, &tables.target_name(&t.schema.id), t.row_estimate)
}

#[cfg(test)]
mod tests;
