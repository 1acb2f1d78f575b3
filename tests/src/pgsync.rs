//! Helpers for PostgreSQL → PostgreSQL end-to-end runs: a pgbench-like
//! concurrent writer, waiting for the applied checkpoint to reach a source
//! position, and comparing source and target table by table.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_postgres::{Client, NoTls};

/// A current-thread runtime for the synchronous tests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Connect without TLS (the test servers listen on loopback only).
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.with_context(|| {
        format!(
            "connecting to {}",
            url.split('@').next_back().unwrap_or("?")
        )
    })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The pgbench-like schema the writer works on: keyed tables, a keyless
/// history table (REPLICA IDENTITY FULL), and a table whose rows carry a
/// large TOASTed text next to small columns that updates touch alone.
pub const BENCH_SCHEMA: &str = r#"
CREATE TABLE branches (bid int PRIMARY KEY, bbalance bigint NOT NULL, filler text);
CREATE TABLE tellers (tid int PRIMARY KEY, bid int NOT NULL, tbalance bigint NOT NULL, filler text);
CREATE TABLE accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance bigint NOT NULL, filler text);
CREATE TABLE history (tid int, bid int, aid int, delta int, mtime timestamptz, filler text);
ALTER TABLE history REPLICA IDENTITY FULL;
CREATE TABLE docs (id bigserial PRIMARY KEY, body text NOT NULL, meta jsonb, tags text[], price numeric(12,2), seen timestamptz);
"#;

/// Fill the schema: `accounts` rows, 10 tellers, 1 branch per 100k accounts
/// (at least 1), `docs` rows of which every 10th has a body over 8 KB.
pub fn bench_data(accounts: u32, docs: u32) -> String {
    let branches = (accounts / 100_000).max(1);
    format!(
        r#"
INSERT INTO branches SELECT b, 0, NULL FROM generate_series(1,{branches}) b;
INSERT INTO tellers SELECT t, 1 + (t-1) % {branches}, 0, NULL FROM generate_series(1,10) t;
INSERT INTO accounts SELECT a, 1 + (a-1) % {branches}, 0, repeat('x', 84) FROM generate_series(1,{accounts}) a;
INSERT INTO docs (body, meta, tags, price, seen)
  SELECT CASE WHEN i % 10 = 0 THEN (SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 400) g)
              ELSE 'doc ' || i END,
         jsonb_build_object('i', i, 'k', 'v'), ARRAY['t' || i % 7, NULL, 'q"uote'], i * 1.25,
         timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
  FROM generate_series(1,{docs}) i;
"#
    )
}

