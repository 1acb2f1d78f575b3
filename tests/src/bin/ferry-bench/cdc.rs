//! Benchmark 2, CDC apply: backlogs written with pgbench while ferry is
//! stopped, the server's own decoding and a null replication consumer as
//! references, then ferry's drain with the CPU time of every process.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_e2e::Background;
use ferry_e2e::pgsync::{connect, insert_lsn};
use tokio_postgres::Client;

use crate::cpu::{self, DrainCpu, TimeSplit};
use crate::harness::{
    Bench, DRAIN_TIMEOUT, MARKER_SQL, POLL, applied_at_least, peak_rss_kb, run_tool, stop_ferry,
    wait_for,
};
use crate::report::Report;
use crate::report::{lsn_text, mib, rate, tail, thousands};

/// The reference logical slot: peeked, then streamed by the null consumer
/// twice before ferry's drain and once after it (never confirmed), then
/// dropped.
const REF_SLOT: &str = "bench_ref";
/// ferry's default slot.
const FERRY_SLOT: &str = "ferry";
/// How long [`Bench::settle_slot`] waits for ferry's slot to move.
pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// ferry's default publication.
const FERRY_PUBLICATION: &str = "ferry";

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

/// A backlog written by pgbench with two clients; the number is transactions per client.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backlog {
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
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backlog::Tpcb(_) => "tpcb",
            Backlog::MultiRow(_) => "multirow",
            Backlog::KeylessHistory(_) => "history",
            Backlog::KeylessChurn(_) => "nokey",
        }
    }
    pub(crate) fn transactions(self) -> u64 {
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
pub(crate) struct CdcFigures {
    label: &'static str,
    pub(crate) transactions: u64,
    pub(crate) produced: u64,
    produce: Duration,
    decoded: u64,
    pub(crate) decode: Duration,
    /// The null consumer's times for the same changes: two passes before
    /// ferry's drain and one after it, over the same slot (it confirms
    /// nothing, so each pass reads the whole backlog again).
    consume: Vec<Duration>,
    /// ferry's drain, when it ran.
    pub(crate) ferry: Option<Drain>,
}

#[derive(Debug)]
pub(crate) struct Drain {
    pub(crate) took: Duration,
    /// Peak RSS, kB.
    pub(crate) rss: Option<u64>,
    pub(crate) cpu: DrainCpu,
    /// The walsender, the target's busiest ferry session (the applier's)
    /// and ferry: where their time went from their start to the drain's
    /// end.
    pub(crate) split: Vec<(&'static str, TimeSplit)>,
}

impl Bench {
    pub(crate) fn cdc_run(
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
        // The null consumer moves a lot between runs on this machine: two
        // passes now and one after ferry's drain, whose median is the
        // reference.
        let mut consume = Vec::new();
        for _ in 0..2 {
            consume.push(self.null_pass(&publication, end_lsn, decoded)?);
        }
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
        figures
            .consume
            .push(self.null_pass(&publication, end_lsn, decoded)?);
        let drop_slot = format!("SELECT pg_drop_replication_slot('{REF_SLOT}')");
        self.source.psql(&self.src_db, &drop_slot)?;
        Ok(figures)
    }

    /// One pass of [`Bench::null_consumer`], checked against the server's
    /// count.
    fn null_pass(&self, publication: &str, end_lsn: u64, decoded: u64) -> anyhow::Result<Duration> {
        self.wait_reference_slot_free()?;
        let (consumed, took) = self.null_consumer(publication, end_lsn)?;
        if consumed != decoded {
            bail!("the null consumer saw {consumed} row changes, the server decoded {decoded}");
        }
        say!("  null consumer read them in {:.1} s", took.as_secs_f64());
        Ok(took)
    }

    /// Until no walsender holds the reference slot: the previous pass's
    /// ends a moment after its connection closes (a pass started then
    /// fails with `55006`, slot active).
    fn wait_reference_slot_free(&self) -> anyhow::Result<()> {
        let sql = format!(
            "SELECT coalesce((SELECT active_pid::text FROM pg_replication_slots WHERE slot_name = '{REF_SLOT}' AND active), '')"
        );
        let started = Instant::now();
        loop {
            let holder = self.sql_one(&self.source, &self.src_db, &sql)?;
            if holder.is_empty() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("slot {REF_SLOT} is still held by walsender {holder} after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
                            stream.send_status(Lsn(0), Lsn(0), false).await?;
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
        let split = if took.is_ok() {
            self.drain_split(&target, bg.pid())
        } else {
            Vec::new()
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
        Ok(Drain {
            took,
            rss,
            cpu,
            split,
        })
    }

    /// [`TimeSplit`]s at the end of a drain, while ferry still streams:
    /// the ferry slot's walsender, then [`apply_session_and_ferry`]. They
    /// started with the drain, so their lives are its time.
    fn drain_split(&self, target: &Client, ferry: u32) -> Vec<(&'static str, TimeSplit)> {
        let walsender = self.rt.block_on(async {
            let source = connect(&self.source_url()).await.ok()?;
            let sql = format!(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{FERRY_SLOT}'"
            );
            let row = source.query_opt(sql.as_str(), &[]).await.ok()??;
            row.get::<_, Option<i32>>(0)
        });
        let mut split = Vec::new();
        if let Some(s) = walsender
            .and_then(|p| u32::try_from(p).ok())
            .and_then(cpu::time_split)
        {
            split.push(("walsender", s));
        }
        split.extend(apply_session_and_ferry(&self.rt, target, ferry));
        split
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

impl Bench {
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
}

impl CdcFigures {
    pub(crate) fn row(&self) -> String {
        let produce = self.produced as f64 / self.produce.as_secs_f64();
        let decode = self.decoded as f64 / self.decode.as_secs_f64();
        let size = format!(
            "{} tx, changes={}",
            thousands(self.transactions),
            thousands(self.decoded)
        );
        let mut passes = self.consume.clone();
        passes.sort_unstable();
        let median = passes
            .get(passes.len() / 2)
            .copied()
            .unwrap_or(Duration::MAX);
        let consume = self.decoded as f64 / median.as_secs_f64();
        let range = match (passes.first(), passes.last()) {
            (Some(fast), Some(slow)) => format!(
                "{}–{}",
                rate(self.decoded as f64 / slow.as_secs_f64()),
                rate(self.decoded as f64 / fast.as_secs_f64())
            ),
            _ => "–".to_owned(),
        };
        let reference = format!(
            "source production: {} changes/s; server decoding: {} changes/s ({:.1} s); null replication consumer: {} changes/s (median of {} passes, two before ferry's drain and one after: {range})",
            rate(produce),
            rate(decode),
            self.decode.as_secs_f64(),
            rate(consume),
            passes.len()
        );
        let (ferry, ratio) = match &self.ferry {
            Some(drain) => {
                let r = self.decoded as f64 / drain.took.as_secs_f64();
                // The in-server peek is single-threaded: its time is its CPU cost.
                let decode_cost = self.decode.div_f64(self.decoded.max(1) as f64);
                let ceiling = drain.cpu.ceiling(decode_cost, self.decoded);
                (
                    format!(
                        "drain: {} changes/s ({:.1} s, peak RSS {}); CPU per change: {}{}",
                        rate(r),
                        drain.took.as_secs_f64(),
                        mib(drain.rss),
                        drain.cpu.per_change(self.decoded),
                        split_text(&drain.split)
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

/// [`TimeSplit`]s of the ferry session of `target`'s database that ran
/// longest (the applier's) and of the ferry process `ferry`, taken while
/// ferry still runs.
pub(crate) fn apply_session_and_ferry(
    rt: &tokio::runtime::Runtime,
    target: &Client,
    ferry: u32,
) -> Vec<(&'static str, TimeSplit)> {
    let sessions: Vec<i32> = rt
        .block_on(target.query(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'ferry'
                AND pid <> pg_backend_pid()",
            &[],
        ))
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    let mut split = Vec::new();
    if let Some(s) = sessions
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter_map(cpu::time_split)
        .max_by_key(|s| s.running)
    {
        split.push(("target apply session", s));
    }
    if let Some(s) = cpu::time_split(ferry) {
        split.push(("ferry", s));
    }
    split
}

/// "; time (shares of the drain): walsender on a CPU 0.64, …" or nothing.
pub(crate) fn split_text(split: &[(&str, TimeSplit)]) -> String {
    if split.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = split
        .iter()
        .map(|(who, s)| format!("{who} {}", s.shares()))
        .collect();
    format!("; time (shares of the drain): {}", parts.join("; "))
}
