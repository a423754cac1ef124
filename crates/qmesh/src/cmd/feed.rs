//! `qmesh feed --rt HOST:PORT --stream NAME --rate N [--symbols a,b,c]
//! [--seed S] [--count N] [--batch N] [--rows N] [--name NAME]
//! [--discovery HOST:PORT]`: publishes trades and quotes to a stream (see
//! `qmesh_service::feed`). A client, not a server: no ports; SIGINT/SIGTERM
//! stop it after the batch in flight. With `--count` it prints
//! `feed published N messages, position P` and exits.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use qmesh_process::Shutdown;
use qmesh_service::demo::DEFAULT_SEED;
use qmesh_service::feed::{FeedConfig, FeedSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stream node (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_RT")]
    pub rt: String,
    /// The stream to publish to.
    #[arg(long, env = "QMESH_STREAM")]
    pub stream: String,
    /// Messages per second, on average.
    #[arg(long, env = "QMESH_RATE", default_value_t = 1000.0)]
    pub rate: f64,
    /// The symbols (default: the demo's ten, FDP first).
    #[arg(long, env = "QMESH_SYMBOLS", value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// Seed of prices, sizes and symbol choices.
    #[arg(long, env = "QMESH_SEED", default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Stop after this many messages (default: until stopped).
    #[arg(long, env = "QMESH_COUNT")]
    pub count: Option<u64>,
    /// Most messages sent together (sync .rt.pub requests in flight at once).
    #[arg(long, env = "QMESH_BATCH", default_value_t = 100)]
    pub batch: usize,
    /// Rows in each message's table.
    #[arg(long, env = "QMESH_ROWS", default_value_t = 1)]
    pub rows: usize,
    /// The feed's name (to discovery).
    #[arg(long, env = "QMESH_NAME", default_value = "feed")]
    pub name: String,
    /// Discovery registry to heartbeat to (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_DISCOVERY")]
    pub discovery: Option<String>,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let mut spec = FeedSpec { seed: args.seed, rows: args.rows, ..FeedSpec::default() };
    if !args.symbols.is_empty() {
        spec.symbols = args.symbols;
    }
    let config = FeedConfig {
        node: args.rt,
        stream: args.stream,
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
    writeln!(out, "feed published {} messages, position {}", report.sent, report.position)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
