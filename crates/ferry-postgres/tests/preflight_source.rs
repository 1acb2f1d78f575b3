//! Source prerequisite checks against real servers.

use ferry_core::config::Config;
use ferry_core::plan::{CheckStatus, SourcePlan};
use ferry_postgres::preflight::{SlotOwnership, check_source, check_source_with};
use ferry_testkit::{PgOptions, PgServer};

fn config(source_url: &str, extra: &str) -> Config {
    let text = format!(
        "[source]\nurl = \"{source_url}\"\nsslmode = \"disable\"\n[target]\nurl = \"postgres://t@127.0.0.1:1/t\"\nsslmode = \"disable\"\n{extra}"
    );
    Config::from_parts(&text, "test", Vec::<(String, String)>::new()).unwrap()
}

fn check<'a>(plan: &'a SourcePlan, name: &str) -> &'a ferry_core::plan::Check {
    plan.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {:#?}", plan.checks))
}

fn failures(plan: &SourcePlan) -> Vec<String> {
    plan.checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| c.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_setup_passes_and_lists_tables() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let db = pg.create_database("pre_ok").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE a (id bigint PRIMARY KEY, v numeric(10,2), t text[] NOT NULL);
         CREATE TABLE b (x int NOT NULL, y int); ALTER TABLE b REPLICA IDENTITY FULL;
         INSERT INTO a SELECT g, g, '{}' FROM generate_series(1, 50) g; ANALYZE a",
    )
    .unwrap();
    let plan = check_source(&config(
        &pg.url(&db),
        "[tables.rename]\n\"public.a\" = \"archive.a2\"\n",
    ))
    .await;
    assert_eq!(failures(&plan), Vec::<String>::new(), "{:#?}", plan.checks);
    assert_eq!(plan.flavor, "postgres");
    assert!(
        plan.version.starts_with(char::is_numeric),
        "{}",
        plan.version
    );
    assert_eq!(
        check(&plan, "replica identity public.b").status,
        CheckStatus::Warn
    );
    assert!(
        plan.checks
            .iter()
            .all(|c| !c.detail.contains("ferry-secret-pw"))
    );
    let a = plan.tables.iter().find(|t| t.source == "public.a").unwrap();
    assert_eq!(a.target, "archive.a2");
    assert_eq!(a.row_estimate, Some(50));
    assert_eq!(a.key, ["id"]);
    assert_eq!(a.replica_identity, "default");
    let types: Vec<(&str, &str, bool)> = a
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.pg_type.as_str(), c.nullable))
        .collect();
    assert_eq!(
        types,
        [
            ("id", "bigint", false),
            ("v", "numeric(10,2)", true),
            ("t", "text[]", false)
        ]
    );
    assert_eq!(a.columns[1].source_type, "numeric(10,2)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_wal_level_fails_with_the_fix() {
    let pg = PgServer::start(PgOptions::new().wal_level("replica")).expect("start postgres");
    let db = pg.create_database("pre_wal").unwrap();
    pg.psql(&db, "CREATE TABLE a (id int PRIMARY KEY)").unwrap();
    let plan = check_source(&config(&pg.url(&db), "")).await;
    let c = check(&plan, "wal_level");
    assert_eq!(c.status, CheckStatus::Fail);
    assert_eq!(c.detail, "source wal_level is 'replica'");
    assert_eq!(
        c.fix.as_deref(),
        Some(
            "set wal_level=logical and restart PostgreSQL (RDS/Aurora: rds.logical_replication=1 in the parameter group, then reboot)"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_and_identity_fail() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let db = pg.create_database("pre_priv").unwrap();
    pg.create_role("plain_user", "pw", "LOGIN").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE ok_t (id int PRIMARY KEY); CREATE TABLE nopk (a int, b text);
         CREATE TABLE hidden (id int PRIMARY KEY);
         GRANT SELECT ON ok_t, nopk TO plain_user",
    )
    .unwrap();
    let url = format!("postgres://plain_user:pw@127.0.0.1:{}/{db}", pg.port());
    let plan = check_source(&config(&url, "")).await;
    let role = check(&plan, "replication privilege");
    assert_eq!(role.status, CheckStatus::Fail, "{role:?}");
    assert!(
        role.fix
            .as_deref()
            .unwrap()
            .contains("ALTER ROLE \"plain_user\" REPLICATION"),
        "{role:?}"
    );
    let select = check(&plan, "select privilege");
    assert_eq!(select.status, CheckStatus::Fail);
    assert!(
        select.detail.contains("hidden") && !select.detail.contains("ok_t"),
        "{select:?}"
    );
    let ident = check(&plan, "replica identity public.nopk");
    assert_eq!(ident.status, CheckStatus::Fail);
    assert!(
        ident
            .fix
            .as_deref()
            .unwrap()
            .contains("ALTER TABLE \"public\".\"nopk\" REPLICA IDENTITY FULL"),
        "{ident:?}"
    );
    assert!(
        plan.checks
            .iter()
            .all(|c| c.name != "replica identity public.ok_t")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_conflicts_and_connection_failures() {
    let mut pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let db = pg.create_database("pre_slot").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE a (id int PRIMARY KEY);
         SELECT pg_create_logical_replication_slot('ferry_test_slot', 'pgoutput')",
    )
    .unwrap();
    let cfg = config(&pg.url(&db), "[postgres]\nslot = \"ferry_test_slot\"\n");
    let plan = check_source(&cfg).await;
    let c = check(&plan, "slot name");
    assert_eq!(c.status, CheckStatus::Fail);
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .contains("pg_drop_replication_slot('ferry_test_slot')")
    );
    assert!(!c.transient, "not ferry's: the operator's to fix: {c:?}");
    let plan = check_source_with(&cfg, SlotOwnership::Resuming).await;
    assert_eq!(check(&plan, "slot name").status, CheckStatus::Pass);
    let gone = config(&pg.url(&db), "[postgres]\nslot = \"other\"\n");
    let plan = check_source_with(&gone, SlotOwnership::Resuming).await;
    assert_eq!(check(&plan, "slot name").status, CheckStatus::Fail);
    // The target unreachable (restarting, say): whether the slot is this
    // migration's is not known, so its check fails as one that may pass by
    // itself (a resumed run waits for the target instead of refusing);
    // a free name passes as on a fresh run.
    let plan = check_source_with(&cfg, SlotOwnership::Unknown).await;
    let c = check(&plan, "slot name");
    assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
    assert!(c.transient, "{c:?}");
    assert!(
        c.detail.contains("once the target's state can be read"),
        "{c:?}"
    );
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .contains("make the target reachable"),
        "{c:?}"
    );
    let plan = check_source_with(&gone, SlotOwnership::Unknown).await;
    assert_eq!(check(&plan, "slot name").status, CheckStatus::Pass);

    let bad = format!(
        "postgres://ferry_admin:wrong-pw-123@127.0.0.1:{}/no_such_db",
        pg.port()
    );
    let plan = check_source(&config(&bad, "")).await;
    let c = check(&plan, "connect");
    assert_eq!(c.status, CheckStatus::Fail);
    assert!(
        c.detail.contains("no_such_db") && !c.detail.contains("wrong-pw-123"),
        "{c:?}"
    );
    assert!(c.fix.as_deref().unwrap().contains("source.url"), "{c:?}");
    assert!(
        !c.transient,
        "a wrong database is the operator's to fix: {c:?}"
    );

    // A server that is down (restarting) fails the connect check as
    // something that may pass by itself: a run that got past its checks
    // before retries on it.
    let url = pg.url(&db);
    pg.stop().unwrap();
    let plan = check_source(&config(&url, "")).await;
    let c = check(&plan, "connect");
    assert_eq!(c.status, CheckStatus::Fail);
    assert!(c.transient, "a server that is down: {c:?}");
}
