//! Partition watch: what pgoutput does not send when changes are published
//! via the partition root.
//!
//! With `publish_via_partition_root`, a `TRUNCATE` of one partition, an
//! `ALTER TABLE … DETACH PARTITION` and a `DROP TABLE` of a partition
//! reach the stream as nothing at all: the target keeps the rows and the
//! only symptom would be a cutover whose row counts differ. This task
//! compares, for every carried partitioned table, the source's leaf
//! partitions with the target's, every [`CHECK_EVERY`]:
//!
//! - a target leaf that is no longer a partition of the root on the source
//!   was detached or dropped there;
//! - a leaf that is empty on the source but holds rows on the target, twice
//!   in a row with everything up to the source position read at the first
//!   sight applied in between (so pending deletes are not mistaken for it),
//!   was truncated on its own.
//!
//! Each finding is logged once with the fix and shown as the status error;
//! streaming goes on (the other tables are unaffected). The decision is the
//! pure [`findings`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry_core::config::Endpoint;
use ferry_core::source::SuperviseContext;
use ferry_core::{Error, Lsn, TableId};
use tokio_postgres::Client;
use tracing::{error, warn};

use crate::connect::{connect, query_error};

/// How often the partitions are compared.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// One leaf partition: its quoted name and whether it holds a row.
pub type Leaves = BTreeMap<String, bool>;

/// A partition change the stream did not carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    /// On the target a partition of `root`, on the source not any more.
    Detached { root: String, leaf: String },
    /// Empty on the source, rows on the target (confirmed twice).
    Truncated { root: String, leaf: String },
}

impl Finding {
    pub fn message(&self) -> String {
        match self {
            Finding::Detached { root, leaf } => format!(
                "partition {leaf} of {root} was detached or dropped on the source; logical decoding does not carry that (changes are published via the partition root), so the target still has it and its rows: on the target run `ALTER TABLE {root} DETACH PARTITION {leaf}` (and `DROP TABLE {leaf}` if it was dropped), or re-attach it on the source"
            ),
            Finding::Truncated { root, leaf } => format!(
                "partition {leaf} of {root} is empty on the source but not on the target: it was truncated on its own, which logical decoding does not carry when changes are published via the partition root; on the target run `TRUNCATE ONLY {leaf}` (truncate the root on the source, not single partitions, while ferry runs)"
            ),
        }
    }
}

/// Compare one root's leaves. `suspects` are the leaves that looked
/// truncated at the previous check, `applied_past` says whether everything
/// up to the source position read then is applied now. Returns the
/// findings and the new suspects.
pub fn findings(
    root: &str,
    source: &Leaves,
    target: &Leaves,
    suspects: &BTreeSet<String>,
    applied_past: bool,
) -> (Vec<Finding>, BTreeSet<String>) {
    let mut out = Vec::new();
    let mut now_suspect = BTreeSet::new();
    for (leaf, &target_rows) in target {
        match source.get(leaf) {
            None => out.push(Finding::Detached {
                root: root.to_owned(),
                leaf: leaf.clone(),
            }),
            Some(false) if target_rows => {
                if applied_past && suspects.contains(leaf) {
                    out.push(Finding::Truncated {
                        root: root.to_owned(),
                        leaf: leaf.clone(),
                    });
                } else {
                    now_suspect.insert(leaf.clone());
                }
            }
            Some(_) => {}
        }
    }
    (out, now_suspect)
}

const LEAVES: &str =
    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_partition_tree($1::text::regclass) t
     JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE t.isleaf";

async fn leaves(client: &Client, root: &TableId) -> Result<Leaves, Error> {
    let names: Vec<String> = client
        .query(LEAVES, &[&root.quoted()])
        .await
        .map_err(|e| query_error(&format!("listing the partitions of {root}"), e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Leaves::new();
    for name in names {
        let rows: bool = client
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM ONLY {name})"), &[])
            .await
            .map_err(|e| query_error(&format!("looking into partition {name}"), e))?
            .get(0);
        out.insert(name, rows);
    }
    Ok(out)
}

async fn partitioned_roots(
    source: &Client,
    carried: &[(TableId, TableId)],
) -> Result<Vec<(TableId, TableId)>, Error> {
    let mut out = Vec::new();
    for (src, dst) in carried {
        let kind: Option<i8> = source
            .query_opt(
                "SELECT relkind::\"char\" FROM pg_class WHERE oid = $1::text::regclass",
                &[&src.quoted()],
            )
            .await
            .map_err(|e| query_error(&format!("reading the kind of {src}"), e))?
            .map(|r| r.get(0));
        if kind == Some(b'p' as i8) {
            out.push((src.clone(), dst.clone()));
        }
    }
    Ok(out)
}

/// Watch the carried partitioned tables until the task is aborted. Errors
/// (a lost session) are logged and the next round reconnects.
pub async fn watch(source: Endpoint, context: SuperviseContext<Lsn>) {
    let mut suspects: BTreeMap<String, (BTreeSet<String>, Lsn)> = BTreeMap::new();
    let mut reported = BTreeSet::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if let Err(e) = round(&source, &context, &mut suspects, &mut reported).await {
            warn!(error = %e, "partition check failed; will retry");
        }
    }
}

