//! Starting the PostgreSQL-wire proxy (`ferry-proxy`) inside `ferry run`
//! when `[proxy] listen` is set, and its ties to the pipeline:
//!
//! - backend sessions use the credentials and TLS rules of `source.url`
//!   and `target.url` (the clients' password is the proxy's own);
//! - the applied position and lag come from [`Live`] (re-checks of shadow
//!   mismatches wait for the applier; `reads-on-target` reads the lag);
//! - statistics go to the status model, `/metrics` and, every few seconds,
//!   the state schema (`shadow_queries`, added to what is stored, so
//!   restarts keep the totals); mode changes and cutovers through the proxy
//!   to `proxy_events` with who and when.
//!
//! The proxy belongs to the `ferry run` process, not to one pipeline
//! ([`serve`], started before it from the forward config): it outlives the
//! forward stream and serves through the reverse stream of a cutover with
//! fallback. Its mode at start follows the migration's state: `target`
//! after a cutover (also while the old source follows in reverse),
//! `rolled-back` after a rollback, else `proxy.mode`. Each pipeline run
//! attaches to it ([`start`]); the forward run also feeds it the applied
//! position and lag. After a cutover or rollback through it, `ferry run`
//! keeps serving clients until it is stopped ([`after_run`]).
//!
//! `cutover --via-proxy` and `rollback --via-proxy` ([`hold`] /
//! [`release`]) are the same hold-and-switch in both directions: new
//! statements wait at transaction boundaries, the ordinary cutover (or
//! rollback) runs, then every session moves to the side that is live now.
//! `--fence` with `--via-proxy` fences the side left behind only once no
//! proxied session is on it any more ([`fence_after_switch`]), so the
//! fence ends only sessions that bypass the proxy.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use ferry_core::Position;
use ferry_core::config::{Config, Endpoint, SslMode};
use ferry_monitor::proxy::{ModeChange, ProxyStatus, ShadowQuery};
use ferry_proxy::{BackendConfig, ClientAuth, Mode, Proxy, QueryRow, Replication, Settings, Side};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::live::Live;

/// How often statistics are written to the state schema.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Fingerprints shown in the status (most called first).
const STATUS_QUERIES: usize = 50;

/// A backend of the proxy from an endpoint's URL and TLS settings.
fn backend(endpoint: &Endpoint, side: Side) -> anyhow::Result<BackendConfig> {
    let name = side.as_str();
    let pg = ferry_postgres::connect::pg_config(endpoint, name)?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => anyhow::bail!(
            "{name}.url must name a TCP host for the proxy (Unix sockets are not supported)"
        ),
    };
    let mode = endpoint.effective_sslmode();
    let tls =
        ferry_postgres::connect::tls_config(mode, endpoint.effective_sslrootcert().as_deref())?
            .map(|c| (Arc::new(c), mode != SslMode::Prefer));
    Ok(BackendConfig {
        side,
        host,
        port: pg.get_ports().first().copied().unwrap_or(5432),
        user: pg.get_user().unwrap_or("postgres").to_owned(),
        password: pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        database: pg
            .get_dbname()
            .map(str::to_owned)
            .or_else(|| pg.get_user().map(str::to_owned))
            .unwrap_or_default(),
        tls,
        connect_timeout: Duration::from_secs(15),
    })
}

/// The proxy's settings from `[proxy]`.
pub fn settings(config: &Config, mode: Mode) -> anyhow::Result<Settings> {
    let p = &config.proxy;
    let auth = match &p.password {
        Some(pw) => ClientAuth::Password {
            user: p.user.clone(),
            password: pw.expose().to_owned(),
        },
        None => ClientAuth::Open,
    };
    let tls = match (&p.tls_cert, &p.tls_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read(c).with_context(|| format!("reading proxy.tls_cert {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("reading proxy.tls_key {}", k.display()))?,
        )),
        _ => None,
    };
    Ok(Settings {
        auth,
        tls,
        source: backend(&config.source, Side::Source)?,
        target: backend(&config.target, Side::Target)?,
        mode,
        sample_rate: p.sample_rate,
        mirror_workers: p.mirror_workers,
        mirror_queue: p.mirror_queue,
        max_read_lag: Duration::from_secs_f64(p.max_read_lag_seconds.max(0.0)),
    })
}

