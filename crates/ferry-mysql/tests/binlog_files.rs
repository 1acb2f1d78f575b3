//! Decodes every binlog fixture in `shared/datasets/mysql-binlogs` (MySQL
//! 8.0/9.x and MariaDB files from `mysql_common`'s tests; see the datasets
//! README, section 6) and checks the rows, positions and GTID sets each
//! holds; then truncated and corrupted copies, which must give typed errors
//! naming file and offset, never a panic.

use std::path::PathBuf;

use ferry_core::{
    Change, Column, Event, MySqlPosition, OldRow, ReplicaIdentity, Row, TableId, TableSchema, Value,
};
use ferry_mysql::binlog::file::BinlogFileReader;
use ferry_mysql::binlog::{BinlogDecoder, Decoded, DecoderOptions, Scope};

const FIXTURES: [&str; 12] = [
    "binlog-invisible-columns.000001",
    "binlog_transaction_previous_GTID_no_tag.000001",
    "binlog_transaction_with_GTID_TAG.000001",
    "json-opaque.binlog",
    "json.binlog.000001",
    "mariadb-bin.000001",
    "minimal_row_metadata.000001",
    "mysql-enum-string-set.000001",
    "mysql_type_bit.000001",
    "time_issue.000001",
    "transaction_compression.000001",
    "vector.binlog",
];

fn fixture(name: &str) -> PathBuf {
    ferry_testkit::dataset_file(format!("mysql-binlogs/{name}")).expect("fixture exists")
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("read fixture")
}

/// A catalog schema as `ferry_mysql::catalog` builds it.
fn schema(db: &str, table: &str, cols: &[(&str, &str)], key: &[usize]) -> TableSchema {
    TableSchema {
        id: TableId::new(db, table),
        columns: cols
            .iter()
            .map(|(name, ty)| Column {
                name: (*name).into(),
                source_type: (*ty).into(),
                pg_type: ferry_mysql::typemap::map_column_type(ty).pg_type,
                type_oid: None,
                nullable: true,
            })
            .collect(),
        key: key.to_vec(),
        replica_identity: ReplicaIdentity::Full,
    }
}

/// Decodes a whole file; stops at the first error and returns it.
fn decode_bytes(
    name: &str,
    data: &[u8],
    opts: DecoderOptions,
    schemas: Vec<TableSchema>,
) -> (Vec<Decoded>, Result<(), ferry_core::Error>, BinlogDecoder) {
    let mut decoder = BinlogDecoder::new(opts, &MySqlPosition::new(name, 4)).unwrap();
    for s in schemas {
        decoder.set_table(s);
    }
    let mut out = Vec::new();
    let reader = match BinlogFileReader::new(name, data) {
        Ok(r) => r,
        Err(e) => return (out, Err(e), decoder),
    };
    for event in reader {
        let event = match event {
            Ok(e) => e,
            Err(e) => return (out, Err(e), decoder),
        };
        match decoder.decode(&event) {
            Ok(d) => out.extend(d),
            Err(e) => return (out, Err(e), decoder),
        }
    }
    (out, Ok(()), decoder)
}

fn decode(name: &str, opts: DecoderOptions, schemas: Vec<TableSchema>) -> Vec<Decoded> {
    let (out, result, _) = decode_bytes(name, &bytes(name), opts, schemas);
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    out
}

fn all() -> DecoderOptions {
    DecoderOptions {
        scope: Scope::All,
        ..DecoderOptions::default()
    }
}

fn listed() -> DecoderOptions {
    DecoderOptions::default()
}

fn row(r: &Row) -> String {
    let v: Vec<String> = r
        .values
        .iter()
        .map(|v| v.to_pg_text().unwrap_or_else(|| "NULL".into()))
        .collect();
    format!("[{}]", v.join("|"))
}

