//! `make bench`: ferry's throughput next to references measured in the same
//! run, on the same throwaway servers (durable: real fsync). Not a test: it
//! prints figures and ratios and never passes or fails on timing.
//!
//! 1. **Full load.** A pgbench database (`pgbench -i -s SCALE`: SCALE×100k
//!    accounts, plus a secondary index) and a wide text/jsonb table
//!    (SCALE×10k rows). Reference: `pg_dump --schema-only` → `pg_restore
//!    --section=pre-data`, binary `COPY … TO STDOUT | COPY … FROM STDIN`
//!    through `psql` pipes, two tables at a time, then `pg_restore
//!    --section=post-data -j 2` (primary keys and indexes). ferry: `ferry
//!    run` into a fresh database, timed until `ferry.pipeline.phase` is
//!    `catchup` or later.
//! 2. **CDC apply.** ferry is stopped (SIGTERM) once streaming; a reference
//!    slot is created at that moment; a backlog is written with pgbench;
//!    reference: `pg_logical_slot_peek_binary_changes` on the reference slot
//!    (the server's own pgoutput decoding rate) and a null consumer on the
//!    same slot: `START_REPLICATION` read to the end LSN and discarded (the
//!    ceiling of any replication client on this server: the walsender's own
//!    per-message cost, which the in-server peek does not pay); ferry:
//!    `ferry run` again, timed until `ferry.checkpoint` reaches the end LSN. Two backlogs: the
//!    builtin tpcb-like script (4 row changes per transaction) and large
//!    multi-row transactions (1000-row updates), and two on tables without
//!    a key: the tpcb-like script writing its history rows into a keyless
//!    copy of `pgbench_history` (as pgbench itself creates it: insert-only,
//!    no key), and updates, deletes and inserts on a keyless table of
//!    SCALE×50k rows with a json column and an index on `id` (REPLICA
//!    IDENTITY FULL). `FERRY_BENCH_BACKLOGS=tpcb,multirow,history,nokey`
//!    picks some of them. During each drain the CPU
//!    time of the source server, the target server (process trees, from
//!    `/proc`) and ferry is taken; the report gives it per change and the
//!    drain rate at which the servers alone would fill every core (the
//!    peek's decoding cost plus the target's apply cost): a ceiling no client
//!    can pass on this machine. After the timed part ferry keeps streaming
//!    until its slot's `restart_lsn` passes the backlog (CHECKPOINTs write
//!    the record that moves it), so the next drain does not re-decode it.
//!
//! Sizes: `FERRY_BENCH_SCALE` (pgbench scale, default 20 = 2M accounts,
//! 200k wide rows, 1M tpcb changes, 300k multi-row changes); `--quick` is
//! scale 1. The writer runs with `synchronous_commit=off` so the backlog is
//! produced in reasonable time; servers otherwise keep fsync on. The report
//! also goes to `target/bench-report.md` (or `FERRY_BENCH_REPORT`).
//!
//! 3. **Cutover write freeze** and 4. **lag under maximum load**: see
//!    `ferry_bench/cutover.rs` (fresh servers, the control API).
//!    `--control-only` runs only these two.
//!
//! `--cdc-only` skips the raw-load reference and the control benchmarks
//! (ferry still loads the target it drains into): for iterating on the
//! applier. Its report has no full-load ratio.
//!
//! If ferry fails, its log tail is printed, the reference figures are still
//! measured and printed, and the process exits non-zero.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cpu::DrainCpu;
use ferry_e2e::pgsync::{applied_lsn, connect, insert_lsn, runtime};
use ferry_e2e::{Background, ferry};
use ferry_testkit::{ADMIN_PASSWORD, ADMIN_USER, PgOptions, PgServer};
use tokio_postgres::Client;

/// The reference logical slot (dropped as soon as it has been peeked).
const REF_SLOT: &str = "bench_ref";
/// ferry's default slot.
const FERRY_SLOT: &str = "ferry";
/// How long [`Bench::settle_slot`] waits for ferry's slot to move.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// ferry's default publication.
const FERRY_PUBLICATION: &str = "ferry";
/// A one-row no-op change after a backlog: gives ferry a transaction to
/// checkpoint even if it records commit (not end) positions.
const MARKER_SQL: &str = "UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1";
const LOAD_TIMEOUT: Duration = Duration::from_secs(45 * 60);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// Progress and the report go to stdout.
macro_rules! say {
    ($($arg:tt)*) => {{
        #[allow(clippy::print_stdout)]
        {
            println!($($arg)*);
        }
    }};
}

