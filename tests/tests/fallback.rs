//! The way back after a cutover (`cutover --with-fallback`, the reverse
//! stream, `ferry rollback`, `ferry finish`) through the CLI against real
//! servers: the target allows logical replication (`wal_level = logical`).

use std::time::{Duration, Instant};

use ferry_e2e::Background;
use ferry_e2e::migration::{LONG, Migration};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_testkit::PgOptions;
use tokio_postgres::Client;

/// The bench tables plus one with an identity column.
const TABLES: &[&str] = &[
    "branches", "tellers", "accounts", "history", "docs", "items",
];

const ITEMS: &str =
    "CREATE TABLE items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text NOT NULL);
INSERT INTO items (note) SELECT 'item ' || i FROM generate_series(1, 50) i;";

fn setup() -> Migration {
    let m = Migration::new(
        PgOptions::new(),
        PgOptions::new(),
        &format!("{BENCH_SCHEMA}\n{ITEMS}"),
    );
    m.source
        .psql(&m.source_db, &pgsync::bench_data(5_000, 200))
        .unwrap();
    m
}

/// Wait until the live status says `direction: reverse` and `stream`.
fn wait_reverse(s: &Migration, ferry: &mut Background) {
    s.wait_until(ferry, "ferry never streamed in reverse", || {
        let ran = s.ferry(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
        v["live"] == true && v["direction"] == "reverse" && v["phase"] == "stream"
    });
}

/// Wait until the old source's reverse checkpoint passes everything the
/// new database (the target) has written so far.
fn wait_old_source_caught_up(s: &Migration) {
    pgsync::runtime().block_on(async {
        let dst = pgsync::connect(&s.target_url).await.expect("target");
        let lsn = pgsync::insert_lsn(&dst).await.expect("target position");
        pgsync::wait_applied(&s.source_url, lsn, s.long())
            .await
            .expect("the old source caught up");
    });
}

async fn i64_of(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// An INSERT by an application session must fail as read-only (SQLSTATE 25006).
async fn assert_read_only(c: &Client, what: &str) {
    let err = c
        .execute("INSERT INTO items (note) VALUES ('must fail')", &[])
        .await
        .expect_err(what);
    assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{what}: {err}");
}

/// Writes on the new database: the pgbench-like writer plus inserts into
/// the identity and serial tables.
fn write_on(url: &str, txns: u64) {
    let mut w = Writer::start(url, 5_000);
    w.wait_for(txns, LONG).unwrap();
    w.stop().unwrap();
    pgsync::runtime().block_on(async {
        let c = pgsync::connect(url).await.unwrap();
        c.batch_execute(
            "INSERT INTO items (note) SELECT 'more ' || i FROM generate_series(1, 20) i;
             UPDATE items SET note = note || '!' WHERE id % 7 = 0;
             DELETE FROM items WHERE id % 11 = 0;
             INSERT INTO docs (body) VALUES ('written on the live side');",
        )
        .await
        .unwrap();
    });
}

/// `ferry run` until it streams, a fenced cutover with fallback, then the
/// same process streaming back; the running `ferry run`.
fn cut_over_with_fallback(s: &Migration) -> Background {
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    let cut = s.ferry(&[
        "cutover",
        "--fence",
        "--with-fallback",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry.log());
    wait_reverse(s, &mut ferry);
    ferry
}

#[test]
fn cutover_with_fallback_streams_back_exactly_and_rolls_back() {
    let s = setup();
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    // Forward changes that ferry applies to the target: none may come back.
    write_on(&s.source_url, 300);
    s.wait_caught_up();

    let dry = s.ferry(&[
        "cutover",
        "--dry-run",
        "--fence",
        "--with-fallback",
        "--max-lag",
        "30s",
    ]);
    assert_eq!(dry.code, Some(0), "{}", dry.all());
    assert!(
        dry.stdout.contains("fallback: publication ferry_reverse"),
        "{}",
        dry.all()
    );

    let cut = s.ferry(&[
        "cutover",
        "--fence",
        "--with-fallback",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry.log());
    assert!(cut.stdout.contains("cutover: done"), "{}", cut.all());
    assert!(cut.stdout.contains("opened the way back"), "{}", cut.all());
    // The same process goes on in reverse.
    wait_reverse(&s, &mut ferry);
    s.compare(TABLES);

    let rt = pgsync::runtime();
    rt.block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        // The old source stays fenced for the application.
        assert_read_only(&src, "the old source is fenced").await;
        assert_eq!(
            i64_of(
                &dst,
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry_reverse'"
            )
            .await,
            1,
            "the reverse slot exists on the target"
        );
        assert_eq!(
            i64_of(&src, "SELECT count(*) FROM pg_replication_slots").await,
            0,
            "the forward slot is dropped"
        );
    });

    // The application writes on the new database; the old source follows.
    write_on(&s.target_url, 400);
    wait_old_source_caught_up(&s);
    s.compare(TABLES);

    // The reverse stream keeps the old source's sequences in step.
    rt.block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        let started = Instant::now();
        loop {
            let mut behind = Vec::new();
            for (seq, table) in [("docs_id_seq", "docs"), ("items_id_seq", "items")] {
                let on_old = i64_of(&src, &format!("SELECT last_value FROM {seq}")).await;
                let used = i64_of(&dst, &format!("SELECT max(id)::int8 FROM {table}")).await;
                if on_old < used {
                    behind.push(format!("{seq} {on_old} < {used}"));
                }
            }
            if behind.is_empty() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{behind:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // kill -9 while the reverse stream applies, then resume exactly.
    let mut w = Writer::start(&s.target_url, 5_000);
    w.wait_for(w.committed() + 200, LONG).unwrap();
    ferry.kill9().unwrap();
    w.wait_for(w.committed() + 200, LONG).unwrap();
    w.stop().unwrap();
    let mut ferry = s.start("run-after-kill");
    wait_reverse(&s, &mut ferry);
    wait_old_source_caught_up(&s);
    // Exact: `history` has no key, so a transaction applied twice (or an
    // echo of a forward change) would show as extra rows.
    s.compare(TABLES);

    let status = s.ferry(&["status"]);
    assert!(
        status.stdout.contains("direction reverse"),
        "{}",
        status.all()
    );
    let metrics = s.control_get("/metrics");
    assert!(metrics.contains("ferry_lag_seconds"), "{metrics}");
    assert!(
        metrics.contains("ferry_direction{direction=\"reverse\"} 1"),
        "{metrics}"
    );

    // Roll back: the new database is fenced, sequences go back, the old
    // source takes writes again.
    let back = s.ferry(&[
        "rollback",
        "--fence",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(back.code, Some(0), "{}\n{}", back.all(), ferry.log());
    assert!(back.stdout.contains("cutover: done"), "{}", back.all());
    assert!(
        back.stdout.contains("old source unfenced"),
        "{}",
        back.all()
    );
    let code = ferry.wait(Duration::from_secs(60)).expect("ferry run");
    assert_eq!(code, Some(0), "ferry run exits 0 after the rollback");
    s.compare(TABLES);

    rt.block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        assert_read_only(&dst, "the new database is fenced after the rollback").await;
        assert_eq!(
            i64_of(&dst, "SELECT count(*) FROM pg_replication_slots").await,
            0,
            "the reverse slot is dropped"
        );
        // Identity and serial columns go on past what the new database used.
        let max_items = i64_of(&dst, "SELECT max(id)::int8 FROM items").await;
        let max_docs = i64_of(&dst, "SELECT max(id) FROM docs").await;
        let item: i32 = src
            .query_one("INSERT INTO items (note) VALUES ('back home') RETURNING id", &[])
            .await
            .unwrap()
            .get(0);
        let doc: i64 = src
            .query_one("INSERT INTO docs (body) VALUES ('back home') RETURNING id", &[])
            .await
            .unwrap()
            .get(0);
        assert!(i64::from(item) > max_items, "items {item} after {max_items}");
        assert!(doc > max_docs, "docs {doc} after {max_docs}");
        let rec: String = src
            .query_one(
                "SELECT cutover::text FROM ferry.runs WHERE cutover IS NOT NULL ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
        assert_eq!(rec["outcome"], "done", "{rec}");
        assert!(rec["sequences_synced"].as_u64().unwrap() >= 2, "{rec}");
        for side in [&src, &dst] {
            let how: String = side
                .query_one("SELECT direction FROM ferry.fallback", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(how, "rolled_back");
        }
    });
    // The application writes on the old source again.
    write_on(&s.source_url, 100);
    // ferry run has nothing more to do, in either direction.
    let again = s.start("run-after-rollback");
    let code = again.wait(Duration::from_secs(60)).expect("ferry run");
    let log = std::fs::read_to_string(s.logs.path().join("run-after-rollback.log")).unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("already cut over"), "{log}");
}

#[test]
fn finish_ends_the_fallback() {
    let s = setup();
    let ferry = cut_over_with_fallback(&s);
    write_on(&s.target_url, 100);
    wait_old_source_caught_up(&s);
    s.compare(TABLES);

    let rollback_refused = s.ferry(&["cutover", "--fence"]);
    assert_eq!(rollback_refused.code, Some(2), "{}", rollback_refused.all());
    assert!(
        rollback_refused.stdout.contains("ferry rollback"),
        "{}",
        rollback_refused.all()
    );

    let fin = s.ferry(&["finish"]);
    assert_eq!(fin.code, Some(0), "{}\n{}", fin.all(), ferry.log());
    assert!(fin.stdout.contains("fallback finished"), "{}", fin.all());
    let code = ferry.wait(Duration::from_secs(60)).expect("ferry run");
    assert_eq!(code, Some(0));
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        assert_eq!(
            i64_of(&dst, "SELECT count(*) FROM pg_replication_slots").await,
            0
        );
        assert_eq!(
            i64_of(
                &dst,
                "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'ferry_reverse%'"
            )
            .await,
            0
        );
        // The fence is gone from the old source; the new database stays live.
        src.execute("INSERT INTO items (note) VALUES ('unfenced')", &[])
            .await
            .unwrap();
        dst.execute("INSERT INTO items (note) VALUES ('still live')", &[])
            .await
            .unwrap();
        let how: String = dst
            .query_one("SELECT direction FROM ferry.fallback", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(how, "finished");
    });
    let st = s.status();
    assert_eq!(st["direction"], "forward", "{st}");
    let again = s.ferry(&["finish"]);
    assert_eq!(again.code, Some(2), "{}", again.all());
    assert!(
        again.stdout.contains("no fallback is open"),
        "{}",
        again.all()
    );
}

#[test]
fn with_fallback_is_refused_with_the_reason() {
    // The usual target: wal_level = replica.
    let s = Migration::new(
        PgOptions::new(),
        ferry_e2e::migration::target_options(),
        &format!("{BENCH_SCHEMA}\n{ITEMS}"),
    );
    let plan = s.ferry(&["plan"]);
    assert!(plan.stdout.contains("fallback"), "{}", plan.all());
    assert!(
        plan.stdout.contains("wal_level is 'replica'"),
        "{}",
        plan.all()
    );
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    let started = Instant::now();
    let cut = s.ferry(&["cutover", "--fence", "--with-fallback", "--max-lag", "30s"]);
    assert_eq!(cut.code, Some(2), "{}", cut.all());
    assert!(cut.stdout.contains("wal_level = logical"), "{}", cut.all());
    let unfenced = s.ferry(&["cutover", "--with-fallback", "--max-lag", "30s"]);
    assert_eq!(unfenced.code, Some(2), "{}", unfenced.all());
    assert!(
        unfenced.stdout.contains("needs --fence"),
        "{}",
        unfenced.all()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // Nothing changed: the run goes on forward, the source takes writes.
    assert!(ferry.exited().unwrap().is_none());
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        src.execute("INSERT INTO items (note) VALUES ('still the source')", &[])
            .await
            .unwrap();
    });
    let rollback = s.ferry(&["rollback", "--fence"]);
    assert_eq!(rollback.code, Some(2), "{}", rollback.all());
    assert!(
        rollback.stdout.contains("no fallback is open"),
        "{}",
        rollback.all()
    );
}

/// A rollback that stopped the reverse stream (the old source's phase is
/// `done`, the new database fenced) but died before recording its end:
/// the next `ferry run` finishes it — unfences the old source, records
/// `rolled_back` on both sides — and exits.
#[test]
fn an_unrecorded_rollback_is_finished_by_the_next_run() {
    let s = setup();
    let ferry = cut_over_with_fallback(&s);
    ferry.kill9().unwrap();
    // What the rollback had done when it died.
    s.source
        .psql(
            &s.source_db,
            "SET default_transaction_read_only = off; UPDATE ferry.pipeline SET phase = 'done'",
        )
        .unwrap();
    s.target
        .psql(
            "postgres",
            &format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                s.target_db
            ),
        )
        .unwrap();
    let again = s.start("run-again");
    let code = again.wait(Duration::from_secs(60)).expect("ferry run");
    let log = std::fs::read_to_string(s.logs.path().join("run-again.log")).unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("recording it now"), "{log}");
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        src.execute("INSERT INTO docs (body) VALUES ('unfenced')", &[])
            .await
            .unwrap();
        let how: String = src
            .query_one("SELECT direction FROM ferry.fallback", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(how, "rolled_back");
    });
}

