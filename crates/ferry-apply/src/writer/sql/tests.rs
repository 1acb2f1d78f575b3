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
    let t = Target {
        id: TableId::new("dst", "T"),
        partitioned: false,
    };
    assert_eq!(
        delete_sql(&t, "st", &s),
        "DELETE FROM ONLY \"dst\".\"T\" AS t USING pg_temp.\"st\" AS s WHERE s.__ferry_op = 0 AND t.\"id\" = s.\"id\""
    );
    assert_eq!(
        upsert_sql(&t, "st", &s),
        "INSERT INTO \"dst\".\"T\" (\"id\", \"Big Doc\", \"n\") OVERRIDING SYSTEM VALUE SELECT \"id\", \"Big Doc\", \"n\" FROM pg_temp.\"st\" WHERE __ferry_op = 1 ON CONFLICT (\"id\") DO UPDATE SET \"Big Doc\" = EXCLUDED.\"Big Doc\", \"n\" = EXCLUDED.\"n\""
    );
    assert_eq!(
        insert_sql(&t, "st", &s),
        "INSERT INTO \"dst\".\"T\" (\"id\", \"Big Doc\", \"n\") OVERRIDING SYSTEM VALUE SELECT \"id\", \"Big Doc\", \"n\" FROM pg_temp.\"st\" WHERE __ferry_op = 1"
    );
    assert_eq!(
        copy_target_sql(&t, &s),
        "COPY \"dst\".\"T\" (\"id\", \"Big Doc\", \"n\") FROM STDIN"
    );
    assert_eq!(
        update_sql(&t, "st", &s, "101").unwrap(),
        "UPDATE ONLY \"dst\".\"T\" AS t SET \"n\" = s.\"n\" FROM pg_temp.\"st\" AS s WHERE s.__ferry_op = 2 AND s.__ferry_mask = '101' AND t.\"id\" = s.\"id\""
    );
    assert_eq!(update_sql(&t, "st", &s, "100"), None);
    assert_eq!(
        truncate_sql(&["\"a\".\"b\"".into(), "\"a\".\"c\"".into()], true, true),
        "TRUNCATE \"a\".\"b\", \"a\".\"c\" RESTART IDENTITY CASCADE"
    );
}

#[test]
fn staging_uses_base_types_and_indexes_seq_on_request() {
    let s = schema();
    let types: HashMap<String, String> = [
        ("id".to_owned(), "integer".to_owned()),
        ("Big Doc".to_owned(), "character varying(20)".to_owned()),
        ("n".to_owned(), "text".to_owned()),
    ]
    .into();
    let t = TableId::new("dst", "T");
    assert_eq!(
        create_stage_sql("st", &t, &s, &types, false).unwrap(),
        "CREATE TEMP TABLE \"st\" (\"id\" integer, \"Big Doc\" character varying(20), \"n\" text, __ferry_op smallint, __ferry_mask text, __ferry_seq int) ON COMMIT DELETE ROWS"
    );
    assert!(
        create_stage_sql("st", &t, &s, &types, true)
            .unwrap()
            .ends_with("; CREATE INDEX ON pg_temp.\"st\" (__ferry_seq)")
    );
    let mut missing = types.clone();
    missing.remove("n");
    let err = create_stage_sql("st", &t, &s, &missing, false).unwrap_err();
    assert!(
        err.to_string()
            .contains("target table dst.\"T\" has no column \"n\""),
        "{err}"
    );
}

fn in_order_schema(key: Vec<usize>) -> TableSchema {
    let col = |name: &str| Column {
        name: name.into(),
        source_type: "text".into(),
        pg_type: "text".into(),
        type_oid: None,
        nullable: true,
    };
    TableSchema {
        id: TableId::new("src", "t"),
        columns: vec![col("id"), col("doc"), col("n")],
        key,
        replica_identity: ReplicaIdentity::Full,
    }
}

