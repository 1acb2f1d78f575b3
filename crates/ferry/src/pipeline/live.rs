//! What a running `ferry run` knows about itself, shared by the pipeline
//! stages, the monitor task and the control API.
//!
//! The change stream reports each transaction it forwards (its commit-record
//! position and commit time); the applier's acknowledgement reports the
//! applied position; the monitor task polls the source head through the
//! source's [`Probe`], emits heartbeats into the source's log and reads its
//! retention (slot health) and the table progress. Generic over the source's
//! position type: nothing here knows which database the source is. From these, [`Live::lag`] gives
//! both lag figures (`ferry_monitor::lag` rules): seconds since the oldest
//! unapplied commit or heartbeat, growing while the pipeline stalls, zero
//! when caught up. No lock here is held across an `.await`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_apply::ApplyStats;
use ferry_apply::state::StateStore;
use ferry_core::config::Config;
use ferry_core::source::{Probe, Source};
use ferry_core::{Position, TableId};
use ferry_monitor::status::TableStatus;
use ferry_monitor::{
    CutoverRecord, LagFigures, LagInputs, LagTracker, Metrics, Phase, SlotHealth, Status,
    TableValidation, lag_figures,
};
use tokio::sync::{oneshot, watch};
use tracing::debug;

use crate::shutdown::Shutdown;

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
    /// The reverse stream ends a fallback period (rollback or finish).
    pub fallback_end: Option<super::fallback::FallbackEnd>,
    pub reply: oneshot::Sender<Result<Finished, String>>,
}

/// What finishing after a cutover did.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// The slot and publication were dropped.
    pub slot_dropped: bool,
    /// What releasing the source's capture did ([`ferry_core::source::Released`]).
    pub release_note: String,
    /// Target schema changes put back (identities, triggers, rules, keys).
    pub restored: Vec<String>,
}

/// The shared state of one run.
#[derive(Debug)]
pub struct Live<P: Position> {
    pub config: Config,
    pub state: StateStore,
    /// Resolves once the whole state schema exists (a fresh target's is
    /// created beside the start, see `state_ready`).
    pub state_ready: super::state_ready::StateReady,
    pub metrics: Metrics,
    pub run_id: i64,
    started: SystemTime,
    phase: Mutex<Phase>,
    head: Mutex<Option<P>>,
    applied: Mutex<Option<P>>,
    /// Grows each time the applied position advances (for the tracker).
    advances: AtomicU64,
    pending: Mutex<VecDeque<(P, SystemTime)>>,
    heartbeats: Mutex<VecDeque<(P, SystemTime)>>,
    /// Asks the monitor for a heartbeat now ([`Live::want_heartbeat`]).
    heartbeat_wanted: tokio::sync::Notify,
    tracker: Mutex<LagTracker>,
    paused: watch::Sender<bool>,
    last_error: Mutex<Option<String>>,
    tables: Mutex<Vec<TableStatus>>,
    pub carried: Mutex<Vec<(TableId, TableId)>>,
    /// The zero-date counts committed on the target
    /// ([`ferry_apply::state::StateStore::replaced_counts`]), refreshed by
    /// the monitor.
    zero_dates: Mutex<Vec<ferry_core::source::ColumnCount>>,
    slot: Mutex<Option<SlotHealth>>,
    stats: Mutex<Option<Arc<ApplyStats>>>,
    pub cutover_lock: tokio::sync::Mutex<()>,
    pub last_cutover: Mutex<Option<CutoverRecord>>,
    finish: Mutex<Option<Finish>>,
    /// A validation runs in this process ([`crate::validate::background`]).
    pub validating: AtomicBool,
    /// The newest validation result per table, as the target holds it.
    validation: Mutex<Vec<TableValidation>>,
    /// Schema changes carried / not carried (`ferry.events`).
    schema_changes: Mutex<Option<ferry_monitor::status::SchemaChanges>>,
    /// The run's token: a finished cutover cancels it.
    shutdown: Shutdown,
    /// Stops the background tasks once the pipeline has finished.
    stop: Shutdown,
    /// The proxy and its address, when `[proxy] listen` is set.
    pub proxy: std::sync::OnceLock<(Arc<ferry_proxy::Proxy>, String)>,
    /// Target sessions post-data used, idle, for the steps at the end of
    /// catch-up ([`Live::keep_targets`]).
    idle_targets: Mutex<Vec<tokio_postgres::Client>>,
}

