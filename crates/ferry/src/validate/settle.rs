//! The decisions of validation that are easy to get wrong, as pure
//! functions: whether a key that differed once is a difference, lag, or
//! still moving ([`settle`]); which keys of a leaf range differ
//! ([`differing_keys`]); how long to wait to stay inside the rows/s budget
//! ([`budget_delay`]); whether a cutover may rely on the last validation
//! ([`validated_enough`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use ferry_monitor::status::TableValidation;

/// A key's value: the text form of each key column, in key order.
pub type Key = Vec<String>;

/// What one confirmation round saw for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Source and target rows are equal: an earlier difference was lag.
    Equal,
    /// The rows differ, and the source row (or its absence) read before the
    /// position the round waited for is the one read again after the
    /// target read: the target had applied past every change the source
    /// row had then, so the difference is real, unless the row changed and
    /// changed back in between (an A→B→A the two reads cannot see), which
    /// is why one round is not enough (see [`settle`]).
    Differs,
    /// The round could not compare: the source row changed during it, or
    /// the applier did not pass the position in time.
    Moved,
}

/// What is known about a key after some rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Equal,
    Differs,
    /// Still moving after every round: reported as unsettled (the table is
    /// not clean), never as a difference and never as equal.
    Unsettled,
    /// Check again in another round.
    Again,
}

/// The verdict on a key from the rounds `seen` so far (oldest first), with
/// at most `rounds` rounds. Source rows are never locked (validation must
/// not make the application wait), so a difference must be seen in two
/// rounds in a row: a row changed and changed back between the two reads
/// of one round (or inserted and deleted again) is then not reported
/// unless it does so twice, each time around a target read.
pub fn settle(seen: &[Seen], rounds: u32) -> Verdict {
    let n = seen.len();
    match seen.last() {
        None => return Verdict::Again,
        Some(Seen::Equal) => return Verdict::Equal,
        Some(Seen::Differs) if n >= 2 && seen[n - 2] == Seen::Differs => {
            return Verdict::Differs;
        }
        Some(_) => {}
    }
    if n >= rounds as usize {
        Verdict::Unsettled
    } else {
        Verdict::Again
    }
}

/// Keys whose row hash differs between the two sides of a leaf range, or
/// that only one side holds (maps from key to row hash).
pub fn differing_keys(source: &BTreeMap<Key, i64>, target: &BTreeMap<Key, i64>) -> BTreeSet<Key> {
    let mut out = BTreeSet::new();
    for (k, h) in source {
        if target.get(k) != Some(h) {
            out.insert(k.clone());
        }
    }
    for k in target.keys() {
        if !source.contains_key(k) {
            out.insert(k.clone());
        }
    }
    out
}

/// How long to sleep after reading `rows` source rows in `elapsed` so
/// that the rate stays at most `per_second` (0: no limit).
pub fn budget_delay(rows: u64, elapsed: Duration, per_second: u64) -> Duration {
    if per_second == 0 {
        return Duration::ZERO;
    }
    let due = Duration::from_secs_f64(rows as f64 / per_second as f64);
    due.saturating_sub(elapsed)
}

/// How a pair of rows differs, value by value: `None` when equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowDiff {
    /// On the source, not on the target.
    Missing,
    /// On the target, not on the source.
    Extra,
    /// On both; the names of the columns whose values differ.
    Changed(Vec<String>),
}

impl RowDiff {
    pub fn kind(&self) -> &'static str {
        match self {
            RowDiff::Missing => "missing",
            RowDiff::Extra => "extra",
            RowDiff::Changed(_) => "changed",
        }
    }
}

/// Compare one key's rows column by column (values in their normalized
/// text form, `None` for NULL — so NULL and the empty string differ).
pub fn compare_rows(
    columns: &[String],
    source: Option<&[Option<String>]>,
    target: Option<&[Option<String>]>,
) -> Option<RowDiff> {
    match (source, target) {
        (None, None) => None,
        (Some(_), None) => Some(RowDiff::Missing),
        (None, Some(_)) => Some(RowDiff::Extra),
        (Some(s), Some(t)) => {
            let changed: Vec<String> = columns
                .iter()
                .enumerate()
                .filter(|(i, _)| s.get(*i) != t.get(*i))
                .map(|(_, c)| c.clone())
                .collect();
            (!changed.is_empty()).then_some(RowDiff::Changed(changed))
        }
    }
}