#[test]
fn in_order_sql_golden() {
    let types: HashMap<String, String> = [
        ("id".to_owned(), "integer".to_owned()),
        ("doc".to_owned(), "json".to_owned()),
        ("n".to_owned(), "text".to_owned()),
    ]
    .into();
    let keyed = in_order_schema(vec![0]);
    let t = Target {
        id: TableId::new("d", "k"),
        partitioned: false,
    };
    let sql = InOrderSql {
        target: &t,
        stage: "st",
        schema: &keyed,
        types: &types,
    };
    assert_eq!(
        sql.sql(&StepKind::Inserts).unwrap(),
        "INSERT INTO \"d\".\"k\" (\"id\", \"doc\", \"n\") OVERRIDING SYSTEM VALUE SELECT \"id\", \"doc\", \"n\" FROM pg_temp.\"st\" WHERE __ferry_op = 1 AND __ferry_seq BETWEEN $1 AND $2 ORDER BY __ferry_seq ON CONFLICT (\"id\") DO UPDATE SET \"doc\" = EXCLUDED.\"doc\", \"n\" = EXCLUDED.\"n\""
    );
    assert_eq!(
        sql.sql(&StepKind::Deletes).unwrap(),
        "DELETE FROM ONLY \"d\".\"k\" AS t USING pg_temp.\"st\" AS s WHERE s.__ferry_op = 0 AND s.__ferry_seq BETWEEN $1 AND $2 AND t.\"id\" = s.\"id\""
    );
    let upd = |mask: &str, key_change| StepKind::UpdateOne {
        pattern: String::new(),
        mask: mask.into(),
        key_change,
    };
    assert_eq!(
        sql.sql(&upd("101", false)).unwrap(),
        "UPDATE ONLY \"d\".\"k\" AS t SET \"n\" = n.\"n\" FROM pg_temp.\"st\" AS n, pg_temp.\"st\" AS o WHERE n.__ferry_seq = $1 AND n.__ferry_op = 2 AND o.__ferry_seq = $1 AND o.__ferry_op = 3 AND t.\"id\" = o.\"id\""
    );
    assert!(
        sql.sql(&upd("101", true))
            .unwrap()
            .contains("SET \"id\" = n.\"id\", \"n\" = n.\"n\" FROM")
    );
    assert_eq!(sql.sql(&upd("100", false)), None);

    let keyless = in_order_schema(vec![]);
    let sql = InOrderSql {
        schema: &keyless,
        ..sql
    };
    assert_eq!(
        sql.sql(&StepKind::Inserts).unwrap(),
        "INSERT INTO \"d\".\"k\" (\"id\", \"doc\", \"n\") OVERRIDING SYSTEM VALUE SELECT \"id\", \"doc\", \"n\" FROM pg_temp.\"st\" WHERE __ferry_op = 1 AND __ferry_seq BETWEEN $1 AND $2 ORDER BY __ferry_seq"
    );
    assert_eq!(
        sql.sql(&StepKind::DeleteOne("vvn".into())).unwrap(),
        "DELETE FROM ONLY \"d\".\"k\" AS t WHERE t.ctid = (SELECT x.ctid FROM ONLY \"d\".\"k\" AS x, pg_temp.\"st\" AS o WHERE o.__ferry_seq = $1 AND o.__ferry_op = 0 AND x.\"id\" = o.\"id\" AND x.\"doc\"::text = o.\"doc\"::text AND x.\"n\" IS NULL LIMIT 1)"
    );
    let u = sql
        .sql(&StepKind::UpdateOne {
            pattern: "vuv".into(),
            mask: "110".into(),
            key_change: false,
        })
        .unwrap();
    assert_eq!(
        u,
        "UPDATE ONLY \"d\".\"k\" AS t SET \"id\" = n.\"id\", \"doc\" = n.\"doc\" FROM pg_temp.\"st\" AS n WHERE n.__ferry_seq = $1 AND n.__ferry_op = 2 AND t.ctid = (SELECT x.ctid FROM ONLY \"d\".\"k\" AS x, pg_temp.\"st\" AS o WHERE o.__ferry_seq = $1 AND o.__ferry_op = 3 AND x.\"id\" = o.\"id\" AND x.\"n\" = o.\"n\" LIMIT 1)"
    );
    // Partitioned: no ONLY (it would match nothing), and a row is found by
    // (tableoid, ctid) since a ctid repeats across partitions.
    let parted = Target {
        id: TableId::new("d", "k"),
        partitioned: true,
    };
    let sql = InOrderSql {
        target: &parted,
        ..sql
    };
    assert_eq!(
        sql.sql(&StepKind::DeleteOne("vun".into())).unwrap(),
        "DELETE FROM \"d\".\"k\" AS t WHERE (t.tableoid, t.ctid) = (SELECT x.tableoid, x.ctid FROM \"d\".\"k\" AS x, pg_temp.\"st\" AS o WHERE o.__ferry_seq = $1 AND o.__ferry_op = 0 AND x.\"id\" = o.\"id\" AND x.\"n\" IS NULL LIMIT 1)"
    );
    assert!(
        sql.sql(&StepKind::UpdateOne {
            pattern: "vuv".into(),
            mask: "110".into(),
            key_change: false,
        })
        .unwrap()
        .starts_with("UPDATE \"d\".\"k\" AS t SET")
    );
    assert_eq!(
        delete_sql(&parted, "st", &keyed),
        "DELETE FROM \"d\".\"k\" AS t USING pg_temp.\"st\" AS s WHERE s.__ferry_op = 0 AND t.\"id\" = s.\"id\""
    );
}
