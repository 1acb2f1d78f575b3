//! Target prerequisite checks for `ferry plan` (DESIGN.md §8).
//!
//! Consumes: a connected target client, the state schema and the target
//! tables of the plan. Emits: [`Check`]s (side `target`); a failed check
//! always carries the fix. Read-only except for nothing: privileges are
//! probed with catalog functions, never by trying DDL (only
//! `session_replication_role` is tried, with `SET LOCAL` in a transaction
//! that is rolled back).

use ferry_core::TableId;
use ferry_core::plan::Check;
use tokio_postgres::Client;

use crate::state::StateStore;

const SIDE: &str = "target";

/// Run all target checks. A connection failure is itself a failed check.
pub async fn check_target(client: &Client, state: &StateStore, tables: &[TableId]) -> Vec<Check> {
    let mut checks = Vec::new();
    let row = match client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int,
                    has_database_privilege(current_user, current_database(), 'CREATE'),
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                    pg_has_role(current_user, oid, 'MEMBER')
               FROM (SELECT (SELECT oid FROM pg_roles WHERE rolname = 'rds_superuser') AS oid) r",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            checks.push(Check::fail(
                SIDE,
                "reachable",
                format!("query failed: {e}"),
                "check the target URL, that the server is up and the role may log in",
            ));
            return checks;
        }
    };
    let version: String = row.get(0);
    let version_num: i32 = row.get(1);
    checks.push(if version_num >= 120_000 {
        Check::pass(SIDE, "reachable", format!("PostgreSQL {version}"))
    } else {
        Check::fail(
            SIDE,
            "version",
            format!("PostgreSQL {version}"),
            "use PostgreSQL 12 or newer as the target",
        )
    });
    let can_create: bool = row.get(2);
    checks.push(if can_create {
        Check::pass(SIDE, "create privilege", "CREATE on the database")
    } else {
        Check::fail(
            SIDE,
            "create privilege",
            "no CREATE on the database",
            "GRANT CREATE ON DATABASE <db> TO <target role>",
        )
    });
    let superuser: bool = row.get::<_, Option<bool>>(3).unwrap_or(false);
    let rds_superuser: bool = row.get::<_, Option<bool>>(4).unwrap_or(false);
    checks.push(match replica_role_allowed(client).await {
        Ok(true) => Check::pass(
            SIDE,
            "session_replication_role",
            if superuser {
                "superuser: applies under session_replication_role = replica"
            } else if rds_superuser {
                "member of rds_superuser: applies under session_replication_role = replica"
            } else {
                "may SET session_replication_role: applies under session_replication_role = replica"
            },
        ),
        Ok(false) => Check::warn(
            SIDE,
            "session_replication_role",
            NO_REPLICA_ROLE_PLAN,
            "nothing to do if this is acceptable; otherwise connect as a superuser, on RDS/Aurora GRANT rds_superuser TO <target role>, or on PostgreSQL 15+ GRANT SET ON PARAMETER session_replication_role TO <target role>",
        ),
        Err(e) => Check::fail(
            SIDE,
            "session_replication_role",
            format!("query failed: {e}"),
            "check the target role's privileges",
        ),
    });
    checks.push(state_check(client, state, can_create).await);
    for t in tables {
        if let Some(c) = table_check(client, t).await {
            checks.push(c);
        }
    }
    checks
}

/// What `ferry plan` says ferry does when the target role cannot set
/// `session_replication_role` (no-replica-role mode).
pub const NO_REPLICA_ROLE_PLAN: &str = "the target role cannot SET session_replication_role = replica (no-replica-role mode): ferry applies as a normal session instead; after post-data it disables the user triggers and rules of the target tables that would fire (ALTER TABLE … DISABLE TRIGGER/RULE, the tables are the target role's own) and drops their foreign keys, recording each in the state schema; the cutover puts back every trigger and rule as it was enabled and re-creates and validates every foreign key, in the transaction that marks the migration done";

/// Whether this session may `SET session_replication_role = replica`
/// (superuser, `rds_superuser`, or PostgreSQL 15+ `GRANT SET ON
/// PARAMETER`): tried in a transaction that is rolled back. `Ok(false)` on
/// insufficient privilege; other errors are returned.
pub async fn replica_role_allowed(client: &Client) -> Result<bool, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let tried = client
        .batch_execute("SET LOCAL session_replication_role = replica")
        .await;
    client.batch_execute("ROLLBACK").await?;
    match tried {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn state_check(client: &Client, state: &StateStore, can_create: bool) -> Check {
    let name = "state schema";
    let row = client
        .query_one(
            "SELECT n.oid IS NOT NULL, coalesce(has_schema_privilege(n.oid, 'CREATE, USAGE'), false)
               FROM (SELECT 1) x LEFT JOIN pg_namespace n ON n.nspname = $1",
            &[&state.schema()],
        )
        .await;
    match row {
        Ok(r) => {
            let (exists, usable): (bool, bool) = (r.get(0), r.get(1));
            if exists && usable {
                Check::pass(
                    SIDE,
                    name,
                    format!("schema {} exists and is usable", state.schema()),
                )
            } else if exists {
                Check::fail(
                    SIDE,
                    name,
                    format!(
                        "schema {} exists but the target role cannot use it",
                        state.schema()
                    ),
                    format!(
                        "GRANT USAGE, CREATE ON SCHEMA {} TO <target role>",
                        state.schema()
                    ),
                )
            } else if can_create {
                Check::pass(
                    SIDE,
                    name,
                    format!("schema {} will be created", state.schema()),
                )
            } else {
                Check::fail(
                    SIDE,
                    name,
                    format!("schema {} is missing and cannot be created", state.schema()),
                    "GRANT CREATE ON DATABASE <db> TO <target role>, or create the schema for it",
                )
            }
        }
        Err(e) => Check::fail(
            SIDE,
            name,
            format!("query failed: {e}"),
            "check the target role's privileges",
        ),
    }
}

/// Warn about a target table that exists and already holds rows.
async fn table_check(client: &Client, t: &TableId) -> Option<Check> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&t.quoted()])
        .await
        .ok()?
        .get(0);
    if !exists {
        return None;
    }
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", t.quoted());
    let non_empty: bool = client.query_one(&sql, &[]).await.ok()?.get(0);
    non_empty.then(|| {
        Check::warn(
            SIDE,
            format!("table {t}"),
            format!("target table {t} already exists and is not empty"),
            format!("the load replaces its rows (TRUNCATE); exclude the table or empty it on purpose: TRUNCATE {}", t.quoted()),
        )
    })
}
