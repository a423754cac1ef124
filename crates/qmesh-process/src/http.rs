//! The HTTP side of a process: the component's routes plus `/healthz`,
//! `/metrics` and `/api/identity`, with a bound on connections open at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use qmesh_ipc::tls::{Inbound, ServerTls, TlsError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::access::{HttpGuard, RemoteAddr};
use crate::{Identity, Metrics, Shutdown, WireError};

/// Default for the most HTTP connections open at once: as many as the IPC
/// side's ([`qmesh_ipc::server::DEFAULT_MAX_CONNECTIONS`], q's own 1,022
/// handles), so neither side can take every file descriptor of a process
/// with a 4,096 `ulimit -n`. A connection past the cap is closed at accept,
/// with a log line, as the IPC server does.
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = qmesh_ipc::server::DEFAULT_MAX_CONNECTIONS;

/// How long a client has to send a request's head (request line and
/// headers), in seconds, from the moment the server starts waiting for it —
/// on a new connection and between requests of a kept-alive one. A
/// connection that sends nothing, or dribbles its headers, is closed then
/// and its slot freed: without it a few hundred idle sockets hold every slot
/// of [`DEFAULT_MAX_HTTP_CONNECTIONS`] forever. Ten seconds is generous for
/// any real client on a network (nginx's `client_header_timeout` is 60 s,
/// hyper's default 30 s); a request in progress (its handler running, a
/// WebSocket) is not affected.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Pause after a failed `accept` (out of file descriptors…), so a
/// persistent failure does not spin.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether the process is ready to serve, and what (if anything) keeps it
/// from serving though it runs: `/healthz` answers 200 `ok` once it is ready
/// and has no fault, 503 `starting` before it is ready, and 503 with one
/// `fault <key>: <reason>` line per fault otherwise (conventions.md: "200
/// when ready"). Clones share the state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    /// Faults by key (e.g. `stream trades`), each with its reason.
    faults: Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Marks the process ready (or not, e.g. while shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the process is ready (faults aside).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records a fault under `key` (replacing that key's earlier reason):
    /// the process runs but part of it cannot serve, and `/healthz` says so
    /// with `reason` until [`Health::clear_fault`]. Returns whether the key
    /// is new (so a caller reports a fault once, not at every repeat).
    pub fn set_fault(&self, key: impl Into<String>, reason: impl Into<String>) -> bool {
        self.faults_lock().insert(key.into(), reason.into()).is_none()
    }

    /// Clears the fault under `key`, if any.
    pub fn clear_fault(&self, key: &str) {
        self.faults_lock().remove(key);
    }

    /// The faults, as `(key, reason)` in key order.
    pub fn faults(&self) -> Vec<(String, String)> {
        self.faults_lock().iter().map(|(k, r)| (k.clone(), r.clone())).collect()
    }

    fn faults_lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, String>> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The content type Prometheus expects for the text format served here.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What every process serves besides its own routes.
#[derive(Debug, Clone)]
pub struct Base {
    pub health: Health,
    pub metrics: Metrics,
    pub identity: Identity,
    /// With a users file: the check in front of every route
    /// ([`crate::access`]); `None` serves every route to anyone.
    pub guard: Option<Arc<HttpGuard>>,
}

/// Serves `api` plus `GET /healthz`, `GET /metrics` and `GET /api/identity`
/// on `listener`, at most `max_connections` connections at once, each given
/// [`HEADER_READ_TIMEOUT`] to send a request's head, until `shutdown`
/// triggers; connections in progress are then allowed to finish (HTTP/1.1
/// graceful close: the request in flight is answered, the connection then
/// closed). Handlers can read the peer's address with
/// `axum::extract::ConnectInfo<SocketAddr>`. With `tls`, the port takes TLS
/// in its mode (q's `-E`: TLS and plain by the first byte, or TLS only, a
/// plain client then closed with a log line; see [`qmesh_ipc::tls`]), the
/// handshake done in the connection's task within
/// [`qmesh_ipc::tls::TLS_HANDSHAKE_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    api: Router,
    base: Base,
    max_connections: usize,
    tls: Option<Arc<ServerTls>>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let guard = base.guard.clone();
    let mut app = api.merge(base_routes(base)).layer(axum::middleware::map_response(catalog_rejections));
    if let Some(guard) = guard {
        // one rule for every door: the layer wraps the component's routes,
        // the base routes and the fallback alike
        app = app.layer(axum::middleware::from_fn_with_state(guard, crate::access::middleware));
    }
    serve_app(listener, app, max_connections, HEADER_READ_TIMEOUT, tls, shutdown).await
}

/// Longest plain-text rejection body carried into [`catalog_rejections`]'s
/// `detail`, in bytes (axum's rejections are one line).
const MAX_REJECTION_DETAIL_BYTES: usize = 1024;

/// Puts the refusals axum itself writes — a body over the limit (413), JSON
/// that does not parse, a query string that does not, an unknown route
/// (`not found`) or method — into the catalog's JSON form `{"error","detail"}` (conventions:
/// one error form over HTTP), keeping their status. Responses that are
/// already JSON, and every non-4xx response, pass unchanged.
async fn catalog_rejections(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let kind = match status {
        StatusCode::NOT_FOUND => crate::ErrorKind::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => crate::ErrorKind::MessageTooLarge,
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => crate::ErrorKind::Access,
        _ => crate::ErrorKind::BadRequest,
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_DETAIL_BYTES).await.unwrap_or_default();
    let mut detail = String::from_utf8_lossy(&text).trim().to_string();
    if detail.is_empty() {
        detail = status.canonical_reason().unwrap_or("refused").to_ascii_lowercase();
    }
    // no detail that only repeats the word (`{"error":"not found","detail":null}`)
    let error =
        if detail == kind.word() { WireError::new(kind) } else { WireError::with_detail(kind, detail) };
    let mut out = (status, axum::Json(error.to_json())).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// The accept loop: one task per connection on hyper's HTTP/1 server (with
/// upgrades, for WebSockets) and a timer for the header-read timeout.
async fn serve_app(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    header_read_timeout: std::time::Duration,
    tls: Option<Arc<ServerTls>>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut listener =
        Capped { inner: listener, slots: Arc::new(Semaphore::new(max_connections)), max_connections };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = shutdown.triggered() => break,
        };
        // reap finished connection tasks so the set stays as small as the open connections
        while connections.try_join_next().is_some() {}
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(axum::extract::ConnectInfo(RemoteAddr(remote)))),
        );
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let stream = match tls {
                None => stream,
                Some(tls) => match stream.secure(&tls).await {
                    Ok(s) => s,
                    Err(TlsError::PlainRefused) => {
                        tracing::warn!(%remote, "refusing plain http connection: this port takes TLS only (--tls only)");
                        return;
                    }
                    Err(e) => {
                        tracing::info!(%remote, error = %e, "closing http connection: TLS handshake failed");
                        return;
                    }
                },
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = shutdown.triggered() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "http connection closed");
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A listener that holds one permit per open connection and closes, at
/// accept, a connection past the cap.
struct Capped {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max_connections: usize,
}

