//! The change stream against real PostgreSQL servers (ferry-testkit).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::config::{Config, Endpoint, SslMode};
use ferry_core::source::{Cutover, Probe, Source};
use ferry_core::{Change, Event, Lsn, OldRow, RedactedUrl, Value};
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::slot;
use ferry_postgres::source::PgSource;
use ferry_postgres::stream::{
    CatalogTypeResolver, PgChangeStream, StreamConfig, StreamHandle, StreamHooks,
};
use ferry_testkit::{PgOptions, PgServer};
use tokio::sync::mpsc::Receiver;

type Events = Receiver<Event<Lsn>>;

fn endpoint(url: &str, mode: SslMode) -> Endpoint {
    Endpoint {
        url: RedactedUrl::new(url),
        sslmode: Some(mode),
        sslrootcert: None,
    }
}

async fn catalog(url: &str) -> Arc<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("catalog connection");
    tokio::spawn(conn);
    Arc::new(client)
}

/// Publication `p` (all tables) and slot `name`; returns the consistent point.
async fn create_slot(url: &str, name: &str) -> Lsn {
    let ep = endpoint(url, SslMode::Disable);
    let client = catalog(url).await;
    slot::ensure_publication(&client, "p", None, slot::Publish::All)
        .await
        .expect("publication");
    let conn = ReplicationConnection::connect(&ep)
        .await
        .expect("replication connect");
    let created = slot::create_slot(conn, name).await.expect("slot");
    assert!(created.snapshot_name().is_some());
    let lsn = created.consistent_point();
    created.release().await;
    lsn
}

async fn start(
    url: &str,
    name: &str,
    start: Lsn,
    tweak: impl FnOnce(&mut StreamConfig),
) -> (Events, StreamHandle) {
    let ep = endpoint(url, SslMode::Disable);
    let conn = ReplicationConnection::connect(&ep)
        .await
        .expect("replication connect");
    let mut cfg = StreamConfig::new(name, "p", start);
    cfg.heartbeat_interval = Duration::from_secs(3600);
    tweak(&mut cfg);
    PgChangeStream::start(
        conn,
        Arc::new(CatalogTypeResolver::new(catalog(url).await)),
        cfg,
    )
    .await
    .expect("start stream")
}

/// Receive events until `done` says so (or fail after 30 s).
async fn collect_until(
    rx: &mut Events,
    mut done: impl FnMut(&Event<Lsn>) -> bool,
) -> Vec<Event<Lsn>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; got so far: {:#?}", render(&out)))
            .expect("stream ended");
        let stop = done(&ev);
        out.push(ev);
        if stop {
            return out;
        }
    }
}

/// Until the commit of the transaction that inserted `marker` into `no_key`-like sentinel tables.
fn is_commit(ev: &Event<Lsn>) -> bool {
    matches!(ev, Event::Commit { .. })
}

fn render_value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Unchanged => "UNCHANGED".into(),
        Value::Array(a) => format!("Array<{}>:{}", a.element_type, a.to_pg_text()),
        Value::Other { type_name, text } => format!("Other<{type_name}>:{text}"),
        other => {
            let dbg = format!("{other:?}");
            let kind = dbg.split('(').next().unwrap_or("?").to_owned();
            format!("{kind}:{}", other.to_pg_text().unwrap_or_default())
        }
    }
}

fn render_row(r: &ferry_core::Row) -> String {
    r.values
        .iter()
        .map(render_value)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A stable text rendering (no LSNs, times or xids).
fn render(events: &[Event<Lsn>]) -> Vec<String> {
    events
        .iter()
        .map(|ev| match ev {
            Event::Relation(s) => {
                let cols: Vec<String> = s
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        format!(
                            "{} {}{}",
                            c.name,
                            c.pg_type,
                            if s.key.contains(&i) { " KEY" } else { "" }
                        )
                    })
                    .collect();
                format!(
                    "RELATION {} identity={} ({})",
                    s.id,
                    s.replica_identity,
                    cols.join(", ")
                )
            }
            Event::Begin { .. } => "BEGIN".into(),
            Event::Commit { .. } => "COMMIT".into(),
            Event::Heartbeat { .. } => "HEARTBEAT".into(),
            Event::Ddl(m) => format!("DDL {} tables", m.tables.len()),
            Event::Replaced { table, column, .. } => format!("REPLACED {table}.{column}"),
            Event::Change(Change::Insert { table, new }) => {
                format!("  INSERT {table}: {}", render_row(new))
            }
            Event::Change(Change::Update { table, old, new }) => {
                let old = match old {
                    None => String::new(),
                    Some(OldRow::Key(r)) => format!(" OLD KEY {}", render_row(r)),
                    Some(OldRow::Full(r)) => format!(" OLD FULL {}", render_row(r)),
                };
                format!("  UPDATE {table}:{old} NEW {}", render_row(new))
            }
            Event::Change(Change::Delete { table, old }) => match old {
                OldRow::Key(r) => format!("  DELETE {table}: KEY {}", render_row(r)),
                OldRow::Full(r) => format!("  DELETE {table}: FULL {}", render_row(r)),
            },
            Event::Change(Change::Truncate {
                tables,
                cascade,
                restart_identity,
            }) => {
                let t: Vec<String> = tables.iter().map(ToString::to_string).collect();
                format!(
                    "  TRUNCATE {} cascade={cascade} restart_identity={restart_identity}",
                    t.join(", ")
                )
            }
        })
        .collect()
}

