//! Change reader: change-log entries after a position → ferry events.
//!
//! Consumes `_ferry_changes` ([`crate::capture`]) after a [`ChangeLogSeq`]
//! (the snapshot's position, then each checkpoint) and emits, per entry in
//! `seq` order, `Relation` (before a table's first change and after each
//! carried ADD COLUMN), `Begin { final_position: seq - 1 }`, one `Change`,
//! `Commit { position: seq }`.
//!
//! Positions: a snapshot at `S` ([`crate::snapshot`]) holds every entry
//! with `seq <= S`. The checkpoint skips a commit at or before it, so
//! `Commit.position = seq` replays nothing of the snapshot; the per-table
//! snapshot skip drops a change whose `final_position` is before the
//! snapshot's, so `final_position = seq - 1` (`< S` exactly when `seq <=
//! S`) drops what a reloaded table already holds and nothing more — like
//! PostgreSQL's `final_lsn < end_lsn`.
//!
//! Transactions: a trigger cannot see any transaction identity in SQLite
//! (no txid, and `data_version` does not change for the writer's own
//! commits), so each entry is emitted as its own transaction. This stays
//! exact: entries of one source transaction commit together and are
//! consecutive in `seq` (SQLite has one writer at a time), so applying them
//! one after the other in `seq` order passes through every committed
//! source state in order; each entry's `seq` is a distinct position, so a
//! checkpoint between two entries of one source transaction resumes exactly
//! at the next entry — nothing lost, nothing doubled. Only the target may
//! briefly show part of a source transaction between two applier commits.
//!
//! Order: `seq` order is commit order, with no late gaps. A transaction
//! gets its numbers while it holds SQLite's single write lock and releases
//! the lock only by committing or rolling back (a rollback also returns its
//! numbers), so once the reader has seen entry N, no entry below N can
//! still commit.
//!
//! Invariants: positions strictly increase; every batch is read in one read
//! transaction that first checks every captured table's schema (see
//! [`crate::capture::classify`]), so entries are only emitted when no
//! change can have escaped capture up to that read; a position older than
//! the trim watermark is refused (entries after it are gone).
//!
//! Restart: [`ChangeReader::open`] needs only the file; resume with
//! [`ChangeReader::read_after`] from the checkpoint. Blocking: run on a
//! dedicated thread or `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use ferry_core::schema::quote_ident;
use ferry_core::value::Timestamp;
use ferry_core::{Change, ChangeLogSeq, Error, Event, OldRow, Row, TableId};
use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;

use crate::capture::{
    self, AddedColumn, LOG_TABLE, STATE_TABLE, SchemaChange, Tracked, parse_json_row, sql_error,
};
use crate::value;

const TRIMMED_KEY: &str = "trimmed_upto";
/// Entries deleted per write transaction when trimming.
const TRIM_CHUNK: i64 = 5000;

/// What one [`ChangeReader::read_after`] call produced.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event<ChangeLogSeq>>,
    /// The last entry's position (`None`: nothing new).
    pub last: Option<ChangeLogSeq>,
    /// Columns carried before this batch (ADD COLUMN).
    pub added: Vec<AddedColumn>,
}

/// Lag of a position behind the change log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// The last assigned sequence number (committed).
    pub head: ChangeLogSeq,
    /// Entries after the applied position.
    pub entries: u64,
    /// Seconds since the oldest entry not yet applied; 0 when caught up.
    pub seconds: f64,
}

/// Reads the change log of one file.
#[derive(Debug)]
pub struct ChangeReader {
    conn: Connection,
    tables: BTreeMap<String, Tracked>,
    announced: BTreeSet<String>,
    /// `PRAGMA schema_version` when the schema was last found intact.
    verified_version: Option<i64>,
}

