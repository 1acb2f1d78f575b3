//! COPY text format encoding of [`Value`]s (PostgreSQL docs, "COPY — Text
//! Format"), shared by the bulk loader, the CDC staging tables and the
//! sources that encode their snapshot rows themselves (SQLite: see
//! [`crate::source::ChunkData::TextCopy`]).
//!
//! Consumes values; emits bytes into a caller's buffer: columns separated by
//! tab, rows ended by newline, `\N` for NULL, and backslash, tab, newline and
//! carriage return escaped. The text of each value is exactly
//! [`Value::to_pg_text`]; the common variants (integers, text-like values,
//! date/time) are written straight into the buffer without building a
//! `String` per value, because this runs once per column of every applied
//! row change.

use std::fmt::Write as _;

use crate::Value;
use bytes::{BufMut, BytesMut};

/// Append one value in COPY text format (`\N` for NULL; backslash, tab,
/// newline and carriage return escaped). `Unchanged` is written as NULL.
pub fn push_copy_text(buf: &mut BytesMut, v: &Value) {
    match v {
        Value::Null | Value::Unchanged => buf.put_slice(b"\\N"),
        Value::Bool(b) => buf.put_u8(if *b { b't' } else { b'f' }),
        Value::Int2(n) => push_int(buf, i64::from(*n)),
        Value::Int4(n) => push_int(buf, i64::from(*n)),
        Value::Int8(n) => push_int(buf, *n),
        Value::Text(s) | Value::Json(s) | Value::Jsonb(s) | Value::Enum(s) => {
            push_escaped(buf, s.as_bytes())
        }
        Value::Other { text, .. } => push_escaped(buf, text.as_bytes()),
        Value::Numeric(n) => push_escaped(buf, n.as_str().as_bytes()),
        // Finite floats print their shortest exact text; NaN and the
        // infinities take PostgreSQL's spelling below.
        Value::Float4(f) if f.is_finite() => push_display(buf, f),
        Value::Float8(f) if f.is_finite() => push_display(buf, f),
        // Date/time text is digits, letters, spaces and `-+:.`: nothing to
        // escape. The forms match `Value::to_pg_text` (tested below).
        Value::Date(d) => push_display(buf, d),
        Value::Time(t) => push_display(buf, t),
        Value::TimeTz(t) => push_display(buf, t),
        Value::Timestamp(t) => push_display(buf, t),
        Value::TimestampTz(t) => {
            let start = buf.len();
            push_display(buf, t);
            if t.is_finite() {
                // PostgreSQL puts the zone before the era: `… 00:00:00+00 BC`.
                if buf[start..].ends_with(b" BC") {
                    buf.truncate(buf.len() - 3);
                    buf.put_slice(b"+00 BC");
                } else {
                    buf.put_slice(b"+00");
                }
            }
        }
        Value::Interval(i) => push_display(buf, i),
        other => match other.to_pg_text() {
            None => buf.put_slice(b"\\N"),
            Some(text) => push_escaped(buf, text.as_bytes()),
        },
    }
}

/// Append one row (tab-separated, newline-terminated) in COPY text format.
pub fn push_copy_text_row<'a>(buf: &mut BytesMut, values: impl Iterator<Item = &'a Value>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            buf.put_u8(b'\t');
        }
        push_copy_text(buf, v);
    }
    buf.put_u8(b'\n');
}

/// Append `text` with COPY's four special bytes escaped, copying the runs
/// between them whole.
pub fn push_escaped(buf: &mut BytesMut, text: &[u8]) {
    buf.reserve(text.len());
    let mut rest = text;
    while let Some(i) = rest
        .iter()
        .position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        buf.put_slice(&rest[..i]);
        buf.put_slice(match rest[i] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[i + 1..];
    }
    buf.put_slice(rest);
}

/// Decimal text of an integer, as `to_string` gives it.
fn push_int(buf: &mut BytesMut, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        buf.put_u8(b'-');
    }
    buf.put_slice(&digits[at..]);
}

fn push_display(buf: &mut BytesMut, v: &impl std::fmt::Display) {
    // Writing into a BytesMut cannot fail.
    let _ = write!(buf, "{v}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Date, Interval, Numeric, Time, TimeTz, Timestamp};

    fn encode(values: &[Value]) -> String {
        let mut buf = BytesMut::new();
        push_copy_text_row(&mut buf, values.iter());
        String::from_utf8(buf.to_vec()).unwrap()
    }

    /// The slow reference: `to_pg_text`, escaped byte by byte.
    fn reference(v: &Value) -> String {
        match v.to_pg_text() {
            None => "\\N".to_owned(),
            Some(t) => t
                .chars()
                .map(|c| match c {
                    '\\' => "\\\\".to_owned(),
                    '\t' => "\\t".to_owned(),
                    '\n' => "\\n".to_owned(),
                    '\r' => "\\r".to_owned(),
                    c => c.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn copy_text_escapes() {
        let row = [
            Value::Int4(7),
            Value::Null,
            Value::Text("a\tb\nc\\d\re".into()),
            Value::Unchanged,
            Value::Bytes(vec![0, 0xff]),
        ];
        assert_eq!(encode(&row), "7\t\\N\ta\\tb\\nc\\\\d\\re\t\\N\t\\\\x00ff\n");
    }

    #[test]
    fn fast_paths_match_to_pg_text() {
        let ts = |micros: i64| Timestamp::from_unix_micros(micros);
        let values = [
            Value::Bool(true),
            Value::Bool(false),
            Value::Int2(i16::MIN),
            Value::Int4(0),
            Value::Int4(-45),
            Value::Int8(i64::MIN),
            Value::Int8(i64::MAX),
            Value::Text(String::new()),
            Value::Text("\\\\x\r\n\t\té".into()),
            Value::Json("{\"a\": \"\\n\"}".into()),
            Value::Enum("happy".into()),
            Value::Numeric(Numeric::parse("-12.50").unwrap()),
            Value::Other {
                type_name: "point".into(),
                text: "(1,2)".into(),
            },
            Value::Date(Date(0)),
            Value::Date(Date(-800_000)),
            Value::Date(Date::INFINITY),
            Value::Time(Time(45_296_000_001)),
            Value::TimeTz(TimeTz {
                micros: 1,
                offset_seconds: -3600,
            }),
            Value::Timestamp(ts(1_700_000_000_123_456)),
            Value::TimestampTz(ts(1_700_000_000_000_000)),
            Value::TimestampTz(ts(-70_000_000_000_000_000)),
            Value::TimestampTz(Timestamp::INFINITY),
            Value::TimestampTz(Timestamp::NEG_INFINITY),
            Value::Interval(Interval {
                months: 14,
                days: -3,
                micros: 5_000_000,
            }),
            Value::Float8(f64::NAN),
            Value::Float8(f64::NEG_INFINITY),
            Value::Float8(0.1),
            Value::Float8(2.0),
            Value::Float8(-1e300),
            Value::Float8(5e-324),
            Value::Float4(1.5),
            Value::Float4(f32::INFINITY),
            Value::Uuid([7; 16]),
        ];
        for v in &values {
            let mut buf = BytesMut::new();
            push_copy_text(&mut buf, v);
            assert_eq!(
                String::from_utf8(buf.to_vec()).unwrap(),
                reference(v),
                "{v:?}"
            );
        }
    }
}
