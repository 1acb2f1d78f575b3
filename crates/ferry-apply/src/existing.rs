//! Target tables the application created (`[target_tables] mode =
//! "existing"`): which target table and column each source table and
//! column goes to, and what `ferry plan` must say about it.
//!
//! Applications that move to PostgreSQL usually create the schema with
//! their own migrations (Prisma `migrate deploy`, Drizzle, Knex), with
//! quoted camelCase names and `uuid`, `timestamp(3)`, `boolean`, `jsonb`
//! where the source had text and integers. ferry then creates nothing: it
//! matches every source table and column to a target one by name — exactly,
//! else case-insensitively when that is unambiguous — and writes each value
//! as the target column's type takes it ([`crate::conversion`]).
//!
//! [`resolve`] is pure and table-tested: it returns the [`Mapping`] and
//! every [`Finding`]. Refusals stop `ferry plan` and `ferry run` before
//! anything is written:
//!
//! - a source table or column without a target one (or with several that
//!   differ only in case), unless the column is excluded
//!   (`[tables.columns."s.t.c"] exclude = true`: its values are left out of
//!   the load, [`Mapping::project_schema`], and the stream,
//!   [`Mapping::project_change`]);
//! - a target column that would get no value: `NOT NULL` without a default
//!   and no source column, or a generated column a source column maps to;
//! - a source key without a primary key or unique index on the mapped
//!   target columns (changes are matched on it);
//! - a PostgreSQL source whose column type differs from the target's (its
//!   load is binary COPY, which carries no conversion).
//!
//! Conversions that cannot hold every value (`text` → `uuid`, `bigint` →
//! `boolean`) are warnings with the fix; exact ones are notes.
//!
//! [`Mapping::view`] is how the rest of ferry sees a source table in this
//! mode: the target's column names and types in the source's column order,
//! so the writer's statements, its drift check and the staging tables all
//! speak the target's names while row values stay in source order.

use std::collections::{BTreeMap, BTreeSet};

use ferry_core::schema::quote_ident;
use ferry_core::{Change, OldRow, Result, Row, TableId, TableSchema, Value};
use tokio_postgres::Client;

use crate::conversion::{Assessment, assess};
use crate::error::pg_error;

/// A target table as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTable {
    pub id: TableId,
    pub columns: Vec<TargetColumn>,
    /// Column sets of the primary key and the usable unique indexes.
    pub unique_keys: Vec<BTreeSet<String>>,
}

/// A target column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    pub type_name: String,
    pub not_null: bool,
    /// A `DEFAULT` or an identity: an INSERT without it still has a value.
    pub has_default: bool,
    /// `GENERATED ALWAYS AS (…) STORED`: never written.
    pub generated: bool,
}

/// Read every ordinary and partitioned table of `schemas` on the target.
pub async fn read_tables(client: &Client, schemas: &[String]) -> Result<Vec<TargetTable>> {
    let err = |e| pg_error("reading the target tables", e);
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text,
                    format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    a.atthasdef OR a.attidentity <> '', a.attgenerated <> ''
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1)
              ORDER BY 1, 2, a.attnum",
            &[&schemas],
        )
        .await
        .map_err(err)?;
    let mut tables: Vec<TargetTable> = Vec::new();
    for r in rows {
        let id = TableId::new(r.get::<_, String>(0), r.get::<_, String>(1));
        if tables.last().is_none_or(|t| t.id != id) {
            tables.push(TargetTable {
                id,
                columns: Vec::new(),
                unique_keys: Vec::new(),
            });
        }
        if let Some(t) = tables.last_mut() {
            t.columns.push(TargetColumn {
                name: r.get(2),
                type_name: r.get(3),
                not_null: r.get(4),
                has_default: r.get(5),
                generated: r.get(6),
            });
        }
    }
    for t in &mut tables {
        t.unique_keys = crate::relation::read_shape(client, &t.id)
            .await?
            .unique_keys;
    }
    Ok(tables)
}

/// Where one source column goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMap {
    pub source: String,
    pub target: String,
    pub target_type: String,
}

/// Where one source table goes: its columns in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMap {
    pub target: TableId,
    /// The carried source columns (excluded ones left out), in source order.
    pub columns: Vec<ColumnMap>,
    /// Per source column: carried (`false`: excluded in `tables.columns`).
    pub keep: Vec<bool>,
}

impl TableMap {
    fn excludes(&self) -> bool {
        self.keep.iter().any(|k| !k)
    }

    /// `values` without the excluded columns.
    fn project(&self, values: Vec<Value>) -> Vec<Value> {
        values
            .into_iter()
            .zip(&self.keep)
            .filter_map(|(v, k)| k.then_some(v))
            .collect()
    }
}

/// Every carried source table's target table and columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    tables: BTreeMap<TableId, TableMap>,
}

impl Mapping {
    pub fn table(&self, source: &TableId) -> Option<&TableMap> {
        self.tables.get(source)
    }

    /// (source, target) of every mapped table.
    pub fn targets(&self) -> impl Iterator<Item = (&TableId, &TableId)> {
        self.tables.iter().map(|(s, m)| (s, &m.target))
    }

