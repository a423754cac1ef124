//! A publisher with a local log (rt.qpk's `.rt.pub`): every message is written to the publisher's own log first,
//! and a background task ships that log to the node ([`crate::ship`]), resuming from what the node acknowledged
//! after any disconnect. The publisher keeps publishing while the node is down; nothing acknowledged is lost or
//! duplicated.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qmesh_rt::publisher::PublisherError> {
//! use qmesh_codec::K;
//! use qmesh_rt::publisher::{Publisher, PublisherConfig};
//! let mut cfg = PublisherConfig::new("trades");               // path from $RT_LOG_PATH
//! cfg.publisher_id = Some("pub_a".into());
//! cfg.cluster = vec![":rt-trades-0:5002".into()];
//! let p = Publisher::start(cfg).await?;                       // $path/pub_a.$hostname.trades, locked
//! let pos = p.publish(&K::list(vec![K::sym("upd"), K::sym("trade"), K::long(1)]))?; // in the local log
//! p.wait_acked(pos).await?;                                   // durable on the node
//! # Ok(()) }
//! ```
//!
//! # Local log
//!
//! `$path/$publisher_id.$hostname.$stream` (with `dedup_id`: `$path/$publisher_id.$hostname.$dedup_id.dedup`; without
//! `publisher_id`: `$hostname.$stream`), a [`qmesh_log`] log. The directory is locked while the publisher runs: a
//! second publisher with the same id on the same host fails at once ([`PublisherError::Locked`]). Every start begins
//! a new session of the log, so local positions only grow. Rolled local segments whose records the node has
//! acknowledged are removed (rt.qpk's `--truncate-archived`, on by default; `REPLICATOR_TRUNCATE_ARCHIVED=0` keeps
//! them).
//!
//! # Group commit
//!
//! Concurrent callers of one publisher share fsyncs: each appends its messages under the log's lock (so positions
//! and the id rule follow one order), then waits until the log is durable past its last message; one waiting
//! caller at a time syncs the log for everyone appended so far (one `fdatasync` under [`Durability::Always`], run
//! without the lock: [`Log::begin_sync`], [`qmesh_log::SyncPoint::fsync`], [`Log::finish_sync`]), and those who
//! appended while it did are synced together by the next. `publish` still returns only once its
//! messages are durable. A failed write or fsync voids every unsynced append, so it refuses every waiting and later
//! call (`log unusable after an earlier failure`): restart the publisher, whose new session starts after what the
//! log kept.
//!
//! A directory that was deleted or replaced (an operator wiped it, a new disk, a container without a volume) starts
//! again at a low session, at or below what the node holds for the key: the publisher sees it at the handshake and
//! has the node forget its mark before shipping its whole local log, so the new messages are neither skipped nor
//! dropped ([`crate::ship`]'s rebase; a warning on both sides).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use qmesh_codec::{Atom, K, MsgType, RawObject};
use qmesh_ipc::{Address, ClientOptions, Connection, Incoming};
use qmesh_log::{Durability, Item, Log, LogHandle, LogOptions, Position, RecordHeader, Start};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::dedup::distance;
use crate::limits::MAX_PAYLOAD_BYTES;
use crate::ship::{self, Batch, ShipPush, ShipRequest};

/// Bytes of shipped batches a publisher has in flight (sent, not yet acknowledged) before it waits for the node:
/// bounds the node's queue for one publisher and the bytes a reconnect re-sends.
pub const IN_FLIGHT_BYTES: usize = 16 << 20;

