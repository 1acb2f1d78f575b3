//! Benchmark 5, MariaDB full load: a generated table of SCALE×100k rows
//! (2M at the default scale) and a wide table of SCALE×10k rows in a
//! durable MariaDB 10.11, loaded into a fresh PostgreSQL database by
//! `ferry run` (timed until the pipeline reaches `catchup`, indexes
//! included) and by pgloader on the same data in the same run (Debian
//! package `pgloader`, `--dynamic-space-size 4096`; skipped with the reason
//! printed when it is not installed). Ceilings: the raw read rate of the
//! same rows from MariaDB (`mariadb --quick --batch` to a file) and the
//! raw `COPY … FROM` rate of the target for that file (`psql \copy`).
//! Goal: ferry ≥ 10× pgloader's rows/s.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_testkit::{MariaDbOptions, MariaDbServer, PgServer};

use crate::Sizes;
use crate::harness::{
    Bench, DRAIN_TIMEOUT, bench_server, peak_rss_kb, run_tool, stop_ferry, wait_for,
};
use crate::report::{Report, mib, rate, thousands};

/// The generated tables: (name, MariaDB DDL, generator, PostgreSQL DDL for
/// the raw COPY ceiling).
fn tables(accounts: u64, wide: u64) -> [(&'static str, String, String, &'static str); 2] {
    [
        (
            "accounts",
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY, branch INT NOT NULL, balance DECIMAL(12,2) NOT NULL, created DATETIME NOT NULL, filler CHAR(84) NOT NULL, KEY (branch))".into(),
            format!("INSERT INTO accounts SELECT seq, seq % 1000, (seq % 1000000) / 100, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL (seq % 10000000) SECOND, RPAD(seq, 84, 'x') FROM seq_1_to_{accounts}"),
            "CREATE TABLE accounts (id bigint PRIMARY KEY, branch integer NOT NULL, balance numeric(12,2) NOT NULL, created timestamp NOT NULL, filler varchar(84) NOT NULL)",
        ),
        (
            "wide",
            "CREATE TABLE wide (id INT PRIMARY KEY, a VARCHAR(200), b TEXT, c JSON, d DOUBLE, e DATE, f VARCHAR(100), g BIGINT, h TINYINT(1), i TEXT)".into(),
            format!("INSERT INTO wide SELECT seq, REPEAT('a', 150), REPEAT('b', 500), JSON_OBJECT('k', seq, 'v', 'text'), seq / 7, DATE '2024-01-01' + INTERVAL (seq % 1000) DAY, MD5(seq), seq * 1000, seq % 2, REPEAT('i', 300) FROM seq_1_to_{wide}"),
            "CREATE TABLE wide (id integer PRIMARY KEY, a varchar(200), b text, c jsonb, d double precision, e date, f varchar(100), g bigint, h boolean, i text)",
        ),
    ]
}

#[derive(Debug)]
pub(crate) struct MariaDbLoadFigures {
    rows: u64,
    raw_read: Duration,
    raw_copy: Duration,
    ferry: Option<Duration>,
    ferry_rss_kb: Option<u64>,
    /// pgloader's time, or why there is none.
    pgloader: Result<Duration, String>,
}

impl MariaDbLoadFigures {
    pub(crate) fn row(&self) -> String {
        let per_s = |d: Duration| rate(self.rows as f64 / d.as_secs_f64().max(1e-9));
        let reference = match &self.pgloader {
            Ok(d) => format!("pgloader {} rows/s", per_s(*d)),
            Err(why) => format!("pgloader: {why}"),
        };
        let ferry = self.ferry.map_or_else(
            || "failed".to_owned(),
            |d| format!("{} rows/s (peak RSS {})", per_s(d), mib(self.ferry_rss_kb)),
        );
        let ratio = match (&self.pgloader, self.ferry) {
            (Ok(p), Some(f)) => format!("{:.1}× (goal ≥ 10×)", p.as_secs_f64() / f.as_secs_f64()),
            _ => "-".to_owned(),
        };
        format!(
            "| full load MariaDB → PostgreSQL | {} rows | {reference}; ceilings: raw read {} rows/s, raw COPY in {} rows/s | {ferry} | {ratio} |\n",
            thousands(self.rows),
            per_s(self.raw_read),
            per_s(self.raw_copy),
        )
    }
}

pub(crate) fn run(sizes: &Sizes, report: &mut Report) {
    match load(sizes, report) {
        Ok(figures) => report.mariadb_load = Some(figures),
        Err(e) => report
            .failures
            .push(format!("MariaDB full-load benchmark aborted: {e:#}")),
    }
}

