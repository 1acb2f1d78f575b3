//! The client side of a connection's start: SSL negotiation, cancel
//! requests, the startup packet and SCRAM-SHA-256 authentication
//! ([startup flow]). The proxy answers authentication itself; only then
//! does it open a backend session (in [`crate::session`]).
//!
//! Over TLS the SASL offer is `SCRAM-SHA-256-PLUS` (channel binding to the
//! proxy's certificate, [`scram::Offer`]) and `SCRAM-SHA-256`; over plain
//! TCP `SCRAM-SHA-256` alone.
//!
//! A wrong user or password gets PostgreSQL's own answer (`28P01`
//! "password authentication failed for user …") after the whole exchange,
//! so user names cannot be probed. A client that breaks the channel
//! binding rules gets PostgreSQL's answer to that (`08P01`, "SCRAM channel
//! binding …"); both count as failed logins.
//!
//! [startup flow]: https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::Stream;
use crate::frame::{self, Frame, Startup};
use crate::scram::{self, Exchange};
use crate::{Proxy, backend};

/// What a connection turned out to be.
pub(crate) enum Opened {
    /// An authenticated client with its startup parameters.
    Client {
        stream: Stream,
        params: Vec<(String, String)>,
        /// Bytes the client sent after its last authentication message.
        rest: BytesMut,
    },
    /// A cancel request (handled) or a client that gave up.
    Done,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("client protocol: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("client authentication failed: {0}")]
    Auth(String),
}

pub(crate) fn tls_acceptor(cert: &[u8], key: &[u8]) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut &cert[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| std::io::Error::other(format!("proxy TLS certificate: {e}")))?;
    let key = rustls_pemfile::private_key(&mut &key[..])
        .map_err(|e| std::io::Error::other(format!("proxy TLS key: {e}")))?
        .ok_or_else(|| std::io::Error::other("proxy TLS key: no private key in the PEM file"))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| std::io::Error::other(format!("proxy TLS: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn read_startup(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Option<Startup>, HandshakeError> {
    loop {
        if let Some(s) = frame::split_startup(buf)? {
            return Ok(Some(s));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn read_frame(stream: &mut Stream, buf: &mut BytesMut) -> Result<Frame, HandshakeError> {
    loop {
        if let Some(f) = frame::split(buf)? {
            return Ok(f);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Auth(
                "the client closed the connection".into(),
            ));
        }
    }
}

fn auth_request(code: i32, data: &[u8]) -> Frame {
    let mut body = BytesMut::with_capacity(data.len() + 4);
    body.put_i32(code);
    body.put_slice(data);
    Frame::new(b'R', &body)
}

/// Negotiate TLS, read the startup packet and authenticate.
pub(crate) async fn open(proxy: &Proxy, tcp: TcpStream) -> Result<Opened, HandshakeError> {
    let mut stream: Stream = Box::new(tcp);
    let mut buf = BytesMut::with_capacity(1024);
    let mut tls_done = false;
    let params = loop {
        let Some(startup) = read_startup(&mut stream, &mut buf).await? else {
            return Ok(Opened::Done);
        };
        match startup {
            Startup::Ssl if !tls_done => match &proxy.tls {
                Some(acceptor) if buf.is_empty() => {
                    stream.write_all(b"S").await?;
                    let tls = acceptor.accept(stream).await?;
                    stream = Box::new(tls);
                    tls_done = true;
                }
                _ => stream.write_all(b"N").await?,
            },
            Startup::GssEnc => stream.write_all(b"N").await?,
            Startup::Cancel { pid, key } => {
                cancel(proxy, pid, &key).await;
                return Ok(Opened::Done);
            }
            Startup::Params(p) => break p,
            Startup::Ssl | Startup::Unsupported(_) => {
                let e = frame::error_response(
                    "FATAL",
                    "0A000",
                    "unsupported frontend protocol: ferry's proxy speaks protocol 3.0",
                );
                stream.write_all(&e.raw).await?;
                return Ok(Opened::Done);
            }
        }
    };
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if let Some((expected, verifier)) = &proxy.verifier {
        let offer = match &proxy.settings.tls {
            Some((cert, _)) if tls_done => tls_offer(cert),
            _ => scram::Offer::plain(),
        };
        let login = scram_login(&mut stream, &mut buf, verifier, &offer).await?;
        let refusal = match login {
            Ok(()) if &user == expected => None,
            Ok(()) | Err(scram::ScramError::Proof) => Some((
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            )),
            Err(e) => Some(("08P01", e.to_string())),
        };
        if let Some((code, message)) = refusal {
            proxy
                .stats
                .counters
                .auth_failures
                .fetch_add(1, Ordering::Relaxed);
            let e = frame::error_response("FATAL", code, &message);
            stream.write_all(&e.raw).await?;
            return Err(HandshakeError::Auth(format!("user {user}: {message}")));
        }
    }
    stream.write_all(&auth_request(0, &[]).raw).await?;
    Ok(Opened::Client {
        stream,
        params,
        rest: buf,
    })
}

/// What SCRAM offers a client over TLS: the binding data come from the
/// proxy's leaf certificate, the first of `proxy.tls_cert`, the one
/// [`tls_acceptor`] serves.
fn tls_offer(cert_pem: &[u8]) -> scram::Offer {
    match rustls_pemfile::certs(&mut &cert_pem[..]).next() {
        Some(Ok(leaf)) => scram::Offer::tls(&leaf),
        // Not reached: the acceptor was built from the same PEM.
        _ => scram::Offer::plain(),
    }
}

/// The SCRAM exchange. The inner `Err` is a login the client failed (a
/// wrong password is [`scram::ScramError::Proof`]) and is answered by the
/// caller; the outer one a connection that failed.
async fn scram_login(
    stream: &mut Stream,
    buf: &mut BytesMut,
    verifier: &scram::Verifier,
    offer: &scram::Offer,
) -> Result<Result<(), scram::ScramError>, HandshakeError> {
    let mut mechanisms = Vec::new();
    for name in offer.mechanisms() {
        mechanisms.extend_from_slice(name.as_bytes());
        mechanisms.push(0);
    }
    mechanisms.push(0);
    stream.write_all(&auth_request(10, &mechanisms).raw).await?;
    let initial = read_frame(stream, buf).await?;
    let body = initial.body();
    let (mechanism, rest) =
        frame::cstr(body).ok_or(frame::FrameError::Malformed("SASLInitialResponse"))?;
    if initial.tag != b'p' || rest.len() < 4 {
        return Err(HandshakeError::Auth(
            "expected a SASLInitialResponse".into(),
        ));
    }
    let data = &rest[4..];
    let (exchange, server_first) = match Exchange::client_first(verifier, offer, mechanism, data) {
        Ok(started) => started,
        Err(e) => return Ok(Err(e)),
    };
    stream
        .write_all(&auth_request(11, server_first.as_bytes()).raw)
        .await?;
    let response = read_frame(stream, buf).await?;
    if response.tag != b'p' {
        return Err(HandshakeError::Auth("expected a SASL response".into()));
    }
    let server_final = match exchange.client_final(verifier, response.body()) {
        Ok(server_final) => server_final,
        Err(e) => return Ok(Err(e)),
    };
    stream
        .write_all(&auth_request(12, server_final.as_bytes()).raw)
        .await?;
    Ok(Ok(()))
}

/// Forward a client's cancel request to the backend its session uses.
async fn cancel(proxy: &Proxy, pid: i32, secret: &[u8]) {
    let target = proxy.cancels.lock().ok().and_then(|m| m.get(&pid).cloned());
    let Some(t) = target else {
        return;
    };
    if !scram::equal_in_constant_time(&t.secret, secret) {
        return;
    }
    if let Err(e) = backend::cancel(&t.addr, &t.key).await {
        tracing::debug!(error = %e, "forwarding a cancel request failed");
    }
}
