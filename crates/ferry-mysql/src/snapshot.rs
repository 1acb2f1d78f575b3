//! The full-load snapshot of a MariaDB source: consistent or watermark.
//!
//! Consumes the selected tables and their chunk plan; emits rows of ferry
//! [`Value`]s per chunk ([`ChunkData::Rows`]), by one of two methods
//! (`mysql.snapshot`, resolved by [`method`]):
//!
//! - `consistent`: every chunk from ONE consistent snapshot whose binlog
//!   position is exact (below).
//! - `watermark`: a low watermark first, the binlog position of a
//!   consistent snapshot started and ended at once (every transaction
//!   before it is visible to any later read); then each chunk is read in a
//!   short transaction of its own (`START TRANSACTION WITH CONSISTENT
//!   SNAPSHOT, READ ONLY` … `COMMIT`), by as many sessions as load
//!   workers, whatever the application writes. A chunk holds the rows as
//!   of some moment after the watermark; the change stream starts at the
//!   watermark and the applier writes each change as a keyed upsert or
//!   delete of the full row (`binlog_row_image = FULL`, checked by `ferry
//!   plan`), so a row changed after the watermark ends as its last change,
//!   wherever its chunk's read fell (the DBLog idea without writes to the
//!   source: the low watermark bounds what is replayed, the end of
//!   catch-up is the high watermark). Every table needs a primary key
//!   (replaying over a keyless table would double rows: `ferry plan`
//!   fails). No read view is held longer than one chunk, so purge on the
//!   source is never held back for the whole load, and an interrupted load
//!   keeps its finished chunks ([`source::Snapshot::chunk_resumable`]).
//!
//! Consistent method:
//! - Snapshot: `START TRANSACTION WITH CONSISTENT SNAPSHOT` then
//!   `SHOW STATUS LIKE 'binlog_snapshot_%'` on the same session. MariaDB
//!   makes the InnoDB read view and the binlog coordinate one atomic cut
//!   (every transaction committed before `binlog_snapshot_file:pos` is
//!   visible, none after), without `FLUSH TABLES WITH READ LOCK`, so it
//!   works where the user may not lock (RDS). MySQL has no such status
//!   variables: [`open`] refuses MySQL with the fix (see
//!   [`refuse_without_snapshot`] for why its watermark is not enabled).
//! - Readers: MariaDB cannot share a read view between sessions. Each
//!   [`MySqlSnapshotReader`] starts a consistent snapshot of its own and
//!   keeps it when it lands on the same binlog position (nothing was
//!   committed in between, so both read views hold the same transactions:
//!   the load reads in parallel on an idle source); otherwise it reads
//!   through the first snapshot's session, one chunk at a time (a reader
//!   waits for the session while another streams a chunk), and the source
//!   side of the load is serial.
//! - Rows stream with bounded memory: a task reads the result set row by
//!   row (binary protocol) into a bounded channel the loader drains; no
//!   table or chunk is collected.
//! - Values follow the column's PostgreSQL type ([`crate::typemap`]) with
//!   the same rules as the change stream ([`crate::binlog::value`]): the
//!   session runs with `time_zone = '+00:00'` (TIMESTAMP exact in UTC) and
//!   `utf8mb4` results; zero and partial dates become NULL and are counted
//!   per column in the log; a `tinyint(1)` outside 0/1, text with NUL or
//!   invalid JSON stops the load naming table, key and column.
//!
//! Chunks ([`plan_chunks`]): a table whose primary key is one integer
//! column is split into key ranges of about `chunk_rows` rows (from its
//! row estimate and key bounds read with the catalog); the first and last
//! ranges are open so rows outside the bounds read earlier are still
//! copied. Any other table is one chunk.

use std::sync::Arc;

use ferry_core::config::{Endpoint, SnapshotMethod, ZeroDates};
use ferry_core::source::{self, Chunk, ChunkData, ChunkReplaced};
use ferry_core::value::{Array, Interval, Numeric, Time, Timestamp};
use ferry_core::{Error, MySqlPosition, Row, TableId, TableSchema, Value};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as My};
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, info, warn};

use crate::binlog::value::{ConvError, date, integer, no_nul, parse_uuid, pg_base};
use crate::catalog::query_error;
use crate::connect::Flavor;
use crate::overrides::{Overrides, retarget};

/// Rows a chunk stream may hold ahead of the loader.
const ROWS_IN_FLIGHT: usize = 512;

