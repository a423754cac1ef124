//! Shared by the integration tests: whitepaper services (Python, aiokdb),
//! in-process gateways and load balancers, kdb+ clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use qmesh_codec::{Atom, K, Message};
use qmesh_ipc::{Address, ClientOptions, Connection, Incoming, IpcError};
use qmesh_process::{ShellOptions, Shutdown};
use qmesh_routing::gw::GatewayConfig;
use qmesh_routing::lb::LbConfig;
use qmesh_routing::runtime::Router;
use qmesh_routing::{GatewayOptions, LbLocation, LbOptions};
use qmesh_testkit::Process;

/// Longest a test waits for a state to be reached (registrations, links).
pub const SETTLE: Duration = Duration::from_secs(30);

/// Longest a test waits for one reply that must come.
pub const REPLY: Duration = Duration::from_secs(30);

pub fn py_dir() -> PathBuf {
    qmesh_testkit::manifest_dir().join("tests/py")
}

/// A whitepaper service (tests/py/wp_service.py) registering with the load
/// balancer at `lb_port`. `None` when there is no Python (the test skips).
pub fn wp_service(lb_port: u16, name: &str, extra: &[&str]) -> Option<Process> {
    let python = qmesh_testkit::python()?;
    let mut cmd: Command = qmesh_testkit::python_command(&python);
    cmd.arg(py_dir().join("wp_service.py"))
        .args(["--lb", &format!("127.0.0.1:{lb_port}"), "--name", name, "--retry", "0.2"])
        .args(extra);
    Some(Process::start(cmd, &["ipc"]))
}

/// A whitepaper service that registers nowhere (for direct queries).
pub fn lone_service() -> Option<Process> {
    let python = qmesh_testkit::python()?;
    let mut cmd = qmesh_testkit::python_command(&python);
    cmd.arg(py_dir().join("wp_service.py"));
    Some(Process::start(cmd, &["ipc"]))
}

/// A running in-process routing process.
pub struct Running {
    pub router: Arc<Router>,
    pub port: u16,
    pub http: Option<std::net::SocketAddr>,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(SETTLE, self.task).await;
    }
}

pub fn fast_gateway() -> GatewayConfig {
    GatewayConfig { default_timeout: Duration::from_secs(20), ..GatewayConfig::default() }
}

pub async fn gateway(lb: LbLocation, cfg: GatewayConfig) -> Running {
    let opts = GatewayOptions {
        lb,
        gateway: cfg,
        shell: ShellOptions {
            http: Some("127.0.0.1:0".parse().unwrap()),
            ..ShellOptions::new("gateway", "gateway")
        },
        shutdown_grace: Duration::from_millis(200),
        ..GatewayOptions::default()
    };
    let bound = qmesh_routing::bind_gateway(opts).await.unwrap();
    let port = bound.ipc_addr().unwrap().port();
    let http = bound.http_addr();
    let router = bound.router();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move { bound.run(s).await.unwrap() });
    Running { router, port, http, shutdown, task }
}

pub async fn embedded(lb: LbConfig, cfg: GatewayConfig) -> Running {
    gateway(LbLocation::Embedded(lb), cfg).await
}

pub async fn lb(cfg: LbConfig) -> Running {
    let bound = qmesh_routing::bind_lb(LbOptions { lb: cfg, ..LbOptions::default() }).await.unwrap();
    let port = bound.ipc_addr().unwrap().port();
    let router = bound.router();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move { bound.run(s).await.unwrap() });
    Running { router, port, http: None, shutdown, task }
}

/// Waits until `f(status)` holds (bounded by [`SETTLE`]).
pub async fn wait_for(router: &Router, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let s = router.status();
        if f(&s) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}; status: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn service_entry<'a>(s: &'a serde_json::Value, side: &str, service: &str) -> Option<&'a serde_json::Value> {
    s.get(side)?.get("services")?.as_array()?.iter().find(|e| e["service"] == service)
}

/// Waits until the gateway has `n` live links to instances of `service`.
pub async fn wait_instances(router: &Router, service: &str, n: u64) {
    wait_for(router, &format!("{n} instances of {service} up"), |s| {
        service_entry(s, "gateway", service).and_then(|e| e["instances_up"].as_u64()) == Some(n)
    })
    .await
}

/// Waits until the load balancer knows `n` instances of `service`.
pub async fn wait_registered(router: &Router, service: &str, n: u64) {
    wait_for(router, &format!("{n} instances of {service} registered"), |s| {
        service_entry(s, "load_balancer", service).and_then(|e| e["instances"].as_u64()) == Some(n)
    })
    .await
}

/// The load balancer's gauges for `service`: (instances, free, busy, queued).
pub fn lb_gauges(router: &Router, service: &str) -> (u64, u64, u64, u64) {
    let s = router.status();
    let e = service_entry(&s, "load_balancer", service).cloned().unwrap_or_default();
    let g = |k: &str| e[k].as_u64().unwrap_or(0);
    (g("instances"), g("free"), g("busy"), g("queued"))
}

pub async fn connect(port: u16) -> Connection {
    Connection::connect(&Address::parse(&format!("127.0.0.1:{port}")).unwrap(), ClientOptions::default())
        .await
        .unwrap()
}

/// `(service;query)` or `(service;query;opts)`.
pub fn args(service: K, query: &str, opts: Option<K>) -> K {
    let mut items = vec![service, K::string(query)];
    items.extend(opts);
    K::list(items)
}

pub fn user_query(service: &str, query: &str) -> K {
    K::list(vec![K::sym("userQuery"), args(K::sym(service), query, None)])
}

pub fn user_query_opts(service: K, query: &str, opts: K) -> K {
    K::list(vec![K::sym("userQuery"), args(service, query, Some(opts))])
}

/// `h(`userQuery;(`svc;"query"))`: the result, or the q error text.
pub async fn sync(conn: &Connection, service: &str, query: &str) -> Result<K, String> {
    sync_k(conn, &user_query(service, query)).await
}

pub async fn sync_k(conn: &Connection, msg: &K) -> Result<K, String> {
    match tokio::time::timeout(REPLY, conn.call(msg)).await.expect("a reply in time") {
        Ok(m) => Ok(m.decode().unwrap()),
        Err(IpcError::Remote(t)) => Err(t),
        Err(e) => panic!("call failed: {e}"),
    }
}

/// The next async message pushed to the client.
pub async fn next_async(conn: &mut Connection) -> Message {
    match tokio::time::timeout(REPLY, conn.receiver().recv()).await.expect("an async message in time") {
        Some(Incoming::Async(m)) => m,
        other => panic!("expected an async message, got {other:?}"),
    }
}

/// An async message as a result or an error text (type -128).
pub fn result_or_error(m: &Message) -> Result<K, String> {
    match m.decode().unwrap() {
        K::Error(t) => Err(String::from_utf8_lossy(&t).into_owned()),
        k => Ok(k),
    }
}

pub fn sym(k: &K) -> String {
    match k {
        K::Atom(Atom::Symbol(s)) => String::from_utf8_lossy(s).into_owned(),
        other => panic!("expected a symbol, got {other:?}"),
    }
}

pub fn long_ms(ms: i64) -> K {
    K::long(ms)
}
