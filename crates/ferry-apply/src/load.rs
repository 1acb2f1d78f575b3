//! Bulk loader: the full-load side of the target (DESIGN.md §5 "Full load").
//!
//! Consumes either (a) raw binary COPY bytes from a PostgreSQL source
//! (`COPY … TO STDOUT (FORMAT binary)`), passed straight through without
//! decoding — the PG→PG fast path — or (b) rows of [`Value`]s from other
//! sources, encoded here, or (c) COPY text bytes a source encoded itself
//! from its own rows (SQLite, into tables ferry created), passed through
//! like (a). Emits: `COPY <target> (<cols>) FROM STDIN` on the target,
//! streaming with a bounded buffer (~256 KiB); a table is never collected
//! in memory.
//!
//! Encoding of (b) and (c): COPY **text** format. Every [`Value`] already has an
//! exact PostgreSQL text form ([`Value::to_pg_text`]); the server parses it
//! with the target column's own input function. That makes `Value::Other`
//! (types ferry does not model), enums, domains and arrays of any of them
//! work, and tolerates a source value whose variant differs from the target
//! column's type (an `Int4` into a `bigint` column) — binary COPY would need
//! the exact binary form of the target type for each column. The cost is
//! server-side parsing, which is not the bottleneck for non-PostgreSQL
//! sources.
//!
//! Atomicity and restart (the rule): a chunk's rows and its `chunks` done
//! mark (plus `tables.rows_copied` and the values the source's policy
//! replaced in the chunk) commit in ONE target transaction.
//! - Chunked tables: a crash mid-chunk leaves nothing of that chunk; on
//!   restart, chunks listed by `StateStore::chunks_done` are skipped and the
//!   others copied again, without any truncate.
//! - Whole-table loads ([`LoadTarget::whole`]) `TRUNCATE` the target table in
//!   the same transaction first, so rows from an older crashed attempt (or a
//!   previous run) cannot double up.
//! - A load with [`LoadTarget::freeze`] (the only chunk of a table ferry
//!   created) also truncates first, then copies with `COPY … (FREEZE)`: rows
//!   are written frozen and all-visible, so the index builds after the load
//!   and the first vacuum do not rewrite every page to set hint bits or
//!   freeze. The rows still become visible only at commit, with the mark.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use ferry_core::schema::{quote_ident, quote_literal};
use ferry_core::{Error, Result, Row, TableId};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio_postgres::{Client, ToStatement};
use tracing::info;

use crate::error::pg_error;
use crate::state::{StateStore, table_key};

/// Bytes coalesced before one COPY data send (each send is a flush).
const FLUSH_BYTES: usize = 256 * 1024;

use crate::conversion::{TargetKind, convert};
pub use crate::copy_text::{push_copy_text, push_copy_text_row};

/// Live counters for progress bars (shared with the monitor).
#[derive(Debug, Default)]
pub struct LoadProgress {
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
}

/// What one COPY loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadResult {
    /// Rows as reported by the server's COPY command tag.
    pub rows: u64,
    /// Bytes sent to the server.
    pub bytes: u64,
}

/// The data of one table or chunk.
pub enum LoadData<B, R> {
    /// Binary COPY bytes from a PostgreSQL source, passed through.
    BinaryCopy(B),
    /// COPY text bytes of whole rows in `columns` order, encoded by the
    /// source ([`crate::copy_text`]), passed through; only without
    /// [`LoadTarget::kinds`] (nothing to convert).
    TextCopy(B),
    /// Rows of values in `columns` order.
    Rows(R),
}

impl<B, R> std::fmt::Debug for LoadData<B, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadData::BinaryCopy(_) => "LoadData::BinaryCopy",
            LoadData::TextCopy(_) => "LoadData::TextCopy",
            LoadData::Rows(_) => "LoadData::Rows",
        })
    }
}

/// Where a load goes and how it is recorded.
#[derive(Debug, Clone)]
pub struct LoadTarget {
    /// Source table (key of `tables` / `chunks`).
    pub source: TableId,
    /// Target table.
    pub target: TableId,
    /// Columns in the order of the data.
    pub columns: Vec<String>,
    /// The target columns' kinds, in `columns` order, when values are
    /// converted to them (an existing target schema,
    /// [`crate::conversion`]); empty: written as they are.
    pub kinds: Vec<TargetKind>,
    /// `Some(n)`: chunk n of a chunked table; `None`: the whole table
    /// (truncated first, recorded as chunk 0).
    pub chunk: Option<i32>,
    /// Truncate first and copy with `FREEZE`: only for a load that is the
    /// whole of a plain table nobody else writes (the table ferry created,
    /// loaded in one chunk); `TRUNCATE` waits for every other lock on it.
    pub freeze: bool,
}

