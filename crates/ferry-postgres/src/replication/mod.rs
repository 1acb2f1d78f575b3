//! A PostgreSQL replication-protocol client (`replication=database`).
//!
//! tokio-postgres has no replication mode, so this speaks the protocol
//! directly over a tokio `TcpStream` (optionally TLS, see [`tls`]), using
//! `postgres-protocol` for the frontend messages and SCRAM/MD5, and a small
//! checked frame reader for backend messages.
//!
//! - Startup ([`auth`]) with `replication=database` and fixed output formats
//!   ([`SESSION_OPTIONS`]: `datestyle=ISO`, `timezone=UTC`,
//!   `intervalstyle=postgres`, `extra_float_digits=3`, `bytea_output=hex`,
//!   `lc_monetary=C`) so the decoder has one text form per type, whatever
//!   the database or role defaults are.
//!   Authentication: trust, cleartext, MD5, SCRAM-SHA-256 (no channel
//!   binding).
//! - Simple-query commands: `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT …
//!   LOGICAL pgoutput (SNAPSHOT 'export')`, `DROP_REPLICATION_SLOT`, plain SQL
//!   (allowed on a `replication=database` connection), and
//!   `START_REPLICATION`, which switches to CopyBoth ([`copyboth`]).
//! - An exported snapshot stays valid until the next command on the
//!   connection that created it: keep the [`ReplicationConnection`] (or the
//!   [`crate::slot::CreatedSlot`] holding it) alive while the load imports it.
//!
//! Server errors become `ferry_core::Error` in one place ([`error`]):
//! wrong password, missing REPLICATION privilege and pg_hba rejections need
//! an operator; connection loss and server shutdown are transient.
//! Spec: <https://www.postgresql.org/docs/15/protocol-replication.html>.

mod auth;
pub mod copyboth;
pub mod error;
mod tls;

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ferry_core::config::Endpoint;
use ferry_core::schema::quote_ident;
use ferry_core::{Error, Lsn};
use futures_util::FutureExt;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use copyboth::{PgOutputOptions, ReplicationMessage, ReplicationStream, STREAMING_SINCE};
pub use error::ServerError;
use tls::Transport;

/// Startup `options`: fixed text formats for every value the decoder parses
/// (the same as every other session's, see [`crate::connect`]).
pub use crate::connect::SESSION_OPTIONS;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest backend message accepted (PostgreSQL's own limit is 1 GB).
const MAX_FRAME: usize = 1 << 30;
/// Spare read-buffer space kept before each socket read.
const READ_CHUNK: usize = 128 * 1024;
/// A socket read below this size while streaming means the reader is
/// keeping pace message by message: the next read waits [`COALESCE`].
const SMALL_READ: usize = 16 * 1024;
/// The pause before reading again after a small read. The walsender
/// flushes every message with its own `send()`; a reader that wakes for each
/// one costs both sides a context switch per row change (measured on a
/// 1M-change pgbench backlog: a discard-everything client read 76k
/// changes/s without this pause, 229k/s with it). Letting the socket fill
/// for a moment turns that into one large read per few hundred messages;
/// it adds at most this much latency.
const COALESCE: Duration = Duration::from_millis(1);

/// One backend message: tag and body.
#[derive(Debug)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    /// Current WAL flush location.
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// Result of `CREATE_REPLICATION_SLOT … LOGICAL pgoutput`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCreated {
    pub slot_name: String,
    /// The stream starts here; the snapshot sees everything before it.
    pub consistent_point: Lsn,
    /// For `SET TRANSACTION SNAPSHOT`, valid until the next command on the
    /// connection that created the slot.
    pub snapshot_name: Option<String>,
    pub output_plugin: String,
}

/// A replication connection in simple-query mode.
#[derive(Debug)]
pub struct ReplicationConnection {
    io: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    user: String,
    server_version_num: Option<u32>,
    /// Streaming: wait [`COALESCE`] before reading again after a small read.
    coalesce: bool,
    /// The last socket read returned less than [`SMALL_READ`] bytes.
    small_read: bool,
}

