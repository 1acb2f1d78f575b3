//! `ferry plan` for a SQLite source: file checks and the table plan.
//!
//! Consumes the config (the `sqlite:` URL's path and the table selection);
//! opens the file read-only and never writes it; emits a [`SourcePlan`]
//! with checks on side `source`:
//!
//! - `file`: the file exists (fail names the path);
//! - `open read-only`: SQLite opens it with `SQLITE_OPEN_READ_ONLY`;
//! - `quick_check`: `PRAGMA quick_check` says `ok` (a corrupt file or one
//!   that is not a database fails here, and nothing further is read).
//!   It reads every page of the file (about 1 s per GiB, and in
//!   rollback-journal mode the application's writers wait for it), so
//!   `ferry run` resuming a migration the target records ([`Checking::Resume`])
//!   does not run it again: the file was checked before its load, and a
//!   damaged page still stops the reads that meet it;
//! - `journal_mode`: WAL is recommended so the application keeps writing
//!   while ferry reads (warn otherwise, explaining that a read blocks
//!   writers in rollback-journal mode and what ferry does about it);
//! - `write access`: `ferry run` installs change capture in the file and
//!   (rollback-journal mode) places the load's snapshot copy next to it, so the file and its
//!   directory must be writable (checked without writing, and without
//!   opening the file: see `may_write`);
//! - `change capture`: exactly what `ferry run` installs
//!   ([`crate::capture`]), or, when it is installed already, whether every
//!   captured table still has the schema it was captured with (a rebuilt
//!   table fails with the fix);
//! - per table with a UNIQUE index besides its key: `INSERT OR REPLACE`
//!   removals through it fire no delete trigger (warn);
//! - `sqlite version`: the library version ferry reads with (info);
//! - per table: no primary key (warn), values that do not fit the chosen
//!   PostgreSQL type (warn naming table, column and rowids), virtual tables
//!   skipped (warn); no table selected (fail).
//!
//! Target names: `tables.rename` decides; otherwise `main.t` becomes
//! `public.t` (SQLite's schema name means nothing on PostgreSQL).

use std::path::{Path, PathBuf};

use ferry_core::Error;
use ferry_core::TableId;
use ferry_core::config::{Config, EndpointKind, MisfitPolicy, TableFilter, TablesConfig};
use ferry_core::plan::{Check, SourcePlan, TablePlan};

use crate::catalog::{self, ColumnFinding, SourceTable, TypePolicies};
use crate::connect;

const SIDE: &str = "source";
/// Rowids listed per column in a warning.
const ROWIDS_SHOWN: usize = 10;

/// Which checks a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checking {
    /// Every check (`ferry plan`, a first `ferry run`).
    #[default]
    Full,
    /// `ferry run` resuming a migration the target records: no
    /// `quick_check` (see the module docs).
    Resume,
}

/// Runs every check and builds the plan on a blocking thread.
pub async fn plan(config: &Config) -> Result<SourcePlan, Error> {
    plan_with(config, Checking::Full).await
}

/// [`plan`], with the checks `checking` names.
pub async fn plan_with(config: &Config, checking: Checking) -> Result<SourcePlan, Error> {
    let path = match config.source.kind() {
        Ok(EndpointKind::Sqlite(p)) => p,
        _ => {
            return Err(Error::operator(
                format!("source {} is not a sqlite URL", config.source.url),
                "use sqlite:///absolute/path/file.db or sqlite:relative/path.db",
            ));
        }
    };
    let filter = config.tables.filter().map_err(|e| {
        Error::operator(
            format!("tables: {e}"),
            "fix tables.include / tables.exclude",
        )
    })?;
    let tables = config.tables.clone();
    let policies = TypePolicies::from_config(config);
    tokio::task::spawn_blocking(move || plan_file(&path, &filter, &tables, &policies, checking))
        .await
        .map_err(|e| Error::transient("sqlite plan task failed").with_source(e))?
}