impl LoadTarget {
    pub fn whole(source: TableId, target: TableId, columns: Vec<String>) -> Self {
        LoadTarget {
            source,
            target,
            columns,
            kinds: Vec::new(),
            chunk: None,
            freeze: false,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Load one table or chunk and mark it done, in ONE target transaction.
///
/// Three round trips for a chunk (four for a whole table without
/// `freeze`): `BEGIN` (with the `TRUNCATE` of a frozen load) together
/// with the COPY statement's preparation, the COPY, and the done mark
/// together with `COMMIT`. Small tables are many chunks of few rows, where
/// each round trip more was a good part of the chunk's time.
pub async fn load_chunk<B, R, E>(
    client: &mut Client,
    state: &StateStore,
    to: &LoadTarget,
    data: LoadData<B, R>,
    progress: Option<&LoadProgress>,
    replaced: Option<&ferry_core::source::ChunkReplaced>,
) -> Result<LoadResult>
where
    B: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    R: Stream<Item = std::result::Result<Row, E>> + Unpin,
    E: Into<BoxError>,
{
    let client: &Client = client;
    // Up to its COMMIT; rolled back below on an error.
    let loaded = async {
        let t = &to.target;
        if let LoadData::TextCopy(_) = &data
            && !to.kinds.is_empty()
        {
            return Err(Error::operator(
                format!(
                    "the source encoded the rows for {t} itself, but they need converting to the table's column types"
                ),
                "this is a ferry bug in the load; report it with the log",
            ));
        }
        let binary = matches!(data, LoadData::BinaryCopy(_));
        let copy = copy_sql(t, &to.columns, binary, to.freeze);
        // A frozen load's table is a plain one (COPY FREEZE refuses a
        // partitioned table): `ONLY`, no lookup.
        let begin = match to.freeze {
            true => format!(
                "BEGIN; {}",
                crate::writer::sql::truncate_sql(&[format!("ONLY {}", t.quoted())], false, false)
            ),
            false => "BEGIN".to_owned(),
        };
        let (begun, statement) = tokio::join!(client.batch_execute(&begin), client.prepare(&copy));
        begun.map_err(|e| match to.freeze {
            true => pg_error(format!("emptying {t} before a whole-table load"), e),
            false => pg_error(format!("loading {t}"), e),
        })?;
        let statement = statement.map_err(|e| pg_error(format!("copying into {t}"), e))?;
        if to.chunk.is_none() && !to.freeze {
            let empty = crate::truncate::empty_sql(client, &[t.quoted()]).await?;
            client
                .batch_execute(&empty)
                .await
                .map_err(|e| pg_error(format!("emptying {t} before a whole-table load"), e))?;
        }
        let result = match data {
            LoadData::BinaryCopy(s) | LoadData::TextCopy(s) => {
                let format = match binary {
                    true => Format::Binary,
                    false => Format::Text,
                };
                copy_passthrough(client, t, &statement, s, progress, format).await?
            }
            LoadData::Rows(s) => {
                copy_rows(client, t, &statement, &to.columns, &to.kinds, s, progress).await?
            }
        };
        let chunk = to.chunk.unwrap_or(0);
        let rows = i64::try_from(result.rows).unwrap_or(i64::MAX);
        // The chunk's data stream has ended: its counts are complete.
        let replaced = replaced
            .map(ferry_core::source::ChunkReplaced::take)
            .filter(|r| !r.is_empty())
            .map(|r| quote_literal(&serde_json::to_string(&r).unwrap_or_default()))
            .unwrap_or_else(|| "NULL".to_owned());
        let key = quote_literal(&table_key(&to.source));
        let whole = to.chunk.is_none();
        // Literals, not parameters: the mark and the COMMIT go as one text.
        let sql = format!(
            "WITH c AS (INSERT INTO {chunks} (source_table, chunk, rows, replaced) VALUES ({key}, {chunk}, {rows}, {replaced}::text::jsonb)
                 ON CONFLICT (source_table, chunk) DO UPDATE SET rows = EXCLUDED.rows, replaced = EXCLUDED.replaced, done_at = now())
             UPDATE {tables} SET rows_copied = {copied}, updated_at = now() WHERE source_table = {key};
             COMMIT",
            chunks = state.table("chunks"),
            tables = state.table("tables"),
            copied = match whole {
                true => rows.to_string(),
                false => format!("rows_copied + {rows}"),
            },
        );
        client.batch_execute(&sql).await.map_err(|e| {
            pg_error(
                format!("marking load of {t} chunk {chunk} done and committing it"),
                e,
            )
        })?;
        Ok(result)
    }
    .await;
    if loaded.is_err() && !client.is_closed() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let result = loaded?;
    info!(table = %to.target, chunk = to.chunk.unwrap_or(0), rows = result.rows, bytes = result.bytes, "chunk loaded");
    Ok(result)
}

/// `COPY target (columns) FROM STDIN` with its options.
pub fn copy_sql(target: &TableId, columns: &[String], binary: bool, freeze: bool) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let options = match (binary, freeze) {
        (true, true) => " (FORMAT binary, FREEZE)",
        (true, false) => " (FORMAT binary)",
        (false, true) => " (FREEZE)",
        (false, false) => "",
    };
    format!(
        "COPY {} ({}) FROM STDIN{options}",
        target.quoted(),
        cols.join(", ")
    )
}

/// A failed read of the source's rows: a classified [`Error`] keeps its
/// class (an operator error, e.g. a value that does not fit its column, must
/// not be retried forever); anything else is transient.
fn source_error(target: &TableId, e: impl Into<BoxError>) -> Error {
    let context = format!("reading source data for {target}");
    match e.into().downcast::<Error>() {
        Ok(e) => e.context(context),
        Err(other) => Error::transient(context).with_source(other),
    }
}

/// Pass binary COPY bytes through to `sql`, a `COPY target FROM STDIN
/// (FORMAT binary)` ([`copy_sql`]). A source error aborts the COPY (nothing
/// of it is kept).
pub async fn copy_binary<S, E, T>(
    client: &Client,
    target: &TableId,
    sql: &T,
    data: S,
    progress: Option<&LoadProgress>,
) -> Result<LoadResult>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
    T: ?Sized + ToStatement,
{
    copy_passthrough(client, target, sql, data, progress, Format::Binary).await
}

/// The format of bytes passed through, for the running row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A PostgreSQL source's binary COPY: one message per row.
    Binary,
    /// COPY text: one newline per row (a newline inside a value is
    /// escaped as `\n`).
    Text,
}

