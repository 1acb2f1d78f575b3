//! ferry-console: the PostgreSQL-wire admin console of a running `ferry run`.
//!
//! Any `psql` (or PostgreSQL driver) connects to `console.listen` and types
//! console commands ([`command`]): `SHOW STATUS`, `SHOW LAG`, `SHOW TABLES`,
//! `SHOW LAG HISTORY`, `SHOW VALIDATION`, `VALIDATE [table] [REPAIR]`,
//! `PAUSE`, `RESUME`, `CUTOVER [DRY RUN] [FENCE] [MAX LAG '5s']`, and for
//! the proxy `SHOW SHADOW` and `PROXY MODE source|reads-on-target`. Answers
//! are ordinary result sets ([`result`]) built from the same status model as the HTTP control API, so the two never disagree; errors
//! are PostgreSQL errors with a SQLSTATE and a hint. Both the simple query
//! protocol (`psql`) and the extended one (drivers) are served
//! ([`server`], on the `pgwire` crate).
//!
//! The pipeline provides a [`Backend`]; [`serve`] accepts connections until
//! its stop future resolves, then waits for commands in flight (a cutover's
//! answer must reach the operator although the pipeline stops right after)
//! and closes the rest.
//!
//! Authentication ([`Auth`]): SCRAM-SHA-256 with `console.user` and a
//! password (`console.password`, else the control token), or none on a
//! loopback address without credentials. [`check_exposure`] refuses, at
//! startup, a non-loopback address without credentials. TLS when a
//! certificate and key are configured (SCRAM then offers channel binding).
//!
//! Later this crate also holds the shadow-read proxy (DESIGN §9).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use ferry_monitor::history::LagSample;
use ferry_monitor::{CutoverRecord, Status};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info};

mod cell;
pub mod command;
pub mod result;
pub mod server;

pub use cell::Cell;
pub use command::{Command, CutoverCommand, ValidateCommand};
pub use server::{Answer, ConsoleError, execute};

/// A boxed future, so [`Backend`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the running pipeline exposes to the console.
pub trait Backend: Send + Sync + 'static {
    fn status(&self) -> Status;
    /// Lag samples at or after `since`, oldest first.
    fn lag_history(&self, since: SystemTime) -> BoxFuture<'_, Result<Vec<LagSample>, String>>;
    /// Run (or dry-run) the cutover; `Err` says why it was refused or failed.
    fn cutover(&self, c: CutoverCommand) -> BoxFuture<'_, Result<CutoverRecord, String>>;
    fn pause(&self);
    fn resume(&self);
    /// Start a validation in the background; `Err` says why not.
    fn validate(&self, v: ValidateCommand) -> BoxFuture<'_, Result<ValidateStarted, String>>;
    /// Change the proxy's mode, recorded as changed by `by`.
    fn proxy_mode(
        &self,
        _mode: String,
        _by: String,
    ) -> BoxFuture<'_, Result<ferry_monitor::proxy::ModeChange, String>> {
        Box::pin(async { Err("no proxy runs here: set [proxy] listen".into()) })
    }
}

/// A validation the pipeline accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidateStarted {
    pub started: bool,
    /// The tables asked for (empty: every carried table).
    pub tables: Vec<String>,
    pub repair: bool,
}

/// How clients authenticate.
#[derive(Clone)]
pub enum Auth {
    /// No authentication: only allowed on a loopback address.
    Open,
    /// SCRAM-SHA-256 as `user` with `password`.
    Password { user: String, password: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Open => f.write_str("Auth::Open"),
            Auth::Password { user, .. } => f
                .debug_struct("Auth::Password")
                .field("user", user)
                .field("password", &"[redacted]")
                .finish(),
        }
    }
}

/// TLS material: PEM certificate chain and private key.
#[derive(Clone)]
pub struct Tls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

/// Refuse an address reachable from other hosts without credentials.
pub fn check_exposure(addr: SocketAddr, auth: &Auth) -> Result<(), String> {
    if matches!(auth, Auth::Open) && !addr.ip().is_loopback() {
        return Err(format!(
            "console.listen = {addr} is not a loopback address and no credentials are set: anyone who reaches it could cut over; set console.password (or control.token), or listen on 127.0.0.1"
        ));
    }
    Ok(())
}