/// `` `name` `` with backticks doubled.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `` `db`.`table` ``.
pub fn quote_table(id: &TableId) -> String {
    format!("{}.{}", quote(&id.schema), quote(&id.name))
}

/// Integer key bounds of a table with a one-column integer primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRange {
    pub min: i128,
    pub max: i128,
}

/// A consistent snapshot held open on one session.
#[derive(Debug)]
pub struct MySqlSnapshot {
    conn: Arc<Mutex<Conn>>,
    position: MySqlPosition,
    endpoint: Endpoint,
    zero_dates: ZeroDates,
    overrides: Overrides,
    /// The watermark method: `position` is the low watermark, each chunk
    /// is read in a transaction of its own.
    watermark: bool,
}

/// The method `mysql.snapshot` selects on a server of `flavor`: `auto`
/// is `watermark` on MySQL and `consistent` on MariaDB.
pub fn method(setting: SnapshotMethod, flavor: Flavor) -> SnapshotMethod {
    match (setting, flavor) {
        (SnapshotMethod::Auto, Flavor::MySql) => SnapshotMethod::Watermark,
        (SnapshotMethod::Auto, Flavor::MariaDb) => SnapshotMethod::Consistent,
        (m, _) => m,
    }
}

/// `ferry run` does not load from MySQL: refused with the fix. Its
/// watermark load would need a low watermark no transaction InnoDB has not
/// yet made visible can precede; `SHOW BINARY LOG STATUS` does not give
/// that (a transaction is written to the binlog before its engine commit),
/// MariaDB's `binlog_snapshot_*` does, and no MySQL server was at hand to
/// test another way.
pub fn refuse_without_snapshot(flavor: Flavor) -> Result<(), Error> {
    if flavor != Flavor::MariaDb {
        return Err(Error::operator(
            "ferry run does not load from MySQL yet: its watermark load needs a low watermark that no not-yet-visible transaction precedes, which MySQL's binlog status does not give (MariaDB's binlog_snapshot_* does)",
            "use a MariaDB source, or load the tables another way; `ferry plan` checks MySQL sources",
        ));
    }
    Ok(())
}

/// Open a snapshot on `conn` (the session is dedicated to it) by `method`
/// (already resolved by [`method`]).
pub async fn open(
    conn: Conn,
    (flavor, method): (Flavor, SnapshotMethod),
    endpoint: Endpoint,
    (zero_dates, overrides): (ZeroDates, Overrides),
) -> Result<MySqlSnapshot, Error> {
    refuse_without_snapshot(flavor)?;
    let (mut conn, position) = start_snapshot(conn).await?;
    let watermark = method == SnapshotMethod::Watermark;
    if watermark {
        // Only the position is kept: every transaction before it is
        // visible to each chunk's later read view.
        conn.query_drop("COMMIT")
            .await
            .map_err(|e| query_error("ending the low watermark's snapshot", e))?;
        info!(low_watermark = %position, "watermark load: chunks read in transactions of their own after the low watermark");
    } else {
        info!(position = %position, "consistent snapshot started");
    }
    Ok(MySqlSnapshot {
        conn: Arc::new(Mutex::new(conn)),
        position,
        endpoint,
        zero_dates,
        overrides,
        watermark,
    })
}

/// Prepare `conn` and start a consistent snapshot on it; its position.
async fn start_snapshot(mut conn: Conn) -> Result<(Conn, MySqlPosition), Error> {
    prepare_session(&mut conn).await?;
    let position = consistent_snapshot(&mut conn).await?;
    Ok((conn, position))
}

/// The session settings every read of rows runs under: `utf8mb4`
/// results, `TIMESTAMP` in UTC, no SQL mode rewriting values,
/// `REPEATABLE READ`.
pub(crate) async fn prepare_session(conn: &mut Conn) -> Result<(), Error> {
    for sql in [
        "SET NAMES utf8mb4",
        "SET SESSION time_zone = '+00:00', SESSION sql_mode = ''",
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    ] {
        conn.query_drop(sql)
            .await
            .map_err(|e| query_error("preparing the snapshot session", e))?;
    }
    Ok(())
}

