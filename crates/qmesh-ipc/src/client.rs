//! A kdb+ IPC client: `hopen`, sync calls, async sends, and the messages a
//! server pushes.
//!
//! [`Connection::connect`] opens and authenticates a connection and starts
//! its reader and writer tasks. [`Connection::split`] gives a cloneable
//! [`Sender`] (calls may be in flight from many tasks at once; responses are
//! matched in order) and a [`Receiver`] of what the server sends on its own
//! ([`Incoming`]: async messages, and sync requests the client may answer).
//! Dropping the receiver discards such messages (a sync request is then
//! answered with an error), as PyKX does. Dropping every `Sender` closes the
//! connection.
//!
//! [`Reconnecting`] wraps a client that reconnects, with exponential
//! backoff, when its connection is lost.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use qmesh_codec::limits::MAX_MESSAGE_BYTES;
use qmesh_codec::{K, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::address::{Address, Endpoint};
use crate::credentials::{self, Credentials};
use crate::error::IpcError;
use crate::handshake::{self, MAX_CAPABILITY};
use crate::link::{self, ConnId, ConnInfo, Link, LinkLimits, Peer, RemoteAddr, Responder};
use crate::server::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_PENDING, DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_FRAMES, Handler,
    HandlerDispatch,
};
use crate::stream::{self, IntoHalves};
use crate::tls::{self, ClientTls, TlsError};

/// Default time allowed to connect and complete the handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of pushed messages held for the [`Receiver`]; when it is
/// full the connection stops reading until the receiver catches up.
pub const DEFAULT_PUSH_QUEUE: usize = 1024;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The capability asked for (the server answers at most this).
    pub capability: u8,
    /// Time allowed to connect and complete the handshake.
    pub connect_timeout: Duration,
    /// Largest message accepted from the server, total bytes.
    pub max_message_bytes: u64,
    /// Outbound queue bound, in bytes.
    pub max_queue_bytes: usize,
    /// Outbound queue bound, in messages.
    pub max_queue_frames: usize,
    /// Calls awaiting a response at once (and server requests awaiting our
    /// answer).
    pub max_pending: usize,
    /// Pushed messages held for the [`Receiver`].
    pub push_queue: usize,
    /// Time a closing connection may take to flush.
    pub drain_timeout: Duration,
    /// Compress by q's rule even to a local server (tests).
    pub force_compression: bool,
    /// Check every incoming body is one well-formed object.
    pub validate_messages: bool,
    /// Where the credentials of an address without a user come from
    /// ([`crate::credentials`]); `None`: the process's
    /// [`installed`](crate::credentials::installed) file, if any.
    pub credentials: Option<Arc<Credentials>>,
    /// How the server of a `:tcps://` address is checked ([`crate::tls`]);
    /// `None`: the process's [`installed`](crate::tls::installed_client)
    /// client TLS, if any.
    pub tls: Option<Arc<ClientTls>>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            capability: MAX_CAPABILITY,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_queue_frames: DEFAULT_MAX_QUEUE_FRAMES,
            max_pending: DEFAULT_MAX_PENDING,
            push_queue: DEFAULT_PUSH_QUEUE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            force_compression: false,
            validate_messages: true,
            credentials: None,
            tls: None,
        }
    }
}

/// A message the server sent on its own.
#[derive(Debug)]
pub enum Incoming {
    /// An async message (the server's `neg[.z.w] x`).
    Async(Message),
    /// A sync request (the server's `.z.w x`): answer through the responder.
    Sync(Message, Responder),
}

/// The sending side of a client connection; cloneable. Derefs to [`Peer`]
/// for [`call`](Peer::call), [`query`](Peer::query),
/// [`send_async`](Peer::send_async), [`send_raw`](Peer::send_raw),
/// [`flush`](Peer::flush)…
#[derive(Clone, Debug)]
pub struct Sender {
    inner: Arc<SenderInner>,
}

#[derive(Debug)]
struct SenderInner {
    peer: Peer,
}

impl Drop for SenderInner {
    fn drop(&mut self) {
        self.peer.close();
    }
}

impl std::ops::Deref for Sender {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.inner.peer
    }
}

/// What the server sends on its own; `None` once the connection is closed.
#[derive(Debug)]
pub struct Receiver {
    rx: mpsc::Receiver<Incoming>,
}

impl Receiver {
    /// The next pushed message.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    /// The next pushed message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        self.rx.try_recv().ok()
    }
}

