//! The PostgreSQL change stream: slot → pgoutput decoder → bounded channel.
//!
//! [`PgChangeStream::start`] sends `START_REPLICATION` at the caller's start
//! position (the checkpoint, or the slot's consistent point on a first run)
//! and spawns [`run`], a task that reads CopyBoth messages, decodes them
//! ([`crate::decode`]) and sends `Event<Lsn>` into a bounded `mpsc` channel.
//!
//! Invariants:
//! - Events come in source commit order; a transaction's events sit between
//!   its `Begin` and `Commit`, and `Commit.position` is the commit's end LSN.
//!   Streamed (v2) transactions come out whole at their Stream Commit;
//!   aborted ones never come out.
//! - The position reported to the server as flushed and applied in standby
//!   status updates is what the consumer passed to [`AckHandle::ack`]
//!   (monotonic), never more: the server keeps everything after it, and on
//!   restart it skips exactly the transactions whose commit end is at or
//!   before the start position. The written position is the highest one
//!   handed on (a commit's end, a heartbeat), which is not durable.
//! - Status updates go out every `status_interval` (at most half the
//!   server's `wal_sender_timeout`, read with `SHOW` before streaming) and
//!   whenever the server asks, also while the task waits for room in a full
//!   channel (it selects on the channel permit and the timer): a consumer
//!   that stops reading (a paused applier) never lets `wal_sender_timeout`
//!   fire, although the server's keepalive requests then wait unread behind
//!   the data in the socket. Waiting, the task reports what the consumer
//!   acknowledged, never more.
//! - The channel is bounded in events (`channel_capacity`) AND in bytes of
//!   row data (`channel_bytes`); streamed transactions share one in-memory
//!   budget (`spill_threshold`) and spill to disk past it.
//! - On an idle source, keepalives outside a transaction become
//!   `Event::Heartbeat { position: wal_end }` (at most one per
//!   `heartbeat_interval`, or per 50 ms while `wal_end` passes what was
//!   handed on: one that comes sooner is handed on when the 50 ms are
//!   over), so the applier can acknowledge and lag reads true, and a
//!   catch-up to a position with no published change after it ends there.
//! - A keepalive is answered (at most one status update per 10 ms) once a
//!   position past the last reported one was handed on. A walsender sends
//!   no keepalive while one is unanswered, nor while the written position
//!   it was told is its own: answered, it sends the next as soon as it has
//!   decoded WAL past it, not one `status_interval` later.
//! - Shutdown: the task's `biased` select checks the shutdown signal first,
//!   sends a last status update and ends the copy stream.
//!
//! Restart: a new stream from the checkpoint; nothing in memory survives
//! (streamed transactions not yet committed are sent again by the server).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_core::size::ApproxBytes;
use ferry_core::{Error, Event, Lsn};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::decode::{CustomKind, CustomType, DecodeError, Decoder, Step, TypeResolver};
use crate::replication::{
    PgOutputOptions, ReplicationConnection, ReplicationMessage, ReplicationStream,
};

/// Settings of one change stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub slot: String,
    pub publication: String,
    /// Further publications to subscribe to (the insert-only one).
    pub extra_publications: Vec<String>,
    /// pgoutput protocol: 1, or 2 for streamed large transactions.
    pub proto_version: u32,
    /// Where to start: the checkpoint (or the slot's consistent point).
    pub start: Lsn,
    /// Capacity of the event channel.
    pub channel_capacity: usize,
    /// Longest time between two standby status updates (lowered to half
    /// the server's `wal_sender_timeout` when that is shorter).
    pub status_interval: Duration,
    /// Least time between two keepalive heartbeats.
    pub heartbeat_interval: Duration,
    /// Bytes all open streamed transactions together keep in memory before
    /// the largest spills to disk.
    pub spill_threshold: usize,
    /// Bytes of row data ([`ApproxBytes`]) the event channel may hold, next
    /// to its `channel_capacity` events: 1 MB rows must not fill a channel
    /// sized for small ones.
    pub channel_bytes: usize,
    /// Directory for spill files (system temp dir if `None`).
    pub spill_dir: Option<PathBuf>,
    /// Drop the changes of transactions whose replication origin starts
    /// with this ([`Decoder::skip_origins`]): the reverse stream of a
    /// fallback skips what ferry applied itself.
    pub skip_origin_prefix: Option<String>,
}

