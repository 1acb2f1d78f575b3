//! `ferry run` PostgreSQL → PostgreSQL end to end, through the CLI: full load
//! and streaming under concurrent pgbench-like writes, crashes (`kill -9`) at
//! every stage, restarts of source and target, and Pagila. Each test ends by
//! comparing source and target table by table (row count + ordered checksum
//! over all columns) once the checkpoint has reached the source's position.

use std::time::Duration;

use ferry_e2e::migration::{LONG, Migration, target_options};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_testkit::PgOptions;

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];

/// A source holding `schema_sql`, an empty target; `ferry run` listens on
/// any free port.
fn migration(schema_sql: &str) -> Migration {
    Migration::new(PgOptions::new(), target_options(), schema_sql)
        .env("FERRY_CONTROL_LISTEN", "127.0.0.1:0")
        .poll(Duration::from_millis(100))
}

fn setup(accounts: u32, docs: u32) -> Migration {
    let m = migration(BENCH_SCHEMA);
    m.source
        .psql(&m.source_db, &pgsync::bench_data(accounts, docs))
        .unwrap();
    m
}

/// Stop writes, wait for the checkpoint to pass the source position, compare.
fn finish_and_compare(s: &Migration, writer: Writer, tables: &[&str]) {
    let committed = writer.stop().expect("writer");
    assert!(committed > 0, "the writer committed nothing");
    s.compare_caught_up(tables);
}

#[test]
fn load_and_stream_under_concurrent_writes() {
    let s = setup(60_000, 3_000);
    let mut writer = Writer::start(&s.source_url, 60_000);
    writer.wait_for(50, LONG).unwrap();
    let mut ferry = s.start("run");
    s.wait_streaming(&mut ferry);
    let seen = writer.committed();
    writer.wait_for(seen + 300, LONG).unwrap();
    finish_and_compare(&s, writer, BENCH_TABLES);
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0), "SIGTERM must finish the batch and exit 0");
}

#[test]
fn kill9_during_load_between_apply_and_ack_and_mid_stream() {
    let s = setup(400_000, 2_000);
    let mut writer = Writer::start(&s.source_url, 400_000);
    writer.wait_for(20, LONG).unwrap();
    // Small chunks so the load is several committed chunks long.
    let chunks = [
        ("FERRY_LOAD_CHUNK_ROWS", "50000"),
        ("FERRY_LOAD_PARALLELISM", "2"),
    ];

    // 1. Crash during the load, after at least one chunk committed.
    let mut ferry = s.start_with("load-crash", &chunks);
    s.wait_first_chunk(&mut ferry);
    ferry.kill9().unwrap();

    // 2. Resume, then crash at each failpoint of the applier under writes;
    //    after each crash, resume with the writer stopped and compare exactly.
    let mut ferry = s.start_with("resume", &chunks);
    s.wait_streaming(&mut ferry);
    let mut writer = Some(writer);
    for (point, debug_name) in [
        ("after-apply-before-commit", "AfterApplyBeforeCommit"),
        ("after-commit-before-ack", "AfterCommitBeforeAck"),
    ] {
        let w = writer.as_mut().expect("writer running");
        w.wait_for(w.committed() + 50, LONG).unwrap();
        ferry.kill9().unwrap();
        let failing = s.start_with(point, &[("FERRY_FAILPOINT", point)]);
        let status = failing.wait_status(LONG).unwrap();
        let log = std::fs::read_to_string(s.logs.path().join(format!("{point}.log"))).unwrap();
        assert!(
            log.contains("FERRY_FAILPOINT reached") && log.contains(debug_name),
            "ferry must stop at the failpoint {point}, not elsewhere ({status}):\n{log}"
        );
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGABRT),
            "the failpoint {point} must abort the process ({status}):\n{log}"
        );
        // Resume from the crash with no new writes: the target must equal
        // the source exactly (nothing lost by the crash, nothing doubled by
        // the source resending what the target already committed).
        let committed = writer
            .take()
            .expect("writer running")
            .stop()
            .expect("writer");
        assert!(committed > 0, "the writer committed nothing");
        ferry = s.start(&format!("{point}-resume"));
        s.wait_streaming(&mut ferry);
        s.compare_caught_up(BENCH_TABLES);
        writer = Some(Writer::start(&s.source_url, 400_000));
    }
    let mut writer = writer.expect("writer running");
    ferry.kill9().unwrap();

    // 3. Crash mid-stream under writes.
    let mut ferry = s.start("stream-crash");
    s.wait_streaming(&mut ferry);
    let seen = writer.committed();
    writer.wait_for(seen + 200, LONG).unwrap();
    ferry.kill9().unwrap();

    // 4. Resume to the end.
    let mut ferry = s.start("final");
    s.wait_streaming(&mut ferry);
    finish_and_compare(&s, writer, BENCH_TABLES);
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}

