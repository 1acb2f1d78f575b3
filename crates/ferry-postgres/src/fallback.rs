//! The way back after a cutover: what a fallback needs from PostgreSQL.
//!
//! After `ferry cutover --with-fallback` the new database (the migration's
//! target) becomes a source and the old source a target: ferry streams
//! every change the application makes on the new database back into the old
//! one until `ferry rollback` or `ferry finish`. This module holds the
//! server-side pieces; the pipeline wires them (`ferry::pipeline::fallback`).
//!
//! - [`logical_replication_problem`]: the new database must allow logical
//!   replication (`wal_level = logical`; on Aurora/RDS
//!   `rds.logical_replication = 1`) and its role must be allowed to create
//!   a slot. `ferry plan`, `cutover --dry-run` and the cutover check it.
//! - [`ensure_reverse_publications`] before the fence, then
//!   [`create_reverse_slot`] inside it, once the forward stream has drained
//!   and before anything else may write: the slot's consistent point
//!   precedes every write the application makes on the new database, and
//!   follows every change ferry applied there (no echo by construction).
//!   The slot is created with `pg_create_logical_replication_slot` (no
//!   exported snapshot: nothing is loaded, the old source already holds the
//!   same rows). The publication exists first: pgoutput looks it up with
//!   the historic snapshot of each change it decodes.
//! - Echo filter, defence in depth: ferry's apply sessions set up a
//!   replication origin ([`tag_session`], `pg_replication_origin_session_setup`;
//!   best effort, a role without the privilege applies untagged), so the
//!   commit records of what ferry applied carry origin [`origin_name`];
//!   the reverse stream drops the changes of transactions whose origin
//!   starts with [`ORIGIN_PREFIX`] (`crate::decode::Decoder::skip_origins`,
//!   which works on every version: pgoutput sends the Origin message after
//!   Begin whenever a transaction has one; PostgreSQL 16's `origin = none`
//!   option would also drop other replication's changes).
//! - [`drop_reverse_capture`] at rollback or finish.

use std::time::{Duration, Instant};

use ferry_core::schema::quote_ident;
use ferry_core::{Error, Lsn, TableId};
use tokio_postgres::Client;

use crate::connect::query_error;
use crate::slot::Publish;

/// Replication origins of ferry's apply sessions start with this.
pub const ORIGIN_PREFIX: &str = "ferry_apply_";

/// The replication origin of ferry's apply sessions for state schema
/// `state_schema`.
pub fn origin_name(state_schema: &str) -> String {
    format!("{ORIGIN_PREFIX}{state_schema}")
}

/// The reverse slot's name for forward slot `slot`.
pub fn reverse_slot(slot: &str) -> String {
    format!("{slot}_reverse")
}

/// The reverse publication's name for forward publication `publication`.
pub fn reverse_publication(publication: &str) -> String {
    format!("{publication}_reverse")
}

/// Why the new database cannot serve a reverse stream, with the fix;
/// `None` when it can.
pub async fn logical_replication_problem(client: &Client) -> Result<Option<String>, Error> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('rds.logical_replication', true),
                    (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user)
                      OR pg_has_role(current_user, oid, 'member')
               FROM (SELECT coalesce((SELECT oid FROM pg_roles WHERE rolname = 'rds_replication'), 0::oid) AS oid) r",
            &[],
        )
        .await
        .map_err(|e| query_error("checking whether the target allows logical replication", e))?;
    let wal_level: String = row.get(0);
    let rds: Option<String> = row.get(1);
    let may_replicate: Option<bool> = row.get(2);
    if wal_level != "logical" {
        let fix = if rds.is_some() {
            "set rds.logical_replication = 1 in the target's DB parameter group and reboot it"
        } else {
            "set wal_level = logical on the target (ALTER SYSTEM SET wal_level = logical) and restart it"
        };
        return Ok(Some(format!(
            "the target's wal_level is '{wal_level}', so it cannot stream changes back to the old source; {fix}"
        )));
    }
    if may_replicate != Some(true) {
        return Ok(Some(
            "the target role may not create a replication slot for the way back; ALTER ROLE <target role> REPLICATION (on RDS/Aurora: GRANT rds_replication TO <target role>)".into(),
        ));
    }
    let free: i64 = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int8 - (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .map_err(|e| query_error("counting the target's replication slots", e))?
        .get(0);
    if free < 1 {
        return Ok(Some(
            "the target has no free replication slot for the way back; raise max_replication_slots on the target and restart it".into(),
        ));
    }
    Ok(None)
}

/// Of `tables` (on the new database), those the reverse publication would
/// make refuse UPDATE and DELETE: no primary key and REPLICA IDENTITY
/// DEFAULT, or REPLICA IDENTITY NOTHING.
pub async fn tables_without_identity(
    client: &Client,
    tables: &[TableId],
) -> Result<Vec<TableId>, Error> {
    let mut out = Vec::new();
    for t in tables {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
                   FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&t.quoted()],
            )
            .await
            .map_err(|e| query_error(&format!("reading the replica identity of {t}"), e))?;
        let lacks = match row {
            Some(r) => {
                let ident: String = r.get(0);
                ident == "n" || (ident == "d" && !r.get::<_, bool>(1))
            }
            None => false,
        };
        if lacks {
            out.push(t.clone());
        }
    }
    Ok(out)
}

