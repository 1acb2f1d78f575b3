//! Full-load reads at an exported snapshot, piped into a target via binary COPY.

use bytes::Bytes;
use ferry_core::config::{Endpoint, SslMode, TablesConfig};
use ferry_core::{RedactedUrl, TableId};
use ferry_postgres::catalog::{SourceTable, read_catalog};
use ferry_postgres::connect::connect;
use ferry_postgres::snapshot::{SnapshotSession, column_list, plan_chunks};
use ferry_testkit::{PgOptions, PgServer};
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

fn endpoint(url: &str) -> Endpoint {
    Endpoint {
        url: RedactedUrl::new(url),
        sslmode: Some(SslMode::Disable),
        sslrootcert: None,
    }
}

async fn source_table(client: &Client, name: &str) -> SourceTable {
    let filter = TablesConfig {
        include: vec!["public.*".into()],
        ..TablesConfig::default()
    }
    .filter()
    .unwrap();
    let cat = read_catalog(client, &filter, "ferry").await.unwrap();
    cat.table(&TableId::new("public", name)).unwrap().clone()
}

/// Export a snapshot on a connection that stays in its transaction.
async fn export_snapshot(client: &Client) -> String {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Copy every chunk of `table` into the same-named table on `target`.
async fn copy_table(
    session: &SnapshotSession,
    target: &Client,
    table: &SourceTable,
    chunk_rows: u64,
) -> usize {
    let chunks = plan_chunks(table, chunk_rows);
    for chunk in &chunks {
        let stream = session.copy_out(chunk, &table.schema).await.unwrap();
        let sql = format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            table.schema.id.quoted(),
            column_list(&table.schema)
        );
        let sink = target.copy_in::<_, Bytes>(&sql).await.unwrap();
        futures_util::pin_mut!(sink);
        futures_util::pin_mut!(stream);
        while let Some(bytes) = stream.next().await {
            sink.send(bytes.unwrap()).await.unwrap();
        }
        sink.finish().await.unwrap();
    }
    chunks.len()
}