#[test]
fn source_and_target_restart_mid_stream() {
    let mut s = setup(20_000, 500);
    let mut writer = Writer::start(&s.source_url, 20_000);
    let mut ferry = s.start("run");
    s.wait_streaming(&mut ferry);
    writer.wait_for(writer.committed() + 100, LONG).unwrap();

    s.source.restart().expect("source restart");
    writer.wait_for(writer.committed() + 100, LONG).unwrap();
    s.target.kill();
    std::thread::sleep(Duration::from_millis(500));
    s.target.start_again().expect("target start");
    writer.wait_for(writer.committed() + 100, LONG).unwrap();
    assert!(
        ferry.exited().unwrap().is_none(),
        "ferry must survive restarts:\n{}",
        ferry.log()
    );

    finish_and_compare(&s, writer, BENCH_TABLES);
    let log = ferry.log();
    assert!(log.contains("reconnect"), "reconnects are logged:\n{log}");
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}

/// A first run stopped after its slot was created but before the rest of
/// the state schema committed (created beside the slot and the schema dump
/// on a fresh target): the target holds only the tables a start writes
/// first, phase `schema`, and the source a slot. The next run creates the
/// rest of the state schema, drops the leftover slot as after any
/// interrupted first run, and loads and streams to an exact copy.
#[test]
fn a_first_run_stopped_before_the_rest_of_the_state_schema_is_resumed() {
    use ferry_apply::state::schema::{CORE, LATEST, MIGRATIONS, core_sql};
    let s = setup(20_000, 500);
    s.target
        .psql(
            &s.target_db,
            &format!(
                "{}INSERT INTO ferry.pipeline (id, phase) VALUES (1, 'schema');",
                core_sql("ferry")
            ),
        )
        .expect("the state a stop before the rest leaves");
    s.source
        .psql(
            &s.source_db,
            "SELECT pg_create_logical_replication_slot('ferry', 'pgoutput');",
        )
        .expect("the slot the stopped run created");
    let count = |sql: &str| s.target_i64(sql).expect(sql);
    let state_tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'ferry'";
    assert_eq!(
        count(state_tables),
        CORE.len() as i64,
        "only the core tables before the run"
    );

    let writer = Writer::start(&s.source_url, 20_000);
    let mut ferry = s.start("resume");
    s.wait_streaming(&mut ferry);
    let log = ferry.log();
    assert!(
        log.contains("dropping the slot left over by an interrupted first run"),
        "the leftover slot is dropped as after an interrupted first run:\n{log}"
    );
    assert!(
        log.contains("state schema migrated")
            && log.contains(MIGRATIONS[MIGRATIONS.len() - 1].summary),
        "the rest of the state schema is created:\n{log}"
    );
    // Every migration recorded once, and the tables of the first and the
    // last one there.
    assert_eq!(
        count("SELECT count(*) FROM ferry.schema_version"),
        LATEST as i64
    );
    assert_eq!(
        count("SELECT max(version)::bigint FROM ferry.schema_version"),
        LATEST as i64
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM unnest(ARRAY['ferry.checkpoint', 'ferry.tables', 'ferry.chunks', 'ferry.lag_history', 'ferry.replaced_values']) t WHERE to_regclass(t) IS NOT NULL"
        ),
        5,
        "the rest of the state tables exist"
    );
    assert!(count(state_tables) > CORE.len() as i64);
    finish_and_compare(&s, writer, BENCH_TABLES);
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}

