//! Managed-service roles: RDS/Aurora have no superuser. The whole migration
//! through the CLI — plan, run, a `kill -9` during the load and the resume,
//! status, a fenced cutover under writes, cleanup — with a source role that
//! has `REPLICATION`, owns the application's tables and database and is a
//! member of `pg_signal_backend` (what `--fence` needs), but is not a
//! superuser; the application writes as an ordinary role too.

use std::time::{Duration, Instant};

use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_e2e::{Background, Ran, ferry, run};
use ferry_testkit::{PgOptions, PgServer};

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];
const LONG: Duration = Duration::from_secs(180);
const ACCOUNTS: u32 = 100_000;
const APP: &str = "app_owner";
const APP_PW: &str = "app-owner-pw";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn role_url(server: &PgServer, user: &str, password: &str, db: &str) -> String {
    format!(
        "postgres://{user}:{password}@127.0.0.1:{}/{db}",
        server.port()
    )
}

struct Setup {
    _source: PgServer,
    _target: PgServer,
    source_url: String,
    target_url: String,
    bystander_url: String,
    control: String,
    logs: tempfile::TempDir,
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

    fn ferry(&self, args: &[&str]) -> Ran {
        run(self.cmd().args(args)).unwrap()
    }

    fn start(&self, name: &str, env: &[(&str, &str)]) -> Background {
        let mut cmd = self.cmd();
        cmd.env("FERRY_LOG", "info").arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Background::spawn(cmd, &self.logs.path().join(format!("{name}.log"))).unwrap()
    }

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
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn whole_migration_with_a_source_role_that_is_not_a_superuser() {
    let source = PgServer::start(PgOptions::new()).expect("source");
    let target = PgServer::start(PgOptions::new().wal_level("replica")).expect("target");
    source
        .create_role(APP, APP_PW, "LOGIN REPLICATION NOSUPERUSER")
        .unwrap();
    source
        .psql("postgres", &format!("GRANT pg_signal_backend TO {APP}"))
        .unwrap();
    let sdb = source.create_database("src").unwrap();
    source
        .psql("postgres", &format!("ALTER DATABASE {sdb} OWNER TO {APP}"))
        .unwrap();
    let source_url = role_url(&source, APP, APP_PW, &sdb);
    // The application's tables belong to the application's role.
    let as_app = format!(
        "host=127.0.0.1 port={} user={APP} password={APP_PW} dbname={sdb}",
        source.port()
    );
    source.psql_conninfo(&as_app, BENCH_SCHEMA).unwrap();
    source
        .psql_conninfo(&as_app, &pgsync::bench_data(ACCOUNTS, 300))
        .unwrap();
    let owners = source
        .psql(
            &sdb,
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
        )
        .unwrap();
    assert_eq!(owners.trim(), APP);
    let is_super = source
        .psql(
            "postgres",
            &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{APP}'"),
        )
        .unwrap();
    assert_eq!(is_super.trim(), "f");

    let tdb = target.create_database("dst").unwrap();
    let s = Setup {
        target_url: target.url(&tdb),
        bystander_url: source.url("postgres"),
        source_url,
        _source: source,
        _target: target,
        control: format!("127.0.0.1:{}", free_port()),
        logs: tempfile::tempdir().unwrap(),
    };

    // plan
    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("replication privilege"))
        .unwrap_or_else(|| panic!("{}", plan.stdout));
    assert!(line.starts_with("  ok"), "{line}");

    // run, killed during the load, resumed
    let mut writer = Writer::start(&s.source_url, ACCOUNTS);
    writer.wait_for(20, LONG).unwrap();
    let chunks = [
        ("FERRY_LOAD_CHUNK_ROWS", "5000"),
        ("FERRY_LOAD_PARALLELISM", "1"),
    ];
    let mut ferry = s.start("load", &chunks);
    let rt = pgsync::runtime();
    let t = Instant::now();
    loop {
        let done = rt.block_on(async {
            let dst = pgsync::connect(&s.target_url).await.ok()?;
            let row = dst
                .query_opt("SELECT count(*) FROM ferry.chunks", &[])
                .await
                .ok()??;
            Some(row.get::<_, i64>(0))
        });
        if done.unwrap_or(0) >= 1 {
            break;
        }
        if let Some(code) = ferry.exited().unwrap() {
            panic!(
                "ferry exited during the load with {code:?}:\n{}",
                ferry.log()
            );
        }
        assert!(t.elapsed() < LONG, "no chunk completed:\n{}", ferry.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    ferry.kill9().unwrap();
    let mut ferry = s.start("resume", &chunks);
    s.wait_phase(&mut ferry, "stream");
    assert!(
        ferry
            .log()
            .contains("resuming the full load from a new snapshot"),
        "{}",
        ferry.log()
    );

    // status
    let status = s.ferry(&["status", "--json"]);
    assert_eq!(status.code, Some(0), "{}", status.all());
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["phase"], "stream", "{v}");
    writer.wait_for(writer.committed() + 100, LONG).unwrap();

    // fenced cutover under writes
    // A superuser session in another database of the server: the fence
    // must neither end it nor try to (the role may not end a superuser's).
    let bystander = rt.block_on(pgsync::connect(&s.bystander_url)).unwrap();
    let cut = s.ferry(&[
        "cutover",
        "--fence",
        "--max-lag",
        "60s",
        "--timeout",
        "120s",
    ]);
    let run_log = ferry.log();
    assert_eq!(cut.code, Some(0), "{}\n{run_log}", cut.all());
    assert!(cut.stdout.contains("cutover: done"), "{}", cut.all());
    let code = ferry.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(code, Some(0), "{run_log}");
    let alive: i32 = rt
        .block_on(bystander.query_one("SELECT 1", &[]))
        .expect("the session in another database survives the fence")
        .get(0);
    assert_eq!(alive, 1);
    let _ = writer.stop();
    rt.block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        pgsync::compare_tables(&src, &dst, BENCH_TABLES)
            .await
            .unwrap();
    });

    // cleanup
    let clean = s.ferry(&["cleanup"]);
    assert_eq!(clean.code, Some(0), "{}", clean.all());
    rt.block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let left: i64 = src
            .query_one(
                "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "slot and publication are gone");
    });
}

