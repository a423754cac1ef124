//! Our client against our server over real 127.0.0.1 sockets (and a Linux
//! abstract Unix socket).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::{Arc, Mutex};

use common::{PATIENCE, TestServer, cmd};
use qmesh_codec::{Atom, Attr, K, Message, Vector};
use qmesh_ipc::echo::EchoHandler;
use qmesh_ipc::link::DROPPED_RESPONSE_TEXT;
use qmesh_ipc::{
    Address, Backoff, ClientOptions, ConnId, Connection, Handler, Incoming, IpcError, Peer, Reconnecting,
    Responder, ServerConfig,
};
use tokio::sync::mpsc;

async fn echo_server() -> TestServer {
    TestServer::start(ServerConfig::loopback(), EchoHandler).await
}

async fn connect(s: &TestServer) -> Connection {
    Connection::connect(&s.address(), ClientOptions::default()).await.expect("connect")
}

fn sample_values() -> Vec<K> {
    vec![
        K::long(42),
        K::Atom(Atom::Guid([7; 16])),
        K::Atom(Atom::Timestamp(1)),
        K::string("hello"),
        K::syms(["a", "bc", ""]),
        K::Vector(Attr::Sorted, Vector::Float(vec![1.5, f64::INFINITY])),
        K::list(vec![K::long(1), K::sym("a"), K::string("b")]),
        K::dict(K::syms(["a", "b"]), K::Vector(Attr::None, Vector::Int(vec![2, 3]))),
        K::GenericNull,
    ]
}

#[tokio::test]
async fn sync_query_echo_and_decode_roundtrip() {
    let s = echo_server().await;
    let c = connect(&s).await;
    assert_eq!(c.capability(), 6);
    assert_eq!(c.query("1+1").await.unwrap(), K::long(2));
    assert_eq!(c.query("").await.unwrap(), K::GenericNull, "the h\"\" chaser");
    for v in sample_values() {
        assert_eq!(c.call(&cmd("echo", v.clone())).await.unwrap().decode().unwrap(), v);
        assert_eq!(c.call(&cmd("{x}", v.clone())).await.unwrap().decode().unwrap(), v);
    }
    // Anything that is not a command comes back as it is.
    let big = K::Vector(Attr::None, Vector::Long((0..100_000).collect()));
    assert_eq!(c.call(&big).await.unwrap().decode().unwrap(), big);
    s.stop().await;
}

#[tokio::test]
async fn q_errors_are_typed() {
    let s = echo_server().await;
    let c = connect(&s).await;
    match c.call(&cmd("error", K::string("boom: detail"))).await {
        Err(IpcError::Remote(t)) => assert_eq!(t, "boom: detail"),
        other => panic!("{other:?}"),
    }
    match c.query("select from t").await {
        Err(e) => assert_eq!(e.remote_text(), Some("nyi")),
        other => panic!("{other:?}"),
    }
    // The connection is still fine.
    assert_eq!(c.query("1+1").await.unwrap(), K::long(2));
}

#[tokio::test]
async fn deferred_reply_from_another_task() {
    let s = echo_server().await;
    let c = connect(&s).await;
    for i in 0..50 {
        assert_eq!(c.call(&cmd("defer", K::long(i))).await.unwrap().decode().unwrap(), K::long(i));
    }
}

#[tokio::test]
async fn dropped_responder_is_an_error_never_silence() {
    let s = echo_server().await;
    let c = connect(&s).await;
    match c.query("drop").await {
        Err(IpcError::Remote(t)) => assert_eq!(t, DROPPED_RESPONSE_TEXT),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.query("1+1").await.unwrap(), K::long(2));
}

#[tokio::test]
async fn async_send_server_push_and_flush() {
    let s = echo_server().await;
    let (tx, mut rx) = connect(&s).await.split();
    tx.send_async(&cmd("push", K::long(1))).unwrap();
    tx.send_async(&cmd("push", K::long(2))).unwrap();
    tx.flush().await.unwrap();
    for want in [1, 2] {
        match tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap() {
            Some(Incoming::Async(m)) => assert_eq!(m.decode().unwrap(), K::long(want)),
            other => panic!("{other:?}"),
        }
    }
    // A sync request whose handler also pushes: the push arrives too.
    assert_eq!(tx.call(&cmd("push", K::sym("x"))).await.unwrap().decode().unwrap(), K::sym("x"));
    match rx.recv().await {
        Some(Incoming::Async(m)) => assert_eq!(m.decode().unwrap(), K::sym("x")),
        other => panic!("{other:?}"),
    }
}

/// Records opens and closes; answers sync requests only once `hold` have
/// arrived, in reverse order.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(&'static str, ConnId)>>,
    held: Mutex<Vec<(K, Responder)>>,
    hold: usize,
    closed: Mutex<Option<mpsc::UnboundedSender<ConnId>>>,
}

