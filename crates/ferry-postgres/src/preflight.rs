//! `ferry plan` for a PostgreSQL source: prerequisites and the table plan.
//!
//! Consumes the config; connects to the source once and emits a
//! [`SourcePlan`]: one [`Check`] per prerequisite (every failure carries
//! the fix) and one [`TablePlan`] per selected table (PG→PG: the source
//! type is the target type, `format_type`). Nothing is changed on the
//! source. A connection failure is reported as a failed `connect` check, not
//! as an error, so `ferry plan` can print it with the others.
//!
//! Checks: server version (≥ 10; pgoutput v2 streaming needs ≥ 14),
//! `wal_level = logical`, a free replication slot and WAL sender,
//! REPLICATION (or `rds_replication`, or superuser), SELECT on every
//! selected table, a usable replica identity for tables without a primary
//! key, unlogged tables, and slot/publication name conflicts.

use ferry_core::config::Config;
use ferry_core::plan::{Check, SourcePlan, TablePlan};
use ferry_core::{Error, ReplicaIdentity};
use tokio_postgres::Client;

use ferry_core::config::TableFilter;

use crate::catalog::{SourceCatalog, SourceTable, read_catalog};
use crate::connect::{connect, query_error, server_version_num};
use crate::slot::insert_only_publication;

const SIDE: &str = "source";

/// What ferry already knows about the slot from the target's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlotOwnership {
    /// No run is recorded: an existing slot of that name is not ours.
    #[default]
    Fresh,
    /// The target records a run using `postgres.slot`: it must exist.
    Resuming,
    /// A first run stopped in its schema stage: a slot of that name is its
    /// leftover (recreated), or was never created.
    Interrupted,
}

/// Run every source check for a fresh run (no slot recorded as ours).
pub async fn check_source(config: &Config) -> SourcePlan {
    check_source_with(config, SlotOwnership::Fresh).await
}

/// Run every source check; `slot` says whether the target records a run
/// using `postgres.slot`. See the module doc.
pub async fn check_source_with(config: &Config, slot: SlotOwnership) -> SourcePlan {
    let mut plan = SourcePlan {
        flavor: "postgres".into(),
        ..SourcePlan::default()
    };
    let client = match connect(&config.source, SIDE).await {
        Ok(c) => c,
        Err(e) => {
            plan.checks.push(Check::fail(
                SIDE,
                "connect",
                e.to_string(),
                e.fix().unwrap_or("check source.url").to_owned(),
            ));
            return plan;
        }
    };
    plan.checks.push(Check::pass(
        SIDE,
        "connect",
        format!("connected to {}", config.source.url),
    ));
    if let Err(e) = run_checks(&client, config, slot, &mut plan).await {
        plan.checks.push(Check::fail(
            SIDE,
            "catalog",
            e.to_string(),
            e.fix().unwrap_or("see the server log").to_owned(),
        ));
    }
    plan
}

async fn run_checks(
    client: &Client,
    config: &Config,
    slot: SlotOwnership,
    plan: &mut SourcePlan,
) -> Result<(), Error> {
    let version_num = server_version_num(client).await?;
    plan.version = setting(client, "server_version").await?;
    plan.checks
        .push(version_check(version_num, config.postgres.proto_version));
    plan.checks
        .push(wal_level_check(&setting(client, "wal_level").await?));
    plan.checks
        .extend(capacity_checks(client, config, slot).await?);
    plan.checks.push(replication_role_check(client).await?);
    plan.checks
        .extend(name_conflict_checks(client, config, slot).await?);
    let filter = config.tables.filter().map_err(|e| {
        Error::operator(
            format!("tables: {e}"),
            "fix tables.include / tables.exclude",
        )
    })?;
    let catalog = read_catalog(client, &filter, &config.state.schema).await?;
    plan.checks
        .extend(table_checks(client, &catalog, &filter, config).await?);
    plan.tables = catalog
        .tables
        .iter()
        .map(|t| {
            let mut p = table_plan(t, config);
            p.insert_only = filter.insert_only(&t.schema.id);
            p
        })
        .collect();
    Ok(())
}

async fn setting(client: &Client, name: &str) -> Result<String, Error> {
    let row = client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(|e| query_error(&format!("reading setting {name}"), e))?;
    Ok(row.get(0))
}

