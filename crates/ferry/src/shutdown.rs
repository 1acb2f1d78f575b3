//! Graceful shutdown: SIGINT/SIGTERM flip one watch channel that every
//! long-running task selects on first (`biased`). The applier finishes the
//! batch in flight, records the checkpoint and acknowledges the source before
//! `ferry run` exits 0.

use tokio::sync::watch;

/// A cloneable handle that tells tasks to stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending half, kept by whoever may trigger shutdown.
#[derive(Debug, Clone)]
pub struct Trigger {
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl Trigger {
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }
}

/// A new shutdown pair.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (
        Trigger {
            tx: std::sync::Arc::new(tx),
        },
        Shutdown { rx },
    )
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is triggered (immediately if it already was).
    pub async fn wait(&mut self) {
        // An error means every sender is gone: treat as shutdown.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// Fire `trigger` on SIGINT or SIGTERM.
pub fn on_signals(trigger: Trigger) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down: finishing the batch in flight"),
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down: finishing the batch in flight"),
        }
        trigger.fire();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_fire_and_for_late_waiters() {
        let (trigger, mut a) = channel();
        let mut b = a.clone();
        assert!(!a.is_triggered());
        let waiter = tokio::spawn(async move {
            a.wait().await;
        });
        trigger.fire();
        waiter.await.unwrap();
        b.wait().await;
        assert!(b.is_triggered());
    }
}
