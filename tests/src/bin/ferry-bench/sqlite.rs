//! Benchmark 5, the SQLite source: full load of a generated file against
//! pgloader on the same file in the same run, with the raw SQLite read rate
//! and the target's raw COPY-in rate as ceilings; then what change capture
//! costs the application (its write rate without and with ferry's
//! triggers), the change-log drain rate, and end-to-end lag under the
//! application's maximum write rate.
//!
//! The file: `items` (SCALE×100k rows: integer key, text, integers, a real,
//! ISO-8601 text dates, 0/1 flags) and `docs` (SCALE×10k rows: a few KiB of
//! text and a JSON text column), WAL mode.
//!
//! The application's rate is taken three times: before ferry installs
//! anything, with the triggers installed while ferry streams, and with the
//! triggers but ferry stopped (the triggers' own cost, apart from ferry's
//! reads and trims competing for the machine and the file).
//!
//! The application: one transaction = insert one item, update another
//! item's quantity, delete every 10th inserted item again; as fast as one
//! connection can (`synchronous = NORMAL`, WAL), with its prepared
//! statements cached as drivers and ORMs do. The same application without
//! a statement cache is measured too: SQLite compiles a table's triggers
//! into every statement it prepares, so there the triggers cost far more. Lag is measured from
//! outside: every 100 ms the change log's head is noted with the time, and
//! the moment ferry's checkpoint in the target passes that head closes the
//! sample (end to end: written → committed in the target).
//!
//! ferry's load time is split in three from outside (the target's state,
//! polled every 50 ms): until the load phase starts (start-up, capture
//! installed, type sampling, the snapshot, the schema), the COPY of
//! every chunk (until `ferry.chunks` holds them all), and the rest
//! (post-data: keys and indexes; catch-up). The COPY share alone is what
//! compares with the COPY-in ceiling. `FERRY_BENCH_BASELINE_BIN=PATH` also
//! loads a copy of the file with another `ferry` binary, just before the
//! one under test, for paired before/after figures on a shared machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::Connection;

use crate::harness::{Bench, peak_rss_kb, run_tool, stop_ferry, wait_for};
use crate::report::{mib, rate, thousands};

const TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// How long each application run lasts.
const APP_RUN: Duration = Duration::from_secs(10);

/// What the SQLite benchmark measured.
#[derive(Debug, Default)]
pub(crate) struct SqliteFigures {
    pub(crate) rows: u64,
    pub(crate) file_bytes: u64,
    pub(crate) read: Option<Duration>,
    pub(crate) copy_in: Option<Duration>,
    pub(crate) pgloader: Option<Duration>,
    pub(crate) pgloader_note: Option<String>,
    pub(crate) ferry: Option<Duration>,
    pub(crate) ferry_split: Option<LoadSplit>,
    pub(crate) ferry_rss_kb: Option<u64>,
    /// `FERRY_BENCH_BASELINE_BIN`: that binary and its load.
    pub(crate) baseline: Option<(PathBuf, Duration, Option<LoadSplit>)>,
    /// Application transactions per second without and with capture.
    pub(crate) app_plain_tps: Option<f64>,
    pub(crate) app_captured_tps: Option<f64>,
    /// ... with the triggers installed but ferry stopped (the triggers' own cost).
    pub(crate) app_triggers_tps: Option<f64>,
    /// Without prepared-statement caching: without and with the triggers.
    pub(crate) app_plain_uncached_tps: Option<f64>,
    pub(crate) app_triggers_uncached_tps: Option<f64>,
    /// Change-log entries drained and how long it took.
    pub(crate) drain: Option<(u64, Duration)>,
    /// End-to-end lag samples under the maximum write rate (seconds).
    pub(crate) lag_p50: Option<f64>,
    pub(crate) lag_p99: Option<f64>,
    pub(crate) lag_max: Option<f64>,
}

