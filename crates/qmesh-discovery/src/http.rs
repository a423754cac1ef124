//! The registry's HTTP side: the JSON API, the WebSocket change feed,
//! Prometheus service discovery and the dashboard.
//!
//! | route | answers |
//! |---|---|
//! | `GET /` | the dashboard (HTML, CSS and JS built into the binary) |
//! | `GET /api/processes` | `{"epoch","seq","now","counts":{state:n},"processes":[…]}`, most severe first; filters `name`, `kind`, `state`, `host` (comma-separated lists; a parameter given twice adds to its list), `attr=key:value` |
//! | `GET /api/processes/NAME` | one process, or 404 `{"error":"unknown service","detail":NAME}` |
//! | `GET /sd` | Prometheus `http_sd`: `[{"targets":["host:http"],"labels":{…}}]` for every process with an HTTP port, whatever its state (so that `up == 0` fires for one in trouble; relabel on `__meta_qmesh_state` to keep only some) |
//! | `GET /ws` | the change feed (below) |
//!
//! A process is `{"name","kind","host","port","address","ip","pid","qVersion","state","since","lastBeat","age",
//! "counter","lastHb","status","note","attrs","http","stale","handle","beats","firstSeen"}`; times are
//! milliseconds since the Unix epoch on the registry's clock, `age` is milliseconds, `lastHb` the client's
//! own clock as `HH:MM:SS.mmm`.
//!
//! # The WebSocket feed
//!
//! The browser sends JSON commands, one per message, from this set (unknown
//! fields or commands get `{"type":"error","error":"bad request",…}`;
//! nothing is ever evaluated):
//!
//! * `{"op":"subscribe"}` — every process; `"names":[…]` and/or
//!   `"kinds":[…]` narrow it; `"after":SEQ,"epoch":E` resumes after the
//!   last change seen.
//! * `{"op":"unsubscribe"}`
//! * `{"op":"ping"}` → `{"type":"pong","now":…}`
//!
//! A browser may open the feed only from the dashboard's own origin
//! ([`qmesh_process::ws::check_origin`]); another origin gets 403 `access`.
//!
//! The server sends `{"type":"hello","epoch","seq","now","commands"}` on
//! connect; on subscribe either `{"type":"snapshot","seq","epoch","fresh":true,"reason","now","processes"}`
//! (`reason`: `new`, `too old` — the number is older than the changes kept
//! —, `unknown` or `restart` — a number of another run) or
//! `{"type":"resume","after","seq","epoch","now"}` followed by the missed changes; then every
//! change with the next number: `{"type":"upsert","seq","process"}`,
//! `{"type":"beat","seq","name","counter","lastBeat","lastHb"}`,
//! `{"type":"removed","seq","name"}`. A subscriber that falls
//! [`crate::limits::WS_QUEUE`] changes behind gets `{"type":"dropped","reason":"slow consumer","seq":LAST}`
//! and the socket closes; it may resume after `LAST`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use qmesh_process::ws::{Received, SendError, WS_SEND_TIMEOUT, error_json, parse_command, send_json};
use qmesh_process::{Delivery, ErrorKind, Start, Subscription, WireError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::limits::MAX_SUBSCRIBE_NAMES;
use crate::registry::{Change, Filter, Millis, Process, State};
use crate::server::Shared;

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const APP_CSS: &str = include_str!("../static/app.css");

/// The dashboard may load only its own files and speak only to its own
/// origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

type Shr = Arc<Shared>;

/// The routes; `/healthz` and `/metrics` come from the process shell.
pub(crate) fn router(shared: Shr) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/app.css", get(|| async { page(APP_CSS, "text/css; charset=utf-8") }))
        .route("/api/processes", get(processes))
        .route("/api/processes/{name}", get(process))
        .route("/sd", get(sd))
        .route("/ws", get(ws))
        .with_state(shared)
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn time_of_day(ms: i32) -> String {
    let ms = ms.rem_euclid(86_400_000);
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// One process as JSON.
pub fn process_json(p: &Process, now: Millis) -> Value {
    json!({
        "name": &*p.name,
        "kind": &*p.kind,
        "host": p.host,
        "port": p.port,
        "address": p.address,
        "ip": p.ip,
        "pid": p.pid,
        "qVersion": p.q_version,
        "state": p.state.word(),
        "since": p.since,
        "lastBeat": p.last_beat,
        "age": p.age(now),
        "counter": p.counter,
        "lastHb": p.client_time.map(time_of_day),
        "status": p.status.word(),
        "note": p.note,
        "attrs": p.attrs,
        "http": p.http,
        "stale": p.stale,
        "handle": p.conn,
        "beats": p.beats,
        "firstSeen": p.first_seen,
    })
}

/// One change as the feed sends it.
pub fn change_json(seq: u64, c: &Change, now: Millis) -> Value {
    match c {
        Change::Upsert(p) => {
            json!({"type": "upsert", "seq": seq, "now": now, "process": process_json(p, now)})
        }
        Change::Beat { name, counter, client_time, last_beat, .. } => json!({
            "type": "beat", "seq": seq, "name": &**name, "counter": counter, "lastBeat": last_beat,
            "lastHb": client_time.map(time_of_day),
        }),
        Change::Removed { name, .. } => json!({"type": "removed", "seq": seq, "name": &**name}),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The filter of `/api/processes`; a parameter given twice adds to the list
/// (`?name=a&name=b` is `?name=a,b`).
fn parse_filter(q: &[(String, String)]) -> Result<Filter, WireError> {
    let mut f = Filter::default();
    for (k, v) in q {
        match k.as_str() {
            "name" => f.names.extend(list(v)),
            "kind" => f.kinds.extend(list(v)),
            "host" => f.hosts.extend(list(v)),
            "state" => {
                let states: Vec<State> = list(v)
                    .iter()
                    .map(|s| {
                        State::from_word(s).ok_or_else(|| {
                            WireError::with_detail(ErrorKind::BadRequest, format!("no state {s}"))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                f.states.extend(states);
            }
            "attr" => {
                for a in list(v) {
                    let (k, v) = a
                        .split_once(':')
                        .ok_or_else(|| WireError::with_detail(ErrorKind::BadRequest, "attr is key:value"))?;
                    f.attrs.push((k.to_string(), v.to_string()));
                }
            }
            other => {
                return Err(WireError::with_detail(
                    ErrorKind::BadRequest,
                    format!("unknown parameter {other}; use name, kind, state, host, attr"),
                ));
            }
        }
    }
    Ok(f)
}

async fn processes(AxumState(s): AxumState<Shr>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let f = match parse_filter(&q) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let now = s.clock.now();
    let (rows, counts, seq) = s.read(|r| (r.lookup(&f), r.counts(), s.feed.head()));
    let counts: BTreeMap<&str, usize> = counts.into_iter().map(|(k, v)| (k.word(), v)).collect();
    axum::Json(json!({
        "epoch": s.epoch,
        "seq": seq,
        "now": now,
        "counts": counts,
        "processes": rows.iter().map(|p| process_json(p, now)).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn process(AxumState(s): AxumState<Shr>, Path(name): Path<String>) -> Response {
    let now = s.clock.now();
    match s.read(|r| r.get(&name).cloned()) {
        Some(p) => axum::Json(process_json(&p, now)).into_response(),
        None => WireError::with_detail(ErrorKind::UnknownService, name).into_response(),
    }
}

fn label_key(k: &str) -> String {
    k.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

async fn sd(AxumState(s): AxumState<Shr>) -> Response {
    // every process the registry holds, whatever its state: a target that
    // vanished when it went `warning` or `error` would never show `up == 0`,
    // and its alerts would never fire (`__meta_qmesh_state` is there to
    // relabel on)
    let rows = s.read(|r| r.lookup(&Filter::default()));
    let groups: Vec<Value> = rows
        .iter()
        .filter_map(|p| {
            let port = p.http?;
            let host = if p.host.is_empty() { &p.ip } else { &p.host };
            let mut labels = serde_json::Map::new();
            labels.insert("__meta_qmesh_process".into(), json!(&*p.name));
            labels.insert("__meta_qmesh_kind".into(), json!(&*p.kind));
            labels.insert("__meta_qmesh_state".into(), json!(p.state.word()));
            labels.insert("__meta_qmesh_status".into(), json!(p.status.word()));
            labels.insert("__meta_qmesh_host".into(), json!(host));
            if let Some(ipc) = p.port {
                labels.insert("__meta_qmesh_ipc_port".into(), json!(ipc.to_string()));
            }
            for (k, v) in &p.attrs {
                labels.insert(format!("__meta_qmesh_attr_{}", label_key(k)), json!(v));
            }
            Some(json!({"targets": [format!("{host}:{port}")], "labels": labels}))
        })
        .collect();
    ([(header::CONTENT_TYPE, "application/json")], Value::Array(groups).to_string()).into_response()
}

/// The commands a WebSocket client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Command {
    Subscribe {
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        kinds: Vec<String>,
        after: Option<u64>,
        epoch: Option<String>,
    },
    Unsubscribe {},
    Ping {},
}

async fn ws(
    AxumState(s): AxumState<Shr>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(e) = qmesh_process::ws::check_origin(&headers) {
        tracing::warn!(error = %e.to_q_text(), "refusing websocket: cross-origin");
        s.metrics.reject("ws");
        return e.into_response();
    }
    qmesh_process::ws::limited(upgrade).on_upgrade(move |socket| session(socket, s))
}

async fn next(sub: &mut Option<Subscription<Change>>) -> Option<Delivery<Change>> {
    match sub {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn session(mut socket: WebSocket, s: Shr) {
    s.metrics.ws_subscribers.inc();
    let hello = json!({
        "type": "hello", "epoch": s.epoch, "seq": s.feed.head(), "now": s.clock.now(),
        "commands": ["subscribe", "unsubscribe", "ping"],
    });
    let mut sub: Option<Subscription<Change>> = None;
    if send_json(&mut socket, &hello).await.is_ok() {
        loop {
            tokio::select! {
                msg = socket.recv() => {
                    let Some(Ok(msg)) = msg else { break };
                    let reply = match parse_command::<Command>(msg) {
                        Received::Command(Command::Ping {}) => vec![json!({"type": "pong", "now": s.clock.now()})],
                        Received::Command(Command::Unsubscribe {}) => {
                            sub = None;
                            vec![json!({"type": "unsubscribed"})]
                        }
                        Received::Command(Command::Subscribe { names, kinds, after, epoch }) => {
                            match subscribe(&s, names, kinds, after, epoch) {
                                Ok((messages, new)) => {
                                    sub = Some(new);
                                    messages
                                }
                                Err(e) => vec![error_json(&e)],
                            }
                        }
                        Received::Invalid(e) => {
                            s.metrics.reject("ws");
                            vec![error_json(&e)]
                        }
                        Received::Control => continue,
                        Received::Close => break,
                    };
                    let mut failed = false;
                    for m in &reply {
                        if send_json(&mut socket, m).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed {
                        break;
                    }
                }
                d = next(&mut sub) => match d {
                    Some(Delivery::Change(seq, c)) => {
                        match send_json(&mut socket, &change_json(seq, &c, s.clock.now())).await {
                            Ok(()) => {}
                            Err(e @ SendError::Slow(_)) => {
                                // not reading at all: the feed's queue bound is never reached
                                // while this task waits on the socket, so the bound is here
                                s.metrics.ws_dropped.inc();
                                tracing::warn!(seq, error = %e, "WebSocket subscriber dropped");
                                break;
                            }
                            Err(SendError::Closed(_)) => break,
                        }
                    }
                    Some(Delivery::Dropped { last }) => {
                        s.metrics.ws_dropped.inc();
                        let m = json!({"type": "dropped", "reason": "slow consumer", "seq": last, "epoch": s.epoch});
                        if send_json(&mut socket, &m).await.is_ok() {
                            let _ = tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Close(None))).await;
                        }
                        break;
                    }
                    None => sub = None,
                },
            }
        }
    }
    s.metrics.ws_subscribers.dec();
}

type Subscribed = (Vec<Value>, Subscription<Change>);

fn subscribe(
    s: &Shr,
    names: Vec<String>,
    kinds: Vec<String>,
    after: Option<u64>,
    epoch: Option<String>,
) -> Result<Subscribed, WireError> {
    if names.len() > MAX_SUBSCRIBE_NAMES || kinds.len() > MAX_SUBSCRIBE_NAMES {
        return Err(WireError::with_detail(
            ErrorKind::Limit,
            format!("at most {MAX_SUBSCRIBE_NAMES} names or kinds per subscription"),
        ));
    }
    let other_run = after.is_some() && epoch.as_deref() != Some(s.epoch.as_str());
    let after = if other_run { None } else { after };
    let names: HashSet<String> = names.into_iter().collect();
    let kinds: HashSet<String> = kinds.into_iter().collect();
    let filter = Filter {
        names: names.iter().cloned().collect(),
        kinds: kinds.iter().cloned().collect(),
        ..Filter::default()
    };
    let pred: Option<qmesh_process::feed::Filter<Change>> = if names.is_empty() && kinds.is_empty() {
        None
    } else {
        Some(Box::new(move |c: &Change| {
            (names.is_empty() || names.contains(c.name())) && (kinds.is_empty() || kinds.contains(c.kind()))
        }))
    };
    let now = s.clock.now();
    // Snapshot and subscription under the registry's lock: the snapshot is
    // exactly the state after change `seq`.
    let (start, sub, rows) = s
        .read(|r| {
            let (start, sub) = s.feed.subscribe(after, pred)?;
            let rows = matches!(start, Start::Snapshot { .. }).then(|| r.lookup(&filter));
            Ok::<_, qmesh_process::FeedError>((start, sub, rows))
        })
        .map_err(|e| WireError::with_detail(ErrorKind::Limit, e.to_string()))?;
    let messages = match start {
        Start::Snapshot { seq, reason } => {
            let reason = if other_run { "restart" } else { reason.word() };
            vec![json!({
                "type": "snapshot", "seq": seq, "epoch": s.epoch, "fresh": true, "reason": reason, "now": now,
                "processes": rows.unwrap_or_default().iter().map(|p| process_json(p, now)).collect::<Vec<_>>(),
            })]
        }
        Start::Replay(changes) => {
            let mut out = Vec::with_capacity(changes.len() + 1);
            out.push(
                json!({"type": "resume", "after": after, "seq": sub.last(), "epoch": s.epoch, "now": now}),
            );
            out.extend(changes.iter().map(|(seq, c)| change_json(*seq, c, now)));
            out
        }
    };
    Ok((messages, sub))
}
