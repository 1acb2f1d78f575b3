//! Real PostgreSQL servers started by the harness.

use ferry_testkit::{ADMIN_PASSWORD, PgAuth, PgOptions, PgServer};

#[test]
fn logical_server_starts_and_databases_are_isolated() {
    let pg = PgServer::start(PgOptions::new()).expect("start");
    assert_eq!(
        pg.psql("postgres", "SHOW wal_level").unwrap().trim(),
        "logical"
    );
    assert_eq!(
        pg.psql("postgres", "SHOW max_replication_slots")
            .unwrap()
            .trim(),
        "20"
    );
    assert_eq!(pg.psql("postgres", "SHOW fsync").unwrap().trim(), "off");
    assert_eq!(
        pg.psql("postgres", "SELECT current_user").unwrap().trim(),
        "ferry_admin"
    );
    assert!(
        pg.url("x")
            .starts_with("postgres://ferry_admin:ferry-secret-pw@127.0.0.1:")
    );

    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| pg.create_database("par test").unwrap());
        let b = s.spawn(|| pg.create_database("par test").unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a, b);
    pg.psql(&a, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
        .unwrap();
    let err = pg.psql(&b, "SELECT * FROM t").unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn extra_settings_are_applied() {
    let pg = PgServer::start(
        PgOptions::new()
            .setting("logical_decoding_work_mem", "64kB")
            .setting("wal_sender_timeout", "5s")
            .max_wal_senders(7),
    )
    .unwrap();
    assert_eq!(
        pg.psql("postgres", "SHOW logical_decoding_work_mem")
            .unwrap()
            .trim(),
        "64kB"
    );
    assert_eq!(
        pg.psql("postgres", "SHOW wal_sender_timeout")
            .unwrap()
            .trim(),
        "5s"
    );
    assert_eq!(
        pg.psql("postgres", "SHOW max_wal_senders").unwrap().trim(),
        "7"
    );
}

#[test]
fn kill_and_start_again_keeps_committed_data() {
    let mut pg = PgServer::start(PgOptions::new()).unwrap();
    let db = pg.create_database("crash").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 1000)",
    )
    .unwrap();
    let port = pg.port();
    let old_pid = pg.pid().unwrap();
    pg.kill();
    assert!(pg.psql(&db, "SELECT 1").is_err(), "server should be down");
    assert!(!std::path::Path::new(&format!("/proc/{old_pid}")).exists());
    pg.start_again().unwrap();
    assert_eq!(pg.port(), port);
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM t").unwrap().trim(),
        "1000"
    );
    assert!(
        pg.log_contents()
            .contains("database system was interrupted")
    );

    pg.restart().unwrap();
    assert_eq!(
        pg.psql(&db, "SELECT sum(x) FROM t").unwrap().trim(),
        "500500"
    );
}

#[test]
fn replica_wal_level() {
    let pg = PgServer::start(PgOptions::new().wal_level("replica")).unwrap();
    assert_eq!(
        pg.psql("postgres", "SHOW wal_level").unwrap().trim(),
        "replica"
    );
}

