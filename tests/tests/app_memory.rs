//! Memory is bounded in bytes, not rows: a `ferry run` streaming 20,000-row
//! transactions with 1 MiB values and four concurrent large transactions
//! (protocol v2, streamed before commit) keeps its peak RSS under the stated
//! bound while carrying more than ten times its buffer budget, and the
//! target ends equal to the source. See `ferry_e2e::memory`.

use ferry_e2e::memory::{self, BUDGET};

#[test]
fn large_rows_and_concurrent_large_transactions_stay_within_the_budget() {
    let logs = tempfile::tempdir().unwrap();
    let m = memory::run(logs.path()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        m.data_bytes >= 10 * BUDGET,
        "the workload must exceed the budget tenfold: {} bytes for a budget of {BUDGET}",
        m.data_bytes
    );
    let log = std::fs::read_to_string(logs.path().join("memory.log")).unwrap_or_default();
    // The cause: the concurrent streamed transactions shared one budget and
    // the largest went to disk while others were open.
    let most_open = strip_ansi(&log)
        .lines()
        .filter(|l| l.contains("streamed transaction spilled to disk"))
        .filter_map(|l| l.split("open_transactions=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u32>().ok())
        .max();
    assert!(
        most_open.is_some_and(|n| n >= 2),
        "no streamed transaction spilled while others were open ({most_open:?}):\n{log}"
    );
    assert!(
        m.peak_rss < m.bound(),
        "ferry's peak RSS {} MiB is over the bound {} MiB (budget {} MiB, {} MiB carried):\n{log}",
        m.peak_rss >> 20,
        m.bound() >> 20,
        BUDGET >> 20,
        m.data_bytes >> 20
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "peak RSS {} MiB (bound {} MiB) for {} MiB carried in {:.1}s",
            m.peak_rss >> 20,
            m.bound() >> 20,
            m.data_bytes >> 20,
            m.seconds
        );
    }
}

/// The log without terminal colour codes (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
