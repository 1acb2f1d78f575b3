//! Benchmark 7b, MariaDB CDC: backlogs written into MariaDB 10.11's binlog
//! (ROW, FULL image) while ferry is stopped, drained by `ferry run` and
//! timed until `ferry.checkpoint` reaches the source head (`SHOW MASTER
//! STATUS` after the backlog), with the CPU time of MariaDB, the target
//! PostgreSQL and ferry (as the PostgreSQL drain, [`crate::cpu`]) and
//! ferry's peak RSS. Two shapes: tpcb-like transactions (three updates and
//! an insert each) and 1,000-row updates, each `FERRY_BENCH_MARIADB_CHANGES`
//! row changes (default 100,000; the README's figures are at 1,000,000),
//! written by a stored procedure (one client).
//!
//! References in the same run: the raw binlog read rate of the same range,
//! `mariadb-binlog --read-from-remote-server --raw` to a file (goal: ferry
//! ≥ 0.8× it), and pg_chameleon's replica (PyPI `pg_chameleon` 2.0.21, in a
//! venv under `target/`, installed on first use; "not measured: <why>"
//! when it cannot run): `init_replica` before the first backlog, then
//! `start_replica` after each backlog, timed until its tables hold the same
//! counts and sums as the source. Then the lag under a steady writer: the
//! source head is sampled every 100 ms and each sample is closed when
//! ferry's checkpoint passes it (p50/p99, goal p99 < 1 s).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_core::position::MySqlPosition;
use ferry_e2e::Background;
use ferry_testkit::{ADMIN_PASSWORD, ADMIN_USER, MariaDbOptions, MariaDbServer, PgServer};
use tokio_postgres::Client;

use crate::cdc::{Drain, apply_session_and_ferry, split_text};
use crate::cpu::{self, DrainCpu};
use crate::harness::{
    DRAIN_TIMEOUT, POLL, bench_server, peak_rss_kb, pipeline_phase, run_tool, stop_ferry, wait_for,
    wait_for_process,
};
use crate::mariadb::spawn_ferry;
use crate::report::{Report, mib, rate, tail, thousands};

/// Accounts in the generated tables (tellers: 100, branches: 10).
const ACCOUNTS: u64 = 100_000;
/// The steady writer of the lag measurement: transactions per second, seconds.
const LAG_TPS: u64 = 500;
const LAG_SECONDS: u64 = 20;
/// The pg_chameleon release measured.
const CHAMELEON: &str = "pg_chameleon==2.0.21";
/// Where pg_chameleon's target tables go.
const CHAMELEON_SCHEMA: &str = "chameleon";

const SCHEMA: &str = "
CREATE TABLE accounts (id INT PRIMARY KEY, branch INT NOT NULL, balance BIGINT NOT NULL, filler CHAR(84) NOT NULL);
CREATE TABLE tellers (id INT PRIMARY KEY, branch INT NOT NULL, balance BIGINT NOT NULL, filler CHAR(84) NOT NULL);
CREATE TABLE branches (id INT PRIMARY KEY, balance BIGINT NOT NULL, filler CHAR(88) NOT NULL);
CREATE TABLE history (id BIGINT AUTO_INCREMENT PRIMARY KEY, teller INT NOT NULL, branch INT NOT NULL, account INT NOT NULL, delta INT NOT NULL, mtime DATETIME(6) NOT NULL, filler CHAR(22));
INSERT INTO branches SELECT seq, 0, '' FROM seq_1_to_10;
INSERT INTO tellers SELECT seq, 1 + seq % 10, 0, '' FROM seq_1_to_100;
";

