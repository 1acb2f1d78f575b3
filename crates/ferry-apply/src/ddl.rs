//! DDL for NON-PostgreSQL sources (MySQL/MariaDB, SQLite): the target tables
//! are generated from [`TableSchema`] (DESIGN.md §5; PG→PG replays the
//! source's own DDL instead).
//!
//! Consumes: a [`TableSchema`] (columns carry their mapped `pg_type`) and the
//! target name. Emits: SQL text (pure functions, golden-tested).
//!
//! - [`create_table`]: `CREATE TABLE IF NOT EXISTS` with quoted identifiers,
//!   `NOT NULL`, and the key as `PRIMARY KEY`. Secondary indexes are not
//!   generated (yet).
//! - [`alter_table`]: for a `Relation` that changes a table mid-stream,
//!   `ADD COLUMN IF NOT EXISTS` for new columns and `ALTER COLUMN ... TYPE`
//!   for changed types (both idempotent, so a replayed Relation after a
//!   restart is harmless). Dropped source columns are kept on the target
//!   (never destroy data; their values become NULL for new rows when nullable).
//!
//! `pg_type` is spliced as a type expression (`numeric(20)`, `text[]`): it
//! comes from ferry's type mapping, not from row data.

use ferry_core::schema::quote_ident;
use ferry_core::{Column, TableId, TableSchema};

/// `CREATE SCHEMA IF NOT EXISTS` for the target table's schema.
pub fn create_schema(target: &TableId) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        quote_ident(&target.schema)
    )
}

fn column_def(c: &Column, in_key: bool) -> String {
    let not_null = if !c.nullable || in_key {
        " NOT NULL"
    } else {
        ""
    };
    format!("{} {}{not_null}", quote_ident(&c.name), c.pg_type)
}

/// `CREATE TABLE IF NOT EXISTS` for `schema` under the name `target`.
pub fn create_table(target: &TableId, schema: &TableSchema) -> String {
    let mut lines: Vec<String> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("    {}", column_def(c, schema.key.contains(&i))))
        .collect();
    if schema.has_key() {
        let key: Vec<String> = schema.key_names().map(quote_ident).collect();
        lines.push(format!("    PRIMARY KEY ({})", key.join(", ")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n{}\n)",
        target.quoted(),
        lines.join(",\n")
    )
}

/// Statements that bring a target table from `old` to `new` (same table).
/// Columns are matched by name; empty when nothing changed.
pub fn alter_table(target: &TableId, old: &TableSchema, new: &TableSchema) -> Vec<String> {
    let t = target.quoted();
    let mut out = Vec::new();
    for c in &new.columns {
        match old.columns.iter().find(|o| o.name == c.name) {
            None => {
                // NOT NULL cannot be added to a table with rows without a
                // default; the source enforces it, the target column stays
                // nullable.
                out.push(format!(
                    "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {} {}",
                    quote_ident(&c.name),
                    c.pg_type
                ));
            }
            Some(o) => {
                let q = quote_ident(&c.name);
                if !same_type(&o.pg_type, &c.pg_type) {
                    out.push(format!(
                        "ALTER TABLE {t} ALTER COLUMN {q} TYPE {ty} USING {q}::{ty}",
                        ty = c.pg_type
                    ));
                }
                if !o.nullable && c.nullable {
                    out.push(format!("ALTER TABLE {t} ALTER COLUMN {q} DROP NOT NULL"));
                }
            }
        }
    }
    out
}

fn same_type(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::ReplicaIdentity;

    fn col(name: &str, ty: &str, nullable: bool) -> Column {
        Column {
            name: name.into(),
            source_type: ty.into(),
            pg_type: ty.into(),
            type_oid: None,
            nullable,
        }
    }

    fn schema(columns: Vec<Column>, key: Vec<usize>) -> TableSchema {
        TableSchema {
            id: TableId::new("shop", "Order Lines"),
            columns,
            key,
            replica_identity: ReplicaIdentity::Default,
        }
    }

    #[test]
    fn create_table_golden() {
        let s = schema(
            vec![
                col("id", "bigint", false),
                col("line", "integer", true),
                col("Note \"x\"", "text", true),
                col("price", "numeric(20)", false),
                col("tags", "text[]", true),
            ],
            vec![0, 1],
        );
        let target = TableId::new("public", "order_lines");
        assert_eq!(
            create_table(&target, &s),
            "CREATE TABLE IF NOT EXISTS \"public\".\"order_lines\" (\n    \"id\" bigint NOT NULL,\n    \"line\" integer NOT NULL,\n    \"Note \"\"x\"\"\" text,\n    \"price\" numeric(20) NOT NULL,\n    \"tags\" text[],\n    PRIMARY KEY (\"id\", \"line\")\n)"
        );
        assert_eq!(
            create_schema(&target),
            "CREATE SCHEMA IF NOT EXISTS \"public\""
        );
    }

    #[test]
    fn create_table_without_key_golden() {
        let s = schema(vec![col("a", "text", true)], vec![]);
        assert_eq!(
            create_table(&s.id, &s),
            "CREATE TABLE IF NOT EXISTS \"shop\".\"Order Lines\" (\n    \"a\" text\n)"
        );
    }

    #[test]
    fn alter_table_golden() {
        let old = schema(
            vec![
                col("id", "bigint", false),
                col("name", "varchar(10)", false),
                col("gone", "text", true),
            ],
            vec![0],
        );
        let new = schema(
            vec![
                col("id", "bigint", false),
                col("name", "varchar(40)", true),
                col("added", "jsonb", false),
            ],
            vec![0],
        );
        let t = TableId::new("s", "t");
        assert_eq!(
            alter_table(&t, &old, &new),
            vec![
                "ALTER TABLE \"s\".\"t\" ALTER COLUMN \"name\" TYPE varchar(40) USING \"name\"::varchar(40)",
                "ALTER TABLE \"s\".\"t\" ALTER COLUMN \"name\" DROP NOT NULL",
                "ALTER TABLE \"s\".\"t\" ADD COLUMN IF NOT EXISTS \"added\" jsonb",
            ]
        );
        assert!(alter_table(&t, &new, &new).is_empty());
        let relaxed = schema(vec![col("id", "bigint", true)], vec![]);
        let strict = schema(vec![col("id", "BIGINT", false)], vec![]);
        assert_eq!(
            alter_table(&t, &strict, &relaxed),
            vec!["ALTER TABLE \"s\".\"t\" ALTER COLUMN \"id\" DROP NOT NULL"]
        );
    }
}
