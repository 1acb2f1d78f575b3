//! Parsing `SHOW GRANTS FOR CURRENT_USER()`.
//!
//! Only the privilege names and the object of each `GRANT … ON … TO …` line
//! are kept; the rest of a line (which may hold a password hash) is dropped
//! and never printed. Role grants (`GRANT role TO user`) are noted: ferry does
//! not expand roles, so missing privileges are then a warning, not a failure.

/// One `GRANT privs ON object` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Upper-case privilege names; column-level ones (`SELECT (a, b)`) are left out.
    pub privileges: Vec<String>,
    /// Database name or pattern (`%`, `_`, `\_`); `None` for `*`.
    pub database: Option<String>,
    /// Table name; `None` for `*`.
    pub table: Option<String>,
}

/// The privileges of the current user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Privileges {
    pub grants: Vec<Grant>,
    /// Some privileges come through roles, which are not expanded.
    pub has_roles: bool,
}

impl Privileges {
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Privileges {
        let mut out = Privileges::default();
        for line in lines {
            match parse_line(line) {
                Some(Line::Grant(g)) => out.grants.push(g),
                Some(Line::Role) => out.has_roles = true,
                None => {}
            }
        }
        out
    }

    /// Whether one of `names` (or ALL) is granted on `*.*`.
    pub fn has_global(&self, names: &[&str]) -> bool {
        self.grants
            .iter()
            .filter(|g| g.database.is_none() && g.table.is_none())
            .any(|g| grants_any(g, names))
    }

    /// Whether SELECT on `database.table` is granted (globally, on the
    /// database, by a database pattern, or on the table).
    pub fn can_select(&self, database: &str, table: &str) -> bool {
        self.grants.iter().any(|g| {
            let db_ok = g
                .database
                .as_deref()
                .is_none_or(|pattern| like(pattern, database));
            let table_ok = g.table.as_deref().is_none_or(|t| t == table);
            db_ok && table_ok && grants_any(g, &["SELECT"])
        })
    }
}

fn grants_any(g: &Grant, names: &[&str]) -> bool {
    g.privileges
        .iter()
        .any(|p| p == "ALL" || p == "ALL PRIVILEGES" || names.contains(&p.as_str()))
}

enum Line {
    Grant(Grant),
    Role,
}

fn parse_line(line: &str) -> Option<Line> {
    let rest = strip_keyword(line.trim(), "GRANT ")?;
    let Some(on) = find_keyword(rest, " ON ") else {
        return find_keyword(rest, " TO ").map(|_| Line::Role);
    };
    let privileges = split_top_level(&rest[..on])
        .into_iter()
        .filter(|p| !p.contains('('))
        .map(|p| {
            p.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_uppercase()
        })
        .collect();
    let after_on = &rest[on + 4..];
    let to = find_keyword(after_on, " TO ")?;
    let mut object = after_on[..to].trim();
    for kind in [
        "TABLE ",
        "FUNCTION ",
        "PROCEDURE ",
        "PACKAGE BODY ",
        "PACKAGE ",
    ] {
        if let Some(o) = strip_keyword(object, kind) {
            if kind != "TABLE " {
                return None;
            }
            object = o.trim();
        }
    }
    let (database, table) = parse_object(object)?;
    Some(Line::Grant(Grant {
        privileges,
        database,
        table,
    }))
}

fn strip_keyword<'a>(s: &'a str, kw: &str) -> Option<&'a str> {
    let head = s.get(..kw.len())?;
    head.eq_ignore_ascii_case(kw).then(|| &s[kw.len()..])
}

/// Byte offset of `kw` (case-insensitive) outside backquotes, quotes and parentheses.
fn find_keyword(s: &str, kw: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let (mut depth, mut quote) = (0i32, None::<u8>);
    for (i, &b) in bytes.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'`' | b'\'' | b'"' => quote = Some(b),
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ if depth == 0
                    && s.get(i..i + kw.len())
                        .is_some_and(|w| w.eq_ignore_ascii_case(kw)) =>
                {
                    return Some(i);
                }
                _ => {}
            },
        }
    }
    None
}

