//! `qmesh gateway (--lb HOST:PORT | --embedded-lb | --discovery HOST:PORT | --instances SERVICE=HOST:PORT,…)
//! [--default-service SERVICE] [-p PORT] [--http PORT]`: the query-routing
//! gateway (see `qmesh-routing`). With `--discovery` and no `--lb` it finds
//! an active `lb` in the registry and follows it when it moves.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use qmesh_ipc::Address;
use qmesh_process::Shutdown;
use qmesh_routing::gw::GatewayConfig;
use qmesh_routing::lb::LbConfig;
use qmesh_routing::proto::MAX_NAME_BYTES;
use qmesh_routing::{GatewayOptions, LbLocation, ServiceName};

use super::flags::{ServerFlags, parse_bytes, parse_duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// -p (clients, and with --embedded-lb services registering), --http (POST /query), -u (clients)…
    #[command(flatten)]
    pub server: ServerFlags,
    /// The load balancer (`host:port`, `:host:port:user:password`). Without it (and without --embedded-lb),
    /// --discovery finds an active `lb` in the registry and follows it when it moves.
    #[arg(long, env = "QMESH_LB", conflicts_with = "embedded_lb")]
    pub lb: Option<String>,
    /// Run the load balancer in this process: services register with this gateway's port.
    #[arg(long, env = "QMESH_EMBEDDED_LB")]
    pub embedded_lb: bool,
    /// Static instances, `SERVICE=HOST:PORT[,HOST:PORT…]` (repeatable; `:host:port:user:password` too): plain kdb+
    /// processes this gateway connects to and sends each query as a sync request. Implies --embedded-lb.
    #[arg(long, env = "QMESH_INSTANCES", conflicts_with = "lb")]
    pub instances: Vec<String>,
    /// Route plain queries (a string, a function call, an async message: anything but userQuery) to this service.
    #[arg(long, env = "QMESH_DEFAULT_SERVICE")]
    pub default_service: Option<String>,
    /// Name of this gateway (logs, /api/identity).
    #[arg(long, env = "QMESH_NAME", default_value = "gateway")]
    pub name: String,
    /// Default deadline of a request (`30s`, `500ms`); a call may give its own.
    #[arg(long, env = "QMESH_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Longest deadline a call may ask for.
    #[arg(long, env = "QMESH_MAX_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub max_timeout: Duration,
    /// Most requests in flight in this gateway.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_REQUESTS", default_value_t = qmesh_routing::gw::DEFAULT_MAX_REQUESTS)]
    pub max_requests: usize,
    /// Most parts of one fan-out.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_FANOUT", default_value_t = qmesh_routing::gw::DEFAULT_MAX_FANOUT)]
    pub max_fanout: usize,
    /// With --embedded-lb: most requests queued per service.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_QUEUE_LIMIT", default_value_t = qmesh_routing::lb::DEFAULT_QUEUE_LIMIT)]
    pub queue_limit: usize,
    /// With --embedded-lb: time after a request's deadline before an instance that has not reported back is dropped.
    #[arg(long, env = "QMESH_STUCK_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub stuck_grace: Duration,
    /// With --embedded-lb: queries one instance may hold at once (1: the whitepaper's one query per free instance).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_INSTANCE_CONCURRENCY", default_value_t = 1)]
    pub instance_concurrency: usize,
    /// Largest message accepted from clients and services (bytes; `1GiB`, `512MiB`).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_MESSAGE_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_message_bytes: u64,
    /// Time requests in flight get to finish on SIGINT/SIGTERM.
    #[arg(long, env = "QMESH_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Discovery registry to heartbeat to (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_DISCOVERY")]
    pub discovery: Option<String>,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let static_instances = qmesh_routing::parse_instances(&args.instances)?;
    let embedded = args.embedded_lb || !static_instances.is_empty();
    let lb = match (&args.lb, embedded) {
        (Some(a), false) => LbLocation::Remote(Address::parse(a).context("--lb")?),
        (None, true) => LbLocation::Embedded(LbConfig {
            queue_limit: args.queue_limit,
            default_timeout: args.timeout,
            stuck_grace: args.stuck_grace,
            instance_concurrency: args.instance_concurrency,
        }),
        (None, false) if args.discovery.is_some() => {
            // seed 001: find the load balancer in discovery, and follow it when it moves
            let registry =
                Address::parse(args.discovery.as_deref().unwrap_or_default()).context("--discovery")?;
            LbLocation::Found(qmesh_routing::LbFinder(std::sync::Arc::new(move || {
                let registry = registry.clone();
                Box::pin(async move { qmesh_discovery_client::find_ipc(&registry, "lb").await })
            })))
        }
        _ => bail!(
            "give --lb HOST:PORT, --embedded-lb to run the load balancer in this process (--instances implies it), or --discovery HOST:PORT to find it there"
        ),
    };
    let opts = GatewayOptions {
        shell: args.server.shell("gateway", &args.name, args.max_message_bytes),
        lb,
        gateway: GatewayConfig {
            default_timeout: args.timeout,
            max_timeout: args.max_timeout,
            max_requests: args.max_requests,
            max_fanout: args.max_fanout,
            ..GatewayConfig::default()
        },
        shutdown_grace: args.shutdown_grace,
        static_instances,
        default_service: args.default_service.as_deref().map(service_name).transpose()?,
        ..GatewayOptions::default()
    };
    serve(opts, &args.name, args.discovery.as_deref()).await
}

/// A service name from a flag, within the protocol's bound.
pub fn service_name(s: &str) -> anyhow::Result<ServiceName> {
    if s.is_empty() || s.len() > MAX_NAME_BYTES {
        bail!("service name must be 1 to {MAX_NAME_BYTES} bytes: {s:?}");
    }
    Ok(ServiceName::new(s))
}

/// Binds, announces and runs a gateway (`qmesh gateway`, `qmesh mserve`)
/// until SIGINT/SIGTERM.
pub async fn serve(opts: GatewayOptions, name: &str, discovery: Option<&str>) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    let bound = qmesh_routing::bind_gateway(opts).await?;
    super::announce(&bound.listening_lines())?;
    let _heartbeat = super::discovery::heartbeat(
        discovery,
        name,
        "gateway",
        bound.ipc_addr(),
        bound.http_addr(),
        &shutdown,
    )?;
    tracing::info!(%name, "gateway started");
    bound.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