/// Start a consistent snapshot on a prepared session; the binlog position
/// it is exact at (MariaDB's `binlog_snapshot_*`).
pub(crate) async fn consistent_snapshot(conn: &mut Conn) -> Result<MySqlPosition, Error> {
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(|e| query_error("starting the consistent snapshot", e))?;
    let rows: Vec<(String, String)> = conn
        .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .await
        .map_err(|e| query_error("reading the snapshot's binlog position", e))?;
    let get = |name: &str| {
        rows.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let (Some(file), Some(pos)) = (get("binlog_snapshot_file"), get("binlog_snapshot_position"))
    else {
        return Err(Error::operator(
            "the source reports no binlog_snapshot_file/binlog_snapshot_position",
            "enable the binary log on the source (log_bin) and restart it",
        ));
    };
    let offset: u64 = pos.parse().map_err(|_| {
        Error::operator(
            format!("binlog_snapshot_position {pos:?} is not a number"),
            "report this with the server version",
        )
    })?;
    if file.is_empty() {
        return Err(Error::operator(
            "the source's binary log is off (binlog_snapshot_file is empty)",
            "enable the binary log on the source (log_bin, binlog_format=ROW) and restart it",
        ));
    }
    Ok(MySqlPosition::new(file, offset))
}

impl source::Snapshot for MySqlSnapshot {
    type Position = MySqlPosition;
    type Reader = MySqlSnapshotReader;

    fn position(&self) -> MySqlPosition {
        self.position.clone()
    }

    /// A session of its own when a new consistent snapshot lands on the
    /// same binlog position (nothing committed since: the same read view),
    /// else the shared snapshot session.
    async fn reader(&self) -> Result<MySqlSnapshotReader, Error> {
        let mut conn = crate::connect::connect(&self.endpoint).await?;
        if self.watermark {
            prepare_session(&mut conn).await?;
            return Ok(MySqlSnapshotReader {
                conn: Arc::new(Mutex::new(conn)),
                zero_dates: self.zero_dates,
                overrides: self.overrides.clone(),
                zero_counts: ChunkReplaced::default(),
                per_chunk: true,
            });
        }
        let (mut conn, at) = start_snapshot(conn).await?;
        if at == self.position {
            info!(position = %at, "snapshot reader on its own session (same binlog position)");
            return Ok(MySqlSnapshotReader {
                conn: Arc::new(Mutex::new(conn)),
                zero_dates: self.zero_dates,
                overrides: self.overrides.clone(),
                zero_counts: ChunkReplaced::default(),
                per_chunk: false,
            });
        }
        debug!(snapshot = %self.position, now = %at, "source moved on; the reader shares the snapshot session");
        let _ = conn.query_drop("COMMIT").await;
        let _ = conn.disconnect().await;
        Ok(MySqlSnapshotReader {
            conn: self.conn.clone(),
            zero_dates: self.zero_dates,
            overrides: self.overrides.clone(),
            zero_counts: ChunkReplaced::default(),
            per_chunk: false,
        })
    }

    async fn release(self) {
        let mut conn = self.conn.lock().await;
        if let Err(e) = conn.query_drop("COMMIT").await {
            warn!(error = %e, "ending the snapshot transaction failed; the session is closed anyway");
        }
    }

    fn chunk_resumable(&self) -> bool {
        self.watermark
    }
}

/// A reader of the snapshot: a session of its own or the snapshot's
/// shared one (see the module note).
#[derive(Debug)]
pub struct MySqlSnapshotReader {
    conn: Arc<Mutex<Conn>>,
    zero_dates: ZeroDates,
    overrides: Overrides,
    /// Zero dates the chunk read last loaded as NULL, per column.
    zero_counts: ChunkReplaced,
    /// Watermark method: each chunk in a transaction of its own.
    per_chunk: bool,
}

impl source::SnapshotReader for MySqlSnapshotReader {
    async fn read(&mut self, chunk: &Chunk, schema: &TableSchema) -> Result<ChunkData, Error> {
        // Overridden columns are read and converted by their natural type.
        let (schema, targets) = match self.overrides.conversion(schema) {
            Some(c) => (c.schema, Some(c.targets)),
            None => (schema.clone(), None),
        };
        let sql = select_sql(chunk, &schema);
        let (tx, mut rx) = mpsc::channel::<Result<Row, Error>>(ROWS_IN_FLIGHT);
        let session = self.conn.clone().lock_owned().await;
        let chunk = chunk.clone();
        // Counted afresh for this chunk; complete when its rows end.
        self.zero_counts.reset();
        let zero_dates = (self.zero_dates, self.zero_counts.clone());
        let per_chunk = self.per_chunk;
        tokio::spawn(async move {
            let mut session = session;
            let read = async {
                if per_chunk {
                    session
                        .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                        .await
                        .map_err(|e| query_error("starting a chunk's transaction", e))?;
                }
                stream_rows(
                    &mut session,
                    &sql,
                    (&schema, targets.as_deref()),
                    &zero_dates,
                    &chunk,
                    &tx,
                )
                .await?;
                if per_chunk {
                    session
                        .query_drop("COMMIT")
                        .await
                        .map_err(|e| query_error("ending a chunk's transaction", e))?;
                }
                Ok::<(), Error>(())
            };
            if let Err(e) = read.await {
                let _ = tx.send(Err(e)).await;
            }
        });
        let rows = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(ChunkData::Rows(Box::pin(rows)))
    }

    fn replaced(&self) -> Option<ChunkReplaced> {
        Some(self.zero_counts.clone())
    }
}

/// The SELECT of one chunk, columns in schema order.
fn select_sql(chunk: &Chunk, schema: &TableSchema) -> String {
    let cols: Vec<String> = schema.columns.iter().map(select_expr).collect();
    let mut sql = format!(
        "SELECT {} FROM {}",
        cols.join(", "),
        quote_table(&chunk.relation)
    );
    if let Some(p) = &chunk.predicate {
        sql.push_str(" WHERE ");
        sql.push_str(p);
    }
    sql
}

/// How a column is selected so its value converts exactly.
pub(crate) fn select_expr(c: &ferry_core::Column) -> String {
    let q = quote(&c.name);
    let source = c.source_type.to_ascii_lowercase();
    let base = pg_base(&c.pg_type);
    if is_spatial(&source) {
        // WKB without MySQL's SRID prefix, as the binlog decoder writes it.
        return format!("ST_AsBinary({q})");
    }
    if source.starts_with("bit") {
        return format!("CAST({q} AS UNSIGNED)");
    }
    match base {
        "uuid" | "inet" => format!("CAST({q} AS CHAR)"),
        _ => q,
    }
}

fn is_spatial(source_type: &str) -> bool {
    let base = source_type.split(['(', ' ']).next().unwrap_or("");
    matches!(
        base,
        "geometry"
            | "point"
            | "linestring"
            | "polygon"
            | "multipoint"
            | "multilinestring"
            | "multipolygon"
            | "geometrycollection"
            | "geomcollection"
    )
}

async fn stream_rows(
    conn: &mut Conn,
    sql: &str,
    (schema, targets): (&TableSchema, Option<&[Option<String>]>),
    (zero_date_policy, zero_counts): &(ZeroDates, ChunkReplaced),
    chunk: &Chunk,
    tx: &mpsc::Sender<Result<Row, Error>>,
) -> Result<(), Error> {
    let what = format!(
        "reading {} chunk {}/{}",
        chunk.relation,
        chunk.index + 1,
        chunk.total
    );
    let mut result = conn
        .exec_iter(sql, ())
        .await
        .map_err(|e| query_error(&what, e))?;
    // Zero dates loaded as NULL, per column position.
    let mut zero_dates = vec![0u64; schema.columns.len()];
    let mut rows = 0u64;
    while let Some(row) = result.next().await.map_err(|e| query_error(&what, e))? {
        let values = row.unwrap();
        let mut out = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            let Some(col) = schema.columns.get(i) else {
                return Err(Error::operator(
                    format!("{what}: more columns than the catalog has; the table changed"),
                    "restart ferry so that it reads the catalog again",
                ));
            };
            let v = convert_checked(schema, col, v, *zero_date_policy, &out, &mut zero_dates[i])?;
            out.push(match targets.and_then(|t| t[i].as_deref()) {
                Some(target) => retarget(v, target),
                None => v,
            });
        }
        rows += 1;
        if tx.send(Ok(Row::new(out))).await.is_err() {
            // The loader stopped reading (it failed): nothing to deliver.
            return Ok(());
        }
    }
    for (col, n) in schema
        .columns
        .iter()
        .zip(zero_dates)
        .filter(|(_, n)| *n > 0)
    {
        zero_counts.add(&col.name, n);
        warn!(table = %schema.id, column = %col.name, rows = n, "zero or partial dates loaded as NULL");
    }
    tracing::debug!(table = %schema.id, chunk = chunk.index, rows, "chunk read");
    Ok(())
}