impl ReplicationConnection {
    /// Connect to the source with `replication=database` and authenticate.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self, Error> {
        let config = crate::connect::pg_config(endpoint, "source")?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(_) => {
                return Err(Error::operator(
                    format!("source URL {} names a Unix socket", endpoint.url),
                    "use a TCP host in source.url for replication",
                ));
            }
            None => "localhost".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .map(str::to_owned)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".to_owned());
        let dbname = config.get_dbname().unwrap_or(&user).to_owned();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        let mode = endpoint.effective_sslmode();
        let root = endpoint.effective_sslrootcert();
        let fut = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| {
                    Error::transient(format!("cannot connect to source {}", endpoint.url))
                        .with_source(e)
                })?;
            let _ = tcp.set_nodelay(true);
            let io = tls::negotiate(tcp, mode, root.as_deref(), &host).await?;
            let mut conn = ReplicationConnection {
                io,
                rbuf: BytesMut::with_capacity(READ_CHUNK),
                wbuf: BytesMut::new(),
                user: user.clone(),
                server_version_num: None,
                coalesce: false,
                small_read: false,
            };
            auth::startup(&mut conn, &dbname, password.as_deref()).await?;
            Ok(conn)
        };
        let conn = tokio::time::timeout(timeout, fut).await.map_err(|_| {
            Error::transient(format!(
                "connecting to source {} timed out after {timeout:?}",
                endpoint.url
            ))
        })??;
        tracing::debug!(source = %endpoint.url, tls = conn.io.is_tls(), "replication connection open");
        Ok(conn)
    }

    /// The role we are connected as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.io.is_tls()
    }

    /// `server_version_num` reported at startup (e.g. 150004).
    pub fn server_version_num(&self) -> Option<u32> {
        self.server_version_num
    }

    /// Run one simple-protocol command; rows as text (NULL → `None`).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        frontend::query(sql, &mut self.wbuf)
            .map_err(|e| Error::transient("encoding query").with_source(e))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'D' => rows.push(parse_data_row(&f.body)?),
                b'E' => failed = Some(ServerError::parse(&f.body)),
                b'Z' => break,
                b'N' => log_notice(&f.body),
                // RowDescription, CommandComplete, EmptyQueryResponse, ParameterStatus.
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(error::classify(e, &command_name(sql), &self.user)),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemIdentity, Error> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = one_row(&rows, 4, "IDENTIFY_SYSTEM")?;
        Ok(SystemIdentity {
            system_id: row[0].clone().unwrap_or_default(),
            timeline: row[1].as_deref().and_then(|t| t.parse().ok()).unwrap_or(0),
            xlogpos: parse_lsn(row[2].as_deref(), "IDENTIFY_SYSTEM")?,
            dbname: row[3].clone(),
        })
    }

    /// Create a logical pgoutput slot exporting a snapshot.
    pub async fn create_slot(&mut self, slot: &str) -> Result<SlotCreated, Error> {
        self.create_slot_with(slot, false).await
    }

    /// Create a temporary logical pgoutput slot exporting a snapshot: the
    /// server drops it when this connection ends.
    pub async fn create_temporary_slot(&mut self, slot: &str) -> Result<SlotCreated, Error> {
        self.create_slot_with(slot, true).await
    }

    async fn create_slot_with(
        &mut self,
        slot: &str,
        temporary: bool,
    ) -> Result<SlotCreated, Error> {
        let sql = create_slot_sql(slot, temporary, self.server_version_num);
        let rows = self
            .simple_query(&sql)
            .await
            .map_err(|e| e.context(format!("slot {slot}")))?;
        let row = one_row(&rows, 4, "CREATE_REPLICATION_SLOT")?;
        Ok(SlotCreated {
            slot_name: row[0].clone().unwrap_or_default(),
            consistent_point: parse_lsn(row[1].as_deref(), "CREATE_REPLICATION_SLOT")?,
            snapshot_name: row[2].clone(),
            output_plugin: row[3].clone().unwrap_or_default(),
        })
    }

    /// `DROP_REPLICATION_SLOT` (fails if the slot is active or missing).
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), Error> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(slot)))
            .await
            .map(drop)
            .map_err(|e| e.context(format!("slot {slot}")))
    }

    /// `START_REPLICATION SLOT … LOGICAL start (…)` and switch to CopyBoth.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &PgOutputOptions,
    ) -> Result<ReplicationStream, Error> {
        let options = &options.for_server(self.server_version_num);
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({})",
            quote_ident(slot),
            options.to_sql()
        );
        frontend::query(&sql, &mut self.wbuf)
            .map_err(|e| Error::transient("encoding query").with_source(e))?;
        self.flush().await?;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'W' => break,
                b'E' => {
                    let e = ServerError::parse(&f.body);
                    return Err(error::classify(e, "START_REPLICATION", &self.user)
                        .context(format!("slot {slot}")));
                }
                b'N' => log_notice(&f.body),
                _ => {}
            }
        }
        tracing::info!(slot, lsn = %start, proto_version = options.proto_version, "replication started");
        self.coalesce = true;
        Ok(ReplicationStream::new(self))
    }

    /// Terminate the session politely.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        let res = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        }
        .await;
        self.wbuf.clear();
        res.map_err(|e| {
            Error::transient("lost the replication connection to the source").with_source(e)
        })
    }

    /// Next backend message. Cancel-safe: bytes read stay in the buffer.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, Error> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                        as usize;
                if !(4..=MAX_FRAME).contains(&len) {
                    return Err(Error::transient(format!(
                        "source sent a message with invalid length {len}"
                    )));
                }
                if self.rbuf.len() > len {
                    let tag = self.rbuf[0];
                    self.rbuf.advance(5);
                    let body = self.rbuf.split_to(len - 4).freeze();
                    if tag == b'S' {
                        self.note_parameter(&body);
                    }
                    return Ok(Frame { tag, body });
                }
                self.rbuf.reserve(len + 1 - self.rbuf.len());
            }
            // Read in large pieces: frames split off above shrink the spare
            // capacity, and an exhausted BytesMut would read a few bytes at
            // a time (one syscall per small message).
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
                self.rbuf.reserve(READ_CHUNK);
            }
            if self.coalesce && self.small_read {
                // Cancel-safe: nothing is read while sleeping.
                tokio::time::sleep(COALESCE).await;
            }
            let lost = |e| {
                Error::transient("lost the replication connection to the source").with_source(e)
            };
            let mut n = self.io.read_buf(&mut self.rbuf).await.map_err(lost)?;
            if n == 0 {
                return Err(Error::transient(
                    "the source closed the replication connection",
                ));
            }
            // Take whatever else is ready without waiting: under TLS one read
            // returns one decrypted chunk (a few KiB), not what the socket
            // holds, and only the whole burst says whether we keep pace.
            while n < READ_CHUNK && self.rbuf.capacity() > self.rbuf.len() {
                match self.io.read_buf(&mut self.rbuf).now_or_never() {
                    Some(Ok(m)) if m > 0 => n += m,
                    Some(Err(e)) => return Err(lost(e)),
                    // End of stream: reported by the next read.
                    Some(Ok(_)) | None => break,
                }
            }
            self.small_read = n < SMALL_READ;
        }
    }

    fn note_parameter(&mut self, body: &[u8]) {
        let mut parts = body.split(|&b| b == 0);
        if parts.next() == Some(b"server_version".as_slice()) {
            let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            self.server_version_num = parse_server_version(&v);
        }
    }
}

