//! Table identity and table schemas.
//!
//! A [`TableSchema`] describes one source table as ferry carries it: its
//! columns in source order with the source type and the PostgreSQL type the
//! target uses, nullability, the key columns changes are matched on, and the
//! replica identity (what a source sends as the old row of updates/deletes).

use std::fmt;

/// `schema.table`, unquoted parts. Displayed quoted where needed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub schema: String,
    pub name: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableId {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."table"`, always quoted: safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Parse the text form: `schema.table` where either part may be
    /// double-quoted (`""` for a quote), as [`Display`](fmt::Display) writes
    /// it, so every name round-trips: `"Sales"."Order Items"`,
    /// `public."v1.2_data"`. Unquoted parts are taken literally (no case
    /// folding) and cannot contain a dot or a quote. `None` when malformed.
    pub fn parse(s: &str) -> Option<TableId> {
        let (schema, rest) = parse_ident(s)?;
        let (name, rest) = parse_ident(rest.strip_prefix('.')?)?;
        rest.is_empty().then(|| TableId::new(schema, name))
    }
}

/// Parse `schema.table.column` (each part as in [`TableId::parse`]).
pub fn parse_column(s: &str) -> Option<(TableId, String)> {
    let (schema, rest) = parse_ident(s)?;
    let (name, rest) = parse_ident(rest.strip_prefix('.')?)?;
    let (column, rest) = parse_ident(rest.strip_prefix('.')?)?;
    rest.is_empty()
        .then(|| (TableId::new(schema, name), column))
}

/// One identifier at the start of `s` and the rest after it.
fn parse_ident(s: &str) -> Option<(String, &str)> {
    let Some(body) = s.strip_prefix('"') else {
        let end = s.find(['.', '"']).unwrap_or(s.len());
        return (end > 0).then(|| (s[..end].to_owned(), &s[end..]));
    };
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            out.push(c);
        } else if chars.peek().is_some_and(|&(_, n)| n == '"') {
            out.push('"');
            chars.next();
        } else {
            return (!out.is_empty()).then(|| (out, &body[i + 1..]));
        }
    }
    None
}

impl fmt::Display for TableId {
    /// `schema.table`, quoting a part only when it needs it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

/// An SQL string literal of `s` for PostgreSQL, read the same whatever
/// `standard_conforming_strings` is: `'…'` with `'` doubled, or `E'…'`
/// with `\` doubled too when `s` holds a backslash.
pub fn quote_literal(s: &str) -> String {
    let quoted = s.replace('\'', "''");
    match s.contains('\\') {
        true => format!("E'{}'", quoted.replace('\\', "\\\\")),
        false => format!("'{quoted}'"),
    }
}

/// Quote an SQL identifier the standard way (PostgreSQL, SQLite): wrap it in
/// `"` and double every embedded `"`. The one identifier quoting in ferry;
/// MySQL/MariaDB use [`quote_ident_with`] and a backtick.
pub fn quote_ident(ident: &str) -> String {
    quote_ident_with(ident, '"')
}

/// Quote an SQL identifier with `quote` (`'"'` for PostgreSQL and SQLite,
/// `` '`' `` for MySQL/MariaDB), doubling every embedded `quote`, so any
/// name, even an empty one, is safe to splice into SQL.
pub fn quote_ident_with(ident: &str, quote: char) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push(quote);
    for c in ident.chars() {
        if c == quote {
            out.push(quote);
        }
        out.push(c);
    }
    out.push(quote);
    out
}

fn display_ident(ident: &str) -> String {
    let plain = !ident.is_empty()
        && ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        ident.to_owned()
    } else {
        quote_ident(ident)
    }
}

/// What a source sends as the "old" row of updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// The primary key columns.
    Default,
    /// A chosen unique index.
    Index,
    /// Every column (PostgreSQL REPLICA IDENTITY FULL, MySQL full row image).
    Full,
    /// Nothing: updates and deletes cannot be matched on the target.
    Nothing,
}

impl ReplicaIdentity {
    /// PostgreSQL's `pg_class.relreplident` letter.
    pub fn from_pg_char(c: u8) -> Option<Self> {
        Some(match c {
            b'd' => ReplicaIdentity::Default,
            b'i' => ReplicaIdentity::Index,
            b'f' => ReplicaIdentity::Full,
            b'n' => ReplicaIdentity::Nothing,
            _ => return None,
        })
    }
}