impl SqliteFigures {
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let per_s = |d: Option<Duration>| d.map(|d| self.rows as f64 / d.as_secs_f64());
        let ferry = per_s(self.ferry);
        let line = |out: &mut String, what: &str, d: Option<Duration>, note: &str| {
            let secs = d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
            let r = per_s(d).map_or("-".into(), rate);
            let ratio = match (ferry, per_s(d)) {
                (Some(f), Some(x)) if x > 0.0 => format!("{:.2}×", f / x),
                _ => "-".into(),
            };
            let _ = writeln!(out, "| {what} | {secs} | {r} | {ratio} | {note} |");
        };
        let _ = writeln!(
            out,
            "\n### SQLite source: full load of {} rows ({} file)\n",
            thousands(self.rows),
            mib(Some(self.file_bytes / 1024))
        );
        let _ = writeln!(
            out,
            "| | time | rows/s | ferry is | note |\n|---|---|---|---|---|"
        );
        line(
            out,
            "raw SQLite read (ceiling)",
            self.read,
            "every value of every row, one connection",
        );
        line(
            out,
            "raw COPY-in to the target (ceiling)",
            self.copy_in,
            "binary COPY of the same rows into tables without indexes",
        );
        line(
            out,
            "pgloader",
            self.pgloader,
            self.pgloader_note
                .as_deref()
                .unwrap_or("`pgloader --dynamic-space-size 4096 sqlite://… postgresql://…`"),
        );
        if let Some((bin, took, split)) = &self.baseline {
            line(
                out,
                "baseline ferry run (until catch-up)",
                Some(*took),
                &format!(
                    "{}{}",
                    bin.display(),
                    split.map_or(String::new(), |s| s.note(self.rows))
                ),
            );
        }
        line(
            out,
            "ferry run (until catch-up)",
            self.ferry,
            &format!(
                "peak RSS {}{}",
                mib(self.ferry_rss_kb),
                self.ferry_split
                    .map_or(String::new(), |s| s.note(self.rows))
            ),
        );
        if let Some(split) = self.ferry_split {
            // Its own ratio is against the COPY-in ceiling, not ferry's total.
            let of_ceiling = self.copy_in.map_or("-".into(), |c| {
                format!("{:.2}×", c.as_secs_f64() / split.copy.as_secs_f64())
            });
            let _ = writeln!(
                out,
                "| ferry's COPY of the chunks alone | {:.1} s | {} | - | {of_ceiling} of the COPY-in ceiling; from the load phase's start until every chunk is marked done |",
                split.copy.as_secs_f64(),
                rate(self.rows as f64 / split.copy.as_secs_f64()),
            );
        }
        let tps = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        let _ = writeln!(out, "\n| change capture | figure |\n|---|---|");
        let _ = writeln!(
            out,
            "| application tx/s without ferry | {} |",
            tps(self.app_plain_tps)
        );
        let _ = writeln!(
            out,
            "| application tx/s with ferry's triggers, ferry stopped | {} |",
            tps(self.app_triggers_tps)
        );
        let _ = writeln!(
            out,
            "| application tx/s with ferry's triggers, streaming | {} |",
            tps(self.app_captured_tps)
        );
        if let (Some(a), Some(b)) = (self.app_plain_tps, self.app_captured_tps) {
            let _ = writeln!(
                out,
                "| capture cost on the application (streaming) | {:.0}% of its rate |",
                (1.0 - b / a) * 100.0
            );
        }
        let _ = writeln!(
            out,
            "| without a prepared-statement cache: tx/s without → with the triggers | {} → {} |",
            tps(self.app_plain_uncached_tps),
            tps(self.app_triggers_uncached_tps)
        );
        if let Some((n, d)) = self.drain {
            let _ = writeln!(
                out,
                "| change-log drain | {} entries in {:.1} s = {} entries/s |",
                thousands(n),
                d.as_secs_f64(),
                rate(n as f64 / d.as_secs_f64())
            );
        }
        let secs = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3} s"));
        let _ = writeln!(
            out,
            "| end-to-end lag at the application's maximum rate | p50 {}, p99 {}, max {} |",
            secs(self.lag_p50),
            secs(self.lag_p99),
            secs(self.lag_max)
        );
    }
}

/// Where a `ferry run`'s time until catch-up went (seen from outside).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadSplit {
    /// Start-up, capture, sampling, snapshot copy, schema.
    pub(crate) before: Duration,
    /// Every chunk's COPY.
    pub(crate) copy: Duration,
    /// Post-data and catch-up.
    pub(crate) after: Duration,
}

impl LoadSplit {
    fn note(&self, rows: u64) -> String {
        format!(
            "; {:.1} s before the load, {:.1} s COPY ({}), {:.1} s post-data and catch-up",
            self.before.as_secs_f64(),
            self.copy.as_secs_f64(),
            rate(rows as f64 / self.copy.as_secs_f64()),
            self.after.as_secs_f64()
        )
    }
}

