//! The source tables ferry carries, read from `information_schema`.
//!
//! Consumes: a connection, the databases to look at (the URL's database, or
//! every non-system database when the URL names none) and the configured
//! [`TableFilter`] over `database.table`. Emits one [`SourceTable`] per base
//! table (views are not carried): columns in ordinal order with their
//! `COLUMN_TYPE` as `source_type` and the PostgreSQL type from
//! [`crate::typemap`], nullability, primary-key columns in key order, the
//! storage engine and `TABLE_ROWS` (an estimate for InnoDB).
//!
//! The replica identity is always [`ReplicaIdentity::Full`]: with
//! `binlog_row_image=FULL` (checked by `preflight`) every row event carries
//! the whole before-image. MariaDB's `JSON` is `longtext` with a
//! `json_valid(col)` check constraint; such columns map to `jsonb` while
//! `source_type` stays `longtext`. Only reads; safe to run at any time.

use std::collections::{BTreeMap, BTreeSet};

use ferry_core::config::TableFilter;
use ferry_core::{Column, Error, ReplicaIdentity, TableId, TableSchema};
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Conn, Row};

use crate::connect::Flavor;
use crate::typemap;

/// Databases that never hold user tables.
pub const SYSTEM_DATABASES: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// One source table with what `ferry plan` shows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    pub schema: TableSchema,
    /// `InnoDB`, `MyISAM`, `Aria`, …
    pub engine: Option<String>,
    /// `information_schema.TABLES.TABLE_ROWS` (estimate for InnoDB).
    pub row_estimate: Option<u64>,
    /// Column names whose type was not in the type table (carried as text).
    pub unknown_types: Vec<String>,
}

/// A row of `information_schema.TABLES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRow {
    pub database: String,
    pub table: String,
    pub engine: Option<String>,
    pub rows: Option<u64>,
}

/// A row of `information_schema.COLUMNS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRow {
    pub database: String,
    pub table: String,
    pub column: String,
    pub column_type: String,
    pub nullable: bool,
}

/// A primary-key column (`information_schema.STATISTICS`, index `PRIMARY`), in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub database: String,
    pub table: String,
    pub column: String,
}

/// The databases to read: the URL's, else every non-system database.
pub async fn databases(conn: &mut Conn, url_database: Option<&str>) -> Result<Vec<String>, Error> {
    if let Some(db) = url_database {
        return Ok(vec![db.to_owned()]);
    }
    let rows: Vec<Row> = conn
        .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME")
        .await
        .map_err(|e| query_error("listing databases", e))?;
    let mut out = Vec::new();
    for mut row in rows {
        let name: String = take(&mut row, 0, "SCHEMA_NAME")?;
        if !SYSTEM_DATABASES.contains(&name.to_ascii_lowercase().as_str()) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Reads the base tables of `databases` that `filter` selects.
pub async fn read_tables(
    conn: &mut Conn,
    flavor: Flavor,
    databases: &[String],
    filter: &TableFilter,
) -> Result<Vec<SourceTable>, Error> {
    if databases.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; databases.len()].join(",");
    let params = databases.to_vec();
    let tables: Vec<Row> = conn
        .exec(
            format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE, TABLE_ROWS FROM information_schema.TABLES \
                 WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA IN ({marks}) \
                 ORDER BY TABLE_SCHEMA, TABLE_NAME"
            ),
            params.clone(),
        )
        .await
        .map_err(|e| query_error("reading information_schema.TABLES", e))?;
    let columns: Vec<Row> = conn
        .exec(
            format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA IN ({marks}) \
                 ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
            ),
            params.clone(),
        )
        .await
        .map_err(|e| query_error("reading information_schema.COLUMNS", e))?;
    let keys: Vec<Row> = conn
        .exec(
            format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE INDEX_NAME = 'PRIMARY' AND TABLE_SCHEMA IN ({marks}) \
                 ORDER BY TABLE_SCHEMA, TABLE_NAME, SEQ_IN_INDEX"
            ),
            params.clone(),
        )
        .await
        .map_err(|e| query_error("reading information_schema.STATISTICS", e))?;
    let json = match flavor {
        Flavor::MariaDb => mariadb_json_columns(conn, &marks, params).await,
        Flavor::MySql => BTreeSet::new(),
    };
    let tables = tables
        .into_iter()
        .map(table_row)
        .collect::<Result<Vec<_>, _>>()?;
    let columns = columns
        .into_iter()
        .map(column_row)
        .collect::<Result<Vec<_>, _>>()?;
    let keys = keys
        .into_iter()
        .map(key_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(assemble(tables, columns, keys, &json, filter))
}

