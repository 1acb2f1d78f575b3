//! The one normalization table validation compares values by when the
//! source is not PostgreSQL (README, "Validation: how values compare").
//!
//! A MySQL/MariaDB or SQLite value is read as the [`Value`](crate::Value)
//! the type mapping makes of it — the same conversion the load and the
//! change stream use, so a value the mapping changes (a zero date that
//! became NULL, a `tinyint(1)` that became a boolean) is compared as it
//! was written — and printed in its PostgreSQL text form
//! ([`Value::to_pg_text`](crate::Value::to_pg_text)). The target's value
//! is PostgreSQL's own text output under the validation session's
//! settings (UTC, ISO dates, shortest exact floats, hex `bytea`). Both
//! texts then pass through [`normalized`] with the target column's type,
//! and are equal exactly when the values are:
//!
//! | target type | rule | why |
//! |---|---|---|
//! | `numeric(p,s)`, `decimal` | trailing fractional zeros and a bare point dropped, `-0` is `0` | the column's scale pads `1.5` to `1.50` on the target |
//! | `real`, `float4` | read as a 32-bit float, printed shortest | `1e+20` and `100000000000000000000` are one value |
//! | `double precision`, `float8`, `float` | read as a 64-bit float, printed shortest | as above |
//! | `json`, `jsonb` | parsed and printed compactly with object keys sorted | `jsonb` and MySQL `JSON` reorder keys and spacing each their own way |
//! | `character(n)`, `char`, `bpchar` | trailing spaces dropped | the target pads to `n`, MySQL strips on read |
//! | `boolean` | `t` or `f` | `true`/`1`/`yes`/`on` are `t` |
//! | everything else | unchanged | the text forms already agree: timestamps in UTC with microseconds only when present, dates ISO, `bytea` as `\x` hex, uuids lower case, arrays in PostgreSQL's own syntax |
//!
//! NULL is not a text and stays apart from every text, the empty string
//! included. Text that does not parse as its type is compared unchanged,
//! so a malformed value is a difference, never an equality.

/// The normal form of `text`, a value of the target column type `pg_type`.
pub fn normalized(pg_type: &str, text: &str) -> String {
    match category(pg_type) {
        Category::Numeric => numeric(text),
        Category::Float4 => match float(text) {
            Some(v) => float_text(f64::from(v as f32), (v as f32).to_string()),
            None => text.to_owned(),
        },
        Category::Float8 => match float(text) {
            Some(v) => float_text(v, v.to_string()),
            None => text.to_owned(),
        },
        Category::Json => match serde_json::from_str::<serde_json::Value>(text) {
            // `serde_json`'s maps are sorted (no `preserve_order`).
            Ok(v) => v.to_string(),
            Err(_) => text.to_owned(),
        },
        Category::Bpchar => text.trim_end_matches(' ').to_owned(),
        Category::Bool => match text {
            "t" | "true" | "1" | "yes" | "on" | "y" => "t".to_owned(),
            "f" | "false" | "0" | "no" | "off" | "n" => "f".to_owned(),
            other => other.to_owned(),
        },
        Category::Other => text.to_owned(),
    }
}

/// Whether values of `pg_type` order the same on every side when compared
/// as bytes of their text (text-like types): validation then asks each side
/// for byte order (`COLLATE "C"`, `utf8mb4_nopad_bin`, SQLite's `BINARY`).
pub fn is_text(pg_type: &str) -> bool {
    let base = base(pg_type);
    matches!(
        base.as_str(),
        "text" | "character varying" | "varchar" | "character" | "char" | "bpchar" | "citext"
    ) || base.starts_with("character")
}

