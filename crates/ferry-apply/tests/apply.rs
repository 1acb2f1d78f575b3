//! Writer, applier and checkpoint against a real target PostgreSQL.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use ferry_apply::checkpoint::{read_checkpoint, write_checkpoint};
use ferry_apply::fold::Fold;
use ferry_apply::{Applier, ApplierConfig, RunOutcome, StateStore, TargetTxn, Writer};
use ferry_core::config::{ApplyConfig, TablesConfig};
use ferry_core::value::Timestamp;
use ferry_core::{Change, Event, Lsn, OldRow, Row, Value};
use tokio::sync::mpsc;
use tokio_postgres::Client;

const SETUP: &str = "
CREATE TABLE t (id int PRIMARY KEY, doc text NOT NULL, n int);
INSERT INTO t SELECT g, repeat('big', 5000) || g, g FROM generate_series(1, 3) g;
CREATE TABLE k (a int, b text);
CREATE TABLE u (id int PRIMARY KEY, v text);
INSERT INTO u VALUES (1, 'gone'), (2, 'gone');
CREATE TABLE trig_hits (n int);
CREATE FUNCTION hit() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO trig_hits VALUES (1); RETURN NEW; END$$;
CREATE TRIGGER t_hit BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION hit();
";

fn schemas() -> Vec<Arc<ferry_core::TableSchema>> {
    vec![
        table(
            "t",
            vec![col("id", "int4"), col("doc", "text"), col("n", "int4")],
            vec![0],
        ),
        table("k", vec![col("a", "int4"), col("b", "text")], vec![]),
        table("u", vec![col("id", "int4"), col("v", "text")], vec![0]),
    ]
}

fn cfg(batch_rows: usize, batch_ms: u64) -> ApplierConfig {
    let apply = ApplyConfig {
        batch_rows,
        batch_ms,
        ..ApplyConfig::default()
    };
    ApplierConfig::new("main", &apply, false)
}

fn replaced(t: &str, column: &str, values: u64) -> Event<Lsn> {
    Event::Replaced {
        table: tid(t),
        column: column.to_owned(),
        values,
    }
}

fn key(id: i32, width: usize) -> OldRow {
    let mut v = vec![Value::Null; width];
    v[0] = Value::Int4(id);
    OldRow::Key(Row::new(v))
}

#[tokio::test]
async fn batch_yields_exact_contents_and_checkpoint() {
    let pg = server();
    let db = pg.create_database("apply").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let mut ev: Vec<Event<Lsn>> = schemas().into_iter().map(Event::Relation).collect();
    ev.extend([
        begin(),
        ins("t", vec![Value::Int4(10), txt("new"), Value::Int4(1)]),
        upd(
            "t",
            None,
            vec![Value::Int4(10), txt("new2"), Value::Unchanged],
        ),
        // TOAST unchanged: doc must keep its big value.
        upd(
            "t",
            None,
            vec![Value::Int4(1), Value::Unchanged, Value::Int4(100)],
        ),
        del("t", key(2, 3)),
        ins("k", vec![Value::Int4(1), txt("x")]),
        ins("k", vec![Value::Int4(1), txt("x")]),
        ins("k", vec![Value::Int4(2), txt("y")]),
        del("k", OldRow::Full(Row::new(vec![Value::Int4(1), txt("x")]))),
        upd(
            "k",
            Some(OldRow::Full(Row::new(vec![Value::Int4(2), txt("y")]))),
            vec![Value::Int4(2), txt("z")],
        ),
        commit(100),
        begin(),
        ins("u", vec![Value::Int4(5), txt("before truncate")]),
        Event::Change(Change::Truncate {
            tables: vec![tid("u")],
            cascade: false,
            restart_identity: false,
        }),
        ins("u", vec![Value::Int4(7), txt("after")]),
        // key change of a row inserted in the batch, swapped through 9
        upd(
            "t",
            Some(key(3, 3)),
            vec![Value::Int4(9), Value::Unchanged, Value::Int4(3)],
        ),
        commit(200),
    ]);
    let (acks, applier) = run_events(&url, cfg(1000, 60_000), ev).await;
    assert_eq!(acks, vec![Lsn(200)], "one batch, acked after commit");
    let stats = applier.stats();
    assert_eq!(stats.batches.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        stats
            .transactions_applied
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let c = connect(&url).await;
    assert_eq!(
        rows(
            &c,
            "SELECT id::text, left(doc, 6) || length(doc)::text, n::text FROM t ORDER BY t.id"
        )
        .await,
        vec!["1|bigbig15001|100", "9|bigbig15001|3", "10|new24|1"]
    );
    assert_eq!(
        rows(&c, "SELECT a::text, b FROM k ORDER BY k.a, k.b").await,
        vec!["1|x", "2|z"]
    );
    assert_eq!(rows(&c, "SELECT id::text, v FROM u").await, vec!["7|after"]);
    assert_eq!(
        rows(&c, "SELECT count(*)::text FROM trig_hits").await,
        vec!["0"],
        "replica role: no triggers"
    );
    let cp = read_checkpoint::<Lsn>(&c, &StateStore::new("ferry"), "main")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.position, Lsn(200));
    assert_eq!(
        cp.commit_time,
        Some(Timestamp::from_unix_micros(1_700_000_000_000_200))
    );
}

