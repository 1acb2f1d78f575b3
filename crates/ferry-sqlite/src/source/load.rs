//! The load: rowid-range chunks, the `VACUUM INTO` snapshot copy and
//! the readers that stream its rows.
//!
//! Consumes the catalog (row counts, rowid ranges) and the source file;
//! emits [`Chunk`]s, one [`SqliteSnapshot`] per load (a copy of the file
//! and the change-log head read from the copy: rows and position of one
//! instant; the position is recorded in the file with
//! [`crate::reader::mark_snapshot`] before the rows are used, so no
//! streamed transaction spans it) and per chunk a stream of typed rows,
//! bounded in bytes (see [`BATCH_BYTES`]). Restart: copies
//! a crashed process left behind are removed by the next snapshot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry_core::schema::quote_ident;
use ferry_core::size::ApproxBytes;
use ferry_core::source::{self, Chunk, ChunkData};
use ferry_core::{ChangeLogSeq, Error, Row, TableSchema};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::open_ro;
use crate::capture::sql_error;
use crate::{reader, value};

/// Rows travel from a chunk's reading thread to the load in batches of at
/// most this many rows …
const BATCH_ROWS: usize = 1024;
/// … or this many bytes ([`ApproxBytes`]; a larger row travels alone).
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
        let (tx, rx) = mpsc::channel::<Result<Vec<Row>, Error>>(BATCHES);
        let (copy, chunk, schema) = (self.copy.clone(), chunk.clone(), schema.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = read_chunk(&copy, &chunk, &schema, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let batches =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let rows = batches.flat_map(|batch| {
            futures_util::stream::iter(match batch {
                Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        });
        Ok(ChunkData::Rows(Box::pin(rows)))
    }
}

fn read_chunk(
    copy: &Path,
    chunk: &Chunk,
    schema: &TableSchema,
    tx: &mpsc::Sender<Result<Vec<Row>, Error>>,
) -> Result<(), Error> {
    let id = &schema.id;
    let conn = open_ro(copy)?;
    // The type policy recorded with capture: misfits written as NULL.
    let null_misfits: Vec<bool> = crate::capture::load_tracked(&conn)?
        .get(&id.name)
        .map(|t| {
            schema
                .columns
                .iter()
                .map(|c| {
                    t.columns
                        .iter()
                        .any(|tc| tc.name == c.name && tc.misfit_null)
                })
                .collect()
        })
        .unwrap_or_else(|| vec![false; schema.columns.len()]);
    let cols: Vec<String> = schema
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
        cols.join(", "),
        quote_ident(&chunk.relation.name)
    );
    let ctx = || format!("reading {id} chunk {}/{}", chunk.index + 1, chunk.total);
    let mut stmt = conn.prepare(&sql).map_err(sql_error(ctx()))?;
    let mut rows = stmt.query([]).map_err(sql_error(ctx()))?;
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    let mut batch_bytes = 0;
    while let Some(r) = rows.next().map_err(sql_error(ctx()))? {
        let mut values = Vec::with_capacity(schema.columns.len());
        for (i, c) in schema.columns.iter().enumerate() {
            let v = r.get_ref(i).map_err(sql_error(ctx()))?;
            values.push(value::decode_column(&c.pg_type, null_misfits[i], v).map_err(|why| {
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
            })?);
        }
        let row = Row::new(values);
        batch_bytes += row.approx_bytes();
        batch.push(row);
        if batch.len() >= BATCH_ROWS || batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
            if tx.blocking_send(Ok(full)).is_err() {
                return Ok(()); // the load stopped reading
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
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
