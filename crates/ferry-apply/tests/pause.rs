//! The applier's pause switch and its per-table snapshot skip, against a
//! real target PostgreSQL.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry_apply::{Applier, ApplierConfig, RunOutcome, StateStore};
use ferry_core::config::{ApplyConfig, TablesConfig};
use ferry_core::value::Timestamp;
use ferry_core::{Event, Lsn, Value};
use tokio::sync::{mpsc, watch};

const SETUP: &str = "
CREATE TABLE u (id int PRIMARY KEY, v text);
CREATE TABLE w (id int PRIMARY KEY, v text);
";

fn cfg() -> ApplierConfig {
    let apply = ApplyConfig {
        batch_rows: 1000,
        batch_ms: 50,
        ..ApplyConfig::default()
    };
    ApplierConfig::new("main", &apply, false)
}

fn row(t: &str, id: i32) -> Event<Lsn> {
    ins(t, vec![Value::Int4(id), txt("x")])
}

/// How long the test watches a paused applier do nothing.
const WATCH: Duration = Duration::from_millis(700);

/// Paused between transactions, the applier reads nothing from the channel
/// and applies nothing; paused inside a transaction, it completes that
/// transaction, commits and acknowledges it, then reads nothing more;
/// resumed, it carries on exactly where it stopped.
#[tokio::test]
async fn paused_applier_applies_nothing_until_resumed() {
    let pg = server();
    let db = pg.create_database("pause").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let (pause_tx, pause_rx) = watch::channel(false);
    let mut c = cfg();
    c.pause = Some(pause_rx);
    let mut applier = Applier::<Lsn>::new(
        connect(&url).await,
        StateStore::new("ferry"),
        TablesConfig::default(),
        c,
    )
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let acks = Arc::new(Mutex::new(Vec::new()));
    let a2 = Arc::clone(&acks);
    let check = connect(&url).await;
    let acked = || acks.lock().unwrap().clone();
    let ids = || async { rows(&check, "SELECT id::text FROM u ORDER BY id").await };
    let run = applier.run(
        &mut rx,
        move |p: &Lsn| a2.lock().unwrap().push(*p),
        std::future::pending(),
    );
    let driver = async {
        let schema = table("u", vec![col("id", "int4"), col("v", "text")], vec![0]);
        for e in [Event::Relation(schema), begin(), row("u", 1), commit(100)] {
            tx.send(e).await.unwrap();
        }
        wait_for(30, "ack of 100", || async { acked() == vec![Lsn(100)] }).await;

        // Paused between transactions: the channel fills and stays full.
        pause_tx.send(true).unwrap();
        for e in [begin(), row("u", 2), commit(200), begin()] {
            tx.send(e).await.unwrap();
        }
        tokio::time::sleep(WATCH).await;
        assert_eq!(tx.capacity(), 0, "the paused applier read an event");
        assert_eq!(acked(), vec![Lsn(100)]);
        assert_eq!(ids().await, vec!["1"]);

        // Resumed: it reads all four and waits inside the open transaction.
        pause_tx.send(false).unwrap();
        wait_for(30, "the four events read", || async { tx.capacity() == 4 }).await;

        // Paused inside a transaction: it completes it, commits, stops.
        pause_tx.send(true).unwrap();
        for e in [row("u", 3), commit(300), begin(), row("u", 4)] {
            tx.send(e).await.unwrap();
        }
        wait_for(30, "ack of 300", || async {
            acked() == vec![Lsn(100), Lsn(300)]
        })
        .await;
        tokio::time::sleep(WATCH).await;
        assert_eq!(tx.capacity(), 2, "read past the paused boundary");
        assert_eq!(acked(), vec![Lsn(100), Lsn(300)]);
        assert_eq!(ids().await, vec!["1", "2", "3"]);

        // Resumed: the rest, then the channel closes.
        pause_tx.send(false).unwrap();
        tx.send(commit(400)).await.unwrap();
        drop(tx);
    };
    let (outcome, ()) = tokio::join!(run, driver);
    assert_eq!(outcome.unwrap(), RunOutcome::SourceClosed);
    assert_eq!(acked(), vec![Lsn(100), Lsn(300), Lsn(400)]);
    assert_eq!(ids().await, vec!["1", "2", "3", "4"]);
}

