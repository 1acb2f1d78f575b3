//! Which statements may be mirrored to (or served by) the target, and the
//! fingerprint that groups statements differing only in constants.
//!
//! [`tokens`] is a small SQL lexer (comments, `'…'`, `E'…'`, dollar quotes,
//! quoted identifiers, numbers, `$n` parameters). [`classify`] is
//! deliberately conservative: a statement is read-only only when it is one
//! `SELECT`/`WITH`/`VALUES`/`TABLE` statement with no data-modifying or
//! locking keyword (`INSERT`, `UPDATE`, `DELETE`, `MERGE`, `INTO`, `FOR`,
//! …), calls only functions on an allow-list of pure built-ins (a function
//! the proxy cannot vouch for may write, or answer differently on each
//! server), reads no catalog (`pg_*`, `information_schema`, which differ
//! between servers by nature) and no per-server value (`now()`,
//! `current_user`, …). A `LIMIT` without `ORDER BY` is not mirrored either:
//! two servers may legitimately pick different rows.

/// One lexical token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Keyword or unquoted identifier, lowercased.
    Word(String),
    /// A quoted identifier, as written inside the quotes.
    Quoted(String),
    /// A string, number or `$n` parameter.
    Constant,
    Punct(char),
}

/// Whether a comment (`--` or `/*`) starts at `i`.
fn is_comment(b: &[u8], i: usize) -> bool {
    matches!(
        (b[i], b.get(i + 1)),
        (b'-', Some(b'-')) | (b'/', Some(b'*'))
    )
}

/// The index just past the comment starting at `i` (a line comment ends
/// before its newline; block comments nest, as in PostgreSQL).
fn skip_comment(b: &[u8], mut i: usize) -> usize {
    if b[i] == b'-' {
        while i < b.len() && b[i] != b'\n' {
            i += 1;
        }
        return i;
    }
    let mut depth = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Lex `sql`; comments are dropped.
pub fn tokens(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'-' | b'/' if is_comment(b, i) => i = skip_comment(b, i),
            b'\'' => {
                i = skip_string(b, i + 1, false);
                out.push(Token::Constant);
            }
            b'e' | b'E' if b.get(i + 1) == Some(&b'\'') => {
                i = skip_string(b, i + 2, true);
                out.push(Token::Constant);
            }
            b'"' => {
                let start = i + 1;
                i = start;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                out.push(Token::Quoted(sql[start..i.min(b.len())].to_owned()));
                i += 1;
            }
            b'$' => {
                // `$1` parameter or `$tag$ … $tag$` string.
                let mut j = i + 1;
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    out.push(Token::Constant);
                    i = j;
                    continue;
                }
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') {
                    let tag = &sql[i..=j];
                    let body = j + 1;
                    i = sql[body..]
                        .find(tag)
                        .map_or(b.len(), |p| body + p + tag.len());
                    out.push(Token::Constant);
                } else {
                    out.push(Token::Punct('$'));
                    i += 1;
                }
            }
            _ if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                out.push(Token::Constant);
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                let word = &sql[start..i];
                out.push(Token::Word(if word.is_ascii() {
                    word.to_ascii_lowercase()
                } else {
                    word.to_lowercase()
                }));
            }
            _ => {
                out.push(Token::Punct(c as char));
                i += 1;
            }
        }
    }
    out
}

fn skip_string(b: &[u8], mut i: usize, backslash: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The statements of a (simple-protocol) query text, split at `;` outside
/// strings, quoted identifiers, dollar quotes and comments; empty ones
/// dropped, each trimmed.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'-' | b'/' if is_comment(b, i) => i = skip_comment(b, i),
            b'\'' => {
                let backslash = i > 0 && b[i - 1].eq_ignore_ascii_case(&b'e');
                i = skip_string(b, i + 1, backslash);
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') && !b[i + 1].is_ascii_digit() {
                    let tag = &sql[i..=j];
                    let body = j + 1;
                    i = sql[body..]
                        .find(tag)
                        .map_or(b.len(), |p| body + p + tag.len());
                } else {
                    i = j;
                }
            }
            b';' => {
                out.push(&sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push(&sql[start.min(b.len())..]);
    out.retain(|s| !s.trim().is_empty());
    out.iter_mut().for_each(|s| *s = s.trim());
    out
}

/// What the proxy may do with a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Safe to run on the target too; `ordered` when it has a top-level
    /// `ORDER BY` (row order is then part of the answer).
    ReadOnly { ordered: bool },
    /// Anything else: goes to the source only.
    Other,
}

