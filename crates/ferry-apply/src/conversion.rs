//! Values converted to the type of the target column they are written to,
//! for targets whose tables the application created (`[target_tables] mode
//! = "existing"`): the one place where a source value meets a target type
//! that is not the one ferry would have chosen.
//!
//! Values reach the target as COPY text (the load and the CDC staging
//! tables alike, [`crate::copy_text`]), so PostgreSQL's own input functions
//! already convert most forms exactly: `1`/`0` and `t`/`f` into `boolean`,
//! UUID text into `uuid`, JSON text into `jsonb`, integers into `numeric`,
//! ISO-8601 text into `timestamp`. [`convert`] handles what they would
//! refuse or misread:
//!
//! | value | target column | written as |
//! |---|---|---|
//! | integer, or text of digits | `timestamp[(p)]`, `timestamptz`, `date` | Unix epoch: milliseconds when \|n\| ≥ 10¹¹ (from 1973-03-03 on, what ORMs such as Prisma write), else seconds (to year 5138) |
//! | boolean | `smallint`, `integer`, `bigint`, `numeric` | `1` / `0` |
//! | 16-byte blob | `uuid` | the UUID |
//!
//! Everything else passes through unchanged (and borrowed: this runs once
//! per column of every row). [`assess`] is the same rule seen from the
//! types, for `ferry plan`: whether every value of a source type fits the
//! target type, and the fix when some may not.

use std::borrow::Cow;

use ferry_core::Value;
use ferry_core::value::Timestamp;

/// What a target column's type means for [`convert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Timestamp,
    TimestampTz,
    Date,
    /// `smallint`, `integer`, `bigint`, `numeric`.
    Integer,
    Uuid,
    /// Anything PostgreSQL's text input takes as is.
    Other,
}

impl TargetKind {
    /// The kind of a type as `format_type` (or a source's `pg_type`) names it.
    pub fn of(type_name: &str) -> TargetKind {
        let t = type_name.trim().to_ascii_lowercase();
        if t.ends_with("[]") {
            return TargetKind::Other;
        }
        let base = t.split('(').next().unwrap_or(&t).trim();
        let zoned = t.contains("with time zone") && !t.contains("without");
        match base {
            "timestamp" if zoned => TargetKind::TimestampTz,
            "timestamp" | "timestamp without time zone" => TargetKind::Timestamp,
            "timestamptz" | "timestamp with time zone" => TargetKind::TimestampTz,
            "date" => TargetKind::Date,
            "smallint" | "integer" | "bigint" | "int2" | "int4" | "int8" | "int" | "numeric"
            | "decimal" => TargetKind::Integer,
            "uuid" => TargetKind::Uuid,
            _ => TargetKind::Other,
        }
    }
}

/// `v` as the target column of kind `kind` takes it (see the module table).
pub fn convert(v: &Value, kind: TargetKind) -> Cow<'_, Value> {
    match (kind, v) {
        (TargetKind::Other, _) => Cow::Borrowed(v),
        (TargetKind::Timestamp | TargetKind::TimestampTz | TargetKind::Date, _) => {
            let epoch = match v {
                Value::Int2(n) => Some(i64::from(*n)),
                Value::Int4(n) => Some(i64::from(*n)),
                Value::Int8(n) => Some(*n),
                Value::Text(s) => digits(s),
                _ => None,
            };
            match epoch.and_then(Timestamp::from_unix_epoch) {
                Some(ts) => Cow::Owned(match kind {
                    TargetKind::TimestampTz => Value::TimestampTz(ts),
                    TargetKind::Date => Value::Date(ts.date()),
                    _ => Value::Timestamp(ts),
                }),
                None => Cow::Borrowed(v),
            }
        }
        (TargetKind::Integer, Value::Bool(b)) => Cow::Owned(Value::Int2(i16::from(*b))),
        (TargetKind::Uuid, Value::Bytes(b)) => match <[u8; 16]>::try_from(b.as_slice()) {
            Ok(u) => Cow::Owned(Value::Uuid(u)),
            Err(_) => Cow::Borrowed(v),
        },
        _ => Cow::Borrowed(v),
    }
}