/// The writers: `tpcb(n)` n tpcb-like transactions (never a zero delta:
/// an update that changes nothing writes no row event), `multirow(n)` n
/// 1,000-row updates, `paced(tps, seconds)` tpcb-like at a steady rate.
fn procedures(accounts: u64) -> String {
    let tx = "SET a = 1 + FLOOR(RAND() * {A}); SET t = 1 + FLOOR(RAND() * 100); SET b = 1 + FLOOR(RAND() * 10);
    SET d = (1 + FLOOR(RAND() * 5000)) * IF(RAND() < 0.5, -1, 1);
    START TRANSACTION;
    UPDATE accounts SET balance = balance + d WHERE id = a;
    UPDATE tellers SET balance = balance + d WHERE id = t;
    UPDATE branches SET balance = balance + d WHERE id = b;
    INSERT INTO history (teller, branch, account, delta, mtime) VALUES (t, b, a, d, NOW(6));
    COMMIT;"
        .replace("{A}", &accounts.to_string());
    format!(
        "DELIMITER //
CREATE PROCEDURE tpcb(n INT) BEGIN
  DECLARE i INT DEFAULT 0; DECLARE a INT; DECLARE t INT; DECLARE b INT; DECLARE d INT;
  WHILE i < n DO {tx} SET i = i + 1; END WHILE;
END //
CREATE PROCEDURE multirow(n INT) BEGIN
  DECLARE i INT DEFAULT 0; DECLARE a INT;
  WHILE i < n DO
    SET a = 1 + FLOOR(RAND() * ({accounts} - 999));
    UPDATE accounts SET balance = balance + 1 WHERE id BETWEEN a AND a + 999;
    SET i = i + 1;
  END WHILE;
END //
CREATE PROCEDURE paced(tps INT, seconds INT) BEGIN
  DECLARE i INT DEFAULT 0; DECLARE a INT; DECLARE t INT; DECLARE b INT; DECLARE d INT;
  DECLARE started DATETIME(6) DEFAULT NOW(6); DECLARE w DOUBLE;
  WHILE i < tps * seconds DO
    {tx}
    SET i = i + 1;
    SET w = TIMESTAMPDIFF(MICROSECOND, NOW(6), started + INTERVAL (i * 1000000 DIV tps) MICROSECOND) / 1e6;
    IF w > 0 THEN DO SLEEP(w); END IF;
  END WHILE;
END //
DELIMITER ;
"
    )
}

/// Counts and sums that any complete replay reproduces.
const CHECKSUM: &str = "SELECT CONCAT((SELECT COUNT(*) FROM {s}accounts), '/', (SELECT SUM(balance) FROM {s}accounts), '/', \
     (SELECT COUNT(*) FROM {s}history), '/', (SELECT COALESCE(SUM(delta), 0) FROM {s}history), '/', \
     (SELECT SUM(balance) FROM {s}tellers), '/', (SELECT SUM(balance) FROM {s}branches))";

#[derive(Debug, Clone, Copy)]
enum Shape {
    Tpcb,
    MultiRow,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::Tpcb => "CDC MariaDB tpcb-like (3 updates + 1 insert per tx)",
            Shape::MultiRow => "CDC MariaDB 1000-row updates",
        }
    }
    fn changes_per_tx(self) -> u64 {
        match self {
            Shape::Tpcb => 4,
            Shape::MultiRow => 1000,
        }
    }
    fn call(self, tx: u64) -> String {
        match self {
            Shape::Tpcb => format!("CALL tpcb({tx})"),
            Shape::MultiRow => format!("CALL multirow({tx})"),
        }
    }
}

#[derive(Debug)]
struct ShapeFigures {
    label: &'static str,
    transactions: u64,
    changes: u64,
    produce: Duration,
    binlog_bytes: u64,
    /// `mariadb-binlog --raw` of the same range: time and the server's CPU.
    raw_read: Option<(Duration, Duration)>,
    ferry: Option<Drain>,
    /// pg_chameleon's replay: time and its own CPU time.
    chameleon: Result<(Duration, Duration), String>,
}

#[derive(Debug)]
pub(crate) struct MariaDbCdcFigures {
    shapes: Vec<ShapeFigures>,
    /// Lag samples (p50, p99, max, samples, achieved changes/s).
    lag: Option<(f64, f64, f64, usize, f64)>,
}

impl MariaDbCdcFigures {
    pub(crate) fn rows(&self) -> String {
        let mut s = String::new();
        for f in &self.shapes {
            s.push_str(&f.row());
        }
        if let Some((p50, p99, max, n, rate_cps)) = self.lag {
            s.push_str(&format!(
                "| lag MariaDB → PostgreSQL under a steady writer | {} changes/s for {LAG_SECONDS} s, {n} samples | \
                 source head sampled every 100 ms, closed when ferry.checkpoint passes it | \
                 p50 {p50:.3} s, p99 {p99:.3} s, max {max:.3} s | p99 {} (goal < 1 s) |\n",
                rate(rate_cps),
                if p99 < 1.0 { "< 1 s" } else { "≥ 1 s" }
            ));
        }
        s
    }
}

