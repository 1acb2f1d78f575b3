//! The versioned state schema against a real PostgreSQL target: a fresh
//! database, the upgrade of a state created by the ferry before versioned
//! migrations (fixtures replaying that code's DDL, with rows of a load in
//! progress), concurrent starts, and a state newer than this build.

mod common;

use common::{connect, rows, server};
use ferry_apply::checkpoint::read_checkpoint;
use ferry_apply::state::schema::{CORE, LATEST, MIGRATIONS, Started};
use ferry_apply::{Phase, StateStore, TableState};
use ferry_core::{ErrorClass, Lsn};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// What ferry before versioned migrations created in `StateStore::ensure`, with rows.
const V1_CORE: &str = include_str!("fixtures/state_v1_core.sql");
/// What it created lazily (plan store, overrides, control), with rows.
const V1_LAZY: &str = include_str!("fixtures/state_v1_lazy.sql");

/// Every table of version 1 (what the old code created).
const V1_TABLES: &[&str] = &[
    "checkpoint",
    "chunks",
    "control",
    "events",
    "lag_history",
    "load_plan",
    "overrides",
    "pipeline",
    "post_data",
    "post_data_preamble",
    "runs",
    "schema_version",
    "table_snapshots",
    "tables",
];

/// Every table of the latest state schema: version 3 adds `validations`,
/// version 4 `fallback`, version 5 `shadow_queries` and `proxy_events`,
/// version 6 `replaced_values`.
fn all_tables() -> Vec<&'static str> {
    let mut t = V1_TABLES.to_vec();
    t.extend([
        "validations",
        "fallback",
        "shadow_queries",
        "proxy_events",
        "replaced_values",
    ]);
    t.sort_unstable();
    t
}

async fn tables_of(c: &Client, schema: &str) -> Vec<String> {
    c.query(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
        &[&schema],
    )
    .await
    .expect("list state tables")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Columns (type, NOT NULL, default) and constraints of the `ferry` schema.
async fn catalog(c: &Client) -> Vec<String> {
    let mut out = rows(
        c,
        "SELECT c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
                || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE n.nspname = 'ferry' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY c.relname, a.attnum",
    )
    .await;
    out.extend(
        rows(
            c,
            "SELECT conrelid::regclass::text || ' ' || conname::text || ' ' || pg_get_constraintdef(oid)
               FROM pg_constraint WHERE connamespace = 'ferry'::regnamespace ORDER BY 1",
        )
        .await,
    );
    out
}

/// Every row of every table of the `ferry` schema, as text, per table.
async fn all_rows(c: &Client) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for t in tables_of(c, "ferry").await {
        if t == "schema_version" {
            continue;
        }
        let sql = format!("SELECT r::text FROM ferry.{t} r ORDER BY 1");
        out.push((t, rows(c, &sql).await));
    }
    out
}

/// Rows of `table` (as `r::text`) as the latest version holds them: version
/// 6 adds `chunks.replaced`, NULL in existing rows.
fn upgraded(table: &str, rows: &[String]) -> Vec<String> {
    rows.iter()
        .map(|r| match (table, r.strip_suffix(')')) {
            ("chunks", Some(open)) => format!("{open},)"),
            _ => r.clone(),
        })
        .collect()
}

