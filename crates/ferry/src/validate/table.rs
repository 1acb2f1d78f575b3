//! One table's validation: scan its key ranges, narrow the differing ones
//! down to keys, and confirm each key until it settles.
//!
//! 1. Scan: walk the source in key order, `chunk_rows` rows a range, each
//!    range's bound and digest read in its own short snapshot at position
//!    P. Up to [`WINDOW`] ranges are read before the target is compared.
//!    Equal digests are settled at once (the target holds the range's rows
//!    as of P, whether the applier is before or past P); ranges that differ
//!    are hashed on the target again once applied ≥ the newest P of the
//!    window, so the wait for the applier is paid only for differences, once
//!    per window. The last range is open above, the first below: rows
//!    only the target holds beyond the source's keys are found too.
//! 2. Narrow: a range whose digests differ is cut into [`FANOUT`] parts at
//!    keys of the side holding more rows, and each part hashed again (a
//!    new snapshot), until a part holds at most `leaf_rows`; then each
//!    row's key and hash are read on both sides and the keys that differ
//!    become candidates. The differing ranges of a window are narrowed a
//!    level at a time, with one wait for the applier per level.
//! 3. Confirm: see [`super::settle::settle`]. A candidate differs only
//!    because the target read came after a later change, or because it
//!    truly differs. Each round reads the source rows (keeping a hash of
//!    each), then the source position, waits once for the applier to pass
//!    it, reads the target rows, and reads the source rows again (all
//!    keys, [`CONFIRM_BATCH`] a statement): a key whose source row moved
//!    between the two reads is compared in another round; otherwise the
//!    target had applied every change the row had, and the rows are
//!    compared value by value. Nothing is locked on the source (the
//!    application's writers never wait for validation), so a difference
//!    must be seen in two rounds in a row.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use ferry_core::Position;
use ferry_core::config::ValidateConfig;
use ferry_monitor::status::KeyDifference;
use tracing::{debug, info};

use super::session::{Digest, Sessions};
use super::settle::{self, Key, Seen, Verdict};
use super::side::{Side, SourceSide};

/// Ranges read from the source before the target is compared.
const WINDOW: usize = 8;
/// Parts a differing range is cut into.
const FANOUT: i64 = 8;
/// Keys read in one statement of a confirmation round.
const CONFIRM_BATCH: usize = 1000;

/// What one table's validation found.
#[derive(Debug, Default)]
pub struct Found {
    pub rows_checked: u64,
    pub ranges: u64,
    pub differences: BTreeMap<Key, KeyDifference>,
    pub unsettled: BTreeSet<Key>,
    /// Why the table was not compared key by key.
    pub note: Option<String>,
    pub clean_digest: Option<bool>,
}

/// A range's bounds, `(lo, hi]`.
type Bounds = (Option<Key>, Option<Key>);

/// A range that differs, to be cut further.
#[derive(Debug)]
struct Part {
    lo: Option<Key>,
    hi: Option<Key>,
    /// Rows on the side holding more.
    rows: i64,
    /// The target holds more rows (cut at its keys).
    target_larger: bool,
}

/// One range read from the source, waiting for its target side.
#[derive(Debug)]
struct Pending<P> {
    lo: Option<Key>,
    hi: Option<Key>,
    source: Digest,
    at: P,
}

/// One table's validation.
pub struct TableCheck<'a, P> {
    pub sessions: &'a Sessions,
    pub config: &'a ValidateConfig,
    pub source: &'a dyn SourceSide<P>,
    pub target: &'a dyn Side,
    /// Column names in table order (what a difference names).
    pub columns: Vec<String>,
    pub budget: &'a mut super::Budget,
}

