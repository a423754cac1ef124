//! The registry core, sans-IO: heartbeats, connection closes and clock
//! ticks in; numbered changes out.
//!
//! Time is the registry's own clock, passed in as [`Millis`] (milliseconds
//! since the Unix epoch); a client's clock (`lastHb`) is recorded and shown,
//! never used for a decision. Nothing here touches a socket, a file or the
//! system clock, so every transition is tested on injected time.
//!
//! # States
//!
//! ```text
//!   first beat ──► starting ──(rise beats)──► active ──(warn_after silent)──► warning
//!                                              ▲                                 │
//!                                              └──(rise beats in a row)──────────┤(error_after silent)
//!                                                                                ▼
//!    connection closed (any state) ──► disconnected              error ◄─────────┘
//!    silent for remove_after (any state) ──► removed (the row goes)
//! ```
//!
//! * `starting`: a process's first beats, until [`KindPolicy::rise`] have
//!   arrived (it has shown it beats on a timer).
//! * `active`, `warning`, `error`: by the age of the last beat on the
//!   registry's clock; defaults are the blog's (30 s, 90 s) and its removal
//!   after 10 minutes. A process may also report itself degraded
//!   (`status` `warn` → warning, `fail` → error, Consul's TTL check).
//! * `disconnected`: its heartbeat connection closed (the blog's `.z.pc`).
//! * Flap damping (Consul's `success_before_passing`): from warning or
//!   error, a process needs `rise` good beats in a row before it is active
//!   again; one late beat does not flip it back and forth. From
//!   disconnected it goes to `starting`, then `active` after `rise` beats.
//!
//! # The `expiredH` case
//!
//! The blog's `storeHb` checks whether a process name arrives on a new
//! handle while the old one is still known, marks the old row and closes the
//! old handle. Here a beat for a known name on another connection moves the
//! name to the new connection with no state change (no `disconnected` in
//! between: a process that reconnected before its old socket's close was
//! seen does not flap), and the old connection is returned in
//! [`Accepted::replaced`] for the caller to close; its later close no
//! longer touches the name.
//!
//! # Persistence and restarts
//!
//! [`Registry::take_dirty`] returns the rows changed since the last call
//! (for the store to write in one transaction). [`Registry::restore`] takes
//! them back after a restart: each keeps its state, is marked
//! [`Process::stale`] (shown as "since restart") and ages from the restart,
//! until its first beat clears the mark.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::limits::{
    MAX_ADDRESS_BYTES, MAX_ATTR_KEY_BYTES, MAX_ATTR_VALUE_BYTES, MAX_ATTRS, MAX_KIND_BYTES, MAX_NAME_BYTES,
    MAX_NOTE_BYTES, MAX_PROCESSES, MAX_VERSION_BYTES,
};

/// The registry's clock: milliseconds since the Unix epoch.
pub type Millis = i64;

/// A heartbeat connection, as the IPC layer names it (its `.z.w`).
pub type ConnKey = u64;

/// A process's state. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Active,
    Warning,
    Error,
    Disconnected,
    Removed,
}

impl State {
    /// Every state, in the order the dashboard counts them.
    pub const ALL: [State; 6] =
        [State::Error, State::Disconnected, State::Warning, State::Starting, State::Active, State::Removed];

    /// The word used on every face (`active`, `warning`, …).
    pub fn word(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Active => "active",
            State::Warning => "warning",
            State::Error => "error",
            State::Disconnected => "disconnected",
            State::Removed => "removed",
        }
    }

    /// The state named `word`.
    pub fn from_word(word: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.word() == word)
    }

    /// Sort key, most severe first (error 0 … active 4).
    pub fn severity(self) -> u8 {
        match self {
            State::Error => 0,
            State::Disconnected => 1,
            State::Warning => 2,
            State::Starting => 3,
            State::Active => 4,
            State::Removed => 5,
        }
    }
}

/// A process's report on itself (Consul's TTL check `pass|warn|fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// `ok`, `warn`, `fail` (also Consul's `pass`, `passing`, `warning`,
    /// `critical`).
    pub fn from_word(word: &str) -> Option<Status> {
        match word {
            "ok" | "pass" | "passing" => Some(Status::Ok),
            "warn" | "warning" => Some(Status::Warn),
            "fail" | "critical" => Some(Status::Fail),
            _ => None,
        }
    }
}

