//! An application writing to a SQLite file from its own thread and
//! connection while ferry captures its changes: the end-to-end tests'
//! stand-in for a real program (busy timeout 60 s, a transaction every few
//! milliseconds, errors collected instead of panicking in the thread).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::migration::LONG;

/// What the application saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// The last transaction committed.
    pub last: u64,
    pub errors: Vec<String>,
    /// The slowest transaction the application saw.
    pub max_latency: Duration,
}

/// The application: its own connection (busy timeout 60 s), committing
/// transactions `first..` until stopped.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<WriterReport>,
}

impl Writer {
    /// A writer committing `txn(conn, i)` for `i = first..`.
    pub fn start_with(
        path: &Path,
        first: u64,
        txn: fn(&mut Connection, u64) -> rusqlite::Result<()>,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(AtomicU64::new(first - 1));
        let (p, s, l) = (path.to_owned(), stop.clone(), last.clone());
        let thread = std::thread::spawn(move || {
            let mut conn = Connection::open(&p).expect("writer connection");
            conn.busy_timeout(Duration::from_secs(60)).unwrap();
            let mut report = WriterReport {
                last: first - 1,
                ..WriterReport::default()
            };
            let mut i = first;
            while !s.load(Ordering::Acquire) {
                let started = Instant::now();
                match txn(&mut conn, i) {
                    Ok(()) => {
                        report.max_latency = report.max_latency.max(started.elapsed());
                        report.last = i;
                        l.store(i, Ordering::Release);
                        i += 1;
                    }
                    Err(e) => {
                        report.errors.push(format!("txn {i}: {e}"));
                        if report.errors.len() > 20 {
                            break;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            report
        });
        Writer { stop, last, thread }
    }

    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    pub fn wait_for(&self, n: u64) {
        let start = Instant::now();
        while self.last() < n {
            assert!(!self.thread.is_finished(), "the writer stopped early");
            assert!(start.elapsed() < LONG, "the writer never reached {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::Release);
        let report = self.thread.join().expect("writer thread");
        assert!(
            report.errors.is_empty(),
            "the application saw errors: {:?}",
            report.errors
        );
        report
    }
}