/// [`convert`] for a row of `schema`, its errors as the operator error
/// naming table, key and column and the fix; a zero date under
/// `mysql.zero_dates = "null"` becomes NULL and is counted in `zero_dates`.
/// `converted`: the row's columns before `col` (for the key in messages).
pub(crate) fn convert_checked(
    schema: &TableSchema,
    col: &ferry_core::Column,
    v: My,
    policy: ZeroDates,
    converted: &[Value],
    zero_dates: &mut u64,
) -> Result<Value, Error> {
    match convert(col, v) {
        Ok(v) => Ok(v),
        Err(ConvError::ZeroDate) if policy == ZeroDates::Null => {
            *zero_dates += 1;
            Ok(Value::Null)
        }
        Err(ConvError::ZeroDate) => Err(Error::operator(
            format!(
                "table {}, key {}, column {}: zero or partial date (mysql.zero_dates = \"error\")",
                schema.id,
                key_text(schema, converted),
                col.name
            ),
            "fix the date on the source, or set mysql.zero_dates = \"null\" to load such dates as NULL (counted per column)",
        )),
        Err(ConvError::Invalid(why)) => Err(Error::operator(
            format!(
                "table {}, key {}, column {}: {why}",
                schema.id,
                key_text(schema, converted),
                col.name
            ),
            "fix the value on the source (or map the column to another type) and run again",
        )),
    }
}