impl ChangeReader {
    /// Opens the file read-write (carrying ADD COLUMN and trimming write).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = capture::open_read_write(path)
            .map_err(sql_error(format!("opening {}", path.display())))?;
        let tables = capture::load_tracked(&conn)?;
        if tables.is_empty() {
            return Err(Error::operator(
                format!("{} has no ferry change capture installed", path.display()),
                "start `ferry run`, which installs it",
            ));
        }
        Ok(ChangeReader {
            conn,
            tables,
            announced: BTreeSet::new(),
            verified_version: None,
        })
    }

    /// The captured tables.
    pub fn tables(&self) -> impl Iterator<Item = &Tracked> {
        self.tables.values()
    }

    /// Up to `limit` entries after `after`, as events. Carries ADD COLUMN
    /// first when a table gained columns; any other schema change is an
    /// operator error before anything past it is read.
    pub fn read_after(&mut self, after: ChangeLogSeq, limit: usize) -> Result<Batch, Error> {
        let mut added = Vec::new();
        loop {
            match self.read_once(after, limit)? {
                Ok(mut batch) => {
                    batch.added = added;
                    return Ok(batch);
                }
                Err(table) => {
                    let old = self.tables[&table].clone();
                    let (next, report) = capture::carry_added_columns(&mut self.conn, &old)?;
                    self.tables.insert(table.clone(), next);
                    self.announced.remove(&table);
                    self.verified_version = None;
                    added.extend(report);
                }
            }
        }
    }

    /// One read transaction; `Err(table)` when `table` gained columns.
    fn read_once(
        &mut self,
        after: ChangeLogSeq,
        limit: usize,
    ) -> Result<Result<Batch, String>, Error> {
        let ChangeReader {
            conn,
            tables,
            announced,
            verified_version,
        } = self;
        let tx = conn
            .transaction()
            .map_err(sql_error("reading the change log"))?;
        let version: i64 = tx
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(sql_error("reading the schema version"))?;
        if *verified_version != Some(version) {
            for t in tables.values() {
                match capture::check_table(&tx, t)? {
                    SchemaChange::Unchanged => {}
                    SchemaChange::AddedColumns(_) => return Ok(Err(t.name.clone())),
                    other => return Err(capture::stop(&t.name, &other)),
                }
            }
            *verified_version = Some(version);
        }
        let trimmed = trimmed_upto(&tx)?;
        if after < trimmed {
            return Err(Error::operator(
                format!(
                    "position {after} is behind the change log, which was trimmed up to {trimmed}: \
                     the entries after {after} are gone"
                ),
                "reload from a new snapshot: `ferry cleanup`, then `ferry run`",
            ));
        }
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT seq, tbl, op, old_key, row, at FROM {} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                quote_ident(LOG_TABLE)
            ))
            .map_err(sql_error("reading the change log"))?;
        let mut rows = stmt
            .query((after.0 as i64, limit as i64))
            .map_err(sql_error("reading the change log"))?;
        let mut batch = Batch::default();
        while let Some(r) = rows.next().map_err(sql_error("reading the change log"))? {
            let entry = Entry {
                seq: ChangeLogSeq(r.get::<_, i64>(0).map_err(sql_error("seq"))? as u64),
                table: r.get(1).map_err(sql_error("tbl"))?,
                op: r.get(2).map_err(sql_error("op"))?,
                old_key: r.get(3).map_err(sql_error("old_key"))?,
                row: r.get(4).map_err(sql_error("row"))?,
                at: r.get(5).map_err(sql_error("at"))?,
            };
            decode(tables, announced, entry, &mut batch)?;
        }
        drop(rows);
        drop(stmt);
        tx.commit().map_err(sql_error("reading the change log"))?;
        Ok(Ok(batch))
    }
}

