//! The status model: what `GET /status`, `ferry status [--json] [--watch]`
//! and the console show.
//!
//! A running `ferry run` builds a [`Status`] from its live state; when no
//! process answers, `ferry status` builds one from the state tables in the
//! target (`live: false`). The JSON form is the serde form of these types.
//! Nothing here may carry a secret: errors go through [`redact_message`].

use std::fmt::Write as _;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::lag::LagFigures;
use crate::timestamp::{self, serde_time, serde_time_opt};

pub use ferry_core::phase::Phase;

/// One table's progress.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TableStatus {
    /// Target name, `schema.table`.
    pub name: String,
    /// Lifecycle state as stored in the target (`pending`, `loading`,
    /// `catching_up`, `streaming`, `failed: <reason>`).
    pub state: String,
    pub rows_copied: u64,
    #[serde(default)]
    pub rows_estimated: Option<u64>,
    pub chunks_done: u32,
    pub chunks_total: u32,
    pub changes_applied: u64,
}

/// Health of the source's replication slot (PostgreSQL sources).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SlotHealth {
    pub name: String,
    #[serde(default)]
    pub retained_wal_bytes: Option<u64>,
    /// `pg_replication_slots.wal_status` (`reserved`, `extended`, `unreserved`, `lost`).
    #[serde(default)]
    pub wal_status: Option<String>,
}

/// Row counts of one table compared at cutover.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TableCheck {
    pub table: String,
    #[serde(default)]
    pub source_rows: Option<u64>,
    #[serde(default)]
    pub target_rows: Option<u64>,
    pub ok: bool,
}

/// What a cutover did (or, for a dry run, would do); stored in `ferry.runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CutoverRecord {
    pub dry_run: bool,
    #[serde(with = "serde_time")]
    pub started_at: SystemTime,
    #[serde(default, with = "serde_time_opt")]
    pub finished_at: Option<SystemTime>,
    pub fenced: bool,
    /// How long source writes were fenced: the headline figure.
    #[serde(default)]
    pub write_freeze_seconds: Option<f64>,
    #[serde(default)]
    pub final_position: Option<String>,
    pub lag_seconds_at_start: f64,
    #[serde(default)]
    pub sequences_synced: u64,
    #[serde(default)]
    pub validation: Vec<TableCheck>,
    #[serde(default)]
    pub slot_dropped: bool,
    /// Target schema changes ferry made for applying and put back at the
    /// end: identity columns `GENERATED ALWAYS` again, triggers and rules
    /// enabled `ALWAYS`/`REPLICA` again (for a dry run: what would be).
    #[serde(default)]
    pub restored: Vec<String>,
    /// The steps taken (or planned, for a dry run), in order.
    #[serde(default)]
    pub steps: Vec<String>,
    /// `done`, `dry run`, `refused: <why>`, `failed: <why>`.
    pub outcome: String,
}

/// One key that differs between source and target, found by validation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyDifference {
    /// The key's values in key-column order, as text.
    pub key: Vec<String>,
    /// `missing` (on the target), `extra` (on the target) or `changed`.
    pub kind: String,
    /// For `changed`: the columns whose values differ (never the values).
    #[serde(default)]
    pub columns: Vec<String>,
}

/// The result of validating one table (`ferry validate`); stored in the
/// state schema's `validations` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableValidation {
    /// Source name, `schema.table`.
    pub table: String,
    pub target_table: String,
    #[serde(default)]
    pub key_columns: Vec<String>,
    #[serde(with = "serde_time")]
    pub started_at: SystemTime,
    #[serde(with = "serde_time")]
    pub finished_at: SystemTime,
    pub rows_checked: u64,
    pub ranges: u64,
    /// Keys found different (before any repair).
    #[serde(default)]
    pub differences: Vec<KeyDifference>,
    /// Keys still changing after every confirmation round.
    #[serde(default)]
    pub unsettled: Vec<Vec<String>>,
    /// Keys re-copied by `--repair` (and found equal afterwards).
    #[serde(default)]
    pub repaired: u64,
    /// Source and target hold the same rows (after any repair).
    pub clean: bool,
    pub rows_per_second: f64,
    /// Why the table could not be compared key by key, if so.
    #[serde(default)]
    pub note: Option<String>,
}

