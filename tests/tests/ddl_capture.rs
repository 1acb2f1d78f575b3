//! Issue 19: schema changes carried for PostgreSQL sources
//! (`postgres.capture_ddl = true`), through the CLI with writes running.
//!
//! An application "deploy" runs mid-stream while a writer keeps inserting,
//! updating and deleting: a NOT NULL column added with a default and
//! backfilled, a column renamed, a type changed with `USING`, a column
//! dropped, a table created and written to (in its creating transaction and
//! afterwards), an index added and another dropped, a partition attached, an
//! enum value added and used, comments, a sequence, and a view (not carried:
//! recorded in `ferry.events`). ferry is killed with `kill -9` in the middle
//! of the deploy and restarted. Then: exact comparison of every row and of
//! the schemas (`pg_dump --schema-only` of both sides, normalized, ferry's
//! state schema left out), a fenced cutover, and the event triggers gone
//! from the source.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_e2e::migration::{LONG, Migration, target_options};
use ferry_e2e::pgsync;
use ferry_testkit::{PgOptions, PgServer};

const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    amount_cents integer NOT NULL DEFAULT 0,
    note text,
    legacy text,
    m mood DEFAULT 'ok',
    created timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orders (customer, amount_cents, note, legacy, created)
SELECT 'c' || g, g * 137, 'n' || g, 'l' || g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 500) g;
CREATE INDEX orders_legacy_idx ON orders (legacy);
CREATE TABLE events (id bigint NOT NULL, at date NOT NULL, what text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT g, date '2026-01-01' + (g % 300), 'e' || g FROM generate_series(1, 300) g;
";

/// Statements valid before, during and after the deploy.
fn write(i: u64) -> String {
    let mut s = format!(
        "INSERT INTO orders (customer) VALUES ('w{i}');
         UPDATE orders SET customer = customer || '.' WHERE id = {k};
         INSERT INTO events (id, at, what) VALUES ({e}, date '2026-01-01' + {d}, 'w');",
        k = i % 500 + 1,
        e = 100_000 + i,
        d = i % 365,
    );
    if i.is_multiple_of(3) && i > 2 {
        s.push_str(&format!(
            "DELETE FROM orders WHERE customer = 'w{}';",
            i - 2
        ));
    }
    s
}

/// A writer on its own session until stopped (reconnects after errors,
/// e.g. the cutover fence); counts commits.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(url: &str, statement: fn(u64) -> String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (url, s, c) = (url.to_owned(), stop.clone(), committed.clone());
        let handle = std::thread::spawn(move || {
            pgsync::runtime().block_on(async move {
                let mut i = 0u64;
                while !s.load(Ordering::Relaxed) {
                    let Ok(client) = pgsync::connect(&url).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    while !s.load(Ordering::Relaxed) {
                        i += 1;
                        let sql = format!("BEGIN; {} COMMIT;", statement(i));
                        if client.batch_execute(&sql).await.is_err() {
                            let _ = client.batch_execute("ROLLBACK").await;
                            break;
                        }
                        c.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            });
        });
        Writer {
            stop,
            committed,
            handle,
        }
    }

    fn wait_for(&self, n: u64) {
        let start = Instant::now();
        let target = self.committed.load(Ordering::Relaxed) + n;
        while self.committed.load(Ordering::Relaxed) < target {
            assert!(start.elapsed() < LONG, "the writer stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        self.committed.load(Ordering::Relaxed)
    }
}

/// One simple-query message: the statements run as one transaction and
/// `current_query()` holds all of them (as many migration tools send them).
fn deploy(url: &str, sql: &str) {
    pgsync::runtime().block_on(async {
        let c = pgsync::connect(url).await.expect("source");
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("deploy step failed: {e:?}\n{sql}"));
    });
}

/// `pg_dump --schema-only` of the application's schema `public` (not
/// ferry's state schema, nor its publication and event triggers), normalized:
/// no comments, session settings or blank lines.
fn schema_dump(server: &PgServer, db: &str) -> String {
    let pg_dump = ferry_testkit::pg_dump_for(server.major()).expect("a pg_dump for the server");
    let out = Command::new(pg_dump)
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--no-publications",
        ])
        .args(["--no-subscriptions", "-n", "public"])
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["-U", ferry_testkit::ADMIN_USER, "-d", db])
        .env("PGPASSWORD", ferry_testkit::ADMIN_PASSWORD)
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with("--")
                || l.starts_with("SET ")
                || l.starts_with("SELECT pg_catalog.set_config")
                || l.starts_with("\\restrict")
                || l.starts_with("\\unrestrict"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Wait until everything the source committed so far is applied; fail
/// with ferry's log if it exits first.
fn caught_up(p: &Migration, ferry: &mut ferry_e2e::Background) {
    let lsn = pgsync::runtime().block_on(async {
        let c = pgsync::connect(&p.source_url).await.unwrap();
        pgsync::insert_lsn(&c).await.unwrap()
    });
    p.wait_until(ferry, "never caught up", || {
        pgsync::runtime().block_on(async {
            let Ok(t) = pgsync::connect(&p.target_url).await else {
                return false;
            };
            pgsync::applied_lsn(&t)
                .await
                .ok()
                .flatten()
                .is_some_and(|a| a >= lsn)
        })
    });
}

/// Run ferry with `FERRY_FAILPOINT=point` until it aborts there, after
/// logging `cause` (what the crash must interrupt).
fn crash_at(p: &Migration, point: &str, cause: &str) {
    let failing = p.start_with(point, &[("FERRY_FAILPOINT", point)]);
    let status = failing.wait_status(LONG).unwrap();
    let log = std::fs::read_to_string(p.logs.path().join(format!("{point}.log"))).unwrap();
    assert!(log.contains("FERRY_FAILPOINT reached"), "{point}:\n{log}");
    assert!(log.contains(cause), "{point}: {cause}:\n{log}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGABRT),
        "{point} ({status}):\n{log}"
    );
}

/// A migration of `schema` on the default versions with DDL capture on.
fn capturing(schema: &str) -> Migration {
    Migration::new(PgOptions::new(), target_options(), schema)
        .env("FERRY_POSTGRES_CAPTURE_DDL", "true")
}

fn source_i64(p: &Migration, sql: &str) -> i64 {
    pgsync::runtime().block_on(async {
        let c = pgsync::connect(&p.source_url).await.unwrap();
        c.query_one(sql, &[]).await.unwrap().get(0)
    })
}

#[test]
fn application_deploy_mid_stream_is_carried_exactly_through_cutover() {
    deploy_through_cutover(PgOptions::new(), target_options());
}

/// The same deploy from PostgreSQL 14 (the oldest with logical messages
/// in pgoutput) into 18 (NOT NULL constraints in the catalog).
#[test]
fn application_deploy_from_14_into_18() {
    deploy_through_cutover(PgOptions::new().version(14), target_options().version(18));
}

/// The same deploy on a PostgreSQL 16 source and target.
#[test]
fn application_deploy_on_16() {
    deploy_through_cutover(PgOptions::new().version(16), target_options().version(16));
}

/// The same deploy on a PostgreSQL 17 source and target.
#[test]
fn application_deploy_on_17() {
    deploy_through_cutover(PgOptions::new().version(17), target_options().version(17));
}

/// The same deploy on a PostgreSQL 18 source and target (schema copied by
/// a pg_dump of 18). PostgreSQL 18 records NOT NULL as named constraints:
/// `events_2027`, made with `LIKE events`, carries the names of `events`
/// (`events_id_not_null`), which `pg_dump` prints. Without the names in the
/// table state the target's copy got its own (`events_2027_id_not_null`)
/// and the dumps differed in exactly those lines.
#[test]
fn application_deploy_on_18() {
    deploy_through_cutover(PgOptions::new().version(18), target_options().version(18));
}

fn deploy_through_cutover(source: PgOptions, target: PgOptions) {
    // A pg_dump as new as the newest server here reads every source.
    let pg_dump = ferry_testkit::pg_dump_for(18).expect("a pg_dump for 18 (make setup)");
    let p = Migration::new(source, target, SCHEMA)
        .env("FERRY_POSTGRES_CAPTURE_DDL", "true")
        .env("FERRY_PG_DUMP", pg_dump.to_str().unwrap());

    // Consent: plan says what it installs.
    let plan = p.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    for needle in [
        "ferry_ddl_end (ddl_command_end)",
        "ferry_ddl_drop (sql_drop)",
        "pg_logical_emit_message(true, 'ferry.ddl'",
    ] {
        assert!(plan.stdout.contains(needle), "{needle}:\n{}", plan.all());
    }

    let writer = Writer::start(&p.source_url, write);
    let mut ferry = p.start("run0");
    p.wait_phase(&mut ferry, "stream");
    assert_eq!(
        source_i64(
            &p,
            "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'ferry_ddl_%'"
        ),
        3,
        "event triggers installed"
    );
    writer.wait_for(30);

    let src = p.source_url.clone();
    // A NOT NULL column with a default, then its backfill; a rename.
    deploy(
        &src,
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';
         ALTER TABLE orders ADD COLUMN seen timestamptz NOT NULL DEFAULT now();
         UPDATE orders SET status = CASE WHEN id % 2 = 0 THEN 'paid' ELSE 'open' END WHERE id <= 300;",
    );
    writer.wait_for(20);
    deploy(&src, "ALTER TABLE orders RENAME COLUMN note TO remark;");
    // A type change with USING, in a string of several statements.
    deploy(
        &src,
        "UPDATE orders SET remark = 'before retype' WHERE id = 3;
         ALTER TABLE orders ALTER COLUMN amount_cents TYPE numeric(12,2) USING amount_cents / 100.0;
         UPDATE orders SET remark = 'after retype' WHERE id = 4;",
    );
    writer.wait_for(20);

    // Crash in the middle of the deploy: the restarted run resumes exactly.
    caught_up(&p, &mut ferry);
    ferry.kill9().unwrap();
    deploy(
        &src,
        "ALTER TABLE orders DROP COLUMN legacy;
         CREATE INDEX orders_customer_idx ON orders (customer);
         CREATE INDEX orders_status_idx ON orders (status) WHERE status <> 'paid';",
    );
    let mut ferry = p.start("run1");
    p.wait_phase(&mut ferry, "stream");
    writer.wait_for(20);

    // A new table, written to in its creating transaction and after.
    deploy(
        &src,
        "CREATE TABLE invoices (
             id bigserial PRIMARY KEY,
             order_id bigint NOT NULL REFERENCES orders (id),
             total numeric(12,2),
             issued timestamptz DEFAULT now());
         COMMENT ON TABLE invoices IS 'bills';
         INSERT INTO invoices (order_id, total) SELECT id, amount_cents FROM orders WHERE id <= 50;",
    );
    deploy(
        &src,
        "INSERT INTO invoices (order_id, total) VALUES (60, 1.5), (61, 2.5);
         UPDATE invoices SET total = total + 1 WHERE id <= 10;
         DELETE FROM invoices WHERE id = 20;
         DROP INDEX orders_customer_idx;
         COMMENT ON COLUMN orders.status IS 'lifecycle';",
    );
    // A partition attached, then written through the parent.
    deploy(
        &src,
        "CREATE TABLE events_2027 (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS);",
    );
    deploy(
        &src,
        "ALTER TABLE events ATTACH PARTITION events_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         INSERT INTO events VALUES (900001, '2027-03-01', 'next year'), (900002, '2027-12-31', 'eve');",
    );
    // An enum value added, then used.
    deploy(&src, "ALTER TYPE mood ADD VALUE 'ecstatic' AFTER 'happy';");
    deploy(
        &src,
        "UPDATE orders SET m = 'ecstatic' WHERE id IN (7, 8); CREATE SEQUENCE ticket_seq START 100 INCREMENT 5;",
    );
    // Not carried, and recorded: a view (created and dropped again).
    deploy(
        &src,
        "CREATE VIEW paid_orders AS SELECT id FROM orders WHERE status = 'paid';",
    );
    deploy(&src, "DROP VIEW paid_orders;");
    writer.wait_for(30);
    let written = writer.stop();
    assert!(written > 100, "the writer kept writing ({written})");

    caught_up(&p, &mut ferry);
    let tables = ["orders", "invoices", "events", "events_2026", "events_2027"];
    p.compare(&tables);
    let (s, t) = (
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db),
    );
    if s != t {
        let _ = std::fs::write("/tmp/ddl_capture.source.sql", &s);
        let _ = std::fs::write("/tmp/ddl_capture.target.sql", &t);
        let diff: Vec<String> = s
            .lines()
            .zip(t.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("source: {a}\ntarget: {b}"))
            .collect();
        panic!(
            "schemas differ:\n{}\n--- source ---\n{s}\n--- target ---\n{t}\n--- ferry ---\n{}",
            diff.join("\n"),
            ferry.log()
        );
    }
    let recorded = p
        .target_i64(
            "SELECT count(*) FROM ferry.events WHERE kind = 'ddl_not_carried' AND message LIKE '%paid_orders%'",
        )
        .unwrap_or(0);
    assert!(recorded >= 2, "view create and drop recorded ({recorded})");
    // The live status refreshes from the state every few seconds.
    p.wait_until(&mut ferry, "status never showed the schema changes", || {
        let ddl = &p.status()["schema_changes"];
        ddl["ddl_applied"].as_u64().unwrap_or(0) >= 10
            && ddl["ddl_not_carried"].as_u64().unwrap_or(0) >= 2
    });
    let text = p.ferry(&["status"]);
    assert!(text.stdout.contains("not carried"), "{}", text.all());

    p.fenced_cutover(ferry, "60s");
    p.compare(&tables);
    assert_eq!(
        source_i64(
            &p,
            "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'ferry_ddl_%'"
        ),
        0,
        "cutover removed the event triggers"
    );
}

