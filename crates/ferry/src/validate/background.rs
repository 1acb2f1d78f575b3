//! Validations a running `ferry run` starts: on request (`POST /validate`,
//! the console) and every `validate.every_seconds`. One at a time; each
//! runs as its own task beside the pipeline, pauses the applier through
//! the run's own switch when it repairs, and publishes its results to the
//! run's metrics (the status reads them back from the target).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_core::Position;
use ferry_core::source::BoxFuture;
use ferry_monitor::Phase;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{PauseSwitch, ValidateRequest};
use crate::pipeline::live::Live;

/// The answer to `POST /validate`: the validation was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateAccepted {
    pub started: bool,
    /// The tables asked for (empty: every carried table).
    pub tables: Vec<String>,
    pub repair: bool,
}

/// The run's own pause switch.
struct LivePause<P: Position>(Arc<Live<P>>);

impl<P: Position> PauseSwitch for LivePause<P> {
    fn pause(&self) -> BoxFuture<'_, anyhow::Result<bool>> {
        Box::pin(async move {
            if self.0.is_paused() {
                return Ok(false);
            }
            self.0.set_paused(true);
            info!("applier paused for a validation repair");
            Ok(true)
        })
    }

    fn resume(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.0.set_paused(false);
            info!("applier resumed after a validation repair");
            Ok(())
        })
    }
}

/// Start a validation in the background; `Err` when one is running or the
/// pipeline is not streaming yet.
pub fn start<P: Position>(
    live: &Arc<Live<P>>,
    req: ValidateRequest,
) -> Result<ValidateAccepted, String> {
    if live.phase() < Phase::Catchup {
        return Err(format!(
            "refused: the migration is in phase {}; validation starts once the load is done",
            live.phase()
        ));
    }
    if live.validating.swap(true, Ordering::AcqRel) {
        return Err("refused: a validation is already running; see `ferry status`".into());
    }
    let accepted = ValidateAccepted {
        started: true,
        tables: req.tables.clone(),
        repair: req.repair,
    };
    let live = live.clone();
    tokio::spawn(async move {
        let pause = LivePause(live.clone());
        let result = super::run(&live.config, &req, &pause, Some(&live.metrics)).await;
        if let Err(e) = result {
            warn!(error = %format!("{e:#}"), "validation failed");
            live.set_error(format!("validation failed: {e:#}"));
        }
        live.validating.store(false, Ordering::Release);
    });
    Ok(accepted)
}

/// Validate every carried table every `every` until `stop` resolves.
pub async fn schedule<P: Position>(
    live: Arc<Live<P>>,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        match start(&live, ValidateRequest::default()) {
            Ok(_) => info!("scheduled validation started"),
            Err(why) => info!(reason = %why, "scheduled validation skipped"),
        }
    }
}