/// The pipeline's phase and whether every planned chunk is loaded.
async fn load_progress(target: &tokio_postgres::Client) -> Option<(String, bool)> {
    let row = target
        .query_opt(
            "SELECT phase, (SELECT count(*) FROM ferry.chunks) >= \
               (SELECT coalesce(sum(chunks_total), 0) FROM ferry.tables) \
               AND EXISTS (SELECT FROM ferry.tables) FROM ferry.pipeline",
            &[],
        )
        .await
        .ok()??;
    Some((row.get(0), row.get(1)))
}

/// Deterministic rows of the generated file.
fn generate(path: &Path, items: u64, docs: u64) -> anyhow::Result<()> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT NOT NULL, name TEXT, qty INTEGER NOT NULL, \
           price REAL, created_at TEXT, active INTEGER NOT NULL);
         CREATE INDEX items_sku ON items (sku);
         CREATE TABLE docs (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT, meta TEXT);",
    )?;
    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare(
            "INSERT INTO items (id, sku, name, qty, price, created_at, active) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for i in 1..=items {
            let day = i % 28 + 1;
            ins.execute(rusqlite::params![
                i as i64,
                format!("SKU-{i:08}"),
                format!("item number {i}"),
                (i % 1000) as i64,
                (i % 10_000) as f64 / 100.0,
                format!(
                    "2024-{:02}-{day:02} 12:{:02}:{:02}",
                    i % 12 + 1,
                    i % 60,
                    (i / 60) % 60
                ),
                (i % 2) as i64,
            ])?;
        }
        let mut ins =
            tx.prepare("INSERT INTO docs (id, title, body, meta) VALUES (?1, ?2, ?3, ?4)")?;
        let para =
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. ";
        for i in 1..=docs {
            ins.execute(rusqlite::params![
                i as i64,
                format!("document {i}"),
                para.repeat(30 + (i % 20) as usize),
                format!(r#"{{"n": {i}, "tags": ["a", "b", "c"], "owner": {{"id": {}, "name": "user {}"}}}}"#, i % 97, i % 97),
            ])?;
        }
    }
    tx.commit()?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok(())
}

/// Read every value of every row once.
fn raw_read(path: &Path) -> anyhow::Result<(u64, Duration)> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let started = Instant::now();
    let mut rows = 0u64;
    let mut bytes = 0usize;
    for table in ["items", "docs"] {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}"))?;
        let n = stmt.column_count();
        let mut it = stmt.query([])?;
        while let Some(row) = it.next()? {
            for i in 0..n {
                bytes += match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        t.len()
                    }
                    _ => 8,
                };
            }
            rows += 1;
        }
    }
    std::hint::black_box(bytes);
    Ok((rows, started.elapsed()))
}

/// The application's transaction `i` (see the module note). `cached`:
/// with prepared statements kept, as ORMs and drivers keep them; without,
/// SQLite compiles the triggers into every statement it prepares.
fn app_txn(conn: &mut Connection, i: u64, items: u64, cached: bool) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let run = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<usize> {
        if cached {
            tx.prepare_cached(sql)?.execute(params)
        } else {
            tx.execute(sql, params)
        }
    };
    let id = (items + 1_000_000 + i) as i64;
    run(
        "INSERT INTO items (id, sku, name, qty, price, created_at, active) VALUES (?1, ?2, 'app', 1, 1.5, '2025-01-01 00:00:00', 1)",
        &[&id, &format!("APP-{i}")],
    )?;
    run(
        "UPDATE items SET qty = qty + 1 WHERE id = ?1",
        &[&(((i * 7919) % items + 1) as i64)],
    )?;
    if i.is_multiple_of(10) {
        run("DELETE FROM items WHERE id = ?1", &[&id])?;
    }
    tx.commit()
}

fn app_connection(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Run the application for `for_` (or `count` transactions); returns how
/// many it committed and how long it took.
fn run_app(
    path: &Path,
    first: u64,
    items: u64,
    limit: Limit,
    stop: Option<&AtomicBool>,
    cached: bool,
) -> anyhow::Result<(u64, Duration)> {
    let mut conn = app_connection(path)?;
    let started = Instant::now();
    let mut n = 0;
    loop {
        let done = match limit {
            Limit::For(d) => started.elapsed() >= d,
            Limit::Count(c) => n >= c,
        };
        if done || stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Ok((n, started.elapsed()));
        }
        app_txn(&mut conn, first + n, items, cached)
            .with_context(|| format!("application transaction {}", first + n))?;
        n += 1;
    }
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    For(Duration),
    Count(u64),
}

