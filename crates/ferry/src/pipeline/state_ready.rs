//! The state schema's tables beyond the start's own, created beside the
//! start on a fresh target.
//!
//! A first run creates the whole state schema (19 tables, 46–61 ms of
//! the target's time in one measurement; 44% of a `perf` profile of it was
//! in the kernel, creating their files). Only four of them
//! are written before the load's schema transaction
//! ([`ferry_apply::state::schema::CORE`]: the phase, the run, its events,
//! the control API's address), so those are created first
//! ([`StateStore::ensure_start`]) and the rest ([`StateStore::ensure`],
//! on a session of its own) while the source's capture is created and its
//! schema dumped, when the target has nothing else to do. Everything that
//! touches another state table waits for [`StateReady::wait`] first: the
//! schema transaction, the existing-tables mode's preparations, and the
//! background tasks (control API, console, monitor, lag sampler,
//! validation schedule).

use std::sync::Arc;

use ferry_apply::state::StateStore;
use ferry_apply::state::schema::Started;
use ferry_core::config::Config;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type Done = Result<(), Failed>;

/// Resolves once the whole state schema exists; cheap to clone.
#[derive(Clone, Default)]
pub struct StateReady(Option<Shared<BoxFuture<'static, Done>>>);

impl std::fmt::Debug for StateReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "StateReady(creating)",
            None => "StateReady(ready)",
        })
    }
}

impl StateReady {
    /// After [`StateStore::ensure_start`]: ready at once, or the rest of the
    /// schema created now on a new target session (a task of its own, so
    /// it goes on while nothing waits for it).
    pub fn start(config: &Config, state: &StateStore, started: Started) -> Self {
        if started == Started::Ready {
            return StateReady(None);
        }
        let (target, state) = (config.target.clone(), state.clone());
        let task = tokio::spawn(async move {
            let client = ferry_postgres::connect::connect(&target, "target").await?;
            state.ensure(&client).await
        });
        let done = async move {
            match task.await {
                Ok(result) => result.map_err(|e| Failed(Arc::new(e))),
                Err(e) => Err(Failed(Arc::new(ferry_core::Error::transient(format!(
                    "the task creating the state schema ended: {e}"
                ))))),
            }
        };
        StateReady(Some(done.boxed().shared()))
    }

    /// Wait until the whole state schema exists; its creation's error (with
    /// its class: a lost session is retried like any other) otherwise.
    pub async fn wait(&self) -> anyhow::Result<()> {
        match &self.0 {
            None => Ok(()),
            Some(done) => done.clone().await.map_err(anyhow::Error::new),
        }
    }
}

/// The creation's error, shared by every waiter; its source is the
/// classified error, which [`super::stream::classify`] finds in the chain.
#[derive(Debug, Clone)]
struct Failed(Arc<ferry_core::Error>);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("creating the state schema")
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}
