//! The metrics registry and its Prometheus text exposition.
//!
//! Every metric ferry exports is named here, once ([`names`]). [`Metrics`] is
//! a cheap `Clone` handle (an `Arc`) the pipeline stages update from the hot
//! path: plain counters are atomics; per-table counters live in a map behind
//! a read-mostly lock, and a stage that updates one table often can keep a
//! [`Counter`] handle and skip the lookup. [`Metrics::render`] writes the
//! Prometheus text format 0.0.4 (`GET /metrics`).
//!
//! Metrics never carry secrets: labels are table names, error kinds and
//! phase names only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Metric names, in one place.
pub mod names {
    pub const LAG_SECONDS: &str = "ferry_lag_seconds";
    pub const LAG_BYTES: &str = "ferry_lag_bytes";
    pub const APPLIED_CHANGES: &str = "ferry_applied_changes_total";
    pub const RECEIVED_CHANGES: &str = "ferry_received_changes_total";
    pub const APPLY_BATCHES: &str = "ferry_apply_batches_total";
    pub const APPLY_BATCH_SECONDS: &str = "ferry_apply_batch_seconds";
    pub const LOAD_ROWS: &str = "ferry_load_rows_total";
    pub const LOAD_ROWS_ESTIMATED: &str = "ferry_load_rows_estimated";
    pub const SLOT_RETAINED_WAL_BYTES: &str = "ferry_slot_retained_wal_bytes";
    pub const ERRORS: &str = "ferry_errors_total";
    pub const PHASE: &str = "ferry_phase";
    pub const DIRECTION: &str = "ferry_direction";
    pub const SOURCE_POSITION_BYTES: &str = "ferry_source_position_bytes";
    pub const APPLIED_POSITION_BYTES: &str = "ferry_applied_position_bytes";
    pub const APPLY_SOURCE_ORDER_CHANGES: &str = "ferry_apply_source_order_changes_total";
    pub const VALIDATION_CLEAN: &str = "ferry_validation_clean";
    pub const VALIDATION_DIFFERENCES: &str = "ferry_validation_differences";
    pub const VALIDATION_ROWS_CHECKED: &str = "ferry_validation_rows_checked";
    pub const VALIDATION_ROWS_PER_SECOND: &str = "ferry_validation_rows_per_second";
    pub const VALIDATION_FINISHED: &str = "ferry_validation_finished_timestamp_seconds";
    pub const ZERO_DATES_LOADED: &str = "ferry_zero_dates_loaded_total";
    pub const ZERO_DATES_STREAMED: &str = "ferry_zero_dates_streamed_total";
}

/// Upper bounds (seconds) of the apply-batch duration histogram.
pub const BATCH_SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The phases `ferry_phase{phase}` reports (1 for the current one).
pub const PHASES: [&str; 7] = [
    "plan", "schema", "load", "catchup", "stream", "cutover", "done",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A cached handle to one counter series (e.g. one table's applied changes).
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One metric: a family of series keyed by the value of its single label
/// (`""` and no label for unlabelled metrics). Counters hold `u64`, gauges
/// hold `f64` bits.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    label: Option<&'static str>,
    series: RwLock<BTreeMap<String, Arc<AtomicU64>>>,
}

impl Family {
    fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        label: Option<&'static str>,
    ) -> Self {
        Family {
            name,
            help,
            kind,
            label,
            series: RwLock::new(BTreeMap::new()),
        }
    }

    fn series(&self, key: &str) -> Arc<AtomicU64> {
        if let Some(s) = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Arc::clone(s);
        }
        let mut map = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let initial = match self.kind {
            Kind::Counter => 0,
            Kind::Gauge => 0f64.to_bits(),
        };
        Arc::clone(
            map.entry(key.to_owned())
                .or_insert_with(|| Arc::new(AtomicU64::new(initial))),
        )
    }

    fn add(&self, key: &str, n: u64) {
        self.series(key).fetch_add(n, Ordering::Relaxed);
    }

    fn set(&self, key: &str, v: f64) {
        self.series(key).store(v.to_bits(), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, self.kind.as_str());
        let map = self.series.read().unwrap_or_else(PoisonError::into_inner);
        for (key, v) in map.iter() {
            let raw = v.load(Ordering::Relaxed);
            let value = match self.kind {
                Kind::Counter => raw.to_string(),
                Kind::Gauge => format_float(f64::from_bits(raw)),
            };
            match self.label {
                Some(label) => {
                    let _ = writeln!(
                        out,
                        "{}{{{label}=\"{}\"}} {value}",
                        self.name,
                        escape_label(key)
                    );
                }
                None => {
                    let _ = writeln!(out, "{} {value}", self.name);
                }
            }
        }
    }
}

/// A fixed-bucket histogram; bucket counts are stored per bucket and made
/// cumulative when rendered, so `_count` always equals the `+Inf` bucket.
#[derive(Debug)]
struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    /// One slot per bound plus the overflow slot.
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
}

