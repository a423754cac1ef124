//! The service process: kdb+ IPC, HTTP, and registration with the load
//! balancer.
//!
//! [`bind`] builds the store (demo data, `--load` files), binds the IPC and
//! HTTP ports and returns a [`Bound`] service whose addresses can be printed;
//! [`Bound::run`] serves until shutdown. With a load balancer address the
//! service registers as the whitepaper's `service.q` does — async
//! `` (`registerResource;`NAME;`:host:port) `` on connecting, async
//! `` (`returnService;`NAME) `` after each `queryService` — and reconnects
//! (re-registering) when the load balancer goes away.
//!
//! A sync request from the load balancer (its probe, q's `h""`) is answered
//! as q would answer it: only once every `queryService` received before it
//! has finished and its `returnService` has been sent, on the same
//! connection, ahead of the answer. q runs one thing at a time, so that is
//! what `service.q` does; the load balancer relies on it to learn whether a
//! dead gateway's query ever reached the instance (`qmesh_routing::lb`,
//! *Orphaned allocations*). This service runs queries side by side, so it
//! keeps count (`InProgress`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use qmesh_codec::{K, Message};
use qmesh_ipc::client::Backoff;
use qmesh_ipc::session::{Down, Hello, Session, SessionHooks, Up};
use qmesh_ipc::{Address, ClientOptions, Handler, Peer, Responder, Sender};
use qmesh_process::{Identity, Metrics, Shell, ShellError, ShellOptions, Shutdown};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::demo::{self, DemoSpec};
use crate::engine::{Engine, Limits, QueryError};
use crate::load::{self, LoadSpec};
use crate::protocol::{self, Request};
use crate::store::{Ingest, Store};
use crate::stream::{Applier, CopySource, StreamConfig, StreamStatus};
use qmesh_whitepaper::{Address as WpAddress, ServiceName, ToLb};

/// Longest wait between attempts to reach the load balancer; the
/// whitepaper's service retries every 10 s.
pub const LB_RETRY_MAX: Duration = Duration::from_secs(10);

/// First wait after losing the load balancer.
pub const LB_RETRY_INITIAL: Duration = Duration::from_millis(200);

/// How a service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Ports, `-u`, message size and the rest every server kind has.
    /// `shell.name` is the service name the instances of one pool share
    /// (`EQUITY_MARKET_RDB`); `shell.advertise_host` the host gateways
    /// reach it at (default: the listening IP, or the machine's host name
    /// when listening on all interfaces — the whitepaper's `.z.h`).
    pub shell: ShellOptions,
    /// The load balancer to register with.
    pub lb: Option<Address>,
    pub limits: Limits,
    /// Bound on the bytes the store holds.
    pub max_store_bytes: usize,
    /// Threads running queries (0: one per core).
    pub query_threads: usize,
    /// Demo data to generate at start.
    pub demo: Option<DemoSpec>,
    /// Files to load at start.
    pub load: Vec<LoadSpec>,
    /// Feed the tables from a stream (`--rt`, `--stream`, `--data`); see
    /// [`crate::stream`]. Then the stream is the tables' only writer: no
    /// `demo`, no `load`, and IPC `upd` is refused.
    pub stream: Option<StreamConfig>,
}

impl Config {
    /// A service called `name` on a free loopback port, with the defaults.
    pub fn new(name: impl Into<String>) -> Config {
        Config {
            shell: ShellOptions::new("service", name),
            lb: None,
            limits: Limits::default(),
            max_store_bytes: crate::store::DEFAULT_MAX_STORE_BYTES,
            query_threads: 0,
            demo: None,
            load: Vec::new(),
            stream: None,
        }
    }
}

