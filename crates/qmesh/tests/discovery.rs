//! `qmesh discovery` as a process: listening lines, `/healthz`, thresholds
//! from the config file and `QMESH_*`, every qmesh server kind
//! heartbeating to it with `--discovery`, a restart that keeps the table
//! (stale until beats resume), and SIGTERM.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use qmesh_testkit::Process;
use serde_json::Value;

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn processes(addr: SocketAddr) -> Vec<Value> {
    let (status, body) = get(addr, "/api/processes");
    assert_eq!(status, 200, "{body}");
    let j: Value = serde_json::from_str(&body).unwrap();
    j["processes"].as_array().unwrap().clone()
}

/// Waits until `f` holds on the process list (bounded; never a timing
/// assertion).
fn wait_until(addr: SocketAddr, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = processes(addr);
        if f(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what}: not reached; {p:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find<'a>(p: &'a [Value], kind: &str) -> Option<&'a Value> {
    p.iter().find(|x| x["kind"] == kind)
}

#[test]
fn every_server_kind_heartbeats_to_discovery_which_survives_a_restart() {
    let bin = env!("CARGO_BIN_EXE_qmesh");
    let dir = std::env::temp_dir().join(format!("qmesh-discovery-proc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Thresholds from the config file, one overridden by the environment.
    let config = dir.join("qmesh.toml");
    std::fs::write(
        &config,
        "[discovery]\nwarn-after = \"20s\"\nerror-after = \"40s\"\nkind-policy = [\"rdb=1s/2s/1m/2\"]\n",
    )
    .unwrap();
    let data = dir.join("data");
    let start = |port: &str| {
        let mut cmd = Command::new(bin);
        cmd.args([
            "--config",
            config.to_str().unwrap(),
            "discovery",
            "--bind",
            "127.0.0.1",
            "-p",
            port,
            "--http",
            "0",
        ])
        .args(["--data", data.to_str().unwrap()])
        .env("QMESH_ERROR_AFTER", "50s");
        Process::start(cmd, &["ipc", "http"])
    };
    let mut disc = start("0");
    let ipc = disc.addr("ipc");
    let http = disc.addr("http");
    assert_eq!(get(http, "/healthz").0, 200);
    let (_, page) = get(http, "/");
    assert!(page.contains("<table") && page.contains("aria-live"), "the dashboard is served");

    let d = ipc.to_string();
    let lb = Process::qmesh(
        bin,
        &["lb", "--bind", "127.0.0.1", "-p", "0", "--http", "0", "--name", "lb1", "--discovery", &d],
        &["ipc", "http"],
    );
    let gw = Process::qmesh(
        bin,
        &[
            "gateway",
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--lb",
            &lb.addr("ipc").to_string(),
            "--name",
            "gw1",
            "--discovery",
            &d,
        ],
        &["ipc"],
    );
    let svc = Process::qmesh(
        bin,
        &[
            "service",
            "--name",
            "EQ",
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--lb",
            &lb.addr("ipc").to_string(),
            "--discovery",
            &d,
        ],
        &["ipc"],
    );
    let p = wait_until(http, "lb, gateway and service register", |p| {
        ["lb", "gateway", "service"].iter().all(|k| find(p, k).is_some_and(|x| x["state"] == "active"))
    });
    let l = find(&p, "lb").unwrap();
    assert_eq!((l["name"].as_str(), l["port"].as_u64()), (Some("lb1"), Some(u64::from(lb.port("ipc")))));
    assert_eq!(l["http"].as_u64(), Some(u64::from(lb.port("http"))));
    assert_eq!(l["pid"].as_i64(), Some(i64::from(lb.pid())));
    assert!(l["qVersion"].as_str().unwrap().starts_with("qmesh-"));
    let s = find(&p, "service").unwrap();
    assert_eq!(s["name"].as_str(), Some(format!("EQ:{}", svc.port("ipc")).as_str()));
    assert_eq!(find(&p, "gateway").unwrap()["name"], "gw1");
    // /sd lists the one with an HTTP port.
    let (_, sd) = get(http, "/sd");
    assert!(sd.contains(&format!("127.0.0.1:{}", lb.port("http"))), "{sd}");
    let (_, metrics) = get(http, "/metrics");
    assert!(
        metrics.contains(r#"qmesh_discovery_process_state{process="lb1",kind="lb",state="active"} 1"#),
        "{metrics}"
    );

    // SIGTERM: exits 0; restarted on the same port, it shows what it knew
    // as stale, and the clients reconnect by themselves.
    assert!(disc.terminate().success());
    std::thread::sleep(Duration::from_millis(200));
    disc = start(&ipc.port().to_string());
    let http = disc.addr("http");
    let p = processes(http);
    assert!(find(&p, "lb").is_some_and(|x| x["stale"] == true || x["state"] == "active"), "{p:#?}");
    wait_until(http, "heartbeats resume after the restart", |p| {
        ["lb", "gateway", "service"]
            .iter()
            .all(|k| find(p, k).is_some_and(|x| x["stale"] == false && x["state"] == "active"))
    });

    // A killed process goes to disconnected.
    drop(gw);
    wait_until(http, "the killed gateway is disconnected", |p| {
        find(p, "gateway").is_some_and(|x| x["state"] == "disconnected")
    });
    drop((svc, lb));
    assert!(disc.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `POST /query` on the gateway's HTTP port: `(status, body)`.
fn post_query(addr: SocketAddr, service: &str, query: &str) -> (u16, String) {
    let body = serde_json::json!({"service": service, "query": query}).to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /query HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Queries until one answers 200 (bounded); the last answer otherwise.
fn query_until_answered(gw_http: SocketAddr, service: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = post_query(gw_http, service, "select count(*) as n from trade");
        if status == 200 || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_gateway_given_only_discovery_finds_its_load_balancer_and_follows_it_when_it_moves() {
    let bin = env!("CARGO_BIN_EXE_qmesh");
    let disc = Process::qmesh(
        bin,
        &["discovery", "--bind", "127.0.0.1", "-p", "0", "--http", "0"],
        &["ipc", "http"],
    );
    let d = disc.addr("ipc").to_string();
    let start_lb = |name: &str| {
        Process::qmesh(
            bin,
            &["lb", "--bind", "127.0.0.1", "-p", "0", "--name", name, "--discovery", &d],
            &["ipc"],
        )
    };
    let start_svc = |name: &str, lb: &Process| {
        Process::qmesh(
            bin,
            &[
                "service",
                "--name",
                name,
                "--demo",
                "--demo-rows",
                "10",
                "--bind",
                "127.0.0.1",
                "-p",
                "0",
                "--lb",
                &lb.addr("ipc").to_string(),
            ],
            &["ipc"],
        )
    };
    let mut lb1 = start_lb("lb1");
    let _svc1 = start_svc("EQ1", &lb1);
    // no --lb: the gateway asks discovery
    let gw = Process::qmesh(
        bin,
        &["gateway", "--bind", "127.0.0.1", "-p", "0", "--http", "0", "--name", "gw", "--discovery", &d],
        &["ipc", "http"],
    );
    let gw_http = gw.addr("http");
    let (status, body) = query_until_answered(gw_http, "EQ1");
    assert_eq!(status, 200, "a query through the load balancer found in discovery: {body}");

    // The load balancer moves: killed, another one elsewhere, a service registered with it.
    lb1.kill();
    let lb2 = start_lb("lb2");
    let _svc2 = start_svc("EQ2", &lb2);
    let (status, body) = query_until_answered(gw_http, "EQ2");
    assert_eq!(status, 200, "the gateway followed the load balancer to its new address: {body}");
    let http = disc.addr("http");
    let p = wait_until(http, "the gateway still listed active", |p| {
        p.iter().any(|x| x["name"] == "gw" && x["state"] == "active")
    });
    assert!(p.iter().any(|x| x["name"] == "lb2"));
}
