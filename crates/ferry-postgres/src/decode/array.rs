//! Array text literals (`{1,2}`, `{{"a b",NULL},{c,d}}`, `[0:1]={x,y}`).
//!
//! Follows `array_in`: optional dimension decoration, nested braces,
//! unquoted elements (whitespace-trimmed, `NULL` means null, backslash
//! escapes), quoted elements with `\"` and `\\`. Every sub-array of one
//! level must have the same length.

use ferry_core::value::{Array, Value};

use super::text::{TextError, parse_value};
use super::types::ValueKind;

fn err() -> TextError {
    TextError { type_name: "array" }
}

/// Parse an array literal whose elements are of `element`.
pub fn parse_array(
    text: &str,
    element: &ValueKind,
    element_type: &str,
    delimiter: u8,
) -> Result<Array, TextError> {
    let (bounds, body) = split_bounds(text)?;
    let mut p = Parser {
        s: body.as_bytes(),
        pos: 0,
        delimiter,
        lens: Vec::new(),
        items: Vec::new(),
        leaf_depth: None,
    };
    p.skip_ws();
    p.level(0)?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(err());
    }
    let Parser { lens, items, .. } = p;
    let empty = items.is_empty();
    let lowers = match bounds {
        Some(b) if b.len() == lens.len() || empty => b,
        Some(_) => return Err(err()),
        None => Vec::new(),
    };
    let dims = if empty {
        Vec::new()
    } else {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| (len, lowers.get(i).map_or(1, |&(lo, _)| lo)))
            .collect()
    };
    if let Some(b) = (!empty).then_some(&lowers).filter(|b| !b.is_empty()) {
        for (i, &(lo, hi)) in b.iter().enumerate() {
            if i64::from(hi) - i64::from(lo) + 1 != i64::from(lens[i]) {
                return Err(err());
            }
        }
    }
    let elements = items
        .into_iter()
        .map(|it| match it {
            None => Ok(Value::Null),
            Some(t) => parse_value(element, &t),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Array {
        element_type: element_type.to_owned(),
        dims,
        elements,
    })
}

/// Declared `(lower, upper)` bounds per dimension.
type Bounds = Vec<(i32, i32)>;

