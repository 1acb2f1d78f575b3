//! The whole state schema, in one place, as an ordered list of versioned
//! migrations ([`MIGRATIONS`]); [`ensure`] brings a target's state schema
//! to [`LATEST`].
//!
//! Tables (schema name from `[state] schema`, default `ferry`):
//!
//! | table | what | written by |
//! |---|---|---|
//! | `schema_version(version, applied_at)` | one row per applied migration; the state's version is the largest | [`ensure`] |
//! | `checkpoint(stream, source_kind, position, commit_time, updated_at)` | last applied source position per stream, in the data's transaction | [`crate::checkpoint`] |
//! | `tables(source_table, target_table, state, reason, chunks_total, rows_copied, row_estimate, updated_at)` | per-table lifecycle and load progress | [`super::StateStore`] |
//! | `chunks(source_table, chunk, rows, done_at, replaced)` | loaded chunks; `replaced`: values the source's policy replaced in the chunk, per column (JSON object) | [`crate::load`] |
//! | `replaced_values(source_table, column_name, streamed, updated_at)` | values the source's policy replaced in the change stream, per column | [`crate::applier::TargetTxn::count_replaced`] |
//! | `pipeline(id = 1, phase, updated_at)` | the pipeline phase | [`super::StateStore`] |
//! | `runs`, `events` | each run (and its cutover record), the event log | [`super::StateStore`] |
//! | `lag_history(at, lag_seconds, lag_bytes)` | lag samples for the weeks view | the ferry-monitor sampler |
//! | `load_plan`, `post_data`, `post_data_preamble`, `table_snapshots` | the durable chunk plan, index builds, per-table snapshot positions | the binary's plan store |
//! | `overrides(kind, relid, object, original, recorded_at, done_at)` | target schema changes to put back at cutover | the binary's overrides |
//! | `control(id = 1, address, pid, started_at)` | where the running `ferry run` listens | the binary's control API |
//! | `fallback(id = 1, direction, slot, publication, start_position, started_at, ended_at, note)` | the way back after a cutover with fallback: `reverse` while ferry streams the new database into the old source, then `rolled_back` or `finished`; the same row on both sides | the binary's fallback module |
//! | `shadow_queries(fingerprint, query, calls, mirrored, mismatches, lag_settled, target_errors, source_p50_ms, source_p99_ms, target_p50_ms, target_p99_ms, example, updated_at)` | shadow-read statistics per normalized statement (no values) | the binary's proxy wiring |
//! | `proxy_events(id, at, kind, mode, by, detail)` | proxy mode changes (who, when) and cutovers through the proxy (client-side write freeze) | the binary's proxy wiring |
//! | `validations(id, source_table, target_table, started_at, finished_at, rows_checked, ranges, differences, unsettled, repaired, clean, rows_per_second)` | one row per table per validation | the binary's validate module |
//!
//! Versions:
//!
//! 1. The schema as ferry wrote it before this module existed, when four
//!    places each created their own tables and some only lazily (`control`
//!    when the control API started, the plan tables and `overrides` when a
//!    run started). Those databases are all recorded as version 1 whatever
//!    subset they hold, so version 1 is idempotent (`IF NOT EXISTS`) and is
//!    applied again over a database at version 1: it creates what is
//!    missing and leaves every existing table and row alone. `lag_history`
//!    is the apply side's definition (both figures nullable): it ran first,
//!    so the sampler's `IF NOT EXISTS` never created its stricter one.
//! 2. `lag_history` takes the sampler's rule, both figures `NOT NULL` (the
//!    monitor cannot read a sample without them: rows missing one are
//!    removed); `schema_version` gets a primary key on `version`.
//! 3. `validations`: the result of each table's validation (`ferry
//!    validate`), newest last; `differences` and `unsettled` are JSON arrays
//!    of keys (never row values).
//! 4. `fallback`: the way back after a cutover with fallback (one row,
//!    written in the target's state and in the old source's).
//! 5. `shadow_queries`: the proxy's shadow-read statistics per query
//!    fingerprint (totals since the migration started; normalized text
//!    only); `proxy_events`: mode changes with who and when, and cutovers
//!    through the proxy with the write freeze clients saw.
//! 6. `chunks.replaced` and `replaced_values`: values a source policy
//!    replaced (MySQL zero dates written as NULL), per column, committed
//!    with the chunk or the stream transaction they were counted in.
//!
//! Invariants: [`ensure`] runs every missing migration and records each in
//! one transaction (the steps and their version rows sent as one simple
//! query), under the advisory lock that ferry has always taken
//! for the state schema (`hashtext('ferry-state:<schema>')`), so several
//! ferry processes starting at once — also an older and a newer one —
//! serialise, and a crash leaves the previous version intact. A version
//! newer than [`LATEST`] stops with an operator error: a newer ferry wrote
//! the state. Migrations never drop a table or a row a running migration
//! needs, so a migration in progress survives an upgrade of ferry.
//!
//! A run's start on a fresh target ([`ensure_start`]) creates only the
//! [`CORE`] tables, by version 1's own statements, and records no
//! version; the run then has [`ensure`] create the rest on another
//! session, beside its first steps on the source (a stop in between
//! leaves version 0: the next start does the same again).
//!
//! Adding a version: append a [`Migration`] with the next number, its SQL
//! written against `{s}` (the quoted schema), and its line above.

