//! PostgreSQL text output → typed `Value`.
//!
//! The replication session fixes the output formats (`DateStyle=ISO`,
//! `TimeZone=UTC`, `IntervalStyle=postgres`, `extra_float_digits=3`), so each
//! type has one text form to parse. Anything malformed is a typed error,
//! never a panic.

use ferry_core::value::{Date, Interval, Numeric, Time, TimeTz, Timestamp, Value};

use super::array::parse_array;
use super::types::ValueKind;

/// Text that does not parse as its column type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {type_name} text value")]
pub struct TextError {
    pub type_name: &'static str,
}

fn err(type_name: &'static str) -> TextError {
    TextError { type_name }
}

/// Parse the text form of a value of `kind`.
pub fn parse_value(kind: &ValueKind, text: &str) -> Result<Value, TextError> {
    Ok(match kind {
        ValueKind::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(err("boolean")),
        },
        ValueKind::Int2 => Value::Int2(text.parse().map_err(|_| err("smallint"))?),
        ValueKind::Int4 => Value::Int4(text.parse().map_err(|_| err("integer"))?),
        ValueKind::Int8 => Value::Int8(text.parse().map_err(|_| err("bigint"))?),
        ValueKind::Float4 => Value::Float4(parse_float(text).ok_or(err("real"))? as f32),
        ValueKind::Float8 => Value::Float8(parse_float(text).ok_or(err("double precision"))?),
        ValueKind::Numeric => Value::Numeric(Numeric::parse(text).map_err(|_| err("numeric"))?),
        ValueKind::Text => Value::Text(text.to_owned()),
        ValueKind::Enum => Value::Enum(text.to_owned()),
        ValueKind::Json => Value::Json(text.to_owned()),
        ValueKind::Jsonb => Value::Jsonb(text.to_owned()),
        ValueKind::Bytes => Value::Bytes(parse_bytea(text).ok_or(err("bytea"))?),
        ValueKind::Uuid => Value::Uuid(parse_uuid(text).ok_or(err("uuid"))?),
        ValueKind::Date => Value::Date(parse_date(text).ok_or(err("date"))?),
        ValueKind::Time => Value::Time(parse_time(text).ok_or(err("time"))?),
        ValueKind::TimeTz => Value::TimeTz(parse_timetz(text).ok_or(err("timetz"))?),
        ValueKind::Timestamp => {
            Value::Timestamp(parse_timestamp(text, false).ok_or(err("timestamp"))?)
        }
        ValueKind::TimestampTz => {
            Value::TimestampTz(parse_timestamp(text, true).ok_or(err("timestamptz"))?)
        }
        ValueKind::Interval => Value::Interval(parse_interval(text).ok_or(err("interval"))?),
        ValueKind::Array {
            element,
            element_type,
            delimiter,
        } => Value::Array(Box::new(parse_array(
            text,
            element,
            element_type,
            *delimiter,
        )?)),
        ValueKind::Other(type_name) => Value::Other {
            type_name: type_name.clone(),
            text: text.to_owned(),
        },
    })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        t if t
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')) =>
        {
            t.parse().ok()
        }
        _ => None,
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2)
        .map(|p| Some(hex_digit(p[0])? << 4 | hex_digit(p[1])?))
        .collect()
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let digits: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
    if digits.len() != 32 || text.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, p) in digits.chunks(2).enumerate() {
        out[i] = hex_digit(p[0])? << 4 | hex_digit(p[1])?;
    }
    Some(out)
}

fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DD` (year may be longer than 4 digits); `bc` flips the era.
fn parse_ymd(text: &str, bc: bool) -> Option<Date> {
    let mut parts = text.splitn(3, '-');
    let y: i32 = digits(parts.next()?)?;
    let m: u32 = digits(parts.next()?)?;
    let d: u32 = digits(parts.next()?)?;
    let year = if bc { 1 - y } else { y };
    Date::from_ymd(year, m, d)
}

fn parse_date(text: &str) -> Option<Date> {
    match text {
        "infinity" => return Some(Date::INFINITY),
        "-infinity" => return Some(Date::NEG_INFINITY),
        _ => {}
    }
    let (body, bc) = strip_bc(text);
    parse_ymd(body, bc)
}

fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (text, false),
    }
}

/// `HH:MM:SS[.ffffff]` as microseconds; hours may exceed 24 when `any_hours`.
fn parse_hms(text: &str, any_hours: bool) -> Option<i64> {
    let mut parts = text.splitn(3, ':');
    let h: i64 = digits(parts.next()?)?;
    let m: i64 = digits(parts.next()?)?;
    let sec = parts.next()?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: i64 = digits(s)?;
    if m > 59 || s > 60 || (!any_hours && h > 24) || frac.len() > 6 {
        return None;
    }
    let frac_micros: i64 = if frac.is_empty() {
        0
    } else {
        digits::<i64>(frac)? * 10_i64.pow(6 - frac.len() as u32)
    };
    h.checked_mul(3600)?
        .checked_add(m * 60 + s)?
        .checked_mul(1_000_000)?
        .checked_add(frac_micros)
}

fn parse_time(text: &str) -> Option<Time> {
    parse_hms(text, false).map(Time)
}

/// `+HH[:MM[:SS]]` / `-HH…` in seconds east of UTC.
fn parse_offset(text: &str) -> Option<i32> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let mut secs = 0i32;
    for (i, part) in rest.split(':').enumerate() {
        let v: i32 = digits(part)?;
        secs += v * [3600, 60, 1].get(i)?;
    }
    Some(sign * secs)
}

/// Position of the UTC offset sign after a time of day.
fn offset_start(text: &str) -> Option<usize> {
    text.rfind(['+', '-'])
}

fn parse_timetz(text: &str) -> Option<TimeTz> {
    let at = offset_start(text)?;
    Some(TimeTz {
        micros: parse_hms(&text[..at], false)?,
        offset_seconds: parse_offset(&text[at..])?,
    })
}

fn parse_timestamp(text: &str, with_tz: bool) -> Option<Timestamp> {
    match text {
        "infinity" => return Some(Timestamp::INFINITY),
        "-infinity" => return Some(Timestamp::NEG_INFINITY),
        _ => {}
    }
    let (body, bc) = strip_bc(text);
    let (date, time) = body.split_once(' ')?;
    let date = parse_ymd(date, bc)?;
    let (time, offset) = if with_tz {
        let at = offset_start(time)?;
        (&time[..at], i64::from(parse_offset(&time[at..])?))
    } else {
        (time, 0)
    };
    let local = Timestamp::from_parts(date, Time(parse_hms(time, false)?))?;
    local.0.checked_sub(offset * 1_000_000).map(Timestamp)
}

/// IntervalStyle `postgres`: `1 year 2 mons -3 days +04:05:06.5`.
fn parse_interval(text: &str) -> Option<Interval> {
    match text {
        "infinity" => return Some(Interval::INFINITY),
        "-infinity" => return Some(Interval::NEG_INFINITY),
        _ => {}
    }
    let mut iv = Interval {
        months: 0,
        days: 0,
        micros: 0,
    };
    let mut tokens = text.split_whitespace();
    while let Some(tok) = tokens.next() {
        if tok.contains(':') {
            let (neg, hms) = match tok.as_bytes()[0] {
                b'-' => (true, &tok[1..]),
                b'+' => (false, &tok[1..]),
                _ => (false, tok),
            };
            let m = parse_hms(hms, true)?;
            iv.micros = iv.micros.checked_add(if neg { -m } else { m })?;
            continue;
        }
        let n: i32 = tok.strip_prefix('+').unwrap_or(tok).parse().ok()?;
        match tokens.next()? {
            "year" | "years" => iv.months = iv.months.checked_add(n.checked_mul(12)?)?,
            "mon" | "mons" => iv.months = iv.months.checked_add(n)?,
            "day" | "days" => iv.days = iv.days.checked_add(n)?,
            _ => return None,
        }
    }
    Some(iv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(kind: ValueKind, text: &str) -> Value {
        parse_value(&kind, text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Every parsed value prints back to the same text.
    #[test]
    fn values_round_trip_to_pg_text() {
        let cases = [
            (ValueKind::Bool, "t"),
            (ValueKind::Int2, "-32768"),
            (ValueKind::Int8, "9223372036854775807"),
            (ValueKind::Float8, "NaN"),
            (ValueKind::Float8, "-Infinity"),
            (ValueKind::Float8, "0.1"),
            (ValueKind::Float4, "1.5"),
            (ValueKind::Numeric, "-12.340"),
            (ValueKind::Numeric, "NaN"),
            (ValueKind::Bytes, "\\x00ff10"),
            (ValueKind::Uuid, "12345678-9abc-def0-0001-020304050607"),
            (ValueKind::Date, "2024-02-29"),
            (ValueKind::Date, "0044-03-15 BC"),
            (ValueKind::Date, "infinity"),
            (ValueKind::Date, "-infinity"),
            (ValueKind::Time, "23:59:59.999999"),
            (ValueKind::Time, "24:00:00"),
            (ValueKind::TimeTz, "12:34:56-05:30"),
            (ValueKind::TimeTz, "01:02:03+00"),
            (ValueKind::Timestamp, "2021-01-01 01:02:03.0005"),
            (ValueKind::Timestamp, "0001-01-01 00:00:00 BC"),
            (ValueKind::Timestamp, "infinity"),
            (ValueKind::TimestampTz, "2021-01-01 01:02:03.0005+00"),
            (ValueKind::TimestampTz, "-infinity"),
        ];
        for (kind, text) in cases {
            assert_eq!(
                v(kind.clone(), text).to_pg_text().unwrap(),
                text,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn timestamptz_offsets_and_bc() {
        let a = v(ValueKind::TimestampTz, "2021-01-01 05:30:00+05:30");
        assert_eq!(a.to_pg_text().unwrap(), "2021-01-01 00:00:00+00");
        let bc = v(ValueKind::TimestampTz, "0044-03-15 12:00:00+00 BC");
        assert_eq!(bc, Value::TimestampTz(v_ts("0044-03-15 12:00:00 BC")));
    }

    fn v_ts(t: &str) -> Timestamp {
        match v(ValueKind::Timestamp, t) {
            Value::Timestamp(ts) => ts,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn intervals_in_postgres_style() {
        let i = |t| match v(ValueKind::Interval, t) {
            Value::Interval(i) => (i.months, i.days, i.micros),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            i("1 year 2 mons 3 days 04:05:06.5"),
            (14, 3, 14_706_500_000)
        );
        assert_eq!(i("-00:00:01"), (0, 0, -1_000_000));
        assert_eq!(i("00:00:00"), (0, 0, 0));
        assert_eq!(
            i("-1 years -2 mons +3 days -04:05:06"),
            (-14, 3, -14_706_000_000)
        );
        assert_eq!(i("1 day"), (0, 1, 0));
        assert_eq!(i("1000000:00:00"), (0, 0, 3_600_000_000_000_000));
        assert!(parse_value(&ValueKind::Interval, "1 fortnight").is_err());
    }

    #[test]
    fn bad_text_is_an_error() {
        let bad = [
            (ValueKind::Bool, "yes"),
            (ValueKind::Int2, "70000"),
            (ValueKind::Float8, "1.0x"),
            (ValueKind::Bytes, "\\x0"),
            (ValueKind::Bytes, "abc"),
            (ValueKind::Uuid, "1234"),
            (ValueKind::Date, "2023-02-29"),
            (ValueKind::Time, "25:00:00"),
            (ValueKind::TimeTz, "12:00:00"),
            (ValueKind::Timestamp, "2021-01-01"),
            (ValueKind::Numeric, "1.2.3"),
        ];
        for (kind, text) in bad {
            assert!(parse_value(&kind, text).is_err(), "{kind:?} {text}");
        }
    }

    #[test]
    fn other_types_keep_text() {
        assert_eq!(
            v(ValueKind::Other("point".into()), "(1,2)"),
            Value::Other {
                type_name: "point".into(),
                text: "(1,2)".into()
            }
        );
    }
}
