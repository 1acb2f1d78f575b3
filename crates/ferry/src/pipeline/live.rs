//! What a running `ferry run` knows about itself, shared by the pipeline
//! stages, the monitor task and the control API.
//!
//! The change stream reports each transaction it forwards (its commit-record
//! position and commit time); the applier's acknowledgement reports the
//! applied position; the monitor task polls the source head, emits
//! heartbeats (`pg_logical_emit_message(false, 'ferry.heartbeat', …)`) and
//! reads slot health and table progress. From these, [`Live::lag`] gives
//! both lag figures (`ferry_monitor::lag` rules): seconds since the oldest
//! unapplied commit or heartbeat, growing while the pipeline stalls, zero
//! when caught up. No lock here is held across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_apply::ApplyStats;
use ferry_apply::state::StateStore;
use ferry_core::config::Config;
use ferry_core::{Lsn, TableId};
use ferry_monitor::status::TableStatus;
use ferry_monitor::{
    CutoverRecord, LagFigures, LagInputs, LagTracker, Metrics, Phase, SlotHealth, Status,
    lag_figures,
};
use tokio::sync::{oneshot, watch};
use tracing::debug;

use crate::control::{BoxFuture, ControlHandler, CutoverRequest};
use crate::shutdown::{Shutdown, Trigger};

/// Most unapplied transactions / heartbeats remembered for the lag figure;
/// the oldest is what matters, so later ones are dropped past this.
const MAX_TRACKED: usize = 100_000;
const HEAD_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const DETAILS_EVERY: Duration = Duration::from_secs(1);

/// Asked by a cutover: stop streaming, then drop the slot unless kept.
#[derive(Debug)]
pub struct Finish {
    pub keep_slot: bool,
    pub reply: oneshot::Sender<Result<Finished, String>>,
}

/// What finishing after a cutover did.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// The slot and publication were dropped.
    pub slot_dropped: bool,
    /// Target schema changes put back (identities, triggers, rules, keys).
    pub restored: Vec<String>,
}

/// The shared state of one run.
#[derive(Debug)]
pub struct Live {
    pub config: Config,
    pub state: StateStore,
    pub metrics: Metrics,
    pub run_id: i64,
    started: SystemTime,
    phase: Mutex<Phase>,
    head: AtomicU64,
    applied: AtomicU64,
    pending: Mutex<VecDeque<(u64, SystemTime)>>,
    heartbeats: Mutex<VecDeque<(u64, SystemTime)>>,
    tracker: Mutex<LagTracker>,
    paused: watch::Sender<bool>,
    last_error: Mutex<Option<String>>,
    tables: Mutex<Vec<TableStatus>>,
    pub carried: Mutex<Vec<(TableId, TableId)>>,
    slot: Mutex<Option<SlotHealth>>,
    stats: Mutex<Option<Arc<ApplyStats>>>,
    pub cutover_lock: tokio::sync::Mutex<()>,
    pub last_cutover: Mutex<Option<CutoverRecord>>,
    finish: Mutex<Option<Finish>>,
    shutdown: Trigger,
    /// Stops the background tasks once the pipeline has finished.
    stop: (Trigger, Shutdown),
}

impl Live {
    pub fn new(config: Config, state: StateStore, run_id: i64, shutdown: Trigger) -> Arc<Live> {
        Arc::new(Live {
            config,
            state,
            metrics: Metrics::new(),
            run_id,
            started: SystemTime::now(),
            phase: Mutex::new(Phase::Plan),
            head: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            pending: Mutex::new(VecDeque::new()),
            heartbeats: Mutex::new(VecDeque::new()),
            tracker: Mutex::new(LagTracker::new()),
            paused: watch::channel(false).0,
            last_error: Mutex::new(None),
            tables: Mutex::new(Vec::new()),
            carried: Mutex::new(Vec::new()),
            slot: Mutex::new(None),
            stats: Mutex::new(None),
            cutover_lock: tokio::sync::Mutex::new(()),
            last_cutover: Mutex::new(None),
            finish: Mutex::new(None),
            shutdown,
            stop: crate::shutdown::channel(),
        })
    }

    pub fn set_phase(&self, phase: Phase) {
        lock(&self.phase, |v| *v = phase);
        self.metrics.set_phase(phase.as_str());
    }

