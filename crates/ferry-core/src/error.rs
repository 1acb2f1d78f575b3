//! The error type shared across ferry crates, classified by consequence.
//!
//! Every failure falls in one of two classes, decided where it is raised:
//!
//! - [`ErrorClass::Transient`]: a connection dropped, a server restarted, a
//!   timeout. The pipeline reconnects with backoff and resumes from the
//!   checkpoint in the target.
//! - [`ErrorClass::Operator`]: nothing will improve by retrying (WAL or binlog
//!   purged past our position, slot gone, server misconfigured, incompatible
//!   schema, bad config). ferry stops and the message says what to do.
//!
//! Messages carry context (table, key, LSN, binlog file:pos) and the fix,
//! never row values or credentials. Causes are kept as `source`.

use std::fmt;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Retry with backoff, resuming from the durable checkpoint.
    Transient,
    /// Stop; an operator must act (the message says how).
    Operator,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Operator => "needs operator",
        })
    }
}

/// The class of a PostgreSQL error by its SQLSTATE: the one table every
/// ferry component (source reader, replication client, applier, the
/// binary's own queries) decides by.
///
/// Transient (reconnect with backoff, resume from the checkpoint):
/// class `08` connection exceptions; `40001` serialization failure, `40P01`
/// deadlock; `57P01` admin shutdown, `57P02` crash shutdown, `57P03` cannot
/// connect now (starting up, recovery); `57014` query canceled; `55P03` lock
/// not available; `55006` object in use (a replication slot still held by a
/// previous connection); `53000`/`53100`/`53200`/`53300` insufficient
/// resources (disk full, out of memory, too many connections).
/// Everything else — privileges, missing objects, constraint violations,
/// `53400` configuration limits, bad data — needs an operator.
pub fn sqlstate_class(code: &str) -> ErrorClass {
    const TRANSIENT: [&str; 12] = [
        "40001", "40P01", "57P01", "57P02", "57P03", "57014", "55P03", "55006", "53000", "53100",
        "53200", "53300",
    ];
    if code.starts_with("08") || TRANSIENT.contains(&code) {
        ErrorClass::Transient
    } else {
        ErrorClass::Operator
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A classified error with context and, where known, the fix.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    class: ErrorClass,
    context: String,
    fix: Option<String>,
    #[source]
    source: Option<BoxError>,
}

/// `Result` with the shared [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure worth retrying (connection loss, server restart).
    pub fn transient(context: impl Into<String>) -> Self {
        Error {
            class: ErrorClass::Transient,
            context: context.into(),
            fix: None,
            source: None,
        }
    }

    /// A failure that needs an operator; `fix` says what to do.
    pub fn operator(context: impl Into<String>, fix: impl Into<String>) -> Self {
        Error {
            class: ErrorClass::Operator,
            context: context.into(),
            fix: Some(fix.into()),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Replace or add the suggested fix.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// Prefix the context with where it happened (e.g. the table).
    pub fn context(mut self, outer: impl fmt::Display) -> Self {
        self.context = format!("{outer}: {}", self.context);
        self
    }

    pub fn class(&self) -> ErrorClass {
        self.class
    }

    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// The suggested fix, if any.
    pub fn fix(&self) -> Option<&str> {
        self.fix.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(fix) = &self.fix {
            write!(f, "; {fix}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_context_and_fix() {
        let e = Error::operator(
            "source wal_level is 'replica'",
            "set wal_level=logical and restart",
        );
        assert_eq!(
            e.to_string(),
            "source wal_level is 'replica'; set wal_level=logical and restart"
        );
        assert_eq!(e.class(), ErrorClass::Operator);
        assert!(!e.is_transient());
    }

    #[test]
    fn sqlstates_are_classified_by_consequence() {
        use ErrorClass::{Operator as O, Transient as T};
        let cases = [
            (
                "57P01",
                T,
                "admin shutdown (pg_terminate_backend, fast shutdown)",
            ),
            ("57P02", T, "crash shutdown"),
            ("57P03", T, "cannot connect now (starting up)"),
            ("40001", T, "serialization failure"),
            ("40P01", T, "deadlock"),
            ("08006", T, "connection failure"),
            ("08001", T, "unable to connect"),
            ("08P01", T, "protocol violation"),
            ("53300", T, "too many connections"),
            ("53100", T, "disk full"),
            ("55006", T, "slot active for another pid"),
            ("55P03", T, "lock not available"),
            ("57014", T, "query canceled"),
            ("53400", O, "configuration limit exceeded"),
            ("42501", O, "insufficient privilege"),
            ("42P01", O, "undefined table"),
            ("23505", O, "unique violation"),
            ("22P02", O, "invalid text representation"),
            ("28P01", O, "bad password"),
            ("3D000", O, "no such database"),
            ("XX000", O, "internal error"),
        ];
        for (code, class, what) in cases {
            assert_eq!(sqlstate_class(code), class, "{code} {what}");
        }
    }

    #[test]
    fn source_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = Error::transient("reading from source").with_source(io);
        assert!(e.is_transient());
        let src = std::error::Error::source(&e).expect("source kept");
        assert_eq!(src.to_string(), "reset");
    }
}
