//! Shared helpers for the target tests (real PostgreSQL via ferry-testkit).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_apply::{Applier, ApplierConfig, RunOutcome, StateStore};
use ferry_core::config::TablesConfig;
use ferry_core::value::Timestamp;
use ferry_core::{
    Change, Column, Event, Lsn, OldRow, ReplicaIdentity, Row, TableId, TableSchema, Value,
};
use ferry_testkit::{PgOptions, PgServer};
use std::sync::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

pub fn server() -> PgServer {
    PgServer::start(PgOptions::default()).expect("start throwaway PostgreSQL")
}

pub async fn connect(url: &str) -> Client {
    connect_with_handle(url).await.0
}

pub async fn connect_with_handle(url: &str) -> (Client, JoinHandle<()>) {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let h = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, h)
}

/// Rows of `sql` as text (each column `::text`, joined with `|`).
pub async fn rows(c: &Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .expect("query")
        .into_iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.get::<_, Option<String>>(i)
                        .unwrap_or_else(|| "NULL".into())
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

pub fn col(name: &str, ty: &str) -> Column {
    Column {
        name: name.into(),
        source_type: ty.into(),
        pg_type: ty.into(),
        type_oid: None,
        nullable: true,
    }
}

pub fn table(name: &str, cols: Vec<Column>, key: Vec<usize>) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::new("public", name),
        columns: cols,
        key: key.clone(),
        replica_identity: if key.is_empty() {
            ReplicaIdentity::Full
        } else {
            ReplicaIdentity::Default
        },
    })
}

pub fn tid(name: &str) -> TableId {
    TableId::new("public", name)
}

pub fn txt(s: &str) -> Value {
    Value::Text(s.into())
}

pub fn ins(t: &str, values: Vec<Value>) -> Event<Lsn> {
    Event::Change(Change::Insert {
        table: tid(t),
        new: Row::new(values),
    })
}

pub fn upd(t: &str, old: Option<OldRow>, values: Vec<Value>) -> Event<Lsn> {
    Event::Change(Change::Update {
        table: tid(t),
        old,
        new: Row::new(values),
    })
}

pub fn del(t: &str, old: OldRow) -> Event<Lsn> {
    Event::Change(Change::Delete { table: tid(t), old })
}

pub fn begin() -> Event<Lsn> {
    Event::Begin {
        xid: None,
        commit_time: Timestamp::now(),
        final_position: None,
    }
}

pub fn commit(lsn: u64) -> Event<Lsn> {
    Event::Commit {
        position: Lsn(lsn),
        commit_time: Timestamp::from_unix_micros(1_700_000_000_000_000 + lsn as i64),
    }
}

/// Poll `f` until it returns true (or panic after `secs`).
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new applier on a new session to `url` (state schema `ferry`, tables
/// as on the source).
pub async fn applier(url: &str, c: ApplierConfig) -> Applier<Lsn> {
    let client = connect(url).await;
    Applier::<Lsn>::new(client, StateStore::new("ferry"), TablesConfig::default(), c)
        .await
        .expect("applier")
}

/// Run an applier with `c` over `events` until the channel closes; returns
/// the acknowledged positions and the applier.
pub async fn run_events(
    url: &str,
    c: ApplierConfig,
    events: Vec<Event<Lsn>>,
) -> (Vec<Lsn>, Applier<Lsn>) {
    let mut applier = applier(url, c).await;
    let (tx, mut rx) = mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        for e in events {
            tx.send(e).await.unwrap();
        }
    });
    let acks = Arc::new(Mutex::new(Vec::new()));
    let a2 = Arc::clone(&acks);
    let outcome = applier
        .run(
            &mut rx,
            move |p: &Lsn| a2.lock().unwrap().push(*p),
            std::future::pending(),
        )
        .await
        .expect("run");
    assert_eq!(outcome, RunOutcome::SourceClosed);
    feeder.await.unwrap();
    let acks = acks.lock().unwrap().clone();
    (acks, applier)
}
