//! ferry-proxy: a PostgreSQL-wire proxy for migration weeks (DESIGN §9).
//!
//! The application connects to the proxy instead of its database. The
//! proxy authenticates the client itself (SCRAM-SHA-256, TLS when
//! configured: [`scram`], [`handshake`]), opens its own session to the
//! source with the configured credentials and the client's startup
//! parameters ([`backend`]), and from then on forwards every message byte
//! for byte in both directions ([`frame`], [`session`]): simple and extended
//! query, prepared statements, binary formats, transactions, COPY,
//! LISTEN/NOTIFY. Cancel requests carry the proxy's key data and are sent
//! on to the backend the session is using.
//!
//! It decodes only what its features need, at batch boundaries (a Query,
//! or extended-protocol messages up to Sync, with no answer outstanding):
//!
//! - **Mode `source`** (default): everything goes to the source. Read-only
//!   statements ([`classify`]) outside transactions are, at the sampling
//!   rate, mirrored to the target by a small pool of workers ([`mirror`])
//!   and the answers compared ([`compare`]); a difference is re-checked
//!   after the target applied past the source's position before it counts.
//!   Statistics per fingerprint in [`stats`]. A full mirror queue drops the
//!   statement and counts it: the client never waits for the target.
//! - **Mode `reads-on-target`**: read-only statements outside transactions
//!   are served by a second session on the target while the lag is under
//!   the bound (else by the source, counted).
//! - **Mode `target`**: after a cutover through the proxy
//!   ([`Proxy::hold`] / [`Proxy::release`]): new statements are held at
//!   transaction boundaries while the cutover drains, then every session
//!   moves to the target with its session state (startup parameters, the
//!   settings, role and `LISTEN`s read from its source session
//!   ([`state`]); named prepared statements prepared again).
//! - **Mode `rolled-back`**: after a rollback through the proxy (the way
//!   back of a cutover with fallback), the same hold and switch in the
//!   other direction: every session moves back to the source, nothing is
//!   mirrored or read on the target (it no longer follows).
//!
//! Sessions idle outside a transaction when the mode switches sides move
//! at once (not at their next statement), so that a fence placed after
//! the switch ends no proxied session; [`Proxy::sessions_on`] counts them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info};

pub mod backend;
pub mod classify;
pub mod compare;
pub mod frame;
mod handshake;
pub mod mirror;
pub mod scram;
mod session;
mod state;
pub mod stats;

pub use backend::{BackendConfig, Side};
pub use stats::{QueryRow, Stats};

/// Where statements go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Mode {
    /// Everything to the source; read-only statements mirrored.
    Source,
    /// Read-only statements outside transactions served by the target.
    ReadsOnTarget,
    /// Everything to the target (after a cutover through the proxy).
    Target,
    /// Everything to the source again, nothing mirrored (after a rollback
    /// through the proxy: the target no longer follows).
    RolledBack,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Source => "source",
            Mode::ReadsOnTarget => "reads-on-target",
            Mode::Target => "target",
            Mode::RolledBack => "rolled-back",
        }
    }

    /// The side whose session serves a client's statements in this mode.
    pub fn primary(self) -> Side {
        match self {
            Mode::Target => Side::Target,
            Mode::Source | Mode::ReadsOnTarget | Mode::RolledBack => Side::Source,
        }
    }

    /// Modes only a cutover or rollback through the proxy reaches.
    fn switched(self) -> bool {
        matches!(self, Mode::Target | Mode::RolledBack)
    }

    /// All modes, indexed by `mode as u8`.
    const ALL: [Mode; 4] = [
        Mode::Source,
        Mode::ReadsOnTarget,
        Mode::Target,
        Mode::RolledBack,
    ];

    pub fn parse(s: &str) -> Option<Mode> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "source" => Some(Mode::Source),
            "reads-on-target" => Some(Mode::ReadsOnTarget),
            "target" => Some(Mode::Target),
            "rolled-back" => Some(Mode::RolledBack),
            _ => None,
        }
    }
}

/// A recorded mode change.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModeChange {
    pub mode: Mode,
    pub by: String,
    pub at: SystemTime,
}