/// One line per item: the test's view of the stream.
fn lines(items: &[Decoded]) -> Vec<String> {
    items
        .iter()
        .map(|d| match d {
            Decoded::Ddl {
                statement,
                position,
                ..
            } => format!("DDL {position} {statement}"),
            Decoded::Event(e) => match e {
                Event::Relation(s) => format!(
                    "R {} {}",
                    s.id,
                    s.columns
                        .iter()
                        .map(|c| format!("{}:{}", c.name, c.pg_type))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Event::Begin { .. } => "B".into(),
                Event::Commit { position, .. } => format!("C {position}"),
                Event::Heartbeat { position, .. } => format!("H {position}"),
                Event::Change(Change::Insert { table, new }) => format!("I {table} {}", row(new)),
                Event::Change(Change::Update { table, old, new }) => format!(
                    "U {table} {} -> {}",
                    old.as_ref().map(|o| row(o.row())).unwrap_or_default(),
                    row(new)
                ),
                Event::Change(Change::Delete { table, old }) => {
                    format!("D {table} {}", row(old.row()))
                }
                Event::Change(Change::Truncate { tables, .. }) => format!("T {tables:?}"),
                Event::Ddl(_) => "DDL message".into(),
                Event::Replaced {
                    table,
                    column,
                    values,
                } => format!("NULLED {table}.{column} {values}"),
            },
        })
        .collect()
}

/// Only the data lines (relations, changes, commits).
fn data_lines(items: &[Decoded]) -> Vec<String> {
    lines(items)
        .into_iter()
        .filter(|l| !l.starts_with("DDL") && !l.starts_with('H'))
        .collect()
}

#[test]
fn the_fixture_set_is_complete() {
    let dir = ferry_testkit::datasets_dir().unwrap().join("mysql-binlogs");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("LICENSE"))
        .collect();
    names.sort();
    assert_eq!(names, FIXTURES, "a fixture without a test below");
}

#[test]
fn mariadb_gtid_annotate_checkpoint_and_rows_v1() {
    let out = decode("mariadb-bin.000001", all(), vec![]);
    assert_eq!(
        lines(&out),
        [
            "B",
            "R toddy_test.outbox id:integer,topic:text,event_type:text,event:bytea,created:timestamptz",
            "I toddy_test.outbox [62|foo|JSON|\\x7b22666f6f223a317d|2022-04-20 22:18:04+00]",
            "C mariadb-bin.000001:702#0-1-1",
            "B",
            "I toddy_test.outbox [63|foo|JSON|\\x7b22666f6f223a317d|2022-04-20 22:19:55+00]",
            "C mariadb-bin.000001:1074#0-1-2",
        ]
    );
    // The column metadata (binlog_row_metadata=FULL) gives names and the key.
    let Decoded::Event(Event::Relation(s)) = &out[1] else {
        panic!("{:?}", out[1])
    };
    assert_eq!(s.key_names().collect::<Vec<_>>(), ["id"]);
}

#[test]
fn mysql_enum_set_char_insert_update_delete() {
    let out = decode("mysql-enum-string-set.000001", all(), vec![]);
    let digits = |n: usize| "0123456789".repeat(n);
    // 298 characters, as the row event holds them.
    let long = format!("{0}012345678{0}012345678{1}", digits(12), digits(4));
    assert_eq!(long.len(), 298);
    let (f2, f5_long) = (long.clone(), long);
    let first = format!("[{}|{}|var1|{{one,three}}|0123456789]", digits(10), f2);
    let second = format!("[field1|field_2|variant2|{{two,four}}|{f5_long}]");
    assert_eq!(
        data_lines(&out),
        [
            "B".to_owned(),
            "R mysql.t f1:text,f2:text,f3:text,f4:text[],f5:text".to_owned(),
            format!("I mysql.t {first}"),
            "C mysql-enum-string-set.000001:1560#93e95066-a2f4-11ec-9b69-9657f0ae95e2:1-3"
                .to_owned(),
            "B".to_owned(),
            format!("U mysql.t {first} -> {second}"),
            "C mysql-enum-string-set.000001:2659#93e95066-a2f4-11ec-9b69-9657f0ae95e2:1-4"
                .to_owned(),
            "B".to_owned(),
            format!("D mysql.t {second}"),
            "C mysql-enum-string-set.000001:3331#93e95066-a2f4-11ec-9b69-9657f0ae95e2:1-5"
                .to_owned(),
        ]
    );
    // The SET is a text[] value, the ENUM a label.
    let Decoded::Event(Event::Change(Change::Insert { new, .. })) = &out
        .iter()
        .find(|d| matches!(d, Decoded::Event(Event::Change(_))))
        .unwrap()
    else {
        unreachable!()
    };
    assert!(
        matches!(&new.values[3], Value::Array(a) if a.element_type == "text" && a.elements.len() == 2)
    );
    assert_eq!(new.values[2], Value::Text("var1".into()));
}