/// `ferry finish` while no `ferry run` streams back: done directly on both
/// databases.
#[test]
fn finish_without_a_running_ferry() {
    let s = setup();
    let ferry = cut_over_with_fallback(&s);
    write_on(&s.target_url, 50);
    ferry.kill9().unwrap();
    let fin = s.ferry(&["finish"]);
    assert_eq!(fin.code, Some(0), "{}", fin.all());
    assert!(fin.stdout.contains("old source unfenced"), "{}", fin.all());
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        assert_eq!(
            i64_of(&dst, "SELECT count(*) FROM pg_replication_slots").await,
            0
        );
        // Unfenced, sequences past what the new database used.
        let max_docs = i64_of(&dst, "SELECT max(id) FROM docs").await;
        let doc: i64 = src
            .query_one(
                "INSERT INTO docs (body) VALUES ('after finish') RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(doc > max_docs, "docs {doc} after {max_docs}");
        let phase: String = src
            .query_one("SELECT phase FROM ferry.pipeline", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(phase, "done");
    });
}

/// A renamed table (`tables.rename`) streams back under its old name, and
/// its identity sequence is found there at rollback.
#[test]
fn a_renamed_table_streams_back_under_its_old_name() {
    let m = setup();
    let config = m.logs.path().join("ferry.toml");
    std::fs::write(
        &config,
        "[tables.rename]\n\"public.items\" = \"public.goods\"\n",
    )
    .unwrap();
    let s = m.arg("--config").arg(&config);
    let ferry = cut_over_with_fallback(&s);
    pgsync::runtime().block_on(async {
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        dst.batch_execute(
            "INSERT INTO goods (note) SELECT 'new ' || i FROM generate_series(1, 30) i;
             UPDATE goods SET note = 'changed' WHERE id = 3; DELETE FROM goods WHERE id = 4;",
        )
        .await
        .unwrap();
    });
    wait_old_source_caught_up(&s);
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        let old = pgsync::table_digest(&src, "items").await.unwrap();
        let new = pgsync::table_digest(&dst, "goods").await.unwrap();
        assert_eq!(old, new, "items on the old source follow goods");
        assert_eq!(old.0, 79);
    });
    let back = s.ferry(&[
        "rollback",
        "--fence",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(back.code, Some(0), "{}\n{}", back.all(), ferry.log());
    assert_eq!(ferry.wait(Duration::from_secs(60)).unwrap(), Some(0));
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let id: i32 = src
            .query_one("INSERT INTO items (note) VALUES ('home') RETURNING id", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(id, 81, "the identity continues after the new database's 80");
    });
}