const SCHEMA2: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, name text, balance int NOT NULL DEFAULT 0, region text DEFAULT 'eu');
INSERT INTO accounts SELECT g, 'a' || g, g, 'eu' FROM generate_series(1, 200) g;
CREATE INDEX accounts_name_idx ON accounts (name);
CREATE TABLE logs (id bigserial PRIMARY KEY, account_id int REFERENCES accounts (id), msg text);
CREATE TABLE old_stuff (id int PRIMARY KEY, v text);
INSERT INTO old_stuff SELECT g, 'v' || g FROM generate_series(1, 20) g;
CREATE TABLE scratch (id int PRIMARY KEY);
CREATE TABLE m (id int NOT NULL, d date NOT NULL, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO m SELECT g, date '2025-01-01' + g FROM generate_series(1, 600) g;
";

fn write2(i: u64) -> String {
    format!(
        "INSERT INTO logs (account_id, msg) VALUES ({a}, 'm{i}');
         UPDATE accounts SET balance = balance + 1 WHERE id = {a};",
        a = i % 200 + 1
    )
}

/// Renames of tables, indexes and constraints, a CHECK added, a default
/// dropped, NOT NULL set, `CREATE INDEX CONCURRENTLY`, a partition created
/// with `PARTITION OF` and one detached, a CHECK of the partitioned table
/// added and dropped, a table renamed and written to, a table dropped,
/// `REPLICA IDENTITY FULL` — with a restart after the new
/// names; then a column added with a volatile default to a table with rows
/// stops the run with the fix, before anything of its transaction is
/// applied.
#[test]
fn renames_drops_partitions_and_a_volatile_default_stop() {
    let p = capturing(SCHEMA2);
    let writer = Writer::start(&p.source_url, write2);
    let mut ferry = p.start("run0");
    p.wait_phase(&mut ferry, "stream");
    writer.wait_for(20);
    let src = p.source_url.clone();
    deploy(
        &src,
        "ALTER TABLE accounts ADD CONSTRAINT balance_nonneg CHECK (balance >= 0);
         ALTER INDEX accounts_name_idx RENAME TO accounts_by_name;
         ALTER TABLE accounts RENAME CONSTRAINT balance_nonneg TO balance_not_negative;
         ALTER TABLE accounts ALTER COLUMN region DROP DEFAULT, ALTER COLUMN name SET NOT NULL;
         ALTER TABLE accounts REPLICA IDENTITY FULL;",
    );
    deploy(
        &src,
        "CREATE INDEX CONCURRENTLY logs_msg_idx ON logs (msg);",
    );
    deploy(
        &src,
        "CREATE TABLE m_2027 PARTITION OF m FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         INSERT INTO m VALUES (1, '2027-05-05'), (2, '2027-06-06');",
    );
    deploy(&src, "ALTER TABLE m DETACH PARTITION m_2025;");
    // A CHECK of a partitioned table dropped: the source reports its
    // partitions' inherited copies first.
    deploy(
        &src,
        "ALTER TABLE m ADD CONSTRAINT id_positive CHECK (id > 0);",
    );
    deploy(&src, "ALTER TABLE m DROP CONSTRAINT id_positive;");
    deploy(
        &src,
        "ALTER TABLE old_stuff RENAME TO older_stuff;
         UPDATE older_stuff SET v = v || '!' WHERE id <= 5;
         INSERT INTO older_stuff VALUES (100, 'new');
         DROP TABLE scratch;",
    );
    writer.wait_for(20);
    // Restart after the new names: the catalog and the state agree.
    caught_up(&p, &mut ferry);
    ferry.signal_and_wait(libc::SIGTERM, LONG).unwrap();
    let mut ferry = p.start("run1");
    p.wait_phase(&mut ferry, "stream");
    deploy(
        &src,
        "INSERT INTO older_stuff VALUES (101, 'after restart');",
    );
    writer.wait_for(20);
    let written = writer.stop();
    assert!(written > 40, "the writer kept writing ({written})");
    caught_up(&p, &mut ferry);
    p.compare(&[
        "accounts",
        "logs",
        "older_stuff",
        "m",
        "m_2025",
        "m_2026",
        "m_2027",
    ]);
    let (s, t) = (
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db),
    );
    if s != t {
        let _ = std::fs::write("/tmp/ddl_capture2.source.sql", &s);
        let _ = std::fs::write("/tmp/ddl_capture2.target.sql", &t);
        panic!(
            "schemas differ:\n--- source ---\n{s}\n--- target ---\n{t}\n--- ferry ---\n{}",
            ferry.log()
        );
    }
    // ferry's table list followed the rename and the drop.
    let listed: Vec<String> = p.status()["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        listed.contains(&"public.older_stuff".to_owned()),
        "{listed:?}"
    );
    assert!(
        !listed.contains(&"public.old_stuff".to_owned()),
        "{listed:?}"
    );
    assert!(!listed.contains(&"public.scratch".to_owned()), "{listed:?}");

    // A volatile default on a table with rows cannot be carried exactly.
    deploy(
        &src,
        "INSERT INTO accounts VALUES (1000, 'before', 0, 'x');
         ALTER TABLE accounts ADD COLUMN token uuid DEFAULT gen_random_uuid();
         INSERT INTO accounts VALUES (1001, 'after', 0, 'x');",
    );
    let code = ferry.wait(LONG).unwrap();
    let log = std::fs::read_to_string(p.logs.path().join("run1.log")).unwrap_or_default();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains(
            "column \"token\" was added to \"public\".\"accounts\" with a volatile DEFAULT"
        ),
        "{log}"
    );
    assert!(log.contains("ADD COLUMN \"token\" uuid"), "{log}");
    assert_eq!(
        p.target_i64("SELECT count(*) FROM accounts WHERE id IN (1000, 1001)"),
        Some(0),
        "nothing of the transaction is applied"
    );
}

