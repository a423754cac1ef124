//! A subscriber with a local copy (rt.qpk's `.rt.sub`): a background task copies the node's merged log into the
//! subscriber's own directory, byte for byte and at the node's positions ([`crate::ship`]), and a delivery thread
//! reads the copy with the [`qmesh_log`] reader and calls back with each message and its position. Because
//! messages are read from the local copy, a subscriber restarts from its position while the node is down, and a
//! paused subscriber's copy keeps growing. A corrupt record in the node's log reaches the copy as a `badtail` mark
//! (`.rt.ship.badtail`, [`qmesh_log::Log::mark_badtail`]), so reading the copy yields the event, with the node's
//! two positions, that a direct `.rt.sub` subscriber gets.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qmesh_rt::subscriber::SubscriberError> {
//! use qmesh_rt::From;
//! use qmesh_rt::subscriber::{Subscriber, SubscriberConfig};
//! let mut cfg = SubscriberConfig::new("trades");               // copy in $RT_LOG_PATH/trades
//! cfg.cluster = vec![":rt-trades-0:5001".into()];
//! let sub = Subscriber::start(cfg, From::Start, |m| {
//!     let _value = m.decode();                                   // the message as published
//!     let _restart_from = m.pos;                                 // the position after it
//! }).await?;
//! sub.pause();                                                   // the copy keeps growing
//! sub.resume();
//! sub.unsub();
//! # Ok(()) }
//! ```
//!
//! # Filters
//!
//! rt.qpk's `.rt.filter[pred;callback]` is [`Subscriber::start_filtered`] with a [`Predicate`] of a message's one
//! or two leading symbols, decided from the record's first bytes without decoding it ([`crate::filter`]): cached
//! (`bool`, one question per symbol pair until [`Subscriber::clear_cache`]) or uncached (an integer 0/1, one
//! question per message). A filtered-out message still moves [`Subscriber::position`], so a restart from any
//! position handed out never delivers it.
//!
//! ```no_run
//! # async fn demo(cfg: qmesh_rt::subscriber::SubscriberConfig) -> Result<(), qmesh_rt::subscriber::SubscriberError> {
//! use std::sync::{Arc, Mutex};
//! use qmesh_rt::From;
//! use qmesh_rt::filter::Predicate;
//! use qmesh_rt::subscriber::{Subscriber, log_event};
//! let tables = Arc::new(Mutex::new(vec![b"quote".to_vec()]));   // t:enlist`quote
//! let t = tables.clone();
//! let f = Predicate::cached(move |x, y| x == b"upd" && t.lock().unwrap().iter().any(|n| n == y));
//! let sub = Subscriber::start_filtered(cfg, From::Start, f, |m| { let _ = m.pos; },
//!     |e, p1, p2| log_event("trades", e, p1, p2)).await?;
//! tables.lock().unwrap().push(b"trade".to_vec());               // t,:`trade
//! sub.clear_cache();                                            // filter[f;`clear_cache]
//! # Ok(()) }
//! ```
//!
//! # Controls
//!
//! [`Subscriber::pause`] and [`Subscriber::unsub`] wait for a callback in flight, so none runs after they return;
//! [`Subscriber::control`] gives a [`Control`] to call them (and [`Control::clear_cache`]) from a callback
//! (rt.qpk's `.rt.pause[]`, `.rt.unsub[]`) or another thread.
//!
//! # Waking
//!
//! The delivery thread sleeps until something may be readable: the copy's directory is watched for file-system
//! events (inotify through `rustix`, never polling; the `notify` crate would have changed the features of shared
//! dependencies and rebuilt the whole workspace), and the copying task wakes it once more after each batch is synced (the moment the reader's index publishes the new records, which the file-system event of the
//! write itself can precede). Controls (`pause`, `resume`, `unsub`) wake it too.
//!
//! # Garbage collection
//!
//! By default the copy follows the node's archiver: segments the node archived are removed from the copy too.
//! `REPLICATOR_EXCHANGE_ARCHIVED=0` and `REPLICATOR_TRUNCATE_ARCHIVED=0` opt out; the subscriber then prunes its
//! copy with [`Subscriber::prune`]. A lead subscriber (`REPLICATOR_EXCHANGE_ARCHIVED=1`) also sends its prune to
//! the node (`.rt.prune`), which then truncates every subscriber that follows it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use qmesh_codec::{Atom, K};
use qmesh_ipc::{Address, ClientOptions, Connection, Incoming};
use qmesh_log::{Durability, Item, Log, LogHandle, LogOptions, MAX_SEGMENT_SIZE, Position, Reader, Start};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::event::Event;
use crate::filter::{ClearCache, Decision, Predicate};
use crate::publisher::{RECONNECT_MAX, RECONNECT_MIN};
use crate::request::From;
use crate::ship::{ShipPush, ShipRequest, records};

