use ferry_core::ReplicaIdentity;
use ferry_core::schema::Column;

use super::*;

fn source(name: &str, cols: &[(&str, &str)], key: &[usize]) -> TableSchema {
    TableSchema {
        id: TableId::new("main", name),
        columns: cols
            .iter()
            .map(|(n, t)| Column {
                name: (*n).into(),
                source_type: String::new(),
                pg_type: (*t).into(),
                type_oid: None,
                nullable: true,
            })
            .collect(),
        key: key.to_vec(),
        replica_identity: ReplicaIdentity::Default,
    }
}

/// (name, type, not null, default, generated)
fn target(name: &str, cols: &[(&str, &str, bool, bool, bool)], key: &[&str]) -> TargetTable {
    TargetTable {
        id: TableId::new("public", name),
        columns: cols
            .iter()
            .map(|(n, t, nn, d, g)| TargetColumn {
                name: (*n).into(),
                type_name: (*t).into(),
                not_null: *nn,
                has_default: *d,
                generated: *g,
            })
            .collect(),
        unique_keys: vec![key.iter().map(|k| (*k).to_owned()).collect()],
    }
}

fn none(_: &TableId, _: &str) -> bool {
    false
}

fn into_public(t: &TableId) -> TableId {
    TableId::new("public", t.name.clone())
}

#[test]
fn prisma_names_match_case_insensitively_and_convert() {
    let s = source(
        "user",
        &[
            ("id", "text"),
            ("createdat", "bigint"),
            ("isActive", "boolean"),
            ("profile", "text"),
        ],
        &[0],
    );
    let t = target(
        "User",
        &[
            ("id", "uuid", true, false, false),
            (
                "createdAt",
                "timestamp(3) without time zone",
                true,
                true,
                false,
            ),
            ("isActive", "boolean", true, false, false),
            ("profile", "jsonb", false, false, false),
            (
                "updatedAt",
                "timestamp(3) without time zone",
                false,
                false,
                false,
            ),
        ],
        &["id"],
    );
    let (m, findings) = resolve(std::slice::from_ref(&s), into_public, none, &[t], false);
    assert!(
        findings.iter().all(|f| f.severity != Severity::Refuse),
        "{findings:#?}"
    );
    let tm = m.table(&s.id).unwrap();
    assert_eq!(tm.target, TableId::new("public", "User"));
    let view = m.view(&s);
    let names: Vec<_> = view.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "createdAt", "isActive", "profile"]);
    assert_eq!(view.columns[1].pg_type, "timestamp(3) without time zone");
    // text → uuid and text → jsonb may fail: warned, with the fix.
    let warns: Vec<_> = findings
        .iter()
        .filter(|f| f.severity == Severity::Warn)
        .map(|f| f.detail.as_str())
        .collect();
    assert_eq!(warns.len(), 2, "{warns:?}");
    assert!(warns.iter().any(|w| w.contains("(uuid)")));
    assert!(
        findings
            .iter()
            .any(|f| f.severity == Severity::Note && f.detail.contains("epoch"))
    );
    assert!(findings.iter().any(|f| {
        f.detail
            .contains("\"updatedAt\" has no source column: rows get NULL")
    }));
}

