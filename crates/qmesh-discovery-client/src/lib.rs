//! The heartbeat client every qmesh process runs when given
//! `--discovery HOST:PORT`.
//!
//! It connects to the registry, sends the blog's heartbeat — async
//! `` (`.master.storeHb;dict) `` with `` `process`ip`address`pid`qVersion`counter`lastHb ``
//! — plus the richer keys `kind`, `http`, `status`, `note` and `attrs`, on
//! a timer ([`DEFAULT_INTERVAL`]), and reconnects with backoff when the
//! connection drops (the counter goes on; the registry takes the new
//! connection over without flapping the state). It answers nothing the
//! registry might send (the registry never calls back; a sync request gets
//! `'bad request`).
//!
//! This crate does not depend on the registry: the wire form is the
//! contract (see `qmesh_discovery::wire`).
//!
//! ```no_run
//! # async fn demo() {
//! use qmesh_discovery_client::{Beacon, spawn};
//! let beacon = Beacon::new("EQUITY_RDB_1", "service").ipc_port(5001).http_port(8081);
//! let addr = qmesh_ipc::Address::parse("discovery-host:5050").unwrap();
//! let task = spawn(addr, beacon, qmesh_process::Shutdown::new());
//! # let _ = task;
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qmesh_codec::{Atom, K};
use qmesh_ipc::{Address, Backoff, ClientOptions, Connection, Incoming};
use qmesh_process::Shutdown;
use tracing::{debug, info, warn};

/// Time between beats. The blog's clients beat every 2 s; the registry
/// warns after 30 s of silence by default, so 15 beats may be lost first.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// First wait after losing the registry.
pub const RETRY_INITIAL: Duration = Duration::from_millis(200);

/// Longest wait between attempts to reach the registry.
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// Milliseconds in a day.
const DAY_MS: u128 = 86_400_000;

/// What a process says about itself, now (shared with the beat task).
#[derive(Debug, Clone, Default)]
struct Report {
    status: &'static str,
    note: String,
}

/// What a process reports in each heartbeat.
#[derive(Debug, Clone)]
pub struct Beacon {
    /// `process`: its name (`[A-Za-z0-9_.:/-]`, at most 128 bytes).
    pub name: String,
    /// `kind`: `lb`, `gateway`, `service`, `rdb`, …
    pub kind: String,
    /// Host others use to reach it (`address` is `:host:ipc_port`).
    pub host: String,
    /// Its kdb+ IPC port.
    pub ipc_port: Option<u16>,
    /// Its HTTP port (`/sd` lists it for Prometheus).
    pub http_port: Option<u16>,
    /// `pid`.
    pub pid: u32,
    /// `qVersion`: for qmesh processes `qmesh-<version>`.
    pub version: String,
    /// `attrs`.
    pub attrs: BTreeMap<String, String>,
    /// Time between beats.
    pub interval: Duration,
    report: Arc<Mutex<Report>>,
}

impl Beacon {
    /// A beacon for `name` of `kind` on this machine.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Beacon {
        Beacon {
            name: name.into(),
            kind: kind.into(),
            host: host_name(),
            ipc_port: None,
            http_port: None,
            pid: std::process::id(),
            version: concat!("qmesh-", env!("CARGO_PKG_VERSION")).to_string(),
            attrs: BTreeMap::new(),
            interval: DEFAULT_INTERVAL,
            report: Arc::new(Mutex::new(Report { status: "ok", note: String::new() })),
        }
    }

    pub fn ipc_port(mut self, port: u16) -> Beacon {
        self.ipc_port = Some(port);
        self
    }

    pub fn http_port(mut self, port: u16) -> Beacon {
        self.http_port = Some(port);
        self
    }

    pub fn host(mut self, host: impl Into<String>) -> Beacon {
        self.host = host.into();
        self
    }

    pub fn interval(mut self, interval: Duration) -> Beacon {
        self.interval = interval;
        self
    }

    pub fn attr(mut self, key: impl Into<String>, value: impl Into<String>) -> Beacon {
        self.attrs.insert(key.into(), value.into());
        self
    }

    /// Sets the self-reported status (`ok`, `warn`, `fail`) and note sent
    /// from the next beat on; clones of this beacon share it.
    pub fn set_status(&self, status: &'static str, note: impl Into<String>) {
        if let Ok(mut r) = self.report.lock() {
            r.status = status;
            r.note = note.into();
        }
    }

    /// The heartbeat message: `` (`.master.storeHb;dict) `` with beat
    /// number `counter`.
    pub fn message(&self, counter: i64) -> K {
        let (status, note) =
            self.report.lock().map(|r| (r.status, r.note.clone())).unwrap_or(("ok", String::new()));
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let address = match self.ipc_port {
            Some(p) => format!(":{}:{p}", self.host),
            None => format!(":{}", self.host),
        };
        let ip = if self.host.parse::<std::net::IpAddr>().is_ok() { self.host.as_str() } else { "" };
        let mut keys =
            vec!["process", "ip", "address", "pid", "qVersion", "counter", "lastHb", "kind", "status"];
        let mut values = vec![
            K::sym(&self.name),
            K::sym(ip),
            K::sym(&address),
            K::Atom(Atom::Int(i32::try_from(self.pid).unwrap_or(i32::MIN))),
            K::sym(&self.version),
            K::long(counter),
            K::Atom(Atom::Time((now_ms % DAY_MS) as i32)),
            K::sym(&self.kind),
            K::sym(status),
        ];
        if !note.is_empty() {
            keys.push("note");
            values.push(K::string(&note));
        }
        if let Some(h) = self.http_port {
            keys.push("http");
            values.push(K::Atom(Atom::Int(i32::from(h))));
        }
        if !self.attrs.is_empty() {
            keys.push("attrs");
            values.push(K::dict(
                K::syms(self.attrs.keys()),
                K::list(self.attrs.values().map(K::string).collect()),
            ));
        }
        K::list(vec![K::sym(".master.storeHb"), K::dict(K::syms(keys), K::list(values))])
    }
}

