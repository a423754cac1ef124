//! A kdb+ IPC server: a listener (TCP and/or q's Unix socket) whose
//! [`Handler`] has the q hooks.
//!
//! Per connection, in q's order: the handshake is read (bounded in size and
//! time), the password file is checked ([`ServerConfig::authenticator`],
//! q's `-u`), then [`Handler::authenticate`] (`.z.pw`); a refusal closes the
//! socket without a byte. The capability byte is written alone, then
//! [`Handler::on_open`] (`.z.po`) runs and messages are read and handed, one
//! at a time and in order, to [`Handler::on_sync`] (`.z.pg`) and
//! [`Handler::on_async`] (`.z.ps`). When the connection ends,
//! [`Handler::on_close`] (`.z.pc`) runs.
//!
//! A handler should return quickly: the next message on the same connection
//! is read only after it returns. Slow work moves the [`Responder`] to
//! another task (a deferred response).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use qmesh_codec::Message;
use qmesh_codec::limits::MAX_MESSAGE_BYTES;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::auth::Authenticator;
use crate::error::IpcError;
use crate::handshake::{self, ClientHello, HandshakeError, MAX_CAPABILITY, MAX_HELLO_LEN};
use crate::limiter::{FailureLimiter, Verdict};
use crate::link::{self, ConnId, ConnInfo, Dispatch, Link, LinkLimits, Peer, RemoteAddr, Responder};
use crate::stream::{self, IntoHalves};
use crate::tls::{Inbound, ServerTls, TlsError};

/// Default connection limit: 1022, q's limit before 4.1.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1022;

/// Default bound of one connection's outbound queue, in bytes. A reader
/// further behind than this is disconnected rather than buffered for.
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// Default bound of one connection's outbound queue, in messages (many tiny
/// messages cost memory beyond their bytes).
pub const DEFAULT_MAX_QUEUE_FRAMES: usize = 64 * 1024;

/// Default bound of sync requests awaiting an answer on one connection (and
/// of our own calls awaiting responses), in requests. q clients have one at
/// a time; a pipelining client past this is disconnected.
pub const DEFAULT_MAX_PENDING: usize = 4096;

/// Default time a client has to complete its handshake: a connection that
/// sends nothing holds a connection slot only this long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time a closing connection may take to send its queued output and
/// the answers it still owes before it is cut.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (out of file descriptors…), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The q hooks. Every method but [`on_sync`](Handler::on_sync) has a default
/// (q's defaults: accept everyone, ignore async messages).
///
/// Methods return `impl Future + Send`; implement them with `async fn`.
pub trait Handler: Send + Sync + 'static {
    /// `.z.pw`: whether `info.user` with `password` may connect. Runs after
    /// the password file check.
    fn authenticate(&self, _info: &ConnInfo, _password: &[u8]) -> impl Future<Output = bool> + Send {
        async { true }
    }

    /// `.z.po`: the connection is open. Messages sent to `peer` here go out
    /// after the capability byte, never in the same write.
    fn on_open(&self, _peer: &Peer) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// `.z.pg`: a sync request. Answer through `responder`, now or later from
    /// any task; dropping it answers with an error.
    fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) -> impl Future<Output = ()> + Send;

    /// `.z.ps`: an async message. Nothing is sent back.
    fn on_async(&self, _peer: &Peer, _msg: Message) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// `.z.pc`: the connection has closed (`peer` can no longer send).
    fn on_close(&self, _peer: &Peer) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl<H: Handler> Handler for Arc<H> {
    fn authenticate(&self, info: &ConnInfo, password: &[u8]) -> impl Future<Output = bool> + Send {
        (**self).authenticate(info, password)
    }
    fn on_open(&self, peer: &Peer) -> impl Future<Output = ()> + Send {
        (**self).on_open(peer)
    }
    fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) -> impl Future<Output = ()> + Send {
        (**self).on_sync(peer, msg, responder)
    }
    fn on_async(&self, peer: &Peer, msg: Message) -> impl Future<Output = ()> + Send {
        (**self).on_async(peer, msg)
    }
    fn on_close(&self, peer: &Peer) -> impl Future<Output = ()> + Send {
        (**self).on_close(peer)
    }
}