impl axum::serve::Listener for Capped {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        loop {
            let (stream, remote) = match self.inner.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    return (CappedStream { stream: Inbound::Plain(stream), _permit: permit }, remote);
                }
                Err(_) => tracing::warn!(
                    %remote,
                    limit = self.max_connections,
                    "refusing http connection: connection limit reached"
                ),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Capped>> for RemoteAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Capped>) -> RemoteAddr {
        RemoteAddr(*stream.remote_addr())
    }
}

/// An accepted HTTP connection, plain or (once the TLS handshake is done)
/// with TLS ended here; its slot is freed when it is dropped.
#[derive(Debug)]
pub struct CappedStream {
    stream: Inbound,
    _permit: OwnedSemaphorePermit,
}

impl CappedStream {
    /// The connection as `tls` takes it: TLS ended here, or plain where the
    /// mode allows. Errors: [`TlsError::PlainRefused`] on a TLS-only port,
    /// a failed or timed-out handshake.
    async fn secure(self, tls: &ServerTls) -> Result<CappedStream, TlsError> {
        let CappedStream { stream, _permit } = self;
        let stream = match stream {
            Inbound::Plain(tcp) => tls.accept(tcp).await?,
            already => already,
        };
        Ok(CappedStream { stream, _permit })
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn base_routes(base: Base) -> Router {
    let Base { health, metrics, identity, guard: _ } = base;
    let identity = Arc::new(identity);
    Router::new()
        .route("/api/identity", get(move || async move { axum::Json(identity.as_ref().clone()) }))
        .route(
            "/healthz",
            get(move || {
                let (ready, faults) = (health.is_ready(), health.faults());
                async move {
                    if !ready {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string())
                    } else if faults.is_empty() {
                        (StatusCode::OK, "ok\n".to_string())
                    } else {
                        let lines: String = faults.iter().map(|(k, r)| format!("fault {k}: {r}\n")).collect();
                        (StatusCode::SERVICE_UNAVAILABLE, lines)
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body) }
            }),
        )
}

impl IntoResponse for WireError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.to_json())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::ErrorKind;

    async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// As `http_get`, but a refused connection gives an empty answer.
    async fn try_get(addr: std::net::SocketAddr, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect(addr).await else { return String::new() };
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).await.is_err() {
            return String::new();
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn healthz_follows_readiness_and_metrics_render() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Health::new();
        let metrics = Metrics::new();
        let shutdown = Shutdown::new();
        let api = Router::new()
            .route("/api/fail", get(|| async { WireError::with_detail(ErrorKind::QueueFull, "FX") }));
        let identity = Identity::new("t1", "test").bound(None, Some(addr), None);
        let base = Base { health: health.clone(), metrics, identity, guard: None };
        let server = tokio::spawn(serve(listener, api, base, 4, None, shutdown.clone()));

        assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 503"));
        health.set_ready(true);
        assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(health.set_fault("stream trades", "position space exhausted"), "a new fault");
        assert!(!health.set_fault("stream trades", "position space exhausted"), "the same fault again");
        let answer = http_get(addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.ends_with("fault stream trades: position space exhausted\n"), "{answer}");
        health.clear_fault("stream trades");
        assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(http_get(addr, "/metrics").await.contains("# EOF"));
        let fail = http_get(addr, "/api/fail").await;
        assert!(fail.starts_with("HTTP/1.1 429"), "{fail}");
        assert!(fail.contains(r#"{"error":"queue full","detail":"FX"}"#), "{fail}");
        let missing = http_get(addr, "/no/such/route").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(missing.contains(r#"{"error":"not found","detail":null}"#), "catalog JSON: {missing}");
        let id = http_get(addr, "/api/identity").await;
        assert!(id.starts_with("HTTP/1.1 200"), "{id}");
        assert!(id.contains(r#""name":"t1","kind":"test""#), "{id}");
        assert!(id.contains(&format!(r#""http_port":{}"#, addr.port())), "{id}");

        shutdown.trigger();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_accept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let base = Base {
            health: Health::new(),
            metrics: Metrics::new(),
            identity: Identity::new("t", "test"),
            guard: None,
        };
        let server = tokio::spawn(serve(listener, Router::new(), base, 1, None, shutdown.clone()));
        // one connection holds the only slot (an unfinished request)
        let mut held = TcpStream::connect(addr).await.unwrap();
        held.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        // the next is closed without an answer
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = extra.read_to_end(&mut out).await;
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        // once the first goes, its slot serves the next
        drop(held);
        // (the server frees the slot when it reads the close: wait for it)
        let mut answered = String::new();
        for _ in 0..500 {
            answered = try_get(addr, "/healthz").await;
            if !answered.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(answered.starts_with("HTTP/1.1 503"), "{answered}");
        shutdown.trigger();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_closed_and_its_slot_freed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let base = Base {
            health: Health::new(),
            metrics: Metrics::new(),
            identity: Identity::new("t", "test"),
            guard: None,
        };
        let timeout = std::time::Duration::from_millis(200);
        let server = tokio::spawn(serve_app(listener, base_routes(base), 1, timeout, None, shutdown.clone()));
        // the only slot, taken by a client that stops halfway through its head
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut out = Vec::new();
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), slow.read_to_end(&mut out))
            .await
            .expect("the server closes a connection whose head never completes");
        assert!(n.is_err() || out.is_empty() || String::from_utf8_lossy(&out).contains("408"), "{out:?}");
        // the slot is free again
        let mut answered = String::new();
        for _ in 0..500 {
            answered = try_get(addr, "/healthz").await;
            if !answered.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(answered.starts_with("HTTP/1.1 503"), "{answered}");
        shutdown.trigger();
        server.await.unwrap().unwrap();
    }
}
