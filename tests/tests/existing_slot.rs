//! A replication slot created beforehand (`postgres.existing_slot`), as a
//! DBA provides it to a migration role that is not a superuser: `ferry
//! plan` checks it (missing, wrong plugin, physical, another database, in
//! use) and names the fix; `ferry run` takes its snapshot from a temporary
//! slot, advances the DBA's slot to it, streams from it — writes made
//! between the slot's creation and `ferry run` arrive exactly once — and
//! neither cutover nor cleanup drops it (nor the DBA's publication).

use std::time::Duration;

use ferry_core::Lsn;
use ferry_core::config::{Endpoint, SslMode};
use ferry_e2e::migration::{LONG, Migration, role_url, target_options};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_e2e::{Ran, run};
use ferry_postgres::replication::{PgOutputOptions, ReplicationConnection};
use ferry_testkit::{PgOptions, PgServer};

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];
const ACCOUNTS: u32 = 100_000;
const MIG: &str = "migrator";
const MIG_PW: &str = "migrator-pw";
const APP: &str = "app";
const APP_PW: &str = "app-pw";
const SLOT: &str = "dba_slot";
const PUBLICATION: &str = "app_pub";

/// The line of check `name` in `ferry plan`'s output, and the fix line
/// after it (empty when the check passed).
fn check_lines<'a>(plan: &'a Ran, name: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = plan.stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains(&format!("source  {name}")))
        .unwrap_or_else(|| panic!("no {name} check:\n{}", plan.stdout));
    let fix = lines
        .get(i + 1)
        .filter(|l| l.trim_start().contains("fix: "))
        .copied()
        .unwrap_or("");
    (lines[i], fix)
}

/// A source whose tables belong to the superuser (the DBA); the migration
/// role `migrator` has REPLICATION, SELECT, owns the database and is a
/// member of `pg_signal_backend` (what `--fence` needs); the application
/// writes as role `app`.
fn source() -> (PgServer, String) {
    let source = PgServer::start(PgOptions::new()).expect("source");
    let sdb = source.create_database("src").unwrap();
    source.psql(&sdb, BENCH_SCHEMA).unwrap();
    source
        .psql(&sdb, &pgsync::bench_data(ACCOUNTS, 300))
        .unwrap();
    source
        .create_role(MIG, MIG_PW, "LOGIN REPLICATION NOSUPERUSER")
        .unwrap();
    source
        .create_role(APP, APP_PW, "LOGIN NOSUPERUSER")
        .unwrap();
    source
        .psql(
            "postgres",
            &format!("GRANT pg_signal_backend TO {MIG}; ALTER DATABASE {sdb} OWNER TO {MIG};"),
        )
        .unwrap();
    source
        .psql(
            &sdb,
            &format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {MIG};
                 GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {MIG};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP};
                 GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP};"
            ),
        )
        .unwrap();
    (source, sdb)
}

/// The migration as `migrator`, told to use the DBA's slot and publication.
fn migration(source: PgServer, sdb: String) -> Migration {
    let url = role_url(&source, MIG, MIG_PW, &sdb);
    Migration::with_source(source, sdb, url, target_options())
        .poll(Duration::from_millis(100))
        .env("FERRY_POSTGRES_SLOT", SLOT)
        .env("FERRY_POSTGRES_EXISTING_SLOT", "true")
        .env("FERRY_POSTGRES_PUBLICATION", PUBLICATION)
}

/// Slots on the source server: `name plugin database`, sorted.
fn slots(s: &Migration) -> Vec<String> {
    let out = s
        .source
        .psql(
            "postgres",
            "SELECT slot_name || ' ' || coalesce(plugin, '-') || ' ' || coalesce(database::text, '-')
               FROM pg_replication_slots ORDER BY 1",
        )
        .unwrap();
    out.lines().map(str::to_owned).collect()
}