impl Default for TableValidation {
    fn default() -> Self {
        TableValidation {
            table: String::new(),
            target_table: String::new(),
            key_columns: Vec::new(),
            started_at: SystemTime::UNIX_EPOCH,
            finished_at: SystemTime::UNIX_EPOCH,
            rows_checked: 0,
            ranges: 0,
            differences: Vec::new(),
            unsettled: Vec::new(),
            repaired: 0,
            clean: false,
            rows_per_second: 0.0,
            note: None,
        }
    }
}

impl TableValidation {
    pub fn duration_seconds(&self) -> f64 {
        self.finished_at
            .duration_since(self.started_at)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// Everything `ferry status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// When this status was taken.
    #[serde(with = "serde_time")]
    pub as_of: SystemTime,
    /// From a running process (true) or read back from the target state.
    pub live: bool,
    pub phase: Phase,
    #[serde(default, with = "serde_time_opt")]
    pub run_started: Option<SystemTime>,
    /// `postgres`, `mysql` or `sqlite`.
    pub source_kind: String,
    /// Source head position, as text.
    #[serde(default)]
    pub source_position: Option<String>,
    /// Last applied (checkpointed) source position, as text.
    #[serde(default)]
    pub applied_position: Option<String>,
    #[serde(default, with = "serde_time_opt")]
    pub applied_commit_time: Option<SystemTime>,
    pub lag: LagFigures,
    #[serde(default)]
    pub tables: Vec<TableStatus>,
    /// Tables declared in `tables.insert_only`: only their inserts (and
    /// truncates) are carried.
    #[serde(default)]
    pub insert_only: Vec<String>,
    /// Reader state (`connecting`, `streaming`, `reconnecting`, `stopped`, …).
    pub reader: String,
    /// Applier state (`idle`, `applying`, `paused`, `stopped`, …).
    pub applier: String,
    #[serde(default)]
    pub paused: bool,
    /// Last error, redacted (see [`redact_message`]).
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub slot: Option<SlotHealth>,
    #[serde(default)]
    pub cutover: Option<CutoverRecord>,
    /// The newest validation result of each table.
    #[serde(default)]
    pub validation: Vec<TableValidation>,
    /// A validation is running in this process.
    #[serde(default)]
    pub validating: bool,
    /// `forward` (source → target), or `reverse` after a cutover with
    /// fallback: the new database streams back into the old source.
    #[serde(default = "forward")]
    pub direction: String,
    /// Source schema changes carried or recorded as not carried
    /// (`postgres.capture_ddl`); `None` when there were none.
    #[serde(default)]
    pub schema_changes: Option<SchemaChanges>,
    /// The PostgreSQL-wire proxy, when `[proxy] listen` is set.
    #[serde(default)]
    pub proxy: Option<crate::proxy::ProxyStatus>,
    /// MySQL/MariaDB: zero and partial dates written as NULL
    /// (`mysql.zero_dates = "null"`), per column, in the load and the
    /// stream, as committed on the target with the data since the
    /// migration started (exact across crashes and restarts).
    #[serde(default)]
    pub zero_dates: Vec<ferry_core::source::ColumnCount>,
}

fn forward() -> String {
    "forward".into()
}

/// Source schema changes seen by the applier (from `ferry.events`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaChanges {
    /// DDL messages applied to the target.
    pub ddl_applied: u64,
    /// Parts recorded as not carried (event kind `ddl_not_carried`).
    pub ddl_not_carried: u64,
    /// The newest of those, as recorded.
    pub last_not_carried: Option<String>,
}

