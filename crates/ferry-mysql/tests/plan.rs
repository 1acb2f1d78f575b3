//! `ferry plan` against real MariaDB servers started by ferry-testkit.

use ferry_core::config::Config;
use ferry_core::plan::{CheckStatus, SourcePlan};
use ferry_testkit::{MariaDbOptions, MariaDbServer};

fn config(source_url: &str) -> Config {
    let text = format!(
        "[source]\nurl = \"{source_url}\"\n[target]\nurl = \"postgres://ferry@127.0.0.1:1/target\"\n"
    );
    Config::from_parts(&text, "test", Vec::new()).expect("test config parses")
}

fn run_plan(url: &str) -> Result<SourcePlan, ferry_core::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(ferry_mysql::plan(&config(url)))
}

fn check<'a>(plan: &'a SourcePlan, name: &str) -> &'a ferry_core::plan::Check {
    plan.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {:#?}", plan.checks))
}

fn server_with_table(opts: MariaDbOptions) -> (MariaDbServer, String) {
    let server = MariaDbServer::start(opts).expect("mariadb starts");
    let db = server.create_database("plan").expect("create database");
    server
        .sql(&db, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))")
        .expect("create table");
    (server, db)
}

#[test]
fn chinook_on_default_server_passes_every_check() {
    let server = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = server.create_database("chinook").expect("create database");
    server.load_chinook(&db).expect("load chinook");
    server.sql(&db, "ANALYZE TABLE Track").expect("analyze");
    let plan = run_plan(&server.url(&db)).expect("plan");

    assert_eq!(plan.flavor, "mariadb");
    assert!(plan.version.starts_with("10."), "{}", plan.version);
    for c in &plan.checks {
        assert_eq!(c.status, CheckStatus::Pass, "{c:?}");
        assert_eq!(c.side, "source");
    }
    for name in [
        "log_bin",
        "binlog_format",
        "binlog_row_image",
        "server_id",
        "binlog retention",
        "gtid",
        "replication privileges",
        "select privilege",
        "server version",
    ] {
        check(&plan, name);
    }
    assert_eq!(
        plan.tables.len(),
        11,
        "{:#?}",
        plan.tables.iter().map(|t| &t.source).collect::<Vec<_>>()
    );
    for t in &plan.tables {
        assert!(!t.key.is_empty(), "{} has a key", t.source);
        assert!(t.row_estimate.is_some(), "{} has a row estimate", t.source);
        assert_eq!(t.replica_identity, "full");
        assert!(t.source.starts_with(&db), "{}", t.source);
    }
    let track = plan
        .tables
        .iter()
        .find(|t| t.source.ends_with(".\"Track\""))
        .expect("Track");
    assert!(
        track.row_estimate.unwrap() > 1000,
        "{:?}",
        track.row_estimate
    );
    let cols: Vec<_> = track
        .columns
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.source_type.as_str(),
                c.pg_type.as_str(),
                c.nullable,
            )
        })
        .collect();
    assert_eq!(cols[0], ("TrackId", "int(11)", "integer", false));
    assert!(
        cols.contains(&("Name", "varchar(200)", "varchar(200)", false)),
        "{cols:?}"
    );
    assert!(
        cols.contains(&("UnitPrice", "decimal(10,2)", "numeric(10,2)", false)),
        "{cols:?}"
    );
    let invoice = plan
        .tables
        .iter()
        .find(|t| t.source.ends_with(".\"Invoice\""))
        .expect("Invoice");
    assert!(
        invoice
            .columns
            .iter()
            .any(|c| c.name == "InvoiceDate" && c.pg_type == "timestamp")
    );
    let line = plan
        .tables
        .iter()
        .find(|t| t.source.ends_with(".\"PlaylistTrack\""))
        .expect("PlaylistTrack");
    assert_eq!(line.key, ["PlaylistId", "TrackId"]);
}

#[test]
fn statement_binlog_format_fails_with_fix() {
    let (server, db) =
        server_with_table(MariaDbOptions::default().setting("binlog_format", "STATEMENT"));
    let plan = run_plan(&server.url(&db)).expect("plan");
    let c = check(&plan, "binlog_format");
    assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
    assert_eq!(c.detail, "binlog_format = STATEMENT");
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .contains("SET GLOBAL binlog_format=ROW"),
        "{c:?}"
    );
    assert_eq!(check(&plan, "log_bin").status, CheckStatus::Pass);
}

#[test]
fn missing_log_bin_fails_with_fix() {
    let (server, db) = server_with_table(MariaDbOptions::default().no_log_bin());
    let plan = run_plan(&server.url(&db)).expect("plan");
    let c = check(&plan, "log_bin");
    assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("log_bin"), "{c:?}");
}

#[test]
fn user_without_replication_privileges_fails_and_bad_login_is_redacted() {
    let (server, db) = server_with_table(MariaDbOptions::default());
    server
        .create_user("ferry_norepl", "norepl-pw", "SELECT")
        .expect("create user");
    let url = format!(
        "mysql://ferry_norepl:norepl-pw@127.0.0.1:{}/{db}",
        server.port()
    );
    let plan = run_plan(&url).expect("plan");
    let c = check(&plan, "replication privileges");
    assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
    assert_eq!(
        c.fix.as_deref(),
        Some("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'ferry_norepl'@'%'")
    );
    assert_eq!(check(&plan, "select privilege").status, CheckStatus::Pass);
    assert_eq!(plan.tables.len(), 1);

    let bad = format!(
        "mysql://ferry_norepl:wrong-secret@127.0.0.1:{}/{db}",
        server.port()
    );
    let err = run_plan(&bad).expect_err("wrong password");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("access denied"), "{err}");
    assert!(!err.to_string().contains("wrong-secret"), "{err}");
    assert!(err.fix().is_some());

    let missing_db = format!(
        "mysql://ferry_norepl:norepl-pw@127.0.0.1:{}/no_such_db",
        server.port()
    );
    let err = run_plan(&missing_db).expect_err("unknown database");
    assert!(!err.is_transient(), "{err}");
}

#[test]
fn refused_connection_is_transient() {
    // A port nothing listens on: bind one, learn its number, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = run_plan(&format!("mysql://u:topsecret@127.0.0.1:{port}/db")).expect_err("refused");
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains("topsecret"), "{err}");
}
