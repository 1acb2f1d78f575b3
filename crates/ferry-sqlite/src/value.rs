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

use ferry_core::Value;
use ferry_core::value::{Date, Numeric, Time, Timestamp};
use rusqlite::types::ValueRef;

/// Why a value does not fit its column's type (no value text: it may be private).
pub type Misfit = &'static str;

/// [`decode`], with a value that does not fit written as NULL when the
/// column's type policy says so (`null_misfits`).
pub fn decode_column(pg_type: &str, null_misfits: bool, v: ValueRef<'_>) -> Result<Value, Misfit> {
    match decode(pg_type, v) {
        Err(_) if null_misfits => Ok(Value::Null),
        other => other,
    }
}

/// Decodes one SQLite value for a column of PostgreSQL type `pg_type`.
pub fn decode(pg_type: &str, v: ValueRef<'_>) -> Result<Value, Misfit> {
    if let ValueRef::Null = v {
        return Ok(Value::Null);
    }
    let base = pg_type.split('(').next().unwrap_or(pg_type).trim();
    let base = match base {
        "timestamp without time zone" => "timestamp",
        "timestamp with time zone" => "timestamptz",
        "int8" => "bigint",
        "int" | "int4" => "integer",
        "int2" => "smallint",
        "bool" => "boolean",
        "float8" => "double precision",
        other => other,
    };
    match base {
        "bigint" => match v {
            ValueRef::Integer(i) => Ok(Value::Int8(i)),
            _ => Err("non-integer value in a bigint column"),
        },
        "integer" => match v {
            ValueRef::Integer(i) => i32::try_from(i)
                .map(Value::Int4)
                .map_err(|_| "integer out of range for integer"),
            _ => Err("non-integer value in an integer column"),
        },
        "smallint" => match v {
            ValueRef::Integer(i) => i16::try_from(i)
                .map(Value::Int2)
                .map_err(|_| "integer out of range for smallint"),
            _ => Err("non-integer value in a smallint column"),
        },
        // PostgreSQL parses the text on the target (COPY text input).
        "uuid" | "json" | "jsonb" => match v {
            ValueRef::Text(t) => Ok(Value::Text(utf8(t)?)),
            _ => Err("non-text value in a uuid/json column"),
        },
        "boolean" => match v {
            ValueRef::Integer(0) => Ok(Value::Bool(false)),
            ValueRef::Integer(1) => Ok(Value::Bool(true)),
            _ => Err("value other than 0/1 in a boolean column"),
        },
        "double precision" => match v {
            ValueRef::Real(f) => Ok(Value::Float8(f)),
            ValueRef::Integer(i) if (i as f64) as i64 == i && i != i64::MAX => {
                Ok(Value::Float8(i as f64))
            }
            ValueRef::Integer(_) => Err("integer too wide for double precision"),
            _ => Err("non-number in a double precision column"),
        },
        "numeric" => match v {
            ValueRef::Integer(i) => Ok(Value::Numeric(numeric(&i.to_string())?)),
            ValueRef::Real(f) if f.is_finite() => Ok(Value::Numeric(numeric(&format!("{f}"))?)),
            ValueRef::Real(_) => Err("infinite value in a numeric column"),
            ValueRef::Text(t) => {
                let t = std::str::from_utf8(t).map_err(|_| "invalid UTF-8 in a numeric column")?;
                Ok(Value::Numeric(numeric(t)?))
            }
            _ => Err("blob in a numeric column"),
        },
        "text" => match v {
            ValueRef::Text(t) => Ok(Value::Text(utf8(t)?)),
            ValueRef::Integer(i) => Ok(Value::Text(i.to_string())),
            ValueRef::Real(f) => Ok(Value::Text(real_text(f))),
            _ => Err("blob in a text column"),
        },
        "bytea" => match v {
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Value::Bytes(b.to_vec())),
            _ => Err("number in a bytea column"),
        },
        "date" | "timestamp" | "timestamptz" if matches!(v, ValueRef::Integer(_)) => {
            let ValueRef::Integer(n) = v else {
                return Err("value is not a date/time");
            };
            let ts = Timestamp::from_unix_epoch(n).ok_or("epoch integer out of range")?;
            Ok(match base {
                "date" => Value::Date(ts.date()),
                "timestamptz" => Value::TimestampTz(ts),
                _ => Value::Timestamp(ts),
            })
        }
        "date" | "time" | "timestamp" | "timestamptz" => {
            let ValueRef::Text(t) = v else {
                return Err("value is not a date/time");
            };
            let t = std::str::from_utf8(t).map_err(|_| "value is not a date/time")?;
            temporal(base, t.trim()).ok_or("value is not a date/time")
        }
        _ => Err("column type ferry cannot decode from SQLite"),
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

fn temporal(kind: &str, t: &str) -> Option<Value> {
    if kind == "time" {
        let (micros, rest) = time(t)?;
        return rest.is_empty().then_some(Value::Time(Time(micros)));
    }
    let (date, rest) = date(t)?;
    if kind == "date" {
        return rest.is_empty().then_some(Value::Date(date));
    }
    let (micros, zone) = if rest.is_empty() {
        (0, "")
    } else {
        time(rest.strip_prefix(' ').or_else(|| rest.strip_prefix('T'))?)?
    };
    let ts = Timestamp::from_parts(date, Time(micros))?;
    match (kind, zone) {
        ("timestamp", "") => Some(Value::Timestamp(ts)),
        ("timestamptz", z) if !z.is_empty() => {
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
}
