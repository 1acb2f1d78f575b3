//! Lag history in the target: `<state_schema>.lag_history`.
//!
//! Consumes: the current [`LagFigures`] (a closure the pipeline provides).
//! Emits: one row every `interval` (default 10 s) into
//! `lag_history(at timestamptz primary key, lag_seconds double precision,
//! lag_bytes bigint, both NOT NULL)`. The table belongs to the state
//! schema, defined and migrated in one place (ferry-apply's
//! `state::schema`); whoever starts the sampler runs that `ensure` first,
//! and this module only writes and reads rows.
//!
//! Compaction keeps weeks small: rows younger than [`FULL_RESOLUTION`]
//! (2 days) stay as sampled; older rows are folded into one row per
//! [`BUCKET`] (5 minutes) holding the maximum lag of that window, stamped at
//! the window's start. Compaction is idempotent (a folded window is one row
//! at its start and is left alone), so a restart at any point is harmless.
//!
//! The sampler is not on the data path: a failed insert is logged and the
//! next tick tries again; it stops on shutdown or when its connection closes.

use std::future::Future;
use std::time::{Duration, SystemTime};

use ferry_core::schema::quote_ident;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::lag::LagFigures;
use crate::timestamp::serde_time;

/// Rows younger than this keep full resolution.
pub const FULL_RESOLUTION: Duration = Duration::from_secs(2 * 86_400);
/// Width of one compacted window.
pub const BUCKET: Duration = Duration::from_secs(300);
/// Default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// How often the sampler compacts.
pub const COMPACT_EVERY: Duration = Duration::from_secs(3600);

/// One sampled point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LagSample {
    #[serde(with = "serde_time")]
    pub at: SystemTime,
    pub lag_seconds: f64,
    pub lag_bytes: u64,
}

/// Lag-history failures.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("lag history in schema {schema}: {what}")]
    Db {
        schema: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("lag history: the target connection is closed")]
    Closed,
}

impl From<HistoryError> for ferry_core::Error {
    fn from(e: HistoryError) -> Self {
        let msg = e.to_string();
        ferry_core::Error::transient(msg).with_source(e)
    }
}

