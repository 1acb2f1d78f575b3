//! Load progress for the operator: per-table rows, throughput and ETA, and
//! a total. On a terminal (stderr is a TTY) they are `indicatif` progress
//! bars, updated every second, with log lines printed above them through the
//! bars' writer ([`crate::terminal`]) so nothing tears them; when the load
//! ends they are replaced by their final figures as plain lines. Otherwise
//! (log files, CI, tests) a `load progress` log line per table in flight and
//! a `load progress total` line are written every 10 seconds.
//!
//! Counters are per table ([`LoadProgress`], updated by the COPY loop);
//! estimates come from the source statistics and may be off, so the bar is
//! capped at 100% and the ETA is only a guide.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_apply::load::LoadProgress;
use ferry_core::TableId;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
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

/// The bar as text, for the final lines: `[#####.....]  50%`.
fn bar(fraction: Option<f64>) -> String {
    match fraction {
        Some(f) => {
            let filled = (f * BAR_WIDTH as f64).round() as usize;
            format!(
                "[{}{}] {:>3.0}%",
                "#".repeat(filled),
                ".".repeat(BAR_WIDTH - filled),
                f * 100.0
            )
        }
        None => format!("[{}]    ?", " ".repeat(BAR_WIDTH)),
    }
}

fn eta_text(eta: Option<Duration>) -> String {
    eta.map_or_else(|| "-".to_owned(), |d| format!("{}s", d.as_secs()))
}

/// How often the bars are updated.
const DRAW_EVERY: Duration = Duration::from_secs(1);
/// How often progress is logged when there are no bars.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Width of the bar itself, in characters.
const BAR_WIDTH: usize = 24;

/// Report until `done` resolves: bars on a terminal, log lines otherwise.
pub async fn report(board: Board, done: impl Future<Output = ()>) {
    match crate::terminal::bars() {
        Some(bars) => draw_until(&board, bars, done).await,
        None => log_until(&board, done).await,
    }
}

async fn log_until(board: &Board, done: impl Future<Output = ()>) {
    tokio::pin!(done);
    let started = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = &mut done => break,
            () = tokio::time::sleep(LOG_EVERY) => {}
        }
        log(board, started.elapsed());
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

/// The figures of every table in board order, then the total's. Pure given
/// the counters.
fn all_figures(board: &Board, elapsed: Duration) -> Vec<(String, Figures, Option<u64>)> {
    let mut out: Vec<_> = board
        .iter()
        .map(|(table, p)| {
            let f = figures(
                p.counters.rows.load(Ordering::Relaxed),
                p.counters.bytes.load(Ordering::Relaxed),
                p.estimate,
                elapsed,
            );
            (table.to_string(), f, p.estimate)
        })
        .collect();
    let (rows, bytes, estimate) = totals(board);
    out.push((
        "total".to_owned(),
        figures(rows, bytes, estimate, elapsed),
        estimate,
    ));
    out
}

/// Width of the name column: the longest table name, at least "total".
fn name_width(board: &Board) -> usize {
    board
        .keys()
        .map(|t| t.to_string().chars().count())
        .max()
        .unwrap_or(5)
        .max(5)
}

/// The bars' look: `name [####....]  50%   rows MB/s eta`, as [`line`]
/// writes it; without an estimate the bar stays empty and the percentage
/// is `?`.
fn bar_style(width: usize, estimated: bool) -> ProgressStyle {
    let template = if estimated {
        format!(
            "{{prefix:<{width}}} [{{bar:{BAR_WIDTH}}}] {{percent:>3}}% {{pos:>12}} rows {{msg}}"
        )
    } else {
        format!(
            "{{prefix:<{width}}} [{}]    ? {{pos:>12}} rows {{msg}}",
            " ".repeat(BAR_WIDTH)
        )
    };
    ProgressStyle::with_template(&template)
        .expect("the progress template is valid")
        .progress_chars("#.")
}

/// The text after the row count: throughput and ETA.
fn rate_text(f: &Figures) -> String {
    format!("{:>8.1} MB/s  eta {}", f.mb_per_s, eta_text(f.eta))
}

/// One table's (or the total's) progress as a plain line, as the bar shows it.
fn line(name: &str, width: usize, f: &Figures) -> String {
    format!(
        "{name:<width$} {} {:>12} rows {}",
        bar(f.fraction),
        f.rows,
        rate_text(f)
    )
}