impl StreamConfig {
    pub fn new(slot: impl Into<String>, publication: impl Into<String>, start: Lsn) -> Self {
        StreamConfig {
            slot: slot.into(),
            publication: publication.into(),
            extra_publications: Vec::new(),
            proto_version: 2,
            start,
            channel_capacity: 1024,
            status_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            spill_threshold: 64 << 20,
            channel_bytes: 64 << 20,
            spill_dir: None,
            skip_origin_prefix: None,
        }
    }
}

/// See [`StreamHooks::map`].
pub type EventMap = Box<dyn FnMut(Event<Lsn>) -> Option<Event<Lsn>> + Send>;

/// Caller code that runs in the stream task on every event before it is
/// sent: no hop through another task between reader and consumer. (Pausing
/// is the applier's: it stops reading, the channel fills, and this task
/// waits on it with its connection alive.)
#[derive(Default)]
pub struct StreamHooks {
    /// Rewrites an event, or drops it (`None`). Runs inline in the reader:
    /// keep it cheap and never block.
    pub map: Option<EventMap>,
}

impl std::fmt::Debug for StreamHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHooks")
            .field("map", &self.map.is_some())
            .finish()
    }
}

/// The position the applier has made durable; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct AckHandle(Arc<AtomicU64>);

impl AckHandle {
    fn new(start: Lsn) -> Self {
        AckHandle(Arc::new(AtomicU64::new(start.0)))
    }