/// A keyless table with REPLICA IDENTITY DEFAULT: `ferry run` refuses it as
/// `ferry plan` does, before creating anything, so the application's UPDATEs
/// keep working; declared insert-only it is published for inserts alone.
#[test]
fn keyless_table_is_refused_or_published_insert_only() {
    let s = migration(
        "CREATE TABLE orders (id int PRIMARY KEY, total int NOT NULL);
         CREATE TABLE app_log (at int NOT NULL, line text);
         INSERT INTO orders SELECT i, i FROM generate_series(1, 100) i;
         INSERT INTO app_log SELECT i, 'boot ' || i FROM generate_series(1, 100) i;",
    );
    let rt = pgsync::runtime();
    let src = rt.block_on(pgsync::connect(&s.source_url)).unwrap();
    let dst_url = s.target_url.clone();

    // 1. Not declared: plan and run refuse it, naming the table; nothing is
    //    created on the source and the application's UPDATE still works.
    let planned = s.ferry(&["plan"]);
    assert_eq!(planned.code, Some(2), "{}", planned.all());
    let refused_check = "public.app_log has no primary key and REPLICA IDENTITY DEFAULT";
    assert!(planned.stdout.contains(refused_check), "{}", planned.all());
    let run = s.start("refused");
    let status = run.wait_status(LONG).unwrap();
    let log = std::fs::read_to_string(s.logs.path().join("refused.log")).unwrap();
    assert_eq!(status.code(), Some(2), "run must refuse:\n{log}");
    assert!(
        log.contains("ferry run refuses to start") && log.contains(refused_check),
        "run names what plan names:\n{log}"
    );
    rt.block_on(async {
        let pubs: i64 = src
            .query_one("SELECT count(*) FROM pg_publication", &[])
            .await
            .unwrap()
            .get(0);
        let slots: i64 = src
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!((pubs, slots), (0, 0), "run created something:\n{log}");
        src.execute("UPDATE app_log SET line = 'x' WHERE at = 1", &[])
            .await
            .expect("the application's UPDATE must keep working");
    });

    // 2. Declared insert-only: plan, run and status say so; the table is
    //    published for inserts alone and UPDATE/DELETE keep working.
    let only = [("FERRY_TABLES_INSERT_ONLY", "public.app_log")];
    let planned = ferry_e2e::run(s.cmd().envs(only).arg("plan")).unwrap();
    assert_eq!(planned.code, Some(0), "{}", planned.all());
    assert!(
        planned.stdout.contains("public.app_log is insert-only")
            && planned.stdout.contains("[insert-only]"),
        "{}",
        planned.all()
    );
    let mut ferry_run = s.start_with("insert-only", &only);
    s.wait_streaming(&mut ferry_run);
    rt.block_on(async {
        let row = src
            .query_one(
                "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = 'ferry_insert_only'",
                &[],
            )
            .await
            .unwrap();
        let flags: (bool, bool, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(flags, (true, false, false, true));
        let in_main: i64 = src
            .query_one(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'ferry' AND tablename = 'app_log'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(in_main, 0, "app_log must not be in the main publication");
        src.batch_execute(
            "INSERT INTO app_log SELECT i, 'run ' || i FROM generate_series(101, 300) i;
             INSERT INTO orders SELECT i, i FROM generate_series(101, 200) i;
             UPDATE orders SET total = total + 1 WHERE id <= 50;",
        )
        .await
        .unwrap();
        // Inserts arrive through the second publication.
        let lsn = pgsync::current_lsn(&src).await.unwrap();
        pgsync::wait_applied(&dst_url, lsn, LONG).await.unwrap();
        let dst = pgsync::connect(&dst_url).await.unwrap();
        pgsync::compare_tables(&src, &dst, &["orders", "app_log"])
            .await
            .unwrap();
        // The application's UPDATE and DELETE keep working on the source.
        src.execute("UPDATE app_log SET line = 'edited' WHERE at = 2", &[])
            .await
            .expect("UPDATE on an insert-only table must keep working");
        src.execute("DELETE FROM app_log WHERE at = 3", &[])
            .await
            .expect("DELETE on an insert-only table must keep working");
        src.execute("INSERT INTO orders VALUES (1000, 1)", &[])
            .await
            .unwrap();
        let lsn = pgsync::current_lsn(&src).await.unwrap();
        pgsync::wait_applied(&dst_url, lsn, LONG).await.unwrap();
        pgsync::compare_tables(&src, &dst, &["orders"])
            .await
            .unwrap();
    });
    let shown = ferry_e2e::run(s.cmd().envs(only).arg("status")).unwrap();
    assert!(
        shown.stdout.contains("insert-only  public.app_log"),
        "{}",
        shown.all()
    );
    // Cutover validation names the insert-only table whose counts differ
    // (its delete was not carried) instead of passing it silently.
    let refused = ferry_e2e::run(s.cmd().envs(only).args([
        "cutover",
        "--max-lag",
        "30s",
        "--timeout",
        "60s",
    ]))
    .unwrap();
    assert_eq!(refused.code, Some(2), "{}", refused.all());
    assert!(
        refused
            .stdout
            .contains("public.app_log (source Some(299), target Some(300)")
            && refused.stdout.contains("it is insert-only"),
        "{}",
        refused.all()
    );
    assert!(
        ferry_run.exited().unwrap().is_none(),
        "ferry must keep running:\n{}",
        ferry_run.log()
    );
    let code = ferry_run
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}

/// The foreign keys of three tables, which post-data builds after the
/// keys and indexes, and their rows.
const FK_SCHEMA: &str = r#"
CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE child_a (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id));
CREATE TABLE child_b (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id));
CREATE TABLE child_c (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id));
INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 100) g;
INSERT INTO child_a SELECT g, 1 + g % 100 FROM generate_series(1, 1000) g;
INSERT INTO child_b SELECT g, 1 + g % 97 FROM generate_series(1, 1000) g;
INSERT INTO child_c SELECT g, 1 + g % 89 FROM generate_series(1, 1000) g;
"#;