impl<P: Position> TableCheck<'_, P> {
    fn wait(&self) -> Duration {
        Duration::from_secs(self.config.wait_seconds)
    }

    /// Scan and narrow: the candidate keys.
    pub async fn scan(&mut self, found: &mut Found) -> anyhow::Result<BTreeSet<Key>> {
        let mut candidates = BTreeSet::new();
        let mut pending = Vec::new();
        let mut lo: Option<Key> = None;
        let chunk = self.config.chunk_rows.max(1) as i64;
        loop {
            let at = self.source.begin().await?;
            let read = async {
                let hi = self.source.next_bound(lo.as_ref(), chunk - 1).await?;
                let d = self.source.digest(lo.as_ref(), hi.as_ref()).await?;
                anyhow::Ok((hi, d))
            }
            .await;
            self.source.end().await?;
            let (hi, d) = read?;
            self.budget.spend(d.rows.max(0) as u64).await;
            found.rows_checked += d.rows.max(0) as u64;
            found.ranges += 1;
            let last = hi.is_none();
            pending.push(Pending {
                lo: lo.clone(),
                hi: hi.clone(),
                source: d,
                at,
            });
            if pending.len() >= WINDOW || last {
                self.compare_window(std::mem::take(&mut pending), &mut candidates)
                    .await?;
            }
            if last {
                return Ok(candidates);
            }
            lo = hi;
        }
    }

    async fn compare_window(
        &mut self,
        window: Vec<Pending<P>>,
        candidates: &mut BTreeSet<Key>,
    ) -> anyhow::Result<()> {
        // Equal digests need no wait: the target holds the source's rows of
        // the range as of P whether the applier is before or past P. Only a
        // range that differs is read again once the applier passed P.
        let mut differing = Vec::new();
        for p in window {
            let t = self.target_digest(&p).await?;
            if t != p.source {
                differing.push(p);
            }
        }
        let Some(newest) = differing.iter().map(|p| p.at.clone()).max() else {
            return Ok(());
        };
        self.sessions.require_applied(&newest, self.wait()).await?;
        let mut level = Vec::new();
        for p in differing {
            let t = self.target_digest(&p).await?;
            if t != p.source {
                debug!(table = %self.source.relation(), source_rows = p.source.rows, target_rows = t.rows, "range differs; narrowing");
                level.push(Part {
                    lo: p.lo,
                    hi: p.hi,
                    rows: p.source.rows.max(t.rows),
                    target_larger: t.rows > p.source.rows,
                });
            }
        }
        self.narrow(level, candidates).await
    }

    async fn target_digest(&self, p: &Pending<P>) -> anyhow::Result<Digest> {
        self.target.digest(p.lo.as_ref(), p.hi.as_ref()).await
    }

    /// Cut differing ranges until their parts are leaves, a level at a
    /// time (one wait for the applier per level); add the keys that differ
    /// in the leaves to `candidates`.
    async fn narrow(
        &mut self,
        mut level: Vec<Part>,
        candidates: &mut BTreeSet<Key>,
    ) -> anyhow::Result<()> {
        while !level.is_empty() {
            let leaf_rows = self.config.leaf_rows as i64;
            let mut newest = None;
            // Leaves: every row's hash on the source, each in a snapshot.
            let mut leaves = Vec::new();
            // Inner ranges: their parts and each part's source digest.
            let mut parts_read = Vec::new();
            for part in level {
                let at = self.source.begin().await?;
                newest = newest.max(Some(at));
                let read = if part.rows <= leaf_rows {
                    Err(self.leaf_hashes(&part).await)
                } else {
                    Ok(self.cut(&part).await)
                };
                self.source.end().await?;
                match read {
                    Err(hashes) => {
                        let hashes = hashes?;
                        self.budget.spend(hashes.len() as u64).await;
                        leaves.push((part, hashes));
                    }
                    Ok(cut) => {
                        let cut = cut?;
                        self.budget
                            .spend(cut.iter().map(|(_, d)| d.rows.max(0) as u64).sum())
                            .await;
                        // Nothing to cut at (rows went away meanwhile): the
                        // range is compared row by row at the next level.
                        let whole = cut.len() <= 1;
                        parts_read.extend(cut.into_iter().map(|(b, d)| (b, d, whole)));
                    }
                }
            }
            if let Some(at) = newest {
                self.sessions.require_applied(&at, self.wait()).await?;
            }
            for (part, source) in leaves {
                let target = self
                    .target
                    .hashes(part.lo.as_ref(), part.hi.as_ref())
                    .await?;
                candidates.extend(settle::differing_keys(&source, &target));
            }
            let mut next = Vec::new();
            for ((lo, hi), d, whole) in parts_read {
                let t = self.target.digest(lo.as_ref(), hi.as_ref()).await?;
                if t != d {
                    next.push(Part {
                        lo,
                        hi,
                        rows: if whole { 0 } else { d.rows.max(t.rows) },
                        target_larger: t.rows > d.rows,
                    });
                }
            }
            level = next;
        }
        Ok(())
    }

    /// In the open source snapshot: every row's key and hash of a leaf.
    async fn leaf_hashes(&self, part: &Part) -> anyhow::Result<BTreeMap<Key, i64>> {
        self.source.hashes(part.lo.as_ref(), part.hi.as_ref()).await
    }

    /// In the open source snapshot: the parts of a range, cut at keys of
    /// the side holding more rows, with their source digests (a range
    /// with nothing left to cut at comes back whole).
    async fn cut(&self, part: &Part) -> anyhow::Result<Vec<(Bounds, Digest)>> {
        let (lo, hi) = (part.lo.as_ref(), part.hi.as_ref());
        let step = (part.rows + FANOUT - 1) / FANOUT;
        let cuts = if part.target_larger {
            self.target.quantiles(lo, hi, step).await?
        } else {
            self.source.quantiles(lo, hi, step).await?
        };
        let mut out = Vec::new();
        for (plo, phi) in parts(lo, hi, cuts) {
            let d = self.source.digest(plo.as_ref(), phi.as_ref()).await?;
            out.push(((plo, phi), d));
        }
        Ok(out)
    }

    /// Confirm candidates round by round: differences and unsettled keys
    /// into `found`.
    pub async fn confirm(
        &mut self,
        candidates: BTreeSet<Key>,
        found: &mut Found,
    ) -> anyhow::Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        let mut seen: BTreeMap<Key, Vec<Seen>> =
            candidates.into_iter().map(|k| (k, Vec::new())).collect();
        let mut diffs: BTreeMap<Key, settle::RowDiff> = BTreeMap::new();
        let rounds = self.config.rounds.max(1);
        for round in 1..=rounds {
            let open: Vec<Key> = seen
                .iter()
                .filter(|(_, s)| settle::settle(s, rounds) == Verdict::Again)
                .map(|(k, _)| k.clone())
                .collect();
            if open.is_empty() {
                break;
            }
            debug!(table = %self.source.relation(), round, keys = open.len(), "confirming keys");
            let observed = self.round(&open).await?;
            for (k, (s, d)) in observed {
                if let Some(d) = d {
                    diffs.insert(k.clone(), d);
                }
                seen.entry(k).or_default().push(s);
            }
            if round < rounds {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(round))).await;
            }
        }
        for (k, s) in seen {
            match settle::settle(&s, rounds) {
                Verdict::Differs => {
                    let d = diffs
                        .remove(&k)
                        .unwrap_or(settle::RowDiff::Changed(Vec::new()));
                    found.differences.insert(
                        k.clone(),
                        KeyDifference {
                            key: k,
                            kind: d.kind().to_owned(),
                            columns: match d {
                                settle::RowDiff::Changed(c) => c,
                                _ => Vec::new(),
                            },
                        },
                    );
                }
                Verdict::Unsettled | Verdict::Again => {
                    found.unsettled.insert(k);
                }
                Verdict::Equal => {}
            }
        }
        Ok(())
    }

    /// One confirmation round over `keys` (see the module note, step 3),
    /// with one wait for the applier however many keys: the first source
    /// read is kept as a hash per key (memory stays a word per key; the
    /// rows are read [`CONFIRM_BATCH`] keys a statement).
    async fn round(
        &mut self,
        keys: &[Key],
    ) -> anyhow::Result<BTreeMap<Key, (Seen, Option<settle::RowDiff>)>> {
        let mut before = Vec::with_capacity(keys.len());
        for batch in keys.chunks(CONFIRM_BATCH) {
            let source = self
                .source
                .rows(batch)
                .await
                .context("reading the source rows of differing keys")?;
            before.extend(batch.iter().map(|k| row_hash(source.get(k))));
        }
        let at = self.source.position().await?;
        if self
            .sessions
            .wait_applied(&at, self.wait())
            .await?
            .is_none()
        {
            return Ok(keys
                .iter()
                .map(|k| (k.clone(), (Seen::Moved, None)))
                .collect());
        }
        let mut out = BTreeMap::new();
        for (batch, before) in keys.chunks(CONFIRM_BATCH).zip(before.chunks(CONFIRM_BATCH)) {
            let target = self
                .target
                .rows(batch)
                .await
                .context("reading the target rows of differing keys")?;
            let again = self
                .source
                .rows(batch)
                .await
                .context("reading the source rows of differing keys again")?;
            for (k, before) in batch.iter().zip(before) {
                let src = again.get(k);
                let seen = if row_hash(src) != *before {
                    // Changed on the source meanwhile: compare again.
                    (Seen::Moved, None)
                } else {
                    match settle::compare_rows(
                        &self.columns,
                        src.map(Vec::as_slice),
                        target.get(k).map(Vec::as_slice),
                    ) {
                        None => (Seen::Equal, None),
                        Some(d) => (Seen::Differs, Some(d)),
                    }
                };
                out.insert(k.clone(), seen);
            }
        }
        Ok(out)
    }

    /// A table without a key: whole-table digests, compared in up to
    /// `rounds` rounds; equal once is clean.
    pub async fn keyless(&mut self, found: &mut Found) -> anyhow::Result<()> {
        for round in 1..=self.config.rounds.max(1) {
            let at = self.source.begin().await?;
            let read = self.source.digest(None, None).await;
            self.source.end().await?;
            let d = read?;
            self.budget.spend(d.rows.max(0) as u64).await;
            found.rows_checked += d.rows.max(0) as u64;
            found.ranges += 1;
            self.sessions.require_applied(&at, self.wait()).await?;
            let t = self.target.digest(None, None).await?;
            if t == d {
                found.clean_digest = Some(true);
                found.note = Some("no primary key: compared as a whole (count and digest)".into());
                return Ok(());
            }
            info!(table = %self.source.relation(), round, "keyless table digests differ; comparing again");
            tokio::time::sleep(Duration::from_millis(200 * u64::from(round))).await;
        }
        found.clean_digest = Some(false);
        found.note = Some(format!(
            "no primary key: whole-table digests differed in all {} rounds (rows cannot be matched by key, so no keys are named)",
            self.config.rounds.max(1)
        ));
        Ok(())
    }
}

