//! Key-range reads of the SQLite source for `ferry validate`
//! ([`KeyReader`]).
//!
//! A range is read in one short read transaction on the live file: its
//! first statement reads the change-log head, so the rows and the position
//! are of one instant (the capture triggers write the change log in the
//! writer's own transaction). Nothing is written and no write lock is
//! taken; in rollback-journal mode a writer's commit waits while a range
//! is read (milliseconds, as for the change reader), in WAL mode not at
//! all. Text key columns are compared and ordered `COLLATE BINARY` (byte
//! order of their UTF-8 text, PostgreSQL's `COLLATE "C"`), whatever the
//! column declares. Values are decoded as the load decodes them, with each
//! column's recorded misfit policy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_core::normalize::{hex_bytes, is_text};
use ferry_core::schema::quote_ident;
use ferry_core::source::{KeyRange, KeyReader};
use ferry_core::{ChangeLogSeq, Error, Row, TableSchema, Value};
use rusqlite::Connection;
use rusqlite::types::Value as Lite;

use super::{blocking, open_ro};
use crate::capture::{self, sql_error};
use crate::{reader, value};

/// A validation's reading session on the SQLite source.
#[derive(Debug, Clone)]
pub struct SqliteKeyReader {
    conn: Arc<Mutex<Connection>>,
    /// Per table, per column name: values that do not fit become NULL.
    misfit_null: Arc<BTreeMap<String, BTreeMap<String, bool>>>,
}

impl SqliteKeyReader {
    pub(crate) async fn open(path: PathBuf) -> Result<Self, Error> {
        blocking("opening the source for validation", move || {
            let conn = open_ro(&path)?;
            let misfit_null = capture::load_tracked(&conn)?
                .into_values()
                .map(|t| {
                    let cols = t
                        .columns
                        .iter()
                        .map(|c| (c.name.clone(), c.misfit_null))
                        .collect();
                    (t.name, cols)
                })
                .collect();
            Ok(SqliteKeyReader {
                conn: Arc::new(Mutex::new(conn)),
                misfit_null: Arc::new(misfit_null),
            })
        })
        .await
    }

    /// Run `f` on the connection off the async runtime.
    async fn with<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Connection, &BTreeMap<String, BTreeMap<String, bool>>) -> Result<T, Error>
        + Send
        + 'static,
    ) -> Result<T, Error> {
        let conn = self.conn.clone();
        let misfit = self.misfit_null.clone();
        blocking(what, move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn, &misfit)
        })
        .await
    }
}

impl KeyReader<ChangeLogSeq> for SqliteKeyReader {
    async fn begin(&mut self) -> Result<ChangeLogSeq, Error> {
        self.with("starting a validation read", |conn, _| {
            conn.execute_batch("BEGIN")
                .map_err(sql_error("starting a validation read"))?;
            // The first read starts the read transaction.
            reader::head(conn)
        })
        .await
    }

    async fn end(&mut self) -> Result<(), Error> {
        self.with("ending a validation read", |conn, _| {
            conn.execute_batch("COMMIT")
                .map_err(sql_error("ending a validation read"))
        })
        .await
    }

    async fn position(&mut self) -> Result<ChangeLogSeq, Error> {
        self.with("reading the change-log head", |conn, _| reader::head(conn))
            .await
    }

    async fn range(
        &mut self,
        schema: &TableSchema,
        range: KeyRange<'_>,
    ) -> Result<Vec<Row>, Error> {
        let (sql, params) = range_sql(schema, range);
        let schema = schema.clone();
        self.with("reading rows to validate", move |conn, misfit| {
            select(conn, misfit, &schema, &sql, params, range_keys_only(&sql))
        })
        .await
    }

    async fn rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<String>],
    ) -> Result<Vec<Row>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (sql, params) = rows_sql(schema, keys);
        let schema = schema.clone();
        self.with("reading rows to validate", move |conn, misfit| {
            select(conn, misfit, &schema, &sql, params, false)
        })
        .await
    }
}