    pub fn phase(&self) -> Phase {
        lock(&self.phase, |p| *p)
    }

    /// A transaction left the change stream towards the applier.
    pub fn forwarded(&self, final_lsn: Lsn, commit_time: ferry_core::value::Timestamp) {
        let at = system_time(commit_time);
        lock(&self.pending, |q| {
            if q.len() < MAX_TRACKED {
                q.push_back((final_lsn.0, at));
            }
        });
        self.metrics.received(1);
    }

    /// Everything up to `lsn` is committed in the target.
    pub fn applied(&self, lsn: Lsn) {
        let applied = self.applied.fetch_max(lsn.0, Ordering::AcqRel).max(lsn.0);
        lock(&self.pending, |q| {
            while q.front().is_some_and(|(f, _)| *f < applied) {
                q.pop_front();
            }
        });
        lock(&self.heartbeats, |q| {
            while q.front().is_some_and(|(l, _)| *l <= applied) {
                q.pop_front();
            }
        });
    }

    pub fn applied_position(&self) -> Lsn {
        Lsn(self.applied.load(Ordering::Acquire))
    }

    pub fn set_head(&self, head: Lsn) {
        self.head.fetch_max(head.0, Ordering::AcqRel);
    }

    pub fn head(&self) -> Lsn {
        Lsn(self.head.load(Ordering::Acquire))
    }

    fn heartbeat_sent(&self, lsn: Lsn) {
        lock(&self.heartbeats, |q| {
            if q.len() < MAX_TRACKED {
                q.push_back((lsn.0, SystemTime::now()));
            }
        });
    }

    pub fn set_stats(&self, stats: Arc<ApplyStats>) {
        lock(&self.stats, |s| *s = Some(stats));
    }

    /// Carry the applier's counters into the metrics; `seen` remembers the
    /// stats object and value published last (a reconnected applier starts
    /// its counters at 0, the metric keeps counting).
    pub fn publish_apply_counters(&self, seen: &mut (usize, u64)) {
        let Some(stats) = lock(&self.stats, |s| s.clone()) else {
            return;
        };
        let id = Arc::as_ptr(&stats) as usize;
        if id != seen.0 {
            *seen = (id, 0);
        }
        let now = stats.source_order_changes.load(Ordering::Relaxed);
        self.metrics
            .source_order_changes(now.saturating_sub(seen.1));
        seen.1 = now;
    }

    pub fn set_error(&self, message: String) {
        lock(&self.last_error, |e| *e = Some(message));
    }

    /// Both lag figures now.
    pub fn lag(&self) -> LagFigures {
        let now = SystemTime::now();
        let head = self.head.load(Ordering::Acquire);
        let applied = self.applied.load(Ordering::Acquire);
        let pending_bytes = head.saturating_sub(applied);
        let behind_since = lock(&self.tracker, |t| t.observe(pending_bytes, applied, now));
        lag_figures(&LagInputs {
            pending_bytes,
            oldest_unapplied_commit: lock(&self.pending, |q| q.front().map(|(_, t)| *t)),
            oldest_unapplied_heartbeat: lock(&self.heartbeats, |q| q.front().map(|(_, t)| *t)),
            behind_since,
            now,
        })
    }

    /// Pause switch the applier holds at (`ApplierConfig::pause`).
    pub fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Ask the pipeline to stop streaming and finish the run.
    pub fn request_finish(&self, finish: Finish) {
        lock(&self.finish, |f| *f = Some(finish));
        self.shutdown.fire();
    }

    pub fn take_finish(&self) -> Option<Finish> {
        lock(&self.finish, Option::take)
    }

    /// Stop the background tasks (control API, monitor, sampler).
    pub fn request_stop(&self) {
        self.stop.0.fire();
    }