use ferry_core::schema::quote_ident;
use ferry_core::{Error, Result};
use tokio_postgres::Client;
use tracing::info;

use super::quote_literal;
use crate::error::pg_error;

/// One step of the state schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The version a database is at once this step is applied.
    pub version: i32,
    /// What the step changes, for the log.
    pub summary: &'static str,
    /// SQL with `{s}` standing for the quoted state schema name.
    template: &'static str,
}

impl Migration {
    /// The step's SQL for the (unquoted) state schema `schema`.
    pub fn sql(&self, schema: &str) -> String {
        self.template.replace("{s}", &quote_ident(schema))
    }
}

/// Every version of the state schema, oldest first; numbered 1, 2, … with
/// no gaps.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        summary: "the state schema as ferry created it before versioned migrations",
        template: V1,
    },
    Migration {
        version: 2,
        summary: "lag_history figures NOT NULL; schema_version keyed by version",
        template: V2,
    },
    Migration {
        version: 3,
        summary: "validations: per-table results of ferry validate",
        template: V3,
    },
    Migration {
        version: 4,
        summary: "fallback: the reverse stream after a cutover with fallback",
        template: V4,
    },
    Migration {
        version: 5,
        summary: "shadow_queries and proxy_events: the PostgreSQL-wire proxy's statistics and mode changes",
        template: V5,
    },
    Migration {
        version: 6,
        summary: "replaced_values and chunks.replaced: values a source policy replaced, counted with the data",
        template: V6,
    },
];

/// The version of the state schema this build writes.
pub const LATEST: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

