//! Benchmark 1, full load: the raw `pg_dump` + binary `COPY` pipe + `pg_restore`
//! reference, then `ferry run` into a fresh database until it streams.

use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_e2e::pgsync::{connect, insert_lsn};

use crate::harness::{
    Bench, DRAIN_TIMEOUT, MARKER_SQL, applied_at_least, peak_rss_kb, pipeline_phase, run_tool,
    stop_ferry, wait_for,
};
use crate::report::Report;
use crate::report::{mib, rate, thousands};

const LOAD_TIMEOUT: Duration = Duration::from_secs(45 * 60);

#[derive(Debug)]
pub(crate) struct LoadFigures {
    pub(crate) tables: Vec<(String, i64)>,
    pub(crate) bytes: u64,
    /// The raw pipe's time (`None` with `--cdc-only`).
    pub(crate) raw: Option<Duration>,
    pub(crate) ferry: Option<Duration>,
    ferry_rss_kb: Option<u64>,
    /// The loaded ferry target database, if ferry got as far as streaming.
    pub(crate) ferry_db: Option<String>,
}

impl Bench {
    pub(crate) fn full_load(
        &self,
        cdc_only: bool,
        report: &mut Report,
    ) -> anyhow::Result<LoadFigures> {
        let tables = self.source_tables()?;
        let bytes = self.source_bytes()?;
        let raw = if cdc_only {
            None
        } else {
            let raw = self.raw_load(&tables)?;
            say!("  raw pipe: {:.1} s", raw.as_secs_f64());
            Some(raw)
        };
        let mut figures = LoadFigures {
            tables,
            bytes,
            raw,
            ferry: None,
            ferry_rss_kb: None,
            ferry_db: None,
        };
        match self.ferry_load(&figures.tables) {
            Ok((took, rss, db)) => {
                say!("  ferry: {:.1} s", took.as_secs_f64());
                figures.ferry = Some(took);
                figures.ferry_rss_kb = rss;
                figures.ferry_db = Some(db);
            }
            Err(e) => report.ferry_failed("full load", &e),
        }
        Ok(figures)
    }

    /// Reference: pre-data schema, binary COPY pipes (2 at a time), post-data with 2 jobs.
    fn raw_load(&self, tables: &[(String, i64)]) -> anyhow::Result<Duration> {
        let db = self.target.create_database("bench_raw")?;
        self.checkpoint_both()?;
        say!(
            "full load, reference: pg_dump pre-data → COPY binary pipes (2 workers) → post-data (-j 2) …",
        );
        let dump = self.work.path().join("schema.dump");
        let started = Instant::now();
        let mut pg_dump = Self::tool(&self.source, "pg_dump");
        pg_dump
            .args("-Fc --schema-only --no-publications --no-subscriptions -f".split(' '))
            .arg(&dump)
            .arg(&self.src_db);
        run_tool(&mut pg_dump, "pg_dump --schema-only")?;
        let mut pre = Self::tool(&self.target, "pg_restore");
        pre.args(["--section=pre-data", "--exit-on-error", "-d", &db])
            .arg(&dump);
        run_tool(&mut pre, "pg_restore --section=pre-data")?;
        self.copy_tables(&db, tables)?;
        let mut post = Self::tool(&self.target, "pg_restore");
        post.args("--section=post-data --exit-on-error -j 2 -d".split(' '))
            .args([&db])
            .arg(&dump);
        run_tool(&mut post, "pg_restore --section=post-data")?;
        let took = started.elapsed();
        for (t, n) in tables {
            let got = self.count_rows(&self.target, &db, t)?;
            if got != *n {
                bail!("reference load copied {got} rows of {t}, source has {n}");
            }
        }
        self.target
            .psql("postgres", &format!("DROP DATABASE \"{db}\""))?;
        Ok(took)
    }