/// An optionally signed run of decimal digits, as an integer.
fn digits(s: &str) -> Option<i64> {
    let body = s.strip_prefix('-').unwrap_or(s);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// What `ferry plan` says about carrying a source column of PostgreSQL type
/// `source` into a target column of type `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    /// Same type (up to spelling): nothing to convert.
    Same,
    /// Every value converts exactly; `how` says how.
    Converts { how: String },
    /// Some values may not convert: the load or the stream would stop at
    /// the first one. `why` names the values, `fix` what to change.
    MayFail { why: String, fix: String },
}

/// Whether every value of a source column typed `source` (the type ferry
/// would have created) fits a target column typed `target`.
pub fn assess(source: &str, target: &str) -> Assessment {
    let s = canonical(source);
    let t = canonical(target);
    if s == t {
        return Assessment::Same;
    }
    let (sb, tb) = (base(&s), base(&t));
    let converts = |how: &str| Assessment::Converts { how: how.into() };
    let may_fail = |why: String| Assessment::MayFail {
        fix: format!(
            "change the target column to {source} (or a type that holds every value), or make sure every source value is {}",
            describe(tb)
        ),
        why,
    };
    let int = |b: &str| matches!(b, "smallint" | "integer" | "bigint");
    let text = |b: &str| matches!(b, "text" | "character varying" | "character");
    match (sb, tb) {
        (_, "text") => converts("as its text"),
        ("jsonb" | "json", "jsonb" | "json") => converts("as is"),
        (a, b) if int(a) && b == "numeric" && !t.contains('(') => converts("exactly"),
        ("smallint", "integer" | "bigint") | ("integer", "bigint") => converts("widened"),
        (a, "timestamp" | "timestamp with time zone" | "date") if int(a) => converts(
            "as Unix epoch milliseconds (|n| ≥ 10^11) or seconds; values before 1973-03-03 in milliseconds would be read as seconds",
        ),
        (
            "timestamp" | "timestamp with time zone" | "date",
            "timestamp" | "timestamp with time zone",
        ) => {
            if t.contains('(') {
                converts("rounded to the target's precision")
            } else {
                converts("as is")
            }
        }
        ("boolean", b) if int(b) || b == "numeric" => converts("as 1 / 0"),
        ("bytea", "uuid") => may_fail("blobs that are not exactly 16 bytes".into()),
        (a, "boolean") if int(a) => may_fail("integers other than 0 and 1".into()),
        (a, b) if text(a) && b == "boolean" => {
            may_fail("text other than t/f/true/false/yes/no/on/off/1/0".into())
        }
        (a, b) if text(a) && text(b) => may_fail(format!("text longer than {target} allows")),
        (a, "timestamp" | "timestamp with time zone" | "date") if text(a) => {
            may_fail("text that is neither an ISO-8601 date/time nor an epoch integer".into())
        }
        (a, b) => may_fail(format!("{a} values that are not {}", describe(b))),
    }
}

fn describe(target_base: &str) -> String {
    match target_base {
        "uuid" => "a UUID".into(),
        "jsonb" | "json" => "valid JSON".into(),
        "boolean" => "0/1 or t/f".into(),
        "timestamp" | "timestamp with time zone" | "date" => {
            "a date/time (ISO-8601 text or an epoch integer)".into()
        }
        other => format!("a valid {other}"),
    }
}

/// Lowercase, aliases resolved (`int4` = `integer`, `timestamptz` =
/// `timestamp with time zone`), typmod kept.
fn canonical(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    let (name, typmod) = match t.find('(') {
        Some(i) => {
            let close = t[i..].find(')').map_or(t.len(), |j| i + j + 1);
            (
                format!("{}{}", t[..i].trim(), t[close..].trim_end()),
                t[i..close].to_owned(),
            )
        }
        None => (t.clone(), String::new()),
    };
    let name = match name.trim() {
        "int2" => "smallint",
        "int4" | "int" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" => "double precision",
        "bool" => "boolean",
        "varchar" | "character varying" => "character varying",
        "bpchar" | "char" => "character",
        "decimal" => "numeric",
        "timestamptz" | "timestamp with time zone" => "timestamp with time zone",
        "timestamp" | "timestamp without time zone" => "timestamp",
        other => other,
    };
    format!("{name}{typmod}")
}

