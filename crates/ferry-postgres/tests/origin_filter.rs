//! The echo filter of the fallback's reverse stream against a real server:
//! what a session tagged with ferry's replication origin commits never
//! comes out of a stream that skips that origin; everything else does, and
//! the same workload read without the filter shows both (so the test fails
//! if the filter stopped working). Also through a streamed (protocol v2)
//! transaction, whose Origin message sits in its first stream block.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::config::{Endpoint, SslMode};
use ferry_core::{Change, Event, Lsn, RedactedUrl, Value};
use ferry_postgres::fallback::{ORIGIN_PREFIX, create_reverse_slot, origin_name, tag_session};
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::slot;
use ferry_postgres::stream::{CatalogTypeResolver, PgChangeStream, StreamConfig};
use ferry_testkit::{PgOptions, PgServer};

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connection");
    tokio::spawn(conn);
    client
}

/// The ids inserted into `t` that a stream from `start` on slot `name`
/// delivers until the row with id 0 (the end marker) arrives.
async fn inserted_ids(
    url: &str,
    name: &str,
    start: Lsn,
    skip: Option<&str>,
    proto_version: u32,
) -> Vec<i32> {
    let ep = Endpoint {
        url: RedactedUrl::new(url),
        sslmode: Some(SslMode::Disable),
        sslrootcert: None,
    };
    let conn = ReplicationConnection::connect(&ep)
        .await
        .expect("replication");
    let mut cfg = StreamConfig::new(name, "p", start);
    cfg.skip_origin_prefix = skip.map(str::to_owned);
    cfg.proto_version = proto_version;
    let resolver = Arc::new(CatalogTypeResolver::new(Arc::new(client(url).await)));
    let (mut rx, handle) = PgChangeStream::start(conn, resolver, cfg)
        .await
        .expect("stream");
    let mut ids = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the end marker arrives")
            .expect("stream open");
        if let Event::Change(Change::Insert { new, .. }) = ev {
            let Value::Int4(id) = new.values[0] else {
                panic!("int id: {new:?}")
            };
            if id == 0 {
                break;
            }
            ids.push(id);
        }
    }
    handle.shutdown().await.expect("shutdown");
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_ferry_applied_never_come_back() {
    echo_filter(PgOptions::default()).await;
}

/// The same on the oldest and newest majors of the matrix and on 16 (the
/// first with pgoutput's own `origin` option, which ferry does not use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_ferry_applied_never_come_back_on_every_major() {
    for major in [13, 16, 18] {
        echo_filter(PgOptions::default().version(major)).await;
    }
}

async fn echo_filter(opts: PgOptions) {
    let pg =
        PgServer::start(opts.setting("logical_decoding_work_mem", "64kB")).expect("start postgres");
    // Protocol 2 (streamed transactions) from PostgreSQL 14.
    let proto = if pg.major() >= 14 { 2 } else { 1 };
    let db = pg.create_database("origins").unwrap();
    let url = pg.url(&db);
    pg.psql(&db, "CREATE TABLE t (id int PRIMARY KEY, pad text)")
        .unwrap();
    let admin = client(&url).await;
    slot::ensure_publication(&admin, "p", None, slot::Publish::All)
        .await
        .unwrap();
    let filtered = create_reverse_slot(&admin, "filtered").await.unwrap();
    let plain = create_reverse_slot(&admin, "plain").await.unwrap();

    // ferry's apply session: tagged; small and large (streamed) transactions.
    let ferry = client(&url).await;
    assert!(
        tag_session(&ferry, &origin_name("ferry")).await,
        "superuser may tag"
    );
    ferry
        .batch_execute("INSERT INTO t SELECT g, 'ferry' FROM generate_series(1, 5) g")
        .await
        .unwrap();
    ferry
        .batch_execute(
            "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1000, 3999) g",
        )
        .await
        .unwrap();
    // The application: untagged, before and after.
    let app = client(&url).await;
    app.batch_execute("INSERT INTO t VALUES (100, 'app')")
        .await
        .unwrap();
    ferry
        .batch_execute("UPDATE t SET pad = 'again' WHERE id = 1; INSERT INTO t VALUES (6, 'ferry')")
        .await
        .unwrap();
    app.batch_execute(
        "INSERT INTO t SELECT g, repeat('y', 200) FROM generate_series(5000, 5999) g;
         INSERT INTO t VALUES (0, 'end')",
    )
    .await
    .unwrap();

    let app_ids: Vec<i32> = std::iter::once(100).chain(5000..6000).collect();
    let skipped = inserted_ids(&url, "filtered", filtered, Some(ORIGIN_PREFIX), proto).await;
    assert_eq!(
        skipped,
        app_ids,
        "PostgreSQL {}: only the application's rows come out",
        pg.major()
    );
    let all = inserted_ids(&url, "plain", plain, None, proto).await;
    assert_eq!(
        all.len(),
        app_ids.len() + 6 + 3000,
        "without the filter ferry's rows come out too (the filter is what drops them)"
    );
}
