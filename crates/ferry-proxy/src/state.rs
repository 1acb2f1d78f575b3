//! The session state a proxied session carries to another backend.
//!
//! **At a switch** (a cutover or rollback through the proxy moves a session
//! at a transaction boundary) the state is not reconstructed from what the
//! client sent but read from the backend the session leaves
//! ([`snapshot_query`], [`Snapshot`]): every setting whose source is
//! `session` in `pg_settings` (however it was set: `SET`, `set_config(…)`,
//! a `SET` inside a function or `DO` block, `SET SESSION
//! CHARACTERISTICS`; not what a function's own `SET` clause or a rolled
//! back transaction undid), custom settings (`x.y`, which `pg_settings`
//! lists only once a module defines them: their names come from what the
//! session sent, from function bodies in the source's catalog
//! ([`FUNCTION_NAMES_QUERY`]) and from `ALTER DATABASE/ROLE … SET`),
//! `session_authorization`, `role` and the channels it listens on. The
//! backend the session moves to is reset and given exactly that
//! ([`Snapshot::statements`]). Values are PostgreSQL's own text forms
//! (base units for settings with units; real-valued settings carry the six
//! significant digits PostgreSQL shows).
//!
//! **Elsewhere** — the read session of `reads-on-target`, mirror workers,
//! and a switch whose read of the old backend failed — the state is the
//! `SET`s (and `RESET`s) the client sent that persisted, in the order they
//! ran ([`SessionState`]): reading `pg_settings` before every routed read
//! would cost a round trip each.
//!
//! PostgreSQL keeps a session-level `SET` only when its transaction
//! commits: one inside a transaction block that rolls back (or behind a
//! `ROLLBACK TO SAVEPOINT`, or in a failed implicit transaction — a
//! multi-statement Query or extended messages up to Sync) is undone, and
//! `SET LOCAL` never outlives its transaction. [`SessionState`] follows
//! that: statements with an effect on it ([`Effect`]) are noted when a
//! batch is sent, and applied when its answer is complete, statement by
//! statement up to the first error, using the command tags (a `COMMIT` of a
//! failed transaction answers `ROLLBACK`). `SET`s inside a block wait in
//! `in_tx` (with savepoint marks) until the block ends.
//!
//! Only batches whose statements start with one of a few words are looked
//! at ([`worth_a_look`]); everything else costs a scan of the first word.
//! The `SET` list does not follow `set_config(…)` calls, `SET` inside
//! functions or `DO` blocks, and named portals bound in an earlier batch;
//! the snapshot at a switch does, except for portals.

use std::collections::BTreeSet;

use crate::classify::{self, Token};

/// What one statement does to the session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A session-level `SET`/`RESET` (its text, replayed as it is).
    Set(String),
    Begin,
    Savepoint(String),
    RollbackTo(String),
    Release(String),
    /// `COMMIT`/`END`/`PREPARE TRANSACTION` (the tag says if it did).
    Commit,
    /// `ROLLBACK`/`ABORT`.
    Rollback,
    /// Anything else.
    Other,
}

/// What a batch did: the effect of each statement (Query statements or
/// Executes, in order) and the completion tags of those that ran.
#[derive(Debug, Default)]
pub(crate) struct Track {
    pub effects: Vec<Effect>,
    pub tags: Vec<String>,
}

/// The state replayed on another backend.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// Session-level `SET`s that persisted, in order (append-only: each
    /// backend remembers how many it has run).
    pub committed: Vec<String>,
    /// `SET`s inside the open transaction (explicit or implicit).
    in_tx: Vec<String>,
    /// Savepoints of the open transaction with the `in_tx` length at each.
    savepoints: Vec<(String, usize)>,
    /// Candidate names of custom settings the session may have defined
    /// other than by a `SET` statement ([`may_define_settings`]).
    pub custom_names: BTreeSet<String>,
}

/// Words that start a statement with an effect; `tx_words` only matter
/// while a transaction holds `SET`s or savepoints.
const WORDS: &[&str] = &["set", "reset", "discard", "savepoint"];
const TX_WORDS: &[&str] = &[
    "commit", "end", "rollback", "abort", "release", "prepare", "begin", "start",
];

impl SessionState {
    /// Whether a transaction holds `SET`s or savepoints.
    pub fn tracking(&self) -> bool {
        !self.in_tx.is_empty() || !self.savepoints.is_empty()
    }

