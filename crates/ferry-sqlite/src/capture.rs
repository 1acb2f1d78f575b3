//! Change capture: the change-log table and the triggers that fill it.
//!
//! SQLite has no change stream a second process can read, so ferry installs
//! one in the source file (`ferry run`; `ferry plan` lists the statements
//! from [`install_statements`] and needs write access):
//!
//! - `_ferry_changes(seq INTEGER PRIMARY KEY AUTOINCREMENT, tx, tbl, op,
//!   old_key, row, at)`: one entry per changed row, in commit order. `seq` is the
//!   position ([`ChangeLogSeq`]); AUTOINCREMENT never reuses a number, even
//!   after [`crate::reader::ChangeReader::trim`] emptied the table, so
//!   positions only grow. `op` is `I`/`U`/`D`; `row` is the new row (insert,
//!   update), `old_key` the old key (update, delete; the whole old row when
//!   the table has no primary key); `at` the Unix time of the statement;
//!   `tx` the epoch (below).
//! - `_ferry_epoch(n)`: one row, the current epoch, which each trigger
//!   copies into its entry's `tx` and the change reader increments (a
//!   short write transaction) when it needs a transaction boundary. A
//!   source transaction holds SQLite's single write lock from its first
//!   write to its commit, and so does the increment: every entry of one
//!   source transaction carries the same epoch, and where `tx` changes
//!   between two consecutive entries a source transaction ended. The
//!   reader uses this to apply whole source transactions
//!   ([`crate::reader`]). Cost: one read of a one-row table per captured
//!   row change.
//! - `AFTER INSERT/UPDATE/DELETE` triggers `_ferry_{ins,upd,del}_<table>` on
//!   each selected table. They run inside the application's transaction, so
//!   an entry commits (or rolls back) with the change it records, and since
//!   SQLite has one writer at a time, entries of one transaction are
//!   consecutive in `seq`.
//! - `_ferry_tables`: per captured table, the column definitions (name,
//!   declared type, NOT NULL, default, key position) and the PostgreSQL type
//!   chosen for each column: the schema fingerprint every batch is checked
//!   against, and the types a restarted reader decodes with.
//! - `_ferry_state`: how far the log was trimmed.
//!
//! Values are encoded as a JSON array in column order, exactly per storage
//! class: NULL → `null`, INTEGER → a JSON integer (all 64 bits), TEXT →
//! `"t…"`, REAL → `"r"` + `quote()` (SQLite prints enough digits to parse
//! back to the same double; ±Inf as `9.0e+999`), BLOB → `"b"` + hex. The
//! triggers have no constraint that can fail (no NOT NULL, CHECK or UNIQUE
//! on the log), so ferry never makes an application write fail.
//!
//! Schema changes are found from the schema itself ([`classify`]), in the
//! same read transaction as the entries they could affect: triggers gone
//! (the table was dropped and recreated — SQLite's 12-step ALTER TABLE
//! procedure — or the triggers were dropped) or any change other than
//! appended columns stops with an operator error before any entry past it
//! is read. `ALTER TABLE … ADD COLUMN` is carried by [`carry_added_columns`].
//!
//! Restart: everything lives in the source file. Installing again is a
//! no-op when nothing changed and carries columns added while ferry was
//! stopped; a reader resumes after any position not yet trimmed.
//!
//! Cost (measured with the SQLite 3.40 shell on the shared build machine,
//! a 9-column table, 200k inserts and 100k updates in two transactions):
//! 0.50 s without capture, 3.58 s with it — about 10 µs and 100 bytes of
//! log per captured row change, paid inside the application's write.

use std::collections::BTreeMap;

use ferry_core::schema::quote_ident;
use ferry_core::{ChangeLogSeq, Column, Error, ReplicaIdentity, TableId, TableSchema};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::catalog::{SCHEMA, SourceTable};
use crate::typemap::{self, Sample, Sampled};

mod codec;

