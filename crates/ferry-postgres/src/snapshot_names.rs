//! The names a load chunk's COPY must use to read the snapshot's rows.
//!
//! Inside a transaction that imported an older snapshot, PostgreSQL still
//! resolves table and column names against its *current* catalog. A column
//! renamed on the source after the load snapshot is therefore unknown under
//! the snapshot's name, although the snapshot's rows hold its values under
//! the same attribute number. [`current_names`] locks the relation
//! (`ACCESS SHARE`, inside the caller's per-chunk savepoint, so no DDL can
//! change it until the chunk is copied) and maps the snapshot's table and
//! columns to their current names by `oid` and attribute number; the COPY
//! then reads exactly the snapshot's columns, and the schema change reaches
//! the target through the change stream after the snapshot.
//!
//! What the snapshot cannot read stops the load with an error naming the
//! table and column: a column dropped since (its values are gone from SQL's
//! reach), a table dropped since, or a table rewritten since by `ALTER
//! TABLE` (a type change, a volatile default, `SET LOGGED`): a rewrite is
//! not MVCC-safe, the snapshot would see it empty. A new file from
//! `TRUNCATE`, `VACUUM FULL` or `CLUSTER` (columns unchanged) reads as
//! usual: the latter two keep row visibility, and a `TRUNCATE` is in the
//! change stream.

use ferry_core::config::Endpoint;
use ferry_core::{Error, TableId, TableSchema};
use tokio_postgres::Client;

use crate::connect::{connect, query_error};
use crate::snapshot::Chunk;

/// How often a relation renamed between resolving and locking it is
/// resolved again.
const ATTEMPTS: usize = 5;

/// The fix when the snapshot cannot be read.
const START_OVER: &str = "start the migration over (`ferry cleanup --state`, drop the tables ferry created on the target, `ferry run`); deploy such changes once `ferry status` shows the load finished";

/// A dropped attribute's name in the current catalog.
const DROPPED: &str = "........pg.dropped.";

/// The current names of a chunk's relation and of the schema's columns (in
/// schema order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentNames {
    pub relation: TableId,
    pub columns: Vec<String>,
}

/// Lock `chunk.relation` and resolve the current names of it and of
/// `schema`'s columns as they are at the session's snapshot. `endpoint`
/// (a plain session's) tells a rewrite by `ALTER TABLE` from `TRUNCATE`,
/// `VACUUM FULL` and `CLUSTER`; without it any new file is an error.
pub async fn current_names(
    client: &Client,
    endpoint: Option<&Endpoint>,
    chunk: &Chunk,
    schema: &TableSchema,
) -> Result<CurrentNames, Error> {
    let what = format!(
        "resolving the names of {} at the load snapshot",
        chunk.relation
    );
    let rel = &chunk.relation;
    let row = client
        .query_opt(
            "SELECT c.oid, nullif(c.relfilenode, 0) FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&rel.schema, &rel.name],
        )
        .await
        .map_err(|e| query_error(&what, e))?
        .ok_or_else(|| {
            Error::operator(
                format!("{rel} is not in the load snapshot"),
                "report this as a ferry bug",
            )
        })?;
    let (oid, file): (u32, Option<u32>) = (row.get(0), row.get(1));
    let relation = lock_current(client, oid, rel, &what).await?;
    let now: Option<u32> = client
        .query_one("SELECT pg_relation_filenode($1::oid)", &[&oid])
        .await
        .map_err(|e| query_error(&what, e))?
        .get(0);
    if now != file && altered_since(client, endpoint, oid, &what).await? {
        return Err(Error::operator(
            format!(
                "{rel} was rewritten by ALTER TABLE on the source after the load snapshot (a type change, a volatile default, SET LOGGED/UNLOGGED): the snapshot can no longer read its rows"
            ),
            START_OVER,
        ));
    }
    let names: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
    let rows = client
        .query(
            "SELECT a.attname::text,
                    (pg_identify_object_as_address('pg_class'::regclass, a.attrelid, a.attnum)).object_names[3]
               FROM pg_attribute a
              WHERE a.attrelid = $1 AND a.attnum > 0 AND a.attname::text = ANY($2)",
            &[&oid, &names],
        )
        .await
        .map_err(|e| query_error(&what, e))?;
    let current: std::collections::HashMap<String, Option<String>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut columns = Vec::with_capacity(names.len());
    for name in &names {
        match current.get(name).cloned().flatten() {
            Some(now) if !now.starts_with(DROPPED) => columns.push(now),
            _ => {
                return Err(Error::operator(
                    format!(
                        "column {name} of {rel} was dropped on the source after the load snapshot: its values at the snapshot can no longer be read"
                    ),
                    START_OVER,
                ));
            }
        }
    }
    Ok(CurrentNames { relation, columns })
}

/// `LOCK TABLE` the relation `oid` under its current name, and that name.
async fn lock_current(
    client: &Client,
    oid: u32,
    at_snapshot: &TableId,
    what: &str,
) -> Result<TableId, Error> {
    let mut locked: Option<TableId> = None;
    for _ in 0..ATTEMPTS {
        let parts: Option<Vec<String>> = client
            .query_one(
                "SELECT (pg_identify_object_as_address('pg_class'::regclass, $1, 0)).object_names",
                &[&oid],
            )
            .await
            .map_err(|e| query_error(what, e))?
            .get(0);
        let Some([schema, name]) = parts.as_deref() else {
            return Err(Error::operator(
                format!("{at_snapshot} was dropped on the source after the load snapshot"),
                START_OVER,
            ));
        };
        let now = TableId::new(schema.clone(), name.clone());
        if locked.as_ref() == Some(&now) {
            return Ok(now);
        }
        // A name gone stale since it was read fails the LOCK: resolve again.
        let sql = format!(
            "SAVEPOINT ferry_lock; LOCK TABLE ONLY {} IN ACCESS SHARE MODE; RELEASE SAVEPOINT ferry_lock",
            now.quoted()
        );
        match client.batch_execute(&sql).await {
            Ok(()) => locked = Some(now),
            Err(_) => client
                .batch_execute("ROLLBACK TO SAVEPOINT ferry_lock; RELEASE SAVEPOINT ferry_lock")
                .await
                .map_err(|e| query_error(what, e))?,
        }
    }
    Err(Error::transient(format!(
        "{at_snapshot} kept being renamed on the source while the load locked it; run `ferry run` again"
    )))
}

/// Whether the columns or persistence of relation `oid` differ now from
/// the snapshot's (read through a plain session: the current catalog).
async fn altered_since(
    snapshot: &Client,
    endpoint: Option<&Endpoint>,
    oid: u32,
    what: &str,
) -> Result<bool, Error> {
    let Some(endpoint) = endpoint else {
        return Ok(true);
    };
    const SHAPE: &str = "SELECT c.relpersistence::text || coalesce(string_agg(
            a.attnum || ':' || a.atttypid || ':' || a.atttypmod || ':' || a.attisdropped, ','
            ORDER BY a.attnum), '')
       FROM pg_class c LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
      WHERE c.oid = $1 GROUP BY c.relpersistence";
    let then: Option<String> = snapshot
        .query_opt(SHAPE, &[&oid])
        .await
        .map_err(|e| query_error(what, e))?
        .map(|r| r.get(0));
    let now: Option<String> = connect(endpoint, "source")
        .await?
        .query_opt(SHAPE, &[&oid])
        .await
        .map_err(|e| query_error(what, e))?
        .map(|r| r.get(0));
    Ok(then != now)
}