    /// Apply what a finished batch did: `after` is the transaction status
    /// its ReadyForQuery reported, `error` whether it failed.
    pub fn finish(&mut self, track: &Track, error: bool, after: u8) {
        for (effect, tag) in track.effects.iter().zip(&track.tags) {
            match effect {
                Effect::Set(sql) => self.in_tx.push(sql.clone()),
                Effect::Savepoint(name) => self.savepoints.push((name.clone(), self.in_tx.len())),
                Effect::RollbackTo(name) => {
                    if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                        self.in_tx.truncate(self.savepoints[i].1);
                        self.savepoints.truncate(i + 1);
                    }
                }
                Effect::Release(name) => {
                    if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                        self.savepoints.truncate(i);
                    }
                }
                Effect::Commit => {
                    if tag == "COMMIT" || tag == "PREPARE TRANSACTION" {
                        self.committed.append(&mut self.in_tx);
                    }
                    self.in_tx.clear();
                    self.savepoints.clear();
                }
                Effect::Rollback => {
                    self.in_tx.clear();
                    self.savepoints.clear();
                }
                Effect::Begin | Effect::Other => {}
            }
        }
        if after == b'I' {
            // Out of any block: an implicit transaction committed unless
            // the batch failed.
            if error {
                self.in_tx.clear();
            } else {
                self.committed.append(&mut self.in_tx);
            }
            self.savepoints.clear();
        }
    }
}

/// Whether `sql` may hold a statement with an effect: one of its
/// statements (roughly: the text start and after each `;`) starts with a
/// word of [`WORDS`], or of [`TX_WORDS`] when `tracking`.
pub(crate) fn worth_a_look(sql: &[u8], tracking: bool) -> bool {
    let after_semicolons = memchr::memchr_iter(b';', sql).map(|i| i + 1);
    std::iter::once(0).chain(after_semicolons).any(|at| {
        let word = first_word(&sql[at..]);
        let hit = |w: &&str| word.eq_ignore_ascii_case(w.as_bytes());
        !word.is_empty() && (WORDS.iter().any(hit) || (tracking && TX_WORDS.iter().any(hit)))
    })
}

/// The first word after whitespace and comments (bytes: these checks run
/// on every statement text, before and without its UTF-8 check).
fn first_word(s: &[u8]) -> &[u8] {
    let mut t = s.trim_ascii_start();
    loop {
        if let Some(r) = t.strip_prefix(b"--") {
            t = memchr::memchr(b'\n', r).map_or(&[][..], |i| &r[i + 1..]);
        } else if let Some(r) = t.strip_prefix(b"/*") {
            t = memchr::memmem::find(r, b"*/").map_or(&[][..], |i| &r[i + 2..]);
        } else {
            break;
        }
        t = t.trim_ascii_start();
    }
    let end = t
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(t.len());
    &t[..end]
}

/// The effect of one statement.
pub(crate) fn effect(sql: &str) -> Effect {
    let toks = classify::tokens(sql);
    let word = |i: usize| match toks.get(i) {
        Some(Token::Word(w)) => w.as_str(),
        _ => "",
    };
    let name = |i: usize| match toks.get(i) {
        Some(Token::Word(w) | Token::Quoted(w)) => Some(w.clone()),
        _ => None,
    };
    match word(0) {
        "set" | "reset" if classify::session_setting(sql) => Effect::Set(sql.to_owned()),
        "discard" if word(1) == "all" => Effect::Set("RESET ALL".to_owned()),
        "begin" | "start" => Effect::Begin,
        "savepoint" => name(1).map_or(Effect::Other, Effect::Savepoint),
        "rollback" | "abort" => {
            if word(1) == "prepared" {
                return Effect::Other;
            }
            match toks.iter().position(|t| *t == Token::Word("to".into())) {
                Some(to) => {
                    let at = if word(to + 1) == "savepoint" {
                        to + 2
                    } else {
                        to + 1
                    };
                    name(at).map_or(Effect::Other, Effect::RollbackTo)
                }
                None => Effect::Rollback,
            }
        }
        "release" => {
            let at = if word(1) == "savepoint" { 2 } else { 1 };
            name(at).map_or(Effect::Other, Effect::Release)
        }
        "commit" if word(1) == "prepared" => Effect::Other,
        "commit" | "end" => Effect::Commit,
        "prepare" if word(1) == "transaction" => Effect::Commit,
        _ => Effect::Other,
    }
}

