//! 5. **Validation rate.** `ferry validate` of `pgbench_accounts`
//!    (SCALE×100k rows: 2M at the default scale) on fresh durable servers
//!    while `ferry run` streams (no writes: the figure is the hashing and
//!    reading cost, `validate.rows_per_second = 0`). Reference, measured in
//!    the same run on the same servers: a full ordered `md5(string_agg(t::text,
//!    '' ORDER BY aid))` of the table on the source, then on the target —
//!    what an operator would run by hand; it proves equality only when
//!    nothing writes and names no differing key. The ratio compares rows/s
//!    (the reference's time is the sum of both sides, as validation reads
//!    them one after the other).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Sizes;
use crate::cutover::{Streaming, ferry_cmd};
use crate::harness::stop_ferry;
use crate::report::{Report, rate, thousands};

#[derive(Debug)]
pub(crate) struct ValidateFigures {
    rows: u64,
    reference_source: Duration,
    reference_target: Duration,
    ferry: Duration,
    ferry_rows_per_s: f64,
    ranges: u64,
    clean: bool,
}

impl ValidateFigures {
    pub(crate) fn row(&self) -> String {
        let reference = self.reference_source + self.reference_target;
        let ref_rate = self.rows as f64 / reference.as_secs_f64().max(1e-9);
        format!(
            "| validation (`ferry validate`) | pgbench_accounts, {} rows | ordered md5(string_agg) on each side: {:.2} s + {:.2} s = {} rows/s | {} rows/s ({:.2} s wall, {} ranges, {}) | {:.2} |\n",
            thousands(self.rows),
            self.reference_source.as_secs_f64(),
            self.reference_target.as_secs_f64(),
            rate(ref_rate),
            rate(self.ferry_rows_per_s),
            self.ferry.as_secs_f64(),
            self.ranges,
            if self.clean { "clean" } else { "NOT CLEAN" },
            self.ferry_rows_per_s / ref_rate.max(1e-9)
        )
    }
}

pub(crate) fn run(sizes: &Sizes, report: &mut Report) {
    match bench(sizes.scale) {
        Ok(f) => report.validate = Some(f),
        Err(e) => report.ferry_failed("validation rate", &e),
    }
}

fn bench(scale: u32) -> anyhow::Result<ValidateFigures> {
    let s = Streaming::start(scale, "validation rate")?;
    let rt = ferry_e2e::pgsync::runtime();
    let reference = |url: &str| -> anyhow::Result<Duration> {
        rt.block_on(async {
            let c = ferry_e2e::pgsync::connect(url).await?;
            let started = Instant::now();
            c.query_one(
                "SELECT md5(string_agg(t::text, '' ORDER BY aid)) FROM pgbench_accounts t",
                &[],
            )
            .await
            .context("reference md5(string_agg)")?;
            Ok(started.elapsed())
        })
    };
    say!("  reference: ordered md5(string_agg) on the source, then the target …");
    let reference_source = reference(&s.src_url)?;
    let reference_target = reference(&s.tgt_url)?;
    say!(
        "  reference {:.2} s + {:.2} s; `ferry validate` …",
        reference_source.as_secs_f64(),
        reference_target.as_secs_f64()
    );
    let mut cmd = ferry_cmd(&s.src_url, &s.tgt_url, s.control)?;
    cmd.env("FERRY_VALIDATE_ROWS_PER_SECOND", "0").args([
        "validate",
        "--tables",
        "public.pgbench_accounts",
        "--json",
    ]);
    let started = Instant::now();
    let out = cmd.output().context("running ferry validate")?;
    let ferry = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: serde_json::Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "ferry validate printed no results ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let Some(v) = results.as_array().and_then(|a| a.first()) else {
        bail!("ferry validate returned no table:\n{stdout}");
    };
    let figures = ValidateFigures {
        rows: v["rows_checked"].as_u64().unwrap_or(0),
        reference_source,
        reference_target,
        ferry,
        ferry_rows_per_s: v["rows_per_second"].as_f64().unwrap_or(0.0),
        ranges: v["ranges"].as_u64().unwrap_or(0),
        clean: v["clean"] == true,
    };
    say!("  {}", figures.row().trim());
    stop_ferry(s.ferry)?;
    Ok(figures)
}