    /// `schema` without its excluded columns (what the load reads from the
    /// source), key indexes adjusted.
    pub fn project_schema(&self, schema: &TableSchema) -> TableSchema {
        let mut out = schema.clone();
        let Some(m) = self.tables.get(&schema.id).filter(|m| m.excludes()) else {
            return out;
        };
        let kept: Vec<usize> = (0..schema.columns.len())
            .filter(|&i| m.keep.get(i).copied().unwrap_or(true))
            .collect();
        out.columns = kept.iter().map(|&i| schema.columns[i].clone()).collect();
        out.key = schema
            .key
            .iter()
            .filter_map(|k| kept.iter().position(|i| i == k))
            .collect();
        out
    }

    /// A change of a source table without its excluded columns' values.
    pub fn project_change(&self, change: Change) -> Change {
        let Some(m) = change
            .table()
            .and_then(|t| self.tables.get(t))
            .filter(|m| m.excludes())
        else {
            return change;
        };
        let row = |r: Row| Row::new(m.project(r.values));
        let old = |o: OldRow| match o {
            OldRow::Key(r) => OldRow::Key(row(r)),
            OldRow::Full(r) => OldRow::Full(row(r)),
        };
        match change {
            Change::Insert { table, new } => Change::Insert {
                table,
                new: row(new),
            },
            Change::Update { table, old: o, new } => Change::Update {
                table,
                old: o.map(old),
                new: row(new),
            },
            Change::Delete { table, old: o } => Change::Delete { table, old: old(o) },
            other => other,
        }
    }

    /// `schema` as the writer sees it: same id, key and column order, the
    /// target's column names and types, excluded columns left out.
    /// Unmapped tables and columns (none once [`resolve`] found no refusal)
    /// stay as they are.
    pub fn view(&self, schema: &TableSchema) -> TableSchema {
        let mut out = self.project_schema(schema);
        let Some(m) = self.tables.get(&schema.id) else {
            return out;
        };
        for c in &mut out.columns {
            if let Some(cm) = m.columns.iter().find(|cm| cm.source == c.name) {
                c.name = cm.target.clone();
                c.pg_type = cm.target_type.clone();
                c.type_oid = None;
            }
        }
        out
    }
}

/// How bad a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing (a conversion that holds every value).
    Note,
    /// Runnable, but some values may stop the load or the stream.
    Warn,
    /// Not runnable until fixed.
    Refuse,
}

/// One thing `ferry plan` says about a source table in this mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The source table.
    pub table: TableId,
    pub detail: String,
    /// What to do (warnings and refusals).
    pub fix: Option<String>,
}

