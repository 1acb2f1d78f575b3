//! Type policies: what a column's type becomes when its sampled values do
//! not all fit the type [`super::infer`] chose, and explicit per-column
//! types.
//!
//! Consumes the inference, the samples, the column's
//! `[tables.columns."main.t.c"]` override and the global `sqlite.misfits`
//! policy; emits the [`Choice`] the catalog carries. Pure.
//!
//! | policy (`on_misfit`, else `sqlite.misfits`) | a column with misfits |
//! |---|---|
//! | `widen` (default) | gets the type that holds every sampled value (`text` for integers mixed with strings, `double precision` for integers and reals, `bytea` for blobs); `ferry plan` shows it with counts and rowids |
//! | `fail` | keeps its type; `ferry plan` fails, naming the rows (so `ferry run` refuses) |
//! | `null` | keeps its type and becomes nullable; misfits become NULL in the load and the stream |
//!
//! An explicit `type` is followed as given; its misfits are counted by
//! decoding each sample with it ([`crate::value::decode`]); `widen` does not
//! apply to it (there is nothing to widen to but what the operator chose),
//! so it acts as `fail`.

use ferry_core::config::{ColumnOverride, MisfitPolicy};
use rusqlite::types::ValueRef;

use super::{Inference, Misfit, Sample, Sampled};

/// The type a column gets and the evidence `ferry plan` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub pg_type: String,
    /// Sampled values that do not fit the type the declaration (or the
    /// override) calls for: the evidence, also once widened.
    pub misfits: Vec<Misfit>,
    pub note: Option<String>,
    /// The policy in force for this column.
    pub policy: MisfitPolicy,
    /// `widen` changed the type from this one.
    pub widened_from: Option<String>,
    /// The type is `tables.columns`' explicit one.
    pub explicit: bool,
}

impl Choice {
    /// Misfits make `ferry plan` fail.
    pub fn refused(&self) -> bool {
        !self.misfits.is_empty()
            && self.widened_from.is_none()
            && self.policy != MisfitPolicy::Null
            && (self.policy == MisfitPolicy::Fail || self.explicit)
    }

    /// Misfit values are written as NULL.
    pub fn nulls_misfits(&self) -> bool {
        self.policy == MisfitPolicy::Null
    }
}

/// Apply the override and the policy to `inf` (see the module table).
pub fn choose(
    inf: Inference,
    samples: &[Sample],
    over: Option<&ColumnOverride>,
    global: MisfitPolicy,
) -> Choice {
    let policy = over.and_then(|o| o.on_misfit).unwrap_or(global);
    if let Some(t) = over.and_then(|o| o.pg_type.as_deref()) {
        let t = t.trim().to_owned();
        return Choice {
            misfits: misfits_for(&t, samples),
            note: Some(format!("type {t} set in tables.columns")),
            pg_type: t,
            policy,
            widened_from: None,
            explicit: true,
        };
    }
    let mut choice = Choice {
        pg_type: inf.pg_type,
        misfits: inf.misfits,
        note: inf.note,
        policy,
        widened_from: None,
        explicit: false,
    };
    if !choice.misfits.is_empty() && policy == MisfitPolicy::Widen {
        let wide = super::by_values(samples);
        if wide.misfits.is_empty() {
            choice.widened_from = Some(std::mem::replace(&mut choice.pg_type, wide.pg_type));
        }
    }
    choice
}

