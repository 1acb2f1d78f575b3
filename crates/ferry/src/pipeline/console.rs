//! Starting the psql admin console (`ferry-console`) beside the control API.
//!
//! `console.listen` unset means the default loopback address, and a port
//! already taken there only turns the console off with a warning (several
//! `ferry run`s on one host must not stop each other); an address the
//! operator chose that cannot be bound stops the run, as does a
//! non-loopback address without credentials. Credentials: `console.user`
//! with `console.password`, else `control.token`.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, bail};
use ferry_console::{Auth, Backend, Tls};
use ferry_core::config::Config;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// Bind and spawn the console into `set`; nothing when it is off.
pub async fn start<B: Backend>(
    config: &Config,
    backend: Arc<B>,
    ready: impl Future<Output = bool> + Send + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
    set: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let Some((listen, chosen)) = config.console.address() else {
        info!("console off (console.listen = off)");
        return Ok(());
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) if !chosen => {
            warn!(address = listen, error = %e, "console not started: its default address is taken; set console.listen to a free address");
            return Ok(());
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "binding the console to {listen}; set console.listen to a free address (or off)"
                )
            });
        }
    };
    let addr = listener.local_addr()?;
    let auth = auth(config);
    if let Err(e) = ferry_console::check_exposure(addr, &auth) {
        bail!(e);
    }
    let tls = tls(config)?;
    info!(address = %addr, authenticated = !matches!(auth, Auth::Open), tls = tls.is_some(), "console listening (psql -h {} -p {})", addr.ip(), addr.port());
    set.spawn(async move {
        // Serves once the whole state schema exists (`false`: it could not
        // be created; the run stops with that error).
        if !ready.await {
            return;
        }
        if let Err(e) = ferry_console::serve(listener, backend, auth, tls, stop).await {
            warn!(error = %e, "console stopped");
        }
    });
    Ok(())
}

fn auth(config: &Config) -> Auth {
    let password = config
        .console
        .password
        .as_ref()
        .or(config.control.token.as_ref());
    match password {
        Some(p) => Auth::Password {
            user: config.console.user.clone(),
            password: p.expose().to_owned(),
        },
        None => Auth::Open,
    }
}

fn tls(config: &Config) -> anyhow::Result<Option<Tls>> {
    let (Some(cert), Some(key)) = (&config.console.tls_cert, &config.console.tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).with_context(|| format!("reading console.{what} {}", p.display()))
    };
    Ok(Some(Tls {
        cert_pem: read(cert, "tls_cert")?,
        key_pem: read(key, "tls_key")?,
    }))
}
