//! Load progress for the operator: per-table rows, throughput and ETA, and
//! a total. On a terminal (stderr is a TTY) the block is redrawn in place
//! every second as progress bars; otherwise a log line per table in flight
//! is written every 10 seconds.
//!
//! Counters are per table ([`LoadProgress`], updated by the COPY loop);
//! estimates come from the source statistics and may be off, so the bar is
//! capped at 100% and the ETA is only a guide.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_apply::load::LoadProgress;
use ferry_core::TableId;
use tracing::info;

/// One table's counters and its estimated size.
#[derive(Debug, Clone)]
pub struct TableProgress {
    pub counters: Arc<LoadProgress>,
    pub estimate: Option<u64>,
}

/// Per-table progress of one load.
pub type Board = BTreeMap<TableId, TableProgress>;

/// A progress line's figures. Pure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub rows: u64,
    pub fraction: Option<f64>,
    pub mb_per_s: f64,
    pub eta: Option<Duration>,
}

/// Figures from counters, the estimate and elapsed time. Pure.
pub fn figures(rows: u64, bytes: u64, estimate: Option<u64>, elapsed: Duration) -> Figures {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rows_per_s = rows as f64 / secs;
    let fraction = estimate
        .filter(|e| *e > 0)
        .map(|e| (rows as f64 / e as f64).min(1.0));
    let eta = estimate
        .filter(|e| *e > rows && rows_per_s > 0.0)
        .map(|e| Duration::from_secs_f64((e - rows) as f64 / rows_per_s));
    Figures {
        rows,
        fraction,
        mb_per_s: bytes as f64 / secs / 1e6,
        eta,
    }
}

fn bar(fraction: Option<f64>) -> String {
    const WIDTH: usize = 24;
    match fraction {
        Some(f) => {
            let filled = (f * WIDTH as f64).round() as usize;
            format!(
                "[{}{}] {:>3.0}%",
                "#".repeat(filled),
                ".".repeat(WIDTH - filled),
                f * 100.0
            )
        }
        None => format!("[{}]    ?", " ".repeat(WIDTH)),
    }
}

fn eta_text(eta: Option<Duration>) -> String {
    eta.map_or_else(|| "-".to_owned(), |d| format!("{}s", d.as_secs()))
}

/// Report until `done` resolves.
pub async fn report(board: Board, done: impl std::future::Future<Output = ()>) {
    tokio::pin!(done);
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let started = Instant::now();
    let mut drawn = 0usize;
    loop {
        tokio::select! {
            biased;
            () = &mut done => break,
            () = tokio::time::sleep(every) => {}
        }
        if tty {
            drawn = draw(&board, started.elapsed(), drawn);
        } else {
            log(&board, started.elapsed());
        }
    }
    if tty {
        draw(&board, started.elapsed(), drawn);
    }
}

fn totals(board: &Board) -> (u64, u64, Option<u64>) {
    let rows = board
        .values()
        .map(|t| t.counters.rows.load(Ordering::Relaxed))
        .sum();
    let bytes = board
        .values()
        .map(|t| t.counters.bytes.load(Ordering::Relaxed))
        .sum();
    let estimate = board.values().map(|t| t.estimate).sum::<Option<u64>>();
    (rows, bytes, estimate)
}

fn draw(board: &Board, elapsed: Duration, previous_lines: usize) -> usize {
    let mut out = String::new();
    if previous_lines > 0 {
        out.push_str(&format!("\x1b[{previous_lines}A"));
    }
    let width = board
        .keys()
        .map(|t| t.to_string().len())
        .max()
        .unwrap_or(5)
        .max(5);
    for (table, p) in board {
        let f = figures(
            p.counters.rows.load(Ordering::Relaxed),
            p.counters.bytes.load(Ordering::Relaxed),
            p.estimate,
            elapsed,
        );
        out.push_str(&format!(
            "\x1b[2K{:<width$} {} {:>12} rows {:>8.1} MB/s  eta {}\n",
            table.to_string(),
            bar(f.fraction),
            f.rows,
            f.mb_per_s,
            eta_text(f.eta)
        ));
    }
    let (rows, bytes, est) = totals(board);
    let f = figures(rows, bytes, est, elapsed);
    out.push_str(&format!(
        "\x1b[2K{:<width$} {} {:>12} rows {:>8.1} MB/s  eta {}\n",
        "total",
        bar(f.fraction),
        f.rows,
        f.mb_per_s,
        eta_text(f.eta)
    ));
    let mut err = std::io::stderr();
    let _ = err.write_all(out.as_bytes());
    let _ = err.flush();
    board.len() + 1
}

fn log(board: &Board, elapsed: Duration) {
    for (table, p) in board {
        let rows = p.counters.rows.load(Ordering::Relaxed);
        let f = figures(
            rows,
            p.counters.bytes.load(Ordering::Relaxed),
            p.estimate,
            elapsed,
        );
        if rows > 0 && f.fraction.is_none_or(|x| x < 1.0) {
            info!(table = %table, rows, estimate = ?p.estimate, mb_per_s = f.mb_per_s, eta_s = f.eta.map(|d| d.as_secs()), "load progress");
        }
    }
    let (rows, bytes, est) = totals(board);
    let f = figures(rows, bytes, est, elapsed);
    info!(rows, estimate = ?est, mb_per_s = f.mb_per_s, eta_s = f.eta.map(|d| d.as_secs()), "load progress total");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_figures() {
        // (rows, bytes, estimate, elapsed s) → (fraction, MB/s, eta s)
        let cases = [
            (500, 1_000_000, Some(1000), 1.0, Some(0.5), 1.0, Some(1)),
            (1000, 2_000_000, Some(1000), 2.0, Some(1.0), 1.0, None),
            (2000, 0, Some(1000), 1.0, Some(1.0), 0.0, None),
            (10, 0, None, 1.0, None, 0.0, None),
            (0, 0, Some(100), 1.0, Some(0.0), 0.0, None),
        ];
        for (rows, bytes, est, secs, frac, mbs, eta) in cases {
            let f = figures(rows, bytes, est, Duration::from_secs_f64(secs));
            assert_eq!(f.fraction, frac, "{rows}/{est:?}");
            assert!((f.mb_per_s - mbs).abs() < 1e-9);
            assert_eq!(f.eta.map(|d| d.as_secs()), eta, "{rows}/{est:?}");
        }
        assert!(bar(Some(0.5)).contains("50%"));
    }
}
