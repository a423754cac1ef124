//! `qmesh service --name NAME [--lb HOST:PORT] [-p PORT]`: the query service;
//! with `--rt HOST:PORT --stream NAME [--data DIR]` its tables are fed from
//! a stream through a log-shipping subscriber (a local copy of the node's
//! log under `DATA/rt/STREAM`) and kept in a snapshot (see
//! `qmesh_service::stream`); DATA is locked while it runs, and a stream
//! the node does not host is an error (exit 1), at start or once a node
//! that was down answers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use qmesh_ipc::Address;
use qmesh_process::Shutdown;
use qmesh_service::demo::{DEFAULT_SEED, DemoSpec};
use qmesh_service::load::LoadSpec;
use qmesh_service::stream::StreamConfig;
use qmesh_service::{Config, Limits};

use super::flags::{ServerFlags, parse_address, parse_bytes, parse_bytes_usize, parse_duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service name; instances with the same name form one pool behind the load balancer.
    #[arg(long, env = "QMESH_NAME")]
    pub name: String,
    /// -p, --http (POST /query), -u, --advertise (the host gateways reach this service at)…
    #[command(flatten)]
    pub server: ServerFlags,
    /// Largest message accepted (bytes; `1GiB`, `64MiB`): an upd, a query.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_MESSAGE_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_message_bytes: u64,
    /// The load balancer to register with (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_LB")]
    pub lb: Option<String>,
    /// Load a table at start: NAME=FILE.parquet or NAME=FILE.csv (repeatable).
    #[arg(long, env = "QMESH_LOAD", value_delimiter = ',')]
    pub load: Vec<String>,
    /// Generate the demo tables `trade` and `quote` (the whitepaper's egTrade/egQuote shape).
    #[arg(long, env = "QMESH_DEMO")]
    pub demo: bool,
    /// Rows of each demo table.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_DEMO_ROWS", default_value_t = 100_000)]
    pub demo_rows: usize,
    /// Seed of the demo data.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_DEMO_SEED", default_value_t = DEFAULT_SEED)]
    pub demo_seed: u64,
    /// Per-query time limit (`10s`, `500ms`, `2m`); the query is cancelled when it passes.
    #[arg(long, env = "QMESH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Per-query memory for DataFusion's operators (`1GiB`, `256MiB`, bytes).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_QUERY_MEMORY", default_value = "1GiB", value_parser = parse_bytes_usize)]
    pub query_memory: usize,
    /// Most rows a result may have.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_RESULT_ROWS", default_value_t = qmesh_service::engine::DEFAULT_MAX_RESULT_ROWS)]
    pub max_result_rows: usize,
    /// Most Arrow bytes a result may have.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_RESULT_BYTES", default_value = "512MiB", value_parser = parse_bytes_usize)]
    pub max_result_bytes: usize,
    /// Most bytes all tables may hold; appends past it are refused.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_STORE_BYTES", default_value = "8GiB", value_parser = parse_bytes_usize)]
    pub max_store_bytes: usize,
    /// Threads running queries (0: one per core).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_QUERY_THREADS", default_value_t = 0)]
    pub query_threads: usize,
    /// Discovery registry to heartbeat to (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_DISCOVERY")]
    pub discovery: Option<String>,
    /// Feed the tables from this stream node (`host:port`, `:host:port:user:password`); needs --stream. The service
    /// starts while the node is down; a node answering that it has no such stream stops it (exit 1).
    #[arg(long, env = "QMESH_RT", requires = "stream", conflicts_with_all = ["load", "demo"], value_parser = parse_address)]
    pub rt: Option<String>,
    /// The stream to apply (`upd;table;data` messages) from the --rt node.
    #[arg(long, env = "QMESH_STREAM", requires = "rt")]
    pub stream: Option<String>,
    /// Directory of the stream-fed tables' snapshot and position, and of the subscriber's local copy of the stream
    /// (`DATA/rt/STREAM`; none: a temporary copy, and every start replays the stream from its start). Locked while
    /// the service runs: a second service on it refuses to start.
    #[arg(long, env = "QMESH_DATA", requires = "rt")]
    pub data: Option<PathBuf>,
    /// Time between snapshots of the stream-fed tables (written only when something changed; also at shutdown).
    #[arg(long, env = "QMESH_SNAPSHOT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let lb = args.lb.as_deref().map(Address::parse).transpose().context("--lb")?;
    let load = args.load.iter().map(|s| s.parse::<LoadSpec>()).collect::<Result<Vec<_>, _>>()?;
    let demo = args.demo.then(|| DemoSpec { seed: args.demo_seed, ..DemoSpec::yesterday(args.demo_rows) });
    let name = args.name.clone();
    let config = Config {
        shell: args.server.shell("service", &args.name, args.max_message_bytes),
        lb,
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
        stream: match (args.rt, args.stream) {
            (Some(node), Some(stream)) => Some(StreamConfig {
                snapshot_interval: args.snapshot_interval,
                ..StreamConfig::new(node, stream, args.data)
            }),
            _ => None,
        },
    };
    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    let bound = qmesh_service::bind(config).await?;
    super::announce(&bound.listening_lines())?;
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