pub use codec::parse_json_row;
use codec::{flat_json, json_row};

/// The change-log table.
pub const LOG_TABLE: &str = "_ferry_changes";
/// The captured tables and their fingerprints.
pub const TABLES_TABLE: &str = "_ferry_tables";
/// Trim watermark and snapshot marks.
pub const STATE_TABLE: &str = "_ferry_state";
/// One row: the epoch the triggers stamp on each entry (`tx`).
pub const EPOCH_TABLE: &str = "_ferry_epoch";
/// How long ferry's own statements wait for the application's locks.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The current time as Unix seconds (millisecond precision) in SQL.
const NOW_SQL: &str = "(julianday('now') - 2440587.5) * 86400.0";

/// Opens `path` read-write for ferry's own work (install, carry, trim,
/// fence) with a busy timeout, so the application's locks delay ferry and
/// never fail it.
pub fn open_read_write(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// One column as `PRAGMA table_xinfo` describes it, plus ferry's type choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub declared: String,
    pub not_null: bool,
    pub default: Option<String>,
    /// 1-based position in the primary key, 0 when not a key column.
    pub pk: i64,
    /// The PostgreSQL type (not part of the fingerprint).
    #[serde(default)]
    pub pg_type: String,
    /// Values that do not fit `pg_type` become NULL (type policy `null`;
    /// not part of the fingerprint).
    #[serde(default)]
    pub misfit_null: bool,
}

impl ColumnDef {
    /// Same definition in the source (the PostgreSQL choice aside).
    fn same_source(&self, other: &ColumnDef) -> bool {
        self.name == other.name
            && self.declared == other.declared
            && self.not_null == other.not_null
            && self.default == other.default
            && self.pk == other.pk
    }
}

/// A captured table as recorded in `_ferry_tables`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub name: String,
    pub columns: Vec<ColumnDef>,
}

impl Tracked {
    pub fn id(&self) -> TableId {
        TableId::new(SCHEMA, &self.name)
    }

    /// Indexes of the primary-key columns in key order (empty: no key).
    pub fn key(&self) -> Vec<usize> {
        let mut key: Vec<(i64, usize)> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pk > 0)
            .map(|(i, c)| (c.pk, i))
            .collect();
        key.sort();
        key.into_iter().map(|(_, i)| i).collect()
    }

    /// The schema ferry carries (types as chosen at install / carry time).
    pub fn schema(&self) -> TableSchema {
        let key = self.key();
        // An INTEGER PRIMARY KEY is the rowid (WITHOUT ROWID keys are NOT
        // NULL anyway): never NULL even when not declared NOT NULL.
        let alias = match key.as_slice() {
            [k] => Some(*k).filter(|&k| self.columns[k].declared.eq_ignore_ascii_case("INTEGER")),
            _ => None,
        };
        let columns = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| Column {
                name: c.name.clone(),
                source_type: c.declared.clone(),
                pg_type: c.pg_type.clone(),
                type_oid: None,
                nullable: (!c.not_null || c.misfit_null) && alias != Some(i),
            })
            .collect();
        TableSchema {
            id: self.id(),
            columns,
            key,
            replica_identity: ReplicaIdentity::Full,
        }
    }
}

/// What happened to a captured table since it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaChange {
    Unchanged,
    /// Columns appended (`ALTER TABLE … ADD COLUMN`); carried.
    AddedColumns(Vec<ColumnDef>),
    /// ferry's triggers are gone: the table was dropped and recreated (or
    /// the triggers were dropped); changes since then were not captured.
    Rebuilt,
    /// The table no longer exists under its name.
    Dropped,
    /// Any other change (renamed or retyped column, …), described.
    Altered(String),
}