/// First wait before reconnecting to the node after a failure; doubles up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How a publisher runs: the keys of rt.qpk's `.rt.pub` dictionary, plus the local log's options.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The RT stream name (`stream`).
    pub stream: String,
    /// The parent path of RT log directories (`path`, default `$RT_LOG_PATH`, else the current directory).
    pub path: PathBuf,
    /// Distinguishes publishers on one host (`publisher_id`); part of the directory name.
    pub publisher_id: Option<String>,
    /// Names a deduplicated input stream (`dedup_id`): every message carries it as its dedup key, and must carry
    /// an `id`.
    pub dedup_id: Option<String>,
    /// The nodes to ship to (`cluster`), as `:host:port` or `host:port`; tried in turn.
    pub cluster: Vec<String>,
    /// The host name in the directory name (default: this host's).
    pub hostname: String,
    /// When `publish` returns: as the node's `--durability` (default: fsync before returning).
    pub durability: Durability,
    /// The local log's roll point, in bytes (default 1 GiB, RT's).
    pub segment_size: u64,
    /// Remove acknowledged rolled local segments (`REPLICATOR_TRUNCATE_ARCHIVED`, default on).
    pub truncate_archived: bool,
    /// The origin (`on`) of messages that name none (default: the directory name).
    pub origin: Option<String>,
}

impl PublisherConfig {
    /// Defaults for `stream`: path from `$RT_LOG_PATH`, this host's name, truncation from
    /// `$REPLICATOR_TRUNCATE_ARCHIVED`.
    pub fn new(stream: impl Into<String>) -> PublisherConfig {
        PublisherConfig {
            stream: stream.into(),
            path: std::env::var_os("RT_LOG_PATH").map_or_else(|| PathBuf::from("."), PathBuf::from),
            publisher_id: None,
            dedup_id: None,
            cluster: Vec::new(),
            hostname: qmesh_process::host_name(),
            durability: Durability::Always,
            segment_size: qmesh_log::DEFAULT_SEGMENT_SIZE,
            truncate_archived: std::env::var("REPLICATOR_TRUNCATE_ARCHIVED")
                .map_or(true, |v| v.trim() != "0"),
            origin: None,
        }
    }

    /// The directory's name, which is also the publisher's key on the node: `$publisher_id.$hostname.$stream`,
    /// or `….$dedup_id.dedup`.
    pub fn dir_name(&self) -> String {
        let tail = match &self.dedup_id {
            Some(d) => format!("{d}.dedup"),
            None => self.stream.clone(),
        };
        match &self.publisher_id {
            Some(id) => format!("{id}.{}.{tail}", self.hostname),
            None => format!("{}.{tail}", self.hostname),
        }
    }

    /// The local log's directory.
    pub fn dir(&self) -> PathBuf {
        self.path.join(self.dir_name())
    }
}

/// A message's header (rt.qpk's `.rt.on`, `.rt.ts`, `.rt.id`, `.rt.to`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The origin; `None`: the publisher's [`PublisherConfig::origin`].
    pub on: Option<String>,
    /// The timestamp, nanoseconds since 2000.01.01; `None` (`0Np`): now.
    pub ts: Option<i64>,
    /// The message id; its distance from zero must be one more than the previous id's ([`crate::dedup`]).
    pub id: Option<i64>,
    /// Reserved (`to`), stored as given.
    pub to: Option<i64>,
}

/// Errors of a [`Publisher`].
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// Another publisher with the same id on this host holds the directory.
    #[error("publisher directory {} is locked by another running publisher (publisher ids must be unique on a host)", .0.display())]
    Locked(PathBuf),
    /// rt.qpk's `'message too large`: nothing was written.
    #[error("message too large: {len} bytes (limit {MAX_PAYLOAD_BYTES})")]
    TooLarge {
        /// The payload's size in bytes.
        len: u64,
    },
    /// An id that breaks rt.qpk's rule (its distance from zero must grow by one per message).
    #[error("id {id} breaks the id rule: |id| must be {expected} (the previous id's distance plus one)")]
    IdRule {
        /// The id given.
        id: i64,
        /// The distance from zero expected.
        expected: u64,
    },
    /// A deduplicated publisher (`dedup_id`) published without an id.
    #[error("a publisher with dedup_id needs an id on every message")]
    NoId,
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// The local log failed.
    #[error("local log: {0}")]
    Log(#[from] qmesh_log::Error),
    /// The publisher was closed.
    #[error("publisher closed")]
    Closed,
}

struct Writer {
    log: Log,
    /// Distance from zero of the last id appended.
    last_id: Option<u64>,
    /// Why the local log failed; every later publish is refused.
    failed: Option<String>,
}

