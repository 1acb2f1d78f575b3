//! The PostgreSQL message framing ([protocol flow], [message formats]):
//! every message after startup is a 1-byte tag and a 4-byte big-endian
//! length that counts itself, then the body. The startup packet, SSL and
//! cancel requests have no tag.
//!
//! The proxy forwards frames byte for byte: [`split`] cuts complete frames
//! off a read buffer (a partial frame stays there until more bytes come) and
//! hands each out with its raw bytes, so forwarding is a copy of the same
//! bytes. Only the few bodies mirroring and routing need are decoded here
//! ([`cstr`], [`ready_status`], [`error_code`]). Parsers never panic: a
//! length below 4 or above [`MAX_FRAME`] is a [`FrameError`].
//!
//! [protocol flow]: https://www.postgresql.org/docs/current/protocol-flow.html
//! [message formats]: https://www.postgresql.org/docs/current/protocol-message-formats.html

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// PostgreSQL's own limit on a message (1 GiB).
pub const MAX_FRAME: usize = 1 << 30;
/// The largest startup packet PostgreSQL accepts.
pub const MAX_STARTUP: usize = 10_000;

/// Protocol version 3.0.
pub const PROTOCOL_3: i32 = 196_608;
/// The codes of the untagged startup-phase requests.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message {tag:?} declares length {len}, outside 4..=1 GiB")]
    BadLength { tag: char, len: i64 },
    #[error("startup packet of {0} bytes is outside 8..=10000")]
    BadStartup(usize),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// One message with its raw bytes (tag, length and body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

impl Frame {
    /// The body after tag and length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// A frame from a tag and a body.
    pub fn new(tag: u8, body: &[u8]) -> Frame {
        let mut raw = BytesMut::with_capacity(body.len() + 5);
        raw.put_u8(tag);
        raw.put_i32((body.len() + 4) as i32);
        raw.put_slice(body);
        Frame {
            tag,
            raw: raw.freeze(),
        }
    }
}

/// Cut the next complete frame off `buf`; `Ok(None)` when it holds only
/// part of one.
pub fn split(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_FRAME {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len: len.into(),
        });
    }
    let total = len as usize + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        tag,
        raw: buf.split_to(total).freeze(),
    }))
}

/// The tag and total length of the complete frame at the start of `buf`;
/// `Ok(None)` when it holds only part of one.
pub fn peek(buf: &[u8]) -> Result<Option<(u8, usize)>, FrameError> {
    let Some(total) = declared(buf) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_FRAME {
        return Err(FrameError::BadLength {
            tag: buf[0] as char,
            len: len.into(),
        });
    }
    Ok((buf.len() >= total).then_some((buf[0], total)))
}

/// The total length the frame at the start of `buf` declares (tag
/// included), once its header is there.
pub fn declared(buf: &[u8]) -> Option<usize> {
    let h = buf.get(..5)?;
    let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    Some(len.clamp(0, MAX_FRAME as i32) as usize + 1)
}

/// What a client opens with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        key: Vec<u8>,
    },
    /// Protocol 3.0 with its parameters (user, database, options, …).
    Params(Vec<(String, String)>),
    /// Another protocol version.
    Unsupported(i32),
}

/// Cut a startup packet (length, code, body) off `buf`.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<Startup>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(FrameError::BadStartup(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    let code = packet.get_i32();
    Ok(Some(match code {
        SSL_REQUEST => Startup::Ssl,
        GSSENC_REQUEST => Startup::GssEnc,
        CANCEL_REQUEST => {
            if packet.len() < 8 {
                return Err(FrameError::Malformed("CancelRequest"));
            }
            let pid = packet.get_i32();
            Startup::Cancel {
                pid,
                key: packet.to_vec(),
            }
        }
        PROTOCOL_3 => {
            let mut params = Vec::new();
            let mut rest: &[u8] = &packet;
            loop {
                let (name, r) = cstr(rest).ok_or(FrameError::Malformed("StartupMessage"))?;
                if name.is_empty() {
                    break;
                }
                let (value, r) = cstr(r).ok_or(FrameError::Malformed("StartupMessage"))?;
                params.push((name.to_owned(), value.to_owned()));
                rest = r;
            }
            Startup::Params(params)
        }
        other => Startup::Unsupported(other),
    }))
}

/// The startup packet for `params`.
pub fn startup_packet(params: &[(String, String)]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_i32(PROTOCOL_3);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_i32((body.len() + 4) as i32);
    out.put_slice(&body);
    out.freeze()
}

