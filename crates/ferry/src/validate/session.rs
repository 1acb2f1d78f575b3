//! The target sessions a validation holds — one that reads (and repairs),
//! and one that watches the applied checkpoint — and the SQL reads of a
//! PostgreSQL side.
//!
//! Source reads happen in short snapshots, one per range (never one long
//! transaction; see [`super::side::SourceSide::begin`]), each exact at a
//! source position: every transaction the snapshot sees committed before
//! it. The target is read only once the applied checkpoint
//! (`<state>.checkpoint`, stream `main`) is at or past it
//! ([`Sessions::wait_applied`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_apply::state::StateStore;
use ferry_core::Position;
use ferry_core::config::Config;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::digest::{Bounds, SESSION, Shape};
use super::settle::Key;

/// How often the applied checkpoint is read while waiting.
const APPLIED_POLL: Duration = Duration::from_millis(20);

/// A range's row count and digest on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub rows: i64,
    pub sum: String,
}

/// The target sessions of one validation: reads and repairs, and a
/// second one that watches the applied checkpoint.
pub struct Sessions {
    pub target: Client,
    watcher: Client,
    state: StateStore,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// Open a validation session on `endpoint` (either side of a
/// PostgreSQL → PostgreSQL migration): the output settings of [`SESSION`].
pub async fn open(endpoint: &ferry_core::config::Endpoint, side: &str) -> anyhow::Result<Client> {
    let c = ferry_postgres::connect::connect(endpoint, side).await?;
    c.batch_execute(SESSION)
        .await
        .with_context(|| format!("setting up the {side} validation session"))?;
    Ok(c)
}

impl Sessions {
    pub async fn open(config: &Config) -> anyhow::Result<Sessions> {
        let target = open(&config.target, "target").await?;
        let watcher = ferry_postgres::connect::connect(&config.target, "target").await?;
        Ok(Sessions {
            target,
            watcher,
            state: StateStore::new(config.state.schema.clone()),
        })
    }

    /// The applied checkpoint now.
    pub async fn applied<P: Position>(&self) -> anyhow::Result<Option<P>> {
        let row = self
            .watcher
            .query_opt(
                &format!(
                    "SELECT source_kind, position FROM {} WHERE stream = $1",
                    self.state.table("checkpoint")
                ),
                &[&crate::pipeline::STREAM],
            )
            .await
            .context("reading the applied checkpoint")?;
        let Some(row) = row else { return Ok(None) };
        let (kind, position): (String, String) = (row.get(0), row.get(1));
        if kind != P::KIND.as_str() {
            bail!(
                "the checkpoint is of a {kind} source, but the source is {}: the config names another source than the migration's",
                P::KIND.as_str()
            );
        }
        Ok(Some(position.parse().with_context(|| {
            format!("checkpoint position {position:?}")
        })?))
    }

    /// Wait until the applier has passed `at`, at most `bound`; `Ok(None)`
    /// when it did not (the applied position is in the error path of the
    /// caller).
    pub async fn wait_applied<P: Position>(
        &self,
        at: &P,
        bound: Duration,
    ) -> anyhow::Result<Option<P>> {
        let started = Instant::now();
        loop {
            if let Some(a) = self.applied::<P>().await?
                && a >= *at
            {
                return Ok(Some(a));
            }
            if started.elapsed() >= bound {
                return Ok(None);
            }
            tokio::time::sleep(APPLIED_POLL).await;
        }
    }