impl Handler for Recorder {
    async fn on_open(&self, peer: &Peer) {
        self.events.lock().unwrap().push(("open", peer.id()));
    }
    async fn on_sync(&self, _peer: &Peer, msg: Message, responder: Responder) {
        if self.hold == 0 {
            let _ = responder.forward(&msg);
            return;
        }
        let ready = {
            let mut held = self.held.lock().unwrap();
            held.push((msg.decode().unwrap(), responder));
            if held.len() == self.hold { std::mem::take(&mut *held) } else { vec![] }
        };
        // Answer from other tasks, last request first.
        for (k, r) in ready.into_iter().rev() {
            tokio::spawn(async move {
                let _ = r.reply(k);
            });
            tokio::task::yield_now().await;
        }
    }
    async fn on_close(&self, peer: &Peer) {
        self.events.lock().unwrap().push(("close", peer.id()));
        if let Some(tx) = &*self.closed.lock().unwrap() {
            let _ = tx.send(peer.id());
        }
    }
}

#[tokio::test]
async fn answers_completed_out_of_order_leave_in_request_order() {
    const N: usize = 16;
    let s = TestServer::start(ServerConfig::loopback(), Recorder { hold: N, ..Default::default() }).await;
    let c = connect(&s).await;
    let sender = c.sender().clone();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..N as i64 {
        let sender = sender.clone();
        calls.spawn(async move { (i, sender.call(&K::long(i)).await) });
    }
    while let Some(r) = calls.join_next().await {
        let (i, r) = r.unwrap();
        assert_eq!(r.unwrap().decode().unwrap(), K::long(i), "each call gets its own answer");
    }
}

#[tokio::test]
async fn hooks_run_and_ids_are_never_reused() {
    let (tx, mut closed) = mpsc::unbounded_channel();
    let rec = Arc::new(Recorder { closed: Mutex::new(Some(tx)), ..Default::default() });
    let s = TestServer::start(ServerConfig::loopback(), rec.clone()).await;
    let mut ids = vec![];
    for _ in 0..3 {
        let c = connect(&s).await;
        assert_eq!(c.call(&K::long(1)).await.unwrap().decode().unwrap(), K::long(1));
        drop(c);
        ids.push(tokio::time::timeout(PATIENCE, closed.recv()).await.unwrap().unwrap());
    }
    let mut uniq = ids.clone();
    uniq.dedup();
    assert_eq!(uniq.len(), 3);
    let ev = rec.events.lock().unwrap().clone();
    for id in ids {
        let open = ev.iter().position(|e| *e == ("open", id)).expect("opened");
        let close = ev.iter().position(|e| *e == ("close", id)).expect("closed");
        assert!(open < close);
    }
}

