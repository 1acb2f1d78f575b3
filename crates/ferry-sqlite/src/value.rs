//! SQLite values → ferry [`Value`]s, by the PostgreSQL type the column was
//! given ([`crate::typemap`]).
//!
//! One function decodes both the snapshot (values read from the table) and
//! the change stream (values the triggers encoded in the change log and
//! [`crate::capture`] decodes back to SQLite values first), so a row reads
//! the same whichever way it reaches the target. Conversions are exact or
//! refused: a value that does not fit the column's type (the typemap's
//! misfits) is an error naming the reason, never silently mangled.
//!
//! | PostgreSQL type              | accepted storage classes                      |
//! |------------------------------|-----------------------------------------------|
//! | `bigint`                     | INTEGER                                       |
//! | `boolean`                    | INTEGER 0 / 1                                 |
//! | `double precision`           | REAL; INTEGER when exactly representable      |
//! | `numeric[(p[,s])]`           | INTEGER, finite REAL (shortest exact text), decimal TEXT |
//! | `text`                       | TEXT; INTEGER and REAL as their text          |
//! | `bytea`                      | BLOB; TEXT as its UTF-8 bytes                 |
//! | `date` / `time` / `timestamp` / `timestamptz` | TEXT in the typemap's formats; INTEGER as a Unix epoch (`date`, `timestamp[tz]`: milliseconds when \|n\| ≥ 10¹¹, else seconds) |
//! | `integer`, `smallint` (explicit types) | INTEGER in range |
//! | `uuid`, `json`, `jsonb` (explicit types) | TEXT (the target parses it) |
//!
//! NULL is NULL for every type.
//!
//! The load encodes values straight into COPY text ([`push_copy_text`]):
//! the column's [`Kind`] is resolved once per chunk, text is escaped from
//! SQLite's own buffer, and every other value takes the [`Value`] that
//! [`decode_kind`] gives and [`ferry_core::copy_text`]'s encoding of it, so
//! the bytes are exactly those of the decoded row.

use bytes::{BufMut, BytesMut};
use ferry_core::Value;
use ferry_core::copy_text::push_escaped;
use ferry_core::value::{Date, Numeric, Time, Timestamp};
use rusqlite::types::ValueRef;

/// Why a value does not fit its column's type (no value text: it may be private).
pub type Misfit = &'static str;

/// A column's PostgreSQL type as the decoder sees it (modifiers and
/// aliases folded): resolved once per column, not per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bigint,
    Integer,
    Smallint,
    /// `uuid`, `json`, `jsonb`: text the target parses.
    TextParsed,
    Boolean,
    Double,
    Numeric,
    Text,
    Bytea,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    /// A type ferry cannot decode from SQLite (every non-NULL value misfits).
    Unknown,
}

impl Kind {
    pub fn of(pg_type: &str) -> Kind {
        let base = pg_type.split('(').next().unwrap_or(pg_type).trim();
        match base {
            "bigint" | "int8" => Kind::Bigint,
            "integer" | "int" | "int4" => Kind::Integer,
            "smallint" | "int2" => Kind::Smallint,
            "uuid" | "json" | "jsonb" => Kind::TextParsed,
            "boolean" | "bool" => Kind::Boolean,
            "double precision" | "float8" => Kind::Double,
            "numeric" => Kind::Numeric,
            "text" => Kind::Text,
            "bytea" => Kind::Bytea,
            "date" => Kind::Date,
            "time" => Kind::Time,
            "timestamp" | "timestamp without time zone" => Kind::Timestamp,
            "timestamptz" | "timestamp with time zone" => Kind::Timestamptz,
            _ => Kind::Unknown,
        }
    }
}

/// [`decode`], with a value that does not fit written as NULL when the
/// column's type policy says so (`null_misfits`).
pub fn decode_column(pg_type: &str, null_misfits: bool, v: ValueRef<'_>) -> Result<Value, Misfit> {
    decode_kind_column(Kind::of(pg_type), null_misfits, v)
}

/// [`decode_column`] for a resolved [`Kind`].
pub fn decode_kind_column(
    kind: Kind,
    null_misfits: bool,
    v: ValueRef<'_>,
) -> Result<Value, Misfit> {
    match decode_kind(kind, v) {
        Err(_) if null_misfits => Ok(Value::Null),
        other => other,
    }
}

