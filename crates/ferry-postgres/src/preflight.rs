//! `ferry plan` for a PostgreSQL source: prerequisites and the table plan.
//!
//! Consumes the config; connects to the source once and emits a
//! [`SourcePlan`]: one [`Check`] per prerequisite (every failure carries
//! the fix) and one [`TablePlan`] per selected table (PG→PG: the source
//! type is the target type, `format_type`). Nothing is changed on the
//! source. A connection failure is reported as a failed `connect` check, not
//! as an error, so `ferry plan` can print it with the others.
//!
//! Checks: server version (≥ 10; tested on 12–18), what the version cannot
//! do (streaming of large transactions and logical decoding messages need
//! 14, partition-root publishing 13) and what ferry does instead, a
//! `pg_dump` at least as new as the server,
//! `wal_level = logical`, a free replication slot and WAL sender,
//! REPLICATION (or `rds_replication`, or superuser), SELECT on every
//! selected table, a usable replica identity for tables without a primary
//! key, unlogged tables, and slot/publication name conflicts; with
//! `postgres.existing_slot`, that the slot created beforehand exists, is
//! logical with pgoutput on this database and has no other consumer; what
//! `postgres.capture_ddl` installs and whether the role may (event
//! triggers: superuser or `rds_superuser`; PostgreSQL 14+).

use ferry_core::config::Config;
use ferry_core::plan::{Check, CheckStatus, SourcePlan, TablePlan};
use ferry_core::schema::quote_ident;
use ferry_core::{Error, ReplicaIdentity, TableId};
use tokio_postgres::Client;

use ferry_core::config::TableFilter;

use crate::catalog::{RelKind, SharedCatalog, SourceCatalog, SourceTable};
use crate::connect::{connect, query_error, server_version_num};
use crate::dump;
use crate::replication::STREAMING_SINCE;
use crate::slot::{PARTITION_ROOT_SINCE, insert_only_publication};

mod ddl_capture;
mod existing_slot;

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
    /// The target could not be reached (it may be restarting), so its state
    /// cannot say: a check whose verdict depends on it fails as one that
    /// may pass by itself, and is judged again once the target answers.
    Unknown,
}

/// Run every source check for a fresh run (no slot recorded as ours).
pub async fn check_source(config: &Config) -> SourcePlan {
    check_source_with(config, SlotOwnership::Fresh).await
}

/// Run every source check; `slot` says whether the target records a run
/// using `postgres.slot`. See the module doc.
pub async fn check_source_with(config: &Config, slot: SlotOwnership) -> SourcePlan {
    check_source_sharing(config, slot, None).await
}