/// Errors starting a service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Load(#[from] load::LoadError),
    #[error("demo data: {0}")]
    Demo(crate::store::StoreError),
    #[error("engine: {0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Shell(#[from] ShellError),
    #[error("{0}")]
    Task(String),
    #[error("a service listens on TCP: the load balancer hands out its address")]
    NoTcp,
    #[error("bad name {0:?}: a service name is letters, digits and `_`")]
    Name(String),
    #[error("{0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("a stream-fed service takes its tables from the stream only: no --demo, no --load")]
    StreamAndData,
    /// Another process (another `qmesh service`) holds the data directory: its snapshot and its copy of the
    /// stream are that process's ([`crate::stream::DATA_LOCK_FILE`]).
    #[error("{0}: one service per data directory (give this one its own --data)")]
    DataInUse(#[from] qmesh_process::dirlock::DirLockError),
    /// The node answered that it has no such stream: a configuration error, not retried.
    #[error("{0}")]
    UnknownStream(#[from] qmesh_rt::probe::UnknownStream),
}

/// The service's metrics.
#[derive(Debug, Clone)]
struct ServiceMetrics {
    queries: Family<Vec<(String, String)>, Counter>,
    query_seconds: Histogram,
    queries_running: Gauge,
    ingested_rows: Counter,
    upd_rejected: Counter,
    store_bytes: Gauge,
    lb_connected: Gauge,
}

impl ServiceMetrics {
    fn new(metrics: &Metrics) -> ServiceMetrics {
        let m = ServiceMetrics {
            queries: Family::default(),
            query_seconds: Histogram::new(exponential_buckets(0.000_1, 4.0, 12)),
            queries_running: Gauge::default(),
            ingested_rows: Counter::default(),
            upd_rejected: Counter::default(),
            store_bytes: Gauge::default(),
            lb_connected: Gauge::default(),
        };
        metrics.register("qmesh_service_queries", "Queries answered, by outcome.", m.queries.clone());
        metrics.register("qmesh_service_query_seconds", "Time to answer a query.", m.query_seconds.clone());
        metrics.register("qmesh_service_queries_running", "Queries running now.", m.queries_running.clone());
        metrics.register(
            "qmesh_service_ingested_rows",
            "Rows appended by upd, --load and --demo.",
            m.ingested_rows.clone(),
        );
        metrics.register(
            "qmesh_service_upd_rejected",
            "upd messages refused (schema mismatch …).",
            m.upd_rejected.clone(),
        );
        metrics.register("qmesh_service_store_bytes", "Bytes of Arrow data held.", m.store_bytes.clone());
        metrics.register(
            "qmesh_service_lb_connected",
            "1 while registered with the load balancer.",
            m.lb_connected.clone(),
        );
        m
    }

    fn outcome(&self, r: &Result<K, QueryError>, started: Instant) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(QueryError::Timeout(_)) => "timeout",
            Err(
                QueryError::Memory { .. } | QueryError::ResultTooLarge { .. } | QueryError::SqlTooLong(_),
            ) => "limit",
            Err(_) => "error",
        };
        self.queries.get_or_create(&vec![("outcome".to_string(), outcome.to_string())]).inc();
        self.query_seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// The connection to the load balancer, when there is one.
#[derive(Debug, Clone, Default)]
struct LbSlot(Arc<Mutex<Option<Sender>>>);

impl LbSlot {
    fn set(&self, s: Option<Sender>) {
        *self.lock() = s;
    }

    fn get(&self) -> Option<Sender> {
        self.lock().clone()
    }

    /// A panic while holding this lock is a bug that ends the process
    /// (fail fast); a poisoned lock is not carried on with.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Sender>> {
        self.0.lock().expect("the load balancer slot's lock is poisoned: a panic while holding it")
    }
}

/// The gateways' queries (`queryService`) in progress, numbered in the
/// order they were received, so that a sync request from the load balancer
/// can be answered only once every query received before it has finished
/// and been reported (`returnService`), as q answers it.
#[derive(Debug, Clone, Default)]
struct InProgress(Arc<InProgressState>);

