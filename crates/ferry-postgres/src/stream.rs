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
//! - The position reported to the server (write = flush = apply in standby
//!   status updates) is what the consumer passed to [`AckHandle::ack`]
//!   (monotonic), never more: the server keeps everything after it, and on
//!   restart it skips exactly the transactions whose commit end is at or
//!   before the start position.
//! - Status updates go out every `status_interval` and whenever the server
//!   asks, also while the task waits for room in a full channel (it selects
//!   on the channel permit and the timer), so `wal_sender_timeout` never
//!   fires on a slow consumer.
//! - On an idle source, keepalives outside a transaction become
//!   `Event::Heartbeat { position: wal_end }` (at most one per
//!   `heartbeat_interval`), so the applier can acknowledge and lag reads true.
//! - Shutdown: the task's `biased` select checks the shutdown signal first,
//!   sends a last status update and ends the copy stream.
//!
//! Restart: a new stream from the checkpoint; nothing in memory survives
//! (streamed transactions not yet committed are sent again by the server).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_core::{Error, Event, Lsn};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};

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
    /// Longest time between two standby status updates.
    pub status_interval: Duration,
    /// Least time between two keepalive heartbeats.
    pub heartbeat_interval: Duration,
    /// Bytes of one streamed transaction kept in memory before spilling.
    pub spill_threshold: usize,
    /// Directory for spill files (system temp dir if `None`).
    pub spill_dir: Option<PathBuf>,
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
            spill_dir: None,
        }
    }
}

/// See [`StreamHooks::map`].
pub type EventMap = Box<dyn FnMut(Event<Lsn>) -> Option<Event<Lsn>> + Send>;

/// Caller code that runs in the stream task on every event before it is
/// sent: no hop through another task between reader and consumer.
#[derive(Default)]
pub struct StreamHooks {
    /// Rewrites an event, or drops it (`None`). Runs inline in the reader:
    /// keep it cheap and never block.
    pub map: Option<EventMap>,
    /// While this reads `true` (paused by the operator), events are held
    /// back; status updates keep going, so the connection stays up and the
    /// server keeps the WAL.
    pub pause: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for StreamHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHooks")
            .field("map", &self.map.is_some())
            .field("pause", &self.pause.is_some())
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
    shutdown: Option<oneshot::Sender<()>>,
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
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
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
        conn: ReplicationConnection,
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
        let stream = conn
            .start_replication(&config.slot, config.start, &options)
            .await?;
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        let ack = AckHandle::new(config.start);
        let mut status = tokio::time::interval(config.status_interval);
        status.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let task_state = StreamTask {
            stream,
            decoder: Decoder::new(config.spill_threshold, config.spill_dir.clone()),
            resolver,
            tx,
            ack: ack.clone(),
            status,
            shutdown: stop_rx,
            heartbeat_interval: config.heartbeat_interval,
            last_heartbeat: Instant::now(),
            last_position: config.start,
            hooks,
        };
        let task = tokio::spawn(run(task_state));
        Ok((
            rx,
            StreamHandle {
                ack,
                shutdown: Some(stop_tx),
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
    shutdown: oneshot::Receiver<()>,
    heartbeat_interval: Duration,
    last_heartbeat: Instant,
    /// Highest position handed on (heartbeats never go below it).
    last_position: Lsn,
    hooks: StreamHooks,
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
        let step = tokio::select! {
            biased;
            _ = &mut t.shutdown => Err(Stop::Requested),
            _ = t.status.tick() => t.send_status(false).await.map_err(Stop::from),
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

impl StreamTask {
    async fn send_status(&mut self, reply: bool) -> Result<(), Error> {
        self.stream.send_status(self.ack.acked(), reply).await
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
                let due = self.last_heartbeat.elapsed() >= self.heartbeat_interval;
                if due && !self.decoder.in_transaction() && wal_end >= self.last_position {
                    self.last_heartbeat = Instant::now();
                    self.emit(Event::Heartbeat {
                        position: wal_end,
                        time: send_time,
                    })
                    .await?;
                }
                Ok(())
            }
            ReplicationMessage::XLogData {
                start,
                send_time,
                data,
                ..
            } => {
                let step = self.decode(start, |d| d.decode(&data, send_time)).await?;
                match step {
                    Step::Events(events) => {
                        for ev in events {
                            self.emit(ev).await?;
                        }
                    }
                    Step::Replay {
                        begin,
                        mut messages,
                        commit,
                    } => {
                        self.emit(begin).await?;
                        while let Some(raw) =
                            messages.next_message().map_err(|e| e.into_error(start))?
                        {
                            for ev in self.decode(start, |d| d.decode_replayed(&raw)).await? {
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

    /// Wait until the pause is lifted, keeping status updates going.
    async fn hold_while_paused(&mut self) -> Result<(), Stop> {
        let Some(mut pause) = self.hooks.pause.take() else {
            return Ok(());
        };
        let result = loop {
            if !*pause.borrow_and_update() {
                break Ok(());
            }
            tokio::select! {
                biased;
                _ = &mut self.shutdown => break Err(Stop::Requested),
                changed = pause.changed() => if changed.is_err() {
                    // The pause switch is gone with its owner: nothing holds us.
                    break Ok(());
                },
                _ = self.status.tick() => if let Err(e) = self.send_status(false).await {
                    break Err(Stop::Failed(e));
                },
            }
        };
        self.hooks.pause = Some(pause);
        result
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
        if self.hooks.pause.as_ref().is_some_and(|p| *p.borrow()) {
            self.hold_while_paused().await?;
        }
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
                _ = &mut self.shutdown => return Err(Stop::Requested),
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
