//! `qmesh mserve -p PORT HOST:PORT…`: what an mserve.q user types, as a
//! short form of `qmesh gateway --instances SERVICE=HOST:PORT,… --default-service
//! SERVICE` (an embedded load balancer, one pool of static instances named
//! by `--service`, plain queries routed to it).
//!
//! | mserve.q | qmesh |
//! |---|---|
//! | `q mserve.q -p 5000 4 tq` (starts 4 `q tq.q` on 5001–5004 itself) | start the 4 q processes yourself (or under a supervisor), then `qmesh mserve -p 5000 localhost:5001 localhost:5002 localhost:5003 localhost:5004` |
//! | client `(neg h)x; h[]` | the same, or plainly `h x` (sync), or `` h(`f;x;y) `` |

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use qmesh_ipc::Address;
use qmesh_routing::gw::GatewayConfig;
use qmesh_routing::lb::LbConfig;
use qmesh_routing::{GatewayOptions, LbLocation, StaticInstance};

use super::flags::{ServerFlags, parse_bytes, parse_duration};
use super::gateway::{serve, service_name};

/// The pool's name when `--service` is not given.
pub const DEFAULT_POOL: &str = "mserve";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// -p (clients), --http (POST /query, /api/services), -u (clients)…
    #[command(flatten)]
    pub server: ServerFlags,
    /// The q processes to balance (`host:port`, `:host:port:user:password`), one query at a time each.
    #[arg(env = "QMESH_INSTANCES", value_delimiter = ',', required = true, num_args = 1..)]
    pub instances: Vec<String>,
    /// Name of the pool (the service in /api/services, metrics and errors such as `'service disconnected: mserve`).
    #[arg(long, env = "QMESH_SERVICE", default_value = DEFAULT_POOL)]
    pub service: String,
    /// Name of this process (logs, /api/identity).
    #[arg(long, env = "QMESH_NAME", default_value = "mserve")]
    pub name: String,
    /// Deadline of a query (`30s`, `500ms`): past it the client gets `'timeout`.
    #[arg(long, env = "QMESH_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Most queries waiting for a free instance.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_QUEUE_LIMIT", default_value_t = qmesh_routing::lb::DEFAULT_QUEUE_LIMIT)]
    pub queue_limit: usize,
    /// Time after a query's deadline before an instance that has not answered is dropped (and reconnected).
    #[arg(long, env = "QMESH_STUCK_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub stuck_grace: Duration,
    /// Queries one instance may hold at once (1: only free instances get a query, as q runs one at a time).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_INSTANCE_CONCURRENCY", default_value_t = 1)]
    pub instance_concurrency: usize,
    /// Largest message accepted from clients and instances (bytes; `1GiB`, `512MiB`).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_MESSAGE_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_message_bytes: u64,
    /// Time queries in flight get to finish on SIGINT/SIGTERM.
    #[arg(long, env = "QMESH_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Discovery registry to heartbeat to (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_DISCOVERY")]
    pub discovery: Option<String>,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let service = service_name(&args.service).context("--service")?;
    let static_instances = args
        .instances
        .iter()
        .map(|a| {
            Address::parse(a)
                .map(|address| StaticInstance { service: service.clone(), address })
                .with_context(|| format!("instance {a:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = GatewayOptions {
        shell: args.server.shell("gateway", &args.name, args.max_message_bytes),
        lb: LbLocation::Embedded(LbConfig {
            queue_limit: args.queue_limit,
            default_timeout: args.timeout,
            stuck_grace: args.stuck_grace,
            instance_concurrency: args.instance_concurrency,
        }),
        gateway: GatewayConfig { default_timeout: args.timeout, ..GatewayConfig::default() },
        shutdown_grace: args.shutdown_grace,
        static_instances,
        default_service: Some(service),
        ..GatewayOptions::default()
    };
    serve(opts, &args.name, args.discovery.as_deref()).await
}