#[derive(Debug, Default)]
struct InProgressState {
    /// (next number, numbers of the queries still running)
    running: Mutex<(u64, BTreeSet<u64>)>,
    finished: tokio::sync::Notify,
}

/// One query in progress; dropping it marks the query finished.
#[derive(Debug)]
struct QueryTicket {
    of: InProgress,
    n: u64,
}

impl Drop for QueryTicket {
    fn drop(&mut self) {
        self.of.lock().1.remove(&self.n);
        self.of.0.finished.notify_waiters();
    }
}

impl InProgress {
    /// A panic while holding this lock is a bug that ends the process
    /// (fail fast); a poisoned lock is not carried on with.
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeSet<u64>)> {
        self.0.running.lock().expect("the queries-in-progress lock is poisoned: a panic while holding it")
    }

    /// Counts a query as received, now (call before spawning its task).
    fn start(&self) -> QueryTicket {
        let mut g = self.lock();
        let n = g.0;
        g.0 += 1;
        g.1.insert(n);
        QueryTicket { of: self.clone(), n }
    }

    /// Waits until every query received before this call has finished.
    async fn earlier_finished(&self) {
        let mark = self.lock().0;
        loop {
            let finished = self.0.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if self.lock().1.first().is_none_or(|first| *first >= mark) {
                return;
            }
            finished.await;
        }
    }
}

/// What every connection shares.
#[derive(Debug, Clone)]
struct ServiceHandler {
    name: String,
    engine: Arc<Engine>,
    lb: LbSlot,
    metrics: ServiceMetrics,
    in_progress: InProgress,
    /// The stream feeding the tables, if any: then `upd` is refused.
    fed_from: Option<String>,
    /// `--permissions`: who may query (and `upd`) this service.
    permissions: Option<qmesh_process::Permissions>,
}

impl ServiceHandler {
    /// The permissions file's word on `peer` doing `action` on this service
    /// (`query` for SQL, `queryService` and the table list; `publish` for
    /// `upd`): the `access` error's q text when refused. Without a file,
    /// everything is allowed.
    fn may(&self, peer: &Peer, action: qmesh_process::Action) -> Result<(), String> {
        match &self.permissions {
            Some(p) => p.check(peer.user(), action, [self.name.as_str()]).map_err(|e| e.to_q_text()),
            None => Ok(()),
        }
    }

    async fn query(&self, sql: &str) -> Result<K, QueryError> {
        let started = Instant::now();
        self.metrics.queries_running.inc();
        let r = self.engine.query_k(sql).await;
        self.metrics.queries_running.dec();
        self.metrics.outcome(&r, started);
        if let Err(e) = &r {
            debug!(error = %e, "query failed");
        }
        r
    }

    fn upd(&self, table: &str, data: K) -> Result<usize, String> {
        if let Some(stream) = &self.fed_from {
            self.metrics.upd_rejected.inc();
            return Err(format!(
                "bad request: upd `{table}`: this service is fed from stream `{stream}`; publish there"
            ));
        }
        match self.engine.store().upd(table, data) {
            Ok(n) => {
                self.metrics.ingested_rows.inc_by(n as u64);
                self.metrics.store_bytes.set(self.engine.store().bytes() as i64);
                Ok(n)
            }
            Err(e) => {
                self.metrics.upd_rejected.inc();
                Err(e.to_string())
            }
        }
    }

    /// Tells the load balancer this instance is free again.
    fn return_service(&self) {
        match self.lb.get() {
            Some(lb) => {
                if let Err(e) =
                    lb.send_async(&qmesh_whitepaper::return_service_name(&ServiceName::new(&self.name)))
                {
                    warn!(error = %e, "cannot tell the load balancer this instance is free");
                }
            }
            None => debug!("no load balancer to tell this instance is free"),
        }
    }

