//! The CopyBoth phase of a replication connection.
//!
//! Server → client CopyData carries XLogData (`w`: start, end, send time,
//! pgoutput payload) or a primary keepalive (`k`: WAL end, send time,
//! reply-requested flag). Client → server CopyData carries the standby
//! status update (`r`: written, flushed, applied positions, clock,
//! reply-requested). The positions we report are exactly what the caller
//! passes — the stream reports the applier's acknowledged position, never
//! more, so the server keeps the WAL we may still need.
//! Spec: <https://www.postgresql.org/docs/15/protocol-replication.html>.

use bytes::{BufMut, Bytes, BytesMut};
use ferry_core::value::Timestamp;
use ferry_core::{Error, Lsn};
use postgres_protocol::message::frontend;

use super::ReplicationConnection;
use super::error::{ServerError, classify};

/// pgoutput options of `START_REPLICATION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOutputOptions {
    /// 1, or 2 to receive large in-progress transactions streamed.
    pub proto_version: u32,
    pub publications: Vec<String>,
    /// Logical decoding messages (heartbeats).
    pub messages: bool,
}

/// First server version (`server_version_num`) whose pgoutput streams
/// large in-progress transactions (`proto_version 2`, `streaming`) and
/// sends logical decoding messages (`messages`).
pub const STREAMING_SINCE: u32 = 140_000;

impl PgOutputOptions {
    /// What the server of `version_num` accepts: below PostgreSQL 14
    /// pgoutput knows neither protocol 2 nor the `messages` option (it
    /// refuses both), so those fall back to protocol 1 without messages.
    /// `None` (version unknown) keeps the options as they are.
    pub fn for_server(&self, version_num: Option<u32>) -> PgOutputOptions {
        let mut o = self.clone();
        if version_num.is_some_and(|v| v < STREAMING_SINCE) {
            o.proto_version = o.proto_version.min(1);
            o.messages = false;
        }
        o
    }

    /// The option list of `START_REPLICATION … LOGICAL lsn (…)`.
    pub fn to_sql(&self) -> String {
        let names = self
            .publications
            .iter()
            .map(|p| ferry_core::schema::quote_ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let mut s = format!(
            "proto_version '{}', publication_names {}",
            self.proto_version,
            sql_literal(&names)
        );
        if self.messages {
            s.push_str(", messages 'true'");
        }
        if self.proto_version >= 2 {
            s.push_str(", streaming 'on'");
        }
        s
    }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One message from the server in CopyBoth mode.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicationMessage {
    XLogData {
        start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        send_time: Timestamp,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        send_time: Timestamp,
        reply_requested: bool,
    },
}

/// A replication connection streaming WAL.
#[derive(Debug)]
pub struct ReplicationStream {
    conn: ReplicationConnection,
}

impl ReplicationStream {
    pub(crate) fn new(conn: ReplicationConnection) -> Self {
        ReplicationStream { conn }
    }

    /// The next message; `None` when the server ended the stream (CopyDone).
    /// Cancel-safe (usable in `select!`).
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, Error> {
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag {
                b'd' => return parse_copy_data(f.body).map(Some),
                b'c' => return Ok(None),
                b'E' => {
                    let e = ServerError::parse(&f.body);
                    return Err(classify(e, "streaming changes", &self.conn.user));
                }
                b'N' => super::log_notice(&f.body),
                _ => {}
            }
        }
    }

    /// Standby status update: `received` as written (what the client has
    /// read, never below `acked`), `acked` as flushed and applied. The
    /// server keeps WAL from the flushed position (the slot's
    /// `confirmed_flush_lsn`); the written one is what tells a walsender
    /// that decodes WAL without a change to send that the client has seen
    /// its last keepalive, so it sends the next when its position moves.
    pub async fn send_status(
        &mut self,
        received: Lsn,
        acked: Lsn,
        reply_requested: bool,
    ) -> Result<(), Error> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(received.max(acked).0);
        body.put_u64(acked.0);
        body.put_u64(acked.0);
        body.put_i64(Timestamp::now().0);
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(body.freeze())
            .map_err(|e| Error::transient("encoding status update").with_source(e))?
            .write(&mut self.conn.wbuf);
        self.conn.flush().await
    }

    /// End the stream (CopyDone) and close the connection.
    pub async fn finish(mut self) {
        frontend::copy_done(&mut self.conn.wbuf);
        let _ = self.conn.flush().await;
        self.conn.close().await;
    }
}

/// Parse the body of a CopyData message from the server.
pub fn parse_copy_data(body: Bytes) -> Result<ReplicationMessage, Error> {
    let bad = || Error::transient("source sent a malformed replication message");
    let mut r = crate::decode::reader_for(&body, "replication message");
    match r.u8().map_err(|_| bad())? {
        b'w' => {
            let start = Lsn(r.u64().map_err(|_| bad())?);
            let wal_end = Lsn(r.u64().map_err(|_| bad())?);
            let send_time = Timestamp(r.i64().map_err(|_| bad())?);
            Ok(ReplicationMessage::XLogData {
                start,
                wal_end,
                send_time,
                data: body.slice(25..),
            })
        }
        b'k' => Ok(ReplicationMessage::Keepalive {
            wal_end: Lsn(r.u64().map_err(|_| bad())?),
            send_time: Timestamp(r.i64().map_err(|_| bad())?),
            reply_requested: r.u8().map_err(|_| bad())? == 1,
        }),
        other => Err(Error::transient(format!(
            "source sent unknown replication message 0x{other:02x}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_quote_publications() {
        let o = PgOutputOptions {
            proto_version: 2,
            publications: vec!["ferry".into(), "it's".into()],
            messages: true,
        };
        assert_eq!(
            o.to_sql(),
            r#"proto_version '2', publication_names '"ferry","it''s"', messages 'true', streaming 'on'"#
        );
        let v1 = PgOutputOptions {
            proto_version: 1,
            publications: vec!["p".into()],
            messages: false,
        };
        assert_eq!(v1.to_sql(), r#"proto_version '1', publication_names '"p"'"#);
    }

    #[test]
    fn options_fit_the_server_version() {
        let o = PgOutputOptions {
            proto_version: 2,
            publications: vec!["p".into()],
            messages: true,
        };
        for old in [120_022, 130_023] {
            assert_eq!(
                o.for_server(Some(old)).to_sql(),
                r#"proto_version '1', publication_names '"p"'"#
            );
        }
        assert_eq!(o.for_server(Some(140_000)), o);
        assert_eq!(o.for_server(Some(180_004)), o);
        assert_eq!(o.for_server(None), o);
    }

    #[test]
    fn copy_data_is_checked() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&1u64.to_be_bytes());
        w.extend_from_slice(&2u64.to_be_bytes());
        w.extend_from_slice(&3i64.to_be_bytes());
        w.extend_from_slice(b"B...");
        match parse_copy_data(Bytes::from(w.clone())).unwrap() {
            ReplicationMessage::XLogData {
                start,
                wal_end,
                data,
                ..
            } => {
                assert_eq!((start, wal_end, &data[..]), (Lsn(1), Lsn(2), &b"B..."[..]));
            }
            other => panic!("{other:?}"),
        }
        for n in 0..25 {
            assert!(
                parse_copy_data(Bytes::from(w[..n].to_vec())).is_err(),
                "{n}"
            );
        }
        let mut k = vec![b'k'];
        k.extend_from_slice(&9u64.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(1);
        assert!(matches!(
            parse_copy_data(Bytes::from(k)).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: Lsn(9),
                reply_requested: true,
                ..
            }
        ));
    }
}