#[test]
fn bit_columns_keep_their_width() {
    let out = decode("mysql_type_bit.000001", all(), vec![]);
    assert_eq!(
        data_lines(&out),
        [
            "B",
            "R mysql.foo a:bit(3),b:text,c:bit(8)",
            "I mysql.foo [100|foo|00100000]",
            "C mysql_type_bit.000001:1001#fbda2ad0-7c46-11ec-ae30-4ef7efc81a2a:1-3",
        ]
    );
}

#[test]
fn invisible_columns_unsigned_and_blobs() {
    let out = decode("binlog-invisible-columns.000001", all(), vec![]);
    let u = "97c7af02-4c50-11ec-acd8-681842034964";
    assert_eq!(
        data_lines(&out),
        [
            "B".to_owned(),
            "R mysql.t1 f1:bigint,f2:bigint,f3:integer,f4:text,f5:bytea,f6:numeric(20)".to_owned(),
            "I mysql.t1 [1|2|-3|4|\\x05|6000000000]".to_owned(),
            format!("C binlog-invisible-columns.000001:1120#{u}:1-3"),
            "B".to_owned(),
            "I mysql.t1 [NULL|NULL|-33|44|\\x55|NULL]".to_owned(),
            format!("C binlog-invisible-columns.000001:1438#{u}:1-4"),
            "B".to_owned(),
            "U mysql.t1 [NULL|NULL|-33|44|\\x55|NULL] -> [111|222|-333|444|\\x55|NULL]".to_owned(),
            format!("C binlog-invisible-columns.000001:1787#{u}:1-5"),
        ]
    );
    // DDL is reported (account statements redacted) with its position.
    let ddl: Vec<String> = lines(&out)
        .into_iter()
        .filter(|l| l.starts_with("DDL"))
        .collect();
    assert_eq!(ddl.len(), 2, "{ddl:?}");
    assert_eq!(
        ddl[0],
        format!("DDL binlog-invisible-columns.000001:491#{u}:1 ALTER USER … (redacted)")
    );
    assert!(
        ddl[1].contains("CREATE TABLE t1 (f1 INT UNSIGNED INVISIBLE"),
        "{}",
        ddl[1]
    );
}

#[test]
fn json_binary_values_including_opaque_scalars() {
    let out = decode("json-opaque.binlog", all(), vec![]);
    let inserts: Vec<String> = data_lines(&out)
        .into_iter()
        .filter(|l| l.starts_with('I'))
        .collect();
    assert_eq!(
        inserts,
        [
            r#"I foo.test [{"a": "base64:type15:VQ=="}]"#,
            r#"I foo.test [{"b": "2012-03-18"}]"#,
            r#"I foo.test [{"c": "2012-03-18 11:30:45.000000"}]"#,
            r#"I foo.test [{"c": "87:31:46.654321"}]"#,
            r#"I foo.test [{"d": 123.456}]"#,
            r#"I foo.test [{"e": 9.00}]"#,
            r#"I foo.test [{"e": [0, 1, true, false]}]"#,
            r#"I foo.test [{"e": null}]"#,
        ]
    );
    for d in &out {
        if let Decoded::Event(Event::Change(Change::Insert { new, .. })) = d {
            let Value::Jsonb(text) = &new.values[0] else {
                panic!("{new:?}")
            };
            serde_json::from_str::<serde_json::Value>(text).expect("valid JSON text");
        }
    }
}

fn json_t() -> TableSchema {
    schema(
        "mysql",
        "t",
        &[
            ("id", "int(11)"),
            ("json_col", "json"),
            ("name", "varchar(100)"),
            ("age", "int(11)"),
        ],
        &[0],
    )
}