/// Thresholds for one kind of process, in milliseconds of the registry's
/// clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindPolicy {
    /// Silent this long: warning (the blog's `warnPeriod`, 30 s).
    pub warn_after: Millis,
    /// Silent this long: error (the blog's `errorPeriod`, 90 s).
    pub error_after: Millis,
    /// Silent this long: removed (the blog's `checkHb` deletes after 10 min).
    pub remove_after: Millis,
    /// Good beats in a row before `active` (from new, or after warning or
    /// error); 1 turns damping off.
    pub rise: u32,
}

impl Default for KindPolicy {
    fn default() -> KindPolicy {
        KindPolicy { warn_after: 30_000, error_after: 90_000, remove_after: 600_000, rise: 2 }
    }
}

/// The registry's configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// The policy of kinds not named in `kinds`.
    pub default: KindPolicy,
    /// Policies by kind (`rdb`, `hdb`, `gateway`, …).
    pub kinds: HashMap<String, KindPolicy>,
}

impl Config {
    /// The policy for `kind`.
    pub fn policy(&self, kind: &str) -> KindPolicy {
        self.kinds.get(kind).copied().unwrap_or(self.default)
    }

    /// The shortest warning threshold of any kind (the clock must tick
    /// well within it).
    pub fn shortest_warn(&self) -> Millis {
        self.kinds.values().map(|p| p.warn_after).fold(self.default.warn_after, Millis::min)
    }
}

/// One heartbeat, as the IPC layer read it. The blog's keys first, then the
/// richer optional ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Heartbeat {
    /// `process`: the name the process registers under.
    pub name: String,
    /// `ip`: dotted IP the client reports (`.z.a`).
    pub ip: String,
    /// `address`: `:host:port` the client reports.
    pub address: String,
    /// `pid` (`.z.i`).
    pub pid: Option<i64>,
    /// `qVersion` (`"v" sv string .z.K,.z.k`).
    pub q_version: String,
    /// `counter`: the client's heartbeat counter.
    pub counter: i64,
    /// `lastHb`: the client's clock when it sent the beat, milliseconds of
    /// the day (`.z.t`); shown, never trusted.
    pub client_time: Option<i32>,
    /// `kind` (rdb, hdb, gateway, …).
    pub kind: Option<String>,
    /// `status`, self-reported.
    pub status: Status,
    /// `note` explaining the status.
    pub note: String,
    /// `attrs`: symbols or strings by name.
    pub attrs: BTreeMap<String, String>,
    /// `http`: its HTTP port.
    pub http: Option<u16>,
}

/// Why a heartbeat was refused. The row of no process changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("bad name {0:?}: 1 to {max} bytes of letters, digits, `_ . - : /`", max = MAX_NAME_BYTES)]
    Name(String),
    #[error("{field} longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("more than {MAX_ATTRS} attributes")]
    TooManyAttrs,
    #[error("registry full: {MAX_PROCESSES} processes")]
    Full,
}

/// A process's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub name: Arc<str>,
    /// Its kind; empty when it sent none.
    pub kind: Arc<str>,
    pub ip: String,
    /// `:host:port` as reported.
    pub address: String,
    /// The host of `address` (or `ip` when there is none).
    pub host: String,
    /// The port of `address`.
    pub port: Option<u16>,
    pub pid: Option<i64>,
    pub q_version: String,
    pub counter: i64,
    /// The client's `lastHb`, milliseconds of its day.
    pub client_time: Option<i32>,
    /// When the last beat arrived, on the registry's clock.
    pub last_beat: Millis,
    /// When the registry first heard of it.
    pub first_seen: Millis,
    pub state: State,
    /// When it entered its state.
    pub since: Millis,
    pub status: Status,
    pub note: String,
    pub attrs: BTreeMap<String, String>,
    pub http: Option<u16>,
    /// Restored after a registry restart and not heard from since.
    pub stale: bool,
    /// Its heartbeat connection (`handle` in the blog's table), if open.
    pub conn: Option<ConnKey>,
    /// Beats received since it first appeared.
    pub beats: u64,
    /// Good beats in a row (flap damping).
    pub good: u32,
    /// Ages are measured from here: the last beat, or the restart for a
    /// stale row.
    pub aging_from: Millis,
}