/// Group commit's state: how far the local log is durable and who is syncing it.
#[derive(Debug, Default)]
struct Commit {
    /// The position up to which appends are durable (per the publisher's durability).
    durable: u64,
    /// A caller is syncing the log for every caller.
    leading: bool,
    /// The local log failed: callers still waiting are refused.
    failed: Option<String>,
    /// Syncs made this run (one per group).
    syncs: u64,
}

struct Inner {
    key: String,
    stream: String,
    dir: PathBuf,
    origin: String,
    dedup_id: Option<String>,
    cluster: Vec<String>,
    truncate: bool,
    writer: Mutex<Writer>,
    /// Group commit (lock order: `writer` before `commit`, never the reverse).
    commit: Mutex<Commit>,
    /// Signalled after every group's sync.
    committed: Condvar,
    handle: LogHandle,
    /// The local log's latest synced position (wakes the shipper).
    latest: watch::Sender<u64>,
    /// The last local position the node acknowledged (`None`: nothing yet).
    acked: watch::Sender<Option<u64>>,
    /// One more than the position of the last message published this run (0: none).
    last_pos: std::sync::atomic::AtomicU64,
    stop: watch::Sender<bool>,
    /// The first position of this run's session: above every position of the log's earlier sessions.
    session_start: Position,
}

/// A running publisher: a local log and the task shipping it. See the [module docs](self).
pub struct Publisher {
    inner: Arc<Inner>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("key", &self.inner.key).finish()
    }
}

fn now_ts() -> i64 {
    const KDB_EPOCH_NS: i128 = 946_684_800 * 1_000_000_000;
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    (ns - KDB_EPOCH_NS) as i64
}

/// Opens the local log: lock, recover, read the last id, start a new session; returns the log, the last id's
/// distance and the new session's first position.
fn open_local(cfg: &PublisherConfig) -> Result<(Log, Option<u64>, Position), PublisherError> {
    let dir = cfg.dir();
    let opts = LogOptions { segment_size: cfg.segment_size, durability: cfg.durability };
    let (mut log, report) = match Log::open(&dir, opts) {
        Ok(x) => x,
        Err(qmesh_log::Error::Dir { source, .. }) if source.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(PublisherError::Locked(dir));
        }
        Err(e) => return Err(e.into()),
    };
    if report.cut.is_some() || report.sealed.is_some() {
        warn!(dir = %dir.display(), ?report, "publisher's local log recovered after a crash");
    }
    let mut last_id = None;
    let mut r = log.reader(Start::Oldest)?;
    while let Some(item) = r.next()? {
        if let Item::Entry(e) = item
            && let Some(d) = distance(e.header().id)
        {
            last_id = Some(d);
        }
    }
    let start = log.new_session()?;
    info!(dir = %dir.display(), session_start = %start, "publisher's local log open");
    Ok((log, last_id, start))
}