/// [`check_source_with`] whose catalog read is `shared` with the pipeline
/// that waits for these checks ([`crate::source::PgSource::share_catalog`]).
pub async fn check_source_sharing(
    config: &Config,
    slot: SlotOwnership,
    shared: Option<SharedCatalog>,
) -> SourcePlan {
    let mut plan = SourcePlan {
        flavor: "postgres".into(),
        ..SourcePlan::default()
    };
    let client = match connect(&config.source, SIDE).await {
        Ok(c) => c,
        Err(e) => {
            plan.checks.push(
                Check::fail(
                    SIDE,
                    "connect",
                    e.to_string(),
                    e.fix().unwrap_or("check source.url").to_owned(),
                )
                .with_transient(e.is_transient()),
            );
            return plan;
        }
    };
    plan.checks.push(Check::pass(
        SIDE,
        "connect",
        format!("connected to {}", config.source.url),
    ));
    if let Err(e) = run_checks(&client, config, slot, shared.as_ref(), &mut plan).await {
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
    shared: Option<&SharedCatalog>,
    plan: &mut SourcePlan,
) -> Result<(), Error> {
    let version_num = server_version_num(client).await?;
    plan.version = setting(client, "server_version").await?;
    plan.checks.push(version_check(version_num));
    plan.checks.push(pg_dump_check(version_num).await);
    plan.checks
        .push(wal_level_check(&setting(client, "wal_level").await?));
    plan.checks
        .extend(capacity_checks(client, config, slot).await?);
    plan.checks.push(replication_role_check(client).await?);
    plan.checks
        .push(ddl_capture::ddl_capture_check(client, config, version_num).await?);
    plan.checks
        .extend(name_conflict_checks(client, config, slot).await?);
    let filter = config.tables.filter().map_err(|e| {
        Error::operator(
            format!("tables: {e}"),
            "fix tables.include / tables.exclude",
        )
    })?;
    let catalog = SharedCatalog::read(shared, client, &filter, &config.state.schema).await?;
    plan.checks
        .extend(table_checks(client, &catalog, &filter, config, slot).await?);
    plan.checks
        .push(publication_check(client, config, &filter, &catalog).await?);
    let partitioned: Vec<String> = catalog
        .tables
        .iter()
        .filter(|t| t.relkind == RelKind::Partitioned)
        .map(|t| t.schema.id.to_string())
        .collect();
    plan.checks.extend(feature_checks(
        version_num,
        config.postgres.proto_version,
        &partitioned,
    ));
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

/// Oldest and newest source majors ferry is tested with.
pub const TESTED_MAJORS: (u32, u32) = (12, 18);

/// Server version: ≥ 10 required; outside [`TESTED_MAJORS`] a warning.
pub fn version_check(version_num: u32) -> Check {
    let major = version_num / 10_000;
    let shown = format!("PostgreSQL {major}");
    if version_num < 100_000 {
        return Check::fail(
            SIDE,
            "server version",
            format!("{shown} ({version_num}) is too old for logical replication with pgoutput"),
            "upgrade the source to PostgreSQL 12 or later",
        );
    }
    let (low, high) = TESTED_MAJORS;
    if !(low..=high).contains(&major) {
        return Check::warn(
            SIDE,
            "server version",
            format!("{shown} is outside the tested range {low}–{high}"),
            format!(
                "prefer a source of PostgreSQL {low}–{high}, or test the migration on a copy first"
            ),
        );
    }
    Check::pass(SIDE, "server version", shown)
}

/// What PostgreSQL `version_num` cannot do that newer servers can, and
/// what ferry does instead. `partitioned`: the selected partitioned tables.
pub fn feature_checks(version_num: u32, proto_version: u32, partitioned: &[String]) -> Vec<Check> {
    let major = version_num / 10_000;
    let mut out = Vec::new();
    out.push(if version_num < STREAMING_SINCE {
        Check::warn(
            SIDE,
            "large-transaction streaming",
            format!(
                "unavailable on PostgreSQL {major} (pgoutput protocol 2 needs 14): ferry uses protocol 1, \
                 so a large transaction reaches the target only after its commit, once the source has decoded \
                 it whole (spilling to its disk beyond logical_decoding_work_mem)"
            ),
            "nothing to do; expect the lag to rise while a large transaction is decoded, or upgrade the source to 14+",
        )
    } else if proto_version < 2 {
        Check::pass(
            SIDE,
            "large-transaction streaming",
            "off (postgres.proto_version = 1): large transactions are decoded at commit",
        )
    } else {
        Check::pass(
            SIDE,
            "large-transaction streaming",
            "on (pgoutput protocol 2)",
        )
    });
    if version_num < STREAMING_SINCE {
        out.push(Check::pass(
            SIDE,
            "decoding messages",
            format!(
                "unavailable on PostgreSQL {major} (pgoutput `messages` needs 14): ferry follows the source \
                 position from the server's keepalives instead of its heartbeat messages"
            ),
        ));
    }
    if version_num < PARTITION_ROOT_SINCE {
        out.push(if partitioned.is_empty() {
            Check::pass(
                SIDE,
                "partition-root publishing",
                format!(
                    "unavailable on PostgreSQL {major} (publish_via_partition_root needs 13); \
                     no partitioned table is selected"
                ),
            )
        } else {
            Check::fail(
                SIDE,
                "partition-root publishing",
                format!(
                    "unavailable on PostgreSQL {major} (publish_via_partition_root needs 13), \
                     so these partitioned tables cannot be published: {}",
                    partitioned.join(", ")
                ),
                "exclude them with tables.exclude (and copy them another way), or upgrade the source to PostgreSQL 13+",
            )
        });
    }
    out
}

/// A `pg_dump` at least as new as the server (the schema copy runs it).
pub async fn pg_dump_check(version_num: u32) -> Check {
    let major = version_num / 10_000;
    let found = match dump::find_pg_dump() {
        Ok(path) => dump::pg_dump_version(&path).await,
        Err(e) => Err(e),
    };
    let checked = found.and_then(|d| dump::check_version(&d, major).map(|()| d));
    match checked {
        Ok(d) => Check::pass(
            SIDE,
            "pg_dump",
            format!("{} ({})", d.version, d.path.display()),
        ),
        Err(e) => Check::fail(
            SIDE,
            "pg_dump",
            e.to_string(),
            e.fix()
                .unwrap_or("set FERRY_PG_DUMP to a newer pg_dump")
                .to_owned(),
        ),
    }
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
    // A slot created beforehand exists, but the load snapshot needs a
    // temporary one next to it.
    let needs_slot = if config.postgres.existing_slot {
        slot != SlotOwnership::Resuming
    } else {
        !(ours_exists && slot != SlotOwnership::Fresh)
    };
    let mut out = Vec::new();
    let detail = format!("max_replication_slots = {max_slots}, {used_slots} in use");
    if needs_slot && used_slots >= max_slots {
        // A slot created beforehand needs a temporary one beside it only
        // on a fresh run: unknown until the target answers.
        let unknown = config.postgres.existing_slot && slot == SlotOwnership::Unknown;
        out.push(
            Check::fail(
                SIDE,
                "replication slots",
                detail,
                format!(
                    "raise max_replication_slots above {max_slots} and restart PostgreSQL, or drop an unused slot with SELECT pg_drop_replication_slot('<name>')"
                ),
            )
            .with_transient(unknown),
        );
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
    if config.postgres.existing_slot {
        let mut out = vec![existing_slot::existing_slot_check(client, name, slot).await?];
        out.extend(insert_only_publication_check(client, config, slot).await?);
        return Ok(out);
    }
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
        (None, SlotOwnership::Unknown) => {
            Check::pass(SIDE, "slot name", format!("slot '{name}' is free"))
        }
        (Some(_), SlotOwnership::Unknown) => Check::fail(
            SIDE,
            "slot name",
            format!(
                "a replication slot named '{name}' exists, and whether it is this migration's is known once the target's state can be read"
            ),
            "make the target reachable (if it is restarting, this passes by itself)",
        )
        .with_transient(true),
    }];
    out.extend(insert_only_publication_check(client, config, slot).await?);
    Ok(out)
}

/// The main publication is checked by `publication_check` (it may have been
/// created beforehand); the insert-only one is always ferry's.
async fn insert_only_publication_check(
    client: &Client,
    config: &Config,
    slot: SlotOwnership,
) -> Result<Option<Check>, Error> {
    let mut out = None;
    if !config.tables.insert_only.is_empty() {
        let publication = insert_only_publication(&config.postgres.publication);
        let exists = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&publication],
            )
            .await
            .map_err(|e| query_error("reading pg_publication", e))?
            .get::<_, bool>(0);
        out = Some(match (exists, slot) {
            (true, SlotOwnership::Fresh) => Check::warn(
                SIDE,
                "publication name",
                format!("publication '{publication}' already exists"),
                format!(
                    "ferry will reuse it for the insert-only tables; if it is not ferry's, DROP PUBLICATION \"{publication}\" or set postgres.publication to another name"
                ),
            ),
            _ => Check::pass(
                SIDE,
                "publication name",
                format!("publication '{publication}'"),
            ),
        });
    }
    Ok(out)
}

