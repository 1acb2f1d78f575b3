//! Opening a MySQL / MariaDB connection from a ferry [`Endpoint`].
//!
//! URLs are `mysql://user:pass@host:port/db` or `mariadb://…` (same thing).
//! The database part is optional: without it ferry considers every
//! non-system database. Query parameters other than `sslmode` and
//! `sslrootcert` are ignored (the driver would reject ferry's own ones).
//!
//! TLS (rustls with ring; the webpki roots are built in):
//!
//! | sslmode      | behaviour |
//! |--------------|-----------|
//! | `disable`    | plaintext |
//! | `prefer`     | plaintext: the driver cannot fall back from TLS, so ferry does not try; use `require` |
//! | `require`    | TLS, certificate not verified |
//! | `verify-ca`  | TLS, chain verified against `sslrootcert` (else the webpki roots), host name not checked |
//! | `verify-full`| TLS, chain and host name verified |
//!
//! Errors: authentication and unknown-database failures need an operator
//! (the message carries the fix); refused, reset or timed-out connections
//! are transient. The URL is only ever printed through `RedactedUrl`'s
//! `Display`.

use std::fmt;
use std::io::ErrorKind;

use ferry_core::Error;
use ferry_core::config::{Endpoint, SslMode};
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};

/// Which server family we are talking to; they differ in binlog events,
/// privilege names and variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MySql,
    MariaDb,
}

impl Flavor {
    /// From `SELECT VERSION()` and `@@version_comment`.
    pub fn detect(version: &str, version_comment: &str) -> Flavor {
        let maria = |s: &str| s.to_ascii_lowercase().contains("mariadb");
        if maria(version) || maria(version_comment) {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::MySql => "mysql",
            Flavor::MariaDb => "mariadb",
        })
    }
}

fn parsed(endpoint: &Endpoint) -> Result<url::Url, Error> {
    endpoint.url.parsed().map_err(|e| {
        Error::operator(
            format!("source URL {} is not a valid URL ({e})", endpoint.url),
            "write it as mysql://user:password@host:3306/database",
        )
    })
}

/// The database named in the URL path, if any (percent-decoded).
pub fn url_database(endpoint: &Endpoint) -> Result<Option<String>, Error> {
    let url = parsed(endpoint)?;
    let db = percent_decode(url.path().trim_start_matches('/'));
    Ok(if db.is_empty() { None } else { Some(db) })
}

/// Driver options for `endpoint` (host, port, user, password, database, TLS).
pub fn opts(endpoint: &Endpoint) -> Result<Opts, Error> {
    let url = parsed(endpoint)?;
    let host = url.host_str().unwrap_or("localhost");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let user = percent_decode(url.username());
    let builder = OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(url.port().unwrap_or(3306))
        .user((!user.is_empty()).then_some(user))
        .pass(url.password().map(percent_decode))
        .db_name(url_database(endpoint)?)
        .prefer_socket(false)
        .ssl_opts(ssl_opts(endpoint));
    Ok(builder.into())
}

fn ssl_opts(endpoint: &Endpoint) -> Option<SslOpts> {
    let roots = || {
        endpoint
            .effective_sslrootcert()
            .map(|p| vec![p.into()])
            .unwrap_or_default()
    };
    match endpoint.effective_sslmode() {
        SslMode::Disable | SslMode::Prefer => None,
        SslMode::Require => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        SslMode::VerifyCa => Some(
            SslOpts::default()
                .with_root_certs(roots())
                .with_danger_skip_domain_validation(true),
        ),
        SslMode::VerifyFull => Some(SslOpts::default().with_root_certs(roots())),
    }
}

/// Opens one connection. Errors are classified (see the module note).
pub async fn connect(endpoint: &Endpoint) -> Result<Conn, Error> {
    let opts = opts(endpoint)?;
    let conn = Conn::new(opts)
        .await
        .map_err(|e| connect_error(endpoint, e))?;
    tracing::debug!(url = %endpoint.url, "connected to mysql source");
    Ok(conn)
}