/// The blocking body of [`plan`].
pub fn plan_file(
    path: &Path,
    filter: &TableFilter,
    tables: &TablesConfig,
    policies: &TypePolicies,
    checking: Checking,
) -> Result<SourcePlan, Error> {
    let mut plan = SourcePlan {
        flavor: "sqlite".to_owned(),
        version: rusqlite::version().to_owned(),
        checks: Vec::new(),
        tables: Vec::new(),
    };
    let shown = path.display();
    if !path.is_file() {
        plan.checks.push(Check::fail(
            SIDE,
            "file",
            format!("{shown} does not exist or is not a file"),
            "point source.url at the database file (sqlite:///absolute/path.db)",
        ));
        return Ok(plan);
    }
    plan.checks
        .push(Check::pass(SIDE, "file", format!("{shown}")));
    let conn = match connect::open_read_only(path) {
        Ok(c) => c,
        Err(e) => {
            plan.checks.push(Check::fail(
                SIDE,
                "open read-only",
                format!("cannot open {shown} read-only: {e}"),
                "check the file's permissions (ferry needs read access to the file and its directory)",
            ));
            return Ok(plan);
        }
    };
    plan.checks.push(Check::pass(
        SIDE,
        "open read-only",
        format!("{shown} opened read-only"),
    ));
    let integrity = match checking {
        Checking::Full => {
            let started = std::time::Instant::now();
            let check = quick_check(&conn, path);
            tracing::info!(path = %shown, ms = started.elapsed().as_millis() as u64, result = %check.detail, "PRAGMA quick_check run");
            check
        }
        Checking::Resume => {
            tracing::info!(path = %shown, "PRAGMA quick_check not run again: the migration is resuming");
            Check::pass(
                SIDE,
                "quick_check",
                "not run again: the migration is resuming and the file was checked before its load (`ferry plan` runs PRAGMA quick_check)",
            )
        }
    };
    let ok = integrity.status == ferry_core::plan::CheckStatus::Pass;
    plan.checks.push(integrity);
    if !ok {
        return Ok(plan);
    }
    plan.checks.push(journal_check(&conn, path));
    plan.checks.push(Check::pass(
        SIDE,
        "sqlite version",
        format!("SQLite {}", plan.version),
    ));
    let catalog = catalog::read(&conn, filter, policies).map_err(|e| {
        Error::operator(
            format!("{shown}: {e}"),
            "check the file with: sqlite3 FILE 'PRAGMA integrity_check'",
        )
        .with_source(e)
    })?;
    plan.checks.extend(table_checks(&catalog, path));
    plan.checks.push(write_check(path));
    plan.checks.push(capture_check(&conn, &catalog));
    plan.checks.extend(replace_checks(&conn, &catalog));
    plan.tables = catalog
        .tables
        .iter()
        .map(|t| table_plan(t, tables))
        .collect();
    tracing::info!(path = %shown, tables = plan.tables.len(), "sqlite source planned");
    Ok(plan)
}

/// How long `quick_check` keeps trying a file another connection has locked.
const LOCKED_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn quick_check(conn: &rusqlite::Connection, path: &Path) -> Check {
    let fix = format!(
        "the file is damaged or not a SQLite database: check it with sqlite3 {} 'PRAGMA integrity_check' and restore it from a backup (or .recover it)",
        path.display()
    );
    // A busy writer (rollback-journal mode: its pending lock keeps new
    // readers out) is not damage: try again for up to LOCKED_RETRY.
    let started = std::time::Instant::now();
    let rows = loop {
        let rows: rusqlite::Result<Vec<String>> = conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect());
        match rows {
            Err(e) if is_busy(&e) && started.elapsed() < LOCKED_RETRY => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) if is_busy(&e) => {
                return Check::fail(
                    SIDE,
                    "quick_check",
                    format!(
                        "{}: still locked by another connection after {}s: {e}",
                        path.display(),
                        LOCKED_RETRY.as_secs()
                    ),
                    "a writer holds the file's lock continuously; run ferry again when it pauses, or switch the file to WAL (PRAGMA journal_mode=WAL) so readers never wait",
                );
            }
            other => break other,
        }
    };
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => {
            Check::pass(SIDE, "quick_check", "PRAGMA quick_check = ok")
        }
        Ok(rows) => {
            let first: Vec<_> = rows.iter().take(3).cloned().collect();
            Check::fail(
                SIDE,
                "quick_check",
                format!("{} problem(s): {}", rows.len(), first.join("; ")),
                fix,
            )
        }
        Err(e) => Check::fail(SIDE, "quick_check", format!("{}: {e}", path.display()), fix),
    }
}

