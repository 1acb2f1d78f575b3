//! The load: rowid chunks of even row counts, the snapshot and the readers
//! that stream its rows.
//!
//! Consumes the catalog (row counts, rowid samples: [`sample_rowids`]) and
//! the source file; emits [`Chunk`]s, one [`SqliteSnapshot`] per load
//! (rows and position of one instant: in WAL mode read transactions on the
//! file begun together under the write lock, one per load worker; in
//! rollback-journal mode a `VACUUM INTO` copy of the file and the
//! change-log head read from the copy; the position is recorded in the file
//! with [`crate::reader::mark_snapshot`] before the rows are used, so no
//! streamed transaction spans it) and per chunk, from a reading thread of
//! its own, either the rows' COPY text (into tables ferry created:
//! [`value::push_copy_text`] encodes each value straight from SQLite's
//! buffer, no [`Row`] or `String` per row) or typed rows (into existing
//! tables, whose column types the load converts to), in batches bounded in
//! bytes (see [`BATCH_BYTES`]). Restart: nothing of a snapshot outlives
//! the process but a copy, which the next snapshot removes; the chunk plan
//! is kept by the pipeline, and its ranges cover every rowid whatever the
//! file holds when a chunk is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_core::schema::quote_ident;
use ferry_core::size::ApproxBytes;
use ferry_core::source::{self, Chunk, ChunkData};
use ferry_core::{ChangeLogSeq, Column, Error, Row, TableId, TableSchema};
use futures_util::{Stream, StreamExt};
use rusqlite::Connection;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::open_ro;
use crate::capture::sql_error;
use crate::value::{Kind, Misfit};
use crate::{reader, value};

/// Rows travel from a chunk's reading thread to the load in batches of at
/// most this many rows …
const BATCH_ROWS: usize = 1024;
/// … or this many bytes ([`ApproxBytes`] of rows, or COPY text; a larger
/// row travels alone).
const BATCH_BYTES: usize = 256 << 10;
/// Batches in flight: the reader holds at most `BATCHES × BATCH_BYTES`
/// (plus one row per batch) whatever the rows' size. One send per batch,
/// not per row, keeps the channel off the load's hot path.
const BATCHES: usize = 8;

/// Every `step`-th rowid of a table, in rowid order: `points[j]` is the
/// rowid at offset `(j + 1) × step` (offset 0 is the smallest rowid). The
/// chunk plan takes its bounds from it, so chunks hold even row counts
/// however sparse the rowids are (an application's deletes, ids handed out
/// by another system).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowidSample {
    /// Rows the table held when sampled.
    pub rows: u64,
    pub step: u64,
    pub points: Vec<i64>,
}

/// How many sample points a chunk of `chunk_rows` rows spans at most: a
/// chunk's size is off by at most `chunk_rows / (2 × SAMPLES_PER_CHUNK)`
/// rows at each end.
const SAMPLES_PER_CHUNK: u64 = 64;

/// The sampling step for chunks of `chunk_rows` rows.
pub fn sample_step(chunk_rows: u64) -> u64 {
    (chunk_rows / SAMPLES_PER_CHUNK).max(1)
}

/// Steps `table`'s rowid b-tree: one `LIMIT 1 OFFSET step - 1` read per
/// point, each starting after the previous point, so the whole pass visits
/// every rowid once inside SQLite (no row is decoded or returned but the
/// points) — a few tens of milliseconds per million rows.
pub fn sample_rowids(
    conn: &rusqlite::Connection,
    table: &str,
    rows: u64,
    step: u64,
) -> rusqlite::Result<RowidSample> {
    let q = quote_ident(table);
    let step = step.max(1);
    let first: Option<i64> =
        conn.query_row(&format!("SELECT min(rowid) FROM {q}"), [], |r| r.get(0))?;
    let mut points = Vec::new();
    if let Some(mut at) = first {
        let mut stmt = conn.prepare(&format!(
            "SELECT rowid FROM {q} WHERE rowid > ?1 ORDER BY rowid LIMIT 1 OFFSET ?2"
        ))?;
        let skip = i64::try_from(step - 1).unwrap_or(i64::MAX);
        while let Some(next) = rusqlite::OptionalExtension::optional(
            stmt.query_row((at, skip), |r| r.get::<_, i64>(0)),
        )? {
            points.push(next);
            at = next;
        }
    }
    Ok(RowidSample { rows, step, points })
}