/// The whole migration with the DBA's slot: created before the publication
/// (WAL from before the publication must never reach pgoutput) and before
/// writes of every kind; then `kill -9` during the load, the resume, a
/// fenced cutover under writes, exact comparison, and the slot and the
/// publication still there after cutover and cleanup.
#[test]
fn a_slot_created_beforehand_is_advanced_streamed_from_and_kept() {
    let (source, sdb) = source();
    // The DBA creates the slot, then the application writes, then the DBA
    // creates the publication, and the application writes on.
    source
        .psql(
            &sdb,
            &format!("SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')"),
        )
        .unwrap();
    let app = format!(
        "host=127.0.0.1 port={} user={APP} password={APP_PW} dbname={sdb}",
        source.port()
    );
    source
        .psql_conninfo(
            &app,
            "INSERT INTO accounts SELECT a, 1, a, 'before publication' FROM generate_series(900000001, 900000100) a;
             UPDATE accounts SET abalance = abalance + 11 WHERE aid <= 300;
             DELETE FROM accounts WHERE aid BETWEEN 301 AND 350;
             INSERT INTO history VALUES (1, 1, 1, 5, now(), 'before publication');
             INSERT INTO docs (body) VALUES ('before publication');",
        )
        .unwrap();
    source
        .psql(
            &sdb,
            &format!(
                "CREATE PUBLICATION {PUBLICATION} FOR TABLE branches, tellers, accounts, history, docs"
            ),
        )
        .unwrap();
    source
        .psql_conninfo(
            &app,
            "INSERT INTO accounts SELECT a, 1, a, 'before ferry' FROM generate_series(900000101, 900000200) a;
             UPDATE accounts SET abalance = abalance - 3, filler = 'updated before ferry' WHERE aid BETWEEN 900000001 AND 900000150;
             DELETE FROM accounts WHERE aid BETWEEN 900000051 AND 900000060;
             UPDATE docs SET meta = '{\"before\": \"ferry\"}' WHERE id <= 10;
             DELETE FROM history WHERE filler = 'before publication';
             INSERT INTO history VALUES (2, 1, 2, 6, now(), 'before ferry');",
        )
        .unwrap();
    let s = migration(source, sdb);
    let app_url = role_url(&s.source, APP, APP_PW, &s.source_db);

    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    let (line, _) = check_lines(&plan, "existing slot");
    assert!(line.trim_start().starts_with("ok"), "{line}");
    assert!(
        line.contains(&format!(
            "slot '{SLOT}' was created beforehand: ferry advances it to its load snapshot, streams from it and never drops it"
        )),
        "{line}"
    );
    let (line, _) = check_lines(&plan, "publication");
    assert!(line.contains("created beforehand: used as is"), "{line}");

    // run under writes, killed during the load, resumed
    let mut writer = Writer::start(&app_url, ACCOUNTS);
    writer.wait_for(20, LONG).unwrap();
    let chunks = [
        ("FERRY_LOAD_CHUNK_ROWS", "2000"),
        ("FERRY_LOAD_PARALLELISM", "1"),
    ];
    let mut ferry = s.start_with("load", &chunks);
    s.wait_first_chunk(&mut ferry);
    let load_log = ferry.log();
    ferry.kill9().unwrap();
    assert!(
        load_log.contains("replication slot created beforehand advanced to the load snapshot"),
        "{load_log}"
    );
    writer.wait_for(writer.committed() + 20, LONG).unwrap();
    let mut ferry = s.start_with("resume", &chunks);
    s.wait_phase(&mut ferry, "stream");
    assert!(
        ferry
            .log()
            .contains("resuming the full load from a new snapshot"),
        "{}",
        ferry.log()
    );
    writer.wait_for(writer.committed() + 100, LONG).unwrap();

    // fenced cutover under writes
    let cut = s.fenced_cutover(ferry, "60s");
    let kept = format!(
        "replication slot '{SLOT}' was created beforehand (postgres.existing_slot): kept, it is yours; it retains WAL on the source until you drop it: SELECT pg_drop_replication_slot('{SLOT}')"
    );
    assert!(cut.stdout.contains(&kept), "{}", cut.all());
    assert!(
        cut.stdout.contains("\"slot_dropped\": false"),
        "{}",
        cut.all()
    );
    let run_log = std::fs::read_to_string(s.logs.path().join("resume.log")).unwrap();
    assert!(
        run_log.contains("replication slot created beforehand kept (postgres.existing_slot): it is yours and retains WAL on the source until you drop it"),
        "{run_log}"
    );
    let _ = writer.stop();
    s.compare(BENCH_TABLES);
    let sdb = &s.source_db;
    let expected = vec![format!("{SLOT} pgoutput {sdb}")];
    assert_eq!(slots(&s), expected, "the DBA's slot is kept, alone");

    // cleanup keeps it too, and the publication
    let clean = s.ferry(&["cleanup"]);
    assert_eq!(clean.code, Some(0), "{}", clean.all());
    assert!(clean.stdout.contains(&kept), "{}", clean.all());
    assert_eq!(slots(&s), expected, "cleanup keeps the DBA's slot");
    let publications = s
        .source
        .psql(sdb, "SELECT pubname FROM pg_publication ORDER BY 1")
        .unwrap();
    assert_eq!(publications.trim(), PUBLICATION);
}

