//! The lag monitor: lag figures, the metrics registry with its Prometheus
//! exposition, lag history in the target, and the status model.
//!
//! - [`lag`]: the two lag figures (seconds and bytes) as pure functions.
//! - [`metrics`]: metric names, the [`Metrics`] handle, Prometheus text.
//! - [`history`]: `<state>.lag_history` sampling, compaction and reading.
//! - [`proxy`]: the shadow-read proxy's status and statistics.
//! - [`status`]: what `ferry status`, `GET /status` and the console show.
//! - [`timestamp`]: RFC 3339 times for JSON and text views.

pub mod history;
pub mod lag;
pub mod metrics;
pub mod proxy;
pub mod status;
pub mod timestamp;

pub use history::{LagSample, read_history};
pub use lag::{LagFigures, LagInputs, LagTracker, lag_figures};
pub use metrics::Metrics;
pub use status::{
    CutoverRecord, KeyDifference, Phase, SlotHealth, Status, TableCheck, TableStatus,
    TableValidation, render_table,
};