/// Whether `sql` (from [`range_sql`]) reads the key columns only.
fn range_keys_only(sql: &str) -> bool {
    sql.starts_with("SELECT /* keys */")
}

fn select(
    conn: &Connection,
    misfit: &BTreeMap<String, BTreeMap<String, bool>>,
    schema: &TableSchema,
    sql: &str,
    params: Vec<Lite>,
    keys_only: bool,
) -> Result<Vec<Row>, Error> {
    let what = || format!("reading rows of {} to validate", schema.id);
    let mut stmt = conn.prepare(sql).map_err(sql_error(what()))?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(sql_error(what()))?;
    let read: Vec<usize> = if keys_only {
        schema.key.clone()
    } else {
        (0..schema.columns.len()).collect()
    };
    let table_misfit = misfit.get(&schema.id.name);
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sql_error(what()))? {
        let mut values = vec![Value::Null; schema.columns.len()];
        for (pos, &i) in read.iter().enumerate() {
            let c = &schema.columns[i];
            let v = r.get_ref(pos).map_err(sql_error(what()))?;
            let null_misfit = table_misfit
                .and_then(|m| m.get(&c.name))
                .copied()
                .unwrap_or(false);
            values[i] = value::decode_column(&c.pg_type, null_misfit, v).map_err(|why| {
                Error::operator(
                    format!("{}: column {} ({}): {why}", schema.id, c.name, c.pg_type),
                    "fix the value in the source row, or set the column's type or misfit policy with tables.columns",
                )
            })?;
        }
        out.push(Row::new(values));
    }
    Ok(out)
}

/// A key column as ranges compare and order it.
fn key_expr(c: &ferry_core::Column) -> String {
    if is_text(&c.pg_type) {
        format!("{} COLLATE BINARY", quote_ident(&c.name))
    } else {
        quote_ident(&c.name)
    }
}

fn key_tuple(schema: &TableSchema) -> String {
    let parts: Vec<String> = schema
        .key
        .iter()
        .map(|&i| key_expr(&schema.columns[i]))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("({})", parts.join(", "))
    }
}

fn placeholders(width: usize) -> String {
    if width == 1 {
        "?".into()
    } else {
        format!("({})", vec!["?"; width].join(", "))
    }
}

/// A key text (normal form) as a SQLite parameter: the column's affinity
/// turns numeric text into a number for the comparison.
fn bind(c: &ferry_core::Column, text: &str) -> Lite {
    let base = c.pg_type.split('(').next().unwrap_or("").trim();
    match base {
        "boolean" | "bool" => Lite::Integer(i64::from(text == "t")),
        "smallint" | "integer" | "bigint" | "int2" | "int4" | "int8" => match text.parse() {
            Ok(n) => Lite::Integer(n),
            Err(_) => Lite::Text(text.to_owned()),
        },
        "bytea" => hex_bytes(text).map_or_else(|| Lite::Text(text.to_owned()), Lite::Blob),
        _ => Lite::Text(text.to_owned()),
    }
}

fn bind_key(schema: &TableSchema, key: &[String], params: &mut Vec<Lite>) {
    for (&i, text) in schema.key.iter().zip(key) {
        params.push(bind(&schema.columns[i], text));
    }
}

