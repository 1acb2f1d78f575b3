//! MySQL binary JSON → JSON text, and exact application of partial JSON
//! updates (`binlog_row_value_options = PARTIAL_JSON`).
//!
//! Values are printed as JSON text for a `jsonb` target: decimals inside
//! JSON stay exact number literals, dates and times print as MySQL prints
//! them (`"2015-01-15 23:24:25.000000"`), other opaque values as MySQL's
//! `"base64:typeN:…"` strings. Object member order does not matter to jsonb.
//!
//! A partial update carries, per JSON column, a list of diffs (REPLACE,
//! INSERT, REMOVE at a path such as `$.a[2]."b c"`) against the before image;
//! they are applied in order to the before image's document, giving exactly
//! the new document. A path that does not resolve is an error, never a guess.

use std::fmt::Write as _;

use mysql_async::binlog::jsonb::{self, JsonContainer, JsonDom, JsonNumber, JsonScalar};
use mysql_async::binlog::jsondiff::{JsonDiff, JsonDiffOperation};

/// Deepest nesting accepted (MySQL allows 100).
const MAX_DEPTH: usize = 150;

/// Parses a binary JSON value into a document.
///
/// Containers are walked element by element (never pre-sized from the
/// element count the bytes claim), so damaged bytes give an error, not a
/// huge allocation.
pub fn dom(value: jsonb::Value<'_>) -> Result<JsonDom, String> {
    walk(&value, 0).map_err(|e| format!("invalid binary JSON: {e}"))
}

fn walk(value: &jsonb::Value<'_>, depth: usize) -> std::io::Result<JsonDom> {
    use jsonb::Value as J;
    if depth > MAX_DEPTH {
        return Err(std::io::Error::other("JSON nested too deeply"));
    }
    let array = |items: &mut dyn Iterator<Item = std::io::Result<jsonb::Value<'_>>>| {
        let mut out = Vec::new();
        for item in items {
            out.push(walk(&item?, depth + 1)?);
        }
        Ok(JsonDom::Container(JsonContainer::Array(out)))
    };
    match value {
        J::SmallArray(c) => array(&mut c.iter()),
        J::LargeArray(c) => array(&mut c.iter()),
        J::SmallObject(c) => {
            let mut out = std::collections::BTreeMap::new();
            for item in c.iter() {
                let (k, v) = item?;
                out.insert(k.value().into_owned(), walk(&v, depth + 1)?);
            }
            Ok(JsonDom::Container(JsonContainer::Object(out)))
        }
        J::LargeObject(c) => {
            let mut out = std::collections::BTreeMap::new();
            for item in c.iter() {
                let (k, v) = item?;
                out.insert(k.value().into_owned(), walk(&v, depth + 1)?);
            }
            Ok(JsonDom::Container(JsonContainer::Object(out)))
        }
        scalar => scalar.clone().parse(),
    }
}

/// JSON text of a document.
pub fn text(dom: &JsonDom) -> String {
    let mut out = String::new();
    write_dom(&mut out, dom);
    out
}

fn write_str(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON requires.
    out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
}

fn write_dom(out: &mut String, dom: &JsonDom) {
    match dom {
        JsonDom::Container(JsonContainer::Array(items)) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_dom(out, v);
            }
            out.push(']');
        }
        JsonDom::Container(JsonContainer::Object(members)) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_dom(out, v);
            }
            out.push('}');
        }
        JsonDom::Scalar(s) => match s {
            JsonScalar::Null => out.push_str("null"),
            JsonScalar::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
            JsonScalar::String(s) => write_str(out, s),
            JsonScalar::DateTime(t) => write_str(out, &format!("{t:.6}")),
            JsonScalar::Opaque(o) => write_str(out, &o.to_string()),
            JsonScalar::Number(n) => match n {
                JsonNumber::Int(i) => {
                    let _ = write!(out, "{i}");
                }
                JsonNumber::Uint(u) => {
                    let _ = write!(out, "{u}");
                }
                JsonNumber::Decimal(d) => {
                    let _ = write!(out, "{d}");
                }
                JsonNumber::Double(d) => match serde_json::Number::from_f64(*d) {
                    Some(n) => {
                        let _ = write!(out, "{n}");
                    }
                    // MySQL JSON cannot hold NaN or infinities.
                    None => out.push_str("null"),
                },
            },
        },
    }
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leg {
    Member(String),
    Index(usize),
}