/// The pipeline as the proxy sees it.
struct LiveReplication<P: Position>(Arc<Live<P>>);

impl<P: Position> Replication for LiveReplication<P> {
    fn applied_lsn(&self) -> Option<u64> {
        let applied = self.0.applied_position()?;
        ferry_proxy::mirror::parse_lsn(&applied.to_string())
    }

    fn lag_seconds(&self) -> f64 {
        self.0.lag().seconds
    }
}

/// The forward run the proxy follows, when one runs (shadow reads and
/// `reads-on-target` need it; in modes `target` and `rolled-back` nothing
/// is read from it).
#[derive(Default)]
struct Following(std::sync::Mutex<Option<Arc<dyn Replication>>>);

impl Following {
    fn set(&self, r: Option<Arc<dyn Replication>>) {
        if let Ok(mut f) = self.0.lock() {
            *f = r;
        }
    }

    fn get(&self) -> Option<Arc<dyn Replication>> {
        self.0.lock().ok().and_then(|f| f.clone())
    }
}

impl Replication for Following {
    fn applied_lsn(&self) -> Option<u64> {
        self.get()?.applied_lsn()
    }

    fn lag_seconds(&self) -> f64 {
        self.get().map_or(f64::INFINITY, |r| r.lag_seconds())
    }
}

/// The proxy of this `ferry run` process.
struct Serving {
    proxy: Arc<Proxy>,
    listen: String,
    /// The forward config: backends, statistics and events (the new
    /// database's state schema), hold bound.
    config: Config,
    following: Arc<Following>,
    stop: tokio_util::sync::CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// One `ferry run` per process, one proxy: set once by [`serve`].
static SERVING: std::sync::OnceLock<Serving> = std::sync::OnceLock::new();

/// Start the process's proxy when `[proxy] listen` is set (`config`: the
/// forward config), in the mode the migration's state asks for.
pub async fn serve(config: &Config) -> anyhow::Result<()> {
    let Some(listen) = config.proxy.listen.clone() else {
        return Ok(());
    };
    if SERVING.get().is_some() {
        return Ok(());
    }
    let mode = match starting_mode(config).await {
        Ok(Some(m)) => m,
        Ok(None) => Mode::parse(&config.proxy.mode).unwrap_or(Mode::Source),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "could not read the migration's state for the proxy's mode; starting in proxy.mode");
            Mode::parse(&config.proxy.mode).unwrap_or(Mode::Source)
        }
    };
    let following = Arc::new(Following::default());
    let proxy = Proxy::new(settings(config, mode)?, following.clone())?;
    let listener = bind(&listen).await?;
    if mode != Mode::Source && mode != Mode::ReadsOnTarget {
        info!(
            mode = mode.as_str(),
            "the proxy serves the live database of a migration already cut over"
        );
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let task = spawn(
        config,
        proxy.clone(),
        listener,
        stop.clone().cancelled_owned(),
    );
    let serving = Serving {
        proxy,
        listen,
        config: config.clone(),
        following,
        stop,
        task: std::sync::Mutex::new(Some(task)),
    };
    if SERVING.set(serving).is_err() {
        anyhow::bail!("the proxy was started twice in one process");
    }
    Ok(())
}

/// The mode a proxy starts in after a cutover (`target`, also while the
/// old source follows in reverse) or a rollback (`rolled-back`); `None`
/// before a cutover.
async fn starting_mode(config: &Config) -> anyhow::Result<Option<Mode>> {
    use ferry_apply::state::{Phase, StateStore};
    let target = ferry_postgres::connect::connect(&config.target, "target").await?;
    let state = StateStore::new(config.state.schema.clone());
    state.ensure(&target).await?;
    if state.read_phase(&target).await? != Some(Phase::Done) {
        return Ok(None);
    }
    let row = super::fallback::read_row(&target, &state).await;
    Ok(Some(
        match row.is_some_and(|r| r.direction == "rolled_back") {
            true => Mode::RolledBack,
            false => Mode::Target,
        },
    ))
}

