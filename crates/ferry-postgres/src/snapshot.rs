//! The full-load reader: binary COPY out of an exported snapshot.
//!
//! Consumes the name of a snapshot exported by the replication connection
//! that created the slot (`CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT`) and the
//! [`SourceTable`]s to load; emits, per [`Chunk`], a stream of raw
//! `COPY … TO STDOUT (FORMAT binary)` bytes that the applier pipes unchanged
//! into `COPY target (same columns) FROM STDIN (FORMAT binary)`.
//!
//! Invariants:
//! - Every [`SnapshotSession`] runs `BEGIN ISOLATION LEVEL REPEATABLE READ
//!   READ ONLY; SET TRANSACTION SNAPSHOT '<name>'`, so all load workers see
//!   exactly the slot's consistent point: a row is either in the load or in
//!   the change stream after it (DESIGN.md invariant 3). The exporting
//!   replication connection must stay open (and idle) until every worker has
//!   imported the snapshot.
//! - The column list is explicit and equals [`TableSchema::columns`] (which
//!   excludes generated and dropped columns) as read at the snapshot; the
//!   target COPY uses the same. The source COPY names the relation and
//!   those columns by their current names ([`crate::snapshot_names`]:
//!   PostgreSQL resolves names against its current catalog, also in an
//!   older snapshot), under a lock held only while the chunk is copied.
//! - [`plan_chunks`] covers every row exactly once: ctid block ranges are
//!   contiguous from block 0, and the last range is open-ended so rows in
//!   blocks added after the size was measured are still read. Plain tables
//!   are read with `ONLY` (inheritance children are tables of their own);
//!   partitioned tables are read per leaf partition, never via the empty root.
//! - Memory is bounded: bytes are streamed from the socket as they arrive.
//! - Tables are split only where splitting pays ([`plan_load`]): a chunk's
//!   `COPY (SELECT … WHERE ctid …)` is read 40–70% slower by the server
//!   than a whole-table `COPY t`, so a table goes whole unless it is larger
//!   than its share of the load at the configured parallelism.
//!
//! Restart: a chunk is the unit of retry. The applier truncates what an
//! unfinished chunk wrote (or the whole table) and copies it again; the
//! snapshot must still be importable, otherwise the load restarts with a new
//! slot. ctid range scans are TID Range Scans from PostgreSQL 14; on older
//! servers each chunk is a filtered sequential scan (correct, slower).
//!
//! Spec: <https://www.postgresql.org/docs/current/sql-copy.html>,
//! <https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-SNAPSHOT-SYNCHRONIZATION>.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use ferry_core::config::Endpoint;
use ferry_core::schema::quote_ident;
use ferry_core::{Error, TableId, TableSchema};
use futures_util::{Stream, TryStreamExt};
use tokio_postgres::Client;

use crate::catalog::{RelKind, Relation, SourceTable};
use crate::connect::{connect, query_error};

/// One unit of the full load (the seam's type): for PostgreSQL the
/// predicate is a `ctid` block range, and `only` reads the relation with
/// `ONLY` (plain tables; the fallback chunk of a partitioned table without
/// partitions reads the root without it).
pub use ferry_core::source::Chunk;

/// A relation is split only when it is larger than this many times the
/// workers' fair share of the load (all tables' bytes / workers): up to
/// there, loading the largest tables first keeps every worker busy with
/// whole-table `COPY t TO STDOUT`, which the server reads 40–70% faster than
/// the `COPY (SELECT … WHERE ctid …)` of a chunk; a little over it, the
/// longer tail costs less than the slower reads.
const SPLIT_OVER_FAIR_SHARE: f64 = 1.25;

/// The load plan of `tables` for `workers` parallel copies: a relation is
/// split into ctid ranges only when it holds more than `chunk_rows`
/// estimated rows *and* more than [`SPLIT_OVER_FAIR_SHARE`] × its share
/// (all bytes / `workers`), into `max(rows / chunk_rows, bytes / share)`
/// ranges, so one large table on a machine with cores to spare is spread
/// over all workers while on two cores the tables are copied whole.
pub fn plan_load(tables: &[SourceTable], chunk_rows: u64, workers: usize) -> Vec<Chunk> {
    let total: u64 = tables.iter().map(|t| t.bytes).sum();
    let share = total / workers.max(1) as u64;
    tables
        .iter()
        .flat_map(|t| plan_table(t, chunk_rows, Some(share)))
        .collect()
}

