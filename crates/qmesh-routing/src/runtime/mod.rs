//! The load balancer and gateway processes: the state of the crate's
//! `router` module ([`Router`]) stood on the process shell ([`qmesh_process::Shell`]) — bound, served and
//! stopped in order.
//!
//! * `options`: [`LbOptions`], [`GatewayOptions`] and their defaults;
//! * this module: the driver ([`bind_lb`], [`bind_gateway`], [`Routing::run`]).
//!
//! How events reach the state and why one mutex serves are in the
//! `router` module's docs (`src/router/mod.rs`).

mod options;

pub use crate::router::{HTTP_CLIENT_BASE, Payload, Router};
pub use options::{
    DEFAULT_RECONNECT, DEFAULT_SHUTDOWN_GRACE, GatewayOptions, InstancesError, LbFinder, LbLocation,
    LbOptions, RoutingError, StaticInstance, parse_instances,
};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qmesh_ipc::ClientOptions;
use qmesh_process::{Identity, Metrics, Shell, Shutdown};

use crate::gw::Gateway;
use crate::lb::{GatewayProtocol, LoadBalancer};
use crate::metrics::GatewayMetrics;
use crate::router::{PlainSetup, RouterHandler, new_router, register_gw_metrics, register_lb_metrics};
use crate::types::{Address, PeerId};
use std::collections::HashMap;

/// Attempts in a row a gateway makes to reach a load balancer it found
/// ([`LbLocation::Found`]) before it asks where the load balancer is again.
/// With [`DEFAULT_RECONNECT`]'s backoff three attempts take a fraction of a
/// second after the loss; a load balancer that moved is followed as soon as
/// discovery lists it, and one that restarts in place is found again there.
pub const FOLLOW_ATTEMPTS: u32 = 3;

/// A bound routing process: its listeners are open, nothing runs yet.
pub struct Routing {
    shell: Shell,
    router: Arc<Router>,
    lb_target: Option<LbLocation>,
    /// Serves `/query` (a gateway) besides `/api/services`.
    gateway: bool,
    lb_role: bool,
    grace: Duration,
    /// The links to static instances, started by [`Routing::run`].
    connects: Vec<crate::gw::GwAction<crate::router::ReplyTo, qmesh_codec::RawObject>>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("identity", self.shell.identity())
            .field("ipc", &self.ipc_addr())
            .finish_non_exhaustive()
    }
}

/// Binds `qmesh lb`'s listeners.
pub async fn bind_lb(opts: LbOptions) -> Result<Routing, RoutingError> {
    let shell = Shell::bind(opts.shell).await?;
    let router = new_router(
        None,
        Some(LoadBalancer::new(opts.lb)),
        ClientOptions::default(),
        DEFAULT_RECONNECT,
        shell.health().clone(),
        None,
        PlainSetup::default(),
    );
    register_lb_metrics(shell.metrics(), &router);
    Ok(Routing {
        shell,
        router,
        lb_target: None,
        gateway: false,
        lb_role: true,
        grace: Duration::ZERO,
        connects: Vec::new(),
    })
}

/// Binds `qmesh gateway`'s listeners. Static instances
/// ([`GatewayOptions::static_instances`]) are connected to once it runs.
pub async fn bind_gateway(opts: GatewayOptions) -> Result<Routing, RoutingError> {
    if !opts.static_instances.is_empty() && matches!(opts.lb, LbLocation::Remote(_)) {
        return Err(RoutingError::StaticNeedsEmbeddedLb);
    }
    let link_opts =
        ClientOptions { max_message_bytes: opts.shell.ipc.max_message_bytes, ..ClientOptions::default() };
    let shell = Shell::bind(opts.shell).await?;
    let gm = GatewayMetrics::register(shell.metrics());
    let (mut core, mut lb, target) = match opts.lb {
        LbLocation::Embedded(cfg) => {
            let mut lb = LoadBalancer::new(cfg);
            lb.register_gateway(PeerId::LOCAL, GatewayProtocol::Qmesh);
            (Gateway::new(opts.gateway, true), Some(lb), None)
        }
        LbLocation::Remote(addr) => (Gateway::new(opts.gateway, false), None, Some(LbLocation::Remote(addr))),
        LbLocation::Found(f) => (Gateway::new(opts.gateway, false), None, Some(LbLocation::Found(f))),
    };
    // static instances: known to the gateway core (which asks for their
    // links once running), their services known to the load balancer
    let mut statics = HashMap::new();
    let mut connects = Vec::new();
    for si in opts.static_instances {
        // its name: `:host:port` (`:tcps://host:port` with TLS), never the credentials
        let scheme = if si.address.tls { "tcps://" } else { "" };
        let address = Address::new(format!(":{scheme}{}", si.address.endpoint));
        if let Some(lb) = lb.as_mut() {
            lb.declare_service(si.service.clone());
        }
        core.add_static_instance(si.service, address.clone(), &mut connects);
        statics.insert(address, si.address);
    }
    let lb_role = lb.is_some();
    let router = new_router(
        Some(core),
        lb,
        link_opts,
        opts.reconnect,
        shell.health().clone(),
        Some(gm),
        PlainSetup { statics, default_service: opts.default_service },
    );
    if let Some(p) = shell.permissions() {
        let _ = router.permissions.set(p);
    }

    register_gw_metrics(shell.metrics(), &router);
    if lb_role {
        register_lb_metrics(shell.metrics(), &router);
    }
    Ok(Routing {
        shell,
        router,
        lb_target: target,
        gateway: true,
        lb_role,
        grace: opts.shutdown_grace,
        connects,
    })
}

impl Routing {
    /// The kdb+ IPC address it listens on.
    pub fn ipc_addr(&self) -> Option<SocketAddr> {
        self.shell.ipc_addr()
    }

    /// The HTTP address it listens on, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.shell.http_addr()
    }

    /// Who this process is (`/api/identity`).
    pub fn identity(&self) -> &Identity {
        self.shell.identity()
    }

    /// The `<kind> listening <proto> <addr>` lines for the binary to print.
    pub fn listening_lines(&self) -> Vec<String> {
        self.shell.listening_lines()
    }

    /// The process's metrics registry.
    pub fn metrics(&self) -> &Metrics {
        self.shell.metrics()
    }

    /// The shared state (for tests and status).
    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// Serves until `shutdown` triggers; then refuses new requests, lets
    /// those in flight finish (within the grace), fails the rest with
    /// `shutting down`, flushes every connection and returns.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RoutingError> {
        let Routing { shell, router, lb_target, gateway, lb_role, grace, connects } = self;
        tokio::spawn(router.clone().timer_task());
        router.start_links(connects);
        match lb_target {
            Some(LbLocation::Remote(t)) => {
                tokio::spawn(router.clone().lb_task(t));
            }
            Some(LbLocation::Found(find)) => {
                tokio::spawn(router.clone().lb_follow(find));
            }
            Some(LbLocation::Embedded(_)) | None => shell.health().set_ready(true),
        }
        let api = crate::http::routes(router.clone(), gateway);
        let handler = RouterHandler { router: router.clone(), lb_role };
        let drain_router = router.clone();
        let r = shell.run(handler, api, shutdown, async move { drain_router.drain(grace).await }).await;
        router.stop_tasks();
        r.map_err(RoutingError::from)
    }
}