fn journal_check(conn: &rusqlite::Connection, path: &Path) -> Check {
    let mode: rusqlite::Result<String> = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0));
    match mode {
        Ok(m) if m.eq_ignore_ascii_case("wal") => Check::pass(
            SIDE,
            "journal_mode",
            "journal_mode = wal: the load reads the file itself while the application writes \
                 (the WAL grows by what it writes during the load; checkpoints catch up after it)",
        ),
        Ok(m) => Check::warn(
            SIDE,
            "journal_mode",
            format!(
                "journal_mode = {m}: in this mode a read blocks writers (they wait up to their busy timeout, then fail). \
                 ferry keeps its reads short: the snapshot is taken as a VACUUM INTO copy (writers wait only for that page copy) \
                 and read from the copy; change-log batches are short read transactions"
            ),
            format!(
                "switch to WAL once (persistent): sqlite3 {} 'PRAGMA journal_mode=WAL'",
                path.display()
            ),
        ),
        Err(e) => Check::warn(
            SIDE,
            "journal_mode",
            format!("journal_mode unknown: {e}"),
            "run PRAGMA journal_mode on the file",
        ),
    }
}

/// Per-table warnings and "no table selected" (pure over the catalog).
pub fn table_checks(catalog: &catalog::Catalog, path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    if catalog.tables.is_empty() {
        out.push(Check::fail(
            SIDE,
            "tables",
            format!("no tables selected in {}", path.display()),
            "check tables.include / tables.exclude (globs over main.table)",
        ));
    }
    for name in &catalog.skipped {
        out.push(Check::warn(
            SIDE,
            format!("virtual table main.{name}"),
            format!("main.{name} is a virtual table; ferry does not carry it"),
            "exclude it (tables.exclude) or recreate its content from the carried tables on the target",
        ));
    }
    for t in &catalog.tables {
        let id = &t.schema.id;
        if !t.schema.has_key() {
            out.push(Check::warn(
                SIDE,
                format!("primary key {id}"),
                format!("{id} has no primary key: updates and deletes are matched on all columns, one row at a time"),
                format!("give {id} a primary key (recreate the table with PRIMARY KEY (…))"),
            ));
        }
        for f in &t.findings {
            out.push(finding_check(id, f));
        }
    }
    out
}