/// Decides what happened to a table (pure; table-driven tests below).
///
/// `triggers_present`: all three ferry triggers exist on the table;
/// `triggers_match`: their SQL is what ferry installed for `recorded`
/// (SQLite rewrites trigger bodies on RENAME COLUMN).
pub fn classify(
    recorded: &[ColumnDef],
    current: Option<&[ColumnDef]>,
    triggers_present: bool,
    triggers_match: bool,
) -> SchemaChange {
    let Some(current) = current else {
        return SchemaChange::Dropped;
    };
    if !triggers_present {
        return SchemaChange::Rebuilt;
    }
    let common = recorded.len().min(current.len());
    if let Some(i) = (0..common).find(|&i| !recorded[i].same_source(&current[i])) {
        let (a, b) = (&recorded[i], &current[i]);
        let what = if a.name != b.name {
            format!("column {} is now named {}", a.name, b.name)
        } else {
            format!(
                "column {} changed definition (type {:?} → {:?}, not null {} → {}, default {:?} → {:?}, key {} → {})",
                a.name,
                a.declared,
                b.declared,
                a.not_null,
                b.not_null,
                a.default,
                b.default,
                a.pk,
                b.pk
            )
        };
        return SchemaChange::Altered(what);
    }
    if current.len() < recorded.len() {
        let gone: Vec<&str> = recorded[common..].iter().map(|c| c.name.as_str()).collect();
        return SchemaChange::Altered(format!("column(s) {} dropped", gone.join(", ")));
    }
    if !triggers_match {
        return SchemaChange::Altered("ferry's triggers were modified".to_owned());
    }
    if current.len() == recorded.len() {
        SchemaChange::Unchanged
    } else {
        SchemaChange::AddedColumns(current[common..].to_vec())
    }
}

/// [`schema_error`] for a change already known not to be carried.
pub(crate) fn stop(table: &str, change: &SchemaChange) -> Error {
    schema_error(table, change).unwrap_or_else(|| {
        Error::transient(format!(
            "{} changed while ferry checked it",
            TableId::new(SCHEMA, table)
        ))
    })
}

/// The operator error for a change ferry does not carry.
pub fn schema_error(table: &str, change: &SchemaChange) -> Option<Error> {
    let id = TableId::new(SCHEMA, table);
    let reload = format!(
        "to carry {id} again, reload it from a new snapshot: `ferry cleanup`, then `ferry run`; \
         during a migration change schemas only with ALTER TABLE … ADD COLUMN, which ferry carries"
    );
    let context = match change {
        SchemaChange::Unchanged | SchemaChange::AddedColumns(_) => return None,
        SchemaChange::Rebuilt => format!(
            "{id} was rebuilt or ferry's triggers on it were dropped (SQLite's ALTER TABLE procedure drops \
             the table and its triggers): changes written since then were not captured"
        ),
        SchemaChange::Dropped => format!("{id} no longer exists (dropped or renamed)"),
        SchemaChange::Altered(what) => format!("{id} changed schema: {what}"),
    };
    Some(Error::operator(context, reload))
}

pub(crate) fn sql_error(what: impl std::fmt::Display) -> impl FnOnce(rusqlite::Error) -> Error {
    let what = what.to_string();
    move |e| {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        let err = if busy {
            Error::transient(format!("{what}: source file busy"))
        } else {
            // SQLite quotes whole statements in some messages: keep it short.
            let text: String = e.to_string().chars().take(300).collect();
            Error::operator(
                format!("{what}: {text}"),
                "check that ferry can read and write the source file and its directory",
            )
        };
        err.with_source(e)
    }
}

