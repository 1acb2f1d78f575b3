//! One proxied client session: a single task that moves frames between the
//! client and the backend it is using, decoding only at batch boundaries.
//!
//! A *batch* is what a client sends before it waits: a Query (or
//! FunctionCall), or extended-protocol messages up to Sync (or Flush). The
//! session counts answers outstanding (`pending`: batches sent whose
//! ReadyForQuery has not come back) and remembers the transaction status of
//! the last ReadyForQuery. At `pending == 0` it may:
//!
//! - prepare again, on the backend the batch goes to, the named statements
//!   the batch uses but that backend has not seen (after a switch or on the
//!   read session), and replay `SET`s it has not run — both as their own
//!   round trips, whose answers the client never sees;
//! - and, when also outside a transaction (status `I`): wait at the gate of
//!   a cutover ([`crate::Proxy::hold`]), move to the side the mode serves
//!   after one (the target after a cutover, the source after a rollback;
//!   a session idle when the mode changes moves at once) with the session
//!   state read from the side it leaves ([`state::Snapshot`]),
//!   route a read-only batch to the target session (`reads-on-target`), or
//!   capture the source's answer to mirror it.
//!
//! Everything else is forwarded unchanged, in order; while a batch is on the
//! read session no further client message is forwarded (a pipelined write
//! must never reach the target). Reads and writes of both sockets are
//! multiplexed in one poll with bounded buffers, so a client and a server
//! that both send a lot cannot deadlock the proxy; each socket is polled
//! whole (no split halves and their lock, no future per branch and turn).

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::io::poll_read_buf;

use crate::backend::{Backend, BackendError, Side, Stream};
use crate::classify::{self, Class};
use crate::compare::Answer;
use crate::frame::{self, Frame};
use crate::handshake::{self, Opened};
use crate::mirror::{self, Job};
use crate::state::{self, SessionState, Track};
use crate::{CancelTarget, Mode, Proxy};

/// Client bytes buffered while a batch is incomplete; past this the
/// complete frames are forwarded to the source as they are.
const CLIENT_BUFFER: usize = 1 << 20;
/// Frames of a batch the session's reused frame vector holds at most.
const SPARE_FRAMES: usize = 64;
/// Free space kept in read buffers so one read takes a large piece.
const READ_ROOM: usize = 16 * 1024;
/// Answer bytes buffered for a slow client before the backend is not read.
const ANSWER_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Handshake(#[from] handshake::HandshakeError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("client i/o: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Frame(#[from] frame::FrameError),
}

/// A backend session.
struct Conn {
    side: Side,
    io: Stream,
    rbuf: BytesMut,
    out: BytesMut,
    /// Named statements prepared on this backend.
    prepared: HashSet<String>,
    /// How many of the session's `SET`s this backend has run.
    sets_applied: usize,
    key: (i32, Vec<u8>),
    addr: (String, u16),
}

impl Conn {
    fn new(b: Backend, sets_applied: usize) -> Conn {
        Conn {
            side: b.side,
            io: b.stream,
            rbuf: b.buf,
            out: BytesMut::with_capacity(8192),
            prepared: HashSet::new(),
            sets_applied,
            key: b.key,
            addr: b.addr,
        }
    }

    fn err(&self, source: io::Error) -> BackendError {
        BackendError::Io {
            side: self.side.as_str(),
            source,
        }
    }

    async fn flush(&mut self) -> Result<(), BackendError> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.io.write_all(&out).await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Send `bytes` (ending in Sync or a Query) and read to its
    /// `answers`-th ReadyForQuery.
    async fn round_trip(
        &mut self,
        bytes: &[u8],
        mut answers: usize,
    ) -> Result<Vec<Frame>, BackendError> {
        self.flush().await?;
        self.io.write_all(bytes).await.map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        loop {
            if let Some(f) = frame::split(&mut self.rbuf).map_err(|e| BackendError::Protocol {
                side: self.side.as_str(),
                why: e.to_string(),
            })? {
                if f.tag == b'Z' {
                    answers = answers.saturating_sub(1);
                }
                out.push(f);
                if answers == 0 {
                    return Ok(out);
                }
                continue;
            }
            let n = self
                .io
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| self.err(e))?;
            if n == 0 {
                return Err(BackendError::Closed {
                    side: self.side.as_str(),
                });
            }
        }
    }

    async fn terminate(mut self) {
        let _ = self.flush().await;
        let _ = self.io.write_all(&Frame::new(b'X', &[]).raw).await;
        let _ = self.io.shutdown().await;
    }
}

/// What the session learned about the batch in flight.
#[derive(Default)]
struct Batch {
    started: Option<Instant>,
    /// (fingerprint, normalized) of a read-only batch.
    fingerprint: Option<(Arc<str>, Arc<str>)>,
    on_target: bool,
    /// Statements that change the session state ([`state`]), when the
    /// batch has any.
    track: Option<Track>,
    error: bool,
    /// Mirroring: the self-contained frames and the answer so far.
    /// (Boxed: a batch is moved several times on its way.)
    capture: Option<Box<(Bytes, bool, Answer)>>,
}

impl Batch {
    /// One answer frame of this batch (`raw`: tag, length and body).
    fn saw(&mut self, tag: u8, raw: &[u8]) {
        match tag {
            b'E' => self.error = true,
            b'C' | b's' | b'I' => {
                if let Some(t) = &mut self.track {
                    let tag = match tag {
                        b'C' => frame::cstr(&raw[5..]).map_or("", |(s, _)| s),
                        _ => "",
                    };
                    t.tags.push(tag.to_owned());
                }
            }
            _ => {}
        }
        if let Some(capture) = &mut self.capture {
            capture.2.absorb(&Frame {
                tag,
                raw: Bytes::copy_from_slice(raw),
            });
        }
    }
}

