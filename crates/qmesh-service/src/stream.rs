//! The service fed from a stream: messages with positions in, tables out.
//!
//! `qmesh service --rt HOST:PORT --stream NAME --data DIR` subscribes to a
//! stream of a `qmesh rt` node (through a local copy of its log) and applies every `` (`upd;`table;data) ``
//! (or `` (`.u.upd;…) ``) message to its tables through [`Ingest`], in the
//! stream's order. Beside the tables it keeps the position after the last
//! message applied, and writes both to `DIR` as one [`snapshot`] file —
//! every [`StreamConfig::snapshot_interval`] when something changed, and at
//! shutdown. A restarted instance loads the snapshot and resubscribes from
//! its position, so its tables are back whole, with no gap and no
//! duplicate, without replaying the stream from its start. Two instances
//! fed from one stream hold the same rows in the same order.
//!
//! # The seam
//!
//! Three parts, so the source can change without touching the rest:
//!
//! * [`Source`]: where deliveries come from — subscribe from a position,
//!   then [`Delivery`] values in stream order. [`CopySource`] is rt.qpk's
//!   log-shipping subscriber ([`qmesh_rt::subscriber::Subscriber`]): the
//!   node's merged log is copied to `DIR/rt/STREAM` and read from there.
//! * [`Applier`]: applies one delivery to the store and moves the
//!   position; captures a [`Snapshot`] between two deliveries. No I/O.
//! * [`run`]: the driver — resubscribes with backoff when the source
//!   ends (from the last applied position), writes snapshots off the async
//!   threads, keeps the metrics and the `/api/stream` status.
//!
//! The stream is the only writer of a stream-fed service's tables: IPC
//! `upd` is refused there (`'bad request: … fed from stream …`), and
//! `--load`/`--demo` cannot be combined with `--rt`, so a snapshot's
//! tables are exactly the messages before its position.
//!
//! # Positions, the copy and the snapshot
//!
//! The copy holds the node's records at the node's positions, so the
//! snapshot's position is a position of the stream, whichever copy reads
//! it. After SIGKILL a restarted instance loads its snapshot (position
//! `P`) and subscribes from `P`: the copy, fsynced before any of its
//! records is delivered, holds everything the killed instance applied, so
//! the messages after `P` are delivered from the local copy — while the
//! node is down too — and the copy then grows from where it ends.
//!
//! # One service per data directory; a stream the node hosts
//!
//! `DIR` is locked ([`DATA_LOCK_FILE`]) before the snapshot is loaded: a
//! second service started on it exits at once, naming the first's pid,
//! rather than serve a snapshot it cannot keep up. Before serving, the
//! node is asked whether it hosts the stream ([`qmesh_rt::probe`]): a
//! definite `'unknown stream` stops the service at start; a node that is
//! down does not (the snapshot and the copy serve), and it is asked again
//! in the background until it answers, `'unknown stream` then stopping the
//! service with that error.
//!
//! # The node going away
//!
//! Delivery does not stop: the copy serves what it holds and its copying
//! task reconnects to the node on its own; `connected` in `/api/stream`
//! and `qmesh_service_stream_connected` say whether the copy is being fed
//! (refreshed every second). If the subscription itself ends (the copy
//! cannot be read), the driver writes a snapshot if anything was applied
//! since the last and resubscribes from the position after the last
//! message it applied, waiting [`RETRY_INITIAL`] doubling up to
//! [`RETRY_MAX`] between attempts.
//!
//! # Garbage collection and the archiver
//!
//! The copy follows the node's archiver (rt.qpk's default): segments the
//! node archived are removed from the copy. Two rules keep that from
//! silently losing data at a restart:
//!
//! * when the copy's oldest position passes the last snapshot's position
//!   while the tables are past it, a snapshot is written at once (within a
//!   second) instead of at the next interval ([`Source::oldest`]);
//! * an instance restarted from a position the node and the copy no longer
//!   hold (it was down, or behind, while the node archived) gets a
//!   `skip-forward` event (p1 its position, p2 the first position held): it
//!   is logged as an error, counted, and shown in `/api/stream` — the
//!   tables have a gap there.
//!
//! With `REPLICATOR_EXCHANGE_ARCHIVED=0` or `REPLICATOR_TRUNCATE_ARCHIVED=0`
//! the copy is not truncated by the node; the service prunes it itself up
//! to each snapshot's position ([`Source::snapshot_written`]) — and with
//! `REPLICATOR_EXCHANGE_ARCHIVED=1` that prune is sent to the node too
//! (rt.qpk's lead subscriber).
//!
//! # What it shows
//!
//! `GET /api/stream` on the service's HTTP port:
//!
//! ```json
//! {"node":"127.0.0.1:5010","stream":"trades","connected":true,"position":17592186049016,
//!  "restored_position":17592186045000,"applied":1200,"rejected":0,"events":{},
//!  "snapshot":{"position":17592186049016,"age_seconds":0.4,"written_unix_ms":1795000000000,"bytes":81234}}
//! ```
//!
//! `restored_position` is the snapshot's position at start (`null`: none
//! was loaded); `applied` and `rejected` count this run's messages. The
//! metrics: `qmesh_service_stream_messages_total`, `…_rejected_total`,
//! `…_rows_total`, `…_events_total{event}`, `…_position`, `…_connected`,
//! `…_snapshots_total`, `…_snapshot_position` and
//! `…_snapshot_age_seconds` (-1 before the first snapshot).
//!
//! # Messages and events
//!
//! | delivery | what the service does |
//! |---|---|
//! | `` (`upd;`t;data) `` that fits `t` | appended; counted in `qmesh_service_stream_messages_total` |
//! | any other message, or `upd` data that does not fit (schema mismatch …) | skipped with a warning, counted in `qmesh_service_stream_rejected_total`; the position moves past it (every instance skips the same message, so they still agree) |
//! | `badtail` (p1 corrupt record, p2 next segment) | logged as an error (data lost in the log or the copy), counted; the tables keep what they have and the position moves to p2 |
//! | `badmsg` (p1 undecodable record, p2 next) | logged, counted; position p2 |
//! | `reset` (p1 end of the old session, p2 start of the new) | logged as a warning (the node was hard-reset: publishers may resend, so rows may repeat or be missing), counted; the tables are kept, the position moves to p2 |
//! | `skip-forward` (p1 archived position, p2 first unarchived) | logged as an error (the messages in between are gone: the tables have a gap), counted; position p2 |
//!
//! Events are counted in `qmesh_service_stream_events_total{event}` and
//! shown in `/api/stream`. None of them stops the service: the tables it
//! serves stay what the stream delivered, and the counters say when that
//! is not the whole stream.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use qmesh_ipc::client::Backoff;
use qmesh_process::Metrics;
use qmesh_rt::From;
use qmesh_rt::client::Delivery;
use qmesh_rt::event::Event;
use qmesh_rt::subscriber::{Msg, Subscriber, SubscriberConfig, SubscriberError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::protocol::{self, Request};
use crate::snapshot::{self, NO_POSITION, Snapshot, SnapshotError, TableSnapshot};
use crate::store::{Ingest, Store};

/// The lock file in a stream-fed service's data directory
/// ([`qmesh_process::dirlock`]): held while the service runs, so a second
/// service started on the same directory refuses at once, naming the
/// first's pid, instead of serving a snapshot it cannot keep up to date.
pub const DATA_LOCK_FILE: &str = "service.lock";

/// Default time between two snapshots (when something was applied).
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);

