//! Multi-row SQLite transactions arrive whole, through the CLI: an
//! application moves money between accounts (each transaction changes 2 to
//! 8 rows and keeps the total constant) from before `ferry run` starts to
//! the end; a reader of the target checks the total in every snapshot it
//! takes while ferry streams, across a `kill -9` of ferry mid-stream and
//! the resume. Any partial transaction applied on the target shows as a
//! different total. At the end the target equals the source row for row.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_e2e::migration::{LONG, target_options};
use ferry_e2e::sqlite_app::Writer;
use ferry_e2e::{Background, ferry, pgsync, target_text};
use ferry_testkit::PgServer;
use rusqlite::Connection;

const ACCOUNTS: i64 = 200;
const START: i64 = 1000;

/// Transaction `i`: `1 + i % 4` transfers between accounts; the total
/// stays `ACCOUNTS * START`.
fn transfer(conn: &mut Connection, i: u64) -> rusqlite::Result<()> {
    let i = i as i64;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for m in 0..1 + i % 4 {
        let from = (i * 7 + m * 13) % ACCOUNTS + 1;
        let to = (from + 1 + m) % ACCOUNTS + 1;
        let amount = i % 50 + 1;
        tx.execute(
            "UPDATE acct SET bal = bal - ?1, note = ?2 WHERE id = ?3",
            (amount, format!("t{i}"), from),
        )?;
        tx.execute(
            "UPDATE acct SET bal = bal + ?1, note = ?2 WHERE id = ?3",
            (amount, format!("t{i}"), to),
        )?;
    }
    tx.commit()
}

fn target_query(url: &str, sql: &str) -> Option<Vec<(i64, i64)>> {
    pgsync::runtime().block_on(async {
        let c = pgsync::connect(url).await.ok()?;
        let rows = c.query(sql, &[]).await.ok()?;
        Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
}

/// Reads the target's total over and over until stopped; returns how many
/// totals it read and every one that was not the constant.
fn watch_total(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<i64>)> {
    std::thread::spawn(move || {
        let rt = pgsync::runtime();
        let mut client = None;
        let (mut seen, mut wrong) = (0u64, Vec::new());
        while !stop.load(Ordering::Acquire) {
            if client.is_none() {
                client = rt.block_on(pgsync::connect(&url)).ok();
            }
            let Some(c) = client.as_ref() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            match rt.block_on(c.query_opt("SELECT sum(bal)::int8, count(*) FROM public.acct", &[]))
            {
                Ok(Some(row)) if row.get::<_, i64>(1) == ACCOUNTS => {
                    seen += 1;
                    let total: i64 = row.get(0);
                    if total != ACCOUNTS * START {
                        wrong.push(total);
                    }
                }
                Ok(_) => {}
                // Not there yet (loading), or the session ended.
                Err(e) if e.code().is_some() => {}
                Err(_) => client = None,
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (seen, wrong)
    })
}

struct Run {
    _dir: tempfile::TempDir,
    path: PathBuf,
    source_url: String,
    target_url: String,
    logs: PathBuf,
}

impl Run {
    fn start(&self, name: &str) -> Background {
        let mut cmd = ferry(&self.source_url, &self.target_url).unwrap();
        cmd.env("FERRY_CONTROL_LISTEN", "127.0.0.1:0")
            .env("FERRY_LOG", "info")
            .arg("run");
        Background::spawn(cmd, &self.logs.join(format!("{name}.log"))).expect("ferry run")
    }

    fn checkpoint(&self) -> Option<u64> {
        target_query(
            &self.target_url,
            "SELECT position::int8, 0::int8 FROM ferry.checkpoint",
        )
        .and_then(|r| r.first().map(|(p, _)| *p as u64))
    }

    fn streaming(&self) -> bool {
        target_text(&self.target_url, "SELECT phase FROM ferry.pipeline").as_deref()
            == Some("stream")
    }

    fn wait(&self, ferry: &mut Background, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            if let Some(code) = ferry.exited().unwrap() {
                panic!("ferry exited with {code:?} before {what}:\n{}", ferry.log());
            }
            assert!(start.elapsed() < LONG, "never {what}:\n{}", ferry.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn head(&self) -> u64 {
        let conn = Connection::open(&self.path).unwrap();
        conn.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = '_ferry_changes'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0) as u64
    }
}

#[test]
fn multi_row_transactions_are_applied_whole_across_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL, note TEXT);",
    )
    .unwrap();
    for id in 1..=ACCOUNTS {
        conn.execute("INSERT INTO acct VALUES (?1, ?2, 'open')", (id, START))
            .unwrap();
    }
    drop(conn);
    let target = PgServer::start(target_options()).expect("target");
    let db = target.create_database("dst").unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let run = Run {
        source_url: format!("sqlite://{}", path.display()),
        path,
        target_url: target.url(&db),
        logs,
        _dir: dir,
    };

    let writer = Writer::start_with(&run.path, 1, transfer);
    writer.wait_for(20);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_total(run.target_url.clone(), stop.clone());

    let mut ferry_run = run.start("run");
    run.wait(&mut ferry_run, "streaming", || run.streaming());
    writer.wait_for(writer.last() + 300);
    ferry_run.kill9().unwrap();
    writer.wait_for(writer.last() + 100);
    let mut ferry_run = run.start("resume");
    run.wait(&mut ferry_run, "streaming again", || {
        run.checkpoint().is_some()
    });
    writer.wait_for(writer.last() + 300);
    let report = writer.stop();
    let head = run.head();
    run.wait(&mut ferry_run, &format!("applied entry {head}"), || {
        run.checkpoint().is_some_and(|c| c >= head)
    });
    stop.store(true, Ordering::Release);
    let (seen, wrong) = watcher.join().unwrap();
    assert!(
        wrong.is_empty(),
        "the target showed part of a source transaction: totals {wrong:?} (of {seen} read)"
    );
    assert!(seen > 50, "the watcher read only {seen} totals");
    assert!(report.last > 700, "the writer committed {}", report.last);

    let source: Vec<(i64, i64)> = Connection::open(&run.path)
        .unwrap()
        .prepare("SELECT id, bal FROM acct ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let target_rows = target_query(
        &run.target_url,
        "SELECT id, bal FROM public.acct ORDER BY id",
    )
    .unwrap();
    assert_eq!(source, target_rows, "target equals source");
    assert_ne!(
        source.iter().map(|(_, b)| *b).collect::<Vec<_>>(),
        vec![START; ACCOUNTS as usize],
        "money moved"
    );
    let log = ferry_run.log();
    assert!(!log.contains("ERROR"), "ferry logged an error:\n{log}");
    ferry_run.kill9().unwrap();
    drop(target);
}