/// `(k1, k2)=(v1, v2)` of the key columns converted so far (keys come
/// first only by chance, so unknown ones print as `?`).
pub(crate) fn key_text(schema: &TableSchema, converted: &[Value]) -> String {
    let names: Vec<&str> = schema.key_names().collect();
    let values: Vec<String> = schema
        .key
        .iter()
        .map(|&i| {
            converted
                .get(i)
                .and_then(Value::to_pg_text)
                .unwrap_or_else(|| "?".into())
        })
        .collect();
    format!("({})=({})", names.join(", "), values.join(", "))
}

fn invalid(msg: impl Into<String>) -> ConvError {
    ConvError::Invalid(msg.into())
}

fn utf8(b: Vec<u8>) -> Result<String, ConvError> {
    let t = String::from_utf8(b).map_err(|_| invalid("text is not valid UTF-8"))?;
    no_nul(t)
}

/// One value of a snapshot row (binary protocol) → the column's PostgreSQL
/// type; the same results as the change stream for the same source value.
pub fn convert(col: &ferry_core::Column, v: My) -> Result<Value, ConvError> {
    let pg = col.pg_type.as_str();
    if matches!(v, My::NULL) {
        return Ok(Value::Null);
    }
    let bit_column = col.source_type.to_ascii_lowercase().starts_with("bit");
    // BIT(n) is selected as CAST(… AS UNSIGNED): an integer of either kind.
    let v = match v {
        My::Int(i) if bit_column => My::UInt(i as u64),
        v => v,
    };
    match (pg_base(pg), v) {
        ("bit" | "varbit", My::UInt(u)) if bit_column => {
            let n: usize = pg
                .trim_start_matches("bit")
                .trim_matches(|c| c == '(' || c == ')')
                .parse()
                .unwrap_or(1);
            Ok(Value::Other {
                type_name: pg.to_owned(),
                text: format!("{u:0n$b}"),
            })
        }
        ("boolean", My::UInt(u)) if bit_column => Ok(Value::Bool(u != 0)),
        (_, My::Int(i)) => integer(i128::from(i), pg),
        (_, My::UInt(u)) => integer(i128::from(u), pg),
        ("real", My::Float(f)) => Ok(Value::Float4(f)),
        ("real", My::Double(d)) => Ok(Value::Float4(d as f32)),
        ("double precision", My::Float(f)) => Ok(Value::Float8(f64::from(f))),
        ("double precision", My::Double(d)) => Ok(Value::Float8(d)),
        ("date", My::Date(y, m, d, ..)) => date(y, m, d).map(Value::Date),
        (base @ ("timestamp" | "timestamptz"), My::Date(y, m, d, h, mi, s, us)) => {
            let day = date(y, m, d)?;
            let micros = ((i64::from(h) * 60 + i64::from(mi)) * 60 + i64::from(s)) * 1_000_000
                + i64::from(us);
            let ts = Timestamp::from_parts(day, Time(micros))
                .ok_or_else(|| invalid("datetime out of range"))?;
            Ok(if base == "timestamptz" {
                Value::TimestampTz(ts)
            } else {
                Value::Timestamp(ts)
            })
        }
        (base @ ("interval" | "time"), My::Time(neg, days, h, m, s, us)) => {
            let micros = (((i64::from(days) * 24 + i64::from(h)) * 60 + i64::from(m)) * 60
                + i64::from(s))
                * 1_000_000
                + i64::from(us);
            let micros = if neg { -micros } else { micros };
            if base == "time" {
                if !(0..86_400_000_000).contains(&micros) {
                    return Err(invalid(
                        "TIME value outside 00:00:00..24:00:00 for a PostgreSQL time column; map the column to interval",
                    ));
                }
                return Ok(Value::Time(Time(micros)));
            }
            Ok(Value::Interval(Interval {
                months: 0,
                days: 0,
                micros,
            }))
        }
        (_, My::Bytes(b)) => bytes_value(col, pg, b),
        (_, other) => Err(invalid(format!(
            "unexpected value kind {} for a {} column",
            kind(&other),
            col.source_type
        ))),
    }
}