/// Keywords that make a statement a write, a lock or not comparable.
const REFUSED_WORDS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "merge",
    "into",
    "for",
    "lock",
    "copy",
    "call",
    "do",
    "current_timestamp",
    "current_time",
    "current_date",
    "localtime",
    "localtimestamp",
    "current_user",
    "session_user",
    "user",
    "current_role",
    "current_schema",
    "current_catalog",
    "tablesample",
    "information_schema",
    "set",
    "notify",
    "listen",
];

/// Words that may stand before `(` without being a function call the
/// proxy must vouch for: syntax, type names and pure built-ins.
const ALLOWED_CALLS: &[&str] = &[
    // syntax
    "in",
    "exists",
    "any",
    "all",
    "some",
    "values",
    "as",
    "over",
    "filter",
    "within",
    "cast",
    "row",
    "array",
    "from",
    "join",
    "on",
    "using",
    "where",
    "and",
    "or",
    "not",
    "select",
    "by",
    "lateral",
    "with",
    "union",
    "intersect",
    "except",
    "having",
    "when",
    "then",
    "else",
    "is",
    "distinct",
    "between",
    "like",
    "ilike",
    "case",
    "group",
    "partition",
    "limit",
    "offset",
    "table",
    "asc",
    "desc",
    "nulls",
    "first",
    "last",
    "materialized",
    "recursive",
    // types
    "numeric",
    "decimal",
    "varchar",
    "char",
    "character",
    "varying",
    "int",
    "integer",
    "bigint",
    "smallint",
    "timestamp",
    "timestamptz",
    "time",
    "timetz",
    "interval",
    "float",
    "double",
    "precision",
    "bit",
    "text",
    "date",
    "real",
    "boolean",
    "bool",
    "uuid",
    "jsonb",
    "json",
    "bytea",
    // pure built-ins
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "lower",
    "upper",
    "length",
    "char_length",
    "octet_length",
    "abs",
    "round",
    "floor",
    "ceil",
    "ceiling",
    "trunc",
    "mod",
    "trim",
    "ltrim",
    "rtrim",
    "btrim",
    "substr",
    "substring",
    "concat",
    "concat_ws",
    "position",
    "replace",
    "left",
    "right",
    "extract",
    "date_trunc",
    "date_part",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "md5",
    "sign",
    "split_part",
    "strpos",
    "starts_with",
    "lpad",
    "rpad",
    "initcap",
    "reverse",
    "repeat",
    "row_number",
    "rank",
    "dense_rank",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "jsonb_build_object",
    "json_build_object",
    "to_char",
    "array_length",
    "cardinality",
    "unnest",
    "generate_series",
    "power",
    "sqrt",
    "exp",
    "ln",
    "log",
    "width_bucket",
];