    /// The whitepaper's `queryService`: run, answer `returnRes` on the
    /// gateway's connection, then `returnService` to the load balancer;
    /// the query counts as in progress until then (`ticket`).
    async fn query_service(&self, gateway: Peer, seq: K, query: Result<String, String>, ticket: QueryTicket) {
        let result = match query {
            Ok(sql) => self.query(&sql).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = gateway.send_async(&qmesh_whitepaper::return_res(seq, result)) {
            warn!(conn = %gateway.id(), error = %e, "cannot send returnRes to the gateway");
        }
        self.return_service();
        drop(ticket);
    }
}

/// `--permissions` on the service's own HTTP routes (`/query`,
/// `/api/tables`, `/api/stream`): `query` on this service for the user HTTP
/// Basic authenticated (none without `-u`), the catalog's `access` (403)
/// when refused. `/healthz`, `/metrics` and `/api/identity` are the shell's
/// and not affected.
async fn http_permission(
    p: qmesh_process::Permissions,
    service: String,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let user = req.extensions().get::<qmesh_process::AuthUser>().map(|u| u.0.clone()).unwrap_or_default();
    match p.check(&user, qmesh_process::Action::Query, [service.as_str()]) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn reply(responder: Responder, result: Result<K, String>) {
    let sent = match result {
        Ok(k) => responder.reply(k),
        Err(e) => responder.error(e),
    };
    if let Err(e) = sent {
        debug!(error = %e, "the client went before its answer");
    }
}

impl Handler for ServiceHandler {
    async fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) {
        // (PyKX's probes and q's `h""` were answered by the server)
        let k = match msg.decode() {
            Ok(k) => k,
            Err(e) => return reply(responder, Err(format!("bad request: {e}"))),
        };
        let request = protocol::parse(k);
        let action = match &request {
            Ok(Request::Upd { .. }) => Some(qmesh_process::Action::Publish),
            Ok(_) => Some(qmesh_process::Action::Query),
            Err(_) => None,
        };
        if let Some(action) = action
            && let Err(text) = self.may(peer, action)
        {
            return reply(responder, Err(text));
        }
        match request {
            Err(text) => reply(responder, Err(text)),
            Ok(Request::Sql(sql)) => {
                let this = self.clone();
                tokio::spawn(async move {
                    let r = this.query(&sql).await.map_err(|e| e.to_string());
                    reply(responder, r);
                });
            }
            Ok(Request::Upd { table, data }) => {
                reply(responder, self.upd(&table, data).map(|_| K::GenericNull))
            }
            Ok(Request::QueryService { seq, query }) => {
                // A gateway that asks synchronously gets the result as the
                // answer; the load balancer is told all the same.
                let _ = seq;
                let this = self.clone();
                let ticket = self.in_progress.start();
                tokio::spawn(async move {
                    let r = match query {
                        Ok(sql) => this.query(&sql).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    reply(responder, r);
                    this.return_service();
                    drop(ticket);
                });
            }
            Ok(Request::Tables) => reply(responder, Ok(protocol::tables(&self.engine.store().names()))),
        }
        let _ = peer;
    }

    async fn on_async(&self, peer: &Peer, msg: Message) {
        let k = match msg.decode() {
            Ok(k) => k,
            Err(e) => {
                warn!(conn = %peer.id(), error = %e, "async message not decoded; ignored");
                return;
            }
        };
        match protocol::parse(k) {
            Ok(Request::Upd { .. }) if self.may(peer, qmesh_process::Action::Publish).is_err() => {}
            Ok(Request::Upd { table, data }) => {
                if let Err(e) = self.upd(&table, data) {
                    warn!(conn = %peer.id(), table, error = %e, "async upd refused; the table is unchanged");
                }
            }
            Ok(Request::QueryService { seq, query }) => {
                // refused: the gateway gets the access error as the query's result
                let query = query.and_then(|q| self.may(peer, qmesh_process::Action::Query).map(|()| q));
                let this = self.clone();
                let gateway = peer.clone();
                let ticket = self.in_progress.start();
                tokio::spawn(async move { this.query_service(gateway, seq, query, ticket).await });
            }
            Ok(Request::Sql(_)) => {
                warn!(conn = %peer.id(), "async SQL ignored: send it sync, or through a gateway with queryService");
            }
            Ok(Request::Tables) => {}
            Err(e) => warn!(conn = %peer.id(), error = %e, "async message ignored"),
        }
    }
}

/// A service with its ports bound, ready to [`run`](Bound::run).
#[derive(Debug)]
pub struct Bound {
    shell: Shell,
    ipc_addr: SocketAddr,
    lb: Option<Address>,
    engine: Arc<Engine>,
    /// The stream feeding the tables, with the position the tables hold
    /// (from the snapshot) and whether a snapshot was loaded.
    stream: Option<(StreamConfig, i64, bool)>,
    /// The lock on the stream's data directory, held while the service runs.
    data_lock: Option<qmesh_process::dirlock::DirLock>,
    /// Whether the node could not be asked at bind whether it hosts the
    /// stream: then it is asked in the background once the service runs.
    ask_later: bool,
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    if !name.is_empty()
        && name.len() <= protocol::MAX_NAME_BYTES
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(ServiceError::Name(name.to_string()))
    }
}

/// Builds the store, loads data and binds the ports.
pub async fn bind(config: Config) -> Result<Bound, ServiceError> {
    check_name(&config.shell.name)?;
    let store = Arc::new(Store::new(config.max_store_bytes));
    let engine = Arc::new(Engine::new(Arc::clone(&store), config.limits, config.query_threads)?);
    // Generating and loading are CPU and disk work: off the async threads.
    if config.stream.is_some() && (config.demo.is_some() || !config.load.is_empty()) {
        return Err(ServiceError::StreamAndData);
    }
    // one service per data directory: its snapshot and its copy of the stream are this process's alone
    let data_lock = match config.stream.as_ref().and_then(|s| s.data.clone()) {
        Some(dir) => Some(
            tokio::task::spawn_blocking(move || {
                qmesh_process::dirlock::DirLock::take(&dir, crate::stream::DATA_LOCK_FILE)
            })
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))??,
        ),
        None => None,
    };
    // a stream the node does not host is a configuration error; a node that is down is not
    let mut ask_later = false;
    if let Some(sc) = &config.stream {
        use qmesh_rt::probe::{self, Answer, Role};
        match probe::ask_once(std::slice::from_ref(&sc.node), &sc.stream, &Role::Subscriber).await {
            Answer::Answered => {}
            Answer::Unknown(e) => return Err(ServiceError::UnknownStream(e)),
            Answer::Unreachable(why) => {
                warn!(node = sc.node, stream = sc.stream, error = %why, "the stream node cannot be reached yet; serving the snapshot and the local copy");
                ask_later = true;
            }
        }
    }
    let (demo_spec, loads, stream) = (config.demo, config.load.clone(), config.stream.clone());
    let st = Arc::clone(&store);
    let stream = tokio::task::spawn_blocking(move || -> Result<_, ServiceError> {
        if let Some(spec) = demo_spec {
            demo::generate(st.as_ref(), spec).map_err(ServiceError::Demo)?;
        }
        for spec in &loads {
            load::load(st.as_ref(), spec)?;
        }
        match stream {
            Some(sc) => {
                let (pos, restored) = crate::stream::restore(&sc, st.as_ref())?;
                Ok(Some((sc, pos, restored)))
            }
            None => Ok(None),
        }
    })
    .await
    .map_err(|e| ServiceError::Task(e.to_string()))??;
    if config.shell.ipc.tcp.is_none() {
        return Err(ServiceError::NoTcp);
    }
    let shell = Shell::bind(config.shell).await?;
    let ipc_addr = shell.ipc_addr().ok_or(ServiceError::NoTcp)?;
    Ok(Bound { shell, ipc_addr, lb: config.lb, engine, stream, data_lock, ask_later })
}