/// Appends one SQLite value to `buf` as the COPY text of
/// [`decode_kind_column`]'s value: exactly
/// `push_copy_text(buf, &decode_kind_column(kind, null_misfits, v)?)`,
/// without a `String` for text. On a misfit `buf` may hold part of the
/// row (the caller abandons it).
pub fn push_copy_text(
    buf: &mut BytesMut,
    kind: Kind,
    null_misfits: bool,
    v: ValueRef<'_>,
) -> Result<(), Misfit> {
    let encoded = match (kind, v) {
        (Kind::Text | Kind::TextParsed, ValueRef::Text(t)) => std::str::from_utf8(t)
            .map(|s| push_escaped(buf, s.as_bytes()))
            .map_err(|_| "invalid UTF-8 in a text column"),
        _ => decode_kind(kind, v).map(|value| ferry_core::copy_text::push_copy_text(buf, &value)),
    };
    match encoded {
        Err(_) if null_misfits => {
            buf.put_slice(b"\\N");
            Ok(())
        }
        other => other,
    }
}

/// Decodes one SQLite value for a column of PostgreSQL type `pg_type`.
pub fn decode(pg_type: &str, v: ValueRef<'_>) -> Result<Value, Misfit> {
    decode_kind(Kind::of(pg_type), v)
}

/// [`decode`] for a resolved [`Kind`].
pub fn decode_kind(kind: Kind, v: ValueRef<'_>) -> Result<Value, Misfit> {
    if let ValueRef::Null = v {
        return Ok(Value::Null);
    }
    match kind {
        Kind::Bigint => match v {
            ValueRef::Integer(i) => Ok(Value::Int8(i)),
            _ => Err("non-integer value in a bigint column"),
        },
        Kind::Integer => match v {
            ValueRef::Integer(i) => i32::try_from(i)
                .map(Value::Int4)
                .map_err(|_| "integer out of range for integer"),
            _ => Err("non-integer value in an integer column"),
        },
        Kind::Smallint => match v {
            ValueRef::Integer(i) => i16::try_from(i)
                .map(Value::Int2)
                .map_err(|_| "integer out of range for smallint"),
            _ => Err("non-integer value in a smallint column"),
        },
        // PostgreSQL parses the text on the target (COPY text input).
        Kind::TextParsed => match v {
            ValueRef::Text(t) => Ok(Value::Text(utf8(t)?)),
            _ => Err("non-text value in a uuid/json column"),
        },
        Kind::Boolean => match v {
            ValueRef::Integer(0) => Ok(Value::Bool(false)),
            ValueRef::Integer(1) => Ok(Value::Bool(true)),
            _ => Err("value other than 0/1 in a boolean column"),
        },
        Kind::Double => match v {
            ValueRef::Real(f) => Ok(Value::Float8(f)),
            ValueRef::Integer(i) if (i as f64) as i64 == i && i != i64::MAX => {
                Ok(Value::Float8(i as f64))
            }
            ValueRef::Integer(_) => Err("integer too wide for double precision"),
            _ => Err("non-number in a double precision column"),
        },
        Kind::Numeric => match v {
            ValueRef::Integer(i) => Ok(Value::Numeric(numeric(&i.to_string())?)),
            ValueRef::Real(f) if f.is_finite() => Ok(Value::Numeric(numeric(&format!("{f}"))?)),
            ValueRef::Real(_) => Err("infinite value in a numeric column"),
            ValueRef::Text(t) => {
                let t = std::str::from_utf8(t).map_err(|_| "invalid UTF-8 in a numeric column")?;
                Ok(Value::Numeric(numeric(t)?))
            }
            _ => Err("blob in a numeric column"),
        },
        Kind::Text => match v {
            ValueRef::Text(t) => Ok(Value::Text(utf8(t)?)),
            ValueRef::Integer(i) => Ok(Value::Text(i.to_string())),
            ValueRef::Real(f) => Ok(Value::Text(real_text(f))),
            _ => Err("blob in a text column"),
        },
        Kind::Bytea => match v {
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Value::Bytes(b.to_vec())),
            _ => Err("number in a bytea column"),
        },
        Kind::Date | Kind::Timestamp | Kind::Timestamptz if matches!(v, ValueRef::Integer(_)) => {
            let ValueRef::Integer(n) = v else {
                return Err("value is not a date/time");
            };
            let ts = Timestamp::from_unix_epoch(n).ok_or("epoch integer out of range")?;
            Ok(match kind {
                Kind::Date => Value::Date(ts.date()),
                Kind::Timestamptz => Value::TimestampTz(ts),
                _ => Value::Timestamp(ts),
            })
        }
        Kind::Date | Kind::Time | Kind::Timestamp | Kind::Timestamptz => {
            let ValueRef::Text(t) = v else {
                return Err("value is not a date/time");
            };
            let t = std::str::from_utf8(t).map_err(|_| "value is not a date/time")?;
            temporal(kind, t.trim()).ok_or("value is not a date/time")
        }
        Kind::Unknown => Err("column type ferry cannot decode from SQLite"),
    }
}