/// A zero-terminated UTF-8 string and what follows it.
pub fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = memchr::memchr(0, b)?;
    let s = std::str::from_utf8(&b[..end]).ok()?;
    Some((s, &b[end + 1..]))
}

/// The transaction status of a ReadyForQuery (`I`, `T` or `E`).
pub fn ready_status(f: &Frame) -> u8 {
    f.body().first().copied().unwrap_or(b'I')
}

/// A field of an ErrorResponse or NoticeResponse (`C` SQLSTATE, `M`
/// message, …).
pub fn error_field(f: &Frame, field: u8) -> Option<String> {
    let mut rest = f.body();
    while let Some((&code, r)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let (value, r) = cstr(r)?;
        if code == field {
            return Some(value.to_owned());
        }
        rest = r;
    }
    None
}

/// The SQLSTATE of an ErrorResponse.
pub fn error_code(f: &Frame) -> String {
    error_field(f, b'C').unwrap_or_default()
}

/// An ErrorResponse with a severity, SQLSTATE and message.
pub fn error_response(severity: &str, code: &str, message: &str) -> Frame {
    let mut body = BytesMut::new();
    for (k, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.put_u8(k);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    Frame::new(b'E', &body)
}

/// The text columns of a DataRow (`None` for NULL or a value that is not
/// UTF-8).
pub fn data_row(f: &Frame) -> Option<Vec<Option<&str>>> {
    let body = f.body();
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let value = rest.get(..len as usize)?;
        out.push(std::str::from_utf8(value).ok());
        rest = &rest[len as usize..];
    }
    Some(out)
}

/// ReadyForQuery with a status.
pub fn ready_for_query(status: u8) -> Frame {
    Frame::new(b'Z', &[status])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_decode_and_reject_garbage() {
        let mut body = BytesMut::new();
        body.put_i16(3);
        body.put_i32(2);
        body.put_slice(b"ab");
        body.put_i32(-1);
        body.put_i32(0);
        let row = Frame::new(b'D', &body);
        assert_eq!(data_row(&row), Some(vec![Some("ab"), None, Some("")]));
        for cut in 0..body.len() {
            assert_eq!(data_row(&Frame::new(b'D', &body[..cut])), None, "{cut}");
        }
    }

    #[test]
    fn frames_split_only_when_complete() {
        let f = Frame::new(b'Q', b"SELECT 1\0");
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&f.raw[..7]);
        assert_eq!(split(&mut buf), Ok(None));
        buf.extend_from_slice(&f.raw[7..]);
        buf.extend_from_slice(b"S\0\0");
        let got = split(&mut buf).unwrap().unwrap();
        assert_eq!(got, f);
        assert_eq!(got.body(), b"SELECT 1\0");
        assert_eq!(split(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"S\0\0");
    }

    #[test]
    fn garbage_lengths_are_errors_not_panics() {
        for bad in [
            &b"Q\0\0\0\x02"[..],
            &b"Q\xff\xff\xff\xff"[..],
            &b"Q\x7f\xff\xff\xff"[..],
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(matches!(split(&mut buf), Err(FrameError::BadLength { .. })));
        }
        let mut buf = BytesMut::from(&b"\0\0\0\x02abcd"[..]);
        assert!(split_startup(&mut buf).is_err());
        // A startup packet whose parameter list is not terminated.
        let mut p = BytesMut::new();
        p.put_i32(13);
        p.put_i32(PROTOCOL_3);
        p.put_slice(b"user\0");
        assert!(split_startup(&mut p).is_err());
        let mut c = BytesMut::new();
        c.put_i32(12);
        c.put_i32(CANCEL_REQUEST);
        c.put_i32(1);
        assert!(split_startup(&mut c).is_err());
    }

    #[test]
    fn startup_round_trip() {
        let params = vec![
            ("user".to_owned(), "app".to_owned()),
            ("database".to_owned(), "shop".to_owned()),
        ];
        let mut buf = BytesMut::from(&startup_packet(&params)[..]);
        assert_eq!(split_startup(&mut buf), Ok(Some(Startup::Params(params))));
        assert!(buf.is_empty());
    }

    #[test]
    fn error_fields_are_read() {
        let e = error_response("ERROR", "42P01", "relation \"x\" does not exist");
        assert_eq!(error_code(&e), "42P01");
        assert_eq!(
            error_field(&e, b'M').as_deref(),
            Some("relation \"x\" does not exist")
        );
        assert_eq!(error_field(&Frame::new(b'E', b"C12"), b'M'), None);
        assert_eq!(ready_status(&ready_for_query(b'T')), b'T');
    }
}
