//! Schema changes in the binlog: what a DDL statement (a QUERY event outside
//! a transaction) means for the carried tables.
//!
//! Consumes the statement text and its default database, parsed with
//! `sqlparser`'s MySQL dialect (never with regexes), and the set of carried
//! tables; emits a [`SchemaChange`] verdict. Pure and table-tested; the
//! change stream ([`crate::changes`]) acts on it at the statement's binlog
//! position:
//!
//! | statement | verdict |
//! |---|---|
//! | `ALTER TABLE t ADD [COLUMN] c type [NULL] [DEFAULT NULL] [COMMENT …]` on a carried table (with `ALGORITHM=`/`LOCK=` if given) | [`SchemaChange::AddColumns`]: carried to the target |
//! | `CREATE TABLE t (…)` of a table the `tables` filter selects | [`SchemaChange::CreateTable`]: created on the target, its rows carried |
//! | `CREATE INDEX`, `DROP INDEX` on a carried table | [`SchemaChange::Index`]: rows are unaffected; logged, not carried |
//! | ADD COLUMN with NOT NULL, a non-NULL DEFAULT, AUTO_INCREMENT, a generated expression, FIRST/AFTER | [`SchemaChange::Unsupported`]: rows already in the table get a value the binlog does not carry |
//! | any other ALTER (DROP/RENAME/MODIFY/CHANGE column, keys, …), DROP/RENAME/TRUNCATE of several tables, anything unparsable that names a carried table | [`SchemaChange::Unsupported`] |
//! | statements on other tables, views, users, … | [`SchemaChange::None`] |
//!
//! An ADD COLUMN is exact only when the rows already in the table hold NULL
//! in the new column on the source too: MySQL fills them with the column's
//! default and logs nothing but the statement.

use std::collections::BTreeSet;

use ferry_core::TableId;
use sqlparser::ast::{
    AlterTableOperation, ColumnDef, ColumnOption, CreateTable, Expr, ObjectName, ObjectType,
    Statement, Value,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

/// A column added by `ALTER TABLE … ADD COLUMN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedColumn {
    pub name: String,
    /// The column type as written (`varchar(20)`, `int unsigned`), lower
    /// case, for [`crate::typemap`] when the catalog no longer has it.
    pub column_type: String,
}

/// What a statement means for the migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaChange {
    /// Nothing carried is touched.
    None,
    /// Columns appended to a carried table.
    AddColumns {
        table: TableId,
        columns: Vec<AddedColumn>,
    },
    /// A new table; the caller decides whether the filter selects it.
    CreateTable {
        table: TableId,
        columns: Vec<String>,
    },
    /// An index built or dropped on a carried table: no row changes.
    Index { table: TableId },
    /// A change ferry cannot apply exactly.
    Unsupported { table: TableId, reason: String },
}

/// The verdict for `statement`, run with default database `database`.
/// `carried` holds the tables the migration carries.
pub fn classify(statement: &str, database: &str, carried: &BTreeSet<TableId>) -> SchemaChange {
    let parsed = Parser::parse_sql(&MySqlDialect {}, statement);
    let statements = match parsed {
        Ok(s) if s.len() == 1 => s,
        _ => {
            return match crate::changes::ddl_touches(statement, database, carried) {
                Some(table) => SchemaChange::Unsupported {
                    table,
                    reason: "ferry cannot parse this statement, so it cannot tell what it changes"
                        .into(),
                },
                None => SchemaChange::None,
            };
        }
    };
    let name = |n: &ObjectName| table_id(n, database);
    let is_carried = |t: &Option<TableId>| t.as_ref().filter(|t| carried.contains(t)).cloned();
    match &statements[0] {
        Statement::AlterTable(alter) => match is_carried(&name(&alter.name)) {
            Some(table) => alter_table(table, &alter.operations),
            None => SchemaChange::None,
        },
        Statement::CreateTable(create) => create_table(create, database, carried),
        Statement::CreateIndex(index) => match is_carried(&name(&index.table_name)) {
            Some(table) => SchemaChange::Index { table },
            None => SchemaChange::None,
        },
        Statement::Drop {
            object_type: ObjectType::Index,
            table: Some(t),
            ..
        } => match is_carried(&name(t)) {
            Some(table) => SchemaChange::Index { table },
            None => SchemaChange::None,
        },
        Statement::Drop {
            object_type: ObjectType::Table,
            names,
            ..
        } => match names.iter().find_map(|n| is_carried(&name(n))) {
            Some(table) => SchemaChange::Unsupported {
                table,
                reason: "a carried table is dropped".into(),
            },
            None => SchemaChange::None,
        },
        Statement::CreateView(_) | Statement::Drop { .. } => SchemaChange::None,
        other => match crate::changes::ddl_touches(&other.to_string(), database, carried)
            .or_else(|| crate::changes::ddl_touches(statement, database, carried))
        {
            Some(table) => SchemaChange::Unsupported {
                table,
                reason: "ferry does not carry this kind of statement".into(),
            },
            None => SchemaChange::None,
        },
    }
}