/// Split `table` into chunks: each relation with more than `chunk_rows`
/// estimated rows becomes `ceil(rows / chunk_rows)` ctid block ranges (at
/// most one per block); others are read whole. Unknown estimates read whole.
/// A partitioned table without partitions yields one chunk reading the root.
pub fn plan_chunks(table: &SourceTable, chunk_rows: u64) -> Vec<Chunk> {
    plan_table(table, chunk_rows, None)
}

/// [`plan_chunks`], with relations of at most [`SPLIT_OVER_FAIR_SHARE`] ×
/// `share` bytes (when given) read whole.
fn plan_table(table: &SourceTable, chunk_rows: u64, share: Option<u64>) -> Vec<Chunk> {
    let id = &table.schema.id;
    let blocks: u64 = table.relations.iter().map(|r| r.blocks).sum();
    let mut ranges: Vec<(TableId, Option<String>, bool)> = Vec::new();
    for rel in &table.relations {
        // The table's bytes (with TOAST) spread over its relations by heap size.
        let bytes =
            (u128::from(table.bytes) * u128::from(rel.blocks) / u128::from(blocks.max(1))) as u64;
        let pieces = match share {
            None => rel.row_estimate.unwrap_or(0).div_ceil(chunk_rows.max(1)),
            Some(share) if (bytes as f64) <= SPLIT_OVER_FAIR_SHARE * share as f64 => 1,
            Some(share) => rel
                .row_estimate
                .unwrap_or(0)
                .div_ceil(chunk_rows.max(1))
                .max(bytes.div_ceil(share.max(1))),
        };
        for predicate in ctid_ranges(rel, chunk_rows, pieces) {
            ranges.push((rel.id.clone(), predicate, true));
        }
    }
    if ranges.is_empty() {
        let only = table.relkind == RelKind::Table;
        ranges.push((id.clone(), None, only));
    }
    let total = ranges.len();
    ranges
        .into_iter()
        .enumerate()
        .map(|(index, (relation, predicate, only))| Chunk {
            table: id.clone(),
            relation,
            index,
            total,
            predicate,
            only,
        })
        .collect()
}

/// The ctid predicates of one relation cut into `pieces` block ranges
/// (`[None]` when not split).
fn ctid_ranges(rel: &Relation, chunk_rows: u64, pieces: u64) -> Vec<Option<String>> {
    let rows = rel.row_estimate.unwrap_or(0);
    if chunk_rows == 0 || rows <= chunk_rows || rel.blocks < 2 || pieces < 2 {
        return vec![None];
    }
    let n = pieces.min(rel.blocks);
    let bound = |i: u64| rel.blocks * i / n;
    (0..n)
        .map(|i| {
            let lo = format!("ctid >= '({},0)'::tid", bound(i));
            Some(if i + 1 == n {
                lo
            } else {
                format!("{lo} AND ctid < '({},0)'::tid", bound(i + 1))
            })
        })
        .collect()
}

/// The `COPY … TO STDOUT (FORMAT binary)` statement of a chunk.
pub fn copy_out_sql(chunk: &Chunk, schema: &TableSchema) -> String {
    let names: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
    copy_out_sql_as(chunk, &chunk.relation, &names)
}

/// [`copy_out_sql`] reading `relation` and `columns`: the chunk's relation
/// and columns under their current names ([`crate::snapshot_names`]).
pub fn copy_out_sql_as(chunk: &Chunk, relation: &TableId, columns: &[String]) -> String {
    let cols = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let rel = relation.quoted();
    match (&chunk.predicate, chunk.only) {
        (None, true) => format!("COPY {rel} ({cols}) TO STDOUT (FORMAT binary)"),
        (None, false) => format!("COPY (SELECT {cols} FROM {rel}) TO STDOUT (FORMAT binary)"),
        (Some(p), only) => format!(
            "COPY (SELECT {cols} FROM {}{rel} WHERE {p}) TO STDOUT (FORMAT binary)",
            if only { "ONLY " } else { "" }
        ),
    }
}

