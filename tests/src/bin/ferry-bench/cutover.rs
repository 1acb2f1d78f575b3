//! Control-API benchmarks (issue "Lag monitor, status, control API and
//! cutover"), each on fresh durable servers with a pgbench source:
//!
//! 3. **Cutover write freeze.** `ferry run` streams while pgbench writes at a
//!    moderate fixed rate (`-R 200`, 2 clients); `ferry cutover --fence`
//!    fences the source (read-only, other sessions ended), drains, and
//!    reports `write_freeze_seconds` in its record. Target: < 1 s. pgbench
//!    errors once the source is fenced; that is expected.
//! 4. **Lag under maximum load.** Unthrottled pgbench (2 clients, durable
//!    source) while `GET /status` is sampled every 250 ms: p50/p99/max of
//!    `lag.seconds` (target p99 < 1 s), then the time until the lag is back
//!    to 0 once pgbench stops.
//!
//! The control endpoint listens on a fixed free loopback port, so the
//! benchmark talks to it directly (a minimal HTTP/1.1 GET over `TcpStream`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_e2e::{Background, ferry};
use ferry_testkit::PgServer;

use crate::Sizes;
use crate::harness::{Bench, bench_server, run_tool, stop_ferry, wait_for};
use crate::report::{Report, tail};

const FREEZE_TARGET_S: f64 = 1.0;
const LAG_TARGET_S: f64 = 1.0;
const STREAM_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How long the lag may take to return to 0 after the load stops.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// pgbench rate limit for the cutover benchmark (transactions/s, all clients).
const CUTOVER_RATE: u32 = 200;

/// Durations and sizes of the control benchmarks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ControlSizes {
    pub(crate) scale: u32,
    pub(crate) warmup: Duration,
    pub(crate) load_seconds: u32,
}

