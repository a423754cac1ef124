//! The settings of `qmesh lb` and `qmesh gateway`, and their defaults.

use std::time::Duration;

use qmesh_ipc::Backoff;
use qmesh_process::{ShellError, ShellOptions};

use crate::gw::GatewayConfig;
use crate::lb::LbConfig;

/// Default time, after SIGINT/SIGTERM, that requests in flight get to finish
/// before they are failed with `shutting down`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Backoff for links to service instances and to the load balancer:
/// 50 ms doubling to 5 s, forever.
pub const DEFAULT_RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(50),
    max: Duration::from_secs(5),
    factor: 2.0,
    max_attempts: None,
};

/// Why a routing process could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(transparent)]
    Shell(#[from] ShellError),
}

/// Settings of `qmesh lb`.
#[derive(Debug, Clone)]
pub struct LbOptions {
    /// Ports, `-u`, message size and the other settings every server kind
    /// has; the HTTP side serves `/api/services`.
    pub shell: ShellOptions,
    pub lb: LbConfig,
}

impl Default for LbOptions {
    fn default() -> LbOptions {
        LbOptions { shell: ShellOptions::new("lb", "lb"), lb: LbConfig::default() }
    }
}

/// Finds the load balancer's address now (e.g. an active `lb` in the
/// discovery registry); `None` when there is none yet. Called before the
/// first connection and again each time the load balancer it gave stays
/// unreachable for [`FOLLOW_ATTEMPTS`](crate::runtime::FOLLOW_ATTEMPTS) attempts in a row.
#[derive(Clone)]
pub struct LbFinder(
    #[allow(clippy::type_complexity)]
    pub  std::sync::Arc<
        dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<qmesh_ipc::Address>> + Send>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for LbFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LbFinder")
    }
}

/// Where a gateway's load balancer is.
#[derive(Debug, Clone)]
pub enum LbLocation {
    /// A `qmesh lb` (or any process speaking the protocol) at this address.
    Remote(qmesh_ipc::Address),
    /// Wherever `LbFinder` says, looked up again when the one found goes
    /// away: the load balancer follows a move (seed 001: a gateway given
    /// `--discovery` and no `--lb` finds its load balancer there).
    Found(LbFinder),
    /// In this process; services register with the gateway's own port.
    Embedded(LbConfig),
}

/// Settings of `qmesh gateway`.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Ports, `-u` for clients, message size (from clients, and on the
    /// links to services) and the other settings every server kind has;
    /// the HTTP side serves `/query` and `/api/services`.
    pub shell: ShellOptions,
    pub lb: LbLocation,
    pub gateway: GatewayConfig,
    /// Reconnection to the load balancer and to instances.
    pub reconnect: Backoff,
    /// Time requests in flight get to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for GatewayOptions {
    fn default() -> GatewayOptions {
        GatewayOptions {
            shell: ShellOptions::new("gateway", "gateway"),
            lb: LbLocation::Embedded(LbConfig::default()),
            gateway: GatewayConfig::default(),
            reconnect: DEFAULT_RECONNECT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}
