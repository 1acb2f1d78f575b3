//! Typed column values.
//!
//! Values are lossless for a PostgreSQL target: exact numerics stay decimal
//! text (never `f64`), floats keep NaN and ±Infinity, date/time types use
//! PostgreSQL's own binary representation (microseconds or days from
//! 2000-01-01, with the same ±infinity sentinels), and types ferry does not
//! model stay as their exact text with their type name.
//!
//! [`Value::Unchanged`] is not a value: it marks a column the source did not
//! send (PostgreSQL unchanged TOAST). The applier keeps the target's value
//! for such a column; it must never become NULL.

use std::fmt::{self, Write as _};

use crate::calendar::{civil_from_days, days_from_civil, days_in_month};

/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_UNIX_DAYS: i64 = 10_957;
const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// The source did not send this column (unchanged TOAST); keep the target's.
    Unchanged,
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    Numeric(Numeric),
    Text(String),
    Bytes(Vec<u8>),
    Json(String),
    Jsonb(String),
    Uuid([u8; 16]),
    Date(Date),
    Time(Time),
    TimeTz(TimeTz),
    Timestamp(Timestamp),
    TimestampTz(Timestamp),
    Interval(Interval),
    Array(Box<Array>),
    /// An enum label.
    Enum(String),
    /// A type ferry does not model, kept as PostgreSQL text with its type.
    Other {
        type_name: String,
        text: String,
    },
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// PostgreSQL text input form, or `None` for NULL / unchanged.
    pub fn to_pg_text(&self) -> Option<String> {
        let s = match self {
            Value::Null | Value::Unchanged => return None,
            Value::Bool(b) => (if *b { "t" } else { "f" }).to_owned(),
            Value::Int2(v) => v.to_string(),
            Value::Int4(v) => v.to_string(),
            Value::Int8(v) => v.to_string(),
            Value::Float4(v) => float_text(f64::from(*v), v.to_string()),
            Value::Float8(v) => float_text(*v, v.to_string()),
            Value::Numeric(n) => n.as_str().to_owned(),
            Value::Text(s) | Value::Json(s) | Value::Jsonb(s) | Value::Enum(s) => s.clone(),
            Value::Other { text, .. } => text.clone(),
            Value::Bytes(b) => {
                let mut s = String::with_capacity(2 + b.len() * 2);
                s.push_str("\\x");
                for byte in b {
                    let _ = write!(s, "{byte:02x}");
                }
                s
            }
            Value::Uuid(u) => format_uuid(u),
            Value::Date(d) => d.to_string(),
            Value::Time(t) => t.to_string(),
            Value::TimeTz(t) => t.to_string(),
            Value::Timestamp(t) => t.to_string(),
            Value::TimestampTz(t) => {
                let s = t.to_string();
                match (t.is_finite(), s.strip_suffix(" BC")) {
                    (false, _) => s,
                    // PostgreSQL puts the zone before the era: `… 00:00:00+00 BC`.
                    (true, Some(ad)) => format!("{ad}+00 BC"),
                    (true, None) => s + "+00",
                }
            }
            Value::Interval(i) => i.to_string(),
            Value::Array(a) => a.to_pg_text(),
        };
        Some(s)
    }
}

fn float_text(v: f64, shortest: String) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        shortest
    }
}

fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// An exact decimal, kept as canonical text: `-12.340`, `NaN`, `Infinity`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Numeric(String);

/// Text that is not a decimal number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an exact decimal: {0:?}")]
pub struct NumericParseError(String);