impl ShapeFigures {
    fn row(&self) -> String {
        let per_s = |d: Duration| self.changes as f64 / d.as_secs_f64().max(1e-9);
        let raw = self.raw_read.map(|(d, _)| per_s(d));
        let reference = format!(
            "written at {} changes/s; raw binlog read (mariadb-binlog --raw, {} MiB): {}; pg_chameleon: {}",
            rate(per_s(self.produce)),
            self.binlog_bytes >> 20,
            match self.raw_read {
                Some((d, server)) => format!(
                    "{} changes/s ({:.1} s, MariaDB CPU {:.1} µs/change)",
                    rate(per_s(d)),
                    d.as_secs_f64(),
                    server.as_secs_f64() * 1e6 / self.changes.max(1) as f64
                ),
                None => "not measured".into(),
            },
            match &self.chameleon {
                Ok((d, cpu)) => format!(
                    "{} changes/s ({:.1} s, its CPU {:.1} µs/change)",
                    rate(per_s(*d)),
                    d.as_secs_f64(),
                    cpu.as_secs_f64() * 1e6 / self.changes.max(1) as f64
                ),
                Err(why) => format!("not measured: {why}"),
            }
        );
        let (ferry, ratio) = match &self.ferry {
            Some(drain) => {
                let r = per_s(drain.took);
                let source_cost = drain.cpu.source.div_f64(self.changes.max(1) as f64);
                let ceiling = drain.cpu.ceiling(source_cost, self.changes);
                (
                    format!(
                        "drain: {} changes/s ({:.1} s, peak RSS {}); CPU per change: {}{}",
                        rate(r),
                        drain.took.as_secs_f64(),
                        mib(drain.rss),
                        drain.cpu.per_change(self.changes),
                        split_text(&drain.split)
                    ),
                    format!(
                        "{} of the raw binlog read (≥ 0.8); {} × pg_chameleon; CPU ceiling (MariaDB sending + target applying on all cores): {} changes/s",
                        raw.map_or("–".into(), |raw| format!("{:.2}", r / raw)),
                        match &self.chameleon {
                            Ok((d, _)) => format!("{:.1}", r / per_s(*d)),
                            Err(_) => "–".into(),
                        },
                        rate(ceiling)
                    ),
                )
            }
            None => ("not run".to_owned(), "– (≥ 0.8)".to_owned()),
        };
        format!(
            "| {} | {} tx, {} changes | {reference} | {ferry} | {ratio} |\n",
            self.label,
            thousands(self.transactions),
            thousands(self.changes)
        )
    }
}

pub(crate) fn run(report: &mut Report) {
    match bench(report) {
        Ok(f) => report.mariadb_cdc = Some(f),
        Err(e) => report
            .failures
            .push(format!("MariaDB CDC benchmark aborted: {e:#}")),
    }
}

fn changes_per_shape() -> anyhow::Result<u64> {
    match std::env::var("FERRY_BENCH_MARIADB_CHANGES") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1000)
            .with_context(|| format!("FERRY_BENCH_MARIADB_CHANGES={s:?} is not a number ≥ 1000")),
        Err(_) => Ok(100_000),
    }
}