fn kind(v: &My) -> &'static str {
    match v {
        My::NULL => "NULL",
        My::Bytes(_) => "bytes",
        My::Int(_) => "int",
        My::UInt(_) => "uint",
        My::Float(_) => "float",
        My::Double(_) => "double",
        My::Date(..) => "date",
        My::Time(..) => "time",
    }
}

fn bytes_value(col: &ferry_core::Column, pg: &str, b: Vec<u8>) -> Result<Value, ConvError> {
    match pg_base(pg) {
        "bytea" => Ok(Value::Bytes(b)),
        "numeric" => Numeric::parse(&utf8(b)?)
            .map(Value::Numeric)
            .map_err(|_| invalid("malformed decimal")),
        "real" => utf8(b)?
            .parse()
            .map(Value::Float4)
            .map_err(|_| invalid("malformed float")),
        "double precision" => utf8(b)?
            .parse()
            .map(Value::Float8)
            .map_err(|_| invalid("malformed double")),
        "jsonb" | "json" => {
            let t = utf8(b)?;
            serde_json::from_str::<serde_json::Value>(&t)
                .map_err(|_| invalid("JSON column holds invalid JSON text"))?;
            Ok(Value::Jsonb(t))
        }
        "uuid" => parse_uuid(&utf8(b)?)
            .map(Value::Uuid)
            .ok_or_else(|| invalid("malformed uuid")),
        "inet" => Ok(Value::Other {
            type_name: "inet".into(),
            text: utf8(b)?,
        }),
        _ if pg.ends_with("[]") => {
            // SET members, comma-separated in definition order (labels
            // cannot contain commas).
            let t = utf8(b)?;
            let members = if t.is_empty() {
                Vec::new()
            } else {
                t.split(',').map(|m| Value::Text(m.to_owned())).collect()
            };
            Ok(Value::Array(Box::new(Array::one_dim("text", members))))
        }
        "boolean" | "smallint" | "integer" | "bigint" => {
            let t = utf8(b)?;
            let n: i128 = t.trim().parse().map_err(|_| {
                invalid(format!("malformed integer in a {} column", col.source_type))
            })?;
            integer(n, pg)
        }
        _ => utf8(b).map(Value::Text),
    }
}