/// First wait before resubscribing after the node went away.
pub const RETRY_INITIAL: Duration = Duration::from_millis(100);

/// Longest wait between attempts to reach the node.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// How often the snapshot-age gauge is refreshed.
const AGE_TICK: Duration = Duration::from_secs(1);

/// Where a stream-fed service gets its data and keeps its snapshot.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The node (`host:port`, `:host:port:user:password`).
    pub node: String,
    /// The stream's name.
    pub stream: String,
    /// Directory of the snapshot; `None`: nothing kept, every start replays
    /// the stream from its start.
    pub data: Option<PathBuf>,
    /// Time between snapshots while messages arrive.
    pub snapshot_interval: Duration,
}

impl StreamConfig {
    /// `stream` on `node`, snapshots in `data` every
    /// [`DEFAULT_SNAPSHOT_INTERVAL`].
    pub fn new(node: impl Into<String>, stream: impl Into<String>, data: Option<PathBuf>) -> StreamConfig {
        StreamConfig {
            node: node.into(),
            stream: stream.into(),
            data,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
        }
    }

    /// The directory of the subscriber's local copy of the stream:
    /// `DATA/rt/STREAM` beside the snapshot, or, without `data`, a directory
    /// of this process under the system's temporary directory
    /// (`qmesh-service-PID/rt/STREAM`), emptied when the stream starts and
    /// removed when it stops.
    pub fn copy_dir(&self) -> PathBuf {
        match &self.data {
            Some(d) => d.join("rt").join(&self.stream),
            None => std::env::temp_dir()
                .join(format!("qmesh-service-{}", std::process::id()))
                .join("rt")
                .join(&self.stream),
        }
    }
}