struct Rig {
    source: MariaDbServer,
    target: PgServer,
    db: String,
    tdb: String,
    work: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

fn bench(report: &mut Report) -> anyhow::Result<MariaDbCdcFigures> {
    let changes = changes_per_shape()?;
    say!(
        "MariaDB CDC: {} row changes per backlog; starting MariaDB and a PostgreSQL target …",
        thousands(changes)
    );
    // FULL row metadata: column names in the binlog, which pg_chameleon's
    // binlog reader (mysql-replication 1.x) needs.
    let source = MariaDbServer::start(
        MariaDbOptions::default()
            .setting("innodb_buffer_pool_size", "512M")
            .setting("binlog_row_metadata", "FULL"),
    )
    .context("starting MariaDB")?;
    let target = bench_server("replica")?;
    let db = source.create_database("cdc")?;
    source.sql(
        &db,
        &format!(
            "{SCHEMA} INSERT INTO accounts SELECT seq, 1 + seq % 10, 0, '' FROM seq_1_to_{ACCOUNTS};"
        ),
    )?;
    source.sql(&db, &procedures(ACCOUNTS))?;
    let tdb = target.create_database("cdc_ferry")?;
    let rig = Rig {
        source,
        target,
        db,
        tdb,
        work: tempfile::tempdir()?,
        rt: ferry_e2e::pgsync::runtime(),
    };
    // ferry: load, streaming, stopped.
    let mut bg = spawn_ferry(
        &rig.source,
        &rig.db,
        &rig.target.url(&rig.tdb),
        rig.work.path(),
        "mariadb-cdc-load",
    )?;
    let head = rig.head()?;
    let target = rig
        .rt
        .block_on(ferry_e2e::pgsync::connect(&rig.target.url(&rig.tdb)))?;
    // The load done and caught up: a drain then streams every change (a
    // table still loading would be reloaded from a later snapshot and its
    // backlog changes skipped, not applied).
    wait_for(&mut bg, "loading", Instant::now(), DRAIN_TIMEOUT, || {
        rig.checkpoint(&target).is_some_and(|c| c >= head)
            && rig
                .rt
                .block_on(pipeline_phase(&target))
                .is_some_and(|p| matches!(p.as_str(), "catchup" | "stream"))
    })?;
    stop_ferry(bg)?;
    // FERRY_BENCH_NO_CHAMELEON=1: ferry and the raw read only (quick A/B runs).
    let chameleon = if std::env::var_os("FERRY_BENCH_NO_CHAMELEON").is_some() {
        Err("skipped (FERRY_BENCH_NO_CHAMELEON)".to_owned())
    } else {
        Chameleon::prepare(&rig)
    };
    if let Err(why) = &chameleon {
        say!("  pg_chameleon not measured: {why}");
    }
    let mut shapes = Vec::new();
    for shape in [Shape::Tpcb, Shape::MultiRow] {
        shapes.push(rig.shape(shape, changes, &target, &chameleon, report)?);
    }
    let lag = match rig.lag(&target) {
        Ok(l) => Some(l),
        Err(e) => {
            report.ferry_failed("the MariaDB lag benchmark", &e);
            None
        }
    };
    Ok(MariaDbCdcFigures { shapes, lag })
}

impl Rig {
    /// The source's binlog head.
    fn head(&self) -> anyhow::Result<MySqlPosition> {
        let out = self.source.sql("", "SHOW MASTER STATUS")?;
        let mut fields = out.split('\t');
        match (
            fields.next(),
            fields.next().and_then(|p| p.trim().parse().ok()),
        ) {
            (Some(file), Some(pos)) => Ok(MySqlPosition::new(file.trim(), pos)),
            _ => bail!("SHOW MASTER STATUS: unexpected output {out:?}"),
        }
    }

    fn checkpoint(&self, target: &Client) -> Option<MySqlPosition> {
        let row = self
            .rt
            .block_on(target.query_opt(
                "SELECT position FROM ferry.checkpoint WHERE stream = 'main'",
                &[],
            ))
            .ok()??;
        row.get::<_, String>(0).parse().ok()
    }

    fn source_checksum(&self) -> anyhow::Result<String> {
        Ok(self
            .source
            .sql(&self.db, &CHECKSUM.replace("{s}", ""))?
            .trim()
            .to_owned())
    }

    fn target_checksum(&self, target: &Client, schema: &str) -> Option<String> {
        let sql = CHECKSUM.replace("{s}", &format!("\"{schema}\"."));
        let row = self.rt.block_on(target.query_one(sql.as_str(), &[])).ok()?;
        row.get::<_, Option<String>>(0)
    }

