//! Shadow-read statistics per query fingerprint, and the proxy's counters.
//!
//! [`Stats`] is shared by every session and mirror worker (a mutex held only
//! to update a map entry, never across an await). Per fingerprint: calls
//! seen, mirrored, mismatches with one stored example, errors only on the
//! target, differences that were lag (settled after the target caught up),
//! and latency samples of each side in a bounded ring ([`Latencies`]) from
//! which p50/p99 are read. The number of fingerprints is bounded
//! ([`MAX_FINGERPRINTS`]); past it new statements count in `untracked`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Fingerprints kept; the rest are counted only.
pub const MAX_FINGERPRINTS: usize = 2_000;
/// Latency samples kept per side and fingerprint.
const SAMPLES: usize = 512;
/// Longest stored example text.
const EXAMPLE_CHARS: usize = 1_000;

/// A bounded ring of latency samples (microseconds).
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    ring: Vec<u64>,
    next: usize,
}

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        if self.ring.len() < SAMPLES {
            self.ring.push(us);
        } else {
            self.ring[self.next] = us;
            self.next = (self.next + 1) % SAMPLES;
        }
    }

    /// The `q` quantile (0..=1) in milliseconds, `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.ring.is_empty() {
            return None;
        }
        let mut v = self.ring.clone();
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        Some(v[i.min(v.len() - 1)] as f64 / 1000.0)
    }
}

/// What is known about one fingerprint.
#[derive(Debug, Clone, Default)]
pub struct QueryStats {
    pub normalized: String,
    pub calls: u64,
    pub mirrored: u64,
    pub mismatches: u64,
    /// Differences that disappeared once the target caught up.
    pub lag_settled: u64,
    pub target_errors: u64,
    /// One mismatch: the statement and what differed.
    pub example: Option<String>,
    pub source: Latencies,
    pub target: Latencies,
}

/// A row of the statistics as shown and stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueryRow {
    pub fingerprint: String,
    pub query: String,
    pub calls: u64,
    pub mirrored: u64,
    pub mismatches: u64,
    pub lag_settled: u64,
    pub target_errors: u64,
    pub source_p50_ms: Option<f64>,
    pub source_p99_ms: Option<f64>,
    pub target_p50_ms: Option<f64>,
    pub target_p99_ms: Option<f64>,
    pub example: Option<String>,
}

/// The proxy's counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    pub auth_failures: AtomicU64,
    pub statements: AtomicU64,
    /// Mirrored statements dropped because the queue was full.
    pub mirror_dropped: AtomicU64,
    pub mirrored: AtomicU64,
    pub mismatches: AtomicU64,
    pub target_errors: AtomicU64,
    /// Statements served by the target (`reads-on-target`).
    pub target_reads: AtomicU64,
    /// Reads kept on the source because lag was above the bound.
    pub lag_fallbacks: AtomicU64,
    pub untracked: AtomicU64,
}

/// Shared statistics.
#[derive(Debug, Default)]
pub struct Stats {
    queries: Mutex<HashMap<String, QueryStats>>,
    pub counters: Counters,
}

impl Stats {
    fn with<R>(&self, fp: &str, f: impl FnOnce(&mut QueryStats) -> R) -> Option<R> {
        let mut map = self.queries.lock().ok()?;
        if let Some(q) = map.get_mut(fp) {
            return Some(f(q));
        }
        if map.len() >= MAX_FINGERPRINTS {
            self.counters.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(f(map.entry(fp.to_owned()).or_default()))
    }

    /// A read-only statement seen (mirrored or not), answered by the source
    /// (or the target in `reads-on-target`) in `took`.
    pub fn call(&self, fp: &str, normalized: &str, served_by_target: bool, took: Duration) {
        self.with(fp, |q| {
            if q.normalized.is_empty() {
                q.normalized = normalized.chars().take(EXAMPLE_CHARS).collect();
            }
            q.calls += 1;
            if served_by_target {
                q.target.push(took);
            } else {
                q.source.push(took);
            }
        });
    }

    /// A mirrored statement's outcome.
    pub fn mirrored(&self, fp: &str, outcome: &crate::compare::Outcome, target_took: Duration) {
        use crate::compare::Outcome;
        self.counters.mirrored.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Mismatch(_) => self.counters.mismatches.fetch_add(1, Ordering::Relaxed),
            Outcome::TargetError(_) => self.counters.target_errors.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        self.with(fp, |q| {
            q.mirrored += 1;
            q.target.push(target_took);
            match outcome {
                Outcome::Equal => {}
                Outcome::Lag => q.lag_settled += 1,
                Outcome::Mismatch(why) => {
                    q.mismatches += 1;
                    if q.example.is_none() {
                        q.example = Some(why.chars().take(EXAMPLE_CHARS).collect());
                    }
                }
                Outcome::TargetError(why) => {
                    q.target_errors += 1;
                    if q.example.is_none() {
                        q.example = Some(why.chars().take(EXAMPLE_CHARS).collect());
                    }
                }
                Outcome::Unsettled => {}
            }
        });
    }

    /// Every fingerprint, most called first.
    pub fn rows(&self) -> Vec<QueryRow> {
        let Ok(map) = self.queries.lock() else {
            return Vec::new();
        };
        let mut rows: Vec<QueryRow> = map
            .iter()
            .map(|(fp, q)| QueryRow {
                fingerprint: fp.clone(),
                query: q.normalized.clone(),
                calls: q.calls,
                mirrored: q.mirrored,
                mismatches: q.mismatches,
                lag_settled: q.lag_settled,
                target_errors: q.target_errors,
                source_p50_ms: q.source.quantile_ms(0.5),
                source_p99_ms: q.source.quantile_ms(0.99),
                target_p50_ms: q.target.quantile_ms(0.5),
                target_p99_ms: q.target.quantile_ms(0.99),
                example: q.example.clone(),
            })
            .collect();
        rows.sort_by(|a, b| {
            b.calls
                .cmp(&a.calls)
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_bounded_ring() {
        let mut l = Latencies::default();
        assert_eq!(l.quantile_ms(0.5), None);
        for ms in 1..=100u64 {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.quantile_ms(0.5), Some(51.0));
        assert_eq!(l.quantile_ms(0.99), Some(99.0));
        for _ in 0..2 * SAMPLES {
            l.push(Duration::from_millis(7));
        }
        assert_eq!(l.ring.len(), SAMPLES);
        assert_eq!(l.quantile_ms(0.99), Some(7.0));
    }
}