/// Whether the last validation of every table in `tables` is clean and
/// finished at most `max_age` before `now`; `Err` names each table that is
/// not, and why. `latest` holds the newest result per table.
pub fn validated_enough(
    tables: &[String],
    latest: &[TableValidation],
    now: SystemTime,
    max_age: Duration,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for t in tables {
        let Some(v) = latest.iter().find(|v| &v.table == t) else {
            problems.push(format!("{t} was never validated"));
            continue;
        };
        let age = now.duration_since(v.finished_at).unwrap_or(Duration::ZERO);
        if !v.clean {
            problems.push(format!(
                "{t} is not clean ({} differences, {} unsettled keys)",
                v.differences.len(),
                v.unsettled.len()
            ));
        } else if age > max_age {
            problems.push(format!(
                "{t} was last validated {} ago, more than {}",
                ferry_monitor::status::human_seconds(age.as_secs_f64()),
                ferry_monitor::status::human_seconds(max_age.as_secs_f64())
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Seen::{Differs, Equal, Moved};

    #[test]
    fn settle_by_rounds() {
        // (rounds seen, bound, verdict)
        let cases: &[(&[Seen], u32, Verdict)] = &[
            (&[], 5, Verdict::Again),
            (&[Equal], 5, Verdict::Equal),
            // Lag: moved, then equal once the applier passed it.
            (&[Moved, Moved, Equal], 5, Verdict::Equal),
            // A difference needs two rounds in a row.
            (&[Differs], 5, Verdict::Again),
            (&[Moved, Differs], 5, Verdict::Again),
            (&[Differs, Differs], 5, Verdict::Differs),
            (&[Moved, Differs, Differs], 5, Verdict::Differs),
            (&[Differs, Moved], 5, Verdict::Again),
            (&[Differs, Moved, Differs], 5, Verdict::Again),
            (&[Differs, Equal], 5, Verdict::Equal),
            // The bound: still moving is unsettled, never equal or differing.
            (&[Moved, Moved, Moved], 3, Verdict::Unsettled),
            (&[Moved, Moved], 3, Verdict::Again),
            (&[Differs], 1, Verdict::Unsettled),
            (&[Moved, Moved, Differs], 3, Verdict::Unsettled),
        ];
        for (seen, rounds, want) in cases {
            assert_eq!(settle(seen, *rounds), *want, "{seen:?} of {rounds}");
        }
    }

    fn hashes(rows: &[(i64, i64)]) -> BTreeMap<Key, i64> {
        rows.iter()
            .map(|(k, h)| (vec![k.to_string()], *h))
            .collect()
    }

    /// (source, target, differing keys)
    type LeafCase<'a> = (&'a [(i64, i64)], &'a [(i64, i64)], &'a [i64]);
    /// (source row, target row, difference)
    type RowCase<'a> = (
        Option<&'a [Option<String>]>,
        Option<&'a [Option<String>]>,
        Option<RowDiff>,
    );

    #[test]
    fn differing_keys_of_a_leaf() {
        // (source, target, differing keys)
        let cases: &[LeafCase] = &[
            (&[(1, 10), (2, 20)], &[(1, 10), (2, 20)], &[]),
            (&[(1, 10), (2, 20)], &[(1, 10), (2, 21)], &[2]),
            (&[(1, 10), (2, 20)], &[(1, 10)], &[2]),
            (&[(1, 10)], &[(1, 10), (3, 30)], &[3]),
            (&[], &[(7, 1)], &[7]),
            (&[(7, 1)], &[], &[7]),
            (
                &[(1, 1), (2, 2), (3, 3)],
                &[(1, 9), (3, 3), (4, 4)],
                &[1, 2, 4],
            ),
        ];
        for (s, t, want) in cases {
            let got = differing_keys(&hashes(s), &hashes(t));
            let want: BTreeSet<Key> = want.iter().map(|k| vec![k.to_string()]).collect();
            assert_eq!(got, want, "{s:?} vs {t:?}");
        }
    }

    #[test]
    fn budget_delay_keeps_the_rate() {
        let ms = Duration::from_millis;
        // (rows, elapsed, budget, delay)
        let cases = [
            (1000, ms(0), 0, ms(0)),
            (1000, ms(0), 1000, ms(1000)),
            (1000, ms(400), 1000, ms(600)),
            (1000, ms(2000), 1000, ms(0)),
            (0, ms(0), 10, ms(0)),
            (50_000, ms(100), 100_000, ms(400)),
        ];
        for (rows, elapsed, budget, want) in cases {
            let got = budget_delay(rows, elapsed, budget);
            assert!(
                got.abs_diff(want) < ms(1),
                "{rows} rows in {elapsed:?} at {budget}/s: {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn rows_compare_value_by_value() {
        let cols: Vec<String> = ["id", "name", "at"].map(String::from).to_vec();
        let row = |v: &[Option<&str>]| -> Vec<Option<String>> {
            v.iter().map(|x| x.map(String::from)).collect()
        };
        let a = row(&[Some("1"), Some("x"), Some("2024-01-01 00:00:00+00")]);
        let empty = row(&[Some("1"), Some(""), Some("2024-01-01 00:00:00+00")]);
        let null = row(&[Some("1"), None, Some("2024-01-01 00:00:00+00")]);
        let micro = row(&[Some("1"), Some("x"), Some("2024-01-01 00:00:00.000001+00")]);
        let cases: Vec<RowCase> = vec![
            (Some(&a), Some(&a), None),
            (None, None, None),
            (Some(&a), None, Some(RowDiff::Missing)),
            (None, Some(&a), Some(RowDiff::Extra)),
            (
                Some(&null),
                Some(&empty),
                Some(RowDiff::Changed(vec!["name".into()])),
            ),
            (
                Some(&a),
                Some(&micro),
                Some(RowDiff::Changed(vec!["at".into()])),
            ),
            (
                Some(&null),
                Some(&micro),
                Some(RowDiff::Changed(vec!["name".into(), "at".into()])),
            ),
        ];
        for (s, t, want) in cases {
            assert_eq!(compare_rows(&cols, s, t), want, "{s:?} vs {t:?}");
        }
    }

    fn result(table: &str, clean: bool, finished_at: SystemTime) -> TableValidation {
        TableValidation {
            table: table.into(),
            clean,
            finished_at,
            started_at: finished_at,
            ..TableValidation::default()
        }
    }

    #[test]
    fn cutover_requires_fresh_clean_validations() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s| now - Duration::from_secs(s);
        let hour = Duration::from_secs(3600);
        let tables = vec!["public.a".to_owned(), "public.b".to_owned()];
        // (latest results, allowed?, reason contains)
        let cases = vec![
            (
                vec![
                    result("public.a", true, ago(10)),
                    result("public.b", true, ago(3599)),
                ],
                true,
                "",
            ),
            (
                vec![result("public.a", true, ago(10))],
                false,
                "public.b was never validated",
            ),
            (
                vec![
                    result("public.a", true, ago(10)),
                    result("public.b", false, ago(10)),
                ],
                false,
                "public.b is not clean",
            ),
            (
                vec![
                    result("public.a", true, ago(3601)),
                    result("public.b", true, ago(1)),
                ],
                false,
                "public.a was last validated 1h 00m ago",
            ),
            // A result from the future (clock skew) counts as fresh.
            (
                vec![
                    result("public.a", true, now + hour),
                    result("public.b", true, now),
                ],
                true,
                "",
            ),
        ];
        for (latest, ok, why) in cases {
            let r = validated_enough(&tables, &latest, now, hour);
            assert_eq!(r.is_ok(), ok, "{r:?}");
            if let Err(e) = r {
                assert!(e.contains(why), "{e}");
            }
        }
    }
}
