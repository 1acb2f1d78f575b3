//! The console's language: the text an operator types into `psql`, parsed
//! into a [`Command`].
//!
//! ```text
//! SHOW STATUS | SHOW LAG | SHOW TABLES | SHOW LAG HISTORY ['24h'] | SHOW VALIDATION | SHOW HELP
//! PAUSE | RESUME
//! VALIDATE [table [, table …]] [REPAIR]
//! CUTOVER [DRY RUN] [FENCE] [MAX LAG '5s'] [TIMEOUT '60s'] [KEEP SLOT] [SKIP COUNTS]
//!         [REQUIRE VALIDATED ['24h']] [WITH FALLBACK] [VIA PROXY]
//! ROLLBACK CUTOVER [DRY RUN] [FENCE] [MAX LAG '5s'] [TIMEOUT '60s'] [SKIP COUNTS] [VIA PROXY]
//! SET … (accepted and ignored: drivers send session settings)
//! ```
//!
//! Keywords are case-insensitive; a trailing `;` is allowed; durations are
//! quoted or bare (`'5s'`, `5s`, `500ms`) and parsed by
//! [`ferry_core::duration::parse`], the same parser as `ferry cutover
//! --max-lag`. A simple query may hold several commands separated by `;`
//! ([`split_statements`]). Anything else is a [`ParseError`] that names the
//! word it stopped at and lists the commands. A bare `ROLLBACK` (what a
//! driver or pool sends to end a transaction) never rolls the migration
//! back: it is refused, naming `ROLLBACK CUTOVER`.

use std::time::Duration;

/// `ferry cutover`'s defaults, so `CUTOVER` in the console and on the
/// command line mean the same thing.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(5);
/// See [`DEFAULT_MAX_LAG`].
pub const DEFAULT_CUTOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// `SHOW LAG HISTORY` without a window.
pub const DEFAULT_HISTORY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// One console command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    ShowStatus,
    ShowLag,
    ShowTables,
    ShowLagHistory {
        window: Duration,
    },
    ShowValidation,
    /// `SHOW SHADOW`: the proxy's shadow-read statistics per fingerprint.
    ShowShadow,
    /// `PROXY MODE source|reads-on-target`.
    ProxyMode(String),
    ShowHelp,
    Validate(ValidateCommand),
    Pause,
    Resume,
    Cutover(CutoverCommand),
    /// `SET …`: drivers send session settings on connect; nothing to do.
    Set,
}

/// The options of `CUTOVER` and `ROLLBACK`, as `ferry cutover` and `ferry
/// rollback` take them.
#[derive(Debug, Clone, PartialEq)]
pub struct CutoverCommand {
    /// `ROLLBACK`: the reverse stream's cutover back to the old source
    /// (after `CUTOVER … WITH FALLBACK`).
    pub rollback: bool,
    /// Keep a way back (`WITH FALLBACK`, CUTOVER only).
    pub with_fallback: bool,
    /// Through the proxy (`VIA PROXY`).
    pub via_proxy: bool,
    pub dry_run: bool,
    pub fence: bool,
    pub max_lag: Duration,
    pub timeout: Duration,
    pub keep_slot: bool,
    pub skip_counts: bool,
    /// Refuse unless every table's last validation is clean and at most
    /// this old.
    pub require_validated: Option<Duration>,
}

/// `REQUIRE VALIDATED` without an age, as `ferry cutover --require-validated`.
pub const DEFAULT_VALIDATED_AGE: Duration = Duration::from_secs(24 * 3600);

/// The options of `VALIDATE`, as `ferry validate` takes them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidateCommand {
    /// `schema.table` names; empty: every carried table.
    pub tables: Vec<String>,
    /// Re-copy the keys that differ.
    pub repair: bool,
}