/// Shutdown while paused commits nothing new and returns at once.
#[tokio::test]
async fn shutdown_while_paused() {
    let pg = server();
    let db = pg.create_database("pause_stop").unwrap();
    pg.psql(&db, SETUP).unwrap();
    let url = pg.url(&db);
    let (_pause_tx, pause_rx) = watch::channel(true);
    let mut c = cfg();
    c.pause = Some(pause_rx);
    let mut applier = Applier::<Lsn>::new(
        connect(&url).await,
        StateStore::new("ferry"),
        TablesConfig::default(),
        c,
    )
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let schema = table("u", vec![col("id", "int4"), col("v", "text")], vec![0]);
    for e in [Event::Relation(schema), begin(), row("u", 1), commit(100)] {
        tx.send(e).await.unwrap();
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    stop_tx.send(()).unwrap();
    let mut acks = Vec::new();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        applier.run(&mut rx, |p: &Lsn| acks.push(*p), async {
            let _ = stop_rx.await;
        }),
    )
    .await
    .expect("shutdown while paused returns");
    assert_eq!(outcome.unwrap(), RunOutcome::Shutdown);
    assert!(acks.is_empty(), "acknowledged while paused: {acks:?}");
    assert_eq!(tx.capacity(), 0, "the paused applier read an event");
    let check = connect(&url).await;
    assert!(rows(&check, "SELECT id FROM u").await.is_empty());
}

fn begin_at(final_position: u64) -> Event<Lsn> {
    Event::Begin {
        xid: None,
        commit_time: Timestamp::now(),
        final_position: Some(Lsn(final_position)),
    }
}

/// A table reloaded from a snapshot at 500 already holds the transactions
/// that commit before 500: their changes of it are dropped, those of other
/// tables applied; from 500 on, everything is applied.
#[tokio::test]
async fn changes_before_a_tables_snapshot_are_skipped() {
    let pg = server();
    let db = pg.create_database("snapskip").unwrap();
    pg.psql(&db, SETUP).unwrap();
    pg.psql(&db, "INSERT INTO u VALUES (1, 'from the snapshot')")
        .unwrap();
    let url = pg.url(&db);
    let mut applier = Applier::<Lsn>::new(
        connect(&url).await,
        StateStore::new("ferry"),
        TablesConfig::default(),
        cfg(),
    )
    .await
    .unwrap();
    applier.skip_before_snapshots(HashMap::from([(tid("u"), Lsn(500))]));
    let (tx, mut rx) = mpsc::channel(64);
    let two = |t| table(t, vec![col("id", "int4"), col("v", "text")], vec![0]);
    for e in [
        Event::Relation(two("u")),
        Event::Relation(two("w")),
        // Commits at 400, before u's snapshot: u's change is in it already.
        begin_at(400),
        row("u", 1),
        row("w", 1),
        replaced("u", 1),
        replaced("w", 1),
        commit(400),
        // Commits at 500: not in the snapshot.
        begin_at(500),
        row("u", 2),
        row("w", 2),
        replaced("u", 10),
        replaced("w", 10),
        commit(500),
    ] {
        tx.send(e).await.unwrap();
    }
    drop(tx);
    let mut acks = Vec::new();
    let outcome = applier
        .run(&mut rx, |p: &Lsn| acks.push(*p), std::future::pending())
        .await
        .unwrap();
    assert_eq!(outcome, RunOutcome::SourceClosed);
    assert_eq!(acks.last(), Some(&Lsn(500)));
    let c = connect(&url).await;
    assert_eq!(
        rows(&c, "SELECT id::text, v FROM u ORDER BY id").await,
        vec!["1|from the snapshot", "2|x"]
    );
    assert_eq!(
        rows(&c, "SELECT id::text FROM w ORDER BY id").await,
        vec!["1", "2"]
    );
    // Replaced values are counted like their rows: u's at 400 are in its
    // snapshot already.
    assert_eq!(
        rows(
            &c,
            "SELECT source_table || '=' || streamed FROM ferry.replaced_values ORDER BY 1"
        )
        .await,
        vec!["public.u=10", "public.w=11"]
    );
}

/// `values` values of `t.v` replaced by a source policy.
fn replaced(t: &str, values: u64) -> Event<Lsn> {
    Event::Replaced {
        table: tid(t),
        column: "v".to_owned(),
        values,
    }
}