struct Session {
    proxy: Arc<Proxy>,
    /// The client's connection.
    client: Stream,
    cin: BytesMut,
    cout: BytesMut,
    params: Vec<(String, String)>,
    /// `SET`s that persisted (replayed on another backend).
    state: SessionState,
    /// Named Parse frames by statement name.
    statements: HashMap<String, Frame>,
    /// The last unnamed Parse (a later batch may bind it).
    unnamed: Option<Frame>,
    source: Option<Conn>,
    target: Option<Conn>,
    primary: Side,
    active: Side,
    pending: usize,
    status: u8,
    /// Extended messages forwarded without their Sync yet (a Flush
    /// client): not at a boundary.
    unsynced: bool,
    busy: bool,
    /// The batch being forwarded (until its Sync or Query).
    batch: Batch,
    /// Batches sent whose ReadyForQuery has not come back, oldest first.
    inflight: std::collections::VecDeque<Batch>,
    /// The frame vector of the last batch, reused by the next.
    spare: Vec<Frame>,
    pid: i32,
    secret: Vec<u8>,
    hold: watch::Receiver<bool>,
    /// The proxy's mode: a switch moves an idle session at once.
    mode: watch::Receiver<Mode>,
    /// Session state only the source has (temporary tables, cursors,
    /// LISTEN): reads stay there.
    pinned: bool,
    rng: u64,
    /// Classification and fingerprint per statement text (prepared
    /// statements repeat; bounded, cleared when full).
    seen: std::cell::RefCell<HashMap<String, Option<Seen>>>,
    /// Fingerprints by normalized text (bounded, cleared when full).
    fingerprints: std::cell::RefCell<HashMap<Arc<str>, Arc<str>>>,
}

/// What a read-only statement text classified as.
#[derive(Clone)]
struct Seen {
    ordered: bool,
    fingerprint: Arc<str>,
    normalized: Arc<str>,
}

/// Statement texts remembered per session.
const SEEN_TEXTS: usize = 256;