impl Default for CutoverCommand {
    fn default() -> Self {
        CutoverCommand {
            rollback: false,
            with_fallback: false,
            via_proxy: false,
            dry_run: false,
            fence: false,
            max_lag: DEFAULT_MAX_LAG,
            timeout: DEFAULT_CUTOVER_TIMEOUT,
            keep_slot: false,
            skip_counts: false,
            require_validated: None,
        }
    }
}

/// Text the console does not understand.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
}

/// What `SHOW HELP` lists and every parse error points to.
pub const COMMANDS: &[(&str, &str)] = &[
    ("SHOW STATUS", "phase, lag, positions, reader and applier"),
    (
        "SHOW LAG",
        "lag in seconds and bytes, head and applied positions",
    ),
    (
        "SHOW TABLES",
        "per-table state, rows copied and changes applied",
    ),
    (
        "SHOW LAG HISTORY ['24h']",
        "lag samples over a window (default 24h)",
    ),
    (
        "SHOW VALIDATION",
        "the last validation of each table: clean or not, rows, differing keys",
    ),
    (
        "SHOW SHADOW",
        "the proxy's shadow reads per query fingerprint: calls, mismatches, target errors, p50/p99",
    ),
    (
        "PROXY MODE source | reads-on-target",
        "change the proxy's mode (recorded with the console user and the time)",
    ),
    (
        "VALIDATE [table [, table …]] [REPAIR]",
        "start a validation in the background (REPAIR re-copies differing keys)",
    ),
    (
        "PAUSE",
        "stop applying changes (the source keeps its position)",
    ),
    ("RESUME", "apply changes again"),
    (
        "CUTOVER [DRY RUN] [FENCE] [MAX LAG '5s'] [TIMEOUT '60s'] [KEEP SLOT] [SKIP COUNTS] [REQUIRE VALIDATED ['24h']] [WITH FALLBACK] [VIA PROXY]",
        "cut over to the target, as `ferry cutover`",
    ),
    (
        "ROLLBACK CUTOVER [DRY RUN] [FENCE] [MAX LAG '5s'] [TIMEOUT '60s'] [SKIP COUNTS] [VIA PROXY]",
        "after a cutover with fallback: move back to the old source, as `ferry rollback`",
    ),
    ("SHOW HELP", "this list"),
];

/// The hint every parse error carries.
pub fn help_hint() -> String {
    let names: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).collect();
    format!("ferry's console understands: {}", names.join("; "))
}

/// A word of the command, or a quoted literal.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Literal(String),
}

impl Token {
    fn text(&self) -> &str {
        match self {
            Token::Word(w) | Token::Literal(w) => w,
        }
    }
}

fn err(message: impl Into<String>) -> ParseError {
    ParseError {
        message: message.into(),
    }
}

/// Split a simple query into its statements at `;` outside quotes; empty
/// statements are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in sql.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sql[start..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

fn tokenize(sql: &str) -> Result<Vec<Token>, ParseError> {
    let mut tokens = Vec::new();
    let mut chars = sql.trim().trim_end_matches(';').chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut lit = String::new();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        lit.push('\'');
                    }
                    Some('\'') => break,
                    Some(ch) => lit.push(ch),
                    None => return Err(err("unterminated quoted string")),
                }
            }
            tokens.push(Token::Literal(lit));
        } else {
            let mut word = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '\'' {
                    break;
                }
                word.push(ch);
                chars.next();
            }
            tokens.push(Token::Word(word));
        }
    }
    Ok(tokens)
}

