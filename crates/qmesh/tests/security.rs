//! `-u` guards every door of every server kind, and an estate where every
//! process has `-u` works end to end with `--credentials`.
//!
//! Real `qmesh` processes (discovery, lb, service, gateway, rt), each with
//! the same users file: every HTTP route refuses no credentials and wrong
//! ones (`401`, `WWW-Authenticate: Basic`) and answers the right ones;
//! `/healthz` opens only with `--open-health`; discovery's dashboard and
//! `/ws` ask too. The processes reach each other (service → lb, gateway →
//! lb and instance, everyone → discovery) with the estate user from their
//! credentials file, and a query goes through the gateway. Repeated wrong
//! passwords from one address get `429`.
//!
//! Waiting is for states (a query answered, a process listed), never for a
//! time.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use qmesh_codec::K;
use qmesh_ipc::{Address, ClientOptions, Connection, IpcError};
use qmesh_testkit::Process;

const SETTLE: Duration = Duration::from_secs(40);
const REPLY: Duration = Duration::from_secs(30);
const SVC: &str = "EQUITY";

/// `alice:secret`, base64 (HTTP Basic).
const ALICE: &str = "YWxpY2U6c2VjcmV0";
/// `alice:wrong`, base64.
const WRONG: &str = "YWxpY2U6d3Jvbmc=";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qmesh")
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("qmesh-security-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One HTTP/1.1 request; (status, raw head, body). `auth`: base64 of
/// `user:password`.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    extra: &str,
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth.map(|a| format!("Authorization: Basic {a}\r\n")).unwrap_or_default();
    let close = if extra.contains("Connection:") { "" } else { "Connection: close\r\n" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{close}{auth}{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // an upgraded WebSocket stays open: read what comes within the reply time
    let _ = tokio::time::timeout(REPLY, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                // a WebSocket upgrade, or a kept-alive answer read whole
                if head.starts_with("http/1.1 101") || len.is_some_and(|n| out.len() >= end + 4 + n) {
                    break;
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String, String) {
    http(addr, "GET", path, auth, "", "").await
}

/// The same users on every door of `p` (`kind` as in `/api/identity`).
async fn every_route_asks(p: &Process, kind: &str, paths: &[&str]) {
    let a = p.addr("http");
    for path in paths {
        let (st, head, body) = get(a, path, None).await;
        assert_eq!(st, 401, "{kind} {path} without credentials: {head}\n{body}");
        assert!(head.contains("www-authenticate: basic"), "{kind} {path}: {head}");
        assert!(body.contains(r#""error":"access""#), "{kind} {path}: {body}");
        let (st, _, body) = get(a, path, Some(WRONG)).await;
        assert_eq!(st, 401, "{kind} {path} with a wrong password: {body}");
        let (st, _, body) = get(a, path, Some(ALICE)).await;
        let expected = match *path {
            "/healthz" => st == 200 || st == 503,
            "/nowhere" => st == 404,
            _ => st == 200,
        };
        assert!(expected, "{kind} {path} as alice: {st} {body}");
    }
    let (_, _, body) = get(a, "/api/identity", Some(ALICE)).await;
    assert!(body.contains(&format!(r#""kind":"{kind}""#)), "{body}");
}

fn server(args: &[&str]) -> Process {
    Process::qmesh(bin(), args, &["ipc", "http"])
}

/// `qmesh KIND` on free loopback ports with `-u USERS --permissions PERMS`
/// and `extra`.
fn locked_down(kind: &str, users: &str, perms: &str, extra: &[&str]) -> Process {
    let mut args =
        vec![kind, "--bind", "127.0.0.1", "-p", "0", "--http", "0", "-u", users, "--permissions", perms];
    args.extend_from_slice(extra);
    server(&args)
}

/// `qmesh [--credentials C] q ADDR EXPR`: (exit success, stdout).
fn q(credentials: Option<&str>, addr: &str, expr: &str) -> (bool, String) {
    let mut cmd = std::process::Command::new(bin());
    if let Some(c) = credentials {
        cmd.args(["--credentials", c]);
    }
    let out = cmd.args(["q", addr, expr]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        match f().await {
            Ok(()) => return,
            Err(last) => {
                assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}: {last}")
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_asks_for_the_users_and_an_authenticated_estate_runs_end_to_end() {
    let dir = Dir::new("estate");
    let users = dir.file("users.txt", "alice:secret\nestate:estatepw\n");
    // what each process sends when it opens a connection itself
    let creds = dir.file("credentials", "# the estate's own user\n127.0.0.1:*:estate:estatepw\n");
    let u = users.as_str();
    let c = creds.as_str();
    let disc = server(&["discovery", "--bind", "127.0.0.1", "-p", "0", "--http", "0", "-u", u]);
    let d = format!("127.0.0.1:{}", disc.port("ipc"));
    let lb = server(&[
        "--credentials",
        c,
        "lb",
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--http",
        "0",
        "-u",
        u,
        "--discovery",
        &d,
    ]);
    let l = format!("127.0.0.1:{}", lb.port("ipc"));
    let svc = server(&[
        "--credentials",
        c,
        "service",
        "--name",
        SVC,
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--http",
        "0",
        "-u",
        u,
        "--lb",
        &l,
        "--discovery",
        &d,
        "--demo",
        "--demo-rows",
        "1000",
    ]);
    let gw = server(&[
        "--credentials",
        c,
        "gateway",
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--http",
        "0",
        "-u",
        u,
        "--lb",
        &l,
        "--discovery",
        &d,
        "--open-health",
    ]);
    let rt = server(&[
        "rt",
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--http",
        "0",
        "-u",
        u,
        "--data",
        &dir.path("rt"),
        "--stream",
        "trades",
    ]);

    // one rule for every door
    every_route_asks(&lb, "lb", &["/api/identity", "/api/services", "/metrics", "/healthz", "/nowhere"])
        .await;
    every_route_asks(&svc, "service", &["/api/identity", "/api/tables", "/metrics", "/healthz"]).await;
    every_route_asks(&gw, "gateway", &["/api/identity", "/api/services", "/metrics"]).await;
    every_route_asks(&rt, "rt", &["/api/identity", "/api/streams", "/metrics", "/healthz"]).await;
    every_route_asks(&disc, "discovery", &["/", "/app.js", "/api/processes", "/sd", "/metrics", "/healthz"])
        .await;
    // --open-health opens /healthz only
    let (st, _, _) = get(gw.addr("http"), "/healthz", None).await;
    assert!(st == 200 || st == 503, "the gateway's open /healthz: {st}");
    // POST too
    let (st, _, _) = http(svc.addr("http"), "POST", "/query", None, "", "select count(*) from trade").await;
    assert_eq!(st, 401);
    // the dashboard's WebSocket: the browser sends its Basic credentials on the upgrade
    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (st, _, _) = http(disc.addr("http"), "GET", "/ws", None, ws, "").await;
    assert_eq!(st, 401, "/ws without credentials");
    let (st, head, _) = http(disc.addr("http"), "GET", "/ws", Some(ALICE), ws, "").await;
    assert_eq!(st, 101, "/ws as alice: {head}");

    // an estate where every process has -u: service → lb, gateway → lb and
    // instance, all → discovery, with the estate user of --credentials
    let body = format!(r#"{{"service":"{SVC}","query":"select count(*) as n from trade"}}"#);
    wait_until("a query through the gateway", || {
        let body = body.clone();
        let a = gw.addr("http");
        async move {
            let (st, _, b) =
                http(a, "POST", "/query", Some(ALICE), "Content-Type: application/json\r\n", &body).await;
            if st == 200 && b.contains("1000") { Ok(()) } else { Err(format!("{st} {b}")) }
        }
    })
    .await;
    wait_until("every process heartbeating to discovery", || {
        let a = disc.addr("http");
        async move {
            let (st, _, b) = get(a, "/api/processes", Some(ALICE)).await;
            let all = ["\"lb\"", "\"gateway\"", &format!("\"{SVC}:")].iter().all(|n| b.contains(n));
            if st == 200 && all { Ok(()) } else { Err(format!("{st} {b}")) }
        }
    })
    .await;

    // qmesh q: the credentials file answers for an address without a user
    let s = format!("127.0.0.1:{}", svc.port("ipc"));
    let (ok, out) = q(Some(c), &s, "select count(*) as n from trade");
    assert!(ok && out.contains("1000"), "qmesh q with --credentials: {out}");
    let (ok, _) = q(None, &s, "select count(*) as n from trade");
    assert!(!ok, "qmesh q without credentials is refused");
    let (ok, out) = q(None, &format!(":{s}:alice:secret"), "select count(*) as n from trade");
    assert!(ok && out.contains("1000"), "an address's own user wins: {out}");
    // IPC on the stream node and discovery: the same users
    for p in [&rt, &disc] {
        let port = p.port("ipc");
        let r = Connection::connect(
            &Address::parse(&format!("127.0.0.1:{port}")).unwrap(),
            ClientOptions::default(),
        )
        .await;
        assert!(matches!(r, Err(IpcError::Access)), "{port}: {r:?}");
        let ok = Address::parse(&format!(":127.0.0.1:{port}:alice:secret")).unwrap();
        assert!(Connection::connect(&ok, ClientOptions::default()).await.is_ok());
    }
    // `qmesh rt reset` over the node's HTTP API: refused without a user,
    // done with the address's own user or the credentials file's
    let rt_http = rt.addr("http").to_string();
    let reset = |pre: &[&str], addr: &str| {
        let out = std::process::Command::new(bin())
            .args(pre)
            .args(["rt", "reset", addr, "trades"])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = reset(&[], &rt_http);
    assert!(!ok && out.contains("401"), "rt reset without a user: {out}");
    let (ok, out) = reset(&[], &format!(":{rt_http}:alice:secret"));
    assert!(ok && out.contains("\"to\""), "rt reset as alice: {out}");
    let (ok, out) = reset(&["--credentials", c], &rt_http);
    assert!(ok && out.contains("\"to\""), "rt reset with --credentials: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_from_one_address_are_slowed() {
    let dir = Dir::new("slow");
    let users = dir.file("users.txt", "alice:secret\n");
    let lb = server(&["lb", "--bind", "127.0.0.1", "-p", "0", "--http", "0", "-u", &users]);
    let a = lb.addr("http");
    // the first failures are free (a person mistyping); then the address waits
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let (st, head, _) = get(a, "/api/identity", Some(WRONG)).await;
        statuses.push(st);
        if st == 429 {
            assert!(head.contains("retry-after:"), "{head}");
            break;
        }
    }
    assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

/// `bob:pw`, base64.
const BOB: &str = "Ym9iOnB3";

async fn gw_query(gw: &Process, auth: &str) -> (u16, String) {
    let body = format!(r#"{{"service":"{SVC}","query":"select count(*) as n from trade"}}"#);
    let (st, _, b) =
        http(gw.addr("http"), "POST", "/query", Some(auth), "Content-Type: application/json\r\n", &body)
            .await;
    (st, b)
}

async fn ipc_query(gw: &Process, user: &str, pw: &str) -> Result<(), String> {
    use qmesh_codec::K;
    let a = Address::parse(&format!(":127.0.0.1:{}:{user}:{pw}", gw.port("ipc"))).unwrap();
    let c = Connection::connect(&a, ClientOptions::default()).await.map_err(|e| e.to_string())?;
    let uq = K::list(vec![
        K::sym("userQuery"),
        K::list(vec![K::sym(SVC), K::string("select count(*) as n from trade")]),
    ]);
    match tokio::time::timeout(REPLY, c.call(&uq)).await.expect("a reply in time") {
        Ok(_) => Ok(()),
        Err(IpcError::Remote(t)) => Err(t),
        Err(e) => Err(e.to_string()),
    }
}

/// The permissions file: a user without a grant for a service gets
/// `'access` through the gateway (IPC and HTTP); once the file grants it,
/// without a restart, the same user gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permissions_file_decides_who_queries_which_service_and_is_reloaded() {
    let dir = Dir::new("perms");
    let users = dir.file("users.txt", "alice:secret\nbob:pw\nestate:estatepw\n");
    let creds = dir.file("credentials", "*:*:estate:estatepw\n");
    let perms = dir.file("permissions", "# who may query what\nalice query EQUITY,FX\n");
    let (u, c) = (users.as_str(), creds.as_str());
    let lb = server(&["--credentials", c, "lb", "--bind", "127.0.0.1", "-p", "0", "--http", "0", "-u", u]);
    let l = format!("127.0.0.1:{}", lb.port("ipc"));
    let _svc = server(&[
        "--credentials",
        c,
        "service",
        "--name",
        SVC,
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--http",
        "0",
        "-u",
        u,
        "--lb",
        &l,
        "--demo",
        "--demo-rows",
        "1000",
    ]);
    let gw = server(&[
        "--credentials",
        c,
        "gateway",
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--http",
        "0",
        "-u",
        u,
        "--lb",
        &l,
        "--permissions",
        &perms,
    ]);
    wait_until("alice's query through the gateway", || async {
        match gw_query(&gw, ALICE).await {
            (200, b) if b.contains("1000") => Ok(()),
            (st, b) => Err(format!("{st} {b}")),
        }
    })
    .await;
    assert_eq!(ipc_query(&gw, "alice", "secret").await, Ok(()));
    // bob is a user (-u lets him in) without a grant
    let (st, b) = gw_query(&gw, BOB).await;
    assert_eq!(st, 403, "{b}");
    assert!(b.contains(r#""error":"access""#) && b.contains("bob may not query EQUITY"), "{b}");
    assert_eq!(ipc_query(&gw, "bob", "pw").await, Err("access: bob may not query EQUITY".to_owned()));

    // grant it; no restart
    std::fs::write(&perms, "# who may query what\nalice query EQUITY,FX\nbob query EQUITY\n").unwrap();
    wait_until("bob's grant in force", || async {
        match gw_query(&gw, BOB).await {
            (200, b) if b.contains("1000") => Ok(()),
            (st, b) => Err(format!("{st} {b}")),
        }
    })
    .await;
    assert_eq!(ipc_query(&gw, "bob", "pw").await, Ok(()));
}

/// Runs `qmesh --credentials C rt publish …` (a `Publisher` shipping its
/// local log) and returns the child, its output piped.
fn rt_publisher(credentials: &str, port: u16, path: &str, to: u32) -> std::process::Child {
    std::process::Command::new(bin())
        .args(["--credentials", credentials, "rt", "publish", "--stream", "trades"])
        .args(["--cluster", &format!("127.0.0.1:{port}"), "--path", path, "--publisher-id", "p1"])
        .args(["--to", &to.to_string(), "--batch", "10"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Lines of `r` until one contains `want` (`Err` with what was read if the
/// stream ends first).
fn read_until(r: impl std::io::Read, want: &str) -> Result<(), String> {
    use std::io::BufRead;
    let mut seen = String::new();
    for line in std::io::BufReader::new(r).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.contains(want) {
            return Ok(());
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    Err(seen)
}

/// The stream node asks the permissions file for every way in: `.rt.pub`
/// and a `Publisher`'s shipped log need `publish`; `.rt.sub` and
/// `.rt.get_latest_position` need `subscribe`; a change of the file is in
/// force without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_node_checks_publish_and_subscribe_on_every_path() {
    let dir = Dir::new("rtperm");
    let users = dir.file("users.txt", "feed:feedpw\nreader:readerpw\n");
    let perms = dir.file("permissions", "feed publish trades\nreader subscribe trades\n");
    let rt = locked_down("rt", &users, &perms, &["--data", &dir.path("rt"), "--stream", "trades"]);
    let port = rt.port("ipc");
    let as_user = |user: &str, pw: &str| Address::parse(&format!(":127.0.0.1:{port}:{user}:{pw}")).unwrap();
    let feed = Connection::connect(&as_user("feed", "feedpw"), ClientOptions::default()).await.unwrap();
    let reader = std::sync::Arc::new(
        Connection::connect(&as_user("reader", "readerpw"), ClientOptions::default()).await.unwrap(),
    );
    let publish = || vec![K::sym(".rt.pub"), K::sym("trades"), K::long(1)];
    let latest = || vec![K::sym(".rt.get_latest_position"), K::sym("trades")];
    let no_opts = K::dict(K::list(vec![]), K::list(vec![]));
    let subscribe = || vec![K::sym(".rt.sub"), K::sym("trades"), K::sym("latest"), no_opts.clone()];

    assert!(call(&feed, publish()).await.is_ok(), "feed may publish");
    let e = call(&reader, publish()).await.unwrap_err();
    assert!(e.starts_with("access") && e.contains("reader"), "{e}");
    assert!(call(&reader, latest()).await.is_ok(), "reader may read the tip");
    let e = call(&feed, latest()).await.unwrap_err();
    assert!(e.starts_with("access"), "{e}");
    let e = call(&feed, subscribe()).await.unwrap_err();
    assert!(e.starts_with("access"), "{e}");

    // a Publisher shipping its local log as reader: refused at its hello
    let creds = dir.file("credentials", "*:*:reader:readerpw\n");
    let pub_dir = dir.path("pub");
    let mut p = rt_publisher(&creds, port, &pub_dir, 10);
    let stderr = p.stderr.take().unwrap();
    let refused = tokio::task::spawn_blocking(move || read_until(stderr, "access")).await.unwrap();
    let _ = p.kill();
    let _ = p.wait();
    refused.expect("the publisher logs the node's access refusal");

    // granted in the file: in force without a restart, and the same
    // publisher (its local log kept the messages) ships them
    std::fs::write(&perms, "feed publish trades\nreader subscribe trades\nreader publish trades\n").unwrap();
    wait_until("the new grant", || {
        let r = std::sync::Arc::clone(&reader);
        async move {
            match r.call(&K::list(vec![K::sym(".rt.pub"), K::sym("trades"), K::long(2)])).await {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    let mut p = rt_publisher(&creds, port, &pub_dir, 10);
    let stdout = p.stdout.take().unwrap();
    let acked = tokio::task::spawn_blocking(move || read_until(stdout, "acked 10")).await.unwrap();
    let _ = p.wait();
    acked.expect("the publisher's log acknowledged once granted");
}

/// A sync call: the decoded answer, or the remote q error's text.
async fn call(c: &Connection, items: Vec<K>) -> Result<K, String> {
    match c.call(&K::list(items)).await {
        Ok(m) => Ok(m.decode().unwrap()),
        Err(IpcError::Remote(e)) => Err(e),
        Err(e) => panic!("{e}"),
    }
}

/// The blog's heartbeat dictionary for process `name` (`.master.storeHb`).
fn heartbeat(name: &str, counter: i64) -> Vec<K> {
    use qmesh_codec::Atom;
    let keys = K::syms(["process", "ip", "address", "pid", "qVersion", "counter", "lastHb"]);
    let vals = K::list(vec![
        K::sym(name),
        K::sym("127.0.0.1"),
        K::sym(":127.0.0.1:5010"),
        K::Atom(Atom::Int(4242)),
        K::sym("4v2024.05.31"),
        K::long(counter),
        K::Atom(Atom::Time(0)),
    ]);
    vec![K::sym(".master.storeHb"), K::dict(keys, vals)]
}

/// Discovery asks the permissions file who may heartbeat as which process
/// name: a refused sync heartbeat is `'access` and changes no row; a grant
/// added to the file is in force without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_checks_who_may_heartbeat_as_which_name() {
    let dir = Dir::new("hbperm");
    let users = dir.file("users.txt", "feed:feedpw\nalice:secret\n");
    let perms = dir.file("permissions", "feed heartbeat feed1\n");
    let disc = locked_down("discovery", &users, &perms, &[]);
    let addr = Address::parse(&format!(":127.0.0.1:{}:feed:feedpw", disc.port("ipc"))).unwrap();
    let feed = std::sync::Arc::new(Connection::connect(&addr, ClientOptions::default()).await.unwrap());
    assert!(call(&feed, heartbeat("feed1", 1)).await.is_ok(), "feed may beat as feed1");
    let e = call(&feed, heartbeat("rdb1", 1)).await.unwrap_err();
    assert!(e.starts_with("access") && e.contains("rdb1"), "{e}");
    let (st, _, body) = get(disc.addr("http"), "/api/processes", Some(ALICE)).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"feed1\"") && !body.contains("\"rdb1\""), "{body}");

    std::fs::write(&perms, "feed heartbeat feed1\nfeed heartbeat rdb1\n").unwrap();
    wait_until("the new grant", || {
        let f = std::sync::Arc::clone(&feed);
        async move { call(&f, heartbeat("rdb1", 2)).await.map(|_| ()) }
    })
    .await;
    let (_, _, body) = get(disc.addr("http"), "/api/processes", Some(ALICE)).await;
    assert!(body.contains("\"rdb1\""), "{body}");
}

/// A query service asks the permissions file too: `query` on its own
/// service name for SQL over IPC and `POST /query`; a user without the
/// grant gets `'access` (HTTP 403), not the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_instance_checks_its_permissions_over_ipc_and_http() {
    let dir = Dir::new("svcperm");
    let users = dir.file("users.txt", "alice:secret\nbob:pw\n");
    let perms = dir.file("permissions", "alice query EQ\n");
    let svc = locked_down("service", &users, &perms, &["--name", "EQ", "--demo", "--demo-rows", "10"]);
    let ipc = |user: &str, pw: &str| {
        Address::parse(&format!(":127.0.0.1:{}:{user}:{pw}", svc.port("ipc"))).unwrap()
    };
    let alice = Connection::connect(&ipc("alice", "secret"), ClientOptions::default()).await.unwrap();
    let bob = Connection::connect(&ipc("bob", "pw"), ClientOptions::default()).await.unwrap();
    assert!(sql(&alice).await.is_ok(), "alice may query EQ");
    let e = sql(&bob).await.unwrap_err();
    assert!(e.starts_with("access") && e.contains("bob"), "{e}");
    let body = "select count(*) as n from trade";
    let (st, _, b) = http(svc.addr("http"), "POST", "/query", Some(ALICE), "", body).await;
    assert_eq!(st, 200, "{b}");
    let bob64 = "Ym9iOnB3"; // bob:pw
    let (st, _, b) = http(svc.addr("http"), "POST", "/query", Some(bob64), "", body).await;
    assert_eq!(st, 403, "{b}");
    assert!(b.contains("\"error\":\"access\""), "{b}");
}

/// A plain sync string (the service runs it as SQL): the answer or the q error.
async fn sql(c: &Connection) -> Result<K, String> {
    match c.call(&K::string("select count(*) as n from trade")).await {
        Ok(m) => Ok(m.decode().unwrap()),
        Err(IpcError::Remote(e)) => Err(e),
        Err(e) => panic!("{e}"),
    }
}