impl Publisher {
    /// Opens (creating, locking, recovering) the local log, starts a new session and the shipping task. Fails at
    /// once with [`PublisherError::Locked`] if another publisher holds the directory.
    pub async fn start(cfg: PublisherConfig) -> Result<Publisher, PublisherError> {
        if cfg.stream.is_empty() || cfg.stream.len() > crate::limits::MAX_STREAM_NAME_BYTES {
            return Err(PublisherError::Config(format!("stream name {:?}", cfg.stream)));
        }
        let key = cfg.dir_name();
        if key.len() > ship::MAX_KEY_BYTES || key.contains('/') {
            return Err(PublisherError::Config(format!("directory name {key:?} is not a valid key")));
        }
        // every record carries it: refused here rather than by each append
        if cfg.origin.as_ref().is_some_and(|o| o.len() > qmesh_log::MAX_SYMBOL_LEN) {
            return Err(PublisherError::Config(format!(
                "origin is longer than {} bytes",
                qmesh_log::MAX_SYMBOL_LEN
            )));
        }
        let c = cfg.clone();
        let (log, last_id, session_start) = tokio::task::spawn_blocking(move || open_local(&c))
            .await
            .map_err(|e| PublisherError::Config(format!("opening the local log: {e}")))??;
        let handle = log.handle();
        let (latest, _) = watch::channel(handle.latest_position().as_u64());
        let (acked, _) = watch::channel(None);
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            origin: cfg.origin.clone().unwrap_or_else(|| key.clone()),
            key,
            stream: cfg.stream.clone(),
            dir: cfg.dir(),
            dedup_id: cfg.dedup_id.clone(),
            cluster: cfg.cluster.clone(),
            truncate: cfg.truncate_archived,
            writer: Mutex::new(Writer { log, last_id, failed: None }),
            commit: Mutex::new(Commit { durable: handle.latest_position().as_u64(), ..Commit::default() }),
            committed: Condvar::new(),
            handle,
            latest,
            acked,
            last_pos: std::sync::atomic::AtomicU64::new(0),
            stop,
            session_start,
        });
        let task = if inner.cluster.is_empty() {
            warn!(key = %inner.key, "publisher has no cluster: messages stay in the local log");
            None
        } else {
            Some(tokio::spawn(ship_loop(inner.clone())))
        };
        Ok(Publisher { inner, task })
    }

    /// The publisher's key on the node (its directory's name).
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The local log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The distance from zero of the last id this publisher published (across restarts: recovered from the local
    /// log on start); the next id's distance must be one more.
    pub fn last_id(&self) -> Option<u64> {
        self.inner.writer.lock().unwrap_or_else(|p| p.into_inner()).last_id
    }

    /// Syncs of the local log this run: one per group of concurrent publishes ([group commit](self#group-commit)).
    pub fn syncs(&self) -> u64 {
        self.inner.commit.lock().unwrap_or_else(|p| p.into_inner()).syncs
    }

    /// The first position of this run's session (every start begins a new one).
    pub fn session_start(&self) -> Position {
        self.inner.session_start
    }

    /// The local log's read side (tests and tools).
    pub fn local_log(&self) -> &LogHandle {
        &self.inner.handle
    }

    /// Publishes `msg` (rt.qpk's `p msg`) with an empty header; returns its local position once it is in the
    /// local log.
    pub fn publish(&self, msg: &K) -> Result<Position, PublisherError> {
        self.publish_with(msg, &Header::default())
    }

    /// Publishes `msg` with `header`.
    pub fn publish_with(&self, msg: &K, header: &Header) -> Result<Position, PublisherError> {
        let raw = RawObject::encode(msg);
        self.publish_raw(raw.bytes(), header)
    }

    /// Publishes one already-serialized kdb+ object (little-endian, as `-8!` minus its 8-byte header), stored as
    /// it is.
    pub fn publish_raw(&self, payload: &[u8], header: &Header) -> Result<Position, PublisherError> {
        let mut v = self.publish_batch(std::iter::once((payload, header)))?;
        v.pop().ok_or(PublisherError::Closed)
    }

    /// Publishes several serialized messages with one write and one fsync, shared with concurrent callers
    /// ([group commit](self#group-commit)); returns their local positions once they are durable. All are checked
    /// before any is written: one refusal writes none.
    pub fn publish_batch<'a>(
        &self,
        msgs: impl IntoIterator<Item = (&'a [u8], &'a Header)>,
    ) -> Result<Vec<Position>, PublisherError> {
        let msgs: Vec<_> = msgs.into_iter().collect();
        let (out, end) = {
            let mut w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(why) = &w.failed {
                return Err(qmesh_log::Error::Poisoned(why.clone()).into());
            }
            // check everything first: the id rule against the ids before it
            let mut last = w.last_id;
            for (payload, h) in &msgs {
                if payload.len() as u64 > MAX_PAYLOAD_BYTES {
                    return Err(PublisherError::TooLarge { len: payload.len() as u64 });
                }
                if let Some(on) = &h.on
                    && on.len() > qmesh_log::MAX_SYMBOL_LEN
                {
                    return Err(qmesh_log::Error::SymbolTooLong {
                        field: "on",
                        len: on.len(),
                        max: qmesh_log::MAX_SYMBOL_LEN,
                    }
                    .into());
                }
                match h.id.and_then(distance) {
                    None if self.inner.dedup_id.is_some() => return Err(PublisherError::NoId),
                    None => {}
                    Some(d) => {
                        if let Some(prev) = last
                            && d != prev + 1
                        {
                            return Err(PublisherError::IdRule {
                                id: h.id.unwrap_or_default(),
                                expected: prev + 1,
                            });
                        }
                        last = Some(d);
                    }
                }
            }
            let mut out = Vec::with_capacity(msgs.len());
            let now = now_ts();
            for (payload, h) in &msgs {
                let rh = RecordHeader {
                    on: h.on.as_deref().unwrap_or(&self.inner.origin).as_bytes(),
                    ts: h.ts.unwrap_or(now),
                    id: h.id.unwrap_or(i64::MIN),
                    to: h.to.unwrap_or(i64::MIN),
                    dedup: self.inner.dedup_id.as_deref().map(str::as_bytes),
                };
                match w.log.append(&rh, payload) {
                    Ok(p) => out.push(p),
                    Err(e) => {
                        // checked above, so a storage failure (or a full position space): unsynced appends of
                        // every caller may be void
                        self.inner.fail(&mut w, &e);
                        return Err(e.into());
                    }
                }
            }
            w.last_id = last;
            (out, w.log.end_position().as_u64())
        };
        let Some(p) = out.last() else { return Ok(out) };
        self.inner.wait_durable(end)?;
        self.inner.last_pos.fetch_max(p.as_u64() + 1, std::sync::atomic::Ordering::AcqRel);
        Ok(out)
    }

    /// The last local position the node acknowledged as durable (`None`: nothing yet this run).
    pub fn acked(&self) -> Option<Position> {
        (*self.inner.acked.borrow()).map(Position::from_u64)
    }

    /// Waits until the node holds the message published at `pos` (and everything before it).
    pub async fn wait_acked(&self, pos: Position) -> Result<(), PublisherError> {
        let mut rx = self.inner.acked.subscribe();
        rx.wait_for(|a| a.is_some_and(|a| a >= pos.as_u64())).await.map_err(|_| PublisherError::Closed)?;
        Ok(())
    }

    /// Waits until the node holds everything published so far by this publisher (messages left by an earlier
    /// run are shipped first, so they are held too).
    pub async fn flush(&self) -> Result<(), PublisherError> {
        match self.inner.last_pos.load(std::sync::atomic::Ordering::Acquire) {
            0 => Ok(()),
            p => self.wait_acked(Position::from_u64(p - 1)).await,
        }
    }

    /// Stops shipping and closes the local log (what is not yet acknowledged is shipped by the next start).
    pub async fn close(mut self) {
        self.inner.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.inner.stop.send_replace(true);
    }
}

