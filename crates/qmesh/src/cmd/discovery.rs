//! `qmesh discovery -p PORT --http PORT --data DIR [-u FILE]`: the
//! discovery registry (see `qmesh-discovery`), and the `--discovery
//! HOST:PORT` heartbeat every other server kind runs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use qmesh_discovery::{Config, KindPolicy, Options};
use qmesh_discovery_client::Beacon;
use qmesh_ipc::Address;
use qmesh_process::Shutdown;

use super::flags::{AccessFlags, TlsFlags, parse_duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// kdb+ IPC port for heartbeats and lookups (0: pick one and print it).
    #[arg(allow_negative_numbers = true, short = 'p', long, env = "QMESH_PORT", default_value_t = 0)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "QMESH_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// HTTP port for the dashboard, /api/processes, /ws, /sd, /healthz and /metrics (0: pick one).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_HTTP")]
    pub http: Option<u16>,
    /// Directory of the store that keeps the last-known registry across restarts (none: nothing kept).
    #[arg(long, env = "QMESH_DATA")]
    pub data: Option<PathBuf>,
    /// Password file (`user:password` lines, as q's -u): heartbeats and lookups over IPC, and every HTTP route (Basic).
    #[arg(short = 'u', long, env = "QMESH_USERS")]
    pub users: Option<PathBuf>,
    #[command(flatten)]
    pub access: AccessFlags,
    #[command(flatten)]
    pub tls: TlsFlags,
    /// Silence after which a process is `warning` (the blog's 30 s).
    #[arg(long, env = "QMESH_WARN_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub warn_after: Duration,
    /// Silence after which a process is `error` (the blog's 90 s).
    #[arg(long, env = "QMESH_ERROR_AFTER", default_value = "90s", value_parser = parse_duration)]
    pub error_after: Duration,
    /// Silence after which a process is removed (the blog's 10 minutes).
    #[arg(long, env = "QMESH_REMOVE_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub remove_after: Duration,
    /// Good beats in a row before `active` again after a fault (flap damping; 1: none).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_RISE", default_value_t = 2)]
    pub rise: u32,
    /// Thresholds for one kind: KIND=WARN/ERROR/REMOVE/RISE, e.g. `rdb=10s/30s/5m/3` (repeatable).
    #[arg(long, env = "QMESH_KIND_POLICY", value_delimiter = ',')]
    pub kind_policy: Vec<String>,
    /// Heartbeat to a registry too (`host:port`; its own port lists the registry on its own dashboard).
    #[arg(long, env = "QMESH_DISCOVERY")]
    pub discovery: Option<String>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn policy(warn: Duration, error: Duration, remove: Duration, rise: u32) -> anyhow::Result<KindPolicy> {
    if !(warn < error && error < remove) {
        bail!("thresholds must grow: warn {warn:?} < error {error:?} < remove {remove:?}");
    }
    Ok(KindPolicy {
        warn_after: millis(warn),
        error_after: millis(error),
        remove_after: millis(remove),
        rise: rise.max(1),
    })
}

/// `rdb=10s/30s/5m/3` → ("rdb", policy).
fn kind_policy(s: &str) -> anyhow::Result<(String, KindPolicy)> {
    let (kind, rest) =
        s.split_once('=').with_context(|| format!("--kind-policy {s:?}: KIND=WARN/ERROR/REMOVE/RISE"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [w, e, r, rise] = parts[..] else { bail!("--kind-policy {s:?}: KIND=WARN/ERROR/REMOVE/RISE") };
    let d = |x: &str| parse_duration(x).map_err(anyhow::Error::msg);
    let rise: u32 = rise.parse().with_context(|| format!("--kind-policy {s:?}: RISE is a count"))?;
    Ok((kind.to_string(), policy(d(w)?, d(e)?, d(r)?, rise)?))
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let mut config = Config {
        default: policy(args.warn_after, args.error_after, args.remove_after, args.rise)?,
        ..Config::default()
    };
    for s in &args.kind_policy {
        let (kind, p) = kind_policy(s)?;
        config.kinds.insert(kind, p);
    }
    let options = Options {
        ipc: SocketAddr::new(args.bind, args.port),
        http: args.http.map(|p| SocketAddr::new(args.bind, p)),
        data: args.data,
        config,
        users: args.users,
        access: args.access.access(),
        tls: args.tls.files(),
        ..Options::default()
    };
    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    let bound = qmesh_discovery::bind(options).await?;
    super::announce(&bound.listening_lines())?;
    let _heartbeat = heartbeat(
        args.discovery.as_deref(),
        "discovery",
        "discovery",
        Some(bound.ipc_addr()),
        bound.http_addr(),
        &shutdown,
    )?;
    bound.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the heartbeat to `discovery` (the `--discovery HOST:PORT` every
/// server kind takes), reporting `name`, `kind` and the bound ports.
pub fn heartbeat(
    discovery: Option<&str>,
    name: &str,
    kind: &str,
    ipc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = discovery else { return Ok(None) };
    let addr = Address::parse(addr).context("--discovery")?;
    let mut beacon = Beacon::new(name, kind);
    if let Some(a) = ipc {
        beacon = beacon.ipc_port(a.port());
        if !a.ip().is_unspecified() {
            beacon = beacon.host(a.ip().to_string());
        }
    }
    if let Some(h) = http {
        beacon = beacon.http_port(h.port());
    }
    Ok(Some(qmesh_discovery_client::spawn(addr, beacon, shutdown.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_policies_parse() {
        let (k, p) = kind_policy("rdb=10s/30s/5m/3").unwrap();
        assert_eq!(k, "rdb");
        assert_eq!(p, KindPolicy { warn_after: 10_000, error_after: 30_000, remove_after: 300_000, rise: 3 });
        assert!(kind_policy("rdb=30s/10s/5m/3").is_err());
        assert!(kind_policy("rdb").is_err());
        assert!(kind_policy("rdb=1s/2s/3s").is_err());
    }
}