/// How clients authenticate to the proxy.
#[derive(Clone)]
pub enum ClientAuth {
    /// No authentication (loopback only; the caller checks).
    Open,
    Password {
        user: String,
        password: String,
    },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::Open => f.write_str("ClientAuth::Open"),
            ClientAuth::Password { user, .. } => write!(f, "ClientAuth::Password({user}, ****)"),
        }
    }
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub auth: ClientAuth,
    /// PEM certificate chain and key for client TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub source: BackendConfig,
    pub target: BackendConfig,
    pub mode: Mode,
    /// Share of eligible read-only statements mirrored (0..=1).
    pub sample_rate: f64,
    /// Mirror workers (target sessions).
    pub mirror_workers: usize,
    /// Mirrored statements waiting at most; more are dropped and counted.
    pub mirror_queue: usize,
    /// `reads-on-target` serves from the target only below this lag.
    pub max_read_lag: Duration,
}

/// What the running pipeline tells the proxy.
pub trait Replication: Send + Sync + 'static {
    /// The source WAL position applied to the target (as a 64-bit LSN).
    fn applied_lsn(&self) -> Option<u64>;
    /// Replication lag now, in seconds.
    fn lag_seconds(&self) -> f64;
}

/// No replication known (tests; a proxy without a pipeline).
#[derive(Debug)]
pub struct NoReplication;

impl Replication for NoReplication {
    fn applied_lsn(&self) -> Option<u64> {
        None
    }
    fn lag_seconds(&self) -> f64 {
        f64::INFINITY
    }
}

/// Where cancel requests for a session go.
#[derive(Debug, Clone)]
pub(crate) struct CancelTarget {
    pub secret: Vec<u8>,
    pub addr: (String, u16),
    pub key: (i32, Vec<u8>),
}

/// The hold of a cutover through the proxy.
#[derive(Debug)]
pub(crate) struct Gate {
    /// `true` while new statements wait at transaction boundaries (the
    /// channel wakes the sessions waiting at the gate).
    pub hold: watch::Sender<bool>,
    /// The same flag, read by every batch without the channel's lock: set
    /// after the channel when a hold begins and cleared before it when it
    /// ends, so a session that sees it set finds the channel set too.
    pub holding: AtomicBool,
    /// Sessions inside a transaction or with an answer outstanding.
    pub busy: AtomicUsize,
    /// Sessions waiting at the gate now.
    pub held: AtomicUsize,
    /// Longest wait a client saw at the gate, in microseconds (since the
    /// last hold began).
    pub longest_wait_us: AtomicU64,
    /// Sessions whose statements go to the source / the target now.
    pub on_side: [AtomicUsize; 2],
}

/// A running proxy, shared by its sessions, mirror workers and the
/// pipeline's control paths.
pub struct Proxy {
    pub settings: Settings,
    pub stats: Arc<Stats>,
    pub replication: Arc<dyn Replication>,
    pub(crate) verifier: Option<(String, scram::Verifier)>,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    mode: watch::Sender<Mode>,
    /// The mode as `mode as u8`: read by every batch without the watch
    /// channel's lock (the channel wakes idle sessions when it changes).
    mode_now: AtomicU8,
    history: Mutex<Vec<ModeChange>>,
    pub(crate) gate: Gate,
    pub(crate) cancels: Mutex<HashMap<i32, CancelTarget>>,
    pub(crate) next_pid: AtomicI32,
    pub(crate) mirror: mpsc::Sender<mirror::Job>,
    mirror_rx: Mutex<Option<mpsc::Receiver<mirror::Job>>>,
    /// Custom-setting names in function bodies, per side, with when they
    /// were read ([`state::FUNCTION_NAMES_QUERY`]): every session moved at
    /// a switch needs them, one catalog scan serves them all.
    function_names: Mutex<[Option<NamesRead>; 2]>,
}

/// Names and when they were read.
type NamesRead = (Instant, Arc<Vec<String>>);

/// How long names read from function bodies are reused.
const FUNCTION_NAMES_FOR: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

/// What a hold-and-switch measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Freeze {
    /// From the start of the hold until statements were released.
    pub window_seconds: f64,
    /// Sessions that were waiting at the gate when it opened.
    pub held_sessions: usize,
}

impl Proxy {
    pub fn new(
        settings: Settings,
        replication: Arc<dyn Replication>,
    ) -> std::io::Result<Arc<Proxy>> {
        let verifier = match &settings.auth {
            ClientAuth::Open => None,
            ClientAuth::Password { user, password } => Some((
                user.clone(),
                scram::Verifier::new(password).map_err(std::io::Error::other)?,
            )),
        };
        let tls = settings
            .tls
            .as_ref()
            .map(|(c, k)| handshake::tls_acceptor(c, k))
            .transpose()?;
        let (mirror, rx) = mpsc::channel(settings.mirror_queue.max(1));
        let (mode, _) = watch::channel(settings.mode);
        let (hold, _) = watch::channel(false);
        Ok(Arc::new(Proxy {
            stats: Arc::new(Stats::default()),
            replication,
            verifier,
            tls,
            history: Mutex::new(vec![ModeChange {
                mode: settings.mode,
                by: "config".into(),
                at: SystemTime::now(),
            }]),
            mode,
            mode_now: AtomicU8::new(settings.mode as u8),
            gate: Gate {
                hold,
                holding: AtomicBool::new(false),
                busy: AtomicUsize::new(0),
                held: AtomicUsize::new(0),
                longest_wait_us: AtomicU64::new(0),
                on_side: [AtomicUsize::new(0), AtomicUsize::new(0)],
            },
            cancels: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(1),
            mirror,
            mirror_rx: Mutex::new(Some(rx)),
            function_names: Mutex::new([None, None]),
            settings,
        }))
    }

