//! The reliable-transport stream node (`qmesh rt`): named streams kept as
//! durable merged logs ([`qmesh_log`]), q publishers and subscribers over
//! plain kdb+ IPC ([`qmesh_rt`]'s protocol), dedup watermarks, filters,
//! events, an archiver per stream and an HTTP API.
//!
//! # From q
//!
//! ```q
//! q)h:hopen`::5010                                   / qmesh rt -p 5010 --http 8010 --data /rt --stream trades
//! q)h(`.rt.pub;`trades;(`upd;`trade;([]sym:`a`b;px:1 2f)))
//! 17592186044416                                     / its position, answered once it is on disk
//! q)neg[h](`.u.upd;`trade;([]sym:`a`b;px:1 2f))     / kdb+tick: (`upd;`trade;data) onto the first stream
//! q)h(`.rt.pub;`trades;msg;`id`dedup!(7;`feed))      / deduplicated by key `feed`
//! q).rt.msg:{[s;m;p] show (s;m;p)}
//! q).rt.event:{[s;e;p] -1 "event ",string[e]," ",-3!p}
//! q)h(`.rt.sub;`trades;::;()!())                     / from the oldest message; answers the start position
//! q)h(`.rt.sub;`trades;`latest;(enlist`filter)!enlist`trade`quote)
//! q)h(`.rt.pause;`trades); h(`.rt.resume;`trades); h(`.rt.unsub;`trades)
//! q)h(`.rt.get_latest_position;`trades)
//! q)h(`.rt.prune;`trades;p)                          / lead subscriber: drop rolled segments before p
//! ```
//!
//! Positions: a sync `.rt.pub` answers the message's own position; each
//! pushed `` (`.rt.msg;`s;msg;pos) `` carries the position *after* the
//! message. Both are restart points: `.rt.sub` from the first gets that
//! message again, from the second the one after it. `::` (or a null long,
//! `0N`) subscribes from the oldest message. Only positions the node handed
//! out are restart points (rt.qpk's contract): a position past the latest
//! is refused, and so is one where no record starts (a byte inside a record,
//! a client's typo), rather than read as a corrupt record (`badtail`, which
//! would skip the rest of the segment):
//!
//! ```q
//! q)h(`.rt.sub;`trades;17592186044419;()!())
//! 'bad request: position 17592186044419 is not the start of a record (it falls inside the record at 17592186044416); the next record boundary is 17592186044516
//! ```
//!
//! ([`qmesh_log::LogHandle::check_position`] says how that is decided.)
//! `.rt.prune` and `.rt.ship.pull` refuse the same positions; `.rt.prune`
//! answers how many segments it removed.
//!
//! A reset (`qmesh rt reset STREAM`, `POST /api/streams/STREAM/reset`)
//! starts a new session, as RT's hard reset: subscribers get a `reset`
//! event, and the dedup watermarks and duplicate counts start again from
//! nothing (publishers' ids restart with the session). Dedup ids follow the
//! rt.qpk rule: the watermark is the largest *distance from zero* seen, so
//! after id `-5` every id from `-5` to `5` is a duplicate.
//!
//! # Guarantees
//!
//! * **Durable acks.** With [`Durability::Always`] (the default) a sync
//!   `.rt.pub` is answered only after the record is fsynced. One writer
//!   thread per stream drains every queued append, writes them, fsyncs
//!   once, then answers them all (group commit), so throughput grows with
//!   the number of publishers rather than falling with fsync latency.
//! * **Subscribers see only durable records**, in log order, each once per
//!   subscription; a subscriber resubscribing from its last position gets
//!   the same sequence of messages and events again.
//! * **Slow subscribers** are fed from disk with at most
//!   [`subscription::SUB_QUEUE_BYTES`] queued per connection; they never
//!   hold publishers back.
//! * **Dedup watermarks survive restarts**: they are rebuilt from the log's
//!   record headers on open, and kept in a checksummed file
//!   (`dedup.watermarks`) written before any segment is removed, so that
//!   archiving does not forget them. Shipping publishers' marks (the last
//!   local position held per key) are kept the same way; a publisher whose
//!   local log was wiped has its mark forgotten (`.rt.ship.rebase`, see
//!   [`qmesh_rt::ship`]) and the file stored at once, so that a restart does
//!   not raise the mark back from the old records.
//! * **Bounded**: the IPC message limit is the payload limit plus
//!   [`qmesh_rt::limits::MAX_ENVELOPE_BYTES`], checked from the header
//!   before the body is read; appends queue in a bounded channel per
//!   stream ([`stream::APPEND_QUEUE`]), which holds a publisher's
//!   connection back when full.

