//! Publication and replication-slot lifecycle.
//!
//! - [`ensure_publication`]: `CREATE PUBLICATION … FOR ALL TABLES` or `FOR
//!   TABLE …` unless it exists, `WITH (publish_via_partition_root = true)`
//!   from PostgreSQL 13 (12 has no such option and cannot publish a
//!   partitioned table);
//!   the tables declared insert-only go into a second publication
//!   ([`insert_only_publication`]) with `publish = 'insert, truncate'`, so
//!   the source never refuses an UPDATE or DELETE on a keyless table.
//! - [`create_slot`]: a pgoutput slot with an exported snapshot. The
//!   snapshot lives as long as the returned [`CreatedSlot`] holds its
//!   replication connection and sends nothing else on it; the full load
//!   imports it (`SET TRANSACTION SNAPSHOT`) meanwhile. The stream starts at
//!   `consistent_point`: every row is in the snapshot or in the stream after
//!   it, never neither.
//! - [`snapshot_existing_slot`], for a slot created beforehand
//!   (`postgres.existing_slot`): the snapshot comes from a temporary slot,
//!   and the user's slot is advanced to its consistent point with
//!   `pg_replication_slot_advance` (fast-forward: no output plugin runs, so
//!   WAL written before the publication existed is never given to
//!   pgoutput). Same guarantee as [`create_slot`]; ferry never drops it.
//! - [`verify_slot`] on resume: the slot exists, uses pgoutput, and its
//!   `confirmed_flush_lsn` is not past our checkpoint (else changes between
//!   the two are gone for us and only a new full load helps).
//! - [`drop_slot`], [`drop_publication`]: idempotent cleanup. A failed first
//!   run can leave an inactive slot whose state was never recorded; the
//!   pipeline decides to drop it with [`slot_info`] + [`drop_slot`].

use std::sync::atomic::{AtomicU32, Ordering};

use ferry_core::schema::quote_ident;
use ferry_core::{Error, Lsn, TableId};
use tokio_postgres::Client;

use crate::connect::query_error;
use crate::replication::{ReplicationConnection, SlotCreated};

/// The slot that exported the load snapshot and the connection that keeps
/// the snapshot valid: ferry's new slot ([`create_slot`]), or a temporary
/// one whose consistent point the user's slot was advanced to
/// ([`snapshot_existing_slot`]; the server drops it with the connection).
#[derive(Debug)]
pub struct CreatedSlot {
    pub slot: SlotCreated,
    conn: ReplicationConnection,
}

impl CreatedSlot {
    /// The exported snapshot name for `SET TRANSACTION SNAPSHOT`.
    pub fn snapshot_name(&self) -> Option<&str> {
        self.slot.snapshot_name.as_deref()
    }

    pub fn consistent_point(&self) -> Lsn {
        self.slot.consistent_point
    }

    /// The connection, e.g. to `START_REPLICATION` on it once the load is
    /// done (which ends the snapshot). A temporary slot lives only as long
    /// as this connection.
    pub fn into_connection(self) -> ReplicationConnection {
        self.conn
    }

    /// End the snapshot and close the connection.
    pub async fn release(self) {
        self.conn.close().await;
    }
}

/// The publication of the tables declared in `tables.insert_only`, next to
/// the main publication `name`.
pub fn insert_only_publication(name: &str) -> String {
    format!("{name}_insert_only")
}

/// Which changes a publication carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Inserts, updates, deletes and truncates (the server default).
    All,
    /// Inserts and truncates alone: the source keeps accepting UPDATE and
    /// DELETE on a table without a replica identity.
    InsertOnly,
}

/// The comment ferry puts on each publication it creates. Only publications
/// carrying it are ever dropped: one created beforehand (by a DBA, for a
/// role that may not create publications) is used as is and kept.
pub const CREATED_BY_FERRY: &str = "created by ferry";