/// Attach a pipeline run to the process's proxy: its status, holds and
/// mode changes; a forward run also feeds it the applied position and lag.
pub fn start<P: Position>(config: &Config, live: &Arc<Live<P>>) {
    let Some(s) = SERVING.get() else {
        return;
    };
    let _ = live.proxy.set((s.proxy.clone(), s.listen.clone()));
    let forward = config.direction == ferry_core::config::Direction::Forward;
    if !forward && s.proxy.mode() != Mode::Target {
        warn!(
            mode = s.proxy.mode().as_str(),
            "the cutover did not go through the proxy: its clients still reach the old source, which is fenced while it follows; point them at the new database"
        );
    }
    let following: Option<Arc<dyn Replication>> = match forward {
        true => Some(Arc::new(LiveReplication(live.clone()))),
        false => None,
    };
    s.following.set(following);
}

/// After the pipeline runs of `ferry run`: a proxy whose clients are on
/// the live database after a cutover or rollback serves until `shutdown`
/// (a signal); then, or right away otherwise, it stops.
pub async fn after_run(shutdown: &crate::shutdown::Shutdown, succeeded: bool) {
    let Some(s) = SERVING.get() else {
        return;
    };
    s.following.set(None);
    let switched = matches!(s.proxy.mode(), Mode::Target | Mode::RolledBack);
    if succeeded && switched && !shutdown.is_cancelled() {
        info!(
            mode = s.proxy.mode().as_str(),
            "the proxy serves its clients until ferry is stopped"
        );
        shutdown.cancelled().await;
    }
    s.stop.cancel();
    let task = s.task.lock().ok().and_then(|mut t| t.take());
    if let Some(task) = task {
        let _ = task.await;
    }
}

async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("binding the proxy to {listen}; set proxy.listen to a free address")
    })?;
    info!(address = %listener.local_addr()?, "proxy listening");
    Ok(listener)
}

fn spawn(
    config: &Config,
    proxy: Arc<Proxy>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (p, target, schema) = (
        proxy.clone(),
        config.target.clone(),
        config.state.schema.clone(),
    );
    let flush_stop = proxy.clone();
    tokio::spawn(async move {
        let flusher = flush_loop(p, target, schema);
        tokio::select! {
            r = ferry_proxy::serve_on_own_thread(flush_stop, listener, stop) => {
                if let Err(e) = r {
                    warn!(error = %e, "proxy stopped");
                }
            }
            () = flusher => {}
        }
    })
}

/// What was last written, to store only what was added since.
#[derive(Default)]
struct Flushed(HashMap<String, QueryRow>);

async fn flush_loop(proxy: Arc<Proxy>, target: Endpoint, schema: String) {
    let mut flushed = Flushed::default();
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        if let Err(e) = flush(&proxy, &target, &schema, &mut flushed).await {
            tracing::debug!(error = %format!("{e:#}"), "proxy statistics not stored this time");
        }
    }
}

