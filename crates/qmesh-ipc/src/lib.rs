//! kdb+ IPC connections over tokio: the one place in qmesh that touches
//! sockets for kdb+ IPC.
//!
//! # Client
//!
//! ```no_run
//! # async fn demo() -> Result<(), qmesh_ipc::IpcError> {
//! use qmesh_ipc::{Address, ClientOptions, Connection, Incoming};
//! use qmesh_codec::K;
//!
//! let addr = Address::parse(":localhost:5001:user:password")?; // or ":unix://5001"
//! let conn = Connection::connect(&addr, ClientOptions::default()).await?;
//! let two = conn.query("1+1").await?;                       // h"1+1" → K
//! let msg = conn.call(&K::list(vec![K::sym("f"), K::long(1)])).await?; // q error → Err(IpcError::Remote(text))
//! conn.send_async(&K::string("x:1"))?;                       // neg[h]
//! conn.flush().await?;                                       // neg[h][]
//! let (sender, mut receiver) = conn.split();                // Sender is Clone; calls may overlap
//! while let Some(m) = receiver.recv().await {               // what the server pushes
//!     match m { Incoming::Async(msg) => {} Incoming::Sync(msg, responder) => { let _ = responder.reply(K::long(0)); } }
//! }
//! # Ok(()) }
//! ```
//!
//! [`session::Session`] keeps a connection up: it reconnects with
//! [`client::Backoff`], sends a hello on every connect and reports the
//! connection up and down; every long-lived link between qmesh processes is
//! one. [`client::Reconnecting`] is the simpler request-only form (no
//! hello, no pushes).
//!
//! # Server
//!
//! ```no_run
//! # async fn demo() -> Result<(), qmesh_ipc::IpcError> {
//! use qmesh_ipc::{Handler, Peer, Responder, Server, ServerConfig};
//! use qmesh_codec::Message;
//!
//! struct Echo;
//! impl Handler for Echo {
//!     async fn on_sync(&self, _peer: &Peer, msg: Message, responder: Responder) {
//!         // PyKX's connect probes and q's `h""` never get here: the server
//!         // answers them (ServerConfig::answer_client_probes)
//!         let _ = responder.forward(&msg); // or .reply(K), .error("type"), or move it to another task
//!     }
//! }
//! let server = Server::bind(ServerConfig::loopback()).await?;
//! println!("listening {}", server.local_addr().expect("tcp"));
//! let connections = server.handle(); // push to any connection: connections.peer(id)?.send_async(&k)
//! server.run(Echo, async { /* shutdown signal */ }).await?;
//! # Ok(()) }
//! ```
//!
//! [`Handler`] has q's hooks as `async fn`s: [`Handler::authenticate`]
//! (`.z.pw`, after the `-u` [`auth::PasswordFile`] check set in
//! [`ServerConfig::authenticator`]), [`Handler::on_open`] (`.z.po`),
//! [`Handler::on_sync`] (`.z.pg`), [`Handler::on_async`] (`.z.ps`),
//! [`Handler::on_close`] (`.z.pc`). A connection is a [`Peer`] (cloneable,
//! usable from any task) with a [`ConnId`] that plays `.z.w` and is never
//! reused. A sync request comes with a [`Responder`]: answer it once, now or
//! later from any task (q's `-30!` deferred response); answers on one
//! connection leave in request order; a dropped responder answers with the
//! error [`link::DROPPED_RESPONSE_TEXT`].
//!
//! # Guarantees
//!
//! * Handshake: both forms (with and without the capability byte) are
//!   accepted; the reply is `min(client, ours)`, one byte written alone;
//!   a refusal closes without a byte.
//! * Bounded: connections ([`ServerConfig::max_connections`]), the hello
//!   ([`handshake::MAX_HELLO_LEN`]), message size (checked from the header
//!   before the body is read; a sync request gets `'message too large`),
//!   each connection's outbound queue (a slow reader is disconnected, with a
//!   log line), unanswered requests per connection.
//! * A malformed message closes that connection only (logged).
//! * Messages are compressed, by q's rule, only to peers that are neither
//!   loopback nor Unix sockets ([`ServerConfig::force_compression`] for
//!   tests). TCP_NODELAY is set. A message leaves from the task that queued
//!   it (one non-blocking `writev`), or with the others its read caused
//!   ([`batch`]); each connection's writer task only finishes what a full
//!   socket did not take.
//! * Bodies are never copied on the way in ([`qmesh_codec::Message`] slices
//!   the read buffer) and raw bodies are not copied on the way out
//!   ([`Responder::reply_raw`], [`Peer::send_raw`], [`Peer::send_frame`]).
//!
//! # Modules
//!
//! * [`address`]: `host:port`, `:host:port:user:password`, `:tcps://host:port`,
//!   `:unix://port`.
//! * [`tls`]: TLS on a listening port by q's `-E` modes (plain, both on one
//!   port by the first byte, TLS only; [`ServerConfig::tls`]), certificates
//!   reloaded on SIGHUP, and outbound TLS to `:tcps://` addresses checked
//!   against a CA file.
//! * [`handshake`]: the handshake, sans-IO.
//! * [`auth`]: the [`auth::Authenticator`] trait and `-u` password files
//!   (plain, MD5 or SHA-1 of the password, as q accepts).
//! * [`limiter`]: failed logins per address, sans-IO: repeated failures
//!   are slowed down (shared by a process's IPC and HTTP ports).
//! * [`credentials`]: the client credentials file (`--credentials`), used by
//!   every connection this process opens to an address that carries none.
//! * [`framing`]: the `tokio_util` codec for whole messages.
//! * [`client`], [`server`]: the two ends; [`link`]: what they share;
//!   [`session`]: a client connection kept up.
//! * [`batch`]: many small writes, few syscalls ([`on_thread_park`] is the
//!   runtime hook that lets a thread cork writes until it sleeps).
//! * [`pykx`]: the answers to PyKX's connect-time probes and q's `h""`,
//!   which a server gives itself ([`ServerConfig::answer_client_probes`]).
//! * [`echo`]: an echo handler, the stand-in backend of tests and benchmarks.

pub mod address;
pub mod auth;
pub mod batch;
pub mod client;
pub mod credentials;
pub mod echo;
pub mod error;
pub mod framing;
pub mod handshake;
pub mod limiter;
pub mod link;
pub mod pykx;
pub mod server;
pub mod session;
mod stream;
pub mod tls;

pub use address::{Address, AddressError, Endpoint};
pub use auth::{Authenticator, PasswordFile};
pub use batch::on_thread_park;
pub use client::{Backoff, ClientOptions, Connection, Incoming, Receiver, Reconnecting, Sender};
pub use credentials::Credentials;
pub use error::IpcError;
pub use link::{ConnId, ConnInfo, Peer, RemoteAddr, Responder};
pub use server::{Handler, Server, ServerConfig, ServerHandle};
pub use session::{Hello, Session, SessionHooks};
pub use tls::{ClientTls, ServerTls, TlsError, TlsFiles, TlsMode};
