//! Benchmark 1, full load: `ferry run` into a fresh database until it
//! streams, against every plain way a user could copy the same database,
//! each measured in the same run on the same servers:
//!
//! - the `psql | psql` binary COPY pipe, table by table, after `pg_dump
//!   --schema-only` → `pg_restore --section=pre-data` and followed by the
//!   same post-data (`pg_restore --section=post-data -j N`): with one pipe
//!   and with N pipes at a time (N = the machine's cores). The faster of
//!   the two is the reference ferry's goal is measured against;
//! - `pg_dump -Fd -j N` then `pg_restore -j N` (a directory dump on local
//!   disk, timed together);
//! - `pgcopydb clone --table-jobs N --index-jobs N` (Debian `pgcopydb`),
//!   when installed.
//!
//! For each, the CPU seconds of the source server, the target server and
//! the tool itself (its reaped processes, `getrusage(RUSAGE_CHILDREN)`) or
//! ferry, so the bottleneck is visible.
//!
//! `FERRY_BENCH_LOAD_ROUNDS=N` measures every way N times in turn (the
//! rows of earlier rounds are listed too; the goal's ratio is the last
//! round's), and `FERRY_BENCH_BASELINE_BIN=PATH` also times another
//! `ferry` binary in each round, for paired before/after figures on a
//! shared machine: just before the one under test in the last round and
//! every second round before it, just after it in the others (the second
//! of two runs in a row was measured faster whichever binary it was, so a
//! fixed order favours one).

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_e2e::pgsync::{connect, insert_lsn};

use crate::cpu;
use crate::harness::{
    Bench, DRAIN_TIMEOUT, MARKER_SQL, POLL_FINE, applied_at_least, peak_rss_kb, pipeline_phase,
    run_tool, stop_ferry, wait_for, wait_for_process,
};
use crate::report::Report;
use crate::report::{mib, rate, thousands};

const LOAD_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// CPU seconds of one timed step.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StepCpu {
    pub(crate) source: Duration,
    pub(crate) target: Duration,
    /// The tool's processes, or ferry.
    pub(crate) tool: Duration,
}

/// One way of copying the database, timed.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub(crate) name: String,
    pub(crate) took: Duration,
    pub(crate) cpu: StepCpu,
    /// A plain pipe: a candidate for the reference.
    pub(crate) plain: bool,
}

/// CPU counters at the start of a step.
struct CpuMark {
    source: Duration,
    target: Duration,
    children: Duration,
}

/// CPU time of this process's reaped children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

impl Bench {
    fn cpu_mark(&self) -> CpuMark {
        CpuMark {
            source: self.source.pid().map_or(Duration::ZERO, cpu::tree),
            target: self.target.pid().map_or(Duration::ZERO, cpu::tree),
            children: children_cpu(),
        }
    }

    fn cpu_since(&self, m: &CpuMark) -> StepCpu {
        let now = self.cpu_mark();
        StepCpu {
            source: now.source.saturating_sub(m.source),
            target: now.target.saturating_sub(m.target),
            tool: now.children.saturating_sub(m.children),
        }
    }
}

#[derive(Debug)]
pub(crate) struct LoadFigures {
    pub(crate) tables: Vec<(String, i64)>,
    pub(crate) bytes: u64,
    /// Every reference measured (none with `--cdc-only`).
    pub(crate) references: Vec<Measured>,
    pub(crate) ferry: Option<Measured>,
    ferry_rss_kb: Option<u64>,
    /// The loaded ferry target database, if ferry got as far as streaming.
    pub(crate) ferry_db: Option<String>,
}

/// Parallel jobs of the N-way references: the machine's cores.
fn jobs() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2)
}