/// Splits a privilege list on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

type Object = (Option<String>, Option<String>);

/// `*.*`, `` `db`.* ``, `` `db`.`t` ``, `db.t`, `*`.
fn parse_object(object: &str) -> Option<Object> {
    let (db, rest) = ident(object)?;
    let Some(rest) = rest.strip_prefix('.') else {
        return rest.trim().is_empty().then_some((None, db));
    };
    let (table, tail) = ident(rest)?;
    tail.trim().is_empty().then_some((db, table))
}

/// One identifier (`*` gives `None`) and the text after it.
fn ident(s: &str) -> Option<(Option<String>, &str)> {
    if let Some(rest) = s.strip_prefix('*') {
        return Some((None, rest));
    }
    if let Some(body) = s.strip_prefix('`') {
        let mut name = String::new();
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '`' {
                if chars.peek().is_some_and(|&(_, n)| n == '`') {
                    chars.next();
                    name.push('`');
                    continue;
                }
                return Some((Some(name), &body[i + 1..]));
            }
            name.push(c);
        }
        return None;
    }
    let end = s.find(['.', ' ']).unwrap_or(s.len());
    (end > 0).then(|| (Some(s[..end].to_owned()), &s[end..]))
}

/// SQL LIKE with `%`, `_` and backslash escapes (database grant patterns).
fn like(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('%', rest)) => (0..=n.len()).any(|k| go(rest, &n[k..])),
            Some(('_', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some(('\\', rest)) if !rest.is_empty() => {
                n.first() == Some(&rest[0]) && go(&rest[1..], &n[1..])
            }
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_privileges_cover_everything() {
        let p = Privileges::parse([
            "GRANT ALL PRIVILEGES ON *.* TO `ferry_admin`@`%` IDENTIFIED BY PASSWORD '*ABC' WITH GRANT OPTION",
        ]);
        assert!(p.has_global(&["REPLICATION SLAVE"]));
        assert!(p.can_select("any", "thing"));
    }

    #[test]
    fn replication_and_scoped_select() {
        let p = Privileges::parse([
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `f`@`%` IDENTIFIED BY PASSWORD '*X'",
            "GRANT SELECT ON `shop`.* TO `f`@`%`",
            "GRANT SELECT, INSERT ON `crm`.`customer` TO `f`@`%`",
            "GRANT SELECT (`id`, `name`) ON `crm`.`secret` TO `f`@`%`",
            "GRANT SELECT ON `app\\_%`.* TO `f`@`%`",
            "GRANT EXECUTE ON PROCEDURE `shop`.`p` TO `f`@`%`",
        ]);
        assert!(p.has_global(&["REPLICATION SLAVE"]));
        assert!(p.has_global(&["REPLICATION CLIENT", "BINLOG MONITOR"]));
        assert!(!p.has_global(&["SELECT"]));
        assert!(p.can_select("shop", "orders"));
        assert!(p.can_select("crm", "customer"));
        assert!(!p.can_select("crm", "secret"), "column-level only");
        assert!(!p.can_select("crm", "other"));
        assert!(p.can_select("app_eu", "t"));
        assert!(
            !p.can_select("appxeu", "t"),
            "escaped underscore is literal"
        );
        assert!(!p.has_roles);
    }

    #[test]
    fn mysql8_lines_and_roles() {
        let p = Privileges::parse([
            "GRANT USAGE ON *.* TO `f`@`%`",
            "GRANT REPLICATION CLIENT,REPLICATION SLAVE ON *.* TO `f`@`%`",
            "GRANT `reader`@`%` TO `f`@`%`",
        ]);
        assert!(p.has_global(&["REPLICATION SLAVE"]));
        assert!(p.has_global(&["REPLICATION CLIENT"]));
        assert!(p.has_roles);
    }

    #[test]
    fn garbage_is_ignored() {
        let p = Privileges::parse([
            "",
            "GRANT",
            "GRANT SELECT ON",
            "GRANT SELECT ON `x TO y",
            "REVOKE ALL",
        ]);
        assert!(p.grants.is_empty());
        assert!(!p.can_select("a", "b"));
    }
}