/// Current column definitions, `None` when the table does not exist.
pub fn read_columns(conn: &Connection, table: &str) -> Result<Option<Vec<ColumnDef>>, Error> {
    let ctx = || format!("reading columns of {}", TableId::new(SCHEMA, table));
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_xinfo({})", quote_ident(table)))
        .map_err(sql_error(ctx()))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                ColumnDef {
                    name: r.get("name")?,
                    declared: r.get::<_, Option<String>>("type")?.unwrap_or_default(),
                    not_null: r.get::<_, i64>("notnull")? != 0,
                    default: r.get("dflt_value")?,
                    pk: r.get("pk")?,
                    pg_type: String::new(),
                    misfit_null: false,
                },
                r.get::<_, i64>("hidden")?,
            ))
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(sql_error(ctx()))?;
    let cols: Vec<ColumnDef> = rows
        .into_iter()
        .filter(|(_, h)| *h != 1)
        .map(|(c, _)| c)
        .collect();
    Ok((!cols.is_empty()).then_some(cols))
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Compiles (never runs) a statement of each kind on `table`: SQLite
/// compiles trigger bodies into the statements that fire them, so a
/// trigger that cannot compile is found here, at install, instead of
/// failing the application's writes.
fn compile_check(conn: &Connection, t: &Tracked) -> Result<(), Error> {
    let q = quote_ident(&t.name);
    let first = quote_ident(&t.columns[0].name);
    for sql in [
        format!("INSERT INTO {q} DEFAULT VALUES"),
        format!("UPDATE {q} SET {first} = {first} WHERE 0"),
        format!("DELETE FROM {q} WHERE 0"),
    ] {
        conn.prepare(&sql).map_err(|e| {
            Error::operator(
                format!(
                    "ferry's change-capture triggers on {} do not compile ({e}); installing them would fail the application's writes",
                    t.id()
                ),
                format!("exclude {} (tables.exclude) and report this with the table's schema", t.id()),
            )
        })?;
    }
    Ok(())
}

fn trigger_name(op: &str, table: &str) -> String {
    format!("_ferry_{op}_{table}")
}

/// The three trigger statements for `t` (the SQL stored in sqlite_master).
pub fn trigger_statements(t: &Tracked) -> [(String, String); 3] {
    let all: Vec<&ColumnDef> = t.columns.iter().collect();
    let key = t.key();
    let old_key: Vec<&ColumnDef> = if key.is_empty() {
        all.clone()
    } else {
        key.iter().map(|&i| &t.columns[i]).collect()
    };
    let q = quote_ident(&t.name);
    let tbl = sql_literal(&t.name);
    let log = quote_ident(LOG_TABLE);
    let epoch = format!("(SELECT n FROM {})", quote_ident(EPOCH_TABLE));
    let body = |op: &str, old: String, new: String| {
        format!(
            "INSERT INTO {log}(tx, tbl, op, old_key, row, at) VALUES ({epoch}, {tbl}, '{op}', {old}, {new}, {NOW_SQL})"
        )
    };
    let make = |name: &str, event: &str, stmt: String| {
        let n = trigger_name(name, &t.name);
        let sql = format!(
            "CREATE TRIGGER {} AFTER {event} ON {q} BEGIN {stmt}; END",
            quote_ident(&n)
        );
        (n, sql)
    };
    [
        make(
            "ins",
            "INSERT",
            body("I", "NULL".into(), json_row("NEW", &all)),
        ),
        make(
            "upd",
            "UPDATE",
            body("U", json_row("OLD", &old_key), json_row("NEW", &all)),
        ),
        make(
            "del",
            "DELETE",
            body("D", json_row("OLD", &old_key), "NULL".into()),
        ),
    ]
}

/// The log and bookkeeping tables (idempotent statements).
pub fn log_statements() -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (seq INTEGER PRIMARY KEY AUTOINCREMENT, tx INTEGER, tbl TEXT, \
             op TEXT, old_key TEXT, row TEXT, at REAL)",
            quote_ident(LOG_TABLE)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (n INTEGER NOT NULL)",
            quote_ident(EPOCH_TABLE)
        ),
        format!(
            "INSERT INTO {t}(rowid, n) SELECT 1, 0 WHERE NOT EXISTS (SELECT 1 FROM {t})",
            t = quote_ident(EPOCH_TABLE)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (tbl TEXT PRIMARY KEY, columns TEXT NOT NULL)",
            quote_ident(TABLES_TABLE)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            quote_ident(STATE_TABLE)
        ),
    ]
}