#[test]
fn refusals_name_what_is_missing_and_the_fix() {
    let s = source("orders", &[("id", "bigint"), ("note", "text")], &[0]);
    let t = target(
        "orders",
        &[
            ("id", "bigint", true, false, false),
            ("must", "text", true, false, false),
        ],
        &[],
    );
    let (_, findings) = resolve(
        &[s, source("gone", &[("id", "bigint")], &[])],
        into_public,
        none,
        &[t],
        false,
    );
    let refused: Vec<_> = findings
        .iter()
        .filter(|f| f.severity == Severity::Refuse)
        .map(|f| format!("{} | {}", f.detail, f.fix.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(
        refused[0].contains("source column \"note\" has no column")
            && refused[0].contains("ADD COLUMN \"note\" text")
    );
    assert!(
        refused[1].contains("\"must\" is NOT NULL without a default")
            && refused[1].contains("SET DEFAULT")
    );
    assert!(
        refused[2].contains("no primary key or unique index on (\"id\")")
            && refused[2].contains("ADD PRIMARY KEY")
    );
    assert!(
        refused[3].contains("no target table public.gone") && refused[3].contains("tables.exclude")
    );
}

#[test]
fn ambiguous_case_and_binary_loads_refuse() {
    let s = source("t", &[("a", "integer")], &[]);
    let twice = target(
        "t",
        &[
            ("A", "integer", false, false, false),
            ("a ", "integer", false, false, false),
        ],
        &[],
    );
    let mut two = twice.clone();
    two.columns[1].name = "A".into();
    two.columns[0].name = "a".into();
    // Exact wins over case-insensitive.
    let (m, f) = resolve(std::slice::from_ref(&s), into_public, none, &[two], false);
    assert!(f.iter().all(|f| f.severity == Severity::Note), "{f:?}");
    assert_eq!(m.table(&s.id).unwrap().columns[0].target, "a");
    let mut amb = twice;
    amb.columns[1].name = "A".into();
    amb.columns[0].name = "A".into();
    let (_, f) = resolve(
        &[source("t", &[("a", "integer")], &[])],
        into_public,
        none,
        &[amb],
        false,
    );
    assert!(f[0].detail.contains("matches 2 columns"), "{f:?}");
    // A PostgreSQL source (binary COPY) needs the same types.
    let t = target("t", &[("a", "bigint", false, false, false)], &[]);
    let (_, f) = resolve(&[s], into_public, none, &[t], true);
    assert_eq!(f[0].severity, Severity::Refuse);
    assert!(
        f[0].fix.as_deref().unwrap().contains("TYPE integer"),
        "{f:?}"
    );
}

#[test]
fn excluded_columns_are_left_out_of_schema_and_changes() {
    let s = source(
        "t",
        &[("id", "bigint"), ("secret", "text"), ("name", "text")],
        &[0],
    );
    let t = target(
        "t",
        &[
            ("id", "bigint", true, false, false),
            ("name", "text", false, false, false),
        ],
        &["id"],
    );
    let out = |_: &TableId, c: &str| c == "secret";
    let (m, f) = resolve(
        std::slice::from_ref(&s),
        into_public,
        out,
        std::slice::from_ref(&t),
        false,
    );
    assert!(f.iter().all(|f| f.severity == Severity::Note), "{f:?}");
    assert!(
        f.iter()
            .any(|f| f.detail.contains("\"secret\" is excluded"))
    );
    let view = m.view(&s);
    let names: Vec<_> = view.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!((names, view.key.clone()), (vec!["id", "name"], vec![0]));
    assert_eq!(m.project_schema(&s).columns.len(), 2);
    let v = |x: &str| Value::Text(x.into());
    let change = Change::Update {
        table: s.id.clone(),
        old: Some(OldRow::Key(Row::new(vec![
            Value::Int8(1),
            Value::Null,
            Value::Null,
        ]))),
        new: Row::new(vec![Value::Int8(1), v("pw"), v("n")]),
    };
    assert_eq!(
        m.project_change(change),
        Change::Update {
            table: s.id.clone(),
            old: Some(OldRow::Key(Row::new(vec![Value::Int8(1), Value::Null]))),
            new: Row::new(vec![Value::Int8(1), v("n")]),
        }
    );
    // Without the exclude, the column is refused with the way out named.
    let (_, f) = resolve(std::slice::from_ref(&s), into_public, none, &[t], false);
    assert!(
        f.iter().any(|f| f.severity == Severity::Refuse
            && f.fix
                .as_deref()
                .is_some_and(|x| x.contains("exclude = true"))),
        "{f:?}"
    );
}
