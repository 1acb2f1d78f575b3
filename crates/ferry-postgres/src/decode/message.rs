//! pgoutput messages as they arrive, before any schema is applied.
//!
//! Spec: <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.
//! Inside a streamed block (protocol v2, between Stream Start and Stream Stop)
//! data messages carry the (sub)transaction xid first; `streamed` says so.

use super::DecodeError;
use super::reader::Reader;

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue<'a> {
    Null,
    /// Unchanged TOAST: the value was not sent.
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    pub key: bool,
    pub name: &'a str,
    pub type_oid: u32,
    pub typmod: i32,
}

/// A parsed pgoutput message (borrowing from the message bytes).
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    Begin {
        final_lsn: u64,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Origin {
        lsn: u64,
        name: &'a str,
    },
    Relation {
        oid: u32,
        namespace: &'a str,
        name: &'a str,
        replica_identity: u8,
        columns: Vec<RelationColumn<'a>>,
    },
    Type {
        oid: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        oid: u32,
        new: Vec<TupleValue<'a>>,
    },
    Update {
        oid: u32,
        /// `b'K'` (key) or `b'O'` (full old row) with the tuple.
        old: Option<(u8, Vec<TupleValue<'a>>)>,
        new: Vec<TupleValue<'a>>,
    },
    Delete {
        oid: u32,
        kind: u8,
        old: Vec<TupleValue<'a>>,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        oids: Vec<u32>,
    },
    LogicalMessage {
        transactional: bool,
        lsn: u64,
        prefix: &'a str,
        content: &'a [u8],
    },
    StreamStart {
        xid: u32,
        first: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

/// A message with the xid it carried when it was part of a streamed block.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<'a> {
    pub xid: Option<u32>,
    pub message: Message<'a>,
}

/// Tags of messages that carry an xid inside a streamed block.
pub(crate) fn carries_stream_xid(tag: u8) -> bool {
    matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M')
}

/// Parse one pgoutput message. `streamed`: inside Stream Start/Stop.
pub fn parse(data: &[u8], streamed: bool) -> Result<Parsed<'_>, DecodeError> {
    let mut r = Reader::new(data, "pgoutput message");
    let tag = r.u8()?;
    let xid = if streamed && carries_stream_xid(tag) {
        Some(r.u32()?)
    } else {
        None
    };
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time: r.i64()?,
            }
        }
        b'O' => Message::Origin {
            lsn: r.u64()?,
            name: r.cstr()?,
        },
        b'R' => parse_relation(&mut r)?,
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let oid = r.u32()?;
            expect(&mut r, b'N')?;
            Message::Insert {
                oid,
                new: parse_tuple(&mut r)?,
            }
        }
        b'U' => parse_update(&mut r)?,
        b'D' => {
            let oid = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(DecodeError::UnexpectedByte {
                    at: "delete",
                    byte: kind,
                });
            }
            Message::Delete {
                oid,
                kind,
                old: parse_tuple(&mut r)?,
            }
        }
        b'T' => parse_truncate(&mut r)?,
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.cstr()?;
            let len = usize::try_from(r.u32()?).map_err(|_| DecodeError::Length)?;
            Message::LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        b'S' => Message::StreamStart {
            xid: r.u32()?,
            first: r.u8()? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => {
            let xid = r.u32()?;
            let _flags = r.u8()?;
            Message::StreamCommit {
                xid,
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time: r.i64()?,
            }
        }
        // Protocol v4 adds abort LSN and time; we read what v2 defines.
        b'A' => Message::StreamAbort {
            xid: r.u32()?,
            subxid: r.u32()?,
        },
        other => return Err(DecodeError::UnknownMessage { tag: other }),
    };
    Ok(Parsed { xid, message })
}

fn expect(r: &mut Reader<'_>, want: u8) -> Result<(), DecodeError> {
    let got = r.u8()?;
    if got == want {
        Ok(())
    } else {
        Err(DecodeError::UnexpectedByte {
            at: "tuple marker",
            byte: got,
        })
    }
}

fn parse_relation<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    let oid = r.u32()?;
    let namespace = r.cstr()?;
    let name = r.cstr()?;
    let replica_identity = r.u8()?;
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| DecodeError::Length)?;
    let mut columns = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        columns.push(RelationColumn {
            key: r.u8()? & 1 == 1,
            name: r.cstr()?,
            type_oid: r.u32()?,
            typmod: r.i32()?,
        });
    }
    Ok(Message::Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn parse_update<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    let oid = r.u32()?;
    let mut marker = r.u8()?;
    let mut old = None;
    if marker == b'K' || marker == b'O' {
        old = Some((marker, parse_tuple(r)?));
        marker = r.u8()?;
    }
    if marker != b'N' {
        return Err(DecodeError::UnexpectedByte {
            at: "update",
            byte: marker,
        });
    }
    Ok(Message::Update {
        oid,
        old,
        new: parse_tuple(r)?,
    })
}

fn parse_truncate<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    let n = usize::try_from(r.u32()?).map_err(|_| DecodeError::Length)?;
    let options = r.u8()?;
    let mut oids = Vec::with_capacity(n.min(r.remaining() / 4));
    for _ in 0..n {
        oids.push(r.u32()?);
    }
    Ok(Message::Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        oids,
    })
}

fn parse_tuple<'a>(r: &mut Reader<'a>) -> Result<Vec<TupleValue<'a>>, DecodeError> {
    let n = usize::try_from(r.i16()?).map_err(|_| DecodeError::Length)?;
    let mut out = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        let v = match r.u8()? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::Unchanged,
            kind @ (b't' | b'b') => {
                let len = usize::try_from(r.i32()?).map_err(|_| DecodeError::Length)?;
                let data = r.bytes(len)?;
                if kind == b't' {
                    TupleValue::Text(data)
                } else {
                    TupleValue::Binary(data)
                }
            }
            other => {
                return Err(DecodeError::UnexpectedByte {
                    at: "tuple column",
                    byte: other,
                });
            }
        };
        out.push(v);
    }
    Ok(out)
}
