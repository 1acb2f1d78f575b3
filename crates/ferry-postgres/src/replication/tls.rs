//! The byte stream under a replication connection: plain TCP or TLS.
//!
//! TLS follows libpq's `sslmode` (see [`crate::connect`] for the table and
//! the rustls configuration, shared with the catalog connections): send
//! SSLRequest; on 'S' run the rustls handshake, on 'N' continue in plain
//! text only for `prefer`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ferry_core::Error;
use ferry_core::config::SslMode;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A connected socket, encrypted or not.
#[derive(Debug)]
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

/// SSLRequest and handshake according to `mode`.
pub(crate) async fn negotiate(
    mut tcp: TcpStream,
    mode: SslMode,
    root_cert: Option<&std::path::Path>,
    host: &str,
) -> Result<Transport, Error> {
    let Some(config) = crate::connect::tls_config(mode, root_cert)? else {
        return Ok(Transport::Plain(tcp));
    };
    let mut req = bytes::BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut req);
    let lost =
        |e: io::Error| Error::transient("TLS negotiation with the source failed").with_source(e);
    tcp.write_all(&req).await.map_err(lost)?;
    let answer = tcp.read_u8().await.map_err(lost)?;
    match answer {
        b'S' => {}
        b'N' if mode == SslMode::Prefer => return Ok(Transport::Plain(tcp)),
        b'N' => {
            return Err(Error::operator(
                format!("source server does not accept TLS but sslmode={mode}"),
                "enable ssl on the source server, or set source sslmode=prefer/disable",
            ));
        }
        other => {
            return Err(Error::transient(format!(
                "source answered SSLRequest with unexpected byte 0x{other:02x}"
            )));
        }
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
        Error::operator(
            format!("source host {host:?} is not a valid TLS server name: {e}"),
            "use a DNS name or IP address in source.url",
        )
    })?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| classify_handshake(mode, e))?;
    Ok(Transport::Tls(Box::new(tls)))
}

fn classify_handshake(mode: SslMode, e: io::Error) -> Error {
    let is_cert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    if is_cert {
        Error::operator(
            format!("source TLS certificate rejected (sslmode={mode}): {e}"),
            "check sslrootcert is the CA that signed the server certificate and the host name matches it",
        )
    } else {
        Error::transient(format!("TLS handshake with the source failed: {e}"))
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