/// Server version: ≥ 10 required; protocol v2 needs ≥ 14.
pub fn version_check(version_num: u32, proto_version: u32) -> Check {
    let shown = format!("PostgreSQL {}", version_num / 10_000);
    if version_num < 100_000 {
        return Check::fail(
            SIDE,
            "server version",
            format!("{shown} ({version_num}) is too old for logical replication with pgoutput"),
            "upgrade the source to PostgreSQL 10 or later",
        );
    }
    if proto_version >= 2 && version_num < 140_000 {
        return Check::warn(
            SIDE,
            "server version",
            format!(
                "{shown}: pgoutput protocol v2 (streaming of large transactions) needs PostgreSQL 14"
            ),
            "set postgres.proto_version = 1 (large transactions are then decoded only at commit)",
        );
    }
    Check::pass(SIDE, "server version", shown)
}

/// `wal_level` must be `logical`.
pub fn wal_level_check(wal_level: &str) -> Check {
    if wal_level == "logical" {
        return Check::pass(SIDE, "wal_level", "wal_level = logical");
    }
    Check::fail(
        SIDE,
        "wal_level",
        format!("source wal_level is '{wal_level}'"),
        "set wal_level=logical and restart PostgreSQL (RDS/Aurora: rds.logical_replication=1 in the parameter group, then reboot)",
    )
}

/// A free replication slot (unless ours exists) and a free WAL sender.
async fn capacity_checks(
    client: &Client,
    config: &Config,
    slot: SlotOwnership,
) -> Result<Vec<Check>, Error> {
    let row = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int8,
                    (SELECT count(*) FROM pg_replication_slots),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    current_setting('max_wal_senders')::int8,
                    (SELECT count(*) FROM pg_stat_replication)",
            &[&config.postgres.slot],
        )
        .await
        .map_err(|e| query_error("counting replication slots and WAL senders", e))?;
    let (max_slots, used_slots, ours_exists): (i64, i64, bool) =
        (row.get(0), row.get(1), row.get(2));
    let (max_senders, used_senders): (i64, i64) = (row.get(3), row.get(4));
    let needs_slot = !(ours_exists && slot != SlotOwnership::Fresh);
    let mut out = Vec::new();
    let detail = format!("max_replication_slots = {max_slots}, {used_slots} in use");
    if needs_slot && used_slots >= max_slots {
        out.push(Check::fail(
            SIDE,
            "replication slots",
            detail,
            format!(
                "raise max_replication_slots above {max_slots} and restart PostgreSQL, or drop an unused slot with SELECT pg_drop_replication_slot('<name>')"
            ),
        ));
    } else {
        out.push(Check::pass(SIDE, "replication slots", detail));
    }
    let detail = format!("max_wal_senders = {max_senders}, {used_senders} in use");
    if used_senders >= max_senders {
        out.push(Check::fail(
            SIDE,
            "wal senders",
            detail,
            format!("raise max_wal_senders above {max_senders} and restart PostgreSQL"),
        ));
    } else {
        out.push(Check::pass(SIDE, "wal senders", detail));
    }
    Ok(out)
}

/// REPLICATION attribute, `rds_replication` membership or superuser.
async fn replication_role_check(client: &Client) -> Result<Check, Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, r.rolsuper, r.rolreplication,
                    EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication'
                             AND pg_has_role(current_user, g.oid, 'MEMBER'))
               FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| query_error("reading the role's attributes", e))?;
    let (user, superuser, replication, rds): (String, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let how = match (superuser, replication, rds) {
        (true, _, _) => "superuser",
        (_, true, _) => "REPLICATION",
        (_, _, true) => "member of rds_replication",
        _ => {
            let quoted = ferry_core::schema::quote_ident(&user);
            return Ok(Check::fail(
                SIDE,
                "replication privilege",
                format!("role {user} has neither REPLICATION nor superuser"),
                format!(
                    "ALTER ROLE {quoted} REPLICATION (RDS/Aurora: GRANT rds_replication TO {quoted})"
                ),
            ));
        }
    };
    Ok(Check::pass(
        SIDE,
        "replication privilege",
        format!("role {user}: {how}"),
    ))
}

