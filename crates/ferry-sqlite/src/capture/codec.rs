//! The encoding of row values in the change log (see [`super`]'s notes):
//! SQL the triggers evaluate, and its exact inverse.
//!
//! NULL → `null`, INTEGER → a JSON integer (all 64 bits), TEXT → `"t…"`,
//! REAL → `"r"` + `quote()` (digits enough to parse back to the same
//! double; ±Inf as `±9.0e+999`), BLOB → `"b"` + hex. Rows wider than
//! [`JSON_CHUNK`] nest chunks; values are never arrays, so parsing
//! flattens them back unambiguously.

use ferry_core::schema::quote_ident;
use ferry_core::{ChangeLogSeq, Error, TableId};
use rusqlite::types::Value as SqlValue;

use super::ColumnDef;
use crate::catalog::SCHEMA;

/// The exact encoding of one value (see the module notes).
pub(super) fn encode(expr: &str) -> String {
    format!(
        "CASE typeof({expr}) WHEN 'integer' THEN {expr} WHEN 'text' THEN 't' || {expr} \
         WHEN 'real' THEN 'r' || quote({expr}) WHEN 'blob' THEN 'b' || hex({expr}) END"
    )
}

/// Values per `json_array` call: SQLite limits a function's arguments
/// (1000 in current builds, 127 in old ones), and a trigger that exceeds
/// the limit would fail the application's statements. Wider rows nest
/// chunks (`[[v1..v100],[v101..]]`); values are never arrays, so
/// [`parse_json_row`] flattens them back unambiguously.
pub(super) const JSON_CHUNK: usize = 100;

pub(super) fn json_row(prefix: &str, cols: &[&ColumnDef]) -> String {
    let parts: Vec<String> = cols
        .iter()
        .map(|c| encode(&format!("{prefix}.{}", quote_ident(&c.name))))
        .collect();
    if parts.len() <= JSON_CHUNK {
        return format!("json_array({})", parts.join(", "));
    }
    let chunks: Vec<String> = parts
        .chunks(JSON_CHUNK)
        .map(|c| format!("json_array({})", c.join(", ")))
        .collect();
    format!("json_array({})", chunks.join(", "))
}

/// A JSON row with nested chunks flattened (see [`JSON_CHUNK`]).
pub(super) fn flat_json(text: &str) -> Vec<serde_json::Value> {
    let items: Vec<serde_json::Value> = serde_json::from_str(text).unwrap_or_default();
    items
        .into_iter()
        .flat_map(|v| match v {
            serde_json::Value::Array(inner) => inner,
            other => vec![other],
        })
        .collect()
}

/// Decodes a trigger-encoded JSON array back to SQLite values.
pub fn parse_json_row(text: &str, seq: ChangeLogSeq, table: &str) -> Result<Vec<SqlValue>, Error> {
    let bad = |what: &str| {
        Error::operator(
            format!(
                "change-log entry {seq} of {} is damaged ({what})",
                TableId::new(SCHEMA, table)
            ),
            "remove change capture (`ferry cleanup`) and reload from a new snapshot (`ferry run`)",
        )
    };
    let items: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| bad("not a JSON array").with_source(e))?;
    items
        .into_iter()
        .flat_map(|v| match v {
            serde_json::Value::Array(chunk) => chunk,
            other => vec![other],
        })
        .map(|v| match v {
            serde_json::Value::Null => Ok(SqlValue::Null),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(SqlValue::Integer)
                .ok_or_else(|| bad("number")),
            serde_json::Value::String(s) => {
                let (tag, body) = s.split_at_checked(1).ok_or_else(|| bad("empty value"))?;
                match tag {
                    "t" => Ok(SqlValue::Text(body.to_owned())),
                    "r" => body
                        .parse::<f64>()
                        .map(SqlValue::Real)
                        .map_err(|_| bad("real")),
                    "b" => hex(body).map(SqlValue::Blob).ok_or_else(|| bad("blob")),
                    _ => Err(bad("unknown tag")),
                }
            }
            _ => Err(bad("unexpected JSON value")),
        })
        .collect()
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_rows_parse_back() {
        let row = parse_json_row(
            r#"[null, -9223372036854775808, "tx'y", "r0.1", "bDEAD00", "t"]"#,
            ChangeLogSeq(1),
            "t",
        )
        .unwrap();
        assert_eq!(
            row,
            vec![
                SqlValue::Null,
                SqlValue::Integer(i64::MIN),
                SqlValue::Text("x'y".into()),
                SqlValue::Real(0.1),
                SqlValue::Blob(vec![0xde, 0xad, 0]),
                SqlValue::Text(String::new()),
            ]
        );
        let nested = parse_json_row(r#"[[1, "ta"], [null]]"#, ChangeLogSeq(1), "t").unwrap();
        assert_eq!(
            nested,
            vec![
                SqlValue::Integer(1),
                SqlValue::Text("a".into()),
                SqlValue::Null
            ]
        );
        for bad in [
            "{}",
            "[1.5]",
            "[\"\"]",
            "[\"q1\"]",
            "[\"bABC\"]",
            "[{\"a\":1}]",
            "[[[1]]]",
        ] {
            let e = parse_json_row(bad, ChangeLogSeq(7), "t").unwrap_err();
            assert!(
                e.to_string()
                    .contains("change-log entry 7 of main.t is damaged"),
                "{bad}: {e}"
            );
        }
    }
}
