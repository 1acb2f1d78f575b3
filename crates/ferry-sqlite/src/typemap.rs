//! SQLite declared types and sampled values → PostgreSQL types.
//!
//! SQLite stores each value with its own storage class (NULL, INTEGER, REAL,
//! TEXT, BLOB); the declared type is only an affinity hint. ferry therefore
//! decides from both the declared type and a sample of the values (the first
//! [`crate::catalog::SAMPLE_ROWS`] rows). Pure: same input, same answer.
//!
//! | declared type (SQLite affinity rules)            | values sampled                  | PostgreSQL |
//! |--------------------------------------------------|---------------------------------|------------|
//! | `INTEGER PRIMARY KEY` (rowid alias)              | —                               | `bigint` (identity when the schema is created) |
//! | contains `BOOL`                                  | only 0 / 1                      | `boolean`  |
//! | contains `BOOL`                                  | anything else                   | as if undeclared, with a note |
//! | `DATE`                                           | all text `YYYY-MM-DD`           | `date`     |
//! | contains `DATE` or `TIME` (`DATETIME`, `TIMESTAMP`) | all text dates / timestamps  | `timestamp` (`timestamptz` when every value has a zone) |
//! | `TIME`                                           | all text `HH:MM[:SS[.f]]`       | `time`     |
//! | `DATE` or `DATETIME`/`TIMESTAMP`                 | only integers (Unix epoch)      | `date` / `timestamp(3)` (milliseconds when any \|n\| ≥ 10¹¹) / `timestamp` (seconds) |
//! | date/time declared                               | some value does not parse       | `text`; those rows are reported |
//! | contains `INT`                                   | —                               | `bigint`   |
//! | contains `CHAR`, `CLOB`, `TEXT` (`VARCHAR(n)`…)  | —                               | `text`     |
//! | contains `BLOB`                                  | —                               | `bytea`    |
//! | contains `REAL`, `FLOA`, `DOUB`                  | —                               | `double precision` |
//! | `NUMERIC(p,s)`, `DECIMAL(p,s)`                   | —                               | `numeric(p,s)` |
//! | `NUMERIC`, `DECIMAL`                             | —                               | `numeric`  |
//! | none, or another name (`YEAR`, `ENUM`, …)        | all integers                    | `bigint`   |
//! |                                                  | integers and reals              | `double precision` |
//! |                                                  | all blobs                       | `bytea`    |
//! |                                                  | otherwise / no values           | `text`     |
//!
//! Values that do not fit the chosen type (text in an INTEGER column, a blob
//! in a TEXT column, a number too wide for `numeric(p,s)`, …) are returned as
//! [`Misfit`]s with their rowid; [`policy`] then decides (widen the type,
//! refuse, or NULL them) and applies explicit per-column types. `ferry plan`
//! shows them by table, column and rowid; the loader never converts them
//! silently.

use ferry_core::calendar::days_in_month;

pub mod policy;

/// A sampled value, reduced to what type inference needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampled {
    Null,
    Integer(i64),
    Real(f64),
    /// Text, truncated to a short prefix (long text is never a date).
    Text(String),
    Blob,
}

/// One sampled value and the row it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `None` for WITHOUT ROWID tables.
    pub rowid: Option<i64>,
    pub value: Sampled,
}

/// A value that does not fit the chosen type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    pub rowid: Option<i64>,
    /// What is wrong, without the value (`text in an integer column`).
    pub reason: &'static str,
}

/// The chosen PostgreSQL type and what the sample says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inference {
    pub pg_type: String,
    pub misfits: Vec<Misfit>,
    /// Why the declared type was not followed, when it was not.
    pub note: Option<String>,
}

impl Inference {
    fn clean(pg_type: impl Into<String>) -> Self {
        Inference {
            pg_type: pg_type.into(),
            misfits: Vec::new(),
            note: None,
        }
    }
}

