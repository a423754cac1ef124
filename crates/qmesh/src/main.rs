//! `qmesh`: one binary, one subcommand per process kind.
//!
//! This crate only parses arguments and calls libraries. Flags come, in
//! order of precedence, from the command line, from `QMESH_<FLAG>`
//! environment variables, and from the `[<subcommand>]` table of the config
//! file (`qmesh.toml`, or `--config FILE`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod cmd;
mod config;

#[derive(Debug, Parser)]
#[command(
    name = "qmesh",
    version,
    about = "The plumbing of a kdb+/q estate: query routing, discovery, reliable transport."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Config file; its `[<subcommand>]` table supplies defaults for that subcommand's flags.
    #[arg(long, global = true, env = "QMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "QMESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `qmesh_routing=debug`, …); defaults to `RUST_LOG`, then `info`.
    #[arg(long, global = true, env = "QMESH_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Client credentials (`host:port:user:password` lines, `*` for any host or port): used by every
    /// connection this process opens to an address that carries no user (instances, lb, discovery, q, rt).
    #[arg(long, global = true, env = "QMESH_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// CA certificates (PEM) that servers of `:tcps://host:port` addresses must chain to; required to use tcps.
    #[arg(long, global = true, env = "QMESH_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// TESTS ONLY: connect to `:tcps://` addresses without checking their certificates (logged as a warning).
    #[arg(long, global = true, env = "QMESH_TLS_INSECURE")]
    pub tls_insecure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a q query to any kdb+ endpoint and print the result as q would; with no query, a prompt.
    Q(cmd::q::Args),
    /// Hold tables in memory (Arrow) and answer SQL over kdb+ IPC and HTTP; registers with a load balancer.
    Service(cmd::service::Args),
    /// Load balancer of the query-routing whitepaper: services register, gateways get instances, one query each.
    Lb(cmd::lb::Args),
    /// Query-routing gateway: clients send userQuery (sync, deferred or callback) or POST /query.
    Gateway(cmd::gateway::Args),
    /// mserve.q's balancer, transparent: plain q clients, plain q instances (`qmesh mserve -p 5000 h:5001 h:5002`).
    Mserve(cmd::mserve::Args),
    /// Reliable-transport stream node: durable merged logs, q publishers (.rt.pub, .u.upd) and subscribers (.rt.sub); `rt tail`, `rt reset`.
    Rt(cmd::rt::Args),
    /// Discovery registry: processes heartbeat (kdb+ IPC, the blog's .master.storeHb); lookups, live dashboard, /sd.
    Discovery(cmd::discovery::Args),
    /// Start a whole estate (stream node, discovery, lb, gateway, services, feed), supervised; Ctrl-C stops it.
    Up(cmd::up::Args),
    /// The estate's processes and their state, as discovery sees them (exit 0: all active, 3: some not active, 1: discovery unreachable or another error).
    Status(cmd::up::StatusArgs),
    /// Publish realistic trades and quotes (the demo's `trade`/`quote` tables) to a stream at a given rate.
    Feed(cmd::feed::Args),
}

fn main() -> ExitCode {
    use std::io::Write;
    if let Err(e) = config::apply_config_file(std::env::args_os(), &Cli::command()) {
        eprintln!("qmesh: {e:#}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    init_logging(&cli.common);
    if let Some(path) = &cli.common.credentials {
        // installed before any connection is opened; every one looks it up
        let loaded = qmesh_ipc::Credentials::load(path).and_then(qmesh_ipc::credentials::install);
        if let Err(e) = loaded {
            eprintln!("qmesh: --credentials: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = install_client_tls(&cli.common) {
        eprintln!("qmesh: {e}");
        return ExitCode::from(2);
    }
    // a panic (a bug) ends the process with a log line rather than leaving
    // it serving from half-updated state; see qmesh_process::fail_fast
    qmesh_process::fail_fast::install();
    // on_thread_park: writes caused by a burst of reads leave together
    // (qmesh_ipc::batch)
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .on_thread_park(qmesh_ipc::on_thread_park)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qmesh: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Q(args) => cmd::q::run(args, &cli.common).await,
            Command::Service(args) => cmd::service::run(args, &cli.common).await,
            Command::Lb(args) => cmd::lb::run(args, &cli.common).await,
            Command::Gateway(args) => cmd::gateway::run(args, &cli.common).await,
            Command::Mserve(args) => cmd::mserve::run(args, &cli.common).await,
            Command::Rt(args) => cmd::rt::run(args, &cli.common).await,
            Command::Discovery(args) => cmd::discovery::run(args, &cli.common).await,
            Command::Up(args) => cmd::up::run(args, &cli.common).await,
            Command::Status(args) => cmd::up::status(args, &cli.common).await,
            Command::Feed(args) => cmd::feed::run(args, &cli.common).await,
        }
    });
    match result {
        Ok(code) => code,
        // the reader of stdout went away (`qmesh rt tail … | head`): done, as for any Unix filter
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // not eprintln!: a closed stderr must not turn an error into a panic
            let _ = writeln!(std::io::stderr(), "qmesh: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `--tls-ca FILE` or `--tls-insecure`: the TLS every connection to a
/// `:tcps://` address uses; installed before any connection is opened.
fn install_client_tls(common: &Common) -> Result<(), String> {
    let tls = match (&common.tls_ca, common.tls_insecure) {
        (Some(_), true) => return Err("--tls-ca and --tls-insecure: give one".into()),
        (Some(ca), false) => qmesh_ipc::ClientTls::with_ca_file(ca).map_err(|e| format!("--tls-ca: {e}"))?,
        (None, true) => qmesh_ipc::ClientTls::insecure().map_err(|e| format!("--tls-insecure: {e}"))?,
        (None, false) => return Ok(()),
    };
    qmesh_ipc::tls::install_client(tls).map_err(|e| e.to_string())
}

fn init_logging(common: &Common) {
    use tracing_subscriber::EnvFilter;
    let filter = match &common.log_level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match common.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether `e` is a write to a pipe whose reader has gone.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An error and its causes as one line, `outer: cause: …`, leaving out a
/// cause whose text the line already holds (library errors often quote
/// their source in their own message, and `{:#}` would repeat it).
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod error_chain_tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Reach(std::io::Error);
    impl std::fmt::Display for Reach {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot reach n1: {}", self.0)
        }
    }
    impl std::error::Error for Reach {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let io = std::io::Error::other("Connection refused");
        let e = anyhow::Error::new(Reach(io)).context("qmesh rt tail");
        assert_eq!(error_chain(&e), "qmesh rt tail: cannot reach n1: Connection refused");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&e), "outer: inner");
    }
}
