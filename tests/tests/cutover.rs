//! Lag, pause/resume, the control API and the operator-triggered cutover,
//! through the CLI against real servers.

use std::time::{Duration, Instant};

use ferry_e2e::Background;
use ferry_e2e::migration::{LONG, Migration, target_options};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_testkit::PgOptions;

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];

/// A source with the bench schema, `accounts` and `docs` rows, and an empty target.
fn bench(accounts: u32, docs: u32) -> Migration {
    let m = Migration::new(PgOptions::new(), target_options(), BENCH_SCHEMA);
    m.source
        .psql(&m.source_db, &pgsync::bench_data(accounts, docs))
        .unwrap();
    m
}

fn setup() -> Migration {
    bench(20_000, 500)
}

fn wait_lag(s: &Migration, pred: impl Fn(f64) -> bool, what: &str) -> f64 {
    let start = Instant::now();
    loop {
        let v = s.status();
        let lag = v["lag"]["seconds"].as_f64().unwrap();
        if pred(lag) {
            return lag;
        }
        assert!(start.elapsed() < s.long(), "lag never became {what}: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn fenced_cutover_under_concurrent_writes() {
    let s = setup();
    let mut writer = Writer::start(&s.source_url, 20_000);
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    writer.wait_for(writer.committed() + 200, LONG).unwrap();

    let dry = s.ferry(&["cutover", "--dry-run", "--max-lag", "30s"]);
    assert_eq!(dry.code, Some(0), "{}", dry.all());
    assert!(dry.stdout.contains("dry run"), "{}", dry.all());
    assert!(
        ferry.exited().unwrap().is_none(),
        "a dry run changes nothing"
    );

    let cut = s.fenced_cutover(ferry, "30s");
    assert!(cut.stdout.contains("write freeze:"), "{}", cut.all());
    let _ = writer.stop();

    let rt = pgsync::runtime();
    rt.block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        // Fenced: the source takes no writes, and everything is on the target.
        pgsync::compare_tables(&src, &dst, BENCH_TABLES).await.unwrap();
        let slots: i64 = src.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap().get(0);
        assert_eq!(slots, 0, "slot dropped");
        // Sequences were synced: the first insert on the target does not collide.
        let max_src: i64 = src.query_one("SELECT max(id) FROM docs", &[]).await.unwrap().get(0);
        let new_id: i64 = dst
            .query_one("INSERT INTO docs (body) VALUES ('after cutover') RETURNING id", &[])
            .await
            .unwrap()
            .get(0);
        assert!(new_id > max_src, "target sequence {new_id} must be past the source's {max_src}");
        let rec: String = dst
            .query_one("SELECT cutover::text FROM ferry.runs WHERE cutover IS NOT NULL ORDER BY id DESC LIMIT 1", &[])
            .await
            .unwrap()
            .get(0);
        let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
        assert_eq!(rec["outcome"], "done");
        assert_eq!(rec["fenced"], true);
        assert!(rec["write_freeze_seconds"].as_f64().unwrap() > 0.0);
        assert!(rec["validation"].as_array().unwrap().iter().all(|c| c["ok"] == true));
        let phase: String = dst.query_one("SELECT phase FROM ferry.pipeline", &[]).await.unwrap().get(0);
        assert_eq!(phase, "done");
    });
}