fn db(schema: &str, what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> HistoryError {
    let schema = schema.to_owned();
    move |source| HistoryError::Db {
        schema,
        what,
        source,
    }
}

/// Insert one sample (a second sample at the same instant keeps the larger lag).
pub async fn record(client: &Client, schema: &str, s: &LagSample) -> Result<(), HistoryError> {
    let sql = format!(
        "INSERT INTO {}.lag_history (at, lag_seconds, lag_bytes) VALUES ($1, $2, $3)
         ON CONFLICT (at) DO UPDATE SET
             lag_seconds = greatest(lag_history.lag_seconds, excluded.lag_seconds),
             lag_bytes = greatest(lag_history.lag_bytes, excluded.lag_bytes)",
        quote_ident(schema)
    );
    let bytes = i64::try_from(s.lag_bytes).unwrap_or(i64::MAX);
    client
        .execute(&sql, &[&s.at, &s.lag_seconds, &bytes])
        .await
        .map(drop)
        .map_err(db(schema, "inserting a sample"))
}

/// Samples at or after `since`, oldest first.
pub async fn read_history(
    client: &Client,
    schema: &str,
    since: SystemTime,
) -> Result<Vec<LagSample>, HistoryError> {
    let sql = format!(
        "SELECT at, lag_seconds, lag_bytes FROM {}.lag_history WHERE at >= $1 ORDER BY at",
        quote_ident(schema)
    );
    let rows = client
        .query(&sql, &[&since])
        .await
        .map_err(db(schema, "reading samples"))?;
    rows.iter()
        .map(|r| {
            let bytes: i64 = r.try_get(2)?;
            Ok(LagSample {
                at: r.try_get(0)?,
                lag_seconds: r.try_get(1)?,
                lag_bytes: u64::try_from(bytes).unwrap_or(0),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db(schema, "decoding samples"))
}

/// Fold rows older than `now − FULL_RESOLUTION` into one row per window.
/// Returns the number of rows removed.
pub async fn compact(
    client: &mut Client,
    schema: &str,
    now: SystemTime,
) -> Result<u64, HistoryError> {
    let cutoff = now
        .checked_sub(FULL_RESOLUTION)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let t = quote_ident(schema);
    let width = BUCKET.as_secs();
    let bucket = format!("to_timestamp(floor(extract(epoch FROM at) / {width}) * {width})");
    let tx = client
        .transaction()
        .await
        .map_err(db(schema, "starting compaction"))?;
    // Windows with more than one row, or one row not at the window start.
    let windows = tx
        .query(
            &format!(
                "SELECT b, max(lag_seconds), max(lag_bytes), count(*) FROM
                     (SELECT {bucket} AS b, at, lag_seconds, lag_bytes
                      FROM {t}.lag_history WHERE at < $1) w
                 GROUP BY b HAVING count(*) > 1 OR min(at) <> b"
            ),
            &[&cutoff],
        )
        .await
        .map_err(db(schema, "finding windows to compact"))?;
    if windows.is_empty() {
        return Ok(0);
    }
    let mut starts: Vec<SystemTime> = Vec::with_capacity(windows.len());
    let mut secs: Vec<f64> = Vec::with_capacity(windows.len());
    let mut bytes: Vec<i64> = Vec::with_capacity(windows.len());
    let mut before = 0i64;
    for r in &windows {
        let decode = |e| db(schema, "decoding windows")(e);
        starts.push(r.try_get(0).map_err(decode)?);
        secs.push(r.try_get(1).map_err(decode)?);
        bytes.push(r.try_get(2).map_err(decode)?);
        before += r.try_get::<_, i64>(3).map_err(decode)?;
    }
    tx.execute(
        &format!("DELETE FROM {t}.lag_history WHERE at < $1 AND {bucket} = ANY($2)"),
        &[&cutoff, &starts],
    )
    .await
    .map_err(db(schema, "deleting compacted rows"))?;
    tx.execute(
        &format!(
            "INSERT INTO {t}.lag_history (at, lag_seconds, lag_bytes)
             SELECT * FROM unnest($1::timestamptz[], $2::float8[], $3::int8[])"
        ),
        &[&starts, &secs, &bytes],
    )
    .await
    .map_err(db(schema, "inserting compacted rows"))?;
    tx.commit()
        .await
        .map_err(db(schema, "committing compaction"))?;
    let removed = u64::try_from(before)
        .unwrap_or(0)
        .saturating_sub(starts.len() as u64);
    tracing::debug!(
        schema,
        windows = starts.len(),
        removed,
        "lag history compacted"
    );
    Ok(removed)
}

/// Sampler settings.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub schema: String,
    pub interval: Duration,
    pub compact_every: Duration,
}

impl SamplerConfig {
    pub fn new(schema: &str) -> Self {
        SamplerConfig {
            schema: schema.to_owned(),
            interval: DEFAULT_INTERVAL,
            compact_every: COMPACT_EVERY,
        }
    }
}

/// Sample `lag()` into the history every `cfg.interval` until `shutdown`
/// resolves; compact at start and every `cfg.compact_every`. Returns an
/// error only when the connection is gone (the caller may reconnect).
pub async fn run_sampler<F>(
    mut client: Client,
    cfg: SamplerConfig,
    lag: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HistoryError>
where
    F: Fn() -> LagFigures,
{
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut compact_tick = tokio::time::interval(cfg.compact_every);
    compact_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            _ = compact_tick.tick() => {
                if let Err(e) = compact(&mut client, &cfg.schema, SystemTime::now()).await {
                    tracing::warn!(error = %e, "lag history compaction failed");
                }
            }
            _ = tick.tick() => {
                let f = lag();
                let s = LagSample { at: SystemTime::now(), lag_seconds: f.seconds, lag_bytes: f.bytes };
                if let Err(e) = record(&client, &cfg.schema, &s).await {
                    tracing::warn!(error = %e, "lag history sample not recorded");
                }
            }
        }
        if client.is_closed() {
            return Err(HistoryError::Closed);
        }
    }
}