/// `control.listen` on port 0: the reverse run publishes its address where
/// `ferry status` and `ferry rollback` look (the new database's state).
#[test]
fn the_reverse_run_is_found_on_a_port_zero_control_address() {
    let s = setup().env("FERRY_CONTROL_LISTEN", "127.0.0.1:0");
    let ferry = cut_over_with_fallback(&s);
    let back = s.ferry(&[
        "rollback",
        "--fence",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(back.code, Some(0), "{}\n{}", back.all(), ferry.log());
    assert_eq!(ferry.wait(Duration::from_secs(60)).unwrap(), Some(0));
}

/// A carried table without a replica identity on the target would make the
/// application's UPDATE and DELETE fail there once published for the way
/// back: the cutover with fallback is refused before anything changes.
#[test]
fn a_target_table_without_replica_identity_is_refused() {
    let s = setup();
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    s.target
        .psql(&s.target_db, "ALTER TABLE history REPLICA IDENTITY DEFAULT")
        .unwrap();
    let cut = s.ferry(&["cutover", "--fence", "--with-fallback", "--max-lag", "30s"]);
    assert_eq!(cut.code, Some(2), "{}", cut.all());
    assert!(cut.stdout.contains("history"), "{}", cut.all());
    assert!(
        cut.stdout.contains("REPLICA IDENTITY FULL"),
        "{}",
        cut.all()
    );
    assert!(ferry.exited().unwrap().is_none(), "the run goes on forward");
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        src.execute("INSERT INTO items (note) VALUES ('not fenced')", &[])
            .await
            .unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        assert_eq!(
            i64_of(
                &dst,
                "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'ferry_reverse%'"
            )
            .await,
            0,
            "nothing was published"
        );
    });
}