/// Parses the paths MySQL writes into JSON diffs: `$`, `.key`, `."quoted"`, `[n]`.
fn parse_path(path: &str) -> Result<Vec<Leg>, String> {
    let bad = || format!("unsupported JSON path {path:?} in a partial update");
    let rest = path.trim().strip_prefix('$').ok_or_else(bad)?;
    let mut legs = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    let mut key = String::new();
                    loop {
                        match chars.next().ok_or_else(bad)? {
                            '\\' => {
                                let e = chars.next().ok_or_else(bad)?;
                                key.push(match e {
                                    'n' => '\n',
                                    't' => '\t',
                                    'r' => '\r',
                                    'b' => '\u{8}',
                                    'f' => '\u{c}',
                                    'u' => {
                                        let hex: String =
                                            (0..4).filter_map(|_| chars.next()).collect();
                                        let cp =
                                            u32::from_str_radix(&hex, 16).map_err(|_| bad())?;
                                        char::from_u32(cp).ok_or_else(bad)?
                                    }
                                    other => other,
                                });
                            }
                            '"' => break,
                            c => key.push(c),
                        }
                    }
                    legs.push(Leg::Member(key));
                } else {
                    let mut key = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == '.' || c == '[' {
                            break;
                        }
                        key.push(c);
                        chars.next();
                    }
                    if key.is_empty() || key == "*" {
                        return Err(bad());
                    }
                    legs.push(Leg::Member(key));
                }
            }
            '[' => {
                let mut n = String::new();
                loop {
                    match chars.next().ok_or_else(bad)? {
                        ']' => break,
                        c => n.push(c),
                    }
                }
                legs.push(Leg::Index(n.trim().parse().map_err(|_| bad())?));
            }
            c if c.is_whitespace() => {}
            _ => return Err(bad()),
        }
    }
    Ok(legs)
}

fn child<'a>(dom: &'a mut JsonDom, leg: &Leg, path: &str) -> Result<&'a mut JsonDom, String> {
    let missing =
        || format!("partial JSON update path {path:?} does not exist in the before image");
    match (dom, leg) {
        (JsonDom::Container(JsonContainer::Object(m)), Leg::Member(k)) => {
            m.get_mut(k).ok_or_else(missing)
        }
        (JsonDom::Container(JsonContainer::Array(a)), Leg::Index(i)) => {
            a.get_mut(*i).ok_or_else(missing)
        }
        // MySQL auto-wraps a scalar as a one-element array for `[0]`.
        (d @ JsonDom::Scalar(_), Leg::Index(0)) => Ok(d),
        _ => Err(missing()),
    }
}

/// Applies one column's diffs, in order, to its before-image document.
pub fn apply(dom: &mut JsonDom, diffs: &[JsonDiff<'_>]) -> Result<(), String> {
    for diff in diffs {
        let path = diff.path_str().into_owned();
        let legs = parse_path(&path)?;
        let new_value = match diff.value() {
            Some(v) => Some(dom_of(v)?),
            None => None,
        };
        let op = diff.operation();
        let Some((last, parents)) = legs.split_last() else {
            // `$` itself: only REPLACE makes sense.
            match (op, new_value) {
                (JsonDiffOperation::REPLACE, Some(v)) => {
                    *dom = v;
                    continue;
                }
                _ => return Err(format!("partial JSON update {op:?} on the document root")),
            }
        };
        let mut target = &mut *dom;
        for leg in parents {
            target = child(target, leg, &path)?;
        }
        let need_value = || format!("partial JSON update {op:?} at {path:?} carries no value");
        match op {
            JsonDiffOperation::REPLACE => {
                *child(target, last, &path)? = new_value.ok_or_else(need_value)?;
            }
            JsonDiffOperation::INSERT => {
                let v = new_value.ok_or_else(need_value)?;
                match (target, last) {
                    (JsonDom::Container(JsonContainer::Object(m)), Leg::Member(k)) => {
                        m.insert(k.clone(), v);
                    }
                    (JsonDom::Container(JsonContainer::Array(a)), Leg::Index(i)) => {
                        let at = (*i).min(a.len());
                        a.insert(at, v);
                    }
                    _ => {
                        return Err(format!(
                            "partial JSON update INSERT at {path:?}: parent is not a container"
                        ));
                    }
                }
            }
            JsonDiffOperation::REMOVE => match (target, last) {
                (JsonDom::Container(JsonContainer::Object(m)), Leg::Member(k)) => {
                    m.remove(k).ok_or_else(|| {
                        format!("partial JSON update REMOVE at {path:?}: no such member")
                    })?;
                }
                (JsonDom::Container(JsonContainer::Array(a)), Leg::Index(i)) if *i < a.len() => {
                    a.remove(*i);
                }
                _ => {
                    return Err(format!(
                        "partial JSON update REMOVE at {path:?}: no such element"
                    ));
                }
            },
        }
    }
    Ok(())
}

fn dom_of(value: &jsonb::Value<'_>) -> Result<JsonDom, String> {
    dom(value.clone().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        assert_eq!(parse_path("$").unwrap(), vec![]);
        assert_eq!(
            parse_path("$.a[2].\"b c\"").unwrap(),
            vec![
                Leg::Member("a".into()),
                Leg::Index(2),
                Leg::Member("b c".into())
            ]
        );
        assert!(parse_path("$.a[x]").is_err());
        assert!(parse_path("a").is_err());
        assert!(parse_path("$.*").is_err());
    }
}