#[test]
fn json_rows_and_a_partial_update_without_before_image_is_refused() {
    let (out, result, _) = decode_bytes(
        "json.binlog.000001",
        &bytes("json.binlog.000001"),
        listed(),
        vec![json_t()],
    );
    let doc = |age: u32, c: char, name: &str| {
        format!(
            r#"{{"age": {age}, "data": "{}", "name": "{name}"}}"#,
            c.to_string().repeat(10)
        )
    };
    let rows: Vec<String> = data_lines(&out)
        .into_iter()
        .filter(|l| !l.starts_with('B'))
        .collect();
    assert_eq!(
        rows,
        [
            "R mysql.t id:integer,json_col:jsonb,name:varchar(100),age:integer".to_owned(),
            format!("I mysql.t [1|{}|Joe|24]", doc(24, 'x', "Joe")),
            "C json.binlog.000001:1195".to_owned(),
            format!("I mysql.t [2|{}|Sue|32]", doc(32, 'y', "Sue")),
            "C json.binlog.000001:1545".to_owned(),
            format!("I mysql.t [3|{}|Pete|40]", doc(40, 'z', "Pete")),
            "C json.binlog.000001:1897".to_owned(),
            format!("I mysql.t [4|{}|Joe|24]", doc(24, 'x', "Joe")),
            format!("I mysql.t [5|{}|Sue|32]", doc(32, 'y', "Sue")),
            format!("I mysql.t [6|{}|Pete|40]", doc(40, 'z', "Pete")),
            "C json.binlog.000001:2389".to_owned(),
            format!(
                "U mysql.t [1|{}|Joe|24] -> [1|{}|Joe|25]",
                doc(24, 'x', "Joe"),
                doc(25, 'x', "Joe")
            ),
            format!(
                "U mysql.t [2|{}|Sue|32] -> [2|{}|Sue|33]",
                doc(32, 'y', "Sue"),
                doc(33, 'y', "Sue")
            ),
            format!(
                "U mysql.t [3|{}|Pete|40] -> [3|{}|Pete|41]",
                doc(40, 'z', "Pete"),
                doc(41, 'z', "Pete")
            ),
            format!(
                "U mysql.t [4|{}|Joe|24] -> [4|{}|Joe|25]",
                doc(24, 'x', "Joe"),
                doc(25, 'x', "Joe")
            ),
            format!(
                "U mysql.t [5|{}|Sue|32] -> [5|{}|Sue|33]",
                doc(32, 'y', "Sue"),
                doc(33, 'y', "Sue")
            ),
            format!(
                "U mysql.t [6|{}|Pete|40] -> [6|{}|Pete|41]",
                doc(40, 'z', "Pete"),
                doc(41, 'z', "Pete")
            ),
            "C json.binlog.000001:3527".to_owned(),
        ]
    );
    // The file was written with binlog_row_image=MINIMAL: the partial JSON
    // update's before image has only the key, so the new document cannot be
    // computed. Refused, naming position, table, key, column and the fix.
    let err = result
        .expect_err("partial update without before image")
        .to_string();
    assert!(
        err.contains("binlog json.binlog.000001:3750")
            && err.contains("table mysql.t, key (id)=(1), column json_col")
            && err.contains("binlog_row_image=FULL"),
        "{err}"
    );
}

#[test]
fn partial_json_diffs_apply_exactly_to_the_previous_document() {
    use mysql_common::binlog::events::{EventData, RowsEventData};
    use mysql_common::binlog::value::BinlogValue;
    // The documents after the full UPDATE in the same file, by id.
    let before = |id: i64| -> String {
        let (age, c, name) = match id % 3 {
            1 => (25, 'x', "Joe"),
            2 => (33, 'y', "Sue"),
            _ => (41, 'z', "Pete"),
        };
        format!(
            r#"{{"age": {age}, "data": "{}", "name": "{name}"}}"#,
            c.to_string().repeat(10)
        )
    };
    let data = bytes("json.binlog.000001");
    let reader = BinlogFileReader::new("json.binlog.000001", &data[..]).unwrap();
    let mut tme = None;
    let mut applied = Vec::new();
    for event in reader {
        let event = event.unwrap();
        match event.read_data().unwrap() {
            Some(EventData::TableMapEvent(t)) => tme = Some(t.into_owned()),
            Some(EventData::RowsEvent(RowsEventData::PartialUpdateRowsEvent(r))) => {
                for pair in r.rows(tme.as_ref().unwrap()) {
                    let (b, a) = pair.unwrap();
                    let id = match b.unwrap().unwrap().remove(0) {
                        BinlogValue::Value(mysql_common::Value::Int(i)) => i,
                        other => panic!("{other:?}"),
                    };
                    let Some(BinlogValue::JsonDiff(diffs)) = a.unwrap().unwrap().into_iter().next()
                    else {
                        panic!("no diff")
                    };
                    // The before document as MySQL stores it, from its text.
                    let mut dom = json_dom(&before(id));
                    ferry_mysql::binlog::json::apply(&mut dom, &diffs).unwrap();
                    applied.push((id, ferry_mysql::binlog::json::text(&dom)));
                }
            }
            _ => {}
        }
    }
    let expect: Vec<(i64, String)> = [
        (1, 26, 'x', "Joe"),
        (2, 34, 'y', "Sue"),
        (3, 42, 'z', "Pete"),
        (4, 26, 'x', "Joe"),
        (5, 34, 'y', "Sue"),
        (6, 42, 'z', "Pete"),
    ]
    .into_iter()
    .map(|(id, age, c, name)| {
        (
            id,
            format!(
                r#"{{"age": {age}, "data": "{}", "name": "{name}"}}"#,
                c.to_string().repeat(10)
            ),
        )
    })
    .collect();
    assert_eq!(applied, expect);
}

