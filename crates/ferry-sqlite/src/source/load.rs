//! The load: rowid-range chunks, the `VACUUM INTO` snapshot copy and
//! the readers that stream its rows.
//!
//! Consumes the catalog (row counts, rowid ranges) and the source file;
//! emits [`Chunk`]s, one [`SqliteSnapshot`] per load (a copy of the file
//! and the change-log head read from the copy: rows and position of one
//! instant; the position is recorded in the file with
//! [`crate::reader::mark_snapshot`] before the rows are used, so no
//! streamed transaction spans it) and per chunk, from a reading thread of
//! its own, either the rows' COPY text (into tables ferry created:
//! [`value::push_copy_text`] encodes each value straight from SQLite's
//! buffer, no [`Row`] or `String` per row) or typed rows (into existing
//! tables, whose column types the load converts to), in batches bounded in
//! bytes (see [`BATCH_BYTES`]). Restart: copies a crashed process left
//! behind are removed by the next snapshot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_core::schema::quote_ident;
use ferry_core::size::ApproxBytes;
use ferry_core::source::{self, Chunk, ChunkData};
use ferry_core::{ChangeLogSeq, Column, Error, Row, TableId, TableSchema};
use futures_util::{Stream, StreamExt};
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

/// The rowid ranges of one table's chunks (pure): `None` bounds are open.
pub fn rowid_chunks(
    rows: u64,
    range: Option<(i64, i64)>,
    chunk_rows: u64,
) -> Vec<(Option<i64>, Option<i64>)> {
    let Some((lo, hi)) = range else {
        return vec![(None, None)];
    };
    let n = rows.div_ceil(chunk_rows.max(1)).max(1);
    let span = (i128::from(hi) - i128::from(lo) + 1).max(1);
    if n <= 1 || span < 2 {
        return vec![(None, None)];
    }
    let n = i128::from(n).min(span);
    let step = (span + n - 1) / n;
    let mut out = Vec::new();
    let mut from = i128::from(lo);
    let mut i = 0;
    while from <= i128::from(hi) {
        let to = from + step;
        let first = i == 0;
        let last = to > i128::from(hi);
        out.push((
            (!first).then_some(from as i64),
            (!last).then_some(to as i64),
        ));
        from = to;
        i += 1;
    }
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

/// A consistent copy of the source file and the change-log position it
/// holds.
#[derive(Debug)]
pub struct SqliteSnapshot {
    copy: PathBuf,
    position: ChangeLogSeq,
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

pub(super) fn take_snapshot(path: &Path, n: u64) -> Result<SqliteSnapshot, Error> {
    remove_stale_copies(path);
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
            info!(position = %position, copy_ms = started.elapsed().as_millis() as u64, "sqlite snapshot taken");
            Ok(SqliteSnapshot { copy, position })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&copy);
            Err(e)
        }
    }
}

impl source::Snapshot for SqliteSnapshot {
    type Position = ChangeLogSeq;
    type Reader = SqliteSnapshotReader;

    fn position(&self) -> ChangeLogSeq {
        self.position
    }

    async fn reader(&self) -> Result<SqliteSnapshotReader, Error> {
        Ok(SqliteSnapshotReader {
            copy: self.copy.clone(),
        })
    }

    async fn release(self) {
        let copy = self.copy;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_file(&copy) {
                warn!(file = %copy.display(), error = %e, "could not remove the snapshot copy");
            }
        })
        .await;
    }
}

/// Reads chunks of the snapshot copy.
#[derive(Debug)]
pub struct SqliteSnapshotReader {
    copy: PathBuf,
}

impl source::SnapshotReader for SqliteSnapshotReader {
    async fn read(&mut self, chunk: &Chunk, schema: &TableSchema) -> Result<ChunkData, Error> {
        let batches = spawn_reader(&self.copy, chunk, schema, RowBatch::default());
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
        let text = spawn_reader(&self.copy, chunk, schema, TextBatch::default());
        Ok(ChunkData::TextCopy(Box::pin(text)))
    }
}

/// Reads `chunk` on a blocking thread into batches of `B`, at most
/// [`BATCHES`] of them waiting; an error ends the stream.
fn spawn_reader<B: Batch>(
    copy: &Path,
    chunk: &Chunk,
    schema: &TableSchema,
    batch: B,
) -> impl Stream<Item = Result<B::Out, Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<B::Out, Error>>(BATCHES);
    let (copy, chunk, schema) = (copy.to_owned(), chunk.clone(), schema.clone());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = read_chunk(&copy, &chunk, &schema, batch, &tx) {
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
    copy: &Path,
    chunk: &Chunk,
    schema: &TableSchema,
    mut batch: B,
    tx: &mpsc::Sender<Result<B::Out, Error>>,
) -> Result<(), Error> {
    let id = &schema.id;
    let conn = open_ro(copy)?;
    let tracked = crate::capture::load_tracked(&conn)?;
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
    /// (rows, rowid range, chunk rows, expected chunk bounds)
    type Case = (u64, Option<(i64, i64)>, u64, Vec<Bounds>);

    #[test]
    fn rowid_chunks_cover_every_rowid_once() {
        // (rows, range, chunk rows, expected ranges)
        let cases: Vec<Case> = vec![
            (0, None, 10, vec![(None, None)]),
            (5, Some((1, 5)), 10, vec![(None, None)]),
            (10, Some((1, 10)), 5, vec![(None, Some(6)), (Some(6), None)]),
            (
                7,
                Some((-3, 3)),
                3,
                vec![(None, Some(0)), (Some(0), Some(3)), (Some(3), None)],
            ),
            // More chunks asked for than distinct rowids.
            (
                4,
                Some((10, 11)),
                1,
                vec![(None, Some(11)), (Some(11), None)],
            ),
            (
                2,
                Some((i64::MIN, i64::MAX)),
                1,
                vec![(None, Some(0)), (Some(0), None)],
            ),
        ];
        for (rows, range, per, want) in cases {
            assert_eq!(
                rowid_chunks(rows, range, per),
                want,
                "{rows} {range:?} {per}"
            );
        }
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