/// `(database, table, column)` of MariaDB JSON columns (`json_valid` checks).
/// Older servers without `CHECK_CONSTRAINTS.TABLE_NAME` give an empty set.
async fn mariadb_json_columns(
    conn: &mut Conn,
    marks: &str,
    params: Vec<String>,
) -> BTreeSet<(String, String, String)> {
    let sql = format!(
        "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA IN ({marks})"
    );
    let rows: Vec<Row> = match conn.exec(sql, params).await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::debug!(error = %error, "no CHECK_CONSTRAINTS; json columns stay text");
            return BTreeSet::new();
        }
    };
    let mut out = BTreeSet::new();
    for mut row in rows {
        let (Ok(db), Ok(table), Ok(clause)) = (
            take::<String>(&mut row, 0, "CONSTRAINT_SCHEMA"),
            take::<String>(&mut row, 1, "TABLE_NAME"),
            take::<String>(&mut row, 2, "CHECK_CLAUSE"),
        ) else {
            continue;
        };
        if let Some(col) = json_valid_column(&clause) {
            out.insert((db, table, col));
        }
    }
    out
}

/// `json_valid(`doc`)` → `doc`.
fn json_valid_column(clause: &str) -> Option<String> {
    let inner = clause
        .trim()
        .strip_prefix("json_valid(")?
        .strip_suffix(')')?;
    let ident = inner.strip_prefix('`')?.strip_suffix('`')?;
    Some(ident.replace("``", "`"))
}

/// Builds the table schemas from the three catalog queries (pure).
pub fn assemble(
    tables: Vec<TableRow>,
    columns: Vec<ColumnRow>,
    keys: Vec<KeyRow>,
    json_columns: &BTreeSet<(String, String, String)>,
    filter: &TableFilter,
) -> Vec<SourceTable> {
    let mut by_table: BTreeMap<(String, String), SourceTable> = BTreeMap::new();
    for t in tables {
        let id = TableId::new(&t.database, &t.table);
        if !filter.matches(&id) {
            continue;
        }
        let schema = TableSchema {
            id,
            columns: Vec::new(),
            key: Vec::new(),
            replica_identity: ReplicaIdentity::Full,
        };
        let table = SourceTable {
            schema,
            engine: t.engine,
            row_estimate: t.rows,
            unknown_types: Vec::new(),
        };
        by_table.insert((t.database, t.table), table);
    }
    for c in columns {
        let Some(t) = by_table.get_mut(&(c.database.clone(), c.table.clone())) else {
            continue;
        };
        let is_json = json_columns.contains(&(c.database, c.table, c.column.clone()));
        let mapping = typemap::map_column_type(if is_json { "json" } else { &c.column_type });
        if !mapping.known {
            t.unknown_types.push(c.column.clone());
        }
        t.schema.columns.push(Column {
            name: c.column,
            source_type: c.column_type,
            pg_type: mapping.pg_type,
            type_oid: None,
            nullable: c.nullable,
        });
    }
    for k in keys {
        if let Some(t) = by_table.get_mut(&(k.database, k.table))
            && let Some(i) = t.schema.column_index(&k.column)
        {
            t.schema.key.push(i);
        }
    }
    by_table.into_values().collect()
}

fn table_row(mut row: Row) -> Result<TableRow, Error> {
    Ok(TableRow {
        database: take(&mut row, 0, "TABLE_SCHEMA")?,
        table: take(&mut row, 1, "TABLE_NAME")?,
        engine: take(&mut row, 2, "ENGINE")?,
        rows: take(&mut row, 3, "TABLE_ROWS")?,
    })
}

fn column_row(mut row: Row) -> Result<ColumnRow, Error> {
    let nullable: String = take(&mut row, 4, "IS_NULLABLE")?;
    Ok(ColumnRow {
        database: take(&mut row, 0, "TABLE_SCHEMA")?,
        table: take(&mut row, 1, "TABLE_NAME")?,
        column: take(&mut row, 2, "COLUMN_NAME")?,
        column_type: take(&mut row, 3, "COLUMN_TYPE")?,
        nullable: nullable.eq_ignore_ascii_case("YES"),
    })
}