async fn round(
    source_endpoint: &Endpoint,
    context: &SuperviseContext<Lsn>,
    suspects: &mut BTreeMap<String, (BTreeSet<String>, Lsn)>,
    reported: &mut BTreeSet<Finding>,
) -> Result<(), Error> {
    if context.carried.is_empty() {
        return Ok(());
    }
    let source = connect(source_endpoint, "source").await?;
    let roots = partitioned_roots(&source, &context.carried).await?;
    if roots.is_empty() {
        return Ok(());
    }
    let target = connect(&context.target, "target").await?;
    for (src, dst) in roots {
        // The position before the source is read: changes up to it are
        // what the target must have applied for a fair comparison.
        let at: Lsn = source
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| query_error("reading the source WAL position", e))?
            .get::<_, String>(0)
            .parse()
            .map_err(|e| Error::operator(format!("{e}"), "report this as a ferry bug"))?;
        let s = leaves(&source, &src).await?;
        let t = leaves(&target, &dst).await?;
        let key = src.to_string();
        let (before, since) = suspects.remove(&key).unwrap_or_default();
        let applied_past = since.0 > 0 && (context.applied)().is_some_and(|a| a >= since);
        let (found, now) = findings(&dst.quoted(), &s, &t, &before, applied_past);
        for f in found {
            if reported.insert(f.clone()) {
                let msg = f.message();
                error!(table = %src, "{msg}");
                (context.report)(msg);
            }
        }
        if !now.is_empty() {
            // Keep the first sighting's position while it persists.
            let since = if before.is_empty() { at } else { since };
            suspects.insert(key, (now, since));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(v: &[(&str, bool)]) -> Leaves {
        v.iter().map(|(n, r)| (n.to_string(), *r)).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partition_findings() {
        let root = "public.m";
        let det = |l: &str| Finding::Detached {
            root: root.into(),
            leaf: l.into(),
        };
        let tru = |l: &str| Finding::Truncated {
            root: root.into(),
            leaf: l.into(),
        };
        // (source, target, suspects, applied past, findings, new suspects)
        let cases = [
            // Same leaves, rows on both: nothing.
            (
                leaves(&[("a", true), ("b", true)]),
                leaves(&[("a", true), ("b", true)]),
                set(&[]),
                false,
                vec![],
                set(&[]),
            ),
            // Both empty: nothing.
            (
                leaves(&[("a", false)]),
                leaves(&[("a", false)]),
                set(&[]),
                true,
                vec![],
                set(&[]),
            ),
            // Gone from the source: detached or dropped, at once.
            (
                leaves(&[("a", true)]),
                leaves(&[("a", true), ("b", false)]),
                set(&[]),
                false,
                vec![det("b")],
                set(&[]),
            ),
            // Empty on the source only: first a suspect.
            (
                leaves(&[("a", false)]),
                leaves(&[("a", true)]),
                set(&[]),
                true,
                vec![],
                set(&["a"]),
            ),
            // Still so, but the target has not caught up: still a suspect.
            (
                leaves(&[("a", false)]),
                leaves(&[("a", true)]),
                set(&["a"]),
                false,
                vec![],
                set(&["a"]),
            ),
            // Still so after catching up: truncated.
            (
                leaves(&[("a", false)]),
                leaves(&[("a", true)]),
                set(&["a"]),
                true,
                vec![tru("a")],
                set(&[]),
            ),
            // The suspect was pending deletes that arrived: cleared.
            (
                leaves(&[("a", false)]),
                leaves(&[("a", false)]),
                set(&["a"]),
                true,
                vec![],
                set(&[]),
            ),
            // A new partition on the source the target lacks: not ours to judge here.
            (
                leaves(&[("a", true), ("c", true)]),
                leaves(&[("a", true)]),
                set(&[]),
                true,
                vec![],
                set(&[]),
            ),
        ];
        for (i, (s, t, before, past, want, want_now)) in cases.into_iter().enumerate() {
            let (got, now) = findings(root, &s, &t, &before, past);
            assert_eq!((got, now), (want, want_now), "case {i}");
        }
        assert!(tru("a").message().contains("TRUNCATE ONLY a"));
        assert!(det("b").message().contains("DETACH PARTITION b"));
    }
}
