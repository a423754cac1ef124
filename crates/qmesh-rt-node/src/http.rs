//! The HTTP API under `/api/`:
//!
//! * `GET /api/streams`: per stream its first and latest positions, segments
//!   and bytes on disk, publishers (by origin: messages, duplicates, last id,
//!   rate in messages/s), subscribers (connection, user, position, lag in
//!   bytes within the session, paused, filter), copies (connections shipping
//!   the log to a subscriber's local copy: connection, user, remote, the
//!   position shipped to, lag in bytes), dedup watermarks and shipping
//!   publishers (by key: `mark`, the last local position held, `null` after
//!   a rebase until the next record; `rebases` since the node started).
//! * `POST /api/streams/{stream}/reset`: a hard reset — the stream starts a
//!   new session, its dedup watermarks are forgotten, and subscribers get a
//!   `reset` event. Answers `{"stream":…,"from":p1,"to":p2}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use qmesh_process::WireError;
use serde_json::{Value, json};

use crate::handler::Node;

/// The routes, to merge with `/healthz` and `/metrics`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/streams", get(streams))
        .route("/api/streams/{stream}/reset", post(reset))
        .with_state(node)
}

/// Bytes from `pos` to `latest` when both are in one session (positions of different sessions have no distance).
fn lag_bytes(latest: u64, pos: u64) -> Option<u64> {
    let (l, p) = (qmesh_log::Position::from_u64(latest), qmesh_log::Position::from_u64(pos));
    (l.segment().session == p.segment().session).then(|| latest.saturating_sub(pos))
}

async fn streams(State(node): State<Arc<Node>>) -> Json<Value> {
    let subs = node.subscriptions();
    let copies = node.copy_list();
    let mut out = serde_json::Map::new();
    for (name, s) in &node.streams {
        let mut v = s.view();
        let latest = s.latest();
        let subscribers: Vec<Value> = subs
            .iter()
            .filter(|c| &c.stream == name)
            .map(|c| {
                let pos = c.position();
                json!({
                    "conn": c.conn.0,
                    "user": c.user,
                    "position": pos,
                    "lag_bytes": lag_bytes(latest, pos),
                    "delivered": c.delivered(),
                    "paused": c.is_paused(),
                    "filter": c.filter,
                })
            })
            .collect();
        // subscribers with a local copy (a Subscriber, a stream-fed service): how far their copy is shipped
        let copies: Vec<Value> = copies
            .iter()
            .filter(|c| &c.stream == name)
            .map(|c| {
                let pos = c.shipped();
                json!({
                    "conn": c.conn.0,
                    "user": c.user,
                    "remote": c.remote,
                    "shipped": pos,
                    "lag_bytes": lag_bytes(latest, pos),
                })
            })
            .collect();
        if let Some(o) = v.as_object_mut() {
            o.insert("subscribers".into(), Value::Array(subscribers));
            o.insert("copies".into(), Value::Array(copies));
        }
        out.insert(name.clone(), v);
    }
    Json(json!({ "default": node.default_stream, "streams": out }))
}

async fn reset(State(node): State<Arc<Node>>, Path(stream): Path<String>) -> Result<Json<Value>, WireError> {
    let s = node.stream(&stream)?.clone();
    let (from, to) = s.reset().await?;
    Ok(Json(json!({ "stream": stream, "from": from, "to": to })))
}

/// Largest HTTP answer [`request_reset`] reads, in bytes.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// Errors of [`request_reset`].
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("bad node address {addr:?}: {source}")]
    Address { addr: String, source: qmesh_ipc::AddressError },
    #[error("cannot reach {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("the node answered {status}: {body}")]
    Refused { status: String, body: String },
    #[error("not an HTTP answer: {0}")]
    BadAnswer(String),
}

/// `POST /api/streams/{stream}/reset` to the node whose HTTP API is at
/// `addr`: what `qmesh rt reset` does. Returns the JSON answer.
///
/// `addr` is written as q writes addresses, `[:]host:port[:user:password]`;
/// without a user in it, the process's credentials file
/// ([`qmesh_ipc::credentials::installed`], `--credentials`) is looked up
/// for `host:port`. A user is sent as HTTP Basic (`Authorization: Basic
/// base64(user:password)`), what a node started with `-u` requires.
pub async fn request_reset(addr: &str, stream: &str) -> Result<Value, ResetError> {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut target = qmesh_ipc::Address::parse(addr)
        .map_err(|source| ResetError::Address { addr: addr.to_string(), source })?;
    if let Some(c) = qmesh_ipc::credentials::installed() {
        target = c.apply(&target);
    }
    let qmesh_ipc::Endpoint::Tcp { host, port } = &target.endpoint else {
        let source = std::io::Error::other("the HTTP API is reached over TCP: give host:port");
        return Err(ResetError::Io { addr: addr.to_string(), source });
    };
    let shown = format!("{host}:{port}");
    let io = |source| ResetError::Io { addr: shown.clone(), source };
    let mut s = tokio::net::TcpStream::connect((host.as_str(), *port)).await.map_err(io)?;
    let auth = match &target.user {
        Some(_) => format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(target.credentials())
        ),
        None => String::new(),
    };
    let req = format!(
        "POST /api/streams/{stream}/reset HTTP/1.1\r\nHost: {shown}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    s.take(MAX_ANSWER_BYTES).read_to_end(&mut buf).await.map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| ResetError::BadAnswer(text.to_string()))?;
    let status = head.lines().next().unwrap_or("").to_string();
    if !status.contains(" 200 ") {
        return Err(ResetError::Refused { status, body: body.to_string() });
    }
    serde_json::from_str(body).map_err(|e| ResetError::BadAnswer(format!("{e}: {body}")))
}
