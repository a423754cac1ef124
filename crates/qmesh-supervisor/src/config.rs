//! The estate config: which processes `qmesh up` starts, their ports, data
//! directories, streams and service names.
//!
//! A TOML file (the same `qmesh.toml` whose `[<subcommand>]` tables give each
//! kind's flag defaults) with an optional `[estate]` table and one
//! `[[process]]` table per process, in start order:
//!
//! ```toml
//! [estate]
//! host = "localhost"        # how processes reach one another (default for every process's `host`)
//! bind = "127.0.0.1"        # the address every process listens on
//! # data = "/var/lib/qmesh" # state of every process (default: the user's data directory)
//!
//! [[process]]
//! name = "discovery"
//! kind = "discovery"
//! port = 5001
//! http = 5081
//!
//! [[process]]
//! name = "rdb1"
//! kind = "service"
//! service = "EQUITY_MARKET_RDB"
//! port = 5004
//! http = 5084
//! lb = "lb"                 # the name of the load balancer process
//! rt = "rt"                 # the stream node it is fed from …
//! stream = "trades"         # … and the stream
//! ```
//!
//! Processes refer to one another by name (`lb`, `rt`, `discovery`), never
//! by address: the supervisor turns a name into `host:port`. `args` appends
//! flags as they are (`args = ["--timeout", "5s"]`). The same file can
//! describe processes on several hosts (`host = "b.example"`); `qmesh up
//! --only NAME…` starts a subset on this host.
//!
//! [`Estate::default_layout`] is the embedded default, laid out from one base
//! port (see [`layout`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The default estate's ports, as offsets from the base port (`qmesh up
/// --base-port N`, default [`DEFAULT_BASE_PORT`]). kdb+ IPC ports sit at
/// N…N+5, each process's HTTP port 80 above its IPC port, so the gateway
/// answers q on N and HTTP on N+80 and the dashboard is on N+81.
pub mod layout {
    /// The gateway's kdb+ IPC port: what q, PyKX and qPython `hopen`.
    pub const GATEWAY_IPC: u16 = 0;
    /// The discovery registry's IPC port (heartbeats, lookups).
    pub const DISCOVERY_IPC: u16 = 1;
    /// The load balancer's IPC port.
    pub const LB_IPC: u16 = 2;
    /// The stream node's IPC port (publishers and subscribers).
    pub const RT_IPC: u16 = 3;
    /// The first service instance's IPC port; the second is one above.
    pub const SERVICE_IPC: u16 = 4;
    /// HTTP port of every process = its IPC port + this: the gateway's
    /// `POST /query` on N+80, the dashboard on N+81.
    pub const HTTP_OFFSET: u16 = 80;
    /// The highest offset used (the second service's HTTP port).
    pub const MAX_OFFSET: u16 = SERVICE_IPC + 1 + HTTP_OFFSET;
}

/// The default base port: the gateway's kdb+ IPC port, as in the
/// whitepaper's examples.
pub const DEFAULT_BASE_PORT: u16 = 5000;

/// The service the default estate runs (the whitepaper's example name).
pub const DEFAULT_SERVICE: &str = "EQUITY_MARKET_RDB";

/// The stream the default estate's feed publishes to and its services read.
pub const DEFAULT_STREAM: &str = "trades";

/// Messages per second the default estate's feed publishes: enough to watch
/// tables grow, little enough for a laptop.
pub const DEFAULT_FEED_RATE: u32 = 100;

/// Delay before the first restart of a process that died (milliseconds).
pub const DEFAULT_RESTART_INITIAL_MS: u64 = 500;
/// Longest delay between restarts (milliseconds): the backoff doubles up to it.
pub const DEFAULT_RESTART_MAX_MS: u64 = 30_000;
/// A process that stayed up this long (milliseconds) is healthy again: its
/// next crash restarts after the initial delay.
pub const DEFAULT_STABLE_MS: u64 = 60_000;
/// How long a process may take from start to healthy (milliseconds). Covers
/// a stream node recovering its logs and a service loading a snapshot.
pub const DEFAULT_STARTUP_TIMEOUT_MS: u64 = 60_000;
/// How long a process may take to stop after SIGTERM before SIGKILL
/// (milliseconds). Above the gateway's default 5 s shutdown grace.
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 10_000;