/// DDL inside a savepoint of the application's transaction (migration
/// tools that wrap each step): the schema change still reaches the target
/// before the rows written after it. Then the capture's lifecycle: a run
/// without consent removes it, a run with it installs it, `ferry cleanup`
/// removes it.
#[test]
fn ddl_inside_a_savepoint_keeps_its_place() {
    let p = capturing(SCHEMA2);
    let mut ferry = p.start("run0");
    p.wait_phase(&mut ferry, "stream");
    deploy(
        &p.source_url,
        "BEGIN;
         SAVEPOINT step1;
         ALTER TABLE accounts ADD COLUMN flag boolean NOT NULL DEFAULT false;
         RELEASE SAVEPOINT step1;
         SAVEPOINT step2;
         ALTER TABLE accounts RENAME COLUMN region TO area;
         RELEASE SAVEPOINT step2;
         UPDATE accounts SET flag = true, area = 'us' WHERE id <= 10;
         COMMIT;",
    );
    caught_up(&p, &mut ferry);
    p.compare(&["accounts"]);
    assert_eq!(
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db)
    );

    // Consent withdrawn: the next run removes the capture; given again, it
    // is back; `ferry cleanup` removes it.
    let triggers = "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'ferry_ddl_%'";
    ferry.signal_and_wait(libc::SIGTERM, LONG).unwrap();
    let mut off = p.start_with("off", &[("FERRY_POSTGRES_CAPTURE_DDL", "false")]);
    p.wait_until(&mut off, "the capture was never removed", || {
        source_i64(&p, triggers) == 0
    });
    off.signal_and_wait(libc::SIGTERM, LONG).unwrap();
    let mut on = p.start("on");
    p.wait_until(&mut on, "the capture was never installed again", || {
        source_i64(&p, triggers) == 3
    });
    on.signal_and_wait(libc::SIGTERM, LONG).unwrap();
    let cleanup = p.ferry(&["cleanup"]);
    assert_eq!(cleanup.code, Some(0), "{}", cleanup.all());
    assert!(
        cleanup.stdout.contains("DDL capture removed"),
        "{}",
        cleanup.all()
    );
    assert_eq!(source_i64(&p, triggers), 0);
    assert_eq!(
        source_i64(
            &p,
            "SELECT count(*) FROM pg_proc WHERE proname IN ('ddl_before', 'ddl_end', 'ddl_drop', 'ddl_table', 'ddl_publish')"
        ),
        0,
        "functions removed"
    );
}

