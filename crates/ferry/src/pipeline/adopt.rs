//! Tables the source starts publishing mid-stream, copied into the target
//! ([`ferry_apply::Adopt`]).
//!
//! With DDL capture (`postgres.capture_ddl`), a table the filter selects is
//! published as soon as its changes can be carried without making the
//! application's writes fail: from its creation when it has a key, or later
//! when an `ALTER TABLE` gives it a key or `REPLICA IDENTITY FULL`, or makes
//! an unlogged table logged. In the later cases it already holds rows the
//! stream never carried (a `CREATE TABLE AS`, rows written while it had no
//! key). The applier, at the schema change that published it, calls
//! [`Adopter`]: a new snapshot of the source ([`Source::new_snapshot`], a
//! temporary slot whose position is exact), the table's columns read in it
//! and compared with the target's, every row copied into the target in the
//! applier's open transaction, and the snapshot's position recorded in
//! `table_snapshots` in that same transaction. The stream then drops the
//! table's changes from transactions that commit before that position (the
//! copy holds them) and applies the rest: exact, and a crash before the
//! commit redoes the copy from a new snapshot.
//!
//! The copy is taken after the schema change it follows, so a later change
//! of the same table's columns that commits before the snapshot would make
//! the copy's rows disagree with the target's columns: that stops the run
//! with the table named and the fix, never a silent difference.

use std::sync::Arc;

use ferry_apply::load::{copy_binary, copy_rows, copy_sql};
use ferry_apply::{Adopt, Adopted, StateStore};
use ferry_core::config::Config;
use ferry_core::source::{BoxFuture, Catalog, ChunkData, Snapshot, SnapshotReader, Source};
use ferry_core::{Error, Result, TableId, TableSchema};
use tokio_postgres::Client;

/// [`Adopt`] for any [`Source`] with [`Source::new_snapshot`].
pub(super) struct Adopter<S: Source> {
    source: Arc<S>,
    config: Config,
    state: StateStore,
}

impl<S: Source> std::fmt::Debug for Adopter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Adopter")
    }
}

impl<S: Source> Adopter<S> {
    pub(super) fn new(source: Arc<S>, config: Config, state: StateStore) -> Self {
        Adopter {
            source,
            config,
            state,
        }
    }

    async fn copy(
        &self,
        client: &Client,
        source: &TableId,
        target: &TableId,
    ) -> Result<Adopted<S::Position>> {
        let catalog = self.source.catalog().await?;
        let snapshot = self.source.new_snapshot().await?;
        let result = self
            .copy_at(&snapshot, &catalog, client, source, target)
            .await;
        snapshot.release().await;
        result
    }

    async fn copy_at(
        &self,
        snapshot: &S::Snapshot,
        catalog: &S::Catalog,
        client: &Client,
        source: &TableId,
        target: &TableId,
    ) -> Result<Adopted<S::Position>> {
        let at = self.source.catalog_at(snapshot, catalog).await?;
        let catalog = at.as_ref().unwrap_or(catalog);
        let Some(table) = catalog
            .tables()
            .into_iter()
            .find(|t| t.schema.id == *source)
        else {
            return Err(Error::operator(
                format!(
                    "{source} was published on the source mid-stream, but a new snapshot of the source no longer has it under that name (renamed or dropped again since)"
                ),
                "ferry cannot copy its rows exactly: start the migration over (`ferry cleanup --state`, then `ferry run`), or leave the table out with tables.exclude",
            ));
        };
        same_columns(client, &table.schema, target).await?;
        let chunks: Vec<_> = self
            .source
            .plan_chunks(catalog, u64::MAX, None)
            .into_iter()
            .filter(|c| c.table == *source)
            .collect();
        client
            .batch_execute(&format!("DELETE FROM {}", target.quoted()))
            .await
            .map_err(|e| ferry_apply::pg_error(format!("emptying {target} before its copy"), e))?;
        let columns: Vec<String> = table
            .schema
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let mut reader = snapshot.reader().await?;
        let mut rows = 0;
        for chunk in &chunks {
            let into = self.config.tables.target_name(&chunk.relation);
            rows += match reader.read(chunk, &table.schema).await? {
                ChunkData::BinaryCopy(data) => {
                    let sql = copy_sql(&into, &columns, true, false);
                    copy_binary(client, &into, &sql, data, None).await?.rows
                }
                ChunkData::Rows(data) => {
                    let sql = copy_sql(&into, &columns, false, false);
                    copy_rows(client, &into, &sql, &columns, &[], data, None)
                        .await?
                        .rows
                }
            };
        }
        drop(reader);
        let position = snapshot.position();
        let sql = format!(
            "INSERT INTO {} VALUES ($1, $2, $3)
             ON CONFLICT (table_schema, table_name) DO UPDATE SET lsn = EXCLUDED.lsn",
            self.state.table("table_snapshots")
        );
        client
            .execute(&sql, &[&source.schema, &source.name, &position.to_string()])
            .await
            .map_err(|e| {
                ferry_apply::pg_error(format!("recording the snapshot position of {source}"), e)
            })?;
        Ok(Adopted { position, rows })
    }
}

impl<S: Source> Adopt<S::Position> for Adopter<S> {
    fn adopt<'a>(
        &'a self,
        client: &'a Client,
        source: &'a TableId,
        target: &'a TableId,
    ) -> BoxFuture<'a, Result<Adopted<S::Position>>> {
        Box::pin(self.copy(client, source, target))
    }
}

/// The table's columns in the snapshot (name and type) are the target
/// table's (generated columns aside, which neither side copies).
async fn same_columns(client: &Client, schema: &TableSchema, target: &TableId) -> Result<()> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attgenerated = ''
              ORDER BY a.attname",
            &[&target.quoted()],
        )
        .await
        .map_err(|e| ferry_apply::pg_error(format!("reading the columns of {target}"), e))?;
    let mut there: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    there.sort();
    let mut wanted: Vec<(String, String)> = schema
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.pg_type.clone()))
        .collect();
    wanted.sort();
    if there == wanted {
        return Ok(());
    }
    let show = |cols: &[(String, String)]| {
        cols.iter()
            .map(|(n, t)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::operator(
        format!(
            "{} was published on the source mid-stream and its columns changed again before ferry could copy it: the source has ({}), the target ({})",
            schema.id,
            show(&wanted),
            show(&there)
        ),
        "ferry cannot copy its rows exactly: start the migration over (`ferry cleanup --state`, then `ferry run`), or leave the table out with tables.exclude",
    ))
}