/// Chooses the PostgreSQL type of a column (see the module table).
pub fn infer(declared: &str, rowid_alias: bool, samples: &[Sample]) -> Inference {
    let upper = declared.trim().to_ascii_uppercase();
    if rowid_alias {
        return Inference::clean("bigint");
    }
    if upper.contains("BOOL") {
        if all_values(samples, |v| matches!(v, Sampled::Integer(0 | 1))) {
            return Inference::clean("boolean");
        }
        let mut inf = by_values(samples);
        inf.note = Some(format!(
            "declared {declared} but holds values other than 0/1; carried as {}",
            inf.pg_type
        ));
        return inf;
    }
    if upper.contains("INT") {
        return check(
            "bigint",
            samples,
            |v| matches!(v, Sampled::Integer(_)),
            "non-integer value in an integer column",
        );
    }
    if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
        return check(
            "text",
            samples,
            |v| !matches!(v, Sampled::Blob),
            "blob in a text column",
        );
    }
    if upper.contains("BLOB") {
        return check(
            "bytea",
            samples,
            |v| matches!(v, Sampled::Blob | Sampled::Text(_)),
            "number in a blob column",
        );
    }
    if upper.contains("REAL") || upper.contains("FLOA") || upper.contains("DOUB") {
        return check(
            "double precision",
            samples,
            |v| matches!(v, Sampled::Integer(_) | Sampled::Real(_)),
            "non-number in a floating-point column",
        );
    }
    if upper.contains("DATE") || upper.contains("TIME") {
        return temporal(&upper, declared, samples);
    }
    if upper.starts_with("NUMERIC") || upper.starts_with("DECIMAL") {
        return numeric(&upper, samples);
    }
    by_values(samples)
}

fn non_null(samples: &[Sample]) -> impl Iterator<Item = &Sample> {
    samples.iter().filter(|s| s.value != Sampled::Null)
}

fn all_values(samples: &[Sample], ok: impl Fn(&Sampled) -> bool) -> bool {
    non_null(samples).all(|s| ok(&s.value))
}

fn check(
    pg_type: &str,
    samples: &[Sample],
    fits: impl Fn(&Sampled) -> bool,
    reason: &'static str,
) -> Inference {
    let misfits = non_null(samples)
        .filter(|s| !fits(&s.value))
        .map(|s| Misfit {
            rowid: s.rowid,
            reason,
        })
        .collect();
    Inference {
        pg_type: pg_type.to_owned(),
        misfits,
        note: None,
    }
}

/// No usable declared type: decide from the storage classes.
pub(crate) fn by_values(samples: &[Sample]) -> Inference {
    let any = non_null(samples).next().is_some();
    let pg = if !any {
        "text"
    } else if all_values(samples, |v| matches!(v, Sampled::Integer(_))) {
        "bigint"
    } else if all_values(samples, |v| {
        matches!(v, Sampled::Integer(_) | Sampled::Real(_))
    }) {
        "double precision"
    } else if all_values(samples, |v| matches!(v, Sampled::Blob)) {
        "bytea"
    } else {
        return check(
            "text",
            samples,
            |v| !matches!(v, Sampled::Blob),
            "blob in a column of text values",
        );
    };
    Inference::clean(pg)
}

/// A date/time column holding only integers (what ORMs such as Prisma
/// write): Unix epoch milliseconds when any |n| ≥ 10¹¹ (`timestamp(3)`),
/// else seconds (`timestamp`); `date` for DATE. TIME is not an epoch.
fn epoch(upper: &str, declared: &str, samples: &[Sample]) -> Option<Inference> {
    let ints: Vec<i64> = non_null(samples)
        .map(|s| match s.value {
            Sampled::Integer(n) => Some(n),
            _ => None,
        })
        .collect::<Option<_>>()?;
    if ints.is_empty() || upper == "TIME" {
        return None;
    }
    let millis = ints.iter().any(|n| n.unsigned_abs() >= 100_000_000_000);
    let (pg, unit) = match (upper == "DATE", millis) {
        (true, true) => ("date", "milliseconds"),
        (true, false) => ("date", "seconds"),
        (false, true) => ("timestamp(3)", "milliseconds"),
        (false, false) => ("timestamp", "seconds"),
    };
    Some(Inference {
        pg_type: pg.to_owned(),
        misfits: Vec::new(),
        note: Some(format!(
            "declared {declared}, holds integers: read as Unix epoch {unit}, carried as {pg}"
        )),
    })
}

fn numeric(upper: &str, samples: &[Sample]) -> Inference {
    let args: Vec<u32> = upper
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inner, _)| {
            inner
                .split(',')
                .filter_map(|a| a.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (pg, int_digits) = match args.as_slice() {
        [p, s] if s <= p && *p > 0 => (format!("numeric({p},{s})"), Some(p - s)),
        [p] if *p > 0 => (format!("numeric({p})"), Some(*p)),
        _ => ("numeric".to_owned(), None),
    };
    let mut misfits = Vec::new();
    for s in non_null(samples) {
        let digits = match &s.value {
            Sampled::Integer(i) => i.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1),
            Sampled::Real(f) if f.is_finite() => {
                format!("{}", f.abs().trunc()).trim_start_matches('0').len() as u32
            }
            _ => {
                misfits.push(Misfit {
                    rowid: s.rowid,
                    reason: "non-number in a numeric column",
                });
                continue;
            }
        };
        if int_digits.is_some_and(|max| digits > max) {
            misfits.push(Misfit {
                rowid: s.rowid,
                reason: "number wider than the declared precision",
            });
        }
    }
    Inference {
        pg_type: pg,
        misfits,
        note: None,
    }
}

