//! Key-range reads of a MariaDB source for `ferry validate`
//! ([`KeyReader`]): each range in its own short consistent snapshot, whose
//! binlog position is exact (`binlog_snapshot_*`, as for the load), never
//! locking a row.
//!
//! Order: key columns of text types compare as
//! `CONVERT(c USING utf8mb4) COLLATE utf8mb4_nopad_bin` — code-point
//! order without padding, which is the byte order of their UTF-8 text and
//! so PostgreSQL's `COLLATE "C"` on the target. The key index cannot serve
//! that order, so a table keyed by text is sorted per range (slower on
//! large text-keyed tables; integer, decimal and date keys use the index).
//! Values go through the load's conversion ([`crate::snapshot::convert`])
//! with the configured `mysql.zero_dates` policy. MySQL 8 is refused like
//! its load: it has no exact snapshot position without a global lock.

use ferry_core::config::ZeroDates;
use ferry_core::normalize::{hex_bytes, is_text};
use ferry_core::source::{KeyRange, KeyReader};
use ferry_core::{Error, MySqlPosition, Row, TableSchema, Value};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Value as My};

use crate::binlog::value::pg_base;
use crate::catalog::query_error;
use crate::snapshot::{
    consistent_snapshot, convert_checked, prepare_session, quote, quote_table, select_expr,
};

/// A validation's reading session on a MariaDB source.
#[derive(Debug)]
pub struct MySqlKeyReader {
    conn: Conn,
    zero_dates: ZeroDates,
    in_snapshot: bool,
}

impl MySqlKeyReader {
    /// A reader on `conn`, a new connection to a MariaDB source.
    pub async fn new(mut conn: Conn, zero_dates: ZeroDates) -> Result<Self, Error> {
        prepare_session(&mut conn).await?;
        Ok(MySqlKeyReader {
            conn,
            zero_dates,
            in_snapshot: false,
        })
    }

    async fn select(
        &mut self,
        schema: &TableSchema,
        sql: String,
        params: Vec<My>,
    ) -> Result<Vec<Row>, Error> {
        let what = format!("reading rows of {} to validate", schema.id);
        let rows: Vec<mysql_async::Row> = self
            .conn
            .exec(sql, Params::Positional(params))
            .await
            .map_err(|e| query_error(&what, e))?;
        rows.into_iter()
            .map(|r| self.convert_row(schema, r))
            .collect()
    }

    /// A row as the load converts it; only the selected columns are read
    /// (the key columns alone when `r` is shorter than the schema).
    fn convert_row(&self, schema: &TableSchema, r: mysql_async::Row) -> Result<Row, Error> {
        let values = r.unwrap();
        let keys_only = values.len() < schema.columns.len();
        let mut out = vec![Value::Null; schema.columns.len()];
        let indexes: Vec<usize> = if keys_only {
            schema.key.clone()
        } else {
            (0..schema.columns.len()).collect()
        };
        for (v, &i) in values.into_iter().zip(&indexes) {
            let mut zero_dates = 0;
            out[i] = convert_checked(
                schema,
                &schema.columns[i],
                v,
                self.zero_dates,
                &out,
                &mut zero_dates,
            )?;
        }
        Ok(Row::new(out))
    }
}

impl KeyReader<MySqlPosition> for MySqlKeyReader {
    async fn begin(&mut self) -> Result<MySqlPosition, Error> {
        let at = consistent_snapshot(&mut self.conn).await?;
        self.in_snapshot = true;
        Ok(at)
    }

    async fn end(&mut self) -> Result<(), Error> {
        self.in_snapshot = false;
        self.conn
            .query_drop("COMMIT")
            .await
            .map_err(|e| query_error("ending a validation snapshot", e))
    }

    async fn position(&mut self) -> Result<MySqlPosition, Error> {
        crate::source::head_position(&mut self.conn).await
    }

    async fn range(
        &mut self,
        schema: &TableSchema,
        range: KeyRange<'_>,
    ) -> Result<Vec<Row>, Error> {
        let (sql, params) = range_sql(schema, range)?;
        self.select(schema, sql, params).await
    }

    async fn rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<String>],
    ) -> Result<Vec<Row>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (sql, params) = rows_sql(schema, keys)?;
        self.select(schema, sql, params).await
    }
}