/// The setting a `SET`/`RESET` statement sets (for logs: never a value).
pub(crate) fn set_name(sql: &str) -> String {
    let toks = classify::tokens(sql);
    let mut at = match toks.get(1) {
        Some(Token::Word(w)) if w == "session" => 2,
        _ => 1,
    };
    let mut name = String::new();
    while let Some(Token::Word(w) | Token::Quoted(w)) = toks.get(at) {
        name.push_str(w);
        if toks.get(at + 1) != Some(&Token::Punct('.')) {
            break;
        }
        name.push('.');
        at += 2;
    }
    if name.is_empty() {
        "SET".to_owned()
    } else {
        name
    }
}

/// Custom-setting names remembered per session at most.
pub(crate) const MAX_CUSTOM_NAMES: usize = 512;

/// Whether a statement text may define settings other than by a `SET`
/// statement: it mentions `set_config` or is a `DO` block. A scan for `_`
/// on every Query and Parse text, so kept cheap.
pub(crate) fn may_define_settings(sql: &[u8]) -> bool {
    let b = sql;
    let calls = memchr::memchr_iter(b'_', b).any(|i| {
        i >= 3
            && b[i - 3..i].eq_ignore_ascii_case(b"set")
            && b.get(i + 1..i + 7)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"config"))
    });
    calls || first_word(sql).eq_ignore_ascii_case(b"do")
}

/// Remember the dotted words of `sql` as candidate custom-setting names
/// (bounded by [`MAX_CUSTOM_NAMES`]).
pub(crate) fn note_custom_names(names: &mut BTreeSet<String>, sql: &str) {
    for name in dotted_words(sql) {
        if names.len() >= MAX_CUSTOM_NAMES {
            return;
        }
        names.insert(name);
    }
}

/// The dotted words of `sql` (`a.b`, `a.b.c`; also inside string literals
/// and function bodies; names with `$` are not found), lowercased: candidate custom-setting names. Most
/// are not settings (`t.id`); the server keeps those that are.
pub(crate) fn dotted_words(sql: &str) -> impl Iterator<Item = String> + '_ {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter(|w| {
            w.contains('.')
                && w.len() <= 127
                && w.split('.').all(|part| {
                    part.bytes()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                })
        })
        .map(str::to_ascii_lowercase)
}

/// Names of custom settings in the bodies of the source's own functions
/// (`set_config('app.x', …)` or `SET app.x` inside a function the client
/// calls) and in their `SET` clauses (which leave the setting defined,
/// empty): cached by the proxy for a while, it scans the catalog.
pub(crate) const FUNCTION_NAMES_QUERY: &str = "SELECT DISTINCT pg_catalog.lower(m[1]) \
     FROM pg_catalog.pg_proc p, \
     pg_catalog.regexp_matches(p.prosrc, '([A-Za-z_][A-Za-z0-9_$]*([.][A-Za-z_][A-Za-z0-9_$]*)+)', 'g') AS m \
     WHERE p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace \
     AND p.pronamespace <> 'information_schema'::pg_catalog.regnamespace \
     AND p.prolang NOT IN (SELECT oid FROM pg_catalog.pg_language WHERE lanname IN ('internal', 'c')) \
     AND p.prosrc OPERATOR(pg_catalog.~*) 'set' \
     UNION SELECT pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) \
     FROM pg_catalog.pg_proc p, pg_catalog.unnest(p.proconfig) AS c \
     WHERE p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace \
     LIMIT 2000";

