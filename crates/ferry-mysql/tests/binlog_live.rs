//! The binlog decoder against a real MariaDB 10.11 (started by
//! ferry-testkit): every mapped type written, updated and deleted, read back
//! through the replication stream as a registered replica, decoded with the
//! catalog's schema and compared value by value.

use std::time::Duration;

use ferry_core::config::TablesConfig;
use ferry_core::value::{Array, Date, Interval, Numeric, Time, Timestamp};
use ferry_core::{Change, Event, MySqlPosition, OldRow, TableId, Value};
use ferry_mysql::binlog::{BinlogDecoder, Decoded, DecoderOptions, ZeroDatePolicy, stream};
use ferry_mysql::connect::Flavor;
use ferry_testkit::{MariaDbOptions, MariaDbServer};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;

const DDL: &str = "CREATE TABLE types (
  id INT PRIMARY KEY,
  b1 TINYINT(1), ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED,
  mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
  d DECIMAL(10,2), dbig DECIMAL(65,30), f FLOAT, dd DOUBLE,
  bit1 BIT(1), bit8 BIT(8), bit64 BIT(64),
  c CHAR(5), vc VARCHAR(20), t TEXT, l1 VARCHAR(10) CHARACTER SET latin1,
  bn BINARY(4), vb VARBINARY(8), bl BLOB,
  dt DATE, dtm DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME(6), y YEAR,
  j JSON, e ENUM('a','b c','d''e'), st SET('x','y','z'),
  g POINT, ip6 INET6, ip4 INET4
)";

const ROW1: &str = "(1, 1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
  -9223372036854775808, 18446744073709551615, -12345678.91,
  '12345678901234567890123456789012345.123456789012345678901234567890', 1.5, -2.25e300,
  b'1', b'10100101', b'1111111111111111111111111111111111111111111111111111111111111111',
  'ab', 'héllo wörld', 'text ☃ 😀', 'Motörhead', x'0102', x'00ff', x'deadbeef',
  '2024-02-29', '2024-02-29 13:14:15.123456', '2038-01-19 03:14:07.999', '-838:59:59.000000', 2155,
  '{\"a\": [1, 2.5, \"x\"], \"b\": null}', 'd''e', 'x,z', ST_GeomFromText('POINT(1 2)'),
  '2001:db8::1', '192.168.0.1')";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ts(y: i32, mo: u32, d: u32, micros_of_day: i64) -> Timestamp {
    Timestamp::from_parts(Date::from_ymd(y, mo, d).unwrap(), Time(micros_of_day)).unwrap()
}

fn hms(h: i64, m: i64, s: i64, us: i64) -> i64 {
    ((h * 60 + m) * 60 + s) * 1_000_000 + us
}

