//! Every server kind stands on the process shell: each answers
//! `GET /api/identity` with who it is and where it listens, and prints its
//! listening lines in the one format.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use qmesh_testkit::Process;
use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qmesh")
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut out)).await.unwrap().unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap()
}

async fn check(p: &Process, kind: &str, name: &str) {
    let id = get_json(p.addr("http"), "/api/identity").await;
    assert_eq!(id["kind"], kind, "{id}");
    assert_eq!(id["name"], name, "{id}");
    assert_eq!(id["pid"], p.pid(), "{id}");
    assert_eq!(id["ipc_port"], p.port("ipc"), "{id}");
    assert_eq!(id["http_port"], p.port("http"), "{id}");
    assert_eq!(id["advertised"], format!(":127.0.0.1:{}", p.port("ipc")), "{id}");
    assert_eq!(id["version"], env!("CARGO_PKG_VERSION"), "{id}");
    assert!(id["started_unix_ms"].as_u64().is_some_and(|t| t > 0), "{id}");
    assert!(id["host"].as_str().is_some_and(|h| !h.is_empty()), "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_kind_answers_api_identity() {
    let common = ["--bind", "127.0.0.1", "-p", "0", "--http", "0"];
    let lb = Process::qmesh(bin(), &[&["lb", "--name", "lb1"][..], &common[..]].concat(), &["ipc", "http"]);
    check(&lb, "lb", "lb1").await;
    let gw =
        Process::qmesh(bin(), &[&["gateway", "--embedded-lb"][..], &common[..]].concat(), &["ipc", "http"]);
    check(&gw, "gateway", "gateway").await;
    let svc = Process::qmesh(
        bin(),
        &[&["service", "--name", "EQUITY_MARKET_RDB", "--max-message-bytes", "1MiB"][..], &common[..]]
            .concat(),
        &["ipc", "http"],
    );
    check(&svc, "service", "EQUITY_MARKET_RDB").await;
}
