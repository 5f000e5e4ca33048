//! A fault-injecting HTTP proxy in front of the S3 server, for tests of what a worker does when
//! its checkpoint store misbehaves the way real stores and networks do: a HEAD write that lands
//! and then answers 503 (the store's client retries it, and the retry meets its own write), a
//! HEAD write that lands and loses its answer (the connection drops), and a store that ignores
//! conditional-write headers. Everything else passes through unchanged. Network I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

/// What the proxy does to the requests it picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: every request passes through.
    None,
    /// A picked HEAD write is forwarded (it lands), then answered with 503.
    LandThen503,
    /// A picked HEAD write is forwarded (it lands), then its connection is dropped unanswered.
    LandThenDrop,
    /// A picked HEAD write is not forwarded: it is answered with 503, as by a store that is
    /// down for writes (reads still pass).
    Refuse503,
    /// Every request passes through without `If-Match` / `If-None-Match`, as on a store that
    /// does not implement conditional writes.
    IgnoreConditions,
}

/// A running proxy.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: the endpoint to give the worker.
    pub endpoint: String,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    fault: Mutex<(Fault, u64)>,
    head_writes: AtomicU64,
    injected: AtomicU64,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (the S3 server's URL) on a free loopback port, passing
    /// everything through until [`FaultProxy::set`] says otherwise.
    pub async fn start(upstream: &str) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
            fault: Mutex::new((Fault::None, 1)),
            head_writes: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, shared }
    }

    /// From now on, `fault` for every `every`-th HEAD write (every request for
    /// [`Fault::IgnoreConditions`]).
    pub fn set(&self, fault: Fault, every: u64) {
        *self.shared.fault.lock().expect("fault lock") = (fault, every.max(1));
    }

    /// How many requests a fault was applied to.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::Relaxed)
    }
}

/// Panic payload of a dropped connection, so that the test's log says what it was.
const DROPPED: &str = "fault proxy: dropping the connection of a HEAD write that landed (intended)";

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let head_write = parts.method == axum::http::Method::PUT
        && parts.uri.path().trim_end_matches('/').ends_with("/HEAD");
    let (fault, every) = *shared.fault.lock().expect("fault lock");
    let picked = match fault {
        Fault::None => false,
        Fault::IgnoreConditions => true,
        Fault::LandThen503 | Fault::LandThenDrop | Fault::Refuse503 => {
            head_write && (shared.head_writes.fetch_add(1, Ordering::Relaxed) + 1) % every == 0
        }
    };
    if picked && fault == Fault::Refuse503 {
        shared.injected.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>",
        )
            .into_response();
    }
    let mut upstream = shared
        .client
        .request(parts.method.clone(), format!("{}{path}", shared.upstream));
    for (name, value) in &parts.headers {
        let conditional = name == HeaderName::from_static("if-match")
            || name == HeaderName::from_static("if-none-match");
        // The body is sent whole, with a length of its own.
        let framing = name == axum::http::header::CONTENT_LENGTH
            || name == axum::http::header::TRANSFER_ENCODING;
        if framing || (picked && fault == Fault::IgnoreConditions && conditional) {
            continue;
        }
        upstream = upstream.header(name, value);
    }
    let answer = match upstream.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    if picked {
        shared.injected.fetch_add(1, Ordering::Relaxed);
        match fault {
            Fault::LandThen503 => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>",
                )
                    .into_response();
            }
            Fault::LandThenDrop => std::panic::panic_any(DROPPED),
            Fault::None | Fault::IgnoreConditions | Fault::Refuse503 => {}
        }
    }
    let status = answer.status();
    let mut headers = answer.headers().clone();
    headers.remove(axum::http::header::CONTENT_LENGTH);
    headers.remove(axum::http::header::TRANSFER_ENCODING);
    let bytes: Bytes = answer.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
