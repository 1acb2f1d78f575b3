//! What each command answers, as typed result sets built from the status
//! model ([`ferry_monitor::Status`], [`CutoverRecord`], [`LagSample`]): the
//! same figures `GET /status` and `ferry status` show, one row per table or
//! sample, one row for the status, the lag and a cutover.
//!
//! Pure functions: a command's columns ([`columns`]) are known before it
//! runs, so the extended protocol can describe a statement without running
//! it, and every row built here has exactly those columns (tested).

use std::time::SystemTime;

use ferry_monitor::history::LagSample;
use ferry_monitor::status::TableValidation;
use ferry_monitor::{CutoverRecord, Status};
use postgres_types::Type;

use crate::ValidateStarted;
use crate::cell::Cell;
use crate::command::{COMMANDS, Command};

/// A column of a result: its name and PostgreSQL type.
pub type Column = (&'static str, Type);

/// Rows with their columns.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSet {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
}

const STATUS: &[Column] = &[
    ("phase", Type::TEXT),
    ("live", Type::BOOL),
    ("paused", Type::BOOL),
    ("source_kind", Type::TEXT),
    ("source_position", Type::TEXT),
    ("applied_position", Type::TEXT),
    ("applied_commit_time", Type::TIMESTAMPTZ),
    ("lag_seconds", Type::FLOAT8),
    ("lag_bytes", Type::INT8),
    ("caught_up", Type::BOOL),
    ("reader", Type::TEXT),
    ("applier", Type::TEXT),
    ("run_started", Type::TIMESTAMPTZ),
    ("slot", Type::TEXT),
    ("retained_wal_bytes", Type::INT8),
    ("last_error", Type::TEXT),
    ("cutover", Type::TEXT),
    ("as_of", Type::TIMESTAMPTZ),
];

const LAG: &[Column] = &[
    ("lag_seconds", Type::FLOAT8),
    ("lag_bytes", Type::INT8),
    ("caught_up", Type::BOOL),
    ("source_position", Type::TEXT),
    ("applied_position", Type::TEXT),
    ("applied_commit_time", Type::TIMESTAMPTZ),
    ("as_of", Type::TIMESTAMPTZ),
];

const TABLES: &[Column] = &[
    ("table_name", Type::TEXT),
    ("state", Type::TEXT),
    ("rows_copied", Type::INT8),
    ("rows_estimated", Type::INT8),
    ("chunks_done", Type::INT8),
    ("chunks_total", Type::INT8),
    ("changes_applied", Type::INT8),
];

const HISTORY: &[Column] = &[
    ("at", Type::TIMESTAMPTZ),
    ("lag_seconds", Type::FLOAT8),
    ("lag_bytes", Type::INT8),
];

const VALIDATION: &[Column] = &[
    ("table_name", Type::TEXT),
    ("clean", Type::BOOL),
    ("rows_checked", Type::INT8),
    ("ranges", Type::INT8),
    ("differences", Type::INT8),
    ("unsettled", Type::INT8),
    ("repaired", Type::INT8),
    ("rows_per_second", Type::FLOAT8),
    ("duration_seconds", Type::FLOAT8),
    ("finished_at", Type::TIMESTAMPTZ),
    ("differing_keys", Type::TEXT),
    ("note", Type::TEXT),
    ("running", Type::BOOL),
];

const VALIDATE: &[Column] = &[
    ("started", Type::BOOL),
    ("tables", Type::TEXT),
    ("repair", Type::BOOL),
    ("results", Type::TEXT),
];

/// Differing keys shown per table by `SHOW VALIDATION` (all are in
/// `GET /status`).
const KEYS_SHOWN: usize = 10;

const SHADOW: &[Column] = &[
    ("fingerprint", Type::TEXT),
    ("query", Type::TEXT),
    ("calls", Type::INT8),
    ("mirrored", Type::INT8),
    ("mismatches", Type::INT8),
    ("lag_settled", Type::INT8),
    ("target_errors", Type::INT8),
    ("source_p50_ms", Type::FLOAT8),
    ("source_p99_ms", Type::FLOAT8),
    ("target_p50_ms", Type::FLOAT8),
    ("target_p99_ms", Type::FLOAT8),
    ("example", Type::TEXT),
];

const PROXY_MODE: &[Column] = &[
    ("mode", Type::TEXT),
    ("changed_by", Type::TEXT),
    ("changed_at", Type::TIMESTAMPTZ),
];

const HELP: &[Column] = &[("command", Type::TEXT), ("description", Type::TEXT)];