    fn shape(
        &self,
        shape: Shape,
        changes: u64,
        target: &Client,
        chameleon: &Result<Chameleon, String>,
        report: &mut Report,
    ) -> anyhow::Result<ShapeFigures> {
        let tx = changes.div_ceil(shape.changes_per_tx());
        let start = self.head()?;
        say!(
            "{}: writing {} transactions ({} changes) …",
            shape.label(),
            thousands(tx),
            thousands(tx * shape.changes_per_tx())
        );
        let started = Instant::now();
        self.source.sql(&self.db, &shape.call(tx))?;
        let produce = started.elapsed();
        let end = self.head()?;
        let binlog_bytes = self.binlog_bytes(&start, &end)?;
        say!(
            "  written in {:.1} s, binlog {start} → {end} ({} MiB); raw read …",
            produce.as_secs_f64(),
            binlog_bytes >> 20
        );
        let mut f = ShapeFigures {
            label: shape.label(),
            transactions: tx,
            changes: tx * shape.changes_per_tx(),
            produce,
            binlog_bytes,
            raw_read: None,
            ferry: None,
            chameleon: Err("not run".into()),
        };
        match self.raw_read(&start, &end) {
            Ok(r) => {
                say!("  raw binlog read: {:.1} s", r.0.as_secs_f64());
                f.raw_read = Some(r);
            }
            Err(e) => report
                .failures
                .push(format!("{}: raw binlog read: {e:#}", shape.label())),
        }
        match self.drain(target, &end, f.changes) {
            Ok(d) => f.ferry = Some(d),
            Err(e) => report.ferry_failed(shape.label(), &e),
        }
        f.chameleon = match chameleon {
            Ok(c) => c.replay(self, &format!("{shape:?}")),
            Err(why) => Err(why.clone()),
        };
        match &f.chameleon {
            Ok((d, _)) => say!("  pg_chameleon replayed in {:.1} s", d.as_secs_f64()),
            Err(why) => say!("  pg_chameleon not measured: {why}"),
        }
        Ok(f)
    }

    /// Bytes of binlog between two positions (files listed by SHOW BINARY LOGS).
    fn binlog_bytes(&self, start: &MySqlPosition, end: &MySqlPosition) -> anyhow::Result<u64> {
        let mut total = 0;
        for (file, size) in self.binlogs(start, end)? {
            let from = if file == start.file { start.offset } else { 0 };
            let to = if file == end.file { end.offset } else { size };
            total += to.saturating_sub(from);
        }
        Ok(total)
    }

    /// Binlog files from `start`'s to `end`'s, with their sizes.
    fn binlogs(
        &self,
        start: &MySqlPosition,
        end: &MySqlPosition,
    ) -> anyhow::Result<Vec<(String, u64)>> {
        let out = self.source.sql("", "SHOW BINARY LOGS")?;
        let mut files = Vec::new();
        for line in out.lines() {
            let mut it = line.split('\t');
            let (Some(name), Some(size)) =
                (it.next(), it.next().and_then(|s| s.trim().parse().ok()))
            else {
                continue;
            };
            let p = MySqlPosition::new(name, 0);
            if p >= MySqlPosition::new(&start.file, 0) && p <= MySqlPosition::new(&end.file, 0) {
                files.push((name.to_owned(), size));
            }
        }
        Ok(files)
    }

    /// `mariadb-binlog --read-from-remote-server --raw` from `start` to the
    /// end of `end`'s file (the backlog is its last content): (time, the
    /// server's CPU time meanwhile).
    fn raw_read(
        &self,
        start: &MySqlPosition,
        end: &MySqlPosition,
    ) -> anyhow::Result<(Duration, Duration)> {
        let dir = self.work.path().join("raw");
        std::fs::create_dir_all(&dir)?;
        let files: Vec<String> = self.binlogs(start, end)?.into_iter().map(|f| f.0).collect();
        let mut cmd = Command::new("mariadb-binlog");
        cmd.args([
            "--no-defaults",
            "--read-from-remote-server",
            "--raw",
            "--host=127.0.0.1",
        ])
        .arg(format!("--port={}", self.source.port()))
        .arg(format!("--user={ADMIN_USER}"))
        .arg(format!("--start-position={}", start.offset))
        .arg(format!("--result-file={}/", dir.display()))
        .args(&files)
        .env("MYSQL_PWD", ADMIN_PASSWORD)
        .stdout(Stdio::null());
        let server0 = self.source.pid().map_or(Duration::ZERO, cpu::tree);
        let started = Instant::now();
        run_tool(&mut cmd, "mariadb-binlog --raw")?;
        let took = started.elapsed();
        let server = self
            .source
            .pid()
            .map_or(Duration::ZERO, cpu::tree)
            .saturating_sub(server0);
        let last = dir.join(&end.file);
        let len = std::fs::metadata(&last)
            .with_context(|| format!("mariadb-binlog wrote no {}", last.display()))?
            .len();
        // The server sends the last file from `start` on when it is also the first.
        let skipped = if start.file == end.file {
            start.offset
        } else {
            0
        };
        if len + skipped < end.offset {
            bail!(
                "mariadb-binlog wrote {len} bytes of {} from {skipped}, the backlog ends at {}",
                end.file,
                end.offset
            );
        }
        std::fs::remove_dir_all(&dir)?;
        Ok((took, server))
    }