/// Messages the delivery thread may have decoded ahead of the driver: it
/// blocks when this many wait, so a slow store holds back reading the local
/// copy (which keeps growing), never memory. Unit: deliveries.
pub const DELIVERY_QUEUE: usize = 1024;

/// Errors of a stream source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The log-shipping subscriber could not start (its local copy, its node address …).
    #[error("{0}")]
    Subscriber(#[from] SubscriberError),
    /// The subscriber's task failed.
    #[error("subscriber task: {0}")]
    Task(String),
    /// [`Source::next`] before [`Source::subscribe`].
    #[error("not subscribed")]
    NotSubscribed,
}

/// Where deliveries come from: the seam between a subscription and the
/// tables. Implementations deliver every message and event after the
/// subscription's start position exactly once, in stream order.
pub trait Source: Send + 'static {
    /// Subscribes from `from`, ending any earlier subscription; returns the
    /// position the subscription starts at (0 when not yet known).
    fn subscribe(&mut self, from: From) -> impl Future<Output = Result<i64, SourceError>> + Send;

    /// The next delivery; `Ok(None)` when the source closed (the driver
    /// resubscribes from its position).
    fn next(&mut self) -> impl Future<Output = Result<Option<Delivery>, SourceError>> + Send;

    /// Whether the source is fed by the node right now (`/api/stream`'s
    /// `connected`). A source that reads a local copy keeps delivering what
    /// the copy holds while this is `false`.
    fn node_connected(&self) -> bool;

    /// The oldest position the source can still deliver from without a
    /// `skip-forward` (`None`: unknown, or anything). The driver writes a
    /// snapshot as soon as this passes the last snapshot's position, so a
    /// restart does not land in what was archived.
    fn oldest(&self) -> Option<i64> {
        None
    }

    /// Told after a snapshot holding the stream up to `position` is on disk:
    /// nothing before it is needed again.
    fn snapshot_written(&mut self, position: i64) {
        let _ = position;
    }

    /// Ends the subscription for good (the driver stops).
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The log-shipping subscriber ([`qmesh_rt::subscriber::Subscriber`]): the
/// node's merged log is copied into `copy_dir` (byte for byte, at the
/// node's positions) and read from there, so the service restarts from its
/// position while the node is down. Messages are decoded on the
/// subscriber's delivery thread and handed over through a queue of
/// [`DELIVERY_QUEUE`].
///
/// The copy follows the node's archiver by default (rt.qpk's
/// `REPLICATOR_EXCHANGE_ARCHIVED`/`REPLICATOR_TRUNCATE_ARCHIVED`); when
/// either is set to 0 the copy is pruned here instead, up to each
/// snapshot's position ([`Source::snapshot_written`]) — with
/// `REPLICATOR_EXCHANGE_ARCHIVED=1` that makes the service a lead
/// subscriber, whose prune also truncates the node.
pub struct CopySource {
    config: SubscriberConfig,
    sub: Option<Subscriber>,
    rx: Option<mpsc::Receiver<Delivery>>,
}

impl std::fmt::Debug for CopySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopySource")
            .field("stream", &self.config.stream)
            .field("dir", &self.config.dir)
            .field("subscribed", &self.sub.is_some())
            .finish()
    }
}

impl CopySource {
    /// `stream` on `node`, its local copy in `copy_dir`; the garbage
    /// collection flags from the environment.
    pub fn new(node: impl Into<String>, stream: impl Into<String>, copy_dir: PathBuf) -> CopySource {
        let mut config = SubscriberConfig::new(stream);
        config.dir = copy_dir;
        config.cluster = vec![node.into()];
        CopySource { config, sub: None, rx: None }
    }

    /// The subscriber's configuration (its directory, its GC flags).
    pub fn config(&self) -> &SubscriberConfig {
        &self.config
    }

    /// Ends the running subscription, if any: its delivery thread is joined
    /// off the async threads.
    async fn end(&mut self) {
        // the receiver first: a delivery thread blocked on a full queue returns
        self.rx = None;
        if let Some(sub) = self.sub.take() {
            let _ = tokio::task::spawn_blocking(move || drop(sub)).await;
        }
    }
}