impl fmt::Display for ReplicaIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicaIdentity::Default => "default",
            ReplicaIdentity::Index => "index",
            ReplicaIdentity::Full => "full",
            ReplicaIdentity::Nothing => "nothing",
        })
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type as the source names it (`int unsigned`, `character varying(40)`).
    pub source_type: String,
    /// The PostgreSQL type the target column has (`bigint`, `numeric(20)`, `text[]`).
    pub pg_type: String,
    /// PostgreSQL type OID of `pg_type` when known (PostgreSQL sources).
    pub type_oid: Option<u32>,
    pub nullable: bool,
}

/// A table as ferry carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub id: TableId,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the key changes are matched on; empty when
    /// the table has no primary key (then rows are matched on all columns).
    pub key: Vec<usize>,
    pub replica_identity: ReplicaIdentity,
}

impl TableSchema {
    /// `(k1, k2)=(v1, v2)`: the key of `row` (values in column order) as
    /// errors name it; a value the row lacks prints as `?`.
    pub fn key_text(&self, row: &[crate::Value]) -> String {
        let names: Vec<&str> = self.key_names().collect();
        let values: Vec<String> = self
            .key
            .iter()
            .map(|&i| {
                row.get(i)
                    .and_then(crate::Value::to_pg_text)
                    .unwrap_or_else(|| "?".into())
            })
            .collect();
        format!("({})=({})", names.join(", "), values.join(", "))
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn has_key(&self) -> bool {
        !self.key.is_empty()
    }

    /// Key column names in key order.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.key.iter().map(|&i| self.columns[i].name.as_str())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn literals_quote_quotes_and_backslashes() {
        use super::quote_literal;
        assert_eq!(quote_literal("film"), "'film'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        // E'' reads a backslash the same with standard_conforming_strings
        // on or off.
        assert_eq!(quote_literal(r"a\b'c"), r"E'a\\b''c'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn table_ids_round_trip_through_their_text_form() {
        let names = [
            ("public", "orders", "public.orders"),
            ("Sales", "Order Items", "\"Sales\".\"Order Items\""),
            ("public", "v1.2_data", "public.\"v1.2_data\""),
            ("we\"ird", "a.\"b\" c", "\"we\"\"ird\".\"a.\"\"b\"\" c\""),
            ("s p", "MixedCase", "\"s p\".\"MixedCase\""),
        ];
        for (schema, name, text) in names {
            let id = TableId::new(schema, name);
            assert_eq!(id.to_string(), text);
            assert_eq!(TableId::parse(text), Some(id.clone()), "{text}");
            assert_eq!(TableId::parse(&id.quoted()), Some(id), "{text}");
        }
        // Unquoted parts are literal; malformed text is refused.
        assert_eq!(
            TableId::parse("Sales.Orders"),
            Some(TableId::new("Sales", "Orders"))
        );
        for bad in [
            "", "orders", "a.b.c", ".t", "s.", "\"s.t", "\"\".t", "s.\"t\"x", "s.t\"",
        ] {
            assert_eq!(TableId::parse(bad), None, "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn table_ids_quote_when_needed() {
        assert_eq!(TableId::new("public", "film").to_string(), "public.film");
        assert_eq!(
            TableId::new("public", "InvoiceLine").to_string(),
            "public.\"InvoiceLine\""
        );
        assert_eq!(TableId::new("a\"b", "c").quoted(), "\"a\"\"b\".\"c\"");
    }

    #[test]
    fn identifiers_quote_with_embedded_quotes_doubled() {
        let cases = [
            ("orders", "\"orders\"", "`orders`"),
            ("", "\"\"", "``"),
            ("a\"b", "\"a\"\"b\"", "`a\"b`"),
            ("a`b", "\"a`b\"", "`a``b`"),
            ("\"\"", "\"\"\"\"\"\"", "`\"\"`"),
            ("``", "\"``\"", "``````"),
            ("Order Items.v1", "\"Order Items.v1\"", "`Order Items.v1`"),
            ("naïve_表\"ß", "\"naïve_表\"\"ß\"", "`naïve_表\"ß`"),
            (
                "x'; DROP TABLE t; --",
                "\"x'; DROP TABLE t; --\"",
                "`x'; DROP TABLE t; --`",
            ),
        ];
        for (name, double, backtick) in cases {
            assert_eq!(quote_ident(name), double, "{name:?}");
            assert_eq!(quote_ident_with(name, '"'), double, "{name:?}");
            assert_eq!(quote_ident_with(name, '`'), backtick, "{name:?}");
        }
    }

    #[test]
    fn quoted_identifiers_parse_back_to_the_name() {
        for name in ["t", "a\"b", "\"", "\"\"x\"", "naïve 表", "a.b"] {
            let id = TableId::new(name, name);
            assert_eq!(
                TableId::parse(&format!("{}.{}", quote_ident(name), quote_ident(name))),
                Some(id),
                "{name:?}"
            );
        }
    }
}