/// `"a", "b", …` in schema order: the list the target COPY must use too.
pub fn column_list(schema: &TableSchema) -> String {
    schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A read-only transaction on the source that sees an exported snapshot.
#[derive(Debug)]
pub struct SnapshotSession {
    client: Client,
    snapshot: String,
    /// A plain session's endpoint, for reading the current catalog.
    endpoint: Option<Endpoint>,
    /// A chunk's savepoint is open: the next chunk rolls back to it first.
    in_chunk: AtomicBool,
}

impl SnapshotSession {
    /// Connect to `endpoint` and import `snapshot_name`.
    pub async fn open(endpoint: &Endpoint, snapshot_name: &str) -> Result<Self, Error> {
        let client = connect(endpoint, "source").await?;
        let mut session = Self::import(client, snapshot_name).await?;
        session.endpoint = Some(endpoint.clone());
        Ok(session)
    }

    /// Import `snapshot_name` on an existing idle connection.
    pub async fn import(client: Client, snapshot_name: &str) -> Result<Self, Error> {
        if snapshot_name.is_empty()
            || !snapshot_name
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            return Err(Error::operator(
                format!("'{snapshot_name}' is not a PostgreSQL snapshot name"),
                "pass the name returned by CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT",
            ));
        }
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot_name}'"
        );
        if let Err(e) = client.batch_execute(&sql).await {
            let gone = e.as_db_error().is_some_and(|d| d.code().code() == "22023");
            if gone {
                return Err(Error::operator(
                    format!("snapshot {snapshot_name} can no longer be imported"),
                    "the replication connection that exported it has moved on or closed; restart `ferry run` so the load starts again from a new slot",
                )
                .with_source(e));
            }
            return Err(query_error(
                &format!("importing snapshot {snapshot_name}"),
                e,
            ));
        }
        tracing::debug!(snapshot = snapshot_name, "snapshot imported");
        Ok(SnapshotSession {
            client,
            snapshot: snapshot_name.to_owned(),
            endpoint: None,
            in_chunk: AtomicBool::new(false),
        })
    }

    pub fn snapshot_name(&self) -> &str {
        &self.snapshot
    }

    /// The session's connection (inside the snapshot transaction).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Stream the binary COPY bytes of `chunk`; `schema` gives the columns
    /// as the snapshot has them. Each chunk runs in a savepoint that the
    /// next one rolls back: the locks it took end with it, so DDL on a
    /// table waits for ferry only while one of its chunks is copied. The
    /// previous chunk's stream must have been read to its end.
    pub async fn copy_out(
        &self,
        chunk: &Chunk,
        schema: &TableSchema,
    ) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'static, Error> {
        let savepoint = match self.in_chunk.swap(true, Ordering::SeqCst) {
            true => "ROLLBACK TO SAVEPOINT ferry_chunk",
            false => "SAVEPOINT ferry_chunk",
        };
        // The savepoint goes in the same round trip as the names' lookup.
        let names = crate::snapshot_names::current_names(
            &self.client,
            self.endpoint.as_ref(),
            chunk,
            schema,
            savepoint,
        )
        .await?;
        let sql = copy_out_sql_as(chunk, &names.relation, &names.columns);
        let what = format!(
            "copying {} chunk {}/{} from {}",
            chunk.table,
            chunk.index + 1,
            chunk.total,
            chunk.relation
        );
        let stream = self
            .client
            .copy_out(&sql)
            .await
            .map_err(|e| query_error(&what, e))?;
        Ok(stream.map_err(move |e| query_error(&what, e)))
    }

    /// Exact row count at the snapshot (partitioned tables: all partitions;
    /// plain tables: `ONLY`, as loaded).
    pub async fn count_rows(&self, table: &SourceTable) -> Result<u64, Error> {
        let only = if table.relkind == RelKind::Table {
            "ONLY "
        } else {
            ""
        };
        let sql = format!("SELECT count(*) FROM {only}{}", table.schema.id.quoted());
        let row = self
            .client
            .query_one(&sql, &[])
            .await
            .map_err(|e| query_error(&format!("counting rows of {}", table.schema.id), e))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// `reltuples` summed over the table's relations, `None` when unknown.
    pub async fn estimate_rows(&self, table: &SourceTable) -> Result<Option<u64>, Error> {
        estimate_rows(&self.client, table).await
    }

    /// End the read transaction and hand the connection back.
    pub async fn close(self) -> Result<Client, Error> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| query_error("ending snapshot transaction", e))?;
        Ok(self.client)
    }
}