impl Numeric {
    /// Accepts `[-+]digits[.digits]`, `NaN`, `Infinity`, `-Infinity`, and
    /// decimal exponents (`1.5e3`, expanded exactly to `1500`).
    pub fn parse(text: &str) -> Result<Self, NumericParseError> {
        let t = text.trim();
        match t {
            "NaN" | "nan" => return Ok(Numeric("NaN".into())),
            "Infinity" | "+Infinity" | "inf" => return Ok(Numeric("Infinity".into())),
            "-Infinity" | "-inf" => return Ok(Numeric("-Infinity".into())),
            _ => {}
        }
        let err = || NumericParseError(text.chars().take(40).collect());
        let (neg, rest) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().map_err(|_| err())?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || exp.unsigned_abs() > 100_000
        {
            return Err(err());
        }
        // Shift the decimal point by the exponent, exactly.
        let digits: String = format!("{int}{frac}");
        let point = int.len() as i64 + i64::from(exp);
        let (int_part, frac_part) = if point <= 0 {
            (
                String::new(),
                format!("{}{}", "0".repeat((-point) as usize), digits),
            )
        } else if point as usize >= digits.len() {
            (
                format!("{digits}{}", "0".repeat(point as usize - digits.len())),
                String::new(),
            )
        } else {
            (
                digits[..point as usize].to_owned(),
                digits[point as usize..].to_owned(),
            )
        };
        let int_part = int_part.trim_start_matches('0');
        let int_part = if int_part.is_empty() { "0" } else { int_part };
        let mut out = String::new();
        let is_zero = int_part == "0" && frac_part.bytes().all(|b| b == b'0');
        if neg && !is_zero {
            out.push('-');
        }
        out.push_str(int_part);
        if !frac_part.is_empty() {
            out.push('.');
            out.push_str(&frac_part);
        }
        Ok(Numeric(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is NaN or ±Infinity.
    pub fn is_special(&self) -> bool {
        matches!(self.0.as_str(), "NaN" | "Infinity" | "-Infinity")
    }
}

impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn write_ymd(f: &mut fmt::Formatter<'_>, unix_days: i64) -> Result<bool, fmt::Error> {
    let (y, m, d) = civil_from_days(unix_days);
    // PostgreSQL prints years before 1 as "YYYY-MM-DD BC" (no year 0).
    if y <= 0 {
        write!(f, "{:04}-{m:02}-{d:02}", 1 - y)?;
        Ok(true)
    } else {
        write!(f, "{y:04}-{m:02}-{d:02}")?;
        Ok(false)
    }
}

fn write_hms(f: &mut fmt::Formatter<'_>, micros: i64) -> fmt::Result {
    let secs = micros / MICROS_PER_SECOND;
    let frac = micros % MICROS_PER_SECOND;
    write!(
        f,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )?;
    if frac != 0 {
        let s = format!("{frac:06}");
        write!(f, ".{}", s.trim_end_matches('0'))?;
    }
    Ok(())
}

/// A date as days since 2000-01-01; `i32::MAX`/`i32::MIN` are ±infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(pub i32);

impl Date {
    pub const INFINITY: Date = Date(i32::MAX);
    pub const NEG_INFINITY: Date = Date(i32::MIN);

    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Date> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
            return None;
        }
        let days = days_from_civil(i64::from(year), month, day) - PG_EPOCH_UNIX_DAYS;
        i32::try_from(days).ok().map(Date)
    }

    /// (year, month, day); year 0 is 1 BC. `None` for ±infinity.
    pub fn ymd(self) -> Option<(i64, u32, u32)> {
        if self == Date::INFINITY || self == Date::NEG_INFINITY {
            return None;
        }
        Some(civil_from_days(i64::from(self.0) + PG_EPOCH_UNIX_DAYS))
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Date::INFINITY => f.write_str("infinity"),
            Date::NEG_INFINITY => f.write_str("-infinity"),
            Date(d) => {
                if write_ymd(f, i64::from(d) + PG_EPOCH_UNIX_DAYS)? {
                    f.write_str(" BC")?;
                }
                Ok(())
            }
        }
    }
}

/// Time of day in microseconds since midnight (0..=86_400_000_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub i64);

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hms(f, self.0)
    }
}

/// Time of day with a UTC offset in seconds (east of UTC positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeTz {
    pub micros: i64,
    pub offset_seconds: i32,
}