/// A key column as ranges compare and order it.
fn key_expr(c: &ferry_core::Column) -> String {
    if is_text(&c.pg_type) {
        format!(
            "CONVERT({} USING utf8mb4) COLLATE utf8mb4_nopad_bin",
            quote(&c.name)
        )
    } else {
        quote(&c.name)
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

/// A bound or key text (normal form) as a MariaDB parameter of `c`.
fn bind(schema: &TableSchema, c: &ferry_core::Column, text: &str) -> Result<My, Error> {
    let bad = || {
        Error::operator(
            format!(
                "table {}: key {text:?} of column {} does not parse as {}",
                schema.id, c.name, c.pg_type
            ),
            "report this with the table's definition",
        )
    };
    Ok(match pg_base(&c.pg_type) {
        "boolean" | "bool" => My::Int(i64::from(text == "t")),
        "bytea" if text.starts_with("\\x") => My::Bytes(hex_bytes(text).ok_or_else(bad)?),
        "bytea" => return Err(bad()),
        "uuid" if c.source_type.to_ascii_lowercase().starts_with("binary") => {
            My::Bytes(hex_bytes(text).ok_or_else(bad)?)
        }
        // The session is in UTC; MariaDB reads no zone suffix.
        t if t.starts_with("timestamp") => {
            My::Bytes(text.trim_end_matches("+00").as_bytes().to_vec())
        }
        _ => My::Bytes(text.as_bytes().to_vec()),
    })
}

fn bind_key(schema: &TableSchema, key: &[String], params: &mut Vec<My>) -> Result<(), Error> {
    for (&i, text) in schema.key.iter().zip(key) {
        params.push(bind(schema, &schema.columns[i], text)?);
    }
    Ok(())
}

fn columns(schema: &TableSchema, keys_only: bool) -> String {
    let cols: Vec<String> = if keys_only {
        schema
            .key
            .iter()
            .map(|&i| select_expr(&schema.columns[i]))
            .collect()
    } else {
        schema.columns.iter().map(select_expr).collect()
    };
    cols.join(", ")
}

fn range_sql(schema: &TableSchema, r: KeyRange<'_>) -> Result<(String, Vec<My>), Error> {
    let tuple = key_tuple(schema);
    let width = schema.key.len();
    let mut conds = Vec::new();
    let mut params = Vec::new();
    if let Some(lo) = r.lo {
        conds.push(format!("{tuple} > {}", placeholders(width)));
        bind_key(schema, lo, &mut params)?;
    }
    if let Some(hi) = r.hi {
        conds.push(format!("{tuple} <= {}", placeholders(width)));
        bind_key(schema, hi, &mut params)?;
    }
    // No key: every column, by position (equal rows are interchangeable
    // for a digest), so pages of one snapshot neither overlap nor skip.
    let order: Vec<String> = if schema.key.is_empty() {
        (1..=schema.columns.len()).map(|i| i.to_string()).collect()
    } else {
        schema
            .key
            .iter()
            .map(|&i| key_expr(&schema.columns[i]))
            .collect()
    };
    let mut sql = format!(
        "SELECT {} FROM {}",
        columns(schema, r.keys_only),
        quote_table(&schema.id)
    );
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    match (r.limit, r.offset) {
        (Some(n), off) => sql.push_str(&format!(" LIMIT {n} OFFSET {off}")),
        (None, 0) => {}
        (None, off) => sql.push_str(&format!(" LIMIT 18446744073709551615 OFFSET {off}")),
    }
    Ok((sql, params))
}

fn rows_sql(schema: &TableSchema, keys: &[Vec<String>]) -> Result<(String, Vec<My>), Error> {
    let width = schema.key.len();
    let mut params = Vec::new();
    for k in keys {
        bind_key(schema, k, &mut params)?;
    }
    let list = vec![placeholders(width); keys.len()].join(", ");
    Ok((
        format!(
            "SELECT {} FROM {} WHERE {} IN ({list})",
            columns(schema, false),
            quote_table(&schema.id),
            key_tuple(schema)
        ),
        params,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ReplicaIdentity, TableId};

    fn col(name: &str, source: &str, pg: &str) -> Column {
        Column {
            name: name.into(),
            source_type: source.into(),
            pg_type: pg.into(),
            type_oid: None,
            nullable: true,
        }
    }

    fn table(columns: Vec<Column>, key: Vec<usize>) -> TableSchema {
        TableSchema {
            id: TableId::new("shop", "t"),
            columns,
            key,
            replica_identity: ReplicaIdentity::Default,
        }
    }

    #[test]
    fn ranges_order_text_keys_by_code_point() {
        let s = table(
            vec![
                col("code", "varchar(10)", "character varying(10)"),
                col("n", "int", "integer"),
                col("v", "text", "text"),
            ],
            vec![0, 1],
        );
        let lo = vec!["a".to_owned(), "3".to_owned()];
        let (sql, params) = range_sql(
            &s,
            KeyRange {
                lo: Some(&lo),
                hi: None,
                offset: 9,
                limit: Some(1),
                keys_only: true,
            },
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT `code`, `n` FROM `shop`.`t` WHERE (CONVERT(`code` USING utf8mb4) COLLATE utf8mb4_nopad_bin, `n`) > (?, ?) \
             ORDER BY CONVERT(`code` USING utf8mb4) COLLATE utf8mb4_nopad_bin, `n` LIMIT 1 OFFSET 9"
        );
        assert_eq!(params.len(), 2);
        let (sql, params) = rows_sql(&s, &[lo.clone(), lo]).unwrap();
        assert!(sql.ends_with("IN ((?, ?), (?, ?))"), "{sql}");
        assert_eq!(params.len(), 4);
    }

    #[test]
    fn bounds_bind_in_mariadb_forms() {
        let s = table(vec![], vec![]);
        let ts = col("at", "datetime(6)", "timestamp(6) with time zone");
        assert_eq!(
            bind(&s, &ts, "2024-01-01 00:00:00.5+00").unwrap(),
            My::Bytes(b"2024-01-01 00:00:00.5".to_vec())
        );
        let b = col("flag", "tinyint(1)", "boolean");
        assert_eq!(bind(&s, &b, "t").unwrap(), My::Int(1));
        let u = col("id", "binary(16)", "uuid");
        assert_eq!(
            bind(&s, &u, "00000000-0000-0000-0000-0000000000ff").unwrap(),
            My::Bytes([vec![0u8; 15], vec![255]].concat())
        );
        assert!(bind(&s, &col("b", "varbinary(4)", "bytea"), "zz").is_err());
    }
}