/// The rowid ranges of one table's chunks (pure): about `chunk_rows` rows
/// each, their bounds the sampled rowids nearest to the even row offsets.
/// `None` bounds are open: the first and last chunks also take rows
/// written outside the sampled range, so the ranges cover every rowid
/// exactly once whatever the file holds when a chunk is read.
pub fn rowid_chunks(
    sample: Option<&RowidSample>,
    chunk_rows: u64,
) -> Vec<(Option<i64>, Option<i64>)> {
    let Some(s) = sample.filter(|s| !s.points.is_empty()) else {
        return vec![(None, None)];
    };
    let n = s.rows.div_ceil(chunk_rows.max(1)).max(1);
    let mut bounds: Vec<i64> = Vec::new();
    for i in 1..n {
        // Offset of chunk i's first row, rounded to the nearest sample.
        let offset = (u128::from(i) * u128::from(s.rows) + u128::from(n) / 2) / u128::from(n);
        let j = (offset + u128::from(s.step) / 2) / u128::from(s.step);
        let Some(j) = usize::try_from(j).ok().and_then(|j| j.checked_sub(1)) else {
            continue;
        };
        let b = s.points[j.min(s.points.len() - 1)];
        if bounds.last().is_none_or(|&last| b > last) {
            bounds.push(b);
        }
    }
    if bounds.is_empty() {
        return vec![(None, None)];
    }
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut from = None;
    for b in bounds {
        out.push((from, Some(b)));
        from = Some(b);
    }
    out.push((from, None));
    out
}

pub(super) fn chunk_predicate((from, to): (Option<i64>, Option<i64>)) -> Option<String> {
    match (from, to) {
        (None, None) => None,
        (Some(a), None) => Some(format!("rowid >= {a}")),
        (None, Some(b)) => Some(format!("rowid < {b}")),
        (Some(a), Some(b)) => Some(format!("rowid >= {a} AND rowid < {b}")),
    }
}

/// The rows of every captured table and the change-log position of one
/// instant: read transactions on the file itself (WAL mode) or a copy of
/// the file (rollback-journal mode).
#[derive(Debug)]
pub struct SqliteSnapshot {
    held: Held,
    position: ChangeLogSeq,
}

#[derive(Debug)]
enum Held {
    /// A `VACUUM INTO` copy, removed on release.
    Copy(PathBuf),
    /// Read transactions that all began while ferry held the write lock.
    Live(Arc<Live>),
}

/// WAL mode: connections, each in a read transaction that began while
/// ferry held SQLite's write lock, so all see the same committed state
/// (checked: the same change-log head and `schema_version`).
#[derive(Debug)]
struct Live {
    path: PathBuf,
    /// One per load worker, handed out by [`source::Snapshot::reader`].
    pool: std::sync::Mutex<Vec<Connection>>,
    /// Readers beyond the pool share this one, one chunk at a time.
    shared: Arc<std::sync::Mutex<Connection>>,
    position: ChangeLogSeq,
    schema_version: i64,
}

/// A read-only connection in a read transaction on `path`, with the
/// change-log head and `schema_version` it sees.
fn begin_read(path: &Path) -> Result<(Connection, ChangeLogSeq, i64), Error> {
    let conn = open_ro(path)?;
    conn.execute_batch("BEGIN")
        .map_err(sql_error("starting a snapshot read transaction"))?;
    // The first read starts the read transaction.
    let version: i64 = conn
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .map_err(sql_error("reading the schema version"))?;
    let head = reader::head(&conn)?;
    Ok((conn, head, version))
}