async fn count_and_sum(client: &Client, table: &str) -> (i64, i64, i64) {
    let row = client
        .query_one(
            &format!("SELECT count(*), count(DISTINCT id), coalesce(sum(v), 0)::int8 FROM {table}"),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_after_the_export_are_not_copied() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let src = pg.create_database("snap_src").unwrap();
    let dst = pg.create_database("snap_dst").unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)";
    pg.psql(
        &src,
        &format!("{ddl}; INSERT INTO t SELECT g, g * 2, 'n' || g FROM generate_series(1, 1000) g"),
    )
    .unwrap();
    pg.psql(&dst, ddl).unwrap();
    let ep = endpoint(&pg.url(&src));
    let exporter = connect(&ep, "source").await.unwrap();
    let name = export_snapshot(&exporter).await;
    pg.psql(&src, "INSERT INTO t SELECT g, g * 2, 'late' FROM generate_series(1001, 1500) g; DELETE FROM t WHERE id <= 10")
        .unwrap();

    let table = source_table(&connect(&ep, "source").await.unwrap(), "t").await;
    let session = SnapshotSession::open(&ep, &name).await.unwrap();
    assert_eq!(session.count_rows(&table).await.unwrap(), 1000);
    let target = connect(&endpoint(&pg.url(&dst)), "target").await.unwrap();
    copy_table(&session, &target, &table, 1_000_000).await;
    let expected_sum: i64 = (1..=1000).map(|g| g * 2).sum();
    assert_eq!(
        count_and_sum(&target, "t").await,
        (1000, 1000, expected_sum)
    );
    let late: i64 = target
        .query_one("SELECT count(*) FROM t WHERE note = 'late'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(late, 0);
    session.close().await.unwrap();

    let err = SnapshotSession::open(&ep, "00000003-0000FFFF-1")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("can no longer be imported"),
        "{err}"
    );
    let err = SnapshotSession::open(&ep, "x'; DROP TABLE t; --")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a PostgreSQL snapshot name"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_copy_reads_every_row_once() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let src = pg.create_database("chunk_src").unwrap();
    let dst = pg.create_database("chunk_dst").unwrap();
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, pad text,
                                 doubled int GENERATED ALWAYS AS (v * 2) STORED)";
    pg.psql(
        &src,
        &format!(
            "{ddl}; INSERT INTO big (id, v, pad) SELECT g, g % 977, repeat('x', 20) FROM generate_series(1, 100000) g;
             DELETE FROM big WHERE id % 10 = 0; INSERT INTO big (id, v, pad) SELECT g, 1, 'y' FROM generate_series(100001, 110000) g;
             VACUUM ANALYZE big"
        ),
    )
    .unwrap();
    pg.psql(&dst, ddl).unwrap();
    let ep = endpoint(&pg.url(&src));
    let exporter = connect(&ep, "source").await.unwrap();
    let name = export_snapshot(&exporter).await;
    let table = source_table(&connect(&ep, "source").await.unwrap(), "big").await;
    assert_eq!(table.row_estimate, Some(100_000));
    let cols: Vec<&str> = table
        .schema
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["id", "v", "pad"]);

    let session = SnapshotSession::open(&ep, &name).await.unwrap();
    let target = connect(&endpoint(&pg.url(&dst)), "target").await.unwrap();
    let chunks = copy_table(&session, &target, &table, 25_000).await;
    assert_eq!(chunks, 4);
    let source = connect(&ep, "source").await.unwrap();
    let want = count_and_sum(&source, "big").await;
    assert_eq!(want.0, 100_000);
    assert_eq!(count_and_sum(&target, "big").await, want);
    assert_eq!(session.estimate_rows(&table).await.unwrap(), Some(100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_tables_are_read_per_partition() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let src = pg.create_database("part_src").unwrap();
    let dst = pg.create_database("part_dst").unwrap();
    let ddl = "CREATE TABLE m (id int, v int NOT NULL, PRIMARY KEY (id)) PARTITION BY RANGE (id);
               CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (1000);
               CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (1000) TO (100000)";
    pg.psql(
        &src,
        &format!(
            "{ddl}; INSERT INTO m SELECT g, g FROM generate_series(1, 30000) g; ANALYZE m1, m2"
        ),
    )
    .unwrap();
    pg.psql(&dst, ddl).unwrap();
    let ep = endpoint(&pg.url(&src));
    let exporter = connect(&ep, "source").await.unwrap();
    let name = export_snapshot(&exporter).await;
    let table = source_table(&connect(&ep, "source").await.unwrap(), "m").await;
    let chunks = plan_chunks(&table, 10_000);
    let rels: Vec<&str> = chunks.iter().map(|c| c.relation.name.as_str()).collect();
    assert_eq!(rels, ["m1", "m2", "m2", "m2"]);

    let session = SnapshotSession::open(&ep, &name).await.unwrap();
    assert_eq!(session.count_rows(&table).await.unwrap(), 30_000);
    let target = connect(&endpoint(&pg.url(&dst)), "target").await.unwrap();
    assert_eq!(copy_table(&session, &target, &table, 10_000).await, 4);
    let want: i64 = (1..=30000).sum();
    assert_eq!(count_and_sum(&target, "m").await, (30_000, 30_000, want));
}

/// Schema changes on the source after the export: a table and a column
/// renamed since are still read, with the snapshot's rows and columns (the
/// COPY names them as the current catalog does, found by oid and attribute
/// number); a chunk's lock ends when the next chunk starts (an `ALTER
/// TABLE` with a short `lock_timeout` goes through); what the snapshot can
/// no longer read is an error naming the table and column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_after_the_export() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let src = pg.create_database("snap_src").unwrap();
    let dst = pg.create_database("snap_dst").unwrap();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text)";
    // Names that need quoting, a quote and a backslash in them.
    let odd = "CREATE TABLE \"Odd 'Name\\ x\" (id int PRIMARY KEY, \"V 'q\\\" int)";
    pg.psql(
        &src,
        &format!(
            "{ddl}; INSERT INTO t SELECT g, g * 2, 'n' || g FROM generate_series(1, 1000) g;
             CREATE TABLE d (id int PRIMARY KEY, gone text, v int); INSERT INTO d VALUES (1, 'x', 1);
             CREATE TABLE w (id int PRIMARY KEY, v int); INSERT INTO w VALUES (1, 1);
             {odd}; INSERT INTO \"Odd 'Name\\ x\" SELECT g, g FROM generate_series(1, 10) g;
             CREATE TABLE gone (id int PRIMARY KEY); INSERT INTO gone VALUES (1);"
        ),
    )
    .unwrap();
    pg.psql(&dst, &format!("{ddl}; {odd}")).unwrap();
    let ep = endpoint(&pg.url(&src));
    let reader = connect(&ep, "source").await.unwrap();
    let t = source_table(&reader, "t").await;
    let d = source_table(&reader, "d").await;
    let w = source_table(&reader, "w").await;
    let odd_table = source_table(&reader, "Odd 'Name\\ x").await;
    let gone = source_table(&reader, "gone").await;
    let exporter = connect(&ep, "source").await.unwrap();
    let name = export_snapshot(&exporter).await;
    pg.psql(
        &src,
        "ALTER TABLE t RENAME COLUMN v TO v2; ALTER TABLE t RENAME TO t2;
         INSERT INTO t2 VALUES (1001, 1, 'late');
         ALTER TABLE d DROP COLUMN gone; ALTER TABLE w ALTER COLUMN v TYPE bigint;
         ALTER TABLE \"Odd 'Name\\ x\" RENAME COLUMN \"V 'q\\\" TO \"v 'Q\\\";
         ALTER TABLE \"Odd 'Name\\ x\" RENAME TO \"Odder \\'name\"; DROP TABLE gone;",
    )
    .unwrap();

    let session = SnapshotSession::open(&ep, &name).await.unwrap();
    let target = connect(&endpoint(&pg.url(&dst)), "target").await.unwrap();
    copy_table(&session, &target, &t, 1_000_000).await;
    let expected_sum: i64 = (1..=1000).map(|g| g * 2).sum();
    assert_eq!(
        count_and_sum(&target, "t").await,
        (1000, 1000, expected_sum)
    );
    // Renamed to another name that needs quoting: read under the new one.
    copy_table(&session, &target, &odd_table, 1_000_000).await;
    let odd_rows = target
        .query_one(
            "SELECT count(*), sum(\"V 'q\\\")::int8 FROM \"Odd 'Name\\ x\"",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (odd_rows.get::<_, i64>(0), odd_rows.get::<_, i64>(1)),
        (10, 55)
    );
    let err = session
        .copy_out(&plan_chunks(&gone, 0)[0], &gone.schema)
        .await
        .err()
        .expect("a dropped table cannot be read");
    assert!(
        err.to_string()
            .contains("public.gone was dropped on the source after the load snapshot"),
        "{err}"
    );
    let err = session
        .copy_out(&plan_chunks(&d, 0)[0], &d.schema)
        .await
        .err()
        .expect("a dropped column cannot be read");
    assert!(
        err.to_string()
            .contains("column gone of public.d was dropped on the source after the load snapshot"),
        "{err}"
    );
    let err = session
        .copy_out(&plan_chunks(&w, 0)[0], &w.schema)
        .await
        .err()
        .expect("a rewritten table cannot be read");
    assert!(
        err.to_string().contains(
            "public.w was rewritten by ALTER TABLE on the source after the load snapshot"
        ),
        "{err}"
    );
    // t2's chunk ended when the next one started: DDL on it does not wait.
    pg.psql(
        &src,
        "SET lock_timeout = '5s'; ALTER TABLE t2 ADD COLUMN z int",
    )
    .unwrap();
    session.close().await.unwrap();
}