/// The query reading a backend's session state: rows of (kind, name,
/// value) — `s` a setting set in the session, `c` a custom setting (of the
/// candidate `names` and those of `ALTER DATABASE/ROLE … SET`) that has a
/// value, `a` `session_authorization`, `r` `role`, `l` a channel listened
/// on. Names are passed in a plain literal: [`dotted_words`] keeps only
/// letters, digits, `_`, `$` and `.`, so the text needs no quoting under any
/// `standard_conforming_strings`.
pub(crate) fn snapshot_query<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<&str> = names
        .into_iter()
        .filter(|n| {
            n.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.'))
        })
        .collect();
    format!(
        "SELECT 's', name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
         UNION ALL \
         SELECT 'c', n, pg_catalog.current_setting(n, true) FROM (\
           SELECT pg_catalog.lower(n) AS n FROM pg_catalog.unnest(pg_catalog.string_to_array('{}', ',')) AS n \
           UNION SELECT pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) \
             FROM pg_catalog.pg_db_role_setting, pg_catalog.unnest(setconfig) AS c\
         ) AS names \
         WHERE pg_catalog.strpos(n, '.') > 0 AND pg_catalog.current_setting(n, true) IS NOT NULL \
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_settings s WHERE s.name = names.n) \
         UNION ALL SELECT 'a', '', pg_catalog.current_setting('session_authorization') \
         UNION ALL SELECT 'r', '', pg_catalog.current_setting('role') \
         UNION ALL SELECT 'l', c, '' FROM pg_catalog.pg_listening_channels() AS c",
        list.join(",")
    )
}

/// A backend's session state as [`snapshot_query`] read it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Settings and custom settings: (name, value).
    pub settings: Vec<(String, String)>,
    /// `session_authorization` when it is not the user that logged in.
    pub session_user: Option<String>,
    /// `role` when one is set.
    pub role: Option<String>,
    pub listening: Vec<String>,
}

impl Snapshot {
    /// From the rows of [`snapshot_query`]; `login_user` is the user the
    /// backend logged in as.
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = [&'a str; 3]>,
        login_user: &str,
    ) -> Snapshot {
        let mut s = Snapshot::default();
        for [kind, name, value] in rows {
            match kind {
                "s" | "c" => s.settings.push((name.to_owned(), value.to_owned())),
                "a" if value != login_user => s.session_user = Some(value.to_owned()),
                "r" if value != "none" => s.role = Some(value.to_owned()),
                "l" => s.listening.push(name.to_owned()),
                _ => {}
            }
        }
        s
    }

    /// The statements that give a backend this state, each with a label for
    /// logs (the setting's name, never its value): a reset of whatever the
    /// backend had, every setting, then the session user and role (settings
    /// first: a role may not be allowed to set some), then `LISTEN`s. One
    /// statement each, so that one the backend refuses (a setting its
    /// version lacks) does not undo the others.
    pub fn statements(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> =
            ["RESET SESSION AUTHORIZATION", "RESET ROLE", "RESET ALL"]
                .iter()
                .map(|sql| ((*sql).to_ascii_lowercase(), (*sql).to_owned()))
                .collect();
        let set = |name: &str, value: &str| {
            format!(
                "SELECT pg_catalog.set_config({}, {}, false)",
                dollar_quoted(name),
                dollar_quoted(value)
            )
        };
        for (name, value) in &self.settings {
            out.push((name.clone(), set(name, value)));
        }
        if let Some(user) = &self.session_user {
            out.push((
                "session_authorization".into(),
                set("session_authorization", user),
            ));
        }
        if let Some(role) = &self.role {
            out.push(("role".into(), set("role", role)));
        }
        for channel in &self.listening {
            out.push(("listen".into(), format!("LISTEN {}", quoted_ident(channel))));
        }
        out
    }
}

/// `s` as a dollar-quoted literal whose tag does not occur in it (read the
/// same whatever `standard_conforming_strings` is).
fn dollar_quoted(s: &str) -> String {
    let mut tag = "$f$".to_owned();
    let mut n = 0;
    // The literal ends at the first tag after the opening one.
    while format!("{s}{tag}").find(&tag) != Some(s.len()) {
        n += 1;
        tag = format!("$f{n}$");
    }
    format!("{tag}{s}{tag}")
}