/// DATE / DATETIME / TIMESTAMP / TIME: the type only when every text value
/// parses, or every value is an integer (a Unix epoch, see [`epoch`]).
fn temporal(upper: &str, declared: &str, samples: &[Sample]) -> Inference {
    if let Some(inf) = epoch(upper, declared, samples) {
        return inf;
    }
    let kinds: Vec<(Option<i64>, Option<Temporal>)> = non_null(samples)
        .map(|s| {
            let k = match &s.value {
                Sampled::Text(t) => parse_temporal(t),
                _ => None,
            };
            (s.rowid, k)
        })
        .collect();
    let all = |f: &dyn Fn(Temporal) -> bool| kinds.iter().all(|(_, k)| k.is_some_and(f));
    let pg = if upper == "TIME" {
        all(&|k| k == Temporal::Time).then_some("time")
    } else if upper == "DATE" && all(&|k| k == Temporal::Date) {
        Some("date")
    } else if all(&|k| matches!(k, Temporal::Date | Temporal::Timestamp)) {
        Some("timestamp")
    } else if all(&|k| k == Temporal::TimestampTz) {
        Some("timestamptz")
    } else {
        None
    };
    if let Some(pg) = pg {
        return Inference::clean(pg);
    }
    let misfits: Vec<Misfit> = kinds
        .iter()
        .filter(|(_, k)| k.is_none())
        .map(|(rowid, _)| Misfit {
            rowid: *rowid,
            reason: "value is not a date/time",
        })
        .collect();
    let note = if misfits.is_empty() {
        format!("declared {declared} but mixes dates, times and time zones; carried as text")
    } else {
        format!("declared {declared} but some values do not parse as date/time; carried as text")
    };
    Inference {
        pg_type: "text".to_owned(),
        misfits,
        note: Some(note),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Temporal {
    Date,
    Time,
    Timestamp,
    TimestampTz,
}

/// `YYYY-MM-DD`, `HH:MM[:SS[.f]]`, or both joined by ` ` / `T`, with an
/// optional `Z` / `±HH[:MM]` zone.
fn parse_temporal(s: &str) -> Option<Temporal> {
    let s = s.trim();
    if let Some(rest) = parse_date(s) {
        if rest.is_empty() {
            return Some(Temporal::Date);
        }
        let rest = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('T'))?;
        let zone = parse_time(rest)?;
        return Some(if zone.is_empty() {
            Temporal::Timestamp
        } else if parse_zone(zone) {
            Temporal::TimestampTz
        } else {
            return None;
        });
    }
    parse_time(s)
        .filter(|rest| rest.is_empty())
        .map(|_| Temporal::Time)
}

fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    let head = s.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &s[n..]))
}

fn parse_date(s: &str) -> Option<&str> {
    let (y, r) = digits(s, 4)?;
    let (m, r) = digits(r.strip_prefix('-')?, 2)?;
    let (d, r) = digits(r.strip_prefix('-')?, 2)?;
    let max = days_in_month(i64::from(y), m);
    (d >= 1 && d <= max).then_some(r)
}

/// Parses a time of day, returning what follows it.
fn parse_time(s: &str) -> Option<&str> {
    let (h, r) = digits(s, 2)?;
    let (mi, mut r) = digits(r.strip_prefix(':')?, 2)?;
    if h > 23 || mi > 59 {
        return None;
    }
    if let Some(after) = r.strip_prefix(':') {
        let (sec, after) = digits(after, 2)?;
        if sec > 60 {
            return None;
        }
        r = after;
        if let Some(frac) = r.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 || n > 9 {
                return None;
            }
            r = &frac[n..];
        }
    }
    Some(r)
}

fn parse_zone(z: &str) -> bool {
    if z == "Z" {
        return true;
    }
    let Some(rest) = z.strip_prefix('+').or_else(|| z.strip_prefix('-')) else {
        return false;
    };
    match digits(rest, 2) {
        Some((h, "")) => h <= 14,
        Some((h, r)) => {
            let r = r.strip_prefix(':').unwrap_or(r);
            h <= 14 && matches!(digits(r, 2), Some((m, "")) if m < 60)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests;