pub mod handler;
pub mod http;
pub mod metrics;
pub mod shipping;
pub mod stats;
pub mod stream;
pub mod subscription;
pub mod watermarks;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qmesh_process::{Shell, ShellOptions, Shutdown, host_name};
use tracing::info;

pub use handler::{Node, NodeHandler};
pub use qmesh_log::ArchivePolicy as Policy;
pub use stream::Durability;

/// Default segment size: RT's 1 GiB (a position's offset has 30 bits).
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;

/// Parses `--durability`: `always` (fsync before every answer, group
/// commit), `interval` (fsync at most once a second; answers once written to
/// the OS), `never` (leave write-back to the OS, as kdb+tick's log).
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "always" => Ok(Durability::Always),
        "interval" => Ok(Durability::Interval(Duration::from_secs(1))),
        "never" => Ok(Durability::Never),
        other => Err(format!("--durability {other}: always, interval or never")),
    }
}

/// How often the archiver looks at each stream.
pub const DEFAULT_ARCHIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How a node runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The process shell's settings: the kdb+ IPC and HTTP listening
    /// addresses, `-u`, the name and kind (`rt`). [`bind`] sets the IPC
    /// message limit to what the largest `.rt.pub` needs.
    pub shell: ShellOptions,
    /// The directory holding one sub-directory per stream.
    pub data: PathBuf,
    /// The streams hosted; the first is the default (`.u.upd` appends there).
    pub streams: Vec<String>,
    /// Segment size at which the log rolls, in bytes (≤ 1 GiB).
    pub segment_bytes: u64,
    /// When a sync `.rt.pub` is answered.
    pub durability: Durability,
    /// The archiver's limits.
    pub archive: Policy,
    /// How often the archiver runs.
    pub archive_interval: Duration,
}

