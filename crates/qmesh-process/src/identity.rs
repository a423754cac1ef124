use std::fmt;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Who a process is and where to reach it: what `GET /api/identity` answers,
/// what discovery keys processes by.
///
/// Built by [`crate::Shell::bind`] once the ports are bound (so a port 0
/// asked for has become the one picked); immutable after that.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Identity {
    /// The name it registers under (`EQUITY_MARKET_RDB`, `gateway`).
    pub name: String,
    /// Its kind: the `qmesh` subcommand (`gateway`, `lb`, `service`, …).
    pub kind: String,
    /// The qmesh version it runs.
    pub version: String,
    /// The machine's host name (q's `.z.h`).
    pub host: String,
    /// The operating system's process id (q's `.z.i`).
    pub pid: u32,
    /// When the process started, milliseconds since the Unix epoch (UTC).
    pub started_unix_ms: u64,
    /// The kdb+ IPC port it listens on, if any.
    pub ipc_port: Option<u16>,
    /// The HTTP port it listens on, if any.
    pub http_port: Option<u16>,
    /// The address other processes reach its IPC port at, `:host:port`
    /// (the whitepaper's `` `$":",.z.h,":",string .z.p ``), if it listens.
    pub advertised: Option<String>,
}

impl Identity {
    /// This process as `name` of `kind`, started now, with no ports yet.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Identity {
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Identity {
            name: name.into(),
            kind: kind.into(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            host: host_name(),
            pid: std::process::id(),
            started_unix_ms,
            ipc_port: None,
            http_port: None,
            advertised: None,
        }
    }

    /// Fills in the bound ports and the advertised address: `advertise_host`
    /// if given, else the IPC listening IP, else (listening on every
    /// interface) the host name.
    pub fn bound(
        mut self,
        ipc: Option<SocketAddr>,
        http: Option<SocketAddr>,
        advertise_host: Option<&str>,
    ) -> Identity {
        self.ipc_port = ipc.map(|a| a.port());
        self.http_port = http.map(|a| a.port());
        self.advertised = ipc.map(|a| {
            let host = match advertise_host {
                Some(h) => h.to_string(),
                None if a.ip().is_unspecified() => self.host.clone(),
                None => a.ip().to_string(),
            };
            format!(":{host}:{}", a.port())
        });
        self
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.kind)
    }
}

/// The machine's host name (q's `.z.h`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_fills_ports_and_the_advertised_address() {
        let ipc: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let id = Identity::new("EQ", "service").bound(Some(ipc), Some(http), None);
        assert_eq!((id.ipc_port, id.http_port), (Some(5001), Some(8080)));
        assert_eq!(id.advertised.as_deref(), Some(":127.0.0.1:5001"));
        assert_eq!(id.pid, std::process::id());
        let id = Identity::new("EQ", "service").bound(Some(ipc), None, Some("db1"));
        assert_eq!(id.advertised.as_deref(), Some(":db1:5001"));
        let any: SocketAddr = "0.0.0.0:5001".parse().unwrap();
        let id = Identity::new("EQ", "service").bound(Some(any), None, None);
        assert_eq!(id.advertised, Some(format!(":{}:5001", host_name())));
    }
}