const CUTOVER: &[Column] = &[
    ("outcome", Type::TEXT),
    ("dry_run", Type::BOOL),
    ("fenced", Type::BOOL),
    ("write_freeze_seconds", Type::FLOAT8),
    ("final_position", Type::TEXT),
    ("lag_seconds_at_start", Type::FLOAT8),
    ("sequences_synced", Type::INT8),
    ("tables_checked", Type::INT8),
    ("tables_differing", Type::TEXT),
    ("slot_dropped", Type::BOOL),
    ("started_at", Type::TIMESTAMPTZ),
    ("finished_at", Type::TIMESTAMPTZ),
    ("steps", Type::TEXT),
];

/// The columns `cmd` answers with; `None` for commands that answer with a
/// command tag only (`PAUSE`, `RESUME`, `SET`).
pub fn columns(cmd: &Command) -> Option<&'static [Column]> {
    match cmd {
        Command::ShowStatus => Some(STATUS),
        Command::ShowLag => Some(LAG),
        Command::ShowTables => Some(TABLES),
        Command::ShowLagHistory { .. } => Some(HISTORY),
        Command::ShowHelp => Some(HELP),
        Command::ShowValidation => Some(VALIDATION),
        Command::ShowShadow => Some(SHADOW),
        Command::ProxyMode(_) => Some(PROXY_MODE),
        Command::Validate(_) => Some(VALIDATE),
        Command::Cutover(_) => Some(CUTOVER),
        Command::Pause | Command::Resume | Command::Set => None,
    }
}

/// The command tag of a command without rows.
pub fn tag(cmd: &Command) -> &'static str {
    match cmd {
        Command::Pause => "PAUSE",
        Command::Resume => "RESUME",
        Command::Set => "SET",
        _ => "SHOW",
    }
}

fn set(columns: &'static [Column], rows: Vec<Vec<Cell>>) -> ResultSet {
    ResultSet {
        columns: columns.to_vec(),
        rows,
    }
}

fn text(v: impl Into<String>) -> Cell {
    Cell::Text(Some(v.into()))
}

fn int(v: u64) -> Cell {
    Cell::Int(Some(i64::try_from(v).unwrap_or(i64::MAX)))
}

fn time(t: Option<SystemTime>) -> Cell {
    Cell::Time(t)
}

pub fn status(s: &Status) -> ResultSet {
    let row = vec![
        text(s.phase.to_string()),
        Cell::Bool(Some(s.live)),
        Cell::Bool(Some(s.paused)),
        text(s.source_kind.clone()),
        Cell::Text(s.source_position.clone()),
        Cell::Text(s.applied_position.clone()),
        time(s.applied_commit_time),
        Cell::Float(Some(s.lag.seconds)),
        int(s.lag.bytes),
        Cell::Bool(Some(s.lag.caught_up)),
        text(s.reader.clone()),
        text(s.applier.clone()),
        time(s.run_started),
        Cell::Text(s.slot.as_ref().map(|x| x.name.clone())),
        Cell::Int(
            s.slot
                .as_ref()
                .and_then(|x| x.retained_wal_bytes)
                .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        ),
        Cell::Text(s.last_error.clone()),
        Cell::Text(s.cutover.as_ref().map(|c| c.outcome.clone())),
        time(Some(s.as_of)),
    ];
    set(STATUS, vec![row])
}

pub fn lag(s: &Status) -> ResultSet {
    let row = vec![
        Cell::Float(Some(s.lag.seconds)),
        int(s.lag.bytes),
        Cell::Bool(Some(s.lag.caught_up)),
        Cell::Text(s.source_position.clone()),
        Cell::Text(s.applied_position.clone()),
        time(s.applied_commit_time),
        time(Some(s.as_of)),
    ];
    set(LAG, vec![row])
}

pub fn tables(s: &Status) -> ResultSet {
    let rows = s
        .tables
        .iter()
        .map(|t| {
            vec![
                text(t.name.clone()),
                text(t.state.clone()),
                int(t.rows_copied),
                Cell::Int(
                    t.rows_estimated
                        .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                ),
                int(u64::from(t.chunks_done)),
                int(u64::from(t.chunks_total)),
                int(t.changes_applied),
            ]
        })
        .collect();
    set(TABLES, rows)
}

pub fn lag_history(samples: &[LagSample]) -> ResultSet {
    let rows = samples
        .iter()
        .map(|s| {
            vec![
                time(Some(s.at)),
                Cell::Float(Some(s.lag_seconds)),
                int(s.lag_bytes),
            ]
        })
        .collect();
    set(HISTORY, rows)
}