    /// [`Sessions::wait_applied`], an error naming both positions when the
    /// bound passes.
    pub async fn require_applied<P: Position>(
        &self,
        at: &P,
        bound: Duration,
    ) -> anyhow::Result<()> {
        if self.wait_applied(at, bound).await?.is_some() {
            return Ok(());
        }
        let applied = self
            .applied::<P>()
            .await?
            .map_or_else(|| "nothing".to_owned(), |a| a.to_string());
        bail!(
            "the applier did not pass source position {at} within {}s (applied: {applied}); \
             validation compares only what was applied: make sure `ferry run` is streaming \
             and not paused, or raise validate.wait_seconds",
            bound.as_secs()
        )
    }
}

/// The parameters of a range read: low bound, high bound, then `extra`.
fn params<'a>(
    lo: Option<&'a Key>,
    hi: Option<&'a Key>,
    extra: Option<&'a i64>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut p: Vec<&(dyn ToSql + Sync)> = Vec::new();
    for k in [lo, hi].into_iter().flatten() {
        p.extend(k.iter().map(|v| v as &(dyn ToSql + Sync)));
    }
    if let Some(e) = extra {
        p.push(e);
    }
    p
}

fn bounds(lo: Option<&Key>, hi: Option<&Key>) -> Bounds {
    Bounds {
        lo: lo.is_some(),
        hi: hi.is_some(),
    }
}

/// The key `n` rows after `lo` (`None`: fewer rows remain).
pub async fn next_bound(
    c: &Client,
    shape: &Shape,
    lo: Option<&Key>,
    n: i64,
) -> anyhow::Result<Option<Key>> {
    let row = c
        .query_opt(
            &shape.next_bound_sql(lo.is_some()),
            &params(lo, None, Some(&n)),
        )
        .await
        .with_context(|| format!("finding the next key range of {}", shape.relation))?;
    Ok(row.map(|r| key_of(r.get(0))))
}

pub async fn digest(
    c: &Client,
    shape: &Shape,
    lo: Option<&Key>,
    hi: Option<&Key>,
) -> anyhow::Result<Digest> {
    let row = c
        .query_one(&shape.digest_sql(bounds(lo, hi)), &params(lo, hi, None))
        .await
        .with_context(|| format!("hashing a key range of {}", shape.relation))?;
    Ok(Digest {
        rows: row.get(0),
        sum: row.get(1),
    })
}

/// Keys that cut `(lo, hi]` into parts of `step` rows.
pub async fn quantiles(
    c: &Client,
    shape: &Shape,
    lo: Option<&Key>,
    hi: Option<&Key>,
    step: i64,
) -> anyhow::Result<Vec<Key>> {
    let rows = c
        .query(
            &shape.quantiles_sql(bounds(lo, hi)),
            &params(lo, hi, Some(&step)),
        )
        .await
        .with_context(|| format!("splitting a key range of {}", shape.relation))?;
    Ok(rows.into_iter().map(|r| key_of(r.get(0))).collect())
}

/// Every row's key and hash in `(lo, hi]`.
pub async fn hashes(
    c: &Client,
    shape: &Shape,
    lo: Option<&Key>,
    hi: Option<&Key>,
) -> anyhow::Result<BTreeMap<Key, i64>> {
    let rows = c
        .query(&shape.hashes_sql(bounds(lo, hi)), &params(lo, hi, None))
        .await
        .with_context(|| format!("hashing the rows of a key range of {}", shape.relation))?;
    Ok(rows
        .into_iter()
        .map(|r| (key_of(r.get(0)), r.get(1)))
        .collect())
}

/// The rows of `keys`, columns as text.
pub type Rows = BTreeMap<Key, Vec<Option<String>>>;

/// Read the rows of `keys` (without locking them).
pub async fn rows(c: &Client, shape: &Shape, keys: &[Key]) -> Result<Rows, tokio_postgres::Error> {
    let columns: Vec<Vec<&str>> = (0..shape.key_width())
        .map(|i| keys.iter().map(|k| k[i].as_str()).collect())
        .collect();
    let p: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    let found = c.query(&shape.rows_sql(), &p).await?;
    Ok(found
        .into_iter()
        .map(|r| (key_of(r.get(0)), r.get(1)))
        .collect())
}

fn key_of(parts: Vec<Option<String>>) -> Key {
    parts.into_iter().map(Option::unwrap_or_default).collect()
}
