//! `qmesh feed --rt HOST:PORT --stream NAME --rate N [--symbols a,b,c]
//! [--seed S] [--count N] [--batch N] [--rows N] [--name NAME]
//! [--path DIR | --data DIR] [--discovery HOST:PORT]`: publishes trades and
//! quotes to a stream through a publisher with a local log (see
//! `qmesh_service::feed`). A client, not a server: no ports; SIGINT/SIGTERM
//! stop it after the batch being written, after waiting at most
//! `qmesh_service::feed::STOP_ACK_WAIT` for the node to acknowledge the rest
//! (what it has not acknowledged stays in the local log for the next
//! start). With `--count` it waits until the node has acknowledged every
//! message. Either way it prints
//! `feed published N messages to its local log, A acknowledged by the node, position P`
//! (P: the local log's position of the last) and exits 0. A node that
//! answers that it has no such stream is an error (exit 1), at start or
//! once a node that was down answers; a node that is down is not.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use qmesh_process::Shutdown;
use qmesh_service::demo::DEFAULT_SEED;
use qmesh_service::feed::{FeedConfig, FeedSpec};

use super::flags::parse_address;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stream node (`host:port`, `:host:port:user:password`); several, comma-separated, are tried in turn.
    #[arg(long, env = "QMESH_RT", value_delimiter = ',', required = true, value_parser = parse_address)]
    pub rt: Vec<String>,
    /// The stream to publish to. The feed starts while the node is down; a node answering that it has no such
    /// stream stops it (exit 1).
    #[arg(long, env = "QMESH_STREAM")]
    pub stream: String,
    /// Messages per second, on average.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_RATE", default_value_t = 1000.0)]
    pub rate: f64,
    /// The symbols (default: the demo's ten, FDP first).
    #[arg(long, env = "QMESH_SYMBOLS", value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// Seed of prices, sizes and symbol choices.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_SEED", default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Stop after this many messages (default: until stopped).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_COUNT")]
    pub count: Option<u64>,
    /// Most messages written to the local log together (one write, one fsync).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_BATCH", default_value_t = 100)]
    pub batch: usize,
    /// Rows in each message's table.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_ROWS", default_value_t = 1)]
    pub rows: usize,
    /// The feed's name: its publisher id (names its local log and the publisher on the node; unique on a host)
    /// and its name to discovery.
    #[arg(long, env = "QMESH_NAME", default_value = "feed")]
    pub name: String,
    /// The parent of the local log's directory, `PATH/NAME.HOSTNAME.STREAM` (rt.qpk's `path`; default
    /// `$RT_LOG_PATH`, else `DATA/rt`).
    #[arg(long, env = "RT_LOG_PATH")]
    pub path: Option<PathBuf>,
    /// The feed's data directory, holding the local log when neither --path nor `$RT_LOG_PATH` is set (default:
    /// the user's qmesh data directory's `feed-NAME`).
    #[arg(long, env = "QMESH_DATA")]
    pub data: Option<PathBuf>,
    /// Discovery registry to heartbeat to (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_DISCOVERY")]
    pub discovery: Option<String>,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let mut spec = FeedSpec { seed: args.seed, rows: args.rows, ..FeedSpec::default() };
    if !args.symbols.is_empty() {
        spec.symbols = args.symbols;
    }
    let path = match (args.path, args.data) {
        (Some(p), _) => p,
        (None, Some(d)) => d.join("rt"),
        (None, None) => {
            qmesh_supervisor::config::default_data_dir().join(format!("feed-{}", args.name)).join("rt")
        }
    };
    std::fs::create_dir_all(&path).with_context(|| format!("the local log's parent {}", path.display()))?;
    let config = FeedConfig {
        cluster: args.rt,
        stream: args.stream,
        path,
        publisher_id: args.name.clone(),
        rate: args.rate,
        count: args.count,
        batch: args.batch,
        spec,
    };
    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    let _heartbeat =
        super::discovery::heartbeat(args.discovery.as_deref(), &args.name, "feed", None, None, &shutdown)?;
    let report = qmesh_service::feed::run(config, shutdown.clone()).await;
    // the heartbeat stops with the feed
    shutdown.trigger();
    let report = report?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "feed published {} messages to its local log, {} acknowledged by the node, position {}",
        report.sent, report.acknowledged_messages, report.position
    )?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