fn snapshot_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.ferry-snapshot-")
}

fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Removes snapshot copies other processes left behind (a crashed run).
pub(super) fn remove_stale_copies(path: &Path) {
    let prefix = snapshot_prefix(path);
    let mine = format!("{prefix}{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir(dir_of(path)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && !name.starts_with(&mine) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => info!(file = %e.path().display(), "removed a stale snapshot copy"),
                Err(err) => {
                    warn!(file = %e.path().display(), error = %err, "could not remove a stale snapshot copy")
                }
            }
        }
    }
}

/// A new snapshot: in WAL mode read transactions on the file
/// ([`take_live`]), else a `VACUUM INTO` copy ([`take_copy`]).
pub(super) fn take_snapshot(path: &Path, n: u64, readers: usize) -> Result<SqliteSnapshot, Error> {
    remove_stale_copies(path);
    let mode: String = open_ro(path)?
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(sql_error("reading the journal mode"))?;
    if mode.eq_ignore_ascii_case("wal") {
        take_live(path, readers)
    } else {
        take_copy(path, n)
    }
}

/// WAL mode: holds SQLite's write lock (`BEGIN IMMEDIATE`: the
/// application's writers wait, as for any writer, for the milliseconds this
/// takes), begins `readers` + 1 read transactions, checks the schema and
/// records the position ([`reader::mark_snapshot_on`]) in that write
/// transaction, then commits. No commit can fall between the read
/// transactions, so they all see one state: the position's. No copy of
/// the file is made; while the load holds them, the application's
/// checkpoints cannot pass them, so its WAL grows by what it writes during
/// the load and is checkpointed once the load ends (logged on release).
fn take_live(path: &Path, readers: usize) -> Result<SqliteSnapshot, Error> {
    let started = Instant::now();
    let w = crate::capture::open_read_write(path)
        .map_err(sql_error(format!("opening {}", path.display())))?;
    w.execute_batch("BEGIN IMMEDIATE")
        .map_err(sql_error("taking the write lock for the snapshot"))?;
    let locked = Instant::now();
    let taken = (|| {
        let (shared, position, version) = begin_read(path)?;
        crate::snapshot::tracked_unchanged(&shared)?;
        let mut pool = Vec::with_capacity(readers);
        for _ in 0..readers {
            let (conn, head, v) = begin_read(path)?;
            if head != position || v != version {
                // Impossible while the write lock is held: say so rather
                // than read two states.
                return Err(Error::transient(format!(
                    "snapshot readers disagree (change-log head {head} / {position}, schema version {v} / {version}) although the write lock was held"
                )));
            }
            pool.push(conn);
        }
        reader::mark_snapshot_on(&w, position)?;
        Ok((shared, pool, position, version))
    })();
    let (shared, pool, position, schema_version) = match taken {
        Ok(t) => {
            w.execute_batch("COMMIT")
                .map_err(sql_error("recording the snapshot position"))?;
            t
        }
        Err(e) => {
            let _ = w.execute_batch("ROLLBACK");
            return Err(e);
        }
    };
    info!(
        position = %position,
        readers,
        lock_ms = locked.elapsed().as_millis() as u64,
        ms = started.elapsed().as_millis() as u64,
        "sqlite snapshot taken (WAL: read transactions on the file, no copy)"
    );
    Ok(SqliteSnapshot {
        held: Held::Live(Arc::new(Live {
            path: path.to_owned(),
            pool: std::sync::Mutex::new(pool),
            shared: Arc::new(std::sync::Mutex::new(shared)),
            position,
            schema_version,
        })),
        position,
    })
}