impl Process {
    /// Milliseconds since its last beat at `now`.
    pub fn age(&self, now: Millis) -> Millis {
        (now - self.last_beat).max(0)
    }

    /// The blog's `active` column.
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Starting | State::Active)
    }
}

/// One change, as the feed carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A process appeared or any of its fields other than the beat's
    /// counters changed (state, status, pid, attrs, connection, …).
    Upsert(Arc<Process>),
    /// A plain beat: only the counter and the times moved.
    Beat { name: Arc<str>, kind: Arc<str>, counter: i64, client_time: Option<i32>, last_beat: Millis },
    /// The row is gone (silent for `remove_after`).
    Removed { name: Arc<str>, kind: Arc<str> },
}

impl Change {
    /// The process it is about.
    pub fn name(&self) -> &str {
        match self {
            Change::Upsert(p) => &p.name,
            Change::Beat { name, .. } | Change::Removed { name, .. } => name,
        }
    }

    /// The kind of the process it is about.
    pub fn kind(&self) -> &str {
        match self {
            Change::Upsert(p) => &p.kind,
            Change::Beat { kind, .. } | Change::Removed { kind, .. } => kind,
        }
    }
}

/// What the registry made of an accepted heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The process's state after the beat.
    pub state: State,
    /// A connection that held this name and holds no other: the caller
    /// closes it (the blog's `hclose expiredH`).
    pub replaced: Option<ConnKey>,
    /// The row after the beat.
    pub process: Arc<Process>,
}

/// Filters for a lookup; every given one must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub names: Vec<String>,
    pub kinds: Vec<String>,
    pub states: Vec<State>,
    /// Attribute `key` = `value`.
    pub attrs: Vec<(String, String)>,
    pub hosts: Vec<String>,
}

impl Filter {
    pub fn matches(&self, p: &Process) -> bool {
        (self.names.is_empty() || self.names.iter().any(|n| **n == *p.name))
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| **k == *p.kind))
            && (self.states.is_empty() || self.states.contains(&p.state))
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| *h == p.host || *h == p.ip))
            && self.attrs.iter().all(|(k, v)| p.attrs.get(k) == Some(v))
    }
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    config: Config,
    processes: HashMap<Arc<str>, Arc<Process>>,
    by_conn: HashMap<ConnKey, Vec<Arc<str>>>,
    seq: u64,
    outbox: Vec<(u64, Change)>,
    dirty: HashSet<Arc<str>>,
    beat_dirty: HashSet<Arc<str>>,
    removed: HashSet<Arc<str>>,
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), Reject> {
    if s.len() > max { Err(Reject::TooLong { field, max }) } else { Ok(()) }
}

/// Whether `name` may name a process: 1 to [`MAX_NAME_BYTES`] bytes of
/// ASCII letters, digits and `_ . - : /` (q symbols in practice; nothing a
/// dashboard or a Prometheus label would have to escape).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-:/".contains(&b))
}

/// `:host:port` (or `host:port`) → (host, port).
pub fn split_address(address: &str) -> (String, Option<u16>) {
    let a = address.strip_prefix(':').unwrap_or(address);
    match a.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(p) => (host.to_string(), Some(p)),
            Err(_) => (a.to_string(), None),
        },
        None => (a.to_string(), None),
    }
}

impl Registry {
    /// An empty registry whose last change number is `seq`.
    pub fn new(config: Config, seq: u64) -> Registry {
        Registry {
            config,
            processes: HashMap::new(),
            by_conn: HashMap::new(),
            seq,
            outbox: Vec::new(),
            dirty: HashSet::new(),
            beat_dirty: HashSet::new(),
            removed: HashSet::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The number of the last change made.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Process>> {
        self.processes.get(name)
    }

    /// Every row, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Process>> {
        self.processes.values()
    }

    /// The rows `filter` matches, most severe first, then by name.
    pub fn lookup(&self, filter: &Filter) -> Vec<Arc<Process>> {
        let mut out: Vec<Arc<Process>> =
            self.processes.values().filter(|p| filter.matches(p)).cloned().collect();
        out.sort_by(|a, b| a.state.severity().cmp(&b.state.severity()).then_with(|| a.name.cmp(&b.name)));
        out
    }

    /// The changes made since the last call, numbered in order.
    pub fn drain_changes(&mut self) -> std::vec::Drain<'_, (u64, Change)> {
        self.outbox.drain(..)
    }

