//! Helpers shared by the integration tests: an in-process server on
//! 127.0.0.1 and a raw TCP client that speaks bytes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use qmesh_codec::{EncodeOptions, K, Message, MsgType};
use qmesh_ipc::framing::IpcCodec;
use qmesh_ipc::{Address, Handler, IpcError, Server, ServerConfig, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;

/// Upper bound on any single wait in a test, so a bug fails the test
/// instead of hanging it. Never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct TestServer {
    pub addr: SocketAddr,
    pub unix: Option<String>,
    pub handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), IpcError>>>,
}

impl TestServer {
    pub async fn start<H: Handler>(config: ServerConfig, handler: H) -> TestServer {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr().expect("tcp address");
        let unix = server.unix_name().map(str::to_owned);
        let handle = server.handle();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(handler, async move {
            let _ = rx.await;
        }));
        TestServer { addr, unix, handle, stop: Some(tx), task: Some(task) }
    }

    pub fn address(&self) -> Address {
        Address::tcp("127.0.0.1", self.addr.port())
    }

    pub fn address_with(&self, user: &str, password: &str) -> Address {
        self.address().with_credentials(user, password)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(PATIENCE, t).await.expect("server stops").expect("join").expect("run");
        }
    }
}

pub fn frame(t: MsgType, k: &K) -> Vec<u8> {
    Message::encode(t, k, EncodeOptions::default()).expect("encode").to_vec()
}

/// A raw client: sends `hello`, returns the stream and the reply byte, or
/// `None` if the server closed without one.
pub async fn raw_connect(addr: SocketAddr, hello: &[u8]) -> (TcpStream, Option<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(hello).await.expect("write hello");
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut b)).await.expect("reply in time").unwrap_or(0);
    (s, (n == 1).then_some(b[0]))
}

pub struct RawReader {
    pub buf: BytesMut,
    codec: IpcCodec,
}

impl Default for RawReader {
    fn default() -> Self {
        RawReader { buf: BytesMut::new(), codec: IpcCodec::new(1 << 30) }
    }
}

impl RawReader {
    /// The next message, or `None` at EOF / reset.
    pub async fn next(&mut self, s: &mut TcpStream) -> Option<Message> {
        loop {
            if let Some(m) = self.codec.decode(&mut self.buf).expect("well-formed message from the server") {
                return Some(m);
            }
            let n = tokio::time::timeout(PATIENCE, s.read_buf(&mut self.buf))
                .await
                .expect("data in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }
}

/// Reads until EOF (or reset); returns the bytes read.
pub async fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut all = vec![];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("EOF in time") {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn error_text(m: &Message) -> Option<String> {
    match m.decode().ok()? {
        K::Error(t) => Some(String::from_utf8_lossy(&t).into_owned()),
        _ => None,
    }
}

/// Echo-handler requests.
pub fn cmd(word: &str, arg: K) -> K {
    K::list(vec![K::string(word), arg])
}