/// The schema fingerprint of a load snapshot, compared with the current
/// catalog on an ordinary session (the one `pg_dump`'s version check
/// used): equal while nothing changed, and again after a change to a
/// table outside the carried schemas or to rows only; different once a
/// carried table's column is added, even when its name is given back
/// (new catalog row versions, never the old ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_fingerprint_tells_a_schema_change_since() {
    use ferry_postgres::schema_hold::Fingerprint;
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let src = pg.create_database("fp_src").unwrap();
    pg.psql(
        &src,
        "CREATE SCHEMA app; CREATE SCHEMA other;
         CREATE TABLE app.t (id int PRIMARY KEY, v int NOT NULL);
         CREATE TABLE other.o (id int PRIMARY KEY);
         INSERT INTO app.t VALUES (1, 1);",
    )
    .unwrap();
    let ep = endpoint(&pg.url(&src));
    let exporter = connect(&ep, "source").await.unwrap();
    let name = export_snapshot(&exporter).await;
    let session = SnapshotSession::open(&ep, &name).await.unwrap();
    let at = Fingerprint::at(session.client(), &["app".to_owned()])
        .await
        .unwrap();
    let current = connect(&ep, "source").await.unwrap();
    assert!(at.unchanged(&current).await.unwrap(), "nothing changed yet");

    pg.psql(
        &src,
        "INSERT INTO app.t VALUES (2, 2); ALTER TABLE other.o ADD COLUMN x int;",
    )
    .unwrap();
    assert!(
        at.unchanged(&current).await.unwrap(),
        "rows of a carried table and DDL outside the carried schemas are no schema change of it"
    );

    pg.psql(
        &src,
        "ALTER TABLE app.t ADD COLUMN w int; ALTER TABLE app.t DROP COLUMN w;",
    )
    .unwrap();
    assert!(
        !at.unchanged(&current).await.unwrap(),
        "a column added to app.t (and dropped again) after the snapshot is a change"
    );
    session.close().await.unwrap();
}