/// An open client connection.
#[derive(Debug)]
pub struct Connection {
    sender: Sender,
    receiver: Receiver,
}

impl std::ops::Deref for Connection {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.sender
    }
}

/// The [`Handler`] behind [`Connection::connect`]: hands what the server
/// sends on its own to the [`Receiver`].
struct ChannelHandler {
    tx: mpsc::Sender<Incoming>,
}

impl Handler for ChannelHandler {
    async fn on_sync(&self, _peer: &Peer, msg: Message, responder: Responder) {
        // If the receiver is gone the responder is dropped with the
        // message, which answers the server with an error.
        let _ = self.tx.send(Incoming::Sync(msg, responder)).await;
    }
    async fn on_async(&self, _peer: &Peer, msg: Message) {
        if self.tx.send(Incoming::Async(msg)).await.is_err() {
            debug!("async message from the server discarded: no receiver");
        }
    }
}

impl Connection {
    /// Connects, authenticates with the address's credentials (or, when it
    /// carries no user, those of its line in the credentials file: see
    /// [`ClientOptions::credentials`]) and starts the connection's tasks. A refusal (no reply byte) is [`IpcError::Access`].
    pub async fn connect(addr: &Address, opts: ClientOptions) -> Result<Connection, IpcError> {
        let (tx, rx) = mpsc::channel(opts.push_queue.max(1));
        let sender = Connection::connect_with_handler(addr, opts, ChannelHandler { tx }).await?;
        Ok(Connection { sender, receiver: Receiver { rx } })
    }

    /// As [`connect`](Connection::connect), but what the server sends on its
    /// own goes to `handler`, run on the connection's reader task as a
    /// server runs its handler: [`Handler::on_async`] and
    /// [`Handler::on_sync`] for each message, in order, with the next
    /// message read only once the handler returns (no channel between, and
    /// the writes the handler causes are batched with the read's other
    /// answers); [`Handler::on_open`] once connected and
    /// [`Handler::on_close`] once the connection has closed.
    /// [`Handler::authenticate`] is not called.
    pub async fn connect_with_handler<H: Handler>(
        addr: &Address,
        opts: ClientOptions,
        handler: H,
    ) -> Result<Sender, IpcError> {
        let creds = opts.credentials.clone().or_else(credentials::installed);
        let addr = &match creds {
            Some(c) => c.apply(addr),
            None => addr.clone(),
        };
        let fut = async {
            match &addr.endpoint {
                Endpoint::Tcp { host, port } if addr.tls => {
                    let tls = opts
                        .tls
                        .clone()
                        .or_else(tls::installed_client)
                        .ok_or_else(|| TlsError::NoClientConfig { addr: addr.to_string() })?;
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    stream::tune_tcp(&s);
                    let remote = RemoteAddr::Tcp(s.peer_addr()?);
                    // TLS ends in the relay: the connection writes a plain socket
                    let s = tls::relay(tls.connect(s, host).await?)?;
                    Connection::start(s, remote, addr, &opts).await
                }
                Endpoint::Tcp { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    stream::tune_tcp(&s);
                    let remote = RemoteAddr::Tcp(s.peer_addr()?);
                    Connection::start(s, remote, addr, &opts).await
                }
                Endpoint::Unix { port } => {
                    let s = stream::connect_unix(*port)?;
                    Connection::start(s, RemoteAddr::Unix, addr, &opts).await
                }
            }
        };
        let (link, r) = match tokio::time::timeout(opts.connect_timeout, fut).await {
            Ok(r) => r?,
            Err(_) => return Err(IpcError::ConnectTimeout(addr.to_string())),
        };
        let writer = tokio::spawn(link::write_loop(link.clone()));
        let peer = Peer { link: link.clone() };
        let drain = opts.drain_timeout;
        {
            let peer = peer.clone();
            tokio::spawn(async move {
                handler.on_open(&peer).await;
                // a client answers what its server asks; probes are a server's business
                let dispatch = HandlerDispatch { handler, peer, answer_probes: false };
                // the handshake reads only its one reply byte: nothing is buffered yet
                link::read_loop(&link, r, BytesMut::new(), &dispatch).await;
                link.begin_drain();
                crate::server::finish_writer(&link, writer, drain).await;
                dispatch.handler.on_close(&dispatch.peer).await;
            });
        }
        Ok(Sender { inner: Arc::new(SenderInner { peer }) })
    }

