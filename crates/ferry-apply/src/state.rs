//! The state schema in the TARGET (DESIGN.md §3): where ferry keeps its
//! progress so that applied data and progress can never disagree.
//!
//! Consumes: nothing from the pipeline directly; every stage writes here.
//! The tables and their versions are defined in one place, [`schema`]
//! (schema name from `[state] schema`, default `ferry`); this module reads
//! and writes the rows: the pipeline [`Phase`], per-table lifecycle
//! ([`TableState`]) and load progress, runs and events. The checkpoint is
//! in [`crate::checkpoint`].
//!
//! Invariants: [`StateStore::ensure`] creates and migrates the schema in
//! one transaction serialised by an advisory lock (several ferry processes
//! or workers may call it at once) and runs before anything reads or
//! writes these tables. Restart: everything is read back from here;
//! nothing lives only in memory.

pub mod schema;

use ferry_core::schema::quote_ident;
use ferry_core::{Error, Result, TableId};
use tokio_postgres::Client;

use crate::error::pg_error;

/// Version of the state schema this build writes.
pub const STATE_SCHEMA_VERSION: i32 = schema::LATEST;

pub use ferry_core::phase::Phase;

fn unknown_state(what: &str, s: &str) -> Error {
    Error::operator(
        format!("state schema holds unknown {what} {s:?}"),
        "the state was written by a newer ferry; upgrade ferry",
    )
}

/// Durable per-table lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TableState {
    Pending,
    Loading,
    Loaded,
    CatchingUp,
    Streaming,
    Failed { reason: String },
}

impl TableState {
    /// The `state` column text.
    pub fn as_str(&self) -> &'static str {
        match self {
            TableState::Pending => "pending",
            TableState::Loading => "loading",
            TableState::Loaded => "loaded",
            TableState::CatchingUp => "catching_up",
            TableState::Streaming => "streaming",
            TableState::Failed { .. } => "failed",
        }
    }

    /// From the `state` and `reason` columns.
    pub fn from_parts(state: &str, reason: Option<String>) -> Result<Self> {
        Ok(match state {
            "pending" => TableState::Pending,
            "loading" => TableState::Loading,
            "loaded" => TableState::Loaded,
            "catching_up" => TableState::CatchingUp,
            "streaming" => TableState::Streaming,
            "failed" => TableState::Failed {
                reason: reason.unwrap_or_default(),
            },
            other => return Err(unknown_state("table state", other)),
        })
    }

    fn reason(&self) -> Option<&str> {
        match self {
            TableState::Failed { reason } => Some(reason),
            _ => None,
        }
    }
}

/// One row of `tables`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRecord {
    pub source_table: String,
    pub target_table: String,
    pub state: TableState,
    pub chunks_total: Option<i32>,
    pub rows_copied: i64,
    pub row_estimate: Option<i64>,
}

/// Access to the state schema of one target database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateStore {
    schema: String,
}

/// `schema.table` as stored in the `tables`/`chunks` key columns: the
/// [`TableId`] text form, parts quoted where needed, so it parses back
/// ([`TableId::parse`]) whatever the name (`public."v1.2_data"`).
pub fn table_key(t: &TableId) -> String {
    t.to_string()
}

