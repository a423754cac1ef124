//! The HTTP API of the gateway (and the status page of both processes).
//!
//! * `POST /query` (also `/api/query`), the body every qmesh component takes
//!   ([`qmesh_process::json::QueryRequest`]) with the service to route to:
//!   `{"service":"EQ" | ["EQ","FX"], "query":"select from trade", "timeout_ms":5000, "all_instances":false, "format":"records"}`:
//!   the query is sent to the service as a q string, exactly as a
//!   `userQuery` would. The answer is `{"type":98,"result":…}`, the shared
//!   JSON form of [`qmesh_process::json`] (`type` is q's type number of the
//!   result; tables as an array of records, or `"format":"columns"` /
//!   `?format=columns` for an object of column arrays), so a query answered
//!   through the gateway and straight by a qmesh service instance gives the
//!   same JSON. A service name longer than [`crate::proto::MAX_NAME_BYTES`]
//!   is refused with `limit`, as over IPC. Errors use the shared catalog:
//!   `{"error":"queue full","detail":"EQ"}` with the status of its kind
//!   (timeout 504, queue full 429, unknown service / no instance 404, service
//!   error 422, service disconnected 502, lb unavailable 503, bad request 400,
//!   limit 507, shutting down 503).
//! * `GET /api/services`: the gateway's and load balancer's view per service.
//! * `GET /healthz`, `GET /metrics`: from `qmesh-process`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use qmesh_codec::{K, RawObject};
use serde::Deserialize;

use qmesh_process::json::QueryRequest;

use crate::proto::{MAX_NAME_BYTES, UserQuery};
use crate::router::{Router, payload_json};
use crate::types::{ClientId, Failure, ServiceName};

#[derive(Debug, Default, Deserialize)]
struct Params {
    format: Option<String>,
}

pub(crate) fn routes(router: Arc<Router>, gateway: bool) -> axum::Router {
    let mut r = axum::Router::new().route("/api/services", get(status));
    if gateway {
        r = r.route("/query", post(query)).route("/api/query", post(query));
    }
    r.with_state(router)
}

async fn status(State(router): State<Arc<Router>>) -> Json<serde_json::Value> {
    Json(router.status())
}

fn error(f: Failure) -> Response {
    f.to_wire().into_response()
}

/// Reports the request abandoned if the handler is dropped before its
/// answer arrives (the HTTP client went away).
struct Abandon {
    router: Option<Arc<Router>>,
    id: ClientId,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(r) = self.router.take() {
            r.client_closed(self.id);
        }
    }
}

async fn query(
    State(router): State<Arc<Router>>,
    user: Option<axum::Extension<qmesh_process::AuthUser>>,
    Query(params): Query<Params>,
    body: Bytes,
) -> Response {
    let body = match QueryRequest::parse(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let form = match body.table_form(params.format.as_deref()) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let names = body.services();
    if names.is_empty() || names.iter().any(String::is_empty) {
        return error(Failure::BadRequest("no service named".into()));
    }
    // The bound the IPC side puts on a service name, with the same word.
    if names.iter().any(|s| s.len() > MAX_NAME_BYTES) {
        return error(Failure::Limit(format!("service name longer than {MAX_NAME_BYTES} bytes")));
    }
    let services: Vec<ServiceName> = names.into_iter().map(ServiceName::new).collect();
    // the user HTTP Basic authenticated (none without -u)
    let user = user.map(|axum::Extension(u)| u.0).unwrap_or_default();
    if let Err(f) = router.may_query(&user, &services) {
        return error(f);
    }
    let uq = UserQuery {
        services,
        all_instances: body.all_instances,
        query: RawObject::encode(&K::string(body.query)),
        timeout: body.timeout_ms.map(Duration::from_millis),
        callback: None,
    };
    let (id, rx) = router.submit_http(uq);
    let mut guard = Abandon { router: Some(router), id };
    let result = rx.await;
    guard.router = None;
    match result {
        Ok(Ok(payload)) => match payload_json(payload, form).await {
            Ok(v) => Json(v).into_response(),
            Err(f) => error(f),
        },
        Ok(Err(f)) => error(f),
        Err(_) => error(Failure::Internal("the request was dropped".into())),
    }
}
