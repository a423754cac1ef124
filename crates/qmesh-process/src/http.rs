//! The HTTP side of a process: the component's routes plus `/healthz` and
//! `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::{Metrics, Shutdown, WireError};

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

/// Serves `api` plus `GET /healthz` and `GET /metrics` on `listener` until
/// `shutdown` triggers; connections in progress are then allowed to finish.
pub async fn serve(
    listener: TcpListener,
    api: Router,
    health: Health,
    metrics: Metrics,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let app = api.merge(base_routes(health, metrics));
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.triggered().await }).await
}

fn base_routes(health: Health, metrics: Metrics) -> Router {
    Router::new()
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

    #[tokio::test]
    async fn healthz_follows_readiness_and_metrics_render() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Health::new();
        let metrics = Metrics::new();
        let shutdown = Shutdown::new();
        let api = Router::new()
            .route("/api/fail", get(|| async { WireError::with_detail(ErrorKind::QueueFull, "FX") }));
        let server = tokio::spawn(serve(listener, api, health.clone(), metrics, shutdown.clone()));

        assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 503"));
        health.set_ready(true);
        assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(http_get(addr, "/metrics").await.contains("# EOF"));
        let fail = http_get(addr, "/api/fail").await;
        assert!(fail.starts_with("HTTP/1.1 429"), "{fail}");
        assert!(fail.contains(r#"{"error":"queue full","detail":"FX"}"#), "{fail}");

        shutdown.trigger();
        server.await.unwrap().unwrap();
    }
}