impl Source for CopySource {
    async fn subscribe(&mut self, from: From) -> Result<i64, SourceError> {
        self.end().await;
        let dir = self.config.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(&dir))
            .await
            .map_err(|e| SourceError::Task(e.to_string()))?
            .map_err(|e| SourceError::Subscriber(SubscriberError::Watch(e)))?;
        let (tx, rx) = mpsc::channel(DELIVERY_QUEUE);
        let (msgs, events) = (tx.clone(), tx);
        let stream = self.config.stream.clone();
        let (s1, s2) = (stream.clone(), stream);
        let on_msg = move |m: &Msg<'_>| {
            let d = match m.decode() {
                Ok(value) => Delivery::Message { stream: s1.clone(), value, pos: m.pos as i64 },
                // the copy checked its extent; a payload that still does not decode is a bad message
                Err(_) => Delivery::Event {
                    stream: s1.clone(),
                    event: Event::BadMsg.name().to_string(),
                    p1: m.at as i64,
                    p2: m.pos as i64,
                },
            };
            // an error: the source was ended and nobody reads any more
            let _ = msgs.blocking_send(d);
        };
        let on_event = move |e: Event, p1: u64, p2: u64| {
            let d = Delivery::Event {
                stream: s2.clone(),
                event: e.name().to_string(),
                p1: p1 as i64,
                p2: p2 as i64,
            };
            let _ = events.blocking_send(d);
        };
        let sub = Subscriber::start_with(self.config.clone(), from, on_msg, on_event).await?;
        let start = match from {
            From::Position(p) => p,
            _ => sub.position() as i64,
        };
        self.sub = Some(sub);
        self.rx = Some(rx);
        Ok(start)
    }

    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        let rx = self.rx.as_mut().ok_or(SourceError::NotSubscribed)?;
        match rx.recv().await {
            Some(d) => Ok(Some(d)),
            None => {
                // the delivery thread ended (reading the copy failed; logged there)
                self.end().await;
                Ok(None)
            }
        }
    }

    fn node_connected(&self) -> bool {
        self.sub.as_ref().is_some_and(Subscriber::copying)
    }

    fn oldest(&self) -> Option<i64> {
        let sub = self.sub.as_ref()?;
        let copy = sub.local_copy();
        // a copy holding nothing yet says nothing about what was archived
        (copy.latest_position() > copy.first_position()).then(|| copy.first_position().as_u64() as i64)
    }

    async fn close(&mut self) {
        self.end().await;
    }

    fn snapshot_written(&mut self, position: i64) {
        if let Some(sub) = &self.sub
            && !self.config.follows_archiver()
            && position > 0
        {
            sub.prune(position as u64);
        }
    }
}

/// What the stream-fed part of a service shows in `/api/stream` and its
/// metrics.
#[derive(Debug)]
pub struct StreamStatus {
    node: String,
    stream: String,
    inner: Mutex<StatusInner>,
    metrics: StreamMetrics,
}

#[derive(Debug, Clone, Default)]
struct StatusInner {
    position: i64,
    restored_position: Option<i64>,
    applied: u64,
    rejected: u64,
    events: BTreeMap<String, u64>,
    connected: bool,
    snapshot_position: Option<i64>,
    snapshot_at: Option<(Instant, SystemTime)>,
    snapshot_bytes: u64,
}

#[derive(Debug, Clone)]
struct StreamMetrics {
    messages: Counter,
    rejected: Counter,
    rows: Counter,
    events: Family<Vec<(String, String)>, Counter>,
    position: Gauge,
    connected: Gauge,
    snapshots: Counter,
    snapshot_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    snapshot_position: Gauge,
}

impl StreamMetrics {
    fn new() -> StreamMetrics {
        StreamMetrics {
            messages: Counter::default(),
            rejected: Counter::default(),
            rows: Counter::default(),
            events: Family::default(),
            position: Gauge::default(),
            connected: Gauge::default(),
            snapshots: Counter::default(),
            snapshot_age: Gauge::default(),
            snapshot_position: Gauge::default(),
        }
    }

    fn register(&self, m: &Metrics) {
        m.register(
            "qmesh_service_stream_messages",
            "Stream messages applied to the tables.",
            self.messages.clone(),
        );
        m.register(
            "qmesh_service_stream_rejected",
            "Stream messages skipped: not an upd, or data that does not fit its table.",
            self.rejected.clone(),
        );
        m.register("qmesh_service_stream_rows", "Rows appended from the stream.", self.rows.clone());
        m.register(
            "qmesh_service_stream_events",
            "Stream events received (badtail, badmsg, reset, skip-forward).",
            self.events.clone(),
        );
        m.register(
            "qmesh_service_stream_position",
            "Stream position after the last message applied.",
            self.position.clone(),
        );
        m.register(
            "qmesh_service_stream_connected",
            "1 while subscribed to the stream node.",
            self.connected.clone(),
        );
        m.register("qmesh_service_stream_snapshots", "Snapshots written.", self.snapshots.clone());
        m.register(
            "qmesh_service_stream_snapshot_age_seconds",
            "Time since the last snapshot was written (or loaded); -1 before the first.",
            self.snapshot_age.clone(),
        );
        m.register(
            "qmesh_service_stream_snapshot_position",
            "Stream position held by the last snapshot written (or loaded).",
            self.snapshot_position.clone(),
        );
    }
}