#[tokio::test]
async fn dropped_connection_before_commit_leaves_nothing() {
    let pg = server();
    let db = pg.create_database("crash").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let state = StateStore::new("ferry");
    let (client, conn) = connect_with_handle(&url).await;
    state.ensure(&client).await.unwrap();
    client
        .batch_execute("SET application_name = 'doomed'")
        .await
        .unwrap();
    let mut w = Writer::new(TablesConfig::default());
    let s = schemas()[0].clone();
    let mut fold = Fold::new();
    fold.push(
        Change::Insert {
            table: tid("t"),
            new: Row::new(vec![Value::Int4(50), txt("x"), Value::Null]),
        },
        Some(&s),
    )
    .unwrap();
    let mut txn = TargetTxn::new(client, state.clone(), "main", true);
    txn.begin(&mut w).await.unwrap();
    w.apply_fold(txn.client(), &fold).await.unwrap();
    write_checkpoint(txn.client(), &state, "main", &Lsn(500), Timestamp::now())
        .await
        .unwrap();
    conn.abort();
    drop(txn);
    let c = connect(&url).await;
    wait_for(30, "doomed backend to exit", || async {
        rows(
            &c,
            "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'doomed'",
        )
        .await
            == vec!["0"]
    })
    .await;
    assert_eq!(
        rows(&c, "SELECT count(*)::text FROM t WHERE id = 50").await,
        vec!["0"]
    );
    assert!(
        read_checkpoint::<Lsn>(&c, &state, "main")
            .await
            .unwrap()
            .is_none()
    );
}