impl Bench {
    pub(crate) fn full_load(
        &self,
        cdc_only: bool,
        report: &mut Report,
    ) -> anyhow::Result<LoadFigures> {
        let tables = self.source_tables()?;
        let bytes = self.source_bytes()?;
        let rounds: usize = std::env::var("FERRY_BENCH_LOAD_ROUNDS")
            .ok()
            .and_then(|r| r.trim().parse().ok())
            .filter(|r| *r >= 1)
            .unwrap_or(1);
        let baseline = std::env::var_os("FERRY_BENCH_BASELINE_BIN").map(std::path::PathBuf::from);
        let mut references = Vec::new();
        for round in 1..=rounds {
            let label = |mut m: Measured| {
                if rounds > 1 {
                    m.name = format!("{} (round {round})", m.name);
                }
                say!("  {}: {:.1} s", m.name, m.took.as_secs_f64());
                m
            };
            if !cdc_only {
                self.references(&tables, &mut references, label)?;
            }
            // The last round's run under test comes last (its target
            // database stays for the report), so its baseline goes first;
            // the rounds before alternate.
            let baseline_first = (rounds - round).is_multiple_of(2);
            let base = baseline.as_deref();
            // `None`: the binary under test.
            let mut order = Vec::new();
            if let Some(b) = base.filter(|_| baseline_first) {
                order.push(Some(b));
            }
            if round < rounds {
                order.push(None);
            }
            if let Some(b) = base.filter(|_| !baseline_first) {
                order.push(Some(b));
            }
            for bin in order {
                let (mut m, _, db) = self.ferry_load(&tables, bin)?;
                if let Some(bin) = bin {
                    m.name = format!("baseline `ferry run` ({})", bin.display());
                }
                references.push(label(m));
                self.drop_ferry_load(&db)?;
            }
        }
        let mut figures = LoadFigures {
            tables,
            bytes,
            references,
            ferry: None,
            ferry_rss_kb: None,
            ferry_db: None,
        };
        match self.ferry_load(&figures.tables, None) {
            Ok((m, rss, db)) => {
                say!("  ferry: {:.1} s", m.took.as_secs_f64());
                figures.ferry = Some(m);
                figures.ferry_rss_kb = rss;
                figures.ferry_db = Some(db);
            }
            Err(e) => report.ferry_failed("full load", &e),
        }
        Ok(figures)
    }

    /// One round of the plain references, each passed through `label`.
    fn references(
        &self,
        tables: &[(String, i64)],
        out: &mut Vec<Measured>,
        label: impl Fn(Measured) -> Measured,
    ) -> anyhow::Result<()> {
        let n = jobs();
        for workers in [1, n] {
            out.push(label(self.raw_load(tables, workers)?));
        }
        out.push(label(self.dump_restore(tables, n)?));
        match self.pgcopydb(tables, n) {
            Ok(m) => out.push(label(m)),
            Err(e) => say!("  pgcopydb clone: not measured: {e:#}"),
        }
        Ok(())
    }

    /// Drop what a timed `ferry run` left (its target database, its slot)
    /// so that the next one starts as the first did.
    fn drop_ferry_load(&self, db: &str) -> anyhow::Result<()> {
        let drop_slots = "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE NOT active";
        let started = Instant::now();
        // The walsender of the stopped run (and its target session) may
        // take a moment to exit.
        while self.sql_one(
            &self.source,
            &self.src_db,
            "SELECT count(*) FROM pg_replication_slots",
        )? != "0"
        {
            self.sql_one(&self.source, &self.src_db, drop_slots)?;
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the replication slot of a stopped ferry run stayed active for 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.target
            .psql("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)"))?;
        Ok(())
    }

    /// Every table of `db` holds the source's row count.
    fn check_counts(&self, db: &str, tables: &[(String, i64)], who: &str) -> anyhow::Result<()> {
        for (t, n) in tables {
            let got = self.count_rows(&self.target, db, t)?;
            if got != *n {
                bail!("{who} copied {got} rows of {t}, source has {n}");
            }
        }
        Ok(())
    }

    /// Pre-data schema, binary COPY pipes (`workers` at a time), post-data (-j N).
    fn raw_load(&self, tables: &[(String, i64)], workers: usize) -> anyhow::Result<Measured> {
        let db = self
            .target
            .create_database(&format!("bench_raw{workers}"))?;
        self.checkpoint_both()?;
        let name = format!(
            "`psql \\| psql` binary COPY pipe, {workers} at a time, + pg_dump schema and post-data (-j {})",
            jobs()
        );
        say!("full load, reference: {name} …");
        let dump = self.work.path().join("schema.dump");
        let mark = self.cpu_mark();
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
        self.copy_tables(&db, tables, workers)?;
        let mut post = Self::tool(&self.target, "pg_restore");
        post.args([
            "--section=post-data",
            "--exit-on-error",
            "-j",
            &jobs().to_string(),
            "-d",
            &db,
        ])
        .arg(&dump);
        run_tool(&mut post, "pg_restore --section=post-data")?;
        let took = started.elapsed();
        let cpu = self.cpu_since(&mark);
        self.check_counts(&db, tables, "the reference load")?;
        self.target
            .psql("postgres", &format!("DROP DATABASE \"{db}\""))?;
        Ok(Measured {
            name,
            took,
            cpu,
            plain: true,
        })
    }