/// Where and how a [`Server`] listens.
#[derive(Clone)]
pub struct ServerConfig {
    /// TCP address to listen on (port 0 picks a free one), if any.
    pub tcp: Option<SocketAddr>,
    /// Also listen on q's Unix socket for this port (abstract
    /// `\0/tmp/kx.PORT` on Linux). `Some(0)` means "the TCP port".
    pub unix_port: Option<u16>,
    /// Highest capability offered (the reply is `min(client, this)`).
    pub capability: u8,
    /// Most connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Largest message accepted, total bytes (checked from the header).
    pub max_message_bytes: u64,
    /// Outbound queue bound per connection, in bytes.
    pub max_queue_bytes: usize,
    /// Outbound queue bound per connection, in messages.
    pub max_queue_frames: usize,
    /// Unanswered sync requests allowed per connection.
    pub max_pending: usize,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// Time a closing connection may take to flush.
    pub drain_timeout: Duration,
    /// Compress outgoing messages by q's rule even to local peers (tests).
    pub force_compression: bool,
    /// Check every incoming body is one well-formed object (q's `'badmsg`).
    pub validate_messages: bool,
    /// The password file check (`-u`), before [`Handler::authenticate`].
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// Slows down password guessing ([`crate::limiter`]): with an
    /// [`authenticator`](ServerConfig::authenticator), a TCP address that
    /// failed too often is refused without its credentials being checked
    /// until its wait is over. Share one with the process's HTTP port.
    pub failure_limiter: Option<Arc<Mutex<FailureLimiter>>>,
    /// Answer the probes clients send on connecting — PyKX's context and
    /// SQL probes, q's `h""` — as q would, before [`Handler::on_sync`]
    /// sees them ([`crate::pykx::answer_client_probe`]). On by default: a
    /// server that does not run q must still let `pykx.SyncQConnection`
    /// and q's `h""` work; turn it off only to see these requests yourself.
    pub answer_client_probes: bool,
    /// TLS on the TCP listener by q's `-E` modes ([`crate::tls`]): `None`
    /// plain only; otherwise each connection's first byte decides (a TLS
    /// client is served through TLS, a plain one only in
    /// [`TlsMode::On`](crate::tls::TlsMode::On)). The Unix socket stays
    /// plain (local only, as q's).
    pub tls: Option<Arc<ServerTls>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("tcp", &self.tcp)
            .field("unix_port", &self.unix_port)
            .field("capability", &self.capability)
            .field("max_connections", &self.max_connections)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("max_queue_frames", &self.max_queue_frames)
            .field("max_pending", &self.max_pending)
            .field("force_compression", &self.force_compression)
            .field("authenticator", &self.authenticator.is_some())
            .field("failure_limiter", &self.failure_limiter.is_some())
            .field("answer_client_probes", &self.answer_client_probes)
            .field("tls", &self.tls.as_ref().map(|t| t.mode()))
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Listens on `addr` over TCP with the defaults.
    pub fn tcp(addr: SocketAddr) -> ServerConfig {
        ServerConfig {
            tcp: Some(addr),
            unix_port: None,
            capability: MAX_CAPABILITY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_queue_frames: DEFAULT_MAX_QUEUE_FRAMES,
            max_pending: DEFAULT_MAX_PENDING,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            force_compression: false,
            validate_messages: true,
            authenticator: None,
            failure_limiter: None,
            answer_client_probes: true,
            tls: None,
        }
    }

