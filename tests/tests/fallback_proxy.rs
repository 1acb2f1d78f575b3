//! The way back through the proxy, through the real CLI: pgbench keeps
//! running through the proxy across `ferry cutover --with-fallback
//! --via-proxy --fence` (clients move to the new database, the old source
//! is fenced once they have, and follows in reverse) and `ferry rollback
//! --via-proxy --fence` (clients move back to the old source, the new
//! database is fenced), without a failed transaction; every transaction
//! pgbench counted is on the old source afterwards, exactly once.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_e2e::Background;
use ferry_e2e::migration::{Migration, free_port};
use ferry_e2e::pgsync;
use ferry_testkit::PgOptions;

const USER: &str = "app";
const PASSWORD: &str = "proxy-secret-17";

/// A `pgbench -i -s 1` source with the proxy on `port`, the target
/// allowing logical replication; the server binaries' directory.
fn setup(port: u16) -> (Migration, std::path::PathBuf) {
    let (m, bin) = Migration::pgbench(PgOptions::new());
    let m = m
        .env("FERRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"))
        .env("FERRY_PROXY_USER", USER)
        .env("FERRY_PROXY_PASSWORD", PASSWORD)
        .env("FERRY_PROXY_SAMPLE_RATE", "0")
        .env("FERRY_PROXY_HOLD_SECONDS", "20");
    (m, bin)
}

