//! Memory benchmark (issue 10 item 13): ferry's peak RSS while it streams
//! 1 MiB rows in a 20,000-row transaction and four concurrent large
//! transactions (protocol v2) with `apply.max_buffered_bytes` = 32 MiB; the
//! workload and the stated bound live in `ferry_e2e::memory`, which the
//! `app_memory` test runs too.

use ferry_e2e::memory::{self, MemoryFigures};

use crate::report::Report;

/// Run it and put the figures (or the failure) in the report.
pub(crate) fn run(report: &mut Report) {
    say!("memory: 1 MiB rows, 20,000-row and four concurrent large transactions");
    let logs = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            report.failures.push(format!("memory benchmark: {e}"));
            return;
        }
    };
    match memory::run(logs.path()) {
        Ok(m) => {
            say!(
                "  peak RSS {} MiB (bound {} MiB) for {} MiB carried",
                m.peak_rss >> 20,
                m.bound() >> 20,
                m.data_bytes >> 20
            );
            if m.peak_rss >= m.bound() {
                report.failures.push(format!(
                    "memory: peak RSS {} MiB is over the bound {} MiB",
                    m.peak_rss >> 20,
                    m.bound() >> 20
                ));
            }
            report.memory = Some(m);
        }
        Err(e) => report.failures.push(format!("memory benchmark: {e:#}")),
    }
}

/// The report row.
pub(crate) fn row(m: &MemoryFigures) -> String {
    format!(
        "| peak RSS, 1 MiB rows: 20,000-row txn + 4 concurrent large txns (v2) | {} MiB carried, \
         apply.max_buffered_bytes {} MiB | bound {} MiB | peak RSS {} MiB ({:.1} s) | {:.2} of bound (< 1) |\n",
        m.data_bytes >> 20,
        m.budget >> 20,
        m.bound() >> 20,
        m.peak_rss >> 20,
        m.seconds,
        m.peak_rss as f64 / m.bound() as f64
    )
}
