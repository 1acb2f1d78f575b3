//! Source transactions through the change reader: a writer on another
//! connection moves money between accounts in transactions of 2 to 8 row
//! changes while the reader reads with a small entry limit (so reads are
//! cut short in the middle of the writer's transactions); every source
//! transaction must come out inside one emitted transaction, and applying
//! the transactions in order must pass only through states whose total is
//! the constant the writer keeps.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_core::config::TablesConfig;
use ferry_core::{Change, ChangeLogSeq, Event, Value};
use ferry_sqlite::reader::{self, ChangeReader};
use ferry_sqlite::{capture, catalog};
use rusqlite::Connection;

const ACCOUNTS: i64 = 20;
const START: i64 = 1000;

fn app(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(20)).unwrap();
    c
}

/// Transaction `i` moves money between `2 + i % 4` pairs of accounts and
/// stamps `txn = i` on every row it changes (so each entry names its
/// source transaction); returns how many row changes it made.
fn transfer(conn: &mut Connection, i: i64) -> rusqlite::Result<i64> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let moves = 1 + i % 4;
    for m in 0..moves {
        let from = (i * 7 + m * 3) % ACCOUNTS + 1;
        let to = (from + 1 + m) % ACCOUNTS + 1;
        tx.execute(
            "UPDATE acct SET bal = bal - ?1, txn = ?2 WHERE id = ?3",
            (m + 1, i, from),
        )?;
        tx.execute(
            "UPDATE acct SET bal = bal + ?1, txn = ?2 WHERE id = ?3",
            (m + 1, i, to),
        )?;
    }
    tx.commit()?;
    Ok(2 * moves)
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int8(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

#[test]
fn every_source_transaction_is_read_whole_while_the_application_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.db");
    let a = app(&path);
    a.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL, txn INTEGER);",
    )
    .unwrap();
    for id in 1..=ACCOUNTS {
        a.execute("INSERT INTO acct VALUES (?1, ?2, 0)", (id, START))
            .unwrap();
    }
    let mut conn = capture::open_read_write(&path).unwrap();
    let filter = TablesConfig::default().filter().unwrap();
    let cat = catalog::read(&conn, &filter, &Default::default()).unwrap();
    capture::install(&mut conn, &cat.tables).unwrap();
    let mut first = HashMap::new();
    let mut w = app(&path);
    for i in 1..=10 {
        first.insert(i, transfer(&mut w, i).unwrap());
    }
    // A snapshot taken now: no transaction may straddle its position.
    let mark = reader::head(&conn).unwrap();
    assert!(mark.0 > 0);
    reader::mark_snapshot(&path, mark).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut w = app(&path);
            let mut sizes = first;
            let mut i = 11;
            while !stop.load(Ordering::SeqCst) || i < 300 {
                sizes.insert(i, transfer(&mut w, i).unwrap());
                i += 1;
            }
            sizes
        })
    };
    let mut r = ChangeReader::open(&path).unwrap();
    let mut events = Vec::new();
    let mut pos = ChangeLogSeq(0);
    let (mut reads, started) = (0, std::time::Instant::now());
    while !writer.is_finished() {
        let b = r.read_after(pos, 7).unwrap();
        events.extend(b.events);
        pos = b.last.unwrap_or(pos);
        reads += 1;
        if reads >= 200 && started.elapsed() >= Duration::from_secs(2) {
            stop.store(true, Ordering::SeqCst);
        }
    }
    let sizes = writer.join().unwrap();
    loop {
        let b = r.read_after(pos, 7).unwrap();
        events.extend(b.events);
        match b.last {
            Some(l) => pos = l,
            None => break,
        }
    }

    // Group the events into transactions; count each source transaction's
    // entries per emitted transaction.
    let mut balances: BTreeMap<i64, i64> = (1..=ACCOUNTS).map(|id| (id, START)).collect();
    let mut open: Option<(u64, HashMap<i64, i64>)> = None;
    let (mut emitted, mut entries, mut at_mark) = (0, 0u64, false);
    for e in &events {
        match e {
            Event::Begin { final_position, .. } => {
                assert!(open.is_none(), "Begin inside a transaction");
                open = Some((final_position.unwrap().0, HashMap::new()));
            }
            Event::Change(Change::Update { new, .. }) => {
                let (_, txns) = open.as_mut().expect("change outside a transaction");
                *txns.entry(int(&new.values[2])).or_default() += 1;
                balances.insert(int(&new.values[0]), int(&new.values[1]));
                entries += 1;
            }
            Event::Commit { position, .. } => {
                let (first, txns) = open.take().expect("Commit without Begin");
                for (txn, n) in &txns {
                    assert_eq!(
                        *n, sizes[txn],
                        "source transaction {txn} split: {n} of its {} entries in the transaction committed at {position}",
                        sizes[txn]
                    );
                }
                assert_eq!(position.0 - first, txns.values().sum::<i64>() as u64);
                // No emitted transaction spans the snapshot position.
                assert!(
                    position.0 <= mark.0 || first >= mark.0,
                    "{first}..{position} spans {mark}"
                );
                at_mark |= position.0 == mark.0;
                let total: i64 = balances.values().sum();
                assert_eq!(
                    total,
                    ACCOUNTS * START,
                    "a partial transfer after {position}"
                );
                emitted += 1;
            }
            Event::Change(other) => panic!("unexpected {other:?}"),
            _ => {}
        }
    }
    assert!(open.is_none(), "a transaction left open");
    let written: i64 = sizes.values().sum();
    assert_eq!(entries, written as u64, "every entry read once");
    assert!(sizes.len() >= 299, "{} source transactions", sizes.len());
    // Reads were cut short (limit 7, transactions of up to 8 entries) and
    // transactions still came out whole; the reader ended the epoch while
    // behind (every 100 ms for 2 s), so the open transactions ended.
    // The writer commits back to back: the epoch advances only because
    // its increment tries for the write lock often enough to land between
    // two of the writer's transactions (with SQLite's own busy timeout, a
    // loaded machine saw 2 transactions emitted in 2 s).
    assert!(
        emitted > 10,
        "{emitted} transactions emitted in {reads} reads: the epoch did not advance while the writer wrote"
    );
    assert!(
        at_mark,
        "a transaction ends at the snapshot position {mark}"
    );
    let source: BTreeMap<i64, i64> = a
        .prepare("SELECT id, bal FROM acct")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(balances, source);
}
