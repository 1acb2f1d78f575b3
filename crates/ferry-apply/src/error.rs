//! Error classification for the target side, in one place.
//!
//! Target errors become [`ferry_core::Error`], classed by SQLSTATE with the
//! shared table ([`ferry_core::sqlstate_class`]): connection loss, server
//! shutdown, serialization failures, deadlocks and too many connections are
//! transient (reconnect, resume from the checkpoint); everything the server
//! rejects for good (privileges, constraint violations, missing tables)
//! needs an operator, with the fix.

use ferry_core::{Error, ErrorClass, TableId, sqlstate_class};
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