    /// Listens on 127.0.0.1 with a free port (tests, examples).
    pub fn loopback() -> ServerConfig {
        ServerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn limits(&self) -> LinkLimits {
        LinkLimits {
            max_queue_bytes: self.max_queue_bytes,
            max_queue_frames: self.max_queue_frames,
            max_pending: self.max_pending,
            max_message_bytes: self.max_message_bytes,
            validate: self.validate_messages,
        }
    }
}

#[derive(Default)]
struct Registry {
    peers: Mutex<HashMap<ConnId, Peer>>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Peer>> {
        self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Access to a running server's connections from any task (q's `.z.H` and
/// handles): reach a peer by id to push async messages to it.
#[derive(Clone)]
pub struct ServerHandle {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").field("connections", &self.len()).finish()
    }
}

impl ServerHandle {
    /// The open connection with this id.
    pub fn peer(&self, id: ConnId) -> Option<Peer> {
        self.registry.map().get(&id).cloned()
    }

    /// All open connections.
    pub fn peers(&self) -> Vec<Peer> {
        self.registry.map().values().cloned().collect()
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.registry.map().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bound, not yet running, server.
pub struct Server {
    tcp: Option<TcpListener>,
    unix: Option<stream::UnixListener>,
    unix_name: Option<String>,
    config: ServerConfig,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("tcp", &self.local_addr())
            .field("unix", &self.unix_name)
            .field("config", &self.config)
            .finish()
    }
}

impl Server {
    /// Binds the listeners (TCP_NODELAY and keepalive are set per
    /// connection). A listener that cannot be bound is
    /// [`IpcError::Listen`], naming its address.
    pub async fn bind(config: ServerConfig) -> Result<Server, IpcError> {
        let tcp = match config.tcp {
            Some(a) => Some(TcpListener::bind(a).await.map_err(|source| IpcError::Listen {
                addr: a.to_string(),
                what: "kdb+ IPC",
                source,
            })?),
            None => None,
        };
        let (unix, unix_name) = match config.unix_port {
            Some(p) => {
                let port = match (p, &tcp) {
                    (0, Some(l)) => l.local_addr()?.port(),
                    (p, _) => p,
                };
                let (l, name) = stream::bind_unix(port).map_err(|e| match e {
                    IpcError::Io(source) => IpcError::Listen {
                        addr: crate::address::unix_socket_name(port),
                        what: "kdb+ IPC, Unix socket",
                        source,
                    },
                    e => e,
                })?;
                (Some(l), Some(name))
            }
            None => (None, None),
        };
        Ok(Server { tcp, unix, unix_name, config, registry: Arc::default() })
    }

    /// The bound TCP address (with the port picked for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The Unix socket's name (`/tmp/kx.PORT`; abstract on Linux), if any.
    pub fn unix_name(&self) -> Option<&str> {
        self.unix_name.as_deref()
    }

    /// A handle on the connections, usable while the server runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle { registry: self.registry.clone() }
    }

    /// Accepts and serves connections until `shutdown` completes; then stops
    /// accepting, lets every connection finish what it owes (within the
    /// drain timeout) and returns.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), IpcError> {
        let Server { tcp, unix, config, registry, .. } = self;
        let handler = Arc::new(handler);
        let config = Arc::new(config);
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                r = accept_tcp(tcp.as_ref()) => r.map(|(s, a)| Accepted::Tcp(s, a)),
                r = stream::accept_unix(unix.as_ref()) => r.map(Accepted::Unix),
                Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = res && e.is_panic() {
                        error!(error = %e, "connection task panicked");
                    }
                    continue;
                }
            };
            let accepted = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let remote = accepted.remote();
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                warn!(%remote, limit = config.max_connections, "refusing connection: connection limit reached");
                continue;
            };
            let ctx = ConnCtx {
                handler: handler.clone(),
                config: config.clone(),
                registry: registry.clone(),
                closing: stop.child_token(),
                _permit: permit,
            };
            match accepted {
                Accepted::Tcp(s, _) => {
                    stream::tune_tcp(&s);
                    match config.tls.clone() {
                        None => tasks.spawn(serve(ctx, s, remote)),
                        Some(tls) => tasks.spawn(serve_tls_port(ctx, s, remote, tls)),
                    };
                }
                Accepted::Unix(s) => {
                    tasks.spawn(serve(ctx, s, remote));
                }
            }
        }
        drop(tcp);
        drop(unix);
        info!(connections = tasks.len(), "server stopping: draining connections");
        stop.cancel();
        while let Some(res) = tasks.join_next().await {
            if let Err(e) = res
                && e.is_panic()
            {
                error!(error = %e, "connection task panicked");
            }
        }
        Ok(())
    }
}

enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(stream::UnixStream),
}

impl Accepted {
    fn remote(&self) -> RemoteAddr {
        match self {
            Accepted::Tcp(_, a) => RemoteAddr::Tcp(*a),
            Accepted::Unix(_) => RemoteAddr::Unix,
        }
    }
}

async fn accept_tcp(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

struct ConnCtx<H> {
    handler: Arc<H>,
    config: Arc<ServerConfig>,
    registry: Arc<Registry>,
    closing: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

/// A [`Handler`] bound to one connection, as the read loop calls it.
pub(crate) struct HandlerDispatch<H> {
    pub(crate) handler: H,
    pub(crate) peer: Peer,
    /// Answer clients' connect probes before the handler sees them.
    pub(crate) answer_probes: bool,
}

impl<H: Handler> Dispatch for HandlerDispatch<H> {
    async fn on_sync(&self, msg: Message, responder: Responder) {
        if self.answer_probes
            && let Some(k) = crate::pykx::answer_client_probe(&msg)
        {
            // a connection closed meanwhile cannot be answered; nothing to do
            let _ = responder.reply(k);
            return;
        }
        self.handler.on_sync(&self.peer, msg, responder).await;
    }
    async fn on_async(&self, msg: Message) {
        self.handler.on_async(&self.peer, msg).await;
    }
}

/// Reads the client hello; bytes after it stay in the returned buffer.
pub(crate) async fn read_hello<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<(ClientHello, BytesMut), HandshakeError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some((hello, n)) = handshake::parse_client_hello(&buf, MAX_HELLO_LEN)? {
            buf.advance(n);
            return Ok((hello, buf));
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(HandshakeError::Eof),
            Ok(_) => {}
        }
    }
}

/// The limiter's lock; its table stays consistent whatever a panicking
/// holder left (each call is one short update), so poison is ignored.
fn lock(l: &Mutex<FailureLimiter>) -> std::sync::MutexGuard<'_, FailureLimiter> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Handshake and authentication; `None` when the client is refused (the
/// caller closes without a byte).
async fn accept_client<H: Handler, S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &ConnCtx<H>,
    s: &mut S,
    id: ConnId,
    remote: RemoteAddr,
) -> Option<(ConnInfo, BytesMut)> {
    let (hello, rest) = match tokio::time::timeout(ctx.config.handshake_timeout, read_hello(s)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            debug!(conn = %id, %remote, error = %e, "handshake failed");
            return None;
        }
        Err(_) => {
            debug!(conn = %id, %remote, "handshake timed out");
            return None;
        }
    };
    let capability = handshake::reply_capability(hello.capability, ctx.config.capability);
    let info = ConnInfo { id, remote, user: hello.user.clone(), capability };
    if let Some(a) = &ctx.config.authenticator {
        let limiter = ctx.config.failure_limiter.as_deref();
        let ip = match remote {
            RemoteAddr::Tcp(a) => Some(a.ip().to_canonical()),
            RemoteAddr::Unix => None,
        };
        let now = std::time::Instant::now();
        if let (Some(l), Some(ip)) = (limiter, ip)
            && let Verdict::Wait(wait) = lock(l).verdict(ip, &hello.user, now)
        {
            warn!(conn = %id, %remote, user = ?hello.user, retry_in_ms = wait.as_millis() as u64,
                "access denied: too many failed logins from this address");
            return None;
        }
        if !a.check(&hello.user, &hello.password) {
            let wait = match (limiter, ip) {
                (Some(l), Some(ip)) => lock(l).failed(ip, &hello.user, now),
                _ => Duration::ZERO,
            };
            // `?`: the name as sent, quoted and escaped (a newline in it must not forge a log line)
            warn!(conn = %id, %remote, user = ?hello.user, wait_ms = wait.as_millis() as u64,
                "access denied by the password file");
            return None;
        }
        if let (Some(l), Some(ip)) = (limiter, ip) {
            lock(l).succeeded(ip, &hello.user);
        }
    }
    if !ctx.handler.authenticate(&info, &hello.password).await {
        info!(conn = %id, %remote, user = ?hello.user, "access denied by the handler");
        return None;
    }
    // The capability byte goes out alone (node-q needs it in its own read).
    if let Err(e) = s.write_all(&[capability]).await {
        debug!(conn = %id, error = %e, "could not write the capability byte");
        return None;
    }
    Some((info, rest))
}

