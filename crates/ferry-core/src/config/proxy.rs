//! `[proxy]`: the PostgreSQL-wire proxy the application connects to during
//! the migration (shadow reads, reads on the target, cutover through the
//! proxy). Off unless `listen` is set; PostgreSQL sources only.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::secret::Secret;

/// The proxy's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Where clients connect (e.g. `127.0.0.1:6432`); unset: no proxy.
    pub listen: Option<String>,
    /// The user name clients log in with (SCRAM-SHA-256).
    pub user: String,
    /// The clients' password; unset means no authentication, which only a
    /// loopback address allows. The proxy reaches the databases with the
    /// credentials of `source.url` and `target.url`, never the client's.
    pub password: Option<Secret>,
    /// PEM certificate chain and private key: client TLS when both are set.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// `source` (default: everything to the source, reads mirrored) or
    /// `reads-on-target`.
    pub mode: String,
    /// Share of read-only statements mirrored to the target (0..=1).
    pub sample_rate: f64,
    /// Target sessions running mirrored statements.
    pub mirror_workers: usize,
    /// Mirrored statements waiting at most; more are dropped and counted.
    pub mirror_queue: usize,
    /// `reads-on-target` serves reads from the target only below this lag.
    pub max_read_lag_seconds: f64,
    /// `cutover --via-proxy` waits at most this long for open transactions
    /// to finish before it gives up and releases traffic to the source.
    pub hold_seconds: f64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: None,
            user: "app".into(),
            password: None,
            tls_cert: None,
            tls_key: None,
            mode: "source".into(),
            sample_rate: 0.1,
            mirror_workers: 2,
            mirror_queue: 1000,
            max_read_lag_seconds: 1.0,
            hold_seconds: 10.0,
        }
    }
}

impl ProxyConfig {
    /// Every problem with the settings (nothing when the proxy is off).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(listen) = &self.listen else {
            return problems;
        };
        match listen.parse::<SocketAddr>() {
            Err(_) => problems.push(format!(
                "proxy.listen '{listen}' is not an address such as 127.0.0.1:6432"
            )),
            Ok(addr) if !addr.ip().is_loopback() && self.password.is_none() => problems.push(format!(
                "proxy.listen {addr} is not a loopback address and proxy.password is not set; set it, or listen on 127.0.0.1"
            )),
            Ok(_) => {}
        }
        if !matches!(self.mode.as_str(), "source" | "reads-on-target") {
            problems.push(format!(
                "proxy.mode '{}' is not source or reads-on-target",
                self.mode
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_rate) {
            problems.push(format!(
                "proxy.sample_rate = {} is outside 0..=1",
                self.sample_rate
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push(
                "proxy.tls_cert and proxy.tls_key go together: set both (PEM files) or neither"
                    .into(),
            );
        }
        if self.user.is_empty() {
            problems.push("proxy.user must not be empty".into());
        }
        if self.mirror_workers == 0 || self.mirror_queue == 0 {
            problems.push("proxy.mirror_workers and proxy.mirror_queue must be at least 1".into());
        }
        if self.hold_seconds <= 0.0 || self.max_read_lag_seconds < 0.0 {
            problems.push(
                "proxy.hold_seconds must be positive and proxy.max_read_lag_seconds not negative"
                    .into(),
            );
        }
        problems
    }
}