const GOLDEN_SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE all_types (
  id int PRIMARY KEY, b bool, i2 int2, i8 int8, f4 real, f8 float8, n numeric(10,2), nn numeric,
  t text, vc varchar(20), bc char(5), nm name, ch "char", by bytea, j json, jb jsonb, u uuid,
  d date, tm time, tmtz timetz, ts timestamp(3), tstz timestamptz, iv interval, ivym interval year to month,
  m mood, e email, p posint, ia int[], ta text[], ma mood[], i2d int[][], vca varchar(8)[], pt point, ip inet,
  ea email[]
);
CREATE TABLE full_ident (id int PRIMARY KEY, v text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
CREATE TABLE no_key (a int, b text);
CREATE TABLE keyed (k int PRIMARY KEY, v text);
"#;

const GOLDEN_WORKLOAD: &str = r#"
INSERT INTO all_types VALUES (1, true, -32768, 9223372036854775807, 'NaN', '-Infinity', 12.34, 'NaN',
  'hello', 'vc', 'ab', 'nm', 'x', '\x00ff', '{"a": 1}', '{"b": [1, 2]}', '12345678-9abc-def0-0001-020304050607',
  '2024-02-29', '24:00:00', '12:34:56.789+05:30', '2021-01-01 01:02:03.456', '2021-06-01 12:00:00+02',
  '1 year 2 mons 3 days 04:05:06.5', '3 years 1 month', 'happy', 'a@b.c', 7, '{1,NULL,3}',
  '{"a b","NULL",NULL,"q\"\\"}', '{sad,happy}', '{{1,2},{3,4}}', '{abc,"d,e"}', '(1,2)', '10.0.0.1/8',
  '{x@y.z}');
INSERT INTO all_types (id, f4, f8, nn, d, ts, tstz, iv, ia, t)
  VALUES (2, 'Infinity', 1.5e300, '-0.000123', '0044-03-15 BC', 'infinity', '-infinity', '-00:00:01', '[0:1]={5,6}', '');
INSERT INTO all_types (id, d, tstz, iv, ta) VALUES (3, 'infinity', '0001-01-01 00:00:00+00 BC', '-1 days +02:00:00', '{}');
UPDATE all_types SET t = 'changed' WHERE id = 1;
INSERT INTO full_ident VALUES (1, 'one');
UPDATE full_ident SET v = 'uno' WHERE id = 1;
DELETE FROM full_ident WHERE id = 1;
INSERT INTO no_key VALUES (1, 'a');
INSERT INTO keyed VALUES (1, 'a');
UPDATE keyed SET k = 2 WHERE k = 1;
DELETE FROM keyed WHERE k = 2;
BEGIN; INSERT INTO keyed VALUES (10, 'x'); INSERT INTO keyed VALUES (11, 'y'); COMMIT;
TRUNCATE no_key, keyed RESTART IDENTITY CASCADE;
SELECT pg_logical_emit_message(false, 'ferry.heartbeat', 'x');
SELECT pg_logical_emit_message(true, 'other.prefix', 'y');
ALTER TABLE keyed ADD COLUMN extra numeric(5,1);
INSERT INTO keyed VALUES (20, 'z', 5.5);
INSERT INTO no_key VALUES (99, 'end');
"#;

fn is_end_marker(ev: &Event<Lsn>) -> bool {
    matches!(ev, Event::Change(Change::Insert { table, new }) if table.name == "no_key" && new.values[0] == Value::Int4(99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_workload_decodes_as_checked_in() {
    let pg = PgServer::start(PgOptions::default()).expect("start postgres");
    let db = pg.create_database("golden").unwrap();
    let url = pg.url(&db);
    pg.psql(&db, GOLDEN_SCHEMA).unwrap();
    let lsn = create_slot(&url, "golden").await;
    pg.psql(&db, GOLDEN_WORKLOAD).unwrap();
    let (mut rx, handle) = start(&url, "golden", lsn, |_| {}).await;
    let mut events = collect_until(&mut rx, is_end_marker).await;
    events.extend(collect_until(&mut rx, is_commit).await);
    handle.shutdown().await.expect("clean shutdown");
    let text = render(&events).join("\n") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pgoutput.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file (run with UPDATE_GOLDEN=1)");
    assert_eq!(text, want, "decoded events differ from {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_columns_are_unchanged_not_null() {
    let pg = PgServer::start(PgOptions::default()).expect("start postgres");
    let db = pg.create_database("toast").unwrap();
    let url = pg.url(&db);
    pg.psql(
        &db,
        "CREATE TABLE big (id int PRIMARY KEY, t text, j jsonb, b bytea, other int);",
    )
    .unwrap();
    let lsn = create_slot(&url, "toast").await;
    pg.psql(
        &db,
        "WITH c AS (SELECT string_agg(md5(i::text), '') AS s FROM generate_series(1, 1000) i)
         INSERT INTO big SELECT 1, s, jsonb_build_object('k', s), decode(s, 'hex'), 0 FROM c;
         UPDATE big SET other = 1 WHERE id = 1;",
    )
    .unwrap();
    let (mut rx, handle) = start(&url, "toast", lsn, |_| {}).await;
    let events = collect_until(&mut rx, |e| {
        matches!(e, Event::Change(Change::Update { .. }))
    })
    .await;
    handle.shutdown().await.unwrap();
    let insert = events.iter().find_map(|e| match e {
        Event::Change(Change::Insert { new, .. }) => Some(new),
        _ => None,
    });
    let Some(insert) = insert else {
        panic!("no insert: {:?}", render(&events))
    };
    match &insert.values[1] {
        Value::Text(s) => assert_eq!(s.len(), 32_000),
        other => panic!("{other:?}"),
    }
    let Some(Event::Change(Change::Update { new, .. })) = events.last() else {
        panic!()
    };
    assert_eq!(new.values[0], Value::Int4(1));
    assert_eq!(new.values[1], Value::Unchanged);
    assert_eq!(new.values[2], Value::Unchanged);
    assert_eq!(new.values[3], Value::Unchanged);
    assert_eq!(new.values[4], Value::Int4(1));
}

const LARGE_WORKLOAD: &str = "
BEGIN;
INSERT INTO big SELECT i, md5(i::text) || md5((i+1)::text) FROM generate_series(1, 3000) i;
SAVEPOINT s1;
INSERT INTO big SELECT i, 'rolled back' FROM generate_series(3001, 5000) i;
ROLLBACK TO SAVEPOINT s1;
UPDATE big SET v = 'updated' WHERE id <= 10;
COMMIT;
BEGIN;
INSERT INTO big SELECT i, md5(i::text) FROM generate_series(10001, 15000) i;
ROLLBACK;
INSERT INTO big VALUES (-1, 'end');
";

fn is_end_row(ev: &Event<Lsn>) -> bool {
    matches!(ev, Event::Change(Change::Insert { new, .. }) if new.values[0] == Value::Int4(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_large_transactions_match_protocol_v1() {
    let pg = PgServer::start(PgOptions::default().setting("logical_decoding_work_mem", "64kB"))
        .expect("start postgres");
    let db = pg.create_database("large").unwrap();
    let url = pg.url(&db);
    pg.psql(&db, "CREATE TABLE big (id int PRIMARY KEY, v text);")
        .unwrap();
    let lsn_v1 = create_slot(&url, "v1").await;
    let lsn_v2 = create_slot(&url, "v2").await;
    pg.psql(&db, LARGE_WORKLOAD).unwrap();

    let mut runs = Vec::new();
    for (slot_name, lsn, proto) in [("v1", lsn_v1, 1), ("v2", lsn_v2, 2)] {
        let (mut rx, handle) = start(&url, slot_name, lsn, |c| {
            c.proto_version = proto;
            c.spill_threshold = 16 * 1024;
            c.channel_capacity = 16;
        })
        .await;
        let mut events = collect_until(&mut rx, is_end_row).await;
        events.extend(collect_until(&mut rx, is_commit).await);
        handle.shutdown().await.unwrap();
        runs.push(render(&events));
    }
    let streamed: i64 = pg
        .psql(
            &db,
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'v2'",
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(streamed >= 1, "the v2 slot streamed no transaction");
    assert_eq!(runs[0], runs[1], "protocol v2 decodes differently from v1");
    let rows = &runs[1];
    let inserts = rows.iter().filter(|l| l.contains("INSERT")).count();
    assert_eq!(
        inserts,
        3000 + 1,
        "committed inserts only (no rolled-back subtransaction or transaction)"
    );
    assert!(
        !rows
            .iter()
            .any(|l| l.contains("rolled back") || l.contains("Int4:10001 "))
    );
    assert_eq!(rows.iter().filter(|l| l.contains("UPDATE")).count(), 10);
    assert_eq!(rows.iter().filter(|l| *l == "BEGIN").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_commit_position_does_not_replay() {
    let pg = PgServer::start(PgOptions::default()).expect("start postgres");
    let db = pg.create_database("restart").unwrap();
    let url = pg.url(&db);
    pg.psql(&db, "CREATE TABLE t (id int PRIMARY KEY);")
        .unwrap();
    let lsn = create_slot(&url, "restart").await;
    pg.psql(&db, "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);")
        .unwrap();
    let (mut rx, handle) = start(&url, "restart", lsn, |_| {}).await;
    let mut events = collect_until(&mut rx, is_commit).await;
    let Some(Event::Commit {
        position: first, ..
    }) = events.pop()
    else {
        panic!()
    };
    handle.ack_handle().ack(first);
    handle.shutdown().await.unwrap();

    let (mut rx, handle) = start(&url, "restart", first, |_| {}).await;
    pg.psql(&db, "INSERT INTO t VALUES (3);").unwrap();
    let events = collect_until(&mut rx, |e| matches!(e, Event::Change(_))).await;
    handle.shutdown().await.unwrap();
    let ids: Vec<String> = render(&events)
        .into_iter()
        .filter(|l| l.contains("INSERT"))
        .collect();
    assert_eq!(
        ids,
        vec!["  INSERT public.t: Int4:2".to_owned()],
        "{:?}",
        render(&events)
    );
}

async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Lsn {
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

/// On an idle source the first keepalive after the start is a heartbeat at
/// once, not one `heartbeat_interval` later: on WAL past the start that
/// holds no published change it is what carries the position past it
/// (where `ferry run`'s catch-up ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_keepalive_on_an_idle_source_is_a_heartbeat_at_once() {
    let pg = PgServer::start(PgOptions::default()).expect("start postgres");
    let db = pg.create_database("first").unwrap();
    let url = pg.url(&db);
    pg.psql(&db, "CREATE TABLE t (id int PRIMARY KEY);")
        .unwrap();
    let lsn = create_slot(&url, "first").await;
    // WAL after the slot's start without a change pgoutput sends (a
    // non-transactional message; the stream does not ask for messages),
    // flushed by a checkpoint, which wakes the walsender.
    let client = catalog(&url).await;
    let message: Lsn = client
        .query_one(
            "SELECT pg_logical_emit_message(false, 'ferry-test', 'x')::text",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    assert!(message > lsn);
    client.batch_execute("CHECKPOINT").await.unwrap();
    // `start` sets heartbeat_interval to an hour.
    let started = std::time::Instant::now();
    let (mut rx, handle) = start(&url, "first", lsn, |_| {}).await;
    let events = collect_until(
        &mut rx,
        |e| matches!(e, Event::Heartbeat { position, .. } if *position > message),
    )
    .await;
    assert!(
        events.iter().all(|e| matches!(e, Event::Heartbeat { .. })),
        "an event other than a heartbeat on an idle source: {:#?}",
        render(&events)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the first heartbeat took {:?}",
        started.elapsed()
    );
    handle.shutdown().await.expect("clean shutdown");
}

/// WAL without a published change written after the stream has caught up
/// (here: rows in another database) moves the position within moments, not
/// one `status_interval` (10 s) later: the stream answers the walsender's
/// keepalive with what it handed on, so the walsender sends the next one as
/// soon as it has decoded past it. The flushed position the server is told
/// stays what the consumer acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_without_changes_after_the_start_moves_the_position_within_moments() {
    let pg = PgServer::start(PgOptions::default()).expect("start postgres");
    let db = pg.create_database("later").unwrap();
    let other = pg.create_database("other").unwrap();
    let url = pg.url(&db);
    pg.psql(&db, "CREATE TABLE t (id int PRIMARY KEY);")
        .unwrap();
    pg.psql(&other, "CREATE TABLE u (id int);").unwrap();
    let lsn = create_slot(&url, "later").await;
    // The default status_interval (10 s); `start` sets heartbeat_interval
    // to an hour.
    let (mut rx, handle) = start(&url, "later", lsn, |_| {}).await;
    collect_until(&mut rx, |e| matches!(e, Event::Heartbeat { .. })).await;
    let writer = catalog(&pg.url(&other)).await;
    let mut head = lsn;
    for round in 0..3 {
        writer
            .batch_execute("INSERT INTO u SELECT generate_series(1, 100)")
            .await
            .unwrap();
        head = writer
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
            .parse()
            .unwrap();
        let written = std::time::Instant::now();
        let events = collect_until(
            &mut rx,
            |e| matches!(e, Event::Heartbeat { position, .. } if *position >= head),
        )
        .await;
        assert!(
            events.iter().all(|e| matches!(e, Event::Heartbeat { .. })),
            "round {round}: an event other than a heartbeat for WAL of another database: {:#?}",
            render(&events)
        );
        assert!(
            written.elapsed() < Duration::from_secs(3),
            "round {round}: the position took {:?} to pass {head} (status updates go every 10 s)",
            written.elapsed()
        );
    }
    let client = catalog(&url).await;
    let row = client
        .query_one(
            "SELECT write_lsn::text, flush_lsn::text FROM pg_stat_replication WHERE application_name = 'ferry'",
            &[],
        )
        .await
        .unwrap();
    let write: Lsn = row.get::<_, String>(0).parse().unwrap();
    let flush: Lsn = row.get::<_, String>(1).parse().unwrap();
    assert!(write >= head, "write_lsn {write} short of {head}");
    assert_eq!(flush, lsn, "flush_lsn moved without an acknowledgement");
    assert_eq!(confirmed_flush(&client, "later").await, lsn);
    handle.shutdown().await.expect("clean shutdown");
}

/// The probe's heartbeat flushes the WAL before it, and so does the
/// cutover's final position. A walsender sends only flushed WAL, and the
/// head `ferry run`'s catch-up waits for is the write position, which can
/// lie inside a record written but not yet flushed (a non-transactional
/// message here: no commit flushes it, and the WAL writer flushes only
/// full pages unless a commit is asynchronous).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_heartbeat_and_the_final_position_flush_the_wal_before_them() {
    let pg = PgServer::start(PgOptions::default()).expect("start postgres");
    let db = pg.create_database("flush").unwrap();
    let url = pg.url(&db);
    let config = Config::from_parts(
        &format!("[source]\nurl = \"{url}\"\nsslmode = \"disable\"\n[target]\nurl = \"{url}\"\n"),
        "test",
        Vec::<(String, String)>::new(),
    )
    .expect("config");
    let source = PgSource::new(config);
    let mut probe = source.probe().await.expect("probe");
    let client = catalog(&url).await;
    let lsn = async |sql: &str| -> Lsn {
        client
            .query_one(sql, &[])
            .await
            .unwrap()
            .get::<_, String>(0)
            .parse()
            .unwrap()
    };
    let written = lsn("SELECT pg_logical_emit_message(false, 'ferry-test', 'x')::text").await;
    let flushed = lsn("SELECT pg_current_wal_flush_lsn()::text").await;
    assert!(
        flushed < written,
        "the message is flushed already ({flushed} ≥ {written}): nothing to test"
    );
    let at = probe
        .heartbeat()
        .await
        .expect("heartbeat")
        .expect("a PostgreSQL source writes heartbeats");
    assert!(at > written, "heartbeat at {at}, before {written}");
    let flushed = lsn("SELECT pg_current_wal_flush_lsn()::text").await;
    assert!(
        flushed >= at,
        "the heartbeat left the WAL unflushed: flushed {flushed}, heartbeat at {at}"
    );
    // The same for the cutover's final position (unfenced here).
    let written = lsn("SELECT pg_logical_emit_message(false, 'ferry-test', 'y')::text").await;
    let flushed = lsn("SELECT pg_current_wal_flush_lsn()::text").await;
    assert!(flushed < written, "the second message is flushed already");
    let mut cutover = source.cutover().await.expect("cutover session");
    let last = cutover.final_position().await.expect("final position");
    assert!(last > written, "final position {last}, before {written}");
    let flushed = lsn("SELECT pg_current_wal_flush_lsn()::text").await;
    assert!(
        flushed >= last,
        "the final position left the WAL unflushed: flushed {flushed}, final position {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_consumer_stays_connected_and_acks_advance() {
    let pg = PgServer::start(PgOptions::default().setting("wal_sender_timeout", "2s"))
        .expect("start postgres");
    let db = pg.create_database("idle").unwrap();
    let url = pg.url(&db);
    pg.psql(&db, "CREATE TABLE t (id int PRIMARY KEY);")
        .unwrap();
    let lsn = create_slot(&url, "idle").await;
    let (mut rx, handle) = start(&url, "idle", lsn, |c| {
        c.channel_capacity = 1;
        c.status_interval = Duration::from_millis(500);
        c.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    // Fill the channel so the task waits on it, then stay slow for longer
    // than three wal_sender_timeouts: this sleep is the behaviour under test.
    pg.psql(
        &db,
        "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !handle.is_finished(),
        "stream task ended while the consumer was slow"
    );
    let client = catalog(&url).await;
    let senders: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'ferry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(senders, 1, "walsender gone: {}", pg.log_contents());
    let events = collect_until(&mut rx, |e| matches!(e, Event::Change(Change::Insert { new, .. }) if new.values[0] == Value::Int4(3))).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Change(_)))
            .count(),
        3
    );
    // Now idle: a keepalive heartbeat arrives; ack it and watch the slot move.
    let hb = collect_until(&mut rx, |e| matches!(e, Event::Heartbeat { .. })).await;
    let Some(Event::Heartbeat { position, .. }) = hb.last() else {
        panic!()
    };
    let position = *position;
    assert!(position > lsn);
    handle.ack_handle().ack(position);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let confirmed = confirmed_flush(&client, "idle").await;
        if confirmed >= position {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "confirmed_flush_lsn stuck at {confirmed}, acked {position}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.shutdown().await.unwrap();
}

/// A consumer that stops reading (a paused applier) for longer than three
/// `wal_sender_timeout`s, with the default status interval (10 s, longer
/// than the timeout): the reader, waiting on its full channel, still keeps
/// the same walsender alive and acknowledges nothing the consumer did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_consumer_outlives_a_short_wal_sender_timeout() {
    let pg = PgServer::start(PgOptions::default().setting("wal_sender_timeout", "2s"))
        .expect("start postgres");
    let db = pg.create_database("stall").unwrap();
    let url = pg.url(&db);
    pg.psql(&db, "CREATE TABLE t (id int PRIMARY KEY);")
        .unwrap();
    let lsn = create_slot(&url, "stall").await;
    let (mut rx, handle) = start(&url, "stall", lsn, |c| c.channel_capacity = 4).await;
    let client = catalog(&url).await;
    // The walsender streaming the slot (the one that created it may still
    // be exiting, so not any walsender named 'ferry').
    let walsender = || async {
        client
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'stall'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, Option<i32>>(0)
    };
    let pid = walsender().await.expect("walsender running");
    pg.psql(
        &db,
        "DO $$ BEGIN FOR i IN 1..50 LOOP INSERT INTO t VALUES (i); COMMIT; END LOOP; END $$;",
    )
    .unwrap();
    // Nobody reads for 7 s: this sleep is the behaviour under test.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(rx.len(), 4, "the channel is full, the reader waits on it");
    assert!(!handle.is_finished(), "stream task ended while stalled");
    assert_eq!(
        walsender().await,
        Some(pid),
        "the walsender was replaced: {}",
        pg.log_contents()
    );
    assert!(
        !pg.log_contents().contains("replication timeout"),
        "{}",
        pg.log_contents()
    );
    assert_eq!(
        confirmed_flush(&client, "stall").await,
        lsn,
        "acked beyond the consumer"
    );
    let events = collect_until(&mut rx, |e| {
        matches!(e, Event::Change(Change::Insert { new, .. }) if new.values[0] == Value::Int4(50))
    })
    .await;
    let ids: Vec<i32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Change(Change::Insert { new, .. }) => match new.values[0] {
                Value::Int4(i) => Some(i),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
    assert_eq!(walsender().await, Some(pid));
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_auth_and_clear_errors() {
    let pg = PgServer::start(PgOptions::default().auth(ferry_testkit::PgAuth::Scram))
        .expect("start postgres");
    let db = pg.create_database("auth").unwrap();
    let url = pg.url(&db);
    let mut conn = ReplicationConnection::connect(&endpoint(&url, SslMode::Disable))
        .await
        .expect("scram connect");
    let id = conn.identify_system().await.unwrap();
    assert!(id.xlogpos > Lsn::ZERO);
    assert_eq!(id.dbname.as_deref(), Some(db.as_str()));
    conn.close().await;

    let bad = url.replace(ferry_testkit::ADMIN_PASSWORD, "wrong-password");
    let err = ReplicationConnection::connect(&endpoint(&bad, SslMode::Disable))
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(
        err.to_string(),
        format!(
            "authentication failed for user {}; check the password in source.url",
            ferry_testkit::ADMIN_USER
        )
    );
    assert!(!format!("{err:?}").contains("wrong-password"));

    pg.create_role("norepl", "pw", "LOGIN").unwrap();
    let port = pg.port();
    let norepl = format!("postgres://norepl:pw@127.0.0.1:{port}/{db}");
    let err = ReplicationConnection::connect(&endpoint(&norepl, SslMode::Disable))
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.to_string().contains("ALTER ROLE norepl REPLICATION"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_and_require() {
    let pg = PgServer::start(PgOptions::default().tls(true)).expect("start postgres");
    let db = pg.create_database("tls").unwrap();
    let url = pg.url(&db);
    let ca = pg.ca_cert_path().expect("tls files").to_path_buf();
    let mut ep = endpoint(&url, SslMode::VerifyFull);
    ep.sslrootcert = Some(ca);
    let mut conn = ReplicationConnection::connect(&ep)
        .await
        .expect("verify-full connect");
    assert!(conn.is_tls());
    conn.identify_system().await.unwrap();
    conn.close().await;
    let mut conn = ReplicationConnection::connect(&endpoint(&url, SslMode::Require))
        .await
        .expect("require");
    assert!(conn.is_tls());
    conn.identify_system().await.unwrap();
    conn.close().await;
    // verify-full without a root certificate is refused before connecting.
    let err = ReplicationConnection::connect(&endpoint(&url, SslMode::VerifyFull))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sslrootcert"), "{err}");
}

/// Many small messages and a few larger than a read chunk, over TLS (where
/// one socket read returns one decrypted chunk): every row arrives once, in
/// order; the map hook drops what it is told to. (Pausing is the
/// applier's: `ferry-apply`'s `paused_applier_applies_nothing_until_resumed`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_stream_with_hooks_delivers_every_row_once_in_order() {
    let pg = PgServer::start(PgOptions::default().tls(true)).expect("start postgres");
    let db = pg.create_database("tlsstream").unwrap();
    let url = pg.url(&db);
    pg.psql(&db, "CREATE TABLE t (k int PRIMARY KEY, v text)")
        .unwrap();
    let lsn = create_slot(&url, "tls").await;
    // 200 transactions of 100 rows; every 1000th row carries 300 kB.
    pg.psql(
        &db,
        "DO $$ BEGIN FOR i IN 0..199 LOOP
           INSERT INTO t SELECT k, CASE WHEN k % 1000 = 0 THEN repeat(md5(k::text), 9375) ELSE md5(k::text) END
             FROM generate_series(i * 100 + 1, i * 100 + 100) k;
           COMMIT;
         END LOOP; END $$;",
    )
    .unwrap();
    let mut ep = endpoint(&url, SslMode::VerifyFull);
    ep.sslrootcert = Some(pg.ca_cert_path().expect("tls files").to_path_buf());
    let conn = ReplicationConnection::connect(&ep)
        .await
        .expect("verify-full connect");
    assert!(conn.is_tls());
    let key = |ev: &Event<Lsn>| match ev {
        Event::Change(Change::Insert { new, .. }) => match new.values[0] {
            Value::Int4(k) => Some(k),
            _ => None,
        },
        _ => None,
    };
    let hooks = StreamHooks {
        map: Some(Box::new(move |ev| match key(&ev) {
            Some(k) if k % 7 == 0 => None,
            _ => Some(ev),
        })),
    };
    let mut cfg = StreamConfig::new("tls", "p", lsn);
    cfg.heartbeat_interval = Duration::from_secs(3600);
    let resolver = Arc::new(CatalogTypeResolver::new(catalog(&url).await));
    let (mut rx, handle) = PgChangeStream::start_with(conn, resolver, cfg, hooks)
        .await
        .expect("start stream");
    let events = collect_until(&mut rx, |ev| key(ev) == Some(20_000)).await;
    handle.shutdown().await.expect("clean shutdown");
    let keys: Vec<i32> = events.iter().filter_map(key).collect();
    let want: Vec<i32> = (1..=20_000).filter(|k| k % 7 != 0).collect();
    assert_eq!(keys.len(), want.len());
    assert!(keys == want, "rows out of order, missing or doubled");
    let wide = events.iter().find_map(|ev| match ev {
        Event::Change(Change::Insert { new, .. }) if new.values[0] == Value::Int4(1000) => {
            Some(new.values[1].clone())
        }
        _ => None,
    });
    match wide {
        Some(Value::Text(t)) => assert_eq!(t.len(), 300_000),
        other => panic!("row 1000: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_lifecycle_verify_and_drop() {
    let pg = PgServer::start(PgOptions::default()).expect("start postgres");
    let db = pg.create_database("slots").unwrap();
    let url = pg.url(&db);
    let client = catalog(&url).await;
    let lsn = create_slot(&url, "life").await;
    let info = slot::verify_slot(&client, "life", lsn)
        .await
        .expect("slot verifies at its consistent point");
    assert_eq!(info.plugin.as_deref(), Some("pgoutput"));
    let err = slot::verify_slot(&client, "life", Lsn(lsn.0 - 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lost or reused"), "{err}");
    assert!(err.to_string().contains("ferry cleanup"), "{err}");
    assert!(slot::drop_slot(&client, "life").await.unwrap());
    assert!(!slot::drop_slot(&client, "life").await.unwrap());
    slot::drop_publication(&client, "p").await.unwrap();
    slot::drop_publication(&client, "p").await.unwrap();
    let err = slot::verify_slot(&client, "life", lsn).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A slot created beforehand (before the publication, with writes in
/// between), advanced to the consistent point of a temporary slot whose
/// exported snapshot is read while an application inserts in many small
/// transactions: every row is in the snapshot or in the stream from the
/// advanced slot, never both, never neither. On the newest server and on
/// PostgreSQL 12, the oldest tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_slot_advanced_to_a_snapshot_misses_and_doubles_nothing() {
    existing_slot_advanced(PgOptions::default()).await;
    existing_slot_advanced(PgOptions::default().version(12)).await;
}

async fn existing_slot_advanced(opts: PgOptions) {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    let pg = PgServer::start(opts).expect("start postgres");
    let db = pg.create_database("existing").unwrap();
    let url = pg.url(&db);
    pg.psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         SELECT pg_create_logical_replication_slot('dba', 'pgoutput');
         INSERT INTO t SELECT g, 'before publication' FROM generate_series(1, 100) g;",
    )
    .unwrap();
    let client = catalog(&url).await;
    slot::ensure_publication(&client, "p", None, slot::Publish::All)
        .await
        .expect("publication");
    pg.psql(
        &db,
        "INSERT INTO t SELECT g, 'before ferry' FROM generate_series(101, 200) g",
    )
    .unwrap();

    // The application: one row per transaction, as fast as it goes.
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI32::new(200));
    let writer = {
        let (stop, last, app) = (stop.clone(), last.clone(), catalog(&url).await);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = last.load(Ordering::Relaxed) + 1;
                app.execute("INSERT INTO t VALUES ($1, 'during')", &[&id])
                    .await
                    .expect("insert");
                last.store(id, Ordering::Relaxed);
            }
        })
    };
    while last.load(Ordering::Relaxed) < 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let conn = ReplicationConnection::connect(&endpoint(&url, SslMode::Disable))
        .await
        .expect("replication connect");
    let created = slot::snapshot_existing_slot(conn, &client, "dba")
        .await
        .expect("snapshot and advance");
    let at = created.consistent_point();
    let reader = catalog(&url).await;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{}'",
            created.snapshot_name().expect("exported snapshot")
        ))
        .await
        .expect("importing the snapshot");
    let in_snapshot: Vec<i32> = reader
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    reader.batch_execute("COMMIT").await.unwrap();
    created.release().await;
    let info = slot::slot_info(&client, "dba").await.unwrap().unwrap();
    assert_eq!(info.confirmed_flush, Some(at), "advanced to the snapshot");
    while last.load(Ordering::Relaxed) < in_snapshot.len() as i32 + 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let total = last.load(Ordering::Relaxed);

    let (mut rx, handle) = start(&url, "dba", at, |_| {}).await;
    let key = |ev: &Event<Lsn>| match ev {
        Event::Change(Change::Insert { new, .. }) => match new.values[0] {
            Value::Int4(k) => Some(k),
            _ => None,
        },
        _ => None,
    };
    let events = collect_until(&mut rx, |ev| key(ev) == Some(total)).await;
    handle.shutdown().await.expect("clean shutdown");
    let streamed: Vec<i32> = events.iter().filter_map(key).collect();
    let mut all = in_snapshot.clone();
    all.extend(&streamed);
    all.sort_unstable();
    let want: Vec<i32> = (1..=total).collect();
    assert!(
        all == want,
        "snapshot {} rows (up to {:?}), stream {} rows (from {:?}); {} of {total} in all",
        in_snapshot.len(),
        in_snapshot.last(),
        streamed.len(),
        streamed.first(),
        all.len()
    );
    assert!(in_snapshot.len() > 500 && !streamed.is_empty());
}