    /// `pg_dump -Fd -j N` to local disk, then `pg_restore -j N`.
    fn dump_restore(&self, tables: &[(String, i64)], n: usize) -> anyhow::Result<Measured> {
        let db = self.target.create_database("bench_dump")?;
        let dir = self.work.path().join("dump.d");
        let _ = std::fs::remove_dir_all(&dir);
        self.checkpoint_both()?;
        let name = format!("`pg_dump -Fd -j {n}` + `pg_restore -j {n}`");
        say!("full load, reference: {name} …");
        let mark = self.cpu_mark();
        let started = Instant::now();
        let mut dump = Self::tool(&self.source, "pg_dump");
        dump.args([
            "-Fd",
            "-j",
            &n.to_string(),
            "--no-publications",
            "--no-subscriptions",
            "-f",
        ])
        .arg(&dir)
        .arg(&self.src_db);
        run_tool(&mut dump, "pg_dump -Fd")?;
        let mut restore = Self::tool(&self.target, "pg_restore");
        restore
            .args(["--exit-on-error", "-j", &n.to_string(), "-d", &db])
            .arg(&dir);
        run_tool(&mut restore, "pg_restore -j")?;
        let took = started.elapsed();
        let cpu = self.cpu_since(&mark);
        self.check_counts(&db, tables, "pg_dump/pg_restore")?;
        self.target
            .psql("postgres", &format!("DROP DATABASE \"{db}\""))?;
        std::fs::remove_dir_all(&dir)?;
        Ok(Measured {
            name,
            took,
            cpu,
            plain: false,
        })
    }

    /// `pgcopydb clone` (Debian package `pgcopydb`), if installed.
    fn pgcopydb(&self, tables: &[(String, i64)], n: usize) -> anyhow::Result<Measured> {
        let bin = std::path::Path::new("/usr/bin/pgcopydb");
        if !bin.exists() {
            bail!("/usr/bin/pgcopydb is not installed (Debian package pgcopydb; `make setup`)");
        }
        let db = self.target.create_database("bench_pgcopydb")?;
        let dir = self.work.path().join("pgcopydb");
        let _ = std::fs::remove_dir_all(&dir);
        self.checkpoint_both()?;
        let name = format!("`pgcopydb clone --table-jobs {n} --index-jobs {n}`");
        say!("full load, reference: {name} …");
        let mut cmd = Command::new(bin);
        cmd.args(["clone", "--no-owner", "--no-acl", "--skip-extensions"])
            .args([
                "--table-jobs",
                &n.to_string(),
                "--index-jobs",
                &n.to_string(),
            ])
            .arg("--source")
            .arg(self.source.url(&self.src_db))
            .arg("--target")
            .arg(self.target.url(&db))
            .arg("--dir")
            .arg(&dir)
            // pgcopydb runs pg_dump and pg_restore of the server's version.
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.source.bin_dir().display()),
            )
            .env("PGSSLMODE", "disable")
            .stdin(Stdio::null());
        let mark = self.cpu_mark();
        let started = Instant::now();
        run_tool(&mut cmd, "pgcopydb clone")?;
        let took = started.elapsed();
        let cpu = self.cpu_since(&mark);
        self.check_counts(&db, tables, "pgcopydb")?;
        self.target
            .psql("postgres", &format!("DROP DATABASE \"{db}\""))?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Measured {
            name,
            took,
            cpu,
            plain: false,
        })
    }

    /// `workers` threads take tables, largest first.
    fn copy_tables(
        &self,
        db: &str,
        tables: &[(String, i64)],
        workers: usize,
    ) -> anyhow::Result<()> {
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
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(worker)).collect();
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
        bin: Option<&std::path::Path>,
    ) -> anyhow::Result<(Measured, Option<u64>, String)> {
        let db = self.target.create_database("bench_ferry")?;
        self.checkpoint_both()?;
        say!("full load, ferry: `ferry run` until caught up (phase stream) …");
        let target = self.rt.block_on(connect(&self.target.url(&db)))?;
        let mark = self.cpu_mark();
        let started = Instant::now();
        let mut bg = self.spawn_ferry_bin(&db, "load", bin)?;
        // Caught up: phase `stream` is written once the applier reached the
        // source head and the foreign keys are validated (`catchup` comes
        // before both).
        let took = wait_for_process(
            &mut bg,
            "ferry run",
            "loading",
            started,
            LOAD_TIMEOUT,
            POLL_FINE,
            || {
                self.rt
                    .block_on(pipeline_phase(&target))
                    .is_some_and(|p| matches!(p.as_str(), "stream" | "cutover" | "done"))
            },
        )?;
        let mut cpu = self.cpu_since(&mark);
        cpu.tool = cpu::process(bg.pid());
        let measured = Measured {
            name: "`ferry run` (schema, load, indexes, until catch-up)".into(),
            took,
            cpu,
            plain: false,
        };
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
        let marker = if std::env::var("FERRY_BENCH_DATASET").is_ok_and(|d| d == "pagila") {
            // Pagila has no pgbench tables: a no-op update of one row.
            "UPDATE public.language SET name = name WHERE language_id = 1"
        } else {
            MARKER_SQL
        };
        self.source.psql(&self.src_db, marker)?;
        wait_for(
            &mut bg,
            "applying the first transaction",
            Instant::now(),
            DRAIN_TIMEOUT,
            || applied_at_least(&self.rt, &target, lsn),
        )?;
        stop_ferry(bg)?;
        Ok((measured, rss, db))
    }
}

