//! Schema drift: a source `Relation` compared with the target table it is
//! applied to, before any row of the new shape is written.
//!
//! Logical decoding carries no DDL, only the new column list (names, types,
//! key flags) of a table whose shape changed. ferry applies exactly what it
//! can and stops on everything else, naming the table, the change and the
//! fix (DESIGN.md §1 invariant 5, "never a silent divergence"):
//!
//! | source change | seen as | what ferry does |
//! |---|---|---|
//! | column added | a Relation column the target lacks | `ADD COLUMN` on the target when the applier may run DDL, else stop |
//! | column renamed | at one position, a target column the Relation lacks and a Relation column the target lacks | stop: rename it on the target |
//! | column dropped | a target column the Relation lacks | stop: drop it on the target |
//! | column type changed | same name, other type | stop: alter the target column |
//! | key added or changed | Relation key columns without a unique index on exactly them in the target | stop: create the key on the target |
//! | primary key dropped | no Relation key (REPLICA IDENTITY DEFAULT) but a target primary key | stop: drop it on the target |
//!
//! A Relation of a table the target does not have yet (a table created on a
//! MySQL/MariaDB source mid-stream, see `ferry-mysql`'s `schema_change`)
//! creates it with [`crate::ddl::create_table`] when the applier may run
//! DDL.
//!
//! The target is the reference (not the previous Relation): after a restart
//! there is no previous one, and what matters is what the writer's SQL will
//! meet. Generated target columns are left out (pgoutput does not send them).
//! The comparison ([`drift`]) and the verdict ([`check`]) are pure and
//! table-tested; [`read_shape`] reads the target catalog.

use std::collections::BTreeSet;

use ferry_core::schema::quote_ident;
use ferry_core::{Error, ReplicaIdentity, Result, TableId, TableSchema};
use tokio_postgres::Client;

use crate::error::pg_error;

/// A target column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    pub type_name: String,
    pub not_null: bool,
}

/// The shape of a target table that the writer depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetShape {
    /// Non-generated columns in column order.
    pub columns: Vec<TargetColumn>,
    /// Column sets of usable unique indexes (no predicate, no expression).
    pub unique_keys: Vec<BTreeSet<String>>,
    /// Primary key columns, if any.
    pub primary_key: Option<Vec<String>>,
}

/// One difference between a source Relation and its target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    Added {
        column: String,
        type_name: String,
    },
    Renamed {
        from: String,
        to: String,
    },
    Dropped {
        column: String,
        not_null: bool,
    },
    TypeChanged {
        column: String,
        source: String,
        target: String,
    },
    /// The source identifies rows by `key`; the target has no unique index
    /// on exactly those columns (`ON CONFLICT` would fail).
    KeyMissing {
        key: Vec<String>,
    },
    /// The source table has no key any more; the target still has `key`.
    KeyDropped {
        key: Vec<String>,
    },
}

impl Drift {
    /// Whether ferry can apply it (an added column, when allowed DDL).
    fn applicable(&self, add_columns: bool) -> bool {
        add_columns && matches!(self, Drift::Added { .. })
    }

    fn describe(&self) -> String {
        match self {
            Drift::Added { column, type_name } => {
                format!("column {} ({type_name}) was added", quote_ident(column))
            }
            Drift::Renamed { from, to } => format!(
                "column {} was renamed to {}",
                quote_ident(from),
                quote_ident(to)
            ),
            Drift::Dropped { column, not_null } => format!(
                "column {}{} was dropped",
                quote_ident(column),
                if *not_null { " (NOT NULL)" } else { "" }
            ),
            Drift::TypeChanged {
                column,
                source,
                target,
            } => format!(
                "column {} changed type to {source} (target: {target})",
                quote_ident(column)
            ),
            Drift::KeyMissing { key } => format!(
                "rows are now identified by ({}), which has no primary key or unique index on the target",
                idents(key)
            ),
            Drift::KeyDropped { key } => format!(
                "the primary key ({}) was dropped (the target still has it)",
                idents(key)
            ),
        }
    }

    fn fix(&self, t: &str) -> String {
        match self {
            Drift::Added { column, type_name } => format!(
                "ALTER TABLE {t} ADD COLUMN {} {type_name} (with the source's DEFAULT)",
                quote_ident(column)
            ),
            Drift::Renamed { from, to } => format!(
                "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                quote_ident(from),
                quote_ident(to)
            ),
            Drift::Dropped { column, .. } => {
                format!("ALTER TABLE {t} DROP COLUMN {}", quote_ident(column))
            }
            Drift::TypeChanged { column, source, .. } => format!(
                "ALTER TABLE {t} ALTER COLUMN {q} TYPE {source} USING {q}::{source} (or the source's USING expression)",
                q = quote_ident(column)
            ),
            Drift::KeyMissing { key } => {
                format!("ALTER TABLE {t} ADD PRIMARY KEY ({})", idents(key))
            }
            Drift::KeyDropped { .. } => {
                format!("ALTER TABLE {t} DROP CONSTRAINT <its primary key constraint>")
            }
        }
    }
}

