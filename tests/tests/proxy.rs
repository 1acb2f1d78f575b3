//! The PostgreSQL-wire proxy inside `ferry run` (`[proxy]`), through the
//! real CLI: shadow reads while replication runs and writes continue (no
//! mismatch), a difference planted on the target (caught, with its
//! example, in the status, `/metrics` and the state schema), mode changes
//! recorded with who, reads served by the target, and a pgbench run that
//! keeps going through `ferry cutover --via-proxy` without a failed
//! transaction, its last writes on the target.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::migration::{Migration, free_port, target_options};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_testkit::PgOptions;

const USER: &str = "app";
const PASSWORD: &str = "proxy-secret-9";

fn with_proxy(m: Migration, port: u16, console: u16) -> Migration {
    m.env("FERRY_CONSOLE_LISTEN", &format!("127.0.0.1:{console}"))
        .env("FERRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"))
        .env("FERRY_PROXY_USER", USER)
        .env("FERRY_PROXY_PASSWORD", PASSWORD)
        .env("FERRY_PROXY_SAMPLE_RATE", "1")
        .env("FERRY_PROXY_HOLD_SECONDS", "20")
}

fn proxy_url(port: u16, db: &str) -> String {
    format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/{db}")
}

/// The proxy section of `ferry status --json`, once `done` holds.
fn wait_proxy(
    m: &Migration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = m.status();
        if done(&s["proxy"]) {
            return s["proxy"].clone();
        }
        // A mirrored read that differs counts only after the applier
        // passed the source's position: on a loaded machine with the
        // writer running that takes a while, so the bound is the
        // migration's long timeout.
        assert!(start.elapsed() < m.long(), "{what}: {}", s["proxy"]);
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn shadow_reads_report_nothing_while_correct_and_catch_a_planted_difference() {
    let port = free_port();
    let m = Migration::new(PgOptions::new(), target_options(), BENCH_SCHEMA);
    m.source
        .psql(&m.source_db, &pgsync::bench_data(5_000, 100))
        .unwrap();
    let console = free_port();
    // Many reads race the writer and are re-checked after the applier
    // passed the source's position; the default two mirror workers share
    // that wait among their pending re-checks and keep up.
    let m = with_proxy(m, port, console);
    let mut ferry = m.start("run");
    m.wait_phase(&mut ferry, "stream");
    let mut writer = Writer::start(&m.source_url, 5_000);
    writer.wait_for(50, Duration::from_secs(60)).unwrap();

    let rt = pgsync::runtime();
    let url = proxy_url(port, &m.source_db);
    // Reads through the proxy while the writer changes the same rows.
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for i in 0..300i32 {
            let aid = 1 + (i * 37) % 5_000;
            c.query("SELECT aid, abalance FROM accounts WHERE aid = $1", &[&aid])
                .await
                .unwrap();
            c.simple_query(&format!(
                "SELECT id, price FROM docs WHERE id = {} ORDER BY id",
                1 + i % 100
            ))
            .await
            .unwrap();
        }
    });
    let p = wait_proxy(&m, "every read mirrored and settled", |p| {
        p["mirrored"].as_u64().unwrap_or(0) + p["mirror_dropped"].as_u64().unwrap_or(0) >= 600
    });
    assert_eq!(
        p["mismatches"], 0,
        "no mismatch while replication is correct: {p}"
    );
    assert_eq!(p["target_errors"], 0, "{p}");
    assert!(p["mirrored"].as_u64().unwrap() >= 300, "{p}");
    let queries = p["queries"].as_array().unwrap();
    let accounts = queries
        .iter()
        .find(|q| q["query"] == "select aid , abalance from accounts where aid = ?")
        .unwrap_or_else(|| panic!("fingerprint of the accounts read: {p}"));
    assert_eq!(accounts["calls"], 300, "{accounts}");
    assert!(
        accounts["source_p50_ms"].as_f64().is_some()
            && accounts["target_p99_ms"].as_f64().is_some(),
        "{accounts}"
    );

    // A row only the target has.
    m.target
        .psql(
            &m.target_db,
            "INSERT INTO docs (id, body) VALUES (999999, 'planted')",
        )
        .unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let rows = c
                .query("SELECT id, body FROM docs WHERE id = $1", &[&999_999i64])
                .await
                .unwrap();
            assert!(rows.is_empty(), "the source answers");
        }
    });
    let p = wait_proxy(&m, "the planted difference is reported", |p| {
        p["mismatches"].as_u64().unwrap_or(0) >= 3
    });
    let planted = p["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["query"] == "select id , body from docs where id = ?")
        .unwrap_or_else(|| panic!("{p}"))
        .clone();
    assert_eq!(planted["mismatches"], 3, "{planted}");
    let example = planted["example"].as_str().unwrap();
    assert!(
        example.contains("0 only on the source, 1 only on the target"),
        "{example}"
    );
    assert!(
        !example.contains("planted"),
        "no values in the example: {example}"
    );
    let accounts_after = p["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["query"] == "select aid , abalance from accounts where aid = ?")
        .unwrap()
        .clone();
    assert_eq!(accounts_after["mismatches"], 0);
    let metrics = m.control_get("/metrics");
    assert!(
        metrics.contains("ferry_proxy_mismatches_total 3"),
        "{metrics}"
    );
    // Stored in the state schema (flushed every 5 s).
    let start = Instant::now();
    loop {
        let stored = m.target_i64(
            "SELECT coalesce(sum(mismatches), 0)::bigint FROM ferry.shadow_queries WHERE query = 'select id , body from docs where id = ?'",
        );
        if stored == Some(3) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stored: {stored:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Mode change from the CLI, recorded with who; reads then come from
    // the target (which has the planted row), writes still go to the source.
    let ran = m.ferry(&["proxy", "mode", "reads-on-target", "--by", "tester"]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stdout.contains("reads-on-target (by tester"),
        "{}",
        ran.all()
    );
    let p = wait_proxy(&m, "mode shown", |p| p["mode"] == "reads-on-target");
    assert_eq!(
        p["mode_changes"].as_array().unwrap().last().unwrap()["by"],
        "tester"
    );
    assert_eq!(
        m.target_i64("SELECT count(*) FROM ferry.proxy_events WHERE kind = 'mode' AND mode = 'reads-on-target' AND by = 'tester'"),
        Some(1)
    );
    writer.stop().unwrap();
    m.wait_caught_up();
    rt.block_on(async {
        let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let rows = c
            .query("SELECT id, body FROM docs WHERE id = $1", &[&999_999i64])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "served by the target");
        let tx = c.transaction().await.unwrap();
        let inside = tx
            .query("SELECT id FROM docs WHERE id = $1", &[&999_999i64])
            .await
            .unwrap();
        assert!(inside.is_empty(), "inside a transaction: the source");
        tx.execute(
            "INSERT INTO docs (body) VALUES ('written through the proxy')",
            &[],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    });
    let on_source: String = m
        .source
        .psql(
            &m.source_db,
            "SELECT count(*) FROM docs WHERE body = 'written through the proxy'",
        )
        .unwrap();
    assert!(on_source.contains('1'), "{on_source}");
    let p = wait_proxy(&m, "target reads counted", |p| {
        p["target_reads"].as_u64().unwrap_or(0) >= 1
    });
    assert!(p["target_reads"].as_u64().unwrap() >= 1, "{p}");
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}

/// A migration of a `pgbench -i -s 1` source (history with REPLICA
/// IDENTITY FULL) with the proxy on `port`; the server binaries' directory.
fn pgbench_migration(port: u16) -> (Migration, std::path::PathBuf) {
    let (m, bin) = Migration::pgbench(target_options());
    let m = with_proxy(m, port, free_port());
    (m, bin)
}

#[test]
fn pgbench_keeps_running_through_a_cutover_via_the_proxy() {
    let port = free_port();
    let (m, bin) = pgbench_migration(port);
    let mut ferry = m.start("run");
    m.wait_phase(&mut ferry, "stream");

    // ~200 tps through the proxy, prepared statements, for 25 s.
    let bench = Command::new(bin.join("pgbench"))
        .args([
            "-n", "-c", "4", "-j", "2", "-T", "25", "-R", "200", "-M", "prepared", "-P", "5",
        ])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .arg(&m.source_db)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let mut cut = m.cmd();
    cut.args([
        "cutover",
        "--via-proxy",
        "--max-lag",
        "30s",
        "--timeout",
        "60s",
    ]);
    let cut = ferry_e2e::run(&mut cut).unwrap();
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry.log());
    assert!(cut.stdout.contains("cutover: done"), "{}", cut.all());
    let source_history_at_cutover = m
        .source
        .psql(&m.source_db, "SELECT count(*) FROM pgbench_history")
        .unwrap();
    let out = bench.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "pgbench through the cutover: {report}\n{}",
        ferry.log()
    );
    assert!(
        report.contains("number of failed transactions: 0"),
        "{report}"
    );
    // The source took no write after the cutover; the target took the rest.
    let source_history = m
        .source
        .psql(&m.source_db, "SELECT count(*) FROM pgbench_history")
        .unwrap();
    assert_eq!(source_history, source_history_at_cutover);
    let source_n: i64 = source_history
        .trim()
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap();
    let target_n = m
        .target_i64("SELECT count(*) FROM pgbench_history")
        .unwrap();
    let processed: i64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        target_n > source_n,
        "writes after the cutover are on the target: {target_n} vs {source_n}"
    );
    assert_eq!(
        target_n, processed,
        "every transaction pgbench counted is on the target once"
    );
    // Balances agree with the history on the target.
    assert_eq!(
        m.target_i64("SELECT (SELECT sum(abalance) FROM pgbench_accounts) - (SELECT sum(delta) FROM pgbench_history)"),
        Some(0)
    );
    let rec: serde_json::Value = serde_json::from_str(
        &m.target_query(async |c| {
            c.query_one("SELECT cutover::text FROM ferry.runs WHERE cutover IS NOT NULL ORDER BY id DESC LIMIT 1", &[])
                .await
                .ok()
                .map(|r| r.get::<_, String>(0))
        })
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rec["outcome"], "done", "{rec}");
    let freeze = rec["write_freeze_seconds"].as_f64().unwrap();
    assert!(freeze > 0.0 && freeze < 20.0, "{rec}");
    #[allow(clippy::print_stderr)]
    {
        eprintln!("client-side write freeze of the proxied cutover: {freeze:.3}s");
    }
    assert_eq!(
        m.target_i64(
            "SELECT count(*) FROM ferry.proxy_events WHERE kind = 'cutover' AND mode = 'target'"
        ),
        Some(1)
    );
    // ferry run keeps serving proxied clients until it is stopped.
    assert!(ferry.exited().unwrap().is_none(), "{}", ferry.log());
    let log = ferry.log();
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn a_failed_cutover_via_the_proxy_releases_traffic_to_the_source() {
    let port = free_port();
    let (m, bin) = pgbench_migration(port);
    let mut ferry = m.start("run");
    m.wait_phase(&mut ferry, "stream");
    // A row only the target has: the cutover's row counts differ.
    m.target
        .psql(
            &m.target_db,
            "INSERT INTO pgbench_branches VALUES (999, 0, 'planted')",
        )
        .unwrap();
    let bench = Command::new(bin.join("pgbench"))
        .args([
            "-n", "-c", "4", "-j", "2", "-T", "15", "-R", "200", "-M", "extended",
        ])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .arg(&m.source_db)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let mut cut = m.cmd();
    cut.args([
        "cutover",
        "--via-proxy",
        "--max-lag",
        "30s",
        "--timeout",
        "60s",
    ]);
    let cut = ferry_e2e::run(&mut cut).unwrap();
    assert_eq!(cut.code, Some(2), "{}", cut.all());
    assert!(cut.stdout.contains("row counts differ"), "{}", cut.all());
    let after_failure = m
        .source
        .psql(&m.source_db, "SELECT count(*) FROM pgbench_history")
        .unwrap();
    let out = bench.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("number of failed transactions: 0"),
        "{report}"
    );
    // Traffic went on to the source, and the proxy is still in mode source.
    let later = m
        .source
        .psql(&m.source_db, "SELECT count(*) FROM pgbench_history")
        .unwrap();
    let n = |s: &str| -> i64 {
        s.trim()
            .lines()
            .find_map(|l| l.trim().parse().ok())
            .unwrap()
    };
    assert!(n(&later) > n(&after_failure), "{later} vs {after_failure}");
    let s = m.status();
    assert_eq!(s["proxy"]["mode"], "source", "{}", s["proxy"]);
    assert!(
        ferry.exited().unwrap().is_none(),
        "replication continues: {}",
        ferry.log()
    );
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}
