//! `qmesh lb` and `qmesh gateway` as real processes, with whitepaper
//! services (crates/qmesh-routing/tests/py/wp_service.py), killed for real:
//! the load balancer dies and comes back, a gateway dies (mid-query, or
//! stopped at an allocation and then killed), a service dies mid-query, a
//! gateway is stopped with SIGTERM.
//!
//! Waiting is for states (read from `/api/services`), never for a time; a
//! query that must stay running while the test looks is a `hold` query,
//! which ends when the test creates its file, not when a clock runs out.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use qmesh_codec::{Atom, K};
use qmesh_ipc::{Address, ClientOptions, Connection, Incoming, IpcError};
use qmesh_testkit::Process;
use serde_json::Value;

const EQ: &str = "EQUITY_MARKET_RDB";
mod common;
use common::{REPLY, SETTLE, http_get, status, wait_for};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qmesh")
}

fn py_dir() -> PathBuf {
    qmesh_testkit::manifest_dir().join("../qmesh-routing/tests/py")
}

fn lb(port: u16) -> Process {
    let p = port.to_string();
    Process::qmesh(bin(), &["lb", "--bind", "127.0.0.1", "-p", &p, "--http", "0"], &["ipc", "http"])
}

fn gateway(extra: &[&str]) -> Process {
    let mut args = vec!["gateway", "--bind", "127.0.0.1", "-p", "0", "--http", "0"];
    args.extend_from_slice(extra);
    Process::qmesh(bin(), &args, &["ipc", "http"])
}

fn service(lb_port: u16) -> Option<Process> {
    let python = qmesh_testkit::python()?;
    let mut cmd = qmesh_testkit::python_command(&python);
    cmd.arg(py_dir().join("wp_service.py")).args([
        "--lb",
        &format!("127.0.0.1:{lb_port}"),
        "--name",
        EQ,
        "--retry",
        "0.2",
    ]);
    Some(Process::start(cmd, &["ipc"]))
}

fn entry<'a>(s: &'a Value, side: &str) -> Option<&'a Value> {
    s.get(side)?.get("services")?.as_array()?.iter().find(|e| e["service"] == EQ)
}

async fn wait_gateway_ready(g: &Process, instances: u64) {
    wait_for(g, &format!("gateway with the LB and {instances} instances"), |s| {
        s["gateway"]["lb_connected"] == true
            && entry(s, "gateway").and_then(|e| e["instances_up"].as_u64()) == Some(instances)
    })
    .await
}

/// Waits for the whitepaper service to print a line starting with `prefix`
/// (lines before it are skipped).
fn wait_line(s: &Process, prefix: &str) {
    let deadline = std::time::Instant::now() + SETTLE;
    tokio::task::block_in_place(|| {
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match s.next_line(left) {
                Some(line) if line.starts_with(prefix) => return,
                Some(_) => {}
                None => panic!("the service did not print {prefix:?} in time"),
            }
        }
    })
}

/// Waits until the whitepaper service has started running `query`.
fn wait_running(s: &Process, query: &str) {
    wait_line(s, &format!("service running {query}"))
}

/// A whitepaper-service query that runs (blocking the service, as a long q
/// query does) until [`Hold::release`]: `hold PATH`.
struct Hold(PathBuf);