/// A concurrent writer running pgbench-like transactions until stopped.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Writer {
    /// Start writing to `url` from its own thread; `accounts` is the number
    /// of initial account rows.
    pub fn start(url: &str, accounts: u32) -> Writer {
        Writer::spawn(url, accounts, None)
    }

    /// [`Writer::start`] at a steady `per_second` transactions a second,
    /// like an application with a given load: a debug-build applier on a
    /// loaded machine can trail an unthrottled writer without bound.
    pub fn start_paced(url: &str, accounts: u32, per_second: u32) -> Writer {
        Writer::spawn(url, accounts, Some(per_second))
    }

    fn spawn(url: &str, accounts: u32, per_second: Option<u32>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (url, s, d) = (url.to_owned(), stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            runtime().block_on(write_loop(&url, accounts, per_second, &s, &d))
        });
        Writer {
            stop,
            done,
            handle: Some(handle),
        }
    }

    /// Transactions committed so far.
    pub fn committed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Wait until at least `n` transactions have committed.
    pub fn wait_for(&mut self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.committed() < n {
            if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
                let h = self.handle.take().expect("checked");
                let result = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
                result.context("the writer stopped")?;
                bail!("the writer stopped after {} transactions", self.committed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "writer committed only {} of {n} transactions in {timeout:?}",
                    self.committed()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stop and return the number of committed transactions.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join()
                .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        }
        Ok(self.committed())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn write_loop(
    url: &str,
    accounts: u32,
    per_second: Option<u32>,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut client = connect_retrying(url).await?;
    let mut rng = Lcg(0x5eed_0000_0000_0001 ^ u64::from(accounts));
    // Each writer of this process gets its own range of new keys.
    static GENERATION: AtomicU64 = AtomicU64::new(0);
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed) as i64;
    let mut next_aid = i64::from(accounts) + 1 + generation * 10_000_000;
    while !stop.load(Ordering::Relaxed) {
        let kind = rng.below(100);
        let result = one_transaction(&mut client, kind, &mut rng, accounts, &mut next_aid).await;
        match result {
            Ok(()) => {
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(rate) = per_second {
                    let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            // The source may be restarted by a fault test: reconnect and go on.
            Err(e) if client.is_closed() || is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                client = connect_retrying(url).await?;
            }
            Err(e) => return Err(e).context("writer transaction"),
        }
    }
    Ok(())
}

fn is_transient(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|c| {
            let c = c.code();
            c.starts_with("08")
                || c.starts_with("57")
                || c == "40001"
                || c == "40P01"
                || c == "25006"
        })
}

async fn connect_retrying(url: &str) -> anyhow::Result<Client> {
    let start = Instant::now();
    loop {
        match connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn one_transaction(
    client: &mut Client,
    kind: u64,
    rng: &mut Lcg,
    accounts: u32,
    next_aid: &mut i64,
) -> Result<(), tokio_postgres::Error> {
    let aid = 1 + rng.below(u64::from(accounts)) as i32;
    let tid = 1 + rng.below(10) as i32;
    let delta = rng.below(10_000) as i32 - 5_000;
    let tx = client.transaction().await?;
    match kind {
        // TPC-B: three updates and a history insert.
        0..=59 => {
            tx.execute(
                "UPDATE accounts SET abalance = abalance + $1 WHERE aid = $2",
                &[&i64::from(delta), &aid],
            )
            .await?;
            tx.execute(
                "UPDATE tellers SET tbalance = tbalance + $1 WHERE tid = $2",
                &[&i64::from(delta), &tid],
            )
            .await?;
            tx.execute(
                "UPDATE branches SET bbalance = bbalance + $1 WHERE bid = (SELECT bid FROM tellers WHERE tid = $2)",
                &[&i64::from(delta), &tid],
            )
            .await?;
            tx.execute(
                "INSERT INTO history SELECT $1::int, bid, $2::int, $3::int, now(), NULL FROM tellers WHERE tid = $1::int",
                &[&tid, &aid, &delta],
            )
            .await?;
        }
        // New accounts, several rows at once.
        60..=69 => {
            let first = *next_aid as i32;
            *next_aid += 5;
            tx.execute(
                "INSERT INTO accounts SELECT a, 1, $2::bigint, 'new' FROM generate_series($1::int, $1::int + 4) a",
                &[&first, &i64::from(delta)],
            )
            .await?;
        }
        // Delete an account (may already be gone) and a history row (duplicates allowed).
        70..=77 => {
            tx.execute("DELETE FROM accounts WHERE aid = $1", &[&aid])
                .await?;
            tx.execute(
                "DELETE FROM history WHERE ctid = (SELECT ctid FROM history WHERE tid = $1 LIMIT 1)",
                &[&tid],
            )
            .await?;
        }
        // Touch only small columns of docs: large bodies stay unchanged TOAST.
        78..=89 => {
            tx.execute(
                "UPDATE docs SET meta = meta || jsonb_build_object('n', $1::int), price = price + 1 WHERE id % 50 = $2",
                &[&delta, &(i64::from(aid) % 50)],
            )
            .await?;
        }
        // Insert docs, one with a large body; key-changing update of an account.
        90..=95 => {
            tx.execute(
                "INSERT INTO docs (body, meta, tags, price, seen) VALUES (repeat(md5($1::int::text), 300), '{\"new\":true}', ARRAY['a b', NULL], 9.99, now())",
                &[&delta],
            )
            .await?;
            let moved = *next_aid as i32;
            *next_aid += 1;
            tx.execute(
                "UPDATE accounts SET aid = $1 WHERE aid = $2",
                &[&moved, &aid],
            )
            .await?;
        }
        // Insert then update then delete in one transaction (folds to nothing).
        _ => {
            let temp = *next_aid as i32;
            *next_aid += 1;
            tx.execute("INSERT INTO accounts VALUES ($1, 1, 0, 'tmp')", &[&temp])
                .await?;
            tx.execute("UPDATE accounts SET abalance = 7 WHERE aid = $1", &[&temp])
                .await?;
            tx.execute("DELETE FROM accounts WHERE aid = $1", &[&temp])
                .await?;
        }
    }
    tx.commit().await
}

/// A small deterministic generator (no extra dependency, replayable).
#[derive(Debug)]
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// The source's current WAL position, as text and as a number.
pub async fn current_lsn(source: &Client) -> anyhow::Result<u64> {
    let row = source
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The source's WAL insert position: past every commit so far, also those
/// made with `synchronous_commit = off` that are not written out yet.
pub async fn insert_lsn(source: &Client) -> anyhow::Result<u64> {
    let row = source
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Parse `HEX/HEX`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The applied position recorded in the target's `ferry.checkpoint`.
pub async fn applied_lsn(target: &Client) -> anyhow::Result<Option<u64>> {
    let rows = target
        .query("SELECT position FROM ferry.checkpoint", &[])
        .await
        .or_else(|e| {
            // The state schema may not exist yet early in a run.
            if e.code()
                .is_some_and(|c| c.code() == "42P01" || c.code() == "3F000")
            {
                Ok(Vec::new())
            } else {
                Err(e)
            }
        })?;
    Ok(rows
        .iter()
        .filter_map(|r| parse_lsn(r.get::<_, &str>(0)))
        .max())
}

/// Wait until ferry has applied everything up to `lsn`.
pub async fn wait_applied(target_url: &str, lsn: u64, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Ok(target) = connect(target_url).await {
            last = applied_lsn(&target).await.unwrap_or(last);
            if last.is_some_and(|a| a >= lsn) {
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "ferry did not apply up to {:X}/{:X} within {timeout:?} (checkpoint {:?})",
                lsn >> 32,
                lsn & 0xFFFF_FFFF,
                last.map(|a| format!("{:X}/{:X}", a >> 32, a & 0xFFFF_FFFF))
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Row count and an ordered checksum over all columns of one table.
pub async fn table_digest(client: &Client, table: &str) -> anyhow::Result<(i64, String)> {
    let sql = format!(
        "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {table} t"
    );
    let row = client
        .query_one(sql.as_str(), &[])
        .await
        .with_context(|| format!("digest of {table}"))?;
    Ok((row.get(0), row.get(1)))
}

/// Compare `tables` between source and target; error lists every difference.
pub async fn compare_tables(
    source: &Client,
    target: &Client,
    tables: &[&str],
) -> anyhow::Result<()> {
    let mut diffs = Vec::new();
    for t in tables {
        let s = table_digest(source, t).await?;
        let d = table_digest(target, t).await?;
        if s != d {
            diffs.push(format!(
                "{t}: source {} rows {}, target {} rows {}",
                s.0, s.1, d.0, d.1
            ));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        bail!("source and target differ:\n{}", diffs.join("\n"))
    }
}
