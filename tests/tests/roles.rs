//! Managed-service roles: RDS/Aurora have no superuser. The whole migration
//! through the CLI — plan, run, a `kill -9` during the load and the resume,
//! status, a fenced cutover under writes, cleanup — with a source role that
//! has `REPLICATION`, owns the application's tables and database and is a
//! member of `pg_signal_backend` (what `--fence` needs), but is not a
//! superuser; the application writes as an ordinary role too.

use std::time::{Duration, Instant};

use ferry_e2e::migration::{LONG, Migration, OwnerSource, role_url, target_options};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_e2e::run;
use ferry_testkit::{PgOptions, PgServer};

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];
const ACCOUNTS: u32 = 100_000;
const APP: &str = "app_owner";
const APP_PW: &str = "app-owner-pw";

/// A migration from `source_url` (a role of `source`) to a new target;
/// waits poll every 100 ms.
fn migration(source: PgServer, sdb: String, source_url: String) -> Migration {
    Migration::with_source(source, sdb, source_url, target_options())
        .poll(Duration::from_millis(100))
}

#[test]
fn whole_migration_with_a_source_role_that_is_not_a_superuser() {
    let owner = OwnerSource::start(PgOptions::new(), APP, APP_PW);
    let source = &owner.server;
    // The application's tables belong to the application's role.
    source.psql_conninfo(&owner.conninfo, BENCH_SCHEMA).unwrap();
    source
        .psql_conninfo(&owner.conninfo, &pgsync::bench_data(ACCOUNTS, 300))
        .unwrap();
    let owners = source
        .psql(
            &owner.db,
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
        )
        .unwrap();
    assert_eq!(owners.trim(), APP);
    let is_super = source
        .psql(
            "postgres",
            &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{APP}'"),
        )
        .unwrap();
    assert_eq!(is_super.trim(), "f");

    let bystander_url = source.url("postgres");
    let s = owner
        .migration(target_options())
        .poll(Duration::from_millis(100));

    // plan
    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("replication privilege"))
        .unwrap_or_else(|| panic!("{}", plan.stdout));
    assert!(line.starts_with("  ok"), "{line}");

    // run, killed during the load, resumed
    let mut writer = Writer::start(&s.source_url, ACCOUNTS);
    writer.wait_for(20, LONG).unwrap();
    let chunks = [
        ("FERRY_LOAD_CHUNK_ROWS", "2000"),
        ("FERRY_LOAD_PARALLELISM", "1"),
    ];
    let mut ferry = s.start_with("load", &chunks);
    let rt = pgsync::runtime();
    s.wait_first_chunk(&mut ferry);
    ferry.kill9().unwrap();
    let mut ferry = s.start_with("resume", &chunks);
    s.wait_phase(&mut ferry, "stream");
    assert!(
        ferry
            .log()
            .contains("resuming the full load from a new snapshot"),
        "{}",
        ferry.log()
    );

    // status
    let v = s.status();
    assert_eq!(v["phase"], "stream", "{v}");
    writer.wait_for(writer.committed() + 100, LONG).unwrap();

    // fenced cutover under writes
    // A superuser session in another database of the server: the fence
    // must neither end it nor try to (the role may not end a superuser's).
    let bystander = rt.block_on(pgsync::connect(&bystander_url)).unwrap();
    s.fenced_cutover(ferry, "60s");
    let alive: i32 = rt
        .block_on(bystander.query_one("SELECT 1", &[]))
        .expect("the session in another database survives the fence")
        .get(0);
    assert_eq!(alive, 1);
    let _ = writer.stop();
    s.compare(BENCH_TABLES);

    // cleanup
    let clean = s.ferry(&["cleanup"]);
    assert_eq!(clean.code, Some(0), "{}", clean.all());
    rt.block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let left: i64 = src
            .query_one(
                "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "slot and publication are gone");
    });
}

