//! One HTTP dialect and one error catalog, through real processes: a
//! `qmesh lb`, a `qmesh service` instance and a `qmesh gateway`, each with
//! its HTTP port.
//!
//! * The same `{"query": …}` body straight to the instance and (with
//!   `"service"`) through the gateway answers the same JSON, byte for byte.
//! * An error is the same catalog word over kdb+ IPC and over HTTP, at the
//!   instance (malformed SQL, an unknown table, a too-long table name) and
//!   at the gateway (a too-long service name, a service's error).
//!
//! Waiting is for a state (the gateway answering), never for a time.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use qmesh_codec::K;
use qmesh_ipc::{Address, ClientOptions, Connection, IpcError};
use qmesh_process::ErrorKind;
use qmesh_testkit::Process;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAME: &str = "EQUITY_MARKET_RDB";
/// How long the estate may take to come up (the service registers with the
/// load balancer, the gateway learns of it).
const SETTLE: Duration = Duration::from_secs(40);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qmesh")
}

/// `POST path` with `body`; the status and the body (de-chunked).
async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_string() })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

async fn connect(addr: SocketAddr) -> Connection {
    let a = Address::parse(&addr.to_string()).unwrap();
    Connection::connect(&a, ClientOptions::default()).await.unwrap()
}

/// The catalog word of a q error, or a panic when the call succeeded.
async fn ipc_word(conn: &Connection, msg: &K) -> (ErrorKind, String) {
    match conn.call(msg).await {
        Err(IpcError::Remote(text)) => {
            (ErrorKind::from_word(&text).unwrap_or_else(|| panic!("not a catalog word: {text}")), text)
        }
        other => panic!("a q error expected, got {other:?}"),
    }
}

/// The catalog word of an HTTP error answer; its status must be the word's.
async fn http_word(addr: SocketAddr, body: &Value) -> (ErrorKind, String) {
    let (status, text) = post(addr, "/query", &body.to_string()).await;
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let word = v["error"].as_str().unwrap_or_else(|| panic!("an error expected: {text}"));
    let kind = ErrorKind::from_word(word).unwrap_or_else(|| panic!("not a catalog word: {word}"));
    assert_eq!(status, kind.http_status(), "{text}");
    (kind, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_and_the_gateway_speak_one_dialect() {
    let lb = Process::qmesh(bin(), &["lb", "--bind", "127.0.0.1", "-p", "0"], &["ipc"]);
    let lb_addr = lb.addr("ipc").to_string();
    let service = Process::qmesh(
        bin(),
        &[
            "service",
            "--name",
            NAME,
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--http",
            "0",
            "--lb",
            &lb_addr,
            "--demo",
            "--demo-rows",
            "2000",
        ],
        &["ipc", "http"],
    );
    let gw = Process::qmesh(
        bin(),
        &["gateway", "--bind", "127.0.0.1", "-p", "0", "--http", "0", "--lb", &lb_addr],
        &["ipc", "http"],
    );
    let (svc_http, gw_http) = (service.addr("http"), gw.addr("http"));

    // The gateway answers once the instance has registered.
    let count = json!({"service": NAME, "query": "select count(*) as n from trade"});
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, body) = post(gw_http, "/query", &count.to_string()).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never answered: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The same query, the same JSON.
    for (query, format) in [
        ("select count(*) as n from trade", None),
        ("select sym, max(price) as px, sum(size) as vol from trade group by sym order by sym", None),
        ("select * from trade where size > 500", None),
        ("select * from quote where bid > 0 limit 20", Some("columns")),
        ("select sym, avg(bid) as bid from quote group by sym order by sym", Some("columns")),
    ] {
        let mut direct = json!({"query": query});
        if let Some(f) = format {
            direct["format"] = json!(f);
        }
        let mut routed = direct.clone();
        routed["service"] = json!(NAME);
        let (s1, straight) = post(svc_http, "/query", &direct.to_string()).await;
        let (s2, through) = post(gw_http, "/query", &routed.to_string()).await;
        assert_eq!((s1, s2), (200, 200), "{query}: {straight} / {through}");
        assert_eq!(straight, through, "{query}");
        let v: Value = serde_json::from_str(&straight).unwrap();
        assert!(v["type"].is_i64() && !v["result"].is_null(), "{straight}");
    }

    // Errors: one word over IPC and HTTP at the instance.
    let conn = connect(service.addr("ipc")).await;
    let long_table = format!("select * from {}", "t".repeat(300));
    for (query, want) in [
        ("selec sym fro trade", ErrorKind::BadRequest),
        ("select * from nope", ErrorKind::UnknownTable),
        (long_table.as_str(), ErrorKind::Limit),
    ] {
        let (over_ipc, text) = ipc_word(&conn, &K::string(query)).await;
        let (over_http, body) = http_word(svc_http, &json!({"query": query})).await;
        assert_eq!(over_ipc, want, "{text}");
        assert_eq!(over_http, want, "{body}");
    }

    // And at the gateway: a too-long service name, a service's error.
    let conn = connect(gw.addr("ipc")).await;
    let long_name = "S".repeat(2000);
    let user_query = |service: &str, query: &str| {
        K::list(vec![K::sym("userQuery"), K::list(vec![K::sym(service), K::string(query)])])
    };
    for (service, query, want) in [
        (long_name.as_str(), "select 1", ErrorKind::Limit),
        (NAME, "select * from nope", ErrorKind::ServiceError),
    ] {
        let (over_ipc, text) = ipc_word(&conn, &user_query(service, query)).await;
        let (over_http, body) = http_word(gw_http, &json!({"service": service, "query": query})).await;
        assert_eq!(over_ipc, want, "{text}");
        assert_eq!(over_http, want, "{body}");
    }
}