fn utf8(b: &[u8]) -> Result<String, Misfit> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in a text column")
}

fn numeric(t: &str) -> Result<Numeric, Misfit> {
    Numeric::parse(t).map_err(|_| "non-number in a numeric column")
}

/// Text of a REAL as SQLite prints it for integral values (`2.0`), else
/// the shortest text that parses back to the same double.
fn real_text(f: f64) -> String {
    if f.is_infinite() {
        return if f > 0.0 { "Inf" } else { "-Inf" }.to_owned();
    }
    let s = format!("{f}");
    if s.contains(['.', 'e', 'E']) || s.contains("NaN") {
        s
    } else {
        s + ".0"
    }
}

fn temporal(kind: Kind, t: &str) -> Option<Value> {
    if kind == Kind::Time {
        let (micros, rest) = time(t)?;
        return rest.is_empty().then_some(Value::Time(Time(micros)));
    }
    let (date, rest) = date(t)?;
    if kind == Kind::Date {
        return rest.is_empty().then_some(Value::Date(date));
    }
    let (micros, zone) = if rest.is_empty() {
        (0, "")
    } else {
        time(rest.strip_prefix(' ').or_else(|| rest.strip_prefix('T'))?)?
    };
    let ts = Timestamp::from_parts(date, Time(micros))?;
    match (kind, zone) {
        (Kind::Timestamp, "") => Some(Value::Timestamp(ts)),
        (Kind::Timestamptz, z) if !z.is_empty() => {
            let off = zone_seconds(z)?;
            Some(Value::TimestampTz(Timestamp(
                ts.0.checked_sub(off * 1_000_000)?,
            )))
        }
        _ => None,
    }
}

fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    let head = s.get(..n)?;
    head.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| (head.parse().ok(), &s[n..]))
        .and_then(|(v, r)| v.map(|v| (v, r)))
}

fn date(s: &str) -> Option<(Date, &str)> {
    let (y, r) = digits(s, 4)?;
    let (m, r) = digits(r.strip_prefix('-')?, 2)?;
    let (d, r) = digits(r.strip_prefix('-')?, 2)?;
    Some((Date::from_ymd(i32::try_from(y).ok()?, m, d)?, r))
}

/// `HH:MM[:SS[.f]]` → microseconds and what follows.
fn time(s: &str) -> Option<(i64, &str)> {
    let (h, r) = digits(s, 2)?;
    let (mi, mut r) = digits(r.strip_prefix(':')?, 2)?;
    if h > 23 || mi > 59 {
        return None;
    }
    let mut micros = (i64::from(h) * 3600 + i64::from(mi) * 60) * 1_000_000;
    if let Some(after) = r.strip_prefix(':') {
        let (sec, after) = digits(after, 2)?;
        if sec > 60 {
            return None;
        }
        micros += i64::from(sec) * 1_000_000;
        r = after;
        if let Some(frac) = r.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 || n > 9 {
                return None;
            }
            // Microsecond precision, rounded half up like PostgreSQL's input.
            let mut f: String = frac[..n].chars().take(7).collect();
            while f.len() < 7 {
                f.push('0');
            }
            let tenth_micros: i64 = f.parse().ok()?;
            micros += (tenth_micros + 5) / 10;
            r = &frac[n..];
        }
    }
    Some((micros, r))
}