/// A publication a DBA created beforehand, for a role that may read the
/// tables but not publish them: `ferry plan` checks that it covers every
/// selected table with insert, update, delete and truncate (and names the
/// fix when not); ferry uses it as is and neither cutover nor cleanup drops it.
#[test]
fn a_publication_created_beforehand_is_checked_used_and_kept() {
    const MIG: &str = "migrator";
    const MIG_PW: &str = "migrator-pw";
    let source = PgServer::start(PgOptions::new()).expect("source");
    let target = PgServer::start(PgOptions::new().wal_level("replica")).expect("target");
    let sdb = source.create_database("src").unwrap();
    let tdb = target.create_database("dst").unwrap();
    source.psql(&sdb, BENCH_SCHEMA).unwrap();
    source.psql(&sdb, &pgsync::bench_data(20_000, 200)).unwrap();
    source
        .create_role(MIG, MIG_PW, "LOGIN REPLICATION NOSUPERUSER")
        .unwrap();
    source
        .psql(
            &sdb,
            &format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {MIG};
                 GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {MIG};
                 CREATE PUBLICATION app_pub FOR TABLE branches, tellers, accounts, history
                   WITH (publish = 'insert, update, delete');"
            ),
        )
        .unwrap();
    let s = Setup {
        source_url: role_url(&source, MIG, MIG_PW, &sdb),
        target_url: target.url(&tdb),
        bystander_url: source.url("postgres"),
        _source: source,
        _target: target,
        control: format!("127.0.0.1:{}", free_port()),
        logs: tempfile::tempdir().unwrap(),
    };
    let with_pub = |args: &[&str]| -> Ran {
        run(s
            .cmd()
            .env("FERRY_POSTGRES_PUBLICATION", "app_pub")
            .args(args))
        .unwrap()
    };

    // Not covering docs, nor truncate: refused with both fixes.
    let plan = with_pub(&["plan"]);
    assert_eq!(plan.code, Some(2), "{}", plan.all());
    assert!(
        plan.stdout.contains(
            "publication 'app_pub' was created beforehand and does not publish public.docs; does not publish truncate"
        ),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("fix: ALTER PUBLICATION \"app_pub\" ADD TABLE public.docs; ALTER PUBLICATION \"app_pub\" SET (publish = 'insert, update, delete, truncate')"),
        "{}",
        plan.stdout
    );
    s._source
        .psql(
            &sdb,
            "ALTER PUBLICATION app_pub ADD TABLE docs;
             ALTER PUBLICATION app_pub SET (publish = 'insert, update, delete, truncate');",
        )
        .unwrap();
    let plan = with_pub(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    assert!(
        plan.stdout.contains(
            "publication 'app_pub' was created beforehand: used as is and never dropped by ferry"
        ),
        "{}",
        plan.stdout
    );

    // Run under writes, stop the writes, cut over, clean up.
    let mut writer = Writer::start(&s._source.url(&sdb), 20_000);
    writer.wait_for(20, LONG).unwrap();
    let mut cmd = s.cmd();
    cmd.env("FERRY_LOG", "info")
        .env("FERRY_POSTGRES_PUBLICATION", "app_pub")
        .arg("run");
    let mut ferry = Background::spawn(cmd, &s.logs.path().join("run.log")).unwrap();
    s.wait_phase(&mut ferry, "stream");
    writer.wait_for(writer.committed() + 100, LONG).unwrap();
    writer.stop().unwrap();
    let cut = with_pub(&["cutover", "--max-lag", "60s", "--timeout", "120s"]);
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry.log());
    let code = ferry.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(code, Some(0));
    let clean = with_pub(&["cleanup"]);
    assert_eq!(clean.code, Some(0), "{}", clean.all());
    let rt = pgsync::runtime();
    rt.block_on(async {
        let src = pgsync::connect(&s._source.url(&sdb)).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        pgsync::compare_tables(&src, &dst, BENCH_TABLES)
            .await
            .unwrap();
        let kept: i64 = src
            .query_one(
                "SELECT count(*) FROM pg_publication WHERE pubname = 'app_pub'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(kept, 1, "the DBA's publication is kept");
        let slots: i64 = src
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(slots, 0, "ferry's slot is dropped");
    });
}