impl ControlSizes {
    pub(crate) fn of(sizes: &Sizes) -> ControlSizes {
        if sizes.quick {
            ControlSizes {
                scale: 1,
                warmup: Duration::from_secs(3),
                load_seconds: 10,
            }
        } else {
            ControlSizes {
                scale: 2,
                warmup: Duration::from_secs(5),
                load_seconds: 30,
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct CutoverFigures {
    scale: u32,
    pub(crate) freeze_s: Option<f64>,
    lag_at_start_s: Option<f64>,
    outcome: String,
    pub(crate) steps: Vec<String>,
    tables_checked: usize,
    tables_ok: usize,
    /// Wall time of the `ferry cutover` command.
    command: Duration,
}

#[derive(Debug)]
pub(crate) struct LagFigures {
    scale: u32,
    seconds: u32,
    tps: Option<f64>,
    samples: usize,
    p50: f64,
    p99: f64,
    max: f64,
    max_bytes: u64,
    /// Time from pgbench's end until `lag.seconds` was 0 (None: not within the timeout).
    settled: Option<Duration>,
}

/// Both benchmarks; a failure is recorded and does not stop the other one.
pub(crate) fn run_all(sizes: &Sizes, report: &mut Report) {
    let cs = ControlSizes::of(sizes);
    match cutover_bench(cs) {
        Ok(f) => report.cutover = Some(f),
        Err(e) => report.ferry_failed("cutover write freeze", &e),
    }
    match lag_bench(cs) {
        Ok(f) => report.lag = Some(f),
        Err(e) => report.ferry_failed("lag under load", &e),
    }
}

/// Fresh servers, a pgbench source and a streaming `ferry run`.
pub(crate) struct Streaming {
    source: PgServer,
    pub(crate) target: PgServer,
    src_db: String,
    pub(crate) tgt_db: String,
    pub(crate) src_url: String,
    pub(crate) tgt_url: String,
    pub(crate) control: SocketAddr,
    pub(crate) ferry: Background,
    work: tempfile::TempDir,
}

impl Streaming {
    pub(crate) fn start(scale: u32, what: &str) -> anyhow::Result<Streaming> {
        Streaming::start_with(scale, what, "replica")
    }

    /// [`Streaming::start`] with the target's `wal_level` (`logical` for a
    /// cutover with fallback).
    pub(crate) fn start_with(
        scale: u32,
        what: &str,
        target_wal_level: &str,
    ) -> anyhow::Result<Streaming> {
        say!("{what}: fresh durable servers, pgbench -i -s {scale}, `ferry run` until streaming …");
        let source = bench_server("logical")?;
        let target = bench_server(target_wal_level)?;
        let src_db = source.create_database("bench_ctl")?;
        let tgt_db = target.create_database("bench_ctl")?;
        let mut init = Bench::tool(&source, "pgbench");
        init.args(["-i", "-s", &scale.to_string(), "-I", "dtGvp", &src_db]);
        run_tool(&mut init, "pgbench -i")?;
        source.psql(
            &src_db,
            "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY; CHECKPOINT",
        )?;
        let control = free_port()?;
        let (src_url, tgt_url) = (source.url(&src_db), target.url(&tgt_db));
        let work = tempfile::tempdir().context("creating a scratch directory")?;
        let mut cmd = ferry_cmd(&src_url, &tgt_url, control)?;
        cmd.arg("run");
        if let Ok(level) = std::env::var("FERRY_BENCH_LOG") {
            cmd.env("FERRY_LOG", level);
        }
        let mut bg = Background::spawn(cmd, &work.path().join("ferry-run.log"))?;
        let started = Instant::now();
        let took = wait_for(
            &mut bg,
            "starting to stream",
            started,
            STREAM_TIMEOUT,
            || {
                status_of(control).is_ok_and(|s| {
                    s["live"] == serde_json::Value::Bool(true) && s["phase"] == "stream"
                })
            },
        )?;
        say!("  streaming after {:.1} s", took.as_secs_f64());
        Ok(Streaming {
            source,
            target,
            src_db,
            tgt_db,
            src_url,
            tgt_url,
            control,
            ferry: bg,
            work,
        })
    }

    /// pgbench in the background (`args` after `-n -c 2 -j 2`), output to a log.
    pub(crate) fn pgbench(&self, args: &[&str]) -> anyhow::Result<(Child, std::path::PathBuf)> {
        self.pgbench_on(false, args)
    }

    /// pgbench on the source, or on the target (`on_target`: the new
    /// database after a cutover with fallback).
    pub(crate) fn pgbench_on(
        &self,
        on_target: bool,
        args: &[&str],
    ) -> anyhow::Result<(Child, std::path::PathBuf)> {
        let log = self.work.path().join("pgbench.log");
        let out = std::fs::File::create(&log)?;
        let (server, db) = match on_target {
            true => (&self.target, &self.tgt_db),
            false => (&self.source, &self.src_db),
        };
        let mut cmd = Bench::tool(server, "pgbench");
        cmd.args(["-n", "-c", "2", "-j", "2"])
            .args(args)
            .arg(db)
            .stdout(out.try_clone()?)
            .stderr(out);
        Ok((cmd.spawn().context("starting pgbench")?, log))
    }
}

/// `ferry` with the source, target and control address of a benchmark.
pub(crate) fn ferry_cmd(
    src_url: &str,
    tgt_url: &str,
    control: SocketAddr,
) -> anyhow::Result<Command> {
    let mut cmd = ferry(src_url, tgt_url)?;
    cmd.env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .env("FERRY_CONTROL_LISTEN", control.to_string());
    Ok(cmd)
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?)
}

pub(crate) fn stop_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------- cutover

fn cutover_bench(cs: ControlSizes) -> anyhow::Result<CutoverFigures> {
    let s = Streaming::start(cs.scale, "cutover write freeze")?;
    let figures = cutover_under_load(&s, cs, &[])?;
    match s.ferry.wait(Duration::from_secs(120))? {
        Some(0) => {}
        code => bail!(
            "ferry run exited {code:?} after the cutover (expected 0)\n--- ferry log (tail) ---\n{}",
            tail(
                &std::fs::read_to_string(s.work.path().join("ferry-run.log")).unwrap_or_default(),
                40
            )
        ),
    }
    Ok(figures)
}

/// `ferry cutover --fence <extra>` while pgbench writes at a fixed rate.
pub(crate) fn cutover_under_load(
    s: &Streaming,
    cs: ControlSizes,
    extra: &[&str],
) -> anyhow::Result<CutoverFigures> {
    let (mut load, log) = s.pgbench(&["-R", &CUTOVER_RATE.to_string(), "-T", "60"])?;
    say!(
        "  pgbench -R {CUTOVER_RATE} running; `ferry cutover --fence` in {} s …",
        cs.warmup.as_secs()
    );
    std::thread::sleep(cs.warmup);
    let result = run_cutover(s, cs.scale, extra);
    stop_child(&mut load);
    let errors = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("error") || l.contains("FATAL"))
        .count();
    let figures = result?;
    say!(
        "  write freeze {} (outcome {}; pgbench reported {errors} error line(s) after the fence, expected)",
        secs(figures.freeze_s),
        figures.outcome
    );
    Ok(figures)
}

fn run_cutover(s: &Streaming, scale: u32, extra: &[&str]) -> anyhow::Result<CutoverFigures> {
    let mut cmd = ferry_cmd(&s.src_url, &s.tgt_url, s.control)?;
    cmd.args([
        "cutover",
        "--fence",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    cmd.args(extra);
    let started = Instant::now();
    let out = cmd.output().context("running ferry cutover")?;
    let command = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ferry cutover failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json_end = ["\nwrite freeze:", "\ncutover:"]
        .iter()
        .filter_map(|m| stdout.find(m))
        .min()
        .unwrap_or(stdout.len());
    let rec: serde_json::Value = serde_json::from_str(&stdout[..json_end])
        .with_context(|| format!("ferry cutover printed no cutover record:\n{stdout}"))?;
    let outcome = rec["outcome"].as_str().unwrap_or("?").to_owned();
    if outcome != "done" {
        bail!("ferry cutover outcome {outcome:?}:\n{stdout}");
    }
    let checks = rec["validation"].as_array().cloned().unwrap_or_default();
    Ok(CutoverFigures {
        scale,
        freeze_s: rec["write_freeze_seconds"].as_f64(),
        lag_at_start_s: rec["lag_seconds_at_start"].as_f64(),
        outcome,
        steps: rec["steps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        tables_checked: checks.len(),
        tables_ok: checks.iter().filter(|c| c["ok"] == true).count(),
        command,
    })
}

// ---------------------------------------------------------------- lag

fn lag_bench(cs: ControlSizes) -> anyhow::Result<LagFigures> {
    let mut s = Streaming::start(cs.scale, "lag under maximum load")?;
    say!(
        "  unthrottled pgbench for {} s, sampling GET /status every {} ms …",
        cs.load_seconds,
        SAMPLE_EVERY.as_millis()
    );
    let (mut load, log) = s.pgbench(&["-T", &cs.load_seconds.to_string()])?;
    let sampled = sample_lag(&mut s, &mut load);
    let ended = Instant::now();
    stop_child(&mut load);
    let (lags, max_bytes) = sampled?;
    let pgbench_out = std::fs::read_to_string(&log).unwrap_or_default();
    let tps = pgbench_out
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    let settled = loop {
        if status_of(s.control).is_ok_and(|v| v["lag"]["seconds"].as_f64() == Some(0.0)) {
            break Some(ended.elapsed());
        }
        if ended.elapsed() > SETTLE_TIMEOUT {
            break None;
        }
        std::thread::sleep(POLL_FAST);
    };
    let mut sorted = lags.clone();
    sorted.sort_by(f64::total_cmp);
    let figures = LagFigures {
        scale: cs.scale,
        seconds: cs.load_seconds,
        tps,
        samples: sorted.len(),
        p50: percentile(&sorted, 50.0),
        p99: percentile(&sorted, 99.0),
        max: sorted.last().copied().unwrap_or(0.0),
        max_bytes,
        settled,
    };
    say!(
        "  {} samples: lag p50 {:.3} s, p99 {:.3} s, max {:.3} s; pgbench {} tps; back to 0 {}",
        figures.samples,
        figures.p50,
        figures.p99,
        figures.max,
        tps.map_or_else(|| "?".to_owned(), |t| format!("{t:.0}")),
        settled.map_or_else(
            || format!("not within {} s", SETTLE_TIMEOUT.as_secs()),
            |d| format!("after {:.2} s", d.as_secs_f64())
        )
    );
    stop_ferry(s.ferry)?;
    Ok(figures)
}

const POLL_FAST: Duration = Duration::from_millis(50);

/// `lag.seconds` every 250 ms while pgbench runs, and the largest `lag.bytes`.
pub(crate) fn sample_lag(s: &mut Streaming, load: &mut Child) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut lags = Vec::new();
    let mut max_bytes = 0;
    let mut next = Instant::now();
    loop {
        if let Some(status) = load.try_wait()? {
            if !status.success() {
                bail!("pgbench failed ({status})");
            }
            return Ok((lags, max_bytes));
        }
        if let Some(code) = s.ferry.exited()? {
            bail!(
                "ferry run exited ({code:?}) under load\n--- ferry log (tail) ---\n{}",
                tail(&s.ferry.log(), 40)
            );
        }
        let status = status_of(s.control)?;
        lags.push(
            status["lag"]["seconds"]
                .as_f64()
                .context("status without lag.seconds")?,
        );
        max_bytes = max_bytes.max(status["lag"]["bytes"].as_u64().unwrap_or(0));
        next += SAMPLE_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------- HTTP

/// `GET /status` from the control endpoint, parsed.
pub(crate) fn status_of(addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response from the control endpoint")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /status: {}", head.lines().next().unwrap_or(""));
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).context("GET /status: not JSON")
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("truncated chunk")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("truncated chunk")?);
        body = rest.get(n + 2..).context("truncated chunk")?;
    }
}

// ---------------------------------------------------------------- report

pub(crate) fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "?".to_owned(), |s| format!("{s:.3} s"))
}