/// Match `sources` to `targets` (see the module docs). `wanted` gives the
/// name each source table is looked up under (before case-insensitive
/// matching); `binary_load`: the source loads in binary COPY (PostgreSQL),
/// so every type must be the target's.
pub fn resolve(
    sources: &[TableSchema],
    wanted: impl Fn(&TableId) -> TableId,
    excluded: impl Fn(&TableId, &str) -> bool,
    targets: &[TargetTable],
    binary_load: bool,
) -> (Mapping, Vec<Finding>) {
    let mut mapping = Mapping::default();
    let mut findings = Vec::new();
    for s in sources {
        let want = wanted(&s.id);
        let mut f = |severity, detail: String, fix: Option<String>| {
            findings.push(Finding {
                severity,
                table: s.id.clone(),
                detail,
                fix,
            })
        };
        let t = match by_name(
            targets,
            &want.name,
            |t| &t.id.name,
            |t| t.id.schema == want.schema,
        ) {
            Ok(t) => t,
            Err(n) => {
                f(
                    Severity::Refuse,
                    if n == 0 {
                        format!("no target table {want} (matched by name, then case-insensitively)")
                    } else {
                        format!("{n} target tables are named {want} up to case")
                    },
                    Some(format!(
                        "create the table on the target (run the application's migrations), map it with tables.rename = {{ \"{}\" = \"schema.table\" }}, or leave it out with tables.exclude",
                        s.id
                    )),
                );
                continue;
            }
        };
        let q = t.id.quoted();
        let mut columns = Vec::new();
        let mut keep = Vec::new();
        let mut used = BTreeSet::new();
        for (i, c) in s.columns.iter().enumerate() {
            let out = excluded(&s.id, &c.name);
            keep.push(!out);
            if out {
                if s.key.contains(&i) {
                    f(
                        Severity::Refuse,
                        format!(
                            "key column {} is excluded in tables.columns",
                            quote_ident(&c.name)
                        ),
                        Some(
                            "changes are matched on the key: carry the column (remove its exclude)"
                                .into(),
                        ),
                    );
                } else {
                    f(
                        Severity::Note,
                        format!(
                            "source column {} is excluded (tables.columns): not carried",
                            quote_ident(&c.name)
                        ),
                        None,
                    );
                }
                continue;
            }
            let tc = match by_name(&t.columns, &c.name, |tc| &tc.name, |_| true) {
                Ok(tc) => tc,
                Err(n) => {
                    f(
                        Severity::Refuse,
                        if n == 0 {
                            format!(
                                "source column {} has no column in {}",
                                quote_ident(&c.name),
                                t.id
                            )
                        } else {
                            format!(
                                "source column {} matches {n} columns of {} up to case",
                                quote_ident(&c.name),
                                t.id
                            )
                        },
                        Some(format!(
                            "ALTER TABLE {q} ADD COLUMN {} {} (or rename the column on one side so the names match), or leave it out with tables.columns.\"{}.{}\" = {{ exclude = true }}",
                            quote_ident(&c.name),
                            c.pg_type,
                            s.id,
                            c.name
                        )),
                    );
                    continue;
                }
            };
            used.insert(tc.name.clone());
            if tc.generated {
                f(
                    Severity::Refuse,
                    format!(
                        "target column {q}.{} is generated; source column {} cannot be written to it",
                        quote_ident(&tc.name),
                        quote_ident(&c.name)
                    ),
                    Some(format!(
                        "drop the generation expression (ALTER TABLE {q} ALTER COLUMN {} DROP EXPRESSION) or rename the target column",
                        quote_ident(&tc.name)
                    )),
                );
            }
            let what = format!(
                "{}.{} ({}) → {}.{} ({})",
                s.id,
                quote_ident(&c.name),
                c.pg_type,
                t.id,
                quote_ident(&tc.name),
                tc.type_name
            );
            match assess(&c.pg_type, &tc.type_name) {
                Assessment::Same => {}
                _ if binary_load => f(
                    Severity::Refuse,
                    format!(
                        "{what}: a PostgreSQL source is loaded in binary COPY, which needs the same type"
                    ),
                    Some(format!(
                        "ALTER TABLE {q} ALTER COLUMN {} TYPE {} before the load (convert it after the cutover)",
                        quote_ident(&tc.name),
                        c.pg_type
                    )),
                ),
                Assessment::Converts { how } => {
                    f(Severity::Note, format!("{what}: converted {how}"), None)
                }
                Assessment::MayFail { why, fix } => f(
                    Severity::Warn,
                    format!(
                        "{what}: {why} cannot be converted; the load or the stream stops at the first one, naming the table"
                    ),
                    Some(fix),
                ),
            }
            columns.push(ColumnMap {
                source: c.name.clone(),
                target: tc.name.clone(),
                target_type: tc.type_name.clone(),
            });
        }
        for tc in t.columns.iter().filter(|tc| !used.contains(&tc.name)) {
            if tc.not_null && !tc.has_default && !tc.generated {
                f(
                    Severity::Refuse,
                    format!(
                        "target column {q}.{} is NOT NULL without a default and no source column fills it",
                        quote_ident(&tc.name)
                    ),
                    Some(format!(
                        "ALTER TABLE {q} ALTER COLUMN {c} SET DEFAULT <value> (or DROP NOT NULL)",
                        c = quote_ident(&tc.name)
                    )),
                );
            } else if !tc.generated {
                let filled = if tc.has_default {
                    "its default"
                } else {
                    "NULL"
                };
                f(
                    Severity::Note,
                    format!(
                        "target column {q}.{} has no source column: rows get {filled}",
                        quote_ident(&tc.name)
                    ),
                    None,
                );
            }
        }
        let key: BTreeSet<String> = s
            .key_names()
            .filter_map(|k| columns.iter().find(|c| c.source == k))
            .map(|c| c.target.clone())
            .collect();
        if s.has_key() && key.len() == s.key.len() && !t.unique_keys.contains(&key) {
            let cols: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
            f(
                Severity::Refuse,
                format!(
                    "{} has no primary key or unique index on ({}), the source's key that changes are matched on",
                    t.id,
                    cols.join(", ")
                ),
                Some(format!(
                    "ALTER TABLE {q} ADD PRIMARY KEY ({})",
                    cols.join(", ")
                )),
            );
        }
        mapping.tables.insert(
            s.id.clone(),
            TableMap {
                target: t.id.clone(),
                columns,
                keep,
            },
        );
    }
    (mapping, findings)
}

/// The one item named `name`: exactly, else the only one equal up to
/// case; `Err(n)`: `n` candidates up to case (0 or several).
fn by_name<'a, T>(
    items: &'a [T],
    name: &str,
    name_of: impl Fn(&T) -> &String,
    eligible: impl Fn(&T) -> bool,
) -> std::result::Result<&'a T, usize> {
    let eligible: Vec<&T> = items.iter().filter(|i| eligible(i)).collect();
    if let Some(exact) = eligible.iter().find(|i| name_of(i) == name) {
        return Ok(exact);
    }
    let folded: Vec<&&T> = eligible
        .iter()
        .filter(|i| name_of(i).to_lowercase() == name.to_lowercase())
        .collect();
    match folded.as_slice() {
        [one] => Ok(one),
        more => Err(more.len()),
    }
}

#[cfg(test)]
mod tests;