/// Slot and publication names: a slot of that name that is not ours is a
/// conflict; on resume it must exist, use pgoutput and this database.
async fn name_conflict_checks(
    client: &Client,
    config: &Config,
    slot: SlotOwnership,
) -> Result<Vec<Check>, Error> {
    let name = &config.postgres.slot;
    let rows = client
        .query(
            "SELECT s.plugin::text, s.database::text = current_database(), s.slot_type::text
               FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[name],
        )
        .await
        .map_err(|e| query_error("reading pg_replication_slots", e))?;
    let existing = rows.first().map(|r| {
        (
            r.get::<_, Option<String>>(0).unwrap_or_default(),
            r.get::<_, Option<bool>>(1).unwrap_or(false),
        )
    });
    let drop_fix = format!(
        "if it is left over from an earlier ferry run, drop it with SELECT pg_drop_replication_slot('{name}'); otherwise set postgres.slot to another name"
    );
    let mut out = vec![match (existing, slot) {
        (None, SlotOwnership::Fresh) => {
            Check::pass(SIDE, "slot name", format!("slot '{name}' is free"))
        }
        (None, SlotOwnership::Interrupted) => Check::pass(
            SIDE,
            "slot name",
            format!("slot '{name}' is free (the interrupted first run creates it)"),
        ),
        (Some(_), SlotOwnership::Interrupted) => Check::pass(
            SIDE,
            "slot name",
            format!("slot '{name}' is left over by the interrupted first run and is recreated"),
        ),
        (None, SlotOwnership::Resuming) => Check::fail(
            SIDE,
            "slot name",
            format!("slot '{name}' recorded in the target state no longer exists on the source"),
            "changes since the checkpoint are lost: run `ferry cleanup` and start the migration again",
        ),
        (Some((plugin, same_db)), SlotOwnership::Resuming) if plugin == "pgoutput" && same_db => {
            Check::pass(
                SIDE,
                "slot name",
                format!("slot '{name}' exists (resuming)"),
            )
        }
        (Some((plugin, _)), SlotOwnership::Resuming) => Check::fail(
            SIDE,
            "slot name",
            format!("slot '{name}' uses plugin '{plugin}' or another database, not ferry's"),
            drop_fix,
        ),
        (Some(_), SlotOwnership::Fresh) => Check::fail(
            SIDE,
            "slot name",
            format!(
                "a replication slot named '{name}' already exists and is not recorded as ferry's"
            ),
            drop_fix,
        ),
    }];
    let mut publications = vec![config.postgres.publication.clone()];
    if !config.tables.insert_only.is_empty() {
        publications.push(insert_only_publication(&config.postgres.publication));
    }
    for publication in &publications {
        let exists = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[publication],
            )
            .await
            .map_err(|e| query_error("reading pg_publication", e))?
            .get::<_, bool>(0);
        out.push(match (exists, slot) {
            (true, SlotOwnership::Fresh) => Check::warn(
                SIDE,
                "publication name",
                format!("publication '{publication}' already exists"),
                format!(
                    "ferry will reuse it; if it is not ferry's, DROP PUBLICATION \"{publication}\" or set postgres.publication to another name"
                ),
            ),
            _ => Check::pass(SIDE, "publication name", format!("publication '{publication}'")),
        });
    }
    Ok(out)
}

/// Per-table checks: something selected, SELECT privilege, replica identity.
async fn table_checks(
    client: &Client,
    catalog: &SourceCatalog,
    filter: &TableFilter,
    config: &Config,
) -> Result<Vec<Check>, Error> {
    if catalog.tables.is_empty() {
        return Ok(vec![Check::fail(
            SIDE,
            "tables",
            "no table matches tables.include / tables.exclude",
            "adjust tables.include / tables.exclude (globs over schema.table)",
        )]);
    }
    let mut out = vec![Check::pass(
        SIDE,
        "tables",
        format!("{} tables selected", catalog.tables.len()),
    )];
    let names: Vec<String> = catalog
        .tables
        .iter()
        .map(|t| t.schema.id.quoted())
        .collect();
    let rows = client
        .query(
            "SELECT r.name FROM unnest($1::text[]) AS r(name)
              WHERE NOT has_table_privilege(r.name, 'SELECT')",
            &[&names],
        )
        .await
        .map_err(|e| query_error("checking SELECT privileges", e))?;
    if rows.is_empty() {
        out.push(Check::pass(
            SIDE,
            "select privilege",
            "SELECT on every selected table",
        ));
    } else {
        let missing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        out.push(Check::fail(
            SIDE,
            "select privilege",
            format!("no SELECT on {}", missing.join(", ")),
            format!("GRANT SELECT ON {} TO <source user>", missing.join(", ")),
        ));
    }
    let insert_only = insert_only_publication(&config.postgres.publication);
    out.extend(catalog.tables.iter().filter_map(|t| {
        let declared = filter.insert_only(&t.schema.id);
        identity_check(t, declared.then_some(insert_only.as_str()))
    }));
    out.extend(catalog.tables.iter().filter(|t| t.unlogged).map(|t| {
        Check::fail(
            SIDE,
            format!("unlogged {}", t.schema.id),
            format!(
                "{} is UNLOGGED: its changes are not written to WAL",
                t.schema.id
            ),
            format!(
                "ALTER TABLE {} SET LOGGED, or exclude it in tables.exclude",
                t.schema.id.quoted()
            ),
        )
    }));
    Ok(out)
}

