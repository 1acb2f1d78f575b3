//! The tables of a SQLite file, with columns, keys, counts and type choices.
//!
//! Consumes a (read-only) connection and the configured [`TableFilter`]
//! over `main.table`. Emits one [`SourceTable`] per ordinary table in
//! `sqlite_master`, skipping SQLite's own `sqlite_%` tables and ferry's
//! change-log tables `_ferry_%`; virtual tables are listed in
//! [`Catalog::skipped`]. Columns come from `PRAGMA table_xinfo` (hidden
//! columns of virtual tables left out, generated columns kept), the primary
//! key from its `pk` positions, the row count from an exact `count(*)`, and
//! the PostgreSQL type of each column from [`crate::typemap`] over the first
//! [`SAMPLE_ROWS`] rows, under the config's [`TypePolicies`]. Blocking: call from `spawn_blocking`.

use ferry_core::config::{ColumnOverride, Config, MisfitPolicy, TableFilter};
use ferry_core::schema::quote_ident;
use ferry_core::{Column, ReplicaIdentity, TableId, TableSchema};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::typemap::{self, Misfit, Sample, Sampled, policy};

/// The schema name SQLite gives the main database file.
pub const SCHEMA: &str = "main";
/// Rows sampled per table for type inference.
pub const SAMPLE_ROWS: usize = 1000;
/// Text longer than this is kept only as a prefix in samples.
const SAMPLE_TEXT_CHARS: usize = 64;

/// A failed catalog read, naming the table.
#[derive(Debug, thiserror::Error)]
#[error("reading {what}: {source}")]
pub struct CatalogError {
    pub what: String,
    #[source]
    pub source: rusqlite::Error,
}

fn ctx(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> CatalogError {
    let what = what.into();
    move |source| CatalogError { what, source }
}

/// Values of one column that do not fit its chosen type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnFinding {
    pub column: String,
    pub pg_type: String,
    pub misfits: Vec<Misfit>,
    pub note: Option<String>,
    /// The misfit policy in force ([`crate::typemap::policy`]).
    pub policy: MisfitPolicy,
    /// `widen` gave the column `pg_type` instead of this type.
    pub widened_from: Option<String>,
    /// `ferry plan` fails on it (policy `fail`, or an explicit type).
    pub refused: bool,
}

/// The config's type policies: `sqlite.misfits` and `tables.columns`.
#[derive(Debug, Clone, Default)]
pub struct TypePolicies {
    pub misfits: MisfitPolicy,
    columns: Vec<(TableId, String, ColumnOverride)>,
}

impl TypePolicies {
    pub fn from_config(config: &Config) -> Self {
        TypePolicies {
            misfits: config.sqlite.misfits,
            columns: config
                .tables
                .columns
                .iter()
                .filter_map(|(k, o)| {
                    let (t, c) = ferry_core::schema::parse_column(k)?;
                    Some((t, c, o.clone()))
                })
                .collect(),
        }
    }

    fn column(&self, table: &TableId, column: &str) -> Option<&ColumnOverride> {
        self.columns
            .iter()
            .find(|(t, c, _)| t == table && c == column)
            .map(|(_, _, o)| o)
    }
}

/// One table ferry will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    pub schema: TableSchema,
    /// Exact `count(*)`.
    pub row_count: u64,
    /// Bytes of its values, estimated from the sampled rows (integers and
    /// reals 8 bytes, text and blobs their length): the load takes the
    /// largest tables first.
    pub bytes_estimate: u64,
    /// Whether the table has a rowid (not WITHOUT ROWID).
    pub has_rowid: bool,
    /// Columns whose sampled values did not fit, or whose declared type was
    /// not followed.
    pub findings: Vec<ColumnFinding>,
    /// Per column: values that do not fit its type are written as NULL
    /// (policy `null`, for this column or with misfits sampled).
    pub null_misfits: Vec<bool>,
}

/// Everything read from the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub tables: Vec<SourceTable>,
    /// Virtual tables (FTS, R*Tree, …), which ferry does not carry.
    pub skipped: Vec<String>,
}

struct RawColumn {
    name: String,
    declared: String,
    not_null: bool,
    pk: i64,
}

/// Reads the tables `filter` selects, their types chosen under `policies`.
pub fn read(
    conn: &Connection,
    filter: &TableFilter,
    policies: &TypePolicies,
) -> Result<Catalog, CatalogError> {
    let mut stmt = conn
        .prepare(
            "SELECT name, coalesce(sql, '') FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_ferry\\_%' ESCAPE '\\' \
             ORDER BY name",
        )
        .map_err(ctx("sqlite_master"))?;
    let names = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(ctx("sqlite_master"))?;
    let mut out = Catalog::default();
    for (name, sql) in names {
        let id = TableId::new(SCHEMA, &name);
        if !filter.matches(&id) {
            continue;
        }
        if sql
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("CREATE VIRTUAL")
        {
            out.skipped.push(name);
            continue;
        }
        out.tables.push(read_table(conn, id, policies)?);
    }
    Ok(out)
}