/// On the target, before ferry runs: an event trigger (fired in every
/// session role) that makes the session adding the last of the three
/// foreign keys wait for advisory lock 4242, which the test holds: the
/// session sees the other two (committed, or its own uncommitted ones).
const HOLD_LAST_FK: &str = r#"
CREATE SCHEMA hold;
CREATE FUNCTION hold.last_fk() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
       WHERE c.contype = 'f' AND r.relname LIKE 'child%') = 3 THEN
    PERFORM pg_advisory_xact_lock(4242);
  END IF;
END $$;
CREATE EVENT TRIGGER hold_last_fk ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
  EXECUTE FUNCTION hold.last_fk();
ALTER EVENT TRIGGER hold_last_fk ENABLE ALWAYS;
"#;

#[test]
fn kill9_inside_the_post_data_transaction_leaves_none_built_and_the_next_run_builds_all() {
    let s = migration(FK_SCHEMA);
    let rt = pgsync::runtime();
    let held = hold_on_target(&rt, &s, HOLD_LAST_FK, 4242);
    let count = |sql: &str| s.target_i64(sql);
    let fks = "SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
                WHERE c.contype = 'f' AND r.relname LIKE 'child%'";

    // 1. The post-data session waits at the last foreign key, the other
    //    two added before it: kill ferry and end its session on the target.
    let ferry = s.start("held");
    kill_while_held(&rt, &s, &held, ferry, "the post-data session");
    // None of the transaction's work survives, nothing is marked done
    // without its object; the keys (built before, one commit each) stay.
    assert_eq!(
        count(fks),
        Some(0),
        "a foreign key of the killed transaction survived"
    );
    assert_eq!(
        count("SELECT count(*) FROM ferry.post_data WHERE NOT parallel AND done_at IS NOT NULL"),
        Some(0),
        "a statement of the killed transaction is marked done"
    );
    assert_eq!(
        count("SELECT count(*) FROM ferry.post_data WHERE parallel AND done_at IS NULL"),
        Some(0),
        "the keys and indexes built before it are done"
    );
    rt.block_on(async {
        held.batch_execute("DROP EVENT TRIGGER hold_last_fk; SELECT pg_advisory_unlock(4242)")
            .await
            .unwrap();
    });

    // 2. The next run builds every missing object, validates the keys.
    let mut ferry = s.start("resume");
    s.wait_streaming(&mut ferry);
    s.wait_until(
        &mut ferry,
        "the foreign keys were never all validated",
        || count(&format!("{fks} AND convalidated")) == Some(3),
    );
    every_statement_built_then_compare_and_stop(
        &s,
        ferry,
        &["parent", "child_a", "child_b", "child_c"],
    );
}

