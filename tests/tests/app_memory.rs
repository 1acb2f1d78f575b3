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