/// A transaction that changed no row (a PostgreSQL source's heartbeat) only
/// moves the position. With no batch committed for `batch_ms` (here 30 s)
/// it commits at once, not `batch_ms` later; one more right after it waits
/// for the batch window as before, and so does a batch with a row change.
#[tokio::test]
async fn a_batch_that_only_moves_the_position_commits_without_the_window() {
    let pg = server();
    let db = pg.create_database("positions").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let mut applier = Applier::<Lsn>::new(
        connect(&url).await,
        StateStore::new("ferry"),
        TablesConfig::default(),
        cfg(1000, 30_000),
    )
    .await
    .expect("applier");
    let (tx, mut rx) = mpsc::channel(16);
    let acks = Arc::new(Mutex::new(Vec::new()));
    let a2 = Arc::clone(&acks);
    let run = tokio::spawn(async move {
        applier
            .run(
                &mut rx,
                move |p: &Lsn| a2.lock().unwrap().push(*p),
                std::future::pending(),
            )
            .await
    });
    for e in schemas().into_iter().map(Event::Relation) {
        tx.send(e).await.unwrap();
    }
    let started = std::time::Instant::now();
    tx.send(begin()).await.unwrap();
    tx.send(commit(100)).await.unwrap();
    wait_for(5, "the empty transaction's checkpoint", || {
        let acks = Arc::clone(&acks);
        async move { acks.lock().unwrap().contains(&Lsn(100)) }
    })
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Within the window of that commit: the next ones wait.
    tx.send(begin()).await.unwrap();
    tx.send(commit(200)).await.unwrap();
    tx.send(begin()).await.unwrap();
    tx.send(ins("u", vec![Value::Int4(7), txt("seven")]))
        .await
        .unwrap();
    tx.send(commit(300)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(*acks.lock().unwrap(), vec![Lsn(100)]);
    drop(tx);
    let outcome = run.await.unwrap().expect("run");
    assert_eq!(outcome, RunOutcome::SourceClosed);
    assert_eq!(*acks.lock().unwrap(), vec![Lsn(100), Lsn(300)]);
    let c = connect(&url).await;
    assert_eq!(
        read_checkpoint::<Lsn>(&c, &StateStore::new("ferry"), "main")
            .await
            .unwrap()
            .unwrap()
            .position,
        Lsn(300)
    );
    assert_eq!(
        rows(&c, "SELECT v FROM u WHERE id = 7").await,
        vec!["seven"]
    );
}

#[tokio::test]
async fn large_transaction_heartbeat_and_restart_skip() {
    let pg = server();
    let db = pg.create_database("batcher").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let t_schema = schemas()[2].clone();
    let big_txn = |first: i32, lsn: u64| {
        let mut ev = vec![Event::Relation(t_schema.clone()), begin()];
        for i in first..first + 35 {
            ev.push(ins("u", vec![Value::Int4(i), txt("row")]));
        }
        // A source policy replaced three of its values (counted with them).
        ev.push(replaced("u", "v", 3));
        ev.push(commit(lsn));
        ev
    };
    let counted = |c: Client| async move {
        rows(
            &c,
            "SELECT source_table || '.' || column_name || '=' || streamed FROM ferry.replaced_values",
        )
        .await
    };
    let mut ev = big_txn(100, 1000);
    ev.push(Event::Heartbeat {
        position: Lsn(1500),
        time: Timestamp::now(),
    });
    let (acks, applier) = run_events(&url, cfg(10, 60_000), ev).await;
    assert_eq!(
        acks,
        vec![Lsn(1000), Lsn(1500)],
        "big txn committed once, then heartbeat"
    );
    assert_eq!(
        applier
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let c = connect(&url).await;
    let state = StateStore::new("ferry");
    assert_eq!(
        read_checkpoint::<Lsn>(&c, &state, "main")
            .await
            .unwrap()
            .unwrap()
            .position,
        Lsn(1500)
    );
    assert_eq!(
        rows(&c, "SELECT count(*)::text FROM u WHERE v = 'row'").await,
        vec!["35"]
    );
    assert_eq!(counted(connect(&url).await).await, vec!["public.u.v=3"]);
    drop(applier);

    // Restart: the source resends the big transaction (skipped, even though
    // it spills) and a new one follows.
    let mut ev = big_txn(100, 1000);
    ev.extend([
        begin(),
        ins("u", vec![Value::Int4(999), txt("later")]),
        replaced("u", "v", 1),
        commit(2000),
    ]);
    let (acks, applier) = run_events(&url, cfg(10, 60_000), ev).await;
    assert_eq!(acks, vec![Lsn(2000)]);
    assert_eq!(
        applier
            .stats()
            .transactions_skipped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        rows(&c, "SELECT count(*)::text FROM u WHERE v = 'row'").await,
        vec!["35"],
        "no doubles"
    );
    assert_eq!(
        rows(&c, "SELECT v FROM u WHERE id = 999").await,
        vec!["later"]
    );
    assert_eq!(
        counted(connect(&url).await).await,
        vec!["public.u.v=4"],
        "the skipped transaction's values are not counted again"
    );
    assert_eq!(
        read_checkpoint::<Lsn>(&c, &state, "main")
            .await
            .unwrap()
            .unwrap()
            .position,
        Lsn(2000)
    );
}

#[tokio::test]
async fn shutdown_commits_complete_transactions_only() {
    let pg = server();
    let db = pg.create_database("shutdown").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let client = connect(&url).await;
    let mut applier = Applier::<Lsn>::new(
        client,
        StateStore::new("ferry"),
        TablesConfig::default(),
        cfg(1000, 60_000),
    )
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    for e in [
        Event::Relation(schemas()[2].clone()),
        begin(),
        ins("u", vec![Value::Int4(30), txt("done")]),
        commit(300),
        begin(),
        ins("u", vec![Value::Int4(31), txt("incomplete")]),
    ] {
        tx.send(e).await.unwrap();
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let a2 = Arc::clone(&acks);
    let c = connect(&url).await;
    let run = async {
        applier
            .run(&mut rx, move |p: &Lsn| a2.lock().unwrap().push(*p), async {
                let _ = stop_rx.await;
            })
            .await
    };
    let stopper = async {
        // Wait until the reader has consumed everything, then stop.
        wait_for(30, "events consumed", || async { tx.capacity() == 16 }).await;
        stop_tx.send(()).unwrap();
    };
    let (outcome, ()) = tokio::join!(run, stopper);
    assert_eq!(outcome.unwrap(), RunOutcome::Shutdown);
    assert_eq!(*acks.lock().unwrap(), vec![Lsn(300)]);
    assert_eq!(
        rows(&c, "SELECT v FROM u WHERE id >= 30").await,
        vec!["done"]
    );
}

/// Staging tables outlive a target transaction (emptied at COMMIT) and are
/// reused; a spilled transaction dropped at shutdown rolls back to its
/// savepoint, and the next run on the same applier still applies exactly.
#[tokio::test]
async fn staging_reused_across_batches_and_savepoint_rollback() {
    let pg = server();
    let db = pg.create_database("staging").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let u = schemas()[2].clone();
    let inserts = |ids: std::ops::Range<i32>, v: &str| -> Vec<Event<Lsn>> {
        ids.map(|i| ins("u", vec![Value::Int4(i), txt(v)]))
            .collect()
    };
    let mut first = vec![Event::Relation(u), begin()];
    first.extend(inserts(10..15, "a"));
    first.extend([commit(100), begin()]);
    first.extend((10..15).map(|i| upd("u", None, vec![Value::Int4(i), txt("b")])));
    first.extend([commit(200), begin()]);
    first.extend(inserts(20..32, "big"));
    first.extend([commit(300), begin()]);
    // Spills (5 rows per step), then the source goes away before Commit.
    first.extend(inserts(40..47, "never"));
    let (acks, mut applier) = run_events(&url, cfg(5, 60_000), first).await;
    assert_eq!(acks, vec![Lsn(100), Lsn(200), Lsn(300)]);

    let mut second = vec![begin()];
    second.extend(inserts(50..56, "later"));
    second.extend([del("u", key(10, 2)), commit(400)]);
    assert_eq!(run_more(&mut applier, second).await, vec![Lsn(400)]);

    let c = connect(&url).await;
    assert_eq!(
        rows(
            &c,
            "SELECT v || ':' || count(*) FROM u GROUP BY v ORDER BY v"
        )
        .await,
        vec!["b:4", "big:12", "gone:2", "later:6"]
    );
    assert_eq!(
        rows(&c, "SELECT count(*)::text FROM u WHERE id IN (10, 40)").await,
        vec!["0"]
    );
    // One staging table served every batch of the session (still open).
    assert_eq!(staging_tables(&c).await, vec!["1"]);
    drop(applier);
}

/// Upserts go in as a plain insert first (a COPY into the table); a key
/// the target holds already (here rows 1 and 2, as a snapshot overlap or a
/// folded delete and re-insert leaves them) rolls that back and upserts
/// the same rows, and later batches of the table keep the exact result.
#[tokio::test]
async fn upserts_of_keys_already_there_end_in_the_source_rows() {
    let pg = server();
    let db = pg.create_database("upsert").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let u = schemas()[2].clone();
    let ev = vec![
        Event::Relation(u),
        begin(),
        ins("u", vec![Value::Int4(3), txt("three")]),
        // Already on the target: the plain INSERT fails after row 3.
        ins("u", vec![Value::Int4(1), txt("new one")]),
        commit(100),
        begin(),
        ins("u", vec![Value::Int4(4), txt("four")]),
        ins("u", vec![Value::Int4(2), txt("new two")]),
        commit(200),
        begin(),
        ins("u", vec![Value::Int4(5), txt("five")]),
        commit(300),
    ];
    let (acks, _applier) = run_events(&url, cfg(1, 60_000), ev).await;
    assert_eq!(acks, vec![Lsn(100), Lsn(200), Lsn(300)]);
    let c = connect(&url).await;
    assert_eq!(
        rows(&c, "SELECT id::text, v FROM u ORDER BY id").await,
        vec!["1|new one", "2|new two", "3|three", "4|four", "5|five"]
    );
}

/// Staging tables of the applier's session still open (not their
/// indexes).
async fn staging_tables(c: &Client) -> Vec<String> {
    rows(
        c,
        "SELECT count(*)::text FROM pg_class WHERE relname LIKE 'ferry_stage_%' AND relpersistence = 't' AND relkind = 'r'",
    )
    .await
}

/// Runs `events` on `applier` (the session of an earlier run) until the
/// feed ends; returns the positions acknowledged.
async fn run_more(applier: &mut Applier<Lsn>, events: Vec<Event<Lsn>>) -> Vec<Lsn> {
    let (tx, mut rx) = mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        for e in events {
            tx.send(e).await.unwrap();
        }
    });
    let mut acks = Vec::new();
    let outcome = applier
        .run(&mut rx, |p: &Lsn| acks.push(*p), std::future::pending())
        .await
        .expect("run");
    feeder.await.unwrap();
    assert_eq!(outcome, RunOutcome::SourceClosed);
    acks
}

/// New keys are COPYed straight into the target: a batch of inserts
/// creates no staging table. A COPY that meets a key already there (row 1,
/// first of 3,001 rows, so the server refuses it many COPY chunks before
/// the stream ends) is rolled back to its savepoint and the same rows are
/// upserted on the same session, which goes on applying. A table with a
/// rewrite rule (an `INSERT` runs it, `COPY` would not) keeps the staged
/// `INSERT`.
#[tokio::test]
async fn new_keys_are_copied_into_the_target_and_a_key_already_there_falls_back_to_upserts() {
    let pg = server();
    let db = pg.create_database("direct").unwrap();
    pg.psql(&db, SETUP).unwrap();
    pg.psql(
        &db,
        "CREATE TABLE r (id int PRIMARY KEY, v text);
         CREATE RULE r_also AS ON INSERT TO r DO ALSO INSERT INTO trig_hits VALUES (2);",
    )
    .unwrap();
    let url = pg.url(&db);
    let u = schemas()[2].clone();
    let mut first = vec![Event::Relation(u), begin()];
    first.extend((100..110).map(|i| ins("u", vec![Value::Int4(i), txt("a")])));
    first.push(commit(100));
    let (acks, mut applier) = run_events(&url, cfg(10_000, 60_000), first).await;
    assert_eq!(acks, vec![Lsn(100)]);
    let c = connect(&url).await;
    assert_eq!(staging_tables(&c).await, vec!["0"]);
    assert_eq!(
        rows(&c, "SELECT count(*)::text FROM u WHERE v = 'a'").await,
        vec!["10"]
    );

    let wide = "w".repeat(200);
    let mut second = vec![begin(), ins("u", vec![Value::Int4(1), txt("new one")])];
    second.extend((1000..4000).map(|i| ins("u", vec![Value::Int4(i), txt(&wide)])));
    second.push(commit(200));
    assert_eq!(run_more(&mut applier, second).await, vec![Lsn(200)]);
    assert_eq!(
        rows(
            &c,
            "SELECT v || ':' || count(*) FROM u GROUP BY v ORDER BY v"
        )
        .await,
        vec![
            "a:10".to_owned(),
            "gone:1".to_owned(),
            "new one:1".to_owned(),
            format!("{wide}:3000"),
        ]
    );
    // The fallback staged the rows it upserted.
    assert_eq!(staging_tables(&c).await, vec!["1"]);

    let r = table("r", vec![col("id", "int4"), col("v", "text")], vec![0]);
    let third = vec![
        Event::Relation(r),
        begin(),
        ins("u", vec![Value::Int4(5000), txt("after")]),
        ins("r", vec![Value::Int4(1), txt("ruled")]),
        commit(400),
    ];
    assert_eq!(run_more(&mut applier, third).await, vec![Lsn(400)]);
    assert_eq!(
        rows(&c, "SELECT v FROM u WHERE id = 5000").await,
        vec!["after"]
    );
    assert_eq!(rows(&c, "SELECT v FROM r").await, vec!["ruled"]);
    assert_eq!(staging_tables(&c).await, vec!["2"]);
    drop(applier);
}

/// A keyless table's batch of inserts alone is COPYed straight into the
/// target in source order (duplicates stay duplicates, no staging table);
/// a batch that also deletes is staged and applied in order as before.
#[tokio::test]
async fn a_keyless_tables_inserts_alone_are_copied_in_source_order() {
    let pg = server();
    let db = pg.create_database("keyless").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let k = schemas()[1].clone();
    let row = |a: i32, b: Option<&str>| vec![Value::Int4(a), b.map_or(Value::Null, txt)];
    let first = vec![
        Event::Relation(k),
        begin(),
        ins("k", row(2, Some("x"))),
        ins("k", row(1, Some("x"))),
        ins("k", row(1, Some("x"))),
        ins("k", row(3, None)),
        commit(100),
    ];
    let (acks, mut applier) = run_events(&url, cfg(10_000, 60_000), first).await;
    assert_eq!(acks, vec![Lsn(100)]);
    let c = connect(&url).await;
    assert_eq!(staging_tables(&c).await, vec!["0"]);
    // Written in source order: the heap holds them as they came.
    assert_eq!(
        rows(
            &c,
            "SELECT a || ':' || coalesce(b, 'null') FROM k ORDER BY ctid"
        )
        .await,
        vec!["2:x", "1:x", "1:x", "3:null"]
    );
    let second = vec![
        begin(),
        del("k", OldRow::Full(Row::new(row(1, Some("x"))))),
        ins("k", row(4, Some("y"))),
        commit(200),
    ];
    assert_eq!(run_more(&mut applier, second).await, vec![Lsn(200)]);
    assert_eq!(
        rows(
            &c,
            "SELECT a || ':' || coalesce(b, 'null') FROM k ORDER BY a, b"
        )
        .await,
        vec!["1:x", "2:x", "3:null", "4:y"]
    );
    assert_eq!(staging_tables(&c).await, vec!["1"]);
    drop(applier);
}

/// A change of one source relation touches that table's rows only: an
/// update or delete of an inheritance parent's key leaves a child row with
/// the same key alone (`ONLY`), a keyless parent's delete does not reach
/// the child row at the same `ctid`, and on a partitioned table (named
/// without `ONLY`) a keyless delete removes one row, not every partition's
/// row at that `ctid`.
#[tokio::test]
async fn changes_of_a_parent_leave_its_children_alone() {
    let pg = server();
    let db = pg.create_database("inherit").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE animals (id int PRIMARY KEY, name text);
         CREATE TABLE dogs (bark text) INHERITS (animals);
         ALTER TABLE dogs ADD PRIMARY KEY (id);
         INSERT INTO animals VALUES (1, 'a1'), (2, 'a2');
         INSERT INTO dogs VALUES (1, 'd1', 'woof'), (2, 'd2', 'woof');
         CREATE TABLE notes (n text);
         CREATE TABLE memos () INHERITS (notes);
         INSERT INTO notes VALUES ('same'); INSERT INTO memos VALUES ('same');
         CREATE TABLE m (id int, r int, v text) PARTITION BY LIST (r);
         CREATE TABLE m1 PARTITION OF m FOR VALUES IN (1);
         CREATE TABLE m2 PARTITION OF m FOR VALUES IN (2);
         INSERT INTO m VALUES (5, 1, 'x'), (5, 2, 'x');
         CREATE TABLE k (id int, r int, v text, PRIMARY KEY (id, r)) PARTITION BY LIST (r);
         CREATE TABLE k1 PARTITION OF k FOR VALUES IN (1);
         INSERT INTO k VALUES (1, 1, 'old');",
    )
    .unwrap();
    let url = pg.url(&db);
    let schemas = [
        table(
            "animals",
            vec![col("id", "int4"), col("name", "text")],
            vec![0],
        ),
        table("notes", vec![col("n", "text")], vec![]),
        table(
            "m",
            vec![col("id", "int4"), col("r", "int4"), col("v", "text")],
            vec![],
        ),
        table(
            "k",
            vec![col("id", "int4"), col("r", "int4"), col("v", "text")],
            vec![0, 1],
        ),
    ];
    let mut ev: Vec<Event<Lsn>> = schemas.into_iter().map(Event::Relation).collect();
    ev.extend([
        begin(),
        upd("animals", None, vec![Value::Int4(1), txt("a1 new")]),
        del("animals", key(2, 2)),
        del("notes", OldRow::Full(Row::new(vec![txt("same")]))),
        del(
            "m",
            OldRow::Full(Row::new(vec![Value::Int4(5), Value::Int4(1), txt("x")])),
        ),
        upd("k", None, vec![Value::Int4(1), Value::Int4(1), txt("new")]),
        commit(100),
    ]);
    let (acks, _) = run_events(&url, cfg(1000, 60_000), ev).await;
    assert_eq!(acks, vec![Lsn(100)]);
    let c = connect(&url).await;
    assert_eq!(
        rows(&c, "SELECT id || ':' || name FROM ONLY animals ORDER BY id").await,
        vec!["1:a1 new"]
    );
    assert_eq!(
        rows(&c, "SELECT id || ':' || name FROM dogs ORDER BY id").await,
        vec!["1:d1", "2:d2"],
        "the child's rows with the parent's keys are untouched"
    );
    assert_eq!(
        rows(&c, "SELECT n FROM ONLY notes").await,
        Vec::<String>::new()
    );
    assert_eq!(rows(&c, "SELECT n FROM memos").await, vec!["same"]);
    assert_eq!(
        rows(&c, "SELECT tableoid::regclass || ':' || id FROM m").await,
        vec!["m2:5"],
        "one row deleted, the other partition's row at the same ctid kept"
    );
    assert_eq!(rows(&c, "SELECT v FROM k").await, vec!["new"]);
}