/// One bar per table and one for the total, in `bars`.
fn add_bars(board: &Board, bars: &MultiProgress) -> Vec<ProgressBar> {
    let width = name_width(board);
    all_figures(board, Duration::ZERO)
        .into_iter()
        .map(|(name, _, estimate)| {
            let style = bar_style(width, estimate.is_some_and(|e| e > 0));
            bars.add(ProgressBar::no_length().with_style(style).with_prefix(name))
        })
        .collect()
}

/// Set each bar to its figures; the length is never below the rows copied,
/// so a low estimate shows as 100%, not more.
fn update_bars(board: &Board, bars: &[ProgressBar], elapsed: Duration) {
    for (bar, (_, f, estimate)) in bars.iter().zip(all_figures(board, elapsed)) {
        if let Some(e) = estimate.filter(|e| *e > 0) {
            bar.set_length(e.max(f.rows));
        }
        bar.set_position(f.rows);
        bar.set_message(rate_text(&f));
    }
}

async fn draw_until(board: &Board, bars: &MultiProgress, done: impl Future<Output = ()>) {
    tokio::pin!(done);
    let started = Instant::now();
    let shown = add_bars(board, bars);
    loop {
        update_bars(board, &shown, started.elapsed());
        tokio::select! {
            biased;
            () = &mut done => break,
            () = tokio::time::sleep(DRAW_EVERY) => {}
        }
    }
    // The final figures stay on screen as plain lines; the bars go.
    let width = name_width(board);
    let summary: String = all_figures(board, started.elapsed())
        .iter()
        .map(|(name, f, _)| line(name, width, f) + "\n")
        .collect();
    for bar in &shown {
        bar.finish_and_clear();
        bars.remove(bar);
    }
    bars.suspend(|| {
        let mut err = std::io::stderr();
        let _ = err.write_all(summary.as_bytes());
        let _ = err.flush();
    });
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

    fn board(tables: &[(&str, u64, u64, Option<u64>)]) -> Board {
        tables
            .iter()
            .map(|&(name, rows, bytes, estimate)| {
                let counters = Arc::new(LoadProgress::default());
                counters.rows.store(rows, Ordering::Relaxed);
                counters.bytes.store(bytes, Ordering::Relaxed);
                (
                    TableId::new("public", name),
                    TableProgress { counters, estimate },
                )
            })
            .collect()
    }

    #[test]
    fn final_lines_show_every_table_and_the_total() {
        let b = board(&[
            ("orders", 500, 2_000_000, Some(1000)),
            ("order_lines", 7, 0, None),
        ]);
        let width = name_width(&b);
        let lines: Vec<String> = all_figures(&b, Duration::from_secs(2))
            .iter()
            .map(|(name, f, _)| line(name, width, f))
            .collect();
        assert_eq!(
            lines,
            [
                "public.order_lines [                        ]    ?            7 rows      0.0 MB/s  eta -",
                "public.orders      [############............]  50%          500 rows      1.0 MB/s  eta 2s",
                "total              [                        ]    ?          507 rows      1.0 MB/s  eta -",
            ]
        );
    }

    /// The bars as a terminal shows them: the same columns as the final
    /// lines, capped at 100% when the estimate was low.
    #[test]
    fn bars_draw_table_rows_and_percentages() {
        let term = indicatif::InMemoryTerm::new(10, 120);
        let bars = MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::term_like(
            Box::new(term.clone()),
        ));
        let b = board(&[
            ("orders", 500, 1_000_000, Some(1000)),
            ("tiny", 30, 0, Some(10)),
            ("unknown", 7, 0, None),
        ]);
        let shown = add_bars(&b, &bars);
        assert_eq!(shown.len(), 4);
        update_bars(&b, &shown, Duration::from_secs(1));
        for bar in &shown {
            bar.tick();
        }
        let screen = term.contents();
        let rows: Vec<&str> = screen.lines().map(str::trim_end).collect();
        assert!(
            rows.iter().any(
                |r| r.starts_with("public.orders  [############............]  50%")
                    && r.contains("500 rows")
                    && r.ends_with("1.0 MB/s  eta 1s")
            ),
            "{screen}"
        );
        assert!(
            rows.iter().any(
                |r| r.starts_with("public.tiny    [########################] 100%")
                    && r.contains("30 rows")
            ),
            "{screen}"
        );
        assert!(
            rows.iter().any(
                |r| r.starts_with("public.unknown [                        ]    ?")
                    && r.contains("7 rows")
            ),
            "{screen}"
        );
        assert!(
            rows.iter()
                .any(|r| r.starts_with("total          [") && r.contains("537 rows")),
            "{screen}"
        );
    }
}