    /// Everything up to `lsn` is applied in the target. Never moves back.
    pub fn ack(&self, lsn: Lsn) {
        self.0.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// The acknowledged position.
    pub fn acked(&self) -> Lsn {
        Lsn(self.0.load(Ordering::Acquire))
    }
}

/// Control side of a running stream.
#[derive(Debug)]
pub struct StreamHandle {
    ack: AckHandle,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl StreamHandle {
    pub fn ack_handle(&self) -> AckHandle {
        self.ack.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stop the task (last status update, CopyDone) and wait for it.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Wait for the task to end by itself (error or server end).
    pub async fn join(self) -> Result<(), Error> {
        self.task
            .await
            .map_err(|e| Error::transient("change stream task failed").with_source(e))?
    }
}

/// Entry point of the PostgreSQL change stream.
#[derive(Debug)]
pub struct PgChangeStream;

impl PgChangeStream {
    /// Start streaming from `config.start` on `conn`; events arrive on the
    /// returned receiver. `resolver` looks up non-built-in types.
    pub async fn start(
        conn: ReplicationConnection,
        resolver: Arc<dyn TypeResolver>,
        config: StreamConfig,
    ) -> Result<(mpsc::Receiver<Event<Lsn>>, StreamHandle), Error> {
        Self::start_with(conn, resolver, config, StreamHooks::default()).await
    }

    /// [`PgChangeStream::start`] with `hooks` run on every event.
    pub async fn start_with(
        mut conn: ReplicationConnection,
        resolver: Arc<dyn TypeResolver>,
        config: StreamConfig,
        hooks: StreamHooks,
    ) -> Result<(mpsc::Receiver<Event<Lsn>>, StreamHandle), Error> {
        let options = PgOutputOptions {
            proto_version: config.proto_version,
            publications: std::iter::once(config.publication.clone())
                .chain(config.extra_publications.iter().cloned())
                .collect(),
            messages: true,
        };
        let status_every = status_interval(config.status_interval, &mut conn).await?;
        let stream = conn
            .start_replication(&config.slot, config.start, &options)
            .await?;
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let stop = CancellationToken::new();
        let ack = AckHandle::new(config.start);
        let mut status = tokio::time::interval(status_every);
        status.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let task_state = StreamTask {
            stream,
            decoder: {
                let mut d = Decoder::new(config.spill_threshold, config.spill_dir.clone());
                if let Some(p) = &config.skip_origin_prefix {
                    d.skip_origins(p.clone());
                }
                d
            },
            resolver,
            tx,
            ack: ack.clone(),
            status,
            shutdown: stop.clone(),
            heartbeat_interval: config.heartbeat_interval,
            last_heartbeat: None,
            last_position: config.start,
            withheld: None,
            reported: config.start,
            last_status: Instant::now(),
            report_owed: false,
            hooks,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            channel_bytes: config.channel_bytes.max(1),
        };
        let task = tokio::spawn(run(task_state));
        Ok((
            rx,
            StreamHandle {
                ack,
                shutdown: stop,
                task,
            },
        ))
    }
}

struct StreamTask {
    stream: ReplicationStream,
    decoder: Decoder,
    resolver: Arc<dyn TypeResolver>,
    tx: mpsc::Sender<Event<Lsn>>,
    ack: AckHandle,
    status: Interval,
    shutdown: CancellationToken,
    heartbeat_interval: Duration,
    /// When the last heartbeat went out (none yet: the next keepalive past
    /// the start is one).
    last_heartbeat: Option<Instant>,
    /// Highest position handed on (heartbeats never go below it).
    last_position: Lsn,
    /// A keepalive past `last_position` that came within
    /// [`HEARTBEAT_ADVANCE_GAP`] of the last heartbeat: handed on when the
    /// gap is over (unless a commit passed it meanwhile).
    withheld: Option<(Lsn, ferry_core::value::Timestamp)>,
    /// The written position of the last status update, and when it went.
    reported: Lsn,
    last_status: Instant,
    /// A keepalive is to be answered once [`REPORT_GAP`] has passed.
    report_owed: bool,
    hooks: StreamHooks,
    /// Sizes of the events sent that may still be in the channel, oldest
    /// first, and their sum (see [`StreamTask::wait_for_bytes`]).
    in_flight: VecDeque<usize>,
    in_flight_bytes: usize,
    channel_bytes: usize,
}

/// Why event handling stopped early.
enum Stop {
    /// Shutdown requested or the consumer went away.
    Requested,
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

/// The stream task: read, decode, send; status updates on a timer.
async fn run(mut t: StreamTask) -> Result<(), Error> {
    let result = loop {
        let wake_at = t.wake_at();
        let step = tokio::select! {
            biased;
            () = t.shutdown.cancelled() => Err(Stop::Requested),
            _ = t.status.tick() => t.send_status(false).await.map_err(Stop::from),
            () = sleep_until(wake_at) => t.wake().await,
            msg = t.stream.next() => match msg {
                Ok(Some(m)) => t.handle(m).await,
                Ok(None) => Err(Stop::Failed(Error::transient("the source ended the replication stream"))),
                Err(e) => Err(Stop::Failed(e)),
            },
        };
        match step {
            Ok(()) => {}
            Err(Stop::Requested) => break Ok(()),
            Err(Stop::Failed(e)) => break Err(e),
        }
    };
    match result {
        Ok(()) => {
            let _ = t.send_status(false).await;
            tracing::info!(acked = %t.ack.acked(), "change stream stopped");
            t.stream.finish().await;
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "change stream failed");
            Err(e)
        }
    }
}

/// Least time between two heartbeats that each carry a new position (a
/// busy source without published changes sends many keepalives).
const HEARTBEAT_ADVANCE_GAP: Duration = Duration::from_millis(50);

/// Least time between two status updates that answer keepalives (a busy
/// walsender without published changes would otherwise ping per flush).
const REPORT_GAP: Duration = Duration::from_millis(10);

/// Sleep until `at`; never, without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl StreamTask {
    async fn send_status(&mut self, reply: bool) -> Result<(), Error> {
        self.reported = self.last_position;
        self.last_status = Instant::now();
        self.report_owed = false;
        self.stream
            .send_status(self.last_position, self.ack.acked(), reply)
            .await
    }

    /// Answer the walsender's keepalive when there is a new position to
    /// report: now, or once [`REPORT_GAP`] has passed since the last update.
    async fn report(&mut self) -> Result<(), Error> {
        if self.last_position <= self.reported {
            self.report_owed = false;
        } else if self.last_status.elapsed() >= REPORT_GAP {
            self.send_status(false).await?;
        } else {
            self.report_owed = true;
        }
        Ok(())
    }

    /// When a withheld heartbeat or an owed answer is due (`None`: neither
    /// is waiting).
    fn wake_at(&self) -> Option<Instant> {
        let heartbeat = self.withheld.map(|_| {
            self.last_heartbeat
                .map_or_else(Instant::now, |at| at + HEARTBEAT_ADVANCE_GAP)
        });
        let report = self.report_owed.then(|| self.last_status + REPORT_GAP);
        heartbeat.into_iter().chain(report).min()
    }

    /// Hand on a withheld heartbeat whose gap is over, then answer.
    async fn wake(&mut self) -> Result<(), Stop> {
        if let Some((position, time)) = self.withheld
            && self
                .last_heartbeat
                .is_none_or(|at| at.elapsed() >= HEARTBEAT_ADVANCE_GAP)
        {
            self.withheld = None;
            if !self.decoder.in_transaction() && position > self.last_position {
                self.last_heartbeat = Some(Instant::now());
                self.emit(Event::Heartbeat { position, time }).await?;
            }
        }
        Ok(self.report().await?)
    }

    async fn handle(&mut self, msg: ReplicationMessage) -> Result<(), Stop> {
        match msg {
            ReplicationMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            } => {
                if reply_requested {
                    self.send_status(false).await?;
                }
                // A keepalive past everything handed on is due soon, not
                // one `heartbeat_interval` after the last: on an idle
                // source it is what moves the position over WAL without a
                // published change (where `ferry run`'s catch-up ends).
                let advanced = wal_end > self.last_position;
                let due = match self.last_heartbeat {
                    None => advanced,
                    Some(at) => {
                        at.elapsed() >= self.heartbeat_interval
                            || (advanced && at.elapsed() >= HEARTBEAT_ADVANCE_GAP)
                    }
                };
                let idle = !self.decoder.in_transaction();
                if due && idle && wal_end >= self.last_position {
                    self.withheld = None;
                    self.last_heartbeat = Some(Instant::now());
                    self.emit(Event::Heartbeat {
                        position: wal_end,
                        time: send_time,
                    })
                    .await?;
                } else if advanced && idle {
                    self.withheld = Some((wal_end, send_time));
                }
                Ok(self.report().await?)
            }
            ReplicationMessage::XLogData {
                start,
                send_time,
                data,
                ..
            } => {
                let step = self.decode(start, |d| d.decode(&data, send_time)).await?;
                match step {
                    Step::Event(Some(ev)) => self.emit(ev).await?,
                    Step::Event(None) => {}
                    Step::Replay {
                        begin,
                        mut messages,
                        commit,
                    } => {
                        self.emit(begin).await?;
                        while let Some(raw) =
                            messages.next_message().map_err(|e| e.into_error(start))?
                        {
                            if let Some(ev) =
                                self.decode(start, |d| d.decode_replayed(&raw)).await?
                            {
                                self.emit(ev).await?;
                            }
                        }
                        self.emit(commit).await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Run `f`; on an unknown type, resolve it and run `f` again.
    async fn decode<T>(
        &mut self,
        at: Lsn,
        mut f: impl FnMut(&mut Decoder) -> Result<T, DecodeError>,
    ) -> Result<T, Error> {
        for _ in 0..64 {
            match f(&mut self.decoder) {
                Err(DecodeError::UnknownType(missing)) => {
                    let resolver = self.resolver.clone();
                    self.decoder
                        .types_mut()
                        .fill(resolver.as_ref(), missing)
                        .await?;
                }
                other => return other.map_err(|e| e.into_error(at)),
            }
        }
        Err(Error::operator(
            format!("decoding pgoutput at LSN {at}: too many nested type lookups"),
            "report this as a ferry bug with the table definition",
        ))
    }

    /// Wait until the channel's row data leaves room for `bytes` more (or
    /// the channel is empty), keeping status updates going. The channel is
    /// FIFO with this task its only sender, so the events still in it are
    /// the last `max_capacity - capacity` sent: the older ones were received.
    async fn wait_for_bytes(&mut self, bytes: usize) -> Result<(), Stop> {
        loop {
            let queued = self.tx.max_capacity() - self.tx.capacity();
            while self.in_flight.len() > queued {
                if let Some(b) = self.in_flight.pop_front() {
                    self.in_flight_bytes -= b;
                }
            }
            if self.in_flight.is_empty() || self.in_flight_bytes + bytes <= self.channel_bytes {
                return Ok(());
            }
            if self.tx.is_closed() {
                return Err(Stop::Requested);
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Stop::Requested),
                _ = self.status.tick() => self.send_status(false).await?,
                () = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        }
    }

    /// Send one event, keeping status updates going while the channel is full.
    async fn emit(&mut self, ev: Event<Lsn>) -> Result<(), Stop> {
        if let Event::Commit { position, .. } | Event::Heartbeat { position, .. } = &ev {
            self.last_position = self.last_position.max(*position);
        }
        let ev = match self.hooks.map.as_mut() {
            Some(map) => match map(ev) {
                Some(ev) => ev,
                None => return Ok(()),
            },
            None => ev,
        };
        let bytes = ev.approx_bytes();
        self.wait_for_bytes(bytes).await?;
        self.in_flight.push_back(bytes);
        self.in_flight_bytes += bytes;
        // Fast path: room in the channel, no futures to build or poll.
        let ev = match self.tx.try_send(ev) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::Requested),
            Err(mpsc::error::TrySendError::Full(ev)) => ev,
        };
        let tx = self.tx.clone();
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Stop::Requested),
                permit = tx.reserve() => {
                    let permit = permit.map_err(|_| Stop::Requested)?;
                    permit.send(ev);
                    return Ok(());
                }
                _ = self.status.tick() => self.send_status(false).await?,
            }
        }
    }
}

/// The status update interval: `wanted`, or half the server's
/// `wal_sender_timeout` when that is shorter (0 disables the timeout), so
/// updates sent while the channel is full keep the walsender alive.
async fn status_interval(
    wanted: Duration,
    conn: &mut ReplicationConnection,
) -> Result<Duration, Error> {
    let rows = conn.simple_query("SHOW wal_sender_timeout").await?;
    let text = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    let Some(timeout) = parse_guc_duration(&text) else {
        tracing::warn!(wal_sender_timeout = %text, "unreadable wal_sender_timeout; sending status updates every second");
        return Ok(wanted.min(Duration::from_secs(1)));
    };
    if timeout.is_zero() {
        return Ok(wanted);
    }
    Ok(wanted.min(timeout / 2).max(Duration::from_millis(1)))
}

/// A time setting as `SHOW` prints it (`60s`, `1min`, `500ms`, `0`).
fn parse_guc_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

/// [`TypeResolver`] over a catalog connection (`format_type`, `pg_type`).
#[derive(Debug, Clone)]
pub struct CatalogTypeResolver {
    client: Arc<tokio_postgres::Client>,
}

impl CatalogTypeResolver {
    pub fn new(client: Arc<tokio_postgres::Client>) -> Self {
        CatalogTypeResolver { client }
    }