/// A publication a DBA created beforehand, for a role that may read the
/// tables but not publish them: `ferry plan` checks that it covers every
/// selected table with insert, update, delete and truncate (and names the
/// fix when not); ferry uses it as is and neither cutover nor cleanup drops it.
#[test]
fn a_publication_created_beforehand_is_checked_used_and_kept() {
    const MIG: &str = "migrator";
    const MIG_PW: &str = "migrator-pw";
    let source = PgServer::start(PgOptions::new()).expect("source");
    let sdb = source.create_database("src").unwrap();
    source.psql(&sdb, BENCH_SCHEMA).unwrap();
    source.psql(&sdb, &pgsync::bench_data(20_000, 200)).unwrap();
    source
        .create_role(MIG, MIG_PW, "LOGIN REPLICATION NOSUPERUSER")
        .unwrap();
    source
        .psql(
            &sdb,
            &format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {MIG};
                 GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {MIG};
                 CREATE PUBLICATION app_pub FOR TABLE branches, tellers, accounts, history
                   WITH (publish = 'insert, update, delete');"
            ),
        )
        .unwrap();
    let url = role_url(&source, MIG, MIG_PW, &sdb);
    let s = migration(source, sdb, url).env("FERRY_POSTGRES_PUBLICATION", "app_pub");
    let sdb = &s.source_db;

    // Not covering docs, nor truncate: refused with both fixes.
    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(2), "{}", plan.all());
    assert!(
        plan.stdout.contains(
            "publication 'app_pub' was created beforehand and does not publish public.docs; does not publish truncate"
        ),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("fix: ALTER PUBLICATION \"app_pub\" ADD TABLE public.docs; ALTER PUBLICATION \"app_pub\" SET (publish = 'insert, update, delete, truncate')"),
        "{}",
        plan.stdout
    );
    s.source
        .psql(
            sdb,
            "ALTER PUBLICATION app_pub ADD TABLE docs;
             ALTER PUBLICATION app_pub SET (publish = 'insert, update, delete, truncate');",
        )
        .unwrap();
    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    assert!(
        plan.stdout.contains(
            "publication 'app_pub' was created beforehand: used as is and never dropped by ferry"
        ),
        "{}",
        plan.stdout
    );

    // Run under writes, stop the writes, cut over, clean up.
    let mut writer = Writer::start(&s.source.url(sdb), 20_000);
    writer.wait_for(20, LONG).unwrap();
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    writer.wait_for(writer.committed() + 100, LONG).unwrap();
    writer.stop().unwrap();
    s.cutover(ferry, &["--max-lag", "60s", "--timeout", "120s"]);
    let clean = s.ferry(&["cleanup"]);
    assert_eq!(clean.code, Some(0), "{}", clean.all());
    let rt = pgsync::runtime();
    rt.block_on(async {
        let src = pgsync::connect(&s.source.url(sdb)).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        pgsync::compare_tables(&src, &dst, BENCH_TABLES)
            .await
            .unwrap();
        let kept: i64 = src
            .query_one(
                "SELECT count(*) FROM pg_publication WHERE pubname = 'app_pub'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(kept, 1, "the DBA's publication is kept");
        let slots: i64 = src
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(slots, 0, "ferry's slot is dropped");
    });
}

const TARGET_ROLE: &str = "migrator_t";
const TARGET_PW: &str = "migrator-t-pw";
const APP_TABLES: &[&str] = &["parent", "child", "audit"];

/// Triggers in every enabled state, and a parent/child foreign key.
const APP_SCHEMA: &str = r#"
CREATE TABLE parent (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text NOT NULL);
CREATE TABLE child (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    parent_id bigint NOT NULL REFERENCES parent (id) ON DELETE CASCADE,
                    qty int NOT NULL);
CREATE TABLE audit (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    tbl text NOT NULL, ref bigint NOT NULL, op text NOT NULL);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (tbl, ref, op) VALUES (TG_TABLE_NAME, NEW.id, TG_OP);
  RETURN NEW;
END $$;
CREATE FUNCTION must_not_fire() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'trigger % on % must not fire', TG_NAME, TG_TABLE_NAME;
END $$;
CREATE TRIGGER child_audit AFTER INSERT OR UPDATE ON child FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER parent_always AFTER INSERT ON parent FOR EACH ROW EXECUTE FUNCTION audit_row();
ALTER TABLE parent ENABLE ALWAYS TRIGGER parent_always;
CREATE TRIGGER child_replica BEFORE INSERT ON child FOR EACH ROW EXECUTE FUNCTION must_not_fire();
ALTER TABLE child ENABLE REPLICA TRIGGER child_replica;
CREATE TRIGGER parent_off BEFORE INSERT ON parent FOR EACH ROW EXECUTE FUNCTION must_not_fire();
ALTER TABLE parent DISABLE TRIGGER parent_off;
WITH p AS (INSERT INTO parent (name) SELECT 'p' || g FROM generate_series(1, 2000) g RETURNING id)
INSERT INTO child (parent_id, qty) SELECT id, g FROM p, generate_series(1, 2) g;
"#;

