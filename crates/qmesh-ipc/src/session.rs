//! A session: a client connection kept up for as long as it is wanted.
//!
//! Every process that holds a connection open to another — a gateway to its
//! load balancer and to each instance, a service to its load balancer, a
//! heartbeat to discovery — does the same thing: connect (waiting
//! [`Backoff::delay`] between failed attempts), send a *hello* on every
//! connect (`registerGW`, `registerResource`…), report the connection up,
//! run a [`Handler`] on what the peer sends, notice the loss, report it
//! down, and start again, until told to stop. [`Session::run`] is that loop,
//! once; [`SessionHooks`] is what differs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qmesh_ipc::IpcError> {
//! use qmesh_codec::{K, Message};
//! use qmesh_ipc::session::{Down, Hello, Session, SessionHooks, Up};
//! use qmesh_ipc::{Address, Backoff, ClientOptions, Handler, Peer, Responder, Sender};
//! use tokio_util::sync::CancellationToken;
//!
//! struct Pushes;
//! impl Handler for Pushes {
//!     async fn on_sync(&self, _p: &Peer, _m: Message, r: Responder) { let _ = r.error("nyi"); }
//! }
//! struct Register;
//! impl SessionHooks for Register {
//!     type Handler = Pushes;
//!     fn handler(&self) -> Pushes { Pushes }
//!     fn hello(&self) -> Hello { Hello::Async(K::list(vec![K::sym("registerResource"), K::sym("EQ")])) }
//!     fn up(&self, _sender: &Sender, _answer: Option<Message>) -> Up { Up::Keep }
//!     fn down(&self, _why: Down<'_>) {}
//! }
//! let session = Session::new(Address::parse("lb:5001")?, ClientOptions::default(), Backoff::default());
//! session.run(Register, CancellationToken::new()).await;
//! # Ok(()) }
//! ```

use qmesh_codec::{K, Message};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::address::Address;
use crate::client::{Backoff, ClientOptions, Connection, Sender};
use crate::error::IpcError;
use crate::link::{ConnInfo, Peer, Responder};
use crate::server::Handler;

/// What a session sends first on every connection.
#[derive(Debug, Clone)]
pub enum Hello {
    /// Nothing: the connection is up once open.
    None,
    /// An async message (the whitepaper service's `registerResource`).
    Async(K),
    /// A sync call whose answer [`SessionHooks::up`] receives (a gateway's
    /// `registerGW`, answered with the resource table).
    Call(K),
}

/// Why a session is (still) down.
#[derive(Debug)]
pub enum Down<'a> {
    /// The peer could not be reached or refused us; `failures` in a row.
    Unreachable { error: &'a IpcError, failures: u32 },
    /// Connected, but the hello could not be sent, or its call failed.
    HelloFailed { error: &'a IpcError, failures: u32 },
    /// [`SessionHooks::up`] refused the hello's answer ([`Up::Reconnect`]).
    Refused { failures: u32 },
    /// An open connection was lost.
    Lost,
}

/// What [`SessionHooks::up`] decides about a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// Use it until it is lost.
    Keep,
    /// Close it and try again after the backoff (a bad hello answer).
    Reconnect,
    /// Close it and end the session (it is no longer wanted).
    Stop,
}

/// What differs between sessions: the handler run on each connection, the
/// hello, and what to do when the connection comes up or goes down. The
/// hooks are called from the session's task, one at a time, in order: an
/// `up` is always followed by one `down(Lost)` unless the session stops.
pub trait SessionHooks: Send + Sync + 'static {
    /// The handler of what the peer sends (pushes, its own sync requests),
    /// run on the connection's reader task; a fresh one per connection.
    type Handler: Handler;

    /// A handler for the next connection.
    fn handler(&self) -> Self::Handler;

    /// The hello to send on each connect.
    fn hello(&self) -> Hello {
        Hello::None
    }

    /// The connection is open and its hello sent; `answer` is the answer
    /// to a [`Hello::Call`].
    fn up(&self, sender: &Sender, answer: Option<Message>) -> Up;

    /// The connection failed or was lost. Called for each failed attempt.
    fn down(&self, why: Down<'_>);
}

