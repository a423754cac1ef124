//! Raw bytes against our server over 127.0.0.1: handshake forms, framing
//! across reads, limits, bad input, authentication, slow readers.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{PATIENCE, RawReader, TestServer, cmd, error_text, frame, raw_connect, read_to_eof};
use qmesh_codec::{Attr, K, Message, MsgType, Vector};
use qmesh_ipc::auth::{PasswordFile, md5_hex, sha1_hex};
use qmesh_ipc::echo::EchoHandler;
use qmesh_ipc::handshake::MAX_HELLO_LEN;
use qmesh_ipc::{
    Address, ClientOptions, ConnInfo, Connection, Handler, IpcError, Peer, Responder, ServerConfig,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

async fn echo_server() -> TestServer {
    TestServer::start(ServerConfig::loopback(), EchoHandler).await
}

async fn one_plus_one_works(s: &TestServer) {
    let c = Connection::connect(&s.address(), ClientOptions::default()).await.expect("connect");
    assert_eq!(c.query("1+1").await.unwrap(), K::long(2));
}

#[tokio::test]
async fn handshake_forms_over_a_socket() {
    let s = echo_server().await;
    let long = format!("{}:{}", "u".repeat(100), "p".repeat(MAX_HELLO_LEN - 104));
    let cases: Vec<(Vec<u8>, u8)> = vec![
        (b"user:pw\x06\x00".to_vec(), 6),
        (b"user:pw\x03\x00".to_vec(), 3),
        (b"user:pw\x01\x00".to_vec(), 1),
        (b"user:pw\x00\x00".to_vec(), 0),
        (b"user:pw\x00".to_vec(), 0), // legacy: no capability byte
        (b"\x06\x00".to_vec(), 6),    // empty credentials
        (b":\x03\x00".to_vec(), 3),
        (b"u:p\x1f\x00".to_vec(), 6), // above ours: ours
        ([long.as_bytes(), b"\x06\x00"].concat(), 6),
    ];
    for (hello, want) in cases {
        let (mut sock, reply) = raw_connect(s.addr, &hello).await;
        assert_eq!(reply, Some(want), "hello {:?}", String::from_utf8_lossy(&hello[..hello.len().min(20)]));
        // The connection then works, at the negotiated capability.
        sock.write_all(&frame(MsgType::Sync, &K::string("1+1"))).await.unwrap();
        let m = RawReader::default().next(&mut sock).await.expect("response");
        assert_eq!(m.msg_type(), MsgType::Response);
        assert_eq!(m.decode().unwrap(), K::long(2));
    }
    // One byte over the limit: closed without a byte.
    let too_long = [vec![b'a'; MAX_HELLO_LEN], b"\x06\x00".to_vec()].concat();
    let (_, reply) = raw_connect(s.addr, &too_long).await;
    assert_eq!(reply, None);
}

#[tokio::test]
async fn capability_byte_is_written_alone_even_when_on_open_pushes() {
    struct Greeter;
    impl Handler for Greeter {
        async fn on_open(&self, peer: &Peer) {
            peer.send_async(&K::sym("welcome")).unwrap();
        }
        async fn on_sync(&self, _peer: &Peer, msg: Message, responder: Responder) {
            let _ = responder.forward(&msg);
        }
    }
    let s = TestServer::start(ServerConfig::loopback(), Greeter).await;
    // raw_connect reads exactly one byte; the greeting follows separately.
    let (mut sock, reply) = raw_connect(s.addr, b"u:p\x03\x00").await;
    assert_eq!(reply, Some(3));
    let m = RawReader::default().next(&mut sock).await.unwrap();
    assert_eq!((m.msg_type(), m.decode().unwrap()), (MsgType::Async, K::sym("welcome")));
}

#[tokio::test]
async fn split_and_byte_by_byte_writes() {
    let s = echo_server().await;
    let v = K::Vector(Attr::None, Vector::Long((0..300).collect()));
    let f = frame(MsgType::Sync, &cmd("echo", v.clone()));
    let (mut sock, _) = raw_connect(s.addr, b"u:p\x06\x00").await;
    let mut rd = RawReader::default();
    // Header split from the body, and the body split in the middle.
    for cut in [3, 8, 12, f.len() / 2, f.len() - 1] {
        sock.write_all(&f[..cut]).await.unwrap();
        sock.flush().await.unwrap();
        tokio::task::yield_now().await;
        sock.write_all(&f[cut..]).await.unwrap();
        assert_eq!(rd.next(&mut sock).await.unwrap().decode().unwrap(), v, "cut at {cut}");
    }
    // One byte per write (TCP_NODELAY on the raw client).
    for b in &f {
        sock.write_all(std::slice::from_ref(b)).await.unwrap();
    }
    assert_eq!(rd.next(&mut sock).await.unwrap().decode().unwrap(), v);
}

#[tokio::test]
async fn several_messages_in_one_segment_with_the_hello() {
    let s = echo_server().await;
    let mut seg = vec![];
    for i in 0..5 {
        seg.extend(frame(MsgType::Sync, &cmd("defer", K::long(i))));
    }
    // The requests are written in one piece right after the handshake.
    let (mut sock, reply) = raw_connect(s.addr, b"u:p\x06\x00").await;
    assert_eq!(reply, Some(6));
    sock.write_all(&seg).await.unwrap();
    let mut rd = RawReader::default();
    for i in 0..5 {
        assert_eq!(rd.next(&mut sock).await.unwrap().decode().unwrap(), K::long(i));
    }
}

#[tokio::test]
async fn big_endian_input() {
    let s = echo_server().await;
    let (mut sock, _) = raw_connect(s.addr, b"u:p\x03\x00").await;
    // sync `1 2i`, big-endian: forwarded as it came (a big-endian response).
    let be = [0u8, 1, 0, 0, 0, 0, 0, 0x16, 6, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
    sock.write_all(&be).await.unwrap();
    let mut rd = RawReader::default();
    let m = rd.next(&mut sock).await.unwrap();
    assert!(!m.header.little_endian);
    assert_eq!(m.decode().unwrap(), K::Vector(Attr::None, Vector::Int(vec![1, 2])));
    // big-endian ("{x}"; 7i): decoded, answered little-endian.
    let mut body = vec![0u8, 0, 0, 0, 0, 2];
    body.extend([10, 0, 0, 0, 0, 3]);
    body.extend(b"{x}");
    body.extend([0xfa, 0, 0, 0, 7]);
    let mut msg = vec![0u8, 1, 0, 0];
    msg.extend(((8 + body.len()) as u32).to_be_bytes());
    msg.extend(body);
    sock.write_all(&msg).await.unwrap();
    let m = rd.next(&mut sock).await.unwrap();
    assert!(m.header.little_endian);
    assert_eq!(m.decode().unwrap(), K::Atom(qmesh_codec::Atom::Int(7)));
}

#[tokio::test]
async fn oversized_message_refused_from_its_header() {
    let s =
        TestServer::start(ServerConfig { max_message_bytes: 1024, ..ServerConfig::loopback() }, EchoHandler)
            .await;
    let (mut sock, _) = raw_connect(s.addr, b"u:p\x06\x00").await;
    // A sync message announcing 1 GiB; only a few body bytes follow.
    let mut msg = vec![1u8, 1, 0, 0];
    msg.extend((1u32 << 30).to_le_bytes());
    msg.extend([7, 0, 1, 0, 0, 0]);
    sock.write_all(&msg).await.unwrap();
    let mut rd = RawReader::default();
    let m = rd.next(&mut sock).await.expect("an error response before the close");
    assert_eq!(error_text(&m).as_deref(), Some("message too large"));
    assert!(rd.next(&mut sock).await.is_none(), "then closed");
    // An async one is closed without a response.
    let (mut sock, _) = raw_connect(s.addr, b"u:p\x06\x00").await;
    let mut msg = vec![1u8, 0, 0, 0];
    msg.extend(2000u32.to_le_bytes());
    sock.write_all(&msg).await.unwrap();
    assert!(read_to_eof(&mut sock).await.is_empty());
    // Our own client sees a q error.
    let c = Connection::connect(&s.address(), ClientOptions::default()).await.unwrap();
    match c.call(&K::string("x".repeat(2000))).await {
        Err(IpcError::Remote(t)) => assert_eq!(t, "message too large"),
        other => panic!("{other:?}"),
    }
    one_plus_one_works(&s).await;
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() {
    let s = echo_server().await;
    let good = Connection::connect(&s.address(), ClientOptions::default()).await.unwrap();
    assert_eq!(good.query("1+1").await.unwrap(), K::long(2));
    let bad_inputs: Vec<Vec<u8>> = vec![
        // unknown type byte 0x50 in a well-framed message
        vec![1, 1, 0, 0, 10, 0, 0, 0, 0x50, 0],
        // a long atom with a byte missing
        vec![1, 1, 0, 0, 16, 0, 0, 0, 0xf9, 1, 0, 0, 0, 0, 0, 0],
        // bad endianness byte
        vec![7, 1, 0, 0, 9, 0, 0, 0, 0xff],
        // length shorter than a header
        vec![1, 1, 0, 0, 3, 0, 0, 0],
        // a compressed message whose stream is garbage
        vec![1, 1, 1, 0, 16, 0, 0, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff],
    ];
    for bad in bad_inputs {
        let (mut sock, _) = raw_connect(s.addr, b"u:p\x06\x00").await;
        sock.write_all(&bad).await.unwrap();
        assert!(read_to_eof(&mut sock).await.is_empty(), "closed without a response: {bad:?}");
        // The other connection keeps working.
        assert_eq!(good.query("1+1").await.unwrap(), K::long(2));
    }
}

fn users_file() -> Arc<PasswordFile> {
    let text =
        format!("plain:secret\nhashed:{}\nsha:{}\n", md5_hex(b"md5 password"), sha1_hex(b"sha password"));
    Arc::new(PasswordFile::parse(text.as_bytes()).unwrap())
}

#[tokio::test]
async fn password_file_refuses_without_a_byte() {
    let cfg = ServerConfig { authenticator: Some(users_file()), ..ServerConfig::loopback() };
    let s = TestServer::start(cfg, EchoHandler).await;
    for (u, p) in [("plain", "secret"), ("hashed", "md5 password"), ("sha", "sha password")] {
        let c = Connection::connect(&s.address_with(u, p), ClientOptions::default()).await.unwrap();
        assert_eq!(c.query("1+1").await.unwrap(), K::long(2));
        assert_eq!(s.handle.peer(c.id()).map(|_| ()), None, "client and server ids are separate");
    }
    for (u, p) in [("plain", "wrong"), ("nobody", "secret"), ("hashed", &md5_hex(b"x") as &str), ("", "")] {
        let (mut sock, reply) = raw_connect(s.addr, format!("{u}:{p}\x06\x00").as_bytes()).await;
        assert_eq!(reply, None, "{u}:{p} refused");
        assert!(read_to_eof(&mut sock).await.is_empty());
        match Connection::connect(&s.address_with(u, p), ClientOptions::default()).await {
            Err(IpcError::Access) => {}
            other => panic!("{other:?}"),
        }
    }
    // The legacy retry (no capability byte) is checked the same way.
    let (_, reply) = raw_connect(s.addr, b"plain:wrong\x00").await;
    assert_eq!(reply, None);
    let (_, reply) = raw_connect(s.addr, b"plain:secret\x00").await;
    assert_eq!(reply, Some(0));
}

/// Guessing is slowed: past its free failures an address waits (here an
/// hour: no timing in the test) and even the right password is refused
/// unchecked until then; other users of the same server are not affected
/// by time, only by address.
#[tokio::test]
async fn repeated_failures_from_an_address_are_refused_unchecked() {
    use qmesh_ipc::limiter::{FailureLimiter, FailurePolicy};
    let policy = FailurePolicy {
        free_failures: 2,
        first_delay: Duration::from_secs(3600),
        max_delay: Duration::from_secs(3600),
        forget_after: Duration::from_secs(7200),
    };
    let limiter = Arc::new(std::sync::Mutex::new(FailureLimiter::new(policy)));
    let cfg = ServerConfig {
        authenticator: Some(users_file()),
        failure_limiter: Some(limiter.clone()),
        ..ServerConfig::loopback()
    };
    let s = TestServer::start(cfg, EchoHandler).await;
    let good = s.address_with("plain", "secret");
    // a success clears failures
    for _ in 0..2 {
        let r = Connection::connect(&s.address_with("plain", "wrong"), ClientOptions::default()).await;
        assert!(matches!(r, Err(IpcError::Access)));
    }
    assert!(Connection::connect(&good, ClientOptions::default()).await.is_ok());
    assert_eq!(limiter.lock().unwrap().tracked(), 0);
    for _ in 0..3 {
        let r = Connection::connect(&s.address_with("plain", "wrong"), ClientOptions::default()).await;
        assert!(matches!(r, Err(IpcError::Access)));
    }
    let r = Connection::connect(&good, ClientOptions::default()).await;
    assert!(matches!(r, Err(IpcError::Access)), "the right password waits too: {r:?}");
}

/// An address without a user takes the credentials file's line; one with
/// a user keeps its own.
#[tokio::test]
async fn the_credentials_file_answers_for_an_address_without_a_user() {
    let cfg = ServerConfig { authenticator: Some(users_file()), ..ServerConfig::loopback() };
    let s = TestServer::start(cfg, EchoHandler).await;
    let bare = Address::parse(&s.addr.to_string()).unwrap();
    let file = qmesh_ipc::Credentials::parse(&format!("{}:*:plain:secret\n", s.addr.ip())).unwrap();
    let opts = ClientOptions { credentials: Some(Arc::new(file)), ..ClientOptions::default() };
    let c = Connection::connect(&bare, opts.clone()).await.unwrap();
    assert_eq!(c.query("1+1").await.unwrap(), K::long(2));
    assert!(matches!(Connection::connect(&bare, ClientOptions::default()).await, Err(IpcError::Access)));
    let own = s.address_with("plain", "wrong");
    assert!(matches!(Connection::connect(&own, opts).await, Err(IpcError::Access)));
}

#[tokio::test]
async fn handler_authenticate_is_z_pw() {
    struct OnlyAlice;
    impl Handler for OnlyAlice {
        async fn authenticate(&self, info: &ConnInfo, password: &[u8]) -> bool {
            info.user == "alice" && password == b"pw"
        }
        async fn on_sync(&self, peer: &Peer, _msg: Message, responder: Responder) {
            let _ = responder.reply(K::sym(peer.user()));
        }
    }
    let s = TestServer::start(ServerConfig::loopback(), OnlyAlice).await;
    let c = Connection::connect(&s.address_with("alice", "pw"), ClientOptions::default()).await.unwrap();
    assert_eq!(c.query("x").await.unwrap(), K::sym("alice"), ".z.u is the handshake user");
    assert!(matches!(
        Connection::connect(&s.address_with("bob", "pw"), ClientOptions::default()).await,
        Err(IpcError::Access)
    ));
}

struct Tap {
    opened: mpsc::UnboundedSender<Peer>,
    closed: mpsc::UnboundedSender<qmesh_ipc::ConnId>,
}

impl Handler for Tap {
    async fn on_open(&self, peer: &Peer) {
        let _ = self.opened.send(peer.clone());
    }
    async fn on_sync(&self, _peer: &Peer, msg: Message, responder: Responder) {
        let _ = responder.forward(&msg);
    }
    async fn on_close(&self, peer: &Peer) {
        let _ = self.closed.send(peer.id());
    }
}

fn tap() -> (Tap, mpsc::UnboundedReceiver<Peer>, mpsc::UnboundedReceiver<qmesh_ipc::ConnId>) {
    let (o, orx) = mpsc::unbounded_channel();
    let (c, crx) = mpsc::unbounded_channel();
    (Tap { opened: o, closed: c }, orx, crx)
}

#[tokio::test]
async fn slow_reader_is_disconnected_at_its_queue_bound() {
    const BOUND: usize = 256 * 1024;
    let (h, mut opened, mut closed) = tap();
    let s = TestServer::start(ServerConfig { max_queue_bytes: BOUND, ..ServerConfig::loopback() }, h).await;
    // A client that never reads.
    let (_sock, reply) = raw_connect(s.addr, b"u:p\x06\x00").await;
    assert_eq!(reply, Some(6));
    let peer = opened.recv().await.unwrap();
    let chunk = K::string(vec![b'x'; 16 * 1024]);
    let mut sent = 0usize;
    // Kernel buffers absorb some megabytes first; bounded so a bug fails.
    let err = loop {
        match peer.send_async(&chunk) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "never disconnected");
        if sent.is_multiple_of(16) {
            tokio::task::yield_now().await;
        }
        assert!(peer.queued_bytes() <= BOUND + 16 * 1024 + 64, "queue stays bounded");
    };
    assert!(matches!(err, IpcError::SlowPeer { .. } | IpcError::Closed), "{err}");
    assert!(peer.is_closed());
    let id = tokio::time::timeout(PATIENCE, closed.recv()).await.unwrap().unwrap();
    assert_eq!(id, peer.id(), "on_close ran");
    assert!(s.handle.peer(id).is_none());
}

#[tokio::test]
async fn connection_limit() {
    let (h, _opened, mut closed) = tap();
    let s = TestServer::start(ServerConfig { max_connections: 2, ..ServerConfig::loopback() }, h).await;
    let a = Connection::connect(&s.address(), ClientOptions::default()).await.unwrap();
    let b = Connection::connect(&s.address(), ClientOptions::default()).await.unwrap();
    assert_eq!(a.call(&K::long(1)).await.unwrap().decode().unwrap(), K::long(1));
    assert_eq!(b.call(&K::long(2)).await.unwrap().decode().unwrap(), K::long(2));
    // A third is closed at accept, without a byte.
    assert!(matches!(
        Connection::connect(&s.address(), ClientOptions::default()).await,
        Err(IpcError::Access)
    ));
    // Once one closes, there is room again.
    drop(a);
    tokio::time::timeout(PATIENCE, closed.recv()).await.unwrap().unwrap();
    let c = Connection::connect(&s.address(), ClientOptions::default()).await.unwrap();
    assert_eq!(c.call(&K::long(3)).await.unwrap().decode().unwrap(), K::long(3));
    assert_eq!(b.call(&K::long(4)).await.unwrap().decode().unwrap(), K::long(4));
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_dropped_at_the_handshake_timeout() {
    // With the clock paused, the 10 s handshake timeout elapses as soon as
    // every task is idle; the connection (and its slot) is released.
    let (h, _opened, _closed) = tap();
    let s = TestServer::start(ServerConfig { max_connections: 1, ..ServerConfig::loopback() }, h).await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    assert!(read_to_eof(&mut sock).await.is_empty());
}