/// Add the statistics gathered since the last flush to `shadow_queries`.
async fn flush(
    proxy: &Proxy,
    target: &Endpoint,
    schema: &str,
    flushed: &mut Flushed,
) -> anyhow::Result<()> {
    let rows = proxy.stats.rows();
    let changed: Vec<&QueryRow> = rows
        .iter()
        .filter(|r| flushed.0.get(&r.fingerprint) != Some(*r))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let client = ferry_postgres::connect::connect(target, "target").await?;
    let table = format!("{}.shadow_queries", ferry_core::schema::quote_ident(schema));
    let sql = format!(
        "INSERT INTO {table} AS q (fingerprint, query, calls, mirrored, mismatches, lag_settled, target_errors, \
           source_p50_ms, source_p99_ms, target_p50_ms, target_p99_ms, example) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (fingerprint) DO UPDATE SET calls = q.calls + EXCLUDED.calls, \
           mirrored = q.mirrored + EXCLUDED.mirrored, mismatches = q.mismatches + EXCLUDED.mismatches, \
           lag_settled = q.lag_settled + EXCLUDED.lag_settled, target_errors = q.target_errors + EXCLUDED.target_errors, \
           source_p50_ms = coalesce(EXCLUDED.source_p50_ms, q.source_p50_ms), \
           source_p99_ms = coalesce(EXCLUDED.source_p99_ms, q.source_p99_ms), \
           target_p50_ms = coalesce(EXCLUDED.target_p50_ms, q.target_p50_ms), \
           target_p99_ms = coalesce(EXCLUDED.target_p99_ms, q.target_p99_ms), \
           example = coalesce(q.example, EXCLUDED.example), updated_at = now()"
    );
    for r in changed {
        let before = flushed.0.get(&r.fingerprint);
        let delta = |now: u64, f: fn(&QueryRow) -> u64| (now - before.map_or(0, f).min(now)) as i64;
        client
            .execute(
                &sql,
                &[
                    &r.fingerprint,
                    &r.query,
                    &delta(r.calls, |b| b.calls),
                    &delta(r.mirrored, |b| b.mirrored),
                    &delta(r.mismatches, |b| b.mismatches),
                    &delta(r.lag_settled, |b| b.lag_settled),
                    &delta(r.target_errors, |b| b.target_errors),
                    &r.source_p50_ms,
                    &r.source_p99_ms,
                    &r.target_p50_ms,
                    &r.target_p99_ms,
                    &r.example,
                ],
            )
            .await
            .with_context(|| format!("storing shadow statistics in {table}"))?;
        flushed.0.insert(r.fingerprint.clone(), r.clone());
    }
    Ok(())
}

/// Record a proxy event (mode change, cutover, rollback) in `proxy_events`
/// of the new database's state schema (`config`: used when no proxy runs).
pub async fn record_event(
    config: &Config,
    kind: &str,
    mode: Option<Mode>,
    by: &str,
    detail: serde_json::Value,
) {
    let config = SERVING.get().map_or(config, |s| &s.config);
    let result = async {
        let client = ferry_postgres::connect::connect(&config.target, "target").await?;
        let table = format!(
            "{}.proxy_events",
            ferry_core::schema::quote_ident(&config.state.schema)
        );
        client
            .execute(
                &format!(
                    "INSERT INTO {table} (kind, mode, by, detail) VALUES ($1, $2, $3, $4::text::jsonb)"
                ),
                &[&kind, &mode.map(Mode::as_str), &by, &detail.to_string()],
            )
            .await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        warn!(error = %format!("{e:#}"), kind, "could not record the proxy event in the target");
    }
}

/// The proxy's part of the status.
pub fn status(proxy: &Proxy, listen: &str) -> ProxyStatus {
    let c = &proxy.stats.counters;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let wait = proxy.longest_client_wait();
    ProxyStatus {
        listen: listen.to_owned(),
        mode: proxy.mode().as_str().to_owned(),
        mode_changes: proxy
            .history()
            .into_iter()
            .map(|m| ModeChange {
                mode: m.mode.as_str().to_owned(),
                by: m.by,
                at: m.at,
            })
            .collect(),
        sessions: n(&c.active),
        connections: n(&c.connections),
        statements: n(&c.statements),
        mirrored: n(&c.mirrored),
        mismatches: n(&c.mismatches),
        target_errors: n(&c.target_errors),
        mirror_dropped: n(&c.mirror_dropped),
        target_reads: n(&c.target_reads),
        lag_fallbacks: n(&c.lag_fallbacks),
        auth_failures: n(&c.auth_failures),
        last_hold_seconds: (!wait.is_zero()).then_some(wait.as_secs_f64()),
        queries: proxy
            .stats
            .rows()
            .into_iter()
            .take(STATUS_QUERIES)
            .map(|r| ShadowQuery {
                fingerprint: r.fingerprint,
                query: r.query,
                calls: r.calls,
                mirrored: r.mirrored,
                mismatches: r.mismatches,
                lag_settled: r.lag_settled,
                target_errors: r.target_errors,
                source_p50_ms: r.source_p50_ms,
                source_p99_ms: r.source_p99_ms,
                target_p50_ms: r.target_p50_ms,
                target_p99_ms: r.target_p99_ms,
                example: r.example,
            })
            .collect(),
    }
}