/// Create the publication unless it exists (then it is used as is).
/// `tables`: `None` for all tables.
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: Option<&[TableId]>,
    publish: Publish,
) -> Result<(), Error> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(|e| query_error("reading pg_publication", e))?
        .is_some();
    if exists {
        return Ok(());
    }
    let what = match tables {
        None => " FOR ALL TABLES".to_owned(),
        // An empty publication is valid: every table may be insert-only.
        Some([]) => String::new(),
        Some(t) => {
            // `ONLY`: publishing an inheritance parent plainly publishes
            // its children too, carried or not. A partitioned table is
            // named plainly (its partitions are its rows).
            let names: Vec<String> = t.iter().map(TableId::quoted).collect();
            let items = crate::catalog::own_rows(client, &names).await?;
            format!(" FOR TABLE {}", items.join(", "))
        }
    };
    let version = crate::connect::server_version_num(client).await?;
    // One implicit transaction: the publication exists only with its mark.
    let sql = format!(
        "{}; COMMENT ON PUBLICATION {} IS '{CREATED_BY_FERRY}'",
        publication_sql(name, &what, publish, version),
        quote_ident(name)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| query_error(&format!("creating publication {name}"), e))?;
    tracing::info!(publication = name, "publication created");
    Ok(())
}

/// First `server_version_num` with `publish_via_partition_root`.
pub const PARTITION_ROOT_SINCE: u32 = 130_000;

/// `what`: `" FOR TABLE …"`, `" FOR ALL TABLES"` or empty.
fn publication_sql(name: &str, what: &str, publish: Publish, server_version_num: u32) -> String {
    let mut with = Vec::new();
    if publish == Publish::InsertOnly {
        with.push("publish = 'insert, truncate'");
    }
    if server_version_num >= PARTITION_ROOT_SINCE {
        with.push("publish_via_partition_root = true");
    }
    let with = if with.is_empty() {
        String::new()
    } else {
        format!(" WITH ({})", with.join(", "))
    };
    format!("CREATE PUBLICATION {}{what}{with}", quote_ident(name))
}

/// Create slot `name` on `conn` with an exported snapshot.
pub async fn create_slot(
    mut conn: ReplicationConnection,
    name: &str,
) -> Result<CreatedSlot, Error> {
    let slot = conn.create_slot(name).await?;
    tracing::info!(slot = name, lsn = %slot.consistent_point, "replication slot created");
    Ok(CreatedSlot { slot, conn })
}

/// For a slot `name` created beforehand (`postgres.existing_slot`): take the
/// load snapshot with a temporary slot on `conn`, then advance `name` to the
/// temporary slot's consistent point S ([`advance_slot`]). Everything
/// committed before S is in the snapshot and everything after is decoded
/// from `name` (its `confirmed_flush_lsn` is S): nothing lost, nothing
/// twice, whatever was written between the slot's creation and now.
/// `client`: a plain session of the same database.
pub async fn snapshot_existing_slot(
    mut conn: ReplicationConnection,
    client: &Client,
    name: &str,
) -> Result<CreatedSlot, Error> {
    let temporary = temporary_slot_name(name);
    let slot = conn.create_temporary_slot(&temporary).await?;
    let created = CreatedSlot { slot, conn };
    if let Err(e) = advance_slot(client, name, created.consistent_point()).await {
        created.release().await;
        return Err(e);
    }
    Ok(created)
}

/// A name for the temporary slot of [`snapshot_existing_slot`], new on each
/// call: the server drops an earlier one only after its session has ended,
/// which closing the connection does not wait for (a start that takes a
/// second snapshot must not collide with its first).
fn temporary_slot_name(name: &str) -> String {
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    let n = TAKEN.fetch_add(1, Ordering::Relaxed);
    format!("{name}_snapshot_{}_{n}", std::process::id())
}

/// Move slot `name` (logical, pgoutput, created beforehand) forward to `to`
/// with `pg_replication_slot_advance`, which decodes in fast-forward mode
/// (no output plugin). Fails, naming the slot, if the slot is missing, not
/// pgoutput, in use, or already past `to` (another consumer confirmed
/// changes ferry has not seen).
pub async fn advance_slot(client: &Client, name: &str, to: Lsn) -> Result<(), Error> {
    let create = format!("SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')");
    let info = slot_info(client, name).await?.ok_or_else(|| {
        Error::operator(
            format!("replication slot {name} does not exist (postgres.existing_slot = true)"),
            format!("create it as a role with REPLICATION: {create}"),
        )
    })?;
    if info.plugin.as_deref() != Some("pgoutput") {
        return Err(Error::operator(
            format!(
                "replication slot {name} uses output plugin {:?}, not pgoutput",
                info.plugin
            ),
            format!(
                "give ferry a pgoutput slot: {create} (under a free name, set in postgres.slot)"
            ),
        ));
    }
    if let Some(confirmed) = info.confirmed_flush
        && confirmed > to
    {
        return Err(Error::operator(
            format!(
                "replication slot {name} has confirmed_flush_lsn {confirmed}, past the load snapshot at {to}: another consumer has used it"
            ),
            format!(
                "give ferry a slot no one else reads: SELECT pg_drop_replication_slot('{name}'); {create}"
            ),
        ));
    }
    let row = client
        .query_one(
            "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&name, &to.to_string()],
        )
        .await
        .map_err(|e| query_error(&format!("advancing replication slot {name} to {to}"), e))?;
    let end: Option<Lsn> = row.get::<_, Option<String>>(0).and_then(|s| s.parse().ok());
    if end != Some(to) {
        return Err(Error::transient(format!(
            "advancing replication slot {name} to {to} stopped at {end:?}; run `ferry run` again"
        )));
    }
    tracing::info!(slot = name, lsn = %to, "replication slot created beforehand advanced to the load snapshot");
    Ok(())
}

