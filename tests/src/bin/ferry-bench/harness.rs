//! What every benchmark shares: the two durable servers, the generated
//! pgbench + wide-table data set, client tools, and running ferry.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_e2e::pgsync::{applied_lsn, runtime};
use ferry_e2e::{Background, ferry};
use ferry_testkit::{ADMIN_PASSWORD, ADMIN_USER, PgOptions, PgServer};
use tokio_postgres::Client;

use crate::Sizes;
use crate::report::{tail, thousands};

/// A one-row no-op change after a backlog: gives ferry a transaction to
/// checkpoint even if it records commit (not end) positions.
pub(crate) const MARKER_SQL: &str = "UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1";
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(45 * 60);
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// For waits timed to well under a second (a full load of Pagila): a 50 ms
/// poll would add up to 50 ms to a figure of 0.3–0.5 s.
pub(crate) const POLL_FINE: Duration = Duration::from_millis(5);

/// The two servers, the source database and a scratch directory.
#[derive(Debug)]
pub(crate) struct Bench {
    pub(crate) source: PgServer,
    pub(crate) target: PgServer,
    pub(crate) src_db: String,
    pub(crate) accounts: u64,
    pub(crate) keyless_rows: u64,
    pub(crate) work: tempfile::TempDir,
    pub(crate) rt: tokio::runtime::Runtime,
}