/// `reltuples` summed over the relations of `table`; `None` if any of them
/// was never analysed.
pub async fn estimate_rows(client: &Client, table: &SourceTable) -> Result<Option<u64>, Error> {
    let names: Vec<String> = table.relations.iter().map(|r| r.id.quoted()).collect();
    let row = client
        .query_one(
            "SELECT CASE WHEN bool_or(c.reltuples < 0) THEN NULL
                         ELSE sum(c.reltuples)::float8 END
               FROM unnest($1::text[]) AS r(name)
               JOIN pg_class c ON c.oid = r.name::regclass",
            &[&names],
        )
        .await
        .map_err(|e| query_error(&format!("estimating rows of {}", table.schema.id), e))?;
    let n: Option<f64> = row.get(0);
    Ok(n.map(|n| n.max(0.0).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ReplicaIdentity};

    fn schema(cols: &[&str]) -> TableSchema {
        TableSchema {
            id: TableId::new("public", "t"),
            columns: cols
                .iter()
                .map(|c| Column {
                    name: c.to_string(),
                    source_type: "integer".into(),
                    pg_type: "integer".into(),
                    type_oid: Some(23),
                    nullable: true,
                })
                .collect(),
            key: vec![0],
            replica_identity: ReplicaIdentity::Default,
        }
    }

    fn table(relkind: RelKind, rels: &[(&str, Option<u64>, u64)]) -> SourceTable {
        SourceTable {
            oid: 0,
            schema: schema(&["id", "Name"]),
            row_estimate: None,
            bytes: 0,
            partitions: rels.iter().map(|r| TableId::new("public", r.0)).collect(),
            relations: rels
                .iter()
                .map(|&(n, rows, blocks)| Relation {
                    id: TableId::new("public", n),
                    row_estimate: rows,
                    blocks,
                })
                .collect(),
            relkind,
            replica_identity_columns: vec![],
            unlogged: false,
        }
    }

    #[test]
    fn chunk_plans() {
        struct Case {
            rows: Option<u64>,
            blocks: u64,
            chunk_rows: u64,
            want: &'static [Option<&'static str>],
        }
        let cases = [
            Case {
                rows: Some(10),
                blocks: 1,
                chunk_rows: 100,
                want: &[None],
            },
            Case {
                rows: None,
                blocks: 1000,
                chunk_rows: 100,
                want: &[None],
            },
            Case {
                rows: Some(100),
                blocks: 10,
                chunk_rows: 100,
                want: &[None],
            },
            Case {
                rows: Some(1000),
                blocks: 1,
                chunk_rows: 100,
                want: &[None],
            },
            Case {
                rows: Some(101),
                blocks: 10,
                chunk_rows: 100,
                want: &[
                    Some("ctid >= '(0,0)'::tid AND ctid < '(5,0)'::tid"),
                    Some("ctid >= '(5,0)'::tid"),
                ],
            },
            Case {
                rows: Some(100_000),
                blocks: 541,
                chunk_rows: 25_000,
                want: &[
                    Some("ctid >= '(0,0)'::tid AND ctid < '(135,0)'::tid"),
                    Some("ctid >= '(135,0)'::tid AND ctid < '(270,0)'::tid"),
                    Some("ctid >= '(270,0)'::tid AND ctid < '(405,0)'::tid"),
                    Some("ctid >= '(405,0)'::tid"),
                ],
            },
            Case {
                rows: Some(1000),
                blocks: 3,
                chunk_rows: 10,
                want: &[
                    Some("ctid >= '(0,0)'::tid AND ctid < '(1,0)'::tid"),
                    Some("ctid >= '(1,0)'::tid AND ctid < '(2,0)'::tid"),
                    Some("ctid >= '(2,0)'::tid"),
                ],
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let t = table(RelKind::Table, &[("t", c.rows, c.blocks)]);
            let chunks = plan_chunks(&t, c.chunk_rows);
            let got: Vec<Option<&str>> = chunks.iter().map(|c| c.predicate.as_deref()).collect();
            assert_eq!(got, c.want, "case {i}");
            for (n, ch) in chunks.iter().enumerate() {
                assert_eq!((ch.index, ch.total, ch.only), (n, chunks.len(), true));
            }
        }
    }

    #[test]
    fn only_tables_over_their_share_are_split() {
        let sized = |name: &str, rows: u64, blocks: u64, bytes: u64| {
            let mut t = table(RelKind::Table, &[(name, Some(rows), blocks)]);
            t.schema.id = TableId::new("public", name);
            t.bytes = bytes;
            t
        };
        let mib = 1 << 20;
        // pgbench scale 20 with a wide table: the largest is about half.
        let tables = [
            sized("accounts", 2_000_000, 32_787, 256 * mib),
            sized("wide", 200_000, 2_000, 200 * mib),
            sized("small", 1_000_000, 5_000, 40 * mib),
        ];
        let pieces = |workers: usize| {
            let chunks = plan_load(&tables, 500_000, workers);
            ["accounts", "wide", "small"].map(|n| {
                let of: Vec<_> = chunks.iter().filter(|c| c.table.name == n).collect();
                assert!(of.iter().all(|c| c.total == of.len()), "{n}: {of:?}");
                of.len()
            })
        };
        // Two workers: each takes whole tables, largest first.
        assert_eq!(pieces(2), [1, 1, 1]);
        // One worker: nothing to spread.
        assert_eq!(pieces(1), [1, 1, 1]);
        // 16 cores: the two large tables are spread over the workers; the
        // wide one has too few rows to be worth a chunk of its own.
        assert_eq!(pieces(16), [9, 1, 2]);
        // chunk_rows still bounds a split table's chunks.
        let chunks = plan_load(&tables, 100_000, 4);
        assert_eq!(
            chunks.iter().filter(|c| c.table.name == "accounts").count(),
            20
        );
    }

    #[test]
    fn partitioned_tables_read_per_partition() {
        let t = table(
            RelKind::Partitioned,
            &[("p1", Some(10), 1), ("p2", Some(300), 30)],
        );
        let chunks = plan_chunks(&t, 100);
        let rels: Vec<&str> = chunks.iter().map(|c| c.relation.name.as_str()).collect();
        assert_eq!(rels, ["p1", "p2", "p2", "p2"]);
        assert!(
            chunks
                .iter()
                .all(|c| c.table.name == "t" && c.total == 4 && c.only)
        );
        let empty = table(RelKind::Partitioned, &[]);
        let chunks = plan_chunks(&empty, 100);
        assert_eq!(chunks.len(), 1);
        assert!(!chunks[0].only);
        assert_eq!(
            copy_out_sql(&chunks[0], &empty.schema),
            "COPY (SELECT \"id\", \"Name\" FROM \"public\".\"t\") TO STDOUT (FORMAT binary)"
        );
    }

    #[test]
    fn copy_statements_name_columns() {
        let t = table(RelKind::Table, &[("t", Some(300), 30)]);
        let whole = plan_chunks(&t, 1000);
        assert_eq!(
            copy_out_sql(&whole[0], &t.schema),
            "COPY \"public\".\"t\" (\"id\", \"Name\") TO STDOUT (FORMAT binary)"
        );
        let split = plan_chunks(&t, 100);
        assert_eq!(
            copy_out_sql(&split[2], &t.schema),
            "COPY (SELECT \"id\", \"Name\" FROM ONLY \"public\".\"t\" WHERE ctid >= '(20,0)'::tid) TO STDOUT (FORMAT binary)"
        );
    }
}