/// The sum of the samples of metric `name` (every label) in a `/metrics`
/// response.
fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Once the writer's `transactions` are applied, `/metrics` counts their
/// row changes as applied (more than the transactions: most write several
/// rows), at least as many as received (a reconnect may receive some
/// again), and the batches that applied them with their durations.
fn wait_change_metrics(s: &Migration, transactions: u64) {
    let transactions = transactions as f64;
    let start = Instant::now();
    loop {
        let m = s.control_get("/metrics");
        let received = metric_sum(&m, "ferry_received_changes_total");
        let applied = metric_sum(&m, "ferry_applied_changes_total");
        let accounts = metric_sum(&m, "ferry_applied_changes_total{table=\"public.accounts\"}");
        let batches = metric_sum(&m, "ferry_apply_batches_total");
        let timed = metric_sum(&m, "ferry_apply_batch_seconds_count");
        if applied > transactions
            && received >= applied
            && accounts > 0.0
            && batches > 0.0
            && timed == batches
        {
            return;
        }
        assert!(
            start.elapsed() < s.long(),
            "{transactions} transactions: received {received} and applied {applied} changes (accounts {accounts}) in {batches} batches ({timed} timed):\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn lag_pause_backlog_refusals_and_metrics() {
    let s = setup();
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");

    // Idle and caught up: the heartbeat keeps the lag at zero.
    wait_lag(&s, |l| l == 0.0, "zero on an idle source");
    let metrics = s.control_get("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for name in [
        "ferry_lag_seconds",
        "ferry_lag_bytes",
        "ferry_apply_batch_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    for line in metrics
        .split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN",
            "bad sample line {line:?}"
        );
    }

    // Paused with writes: the lag grows and a cutover above the bound is refused.
    assert_eq!(s.ferry(&["pause"]).code, Some(0));
    let mut writer = Writer::start(&s.source_url, 20_000);
    writer.wait_for(300, LONG).unwrap();
    let first = wait_lag(&s, |l| l >= 1.0, "at least 1s while paused");
    let later = wait_lag(&s, |l| l > first, "growing while paused");
    assert!(later > first);
    let refused = s.ferry(&["cutover", "--max-lag", "0.5s"]);
    assert_eq!(refused.code, Some(2), "{}", refused.all());
    assert!(
        refused.stdout.contains("above the bound"),
        "{}",
        refused.all()
    );

    // A second cutover while one is draining is refused; the first times out
    // (still paused), unfences the source, and replication continues.
    let mut first_cut = s.cmd();
    first_cut.args([
        "cutover",
        "--fence",
        "--max-lag",
        "1000s",
        "--timeout",
        "4s",
    ]);
    let first_cut = Background::spawn(first_cut, &s.logs.path().join("cut1.log")).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let second = s.ferry(&["cutover", "--max-lag", "1000s"]);
    assert_eq!(second.code, Some(2), "{}", second.all());
    assert!(
        second.stdout.contains("already running"),
        "{}",
        second.all()
    );
    let code = first_cut.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(code, Some(2), "the timed-out cutover fails");
    let writer_transactions = writer.committed();
    let _ = writer.stop();

    // Resume: the backlog drains and lag returns to zero.
    assert_eq!(s.ferry(&["resume"]).code, Some(0));
    wait_lag(&s, |l| l == 0.0, "zero after resume");
    // The writer's changes are counted as received and as applied.
    wait_change_metrics(&s, writer_transactions);

    // A backlog of many small transactions at the moment of cutover: pause,
    // let 500 transactions pile up, resume and cut over at once; the cutover
    // waits for all of them (the comparison below proves it).
    assert_eq!(s.ferry(&["pause"]).code, Some(0));
    let mut writer = Writer::start(&s.source_url, 20_000);
    writer.wait_for(500, LONG).unwrap();
    let backlog_lag = wait_lag(&s, |l| l > 0.0, "above zero with a backlog");
    assert_eq!(s.ferry(&["resume"]).code, Some(0));
    let cut = s.fenced_cutover(ferry, "1000s");
    let rec: serde_json::Value =
        serde_json::from_str(cut.stdout.split("write freeze:").next().unwrap()).unwrap();
    assert!(
        rec["lag_seconds_at_start"].as_f64().unwrap() > 0.0,
        "cut over with a backlog (lag was {backlog_lag}s): {rec}"
    );
    let _ = writer.stop();
    s.compare(BENCH_TABLES);
    // After the run: status falls back to the state in the target.
    let ran = s.ferry(&["status"]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(ran.stdout.contains("not running"), "{}", ran.all());
}

#[test]
fn cutover_refused_while_loading() {
    let s = bench(1_500_000, 100)
        .without_env("FERRY_APPLY_BATCH_MS")
        .env("FERRY_LOAD_PARALLELISM", "1")
        .env("FERRY_LOAD_CHUNK_ROWS", "100000")
        .poll(Duration::from_millis(100));
    // The run logs at the default level here.
    let mut ferry = s.start_with("run", &[("FERRY_LOG", "warn")]);
    s.wait_phase(&mut ferry, "load");
    let ran = s.ferry(&["cutover", "--max-lag", "1000s"]);
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(ran.stdout.contains("phase is load"), "{}", ran.all());
}

#[test]
fn cleanup_removes_slot_publication_and_state() {
    let s = setup();
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    let refused = s.ferry(&["cleanup"]);
    assert_eq!(
        refused.code,
        Some(2),
        "refused while running: {}",
        refused.all()
    );
    assert_eq!(
        ferry
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
            .unwrap(),
        Some(0)
    );
    let ran = s.ferry(&["cleanup", "--state"]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        let slots: i64 = src
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
        let pubs: i64 = src
            .query_one("SELECT count(*) FROM pg_publication", &[])
            .await
            .unwrap()
            .get(0);
        let schema: i64 = dst
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!((slots, pubs, schema), (0, 0, 0));
        // Table data is never touched.
        let (n, _) = pgsync::table_digest(&dst, "accounts").await.unwrap();
        assert!(n >= 20_000);
    });
}

/// Paused under writes for longer than three `wal_sender_timeout`s of 2 s:
/// the applier stops reading, the channel fills and the reader waits on it
/// with the same walsender alive (no reconnect, no replication timeout on
/// the server); resumed, the target ends equal to the source.
#[test]
fn pause_outlives_a_short_wal_sender_timeout() {
    let s = Migration::new(
        PgOptions::new().setting("wal_sender_timeout", "2s"),
        target_options(),
        BENCH_SCHEMA,
    );
    s.source
        .psql(&s.source_db, &pgsync::bench_data(20_000, 500))
        .unwrap();
    // The walsender streaming ferry's slot (not any walsender: the one of
    // the load's snapshot may still be exiting).
    let walsenders = || {
        pgsync::runtime().block_on(async {
            let src = pgsync::connect(&s.source_url).await.unwrap();
            src.query(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'ferry' AND active_pid IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .collect::<Vec<_>>()
        })
    };
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    let before = walsenders();
    assert_eq!(
        before.len(),
        1,
        "one walsender streams the slot: {before:?}"
    );

    assert_eq!(s.ferry(&["pause"]).code, Some(0));
    let mut writer = Writer::start(&s.source_url, 20_000);
    // Far more events than the channel and the applier's queue hold.
    writer.wait_for(2_000, LONG).unwrap();
    // Writes go on while paused: this sleep is the behaviour under test.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(s.status()["paused"], true);
    assert_eq!(walsenders(), before, "the walsender was replaced");
    let log = ferry.log();
    assert!(!log.contains("reconnect"), "ferry reconnected:\n{log}");
    let server_log = s.source.log_contents();
    assert!(!server_log.contains("replication timeout"), "{server_log}");

    assert_eq!(s.ferry(&["resume"]).code, Some(0));
    let committed = writer.stop().expect("writer");
    assert!(committed >= 2_000);
    s.compare_caught_up(BENCH_TABLES);
    assert_eq!(walsenders(), before, "the walsender was replaced");
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}
