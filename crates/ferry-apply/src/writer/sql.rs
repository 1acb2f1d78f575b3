//! The writer's statement texts: pure functions from a table's shape, its
//! target name and its staging table to SQL (no I/O), with golden tests.
//! Identifiers are always quoted.
//!
//! Staging rows carry `__ferry_op` (one of the `OP_*` codes below),
//! `__ferry_mask` (the present-column bitmap, see [`push_mask`]) and
//! `__ferry_seq` (the change's place in the batch, for source order).

use std::collections::HashMap;

use ferry_core::schema::quote_ident;
use ferry_core::{Error, Result, TableId, TableSchema, Value};

/// Staged row to delete (keyed tables: by key; source order: the old row).
pub const OP_DELETE: i16 = 0;
/// Staged row to insert or upsert by key.
pub const OP_UPSERT: i16 = 1;
/// New row of an update.
pub const OP_NEW: i16 = 2;
/// Old row of an update (source order).
pub const OP_OLD: i16 = 3;

/// Types without a btree equality operator: compared as text.
const TEXT_COMPARED: [&str; 9] = [
    "json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle",
];

/// A target table as the change statements name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: TableId,
    /// A partitioned table (its rows live in its partitions).
    pub partitioned: bool,
}

impl Target {
    /// The table as `UPDATE`, `DELETE` and their row searches name it:
    /// `ONLY t`, because a source change of one relation touches that
    /// table's rows and never an inheritance child's with the same key
    /// (pgoutput sends the child's own changes under the child). A
    /// partitioned table is named plainly: with `ONLY` it matches nothing.
    pub fn rows(&self) -> String {
        if self.partitioned {
            self.id.quoted()
        } else {
            format!("ONLY {}", self.id.quoted())
        }
    }

    /// The row address one row is found by: across the partitions of a
    /// partitioned table a `ctid` is not unique, so it goes with `tableoid`.
    fn address(&self, alias: &str) -> String {
        if self.partitioned {
            format!("({})", self.address_columns(alias))
        } else {
            self.address_columns(alias)
        }
    }

