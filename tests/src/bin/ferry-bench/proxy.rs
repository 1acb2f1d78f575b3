//! 8. **Proxy.** Fresh durable servers, `pgbench -i` on the source, `ferry
//!    run` streaming with `[proxy]` (SCRAM, mode `source`). pgbench (4
//!    clients, simple protocol) runs `-S` and the tpcb-like script for a
//!    fixed time directly against the source, through ferry's proxy
//!    (sampling 0: pure forwarding), and through pgbouncer in session mode
//!    (Debian package; same SCRAM login), measured in the same run, with
//!    the CPU time per transaction of ferry's proxy thread and of
//!    pgbouncer (a fairer figure than tps on a shared machine). Then
//!    ferry again with every read mirrored (`sample_rate = 1`): the client
//!    latency of `-S` with shadow reads on. Last, a tpcb-like run at 200
//!    tps through the proxy while `ferry cutover --via-proxy` runs: the
//!    write freeze clients saw is the longest transaction run time in
//!    pgbench's per-transaction log (latency minus the wait behind its
//!    `--rate` schedule; also shown with it), next to the proxy's hold.
//!    The three are run in rounds (`FERRY_BENCH_PROXY_ROUNDS`, default 3,
//!    1 with `--quick`), each round in a rotated order, and the medians
//!    reported with the per-round ratio to pgbouncer: one long run each
//!    drifted by more than the gap being measured (a checkpoint, the
//!    machine's other load). `--proxy-only` runs only this one; seconds
//!    per run: `FERRY_BENCH_PROXY_SECONDS` (default 5), scale
//!    `FERRY_BENCH_PROXY_SCALE` (default 5, 1 with `--quick`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_e2e::Background;
use ferry_testkit::{ADMIN_PASSWORD, ADMIN_USER, PgServer};

use crate::Sizes;
use crate::cutover::ferry_cmd;
use crate::harness::{Bench, bench_server, run_tool, stop_ferry, wait_for};
use crate::report::Report;

const USER: &str = "app";
const PASSWORD: &str = "bench-proxy-pw";

/// One pgbench run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Run {
    tps: f64,
    latency_ms: f64,
    transactions: u64,
    /// CPU time of the proxy (ferry's proxy thread, or pgbouncer) per
    /// transaction, in µs.
    cpu_us: Option<f64>,
}

impl Run {
    /// Each figure's median over `runs` (not empty).
    fn median(runs: &[Run]) -> Run {
        fn mid(mut v: Vec<f64>) -> f64 {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            match n {
                0 => 0.0,
                _ if n % 2 == 1 => v[n / 2],
                // An even number of rounds: the mean of the middle two.
                _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
            }
        }
        let cpu: Vec<f64> = runs.iter().filter_map(|r| r.cpu_us).collect();
        Run {
            tps: mid(runs.iter().map(|r| r.tps).collect()),
            latency_ms: mid(runs.iter().map(|r| r.latency_ms).collect()),
            transactions: mid(runs.iter().map(|r| r.transactions as f64).collect()) as u64,
            cpu_us: (!cpu.is_empty()).then(|| mid(cpu)),
        }
    }
}

/// One script's medians over the rounds.
#[derive(Debug)]
struct Row {
    script: &'static str,
    direct: Run,
    proxy: Run,
    bouncer: Option<Run>,
    /// proxy tps / pgbouncer tps in each round.
    vs_bouncer: Vec<f64>,
}

#[derive(Debug, Default)]
pub(crate) struct ProxyFigures {
    scale: u32,
    seconds: u64,
    rounds: usize,
    rows: Vec<Row>,
    shadow: Option<(Run, Run, u64, u64)>,
    freeze_client_s: Option<f64>,
    freeze_hold_s: Option<f64>,
    /// Including the wait behind pgbench's --rate schedule.
    freeze_with_schedule_s: Option<f64>,
    cutover_tps: Option<f64>,
    failed_tx: Option<u64>,
}

