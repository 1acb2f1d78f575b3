//! Loader and preflight against a real target PostgreSQL.

mod common;

use common::*;
use ferry_apply::StateStore;
use ferry_apply::load::{LoadData, LoadProgress, LoadTarget, load_chunk, run_parallel};
use ferry_apply::preflight::check_target;
use ferry_core::plan::CheckStatus;
use ferry_core::value::{Array, Date, Interval, Numeric, Time, TimeTz, Timestamp};
use ferry_core::{Row, TableId, Value};
use futures_util::stream;

const TYPES: &str = "CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE v (id int PRIMARY KEY, b bool, i2 int2, i8 int8, f4 float4, f8 float8, num numeric,
  t text, by bytea, j json, jb jsonb, u uuid, d date, tm time, ttz timetz, ts timestamp,
  tstz timestamptz, iv interval, ia int4[], ta text[], e mood, o inet, nul text);";

#[tokio::test]
async fn value_rows_round_trip_exactly() {
    let pg = server();
    let db = pg.create_database("load").unwrap();
    pg.psql(&db, &format!("{TYPES} CREATE TABLE r (LIKE v);"))
        .unwrap();
    pg.psql(&db, "INSERT INTO r VALUES (1, true, -5, 9007199254740993, 1.5, 'NaN', -12.340,
        E'tab\\there\\nnew \\\\ back', '\\x00ff', '{\"a\": [1, 2]}', '{\"b\": null}',
        '12345678-9abc-def0-0001-020304050607', '2024-02-29', '12:34:56.5', '12:34:56-05:30',
        '2021-01-01 01:02:03.0005', '2021-01-01 01:02:03.0005+00', '14 mons -3 days -01:00:00.000001',
        '{1,NULL,3}', '{\"a,b\",\"q\\\"uote\",NULL,\"\"}', 'happy', '10.0.0.1/8', NULL)").unwrap();
    let ts =
        Timestamp::from_parts(Date::from_ymd(2021, 1, 1).unwrap(), Time(3_723_000_500)).unwrap();
    let row = Row::new(vec![
        Value::Int4(1),
        Value::Bool(true),
        Value::Int2(-5),
        Value::Int8(9_007_199_254_740_993),
        Value::Float4(1.5),
        Value::Float8(f64::NAN),
        Value::Numeric(Numeric::parse("-12.340").unwrap()),
        Value::Text("tab\there\nnew \\ back".into()),
        Value::Bytes(vec![0, 0xff]),
        Value::Json("{\"a\": [1, 2]}".into()),
        Value::Jsonb("{\"b\": null}".into()),
        Value::Uuid([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7,
        ]),
        Value::Date(Date::from_ymd(2024, 2, 29).unwrap()),
        Value::Time(Time(45_296_500_000)),
        Value::TimeTz(TimeTz {
            micros: 45_296_000_000,
            offset_seconds: -(5 * 3600 + 30 * 60),
        }),
        Value::Timestamp(ts),
        Value::TimestampTz(ts),
        Value::Interval(Interval {
            months: 14,
            days: -3,
            micros: -3_600_000_001,
        }),
        Value::Array(Box::new(Array::one_dim(
            "int4",
            vec![Value::Int4(1), Value::Null, Value::Int4(3)],
        ))),
        Value::Array(Box::new(Array::one_dim(
            "text",
            vec![txt("a,b"), txt("q\"uote"), Value::Null, txt("")],
        ))),
        Value::Enum("happy".into()),
        Value::Other {
            type_name: "inet".into(),
            text: "10.0.0.1/8".into(),
        },
        Value::Null,
    ]);
    let url = pg.url(&db);
    let mut client = connect(&url).await;
    let state = StateStore::new("ferry");
    state.ensure(&client).await.unwrap();
    let cols: Vec<String> = [
        "id", "b", "i2", "i8", "f4", "f8", "num", "t", "by", "j", "jb", "u", "d", "tm", "ttz",
        "ts", "tstz", "iv", "ia", "ta", "e", "o", "nul",
    ]
    .map(String::from)
    .into();
    state
        .register_table(&client, &tid("v"), &tid("v"), Some(1), Some(1))
        .await
        .unwrap();
    let progress = LoadProgress::default();
    let rows = stream::iter(vec![Ok::<_, std::io::Error>(row)]);
    let data: LoadData<stream::Empty<Result<bytes::Bytes, std::io::Error>>, _> =
        LoadData::Rows(rows);
    let to = LoadTarget::whole(tid("v"), tid("v"), cols);
    let res = load_chunk(&mut client, &state, &to, data, Some(&progress), None)
        .await
        .unwrap();
    assert_eq!(res.rows, 1);
    assert_eq!(progress.rows.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(res.bytes > 0);
    // Every column equal to the SQL-literal reference, compared as text.
    for c in &to.columns {
        let sql = format!(
            "SELECT (SELECT {c}::text FROM v) IS NOT DISTINCT FROM (SELECT {c}::text FROM r)"
        );
        let same: bool = client.query_one(&sql, &[]).await.unwrap().get(0);
        assert!(same, "column {c} differs");
    }
    assert_eq!(
        state.chunks_done(&client, &tid("v")).await.unwrap(),
        vec![0]
    );
    assert_eq!(state.tables(&client).await.unwrap()[0].rows_copied, 1);
}

#[tokio::test]
async fn binary_copy_passes_through_and_reload_replaces() {
    let pg = server();
    let src = pg.create_database("src").unwrap();
    let dst = pg.create_database("dst").unwrap();
    let fill = format!("{TYPES} INSERT INTO v SELECT g, g % 2 = 0, g, g::int8 * 1000000000, g / 3.0, 'Infinity', g * 1.5,
        'row ' || g || E'\\t', decode('00ff', 'hex'), '[1]', '{{\"k\": 1}}', gen_random_uuid(), '2000-01-01'::date + g,
        '10:00', '10:00+02', '2000-01-01'::timestamp + g * interval '1 hour', now(), g * interval '1 day',
        ARRAY[g, NULL], ARRAY['x', NULL], 'sad', '192.168.0.1', NULL FROM generate_series(1, 5000) g;");
    pg.psql(&src, &fill).unwrap();
    pg.psql(&dst, TYPES).unwrap();
    let s = connect(&pg.url(&src)).await;
    let mut d = connect(&pg.url(&dst)).await;
    let state = StateStore::new("ferry");
    state.ensure(&d).await.unwrap();
    let cols: Vec<String> = rows(&s, "SELECT attname::text FROM pg_attribute WHERE attrelid = 'v'::regclass AND attnum > 0 ORDER BY attnum").await;
    let to = LoadTarget::whole(tid("v"), tid("v"), cols);
    for _ in 0..2 {
        // Loading twice must not double rows (whole-table loads truncate).
        let out = Box::pin(
            s.copy_out("COPY v TO STDOUT (FORMAT binary)")
                .await
                .unwrap(),
        );
        let data: LoadData<_, stream::Empty<Result<Row, tokio_postgres::Error>>> =
            LoadData::BinaryCopy(out);
        let res = load_chunk(&mut d, &state, &to, data, None, None)
            .await
            .unwrap();
        assert_eq!(res.rows, 5000);
    }
    let q = "SELECT v::text FROM v ORDER BY id";
    assert_eq!(rows(&s, q).await, rows(&d, q).await);
}

#[tokio::test]
async fn indexes_build_in_parallel() {
    let pg = server();
    let db = pg.create_database("idx").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE a (x int, y int); INSERT INTO a SELECT g, g FROM generate_series(1, 1000) g;",
    )
    .unwrap();
    let url = pg.url(&db);
    let stmts = vec![
        "CREATE INDEX a_x ON a (x)".to_owned(),
        "CREATE INDEX a_y ON a (y)".to_owned(),
        "CREATE INDEX bad ON missing (x)".to_owned(),
    ];
    let results = run_parallel(stmts, 2, || {
        let url = url.clone();
        async move { Ok(connect(&url).await) }
    })
    .await;
    assert!(results[0].result.is_ok() && results[1].result.is_ok());
    assert!(results[2].result.is_err());
    let c = connect(&url).await;
    assert_eq!(
        rows(
            &c,
            "SELECT count(*)::text FROM pg_indexes WHERE tablename = 'a'"
        )
        .await,
        vec!["2"]
    );
}

#[tokio::test]
async fn preflight_flags_non_superuser_and_non_empty_tables() {
    let pg = server();
    let db = pg.create_database("pre").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE full_t (x int); INSERT INTO full_t VALUES (1); CREATE TABLE empty_t (x int);",
    )
    .unwrap();
    pg.create_role("plain", "pw", "LOGIN").unwrap();
    pg.psql(&db, "GRANT SELECT ON full_t, empty_t TO plain;")
        .unwrap();
    let state = StateStore::new("ferry");
    let tables = [
        tid("full_t"),
        tid("empty_t"),
        TableId::new("public", "absent"),
    ];
    let admin = connect(&pg.url(&db)).await;
    let checks = check_target(&admin, &state, &tables).await;
    assert!(
        checks.iter().all(|c| c.status != CheckStatus::Fail),
        "{checks:?}"
    );
    let warned: Vec<_> = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Warn)
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(warned, vec!["table public.full_t"]);

    let plain_url = format!("postgres://plain:pw@127.0.0.1:{}/{db}", pg.port());
    let plain = connect(&plain_url).await;
    let checks = check_target(&plain, &state, &tables).await;
    let srr = checks
        .iter()
        .find(|c| c.name == "session_replication_role")
        .unwrap();
    // Not refused: the plan says what ferry does instead.
    assert_eq!(srr.status, CheckStatus::Warn, "{srr:?}");
    assert!(srr.detail.contains("no-replica-role mode"), "{srr:?}");
    assert!(srr.detail.contains("DISABLE TRIGGER"), "{srr:?}");
    assert!(srr.fix.as_deref().unwrap().contains("rds_superuser"));
    assert!(
        !ferry_apply::preflight::replica_role_allowed(&plain)
            .await
            .unwrap()
    );
    assert!(
        ferry_apply::preflight::replica_role_allowed(&admin)
            .await
            .unwrap()
    );
    // PostgreSQL 15+: the right to set just this parameter is enough.
    pg.psql(
        &db,
        "GRANT SET ON PARAMETER session_replication_role TO plain",
    )
    .unwrap();
    assert!(
        ferry_apply::preflight::replica_role_allowed(&plain)
            .await
            .unwrap()
    );
    let checks = check_target(&plain, &state, &tables).await;
    let srr = checks
        .iter()
        .find(|c| c.name == "session_replication_role")
        .unwrap();
    assert_eq!(srr.status, CheckStatus::Pass, "{srr:?}");
    assert!(srr.detail.contains("may SET"), "{srr:?}");
    let create = checks
        .iter()
        .find(|c| c.name == "create privilege")
        .unwrap();
    assert_eq!(
        create.status,
        CheckStatus::Fail,
        "PG15+: no CREATE on the database by default"
    );
}

