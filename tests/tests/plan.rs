//! `ferry plan` through the CLI against real servers: the passing case for
//! every source kind, and each failing prerequisite with its fix.

use ferry_e2e::{ferry, run, sqlite_copy};
use ferry_testkit::{MariaDbOptions, MariaDbServer, PgOptions, PgServer};

fn target() -> (PgServer, String) {
    let t = PgServer::start(PgOptions::new().wal_level("replica")).expect("target server");
    let db = t.create_database("target").expect("target db");
    let url = t.url(&db);
    (t, url)
}

#[test]
fn postgres_source_ready() {
    let source = PgServer::start(PgOptions::new()).unwrap();
    let db = source.create_database("chinook").unwrap();
    source.load_chinook(&db).unwrap();
    // Row estimates come from the statistics (reltuples), as on any analysed database.
    source.psql(&db, "ANALYZE").unwrap();
    let (t, target_url) = target();
    let ran = run(ferry(&source.url(&db), &target_url).unwrap().arg("plan")).unwrap();
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    // The checks only read: on a target ferry never ran on (no state
    // schema) they leave no ERROR in the servers' logs, where a DBA
    // watching them would take it for a failure.
    for (server, log) in [
        ("target", t.log_contents()),
        ("source", source.log_contents()),
    ] {
        let errors: Vec<_> = log.lines().filter(|l| l.contains("ERROR:")).collect();
        assert!(
            errors.is_empty(),
            "ferry plan left errors in the {server} log: {errors:#?}"
        );
    }
    assert!(
        ran.stdout.contains("plan: runnable (11 tables)"),
        "{}",
        ran.all()
    );
    assert!(ran.stdout.contains("public.invoice_line"), "{}", ran.all());
    assert!(
        ran.stdout.contains("invoice_line_id"),
        "key column shown: {}",
        ran.all()
    );

    let json = run(ferry(&source.url(&db), &target_url)
        .unwrap()
        .args(["plan", "--json"]))
    .unwrap();
    assert_eq!(json.code, Some(0), "{}", json.all());
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["source_flavor"], "postgres");
    assert_eq!(v["tables"].as_array().unwrap().len(), 11);
    let track = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source"] == "public.track")
        .unwrap();
    assert_eq!(track["row_estimate"], 3503, "{track}");
    assert!(
        !json.stdout.contains(ferry_testkit::ADMIN_PASSWORD),
        "password leaked into plan output"
    );
}

#[test]
fn postgres_source_with_wal_level_replica_fails_with_fix() {
    let source = PgServer::start(PgOptions::new().wal_level("replica")).unwrap();
    let db = source.create_database("app").unwrap();
    source
        .psql(&db, "CREATE TABLE t (id int primary key)")
        .unwrap();
    let (_t, target_url) = target();
    let ran = run(ferry(&source.url(&db), &target_url).unwrap().arg("plan")).unwrap();
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(
        ran.stdout.contains("wal_level=logical"),
        "fix missing: {}",
        ran.all()
    );
    assert!(ran.stdout.contains("NOT runnable"), "{}", ran.all());
}

#[test]
fn postgres_source_user_without_replication_and_keyless_table_fail() {
    let source = PgServer::start(PgOptions::new()).unwrap();
    let db = source.create_database("app").unwrap();
    source
        .psql(
            &db,
            "CREATE TABLE keyed (id int primary key); CREATE TABLE loose (a int, b text);",
        )
        .unwrap();
    source
        .create_role("app_user", "app-pw-123", "LOGIN")
        .unwrap();
    source
        .psql(
            &db,
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_user",
        )
        .unwrap();
    let url = format!(
        "postgres://app_user:app-pw-123@127.0.0.1:{}/{db}",
        source.port()
    );
    let (_t, target_url) = target();
    let ran = run(ferry(&url, &target_url).unwrap().arg("plan")).unwrap();
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(
        ran.stdout.contains("ALTER ROLE \"app_user\" REPLICATION"),
        "{}",
        ran.all()
    );
    assert!(
        ran.stdout.contains("REPLICA IDENTITY FULL"),
        "{}",
        ran.all()
    );
    assert!(
        !ran.stdout.contains("app-pw-123") && !ran.stderr.contains("app-pw-123"),
        "password leaked"
    );
}