/// The publications of the reverse stream: `tables` (the carried tables'
/// names on the new database) for every operation, and `insert_only` for
/// inserts alone, in the sibling publication (as the forward stream did).
pub async fn ensure_reverse_publications(
    client: &Client,
    publication: &str,
    tables: &[TableId],
    insert_only: &[TableId],
) -> Result<(), Error> {
    crate::slot::ensure_publication(client, publication, Some(tables), Publish::All).await?;
    if !insert_only.is_empty() {
        crate::slot::ensure_publication(
            client,
            &crate::slot::insert_only_publication(publication),
            Some(insert_only),
            Publish::InsertOnly,
        )
        .await?;
    }
    Ok(())
}

/// Create the reverse slot now and return its consistent point: every
/// transaction that commits after it is decoded, none before. A slot of
/// that name left by an interrupted cutover (inactive) is dropped first.
pub async fn create_reverse_slot(client: &Client, slot: &str) -> Result<Lsn, Error> {
    if let Some(info) = crate::slot::slot_info(client, slot).await? {
        if info.active {
            return Err(Error::operator(
                format!("replication slot {slot} already exists on the target and is in use"),
                format!(
                    "stop what reads it, or drop it: SELECT pg_drop_replication_slot('{slot}')"
                ),
            ));
        }
        tracing::info!(
            slot,
            "dropping a reverse slot left by an interrupted cutover"
        );
        crate::slot::drop_slot(client, slot).await?;
    }
    let lsn: String = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(|e| {
            query_error(
                &format!("creating the reverse slot {slot} on the target"),
                e,
            )
        })?
        .get(0);
    let lsn: Lsn = lsn.parse().map_err(|e| {
        Error::operator(
            format!("reading the reverse slot's position: {e}"),
            "report this as a ferry bug",
        )
    })?;
    tracing::info!(slot, lsn = %lsn, "reverse slot created on the target");
    Ok(lsn)
}

/// Drop the reverse slot (waiting for a walsender to let go of it) and the
/// publications ferry created, also on a fenced (read-only) database.
pub async fn drop_reverse_capture(
    client: &Client,
    slot: &str,
    publication: &str,
) -> Result<bool, Error> {
    client
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| query_error("preparing to drop the reverse slot", e))?;
    let started = Instant::now();
    let dropped = loop {
        match crate::slot::drop_slot(client, slot).await {
            Ok(d) => break d,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "reverse slot still active; retrying the drop");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    };
    crate::slot::drop_publication(client, publication).await?;
    Ok(dropped)
}

/// Tag this session's commits with replication origin `name` (created if
/// missing) so that a reverse stream can skip them. Best effort: `false`
/// when the role may not (the session applies untagged) or the origin is
/// still held by a session that is going away.
pub async fn tag_session(client: &Client, name: &str) -> bool {
    let allowed = client
        .query_one(
            "SELECT has_function_privilege('pg_replication_origin_session_setup(text)', 'execute')
                AND has_function_privilege('pg_replication_origin_create(text)', 'execute')",
            &[],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false);
    if !allowed {
        tracing::debug!(
            origin = name,
            "the role may not set up a replication origin; applying untagged"
        );
        return false;
    }
    let create =
        "SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL";
    if let Err(e) = client.execute(create, &[&name]).await {
        tracing::debug!(error = %e, origin = name, "creating the replication origin failed; applying untagged");
        return false;
    }
    // A session of a killed ferry may hold the origin for a moment.
    let started = Instant::now();
    loop {
        match client
            .execute("SELECT pg_replication_origin_session_setup($1)", &[&name])
            .await
        {
            Ok(_) => return true,
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && started.elapsed() < Duration::from_secs(10) =>
            {
                tracing::debug!(error = %e, origin = name, "replication origin busy; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                // E.g. max_replication_slots = 0 (no origin can be tracked).
                tracing::info!(error = %e, origin = name, "could not tag the apply session with its replication origin; applying untagged");
                return false;
            }
        }
    }
}

/// `ALTER DATABASE <db> RESET default_transaction_read_only`: the fence of
/// a cutover lifted.
pub async fn unfence(client: &Client, database: &str) -> Result<(), Error> {
    let sql = format!(
        "ALTER DATABASE {} RESET default_transaction_read_only",
        quote_ident(database)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| query_error("lifting the fence", e).with_fix(format!("run: {sql}")))
}

/// Startup options that lift a fence for ferry's own sessions only:
/// `default_transaction_read_only` set by `ALTER DATABASE` is outranked by
/// a session's startup option.
pub const LIFT_FENCE_OPTION: &str = "-c default_transaction_read_only=off";