fn zone_seconds(z: &str) -> Option<i64> {
    if z == "Z" {
        return Some(0);
    }
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    let (h, r) = digits(rest, 2)?;
    let m = if r.is_empty() {
        0
    } else {
        let r = r.strip_prefix(':').unwrap_or(r);
        match digits(r, 2)? {
            (m, "") if m < 60 => m,
            _ => return None,
        }
    };
    (h <= 14).then(|| sign * (i64::from(h) * 3600 + i64::from(m) * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_by_column_type() {
        let t = |s: &'static str| ValueRef::Text(s.as_bytes());
        let cases: Vec<(&str, ValueRef<'_>, Result<Value, Misfit>)> = vec![
            (
                "bigint",
                ValueRef::Integer(i64::MIN),
                Ok(Value::Int8(i64::MIN)),
            ),
            (
                "bigint",
                t("7"),
                Err("non-integer value in a bigint column"),
            ),
            ("boolean", ValueRef::Integer(1), Ok(Value::Bool(true))),
            (
                "boolean",
                ValueRef::Integer(2),
                Err("value other than 0/1 in a boolean column"),
            ),
            (
                "numeric(10,2)",
                ValueRef::Real(0.99),
                Ok(Value::Numeric(Numeric::parse("0.99").unwrap())),
            ),
            (
                "numeric",
                ValueRef::Integer(-3),
                Ok(Value::Numeric(Numeric::parse("-3").unwrap())),
            ),
            (
                "numeric",
                t("12.340"),
                Ok(Value::Numeric(Numeric::parse("12.340").unwrap())),
            ),
            (
                "double precision",
                ValueRef::Real(0.1),
                Ok(Value::Float8(0.1)),
            ),
            (
                "double precision",
                ValueRef::Integer(i64::MAX),
                Err("integer too wide for double precision"),
            ),
            ("text", ValueRef::Integer(42), Ok(Value::Text("42".into()))),
            ("text", ValueRef::Real(2.0), Ok(Value::Text("2.0".into()))),
            ("text", ValueRef::Blob(b"x"), Err("blob in a text column")),
            (
                "bytea",
                ValueRef::Blob(&[0, 255]),
                Ok(Value::Bytes(vec![0, 255])),
            ),
            (
                "date",
                t("2024-02-29"),
                Ok(Value::Date(Date::from_ymd(2024, 2, 29).unwrap())),
            ),
            ("date", t("2023-02-29"), Err("value is not a date/time")),
            (
                "time",
                t("01:02:03.5"),
                Ok(Value::Time(Time(3_723_500_000))),
            ),
            (
                "timestamp",
                t("2021-01-01 00:00:00"),
                Ok(Value::Timestamp(
                    Timestamp::from_parts(Date::from_ymd(2021, 1, 1).unwrap(), Time(0)).unwrap(),
                )),
            ),
            (
                "timestamptz",
                t("2021-01-01T02:00:00+02:00"),
                Ok(Value::TimestampTz(
                    Timestamp::from_parts(Date::from_ymd(2021, 1, 1).unwrap(), Time(0)).unwrap(),
                )),
            ),
            (
                "timestamp",
                t("2021-01-01 00:00:00Z"),
                Err("value is not a date/time"),
            ),
            ("bigint", ValueRef::Null, Ok(Value::Null)),
        ];
        for (ty, v, want) in cases {
            assert_eq!(decode(ty, v), want, "{ty} {v:?}");
        }
    }

    /// The load's direct encoding gives the bytes of the decoded value's
    /// COPY text, misfits included.
    #[test]
    fn copy_text_is_the_decoded_values_text() {
        let types = [
            "bigint",
            "integer",
            "smallint",
            "uuid",
            "jsonb",
            "boolean",
            "double precision",
            "numeric(10,2)",
            "text",
            "bytea",
            "date",
            "time",
            "timestamp",
            "timestamptz",
            "point",
        ];
        let values = [
            ValueRef::Null,
            ValueRef::Integer(0),
            ValueRef::Integer(1),
            ValueRef::Integer(-70_000),
            ValueRef::Integer(1_700_000_000_123),
            ValueRef::Integer(i64::MAX),
            ValueRef::Real(0.1),
            ValueRef::Real(2.0),
            ValueRef::Real(f64::INFINITY),
            ValueRef::Real(f64::NAN),
            ValueRef::Text(b"plain"),
            ValueRef::Text(b"tab\there\nnew\\line\r"),
            ValueRef::Text(b"12.340"),
            ValueRef::Text(b"2024-02-29 12:00:00.1234567"),
            ValueRef::Text(b"2021-01-01T02:00:00+02:00"),
            ValueRef::Text(b"01:02:03"),
            ValueRef::Text(b"\xff\xfe not UTF-8"),
            ValueRef::Text("é".as_bytes()),
            ValueRef::Blob(&[0, 9, 255]),
        ];
        for ty in types {
            for null_misfits in [false, true] {
                for v in values {
                    let mut direct = BytesMut::new();
                    let got = push_copy_text(&mut direct, Kind::of(ty), null_misfits, v);
                    let want = decode_column(ty, null_misfits, v).map(|value| {
                        let mut b = BytesMut::new();
                        ferry_core::copy_text::push_copy_text(&mut b, &value);
                        b
                    });
                    match want {
                        Ok(b) => {
                            assert_eq!(got, Ok(()), "{ty} {null_misfits} {v:?}");
                            assert_eq!(direct, b, "{ty} {null_misfits} {v:?}");
                        }
                        Err(why) => assert_eq!(got, Err(why), "{ty} {null_misfits} {v:?}"),
                    }
                }
            }
        }
    }
}