impl Format {
    /// Rows in `chunk` (whole rows, for [`Format::Text`]).
    fn rows(self, chunk: &[u8]) -> u64 {
        match self {
            Format::Binary => 1,
            Format::Text => chunk.iter().filter(|&&b| b == b'\n').count() as u64,
        }
    }
}

/// Pass COPY bytes of `format` through to `sql` ([`copy_sql`] of the same
/// format). A source error aborts the COPY (nothing of it is kept).
pub async fn copy_passthrough<S, E, T>(
    client: &Client,
    target: &TableId,
    sql: &T,
    mut data: S,
    progress: Option<&LoadProgress>,
    format: Format,
) -> Result<LoadResult>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
    T: ?Sized + ToStatement,
{
    let err = |e| pg_error(format!("copying into {target}"), e);
    let sink = client.copy_in::<_, Bytes>(sql).await.map_err(err)?;
    futures_util::pin_mut!(sink);
    // A PostgreSQL source sends one CopyData message per row; forwarding
    // each on its own (a send is a flush) costs a round trip to the
    // connection task per row. Coalesce into large buffers instead; memory
    // stays bounded by FLUSH_BYTES (a source's piece that is that large
    // already goes as it is). The pieces also give a running row count for
    // progress, corrected to the server's exact count at the end.
    let mut buf = BytesMut::with_capacity(FLUSH_BYTES);
    let (mut bytes, mut pending, mut reported) = (0u64, 0u64, 0u64);
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| source_error(target, e))?;
        bytes += chunk.len() as u64;
        pending += format.rows(&chunk);
        let full = if buf.is_empty() && chunk.len() >= FLUSH_BYTES {
            chunk
        } else {
            buf.extend_from_slice(&chunk);
            if buf.len() < FLUSH_BYTES {
                continue;
            }
            buf.split().freeze()
        };
        if let Some(p) = progress {
            p.bytes.fetch_add(full.len() as u64, Ordering::Relaxed);
            p.rows.fetch_add(pending, Ordering::Relaxed);
        }
        reported += pending;
        pending = 0;
        sink.send(full).await.map_err(err)?;
    }
    if !buf.is_empty() {
        if let Some(p) = progress {
            p.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        sink.send(buf.split().freeze()).await.map_err(err)?;
    }
    let rows = sink.as_mut().finish().await.map_err(err)?;
    if let Some(p) = progress {
        // Replace the running message count by the exact row count.
        if rows >= reported {
            p.rows.fetch_add(rows - reported, Ordering::Relaxed);
        } else {
            p.rows.fetch_sub(reported - rows, Ordering::Relaxed);
        }
    }
    Ok(LoadResult { rows, bytes })
}