impl Histogram {
    fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Self {
        Histogram {
            name,
            help,
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn observe(&self, v: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
            let _ = writeln!(out, "{}_bucket{{le=\"{le}\"}} {cumulative}", self.name);
        }
        let sum = f64::from_bits(self.sum_bits.load(Ordering::Relaxed));
        let _ = writeln!(out, "{}_sum {}", self.name, format_float(sum));
        let _ = writeln!(out, "{}_count {cumulative}", self.name);
    }
}

#[derive(Debug)]
struct Registry {
    lag_seconds: Family,
    lag_bytes: Family,
    applied: Family,
    received: Family,
    batches: Family,
    batch_seconds: Histogram,
    load_rows: Family,
    load_rows_estimated: Family,
    slot_retained: Family,
    errors: Family,
    phase: Family,
    direction: Family,
    source_position: Family,
    applied_position: Family,
    source_order: Family,
    validation_clean: Family,
    validation_differences: Family,
    validation_rows: Family,
    validation_rate: Family,
    validation_finished: Family,
    zero_dates_loaded: Family,
    zero_dates_streamed: Family,
}

/// Handle to ferry's metrics; clone freely.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Registry>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        use Kind::{Counter as C, Gauge as G};
        use names::*;
        let r = Registry {
            lag_seconds: Family::new(
                LAG_SECONDS,
                "Seconds since the commit of the oldest source transaction not yet applied (0 when caught up).",
                G,
                None,
            ),
            lag_bytes: Family::new(
                LAG_BYTES,
                "Source log bytes (or events) between the source head and the applied position.",
                G,
                None,
            ),
            applied: Family::new(
                APPLIED_CHANGES,
                "Row changes applied to the target.",
                C,
                Some("table"),
            ),
            received: Family::new(
                RECEIVED_CHANGES,
                "Row changes received from the source.",
                C,
                None,
            ),
            batches: Family::new(
                APPLY_BATCHES,
                "Apply batches committed to the target.",
                C,
                None,
            ),
            batch_seconds: Histogram::new(
                APPLY_BATCH_SECONDS,
                "Duration of one apply batch, from first statement to commit.",
                &BATCH_SECONDS_BUCKETS,
            ),
            load_rows: Family::new(LOAD_ROWS, "Rows copied by the full load.", C, Some("table")),
            zero_dates_loaded: Family::new(
                ZERO_DATES_LOADED,
                "Zero or partial dates the full load wrote as NULL (mysql.zero_dates = \"null\"), per source column (table.column), as committed on the target since the migration started.",
                C,
                Some("column"),
            ),
            zero_dates_streamed: Family::new(
                ZERO_DATES_STREAMED,
                "Zero or partial dates the change stream wrote as NULL (mysql.zero_dates = \"null\"), per source column (table.column), as committed on the target since the migration started.",
                C,
                Some("column"),
            ),
            load_rows_estimated: Family::new(
                LOAD_ROWS_ESTIMATED,
                "Source row estimate of each table at plan time.",
                G,
                Some("table"),
            ),
            slot_retained: Family::new(
                SLOT_RETAINED_WAL_BYTES,
                "WAL bytes the source retains for ferry's replication slot.",
                G,
                None,
            ),
            errors: Family::new(
                ERRORS,
                "Errors by kind (transient errors are retried).",
                C,
                Some("kind"),
            ),
            phase: Family::new(
                PHASE,
                "1 for the current phase, 0 for the others.",
                G,
                Some("phase"),
            ),
            direction: Family::new(
                DIRECTION,
                "1 for the direction changes flow: forward (source to target), or reverse (the new database back into the old source, after a cutover with fallback).",
                G,
                Some("direction"),
            ),
            source_position: Family::new(
                SOURCE_POSITION_BYTES,
                "Source head position as a byte offset (PostgreSQL LSN).",
                G,
                None,
            ),
            applied_position: Family::new(
                APPLIED_POSITION_BYTES,
                "Applied position as a byte offset (PostgreSQL LSN).",
                G,
                None,
            ),
            source_order: Family::new(
                APPLY_SOURCE_ORDER_CHANGES,
                "Row changes applied in source order instead of folded per key, because the target table has another unique or exclusion constraint.",
                C,
                None,
            ),
            validation_clean: Family::new(
                VALIDATION_CLEAN,
                "1 when the table's last validation found source and target equal (after any repair).",
                G,
                Some("table"),
            ),
            validation_differences: Family::new(
                VALIDATION_DIFFERENCES,
                "Keys the table's last validation found different (before any repair).",
                G,
                Some("table"),
            ),
            validation_rows: Family::new(
                VALIDATION_ROWS_CHECKED,
                "Source rows the table's last validation compared.",
                G,
                Some("table"),
            ),
            validation_rate: Family::new(
                VALIDATION_ROWS_PER_SECOND,
                "Rows per second of the table's last validation.",
                G,
                Some("table"),
            ),
            validation_finished: Family::new(
                VALIDATION_FINISHED,
                "Unix time the table's last validation finished.",
                G,
                Some("table"),
            ),
        };
        for f in [
            &r.lag_seconds,
            &r.lag_bytes,
            &r.received,
            &r.batches,
            &r.source_order,
        ] {
            f.series("");
        }
        for p in PHASES {
            r.phase.series(p);
        }
        r.direction.set("forward", 1.0);
        r.direction.set("reverse", 0.0);
        Metrics(Arc::new(r))
    }

    /// `n` changes of `table` applied.
    pub fn applied(&self, table: &str, n: u64) {
        self.0.applied.add(table, n);
    }

    /// A cached counter for `table`'s applied changes (skips the lookup).
    pub fn applied_counter(&self, table: &str) -> Counter {
        Counter(self.0.applied.series(table))
    }

    /// `n` changes received from the source.
    pub fn received(&self, n: u64) {
        self.0.received.add("", n);
    }

    /// A cached counter of the changes received (skips the lookup: it
    /// counts every row change on the stream's path).
    pub fn received_counter(&self) -> Counter {
        Counter(self.0.received.series(""))
    }

    /// One apply batch committed after `duration`.
    pub fn batch(&self, duration: Duration) {
        self.0.batches.add("", 1);
        self.0.batch_seconds.observe(duration.as_secs_f64());
    }

    /// `n` more changes applied in source order (see
    /// [`names::APPLY_SOURCE_ORDER_CHANGES`]).
    pub fn source_order_changes(&self, n: u64) {
        self.0.source_order.add("", n);
    }

    /// The current lag figures.
    pub fn set_lag(&self, seconds: f64, bytes: u64) {
        self.0.lag_seconds.set("", seconds);
        self.0.lag_bytes.set("", bytes as f64);
    }

    /// `n` rows of `table` copied by the full load.
    pub fn load_rows(&self, table: &str, n: u64) {
        self.0.load_rows.add(table, n);
    }

    /// A cached counter for `table`'s loaded rows.
    pub fn load_rows_counter(&self, table: &str) -> Counter {
        Counter(self.0.load_rows.series(table))
    }

    /// The source's row estimate for `table`.
    pub fn set_load_estimate(&self, table: &str, rows: u64) {
        self.0.load_rows_estimated.set(table, rows as f64);
    }

    /// The last validation of `table`.
    pub fn set_validation(
        &self,
        table: &str,
        clean: bool,
        differences: u64,
        rows: u64,
        rows_per_second: f64,
        finished_unix: f64,
    ) {
        let r = &self.0;
        r.validation_clean.set(table, if clean { 1.0 } else { 0.0 });
        r.validation_differences.set(table, differences as f64);
        r.validation_rows.set(table, rows as f64);
        r.validation_rate.set(table, rows_per_second);
        r.validation_finished.set(table, finished_unix);
    }

    /// WAL retained for the slot (PostgreSQL sources).
    pub fn set_slot_retained(&self, bytes: u64) {
        self.0.slot_retained.set("", bytes as f64);
    }

    /// One error of `kind` (e.g. `transient`, `operator`, `source`, `target`).
    pub fn error(&self, kind: &str) {
        self.0.errors.add(kind, 1);
    }

    /// Enter `phase` (one of [`PHASES`]; others are added as they come).
    pub fn set_phase(&self, phase: &str) {
        let keys: Vec<String> = self
            .0
            .phase
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for k in keys.iter().filter(|k| k.as_str() != phase) {
            self.0.phase.set(k, 0.0);
        }
        self.0.phase.set(phase, 1.0);
    }

    /// The direction changes flow: `forward` or `reverse`.
    pub fn set_direction(&self, direction: &str) {
        for d in ["forward", "reverse"] {
            self.0.direction.set(d, f64::from(u8::from(d == direction)));
        }
    }

    /// Source head and applied positions where they are byte offsets.
    pub fn set_positions(&self, source_head: Option<u64>, applied: Option<u64>) {
        if let Some(h) = source_head {
            self.0.source_position.set("", h as f64);
        }
        if let Some(a) = applied {
            self.0.applied_position.set("", a as f64);
        }
    }

    /// The zero-date counts committed on the target (see
    /// [`ferry_core::source::ColumnCount`]): each is a running total since
    /// the migration started, set as read.
    pub fn set_zero_dates(&self, counts: &[ferry_core::source::ColumnCount]) {
        for c in counts {
            let key = format!("{}.{}", c.table, c.column);
            self.0
                .zero_dates_loaded
                .series(&key)
                .store(c.load, Ordering::Relaxed);
            self.0
                .zero_dates_streamed
                .series(&key)
                .store(c.stream, Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let r = &self.0;
        let mut out = String::with_capacity(4096);
        for f in [
            &r.lag_seconds,
            &r.lag_bytes,
            &r.received,
            &r.applied,
            &r.batches,
            &r.source_order,
        ] {
            f.render(&mut out);
        }
        r.batch_seconds.render(&mut out);
        for f in [
            &r.load_rows,
            &r.load_rows_estimated,
            &r.slot_retained,
            &r.errors,
            &r.phase,
            &r.direction,
            &r.source_position,
            &r.applied_position,
            &r.validation_clean,
            &r.validation_differences,
            &r.validation_rows,
            &r.validation_rate,
            &r.validation_finished,
            &r.zero_dates_loaded,
            &r.zero_dates_streamed,
        ] {
            f.render(&mut out);
        }
        out
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