/// What ferry says where it would drop its own slot but keeps one created
/// beforehand (cutover, `ferry cleanup`).
pub fn existing_slot_kept(name: &str) -> String {
    format!(
        "replication slot '{name}' was created beforehand (postgres.existing_slot): kept, it is yours; it retains WAL on the source until you drop it: SELECT pg_drop_replication_slot('{name}')"
    )
}

/// A slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    pub confirmed_flush: Option<Lsn>,
}

pub async fn slot_info(client: &Client, name: &str) -> Result<Option<SlotInfo>, Error> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, active, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error("reading pg_replication_slots", e))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        active: r.get(2),
        confirmed_flush: r.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
    }))
}

/// On resume: the slot must exist, decode with pgoutput, and not have
/// confirmed past `checkpoint`.
pub async fn verify_slot(client: &Client, name: &str, checkpoint: Lsn) -> Result<SlotInfo, Error> {
    let lost = |detail: String| {
        Error::operator(
            format!("replication slot {name} lost or reused ({detail})"),
            "a new full load is needed: run `ferry cleanup` then `ferry run`",
        )
    };
    let info = slot_info(client, name)
        .await?
        .ok_or_else(|| lost("it does not exist".into()))?;
    if info.plugin.as_deref() != Some("pgoutput") {
        return Err(lost(format!(
            "output plugin is {:?}, not pgoutput",
            info.plugin
        )));
    }
    if let Some(confirmed) = info.confirmed_flush
        && confirmed > checkpoint
    {
        return Err(lost(format!(
            "confirmed_flush_lsn {confirmed} is past checkpoint {checkpoint}"
        )));
    }
    Ok(info)
}

/// Drop the slot if it exists (fails if a consumer is still attached).
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool, Error> {
    let row = client
        .query_opt(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error(&format!("dropping replication slot {name}"), e))?;
    if row.is_some() {
        tracing::info!(slot = name, "replication slot dropped");
    }
    Ok(row.is_some())
}

/// The publications the stream subscribes to: `name`, and its insert-only
/// sibling when the schema stage created one.
pub async fn stream_publications(client: &Client, name: &str) -> Result<Vec<String>, Error> {
    let insert_only = insert_only_publication(name);
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&insert_only],
        )
        .await
        .map_err(|e| query_error("reading pg_publication", e))?
        .is_some();
    let mut out = vec![name.to_owned()];
    if exists {
        out.push(insert_only);
    }
    Ok(out)
}