async fn versions(c: &Client) -> Vec<i32> {
    c.query(
        "SELECT version FROM ferry.schema_version ORDER BY version",
        &[],
    )
    .await
    .expect("read schema_version")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

#[tokio::test]
async fn fresh_ensure_creates_every_table_at_the_latest_version() {
    let pg = server();
    let db = pg.create_database("state_fresh").unwrap();
    let c = connect(&pg.url(&db)).await;
    let state = StateStore::new("ferry");
    state.ensure(&c).await.expect("ensure on an empty database");

    assert_eq!(tables_of(&c, "ferry").await, all_tables());
    assert_eq!(versions(&c).await, (1..=LATEST).collect::<Vec<_>>());

    // Idempotent: a second ensure changes nothing.
    let before = catalog(&c).await;
    state.ensure(&c).await.expect("ensure again");
    assert_eq!(catalog(&c).await, before);
    assert_eq!(versions(&c).await, (1..=LATEST).collect::<Vec<_>>());

    // A schema name that needs quoting.
    let odd = StateStore::new("Ferry \"state\"");
    odd.ensure(&c).await.expect("ensure a quoted schema name");
    assert_eq!(tables_of(&c, "Ferry \"state\"").await, all_tables());
}

/// A start on a fresh target creates only the core tables (no version
/// recorded: a stop here leaves version 0), a second start finds the same,
/// and `ensure` then creates the rest: the same schema, column for column,
/// as `ensure` alone. Once it is there, a start has nothing to do.
#[tokio::test]
async fn a_start_creates_the_core_first_and_ensure_the_rest() {
    let pg = server();
    let db = pg.create_database("state_start").unwrap();
    let c = connect(&pg.url(&db)).await;
    let state = StateStore::new("ferry");
    let mut core: Vec<String> = CORE.iter().map(|t| t.to_string()).collect();
    core.sort_unstable();
    for attempt in ["first", "again after a stop"] {
        let started = state.ensure_start(&c).await.expect(attempt);
        assert_eq!(started, Started::CoreOnly, "{attempt}");
        assert_eq!(tables_of(&c, "ferry").await, core, "{attempt}");
    }
    // The phase is written before the rest exists (the schema stage does).
    state
        .write_phase(&c, Phase::Schema)
        .await
        .expect("phase in the core");
    // The rest, on another session, as the run does it.
    let other = connect(&pg.url(&db)).await;
    state.ensure(&other).await.expect("the rest");
    assert_eq!(tables_of(&c, "ferry").await, all_tables());
    assert_eq!(versions(&c).await, (1..=LATEST).collect::<Vec<_>>());
    assert_eq!(state.read_phase(&c).await.unwrap(), Some(Phase::Schema));

    let whole = pg.create_database("state_whole").unwrap();
    let w = connect(&pg.url(&whole)).await;
    state.ensure(&w).await.expect("ensure alone");
    assert_eq!(catalog(&c).await, catalog(&w).await);

    let before = catalog(&c).await;
    assert_eq!(
        state.ensure_start(&c).await.expect("start again"),
        Started::Ready
    );
    assert_eq!(catalog(&c).await, before);
    assert_eq!(versions(&c).await, (1..=LATEST).collect::<Vec<_>>());

    // A start racing another process's ensure on a fresh target: both
    // succeed, whichever takes the lock first.
    let race = pg.create_database("state_start_race").unwrap();
    let (a, b) = (connect(&pg.url(&race)).await, connect(&pg.url(&race)).await);
    let (ra, rb) = tokio::join!(state.ensure_start(&a), state.ensure(&b));
    ra.expect("start");
    rb.expect("ensure");
    state.ensure(&a).await.expect("the rest after the race");
    assert_eq!(tables_of(&a, "ferry").await, all_tables());
    assert_eq!(versions(&a).await, (1..=LATEST).collect::<Vec<_>>());
}

/// Version 1 of the migrations is what the old code created, column for
/// column and constraint for constraint.
#[tokio::test]
async fn version_one_is_the_schema_the_old_code_created() {
    let pg = server();
    let old = pg.create_database("state_old").unwrap();
    let v1 = pg.create_database("state_v1").unwrap();
    let old = connect(&pg.url(&old)).await;
    let v1 = connect(&pg.url(&v1)).await;
    old.batch_execute(V1_CORE).await.expect("replay core DDL");
    old.batch_execute(V1_LAZY).await.expect("replay lazy DDL");
    v1.batch_execute(&MIGRATIONS[0].sql("ferry"))
        .await
        .expect("migration 1");

    let (want, got) = (catalog(&old).await, catalog(&v1).await);
    assert!(!want.is_empty());
    assert_eq!(got, want);
    assert_eq!(tables_of(&v1, "ferry").await, V1_TABLES);
}

#[tokio::test]
async fn a_state_from_the_old_code_is_upgraded_with_every_row() {
    let pg = server();
    let db = pg.create_database("state_upgrade").unwrap();
    let c = connect(&pg.url(&db)).await;
    c.batch_execute(V1_CORE).await.expect("replay core");
    c.batch_execute(V1_LAZY).await.expect("replay lazy");
    assert_eq!(versions(&c).await, [1]);
    let before = all_rows(&c).await;

    let state = StateStore::new("ferry");
    state.ensure(&c).await.expect("upgrade");
    assert_eq!(versions(&c).await, (1..=LATEST).collect::<Vec<_>>());
    assert_eq!(tables_of(&c, "ferry").await, all_tables());

    // Every row is still there, except the two lag samples missing a
    // figure (unreadable by the monitor; version 2 makes both NOT NULL).
    // Tables added by later versions are compared by name, not position.
    let after = all_rows(&c).await;
    // Tables added by later versions (empty) sort among the old ones.
    let kept: Vec<_> = after
        .iter()
        .filter(|(t, _)| before.iter().any(|(b, _)| b == t))
        .collect();
    assert_eq!(kept.len(), before.len());
    for ((table, old), (table2, new)) in before.iter().zip(kept) {
        assert_eq!(table, table2);
        if table == "lag_history" {
            assert_eq!(old.len(), 4);
            let kept: Vec<String> = old
                .iter()
                .filter(|r| !r.contains(",,") && !r.ends_with(",)"))
                .cloned()
                .collect();
            assert_eq!(kept.len(), 2, "{old:?}");
            assert_eq!(new, &kept);
        } else {
            assert!(!old.is_empty(), "fixture has rows in {table}");
            assert_eq!(new, &upgraded(table, old), "rows of {table}");
        }
    }

    // The state reads back through the store as the old ferry wrote it.
    assert_eq!(state.read_phase(&c).await.unwrap(), Some(Phase::Load));
    let cp = read_checkpoint::<Lsn>(&c, &state, "main")
        .await
        .unwrap()
        .expect("checkpoint kept");
    assert_eq!(cp.position.to_string(), "0/1A2B3C0");
    let tables = state.tables(&c).await.unwrap();
    assert_eq!(tables.len(), 3);
    assert!(tables.iter().any(|t| t.source_table == "public.nokey"
        && t.state
            == TableState::Failed {
                reason: "no key and no REPLICA IDENTITY FULL".into()
            }));
    assert_eq!(
        state
            .chunks_done(&c, &ferry_core::TableId::new("public", "orders"))
            .await
            .unwrap(),
        [0, 2]
    );

    // What version 2 promises holds.
    for sql in [
        "INSERT INTO ferry.lag_history VALUES (now(), NULL, 1)",
        "INSERT INTO ferry.lag_history VALUES (now(), 1, NULL)",
    ] {
        let err = c.execute(sql, &[]).await.expect_err(sql);
        assert_eq!(sqlstate(&err), Some(&SqlState::NOT_NULL_VIOLATION), "{sql}");
    }
    let err = c
        .execute("INSERT INTO ferry.schema_version (version) VALUES (1)", &[])
        .await
        .expect_err("a version is recorded once");
    assert_eq!(sqlstate(&err), Some(&SqlState::UNIQUE_VIOLATION));

    // A second ensure over the upgraded state is a no-op.
    state.ensure(&c).await.expect("ensure again");
    assert_eq!(all_rows(&c).await, after);
}

/// A version-1 state holds only what the old code had reached: the tables
/// the plan store, overrides and control API created lazily may be absent.
#[tokio::test]
async fn a_partial_state_from_the_old_code_gains_the_lazy_tables() {
    let pg = server();
    let db = pg.create_database("state_partial").unwrap();
    let c = connect(&pg.url(&db)).await;
    c.batch_execute(V1_CORE).await.expect("replay core");
    let before = all_rows(&c).await;
    assert_eq!(
        before.len(),
        7,
        "the old ensure's tables but schema_version"
    );

    StateStore::new("ferry").ensure(&c).await.expect("upgrade");
    assert_eq!(tables_of(&c, "ferry").await, all_tables());
    assert_eq!(versions(&c).await, (1..=LATEST).collect::<Vec<_>>());
    let after = all_rows(&c).await;
    for (table, old) in before.iter().filter(|(t, _)| t != "lag_history") {
        let new = &after.iter().find(|(t, _)| t == table).expect(table).1;
        assert_eq!(new, &upgraded(table, old), "rows of {table}");
    }
    // The lazily created tables exist and take rows the way the binary writes them.
    c.execute(
        "INSERT INTO ferry.control (id, address, pid) VALUES (1, '127.0.0.1:1', 1)",
        &[],
    )
    .await
    .expect("control usable");
    c.execute(
        "INSERT INTO ferry.post_data (seq, kind, name, parallel, sql, fk_table, fk_name)
         VALUES (0, 'INDEX', 'i', true, 'SELECT 1', NULL, NULL)",
        &[],
    )
    .await
    .expect("post_data has the foreign key columns");
}

#[tokio::test]
async fn concurrent_ensures_both_succeed() {
    let pg = server();
    let fresh = pg.create_database("state_race").unwrap();
    let old = pg.create_database("state_race_old").unwrap();
    let setup = connect(&pg.url(&old)).await;
    setup.batch_execute(V1_CORE).await.expect("replay core");

    for db in [&fresh, &old] {
        let a = connect(&pg.url(db)).await;
        let b = connect(&pg.url(db)).await;
        let state = StateStore::new("ferry");
        let (ra, rb) = tokio::join!(state.ensure(&a), state.ensure(&b));
        ra.expect("first ensure");
        rb.expect("second ensure");
        assert_eq!(
            versions(&a).await,
            (1..=LATEST).collect::<Vec<_>>(),
            "each version recorded once in {db}"
        );
        assert_eq!(tables_of(&a, "ferry").await, all_tables());
    }
}

#[tokio::test]
async fn a_state_newer_than_this_ferry_is_refused_by_name() {
    let pg = server();
    let db = pg.create_database("state_newer").unwrap();
    let c = connect(&pg.url(&db)).await;
    let state = StateStore::new("ferry");
    state.ensure(&c).await.unwrap();
    let newer = LATEST + 1;
    c.execute(
        "INSERT INTO ferry.schema_version (version) VALUES ($1)",
        &[&newer],
    )
    .await
    .unwrap();

    let err = state
        .ensure(&c)
        .await
        .expect_err("a newer state is refused");
    assert_eq!(err.class(), ErrorClass::Operator);
    let text = err.to_string();
    assert!(text.contains("state schema ferry"), "{text}");
    assert!(text.contains(&format!("version {newer}")), "{text}");
    assert!(text.contains(&format!("version {LATEST}")), "{text}");
    assert!(text.contains("newer ferry"), "{text}");
    // Refused without a change, and the session is usable afterwards.
    let mut want: Vec<i32> = (1..=LATEST).collect();
    want.push(newer);
    assert_eq!(versions(&c).await, want);
}