    /// Rows changed and rows removed since the last call (for the store).
    /// Rows whose only change is plain beats (counter, times) are included
    /// only when `beats` is true: the store writes those less often.
    pub fn take_dirty(&mut self, beats: bool) -> (Vec<Arc<Process>>, Vec<Arc<str>>) {
        if beats {
            let more: Vec<Arc<str>> = self.beat_dirty.drain().collect();
            self.dirty.extend(more);
        }
        let changed = self.dirty.drain().filter_map(|n| self.processes.get(&n).cloned()).collect();
        let removed = self.removed.drain().collect();
        (changed, removed)
    }

    fn emit(&mut self, change: Change) {
        self.seq += 1;
        match &change {
            Change::Upsert(p) => {
                self.removed.remove(&p.name);
                self.dirty.insert(Arc::clone(&p.name));
            }
            Change::Beat { name, .. } => {
                self.beat_dirty.insert(Arc::clone(name));
            }
            Change::Removed { name, .. } => {
                self.dirty.remove(name);
                self.beat_dirty.remove(name);
                self.removed.insert(Arc::clone(name));
            }
        }
        self.outbox.push((self.seq, change));
    }

    fn check(hb: &Heartbeat) -> Result<(), Reject> {
        if !valid_name(&hb.name) {
            return Err(Reject::Name(hb.name.chars().take(MAX_NAME_BYTES).collect()));
        }
        check_len("ip", &hb.ip, MAX_ADDRESS_BYTES)?;
        check_len("address", &hb.address, MAX_ADDRESS_BYTES)?;
        check_len("qVersion", &hb.q_version, MAX_VERSION_BYTES)?;
        check_len("kind", hb.kind.as_deref().unwrap_or(""), MAX_KIND_BYTES)?;
        check_len("note", &hb.note, MAX_NOTE_BYTES)?;
        if hb.attrs.len() > MAX_ATTRS {
            return Err(Reject::TooManyAttrs);
        }
        for (k, v) in &hb.attrs {
            check_len("attribute name", k, MAX_ATTR_KEY_BYTES)?;
            check_len("attribute value", v, MAX_ATTR_VALUE_BYTES)?;
        }
        Ok(())
    }