/// Most processes one estate may name: a bound on the config, far above any
/// estate one supervisor should run.
pub const MAX_PROCESSES: usize = 256;

/// A process kind: the `qmesh` subcommand the supervisor runs. Known by
/// name; the supervisor does not link the kinds' crates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `qmesh discovery`: the registry and dashboard.
    Discovery,
    /// `qmesh rt`: the reliable-transport stream node.
    Rt,
    /// `qmesh lb`: the whitepaper's load balancer.
    Lb,
    /// `qmesh gateway`: the query gateway.
    Gateway,
    /// `qmesh service`: a query service instance.
    Service,
    /// `qmesh feed`: the demo feed publishing to a stream.
    Feed,
}

impl Kind {
    /// The subcommand's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Discovery => "discovery",
            Kind::Rt => "rt",
            Kind::Lb => "lb",
            Kind::Gateway => "gateway",
            Kind::Service => "service",
            Kind::Feed => "feed",
        }
    }

    /// Whether the kind listens on a kdb+ IPC port (and so needs `port`).
    pub fn listens(self) -> bool {
        self != Kind::Feed
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[estate]` table: settings for every process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The host name processes use to reach one another, and the default
    /// `host` of every process.
    pub host: String,
    /// The address every process listens on (`0.0.0.0` for an estate that
    /// spans hosts).
    pub bind: String,
    /// The directory holding every process's state (`DATA/<name>/`) and log
    /// (`DATA/logs/<name>.log`). `qmesh up --data` wins over it; without
    /// either, the user's data directory ([`default_data_dir`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// The discovery process every other process heartbeats to (a name);
    /// default: the first process of kind `discovery`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// [`DEFAULT_RESTART_INITIAL_MS`].
    pub restart_initial_ms: u64,
    /// [`DEFAULT_RESTART_MAX_MS`].
    pub restart_max_ms: u64,
    /// [`DEFAULT_STABLE_MS`].
    pub stable_ms: u64,
    /// [`DEFAULT_STARTUP_TIMEOUT_MS`].
    pub startup_timeout_ms: u64,
    /// [`DEFAULT_STOP_TIMEOUT_MS`].
    pub stop_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            host: "localhost".into(),
            bind: "127.0.0.1".into(),
            data: None,
            discovery: None,
            restart_initial_ms: DEFAULT_RESTART_INITIAL_MS,
            restart_max_ms: DEFAULT_RESTART_MAX_MS,
            stable_ms: DEFAULT_STABLE_MS,
            startup_timeout_ms: DEFAULT_STARTUP_TIMEOUT_MS,
            stop_timeout_ms: DEFAULT_STOP_TIMEOUT_MS,
        }
    }
}

/// One `[[process]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Unique in the estate; names its data directory and log, and is how
    /// other processes refer to it.
    pub name: String,
    /// What it runs.
    pub kind: Kind,
    /// Where it runs (default: `[estate] host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// kdb+ IPC port (every kind but `feed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP port (`/healthz`, `/metrics`, its API). Without one, readiness is
    /// its listening line alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<u16>,
    /// `service`: the service name (instances with one name form a pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `rt`: the streams the node declares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<String>,
    /// `gateway`, `service`: the load balancer process (a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    /// `service`, `feed`: the stream node process (a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rt: Option<String>,
    /// `service`, `feed`: the stream on `rt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// `feed`: messages per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Its state directory (`discovery`, `rt`, a `service` fed from a
    /// stream); relative to the estate's data directory. Default: `<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Further flags, appended as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

impl ProcessSpec {
    fn new(name: &str, kind: Kind) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            kind,
            host: None,
            port: None,
            http: None,
            service: None,
            streams: Vec::new(),
            lb: None,
            rt: None,
            stream: None,
            rate: None,
            data: None,
            args: Vec::new(),
        }
    }

    /// Every port it listens on, with what each is for.
    pub fn ports(&self) -> Vec<(u16, &'static str)> {
        let mut v = Vec::new();
        if let Some(p) = self.port {
            v.push((p, "kdb+ IPC"));
        }
        if let Some(p) = self.http {
            v.push((p, "HTTP"));
        }
        v
    }
}

