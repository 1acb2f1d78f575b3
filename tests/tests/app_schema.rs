//! A web application's schema through `ferry run` and a fenced cutover, via
//! the CLI against real servers, under concurrent writes: uuid keys beside
//! `GENERATED ALWAYS` identity columns (also on a keyless table), audit
//! triggers enabled `ALWAYS` and `REPLICA` and an `ALWAYS` rule, foreign-key
//! linked tables written together while ferry is killed (`kill -9`) during
//! the load more than once, a table renamed into another schema whose serial
//! sequence must be synced under its target name, a writer committing with
//! `synchronous_commit = off` up to the fence, a crash while streaming with
//! the target overrides in place, and sequences the migration
//! user may not read. Every test ends with an exact source/target comparison.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_e2e::Background;
use ferry_e2e::migration::{Migration, target_options};
use ferry_e2e::pgsync::{self, table_digest};
use ferry_testkit::{PgOptions, PgServer};
use tokio_postgres::Client;

const LONG: Duration = Duration::from_secs(240);

/// The application's schema. Tables sort so that the parent `orders` is
/// copied before its child `shipments`.
const APP_SCHEMA: &str = r#"
CREATE TABLE accounts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq bigint GENERATED ALWAYS AS IDENTITY,
    email text NOT NULL,
    balance bigint NOT NULL DEFAULT 0);
CREATE TABLE events (
    n bigint GENERATED ALWAYS AS IDENTITY,
    account uuid,
    kind text NOT NULL);
ALTER TABLE events REPLICA IDENTITY FULL;
CREATE TABLE audit (id bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL, row_id text);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.audit (tbl, op, row_id) VALUES (TG_TABLE_NAME, TG_OP, NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION audit_row();
ALTER TABLE accounts ENABLE ALWAYS TRIGGER accounts_audit;
CREATE TABLE orders (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account uuid NOT NULL REFERENCES accounts(id) ON UPDATE CASCADE,
    total bigint NOT NULL);
CREATE TRIGGER orders_audit AFTER INSERT OR UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION audit_row();
ALTER TABLE orders ENABLE REPLICA TRIGGER orders_audit;
CREATE TABLE shipments (
    id bigserial PRIMARY KEY,
    order_id uuid NOT NULL REFERENCES orders(id),
    filler text);
CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);
CREATE RULE notes_log AS ON INSERT TO notes
    DO ALSO INSERT INTO audit (tbl, op, row_id) VALUES ('notes', 'RULE', NEW.body);
ALTER TABLE notes ENABLE ALWAYS RULE notes_log;
CREATE TABLE tickets (id serial PRIMARY KEY, subject text NOT NULL);
"#;

/// Initial rows: `shipments` is large (many chunks), every row pointing at
/// one of the orders.
fn app_data(shipments: u32) -> String {
    format!(
        r#"
INSERT INTO accounts (email) SELECT 'u' || i || '@example.com' FROM generate_series(1, 2000) i;
INSERT INTO events (account, kind) SELECT id, 'signup' FROM accounts;
INSERT INTO orders (account, total) SELECT id, seq FROM accounts;
INSERT INTO shipments (order_id, filler)
  SELECT o.id, repeat('s', 40) FROM generate_series(1, {shipments}) g
    JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM orders) o ON o.k = g % 2000;
INSERT INTO notes (body) SELECT 'note ' || i FROM generate_series(1, 100) i;
INSERT INTO tickets (subject) SELECT 'ticket ' || i FROM generate_series(1, 500) i;
ANALYZE;
"#
    )
}

/// Tables compared on both sides under the same name.
const SAME_NAME: &[&str] = &[
    "public.accounts",
    "public.events",
    "public.audit",
    "public.orders",
    "public.shipments",
    "public.notes",
];