fn range_sql(schema: &TableSchema, r: KeyRange<'_>) -> (String, Vec<Lite>) {
    let tuple = key_tuple(schema);
    let width = schema.key.len();
    let mut conds = Vec::new();
    let mut params = Vec::new();
    if let Some(lo) = r.lo {
        conds.push(format!("{tuple} > {}", placeholders(width)));
        bind_key(schema, lo, &mut params);
    }
    if let Some(hi) = r.hi {
        conds.push(format!("{tuple} <= {}", placeholders(width)));
        bind_key(schema, hi, &mut params);
    }
    let cols: Vec<String> = if r.keys_only {
        schema
            .key
            .iter()
            .map(|&i| quote_ident(&schema.columns[i].name))
            .collect()
    } else {
        schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect()
    };
    // No key: a rowid table (WITHOUT ROWID tables have a key).
    let order: Vec<String> = if schema.key.is_empty() {
        vec!["rowid".to_owned()]
    } else {
        schema
            .key
            .iter()
            .map(|&i| key_expr(&schema.columns[i]))
            .collect()
    };
    let mut sql = format!(
        "SELECT {}{} FROM {}",
        if r.keys_only { "/* keys */ " } else { "" },
        cols.join(", "),
        quote_ident(&schema.id.name)
    );
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    let limit = r.limit.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
    if limit >= 0 || r.offset > 0 {
        sql.push_str(&format!(" LIMIT {limit} OFFSET {}", r.offset));
    }
    (sql, params)
}

fn rows_sql(schema: &TableSchema, keys: &[Vec<String>]) -> (String, Vec<Lite>) {
    let mut params = Vec::new();
    for k in keys {
        bind_key(schema, k, &mut params);
    }
    let width = schema.key.len();
    let list = vec![placeholders(width); keys.len()].join(", ");
    // A row value list needs VALUES; one column takes a plain list.
    let list = if width == 1 {
        list
    } else {
        format!("VALUES {list}")
    };
    let cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    (
        format!(
            "SELECT {} FROM {} WHERE {} IN ({list})",
            cols.join(", "),
            quote_ident(&schema.id.name),
            key_tuple(schema)
        ),
        params,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ReplicaIdentity, TableId};

    fn col(name: &str, pg: &str) -> Column {
        Column {
            name: name.into(),
            source_type: String::new(),
            pg_type: pg.into(),
            type_oid: None,
            nullable: true,
        }
    }

    #[test]
    fn ranges_read_in_byte_order_and_bind_numbers_as_numbers() {
        let s = TableSchema {
            id: TableId::new("main", "t"),
            columns: vec![col("name", "text"), col("n", "bigint"), col("v", "text")],
            key: vec![0, 1],
            replica_identity: ReplicaIdentity::Default,
        };
        let lo = vec!["a".to_owned(), "3".to_owned()];
        let (sql, params) = range_sql(
            &s,
            KeyRange {
                lo: Some(&lo),
                hi: Some(&lo),
                offset: 0,
                limit: None,
                keys_only: true,
            },
        );
        assert_eq!(
            sql,
            "SELECT /* keys */ \"name\", \"n\" FROM \"t\" WHERE (\"name\" COLLATE BINARY, \"n\") > (?, ?) \
             AND (\"name\" COLLATE BINARY, \"n\") <= (?, ?) ORDER BY \"name\" COLLATE BINARY, \"n\""
        );
        assert!(range_keys_only(&sql));
        assert_eq!(params[1], Lite::Integer(3));
        let (sql, params) = rows_sql(&s, &[lo.clone(), lo]);
        assert!(sql.ends_with("IN (VALUES (?, ?), (?, ?))"), "{sql}");
        assert_eq!(params.len(), 4);
    }

    #[test]
    fn the_reader_sees_one_instant() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO t VALUES (1, 'a'), (2, 'b'), (10, 'c');",
        )
        .unwrap();
        let s = TableSchema {
            id: TableId::new("main", "t"),
            columns: vec![col("id", "bigint"), col("name", "text")],
            key: vec![0],
            replica_identity: ReplicaIdentity::Default,
        };
        let (sql, params) = range_sql(
            &s,
            KeyRange {
                lo: Some(&["1".to_owned()]),
                hi: None,
                offset: 1,
                limit: Some(5),
                keys_only: false,
            },
        );
        let rows = select(&conn, &BTreeMap::new(), &s, &sql, params, false).unwrap();
        // Keys above 1, numerically (10 after 2), the first skipped.
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].values[0], Value::Int8(10));
    }
}