    /// A heartbeat from connection `conn` at `now`.
    pub fn heartbeat(&mut self, now: Millis, conn: ConnKey, hb: Heartbeat) -> Result<Accepted, Reject> {
        Self::check(&hb)?;
        let existing = self.processes.get(hb.name.as_str()).cloned();
        if existing.is_none() && self.processes.len() >= MAX_PROCESSES {
            return Err(Reject::Full);
        }
        let (host, port) = split_address(&hb.address);
        let host = if host.is_empty() { hb.ip.clone() } else { host };
        let Some(old) = existing else {
            let name: Arc<str> = Arc::from(hb.name.as_str());
            let kind: Arc<str> = Arc::from(hb.kind.unwrap_or_default());
            let policy = self.config.policy(&kind);
            let state = match hb.status {
                Status::Ok if policy.rise <= 1 => State::Active,
                Status::Ok => State::Starting,
                Status::Warn => State::Warning,
                Status::Fail => State::Error,
            };
            let p = Arc::new(Process {
                name: Arc::clone(&name),
                kind,
                ip: hb.ip,
                address: hb.address,
                host,
                port,
                pid: hb.pid,
                q_version: hb.q_version,
                counter: hb.counter,
                client_time: hb.client_time,
                last_beat: now,
                first_seen: now,
                state,
                since: now,
                status: hb.status,
                note: hb.note,
                attrs: hb.attrs,
                http: hb.http,
                stale: false,
                conn: Some(conn),
                beats: 1,
                good: u32::from(hb.status == Status::Ok),
                aging_from: now,
            });
            self.processes.insert(Arc::clone(&name), Arc::clone(&p));
            self.by_conn.entry(conn).or_default().push(name);
            self.emit(Change::Upsert(Arc::clone(&p)));
            return Ok(Accepted { state, replaced: None, process: p });
        };

        // A known name.
        let name = Arc::clone(&old.name);
        let mut replaced = None;
        if old.conn != Some(conn) {
            if let Some(prev) = old.conn {
                replaced = self.release(prev, &name).then_some(prev);
            }
            self.by_conn.entry(conn).or_default().push(Arc::clone(&name));
        }
        // A beat from another process (another pid or address) taking the
        // name over describes that process: its kind is what it says (none:
        // empty), never the previous holder's. The same process keeps its
        // kind when a beat leaves it out (the blog's form).
        let other_process = old.conn != Some(conn) && (old.pid != hb.pid || old.address != hb.address);
        let kind: Arc<str> = match hb.kind.as_deref() {
            Some(k) if k != &*old.kind => Arc::from(k),
            Some(_) => Arc::clone(&old.kind),
            None if other_process => Arc::from(""),
            None => Arc::clone(&old.kind),
        };
        if other_process {
            tracing::warn!(
                name = &*name,
                old_pid = ?old.pid,
                new_pid = ?hb.pid,
                old_address = %old.address,
                new_address = %hb.address,
                "process name taken over by another process"
            );
        }
        let policy = self.config.policy(&kind);
        let good = if hb.status == Status::Ok { old.good.saturating_add(1) } else { 0 };
        let state = match hb.status {
            Status::Warn => State::Warning,
            Status::Fail => State::Error,
            Status::Ok if good >= policy.rise => State::Active,
            Status::Ok => match old.state {
                State::Disconnected | State::Removed => State::Starting,
                s => s,
            },
        };
        let same_meta = old.conn == Some(conn)
            && old.state == state
            && !old.stale
            && old.kind == kind
            && old.ip == hb.ip
            && old.address == hb.address
            && old.pid == hb.pid
            && old.q_version == hb.q_version
            && old.status == hb.status
            && old.note == hb.note
            && old.attrs == hb.attrs
            && old.http == hb.http;
        let mut p = Arc::unwrap_or_clone(old);
        p.counter = hb.counter;
        p.client_time = hb.client_time;
        p.last_beat = now;
        p.aging_from = now;
        p.beats += 1;
        p.good = good;
        if same_meta {
            let kind = Arc::clone(&p.kind);
            let p = Arc::new(p);
            self.processes.insert(Arc::clone(&name), Arc::clone(&p));
            self.emit(Change::Beat {
                name,
                kind,
                counter: hb.counter,
                client_time: hb.client_time,
                last_beat: now,
            });
            return Ok(Accepted { state, replaced, process: p });
        }
        if p.state != state {
            p.since = now;
        }
        p.state = state;
        p.stale = false;
        p.conn = Some(conn);
        p.kind = kind;
        p.ip = hb.ip;
        p.address = hb.address;
        p.host = host;
        p.port = port;
        p.pid = hb.pid;
        p.q_version = hb.q_version;
        p.status = hb.status;
        p.note = hb.note;
        p.attrs = hb.attrs;
        p.http = hb.http;
        let p = Arc::new(p);
        self.processes.insert(name, Arc::clone(&p));
        self.emit(Change::Upsert(Arc::clone(&p)));
        Ok(Accepted { state, replaced, process: p })
    }

    /// Takes `name` off `conn`'s list; whether `conn` now holds no name.
    fn release(&mut self, conn: ConnKey, name: &Arc<str>) -> bool {
        match self.by_conn.get_mut(&conn) {
            Some(names) => {
                names.retain(|n| n != name);
                if names.is_empty() {
                    self.by_conn.remove(&conn);
                    true
                } else {
                    false
                }
            }
            None => true,
        }
    }

    /// Connection `conn` closed at `now` (the blog's `.z.pc`): every process
    /// it still carried is disconnected.
    pub fn closed(&mut self, now: Millis, conn: ConnKey) {
        let Some(names) = self.by_conn.remove(&conn) else { return };
        for name in names {
            let Some(old) = self.processes.get(&name).cloned() else { continue };
            if old.conn != Some(conn) {
                continue;
            }
            let mut p = Arc::unwrap_or_clone(old);
            p.conn = None;
            p.good = 0;
            if p.state != State::Disconnected {
                p.state = State::Disconnected;
                p.since = now;
            }
            let p = Arc::new(p);
            self.processes.insert(name, Arc::clone(&p));
            self.emit(Change::Upsert(p));
        }
    }

