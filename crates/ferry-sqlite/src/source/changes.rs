//! The change stream: the change log read on a dedicated thread into a
//! bounded channel, and acknowledged entries trimmed on another.
//!
//! Consumes `_ferry_changes` after a position ([`ChangeReader`]); emits
//! its events in `seq` order, and a heartbeat at the position reached
//! every [`HEARTBEAT_IDLE`] while idle (so an idle stream is still seen to
//! reach the cutover's final position). Trimming deletes entries up to the
//! highest acknowledged position (only ever after the target committed
//! them) and never waits long for SQLite's write lock: a busy file or the
//! cutover fence just postpones it. Restart: a new stream starts from the
//! target's checkpoint, which is never behind the trim.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_core::source::{self, EventMap};
use ferry_core::value::Timestamp;
use ferry_core::{ChangeLogSeq, Error, Event};
use rusqlite::Connection;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::blocking;
use crate::capture;
use crate::reader::{self, ChangeReader};

/// Change-log entries read per read transaction.
const BATCH_ENTRIES: usize = 2000;
/// Pause between polls of an idle change log.
const POLL_IDLE: Duration = Duration::from_millis(100);
/// A heartbeat at the reached position this often while idle.
const HEARTBEAT_IDLE: Duration = Duration::from_secs(1);
/// How often acknowledged entries are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How long a trim waits for the write lock before trying later.
const TRIM_BUSY: Duration = Duration::from_millis(200);

/// The running change stream: a reading thread and a trimming thread.
#[derive(Debug)]
pub struct SqliteChanges {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) acked: Arc<AtomicU64>,
    pub(super) reader: Option<std::thread::JoinHandle<Result<(), Error>>>,
    pub(super) trimmer: Option<std::thread::JoinHandle<()>>,
}

impl source::ChangeHandle<ChangeLogSeq> for SqliteChanges {
    fn ack(&self, position: ChangeLogSeq) {
        self.acked.fetch_max(position.0, Ordering::AcqRel);
    }

    async fn shutdown(mut self) -> Result<(), Error> {
        self.stop.store(true, Ordering::Release);
        let (reader, trimmer) = (self.reader.take(), self.trimmer.take());
        blocking("stopping the change stream", move || {
            if let Some(t) = trimmer {
                let _ = t.join();
            }
            match reader.map(std::thread::JoinHandle::join) {
                Some(Ok(result)) => result,
                Some(Err(_)) => Err(Error::transient("the change reader thread panicked")),
                None => Ok(()),
            }
        })
        .await
    }
}

impl Drop for SqliteChanges {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Reads the change log after `from` until `stop`, the receiver goes away
/// or an error (returned).
pub(super) fn read_changes(
    path: &Path,
    from: ChangeLogSeq,
    tx: &mpsc::Sender<Event<ChangeLogSeq>>,
    mut map: Option<EventMap<ChangeLogSeq>>,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let mut reader = ChangeReader::open(path)?;
    let mut after = from;
    let mut last_beat: Option<Instant> = None;
    let mut send = |e: Event<ChangeLogSeq>| -> bool {
        let e = match map.as_mut() {
            Some(f) => f(e),
            None => Some(e),
        };
        e.is_none_or(|e| send_or_stop(tx, e, stop))
    };
    info!(from = %from, "sqlite change stream started");
    while !stop.load(Ordering::Acquire) {
        let batch = reader.read_after(after, BATCH_ENTRIES)?;
        for a in &batch.added {
            info!(table = %a.table, column = %a.column, pg_type = %a.pg_type, "added column carried");
        }
        for e in batch.events {
            if !send(e) {
                return Ok(());
            }
        }
        match batch.last {
            Some(last) => after = last,
            None => {
                if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT_IDLE) {
                    let beat = Event::Heartbeat {
                        position: after,
                        time: Timestamp::now(),
                    };
                    if !send(beat) {
                        return Ok(());
                    }
                    last_beat = Some(Instant::now());
                }
                std::thread::sleep(POLL_IDLE);
            }
        }
    }
    Ok(())
}

/// Sends `event` once the channel has room; `false` when the receiver is
/// gone or `stop` is set while waiting (a full channel never keeps the
/// thread from stopping).
fn send_or_stop(
    tx: &mpsc::Sender<Event<ChangeLogSeq>>,
    mut event: Event<ChangeLogSeq>,
    stop: &AtomicBool,
) -> bool {
    loop {
        match tx.try_send(event) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(e)) => {
                if stop.load(Ordering::Acquire) {
                    return false;
                }
                event = e;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Trims acknowledged entries until `stop`; never waits long for the
/// write lock (the application's writers, or the cutover fence).
pub(super) fn trim_acknowledged(path: &Path, acked: &AtomicU64, stop: &AtomicBool) {
    let mut conn: Option<Connection> = None;
    let mut trimmed = 0u64;
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() < TRIM_EVERY {
            continue;
        }
        last = Instant::now();
        let upto = acked.load(Ordering::Acquire);
        if upto <= trimmed {
            continue;
        }
        if conn.is_none() {
            conn = capture::open_read_write(path)
                .and_then(|c| c.busy_timeout(TRIM_BUSY).map(|()| c))
                .map_err(|e| debug!(error = %e, "trim: cannot open the source file"))
                .ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        match reader::trim(c, ChangeLogSeq(upto)) {
            Ok(n) => {
                debug!(upto, entries = n, "change log trimmed");
                trimmed = upto;
            }
            Err(e) => debug!(error = %e, "trim postponed"),
        }
    }
}