/// Row 1 as ferry must carry it, column by column.
fn row1() -> Vec<(&'static str, Value)> {
    let num = |s: &str| Value::Numeric(Numeric::parse(s).unwrap());
    let bits = |n: usize, s: &str| Value::Other {
        type_name: format!("bit({n})"),
        text: s.into(),
    };
    let inet = |s: &str| Value::Other {
        type_name: "inet".into(),
        text: s.into(),
    };
    let mut wkb = vec![1u8, 1, 0, 0, 0];
    wkb.extend(1.0f64.to_le_bytes());
    wkb.extend(2.0f64.to_le_bytes());
    vec![
        ("id", Value::Int4(1)),
        ("b1", Value::Bool(true)),
        ("ti", Value::Int2(-128)),
        ("tu", Value::Int2(255)),
        ("si", Value::Int2(-32768)),
        ("su", Value::Int4(65535)),
        ("mi", Value::Int4(-8_388_608)),
        ("mu", Value::Int4(16_777_215)),
        ("i", Value::Int4(i32::MIN)),
        ("iu", Value::Int8(4_294_967_295)),
        ("bi", Value::Int8(i64::MIN)),
        ("bu", num("18446744073709551615")),
        ("d", num("-12345678.91")),
        (
            "dbig",
            num("12345678901234567890123456789012345.123456789012345678901234567890"),
        ),
        ("f", Value::Float4(1.5)),
        ("dd", Value::Float8(-2.25e300)),
        ("bit1", Value::Bool(true)),
        ("bit8", bits(8, "10100101")),
        ("bit64", bits(64, &"1".repeat(64))),
        ("c", Value::Text("ab".into())),
        ("vc", Value::Text("héllo wörld".into())),
        ("t", Value::Text("text ☃ 😀".into())),
        ("l1", Value::Text("Motörhead".into())),
        ("bn", Value::Bytes(vec![1, 2, 0, 0])),
        ("vb", Value::Bytes(vec![0, 255])),
        ("bl", Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef])),
        ("dt", Value::Date(Date::from_ymd(2024, 2, 29).unwrap())),
        (
            "dtm",
            Value::Timestamp(ts(2024, 2, 29, hms(13, 14, 15, 123_456))),
        ),
        (
            "ts",
            Value::TimestampTz(ts(2038, 1, 19, hms(3, 14, 7, 999_000))),
        ),
        (
            "tm",
            Value::Interval(Interval {
                months: 0,
                days: 0,
                micros: -hms(838, 59, 59, 0),
            }),
        ),
        ("y", Value::Int2(2155)),
        (
            "j",
            Value::Jsonb(r#"{"a": [1, 2.5, "x"], "b": null}"#.into()),
        ),
        ("e", Value::Text("d'e".into())),
        (
            "st",
            Value::Array(Box::new(Array::one_dim(
                "text",
                vec![Value::Text("x".into()), Value::Text("z".into())],
            ))),
        ),
        ("g", Value::Bytes(wkb)),
        ("ip6", inet("2001:db8::1")),
        ("ip4", inet("192.168.0.1")),
    ]
}

struct Live {
    items: Vec<Decoded>,
    decoder: BinlogDecoder,
}

/// Runs `writes` after noting the binlog position, then streams from that
/// position until the server's position after the writes, decoding with
/// the catalog schema.
fn capture(
    server: &MariaDbServer,
    db: &str,
    writes: &str,
    opts: DecoderOptions,
) -> Result<Live, ferry_core::Error> {
    capture_until(
        server,
        db,
        writes,
        opts,
        |d, end| matches!(d, Decoded::Event(Event::Commit { position, .. }) if position.offset >= end),
    )
}

/// Like [`capture`], streaming until `done(item, end_offset)` holds.
fn capture_until(
    server: &MariaDbServer,
    db: &str,
    writes: &str,
    opts: DecoderOptions,
    done: impl FnMut(&Decoded, u64) -> bool,
) -> Result<Live, ferry_core::Error> {
    capture_with(server, db, writes, opts, true, done)
}

fn capture_until_no_catalog(
    server: &MariaDbServer,
    db: &str,
    writes: &str,
    opts: DecoderOptions,
) -> Live {
    capture_with(server, db, writes, opts, false, |d, end| {
        matches!(d, Decoded::Event(Event::Commit { position, .. }) if position.offset >= end)
    })
    .unwrap()
}