/// One column's type evidence, by its misfit policy
/// ([`crate::typemap::policy`]): widened (warn, with the counts and rowids),
/// refused (`fail`, or an explicit type that sampled values do not fit),
/// NULLed (`null`), or a note on the declared type.
fn finding_check(id: &TableId, f: &ColumnFinding) -> Check {
    let name = format!("values {id}.{}", f.column);
    let mut detail = format!("{id}.{} → {}", f.column, f.pg_type);
    if let Some(note) = &f.note {
        detail.push_str(&format!(": {note}"));
    }
    let Some(first) = f.misfits.first() else {
        return Check::warn(
            SIDE,
            name,
            detail,
            "nothing to do if the type shown is right; otherwise set it with tables.columns",
        );
    };
    let rows: Vec<String> = f
        .misfits
        .iter()
        .take(ROWIDS_SHOWN)
        .map(|m| m.rowid.map_or_else(|| "?".to_owned(), |r| r.to_string()))
        .collect();
    let more = f.misfits.len().saturating_sub(ROWIDS_SHOWN);
    let declared = f.widened_from.as_deref().unwrap_or(&f.pg_type);
    detail.push_str(&format!(
        "; {} sampled value(s) do not fit {declared} ({}) at rowid {}{}",
        f.misfits.len(),
        first.reason,
        rows.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ));
    let set = format!("tables.columns.\"{id}.{}\"", f.column);
    if let Some(from) = &f.widened_from {
        detail.push_str(&format!(
            "; widened from {from} to {} so that nothing is lost (sqlite.misfits = \"widen\")",
            f.pg_type
        ));
        return Check::warn(
            SIDE,
            name,
            detail,
            format!(
                "nothing to do if {} is right; otherwise {set} = {{ type = \"{from}\", on_misfit = \"null\" }} keeps {from} and NULLs those values, or fix the rows",
                f.pg_type
            ),
        );
    }
    if f.refused {
        detail.push_str(&format!("; on_misfit = \"{}\"", f.policy));
        return Check::fail(
            SIDE,
            name,
            detail,
            format!(
                "fix those rows in the source, or set {set} = {{ on_misfit = \"widen\" }} (a type that holds every value) or {{ on_misfit = \"null\" }} (NULL them)"
            ),
        );
    }
    if f.policy == MisfitPolicy::Null {
        detail.push_str("; they become NULL in the load and the stream (on_misfit = \"null\")");
        return Check::warn(
            SIDE,
            name,
            detail,
            "nothing to do if losing those values is acceptable; otherwise fix the rows or choose another policy",
        );
    }
    Check::warn(
        SIDE,
        name,
        detail,
        "fix or convert those rows in the source before the load, or accept the column type shown",
    )
}

/// The plan row of one table; default target schema is `public`.
pub fn table_plan(t: &SourceTable, tables: &TablesConfig) -> TablePlan {
    let id = &t.schema.id;
    let target = tables.target_name(id);
    let target = if &target == id {
        TableId::new("public", &id.name)
    } else {
        target
    };
    TablePlan::new(&t.schema, &target, Some(t.row_count))
}

/// The file path of a `sqlite:` source URL (for callers that need it).
pub fn source_path(config: &Config) -> Option<PathBuf> {
    match config.source.kind() {
        Ok(EndpointKind::Sqlite(p)) => Some(p),
        _ => None,
    }
}

/// Whether this process may write `path`, asked without opening it
/// (`access(2)`). Closing any descriptor of a file drops every POSIX lock
/// the process holds on it: a check that opened the file would take
/// SQLite's shared lock from a read running beside the checks (the run's
/// catalog read), and in rollback-journal mode a writer could then
/// rewrite pages under it ("database disk image is malformed").
fn may_write(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call;
    // `access` only reads it.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::access(c_path.as_ptr(), libc::W_OK) };
    rc == 0
}

/// `ferry run` writes the file (change capture): checked without writing.
fn write_check(path: &Path) -> Check {
    let shown = path.display();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_ok = may_write(path);
    let dir_ok = std::fs::metadata(dir).is_ok_and(|m| !m.permissions().readonly());
    if file_ok && dir_ok {
        Check::pass(
            SIDE,
            "write access",
            format!(
                "{shown} and its directory are writable (ferry run installs change capture; in rollback-journal mode it puts one copy of the file next to it while loading)"
            ),
        )
    } else {
        Check::fail(
            SIDE,
            "write access",
            format!(
                "{} is not writable: ferry run installs its change log and triggers in the file (and SQLite writes its journal or -wal/-shm files beside it)",
                if file_ok {
                    dir.display()
                } else {
                    path.display()
                }
            ),
            format!(
                "give ferry's user write access to {shown} and {}",
                dir.display()
            ),
        )
    }
}

