//! The control API end to end: the server on a loopback port, the CLI
//! client against it, a fake handler behind it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_core::Secret;
use ferry_monitor::{Phase, TableStatus};
use hyper::{Method, StatusCode};
use tokio::net::TcpListener;

use super::client::{exchange, get_metrics};
use super::*;

#[derive(Debug)]
struct Fake {
    status: Status,
    paused: AtomicBool,
    requests: Mutex<Vec<CutoverRequest>>,
    validations: Mutex<Vec<ValidateRequest>>,
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
    fn validate(&self, req: ValidateRequest) -> BoxFuture<'_, Result<ValidateAccepted, String>> {
        Box::pin(async move {
            let mut seen = self.validations.lock().expect("lock");
            if !seen.is_empty() {
                return Err("refused: a validation is already running".into());
            }
            seen.push(req.clone());
            Ok(ValidateAccepted {
                started: true,
                tables: req.tables,
                repair: req.repair,
            })
        })
    }
}

struct Running {
    addr: String,
    fake: Arc<Fake>,
    stop: crate::shutdown::Shutdown,
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
        validations: Mutex::new(Vec::new()),
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
        hold,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = crate::shutdown::Shutdown::new();
    let handler: Arc<dyn ControlHandler> = Arc::clone(&fake) as _;
    let server = tokio::spawn(serve(
        listener,
        handler,
        token.map(Secret::new),
        stop.clone().cancelled_owned(),
    ));
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
    r.stop.cancel();
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
        require_validated_seconds: Some(3600.0),
        with_fallback: true,
        rollback: false,
        finish_fallback: false,
        via_proxy: true,
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
        tokio::spawn(async move { post_cutover(&addr, None, &CutoverRequest::default()).await });
    tokio::time::timeout(Duration::from_secs(10), r.fake.entered.notified())
        .await
        .expect("handler entered");
    // The pipeline stops right after the cutover: shutdown while in flight.
    r.stop.cancel();
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

#[tokio::test]
async fn validate_reaches_the_handler_and_a_second_is_refused() {
    let r = start(None, false).await;
    let req = ValidateRequest {
        tables: vec!["public.orders".into()],
        repair: true,
    };
    let accepted = post_validate(&r.addr, None, &req).await.expect("validate");
    assert!(accepted.started && accepted.repair);
    assert_eq!(accepted.tables, vec!["public.orders".to_owned()]);
    assert_eq!(*r.fake.validations.lock().expect("lock"), vec![req.clone()]);
    let e = post_validate(&r.addr, None, &req)
        .await
        .expect_err("one validation at a time");
    assert!(
        matches!(&e, ControlClientError::Refused { status: 409, message, .. } if message.contains("already running")),
        "{e}"
    );
    let (code, body) = raw(&r.addr, None, Method::POST, "/validate", "{\"tables\": 3}").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, _) = raw(&r.addr, None, Method::GET, "/validate", "").await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    stop(r).await;
}
