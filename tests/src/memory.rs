//! Bounded memory under large rows and large transactions (issue 10 item
//! 13), shared by the `app_memory` test and `make bench`.
//!
//! A `ferry run` with `apply.max_buffered_bytes` = [`BUDGET`] streams, with
//! pgoutput protocol v2 and `logical_decoding_work_mem = 1MB` on the source
//! (so the server streams every large transaction before its commit):
//!
//! 1. one 20,000-row transaction in which every 100th row carries a 1 MiB
//!    value (200 MiB of row data);
//! 2. four concurrent transactions on four connections, each inserting
//!    [`CONCURRENT_ROWS`] rows of 1 MiB in slices that interleave in the WAL.
//!
//! Together more than ten times the budget. Then the target must equal the
//! source, and ferry's peak resident set (`VmHWM` of `/proc/<pid>/status`)
//! must stay under [`rss_bound`].

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_testkit::{PgOptions, PgServer};

use crate::{Background, ferry, pgsync};

/// `apply.max_buffered_bytes` of the run.
pub const BUDGET: u64 = 32 << 20;
/// Rows of 1 MiB each concurrent transaction inserts.
pub const CONCURRENT_ROWS: u32 = 48;
const MIB: u64 = 1 << 20;
const LONG: Duration = Duration::from_secs(600);

/// The stated bound on ferry's peak RSS: the budget twice (row data in the
/// buffers plus the copies the target statements are built from) and a
/// fixed 96 MiB for the binary, the runtime, connections and allocator.
pub fn rss_bound(budget: u64) -> u64 {
    2 * budget + 96 * MIB
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct MemoryFigures {
    pub budget: u64,
    /// Bytes of row data the source committed.
    pub data_bytes: u64,
    pub peak_rss: u64,
    pub seconds: f64,
}

impl MemoryFigures {
    pub fn bound(&self) -> u64 {
        rss_bound(self.budget)
    }
}

/// Peak resident set size of `pid` (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/<pid>/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM without a value")?
        .parse()
        .context("VmHWM value")?;
    Ok(kib * 1024)
}

/// Run the workload with ferry streaming it; `logs` receives ferry's log.
pub fn run(logs: &Path) -> anyhow::Result<MemoryFigures> {
    let source = PgServer::start(
        PgOptions::new()
            .setting("logical_decoding_work_mem", "1MB")
            .setting("max_wal_size", "4GB"),
    )?;
    let target = PgServer::start(PgOptions::new().wal_level("replica"))?;
    let sdb = source.create_database("src")?;
    let tdb = target.create_database("dst")?;
    // EXTERNAL: stored out of line uncompressed, so the WAL and pgoutput
    // carry the full 1 MiB of every value.
    source.psql(
        &sdb,
        "CREATE TABLE blobs (id int PRIMARY KEY, body text NOT NULL);
         ALTER TABLE blobs ALTER body SET STORAGE EXTERNAL;",
    )?;
    let (source_url, target_url) = (source.url(&sdb), target.url(&tdb));
    let mut cmd = ferry(&source_url, &target_url)?;
    cmd.env("FERRY_LOG", "info")
        .env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .env("FERRY_CONTROL_LISTEN", "127.0.0.1:0")
        .env("FERRY_POSTGRES_PROTO_VERSION", "2")
        .env("FERRY_APPLY_MAX_BUFFERED_BYTES", BUDGET.to_string())
        .arg("run");
    let mut ferry_run = Background::spawn(cmd, &logs.join("memory.log"))?;
    let rt = pgsync::runtime();
    let started = Instant::now();
    let result = rt.block_on(async {
        let src = pgsync::connect(&source_url).await?;
        let first = pgsync::current_lsn(&src).await?;
        // Wait for the stream (the load of the empty table is instant).
        pgsync::wait_applied(&target_url, first, LONG).await?;
        let mut data = 0u64;
        // 1. 20,000 rows in one transaction, every 100th carrying 1 MiB.
        src.batch_execute(
            "INSERT INTO blobs
             SELECT g, CASE WHEN g % 100 = 0 THEN repeat(md5(g::text), 32768) ELSE md5(g::text) END
               FROM generate_series(1, 20000) g",
        )
        .await?;
        data += 200 * MIB + 19_800 * 32;
        // 2. Four concurrent transactions of 1 MiB rows, interleaved.
        let mut tasks = Vec::new();
        for n in 0..4u32 {
            let url = source_url.clone();
            tasks.push(tokio::spawn(async move {
                let c = pgsync::connect(&url).await?;
                c.batch_execute("BEGIN").await?;
                let base = 100_000 * (n + 1);
                for slice in 0..CONCURRENT_ROWS / 8 {
                    let from = base + slice * 8;
                    c.batch_execute(&format!(
                        "INSERT INTO blobs SELECT g, repeat(md5(g::text), 32768)
                           FROM generate_series({from}, {}) g",
                        from + 7
                    ))
                    .await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                c.batch_execute("COMMIT").await?;
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await.context("concurrent writer")??;
        }
        data += 4 * u64::from(CONCURRENT_ROWS) * MIB;
        let lsn = pgsync::current_lsn(&src).await?;
        pgsync::wait_applied(&target_url, lsn, LONG).await?;
        let dst = pgsync::connect(&target_url).await?;
        // Light digest: one md5 per row, ordered by key.
        let digest =
            "SELECT count(*), coalesce(md5(string_agg(md5(body), '' ORDER BY id)), '') FROM blobs";
        let s = src.query_one(digest, &[]).await?;
        let d = dst.query_one(digest, &[]).await?;
        let (s, d): ((i64, String), (i64, String)) = ((s.get(0), s.get(1)), (d.get(0), d.get(1)));
        if s != d {
            bail!("source and target differ: source {s:?}, target {d:?}");
        }
        anyhow::Ok(data)
    });
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss(ferry_run.pid());
    if let Some(code) = ferry_run.exited()? {
        bail!(
            "ferry exited early with {code:?}:\n{}",
            tail(&ferry_run.log())
        );
    }
    let data_bytes = result.with_context(|| tail(&ferry_run.log()))?;
    let peak_rss = peak?;
    let code = ferry_run.signal_and_wait(libc::SIGTERM, Duration::from_secs(60))?;
    if code != Some(0) {
        bail!("ferry did not stop cleanly on SIGTERM: {code:?}");
    }
    drop((source, target));
    Ok(MemoryFigures {
        budget: BUDGET,
        data_bytes,
        peak_rss,
        seconds,
    })
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