fn alter_table(table: TableId, operations: &[AlterTableOperation]) -> SchemaChange {
    let mut columns = Vec::new();
    for op in operations {
        let reason = match op {
            AlterTableOperation::AddColumn {
                column_def,
                column_position: None,
                ..
            } => match added_column(column_def) {
                Ok(c) => {
                    columns.push(c);
                    continue;
                }
                Err(reason) => reason,
            },
            // How the server performs the change, not what it changes.
            AlterTableOperation::Algorithm { .. } | AlterTableOperation::Lock { .. } => continue,
            AlterTableOperation::AddColumn {
                column_def,
                column_position: Some(_),
                ..
            } => format!(
                "column `{}` is added at a position (FIRST/AFTER); ferry carries only columns added at the end",
                column_def.name.value
            ),
            other => format!(
                "`{other}` changes existing columns or keys, which ferry cannot apply exactly"
            ),
        };
        return SchemaChange::Unsupported { table, reason };
    }
    if columns.is_empty() {
        return SchemaChange::Unsupported {
            table,
            reason: "an ALTER TABLE without changes ferry recognises".into(),
        };
    }
    SchemaChange::AddColumns { table, columns }
}

/// The column, or why the rows already in the table would differ.
fn added_column(c: &ColumnDef) -> Result<AddedColumn, String> {
    let name = c.name.value.clone();
    for o in &c.options {
        let blocking = match &o.option {
            ColumnOption::Null | ColumnOption::Comment(_) => None,
            ColumnOption::CharacterSet(_) | ColumnOption::Collation(_) => None,
            ColumnOption::Default(Expr::Value(v)) if matches!(v.value, Value::Null) => None,
            ColumnOption::Default(_) => Some(
                "has a DEFAULT: the rows already in the table hold it on the source, which the binlog does not carry",
            ),
            ColumnOption::NotNull => Some(
                "is NOT NULL: the rows already in the table hold its implicit default on the source, which the binlog does not carry",
            ),
            ColumnOption::Generated { .. } => {
                Some("is generated: its values are computed on the source and not carried")
            }
            ColumnOption::DialectSpecific(_) => Some(
                "has AUTO_INCREMENT or another MySQL-specific option whose values for the rows already in the table are not carried",
            ),
            _ => Some("has a constraint or option ferry does not carry"),
        };
        if let Some(why) = blocking {
            return Err(format!("the added column `{name}` {why}"));
        }
    }
    Ok(AddedColumn {
        name,
        column_type: c.data_type.to_string().to_ascii_lowercase(),
    })
}

fn create_table(create: &CreateTable, database: &str, carried: &BTreeSet<TableId>) -> SchemaChange {
    let Some(table) = table_id(&create.name, database) else {
        return SchemaChange::None;
    };
    if create.temporary {
        return SchemaChange::None;
    }
    if create.if_not_exists && carried.contains(&table) {
        return SchemaChange::None;
    }
    if create.like.is_some() || create.clone.is_some() {
        // CREATE TABLE … LIKE: the columns come from the catalog.
        return SchemaChange::CreateTable {
            table,
            columns: Vec::new(),
        };
    }
    if create.or_replace && carried.contains(&table) {
        return SchemaChange::Unsupported {
            table,
            reason: "a carried table is replaced".into(),
        };
    }
    SchemaChange::CreateTable {
        table,
        columns: create
            .columns
            .iter()
            .map(|c| c.name.value.clone())
            .collect(),
    }
}

