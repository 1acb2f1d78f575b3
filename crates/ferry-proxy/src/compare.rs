//! Comparing the answers of the source and the target to one statement.
//!
//! An [`Answer`] is built from the backend frames of one batch (up to its
//! ReadyForQuery): the columns of each RowDescription (name, type, format;
//! type OIDs of user-defined types differ between servers by nature and are
//! not compared), every DataRow body as sent, the CommandComplete tags and
//! the first error's SQLSTATE. Rows are compared byte for byte — both sides
//! run the same statement with the same session settings and formats, so
//! equal values have equal bytes — as a sequence when the statement has an
//! `ORDER BY`, else as a multiset. Answers larger than [`MAX_ANSWER`] are
//! not mirrored (memory stays bounded).

use bytes::Bytes;

use crate::frame::{self, Frame};

/// Largest answer kept for comparison (bytes of rows).
pub const MAX_ANSWER: usize = 1 << 20;
/// OIDs from here on are user objects, different on every server.
const FIRST_NORMAL_OID: u32 = 16_384;

/// One side's answer to a statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// (name, built-in type OID or 0, format) per column.
    pub columns: Vec<(String, u32, i16)>,
    pub rows: Vec<Bytes>,
    pub tags: Vec<String>,
    /// SQLSTATE and message of the first error.
    pub error: Option<(String, String)>,
    pub bytes: usize,
    /// More than [`MAX_ANSWER`]: not comparable.
    pub too_big: bool,
}

impl Answer {
    /// Take in one backend frame.
    pub fn absorb(&mut self, f: &Frame) {
        match f.tag {
            b'T' => self.columns.extend(row_description(f.body())),
            b'D' => {
                self.bytes += f.raw.len();
                if self.bytes > MAX_ANSWER {
                    self.too_big = true;
                    self.rows.clear();
                } else if !self.too_big {
                    self.rows.push(f.raw.slice(5..));
                }
            }
            b'C' => {
                let tag = frame::cstr(f.body()).map_or("", |(s, _)| s);
                self.tags.push(tag.to_owned());
            }
            b'E' if self.error.is_none() => {
                self.error = Some((
                    frame::error_code(f),
                    frame::error_field(f, b'M').unwrap_or_default(),
                ));
            }
            _ => {}
        }
    }

    pub fn from_frames<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Answer {
        let mut a = Answer::default();
        for f in frames {
            a.absorb(f);
        }
        a
    }
}

fn row_description(body: &[u8]) -> Vec<(String, u32, i16)> {
    let mut out = Vec::new();
    let Some(n) = body.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
        return out;
    };
    let mut rest = &body[2..];
    for _ in 0..n.max(0) {
        let Some((name, r)) = frame::cstr(rest) else {
            break;
        };
        if r.len() < 18 {
            break;
        }
        let oid = u32::from_be_bytes([r[6], r[7], r[8], r[9]]);
        let format = i16::from_be_bytes([r[16], r[17]]);
        let oid = if oid >= FIRST_NORMAL_OID { 0 } else { oid };
        out.push((name.to_owned(), oid, format));
        rest = &r[18..];
    }
    out
}

/// How two answers relate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diff {
    Equal,
    /// The target failed where the source did not (SQLSTATE and message).
    TargetError(String),
    /// Answers differ; what differed (no row values).
    Differs(String),
    /// Not comparable (too big).
    Skip,
}

/// The verdict on a mirrored statement after any re-checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Equal,
    /// Differed at first, equal once the target had caught up.
    Lag,
    Mismatch(String),
    TargetError(String),
    /// Still changing after every re-check: neither equal nor a mismatch.
    Unsettled,
}

