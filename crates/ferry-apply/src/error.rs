//! Error classification for the target side, in one place.
//!
//! Target errors become [`ferry_core::Error`], classed by SQLSTATE with the
//! shared table ([`ferry_core::sqlstate_class`]): connection loss, server
//! shutdown, serialization failures, deadlocks and too many connections are
//! transient (reconnect, resume from the checkpoint); everything the server
//! rejects for good (privileges, constraint violations, missing tables)
//! needs an operator, with the fix.

use ferry_core::{Error, ErrorClass, TableId, TableSchema, sqlstate_class};
use tokio_postgres::error::SqlState;

/// Changes the fold cannot interpret (malformed reader output).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("change for table {0} arrived before its Relation (schema)")]
    UnknownTable(TableId),
    #[error("table {table}: row has {got} columns, schema has {expected}")]
    Width {
        table: TableId,
        got: usize,
        expected: usize,
    },
    #[error("table {0} has no key and the source sent no old row: cannot match the row")]
    NoOldRow(TableId),
}

impl From<FoldError> for Error {
    fn from(e: FoldError) -> Self {
        let fix = match &e {
            FoldError::NoOldRow(_) => {
                "give the table a primary key or set REPLICA IDENTITY FULL on the source"
            }
            _ => "this is a ferry bug in the source reader; report it with the log",
        };
        Error::operator(e.to_string(), fix)
    }
}

/// Classify a target error. `context` names what was being done (table,
/// position); it never contains row values.
pub fn pg_error(context: impl Into<String>, err: tokio_postgres::Error) -> Error {
    let context = context.into();
    let Some(code) = err.code() else {
        // No SQLSTATE: I/O error, closed connection, protocol trouble.
        return Error::transient(format!("{context}: target connection failed")).with_source(err);
    };
    if sqlstate_class(code.code()) == ErrorClass::Transient {
        return Error::transient(format!("{context}: {}", code.code())).with_source(err);
    }
    let fix = if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        "grant the target role the needed privilege (see `ferry plan`), or connect as the table owner"
    } else if code.code().starts_with("23") {
        "the target rejected a row (constraint); check the target schema matches the source and that nothing else writes to the target tables"
    } else if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN {
        "the target table or column is missing; run the schema phase again or create it"
    } else {
        "check the target server log for the statement that failed"
    };
    // Server messages may quote row values; keep only object names.
    let mut names = String::new();
    if let Some(db) = err.as_db_error() {
        for (label, v) in [
            ("table", db.table()),
            ("column", db.column()),
            ("constraint", db.constraint()),
        ] {
            if let Some(v) = v {
                names.push_str(&format!(" {label}={v}"));
            }
        }
    }
    Error::operator(format!("{context}: SQLSTATE {}{names}", code.code()), fix).with_source(err)
}

/// Where a `COPY … FROM STDIN` into the target stopped on a value its
/// column's type refused: the data line (1-based, one row per line) and the
/// column, read from the server's error context (`COPY t, line 2, column
/// code: "abc"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFailure {
    pub line: usize,
    pub column: Option<String>,
    /// The SQLSTATE (class 22, data exception).
    pub code: String,
}

/// The [`CopyFailure`] of `err`: a data exception (SQLSTATE class 22)
/// whose context names a COPY line; `None` for anything else.
pub fn copy_failure(err: &tokio_postgres::Error) -> Option<CopyFailure> {
    let db = err.as_db_error()?;
    let code = db.code().code();
    if !code.starts_with("22") {
        return None;
    }
    let (line, column) = parse_copy_context(db.where_()?)?;
    Some(CopyFailure {
        line,
        column,
        code: code.to_owned(),
    })
}

/// The first [`CopyFailure`] among the causes of `err`.
pub fn find_copy_failure(err: &(dyn std::error::Error + 'static)) -> Option<CopyFailure> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
            return copy_failure(pg);
        }
        cur = e.source();
    }
    None
}

/// `(line, column)` from a COPY error context line such as
/// `COPY t, line 2, column code: "abc"` (the column is absent when the
/// line itself is malformed).
pub fn parse_copy_context(context: &str) -> Option<(usize, Option<String>)> {
    let rest = context
        .lines()
        .find_map(|l| l.trim().strip_prefix("COPY "))?;
    let (_, after) = rest.split_once(", line ")?;
    let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let line = after[..digits].parse().ok()?;
    let column = after[digits..].strip_prefix(", column ").map(|c| {
        c.split_once(": ")
            .map_or(c.trim_end_matches(':'), |(name, _)| name)
            .to_owned()
    });
    Some((line, column))
}

/// The operator error for a value a target column's type refused in a
/// COPY: names the table, the row's key and the column (never the value).
pub fn value_refused(
    what: &str,
    schema: &TableSchema,
    key: &str,
    failure: &CopyFailure,
    fix: &str,
    err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> Error {
    let column = failure.column.as_deref().unwrap_or("?");
    let ty = schema
        .column_index(column)
        .map(|i| schema.columns[i].pg_type.as_str())
        .unwrap_or("?");
    Error::operator(
        format!(
            "{what}: table {}, key {key}, column {column}: the value does not fit the target column's type {ty} (SQLSTATE {})",
            schema.id, failure.code
        ),
        fix,
    )
    .with_source(err)
}

#[cfg(test)]
mod copy_context_tests {
    use super::parse_copy_context;

    #[test]
    fn copy_contexts() {
        for (context, want) in [
            (
                "COPY b, line 2, column code: \"abc\"",
                Some((2, Some("code".to_owned()))),
            ),
            (
                "COPY __ferry_stage_1, line 17, column at: \"x\"",
                Some((17, Some("at".to_owned()))),
            ),
            ("COPY b, line 3: \"1\t2\"", Some((3, None))),
            ("COPY b, line 4, column n", Some((4, Some("n".to_owned())))),
            ("SQL statement \"SELECT 1\"", None),
            ("COPY b, line x", None),
        ] {
            assert_eq!(parse_copy_context(context), want, "{context}");
        }
    }
}
