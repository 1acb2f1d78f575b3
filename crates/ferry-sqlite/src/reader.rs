//! Change reader: change-log entries after a position → ferry events.
//!
//! Consumes `_ferry_changes` ([`crate::capture`]) after a [`ChangeLogSeq`]
//! (the snapshot's position, then each checkpoint) and emits, in `seq`
//! order, groups of entries as transactions: `Begin { final_position:
//! first seq - 1 }`, the entries' `Change`s (a table's `Relation` before
//! its first change and after each carried ADD COLUMN), `Commit {
//! position: last seq }`.
//!
//! Positions: a snapshot at `S` ([`crate::snapshot`]) holds every entry
//! with `seq <= S`. The checkpoint skips a commit at or before it, so
//! `Commit.position = last seq` replays nothing of the snapshot; the
//! per-table snapshot skip drops a change whose `final_position` is
//! before the snapshot's, so `final_position = first seq - 1` (`< S`
//! exactly when the group's entries are all `<= S`, as a group never
//! spans a snapshot position, below) drops what a reloaded table already
//! holds and nothing more — like PostgreSQL's `final_lsn < end_lsn`.
//!
//! Transactions: SQLite gives a trigger no transaction identity, so the
//! groups come from two facts. (1) A read transaction sees only committed
//! entries, so everything up to the head it sees is whole source
//! transactions. (2) Each entry carries the epoch its trigger read from
//! `_ferry_epoch`; every entry of one source transaction has the same
//! epoch (the transaction holds the write lock that incrementing the epoch
//! needs), so where the epoch changes, a source transaction ended. A group
//! therefore ends (`Commit`) where the epoch changes, at a snapshot
//! position recorded by [`mark_snapshot`] (a source transaction boundary
//! too), and at the end of a read that reached the head; the target never
//! shows part of a source transaction. A read cut short by its entry limit
//! emits up to the last such boundary in it and reads the rest again next
//! time; when it holds no boundary (one epoch longer than the limit, e.g.
//! the backlog written during the load), its entries are emitted as an
//! open transaction that the next reads continue (the applier applies a
//! transaction larger than its buffer in pieces behind a savepoint:
//! memory stays bounded, the target transaction is as large as the
//! source's writes of that epoch). While its reads are cut short the
//! reader increments the epoch every [`EPOCH_EVERY`] (a short write
//! transaction; a busy file postpones it), so an open transaction ends and
//! the ones after it hold about that much of the application's writes.
//! Each read holds at most `limit` entries in memory.
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
use std::time::Instant;

use ferry_core::schema::quote_ident;
use ferry_core::value::Timestamp;
use ferry_core::{Change, ChangeLogSeq, Error, Event, OldRow, Row, TableId};
use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;