impl StreamStatus {
    /// A status for `stream` on `node`, starting at `position`
    /// (`restored`: whether it came from a snapshot).
    pub fn new(node: &str, stream: &str, position: i64, restored: bool) -> Arc<StreamStatus> {
        let metrics = StreamMetrics::new();
        metrics.position.set(position);
        metrics.snapshot_age.set(-1.0);
        let mut inner = StatusInner { position, ..StatusInner::default() };
        if restored {
            inner.restored_position = Some(position);
            inner.snapshot_position = Some(position);
            inner.snapshot_at = Some((Instant::now(), SystemTime::now()));
            metrics.snapshot_position.set(position);
            metrics.snapshot_age.set(0.0);
        }
        Arc::new(StreamStatus {
            node: node.to_string(),
            stream: stream.to_string(),
            inner: Mutex::new(inner),
            metrics,
        })
    }

    /// Registers the `qmesh_service_stream_*` metrics.
    pub fn register(&self, metrics: &Metrics) {
        self.metrics.register(metrics);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().expect("the stream status lock is poisoned: a panic while holding it")
    }

    /// The position after the last message applied.
    pub fn position(&self) -> i64 {
        self.lock().position
    }

    /// The status as `/api/stream` answers it.
    pub fn to_json(&self) -> serde_json::Value {
        let s = self.lock().clone();
        let age = s.snapshot_at.map(|(i, _)| i.elapsed().as_secs_f64());
        let at = s
            .snapshot_at
            .and_then(|(_, t)| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        serde_json::json!({
            "node": self.node,
            "stream": self.stream,
            "connected": s.connected,
            "position": s.position,
            "restored_position": s.restored_position,
            "applied": s.applied,
            "rejected": s.rejected,
            "events": s.events,
            "snapshot": {
                "position": s.snapshot_position,
                "age_seconds": age,
                "written_unix_ms": at,
                "bytes": s.snapshot_bytes,
            },
        })
    }

    fn set_connected(&self, up: bool) {
        self.lock().connected = up;
        self.metrics.connected.set(i64::from(up));
    }

    fn snapshot_position(&self) -> Option<i64> {
        self.lock().snapshot_position
    }

    fn refresh_age(&self) {
        if let Some((i, _)) = self.lock().snapshot_at {
            self.metrics.snapshot_age.set(i.elapsed().as_secs_f64());
        }
    }

    fn snapshot_written(&self, position: i64, bytes: u64) {
        let mut s = self.lock();
        s.snapshot_position = Some(position);
        s.snapshot_at = Some((Instant::now(), SystemTime::now()));
        s.snapshot_bytes = bytes;
        self.metrics.snapshots.inc();
        self.metrics.snapshot_position.set(position);
        self.metrics.snapshot_age.set(0.0);
    }
}

/// `GET /api/stream`: the subscription's state, position and snapshot.
pub fn router(status: Arc<StreamStatus>) -> Router {
    Router::new().route("/api/stream", get(api_stream)).with_state(status)
}

async fn api_stream(State(status): State<Arc<StreamStatus>>) -> Response {
    axum::Json(status.to_json()).into_response()
}

/// What applying one delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A message appended `rows` rows.
    Rows(usize),
    /// A message was skipped (the reason is logged).
    Rejected,
    /// An event; the position moved to its second position.
    Event,
}

/// Applies deliveries to the store, in order, and keeps the position after
/// the last one. Sans-IO: no sockets, no files.
#[derive(Debug)]
pub struct Applier {
    store: Arc<Store>,
    status: Arc<StreamStatus>,
    position: i64,
    /// Whether something was applied since the last [`Applier::capture`].
    dirty: bool,
}

impl Applier {
    /// An applier over `store` whose tables hold the stream up to
    /// `position` ([`NO_POSITION`]: nothing yet).
    pub fn new(store: Arc<Store>, status: Arc<StreamStatus>, position: i64) -> Applier {
        Applier { store, status, position, dirty: false }
    }

    /// The position after the last delivery applied.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Where to subscribe from to continue.
    pub fn resume_from(&self) -> From {
        if self.position == NO_POSITION { From::Start } else { From::Position(self.position) }
    }

