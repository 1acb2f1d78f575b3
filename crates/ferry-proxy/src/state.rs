//! The session state a proxied session carries to another backend: the
//! `SET`s (and `RESET`s) that persisted, in the order they ran.
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
//! Not followed: `set_config(…)` calls, `SET` inside functions or `DO`
//! blocks, and named portals bound in an earlier batch.

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
pub(crate) fn worth_a_look(sql: &str, tracking: bool) -> bool {
    sql.split(';').any(|part| {
        let word = first_word(part);
        let hit = |w: &&str| word.eq_ignore_ascii_case(w);
        !word.is_empty() && (WORDS.iter().any(hit) || (tracking && TX_WORDS.iter().any(hit)))
    })
}

/// The first word after whitespace and comments.
fn first_word(s: &str) -> &str {
    let mut t = s.trim_start();
    loop {
        if let Some(r) = t.strip_prefix("--") {
            t = r.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = t.strip_prefix("/*") {
            t = r.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    let end = t
        .bytes()
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
        assert!(worth_a_look("SET a = 1", false));
        assert!(worth_a_look("/* app */ -- x\n set a = 1", false));
        assert!(worth_a_look("BEGIN; SET a = 1; COMMIT", false));
        assert!(!worth_a_look("UPDATE t SET a = 1", false));
        assert!(!worth_a_look("BEGIN;", false));
        assert!(worth_a_look("BEGIN;", true));
        assert!(!worth_a_look("SELECT 1", true));
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
}
