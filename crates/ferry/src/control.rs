//! The control API of a running `ferry run`, and its client for the CLI.
//!
//! HTTP/1.1 on `control.listen` (loopback by default, `127.0.0.1:7433`):
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | the [`Status`] as JSON |
//! | `GET /metrics` | Prometheus text |
//! | `POST /cutover` | body: [`CutoverRequest`] JSON (empty = defaults); the [`CutoverRecord`] JSON, or `409 {"error": …}` |
//! | `POST /pause`, `POST /resume` | `{"paused": bool}` |
//!
//! When `control.token` is set every request needs `Authorization: Bearer
//! <token>` (compared in constant time), else `401`. The pipeline provides a
//! [`ControlHandler`]; [`serve`] runs until its shutdown future resolves,
//! then stops accepting and lets requests in flight finish (a cutover's
//! answer must reach the operator even though the pipeline stops right
//! after). Nothing served here carries a secret: status errors are redacted
//! by the status model, and the token is never echoed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Secret;
use ferry_monitor::{CutoverRecord, Status};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Largest request body accepted (a cutover request is a few bytes).
const MAX_BODY: usize = 64 * 1024;
/// How long in-flight requests may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(30);
/// Connect and short-request timeouts of the client.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `ferry cutover` / `POST /cutover`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CutoverRequest {
    /// Report what would happen; change nothing.
    pub dry_run: bool,
    /// Fence source writes (PG: read-only + terminate writers; MySQL: read_only).
    pub fence: bool,
    /// Refuse unless lag is under this many seconds.
    pub max_lag_seconds: Option<f64>,
    /// Give up (and unfence) if the drain takes longer than this.
    pub timeout_seconds: Option<f64>,
    /// Keep the slot/publication or triggers after cutover.
    pub keep_slot: bool,
    /// Skip the row-count validation.
    pub skip_counts: bool,
}

/// A boxed future, so the handler trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the pipeline exposes to the control API.
pub trait ControlHandler: Send + Sync + 'static {
    fn status(&self) -> Status;
    /// Prometheus text (`Metrics::render`).
    fn metrics(&self) -> String;
    /// Run (or dry-run) the cutover; `Err` says why it was refused or failed.
    fn cutover(&self, req: CutoverRequest) -> BoxFuture<'_, Result<CutoverRecord, String>>;
    fn pause(&self);
    fn resume(&self);
}

/// Serve the control API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn ControlHandler>,
    token: Option<Secret>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let token = Arc::new(token);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "control api accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                tracing::debug!(%peer, "control api connection");
                conns.spawn(connection(stream, Arc::clone(&handler), Arc::clone(&token), stop_rx.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("control api requests still running after shutdown; aborting them");
        conns.abort_all();
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    handler: Arc<dyn ControlHandler>,
    token: Arc<Option<Secret>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req| {
        let handler = Arc::clone(&handler);
        let token = Arc::clone(&token);
        async move {
            Ok::<_, std::convert::Infallible>(route(req, &*handler, token.as_ref().as_ref()).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { drop(stop.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "control api connection ended");
    }
}

type Reply = Response<Full<Bytes>>;

async fn route(req: Request<Incoming>, h: &dyn ControlHandler, token: Option<&Secret>) -> Reply {
    if let Some(expected) = token
        && !authorized(&req, expected)
    {
        let mut r = json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token; set control.token (FERRY_CONTROL_TOKEN)",
        );
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
        return r;
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), method) {
        ("/status", Method::GET) => json(StatusCode::OK, &h.status()),
        ("/metrics", Method::GET) => reply(
            StatusCode::OK,
            ferry_monitor::metrics::CONTENT_TYPE,
            h.metrics().into(),
        ),
        ("/cutover", Method::POST) => cutover(req, h).await,
        ("/pause", Method::POST) => {
            h.pause();
            json(StatusCode::OK, &serde_json::json!({ "paused": true }))
        }
        ("/resume", Method::POST) => {
            h.resume();
            json(StatusCode::OK, &serde_json::json!({ "paused": false }))
        }
        ("/status" | "/metrics" | "/cutover" | "/pause" | "/resume", m) => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{m} is not allowed on {path}"),
        ),
        _ => json_error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint {path}; try /status, /metrics, /cutover, /pause, /resume"),
        ),
    }
}