/// Everything [`install`] executes for `tables` on a file without capture:
/// what `ferry plan` shows.
pub fn install_statements(tables: &[SourceTable]) -> Result<Vec<String>, Error> {
    let mut out = log_statements();
    for t in tables {
        let tracked = tracked_from(t, columns_of(t))?;
        out.extend(trigger_statements(&tracked).into_iter().map(|(_, sql)| sql));
    }
    Ok(out)
}

fn columns_of(t: &SourceTable) -> Vec<ColumnDef> {
    // Only used to render statements: the pk order is all triggers need.
    t.schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| ColumnDef {
            name: c.name.clone(),
            declared: c.source_type.clone(),
            not_null: !c.nullable,
            default: None,
            pk: t
                .schema
                .key
                .iter()
                .position(|&k| k == i)
                .map_or(0, |p| p as i64 + 1),
            pg_type: c.pg_type.clone(),
            misfit_null: t.null_misfits.get(i).copied().unwrap_or(false),
        })
        .collect()
}

/// Joins the catalog's type choices onto the current column definitions.
fn tracked_from(t: &SourceTable, current: Vec<ColumnDef>) -> Result<Tracked, Error> {
    let id = &t.schema.id;
    let names: Vec<&str> = current.iter().map(|c| c.name.as_str()).collect();
    let planned: Vec<&str> = t.schema.columns.iter().map(|c| c.name.as_str()).collect();
    if names != planned {
        return Err(Error::transient(format!(
            "{id} changed while ferry installed change capture (columns {planned:?} → {names:?})"
        ))
        .with_fix("run ferry again; it re-reads the schema"));
    }
    let columns = current
        .into_iter()
        .zip(&t.schema.columns)
        .enumerate()
        .map(|(i, (mut c, planned))| {
            c.pg_type = planned.pg_type.clone();
            c.misfit_null = t.null_misfits.get(i).copied().unwrap_or(false);
            c
        })
        .collect();
    Ok(Tracked {
        name: t.schema.id.name.clone(),
        columns,
    })
}

/// What [`install`] did per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// Triggers created now.
    New(String),
    /// Already captured with the same schema: nothing done.
    Present(String),
    /// Already captured; columns added since (e.g. while ferry was
    /// stopped) were carried ([`carry_added_columns`]).
    Carried(String, Vec<AddedColumn>),
}

/// Installs the change log and the triggers of `tables` (from
/// [`crate::catalog::read`]) in one write transaction. Idempotent: a table
/// already captured with an unchanged schema is left as it is, one that
/// only gained columns has them carried; any other schema change is an
/// operator error (see [`schema_error`]).
pub fn install(conn: &mut Connection, tables: &[SourceTable]) -> Result<Vec<Installed>, Error> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error("installing change capture"))?;
    for stmt in log_statements() {
        tx.execute_batch(&stmt)
            .map_err(sql_error("creating the change log"))?;
    }
    let recorded = load_tracked(&tx)?;
    let mut out = Vec::new();
    let mut to_carry = Vec::new();
    for t in tables {
        let name = &t.schema.id.name;
        if let Some(rec) = recorded.get(name) {
            match check_table(&tx, rec)? {
                SchemaChange::Unchanged => out.push(Installed::Present(name.clone())),
                SchemaChange::AddedColumns(_) => to_carry.push(rec.clone()),
                other => return Err(stop(name, &other)),
            }
            continue;
        }
        let current = read_columns(&tx, name)?.ok_or_else(|| {
            Error::transient(format!("{} disappeared during install", t.schema.id))
        })?;
        let tracked = tracked_from(t, current)?;
        for (_, sql) in trigger_statements(&tracked) {
            tx.execute_batch(&sql)
                .map_err(sql_error(format!("creating triggers on {}", t.schema.id)))?;
        }
        compile_check(&tx, &tracked)?;
        save_tracked(&tx, &tracked)?;
        tracing::info!(table = %t.schema.id, "change capture installed");
        out.push(Installed::New(name.clone()));
    }
    tx.commit()
        .map_err(sql_error("installing change capture"))?;
    for rec in to_carry {
        let (_, added) = carry_added_columns(conn, &rec)?;
        out.push(Installed::Carried(rec.name.clone(), added));
    }
    Ok(out)
}