/// `[db.]name` as a table id (backticks removed by the parser).
fn table_id(name: &ObjectName, database: &str) -> Option<TableId> {
    let parts: Vec<&str> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(|i| i.value.as_str()))
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [t] if !database.is_empty() => Some(TableId::new(database, *t)),
        [d, t] => Some(TableId::new(*d, *t)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried() -> BTreeSet<TableId> {
        [TableId::new("shop", "orders")].into_iter().collect()
    }

    fn verdict(sql: &str) -> SchemaChange {
        classify(sql, "shop", &carried())
    }

    fn unsupported(sql: &str) -> String {
        match verdict(sql) {
            SchemaChange::Unsupported { table, reason } => {
                assert_eq!(table, TableId::new("shop", "orders"), "{sql}");
                reason
            }
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn nullable_columns_added_at_the_end_are_carried() {
        let orders = TableId::new("shop", "orders");
        assert_eq!(
            verdict("ALTER TABLE orders ADD COLUMN note varchar(20)"),
            SchemaChange::AddColumns {
                table: orders.clone(),
                columns: vec![AddedColumn {
                    name: "note".into(),
                    column_type: "varchar(20)".into()
                }]
            }
        );
        assert_eq!(
            verdict("ALTER TABLE orders ADD COLUMN n int, ALGORITHM=INSTANT, LOCK=NONE"),
            SchemaChange::AddColumns {
                table: orders.clone(),
                columns: vec![AddedColumn {
                    name: "n".into(),
                    column_type: "int".into()
                }]
            }
        );
        let SchemaChange::AddColumns { columns, .. } = verdict(
            "alter table `shop`.`orders` add `x` int unsigned null default null comment 'c', add column y decimal(10,2)",
        ) else {
            panic!()
        };
        assert_eq!(
            columns
                .iter()
                .map(|c| (c.name.as_str(), c.column_type.as_str()))
                .collect::<Vec<_>>(),
            [("x", "int unsigned"), ("y", "decimal(10,2)")]
        );
    }

    #[test]
    fn changes_ferry_cannot_apply_exactly_are_named() {
        for (sql, why) in [
            (
                "ALTER TABLE orders DROP COLUMN note",
                "changes existing columns",
            ),
            (
                "ALTER TABLE orders RENAME COLUMN a TO b",
                "changes existing columns",
            ),
            (
                "ALTER TABLE orders MODIFY COLUMN a bigint",
                "changes existing columns",
            ),
            (
                "ALTER TABLE orders CHANGE a b int",
                "changes existing columns",
            ),
            (
                "ALTER TABLE orders ADD COLUMN c int NOT NULL",
                "is NOT NULL",
            ),
            (
                "ALTER TABLE orders ADD COLUMN c int DEFAULT 5",
                "has a DEFAULT",
            ),
            (
                "ALTER TABLE orders ADD COLUMN c int AFTER a",
                "at a position",
            ),
            ("ALTER TABLE orders ADD COLUMN c int FIRST", "at a position"),
            (
                "ALTER TABLE orders ADD COLUMN c int AS (a + 1)",
                "generated",
            ),
            ("DROP TABLE orders", "dropped"),
            ("RENAME TABLE orders TO orders_old", "kind of statement"),
            ("ALTER TABLE orders ADD COLUMN ((( garbage", "cannot parse"),
            (
                "ALTER TABLE orders ALGORITHM=INPLACE",
                "without changes ferry recognises",
            ),
            (
                "ALTER TABLE orders ADD INDEX i (a)",
                "changes existing columns",
            ),
        ] {
            let reason = unsupported(sql);
            assert!(reason.contains(why), "{sql}: {reason}");
        }
    }

    #[test]
    fn other_tables_and_harmless_statements_pass() {
        for sql in [
            "ALTER TABLE customers DROP COLUMN x",
            "ALTER TABLE other.orders DROP COLUMN x",
            "DROP TABLE IF EXISTS scratch",
            "GRANT SELECT ON *.* TO app",
            "CREATE TEMPORARY TABLE orders (id int)",
            "CREATE TABLE IF NOT EXISTS orders (id int)",
            "CREATE VIEW v AS SELECT * FROM orders",
            "not sql at all",
        ] {
            assert_eq!(verdict(sql), SchemaChange::None, "{sql}");
        }
        assert_eq!(
            verdict("CREATE INDEX i ON orders (a)"),
            SchemaChange::Index {
                table: TableId::new("shop", "orders")
            }
        );
        assert_eq!(
            verdict("DROP INDEX i ON orders"),
            SchemaChange::Index {
                table: TableId::new("shop", "orders")
            }
        );
    }

    #[test]
    fn new_tables_are_named_with_their_columns() {
        assert_eq!(
            verdict("CREATE TABLE `shop`.`refunds` (id int primary key, amount decimal(8,2))"),
            SchemaChange::CreateTable {
                table: TableId::new("shop", "refunds"),
                columns: vec!["id".into(), "amount".into()]
            }
        );
        assert_eq!(
            verdict("CREATE TABLE refunds LIKE orders"),
            SchemaChange::CreateTable {
                table: TableId::new("shop", "refunds"),
                columns: vec![]
            }
        );
    }
}