/// How a subscriber runs.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// The RT stream name.
    pub stream: String,
    /// The directory of the local copy (default `$RT_LOG_PATH/$stream`, rt.qpk's `--target-dir`).
    pub dir: PathBuf,
    /// The nodes to copy from, tried in turn.
    pub cluster: Vec<String>,
    /// Follow the node's archiver, and as a lead send [`Subscriber::prune`] to the node
    /// (`REPLICATOR_EXCHANGE_ARCHIVED`, default on).
    pub exchange_archived: bool,
    /// Remove copies of segments the node archived (`REPLICATOR_TRUNCATE_ARCHIVED`, default on).
    pub truncate_archived: bool,
    /// How the copy is made durable (default: fsync each copied batch).
    pub durability: Durability,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v.trim() != "0")
}

impl SubscriberConfig {
    /// Defaults for `stream`: the copy in `$RT_LOG_PATH/$stream`, GC flags from the environment.
    pub fn new(stream: impl Into<String>) -> SubscriberConfig {
        let stream = stream.into();
        let path = std::env::var_os("RT_LOG_PATH").map_or_else(|| PathBuf::from("."), PathBuf::from);
        SubscriberConfig {
            dir: path.join(&stream),
            stream,
            cluster: Vec::new(),
            exchange_archived: env_flag("REPLICATOR_EXCHANGE_ARCHIVED"),
            truncate_archived: env_flag("REPLICATOR_TRUNCATE_ARCHIVED"),
            durability: Durability::Always,
        }
    }

    /// Whether the copy follows the node's archiver (neither flag set to 0).
    pub fn follows_archiver(&self) -> bool {
        self.exchange_archived && self.truncate_archived
    }
}

/// A message delivered to the callback.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    /// The message as its publisher serialized it (one kdb+ object).
    pub payload: &'a [u8],
    /// The position after it: subscribe from here to get the next message (rt.qpk's `pos`).
    pub pos: u64,
    /// The message's own position.
    pub at: u64,
}

impl Msg<'_> {
    /// The message as a q value.
    pub fn decode(&self) -> Result<K, qmesh_codec::DecodeError> {
        qmesh_codec::RawObject::new(bytes::Bytes::copy_from_slice(self.payload), true).decode()
    }
}

