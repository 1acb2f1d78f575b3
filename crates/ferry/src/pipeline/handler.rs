//! The control API's view of a running pipeline: status, metrics, pause
//! and resume from [`Live`], the cutover from [`super::cutover`].

use std::sync::Arc;

use ferry_core::source::Source;
use ferry_monitor::{CutoverRecord, Status};

use super::live::Live;
use crate::control::{
    BoxFuture, ControlHandler, CutoverRequest, ValidateAccepted, ValidateRequest,
};

/// The control API's view of the pipeline.
pub struct Handler<S: Source> {
    pub live: Arc<Live<S::Position>>,
    pub source: Arc<S>,
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
        self.live.metrics.render()
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
}