impl fmt::Display for TimeTz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hms(f, self.micros)?;
        let off = self.offset_seconds;
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.unsigned_abs();
        write!(f, "{sign}{:02}", a / 3600)?;
        if !a.is_multiple_of(3600) {
            write!(f, ":{:02}", a / 60 % 60)?;
        }
        if !a.is_multiple_of(60) {
            write!(f, ":{:02}", a % 60)?;
        }
        Ok(())
    }
}

/// Microseconds since 2000-01-01 00:00:00 (UTC for `timestamptz`);
/// `i64::MAX`/`i64::MIN` are ±infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const INFINITY: Timestamp = Timestamp(i64::MAX);
    pub const NEG_INFINITY: Timestamp = Timestamp(i64::MIN);
    /// Microseconds from the Unix epoch to the PostgreSQL epoch.
    pub const UNIX_EPOCH_OFFSET_MICROS: i64 = PG_EPOCH_UNIX_DAYS * MICROS_PER_DAY;

    pub fn is_finite(self) -> bool {
        self != Timestamp::INFINITY && self != Timestamp::NEG_INFINITY
    }

    pub fn from_unix_micros(micros: i64) -> Timestamp {
        Timestamp(micros.saturating_sub(Self::UNIX_EPOCH_OFFSET_MICROS))
    }

    /// A Unix epoch integer as ORMs and applications store it:
    /// milliseconds when |n| ≥ 10¹¹ (from 1973-03-03 on), else seconds (to
    /// year 5138). `None` when out of range.
    pub fn from_unix_epoch(n: i64) -> Option<Timestamp> {
        let micros = if n.unsigned_abs() >= 100_000_000_000 {
            n.checked_mul(1_000)?
        } else {
            n.checked_mul(1_000_000)?
        };
        micros
            .checked_sub(Self::UNIX_EPOCH_OFFSET_MICROS)
            .map(Timestamp)
    }

    /// The calendar date of the timestamp (UTC).
    pub fn date(self) -> Date {
        let days = self.0.div_euclid(MICROS_PER_DAY);
        Date(days.clamp(i64::from(i32::MIN + 1), i64::from(i32::MAX - 1)) as i32)
    }

    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(Self::UNIX_EPOCH_OFFSET_MICROS)
    }

    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_unix_micros(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }

    pub fn from_parts(date: Date, time: Time) -> Option<Timestamp> {
        i64::from(date.0)
            .checked_mul(MICROS_PER_DAY)?
            .checked_add(time.0)
            .map(Timestamp)
    }

    /// Seconds from `self` to `later` (negative if `later` is earlier).
    pub fn seconds_until(self, later: Timestamp) -> f64 {
        (later.0.saturating_sub(self.0)) as f64 / MICROS_PER_SECOND as f64
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Timestamp::INFINITY => f.write_str("infinity"),
            Timestamp::NEG_INFINITY => f.write_str("-infinity"),
            Timestamp(t) => {
                let days = t.div_euclid(MICROS_PER_DAY);
                let micros = t.rem_euclid(MICROS_PER_DAY);
                let bc = write_ymd(f, days + PG_EPOCH_UNIX_DAYS)?;
                f.write_char(' ')?;
                write_hms(f, micros)?;
                if bc {
                    f.write_str(" BC")?;
                }
                Ok(())
            }
        }
    }
}

/// PostgreSQL interval: months, days and microseconds kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

impl Interval {
    /// PostgreSQL 17+ `infinity` interval.
    pub const INFINITY: Interval = Interval {
        months: i32::MAX,
        days: i32::MAX,
        micros: i64::MAX,
    };
    /// PostgreSQL 17+ `-infinity` interval.
    pub const NEG_INFINITY: Interval = Interval {
        months: i32::MIN,
        days: i32::MIN,
        micros: i64::MIN,
    };
}