/// Errors of a [`Subscriber`].
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    /// The local copy failed.
    #[error("local copy: {0}")]
    Log(#[from] qmesh_log::Error),
    /// The position asked for is not in the copy and no node is reachable to fetch it.
    #[error("position {0} is not in the local copy")]
    Position(u64),
    /// The node could not be asked.
    #[error("{0}")]
    Ipc(#[from] qmesh_ipc::IpcError),
    /// A bad node address.
    #[error("address: {0}")]
    Address(#[from] qmesh_ipc::AddressError),
    /// The node's answer was not what the protocol says.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// Watching the copy's directory failed.
    #[error("watching the local copy: {0}")]
    Watch(#[from] std::io::Error),
    /// The node refused the copy's first pull: the position is not one it handed out (ahead of its latest, or
    /// not the start of a record); the text is the node's error.
    #[error("the node refused the position: {0}")]
    Refused(String),
}

/// Tells [`Subscriber::start`] whether the node accepted the position of a fresh copy's first pull.
type Checked = tokio::sync::oneshot::Sender<Result<(), SubscriberError>>;

enum Wake {
    Data,
    Ctl,
}

struct Shared {
    stream: String,
    paused: AtomicBool,
    stopped: AtomicBool,
    /// Whether the copying task holds a connection to a node that answered its pull.
    copying: AtomicBool,
    pos: AtomicU64,
    wake: Mutex<mpsc::Sender<Wake>>,
    writer: Mutex<Log>,
    handle: LogHandle,
    cfg: SubscriberConfig,
    stop: watch::Sender<bool>,
    /// Held while a callback runs: `pause` and `unsub` take it, so no callback runs after they return.
    gate: Mutex<()>,
    /// The delivery thread, which must not wait for the gate it holds (a control called from a callback).
    delivery: OnceLock<ThreadId>,
    /// The directory watch (inotify descriptor and watch), removed on unsub to end the watching thread.
    watch: OnceLock<(Arc<rustix::fd::OwnedFd>, i32)>,
    /// Clears the filter's kept answers, when the subscription has a cached filter.
    clear: Option<ClearCache>,
}

impl Shared {
    fn wake(&self, w: Wake) {
        let _ = self.wake.lock().unwrap_or_else(|p| p.into_inner()).send(w);
    }

    /// Waits for a callback in flight to return, unless called from that callback.
    fn fence(&self) {
        if self.delivery.get() != Some(&std::thread::current().id()) {
            drop(self.gate.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    fn pause(&self) {
        self.paused.store(true, Ordering::Release);
        self.wake(Wake::Ctl);
        self.fence();
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.wake(Wake::Ctl);
    }

    fn unsub(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.send_replace(true);
        self.wake(Wake::Ctl);
        if let Some((fd, wd)) = self.watch.get() {
            // the watch's removal wakes the watching thread (`IN_IGNORED`), which then sees `stopped`
            let _ = rustix::fs::inotify::remove_watch(fd.as_ref(), *wd);
        }
        self.fence();
    }

    fn clear_cache(&self) {
        if let Some(c) = &self.clear {
            c.clear_cache();
        }
    }
}

/// A handle on a running [`Subscriber`] for callbacks and other threads: rt.qpk's `.rt.pause[]`,
/// `.rt.resume[stream]`, `.rt.unsub[]` and `` filter[f;`clear_cache] `` wherever they are called from. Cloning is
/// cheap; every clone controls the same subscription. Calling it from the subscription's own callback never waits.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("stream", &self.shared.stream).finish()
    }
}

impl Control {
    /// [`Subscriber::pause`].
    pub fn pause(&self) {
        self.shared.pause();
    }

    /// [`Subscriber::resume`].
    pub fn resume(&self) {
        self.shared.resume();
    }

    /// [`Subscriber::unsub`].
    pub fn unsub(&self) {
        self.shared.unsub();
    }

    /// [`Subscriber::clear_cache`].
    pub fn clear_cache(&self) {
        self.shared.clear_cache();
    }

    /// [`Subscriber::position`].
    pub fn position(&self) -> u64 {
        self.shared.pos.load(Ordering::Acquire)
    }

    /// Whether delivery is paused.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::Acquire)
    }
}

/// A running subscription: the copying task and the delivery thread. See the [module docs](self).
pub struct Subscriber {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The directory-watching thread.
    watcher: Option<std::thread::JoinHandle<()>>,
    /// Disconnects when the copying task has ended (its sender is dropped with the task).
    copier: Option<mpsc::Receiver<()>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("stream", &self.shared.stream).finish()
    }
}

/// rt.qpk's default `.rt.on_event`: says what happened, with the two positions.
pub fn log_event(stream: &str, event: Event, p1: u64, p2: u64) {
    let what = match event {
        Event::BadTail => "Bad tail",
        Event::BadMsg => "Bad message",
        Event::Reset => "Reset",
        Event::SkipForward => "Skip forward",
    };
    warn!(
        stream,
        event = event.name(),
        p1,
        p2,
        "{what} event in {stream}, rolling position from {p1} to {p2}"
    );
}

/// Asks a node for a stream's latest position (`.rt.get_latest_position`).
pub async fn latest_position(addr: &str, stream: &str) -> Result<u64, SubscriberError> {
    let c = Connection::connect(&Address::parse(addr)?, ClientOptions::default()).await?;
    let m = c.call(&K::list(vec![K::sym(".rt.get_latest_position"), K::sym(stream)])).await?;
    match m.decode().map_err(|e| SubscriberError::Unexpected(e.to_string()))? {
        K::Atom(Atom::Long(j)) if j >= 0 => Ok(j as u64),
        other => Err(SubscriberError::Unexpected(format!("{other:?}"))),
    }
}

impl Subscriber {
    /// Subscribes from `from` with `on_msg` and the default event handler ([`log_event`]).
    pub async fn start(
        cfg: SubscriberConfig,
        from: From,
        on_msg: impl FnMut(&Msg<'_>) + Send + 'static,
    ) -> Result<Subscriber, SubscriberError> {
        let stream = cfg.stream.clone();
        Subscriber::start_with(cfg, from, on_msg, move |e, p1, p2| log_event(&stream, e, p1, p2)).await
    }

    /// Subscribes from `from`: `From::Start` (`::`, the oldest message the copy or the node holds),
    /// `From::Latest` (only messages after the node's latest position), or a position handed out earlier (which
    /// the local copy serves while the node is down). `on_event` gets `badtail`, `badmsg`, `reset` and
    /// `skip-forward` with their two positions.
    ///
    /// A position where no record starts (a byte inside a record: a typo) is refused, never read as a corrupt
    /// record: checked against the local copy when the copy holds it
    /// ([`SubscriberError::Log`] with [`qmesh_log::Error::NotARecordStart`]), by the node when the copy is fresh
    /// (the first pull carries the position; [`SubscriberError::Refused`], and `start` waits for that one
    /// answer, or for the first failure to reach a node, after which the copy checks it as below). When the copy
    /// holds something but not yet that position, the copy checks it once it gets there: a refusal then ends
    /// the subscription with an error in the log.
    pub async fn start_with(
        cfg: SubscriberConfig,
        from: From,
        on_msg: impl FnMut(&Msg<'_>) + Send + 'static,
        on_event: impl FnMut(Event, u64, u64) + Send + 'static,
    ) -> Result<Subscriber, SubscriberError> {
        Subscriber::start_inner(cfg, from, None, on_msg, on_event).await
    }

    /// Subscribes like [`Subscriber::start_with`] through a filter (rt.qpk's `.rt.filter[pred;callback]`):
    /// `on_msg` gets only the messages `filter` delivers, decided from their one or two leading symbols without
    /// decoding them ([`crate::filter`], which also gives the rule for messages of another shape). A filtered-out
    /// message still moves the position past it, so a restart from any position handed out never delivers it.
    /// Events are never filtered. With a cached filter, [`Subscriber::clear_cache`] (or [`Control::clear_cache`],
    /// or the filter's [`Predicate::clear_handle`]) forgets its kept answers when what it looks at changes.
    pub async fn start_filtered(
        cfg: SubscriberConfig,
        from: From,
        filter: Predicate,
        on_msg: impl FnMut(&Msg<'_>) + Send + 'static,
        on_event: impl FnMut(Event, u64, u64) + Send + 'static,
    ) -> Result<Subscriber, SubscriberError> {
        Subscriber::start_inner(cfg, from, Some(filter), on_msg, on_event).await
    }

    async fn start_inner(
        cfg: SubscriberConfig,
        from: From,
        filter: Option<Predicate>,
        on_msg: impl FnMut(&Msg<'_>) + Send + 'static,
        on_event: impl FnMut(Event, u64, u64) + Send + 'static,
    ) -> Result<Subscriber, SubscriberError> {
        let opts = LogOptions { segment_size: MAX_SEGMENT_SIZE, durability: cfg.durability };
        let dir = cfg.dir.clone();
        let (log, _report) = tokio::task::spawn_blocking(move || Log::open(dir, opts))
            .await
            .map_err(|e| SubscriberError::Unexpected(e.to_string()))??;
        let handle = log.handle();
        let fresh = handle.total_bytes() <= qmesh_log::format::SEGMENT_HEADER_LEN as u64
            && handle.segments().len() <= 1
            && handle.latest_position().as_u64() == 0;
        if let From::Position(p) = from {
            // the copy holds it: a position inside a record is refused now (the check may walk a segment)
            let (h, p) = (handle.clone(), Position::from_u64(p as u64));
            tokio::task::spawn_blocking(
                move || if p <= h.latest_position() { h.check_position(p) } else { Ok(()) },
            )
            .await
            .map_err(|e| SubscriberError::Unexpected(e.to_string()))??;
        }
        // where delivery starts, and where copying starts when the copy is fresh
        let start = match from {
            From::Position(p) => Some(p as u64),
            From::Start if !fresh => Some(handle.first_position().as_u64()),
            From::Latest if !fresh && cfg.cluster.is_empty() => Some(handle.latest_position().as_u64()),
            _ => None,
        };
        let (tx, rx) = mpsc::channel();
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            stream: cfg.stream.clone(),
            paused: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            copying: AtomicBool::new(false),
            pos: AtomicU64::new(start.unwrap_or(0)),
            wake: Mutex::new(tx),
            writer: Mutex::new(log),
            handle,
            cfg: cfg.clone(),
            stop,
            gate: Mutex::new(()),
            delivery: OnceLock::new(),
            watch: OnceLock::new(),
            clear: filter.as_ref().filter(|f| f.is_cached()).map(Predicate::clear_handle),
        });
        // what delivery waits for before it reads: a position the copy must reach
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<u64>();
        let mut copier = None;
        let mut checked = None;
        match start {
            Some(p) => {
                let _ = first_tx.send(p);
                if !cfg.cluster.is_empty() {
                    // a fresh copy of a known position starts with that position's whole segment: the node
                    // answers its start, after checking the position itself
                    let (ck_tx, ck_rx) = tokio::sync::oneshot::channel();
                    let seed = fresh.then(|| (From::Position(p as i64), None));
                    let ck = (fresh && matches!(from, From::Position(_))).then(|| {
                        checked = Some(ck_rx);
                        ck_tx
                    });
                    copier = Some(spawn_copier(&shared, seed, ck));
                }
            }
            None if cfg.cluster.is_empty() => {
                let _ = first_tx.send(shared.handle.latest_position().as_u64());
            }
            None => {
                copier = Some(spawn_copier(&shared, Some((from, Some(first_tx))), None));
            }
        }
        let refused = match checked {
            Some(ck) => ck.await.ok().and_then(Result::err),
            None => None,
        };
        if let Some(e) = refused {
            // the copying task has ended: wait until it has let go of the copy (its directory lock)
            if let Some(done) = copier.take() {
                let _ = tokio::task::spawn_blocking(move || done.recv_timeout(CLOSE_WAIT)).await;
            }
            return Err(e);
        }
        let (watch, watcher) = watch_dir(&shared, &cfg.dir)?;
        let _ = shared.watch.set(watch);
        let d = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rt-sub-{}", cfg.stream))
            .spawn(move || deliver(d, rx, first_rx, filter, on_msg, on_event))
            .map_err(|e| SubscriberError::Unexpected(e.to_string()))?;
        Ok(Subscriber { shared, thread: Some(thread), watcher: Some(watcher), copier })
    }

    /// The position after the last message or event delivered: restart from here.
    pub fn position(&self) -> u64 {
        self.shared.pos.load(Ordering::Acquire)
    }

    /// The local copy's latest position (what is readable locally).
    pub fn copy_latest_position(&self) -> u64 {
        self.shared.handle.latest_position().as_u64()
    }

    /// Whether the copy is being fed: the copying task is connected to a node that accepted its pull (`false`
    /// while the node is down or unreachable, and with no `cluster`; the local copy still serves what it holds).
    pub fn copying(&self) -> bool {
        self.shared.copying.load(Ordering::Acquire)
    }

    /// The local copy (tests and tools).
    pub fn local_copy(&self) -> &LogHandle {
        &self.shared.handle
    }

    /// Stops delivery; the copy keeps growing (`.rt.pause`). Once this returns no callback runs until
    /// [`Subscriber::resume`] (a callback in flight on another thread is waited for; called from a callback, the
    /// callback in progress finishes and none follows).
    pub fn pause(&self) {
        self.shared.pause();
    }

    /// Resumes delivery where it stopped (`.rt.resume`): the next message is the one after the last delivered,
    /// read from the copy, which grew meanwhile.
    pub fn resume(&self) {
        self.shared.resume();
    }

    /// Ends the subscription (`.rt.unsub`): no callback runs after this returns (a callback in flight on another
    /// thread is waited for; called from a callback, none follows it), and the copying stops.
    pub fn unsub(&self) {
        self.shared.unsub();
    }

    /// Forgets a cached filter's kept answers (rt.qpk's `` filter[f;`clear_cache] ``): the predicate is asked
    /// again, once per symbol pair, from the next message on. Nothing to do without a cached filter.
    pub fn clear_cache(&self) {
        self.shared.clear_cache();
    }

    /// A handle for callbacks and other threads: pause, resume, unsub and clear the cache from anywhere.
    pub fn control(&self) -> Control {
        Control { shared: self.shared.clone() }
    }

    /// Removes the copy's rolled segments whose messages are all before `pos` (`.rt.prune`), on a background
    /// thread; a lead subscriber (`exchange_archived`) also asks the node to prune, which truncates every
    /// subscriber following the node's archiver.
    pub fn prune(&self, pos: u64) {
        let s = self.shared.clone();
        std::thread::spawn(move || {
            let r = s.writer.lock().unwrap_or_else(|p| p.into_inner()).prune(Position::from_u64(pos));
            match r {
                Ok(r) => debug!(stream = %s.stream, removed = r.removed.len(), "copy pruned"),
                Err(e) => warn!(stream = %s.stream, error = %e, "cannot prune the local copy"),
            }
        });
        if self.shared.cfg.exchange_archived && !self.shared.cfg.cluster.is_empty() {
            let (addr, stream) = (self.shared.cfg.cluster[0].clone(), self.shared.stream.clone());
            tokio::spawn(async move {
                let r: Result<(), SubscriberError> = async {
                    let c = Connection::connect(&Address::parse(&addr)?, ClientOptions::default()).await?;
                    c.call(&K::list(vec![K::sym(".rt.prune"), K::sym(&stream), K::long(pos as i64)])).await?;
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    warn!(stream, error = %e, "lead subscriber's prune not sent to the node");
                }
            });
        }
    }
}

/// Longest a dropped [`Subscriber`] waits for its copying task to stop, so that the local copy's directory (its
/// lock) is free for a restart in the same process when `drop` returns. The task stops at its next await point: at
/// once while copying or waiting to reconnect, after one connection attempt while connecting. In seconds.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for Subscriber {
    /// Unsubscribes and waits for the delivery thread, the directory watch and the copying task to end, so the
    /// local copy is closed (and its directory free for a new `Subscriber`) when this returns. Waiting for the
    /// copying task needs a runtime thread to run it: on a current-thread runtime (where it would wait for
    /// itself) it is not waited for, and the directory is free once the runtime runs the task to its end.
    fn drop(&mut self) {
        self.unsub();
        let me = std::thread::current().id();
        for t in [self.thread.take(), self.watcher.take()].into_iter().flatten() {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        if let Some(done) = self.copier.take() {
            let wait = || {
                if done.recv_timeout(CLOSE_WAIT) == Err(mpsc::RecvTimeoutError::Timeout) {
                    warn!(stream = %self.shared.stream, "the copying task did not stop in time; the local copy stays open until it does");
                }
            };
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => {}
                Ok(_) => tokio::task::block_in_place(wait),
                Err(_) => wait(),
            }
        }
    }
}

/// Spawns the copying task; the receiver disconnects when the task has ended. `checked` is told how the node
/// answered the first pull (a refusal ends the task) or that no node could be reached.
fn spawn_copier(
    s: &Arc<Shared>,
    first: Option<(From, Option<tokio::sync::oneshot::Sender<u64>>)>,
    checked: Option<Checked>,
) -> mpsc::Receiver<()> {
    let (done, rx) = mpsc::channel::<()>();
    let s = s.clone();
    tokio::spawn(async move {
        let _done = done;
        copy_loop(s, first, checked).await;
    });
    rx
}

/// Watches `dir` for file-system events on a thread of its own, waking delivery on each.
type Watch = ((Arc<rustix::fd::OwnedFd>, i32), std::thread::JoinHandle<()>);

fn watch_dir(s: &Arc<Shared>, dir: &std::path::Path) -> std::io::Result<Watch> {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC)?);
    let flags = WatchFlags::MODIFY
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_TO
        | WatchFlags::CLOSE_WRITE;
    let wd = inotify::add_watch(fd.as_ref(), dir, flags)?;
    let (f, w) = (fd.clone(), s.clone());
    let thread = std::thread::Builder::new().name(format!("rt-watch-{}", s.stream)).spawn(move || {
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(f.as_ref(), &mut buf);
        loop {
            if w.stopped.load(Ordering::Acquire) {
                return;
            }
            match reader.next() {
                Ok(_) => w.wake(Wake::Data),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    debug!(stream = %w.stream, error = %e, "watch ended");
                    return;
                }
            }
        }
    })?;
    Ok(((fd, wd), thread))
}

