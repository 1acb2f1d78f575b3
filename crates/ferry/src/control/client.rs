//! The CLI's client of the control API: one HTTP/1.1 request per call on a
//! fresh connection, with timeouts (except for the cutover, which takes as
//! long as it takes) and errors that say what to do.

use std::time::Duration;

use ferry_core::Secret;
use ferry_monitor::{CutoverRecord, Status};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::CutoverRequest;

/// Connect and short-request timeouts of the client.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// `POST /validate`.
pub async fn post_validate(
    addr: &str,
    token: Option<&Secret>,
    req: &crate::validate::ValidateRequest,
) -> Result<crate::validate::background::ValidateAccepted, ControlClientError> {
    let body = serde_json::to_vec(req).map_err(|e| ControlClientError::Protocol {
        addr: addr.to_owned(),
        message: e.to_string(),
    })?;
    let body = call(
        addr,
        token,
        Method::POST,
        "/validate",
        Some(body),
        Some(CLIENT_TIMEOUT),
    )
    .await?;
    decode(addr, &body)
}

/// `POST /proxy/mode`.
pub async fn post_proxy_mode(
    addr: &str,
    token: Option<&Secret>,
    req: &super::ProxyModeRequest,
) -> Result<ferry_monitor::proxy::ModeChange, ControlClientError> {
    let body = serde_json::to_vec(req).map_err(|e| ControlClientError::Protocol {
        addr: addr.to_owned(),
        message: e.to_string(),
    })?;
    let body = call(
        addr,
        token,
        Method::POST,
        "/proxy/mode",
        Some(body),
        Some(CLIENT_TIMEOUT),
    )
    .await?;
    decode(addr, &body)
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

pub(super) async fn exchange(
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