/// A whole estate: settings and processes in start order (stopped in the
/// reverse order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estate {
    /// The `[estate]` table.
    #[serde(default)]
    pub estate: Settings,
    /// The `[[process]]` tables.
    #[serde(rename = "process", default)]
    pub processes: Vec<ProcessSpec>,
}

/// The header `qmesh up --print-config` writes above the default.
const HEADER: &str = "\
# A qmesh estate: `qmesh up --config THIS_FILE` starts it.
#
# Processes start in the order listed, each once the one before is healthy,
# and stop in the reverse order. They refer to one another by name (lb, rt,
# discovery); `host` (default: [estate] host) says where each runs, and
# `qmesh up --only NAME...` starts a subset on this machine. Keys of a
# [[process]]: name, kind (discovery rt lb gateway service feed), host, port
# (kdb+ IPC), http, service, streams (rt), lb, rt, stream, rate (feed), data
# (its state directory, default DATA/<name>), args (further flags, as they are). Tables named after a kind ([gateway],
# [service], ...) give that kind's flag defaults, as for any qmesh command
# (keys are its flags' names; a table or key that names none is refused).
# DATA is `qmesh up --data`, else [estate] data, else ~/.local/share/qmesh;
# every process's log is DATA/logs/<name>.log.

";

impl Estate {
    /// The embedded default: a stream node with a [`DEFAULT_STREAM`] stream,
    /// the discovery registry, a load balancer, a gateway, two instances of
    /// [`DEFAULT_SERVICE`] fed from the stream, and the demo feed, on the
    /// ports of [`layout`] from `base`.
    pub fn default_layout(base: u16) -> Result<Estate, Error> {
        if base == 0 {
            return Err(Error::Config(format!(
                "base port 0 is not usable: port 0 asks the system for any free (ephemeral) port, and every \
                 process of the estate needs a known one; give 1..={}",
                u16::MAX - layout::MAX_OFFSET
            )));
        }
        if base.checked_add(layout::MAX_OFFSET).is_none() {
            return Err(Error::Config(format!(
                "base port {base}: the estate needs ports {base}..={}, past 65535",
                u32::from(base) + u32::from(layout::MAX_OFFSET)
            )));
        }
        let at = |ipc: u16| (Some(base + ipc), Some(base + ipc + layout::HTTP_OFFSET));
        let mut processes = Vec::new();

        let mut discovery = ProcessSpec::new("discovery", Kind::Discovery);
        (discovery.port, discovery.http) = at(layout::DISCOVERY_IPC);
        // a kill shows on the dashboard within seconds (the blog's 30 s/90 s
        // suit estates of many hosts; every qmesh process beats every 2 s)
        discovery.args = ["--warn-after", "5s", "--error-after", "10s"].map(String::from).to_vec();
        processes.push(discovery);

        let mut rt = ProcessSpec::new("rt", Kind::Rt);
        (rt.port, rt.http) = at(layout::RT_IPC);
        rt.streams = vec![DEFAULT_STREAM.into()];
        processes.push(rt);

        let mut lb = ProcessSpec::new("lb", Kind::Lb);
        (lb.port, lb.http) = at(layout::LB_IPC);
        processes.push(lb);

        let mut gateway = ProcessSpec::new("gateway", Kind::Gateway);
        (gateway.port, gateway.http) = at(layout::GATEWAY_IPC);
        gateway.lb = Some("lb".into());
        processes.push(gateway);

        for i in 0..2u16 {
            let mut s = ProcessSpec::new(&format!("rdb{}", i + 1), Kind::Service);
            (s.port, s.http) = at(layout::SERVICE_IPC + i);
            s.service = Some(DEFAULT_SERVICE.into());
            s.lb = Some("lb".into());
            s.rt = Some("rt".into());
            s.stream = Some(DEFAULT_STREAM.into());
            processes.push(s);
        }

        let mut feed = ProcessSpec::new("feed", Kind::Feed);
        feed.rt = Some("rt".into());
        feed.stream = Some(DEFAULT_STREAM.into());
        feed.rate = Some(DEFAULT_FEED_RATE);
        processes.push(feed);

        let estate = Estate { estate: Settings::default(), processes };
        estate.validate()?;
        Ok(estate)
    }