impl<P: Position> Live<P> {
    pub fn new(
        config: Config,
        state: StateStore,
        run_id: i64,
        shutdown: Shutdown,
        state_ready: super::state_ready::StateReady,
    ) -> Arc<Self> {
        let metrics = Metrics::new();
        metrics.set_direction(config.direction.as_str());
        Arc::new(Live {
            config,
            state,
            state_ready,
            metrics,
            run_id,
            started: SystemTime::now(),
            phase: Mutex::new(Phase::Plan),
            head: Mutex::new(None),
            applied: Mutex::new(None),
            advances: AtomicU64::new(0),
            pending: Mutex::new(VecDeque::new()),
            heartbeats: Mutex::new(VecDeque::new()),
            heartbeat_wanted: tokio::sync::Notify::new(),
            tracker: Mutex::new(LagTracker::new()),
            paused: watch::channel(false).0,
            last_error: Mutex::new(None),
            tables: Mutex::new(Vec::new()),
            carried: Mutex::new(Vec::new()),
            zero_dates: Mutex::new(Vec::new()),
            slot: Mutex::new(None),
            stats: Mutex::new(None),
            cutover_lock: tokio::sync::Mutex::new(()),
            last_cutover: Mutex::new(None),
            finish: Mutex::new(None),
            validating: AtomicBool::new(false),
            validation: Mutex::new(Vec::new()),
            schema_changes: Mutex::new(None),
            shutdown,
            stop: Shutdown::new(),
            proxy: std::sync::OnceLock::new(),
            idle_targets: Mutex::new(Vec::new()),
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
    pub fn forwarded(&self, final_position: P, commit_time: ferry_core::value::Timestamp) {
        let at = system_time(commit_time);
        lock(&self.pending, |q| {
            if q.len() < MAX_TRACKED {
                q.push_back((final_position, at));
            }
        });
    }

    /// Everything up to `position` is committed in the target.
    pub fn applied(&self, position: P) {
        let applied = lock(&self.applied, |a| {
            if a.as_ref().is_none_or(|cur| position > *cur) {
                *a = Some(position);
                self.advances.fetch_add(1, Ordering::AcqRel);
            }
            a.clone()
        });
        let Some(applied) = applied else { return };
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

    /// The applied position, `None` before the first checkpoint is read.
    pub fn applied_position(&self) -> Option<P> {
        lock(&self.applied, |a| a.clone())
    }

    pub fn set_head(&self, head: P) {
        lock(&self.head, |h| {
            if h.as_ref().is_none_or(|cur| head > *cur) {
                *h = Some(head);
            }
        });
    }

    pub fn head(&self) -> Option<P> {
        lock(&self.head, |h| h.clone())
    }

    /// Keep `sessions` (idle target sessions) for the steps at the end of
    /// catch-up: a login each fewer there.
    pub fn keep_targets(&self, sessions: Vec<tokio_postgres::Client>) {
        lock(&self.idle_targets, |kept| kept.extend(sessions));
    }

    /// The sessions [`Live::keep_targets`] kept and still open; none after.
    pub fn take_targets(&self) -> Vec<tokio_postgres::Client> {
        let mut kept = lock(&self.idle_targets, std::mem::take);
        kept.retain(|c| !c.is_closed());
        kept
    }

    /// Ask the monitor for a heartbeat at its next turn, whenever the last
    /// was (a catch-up whose end the source has written but not flushed).
    pub fn want_heartbeat(&self) {
        self.heartbeat_wanted.notify_one();
    }

    fn heartbeat_sent(&self, position: P) {
        lock(&self.heartbeats, |q| {
            if q.len() < MAX_TRACKED {
                q.push_back((position, SystemTime::now()));
            }
        });
    }

    pub fn set_stats(&self, stats: Arc<ApplyStats>) {
        lock(&self.stats, |s| *s = Some(stats));
    }

    /// Carry the applier's counters into the metrics: changes applied per
    /// table, batches and their durations, changes applied in source order.
    /// `seen` remembers the stats object and the values published last (a
    /// reconnected applier starts its counters at 0, the metrics keep
    /// counting).
    pub fn publish_apply_counters(&self, seen: &mut ApplySeen) {
        let Some(stats) = lock(&self.stats, |s| s.clone()) else {
            return;
        };
        let id = Arc::as_ptr(&stats) as usize;
        if id != seen.stats {
            *seen = ApplySeen {
                stats: id,
                ..ApplySeen::default()
            };
        }
        let now = stats.source_order_changes.load(Ordering::Relaxed);
        self.metrics
            .source_order_changes(now.saturating_sub(seen.source_order));
        seen.source_order = now;
        for (table, n) in stats.per_table() {
            let before = seen.per_table.insert(table.clone(), n).unwrap_or(0);
            if n > before {
                self.metrics.applied(&table.to_string(), n - before);
            }
        }
        for took in stats.take_batch_durations() {
            self.metrics.batch(took);
        }
    }

    pub fn set_error(&self, message: String) {
        lock(&self.last_error, |e| *e = Some(message));
    }

    /// Both lag figures now.
    pub fn lag(&self) -> LagFigures {
        let now = SystemTime::now();
        let pending_bytes = match (self.applied_position(), self.head()) {
            (Some(a), Some(h)) if h > a => {
                // A distance the source cannot measure still counts as behind.
                a.distance(&h).unwrap_or(1)
            }
            _ => 0,
        };
        let advances = self.advances.load(Ordering::Acquire);
        let behind_since = lock(&self.tracker, |t| t.observe(pending_bytes, advances, now));
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

    /// The operator's pause switch (control API).
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Ask the pipeline to stop streaming and finish the run.
    pub fn request_finish(&self, finish: Finish) {
        lock(&self.finish, |f| *f = Some(finish));
        self.shutdown.cancel();
    }

    pub fn take_finish(&self) -> Option<Finish> {
        lock(&self.finish, Option::take)
    }

    /// Stop the background tasks (control API, monitor, sampler).
    pub fn request_stop(&self) {
        self.stop.cancel();
    }

    /// Resolves when [`Live::request_stop`] is called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.stop.clone().cancelled_owned()
    }

    /// The status as the control API shows it.
    pub fn status(&self) -> Status {
        let mut s = Status::new(self.phase(), P::KIND.as_str(), SystemTime::now());
        s.live = true;
        s.direction = self.config.direction.as_str().into();
        s.run_started = Some(self.started);
        s.source_position = self.head().map(|h| h.to_string());
        s.applied_position = self.applied_position().map(|a| a.to_string());
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
        s.validation = lock(&self.validation, |v| v.clone());
        s.validating = self.validating.load(Ordering::Acquire);
        s.schema_changes = lock(&self.schema_changes, |d| d.clone());
        s.zero_dates = lock(&self.zero_dates, |z| z.clone());
        s.proxy = self
            .proxy
            .get()
            .map(|(p, listen)| super::proxy::status(p, listen));
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

/// What [`Live::publish_apply_counters`] published last, of which
/// applier's stats (by address).
#[derive(Debug, Default)]
pub struct ApplySeen {
    stats: usize,
    source_order: u64,
    per_table: BTreeMap<TableId, u64>,
}

/// Poll the source head, emit heartbeats, refresh the source's retention
/// (slot health) and table progress, and publish the lag metrics, until
/// `stop` resolves. A lost session is opened again at the next tick.
pub async fn run_monitor<S: Source>(
    live: Arc<Live<S::Position>>,
    source: Arc<S>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut probe: Option<S::Probe> = None;
    let mut target: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(HEAD_EVERY);
    let (mut last_heartbeat, mut last_details) =
        (None::<std::time::Instant>, None::<std::time::Instant>);
    let mut apply_seen = ApplySeen::default();
    loop {
        let wanted = tokio::select! {
            biased;
            () = &mut stop => return,
            () = live.heartbeat_wanted.notified() => true,
            _ = tick.tick() => false,
        };
        if wanted {
            last_heartbeat = None;
        }
        if probe.as_ref().is_none_or(Probe::is_closed) {
            probe = source.probe().await.ok();
        }
        if let Some(p) = probe.as_mut()
            && let Err(e) = poll_source(&live, p, &mut last_heartbeat).await
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
            if let Some(p) = probe.as_mut() {
                match p.retention().await {
                    Ok(r) => {
                        let health = r.map(|r| SlotHealth {
                            name: r.name,
                            retained_wal_bytes: r.retained_bytes,
                            wal_status: r.status,
                        });
                        if let Some(b) = health.as_ref().and_then(|h| h.retained_wal_bytes) {
                            live.metrics.set_slot_retained(b);
                        }
                        lock(&live.slot, |s| *s = health);
                    }
                    Err(e) => debug!(error = %e, "monitor: retention read failed"),
                }
            }
        }
        live.publish_apply_counters(&mut apply_seen);
        let lag = live.lag();
        live.metrics.set_lag(lag.seconds, lag.bytes);
        live.metrics.set_positions(
            live.head().and_then(|h| h.as_number()),
            live.applied_position().and_then(|a| a.as_number()),
        );
    }
}

async fn poll_source<P: Position, R: Probe<P>>(
    live: &Live<P>,
    probe: &mut R,
    last: &mut Option<std::time::Instant>,
) -> Result<(), ferry_core::Error> {
    if live.phase() >= Phase::Catchup && last.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY) {
        if let Some(at) = probe.heartbeat().await? {
            live.heartbeat_sent(at);
        }
        *last = Some(std::time::Instant::now());
    }
    let head = probe.head().await?;
    live.set_head(head);
    Ok(())
}

async fn refresh_tables<P: Position>(
    live: &Live<P>,
    dst: &tokio_postgres::Client,
) -> anyhow::Result<()> {
    if let Ok(Some(phase)) = live.state.read_phase(dst).await {
        live.set_phase(phase);
    }
    // Values the source's policy replaced, as committed with the data; a
    // failed read leaves the last figures and the table refresh goes on.
    // Only a MySQL/MariaDB source replaces values (zero dates).
    let replaces = live.config.source.kind().ok() == Some(ferry_core::config::EndpointKind::MySql);
    if replaces {
        match live.state.replaced_counts(dst).await {
            Ok(zero_dates) => {
                live.metrics.set_zero_dates(&zero_dates);
                lock(&live.zero_dates, |z| *z = zero_dates);
            }
            Err(e) => debug!(error = %e, "monitor: replaced-value counts not read"),
        }
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
    let validation = crate::validate::store::latest(dst, &live.state).await?;
    for v in &validation {
        live.metrics.set_validation(
            &v.table,
            v.clean,
            v.differences.len() as u64,
            v.rows_checked,
            v.rows_per_second,
            crate::validate::store::unix_seconds(v.finished_at),
        );
    }
    lock(&live.validation, |v| *v = validation);
    let ddl = schema_changes(dst, &live.state).await;
    lock(&live.schema_changes, |d| *d = ddl);
    Ok(())
}

/// The schema-change figures of status, from `ferry.events`.
pub(crate) async fn schema_changes(
    dst: &tokio_postgres::Client,
    state: &ferry_apply::StateStore,
) -> Option<ferry_monitor::status::SchemaChanges> {
    let (applied, not_carried, last) = ferry_apply::schema_sync::recorded(dst, state).await.ok()?;
    (applied + not_carried > 0).then_some(ferry_monitor::status::SchemaChanges {
        ddl_applied: applied,
        ddl_not_carried: not_carried,
        last_not_carried: last,
    })
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
