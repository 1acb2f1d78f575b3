//! Real MariaDB servers started by the harness.

use ferry_testkit::{MariaDbOptions, MariaDbServer};

#[test]
fn binlog_defaults() {
    let my = MariaDbServer::start(MariaDbOptions::new()).expect("start");
    let out = my.sql("", "SELECT @@binlog_format, @@binlog_row_image, @@log_bin, @@server_id, @@gtid_strict_mode").unwrap();
    let f: Vec<&str> = out.trim().split('\t').collect();
    assert_eq!(f[..3], ["ROW", "FULL", "1"], "{out}");
    assert_ne!(f[3], "0");
    assert_eq!(f[3], my.server_id().to_string());
    assert_eq!(f[4], "1");
    assert_eq!(
        my.sql("", "SELECT CURRENT_USER()").unwrap().trim(),
        "ferry_admin@%"
    );
    assert!(
        my.url("x")
            .starts_with("mysql://ferry_admin:ferry-secret-pw@127.0.0.1:")
    );
    // The admin user was created without writing to the binlog.
    assert!(
        !my.sql("", "SHOW BINLOG EVENTS")
            .unwrap()
            .contains("ferry_admin")
    );
}

#[test]
fn statement_override_and_no_log_bin() {
    let my =
        MariaDbServer::start(MariaDbOptions::new().setting("binlog_format", "STATEMENT")).unwrap();
    assert_eq!(
        my.sql("", "SELECT @@binlog_format").unwrap().trim(),
        "STATEMENT"
    );
    let my = MariaDbServer::start(MariaDbOptions::new().no_log_bin()).unwrap();
    assert_eq!(my.sql("", "SELECT @@log_bin").unwrap().trim(), "0");
}

#[test]
fn databases_users_and_chinook() {
    let my = MariaDbServer::start(MariaDbOptions::new()).unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| my.create_database("chinook").unwrap());
        let b = s.spawn(|| my.create_database("chinook").unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a, b);
    my.load_chinook(&a).unwrap();
    assert_eq!(
        my.sql(&a, "SELECT COUNT(*) FROM Track").unwrap().trim(),
        "3503"
    );
    assert_eq!(
        my.sql(
            &b,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()"
        )
        .unwrap()
        .trim(),
        "0"
    );

    my.create_user(
        "repl",
        "repl-pw",
        "SELECT, REPLICATION SLAVE, REPLICATION CLIENT",
    )
    .unwrap();
    let out = my
        .client_command("")
        .args(["-u", "repl", "-e", "SELECT CURRENT_USER()"])
        .env("MYSQL_PWD", "repl-pw")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = my
        .client_command("")
        .args(["-u", "repl", "-e", "SELECT 1"])
        .env("MYSQL_PWD", "bad")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn kill_and_start_again() {
    let mut my = MariaDbServer::start(MariaDbOptions::new()).unwrap();
    let db = my.create_database("crash").unwrap();
    my.sql(
        &db,
        "CREATE TABLE t (x INT PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3)",
    )
    .unwrap();
    let port = my.port();
    my.kill();
    assert!(my.sql(&db, "SELECT 1").is_err());
    my.start_again().unwrap();
    assert_eq!(my.port(), port);
    assert_eq!(my.sql(&db, "SELECT SUM(x) FROM t").unwrap().trim(), "6");
    my.restart().unwrap();
    assert_eq!(my.sql(&db, "SELECT COUNT(*) FROM t").unwrap().trim(), "3");
}

#[test]
fn drop_removes_dir_and_stops_server() {
    let my = MariaDbServer::start(MariaDbOptions::new()).unwrap();
    let dir = my.dir().to_path_buf();
    let pid = my.pid().unwrap();
    assert!(dir.join("data/mysql").is_dir());
    drop(my);
    assert!(!dir.exists());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn bad_setting_fails_with_log_tail() {
    let err =
        MariaDbServer::start(MariaDbOptions::new().setting("binlog_format", "BOGUS")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("MariaDB failed to start"), "{msg}");
    assert!(msg.contains("binlog"), "{msg}");
}