/// A whole-table load empties the table it loads and nothing else: an
/// inheritance parent loaded after its child keeps the child's rows (the
/// parent's `TRUNCATE` is `ONLY`), and a partitioned table loaded through
/// its root replaces the rows of its partitions.
#[tokio::test]
async fn whole_load_of_a_parent_keeps_its_children() {
    let pg = server();
    let db = pg.create_database("inherit").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE animals (id int PRIMARY KEY, name text);
         CREATE TABLE dogs (bark text) INHERITS (animals);
         INSERT INTO dogs VALUES (1, 'd1', 'woof'), (2, 'd2', 'woof');
         CREATE TABLE m (id int, r int, PRIMARY KEY (id, r)) PARTITION BY LIST (r);
         CREATE TABLE m1 PARTITION OF m FOR VALUES IN (1);
         INSERT INTO m VALUES (100, 1);",
    )
    .unwrap();
    let mut client = connect(&pg.url(&db)).await;
    let state = StateStore::new("ferry");
    state.ensure(&client).await.unwrap();
    let load = async |client: &mut tokio_postgres::Client, t: &str, cols: &[&str], row: Row| {
        state
            .register_table(client, &tid(t), &tid(t), Some(1), Some(1))
            .await
            .unwrap();
        let to = LoadTarget::whole(tid(t), tid(t), cols.iter().map(|c| c.to_string()).collect());
        let data: LoadData<stream::Empty<Result<bytes::Bytes, std::io::Error>>, _> =
            LoadData::Rows(stream::iter(vec![Ok::<_, std::io::Error>(row)]));
        load_chunk(client, &state, &to, data, None, None)
            .await
            .unwrap()
    };
    let res = load(
        &mut client,
        "animals",
        &["id", "name"],
        Row::new(vec![Value::Int4(1), txt("a1")]),
    )
    .await;
    assert_eq!(res.rows, 1);
    assert_eq!(
        rows(
            &client,
            "SELECT id || ':' || name FROM ONLY dogs ORDER BY id"
        )
        .await,
        vec!["1:d1", "2:d2"],
        "the child's rows survive the parent's load"
    );
    assert_eq!(
        rows(&client, "SELECT id || ':' || name FROM ONLY animals").await,
        vec!["1:a1"]
    );
    load(
        &mut client,
        "m",
        &["id", "r"],
        Row::new(vec![Value::Int4(7), Value::Int4(1)]),
    )
    .await;
    assert_eq!(
        rows(&client, "SELECT id || ':' || r FROM m").await,
        vec!["7:1"],
        "a partitioned table's load replaces its partitions' rows"
    );
}