/// pgbench's builtin tpcb-like script with its history row going into a
/// table without a key.
const TPCB_KEYLESS_HISTORY: &str = r"\set aid random(1, :naccounts)
\set bid random(1, :nbranches)
\set tid random(1, :ntellers)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO bench_history_nokey (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// An update, a delete and an insert on the keyless table, each client in
/// its own half of the ids (no lock waits).
const KEYLESS_CHURN: &str = r#"\set half :nrows / 2
\set id 1 + :client_id * :half + random(0, :half - 1)
\set id2 1 + :client_id * :half + random(0, :half - 1)
BEGIN;
UPDATE bench_nokey SET v = v + 1 WHERE id = :id;
DELETE FROM bench_nokey WHERE id = :id2;
INSERT INTO bench_nokey VALUES (:id2, 0, '{"re": 1}', md5((:id2)::text));
END;
"#;

const POLL: Duration = Duration::from_millis(50);

#[path = "ferry_bench/cpu.rs"]
mod cpu;
#[path = "ferry_bench/cutover.rs"]
mod cutover;
#[path = "ferry_bench/memory.rs"]
mod memory;

fn main() -> ExitCode {
    match bench_main() {
        Ok(code) => code,
        Err(e) => {
            say!("ferry-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_main() -> anyhow::Result<ExitCode> {
    let sizes = Sizes::from_args()?;
    let mut report = Report::new(&sizes);
    let result = if sizes.control_only {
        report.environment =
            "Control benchmarks only (--control-only): the pgbench scale is in each row."
                .to_owned();
        Ok(())
    } else {
        run(&sizes, &mut report)
    };
    if let Err(e) = &result {
        report.failures.push(format!("benchmark aborted: {e:#}"));
    }
    if !sizes.cdc_only {
        cutover::run_all(&sizes, &mut report);
    }
    memory::run(&mut report);
    let text = report.render();
    say!("\n{text}");
    let path = report_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    say!("report written to {}", path.display());
    if report.failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        say!(
            "ferry-bench: {} problem(s), see the report above",
            report.failures.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

fn run(sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let bench = Bench::start(sizes)?;
    report.environment = bench.environment()?;
    bench.generate(sizes)?;
    report.load = Some(bench.full_load(sizes.cdc_only, report)?);
    let mut ferry_db = report.load.as_ref().and_then(|l| l.ferry_db.clone());
    let kinds = [
        Backlog::Tpcb(sizes.tpcb_tx_per_client),
        Backlog::MultiRow(sizes.multi_tx_per_client),
        Backlog::KeylessHistory(sizes.keyless_tx_per_client),
        Backlog::KeylessChurn(sizes.keyless_tx_per_client),
    ];
    for kind in kinds
        .into_iter()
        .filter(|k| sizes.backlogs.contains(&k.name()))
    {
        let cdc = bench.cdc_run(kind, ferry_db.as_deref(), report)?;
        if cdc.ferry.is_none() {
            ferry_db = None;
        }
        report.cdc.push(cdc);
    }
    Ok(())
}

/// Benchmark sizes.
#[derive(Debug, Clone)]
struct Sizes {
    scale: u32,
    quick: bool,
    /// Only the cutover and lag benchmarks (`--control-only`).
    control_only: bool,
    /// Only the CDC benchmarks, no raw-load reference (`--cdc-only`).
    cdc_only: bool,
    wide_rows: u64,
    tpcb_tx_per_client: u64,
    multi_tx_per_client: u64,
    /// Transactions per client of each backlog on tables without a key.
    keyless_tx_per_client: u64,
    /// Rows of the keyless table with updates and deletes.
    keyless_rows: u64,
    /// Backlogs to run ([`Backlog::name`]).
    backlogs: Vec<&'static str>,
}

impl Sizes {
    fn from_args() -> anyhow::Result<Sizes> {
        let (mut quick, mut control_only, mut cdc_only) = (false, false, false);
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => quick = true,
                "--control-only" => control_only = true,
                "--cdc-only" => cdc_only = true,
                other => bail!(
                    "unknown argument {other:?}; usage: ferry-bench [--quick] [--control-only | --cdc-only] (sizes: FERRY_BENCH_SCALE=N)"
                ),
            }
        }
        let scale = match std::env::var("FERRY_BENCH_SCALE") {
            Ok(s) => s
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|s| *s >= 1)
                .with_context(|| format!("FERRY_BENCH_SCALE={s:?} is not a positive integer"))?,
            Err(_) if quick => 1,
            Err(_) => 20,
        };
        let s = u64::from(scale);
        let all = ["tpcb", "multirow", "history", "nokey"];
        let backlogs = match std::env::var("FERRY_BENCH_BACKLOGS") {
            Ok(list) => {
                let mut picked = Vec::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let Some(known) = all.iter().find(|a| **a == name) else {
                        bail!("FERRY_BENCH_BACKLOGS: unknown backlog {name:?}; known: {all:?}");
                    };
                    picked.push(*known);
                }
                picked
            }
            Err(_) => all.to_vec(),
        };
        Ok(Sizes {
            scale,
            quick,
            control_only,
            cdc_only,
            wide_rows: s * 10_000,
            // 12,500 tpcb transactions (50k changes) per scale unit, 2 clients.
            tpcb_tx_per_client: s * 6_250,
            // 1000-row updates: 15 per scale unit (300 at scale 20), at least 50.
            multi_tx_per_client: (s * 15).max(50).div_ceil(2),
            // 3,000 transactions per scale unit (60k at scale 20), 2 clients.
            keyless_tx_per_client: s * 1_500,
            keyless_rows: s * 50_000,
            backlogs,
        })
    }

    fn accounts(&self) -> u64 {
        u64::from(self.scale) * 100_000
    }
}

/// The two servers, the source database and a scratch directory.
#[derive(Debug)]
struct Bench {
    source: PgServer,
    target: PgServer,
    src_db: String,
    accounts: u64,
    keyless_rows: u64,
    work: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

fn bench_server(wal_level: &str) -> anyhow::Result<PgServer> {
    let opts = PgOptions::new()
        .durable(true)
        .wal_level(wal_level)
        .setting("shared_buffers", "512MB")
        .setting("maintenance_work_mem", "256MB")
        .setting("max_wal_size", "4GB")
        .setting("checkpoint_timeout", "30min");
    PgServer::start(opts)
        .with_context(|| format!("starting a durable PostgreSQL server (wal_level={wal_level})"))
}

impl Bench {
    fn start(sizes: &Sizes) -> anyhow::Result<Bench> {
        say!("starting durable throwaway PostgreSQL servers (source: wal_level=logical, target) …");
        let source = bench_server("logical")?;
        let target = bench_server("replica")?;
        let src_db = source.create_database("bench_src")?;
        Ok(Bench {
            source,
            target,
            src_db,
            accounts: sizes.accounts(),
            keyless_rows: sizes.keyless_rows,
            work: tempfile::tempdir().context("creating a scratch directory")?,
            rt: runtime(),
        })
    }

    fn environment(&self) -> anyhow::Result<String> {
        let version = self.source.psql(&self.src_db, "SHOW server_version")?;
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        Ok(format!(
            "PostgreSQL {} (source and target on this machine, fsync on, shared_buffers=512MB, \
             max_wal_size=4GB, CHECKPOINT before each timed step), {cores} CPU cores",
            version.trim()
        ))
    }

    /// A PostgreSQL client tool (`pgbench`, `pg_dump`, …) for `server`.
    fn tool(server: &PgServer, name: &str) -> Command {
        let mut cmd = Command::new(server.bin_dir().join(name));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-U",
            ADMIN_USER,
        ])
        .env("PGPASSWORD", ADMIN_PASSWORD)
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
        cmd
    }

    fn sql_one(&self, server: &PgServer, db: &str, sql: &str) -> anyhow::Result<String> {
        Ok(server.psql(db, sql)?.trim().to_owned())
    }

    /// pgbench tables (+ a key on history, + a secondary index) and the wide table.
    fn generate(&self, sizes: &Sizes) -> anyhow::Result<()> {
        say!(
            "generating: pgbench -i -s {} ({} accounts) and a wide table of {} rows …",
            sizes.scale,
            thousands(sizes.accounts()),
            thousands(sizes.wide_rows)
        );
        let started = Instant::now();
        let mut init = Self::tool(&self.source, "pgbench");
        init.args([
            "-i",
            "-s",
            &sizes.scale.to_string(),
            "-I",
            "dtGvp",
            &self.src_db,
        ]);
        run_tool(&mut init, "pgbench -i")?;
        let n = sizes.wide_rows;
        let k = sizes.keyless_rows;
        self.source.psql(
            &self.src_db,
            &format!(
                r#"
CREATE TABLE bench_history_nokey (LIKE pgbench_history);
ALTER TABLE bench_history_nokey REPLICA IDENTITY FULL;
CREATE TABLE bench_nokey (id int NOT NULL, v int NOT NULL, note json, pad text);
INSERT INTO bench_nokey SELECT i, 0, json_build_object('i', i), md5(i::text) FROM generate_series(1, {k}) i;
CREATE INDEX bench_nokey_id_idx ON bench_nokey (id);
ALTER TABLE bench_nokey REPLICA IDENTITY FULL;
ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY;
CREATE INDEX pgbench_accounts_bid_idx ON pgbench_accounts (bid);
CREATE TABLE bench_wide (
  id bigint PRIMARY KEY, name text NOT NULL, body text, doc jsonb, tags text[],
  amount numeric(14,2), created_at timestamptz NOT NULL);
INSERT INTO bench_wide
  SELECT i, 'name-' || i,
         CASE WHEN i % 50 = 0 THEN repeat(md5(i::text), 200) ELSE repeat(md5(i::text), 8 + i % 24) END,
         jsonb_build_object('id', i, 'kind', 'k' || i % 13, 'tags', jsonb_build_array(i % 7, i % 11),
                            'note', md5((i * 7)::text), 'ok', i % 2 = 0),
         ARRAY['t' || i % 5, 'u' || i % 17], (i % 100000) / 100.0,
         timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second'
  FROM generate_series(1, {n}) i;
CREATE INDEX bench_wide_created_idx ON bench_wide (created_at);
VACUUM (ANALYZE);
CHECKPOINT;
"#
            ),
        )?;
        say!("  generated in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Source tables, largest first, with row counts.
    fn source_tables(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let list = self.sql_one(
            &self.source,
            &self.src_db,
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY pg_total_relation_size(c.oid) DESC",
        )?;
        let mut out = Vec::new();
        for t in list.lines().filter(|l| !l.is_empty()) {
            out.push((
                t.to_owned(),
                self.count_rows(&self.source, &self.src_db, t)?,
            ));
        }
        Ok(out)
    }

    fn count_rows(&self, server: &PgServer, db: &str, table: &str) -> anyhow::Result<i64> {
        let n = self.sql_one(server, db, &format!("SELECT count(*) FROM public.{table}"))?;
        n.parse()
            .with_context(|| format!("row count of {table}: {n:?}"))
    }

    fn source_bytes(&self) -> anyhow::Result<u64> {
        let n = self.sql_one(
            &self.source,
            &self.src_db,
            "SELECT sum(pg_table_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r'",
        )?;
        Ok(n.parse().unwrap_or(0))
    }

    fn checkpoint_both(&self) -> anyhow::Result<()> {
        self.source.psql("postgres", "CHECKPOINT")?;
        self.target.psql("postgres", "CHECKPOINT")?;
        Ok(())
    }

    fn source_url(&self) -> String {
        self.source.url(&self.src_db)
    }
}

/// Run a client tool to completion; error with its stderr.
fn run_tool(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------- full load

#[derive(Debug)]
struct LoadFigures {
    tables: Vec<(String, i64)>,
    bytes: u64,
    /// The raw pipe's time (`None` with `--cdc-only`).
    raw: Option<Duration>,
    ferry: Option<Duration>,
    ferry_rss_kb: Option<u64>,
    /// The loaded ferry target database, if ferry got as far as streaming.
    ferry_db: Option<String>,
}

impl Bench {
    fn full_load(&self, cdc_only: bool, report: &mut Report) -> anyhow::Result<LoadFigures> {
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

    /// With `FERRY_BENCH_PERF=DIR`: a system-wide `perf record -g` of each
    /// drain, written to `DIR/drain-N.perf` (for profiling, not figures).
    fn start_perf(&self) -> anyhow::Result<Option<Background>> {
        let Ok(dir) = std::env::var("FERRY_BENCH_PERF") else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir)?;
        let n = std::fs::read_dir(&dir)?.count();
        let out = Path::new(&dir).join(format!("drain-{n}.perf"));
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-a", "-g", "-F", "499", "-o"])
            .arg(&out);
        let bg = Background::spawn(cmd, &Path::new(&dir).join(format!("drain-{n}.log")))?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Some(bg))
    }

    fn spawn_ferry(&self, db: &str, what: &str) -> anyhow::Result<Background> {
        let mut cmd = ferry(&self.source_url(), &self.target.url(db))?;
        cmd.arg("run")
            .env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", "127.0.0.1:0");
        if let Ok(level) = std::env::var("FERRY_BENCH_LOG") {
            cmd.env("FERRY_LOG", level);
        }
        // FERRY_BENCH_LOGDIR keeps ferry's logs after the run.
        let dir = std::env::var_os("FERRY_BENCH_LOGDIR")
            .map_or_else(|| self.work.path().to_owned(), PathBuf::from);
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("ferry-{what}.log"));
        Background::spawn(cmd, &log)
    }
}

/// Poll `probe` every 50 ms until true; error if ferry exits or on timeout.
fn wait_for(
    bg: &mut Background,
    what: &str,
    started: Instant,
    timeout: Duration,
    mut probe: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    loop {
        if probe() {
            return Ok(started.elapsed());
        }
        if let Some(code) = bg.exited()? {
            bail!(
                "ferry run exited ({code:?}) while {what}\n--- ferry log (tail) ---\n{}",
                tail(&bg.log(), 40)
            );
        }
        if started.elapsed() > timeout {
            bail!(
                "ferry run was still {what} after {timeout:?}\n--- ferry log (tail) ---\n{}",
                tail(&bg.log(), 40)
            );
        }
        std::thread::sleep(POLL);
    }
}

fn stop_ferry(bg: Background) -> anyhow::Result<()> {
    let log_tail = tail(&bg.log(), 40);
    match bg.signal_and_wait(libc::SIGTERM, Duration::from_secs(120))? {
        Some(0) => Ok(()),
        code => bail!(
            "ferry run exited {code:?} after SIGTERM (expected 0)\n--- ferry log (tail) ---\n{log_tail}"
        ),
    }
}

async fn pipeline_phase(target: &Client) -> Option<String> {
    let rows = target
        .query("SELECT phase FROM ferry.pipeline", &[])
        .await
        .ok()?;
    rows.first().map(|r| r.get::<_, String>(0))
}

fn applied_at_least(rt: &tokio::runtime::Runtime, target: &Client, lsn: u64) -> bool {
    rt.block_on(applied_lsn(target))
        .ok()
        .flatten()
        .is_some_and(|a| a >= lsn)
}

/// `VmHWM` (peak resident set) of a running process, in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------- CDC apply

/// A backlog written by pgbench with two clients; the number is transactions per client.
#[derive(Debug, Clone, Copy)]
enum Backlog {
    Tpcb(u64),
    MultiRow(u64),
    /// tpcb-like, history rows into a table without a key (insert-only).
    KeylessHistory(u64),
    /// Update, delete and insert on a keyless table with an index on `id`.
    KeylessChurn(u64),
}

impl Backlog {
    fn label(self) -> &'static str {
        match self {
            Backlog::Tpcb(_) => "CDC pgbench tpcb-like",
            Backlog::MultiRow(_) => "CDC 1000-row updates",
            Backlog::KeylessHistory(_) => {
                "CDC tpcb-like, history without a key (pgbench's own schema)"
            }
            Backlog::KeylessChurn(_) => {
                "CDC update+delete+insert on a table without a key (json column, index on id)"
            }
        }
    }
    /// Name in `FERRY_BENCH_BACKLOGS`.
    fn name(self) -> &'static str {
        match self {
            Backlog::Tpcb(_) => "tpcb",
            Backlog::MultiRow(_) => "multirow",
            Backlog::KeylessHistory(_) => "history",
            Backlog::KeylessChurn(_) => "nokey",
        }
    }
    fn transactions(self) -> u64 {
        match self {
            Backlog::Tpcb(n)
            | Backlog::MultiRow(n)
            | Backlog::KeylessHistory(n)
            | Backlog::KeylessChurn(n) => 2 * n,
        }
    }
    fn changes_per_tx(self) -> u64 {
        match self {
            Backlog::Tpcb(_) | Backlog::KeylessHistory(_) => 4,
            Backlog::MultiRow(_) => 1000,
            Backlog::KeylessChurn(_) => 3,
        }
    }
}

