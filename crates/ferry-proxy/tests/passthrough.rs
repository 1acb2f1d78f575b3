//! The proxy as a faithful pass-through, with clients nobody here wrote:
//! `psql`, `pgbench` (simple, extended and prepared protocols),
//! tokio-postgres and psycopg (when installed). Each runs the same work
//! directly and through the proxy against two identical databases, and the
//! answers must be equal.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::{BackendConfig, ClientAuth, Mode, NoReplication, Proxy, Settings, Side};
use ferry_testkit::{ADMIN_PASSWORD, ADMIN_USER, PgOptions, PgServer};
use tokio::net::TcpListener;

const PROXY_USER: &str = "app";
const PROXY_PASSWORD: &str = "proxy-pw-1";

fn backend(pg: &PgServer, db: &str, side: Side) -> BackendConfig {
    BackendConfig {
        side,
        host: "127.0.0.1".into(),
        port: pg.port(),
        user: ADMIN_USER.into(),
        password: Some(ADMIN_PASSWORD.into()),
        database: db.into(),
        tls: None,
        connect_timeout: Duration::from_secs(10),
    }
}

/// Start a proxy in front of `db`; its port.
async fn start_proxy(
    pg: &PgServer,
    db: &str,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> (Arc<Proxy>, u16) {
    let settings = Settings {
        auth: ClientAuth::Password {
            user: PROXY_USER.into(),
            password: PROXY_PASSWORD.into(),
        },
        tls,
        source: backend(pg, db, Side::Source),
        target: backend(pg, db, Side::Target),
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
    (proxy, port)
}

fn two_databases(pg: &PgServer) -> (String, String) {
    (
        pg.create_database("direct").unwrap(),
        pg.create_database("proxied").unwrap(),
    )
}

/// `psql`/`pgbench` environment for the proxy or the server directly.
fn client(pg: &PgServer, program: &str, port: Option<u16>, db: &str) -> Command {
    let mut c = Command::new(pg.bin_dir().join(program));
    c.env("PGHOST", "127.0.0.1")
        .env("PGDATABASE", db)
        .env("PGSSLMODE", "disable");
    match port {
        Some(p) => c
            .env("PGPORT", p.to_string())
            .env("PGUSER", PROXY_USER)
            .env("PGPASSWORD", PROXY_PASSWORD),
        None => c
            .env("PGPORT", pg.port().to_string())
            .env("PGUSER", ADMIN_USER)
            .env("PGPASSWORD", ADMIN_PASSWORD),
    };
    c
}

fn output(mut c: Command) -> String {
    let out = c.output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Server process ids differ between runs: mask them.
fn mask_pids(s: &str) -> String {
    s.lines()
        .map(|l| match l.find("server process with PID ") {
            Some(i) => format!("{}server process with PID <pid>", &l[..i]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const PSQL_SCRIPT: &str = r#"
\set ON_ERROR_STOP 0
SET application_name = 'proxy-test';
SHOW application_name;
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), tags text[], data jsonb, at timestamptz DEFAULT '2024-01-02 03:04:05+00');
COPY items (name, price, tags, data) FROM STDIN;
apple	1.50	{red,fruit}	{"k": 1}
pear	2.25	{green}	{"k": [1, 2]}
tab\there	\N	\N	null
\.
SELECT id, name, price, tags, data, at FROM items ORDER BY id;
BEGIN;
INSERT INTO items (name, price) VALUES ('plum', 3.00) RETURNING id, name;
SAVEPOINT s1;
INSERT INTO items (id, name) VALUES (1, 'duplicate');
ROLLBACK TO SAVEPOINT s1;
UPDATE items SET price = price * 2 WHERE name = 'plum';
COMMIT;
BEGIN;
SELECT 1/0;
SELECT 'not run';
ROLLBACK;
PREPARE by_name (text) AS SELECT id, price FROM items WHERE name = $1;
EXECUTE by_name('plum');
DEALLOCATE by_name;
SELECT count(*), sum(g) FROM generate_series(1, 200000) g;
SELECT repeat('x', 100000) = repeat('x', 100000) AS big;
\copy (SELECT name, price FROM items ORDER BY id) TO STDOUT
LISTEN chan;
NOTIFY chan, 'hello';
SELECT 'after notify';
SET search_path = nowhere, public;
SELECT count(*) FROM items;
SELECT * FROM no_such_table;
SELECT 1 AS a; SELECT 2 AS b;
\echo done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_answers_the_same_through_the_proxy() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (direct, proxied) = two_databases(&pg);
    let (proxy, port) = start_proxy(&pg, &proxied, None).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sql");
    std::fs::write(&script, PSQL_SCRIPT).unwrap();
    let run = |port, db: &str| {
        let mut c = client(&pg, "psql", port, db);
        c.arg("-X").arg("-f").arg(&script);
        mask_pids(&output(c))
    };
    let expected = run(None, &direct);
    let got = tokio::task::spawn_blocking({
        let (script, pg_port) = (script.clone(), pg.port());
        let bin = pg.bin_dir().to_owned();
        let proxied = proxied.clone();
        move || {
            let _ = pg_port;
            let mut c = Command::new(bin.join("psql"));
            c.env("PGHOST", "127.0.0.1")
                .env("PGPORT", port.to_string())
                .env("PGUSER", PROXY_USER)
                .env("PGPASSWORD", PROXY_PASSWORD)
                .env("PGDATABASE", &proxied)
                .env("PGSSLMODE", "disable")
                .arg("-X")
                .arg("-f")
                .arg(&script);
            mask_pids(&output(c))
        }
    })
    .await
    .unwrap();
    assert!(expected.contains("done"), "{expected}");
    assert!(expected.contains("division by zero"), "{expected}");
    assert!(
        expected.contains("Asynchronous notification \"chan\" with payload \"hello\""),
        "{expected}"
    );
    assert_eq!(got, expected);
    // `sample_rate = 0` in mode `source`: shadow reads are off, so no
    // statement was fingerprinted or counted per query.
    assert_eq!(proxy.stats.rows().len(), 0);
    assert!(
        proxy
            .stats
            .counters
            .statements
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_wrong_user_are_refused_like_postgres() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (_, proxied) = two_databases(&pg);
    let (proxy, port) = start_proxy(&pg, &proxied, None).await;
    for (user, password) in [(PROXY_USER, "wrong"), ("someone", PROXY_PASSWORD)] {
        let url = format!("postgres://{user}:{password}@127.0.0.1:{port}/{proxied}");
        let e = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .err()
            .expect("refused");
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "28P01", "{db}");
        assert!(
            db.message().contains("password authentication failed"),
            "{db}"
        );
    }
    assert_eq!(
        proxy
            .stats
            .counters
            .auth_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_to_the_proxy() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (_, proxied) = two_databases(&pg);
    let dir = tempfile::tempdir().unwrap();
    let files = ferry_testkit::tls_files(dir.path()).unwrap();
    let tls = (
        std::fs::read(&files.server_cert).unwrap(),
        std::fs::read(&files.server_key).unwrap(),
    );
    let (_proxy, port) = start_proxy(&pg, &proxied, Some(tls)).await;
    let bin = pg.bin_dir().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut c = Command::new(bin.join("psql"));
        c.env("PGPASSWORD", PROXY_PASSWORD)
            .arg("-X")
            .arg("-At")
            .arg(format!(
                "host=127.0.0.1 port={port} user={PROXY_USER} dbname={proxied} sslmode=require"
            ));
        c.arg("-c")
            .arg("SELECT 'tls ok'")
            .arg("-c")
            .arg("\\conninfo");
        output(c)
    })
    .await
    .unwrap();
    assert!(out.contains("tls ok"), "{out}");
    assert!(out.contains("SSL connection"), "{out}");
}

/// A self-signed certificate for localhost and its key, both PEM:
/// `openssl req -x509 -newkey <key…> [-<digest>]`.
fn self_signed(
    dir: &std::path::Path,
    name: &str,
    key: &[&str],
    digest: Option<&str>,
) -> (Vec<u8>, Vec<u8>) {
    let (cert, pem_key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let mut c = Command::new("openssl");
    c.args(["req", "-x509", "-newkey"])
        .args(key)
        .args(["-nodes", "-subj", "/CN=localhost", "-days", "2"])
        .arg("-keyout")
        .arg(&pem_key)
        .arg("-out")
        .arg(&cert);
    if let Some(d) = digest {
        c.arg(format!("-{d}"));
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read(cert).unwrap(),
        std::fs::read(pem_key).unwrap(),
    )
}

/// `psql -c` through the proxy with libpq `options` added to the
/// connection string; whether it succeeded, and what it printed.
async fn psql_with(pg: &PgServer, port: u16, db: &str, options: &str, sql: &str) -> (bool, String) {
    let mut c = Command::new(pg.bin_dir().join("psql"));
    c.env("PGPASSWORD", PROXY_PASSWORD)
        .arg("-X")
        .arg("-At")
        .arg(format!(
            "host=127.0.0.1 port={port} user={PROXY_USER} dbname={db} {options}"
        ))
        .arg("-c")
        .arg(sql);
    tokio::task::spawn_blocking(move || {
        let out = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

fn auth_failures(proxy: &Proxy) -> u64 {
    proxy
        .stats
        .counters
        .auth_failures
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// libpq's `channel_binding=require` over TLS: SCRAM-SHA-256-PLUS with
/// `tls-server-end-point`, whose hash libpq computes on its own from the
/// certificate it received — SHA-256 for the testkit's ECDSA P-256
/// certificate, SHA-384 and SHA-512 for certificates signed with those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_requiring_channel_binding_over_tls() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (_, proxied) = two_databases(&pg);
    let dir = tempfile::tempdir().unwrap();
    let files = ferry_testkit::tls_files(dir.path()).unwrap();
    let certificates = [
        (
            "ecdsa-with-SHA256 (testkit)",
            (
                std::fs::read(&files.server_cert).unwrap(),
                std::fs::read(&files.server_key).unwrap(),
            ),
        ),
        (
            "ecdsa-with-SHA384",
            self_signed(
                dir.path(),
                "p384",
                &["ec", "-pkeyopt", "ec_paramgen_curve:secp384r1"],
                Some("sha384"),
            ),
        ),
        (
            "sha512WithRSAEncryption",
            self_signed(dir.path(), "rsa", &["rsa:2048"], Some("sha512")),
        ),
    ];
    for (name, tls) in certificates {
        let (proxy, port) = start_proxy(&pg, &proxied, Some(tls)).await;
        let (ok, out) = psql_with(
            &pg,
            port,
            &proxied,
            "sslmode=require channel_binding=require",
            "SELECT 'bound ' || 6 * 7",
        )
        .await;
        assert!(ok && out.contains("bound 42"), "{name}: {out}");
        // A client that will not bind still logs in over TLS (`n`).
        let (ok, out) = psql_with(
            &pg,
            port,
            &proxied,
            "sslmode=require channel_binding=disable",
            "SELECT 'unbound'",
        )
        .await;
        assert!(ok && out.contains("unbound"), "{name}: {out}");
        assert_eq!(auth_failures(&proxy), 0, "{name}");
    }
}

/// No channel binding without TLS, nor with a certificate whose signature
/// has no hash (Ed25519): libpq's `channel_binding=require` refuses, and
/// its default (`prefer`) logs in, which it would not if
/// `SCRAM-SHA-256-PLUS` were offered over plain TCP ("server offered
/// SCRAM-SHA-256-PLUS authentication over a non-SSL connection"); over TLS
/// it sends the `y` flag, no downgrade when nothing was offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_is_not_offered_where_it_cannot_bind() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (_, proxied) = two_databases(&pg);
    let dir = tempfile::tempdir().unwrap();
    let (plain, plain_port) = start_proxy(&pg, &proxied, None).await;
    let ed25519 = self_signed(dir.path(), "ed25519", &["ed25519"], None);
    let (ed, ed_port) = start_proxy(&pg, &proxied, Some(ed25519)).await;
    const NO_TLS: &str = "channel binding required, but SSL not in use";
    const NOT_OFFERED: &str = "channel binding is required, but server did not offer an authentication method that supports channel binding";
    for (name, port, sslmode, refusal) in [
        ("plain TCP", plain_port, "sslmode=disable", NO_TLS),
        ("plain TCP", plain_port, "sslmode=prefer", NO_TLS),
        ("Ed25519 over TLS", ed_port, "sslmode=require", NOT_OFFERED),
    ] {
        let (ok, out) = psql_with(
            &pg,
            port,
            &proxied,
            &format!("{sslmode} channel_binding=require"),
            "SELECT 'should not run'",
        )
        .await;
        assert!(!ok && out.contains(refusal), "{name}, {sslmode}: {out}");
        let (ok, out) = psql_with(&pg, port, &proxied, sslmode, "SELECT 'unbound'").await;
        assert!(ok && out.contains("unbound"), "{name}, {sslmode}: {out}");
    }
    assert_eq!(auth_failures(&plain) + auth_failures(&ed), 0);
}

/// Run pgbench through the proxy; its report.
fn pgbench(bin: &std::path::Path, port: u16, db: &str, args: &[&str]) -> String {
    let mut c = Command::new(bin.join("pgbench"));
    c.env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", PROXY_USER)
        .env("PGPASSWORD", PROXY_PASSWORD)
        .env("PGSSLMODE", "disable")
        .args(args)
        .arg(db);
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_all_three_protocols_through_the_proxy() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (_, proxied) = two_databases(&pg);
    let (_proxy, port) = start_proxy(&pg, &proxied, None).await;
    let bin = pg.bin_dir().to_owned();
    let db = proxied.clone();
    tokio::task::spawn_blocking(move || {
        // -i loads with COPY through the proxy.
        pgbench(&bin, port, &db, &["-i", "-s", "1", "-q"]);
        for mode in ["simple", "extended", "prepared"] {
            let report = pgbench(
                &bin,
                port,
                &db,
                &["-n", "-c", "4", "-j", "2", "-t", "150", "-M", mode],
            );
            assert!(
                report.contains("number of transactions actually processed: 600/600"),
                "{mode}: {report}"
            );
            assert!(
                report.contains("number of failed transactions: 0"),
                "{mode}: {report}"
            );
        }
    })
    .await
    .unwrap();
    // Every transaction's three updates and its history row landed whole.
    let (client, conn) = tokio_postgres::connect(&pg.url(&proxied), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pgbench_history), (SELECT sum(delta) FROM pgbench_history)::bigint, \
             (SELECT sum(abalance) FROM pgbench_accounts)::bigint, (SELECT sum(bbalance) FROM pgbench_branches)::bigint, \
             (SELECT sum(tbalance) FROM pgbench_tellers)::bigint, (SELECT count(*) FROM pgbench_accounts)",
            &[],
        )
        .await
        .unwrap();
    let (h, delta, a, b, t, accounts): (i64, i64, i64, i64, i64, i64) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert_eq!(h, 1800);
    assert_eq!((a, b, t), (delta, delta, delta));
    assert_eq!(accounts, 100_000);
}

/// The same driver work directly and through the proxy.
async fn driver_work(url: &str) -> Vec<String> {
    use futures_util::SinkExt;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut conn = conn;
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(format!("{}:{}", n.channel(), n.payload()));
            }
        }
    });
    let mut out = Vec::new();
    client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v text, f float8, b bytea, ts timestamptz)",
        )
        .await
        .unwrap();
    // Binary parameters and results through prepared statements.
    let insert = client
        .prepare("INSERT INTO t VALUES ($1, $2, $3, $4, '2024-05-06 07:08:09+00')")
        .await
        .unwrap();
    for i in 0..50i64 {
        let v = format!("v{i}");
        let f = i as f64 / 3.0;
        let b = vec![i as u8, 0, 255];
        client.execute(&insert, &[&i, &v, &f, &b]).await.unwrap();
    }
    // COPY FROM STDIN.
    let sink = client.copy_in("COPY t (id, v) FROM STDIN").await.unwrap();
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from_static(b"100\tcopied\n101\talso\n"))
        .await
        .unwrap();
    let copied = sink.as_mut().finish().await.unwrap();
    out.push(format!("copied {copied}"));
    for r in client
        .query(
            "SELECT id, v, f, b, ts FROM t WHERE id % $1 = 0 ORDER BY id",
            &[&7i64],
        )
        .await
        .unwrap()
    {
        let id: i64 = r.get(0);
        let v: Option<String> = r.get(1);
        let f: Option<f64> = r.get(2);
        let b: Option<Vec<u8>> = r.get(3);
        let ts: Option<std::time::SystemTime> = r.get(4);
        out.push(format!("{id} {v:?} {f:?} {b:?} {ts:?}"));
    }
    // A transaction rolled back, an error, then the session still works.
    let mut c2 = client;
    {
        let tx = c2.transaction().await.unwrap();
        tx.execute("DELETE FROM t", &[]).await.unwrap();
        tx.rollback().await.unwrap();
    }
    let e = c2.query("SELECT * FROM missing", &[]).await.unwrap_err();
    out.push(format!("error {:?}", e.code().map(|c| c.code().to_owned())));
    let n: i64 = c2
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    out.push(format!("count {n}"));
    // LISTEN/NOTIFY.
    c2.batch_execute("LISTEN ev; NOTIFY ev, 'ping'")
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), notes.recv())
        .await
        .unwrap();
    out.push(format!("notification {note:?}"));
    // Cancel a long statement.
    let token = c2.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let e = c2.batch_execute("SELECT pg_sleep(20)").await.unwrap_err();
    out.push(format!(
        "cancelled {:?}",
        e.code().map(|c| c.code().to_owned())
    ));
    canceller.await.unwrap().unwrap();
    let one: i32 = c2.query_one("SELECT 1", &[]).await.unwrap().get(0);
    out.push(format!("after cancel {one}"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_driver_through_the_proxy() {
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (direct, proxied) = two_databases(&pg);
    let (_proxy, port) = start_proxy(&pg, &proxied, None).await;
    let expected = driver_work(&pg.url(&direct)).await;
    let got = driver_work(&format!(
        "postgres://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}/{proxied}"
    ))
    .await;
    assert!(
        expected.iter().any(|l| l == "cancelled Some(\"57014\")"),
        "{expected:?}"
    );
    assert!(
        expected.iter().any(|l| l.contains("ev:ping")),
        "{expected:?}"
    );
    assert_eq!(got, expected);
}

const PSYCOPG_SCRIPT: &str = r#"
import sys, psycopg
out = []
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute("CREATE TABLE p (id int PRIMARY KEY, v text, n numeric)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO p VALUES (%s, %s, %s)", [(i, f"v{i}", i * 1.5) for i in range(20)])
        cur.execute("SELECT id, v, n FROM p WHERE id > %s ORDER BY id", (10,), binary=True)
        out.append(repr(cur.fetchall()))
        cur.execute("SELECT id, v FROM p WHERE id = %s", (3,), prepare=True)
        cur.execute("SELECT id, v FROM p WHERE id = %s", (4,), prepare=True)
        out.append(repr(cur.fetchall()))
    with conn.transaction():
        conn.execute("UPDATE p SET v = 'changed' WHERE id = 1")
    try:
        conn.execute("SELECT * FROM nope")
    except psycopg.errors.UndefinedTable as e:
        out.append("undefined table")
    with conn.cursor().copy("COPY (SELECT id, v FROM p ORDER BY id LIMIT 3) TO STDOUT") as copy:
        out.append(repr([bytes(b) for b in copy]))
    out.append(repr(conn.execute("SELECT v FROM p WHERE id = 1").fetchone()))
print("\n".join(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_through_the_proxy() {
    let have = Command::new("python3")
        .args(["-c", "import psycopg"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "psycopg is missing: pip install 'psycopg[binary]' (make setup does)"
    );
    let pg = PgServer::start(PgOptions::new()).unwrap();
    let (direct, proxied) = two_databases(&pg);
    let (_proxy, port) = start_proxy(&pg, &proxied, None).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("work.py");
    std::fs::write(&script, PSYCOPG_SCRIPT).unwrap();
    let run = move |url: String| {
        let out = Command::new("python3")
            .arg(&script)
            .arg(url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let direct_url = format!("{}?sslmode=disable", pg.url(&direct));
    let proxied_url = format!(
        "postgres://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}/{proxied}?sslmode=disable"
    );
    let (expected, got) = tokio::task::spawn_blocking(move || (run(direct_url), run(proxied_url)))
        .await
        .unwrap();
    assert!(
        expected.contains("undefined table") && expected.contains("changed"),
        "{expected}"
    );
    assert_eq!(got, expected);
}