/// The publication: ferry's own (created by an earlier run) is reused; one
/// created beforehand (e.g. by a DBA, for a role that may not create
/// publications) is used as is and never dropped, and must publish every
/// selected table (but the insert-only ones), no other table, and insert,
/// update, delete and truncate.
async fn publication_check(
    client: &Client,
    config: &Config,
    filter: &TableFilter,
    catalog: &SourceCatalog,
) -> Result<Check, Error> {
    let name = &config.postgres.publication;
    let Some(info) = crate::slot::publication_info(client, name).await? else {
        return Ok(Check::pass(
            SIDE,
            "publication",
            format!("ferry creates publication '{name}' for the selected tables"),
        ));
    };
    if info.created_by_ferry {
        return Ok(Check::pass(
            SIDE,
            "publication",
            format!("publication '{name}' was created by ferry: reused"),
        ));
    }
    let expected: Vec<&TableId> = catalog
        .tables
        .iter()
        .map(|t| &t.schema.id)
        .filter(|id| !filter.insert_only(id))
        .collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|id| !info.tables.contains(id))
        .map(|id| id.to_string())
        .collect();
    let extra: Vec<String> = info
        .tables
        .iter()
        .filter(|id| !expected.contains(id))
        .map(TableId::to_string)
        .collect();
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let quoted = quote_ident(name);
    if !missing.is_empty() {
        problems.push(format!("does not publish {}", missing.join(", ")));
        fixes.push(format!(
            "ALTER PUBLICATION {quoted} ADD TABLE {}",
            missing.join(", ")
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "also publishes {} (not selected: ferry would apply their changes)",
            extra.join(", ")
        ));
        fixes.push(if info.all_tables {
            "use a publication FOR TABLE the selected tables, or select every table".to_owned()
        } else {
            format!(
                "ALTER PUBLICATION {quoted} DROP TABLE {} (or select them)",
                extra.join(", ")
            )
        });
    }
    if !info.missing_operations.is_empty() {
        problems.push(format!(
            "does not publish {}",
            info.missing_operations.join(", ")
        ));
        fixes.push(format!(
            "ALTER PUBLICATION {quoted} SET (publish = 'insert, update, delete, truncate')"
        ));
    }
    Ok(if problems.is_empty() {
        Check::pass(
            SIDE,
            "publication",
            format!(
                "publication '{name}' was created beforehand: used as is and never dropped by ferry"
            ),
        )
    } else {
        Check::fail(
            SIDE,
            "publication",
            format!(
                "publication '{name}' was created beforehand and {}",
                problems.join("; ")
            ),
            fixes.join("; "),
        )
    })
}

