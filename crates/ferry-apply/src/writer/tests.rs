use ferry_core::{Column, ReplicaIdentity};

use super::*;

fn schema() -> TableSchema {
    let col = |name: &str| Column {
        name: name.into(),
        source_type: "text".into(),
        pg_type: "text".into(),
        type_oid: None,
        nullable: true,
    };
    TableSchema {
        id: TableId::new("src", "t"),
        columns: vec![col("id"), col("Big Doc"), col("n")],
        key: vec![0],
        replica_identity: ReplicaIdentity::Default,
    }
}

#[test]
fn keyed_sql_golden() {
    let s = schema();
    let t = TableId::new("dst", "T");
    assert_eq!(
        delete_sql(&t, "st", &s),
        "DELETE FROM \"dst\".\"T\" AS t USING pg_temp.\"st\" AS s WHERE s.__ferry_op = 0 AND t.\"id\" = s.\"id\""
    );
    assert_eq!(
        upsert_sql(&t, "st", &s),
        "INSERT INTO \"dst\".\"T\" (\"id\", \"Big Doc\", \"n\") OVERRIDING SYSTEM VALUE SELECT \"id\", \"Big Doc\", \"n\" FROM pg_temp.\"st\" WHERE __ferry_op = 1 ON CONFLICT (\"id\") DO UPDATE SET \"Big Doc\" = EXCLUDED.\"Big Doc\", \"n\" = EXCLUDED.\"n\""
    );
    assert_eq!(
        update_sql(&t, "st", &s, "101").unwrap(),
        "UPDATE \"dst\".\"T\" AS t SET \"n\" = s.\"n\" FROM pg_temp.\"st\" AS s WHERE s.__ferry_op = 2 AND s.__ferry_mask = '101' AND t.\"id\" = s.\"id\""
    );
    assert_eq!(update_sql(&t, "st", &s, "100"), None);
    assert_eq!(
        truncate_sql(&["\"a\".\"b\"".into(), "\"a\".\"c\"".into()], true, true),
        "TRUNCATE \"a\".\"b\", \"a\".\"c\" RESTART IDENTITY CASCADE"
    );
}

#[test]
fn keyless_sql_matches_one_row_and_compares_json_as_text() {
    let mut s = schema();
    s.key.clear();
    let types: HashMap<String, String> = [
        ("id".to_owned(), "integer".to_owned()),
        ("Big Doc".to_owned(), "json".to_owned()),
        ("n".to_owned(), "text".to_owned()),
    ]
    .into();
    let sql = KeylessSql::new(&TableId::new("d", "k"), "st", &s, &types);
    assert!(
        sql.delete
            .starts_with("DELETE FROM \"d\".\"k\" WHERE ctid = (SELECT x.ctid FROM")
    );
    assert!(sql.delete.ends_with("LIMIT 1)"));
    assert!(
        sql.delete
            .contains("x.\"Big Doc\"::text IS NOT DISTINCT FROM o.\"Big Doc\"::text")
    );
    assert!(
        sql.delete
            .contains("x.\"id\" IS NOT DISTINCT FROM o.\"id\"")
    );
    assert!(sql.update.contains(
        "CASE WHEN substr(n.__ferry_mask, 2, 1) = '1' THEN n.\"Big Doc\" ELSE t.\"Big Doc\" END"
    ));
}