/// Key-range chunks of one table (see the module note).
pub fn plan_chunks(
    schema: &TableSchema,
    estimate: Option<u64>,
    range: Option<KeyRange>,
    chunk_rows: u64,
) -> Vec<Chunk> {
    let whole = || {
        vec![Chunk {
            table: schema.id.clone(),
            relation: schema.id.clone(),
            index: 0,
            total: 1,
            predicate: None,
            only: true,
        }]
    };
    let (Some(range), Some(key)) = (range, schema.key_names().next()) else {
        return whole();
    };
    let rows = u128::from(estimate.unwrap_or(0));
    let per = u128::from(chunk_rows.max(1));
    let parts = rows.div_ceil(per).max(1);
    let span = (range.max - range.min + 1).max(1) as u128;
    let parts = parts.min(span).min(10_000) as usize;
    if parts <= 1 {
        return whole();
    }
    let q = quote(key);
    let step = span.div_ceil(parts as u128) as i128;
    let bound = |i: usize| range.min + step * i as i128;
    (0..parts)
        .map(|i| {
            let predicate = match (i, i + 1 == parts) {
                (0, _) => format!("{q} < {}", bound(1)),
                (_, true) => format!("{q} >= {}", bound(i)),
                _ => format!("{q} >= {} AND {q} < {}", bound(i), bound(i + 1)),
            };
            Chunk {
                table: schema.id.clone(),
                relation: schema.id.clone(),
                index: i,
                total: parts,
                predicate: Some(predicate),
                only: true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ReplicaIdentity};

    fn col(name: &str, source: &str, pg: &str) -> Column {
        Column {
            name: name.into(),
            source_type: source.into(),
            pg_type: pg.into(),
            type_oid: None,
            nullable: true,
        }
    }

    fn table() -> TableSchema {
        TableSchema {
            id: TableId::new("shop", "orders"),
            columns: vec![col("id", "int(11)", "integer"), col("x", "text", "text")],
            key: vec![0],
            replica_identity: ReplicaIdentity::Full,
        }
    }

    #[test]
    fn chunks_cover_the_key_space_with_open_ends() {
        let chunks = plan_chunks(
            &table(),
            Some(1000),
            Some(KeyRange { min: 1, max: 1000 }),
            300,
        );
        let preds: Vec<_> = chunks
            .iter()
            .map(|c| c.predicate.clone().unwrap())
            .collect();
        assert_eq!(
            preds,
            [
                "`id` < 251",
                "`id` >= 251 AND `id` < 501",
                "`id` >= 501 AND `id` < 751",
                "`id` >= 751"
            ]
        );
        assert!(chunks.iter().all(|c| c.total == 4));
        // Small, keyless or unbounded tables are one chunk.
        assert_eq!(
            plan_chunks(&table(), Some(10), Some(KeyRange { min: 1, max: 10 }), 300)[0].predicate,
            None
        );
        let mut keyless = table();
        keyless.key.clear();
        assert_eq!(
            plan_chunks(
                &keyless,
                Some(1000),
                Some(KeyRange { min: 1, max: 1000 }),
                300
            )
            .len(),
            1
        );
        assert_eq!(plan_chunks(&table(), Some(1000), None, 300).len(), 1);
    }

    #[test]
    fn values_follow_the_target_type() {
        let c = |s: &str, p: &str| col("c", s, p);
        assert_eq!(
            convert(&c("tinyint(1)", "boolean"), My::Int(1)),
            Ok(Value::Bool(true))
        );
        assert!(matches!(
            convert(&c("tinyint(1)", "boolean"), My::Int(5)),
            Err(ConvError::Invalid(_))
        ));
        assert_eq!(
            convert(&c("bigint(20) unsigned", "numeric(20)"), My::UInt(u64::MAX)),
            Ok(Value::Numeric(
                Numeric::parse("18446744073709551615").unwrap()
            ))
        );
        assert_eq!(
            convert(&c("bit(8)", "bit(8)"), My::UInt(5)),
            Ok(Value::Other {
                type_name: "bit(8)".into(),
                text: "00000101".into()
            })
        );
        assert_eq!(
            convert(&c("bit(8)", "bit(8)"), My::Int(165)),
            Ok(Value::Other {
                type_name: "bit(8)".into(),
                text: "10100101".into()
            })
        );
        assert_eq!(
            convert(&c("date", "date"), My::Date(0, 0, 0, 0, 0, 0, 0)),
            Err(ConvError::ZeroDate)
        );
        assert_eq!(
            convert(&c("time", "interval"), My::Time(true, 34, 22, 59, 59, 0)),
            Ok(Value::Interval(Interval {
                months: 0,
                days: 0,
                micros: -((838 * 3600 + 59 * 60 + 59) * 1_000_000)
            }))
        );
        assert_eq!(
            convert(&c("set('a','b')", "text[]"), My::Bytes(b"a,b".to_vec())),
            Ok(Value::Array(Box::new(Array::one_dim(
                "text",
                vec![Value::Text("a".into()), Value::Text("b".into())]
            ))))
        );
        assert!(matches!(
            convert(&c("varchar(5)", "varchar(5)"), My::Bytes(b"a\0b".to_vec())),
            Err(ConvError::Invalid(_))
        ));
        assert_eq!(
            convert(&c("year(4)", "smallint"), My::Int(2006)),
            Ok(Value::Int2(2006))
        );
    }
}
