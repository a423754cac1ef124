//! `qmesh service --name NAME [--lb HOST:PORT] [-p PORT]`: the query service.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use qmesh_ipc::Address;
use qmesh_process::{Metrics, Shutdown};
use qmesh_service::demo::{DEFAULT_SEED, DemoSpec};
use qmesh_service::load::LoadSpec;
use qmesh_service::{Config, Limits};

use super::flags::{parse_bytes_usize, parse_duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service name; instances with the same name form one pool behind the load balancer.
    #[arg(long, env = "QMESH_NAME")]
    pub name: String,
    /// kdb+ IPC port (0: pick a free one and print it).
    #[arg(short = 'p', long, env = "QMESH_PORT", default_value_t = 0)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "QMESH_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// HTTP port for POST /query, /healthz and /metrics (0: pick a free one).
    #[arg(long, env = "QMESH_HTTP")]
    pub http: Option<u16>,
    /// The load balancer to register with (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_LB")]
    pub lb: Option<String>,
    /// Host name gateways use to reach this service (default: the bind address, or this machine's name).
    #[arg(long, env = "QMESH_ADVERTISE")]
    pub advertise: Option<String>,
    /// Password file (`user:password` lines, as q's -u).
    #[arg(short = 'u', long, env = "QMESH_USERS")]
    pub users: Option<PathBuf>,
    /// Load a table at start: NAME=FILE.parquet or NAME=FILE.csv (repeatable).
    #[arg(long, env = "QMESH_LOAD", value_delimiter = ',')]
    pub load: Vec<String>,
    /// Generate the demo tables `trade` and `quote` (the whitepaper's egTrade/egQuote shape).
    #[arg(long, env = "QMESH_DEMO")]
    pub demo: bool,
    /// Rows of each demo table.
    #[arg(long, env = "QMESH_DEMO_ROWS", default_value_t = 100_000)]
    pub demo_rows: usize,
    /// Seed of the demo data.
    #[arg(long, env = "QMESH_DEMO_SEED", default_value_t = DEFAULT_SEED)]
    pub demo_seed: u64,
    /// Per-query time limit (`10s`, `500ms`, `2m`); the query is cancelled when it passes.
    #[arg(long, env = "QMESH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Per-query memory for DataFusion's operators (`1GiB`, `256MiB`, bytes).
    #[arg(long, env = "QMESH_QUERY_MEMORY", default_value = "1GiB", value_parser = parse_bytes_usize)]
    pub query_memory: usize,
    /// Most rows a result may have.
    #[arg(long, env = "QMESH_MAX_RESULT_ROWS", default_value_t = qmesh_service::engine::DEFAULT_MAX_RESULT_ROWS)]
    pub max_result_rows: usize,
    /// Most Arrow bytes a result may have.
    #[arg(long, env = "QMESH_MAX_RESULT_BYTES", default_value = "512MiB", value_parser = parse_bytes_usize)]
    pub max_result_bytes: usize,
    /// Most bytes all tables may hold; appends past it are refused.
    #[arg(long, env = "QMESH_MAX_STORE_BYTES", default_value = "8GiB", value_parser = parse_bytes_usize)]
    pub max_store_bytes: usize,
    /// Threads running queries (0: one per core).
    #[arg(long, env = "QMESH_QUERY_THREADS", default_value_t = 0)]
    pub query_threads: usize,
    /// Discovery registry to heartbeat to (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_DISCOVERY")]
    pub discovery: Option<String>,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let lb = args.lb.as_deref().map(Address::parse).transpose().context("--lb")?;
    let load = args.load.iter().map(|s| s.parse::<LoadSpec>()).collect::<Result<Vec<_>, _>>()?;
    let demo = args.demo.then(|| DemoSpec { seed: args.demo_seed, ..DemoSpec::yesterday(args.demo_rows) });
    let name = args.name.clone();
    let config = Config {
        name: args.name,
        listen: SocketAddr::new(args.bind, args.port),
        http: args.http.map(|p| SocketAddr::new(args.bind, p)),
        lb,
        advertise_host: args.advertise,
        limits: Limits {
            timeout: args.timeout,
            memory_bytes: args.query_memory,
            max_result_rows: args.max_result_rows,
            max_result_bytes: args.max_result_bytes,
        },
        max_store_bytes: args.max_store_bytes,
        query_threads: args.query_threads,
        demo,
        load,
        users: args.users,
    };
    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    let bound = qmesh_service::bind(config, Metrics::new()).await?;
    super::announce("service", Some(bound.ipc_addr()), bound.http_addr())?;
    // Instances of one pool share the service name: each heartbeats as NAME:PORT.
    let instance = format!("{name}:{}", bound.ipc_addr().port());
    let _heartbeat = super::discovery::heartbeat(
        args.discovery.as_deref(),
        &instance,
        "service",
        Some(bound.ipc_addr()),
        bound.http_addr(),
        &shutdown,
    )?;
    bound.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
