//! A switch through the proxy ([`Proxy::hold`], [`Proxy::release`] with
//! `switch`), as `ferry cutover --via-proxy` does it, with the source and
//! the target two databases of one server (`current_database()` tells
//! which answered):
//!
//! - the session state that moves with a session is what PostgreSQL kept:
//!   `SET`s outside transactions and in committed ones, not `SET LOCAL`,
//!   not those rolled back (whole, to a savepoint, or in a failed implicit
//!   transaction), in the simple and the extended protocol;
//! - state set other than by a `SET` statement — `set_config(…)` from the
//!   client, in a `DO` block or inside functions (custom `x.y` settings
//!   too), `SET SESSION CHARACTERISTICS`, role and session user, `LISTEN` —
//!   moves as PostgreSQL kept it: not what a function's `SET` clause or a
//!   rolled-back transaction undid;
//! - a client that pipelines (several extended-protocol batches sent
//!   without waiting, from several tasks sharing one tokio-postgres
//!   connection) is held and switched without an error, each statement
//!   running exactly once, on the database its answer names.

use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::{BackendConfig, ClientAuth, Mode, NoReplication, Proxy, Settings, Side};
use ferry_testkit::{ADMIN_PASSWORD, ADMIN_USER, PgOptions, PgServer};
use tokio::net::TcpListener;

const USER: &str = "app";
const PASSWORD: &str = "switch-pw-1";

fn backend(pg: &PgServer, db: &str, side: Side) -> BackendConfig {
    BackendConfig {
        side,
        host: "127.0.0.1".into(),
        port: pg.port(),
        user: ADMIN_USER.into(),
        password: Some(ADMIN_PASSWORD.into()),
        database: db.into(),
        tls: None,
        connect_timeout: Duration::from_secs(30),
    }
}

