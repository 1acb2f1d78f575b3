//! Type policies for SQLite columns holding mixed storage classes, through
//! the CLI against real files and a real target: the default `widen`
//! (integers mixed with text carried as `text`, nothing lost, `ferry plan`
//! shows counts and rowids), `sqlite.misfits = "fail"` (plan and run
//! refuse, naming the rows), `null` through a per-column override
//! (`[tables.columns."main.m.n"] on_misfit = "null"`: misfits become NULL in
//! the load and in the stream), and an explicit per-column `type`
//! (`timestamp(3)` for epoch milliseconds in an INTEGER column).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_e2e::migration::{LONG, target_options};
use ferry_e2e::{Background, Ran, ferry, pgsync, run};
use ferry_testkit::PgServer;
use rusqlite::Connection;

/// `n`: integers, with text every 10th row; `at`: epoch milliseconds in an
/// INTEGER column.
fn make_file(dir: &Path) -> PathBuf {
    let path = dir.join("mixed.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = wal;
         CREATE TABLE m (id INTEGER PRIMARY KEY, n INTEGER, at INTEGER);",
    )
    .unwrap();
    for i in 1..=200i64 {
        let n: rusqlite::types::Value = if i % 10 == 0 {
            format!("n/a {i}").into()
        } else {
            (i * 3).into()
        };
        conn.execute(
            "INSERT INTO m VALUES (?1, ?2, ?3)",
            rusqlite::params![i, n, 1_700_000_000_000i64 + i],
        )
        .unwrap();
    }
    path
}

struct Case {
    path: PathBuf,
    target_url: String,
    logs: PathBuf,
    config: PathBuf,
}

