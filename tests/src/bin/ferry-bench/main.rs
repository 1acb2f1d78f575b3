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
//!    `stream` (caught up, foreign keys validated; polled every 5 ms).
//! 2. **CDC apply.** ferry is stopped (SIGTERM) once streaming; a reference
//!    slot is created at that moment; a backlog is written with pgbench;
//!    reference: `pg_logical_slot_peek_binary_changes` on the reference slot
//!    (the server's own pgoutput decoding rate) and a null consumer on the
//!    same slot: `START_REPLICATION` read to the end LSN and discarded (the
//!    ceiling of any replication client on this server: the walsender's own
//!    per-message cost, which the in-server peek does not pay), two passes
//!    before ferry's drain and one after it, the median the reference; ferry:
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
//!    can pass on this machine. At the drain's end the walsender, the
//!    target's busiest ferry session and ferry report how they spent it
//!    (on a CPU, waiting for one, asleep: `/proc/PID/task/*/schedstat`),
//!    so a stage short of cores is told from one waiting on another.
//!    After the timed part ferry keeps streaming
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
//!    `cutover.rs` (fresh servers, the control API).
//!    `--control-only` runs only these two.
//!
//! `--load-only` runs only benchmark 1 (for iterating on the loader);
//! with `FERRY_BENCH_DATASET=pagila` its source is Pagila
//! (`../shared/datasets/pagila`) instead of the generated data.
//! `--cdc-only` skips the raw-load reference and the control benchmarks
//! (ferry still loads the target it drains into): for iterating on the
//! applier. Its report has no full-load ratio.
//!
//! If ferry fails, its log tail is printed, the reference figures are still
//! measured and printed, and the process exits non-zero.
//!
//! 8. **Cutover with fallback**: the write freeze with `--with-fallback`
//!    next to one without (fresh servers each, target `wal_level =
//!    logical`), then the reverse lag under unthrottled pgbench on the new
//!    database; see `fallback.rs`. `--fallback-only` runs only this one.
//!
//! 5. **Validation rate**: see `validate.rs` (fresh servers, SCALE×100k
//!    rows against an ordered `md5(string_agg(...))` on each side).
//!    `--validate-only` runs only this one.
//! 6. **SQLite source**: full load of a generated file against pgloader,
//!    capture cost on the application, drain, lag; see `sqlite.rs`.
//!    `--sqlite-only` runs only this one.
//! 7. **MariaDB full load** against pgloader: see `mariadb.rs`; and
//!    **MariaDB CDC**: binlog backlogs drained against the raw binlog read
//!    rate and pg_chameleon, lag under a steady writer: see `mariadb_cdc.rs`
//!    (`FERRY_BENCH_MARIADB_CHANGES`: row changes per backlog).
//!    `--mariadb-only` runs only these two, `--mariadb-cdc-only` only the CDC part.
//! 8. **Proxy**: pgbench through ferry's PostgreSQL-wire proxy against
//!    direct connections and pgbouncer, shadow-read cost, the client-side
//!    write freeze of `cutover --via-proxy`; see `proxy.rs`
//!    (`--proxy-only` runs only it).
//!
//! One module per benchmark: [`load`] (1), [`cdc`] (2), [`cutover`] (3 and
//! 4), [`validate`] (5), [`sqlite`] (6), [`mariadb`] and [`mariadb_cdc`] (7), [`memory`]; [`harness`] holds the servers, the generated data and the
//! ferry process they share, [`report`] the figures table, [`cpu`] the CPU
//! accounting of a drain.

use std::process::ExitCode;

use anyhow::{Context, bail};

/// Progress and the report go to stdout.
macro_rules! say {
    ($($arg:tt)*) => {{
        #[allow(clippy::print_stdout)]
        {
            println!($($arg)*);
        }
    }};
}

mod cdc;
mod cpu;
mod cutover;
mod fallback;
mod harness;
mod load;
mod mariadb;
mod mariadb_cdc;
mod memory;
mod proxy;
mod report;
mod sqlite;
mod validate;