/// One application transaction: a parent with two children, an update, and
/// now and then a parent deleted with its children (cascade).
const APP_TXN: &str = "BEGIN;
WITH p AS (INSERT INTO parent (name) VALUES ('w') RETURNING id)
INSERT INTO child (parent_id, qty) SELECT id, g FROM p, generate_series(1, 2) g;
UPDATE child SET qty = qty + 1 WHERE id = (SELECT max(id) - 3 FROM child);
DELETE FROM parent WHERE id = (SELECT max(id) - 2 FROM parent) AND (SELECT max(id) FROM parent) % 5 = 0;
COMMIT;";

struct AppWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    handle: std::thread::JoinHandle<()>,
}

impl AppWriter {
    fn start(url: &str) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (url, s, d) = (url.to_owned(), stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            pgsync::runtime().block_on(async {
                // Ends at stop, or when the fence ends the session.
                let Ok(c) = pgsync::connect(&url).await else {
                    return;
                };
                while !s.load(Ordering::Relaxed) {
                    if c.batch_execute(APP_TXN).await.is_err() {
                        return;
                    }
                    d.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        });
        AppWriter { stop, done, handle }
    }

    fn wait_for(&self, n: u64) {
        let t = Instant::now();
        while self.done.load(std::sync::atomic::Ordering::Relaxed) < n {
            assert!(!self.handle.is_finished(), "the application writer stopped");
            assert!(t.elapsed() < LONG, "the application writer is stuck");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn committed(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

const TRIGGERS: &str = "SELECT c.relname || '.' || t.tgname || '=' || t.tgenabled::text
   FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  WHERE NOT t.tgisinternal ORDER BY 1";
const FOREIGN_KEYS: &str =
    "SELECT conrelid::regclass::text || ' ' || conname || ' ' || convalidated::text
        || ' ' || pg_get_constraintdef(oid)
   FROM pg_constraint WHERE contype = 'f' ORDER BY 1";

async fn lines(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn audits(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM audit", &[])
        .await
        .unwrap()
        .get(0)
}

/// The target role is not a superuser and may not set
/// `session_replication_role` (RDS without `rds_superuser`): it owns the
/// target database. `plan` says what ferry does instead; ferry keeps the
/// triggers that would fire disabled and the foreign keys dropped while it
/// applies, survives a `kill -9` during the stream, and the fenced cutover
/// puts every trigger back in its original state and every foreign key back,
/// validated: no audit row doubled, and the application's first writes on
/// the target fire the triggers and the foreign key again.
#[test]
fn whole_migration_with_a_target_role_that_cannot_set_session_replication_role() {
    let owner = OwnerSource::start(PgOptions::new(), APP, APP_PW);
    owner
        .server
        .psql_conninfo(&owner.conninfo, APP_SCHEMA)
        .unwrap();
    let mut s = owner
        .migration(target_options())
        .poll(Duration::from_millis(100));
    // ferry reaches the target as a role that owns the database.
    s.target
        .create_role(TARGET_ROLE, TARGET_PW, "LOGIN NOSUPERUSER")
        .unwrap();
    s.target
        .psql(
            "postgres",
            &format!("ALTER DATABASE {} OWNER TO {TARGET_ROLE}", s.target_db),
        )
        .unwrap();
    s.target_url = role_url(&s.target, TARGET_ROLE, TARGET_PW, &s.target_db);
    let rt = pgsync::runtime();

    // plan: not refused; says what happens instead.
    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("session_replication_role"))
        .unwrap_or_else(|| panic!("{}", plan.stdout));
    assert!(line.trim_start().starts_with("WARN"), "{line}");
    assert!(line.contains("no-replica-role mode"), "{line}");
    assert!(line.contains("DISABLE TRIGGER"), "{line}");

    // run under writes; kill -9 during the stream; resume.
    let writer = AppWriter::start(&s.source_url);
    writer.wait_for(20);
    let mut ferry = s.start("run");
    s.wait_phase(&mut ferry, "stream");
    let log = ferry.log();
    assert!(log.contains("no-replica-role mode"), "{log}");
    assert!(
        log.contains("foreign key dropped on the target until cutover"),
        "{log}"
    );
    rt.block_on(async {
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        assert_eq!(
            lines(&dst, TRIGGERS).await,
            [
                "child.child_audit=D",
                "child.child_replica=R",
                "parent.parent_always=D",
                "parent.parent_off=D"
            ],
            "while ferry applies"
        );
        assert!(lines(&dst, FOREIGN_KEYS).await.is_empty());
    });
    writer.wait_for(writer.committed() + 50);
    ferry.kill9().unwrap();
    writer.wait_for(writer.committed() + 50);
    let mut ferry = s.start("resume");
    s.wait_phase(&mut ferry, "stream");
    writer.wait_for(writer.committed() + 100);

    // fenced cutover under writes
    let cut = s.fenced_cutover(ferry, "60s");
    assert!(
        cut.stdout
            .contains("foreign key child_parent_id_fkey on public.child: re-created"),
        "{}",
        cut.all()
    );
    let run_log = std::fs::read_to_string(s.logs.path().join("resume.log")).unwrap();
    // Validated once the target is released, by the run before it exits.
    assert!(run_log.contains("foreign key validated"), "{run_log}");
    writer.stop();

    rt.block_on(async {
        let src = pgsync::connect(&s.source_url).await.unwrap();
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        // Exact, audit rows included: no trigger fired for replicated rows.
        pgsync::compare_tables(&src, &dst, APP_TABLES).await.unwrap();
        // Every trigger in its original state, every key back and validated.
        let triggers = lines(&dst, TRIGGERS).await;
        assert_eq!(triggers, lines(&src, TRIGGERS).await);
        assert_eq!(
            triggers,
            [
                "child.child_audit=O",
                "child.child_replica=R",
                "parent.parent_always=A",
                "parent.parent_off=D"
            ]
        );
        let fks = lines(&dst, FOREIGN_KEYS).await;
        assert_eq!(fks, lines(&src, FOREIGN_KEYS).await);
        assert_eq!(
            fks,
            ["child child_parent_id_fkey true FOREIGN KEY (parent_id) REFERENCES parent(id) ON DELETE CASCADE"]
        );

        // The application's first writes on the target fire them again.
        let before = audits(&dst).await;
        let pid: i64 = dst
            .query_one("INSERT INTO parent (name) VALUES ('app') RETURNING id", &[])
            .await
            .unwrap()
            .get(0);
        dst.execute(
            "INSERT INTO child (parent_id, qty) VALUES ($1, 1)",
            &[&pid],
        )
        .await
        .unwrap();
        assert_eq!(audits(&dst).await, before + 2, "ALWAYS and ORIGIN triggers fire");
        let err = dst
            .execute(
                "INSERT INTO child (parent_id, qty) VALUES (-1, 1)",
                &[],
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION),
            "{err}"
        );
        dst.execute("DELETE FROM parent WHERE id = $1", &[&pid])
            .await
            .unwrap();
        let orphans: i64 = dst
            .query_one("SELECT count(*) FROM child WHERE parent_id = $1", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert_eq!(orphans, 0, "ON DELETE CASCADE acts again");

        // A crash between the cutover's commit and the validation leaves
        // the key NOT VALID with its record pending: the next run finishes.
        dst.batch_execute(
            "ALTER TABLE child DROP CONSTRAINT child_parent_id_fkey;
             ALTER TABLE child ADD CONSTRAINT child_parent_id_fkey FOREIGN KEY (parent_id)
                 REFERENCES parent (id) ON DELETE CASCADE NOT VALID;
             UPDATE ferry.overrides SET done_at = NULL WHERE kind = 'foreign_key';",
        )
        .await
        .unwrap();
    });
    let again = run(s.cmd().env("FERRY_LOG", "info").arg("run")).unwrap();
    assert_eq!(again.code, Some(0), "{}", again.all());
    assert!(
        again.all().contains("foreign key validated"),
        "{}",
        again.all()
    );
    assert!(again.all().contains("already cut over"), "{}", again.all());
    rt.block_on(async {
        let dst = pgsync::connect(&s.target_url).await.unwrap();
        assert_eq!(
            lines(&dst, FOREIGN_KEYS).await,
            ["child child_parent_id_fkey true FOREIGN KEY (parent_id) REFERENCES parent(id) ON DELETE CASCADE"]
        );
    });

    // cleanup
    let clean = s.ferry(&["cleanup"]);
    assert_eq!(clean.code, Some(0), "{}", clean.all());
}