use crate::capture::{
    self, AddedColumn, EPOCH_TABLE, LOG_TABLE, STATE_TABLE, SchemaChange, Tracked, parse_json_row,
    sql_error,
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
    /// The last entry emitted of a transaction not yet committed.
    open: Option<Last>,
    /// When the epoch was last incremented.
    bumped: Option<Instant>,
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
            open: None,
            bumped: None,
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
        let read = match self.read_entries(after, limit)? {
            Ok(read) => read,
            Err(table) => return Ok(Err(table)),
        };
        let Read {
            entries,
            marks,
            epoch_now,
        } = read;
        let reached_head = entries.len() < limit;
        let (take, boundary) = if reached_head {
            (entries.len(), true)
        } else {
            last_boundary(&entries, &marks)
        };
        let mut batch = Batch::default();
        for e in entries.into_iter().take(take) {
            if let Some(prev) = self.open
                && (prev.epoch != e.epoch || marks.contains(&prev.seq.0))
            {
                batch.events.push(commit(prev));
                self.open = None;
            }
            if self.open.is_none() {
                batch.events.push(Event::Begin {
                    xid: None,
                    commit_time: at_time(e.at),
                    final_position: Some(ChangeLogSeq(e.seq.0.saturating_sub(1))),
                });
            }
            let last = Last {
                seq: e.seq,
                epoch: e.epoch,
                at: e.at,
            };
            decode(&self.tables, &mut self.announced, e, &mut batch)?;
            self.open = Some(last);
            batch.last = Some(last.seq);
        }
        if boundary && let Some(prev) = self.open.take() {
            batch.events.push(commit(prev));
        }
        // Behind the head: end the current epoch (at most every
        // EPOCH_EVERY), so that a transaction left open ends and the
        // transactions ahead stay about that long.
        let behind = !reached_head || self.open.is_some_and(|o| o.epoch == epoch_now);
        if behind && self.bumped.is_none_or(|t| t.elapsed() >= EPOCH_EVERY) {
            self.next_epoch()?;
            self.bumped = Some(Instant::now());
        }
        Ok(Ok(batch))
    }

    /// The entries after `after` (at most `limit`), read in one read
    /// transaction that first checks every captured table's schema;
    /// `Err(table)` when `table` gained columns.
    fn read_entries(
        &mut self,
        after: ChangeLogSeq,
        limit: usize,
    ) -> Result<Result<Read, String>, Error> {
        let tx = self
            .conn
            .transaction()
            .map_err(sql_error("reading the change log"))?;
        let version: i64 = tx
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(sql_error("reading the schema version"))?;
        if self.verified_version != Some(version) {
            for t in self.tables.values() {
                match capture::check_table(&tx, t)? {
                    SchemaChange::Unchanged => {}
                    SchemaChange::AddedColumns(_) => return Ok(Err(t.name.clone())),
                    other => return Err(capture::stop(&t.name, &other)),
                }
            }
            self.verified_version = Some(version);
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
        let epoch_now = current_epoch(&tx)?;
        let marks = snapshot_marks(&tx, after)?;
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT seq, tx, tbl, op, old_key, row, at FROM {} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                quote_ident(LOG_TABLE)
            ))
            .map_err(sql_error("reading the change log"))?;
        let mut rows = stmt
            .query((after.0 as i64, limit as i64))
            .map_err(sql_error("reading the change log"))?;
        let mut entries = Vec::new();
        while let Some(r) = rows.next().map_err(sql_error("reading the change log"))? {
            entries.push(Entry {
                seq: ChangeLogSeq(r.get::<_, i64>(0).map_err(sql_error("seq"))? as u64),
                epoch: r.get(1).map_err(sql_error("tx"))?,
                table: r.get(2).map_err(sql_error("tbl"))?,
                op: r.get(3).map_err(sql_error("op"))?,
                old_key: r.get(4).map_err(sql_error("old_key"))?,
                row: r.get(5).map_err(sql_error("row"))?,
                at: r.get(6).map_err(sql_error("at"))?,
            });
        }
        drop(rows);
        drop(stmt);
        tx.commit().map_err(sql_error("reading the change log"))?;
        Ok(Ok(Read {
            entries,
            marks,
            epoch_now,
        }))
    }

    /// Increments the epoch (a short write transaction; a busy file just
    /// postpones it to the next read).
    fn next_epoch(&mut self) -> Result<(), Error> {
        self.conn
            .busy_handler(Some(epoch_busy))
            .map_err(sql_error("setting the busy handler"))?;
        let result = self.conn.execute(
            &format!("UPDATE {} SET n = n + 1", quote_ident(EPOCH_TABLE)),
            [],
        );
        self.conn
            .busy_timeout(capture::BUSY_TIMEOUT)
            .map_err(sql_error("setting the busy timeout"))?;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) =>
            {
                tracing::debug!("change log: epoch increment postponed (file busy)");
                Ok(())
            }
            Err(e) => Err(sql_error("incrementing the change-log epoch")(e)),
        }
    }
}

/// How often the epoch is incremented at most (only while reads are cut
/// short by their limit).
const EPOCH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// How often an epoch increment tries for SQLite's write lock before it is
/// postponed (about 50 µs apart: [`epoch_busy`]).
const EPOCH_TRIES: i32 = 2000;