impl Case {
    fn cmd(&self, env: &[(&str, &str)]) -> std::process::Command {
        let mut cmd = ferry(
            &format!("sqlite://{}", self.path.display()),
            &self.target_url,
        )
        .unwrap();
        cmd.env("FERRY_CONTROL_LISTEN", "127.0.0.1:0")
            .env("FERRY_CONFIG", &self.config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn plan(&self, env: &[(&str, &str)]) -> Ran {
        run(self.cmd(env).arg("plan")).unwrap()
    }

    fn start(&self, name: &str, env: &[(&str, &str)]) -> Background {
        let mut cmd = self.cmd(env);
        cmd.env("FERRY_LOG", "info").arg("run");
        Background::spawn(cmd, &self.logs.join(format!("{name}.log"))).unwrap()
    }

    fn target_rows(&self, sql: &str) -> Option<Vec<String>> {
        let (url, sql) = (self.target_url.clone(), sql.to_owned());
        pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.ok()?;
            let rows = c.query(&sql, &[]).await.ok()?;
            Some(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }

    /// Wait until `sql` (one text column) returns `want`.
    fn wait_rows(&self, ferry: &mut Background, sql: &str, want: &[String]) {
        let start = Instant::now();
        while self.target_rows(sql).as_deref() != Some(want) {
            assert!(ferry.exited().unwrap().is_none(), "{}", ferry.log());
            assert!(
                start.elapsed() < LONG,
                "target {:?}\n{}",
                self.target_rows(sql),
                ferry.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn case(target: &PgServer, name: &str, config: &str) -> (tempfile::TempDir, Case) {
    let dir = tempfile::tempdir().unwrap();
    let path = make_file(dir.path());
    let db = target.create_database(name).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let config_path = dir.path().join("ferry.toml");
    std::fs::write(&config_path, config).unwrap();
    let c = Case {
        path,
        target_url: target.url(&db),
        logs,
        config: config_path,
    };
    (dir, c)
}

/// The application writes during the stream: a text value in `n` and an
/// integer one.
fn stream_writes(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    conn.execute_batch(
        "INSERT INTO m VALUES (201, 'late text', 1700000000201);
         INSERT INTO m VALUES (202, 606, 1700000000202);
         UPDATE m SET n = 'edited' WHERE id = 3;",
    )
    .unwrap();
}

const N_SQL: &str = "SELECT id || '=' || coalesce(n::text, 'NULL') FROM public.m ORDER BY id";

/// What `n` holds on the target: text values as they are (`widen`) or NULL
/// (`null`).
fn expected_n(nulls: bool) -> Vec<String> {
    let text = |s: String| if nulls { "NULL".to_owned() } else { s };
    let mut out: Vec<String> = (1..=200i64)
        .map(|i| {
            let v = if i == 3 {
                text("edited".into())
            } else if i % 10 == 0 {
                text(format!("n/a {i}"))
            } else {
                (i * 3).to_string()
            };
            format!("{i}={v}")
        })
        .collect();
    out.push(format!("201={}", text("late text".into())));
    out.push("202=606".into());
    out
}

#[test]
fn widen_fail_null_and_explicit_types_on_mixed_storage_classes() {
    let target = PgServer::start(target_options()).expect("target");

    // 1. Default `widen`: `n` becomes text, plan says why with counts and
    //    rowids; load and stream carry every value exactly.
    let (_d1, widen) = case(&target, "widen", "");
    let plan = widen.plan(&[]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    assert!(
        plan.stdout.contains("main.m.n → text")
            && plan
                .stdout
                .contains("20 sampled value(s) do not fit bigint")
            && plan.stdout.contains("at rowid 10, 20, 30")
            && plan.stdout.contains("widened from bigint to text"),
        "{}",
        plan.all()
    );
    let mut run1 = widen.start("widen", &[]);
    widen.wait_rows(
        &mut run1,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.m'::regclass AND attname = 'n'",
        &["text".to_owned()],
    );
    let start = Instant::now();
    while widen
        .target_rows("SELECT phase FROM ferry.pipeline")
        .as_deref()
        != Some(&["stream".to_owned()])
    {
        assert!(start.elapsed() < LONG, "{}", run1.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    stream_writes(&widen.path);
    widen.wait_rows(&mut run1, N_SQL, &expected_n(false));
    let _ = run1.signal_and_wait(15, Duration::from_secs(30));

    // 2. `fail`: plan fails naming the rows and the fix; run refuses.
    let (_d2, fail) = case(&target, "fail", "[sqlite]\nmisfits = \"fail\"\n");
    let plan = fail.plan(&[]);
    assert_eq!(plan.code, Some(2), "{}", plan.all());
    assert!(
        plan.stdout.contains("main.m.n → bigint")
            && plan.stdout.contains("at rowid 10, 20, 30")
            && plan.stdout.contains(r#"on_misfit = "fail""#)
            && plan
                .stdout
                .contains(r#"tables.columns."main.m.n" = { on_misfit = "widen" }"#),
        "{}",
        plan.all()
    );
    let code = fail.start("fail", &[]).wait(LONG).unwrap();
    let log = std::fs::read_to_string(fail.logs.join("fail.log")).unwrap();
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("ferry run refuses to start") && log.contains("values main.m.n"),
        "{log}"
    );

    // 3. The column's own policy `null` (over the global `fail`) and an
    //    explicit type for the epoch milliseconds.
    let (_d3, null) = case(
        &target,
        "null",
        "[sqlite]\nmisfits = \"fail\"\n\
         [tables.columns.\"main.m.n\"]\non_misfit = \"null\"\n\
         [tables.columns.\"main.m.at\"]\ntype = \"timestamp(3)\"\n",
    );
    let plan = null.plan(&[]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    assert!(
        plan.stdout.contains("main.m.n → bigint")
            && plan
                .stdout
                .contains("they become NULL in the load and the stream")
            && plan
                .stdout
                .contains("main.m.at → timestamp(3): type timestamp(3) set in tables.columns"),
        "{}",
        plan.all()
    );
    let mut run3 = null.start("null", &[]);
    let start = Instant::now();
    while null
        .target_rows("SELECT phase FROM ferry.pipeline")
        .as_deref()
        != Some(&["stream".to_owned()])
    {
        assert!(run3.exited().unwrap().is_none(), "{}", run3.log());
        assert!(start.elapsed() < LONG, "{}", run3.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    stream_writes(&null.path);
    null.wait_rows(&mut run3, N_SQL, &expected_n(true));
    let at: Vec<String> = (1..=202i64)
        .map(|i| format!("2023-11-14 22:13:20.{i:03}"))
        .collect();
    null.wait_rows(
        &mut run3,
        "SELECT to_char(at, 'YYYY-MM-DD HH24:MI:SS.MS') FROM public.m ORDER BY id",
        &at,
    );
    let log = run3.log();
    let _ = run3.signal_and_wait(15, Duration::from_secs(30));
    assert!(!log.contains("ERROR"), "{log}");
}