/// `ferry plan` with `postgres.existing_slot`: each way the slot can be
/// unusable is a failed `existing slot` check naming the slot and the fix,
/// and `ferry run` refuses it without creating anything; a good slot passes.
#[test]
fn plan_checks_the_slot_created_beforehand() {
    let (source, sdb) = source();
    source
        .psql(
            &sdb,
            &format!(
                "CREATE PUBLICATION {PUBLICATION} FOR TABLE branches, tellers, accounts, history, docs"
            ),
        )
        .unwrap();
    let s = migration(source, sdb);
    let sdb = s.source_db.clone();
    let create = format!("SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')");
    let failed = |detail: &str, fix: &str| {
        let plan = s.ferry(&["plan"]);
        assert_eq!(plan.code, Some(2), "{}", plan.all());
        let (line, fix_line) = check_lines(&plan, "existing slot");
        assert!(line.trim_start().starts_with("FAIL"), "{line}");
        assert!(line.contains(detail), "{line}");
        assert!(fix_line.contains(fix), "{fix_line}");
    };

    // missing; `ferry run` refuses it and creates nothing
    failed(
        &format!(
            "slot '{SLOT}' does not exist, and postgres.existing_slot says it was created beforehand"
        ),
        &format!(
            "fix: create it on the source database as a role with REPLICATION: {create}; or set postgres.existing_slot = false"
        ),
    );
    let refused = run(s.cmd().env("FERRY_LOG", "info").arg("run")).unwrap();
    assert_eq!(refused.code, Some(2), "{}", refused.all());
    assert!(
        refused
            .all()
            .contains(&format!("slot '{SLOT}' does not exist")),
        "{}",
        refused.all()
    );
    assert!(slots(&s).is_empty(), "{:?}", slots(&s));

    // another output plugin
    s.source
        .psql(
            &sdb,
            &format!("SELECT pg_create_logical_replication_slot('{SLOT}', 'test_decoding')"),
        )
        .unwrap();
    failed(
        &format!("slot '{SLOT}' uses output plugin 'test_decoding'; ferry needs pgoutput"),
        &format!("SELECT pg_drop_replication_slot('{SLOT}'); {create}"),
    );

    // physical
    s.source
        .psql(
            &sdb,
            &format!(
                "SELECT pg_drop_replication_slot('{SLOT}'); SELECT pg_create_physical_replication_slot('{SLOT}')"
            ),
        )
        .unwrap();
    failed(
        &format!(
            "slot '{SLOT}' is a physical slot; ferry streams from a logical slot with the pgoutput plugin"
        ),
        "SELECT pg_create_logical_replication_slot('<name>', 'pgoutput'); then set postgres.slot",
    );

    // another database
    s.source
        .psql(
            "postgres",
            &format!("SELECT pg_drop_replication_slot('{SLOT}'); {create}"),
        )
        .unwrap();
    failed(
        &format!("slot '{SLOT}' belongs to database 'postgres', not '{sdb}' of source.url"),
        &format!("create the slot while connected to database '{sdb}': {create}"),
    );

    // good
    s.source
        .psql(
            &sdb,
            &format!("SELECT pg_drop_replication_slot('{SLOT}'); {create}"),
        )
        .unwrap();
    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    let (line, _) = check_lines(&plan, "existing slot");
    assert!(line.trim_start().starts_with("ok"), "{line}");
    assert!(line.contains("never drops it"), "{line}");

    // in use by another consumer
    let rt = pgsync::runtime();
    let endpoint = Endpoint {
        url: ferry_core::RedactedUrl::new(&s.source.url(&sdb)),
        sslmode: Some(SslMode::Disable),
        sslrootcert: None,
    };
    let consumer = rt.block_on(async {
        let conn = ReplicationConnection::connect(&endpoint).await.unwrap();
        let options = PgOutputOptions {
            proto_version: 1,
            publications: vec![PUBLICATION.to_owned()],
            messages: false,
        };
        conn.start_replication(SLOT, Lsn(0), &options)
            .await
            .unwrap()
    });
    let pid = s
        .source
        .psql(
            "postgres",
            &format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
        )
        .unwrap();
    let pid = pid.trim();
    assert!(!pid.is_empty());
    failed(
        &format!("slot '{SLOT}' is in use by another consumer (process {pid})"),
        &format!("stop that consumer (SELECT pg_terminate_backend({pid}))"),
    );
    rt.block_on(consumer.finish());
}