/// A reconnecting client session (see the module docs).
#[derive(Debug, Clone)]
pub struct Session {
    addr: Address,
    opts: ClientOptions,
    backoff: Backoff,
}

/// How [`Session::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The stop token was cancelled.
    Stopped,
    /// [`SessionHooks::up`] answered [`Up::Stop`].
    NotWanted,
    /// [`Backoff::max_attempts`] failures in a row.
    GaveUp,
}

/// Wraps the hooks' handler so that the end of the connection's reader
/// (which drops the handler) tells the session the connection is gone.
struct Watched<H> {
    inner: H,
    _closed: oneshot::Sender<()>,
}

impl<H: Handler> Handler for Watched<H> {
    async fn authenticate(&self, info: &ConnInfo, password: &[u8]) -> bool {
        self.inner.authenticate(info, password).await
    }
    async fn on_open(&self, peer: &Peer) {
        self.inner.on_open(peer).await;
    }
    async fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) {
        self.inner.on_sync(peer, msg, responder).await;
    }
    async fn on_async(&self, peer: &Peer, msg: Message) {
        self.inner.on_async(peer, msg).await;
    }
    async fn on_close(&self, peer: &Peer) {
        self.inner.on_close(peer).await;
    }
}

impl Session {
    /// A session to `addr`; nothing is opened until [`run`](Session::run).
    pub fn new(addr: Address, opts: ClientOptions, backoff: Backoff) -> Session {
        Session { addr, opts, backoff }
    }

    /// The peer's address.
    pub fn addr(&self) -> &Address {
        &self.addr
    }

    /// Keeps the connection up until `stop` is cancelled (the connection is
    /// then closed, after what was queued on it leaves), `up` answers
    /// [`Up::Stop`], or the backoff gives up.
    pub async fn run<S: SessionHooks>(&self, hooks: S, stop: CancellationToken) -> SessionEnd {
        let mut failures = 0u32;
        loop {
            if self.backoff.max_attempts.is_some_and(|m| failures >= m) {
                return SessionEnd::GaveUp;
            }
            let delay = self.backoff.delay(failures);
            if !delay.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => return SessionEnd::Stopped,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            let (closed_tx, closed) = oneshot::channel::<()>();
            let handler = Watched { inner: hooks.handler(), _closed: closed_tx };
            let conn = tokio::select! {
                _ = stop.cancelled() => return SessionEnd::Stopped,
                c = Connection::connect_with_handler(&self.addr, self.opts.clone(), handler) => c,
            };
            let sender = match conn {
                Ok(s) => s,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    hooks.down(Down::Unreachable { error: &error, failures });
                    continue;
                }
            };
            let answer = match hooks.hello() {
                Hello::None => Ok(None),
                Hello::Async(k) => sender.send_async(&k).map(|()| None),
                Hello::Call(k) => tokio::select! {
                    _ = stop.cancelled() => {
                        sender.close();
                        return SessionEnd::Stopped;
                    }
                    r = sender.call(&k) => r.map(Some),
                },
            };
            let answer = match answer {
                Ok(a) => a,
                Err(error) => {
                    sender.close();
                    failures = failures.saturating_add(1);
                    hooks.down(Down::HelloFailed { error: &error, failures });
                    continue;
                }
            };
            match hooks.up(&sender, answer) {
                Up::Keep => {}
                Up::Reconnect => {
                    sender.close();
                    failures = failures.saturating_add(1);
                    hooks.down(Down::Refused { failures });
                    continue;
                }
                Up::Stop => {
                    sender.close();
                    return SessionEnd::NotWanted;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    sender.close();
                    return SessionEnd::Stopped;
                }
                // the handler is dropped when the connection's reader ends
                _ = closed => {}
            }
            hooks.down(Down::Lost);
            // the first attempt after a loss waits the initial backoff
            failures = 1;
        }
    }
}