fn decode(
    tables: &BTreeMap<String, Tracked>,
    announced: &mut BTreeSet<String>,
    e: Entry,
    batch: &mut Batch,
) -> Result<(), Error> {
    let Some(t) = tables.get(&e.table) else {
        return Err(Error::operator(
            format!(
                "change-log entry {} names {}, which ferry does not capture",
                e.seq,
                TableId::new(crate::catalog::SCHEMA, &e.table)
            ),
            "remove change capture (`ferry cleanup`) and start again",
        ));
    };
    let schema = t.schema();
    if announced.insert(e.table.clone()) {
        batch.events.push(Event::Relation(Arc::new(schema.clone())));
    }
    let id = schema.id.clone();
    let width = schema.columns.len();
    let row = |text: &str| -> Result<Row, Error> {
        let vals = parse_json_row(text, e.seq, &e.table)?;
        if vals.len() != width {
            return Err(Error::operator(
                format!(
                    "change-log entry {} of {id} has {} values, the table has {width} columns",
                    e.seq,
                    vals.len()
                ),
                "reload the table from a new snapshot: `ferry cleanup`, then `ferry run`",
            ));
        }
        typed(t, &vals, (0..width).collect::<Vec<_>>().as_slice(), e.seq)
    };
    let key = t.key();
    let old_image = |text: &str| -> Result<OldRow, Error> {
        if key.is_empty() {
            return row(text).map(OldRow::Full);
        }
        let vals = parse_json_row(text, e.seq, &e.table)?;
        if vals.len() != key.len() {
            return Err(Error::operator(
                format!("change-log entry {} of {id} has a malformed old key", e.seq),
                "reload the table from a new snapshot: `ferry cleanup`, then `ferry run`",
            ));
        }
        let mut full = vec![SqlValue::Null; width];
        for (v, &k) in vals.into_iter().zip(&key) {
            full[k] = v;
        }
        typed(t, &full, &key, e.seq).map(OldRow::Key)
    };
    let missing = |what: &str| {
        Error::operator(
            format!("change-log entry {} of {id} has no {what}", e.seq),
            "reload the table from a new snapshot: `ferry cleanup`, then `ferry run`",
        )
    };
    let change = match e.op.as_str() {
        "I" => Change::Insert {
            table: id.clone(),
            new: row(e.row.as_deref().ok_or_else(|| missing("row"))?)?,
        },
        "U" => {
            let new = row(e.row.as_deref().ok_or_else(|| missing("row"))?)?;
            let old = old_image(e.old_key.as_deref().ok_or_else(|| missing("old key"))?)?;
            // The old key only matters when it differs from the new one.
            let same_key =
                !key.is_empty() && key.iter().all(|&k| old.row().values[k] == new.values[k]);
            Change::Update {
                table: id.clone(),
                old: (!same_key).then_some(old),
                new,
            }
        }
        "D" => Change::Delete {
            table: id.clone(),
            old: old_image(e.old_key.as_deref().ok_or_else(|| missing("old key"))?)?,
        },
        other => {
            return Err(Error::operator(
                format!(
                    "change-log entry {} of {id} has unknown operation {other:?}",
                    e.seq
                ),
                "remove change capture (`ferry cleanup`) and start again",
            ));
        }
    };
    let time = at_time(e.at);
    batch.events.push(Event::Begin {
        xid: None,
        commit_time: time,
        final_position: Some(ChangeLogSeq(e.seq.0.saturating_sub(1))),
    });
    batch.events.push(Event::Change(change));
    batch.events.push(Event::Commit {
        position: e.seq,
        commit_time: time,
    });
    batch.last = Some(e.seq);
    Ok(())
}

impl ChangeReader {
    /// Deletes the entries up to `upto` (call after the target committed
    /// them) and records the watermark; in short write transactions so the
    /// application's writers barely wait. Returns the entries deleted.
    pub fn trim(&mut self, upto: ChangeLogSeq) -> Result<u64, Error> {
        trim(&mut self.conn, upto)
    }

    /// How far `applied` is behind the log.
    pub fn lag(&self, applied: ChangeLogSeq) -> Result<Lag, Error> {
        lag(&self.conn, applied)
    }
}

struct Entry {
    seq: ChangeLogSeq,
    table: String,
    op: String,
    old_key: Option<String>,
    row: Option<String>,
    at: Option<f64>,
}

fn at_time(at: Option<f64>) -> Timestamp {
    at.map_or_else(Timestamp::now, |s| {
        Timestamp::from_unix_micros((s * 1_000_000.0).round() as i64)
    })
}