fn capture_with(
    server: &MariaDbServer,
    db: &str,
    writes: &str,
    opts: DecoderOptions,
    with_catalog: bool,
    mut done: impl FnMut(&Decoded, u64) -> bool,
) -> Result<Live, ferry_core::Error> {
    rt().block_on(async {
        let url = server.url(db);
        let mysql_opts = mysql_async::Opts::from_url(&url).unwrap();
        let mut conn = mysql_async::Conn::new(mysql_opts.clone()).await.unwrap();
        let (file, pos): (String, u64) = conn
            .query_first("SHOW MASTER STATUS")
            .await
            .unwrap()
            .map(|r: mysql_async::Row| (r.get(0).unwrap(), r.get(1).unwrap()))
            .unwrap();
        let gtid: String = conn
            .query_first("SELECT @@gtid_binlog_pos")
            .await
            .unwrap()
            .unwrap();
        let tables = ferry_mysql::catalog::read_tables(
            &mut conn,
            Flavor::MariaDb,
            &[db.to_owned()],
            &TablesConfig::default().filter().unwrap(),
        )
        .await
        .unwrap();
        let ids: Vec<TableId> = tables.iter().map(|t| t.schema.id.clone()).collect();
        let charsets = ferry_mysql::binlog::read_charsets(&mut conn, &ids)
            .await
            .unwrap();
        server.sql(db, writes).expect("writes");
        let (end_file, end_pos): (String, u64) = conn
            .query_first("SHOW MASTER STATUS")
            .await
            .unwrap()
            .map(|r: mysql_async::Row| (r.get(0).unwrap(), r.get(1).unwrap()))
            .unwrap();
        assert_eq!(end_file, file, "no rotation during the test");

        let mut start = MySqlPosition::new(file, pos);
        start.gtid = Some(ferry_core::GtidSet::new(&gtid));
        let mut decoder = BinlogDecoder::new(opts, &start).unwrap();
        if with_catalog {
            for t in tables {
                decoder.set_table(t.schema);
            }
            for (id, cs) in charsets {
                decoder.set_charsets(id, cs);
            }
        }
        let replica = mysql_async::Conn::new(mysql_opts).await.unwrap();
        let mut binlog = stream::open(
            replica,
            Flavor::MariaDb,
            8_470_001,
            &start,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let mut items = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        'outer: loop {
            let event = tokio::time::timeout_at(deadline, binlog.next())
                .await
                .expect("the stream reaches the end position in time")
                .expect("stream open")
                .unwrap();
            for d in decoder.decode(&event)? {
                let stop = done(&d, end_pos);
                items.push(d);
                if stop {
                    break 'outer;
                }
            }
        }
        Ok(Live { items, decoder })
    })
}