impl ProxyFigures {
    pub(crate) fn rows(&self) -> String {
        let mut s = String::new();
        for Row {
            script,
            direct,
            proxy,
            bouncer,
            vs_bouncer,
        } in &self.rows
        {
            let b = bouncer.map_or_else(
                || "pgbouncer not installed".to_owned(),
                |b| {
                    format!(
                        "pgbouncer (session) {:.0} tps, {:.2} ms",
                        b.tps, b.latency_ms
                    )
                },
            );
            let vs_bouncer = bouncer.map_or_else(String::new, |b| {
                let rounds: Vec<String> = vs_bouncer.iter().map(|r| format!("{r:.2}")).collect();
                format!(
                    ", {:.2}× pgbouncer (goal ≥ 1; rounds {})",
                    proxy.tps / b.tps.max(1e-9),
                    rounds.join(", ")
                )
            });
            let cpu = match (proxy.cpu_us, bouncer.and_then(|b| b.cpu_us)) {
                (Some(p), Some(b)) => format!(
                    "; CPU per transaction: proxy thread {p:.1} µs, pgbouncer {b:.1} µs ({:.2}×)",
                    p / b.max(1e-9)
                ),
                (Some(p), None) => format!("; CPU per transaction: proxy thread {p:.1} µs"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| proxy: pgbench {script} (4 clients, medians of {} rounds of {} s) | scale {} | direct {:.0} tps, {:.2} ms; {b} | {:.0} tps, {:.2} ms | {:.2}× direct (goal ≥ 0.9){vs_bouncer}{cpu} |",
                self.rounds,
                self.seconds,
                self.scale,
                direct.tps,
                direct.latency_ms,
                proxy.tps,
                proxy.latency_ms,
                proxy.tps / direct.tps.max(1e-9)
            );
        }
        if let Some((off, on, mirrored, dropped)) = &self.shadow {
            let _ = writeln!(
                s,
                "| proxy: shadow reads, pgbench -S | every read mirrored ({mirrored} mirrored, {dropped} dropped) | proxy without mirroring {:.2} ms | {:.2} ms | +{:.2} ms per read |",
                off.latency_ms,
                on.latency_ms,
                on.latency_ms - off.latency_ms
            );
        }
        if let Some(f) = self.freeze_client_s {
            let _ = writeln!(
                s,
                "| proxy: cutover --via-proxy under tpcb-like at 200 tps | {:.0} tps, {} failed transactions | goal < 1 s | longest client transaction {:.3} s ({:.3} s with the wait behind pgbench's schedule; proxy hold {:.3} s) | {:.2}× goal |",
                self.cutover_tps.unwrap_or(0.0),
                self.failed_tx.map_or_else(|| "?".into(), |n| n.to_string()),
                f,
                self.freeze_with_schedule_s.unwrap_or(0.0),
                self.freeze_hold_s.unwrap_or(0.0),
                f
            );
        }
        s
    }
}

pub(crate) fn run(sizes: &Sizes, report: &mut Report) {
    match bench(sizes) {
        Ok(f) => report.proxy = Some(f),
        Err(e) => report.ferry_failed("the proxy benchmark", &e),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// pgbench for `secs` against `port` as `user`; (tps, latency).
fn pgbench(
    server: &PgServer,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    args: &[&str],
) -> anyhow::Result<(Run, String)> {
    let out = Command::new(server.bin_dir().join("pgbench"))
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
        ])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .output()
        .context("running pgbench")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("pgbench {args:?} on port {port} failed:\n{text}");
    }
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Ok((
        Run {
            tps: value("tps = "),
            latency_ms: value("latency average = "),
            transactions: value("number of transactions actually processed: ") as u64,
            cpu_us: None,
        },
        text,
    ))
}

/// [`pgbench`] with the CPU time `cpu` (read before and after) charged per
/// transaction.
fn pgbench_cpu(
    cpu: impl Fn() -> Option<Duration>,
    server: &PgServer,
    port: u16,
    db: &str,
    args: &[&str],
) -> anyhow::Result<Run> {
    let before = cpu();
    let (mut run, _) = pgbench(server, port, USER, PASSWORD, db, args)?;
    if let (Some(a), Some(b)) = (before, cpu()) {
        run.cpu_us = Some(b.saturating_sub(a).as_secs_f64() * 1e6 / run.transactions.max(1) as f64);
    }
    Ok(run)
}

struct Ferry {
    bg: Background,
    control: SocketAddr,
}

fn start_ferry(
    src_url: &str,
    tgt_url: &str,
    proxy_port: u16,
    sample: &str,
    log: &std::path::Path,
) -> anyhow::Result<Ferry> {
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = ferry_cmd(src_url, tgt_url, control)?;
    cmd.env("FERRY_PROXY_LISTEN", format!("127.0.0.1:{proxy_port}"))
        .env("FERRY_PROXY_USER", USER)
        .env("FERRY_PROXY_PASSWORD", PASSWORD)
        .env("FERRY_PROXY_SAMPLE_RATE", sample)
        .env("FERRY_PROXY_HOLD_SECONDS", "30")
        .env("FERRY_CONSOLE_LISTEN", "off")
        .arg("run");
    let mut bg = Background::spawn(cmd, log)?;
    wait_for(
        &mut bg,
        "starting to stream",
        Instant::now(),
        Duration::from_secs(600),
        || {
            crate::cutover::status_of(control)
                .is_ok_and(|s| s["live"] == true && s["phase"] == "stream")
                && std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_ok()
        },
    )?;
    Ok(Ferry { bg, control })
}

