//! The settings of `qmesh lb` and `qmesh gateway`, and their defaults.

use std::time::Duration;

use qmesh_ipc::Backoff;
use qmesh_process::{ShellError, ShellOptions};

use crate::gw::GatewayConfig;
use crate::lb::LbConfig;
use crate::types::ServiceName;

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
    /// Static instances were given to a gateway whose load balancer is
    /// another process: their pool must be in this one.
    #[error("static instances (--instances) need the embedded load balancer, not --lb")]
    StaticNeedsEmbeddedLb,
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
    /// Static instances (`--instances SERVICE=HOST:PORT,…`): plain kdb+
    /// processes the gateway connects to itself. Needs the embedded load
    /// balancer ([`LbLocation::Embedded`]): their pool is in this process.
    pub static_instances: Vec<StaticInstance>,
    /// Where plain queries go (`--default-service`): a sync string, a
    /// function call or an async message that is not `userQuery` (nor the
    /// protocol) is routed to this service as the client sent it. `None`:
    /// such messages are refused with `bad request`.
    pub default_service: Option<ServiceName>,
}

/// One static instance: a plain kdb+ process (q, an RDB, an HDB, a `qmesh
/// service`) the gateway connects to and sends each query as a sync
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticInstance {
    pub service: ServiceName,
    /// Where to connect, with the credentials (`:host:port:user:password`)
    /// if any; shown without the password.
    pub address: qmesh_ipc::Address,
}

/// Why an `--instances` value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--instances {value:?}: {reason}")]
pub struct InstancesError {
    pub value: String,
    pub reason: String,
}

/// Parses `--instances` values: `SERVICE=HOST:PORT[,HOST:PORT…]`, several
/// services in one value separated the same way (`EQ=a:1,b:2,FX=c:3`, which
/// is also what a `qmesh.toml` list or the environment gives). An item with
/// `=` starts a service; an item without continues the last one. Addresses
/// take every form `hopen` does (`host:port`, `:host:port:user:password`).
pub fn parse_instances<S: AsRef<str>>(values: &[S]) -> Result<Vec<StaticInstance>, InstancesError> {
    let mut out = Vec::new();
    for value in values {
        let value = value.as_ref();
        let err = |reason: String| InstancesError { value: value.to_string(), reason };
        let mut service: Option<ServiceName> = None;
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let addr = match item.split_once('=') {
                Some((name, addr)) => {
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(err(format!("{item:?} names no service")));
                    }
                    if name.len() > crate::proto::MAX_NAME_BYTES {
                        return Err(err(format!(
                            "service name longer than {} bytes",
                            crate::proto::MAX_NAME_BYTES
                        )));
                    }
                    service = Some(ServiceName::new(name));
                    addr.trim()
                }
                None => item,
            };
            let Some(svc) = service.clone() else {
                return Err(err(format!("{item:?} comes before any SERVICE=")));
            };
            let address = qmesh_ipc::Address::parse(addr).map_err(|e| err(format!("{addr:?}: {e}")))?;
            out.push(StaticInstance { service: svc, address });
        }
        if service.is_none() {
            return Err(err("no SERVICE=HOST:PORT in it".into()));
        }
    }
    Ok(out)
}

impl Default for GatewayOptions {
    fn default() -> GatewayOptions {
        GatewayOptions {
            shell: ShellOptions::new("gateway", "gateway"),
            lb: LbLocation::Embedded(LbConfig::default()),
            gateway: GatewayConfig::default(),
            reconnect: DEFAULT_RECONNECT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            static_instances: Vec::new(),
            default_service: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_parse_per_service() {
        let v = parse_instances(&["EQ=localhost:5001,localhost:5002", "FX=:h:7:u:p,EQ2=a:1"]).unwrap();
        let got: Vec<(String, String)> =
            v.iter().map(|i| (i.service.text(), i.address.to_string())).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].0, "EQ");
        assert_eq!(got[1].0, "EQ");
        assert_eq!(got[2].0, "FX");
        assert_eq!(got[3].0, "EQ2");
        assert!(!got[2].1.contains(":p"), "the password is not shown: {}", got[2].1);
        assert!(parse_instances(&["localhost:5001"]).is_err());
        assert!(parse_instances(&["=localhost:5001"]).is_err());
        assert!(parse_instances(&["EQ=nohostport"]).is_err());
        assert!(parse_instances(&[""]).is_err());
    }
}