/// Removes every trigger and table ferry installed, in one transaction
/// (triggers first: a trigger must never outlive the log it writes to).
/// Idempotent.
pub fn uninstall(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error("removing change capture"))?;
    remove_all(&tx)?;
    tx.commit().map_err(sql_error("removing change capture"))
}

/// The body of [`uninstall`], inside the caller's write transaction.
pub(crate) fn remove_all(conn: &Connection) -> Result<(), Error> {
    let triggers: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_ferry\\_%' ESCAPE '\\'",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(sql_error("listing ferry's triggers"))?;
    for t in triggers {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(&t)))
            .map_err(sql_error(format!("dropping trigger {t}")))?;
    }
    for t in [LOG_TABLE, TABLES_TABLE, STATE_TABLE, EPOCH_TABLE] {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote_ident(t)))
            .map_err(sql_error(format!("dropping {t}")))?;
    }
    tracing::info!("change capture removed");
    Ok(())
}

/// The captured tables recorded in the file (empty if none).
pub fn load_tracked(conn: &Connection) -> Result<BTreeMap<String, Tracked>, Error> {
    let exists: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [TABLES_TABLE],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(sql_error("reading ferry's table list"))?;
    if !exists {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(String, String)> = conn
        .prepare(&format!(
            "SELECT tbl, columns FROM {} ORDER BY tbl",
            quote_ident(TABLES_TABLE)
        ))
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(sql_error("reading ferry's table list"))?;
    rows.into_iter()
        .map(|(name, cols)| {
            let columns: Vec<ColumnDef> = serde_json::from_str(&cols).map_err(|e| {
                Error::operator(
                    format!("{TABLES_TABLE} row for {name} is damaged"),
                    "remove change capture (`ferry cleanup`) and start again",
                )
                .with_source(e)
            })?;
            Ok((name.clone(), Tracked { name, columns }))
        })
        .collect()
}

fn save_tracked(conn: &Connection, t: &Tracked) -> Result<(), Error> {
    let cols = serde_json::to_string(&t.columns)
        .map_err(|e| Error::operator("encoding column list", "report this bug").with_source(e))?;
    conn.execute(
        &format!(
            "INSERT INTO {}(tbl, columns) VALUES (?1, ?2) ON CONFLICT(tbl) DO UPDATE SET columns = excluded.columns",
            quote_ident(TABLES_TABLE)
        ),
        (&t.name, &cols),
    )
    .map_err(sql_error(format!("recording {}", t.id())))?;
    Ok(())
}

/// Compares a recorded table with the file's schema (triggers included).
pub fn check_table(conn: &Connection, t: &Tracked) -> Result<SchemaChange, Error> {
    let current = read_columns(conn, &t.name)?;
    let expected = trigger_statements(t);
    let mut present = true;
    let mut matching = true;
    for (name, sql) in &expected {
        let found: Option<(String, String)> = conn
            .query_row(
                "SELECT tbl_name, sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql_error(format!("checking triggers of {}", t.id())))?;
        match found {
            Some((tbl, _)) if tbl != t.name => present = false,
            Some((_, found_sql)) => matching &= &found_sql == sql,
            None => present = false,
        }
    }
    Ok(classify(&t.columns, current.as_deref(), present, matching))
}

/// A column `ALTER TABLE … ADD COLUMN` added and ferry now carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedColumn {
    pub table: TableId,
    pub column: String,
    pub pg_type: String,
}

/// Carries appended columns of `t`: in one write transaction (the
/// application's writers wait), re-checks the schema, chooses the new
/// columns' PostgreSQL types from their values, completes the entries the
/// old triggers wrote since the ADD COLUMN (their rows lack the new
/// columns: filled from the row's current values by primary key — later
/// entries of the same row follow them, so the target ends equal), and
/// reinstalls the triggers with every column. A table without a primary
/// key whose log holds such short entries cannot be completed exactly: an
/// operator error.
pub fn carry_added_columns(
    conn: &mut Connection,
    t: &Tracked,
) -> Result<(Tracked, Vec<AddedColumn>), Error> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error(format!("carrying added columns of {}", t.id())))?;
    let added = match check_table(&tx, t)? {
        SchemaChange::AddedColumns(added) => added,
        SchemaChange::Unchanged => return Ok((t.clone(), Vec::new())),
        other => return Err(stop(&t.name, &other)),
    };
    let mut next = t.clone();
    for mut c in added {
        c.pg_type = infer_column(&tx, &t.name, &c)?;
        next.columns.push(c);
    }
    fill_short_entries(&tx, t, &next)?;
    for (name, _) in trigger_statements(t) {
        tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(&name)))
            .map_err(sql_error(format!("replacing triggers of {}", t.id())))?;
    }
    for (_, sql) in trigger_statements(&next) {
        tx.execute_batch(&sql)
            .map_err(sql_error(format!("replacing triggers of {}", t.id())))?;
    }
    compile_check(&tx, &next)?;
    save_tracked(&tx, &next)?;
    tx.commit()
        .map_err(sql_error(format!("carrying added columns of {}", t.id())))?;
    let report: Vec<AddedColumn> = next.columns[t.columns.len()..]
        .iter()
        .map(|c| AddedColumn {
            table: t.id(),
            column: c.name.clone(),
            pg_type: c.pg_type.clone(),
        })
        .collect();
    for a in &report {
        tracing::info!(table = %a.table, column = %a.column, pg_type = %a.pg_type, "added column carried");
    }
    Ok((next, report))
}