fn change_log_head(path: &Path) -> u64 {
    Connection::open(path)
        .and_then(|c| {
            c.query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = '_ferry_changes'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map_or(0, |s| s.max(0) as u64)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

impl Bench {
    /// Benchmark 5 (see the module note). `items`/`docs`: rows to generate.
    pub(crate) fn sqlite_run(&self, items: u64, docs: u64) -> anyhow::Result<SqliteFigures> {
        let path = self.work.path().join("bench.sqlite");
        say!(
            "SQLite source: generating {} items and {} docs …",
            thousands(items),
            thousands(docs)
        );
        generate(&path, items, docs)?;
        // The application alone, before ferry installs anything; every
        // reader below then sees the same rows.
        let (n, d) = run_app(&path, 0, items, Limit::For(APP_RUN), None, true)?;
        let (un, ud) = run_app(&path, 40_000_000, items, Limit::For(APP_RUN), None, false)?;
        Connection::open(&path)?.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        let counts = self.sqlite_counts(&path)?;
        let mut f = SqliteFigures {
            rows: counts.iter().map(|(_, n)| n).sum(),
            file_bytes: std::fs::metadata(&path)?.len(),
            app_plain_tps: Some(n as f64 / d.as_secs_f64()),
            app_plain_uncached_tps: Some(un as f64 / ud.as_secs_f64()),
            ..SqliteFigures::default()
        };
        let (read_rows, read) = raw_read(&path)?;
        if read_rows != f.rows {
            bail!("raw read saw {read_rows} rows, the file has {}", f.rows);
        }
        f.read = Some(read);
        say!("  raw SQLite read: {:.1} s", read.as_secs_f64());
        match self.pgloader(&path, &counts) {
            Ok(d) => {
                say!("  pgloader: {:.1} s", d.as_secs_f64());
                f.pgloader = Some(d);
            }
            Err(e) => {
                say!("  pgloader: not measured: {e:#}");
                // The first lines (pgloader's own dump can be long).
                let text = format!("{e:#}");
                let head: Vec<&str> = text.lines().take(2).collect();
                f.pgloader_note = Some(format!("not measured: {}", head.join(" ")));
            }
        }
        if let Some(bin) = std::env::var_os("FERRY_BENCH_BASELINE_BIN").map(PathBuf::from) {
            match self.sqlite_baseline(&path, &counts, &bin) {
                Ok((took, split)) => f.baseline = Some((bin, took, split)),
                Err(e) => say!("  baseline ferry: not measured: {e:#}"),
            }
        }
        let db = self.target.create_database("bench_sqlite_ferry")?;
        self.checkpoint_both()?;
        let url = format!("sqlite://{}", path.display());
        let started = Instant::now();
        let mut bg = self.spawn_sqlite_ferry(&url, &db, "sqlite-load", None)?;
        let (took, split) = self.timed_load(&mut bg, &db, started)?;
        f.ferry_rss_kb = peak_rss_kb(bg.pid());
        for (t, n) in counts {
            let got = self.count_rows(&self.target, &db, t)? as u64;
            if got != n {
                bail!("ferry loaded {got} rows of {t}, the file has {n}");
            }
        }
        f.ferry = Some(took);
        f.ferry_split = split;
        say!("  ferry: {:.1} s", took.as_secs_f64());
        f.copy_in = Some(self.copy_in_ceiling(&db)?);
        self.capture_figures(&path, &url, &db, items, bg, &mut f)?;
        Ok(f)
    }

    /// Wait until ferry catches up; its time and where it went.
    fn timed_load(
        &self,
        bg: &mut ferry_e2e::Background,
        db: &str,
        started: Instant,
    ) -> anyhow::Result<(Duration, Option<LoadSplit>)> {
        let target = self
            .rt
            .block_on(ferry_e2e::pgsync::connect(&self.target.url(db)))?;
        let (mut load_at, mut copied_at) = (None, None);
        let took = wait_for(bg, "loading the SQLite file", started, TIMEOUT, || {
            let Some((phase, all_copied)) = self.rt.block_on(load_progress(&target)) else {
                return false;
            };
            if phase == "load" && load_at.is_none() {
                load_at = Some(started.elapsed());
            }
            if all_copied && copied_at.is_none() {
                copied_at = Some(started.elapsed());
            }
            matches!(phase.as_str(), "catchup" | "stream")
        })?;
        let split = match (load_at, copied_at) {
            (Some(l), Some(c)) if c > l => Some(LoadSplit {
                before: l,
                copy: c - l,
                after: took.saturating_sub(c),
            }),
            _ => None,
        };
        Ok((took, split))
    }

    /// `bin` loads a copy of the file into a database of its own; its time.
    fn sqlite_baseline(
        &self,
        path: &Path,
        counts: &[(&str, u64)],
        bin: &Path,
    ) -> anyhow::Result<(Duration, Option<LoadSplit>)> {
        let copy = self.work.path().join("bench-baseline.sqlite");
        std::fs::copy(path, &copy).context("copying the file for the baseline")?;
        let db = self.target.create_database("bench_sqlite_baseline")?;
        self.checkpoint_both()?;
        let url = format!("sqlite://{}", copy.display());
        let started = Instant::now();
        let mut bg = self.spawn_sqlite_ferry(&url, &db, "sqlite-baseline", Some(bin))?;
        let (took, split) = self.timed_load(&mut bg, &db, started)?;
        for (t, n) in counts {
            let got = self.count_rows(&self.target, &db, t)? as u64;
            if got != *n {
                bail!("the baseline loaded {got} rows of {t}, the file has {n}");
            }
        }
        say!("  baseline ferry: {:.1} s", took.as_secs_f64());
        stop_ferry(bg)?;
        // FORCE: the probe's connection may not have closed yet.
        if let Err(e) = self
            .target
            .psql("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        {
            say!("  baseline ferry: its database was not dropped: {e:#}");
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", copy.display()));
        }
        Ok((took, split))
    }

    fn sqlite_counts(&self, path: &Path) -> anyhow::Result<[(&'static str, u64); 2]> {
        let conn = Connection::open(path)?;
        let count = |t: &str| -> anyhow::Result<u64> {
            let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?;
            Ok(n as u64)
        };
        Ok([("items", count("items")?), ("docs", count("docs")?)])
    }

    fn spawn_sqlite_ferry(
        &self,
        url: &str,
        db: &str,
        what: &str,
        bin: Option<&Path>,
    ) -> anyhow::Result<ferry_e2e::Background> {
        let mut cmd = self.run_command(url, db, bin)?;
        cmd.env("FERRY_CONSOLE_LISTEN", "off");
        self.spawn_logged(cmd, what)
    }

    /// pgloader into a fresh database; its time, after checking the counts.
    fn pgloader(&self, path: &Path, counts: &[(&str, u64)]) -> anyhow::Result<Duration> {
        let bin = PathBuf::from("/usr/bin/pgloader");
        if !bin.exists() {
            bail!("/usr/bin/pgloader is not installed (Debian package pgloader; `make setup`)");
        }
        let db = self.target.create_database("bench_sqlite_pgloader")?;
        self.checkpoint_both()?;
        let url = format!(
            "postgresql://{}:{}@127.0.0.1:{}/{db}",
            ferry_testkit::ADMIN_USER,
            ferry_testkit::ADMIN_PASSWORD,
            self.target.port()
        );
        let mut cmd = Command::new(bin);
        cmd.args(["--dynamic-space-size", "4096", "--no-ssl-cert-verification"])
            .arg(format!("sqlite://{}", path.display()))
            .arg(&url)
            .current_dir(self.work.path())
            .stdin(Stdio::null());
        let started = Instant::now();
        run_tool(&mut cmd, "pgloader")?;
        let took = started.elapsed();
        for (t, n) in counts {
            let got = self.count_rows(&self.target, &db, t)? as u64;
            if got != *n {
                bail!("pgloader loaded {got} rows of {t}, the file has {n}");
            }
        }
        self.target
            .psql("postgres", &format!("DROP DATABASE \"{db}\""))?;
        Ok(took)
    }

    /// Binary COPY of ferry's loaded rows into index-less copies of its tables.
    fn copy_in_ceiling(&self, db: &str) -> anyhow::Result<Duration> {
        let mut total = Duration::ZERO;
        for t in ["items", "docs"] {
            let file = self.work.path().join(format!("{t}.copy"));
            let mut out = self.target.psql_command(db);
            out.args(["-c", &format!("COPY public.{t} TO STDOUT (FORMAT binary)")])
                .stdout(std::fs::File::create(&file)?);
            let status = out.status()?;
            if !status.success() {
                bail!("COPY {t} TO STDOUT failed");
            }
            self.target.psql(
                db,
                &format!("CREATE TABLE public.raw_{t} (LIKE public.{t})"),
            )?;
            self.target.psql("postgres", "CHECKPOINT")?;
            let mut into = self.target.psql_command(db);
            into.args([
                "-c",
                &format!("COPY public.raw_{t} FROM STDIN (FORMAT binary)"),
            ])
            .stdin(std::fs::File::open(&file)?);
            let started = Instant::now();
            let out = into.output()?;
            total += started.elapsed();
            if !out.status.success() {
                bail!(
                    "COPY raw_{t} FROM STDIN failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            self.target
                .psql(db, &format!("DROP TABLE public.raw_{t}"))?;
            std::fs::remove_file(&file)?;
        }
        say!("  raw COPY-in: {:.1} s", total.as_secs_f64());
        Ok(total)
    }

    /// Capture cost, lag under the maximum rate, then the drain of a backlog.
    fn capture_figures(
        &self,
        path: &Path,
        url: &str,
        db: &str,
        items: u64,
        mut bg: ferry_e2e::Background,
        f: &mut SqliteFigures,
    ) -> anyhow::Result<()> {
        let target = self
            .rt
            .block_on(ferry_e2e::pgsync::connect(&self.target.url(db)))?;
        let checkpoint = || -> u64 {
            self.rt
                .block_on(target.query_opt("SELECT position::int8 FROM ferry.checkpoint", &[]))
                .ok()
                .flatten()
                .map_or(0, |r| r.get::<_, i64>(0).max(0) as u64)
        };
        wait_for(&mut bg, "catching up", Instant::now(), TIMEOUT, || {
            checkpoint() >= change_log_head(path)
        })?;
        // The application at full speed while ferry streams; lag sampled outside.
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (p, s, c) = (path.to_owned(), stop.clone(), committed.clone());
        let app = std::thread::spawn(move || {
            let r = run_app(&p, 10_000_000, items, Limit::For(APP_RUN), Some(&s), true);
            if let Ok((n, _)) = &r {
                c.store(*n, Ordering::Relaxed);
            }
            r
        });
        let mut open: Vec<(Instant, u64)> = Vec::new();
        let mut lags = Vec::new();
        let started = Instant::now();
        while !app.is_finished() || !open.is_empty() {
            if !app.is_finished() {
                open.push((Instant::now(), change_log_head(path)));
            }
            let applied = checkpoint();
            open.retain(|(at, head)| {
                let closed = applied >= *head;
                if closed {
                    lags.push(at.elapsed().as_secs_f64());
                }
                !closed
            });
            if started.elapsed() > APP_RUN + Duration::from_secs(300) {
                bail!("ferry never caught up with the application (lag samples still open)");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (n, d) = app
            .join()
            .map_err(|_| anyhow::anyhow!("application thread panicked"))??;
        f.app_captured_tps = Some(n as f64 / d.as_secs_f64());
        lags.sort_by(f64::total_cmp);
        f.lag_p50 = percentile(&lags, 0.5);
        f.lag_p99 = percentile(&lags, 0.99);
        f.lag_max = lags.last().copied();
        say!(
            "  application: {:.0} tx/s without ferry, {:.0} with; lag p99 {:.3} s",
            f.app_plain_tps.unwrap_or(0.0),
            f.app_captured_tps.unwrap_or(0.0),
            f.lag_p99.unwrap_or(f64::NAN)
        );
        // The triggers alone (ferry stopped): their own cost.
        stop_ferry(bg)?;
        let (n, d) = run_app(path, 30_000_000, items, Limit::For(APP_RUN), None, true)?;
        f.app_triggers_tps = Some(n as f64 / d.as_secs_f64());
        let (n, d) = run_app(path, 50_000_000, items, Limit::For(APP_RUN), None, false)?;
        f.app_triggers_uncached_tps = Some(n as f64 / d.as_secs_f64());
        // A backlog written while ferry is down, then drained.
        let before = change_log_head(path);
        run_app(path, 20_000_000, items, Limit::Count(20_000), None, true)?;
        let head = change_log_head(path);
        let started = Instant::now();
        let mut bg = self.spawn_sqlite_ferry(url, db, "sqlite-drain", None)?;
        let took = wait_for(&mut bg, "draining the change log", started, TIMEOUT, || {
            checkpoint() >= head
        })?;
        f.drain = Some((head - before, took));
        say!(
            "  drain: {} entries in {:.1} s",
            thousands(head - before),
            took.as_secs_f64()
        );
        stop_ferry(bg)?;
        Ok(())
    }
}