#[test]
fn unreachable_target_fails_with_exit_2() {
    let source = PgServer::start(PgOptions::new()).unwrap();
    let db = source.create_database("app").unwrap();
    // A port nothing listens on: bind, note the port, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target_url = format!("postgres://u:hidden-pw@127.0.0.1:{port}/x");
    let ran = run(ferry(&source.url(&db), &target_url).unwrap().arg("plan")).unwrap();
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(ran.stdout.contains("FAIL  target"), "{}", ran.all());
    assert!(
        !ran.stdout.contains("hidden-pw") && !ran.stderr.contains("hidden-pw"),
        "password leaked: {}",
        ran.all()
    );
}

#[test]
fn invalid_config_exits_1_with_every_problem() {
    let mut cmd = ferry("oracle://x:pw@h/db", "mysql://u:p@h/db").unwrap();
    cmd.env("FERRY_APPLY_BATCH_ROWS", "0");
    let ran = run(cmd.arg("plan")).unwrap();
    assert_eq!(ran.code, Some(1), "{}", ran.all());
    for needle in [
        "unsupported scheme 'oracle'",
        "must be a postgres:// URL",
        "batch_rows",
    ] {
        assert!(
            ran.stderr.contains(needle),
            "missing {needle}: {}",
            ran.all()
        );
    }
}

#[test]
fn mariadb_source_ready() {
    let maria = MariaDbServer::start(MariaDbOptions::new()).unwrap();
    let db = maria.create_database("chinook").unwrap();
    maria.load_chinook(&db).unwrap();
    let (_t, target_url) = target();
    let ran = run(ferry(&maria.url(&db), &target_url).unwrap().arg("plan")).unwrap();
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stdout.contains("plan: runnable (11 tables)"),
        "{}",
        ran.all()
    );
    assert!(ran.stdout.contains("mariadb"), "{}", ran.all());
}

#[test]
fn mariadb_statement_binlog_fails_with_fix() {
    let maria =
        MariaDbServer::start(MariaDbOptions::new().setting("binlog_format", "STATEMENT")).unwrap();
    let db = maria.create_database("app").unwrap();
    maria
        .sql(&db, "CREATE TABLE t (id INT PRIMARY KEY)")
        .unwrap();
    let (_t, target_url) = target();
    let ran = run(ferry(&maria.url(&db), &target_url).unwrap().arg("plan")).unwrap();
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(ran.stdout.contains("binlog_format"), "{}", ran.all());
    assert!(ran.stdout.contains("ROW"), "fix names ROW: {}", ran.all());
}

#[test]
fn mariadb_user_without_replication_fails_with_fix() {
    let maria = MariaDbServer::start(MariaDbOptions::new()).unwrap();
    let db = maria.create_database("app").unwrap();
    maria
        .sql(&db, "CREATE TABLE t (id INT PRIMARY KEY)")
        .unwrap();
    maria
        .create_user("reader", "reader-pw-9", "SELECT")
        .unwrap();
    let url = format!("mysql://reader:reader-pw-9@127.0.0.1:{}/{db}", maria.port());
    let (_t, target_url) = target();
    let ran = run(ferry(&url, &target_url).unwrap().arg("plan")).unwrap();
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(ran.stdout.contains("REPLICATION SLAVE"), "{}", ran.all());
    assert!(!ran.stdout.contains("reader-pw-9"), "password leaked");
}

#[test]
fn sqlite_source_ready_and_missing_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (_, url) = sqlite_copy("chinook/Chinook_Sqlite.sqlite", dir.path()).unwrap();
    let (_t, target_url) = target();
    let ran = run(ferry(&url, &target_url).unwrap().arg("plan")).unwrap();
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stdout.contains("plan: runnable (11 tables)"),
        "{}",
        ran.all()
    );

    let missing = format!("sqlite://{}/nope.db", dir.path().display());
    let ran = run(ferry(&missing, &target_url).unwrap().arg("plan")).unwrap();
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(ran.stdout.contains("nope.db"), "path named: {}", ran.all());
}