/// Sampled values that `pg_type` cannot take.
fn misfits_for(pg_type: &str, samples: &[Sample]) -> Vec<Misfit> {
    samples
        .iter()
        .filter_map(|s| {
            let v = match &s.value {
                Sampled::Null => return None,
                Sampled::Integer(i) => ValueRef::Integer(*i),
                Sampled::Real(f) => ValueRef::Real(*f),
                Sampled::Text(t) => ValueRef::Text(t.as_bytes()),
                Sampled::Blob => ValueRef::Blob(&[]),
            };
            crate::value::decode(pg_type, v).err().map(|reason| Misfit {
                rowid: s.rowid,
                reason,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: Vec<Sampled>) -> Vec<Sample> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, value)| Sample {
                rowid: Some(i as i64 + 1),
                value,
            })
            .collect()
    }

    fn mixed() -> Vec<Sample> {
        samples(vec![
            Sampled::Integer(1),
            Sampled::Text("two".into()),
            Sampled::Null,
            Sampled::Integer(3),
        ])
    }

    fn over(t: Option<&str>, p: Option<MisfitPolicy>) -> ColumnOverride {
        ColumnOverride {
            pg_type: t.map(str::to_owned),
            on_misfit: p,
            exclude: false,
        }
    }

    #[test]
    fn each_policy_on_integers_mixed_with_text() {
        let s = mixed();
        let inf = super::super::infer("INTEGER", false, &s);
        assert_eq!((inf.pg_type.as_str(), inf.misfits.len()), ("bigint", 1));

        let widen = choose(inf.clone(), &s, None, MisfitPolicy::Widen);
        assert_eq!(widen.pg_type, "text");
        assert_eq!(widen.widened_from.as_deref(), Some("bigint"));
        assert_eq!(widen.misfits[0].rowid, Some(2));
        assert!(!widen.refused() && !widen.nulls_misfits());

        let fail = choose(inf.clone(), &s, None, MisfitPolicy::Fail);
        assert_eq!((fail.pg_type.as_str(), fail.refused()), ("bigint", true));

        let null = choose(inf.clone(), &s, None, MisfitPolicy::Null);
        assert_eq!(null.pg_type, "bigint");
        assert!(!null.refused() && null.nulls_misfits());

        // The column's own policy wins over the global one.
        let o = over(None, Some(MisfitPolicy::Null));
        let col = choose(inf.clone(), &s, Some(&o), MisfitPolicy::Fail);
        assert!(col.nulls_misfits() && !col.refused());

        // A clean column is left alone by every policy.
        let clean = samples(vec![Sampled::Integer(1)]);
        let inf_clean = super::super::infer("INTEGER", false, &clean);
        for p in [MisfitPolicy::Widen, MisfitPolicy::Fail, MisfitPolicy::Null] {
            let c = choose(inf_clean.clone(), &clean, None, p);
            assert_eq!((c.pg_type.as_str(), c.refused()), ("bigint", false));
        }
    }

    #[test]
    fn explicit_types_count_their_own_misfits() {
        let s = mixed();
        let inf = super::super::infer("INTEGER", false, &s);
        let text = over(Some("text"), None);
        let c = choose(inf.clone(), &s, Some(&text), MisfitPolicy::Widen);
        assert_eq!(
            (c.pg_type.as_str(), c.misfits.len(), c.explicit),
            ("text", 0, true)
        );
        let boolean = over(Some("boolean"), None);
        let c = choose(inf.clone(), &s, Some(&boolean), MisfitPolicy::Widen);
        // 1 fits, "two" and 3 do not; widen cannot apply to an explicit type.
        assert_eq!(c.misfits.len(), 2);
        assert!(c.refused());
        let nulls = over(Some("boolean"), Some(MisfitPolicy::Null));
        let c = choose(inf, &s, Some(&nulls), MisfitPolicy::Fail);
        assert!(!c.refused() && c.nulls_misfits());
    }

    #[test]
    fn epoch_integers_in_date_time_columns() {
        let infer =
            |declared: &str, v: Vec<Sampled>| super::super::infer(declared, false, &samples(v));
        let ms = infer(
            "DATETIME",
            vec![Sampled::Integer(1_700_000_000_123), Sampled::Null],
        );
        assert_eq!((ms.pg_type.as_str(), ms.misfits.len()), ("timestamp(3)", 0));
        assert!(ms.note.unwrap().contains("epoch milliseconds"));
        let s = infer("TIMESTAMP", vec![Sampled::Integer(1_700_000_000)]);
        assert_eq!(s.pg_type, "timestamp");
        assert_eq!(
            infer("DATE", vec![Sampled::Integer(86_400)]).pg_type,
            "date"
        );
        // Mixed with text, or TIME: not an epoch.
        let mixed = infer(
            "DATETIME",
            vec![Sampled::Integer(1), Sampled::Text("x".into())],
        );
        assert_eq!(mixed.pg_type, "text");
        assert_eq!(infer("TIME", vec![Sampled::Integer(5)]).pg_type, "text");
        // And the decoder reads them the same way.
        let v = crate::value::decode("timestamp(3)", ValueRef::Integer(1_700_000_000_123)).unwrap();
        assert_eq!(v.to_pg_text().unwrap(), "2023-11-14 22:13:20.123");
    }
}