impl Status {
    /// An empty status for `phase` at `as_of`.
    pub fn new(phase: Phase, source_kind: &str, as_of: SystemTime) -> Self {
        Status {
            as_of,
            live: true,
            phase,
            run_started: None,
            source_kind: source_kind.to_owned(),
            source_position: None,
            applied_position: None,
            applied_commit_time: None,
            lag: LagFigures::default(),
            tables: Vec::new(),
            insert_only: Vec::new(),
            reader: "stopped".into(),
            applier: "stopped".into(),
            paused: false,
            last_error: None,
            slot: None,
            cutover: None,
            validation: Vec::new(),
            validating: false,
            direction: forward(),
            schema_changes: None,
            proxy: None,
            zero_dates: Vec::new(),
        }
    }

    /// Record `message` as the last error, redacting any URL password.
    pub fn set_last_error(&mut self, message: &str) {
        self.last_error = Some(redact_message(message));
    }
}

/// `message` with the password of every URL-looking word replaced by `****`.
pub fn redact_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") || word.contains("password=") {
            out.push_str(&ferry_core::secret::redact_url(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_whitespace() || matches!(c, '\'' | '"' | '(' | ')' | ',') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Bytes as `812 B`, `4.0 KiB`, `12.5 MiB`, …
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Seconds as `0.4s`, `12s`, `3m 05s`, `2h 03m`, `4d 02h`.
pub fn human_seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "?".into();
    }
    if s < 10.0 {
        return format!("{s:.1}s");
    }
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d {:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// An integer with thousands separators.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A readable terminal view of `s` (for `ferry status` and `--watch`).
pub fn render_table(s: &Status) -> String {
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let origin = if s.live {
        "live"
    } else {
        "from target state; ferry run is not answering"
    };
    let _ = writeln!(
        out,
        "phase     {}{}   ({origin}, as of {})",
        s.phase,
        if s.paused { " (PAUSED)" } else { "" },
        timestamp::format(s.as_of)
    );
    if s.direction == "reverse" {
        let _ = writeln!(
            out,
            "direction reverse: the new database streams back into the old source (fallback; `ferry rollback` or `ferry finish`)"
        );
    }
    if let Some(t) = s.run_started {
        let _ = writeln!(out, "started   {}", timestamp::format(t));
    }
    let lag = if s.lag.caught_up {
        format!("caught up ({} behind)", human_bytes(s.lag.bytes))
    } else {
        format!(
            "{} / {} behind",
            human_seconds(s.lag.seconds),
            human_bytes(s.lag.bytes)
        )
    };
    let _ = writeln!(out, "lag       {lag}");
    let _ = writeln!(
        out,
        "source    {}  head {}",
        s.source_kind,
        opt(&s.source_position)
    );
    let commit = s
        .applied_commit_time
        .map(timestamp::format)
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "applied   {}  (commit {commit})",
        opt(&s.applied_position)
    );
    let _ = writeln!(out, "reader    {}   applier {}", s.reader, s.applier);
    if let Some(slot) = &s.slot {
        let retained = slot
            .retained_wal_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "-".into());
        let wal = slot.wal_status.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "slot      {}  retains {retained}  wal_status {wal}",
            slot.name
        );
    }
    if !s.insert_only.is_empty() {
        let _ = writeln!(
            out,
            "insert-only  {}  (only inserts and truncates are carried)",
            s.insert_only.join(", ")
        );
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "error     {e}");
    }
    if let Some(d) = &s.schema_changes {
        let _ = writeln!(
            out,
            "ddl       {} applied, {} not carried{}",
            d.ddl_applied,
            d.ddl_not_carried,
            d.last_not_carried
                .as_ref()
                .map(|m| format!(" (latest: {m}; all in ferry.events)"))
                .unwrap_or_default()
        );
    }
    for z in &s.zero_dates {
        let _ = writeln!(
            out,
            "zero dates  {}.{}: {} loaded, {} streamed as NULL",
            z.table, z.column, z.load, z.stream
        );
    }
    if let Some(c) = &s.cutover {
        let freeze = c
            .write_freeze_seconds
            .map(human_seconds)
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "cutover   {}  write freeze {freeze}  final {}",
            c.outcome,
            opt(&c.final_position)
        );
    }
    if !s.tables.is_empty() {
        out.push('\n');
        render_tables(&mut out, &s.tables);
    }
    if !s.validation.is_empty() || s.validating {
        out.push('\n');
        render_validation(&mut out, &s.validation, s.validating);
    }
    if let Some(p) = &s.proxy {
        out.push('\n');
        crate::proxy::render(&mut out, p);
    }
    out
}

