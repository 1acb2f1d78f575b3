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
use ferry_core::schema::quote_literal;
use ferry_core::{Error, TableId, TableSchema};
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

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
/// `before` (SQL, e.g. the chunk's savepoint) runs first, in the same
/// round trip. Two round trips in all when nothing changed: the relation
/// with its current name, then the lock with what is read under it (each
/// was a round trip or two of its own, a dozen per chunk).
pub async fn current_names(
    client: &Client,
    endpoint: Option<&Endpoint>,
    chunk: &Chunk,
    schema: &TableSchema,
    before: &str,
) -> Result<CurrentNames, Error> {
    let what = format!(
        "resolving the names of {} at the load snapshot",
        chunk.relation
    );
    let rel = &chunk.relation;
    let sql = format!(
        "{before}; SELECT s.oid, s.file, {NAME_COLUMNS} FROM (
           SELECT c.oid, nullif(c.relfilenode, 0) AS file, {names} AS names
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = {} AND c.relname = {}) s",
        quote_literal(&rel.schema),
        quote_literal(&rel.name),
        names = identified("c.oid"),
    );
    let sets = result_sets(client.simple_query(&sql).await, &what)?;
    let row = sets.last().and_then(|s| s.first()).ok_or_else(|| {
        Error::operator(
            format!("{rel} is not in the load snapshot"),
            "report this as a ferry bug",
        )
    })?;
    let oid: u32 = parse(row.get(0), &what)?;
    let file: Option<u32> = row.get(1).map(|f| parse(Some(f), &what)).transpose()?;
    let mut current = current_name(row, 2, rel)?;
    let names: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
    let mut failed = None;
    for _ in 0..ATTEMPTS {
        // A name gone stale since it was read fails the LOCK: resolve again.
        // What is read under the lock is kept only if the relation still
        // has the name locked (a rename needs a stronger lock than ours).
        let sql = format!(
            "SAVEPOINT ferry_lock; LOCK TABLE ONLY {locked} IN ACCESS SHARE MODE;
             SELECT {NAME_COLUMNS}, pg_relation_filenode({oid}::oid) FROM (SELECT {names} AS names) s;
             SELECT a.attname::text,
                    (pg_identify_object_as_address('pg_class'::regclass, a.attrelid, a.attnum)).object_names[3]
               FROM pg_attribute a
              WHERE a.attrelid = {oid}::oid AND a.attnum > 0 AND a.attname::text = ANY({columns});
             RELEASE SAVEPOINT ferry_lock",
            locked = current.quoted(),
            names = identified(&format!("{oid}::oid")),
            columns = text_array(&names),
        );
        let sets = match client.simple_query(&sql).await {
            Ok(messages) => split_sets(messages),
            Err(e) => {
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT ferry_lock; RELEASE SAVEPOINT ferry_lock")
                    .await
                    .map_err(|e| query_error(&what, e))?;
                failed = Some(e);
                let sql = format!(
                    "SELECT {NAME_COLUMNS} FROM (SELECT {} AS names) s",
                    identified(&format!("{oid}::oid"))
                );
                let sets = result_sets(client.simple_query(&sql).await, &what)?;
                let row = sets.last().and_then(|s| s.first());
                current = match row {
                    Some(row) => current_name(row, 0, rel)?,
                    None => return Err(dropped(rel)),
                };
                continue;
            }
        };
        failed = None;
        let (Some(after), Some(attributes)) = (sets.get(2).and_then(|s| s.first()), sets.get(3))
        else {
            return Err(Error::transient(format!(
                "{what}: the server answered fewer results than asked"
            )));
        };
        let now = current_name(after, 0, rel)?;
        if now != current {
            current = now;
            continue;
        }
        let filenode: Option<u32> = after.get(3).map(|f| parse(Some(f), &what)).transpose()?;
        if filenode != file && altered_since(client, endpoint, oid, &what).await? {
            return Err(Error::operator(
                format!(
                    "{rel} was rewritten by ALTER TABLE on the source after the load snapshot (a type change, a volatile default, SET LOGGED/UNLOGGED): the snapshot can no longer read its rows"
                ),
                START_OVER,
            ));
        }
        let current_columns: std::collections::HashMap<&str, Option<&str>> = attributes
            .iter()
            .filter_map(|r| Some((r.get(0)?, r.get(1))))
            .collect();
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            match current_columns.get(name.as_str()).copied().flatten() {
                Some(now) if !now.starts_with(DROPPED) => columns.push(now.to_owned()),
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
        return Ok(CurrentNames {
            relation: current,
            columns,
        });
    }
    match failed {
        Some(e) => Err(query_error(&format!("{what}: locking {current}"), e)),
        None => Err(Error::transient(format!(
            "{rel} kept being renamed on the source while the load locked it; run `ferry run` again"
        ))),
    }
}

/// Columns of the current (catalog cache, not snapshot) name of a relation
/// from a subquery `s` with its [`identified`] names: the number of parts
/// (NULL once dropped), schema, name.
const NAME_COLUMNS: &str = "cardinality(s.names), s.names[1], s.names[2]";

/// The current name parts of relation `oid` (an SQL expression).
fn identified(oid: &str) -> String {
    format!("(pg_identify_object_as_address('pg_class'::regclass, {oid}, 0)).object_names")
}

/// The current name in columns `at..at + 3` of `row` (see
/// [`NAME_COLUMNS`]).
fn current_name(row: &SimpleQueryRow, at: usize, rel: &TableId) -> Result<TableId, Error> {
    match (row.get(at), row.get(at + 1), row.get(at + 2)) {
        (Some("2"), Some(schema), Some(name)) => Ok(TableId::new(schema, name)),
        _ => Err(dropped(rel)),
    }
}

fn dropped(rel: &TableId) -> Error {
    Error::operator(
        format!("{rel} was dropped on the source after the load snapshot"),
        START_OVER,
    )
}

/// `ARRAY[…]::text[]` of `items`.
fn text_array(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|i| quote_literal(i)).collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

fn parse<T: std::str::FromStr>(text: Option<&str>, what: &str) -> Result<T, Error> {
    text.and_then(|t| t.parse().ok()).ok_or_else(|| {
        Error::transient(format!(
            "{what}: unexpected answer {text:?} from the server"
        ))
    })
}

/// The rows of each statement of a simple query, in order (none for a
/// statement that returns no rows).
fn result_sets(
    answer: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>,
    what: &str,
) -> Result<Vec<Vec<SimpleQueryRow>>, Error> {
    answer.map(split_sets).map_err(|e| query_error(what, e))
}

fn split_sets(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<SimpleQueryRow>> {
    let mut sets = Vec::new();
    let mut rows = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::Row(r) => rows.push(r),
            SimpleQueryMessage::CommandComplete(_) => sets.push(std::mem::take(&mut rows)),
            _ => {}
        }
    }
    sets
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