    /// The clock moved to `now`: rows age into warning, error, removed.
    pub fn tick(&mut self, now: Millis) {
        let mut moves: Vec<(Arc<str>, State)> = Vec::new();
        for p in self.processes.values() {
            let policy = self.config.policy(&p.kind);
            let age = now - p.aging_from;
            let to = if age >= policy.remove_after {
                State::Removed
            } else if p.state == State::Disconnected {
                continue;
            } else if age >= policy.error_after {
                State::Error
            } else if age >= policy.warn_after && matches!(p.state, State::Starting | State::Active) {
                State::Warning
            } else {
                continue;
            };
            if to != p.state {
                moves.push((Arc::clone(&p.name), to));
            }
        }
        moves.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, to) in moves {
            if to == State::Removed {
                let Some(p) = self.processes.remove(&name) else { continue };
                if let Some(c) = p.conn {
                    self.release(c, &name);
                }
                self.emit(Change::Removed { name, kind: Arc::clone(&p.kind) });
                continue;
            }
            let Some(old) = self.processes.get(&name).cloned() else { continue };
            let mut p = Arc::unwrap_or_clone(old);
            p.state = to;
            p.since = now;
            p.good = 0;
            let p = Arc::new(p);
            self.processes.insert(name, Arc::clone(&p));
            self.emit(Change::Upsert(p));
        }
    }

    /// Rows read back from the store after a restart at `now`: each keeps
    /// its state, is marked stale, holds no connection and ages from `now`.
    /// Rows beyond [`MAX_PROCESSES`] are dropped. No change is emitted (the
    /// feed starts after them).
    pub fn restore(&mut self, now: Millis, rows: impl IntoIterator<Item = Process>) {
        for mut p in rows {
            if self.processes.len() >= MAX_PROCESSES || !valid_name(&p.name) {
                continue;
            }
            p.stale = true;
            p.conn = None;
            p.aging_from = now;
            self.processes.insert(Arc::clone(&p.name), Arc::new(p));
        }
    }

    /// Counts per state.
    pub fn counts(&self) -> BTreeMap<State, usize> {
        let mut out = BTreeMap::new();
        for p in self.processes.values() {
            *out.entry(p.state).or_insert(0) += 1;
        }
        out
    }
}

