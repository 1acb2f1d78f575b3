//! The control API's HTTP/1.1 server (see [`crate::control`] for the
//! endpoints): bearer-token check, routing to the [`ControlHandler`], and a
//! graceful stop that lets requests in flight finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Secret;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{ControlHandler, CutoverRequest};

/// Largest request body accepted (a cutover request is a few bytes).
const MAX_BODY: usize = 64 * 1024;
/// How long in-flight requests may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(30);

/// Serve the control API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn ControlHandler>,
    token: Option<Secret>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let token = Arc::new(token);
    // Tells the open connections to finish their request and close.
    let stop = crate::shutdown::Shutdown::new();
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
                conns.spawn(connection(stream, Arc::clone(&handler), Arc::clone(&token), stop.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    stop.cancel();
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
    stop: crate::shutdown::Shutdown,
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
        () = stop.cancelled() => {
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
        ("/validate", Method::POST) => validate(req, h).await,
        ("/proxy/mode", Method::POST) => proxy_mode(req, h).await,
        (
            "/status" | "/metrics" | "/cutover" | "/pause" | "/resume" | "/validate"
            | "/proxy/mode",
            m,
        ) => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{m} is not allowed on {path}"),
        ),
        _ => json_error(
            StatusCode::NOT_FOUND,
            &format!(
                "no such endpoint {path}; try /status, /metrics, /cutover, /pause, /resume, /validate"
            ),
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

async fn proxy_mode(req: Request<Incoming>, h: &dyn ControlHandler) -> Reply {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body: {e}"),
            );
        }
    };
    let opts = match serde_json::from_slice::<super::ProxyModeRequest>(&body) {
        Ok(o) => o,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("proxy mode: {e}")),
    };
    match h.proxy_mode(opts).await {
        Ok(change) => json(StatusCode::OK, &change),
        Err(e) => json_error(StatusCode::CONFLICT, &e),
    }
}

async fn validate(req: Request<Incoming>, h: &dyn ControlHandler) -> Reply {
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
        crate::validate::ValidateRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(o) => o,
            Err(e) => {
                return json_error(StatusCode::BAD_REQUEST, &format!("validate options: {e}"));
            }
        }
    };
    match h.validate(opts).await {
        Ok(accepted) => json(StatusCode::OK, &accepted),
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

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(
            !constant_time_eq(b"abc", b"abcd")
                && !constant_time_eq(b"", b"a")
                && !constant_time_eq(b"abd", b"abc")
        );
    }
}