/// Parse one statement (see the module note for the grammar).
pub fn parse(sql: &str) -> Result<Command, ParseError> {
    let tokens = tokenize(sql)?;
    let words: Vec<String> = tokens
        .iter()
        .map(|t| match t {
            Token::Word(w) => w.to_ascii_uppercase(),
            Token::Literal(_) => String::new(),
        })
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        [] => Err(err("empty command")),
        ["SHOW", "STATUS"] => Ok(Command::ShowStatus),
        ["SHOW", "LAG"] => Ok(Command::ShowLag),
        ["SHOW", "TABLES"] => Ok(Command::ShowTables),
        ["SHOW", "HELP"] | ["HELP"] => Ok(Command::ShowHelp),
        ["SHOW", "VALIDATION"] => Ok(Command::ShowValidation),
        ["SHOW", "SHADOW"] => Ok(Command::ShowShadow),
        ["PROXY", "MODE", _] => Ok(Command::ProxyMode(tokens[2].text().to_ascii_lowercase())),
        ["VALIDATE", ..] => validate(&tokens[1..]).map(Command::Validate),
        ["SHOW", "LAG", "HISTORY"] => Ok(Command::ShowLagHistory {
            window: DEFAULT_HISTORY_WINDOW,
        }),
        ["SHOW", "LAG", "HISTORY", _] => Ok(Command::ShowLagHistory {
            window: duration(&tokens[3], "SHOW LAG HISTORY")?,
        }),
        ["PAUSE"] => Ok(Command::Pause),
        ["RESUME"] => Ok(Command::Resume),
        ["SET", ..] => Ok(Command::Set),
        ["CUTOVER", ..] => cutover("CUTOVER", &tokens[1..], &w[1..]).map(Command::Cutover),
        ["ROLLBACK", "CUTOVER", ..] => {
            cutover("ROLLBACK CUTOVER", &tokens[2..], &w[2..]).map(Command::Cutover)
        }
        ["ROLLBACK", ..] | ["ABORT", ..] => Err(err(
            "the console runs no transactions; to move back to the old source after a cutover with fallback: ROLLBACK CUTOVER [DRY RUN] [FENCE] [VIA PROXY] …",
        )),
        [first, ..] => Err(err(format!(
            "unknown console command \"{}\"",
            unknown_prefix(&tokens, first)
        ))),
    }
}

/// The words up to the first one the grammar cannot take, for the error.
fn unknown_prefix(tokens: &[Token], first: &str) -> String {
    if first == "SHOW" {
        tokens
            .iter()
            .take(2)
            .map(Token::text)
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        tokens[0].text().to_owned()
    }
}

/// `CUTOVER` or `ROLLBACK` (`name`) arguments.
fn cutover(name: &str, tokens: &[Token], words: &[&str]) -> Result<CutoverCommand, ParseError> {
    let rollback = name == "ROLLBACK CUTOVER";
    let mut c = CutoverCommand {
        rollback,
        ..CutoverCommand::default()
    };
    let mut i = 0;
    while i < words.len() {
        match words[i..] {
            ["VIA", "PROXY", ..] => {
                c.via_proxy = true;
                i += 2;
            }
            ["WITH", "FALLBACK", ..] if !rollback => {
                c.with_fallback = true;
                i += 2;
            }
            ["DRY", "RUN", ..] => {
                c.dry_run = true;
                i += 2;
            }
            ["FENCE", ..] => {
                c.fence = true;
                i += 1;
            }
            ["KEEP", "SLOT", ..] if !rollback => {
                c.keep_slot = true;
                i += 2;
            }
            ["SKIP", "COUNTS", ..] => {
                c.skip_counts = true;
                i += 2;
            }
            ["MAX", "LAG", ..] => {
                let t = tokens
                    .get(i + 2)
                    .ok_or_else(|| err(format!("{name} MAX LAG needs a duration such as '5s'")))?;
                c.max_lag = duration(t, &format!("{name} MAX LAG"))?;
                i += 3;
            }
            ["REQUIRE", "VALIDATED", ..] if !rollback => {
                // An age may follow; a keyword may not be one.
                let age = tokens.get(i + 2).filter(|t| {
                    matches!(t, Token::Literal(_))
                        || t.text().starts_with(|c: char| c.is_ascii_digit())
                });
                c.require_validated = Some(match age {
                    Some(t) => duration(t, "CUTOVER REQUIRE VALIDATED")?,
                    None => DEFAULT_VALIDATED_AGE,
                });
                i += 2 + usize::from(age.is_some());
            }
            ["TIMEOUT", ..] => {
                let t = tokens
                    .get(i + 1)
                    .ok_or_else(|| err(format!("{name} TIMEOUT needs a duration such as '60s'")))?;
                c.timeout = duration(t, &format!("{name} TIMEOUT"))?;
                i += 2;
            }
            _ => {
                return Err(err(format!(
                    "{name} does not take \"{}\"",
                    tokens[i].text()
                )));
            }
        }
    }
    Ok(c)
}

