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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use qmesh_codec::{K, Message};
use qmesh_ipc::client::Backoff;
use qmesh_ipc::{
    Address, ClientOptions, Connection, Handler, Incoming, PasswordFile, Peer, Responder, Sender,
};
use qmesh_ipc::{Server, ServerConfig};
use qmesh_process::{Health, Metrics, Shutdown};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::demo::{self, DemoSpec};
use crate::engine::{Engine, Limits, QueryError};
use crate::load::{self, LoadSpec};
use crate::protocol::{self, Request};
use crate::store::{Ingest, Store};

/// Longest wait between attempts to reach the load balancer; the
/// whitepaper's service retries every 10 s.
pub const LB_RETRY_MAX: Duration = Duration::from_secs(10);

/// First wait after losing the load balancer.
pub const LB_RETRY_INITIAL: Duration = Duration::from_millis(200);

/// How a service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The service name instances of one pool share (`EQUITY_MARKET_RDB`).
    pub name: String,
    /// The kdb+ IPC listening address (port 0: a free one).
    pub listen: SocketAddr,
    /// The HTTP listening address, if any.
    pub http: Option<SocketAddr>,
    /// The load balancer to register with.
    pub lb: Option<Address>,
    /// The host gateways should use to reach this service; defaults to the
    /// listening IP, or the machine's host name when listening on all
    /// interfaces (the whitepaper's `.z.h`).
    pub advertise_host: Option<String>,
    pub limits: Limits,
    /// Bound on the bytes the store holds.
    pub max_store_bytes: usize,
    /// Threads running queries (0: one per core).
    pub query_threads: usize,
    /// Demo data to generate at start.
    pub demo: Option<DemoSpec>,
    /// Files to load at start.
    pub load: Vec<LoadSpec>,
    /// A `-u` password file.
    pub users: Option<PathBuf>,
}