/// While the old source follows, `ferry status` without a running `ferry
/// run` shows the reverse stream's figures (from the old source's state)
/// and `ferry report` its lag history; then `ROLLBACK CUTOVER` typed into
/// the psql console rolls back like `ferry rollback` (a bare `ROLLBACK`,
/// as drivers send, never does).
#[test]
fn status_report_and_the_console_during_the_fallback() {
    let console_port = ferry_e2e::migration::free_port();
    let s = setup()
        .env("FERRY_CONSOLE_LISTEN", &format!("127.0.0.1:{console_port}"))
        .env("FERRY_CONSOLE_PASSWORD", "console-secret");
    let ferry = cut_over_with_fallback(&s);
    write_on(&s.target_url, 100);
    wait_old_source_caught_up(&s);
    // The reverse sampler writes its first lag sample at start.
    let samples = || {
        pgsync::runtime().block_on(async {
            let src = pgsync::connect(&s.source_url).await.unwrap();
            i64_of(&src, "SELECT count(*) FROM ferry.lag_history").await
        })
    };
    let reverse_checkpoint = || -> String {
        pgsync::runtime().block_on(async {
            let src = pgsync::connect(&s.source_url).await.unwrap();
            src.query_one("SELECT position FROM ferry.checkpoint", &[])
                .await
                .unwrap()
                .get(0)
        })
    };
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(samples() >= 1, "the reverse lag history is recorded");

    let st = s.status();
    assert_eq!(st["live"], false, "{st}");
    assert_eq!(st["direction"], "reverse", "{st}");
    assert_eq!(st["phase"], "stream", "the reverse stream's phase: {st}");
    assert_eq!(
        st["applied_position"],
        reverse_checkpoint(),
        "the reverse checkpoint, read in the old source: {st}"
    );
    let report_path = s.logs.path().join("report.html");
    let rep = s.ferry(&["report", "--output", report_path.to_str().unwrap()]);
    assert_eq!(rep.code, Some(0), "{}", rep.all());
    let html = std::fs::read_to_string(&report_path).unwrap();
    assert!(html.contains("<h2>Reverse lag (fallback)</h2>"), "{html}");
    assert!(html.contains("<svg id=\"reverse-lag-seconds\""), "{html}");

    let mut ferry = s.start("run-again");
    wait_reverse(&s, &mut ferry);
    write_on(&s.target_url, 50);
    wait_old_source_caught_up(&s);
    pgsync::runtime().block_on(async {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(console_port)
            .user("ferry")
            .password("console-secret")
            .dbname("ferry");
        let (console, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let bare = console
            .simple_query("ROLLBACK")
            .await
            .expect_err("bare ROLLBACK");
        let why = bare.as_db_error().map(|e| e.message().to_owned());
        assert!(
            why.as_deref()
                .is_some_and(|m| m.contains("ROLLBACK CUTOVER")),
            "{bare:?}"
        );
        let dry = console
            .query_one("ROLLBACK CUTOVER DRY RUN MAX LAG '30s'", &[])
            .await
            .unwrap();
        let outcome: String = dry.get("outcome");
        assert!(outcome.starts_with("dry run"), "{outcome}");
        let done = console
            .query_one("ROLLBACK CUTOVER FENCE MAX LAG '30s' TIMEOUT '120s'", &[])
            .await
            .unwrap();
        assert_eq!(done.get::<_, String>("outcome"), "done");
        let steps: String = done.get("steps");
        assert!(steps.contains("old source unfenced"), "{steps}");
    });
    let code = ferry.wait(Duration::from_secs(60)).expect("ferry run");
    assert_eq!(code, Some(0), "ferry run exits 0 after the rollback");
    s.compare(TABLES);
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        assert_read_only(&dst, "the new database is fenced after the rollback").await;
        src.execute("INSERT INTO items (note) VALUES ('back home')", &[])
            .await
            .unwrap();
        for side in [&src, &dst] {
            let how: String = side
                .query_one("SELECT direction FROM ferry.fallback", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(how, "rolled_back");
        }
    });
}