    async fn lookup(&self, oid: u32) -> Result<CustomType, Error> {
        let q = "SELECT format_type(t.oid, NULL), t.typtype::text, t.typbasetype, t.typtypmod, \
                 t.typelem, t.typlen::int4, e.typdelim::text \
                 FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem WHERE t.oid = $1::oid";
        let row = self
            .client
            .query_opt(q, &[&oid])
            .await
            .map_err(|e| crate::connect::query_error(&format!("looking up type oid {oid}"), e))?
            .ok_or_else(|| Error::transient(format!("type oid {oid} not found in pg_type")))?;
        let typtype: String = row.get(1);
        let base: u32 = row.get(2);
        let elem: u32 = row.get(4);
        let typlen: i32 = row.get(5);
        let kind = match typtype.as_str() {
            "e" => CustomKind::Enum,
            "d" => CustomKind::Domain {
                base_oid: base,
                base_typmod: row.get(3),
            },
            "b" if elem != 0 && typlen == -1 => {
                let delim: Option<String> = row.get(6);
                let delimiter = delim.and_then(|d| d.bytes().next()).unwrap_or(b',');
                CustomKind::Array {
                    element_oid: elem,
                    delimiter,
                }
            }
            _ => CustomKind::Other,
        };
        Ok(CustomType {
            name: row.get(0),
            kind,
        })
    }
}

impl TypeResolver for CatalogTypeResolver {
    fn resolve(&self, oid: u32) -> BoxFuture<'_, Result<CustomType, Error>> {
        Box::pin(self.lookup(oid))
    }

    fn format(&self, oid: u32, typmod: i32) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(async move {
            let row = self
                .client
                .query_one("SELECT format_type($1::oid, $2::int4)", &[&oid, &typmod])
                .await
                .map_err(|e| {
                    crate::connect::query_error(&format!("formatting type oid {oid}"), e)
                })?;
            Ok(row.get(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guc_durations() {
        let cases = [
            ("1min", Some(60_000)),
            ("60s", Some(60_000)),
            ("2s", Some(2000)),
            ("500ms", Some(500)),
            ("0", Some(0)),
            ("1h", Some(3_600_000)),
            ("1d", Some(86_400_000)),
            ("", None),
            ("s", None),
            ("10 parsecs", None),
            ("99999999999999999999d", None),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_guc_duration(text),
                ms.map(Duration::from_millis),
                "{text:?}"
            );
        }
    }
}
