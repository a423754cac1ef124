//! The discovery registry: every process of a kdb+ estate heartbeats here;
//! the registry knows who is alive from its own clock, answers lookups over
//! kdb+ IPC and HTTP, streams changes to browsers and scripts over a
//! resumable WebSocket feed, and shows it all on a live dashboard.
//!
//! A screenshot of the dashboard is in the repository at
//! [`docs/dashboard.png`](../../../docs/dashboard.png) (taken by the
//! headless-Chromium test `crates/qmesh/tests/discovery_dashboard.rs`).
//!
//! It speaks the heartbeat of the blog "Create a discovery service using
//! kdb+" unchanged — a q process that already runs its `.client.publish`
//! works as is — and fixes what made that a demo: state comes from the
//! registry's clock, not the client's; nothing a browser sends is
//! evaluated; the registry never calls back into a client; limits are
//! named; the table survives a restart.
//!
//! * [`registry`]: the core, sans-IO — heartbeats, closes and clock ticks
//!   in, numbered changes out; the states and their thresholds.
//! * [`wire`]: the kdb+ calls (`.master.storeHb`, `.master.discovery`,
//!   `.master.lookup`) with q examples.
//! * [`http`]: the JSON API, the WebSocket feed protocol, `/sd`, the
//!   dashboard.
//! * [`store`]: the last-known registry in redb; its record format.
//! * [`limits`]: every limit.
//! * [`server`]: the process: [`bind`], [`Bound::run`], [`run`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), qmesh_discovery::DiscoveryError> {
//! use qmesh_discovery::{Options, run};
//! use qmesh_process::Shutdown;
//! let options = Options { http: Some("127.0.0.1:0".parse().unwrap()), ..Options::default() };
//! run(options, Shutdown::new()).await
//! # }
//! ```

pub mod http;
pub mod limits;
mod metrics;
pub mod registry;
pub mod server;
pub mod store;
pub mod wire;

pub use registry::{Config, KindPolicy, State, Status};
pub use server::{
    Bound, Clock, DiscoveryError, Handle, Options, PERSIST_BEATS_INTERVAL, PERSIST_INTERVAL, bind, run,
};