impl Hold {
    fn new(name: &str) -> Hold {
        let p = std::env::temp_dir().join(format!("qmesh-hold-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Hold(p)
    }

    fn query(&self) -> String {
        format!("hold {}", self.0.display())
    }

    fn release(&self) {
        std::fs::write(&self.0, b"").unwrap();
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends `sig` (`STOP`, `CONT`) to a process.
fn signal(p: &Process, sig: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(p.pid().to_string()).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} failed");
}

/// Waits until every thread of `p` is stopped (after `kill -STOP`). The
/// stop is not done when `kill` returns: on a loaded machine (a VM whose
/// other vCPU is descheduled) a thread of the target was seen running user
/// code milliseconds later — long enough to take an allocation and
/// dispatch a query.
fn wait_stopped(p: &Process) {
    let deadline = std::time::Instant::now() + SETTLE;
    let task_dir = format!("/proc/{}/task", p.pid());
    loop {
        let states: Vec<String> = std::fs::read_dir(&task_dir)
            .map(|d| {
                d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
                    .filter_map(|st| st.lines().find(|l| l.starts_with("State:")).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if !states.is_empty() && states.iter().all(|s| s.contains("(stopped)")) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "process {} not stopped: {states:?}", p.pid());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The load balancer's gauges for the service: (instances, free, busy, queued).
fn gauges(s: &Value) -> (u64, u64, u64, u64) {
    let e = entry(s, "load_balancer").cloned().unwrap_or_default();
    let g = |k: &str| e[k].as_u64().unwrap_or(u64::MAX);
    (g("instances"), g("free"), g("busy"), g("queued"))
}

/// The load balancer's own metric lines (`qmesh_lb_…`), for failure messages.
async fn lb_metrics(p: &Process) -> String {
    let (_, body) = http_get(p.addr("http"), "/metrics").await.unwrap_or_default();
    body.lines().filter(|l| l.starts_with("qmesh_lb_")).collect::<Vec<_>>().join("\n")
}

/// The lines a process printed that no wait has read yet, for failure messages.
fn drain_lines(p: &Process) -> String {
    let mut lines = Vec::new();
    while let Some(l) = p.next_line(Duration::from_millis(100)) {
        lines.push(l);
    }
    lines.join("\n")
}

/// One sample of a Prometheus text page (`name{labels} value`), if present.
async fn metric(p: &Process, sample: &str) -> Option<f64> {
    let (_, body) = http_get(p.addr("http"), "/metrics").await?;
    body.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn connect(p: &Process) -> Connection {
    let a = Address::parse(&p.addr("ipc").to_string()).unwrap();
    Connection::connect(&a, ClientOptions::default()).await.unwrap()
}

fn user_query(q: &str) -> K {
    K::list(vec![K::sym("userQuery"), K::list(vec![K::sym(EQ), K::string(q)])])
}

async fn sync(c: &Connection, q: &str) -> Result<K, String> {
    match tokio::time::timeout(REPLY, c.call(&user_query(q))).await.expect("a reply in time") {
        Ok(m) => Ok(m.decode().unwrap()),
        Err(IpcError::Remote(t)) => Err(t),
        Err(e) => Err(format!("connection: {e}")),
    }
}

async fn next_async(c: &mut Connection) -> K {
    match tokio::time::timeout(REPLY, c.receiver().recv()).await.expect("a message in time") {
        Some(Incoming::Async(m)) => m.decode().unwrap(),
        other => panic!("expected an async message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_dies_and_comes_back() {
    let mut lb1 = lb(0);
    let lb_port = lb1.port("ipc");
    let lb_arg = format!("127.0.0.1:{lb_port}");
    let g1 = gateway(&["--lb", &lb_arg]);
    let g2 = gateway(&["--lb", &lb_arg]);
    let Some(_s1) = service(lb_port) else { return };
    let Some(_s2) = service(lb_port) else { return };
    wait_gateway_ready(&g1, 2).await;
    wait_gateway_ready(&g2, 2).await;

    // work in flight on gateway 1 when the load balancer dies
    let mut c1 = connect(&g1).await;
    c1.send_async(&user_query("sleep 1500")).unwrap();
    wait_for(&g1, "the query running", |s| {
        entry(s, "gateway").and_then(|e| e["in_flight"].as_u64()) == Some(1)
    })
    .await;
    lb1.kill();

    // the running query still answers its client
    assert_eq!(next_async(&mut c1).await, K::long(1500));
    // new work is refused clearly while there is no load balancer
    wait_for(&g2, "gateway 2 to notice", |s| s["gateway"]["lb_connected"] == false).await;
    let c2 = connect(&g2).await;
    assert_eq!(sync(&c2, "whoami").await, Err("lb unavailable".into()));
    assert_eq!(http_get(g2.addr("http"), "/healthz").await.map(|r| r.0), Some(503));

    // it comes back on the same port: services and gateways register again
    let lb2 = lb(lb_port);
    wait_for(&lb2, "both services back", |s| {
        entry(s, "load_balancer").and_then(|e| e["instances"].as_u64()) == Some(2)
    })
    .await;
    wait_for(&lb2, "both gateways back", |s| s["load_balancer"]["gateways"] == 2).await;
    wait_gateway_ready(&g1, 2).await;
    wait_gateway_ready(&g2, 2).await;
    assert!(sync(&c1, "whoami").await.is_ok());
    assert!(sync(&c2, "whoami").await.is_ok());
    assert_eq!(http_get(g2.addr("http"), "/healthz").await.map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_gateway_leaves_the_instance_busy_until_it_reports_back() {
    let lb = lb(0);
    let lb_arg = format!("127.0.0.1:{}", lb.port("ipc"));
    let mut g1 = gateway(&["--lb", &lb_arg]);
    let g2 = gateway(&["--lb", &lb_arg]);
    let Some(s) = service(lb.port("ipc")) else { return };
    wait_gateway_ready(&g1, 1).await;
    wait_gateway_ready(&g2, 1).await;

    let c1 = connect(&g1).await;
    // The query runs until the test says so. (It was `sleep 4000`, and the
    // test flaked under load: it asserted a state that lasts only as long
    // as the query, and on a loaded machine those 4 s could pass before
    // the assertion; the instance was then rightly free.)
    let hold = Hold::new("dead-gateway");
    c1.send_async(&user_query(&hold.query())).unwrap();
    // killed once the query runs on the service: the load balancer showing
    // the instance busy is not enough, it allocates before the gateway
    // dispatches (a gateway dead in between is the next tests' case)
    wait_running(&s, &hold.query());
    let busy = |s: &Value| entry(s, "load_balancer").and_then(|e| e["busy"].as_u64()) == Some(1);
    assert!(busy(&status(&lb).await), "the running instance is busy");
    g1.kill();
    wait_for(&lb, "the gateway gone", |s| s["load_balancer"]["gateways"] == 1).await;
    // the whitepaper's load balancer would free the instance now; ours keeps
    // it, and the probe it sends is answered only once the query ends
    let c2 = connect(&g2).await;
    let next = tokio::spawn(async move { sync(&c2, "whoami").await });
    wait_for(&lb, "the next request queued", |s| gauges(s) == (1, 0, 1, 1)).await;
    assert!(busy(&status(&lb).await), "instance handed out while still running");
    // the orphaned query finishes: its report frees the instance for the next one
    hold.release();
    let who = next.await.unwrap().unwrap();
    assert!(matches!(who, K::Atom(Atom::Symbol(_))));
    wait_for(&lb, "the instance free", |s| {
        entry(s, "load_balancer").and_then(|e| e["free"].as_u64()) == Some(1)
    })
    .await;
    assert_eq!(metric(&lb, "qmesh_lb_orphan_probes_total{outcome=\"released\"}").await, Some(0.0));
}

/// Issue 13's reproduction, with default settings: gateway B runs a query
/// on the only instance; a query for the same service at gateway A queues
/// at the load balancer; A stops (SIGSTOP), so that when B's query ends the
/// instance is allocated to A, which cannot send the query; then A is
/// killed. The load balancer learns from the instance (its answer to the
/// probe) that the query never came, and the next query runs — rather than
/// the instance staying busy for the request's deadline plus the stuck
/// grace (about 60 s) and then leaving the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_stopped_at_the_allocation_then_killed_loses_no_instance() {
    let lb = lb(0);
    let lb_arg = format!("127.0.0.1:{}", lb.port("ipc"));
    let mut ga = gateway(&["--lb", &lb_arg]);
    let gb = gateway(&["--lb", &lb_arg]);
    let Some(s) = service(lb.port("ipc")) else { return };
    wait_gateway_ready(&ga, 1).await;
    wait_gateway_ready(&gb, 1).await;

    let hold = Hold::new("stopped-gateway");
    let mut cb = connect(&gb).await;
    cb.send_async(&user_query(&hold.query())).unwrap();
    wait_running(&s, &hold.query());
    let ca = connect(&ga).await;
    ca.send_async(&user_query("whoami")).unwrap();
    wait_for(&lb, "A's request queued", |s| gauges(s) == (1, 0, 1, 1)).await;
    signal(&ga, "STOP");
    wait_stopped(&ga);
    hold.release();
    assert_eq!(next_async(&mut cb).await, K::long(0), "B's query ends");
    // B reported its query done: the instance went to A's queued request
    wait_for(&lb, "the instance allocated to the stopped gateway", |s| gauges(s) == (1, 0, 1, 0)).await;
    ga.kill();
    wait_for(&lb, "the gateway gone", |s| s["load_balancer"]["gateways"] == 1).await;
    // the instance serves the next query (within the gateway's default
    // timeout: without the probe it would stay busy for a minute)
    let who = sync(&cb, "whoami").await;
    assert!(matches!(who, Ok(K::Atom(Atom::Symbol(_)))), "{who:?}");
    wait_for(&lb, "the instance free", |s| gauges(s) == (1, 1, 0, 0)).await;
    let released = metric(&lb, "qmesh_lb_orphan_probes_total{outcome=\"released\"}").await;
    if released != Some(1.0) {
        // seen once in CI and never locally: everything the processes can
        // tell about how the instance was freed, for the next occurrence
        panic!(
            "the probe did not end the orphaned allocation (released {released:?})\n\
             load balancer metrics:\n{}\nservice output:\n{}",
            lb_metrics(&lb).await,
            drain_lines(&s)
        );
    }
    assert_eq!(metric(&lb, "qmesh_lb_dropped_instances_total").await, Some(0.0));
    drop(ca);
}

/// A gateway speaking gateway.q's messages takes an allocation and dies
/// before it sends the query: the instance (idle) answers the load
/// balancer's probe at once, and is free again — not dropped at the
/// deadline plus the stuck grace, as before the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_dead_before_dispatching_frees_the_instance_at_the_probe_answer() {
    let lb = lb(0);
    let Some(_s) = service(lb.port("ipc")) else { return };
    wait_for(&lb, "the instance", |s| entry(s, "load_balancer").and_then(|e| e["free"].as_u64()) == Some(1))
        .await;

    // a gateway (gateway.q's messages) takes an allocation and dies before
    // it sends the query: the instance will never report it done
    let mut gw = connect(&lb).await;
    gw.call(&K::list(vec![K::sym("registerGW"), K::sym("")])).await.unwrap();
    gw.send_async(&K::list(vec![K::sym("requestService"), K::long(1), K::sym(EQ)])).unwrap();
    let alloc = next_async(&mut gw).await;
    assert!(
        matches!(&alloc, K::List(_, items) if items.first() == Some(&K::sym("serviceAlloc"))),
        "{alloc:?}"
    );
    drop(gw);
    wait_for(&lb, "the gateway gone", |s| s["load_balancer"]["gateways"] == 0).await;
    wait_for(&lb, "the instance free again", |s| gauges(s) == (1, 1, 0, 0)).await;
    assert_eq!(metric(&lb, "qmesh_lb_orphan_probes_total{outcome=\"released\"}").await, Some(1.0));
    assert_eq!(metric(&lb, "qmesh_lb_dropped_instances_total").await, Some(0.0));
    let g = gateway(&["--lb", &format!("127.0.0.1:{}", lb.port("ipc"))]);
    wait_gateway_ready(&g, 1).await;
    assert_eq!(sync(&connect(&g).await, "1+1").await, Ok(K::long(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_killed_mid_query_fails_the_query_not_the_gateway() {
    let g = gateway(&["--embedded-lb"]);
    let gw_port = g.port("ipc");
    let Some(mut s1) = service(gw_port) else { return };
    wait_gateway_ready(&g, 1).await;
    let c = connect(&g).await;
    let running = tokio::spawn(async move {
        let r = sync(&c, "sleep 5000").await;
        (c, r)
    });
    wait_for(&g, "the query running", |s| {
        entry(s, "gateway").and_then(|e| e["in_flight"].as_u64()) == Some(1)
    })
    .await;
    s1.kill();
    let (c, r) = running.await.unwrap();
    assert_eq!(r, Err(format!("service disconnected: {EQ}")));
    wait_for(&g, "the instance gone", |s| {
        entry(s, "load_balancer").and_then(|e| e["instances"].as_u64()) == Some(0)
    })
    .await;
    assert_eq!(sync(&c, "whoami").await, Err(format!("no instance: {EQ}")));
    // a new instance takes over
    let Some(_s2) = service(gw_port) else { return };
    wait_gateway_ready(&g, 1).await;
    assert!(sync(&c, "whoami").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_work_in_flight_clearly_and_exits_zero() {
    let mut g = gateway(&["--embedded-lb", "--shutdown-grace", "200ms"]);
    let Some(_s) = service(g.port("ipc")) else { return };
    wait_gateway_ready(&g, 1).await;
    let c = connect(&g).await;
    let running = tokio::spawn(async move { sync(&c, "sleep 5000").await });
    wait_for(&g, "the query running", |s| {
        entry(s, "gateway").and_then(|e| e["in_flight"].as_u64()) == Some(1)
    })
    .await;
    let code = tokio::task::spawn_blocking(move || g.terminate()).await.unwrap();
    assert_eq!(running.await.unwrap(), Err("shutting down".into()));
    assert!(code.success(), "{code:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_and_environment_give_the_flags() {
    let dir = std::env::temp_dir().join(format!("qmesh-routing-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("qmesh.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nembedded-lb = true\nbind = \"127.0.0.1\"\nport = 0\nhttp = 0\ntimeout = \"150ms\"\n",
    )
    .unwrap();
    let g = Process::qmesh(bin(), &["--config", cfg.to_str().unwrap(), "gateway"], &["ipc", "http"]);
    let Some(_s) = service(g.port("ipc")) else { return };
    wait_gateway_ready(&g, 1).await;
    let c = connect(&g).await;
    // the default deadline came from the file
    assert_eq!(sync(&c, "sleep 2000").await, Err("timeout".into()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-u` on both processes: no password or a wrong one is refused at the
/// handshake (no reply byte, as q does); the right one gets the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_guards_the_load_balancer_and_the_gateway() {
    let dir = std::env::temp_dir().join(format!("qmesh-routing-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users.txt");
    std::fs::write(&users, "alice:secret\n").unwrap();
    let u = users.to_str().unwrap();
    let l = Process::qmesh(
        bin(),
        &["lb", "--bind", "127.0.0.1", "-p", "0", "--http", "0", "-u", u],
        &["ipc", "http"],
    );
    let g = gateway(&["--embedded-lb", "-u", u]);
    for (p, what) in [(&l, "lb"), (&g, "gateway")] {
        let port = p.port("ipc");
        for refused in [format!(":127.0.0.1:{port}"), format!(":127.0.0.1:{port}:alice:wrong")] {
            let r = Connection::connect(&Address::parse(&refused).unwrap(), ClientOptions::default()).await;
            assert!(matches!(r, Err(IpcError::Access)), "{what} let {refused} in: {r:?}");
        }
        let ok = Address::parse(&format!(":127.0.0.1:{port}:alice:secret")).unwrap();
        let c = Connection::connect(&ok, ClientOptions::default()).await.unwrap();
        if what == "lb" {
            // registerGW answers with the (empty) resource table
            let reply = c.call(&K::list(vec![K::sym("registerGW"), K::GenericNull])).await.unwrap();
            assert!(matches!(reply.decode().unwrap(), K::Table(_)), "registerGW gave a table");
        } else {
            assert_eq!(sync(&c, "1+1").await, Err(format!("unknown service: {EQ}")));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
