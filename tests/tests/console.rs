//! The psql admin console of a real `ferry run` (PostgreSQL → PostgreSQL):
//! status, tables, lag history, pause and resume, and a fenced cutover
//! typed into the console, answered from the same status model as the
//! control API.

use std::time::{Duration, Instant};

use ferry_e2e::migration::{LONG, Migration, free_port, target_options};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_testkit::PgOptions;
use tokio_postgres::NoTls;

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];

fn setup() -> (Migration, u16) {
    let port = free_port();
    let m = Migration::new(PgOptions::new(), target_options(), BENCH_SCHEMA)
        .env("FERRY_CONSOLE_LISTEN", &format!("127.0.0.1:{port}"))
        .env("FERRY_CONSOLE_PASSWORD", "console-secret");
    m.source
        .psql(&m.source_db, &pgsync::bench_data(5_000, 200))
        .unwrap();
    (m, port)
}

async fn console(
    port: u16,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("ferry")
        .password(password)
        .dbname("ferry");
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[test]
fn the_console_drives_a_live_migration_to_a_fenced_cutover() {
    let (s, port) = setup();
    let mut writer = Writer::start(&s.source_url, 5_000);
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    writer.wait_for(writer.committed() + 100, LONG).unwrap();
    let log = ferry.log();
    assert!(
        log.contains("console listening"),
        "the run logs where its console listens:\n{log}"
    );
    assert!(
        !log.contains("console-secret"),
        "the password never reaches the log"
    );

    let rt = pgsync::runtime();
    rt.block_on(async {
        let wrong = console(port, "guess").await;
        assert_eq!(
            wrong
                .err()
                .and_then(|e| e.as_db_error().map(|d| d.code().code().to_owned())),
            Some("28P01".to_owned()),
            "a wrong password is refused"
        );
        let c = console(port, "console-secret")
            .await
            .expect("console login");

        let status = c.query_one("SHOW STATUS", &[]).await.unwrap();
        assert_eq!(status.get::<_, String>("phase"), "stream");
        assert!(status.get::<_, bool>("live"));
        assert_eq!(status.get::<_, String>("source_kind"), "postgres");
        // The same status model as the control API: the slot the monitor
        // reports there (once it has looked) is the one the console shows.
        let start = Instant::now();
        while s.status()["slot"]["name"].is_null() {
            assert!(
                start.elapsed() < LONG,
                "the monitor never reported the slot"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let http_slot = s.status()["slot"]["name"].as_str().map(str::to_owned);
        let status = c.query_one("SHOW STATUS", &[]).await.unwrap();
        assert_eq!(status.get::<_, Option<String>>("slot"), http_slot);
        assert_eq!(http_slot.as_deref(), Some("ferry"));

        // The monitor fills the per-table status on its next refresh.
        let start = Instant::now();
        while !s.status()["tables"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "public.accounts"))
        {
            assert!(
                start.elapsed() < LONG,
                "the status never listed public.accounts"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let tables = c.query("SHOW TABLES", &[]).await.unwrap();
        let accounts = tables
            .iter()
            .find(|r| r.get::<_, String>("table_name") == "public.accounts")
            .expect("public.accounts in SHOW TABLES");
        // Rows copied by the load (the writer adds accounts meanwhile), as
        // the control API counts them.
        let http = s.status();
        let http_accounts = http["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "public.accounts")
            .expect("public.accounts in GET /status");
        assert_eq!(
            accounts.get::<_, i64>("rows_copied"),
            http_accounts["rows_copied"].as_i64().unwrap()
        );
        assert!(accounts.get::<_, i64>("rows_copied") >= 5_000);
        assert_eq!(tables.len(), BENCH_TABLES.len());

        // PAUSE in the console is the same pause the control API shows.
        c.simple_query("PAUSE").await.unwrap();
        assert_eq!(s.status()["paused"], true);
        assert!(
            c.query_one("SHOW STATUS", &[])
                .await
                .unwrap()
                .get::<_, bool>("paused")
        );
        c.simple_query("RESUME").await.unwrap();
        assert_eq!(s.status()["paused"], false);

        // The lag history comes from the target's state (sampled every 10 s).
        let start = Instant::now();
        let history = loop {
            let rows = c.query("SHOW LAG HISTORY '1h'", &[]).await.unwrap();
            if !rows.is_empty() || start.elapsed() > Duration::from_secs(60) {
                break rows;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        assert!(!history.is_empty(), "a lag sample within a minute");
        assert!(history.iter().all(|r| r.get::<_, i64>("lag_bytes") >= 0));

        // A cutover the lag bound refuses is a PostgreSQL error with a hint.
        c.simple_query("PAUSE").await.unwrap();
        writer.wait_for(writer.committed() + 200, LONG).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let refused = c
            .query("CUTOVER MAX LAG '100ms'", &[])
            .await
            .expect_err("lag above the bound");
        let db = refused.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "55000", "{db:?}");
        assert!(db.message().contains("lag"), "{}", db.message());
        assert!(db.hint().is_some());
        c.simple_query("RESUME").await.unwrap();

        // VALIDATE in the console runs the same validation as `POST
        // /validate`; SHOW VALIDATION shows its results as tables finish.
        let started = c.query_one("VALIDATE public.accounts", &[]).await.unwrap();
        assert!(started.get::<_, bool>("started"));
        let start = Instant::now();
        let accounts = loop {
            let rows = c.query("SHOW VALIDATION", &[]).await.unwrap();
            let done = rows
                .into_iter()
                .find(|r| r.get::<_, String>("table_name") == "public.accounts");
            if let Some(r) = done {
                break r;
            }
            assert!(
                start.elapsed() < LONG,
                "validation of public.accounts never finished"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(
            accounts.get::<_, bool>("clean"),
            "replication is exact: the validation is clean"
        );
        assert!(accounts.get::<_, i64>("rows_checked") >= 5_000);
        assert_eq!(accounts.get::<_, i64>("differences"), 0);
        // A cutover can require every table validated: only accounts was.
        let e = c
            .query_one("CUTOVER DRY RUN MAX LAG '60s' REQUIRE VALIDATED '1h'", &[])
            .await
            .expect_err("only public.accounts was validated");
        assert!(
            e.as_db_error().is_some_and(|d| d.code().code() == "55000"),
            "{e:?}"
        );

        let dry = c
            .query_one("CUTOVER DRY RUN MAX LAG '60s'", &[])
            .await
            .unwrap();
        assert!(dry.get::<_, String>("outcome").starts_with("dry run"));
        assert!(dry.get::<_, bool>("dry_run"));
    });
    assert!(
        ferry.exited().unwrap().is_none(),
        "a dry run changes nothing"
    );

    // The real cutover, typed into psql.
    let psql = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.pg/client/bin/psql");
    let out = std::process::Command::new(&psql)
        .args([
            "-X",
            "-A",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "ferry",
            "-d",
            "ferry",
        ])
        .args(["-c", "CUTOVER FENCE MAX LAG '30s' TIMEOUT '120s'"])
        .env("PGPASSWORD", "console-secret")
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run `make setup`)", psql.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ferry.log()
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("done|f|t|")),
        "{stdout}"
    );
    let log = ferry.log();
    let code = ferry.wait(Duration::from_secs(60)).expect("ferry run");
    assert_eq!(code, Some(0), "ferry run exits 0 after the cutover:\n{log}");
    let _ = writer.stop();

    rt.block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        pgsync::compare_tables(&src, &dst, BENCH_TABLES)
            .await
            .unwrap();
        let phase: String = dst
            .query_one("SELECT phase FROM ferry.pipeline", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(phase, "done");
    });
}

#[test]
fn a_public_console_without_credentials_stops_the_run_before_it_starts() {
    let port = free_port();
    let s = Migration::new(PgOptions::new(), target_options(), BENCH_SCHEMA)
        .env("FERRY_CONSOLE_LISTEN", &format!("0.0.0.0:{port}"));
    let ran = s.ferry(&["run"]);
    assert_ne!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.all().contains(&format!(
            "console.listen 0.0.0.0:{port} is not a loopback address"
        )),
        "{}",
        ran.all()
    );
    assert!(ran.all().contains("console.password"), "{}", ran.all());
    // Refused before any work: no state schema in the target.
    let state = s.target_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'");
    assert_eq!(state, Some(0), "nothing was written to the target");
}