/// Classifies a failure to connect to `endpoint`.
pub fn connect_error(endpoint: &Endpoint, err: mysql_async::Error) -> Error {
    let url = &endpoint.url;
    match &err {
        mysql_async::Error::Server(s) => match s.code {
            // ER_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR
            1045 | 1044 | 1698 => Error::operator(
                format!("cannot log in to source {url}: access denied (server error {})", s.code),
                "check the user and password in source.url and that the user may connect from this host \
                 (CREATE USER 'ferry'@'%' IDENTIFIED BY '…')",
            ),
            // ER_BAD_DB_ERROR
            1049 => Error::operator(
                format!("source {url}: the database does not exist"),
                "fix the database name in source.url (SHOW DATABASES lists them)",
            ),
            // ER_CON_COUNT_ERROR, ER_SERVER_SHUTDOWN
            1040 | 1053 => Error::transient(format!(
                "source {url} refused the connection (server error {})",
                s.code
            )),
            _ => Error::operator(
                format!("source {url} rejected the connection (server error {})", s.code),
                "see the server message; fix the source settings or the URL",
            ),
        },
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => match io.kind() {
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::TimedOut
            | ErrorKind::UnexpectedEof
            | ErrorKind::BrokenPipe => {
                Error::transient(format!("cannot connect to source {url}: {}", io.kind()))
            }
            // rustls reports a certificate it does not accept (unknown
            // issuer, wrong name, expired) as invalid data: retrying
            // cannot help.
            ErrorKind::InvalidData if ssl_opts(endpoint).is_some() => Error::operator(
                format!("TLS handshake with source {url} failed: {io}"),
                "check source.sslmode and source.sslrootcert (verify-full also checks the host name); \
                 sslmode=require skips verification",
            ),
            _ => Error::transient(format!("cannot connect to source {url}: {io}")),
        },
        mysql_async::Error::Io(mysql_async::IoError::Tls(tls)) => Error::operator(
            format!("TLS handshake with source {url} failed: {tls}"),
            "check source.sslmode and source.sslrootcert (verify-full also checks the host name); \
             sslmode=require skips verification",
        ),
        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) => {
            Error::transient(format!("source {url} closed the connection"))
        }
        _ => Error::operator(
            format!("cannot connect to source {url}"),
            "check source.url and that the server is a MySQL or MariaDB server",
        ),
    }
    .with_source(err)
}

/// Decodes `%XX` escapes (user names, passwords, database names in URLs).
/// Invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::RedactedUrl;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint {
            url: RedactedUrl::new(url),
            sslmode: None,
            sslrootcert: None,
        }
    }

    #[test]
    fn flavor_from_version_strings() {
        assert_eq!(
            Flavor::detect("10.11.19-MariaDB-0+deb12u1", "Debian 12"),
            Flavor::MariaDb
        );
        assert_eq!(
            Flavor::detect("5.5.5-10.6.14", "MariaDB Server"),
            Flavor::MariaDb
        );
        assert_eq!(
            Flavor::detect("8.0.36", "MySQL Community Server - GPL"),
            Flavor::MySql
        );
        assert_eq!(
            Flavor::detect("8.0.mysql_aurora.3.05.2", "Source distribution"),
            Flavor::MySql
        );
    }

    #[test]
    fn url_parts_are_decoded() {
        let e = endpoint("mariadb://fe%40rry:p%2Fw@db.example:3307/my%20db?sslmode=require");
        let o = opts(&e).expect("valid url");
        assert_eq!(o.user(), Some("fe@rry"));
        assert_eq!(o.pass(), Some("p/w"));
        assert_eq!(o.db_name(), Some("my db"));
        assert_eq!(o.tcp_port(), 3307);
        assert_eq!(o.ip_or_hostname(), "db.example");
        let ssl = o.ssl_opts().expect("require enables TLS");
        assert!(ssl.accept_invalid_certs());
        assert_eq!(url_database(&endpoint("mysql://u@h/")).unwrap(), None);
    }

    #[test]
    fn sslmodes_map_to_driver_options() {
        assert!(
            opts(&endpoint("mysql://u@h/d"))
                .unwrap()
                .ssl_opts()
                .is_none()
        );
        let full = opts(&endpoint(
            "mysql://u@h/d?sslmode=verify-full&sslrootcert=/ca.pem",
        ))
        .unwrap();
        let ssl = full.ssl_opts().expect("tls");
        assert!(!ssl.accept_invalid_certs() && !ssl.skip_domain_validation());
        assert_eq!(ssl.root_certs().len(), 1);
        let ca = opts(&endpoint("mysql://u@h/d?sslmode=verify-ca")).unwrap();
        let ssl = ca.ssl_opts().expect("tls");
        assert!(!ssl.accept_invalid_certs() && ssl.skip_domain_validation());
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn refused_is_transient_and_redacted() {
        let e = endpoint("mysql://u:hunter2@127.0.0.1:1/d");
        let io = std::io::Error::new(ErrorKind::ConnectionRefused, "refused");
        let err = connect_error(&e, mysql_async::Error::Io(mysql_async::IoError::Io(io)));
        assert!(err.is_transient());
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