impl Bound {
    /// The kdb+ IPC address.
    pub fn ipc_addr(&self) -> SocketAddr {
        self.ipc_addr
    }

    /// The HTTP address, if serving HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.shell.http_addr()
    }

    /// Who this process is (`/api/identity`).
    pub fn identity(&self) -> &Identity {
        self.shell.identity()
    }

    /// The `<kind> listening <proto> <addr>` lines for the binary to print.
    pub fn listening_lines(&self) -> Vec<String> {
        self.shell.listening_lines()
    }

    /// The process's metrics registry.
    pub fn metrics(&self) -> &Metrics {
        self.shell.metrics()
    }

    /// The engine (for embedding and tests).
    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    /// The address the load balancer hands to gateways: `:host:port`.
    pub fn advertised(&self) -> String {
        self.shell.identity().advertised.clone().unwrap_or_default()
    }

    /// Serves until `shutdown` triggers, then stops accepting, lets
    /// connections finish what they owe and returns. A stream-fed service
    /// whose node was down at [`bind`] asks it, once it answers, whether it
    /// hosts the stream: `'unknown stream` then stops the service with
    /// [`ServiceError::UnknownStream`].
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServiceError> {
        let Bound { shell, lb: lb_addr, engine, stream, data_lock, ask_later, .. } = self;
        let name = shell.identity().name.clone();
        let smetrics = ServiceMetrics::new(shell.metrics());
        smetrics.store_bytes.set(engine.store().bytes() as i64);
        let lb = LbSlot::default();
        let in_progress = InProgress::default();
        let handler = ServiceHandler {
            name: name.clone(),
            engine: Arc::clone(&engine),
            lb: lb.clone(),
            metrics: smetrics.clone(),
            in_progress: in_progress.clone(),
            fed_from: stream.as_ref().map(|(sc, _, _)| sc.stream.clone()),
            permissions: shell.permissions(),
        };
        let advertised = shell.identity().advertised.clone().unwrap_or_default();
        let lb_stop = CancellationToken::new();
        let lb_task = lb_addr.map(|addr| {
            let hooks =
                LbSession { addr, name: name.clone(), advertised, slot: lb, metrics: smetrics, in_progress };
            tokio::spawn(lb_session(hooks, lb_stop.clone()))
        });
        let mut api = crate::http::router(Arc::clone(&engine));
        if let Some(p) = shell.permissions() {
            let service = name.clone();
            api = api.layer(axum::middleware::from_fn(move |req, next| {
                http_permission(p.clone(), service.clone(), req, next)
            }));
        }
        let stream_stop = CancellationToken::new();
        let mut stream_task = None;
        let mut probe_task = None;
        let refused: Arc<Mutex<Option<qmesh_rt::probe::UnknownStream>>> = Arc::default();
        if let Some((sc, pos, restored)) = stream {
            let status = StreamStatus::new(&sc.node, &sc.stream, pos, restored);
            status.register(shell.metrics());
            api = api.merge(crate::stream::router(Arc::clone(&status)));
            let applier = Applier::new(Arc::clone(engine.store()), status, pos);
            let source = CopySource::new(sc.node.clone(), sc.stream.clone(), sc.copy_dir());
            if ask_later {
                let (stop, shutdown, slot) = (stream_stop.clone(), shutdown.clone(), Arc::clone(&refused));
                let (node, name) = (sc.node.clone(), sc.stream.clone());
                probe_task = Some(tokio::spawn(async move {
                    let role = qmesh_rt::probe::Role::Subscriber;
                    tokio::select! {
                        r = qmesh_rt::probe::until_answered(std::slice::from_ref(&node), &name, &role) => {
                            if let Err(e) = r {
                                error!(error = %e, "stopping: the node does not host the stream");
                                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                shutdown.trigger();
                            }
                        }
                        _ = stop.cancelled() => {}
                    }
                }));
            }
            stream_task = Some(tokio::spawn(crate::stream::run(source, applier, sc, stream_stop.clone())));
        }
        shell.health().set_ready(true);
        info!(%name, ipc = ?shell.ipc_addr(), tables = ?engine.store().names(), "service ready");
        // at shutdown the load balancer link goes first, so no new query is
        // allocated to an instance on its way out
        let drain = async {
            lb_stop.cancel();
            stream_stop.cancel();
        };
        let served = shell.run(handler, api, shutdown, drain).await;
        if let Some(t) = lb_task {
            let _ = t.await;
        }
        // the stream's last snapshot is written before the process ends
        if let Some(t) = stream_task {
            let _ = t.await;
        }
        if let Some(t) = probe_task {
            let _ = t.await;
        }
        // the data directory is free once the last snapshot is written and the copy closed
        drop(data_lock);
        if let Some(e) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(ServiceError::UnknownStream(e));
        }
        served.map_err(ServiceError::from)
    }
}