/// `[lo:hi][lo:hi]=` prefix, if any.
fn split_bounds(text: &str) -> Result<(Option<Bounds>, &str), TextError> {
    let t = text.trim_start();
    if !t.starts_with('[') {
        return Ok((None, t));
    }
    let (decl, body) = t.split_once('=').ok_or_else(err)?;
    let mut bounds = Vec::new();
    for part in decl.trim().split(']').filter(|p| !p.is_empty()) {
        let inner = part.strip_prefix('[').ok_or_else(err)?;
        let (lo, hi) = inner.split_once(':').ok_or_else(err)?;
        let lo: i32 = lo.trim().parse().map_err(|_| err())?;
        let hi: i32 = hi.trim().parse().map_err(|_| err())?;
        bounds.push((lo, hi));
    }
    Ok((Some(bounds), body))
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    delimiter: u8,
    /// Length of each dimension, set by the first sub-array at that level.
    lens: Vec<i32>,
    items: Vec<Option<String>>,
    /// Nesting depth of the elements, fixed by the first one.
    leaf_depth: Option<usize>,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn level(&mut self, depth: usize) -> Result<(), TextError> {
        if depth > 6 || self.peek() != Some(b'{') {
            return Err(err());
        }
        self.pos += 1;
        self.skip_ws();
        let mut count = 0i32;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return if depth == 0 { Ok(()) } else { Err(err()) };
        }
        loop {
            self.skip_ws();
            if self.peek() == Some(b'{') {
                if self.leaf_depth.is_some_and(|leaf| leaf <= depth) {
                    return Err(err());
                }
                self.level(depth + 1)?;
            } else {
                if self.leaf_depth.is_some_and(|leaf| leaf != depth) {
                    return Err(err());
                }
                self.leaf_depth = Some(depth);
                let item = self.element()?;
                self.items.push(item);
            }
            count += 1;
            self.skip_ws();
            match self.peek() {
                Some(b'}') => break,
                Some(d) if d == self.delimiter => self.pos += 1,
                _ => return Err(err()),
            }
        }
        self.pos += 1;
        self.check_len(depth, count)
    }

    fn check_len(&mut self, depth: usize, count: i32) -> Result<(), TextError> {
        if self.lens.len() <= depth {
            self.lens.resize(depth + 1, -1);
        }
        match self.lens[depth] {
            -1 => self.lens[depth] = count,
            n if n == count => {}
            _ => return Err(err()),
        }
        Ok(())
    }

    /// One element; `None` for an unquoted NULL.
    fn element(&mut self) -> Result<Option<String>, TextError> {
        let mut out = Vec::new();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            loop {
                match self.peek().ok_or_else(err)? {
                    b'"' => break,
                    b'\\' => {
                        self.pos += 1;
                        out.push(self.peek().ok_or_else(err)?);
                    }
                    b => out.push(b),
                }
                self.pos += 1;
            }
            self.pos += 1;
            return String::from_utf8(out).map(Some).map_err(|_| err());
        }
        let mut had_escape = false;
        while let Some(b) = self.peek() {
            if b == self.delimiter || b == b'}' || b == b'{' || b == b'"' {
                break;
            }
            if b == b'\\' {
                self.pos += 1;
                out.push(self.peek().ok_or_else(err)?);
                had_escape = true;
            } else {
                out.push(b);
            }
            self.pos += 1;
        }
        while out.last().is_some_and(|b| b.is_ascii_whitespace()) {
            out.pop();
        }
        if out.is_empty() && !had_escape {
            return Err(err());
        }
        let s = String::from_utf8(out).map_err(|_| err())?;
        if !had_escape && s.eq_ignore_ascii_case("null") {
            return Ok(None);
        }
        Ok(Some(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(text: &str, kind: ValueKind, name: &str) -> Array {
        parse_array(text, &kind, name, b',').unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn literals_round_trip() {
        for text in [
            "{1,2,3}",
            "{{1,2},{3,NULL}}",
            "{}",
            "[0:1]={7,8}",
            "[0:1][1:2]={{1,2},{3,4}}",
        ] {
            assert_eq!(arr(text, ValueKind::Int4, "int4").to_pg_text(), text);
        }
        for text in [
            r#"{"a b",NULL,"NULL","q\"\\",""}"#,
            "{x,y}",
            r#"{"{}",","}"#,
        ] {
            assert_eq!(arr(text, ValueKind::Text, "text").to_pg_text(), text);
        }
    }

    #[test]
    fn elements_are_typed() {
        let a = arr("{{1,2},{3,NULL}}", ValueKind::Int4, "int4");
        assert_eq!(a.dims, vec![(2, 1), (2, 1)]);
        assert_eq!(
            a.elements,
            vec![Value::Int4(1), Value::Int4(2), Value::Int4(3), Value::Null]
        );
        let t = arr(r#"{ a\,b , "c" }"#, ValueKind::Text, "text");
        assert_eq!(
            t.elements,
            vec![Value::Text("a,b".into()), Value::Text("c".into())]
        );
    }

    #[test]
    fn malformed_literals_are_errors() {
        for bad in [
            "",
            "{",
            "}",
            "{1,2",
            "{1,,2}",
            "{{1,2},{3}}",
            "{{1},2}",
            "{1}x",
            "[0:5]={1,2}",
            "{\"a}",
            "{a\\",
            "{{}}",
            "[0:1={1}",
            "{1,{2}}",
            "{{1},{{2}}}",
        ] {
            assert!(
                parse_array(bad, &ValueKind::Text, "text", b',').is_err(),
                "{bad:?}"
            );
        }
        assert!(parse_array("{x}", &ValueKind::Int4, "int4", b',').is_err());
    }
}