#[test]
fn scram_rejects_wrong_password_and_accepts_right_one() {
    let pg = PgServer::start(PgOptions::new().auth(PgAuth::Scram)).unwrap();
    let run = |pw: &str| {
        let out = pg
            .psql_command("postgres")
            .env("PGPASSWORD", pw)
            .args(["-c", "SELECT 42"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run("wrong-password");
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");
    let (ok, out, err) = run(ADMIN_PASSWORD);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "42");

    pg.create_role("app", "app-pw", "LOGIN REPLICATION")
        .unwrap();
    let conn = format!(
        "host=127.0.0.1 port={} user=app password=app-pw dbname=postgres",
        pg.port()
    );
    assert_eq!(
        pg.psql_conninfo(
            &conn,
            "SELECT rolreplication FROM pg_roles WHERE rolname = current_user"
        )
        .unwrap()
        .trim(),
        "t"
    );
    let bad = format!(
        "host=127.0.0.1 port={} user=app password=nope dbname=postgres",
        pg.port()
    );
    assert!(pg.psql_conninfo(&bad, "SELECT 1").is_err());
    // Replication connections are subject to the same method.
    let repl = format!(
        "host=127.0.0.1 port={} user=app password=app-pw dbname=postgres replication=database",
        pg.port()
    );
    assert!(
        pg.psql_conninfo(&repl, "IDENTIFY_SYSTEM")
            .unwrap()
            .contains('|')
    );
}

#[test]
fn tls_verify_full() {
    let pg = PgServer::start(PgOptions::new().tls(true).auth(PgAuth::Scram)).unwrap();
    let ca = pg.ca_cert_path().unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let conn = format!(
            "host={host} port={} user=ferry_admin password={ADMIN_PASSWORD} dbname=postgres sslmode=verify-full sslrootcert={}",
            pg.port(),
            ca.display()
        );
        assert_eq!(
            pg.psql_conninfo(
                &conn,
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            .unwrap()
            .trim(),
            "t"
        );
    }
}

#[test]
fn drop_removes_dir_and_stops_server() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let dir = pg.dir().to_path_buf();
    let pid = pg.pid().unwrap();
    assert!(dir.join("data/PG_VERSION").is_file());
    drop(pg);
    assert!(!dir.exists());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn drop_cleans_up_after_panic() {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let pg = PgServer::start(PgOptions::new()).unwrap();
        tx.send((pg.dir().to_path_buf(), pg.pid().unwrap()))
            .unwrap();
        panic!("test panics while holding a server");
    })
    .join();
    assert!(r.is_err());
    let (dir, pid) = rx.recv().unwrap();
    assert!(!dir.exists());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn chinook_and_pagila_load() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let db = pg.create_database("chinook").unwrap();
    pg.load_chinook(&db).unwrap();
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM track").unwrap().trim(),
        "3503"
    );
    let db = pg.create_database("pagila").unwrap();
    pg.load_pagila(&db).unwrap();
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM rental").unwrap().trim(),
        "16044"
    );
    assert_eq!(
        pg.psql(&db, "SELECT sum(amount) FROM payment")
            .unwrap()
            .trim(),
        "67416.51"
    );
}

#[test]
fn bad_setting_fails_with_log_tail() {
    let err = PgServer::start(PgOptions::new().setting("wal_level", "bogus")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("PostgreSQL failed to start"), "{msg}");
    assert!(msg.contains("wal_level"), "{msg}");
}

/// Every major of the version matrix starts (from Debian or the npm builds
/// `make setup` installs), reports its version, and decodes with pgoutput.
#[test]
fn every_matrix_major_starts_and_decodes_with_pgoutput() {
    let servers: Vec<PgServer> = std::thread::scope(|s| {
        let handles: Vec<_> = ferry_testkit::MATRIX_MAJORS
            .iter()
            .map(|&m| s.spawn(move || PgServer::start(PgOptions::new().version(m))))
            .collect();
        handles
            .into_iter()
            .zip(ferry_testkit::MATRIX_MAJORS)
            .map(|(h, m)| {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("PostgreSQL {m}: {e}"))
            })
            .collect()
    });
    for (pg, m) in servers.iter().zip(ferry_testkit::MATRIX_MAJORS) {
        assert_eq!(pg.major(), m);
        let num: u32 = pg
            .psql("postgres", "SHOW server_version_num")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(num / 10_000, m, "server_version_num {num}");
        let out = pg
            .psql(
                "postgres",
                "CREATE TABLE t (id int PRIMARY KEY, v text);\n\
                 CREATE PUBLICATION p FOR TABLE t;\n\
                 SELECT 'x' FROM pg_create_logical_replication_slot('s', 'pgoutput');\n\
                 INSERT INTO t VALUES (1, 'one');\n\
                 SELECT count(*) FROM pg_logical_slot_get_binary_changes('s', NULL, NULL, \
                 'proto_version', '1', 'publication_names', 'p');",
            )
            .unwrap();
        // BEGIN, RELATION, INSERT, COMMIT.
        assert_eq!(out.lines().last(), Some("4"), "PostgreSQL {m}: {out}");
    }
}

#[test]
fn a_missing_major_names_make_setup() {
    let err = ferry_testkit::pg_server_bin_dir(9).unwrap_err().to_string();
    assert!(
        err.contains("PostgreSQL 9 server binaries not found"),
        "{err}"
    );
    assert!(err.contains("run `make setup`"), "{err}");
}

/// `make setup` provides a pg_dump for the newest source major (Debian's
/// is older), and the lookup prefers Debian's where it is new enough.
#[test]
fn a_pg_dump_for_every_source_major() {
    for m in ferry_testkit::MATRIX_MAJORS {
        let dump = ferry_testkit::pg_dump_for(m).unwrap_or_else(|e| panic!("{m}: {e}"));
        let major = ferry_testkit::binary_major(&dump).unwrap();
        assert!(major >= m, "{} is {major}, below {m}", dump.display());
    }
    let err = ferry_testkit::pg_dump_for(99).unwrap_err().to_string();
    assert!(err.contains("no pg_dump of version 99 or later"), "{err}");
}
