//! Helpers shared by the process tests: for routing (`routing.rs`, `mserve.rs`),
//! reading a gateway's `/api/services` and waiting, bounded, for a state; for
//! log shipping, [`rt`].
#![allow(dead_code, clippy::unwrap_used)] // each test file uses its own subset

pub mod rt;

use std::net::SocketAddr;
use std::time::Duration;

use qmesh_testkit::Process;
use serde_json::Value;

/// Longest wait for the estate to reach a state (never a timing assertion).
pub const SETTLE: Duration = Duration::from_secs(40);
/// Longest wait for one answer.
pub const REPLY: Duration = Duration::from_secs(30);

pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(REPLY, s.read_to_string(&mut out)).await.ok()?.ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}

pub async fn status(p: &Process) -> Value {
    match http_get(p.addr("http"), "/api/services").await {
        Some((200, body)) => serde_json::from_str(&body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

pub async fn wait_for(p: &Process, what: &str, f: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let s = status(p).await;
        if f(&s) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}: {s}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