async fn cutover(req: Request<Incoming>, h: &dyn ControlHandler) -> Reply {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body: {e}"),
            );
        }
    };
    let opts = if body.iter().all(u8::is_ascii_whitespace) {
        CutoverRequest::default()
    } else {
        match serde_json::from_slice::<CutoverRequest>(&body) {
            Ok(o) => o,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("cutover options: {e}")),
        }
    };
    tracing::info!(
        dry_run = opts.dry_run,
        fence = opts.fence,
        "cutover requested"
    );
    match h.cutover(opts).await {
        Ok(record) => json(StatusCode::OK, &record),
        Err(e) => json_error(StatusCode::CONFLICT, &e),
    }
}

fn authorized(req: &Request<Incoming>, expected: &Secret) -> bool {
    let Some(given) = req.headers().get(AUTHORIZATION) else {
        return false;
    };
    let given = given.as_bytes();
    let Some(given) = given
        .strip_prefix(b"Bearer ")
        .or_else(|| given.strip_prefix(b"bearer "))
    else {
        return false;
    };
    constant_time_eq(given, expected.expose().as_bytes())
}

/// Equality whose time depends only on the lengths, not on where bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().expect("static header"));
    r
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => reply(status, "application/json", body.into()),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding the answer: {e}"),
        ),
    }
}

fn json_error(status: StatusCode, message: &str) -> Reply {
    let body = serde_json::json!({ "error": message }).to_string();
    reply(status, "application/json", body.into())
}

/// Why a control request from the CLI failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    #[error("no ferry run answers on {addr} (control.listen): {source}")]
    NotRunning {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "ferry run on {addr} refused the request: wrong or missing token; set control.token or FERRY_CONTROL_TOKEN"
    )]
    Unauthorized { addr: String },
    #[error("ferry run on {addr} answered {status}: {message}")]
    Refused {
        addr: String,
        status: u16,
        message: String,
    },
    #[error("control request to {addr} failed: {message}")]
    Protocol { addr: String, message: String },
    #[error("control request to {addr} timed out")]
    Timeout { addr: String },
}

/// `GET /status`.
pub async fn get_status(addr: &str, token: Option<&Secret>) -> Result<Status, ControlClientError> {
    let body = call(
        addr,
        token,
        Method::GET,
        "/status",
        None,
        Some(CLIENT_TIMEOUT),
    )
    .await?;
    decode(addr, &body)
}

/// `GET /metrics`.
#[cfg(test)]
pub async fn get_metrics(addr: &str, token: Option<&Secret>) -> Result<String, ControlClientError> {
    let body = call(
        addr,
        token,
        Method::GET,
        "/metrics",
        None,
        Some(CLIENT_TIMEOUT),
    )
    .await?;
    String::from_utf8(body.to_vec()).map_err(|e| protocol(addr, e))
}

/// `POST /cutover`; waits as long as the cutover takes.
pub async fn post_cutover(
    addr: &str,
    token: Option<&Secret>,
    req: &CutoverRequest,
) -> Result<CutoverRecord, ControlClientError> {
    let body = serde_json::to_vec(req).map_err(|e| protocol(addr, e))?;
    let answer = call(addr, token, Method::POST, "/cutover", Some(body), None).await?;
    decode(addr, &answer)
}

/// `POST /pause`.
pub async fn post_pause(addr: &str, token: Option<&Secret>) -> Result<(), ControlClientError> {
    call(
        addr,
        token,
        Method::POST,
        "/pause",
        None,
        Some(CLIENT_TIMEOUT),
    )
    .await
    .map(drop)
}

/// `POST /resume`.
pub async fn post_resume(addr: &str, token: Option<&Secret>) -> Result<(), ControlClientError> {
    call(
        addr,
        token,
        Method::POST,
        "/resume",
        None,
        Some(CLIENT_TIMEOUT),
    )
    .await
    .map(drop)
}

fn protocol(addr: &str, e: impl std::fmt::Display) -> ControlClientError {
    ControlClientError::Protocol {
        addr: addr.to_owned(),
        message: e.to_string(),
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    addr: &str,
    body: &[u8],
) -> Result<T, ControlClientError> {
    serde_json::from_slice(body).map_err(|e| protocol(addr, format!("unexpected answer: {e}")))
}

/// One request on a fresh connection; `Ok` only for 2xx answers.
async fn call(
    addr: &str,
    token: Option<&Secret>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
) -> Result<Bytes, ControlClientError> {
    let exchange = exchange(addr, token, method, path, body);
    let (status, bytes) =
        match timeout {
            Some(t) => tokio::time::timeout(t, exchange).await.map_err(|_| {
                ControlClientError::Timeout {
                    addr: addr.to_owned(),
                }
            })??,
            None => exchange.await?,
        };
    if status.is_success() {
        return Ok(bytes);
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(ControlClientError::Unauthorized {
            addr: addr.to_owned(),
        });
    }
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(500).collect());
    Err(ControlClientError::Refused {
        addr: addr.to_owned(),
        status: status.as_u16(),
        message,
    })
}