/// Serve one client connection.
pub(crate) async fn run(proxy: Arc<Proxy>, tcp: TcpStream) -> Result<(), SessionError> {
    let Opened::Client {
        mut stream,
        params,
        rest,
    } = handshake::open(&proxy, tcp).await?
    else {
        return Ok(());
    };
    let counters = &proxy.stats.counters;
    counters.connections.fetch_add(1, Ordering::Relaxed);
    let primary = proxy.mode().primary();
    let cfg = match primary {
        Side::Source => &proxy.settings.source,
        Side::Target => &proxy.settings.target,
    };
    let backend = match Backend::connect(cfg, &params).await {
        Ok(b) => b,
        Err(e) => {
            let code = match &e {
                BackendError::Server { code, .. } => code.clone(),
                _ => "08006".to_owned(),
            };
            let msg = format!("ferry proxy: {e}");
            let _ = stream
                .write_all(&frame::error_response("FATAL", &code, &msg).raw)
                .await;
            return Err(e.into());
        }
    };
    let pid = proxy.next_pid.fetch_add(1, Ordering::Relaxed);
    let mut secret = vec![0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret);
    let mut greeting = BytesMut::new();
    for p in &backend.params {
        greeting.put_slice(&p.raw);
    }
    let mut key = BytesMut::new();
    key.put_i32(pid);
    key.put_slice(&secret);
    greeting.put_slice(&Frame::new(b'K', &key).raw);
    greeting.put_slice(&frame::ready_for_query(b'I').raw);
    stream.write_all(&greeting).await?;
    let conn = Conn::new(backend, 0);
    counters.active.fetch_add(1, Ordering::Relaxed);
    proxy.gate.on_side[primary as usize].fetch_add(1, Ordering::SeqCst);
    let mut s = Session {
        hold: proxy.gate.hold.subscribe(),
        mode: proxy.subscribe_mode(),
        client: stream,
        cin: rest,
        cout: BytesMut::with_capacity(16 * 1024),
        params,
        state: SessionState::default(),
        statements: HashMap::new(),
        unnamed: None,
        source: None,
        target: None,
        primary,
        active: primary,
        pending: 0,
        status: b'I',
        unsynced: false,
        busy: false,
        batch: Batch::default(),
        inflight: std::collections::VecDeque::new(),
        spare: Vec::new(),
        pid,
        secret,
        pinned: false,
        seen: std::cell::RefCell::new(HashMap::new()),
        fingerprints: std::cell::RefCell::new(HashMap::new()),
        rng: (pid as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        proxy: proxy.clone(),
    };
    match primary {
        Side::Source => s.source = Some(conn),
        Side::Target => s.target = Some(conn),
    }
    s.register_cancel();
    let result = s.serve().await;
    s.set_busy(false);
    if let Ok(mut m) = proxy.cancels.lock() {
        m.remove(&pid);
    }
    counters.active.fetch_sub(1, Ordering::Relaxed);
    proxy.gate.on_side[s.primary as usize].fetch_sub(1, Ordering::SeqCst);
    for c in [s.source.take(), s.target.take()].into_iter().flatten() {
        c.terminate().await;
    }
    result
}

enum Event {
    ClientRead(io::Result<usize>),
    ClientWrote(io::Result<usize>),
    BackendRead(io::Result<usize>),
    BackendWrote(io::Result<usize>),
    ModeChanged(watch::Receiver<Mode>),
}

impl Session {
    fn conn(&mut self, side: Side) -> Option<&mut Conn> {
        match side {
            Side::Source => self.source.as_mut(),
            Side::Target => self.target.as_mut(),
        }
    }

    fn register_cancel(&self) {
        let conn = match self.active {
            Side::Source => self.source.as_ref(),
            Side::Target => self.target.as_ref(),
        };
        if let (Some(c), Ok(mut m)) = (conn, self.proxy.cancels.lock()) {
            m.insert(
                self.pid,
                CancelTarget {
                    secret: self.secret.clone(),
                    addr: c.addr.clone(),
                    key: c.key.clone(),
                },
            );
        }
    }

    fn set_busy(&mut self, busy: bool) {
        if busy != self.busy {
            self.busy = busy;
            if busy {
                self.proxy.gate.busy.fetch_add(1, Ordering::SeqCst);
            } else {
                self.proxy.gate.busy.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        // Waiting for a mode change is one long-lived future, not one
        // registered and dropped on every turn of the loop; once it has
        // registered this task's waker it is polled again (a lock on the
        // channel's waiter list) only when the mode's version moved.
        let mut mode_change = Box::pin(mode_changed(self.mode.clone()));
        let mut mode_armed = false;
        loop {
            // Forward what the client sent, deciding at batch boundaries.
            if !self.client_frames().await? {
                return Ok(());
            }
            // A statement or an answer usually fits its socket at once:
            // written now rather than by a turn of the loop of its own.
            self.write_now()?;
            // Past the buffer only to complete its first frame (a CopyData
            // larger than the buffer must still get through).
            let read_client =
                self.cin.len() < CLIENT_BUFFER || matches!(frame::peek(&self.cin), Ok(None));
            let read_backend = self.cout.len() < ANSWER_BUFFER;
            let conn = match self.active {
                Side::Source => self.source.as_mut(),
                Side::Target => self.target.as_mut(),
            };
            let Some(conn) = conn else {
                return Ok(());
            };
            // Read in large pieces (a split-off buffer has little room left).
            for buf in [&mut conn.rbuf, &mut self.cin] {
                if buf.capacity() - buf.len() < READ_ROOM / 4 {
                    buf.reserve(READ_ROOM);
                }
            }
            // Writes first (what is ready to go goes), then reads.
            let (client, cout, cin) = (&mut self.client, &self.cout, &mut self.cin);
            let mode = &self.mode;
            let armed = &mut mode_armed;
            let event = std::future::poll_fn(|cx| {
                if !cout.is_empty()
                    && let Poll::Ready(r) = Pin::new(&mut *client).poll_write(cx, cout)
                {
                    return Poll::Ready(Event::ClientWrote(r));
                }
                if !conn.out.is_empty()
                    && let Poll::Ready(r) = Pin::new(&mut conn.io).poll_write(cx, &conn.out)
                {
                    return Poll::Ready(Event::BackendWrote(r));
                }
                if read_backend
                    && let Poll::Ready(r) =
                        poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.rbuf)
                {
                    return Poll::Ready(Event::BackendRead(r));
                }
                if read_client
                    && let Poll::Ready(r) = poll_read_buf(Pin::new(&mut *client), cx, cin)
                {
                    return Poll::Ready(Event::ClientRead(r));
                }
                if *armed && !mode.has_changed().unwrap_or(false) {
                    return Poll::Pending;
                }
                *armed = true;
                mode_change.as_mut().poll(cx).map(Event::ModeChanged)
            })
            .await;
            match event {
                Event::ClientWrote(r) => {
                    let n = r?;
                    self.cout.advance(n);
                }
                Event::BackendWrote(r) => {
                    let n = r.map_err(|e| conn.err(e))?;
                    conn.out.advance(n);
                }
                Event::BackendRead(r) => {
                    if r.map_err(|e| conn.err(e))? == 0 {
                        // The server ended the session (its FATAL is in
                        // the answer already): pass it on and close.
                        self.backend_frames()?;
                        let out = std::mem::take(&mut self.cout);
                        let _ = self.client.write_all(&out).await;
                        return Ok(());
                    }
                    self.backend_frames()?;
                }
                Event::ClientRead(r) => {
                    if r? == 0 {
                        return Ok(());
                    }
                }
                Event::ModeChanged(rx) => {
                    self.mode = rx.clone();
                    mode_change = Box::pin(mode_changed(rx));
                    mode_armed = false;
                    self.switch_when_idle().await?;
                }
            }
        }
    }

    /// One write attempt for each side's pending bytes, without waiting:
    /// what the socket does not take now is written by the loop.
    fn write_now(&mut self) -> Result<(), SessionError> {
        if let Some(conn) = match self.active {
            Side::Source => self.source.as_mut(),
            Side::Target => self.target.as_mut(),
        } && !conn.out.is_empty()
            && let Some(r) = poll_once(conn.io.write(&conn.out))
        {
            let n = r.map_err(|e| conn.err(e))?;
            conn.out.advance(n);
        }
        if !self.cout.is_empty()
            && let Some(r) = poll_once(self.client.write(&self.cout))
        {
            let n = r?;
            self.cout.advance(n);
        }
        Ok(())
    }

    /// Handle complete client frames; `Ok(false)` when the client ended.
    async fn client_frames(&mut self) -> Result<bool, SessionError> {
        loop {
            if self.active != self.primary && self.pending > 0 {
                return Ok(true);
            }
            if self.pending > 0 {
                // Pipelined batches: forwarded at once, looked at for shadow
                // reads and session state. While a cutover holds statements
                // they wait until the answers are in and are then decided at
                // the boundary like any other; COPY data flows on.
                let hold = self.proxy.gate.holding.load(Ordering::SeqCst);
                match scan_batch(&self.cin)? {
                    Some(batch) if batch.synced && !hold => {
                        let frames = self.take_frames(batch.frames)?;
                        self.batch = Batch::default();
                        self.note_effects(&frames, false);
                        self.look_at(&frames, false);
                        self.forward_all(frames);
                    }
                    Some(batch)
                        if !batch.synced
                            && (!hold || matches!(self.cin[0], b'd' | b'c' | b'f')) =>
                    {
                        for f in self.take_frames(batch.frames)? {
                            if f.tag == b'X' {
                                return Ok(false);
                            }
                            self.forward(f);
                        }
                    }
                    Some(_) => return Ok(true),
                    None => {
                        if self.cin.len() >= CLIENT_BUFFER && !hold {
                            while let Some(f) = frame::split(&mut self.cin)? {
                                self.forward(f);
                            }
                        }
                        return Ok(true);
                    }
                }
                continue;
            }
            let Some(batch) = scan_batch(&self.cin)? else {
                if self.cin.len() >= CLIENT_BUFFER {
                    // A batch larger than the buffer: no decisions, as is.
                    let side = self.primary;
                    while let Some(f) = frame::split(&mut self.cin)? {
                        self.prepare_for(side, std::slice::from_ref(&f)).await?;
                        self.forward(f);
                    }
                }
                return Ok(true);
            };
            let frames = self.take_frames(batch.frames)?;
            if frames.last().is_some_and(|f| f.tag == b'X') {
                for f in &frames[..frames.len() - 1] {
                    self.forward(f.clone());
                }
                return Ok(false);
            }
            self.begin_batch(frames, batch.synced).await?;
        }
    }

    /// A batch at `pending == 0`: gate, switch, routing, mirroring.
    async fn begin_batch(&mut self, frames: Vec<Frame>, synced: bool) -> Result<(), SessionError> {
        let idle = self.status == b'I' && !self.unsynced;
        self.set_busy(true);
        if idle {
            while self.proxy.gate.holding.load(Ordering::SeqCst) {
                self.set_busy(false);
                self.wait_at_gate().await;
                self.set_busy(true);
            }
            let wanted = self.proxy.mode().primary();
            if wanted != self.primary
                && let Err(e) = self.switch_to(wanted).await
            {
                tracing::warn!(error = %e, side = wanted.as_str(), "proxied session could not move");
                return self.refuse(&frames, &e.to_string());
            }
        }
        self.batch = Batch::default();
        self.note_effects(&frames, idle && synced);
        let mut side = self.primary;
        if idle && synced && self.look_at(&frames, true) {
            side = Side::Target;
        }
        if side == Side::Target
            && self.target.is_none()
            && let Err(e) = self.open_target().await
        {
            tracing::debug!(error = %e, "read session on the target failed; reading from the source");
            side = self.primary;
        }
        self.batch.on_target = side == Side::Target;
        if side != self.active {
            self.active = side;
            self.register_cancel();
        }
        self.prepare_for(side, &frames).await?;
        self.forward_all(frames);
        Ok(())
    }

    /// [`Session::forward`] each of `frames`, keeping the vector for the
    /// next batch unless a long batch grew it (a session keeps no memory a
    /// single large batch needed).
    fn forward_all(&mut self, mut frames: Vec<Frame>) {
        for f in frames.drain(..) {
            self.forward(f);
        }
        if frames.capacity() <= SPARE_FRAMES {
            self.spare = frames;
        }
    }

    fn take_frames(&mut self, n: usize) -> Result<Vec<Frame>, SessionError> {
        let mut frames = std::mem::take(&mut self.spare);
        frames.clear();
        frames.reserve(n);
        while frames.len() < n {
            match frame::split(&mut self.cin)? {
                Some(f) => frames.push(f),
                None => break,
            }
        }
        Ok(frames)
    }

    /// Fingerprint a read-only batch and capture it for mirroring; `true`
    /// when it should be served by the target (`routable`: at a boundary
    /// outside a transaction, in `reads-on-target`, lag under the bound).
    fn look_at(&mut self, frames: &[Frame], routable: bool) -> bool {
        let mode = self.proxy.mode();
        if mode == Mode::Source && self.proxy.settings.sample_rate <= 0.0 {
            // Shadow reads off: nothing to mirror, route or count per
            // query, so the statement is not lexed at all.
            return false;
        }
        let Some((seen, ordered)) = self.read_only(frames) else {
            return false;
        };
        let (fp, normalized) = (seen.fingerprint, seen.normalized);
        let mut to_target = false;
        if routable && mode == Mode::ReadsOnTarget && self.primary == Side::Source && !self.pinned {
            let counters = &self.proxy.stats.counters;
            if self.proxy.replication.lag_seconds()
                <= self.proxy.settings.max_read_lag.as_secs_f64()
            {
                to_target = true;
                counters.target_reads.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.lag_fallbacks.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !to_target && mode == Mode::Source && self.primary == Side::Source && self.sampled() {
            let job = self.mirror_frames(frames);
            self.batch.capture = Some(Box::new((job, ordered, Answer::default())));
        }
        self.batch.fingerprint = Some((fp, normalized));
        // Latency is kept per fingerprint: only a batch with one is timed.
        self.batch.started = Some(Instant::now());
        to_target
    }

    async fn wait_at_gate(&mut self) {
        let started = Instant::now();
        self.proxy.gate.held.fetch_add(1, Ordering::SeqCst);
        let _ = self.hold.wait_for(|h| !*h).await;
        self.proxy.gate.held.fetch_sub(1, Ordering::SeqCst);
        let waited = started.elapsed().as_micros() as u64;
        self.proxy
            .gate
            .longest_wait_us
            .fetch_max(waited, Ordering::SeqCst);
    }

    /// Answer a batch with an error without running it.
    fn refuse(&mut self, frames: &[Frame], why: &str) -> Result<(), SessionError> {
        let e = frame::error_response("ERROR", "08006", &format!("ferry proxy: {why}"));
        self.cout.put_slice(&e.raw);
        let syncs = frames
            .iter()
            .filter(|f| matches!(f.tag, b'S' | b'Q' | b'F'))
            .count();
        for _ in 0..syncs {
            self.cout
                .put_slice(&frame::ready_for_query(self.status).raw);
        }
        if self.status == b'I' {
            self.set_busy(false);
        }
        Ok(())
    }

    async fn open_target(&mut self) -> Result<(), BackendError> {
        let b = Backend::connect(&self.proxy.settings.target, &self.params).await?;
        self.target = Some(Conn::new(b, 0));
        Ok(())
    }

    /// Move the session to `side` after a cutover (the target) or a
    /// rollback (the source), at a transaction boundary: the session state
    /// is read from the backend it leaves ([`state::Snapshot`]) and given
    /// to the one it moves to, with every named statement prepared again;
    /// then the other side's session ends. When the old backend cannot be
    /// read, the `SET`s the session sent are replayed instead.
    async fn switch_to(&mut self, side: Side) -> Result<(), BackendError> {
        if self.conn(side).is_none() {
            let cfg = match side {
                Side::Source => &self.proxy.settings.source,
                Side::Target => &self.proxy.settings.target,
            };
            let b = Backend::connect(cfg, &self.params).await?;
            match side {
                Side::Source => self.source = Some(Conn::new(b, 0)),
                Side::Target => self.target = Some(Conn::new(b, 0)),
            }
        }
        let other = match side {
            Side::Source => self.target.take(),
            Side::Target => self.source.take(),
        };
        let snapshot = match other {
            Some(mut c) => {
                let snapshot = self.read_state(&mut c).await;
                c.terminate().await;
                snapshot
            }
            None => None,
        };
        let conn = match side {
            Side::Source => self.source.as_mut(),
            Side::Target => self.target.as_mut(),
        };
        if let Some(conn) = conn {
            // Every named statement now: batches pipelined behind this one
            // are forwarded without a stop to prepare what they use.
            let names: Vec<&str> = self
                .statements
                .keys()
                .map(String::as_str)
                .filter(|n| !conn.prepared.contains(*n))
                .collect();
            let state = match &snapshot {
                Some(s) => s.statements(),
                None => replayed_sets(&self.state.committed, conn.sets_applied),
            };
            replay(conn, &state, &self.statements, &names).await?;
            conn.sets_applied = self.state.committed.len();
        }
        let on_side = &self.proxy.gate.on_side;
        on_side[self.primary as usize].fetch_sub(1, Ordering::SeqCst);
        on_side[side as usize].fetch_add(1, Ordering::SeqCst);
        self.primary = side;
        self.active = side;
        self.register_cancel();
        Ok(())
    }

    /// The session state of `conn` (at a transaction boundary), or `None`
    /// (logged) when it cannot be read. Notifications that arrive
    /// meanwhile go to the client.
    async fn read_state(&mut self, conn: &mut Conn) -> Option<state::Snapshot> {
        let side = conn.side;
        let functions = match self.proxy.cached_function_names(side) {
            Some(names) => names,
            None => {
                let frames = conn
                    .round_trip(&crate::backend::query(state::FUNCTION_NAMES_QUERY).raw, 1)
                    .await;
                let names: Vec<String> = match &frames {
                    Ok(frames) if !frames.iter().any(|f| f.tag == b'E') => frames
                        .iter()
                        .filter(|f| f.tag == b'D')
                        .filter_map(|f| frame::data_row(f)?.first().copied().flatten())
                        .map(str::to_owned)
                        .collect(),
                    _ => {
                        tracing::warn!(
                            side = side.as_str(),
                            "could not read setting names from function bodies; settings only functions define are not carried"
                        );
                        Vec::new()
                    }
                };
                self.pass_notifications(frames.as_deref().unwrap_or_default());
                self.proxy.cache_function_names(side, names)
            }
        };
        let mut names = self.state.custom_names.clone();
        for set in &self.state.committed {
            state::note_custom_names(&mut names, set);
        }
        let sql = state::snapshot_query(
            names
                .iter()
                .map(String::as_str)
                .chain(functions.iter().map(String::as_str)),
        );
        let frames = match conn.round_trip(&crate::backend::query(&sql).raw, 1).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(side = side.as_str(), error = %e, "could not read the session state; replaying the session's SETs instead");
                return None;
            }
        };
        self.pass_notifications(&frames);
        if let Some(e) = frames.iter().find(|f| f.tag == b'E') {
            tracing::warn!(
                side = side.as_str(),
                code = %frame::error_code(e),
                error = %frame::error_field(e, b'M').unwrap_or_default(),
                "could not read the session state; replaying the session's SETs instead"
            );
            return None;
        }
        let login = match side {
            Side::Source => &self.proxy.settings.source.user,
            Side::Target => &self.proxy.settings.target.user,
        };
        let rows: Vec<Vec<Option<&str>>> = frames
            .iter()
            .filter(|f| f.tag == b'D')
            .filter_map(frame::data_row)
            .collect();
        Some(state::Snapshot::from_rows(
            rows.iter().map(|r| {
                let col = |i: usize| r.get(i).copied().flatten().unwrap_or_default();
                [col(0), col(1), col(2)]
            }),
            login,
        ))
    }

    /// Pass the notifications among `frames` (answers the client does not
    /// see otherwise) on to the client.
    fn pass_notifications(&mut self, frames: &[Frame]) {
        for f in frames.iter().filter(|f| f.tag == b'A') {
            self.cout.put_slice(&f.raw);
        }
    }

    /// The mode changed: a session with nothing in flight outside a
    /// transaction moves now, so that none keeps a session on the side
    /// that is about to be fenced. A failure here is not the client's
    /// yet: its next statement tries again (and is refused if that fails).
    async fn switch_when_idle(&mut self) -> Result<(), SessionError> {
        let wanted = self.proxy.mode().primary();
        if wanted == self.primary || self.pending > 0 || self.status != b'I' || self.unsynced {
            return Ok(());
        }
        if let Err(e) = self.switch_to(wanted).await {
            tracing::debug!(error = %e, side = wanted.as_str(), "idle proxied session could not move yet");
        }
        Ok(())
    }

    /// Before `frames` go to `side`: replay the `SET`s it has not run and
    /// prepare the named statements they use that it has not seen.
    async fn prepare_for(&mut self, side: Side, frames: &[Frame]) -> Result<(), SessionError> {
        let conn = match side {
            Side::Source => self.source.as_mut(),
            Side::Target => self.target.as_mut(),
        };
        let Some(conn) = conn else {
            return Ok(());
        };
        let mut names: Vec<&str> = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let stmt = match f.tag {
                b'B' => bind_names(f).map(|(_, stmt)| stmt),
                b'D' if f.body().first() == Some(&b'S') => {
                    frame::cstr(&f.body()[1..]).map(|(s, _)| s)
                }
                _ => None,
            };
            let Some(stmt) = stmt.filter(|s| !s.is_empty()) else {
                continue;
            };
            let parsed_before = frames[..i]
                .iter()
                .any(|p| p.tag == b'P' && frame::cstr(p.body()).is_some_and(|(n, _)| n == stmt));
            if !parsed_before
                && !conn.prepared.contains(stmt)
                && !names.contains(&stmt)
                && self.statements.contains_key(stmt)
            {
                names.push(stmt);
            }
        }
        if names.is_empty() && conn.sets_applied == self.state.committed.len() {
            // The usual case: nothing to replay or prepare.
            return Ok(());
        }
        let sets = replayed_sets(&self.state.committed, conn.sets_applied);
        replay(conn, &sets, &self.statements, &names).await?;
        conn.sets_applied = self.state.committed.len();
        Ok(())
    }

    /// Queue one client frame to the active backend, tracking statements
    /// and outstanding answers.
    fn forward(&mut self, f: Frame) {
        let active = self.active;
        match f.tag {
            b'P' => {
                self.unsynced = true;
                if let Some((name, _)) = frame::cstr(f.body())
                    && !name.is_empty()
                {
                    let name = name.to_owned();
                    for side in [Side::Source, Side::Target] {
                        if let Some(c) = self.conn(side) {
                            if side == active {
                                c.prepared.insert(name.clone());
                            } else {
                                c.prepared.remove(&name);
                            }
                        }
                    }
                    self.statements.insert(name, f.clone());
                }
            }
            b'C' if f.body().first() == Some(&b'S') => {
                self.unsynced = true;
                if let Some((name, _)) = frame::cstr(&f.body()[1..]) {
                    self.statements.remove(name);
                    let name = name.to_owned();
                    for side in [Side::Source, Side::Target] {
                        if let Some(c) = self.conn(side) {
                            c.prepared.remove(&name);
                        }
                    }
                }
            }
            b'S' | b'Q' | b'F' => {
                self.unsynced = false;
                self.pending += 1;
                let batch = std::mem::take(&mut self.batch);
                self.inflight.push_back(batch);
            }
            b'B' | b'E' | b'D' | b'C' => self.unsynced = true,
            _ => {}
        }
        if let Some(c) = self.conn(active) {
            c.out.put_slice(&f.raw);
        }
    }

    /// Handle complete frames from the active backend: looked at in place
    /// and moved to the client's buffer in one copy up to each
    /// ReadyForQuery (a frame is decoded only for mirroring or session
    /// state).
    fn backend_frames(&mut self) -> Result<(), SessionError> {
        let active = self.active;
        loop {
            let conn = match active {
                Side::Source => self.source.as_mut(),
                Side::Target => self.target.as_mut(),
            };
            let Some(conn) = conn else {
                return Ok(());
            };
            let mut front = self.inflight.front_mut();
            let (mut at, mut ready) = (0, None);
            while let Some((tag, len)) = frame::peek(&conn.rbuf[at..])? {
                let raw = &conn.rbuf[at..at + len];
                if let Some(batch) = front.as_deref_mut() {
                    batch.saw(tag, raw);
                }
                at += len;
                if tag == b'Z' {
                    ready = Some(raw.get(5).copied().unwrap_or(b'I'));
                    break;
                }
            }
            if at > 0 {
                self.cout.extend_from_slice(&conn.rbuf[..at]);
                conn.rbuf.advance(at);
            }
            let Some(status) = ready else {
                if let Some(need) = frame::declared(&conn.rbuf) {
                    conn.rbuf.reserve(need.saturating_sub(conn.rbuf.len()));
                }
                return Ok(());
            };
            self.ready(status);
        }
    }

    /// A ReadyForQuery with `status` came back.
    fn ready(&mut self, status: u8) {
        self.pending = self.pending.saturating_sub(1);
        let before = self.status;
        self.status = status;
        if let Some(done) = self.inflight.pop_front() {
            self.finish_batch(done, before);
        }
        if self.pending == 0 {
            if self.status == b'I' && !self.unsynced {
                self.set_busy(false);
            }
            if self.active != self.primary {
                self.active = self.primary;
                self.register_cancel();
            }
        }
    }

    /// A batch answered; `before` is the transaction status it started in.
    fn finish_batch(&mut self, batch: Batch, before: u8) {
        self.proxy
            .stats
            .counters
            .statements
            .fetch_add(1, Ordering::Relaxed);
        if batch.track.is_some() || self.state.tracking() {
            let track = batch.track.unwrap_or_default();
            self.state.finish(&track, batch.error, self.status);
            // What the batch committed ran on the backend it went to.
            let n = self.state.committed.len();
            let active = self.active;
            if let Some(c) = self.conn(active) {
                c.sets_applied = n;
            }
        }
        let Some((fp, normalized)) = batch.fingerprint else {
            return;
        };
        let took = batch.started.map_or(Duration::ZERO, |s| s.elapsed());
        self.proxy
            .stats
            .call(&fp, &normalized, batch.on_target, took);
        // Mirrored only when it ran outside any transaction block.
        let outside = before == b'I' && self.status == b'I';
        if let Some((frames, ordered, answer)) = batch.capture.filter(|_| outside).map(|c| *c) {
            let job = Job {
                fingerprint: fp.to_string(),
                normalized: normalized.to_string(),
                ordered,
                frames,
                source: answer,
                state: Arc::new(mirror::SessionState {
                    params: self.params.clone(),
                    sets: self.state.committed.clone(),
                }),
            };
            if self.proxy.mirror.try_send(job).is_err() {
                self.proxy
                    .stats
                    .counters
                    .mirror_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The SQL of a statement name as the session knows it (`""`: the
    /// last unnamed Parse).
    fn statement_sql(&self, name: &str) -> Option<&str> {
        let parse = match name {
            "" => self.unnamed.as_ref(),
            _ => self.statements.get(name),
        };
        parse.and_then(statement_text)
    }

    /// Note the statements of a batch that change the session state
    /// ([`state`]): a Query's statements, or the statement each Execute
    /// runs. Most batches stop at a cheap first-word test. With `pins`
    /// (a batch at a boundary, which reads-on-target may route), also
    /// note state that pins reads to the source, in the same pass over the
    /// statement texts.
    fn note_effects(&mut self, frames: &[Frame], pins: bool) {
        let tracking = self.state.tracking() || self.inflight.iter().any(|b| b.track.is_some());
        let mut any = false;
        for f in frames {
            let sql = match f.tag {
                b'Q' | b'P' => statement_bytes(f),
                b'B' => {
                    any = any
                        || bind_names(f)
                            .and_then(|(_, stmt)| self.statement_sql(stmt))
                            .is_some_and(|s| state::worth_a_look(s.as_bytes(), tracking));
                    continue;
                }
                _ => continue,
            };
            let Some(sql) = sql else { continue };
            if pins && !self.pinned && mentions_pinning_word(sql) {
                self.pinned = true;
            }
            if state::may_define_settings(sql)
                && let Ok(sql) = std::str::from_utf8(sql)
            {
                state::note_custom_names(&mut self.state.custom_names, sql);
            }
            any = any || state::worth_a_look(sql, tracking);
        }
        if any {
            let mut effects = Vec::new();
            let mut parsed: Vec<(&str, &str)> = Vec::new();
            let mut portals: Vec<(&str, Option<&str>)> = Vec::new();
            for f in frames {
                match f.tag {
                    b'Q' => {
                        let sql = statement_text(f).unwrap_or_default();
                        effects.extend(
                            crate::classify::split_statements(sql)
                                .into_iter()
                                .map(state::effect),
                        );
                    }
                    b'P' => {
                        if let Some((name, rest)) = frame::cstr(f.body())
                            && let Some((sql, _)) = frame::cstr(rest)
                        {
                            parsed.push((name, sql));
                        }
                    }
                    b'B' => {
                        if let Some((portal, stmt)) = bind_names(f) {
                            let sql = parsed
                                .iter()
                                .rev()
                                .find(|(n, _)| *n == stmt)
                                .map(|(_, sql)| *sql)
                                .or_else(|| self.statement_sql(stmt));
                            portals.push((portal, sql));
                        }
                    }
                    b'E' => {
                        let portal = frame::cstr(f.body()).map_or("", |(p, _)| p);
                        let sql = portals
                            .iter()
                            .rev()
                            .find(|(p, _)| *p == portal)
                            .and_then(|(_, sql)| *sql);
                        effects.push(sql.map_or(state::Effect::Other, state::effect));
                    }
                    _ => {}
                }
            }
            self.batch.track = Some(Track {
                effects,
                tags: Vec::new(),
            });
        }
        if let Some(p) = frames
            .iter()
            .rev()
            .find(|f| f.tag == b'P' && f.body().first() == Some(&0))
        {
            self.unnamed = Some(p.clone());
        }
    }

    /// The statement text and ordering of a read-only batch, if it is one.
    fn read_only(&self, frames: &[Frame]) -> Option<(Seen, bool)> {
        let mut first: Option<Seen> = None;
        let mut ordered = false;
        let mut here: HashMap<&str, &str> = HashMap::new();
        let mut executes = false;
        for f in frames {
            let sql = match f.tag {
                b'Q' => {
                    executes = true;
                    frame::cstr(f.body())?.0
                }
                b'P' => {
                    let (name, rest) = frame::cstr(f.body())?;
                    let (sql, _) = frame::cstr(rest)?;
                    here.insert(name, sql);
                    sql
                }
                b'B' => {
                    let (_, rest) = frame::cstr(f.body())?;
                    let (stmt, _) = frame::cstr(rest)?;
                    if here.contains_key(stmt) {
                        continue;
                    }
                    if stmt.is_empty() {
                        return None;
                    }
                    let parse = self.statements.get(stmt)?;
                    let (_, rest) = frame::cstr(parse.body())?;
                    frame::cstr(rest)?.0
                }
                b'E' => {
                    executes = true;
                    continue;
                }
                b'D' | b'S' | b'C' => continue,
                _ => return None,
            };
            let seen = self.classified(sql, f.tag != b'Q')?;
            ordered |= seen.ordered;
            if first.is_none() {
                first = Some(seen);
            }
        }
        if !executes {
            return None;
        }
        first.map(|s| (s, ordered))
    }

    /// [`classify::classify`] and the fingerprint of a read-only text:
    /// lexed once; remembered by text when `remember` (prepared statements
    /// repeat; a simple Query's text with its constants rarely does), and
    /// the fingerprint by normalized text (so a Query differing only in
    /// constants costs a lexing, not a hash).
    fn classified(&self, sql: &str, remember: bool) -> Option<Seen> {
        if !classify::may_read(sql) {
            return None;
        }
        if remember && let Some(s) = self.seen.borrow().get(sql) {
            return s.clone();
        }
        let toks = classify::tokens(sql);
        let value = match classify::classify_tokens(&toks) {
            Class::ReadOnly { ordered } => {
                let normalized = classify::normalize_tokens(&toks);
                let mut known = self.fingerprints.borrow_mut();
                let (normalized, fingerprint) = match known.get_key_value(normalized.as_str()) {
                    Some((n, f)) => (n.clone(), f.clone()),
                    None => {
                        let f: Arc<str> = classify::fingerprint(&normalized).into();
                        let n: Arc<str> = normalized.into();
                        if known.len() >= SEEN_TEXTS {
                            known.clear();
                        }
                        known.insert(n.clone(), f.clone());
                        (n, f)
                    }
                };
                Some(Seen {
                    ordered,
                    fingerprint,
                    normalized,
                })
            }
            Class::Other => None,
        };
        if remember {
            let mut seen = self.seen.borrow_mut();
            if seen.len() >= SEEN_TEXTS {
                seen.clear();
            }
            seen.insert(sql.to_owned(), value.clone());
        }
        value
    }

    /// The batch as the mirror runs it: named statements it uses closed and
    /// parsed first, so it needs nothing the mirror session lacks.
    fn mirror_frames(&self, frames: &[Frame]) -> Bytes {
        let mut out = BytesMut::new();
        let mut parsed = HashSet::new();
        for f in frames {
            match f.tag {
                b'P' => {
                    if let Some((name, _)) = frame::cstr(f.body())
                        && !name.is_empty()
                    {
                        out.put_slice(&close_statement(name).raw);
                        parsed.insert(name.to_owned());
                    }
                }
                b'B' => {
                    if let Some((_, rest)) = frame::cstr(f.body())
                        && let Some((stmt, _)) = frame::cstr(rest)
                        && !stmt.is_empty()
                        && !parsed.contains(stmt)
                        && let Some(p) = self.statements.get(stmt)
                    {
                        out.put_slice(&close_statement(stmt).raw);
                        out.put_slice(&p.raw);
                        parsed.insert(stmt.to_owned());
                    }
                }
                _ => {}
            }
        }
        for f in frames {
            out.put_slice(&f.raw);
        }
        out.freeze()
    }

    fn sampled(&mut self) -> bool {
        let rate = self.proxy.settings.sample_rate;
        if rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        // xorshift64: cheap, per session, good enough for sampling.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64 <= rate
    }
}

/// `fut`'s output if it is ready at its first poll. Polled with a waker
/// that does nothing: a socket that is not ready is waited for by the
/// session loop's poll, which polls again with its own waker.
fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// Resolves when the proxy's mode changes, with the receiver to wait on
/// for the next change (never, if the proxy is gone).
async fn mode_changed(mut rx: watch::Receiver<Mode>) -> watch::Receiver<Mode> {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    rx
}

/// The `SET`s of `committed` a backend that ran `applied` of them has
/// not run, labelled for logs by the setting they set.
fn replayed_sets(committed: &[String], applied: usize) -> Vec<(String, String)> {
    committed
        .get(applied..)
        .unwrap_or_default()
        .iter()
        .map(|sql| (state::set_name(sql), sql.clone()))
        .collect()
}

/// Run on `conn` the session-state statements `sets` (label, SQL; each its
/// own Query) and prepare the statements `names` (from `statements`), in
/// one round trip whose answers the client never sees. A statement the
/// backend refuses is logged by its label (never a value), not fatal: the
/// client's own statements then run without it, as on a server lacking
/// that setting.
async fn replay(
    conn: &mut Conn,
    sets: &[(String, String)],
    statements: &HashMap<String, Frame>,
    names: &[&str],
) -> Result<(), BackendError> {
    let mut batch = BytesMut::new();
    for (_, sql) in sets {
        batch.put_slice(&crate::backend::query(sql).raw);
    }
    for name in names {
        if let Some(parse) = statements.get(*name) {
            batch.put_slice(&close_statement(name).raw);
            batch.put_slice(&parse.raw);
        }
    }
    let answers = sets.len() + usize::from(!names.is_empty());
    if !names.is_empty() {
        batch.put_slice(&Frame::new(b'S', &[]).raw);
    }
    if answers == 0 {
        return Ok(());
    }
    let frames = conn.round_trip(&batch, answers).await?;
    // One answer per statement, each ending in its ReadyForQuery.
    let mut answer = 0;
    let mut prepared = true;
    for f in &frames {
        match f.tag {
            b'E' if answer < sets.len() => tracing::warn!(
                side = conn.side.as_str(),
                setting = %sets[answer].0,
                code = %frame::error_code(f),
                "the session state could not be given to the backend the session moved to"
            ),
            b'E' => prepared = false,
            b'Z' => answer += 1,
            _ => {}
        }
    }
    if prepared {
        conn.prepared.extend(names.iter().map(|n| (*n).to_owned()));
    } else {
        tracing::warn!(
            side = conn.side.as_str(),
            "preparing the session's statements again failed; they fail when used"
        );
    }
    Ok(())
}

/// The SQL text of a Query or Parse frame.
fn statement_text(f: &Frame) -> Option<&str> {
    std::str::from_utf8(statement_bytes(f)?).ok()
}

/// The SQL text of a Query or Parse frame as bytes, unchecked: for the
/// scans every statement gets, which look for ASCII words only.
fn statement_bytes(f: &Frame) -> Option<&[u8]> {
    let text = match f.tag {
        b'Q' => f.body(),
        b'P' => {
            let body = f.body();
            &body[memchr::memchr(0, body)? + 1..]
        }
        _ => return None,
    };
    Some(&text[..memchr::memchr(0, text)?])
}

/// The statement a Bind frame binds, and its portal.
fn bind_names(f: &Frame) -> Option<(&str, &str)> {
    let (portal, rest) = frame::cstr(f.body())?;
    let (stmt, _) = frame::cstr(rest)?;
    Some((portal, stmt))
}

/// Words whose mention (in any case, anywhere) pins a session's reads to
/// the source.
const PINNING_WORDS: [&[u8]; 5] = [b"temp", b"listen", b"declare", b"prepare", b"lock"];

/// Whether `sql` contains one of [`PINNING_WORDS`], in any case: one pass
/// that compares only where a word's first letter is, and there only the
/// words starting with that letter.
fn mentions_pinning_word(sql: &[u8]) -> bool {
    let b = sql;
    let at = |i: usize, w: &[u8]| {
        b[i..]
            .get(..w.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(w))
    };
    (0..b.len()).any(|i| {
        // `| 0x20` lowercases ASCII letters and maps no other byte to these.
        // (The arms follow the order of PINNING_WORDS.)
        match b[i] | 0x20 {
            b't' => at(i, PINNING_WORDS[0]),
            b'l' => at(i, PINNING_WORDS[1]) || at(i, PINNING_WORDS[4]),
            b'd' => at(i, PINNING_WORDS[2]),
            b'p' => at(i, PINNING_WORDS[3]),
            _ => false,
        }
    })
}

fn close_statement(name: &str) -> Frame {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(b'S');
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    Frame::new(b'C', &body)
}

/// A complete batch at the front of the client buffer.
#[derive(Debug, PartialEq, Eq)]
struct BatchEnd {
    frames: usize,
    /// Ends in Sync, Query or FunctionCall (an answer with ReadyForQuery
    /// follows), not Flush or Terminate.
    synced: bool,
}

fn scan_batch(buf: &[u8]) -> Result<Option<BatchEnd>, frame::FrameError> {
    let mut at = 0;
    let mut frames = 0;
    while buf.len() >= at + 5 {
        let tag = buf[at];
        let len = i32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]);
        if len < 4 || len as usize > frame::MAX_FRAME {
            return Err(frame::FrameError::BadLength {
                tag: tag as char,
                len: len.into(),
            });
        }
        let end = at + 1 + len as usize;
        if buf.len() < end {
            return Ok(None);
        }
        frames += 1;
        at = end;
        match tag {
            b'S' | b'Q' | b'F' => {
                return Ok(Some(BatchEnd {
                    frames,
                    synced: true,
                }));
            }
            b'H' | b'X' | b'd' | b'c' | b'f' => {
                return Ok(Some(BatchEnd {
                    frames,
                    synced: false,
                }));
            }
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_words_are_found_in_any_case_anywhere() {
        for sql in [
            "CREATE TEMP TABLE x (a int)",
            "listen c",
            "/* x */ DECLARE c CURSOR FOR SELECT 1",
            "PrEpArE p AS SELECT 1",
            "LOCK t",
            "SELECT * FROM templates",
            "lock",
        ] {
            assert!(mentions_pinning_word(sql.as_bytes()), "{sql}");
        }
        for sql in ["SELECT 1", "UPDATE t SET a = 1", "", "tem", "lis\u{e9}ten"] {
            assert!(!mentions_pinning_word(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn batches_end_at_sync_query_or_flush() {
        let mut b = BytesMut::new();
        for f in [
            Frame::new(b'P', b"\0SELECT 1\0\0\0"),
            Frame::new(b'B', b"\0\0\0\0\0\0\0\0"),
            Frame::new(b'E', b"\0\0\0\0\0"),
        ] {
            b.put_slice(&f.raw);
        }
        assert_eq!(scan_batch(&b), Ok(None));
        b.put_slice(&Frame::new(b'S', &[]).raw);
        b.put_slice(&Frame::new(b'Q', b"SELECT 2\0").raw);
        assert_eq!(
            scan_batch(&b),
            Ok(Some(BatchEnd {
                frames: 4,
                synced: true
            }))
        );
        let flush = Frame::new(b'H', &[]);
        assert_eq!(
            scan_batch(&flush.raw),
            Ok(Some(BatchEnd {
                frames: 1,
                synced: false
            }))
        );
        assert_eq!(scan_batch(&flush.raw[..3]), Ok(None));
        assert!(scan_batch(b"Q\0\0\0\x01").is_err());
    }
}
