//! The control API of a running `ferry run`, and its client for the CLI.
//!
//! - [`server`]: the HTTP server the pipeline runs ([`serve`]).
//! - [`client`]: the requests `ferry status`, `ferry cutover`, `ferry pause`
//!   and `ferry resume` send to it.
//!
//! This module holds what both sides share: the request types and the
//! [`ControlHandler`] the pipeline implements.
//!
//! HTTP/1.1 on `control.listen` (loopback by default, `127.0.0.1:7433`):
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | the [`Status`] as JSON |
//! | `GET /metrics` | Prometheus text |
//! | `POST /cutover` | body: [`CutoverRequest`] JSON (empty = defaults); the [`CutoverRecord`] JSON, or `409 {"error": …}` |
//! | `POST /pause`, `POST /resume` | `{"paused": bool}` |
//! | `POST /proxy/mode` | body: [`ProxyModeRequest`] JSON; the recorded mode change, or `409 {"error": …}` (no proxy, or a mode it cannot take) |
//! | `POST /validate` | body: [`ValidateRequest`] JSON (empty = every table, no repair); starts a validation in the background: [`ValidateAccepted`] JSON, or `409 {"error": …}` (one is running, or the load is not done); results appear in `/status` (`validation`) and `/metrics` |
//!
//! When `control.token` is set every request needs `Authorization: Bearer
//! <token>` (compared in constant time), else `401`. The pipeline provides a
//! [`ControlHandler`]; [`serve`] runs until its shutdown future resolves,
//! then stops accepting and lets requests in flight finish (a cutover's
//! answer must reach the operator even though the pipeline stops right
//! after). Nothing served here carries a secret: status errors are redacted
//! by the status model, and the token is never echoed.

use std::future::Future;
use std::pin::Pin;

use ferry_monitor::{CutoverRecord, Status};
use serde::{Deserialize, Serialize};

mod client;
mod server;

pub use crate::validate::ValidateRequest;
pub use crate::validate::background::ValidateAccepted;
pub use client::{
    ControlClientError, get_status, post_cutover, post_pause, post_proxy_mode, post_resume,
    post_validate,
};
pub use server::serve;

/// Options of `ferry cutover` / `POST /cutover`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CutoverRequest {
    /// Report what would happen; change nothing.
    pub dry_run: bool,
    /// Fence source writes (PG: read-only + terminate writers; MySQL: read_only).
    pub fence: bool,
    /// Refuse unless lag is under this many seconds.
    pub max_lag_seconds: Option<f64>,
    /// Give up (and unfence) if the drain takes longer than this.
    pub timeout_seconds: Option<f64>,
    /// Keep the slot/publication or triggers after cutover.
    pub keep_slot: bool,
    /// Skip the row-count validation.
    pub skip_counts: bool,
    /// Refuse unless every carried table's newest validation (`ferry
    /// validate`) is clean and at most this many seconds old.
    pub require_validated_seconds: Option<f64>,
    /// Open the way back: a slot on the target inside the fence, then
    /// stream the target into the old source (`--with-fallback`).
    pub with_fallback: bool,
    /// `ferry rollback`: the cutover of the reverse stream, back to the
    /// old source (refused unless the running pipeline streams in reverse).
    pub rollback: bool,
    /// `ferry finish`: end the fallback period (reverse stream only).
    pub finish_fallback: bool,
    /// Cut over through the proxy (`[proxy]`): hold new statements at
    /// transaction boundaries, cut over, move every proxied session to the
    /// target, release.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub via_proxy: bool,
}

/// `POST /proxy/mode`: the proxy's new mode and who asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyModeRequest {
    /// `source` or `reads-on-target`.
    pub mode: String,
    /// Who asks (recorded with the change); default `control API`.
    #[serde(default)]
    pub by: Option<String>,
}

/// A boxed future, so the handler trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the pipeline exposes to the control API.
pub trait ControlHandler: Send + Sync + 'static {
    fn status(&self) -> Status;
    /// Prometheus text (`Metrics::render`).
    fn metrics(&self) -> String;
    /// Run (or dry-run) the cutover; `Err` says why it was refused or failed.
    fn cutover(&self, req: CutoverRequest) -> BoxFuture<'_, Result<CutoverRecord, String>>;
    fn pause(&self);
    fn resume(&self);
    /// Start a validation in the background; `Err` says why not.
    fn validate(&self, req: ValidateRequest) -> BoxFuture<'_, Result<ValidateAccepted, String>>;
    /// Change the proxy's mode; the recorded change, or why not.
    fn proxy_mode(
        &self,
        _req: ProxyModeRequest,
    ) -> BoxFuture<'_, Result<ferry_monitor::proxy::ModeChange, String>> {
        Box::pin(async { Err("no proxy runs here: set [proxy] listen".into()) })
    }
}

#[cfg(test)]
mod tests;