fn load(sizes: &Sizes, report: &mut Report) -> anyhow::Result<MariaDbLoadFigures> {
    say!("MariaDB full load: starting a durable MariaDB and a PostgreSQL target …");
    let source = MariaDbServer::start(
        MariaDbOptions::default()
            .durable(true)
            .setting("innodb_buffer_pool_size", "512M"),
    )
    .context("starting MariaDB")?;
    let target = bench_server("replica")?;
    let db = source.create_database("bench")?;
    let (accounts, wide) = (sizes.accounts(), sizes.wide_rows);
    say!(
        "  generating {} + {} rows …",
        thousands(accounts),
        thousands(wide)
    );
    for (_, ddl, generate, _) in tables(accounts, wide) {
        source.sql(&db, &format!("{ddl}; {generate};"))?;
    }
    let rows = accounts + wide;
    let work = tempfile::tempdir()?;

    let started = Instant::now();
    for (name, ..) in tables(accounts, wide) {
        let file = std::fs::File::create(work.path().join(format!("{name}.tsv")))?;
        let mut read = source.client_command(&db);
        read.arg("--quick")
            .arg("-e")
            .arg(format!("SELECT * FROM {name}"))
            .stdout(Stdio::from(file));
        run_tool(&mut read, "mariadb raw read")?;
    }
    let raw_read = started.elapsed();
    say!("  raw read: {:.1} s", raw_read.as_secs_f64());

    let raw_db = target.create_database("bench_raw")?;
    for (_, _, _, pg_ddl) in tables(accounts, wide) {
        target.psql(&raw_db, pg_ddl)?;
    }
    let started = Instant::now();
    for (name, ..) in tables(accounts, wide) {
        let path = work.path().join(format!("{name}.tsv"));
        let mut copy = Bench::tool(&target, "psql");
        copy.args(["-d", &raw_db, "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!(
                "\\copy {name} FROM '{}' WITH (FORMAT text, NULL 'NULL')",
                path.display()
            ));
        run_tool(&mut copy, "psql \\copy")?;
    }
    let raw_copy = started.elapsed();
    say!("  raw COPY in: {:.1} s", raw_copy.as_secs_f64());

    let mut figures = MariaDbLoadFigures {
        rows,
        raw_read,
        raw_copy,
        ferry: None,
        ferry_rss_kb: None,
        pgloader: Err("not run".into()),
    };
    match ferry_load(&source, &target, &db, work.path()) {
        Ok((took, rss)) => {
            say!("  ferry: {:.1} s", took.as_secs_f64());
            figures.ferry = Some(took);
            figures.ferry_rss_kb = rss;
        }
        Err(e) => report.ferry_failed("MariaDB full load", &e),
    }
    figures.pgloader = pgloader(&source, &target, &db);
    match &figures.pgloader {
        Ok(d) => say!("  pgloader: {:.1} s", d.as_secs_f64()),
        Err(why) => say!("  pgloader skipped: {why}"),
    }
    Ok(figures)
}

fn ferry_load(
    source: &MariaDbServer,
    target: &PgServer,
    db: &str,
    logs: &std::path::Path,
) -> anyhow::Result<(Duration, Option<u64>)> {
    let tdb = target.create_database("bench_ferry")?;
    let target_url = target.url(&tdb);
    let mut bg = spawn_ferry(source, db, &target_url, logs, "mariadb")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut rss = None;
    let pid = bg.pid();
    let took = wait_for(
        &mut bg,
        "loading from MariaDB",
        started,
        DRAIN_TIMEOUT,
        || {
            rss = peak_rss_kb(pid).or(rss);
            rt.block_on(async {
                let c = ferry_e2e::pgsync::connect(&target_url).await.ok()?;
                let row = c
                    .query_opt("SELECT phase FROM ferry.pipeline", &[])
                    .await
                    .ok()??;
                Some(row.get::<_, String>(0))
            })
            .is_some_and(|p| p == "catchup" || p == "stream")
        },
    )?;
    stop_ferry(bg)?;
    Ok((took, rss))
}

/// `ferry run` from `db` of `source` into `target_url`, control API on a
/// free port, its log in `logs/ferry-{what}.log` (`FERRY_BENCH_LOG`: its
/// log level).
pub(crate) fn spawn_ferry(
    source: &MariaDbServer,
    db: &str,
    target_url: &str,
    logs: &std::path::Path,
    what: &str,
) -> anyhow::Result<ferry_e2e::Background> {
    let mut cmd = ferry_e2e::ferry(&source.url(db), target_url)?;
    cmd.arg("run")
        .env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .env("FERRY_CONTROL_LISTEN", "127.0.0.1:0");
    if let Ok(level) = std::env::var("FERRY_BENCH_LOG") {
        cmd.env("FERRY_LOG", level);
    }
    ferry_e2e::Background::spawn(cmd, &logs.join(format!("ferry-{what}.log")))
}

/// pgloader's time on the same database, or why it did not run.
fn pgloader(source: &MariaDbServer, target: &PgServer, db: &str) -> Result<Duration, String> {
    let found = Command::new("sh")
        .args(["-c", "command -v pgloader"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        return Err("not installed (Debian package pgloader; `make setup` installs it)".into());
    }
    let run = || -> anyhow::Result<Duration> {
        let tdb = target.create_database("bench_pgloader")?;
        let started = Instant::now();
        let mut cmd = Command::new("pgloader");
        cmd.args(["--dynamic-space-size", "4096", "--no-ssl-cert-verification"])
            .arg(source.url(db))
            .arg(format!("{}?sslmode=disable", target.url(&tdb)));
        let out = cmd.output().context("running pgloader")?;
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "pgloader failed ({}):\n{}",
                out.status,
                crate::report::tail(&text, 30)
            );
        }
        let loaded: i64 = target
            .psql(
                &tdb,
                &format!(
                    "SELECT (SELECT count(*) FROM {db}.accounts) + (SELECT count(*) FROM {db}.wide)"
                ),
            )?
            .trim()
            .parse()
            .context("counting pgloader's rows")?;
        if loaded <= 0 {
            bail!(
                "pgloader loaded no rows:\n{}",
                crate::report::tail(&text, 30)
            );
        }
        Ok(took)
    };
    run().map_err(|e| format!("{e:#}"))
}