/// Whether `sql` may be read-only at all: its first word (after
/// whitespace, comments are not skipped) is `select`, `with`, `values` or
/// `table`, or it starts with `(` or a comment. A cheap test that spares
/// lexing writes.
pub fn may_read(sql: &str) -> bool {
    let t = sql.trim_start();
    if t.starts_with('(') || t.starts_with("--") || t.starts_with("/*") {
        return true;
    }
    let word = first_word(t);
    ["select", "with", "values", "table"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

/// The leading ASCII letters of `s` (no allocation).
fn first_word(s: &str) -> &str {
    let end = s
        .bytes()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(s.len());
    &s[..end]
}

/// Classify one statement (see the module doc).
pub fn classify(sql: &str) -> Class {
    if !may_read(sql) {
        return Class::Other;
    }
    classify_tokens(&tokens(sql))
}

/// [`classify`] of a statement already lexed (a caller that also
/// normalizes it lexes once).
pub fn classify_tokens(toks: &[Token]) -> Class {
    let mut toks: &[Token] = toks;
    while let Some(Token::Punct(';')) = toks.last() {
        toks = &toks[..toks.len() - 1];
    }
    let first = toks.iter().find(|t| !matches!(t, Token::Punct('(')));
    if !matches!(first, Some(Token::Word(w)) if ["select", "with", "values", "table"].contains(&w.as_str()))
    {
        return Class::Other;
    }
    let (mut depth, mut ordered, mut limited) = (0i32, false, false);
    for (i, t) in toks.iter().enumerate() {
        match t {
            Token::Punct(';') => return Class::Other,
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            Token::Word(w) => {
                if REFUSED_WORDS.contains(&w.as_str()) || w.starts_with("pg_") {
                    return Class::Other;
                }
                let next_paren = matches!(toks.get(i + 1), Some(Token::Punct('(')));
                if next_paren && !ALLOWED_CALLS.contains(&w.as_str()) {
                    return Class::Other;
                }
                if depth == 0 {
                    match w.as_str() {
                        "order" if matches!(toks.get(i + 1), Some(Token::Word(b)) if b == "by") => {
                            ordered = true;
                        }
                        "limit" | "offset" | "fetch" => limited = true,
                        _ => {}
                    }
                }
            }
            Token::Quoted(q) if q.starts_with("pg_") => return Class::Other,
            Token::Quoted(_) if matches!(toks.get(i + 1), Some(Token::Punct('('))) => {
                return Class::Other;
            }
            _ => {}
        }
    }
    if limited && !ordered {
        return Class::Other;
    }
    Class::ReadOnly { ordered }
}

/// The statement with constants and parameters replaced by `?`, words
/// lowercased and whitespace normalized: the key statistics are kept under.
pub fn normalize(sql: &str) -> String {
    normalize_tokens(&tokens(sql))
}

/// [`normalize`] of a statement already lexed.
pub fn normalize_tokens(toks: &[Token]) -> String {
    let mut out = String::with_capacity(toks.len() * 6);
    for t in toks {
        let piece = match t {
            Token::Word(w) => w.as_str(),
            Token::Quoted(q) => {
                out.push_str(" \"");
                out.push_str(q);
                out.push('"');
                continue;
            }
            Token::Constant => "?",
            Token::Punct(';') => continue,
            Token::Punct(c) => {
                out.push(' ');
                out.push(*c);
                continue;
            }
        };
        out.push(' ');
        out.push_str(piece);
    }
    if out.starts_with(' ') {
        out.remove(0);
    }
    out
}

/// A short stable id of a normalized statement (16 hex digits of SHA-256).
pub fn fingerprint(normalized: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, normalized.as_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(16);
    for b in &d.as_ref()[..8] {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// Whether a statement changes session state that must follow the session
/// to another backend (`SET`, `RESET`, not `SET LOCAL` or `SET
/// TRANSACTION`, which end with their transaction).
pub fn session_setting(sql: &str) -> bool {
    let toks = tokens(sql);
    match toks.as_slice() {
        [Token::Word(a), Token::Word(b), ..] if a == "set" => {
            let characteristics =
                matches!(toks.get(2), Some(Token::Word(c)) if c == "characteristics");
            !(matches!(b.as_str(), "local" | "transaction") || (b == "session" && characteristics))
        }
        [Token::Word(a), ..] => a == "reset",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_conservative() {
        let ro = |o| Class::ReadOnly { ordered: o };
        let cases = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
                ro(false),
            ),
            ("select * from t where id in (1,2,3) order by id", ro(true)),
            ("(SELECT 1)", ro(false)),
            (
                "WITH x AS (SELECT a FROM t) SELECT count(*) FROM x",
                ro(false),
            ),
            ("SELECT * FROM t ORDER BY id LIMIT 5", ro(true)),
            ("SELECT * FROM t LIMIT 5", Class::Other),
            ("SELECT * FROM t FOR UPDATE", Class::Other),
            ("SELECT * FROM t FOR SHARE", Class::Other),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                Class::Other,
            ),
            ("SELECT a INTO newt FROM t", Class::Other),
            ("SELECT nextval('s')", Class::Other),
            ("SELECT my_func(1)", Class::Other),
            ("SELECT now()", Class::Other),
            ("SELECT current_timestamp", Class::Other),
            ("SELECT * FROM pg_stat_activity", Class::Other),
            ("SELECT 1; DELETE FROM t", Class::Other),
            ("UPDATE t SET a = 1", Class::Other),
            ("BEGIN", Class::Other),
            ("SELECT 'DELETE FROM t' AS s, \"Order\" FROM t", ro(false)),
            (
                "SELECT $$ insert $$, e'it''s \\' for' -- for update\n FROM t",
                ro(false),
            ),
            ("SELECT \"evil\"(1)", Class::Other),
            ("SELECT * FROM (SELECT * FROM t ORDER BY a) s", ro(false)),
            (
                "SELECT id, price FROM docs WHERE id = 5 ORDER BY id",
                ro(true),
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(classify(sql), want, "{sql}");
        }
    }

    #[test]
    fn fingerprints_ignore_constants_and_spacing() {
        let a = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 42;");
        let b = normalize("select  abalance\nfrom pgbench_accounts where aid=$1");
        assert_eq!(a, "select abalance from pgbench_accounts where aid = ?");
        assert_eq!(a, b);
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&normalize("SELECT bbalance FROM t"))
        );
        assert_eq!(fingerprint(&a).len(), 16);
        assert_eq!(normalize("SELECT 'x''y', \"A\""), "select ? , \"A\"");
    }

    #[test]
    fn the_cheap_test_lets_every_read_through() {
        for sql in [
            "SELECT 1",
            "  with x as (select 1) select 1",
            "(select 1)",
            "VALUES (1)",
            "table t",
            "/* c */ select 1",
            "-- c\nselect 1",
        ] {
            assert!(may_read(sql), "{sql}");
        }
        for sql in [
            "UPDATE t SET a = 1",
            "insert into t values (1)",
            "BEGIN",
            "selected",
            "",
        ] {
            assert!(!may_read(sql), "{sql}");
        }
    }

    #[test]
    fn lexer_survives_garbage() {
        for s in [
            "'",
            "e'\\",
            "$a$ unterminated",
            "\"",
            "/* /* */",
            "$",
            "--",
            "\u{fffd}",
        ] {
            let _ = tokens(s);
            let _ = classify(s);
        }
    }

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        assert_eq!(
            split_statements("BEGIN; SET a.b = 'x;y'; -- c;\n SELECT $$;$$, \"q;\" ;;COMMIT"),
            vec![
                "BEGIN",
                "SET a.b = 'x;y'",
                "-- c;\n SELECT $$;$$, \"q;\"",
                "COMMIT"
            ]
        );
        assert_eq!(
            split_statements("SELECT E'\\';', 1 /* ; */"),
            vec!["SELECT E'\\';', 1 /* ; */"]
        );
        assert_eq!(
            split_statements("SELECT $1; SELECT 2"),
            vec!["SELECT $1", "SELECT 2"]
        );
        assert!(split_statements(" ; ").is_empty());
        for garbage in ["'", "\"", "$a$", "/*", "E'\\"] {
            let _ = split_statements(garbage);
        }
    }

    #[test]
    fn session_settings() {
        assert!(session_setting("SET search_path = app"));
        assert!(session_setting("set statement_timeout to 5000"));
        assert!(session_setting("RESET ALL"));
        assert!(!session_setting("SET LOCAL search_path = x"));
        assert!(!session_setting(
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
        ));
        assert!(!session_setting(
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
        ));
        assert!(!session_setting("SELECT 1"));
    }
}