    /// The handshake; on success the link (its writer not yet started) and
    /// the read half.
    async fn start<S: IntoHalves>(
        mut s: S,
        remote: RemoteAddr,
        addr: &Address,
        opts: &ClientOptions,
    ) -> Result<(Arc<Link>, Box<dyn AsyncRead + Unpin + Send>), IpcError> {
        let hello = handshake::client_hello(&addr.credentials(), opts.capability)?;
        s.write_all(&hello).await?;
        let mut reply = [0u8; 1];
        let capability = match s.read(&mut reply).await {
            Ok(0) => return Err(IpcError::Access),
            Ok(_) => handshake::parse_server_reply(reply[0], opts.capability)?,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err(IpcError::Access),
            Err(e) => return Err(e.into()),
        };
        let info =
            ConnInfo { id: ConnId::next(), remote, user: addr.user.clone().unwrap_or_default(), capability };
        debug!(conn = %info.id, %remote, capability, "connected");
        let limits = LinkLimits {
            max_queue_bytes: opts.max_queue_bytes,
            max_queue_frames: opts.max_queue_frames,
            max_pending: opts.max_pending,
            max_message_bytes: opts.max_message_bytes,
            validate: opts.validate_messages,
        };
        let compress = opts.force_compression || !remote.is_local();
        let (r, w) = s.into_halves();
        let link = Arc::new(Link::new(info, compress, limits, CancellationToken::new(), Arc::new(w)));
        Ok((link, Box::new(r)))
    }

    /// Splits into the sending and receiving sides.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    /// The sending side.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The receiving side.
    pub fn receiver(&mut self) -> &mut Receiver {
        &mut self.receiver
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait before the first retry.
    pub initial: Duration,
    /// Longest wait between attempts.
    pub max: Duration,
    /// Growth factor per attempt (2.0 doubles).
    pub factor: f64,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 100 ms, doubling, up to 10 s, forever.
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            factor: 2.0,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The wait after `failures` failed attempts in a row (0 → no wait).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exp = self.factor.max(1.0).powi(failures.saturating_sub(1).min(64) as i32);
        let secs = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max).min(self.max)
    }
}

/// A client that reconnects when its connection is lost.
///
/// The connection is opened on first use. A call that fails because the
/// connection dropped returns the error (a sync request may or may not have
/// run; it is never re-sent); the next use reconnects, waiting
/// [`Backoff::delay`] between failed attempts. Messages the server pushes
/// are not delivered (use [`Connection`] for that).
#[derive(Debug)]
pub struct Reconnecting {
    addr: Address,
    opts: ClientOptions,
    backoff: Backoff,
    current: tokio::sync::Mutex<Option<Sender>>,
}

impl Reconnecting {
    /// A client for `addr`; nothing is opened until first use.
    pub fn new(addr: Address, opts: ClientOptions, backoff: Backoff) -> Reconnecting {
        Reconnecting { addr, opts, backoff, current: tokio::sync::Mutex::new(None) }
    }

    /// A live sender, reconnecting (with backoff) if needed.
    pub async fn sender(&self) -> Result<Sender, IpcError> {
        let mut cur = self.current.lock().await;
        if let Some(s) = cur.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        *cur = None;
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(self.backoff.delay(failures)).await;
            match Connection::connect(&self.addr, self.opts.clone()).await {
                Ok(c) => {
                    let (s, _rx) = c.split();
                    *cur = Some(s.clone());
                    return Ok(s);
                }
                Err(e) => {
                    failures += 1;
                    warn!(addr = %self.addr, failures, error = %e, "reconnect failed");
                    if self.backoff.max_attempts.is_some_and(|m| failures >= m) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// A sync call on the current connection.
    pub async fn call(&self, value: &K) -> Result<Message, IpcError> {
        self.sender().await?.call(value).await
    }

    /// `h "text"` on the current connection.
    pub async fn query(&self, q: &str) -> Result<K, IpcError> {
        self.sender().await?.query(q).await
    }

    /// An async send on the current connection.
    pub async fn send_async(&self, value: &K) -> Result<(), IpcError> {
        self.sender().await?.send_async(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            max_attempts: None,
        };
        let d: Vec<u128> = (0..7).map(|i| b.delay(i).as_millis()).collect();
        assert_eq!(d, vec![0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
        let flat = Backoff { factor: 0.5, ..b };
        assert_eq!(flat.delay(5), Duration::from_millis(100));
    }
}