    /// Whether anything was applied since the last capture.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Applies one delivery (see the module's table).
    pub fn apply(&mut self, d: Delivery) -> Applied {
        self.dirty = true;
        let m = &self.status.metrics;
        match d {
            Delivery::Message { value, pos, .. } => {
                let outcome = match protocol::parse(value) {
                    Ok(Request::Upd { table, data }) => match self.store.upd(&table, data) {
                        Ok(rows) => Applied::Rows(rows),
                        Err(e) => {
                            warn!(pos, table, error = %e, "stream message refused by its table; skipped");
                            Applied::Rejected
                        }
                    },
                    Ok(_) => {
                        warn!(pos, "stream message is not an upd; skipped");
                        Applied::Rejected
                    }
                    Err(e) => {
                        warn!(pos, error = %e, "stream message is not an upd; skipped");
                        Applied::Rejected
                    }
                };
                self.position = pos;
                let mut s = self.status.lock();
                s.position = pos;
                match outcome {
                    Applied::Rows(rows) => {
                        s.applied += 1;
                        m.messages.inc();
                        m.rows.inc_by(rows as u64);
                    }
                    _ => {
                        s.rejected += 1;
                        m.rejected.inc();
                    }
                }
                m.position.set(pos);
                outcome
            }
            Delivery::Event { event, p1, p2, .. } => {
                match event.as_str() {
                    "reset" => warn!(
                        p1,
                        p2,
                        "stream reset: a new session; rows may repeat or be missing where publishers resent"
                    ),
                    "skip-forward" => error!(
                        p1,
                        p2,
                        "stream skip-forward: the messages between p1 and p2 were archived; the tables have a gap"
                    ),
                    "badtail" => error!(
                        p1,
                        p2, "stream badtail: a corrupt record at the node; the rest of its segment is lost"
                    ),
                    other => warn!(event = other, p1, p2, "stream event"),
                }
                self.position = p2;
                let mut s = self.status.lock();
                *s.events.entry(event.clone()).or_default() += 1;
                s.position = p2;
                m.events.get_or_create(&vec![("event".to_string(), event)]).inc();
                m.position.set(p2);
                Applied::Event
            }
        }
    }

    /// The tables and the position right now, taken between two
    /// deliveries, so the snapshot's tables are exactly the messages before
    /// its position. Cheap: batches are shared, not copied.
    pub fn capture(&mut self) -> Snapshot {
        self.dirty = false;
        let tables = self
            .store
            .names()
            .into_iter()
            .filter_map(|n| self.store.table(&n))
            .map(|t| TableSnapshot { name: t.name().to_string(), schema: t.schema(), batches: t.snapshot() })
            .collect();
        Snapshot { stream: self.status.stream.clone(), position: self.position, tables }
    }
}

/// Loads the snapshot in `config.data` (if any) into `store`; returns the
/// position to continue from ([`NO_POSITION`] when there was none) and
/// whether a snapshot was loaded. Blocking: call off the async threads.
pub fn restore(config: &StreamConfig, store: &Store) -> Result<(i64, bool), SnapshotError> {
    let Some(dir) = &config.data else { return Ok((NO_POSITION, false)) };
    let Some(snap) = snapshot::read(dir, &config.stream)? else {
        info!(dir = %dir.display(), stream = config.stream, "no snapshot: subscribing from the start of the stream");
        return Ok((NO_POSITION, false));
    };
    let mut rows = 0;
    for t in snap.tables {
        if t.batches.is_empty() {
            let empty = datafusion::arrow::record_batch::RecordBatch::new_empty(t.schema);
            store.append(&t.name, empty).map_err(|e| SnapshotError::Arrow(e.to_string()))?;
        }
        for b in t.batches {
            rows += store.append(&t.name, b).map_err(|e| SnapshotError::Arrow(e.to_string()))?;
        }
    }
    info!(
        dir = %dir.display(),
        stream = config.stream,
        position = snap.position,
        rows,
        tables = ?store.names(),
        "snapshot loaded: resubscribing from its position"
    );
    Ok((snap.position, true))
}

/// A snapshot being written on a blocking thread.
type Writing = tokio::task::JoinHandle<(i64, Result<u64, SnapshotError>)>;

fn start_write(dir: &Option<PathBuf>, snap: Snapshot) -> Option<Writing> {
    let dir = dir.clone()?;
    Some(tokio::task::spawn_blocking(move || {
        let pos = snap.position;
        (pos, snapshot::write(&dir, &snap))
    }))
}