/// The session to the load balancer: its hello is `registerResource`, so
/// every (re)connect registers this instance again, as `service.q` does.
struct LbSession {
    addr: Address,
    name: String,
    advertised: String,
    slot: LbSlot,
    metrics: ServiceMetrics,
    in_progress: InProgress,
}

/// What the load balancer sends a service: its probe, q's `h""` chaser,
/// answered `::` once every query received before it has finished and been
/// reported (see the module docs); anything else gets an error, at the
/// same moment (q would answer it then too).
struct FromLb {
    in_progress: InProgress,
}

impl Handler for FromLb {
    async fn on_sync(&self, _peer: &Peer, msg: Message, responder: Responder) {
        let chaser = qmesh_ipc::pykx::answer_client_probe(&msg).is_some();
        let in_progress = self.in_progress.clone();
        // off the connection's read loop: it keeps reading while we wait
        tokio::spawn(async move {
            in_progress.earlier_finished().await;
            let _ = if chaser {
                responder.reply(K::GenericNull)
            } else {
                responder.error("bad request: a service takes no requests from its load balancer")
            };
        });
    }
}

impl SessionHooks for LbSession {
    type Handler = FromLb;

    fn handler(&self) -> FromLb {
        FromLb { in_progress: self.in_progress.clone() }
    }