/// Per-table checks: something selected, SELECT privilege, replica identity.
///
/// Resuming with DDL capture, a keyless or unlogged table ferry has not
/// published was created (or changed) by the application mid-stream: it is
/// not carried until it can be published, and then copied, so it does not
/// stop the run (a warning says so).
async fn table_checks(
    client: &Client,
    catalog: &SourceCatalog,
    filter: &TableFilter,
    config: &Config,
    slot: SlotOwnership,
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
    out.push(sequence_check(catalog));
    let insert_only = insert_only_publication(&config.postgres.publication);
    let published = if slot == SlotOwnership::Resuming && config.postgres.capture_ddl {
        crate::slot::published_at(
            client,
            &[config.postgres.publication.clone(), insert_only.clone()],
        )
        .await?
    } else {
        None
    };
    let waiting = |t: &SourceTable| published.as_ref().is_some_and(|p| !p.contains(&t.oid));
    let mut checks: Vec<(bool, Check)> = Vec::new();
    checks.extend(catalog.tables.iter().filter_map(|t| {
        let declared = filter.insert_only(&t.schema.id);
        identity_check(t, declared.then_some(insert_only.as_str())).map(|c| (waiting(t), c))
    }));
    checks.extend(catalog.tables.iter().filter(|t| t.unlogged).map(|t| {
        (
            waiting(t),
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
            ),
        )
    }));
    out.extend(checks.into_iter().map(|(waiting, c)| match c.status {
        CheckStatus::Fail if waiting => Check::warn(
            SIDE,
            c.name,
            format!(
                "{}; created or changed mid-stream and not published: its rows are not carried until it is, and copied then",
                c.detail
            ),
            c.fix.unwrap_or_default(),
        ),
        _ => c,
    }));
    Ok(out)
}

/// The cutover copies every sequence's value to the target; a sequence the
/// role may not read would look unused (NULL) and be left behind.
pub fn sequence_check(catalog: &SourceCatalog) -> Check {
    let Some(unreadable) = catalog.unreadable_sequences() else {
        return Check::pass(
            SIDE,
            "sequence privilege",
            format!(
                "SELECT on all {} sequences synced at cutover",
                catalog.sequences.len()
            ),
        );
    };
    Check::fail(
        SIDE,
        "sequence privilege",
        format!(
            "no SELECT on sequence {}: the cutover cannot read its value to set it on the target",
            unreadable.names
        ),
        format!(
            "GRANT SELECT ON SEQUENCE {} TO <source user>",
            unreadable.quoted
        ),
    )
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
        assert_eq!(version_check(96_000).status, CheckStatus::Fail);
        assert_eq!(version_check(110_022).status, CheckStatus::Warn);
        assert_eq!(version_check(120_022).status, CheckStatus::Pass);
        assert_eq!(version_check(180_004).status, CheckStatus::Pass);
        assert_eq!(version_check(190_000).status, CheckStatus::Warn);
    }

    fn named<'a>(checks: &'a [Check], name: &str) -> Option<&'a Check> {
        checks.iter().find(|c| c.name == name)
    }

    #[test]
    fn unavailable_features_are_named_per_version() {
        let v12 = feature_checks(120_022, 2, &[]);
        let s = named(&v12, "large-transaction streaming").unwrap();
        assert_eq!(s.status, CheckStatus::Warn);
        assert!(
            s.detail.starts_with("unavailable on PostgreSQL 12"),
            "{}",
            s.detail
        );
        let p = named(&v12, "partition-root publishing").unwrap();
        assert_eq!(p.status, CheckStatus::Pass);
        assert!(p.detail.contains("needs 13"), "{}", p.detail);
        let parts = feature_checks(120_022, 2, &["public.events".into()]);
        let p = named(&parts, "partition-root publishing").unwrap();
        assert_eq!(p.status, CheckStatus::Fail);
        assert!(p.detail.ends_with("public.events"), "{}", p.detail);

        let v13 = feature_checks(130_023, 2, &["public.events".into()]);
        assert!(named(&v13, "partition-root publishing").is_none());
        assert_eq!(
            named(&v13, "large-transaction streaming").unwrap().status,
            CheckStatus::Warn
        );

        let v14 = feature_checks(140_023, 2, &[]);
        assert_eq!(v14.len(), 1);
        assert_eq!(v14[0].status, CheckStatus::Pass);
        assert_eq!(v14[0].detail, "on (pgoutput protocol 2)");
    }
}