#[derive(Debug)]
struct CdcFigures {
    label: &'static str,
    transactions: u64,
    produced: u64,
    produce: Duration,
    decoded: u64,
    decode: Duration,
    /// The null consumer's time for the same changes.
    consume: Duration,
    /// ferry's drain, when it ran.
    ferry: Option<Drain>,
}

#[derive(Debug)]
struct Drain {
    took: Duration,
    /// Peak RSS, kB.
    rss: Option<u64>,
    cpu: DrainCpu,
}

impl Bench {
    fn cdc_run(
        &self,
        kind: Backlog,
        ferry_db: Option<&str>,
        report: &mut Report,
    ) -> anyhow::Result<CdcFigures> {
        let publication = self.reference_publication()?;
        let source = self.rt.block_on(connect(&self.source_url()))?;
        self.source.psql(&self.src_db, &format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{REF_SLOT}';
             SELECT pg_create_logical_replication_slot('{REF_SLOT}', 'pgoutput');"
        ))?;
        self.checkpoint_both()?;
        say!(
            "{}: writing {} transactions with pgbench (2 clients) …",
            kind.label(),
            thousands(kind.transactions())
        );
        let started = Instant::now();
        self.write_backlog(kind)?;
        let produce = started.elapsed();
        let end_lsn = self.rt.block_on(insert_lsn(&source))?;
        self.source.psql(&self.src_db, MARKER_SQL)?;
        say!(
            "  written in {:.1} s, end LSN {}; reference: peeking slot {REF_SLOT} …",
            produce.as_secs_f64(),
            lsn_text(end_lsn)
        );
        let (decoded, decode) = self.peek_reference(&source, &publication)?;
        say!(
            "  server decoded {} changes in {:.1} s; null consumer on the same slot …",
            thousands(decoded),
            decode.as_secs_f64()
        );
        let (consumed, consume) = self.null_consumer(&publication, end_lsn)?;
        if consumed != decoded {
            bail!("the null consumer saw {consumed} row changes, the server decoded {decoded}");
        }
        let drop_slot = format!("SELECT pg_drop_replication_slot('{REF_SLOT}')");
        self.source.psql(&self.src_db, &drop_slot)?;
        say!(
            "  null consumer read them in {:.1} s",
            consume.as_secs_f64()
        );
        let mut figures = CdcFigures {
            label: kind.label(),
            transactions: kind.transactions(),
            produced: kind.transactions() * kind.changes_per_tx(),
            produce,
            decoded,
            decode,
            consume,
            ferry: None,
        };
        if let Some(db) = ferry_db {
            match self.ferry_drain(db, end_lsn) {
                Ok(f) => {
                    figures.ferry = Some(f);
                    if let Err(e) = self.compare_accounts(db) {
                        report.ferry_failed(kind.label(), &e);
                    }
                }
                Err(e) => report.ferry_failed(kind.label(), &e),
            }
        }
        Ok(figures)
    }

    /// ferry's publication if it exists (ferry created it), else our own FOR ALL TABLES.
    fn reference_publication(&self) -> anyhow::Result<String> {
        let sql = format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname IN ('{FERRY_PUBLICATION}', 'bench_ref_pub'))
             THEN CREATE PUBLICATION bench_ref_pub FOR ALL TABLES; END IF; END $$;
             SELECT pubname FROM pg_publication WHERE pubname IN ('{FERRY_PUBLICATION}', 'bench_ref_pub')
             ORDER BY pubname = '{FERRY_PUBLICATION}' DESC LIMIT 1"
        );
        self.sql_one(&self.source, &self.src_db, &sql)
    }

    fn write_backlog(&self, kind: Backlog) -> anyhow::Result<()> {
        let mut cmd = Self::tool(&self.source, "pgbench");
        cmd.args(["-n", "-M", "prepared", "-c", "2", "-j", "2"])
            .env("PGOPTIONS", "-c synchronous_commit=off");
        match kind {
            Backlog::Tpcb(n) => {
                cmd.args(["-t", &n.to_string()]);
            }
            Backlog::MultiRow(n) => {
                // Each client updates its own half of the accounts: no lock waits, no deadlocks.
                let script = self.work.path().join("multirow.sql");
                std::fs::write(
                    &script,
                    "\\set half :naccounts / 2\n\
                     \\set aid 1 + :client_id * :half + random(0, :half - 1000)\n\
                     UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN :aid AND :aid + 999;\n",
                )?;
                cmd.args([
                    "-t",
                    &n.to_string(),
                    "-D",
                    &format!("naccounts={}", self.accounts),
                    "-f",
                ])
                .arg(&script);
            }
            Backlog::KeylessHistory(n) => {
                // pgbench's builtin tpcb-like script, history into the keyless copy.
                let script = self.work.path().join("tpcb-nokey.sql");
                std::fs::write(&script, TPCB_KEYLESS_HISTORY)?;
                let branches = (self.accounts / 100_000).max(1);
                cmd.args([
                    "-t",
                    &n.to_string(),
                    "-D",
                    &format!("naccounts={}", self.accounts),
                    "-D",
                    &format!("nbranches={branches}"),
                    "-D",
                    &format!("ntellers={}", branches * 10),
                    "-f",
                ])
                .arg(&script);
            }
            Backlog::KeylessChurn(n) => {
                // Each client works on its own half of the ids.
                let script = self.work.path().join("nokey.sql");
                std::fs::write(&script, KEYLESS_CHURN)?;
                cmd.args([
                    "-t",
                    &n.to_string(),
                    "-D",
                    &format!("nrows={}", self.keyless_rows),
                    "-f",
                ])
                .arg(&script);
            }
        }
        cmd.arg(&self.src_db);
        let out = run_tool(&mut cmd, "pgbench")?;
        if let Some(line) = out.lines().find(|l| l.contains("actually processed")) {
            say!("  pgbench: {}", line.trim());
        }
        Ok(())
    }

    /// The server's pgoutput decoding of the reference slot: (row changes, time).
    fn peek_reference(
        &self,
        source: &Client,
        publication: &str,
    ) -> anyhow::Result<(u64, Duration)> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68)) \
             FROM pg_logical_slot_peek_binary_changes('{REF_SLOT}', NULL, NULL, \
             'proto_version', '1', 'publication_names', '{publication}')"
        );
        let started = Instant::now();
        let row = self
            .rt
            .block_on(source.query_one(sql.as_str(), &[]))
            .context("peeking the reference slot")?;
        let took = started.elapsed();
        Ok((u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), took))
    }

    /// The reference slot streamed over the replication protocol up to
    /// the first commit past `end_lsn` (the marker's) and discarded:
    /// (row changes, time from connecting). Uses ferry's frame reader only:
    /// no decoding into rows, no apply.
    fn null_consumer(&self, publication: &str, end_lsn: u64) -> anyhow::Result<(u64, Duration)> {
        use ferry_core::config::{Endpoint, SslMode};
        use ferry_core::position::Lsn;
        use ferry_postgres::replication::{
            PgOutputOptions, ReplicationConnection, ReplicationMessage,
        };
        let endpoint = Endpoint {
            url: ferry_core::secret::RedactedUrl::new(&self.source_url()),
            sslmode: Some(SslMode::Disable),
            sslrootcert: None,
        };
        let options = PgOutputOptions {
            proto_version: 1,
            publications: vec![publication.to_owned()],
            messages: false,
        };
        self.rt.block_on(async {
            let started = Instant::now();
            let conn = ReplicationConnection::connect(&endpoint).await?;
            let mut stream = conn.start_replication(REF_SLOT, Lsn(0), &options).await?;
            let mut changes = 0u64;
            loop {
                match stream.next().await? {
                    Some(ReplicationMessage::XLogData { start, data, .. }) => match data.first() {
                        Some(b'I' | b'U' | b'D') => changes += 1,
                        // The marker's commit: everything the peek counted is in.
                        Some(b'C') if start.0 > end_lsn => break,
                        _ => {}
                    },
                    Some(ReplicationMessage::Keepalive {
                        reply_requested, ..
                    }) => {
                        if reply_requested {
                            stream.send_status(Lsn(0), false).await?;
                        }
                    }
                    None => bail!("the server ended the stream before {}", lsn_text(end_lsn)),
                }
            }
            let took = started.elapsed();
            stream.finish().await;
            Ok((changes, took))
        })
    }

    /// `ferry run` on the loaded target until its checkpoint reaches `end_lsn`.
    fn ferry_drain(&self, db: &str, end_lsn: u64) -> anyhow::Result<Drain> {
        say!(
            "  ferry: `ferry run` until ferry.checkpoint ≥ {} …",
            lsn_text(end_lsn)
        );
        let target = self.rt.block_on(connect(&self.target.url(db)))?;
        let perf = self.start_perf()?;
        let servers = || {
            (
                self.source.pid().map_or(Duration::ZERO, cpu::tree),
                self.target.pid().map_or(Duration::ZERO, cpu::tree),
            )
        };
        let (source0, target0) = servers();
        let started = Instant::now();
        let mut bg = self.spawn_ferry(db, "drain")?;
        let took = wait_for(
            &mut bg,
            "draining the backlog",
            started,
            DRAIN_TIMEOUT,
            || applied_at_least(&self.rt, &target, end_lsn),
        );
        let (source1, target1) = servers();
        let cpu = DrainCpu {
            source: source1.saturating_sub(source0),
            target: target1.saturating_sub(target0),
            ferry: cpu::process(bg.pid()),
        };
        if let Some(perf) = perf {
            perf.signal_and_wait(libc::SIGINT, Duration::from_secs(60))?;
        }
        let took = took?;
        let rss = peak_rss_kb(bg.pid());
        self.settle_slot(&mut bg, end_lsn)?;
        stop_ferry(bg)?;
        say!(
            "  ferry drained in {:.1} s; CPU: source {:.1} s, target {:.1} s, ferry {:.1} s",
            took.as_secs_f64(),
            cpu.source.as_secs_f64(),
            cpu.target.as_secs_f64(),
            cpu.ferry.as_secs_f64()
        );
        Ok(Drain { took, rss, cpu })
    }

    /// After the timed drain, leave ferry streaming until its slot's
    /// `restart_lsn` passes `end_lsn`, as it would in a long run. The
    /// server moves `restart_lsn` only at a running-transactions record
    /// decoded below the confirmed position (a CHECKPOINT writes one);
    /// stopping ferry the moment it caught up would leave the next drain
    /// re-decoding this backlog first, which the fresh reference slot
    /// never does.
    fn settle_slot(&self, bg: &mut Background, end_lsn: u64) -> anyhow::Result<()> {
        let source = self.rt.block_on(connect(&self.source_url()))?;
        let sql = format!(
            "SELECT (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = '{FERRY_SLOT}'"
        );
        let started = Instant::now();
        let mut last_checkpoint: Option<Instant> = None;
        loop {
            let row = self.rt.block_on(source.query_opt(sql.as_str(), &[]))?;
            let restart = row
                .and_then(|r| r.get::<_, Option<i64>>(0))
                .and_then(|n| u64::try_from(n).ok());
            if restart.is_some_and(|r| r >= end_lsn) {
                return Ok(());
            }
            if started.elapsed() > SETTLE_TIMEOUT {
                say!(
                    "  (ferry's slot restart_lsn still {} after {SETTLE_TIMEOUT:?}; the next drain re-decodes from there)",
                    restart.map_or("unknown".to_owned(), lsn_text)
                );
                return Ok(());
            }
            if last_checkpoint.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                self.rt.block_on(source.batch_execute("CHECKPOINT"))?;
                last_checkpoint = Some(Instant::now());
            }
            if let Some(code) = bg.exited()? {
                bail!(
                    "ferry run exited ({code:?}) after the drain\n{}",
                    tail(&bg.log(), 40)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// A cheap consistency check after a drain (the source is idle by then).
    fn compare_accounts(&self, db: &str) -> anyhow::Result<()> {
        let sql = "SELECT (SELECT count(*) || '/' || coalesce(sum(abalance), 0) FROM pgbench_accounts) \
                   || ' ' || (SELECT count(*) FROM pgbench_history) \
                   || ' ' || (SELECT count(*) || '/' || coalesce(sum(delta), 0) FROM bench_history_nokey) \
                   || ' ' || (SELECT count(*) || '/' || sum(v) || '/' || sum(id) FROM bench_nokey)";
        let s = self.sql_one(&self.source, &self.src_db, sql)?;
        let t = self.sql_one(&self.target, db, sql)?;
        if s != t {
            bail!(
                "after the drain source and target differ (accounts count/sum, history count, keyless history count/sum, keyless table count/sum v/sum id): source {s}, target {t}"
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- report

#[derive(Debug, Default)]
struct Report {
    scale: u32,
    quick: bool,
    environment: String,
    load: Option<LoadFigures>,
    cdc: Vec<CdcFigures>,
    cutover: Option<cutover::CutoverFigures>,
    lag: Option<cutover::LagFigures>,
    memory: Option<ferry_e2e::memory::MemoryFigures>,
    failures: Vec<String>,
}

impl Report {
    fn new(sizes: &Sizes) -> Report {
        Report {
            scale: sizes.scale,
            quick: sizes.quick,
            ..Report::default()
        }
    }

    fn ferry_failed(&mut self, step: &str, e: &anyhow::Error) {
        say!("  ferry FAILED in {step}: {e:#}");
        self.failures.push(format!("ferry failed in {step}: {e:#}"));
    }

    fn render(&self) -> String {
        let mut s = String::from("# ferry benchmark\n\n");
        let _ = writeln!(
            s,
            "Scale {}{}. {}\n\nFigures are throughput; ratios compare ferry with a reference measured \
             in the same run on the same servers (for cutover and lag: with a fixed target). \
             Not a pass/fail test.\n",
            self.scale,
            if self.quick { " (--quick)" } else { "" },
            self.environment
        );
        s.push_str("| benchmark | size | reference | ferry | ratio ferry/reference (target) |\n|---|---|---|---|---|\n");
        if let Some(l) = &self.load {
            s.push_str(&l.row());
        }
        for c in &self.cdc {
            s.push_str(&c.row());
        }
        if let Some(c) = &self.cutover {
            s.push_str(&c.row());
        }
        if let Some(l) = &self.lag {
            s.push_str(&l.row());
        }
        if let Some(m) = &self.memory {
            s.push_str(&memory::row(m));
        }
        if let Some(c) = &self.cutover {
            s.push_str(&c.steps_section());
        }
        if !self.failures.is_empty() {
            s.push_str("\n## Problems\n\n");
            for f in &self.failures {
                let _ = writeln!(s, "```\n{}\n```", f.trim());
            }
        }
        s
    }
}

impl LoadFigures {
    fn row(&self) -> String {
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

impl CdcFigures {
    fn row(&self) -> String {
        let produce = self.produced as f64 / self.produce.as_secs_f64();
        let decode = self.decoded as f64 / self.decode.as_secs_f64();
        let size = format!(
            "{} tx, changes={}",
            thousands(self.transactions),
            thousands(self.decoded)
        );
        let consume = self.decoded as f64 / self.consume.as_secs_f64();
        let reference = format!(
            "source production: {} changes/s; server decoding: {} changes/s ({:.1} s); null replication consumer: {} changes/s ({:.1} s)",
            rate(produce),
            rate(decode),
            self.decode.as_secs_f64(),
            rate(consume),
            self.consume.as_secs_f64()
        );
        let (ferry, ratio) = match &self.ferry {
            Some(drain) => {
                let r = self.decoded as f64 / drain.took.as_secs_f64();
                // The in-server peek is single-threaded: its time is its CPU cost.
                let decode_cost = self.decode.div_f64(self.decoded.max(1) as f64);
                let ceiling = drain.cpu.ceiling(decode_cost, self.decoded);
                (
                    format!(
                        "drain: {} changes/s ({:.1} s, peak RSS {}); CPU per change: {}",
                        rate(r),
                        drain.took.as_secs_f64(),
                        mib(drain.rss),
                        drain.cpu.per_change(self.decoded)
                    ),
                    format!(
                        "{:.2} (≥ 0.8); {:.2} of the null consumer; CPU ceiling (server decoding + this target apply cost on all cores): {} changes/s = {:.2} of decoding",
                        r / decode,
                        r / consume,
                        rate(ceiling),
                        ceiling / decode
                    ),
                )
            }
            None => ("not run".to_owned(), "– (≥ 0.8)".to_owned()),
        };
        format!(
            "| {} | {size} | {reference} | {ferry} | {ratio} |\n",
            self.label
        )
    }
}

fn report_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BENCH_REPORT") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("target")
        .join("bench-report.md")
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1}k", per_s / 1e3)
    } else {
        format!("{per_s:.1}")
    }
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or_else(|| "?".to_owned(), |k| format!("{} MiB", k / 1024))
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