impl PartialOrd for State {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for State {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.severity().cmp(&other.severity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(name: &str, counter: i64) -> Heartbeat {
        Heartbeat {
            name: name.into(),
            ip: "127.0.0.1".into(),
            address: ":host1:5001".into(),
            pid: Some(42),
            q_version: "4v2021.07.12".into(),
            counter,
            client_time: Some(1000),
            ..Heartbeat::default()
        }
    }

    fn state(r: &Registry, name: &str) -> State {
        r.get(name).map_or(State::Removed, |p| p.state)
    }

    fn changes(r: &mut Registry) -> Vec<(u64, Change)> {
        r.drain_changes().collect()
    }

    #[test]
    fn lifecycle_on_the_blogs_defaults() {
        let mut r = Registry::new(Config::default(), 0);
        r.heartbeat(0, 1, hb("rdb1", 0)).unwrap();
        assert_eq!(state(&r, "rdb1"), State::Starting);
        r.heartbeat(2_000, 1, hb("rdb1", 1)).unwrap();
        assert_eq!(state(&r, "rdb1"), State::Active);
        r.tick(31_999);
        assert_eq!(state(&r, "rdb1"), State::Active);
        r.tick(32_000);
        assert_eq!(state(&r, "rdb1"), State::Warning);
        r.tick(92_000);
        assert_eq!(state(&r, "rdb1"), State::Error);
        r.tick(602_000);
        assert_eq!(state(&r, "rdb1"), State::Removed);
        assert!(r.is_empty());
        let seqs: Vec<u64> = changes(&mut r).iter().map(|(s, _)| *s).collect();
        // starting, active, warning, error, removed
        assert_eq!(seqs, (1..=5).collect::<Vec<_>>(), "numbered without gap");
    }

    #[test]
    fn plain_beats_are_light_changes() {
        let mut r = Registry::new(Config::default(), 0);
        r.heartbeat(0, 1, hb("a", 0)).unwrap();
        r.heartbeat(1_000, 1, hb("a", 1)).unwrap();
        r.heartbeat(2_000, 1, hb("a", 2)).unwrap();
        let c = changes(&mut r);
        assert!(matches!(c[0].1, Change::Upsert(_)));
        assert!(matches!(c[1].1, Change::Upsert(ref p) if p.state == State::Active));
        assert!(matches!(c[2].1, Change::Beat { counter: 2, last_beat: 2_000, .. }));
    }

    #[test]
    fn flap_damping_needs_rise_beats_in_a_row() {
        let mut cfg = Config::default();
        cfg.kinds.insert(
            "rdb".into(),
            KindPolicy { warn_after: 1_000, error_after: 3_000, remove_after: 60_000, rise: 3 },
        );
        let mut r = Registry::new(cfg, 0);
        let beat = |c| Heartbeat { kind: Some("rdb".into()), ..hb("x", c) };
        for (t, c) in [(0, 0), (500, 1), (1_000, 2)] {
            r.heartbeat(t, 1, beat(c)).unwrap();
        }
        assert_eq!(state(&r, "x"), State::Active);
        r.tick(2_000);
        assert_eq!(state(&r, "x"), State::Warning);
        r.heartbeat(2_100, 1, beat(3)).unwrap();
        assert_eq!(state(&r, "x"), State::Warning, "one beat is not enough");
        r.heartbeat(2_600, 1, beat(4)).unwrap();
        assert_eq!(state(&r, "x"), State::Warning);
        r.heartbeat(3_100, 1, beat(5)).unwrap();
        assert_eq!(state(&r, "x"), State::Active, "three in a row");
        // A late beat breaks the run.
        r.tick(4_200);
        r.heartbeat(4_300, 1, beat(6)).unwrap();
        r.tick(5_400);
        assert_eq!(state(&r, "x"), State::Warning);
        // Other kinds keep the default policy.
        r.heartbeat(0, 2, hb("y", 0)).unwrap();
        r.tick(29_999);
        assert_eq!(state(&r, "y"), State::Starting);
    }

    #[test]
    fn disconnect_then_reconnect() {
        let mut r = Registry::new(Config::default(), 0);
        r.heartbeat(0, 1, hb("a", 0)).unwrap();
        r.heartbeat(1_000, 1, hb("a", 1)).unwrap();
        r.closed(1_500, 1);
        assert_eq!(state(&r, "a"), State::Disconnected);
        assert_eq!(r.get("a").unwrap().conn, None);
        // Disconnected rows do not go to error, and are removed in time.
        r.tick(200_000);
        assert_eq!(state(&r, "a"), State::Disconnected);
        r.heartbeat(201_000, 2, hb("a", 0)).unwrap();
        assert_eq!(state(&r, "a"), State::Starting);
        r.heartbeat(202_000, 2, hb("a", 1)).unwrap();
        assert_eq!(state(&r, "a"), State::Active);
        r.closed(203_000, 1); // the old connection again: nothing
        assert_eq!(state(&r, "a"), State::Active);
    }

    #[test]
    fn expired_handle_is_replaced_without_flapping() {
        let mut r = Registry::new(Config::default(), 0);
        r.heartbeat(0, 1, hb("a", 0)).unwrap();
        r.heartbeat(1_000, 1, hb("a", 1)).unwrap();
        changes(&mut r);
        // The process restarted and reconnected before its old socket's
        // close reached us.
        let acc = r.heartbeat(2_000, 7, Heartbeat { pid: Some(43), ..hb("a", 0) }).unwrap();
        assert_eq!((acc.state, acc.replaced), (State::Active, Some(1)));
        r.closed(2_100, 1);
        let p = r.get("a").unwrap();
        assert_eq!((p.state, p.conn, p.pid), (State::Active, Some(7), Some(43)));
        let states: Vec<State> = changes(&mut r)
            .into_iter()
            .filter_map(|(_, c)| if let Change::Upsert(p) = c { Some(p.state) } else { None })
            .collect();
        assert_eq!(states, vec![State::Active], "no disconnected in between");
    }

    #[test]
    fn a_name_taken_over_by_another_process_does_not_keep_the_old_kind() {
        let mut r = Registry::new(Config::default(), 0);
        r.heartbeat(0, 1, Heartbeat { kind: Some("rdb".into()), ..hb("a", 0) }).unwrap();
        // the same process on a new connection, blog form (no kind): still an rdb
        r.heartbeat(1_000, 2, hb("a", 1)).unwrap();
        assert_eq!(&*r.get("a").unwrap().kind, "rdb");
        // another process (another pid) takes the name in the blog form: no kind
        r.heartbeat(2_000, 3, Heartbeat { pid: Some(99), ..hb("a", 0) }).unwrap();
        let p = r.get("a").unwrap();
        assert_eq!((&*p.kind, p.pid, p.conn), ("", Some(99), Some(3)));
    }

    #[test]
    fn self_reported_status_and_richer_keys() {
        let mut r = Registry::new(Config::default(), 0);
        let mut b = hb("g", 0);
        b.kind = Some("gateway".into());
        b.status = Status::Warn;
        b.note = "disk 91% full".into();
        b.attrs.insert("region".into(), "ldn".into());
        b.http = Some(8080);
        r.heartbeat(0, 1, b.clone()).unwrap();
        let p = r.get("g").unwrap();
        assert_eq!(
            (p.state, &*p.kind, p.http, p.host.as_str(), p.port),
            (State::Warning, "gateway", Some(8080), "host1", Some(5001))
        );
        b.status = Status::Fail;
        r.heartbeat(100, 1, b.clone()).unwrap();
        assert_eq!(state(&r, "g"), State::Error);
        let f = Filter { attrs: vec![("region".into(), "ldn".into())], ..Filter::default() };
        assert_eq!(r.lookup(&f).len(), 1);
        let f = Filter { kinds: vec!["rdb".into()], ..Filter::default() };
        assert!(r.lookup(&f).is_empty());
    }

    #[test]
    fn bad_heartbeats_change_nothing() {
        let mut r = Registry::new(Config::default(), 0);
        r.heartbeat(0, 1, hb("ok", 0)).unwrap();
        changes(&mut r);
        for bad in [
            hb("", 0),
            hb("has space", 0),
            hb(&"n".repeat(MAX_NAME_BYTES + 1), 0),
            Heartbeat { note: "x".repeat(MAX_NOTE_BYTES + 1), ..hb("ok", 1) },
            Heartbeat {
                attrs: (0..=MAX_ATTRS).map(|i| (i.to_string(), String::new())).collect(),
                ..hb("ok", 1)
            },
            Heartbeat { attrs: [("k".into(), "v".repeat(MAX_ATTR_VALUE_BYTES + 1))].into(), ..hb("ok", 1) },
        ] {
            assert!(r.heartbeat(10, 2, bad).is_err());
        }
        assert_eq!(r.get("ok").unwrap().counter, 0);
        assert!(changes(&mut r).is_empty());
    }

    #[test]
    fn restore_marks_stale_and_ages_from_the_restart() {
        let mut r = Registry::new(Config::default(), 0);
        r.heartbeat(0, 1, hb("a", 0)).unwrap();
        r.heartbeat(1_000, 1, hb("a", 1)).unwrap();
        let (rows, _) = r.take_dirty(true);
        let mut r2 = Registry::new(Config::default(), 0);
        // Restarted an hour later.
        r2.restore(3_600_000, rows.into_iter().map(Arc::unwrap_or_clone));
        let p = r2.get("a").unwrap();
        assert_eq!((p.state, p.stale, p.conn), (State::Active, true, None));
        r2.tick(3_600_000 + 29_000);
        assert_eq!(state(&r2, "a"), State::Active);
        r2.heartbeat(3_600_000 + 29_500, 9, hb("a", 2)).unwrap();
        let p = r2.get("a").unwrap();
        assert_eq!((p.state, p.stale, p.conn), (State::Active, false, Some(9)), "resumes without flapping");
        assert!(matches!(r2.drain_changes().next(), Some((1, Change::Upsert(_)))));
    }

    #[test]
    fn address_forms() {
        assert_eq!(
            split_address(":jamess-macbook-pro.local:8002"),
            ("jamess-macbook-pro.local".into(), Some(8002))
        );
        assert_eq!(split_address("h:1"), ("h".into(), Some(1)));
        assert_eq!(split_address(""), (String::new(), None));
    }
}