/// Prometheus text of the proxy's counters and per-fingerprint figures.
pub fn metrics(p: &ProxyStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, help, v) in [
        (
            "ferry_proxy_sessions",
            "proxied client sessions open",
            p.sessions,
        ),
        (
            "ferry_proxy_statements_total",
            "batches answered through the proxy",
            p.statements,
        ),
        (
            "ferry_proxy_mirrored_total",
            "read-only statements mirrored to the target",
            p.mirrored,
        ),
        (
            "ferry_proxy_mismatches_total",
            "mirrored statements whose answers differed after re-checks",
            p.mismatches,
        ),
        (
            "ferry_proxy_target_errors_total",
            "mirrored statements that failed only on the target",
            p.target_errors,
        ),
        (
            "ferry_proxy_mirror_dropped_total",
            "mirrored statements dropped because the target was slow",
            p.mirror_dropped,
        ),
        (
            "ferry_proxy_target_reads_total",
            "reads served by the target (reads-on-target)",
            p.target_reads,
        ),
        (
            "ferry_proxy_lag_fallbacks_total",
            "reads kept on the source because lag was above the bound",
            p.lag_fallbacks,
        ),
        (
            "ferry_proxy_auth_failures_total",
            "client logins refused",
            p.auth_failures,
        ),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP ferry_proxy_query_mismatches_total shadow mismatches per query fingerprint\n# TYPE ferry_proxy_query_mismatches_total counter"
    );
    for q in &p.queries {
        let _ = writeln!(
            out,
            "ferry_proxy_query_mismatches_total{{fingerprint=\"{}\"}} {}",
            q.fingerprint, q.mismatches
        );
    }
    let _ = writeln!(
        out,
        "# HELP ferry_proxy_query_latency_ms p50/p99 latency per fingerprint and side\n# TYPE ferry_proxy_query_latency_ms gauge"
    );
    for q in &p.queries {
        for (side, quantile, v) in [
            ("source", "0.5", q.source_p50_ms),
            ("source", "0.99", q.source_p99_ms),
            ("target", "0.5", q.target_p50_ms),
            ("target", "0.99", q.target_p99_ms),
        ] {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "ferry_proxy_query_latency_ms{{fingerprint=\"{}\",side=\"{side}\",quantile=\"{quantile}\"}} {v}",
                    q.fingerprint
                );
            }
        }
    }
    out
}

/// The hold of a cutover or rollback through the proxy.
pub struct Held {
    proxy: Arc<Proxy>,
    started: std::time::Instant,
    /// The mode once it succeeded: `target` or `rolled-back`.
    switch_to: Mode,
}

/// Why a request `--via-proxy` cannot hold the proxy in `mode`, or `Ok`
/// with the mode it switches to. Pure.
fn hold_refusal(mode: Mode, rollback: bool) -> Result<Mode, String> {
    match (rollback, mode) {
        (false, Mode::Source | Mode::ReadsOnTarget) => Ok(Mode::Target),
        (false, Mode::Target) => Err("refused: the proxy already serves the target".into()),
        (true, Mode::Target) => Ok(Mode::RolledBack),
        (true, _) | (false, Mode::RolledBack) => Err(format!(
            "refused: the proxy serves the old source (mode {}), not the new database: a rollback --via-proxy moves clients that a cutover --via-proxy moved",
            mode.as_str()
        )),
    }
}