/// Many small transactions over many batches, with what breaks a batch's
/// fold in its middle — a truncate, key changes that leave a value
/// unchanged (barriers), a transaction larger than a batch (spilled behind
/// a savepoint) — while events keep arriving during each flush: the target
/// ends exactly as a model of the source, acknowledged in order.
#[tokio::test]
async fn many_small_transactions_over_many_batches_are_exact() {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering::Relaxed;

    let pg = server();
    let db = pg.create_database("batches").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, doc text NOT NULL, n int);",
    )
    .unwrap();
    let url = pg.url(&db);
    let schema = Arc::clone(&schemas()[0]);
    let row = |id: i32, doc: &str, n: i32| vec![Value::Int4(id), txt(doc), Value::Int4(n)];
    // The source's table, as the events below leave it.
    let mut model: BTreeMap<i32, (String, i32)> = BTreeMap::new();
    let mut ev: Vec<Event<Lsn>> = vec![Event::Relation(schema)];
    let mut lsn = 0u64;
    let mut sent = 0u64;
    let mut seed = 7u64;
    let mut next = |m: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m
    };
    for txn in 0..600u32 {
        ev.push(begin());
        let changes = match txn {
            // Larger than a batch: applied in pieces behind a savepoint.
            300 => 130,
            _ => 1 + next(5) as u32,
        };
        for _ in 0..changes {
            let id = 1 + next(80) as i32;
            let n = next(1000) as i32;
            match (model.get(&id).cloned(), next(4)) {
                (None, _) => {
                    let doc = format!("doc {id} {n}");
                    ev.push(ins("t", row(id, &doc, n)));
                    sent += 1;
                    model.insert(id, (doc, n));
                }
                (Some(_), 0) => {
                    ev.push(del("t", key(id, 3)));
                    sent += 1;
                    model.remove(&id);
                }
                (Some((doc, _)), 1) => {
                    // The key moves and `doc` comes as unchanged (pgoutput's
                    // mark for an unchanged TOASTed value): a barrier in the
                    // fold.
                    let to = 100 + next(80) as i32;
                    if model.contains_key(&to) {
                        continue;
                    }
                    ev.push(upd(
                        "t",
                        Some(key(id, 3)),
                        vec![Value::Int4(to), Value::Unchanged, Value::Int4(n)],
                    ));
                    sent += 1;
                    model.remove(&id);
                    model.insert(to, (doc, n));
                }
                (Some(_), _) => {
                    let doc = format!("doc {id} {n} updated");
                    ev.push(upd("t", None, row(id, &doc, n)));
                    sent += 1;
                    model.insert(id, (doc, n));
                }
            }
        }
        if txn == 450 {
            ev.push(Event::Change(Change::Truncate {
                tables: vec![tid("t")],
                cascade: false,
                restart_identity: false,
            }));
            model.clear();
            sent += 1;
        }
        lsn += 10;
        ev.push(commit(lsn));
    }
    let (acks, applier) = run_events(&url, cfg(50, 60_000), ev).await;
    let stats = applier.stats();
    assert_eq!(stats.transactions_applied.load(Relaxed), 600);
    // The feeder fills the channel while each batch commits: transactions
    // are folded into the next batch meanwhile (key changes and the
    // truncate are given back, and handled after the commit).
    let ahead = stats.transactions_folded_ahead.load(Relaxed);
    assert!(
        ahead > 0,
        "no transaction was folded while a batch committed"
    );
    // A batch closes at the first commit past 50 rows (a transaction has
    // at most 5 changes), the spilled one aside.
    let batches = stats.batches.load(Relaxed);
    assert!(
        batches >= (sent - 130) / 54,
        "{batches} batches for {sent} changes in batches of 50 rows"
    );
    assert!(
        acks.windows(2).all(|w| w[0] < w[1]),
        "acks in order: {acks:?}"
    );
    assert_eq!(acks.last(), Some(&Lsn(lsn)));
    let c = connect(&url).await;
    let want: Vec<String> = model
        .iter()
        .map(|(id, (doc, n))| format!("{id}|{doc}|{n}"))
        .collect();
    assert_eq!(
        rows(&c, "SELECT id::text, doc, n::text FROM t ORDER BY t.id").await,
        want
    );
    let cp = read_checkpoint::<Lsn>(&c, &StateStore::new("ferry"), "main")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.position, Lsn(lsn));
}