/// A connection on a port with TLS: TLS ends here (the connection is then
/// served over the [`crate::tls::relay`]'s plain socket), a plain client is
/// served as on any port or, on a TLS-only port, refused with a log line.
async fn serve_tls_port<H: Handler>(ctx: ConnCtx<H>, s: TcpStream, remote: RemoteAddr, tls: Arc<ServerTls>) {
    match tls.accept(s).await {
        Ok(Inbound::Plain(s)) => serve(ctx, s, remote).await,
        Ok(Inbound::Tls(s)) => match crate::tls::relay(*s) {
            Ok(relayed) => serve(ctx, relayed, remote).await,
            Err(e) => warn!(%remote, error = %e, "closing TLS connection: cannot relay it"),
        },
        Err(TlsError::PlainRefused) => {
            warn!(%remote, "refusing plain kdb+ connection: this port takes TLS only (--tls only)");
        }
        Err(e) => info!(%remote, error = %e, "closing connection: TLS handshake failed"),
    }
}

async fn serve<H: Handler, S: IntoHalves>(ctx: ConnCtx<H>, mut s: S, remote: RemoteAddr) {
    let id = ConnId::next();
    let Some((info, rest)) = accept_client(&ctx, &mut s, id, remote).await else {
        return;
    };
    debug!(conn = %id, %remote, user = ?info.user, capability = info.capability, "connection open");
    let compress = ctx.config.force_compression || !remote.is_local();
    let (r, w) = s.into_halves();
    let link = Arc::new(Link::new(info, compress, ctx.config.limits(), ctx.closing.clone(), Arc::new(w)));
    let peer = Peer { link: link.clone() };
    let writer = tokio::spawn(link::write_loop(link.clone()));
    ctx.registry.map().insert(id, peer.clone());

    let reader = {
        let link = link.clone();
        let handler = ctx.handler.clone();
        let peer = peer.clone();
        let answer_probes = ctx.config.answer_client_probes;
        tokio::spawn(async move {
            handler.on_open(&peer).await;
            let dispatch = HandlerDispatch { handler, peer, answer_probes };
            link::read_loop(&link, r, rest, &dispatch).await;
        })
    };
    if let Err(e) = reader.await {
        if e.is_panic() {
            error!(conn = %id, error = %e, "handler panicked; closing connection");
        }
        link.abort_now();
    }
    link.begin_drain();
    finish_writer(&link, writer, ctx.config.drain_timeout).await;
    ctx.registry.map().remove(&id);
    debug!(conn = %id, "connection closed");
    ctx.handler.on_close(&peer).await;
}

/// Waits for the writer to flush, up to `drain`; then cuts the connection.
pub(crate) async fn finish_writer(link: &Link, mut writer: tokio::task::JoinHandle<()>, drain: Duration) {
    if tokio::time::timeout(drain, &mut writer).await.is_err() {
        let owed = link.pending_replies();
        warn!(conn = %link.info.id, owed, "closing connection: drain timeout, output or answers still pending");
        link.abort_now();
        let _ = writer.await;
    }
    link.abort_now();
}