/// `s` as a quoted identifier.
fn quoted_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut SessionState, stmts: &[(&str, Option<&str>)], error: bool, after: u8) {
        let mut track = Track::default();
        for (sql, tag) in stmts {
            track.effects.push(effect(sql));
            if let Some(t) = tag {
                track.tags.push((*t).to_owned());
            }
        }
        state.finish(&track, error, after);
    }

    #[test]
    fn effects_of_statements() {
        assert_eq!(effect("SET a.b = 1"), Effect::Set("SET a.b = 1".into()));
        assert_eq!(effect("set local a.b = 1"), Effect::Other);
        assert_eq!(effect("SET TRANSACTION READ ONLY"), Effect::Other);
        assert_eq!(effect("RESET a.b"), Effect::Set("RESET a.b".into()));
        assert_eq!(effect("DISCARD ALL"), Effect::Set("RESET ALL".into()));
        assert_eq!(effect("SAVEPOINT \"S 1\""), Effect::Savepoint("S 1".into()));
        assert_eq!(
            effect("ROLLBACK TO SAVEPOINT s"),
            Effect::RollbackTo("s".into())
        );
        assert_eq!(effect("rollback work to s"), Effect::RollbackTo("s".into()));
        assert_eq!(effect("ROLLBACK"), Effect::Rollback);
        assert_eq!(effect("ROLLBACK PREPARED 'x'"), Effect::Other);
        assert_eq!(effect("RELEASE SAVEPOINT S"), Effect::Release("s".into()));
        assert_eq!(effect("END"), Effect::Commit);
        assert_eq!(effect("COMMIT PREPARED 'x'"), Effect::Other);
        assert_eq!(effect("START TRANSACTION"), Effect::Begin);
    }

    #[test]
    fn cheap_test_finds_every_effect() {
        assert!(worth_a_look(b"SET a = 1", false));
        assert!(worth_a_look(b"/* app */ -- x\n set a = 1", false));
        assert!(worth_a_look(b"BEGIN; SET a = 1; COMMIT", false));
        assert!(!worth_a_look(b"UPDATE t SET a = 1", false));
        assert!(!worth_a_look(b"BEGIN;", false));
        assert!(worth_a_look(b"BEGIN;", true));
        assert!(!worth_a_look(b"SELECT 1", true));
        assert!(!worth_a_look(b"-- SET a = 1", false));
        // A statement starts after each `;`, and a comment is skipped
        // whole even with a `;` inside.
        assert!(worth_a_look(b"SELECT 1;reset all", false));
        assert!(worth_a_look(b"/* a; b */ SET a = 1", false));
        assert!(!worth_a_look(b"SELECT ';' ; ", false));
    }

    #[test]
    fn only_committed_session_sets_persist() {
        let mut s = SessionState::default();
        // Outside a block: kept.
        run(&mut s, &[("SET a.x = 1", Some("SET"))], false, b'I');
        // Committed block: kept; SET LOCAL not.
        run(&mut s, &[("BEGIN", Some("BEGIN"))], false, b'T');
        run(
            &mut s,
            &[
                ("SET a.y = 2", Some("SET")),
                ("SET LOCAL a.z = 3", Some("SET")),
            ],
            false,
            b'T',
        );
        assert!(s.tracking());
        run(&mut s, &[("COMMIT", Some("COMMIT"))], false, b'I');
        assert_eq!(s.committed, ["SET a.x = 1", "SET a.y = 2"]);
        // Rolled back: gone.
        run(
            &mut s,
            &[
                ("BEGIN", Some("BEGIN")),
                ("SET a.x = 9", Some("SET")),
                ("ROLLBACK", Some("ROLLBACK")),
            ],
            false,
            b'I',
        );
        // A failed block's COMMIT answers ROLLBACK.
        run(
            &mut s,
            &[("BEGIN", Some("BEGIN")), ("SET a.x = 8", Some("SET"))],
            false,
            b'T',
        );
        run(&mut s, &[("SELECT 1/0", None)], true, b'E');
        run(&mut s, &[("COMMIT", Some("ROLLBACK"))], false, b'I');
        // A failed implicit transaction: its SET is undone.
        run(
            &mut s,
            &[("SET a.x = 7", Some("SET")), ("SELECT 1/0", None)],
            true,
            b'I',
        );
        assert_eq!(s.committed, ["SET a.x = 1", "SET a.y = 2"]);
        assert!(!s.tracking());
    }

    #[test]
    fn savepoints_undo_what_followed_them() {
        let mut s = SessionState::default();
        run(
            &mut s,
            &[
                ("BEGIN", Some("BEGIN")),
                ("SET a.x = 1", Some("SET")),
                ("SAVEPOINT p", Some("SAVEPOINT")),
                ("SET a.x = 2", Some("SET")),
                ("SAVEPOINT q", Some("SAVEPOINT")),
                ("SET a.y = 3", Some("SET")),
                ("RELEASE q", Some("RELEASE")),
                ("ROLLBACK TO p", Some("ROLLBACK")),
                ("SET a.z = 4", Some("SET")),
                ("COMMIT", Some("COMMIT")),
            ],
            false,
            b'I',
        );
        assert_eq!(s.committed, ["SET a.x = 1", "SET a.z = 4"]);
    }

    #[test]
    fn statements_that_may_define_settings() {
        for sql in [
            "SELECT set_config('app.x', '1', false)",
            "select SET_Config($1, $2, false)",
            "/* c */ DO $$ BEGIN SET app.x = 1; END $$",
            "do language plpgsql 'BEGIN NULL; END'",
        ] {
            assert!(may_define_settings(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "UPDATE t SET config = 1",
            "SELECT offset_conf FROM t",
            "set_",
            "_config",
            "",
        ] {
            assert!(!may_define_settings(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn dotted_words_are_the_candidate_names() {
        let names: Vec<String> = dotted_words(
            "SELECT set_config('App.Tenant', t.id::text, false), 3.14, x.1y, .5, $q$d.q$q$ FROM s.t; SET a.b.c = 1",
        )
        .collect();
        assert_eq!(names, ["app.tenant", "t.id", "d.q", "s.t", "a.b.c"]);
        let mut kept = BTreeSet::new();
        for i in 0..MAX_CUSTOM_NAMES + 10 {
            note_custom_names(
                &mut kept,
                &format!("SELECT set_config('a.n{i}', '', false)"),
            );
        }
        assert_eq!(kept.len(), MAX_CUSTOM_NAMES);
    }

    #[test]
    fn names_of_set_statements() {
        assert_eq!(set_name("SET search_path = x"), "search_path");
        assert_eq!(
            set_name("set session App.\"Tenant\" to 'secret'"),
            "app.Tenant"
        );
        assert_eq!(set_name("RESET ALL"), "all");
        assert_eq!(set_name("SET TIME ZONE 'UTC'"), "time");
        assert_eq!(set_name("SET"), "SET");
    }

    #[test]
    fn the_snapshot_query_takes_only_plain_names() {
        let sql = snapshot_query(["app.x", "x'y.z", "a.b$c"]);
        assert!(sql.contains("'app.x,a.b$c'"), "{sql}");
        assert!(!sql.contains("x'y"), "{sql}");
        assert!(snapshot_query([]).contains("string_to_array('', ',')"));
    }

    #[test]
    fn a_snapshot_becomes_the_statements_that_restore_it() {
        let rows = [
            ["s", "work_mem", "5120"],
            ["c", "app.t", "it's $f$ here"],
            ["a", "", "app"],
            ["r", "", "reader"],
            ["l", "Chan \"1\"", ""],
            ["?", "junk", ""],
        ];
        let snapshot = Snapshot::from_rows(rows, "app");
        assert_eq!(snapshot.session_user, None);
        assert_eq!(snapshot.role.as_deref(), Some("reader"));
        let sql: Vec<(String, String)> = snapshot.statements();
        let want = [
            ("reset session authorization", "RESET SESSION AUTHORIZATION"),
            ("reset role", "RESET ROLE"),
            ("reset all", "RESET ALL"),
            (
                "work_mem",
                "SELECT pg_catalog.set_config($f$work_mem$f$, $f$5120$f$, false)",
            ),
            (
                "app.t",
                "SELECT pg_catalog.set_config($f$app.t$f$, $f1$it's $f$ here$f1$, false)",
            ),
            (
                "role",
                "SELECT pg_catalog.set_config($f$role$f$, $f$reader$f$, false)",
            ),
            ("listen", "LISTEN \"Chan \"\"1\"\"\""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(sql, want);
        let other = Snapshot::from_rows([["a", "", "admin"], ["r", "", "none"]], "app");
        assert_eq!(other.session_user.as_deref(), Some("admin"));
        assert_eq!(other.role, None);
    }

    #[test]
    fn dollar_quotes_end_where_the_value_ends() {
        for value in ["", "$", "$f", "a$f", "$f$", "x$f$f1$", "f$", "$f1$f$"] {
            let q = dollar_quoted(value);
            let tag_end = q[1..].find('$').unwrap() + 2;
            let tag = &q[..tag_end];
            let body_end = q[tag_end..].find(tag).unwrap() + tag_end;
            assert_eq!(&q[tag_end..body_end], value, "{q}");
            assert_eq!(body_end + tag.len(), q.len(), "{q}");
        }
    }
}