/// The machine's host name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Starts [`run`] on its own task.
pub fn spawn(addr: Address, beacon: Beacon, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(addr, beacon, shutdown))
}

/// Beats to the registry at `addr` until `shutdown`: connect, beat every
/// [`Beacon::interval`], and on any loss reconnect with backoff
/// ([`RETRY_INITIAL`] doubling to [`RETRY_MAX`]).
pub async fn run(addr: Address, beacon: Beacon, shutdown: Shutdown) {
    let backoff = Backoff { initial: RETRY_INITIAL, max: RETRY_MAX, factor: 2.0, max_attempts: None };
    let mut failures: u32 = 0;
    let mut counter: i64 = 0;
    while !shutdown.is_triggered() {
        match Connection::connect(&addr, ClientOptions::default()).await {
            Ok(conn) => {
                info!(discovery = %addr, name = %beacon.name, "heartbeating to discovery");
                let (sender, mut receiver) = conn.split();
                loop {
                    if let Err(e) = sender.send_async(&beacon.message(counter)) {
                        warn!(discovery = %addr, error = %e, "heartbeat not sent; reconnecting");
                        break;
                    }
                    counter += 1;
                    let wait = tokio::time::sleep(beacon.interval);
                    tokio::pin!(wait);
                    let lost = loop {
                        tokio::select! {
                            _ = &mut wait => break false,
                            m = receiver.recv() => match m {
                                None => break true,
                                Some(Incoming::Sync(_, responder)) => {
                                    let _ = responder.error("bad request: a heartbeat client answers no requests");
                                }
                                Some(Incoming::Async(_)) => {}
                            },
                            _ = shutdown.triggered() => break true,
                        }
                    };
                    if lost {
                        break;
                    }
                }
                if shutdown.is_triggered() {
                    let _ = sender.flush().await;
                    break;
                }
                warn!(discovery = %addr, "lost discovery; reconnecting");
                failures = 1;
            }
            Err(e) => {
                if failures == 0 {
                    warn!(discovery = %addr, error = %e, "cannot reach discovery; retrying");
                } else {
                    debug!(discovery = %addr, error = %e, "discovery still unreachable");
                }
                failures = failures.saturating_add(1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay(failures)) => {}
            _ = shutdown.triggered() => break,
        }
    }
}

/// Longest a [`lookup`] waits for the registry's answer.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One process a [`lookup`] found: the columns of `.master.lookup`'s table
/// a client needs to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its `process` name.
    pub name: String,
    /// Its `kind` (`lb`, `gateway`, `service`, …; empty for the blog's form).
    pub kind: String,
    /// Its `state` (`active`, `warning`, …).
    pub state: String,
    /// The host others reach it at (`host` column).
    pub host: String,
    /// Its kdb+ IPC port, if it reported one.
    pub port: Option<u16>,
    /// Its HTTP port, if it reported one.
    pub http: Option<u16>,
}