async fn start_proxy(pg: &PgServer, source: &str, target: &str) -> (Arc<Proxy>, String) {
    let settings = Settings {
        auth: ClientAuth::Password {
            user: USER.into(),
            password: PASSWORD.into(),
        },
        tls: None,
        source: backend(pg, source, Side::Source),
        target: backend(pg, target, Side::Target),
        mode: Mode::Source,
        sample_rate: 0.0,
        mirror_workers: 1,
        mirror_queue: 16,
        max_read_lag: Duration::from_secs(5),
    };
    let proxy = Proxy::new(settings, Arc::new(NoReplication)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = proxy.clone();
    tokio::spawn(async move {
        ferry_proxy::serve(p, listener, std::future::pending())
            .await
            .unwrap();
    });
    let url = format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/{source}");
    (proxy, url)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Switch every proxied session to the target (idle sessions at once).
async fn switch(proxy: &Proxy) {
    let started = proxy.hold(Duration::from_secs(60)).await.unwrap();
    proxy.release(started, Some(Mode::Target), "test");
}

const SETTINGS: &[(&str, &str)] = &[
    ("a", "outside"),
    ("b", "committed, one query"),
    ("c", "committed"),
    ("d", ""),
    ("e", ""),
    ("f", "before the savepoint"),
    ("g", ""),
    ("h", ""),
    ("i", "extended"),
    ("j", ""),
    ("k", "extended, committed"),
];

/// `current_database()` and every `ferry.*` setting of [`SETTINGS`].
async fn session_state(c: &tokio_postgres::Client) -> (String, Vec<(String, String)>) {
    let columns: Vec<String> = SETTINGS
        .iter()
        .map(|(k, _)| format!("coalesce(current_setting('ferry.{k}', true), '')"))
        .collect();
    let row = c
        .query_one(
            &format!("SELECT current_database()::text, {}", columns.join(", ")),
            &[],
        )
        .await
        .unwrap();
    let values = SETTINGS
        .iter()
        .enumerate()
        .map(|(i, (k, _))| ((*k).to_owned(), row.get::<_, String>(i + 1)))
        .collect();
    (row.get(0), values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_session_state_postgres_kept_moves_to_the_target() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (src, tgt) = (
        pg.create_database("src").unwrap(),
        pg.create_database("tgt").unwrap(),
    );
    let (proxy, url) = start_proxy(&pg, &src, &tgt).await;
    let c = connect(&url).await;
    let simple = [
        "SET ferry.a = 'outside'",
        "BEGIN; SET ferry.b = 'committed, one query'; COMMIT",
        "BEGIN",
        "SET ferry.c = 'committed'",
        "SET LOCAL ferry.d = 'local'",
        "COMMIT",
        "BEGIN",
        "SET ferry.e = 'rolled back'",
        "ROLLBACK",
        "BEGIN",
        "SET ferry.f = 'before the savepoint'",
        "SAVEPOINT s1",
        "SET ferry.f = 'after the savepoint'",
        "ROLLBACK TO SAVEPOINT s1",
        "COMMIT",
        "BEGIN",
        "SET ferry.g = 'in a failed transaction'",
    ];
    for sql in simple {
        c.batch_execute(sql).await.unwrap();
    }
    c.batch_execute("SELECT 1/0").await.unwrap_err();
    // A COMMIT of a failed transaction rolls back.
    c.batch_execute("COMMIT").await.unwrap();
    // A failed implicit transaction (one Query) undoes its SET.
    c.batch_execute("SET ferry.h = 'failed implicit'; SELECT 1/0")
        .await
        .unwrap_err();
    // The extended protocol: prepared, then bound and executed.
    c.execute("SET ferry.i = 'extended'", &[]).await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.execute("SET ferry.j = 'extended, rolled back'", &[])
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.execute("SET ferry.k = 'extended, committed'", &[])
        .await
        .unwrap();
    c.execute("COMMIT", &[]).await.unwrap();
    let stmt = c
        .prepare("SELECT current_database()::text || $1::text")
        .await
        .unwrap();

    let expected: Vec<(String, String)> = SETTINGS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let (db, before) = session_state(&c).await;
    assert_eq!(db, src);
    assert_eq!(before, expected, "PostgreSQL itself (on the source)");

    switch(&proxy).await;
    let (db, after) = session_state(&c).await;
    assert_eq!(db, tgt, "the session moved to the target");
    assert_eq!(after, expected, "the session state that moved");
    // A statement prepared on the source runs on the target.
    let s: String = c.query_one(&stmt, &[&"!"]).await.unwrap().get(0);
    assert_eq!(s, format!("{tgt}!"));
}

/// What [`state_other_than_set_statements_moves_as_postgres_kept_it`]
/// reads on each side, and what PostgreSQL keeps after its statements.
const KEPT: &[(&str, &str)] = &[
    ("session_user", "writer"),
    ("current_user", "reader"),
    ("current_setting('work_mem')", "5MB"),
    ("current_setting('lock_timeout')", "4s"),
    ("current_setting('statement_timeout')", "42s"),
    (
        "current_setting('idle_in_transaction_session_timeout')",
        "0",
    ),
    (
        "current_setting('default_transaction_isolation')",
        "repeatable read",
    ),
    ("current_setting('search_path')", "app_schema, public"),
    ("current_setting('app.tenant', true)", "acme"),
    ("current_setting('app.region', true)", "eu"),
    ("current_setting('app.direct', true)", "yes"),
    ("current_setting('app.from_do', true)", "did"),
    // Defined, empty: a rolled-back set_config and a function's SET
    // clause leave the custom setting behind without its value.
    ("current_setting('app.gone', true)", ""),
    ("current_setting('app.scoped', true)", ""),
    ("current_setting('app.never', true)", "<null>"),
    ("current_setting('ferry.parsed', true)", "by SET"),
    (
        "(SELECT string_agg(c, ',' ORDER BY c) FROM pg_listening_channels() c)",
        "chan_a",
    ),
];

async fn kept_state(c: &tokio_postgres::Client) -> (String, Vec<(String, String)>) {
    let columns: Vec<String> = KEPT
        .iter()
        .map(|(e, _)| format!("coalesce(({e})::text, '<null>')"))
        .collect();
    let row = c
        .query_one(
            &format!("SELECT current_database()::text, {}", columns.join(", ")),
            &[],
        )
        .await
        .unwrap();
    let values = KEPT
        .iter()
        .enumerate()
        .map(|(i, (e, _))| ((*e).to_owned(), row.get::<_, String>(i + 1)))
        .collect();
    (row.get(0), values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_other_than_set_statements_moves_as_postgres_kept_it() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (src, tgt) = (
        pg.create_database("src").unwrap(),
        pg.create_database("tgt").unwrap(),
    );
    pg.psql(
        &src,
        "CREATE ROLE reader; CREATE ROLE writer; GRANT reader TO writer",
    )
    .unwrap();
    // The functions exist on both sides (as the migrated schema would);
    // they were created directly, so the names they set never pass
    // through the proxy.
    for db in [&src, &tgt] {
        pg.psql(
            db,
            "CREATE FUNCTION set_tenant(t text) RETURNS void LANGUAGE plpgsql \
               AS $$ BEGIN PERFORM set_config('app.tenant', t, false); END $$; \
             CREATE FUNCTION set_region() RETURNS void LANGUAGE plpgsql \
               AS $$ BEGIN SET app.region = 'eu'; SET lock_timeout = '4s'; END $$; \
             CREATE FUNCTION scoped() RETURNS text LANGUAGE sql \
               SET work_mem = '7MB' SET app.scoped = 'leaked' \
               AS $$ SELECT current_setting('work_mem') $$",
        )
        .unwrap();
    }
    let (proxy, url) = start_proxy(&pg, &src, &tgt).await;
    let c = connect(&url).await;
    for sql in [
        "SET work_mem = '5MB'",
        // A function's own SET clause ends with the call.
        "SELECT scoped()",
        "SELECT set_tenant('acme')",
        "SELECT set_region()",
        "SELECT set_config('app.direct', 'yes', false)",
        "SELECT set_config('statement_timeout', '42s', false)",
        "BEGIN",
        "SELECT set_config('app.gone', 'rolled back', false)",
        "SELECT set_config('idle_in_transaction_session_timeout', '77s', false)",
        "ROLLBACK",
        "DO $$ BEGIN PERFORM set_config('app.from_do', 'did', false); END $$",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SELECT set_config('search_path', 'app_schema, public', false)",
        "SET ferry.parsed = 'by SET'",
        "LISTEN chan_a",
        "SELECT set_config('session_authorization', 'writer', false)",
        "SELECT set_config('role', 'reader', false)",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    // The extended protocol too: the value a bound parameter.
    c.execute("SELECT set_config('work_mem', $1, false)", &[&"5MB"])
        .await
        .unwrap();

    let expected: Vec<(String, String)> = KEPT
        .iter()
        .map(|(e, v)| ((*e).to_owned(), (*v).to_owned()))
        .collect();
    let (db, before) = kept_state(&c).await;
    assert_eq!(db, src);
    assert_eq!(before, expected, "PostgreSQL itself (on the source)");

    switch(&proxy).await;
    let (db, after) = kept_state(&c).await;
    assert_eq!(db, tgt, "the session moved to the target");
    assert_eq!(after, expected, "the session state that moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_are_held_and_switched_each_run_once() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (src, tgt) = (
        pg.create_database("src").unwrap(),
        pg.create_database("tgt").unwrap(),
    );
    for db in [&src, &tgt] {
        pg.psql(db, "CREATE TABLE t (v int PRIMARY KEY)").unwrap();
    }
    let (proxy, url) = start_proxy(&pg, &src, &tgt).await;
    let c = Arc::new(connect(&url).await);
    c.batch_execute("SET ferry.who = 'pipeliner'")
        .await
        .unwrap();
    let insert = c
        .prepare("INSERT INTO t VALUES ($1) RETURNING current_database()::text, current_setting('ferry.who')")
        .await
        .unwrap();
    // Eight tasks share the connection: tokio-postgres sends each
    // Bind/Execute/Sync as soon as it is issued, so batches are nearly
    // always in flight behind one another.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (c, insert, stop) = (c.clone(), insert.clone(), stop.clone());
        let src = src.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 50 {
                let v = task * 1_000_000 + n;
                let row = c.query_one(&insert, &[&v]).await.unwrap();
                let (db, who): (String, String) = (row.get(0), row.get(1));
                assert_eq!(who, "pipeliner", "the SET moved with the session");
                if db == src {
                    assert!(
                        seen.iter().all(|(_, d)| *d == src),
                        "insert {v} ran on the source after one on the target"
                    );
                }
                seen.push((v, db));
                n += 1;
            }
            seen
        }));
    }
    // Let the pipeline run on the source, then switch under load.
    let wait_for = |n: i64| {
        let pg = &pg;
        let src = src.clone();
        async move {
            for _ in 0..600 {
                let count = pg.psql(&src, "SELECT count(*) FROM t").unwrap();
                if count.trim().parse::<i64>().unwrap_or(0) >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the pipelining clients did not reach {n} inserts on the source");
        }
    };
    wait_for(200).await;
    let started = proxy
        .hold(Duration::from_secs(60))
        .await
        .expect("the hold reached a boundary of the pipelining session");
    proxy.release(started, Some(Mode::Target), "test");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let rows = |db: &str| -> Vec<(i32, String)> {
        let out = pg.psql(db, "SELECT v FROM t ORDER BY v").unwrap();
        out.lines()
            .filter_map(|l| l.trim().parse().ok())
            .map(|v| (v, db.to_owned()))
            .collect()
    };
    let mut stored = rows(&src);
    stored.extend(rows(&tgt));
    stored.sort();
    seen.sort();
    assert_eq!(
        stored, seen,
        "every insert stored once, on the database its answer named"
    );
    assert!(seen.iter().any(|(_, db)| *db == src));
    assert!(seen.iter().any(|(_, db)| *db == tgt));
    let (db, _) = session_state(&c).await;
    assert_eq!(db, tgt);
}