/// A first run that stops in its schema stage (here: the target already
/// holds a sequence the source's schema creates) after it advanced the
/// DBA's slot: the next run neither drops nor recreates the slot, takes a
/// new snapshot and advances the slot again; writes made before, between
/// and during the runs arrive exactly once.
#[test]
fn a_run_stopped_in_the_schema_stage_advances_the_slot_again() {
    let (source, sdb) = source();
    source
        .psql(
            &sdb,
            &format!(
                "SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput');
                 CREATE PUBLICATION {PUBLICATION} FOR TABLE branches, tellers, accounts, history, docs;"
            ),
        )
        .unwrap();
    let s = migration(source, sdb);
    let sdb = s.source_db.clone();
    let app_url = role_url(&s.source, APP, APP_PW, &sdb);
    let confirmed = || {
        s.source
            .psql(
                "postgres",
                &format!(
                    "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
                ),
            )
            .unwrap()
            .trim()
            .to_owned()
    };
    let lsn = |t: &str| pgsync::parse_lsn(t).unwrap_or_else(|| panic!("not an LSN: {t:?}"));
    let created_at = lsn(&confirmed());
    s.source
        .psql(
            &sdb,
            "UPDATE accounts SET abalance = 1 WHERE aid <= 100;
             INSERT INTO history VALUES (1, 1, 1, 1, now(), 'before the first run');",
        )
        .unwrap();
    s.target
        .psql(&s.target_db, "CREATE SEQUENCE public.docs_id_seq")
        .unwrap();

    let first = run(s.cmd().env("FERRY_LOG", "info").arg("run")).unwrap();
    assert_ne!(first.code, Some(0), "{}", first.all());
    assert!(
        first
            .all()
            .contains("replication slot created beforehand advanced to the load snapshot"),
        "{}",
        first.all()
    );
    assert!(first.all().contains("docs_id_seq"), "{}", first.all());
    assert_eq!(s.pipeline_phase().as_deref(), Some("schema"));
    let after_first = lsn(&confirmed());
    assert!(after_first > created_at, "{after_first} > {created_at}");

    s.source
        .psql(
            &sdb,
            "UPDATE accounts SET abalance = 2 WHERE aid <= 50;
             DELETE FROM accounts WHERE aid BETWEEN 51 AND 60;
             INSERT INTO history VALUES (2, 1, 2, 2, now(), 'between the runs');",
        )
        .unwrap();
    s.target
        .psql(&s.target_db, "DROP SEQUENCE public.docs_id_seq")
        .unwrap();
    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    let (line, _) = check_lines(&plan, "existing slot");
    assert!(line.contains("was created beforehand"), "{line}");

    let mut writer = Writer::start(&app_url, ACCOUNTS);
    writer.wait_for(20, LONG).unwrap();
    let mut ferry = s.start("second");
    s.wait_phase(&mut ferry, "stream");
    let log = ferry.log();
    assert!(
        log.contains("replication slot created beforehand advanced to the load snapshot"),
        "{log}"
    );
    assert!(!log.contains("dropping the slot left over"), "{log}");
    writer.wait_for(writer.committed() + 100, LONG).unwrap();
    s.fenced_cutover(ferry, "60s");
    let _ = writer.stop();
    s.compare(BENCH_TABLES);
    assert_eq!(
        slots(&s),
        vec![format!("{SLOT} pgoutput {sdb}")],
        "the DBA's slot is kept, alone"
    );
    assert!(lsn(&confirmed()) > after_first);
}