    /// Two workers take tables, largest first.
    fn copy_tables(&self, db: &str, tables: &[(String, i64)]) -> anyhow::Result<()> {
        let queue = Mutex::new(
            tables
                .iter()
                .map(|(t, _)| t.clone())
                .collect::<std::collections::VecDeque<_>>(),
        );
        let worker = || -> anyhow::Result<()> {
            loop {
                let next = queue
                    .lock()
                    .map_err(|_| anyhow::anyhow!("queue poisoned"))?
                    .pop_front();
                let Some(table) = next else { return Ok(()) };
                self.copy_table(db, &table)?;
            }
        };
        std::thread::scope(|s| {
            let handles = [s.spawn(worker), s.spawn(worker)];
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("copy worker panicked"))?
                })
                .collect::<anyhow::Result<Vec<()>>>()
        })?;
        Ok(())
    }

    fn copy_table(&self, db: &str, table: &str) -> anyhow::Result<()> {
        let mut out = self.source.psql_command(&self.src_db);
        out.args([
            "-c",
            &format!("COPY public.{table} TO STDOUT (FORMAT binary)"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut reader = out.spawn().context("spawning psql COPY TO")?;
        let pipe = reader.stdout.take().context("psql stdout")?;
        let mut into = self.target.psql_command(db);
        into.args([
            "-c",
            &format!("COPY public.{table} FROM STDIN (FORMAT binary)"),
        ])
        .stdin(Stdio::from(pipe))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let writer = into.spawn().context("spawning psql COPY FROM")?;
        let w = writer.wait_with_output()?;
        let r = reader.wait_with_output()?;
        if !r.status.success() || !w.status.success() {
            bail!(
                "COPY pipe of {table} failed: reader {} {}, writer {} {}",
                r.status,
                String::from_utf8_lossy(&r.stderr),
                w.status,
                String::from_utf8_lossy(&w.stderr)
            );
        }
        Ok(())
    }

    /// ferry: `ferry run` into a fresh database until it streams; then a
    /// marker transaction is applied (so a checkpoint exists) and ferry is
    /// stopped with SIGTERM.
    fn ferry_load(
        &self,
        tables: &[(String, i64)],
    ) -> anyhow::Result<(Duration, Option<u64>, String)> {
        let db = self.target.create_database("bench_ferry")?;
        self.checkpoint_both()?;
        say!("full load, ferry: `ferry run` until phase catchup/stream …");
        let target = self.rt.block_on(connect(&self.target.url(&db)))?;
        let started = Instant::now();
        let mut bg = self.spawn_ferry(&db, "load")?;
        let took = wait_for(&mut bg, "loading", started, LOAD_TIMEOUT, || {
            self.rt
                .block_on(pipeline_phase(&target))
                .is_some_and(|p| matches!(p.as_str(), "catchup" | "stream" | "cutover" | "done"))
        })?;
        let rss = peak_rss_kb(bg.pid());
        let mut wrong = Vec::new();
        for (t, n) in tables {
            let got = self.count_rows(&self.target, &db, t).unwrap_or(-1);
            if got != *n {
                wrong.push(format!("{t}: {got} of {n}"));
            }
        }
        if !wrong.is_empty() {
            bail!(
                "ferry reported the load done but row counts differ: {}",
                wrong.join(", ")
            );
        }
        // Position before the marker: its commit (start or end) is past it.
        let source = self.rt.block_on(connect(&self.source_url()))?;
        let lsn = self.rt.block_on(insert_lsn(&source))?;
        self.source.psql(&self.src_db, MARKER_SQL)?;
        wait_for(
            &mut bg,
            "applying the first transaction",
            Instant::now(),
            DRAIN_TIMEOUT,
            || applied_at_least(&self.rt, &target, lsn),
        )?;
        stop_ferry(bg)?;
        Ok((took, rss, db))
    }
}

impl LoadFigures {
    pub(crate) fn row(&self) -> String {
        let rows: i64 = self.tables.iter().map(|(_, n)| n).sum();
        let named = |t: &str| {
            self.tables
                .iter()
                .find(|(n, _)| n == t)
                .map_or(0, |(_, n)| *n)
        };
        let (acc, wide) = (named("pgbench_accounts"), named("bench_wide"));
        let size = format!(
            "rows={}+{} (+{} small), {} MiB",
            thousands(acc as u64),
            thousands(wide as u64),
            thousands((rows - acc - wide).max(0) as u64),
            self.bytes / (1 << 20)
        );
        let raw_rate = self.raw.map(|raw| rows as f64 / raw.as_secs_f64());
        let reference = match (self.raw, raw_rate) {
            (Some(raw), Some(r)) => format!(
                "raw COPY pipe: {} rows/s ({:.1} s incl. schema + index build)",
                rate(r),
                raw.as_secs_f64()
            ),
            _ => "not measured (--cdc-only)".to_owned(),
        };
        let (ferry, ratio) = match self.ferry {
            Some(d) => {
                let r = rows as f64 / d.as_secs_f64();
                (
                    format!(
                        "{} rows/s ({:.1} s, peak RSS {})",
                        rate(r),
                        d.as_secs_f64(),
                        mib(self.ferry_rss_kb)
                    ),
                    raw_rate.map_or("–".to_owned(), |raw| format!("{:.2}", r / raw)),
                )
            }
            None => ("failed".to_owned(), "–".to_owned()),
        };
        format!("| full load | {size} | {reference} | {ferry} | {ratio} (≥ 0.9) |\n")
    }
}
