//! The process shell: what every qmesh server process has, whatever its
//! kind, written once.
//!
//! * [`Shell`]: binds the kdb+ IPC port and the HTTP port
//!   ([`ShellOptions`]), fills in the process's [`Identity`], gives the
//!   listening lines for the binary to print, serves a component's IPC
//!   [`qmesh_ipc::Handler`] and its HTTP [`axum::Router`] until
//!   [`Shutdown`], and stops in order ([`Shell::run`]).
//! * [`Shutdown`]: one signal, triggered by SIGINT/SIGTERM or by code, that
//!   every task of a process watches.
//! * [`http`]: the HTTP side — the component's own routes plus `/healthz`,
//!   `/metrics` (Prometheus text) and `/api/identity` (the [`Identity`] as
//!   JSON), at most [`http::DEFAULT_MAX_HTTP_CONNECTIONS`] connections.
//! * [`Metrics`]: the process's metric registry, created by the shell;
//!   components register on [`Shell::metrics`].
//! * [`WireError`]: the error catalog shared by the kdb+ IPC side (`'timeout`,
//!   `'queue full: FX`) and the HTTP side (`{"error":"timeout",…}` with a
//!   status), so both speak the same words.
//! * [`json`]: the one JSON form of kdb+ values and the one `POST /query`
//!   body, shared by every HTTP API.
//! * [`fail_fast`]: the panic hook that ends the process on a panic.
//! * [`feed`]: a sequence-numbered, resumable, bounded change feed (the
//!   discovery dashboard's live table rides on it).
//! * [`ws`]: WebSockets with size limits and strict JSON commands.
//! * [`access`]: with `-u`, every HTTP route asks for the same users (HTTP
//!   Basic), failed logins slowed per address; what `--open-health` and
//!   `--open-metrics` leave open.
//! * [`permissions`]: the permissions file (`--permissions`): which users
//!   may query which services, publish or subscribe to which streams,
//!   heartbeat to discovery; reloaded when it changes.
//!
//! # A server kind on the shell
//!
//! A server kind is a library crate with a handler and a router; its
//! `cmd/<kind>.rs` builds [`ShellOptions`] from the flags, binds, prints
//! the lines and runs:
//!
//! ```no_run
//! # async fn demo() -> Result<(), qmesh_process::ShellError> {
//! use qmesh_codec::{K, Message};
//! use qmesh_ipc::{Handler, Peer, Responder};
//! use qmesh_process::{Shell, ShellOptions, Shutdown};
//!
//! struct Registry;
//! impl Handler for Registry {
//!     async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
//!         let _ = responder.reply(K::GenericNull);
//!     }
//! }
//!
//! let mut opts = ShellOptions::new("discovery", "disc1"); // kind, name
//! opts.http = Some("127.0.0.1:0".parse().expect("addr"));
//! let shell = Shell::bind(opts).await?;                      // -u loaded, ports bound
//! let lines = shell.listening_lines();                      // the binary prints these
//! shell.metrics().register("qmesh_discovery_entries", "Entries held.",
//!     prometheus_client::metrics::gauge::Gauge::<i64>::default());
//! shell.health().set_ready(true);
//! let api = axum::Router::new();                           // the kind's /api routes
//! let shutdown = Shutdown::new();                           // the binary: Shutdown::on_signals()
//! shell.run(Registry, api, shutdown, async { /* drain: finish or fail work in flight */ }).await?;
//! # let _ = lines; Ok(()) }
//! ```
//!
//! # Invariants
//!
//! * One shell: every server kind binds, announces, serves and stops
//!   through [`Shell`]; none opens its own listener or spawns its own HTTP
//!   server.
//! * Every server answers `GET /healthz`, `GET /metrics` and
//!   `GET /api/identity`, and answers the probes of PyKX and q's `h""` on
//!   IPC without its handler seeing them.
//! * Fail fast: the binary installs [`fail_fast::install`], so a panic
//!   anywhere — possibly while holding process state — logs one line and
//!   aborts the process instead of carrying on with half-updated state; a
//!   supervisor restarts it.

pub mod access;
pub mod dirlock;
pub mod error;
pub mod fail_fast;
pub mod feed;
pub mod http;
mod identity;
pub mod json;
mod metrics;
pub mod permissions;
mod shell;
mod shutdown;
pub mod ws;

pub use access::{Access, AuthUser};
pub use error::{ErrorKind, WireError};
pub use feed::{Delivery, Feed, FeedConfig, FeedError, SnapshotReason, Start, Subscription};
pub use http::Health;
pub use identity::{Identity, host_name};
pub use metrics::Metrics;
pub use permissions::{Action, Permissions};
pub use shell::{Shell, ShellError, ShellOptions};
pub use shutdown::Shutdown;