/// Before a cutover or rollback `--via-proxy`: hold new statements at
/// transaction boundaries until no proxied session is inside a transaction
/// (`proxy.hold_seconds` at most). `None` without `--via-proxy`.
pub async fn hold<P: Position>(
    live: &Live<P>,
    req: &crate::control::CutoverRequest,
) -> Result<Option<Held>, String> {
    if !req.via_proxy {
        return Ok(None);
    }
    let switch_to = check(live, req)?;
    let (Some((proxy, _)), Some(s)) = (live.proxy.get(), SERVING.get()) else {
        return Err("refused: --via-proxy needs the proxy".into());
    };
    let bound = Duration::from_secs_f64(s.config.proxy.hold_seconds.max(0.1));
    let started = proxy
        .hold(bound)
        .await
        .map_err(|e| format!("refused: {e}; raise proxy.hold_seconds or end long transactions"))?;
    Ok(Some(Held {
        proxy: proxy.clone(),
        started,
        switch_to,
    }))
}

/// Whether a request `--via-proxy` can hold the proxy now (also for its
/// dry run): the mode it switches to, or the refusal.
pub fn check<P: Position>(
    live: &Live<P>,
    req: &crate::control::CutoverRequest,
) -> Result<Mode, String> {
    let (Some((proxy, _)), Some(_)) = (live.proxy.get(), SERVING.get()) else {
        return Err(
            "refused: --via-proxy needs the proxy; set [proxy] listen and restart ferry run".into(),
        );
    };
    hold_refusal(proxy.mode(), req.rollback)
}

/// What the request is called in records and events.
fn request_name(held: &Held) -> &'static str {
    match held.switch_to {
        Mode::RolledBack => "rollback --via-proxy",
        _ => "cutover --via-proxy",
    }
}

/// After the cutover or rollback: release held statements, to the side
/// that is live now when it succeeded, unchanged when not; record the
/// freeze.
pub async fn release<P: Position>(
    live: &Live<P>,
    held: &Option<Held>,
    succeeded: bool,
    rec: &mut ferry_monitor::CutoverRecord,
) {
    let Some(h) = held else { return };
    let by = request_name(h);
    let freeze = h
        .proxy
        .release(h.started, succeeded.then_some(h.switch_to), by);
    let side = h.switch_to.primary().as_str();
    if succeeded {
        rec.write_freeze_seconds = Some(freeze.window_seconds);
        rec.steps.push(format!(
            "proxy held new statements for {:.3}s ({} sessions waiting) and moved every proxied session to the {side}",
            freeze.window_seconds, freeze.held_sessions
        ));
    } else {
        rec.steps.push(format!(
            "proxy released held statements unchanged after {:.3}s",
            freeze.window_seconds
        ));
    }
    let detail = serde_json::json!({
        "succeeded": succeeded,
        "hold_seconds": freeze.window_seconds,
        "held_sessions": freeze.held_sessions,
    });
    let kind = match h.switch_to {
        Mode::RolledBack => "rollback",
        _ => "cutover",
    };
    record_event(&live.config, kind, Some(h.proxy.mode()), by, detail).await;
}