/// Four small tables, each with a secondary index that post-data builds
/// after the keys.
const INDEX_SCHEMA: &str = r#"
CREATE TABLE ga (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE gb (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE gc (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE gd (id int PRIMARY KEY, v int NOT NULL);
CREATE INDEX gi_a ON ga (v);
CREATE INDEX gi_b ON gb (v);
CREATE INDEX gi_c ON gc (v);
CREATE INDEX gi_d ON gd (v);
INSERT INTO ga SELECT g, g % 7 FROM generate_series(1, 1000) g;
INSERT INTO gb SELECT g, g % 11 FROM generate_series(1, 1000) g;
INSERT INTO gc SELECT g, g % 13 FROM generate_series(1, 1000) g;
INSERT INTO gd SELECT g, g % 17 FROM generate_series(1, 1000) g;
"#;

/// How many of the `gi_` indexes exist on the target.
const GI_INDEXES: &str =
    "SELECT count(*) FROM pg_class WHERE relkind = 'i' AND relname LIKE 'gi\\_%'";

/// On the target: the session building the third of the `gi_` indexes
/// (it sees its own uncommitted ones) waits for advisory lock 4243.
const HOLD_THIRD_INDEX: &str = r#"
CREATE SCHEMA hold;
CREATE FUNCTION hold.third_index() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT count(*) FROM pg_class WHERE relkind = 'i' AND relname LIKE 'gi\_%') = 3 THEN
    PERFORM pg_advisory_xact_lock(4243);
  END IF;
END $$;
CREATE EVENT TRIGGER hold_third_index ON ddl_command_end WHEN TAG IN ('CREATE INDEX')
  EXECUTE FUNCTION hold.third_index();
ALTER EVENT TRIGGER hold_third_index ENABLE ALWAYS;
"#;

#[test]
fn kill9_inside_a_group_of_index_builds_leaves_none_of_it_and_the_next_run_builds_all() {
    let s = migration(INDEX_SCHEMA);
    let rt = pgsync::runtime();
    let held = hold_on_target(&rt, &s, HOLD_THIRD_INDEX, 4243);
    let count = |sql: &str| s.target_i64(sql);
    // One build session: once the keys are built, the quick index builds
    // after them share its transaction.
    let one = [("FERRY_LOAD_INDEX_PARALLELISM", "1")];

    // 1. The session waits at the third index: kill ferry, end the session.
    let ferry = s.start_with("held", &one);
    kill_while_held(&rt, &s, &held, ferry, "the index build session");
    // The first two indexes were built in the killed transaction (one
    // commit per index would have kept them): neither survives, and no
    // index is marked done without its object, nor built without its mark.
    assert_eq!(
        count(GI_INDEXES),
        Some(0),
        "an index of the killed group survived: the builds did not share a transaction"
    );
    assert_eq!(
        count("SELECT count(*) FROM ferry.post_data WHERE kind = 'INDEX' AND done_at IS NOT NULL"),
        Some(0),
        "an index of the killed group is marked done"
    );
    assert_eq!(
        count("SELECT count(*) FROM ferry.post_data WHERE kind = 'CONSTRAINT' AND done_at IS NULL"),
        Some(0),
        "the keys built before the group are done"
    );
    rt.block_on(async {
        held.batch_execute("DROP EVENT TRIGGER hold_third_index; SELECT pg_advisory_unlock(4243)")
            .await
            .unwrap();
    });

    // 2. The next run builds every index and streams.
    let mut ferry = s.start_with("resume", &one);
    s.wait_streaming(&mut ferry);
    assert_eq!(count(GI_INDEXES), Some(4), "every index built");
    every_statement_built_then_compare_and_stop(&s, ferry, &["ga", "gb", "gc", "gd"]);
}

/// On the target: the build of index `gi_c` fails (an event trigger raises
/// at its end, so its transaction rolls back).
const REFUSE_GI_C: &str = r#"
CREATE SCHEMA refuse;
CREATE FUNCTION refuse.gi_c() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() WHERE object_identity = 'public.gi_c') THEN
    RAISE EXCEPTION 'index gi_c refused by the test';
  END IF;
END $$;
CREATE EVENT TRIGGER refuse_gi_c ON ddl_command_end WHEN TAG IN ('CREATE INDEX')
  EXECUTE FUNCTION refuse.gi_c();
ALTER EVENT TRIGGER refuse_gi_c ENABLE ALWAYS;
"#;

#[test]
fn a_failing_index_build_is_named_no_build_is_marked_without_its_index_and_the_next_run_builds_the_rest()
 {
    let s = migration(INDEX_SCHEMA);
    let rt = pgsync::runtime();
    rt.block_on(async {
        let c = pgsync::connect(&s.target_url).await.unwrap();
        c.batch_execute(REFUSE_GI_C).await.unwrap();
    });
    let count = |sql: &str| s.target_i64(sql);
    let two = [("FERRY_LOAD_INDEX_PARALLELISM", "2")];

    // 1. Two build sessions (the run's own and one more); one of them
    //    fails at gi_c: the run ends with the index and the server's
    //    reason, before catch-up.
    let ferry = s.start_with("refused", &two);
    let code = ferry
        .wait(s.long())
        .expect("ferry exits after the failed build");
    let log = std::fs::read_to_string(s.logs.path().join("refused.log")).unwrap();
    assert_ne!(
        code,
        Some(0),
        "the run succeeded despite the failed build:\n{log}"
    );
    assert!(
        log.contains("building INDEX gi_c on the target")
            && log.contains("index gi_c refused by the test"),
        "the failure does not name the index and the server's reason:\n{log}"
    );
    assert_eq!(
        s.pipeline_phase().as_deref(),
        Some("load"),
        "the phase moved past the load with an index missing"
    );
    // Whatever the other session built meanwhile is marked done with its
    // index; gi_c is neither built nor marked.
    assert_eq!(
        count(
            "SELECT count(*) FROM ferry.post_data p WHERE p.kind = 'INDEX' AND p.done_at IS NOT NULL
               AND to_regclass('public.' || p.name) IS NULL"
        ),
        Some(0),
        "an index is marked done without existing"
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM ferry.post_data p WHERE p.kind = 'INDEX' AND p.done_at IS NULL
               AND to_regclass('public.' || p.name) IS NOT NULL"
        ),
        Some(0),
        "an index exists without its done mark"
    );
    assert_eq!(
        count("SELECT count(*) FROM ferry.post_data WHERE name = 'gi_c' AND done_at IS NULL"),
        Some(1),
        "gi_c is marked done"
    );
    rt.block_on(async {
        let c = pgsync::connect(&s.target_url).await.unwrap();
        c.batch_execute("DROP EVENT TRIGGER refuse_gi_c")
            .await
            .unwrap();
    });

    // 2. The next run builds what is missing and streams.
    let mut ferry = s.start_with("resume", &two);
    s.wait_streaming(&mut ferry);
    assert_eq!(count(GI_INDEXES), Some(4), "every index built");
    every_statement_built_then_compare_and_stop(&s, ferry, &["ga", "gb", "gc", "gd"]);
}

