//! `qmesh lb [-p PORT] [--http PORT]`: the query-routing load balancer (see
//! `qmesh-routing`). Services register with it (`registerResource`),
//! gateways subscribe (`registerGW`) and ask it for instances.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use qmesh_process::Shutdown;
use qmesh_routing::LbOptions;
use qmesh_routing::lb::LbConfig;

use super::flags::{ServerFlags, parse_bytes, parse_duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// -p (services and gateways connect here), --http (/api/services), -u…
    #[command(flatten)]
    pub server: ServerFlags,
    /// Name of this load balancer (logs, /api/identity).
    #[arg(long, env = "QMESH_NAME", default_value = "lb")]
    pub name: String,
    /// Most requests queued per service.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_QUEUE_LIMIT", default_value_t = qmesh_routing::lb::DEFAULT_QUEUE_LIMIT)]
    pub queue_limit: usize,
    /// Deadline of a request from a gateway that gives none (a whitepaper gateway).
    #[arg(long, env = "QMESH_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Time after a request's deadline before an instance that has not reported back is dropped.
    #[arg(long, env = "QMESH_STUCK_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub stuck_grace: Duration,
    /// queries one instance may hold at once (1: the whitepaper's one query per free instance).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_INSTANCE_CONCURRENCY", default_value_t = 1)]
    pub instance_concurrency: usize,
    /// Largest message accepted (bytes; `1GiB`, `64MiB`).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_MESSAGE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub max_message_bytes: u64,
    /// Discovery registry to heartbeat to (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_DISCOVERY")]
    pub discovery: Option<String>,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let opts = LbOptions {
        shell: args.server.shell("lb", &args.name, args.max_message_bytes),
        lb: LbConfig {
            queue_limit: args.queue_limit,
            default_timeout: args.timeout,
            stuck_grace: args.stuck_grace,
            instance_concurrency: args.instance_concurrency,
        },
    };
    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    let bound = qmesh_routing::bind_lb(opts).await?;
    super::announce(&bound.listening_lines())?;
    let _heartbeat = super::discovery::heartbeat(
        args.discovery.as_deref(),
        &args.name,
        "lb",
        bound.ipc_addr(),
        bound.http_addr(),
        &shutdown,
    )?;
    tracing::info!(name = %args.name, "load balancer started");
    bound.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