/// Why a [`lookup`] gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The registry could not be reached or the call failed.
    #[error("discovery: {0}")]
    Ipc(#[from] qmesh_ipc::IpcError),
    /// No answer within [`LOOKUP_TIMEOUT`].
    #[error("timeout: discovery did not answer in {LOOKUP_TIMEOUT:?}")]
    Timeout,
    /// The answer is not `.master.lookup`'s keyed table.
    #[error("discovery answered something that is not the lookup table: {0}")]
    Shape(&'static str),
}

/// Asks the registry at `addr` for the processes of `kind` in state
/// `active`: one sync `` (`.master.lookup;`kind`state!(kind;`active)) ``
/// on a connection opened for it and closed after. Rows come in the
/// registry's order.
pub async fn lookup(addr: &Address, kind: &str) -> Result<Vec<Found>, LookupError> {
    let call = K::list(vec![
        K::sym(".master.lookup"),
        K::dict(K::syms(["kind", "state"]), K::list(vec![K::sym(kind), K::sym("active")])),
    ]);
    let ask = async {
        let conn = Connection::connect(addr, ClientOptions::default()).await?;
        let (sender, _receiver) = conn.split();
        let answer = sender.call(&call).await;
        sender.close();
        answer
    };
    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, ask).await.map_err(|_| LookupError::Timeout)??;
    let value = answer.decode().map_err(|_| LookupError::Shape("undecodable answer"))?;
    parse_lookup(&value)
}

/// The rows of `.master.lookup`'s keyed table.
fn parse_lookup(k: &K) -> Result<Vec<Found>, LookupError> {
    use qmesh_codec::Vector;
    let K::Dict(d) = k else { return Err(LookupError::Shape("not a keyed table")) };
    let (K::Table(keys), K::Table(values)) = (&d.keys, &d.values) else {
        return Err(LookupError::Shape("not a keyed table"));
    };
    let column = |t: &qmesh_codec::Table, name: &str| -> Option<K> {
        t.names.iter().position(|n| n == name.as_bytes()).map(|i| t.columns[i].clone())
    };
    let syms = |c: Option<K>| -> Result<Vec<String>, LookupError> {
        match c {
            Some(K::Vector(_, Vector::Symbol(s))) => {
                Ok(s.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect())
            }
            _ => Err(LookupError::Shape("a symbol column is missing")),
        }
    };
    let ports = |c: Option<K>| -> Result<Vec<Option<u16>>, LookupError> {
        match c {
            Some(K::Vector(_, Vector::Int(v))) => Ok(v.iter().map(|p| u16::try_from(*p).ok()).collect()),
            _ => Err(LookupError::Shape("a port column is missing")),
        }
    };
    let names = syms(column(keys, "process"))?;
    let kinds = syms(column(values, "kind"))?;
    let states = syms(column(values, "state"))?;
    let hosts = syms(column(values, "host"))?;
    let port = ports(column(values, "port"))?;
    let http = ports(column(values, "http"))?;
    let n = names.len();
    if [kinds.len(), states.len(), hosts.len(), port.len(), http.len()].iter().any(|&l| l != n) {
        return Err(LookupError::Shape("columns of different lengths"));
    }
    Ok((0..n)
        .map(|i| Found {
            name: names[i].clone(),
            kind: kinds[i].clone(),
            state: states[i].clone(),
            host: hosts[i].clone(),
            port: port[i],
            http: http[i],
        })
        .collect())
}

/// The kdb+ IPC address of the first active process of `kind` the registry
/// at `addr` knows, or `None` (none active, or the registry unreachable:
/// logged). What a gateway given `--discovery` and no `--lb` uses to find
/// its load balancer.
pub async fn find_ipc(addr: &Address, kind: &str) -> Option<Address> {
    match lookup(addr, kind).await {
        Ok(rows) => rows.into_iter().find_map(|f| {
            let host = if f.host.is_empty() { "127.0.0.1".to_string() } else { f.host };
            Address::parse(&format!("{host}:{}", f.port?)).ok()
        }),
        Err(e) => {
            debug!(discovery = %addr, error = %e, "lookup failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_the_blogs_call_with_our_keys_after() {
        let b = Beacon::new("svc1", "service")
            .host("10.0.0.5")
            .ipc_port(5001)
            .http_port(8081)
            .attr("region", "ldn");
        b.set_status("warn", "slow");
        let K::List(_, items) = b.message(7) else { panic!() };
        assert_eq!(items[0], K::sym(".master.storeHb"));
        let K::Dict(d) = &items[1] else { panic!() };
        let K::Vector(_, qmesh_codec::Vector::Symbol(keys)) = &d.keys else { panic!() };
        let keys: Vec<_> = keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        assert_eq!(
            keys,
            [
                "process", "ip", "address", "pid", "qVersion", "counter", "lastHb", "kind", "status", "note",
                "http", "attrs"
            ]
        );
        let K::List(_, vals) = &d.values else { panic!() };
        assert_eq!(vals[1], K::sym("10.0.0.5"));
        assert_eq!(vals[2], K::sym(":10.0.0.5:5001"));
        assert_eq!(vals[5], K::long(7));
        assert_eq!(vals[8], K::sym("warn"));
        qmesh_codec::check_encodable(&b.message(0), 3).unwrap();
    }
}
