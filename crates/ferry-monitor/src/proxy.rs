//! The proxy's part of the status model (`ferry status`, `GET /status`,
//! the console's `SHOW SHADOW`/`SHOW PROXY`, `ferry report`): its mode and
//! who set it, its counters, and the shadow-read statistics per query
//! fingerprint. Statements appear only normalized (constants replaced by
//! `?`), never with their values.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::timestamp::{self, serde_time};

/// One mode change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeChange {
    pub mode: String,
    pub by: String,
    #[serde(with = "serde_time")]
    pub at: SystemTime,
}

/// Shadow-read statistics of one normalized statement.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ShadowQuery {
    pub fingerprint: String,
    pub query: String,
    pub calls: u64,
    pub mirrored: u64,
    pub mismatches: u64,
    /// Differences that were lag (equal once the target caught up).
    #[serde(default)]
    pub lag_settled: u64,
    pub target_errors: u64,
    #[serde(default)]
    pub source_p50_ms: Option<f64>,
    #[serde(default)]
    pub source_p99_ms: Option<f64>,
    #[serde(default)]
    pub target_p50_ms: Option<f64>,
    #[serde(default)]
    pub target_p99_ms: Option<f64>,
    /// One mismatch or target error: what differed and the statement.
    #[serde(default)]
    pub example: Option<String>,
}

/// The proxy now.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub listen: String,
    pub mode: String,
    #[serde(default)]
    pub mode_changes: Vec<ModeChange>,
    pub sessions: u64,
    pub connections: u64,
    pub statements: u64,
    pub mirrored: u64,
    pub mismatches: u64,
    pub target_errors: u64,
    /// Mirrored statements dropped because the target was slow.
    pub mirror_dropped: u64,
    pub target_reads: u64,
    /// Reads kept on the source because the lag was above the bound.
    pub lag_fallbacks: u64,
    pub auth_failures: u64,
    /// Longest wait a client saw at the last cutover's hold.
    #[serde(default)]
    pub last_hold_seconds: Option<f64>,
    #[serde(default)]
    pub queries: Vec<ShadowQuery>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// The text view (a section of `ferry status`).
pub fn render(out: &mut String, p: &ProxyStatus) {
    let _ = writeln!(
        out,
        "proxy     {}  mode {}  sessions {}  statements {}",
        p.listen, p.mode, p.sessions, p.statements
    );
    let _ = writeln!(
        out,
        "shadow    mirrored {}  mismatches {}  target errors {}  dropped {}  reads on target {} (kept on source for lag {})",
        p.mirrored,
        p.mismatches,
        p.target_errors,
        p.mirror_dropped,
        p.target_reads,
        p.lag_fallbacks
    );
    if let Some(c) = p.mode_changes.last() {
        let _ = writeln!(
            out,
            "          mode set to {} by {} at {}",
            c.mode,
            c.by,
            timestamp::format(c.at)
        );
    }
    for q in p.queries.iter().take(10) {
        let _ = writeln!(
            out,
            "  {} calls {:>7} mirrored {:>6} mismatches {:>3} target errors {:>3}  p50/p99 ms source {}/{} target {}/{}  {}",
            q.fingerprint,
            q.calls,
            q.mirrored,
            q.mismatches,
            q.target_errors,
            ms(q.source_p50_ms),
            ms(q.source_p99_ms),
            ms(q.target_p50_ms),
            ms(q.target_p99_ms),
            truncate(&q.query, 60)
        );
        if let Some(e) = &q.example {
            let _ = writeln!(out, "      example: {}", truncate(e, 200));
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
