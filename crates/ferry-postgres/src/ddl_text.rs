//! The one thing a DDL message's catalog state cannot say: how an
//! `ALTER TABLE … ALTER COLUMN … TYPE … [USING expr]` converted the rows
//! (the rewrite is not in the WAL). Read from the statement text the
//! event trigger sent (`current_query()`, `ALTER TABLE` commands only),
//! parsed with `sqlparser`'s PostgreSQL dialect, never with regexes.
//!
//! Pure: [`type_changes`] lists every column type change the text holds;
//! [`annotate`] attaches them to the tables of a [`DdlMessage`]. The
//! applier refuses a type change it finds no text for (a function ran the
//! DDL, or the text does not parse), rather than guess the conversion.

use ferry_core::ddl::DdlMessage;
use sqlparser::ast::{AlterColumnOperation, AlterTableOperation, Ident, ObjectName, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// A column type change found in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeChange {
    /// The table's name (last part, folded as PostgreSQL folds it).
    pub table: String,
    pub column: String,
    /// The `USING` expression, `None` for the default cast.
    pub using: Option<String>,
}

fn fold(i: &Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

fn last(name: &ObjectName) -> Option<String> {
    name.0.last()?.as_ident().map(fold)
}

/// Every `ALTER COLUMN … TYPE` in `query`; `None` when it does not parse.
pub fn type_changes(query: &str) -> Option<Vec<TypeChange>> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, query).ok()?;
    let mut out = Vec::new();
    for s in &statements {
        let Statement::AlterTable(alter) = s else {
            continue;
        };
        let Some(table) = last(&alter.name) else {
            continue;
        };
        for op in &alter.operations {
            if let AlterTableOperation::AlterColumn {
                column_name,
                op: AlterColumnOperation::SetDataType { using, .. },
            } = op
            {
                out.push(TypeChange {
                    table: table.clone(),
                    column: fold(column_name),
                    using: using.as_ref().map(ToString::to_string),
                });
            }
        }
    }
    Some(out)
}

/// Attach the type changes of `query` to the tables of `msg` they name.
pub fn annotate(msg: &mut DdlMessage, query: Option<&str>) {
    let Some(query) = query else {
        return;
    };
    let changes = type_changes(query);
    for t in &mut msg.tables {
        match &changes {
            None => t.type_changes_unknown = true,
            Some(changes) => {
                let before = t.before.as_ref().map(|b| b.name.clone());
                for c in changes {
                    if c.table == t.name || Some(&c.table) == before.as_ref() {
                        t.type_changes.insert(c.column.clone(), c.using.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn using_expressions_and_default_casts() {
        let got = type_changes(
            "ALTER TABLE app.orders ALTER COLUMN price TYPE numeric(12,2) USING price / 100.0, \
             ALTER COLUMN \"Qty\" SET DATA TYPE bigint; UPDATE x SET a = 1; \
             alter table Items alter note type varchar(10)",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                TypeChange {
                    table: "orders".into(),
                    column: "price".into(),
                    using: Some("price / 100.0".into())
                },
                TypeChange {
                    table: "orders".into(),
                    column: "Qty".into(),
                    using: None
                },
                TypeChange {
                    table: "items".into(),
                    column: "note".into(),
                    using: None
                },
            ]
        );
        assert_eq!(type_changes("SELECT app.migrate()").unwrap(), vec![]);
        assert!(type_changes("ALTER TABLE ((").is_none());
    }
}