pub fn validation(s: &Status) -> ResultSet {
    let rows = s
        .validation
        .iter()
        .map(|v| validation_row(v, s.validating))
        .collect();
    set(VALIDATION, rows)
}

fn validation_row(v: &TableValidation, running: bool) -> Vec<Cell> {
    let keys: Vec<String> = v
        .differences
        .iter()
        .take(KEYS_SHOWN)
        .map(|d| format!("{} ({})", d.key.join(", "), d.kind))
        .collect();
    let more = v.differences.len().saturating_sub(KEYS_SHOWN);
    let keys = (!keys.is_empty()).then(|| {
        let mut k = keys.join("; ");
        if more > 0 {
            k.push_str(&format!("; … {more} more in GET /status"));
        }
        k
    });
    vec![
        text(v.table.clone()),
        Cell::Bool(Some(v.clean)),
        int(v.rows_checked),
        int(v.ranges),
        int(v.differences.len() as u64),
        int(v.unsettled.len() as u64),
        int(v.repaired),
        Cell::Float(Some(v.rows_per_second)),
        Cell::Float(Some(v.duration_seconds())),
        time(Some(v.finished_at)),
        Cell::Text(keys),
        Cell::Text(v.note.clone()),
        Cell::Bool(Some(running)),
    ]
}

pub fn validate_started(v: &ValidateStarted) -> ResultSet {
    let tables = if v.tables.is_empty() {
        "every carried table".to_owned()
    } else {
        v.tables.join(", ")
    };
    let row = vec![
        Cell::Bool(Some(v.started)),
        text(tables),
        Cell::Bool(Some(v.repair)),
        text("SHOW VALIDATION shows each table's result as it finishes"),
    ];
    set(VALIDATE, vec![row])
}

/// `SHOW SHADOW`: one row per query fingerprint (none without a proxy).
pub fn shadow(s: &Status) -> ResultSet {
    let rows = s
        .proxy
        .iter()
        .flat_map(|p| p.queries.iter())
        .map(|q| {
            vec![
                text(q.fingerprint.clone()),
                text(q.query.clone()),
                int(q.calls),
                int(q.mirrored),
                int(q.mismatches),
                int(q.lag_settled),
                int(q.target_errors),
                Cell::Float(q.source_p50_ms),
                Cell::Float(q.source_p99_ms),
                Cell::Float(q.target_p50_ms),
                Cell::Float(q.target_p99_ms),
                Cell::Text(q.example.clone()),
            ]
        })
        .collect();
    set(SHADOW, rows)
}

/// `PROXY MODE …`: the recorded change.
pub fn mode_change(c: &ferry_monitor::proxy::ModeChange) -> ResultSet {
    set(
        PROXY_MODE,
        vec![vec![
            text(c.mode.clone()),
            text(c.by.clone()),
            time(Some(c.at)),
        ]],
    )
}

pub fn help() -> ResultSet {
    let rows = COMMANDS
        .iter()
        .map(|(c, d)| vec![text(*c), text(*d)])
        .collect();
    set(HELP, rows)
}