/// A foreign key and a trigger: post-data statements that run in order,
/// in one transaction, after the index builds.
const SEQUENTIAL_SCHEMA: &str = r#"
CREATE TABLE sp (id int PRIMARY KEY);
CREATE TABLE sc (id int PRIMARY KEY, p int NOT NULL REFERENCES sp);
CREATE FUNCTION sc_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER sc_touch BEFORE INSERT ON sc FOR EACH ROW EXECUTE FUNCTION sc_touch();
INSERT INTO sp SELECT generate_series(1, 100);
INSERT INTO sc SELECT g, g FROM generate_series(1, 100) g;
"#;

/// On the target: creating trigger `sc_touch` fails (an event trigger
/// raises at its end).
const REFUSE_SC_TOUCH: &str = r#"
CREATE SCHEMA refuse;
CREATE FUNCTION refuse.sc_touch() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() WHERE object_identity LIKE 'sc_touch on %') THEN
    RAISE EXCEPTION 'trigger sc_touch refused by the test';
  END IF;
END $$;
CREATE EVENT TRIGGER refuse_sc_touch ON ddl_command_end WHEN TAG IN ('CREATE TRIGGER')
  EXECUTE FUNCTION refuse.sc_touch();
ALTER EVENT TRIGGER refuse_sc_touch ENABLE ALWAYS;
"#;