/// A change that cannot be folded while a batch commits (a row wider than
/// its table: reader output ferry cannot interpret) fails the run, but
/// only after the batch being committed is done and acknowledged: nothing
/// of the bad transaction is applied, nothing before it is lost.
#[tokio::test]
async fn a_change_that_fails_to_fold_ahead_fails_after_the_batch_before_commits() {
    use std::sync::atomic::Ordering::Relaxed;

    let pg = server();
    let db = pg.create_database("ahead_fails").unwrap();
    pg.psql(&db, "CREATE TABLE u (id int PRIMARY KEY, v text);")
        .unwrap();
    let url = pg.url(&db);
    let mut applier = applier(&url, cfg(6, 60_000)).await;
    // Every event is in the channel before the run starts: while the
    // first batch (two transactions of three rows) commits, the next two
    // transactions (six events: as many as are received ahead with
    // `batch_rows` = 6) are there to be folded ahead.
    let three = |lsn: u64, ids: [i32; 3]| {
        let mut ev = vec![begin()];
        ev.extend(ids.map(|id| ins("u", vec![Value::Int4(id), txt("first")])));
        ev.push(commit(lsn));
        ev
    };
    let mut events = vec![Event::Relation(Arc::clone(&schemas()[2]))];
    events.extend(three(10, [1, 2, 3]));
    events.extend(three(15, [11, 12, 13]));
    events.extend([
        begin(),
        ins("u", vec![Value::Int4(20), txt("second")]),
        commit(20),
        begin(),
        ins("u", vec![Value::Int4(30), txt("too"), txt("wide")]),
        commit(30),
    ]);
    let (tx, mut rx) = mpsc::channel(events.len());
    for e in events {
        tx.send(e).await.unwrap();
    }
    drop(tx);
    let mut acks = Vec::new();
    let err = applier
        .run(&mut rx, |p: &Lsn| acks.push(*p), std::future::pending())
        .await
        .expect_err("a row wider than its table fails the run");
    let text = format!("{err:#}");
    assert!(
        text.contains("table public.u: row has 3 columns, schema has 2"),
        "{text}"
    );
    assert_eq!(acks, vec![Lsn(15)], "the batch before it is acknowledged");
    assert_eq!(
        applier.stats().transactions_folded_ahead.load(Relaxed),
        1,
        "the second transaction was folded while the first committed"
    );
    let c = connect(&url).await;
    assert_eq!(
        rows(&c, "SELECT id::text, v FROM u ORDER BY u.id").await,
        vec![
            "1|first", "2|first", "3|first", "11|first", "12|first", "13|first"
        ]
    );
    let cp = read_checkpoint::<Lsn>(&c, &StateStore::new("ferry"), "main")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.position, Lsn(15));
}