    /// Resolves when [`Live::request_stop`] is called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut s = self.stop.1.clone();
        async move { s.wait().await }
    }

    /// The status as the control API shows it.
    pub fn status(&self) -> Status {
        let mut s = Status::new(self.phase(), "postgres", SystemTime::now());
        s.live = true;
        s.run_started = Some(self.started);
        let head = self.head();
        let applied = self.applied_position();
        s.source_position = (head.0 > 0).then(|| head.to_string());
        s.applied_position = (applied.0 > 0).then(|| applied.to_string());
        s.lag = self.lag();
        let stats = lock(&self.stats, |s| s.clone());
        if let Some((_, t)) = stats.as_ref().and_then(|st| st.last_applied()) {
            s.applied_commit_time = Some(system_time(t));
        }
        let per_table = stats.as_ref().map(|st| st.per_table()).unwrap_or_default();
        s.tables = lock(&self.tables, |t| t.clone());
        let carried: Vec<String> = lock(&self.carried, |c| {
            c.iter().map(|(src, _)| src.to_string()).collect()
        });
        s.insert_only = insert_only_tables(&self.config, carried);
        for t in &mut s.tables {
            if let Some(id) = ferry_core::config::parse_table_name(&t.name) {
                t.changes_applied = per_table.get(&id).copied().unwrap_or(0);
            }
        }
        s.paused = self.is_paused();
        s.reader = if s.phase >= Phase::Catchup {
            "streaming"
        } else {
            "loading"
        }
        .into();
        s.applier = if s.paused { "paused" } else { "running" }.into();
        if let Some(e) = lock(&self.last_error, |e| e.clone()) {
            s.set_last_error(&e);
        }
        s.slot = lock(&self.slot, |s| s.clone());
        s.cutover = lock(&self.last_cutover, |c| c.clone());
        s
    }
}

fn lock<T, R>(m: &Mutex<T>, f: impl FnOnce(&mut T) -> R) -> R {
    let mut guard = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

fn system_time(t: ferry_core::value::Timestamp) -> SystemTime {
    let micros = t.unix_micros();
    if micros >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// Poll the source head, emit heartbeats, refresh slot health and table
/// progress, and publish the lag metrics, until shutdown.
pub async fn run_monitor(live: Arc<Live>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut source: Option<tokio_postgres::Client> = None;
    let mut target: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(HEAD_EVERY);
    let (mut last_heartbeat, mut last_details) =
        (None::<std::time::Instant>, None::<std::time::Instant>);
    let mut apply_seen = (0, 0);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        if source
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            source = ferry_postgres::connect::connect(&live.config.source, "source")
                .await
                .ok();
        }
        if let Some(src) = &source
            && let Err(e) = poll_source(&live, src, &mut last_heartbeat).await
        {
            debug!(error = %e, "monitor: source poll failed");
        }
        if last_details.is_none_or(|t| t.elapsed() >= DETAILS_EVERY) {
            last_details = Some(std::time::Instant::now());
            if target
                .as_ref()
                .is_none_or(tokio_postgres::Client::is_closed)
            {
                target = ferry_postgres::connect::connect(&live.config.target, "target")
                    .await
                    .ok();
            }
            if let Some(dst) = &target
                && let Err(e) = refresh_tables(&live, dst).await
            {
                debug!(error = %e, "monitor: table refresh failed");
            }
            if let Some(src) = &source {
                let _ = refresh_slot(&live, src).await;
            }
        }
        live.publish_apply_counters(&mut apply_seen);
        let lag = live.lag();
        live.metrics.set_lag(lag.seconds, lag.bytes);
        live.metrics
            .set_positions(Some(live.head().0), Some(live.applied_position().0));
    }
}

async fn poll_source(
    live: &Live,
    src: &tokio_postgres::Client,
    last: &mut Option<std::time::Instant>,
) -> anyhow::Result<()> {
    if live.phase() >= Phase::Catchup && last.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY) {
        let row = src
            .query_one(
                "SELECT pg_logical_emit_message(false, 'ferry.heartbeat', now()::text)::text",
                &[],
            )
            .await?;
        live.heartbeat_sent(row.get::<_, &str>(0).parse()?);
        *last = Some(std::time::Instant::now());
    }
    let head: Lsn = src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get::<_, &str>(0)
        .parse()?;
    live.set_head(head);
    Ok(())
}

