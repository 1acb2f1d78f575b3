//! One value of a console result, encoded in the format the client asked
//! for: text for `psql` and the simple protocol, binary where a driver
//! binds binary results (tokio-postgres does for every column).

use std::error::Error;
use std::time::SystemTime;

use bytes::{BufMut, BytesMut};
use pgwire::types::ToSqlText;
use pgwire::types::format::FormatOptions;
use postgres_types::{IsNull, ToSql, Type, to_sql_checked};

/// A typed, nullable value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    /// `timestamptz`; text form RFC 3339 in UTC, as `ferry status` shows it.
    Time(Option<SystemTime>),
}

impl Cell {
    /// Whether this cell may be sent in a column of type `ty`.
    pub fn fits(&self, ty: &Type) -> bool {
        matches!(
            (self, ty),
            (Cell::Text(_), &Type::TEXT)
                | (Cell::Int(_), &Type::INT8)
                | (Cell::Float(_), &Type::FLOAT8)
                | (Cell::Bool(_), &Type::BOOL)
                | (Cell::Time(_), &Type::TIMESTAMPTZ)
        )
    }

    fn is_null(&self) -> bool {
        match self {
            Cell::Text(v) => v.is_none(),
            Cell::Int(v) => v.is_none(),
            Cell::Float(v) => v.is_none(),
            Cell::Bool(v) => v.is_none(),
            Cell::Time(v) => v.is_none(),
        }
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for Cell {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Cell::Text(v) => v.to_sql(ty, out),
            Cell::Int(v) => v.to_sql(ty, out),
            Cell::Float(v) => v.to_sql(ty, out),
            Cell::Bool(v) => v.to_sql(ty, out),
            Cell::Time(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::TEXT | Type::INT8 | Type::FLOAT8 | Type::BOOL | Type::TIMESTAMPTZ
        )
    }

    to_sql_checked!();
}

impl ToSqlText for Cell {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _options: &FormatOptions,
    ) -> Result<IsNull, BoxError> {
        if self.is_null() {
            return Ok(IsNull::Yes);
        }
        let text = match self {
            Cell::Text(Some(v)) => v.clone(),
            Cell::Int(Some(v)) => v.to_string(),
            Cell::Float(Some(v)) => float_text(*v),
            Cell::Bool(Some(v)) => if *v { "t" } else { "f" }.to_owned(),
            Cell::Time(Some(t)) => ferry_monitor::timestamp::format(*t),
            _ => return Ok(IsNull::Yes),
        };
        out.put_slice(text.as_bytes());
        Ok(IsNull::No)
    }
}

/// PostgreSQL's text form of a float8 (`Infinity`, `NaN`, shortest digits).
fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(c: &Cell) -> Option<String> {
        let mut out = BytesMut::new();
        match c
            .to_sql_text(&Type::TEXT, &mut out, &FormatOptions::default())
            .unwrap()
        {
            IsNull::Yes => None,
            IsNull::No => Some(String::from_utf8(out.to_vec()).unwrap()),
        }
    }

    #[test]
    fn text_forms_are_postgresql_s() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        let cases = [
            (Cell::Text(Some("a b".into())), Some("a b")),
            (Cell::Int(Some(-7)), Some("-7")),
            (Cell::Float(Some(1.25)), Some("1.25")),
            (Cell::Float(Some(f64::INFINITY)), Some("Infinity")),
            (Cell::Bool(Some(true)), Some("t")),
            (Cell::Bool(Some(false)), Some("f")),
            (Cell::Time(Some(t)), Some("1970-01-01T00:00:01.500Z")),
            (Cell::Text(None), None),
            (Cell::Time(None), None),
        ];
        for (cell, want) in cases {
            assert_eq!(text_of(&cell).as_deref(), want, "{cell:?}");
        }
    }

    #[test]
    fn binary_forms_are_the_driver_types() {
        let mut out = BytesMut::new();
        Cell::Int(Some(258)).to_sql(&Type::INT8, &mut out).unwrap();
        assert_eq!(out.as_ref(), &258i64.to_be_bytes());
        let mut out = BytesMut::new();
        assert!(matches!(
            Cell::Float(None).to_sql(&Type::FLOAT8, &mut out).unwrap(),
            IsNull::Yes
        ));
    }
}