fn base(canonical: &str) -> &str {
    canonical.split('(').next().unwrap_or(canonical).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_target_types() {
        for (t, k) in [
            ("timestamp(3) without time zone", TargetKind::Timestamp),
            ("timestamp without time zone", TargetKind::Timestamp),
            ("timestamp(3) with time zone", TargetKind::TimestampTz),
            ("timestamptz", TargetKind::TimestampTz),
            ("date", TargetKind::Date),
            ("integer", TargetKind::Integer),
            ("numeric(10,2)", TargetKind::Integer),
            ("uuid", TargetKind::Uuid),
            ("jsonb", TargetKind::Other),
            ("boolean", TargetKind::Other),
            ("timestamp without time zone[]", TargetKind::Other),
        ] {
            assert_eq!(TargetKind::of(t), k, "{t}");
        }
    }

    fn text_of(v: &Value, kind: TargetKind) -> Option<String> {
        convert(v, kind).to_pg_text()
    }

    #[test]
    fn epoch_integers_become_timestamps() {
        let ms = Value::Int8(1_700_000_000_123);
        assert_eq!(
            text_of(&ms, TargetKind::Timestamp).unwrap(),
            "2023-11-14 22:13:20.123"
        );
        assert_eq!(
            text_of(&ms, TargetKind::TimestampTz).unwrap(),
            "2023-11-14 22:13:20.123+00"
        );
        assert_eq!(text_of(&ms, TargetKind::Date).unwrap(), "2023-11-14");
        let s = Value::Int8(1_700_000_000);
        assert_eq!(
            text_of(&s, TargetKind::Timestamp).unwrap(),
            "2023-11-14 22:13:20"
        );
        let digits = Value::Text("1700000000123".into());
        assert_eq!(
            text_of(&digits, TargetKind::Timestamp).unwrap(),
            "2023-11-14 22:13:20.123"
        );
        assert_eq!(
            text_of(&Value::Int8(-86_400), TargetKind::Date).unwrap(),
            "1969-12-31"
        );
        // Text that is not an epoch is left to PostgreSQL's input.
        let iso = Value::Text("2024-01-02 03:04:05".into());
        assert_eq!(convert(&iso, TargetKind::Timestamp), Cow::Borrowed(&iso));
        // Out of range: unchanged (the target refuses it, naming the column).
        let huge = Value::Int8(i64::MAX);
        assert_eq!(convert(&huge, TargetKind::Timestamp), Cow::Borrowed(&huge));
    }

    #[test]
    fn booleans_blobs_and_the_rest() {
        assert_eq!(
            text_of(&Value::Bool(true), TargetKind::Integer).unwrap(),
            "1"
        );
        assert_eq!(
            text_of(&Value::Bool(false), TargetKind::Integer).unwrap(),
            "0"
        );
        let blob = Value::Bytes((0u8..16).collect());
        assert_eq!(
            text_of(&blob, TargetKind::Uuid).unwrap(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        let short = Value::Bytes(vec![1, 2]);
        assert_eq!(convert(&short, TargetKind::Uuid), Cow::Borrowed(&short));
        for v in [Value::Null, Value::Unchanged, Value::Text("x".into())] {
            for k in [
                TargetKind::Timestamp,
                TargetKind::Integer,
                TargetKind::Other,
            ] {
                assert_eq!(convert(&v, k), Cow::Borrowed(&v));
            }
        }
    }

    #[test]
    fn assessments() {
        use Assessment::*;
        assert_eq!(assess("bigint", "int8"), Same);
        assert_eq!(
            assess("timestamp(3)", "timestamp(3) without time zone"),
            Same
        );
        for (s, t) in [
            ("bigint", "text"),
            ("json", "jsonb"),
            ("bigint", "numeric"),
            ("integer", "bigint"),
            ("bigint", "timestamp(3) without time zone"),
            ("bigint", "timestamp with time zone"),
            ("timestamp", "timestamp(3) without time zone"),
            ("boolean", "integer"),
        ] {
            assert!(matches!(assess(s, t), Converts { .. }), "{s} -> {t}");
        }
        for (s, t) in [
            ("text", "uuid"),
            ("text", "jsonb"),
            ("bigint", "boolean"),
            ("text", "boolean"),
            ("bigint", "integer"),
            ("text", "character varying(20)"),
            ("double precision", "numeric(10,2)"),
            ("bytea", "uuid"),
        ] {
            let a = assess(s, t);
            let MayFail { why, fix } = a else {
                panic!("{s} -> {t}: {a:?}")
            };
            assert!(!why.is_empty() && fix.contains(s), "{s} -> {t}: {fix}");
        }
    }
}