    fn address_columns(&self, alias: &str) -> String {
        if self.partitioned {
            format!("{alias}.tableoid, {alias}.ctid")
        } else {
            format!("{alias}.ctid")
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.id.fmt(f)
    }
}

/// The present-column bitmap of `values`.
pub fn mask_of(values: &[Value]) -> String {
    let mut mask = String::with_capacity(values.len());
    push_mask(&mut mask, values);
    mask
}

/// Append the present-column bitmap of `values` ('1' present, '0' Unchanged).
pub fn push_mask(out: &mut String, values: &[Value]) {
    out.extend(values.iter().map(|v| {
        if matches!(v, Value::Unchanged) {
            '0'
        } else {
            '1'
        }
    }));
}

/// The quoted column list of `schema`, each name behind `prefix`.
pub fn cols(schema: &TableSchema, prefix: &str) -> String {
    schema
        .columns
        .iter()
        .map(|c| format!("{prefix}{}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_match(schema: &TableSchema, t: &str, s: &str) -> String {
    schema
        .key_names()
        .map(|k| format!("{t}.{q} = {s}.{q}", q = quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The staging table DDL: the target's columns on their base `types`, plus
/// op, mask and seq (indexed when `by_seq`).
pub fn create_stage_sql(
    stage: &str,
    target: &TableId,
    schema: &TableSchema,
    types: &HashMap<String, String>,
    by_seq: bool,
) -> Result<String> {
    let mut defs = Vec::with_capacity(schema.columns.len() + 3);
    for c in &schema.columns {
        let ty = types.get(&c.name).ok_or_else(|| {
            Error::operator(
                format!("target table {target} has no column {:?}", c.name),
                "add the column on the target (or map the table to one that has it), then restart ferry run",
            )
        })?;
        defs.push(format!("{} {ty}", quote_ident(&c.name)));
    }
    defs.extend(
        [
            "__ferry_op smallint",
            "__ferry_mask text",
            "__ferry_seq int",
        ]
        .map(str::to_owned),
    );
    let s = quote_ident(stage);
    let mut sql = format!(
        "CREATE TEMP TABLE {s} ({}) ON COMMIT DELETE ROWS",
        defs.join(", ")
    );
    if by_seq {
        sql.push_str(&format!("; CREATE INDEX ON pg_temp.{s} (__ferry_seq)"));
    }
    Ok(sql)
}

/// `COPY` of a staging table's rows (text format).
pub fn copy_stage_sql(stage: &str, schema: &TableSchema) -> String {
    let mut cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    cols.extend(["__ferry_op", "__ferry_mask", "__ferry_seq"].map(quote_ident));
    format!(
        "COPY pg_temp.{} ({}) FROM STDIN",
        quote_ident(stage),
        cols.join(", ")
    )
}

pub fn delete_sql(target: &Target, stage: &str, schema: &TableSchema) -> String {
    format!(
        "DELETE FROM {} AS t USING pg_temp.{} AS s WHERE s.__ferry_op = {OP_DELETE} AND {}",
        target.rows(),
        quote_ident(stage),
        key_match(schema, "t", "s")
    )
}

pub fn upsert_sql(target: &Target, stage: &str, schema: &TableSchema) -> String {
    format!(
        "{} {}",
        insert_sql(target, stage, schema),
        on_conflict_sql(schema)
    )
}

/// The upserts of [`upsert_sql`] as a plain `INSERT` (no `ON CONFLICT`):
/// about half the target's cost per row when no key is there yet (no
/// speculative insertion); a key that is there fails it with a unique
/// violation (see `Writer::apply_keyed`).
pub fn insert_sql(target: &Target, stage: &str, schema: &TableSchema) -> String {
    format!(
        "INSERT INTO {} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM pg_temp.{} WHERE __ferry_op = {OP_UPSERT}",
        target.id.quoted(),
        quote_ident(stage),
        c = cols(schema, ""),
    )
}

/// The rows of [`insert_sql`] COPYed straight into the target (see
/// `Writer::apply_keyed`): no staging row is written or read for them.
/// Like `INSERT … OVERRIDING SYSTEM VALUE`, COPY writes identity columns as
/// given; a partitioned table routes each row to its partition.
pub fn copy_target_sql(target: &Target, schema: &TableSchema) -> String {
    format!(
        "COPY {} ({}) FROM STDIN",
        target.id.quoted(),
        cols(schema, "")
    )
}

/// `ON CONFLICT (key) DO UPDATE SET <non-key columns>` (or `DO NOTHING`).
fn on_conflict_sql(schema: &TableSchema) -> String {
    let keys: Vec<String> = schema.key_names().map(quote_ident).collect();
    let sets: Vec<String> = schema
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !schema.key.contains(i))
        .map(|(_, c)| format!("{q} = EXCLUDED.{q}", q = quote_ident(&c.name)))
        .collect();
    let action = if sets.is_empty() {
        "NOTHING".to_owned()
    } else {
        format!("UPDATE SET {}", sets.join(", "))
    };
    format!("ON CONFLICT ({}) DO {action}", keys.join(", "))
}

/// `UPDATE … FROM staging` for rows whose present-column bitmap is `mask`;
/// `None` when no non-key column is present.
pub fn update_sql(
    target: &Target,
    stage: &str,
    schema: &TableSchema,
    mask: &str,
) -> Option<String> {
    let sets: Vec<String> = schema
        .columns
        .iter()
        .zip(mask.chars())
        .enumerate()
        .filter(|(i, (_, m))| *m == '1' && !schema.key.contains(i))
        .map(|(_, (c, _))| format!("{q} = s.{q}", q = quote_ident(&c.name)))
        .collect();
    if sets.is_empty() {
        return None;
    }
    Some(format!(
        "UPDATE {} AS t SET {} FROM pg_temp.{} AS s WHERE s.__ferry_op = {OP_NEW} AND s.__ferry_mask = '{mask}' AND {}",
        target.rows(),
        sets.join(", "),
        quote_ident(stage),
        key_match(schema, "t", "s")
    ))
}

/// Key change with Unchanged columns: set the present columns (key
/// included) of the row found by the old key.
pub fn key_change_sql(target: &Target, stage: &str, schema: &TableSchema, mask: &str) -> String {
    let sets: Vec<String> = schema
        .columns
        .iter()
        .zip(mask.chars())
        .filter(|(_, m)| *m == '1')
        .map(|(c, _)| format!("{q} = n.{q}", q = quote_ident(&c.name)))
        .collect();
    format!(
        "UPDATE {} AS t SET {} FROM pg_temp.{s} AS n, pg_temp.{s} AS o WHERE n.__ferry_op = {OP_NEW} AND o.__ferry_op = {OP_DELETE} AND {}",
        target.rows(),
        sets.join(", "),
        key_match(schema, "t", "o"),
        s = quote_ident(stage),
    )
}

pub fn truncate_sql(targets: &[String], cascade: bool, restart_identity: bool) -> String {
    format!(
        "TRUNCATE {}{}{}",
        targets.join(", "),
        if restart_identity {
            " RESTART IDENTITY"
        } else {
            ""
        },
        if cascade { " CASCADE" } else { "" }
    )
}

/// What one staged change does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// A run of inserts (upserts by key for keyed tables).
    Inserts,
    /// A run of deletes by key (keyed tables).
    Deletes,
    /// Delete one row matching the old row (tables without a key); the
    /// match pattern of the old row ([`match_pattern`]).
    DeleteOne(String),
    /// Update one row: match pattern of the old row (empty for keyed
    /// tables), present-column mask of the new row, key changed.
    UpdateOne {
        pattern: String,
        mask: String,
        key_change: bool,
    },
}

/// Per column of an old row: `u` Unchanged (not matched), `n` NULL, `v` a
/// value.
pub fn match_pattern(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| match v {
            Value::Unchanged => 'u',
            Value::Null => 'n',
            _ => 'v',
        })
        .collect()
}

/// Statement texts of a source-order table (parameters `$1`, `$2`: the
/// first and last seq of a step).
#[derive(Debug)]
pub struct InOrderSql<'a> {
    pub target: &'a Target,
    pub stage: &'a str,
    pub schema: &'a TableSchema,
    /// Target base types by column name.
    pub types: &'a HashMap<String, String>,
}

impl InOrderSql<'_> {
    /// The statement of `kind`; `None` when it has nothing to do.
    pub fn sql(&self, kind: &StepKind) -> Option<String> {
        let t = self.target.rows();
        let s = format!("pg_temp.{}", quote_ident(self.stage));
        let keyed = self.schema.has_key();
        let c = cols(self.schema, "");
        Some(match kind {
            StepKind::Inserts => {
                let conflict = if keyed {
                    format!(" {}", on_conflict_sql(self.schema))
                } else {
                    String::new()
                };
                format!(
                    "INSERT INTO {} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM {s} WHERE __ferry_op = {OP_UPSERT} AND __ferry_seq BETWEEN $1 AND $2 ORDER BY __ferry_seq{conflict}",
                    self.target.id.quoted()
                )
            }
            StepKind::Deletes => format!(
                "DELETE FROM {t} AS t USING {s} AS s WHERE s.__ferry_op = {OP_DELETE} AND s.__ferry_seq BETWEEN $1 AND $2 AND {}",
                key_match(self.schema, "t", "s")
            ),
            StepKind::DeleteOne(pattern) => format!(
                "DELETE FROM {t} AS t WHERE {} = ({})",
                self.target.address("t"),
                self.one_row(OP_DELETE, pattern)
            ),
            StepKind::UpdateOne {
                pattern,
                mask,
                key_change,
            } => {
                let sets: Vec<String> = self
                    .schema
                    .columns
                    .iter()
                    .zip(mask.chars())
                    .enumerate()
                    .filter(|(i, (_, m))| {
                        *m == '1' && (*key_change || !self.schema.key.contains(i))
                    })
                    .map(|(_, (c, _))| format!("{q} = n.{q}", q = quote_ident(&c.name)))
                    .collect();
                if sets.is_empty() {
                    return None;
                }
                let found = if keyed {
                    format!(
                        ", {s} AS o WHERE n.__ferry_seq = $1 AND n.__ferry_op = {OP_NEW} AND o.__ferry_seq = $1 AND o.__ferry_op = {OP_OLD} AND {}",
                        key_match(self.schema, "t", "o")
                    )
                } else {
                    format!(
                        " WHERE n.__ferry_seq = $1 AND n.__ferry_op = {OP_NEW} AND {} = ({})",
                        self.target.address("t"),
                        self.one_row(OP_OLD, pattern)
                    )
                };
                format!(
                    "UPDATE {t} AS t SET {} FROM {s} AS n{found}",
                    sets.join(", ")
                )
            }
        })
    }

    /// The address (`ctid`, with `tableoid` when partitioned) of one target
    /// row equal to the staged row of op `op` at seq `$1` on the columns of
    /// `pattern`: `=` (text for types without equality) or `IS NULL`, so an
    /// index on any of them can be used.
    fn one_row(&self, op: i16, pattern: &str) -> String {
        let t = self.target.rows();
        let s = format!("pg_temp.{}", quote_ident(self.stage));
        let mut conds = vec![format!("o.__ferry_seq = $1 AND o.__ferry_op = {op}")];
        for (c, p) in self.schema.columns.iter().zip(pattern.chars()) {
            let q = quote_ident(&c.name);
            match p {
                'n' => conds.push(format!("x.{q} IS NULL")),
                'v' => {
                    let ty = self.types.get(&c.name).map(String::as_str).unwrap_or("");
                    if TEXT_COMPARED.contains(&ty.trim_end_matches("[]")) {
                        conds.push(format!("x.{q}::text = o.{q}::text"));
                    } else {
                        conds.push(format!("x.{q} = o.{q}"));
                    }
                }
                _ => {}
            }
        }
        format!(
            "SELECT {} FROM {t} AS x, {s} AS o WHERE {} LIMIT 1",
            self.target.address_columns("x"),
            conds.join(" AND ")
        )
    }
}

#[cfg(test)]
mod tests;