fn changes(items: &[Decoded]) -> Vec<Change> {
    items
        .iter()
        .filter_map(|d| match d {
            Decoded::Event(Event::Change(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn server_with_types() -> (MariaDbServer, String) {
    let server = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = server.create_database("binlog").expect("database");
    server.sql(&db, DDL).expect("create table");
    (server, db)
}

#[test]
fn every_mapped_type_round_trips_through_the_replication_stream() {
    let (server, db) = server_with_types();
    let writes = format!(
        "SET time_zone = '+00:00'; SET sql_mode = '';
         INSERT INTO types VALUES {ROW1};
         INSERT INTO types (id, dt, dtm, tm, y) VALUES (2, '0000-00-00', '2024-00-10 00:00:00', '838:59:59', 0);
         UPDATE types SET vc = 'changed', tm = '00:00:01.5', b1 = 0 WHERE id = 1;
         DELETE FROM types WHERE id = 2;"
    );
    let live = capture(&server, &db, &writes, DecoderOptions::default()).unwrap();
    let id = TableId::new(db.clone(), "types");

    // The catalog schema is announced once, with the typemap's types.
    let relations: Vec<_> = live
        .items
        .iter()
        .filter_map(|d| match d {
            Decoded::Event(Event::Relation(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(relations.len(), 1);
    let schema = &relations[0];
    assert_eq!(schema.id, id);
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let expected = row1();
    assert_eq!(names, expected.iter().map(|(n, _)| *n).collect::<Vec<_>>());
    for c in &schema.columns {
        // MariaDB JSON is longtext with a json_valid check: the catalog maps it to jsonb.
        let source = if c.name == "j" {
            "json"
        } else {
            c.source_type.as_str()
        };
        assert_eq!(
            c.pg_type,
            ferry_mysql::typemap::map_column_type(source).pg_type,
            "{}",
            c.name
        );
    }

    let changes = changes(&live.items);
    assert_eq!(changes.len(), 4, "{changes:#?}");
    // Row 1, value by value.
    let Change::Insert { table, new } = &changes[0] else {
        panic!("{:?}", changes[0])
    };
    assert_eq!(table, &id);
    for ((name, want), got) in expected.iter().zip(&new.values) {
        assert_eq!(got, want, "column {name}");
    }
    // Row 2: zero and partial dates become NULL by policy and are counted.
    let Change::Insert { new: row2, .. } = &changes[1] else {
        panic!("{:?}", changes[1])
    };
    let col = |n: &str| schema.column_index(n).unwrap();
    assert_eq!(row2.values[col("dt")], Value::Null);
    assert_eq!(row2.values[col("dtm")], Value::Null);
    assert_eq!(row2.values[col("y")], Value::Int2(0));
    assert_eq!(
        row2.values[col("tm")],
        Value::Interval(Interval {
            months: 0,
            days: 0,
            micros: hms(838, 59, 59, 0)
        })
    );
    assert_eq!(row2.values[col("vc")], Value::Null);
    // Counted where written: row 2's insert (its delete's before image
    // only finds the row), and sent after the insert's change, inside its
    // transaction, for the applier to commit with it.
    let zero = live.decoder.zero_dates();
    assert_eq!(
        zero.get(&(id.clone(), "dt".to_owned())),
        Some(&1),
        "{zero:?}"
    );
    assert_eq!(
        zero.get(&(id.clone(), "dtm".to_owned())),
        Some(&1),
        "{zero:?}"
    );
    let replaced: Vec<(usize, &str, u64)> = live
        .items
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match d {
            Decoded::Event(Event::Replaced {
                table,
                column,
                values,
            }) if *table == id => Some((i, column.as_str(), *values)),
            _ => None,
        })
        .collect();
    assert_eq!(
        replaced.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        [("dt", 1), ("dtm", 1)],
        "{:#?}",
        live.items
    );
    let row2_at = live
        .items
        .iter()
        .position(|d| {
            matches!(d, Decoded::Event(Event::Change(Change::Insert { new, .. })) if new.values[col("id")] == Value::Int4(2))
        })
        .expect("row 2's insert");
    let commit_after = live.items[row2_at..]
        .iter()
        .position(|d| matches!(d, Decoded::Event(Event::Commit { .. })))
        .map(|p| p + row2_at)
        .expect("its commit");
    assert!(
        replaced.iter().all(|r| r.0 > row2_at && r.0 < commit_after),
        "the counts sit between row 2's insert and its commit: {replaced:?}, insert at {row2_at}, commit at {commit_after}"
    );
    // Update: full before image, new values.
    let Change::Update {
        old: Some(OldRow::Full(old)),
        new,
        ..
    } = &changes[2]
    else {
        panic!("{:?}", changes[2])
    };
    assert_eq!(
        old.values,
        expected.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()
    );
    assert_eq!(new.values[col("vc")], Value::Text("changed".into()));
    assert_eq!(new.values[col("b1")], Value::Bool(false));
    assert_eq!(
        new.values[col("tm")],
        Value::Interval(Interval {
            months: 0,
            days: 0,
            micros: 1_500_000
        })
    );
    // Delete of row 2 with its full row.
    let Change::Delete {
        old: OldRow::Full(gone),
        ..
    } = &changes[3]
    else {
        panic!("{:?}", changes[3])
    };
    assert_eq!(gone.values[col("id")], Value::Int4(2));

    // Four transactions, each Begin … Commit with a MariaDB GTID set.
    let commits: Vec<&MySqlPosition> = live
        .items
        .iter()
        .filter_map(|d| match d {
            Decoded::Event(Event::Commit { position, .. }) => Some(position),
            _ => None,
        })
        .collect();
    assert_eq!(commits.len(), 4);
    let sid = server.server_id();
    let seqs: Vec<String> = commits
        .iter()
        .map(|p| p.gtid.as_ref().unwrap().to_string())
        .collect();
    let last: u64 = seqs[3].rsplit('-').next().unwrap().parse().unwrap();
    assert_eq!(
        seqs,
        (0..4)
            .map(|k| format!("0-{sid}-{}", last - 3 + k))
            .collect::<Vec<_>>()
    );
    assert!(commits.windows(2).all(|w| w[0] < w[1]));
    // Each Begin announces where its transaction starts: after the previous
    // commit, before its own (what the per-table snapshot skip compares).
    let mut previous: Option<MySqlPosition> = None;
    let mut begun = None;
    for d in &live.items {
        match d {
            Decoded::Event(Event::Begin { final_position, .. }) => {
                let start = final_position.clone().expect("Begin carries its start");
                if let Some(p) = &previous {
                    assert!(start.offset >= p.offset, "{start} after {p}");
                }
                begun = Some(start);
            }
            Decoded::Event(Event::Commit { position, .. }) => {
                let start = begun.take().expect("Begin before Commit");
                assert!(start.offset < position.offset, "{start} before {position}");
                previous = Some(position.clone());
            }
            _ => {}
        }
    }
}

#[test]
fn zero_date_policy_error_names_table_key_and_column() {
    let (server, db) = server_with_types();
    let writes = "SET sql_mode = ''; INSERT INTO types (id, dt) VALUES (7, '2024-00-10');";
    let opts = DecoderOptions {
        zero_dates: ZeroDatePolicy::Error,
        ..DecoderOptions::default()
    };
    let msg = capture(&server, &db, writes, opts)
        .err()
        .expect("the decoder refuses the row")
        .to_string();
    assert!(
        msg.contains(&format!(
            "table {db}.types, key (id)=(7), column dt: zero or partial date"
        )),
        "{msg}"
    );
}

#[test]
fn tinyint1_outside_0_1_is_refused_not_coerced() {
    let (server, db) = server_with_types();
    let writes = "INSERT INTO types (id, b1) VALUES (9, 5);";
    let msg = capture(&server, &db, writes, DecoderOptions::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        msg.contains(&format!(
            "table {db}.types, key (id)=(9), column b1: tinyint(1) column holds a value other than 0 or 1"
        )),
        "{msg}"
    );
}

#[test]
fn truncate_ddl_and_idle_heartbeats() {
    let (server, db) = server_with_types();
    server
        .sql(
            &db,
            &format!("SET time_zone = '+00:00'; INSERT INTO types VALUES {ROW1};"),
        )
        .expect("seed row");
    let writes = "TRUNCATE TABLE types; ALTER TABLE types ADD COLUMN extra INT;";
    // Stop at the second heartbeat at the end position: the DDL's, then one
    // the idle server sends (heartbeat period 1 s).
    let mut at_end = 0;
    let live = capture_until(&server, &db, writes, DecoderOptions::default(), |d, end| {
        if matches!(d, Decoded::Event(Event::Heartbeat { position, .. }) if position.offset == end)
        {
            at_end += 1;
        }
        at_end >= 2
    })
    .unwrap();
    let id = TableId::new(db.clone(), "types");
    // The server may send a heartbeat before the first event: it must not
    // claim a position past the first commit.
    let first_commit = live
        .items
        .iter()
        .find_map(|d| match d {
            Decoded::Event(Event::Commit { position, .. }) => Some(position.offset),
            _ => None,
        })
        .unwrap();
    let lead = live
        .items
        .iter()
        .take_while(|d| matches!(d, Decoded::Event(Event::Heartbeat { .. })))
        .count();
    for d in &live.items[..lead] {
        let Decoded::Event(Event::Heartbeat { position, .. }) = d else {
            unreachable!()
        };
        assert!(position.offset < first_commit, "{position}");
    }
    let items = &live.items[lead..];
    let kinds: Vec<String> = items
        .iter()
        .map(|d| match d {
            Decoded::Ddl { statement, .. } => format!("DDL {statement}"),
            Decoded::Event(Event::Begin { .. }) => "B".into(),
            Decoded::Event(Event::Change(Change::Truncate { tables, .. })) => {
                format!("T {tables:?}")
            }
            Decoded::Event(Event::Commit { .. }) => "C".into(),
            Decoded::Event(Event::Heartbeat { .. }) => "H".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "B".to_owned(),
            format!("T [{id:?}]"),
            "C".to_owned(),
            "DDL ALTER TABLE types ADD COLUMN extra INT".to_owned(),
            "H".to_owned(),
            "H".to_owned(),
        ]
    );
    // The heartbeat carries the GTID set of the DDL's transaction.
    let Decoded::Event(Event::Heartbeat { position, .. }) = items.last().unwrap() else {
        unreachable!()
    };
    let Decoded::Ddl {
        position: ddl_pos, ..
    } = &items[3]
    else {
        unreachable!()
    };
    assert_eq!(position, ddl_pos);
    assert!(
        position
            .gtid
            .as_ref()
            .unwrap()
            .as_str()
            .starts_with(&format!("0-{}-", server.server_id()))
    );
}

#[test]
fn full_row_metadata_describes_tables_without_a_catalog() {
    let server =
        MariaDbServer::start(MariaDbOptions::default().setting("binlog_row_metadata", "FULL"))
            .expect("mariadb starts");
    let db = server.create_database("binlog").expect("database");
    server.sql(&db, DDL).expect("create table");
    let writes = format!("SET time_zone = '+00:00'; INSERT INTO types VALUES {ROW1};");
    // No catalog at all: names, signedness, charsets and ENUM/SET labels
    // come from the TABLE_MAP's optional metadata.
    let live = capture_without_catalog(&server, &db, &writes);
    let schema = live
        .items
        .iter()
        .find_map(|d| match d {
            Decoded::Event(Event::Relation(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, row1().iter().map(|(n, _)| *n).collect::<Vec<_>>());
    assert_eq!(schema.key_names().collect::<Vec<_>>(), ["id"]);
    let Some(Change::Insert { new, .. }) = changes(&live.items).into_iter().next() else {
        panic!("no insert")
    };
    let col = |n: &str| schema.column_index(n).unwrap();
    let expected = row1();
    // Same values as with the catalog where the binlog alone can tell.
    for name in [
        "ti", "tu", "si", "su", "mi", "mu", "i", "iu", "bi", "bu", "d", "dbig", "f", "dd", "bit8",
        "bit64", "c", "vc", "t", "l1", "vb", "bl", "dt", "dtm", "ts", "tm", "e", "st", "g",
    ] {
        let want = &expected.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(&new.values[col(name)], want, "column {name}");
    }
    // Without the catalog `tinyint(1)` is not recognisable: a smallint.
    assert_eq!(new.values[col("b1")], Value::Int2(1));
}

fn capture_without_catalog(server: &MariaDbServer, db: &str, writes: &str) -> Live {
    let opts = DecoderOptions {
        scope: ferry_mysql::binlog::Scope::All,
        ..DecoderOptions::default()
    };
    // `capture` gives the catalog; here the decoder must do without it.
    capture_until_no_catalog(server, db, writes, opts)
}

#[test]
fn mariadb_uuid_and_inet_columns() {
    let server = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = server.create_database("binlog").expect("database");
    server
        .sql(
            &db,
            "CREATE TABLE u (id INT PRIMARY KEY, v UUID, a INET6, b INET4)",
        )
        .expect("create table");
    let v4 = "123e4567-e89b-42d3-a456-426614174000";
    let v1 = "6ccd780c-baba-1026-9564-5b8c656024db";
    // Values ending in zero bytes: row images drop the trailing zeros of
    // fixed-width binaries, the decoder restores them.
    let writes = format!(
        "INSERT INTO u VALUES (1, '{v4}', '2001:db8::', '10.0.0.0'), (2, '{v1}', '::1', '0.0.0.1');"
    );
    let live = capture(&server, &db, &writes, DecoderOptions::default()).unwrap();
    let got: Vec<String> = changes(&live.items)
        .iter()
        .map(|c| match c {
            Change::Insert { new, .. } => new.values[1..]
                .iter()
                .map(|v| v.to_pg_text().unwrap())
                .collect::<Vec<_>>()
                .join(" "),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            format!("{v4} 2001:db8:: 10.0.0.0"),
            format!("{v1} ::1 0.0.0.1")
        ]
    );
}