/// Encode rows of values as COPY text and stream them into `target` with
/// `sql`, a text-format `COPY target (columns) FROM STDIN` ([`copy_sql`]).
pub async fn copy_rows<S, E, T>(
    client: &Client,
    target: &TableId,
    sql: &T,
    columns: &[String],
    kinds: &[TargetKind],
    mut data: S,
    progress: Option<&LoadProgress>,
) -> Result<LoadResult>
where
    S: Stream<Item = std::result::Result<Row, E>> + Unpin,
    E: Into<BoxError>,
    T: ?Sized + ToStatement,
{
    let err = |e| pg_error(format!("copying into {target}"), e);
    let sink = client.copy_in::<_, Bytes>(sql).await.map_err(err)?;
    futures_util::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(FLUSH_BYTES * 2);
    let mut bytes = 0u64;
    while let Some(row) = data.next().await {
        let row = row.map_err(|e| source_error(target, e))?;
        if row.values.len() != columns.len() {
            return Err(Error::operator(
                format!(
                    "source row for {target} has {} values, expected {}",
                    row.values.len(),
                    columns.len()
                ),
                "this is a ferry bug in the source reader; report it with the log",
            ));
        }
        if kinds.is_empty() {
            push_copy_text_row(&mut buf, row.values.iter());
        } else {
            let converted = row.values.iter().zip(kinds).map(|(v, k)| convert(v, *k));
            push_copy_text_row(&mut buf, converted.collect::<Vec<_>>().iter().map(|v| &**v));
        }
        if let Some(p) = progress {
            p.rows.fetch_add(1, Ordering::Relaxed);
        }
        if buf.len() >= FLUSH_BYTES {
            bytes += buf.len() as u64;
            if let Some(p) = progress {
                p.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
            sink.send(buf.split().freeze()).await.map_err(err)?;
        }
    }
    if !buf.is_empty() {
        bytes += buf.len() as u64;
        if let Some(p) = progress {
            p.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        sink.send(buf.freeze()).await.map_err(err)?;
    }
    let rows = sink.as_mut().finish().await.map_err(err)?;
    Ok(LoadResult { rows, bytes })
}

/// Outcome of one statement of [`run_parallel`].
#[derive(Debug)]
pub struct StatementResult {
    pub statement: String,
    pub result: Result<()>,
}

/// Run `statements` (post-load index builds) `parallelism` at a time, each
/// worker on its own connection from `connect`. Every statement runs even
/// when another fails; results come back in input order.
pub async fn run_parallel<F, Fut>(
    statements: Vec<String>,
    parallelism: usize,
    connect: F,
) -> Vec<StatementResult>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Client>>,
{
    let queue = Arc::new(std::sync::Mutex::new(
        statements
            .into_iter()
            .enumerate()
            .collect::<std::collections::VecDeque<_>>(),
    ));
    let workers = (0..parallelism.max(1)).map(|_| {
        let queue = Arc::clone(&queue);
        let connect = &connect;
        async move {
            let mut done = Vec::new();
            let mut client: Option<Client> = None;
            loop {
                let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                let Some((i, sql)) = next else { break };
                if client.as_ref().is_none_or(Client::is_closed) {
                    match connect().await {
                        Ok(c) => client = Some(c),
                        Err(e) => {
                            done.push((
                                i,
                                StatementResult {
                                    statement: sql,
                                    result: Err(e),
                                },
                            ));
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                let result = c
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| pg_error("building index after load", e));
                done.push((
                    i,
                    StatementResult {
                        statement: sql,
                        result,
                    },
                ));
            }
            done
        }
    });
    let mut all: Vec<(usize, StatementResult)> = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sql_quotes() {
        let t = TableId::new("s", "T x");
        assert_eq!(
            copy_sql(&t, &["a\"b".into(), "c".into()], true, false),
            "COPY \"s\".\"T x\" (\"a\"\"b\", \"c\") FROM STDIN (FORMAT binary)"
        );
        assert_eq!(
            copy_sql(&t, &["c".into()], true, true),
            "COPY \"s\".\"T x\" (\"c\") FROM STDIN (FORMAT binary, FREEZE)"
        );
        assert_eq!(
            copy_sql(&t, &["c".into()], false, true),
            "COPY \"s\".\"T x\" (\"c\") FROM STDIN (FREEZE)"
        );
    }
}
