//! The control API's and the console's view of a running pipeline: status,
//! metrics, pause and resume from [`Live`], the cutover from
//! [`super::cutover`], the lag history from the target's state. The HTTP API
//! ([`ControlHandler`]) and the psql console ([`ferry_console::Backend`])
//! are two doors to these same calls.

use std::sync::Arc;
use std::time::SystemTime;

use ferry_console::CutoverCommand;
use ferry_core::config::Endpoint;
use ferry_core::source::Source;
use ferry_monitor::{CutoverRecord, LagSample, Status};

use super::live::Live;
use crate::control::{
    BoxFuture, ControlHandler, CutoverRequest, ValidateAccepted, ValidateRequest,
};

/// The control API's view of the pipeline.
pub struct Handler<S: Source> {
    pub live: Arc<Live<S::Position>>,
    pub source: Arc<S>,
    /// Where the lag history is read from.
    pub target: Endpoint,
    pub state_schema: String,
}

impl<S: Source> std::fmt::Debug for Handler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler").field("live", &self.live).finish()
    }
}

impl<S: Source> ControlHandler for Handler<S> {
    fn status(&self) -> Status {
        self.live.status()
    }

    fn metrics(&self) -> String {
        let mut text = self.live.metrics.render();
        if let Some((p, listen)) = self.live.proxy.get() {
            text.push_str(&super::proxy::metrics(&super::proxy::status(p, listen)));
        }
        text
    }

    fn cutover(&self, req: CutoverRequest) -> BoxFuture<'_, Result<CutoverRecord, String>> {
        Box::pin(super::cutover::run(
            self.live.clone(),
            self.source.clone(),
            req,
        ))
    }

    fn pause(&self) {
        self.live.set_paused(true);
        tracing::info!("applier paused by the control API");
    }

    fn resume(&self) {
        self.live.set_paused(false);
        tracing::info!("applier resumed by the control API");
    }

    fn validate(&self, req: ValidateRequest) -> BoxFuture<'_, Result<ValidateAccepted, String>> {
        Box::pin(async move { crate::validate::background::start(&self.live, req) })
    }

    fn proxy_mode(
        &self,
        req: crate::control::ProxyModeRequest,
    ) -> BoxFuture<'_, Result<ferry_monitor::proxy::ModeChange, String>> {
        Box::pin(super::proxy::change_mode(
            &self.live,
            req.mode,
            req.by.unwrap_or_else(|| "control API".into()),
        ))
    }
}

/// The console's `CUTOVER` options as the control API's request.
fn cutover_request(c: &CutoverCommand) -> CutoverRequest {
    CutoverRequest {
        dry_run: c.dry_run,
        fence: c.fence,
        max_lag_seconds: Some(c.max_lag.as_secs_f64()),
        timeout_seconds: Some(c.timeout.as_secs_f64()),
        keep_slot: c.keep_slot,
        skip_counts: c.skip_counts,
        require_validated_seconds: c.require_validated.map(|d| d.as_secs_f64()),
        with_fallback: c.with_fallback,
        via_proxy: c.via_proxy,
        rollback: c.rollback,
        ..CutoverRequest::default()
    }
}

impl<S: Source> ferry_console::Backend for Handler<S> {
    fn status(&self) -> Status {
        ControlHandler::status(self)
    }

    fn lag_history(&self, since: SystemTime) -> BoxFuture<'_, Result<Vec<LagSample>, String>> {
        Box::pin(async move {
            let target = ferry_postgres::connect::connect(&self.target, "target")
                .await
                .map_err(|e| format!("{e:#}"))?;
            ferry_monitor::read_history(&target, &self.state_schema, since)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn cutover(&self, c: CutoverCommand) -> BoxFuture<'_, Result<CutoverRecord, String>> {
        ControlHandler::cutover(self, cutover_request(&c))
    }

    fn pause(&self) {
        ControlHandler::pause(self);
    }

    fn resume(&self) {
        ControlHandler::resume(self);
    }

    fn proxy_mode(
        &self,
        mode: String,
        by: String,
    ) -> BoxFuture<'_, Result<ferry_monitor::proxy::ModeChange, String>> {
        Box::pin(super::proxy::change_mode(&self.live, mode, by))
    }

    fn validate(
        &self,
        v: ferry_console::ValidateCommand,
    ) -> BoxFuture<'_, Result<ferry_console::ValidateStarted, String>> {
        let req = crate::validate::ValidateRequest {
            tables: v.tables,
            repair: v.repair,
        };
        Box::pin(async move {
            let accepted = ControlHandler::validate(self, req).await?;
            Ok(ferry_console::ValidateStarted {
                started: accepted.started,
                tables: accepted.tables,
                repair: accepted.repair,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn console_cutover_options_become_the_control_request() {
        let c = CutoverCommand {
            dry_run: true,
            fence: true,
            max_lag: Duration::from_millis(1500),
            timeout: Duration::from_secs(30),
            keep_slot: true,
            skip_counts: false,
            require_validated: Some(Duration::from_secs(3600)),
            rollback: false,
            with_fallback: true,
            via_proxy: true,
        };
        assert_eq!(
            cutover_request(&c),
            CutoverRequest {
                dry_run: true,
                fence: true,
                max_lag_seconds: Some(1.5),
                timeout_seconds: Some(30.0),
                keep_slot: true,
                skip_counts: false,
                require_validated_seconds: Some(3600.0),
                with_fallback: true,
                via_proxy: true,
                ..CutoverRequest::default()
            }
        );
        let back = CutoverCommand {
            rollback: true,
            via_proxy: true,
            ..CutoverCommand::default()
        };
        let req = cutover_request(&back);
        assert!(
            req.rollback && req.via_proxy && !req.with_fallback,
            "{req:?}"
        );
    }
}