pub(crate) fn bench_server(wal_level: &str) -> anyhow::Result<PgServer> {
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
    pub(crate) fn start(sizes: &Sizes) -> anyhow::Result<Bench> {
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

    pub(crate) fn environment(&self) -> anyhow::Result<String> {
        let version = self.source.psql(&self.src_db, "SHOW server_version")?;
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        Ok(format!(
            "PostgreSQL {} (source and target on this machine, fsync on, shared_buffers=512MB, \
             max_wal_size=4GB, CHECKPOINT before each timed step), {cores} CPU cores",
            version.trim()
        ))
    }

    /// A PostgreSQL client tool (`pgbench`, `pg_dump`, …) for `server`.
    pub(crate) fn tool(server: &PgServer, name: &str) -> Command {
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

    pub(crate) fn sql_one(&self, server: &PgServer, db: &str, sql: &str) -> anyhow::Result<String> {
        Ok(server.psql(db, sql)?.trim().to_owned())
    }

    /// pgbench tables (+ a key on history, + a secondary index) and the wide table.
    pub(crate) fn generate(&self, sizes: &Sizes) -> anyhow::Result<()> {
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

    /// Pagila (`../shared/datasets/pagila`) instead of the generated data
    /// (`FERRY_BENCH_DATASET=pagila`, with `--load-only`).
    pub(crate) fn load_pagila(&self) -> anyhow::Result<()> {
        say!("loading Pagila into the source …");
        let started = Instant::now();
        self.source.load_pagila(&self.src_db)?;
        // Pagila's objects belong to `postgres`: the tools restore owners.
        self.target.psql(
            "postgres",
            "DO $$ BEGIN CREATE ROLE postgres; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
        )?;
        self.source
            .psql(&self.src_db, "VACUUM (ANALYZE); CHECKPOINT;")?;
        say!("  loaded in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Source tables, largest first, with row counts.
    pub(crate) fn source_tables(&self) -> anyhow::Result<Vec<(String, i64)>> {
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

    pub(crate) fn count_rows(
        &self,
        server: &PgServer,
        db: &str,
        table: &str,
    ) -> anyhow::Result<i64> {
        let n = self.sql_one(server, db, &format!("SELECT count(*) FROM public.{table}"))?;
        n.parse()
            .with_context(|| format!("row count of {table}: {n:?}"))
    }

    pub(crate) fn source_bytes(&self) -> anyhow::Result<u64> {
        let n = self.sql_one(
            &self.source,
            &self.src_db,
            "SELECT sum(pg_table_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r'",
        )?;
        Ok(n.parse().unwrap_or(0))
    }

    pub(crate) fn checkpoint_both(&self) -> anyhow::Result<()> {
        self.source.psql("postgres", "CHECKPOINT")?;
        self.target.psql("postgres", "CHECKPOINT")?;
        Ok(())
    }

    pub(crate) fn source_url(&self) -> String {
        self.source.url(&self.src_db)
    }
}

/// Run a client tool to completion; error with its stderr.
pub(crate) fn run_tool(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
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

impl Bench {
    pub(crate) fn spawn_ferry(&self, db: &str, what: &str) -> anyhow::Result<Background> {
        self.spawn_ferry_bin(db, what, None)
    }

    /// [`Self::spawn_ferry`] with another `ferry` binary (a baseline build).
    pub(crate) fn spawn_ferry_bin(
        &self,
        db: &str,
        what: &str,
        bin: Option<&std::path::Path>,
    ) -> anyhow::Result<Background> {
        let mut cmd = self.run_command(&self.source_url(), db, bin)?;
        cmd.env("FERRY_SOURCE_SSLMODE", "disable");
        self.spawn_logged(cmd, what)
    }

    /// `ferry run` (or `bin run`, with the same environment) from
    /// `source_url` into `db` of the target, control API on a free port,
    /// `FERRY_BENCH_LOG` as its log level.
    pub(crate) fn run_command(
        &self,
        source_url: &str,
        db: &str,
        bin: Option<&std::path::Path>,
    ) -> anyhow::Result<Command> {
        let mut cmd = ferry(source_url, &self.target.url(db))?;
        if let Some(bin) = bin {
            let mut other = Command::new(bin);
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => other.env(k, v),
                    None => other.env_remove(k),
                };
            }
            cmd = other;
        }
        cmd.arg("run")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", "127.0.0.1:0");
        if let Ok(level) = std::env::var("FERRY_BENCH_LOG") {
            cmd.env("FERRY_LOG", level);
        }
        Ok(cmd)
    }

    /// Start `cmd` with its log in `ferry-{what}.log` of the scratch
    /// directory, or of `FERRY_BENCH_LOGDIR` (kept after the run).
    pub(crate) fn spawn_logged(&self, cmd: Command, what: &str) -> anyhow::Result<Background> {
        let dir = std::env::var_os("FERRY_BENCH_LOGDIR")
            .map_or_else(|| self.work.path().to_owned(), PathBuf::from);
        std::fs::create_dir_all(&dir)?;
        Background::spawn(cmd, &dir.join(format!("ferry-{what}.log")))
    }
}

/// Poll `probe` every 50 ms until true; error if ferry exits or on timeout.
pub(crate) fn wait_for(
    bg: &mut Background,
    what: &str,
    started: Instant,
    timeout: Duration,
    probe: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    wait_for_process(bg, "ferry run", what, started, timeout, POLL, probe)
}

/// Polls `probe` every `poll` until it holds (the time since `started`);
/// fails with the tail of `who`'s log when the process exits or `timeout`
/// passes.
pub(crate) fn wait_for_process(
    bg: &mut Background,
    who: &str,
    what: &str,
    started: Instant,
    timeout: Duration,
    poll: Duration,
    mut probe: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    loop {
        if probe() {
            return Ok(started.elapsed());
        }
        if let Some(code) = bg.exited()? {
            bail!(
                "{who} exited ({code:?}) while {what}\n--- {who} log (tail) ---\n{}",
                tail(&bg.log(), 40)
            );
        }
        if started.elapsed() > timeout {
            bail!(
                "{who} was still {what} after {timeout:?}\n--- {who} log (tail) ---\n{}",
                tail(&bg.log(), 40)
            );
        }
        std::thread::sleep(poll);
    }
}

pub(crate) fn stop_ferry(bg: Background) -> anyhow::Result<()> {
    let log_tail = tail(&bg.log(), 40);
    match bg.signal_and_wait(libc::SIGTERM, Duration::from_secs(120))? {
        Some(0) => Ok(()),
        code => bail!(
            "ferry run exited {code:?} after SIGTERM (expected 0)\n--- ferry log (tail) ---\n{log_tail}"
        ),
    }
}

pub(crate) async fn pipeline_phase(target: &Client) -> Option<String> {
    let rows = target
        .query("SELECT phase FROM ferry.pipeline", &[])
        .await
        .ok()?;
    rows.first().map(|r| r.get::<_, String>(0))
}

pub(crate) fn applied_at_least(rt: &tokio::runtime::Runtime, target: &Client, lsn: u64) -> bool {
    rt.block_on(applied_lsn(target))
        .ok()
        .flatten()
        .is_some_and(|a| a >= lsn)
}

/// `VmHWM` (peak resident set) of a running process, in kB.
pub(crate) fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