const V1: &str = "
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.schema_version (
    version int NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {s}.checkpoint (
    stream text PRIMARY KEY,
    source_kind text NOT NULL,
    position text NOT NULL,
    commit_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {s}.tables (
    source_table text PRIMARY KEY,
    target_table text NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    reason text,
    chunks_total int,
    rows_copied bigint NOT NULL DEFAULT 0,
    row_estimate bigint,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {s}.chunks (
    source_table text NOT NULL,
    chunk int NOT NULL,
    rows bigint NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_table, chunk));
CREATE TABLE IF NOT EXISTS {s}.pipeline (
    id int PRIMARY KEY CHECK (id = 1),
    phase text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {s}.runs (
    id bigserial PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    phase text NOT NULL,
    source text,
    finished_at timestamptz,
    cutover jsonb);
CREATE TABLE IF NOT EXISTS {s}.events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    message text NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.lag_history (
    at timestamptz PRIMARY KEY,
    lag_seconds double precision,
    lag_bytes bigint);
CREATE TABLE IF NOT EXISTS {s}.load_plan (
    table_schema text NOT NULL, table_name text NOT NULL, chunk int NOT NULL,
    rel_schema text NOT NULL, rel_name text NOT NULL, predicate text,
    only_rel boolean NOT NULL, total int NOT NULL,
    PRIMARY KEY (table_schema, table_name, chunk));
CREATE TABLE IF NOT EXISTS {s}.post_data (
    seq int PRIMARY KEY, kind text NOT NULL, name text NOT NULL,
    parallel boolean NOT NULL, sql text NOT NULL, done_at timestamptz);
CREATE TABLE IF NOT EXISTS {s}.post_data_preamble (id int PRIMARY KEY CHECK (id = 1), sql text NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.table_snapshots (
    table_schema text NOT NULL, table_name text NOT NULL, lsn text NOT NULL,
    PRIMARY KEY (table_schema, table_name));
ALTER TABLE {s}.post_data ADD COLUMN IF NOT EXISTS fk_table text,
    ADD COLUMN IF NOT EXISTS fk_name text;
CREATE TABLE IF NOT EXISTS {s}.overrides (
    kind text NOT NULL, relid oid NOT NULL, object text NOT NULL,
    original text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz,
    PRIMARY KEY (kind, relid, object));
CREATE TABLE IF NOT EXISTS {s}.control (id int PRIMARY KEY CHECK (id = 1), address text NOT NULL, pid int NOT NULL, started_at timestamptz NOT NULL DEFAULT now());
";

const V2: &str = "
DELETE FROM {s}.lag_history WHERE lag_seconds IS NULL OR lag_bytes IS NULL;
ALTER TABLE {s}.lag_history
    ALTER COLUMN lag_seconds SET NOT NULL,
    ALTER COLUMN lag_bytes SET NOT NULL;
DELETE FROM {s}.schema_version a USING {s}.schema_version b
    WHERE a.version = b.version AND a.ctid > b.ctid;
ALTER TABLE {s}.schema_version ADD PRIMARY KEY (version);
";

const V3: &str = "
CREATE TABLE IF NOT EXISTS {s}.validations (
    id bigserial PRIMARY KEY,
    source_table text NOT NULL,
    target_table text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    rows_checked bigint NOT NULL,
    ranges bigint NOT NULL,
    differences jsonb NOT NULL DEFAULT '[]',
    unsettled jsonb NOT NULL DEFAULT '[]',
    repaired bigint NOT NULL DEFAULT 0,
    clean boolean NOT NULL,
    rows_per_second double precision NOT NULL DEFAULT 0,
    note text);
CREATE INDEX IF NOT EXISTS validations_table_idx ON {s}.validations (source_table, id);
";

const V4: &str = "
CREATE TABLE IF NOT EXISTS {s}.fallback (
    id int PRIMARY KEY CHECK (id = 1),
    direction text NOT NULL,
    slot text NOT NULL,
    publication text NOT NULL,
    start_position text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    note text);
";

const V5: &str = "
CREATE TABLE IF NOT EXISTS {s}.shadow_queries (
    fingerprint text PRIMARY KEY,
    query text NOT NULL,
    calls bigint NOT NULL DEFAULT 0,
    mirrored bigint NOT NULL DEFAULT 0,
    mismatches bigint NOT NULL DEFAULT 0,
    lag_settled bigint NOT NULL DEFAULT 0,
    target_errors bigint NOT NULL DEFAULT 0,
    source_p50_ms double precision,
    source_p99_ms double precision,
    target_p50_ms double precision,
    target_p99_ms double precision,
    example text,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {s}.proxy_events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    mode text,
    by text,
    detail jsonb);
";

const V6: &str = "
ALTER TABLE {s}.chunks ADD COLUMN IF NOT EXISTS replaced jsonb;
CREATE TABLE IF NOT EXISTS {s}.replaced_values (
    source_table text NOT NULL,
    column_name text NOT NULL,
    streamed bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_table, column_name));
";

/// The migrations to run over a database whose recorded version is
/// `recorded` (0: no state schema). Version 1 runs again over version 1
/// (see the module doc). Pure.
fn pending(schema: &str, recorded: i32) -> Result<&'static [Migration]> {
    if recorded > LATEST {
        return Err(Error::operator(
            format!(
                "the state schema {schema} in the target is at version {recorded}, newer than \
                 version {LATEST}, the newest this ferry ({}) knows",
                env!("CARGO_PKG_VERSION")
            ),
            format!(
                "a newer ferry wrote this state: run a ferry whose state schema version is \
                 {recorded} or later (an older ferry cannot continue this migration)"
            ),
        ));
    }
    let first = MIGRATIONS
        .iter()
        .position(|m| m.version > recorded || (m.version == 1 && recorded == 1))
        .unwrap_or(MIGRATIONS.len());
    Ok(&MIGRATIONS[first..])
}

/// Bring the state schema `schema` (unquoted) to [`LATEST`]: the missing
/// migrations and their `schema_version` rows in one transaction, under
/// the state schema's advisory lock. Returns the version found (0: none).
pub async fn ensure(client: &Client, schema: &str) -> Result<i32> {
    locked(client, schema, async {
        let found = recorded_version(client, schema).await?;
        migrate_locked(client, schema, found).await
    })
    .await
}

/// `work` in one transaction under the state schema's advisory lock:
/// committed when it succeeds, rolled back when it fails.
async fn locked<T>(
    client: &Client,
    schema: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let lock_key = quote_literal(&format!("ferry-state:{schema}"));
    // READ COMMITTED: after waiting for the lock, each statement sees what
    // the process that held it committed.
    let begin = format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock(hashtext({lock_key}))"
    );
    client
        .batch_execute(&begin)
        .await
        .map_err(|e| pg_error(format!("locking state schema {schema}"), e))?;
    match work.await {
        Ok(done) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| pg_error(format!("committing state schema {schema}"), e))?;
            Ok(done)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// What [`ensure_start`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The state schema is at [`LATEST`].
    Ready,
    /// A fresh target: only [`CORE`] exists yet; [`ensure`] (on another
    /// session, beside the source's work) creates the rest.
    CoreOnly,
}

/// The tables a start writes before anything else of the state: the
/// phase, the run and its events, the control API's address. No
/// migration after version 1 changes them, so on a fresh target they are
/// created first, by version 1's own statements ([`core_sql`]), and the
/// rest of the schema need not hold up the start.
pub const CORE: &[&str] = &["pipeline", "runs", "events", "control"];

/// Version 1's `CREATE SCHEMA` and its statements creating the [`CORE`]
/// tables, verbatim (`IF NOT EXISTS`: [`ensure`] runs them again, as part
/// of version 1, and leaves the tables alone). Pure.
pub fn core_sql(schema: &str) -> String {
    let mut sql = String::new();
    for statement in V1.split(";\n") {
        let s = statement.trim();
        let core = s.starts_with("CREATE SCHEMA ")
            || CORE
                .iter()
                .any(|t| s.starts_with(&format!("CREATE TABLE IF NOT EXISTS {{s}}.{t} (")));
        if core {
            sql.push_str(s);
            sql.push_str(";\n");
        }
    }
    sql.replace("{s}", &quote_ident(schema))
}

/// The start of a run: on a fresh target (no state schema version
/// recorded) only the [`CORE`] tables, committed at once, and
/// [`Started::CoreOnly`]: the caller runs [`ensure`] beside its next steps
/// and waits for it before it touches any other state table. Otherwise
/// the whole of [`ensure`], here. Under the same advisory lock as
/// [`ensure`], so a process running [`ensure`] meanwhile serialises with
/// it; a crash before the rest leaves version 0, and the next start
/// creates the rest.
pub async fn ensure_start(client: &Client, schema: &str) -> Result<Started> {
    locked(client, schema, async {
        let found = recorded_version(client, schema).await?;
        if found == 0 {
            client
                .batch_execute(&core_sql(schema))
                .await
                .map_err(|e| pg_error(format!("creating the state schema {schema}"), e))?;
            return Ok(Started::CoreOnly);
        }
        migrate_locked(client, schema, found)
            .await
            .map(|_| Started::Ready)
    })
    .await
}

/// The migrations pending over version `found`, under the lock.
async fn migrate_locked(client: &Client, schema: &str, found: i32) -> Result<i32> {
    let steps = pending(schema, found)?;
    let Some(last) = steps.last() else {
        return Ok(found);
    };
    // Every pending step with its version row, in one simple query (one
    // round trip, where a first run on a fresh target used to take three
    // per step).
    let versions = format!("{}.schema_version", quote_ident(schema));
    let mut sql = String::new();
    for m in steps {
        sql.push_str(&m.sql(schema));
        sql.push_str(&format!(
            "\nINSERT INTO {versions} (version) SELECT {v}\n WHERE NOT EXISTS (SELECT 1 FROM {versions} WHERE version = {v});\n",
            v = m.version
        ));
    }
    client.batch_execute(&sql).await.map_err(|e| {
        pg_error(
            format!(
                "migrating state schema {schema} from version {found} to {}",
                last.version
            ),
            e,
        )
    })?;
    for m in steps.iter().filter(|m| m.version > found) {
        info!(
            schema,
            from = found,
            to = m.version,
            summary = m.summary,
            "state schema migrated"
        );
    }
    Ok(found)
}

/// The largest version in `schema_version`, 0 when the state schema or the
/// table does not exist (or holds no row).
async fn recorded_version(client: &Client, schema: &str) -> Result<i32> {
    let versions = format!("{}.schema_version", quote_ident(schema));
    let exists: bool = client
        .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&versions])
        .await
        .map_err(|e| pg_error("looking up the state schema version table", e))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {versions}"),
            &[],
        )
        .await
        .map_err(|e| pg_error(format!("reading state schema {schema} version"), e))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.summary);
        }
        assert_eq!(LATEST, MIGRATIONS.len() as i32);
    }

    #[test]
    fn pending_steps_by_recorded_version() {
        let versions = |recorded| -> Vec<i32> {
            pending("ferry", recorded)
                .unwrap()
                .iter()
                .map(|m| m.version)
                .collect()
        };
        let all: Vec<i32> = (1..=LATEST).collect();
        // (recorded, expected steps)
        let cases: Vec<(i32, Vec<i32>)> = vec![
            (0, all.clone()),
            // Version 1 may lack its lazily created tables: applied again.
            (1, all.clone()),
            (LATEST, vec![]),
        ];
        for (recorded, want) in cases {
            assert_eq!(versions(recorded), want, "recorded {recorded}");
        }
        for recorded in 2..=LATEST {
            let later: Vec<i32> = (recorded + 1..=LATEST).collect();
            assert_eq!(versions(recorded), later, "recorded {recorded}");
        }
    }

    #[test]
    fn newer_version_names_both_versions_and_the_fix() {
        let err = pending("ferry", LATEST + 1).unwrap_err();
        assert_eq!(err.class(), ferry_core::ErrorClass::Operator);
        let text = err.to_string();
        assert!(text.contains(&format!("version {}", LATEST + 1)), "{text}");
        assert!(text.contains(&format!("version {LATEST}")), "{text}");
        assert!(text.contains("newer ferry"), "{text}");
    }

    #[test]
    fn the_core_tables_are_version_1s_own_statements() {
        let core = core_sql("st");
        let v1 = MIGRATIONS[0].sql("st");
        let statements: Vec<&str> = core.split(";\n").filter(|s| !s.trim().is_empty()).collect();
        // The schema, then one statement per core table, each as version 1
        // writes it.
        assert_eq!(statements.len(), CORE.len() + 1, "{core}");
        assert!(
            statements[0].starts_with("CREATE SCHEMA IF NOT EXISTS \"st\""),
            "{core}"
        );
        for s in &statements {
            assert!(
                v1.contains(&format!("{s};")),
                "not verbatim in version 1: {s}"
            );
        }
        for t in CORE {
            assert!(
                statements
                    .iter()
                    .any(|s| s.starts_with(&format!("CREATE TABLE IF NOT EXISTS \"st\".{t} ("))),
                "{t} missing: {core}"
            );
            // No later migration names a core table (its name after the
            // schema, followed by anything but more of a name).
            let name = format!("\"st\".{t}");
            for m in &MIGRATIONS[1..] {
                let sql = m.sql("st");
                let named = sql.match_indices(&name).any(|(at, _)| {
                    !sql[at + name.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
                assert!(!named, "version {} changes {t}", m.version);
            }
        }
    }

    #[test]
    fn sql_quotes_the_schema_name() {
        let sql = MIGRATIONS[0].sql("my \"state\"");
        assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS \"my \"\"state\"\"\";"));
        assert!(!sql.contains("{s}"));
    }
}