/// A JSON document from text, through the same DOM the decoder uses.
fn json_dom(text: &str) -> mysql_common::binlog::jsonb::JsonDom {
    use mysql_common::binlog::jsonb::{JsonContainer, JsonDom, JsonNumber, JsonScalar};
    fn conv(v: serde_json::Value) -> JsonDom {
        match v {
            serde_json::Value::Null => JsonDom::Scalar(JsonScalar::Null),
            serde_json::Value::Bool(b) => JsonDom::Scalar(JsonScalar::Boolean(b)),
            serde_json::Value::Number(n) => JsonDom::Scalar(JsonScalar::Number(match n.as_i64() {
                Some(i) => JsonNumber::Int(i),
                None => JsonNumber::Double(n.as_f64().unwrap()),
            })),
            serde_json::Value::String(s) => JsonDom::Scalar(JsonScalar::String(s)),
            serde_json::Value::Array(a) => {
                JsonDom::Container(JsonContainer::Array(a.into_iter().map(conv).collect()))
            }
            serde_json::Value::Object(o) => JsonDom::Container(JsonContainer::Object(
                o.into_iter().map(|(k, v)| (k, conv(v))).collect(),
            )),
        }
    }
    conv(serde_json::from_str(text).unwrap())
}

#[test]
fn compressed_transaction_payload_is_expanded() {
    let out = decode(
        "transaction_compression.000001",
        listed(),
        vec![schema("test", "tb1", &[("id", "int")], &[0])],
    );
    assert_eq!(
        lines(&out),
        [
            "B",
            "R test.tb1 id:integer",
            "I test.tb1 [1]",
            // The commit position is the end of the payload event.
            "C transaction_compression.000001:431#357df524-4139-11ee-9979-b033ee13919e:1",
            "H binlog.000043:4#357df524-4139-11ee-9979-b033ee13919e:1",
        ]
    );
    // Without a catalog schema and without column names: refused with the fix.
    let (_, result, _) = decode_bytes(
        "transaction_compression.000001",
        &bytes("transaction_compression.000001"),
        all(),
        vec![],
    );
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("transaction_compression.000001:431")
            && err.contains("test.tb1")
            && err.contains("binlog_row_metadata=FULL"),
        "{err}"
    );
}

#[test]
fn time_beyond_24_hours_becomes_an_interval() {
    let out = decode(
        "time_issue.000001",
        listed(),
        vec![schema("noria", "t", &[("t", "time")], &[])],
    );
    assert_eq!(
        data_lines(&out),
        [
            "B",
            "R noria.t t:interval",
            "I noria.t [0 mons 0 days -507:48:27]",
            "C time_issue.000001:428"
        ]
    );
}

#[test]
fn tagged_gtids_extend_the_executed_set() {
    let out = decode(
        "binlog_transaction_with_GTID_TAG.000001",
        listed(),
        vec![schema(
            "test",
            "orders",
            &[
                ("id", "int"),
                ("customer_id", "int"),
                ("amount", "decimal(10,2)"),
            ],
            &[0],
        )],
    );
    let u = "55778904-0299-11f1-b1b8-4ef0c4956feb";
    assert_eq!(
        lines(&out),
        [
            "B".to_owned(),
            "R test.orders id:integer,customer_id:integer,amount:numeric(10,2)".to_owned(),
            "I test.orders [3|100|250.00]".to_owned(),
            format!("C binlog_transaction_with_GTID_TAG.000001:541#{u}:1-13,{u}:mytag:1-3"),
            format!("H binlog.000005:4#{u}:1-13,{u}:mytag:1-3"),
        ]
    );
}