    pub fn mode(&self) -> Mode {
        Mode::ALL[usize::from(self.mode_now.load(Ordering::SeqCst)) % Mode::ALL.len()]
    }

    pub(crate) fn subscribe_mode(&self) -> watch::Receiver<Mode> {
        self.mode.subscribe()
    }

    /// Change the mode; `by` says who (CLI, control API, console user).
    /// `target` and `rolled-back` are set only by [`Proxy::release`] after
    /// a cutover or rollback through the proxy, and only a rollback leaves
    /// `target`.
    pub fn set_mode(&self, mode: Mode, by: &str) -> Result<ModeChange, String> {
        mode_change(self.mode(), mode)?;
        Ok(self.record_mode(mode, by))
    }

    fn record_mode(&self, mode: Mode, by: &str) -> ModeChange {
        self.mode_now.store(mode as u8, Ordering::SeqCst);
        self.mode.send_replace(mode);
        let change = ModeChange {
            mode,
            by: by.to_owned(),
            at: SystemTime::now(),
        };
        if let Ok(mut h) = self.history.lock() {
            h.push(change.clone());
        }
        info!(mode = mode.as_str(), by, "proxy mode changed");
        change
    }

    /// Every mode change since start, oldest first.
    pub fn history(&self) -> Vec<ModeChange> {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Sessions open now.
    pub fn sessions(&self) -> u64 {
        self.stats.counters.active.load(Ordering::Relaxed)
    }

    /// Hold new statements at transaction boundaries and wait until no
    /// session is inside a transaction or waiting for an answer, for at most
    /// `bound`. On `Err` the hold is already lifted (traffic continues on
    /// the source unchanged).
    pub async fn hold(&self, bound: Duration) -> Result<Instant, String> {
        let started = Instant::now();
        self.gate.longest_wait_us.store(0, Ordering::SeqCst);
        self.gate.hold.send_replace(true);
        self.gate.holding.store(true, Ordering::SeqCst);
        info!(
            bound_ms = bound.as_millis() as u64,
            "proxy holding new statements at transaction boundaries"
        );
        loop {
            let busy = self.gate.busy.load(Ordering::SeqCst);
            if busy == 0 {
                return Ok(started);
            }
            if started.elapsed() > bound {
                self.gate.holding.store(false, Ordering::SeqCst);
                self.gate.hold.send_replace(false);
                return Err(format!(
                    "{busy} proxied sessions still inside a transaction after {:.1}s; statements released to the source",
                    bound.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Sessions whose statements go to `side` now.
    pub fn sessions_on(&self, side: Side) -> usize {
        self.gate.on_side[side as usize].load(Ordering::SeqCst)
    }

    /// Release held statements: in mode `switch` when the cutover (mode
    /// `target`) or rollback (mode `rolled-back`) succeeded, else
    /// unchanged to where they went before.
    pub fn release(&self, started: Instant, switch: Option<Mode>, by: &str) -> Freeze {
        if let Some(mode) = switch {
            self.record_mode(mode, by);
        }
        let switch = switch.is_some();
        let held = self.gate.held.load(Ordering::SeqCst);
        self.gate.holding.store(false, Ordering::SeqCst);
        self.gate.hold.send_replace(false);
        let window = started.elapsed().as_secs_f64();
        info!(
            switch,
            held,
            window_ms = (window * 1000.0) as u64,
            "proxy released held statements"
        );
        Freeze {
            window_seconds: window,
            held_sessions: held,
        }
    }

    /// Custom-setting names in the function bodies of `side`, when read
    /// recently.
    pub(crate) fn cached_function_names(&self, side: Side) -> Option<Arc<Vec<String>>> {
        let cache = self.function_names.lock().ok()?;
        let (at, names) = cache[side as usize].as_ref()?;
        (at.elapsed() < FUNCTION_NAMES_FOR).then(|| names.clone())
    }

    /// Remember the names read from the function bodies of `side`.
    pub(crate) fn cache_function_names(&self, side: Side, names: Vec<String>) -> Arc<Vec<String>> {
        let names = Arc::new(names);
        if let Ok(mut cache) = self.function_names.lock() {
            cache[side as usize] = Some((Instant::now(), names.clone()));
        }
        names
    }

    /// The longest a client waited at the gate during the last hold.
    pub fn longest_client_wait(&self) -> Duration {
        Duration::from_micros(self.gate.longest_wait_us.load(Ordering::SeqCst))
    }
}

/// Whether an operator may change the mode from `now` to `to`. Pure.
fn mode_change(now: Mode, to: Mode) -> Result<(), String> {
    if now == Mode::Target && to != Mode::Target {
        return Err("the proxy serves the target after a cutover; only `ferry rollback --via-proxy` (after a cutover with fallback) moves it back".into());
    }
    if now == Mode::RolledBack && to != Mode::RolledBack {
        return Err(
            "the proxy serves the old source after a rollback; the target no longer follows it"
                .into(),
        );
    }
    if to.switched() && to != now {
        return Err(format!(
            "mode {} is reached only by `ferry cutover --via-proxy` or `ferry rollback --via-proxy`",
            to.as_str()
        ));
    }
    Ok(())
}

/// Serve clients on `listener` until `stop` resolves; the mirror workers
/// run alongside.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut tasks = JoinSet::new();
    if let Some(rx) = proxy.mirror_rx.lock().ok().and_then(|mut r| r.take()) {
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..proxy.settings.mirror_workers.max(1) {
            tasks.spawn(mirror::worker(proxy.clone(), rx.clone()));
        }
    }
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => {
                let (socket, peer): (_, SocketAddr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "proxy accept failed");
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let p = proxy.clone();
                tasks.spawn(async move {
                    if let Err(e) = session::run(p, socket).await {
                        debug!(%peer, error = %e, "proxied session ended");
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
    info!("proxy stopped");
    Ok(())
}

/// [`serve`] on a thread of its own, with a single-threaded runtime, until
/// `stop` resolves. A proxied statement is a few microseconds of work
/// between two socket reads; on the pipeline's runtime it would wait behind
/// whatever decoding or applying occupies its workers, and each hop between
/// workers costs a wake-up. One event-loop thread, like pgbouncer's, keeps
/// the latency added per statement to the work itself.
pub async fn serve_on_own_thread(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ferry-proxy".into())
        .spawn(move || {
            // Sockets and timers. (tokio stacks its signal and
            // child-process drivers on the IO driver whenever those
            // features are compiled in, as they are for the pipeline, so
            // a cheap check for exited children still runs on every park.)
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .and_then(|rt| {
                    rt.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        serve(proxy, listener, stop).await
                    })
                });
            let _ = done.send(result);
        })?;
    finished
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the proxy thread ended unexpectedly")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_mode_changes_an_operator_may_make() {
        use Mode::{ReadsOnTarget, RolledBack, Source, Target};
        // (now, to, allowed, refusal contains)
        let cases = [
            (Source, ReadsOnTarget, true, ""),
            (ReadsOnTarget, Source, true, ""),
            (Source, Source, true, ""),
            (Source, Target, false, "reached only by"),
            (Source, RolledBack, false, "reached only by"),
            (Target, Source, false, "rollback --via-proxy"),
            (Target, ReadsOnTarget, false, "rollback --via-proxy"),
            (Target, Target, true, ""),
            (RolledBack, Source, false, "no longer follows"),
            (RolledBack, Target, false, "no longer follows"),
        ];
        for (now, to, ok, why) in cases {
            let got = mode_change(now, to);
            assert_eq!(got.is_ok(), ok, "{now:?} -> {to:?}: {got:?}");
            if let Err(e) = got {
                assert!(e.contains(why), "{e}");
            }
        }
    }

    #[test]
    fn each_mode_serves_statements_from_one_side() {
        assert_eq!(Mode::Source.primary(), Side::Source);
        assert_eq!(Mode::ReadsOnTarget.primary(), Side::Source);
        assert_eq!(Mode::Target.primary(), Side::Target);
        assert_eq!(Mode::RolledBack.primary(), Side::Source);
        assert_eq!(Mode::parse("rolled_back"), Some(Mode::RolledBack));
        assert_eq!(Mode::RolledBack.as_str(), "rolled-back");
        for m in Mode::ALL {
            assert_eq!(Mode::ALL[m as usize], m);
        }
    }
}