/// Rollback-journal mode: a read transaction there holds a SHARED lock
/// that keeps the application's writers out, so the load reads a
/// `VACUUM INTO` copy (one short read transaction, a sequential page copy)
/// and takes the position from it.
fn take_copy(path: &Path, n: u64) -> Result<SqliteSnapshot, Error> {
    let copy = dir_of(path).join(format!(
        "{}{}-{n}",
        snapshot_prefix(path),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&copy);
    let started = Instant::now();
    let conn = open_ro(path)?;
    crate::snapshot::copy_file(&conn, path, &copy).map_err(|e| {
        if e.is_transient() {
            e
        } else {
            e.with_fix(format!(
                "ferry needs read access to the file and room for a copy of it in {}",
                dir_of(path).display()
            ))
        }
    })?;
    drop(conn);
    let result = (|| {
        let conn = open_ro(&copy)?;
        crate::snapshot::tracked_unchanged(&conn)?;
        reader::head(&conn)
    })();
    match result {
        Ok(position) => {
            if let Err(e) = reader::mark_snapshot(path, position) {
                let _ = std::fs::remove_file(&copy);
                return Err(e);
            }
            info!(position = %position, copy_ms = started.elapsed().as_millis() as u64, "sqlite snapshot taken (a copy of the file)");
            Ok(SqliteSnapshot {
                held: Held::Copy(copy),
                position,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&copy);
            Err(e)
        }
    }
}

impl Live {
    /// A pooled connection, else a new read transaction that sees the
    /// snapshot's state (nothing committed since), else the shared one.
    fn reader(&self) -> Result<ReadFrom, Error> {
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        if let Some(conn) = pooled {
            return Ok(ReadFrom::Conn(Arc::new(std::sync::Mutex::new(conn))));
        }
        let (conn, head, version) = begin_read(&self.path)?;
        if head == self.position && version == self.schema_version {
            return Ok(ReadFrom::Conn(Arc::new(std::sync::Mutex::new(conn))));
        }
        info!(
            "a load reader beyond the snapshot's pool shares its connection (the file changed since)"
        );
        Ok(ReadFrom::Conn(self.shared.clone()))
    }
}

impl source::Snapshot for SqliteSnapshot {
    type Position = ChangeLogSeq;
    type Reader = SqliteSnapshotReader;

    fn position(&self) -> ChangeLogSeq {
        self.position
    }

    async fn reader(&self) -> Result<SqliteSnapshotReader, Error> {
        let from = match &self.held {
            Held::Copy(copy) => ReadFrom::Copy(copy.clone()),
            Held::Live(live) => {
                let live = live.clone();
                super::blocking("opening a snapshot reader", move || live.reader()).await?
            }
        };
        Ok(SqliteSnapshotReader { from })
    }

    async fn release(self) {
        let held = self.held;
        let _ = tokio::task::spawn_blocking(move || match held {
            Held::Copy(copy) => {
                if let Err(e) = std::fs::remove_file(&copy) {
                    warn!(file = %copy.display(), error = %e, "could not remove the snapshot copy");
                }
            }
            Held::Live(live) => {
                let wal = format!("{}-wal", live.path.display());
                drop(live);
                // What the application wrote while the load held its read
                // transactions: checkpointed from now on.
                let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                info!(
                    wal_bytes,
                    "sqlite snapshot released (its read transactions ended)"
                );
            }
        })
        .await;
    }
}

/// Where a reader reads its chunks.
#[derive(Debug, Clone)]
enum ReadFrom {
    /// Opens the snapshot copy for each chunk.
    Copy(PathBuf),
    /// A connection in the snapshot's read transaction (its own, or shared
    /// with other readers: one chunk at a time).
    Conn(Arc<std::sync::Mutex<Connection>>),
}

/// Reads chunks of the snapshot.
#[derive(Debug)]
pub struct SqliteSnapshotReader {
    from: ReadFrom,
}

impl source::SnapshotReader for SqliteSnapshotReader {
    async fn read(&mut self, chunk: &Chunk, schema: &TableSchema) -> Result<ChunkData, Error> {
        let batches = spawn_reader(&self.from, chunk, schema, RowBatch::default());
        let rows = batches.flat_map(|batch| {
            futures_util::stream::iter(match batch {
                Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        });
        Ok(ChunkData::Rows(Box::pin(rows)))
    }

    async fn read_copy_text(
        &mut self,
        chunk: &Chunk,
        schema: &TableSchema,
    ) -> Result<ChunkData, Error> {
        let text = spawn_reader(&self.from, chunk, schema, TextBatch::default());
        Ok(ChunkData::TextCopy(Box::pin(text)))
    }
}

/// Reads `chunk` on a blocking thread into batches of `B`, at most
/// [`BATCHES`] of them waiting; an error ends the stream.
fn spawn_reader<B: Batch>(
    from: &ReadFrom,
    chunk: &Chunk,
    schema: &TableSchema,
    batch: B,
) -> impl Stream<Item = Result<B::Out, Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<B::Out, Error>>(BATCHES);
    let (from, chunk, schema) = (from.clone(), chunk.clone(), schema.clone());
    tokio::task::spawn_blocking(move || {
        let result = match from {
            ReadFrom::Copy(copy) => {
                open_ro(&copy).and_then(|conn| read_chunk(&conn, &chunk, &schema, batch, &tx))
            }
            ReadFrom::Conn(conn) => match conn.lock() {
                // Still in the snapshot's read transaction: an error that
                // ended it would otherwise let this read see a later state.
                Ok(conn) if !conn.is_autocommit() => read_chunk(&conn, &chunk, &schema, batch, &tx),
                Ok(_) => Err(Error::transient(
                    "the snapshot's read transaction ended; the load takes a new snapshot",
                )),
                Err(_) => Err(Error::transient("a snapshot connection was poisoned")),
            },
        };
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
}

/// How one column is read: its decoder and its misfit policy.
#[derive(Debug, Clone, Copy)]
struct ReadColumn {
    kind: Kind,
    /// The type policy recorded with capture: misfits written as NULL.
    null_misfits: bool,
}

/// Why a row could not be read.
enum RowError {
    Sql(rusqlite::Error),
    /// Column index and why its value does not fit.
    Misfit(usize, Misfit),
}

impl From<rusqlite::Error> for RowError {
    fn from(e: rusqlite::Error) -> Self {
        RowError::Sql(e)
    }
}

/// What a chunk's reading thread collects rows into before one send.
trait Batch: Send + 'static {
    type Out: Send + 'static;
    fn push(&mut self, row: &rusqlite::Row<'_>, cols: &[ReadColumn]) -> Result<(), RowError>;
    /// At its bound ([`BATCH_ROWS`], [`BATCH_BYTES`]): send it.
    fn full(&self) -> bool;
    fn is_empty(&self) -> bool;
    fn take(&mut self) -> Self::Out;
}

/// Typed rows, for a load that converts values (existing target tables).
#[derive(Default)]
struct RowBatch {
    rows: Vec<Row>,
    bytes: usize,
}

impl Batch for RowBatch {
    type Out = Vec<Row>;

    fn push(&mut self, r: &rusqlite::Row<'_>, cols: &[ReadColumn]) -> Result<(), RowError> {
        let mut values = Vec::with_capacity(cols.len());
        for (i, c) in cols.iter().enumerate() {
            let v = r.get_ref(i)?;
            values.push(
                value::decode_kind_column(c.kind, c.null_misfits, v)
                    .map_err(|why| RowError::Misfit(i, why))?,
            );
        }
        let row = Row::new(values);
        self.bytes += row.approx_bytes();
        self.rows.push(row);
        Ok(())
    }

    fn full(&self) -> bool {
        self.rows.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn take(&mut self) -> Vec<Row> {
        self.bytes = 0;
        std::mem::replace(&mut self.rows, Vec::with_capacity(BATCH_ROWS))
    }
}

/// COPY text of whole rows, for a table ferry created.
#[derive(Default)]
struct TextBatch {
    buf: BytesMut,
}

impl Batch for TextBatch {
    type Out = Bytes;

    fn push(&mut self, r: &rusqlite::Row<'_>, cols: &[ReadColumn]) -> Result<(), RowError> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(BATCH_BYTES + BATCH_BYTES / 4);
        }
        for (i, c) in cols.iter().enumerate() {
            if i > 0 {
                self.buf.put_u8(b'\t');
            }
            let v = r.get_ref(i)?;
            value::push_copy_text(&mut self.buf, c.kind, c.null_misfits, v)
                .map_err(|why| RowError::Misfit(i, why))?;
        }
        self.buf.put_u8(b'\n');
        Ok(())
    }

    fn full(&self) -> bool {
        self.buf.len() >= BATCH_BYTES
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }
}

/// A value of `column` in the snapshot does not fit its type: the fix.
fn misfit(id: &TableId, c: &Column, why: Misfit) -> Error {
    Error::operator(
        format!("snapshot of {id}: column {} ({}): {why}", c.name, c.pg_type),
        format!(
            "fix the value in the source row so that it fits {}, then `ferry run` again \
             (the load resumes from a new snapshot); or choose the column's type or misfit \
             policy with tables.columns.\"{}.{}\" = {{ type = \"…\", on_misfit = \"null\" }} \
             (`ferry cleanup --state` and start over)",
            c.pg_type, id, c.name
        ),
    )
}

fn read_chunk<B: Batch>(
    conn: &Connection,
    chunk: &Chunk,
    schema: &TableSchema,
    mut batch: B,
    tx: &mpsc::Sender<Result<B::Out, Error>>,
) -> Result<(), Error> {
    let id = &schema.id;
    let tracked = crate::capture::load_tracked(conn)?;
    let cols: Vec<ReadColumn> = schema
        .columns
        .iter()
        .map(|c| ReadColumn {
            kind: Kind::of(&c.pg_type),
            null_misfits: tracked.get(&id.name).is_some_and(|t| {
                t.columns
                    .iter()
                    .any(|tc| tc.name == c.name && tc.misfit_null)
            }),
        })
        .collect();
    let names: Vec<String> = schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let filter = chunk
        .predicate
        .as_deref()
        .map(|p| format!(" WHERE {p}"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT {} FROM {}{filter}",
        names.join(", "),
        quote_ident(&chunk.relation.name)
    );
    let ctx = || format!("reading {id} chunk {}/{}", chunk.index + 1, chunk.total);
    let mut stmt = conn.prepare(&sql).map_err(sql_error(ctx()))?;
    let mut rows = stmt.query([]).map_err(sql_error(ctx()))?;
    while let Some(r) = rows.next().map_err(sql_error(ctx()))? {
        batch.push(r, &cols).map_err(|e| match e {
            RowError::Sql(e) => sql_error(ctx())(e),
            RowError::Misfit(i, why) => misfit(id, &schema.columns[i], why),
        })?;
        if batch.full() && tx.blocking_send(Ok(batch.take())).is_err() {
            return Ok(()); // the load stopped reading
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch.take()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Bounds = (Option<i64>, Option<i64>);

    fn sample(rows: u64, step: u64, points: &[i64]) -> RowidSample {
        RowidSample {
            rows,
            step,
            points: points.to_vec(),
        }
    }

    #[test]
    fn rowid_chunks_from_samples() {
        // (sample, chunk rows, expected ranges)
        let cases: Vec<(Option<RowidSample>, u64, Vec<Bounds>)> = vec![
            // No sample (WITHOUT ROWID, empty or small table): one chunk.
            (None, 10, vec![(None, None)]),
            (Some(sample(0, 1, &[])), 10, vec![(None, None)]),
            // One chunk's rows.
            (Some(sample(5, 1, &[2, 3, 4, 5])), 10, vec![(None, None)]),
            // Rowids 1..=10 (points: offsets 1..9): two chunks of five.
            (
                Some(sample(10, 1, &[2, 3, 4, 5, 6, 7, 8, 9, 10])),
                5,
                vec![(None, Some(6)), (Some(6), None)],
            ),
            // Sparse: rowids 1..=6 then 1000, 2000, …, 6000 (12 rows),
            // three chunks of four: the bounds follow the rows, not the
            // span.
            (
                Some(sample(
                    12,
                    1,
                    &[2, 3, 4, 5, 6, 1000, 2000, 3000, 4000, 5000, 6000],
                )),
                4,
                vec![(None, Some(5)), (Some(5), Some(3000)), (Some(3000), None)],
            ),
            // A coarse sample (every 4th rowid of 1..=16): bounds at the
            // nearest points.
            (
                Some(sample(16, 4, &[5, 9, 13])),
                8,
                vec![(None, Some(9)), (Some(9), None)],
            ),
            // Extreme rowids.
            (
                Some(sample(2, 1, &[i64::MAX])),
                1,
                vec![(None, Some(i64::MAX)), (Some(i64::MAX), None)],
            ),
            // More chunks asked for than sample points: no empty or
            // repeated range.
            (
                Some(sample(100, 50, &[51, 101])),
                10,
                vec![(None, Some(51)), (Some(51), Some(101)), (Some(101), None)],
            ),
        ];
        for (s, per, want) in cases {
            assert_eq!(rowid_chunks(s.as_ref(), per), want, "{s:?} {per}");
        }
    }

    /// Sparse rowids sampled from a real table give chunks of even row
    /// counts that together hold every row once.
    #[test]
    fn sampled_chunks_are_even_and_cover_every_row() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000)
             INSERT INTO t SELECT CASE WHEN x <= 9000 THEN x ELSE 9000 + (x - 9000) * 100000 END, 'v' FROM c;
             CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
             INSERT INTO w VALUES ('a', 'b');
             CREATE TABLE e(id INTEGER PRIMARY KEY);",
        )
        .unwrap();
        let per = 2500;
        let s = sample_rowids(&conn, "t", 10_000, sample_step(per)).unwrap();
        assert_eq!(s.step, 39);
        let chunks = rowid_chunks(Some(&s), per);
        assert_eq!(chunks.len(), 4, "{chunks:?}");
        let mut total = 0;
        for c in &chunks {
            let filter = chunk_predicate(*c)
                .map(|p| format!(" WHERE {p}"))
                .unwrap_or_default();
            let n: u64 = conn
                .query_row(&format!("SELECT count(*) FROM t{filter}"), [], |r| r.get(0))
                .unwrap();
            // Off by at most half a step at each end.
            assert!(n.abs_diff(per) <= s.step, "{c:?} holds {n} rows");
            total += n;
        }
        assert_eq!(total, 10_000);
        // The old min..max split would have put 9,000 rows in one chunk.
        // An empty table has no points; a WITHOUT ROWID table has no rowid
        // to sample (the catalog gives it none: one chunk).
        let e = sample_rowids(&conn, "e", 0, 1).unwrap();
        assert!(e.points.is_empty());
        assert_eq!(rowid_chunks(Some(&e), 1), vec![(None, None)]);
        assert!(sample_rowids(&conn, "w", 1, 1).is_err());
    }

    #[test]
    fn predicates() {
        assert_eq!(chunk_predicate((None, None)), None);
        assert_eq!(chunk_predicate((None, Some(5))).unwrap(), "rowid < 5");
        assert_eq!(chunk_predicate((Some(5), None)).unwrap(), "rowid >= 5");
        assert_eq!(
            chunk_predicate((Some(1), Some(5))).unwrap(),
            "rowid >= 1 AND rowid < 5"
        );
    }
}
