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
//! The copy is taken after the schema change it follows. If the table's
//! columns changed again before the snapshot, the copy would not fit the
//! target's columns: the table is emptied instead and the snapshot's
//! position recorded, so its changes up to there are dropped; the change
//! that made the difference commits before that position and reaches the
//! applier next, which applies it and copies the table again (as it does
//! for any schema change that precedes a table's snapshot). If the source's
//! columns match the change's but the target's do not, the run stops with
//! both named (nothing is guessed).

use std::sync::Arc;

use ferry_apply::load::{Format, copy_binary, copy_passthrough, copy_rows, copy_sql};
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
        columns: &[(String, String)],
    ) -> Result<Adopted<S::Position>> {
        let catalog = self.source.catalog().await?;
        let snapshot = self.source.new_snapshot().await?;
        let result = self
            .copy_at(&snapshot, &catalog, client, source, target, columns)
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
        columns: &[(String, String)],
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
        let own = ferry_apply::truncate::own_rows(client, &[target.quoted()]).await?;
        client
            .batch_execute(&format!("DELETE FROM {}", own[0]))
            .await
            .map_err(|e| ferry_apply::pg_error(format!("emptying {target} before its copy"), e))?;
        let position = snapshot.position();
        self.record(client, source, &position).await?;
        if shape(columns.to_vec()) != shape(source_columns(&table.schema)) {
            tracing::warn!(table = %source, "its columns changed again before the copy's snapshot: emptied; copied at that schema change");
            return Ok(Adopted {
                position,
                rows: None,
            });
        }
        same_columns(client, &table.schema, target).await?;
        let chunks: Vec<_> = self
            .source
            .plan_chunks(catalog, u64::MAX, None)
            .into_iter()
            .filter(|c| c.table == *source)
            .collect();
        let names: Vec<String> = table
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
                    let sql = copy_sql(&into, &names, true, false);
                    copy_binary(client, &into, &sql, data, None).await?.rows
                }
                ChunkData::TextCopy(data) => {
                    let sql = copy_sql(&into, &names, false, false);
                    copy_passthrough(client, &into, &sql, data, None, Format::Text)
                        .await?
                        .rows
                }
                ChunkData::Rows(data) => {
                    let sql = copy_sql(&into, &names, false, false);
                    copy_rows(client, &into, &sql, &names, &[], data, None)
                        .await?
                        .rows
                }
            };
        }
        drop(reader);
        Ok(Adopted {
            position,
            rows: Some(rows),
        })
    }

    /// `source` holds, from `position` on, what the stream carries.
    async fn record(
        &self,
        client: &Client,
        source: &TableId,
        position: &S::Position,
    ) -> Result<()> {
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
        Ok(())
    }
}

impl<S: Source> Adopt<S::Position> for Adopter<S> {
    fn adopt<'a>(
        &'a self,
        client: &'a Client,
        source: &'a TableId,
        target: &'a TableId,
        columns: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Adopted<S::Position>>> {
        Box::pin(self.copy(client, source, target, columns))
    }
}

pub(super) fn source_columns(schema: &TableSchema) -> Vec<(String, String)> {
    schema
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.pg_type.clone()))
        .collect()
}

/// Columns as compared: sorted by name, each type without its schema
/// (`format_type` qualifies a type outside the session's `search_path`,
/// and the sessions that read the two sides differ in it).
pub(super) fn shape(columns: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = columns
        .into_iter()
        .map(|(n, t)| (n, unqualified(&t).to_owned()))
        .collect();
    v.sort();
    v
}

/// `schema.type…` → `type…` (the dot outside quotes, before any `(` or `[`).
fn unqualified(type_name: &str) -> &str {
    let mut quoted = false;
    let mut cut = 0;
    for (i, c) in type_name.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => cut = i + 1,
            '(' | '[' if !quoted => break,
            _ => {}
        }
    }
    &type_name[cut..]
}

/// The target table's columns (name, type; generated ones aside, which
/// neither side copies).
pub(super) async fn target_columns(
    client: &Client,
    target: &TableId,
) -> Result<Vec<(String, String)>> {
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
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `name type, …` for messages.
pub(super) fn show(cols: &[(String, String)]) -> String {
    cols.iter()
        .map(|(n, t)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table's columns in the snapshot (name and type) are the target
/// table's.
async fn same_columns(client: &Client, schema: &TableSchema, target: &TableId) -> Result<()> {
    let there = target_columns(client, target).await?;
    let wanted = source_columns(schema);
    if shape(there.clone()) == shape(wanted.clone()) {
        return Ok(());
    }
    Err(Error::operator(
        format!(
            "{} was published on the source mid-stream, but its columns on the target differ from the source's: the source has ({}), the target ({})",
            schema.id,
            show(&wanted),
            show(&there)
        ),
        "make the target table's columns match the source's (ALTER TABLE on the target) and run again, or leave the table out with tables.exclude",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_compare_without_their_schema() {
        for (given, want) in [
            ("public.mood", "mood"),
            ("\"My.Schema\".\"T.x\"", "\"T.x\""),
            ("numeric(12,2)", "numeric(12,2)"),
            ("app.mood[]", "mood[]"),
            ("timestamp(3) with time zone", "timestamp(3) with time zone"),
            ("character varying(40)", "character varying(40)"),
        ] {
            assert_eq!(unqualified(given), want, "{given}");
        }
        assert_eq!(
            shape(vec![
                ("b".into(), "public.mood".into()),
                ("a".into(), "int".into())
            ]),
            shape(vec![
                ("a".into(), "int".into()),
                ("b".into(), "mood".into())
            ])
        );
    }
}