fn idents(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Type names equal up to case, spacing, a schema qualifier and the
/// internal aliases (`int4` = `integer`).
fn same_type(a: &str, b: &str) -> bool {
    fn canon(t: &str) -> String {
        let t = t.trim().to_ascii_lowercase();
        // `public.mood[]` vs `mood[]`: the qualifier depends on search_path.
        let t = match t.find('.') {
            Some(i) if !t[..i].contains('(') => t[i + 1..].to_owned(),
            _ => t,
        };
        let (base, arr) = match t.strip_suffix("[]") {
            Some(b) => (b.to_owned(), "[]"),
            None => (t, ""),
        };
        let base = match base.as_str() {
            "int2" => "smallint",
            "int4" | "int" => "integer",
            "int8" => "bigint",
            "float4" => "real",
            "float8" => "double precision",
            "bool" => "boolean",
            "varchar" => "character varying",
            "bpchar" => "character",
            "timestamptz" => "timestamp with time zone",
            "timestamp" => "timestamp without time zone",
            "timetz" => "time with time zone",
            "time" => "time without time zone",
            other => other,
        }
        .to_owned();
        format!("{base}{arr}")
    }
    // `timestamp(3)` = `timestamp(3) without time zone` (typmod placement).
    canon(a) == canon(b) || crate::conversion::assess(a, b) == crate::conversion::Assessment::Same
}

/// Every difference between the Relation `source` and the `target` table.
pub fn drift(source: &TableSchema, target: &TargetShape) -> Vec<Drift> {
    let in_source = |n: &str| source.columns.iter().any(|c| c.name == n);
    let find_target = |n: &str| target.columns.iter().find(|c| c.name == n);
    let mut out = Vec::new();
    let mut renamed_from = BTreeSet::new();
    for (i, c) in source.columns.iter().enumerate() {
        match find_target(&c.name) {
            Some(t) if !same_type(&t.type_name, &c.pg_type) => out.push(Drift::TypeChanged {
                column: c.name.clone(),
                source: c.pg_type.clone(),
                target: t.type_name.clone(),
            }),
            Some(_) => {}
            None => match target.columns.get(i) {
                // The target column at this position is gone from the
                // source: the same column under a new name.
                Some(t) if !in_source(&t.name) => {
                    renamed_from.insert(t.name.clone());
                    out.push(Drift::Renamed {
                        from: t.name.clone(),
                        to: c.name.clone(),
                    });
                }
                _ => out.push(Drift::Added {
                    column: c.name.clone(),
                    type_name: c.pg_type.clone(),
                }),
            },
        }
    }
    for t in &target.columns {
        if !in_source(&t.name) && !renamed_from.contains(&t.name) {
            out.push(Drift::Dropped {
                column: t.name.clone(),
                not_null: t.not_null,
            });
        }
    }
    let key: Vec<String> = source.key_names().map(str::to_owned).collect();
    if !key.is_empty() {
        let wanted: BTreeSet<String> = key.iter().cloned().collect();
        if !target.unique_keys.contains(&wanted) {
            out.push(Drift::KeyMissing { key });
        }
    } else if source.replica_identity == ReplicaIdentity::Default
        && let Some(pk) = &target.primary_key
    {
        out.push(Drift::KeyDropped { key: pk.clone() });
    }
    out
}

/// Target tables the application created (`[target_tables] mode =
/// "existing"`) may have columns the source never had, checked by `ferry
/// plan` (nullable or with a default): they are not drops.
pub fn keep_extra_target_columns(drifts: &mut Vec<Drift>) {
    drifts.retain(|d| !matches!(d, Drift::Dropped { .. }));
}

/// `Ok` when the writer can apply changes of `source`'s shape to `target`
/// (after adding columns, if `add_columns`); otherwise the operator error
/// naming the table, every change and its fix.
pub fn check(
    source: &TableId,
    target: &TableId,
    drifts: &[Drift],
    add_columns: bool,
) -> Result<()> {
    let blocking: Vec<&Drift> = drifts
        .iter()
        .filter(|d| !d.applicable(add_columns))
        .collect();
    if blocking.is_empty() {
        return Ok(());
    }
    let t = target.quoted();
    let changes: Vec<String> = blocking.iter().map(|d| d.describe()).collect();
    let fixes: Vec<String> = blocking.iter().map(|d| format!("{};", d.fix(&t))).collect();
    Err(Error::operator(
        format!(
            "table {source} changed on the source in a way ferry cannot apply exactly (logical decoding carries no DDL): {}; stopped before applying any change of the new shape",
            changes.join(", ")
        ),
        format!(
            "apply the same change to the target table {t}: {} then start `ferry run` again (it resumes at this change)",
            fixes.join(" ")
        ),
    ))
}

/// `ADD COLUMN` statements for the columns added on the source.
pub fn add_columns_sql(target: &TableId, drifts: &[Drift]) -> Vec<String> {
    drifts
        .iter()
        .filter_map(|d| match d {
            Drift::Added { column, type_name } => Some(format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {type_name}",
                target.quoted(),
                quote_ident(column)
            )),
            _ => None,
        })
        .collect()
}

