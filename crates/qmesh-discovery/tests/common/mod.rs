#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test
#![allow(dead_code)]
//! Shared by the registry's integration tests: a registry on loopback, kdb+
//! clients, an HTTP getter and a WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use qmesh_codec::{Atom, K};
use qmesh_discovery::{Bound, Handle, Options};
use qmesh_ipc::{Address, ClientOptions, Connection};
use qmesh_process::Shutdown;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Generous bound on waiting for an event that must come (a loaded CI
/// machine); never a timing assertion.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Registry {
    pub handle: Handle,
    pub ipc: SocketAddr,
    pub http: SocketAddr,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), qmesh_discovery::DiscoveryError>>,
}

impl Registry {
    pub async fn start(mut options: Options) -> Registry {
        options.http = Some("127.0.0.1:0".parse().unwrap());
        let bound: Bound = qmesh_discovery::bind(options).await.unwrap();
        let (handle, ipc, http) = (bound.handle(), bound.ipc_addr(), bound.http_addr().unwrap());
        let shutdown = Shutdown::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        Registry { handle, ipc, http, shutdown, task }
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap();
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&Address::tcp("127.0.0.1", self.ipc.port()), ClientOptions::default())
            .await
            .unwrap()
    }

    /// Waits until `f` holds for the process `name` (or its absence).
    pub async fn wait_for(&self, what: &str, f: impl Fn(Option<qmesh_discovery::registry::Process>) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if f(self.handle.get(what)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: condition not reached; row {:?}",
                self.handle.get(what)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    pub async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// A plain HTTP/1.1 GET; (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    // chunked bodies: take the JSON between the chunk sizes
    let body =
        if out.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

/// The blog's heartbeat dictionary, with the types its `.client.publish`
/// sends.
pub fn blog_payload(name: &str, counter: i64) -> K {
    K::dict(
        K::syms(["process", "ip", "address", "pid", "qVersion", "counter", "lastHb"]),
        K::list(vec![
            K::sym(name),
            K::sym("127.0.0.1"),
            K::sym(":testhost:5001"),
            K::Atom(Atom::Int(4242)),
            K::sym("4v2021.07.12"),
            K::long(counter),
            K::Atom(Atom::Time(55_277_287)),
        ]),
    )
}

/// A heartbeat with our richer keys.
pub fn rich_payload(
    name: &str,
    kind: &str,
    counter: i64,
    status: &str,
    attrs: &[(&str, &str)],
    http: Option<i32>,
) -> K {
    let mut keys = vec!["process", "ip", "address", "pid", "counter", "kind", "status", "note"];
    let mut vals = vec![
        K::sym(name),
        K::sym("127.0.0.1"),
        K::sym(format!(":host-{kind}:6000")),
        K::Atom(Atom::Int(100)),
        K::long(counter),
        K::sym(kind),
        K::sym(status),
        K::string(if status == "ok" { "" } else { "self-reported" }),
    ];
    keys.push("attrs");
    vals.push(K::dict(
        K::syms(attrs.iter().map(|(k, _)| *k)),
        K::list(attrs.iter().map(|(_, v)| K::sym(v)).collect()),
    ));
    if let Some(h) = http {
        keys.push("http");
        vals.push(K::Atom(Atom::Int(h)));
    }
    K::dict(K::syms(keys), K::list(vals))
}

pub fn store_hb(payload: K) -> K {
    K::list(vec![K::sym(".master.storeHb"), payload])
}

/// A WebSocket client of `/ws`.
pub struct Ws {
    pub stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(http: SocketAddr) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws")).await.unwrap();
        let mut ws = Ws { stream };
        let hello = ws.next().await.expect("hello");
        assert_eq!(hello["type"], "hello", "{hello}");
        ws
    }

    /// A client whose socket's receive buffer is small and fixed (no
    /// autotuning up to tcp_rmem's tens of MB), so a client that stops
    /// reading backs the server up quickly.
    pub async fn connect_small_buffer(http: SocketAddr) -> Ws {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let tcp = socket.connect(http).await.unwrap();
        let (stream, _) = tokio_tungstenite::client_async(
            format!("ws://{http}/ws"),
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        )
        .await
        .unwrap();
        let mut ws = Ws { stream };
        let hello = ws.next().await.expect("hello");
        assert_eq!(hello["type"], "hello", "{hello}");
        ws
    }

    pub async fn send(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.unwrap();
    }

    /// The next JSON message (`None` when the socket closed).
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next()).await.expect("a message in time")?;
            match m {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}
