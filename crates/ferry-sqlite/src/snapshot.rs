//! Snapshot hand-off: every captured table's rows and the change-log
//! position they are consistent with.
//!
//! Consumes a file with change capture installed ([`crate::capture`]).
//! Emits, through a callback (memory stays bounded: rows are streamed, not
//! collected), each captured table's schema and rows, typed by
//! [`crate::value::decode`], and returns the position: the change-log head
//! ([`crate::reader::head`]) read in the SAME read transaction as the rows.
//!
//! Invariant (gap-free hand-off): a row change committed before the read
//! transaction started is in the rows and its entry has `seq <=` the
//! position; one committed after is not in the rows and its entry has
//! `seq >` the position. Both come from one snapshot of the file, so no
//! change is in neither or in both. The read transaction also checks that
//! every table is still captured with its recorded schema, so the stream
//! after the position misses nothing.
//!
//! In WAL mode the application keeps writing while the snapshot is read
//! ([`read`]). In rollback-journal mode a read holds a SHARED lock and
//! writers cannot commit until it ends (they wait up to their busy
//! timeout), so a snapshot read at the target's pace could block the
//! application for minutes. [`read_auto`] therefore first copies the file
//! with `VACUUM INTO` (one read transaction, a sequential page copy: the
//! writers' wait is as short as SQLite can make it) and reads rows and
//! position from the copy, which holds the change log and its sequence
//! exactly as of that one transaction. `ferry plan` explains this and
//! recommends WAL.
//!
//! Restart: nothing is kept; a new snapshot gives a new position.

use std::path::Path;

use ferry_core::schema::quote_ident;
use ferry_core::{ChangeLogSeq, Error, Row, TableSchema};
use rusqlite::Connection;

use crate::capture::{self, SchemaChange, sql_error};
use crate::{connect, reader, value};

/// Reads every captured table in one read transaction; `sink` gets each
/// row with its table's schema. Returns the position to stream after.
pub fn read(
    path: &Path,
    mut sink: impl FnMut(&TableSchema, Row) -> Result<(), Error>,
) -> Result<ChangeLogSeq, Error> {
    let mut conn =
        connect::open_read_only(path).map_err(sql_error(format!("opening {}", path.display())))?;
    read_with(&mut conn, &mut sink)
}

/// [`read`] in WAL mode; in any other journal mode through a `VACUUM INTO`
/// copy placed in `scratch` (a directory with room for the file), removed
/// afterwards.
pub fn read_auto(
    path: &Path,
    scratch: &Path,
    sink: impl FnMut(&TableSchema, Row) -> Result<(), Error>,
) -> Result<ChangeLogSeq, Error> {
    let conn =
        connect::open_read_only(path).map_err(sql_error(format!("opening {}", path.display())))?;
    // In rollback-journal mode a busy writer holds the file between its
    // transactions only briefly: wait for a turn as long as capture does.
    conn.busy_timeout(crate::capture::BUSY_TIMEOUT)
        .map_err(sql_error("setting the busy timeout"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(sql_error("reading the journal mode"))?;
    if mode.eq_ignore_ascii_case("wal") {
        drop(conn);
        return read(path, sink);
    }
    let copy = scratch.join(format!("ferry-snapshot-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&copy);
    let started = std::time::Instant::now();
    copy_file(&conn, path, &copy)?;
    tracing::info!(journal_mode = %mode, copy_ms = started.elapsed().as_millis() as u64, "snapshot copy taken");
    drop(conn);
    let result = read(&copy, sink);
    let _ = std::fs::remove_file(&copy);
    result
}

/// How often a busy `VACUUM INTO` is tried before giving up.
const COPY_ATTEMPTS: u32 = 10;

/// `VACUUM INTO copy` on `conn` (one read transaction of `path`). In
/// rollback-journal mode a writer that commits back to back can keep the
/// reader out beyond its busy timeout: a busy copy is tried again, with a
/// growing pause, before it fails (transient).
pub fn copy_file(conn: &Connection, path: &Path, copy: &Path) -> Result<(), Error> {
    let mut attempt = 1;
    loop {
        let _ = std::fs::remove_file(copy);
        match conn.execute("VACUUM INTO ?1", [copy.to_string_lossy().as_ref()]) {
            Ok(_) => return Ok(()),
            Err(e)
                if attempt < COPY_ATTEMPTS
                    && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) =>
            {
                tracing::debug!(attempt, "snapshot copy busy; trying again");
                std::thread::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)));
                attempt += 1;
            }
            Err(e) => {
                let _ = std::fs::remove_file(copy);
                return Err(sql_error(format!(
                    "copying {} to {} for the snapshot",
                    path.display(),
                    copy.display()
                ))(e));
            }
        }
    }
}

/// [`read`] on an open connection.
pub fn read_with(
    conn: &mut Connection,
    sink: &mut dyn FnMut(&TableSchema, Row) -> Result<(), Error>,
) -> Result<ChangeLogSeq, Error> {
    let tx = conn
        .transaction()
        .map_err(sql_error("starting the snapshot"))?;
    // The first read starts the read transaction: everything below sees
    // the same committed state.
    let position = reader::head(&tx)?;
    let tables = tracked_unchanged(&tx)?;
    for t in tables.values() {
        let schema = t.schema();
        let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sql = format!("SELECT {} FROM {}", cols.join(", "), quote_ident(&t.name));
        let mut stmt = tx
            .prepare(&sql)
            .map_err(sql_error(format!("reading {}", t.id())))?;
        let mut rows = stmt
            .query([])
            .map_err(sql_error(format!("reading {}", t.id())))?;
        while let Some(r) = rows
            .next()
            .map_err(sql_error(format!("reading {}", t.id())))?
        {
            let mut values = Vec::with_capacity(t.columns.len());
            for (i, c) in t.columns.iter().enumerate() {
                let v = r
                    .get_ref(i)
                    .map_err(sql_error(format!("reading {}", t.id())))?;
                values.push(value::decode_column(&c.pg_type, c.misfit_null, v).map_err(|why| {
                    Error::operator(
                        format!("snapshot of {}: column {} ({}): {why}", t.id(), c.name, c.pg_type),
                        format!(
                            "fix the value in the source row so that it fits {} (or set the column's type or misfit policy with tables.columns)",
                            c.pg_type
                        ),
                    )
                })?);
            }
            sink(&schema, Row::new(values))?;
        }
    }
    tx.commit().map_err(sql_error("ending the snapshot"))?;
    tracing::info!(position = %position, tables = tables.len(), "sqlite snapshot read");
    Ok(position)
}

/// The tables ferry's capture tracks, read in the snapshot's transaction,
/// each checked against its recorded schema: none tracked, or a table
/// changed other than by added columns, is an error with the fix; added
/// columns are a transient error (the snapshot is taken again).
pub(crate) fn tracked_unchanged(
    conn: &Connection,
) -> Result<std::collections::BTreeMap<String, capture::Tracked>, Error> {
    let tables = capture::load_tracked(conn)?;
    if tables.is_empty() {
        return Err(Error::operator(
            "no ferry change capture is installed in the source file",
            "start `ferry run`, which installs it before the snapshot",
        ));
    }
    for t in tables.values() {
        match capture::check_table(conn, t)? {
            SchemaChange::Unchanged => {}
            SchemaChange::AddedColumns(_) => {
                return Err(Error::transient(format!(
                    "{} gained columns before the snapshot",
                    t.id()
                ))
                .with_fix("ferry retries; the change reader carries the new columns"));
            }
            other => return Err(capture::stop(&t.name, &other)),
        }
    }
    Ok(tables)
}