    /// `ferry run` until its checkpoint reaches `end`; then the target is
    /// compared with the source.
    fn drain(&self, target: &Client, end: &MySqlPosition, changes: u64) -> anyhow::Result<Drain> {
        say!("  ferry: `ferry run` until ferry.checkpoint ≥ {end} …");
        let phase = self.rt.block_on(pipeline_phase(target));
        if !phase
            .as_deref()
            .is_some_and(|p| matches!(p, "catchup" | "stream"))
        {
            bail!(
                "ferry's pipeline is in phase {phase:?}, not streaming: the drain would reload tables instead of applying their changes"
            );
        }
        let servers = || {
            (
                self.source.pid().map_or(Duration::ZERO, cpu::tree),
                self.target.pid().map_or(Duration::ZERO, cpu::tree),
            )
        };
        let (source0, target0) = servers();
        let started = Instant::now();
        let mut bg = spawn_ferry(
            &self.source,
            &self.db,
            &self.target.url(&self.tdb),
            self.work.path(),
            "mariadb-cdc-drain",
        )?;
        let mut rss = None;
        let pid = bg.pid();
        let took = wait_for(
            &mut bg,
            "draining the binlog",
            started,
            DRAIN_TIMEOUT,
            || {
                rss = peak_rss_kb(pid).or(rss);
                self.checkpoint(target).is_some_and(|c| c >= *end)
            },
        );
        let (source1, target1) = servers();
        let cpu = DrainCpu {
            source: source1.saturating_sub(source0),
            target: target1.saturating_sub(target0),
            ferry: cpu::process(pid),
        };
        let rss = peak_rss_kb(pid).or(rss);
        let split = if took.is_ok() {
            apply_session_and_ferry(&self.rt, target, pid)
        } else {
            Vec::new()
        };
        let took = took?;
        stop_ferry(bg)?;
        say!(
            "  ferry drained {} changes in {:.1} s; CPU: MariaDB {:.1} s, target {:.1} s, ferry {:.1} s",
            thousands(changes),
            took.as_secs_f64(),
            cpu.source.as_secs_f64(),
            cpu.target.as_secs_f64(),
            cpu.ferry.as_secs_f64()
        );
        let (s, t) = (
            self.source_checksum()?,
            self.target_checksum(target, &self.db),
        );
        if t.as_deref() != Some(s.as_str()) {
            bail!(
                "after the drain source and target differ (accounts count/sum, history count/sum, tellers sum, branches sum): source {s}, target {t:?}"
            );
        }
        Ok(Drain {
            took,
            rss,
            cpu,
            split,
        })
    }