/// pgbouncer in session mode in front of the source, as `postgres`.
fn start_pgbouncer(
    dir: &std::path::Path,
    source: &PgServer,
    db: &str,
) -> anyhow::Result<Option<(std::process::Child, u16)>> {
    let bin = std::path::Path::new("/usr/sbin/pgbouncer");
    if !bin.exists() {
        return Ok(None);
    }
    let port = free_port()?;
    let dir = dir.join("pgbouncer");
    std::fs::create_dir_all(&dir)?;
    let ini = format!(
        "[databases]\n{db} = host=127.0.0.1 port={} dbname={db} user={ADMIN_USER} password={ADMIN_PASSWORD}\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = scram-sha-256\n\
         auth_file = {}/userlist.txt\npool_mode = session\nmax_client_conn = 100\ndefault_pool_size = 20\n\
         logfile = {}/pgbouncer.log\n",
        source.port(),
        dir.display(),
        dir.display()
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini)?;
    std::fs::write(
        dir.join("userlist.txt"),
        format!("\"{USER}\" \"{PASSWORD}\"\n"),
    )?;
    let mut cmd = Command::new(bin);
    // pgbouncer refuses to run as root.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        for p in [dir.clone(), dir.parent().unwrap_or(&dir).to_owned()] {
            let _ = Command::new("chmod").arg("a+rwx").arg(&p).status();
        }
        cmd.args(["-u", "postgres"]);
    }
    let child = cmd
        .arg(dir.join("pgbouncer.ini"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting pgbouncer")?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!(
                "pgbouncer did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some((child, port)))
}

fn bench(sizes: &Sizes) -> anyhow::Result<ProxyFigures> {
    let scale = env_u64("FERRY_BENCH_PROXY_SCALE", if sizes.quick { 1 } else { 5 }) as u32;
    let secs = env_u64("FERRY_BENCH_PROXY_SECONDS", 5);
    let rounds =
        env_u64("FERRY_BENCH_PROXY_ROUNDS", if sizes.quick { 1 } else { 3 }).max(1) as usize;
    say!(
        "proxy: fresh durable servers, pgbench -i -s {scale}, `ferry run` with [proxy] until streaming …"
    );
    let source = bench_server("logical")?;
    let target = bench_server("replica")?;
    let db = source.create_database("bench_proxy")?;
    let tdb = target.create_database("bench_proxy")?;
    let mut init = Bench::tool(&source, "pgbench");
    init.args(["-i", "-s", &scale.to_string(), "-I", "dtGvp", &db]);
    run_tool(&mut init, "pgbench -i")?;
    source.psql(
        &db,
        "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY; CHECKPOINT",
    )?;
    let work = tempfile::tempdir()?;
    let (src_url, tgt_url) = (source.url(&db), target.url(&tdb));
    let proxy_port = free_port()?;
    let ferry = start_ferry(
        &src_url,
        &tgt_url,
        proxy_port,
        "0",
        &work.path().join("ferry-proxy-1.log"),
    )?;
    let bouncer = start_pgbouncer(work.path(), &source, &db)?;
    let mut f = ProxyFigures {
        scale,
        seconds: secs,
        rounds,
        ..ProxyFigures::default()
    };
    let t = secs.to_string();
    let result = (|| -> anyhow::Result<()> {
        for (script, args) in [
            ("-S", vec!["-S", "-T", t.as_str()]),
            ("tpcb-like", vec!["-T", t.as_str()]),
        ] {
            let ferry_pid = ferry.bg.pid();
            let (mut direct, mut proxy, mut bounced) = (Vec::new(), Vec::new(), Vec::new());
            let mut vs_bouncer = Vec::new();
            for round in 0..rounds {
                // 0 direct, 1 proxy, 2 pgbouncer; each round starts one
                // further on, so no one always runs first.
                let mut round_proxy = None;
                for which in (0..3).map(|i| (i + round) % 3) {
                    match which {
                        0 => direct.push(
                            pgbench(
                                &source,
                                source.port(),
                                ADMIN_USER,
                                ADMIN_PASSWORD,
                                &db,
                                &args,
                            )?
                            .0,
                        ),
                        1 => {
                            let run = pgbench_cpu(
                                || crate::cpu::thread(ferry_pid, "ferry-proxy"),
                                &source,
                                proxy_port,
                                &db,
                                &args,
                            )?;
                            round_proxy = Some(run.tps);
                            proxy.push(run);
                        }
                        _ => {
                            if let Some((child, port)) = &bouncer {
                                let pid = child.id();
                                bounced.push(pgbench_cpu(
                                    || Some(crate::cpu::process(pid)),
                                    &source,
                                    *port,
                                    &db,
                                    &args,
                                )?);
                            }
                        }
                    }
                }
                if let (Some(p), Some(b)) = (round_proxy, bounced.last()) {
                    vs_bouncer.push(p / b.tps.max(1e-9));
                }
            }
            let direct = Run::median(&direct);
            let proxy = Run::median(&proxy);
            let b = (!bounced.is_empty()).then(|| Run::median(&bounced));
            say!(
                "  {script}: direct {:.0} tps, proxy {:.0} tps ({:?} µs CPU per transaction), pgbouncer {:?} tps ({:?} µs); proxy/pgbouncer per round {:?}",
                direct.tps,
                proxy.tps,
                proxy.cpu_us,
                b.map(|b| b.tps),
                b.and_then(|b| b.cpu_us),
                vs_bouncer
            );
            f.rows.push(Row {
                script: if script == "-S" { "-S" } else { "tpcb-like" },
                direct,
                proxy,
                bouncer: b,
                vs_bouncer,
            });
        }
        Ok(())
    })();
    if let Some((mut child, _)) = bouncer {
        let _ = child.kill();
        let _ = child.wait();
    }
    result?;
    let off = f.rows.first().map(|r| r.proxy).unwrap_or_default();
    stop_ferry(ferry.bg)?;

    // Every read mirrored.
    let ferry = start_ferry(
        &src_url,
        &tgt_url,
        proxy_port,
        "1",
        &work.path().join("ferry-proxy-2.log"),
    )?;
    let (on, _) = pgbench(&source, proxy_port, USER, PASSWORD, &db, &["-S", "-T", &t])?;
    std::thread::sleep(Duration::from_secs(2));
    let s = crate::cutover::status_of(ferry.control)?;
    f.shadow = Some((
        off,
        on,
        s["proxy"]["mirrored"].as_u64().unwrap_or(0),
        s["proxy"]["mirror_dropped"].as_u64().unwrap_or(0),
    ));
    say!(
        "  shadow reads: {:.2} ms without, {:.2} ms with mirroring",
        off.latency_ms,
        on.latency_ms
    );

    // Cutover through the proxy at 200 tps.
    let log_prefix = work.path().join("cut");
    let bench = Command::new(source.bin_dir().join("pgbench"))
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-R",
            "200",
            "-T",
            &(secs + 15).to_string(),
            "-h",
            "127.0.0.1",
            "-p",
            &proxy_port.to_string(),
            "-U",
            USER,
            "-l",
            "--log-prefix",
        ])
        .arg(&log_prefix)
        .arg(&db)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .current_dir(work.path())
        .spawn()
        .context("starting pgbench for the cutover")?;
    std::thread::sleep(Duration::from_secs(secs.min(10)));
    let mut cut = ferry_cmd(&src_url, &tgt_url, ferry.control)?;
    cut.args([
        "cutover",
        "--via-proxy",
        "--max-lag",
        "30s",
        "--timeout",
        "60s",
    ]);
    let cut_out = cut.output().context("ferry cutover --via-proxy")?;
    let out = bench.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cut_text = String::from_utf8_lossy(&cut_out.stdout);
    f.freeze_hold_s = cut_text
        .lines()
        .find_map(|l| l.strip_prefix("write freeze: "))
        .and_then(|v| v.trim_end_matches('s').parse().ok());
    f.failed_tx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("number of failed transactions: "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    f.cutover_tps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    // pgbench -l: "client tx latency_us script_no time_epoch time_us [schedule_lag]".
    let (mut longest, mut longest_with_lag) = (0u64, 0u64);
    for entry in std::fs::read_dir(work.path())? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("cut"))
        {
            // Kept for a look at the transactions around the switch.
            if let Some(name) = path.file_name() {
                let keep = crate::report::report_path().with_file_name("proxy-cutover-logs");
                let _ = std::fs::create_dir_all(&keep);
                let _ = std::fs::copy(&path, keep.join(name));
            }
            for line in std::fs::read_to_string(&path)?.lines() {
                // With --rate, `time` includes the wait behind the
                // schedule; the freeze a transaction saw is the time it ran.
                let cols: Vec<u64> = line
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                if let Some(time) = cols.get(2) {
                    let lag = cols.get(6).copied().unwrap_or(0);
                    longest = longest.max(time.saturating_sub(lag));
                    longest_with_lag = longest_with_lag.max(*time);
                }
            }
        }
    }
    f.freeze_client_s = Some(longest as f64 / 1e6);
    f.freeze_with_schedule_s = Some(longest_with_lag as f64 / 1e6);
    say!(
        "  cutover --via-proxy: longest client transaction {:.3} s, hold {:?} s, failed transactions {:?}",
        longest as f64 / 1e6,
        f.freeze_hold_s,
        f.failed_tx
    );
    if !cut_out.status.success() || !out.status.success() {
        bail!(
            "cutover through the proxy:\n{cut_text}{}\n{text}",
            String::from_utf8_lossy(&cut_out.stderr)
        );
    }
    stop_ferry(ferry.bg)?;
    drop(target);
    Ok(f)
}