impl fmt::Display for Interval {
    /// A form PostgreSQL's interval input parses back exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Interval::INFINITY {
            return f.write_str("infinity");
        }
        if *self == Interval::NEG_INFINITY {
            return f.write_str("-infinity");
        }
        write!(f, "{} mons {} days ", self.months, self.days)?;
        if self.micros < 0 {
            f.write_char('-')?;
        }
        write_hms(f, self.micros.unsigned_abs().min(i64::MAX as u64) as i64)
    }
}

/// A PostgreSQL array: dimensions and elements in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Element type name (`int4`, `text`, an enum's name).
    pub element_type: String,
    /// (length, lower bound) per dimension; empty for an empty array.
    pub dims: Vec<(i32, i32)>,
    pub elements: Vec<Value>,
}

impl Array {
    /// A one-dimensional array with lower bound 1.
    pub fn one_dim(element_type: impl Into<String>, elements: Vec<Value>) -> Self {
        let dims = if elements.is_empty() {
            Vec::new()
        } else {
            vec![(elements.len() as i32, 1)]
        };
        Array {
            element_type: element_type.into(),
            dims,
            elements,
        }
    }

    /// PostgreSQL array literal, e.g. `{{1,2},{3,NULL}}` or `[0:1]={a,b}`.
    pub fn to_pg_text(&self) -> String {
        let mut out = String::new();
        if self.dims.iter().any(|&(_, lower)| lower != 1) {
            for &(len, lower) in &self.dims {
                let _ = write!(out, "[{lower}:{}]", lower + len - 1);
            }
            out.push('=');
        }
        if self.dims.is_empty() {
            out.push_str("{}");
            return out;
        }
        let mut idx = 0;
        self.write_dim(&mut out, 0, &mut idx);
        out
    }

    fn write_dim(&self, out: &mut String, dim: usize, idx: &mut usize) {
        out.push('{');
        let len = self.dims[dim].0.max(0) as usize;
        for i in 0..len {
            if i > 0 {
                out.push(',');
            }
            if dim + 1 < self.dims.len() {
                self.write_dim(out, dim + 1, idx);
            } else {
                let v = self.elements.get(*idx).unwrap_or(&Value::Null);
                *idx += 1;
                match v.to_pg_text() {
                    None => out.push_str("NULL"),
                    Some(text) => push_array_element(out, &text),
                }
            }
        }
        out.push('}');
    }
}

