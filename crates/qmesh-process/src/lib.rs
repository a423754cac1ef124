//! What every qmesh server process has, whatever its kind.
//!
//! * [`Shutdown`]: one signal, triggered by SIGINT/SIGTERM or by code, that
//!   every task of a process watches.
//! * [`http`]: the HTTP side of a process — the component's own `/api`
//!   routes plus `/healthz` and `/metrics` (Prometheus text).
//! * [`Metrics`]: the process's metric registry.
//! * [`WireError`]: the error catalog shared by the kdb+ IPC side (`'timeout`,
//!   `'queue full: FX`) and the HTTP side (`{"error":"timeout",…}` with a
//!   status), so both speak the same words.
//! * [`Identity`]: a process's name and kind.
//! * [`feed`]: a sequence-numbered, resumable, bounded change feed (the
//!   discovery dashboard's live table rides on it).
//! * [`ws`]: WebSockets with size limits and strict JSON commands.

pub mod error;
pub mod feed;
pub mod http;
mod identity;
mod metrics;
mod shutdown;
pub mod ws;

pub use error::{ErrorKind, WireError};
pub use feed::{Delivery, Feed, FeedConfig, FeedError, SnapshotReason, Start, Subscription};
pub use http::Health;
pub use identity::Identity;
pub use metrics::Metrics;
pub use shutdown::Shutdown;