async fn exchange(
    addr: &str,
    token: Option<&Secret>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), ControlClientError> {
    let stream = tokio::time::timeout(CLIENT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ControlClientError::Timeout {
            addr: addr.to_owned(),
        })?
        .map_err(|source| ControlClientError::NotRunning {
            addr: addr.to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(addr, e))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr);
    if let Some(t) = token {
        builder = builder.header(AUTHORIZATION, format!("Bearer {}", t.expose()));
    }
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| protocol(addr, e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| protocol(addr, e))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(addr, e))?
        .to_bytes();
    driver.abort();
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::SystemTime;

    use ferry_monitor::{Phase, TableStatus};

    use super::*;

    #[derive(Debug)]
    struct Fake {
        status: Status,
        paused: AtomicBool,
        requests: Mutex<Vec<CutoverRequest>>,
        entered: tokio::sync::Notify,
        release: tokio::sync::Notify,
        hold: bool,
    }

    fn record(req: &CutoverRequest) -> CutoverRecord {
        CutoverRecord {
            dry_run: req.dry_run,
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            finished_at: None,
            fenced: req.fence,
            write_freeze_seconds: Some(1.25),
            final_position: Some("0/16B3748".into()),
            lag_seconds_at_start: 0.5,
            sequences_synced: 3,
            validation: Vec::new(),
            slot_dropped: !req.keep_slot,
            restored: Vec::new(),
            steps: vec!["check lag".into()],
            outcome: "dry run".into(),
        }
    }

    impl ControlHandler for Fake {
        fn status(&self) -> Status {
            let mut s = self.status.clone();
            s.paused = self.paused.load(Ordering::SeqCst);
            s
        }
        fn metrics(&self) -> String {
            let m = ferry_monitor::Metrics::new();
            m.set_lag(2.5, 77);
            m.render()
        }
        fn cutover(&self, req: CutoverRequest) -> BoxFuture<'_, Result<CutoverRecord, String>> {
            Box::pin(async move {
                self.requests.lock().expect("lock").push(req.clone());
                if self.hold {
                    self.entered.notify_one();
                    self.release.notified().await;
                }
                match req.max_lag_seconds {
                    Some(m) if m < 1.0 => Err(format!("lag 1.5s is above --max-lag {m}s")),
                    _ => Ok(record(&req)),
                }
            })
        }
        fn pause(&self) {
            self.paused.store(true, Ordering::SeqCst);
        }
        fn resume(&self) {
            self.paused.store(false, Ordering::SeqCst);
        }
    }

    struct Running {
        addr: String,
        fake: Arc<Fake>,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start(token: Option<&str>, hold: bool) -> Running {
        let mut status = Status::new(
            Phase::Stream,
            "postgres",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        status.tables.push(TableStatus {
            name: "public.orders".into(),
            state: "streaming".into(),
            rows_copied: 10,
            ..TableStatus::default()
        });
        let fake = Arc::new(Fake {
            status,
            paused: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
            hold,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler: Arc<dyn ControlHandler> = Arc::clone(&fake) as _;
        let server = tokio::spawn(serve(listener, handler, token.map(Secret::new), async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            fake,
            stop,
            server,
        }
    }

    async fn raw(
        addr: &str,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, String) {
        let token = token.map(Secret::new);
        let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
        let (status, bytes) = exchange(addr, token.as_ref(), method, path, body)
            .await
            .expect("exchange");
        (status, String::from_utf8(bytes.to_vec()).expect("utf8"))
    }

    async fn stop(r: Running) {
        r.stop.send(()).expect("server alive");
        tokio::time::timeout(Duration::from_secs(10), r.server)
            .await
            .expect("server stops")
            .expect("join")
            .expect("serve");
    }

    #[tokio::test]
    async fn token_is_required_when_configured() {
        let r = start(Some("s3cret-tok"), false).await;
        let wrong = Secret::new("s3cret-tol");
        for t in [None, Some(&wrong)] {
            let e = get_status(&r.addr, t).await.expect_err("must be refused");
            assert!(matches!(e, ControlClientError::Unauthorized { .. }), "{e}");
        }
        let (code, body) = raw(&r.addr, None, Method::GET, "/metrics", "").await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(!body.contains("s3cret"), "{body}");
        let (code, _) = raw(&r.addr, Some("s3cret-tok"), Method::POST, "/pause", "").await;
        assert_eq!(code, StatusCode::OK);
        let ok = get_status(&r.addr, Some(&Secret::new("s3cret-tok")))
            .await
            .expect("authorized");
        assert!(ok.paused);
        stop(r).await;
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(
            !constant_time_eq(b"abc", b"abcd")
                && !constant_time_eq(b"", b"a")
                && !constant_time_eq(b"abd", b"abc")
        );
    }

    #[tokio::test]
    async fn status_json_round_trips() {
        let r = start(None, false).await;
        let s = get_status(&r.addr, None).await.expect("status");
        assert_eq!(s, r.fake.status);
        let (code, body) = raw(&r.addr, None, Method::GET, "/status?x=1", "").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("\"public.orders\""), "{body}");
        stop(r).await;
    }

    #[tokio::test]
    async fn metrics_are_served() {
        let r = start(None, false).await;
        let text = get_metrics(&r.addr, None).await.expect("metrics");
        assert!(
            text.contains("# TYPE ferry_lag_seconds gauge\nferry_lag_seconds 2.5\n"),
            "{text}"
        );
        assert!(text.contains("ferry_lag_bytes 77\n"), "{text}");
        stop(r).await;
    }

    #[tokio::test]
    async fn cutover_reaches_the_handler_with_its_options() {
        let r = start(None, false).await;
        let req = CutoverRequest {
            dry_run: true,
            fence: true,
            max_lag_seconds: Some(5.0),
            timeout_seconds: Some(60.0),
            keep_slot: true,
            skip_counts: true,
        };
        let rec = post_cutover(&r.addr, None, &req).await.expect("cutover");
        assert_eq!(rec, record(&req));
        // An empty body means the defaults; a refusal is a 409 with the reason.
        let (code, _) = raw(&r.addr, None, Method::POST, "/cutover", "").await;
        assert_eq!(code, StatusCode::OK);
        let refused = CutoverRequest {
            max_lag_seconds: Some(0.5),
            ..CutoverRequest::default()
        };
        match post_cutover(&r.addr, None, &refused).await {
            Err(ControlClientError::Refused {
                status: 409,
                message,
                ..
            }) => assert!(message.contains("above --max-lag 0.5s"), "{message}"),
            other => panic!("expected a 409 refusal, got {other:?}"),
        }
        let seen = r.fake.requests.lock().expect("lock").clone();
        assert_eq!(seen, vec![req, CutoverRequest::default(), refused]);
        // Malformed or unknown options never reach the handler.
        for bad in [
            "{bogus",
            r#"{"dry_run": true, "fencee": true}"#,
            r#"{"max_lag_seconds": "5s"}"#,
        ] {
            let (code, body) = raw(&r.addr, None, Method::POST, "/cutover", bad).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
        assert_eq!(r.fake.requests.lock().expect("lock").len(), 3);
        stop(r).await;
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_refused() {
        let r = start(None, false).await;
        let (code, body) = raw(&r.addr, None, Method::GET, "/nope", "").await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains("/nope"), "{body}");
        let (code, _) = raw(&r.addr, None, Method::GET, "/cutover", "").await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
        let (code, _) = raw(&r.addr, None, Method::DELETE, "/status", "").await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
        post_pause(&r.addr, None).await.expect("pause");
        assert!(get_status(&r.addr, None).await.expect("status").paused);
        post_resume(&r.addr, None).await.expect("resume");
        assert!(!get_status(&r.addr, None).await.expect("status").paused);
        stop(r).await;
    }

    #[tokio::test]
    async fn cutover_answer_survives_shutdown() {
        let r = start(None, true).await;
        let addr = r.addr.clone();
        let call =
            tokio::spawn(
                async move { post_cutover(&addr, None, &CutoverRequest::default()).await },
            );
        tokio::time::timeout(Duration::from_secs(10), r.fake.entered.notified())
            .await
            .expect("handler entered");
        // The pipeline stops right after the cutover: shutdown while in flight.
        r.stop.send(()).expect("server alive");
        r.fake.release.notify_one();
        let rec = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("answer")
            .expect("join")
            .expect("cutover");
        assert_eq!(rec.outcome, "dry run");
        tokio::time::timeout(Duration::from_secs(10), r.server)
            .await
            .expect("server stops")
            .expect("join")
            .expect("serve");
    }

    #[tokio::test]
    async fn no_server_means_not_running() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let e = get_status(&addr, None).await.expect_err("nothing listens");
        assert!(matches!(e, ControlClientError::NotRunning { .. }), "{e}");
    }
}