impl LoadFigures {
    fn rows(&self) -> i64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }

    /// The fastest plain pipe: the reference of the goal.
    fn best_plain(&self) -> Option<&Measured> {
        self.references
            .iter()
            .filter(|m| m.plain)
            .min_by_key(|m| m.took)
    }

    pub(crate) fn row(&self) -> String {
        let rows = self.rows();
        let named = |t: &str| {
            self.tables
                .iter()
                .find(|(n, _)| n == t)
                .map_or(0, |(_, n)| *n)
        };
        let (acc, wide) = (named("pgbench_accounts"), named("bench_wide"));
        let size = if acc + wide == 0 {
            format!(
                "rows={} in {} tables, {} MiB",
                thousands(rows as u64),
                self.tables.len(),
                self.bytes / (1 << 20)
            )
        } else {
            format!(
                "rows={}+{} (+{} small), {} MiB",
                thousands(acc as u64),
                thousands(wide as u64),
                thousands((rows - acc - wide).max(0) as u64),
                self.bytes / (1 << 20)
            )
        };
        let per_s = |d: Duration| rows as f64 / d.as_secs_f64();
        let best = self.best_plain();
        let reference = match best {
            Some(b) => format!(
                "best plain pipe ({}): {} rows/s ({:.1} s incl. schema + index build)",
                b.name,
                rate(per_s(b.took)),
                b.took.as_secs_f64()
            ),
            None => "not measured (--cdc-only)".to_owned(),
        };
        let (ferry, ratio) = match &self.ferry {
            Some(f) => (
                format!(
                    "{} rows/s ({:.1} s, peak RSS {})",
                    rate(per_s(f.took)),
                    f.took.as_secs_f64(),
                    mib(self.ferry_rss_kb)
                ),
                best.map_or("–".to_owned(), |b| {
                    format!("{:.2}", b.took.as_secs_f64() / f.took.as_secs_f64())
                }),
            ),
            None => ("failed".to_owned(), "–".to_owned()),
        };
        format!("| full load | {size} | {reference} | {ferry} | {ratio} (≥ 0.9) |\n")
    }

    /// Every reference and ferry, with rates and where the CPU went.
    pub(crate) fn detail(&self) -> String {
        use std::fmt::Write as _;
        if self.references.is_empty() {
            return String::new();
        }
        let rows = self.rows();
        let mut out = String::from(
            "\n### Full load: every way, same run\n\n| | time | rows/s | MB/s | CPU s: source / target / tool or ferry | ferry is |\n|---|---|---|---|---|---|\n",
        );
        let ferry = self.ferry.as_ref().map(|f| f.took.as_secs_f64());
        for m in self.references.iter().chain(self.ferry.as_ref()) {
            let secs = m.took.as_secs_f64();
            let _ = writeln!(
                out,
                "| {} | {secs:.1} s | {} | {:.1} | {:.1} / {:.1} / {:.1} | {} |",
                m.name,
                rate(rows as f64 / secs),
                self.bytes as f64 / 1e6 / secs,
                m.cpu.source.as_secs_f64(),
                m.cpu.target.as_secs_f64(),
                m.cpu.tool.as_secs_f64(),
                ferry.map_or("–".to_owned(), |f| format!("{:.2}×", secs / f)),
            );
        }
        out
    }
}
