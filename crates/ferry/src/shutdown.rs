//! Graceful shutdown: one mechanism everywhere, a
//! [`tokio_util::sync::CancellationToken`] ([`Shutdown`]). SIGINT/SIGTERM
//! (or a finished cutover) cancel the run's token; every long-running task
//! selects on `cancelled()` first (`biased`). The applier finishes the batch
//! in flight, records the checkpoint and acknowledges the source before
//! `ferry run` exits 0. Background tasks (control API, monitor, lag history)
//! stop on a second token once the pipeline has finished; the load's
//! progress reporter and the PostgreSQL reader on tokens of their own.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Cancel `shutdown` on SIGINT or SIGTERM.
pub fn on_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down: finishing the batch in flight"),
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down: finishing the batch in flight"),
        }
        shutdown.cancel();
    });
    Ok(())
}