impl Config {
    /// A node on a free loopback port holding `streams` under `data`.
    pub fn new(data: impl Into<PathBuf>, streams: Vec<String>) -> Config {
        Config {
            shell: ShellOptions::new("rt", "rt"),
            data: data.into(),
            streams,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            durability: Durability::Always,
            archive: Policy::default(),
            archive_interval: DEFAULT_ARCHIVE_INTERVAL,
        }
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no stream declared: give at least one --stream NAME")]
    NoStream,
    #[error("bad stream name {0:?}: letters, digits, `_`, `-` and `.`, not starting with `.`, at most {max} bytes", max = qmesh_rt::limits::MAX_STREAM_NAME_BYTES)]
    StreamName(String),
    #[error("stream {0} declared twice")]
    DuplicateStream(String),
    #[error("--archive-max-disk-percent {0}: give a percentage above 0 and at most 100")]
    DiskPercent(f64),
    #[error("--archive-interval {0:?}: at least {MIN_ARCHIVE_INTERVAL:?}")]
    ArchiveInterval(Duration),
    #[error("stream {stream}: {source}")]
    Log { stream: String, source: stream::StreamError },
    #[error("{0}")]
    Shell(#[from] qmesh_process::ShellError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Shortest archiver interval: the archiver lists and stats every segment
/// of a stream on each run, so an interval near zero is a busy loop (an
/// idle node was measured at ~6 % of a core with `0s`).
pub const MIN_ARCHIVE_INTERVAL: Duration = Duration::from_millis(10);

/// Checks what can be checked before anything is opened or bound: the
/// stream names (valid, none twice) and the archiver's limits.
fn check_config(config: &Config) -> Result<(), NodeError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in &config.streams {
        check_stream_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(NodeError::DuplicateStream(name.clone()));
        }
    }
    if let Some(p) = config.archive.max_disk_percent
        && !(p > 0.0 && p <= 100.0)
    {
        return Err(NodeError::DiskPercent(p));
    }
    if config.archive_interval < MIN_ARCHIVE_INTERVAL {
        return Err(NodeError::ArchiveInterval(config.archive_interval));
    }
    Ok(())
}

fn check_stream_name(name: &str) -> Result<(), NodeError> {
    let ok = !name.is_empty()
        && name.len() <= qmesh_rt::limits::MAX_STREAM_NAME_BYTES
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok { Ok(()) } else { Err(NodeError::StreamName(name.to_string())) }
}

/// A node with its logs open and ports bound, ready to [`run`](Bound::run).
#[derive(Debug)]
pub struct Bound {
    config: Config,
    node: Arc<Node>,
    shell: Shell,
}

/// Opens (recovering) every stream's log and binds the ports.
pub async fn bind(mut config: Config) -> Result<Bound, NodeError> {
    let first = config.streams.first().ok_or(NodeError::NoStream)?.clone();
    check_config(&config)?;
    config.shell.ipc.max_message_bytes =
        qmesh_rt::limits::MAX_PAYLOAD_BYTES + qmesh_rt::limits::MAX_ENVELOPE_BYTES;
    // A subscriber's connection must be able to hold the largest message the
    // node accepts plus what its subscription queues ahead of it; with the
    // IPC default (64 MiB) a message above that dropped every subscriber
    // that reached it as a slow reader, forever. Bounded all the same: one
    // largest message plus `SUB_QUEUE_BYTES`.
    let one_message = usize::try_from(config.shell.ipc.max_message_bytes).unwrap_or(usize::MAX);
    config.shell.ipc.max_queue_bytes =
        config.shell.ipc.max_queue_bytes.max(one_message.saturating_add(subscription::SUB_QUEUE_BYTES));
    let shell = Shell::bind(config.shell.clone()).await?;
    let node_metrics = metrics::NodeMetrics::new(shell.metrics());
    let mut streams = BTreeMap::new();
    for name in &config.streams {
        let opts = stream::StreamOptions {
            dir: config.data.join(name),
            segment_bytes: config.segment_bytes,
            durability: config.durability,
            health: shell.health().clone(),
        };
        let (n, m) = (name.clone(), node_metrics.clone());
        let s = tokio::task::spawn_blocking(move || stream::Stream::open(n, opts, m))
            .await
            .map_err(|e| NodeError::Io(std::io::Error::other(e.to_string())))?
            .map_err(|source| NodeError::Log { stream: name.clone(), source })?;
        streams.insert(name.clone(), Arc::new(s));
    }
    let node = Arc::new(Node {
        streams,
        default_stream: first,
        subs: Mutex::new(HashMap::new()),
        metrics: node_metrics,
        host: host_name(),
        permissions: shell.permissions(),
        shippers: Mutex::new(HashMap::new()),
        copies: Mutex::new(HashMap::new()),
    });
    Ok(Bound { config, node, shell })
}

impl Bound {
    /// The kdb+ IPC address.
    pub fn ipc_addr(&self) -> SocketAddr {
        self.shell.ipc_addr().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The HTTP address, if serving HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.shell.http_addr()
    }

    /// The `rt listening …` lines the binary prints.
    pub fn listening_lines(&self) -> Vec<String> {
        self.shell.listening_lines()
    }

    /// Serves until `shutdown` triggers: then stops accepting, lets
    /// connections finish, syncs and closes every log.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), NodeError> {
        let handler = NodeHandler(Arc::clone(&self.node));
        let archivers: Vec<_> = self
            .node
            .streams
            .values()
            .map(|s| {
                tokio::spawn(stream::archive_loop(
                    Arc::clone(s),
                    self.config.archive,
                    self.config.archive_interval,
                    shutdown.clone(),
                ))
            })
            .collect();
        self.shell.health().set_ready(true);
        info!(ipc = %self.ipc_addr(), streams = ?self.node.streams.keys().collect::<Vec<_>>(), data = %self.config.data.display(), "rt node ready");
        let api = http::router(Arc::clone(&self.node));
        self.shell.run(handler, api, shutdown, async {}).await?;
        for a in archivers {
            let _ = a.await;
        }
        for s in self.node.streams.values() {
            s.close().await;
        }
        info!("rt node stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_directory_safe() {
        for ok in ["trades", "a.b-c_1"] {
            assert!(check_stream_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "a/b", "..", "a b"] {
            assert!(check_stream_name(bad).is_err(), "{bad}");
        }
    }
}