/// Whether updates and deletes of `t` can be matched on the target. `None`
/// when the table has a primary key and default identity (the normal case).
///
/// `insert_only`: the publication a table declared in `tables.insert_only`
/// goes into. Such a table is published for inserts alone, so its replica
/// identity does not matter (the source keeps accepting its UPDATEs and
/// DELETEs) but those are not carried: a warning says so.
pub fn identity_check(t: &SourceTable, insert_only: Option<&str>) -> Option<Check> {
    let id = &t.schema.id;
    let name = format!("replica identity {id}");
    if let Some(publication) = insert_only {
        return Some(Check::warn(
            SIDE,
            name,
            format!(
                "{id} is insert-only (tables.insert_only): published for inserts and truncates alone in publication '{publication}'; its updates and deletes on the source are not carried"
            ),
            format!(
                "remove {id} from tables.insert_only if the application updates or deletes its rows"
            ),
        ));
    }
    let mut targets = vec![id.quoted()];
    targets.extend(t.partitions.iter().map(|p| p.quoted()));
    let full_fix = targets
        .iter()
        .map(|q| format!("ALTER TABLE {q} REPLICA IDENTITY FULL;"))
        .collect::<Vec<_>>()
        .join(" ");
    let has_pk = t.schema.has_key();
    match t.schema.replica_identity {
        ReplicaIdentity::Default if has_pk => None,
        ReplicaIdentity::Index => Some(Check::pass(SIDE, name, "replica identity using index")),
        ReplicaIdentity::Default => Some(Check::fail(
            SIDE,
            name,
            format!(
                "{id} has no primary key and REPLICA IDENTITY DEFAULT: updates and deletes carry no old row"
            ),
            format!("add a primary key, or {full_fix}"),
        )),
        ReplicaIdentity::Nothing => Some(Check::fail(
            SIDE,
            name,
            format!("{id} has REPLICA IDENTITY NOTHING: updates and deletes cannot be replicated"),
            if has_pk {
                format!("ALTER TABLE {} REPLICA IDENTITY DEFAULT;", id.quoted())
            } else {
                full_fix
            },
        )),
        ReplicaIdentity::Full if has_pk => None,
        ReplicaIdentity::Full => Some(Check::warn(
            SIDE,
            name,
            format!("{id} has no primary key: rows are matched on all columns, one at a time"),
            "add a primary key for faster apply",
        )),
    }
}

/// The plan row of one table (PG→PG: types unchanged).
pub fn table_plan(t: &SourceTable, config: &Config) -> TablePlan {
    TablePlan::new(
        &t.schema,
        &config.tables.target_name(&t.schema.id),
        t.row_estimate,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::plan::CheckStatus;

    #[test]
    fn wal_level_fix_text() {
        let c = wal_level_check("replica");
        assert_eq!(c.status, CheckStatus::Fail);
        assert_eq!(c.detail, "source wal_level is 'replica'");
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "set wal_level=logical and restart PostgreSQL (RDS/Aurora: rds.logical_replication=1 in the parameter group, then reboot)"
            )
        );
        assert_eq!(wal_level_check("logical").status, CheckStatus::Pass);
    }

    #[test]
    fn versions() {
        assert_eq!(version_check(96_000, 1).status, CheckStatus::Fail);
        assert_eq!(version_check(130_004, 2).status, CheckStatus::Warn);
        assert_eq!(version_check(130_004, 1).status, CheckStatus::Pass);
        assert_eq!(version_check(150_004, 2).status, CheckStatus::Pass);
    }
}