#[tokio::test]
async fn server_pushes_to_any_handle_and_calls_the_client() {
    let s = echo_server().await;
    let (tx, mut rx) = connect(&s).await.split();
    assert_eq!(tx.query("1+1").await.unwrap(), K::long(2));
    let peers = s.handle.peers();
    assert_eq!(peers.len(), 1);
    let peer = s.handle.peer(peers[0].id()).unwrap();
    peer.send_async(&K::sym("hello")).unwrap();
    match rx.recv().await {
        Some(Incoming::Async(m)) => assert_eq!(m.decode().unwrap(), K::sym("hello")),
        other => panic!("{other:?}"),
    }
    // The server calls the client (.z.w sync); the client answers.
    let call = tokio::spawn(async move { peer.call(&K::long(5)).await });
    match rx.recv().await {
        Some(Incoming::Sync(m, r)) => {
            let v = m.decode().unwrap();
            let K::Atom(Atom::Long(n)) = v else { panic!() };
            r.reply(K::long(n * 2)).unwrap();
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(call.await.unwrap().unwrap().decode().unwrap(), K::long(10));
}

#[tokio::test]
async fn forced_compression_round_trips() {
    let s =
        TestServer::start(ServerConfig { force_compression: true, ..ServerConfig::loopback() }, EchoHandler)
            .await;
    let opts = ClientOptions { force_compression: true, ..Default::default() };
    let c = Connection::connect(&s.address(), opts).await.unwrap();
    let v = K::Vector(Attr::None, Vector::Long((0..1000).collect()));
    let m = c.call(&cmd("{x}", v.clone())).await.unwrap();
    assert_eq!(m.decode().unwrap(), v);
    assert_eq!(m.wire_len(), 3276, "compressed as q does (-18!til 1000)");
    assert_eq!(m.header.length, 8014);
    // Small messages are not compressed.
    let m = c.call(&cmd("{x}", K::long(1))).await.unwrap();
    assert_eq!(m.wire_len(), m.header.length);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn unix_socket_abstract_name() {
    let s =
        TestServer::start(ServerConfig { unix_port: Some(0), ..ServerConfig::loopback() }, EchoHandler).await;
    let port = s.addr.port();
    assert_eq!(s.unix.as_deref(), Some(format!("/tmp/kx.{port}").as_str()));
    // Abstract: no file appears.
    assert!(!std::path::Path::new(&format!("/tmp/kx.{port}")).exists());
    let addr = Address::parse(&format!(":unix://{port}")).unwrap();
    let c = Connection::connect(&addr, ClientOptions::default()).await.unwrap();
    assert_eq!(c.info().remote, qmesh_ipc::RemoteAddr::Unix);
    assert_eq!(c.query("1+1").await.unwrap(), K::long(2));
    let v = K::Vector(Attr::None, Vector::Long((0..1000).collect()));
    let m = c.call(&cmd("{x}", v.clone())).await.unwrap();
    assert_eq!(m.wire_len(), m.header.length, "never compressed over a Unix socket");
    s.stop().await;
}

#[tokio::test]
async fn reconnecting_client_recovers() {
    let s = echo_server().await;
    let backoff = Backoff { initial: std::time::Duration::from_millis(1), ..Default::default() };
    let r = Reconnecting::new(s.address(), ClientOptions::default(), backoff);
    assert_eq!(r.query("1+1").await.unwrap(), K::long(2));
    for p in s.handle.peers() {
        p.abort();
    }
    // Calls made before the client notices may fail; a bounded number of
    // attempts later it has reconnected.
    let mut ok = false;
    for _ in 0..100 {
        match r.query("1+1").await {
            Ok(v) => {
                assert_eq!(v, K::long(2));
                ok = true;
                break;
            }
            Err(e) => assert!(e.is_disconnect(), "{e}"),
        }
    }
    assert!(ok);
}

#[tokio::test]
async fn reconnecting_gives_up_after_max_attempts() {
    let s = echo_server().await;
    let addr = s.address();
    s.stop().await;
    let backoff =
        Backoff { initial: std::time::Duration::from_millis(1), max_attempts: Some(3), ..Default::default() };
    let r = Reconnecting::new(addr, ClientOptions::default(), backoff);
    assert!(r.query("1+1").await.is_err());
}

#[tokio::test]
async fn server_shutdown_closes_connections() {
    let s = echo_server().await;
    let (tx, mut rx) = connect(&s).await.split();
    assert_eq!(tx.query("1+1").await.unwrap(), K::long(2));
    s.stop().await;
    assert!(tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap().is_none());
    assert!(tx.query("1+1").await.is_err());
}

/// Panics on `"boom"`; holds `"late"` requests until told to answer.
struct Fragile {
    closed: mpsc::UnboundedSender<ConnId>,
    late: mpsc::UnboundedSender<Responder>,
}

impl Handler for Fragile {
    async fn on_sync(&self, _peer: &Peer, msg: Message, responder: Responder) {
        match msg.decode().unwrap().as_text() {
            Some(b"boom") => panic!("handler bug"),
            Some(b"late") => {
                let _ = self.late.send(responder);
            }
            _ => {
                let _ = responder.forward(&msg);
            }
        }
    }
    async fn on_close(&self, peer: &Peer) {
        let _ = self.closed.send(peer.id());
    }
}

#[tokio::test]
async fn a_panicking_handler_closes_only_its_connection() {
    let (ctx, mut closed) = mpsc::unbounded_channel();
    let (ltx, _late) = mpsc::unbounded_channel();
    let s = TestServer::start(ServerConfig::loopback(), Fragile { closed: ctx, late: ltx }).await;
    let good = connect(&s).await;
    let bad = connect(&s).await;
    // The panicking request is answered with an error (its responder was
    // dropped during the unwind) or the connection closes; never a hang.
    let r = tokio::time::timeout(PATIENCE, bad.query("boom")).await.unwrap();
    assert!(r.is_err());
    tokio::time::timeout(PATIENCE, closed.recv()).await.unwrap().unwrap();
    assert_eq!(good.call(&K::long(1)).await.unwrap().decode().unwrap(), K::long(1));
    assert_eq!(s.handle.len(), 1);
}

#[tokio::test]
async fn answering_after_the_client_left_is_harmless() {
    let (ctx, mut closed) = mpsc::unbounded_channel();
    let (ltx, mut late) = mpsc::unbounded_channel();
    let cfg = ServerConfig { drain_timeout: std::time::Duration::from_secs(1), ..ServerConfig::loopback() };
    let s = TestServer::start(cfg, Fragile { closed: ctx, late: ltx }).await;
    let c = connect(&s).await;
    let sender = c.sender().clone();
    let call = tokio::spawn(async move { sender.query("late").await });
    let responder = tokio::time::timeout(PATIENCE, late.recv()).await.unwrap().unwrap();
    call.abort();
    drop(c);
    tokio::time::timeout(PATIENCE, closed.recv()).await.unwrap().unwrap();
    assert!(matches!(responder.reply(K::long(1)), Err(IpcError::Closed)));
    let again = connect(&s).await;
    assert_eq!(again.call(&K::long(2)).await.unwrap().decode().unwrap(), K::long(2));
}