/// The tables (`oid`s) the publications `names` hold, as the session's
/// snapshot sees them; `None` when one of them holds every table (`FOR ALL
/// TABLES`) or whole schemas (`FOR TABLES IN SCHEMA`).
pub async fn published_at(client: &Client, names: &[String]) -> Result<Option<Vec<u32>>, Error> {
    let by_schema = if crate::connect::server_version_num(client).await? >= 150_000 {
        "OR EXISTS (SELECT 1 FROM pg_publication_namespace pn WHERE pn.pnpubid = p.oid)"
    } else {
        ""
    };
    let all: bool = client
        .query_one(
            &format!(
                "SELECT coalesce(bool_or(p.puballtables {by_schema}), false)
                   FROM pg_publication p WHERE p.pubname::text = ANY($1)"
            ),
            &[&names],
        )
        .await
        .map_err(|e| query_error("reading pg_publication", e))?
        .get(0);
    if all {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT pr.prrelid FROM pg_publication_rel pr
               JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname::text = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| query_error("reading pg_publication_rel", e))?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

/// Drop the publication and its insert-only sibling if they exist and
/// ferry created them ([`CREATED_BY_FERRY`]); one created beforehand is
/// kept. Also on a source fenced by a cutover
/// (`default_transaction_read_only`): the statement runs in an explicit
/// read-write transaction, and only when there is something to drop.
pub async fn drop_publication(client: &Client, name: &str) -> Result<(), Error> {
    let sibling = insert_only_publication(name);
    let rows = client
        .query(
            "SELECT pubname::text, obj_description(oid, 'pg_publication') IS NOT DISTINCT FROM $3
               FROM pg_publication WHERE pubname IN ($1, $2) ORDER BY 1",
            &[&name, &sibling, &CREATED_BY_FERRY],
        )
        .await
        .map_err(|e| query_error("reading pg_publication", e))?;
    let mut ours = Vec::new();
    for r in &rows {
        let pubname: String = r.get(0);
        if r.get::<_, bool>(1) {
            ours.push(quote_ident(&pubname));
        } else {
            tracing::info!(publication = %pubname, "publication was created beforehand, not by ferry: kept");
        }
    }
    if ours.is_empty() {
        return Ok(());
    }
    let dropped = client
        .batch_execute(&format!(
            "BEGIN READ WRITE; DROP PUBLICATION IF EXISTS {}; COMMIT",
            ours.join(", ")
        ))
        .await
        .map_err(|e| query_error(&format!("dropping publication {name}"), e));
    if dropped.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    dropped
}

/// A publication as `ferry plan` checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationInfo {
    /// Marked [`CREATED_BY_FERRY`].
    pub created_by_ferry: bool,
    pub all_tables: bool,
    /// Operations it does not publish (of insert, update, delete, truncate).
    pub missing_operations: Vec<&'static str>,
    /// The tables it publishes (`schema.table`).
    pub tables: Vec<TableId>,
}

/// The publication `name`, if it exists.
pub async fn publication_info(
    client: &Client,
    name: &str,
) -> Result<Option<PublicationInfo>, Error> {
    // pubtruncate exists from PostgreSQL 11; to_jsonb reads it where it does.
    let Some(row) = client
        .query_opt(
            "SELECT obj_description(p.oid, 'pg_publication') IS NOT DISTINCT FROM $2, p.puballtables,
                    p.pubinsert, p.pubupdate, p.pubdelete,
                    coalesce((to_jsonb(p) ->> 'pubtruncate')::bool, false)
               FROM pg_publication p WHERE p.pubname = $1",
            &[&name, &CREATED_BY_FERRY],
        )
        .await
        .map_err(|e| query_error("reading pg_publication", e))?
    else {
        return Ok(None);
    };
    let ops = ["insert", "update", "delete", "truncate"];
    let missing_operations = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| !row.get::<_, bool>(i + 2))
        .map(|(_, op)| *op)
        .collect();
    let tables = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables
              WHERE pubname = $1 ORDER BY 1, 2",
            &[&name],
        )
        .await
        .map_err(|e| query_error("reading pg_publication_tables", e))?
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok(Some(PublicationInfo {
        created_by_ferry: row.get(0),
        all_tables: row.get(1),
        missing_operations,
        tables,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_snapshot_of_an_existing_slot_gets_its_own_temporary_slot() {
        let (a, b) = (temporary_slot_name("dba"), temporary_slot_name("dba"));
        assert_ne!(a, b);
        assert!(
            a.starts_with(&format!("dba_snapshot_{}_", std::process::id())),
            "{a}"
        );
    }

    #[test]
    fn partition_root_publishing_from_13() {
        assert_eq!(
            publication_sql("ferry", " FOR ALL TABLES", Publish::All, 120_022),
            r#"CREATE PUBLICATION "ferry" FOR ALL TABLES"#
        );
        assert_eq!(
            publication_sql("ferry", " FOR TABLE public.t", Publish::All, 130_000),
            r#"CREATE PUBLICATION "ferry" FOR TABLE public.t WITH (publish_via_partition_root = true)"#
        );
        assert_eq!(
            publication_sql("p", "", Publish::InsertOnly, 120_022),
            r#"CREATE PUBLICATION "p" WITH (publish = 'insert, truncate')"#
        );
        assert_eq!(
            publication_sql("p", " FOR TABLE public.k", Publish::InsertOnly, 180_004),
            r#"CREATE PUBLICATION "p" FOR TABLE public.k WITH (publish = 'insert, truncate', publish_via_partition_root = true)"#
        );
    }
}