/// tpcb-like pgbench through the proxy for `seconds` at ~100 tps.
fn pgbench(bin: &std::path::Path, port: u16, db: &str, seconds: u32) -> Child {
    Command::new(bin.join("pgbench"))
        .args(["-n", "-c", "4", "-j", "2", "-R", "100", "-M", "prepared"])
        .args(["-T", &seconds.to_string()])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .arg(db)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for pgbench; its report must show no failed transaction. Returns
/// the transactions it processed.
fn processed(bench: Child, ferry: &Background) -> i64 {
    let out = bench.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench: {report}\n{}", ferry.log());
    assert!(
        report.contains("number of failed transactions: 0"),
        "{report}"
    );
    report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{report}"))
}

fn count(url: &str, sql: &str) -> i64 {
    pgsync::runtime().block_on(async {
        let c = pgsync::connect(url).await.unwrap();
        c.query_one(sql, &[]).await.unwrap().get(0)
    })
}

/// An application session's INSERT on `url` fails as read-only (25006).
fn assert_read_only(url: &str, what: &str) {
    pgsync::runtime().block_on(async {
        let c = pgsync::connect(url).await.unwrap();
        let err = c
            .execute(
                "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 0)",
                &[],
            )
            .await
            .expect_err(what);
        assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{what}: {err}");
    });
}

/// The last cutover record in the state schema of `url`.
fn last_record(url: &str) -> serde_json::Value {
    let text: String = pgsync::runtime().block_on(async {
        let c = pgsync::connect(url).await.unwrap();
        c.query_one(
            "SELECT cutover::text FROM ferry.runs WHERE cutover IS NOT NULL ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    });
    serde_json::from_str(&text).unwrap()
}

#[test]
fn pgbench_runs_through_a_cutover_with_fallback_and_a_rollback_via_the_proxy() {
    let port = free_port();
    let (m, bin) = setup(port);
    let mut ferry = m.start("run");
    m.wait_phase(&mut ferry, "stream");
    // Published for the way back: a keyless table needs its identity there.
    m.target
        .psql(
            &m.target_db,
            "ALTER TABLE pgbench_history REPLICA IDENTITY FULL",
        )
        .unwrap();

    // Forward: pgbench through the proxy, cut over with fallback mid-run.
    let bench = pgbench(&bin, port, &m.source_db, 30);
    std::thread::sleep(Duration::from_secs(5));
    let cut = m.ferry(&[
        "cutover",
        "--with-fallback",
        "--via-proxy",
        "--fence",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry.log());
    assert!(cut.stdout.contains("cutover: done"), "{}", cut.all());
    assert!(cut.stdout.contains("opened the way back"), "{}", cut.all());
    assert!(
        cut.stdout
            .contains("moved every proxied session to the target"),
        "{}",
        cut.all()
    );
    assert!(
        cut.stdout
            .contains("fenced the source once the proxy had moved every session"),
        "{}",
        cut.all()
    );
    let mut bench = Some(bench);
    assert!(
        bench.as_mut().unwrap().try_wait().unwrap().is_none(),
        "pgbench still runs after the cutover: the test spans it"
    );
    let forward = processed(bench.take().unwrap(), &ferry);
    m.wait_until(&mut ferry, "ferry never streamed in reverse", || {
        let s = m.status();
        s["live"] == true && s["direction"] == "reverse" && s["phase"] == "stream"
    });
    let s = m.status();
    assert_eq!(s["proxy"]["mode"], "target", "{}", s["proxy"]);
    assert_read_only(&m.source_url, "the old source is fenced after the switch");
    let on_new = count(&m.target_url, "SELECT count(*) FROM pgbench_history");
    assert_eq!(
        on_new, forward,
        "every forward transaction is on the new database"
    );

    // Back: pgbench through the proxy (on the new database), roll back mid-run.
    let bench = pgbench(&bin, port, &m.source_db, 30);
    std::thread::sleep(Duration::from_secs(5));
    let back = m.ferry(&[
        "rollback",
        "--via-proxy",
        "--fence",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(back.code, Some(0), "{}\n{}", back.all(), ferry.log());
    assert!(back.stdout.contains("cutover: done"), "{}", back.all());
    assert!(
        back.stdout
            .contains("moved every proxied session to the source"),
        "{}",
        back.all()
    );
    assert!(
        back.stdout.contains("old source unfenced"),
        "{}",
        back.all()
    );
    let mut bench = Some(bench);
    assert!(
        bench.as_mut().unwrap().try_wait().unwrap().is_none(),
        "pgbench still runs after the rollback: the test spans it"
    );
    let backward = processed(bench.take().unwrap(), &ferry);

    // Every transaction pgbench counted is on the old source, once: the
    // last ones written there directly, the ones before streamed back.
    let on_old = count(&m.source_url, "SELECT count(*) FROM pgbench_history");
    assert_eq!(on_old, forward + backward, "history on the old source");
    assert_eq!(
        count(
            &m.source_url,
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) - (SELECT coalesce(sum(delta), 0) FROM pgbench_history)"
        ),
        0,
        "balances agree with the history on the old source"
    );
    let on_new_after = count(&m.target_url, "SELECT count(*) FROM pgbench_history");
    assert!(
        on_new_after > forward && on_new_after < forward + backward,
        "the new database took writes until the rollback only: {on_new_after} of {forward}+{backward}"
    );
    assert_read_only(
        &m.target_url,
        "the new database is fenced after the switch back",
    );
    let rec = last_record(&m.source_url);
    assert_eq!(rec["outcome"], "done", "{rec}");
    assert_eq!(rec["fenced"], true, "{rec}");
    let freeze = rec["write_freeze_seconds"].as_f64().unwrap();
    assert!(freeze > 0.0 && freeze < 20.0, "{rec}");
    #[allow(clippy::print_stderr)]
    {
        let fwd = last_record(&m.target_url)["write_freeze_seconds"].clone();
        eprintln!("proxy hold: cutover with fallback {fwd}s, rollback {freeze:.3}s");
    }
    assert_eq!(
        m.target_i64(
            "SELECT count(*) FROM ferry.proxy_events WHERE (kind, mode) IN (('cutover', 'target'), ('rollback', 'rolled-back'))"
        ),
        Some(2)
    );
    // ferry run keeps serving the proxied clients, now on the old source.
    assert!(ferry.exited().unwrap().is_none(), "{}", ferry.log());
    let proxied = format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/{}",
        m.source_db
    );
    pgsync::runtime().block_on(async {
        let (c, conn) = tokio_postgres::connect(&proxied, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.execute(
            "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 0)",
            &[],
        )
        .await
        .unwrap();
    });
    assert_eq!(
        count(&m.source_url, "SELECT count(*) FROM pgbench_history"),
        forward + backward + 1,
        "a new proxied session writes on the old source"
    );
    let log = ferry.log();
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0), "{log}");
}