impl CutoverFigures {
    pub(crate) fn row(&self) -> String {
        let ratio = self
            .freeze_s
            .map_or_else(|| "–".to_owned(), |f| format!("{:.2}", f / FREEZE_TARGET_S));
        format!(
            "| cutover write freeze (--fence) | pgbench -s {}, -R {CUTOVER_RATE} tps, 2 clients | \
             target < {FREEZE_TARGET_S:.0} s | write freeze {} (lag at start {}; `ferry cutover` {:.2} s; \
             {} steps; {}/{} tables validated) | {ratio} of target (< 1) |\n",
            self.scale,
            secs(self.freeze_s),
            secs(self.lag_at_start_s),
            self.command.as_secs_f64(),
            self.steps.len(),
            self.tables_ok,
            self.tables_checked,
        )
    }

    pub(crate) fn steps_section(&self) -> String {
        let mut s = format!("\n## Cutover steps (outcome: {})\n\n", self.outcome);
        for (i, step) in self.steps.iter().enumerate() {
            s.push_str(&format!("{}. {step}\n", i + 1));
        }
        s
    }
}

impl LagFigures {
    pub(crate) fn row(&self) -> String {
        let tps = self
            .tps
            .map_or_else(|| "?".to_owned(), |t| format!("{t:.0}"));
        let settled = self.settled.map_or_else(
            || format!("not back to 0 within {} s", SETTLE_TIMEOUT.as_secs()),
            |d| format!("back to 0 {:.2} s after the load", d.as_secs_f64()),
        );
        format!(
            "| lag under max pgbench load | pgbench -s {}, unthrottled, 2 clients, {} s: {tps} tps | \
             target p99 < {LAG_TARGET_S:.0} s | lag p50 {:.3} s, p99 {:.3} s, max {:.3} s \
             ({} samples, max {} KiB behind); {settled} | {:.2} of target (< 1) |\n",
            self.scale,
            self.seconds,
            self.p50,
            self.p99,
            self.max,
            self.samples,
            self.max_bytes / 1024,
            self.p99 / LAG_TARGET_S,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_chunks() {
        let v = [0.0, 0.1, 0.2, 0.3, 5.0];
        assert_eq!(percentile(&v, 50.0), 0.2);
        assert_eq!(percentile(&v, 99.0), 5.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
    }
}