/// An SQL string literal.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl StateStore {
    /// `schema` is the unquoted state schema name (`[state] schema`).
    pub fn new(schema: impl Into<String>) -> Self {
        StateStore {
            schema: schema.into(),
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `"schema"."name"`, for splicing into SQL.
    pub fn table(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(name))
    }

    /// Create the state schema or migrate it to [`STATE_SCHEMA_VERSION`]
    /// ([`schema::ensure`]); a version newer than this build stops with an
    /// operator error.
    pub async fn ensure(&self, client: &Client) -> Result<()> {
        schema::ensure(client, &self.schema).await.map(drop)
    }

    /// The start of a run ([`schema::ensure_start`]): on a fresh target only
    /// the tables a start writes first ([`schema::CORE`]), and
    /// [`schema::Started::CoreOnly`]: [`Self::ensure`] creates the rest.
    pub async fn ensure_start(&self, client: &Client) -> Result<schema::Started> {
        schema::ensure_start(client, &self.schema).await
    }

    /// The persisted pipeline phase, `None` before the first run.
    pub async fn read_phase(&self, client: &Client) -> Result<Option<Phase>> {
        let sql = format!("SELECT phase FROM {} WHERE id = 1", self.table("pipeline"));
        let row = client
            .query_opt(&sql, &[])
            .await
            .map_err(|e| pg_error("reading pipeline phase", e))?;
        row.map(|r| r.get::<_, String>(0).parse()).transpose()
    }

    /// The persisted phase where the state schema exists, `None` where it
    /// does not (yet): no query on a relation that may be missing, so a
    /// first look at a fresh target leaves no `ERROR` in its server log.
    pub async fn phase_if_present(&self, client: &Client) -> Result<Option<Phase>> {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass($1::text) IS NOT NULL",
                &[&self.table("pipeline")],
            )
            .await
            .map_err(|e| pg_error("looking up the pipeline phase table", e))?
            .get(0);
        match exists {
            true => self.read_phase(client).await,
            false => Ok(None),
        }
    }

    /// Persist the pipeline phase (and note it on the latest open run).
    pub async fn write_phase(&self, client: &Client, phase: Phase) -> Result<()> {
        let sql = format!(
            "INSERT INTO {p} (id, phase, updated_at) VALUES (1, $1, now())
             ON CONFLICT (id) DO UPDATE SET phase = EXCLUDED.phase, updated_at = now();
             ",
            p = self.table("pipeline")
        );
        client
            .execute(&sql, &[&phase.as_str()])
            .await
            .map_err(|e| pg_error("writing pipeline phase", e))?;
        let runs = format!(
            "UPDATE {r} SET phase = $1 WHERE id = (SELECT max(id) FROM {r} WHERE finished_at IS NULL)",
            r = self.table("runs")
        );
        client
            .execute(&runs, &[&phase.as_str()])
            .await
            .map_err(|e| pg_error("writing run phase", e))?;
        Ok(())
    }

    /// Register a table (keeps the state of an already known one).
    pub async fn register_table(
        &self,
        client: &Client,
        source: &TableId,
        target: &TableId,
        row_estimate: Option<i64>,
        chunks_total: Option<i32>,
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (source_table, target_table, row_estimate, chunks_total)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (source_table) DO UPDATE SET target_table = EXCLUDED.target_table,
                row_estimate = EXCLUDED.row_estimate, chunks_total = EXCLUDED.chunks_total,
                updated_at = now()",
            self.table("tables")
        );
        client
            .execute(
                &sql,
                &[
                    &table_key(source),
                    &table_key(target),
                    &row_estimate,
                    &chunks_total,
                ],
            )
            .await
            .map_err(|e| pg_error(format!("registering table {source}"), e))?;
        Ok(())
    }

    /// [`StateStore::register_table`] for many tables in one statement:
    /// (source, target, row estimate, chunks) each.
    pub async fn register_tables(
        &self,
        client: &Client,
        tables: &[(TableId, TableId, Option<i64>, Option<i32>)],
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (source_table, target_table, row_estimate, chunks_total)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int4[])
             ON CONFLICT (source_table) DO UPDATE SET target_table = EXCLUDED.target_table,
                row_estimate = EXCLUDED.row_estimate, chunks_total = EXCLUDED.chunks_total,
                updated_at = now()",
            self.table("tables")
        );
        let sources: Vec<String> = tables.iter().map(|t| table_key(&t.0)).collect();
        let targets: Vec<String> = tables.iter().map(|t| table_key(&t.1)).collect();
        let estimates: Vec<Option<i64>> = tables.iter().map(|t| t.2).collect();
        let chunks: Vec<Option<i32>> = tables.iter().map(|t| t.3).collect();
        client
            .execute(&sql, &[&sources, &targets, &estimates, &chunks])
            .await
            .map_err(|e| pg_error(format!("registering {} tables", tables.len()), e))?;
        Ok(())
    }

    /// A carried table renamed on the source (a carried schema change):
    /// its row follows the new names.
    pub async fn rename_table(
        &self,
        client: &Client,
        old: &TableId,
        source: &TableId,
        target: &TableId,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET source_table = $2, target_table = $3, updated_at = now() WHERE source_table = $1",
            self.table("tables")
        );
        client
            .execute(
                &sql,
                &[&table_key(old), &table_key(source), &table_key(target)],
            )
            .await
            .map_err(|e| pg_error(format!("renaming table {old} in the state"), e))?;
        Ok(())
    }

    /// A carried table dropped on the source: it is no longer carried.
    pub async fn forget_table(&self, client: &Client, source: &TableId) -> Result<()> {
        for t in ["chunks", "tables"] {
            let sql = format!("DELETE FROM {} WHERE source_table = $1", self.table(t));
            client
                .execute(&sql, &[&table_key(source)])
                .await
                .map_err(|e| pg_error(format!("forgetting table {source} in the state"), e))?;
        }
        Ok(())
    }

    /// Durably set a table's lifecycle state.
    pub async fn set_table_state(
        &self,
        client: &Client,
        source: &TableId,
        state: &TableState,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET state = $2, reason = $3, updated_at = now() WHERE source_table = $1",
            self.table("tables")
        );
        let n = client
            .execute(
                &sql,
                &[&table_key(source), &state.as_str(), &state.reason()],
            )
            .await
            .map_err(|e| pg_error(format!("writing state of table {source}"), e))?;
        if n == 0 {
            return Err(Error::operator(
                format!("table {source} is not registered in the state schema"),
                "register tables before changing their state (ferry bug)",
            ));
        }
        Ok(())
    }

    /// [`Self::set_table_state`] for every table of `sources` in one
    /// statement (one commit, however many tables).
    pub async fn set_tables_state(
        &self,
        client: &Client,
        sources: &[TableId],
        state: &TableState,
    ) -> Result<()> {
        let mut keys: Vec<String> = sources.iter().map(table_key).collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE {} SET state = $2, reason = $3, updated_at = now() WHERE source_table = ANY($1)",
            self.table("tables")
        );
        let n = client
            .execute(&sql, &[&keys, &state.as_str(), &state.reason()])
            .await
            .map_err(|e| pg_error(format!("writing state of {} tables", keys.len()), e))?;
        if n != keys.len() as u64 {
            return Err(Error::operator(
                format!(
                    "{} of the tables {} are not registered in the state schema",
                    keys.len() as u64 - n,
                    keys.join(", ")
                ),
                "register tables before changing their state (ferry bug)",
            ));
        }
        Ok(())
    }

    /// All registered tables.
    pub async fn tables(&self, client: &Client) -> Result<Vec<TableRecord>> {
        let sql = format!(
            "SELECT source_table, target_table, state, reason, chunks_total, rows_copied, row_estimate
             FROM {} ORDER BY source_table",
            self.table("tables")
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| pg_error("reading table states", e))?;
        rows.into_iter()
            .map(|r| {
                Ok(TableRecord {
                    source_table: r.get(0),
                    target_table: r.get(1),
                    state: TableState::from_parts(r.get(2), r.get(3))?,
                    chunks_total: r.get(4),
                    rows_copied: r.get(5),
                    row_estimate: r.get(6),
                })
            })
            .collect()
    }

    /// The rows a copy of `source` outside the load put in the target.
    pub async fn set_rows_copied(
        &self,
        client: &Client,
        source: &TableId,
        rows: i64,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET rows_copied = $2, updated_at = now() WHERE source_table = $1",
            self.table("tables")
        );
        client
            .execute(&sql, &[&table_key(source), &rows])
            .await
            .map_err(|e| pg_error(format!("recording the rows copied of {source}"), e))?;
        Ok(())
    }

    /// Whether `source` is in ferry's table list (loaded, or carried since
    /// it was created).
    pub async fn is_registered(&self, client: &Client, source: &TableId) -> Result<bool> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE source_table = $1)",
            self.table("tables")
        );
        let row = client
            .query_one(&sql, &[&table_key(source)])
            .await
            .map_err(|e| pg_error(format!("looking up table {source}"), e))?;
        Ok(row.get(0))
    }

    /// Values a source policy replaced, per source column, as committed:
    /// in the load (the chunks' counts) and in the change stream.
    pub async fn replaced_counts(
        &self,
        client: &Client,
    ) -> Result<Vec<ferry_core::source::ColumnCount>> {
        let sql = format!(
            "WITH l AS (SELECT c.source_table, j.key AS column_name, sum(j.value::bigint)::bigint AS loaded
                          FROM {chunks} c, jsonb_each_text(c.replaced) j
                         WHERE c.replaced IS NOT NULL GROUP BY 1, 2)
             SELECT coalesce(l.source_table, r.source_table), coalesce(l.column_name, r.column_name),
                    coalesce(l.loaded, 0), coalesce(r.streamed, 0)
               FROM l FULL JOIN {stream} r
                 ON r.source_table = l.source_table AND r.column_name = l.column_name
              ORDER BY 1, 2",
            chunks = self.table("chunks"),
            stream = self.table("replaced_values"),
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| pg_error("reading the counts of replaced values", e))?;
        Ok(rows
            .iter()
            .map(|r| ferry_core::source::ColumnCount {
                table: r.get(0),
                column: r.get(1),
                load: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                stream: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            })
            .collect())
    }

    /// Chunk numbers of `source` whose load committed.
    pub async fn chunks_done(&self, client: &Client, source: &TableId) -> Result<Vec<i32>> {
        let sql = format!(
            "SELECT chunk FROM {} WHERE source_table = $1 ORDER BY chunk",
            self.table("chunks")
        );
        let rows = client
            .query(&sql, &[&table_key(source)])
            .await
            .map_err(|e| pg_error(format!("reading chunks of {source}"), e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// [`StateStore::chunks_done`] of every table in one query: the done
    /// chunks by table key ([`table_key`]); a table with none is absent.
    pub async fn chunks_done_all(
        &self,
        client: &Client,
    ) -> Result<std::collections::HashMap<String, Vec<i32>>> {
        let sql = format!(
            "SELECT source_table, chunk FROM {} ORDER BY source_table, chunk",
            self.table("chunks")
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| pg_error("reading the chunks loaded", e))?;
        let mut done: std::collections::HashMap<String, Vec<i32>> = Default::default();
        for r in rows {
            done.entry(r.get(0)).or_default().push(r.get(1));
        }
        Ok(done)
    }

    /// Start a run; `source` must already be redacted (`RedactedUrl`'s Display).
    pub async fn start_run(&self, client: &Client, phase: Phase, source: &str) -> Result<i64> {
        let sql = format!(
            "INSERT INTO {} (phase, source) VALUES ($1, $2) RETURNING id",
            self.table("runs")
        );
        let row = client
            .query_one(&sql, &[&phase.as_str(), &source])
            .await
            .map_err(|e| pg_error("recording run start", e))?;
        Ok(row.get(0))
    }

    /// Mark a run finished.
    pub async fn finish_run(&self, client: &Client, run: i64) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET finished_at = now() WHERE id = $1",
            self.table("runs")
        );
        client
            .execute(&sql, &[&run])
            .await
            .map_err(|e| pg_error("recording run end", e))?;
        Ok(())
    }

    /// Store the cutover record (a JSON document) on a run.
    pub async fn record_cutover(&self, client: &Client, run: i64, json: &str) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET cutover = $2::text::jsonb WHERE id = $1",
            self.table("runs")
        );
        client
            .execute(&sql, &[&run, &json])
            .await
            .map_err(|e| pg_error("recording cutover", e))?;
        Ok(())
    }

    /// Append to the event log (phase changes, errors). No row values here.
    pub async fn record_event(&self, client: &Client, kind: &str, message: &str) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (kind, message) VALUES ($1, $2)",
            self.table("events")
        );
        client
            .execute(&sql, &[&kind, &message])
            .await
            .map_err(|e| pg_error("recording event", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_in_order() {
        for w in Phase::ALL.windows(2) {
            assert!(w[0] < w[1]);
        }
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
        }
        assert!("warp".parse::<Phase>().is_err());
    }

    #[test]
    fn table_states_round_trip() {
        let all = [
            TableState::Pending,
            TableState::Loading,
            TableState::Loaded,
            TableState::CatchingUp,
            TableState::Streaming,
            TableState::Failed {
                reason: "no key".into(),
            },
        ];
        for s in all {
            let back = TableState::from_parts(s.as_str(), s.reason().map(str::to_owned)).unwrap();
            assert_eq!(back, s);
        }
        assert!(TableState::from_parts("dancing", None).is_err());
    }
}