/// A crash at each failpoint of the applier's commit while the batch holds
/// a schema change: applied exactly once after the restart (not lost by
/// the rollback, not run twice over the committed checkpoint).
#[test]
fn crash_around_a_schema_change_commit_is_exact() {
    let p = capturing(SCHEMA2);
    let mut ferry = p.start("run0");
    p.wait_phase(&mut ferry, "stream");
    caught_up(&p, &mut ferry);
    for (n, point) in ["after-apply-before-commit", "after-commit-before-ack"]
        .into_iter()
        .enumerate()
    {
        ferry.signal_and_wait(libc::SIGTERM, LONG).unwrap();
        // Written while ferry is down: the first batch after the start is
        // this transaction.
        deploy(
            &p.source_url,
            &format!(
                "BEGIN;
                 ALTER TABLE accounts ADD COLUMN c{n} int NOT NULL DEFAULT {n};
                 ALTER TABLE accounts RENAME COLUMN {from} TO name{n};
                 UPDATE accounts SET c{n} = c{n} + 10, balance = balance + 1 WHERE id <= 20;
                 COMMIT;",
                from = if n == 0 {
                    "name".to_owned()
                } else {
                    format!("name{}", n - 1)
                }
            ),
        );
        crash_at(&p, point, "source schema change applied");
        ferry = p.start(&format!("resume{n}"));
        p.wait_phase(&mut ferry, "stream");
        caught_up(&p, &mut ferry);
        p.compare(&["accounts"]);
        assert_eq!(
            schema_dump(&p.source, &p.source_db),
            schema_dump(&p.target, &p.target_db),
            "{point}"
        );
    }
    let applied = p
        .target_i64("SELECT count(*) FROM ferry.events WHERE kind = 'ddl_applied'")
        .unwrap_or(0);
    // Two messages per deploy (ADD, RENAME), each recorded once.
    assert_eq!(applied, 4, "each schema change applied exactly once");
}

/// `tables.rename` applies to carried schema changes: the source's
/// `public.accounts` is `bank.accts` on the target; columns added and
/// renamed, an index created and dropped, a constraint added all land on
/// `bank.accts` (indexes found in the schema the table moved to).
#[test]
fn schema_changes_follow_tables_rename() {
    follow_tables_rename(PgOptions::new(), target_options());
}

/// The same on PostgreSQL 18, where the comparison includes the names of
/// NOT NULL constraints: the column added `NOT NULL` gets the source's
/// name (`accounts_tier_not_null`), not one made from the target table's
/// name (`accts_tier_not_null`).
#[test]
fn schema_changes_follow_tables_rename_on_18() {
    follow_tables_rename(PgOptions::new().version(18), target_options().version(18));
}

fn follow_tables_rename(source: PgOptions, target: PgOptions) {
    let pg_dump = ferry_testkit::pg_dump_for(18).expect("a pg_dump for 18 (make setup)");
    let p = Migration::new(source, target, SCHEMA2)
        .env("FERRY_POSTGRES_CAPTURE_DDL", "true")
        .env("FERRY_PG_DUMP", pg_dump.to_str().unwrap());
    let config = p.logs.path().join("ferry.toml");
    std::fs::write(
        &config,
        "[tables.rename]\n\"public.accounts\" = \"bank.accts\"\n",
    )
    .unwrap();
    let p = p.arg("--config").arg(config);
    let mut ferry = p.start("run0");
    p.wait_phase(&mut ferry, "stream");
    deploy(
        &p.source_url,
        "ALTER TABLE accounts ADD COLUMN tier text NOT NULL DEFAULT 'basic';
         ALTER TABLE accounts RENAME COLUMN region TO area;
         ALTER TABLE accounts ADD CONSTRAINT tier_known CHECK (tier IN ('basic', 'gold'));
         CREATE INDEX accounts_tier_idx ON accounts (tier);
         CREATE INDEX accounts_area_idx ON accounts (area);
         UPDATE accounts SET tier = 'gold', area = 'us' WHERE id <= 10;",
    );
    deploy(&p.source_url, "DROP INDEX accounts_area_idx;");
    deploy(
        &p.source_url,
        "CREATE TABLE notes (id int PRIMARY KEY, account_id int REFERENCES accounts (id));
         INSERT INTO notes VALUES (1, 5);",
    );
    caught_up(&p, &mut ferry);
    assert_eq!(
        p.target_query(async |c| c
            .query_one(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'public.notes'::regclass AND contype = 'f'",
                &[],
            )
            .await
            .ok()
            .map(|r| r.get::<_, String>(0))),
        Some("FOREIGN KEY (account_id) REFERENCES bank.accts(id)".to_owned()),
        "a new foreign key refers to the renamed target table"
    );
    // Same rows, same columns, same indexes and constraints (names and
    // definitions, the table name aside).
    let shape = "SELECT (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull
                         || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), ''), ', ' ORDER BY a.attnum)
                    FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                   WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped)
                 || ' | ' || (SELECT string_agg(c.relname || ' ' || split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2), ', ' ORDER BY c.relname)
                    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::text::regclass)
                 || ' | ' || (SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ', ' ORDER BY conname)
                    FROM pg_constraint WHERE conrelid = $1::text::regclass)";
    pgsync::runtime().block_on(async {
        let s = pgsync::connect(&p.source_url).await.unwrap();
        let t = pgsync::connect(&p.target_url).await.unwrap();
        let src: String = s
            .query_one(shape, &[&"public.accounts"])
            .await
            .unwrap()
            .get(0);
        let dst: String = t.query_one(shape, &[&"bank.accts"]).await.unwrap().get(0);
        assert_eq!(src, dst);
        if p.source.major() >= 18 {
            assert!(dst.contains("accounts_tier_not_null"), "{dst}");
        }
        assert!(dst.contains("area text"), "{dst}");
        assert!(dst.contains("accounts_tier_idx"), "{dst}");
        assert!(!dst.contains("accounts_area_idx"), "{dst}");
        assert_eq!(
            pgsync::table_digest(&s, "public.accounts").await.unwrap(),
            pgsync::table_digest(&t, "bank.accts").await.unwrap()
        );
    });
}