/// The epoch increment's busy handler. SQLite's own (`busy_timeout`)
/// sleeps 1, 2, 5, … 100 ms between tries, and an application committing
/// back to back takes the write lock again microseconds after its COMMIT
/// frees it: those tries almost never land in the gap, so the epoch would
/// not change while such a writer runs (measured: 1 of 18 increments with
/// a 200 ms timeout), and its transactions would pile up into one.
/// Trying every ~50 µs finds a gap within a few tries; each try is one
/// lock attempt on the `-shm` file.
fn epoch_busy(tries: i32) -> bool {
    if tries >= EPOCH_TRIES {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_micros(50));
    true
}

/// What one read transaction saw.
struct Read {
    entries: Vec<Entry>,
    /// Snapshot positions at or after the read's start.
    marks: BTreeSet<u64>,
    epoch_now: Option<i64>,
}

/// The last entry of the transaction being emitted.
#[derive(Debug, Clone, Copy)]
struct Last {
    seq: ChangeLogSeq,
    epoch: Option<i64>,
    at: Option<f64>,
}

fn commit(last: Last) -> Event<ChangeLogSeq> {
    Event::Commit {
        position: last.seq,
        commit_time: at_time(last.at),
    }
}

/// How many of `entries` (a read cut short by its limit) end at a source
/// transaction boundary, and whether one was found; without one, all of
/// them (the transaction stays open).
fn last_boundary(entries: &[Entry], marks: &BTreeSet<u64>) -> (usize, bool) {
    let ends = |i: usize| {
        marks.contains(&entries[i].seq.0)
            || entries
                .get(i + 1)
                .is_some_and(|n| n.epoch != entries[i].epoch)
    };
    match (0..entries.len()).rev().find(|&i| ends(i)) {
        Some(i) => (i + 1, true),
        None => (entries.len(), false),
    }
}

fn current_epoch(conn: &Connection) -> Result<Option<i64>, Error> {
    rusqlite::OptionalExtension::optional(conn.query_row(
        &format!("SELECT n FROM {}", quote_ident(EPOCH_TABLE)),
        [],
        |r| r.get(0),
    ))
    .map_err(sql_error("reading the change-log epoch"))
    .map(Option::flatten)
}

const MARK_PREFIX: &str = "snapshot_";

/// The snapshot positions recorded at or after `from`.
fn snapshot_marks(conn: &Connection, from: ChangeLogSeq) -> Result<BTreeSet<u64>, Error> {
    conn.prepare_cached(&format!(
        "SELECT value FROM {} WHERE substr(key, 1, {}) = ?1 AND value >= ?2",
        quote_ident(STATE_TABLE),
        MARK_PREFIX.len()
    ))
    .and_then(|mut s| {
        s.query_map((MARK_PREFIX, from.0 as i64), |r| r.get::<_, i64>(0))?
            .map(|v| v.map(|v| v.max(0) as u64))
            .collect()
    })
    .map_err(sql_error("reading the snapshot marks"))
}

/// Records that a snapshot was taken at `position`, so that the change
/// reader never puts entries on both sides of it in one transaction (the
/// applier skips a reloaded table's changes by transaction). Call before
/// the snapshot's rows are used.
pub fn mark_snapshot(path: &Path, position: ChangeLogSeq) -> Result<(), Error> {
    let conn =
        capture::open_read_write(path).map_err(sql_error(format!("opening {}", path.display())))?;
    mark_snapshot_on(&conn, position)
}

/// [`mark_snapshot`] on a read-write connection (in its transaction, if
/// one is open).
pub fn mark_snapshot_on(conn: &Connection, position: ChangeLogSeq) -> Result<(), Error> {
    conn.execute(
        &format!(
            "INSERT INTO {}(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING",
            quote_ident(STATE_TABLE)
        ),
        (format!("{MARK_PREFIX}{}", position.0), position.0 as i64),
    )
    .map_err(sql_error("recording the snapshot position"))?;
    Ok(())
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
    batch.events.push(Event::Change(change));
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
    epoch: Option<i64>,
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
        // Marks before the trim can no longer split a read.
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE substr(key, 1, {}) = ?1 AND value < ?2",
                quote_ident(STATE_TABLE),
                MARK_PREFIX.len()
            ),
            (MARK_PREFIX, upto_i),
        )
        .map_err(sql_error("trimming the snapshot marks"))?;
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