/// An application writer on its own thread: one transaction after another
/// until stopped, reconnecting when the fence ends its session.
struct AppWriter {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl AppWriter {
    fn start(url: &str, seed: u64, async_commit: bool) -> AppWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (url, s, d) = (url.to_owned(), stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            pgsync::runtime().block_on(app_loop(&url, seed, async_commit, &s, &d));
        });
        AppWriter {
            stop,
            done,
            handle: Some(handle),
        }
    }

    fn committed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn wait_for(&self, n: u64) {
        let start = Instant::now();
        while self.committed() < n {
            assert!(
                start.elapsed() < LONG,
                "the writer committed only {} of {n}",
                self.committed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        self.committed()
    }
}

impl Drop for AppWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn app_loop(url: &str, seed: u64, async_commit: bool, stop: &AtomicBool, done: &AtomicU64) {
    let mut rng = seed;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = pgsync::connect(url).await.ok();
            if let (Some(c), true) = (&client, async_commit) {
                let _ = c.batch_execute("SET synchronous_commit = off").await;
            }
        }
        let Some(c) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        match app_transaction(c, (rng >> 33) % 100).await {
            Ok(()) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            // Fenced (read-only, session ended) or a lost race: try again.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn app_transaction(c: &mut Client, kind: u64) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    match kind {
        // A parent and its child inserted together.
        0..=29 => {
            tx.batch_execute(
                "WITH o AS (INSERT INTO orders (account, total)
                              SELECT id, 1 FROM accounts ORDER BY random() LIMIT 1 RETURNING id)
                 INSERT INTO shipments (order_id, filler) SELECT id, 'new' FROM o",
            )
            .await?;
        }
        // New account (identity + ALWAYS audit trigger) and its event.
        30..=39 => {
            tx.batch_execute(
                "WITH a AS (INSERT INTO accounts (email) VALUES ('new@example.com') RETURNING id)
                 INSERT INTO events (account, kind) SELECT id, 'signup' FROM a",
            )
            .await?;
        }
        // Upserts of rows with an identity ALWAYS column.
        40..=54 => {
            tx.batch_execute(
                "UPDATE accounts SET balance = balance + 1
                  WHERE id = (SELECT id FROM accounts ORDER BY random() LIMIT 1)",
            )
            .await?;
        }
        // The identity itself moves: exact replication needs BY DEFAULT.
        55..=59 => {
            tx.batch_execute(
                "UPDATE accounts SET seq = DEFAULT
                  WHERE id = (SELECT id FROM accounts ORDER BY random() LIMIT 1)",
            )
            .await?;
        }
        // A key change (cascades to orders on the source).
        60..=62 => {
            tx.batch_execute(
                "UPDATE accounts SET id = gen_random_uuid()
                  WHERE id = (SELECT id FROM accounts ORDER BY random() LIMIT 1)",
            )
            .await?;
        }
        // Keyless table with an identity ALWAYS column: update and delete.
        63..=72 => {
            tx.batch_execute(
                "UPDATE events SET kind = 'seen'
                  WHERE n = (SELECT n FROM events WHERE kind = 'signup' ORDER BY random() LIMIT 1);
                 DELETE FROM events
                  WHERE n = (SELECT n FROM events WHERE kind = 'seen' ORDER BY random() LIMIT 1)",
            )
            .await?;
        }
        // A row through the ALWAYS rule; an order update (REPLICA trigger).
        73..=82 => {
            tx.batch_execute(
                "INSERT INTO notes (body) VALUES ('written ' || clock_timestamp());
                 UPDATE orders SET total = total + 1
                  WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)",
            )
            .await?;
        }
        // The renamed table's serial.
        _ => {
            tx.batch_execute("INSERT INTO tickets (subject) VALUES ('new')")
                .await?;
        }
    }
    tx.commit().await
}