    /// Parses and checks a config's text.
    pub fn parse(text: &str) -> Result<Estate, Error> {
        let estate: Estate = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        estate.validate()?;
        Ok(estate)
    }

    /// The config as TOML, with a header explaining its keys: what
    /// `--print-config` writes, and [`parse`](Estate::parse) reads back.
    pub fn to_toml(&self) -> Result<String, Error> {
        let body = toml::to_string(self).map_err(|e| Error::Config(e.to_string()))?;
        Ok(format!("{HEADER}{body}"))
    }

    /// The process called `name`.
    pub fn process(&self, name: &str) -> Option<&ProcessSpec> {
        self.processes.iter().find(|p| p.name == name)
    }

    /// The host a process runs on.
    pub fn host_of<'a>(&'a self, p: &'a ProcessSpec) -> &'a str {
        p.host.as_deref().unwrap_or(&self.estate.host)
    }

    /// `host:port` of the process called `name` (its kdb+ IPC port).
    pub fn address_of(&self, name: &str) -> Option<String> {
        let p = self.process(name)?;
        Some(format!("{}:{}", self.host_of(p), p.port?))
    }

    /// The discovery process every other one heartbeats to.
    pub fn discovery(&self) -> Option<&ProcessSpec> {
        match &self.estate.discovery {
            Some(name) => self.process(name),
            None => self.processes.iter().find(|p| p.kind == Kind::Discovery),
        }
    }

    /// The first process of `kind`.
    pub fn first_of(&self, kind: Kind) -> Option<&ProcessSpec> {
        self.processes.iter().find(|p| p.kind == kind)
    }

    /// The processes to start: those named in `only` (every name must
    /// exist), or, with no names, every process on this host (`host` is the
    /// estate's default host, `localhost`, a loopback address or this
    /// machine's name `this_host`).
    pub fn select(&self, only: &[String], this_host: &str) -> Result<Vec<&ProcessSpec>, Error> {
        if only.is_empty() {
            let local = |h: &str| {
                h == self.estate.host
                    || h == "localhost"
                    || h == this_host
                    || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            };
            return Ok(self.processes.iter().filter(|p| local(self.host_of(p))).collect());
        }
        let wanted: HashSet<&str> = only.iter().map(String::as_str).collect();
        for name in &wanted {
            if self.process(name).is_none() {
                let names: Vec<&str> = self.processes.iter().map(|p| p.name.as_str()).collect();
                return Err(Error::Config(format!(
                    "--only {name}: no such process (the estate has {})",
                    names.join(", ")
                )));
            }
        }
        Ok(self.processes.iter().filter(|p| wanted.contains(p.name.as_str())).collect())
    }

    /// The processes [`select`](Estate::select) leaves out with no `--only`
    /// names: those whose `host` is not this one (`this_host`), as
    /// `name (host)`.
    pub fn elsewhere(&self, this_host: &str) -> Result<Vec<String>, Error> {
        let here = self.select(&[], this_host)?;
        Ok(self
            .processes
            .iter()
            .filter(|p| !here.iter().any(|h| h.name == p.name))
            .map(|p| format!("{} ({})", p.name, self.host_of(p)))
            .collect())
    }

