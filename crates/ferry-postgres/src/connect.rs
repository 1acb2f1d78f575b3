//! Plain (non-replication) PostgreSQL connections for the source and the target.
//!
//! [`connect`] opens a `tokio_postgres` session to an [`Endpoint`] honouring
//! libpq's `sslmode` with rustls (ring provider):
//!
//! | sslmode | TLS | certificate check |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` | if the server offers it, else plain; a failed handshake falls back to plain | none |
//! | `require` | always | none (like libpq without a root cert) |
//! | `verify-ca` | always | chain to `sslrootcert`, host name not checked |
//! | `verify-full` | always | chain to `sslrootcert` and host name |
//!
//! [`tls_config`] builds the rustls `ClientConfig` for a mode so the
//! replication client uses the same rules. libpq-only URL parameters
//! (`sslmode`, `sslrootcert`, …) are stripped before `tokio_postgres` parses
//! the URL ([`pg_config`]).
//!
//! Every session (this one and the replication client) starts with
//! [`SESSION_OPTIONS`]: the settings that shape the text form of values are
//! pinned, whatever the server, database or role defaults are (an `ALTER
//! DATABASE … SET bytea_output = 'escape'` or `DateStyle = 'SQL, DMY'` on
//! either side changes nothing). Startup options outrank database and role
//! settings in PostgreSQL, so they hold from the first statement.
//!
//! Errors are classified once, here: authentication and missing databases or
//! roles need an operator; refused connections, timeouts and a server that
//! is starting up are transient. URLs only ever appear redacted.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Error;
use ferry_core::config::{Endpoint, SslMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// URL query parameters libpq knows but `tokio_postgres` rejects.
const LIBPQ_ONLY_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcompression",
    "sslsni",
    "requiressl",
    "gssencmode",
];

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Startup `options` of every source and target session: one text form per
/// type for the decoder (pgoutput sends values as text in the walsender's
/// settings) and for the target's input functions (COPY text into staging),
/// so a value leaves the source and enters the target in the same form.
/// `lc_monetary=C` makes `money` text locale-free (the binary load copies
/// the stored integer; C keeps two fraction digits like the common locales).
pub const SESSION_OPTIONS: &str = "-c datestyle=ISO -c timezone=UTC -c intervalstyle=postgres \
     -c extra_float_digits=3 -c bytea_output=hex -c lc_monetary=C";

/// Connect to `endpoint` and spawn the connection task. `side` names the
/// endpoint in messages (`source`, `target`).
pub async fn connect(endpoint: &Endpoint, side: &str) -> Result<Client, Error> {
    let mut config = pg_config(endpoint, side)?;
    if config.get_application_name().is_none() {
        config.application_name("ferry");
    }
    let mode = endpoint.effective_sslmode();
    let root = endpoint.effective_sslrootcert();
    let result = match tls_config(mode, root.as_deref())? {
        None => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            spawn_plain(&config).await
        }
        Some(tls) => {
            config.ssl_mode(match mode {
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
            match spawn_tls(&config, tls).await {
                Err(e) if mode == SslMode::Prefer && is_tls_failure(&e) => {
                    tracing::debug!(side, error = %e, "tls handshake failed; sslmode=prefer falls back to plain");
                    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                    spawn_plain(&config).await
                }
                other => other,
            }
        }
    };
    result.map_err(|e| classify_connect_error(e, endpoint, side, mode))
}

async fn spawn_plain(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

async fn spawn_tls(
    config: &tokio_postgres::Config,
    tls: ClientConfig,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(MakeRustlsConnect::new(tls)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// The `tokio_postgres` configuration of `endpoint` (URL without the
/// libpq-only parameters, a default connect timeout). TLS mode is left for
/// the caller ([`connect`] or the replication client) to set.
pub fn pg_config(endpoint: &Endpoint, side: &str) -> Result<tokio_postgres::Config, Error> {
    let invalid = |why: String| {
        Error::operator(
            format!("{side} URL {} is not valid: {why}", endpoint.url),
            format!("fix {side}.url (postgres://user:password@host:port/database)"),
        )
    };
    let mut url = endpoint.url.parsed().map_err(|e| invalid(e.to_string()))?;
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !LIBPQ_ONLY_PARAMS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
        // Form encoding writes a space as `+` (a literal `+` as `%2B`);
        // tokio_postgres reads `+` literally, so spell spaces `%20`.
        let query = url.query().unwrap_or_default().replace('+', "%20");
        url.set_query(Some(&query));
    }
    let mut config =
        tokio_postgres::Config::from_str(url.as_str()).map_err(|e| invalid(e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    // Ours last: a later `-c` wins over the URL's own `options`.
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{own} {SESSION_OPTIONS}"),
        _ => SESSION_OPTIONS.to_owned(),
    };
    config.options(&options);
    Ok(config)
}

/// The rustls client configuration for `mode` (ring provider), or `None`
/// for `disable`. `verify-ca`/`verify-full` need `root_cert` (a PEM file).
pub fn tls_config(mode: SslMode, root_cert: Option<&Path>) -> Result<Option<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::operator(format!("TLS setup failed: {e}"), "report this as a bug"))?;
    let config = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck { provider }))
            .with_no_client_auth(),
        SslMode::VerifyFull => builder
            .with_root_certificates(load_roots(mode, root_cert)?)
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let roots = Arc::new(load_roots(mode, root_cert)?);
            let inner =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| {
                        Error::operator(
                            format!("sslrootcert holds no usable CA certificate: {e}"),
                            "point sslrootcert at the PEM file of the server's CA",
                        )
                    })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnlyCheck { inner }))
                .with_no_client_auth()
        }
    };
    Ok(Some(config))
}