/// NOT NULL constraint names on PostgreSQL 18 (where NOT NULL is a named
/// constraint and `pg_dump` prints a name that is not the default one):
/// a NOT NULL added under a name of its own, one renamed, a column added
/// with a named NOT NULL (on a table and on a partitioned one, whose
/// partitions take the parent's name), a new table with named ones, one
/// `SET NOT NULL` under the default name, one added `NOT VALID` and
/// validated, one dropped, NOT NULL and CHECK dropped from a partitioned
/// table. Each would leave the target with its own default name (or the
/// old one) if the name were not carried; rows and `pg_dump
/// --schema-only` of both sides are equal.
#[test]
fn not_null_constraint_names_on_18() {
    let pg_dump = ferry_testkit::pg_dump_for(18).expect("a pg_dump for 18 (make setup)");
    let p = Migration::new(
        PgOptions::new().version(18),
        target_options().version(18),
        SCHEMA2,
    )
    .env("FERRY_POSTGRES_CAPTURE_DDL", "true")
    .env("FERRY_PG_DUMP", pg_dump.to_str().unwrap());
    let writer = Writer::start(&p.source_url, write2);
    let mut ferry = p.start("run0");
    p.wait_phase(&mut ferry, "stream");
    writer.wait_for(10);
    let src = p.source_url.clone();
    deploy(
        &src,
        "ALTER TABLE accounts ADD CONSTRAINT name_required NOT NULL name;
         ALTER TABLE accounts RENAME CONSTRAINT accounts_balance_not_null TO balance_required;
         ALTER TABLE accounts ADD COLUMN tier text CONSTRAINT tier_required NOT NULL DEFAULT 'basic';",
    );
    deploy(
        &src,
        "CREATE TABLE notes (id int CONSTRAINT note_id_required NOT NULL PRIMARY KEY,
                             body text CONSTRAINT body_required NOT NULL);
         INSERT INTO notes VALUES (1, 'first');
         CREATE TABLE m_2027 PARTITION OF m FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         ALTER TABLE m ADD COLUMN tag text CONSTRAINT tag_required NOT NULL DEFAULT 't';
         INSERT INTO m VALUES (1, '2027-05-05', 'x');",
    );
    deploy(
        &src,
        "ALTER TABLE accounts ALTER COLUMN region SET NOT NULL;
         ALTER TABLE logs ADD CONSTRAINT msg_required NOT NULL msg NOT VALID;
         INSERT INTO notes VALUES (2, 'second');",
    );
    writer.wait_for(10);
    caught_up(&p, &mut ferry);
    let (s, t) = (
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db),
    );
    assert_eq!(s, t, "schemas differ; ferry log:\n{}", ferry.log());
    for name in [
        "CONSTRAINT name_required NOT NULL",
        "CONSTRAINT balance_required NOT NULL",
        "CONSTRAINT tier_required NOT NULL",
        "CONSTRAINT note_id_required NOT NULL",
        "CONSTRAINT tag_required NOT NULL",
        "msg_required NOT NULL msg NOT VALID",
    ] {
        assert!(t.contains(name), "{name}:\n{t}");
    }
    // Validated, a named one dropped, and constraints of a partitioned
    // table dropped (the source reports its partitions' inherited copies
    // first, which the target drops with the parent's).
    deploy(
        &src,
        "ALTER TABLE logs VALIDATE CONSTRAINT msg_required;
         ALTER TABLE accounts DROP CONSTRAINT name_required;
         ALTER TABLE m ALTER COLUMN tag DROP NOT NULL;
         ALTER TABLE m ADD CONSTRAINT id_positive CHECK (id > 0);",
    );
    deploy(&src, "ALTER TABLE m DROP CONSTRAINT id_positive;");
    writer.wait_for(10);
    writer.stop();
    caught_up(&p, &mut ferry);
    p.compare(&[
        "accounts", "logs", "notes", "m", "m_2025", "m_2026", "m_2027",
    ]);
    let (s, t) = (
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db),
    );
    assert_eq!(s, t, "schemas differ; ferry log:\n{}", ferry.log());
    assert!(t.contains("CONSTRAINT msg_required NOT NULL"), "{t}");
    assert!(!t.contains("name_required"), "{t}");
    assert!(
        !t.contains("tag_required") && !t.contains("id_positive"),
        "{t}"
    );
}

