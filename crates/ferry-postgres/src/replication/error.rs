//! ErrorResponse from the server → `ferry_core::Error`, classified once.

use ferry_core::Error;

/// The fields of an ErrorResponse we keep.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{severity} {code}: {message}")]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

impl ServerError {
    /// Parse the body of an ErrorResponse (or NoticeResponse): fields of
    /// `type byte, C string`, ended by a zero byte. Tolerates truncation.
    pub(crate) fn parse(body: &[u8]) -> ServerError {
        let mut e = ServerError::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let v = String::from_utf8_lossy(&tail[..end]).into_owned();
            match kind {
                b'S' => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'H' => e.hint = Some(v),
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or_default();
        }
        e
    }
}

/// Whether retrying may help: the shared SQLSTATE table
/// ([`ferry_core::sqlstate_class`]), after the special cases below.
fn is_transient(code: &str) -> bool {
    ferry_core::sqlstate_class(code) == ferry_core::ErrorClass::Transient
}

/// `doing`: what we were doing (`connecting`, `START_REPLICATION`, …).
pub(crate) fn classify(err: ServerError, doing: &str, user: &str) -> Error {
    let context = format!("source {doing}: {} (SQLSTATE {})", err.message, err.code);
    match err.code.as_str() {
        "28P01" => Error::operator(
            format!("authentication failed for user {user}"),
            "check the password in source.url",
        ),
        "28000" => Error::operator(
            context,
            format!(
                "allow user {user} to connect for replication in pg_hba.conf (a `host replication` line) and reload"
            ),
        ),
        "42501" => Error::operator(
            context,
            format!(
                "run `ALTER ROLE {user} REPLICATION` (on RDS/Aurora: `GRANT rds_replication TO {user}`)"
            ),
        ),
        "3D000" => Error::operator(context, "check the database name in source.url"),
        "55000" if err.message.contains("wal_level") => Error::operator(
            context,
            "set wal_level=logical on the source and restart it",
        ),
        "53400"
            if err.message.contains("replication slot") || err.message.contains("wal sender") =>
        {
            Error::operator(
                context,
                "raise max_replication_slots / max_wal_senders on the source, or drop unused slots",
            )
        }
        code if is_transient(code) => Error::transient(context).with_source(err),
        _ => Error::operator(context, "see the source server log for details").with_source(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(code: &str, msg: &str) -> ServerError {
        ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: msg.into(),
            hint: None,
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let pw = classify(
            e("28P01", "password authentication failed for user \"bob\""),
            "connecting",
            "bob",
        );
        assert_eq!(
            pw.to_string(),
            "authentication failed for user bob; check the password in source.url"
        );
        let priv_ = classify(
            e(
                "42501",
                "must be superuser or replication role to start walsender",
            ),
            "connecting",
            "bob",
        );
        assert!(!priv_.is_transient());
        assert!(
            priv_.to_string().contains("ALTER ROLE bob REPLICATION"),
            "{priv_}"
        );
        assert!(
            priv_.to_string().contains("GRANT rds_replication TO bob"),
            "{priv_}"
        );
        assert!(classify(e("57P01", "terminating connection"), "streaming", "bob").is_transient());
        assert!(
            classify(
                e("55006", "replication slot \"s\" is active for PID 1"),
                "x",
                "bob"
            )
            .is_transient()
        );
        assert!(
            !classify(
                e("42704", "replication slot \"s\" does not exist"),
                "x",
                "bob"
            )
            .is_transient()
        );
    }
}
