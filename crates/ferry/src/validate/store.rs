//! Validation results in the target's state schema (`validations`, state
//! schema version 3): one row per table per validation.

use std::time::SystemTime;

use anyhow::Context;
use ferry_apply::state::StateStore;
use ferry_monitor::status::{KeyDifference, TableValidation};
use tokio_postgres::Client;

/// Record one table's result.
pub async fn record(
    client: &Client,
    state: &StateStore,
    v: &TableValidation,
) -> anyhow::Result<()> {
    let differences = serde_json::to_string(&v.differences)?;
    let unsettled = serde_json::to_string(&v.unsettled)?;
    client
        .execute(
            &format!(
                "INSERT INTO {} (source_table, target_table, started_at, finished_at, rows_checked, ranges, \
                 differences, unsettled, repaired, clean, rows_per_second, note) \
                 VALUES ($1, $2, to_timestamp($3), to_timestamp($4), $5, $6, $7::text::jsonb, $8::text::jsonb, $9, $10, $11, $12)",
                state.table("validations")
            ),
            &[
                &v.table,
                &v.target_table,
                &unix(v.started_at),
                &unix(v.finished_at),
                &(v.rows_checked as i64),
                &(v.ranges as i64),
                &differences,
                &unsettled,
                &(v.repaired as i64),
                &v.clean,
                &v.rows_per_second,
                &v.note,
            ],
        )
        .await
        .with_context(|| format!("recording the validation of {} in the target", v.table))?;
    Ok(())
}

/// The newest result of each table.
pub async fn latest(client: &Client, state: &StateStore) -> anyhow::Result<Vec<TableValidation>> {
    read(
        client,
        &format!(
            "SELECT DISTINCT ON (source_table) {COLUMNS} FROM {} ORDER BY source_table, id DESC",
            state.table("validations")
        ),
    )
    .await
}

/// Every result, oldest first, at most `limit` (for the report).
pub async fn history(
    client: &Client,
    state: &StateStore,
    limit: i64,
) -> anyhow::Result<Vec<TableValidation>> {
    read(
        client,
        &format!(
            "SELECT * FROM (SELECT {COLUMNS}, id FROM {} ORDER BY id DESC LIMIT {limit}) s ORDER BY id",
            state.table("validations")
        ),
    )
    .await
}

const COLUMNS: &str = "source_table, target_table, extract(epoch FROM started_at)::float8, \
    extract(epoch FROM finished_at)::float8, rows_checked, ranges, differences::text, unsettled::text, repaired, \
    clean, rows_per_second, note";

async fn read(client: &Client, sql: &str) -> anyhow::Result<Vec<TableValidation>> {
    let rows = client
        .query(sql, &[])
        .await
        .context("reading validation results from the target")?;
    rows.into_iter()
        .map(|r| {
            let differences: Vec<KeyDifference> = serde_json::from_str(r.get::<_, &str>(6))?;
            let unsettled: Vec<Vec<String>> = serde_json::from_str(r.get::<_, &str>(7))?;
            Ok(TableValidation {
                table: r.get(0),
                target_table: r.get(1),
                key_columns: Vec::new(),
                started_at: from_unix(r.get(2)),
                finished_at: from_unix(r.get(3)),
                rows_checked: r.get::<_, i64>(4).max(0) as u64,
                ranges: r.get::<_, i64>(5).max(0) as u64,
                differences,
                unsettled,
                repaired: r.get::<_, i64>(8).max(0) as u64,
                clean: r.get(9),
                rows_per_second: r.get(10),
                note: r.get(11),
            })
        })
        .collect()
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn from_unix(s: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(s.max(0.0))
}

/// Unix seconds of `t` (for the metrics).
pub fn unix_seconds(t: SystemTime) -> f64 {
    unix(t)
}