/// The bytes of a `bytea` in hex form (`\\x0aff`; also without the
/// prefix, and a uuid's hex with dashes); `None` for anything else.
pub fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let hex: Vec<u8> = text
        .strip_prefix("\\x")
        .unwrap_or(text)
        .bytes()
        .filter(|&b| b != b'-')
        .collect();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2)
        .map(|p| {
            let digit = |b: u8| (b as char).to_digit(16);
            Some((digit(p[0])? << 4 | digit(p[1])?) as u8)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Numeric,
    Float4,
    Float8,
    Json,
    Bpchar,
    Bool,
    Other,
}

/// The type name without modifiers, lower case (`character(3)` →
/// `character`); arrays keep their `[]`.
fn base(pg_type: &str) -> String {
    let t = pg_type.trim().to_ascii_lowercase();
    let array = t.ends_with("[]");
    let mut b = match t.split_once('(') {
        Some((head, rest)) => {
            // `timestamp(3) with time zone`: keep what follows the modifier.
            let tail = rest.split_once(')').map_or("", |(_, tail)| tail);
            format!("{}{}", head.trim_end(), tail)
        }
        None => t.clone(),
    };
    if array && !b.ends_with("[]") {
        b.push_str("[]");
    }
    b
}

fn category(pg_type: &str) -> Category {
    let b = base(pg_type);
    if b.ends_with("[]") {
        return Category::Other;
    }
    match b.trim() {
        "numeric" | "decimal" => Category::Numeric,
        "real" | "float4" => Category::Float4,
        "double precision" | "float8" | "float" => Category::Float8,
        "json" | "jsonb" => Category::Json,
        "character" | "char" | "bpchar" => Category::Bpchar,
        "boolean" | "bool" => Category::Bool,
        _ => Category::Other,
    }
}

fn numeric(text: &str) -> String {
    let t = text.trim();
    let valid = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.'));
    if !valid {
        return text.to_owned();
    }
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    if int == "0" && frac.is_empty() {
        return "0".to_owned();
    }
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

fn float(text: &str) -> Option<f64> {
    match text.trim() {
        "NaN" | "nan" => Some(f64::NAN),
        "Infinity" | "inf" | "infinity" => Some(f64::INFINITY),
        "-Infinity" | "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

fn float_text(v: f64, shortest: String) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else if v == 0.0 {
        // `-0` and `0` are equal values.
        "0".to_owned()
    } else {
        shortest
    }
}

#[cfg(test)]
mod tests {
    use super::{is_text, normalized};

    #[test]
    fn the_table() {
        // (type, one side's text, the other side's text)
        let equal = [
            ("numeric(10,2)", "1.5", "1.50"),
            ("numeric", "-0.00", "0"),
            ("decimal(5,0)", "007", "7"),
            ("numeric(12,4)", "-12.3400", "-12.34"),
            ("double precision", "1e+20", "100000000000000000000"),
            ("float8", "0.1", "0.1"),
            (
                "real",
                "3.4028235e+38",
                "340282350000000000000000000000000000000",
            ),
            ("double precision", "-0", "0"),
            ("jsonb", r#"{"b": 1, "a": [1, 2]}"#, r#"{"a":[1,2],"b":1}"#),
            ("json", r#"{"k": "v"}"#, r#"{"k":"v"}"#),
            ("character(5)", "ab   ", "ab"),
            ("bpchar", "x ", "x"),
            ("boolean", "true", "t"),
            ("bool", "0", "f"),
            (
                "timestamp(3) with time zone",
                "2024-01-01 00:00:00+00",
                "2024-01-01 00:00:00+00",
            ),
        ];
        for (t, a, b) in equal {
            assert_eq!(normalized(t, a), normalized(t, b), "{t}: {a} vs {b}");
        }
        let differ = [
            ("numeric(10,2)", "1.5", "1.51"),
            ("text", "a ", "a"),
            ("character varying(5)", "ab ", "ab"),
            ("double precision", "0.1", "0.10000000000000002"),
            ("jsonb", r#"{"a": 1}"#, r#"{"a": "1"}"#),
            (
                "timestamp with time zone",
                "2024-01-01 00:00:00+00",
                "2024-01-01 00:00:00.000001+00",
            ),
            ("numeric", "1e5", "100000"),
        ];
        for (t, a, b) in differ {
            assert_ne!(normalized(t, a), normalized(t, b), "{t}: {a} vs {b}");
        }
    }

    #[test]
    fn hex_forms_decode() {
        assert_eq!(super::hex_bytes("\\x0aFF"), Some(vec![10, 255]));
        assert_eq!(super::hex_bytes("00-ff"), Some(vec![0, 255]));
        assert_eq!(super::hex_bytes("\\x0"), None);
        assert_eq!(super::hex_bytes("zz"), None);
    }

    #[test]
    fn text_types_are_recognised() {
        for t in [
            "text",
            "character varying(20)",
            "varchar",
            "character(3)",
            "citext",
        ] {
            assert!(is_text(t), "{t}");
        }
        for t in [
            "integer",
            "bigint",
            "numeric(5,2)",
            "uuid",
            "date",
            "text[]",
            "bytea",
        ] {
            assert!(!is_text(t), "{t}");
        }
    }
}