/// `(lo, hi]` cut at `cuts` (ascending keys inside the range).
fn parts(lo: Option<&Key>, hi: Option<&Key>, cuts: Vec<Key>) -> Vec<(Option<Key>, Option<Key>)> {
    let mut out = Vec::new();
    let mut from = lo.cloned();
    for c in cuts {
        if hi.is_some_and(|h| *h == c) {
            break;
        }
        out.push((from, Some(c.clone())));
        from = Some(c);
    }
    out.push((from, hi.cloned()));
    out
}

/// A lock not granted in time (`lock_timeout`) or a deadlock.
pub fn is_lock_wait(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(c.code(), "55P03" | "40P01"))
}

/// A source row (or its absence) as one word, to tell whether it changed
/// between a round's two reads.
fn row_hash(row: Option<&Vec<Option<String>>>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    row.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::parts;

    fn k(v: i64) -> Vec<String> {
        vec![v.to_string()]
    }

    #[test]
    fn parts_cover_the_range_once() {
        // (lo, hi, cuts, parts)
        let cases = vec![
            (None, None, vec![], vec![(None, None)]),
            (
                Some(1),
                Some(9),
                vec![3, 6],
                vec![(Some(1), Some(3)), (Some(3), Some(6)), (Some(6), Some(9))],
            ),
            // A cut on the high bound adds no empty part.
            (
                None,
                Some(9),
                vec![5, 9],
                vec![(None, Some(5)), (Some(5), Some(9))],
            ),
            (
                Some(2),
                None,
                vec![4],
                vec![(Some(2), Some(4)), (Some(4), None)],
            ),
        ];
        for (lo, hi, cuts, want) in cases {
            let got = parts(
                lo.map(k).as_ref(),
                hi.map(k).as_ref(),
                cuts.into_iter().map(k).collect(),
            );
            let want: Vec<_> = want
                .into_iter()
                .map(|(a, b)| (a.map(k), b.map(k)))
                .collect();
            assert_eq!(got, want);
        }
    }
}