/// `VALIDATE` arguments: table names (words or quoted literals, commas
/// between them) and a final `REPAIR`.
fn validate(tokens: &[Token]) -> Result<ValidateCommand, ParseError> {
    let mut v = ValidateCommand::default();
    let mut names = tokens;
    if let Some((Token::Word(w), rest)) = tokens.split_last()
        && w.eq_ignore_ascii_case("REPAIR")
    {
        v.repair = true;
        names = rest;
    }
    for t in names {
        for name in t.text().split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if matches!(t, Token::Word(_)) && name.eq_ignore_ascii_case("REPAIR") {
                return Err(err("VALIDATE: REPAIR comes after the table names"));
            }
            v.tables.push(name.to_owned());
        }
    }
    Ok(v)
}

fn duration(t: &Token, what: &str) -> Result<Duration, ParseError> {
    ferry_core::duration::parse(t.text()).map_err(|e| err(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn commands_parse_case_insensitively_with_optional_semicolon() {
        let cases: Vec<(&str, Command)> = vec![
            ("SHOW STATUS", Command::ShowStatus),
            ("show status;", Command::ShowStatus),
            ("  Show   Lag ; ", Command::ShowLag),
            ("SHOW TABLES", Command::ShowTables),
            ("help", Command::ShowHelp),
            ("SHOW HELP", Command::ShowHelp),
            (
                "SHOW LAG HISTORY",
                Command::ShowLagHistory {
                    window: DEFAULT_HISTORY_WINDOW,
                },
            ),
            (
                "SHOW LAG HISTORY '1h'",
                Command::ShowLagHistory { window: secs(3600) },
            ),
            ("pause", Command::Pause),
            ("RESUME", Command::Resume),
            ("SET extra_float_digits = 3", Command::Set),
            ("CUTOVER", Command::Cutover(CutoverCommand::default())),
            (
                "cutover dry run",
                Command::Cutover(CutoverCommand {
                    dry_run: true,
                    ..CutoverCommand::default()
                }),
            ),
            (
                "CUTOVER FENCE MAX LAG '2s' TIMEOUT 30s KEEP SLOT SKIP COUNTS",
                Command::Cutover(CutoverCommand {
                    fence: true,
                    max_lag: secs(2),
                    timeout: secs(30),
                    keep_slot: true,
                    skip_counts: true,
                    ..CutoverCommand::default()
                }),
            ),
            ("SHOW VALIDATION", Command::ShowValidation),
            ("show shadow", Command::ShowShadow),
            (
                "PROXY MODE 'reads-on-target'",
                Command::ProxyMode("reads-on-target".into()),
            ),
            ("proxy mode source", Command::ProxyMode("source".into())),
            ("validate", Command::Validate(ValidateCommand::default())),
            (
                "VALIDATE public.orders, public.lines REPAIR",
                Command::Validate(ValidateCommand {
                    tables: vec!["public.orders".into(), "public.lines".into()],
                    repair: true,
                }),
            ),
            (
                "VALIDATE 'app.Order Lines'",
                Command::Validate(ValidateCommand {
                    tables: vec!["app.Order Lines".into()],
                    repair: false,
                }),
            ),
            (
                "CUTOVER FENCE REQUIRE VALIDATED",
                Command::Cutover(CutoverCommand {
                    fence: true,
                    require_validated: Some(DEFAULT_VALIDATED_AGE),
                    ..CutoverCommand::default()
                }),
            ),
            (
                "CUTOVER REQUIRE VALIDATED '1h' DRY RUN",
                Command::Cutover(CutoverCommand {
                    dry_run: true,
                    require_validated: Some(secs(3600)),
                    ..CutoverCommand::default()
                }),
            ),
            (
                "CUTOVER FENCE WITH FALLBACK VIA PROXY",
                Command::Cutover(CutoverCommand {
                    fence: true,
                    with_fallback: true,
                    via_proxy: true,
                    ..CutoverCommand::default()
                }),
            ),
            (
                "rollback cutover via proxy max lag '30s' timeout 2m",
                Command::Cutover(CutoverCommand {
                    rollback: true,
                    via_proxy: true,
                    max_lag: secs(30),
                    timeout: secs(120),
                    ..CutoverCommand::default()
                }),
            ),
            (
                "ROLLBACK CUTOVER FENCE DRY RUN SKIP COUNTS;",
                Command::Cutover(CutoverCommand {
                    rollback: true,
                    fence: true,
                    dry_run: true,
                    skip_counts: true,
                    ..CutoverCommand::default()
                }),
            ),
            (
                "CUTOVER MAX LAG '500ms' DRY RUN",
                Command::Cutover(CutoverCommand {
                    dry_run: true,
                    max_lag: Duration::from_millis(500),
                    ..CutoverCommand::default()
                }),
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(parse(sql), Ok(want), "{sql}");
        }
    }

    #[test]
    fn bad_commands_say_what_was_not_understood() {
        let cases = [
            ("SELECT 1", "unknown console command \"SELECT\""),
            (
                "SHOW everything",
                "unknown console command \"SHOW everything\"",
            ),
            ("CUTOVER NOW", "CUTOVER does not take \"NOW\""),
            ("CUTOVER MAX LAG", "CUTOVER MAX LAG needs a duration"),
            (
                "ROLLBACK CUTOVER KEEP SLOT",
                "ROLLBACK CUTOVER does not take \"KEEP\"",
            ),
            (
                "ROLLBACK CUTOVER WITH FALLBACK",
                "ROLLBACK CUTOVER does not take \"WITH\"",
            ),
            (
                "ROLLBACK CUTOVER TIMEOUT 'x'",
                "ROLLBACK CUTOVER TIMEOUT: 'x'",
            ),
            ("ROLLBACK", "the console runs no transactions"),
            ("rollback fence", "the console runs no transactions"),
            ("CUTOVER MAX LAG 'soon'", "CUTOVER MAX LAG: 'soon'"),
            ("SHOW LAG HISTORY 'x'", "SHOW LAG HISTORY: 'x'"),
            ("CUTOVER TIMEOUT '5", "unterminated quoted string"),
            ("VALIDATE REPAIR t", "REPAIR comes after the table names"),
            (
                "CUTOVER REQUIRE VALIDATED 'soon'",
                "CUTOVER REQUIRE VALIDATED: 'soon'",
            ),
            ("", "empty command"),
        ];
        for (sql, want) in cases {
            let e = parse(sql).unwrap_err();
            assert!(e.message.contains(want), "{sql}: {}", e.message);
        }
    }

    #[test]
    fn statements_split_at_semicolons_outside_quotes() {
        assert_eq!(
            split_statements("SHOW LAG; CUTOVER MAX LAG ';5s'; ;"),
            vec!["SHOW LAG", " CUTOVER MAX LAG ';5s'"]
        );
        assert!(split_statements(" ; ").is_empty());
    }

    #[test]
    fn the_hint_lists_every_command() {
        let hint = help_hint();
        for (c, _) in COMMANDS {
            assert!(hint.contains(c), "{c}");
        }
    }
}