/// `--fence` with `--via-proxy`, once the proxy switched: wait (up to
/// `proxy.hold_seconds`) until no proxied session is left on the side
/// behind, then fence it (`fence`), which ends only the sessions that
/// bypass the proxy. Returns the record's step.
pub async fn fence_after_switch<F>(held: &Held, fence: F) -> Result<String, ferry_core::Error>
where
    F: std::future::Future<Output = Result<String, ferry_core::Error>>,
{
    let behind = match held.switch_to.primary() {
        ferry_proxy::Side::Target => ferry_proxy::Side::Source,
        ferry_proxy::Side::Source => ferry_proxy::Side::Target,
    };
    let bound = SERVING
        .get()
        .map_or(10.0, |s| s.config.proxy.hold_seconds.max(0.1));
    let started = std::time::Instant::now();
    while held.proxy.sessions_on(behind) > 0 && started.elapsed().as_secs_f64() < bound {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = held.proxy.sessions_on(behind);
    if left > 0 {
        warn!(
            sessions = left,
            side = behind.as_str(),
            "proxied sessions still on the side being fenced; the fence ends them"
        );
    }
    let how = fence.await?;
    Ok(format!(
        "fenced the {} once the proxy had moved every session ({left} left behind): {how}",
        behind.as_str()
    ))
}

/// Change the proxy's mode (control API, console, CLI), recorded with who.
pub async fn change_mode<P: Position>(
    live: &Live<P>,
    mode: String,
    by: String,
) -> Result<ModeChange, String> {
    let Some((proxy, _)) = live.proxy.get() else {
        return Err("no proxy runs here: set [proxy] listen and restart ferry run".into());
    };
    let m = Mode::parse(&mode)
        .ok_or_else(|| format!("unknown proxy mode '{mode}': use source or reads-on-target"))?;
    let change = proxy.set_mode(m, &by)?;
    record_event(&live.config, "mode", Some(m), &by, serde_json::json!({})).await;
    Ok(ModeChange {
        mode: change.mode.as_str().to_owned(),
        by: change.by,
        at: change.at,
    })
}

/// The shadow-read totals stored in the target (`ferry report` when no
/// `ferry run` answers); `None` when nothing was stored.
pub async fn stored(config: &Config) -> Option<ProxyStatus> {
    let client = ferry_postgres::connect::connect(&config.target, "target")
        .await
        .ok()?;
    let s = ferry_core::schema::quote_ident(&config.state.schema);
    let rows = client
        .query(
            &format!(
                "SELECT fingerprint, query, calls, mirrored, mismatches, lag_settled, target_errors, \
                 source_p50_ms, source_p99_ms, target_p50_ms, target_p99_ms, example \
                 FROM {s}.shadow_queries ORDER BY calls DESC, fingerprint LIMIT 500"
            ),
            &[],
        )
        .await
        .ok()?;
    if rows.is_empty() {
        return None;
    }
    let n = |r: &tokio_postgres::Row, i: usize| r.get::<_, i64>(i).max(0) as u64;
    let queries: Vec<ShadowQuery> = rows
        .iter()
        .map(|r| ShadowQuery {
            fingerprint: r.get(0),
            query: r.get(1),
            calls: n(r, 2),
            mirrored: n(r, 3),
            mismatches: n(r, 4),
            lag_settled: n(r, 5),
            target_errors: n(r, 6),
            source_p50_ms: r.get(7),
            source_p99_ms: r.get(8),
            target_p50_ms: r.get(9),
            target_p99_ms: r.get(10),
            example: r.get(11),
        })
        .collect();
    Some(ProxyStatus {
        listen: config.proxy.listen.clone().unwrap_or_default(),
        mode: "(not running)".into(),
        mirrored: queries.iter().map(|q| q.mirrored).sum(),
        mismatches: queries.iter().map(|q| q.mismatches).sum(),
        target_errors: queries.iter().map(|q| q.target_errors).sum(),
        queries,
        ..ProxyStatus::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_proxy_modes_a_cutover_or_rollback_via_the_proxy_takes() {
        use Mode::{ReadsOnTarget, RolledBack, Source, Target};
        // (mode, rollback, switches to, refusal contains)
        let cases = [
            (Source, false, Some(Target), ""),
            (ReadsOnTarget, false, Some(Target), ""),
            (Target, false, None, "already serves the target"),
            (RolledBack, false, None, "serves the old source"),
            (Target, true, Some(RolledBack), ""),
            (Source, true, None, "serves the old source"),
            (ReadsOnTarget, true, None, "serves the old source"),
            (RolledBack, true, None, "serves the old source"),
        ];
        for (mode, rollback, to, why) in cases {
            let got = hold_refusal(mode, rollback);
            assert_eq!(
                got.as_ref().ok().copied(),
                to,
                "{mode:?} {rollback}: {got:?}"
            );
            if let Err(e) = got {
                assert!(e.contains(why), "{e}");
            }
        }
    }
}