fn push_array_element(out: &mut String, text: &str) {
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case("null")
        || text
            .chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
    if !needs_quotes {
        out.push_str(text);
        return;
    }
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dates_print_like_postgres() {
        assert_eq!(Date(0).to_string(), "2000-01-01");
        assert_eq!(
            Date::from_ymd(2024, 2, 29).unwrap().to_string(),
            "2024-02-29"
        );
        assert_eq!(Date::from_ymd(2023, 2, 29), None);
        assert_eq!(
            Date::from_ymd(0, 1, 1).unwrap().to_string(),
            "0001-01-01 BC"
        );
        assert_eq!(Date::INFINITY.to_string(), "infinity");
        assert_eq!(Date::NEG_INFINITY.to_string(), "-infinity");
    }

    #[test]
    fn timestamps_print_like_postgres() {
        let d = Date::from_ymd(2021, 1, 1).unwrap();
        let ts = Timestamp::from_parts(d, Time(3_723_000_500)).unwrap();
        assert_eq!(ts.to_string(), "2021-01-01 01:02:03.0005");
        assert_eq!(
            Value::TimestampTz(ts).to_pg_text().unwrap(),
            "2021-01-01 01:02:03.0005+00"
        );
        assert_eq!(Timestamp(-1).to_string(), "1999-12-31 23:59:59.999999");
        assert_eq!(
            Value::TimestampTz(Timestamp::INFINITY)
                .to_pg_text()
                .unwrap(),
            "infinity"
        );
        assert_eq!(
            Timestamp::from_unix_micros(0).to_string(),
            "1970-01-01 00:00:00"
        );
    }

    #[test]
    fn times_and_intervals() {
        let t = TimeTz {
            micros: 45_296_000_000,
            offset_seconds: -(5 * 3600 + 30 * 60),
        };
        assert_eq!(t.to_string(), "12:34:56-05:30");
        let i = Interval {
            months: 14,
            days: -3,
            micros: -(3600 * 1_000_000 + 1),
        };
        assert_eq!(i.to_string(), "14 mons -3 days -01:00:00.000001");
        assert_eq!(Interval::INFINITY.to_string(), "infinity");
    }

    #[test]
    fn floats_keep_specials() {
        assert_eq!(Value::Float8(f64::NAN).to_pg_text().unwrap(), "NaN");
        assert_eq!(
            Value::Float8(f64::NEG_INFINITY).to_pg_text().unwrap(),
            "-Infinity"
        );
        assert_eq!(
            Value::Float4(f32::INFINITY).to_pg_text().unwrap(),
            "Infinity"
        );
        assert_eq!(Value::Float8(0.1).to_pg_text().unwrap(), "0.1");
    }

    #[test]
    fn numerics_are_exact() {
        for (input, canon) in [
            ("12.340", "12.340"),
            ("-0.0", "0.0"),
            ("+007", "7"),
            ("1.5e3", "1500"),
            ("15E-3", "0.015"),
            (
                "123456789012345678901234567890.000000000000000000001",
                "123456789012345678901234567890.000000000000000000001",
            ),
            ("NaN", "NaN"),
            ("-Infinity", "-Infinity"),
            (".5", "0.5"),
        ] {
            assert_eq!(Numeric::parse(input).unwrap().as_str(), canon, "{input}");
        }
        for bad in ["", "-", "1.2.3", "abc", "1e", "1e999999", "."] {
            assert!(Numeric::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arrays_print_like_postgres() {
        let a = Array {
            element_type: "int4".into(),
            dims: vec![(2, 1), (2, 1)],
            elements: vec![Value::Int4(1), Value::Int4(2), Value::Int4(3), Value::Null],
        };
        assert_eq!(a.to_pg_text(), "{{1,2},{3,NULL}}");
        let t = Array::one_dim(
            "text",
            vec![
                Value::Text("a b".into()),
                Value::Text("NULL".into()),
                Value::Text("q\"\\".into()),
                Value::Text(String::new()),
            ],
        );
        assert_eq!(t.to_pg_text(), r#"{"a b","NULL","q\"\\",""}"#);
        let z = Array {
            element_type: "text".into(),
            dims: vec![(2, 0)],
            elements: vec![Value::Text("x".into()), Value::Text("y".into())],
        };
        assert_eq!(z.to_pg_text(), "[0:1]={x,y}");
        assert_eq!(Array::one_dim("int4", vec![]).to_pg_text(), "{}");
    }

    #[test]
    fn bytes_and_uuid() {
        assert_eq!(Value::Bytes(vec![0, 0xab]).to_pg_text().unwrap(), "\\x00ab");
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7,
        ];
        assert_eq!(
            Value::Uuid(u).to_pg_text().unwrap(),
            "12345678-9abc-def0-0001-020304050607"
        );
        assert_eq!(Value::Null.to_pg_text(), None);
        assert_eq!(Value::Unchanged.to_pg_text(), None);
    }

    proptest! {
        #[test]
        fn civil_dates_round_trip(days in -2_000_000i32..2_000_000) {
            let d = Date(days);
            let (y, m, dd) = d.ymd().unwrap();
            prop_assert_eq!(Date::from_ymd(y as i32, m, dd), Some(d));
        }

        #[test]
        fn numeric_text_is_a_fixed_point(int in "[0-9]{1,30}", frac in proptest::option::of("[0-9]{1,30}"), neg: bool) {
            let text = format!("{}{}{}", if neg { "-" } else { "" }, int, frac.map(|f| format!(".{f}")).unwrap_or_default());
            let once = Numeric::parse(&text).unwrap();
            let twice = Numeric::parse(once.as_str()).unwrap();
            prop_assert_eq!(once, twice);
        }
    }
}
