//! Fallback benchmarks (issue "A way back after cutover"), on fresh durable
//! servers with a pgbench source and a target at `wal_level = logical`:
//!
//! 1. **Write freeze with and without fallback.** The cutover benchmark's
//!    setup (pgbench `-R 200` on the source, `ferry cutover --fence`) run
//!    twice on fresh servers, once with `--with-fallback`: the reverse slot
//!    is created inside the fence, so its cost shows as the difference of
//!    the two write freezes. Goal: it adds < 100 ms.
//! 2. **Reverse lag under load.** After the cutover with fallback,
//!    unthrottled pgbench (2 clients) on the new database while `GET
//!    /status` of the reverse `ferry run` is sampled every 250 ms:
//!    p50/p99/max of `lag.seconds` (goal p99 < 1 s). The reference is the
//!    forward lag benchmark of the same run (`--control-only`), when run.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::Sizes;
use crate::cutover::{
    ControlSizes, Streaming, cutover_under_load, percentile, sample_lag, secs, stop_child,
};
use crate::harness::stop_ferry;
use crate::report::Report;

const ADDED_TARGET_S: f64 = 0.1;
const LAG_TARGET_S: f64 = 1.0;

#[derive(Debug)]
pub(crate) struct FallbackFigures {
    scale: u32,
    without_s: Option<f64>,
    with_s: Option<f64>,
    seconds: u32,
    samples: usize,
    p50: f64,
    p99: f64,
    max: f64,
    opened: String,
}

pub(crate) fn run(sizes: &Sizes, report: &mut Report) {
    match bench(ControlSizes::of(sizes)) {
        Ok(f) => report.fallback = Some(f),
        Err(e) => report.ferry_failed("cutover with fallback", &e),
    }
}

fn bench(cs: ControlSizes) -> anyhow::Result<FallbackFigures> {
    // Its servers stop at the end of the block.
    let without = {
        let plain = Streaming::start_with(cs.scale, "cutover without fallback", "logical")?;
        let figures = cutover_under_load(&plain, cs, &[])?;
        if plain.ferry.wait(Duration::from_secs(120))? != Some(0) {
            bail!("ferry run did not exit 0 after the cutover without fallback");
        }
        figures
    };

    let mut s = Streaming::start_with(cs.scale, "cutover with fallback", "logical")?;
    let with = cutover_under_load(&s, cs, &["--with-fallback"])?;
    say!(
        "  write freeze without fallback {}, with {}",
        secs(without.freeze_s),
        secs(with.freeze_s)
    );
    let opened = with
        .steps
        .iter()
        .find(|s| s.starts_with("opened the way back"))
        .cloned()
        .unwrap_or_default();
    say!("  {opened}");
    // The same process streams back now; pgbench writes on the new database.
    crate::harness::wait_for(
        &mut s.ferry,
        "streaming in reverse",
        std::time::Instant::now(),
        Duration::from_secs(120),
        || {
            crate::cutover::status_of(s.control)
                .is_ok_and(|v| v["direction"] == "reverse" && v["phase"] == "stream")
        },
    )?;
    say!(
        "  reverse stream up; unthrottled pgbench on the new database for {} s …",
        cs.load_seconds
    );
    let (mut load, _log) = s.pgbench_on(true, &["-T", &cs.load_seconds.to_string()])?;
    let sampled = sample_lag(&mut s, &mut load);
    stop_child(&mut load);
    let (lags, _bytes) = sampled.context("sampling the reverse lag")?;
    let mut sorted = lags;
    sorted.sort_by(f64::total_cmp);
    let figures = FallbackFigures {
        scale: cs.scale,
        without_s: without.freeze_s,
        with_s: with.freeze_s,
        seconds: cs.load_seconds,
        samples: sorted.len(),
        p50: percentile(&sorted, 50.0),
        p99: percentile(&sorted, 99.0),
        max: sorted.last().copied().unwrap_or(0.0),
        opened,
    };
    say!(
        "  reverse lag p50 {:.3} s, p99 {:.3} s, max {:.3} s ({} samples)",
        figures.p50,
        figures.p99,
        figures.max,
        figures.samples
    );
    stop_ferry(s.ferry)?;
    Ok(figures)
}

impl FallbackFigures {
    pub(crate) fn rows(&self) -> String {
        let added = match (self.with_s, self.without_s) {
            (Some(w), Some(o)) => Some(w - o),
            _ => None,
        };
        format!(
            "| cutover write freeze with fallback | pgbench -s {s}, -R 200 tps, 2 clients; reverse slot created inside the fence | \
             without fallback {} (fresh servers, same run) | with --with-fallback {} (adds {}) | {} of the 100 ms goal (< 1) |\n\
             | reverse lag under max pgbench load | pgbench -s {s} on the new database, unthrottled, 2 clients, {} s | \
             target p99 < {LAG_TARGET_S:.0} s | lag p50 {:.3} s, p99 {:.3} s, max {:.3} s ({} samples) | {:.2} of target (< 1) |\n\n\
             Cutover with fallback: {}\n",
            secs(self.without_s),
            secs(self.with_s),
            secs(added),
            added.map_or_else(|| "–".to_owned(), |a| format!("{:.2}", a / ADDED_TARGET_S)),
            self.seconds,
            self.p50,
            self.p99,
            self.max,
            self.samples,
            self.p99 / LAG_TARGET_S,
            self.opened,
            s = self.scale,
        )
    }
}