/// Records a finished write; the position it holds when it was written.
fn finish_write(
    status: &StreamStatus,
    done: Result<(i64, Result<u64, SnapshotError>), tokio::task::JoinError>,
) -> Option<i64> {
    match done {
        Ok((pos, Ok(bytes))) => {
            debug!(position = pos, bytes, "snapshot written");
            status.snapshot_written(pos, bytes);
            Some(pos)
        }
        Ok((pos, Err(e))) => {
            error!(position = pos, error = %e, "snapshot not written; the previous one stays");
            None
        }
        Err(e) => {
            error!(error = %e, "snapshot task failed; the previous snapshot stays");
            None
        }
    }
}

/// Whether the source's copy no longer holds the last snapshot's position
/// (its node archived it) while the tables are past that point: a snapshot
/// now, so a restart resumes inside what the copy still holds.
fn archived_past_snapshot<S: Source>(source: &S, status: &StreamStatus, applier: &Applier) -> bool {
    let Some(oldest) = source.oldest() else { return false };
    let snap = status.snapshot_position().unwrap_or(NO_POSITION);
    let behind = snap < oldest && applier.position() >= oldest && applier.dirty();
    if behind {
        info!(
            snapshot = snap,
            oldest,
            position = applier.position(),
            "the node archived the last snapshot's position: writing a snapshot now"
        );
    }
    behind
}