/// The in-order post-data statements go to the target as one text; when
/// that fails, they run again one at a time, so the error still names the
/// statement and the server's reason, and nothing of that transaction
/// stays (no key, no key record, no done mark). The next run builds them,
/// as one text.
#[test]
fn a_failing_in_order_post_data_statement_is_named_and_nothing_of_its_transaction_stays() {
    let s = migration(SEQUENTIAL_SCHEMA);
    let rt = pgsync::runtime();
    rt.block_on(async {
        let c = pgsync::connect(&s.target_url).await.unwrap();
        c.batch_execute(REFUSE_SC_TOUCH).await.unwrap();
    });
    let count = |sql: &str| s.target_i64(sql);
    let debug = [("FERRY_LOG", "info,ferry::pipeline::plan_store=debug")];
    const FELL_BACK: &str = "post-data as one text failed; one statement at a time";

    // 1. The one text fails at the trigger; run again one at a time, the
    //    statements fail there too: the run ends naming it.
    let ferry = s.start_with("refused", &debug);
    let code = ferry
        .wait(s.long())
        .expect("ferry exits after the failed build");
    let log = std::fs::read_to_string(s.logs.path().join("refused.log")).unwrap();
    assert_ne!(
        code,
        Some(0),
        "the run succeeded despite the failed build:\n{log}"
    );
    assert!(
        log.contains(FELL_BACK),
        "the statements were not tried as one text first:\n{log}"
    );
    assert!(
        log.contains("building TRIGGER")
            && log.contains("sc_touch on the target")
            && log.contains("trigger sc_touch refused by the test"),
        "the failure does not name the trigger and the server's reason:\n{log}"
    );
    assert_eq!(
        s.pipeline_phase().as_deref(),
        Some("load"),
        "the phase moved past the load with a trigger missing"
    );
    assert_eq!(
        count("SELECT count(*) FROM ferry.post_data WHERE NOT parallel AND done_at IS NOT NULL"),
        Some(0),
        "an in-order statement is marked done although its transaction failed"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_constraint WHERE conname = 'sc_p_fkey'"),
        Some(0),
        "the foreign key stayed although its transaction failed"
    );
    assert_eq!(
        count("SELECT count(*) FROM ferry.overrides WHERE kind = 'foreign_key'"),
        Some(0),
        "the foreign key's record stayed although its transaction failed"
    );
    rt.block_on(async {
        let c = pgsync::connect(&s.target_url).await.unwrap();
        c.batch_execute("DROP EVENT TRIGGER refuse_sc_touch")
            .await
            .unwrap();
    });

    // 2. The next run builds them as one text and streams. The foreign
    //    key is validated beside the catch-up, before the phase moves to
    //    stream (a catch-up phase with a first batch applied may come
    //    before the validation ends).
    let mut ferry = s.start_with("resume", &debug);
    s.wait_state_phase(&mut ferry, "stream");
    let log = std::fs::read_to_string(s.logs.path().join("resume.log")).unwrap();
    assert!(
        !log.contains(FELL_BACK),
        "the one text failed on the next run:\n{log}"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_trigger WHERE tgname = 'sc_touch'"),
        Some(1),
        "the trigger is not on the target"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_constraint WHERE conname = 'sc_p_fkey' AND convalidated"),
        Some(1),
        "the foreign key is not on the target, validated"
    );
    every_statement_built_then_compare_and_stop(&s, ferry, &["sp", "sc"]);
}