/// Schema changes while `ferry run` starts (capture installed, snapshot,
/// schema copy, load, catch-up): columns added and renamed, tables created
/// and written, indexes created and dropped, every ~150 ms from the start.
/// Each must land either in the load snapshot (the target schema is
/// `pg_dump --snapshot` of it, the load reads its rows although a column
/// was renamed since) or in the stream after it, applied once, in order:
/// then rows and `pg_dump --schema-only` of both sides are equal.
///
/// One run once saw a table created in the first second (`extra3`) with
/// its rows on the source and none on the target: created before the
/// capture was installed and committed after ferry published the tables
/// created since its catalog read. ferry now takes a new snapshot then
/// (reproduced deterministically by
/// `a_table_created_across_the_capture_install_is_loaded_and_streamed`).
#[test]
fn schema_changes_during_the_load() {
    let p = capturing(SCHEMA2);
    let writer = Writer::start(&p.source_url, write2);
    let mut ferry = p.start("run0");
    for n in 0..6 {
        deploy(
            &p.source_url,
            &format!(
                "ALTER TABLE accounts ADD COLUMN x{n} int NOT NULL DEFAULT {n};
                 CREATE TABLE extra{n} (id int PRIMARY KEY, v text);
                 INSERT INTO extra{n} VALUES (1, 'a'), (2, 'b');
                 CREATE INDEX accounts_x{n}_idx ON accounts (x{n});"
            ),
        );
        if n > 0 {
            deploy(
                &p.source_url,
                &format!(
                    "ALTER TABLE accounts RENAME COLUMN x{m} TO y{m}; DROP INDEX accounts_x{m}_idx;
                     UPDATE extra{m} SET v = v || '!';",
                    m = n - 1
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    p.wait_phase(&mut ferry, "stream");
    writer.wait_for(20);
    writer.stop();
    caught_up(&p, &mut ferry);
    let mut tables = vec!["accounts".to_owned(), "logs".to_owned()];
    tables.extend((0..6).map(|n| format!("extra{n}")));
    let names: Vec<&str> = tables.iter().map(String::as_str).collect();
    p.compare(&names);
    let (s, t) = (
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db),
    );
    assert_eq!(s, t, "schemas differ; ferry log:\n{}", ferry.log());
}

/// A large transaction with schema changes in it, streamed by the server
/// before its commit (protocol v2, `logical_decoding_work_mem` small): the
/// DDL messages come out of the streamed-transaction replay at their place.
#[test]
fn schema_changes_inside_a_streamed_transaction() {
    let p = Migration::new(
        PgOptions::new().setting("logical_decoding_work_mem", "64kB"),
        target_options(),
        SCHEMA2,
    )
    .env("FERRY_POSTGRES_CAPTURE_DDL", "true");
    let mut ferry = p.start("run0");
    p.wait_phase(&mut ferry, "stream");
    deploy(
        &p.source_url,
        "BEGIN;
         INSERT INTO logs (account_id, msg) SELECT 1 + g % 200, repeat('m', 200) FROM generate_series(1, 5000) g;
         ALTER TABLE logs ADD COLUMN level text NOT NULL DEFAULT 'info';
         ALTER TABLE logs RENAME COLUMN msg TO message;
         INSERT INTO logs (account_id, message, level) SELECT 1 + g % 200, repeat('n', 200), 'warn' FROM generate_series(1, 5000) g;
         UPDATE logs SET level = 'debug' WHERE id % 7 = 0;
         COMMIT;",
    );
    caught_up(&p, &mut ferry);
    p.compare(&["logs", "accounts"]);
    assert_eq!(
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db)
    );
    let streamed = source_i64(
        &p,
        "SELECT coalesce(sum(stream_txns), 0)::bigint FROM pg_stat_replication_slots",
    );
    assert!(
        streamed > 0,
        "the transaction was streamed before its commit"
    );
}

const SCHEMA3: &str = "
CREATE TABLE items (id int PRIMARY KEY, price numeric NOT NULL,
                    total numeric GENERATED ALWAYS AS (price * 2) STORED, code int NOT NULL);
INSERT INTO items (id, price, code) SELECT g, g, g FROM generate_series(1, 100) g;
CREATE TABLE tags (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);
INSERT INTO tags (name) SELECT 't' || g FROM generate_series(1, 50) g;
CREATE TABLE labels (lid int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
INSERT INTO labels (v) SELECT 'l' || g FROM generate_series(1, 20) g;
";

fn write3(i: u64) -> String {
    format!(
        "INSERT INTO items (id, price, code) VALUES ({n}, {i}, {i});
         UPDATE items SET price = price + 1 WHERE id = {a};",
        n = 1000 + i,
        a = i % 100 + 1
    )
}

/// Identity and generated-expression changes of existing columns, from
/// and into PostgreSQL 17 (`SET EXPRESSION` is 17+): an expression changed
/// (the target recomputes its rows), then dropped (the column keeps its
/// values and is written as a plain column after), an identity added to a
/// column with rows, and a `GENERATED ALWAYS` identity dropped (ferry's
/// record to make it `ALWAYS` again at cutover goes with it). Then rows
/// and schemas are equal. Then the identity kind alone changed (`SET
/// GENERATED ALWAYS` on `items.code` and `labels.lid`, then `SET GENERATED
/// BY DEFAULT` on `labels.lid` again) with an identity option (`SET
/// INCREMENT BY`): the target keeps them `BY DEFAULT` while ferry applies,
/// and the cutover makes `ALWAYS` exactly the source's `ALWAYS` ones
/// (`attidentity` on the target after it), so the schemas are equal after
/// the cutover too.
#[test]
fn identity_and_generated_expression_changes_17() {
    let p = Migration::new(
        PgOptions::new().version(17),
        target_options().version(17),
        SCHEMA3,
    )
    .env("FERRY_POSTGRES_CAPTURE_DDL", "true")
    .env(
        "FERRY_PG_DUMP",
        ferry_testkit::pg_dump_for(17)
            .expect("a pg_dump for 17")
            .to_str()
            .unwrap(),
    );
    let writer = Writer::start(&p.source_url, write3);
    let mut ferry = p.start("run0");
    p.wait_phase(&mut ferry, "stream");
    writer.wait_for(10);
    let overrides = "SELECT count(*)::text FROM ferry.overrides WHERE kind = 'identity' AND object = 'id' AND done_at IS NULL";
    assert_eq!(
        ferry_e2e::target_text(&p.target_url, overrides).as_deref(),
        Some("1"),
        "tags.id is recorded to be made ALWAYS at cutover"
    );
    deploy(
        &p.source_url,
        "ALTER TABLE items ALTER COLUMN total SET EXPRESSION AS (price * 3)",
    );
    deploy(
        &p.source_url,
        "ALTER TABLE items ALTER COLUMN code ADD GENERATED BY DEFAULT AS IDENTITY;
         ALTER TABLE tags ALTER COLUMN id DROP IDENTITY;
         INSERT INTO tags VALUES (1000, 'explicit');",
    );
    writer.wait_for(10);
    deploy(
        &p.source_url,
        "ALTER TABLE items ALTER COLUMN total DROP EXPRESSION;
         UPDATE items SET total = -1 WHERE id <= 10;",
    );
    writer.wait_for(10);
    writer.stop();
    caught_up(&p, &mut ferry);
    p.compare(&["items", "tags"]);
    assert_eq!(
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db),
        "schemas differ; ferry log:\n{}",
        ferry.log()
    );
    let plain: i64 = source_i64(&p, "SELECT count(*) FROM items WHERE total = -1");
    assert_eq!(plain, 10, "total is a plain column on the source now");
    assert_eq!(
        ferry_e2e::target_text(&p.target_url, overrides).as_deref(),
        Some("0"),
        "the dropped identity is not made ALWAYS at cutover; ferry log:\n{}",
        ferry.log()
    );

    // The identity kind alone, and an identity option.
    deploy(
        &p.source_url,
        "ALTER TABLE items ALTER COLUMN code SET GENERATED ALWAYS;
         ALTER TABLE labels ALTER COLUMN lid SET GENERATED ALWAYS, ALTER COLUMN lid SET INCREMENT BY 5;
         INSERT INTO labels (v) VALUES ('always');
         INSERT INTO items (id, price) VALUES (5000, 1);",
    );
    caught_up(&p, &mut ferry);
    let recorded = "SELECT string_agg(object, ',' ORDER BY object) FROM ferry.overrides WHERE kind = 'identity' AND done_at IS NULL";
    assert_eq!(
        ferry_e2e::target_text(&p.target_url, recorded).as_deref(),
        Some("code,lid"),
        "recorded to be made ALWAYS at cutover: items.code, labels.lid; ferry log:\n{}",
        ferry.log()
    );
    deploy(
        &p.source_url,
        "ALTER TABLE labels ALTER COLUMN lid SET GENERATED BY DEFAULT;
         INSERT INTO labels VALUES (500, 'explicit');
         INSERT INTO labels (v) VALUES ('by default');",
    );
    caught_up(&p, &mut ferry);
    assert_eq!(
        ferry_e2e::target_text(&p.target_url, recorded).as_deref(),
        Some("code"),
        "recorded to be made ALWAYS at cutover: items.code only; ferry log:\n{}",
        ferry.log()
    );
    p.fenced_cutover(ferry, "60s");
    p.compare(&["items", "tags", "labels"]);
    let kinds = "SELECT string_agg(attrelid::regclass || '.' || attname || '=' || attidentity::text, ',' ORDER BY attrelid::regclass::text, attname)
                   FROM pg_attribute WHERE attrelid IN ('items'::regclass, 'labels'::regclass, 'tags'::regclass) AND attidentity <> ''";
    assert_eq!(
        ferry_e2e::target_text(&p.target_url, kinds).as_deref(),
        Some("items.code=a,labels.lid=d"),
        "identity kinds on the target after the cutover"
    );
    assert_eq!(
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db),
        "schemas differ after the cutover"
    );
}

/// A table whose `CREATE` ran before ferry installed the DDL capture and
/// whose transaction commits only after ferry published the tables created
/// since its catalog read (the race behind `schema_changes_during_the_load`):
/// the slot waits for that transaction, so its snapshot holds the table
/// outside the publication. ferry publishes it and takes a new snapshot;
/// the row in the snapshot is loaded and the changes after it are carried.
#[test]
fn a_table_created_across_the_capture_install_is_loaded_and_streamed() {
    across_the_capture_install(false);
}

/// The same with a slot created beforehand (`postgres.existing_slot`): it
/// is advanced again, to the new snapshot.
#[test]
fn a_table_created_across_the_capture_install_with_an_existing_slot() {
    across_the_capture_install(true);
}

fn across_the_capture_install(existing_slot: bool) {
    let mut p = capturing(SCHEMA2);
    if existing_slot {
        p = p
            .env("FERRY_POSTGRES_SLOT", "dba_slot")
            .env("FERRY_POSTGRES_EXISTING_SLOT", "true");
        deploy(
            &p.source_url,
            "SELECT pg_create_logical_replication_slot('dba_slot', 'pgoutput')",
        );
    }
    let rt = pgsync::runtime();
    let open = rt.block_on(async {
        let c = pgsync::connect(&p.source_url).await.expect("source");
        c.batch_execute(
            "BEGIN; CREATE TABLE late (id int PRIMARY KEY, v text);
             INSERT INTO late VALUES (1, 'in the snapshot');",
        )
        .await
        .expect("open transaction");
        c
    });
    let mut ferry = p.start("run");
    p.wait_log(&mut ferry, "DDL capture installed");
    rt.block_on(open.batch_execute("COMMIT"))
        .expect("commit after the capture was installed");
    p.wait_phase(&mut ferry, "stream");
    deploy(
        &p.source_url,
        "INSERT INTO late VALUES (2, 'streamed'); UPDATE late SET v = v || '!' WHERE id = 1;",
    );
    caught_up(&p, &mut ferry);
    let rows = ferry_e2e::target_text(
        &p.target_url,
        "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM late",
    );
    assert_eq!(
        rows.as_deref(),
        Some("1:in the snapshot!,2:streamed"),
        "ferry log:\n{}",
        ferry.log()
    );
    p.compare(&["late", "accounts"]);
    assert!(
        ferry.log().contains("not in its publication yet"),
        "{}",
        ferry.log()
    );
}

/// Tables that become published mid-stream already hold rows the stream
/// never carried: a `CREATE TABLE AS` later given a primary key (with rows
/// written while it had none), a keyless table made `REPLICA IDENTITY FULL`
/// in its creating transaction (rows before and after the `ALTER`), and an
/// unlogged table made logged. Each is copied from a new snapshot at the
/// schema change that published it, and its changes after are carried;
/// across a `kill -9` the result stays exact.
#[test]
fn tables_published_mid_stream_are_copied_from_a_snapshot() {
    let p = capturing(SCHEMA2);
    let writer = Writer::start(&p.source_url, write2);
    let mut ferry = p.start("run0");
    p.wait_phase(&mut ferry, "stream");
    writer.wait_for(10);
    let src = p.source_url.clone();
    deploy(
        &src,
        "CREATE TABLE report AS SELECT g AS id, 'r' || g AS v FROM generate_series(1, 3000) g;",
    );
    deploy(
        &src,
        "INSERT INTO report SELECT g, 'keyless ' || g FROM generate_series(3001, 3100) g;
         UPDATE report SET v = 'changed while keyless' WHERE id = 5;",
    );
    deploy(
        &src,
        "CREATE TABLE wide AS SELECT g AS id, 'w' || g AS v FROM generate_series(1, 1000) g;",
    );
    caught_up(&p, &mut ferry);
    let empty = p.target_i64("SELECT count(*) FROM report");
    assert_eq!(
        empty,
        Some(0),
        "the keyless table is created empty on the target"
    );
    // Paused, so the copy's snapshot is taken after the changes that
    // follow the key: they are in the copy, and the stream must drop them
    // (applied again, the UPDATE would append a second '!' and the INSERT
    // would fail on the key).
    assert_eq!(p.ferry(&["pause"]).code, Some(0));
    p.wait_until(&mut ferry, "never paused", || p.status()["paused"] == true);
    deploy(&src, "ALTER TABLE report ADD PRIMARY KEY (id);");
    deploy(
        &src,
        "UPDATE report SET v = v || '!' WHERE id % 10 = 0;
         DELETE FROM report WHERE id > 3050;
         INSERT INTO report VALUES (5000, 'after the key');",
    );
    // Schema changes racing the copy: a column dropped and added again
    // under the same name and type (a copy taken after both, followed by
    // the two changes applied to it, would lose the new values), and a
    // column added and filled.
    deploy(&src, "ALTER TABLE wide ADD PRIMARY KEY (id);");
    deploy(&src, "ALTER TABLE wide DROP COLUMN v;");
    deploy(
        &src,
        "ALTER TABLE wide ADD COLUMN v text; UPDATE wide SET v = 'again ' || id WHERE id <= 500;",
    );
    deploy(
        &src,
        "ALTER TABLE wide ADD COLUMN extra int DEFAULT 7; UPDATE wide SET extra = id WHERE id <= 10;",
    );
    assert_eq!(p.ferry(&["resume"]).code, Some(0));
    deploy(
        &src,
        "CREATE TABLE audit (at int, msg text);
         INSERT INTO audit SELECT g, 'a' || g FROM generate_series(1, 500) g;
         ALTER TABLE audit REPLICA IDENTITY FULL;
         INSERT INTO audit VALUES (501, 'same transaction, after the ALTER');
         UPDATE audit SET msg = 'updated in the same transaction' WHERE at = 2;",
    );
    deploy(
        &src,
        "CREATE UNLOGGED TABLE cache (k int PRIMARY KEY, v text);
         INSERT INTO cache SELECT g, 'c' || g FROM generate_series(1, 200) g;",
    );
    writer.wait_for(10);
    caught_up(&p, &mut ferry);
    ferry.kill9().unwrap();
    deploy(
        &src,
        "DELETE FROM audit WHERE at <= 10;
         UPDATE audit SET msg = 'u' WHERE at = 20;
         UPDATE report SET v = 'after the crash' WHERE id = 1;",
    );
    let mut ferry = p.start("run1");
    p.wait_phase(&mut ferry, "stream");
    writer.wait_for(10);
    writer.stop();
    caught_up(&p, &mut ferry);
    p.compare(&["report", "audit", "wide", "accounts", "logs"]);

    // A crash between the copy and its commit: the copy is redone from a
    // new snapshot after the restart, once.
    ferry.signal_and_wait(libc::SIGTERM, LONG).unwrap();
    deploy(
        &src,
        "ALTER TABLE cache SET LOGGED; UPDATE cache SET v = 'd' WHERE k < 50;",
    );
    crash_at(
        &p,
        "after-apply-before-commit",
        "table published mid-stream copied",
    );
    let mut ferry = p.start("run2");
    p.wait_phase(&mut ferry, "stream");
    deploy(&src, "UPDATE cache SET v = v || '+' WHERE k > 190;");
    caught_up(&p, &mut ferry);
    p.compare(&["report", "audit", "cache", "wide", "accounts", "logs"]);
    let copied = ferry_e2e::target_text(
        &p.target_url,
        "SELECT string_agg(message, E'\\n' ORDER BY message) FROM ferry.events WHERE kind = 'table_copied'",
    )
    .unwrap_or_default();
    for (table, rows) in [
        ("public.report", 3051),
        ("public.audit", 501),
        ("public.cache", 200),
    ] {
        assert!(
            copied.contains(&format!(
                "table {table} published on the source mid-stream: {rows} rows copied"
            )),
            "{table}: {copied}\n{}",
            ferry.log()
        );
    }
    for table in ["report", "audit", "cache"] {
        let times = copied
            .lines()
            .filter(|l| l.contains(&format!("table public.{table} ")))
            .count();
        assert_eq!(times, 1, "{table} copied once: {copied}");
    }
    // wide: copied at its key, then again after each change that preceded
    // that copy's snapshot (emptied where its columns no longer matched).
    let wide = copied
        .lines()
        .filter(|l| l.contains("table public.wide "))
        .count();
    assert!(
        wide >= 2,
        "wide copied again after the racing changes: {copied}"
    );
    // ferry's table list (status, the cutover's counts) has them, with the
    // rows copied; the live status refreshes from the state every few
    // seconds.
    p.wait_until(&mut ferry, "status never listed the copied tables", || {
        let status = p.status();
        [
            ("public.report", 3051),
            ("public.audit", 501),
            ("public.cache", 200),
        ]
        .iter()
        .all(|(t, rows)| {
            status["tables"].as_array().is_some_and(|ts| {
                ts.iter().any(|e| {
                    e["name"] == *t && e["rows_copied"] == *rows && e["state"] == "streaming"
                })
            })
        })
    });
}

/// A load resumed after `kill -9` copies the unfinished table from a new
/// snapshot, later than the schema changes made while ferry was down; the
/// stream then brings those changes: each one that precedes the table's
/// snapshot copies the table again after it (a column added and filled
/// while ferry was down would otherwise end as its default on the target).
#[test]
fn a_load_resumed_after_schema_changes_is_exact() {
    let schema = "
CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g;
ANALYZE big;
CREATE TABLE small (id int PRIMARY KEY, v text);
INSERT INTO small SELECT g, 's' || g FROM generate_series(1, 100) g;
";
    let p = capturing(schema);
    let chunks = [
        ("FERRY_LOAD_CHUNK_ROWS", "30000"),
        ("FERRY_LOAD_PARALLELISM", "1"),
    ];
    let mut ferry = p.start_with("load", &chunks);
    p.wait_first_chunk(&mut ferry);
    // The schema change takes its lock between two chunks of big (the
    // next one waits behind it) and commits once ferry is gone: the load
    // of big is interrupted for sure.
    let rt = pgsync::runtime();
    let open = rt.block_on(async {
        let c = pgsync::connect(&p.source_url).await.expect("source");
        c.batch_execute(
            "BEGIN; ALTER TABLE big ADD COLUMN note text NOT NULL DEFAULT 'x';
             UPDATE big SET note = 'y', v = 'changed' WHERE id <= 1000;",
        )
        .await
        .expect("schema change in an open transaction");
        c
    });
    ferry.kill9().unwrap();
    rt.block_on(open.batch_execute("COMMIT")).expect("commit");
    let (done, total) = (
        p.target_i64("SELECT count(*) FROM ferry.chunks WHERE source_table = 'public.big'")
            .unwrap_or(0),
        p.target_i64(
            "SELECT chunks_total::bigint FROM ferry.tables WHERE source_table = 'public.big'",
        )
        .unwrap_or(0),
    );
    assert!(
        done < total,
        "the load of big was interrupted ({done} of {total} chunks)"
    );
    deploy(&p.source_url, "ALTER TABLE big RENAME COLUMN v TO val;");
    let mut ferry = p.start_with("resume", &chunks);
    p.wait_phase(&mut ferry, "stream");
    deploy(
        &p.source_url,
        "UPDATE big SET note = 'z' WHERE id BETWEEN 2000 AND 2010;",
    );
    caught_up(&p, &mut ferry);
    p.compare(&["big", "small"]);
    assert_eq!(
        schema_dump(&p.source, &p.source_db),
        schema_dump(&p.target, &p.target_db),
        "schemas differ; ferry log:\n{}",
        ferry.log()
    );
    assert!(
        ferry.log().contains("table published mid-stream copied"),
        "big copied again after the changes: {}",
        ferry.log()
    );
}