async fn refresh_slot(live: &Live, src: &tokio_postgres::Client) -> anyhow::Result<()> {
    let slot = &live.config.postgres.slot;
    // wal_status exists from PostgreSQL 13; to_jsonb reads it where it does.
    let row = src
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, to_jsonb(s) ->> 'wal_status' FROM pg_replication_slots s WHERE slot_name = $1",
            &[slot],
        )
        .await?;
    let health = row.map(|r| SlotHealth {
        name: slot.clone(),
        retained_wal_bytes: r.get::<_, Option<i64>>(0).map(|b| b.max(0) as u64),
        wal_status: r.get(1),
    });
    if let Some(b) = health.as_ref().and_then(|h| h.retained_wal_bytes) {
        live.metrics.set_slot_retained(b);
    }
    lock(&live.slot, |s| *s = health);
    Ok(())
}

async fn refresh_tables(live: &Live, dst: &tokio_postgres::Client) -> anyhow::Result<()> {
    if let Ok(Some(phase)) = live.state.read_phase(dst).await {
        live.set_phase(phase);
    }
    let records = live.state.tables(dst).await?;
    let chunks = dst
        .query(
            &format!(
                "SELECT source_table, count(*)::int8 FROM {} GROUP BY 1",
                live.state.table("chunks")
            ),
            &[],
        )
        .await?;
    let done: std::collections::HashMap<String, i64> =
        chunks.iter().map(|r| (r.get(0), r.get(1))).collect();
    let tables = records
        .into_iter()
        .map(|r| {
            let rows = r.rows_copied.max(0) as u64;
            let est = r.row_estimate.map(|e| e.max(0) as u64);
            let counter = live.metrics.load_rows_counter(&r.source_table);
            counter.add(rows.saturating_sub(counter.get()));
            if let Some(e) = est {
                live.metrics.set_load_estimate(&r.source_table, e);
            }
            TableStatus {
                chunks_done: done.get(&r.source_table).copied().unwrap_or(0) as u32,
                chunks_total: r.chunks_total.unwrap_or(0).max(0) as u32,
                name: r.source_table,
                state: r.state.as_str().to_owned(),
                rows_copied: rows,
                rows_estimated: est,
                changes_applied: 0,
            }
        })
        .collect();
    lock(&live.tables, |t| *t = tables);
    Ok(())
}

/// The control API's view of the pipeline.
#[derive(Debug)]
pub struct Handler(pub Arc<Live>);

impl ControlHandler for Handler {
    fn status(&self) -> Status {
        self.0.status()
    }

    fn metrics(&self) -> String {
        self.0.metrics.render()
    }

    fn cutover(&self, req: CutoverRequest) -> BoxFuture<'_, Result<CutoverRecord, String>> {
        Box::pin(super::cutover::run(self.0.clone(), req))
    }

    fn pause(&self) {
        self.0.paused.send_replace(true);
        tracing::info!("applier paused by the control API");
    }

    fn resume(&self) {
        self.0.paused.send_replace(false);
        tracing::info!("applier resumed by the control API");
    }
}

/// Record where the control API listens, so `ferry status` and `ferry
/// cutover` find it (also when `control.listen` asks for port 0).
pub async fn publish_address(
    target: &tokio_postgres::Client,
    state: &StateStore,
    addr: &str,
) -> anyhow::Result<()> {
    let t = state.table("control");
    target
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (id int PRIMARY KEY CHECK (id = 1), address text NOT NULL, pid int NOT NULL, started_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await?;
    target
        .execute(
            &format!(
                "INSERT INTO {t} (id, address, pid) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, pid = EXCLUDED.pid, started_at = now()"
            ),
            &[&addr, &(std::process::id() as i32)],
        )
        .await?;
    Ok(())
}

/// The control API address the last `ferry run` published, if any.
pub async fn published_address(
    target: &tokio_postgres::Client,
    state: &StateStore,
) -> Option<String> {
    target
        .query_opt(
            &format!(
                "SELECT address FROM {} WHERE id = 1",
                state.table("control")
            ),
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// The tables of `tables` (`schema.table`) that `tables.insert_only`
/// declares insert-only.
pub fn insert_only_tables(
    config: &Config,
    tables: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let Ok(filter) = config.tables.filter() else {
        return Vec::new();
    };
    tables
        .into_iter()
        .filter(|t| {
            ferry_core::config::parse_table_name(t).is_some_and(|id| filter.insert_only(&id))
        })
        .collect()
}