use cdc::Backlog;
use harness::Bench;
use report::{Report, report_path};

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
    let result = match sizes.only {
        None | Some(Only::Cdc | Only::Load) => run(&sizes, &mut report),
        Some(only) => {
            report.environment = format!("{} only ({}).", only.what(), only.flag());
            Ok(())
        }
    };
    if let Err(e) = &result {
        report.failures.push(format!("benchmark aborted: {e:#}"));
    }
    if matches!(sizes.only, None | Some(Only::Control)) {
        cutover::run_all(&sizes, &mut report);
    }
    if matches!(sizes.only, None | Some(Only::Validate)) {
        validate::run(&sizes, &mut report);
    }
    if matches!(sizes.only, None | Some(Only::Sqlite)) {
        run_sqlite(&sizes, &mut report);
    }
    if matches!(sizes.only, None | Some(Only::MariaDb)) {
        mariadb::run(&sizes, &mut report);
    }
    if matches!(sizes.only, None | Some(Only::MariaDb | Only::MariaDbCdc)) {
        mariadb_cdc::run(&mut report);
    }
    if matches!(sizes.only, None | Some(Only::Fallback)) {
        fallback::run(&sizes, &mut report);
    }
    if matches!(sizes.only, None | Some(Only::Proxy)) {
        proxy::run(&sizes, &mut report);
    }
    if matches!(sizes.only, None | Some(Only::Control | Only::Cdc)) {
        memory::run(&mut report);
    }
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
    let pagila = std::env::var("FERRY_BENCH_DATASET").is_ok_and(|d| d == "pagila");
    if pagila {
        if sizes.only != Some(Only::Load) {
            anyhow::bail!("FERRY_BENCH_DATASET=pagila is for --load-only");
        }
        bench.load_pagila()?;
    } else {
        bench.generate(sizes)?;
    }
    report.load = Some(bench.full_load(sizes.only == Some(Only::Cdc), report)?);
    if sizes.only == Some(Only::Load) {
        return Ok(());
    }
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

/// Benchmark 5 on servers of its own.
fn run_sqlite(sizes: &Sizes, report: &mut Report) {
    let result = Bench::start(sizes).and_then(|b| b.sqlite_run(sizes.accounts(), sizes.wide_rows));
    match result {
        Ok(f) => report.sqlite = Some(f),
        Err(e) => report.ferry_failed("the SQLite benchmark", &e),
    }
}

/// A benchmark run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    /// The cutover and lag benchmarks (`--control-only`).
    Control,
    /// The CDC benchmarks, no raw-load reference (`--cdc-only`).
    Cdc,
    /// The full load and its references (`--load-only`).
    Load,
    /// The validation rate (`--validate-only`).
    Validate,
    /// The SQLite source (`--sqlite-only`).
    Sqlite,
    /// The MariaDB full load and CDC (`--mariadb-only`).
    MariaDb,
    /// The MariaDB CDC part alone (`--mariadb-cdc-only`).
    MariaDbCdc,
    /// The cutover with fallback and the reverse lag (`--fallback-only`).
    Fallback,
    /// The PostgreSQL-wire proxy against direct and pgbouncer (`--proxy-only`).
    Proxy,
}

impl Only {
    const ALL: [Only; 9] = [
        Only::Control,
        Only::Cdc,
        Only::Load,
        Only::Validate,
        Only::Sqlite,
        Only::MariaDb,
        Only::MariaDbCdc,
        Only::Fallback,
        Only::Proxy,
    ];

    fn flag(self) -> &'static str {
        match self {
            Only::Control => "--control-only",
            Only::Cdc => "--cdc-only",
            Only::Load => "--load-only",
            Only::Validate => "--validate-only",
            Only::Sqlite => "--sqlite-only",
            Only::MariaDb => "--mariadb-only",
            Only::MariaDbCdc => "--mariadb-cdc-only",
            Only::Fallback => "--fallback-only",
            Only::Proxy => "--proxy-only",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Only::Control => "Control benchmarks (the pgbench scale is in each row)",
            Only::Cdc => "CDC benchmarks",
            Only::Load => "Full-load benchmark",
            Only::Validate => "Validation benchmark",
            Only::Sqlite => "SQLite source benchmark",
            Only::MariaDb => "MariaDB full-load and CDC benchmarks",
            Only::MariaDbCdc => "MariaDB CDC benchmark",
            Only::Fallback => "Fallback benchmark",
            Only::Proxy => "Proxy benchmark",
        }
    }
}

/// Benchmark sizes.
#[derive(Debug, Clone)]
struct Sizes {
    scale: u32,
    quick: bool,
    /// One benchmark alone, or all (`None`).
    only: Option<Only>,
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
        let mut quick = false;
        let mut only = None;
        for arg in std::env::args().skip(1) {
            if arg == "--quick" {
                quick = true;
            } else if let Some(o) = Only::ALL.into_iter().find(|o| o.flag() == arg) {
                if only.is_some_and(|p| p != o) {
                    bail!(
                        "{arg}: only one of {} at a time",
                        Only::ALL.map(Only::flag).join(", ")
                    );
                }
                only = Some(o);
            } else {
                bail!(
                    "unknown argument {arg:?}; usage: ferry-bench [--quick] [{}] (sizes: FERRY_BENCH_SCALE=N)",
                    Only::ALL.map(Only::flag).join(" | ")
                );
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
            only,
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