pub fn cutover(r: &CutoverRecord) -> ResultSet {
    let differing: Vec<&str> = r
        .validation
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.table.as_str())
        .collect();
    let row = vec![
        text(r.outcome.clone()),
        Cell::Bool(Some(r.dry_run)),
        Cell::Bool(Some(r.fenced)),
        Cell::Float(r.write_freeze_seconds),
        Cell::Text(r.final_position.clone()),
        Cell::Float(Some(r.lag_seconds_at_start)),
        int(r.sequences_synced),
        int(r.validation.len() as u64),
        Cell::Text((!differing.is_empty()).then(|| differing.join(", "))),
        Cell::Bool(Some(r.slot_dropped)),
        time(Some(r.started_at)),
        time(r.finished_at),
        text(r.steps.join("; ")),
    ];
    set(CUTOVER, vec![row])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_monitor::{Phase, SlotHealth, TableCheck, TableStatus};

    use super::*;
    use crate::command::CutoverCommand;

    fn sample_status() -> Status {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = Status::new(Phase::Stream, "postgres", at);
        s.validation = vec![TableValidation {
            table: "public.orders".into(),
            target_table: "public.orders".into(),
            started_at: at,
            finished_at: at + Duration::from_secs(4),
            rows_checked: 1000,
            ranges: 3,
            differences: (0..12)
                .map(|i| ferry_monitor::status::KeyDifference {
                    key: vec![i.to_string()],
                    kind: "changed".into(),
                    columns: vec!["note".into()],
                })
                .collect(),
            clean: false,
            rows_per_second: 250.0,
            ..TableValidation::default()
        }];
        s.source_position = Some("0/16B3748".into());
        s.applied_position = Some("0/16B3700".into());
        s.lag.seconds = 1.5;
        s.lag.bytes = 72;
        s.slot = Some(SlotHealth {
            name: "ferry".into(),
            retained_wal_bytes: Some(4096),
            wal_status: Some("reserved".into()),
        });
        s.tables = vec![TableStatus {
            name: "public.orders".into(),
            state: "streaming".into(),
            rows_copied: 1000,
            rows_estimated: None,
            chunks_done: 4,
            chunks_total: 4,
            changes_applied: 17,
        }];
        s
    }

    /// Every row has the command's columns, each cell of its column's type.
    fn assert_shape(set: &ResultSet, cmd: &Command) {
        assert_eq!(Some(set.columns.as_slice()), columns(cmd), "{cmd:?}");
        for row in &set.rows {
            assert_eq!(row.len(), set.columns.len(), "{cmd:?}");
            for (cell, (name, ty)) in row.iter().zip(&set.columns) {
                assert!(cell.fits(ty), "{cmd:?}: {name} is {ty} but holds {cell:?}");
            }
        }
    }

    #[test]
    fn every_result_matches_its_declared_columns() {
        let s = sample_status();
        let record = CutoverRecord {
            dry_run: false,
            started_at: s.as_of,
            finished_at: Some(s.as_of),
            fenced: true,
            write_freeze_seconds: Some(0.8),
            final_position: Some("0/16B3748".into()),
            lag_seconds_at_start: 0.2,
            sequences_synced: 3,
            validation: vec![
                TableCheck {
                    table: "public.a".into(),
                    source_rows: Some(1),
                    target_rows: Some(1),
                    ok: true,
                },
                TableCheck {
                    table: "public.b".into(),
                    source_rows: Some(2),
                    target_rows: Some(1),
                    ok: false,
                },
            ],
            slot_dropped: true,
            restored: vec![],
            steps: vec!["fenced".into(), "drained".into()],
            outcome: "completed".into(),
        };
        let sample = LagSample {
            at: s.as_of,
            lag_seconds: 0.5,
            lag_bytes: 10,
        };
        let cases = [
            (status(&s), Command::ShowStatus),
            (lag(&s), Command::ShowLag),
            (tables(&s), Command::ShowTables),
            (
                lag_history(&[sample]),
                Command::ShowLagHistory {
                    window: Duration::from_secs(60),
                },
            ),
            (help(), Command::ShowHelp),
            (validation(&s), Command::ShowValidation),
            (
                validate_started(&ValidateStarted {
                    started: true,
                    tables: vec![],
                    repair: false,
                }),
                Command::Validate(crate::command::ValidateCommand::default()),
            ),
            (
                cutover(&record),
                Command::Cutover(CutoverCommand::default()),
            ),
        ];
        for (set, cmd) in &cases {
            assert!(!set.rows.is_empty(), "{cmd:?}");
            assert_shape(set, cmd);
        }
        let c = cutover(&record);
        assert_eq!(c.rows[0][8], Cell::Text(Some("public.b".into())));
        assert_eq!(c.rows[0][7], Cell::Int(Some(2)));
    }

    #[test]
    fn status_carries_the_figures_of_the_status_model() {
        let s = sample_status();
        let row = &status(&s).rows[0];
        assert_eq!(row[0], Cell::Text(Some("stream".into())));
        assert_eq!(row[7], Cell::Float(Some(1.5)));
        assert_eq!(row[8], Cell::Int(Some(72)));
        assert_eq!(row[14], Cell::Int(Some(4096)));
        let v = &validation(&s).rows[0];
        assert_eq!(v[1], Cell::Bool(Some(false)));
        assert_eq!(v[4], Cell::Int(Some(12)));
        assert_eq!(v[8], Cell::Float(Some(4.0)));
        let Cell::Text(Some(keys)) = &v[10] else {
            panic!("differing keys: {v:?}")
        };
        assert!(keys.starts_with("0 (changed); 1 (changed)"), "{keys}");
        assert!(keys.ends_with("… 2 more in GET /status"), "{keys}");
        let t = &tables(&s).rows[0];
        assert_eq!(t[0], Cell::Text(Some("public.orders".into())));
        assert_eq!(t[6], Cell::Int(Some(17)));
    }

    #[test]
    fn commands_without_rows_have_a_tag() {
        assert_eq!(columns(&Command::Pause), None);
        assert_eq!(tag(&Command::Pause), "PAUSE");
        assert_eq!(tag(&Command::Resume), "RESUME");
        assert_eq!(tag(&Command::Set), "SET");
    }
}