/// What `ferry run` installs, or the state of an installed capture.
fn capture_check(conn: &rusqlite::Connection, catalog: &catalog::Catalog) -> Check {
    let installed = match crate::capture::load_tracked(conn) {
        Ok(t) => t,
        Err(e) => {
            return Check::fail(
                SIDE,
                "change capture",
                e.to_string(),
                e.fix().unwrap_or("run ferry cleanup").to_owned(),
            );
        }
    };
    if installed.is_empty() {
        let names: Vec<&str> = catalog
            .tables
            .iter()
            .map(|t| t.schema.id.name.as_str())
            .collect();
        return Check::pass(
            SIDE,
            "change capture",
            format!(
                "ferry run installs in the file: tables {}, {}, {}, {} (change log, captured tables, trim and snapshot marks, \
                 transaction epoch) and \
                 AFTER INSERT/UPDATE/DELETE triggers _ferry_ins_T, _ferry_upd_T, _ferry_del_T on {} table(s): {}; \
                 ferry cutover and ferry cleanup remove them",
                crate::capture::LOG_TABLE,
                crate::capture::TABLES_TABLE,
                crate::capture::STATE_TABLE,
                crate::capture::EPOCH_TABLE,
                names.len(),
                names.join(", ")
            ),
        );
    }
    for t in installed.values() {
        match crate::capture::check_table(conn, t) {
            Ok(change) => {
                if let Some(e) = crate::capture::schema_error(&t.name, &change) {
                    return Check::fail(
                        SIDE,
                        "change capture",
                        e.to_string(),
                        e.fix().unwrap_or_default().to_owned(),
                    );
                }
            }
            Err(e) => {
                return Check::fail(
                    SIDE,
                    "change capture",
                    e.to_string(),
                    e.fix().unwrap_or_default().to_owned(),
                );
            }
        }
    }
    Check::pass(
        SIDE,
        "change capture",
        format!(
            "installed for {} table(s); every captured table has its recorded schema or added columns",
            installed.len()
        ),
    )
}

/// Tables whose rows `INSERT OR REPLACE` can remove without a delete trigger.
fn replace_checks(conn: &rusqlite::Connection, catalog: &catalog::Catalog) -> Vec<Check> {
    let mut out = Vec::new();
    for t in &catalog.tables {
        let id = &t.schema.id;
        let names: Vec<String> = conn
            .prepare("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" AND origin <> 'pk'")
            .and_then(|mut s| s.query_map([&id.name], |r| r.get(0))?.collect())
            .unwrap_or_default();
        if !names.is_empty() {
            out.push(Check::warn(
                SIDE,
                format!("replace {id}"),
                format!(
                    "{id} has unique index(es) besides its key ({}): a row that INSERT OR REPLACE / REPLACE INTO removes through them \
                     fires no delete trigger (SQLite fires them only with PRAGMA recursive_triggers=ON), so that removal would not be carried",
                    names.join(", ")
                ),
                "if the application uses REPLACE on this table, have its connections run PRAGMA recursive_triggers=ON, or use INSERT … ON CONFLICT DO UPDATE",
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::plan::CheckStatus;
    use std::os::unix::fs::MetadataExt;

    /// Whether this process holds a POSIX lock on the file with inode `ino`
    /// (`/proc/locks`: `… POSIX ADVISORY READ <pid> <maj>:<min>:<ino> …`).
    fn locked_by_us(ino: u64) -> bool {
        let pid = std::process::id().to_string();
        let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
        locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 5
                && f[1] == "POSIX"
                && f[4] == pid
                && f[5].rsplit(':').next() == Some(ino.to_string().as_str())
        })
    }

    /// The write check runs beside the run's catalog read: it must not take
    /// the read's lock away (closing a descriptor of the file would drop
    /// every POSIX lock this process holds on it).
    #[test]
    fn the_write_check_leaves_a_running_reads_lock_on_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sqlite");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = delete; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        // A read transaction: SQLite's shared lock on the file.
        conn.execute_batch("BEGIN").unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let ino = std::fs::metadata(&path).unwrap().ino();
        assert!(locked_by_us(ino), "the read holds no lock on the file");

        let check = write_check(&path);
        assert_eq!(check.status, CheckStatus::Pass, "{}", check.detail);
        assert!(
            locked_by_us(ino),
            "the write check dropped the read's lock on the file"
        );
        conn.execute_batch("COMMIT").unwrap();
    }
}