fn infer_column(conn: &Connection, table: &str, c: &ColumnDef) -> Result<String, Error> {
    let sql = format!(
        "SELECT {} FROM {} LIMIT {}",
        quote_ident(&c.name),
        quote_ident(table),
        crate::catalog::SAMPLE_ROWS
    );
    let samples: Vec<Sample> = conn
        .prepare(&sql)
        .and_then(|mut s| {
            s.query_map([], |r| {
                let value = match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Null => Sampled::Null,
                    rusqlite::types::ValueRef::Integer(i) => Sampled::Integer(i),
                    rusqlite::types::ValueRef::Real(f) => Sampled::Real(f),
                    rusqlite::types::ValueRef::Text(t) => {
                        Sampled::Text(String::from_utf8_lossy(t).chars().take(64).collect())
                    }
                    rusqlite::types::ValueRef::Blob(_) => Sampled::Blob,
                };
                Ok(Sample { rowid: None, value })
            })?
            .collect()
        })
        .map_err(sql_error(format!("sampling {table}.{}", c.name)))?;
    Ok(typemap::infer(&c.declared, false, &samples).pg_type)
}

/// Completes entries of `old` written before its triggers were replaced.
fn fill_short_entries(conn: &Connection, old: &Tracked, next: &Tracked) -> Result<(), Error> {
    let n_old = old.columns.len();
    let log = quote_ident(LOG_TABLE);
    let key = old.key();
    let all: Vec<(i64, Option<String>, Option<String>)> = conn
        .prepare(&format!(
            "SELECT seq, row, old_key FROM {log} WHERE tbl = ?1 ORDER BY seq"
        ))
        .and_then(|mut s| {
            s.query_map([&old.name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(sql_error(format!("reading change log of {}", old.id())))?;
    let width = |text: &Option<String>, seq: i64| -> Result<Option<usize>, Error> {
        text.as_deref()
            .map(|t| parse_json_row(t, ChangeLogSeq(seq as u64), &old.name).map(|v| v.len()))
            .transpose()
    };
    let mut short = Vec::new();
    for (seq, row, old_key) in all {
        let row_short = width(&row, seq)? == Some(n_old);
        // Without a key, the old image is the whole row and is short too.
        let old_short = key.is_empty() && width(&old_key, seq)? == Some(n_old);
        if row_short || old_short {
            short.push((seq, row));
        }
    }
    if short.is_empty() {
        return Ok(());
    }
    let added = &next.columns[old.columns.len()..];
    let added_json = json_row("t", &added.iter().collect::<Vec<_>>());
    let cond: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, &k)| format!("t.{} IS ?{}", quote_ident(&old.columns[k].name), i + 1))
        .collect();
    let lookup = format!(
        "SELECT {added_json} FROM {} AS t WHERE {}",
        quote_ident(&old.name),
        cond.join(" AND ")
    );
    let mut stmt = conn
        .prepare(&lookup)
        .map_err(sql_error(format!("reading {}", old.id())))?;
    let nulls = format!("[{}]", vec!["null"; added.len()].join(","));
    for (seq, row) in short {
        let Some(row) = row else { continue };
        let values = parse_json_row(&row, ChangeLogSeq(seq as u64), &old.name)?;
        if values.len() != old.columns.len() {
            continue;
        }
        let params: Vec<SqlValue> = key.iter().map(|&k| values[k].clone()).collect();
        let fill: String = stmt
            .query_row(rusqlite::params_from_iter(params), |r| r.get(0))
            .optional()
            .map_err(sql_error(format!("reading {}", old.id())))?
            .unwrap_or_else(|| nulls.clone());
        let mut merged = flat_json(&row);
        merged.extend(flat_json(&fill));
        let text = serde_json::Value::Array(merged).to_string();
        conn.execute(
            &format!("UPDATE {log} SET row = ?1 WHERE seq = ?2"),
            (&text, seq),
        )
        .map_err(sql_error(format!("completing change-log entry {seq}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, declared: &str, pk: i64) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            declared: declared.into(),
            not_null: false,
            default: None,
            pk,
            pg_type: String::new(),
            misfit_null: false,
        }
    }

    #[test]
    fn schema_changes_are_classified() {
        let rec = vec![col("id", "INTEGER", 1), col("name", "TEXT", 0)];
        let mut added = rec.clone();
        added.push(col("email", "TEXT", 0));
        let mut renamed = rec.clone();
        renamed[1].name = "title".into();
        let mut retyped = rec.clone();
        retyped[1].declared = "BLOB".into();
        let dropped = vec![rec[0].clone()];
        let cases: Vec<(Option<&[ColumnDef]>, bool, bool, SchemaChange)> = vec![
            (Some(&rec), true, true, SchemaChange::Unchanged),
            (
                Some(&added),
                true,
                true,
                SchemaChange::AddedColumns(vec![col("email", "TEXT", 0)]),
            ),
            (Some(&rec), false, false, SchemaChange::Rebuilt),
            (Some(&added), false, false, SchemaChange::Rebuilt),
            (None, false, false, SchemaChange::Dropped),
            (
                Some(&renamed),
                true,
                false,
                SchemaChange::Altered("column name is now named title".into()),
            ),
            (
                Some(&dropped),
                true,
                true,
                SchemaChange::Altered("column(s) name dropped".into()),
            ),
            (
                Some(&rec),
                true,
                false,
                SchemaChange::Altered("ferry's triggers were modified".into()),
            ),
        ];
        for (current, present, matching, want) in cases {
            assert_eq!(
                classify(&rec, current, present, matching),
                want,
                "{current:?}"
            );
        }
        assert!(
            matches!(classify(&rec, Some(&retyped), true, true), SchemaChange::Altered(s) if s.contains("\"TEXT\" → \"BLOB\""))
        );
    }
}