fn key_row(mut row: Row) -> Result<KeyRow, Error> {
    Ok(KeyRow {
        database: take(&mut row, 0, "TABLE_SCHEMA")?,
        table: take(&mut row, 1, "TABLE_NAME")?,
        column: take(&mut row, 2, "COLUMN_NAME")?,
    })
}

/// Column `i` of a catalog row, converted without panicking.
pub(crate) fn take<T: FromValue>(row: &mut Row, i: usize, name: &str) -> Result<T, Error> {
    match row.take_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        _ => Err(Error::operator(
            format!("source catalog returned an unexpected value for {name}"),
            "report this with the server version (SELECT VERSION())",
        )),
    }
}

/// Classifies a failed catalog query.
pub(crate) fn query_error(what: &str, err: mysql_async::Error) -> Error {
    let e = match &err {
        mysql_async::Error::Server(s) if matches!(s.code, 1142 | 1143 | 1227 | 1044) => {
            Error::operator(
                format!("{what}: permission denied (server error {})", s.code),
                "grant the ferry user SELECT on the source tables and REPLICATION SLAVE, REPLICATION CLIENT",
            )
        }
        mysql_async::Error::Server(s) => Error::operator(
            format!("{what}: server error {}", s.code),
            "see the cause; check the source server",
        ),
        _ => Error::transient(format!("{what}: connection to the source failed")),
    };
    e.with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::config::TablesConfig;

    fn col(t: &str, c: &str, ty: &str, nullable: bool) -> ColumnRow {
        ColumnRow {
            database: "shop".into(),
            table: t.into(),
            column: c.into(),
            column_type: ty.into(),
            nullable,
        }
    }

    #[test]
    fn assembles_tables_keys_and_types() {
        let tables = vec![
            TableRow {
                database: "shop".into(),
                table: "orders".into(),
                engine: Some("InnoDB".into()),
                rows: Some(7),
            },
            TableRow {
                database: "shop".into(),
                table: "log".into(),
                engine: Some("MyISAM".into()),
                rows: None,
            },
            TableRow {
                database: "shop".into(),
                table: "skipped".into(),
                engine: None,
                rows: None,
            },
        ];
        let columns = vec![
            col("orders", "customer", "int(10) unsigned", false),
            col("orders", "id", "bigint(20) unsigned", false),
            col("orders", "doc", "longtext", true),
            col("orders", "v", "vector(3)", true),
            col("log", "line", "text", true),
            col("skipped", "x", "int", true),
        ];
        let keys = vec![
            KeyRow {
                database: "shop".into(),
                table: "orders".into(),
                column: "id".into(),
            },
            KeyRow {
                database: "shop".into(),
                table: "orders".into(),
                column: "customer".into(),
            },
        ];
        let json = BTreeSet::from([("shop".to_owned(), "orders".to_owned(), "doc".to_owned())]);
        let cfg = TablesConfig {
            exclude: vec!["shop.skipped".into()],
            ..TablesConfig::default()
        };
        let out = assemble(tables, columns, keys, &json, &cfg.filter().unwrap());
        assert_eq!(out.len(), 2);
        let log = &out[0];
        assert_eq!(log.schema.id, TableId::new("shop", "log"));
        assert!(!log.schema.has_key());
        let orders = &out[1];
        assert_eq!(
            orders.schema.key_names().collect::<Vec<_>>(),
            ["id", "customer"]
        );
        let types: Vec<_> = orders
            .schema
            .columns
            .iter()
            .map(|c| (c.source_type.as_str(), c.pg_type.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("int(10) unsigned", "bigint"),
                ("bigint(20) unsigned", "numeric(20)"),
                ("longtext", "jsonb"),
                ("vector(3)", "text")
            ]
        );
        assert_eq!(orders.unknown_types, ["v"]);
        assert_eq!(orders.row_estimate, Some(7));
        assert_eq!(orders.schema.replica_identity, ReplicaIdentity::Full);
    }

    #[test]
    fn json_valid_clause() {
        assert_eq!(
            json_valid_column("json_valid(`doc`)").as_deref(),
            Some("doc")
        );
        assert_eq!(
            json_valid_column("json_valid(`a``b`)").as_deref(),
            Some("a`b")
        );
        assert_eq!(json_valid_column("`x` > 0"), None);
    }
}