/// Whether `target` exists on the target.
pub async fn exists(client: &Client, target: &TableId) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&target.quoted()])
        .await
        .map_err(|e| pg_error(format!("looking up {target}"), e))?;
    Ok(row.get(0))
}

/// Read the shape of `target` from the target catalog.
pub async fn read_shape(client: &Client, target: &TableId) -> Result<TargetShape> {
    let name = target.quoted();
    let err = |e| pg_error(format!("reading the columns of {target}"), e);
    let columns = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
               AND attgenerated = '' ORDER BY attnum",
            &[&name],
        )
        .await
        .map_err(err)?
        .into_iter()
        .map(|r| TargetColumn {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
        })
        .collect();
    let mut shape = TargetShape {
        columns,
        ..TargetShape::default()
    };
    let rows = client
        .query(
            "SELECT i.indisprimary, array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(n, o)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
             FROM pg_index i WHERE i.indrelid = $1::text::regclass AND i.indisunique
               AND i.indpred IS NULL AND i.indexprs IS NULL",
            &[&name],
        )
        .await
        .map_err(err)?;
    for r in rows {
        let cols: Vec<String> = r.get(1);
        if r.get::<_, bool>(0) {
            shape.primary_key = Some(cols.clone());
        }
        shape.unique_keys.push(cols.into_iter().collect());
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::Column;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            source_type: ty.into(),
            pg_type: ty.into(),
            type_oid: None,
            nullable: true,
        }
    }

    fn source(cols: &[(&str, &str)], key: &[usize], ri: ReplicaIdentity) -> TableSchema {
        TableSchema {
            id: TableId::new("Sales", "Order Items"),
            columns: cols.iter().map(|(n, t)| col(n, t)).collect(),
            key: key.to_vec(),
            replica_identity: ri,
        }
    }

    fn target(cols: &[(&str, &str, bool)], pk: Option<&[&str]>) -> TargetShape {
        let pk: Option<Vec<String>> = pk.map(|k| k.iter().map(|s| s.to_string()).collect());
        TargetShape {
            columns: cols
                .iter()
                .map(|(n, t, nn)| TargetColumn {
                    name: n.to_string(),
                    type_name: t.to_string(),
                    not_null: *nn,
                })
                .collect(),
            unique_keys: pk.iter().map(|k| k.iter().cloned().collect()).collect(),
            primary_key: pk,
        }
    }

    use ReplicaIdentity::{Default as Dflt, Full};

    /// (source columns, key, identity, target, expected drift)
    type Case = (
        Vec<(&'static str, &'static str)>,
        Vec<usize>,
        ReplicaIdentity,
        TargetShape,
        Vec<Drift>,
    );

    #[test]
    fn drift_decisions() {
        let base = [("id", "integer", true), ("note", "text", false)];
        let s = |n: &str| n.to_string();
        // (source columns, key, identity, target, expected drift)
        let cases: Vec<Case> = vec![
            // Unchanged, aliases and qualifiers do not count.
            (
                vec![("id", "int4"), ("note", "text")],
                vec![0],
                Dflt,
                target(&base, Some(&["id"])),
                vec![],
            ),
            (
                vec![("id", "integer"), ("m", "mood[]")],
                vec![0],
                Dflt,
                target(
                    &[("id", "integer", true), ("m", "public.mood[]", false)],
                    Some(&["id"]),
                ),
                vec![],
            ),
            // Added at the end.
            (
                vec![
                    ("id", "integer"),
                    ("note", "text"),
                    ("extra", "numeric(5,1)"),
                ],
                vec![0],
                Dflt,
                target(&base, Some(&["id"])),
                vec![Drift::Added {
                    column: s("extra"),
                    type_name: s("numeric(5,1)"),
                }],
            ),
            // Renamed in place.
            (
                vec![("id", "integer"), ("remark", "text")],
                vec![0],
                Dflt,
                target(&base, Some(&["id"])),
                vec![Drift::Renamed {
                    from: s("note"),
                    to: s("remark"),
                }],
            ),
            // Dropped (NOT NULL on the target: every insert would fail).
            (
                vec![("id", "integer")],
                vec![0],
                Dflt,
                target(
                    &[("id", "integer", true), ("note", "text", true)],
                    Some(&["id"]),
                ),
                vec![Drift::Dropped {
                    column: s("note"),
                    not_null: true,
                }],
            ),
            // Type changed.
            (
                vec![("id", "bigint"), ("note", "text")],
                vec![0],
                Dflt,
                target(&base, Some(&["id"])),
                vec![Drift::TypeChanged {
                    column: s("id"),
                    source: s("bigint"),
                    target: s("integer"),
                }],
            ),
            // A new primary key the target lacks.
            (
                vec![("id", "integer"), ("note", "text")],
                vec![0],
                Dflt,
                target(&base, None),
                vec![Drift::KeyMissing { key: vec![s("id")] }],
            ),
            // The key grew.
            (
                vec![("id", "integer"), ("note", "text")],
                vec![0, 1],
                Dflt,
                target(&base, Some(&["id"])),
                vec![Drift::KeyMissing {
                    key: vec![s("id"), s("note")],
                }],
            ),
            // The primary key was dropped on the source.
            (
                vec![("id", "integer"), ("note", "text")],
                vec![],
                Dflt,
                target(&base, Some(&["id"])),
                vec![Drift::KeyDropped { key: vec![s("id")] }],
            ),
            // REPLICA IDENTITY FULL without a key on either side: fine.
            (
                vec![("id", "integer"), ("note", "text")],
                vec![],
                Full,
                target(&base, None),
                vec![],
            ),
            // Dropped in the middle and added at the end: not a rename.
            (
                vec![("id", "integer"), ("extra", "text")],
                vec![0],
                Dflt,
                target(
                    &[
                        ("id", "integer", true),
                        ("a", "text", false),
                        ("b", "text", false),
                    ],
                    Some(&["id"]),
                ),
                vec![
                    Drift::Renamed {
                        from: s("a"),
                        to: s("extra"),
                    },
                    Drift::Dropped {
                        column: s("b"),
                        not_null: false,
                    },
                ],
            ),
        ];
        for (i, (cols, key, ri, t, want)) in cases.into_iter().enumerate() {
            let got = drift(&source(&cols, &key, ri), &t);
            assert_eq!(got, want, "case {i}: {cols:?}");
        }
    }

    #[test]
    fn verdicts_name_table_change_and_fix() {
        let src = TableId::new("Sales", "Order Items");
        let tgt = TableId::new("Sales", "Order Items");
        let added = Drift::Added {
            column: "x".into(),
            type_name: "integer".into(),
        };
        assert!(check(&src, &tgt, &[], false).is_ok());
        assert!(check(&src, &tgt, std::slice::from_ref(&added), true).is_ok());
        let e = check(&src, &tgt, std::slice::from_ref(&added), false).unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("ADD COLUMN \"x\" integer"), "{e}");
        let e = check(
            &src,
            &tgt,
            &[
                added,
                Drift::Renamed {
                    from: "note".into(),
                    to: "Remark".into(),
                },
            ],
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("table \"Sales\".\"Order Items\" changed on the source"),
            "{e}"
        );
        assert!(
            e.contains("column \"note\" was renamed to \"Remark\""),
            "{e}"
        );
        assert!(
            e.contains(
                "ALTER TABLE \"Sales\".\"Order Items\" RENAME COLUMN \"note\" TO \"Remark\";"
            ),
            "{e}"
        );
        assert!(
            !e.contains("ADD COLUMN"),
            "applicable changes are not listed: {e}"
        );
        assert_eq!(
            add_columns_sql(
                &tgt,
                &[Drift::Added {
                    column: "New Col".into(),
                    type_name: "numeric(5,1)".into()
                }]
            ),
            vec![
                "ALTER TABLE \"Sales\".\"Order Items\" ADD COLUMN IF NOT EXISTS \"New Col\" numeric(5,1)"
            ]
        );
    }
}