    /// Checks names, ports, references and each kind's required keys.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |p: &ProcessSpec, what: String| Err(Error::Config(format!("process {}: {what}", p.name)));
        if self.processes.is_empty() {
            return Err(Error::Config("the estate has no [[process]]".into()));
        }
        if self.processes.len() > MAX_PROCESSES {
            return Err(Error::Config(format!("more than {MAX_PROCESSES} processes")));
        }
        let s = &self.estate;
        if s.restart_initial_ms == 0 || s.restart_max_ms < s.restart_initial_ms {
            return Err(Error::Config("restart_initial_ms must be > 0 and <= restart_max_ms".into()));
        }
        let mut names = HashSet::new();
        let mut ports: HashMap<(&str, u16), String> = HashMap::new();
        for p in &self.processes {
            let valid_name = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                && !p.name.starts_with('.');
            if !valid_name {
                return bad(p, "a name is 1-64 of A-Z a-z 0-9 _ - . (not starting with a dot)".into());
            }
            if !names.insert(p.name.as_str()) {
                return bad(p, "the name is used twice".into());
            }
            if p.kind.listens() && p.port.is_none_or(|x| x == 0) {
                return bad(p, format!("a {} needs a port (not 0: others connect to it)", p.kind));
            }
            if !p.kind.listens() && (p.port.is_some() || p.http.is_some()) {
                return bad(p, format!("a {} listens on no port", p.kind));
            }
            if p.http == Some(0) {
                return bad(p, "http = 0: give a port (the supervisor checks /healthz on it)".into());
            }
            for (port, what) in p.ports() {
                if let Some(other) = ports.insert((self.host_of(p), port), format!("{} {what}", p.name)) {
                    return bad(p, format!("port {port} is also {other}'s"));
                }
            }
            let need = |field: &Option<String>, key: &str| match field {
                Some(_) => Ok(()),
                None => bad(p, format!("a {} needs `{key}`", p.kind)),
            };
            match p.kind {
                Kind::Service => need(&p.service, "service")?,
                Kind::Gateway => need(&p.lb, "lb")?,
                Kind::Feed => {
                    need(&p.rt, "rt")?;
                    need(&p.stream, "stream")?;
                }
                _ => {}
            }
            if p.rt.is_some() && p.stream.is_none() {
                return bad(p, "`rt` needs `stream`".into());
            }
            self.check_ref(p, p.lb.as_deref(), Kind::Lb, "lb")?;
            self.check_ref(p, p.rt.as_deref(), Kind::Rt, "rt")?;
            if let (Some(rt), Some(stream)) = (p.rt.as_deref().and_then(|n| self.process(n)), &p.stream)
                && !rt.streams.contains(stream)
            {
                return bad(p, format!("stream {stream} is not one of {}'s streams", rt.name));
            }
        }
        if let Some(d) = &s.discovery {
            match self.process(d) {
                Some(p) if p.kind == Kind::Discovery => {}
                _ => {
                    return Err(Error::Config(format!(
                        "[estate] discovery = {d}: no discovery process of that name"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_ref(&self, p: &ProcessSpec, name: Option<&str>, kind: Kind, key: &str) -> Result<(), Error> {
        let Some(name) = name else { return Ok(()) };
        match self.process(name) {
            Some(q) if q.kind == kind => Ok(()),
            Some(q) => Err(Error::Config(format!(
                "process {}: {key} = {name} is a {}, not a {kind}",
                p.name, q.kind
            ))),
            None => Err(Error::Config(format!("process {}: {key} = {name}: no such process", p.name))),
        }
    }

    /// Ports of the processes in `selected`, by port, for the free-port check.
    pub fn ports_of<'a>(&self, selected: &[&'a ProcessSpec]) -> BTreeMap<u16, (&'a str, &'static str)> {
        let mut m = BTreeMap::new();
        for p in selected {
            for (port, what) in p.ports() {
                m.insert(port, (p.name.as_str(), what));
            }
        }
        m
    }
}

/// The user's data directory for qmesh: `$XDG_DATA_HOME/qmesh`, else
/// `$HOME/.local/share/qmesh` (the XDG base-directory default), else
/// `./qmesh-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("qmesh");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/qmesh");
    }
    PathBuf::from("qmesh-data")
}

impl Settings {
    /// The restart backoff these settings describe.
    pub fn backoff(&self) -> crate::restart::Backoff {
        crate::restart::Backoff {
            initial: Duration::from_millis(self.restart_initial_ms),
            max: Duration::from_millis(self.restart_max_ms),
            stable_after: Duration::from_millis(self.stable_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_layout_follows_the_base_port() {
        let e = Estate::default_layout(5000).unwrap();
        let gw = e.process("gateway").unwrap();
        assert_eq!((gw.port, gw.http), (Some(5000), Some(5080)));
        assert_eq!(e.process("discovery").unwrap().http, Some(5081));
        let names: Vec<&str> = e.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["discovery", "rt", "lb", "gateway", "rdb1", "rdb2", "feed"]);
        let top = e.processes.iter().flat_map(|p| p.ports()).map(|(p, _)| p).max().unwrap();
        assert_eq!(top, 5000 + layout::MAX_OFFSET);
        assert!(Estate::default_layout(65500).is_err());
        let zero = Estate::default_layout(0).unwrap_err().to_string();
        assert!(zero.contains("base port 0 is not usable") && zero.contains("1..=65450"), "{zero}");
        assert!(!zero.contains("past 65535"), "{zero}");
        let e = Estate::default_layout(7000).unwrap();
        assert_eq!(e.address_of("lb").as_deref(), Some("localhost:7002"));
    }

    #[test]
    fn print_config_reads_back_the_same() {
        let e = Estate::default_layout(6000).unwrap();
        let text = e.to_toml().unwrap();
        assert!(text.starts_with("# A qmesh estate"));
        assert_eq!(Estate::parse(&text).unwrap(), e);
    }

    #[test]
    fn tables_of_other_subcommands_are_left_alone() {
        let text = "[gateway]\ntimeout = \"5s\"\n\n[[process]]\nname = \"lb\"\nkind = \"lb\"\nport = 9\n";
        let e = Estate::parse(text).unwrap();
        assert_eq!(e.processes.len(), 1);
        assert_eq!(e.estate, Settings::default());
    }

    fn err(text: &str) -> String {
        Estate::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn mistakes_are_named() {
        let lb = "[[process]]\nname = \"lb\"\nkind = \"lb\"\nport = 9\n";
        assert!(err("").contains("no [[process]]"));
        assert!(err("[[process]]\nname = \"x\"\nkind = \"hdb\"\nport = 1\n").contains("unknown variant"));
        assert!(
            err("[[process]]\nname = \"x\"\nkind = \"lb\"\nport = 1\nprot = 2\n").contains("unknown field")
        );
        assert!(err("[[process]]\nname = \"x\"\nkind = \"lb\"\n").contains("needs a port"));
        assert!(err(&format!("{lb}{lb}")).contains("used twice"));
        let gw = "[[process]]\nname = \"gw\"\nkind = \"gateway\"\nport = 9\nlb = \"lb\"\n";
        assert!(err(&format!("{lb}{gw}")).contains("port 9 is also lb kdb+ IPC's"));
        let gw = "[[process]]\nname = \"gw\"\nkind = \"gateway\"\nport = 8\nlb = \"nope\"\n";
        assert!(err(&format!("{lb}{gw}")).contains("lb = nope: no such process"));
        let svc = "[[process]]\nname = \"s\"\nkind = \"service\"\nport = 7\n";
        assert!(err(svc).contains("needs `service`"));
        let gw = "[[process]]\nname = \"gw\"\nkind = \"gateway\"\nport = 8\nlb = \"s\"\n";
        let svc = "[[process]]\nname = \"s\"\nkind = \"service\"\nport = 7\nservice = \"X\"\n";
        assert!(err(&format!("{svc}{gw}")).contains("is a service, not a lb"));
        let rt = "[[process]]\nname = \"rt\"\nkind = \"rt\"\nport = 6\nstreams = [\"trades\"]\n";
        let feed = "[[process]]\nname = \"f\"\nkind = \"feed\"\nrt = \"rt\"\nstream = \"quotes\"\n";
        assert!(err(&format!("{rt}{feed}")).contains("not one of rt's streams"));
        let feed = "[[process]]\nname = \"f\"\nkind = \"feed\"\nrt = \"rt\"\nstream = \"trades\"\nport = 5\n";
        assert!(err(&format!("{rt}{feed}")).contains("listens on no port"));
    }

    #[test]
    fn only_selects_by_name_and_host() {
        let mut e = Estate::default_layout(5000).unwrap();
        let names = |v: Vec<&ProcessSpec>| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(e.select(&["lb".into(), "discovery".into()], "me").unwrap()), ["discovery", "lb"]);
        assert!(e.select(&["nope".into()], "me").unwrap_err().to_string().contains("nope: no such process"));
        e.processes[4].host = Some("elsewhere".into());
        e.processes[5].host = Some("me".into());
        let here = names(e.select(&[], "me").unwrap());
        assert!(!here.contains(&"rdb1".to_string()) && here.contains(&"rdb2".to_string()), "{here:?}");
        assert_eq!(e.elsewhere("me").unwrap(), ["rdb1 (elsewhere)"]);
    }
}