fn read_table(
    conn: &Connection,
    id: TableId,
    policies: &TypePolicies,
) -> Result<SourceTable, CatalogError> {
    let what = format!("table {}", id.name);
    let q = quote_ident(&id.name);
    let raw = columns(conn, &id.name).map_err(ctx(what.clone()))?;
    let has_rowid = conn
        .prepare(&format!("SELECT rowid FROM {q} LIMIT 0"))
        .is_ok();
    let row_count: i64 = conn
        .query_row(&format!("SELECT count(*) FROM {q}"), [], |r| r.get(0))
        .map_err(ctx(what.clone()))?;
    let (samples, sampled) = sample(conn, &q, raw.len(), has_rowid).map_err(ctx(what))?;
    let mut key: Vec<(i64, usize)> = raw
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pk > 0)
        .map(|(i, c)| (c.pk, i))
        .collect();
    key.sort();
    let rowid_alias =
        has_rowid && key.len() == 1 && raw[key[0].1].declared.eq_ignore_ascii_case("INTEGER");
    let mut columns = Vec::with_capacity(raw.len());
    let mut findings = Vec::new();
    let mut null_misfits = Vec::new();
    for (i, (c, samples)) in raw.into_iter().zip(samples).enumerate() {
        let is_alias = rowid_alias && key[0].1 == i;
        let inf = typemap::infer(&c.declared, is_alias, &samples);
        let over = policies.column(&id, &c.name);
        let choice = policy::choose(inf, &samples, over, policies.misfits);
        // NULL policy (the column's own, or the global one where misfits
        // were sampled): misfits become NULL, so NULL must fit.
        let nulled = choice.nulls_misfits()
            && (!choice.misfits.is_empty()
                || over.is_some_and(|o| o.on_misfit == Some(MisfitPolicy::Null)));
        null_misfits.push(nulled);
        if !choice.misfits.is_empty() || choice.note.is_some() {
            findings.push(ColumnFinding {
                column: c.name.clone(),
                pg_type: choice.pg_type.clone(),
                refused: choice.refused(),
                misfits: choice.misfits,
                note: choice.note,
                policy: choice.policy,
                widened_from: choice.widened_from,
            });
        }
        columns.push(Column {
            name: c.name,
            source_type: c.declared,
            pg_type: choice.pg_type,
            type_oid: None,
            // A rowid alias is never NULL even when not declared NOT NULL.
            nullable: (!c.not_null || nulled) && !is_alias,
        });
    }
    Ok(SourceTable {
        schema: TableSchema {
            id,
            columns,
            key: key.into_iter().map(|(_, i)| i).collect(),
            replica_identity: ReplicaIdentity::Full,
        },
        row_count: u64::try_from(row_count).unwrap_or(0),
        bytes_estimate: sampled.estimate(u64::try_from(row_count).unwrap_or(0)),
        has_rowid,
        findings,
        null_misfits,
    })
}

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<RawColumn>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_xinfo({})", quote_ident(table)))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            RawColumn {
                name: r.get("name")?,
                declared: r.get::<_, Option<String>>("type")?.unwrap_or_default(),
                not_null: r.get::<_, i64>("notnull")? != 0,
                pk: r.get("pk")?,
            },
            r.get::<_, i64>("hidden")?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (col, hidden) = row?;
        // 1: hidden column of a virtual table; 2/3: generated (kept).
        if hidden != 1 {
            out.push(col);
        }
    }
    Ok(out)
}

/// The size of the sampled rows.
#[derive(Debug, Clone, Copy, Default)]
struct SampledSize {
    rows: u64,
    bytes: u64,
}

impl SampledSize {
    /// Bytes of `rows` rows like the sampled ones.
    fn estimate(self, rows: u64) -> u64 {
        if self.rows == 0 {
            return 0;
        }
        let total = u128::from(self.bytes) * u128::from(rows) / u128::from(self.rows);
        u64::try_from(total).unwrap_or(u64::MAX)
    }
}

/// The first [`SAMPLE_ROWS`] rows, one sample vector per column, and
/// their size.
fn sample(
    conn: &Connection,
    table: &str,
    ncols: usize,
    has_rowid: bool,
) -> rusqlite::Result<(Vec<Vec<Sample>>, SampledSize)> {
    let mut out = vec![Vec::new(); ncols];
    let mut size = SampledSize::default();
    if ncols == 0 {
        return Ok((out, size));
    }
    let rowid = if has_rowid { "rowid" } else { "NULL" };
    // `*` lists exactly the non-hidden columns, in table_xinfo order.
    let sql = format!("SELECT {rowid}, * FROM {table} LIMIT {SAMPLE_ROWS}");
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let rowid: Option<i64> = row.get(0)?;
        size.rows += 1;
        for (i, samples) in out.iter_mut().enumerate() {
            let v = row.get_ref(i + 1)?;
            size.bytes += match v {
                ValueRef::Null => 0,
                ValueRef::Integer(_) | ValueRef::Real(_) => 8,
                ValueRef::Text(b) | ValueRef::Blob(b) => b.len() as u64,
            };
            let value = match v {
                ValueRef::Null => Sampled::Null,
                ValueRef::Integer(v) => Sampled::Integer(v),
                ValueRef::Real(v) => Sampled::Real(v),
                ValueRef::Text(t) => Sampled::Text(
                    String::from_utf8_lossy(t)
                        .chars()
                        .take(SAMPLE_TEXT_CHARS)
                        .collect(),
                ),
                ValueRef::Blob(_) => Sampled::Blob,
            };
            samples.push(Sample { rowid, value });
        }
    }
    Ok((out, size))
}
