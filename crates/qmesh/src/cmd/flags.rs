//! Flags every server kind takes ([`ServerFlags`]) and flag values shared
//! by several subcommands: durations, byte sizes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use qmesh_ipc::ServerConfig;
use qmesh_ipc::tls::{TlsFiles, TlsMode};
use qmesh_process::http::DEFAULT_MAX_HTTP_CONNECTIONS;
use qmesh_process::{Access, ShellOptions};

/// The flags of every server kind: where it listens, who may connect, what
/// it advertises. Each kind adds `--name` and `--max-message-bytes` (their
/// defaults differ by kind) and its own flags.
#[derive(Debug, clap::Args)]
pub struct ServerFlags {
    /// kdb+ IPC port (0: pick a free one and print it).
    #[arg(allow_negative_numbers = true, short = 'p', long, env = "QMESH_PORT", default_value_t = 0)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "QMESH_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// HTTP port for this kind's API, /healthz, /metrics and /api/identity (0: pick a free one).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_HTTP")]
    pub http: Option<u16>,
    /// Password file (`user:password` lines, as q's -u).
    #[arg(short = 'u', long, env = "QMESH_USERS")]
    pub users: Option<PathBuf>,
    /// Host name other processes use to reach this one (default: the bind address, or this machine's name).
    #[arg(long, env = "QMESH_ADVERTISE")]
    pub advertise: Option<String>,
    /// Most HTTP connections open at once; more are closed at accept.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_MAX_HTTP_CONNECTIONS", default_value_t = DEFAULT_MAX_HTTP_CONNECTIONS)]
    pub max_http_connections: usize,
    #[command(flatten)]
    pub access: AccessFlags,
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// TLS on the IPC and HTTP ports, q's `-E`: every server kind's flags (see
/// `qmesh_ipc::tls`).
#[derive(Debug, Clone, clap::Args)]
pub struct TlsFlags {
    /// TLS on the IPC and HTTP ports, as q's -E (0, 1, 2): off (plain only), on (TLS and plain on one port), only (plain refused).
    #[arg(short = 'E', long = "tls", env = "QMESH_TLS", value_name = "off|on|only", default_value = "off")]
    pub mode: TlsMode,
    /// Certificate chain (PEM, server certificate first) for --tls on|only; reloaded on SIGHUP.
    #[arg(long, env = "QMESH_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert; reloaded with it on SIGHUP.
    #[arg(long, env = "QMESH_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TlsFlags {
    /// The process shell's [`TlsFiles`].
    pub fn files(&self) -> TlsFiles {
        TlsFiles { mode: self.mode, cert: self.tls_cert.clone(), key: self.tls_key.clone() }
    }
}

/// What `-u` leaves open on the HTTP port: every server kind's flags beside
/// `-u` (see `qmesh_process::access`).
#[derive(Debug, Clone, clap::Args)]
pub struct AccessFlags {
    /// With -u: answer GET /healthz without credentials (liveness probes).
    #[arg(long, env = "QMESH_OPEN_HEALTH")]
    pub open_health: bool,
    /// With -u: answer GET /metrics without credentials (a Prometheus scrape without basic_auth).
    #[arg(long, env = "QMESH_OPEN_METRICS")]
    pub open_metrics: bool,
    /// Permissions file (`USER ACTION NAMES` lines: query services, publish/subscribe streams, heartbeat); reloaded when it changes.
    #[arg(long, env = "QMESH_PERMISSIONS", value_name = "FILE")]
    pub permissions: Option<PathBuf>,
}

impl AccessFlags {
    /// The process shell's [`Access`].
    pub fn access(&self) -> Access {
        Access {
            open_health: self.open_health,
            open_metrics: self.open_metrics,
            permissions: self.permissions.clone(),
        }
    }
}

impl ServerFlags {
    /// The process shell's settings for a `kind` process called `name`.
    pub fn shell(&self, kind: &str, name: &str, max_message_bytes: u64) -> ShellOptions {
        let mut ipc = ServerConfig::tcp(SocketAddr::new(self.bind, self.port));
        ipc.max_message_bytes = max_message_bytes;
        ShellOptions {
            ipc,
            http: self.http.map(|p| SocketAddr::new(self.bind, p)),
            max_http_connections: self.max_http_connections,
            users: self.users.clone(),
            advertise_host: self.advertise.clone(),
            access: self.access.access(),
            tls: self.tls.files(),
            ..ShellOptions::new(kind, name)
        }
    }
}

/// A node address as [`qmesh_ipc::Address`] reads it (`host:port`, `:host:port:user:password`, `:unix://port` …),
/// kept as written: a flag whose address cannot be connected to (`localhost:99999`) is refused when the flags are
/// read, not retried forever. With `value_delimiter = ','` each address of a list is checked.
pub fn parse_address(s: &str) -> Result<String, String> {
    qmesh_ipc::Address::parse(s).map(|_| s.to_string()).map_err(|e| format!("not a node address: {e}"))
}

/// `10s`, `500ms`, `2m`, `1h`, `1.5` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("not a duration: {s:?} (try 10s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// `1GiB`, `256MiB`, `64KiB`, `1000` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let units: [(&str, u64); 6] = [
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("KB", 1000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
    ];
    let (num, scale) = units.iter().find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m))).unwrap_or((s, 1));
    let v: u64 = num.trim().parse().map_err(|_| format!("not a size: {s:?} (try 1GiB, 256MiB)"))?;
    v.checked_mul(scale).ok_or_else(|| format!("size too large: {s:?}"))
}

/// [`parse_bytes`] for sizes held as `usize`.
pub fn parse_bytes_usize(s: &str) -> Result<usize, String> {
    parse_bytes(s).and_then(|v| usize::try_from(v).map_err(|_| format!("size too large: {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Server {
        #[command(flatten)]
        server: ServerFlags,
    }

    #[test]
    fn tls_flags_parse_and_default_to_off() {
        let s = Server::try_parse_from(["x"]).unwrap();
        assert_eq!(s.server.tls.files(), TlsFiles::default());
        let s = Server::try_parse_from(["x", "--tls", "only", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .unwrap();
        let shell = s.server.shell("service", "s1", 1 << 20);
        assert_eq!(
            shell.tls,
            TlsFiles { mode: TlsMode::Only, cert: Some("c.pem".into()), key: Some("k.pem".into()) }
        );
        // q's -E and its numbers
        assert_eq!(Server::try_parse_from(["x", "--tls", "1"]).unwrap().server.tls.mode, TlsMode::On);
        assert_eq!(Server::try_parse_from(["x", "-E", "2"]).unwrap().server.tls.mode, TlsMode::Only);
        let bad = Server::try_parse_from(["x", "--tls", "maybe"]).unwrap_err().to_string();
        assert!(bad.contains("off, on or only"), "{bad}");
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("localhost:5010"), Ok("localhost:5010".to_string()));
        assert_eq!(parse_address(":h:5010:u:p"), Ok(":h:5010:u:p".to_string()));
        let bad = parse_address("localhost:99999").unwrap_err();
        assert!(bad.contains("bad port") && bad.contains("99999"), "{bad}");
        assert!(parse_address("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes_usize("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }
}
