//! Redacting wrappers for credentials.
//!
//! [`Secret`] never shows its content through `Debug` or `Display`;
//! [`RedactedUrl`] is a connection URL whose password is kept as a `Secret`
//! and printed as `****` everywhere (logs, errors, status, metrics). Code that
//! needs the real string calls [`Secret::expose`] or [`RedactedUrl::expose`]
//! at the one place it connects.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A credential: prints as `****`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The real value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A connection URL with its password redacted on display.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl {
    raw: Secret,
    shown: String,
}

impl RedactedUrl {
    pub fn new(raw: &str) -> Self {
        RedactedUrl {
            raw: Secret::new(raw),
            shown: redact_url(raw),
        }
    }

    /// The URL including its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        self.raw.expose()
    }

    /// The URL scheme, lowercased (`postgres`, `mysql`, `sqlite`).
    pub fn scheme(&self) -> String {
        self.raw
            .expose()
            .split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// Parsed form (for host, port, user, database, query parameters).
    pub fn parsed(&self) -> Result<url::Url, url::ParseError> {
        url::Url::parse(self.raw.expose())
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedactedUrl({:?})", self.shown)
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl<'de> Deserialize<'de> for RedactedUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| RedactedUrl::new(&s))
    }
}

/// Replace the password of `scheme://user:password@host…` and of
/// `password=` / `pass=` query parameters with `****`, without parsing
/// (so even a malformed URL is redacted).
pub fn redact_url(raw: &str) -> String {
    let mut out = raw.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let rest = &out[auth_start..];
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out.replace_range(auth_start + colon + 1..auth_start + at, "****");
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass") =>
                {
                    format!("{k}=****")
                }
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let u = RedactedUrl::new("postgres://alice:s3cr%40t@db.example:5432/app?sslmode=require");
        for shown in [u.to_string(), format!("{u:?}")] {
            assert!(!shown.contains("s3cr"), "{shown}");
            assert!(shown.contains("alice:****@db.example:5432/app"), "{shown}");
        }
        assert_eq!(
            u.expose(),
            "postgres://alice:s3cr%40t@db.example:5432/app?sslmode=require"
        );
        assert_eq!(u.scheme(), "postgres");
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "**** Secret(****)");
    }

    #[test]
    fn odd_urls_are_redacted_too() {
        assert_eq!(
            redact_url("mysql://root:p@ss@h/db"),
            "mysql://root:****@h/db"
        );
        assert_eq!(
            redact_url("postgres://h/db?user=a&password=x"),
            "postgres://h/db?user=a&password=****"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
        assert_eq!(redact_url("not a url:secret"), "not a url:secret");
    }
}