/// The post-data builds and the key validation run on the sessions the
/// load logged in (a login each fewer on the way to streaming): every
/// target session that built an index or key, or validated a foreign key,
/// had copied rows before. Read from the target's statement log.
#[test]
fn post_data_and_key_validation_run_on_the_load_sessions() {
    let s = Migration::new(
        PgOptions::new(),
        target_options()
            .setting("log_statement", "all")
            .setting("log_connections", "on"),
        FK_SCHEMA,
    )
    .env("FERRY_CONTROL_LISTEN", "127.0.0.1:0")
    .poll(Duration::from_millis(100));
    let mut ferry = s.start("sessions");
    s.wait_streaming(&mut ferry);
    s.wait_until(
        &mut ferry,
        "the foreign keys were never all validated",
        || {
            s.target_i64(
                "SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
                  WHERE c.contype = 'f' AND r.relname LIKE 'child%' AND c.convalidated",
            ) == Some(3)
        },
    );
    let log = s.target.log_contents();
    // `… [pid] user@db LOG:  statement: …`, per backend; a statement's
    // further lines follow its first (one write per message).
    let mut copied = std::collections::BTreeSet::new();
    let mut built = std::collections::BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in log.lines() {
        if let Some((pid, rest)) = line
            .split_once(" [")
            .and_then(|(_, rest)| rest.split_once(']'))
        {
            // A statement run (not, e.g., a parameter's text in a DETAIL).
            let ours = rest.contains(&format!("@{} ", s.target_db))
                && (rest.contains(" LOG:  statement: ") || rest.contains(" LOG:  execute "));
            current = ours.then(|| (pid.to_owned(), line.to_owned()));
        }
        let Some((pid, first)) = &current else {
            continue;
        };
        if line.contains(": COPY ") {
            copied.insert(pid.clone());
        }
        for what in ["ADD CONSTRAINT", "CREATE INDEX", "VALIDATE CONSTRAINT"] {
            // Not the state schema's own index.
            if line.contains(what) && !line.contains("\"ferry\".") {
                built
                    .entry(pid.clone())
                    .or_insert_with(|| format!("{first}\n{line}"));
            }
        }
    }
    assert!(
        !built.is_empty() && !copied.is_empty(),
        "the target's log holds no builds or no copies:\n{log}"
    );
    let fresh: Vec<_> = built
        .iter()
        .filter(|(pid, _)| !copied.contains(*pid))
        .map(|(_, line)| line.as_str())
        .collect();
    assert!(
        fresh.is_empty(),
        "builds or validations ran on sessions that copied no rows (logged in for them):\n{}",
        fresh.join("\n")
    );
    every_statement_built_then_compare_and_stop(
        &s,
        ferry,
        &["parent", "child_a", "child_b", "child_c"],
    );
}

/// After a resumed run reached streaming: no post-data statement is left
/// undone, `tables` compare equal once caught up, and `ferry` stops
/// cleanly on SIGTERM.
fn every_statement_built_then_compare_and_stop(
    s: &Migration,
    ferry: ferry_e2e::Background,
    tables: &[&str],
) {
    assert_eq!(
        s.target_i64("SELECT count(*) FROM ferry.post_data WHERE done_at IS NULL"),
        Some(0),
        "every post-data statement is done"
    );
    s.compare_caught_up(tables);
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}

/// A session on `s`'s target, on `rt` (which must outlive it), that ran
/// `setup` (an event trigger that makes a ferry session wait for advisory
/// lock `key`) and holds `key`.
fn hold_on_target(
    rt: &tokio::runtime::Runtime,
    s: &Migration,
    setup: &str,
    key: i64,
) -> tokio_postgres::Client {
    rt.block_on(async {
        let c = pgsync::connect(&s.target_url).await.unwrap();
        c.batch_execute(setup).await.unwrap();
        c.execute("SELECT pg_advisory_lock($1)", &[&key])
            .await
            .unwrap();
        c
    })
}

/// Once `who` (a session of `ferry`) waits for the advisory lock `held`
/// holds: kill ferry with SIGKILL, end that session on the target and wait
/// until it is gone, so its open transaction is rolled back.
fn kill_while_held(
    rt: &tokio::runtime::Runtime,
    s: &Migration,
    held: &tokio_postgres::Client,
    mut ferry: ferry_e2e::Background,
    who: &str,
) {
    let count = |sql: &str| s.target_i64(sql);
    let mut waiting = None;
    s.wait_until(
        &mut ferry,
        &format!("{who} never waited at the lock"),
        || {
            waiting =
                count("SELECT pid::int8 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted");
            waiting.is_some()
        },
    );
    ferry.kill9().unwrap();
    let pid = waiting.unwrap();
    rt.block_on(async {
        held.query("SELECT pg_terminate_backend($1::int8::int)", &[&pid])
            .await
            .unwrap();
    });
    let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    let start = std::time::Instant::now();
    while count(&gone) != Some(0) {
        assert!(start.elapsed() < LONG, "{who} never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
}