    /// ferry streaming while `paced` writes at [`LAG_TPS`]: (p50, p99, max, samples, changes/s).
    fn lag(&self, target: &Client) -> anyhow::Result<(f64, f64, f64, usize, f64)> {
        say!("MariaDB lag: ferry streaming, a writer at {LAG_TPS} tx/s for {LAG_SECONDS} s …");
        let mut bg = spawn_ferry(
            &self.source,
            &self.db,
            &self.target.url(&self.tdb),
            self.work.path(),
            "mariadb-cdc-lag",
        )?;
        let head = self.head()?;
        wait_for(
            &mut bg,
            "catching up",
            Instant::now(),
            DRAIN_TIMEOUT,
            || self.checkpoint(target).is_some_and(|c| c >= head),
        )?;
        let mut writer = self.source.client_command(&self.db);
        writer
            .arg("-e")
            .arg(format!("CALL paced({LAG_TPS}, {LAG_SECONDS})"));
        let mut writer = Background::spawn(writer, &self.work.path().join("paced.log"))?;
        let started = Instant::now();
        let mut open: Vec<(Instant, MySqlPosition)> = Vec::new();
        let mut lags = Vec::new();
        let mut writing = true;
        while writing || !open.is_empty() {
            if writing {
                let at = Instant::now();
                open.push((at, self.head()?));
            }
            let applied = self.checkpoint(target);
            open.retain(|(at, h)| {
                let closed = applied.as_ref().is_some_and(|a| a >= h);
                if closed {
                    lags.push(at.elapsed().as_secs_f64());
                }
                !closed
            });
            if writing && let Some(code) = writer.exited()? {
                if code != Some(0) {
                    bail!(
                        "the paced writer exited {code:?}: {}",
                        tail(&writer.log(), 10)
                    );
                }
                writing = false;
            }
            if let Some(code) = bg.exited()? {
                bail!(
                    "ferry exited ({code:?}) under the steady writer\n{}",
                    tail(&bg.log(), 40)
                );
            }
            if started.elapsed() > Duration::from_secs(LAG_SECONDS + 300) {
                bail!("ferry never caught up with the steady writer (lag samples still open)");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let wrote = started.elapsed();
        stop_ferry(bg)?;
        lags.sort_by(f64::total_cmp);
        if lags.is_empty() {
            bail!("no lag samples");
        }
        let pick = |p: f64| lags[((lags.len() as f64 - 1.0) * p).round() as usize];
        let figures = (
            pick(0.5),
            pick(0.99),
            *lags.last().unwrap_or(&0.0),
            lags.len(),
            (LAG_TPS * LAG_SECONDS * 4) as f64 / wrote.as_secs_f64(),
        );
        say!(
            "  lag p50 {:.3} s, p99 {:.3} s, max {:.3} s ({} samples)",
            figures.0,
            figures.1,
            figures.2,
            figures.3
        );
        Ok(figures)
    }
}

/// pg_chameleon with its own target database and home directory.
struct Chameleon {
    bin: PathBuf,
    home: PathBuf,
    /// Its home (a directory of its own: it may run as `nobody`).
    _dir: tempfile::TempDir,
    client: Client,
}

impl Chameleon {
    /// Install (first use), configure, `create_replica_schema`,
    /// `add_source`, `init_replica`; why not, as text.
    fn prepare(rig: &Rig) -> Result<Chameleon, String> {
        let run = || -> anyhow::Result<Chameleon> {
            let bin = install()?;
            let dir = tempfile::tempdir()?;
            let home = dir.path().to_owned();
            let conf = home.join(".pg_chameleon/configuration");
            std::fs::create_dir_all(&conf)?;
            let tdb = rig.target.create_database("cdc_chameleon")?;
            std::fs::write(
                conf.join("default.yml"),
                format!(
                    "---
pid_dir: '{home}/pid/'
log_dir: '{home}/logs/'
log_dest: stdout
log_level: info
log_days_keep: 1
rollbar_key: ''
rollbar_env: ''
type_override: {{}}
pg_conn:
  host: \"127.0.0.1\"
  port: \"{pg_port}\"
  user: \"{ADMIN_USER}\"
  password: \"{ADMIN_PASSWORD}\"
  database: \"{tdb}\"
  charset: \"utf8\"
sources:
  mysql:
    db_conn:
      host: \"127.0.0.1\"
      port: \"{my_port}\"
      user: \"{ADMIN_USER}\"
      password: \"{ADMIN_PASSWORD}\"
      charset: 'utf8'
      connect_timeout: 10
    schema_mappings:
      {db}: {CHAMELEON_SCHEMA}
    limit_tables:
    skip_tables:
    grant_select_to:
    lock_timeout: \"120s\"
    my_server_id: 4242
    replica_batch_size: 10000
    replay_max_rows: 10000
    batch_retention: '1 day'
    copy_max_memory: \"300M\"
    copy_mode: 'file'
    out_dir: '{home}'
    sleep_loop: 1
    on_error_replay: exit
    on_error_read: exit
    auto_maintenance: \"disabled\"
    gtid_enable: false
    type: mysql
    skip_events:
      insert:
      delete:
      update:
    keep_existing_schema: No
    net_read_timeout: 600
",
                    home = home.display(),
                    pg_port = rig.target.port(),
                    my_port = rig.source.port(),
                    db = rig.db,
                ),
            )?;
            if as_root() {
                // pg_chameleon refuses to run as root: its files go to `nobody`.
                for p in [
                    &home,
                    &home.join(".pg_chameleon"),
                    &conf,
                    &conf.join("default.yml"),
                ] {
                    std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY))?;
                }
            }
            let c = Chameleon {
                _dir: dir,
                client: rig
                    .rt
                    .block_on(ferry_e2e::pgsync::connect(&rig.target.url(&tdb)))?,
                bin,
                home,
            };
            say!("  pg_chameleon: create_replica_schema, add_source, init_replica …");
            // It reports its errors on stdout, not always with an exit
            // status: the failing step's output follows the earlier ones'.
            let mut log = String::new();
            for step in ["create_replica_schema", "add_source", "init_replica"] {
                let out = c.command(step).output()?;
                log.push_str(&format!("[{step}] "));
                log.push_str(&String::from_utf8_lossy(&out.stdout));
                log.push_str(&String::from_utf8_lossy(&out.stderr));
                if !out.status.success() {
                    bail!("chameleon {step} exited {}: {}", out.status, tail(&log, 20));
                }
            }
            Ok(c)
        };
        run().map_err(|e| one_line(&format!("{e:#}")))
    }