/// Values at `cols` decoded by their column type; the rest NULL.
fn typed(t: &Tracked, vals: &[SqlValue], cols: &[usize], seq: ChangeLogSeq) -> Result<Row, Error> {
    let mut out = vec![ferry_core::Value::Null; t.columns.len()];
    for &i in cols {
        let c = &t.columns[i];
        out[i] = value::decode_column(&c.pg_type, c.misfit_null, (&vals[i]).into()).map_err(|why| {
            Error::operator(
                format!(
                    "change-log entry {seq} of {}: column {} ({}): {why}",
                    t.id(),
                    c.name,
                    c.pg_type
                ),
                format!(
                    "a value written during the migration does not fit the type ferry chose for {}.{} \
                     from the values it sampled; fix the row in the source, then start over: \
                     `ferry cleanup --state`, drop the migrated tables on the target, `ferry run` \
                     (`ferry plan` shows the type it will choose; tables.columns sets a column's type or its misfit policy, e.g. on_misfit = \"null\")",
                    t.id(),
                    c.name
                ),
            )
        })?;
    }
    Ok(Row::new(out))
}

/// The last assigned sequence number (0 before the first entry).
pub fn head(conn: &Connection) -> Result<ChangeLogSeq, Error> {
    let seq: Option<i64> = rusqlite::OptionalExtension::optional(conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = ?1",
        [LOG_TABLE],
        |r| r.get(0),
    ))
    .map_err(sql_error("reading the change-log head"))?;
    Ok(ChangeLogSeq(seq.unwrap_or(0).max(0) as u64))
}

fn trimmed_upto(conn: &Connection) -> Result<ChangeLogSeq, Error> {
    let v: Option<i64> = rusqlite::OptionalExtension::optional(conn.query_row(
        &format!(
            "SELECT value FROM {} WHERE key = ?1",
            quote_ident(STATE_TABLE)
        ),
        [TRIMMED_KEY],
        |r| r.get(0),
    ))
    .map_err(sql_error("reading the trim watermark"))?;
    Ok(ChangeLogSeq(v.unwrap_or(0).max(0) as u64))
}

pub(crate) fn trim(conn: &mut Connection, upto: ChangeLogSeq) -> Result<u64, Error> {
    let upto_i = i64::try_from(upto.0).unwrap_or(i64::MAX);
    let mut total = 0u64;
    loop {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_error("trimming the change log"))?;
        let n = tx
            .execute(
                &format!(
                    "DELETE FROM {log} WHERE seq IN (SELECT seq FROM {log} WHERE seq <= ?1 ORDER BY seq LIMIT ?2)",
                    log = quote_ident(LOG_TABLE)
                ),
                (upto_i, TRIM_CHUNK),
            )
            .map_err(sql_error("trimming the change log"))?;
        tx.execute(
            &format!(
                "INSERT INTO {}(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                quote_ident(STATE_TABLE)
            ),
            (TRIMMED_KEY, upto_i),
        )
        .map_err(sql_error("recording the trim watermark"))?;
        tx.commit().map_err(sql_error("trimming the change log"))?;
        total += n as u64;
        if (n as i64) < TRIM_CHUNK {
            tracing::debug!(upto = %upto, entries = total, "change log trimmed");
            return Ok(total);
        }
    }
}

pub(crate) fn lag(conn: &Connection, applied: ChangeLogSeq) -> Result<Lag, Error> {
    let head = head(conn)?;
    let oldest: Option<f64> = rusqlite::OptionalExtension::optional(conn.query_row(
        &format!(
            "SELECT at FROM {} WHERE seq > ?1 ORDER BY seq LIMIT 1",
            quote_ident(LOG_TABLE)
        ),
        [applied.0 as i64],
        |r| r.get(0),
    ))
    .map_err(sql_error("reading change-log lag"))?
    .flatten();
    let seconds = oldest.map_or(0.0, |at| {
        at_time(Some(at)).seconds_until(Timestamp::now()).max(0.0)
    });
    Ok(Lag {
        head,
        entries: head.0.saturating_sub(applied.0),
        seconds,
    })
}
