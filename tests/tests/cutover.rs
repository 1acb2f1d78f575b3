//! Lag, pause/resume, the control API and the operator-triggered cutover,
//! through the CLI against real servers.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_e2e::{Background, Ran, ferry, run};
use ferry_testkit::{PgOptions, PgServer};

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];
const LONG: Duration = Duration::from_secs(180);

struct Setup {
    _source: PgServer,
    _target: PgServer,
    source_url: String,
    target_url: String,
    control: String,
    logs: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn setup() -> Setup {
    let source = PgServer::start(PgOptions::new()).expect("source");
    let target = PgServer::start(PgOptions::new().wal_level("replica")).expect("target");
    let sdb = source.create_database("src").unwrap();
    let tdb = target.create_database("dst").unwrap();
    source.psql(&sdb, BENCH_SCHEMA).unwrap();
    source.psql(&sdb, &pgsync::bench_data(20_000, 500)).unwrap();
    Setup {
        source_url: source.url(&sdb),
        target_url: target.url(&tdb),
        _source: source,
        _target: target,
        control: format!("127.0.0.1:{}", free_port()),
        logs: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn cmd(&self) -> std::process::Command {
        let mut cmd = ferry(&self.source_url, &self.target_url).unwrap();
        cmd.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", &self.control)
            .env("FERRY_APPLY_BATCH_MS", "100");
        cmd
    }

    fn start(&self) -> Background {
        let mut cmd = self.cmd();
        cmd.env("FERRY_LOG", "info").arg("run");
        Background::spawn(cmd, &self.logs.path().join("run.log")).unwrap()
    }

    fn ferry(&self, args: &[&str]) -> Ran {
        run(self.cmd().args(args)).unwrap()
    }

    fn status(&self) -> serde_json::Value {
        let ran = self.ferry(&["status", "--json"]);
        assert_eq!(ran.code, Some(0), "{}", ran.all());
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout))
    }

    /// Wait until the live status says `phase` (the pipeline reached it).
    fn wait_phase(&self, ferry: &mut Background, phase: &str) {
        let start = Instant::now();
        loop {
            if let Some(code) = ferry.exited().unwrap() {
                panic!("ferry exited with {code:?}:\n{}", ferry.log());
            }
            let ran = self.ferry(&["status", "--json"]);
            if ran.code == Some(0) {
                let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
                if v["live"] == true && v["phase"] == phase {
                    return;
                }
            }
            assert!(
                start.elapsed() < LONG,
                "never reached {phase}:\n{}",
                ferry.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_lag(&self, pred: impl Fn(f64) -> bool, what: &str) -> f64 {
        let start = Instant::now();
        loop {
            let v = self.status();
            let lag = v["lag"]["seconds"].as_f64().unwrap();
            if pred(lag) {
                return lag;
            }
            assert!(start.elapsed() < LONG, "lag never became {what}: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn fenced_cutover_under_concurrent_writes() {
    let s = setup();
    let mut writer = Writer::start(&s.source_url, 20_000);
    let mut ferry = s.start();
    s.wait_phase(&mut ferry, "stream");
    writer.wait_for(writer.committed() + 200, LONG).unwrap();

    let dry = s.ferry(&["cutover", "--dry-run", "--max-lag", "30s"]);
    assert_eq!(dry.code, Some(0), "{}", dry.all());
    assert!(dry.stdout.contains("dry run"), "{}", dry.all());
    assert!(
        ferry.exited().unwrap().is_none(),
        "a dry run changes nothing"
    );

    let cut = s.ferry(&[
        "cutover",
        "--fence",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry.log());
    assert!(cut.stdout.contains("cutover: done"), "{}", cut.all());
    assert!(cut.stdout.contains("write freeze:"), "{}", cut.all());
    let code = ferry.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(code, Some(0), "ferry run exits 0 after cutover");
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

#[test]
fn lag_pause_backlog_refusals_and_metrics() {
    let s = setup();
    let mut ferry = s.start();
    s.wait_phase(&mut ferry, "stream");

    // Idle and caught up: the heartbeat keeps the lag at zero.
    s.wait_lag(|l| l == 0.0, "zero on an idle source");
    let metrics = http_get(&s.control, "/metrics");
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
    let first = s.wait_lag(|l| l >= 1.0, "at least 1s while paused");
    let later = s.wait_lag(|l| l > first, "growing while paused");
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
    let _ = writer.stop();

    // Resume: the backlog drains and lag returns to zero.
    assert_eq!(s.ferry(&["resume"]).code, Some(0));
    s.wait_lag(|l| l == 0.0, "zero after resume");

    // A backlog of many small transactions at the moment of cutover: pause,
    // let 500 transactions pile up, resume and cut over at once; the cutover
    // waits for all of them (the comparison below proves it).
    assert_eq!(s.ferry(&["pause"]).code, Some(0));
    let mut writer = Writer::start(&s.source_url, 20_000);
    writer.wait_for(500, LONG).unwrap();
    let backlog_lag = s.wait_lag(|l| l > 0.0, "above zero with a backlog");
    assert_eq!(s.ferry(&["resume"]).code, Some(0));
    let cut = s.ferry(&[
        "cutover",
        "--fence",
        "--max-lag",
        "1000s",
        "--timeout",
        "120s",
    ]);
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry.log());
    let rec: serde_json::Value =
        serde_json::from_str(cut.stdout.split("write freeze:").next().unwrap()).unwrap();
    assert!(
        rec["lag_seconds_at_start"].as_f64().unwrap() > 0.0,
        "cut over with a backlog (lag was {backlog_lag}s): {rec}"
    );
    let _ = writer.stop();
    assert_eq!(ferry.wait(Duration::from_secs(60)).unwrap(), Some(0));
    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        pgsync::compare_tables(&src, &dst, BENCH_TABLES)
            .await
            .unwrap();
    });
    // After the run: status falls back to the state in the target.
    let ran = s.ferry(&["status"]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(ran.stdout.contains("not running"), "{}", ran.all());
}

#[test]
fn cutover_refused_while_loading() {
    let source = PgServer::start(PgOptions::new()).unwrap();
    let target = PgServer::start(PgOptions::new().wal_level("replica")).unwrap();
    let sdb = source.create_database("src").unwrap();
    let tdb = target.create_database("dst").unwrap();
    source.psql(&sdb, BENCH_SCHEMA).unwrap();
    source
        .psql(&sdb, &pgsync::bench_data(1_500_000, 100))
        .unwrap();
    let control = format!("127.0.0.1:{}", free_port());
    let logs = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        let mut c = ferry(&source.url(&sdb), &target.url(&tdb)).unwrap();
        c.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", &control)
            .env("FERRY_LOAD_PARALLELISM", "1")
            .env("FERRY_LOAD_CHUNK_ROWS", "100000")
            .args(args);
        c
    };
    let mut ferry = Background::spawn(cmd(&["run"]), &logs.path().join("run.log")).unwrap();
    let start = Instant::now();
    loop {
        let ran = run(&mut cmd(&["status", "--json"])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
        if v["live"] == true && v["phase"] == "load" {
            break;
        }
        assert!(ferry.exited().unwrap().is_none(), "{}", ferry.log());
        assert!(start.elapsed() < LONG, "never saw the load phase");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ran = run(&mut cmd(&["cutover", "--max-lag", "1000s"])).unwrap();
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(ran.stdout.contains("phase is load"), "{}", ran.all());
}

#[test]
fn cleanup_removes_slot_publication_and_state() {
    let s = setup();
    let mut ferry = s.start();
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