    fn hello(&self) -> Hello {
        Hello::Async(
            ToLb::RegisterResource {
                service: ServiceName::new(&self.name),
                address: WpAddress::new(&self.advertised),
            }
            .to_k(),
        )
    }

    fn up(&self, sender: &Sender, _answer: Option<Message>) -> Up {
        info!(lb = %self.addr, service = %self.name, address = %self.advertised, "registered with the load balancer");
        self.slot.set(Some(sender.clone()));
        self.metrics.lb_connected.set(1);
        Up::Keep
    }

    fn down(&self, why: Down<'_>) {
        match why {
            Down::Lost => {
                self.slot.set(None);
                self.metrics.lb_connected.set(0);
                warn!(lb = %self.addr, "lost the load balancer; reconnecting");
            }
            Down::Unreachable { error, failures: 1 } => {
                warn!(lb = %self.addr, %error, "cannot reach the load balancer; retrying");
            }
            Down::Unreachable { error, .. } => {
                debug!(lb = %self.addr, %error, "load balancer still unreachable")
            }
            Down::HelloFailed { error, .. } => {
                warn!(lb = %self.addr, %error, "cannot register with the load balancer");
            }
            Down::Refused { .. } => {}
        }
    }
}

/// Keeps this instance registered with the load balancer until `stop`.
async fn lb_session(hooks: LbSession, stop: CancellationToken) {
    let backoff = Backoff { initial: LB_RETRY_INITIAL, max: LB_RETRY_MAX, factor: 2.0, max_attempts: None };
    let session = Session::new(hooks.addr.clone(), ClientOptions::default(), backoff);
    session.run(hooks, stop).await;
}