impl Config {
    /// A service called `name` on a free loopback port, with the defaults.
    pub fn new(name: impl Into<String>) -> Config {
        Config {
            name: name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: None,
            lb: None,
            advertise_host: None,
            limits: Limits::default(),
            max_store_bytes: crate::store::DEFAULT_MAX_STORE_BYTES,
            query_threads: 0,
            demo: None,
            load: Vec::new(),
            users: None,
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
    #[error("ipc: {0}")]
    Ipc(#[from] qmesh_ipc::IpcError),
    #[error("password file: {0}")]
    Users(String),
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    #[error("bad name {0:?}: a service name is letters, digits and `_`")]
    Name(String),
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
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn get(&self) -> Option<Sender> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What every connection shares.
#[derive(Debug, Clone)]
struct ServiceHandler {
    name: String,
    engine: Arc<Engine>,
    lb: LbSlot,
    metrics: ServiceMetrics,
}

impl ServiceHandler {
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
                if let Err(e) = lb.send_async(&protocol::return_service(&self.name)) {
                    warn!(error = %e, "cannot tell the load balancer this instance is free");
                }
            }
            None => debug!("no load balancer to tell this instance is free"),
        }
    }

    /// The whitepaper's `queryService`: run, answer `returnRes` on the
    /// gateway's connection, then `returnService` to the load balancer.
    async fn query_service(&self, gateway: Peer, seq: K, query: Result<String, String>) {
        let result = match query {
            Ok(sql) => self.query(&sql).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = gateway.send_async(&protocol::return_res(seq, result)) {
            warn!(conn = %gateway.id(), error = %e, "cannot send returnRes to the gateway");
        }
        self.return_service();
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
        let Some(responder) = qmesh_ipc::pykx::try_answer(&msg, responder) else { return };
        let k = match msg.decode() {
            Ok(k) => k,
            Err(e) => return reply(responder, Err(format!("bad request: {e}"))),
        };
        match protocol::parse(k) {
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
                tokio::spawn(async move {
                    let r = match query {
                        Ok(sql) => this.query(&sql).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    reply(responder, r);
                    this.return_service();
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
            Ok(Request::Upd { table, data }) => {
                if let Err(e) = self.upd(&table, data) {
                    warn!(conn = %peer.id(), table, error = %e, "async upd refused; the table is unchanged");
                }
            }
            Ok(Request::QueryService { seq, query }) => {
                let this = self.clone();
                let gateway = peer.clone();
                tokio::spawn(async move { this.query_service(gateway, seq, query).await });
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
    config: Config,
    server: Server,
    http: Option<TcpListener>,
    engine: Arc<Engine>,
    metrics: Metrics,
    health: Health,
    ipc_addr: SocketAddr,
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
pub async fn bind(config: Config, metrics: Metrics) -> Result<Bound, ServiceError> {
    check_name(&config.name)?;
    let store = Arc::new(Store::new(config.max_store_bytes));
    let engine = Arc::new(Engine::new(Arc::clone(&store), config.limits, config.query_threads)?);
    // Generating and loading are CPU and disk work: off the async threads.
    let (demo_spec, loads) = (config.demo, config.load.clone());
    let st = Arc::clone(&store);
    tokio::task::spawn_blocking(move || -> Result<(), ServiceError> {
        if let Some(spec) = demo_spec {
            demo::generate(st.as_ref(), spec).map_err(ServiceError::Demo)?;
        }
        for spec in &loads {
            load::load(st.as_ref(), spec)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ServiceError::Http(std::io::Error::other(e.to_string())))??;

    let mut server_config = ServerConfig::tcp(config.listen);
    if let Some(path) = &config.users {
        let users = PasswordFile::load(path).map_err(|e| ServiceError::Users(e.to_string()))?;
        server_config.authenticator = Some(Arc::new(users));
    }
    let server = Server::bind(server_config).await?;
    let ipc_addr = server
        .local_addr()
        .ok_or_else(|| ServiceError::Http(std::io::Error::other("the IPC server has no TCP address")))?;
    let http = match config.http {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    Ok(Bound { config, server, http, engine, metrics, health: Health::new(), ipc_addr })
}

impl Bound {
    /// The kdb+ IPC address.
    pub fn ipc_addr(&self) -> SocketAddr {
        self.ipc_addr
    }

    /// The HTTP address, if serving HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The engine (for embedding and tests).
    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    /// The address the load balancer hands to gateways: `:host:port`.
    pub fn advertised(&self) -> String {
        let host = match &self.config.advertise_host {
            Some(h) => h.clone(),
            None if self.ipc_addr.ip().is_unspecified() => host_name(),
            None => self.ipc_addr.ip().to_string(),
        };
        format!(":{host}:{}", self.ipc_addr.port())
    }

    /// Serves until `shutdown` triggers, then stops accepting, lets
    /// connections finish what they owe and returns.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServiceError> {
        let smetrics = ServiceMetrics::new(&self.metrics);
        smetrics.store_bytes.set(self.engine.store().bytes() as i64);
        let lb = LbSlot::default();
        let handler = ServiceHandler {
            name: self.config.name.clone(),
            engine: Arc::clone(&self.engine),
            lb: lb.clone(),
            metrics: smetrics.clone(),
        };
        let advertised = self.advertised();
        let lb_task = self.config.lb.clone().map(|addr| {
            tokio::spawn(lb_loop(addr, self.config.name.clone(), advertised, lb, smetrics, shutdown.clone()))
        });
        let http_task = self.http.map(|listener| {
            let api = crate::http::router(Arc::clone(&self.engine));
            tokio::spawn(qmesh_process::http::serve(
                listener,
                api,
                self.health.clone(),
                self.metrics.clone(),
                shutdown.clone(),
            ))
        });
        self.health.set_ready(true);
        info!(name = %self.config.name, ipc = %self.ipc_addr, tables = ?self.engine.store().names(), "service ready");
        let stop = shutdown.clone();
        self.server.run(handler, async move { stop.triggered().await }).await?;
        if let Some(t) = http_task {
            match t.await {
                Ok(Err(e)) => warn!(error = %e, "http server failed"),
                Err(e) => warn!(error = %e, "http task failed"),
                Ok(Ok(())) => {}
            }
        }
        if let Some(t) = lb_task {
            let _ = t.await;
        }
        info!(name = %self.config.name, "service stopped");
        Ok(())
    }
}

/// The machine's host name (the whitepaper advertises `.z.h`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Keeps this instance registered with the load balancer: connect, send
/// `registerResource`, hold the connection for `returnService`, and when it
/// drops, connect and register again.
async fn lb_loop(
    addr: Address,
    name: String,
    advertised: String,
    slot: LbSlot,
    metrics: ServiceMetrics,
    shutdown: Shutdown,
) {
    let backoff = Backoff { initial: LB_RETRY_INITIAL, max: LB_RETRY_MAX, factor: 2.0, max_attempts: None };
    let mut failures: u32 = 0;
    while !shutdown.is_triggered() {
        match Connection::connect(&addr, ClientOptions::default()).await {
            Ok(conn) => {
                let (sender, mut receiver) = conn.split();
                match sender.send_async(&protocol::register_resource(&name, &advertised)) {
                    Ok(()) => {
                        info!(lb = %addr, service = %name, address = %advertised, "registered with the load balancer");
                        failures = 0;
                        slot.set(Some(sender.clone()));
                        metrics.lb_connected.set(1);
                        loop {
                            tokio::select! {
                                m = receiver.recv() => match m {
                                    None => break,
                                    Some(Incoming::Sync(_, responder)) => {
                                        let _ = responder.error("bad request: a service takes no requests from its load balancer");
                                    }
                                    Some(Incoming::Async(_)) => {}
                                },
                                _ = shutdown.triggered() => break,
                            }
                        }
                        slot.set(None);
                        metrics.lb_connected.set(0);
                        if shutdown.is_triggered() {
                            break;
                        }
                        warn!(lb = %addr, "lost the load balancer; reconnecting");
                    }
                    Err(e) => warn!(lb = %addr, error = %e, "cannot register with the load balancer"),
                }
                failures = failures.saturating_add(1);
            }
            Err(e) => {
                if failures == 0 {
                    warn!(lb = %addr, error = %e, "cannot reach the load balancer; retrying");
                } else {
                    debug!(lb = %addr, error = %e, "load balancer still unreachable");
                }
                failures = failures.saturating_add(1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay(failures)) => {}
            _ = shutdown.triggered() => break,
        }
    }
}