    fn command(&self, step: &str) -> Command {
        let mut cmd = if as_root() {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={NOBODY}"))
                .arg(format!("--regid={NOBODY}"))
                .arg("--clear-groups")
                .arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        cmd.args([step, "--config", "default", "--debug"]);
        // create_replica_schema refuses a named source (it checks the source first).
        if step != "create_replica_schema" {
            cmd.args(["--source", "mysql"]);
        }
        cmd.env("HOME", &self.home);
        cmd
    }

    /// `start_replica` until its tables match the source; then stopped.
    fn replay(&self, rig: &Rig, what: &str) -> Result<(Duration, Duration), String> {
        let run = || -> anyhow::Result<(Duration, Duration)> {
            let want = rig.source_checksum()?;
            let started = Instant::now();
            let mut bg = Background::spawn(
                self.command("start_replica"),
                &rig.work.path().join(format!("chameleon-{what}.log")),
            )?;
            let result = wait_for_process(
                &mut bg,
                "pg_chameleon's replica",
                "replaying (its tables do not match the source yet)",
                started,
                DRAIN_TIMEOUT,
                POLL,
                || {
                    rig.target_checksum(&self.client, CHAMELEON_SCHEMA)
                        .as_deref()
                        == Some(want.as_str())
                },
            );
            // Its reader and replayer processes included.
            let cpu = cpu::tree(bg.pid());
            // SIGINT: its handler ends both processes and records "stopped".
            let _ = bg.signal_and_wait(libc::SIGINT, Duration::from_secs(30));
            let took = result?;
            Ok((took, cpu))
        };
        run().map_err(|e| one_line(&format!("{e:#}")))
    }
}

/// uid/gid of `nobody`, which pg_chameleon runs as when the bench runs as root.
const NOBODY: u32 = 65534;

/// Whether this process runs as root.
fn as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `text` on one line (a report table cell).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Poll every [`POLL`] until `probe`; error if the process exits first.
/// `target/pg_chameleon/bin/chameleon`, installed into that venv on first use.
fn install() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = manifest
        .parent()
        .unwrap_or(manifest)
        .join("target/pg_chameleon");
    let bin = venv.join("bin/chameleon");
    if bin.exists() {
        return Ok(bin);
    }
    say!(
        "  installing {CHAMELEON} into {} (first use) …",
        venv.display()
    );
    run_tool(
        // The system interpreter: a venv of a per-user one (pyenv under
        // /root) cannot run as `nobody`.
        Command::new(if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        })
        .arg("-m")
        .arg("venv")
        .arg(&venv),
        "python3 -m venv",
    )?;
    run_tool(
        Command::new(venv.join("bin/pip")).args(["install", "-q", CHAMELEON]),
        "pip install pg_chameleon",
    )?;
    Ok(bin)
}