fn render_validation(out: &mut String, results: &[TableValidation], running: bool) {
    let _ = writeln!(
        out,
        "validation{}",
        if running { "  (running now)" } else { "" }
    );
    for v in results {
        let verdict = if v.clean {
            "clean".to_owned()
        } else {
            format!(
                "NOT CLEAN: {} differences, {} unsettled",
                v.differences.len(),
                v.unsettled.len()
            )
        };
        let _ = writeln!(
            out,
            "  {:<30} {verdict}  {} rows, {} ranges, {:.0} rows/s, repaired {}, finished {}{}",
            v.table,
            grouped(v.rows_checked),
            v.ranges,
            v.rows_per_second,
            v.repaired,
            timestamp::format(v.finished_at),
            v.note
                .as_deref()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default()
        );
    }
}

fn render_tables(out: &mut String, tables: &[TableStatus]) {
    let header = [
        "TABLE",
        "STATE",
        "ROWS COPIED",
        "ESTIMATE",
        "CHUNKS",
        "CHANGES",
    ];
    let rows: Vec<[String; 6]> = tables
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.state.clone(),
                grouped(t.rows_copied),
                t.rows_estimated.map(grouped).unwrap_or_else(|| "-".into()),
                format!("{}/{}", t.chunks_done, t.chunks_total),
                grouped(t.changes_applied),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: [&str; 6]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Text columns left-aligned, figures right-aligned.
            if i < 2 {
                let _ = write!(l, "{cell:<w$}  ");
            } else {
                let _ = write!(l, "{cell:>w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(out, header);
    for r in &rows {
        line(
            out,
            [&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]].map(String::as_str),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    pub(crate) fn sample() -> Status {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_294_400);
        let mut s = Status::new(Phase::Stream, "postgres", t0 + Duration::from_secs(90));
        s.run_started = Some(t0);
        s.source_position = Some("0/1A2B3C4D".into());
        s.applied_position = Some("0/1A2B0000".into());
        s.applied_commit_time = Some(t0 + Duration::from_millis(88_500));
        s.lag = LagFigures {
            seconds: 1.5,
            bytes: 15_437,
            caught_up: false,
        };
        s.reader = "streaming".into();
        s.applier = "applying".into();
        s.tables = vec![
            TableStatus {
                name: "public.orders".into(),
                state: "streaming".into(),
                rows_copied: 1_234_567,
                rows_estimated: Some(1_200_000),
                chunks_done: 3,
                chunks_total: 3,
                changes_applied: 42,
            },
            TableStatus {
                name: "public.t".into(),
                state: "loading".into(),
                rows_copied: 5,
                rows_estimated: None,
                chunks_done: 0,
                chunks_total: 1,
                changes_applied: 0,
            },
        ];
        s.slot = Some(SlotHealth {
            name: "ferry".into(),
            retained_wal_bytes: Some(3 << 20),
            wal_status: Some("reserved".into()),
        });
        s.set_last_error("connecting to postgres://app:hunter2@db:5432/app failed");
        s.cutover = Some(CutoverRecord {
            dry_run: true,
            started_at: t0 + Duration::from_secs(80),
            finished_at: Some(t0 + Duration::from_secs(81)),
            fenced: false,
            write_freeze_seconds: Some(2.25),
            final_position: Some("0/1A2B3C4D".into()),
            lag_seconds_at_start: 0.5,
            sequences_synced: 2,
            validation: vec![TableCheck {
                table: "public.orders".into(),
                source_rows: Some(10),
                target_rows: Some(10),
                ok: true,
            }],
            slot_dropped: false,
            restored: Vec::new(),
            steps: vec!["check lag".into(), "drain".into()],
            outcome: "dry run".into(),
        });
        s
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let json = serde_json::to_string_pretty(&s).expect("serialize");
        assert!(json.contains("\"phase\": \"stream\""), "{json}");
        assert!(
            json.contains("\"as_of\": \"2024-03-01T12:01:30.000Z\""),
            "{json}"
        );
        let back: Status = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
        // Optional fields may be absent (older or fallback producers).
        let minimal = r#"{"as_of":"2024-03-01T12:00:00Z","live":false,"phase":"load","source_kind":"mysql",
            "lag":{"seconds":0.0,"bytes":0,"caught_up":true},"reader":"stopped","applier":"stopped"}"#;
        let m: Status = serde_json::from_str(minimal).expect("minimal");
        assert_eq!(m.phase, Phase::Load);
        assert!(m.tables.is_empty() && m.cutover.is_none() && !m.paused);
    }

    #[test]
    fn errors_are_redacted() {
        let s = sample();
        let e = s.last_error.as_deref().expect("error");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("postgres://app:****@db:5432/app failed"), "{e}");
        assert_eq!(
            redact_message("bad url 'mysql://root:pw@h/db', retry"),
            "bad url 'mysql://root:****@h/db', retry"
        );
    }

    #[test]
    fn table_view_shows_the_figures() {
        let text = render_table(&sample());
        for needle in [
            "phase     stream",
            "1.5s / 15.1 KiB behind",
            "head 0/1A2B3C4D",
            "public.orders",
            "1,234,567",
            "1,200,000",
            "3/3",
            "retains 3.0 MiB  wal_status reserved",
            "write freeze 2.2s",
            "postgres://app:****@db",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("hunter2"));
        // Columns line up: every table row is as wide as needed for the header.
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("TABLE"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let state_col = lines[0].find("STATE").expect("STATE");
        assert_eq!(lines[1].find("streaming"), Some(state_col));
        assert_eq!(lines[2].find("loading"), Some(state_col));
    }

    #[test]
    fn validation_results_show_and_round_trip() {
        let mut s = sample();
        let t = s.as_of;
        s.validating = true;
        s.validation = vec![
            TableValidation {
                table: "public.orders".into(),
                target_table: "public.orders".into(),
                key_columns: vec!["id".into()],
                started_at: t - Duration::from_secs(10),
                finished_at: t,
                rows_checked: 1_234_567,
                ranges: 124,
                clean: true,
                rows_per_second: 123_456.7,
                ..TableValidation::default()
            },
            TableValidation {
                table: "public.items".into(),
                differences: vec![KeyDifference {
                    key: vec!["102".into()],
                    kind: "changed".into(),
                    columns: vec!["qty".into()],
                }],
                unsettled: vec![vec!["7".into()]],
                finished_at: t,
                ..TableValidation::default()
            },
        ];
        let text = render_table(&s);
        for needle in [
            "validation  (running now)",
            "public.orders                  clean  1,234,567 rows, 124 ranges, 123457 rows/s",
            "public.items                   NOT CLEAN: 1 differences, 1 unsettled",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!((s.validation[0].duration_seconds() - 10.0).abs() < 1e-9);
        let json = serde_json::to_string(&s).expect("serialize");
        let back: Status = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
    }

    #[test]
    fn human_figures() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_seconds(0.04), "0.0s");
        assert_eq!(human_seconds(42.0), "42s");
        assert_eq!(human_seconds(185.0), "3m 05s");
        assert_eq!(human_seconds(7380.0), "2h 03m");
        assert_eq!(human_seconds(3.0 * 86_400.0 + 7200.0), "3d 02h");
        assert_eq!(human_seconds(f64::NAN), "?");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn phases_parse_back() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
        }
        assert!("nope".parse::<Phase>().is_err());
    }
}