/// Compare the source's answer with the target's.
pub fn compare(ordered: bool, source: &Answer, target: &Answer) -> Diff {
    if source.too_big || target.too_big {
        return Diff::Skip;
    }
    match (&source.error, &target.error) {
        (None, Some((code, msg))) => return Diff::TargetError(format!("{code}: {msg}")),
        (Some((s, _)), Some((t, _))) if s == t => return Diff::Equal,
        (Some((s, _)), Some((t, msg))) => {
            return Diff::Differs(format!("errors differ: source {s}, target {t}: {msg}"));
        }
        (Some((s, _)), None) => {
            return Diff::Differs(format!("the source failed ({s}), the target answered"));
        }
        (None, None) => {}
    }
    if source.columns != target.columns {
        return Diff::Differs(format!(
            "columns differ: source {}, target {}",
            describe(&source.columns),
            describe(&target.columns)
        ));
    }
    if ordered {
        if source.rows != target.rows {
            let at = source
                .rows
                .iter()
                .zip(&target.rows)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let mut s = source.rows.clone();
            let mut t = target.rows.clone();
            s.sort();
            t.sort();
            let what = if s == t { "order" } else { "rows" };
            return Diff::Differs(format!("{what} differ from row {}", at + 1));
        }
        return Diff::Equal;
    }
    let mut s = source.rows.clone();
    let mut t = target.rows.clone();
    s.sort();
    t.sort();
    if s != t {
        let only_source = s.iter().filter(|r| t.binary_search(r).is_err()).count();
        let only_target = t.iter().filter(|r| s.binary_search(r).is_err()).count();
        return Diff::Differs(format!(
            "rows differ: {only_source} only on the source, {only_target} only on the target"
        ));
    }
    if source.tags != target.tags {
        return Diff::Differs(format!(
            "row counts differ: source {:?}, target {:?}",
            source.tags, target.tags
        ));
    }
    Diff::Equal
}

fn describe(cols: &[(String, u32, i16)]) -> String {
    cols.iter()
        .map(|(n, oid, _)| format!("{n}:{oid}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;

    fn desc(cols: &[(&str, u32)]) -> Frame {
        let mut b = BytesMut::new();
        b.put_i16(cols.len() as i16);
        for (n, oid) in cols {
            b.put_slice(n.as_bytes());
            b.put_u8(0);
            b.put_i32(1234);
            b.put_i16(1);
            b.put_u32(*oid);
            b.put_i16(4);
            b.put_i32(-1);
            b.put_i16(0);
        }
        Frame::new(b'T', &b)
    }

    fn row(v: &str) -> Frame {
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i32(v.len() as i32);
        b.put_slice(v.as_bytes());
        Frame::new(b'D', &b)
    }

    fn answer(cols: &[(&str, u32)], rows: &[&str]) -> Answer {
        let mut frames = vec![desc(cols)];
        frames.extend(rows.iter().map(|r| row(r)));
        frames.push(Frame::new(
            b'C',
            format!("SELECT {}\0", rows.len()).as_bytes(),
        ));
        Answer::from_frames(&frames)
    }

    #[test]
    fn answers_compare_by_rows_order_types_and_errors() {
        let a = answer(&[("id", 23)], &["1", "2"]);
        let swapped = answer(&[("id", 23)], &["2", "1"]);
        assert_eq!(compare(false, &a, &swapped), Diff::Equal);
        assert!(matches!(compare(true, &a, &swapped), Diff::Differs(w) if w.starts_with("order")));
        let other = answer(&[("id", 23)], &["1", "3"]);
        assert!(
            matches!(compare(false, &a, &other), Diff::Differs(w) if w.contains("1 only on the source"))
        );
        let typed = answer(&[("id", 20)], &["1", "2"]);
        assert!(matches!(compare(false, &a, &typed), Diff::Differs(w) if w.contains("columns")));
        // User-defined type OIDs differ between servers and are ignored.
        let enum_a = answer(&[("mood", 70_001)], &["ok"]);
        let enum_b = answer(&[("mood", 90_777)], &["ok"]);
        assert_eq!(compare(false, &enum_a, &enum_b), Diff::Equal);
        let err = Answer::from_frames(&[frame::error_response("ERROR", "42P01", "no table")]);
        assert!(matches!(compare(false, &a, &err), Diff::TargetError(w) if w.contains("42P01")));
        assert_eq!(compare(false, &err, &err), Diff::Equal);
    }

    #[test]
    fn big_answers_are_skipped_and_truncated_descriptions_do_not_panic() {
        let mut a = Answer::default();
        let big = row(&"x".repeat(MAX_ANSWER / 2));
        for _ in 0..3 {
            a.absorb(&big);
        }
        assert!(a.too_big && a.rows.is_empty());
        assert_eq!(compare(false, &a, &a), Diff::Skip);
        assert!(row_description(&[0, 5, b'a']).is_empty());
        assert!(row_description(&[]).is_empty());
    }
}
