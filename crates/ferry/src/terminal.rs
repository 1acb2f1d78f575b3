//! The operator's terminal: where progress bars are drawn and how log lines
//! get past them.
//!
//! When stderr is a terminal, [`init`] creates the one [`MultiProgress`] the
//! load's bars are drawn in (`indicatif`), and the tracing subscriber writes
//! every log line through tracing-indicatif's [`IndicatifWriter`], which
//! lifts the bars, prints the line above them and draws them again: a log
//! line never lands inside a bar. When stderr is not a terminal (a log file,
//! CI, the tests) there are no bars and log lines go straight to stderr; the
//! load then reports its progress as periodic log lines instead
//! ([`crate::pipeline`]'s `progress`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressDrawTarget};
use tracing_indicatif::writer::{IndicatifWriter, Stderr};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// On a terminal: set up the progress bars and return the writer log lines
/// must go through. `None` when stderr is not a terminal.
pub fn init() -> Option<IndicatifWriter<Stderr>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bars = BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
    Some(IndicatifWriter::new(bars.clone()))
}

/// The progress bars, if [`init`] found a terminal.
pub fn bars() -> Option<&'static MultiProgress> {
    BARS.get()
}
