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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::access::{HttpGuard, RemoteAddr};
use crate::{Identity, Metrics, Shutdown, WireError};

/// Default for the most HTTP connections open at once: as many as the IPC
/// side's ([`qmesh_ipc::server::DEFAULT_MAX_CONNECTIONS`], q's own 1,022
/// handles), so neither side can take every file descriptor of a process
/// with a 4,096 `ulimit -n`. A connection past the cap is closed at accept,
/// with a log line, as the IPC server does.
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = qmesh_ipc::server::DEFAULT_MAX_CONNECTIONS;

/// Pause after a failed `accept` (out of file descriptors…), so a
/// persistent failure does not spin.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether the process is ready to serve; `/healthz` answers 200 once it is.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
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
/// on `listener`, at most `max_connections` connections at once, until
/// `shutdown` triggers; connections in progress are then allowed to finish.
pub async fn serve(
    listener: TcpListener,
    api: Router,
    base: Base,
    max_connections: usize,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let guard = base.guard.clone();
    let mut app = api.merge(base_routes(base));
    if let Some(guard) = guard {
        // one rule for every door: the layer wraps the component's routes,
        // the base routes and the fallback alike
        app = app.layer(axum::middleware::from_fn_with_state(guard, crate::access::middleware));
    }
    let listener =
        Capped { inner: listener, slots: Arc::new(Semaphore::new(max_connections)), max_connections };
    axum::serve(listener, app.into_make_service_with_connect_info::<RemoteAddr>())
        .with_graceful_shutdown(async move { shutdown.triggered().await })
        .await
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
                    return (CappedStream { stream, _permit: permit }, remote);
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

/// An accepted HTTP connection; its slot is freed when it is dropped.
#[derive(Debug)]
pub struct CappedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
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
                let ready = health.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
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
        let server = tokio::spawn(serve(listener, api, base, 4, shutdown.clone()));

        assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 503"));
        health.set_ready(true);
        assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(http_get(addr, "/metrics").await.contains("# EOF"));
        let fail = http_get(addr, "/api/fail").await;
        assert!(fail.starts_with("HTTP/1.1 429"), "{fail}");
        assert!(fail.contains(r#"{"error":"queue full","detail":"FX"}"#), "{fail}");
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
        let server = tokio::spawn(serve(listener, Router::new(), base, 1, shutdown.clone()));
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
}