/// The source and a target, ferry reading `ferry.toml` in the log
/// directory, which renames `public.tickets` into `support.tickets`.
fn setup(source: PgServer, source_db: String, source_url: String) -> Migration {
    let m = Migration::with_source(source, source_db, source_url, target_options());
    let config = config(&m);
    std::fs::write(
        &config,
        "[tables.rename]\n\"public.tickets\" = \"support.tickets\"\n",
    )
    .unwrap();
    m.arg("--config")
        .arg(config)
        .timeout(LONG)
        .poll(Duration::from_millis(100))
}

fn config(m: &Migration) -> std::path::PathBuf {
    m.logs.path().join("ferry.toml")
}

/// Wait until `shipments` has `n` chunks copied (on a resumed load: from
/// a snapshot other than `after`'s), then `kill -9`. Returns the
/// snapshot position it was loading from (`None`: the first one).
fn kill_during_shipments_load(
    s: &Migration,
    mut ferry: Background,
    n: i64,
    after: Option<Option<String>>,
) -> Option<String> {
    let start = Instant::now();
    loop {
        let (chunks, snapshot, total) = s
            .target_query(async |dst| {
                let chunks: i64 = dst
                    .query_one(
                        "SELECT count(*) FROM ferry.chunks WHERE source_table = 'public.shipments'",
                        &[],
                    )
                    .await
                    .ok()?
                    .get(0);
                let snap: Option<String> = dst
                    .query_opt(
                        "SELECT lsn FROM ferry.table_snapshots WHERE table_name = 'shipments'",
                        &[],
                    )
                    .await
                    .ok()?
                    .map(|r| r.get(0));
                let total: Option<i32> = dst
                    .query_opt(
                        "SELECT chunks_total FROM ferry.tables WHERE source_table = 'public.shipments'",
                        &[],
                    )
                    .await
                    .ok()?
                    .and_then(|r| r.get(0));
                Some((chunks, snap, total))
            })
            .unwrap_or((0, None, None));
        if let Some(total) = total {
            assert!(
                i64::from(total) > n + 2,
                "shipments must be many chunks, has {total}"
            );
        }
        if chunks >= n && after.as_ref().is_none_or(|prev| *prev != snapshot) {
            assert!(
                total.is_some_and(|t| chunks < i64::from(t)),
                "shipments finished loading before the kill:\n{}",
                ferry.log()
            );
            ferry.kill9().unwrap();
            return snapshot;
        }
        if let Some(code) = ferry.exited().unwrap() {
            panic!(
                "ferry exited during the load with {code:?}:\n{}",
                ferry.log()
            );
        }
        assert!(
            start.elapsed() < LONG,
            "shipments never reached {n} chunks:\n{}",
            ferry.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn compare(src: &Client, dst: &Client) {
    pgsync::compare_tables(src, dst, SAME_NAME).await.unwrap();
    let s = table_digest(src, "public.tickets").await.unwrap();
    let d = table_digest(dst, "support.tickets").await.unwrap();
    assert_eq!(s, d, "public.tickets (source) vs support.tickets (target)");
}

async fn cutover_record(dst: &Client) -> serde_json::Value {
    let rec: String = dst
        .query_one(
            "SELECT cutover::text FROM ferry.runs WHERE cutover IS NOT NULL ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    serde_json::from_str(&rec).unwrap()
}

async fn one_i64(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn one_text(c: &Client, sql: &str) -> String {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[test]
fn app_schema_killed_during_load_then_fenced_cutover_is_exact() {
    // Async commits stay unflushed for long: the final position must still
    // cover them (the WAL write position does not).
    let source =
        PgServer::start(PgOptions::new().setting("wal_writer_delay", "10s")).expect("source");
    let sdb = source.create_database("src").unwrap();
    source.psql(&sdb, APP_SCHEMA).unwrap();
    source.psql(&sdb, &app_data(600_000)).unwrap();
    let url = source.url(&sdb);
    let s = setup(source, sdb, url);

    let sync_writer = AppWriter::start(&s.source_url, 1, false);
    let async_writer = AppWriter::start(&s.source_url, 2, true);
    let async_writer2 = AppWriter::start(&s.source_url, 3, true);
    sync_writer.wait_for(50);
    let load = [
        ("FERRY_LOAD_CHUNK_ROWS", "30000"),
        ("FERRY_LOAD_PARALLELISM", "2"),
    ];

    // Killed twice while the child table loads: orders stays at the first
    // snapshot, shipments comes from the third, holding rows whose parents
    // reach the target only during catch-up.
    let first = s.start_with("load-1", &load);
    let snap = kill_during_shipments_load(&s, first, 2, None);
    sync_writer.wait_for(sync_writer.committed() + 100);
    let second = s.start_with("load-2", &load);
    let snap = kill_during_shipments_load(&s, second, 2, Some(snap));
    assert!(
        snap.is_some(),
        "the second run reloaded shipments from a new snapshot"
    );
    sync_writer.wait_for(sync_writer.committed() + 100);
    let mut ferry = s.start_with("load-3", &load);
    s.wait_state_phase(&mut ferry, "stream");
    let log = ferry.log();
    assert!(
        log.contains("resuming the full load from a new snapshot"),
        "{log}"
    );
    assert!(log.contains("foreign key validated"), "{log}");
    // shipments is ahead of orders until catch-up: its keys wait for it.
    assert!(
        !log.contains("validating foreign keys while catching up"),
        "{log}"
    );

    let during = s
        .target_query(async |dst| {
            // While applying: identities BY DEFAULT, ALWAYS/REPLICA triggers and rules off,
            // foreign keys validated once catch-up reached one position.
            let identity = one_text(
                dst,
                "SELECT string_agg(attidentity::text, ',' ORDER BY attrelid::regclass::text)
                   FROM pg_attribute WHERE attname IN ('seq', 'n') AND attrelid IN ('public.accounts'::regclass, 'public.events'::regclass)",
            )
            .await;
            let triggers = one_text(
                dst,
                "SELECT string_agg(tgname || '=' || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger WHERE NOT tgisinternal",
            )
            .await;
            let rule = one_text(dst, "SELECT ev_enabled::text FROM pg_rewrite WHERE rulename = 'notes_log'").await;
            let fk: bool = dst
                .query_one(
                    "SELECT convalidated FROM pg_constraint WHERE conname = 'shipments_order_id_fkey'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            Some((identity, triggers, rule, fk))
        })
        .unwrap();
    assert_eq!(
        during,
        (
            "d,d".to_owned(),
            "accounts_audit=D,orders_audit=D".to_owned(),
            "D".to_owned(),
            true
        )
    );

    // A crash while the overrides are in place: the restart keeps them
    // (nothing fires twice) and the cutover still puts them back.
    sync_writer.wait_for(sync_writer.committed() + 100);
    ferry.kill9().unwrap();
    let mut ferry = s.start("restart");
    s.wait_state_phase(&mut ferry, "stream");

    let seen = async_writer.committed();
    async_writer.wait_for(seen + 300);
    s.fenced_cutover(ferry, "60s");
    assert!(sync_writer.stop() > 0);
    assert!(async_writer.stop() > 0);
    assert!(async_writer2.stop() > 0);

    pgsync::runtime().block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        // Fenced: every commit the writers got (async ones too) is on the
        // target, and no audit row was written twice (audit is compared too).
        compare(&src, &dst).await;

        // Restored as on the source, and listed in the record.
        let identity = one_text(
            &dst,
            "SELECT string_agg(attidentity::text, ',') FROM pg_attribute WHERE attname IN ('seq', 'n') AND attrelid IN ('public.accounts'::regclass, 'public.events'::regclass)",
        )
        .await;
        assert_eq!(identity, "a,a");
        let triggers = one_text(
            &dst,
            "SELECT string_agg(tgname || '=' || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger WHERE NOT tgisinternal",
        )
        .await;
        assert_eq!(triggers, "accounts_audit=A,orders_audit=R");
        let rule = one_text(&dst, "SELECT ev_enabled::text FROM pg_rewrite WHERE rulename = 'notes_log'").await;
        assert_eq!(rule, "A");
        let rec = cutover_record(&dst).await;
        assert_eq!(rec["outcome"], "done", "{rec}");
        let mut restored: Vec<String> = rec["restored"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        restored.sort();
        assert_eq!(
            restored,
            [
                "identity public.accounts.seq: GENERATED ALWAYS",
                "identity public.events.n: GENERATED ALWAYS",
                "rule notes_log on public.notes: ENABLE ALWAYS",
                "trigger accounts_audit on public.accounts: ENABLE ALWAYS",
                "trigger orders_audit on public.orders: ENABLE REPLICA",
            ],
            "{rec}"
        );

        // Every sequence synced, the renamed table's under its target name.
        let found = one_i64(
            &src,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE relkind = 'S' AND nspname = 'public'",
        )
        .await;
        assert_eq!(found, 6);
        assert_eq!(rec["sequences_synced"], 6, "{rec}");
        assert!(
            rec["steps"].to_string().contains("synced 6 of 6 sequences"),
            "{rec}"
        );
        for (table, column, insert) in [
            ("support.tickets", "id", "INSERT INTO support.tickets (subject) VALUES ('after') RETURNING id::bigint"),
            ("public.shipments", "id", "INSERT INTO shipments (order_id) SELECT id FROM orders LIMIT 1 RETURNING id"),
            ("public.accounts", "seq", "INSERT INTO accounts (email) VALUES ('after') RETURNING seq"),
            ("public.events", "n", "INSERT INTO events (kind) VALUES ('after') RETURNING n"),
            ("public.audit", "id", "INSERT INTO audit (tbl, op) VALUES ('after', 'x') RETURNING id"),
        ] {
            let source_table = table.replace("support.", "public.");
            let max = one_i64(&src, &format!("SELECT max({column})::bigint FROM {source_table}")).await;
            let new = one_i64(&dst, insert).await;
            assert!(new > max, "{table}.{column}: the target's next value {new} must be past the source's {max}");
        }
        let phase = one_text(&dst, "SELECT phase FROM ferry.pipeline").await;
        assert_eq!(phase, "done");
    });
}

#[test]
fn unreadable_sequence_is_flagged_by_plan_and_fails_the_cutover() {
    let source = PgServer::start(PgOptions::new()).expect("source");
    let sdb = source.create_database("src").unwrap();
    source
        .create_role("migrator", "pw", "LOGIN REPLICATION")
        .unwrap();
    source.create_role("billing", "pw", "NOLOGIN").unwrap();
    source
        .psql(
            &sdb,
            &format!(
                "ALTER DATABASE {sdb} OWNER TO migrator;
                 CREATE SEQUENCE invoice_no_seq;
                 ALTER SEQUENCE invoice_no_seq OWNER TO billing;
                 SET ROLE migrator;
                 CREATE TABLE invoices (id bigint PRIMARY KEY DEFAULT nextval('invoice_no_seq'), amount int NOT NULL);
                 CREATE TABLE tickets (id serial PRIMARY KEY, subject text NOT NULL);
                 RESET ROLE;
                 INSERT INTO invoices (amount) SELECT i FROM generate_series(1, 300) i;
                 INSERT INTO tickets (subject) SELECT 't' || i FROM generate_series(1, 10) i;"
            ),
        )
        .unwrap();
    let admin_url = source.url(&sdb);
    let port = source.port();
    let s = setup(
        source,
        sdb.clone(),
        format!("postgres://migrator:pw@127.0.0.1:{port}/{sdb}"),
    );

    // Only the two tables: invoice_no_seq is carried because the invoices
    // default uses it (the filter does not name it).
    std::fs::write(
        config(&s),
        "[tables]\ninclude = [\"public.invoices\", \"public.tickets\"]\n\n[tables.rename]\n\"public.tickets\" = \"support.tickets\"\n",
    )
    .unwrap();
    let plan = s.ferry(&["plan"]);
    assert_ne!(plan.code, Some(0), "{}", plan.all());
    assert!(
        plan.stdout
            .contains("no SELECT on sequence public.invoice_no_seq"),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout
            .contains("GRANT SELECT ON SEQUENCE \"public\".\"invoice_no_seq\""),
        "{}",
        plan.all()
    );

    // `ferry run` refuses what `plan` refuses, before creating anything.
    let refused = s.start("refused");
    let code = refused.wait(Duration::from_secs(60)).unwrap();
    let log = std::fs::read_to_string(s.logs.path().join("refused.log")).unwrap();
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("no SELECT on sequence public.invoice_no_seq"),
        "{log}"
    );
    let rt = pgsync::runtime();
    let admin = rt.block_on(pgsync::connect(&admin_url)).unwrap();
    let slots = rt.block_on(one_i64(&admin, "SELECT count(*) FROM pg_replication_slots"));
    assert_eq!(slots, 0, "a refused run created a slot");

    // With the privilege the run starts; taken away again before the
    // cutover, the cutover must fail loudly instead of skipping it.
    rt.block_on(admin.batch_execute("GRANT SELECT ON SEQUENCE invoice_no_seq TO migrator"))
        .unwrap();
    let mut ferry = s.start("run");
    s.wait_state_phase(&mut ferry, "stream");
    rt.block_on(admin.batch_execute(
        "REVOKE SELECT ON SEQUENCE invoice_no_seq FROM migrator;
         INSERT INTO invoices (amount) SELECT i FROM generate_series(1, 50) i",
    ))
    .unwrap();

    // A dry run already says so.
    let dry = s.ferry(&["cutover", "--dry-run", "--max-lag", "60s"]);
    assert_eq!(dry.code, Some(2), "{}", dry.all());
    assert!(
        dry.stdout.contains(
            "the cutover would fail: the source user may not read sequence public.invoice_no_seq"
        ),
        "{}",
        dry.all()
    );

    // The cutover reads every sequence or fails naming it; replication goes on.
    let cut = s.ferry(&["cutover", "--max-lag", "60s", "--timeout", "60s"]);
    assert_ne!(cut.code, Some(0), "{}", cut.all());
    assert!(!cut.stdout.contains("cutover: done"), "{}", cut.all());
    let text = format!("{}{}", cut.stdout, cut.stderr);
    assert!(
        text.contains("may not read sequence public.invoice_no_seq"),
        "{}",
        cut.all()
    );
    assert!(text.contains("GRANT SELECT ON SEQUENCE"), "{}", cut.all());
    assert!(ferry.exited().unwrap().is_none(), "{}", ferry.log());

    // With the privilege, the same cutover syncs both sequences.
    rt.block_on(admin.batch_execute(
        "GRANT SELECT ON SEQUENCE invoice_no_seq TO migrator;
         INSERT INTO invoices (amount) VALUES (1);",
    ))
    .unwrap();
    s.cutover(ferry, &["--max-lag", "60s", "--timeout", "60s"]);
    rt.block_on(async {
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        let rec = cutover_record(&dst).await;
        assert_eq!(rec["sequences_synced"], 2, "{rec}");
        pgsync::compare_tables(&admin, &dst, &["public.invoices"])
            .await
            .unwrap();
        let max = one_i64(&admin, "SELECT max(id) FROM invoices").await;
        let new = one_i64(
            &dst,
            "INSERT INTO invoices (amount) VALUES (0) RETURNING id",
        )
        .await;
        assert!(
            new > max,
            "target invoice_no_seq at {new}, source max {max}"
        );
    });
}