/// SCRAM iterations, as PostgreSQL's default.
const SCRAM_ITERATIONS: usize = 4096;

/// The one console login.
struct Login {
    user: String,
    salt: Vec<u8>,
    salted_password: Vec<u8>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl AuthSource for Login {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() != Some(self.user.as_str()) {
            return Err(PgWireError::InvalidPassword(
                login.user().unwrap_or_default().to_owned(),
            ));
        }
        Ok(Password::new(
            Some(self.salt.clone()),
            self.salted_password.clone(),
        ))
    }
}

fn random_salt() -> io::Result<Vec<u8>> {
    use ring::rand::SecureRandom;
    let mut salt = vec![0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| io::Error::other("no system randomness for the SCRAM salt"))?;
    Ok(salt)
}

fn startup(auth: &Auth, tls: Option<&Tls>) -> io::Result<server::Startup> {
    match auth {
        Auth::Open => Ok(server::Startup::Open(server::Open)),
        Auth::Password { user, password } => {
            let salt = random_salt()?;
            let salted_password = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
            let mut scram = ScramAuth::new(Arc::new(Login {
                user: user.clone(),
                salt,
                salted_password,
            }));
            scram.set_iterations(SCRAM_ITERATIONS);
            if let Some(tls) = tls {
                scram
                    .configure_certificate(&tls.cert_pem)
                    .map_err(|e| io::Error::other(format!("console TLS certificate: {e}")))?;
            }
            let handler =
                SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default()))
                    .with_scram(scram);
            Ok(server::Startup::Scram(handler))
        }
    }
}

fn tls_acceptor(tls: &Tls) -> io::Result<tokio_rustls::TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut tls.cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::other(format!("console TLS certificate: {e}")))?;
    let key = rustls_pemfile::private_key(&mut tls.key_pem.as_slice())
        .map_err(|e| io::Error::other(format!("console TLS key: {e}")))?
        .ok_or_else(|| io::Error::other("console TLS key: no private key in the PEM file"))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::other(format!("console TLS: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serve the console on `listener` until `stop` resolves.
pub async fn serve<B: Backend + ?Sized>(
    listener: TcpListener,
    backend: Arc<B>,
    auth: Auth,
    tls: Option<Tls>,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    check_exposure(listener.local_addr()?, &auth).map_err(io::Error::other)?;
    let acceptor = tls.as_ref().map(tls_acceptor).transpose()?;
    let console = Arc::new(server::Console::new(backend));
    let busy = console.busy.clone();
    let handlers = Arc::new(server::Handlers {
        console,
        startup: Arc::new(startup(&auth, tls.as_ref())?),
    });
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "console accept failed");
                        continue;
                    }
                };
                debug!(%peer, "console connection");
                let (h, a) = (handlers.clone(), acceptor.clone());
                connections.spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, a, h).await {
                        debug!(%peer, error = %e, "console connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Let commands in flight answer (a cutover drains), then close.
    let deadline = Instant::now() + server::SHUTDOWN_WAIT;
    while busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    connections.shutdown().await;
    info!("console stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_without_credentials_is_refused() {
        let open = Auth::Open;
        let pw = Auth::Password {
            user: "ferry".into(),
            password: "s3cret".into(),
        };
        let lo: SocketAddr = "127.0.0.1:7434".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7434".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7434".parse().unwrap();
        assert!(check_exposure(lo, &open).is_ok());
        assert!(check_exposure(lo6, &open).is_ok());
        assert!(check_exposure(any, &pw).is_ok());
        let e = check_exposure(any, &open).unwrap_err();
        assert!(
            e.contains("console.password") && e.contains("0.0.0.0:7434"),
            "{e}"
        );
    }

    #[test]
    fn the_password_never_shows_in_debug() {
        let pw = Auth::Password {
            user: "ferry".into(),
            password: "s3cret".into(),
        };
        let shown = format!("{pw:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("ferry"),
            "{shown}"
        );
    }
}