fn deliver(
    s: Arc<Shared>,
    rx: mpsc::Receiver<Wake>,
    first: tokio::sync::oneshot::Receiver<u64>,
    mut filter: Option<Predicate>,
    mut on_msg: impl FnMut(&Msg<'_>),
    mut on_event: impl FnMut(Event, u64, u64),
) {
    let _ = s.delivery.set(std::thread::current().id());
    let Ok(start) = first.blocking_recv() else { return };
    s.pos.store(start, Ordering::Release);
    let mut reader: Option<Reader> = None;
    // an item read while a pause arrived: delivered first on resume
    let mut pending: Option<Item> = None;
    loop {
        if s.stopped.load(Ordering::Acquire) {
            return;
        }
        if s.paused.load(Ordering::Acquire) {
            if rx.recv().is_err() {
                return;
            }
            continue;
        }
        if reader.is_none() {
            // the copy must reach the start position first
            if s.handle.latest_position().as_u64() >= start
                && s.handle.segments().iter().any(|g| g.end.as_u64() >= start)
            {
                match s.handle.reader(Start::At(Position::from_u64(start))) {
                    Ok(r) => reader = Some(r),
                    Err(e) => {
                        // a position not checked at start (the copy did not hold it yet) ends here
                        error!(stream = %s.stream, start, error = %e, "cannot read the local copy from the start position; subscription ended");
                        return;
                    }
                }
            } else {
                if rx.recv().is_err() {
                    return;
                }
                continue;
            }
        }
        let Some(r) = reader.as_mut() else { continue };
        let item = match pending.take() {
            Some(item) => item,
            None => match r.next() {
                Ok(Some(item)) => item,
                Ok(None) => {
                    if rx.recv().is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    warn!(stream = %s.stream, error = %e, "reading the local copy failed; subscription ended");
                    return;
                }
            },
        };
        // callbacks run under the gate, after a last look at the controls: `pause` and `unsub` wait for it
        let gate = s.gate.lock().unwrap_or_else(|p| p.into_inner());
        if s.stopped.load(Ordering::Acquire) {
            return;
        }
        if s.paused.load(Ordering::Acquire) {
            pending = Some(item);
            continue;
        }
        match item {
            Item::Entry(e) => {
                let next = e.next.as_u64();
                let payload = e.payload();
                let decision = filter.as_mut().map_or(Decision::Deliver, |f| f.decide(payload));
                if decision != Decision::Drop {
                    if matches!(qmesh_codec::object_extent(payload, true), Ok(n) if n == payload.len()) {
                        on_msg(&Msg { payload, pos: next, at: e.position.as_u64() });
                    } else {
                        on_event(Event::BadMsg, e.position.as_u64(), next);
                    }
                }
                // a filtered-out message moves the position too: a restart never delivers it
                s.pos.store(next, Ordering::Release);
            }
            Item::Event(ev) => {
                let (p1, p2) = ev.positions();
                let event = match ev.name() {
                    "badtail" => Event::BadTail,
                    "reset" => Event::Reset,
                    _ => Event::SkipForward,
                };
                on_event(event, p1.as_u64(), p2.as_u64());
                s.pos.store(ev.next().as_u64(), Ordering::Release);
            }
        }
        drop(gate);
    }
}

/// Keeps the copy growing: connects, asks for the log from where the copy ends, appends what arrives.
async fn copy_loop(
    s: Arc<Shared>,
    mut first: Option<(From, Option<tokio::sync::oneshot::Sender<u64>>)>,
    mut checked: Option<Checked>,
) {
    let mut stop = s.stop.subscribe();
    let mut failures = 0u32;
    let mut i = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        let addr = s.cfg.cluster[i % s.cfg.cluster.len()].clone();
        i += 1;
        let r = copy_once(&s, &addr, &mut first, &mut checked, &mut stop).await;
        s.copying.store(false, Ordering::Release);
        match r {
            Ok(()) => return,
            Err(SubscriberError::Refused(text)) => {
                warn!(stream = %s.stream, %addr, error = %text, "the node refused the copy's position; copying ended");
                if let Some(ck) = checked.take() {
                    let _ = ck.send(Err(SubscriberError::Refused(text)));
                }
                return;
            }
            Err(e) => {
                // unverified: the copy checks the position when it gets there
                if let Some(ck) = checked.take() {
                    let _ = ck.send(Ok(()));
                }
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    warn!(stream = %s.stream, %addr, error = %e, "cannot copy from the node; the local copy serves what it has");
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

async fn copy_once(
    s: &Arc<Shared>,
    addr: &str,
    first: &mut Option<(From, Option<tokio::sync::oneshot::Sender<u64>>)>,
    checked: &mut Option<Checked>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SubscriberError> {
    let conn = Connection::connect(&Address::parse(addr)?, ClientOptions::default()).await?;
    let (sender, mut receiver) = conn.split();
    let from = match first {
        Some((f, _)) => *f,
        None => From::Position(s.handle.latest_position().as_u64() as i64),
    };
    let ans = match sender.call(&ShipRequest::Pull { stream: s.stream.clone(), from }.to_k()).await {
        // the position `start` was given is refused: asking again will not help
        Err(qmesh_ipc::IpcError::Remote(text))
            if checked.is_some()
                && qmesh_process::ErrorKind::from_word(&text)
                    == Some(qmesh_process::ErrorKind::BadRequest) =>
        {
            return Err(SubscriberError::Refused(text));
        }
        r => r?,
    };
    let start = match ans.decode().map_err(|e| SubscriberError::Unexpected(e.to_string()))? {
        K::Atom(Atom::Long(j)) if j >= 0 => j as u64,
        other => return Err(SubscriberError::Unexpected(format!("{other:?}"))),
    };
    if let Some(ck) = checked.take() {
        let _ = ck.send(Ok(()));
    }
    if let Some((f, tx)) = first.take() {
        // a fresh copy starts at the node's segment
        let seg = Position::from_u64(start).segment();
        {
            let mut w = s.writer.lock().unwrap_or_else(|p| p.into_inner());
            if seg > w.active_segment() {
                w.continue_at(seg)?;
            }
        }
        let deliver_from = match (f, &tx) {
            (From::Latest, Some(_)) => latest_position(addr, &s.stream).await.unwrap_or(start),
            _ => start,
        };
        if let Some(tx) = tx {
            let _ = tx.send(deliver_from.max(start));
        }
    }
    s.copying.store(true, Ordering::Release);
    info!(stream = %s.stream, %addr, start, "copying the node's log");
    loop {
        let msg = tokio::select! {
            m = receiver.recv() => m,
            _ = stop.changed() => return Ok(()),
        };
        let msg = match msg {
            None => return Err(SubscriberError::Unexpected("the node closed the connection".into())),
            Some(Incoming::Sync(_, r)) => {
                let _ = r.error("bad request: a subscriber answers no requests");
                continue;
            }
            Some(Incoming::Async(m)) => m,
        };
        let (node_first, batch) = match ShipPush::parse(&msg) {
            Some(Ok(ShipPush::Raw { first, batch, .. })) => (first, batch),
            Some(Ok(ShipPush::Badtail { at, next, .. })) => {
                copy_badtail(s, Position::from_u64(at), Position::from_u64(next))?;
                s.wake(Wake::Data);
                continue;
            }
            _ => return Err(SubscriberError::Unexpected("not a copy batch".into())),
        };
        {
            let mut w = s.writer.lock().unwrap_or_else(|p| p.into_inner());
            for r in records(&batch) {
                let (pos, raw) = r.map_err(|e| SubscriberError::Unexpected(e.to_string()))?;
                let p = Position::from_u64(pos);
                if p.segment() > w.active_segment() {
                    w.continue_at(p.segment())?;
                }
                let end = w.end_position();
                if p < end {
                    continue; // held already
                }
                if p > end && p.segment() == end.segment() {
                    return Err(SubscriberError::Unexpected(format!("gap in the copy: {end} then {p}")));
                }
                w.append_raw(raw)?;
            }
            w.sync()?;
            if s.cfg.follows_archiver() && node_first > w.first_position().as_u64() {
                let r = w.prune(Position::from_u64(node_first))?;
                if !r.removed.is_empty() {
                    debug!(stream = %s.stream, removed = r.removed.len(), "copy follows the node's archiver");
                }
            }
        }
        s.wake(Wake::Data);
    }
}

/// The node's reader reported `badtail` at `at` (its record there is corrupt) and continues at `next`: the copy
/// marks the same event where it is, unless it holds it already (a re-pull from the segment's start).
///
/// A copy that holds records of that segment past `at` copied them before the damage (the node's reader never
/// yields records after a corrupt one): whatever followed them in the segment is lost on the node, so the copy
/// marks `badtail` where its own records end rather than jump to the next segment without a word.
fn copy_badtail(s: &Shared, at: Position, next: Position) -> Result<(), SubscriberError> {
    let mut w = s.writer.lock().unwrap_or_else(|p| p.into_inner());
    if at.segment() > w.active_segment() {
        w.continue_at(at.segment())?;
    }
    let end = w.end_position();
    if next.segment() == at.segment() {
        // the node resumes in the same segment, at the position this copy asked from
        if end >= next {
            return Ok(()); // the copy holds the segment up to there (copied before the damage)
        }
        if at != end {
            return Err(SubscriberError::Unexpected(format!("gap in the copy: {end} then badtail at {at}")));
        }
        w.fill_badtail(at, next)?;
        debug!(stream = %s.stream, %at, %next, "badtail copied; resuming in the segment");
        return Ok(());
    }
    let at = if at < end && end.segment() == at.segment() {
        warn!(stream = %s.stream, %at, %end, "the node's record is corrupt behind what the copy holds; badtail marked at the copy's end");
        end
    } else {
        at
    };
    if at < end {
        return Ok(()); // held already
    }
    if at > end {
        return Err(SubscriberError::Unexpected(format!("gap in the copy: {end} then badtail at {at}")));
    }
    let ours = w.mark_badtail(at)?;
    if ours != next {
        return Err(SubscriberError::Unexpected(format!(
            "badtail at {at}: the node continues at {next}, the copy at {ours}"
        )));
    }
    debug!(stream = %s.stream, %at, %next, "badtail copied");
    Ok(())
}