impl Inner {
    fn commit(&self) -> std::sync::MutexGuard<'_, Commit> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The local log failed under `w` (held): refuses every waiting and later publish.
    fn fail(&self, w: &mut Writer, e: &qmesh_log::Error) {
        let why = e.to_string();
        warn!(key = %self.key, error = %why, "local log failed: the publisher refuses every publish until restarted");
        w.failed.get_or_insert_with(|| why.clone());
        self.commit().failed.get_or_insert(why);
        self.committed.notify_all();
    }

    /// Syncs everything appended so far, by every caller: written out under the writer lock, fsynced without it
    /// (callers go on appending for the next group), then made visible up to what the fsync covered.
    fn sync_all(&self) -> Result<Position, qmesh_log::Error> {
        let writer = || self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let point = {
            let mut w = writer();
            match w.log.begin_sync() {
                Ok(p) => p,
                Err(e) => {
                    self.fail(&mut w, &e);
                    return Err(e);
                }
            }
        };
        let fsynced = point.fsync(&self.handle);
        let mut w = writer();
        let r = w.log.finish_sync(point, fsynced);
        if let Err(e) = &r {
            self.fail(&mut w, e);
        }
        r
    }

    /// Waits until the local log is durable up to `end` (the position after a caller's last append), syncing it
    /// for every caller when nobody else is ([group commit](self#group-commit)).
    fn wait_durable(&self, end: u64) -> Result<(), PublisherError> {
        let mut c = self.commit();
        loop {
            if c.durable >= end {
                return Ok(());
            }
            if let Some(why) = &c.failed {
                return Err(qmesh_log::Error::Poisoned(why.clone()).into());
            }
            if c.leading {
                c = self.committed.wait(c).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            c.leading = true;
            drop(c);
            let synced = self.sync_all();
            c = self.commit();
            c.leading = false;
            c.syncs += 1;
            if let Ok(latest) = &synced {
                c.durable = c.durable.max(latest.as_u64());
                self.latest.send_replace(c.durable);
            }
            self.committed.notify_all();
            synced?;
        }
    }
}

/// Why one shipping connection ended.
#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error("{0}")]
    Ipc(#[from] qmesh_ipc::IpcError),
    #[error("address: {0}")]
    Address(#[from] qmesh_ipc::AddressError),
    #[error("local log: {0}")]
    Log(#[from] qmesh_log::Error),
    #[error("the node closed the connection")]
    Closed,
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

async fn ship_loop(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut failures = 0u32;
    let mut i = 0usize;
    // the last local position shipped in this run, on any connection
    let mut sent = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let addr = inner.cluster[i % inner.cluster.len()].clone();
        i += 1;
        match ship_once(&inner, &addr, &mut stop, &mut sent).await {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                debug!(key = %inner.key, %addr, error = %e, "shipping connection ended");
                if failures == 1 || failures.is_multiple_of(50) {
                    warn!(key = %inner.key, %addr, error = %e, failures, "cannot ship to the node; the local log keeps the messages");
                }
            }
        }
        let delay = RECONNECT_MIN.saturating_mul(1 << failures.min(6)).min(RECONNECT_MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

fn long_answer(k: &K) -> Result<Option<u64>, ShipError> {
    match k {
        K::Atom(Atom::Long(j)) if *j == qmesh_codec::nulls::LONG_NULL => Ok(None),
        K::Atom(Atom::Long(j)) if *j >= 0 => Ok(Some(*j as u64)),
        other => Err(ShipError::Unexpected(format!("{other:?}"))),
    }
}

/// One connection: handshake (a rebase if the node's mark is not one of this log's), then ship from the node's
/// mark while reading acknowledgements. `sent` is the last local position shipped in this run.
async fn ship_once(
    inner: &Arc<Inner>,
    addr: &str,
    stop: &mut watch::Receiver<bool>,
    sent: &mut Option<u64>,
) -> Result<(), ShipError> {
    let conn = Connection::connect(&Address::parse(addr)?, ClientOptions::default()).await?;
    let (sender, mut receiver) = conn.split();
    let hello = ShipRequest::Hello {
        stream: inner.stream.clone(),
        key: inner.key.clone(),
        session: Some(inner.session_start.as_u64()),
    };
    let answer = long_answer(
        &sender.call(&hello.to_k()).await?.decode().map_err(|e| ShipError::Unexpected(e.to_string()))?,
    )?;
    let mark = match ship::resume(answer, inner.session_start.as_u64(), *sent) {
        ship::Resume::After(m) => m,
        ship::Resume::Rebase { mark } => rebase(inner, addr, &sender, mark).await?,
    };
    if let Some(m) = mark {
        inner.acked.send_if_modified(|a| {
            let raise = a.is_none_or(|a| a < m);
            if raise {
                *a = Some(m);
            }
            raise
        });
    }
    let start = match mark {
        Some(m)
            if m <= inner.handle.latest_position().as_u64()
                && m >= inner.handle.first_position().as_u64() =>
        {
            Start::At(Position::from_u64(m))
        }
        _ => Start::Oldest,
    };
    let mut reader = inner.handle.reader(start)?;
    info!(key = %inner.key, %addr, resume = ?mark, from = %reader.position(), "shipping to the node");
    let mut latest = inner.latest.subscribe();
    // (last local position of a batch, its bytes), oldest first
    let mut in_flight: std::collections::VecDeque<(u64, usize)> = Default::default();
    let mut flight_bytes = 0usize;
    let mut batch = Batch::new();
    loop {
        // ship what the local log has, within the window
        let mut drained = false;
        while flight_bytes < IN_FLIGHT_BYTES {
            latest.borrow_and_update();
            match reader.next()? {
                Some(Item::Entry(e)) => {
                    if mark.is_some_and(|m| e.position.as_u64() <= m) {
                        continue; // the node holds it
                    }
                    batch.push(e.position.as_u64(), e.raw());
                    if batch.len() >= ship::BATCH_BYTES {
                        flight_bytes += send(inner, &sender, &mut batch, &mut in_flight, sent)?;
                    }
                }
                Some(Item::Event(ev)) => {
                    if ev.name() == "badtail" {
                        warn!(key = %inner.key, event = ev.name(), positions = ?ev.positions(), "local log damaged: records lost before shipping");
                    }
                }
                None => {
                    drained = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            flight_bytes += send(inner, &sender, &mut batch, &mut in_flight, sent)?;
        }
        tokio::select! {
            m = receiver.recv() => match m {
                None => return Err(ShipError::Closed),
                Some(Incoming::Sync(_, r)) => { let _ = r.error("bad request: a publisher answers no requests"); }
                Some(Incoming::Async(msg)) => match ShipPush::parse(&msg) {
                    Some(Ok(ShipPush::Ack { pos, .. })) => {
                        while in_flight.front().is_some_and(|(last, _)| *last <= pos) {
                            if let Some((_, n)) = in_flight.pop_front() { flight_bytes -= n; }
                        }
                        acked(inner, pos);
                    }
                    other => return Err(ShipError::Unexpected(format!("{other:?}"))),
                },
            },
            r = latest.changed(), if drained => { if r.is_err() { return Ok(()); } }
            _ = stop.changed() => return Ok(()),
        }
    }
}

fn send(
    inner: &Inner,
    sender: &qmesh_ipc::Sender,
    batch: &mut Batch,
    in_flight: &mut std::collections::VecDeque<(u64, usize)>,
    sent: &mut Option<u64>,
) -> Result<usize, ShipError> {
    let last = batch.last().unwrap_or_default();
    let bytes = batch.take();
    let n = bytes.len();
    let obj = ship::recs_object(&inner.stream, &inner.key, &bytes);
    sender.send_raw(MsgType::Async, obj)?;
    in_flight.push_back((last, n));
    *sent = Some(sent.map_or(last, |s| s.max(last)));
    Ok(n)
}

/// The node holds a mark for this key that this log never shipped (at or beyond this run's session start): the
/// local log was wiped or replaced. Asks the node to forget it (`.rt.ship.rebase`) and returns the mark to ship
/// after: none, the whole local log. A refusal ends the connection; the next one says hello again.
async fn rebase(
    inner: &Inner,
    addr: &str,
    sender: &qmesh_ipc::Sender,
    mark: u64,
) -> Result<Option<u64>, ShipError> {
    let session = inner.session_start;
    warn!(
        key = %inner.key, %addr, node_mark = %Position::from_u64(mark), session_start = %session,
        "the node holds local positions of this publisher up to its mark, at or beyond this run's first position: \
         the mark is not from this local log (its directory was wiped or replaced, or another publisher used this \
         id with another path: publisher ids must be unique per host and stream); asking the node to forget the \
         mark (rebase) and shipping the whole local log"
    );
    // records of earlier runs: published away from the node since the wipe, or a restored older copy of the log
    // (whose records the node held: they arrive twice)
    let mut r = inner.handle.reader(Start::Oldest)?;
    while let Some(item) = r.next()? {
        if let Item::Entry(e) = item {
            if e.position < session {
                warn!(
                    key = %inner.key, first = %e.position,
                    "the local log holds records of earlier runs: they are shipped too (if it is a restored copy of \
                     an older log, the ones the node already held are duplicated)"
                );
            }
            break;
        }
    }
    let req = ShipRequest::Rebase {
        stream: inner.stream.clone(),
        key: inner.key.clone(),
        mark,
        session: session.as_u64(),
    };
    let answer = match sender.call(&req.to_k()).await {
        Ok(m) => long_answer(&m.decode().map_err(|e| ShipError::Unexpected(e.to_string()))?)?,
        Err(qmesh_ipc::IpcError::Remote(why)) => {
            warn!(key = %inner.key, %addr, reason = %why, "the node refused the rebase; saying hello again");
            return Err(ShipError::Unexpected(format!("rebase refused: {why}")));
        }
        Err(e) => return Err(e.into()),
    };
    match answer {
        None => {
            warn!(key = %inner.key, %addr, "the node forgot this publisher's mark: shipping the whole local log");
            Ok(None)
        }
        Some(m) => Err(ShipError::Unexpected(format!("rebase answered a mark {m}, not 0N"))),
    }
}

/// Records an acknowledgement and truncates acknowledged rolled local segments.
fn acked(inner: &Inner, pos: u64) {
    let raised = inner.acked.send_if_modified(|a| {
        let raise = a.is_none_or(|a| a < pos);
        if raise {
            *a = Some(pos);
        }
        raise
    });
    if !raised || !inner.truncate {
        return;
    }
    let first = inner.handle.segments().first().copied();
    if first.is_some_and(|s| s.rolled && s.end.as_u64() <= pos) {
        let mut w = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        // a segment whose every record is at or before the acknowledged one: the node has all of it
        match w.log.prune(Position::from_u64(pos)) {
            Ok(r) if !r.removed.is_empty() => {
                debug!(key = %inner.key, removed = r.removed.len(), "acknowledged local segments truncated")
            }
            Ok(_) => {}
            Err(e) => warn!(key = %inner.key, error = %e, "cannot truncate acknowledged local segments"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_callers_get_ordered_positions_and_every_message_is_durable() {
        const THREADS: i64 = 8;
        const EACH: i64 = 100;
        let path = std::env::temp_dir().join(format!("qmesh-pub-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let mut cfg = PublisherConfig::new("s");
        cfg.path = path.clone();
        cfg.publisher_id = Some("t".into());
        cfg.hostname = "h".into();
        // small segments: the log rolls while callers wait for their sync
        cfg.segment_size = 8 << 10;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let p = rt.block_on(Publisher::start(cfg.clone())).expect("start");
        let got: Vec<Vec<(Position, i64, i64)>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let p = &p;
                    s.spawn(move || {
                        (0..EACH)
                            .map(|i| {
                                let pos = p.publish(&K::list(vec![K::long(t), K::long(i)])).expect("publish");
                                // durable, so visible to readers, when publish returns
                                assert!(pos < p.local_log().latest_position(), "{pos} not synced");
                                (pos, t, i)
                            })
                            .collect()
                    })
                })
                .collect();
            threads.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        for mine in &got {
            assert!(mine.windows(2).all(|w| w[0].0 < w[1].0), "a caller's positions are not ordered");
        }
        let all: std::collections::BTreeMap<u64, (i64, i64)> =
            got.iter().flatten().map(|&(pos, t, i)| (pos.as_u64(), (t, i))).collect();
        assert_eq!(all.len() as i64, THREADS * EACH, "positions handed out twice");
        assert!(p.syncs() >= 1 && p.syncs() <= (THREADS * EACH) as u64);
        assert!(p.local_log().segments().len() > 2, "the log did not roll");
        rt.block_on(p.close());
        // everything is in the log after a reopen, at the positions publish returned
        let (log, _) =
            Log::open(cfg.dir(), LogOptions { segment_size: 8 << 10, durability: Durability::Always })
                .expect("reopen");
        let mut r = log.reader(Start::Oldest).expect("reader");
        let mut found = std::collections::BTreeMap::new();
        while let Some(item) = r.next().expect("read") {
            if let Item::Entry(e) = item {
                let k = RawObject::new(bytes::Bytes::copy_from_slice(e.payload()), true)
                    .decode()
                    .expect("decode");
                let K::List(_, v) = k else { panic!("{k:?}") };
                let (K::Atom(Atom::Long(t)), K::Atom(Atom::Long(i))) = (&v[0], &v[1]) else {
                    panic!("{v:?}")
                };
                found.insert(e.position.as_u64(), (*t, *i));
            }
        }
        assert_eq!(found, all);
        drop(log);
        std::fs::remove_dir_all(&path).expect("clean");
    }
}