/// Feeds the store from `source` until `stop`: subscribes from the
/// applier's position, applies every delivery, resubscribes with backoff
/// from the last applied position whenever the source goes away, writes a
/// snapshot every `config.snapshot_interval` when something was applied
/// (and at once when the source's copy was archived past the last one),
/// and a last one on stop.
pub async fn run<S: Source>(
    mut source: S,
    mut applier: Applier,
    config: StreamConfig,
    stop: CancellationToken,
) {
    let status = Arc::clone(&applier.status);
    // without a data directory the copy is this run's alone
    let scratch = config.data.is_none().then(|| config.copy_dir());
    if let Some(d) = &scratch {
        let d = d.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(d)).await;
    }
    let backoff = Backoff { initial: RETRY_INITIAL, max: RETRY_MAX, factor: 2.0, max_attempts: None };
    let mut failures = 0u32;
    let mut subscribed = false;
    let mut writing: Option<Writing> = None;
    let mut snap_tick = tokio::time::interval(config.snapshot_interval);
    snap_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut age_tick = tokio::time::interval(AGE_TICK);
    loop {
        if !subscribed {
            // while the source is away, keep what was applied: a snapshot now
            if writing.is_none() && applier.dirty() {
                writing = start_write(&config.data, applier.capture());
            }
            if let Some(w) = writing.as_mut().filter(|w| w.is_finished()) {
                let done = w.await;
                writing = None;
                if let Some(pos) = finish_write(&status, done) {
                    source.snapshot_written(pos);
                }
            }
            status.refresh_age();
            let wait = if failures == 0 { Duration::ZERO } else { backoff.delay(failures) };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            let from = applier.resume_from();
            let r = tokio::select! {
                _ = stop.cancelled() => break,
                r = source.subscribe(from) => r,
            };
            match r {
                Ok(start) => {
                    info!(
                        node = config.node,
                        stream = config.stream,
                        ?from,
                        start,
                        "subscribed to the stream"
                    );
                    failures = 0;
                    subscribed = true;
                    status.set_connected(source.node_connected());
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        warn!(node = config.node, stream = config.stream, error = %e, "cannot subscribe; retrying");
                    } else {
                        debug!(node = config.node, error = %e, failures, "still cannot subscribe");
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            d = source.next() => match d {
                Ok(Some(d)) => { applier.apply(d); }
                Ok(None) => {
                    warn!(node = config.node, position = applier.position(), "the subscription ended; resubscribing");
                    subscribed = false;
                    failures = 1;
                    status.set_connected(false);
                }
                Err(e) => {
                    warn!(node = config.node, position = applier.position(), error = %e, "subscription failed; resubscribing");
                    subscribed = false;
                    failures = 1;
                    status.set_connected(false);
                }
            },
            done = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                writing = None;
                if let Some(pos) = finish_write(&status, done) {
                    source.snapshot_written(pos);
                }
            }
            _ = snap_tick.tick() => {
                if writing.is_none() && applier.dirty() {
                    writing = start_write(&config.data, applier.capture());
                }
            }
            _ = age_tick.tick() => {
                status.refresh_age();
                status.set_connected(source.node_connected());
                if writing.is_none() && archived_past_snapshot(&source, &status, &applier) {
                    writing = start_write(&config.data, applier.capture());
                }
            }
        }
    }
    status.set_connected(false);
    // the last snapshot: after any write in flight, so the newer one wins
    if let Some(w) = writing.take() {
        finish_write(&status, w.await);
    }
    if applier.dirty()
        && let Some(w) = start_write(&config.data, applier.capture())
    {
        finish_write(&status, w.await);
        info!(position = applier.position(), "snapshot written at shutdown");
    }
    source.close().await;
    if let Some(root) = scratch.as_ref().and_then(|d| d.parent()).and_then(|d| d.parent()) {
        let root = root.to_path_buf();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(root)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::{Attr, K, Table, Vector};
    use std::collections::VecDeque;

    fn msg(table: &str, x: i64, pos: i64) -> Delivery {
        let t = K::Table(Table {
            attr: Attr::None,
            names: ["x"].into_iter().collect(),
            columns: vec![K::from(Vector::Long(vec![x]))],
        });
        Delivery::Message { stream: "s".into(), value: K::list(vec![K::sym("upd"), K::sym(table), t]), pos }
    }

    fn xs(store: &Store, table: &str) -> Vec<i64> {
        let t = store.table(table).expect("table");
        let k = crate::mapping::batches_to_table(&t.schema(), &t.snapshot()).expect("k");
        match &k.columns[0] {
            K::Vector(_, Vector::Long(v)) => v.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn applies_in_order_and_moves_the_position() {
        let store = Arc::new(Store::default());
        let status = StreamStatus::new("n", "s", NO_POSITION, false);
        let mut a = Applier::new(Arc::clone(&store), Arc::clone(&status), NO_POSITION);
        assert_eq!(a.resume_from(), From::Start);
        assert_eq!(a.apply(msg("t", 1, 100)), Applied::Rows(1));
        assert_eq!(a.apply(msg("t", 2, 200)), Applied::Rows(1));
        // not an upd, and data that does not fit: skipped, position moves on
        let junk = Delivery::Message { stream: "s".into(), value: K::long(5), pos: 300 };
        assert_eq!(a.apply(junk), Applied::Rejected);
        let wrong = Delivery::Message {
            stream: "s".into(),
            value: K::list(vec![
                K::sym("upd"),
                K::sym("t"),
                K::list(vec![K::from(Vector::Float(vec![1.0]))]),
            ]),
            pos: 400,
        };
        assert_eq!(a.apply(wrong), Applied::Rejected);
        let ev = Delivery::Event { stream: "s".into(), event: "skip-forward".into(), p1: 400, p2: 1000 };
        assert_eq!(a.apply(ev), Applied::Event);
        assert_eq!(a.resume_from(), From::Position(1000));
        assert_eq!(xs(&store, "t"), [1, 2]);
        let j = status.to_json();
        assert_eq!(j["applied"], 2);
        assert_eq!(j["rejected"], 2);
        assert_eq!(j["events"]["skip-forward"], 1);
        assert_eq!(j["position"], 1000);
    }

    /// A snapshot captured between deliveries, restored into a new store,
    /// plus the deliveries after its position, equals applying everything.
    #[test]
    fn snapshot_then_rest_equals_the_whole_stream() {
        let dir = std::env::temp_dir().join(format!("qmesh-stream-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let all: Vec<Delivery> =
            (1..=50).map(|i| msg(if i % 3 == 0 { "q" } else { "t" }, i, i * 10)).collect();
        let whole = Arc::new(Store::default());
        let mut w = Applier::new(Arc::clone(&whole), StreamStatus::new("n", "s", 0, false), NO_POSITION);
        for d in all.clone() {
            w.apply(d);
        }
        for cut in [1usize, 17, 49] {
            let store = Arc::new(Store::default());
            let mut a = Applier::new(Arc::clone(&store), StreamStatus::new("n", "s", 0, false), NO_POSITION);
            for d in all[..cut].iter().cloned() {
                a.apply(d);
            }
            snapshot::write(&dir, &a.capture()).expect("write");
            let config = StreamConfig::new("n", "s", Some(dir.clone()));
            let again = Arc::new(Store::default());
            let (pos, restored) = restore(&config, &again).expect("restore");
            assert!(restored);
            let mut b = Applier::new(Arc::clone(&again), StreamStatus::new("n", "s", pos, true), pos);
            // what a resubscription from `pos` delivers
            let rest: VecDeque<Delivery> = all
                .iter()
                .filter(|d| matches!(d, Delivery::Message { pos: p, .. } if *p > pos))
                .cloned()
                .collect();
            for d in rest {
                b.apply(d);
            }
            assert_eq!(xs(&again, "t"), xs(&whole, "t"), "cut {cut}");
            assert_eq!(xs(&again, "q"), xs(&whole, "q"), "cut {cut}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
