//! The proxy's own sessions to a database (the source or the target): TCP,
//! TLS when configured (libpq's `sslmode` decided by the caller, who hands a
//! rustls config), the startup packet with the client's parameters replayed
//! (user and database are the configured ones), and the server's
//! authentication request answered with the configured password
//! (SCRAM-SHA-256, MD5 or cleartext, via `postgres-protocol`).
//!
//! [`Backend::connect`] returns once the server is ready for queries, with
//! the ParameterStatus frames and the key data it announced (the session
//! forwards the first and maps the second for cancel requests).
//! [`Backend::round_trip`] runs a batch to its ReadyForQuery, for replaying
//! session state and for mirrored queries. The password never appears in
//! an error or log line.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::frame::{self, Frame};

/// Any byte stream the proxy talks over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// Which database a backend session is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Source,
    Target,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// How to reach one database.
#[derive(Clone)]
pub struct BackendConfig {
    pub side: Side,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// TLS: the rustls config and whether a server without TLS is refused
    /// (`require` and stricter) or accepted plain (`prefer`).
    pub tls: Option<(Arc<rustls::ClientConfig>, bool)>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("side", &self.side)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connecting to the {side} at {addr}: {source}")]
    Connect {
        side: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {side} refused TLS (sslmode requires it)")]
    TlsRefused { side: &'static str },
    #[error("the {side} answered: {code} {message}")]
    Server {
        side: &'static str,
        code: String,
        message: String,
    },
    #[error("the {side} asked for an authentication method the proxy does not speak ({0})", .method)]
    AuthMethod { side: &'static str, method: i32 },
    #[error("the {side} broke the protocol: {why}")]
    Protocol { side: &'static str, why: String },
    #[error("the {side} closed the connection")]
    Closed { side: &'static str },
    #[error("{side} i/o: {source}")]
    Io {
        side: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A ready backend session.
pub struct Backend {
    pub side: Side,
    pub stream: Stream,
    /// Bytes read past the last frame handed out.
    pub buf: BytesMut,
    /// The server's process id and secret key (for cancel requests).
    pub key: (i32, Vec<u8>),
    /// The ParameterStatus frames of the startup.
    pub params: Vec<Frame>,
    pub addr: (String, u16),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("side", &self.side)
            .field("pid", &self.key.0)
            .finish_non_exhaustive()
    }
}

/// Startup parameters a backend session never takes from the client.
const NOT_REPLAYED: &[&str] = &["user", "database", "replication"];

impl Backend {
    /// Open a session with the client's startup `params` (user and
    /// database replaced by the configured ones).
    pub async fn connect(
        cfg: &BackendConfig,
        params: &[(String, String)],
    ) -> Result<Backend, BackendError> {
        let side = cfg.side.as_str();
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let io = |source| BackendError::Io { side, source };
        let tcp = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| BackendError::Connect {
                side,
                addr: addr.clone(),
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| BackendError::Connect {
                side,
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut stream: Stream = match &cfg.tls {
            None => Box::new(tcp),
            Some((tls, required)) => start_tls(tcp, tls.clone(), *required, cfg).await?,
        };
        let mut startup = vec![
            ("user".to_owned(), cfg.user.clone()),
            ("database".to_owned(), cfg.database.clone()),
        ];
        startup.extend(
            params
                .iter()
                .filter(|(k, _)| !NOT_REPLAYED.contains(&k.as_str()))
                .cloned(),
        );
        stream
            .write_all(&frame::startup_packet(&startup))
            .await
            .map_err(io)?;
        let mut b = Backend {
            side: cfg.side,
            stream,
            buf: BytesMut::with_capacity(8192),
            key: (0, Vec::new()),
            params: Vec::new(),
            addr: (cfg.host.clone(), cfg.port),
        };
        b.authenticate(cfg).await?;
        loop {
            let f = b.next().await?;
            match f.tag {
                b'S' => b.params.push(f),
                b'K' => {
                    let body = f.body();
                    if body.len() < 8 {
                        return Err(b.protocol("short BackendKeyData"));
                    }
                    let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    b.key = (pid, body[4..].to_vec());
                }
                b'Z' => return Ok(b),
                b'E' => return Err(server_error(side, &f)),
                b'N' => {}
                other => {
                    return Err(b.protocol(&format!("unexpected {:?} at startup", other as char)));
                }
            }
        }
    }

    async fn authenticate(&mut self, cfg: &BackendConfig) -> Result<(), BackendError> {
        let side = cfg.side.as_str();
        let password = cfg.password.as_deref().unwrap_or_default();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.next().await?;
            match f.tag {
                b'E' => return Err(server_error(side, &f)),
                b'R' => {}
                other => {
                    return Err(self.protocol(&format!(
                        "expected an authentication request, got {:?}",
                        other as char
                    )));
                }
            }
            let body = f.body();
            if body.len() < 4 {
                return Err(self.protocol("short authentication request"));
            }
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let data = &body[4..];
            let reply = match code {
                0 => return Ok(()),
                3 => password_message(password.as_bytes()),
                5 => {
                    let salt: [u8; 4] = data
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| self.protocol("short MD5 salt"))?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        cfg.user.as_bytes(),
                        password.as_bytes(),
                        salt,
                    );
                    password_message(hash.as_bytes())
                }
                10 => {
                    let offered = data
                        .split(|&c| c == 0)
                        .any(|m| m == crate::scram::MECHANISM.as_bytes());
                    if !offered {
                        return Err(BackendError::AuthMethod { side, method: code });
                    }
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    let mut body = BytesMut::new();
                    body.put_slice(crate::scram::MECHANISM.as_bytes());
                    body.put_u8(0);
                    body.put_i32(s.message().len() as i32);
                    body.put_slice(s.message());
                    scram = Some(s);
                    Frame::new(b'p', &body)
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("SASL continue before SASL start"))?;
                    s.update(data).map_err(|e| BackendError::Server {
                        side,
                        code: "28P01".into(),
                        message: format!("SCRAM exchange failed: {e}"),
                    })?;
                    Frame::new(b'p', s.message())
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("SASL final before SASL start"))?;
                    s.finish(data).map_err(|e| BackendError::Server {
                        side,
                        code: "28P01".into(),
                        message: format!("the server's SCRAM signature is wrong: {e}"),
                    })?;
                    continue;
                }
                method => return Err(BackendError::AuthMethod { side, method }),
            };
            self.stream
                .write_all(&reply.raw)
                .await
                .map_err(|source| BackendError::Io { side, source })?;
        }
    }

    fn protocol(&self, why: &str) -> BackendError {
        BackendError::Protocol {
            side: self.side.as_str(),
            why: why.to_owned(),
        }
    }

    /// The next frame from the server.
    pub async fn next(&mut self) -> Result<Frame, BackendError> {
        let side = self.side.as_str();
        loop {
            if let Some(f) = frame::split(&mut self.buf).map_err(|e| BackendError::Protocol {
                side,
                why: e.to_string(),
            })? {
                return Ok(f);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| BackendError::Io { side, source })?;
            if n == 0 {
                return Err(BackendError::Closed { side });
            }
        }
    }

    /// Send `bytes` (whole frames ending in Sync or a Query) and collect
    /// the answer up to and including its ReadyForQuery.
    pub async fn round_trip(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, BackendError> {
        let side = self.side.as_str();
        self.stream
            .write_all(bytes)
            .await
            .map_err(|source| BackendError::Io { side, source })?;
        let mut out = Vec::new();
        loop {
            let f = self.next().await?;
            let done = f.tag == b'Z';
            out.push(f);
            if done {
                return Ok(out);
            }
        }
    }

    /// Run one simple query; its error as a [`BackendError::Server`].
    pub async fn simple(&mut self, sql: &str) -> Result<Vec<Frame>, BackendError> {
        let frames = self.round_trip(&query(sql).raw).await?;
        if let Some(e) = frames.iter().find(|f| f.tag == b'E') {
            return Err(server_error(self.side.as_str(), e));
        }
        Ok(frames)
    }
}

/// A simple Query frame.
pub fn query(sql: &str) -> Frame {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    Frame::new(b'Q', &body)
}

fn password_message(p: &[u8]) -> Frame {
    let mut body = p.to_vec();
    body.push(0);
    Frame::new(b'p', &body)
}

fn server_error(side: &'static str, f: &Frame) -> BackendError {
    BackendError::Server {
        side,
        code: frame::error_code(f),
        message: frame::error_field(f, b'M').unwrap_or_default(),
    }
}

async fn start_tls(
    mut tcp: TcpStream,
    tls: Arc<rustls::ClientConfig>,
    required: bool,
    cfg: &BackendConfig,
) -> Result<Stream, BackendError> {
    let side = cfg.side.as_str();
    let io = |source| BackendError::Io { side, source };
    let mut req = BytesMut::new();
    req.put_i32(8);
    req.put_i32(frame::SSL_REQUEST);
    tcp.write_all(&req).await.map_err(io)?;
    let answer = tcp.read_u8().await.map_err(io)?;
    if answer != b'S' {
        if required {
            return Err(BackendError::TlsRefused { side });
        }
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(cfg.host.clone()).map_err(|e| {
        BackendError::Protocol {
            side,
            why: format!("host name {} for TLS: {e}", cfg.host),
        }
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(io)?;
    Ok(Box::new(stream))
}

/// Send a CancelRequest for `key` to `addr` (best effort, as libpq).
pub async fn cancel(addr: &(String, u16), key: &(i32, Vec<u8>)) -> std::io::Result<()> {
    let mut tcp = TcpStream::connect((addr.0.as_str(), addr.1)).await?;
    let mut req = BytesMut::new();
    req.put_i32(12 + key.1.len() as i32);
    req.put_i32(frame::CANCEL_REQUEST);
    req.put_i32(key.0);
    req.put_slice(&key.1);
    tcp.write_all(&req).await?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut sink)).await;
    Ok(())
}