/// `CREATE_REPLICATION_SLOT` in the syntax of the server: the option list
/// `(SNAPSHOT 'export')` from PostgreSQL 15, the keyword `EXPORT_SNAPSHOT`
/// on 10–14, which do not know the option list. `None` (version unknown)
/// uses the new form.
fn create_slot_sql(slot: &str, temporary: bool, server_version_num: Option<u32>) -> String {
    let temp = if temporary { " TEMPORARY" } else { "" };
    let new_syntax = server_version_num.is_none_or(|v| v >= 150_000);
    let snapshot = if new_syntax {
        "(SNAPSHOT 'export')"
    } else {
        "EXPORT_SNAPSHOT"
    };
    format!(
        "CREATE_REPLICATION_SLOT {}{temp} LOGICAL pgoutput {snapshot}",
        quote_ident(slot)
    )
}

/// `15.4 (Debian …)` → 150004; `9.6.2` → 90602.
fn parse_server_version(v: &str) -> Option<u32> {
    let head: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut it = head.split('.').map(|p| p.parse::<u32>().ok());
    let major = it.next()??;
    let minor = it.next().flatten().unwrap_or(0);
    Some(if major >= 10 {
        major * 10_000 + minor
    } else {
        major * 10_000 + minor * 100
    })
}

fn command_name(sql: &str) -> String {
    sql.split_whitespace().next().unwrap_or("query").to_owned()
}

fn log_notice(body: &[u8]) {
    let n = ServerError::parse(body);
    tracing::debug!(code = %n.code, message = %n.message, "source notice");
}

fn one_row<'a>(
    rows: &'a [Vec<Option<String>>],
    cols: usize,
    what: &str,
) -> Result<&'a [Option<String>], Error> {
    match rows.first() {
        Some(r) if r.len() >= cols => Ok(r),
        _ => Err(Error::transient(format!(
            "unexpected {what} result from the source"
        ))),
    }
}

fn parse_lsn(text: Option<&str>, what: &str) -> Result<Lsn, Error> {
    text.and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::transient(format!("{what} returned an invalid LSN {text:?}")))
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, Error> {
    let bad = || Error::transient("source sent a malformed DataRow");
    let mut r = crate::decode::reader_for(body, "DataRow");
    let n = r.i16().map_err(|_| bad())?;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = r.i32().map_err(|_| bad())?;
        if len < 0 {
            out.push(None);
        } else {
            let b = r.bytes(len as usize).map_err(|_| bad())?;
            out.push(Some(String::from_utf8_lossy(b).into_owned()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("15.4 (Debian 15.4-1)"), Some(150_004));
        assert_eq!(parse_server_version("9.6.2"), Some(90_600));
        assert_eq!(parse_server_version("16beta1"), Some(160_000));
        assert_eq!(parse_server_version("x"), None);
    }

    #[test]
    fn slot_syntax_follows_the_server_version() {
        assert_eq!(
            create_slot_sql("s", false, Some(120_022)),
            r#"CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput EXPORT_SNAPSHOT"#
        );
        assert_eq!(
            create_slot_sql("s", true, Some(140_023)),
            r#"CREATE_REPLICATION_SLOT "s" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"#
        );
        assert_eq!(
            create_slot_sql("s", true, Some(150_018)),
            r#"CREATE_REPLICATION_SLOT "s" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"#
        );
        assert_eq!(
            create_slot_sql("s", false, None),
            r#"CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput (SNAPSHOT 'export')"#
        );
    }

    #[test]
    fn data_rows_are_checked() {
        let mut ok = vec![0, 2, 0, 0, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_data_row(&ok).unwrap(), vec![Some("a".into()), None]);
        ok.truncate(8);
        assert!(parse_data_row(&ok).is_err());
    }
}