#[test]
fn previous_gtids_without_tag_start_the_set() {
    let out = decode(
        "binlog_transaction_previous_GTID_no_tag.000001",
        listed(),
        vec![],
    );
    assert_eq!(
        lines(&out),
        ["H binlog.000008:4#b9b88c66-0755-11f1-9899-4a9da94c4d71:1-2"]
    );
}

#[test]
fn minimal_row_image_insert_is_refused_naming_the_missing_columns() {
    let t1 = schema(
        "noria",
        "t1",
        &[
            ("id", "int"),
            ("b", "blob"),
            ("c", "char(8)"),
            ("d", "int"),
            ("e", "int unsigned"),
        ],
        &[0],
    );
    let (_, result, _) = decode_bytes(
        "minimal_row_metadata.000001",
        &bytes("minimal_row_metadata.000001"),
        listed(),
        vec![t1.clone()],
    );
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("minimal_row_metadata.000001:374")
            && err.contains("lacks column(s) b, d")
            && err.contains("binlog_row_image=FULL"),
        "{err}"
    );
    // The values that are there convert as the catalog says: column e is
    // `int unsigned` (3230202323 does not fit a signed int), c is utf8mb4.
    use mysql_common::binlog::events::{EventData, RowsEventData};
    let data = bytes("minimal_row_metadata.000001");
    let mut tme = None;
    let mut seen = Vec::new();
    for event in BinlogFileReader::new("m", &data[..]).unwrap() {
        match event.unwrap().read_data().unwrap() {
            Some(EventData::TableMapEvent(t)) => tme = Some(t.into_owned()),
            Some(EventData::RowsEvent(RowsEventData::WriteRowsEvent(r))) => {
                let tme = tme.as_ref().unwrap();
                let mapped = ferry_mysql::binlog::columns::resolve(tme, Some(&t1), None).unwrap();
                assert_eq!(mapped.columns[2].collation, Some(255), "utf8mb4_0900_ai_ci");
                for pair in r.rows(tme) {
                    let after = pair.unwrap().1.unwrap();
                    let present = [0, 2, 4];
                    for (i, v) in present.iter().zip(after.unwrap()) {
                        seen.push(
                            ferry_mysql::binlog::value::convert(&mapped.columns[*i], v).unwrap(),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            Value::Int4(1),
            Value::Text("a".into()),
            Value::Int8(3_230_202_323)
        ]
    );
}

#[test]
fn vector_columns_and_deletes() {
    let out = decode("vector.binlog", all(), vec![]);
    let data = data_lines(&out);
    assert_eq!(
        &data[..6],
        [
            "B",
            "R dtb.foo id:numeric(20),vector_column:text",
            "I dtb.foo [1|[1.1,2.2,3.3]]",
            "I dtb.foo [2|[1,-1,0]]",
            "R dtb.bar id:numeric(20),vector_column:text,foo:text,vector_column2:text",
            "I dtb.bar [1|[1.1,2.2]|NULL|[1.1,2.2,3.3,4.4]]",
        ]
    );
    assert_eq!(data[6], "I dtb.bar [2|[1.01,-1.01]|bar|[42,43,44,45]]");
    let tail: Vec<&String> = data.iter().rev().take(3).collect();
    assert_eq!(
        tail,
        [
            "C vector.binlog:3443",
            "I dtb.bar [3|[2.01,-2.01]|NULL|[42.1,43.2,44.3,45.4]]",
            "D dtb.bar [2|[1.01,-1.01]|bar|[42,43,44,45]]",
        ]
    );
}

#[test]
fn listed_scope_skips_other_tables_and_a_changed_schema_is_refused() {
    // Only listed tables produce changes.
    let out = decode("vector.binlog", listed(), vec![]);
    assert!(
        data_lines(&out)
            .iter()
            .all(|l| l == "B" || l.starts_with('C')),
        "{:?}",
        data_lines(&out)
    );
    // A catalog schema that disagrees with the TABLE_MAP stops the decoder.
    let wrong = schema(
        "mysql",
        "foo",
        &[("a", "int"), ("b", "text"), ("c", "bit(8)")],
        &[],
    );
    let (_, result, _) = decode_bytes(
        "mysql_type_bit.000001",
        &bytes("mysql_type_bit.000001"),
        listed(),
        vec![wrong],
    );
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("table mysql.foo changed")
            && err.contains("column `a` is int in the schema but MYSQL_TYPE_BIT"),
        "{err}"
    );
}

#[test]
fn truncated_files_give_typed_errors_at_the_cut() {
    for name in [
        "mariadb-bin.000001",
        "transaction_compression.000001",
        "json.binlog.000001",
    ] {
        let data = bytes(name);
        // Event boundaries: where a cut leaves whole events only.
        let mut boundaries = vec![4usize];
        let mut at = 4;
        while at < data.len() {
            let size = u32::from_le_bytes(data[at + 9..at + 13].try_into().unwrap()) as usize;
            at += size;
            boundaries.push(at);
        }
        assert_eq!(at, data.len(), "{name} frames exactly");
        for cut in 0..data.len() {
            // The reader names where the cut event starts ...
            let read: Result<Vec<_>, _> = match BinlogFileReader::new(name, &data[..cut]) {
                Ok(r) => r.collect(),
                Err(e) => Err(e),
            };
            if boundaries.contains(&cut) {
                assert!(
                    read.is_ok(),
                    "{name} cut at boundary {cut}: {:?}",
                    read.err()
                );
            } else {
                let m = read
                    .expect_err("a cut inside an event is an error")
                    .to_string();
                let start = boundaries
                    .iter()
                    .rev()
                    .find(|b| **b <= cut)
                    .copied()
                    .unwrap_or(0);
                let where_ = if cut < 4 {
                    format!("binlog {name}:0")
                } else {
                    format!("binlog {name}:{start}")
                };
                assert!(
                    m.starts_with(&where_) && (m.contains("truncated") || m.contains("too short")),
                    "{name} cut at {cut}: {m}"
                );
            }
            // ... and decoding what is there never panics.
            let _ = decode_bytes(name, &data[..cut], all(), vec![json_t()]);
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    for name in FIXTURES {
        let data = bytes(name);
        for i in 4..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x5a;
            // Fix the event's CRC so the corruption reaches the parsers.
            let mut at = 4;
            while at + 13 <= bad.len() {
                let size = u32::from_le_bytes(bad[at + 9..at + 13].try_into().unwrap()) as usize;
                if size < 23 || at + size > bad.len() {
                    break;
                }
                if at <= i && i < at + size {
                    let crc = crc32fast::hash(&bad[at..at + size - 4]);
                    bad[at + size - 4..at + size].copy_from_slice(&crc.to_le_bytes());
                    break;
                }
                at += size;
            }
            let r = std::panic::catch_unwind(|| {
                decode_bytes(name, &bad, all(), vec![json_t()])
                    .1
                    .map_err(|e| e.to_string())
            });
            let r = r.unwrap_or_else(|_| panic!("{name}: byte {i} corrupted: panic escaped"));
            if let Err(m) = r {
                assert!(
                    m.contains(&format!("binlog {name}:")) || m.starts_with("binlog "),
                    "{name} byte {i}: {m}"
                );
            }
        }
    }
}

#[test]
fn garbage_is_not_a_binlog() {
    for data in [&b""[..], b"\xfebi", b"GIF89a....", b"\xfebin\x00\x01"] {
        let (_, result, _) = decode_bytes("junk.000001", data, all(), vec![]);
        let m = result.unwrap_err().to_string();
        assert!(m.starts_with("binlog junk.000001:"), "{m}");
    }
}

#[test]
fn old_row_is_full_with_full_row_image() {
    let out = decode("mysql-enum-string-set.000001", all(), vec![]);
    let old = out
        .iter()
        .find_map(|d| match d {
            Decoded::Event(Event::Change(Change::Delete { old, .. })) => Some(old.clone()),
            _ => None,
        })
        .unwrap();
    assert!(matches!(old, OldRow::Full(_)));
}