fn load_roots(mode: SslMode, path: Option<&Path>) -> Result<RootCertStore, Error> {
    let Some(path) = path else {
        return Err(Error::operator(
            format!("sslmode={mode} needs a root certificate"),
            "set sslrootcert to the CA bundle (e.g. the RDS global-bundle.pem)",
        ));
    };
    let unreadable = |why: String| {
        Error::operator(
            format!("cannot read sslrootcert {}: {why}", path.display()),
            "point sslrootcert at a readable PEM file with the CA certificate(s)",
        )
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut reader = std::io::BufReader::new(file);
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(unreadable("no PEM certificate found".into()));
    }
    Ok(roots)
}

/// `require`/`prefer`: encrypt, but accept any certificate (libpq's
/// behaviour without a root certificate). Handshake signatures are still
/// verified so the session key belongs to the presented certificate.
#[derive(Debug)]
struct NoCertificateCheck {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root certificate; the host name
/// is not compared (libpq semantics).
#[derive(Debug)]
struct ChainOnlyCheck {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether the cause chain of `err` holds a TLS (rustls) failure.
fn is_tls_failure(err: &tokio_postgres::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// `err` and its causes, joined (tokio-postgres keeps details in causes).
fn error_chain_text(err: &tokio_postgres::Error) -> String {
    let mut text = err.to_string();
    let mut cur = std::error::Error::source(err);
    while let Some(e) = cur {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cur = e.source();
    }
    text
}

/// Whether the cause chain of `err` holds an I/O error (refused, reset, timeout).
fn is_io_failure(err: &tokio_postgres::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<std::io::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Classify a failed connection attempt (see the module doc).
fn classify_connect_error(
    err: tokio_postgres::Error,
    endpoint: &Endpoint,
    side: &str,
    mode: SslMode,
) -> Error {
    let url = &endpoint.url;
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        let context = format!(
            "cannot connect to {side} {url}: {} (SQLSTATE {code})",
            db.message()
        );
        let fix = match code {
            "28P01" | "28000" => format!(
                "check the user and password in {side}.url and that pg_hba.conf allows this user from this host"
            ),
            "3D000" => format!("create the database or fix its name in {side}.url"),
            "42501" => format!("grant the user in {side}.url the LOGIN/CONNECT privilege"),
            _ if ferry_core::sqlstate_class(code) == ferry_core::ErrorClass::Transient => {
                return Error::transient(context).with_source(err);
            }
            _ => format!("check {side}.url and the server log"),
        };
        return Error::operator(context, fix).with_source(err);
    }
    if is_tls_failure(&err) {
        let fix = if mode.verifies_certificate() {
            format!(
                "check that {side}.sslrootcert holds the CA that signed the server certificate{}",
                if mode == SslMode::VerifyFull {
                    " and that the URL host matches the certificate"
                } else {
                    ""
                }
            )
        } else {
            format!("check the server's TLS setup or set {side}.sslmode")
        };
        return Error::operator(
            format!("TLS handshake with {side} {url} failed (sslmode={mode}): {err}"),
            fix,
        )
        .with_source(err);
    }
    let text = error_chain_text(&err);
    if text.contains("server does not support TLS") {
        return Error::operator(
            format!("{side} {url} does not offer TLS but sslmode={mode}"),
            format!("enable ssl on the server or set {side}.sslmode = \"prefer\""),
        )
        .with_source(err);
    }
    if is_io_failure(&err) || text.contains("timeout") || text.contains("closed") {
        return Error::transient(format!("cannot reach {side} {url}: {text}")).with_source(err);
    }
    Error::operator(
        format!("cannot connect to {side} {url}: {text}"),
        format!("check {side}.url"),
    )
    .with_source(err)
}

/// `server_version_num` of the connected server (e.g. 150004).
pub async fn server_version_num(client: &Client) -> Result<u32, Error> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(|e| query_error("reading server_version_num", e))?;
    let v: i32 = row.get(0);
    u32::try_from(v).map_err(|_| {
        Error::operator(
            format!("server reports server_version_num {v}"),
            "connect to a PostgreSQL server",
        )
    })
}

/// Map an error of a catalog or control query: lost connections are
/// transient, everything else (permissions, missing objects) needs an operator.
pub fn query_error(what: &str, err: tokio_postgres::Error) -> Error {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        let context = format!("{what}: {} ({code})", db.message());
        if ferry_core::sqlstate_class(code) == ferry_core::ErrorClass::Transient {
            return Error::transient(context).with_source(err);
        }
        let fix = match code {
            "42501" => "grant the missing privilege to the connecting user".to_owned(),
            _ => db
                .hint()
                .map_or_else(|| "see the server log".to_owned(), str::to_owned),
        };
        return Error::operator(context, fix).with_source(err);
    }
    Error::transient(format!("{what}: {err}")).with_source(err)
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
    fn libpq_params_are_stripped() {
        let ep = endpoint(
            "postgres://u:pw@127.0.0.1:5433/app?sslmode=verify-full&sslrootcert=/x.pem&application_name=t",
        );
        let c = pg_config(&ep, "source").unwrap();
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_application_name(), Some("t"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert_eq!(c.get_options(), Some(SESSION_OPTIONS));
    }

    #[test]
    fn text_formats_are_pinned_after_the_urls_own_options() {
        let ep = endpoint("postgres://u@h/db?options=-c%20bytea_output%3Descape");
        let c = pg_config(&ep, "target").unwrap();
        let opts = c.get_options().unwrap();
        assert!(
            opts.starts_with("-c bytea_output=escape -c datestyle"),
            "{opts}"
        );
        assert!(opts.ends_with(SESSION_OPTIONS), "{opts}");
        for pinned in [
            "datestyle=ISO",
            "timezone=UTC",
            "intervalstyle=postgres",
            "extra_float_digits=3",
            "bytea_output=hex",
            "lc_monetary=C",
        ] {
            assert!(SESSION_OPTIONS.contains(pinned), "{pinned}");
        }
    }

    #[test]
    fn invalid_urls_are_redacted() {
        let ep = endpoint("postgres://u:secret-pw@127.0.0.1:5433/app?bogus_option=1");
        let err = pg_config(&ep, "source").unwrap_err().to_string();
        assert!(!err.contains("secret-pw"), "{err}");
        assert!(err.contains("u:****@"), "{err}");
    }

    #[test]
    fn tls_modes() {
        assert!(tls_config(SslMode::Disable, None).unwrap().is_none());
        assert!(tls_config(SslMode::Require, None).unwrap().is_some());
        assert!(tls_config(SslMode::Prefer, None).unwrap().is_some());
        let err = tls_config(SslMode::VerifyFull, None).unwrap_err();
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        let err = tls_config(SslMode::VerifyCa, Some(Path::new("/nonexistent.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.pem"), "{err}");
    }
}
