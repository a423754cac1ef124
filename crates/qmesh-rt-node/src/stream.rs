//! One hosted stream: its log, its writer thread (group commit), its dedup
//! watermarks and publisher book, and the archiver's loop.
//!
//! Every append goes through one bounded queue to the stream's writer
//! thread, which owns the [`qmesh_log::Log`]. The thread takes everything
//! queued (up to [`MAX_GROUP`] appends), decides each against the dedup
//! watermarks in arrival order, appends the accepted ones, calls
//! [`Log::sync`] once (one `fdatasync` under [`Durability::Always`]) and
//! only then answers the sync publishers with their positions and wakes the
//! subscribers. Pruning, archiving and resets run on the same thread,
//! between groups, so they are ordered with the appends.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use qmesh_codec::K;
use qmesh_ipc::{ConnId, Peer, Responder};
use qmesh_log::{
    ArchivePolicy, ArchiveReport, Item, Log, LogHandle, LogOptions, Position, Reader, RecordHeader, Source,
    Start,
};
use qmesh_process::{ErrorKind, Shutdown, WireError};
use qmesh_rt::{Verdict, Watermarks};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

pub use qmesh_log::Durability;

use crate::metrics::NodeMetrics;
use crate::stats::Publishers;
use crate::watermarks;

/// Appends (and control commands) queued for a stream's writer thread; a
/// full queue holds the publishing connection's reads back (TCP back
/// pressure) rather than growing memory.
pub const APPEND_QUEUE: usize = 16 * 1024;

/// Most appends made durable by one `sync`, so that a steady flood still
/// gets answers at least this often.
pub const MAX_GROUP: usize = 8192;

/// How a stream's log is opened.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub durability: Durability,
    /// The process's health: a stream that can take no more appends (its
    /// position space used up) is a fault on `/healthz` until it is reset.
    pub health: qmesh_process::Health,
}

/// Errors of a stream's log.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Log(#[from] qmesh_log::Error),
    #[error("dedup watermarks: {0}")]
    Watermarks(#[from] watermarks::WatermarkFileError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Who is owed an answer for an append.
#[derive(Debug)]
pub enum Reply {
    /// A sync `.rt.pub`: answered with the position once durable.
    Sync(Responder),
    /// An async one: errors are logged and counted.
    Async(ConnId),
    /// A shipped record: its batch is acknowledged as a whole ([`Stream::ship`]).
    Shipped,
}

/// A batch of a publisher's local records (`.rt.ship.recs`).
#[derive(Debug)]
pub struct ShipBatch {
    /// The publisher's key (its local log directory's name).
    pub key: String,
    /// The records behind their local positions ([`qmesh_rt::ship::records`]).
    pub batch: Bytes,
    /// Who gets the acknowledgement.
    pub peer: Peer,
}

/// The prefix that keeps shipping marks apart from dedup keys in the watermarks file.
const SHIP_PREFIX: char = '\u{1}';

/// One message to append.
#[derive(Debug)]
pub struct Append {
    /// The payload, one little-endian kdb+ object as the publisher wrote it.
    pub payload: Bytes,
    pub on: String,
    /// ns since 2000.01.01; `None`: now.
    pub ts: Option<i64>,
    pub id: Option<i64>,
    pub dedup: Option<String>,
    pub reply: Reply,
}

enum Cmd {
    Append(Append),
    Ship(ShipBatch),
    Prune(u64, oneshot::Sender<Result<usize, WireError>>),
    Archive(ArchivePolicy, oneshot::Sender<Result<usize, WireError>>),
    Reset(oneshot::Sender<Result<(u64, u64), WireError>>),
    Close(oneshot::Sender<()>),
    Rebase(Rebase, oneshot::Sender<Result<(), WireError>>),
}

/// A publisher's `.rt.ship.rebase`: forget `key`'s mark, which must be `mark`, at or beyond `session`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebase {
    /// The publisher's key.
    pub key: String,
    /// The mark the node answered to its hello.
    pub mark: u64,
    /// The first position of the publisher's current session.
    pub session: u64,
}

/// What the HTTP API shows, kept by the writer thread.
#[derive(Debug, Default)]
struct Book {
    publishers: Publishers,
    marks: Watermarks,
    /// The last local position held per shipping publisher (committed).
    ship: Watermarks,
    duplicates: u64,
    /// Rebases per shipping publisher key since the node started.
    rebases: std::collections::BTreeMap<String, u64>,
}

/// A hosted stream.
#[derive(Debug)]
pub struct Stream {
    name: String,
    tx: mpsc::Sender<Cmd>,
    handle: LogHandle,
    tip: watch::Receiver<u64>,
    book: Arc<Mutex<Book>>,
    dir: PathBuf,
}

/// Now as a kdb+ timestamp (ns since 2000.01.01).
pub fn now_ts() -> i64 {
    const KDB_EPOCH_NS: i128 = 946_684_800 * 1_000_000_000;
    let ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    (ns - KDB_EPOCH_NS) as i64
}

fn internal(e: impl std::fmt::Display) -> WireError {
    WireError::with_detail(ErrorKind::Internal, e.to_string())
}

/// A client's position the log refuses is the client's error (`bad request: position … is not the start of a
/// record …`); anything else is ours.
fn position_error(e: qmesh_log::Error) -> WireError {
    match e {
        qmesh_log::Error::PositionAhead { .. } | qmesh_log::Error::NotARecordStart { .. } => {
            WireError::with_detail(ErrorKind::BadRequest, e.to_string())
        }
        other => internal(other),
    }
}

impl Stream {
    /// Opens (recovering) the stream's log, rebuilds its dedup watermarks
    /// and starts its writer thread. Blocking: call from a blocking task.
    pub fn open(name: String, opts: StreamOptions, metrics: NodeMetrics) -> Result<Stream, StreamError> {
        std::fs::create_dir_all(&opts.dir)?;
        let log_opts = LogOptions { segment_size: opts.segment_bytes, durability: opts.durability };
        let (log, report) = Log::open(&opts.dir, log_opts)?;
        if report.cut.is_some() || report.sealed.is_some() || report.header_rewritten {
            warn!(stream = %name, ?report, "log recovered after a crash");
        } else {
            debug!(stream = %name, ?report, "log opened");
        }
        let handle = log.handle();
        let (marks, ship) = recover_watermarks(&opts.dir, &handle)?;
        info!(stream = %name, first = %handle.first_position(), latest = %handle.latest_position(), dedup_keys = marks.len(), "stream open");
        let (tx, rx) = mpsc::channel(APPEND_QUEUE);
        let (tip_tx, tip) = watch::channel(handle.latest_position().as_u64());
        let book = Arc::new(Mutex::new(Book { marks: marks.clone(), ship: ship.clone(), ..Book::default() }));
        let w = Writer {
            name: name.clone(),
            log,
            marks,
            ship,
            acks: Vec::new(),
            book: book.clone(),
            tip: tip_tx,
            metrics,
            dir: opts.dir.clone(),
            stored: None,
            pending: Vec::new(),
            health: opts.health.clone(),
        };
        std::thread::Builder::new().name(format!("rt-{name}")).spawn(move || w.run(rx))?;
        Ok(Stream { name, tx, handle, tip, book, dir: opts.dir })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues an append; waits while the queue is full.
    pub async fn append(&self, a: Append) {
        if let Err(mpsc::error::SendError(Cmd::Append(a))) = self.tx.send(Cmd::Append(a)).await {
            refuse(a.reply, &WireError::new(ErrorKind::ShuttingDown), &self.name);
        }
    }

    /// Queues a shipped batch; it is acknowledged on the publisher's connection once durable.
    pub async fn ship(&self, b: ShipBatch) {
        if self.tx.send(Cmd::Ship(b)).await.is_err() {
            debug!(stream = %self.name, "shipped batch dropped: the stream is closing");
        }
    }

    /// The last local position of publisher `key` that the merged log holds (`.rt.ship.hello`'s answer).
    pub fn ship_mark(&self, key: &str) -> Option<u64> {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).ship.get(key)
    }

    /// The oldest unarchived position (`::`).
    pub fn first(&self) -> u64 {
        self.handle.first_position().as_u64()
    }

    /// The position after the last durable message (`` `latest ``).
    pub fn latest(&self) -> u64 {
        self.handle.latest_position().as_u64()
    }

    /// A reader from `start`; a position ahead of the latest, or where no record starts, is refused
    /// (`bad request`, the log's reason as detail).
    pub fn reader(&self, start: Start) -> Result<Reader, WireError> {
        self.handle.reader(start).map_err(position_error)
    }

    /// Whether `pos` is a valid restart point of the log ([`qmesh_log::LogHandle::check_position`]): a position
    /// ahead of the latest or where no record starts is a `bad request` saying so.
    pub fn check_position(&self, pos: u64) -> Result<(), WireError> {
        self.handle.check_position(Position::from_u64(pos)).map_err(position_error)
    }

    /// Changes whenever more records become readable.
    pub fn tip(&self) -> watch::Receiver<u64> {
        self.tip.clone()
    }

    async fn call<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<Result<T, WireError>>) -> Cmd,
    ) -> Result<T, WireError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| WireError::new(ErrorKind::ShuttingDown))?;
        rx.await.map_err(|_| WireError::new(ErrorKind::ShuttingDown))?
    }

    /// `.rt.prune`: removes the rolled segments whose messages are all
    /// before `pos`; returns how many.
    pub async fn prune(&self, pos: u64) -> Result<usize, WireError> {
        self.call(|tx| Cmd::Prune(pos, tx)).await
    }

    /// Runs the archiver's policy once; returns how many segments it removed.
    pub async fn archive(&self, policy: ArchivePolicy) -> Result<usize, WireError> {
        self.call(|tx| Cmd::Archive(policy, tx)).await
    }

    /// A hard reset: a new session, watermarks forgotten. Returns the
    /// `reset` event's two positions.
    pub async fn reset(&self) -> Result<(u64, u64), WireError> {
        self.call(Cmd::Reset).await
    }

    /// `.rt.ship.rebase`: forgets a publisher's mark, durably, after the appends queued before it (see
    /// [`qmesh_rt::ship`]'s rebase); refused (`BadRequest`) unless the key's mark is `r.mark` and at or beyond
    /// `r.session`.
    pub async fn rebase(&self, r: Rebase) -> Result<(), WireError> {
        self.call(|tx| Cmd::Rebase(r, tx)).await
    }

    /// Finishes the queued appends, stores the watermarks, stops the writer and closes the log.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The stream as `/api/streams` shows it (without subscribers).
    pub fn view(&self) -> Value {
        let segs = self.handle.segments();
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let publishers: serde_json::Map<String, Value> = book
            .publishers
            .iter()
            .map(|(on, p)| {
                (on.to_string(), json!({"messages": p.messages, "duplicates": p.duplicates, "last_id": p.last_id, "rate": p.rate_at(now)}))
            })
            .collect();
        let marks: serde_json::Map<String, Value> =
            book.marks.iter().map(|(k, w)| (k.to_string(), json!(w))).collect();
        // shipping publishers by key: the last local position held, and rebases since the node started
        let mut shipping: serde_json::Map<String, Value> = book
            .ship
            .iter()
            .map(|(k, m)| {
                (k.to_string(), json!({"mark": m, "rebases": book.rebases.get(k).copied().unwrap_or(0)}))
            })
            .collect();
        for (k, n) in &book.rebases {
            shipping.entry(k.clone()).or_insert_with(|| json!({"mark": null, "rebases": n}));
        }
        json!({
            "first": self.first(),
            "latest": self.latest(),
            "segments": segs.len(),
            "bytes": self.handle.total_bytes(),
            "dir": self.dir.display().to_string(),
            "publishers": publishers,
            "duplicates": book.duplicates,
            "dedup_watermarks": marks,
            "shipping": shipping,
        })
    }
}

/// Loads the watermarks file and raises it from the records after its
/// position (all records when there is no file); a `reset` forgets them.
fn recover_watermarks(
    dir: &std::path::Path,
    handle: &LogHandle,
) -> Result<(Watermarks, Watermarks), StreamError> {
    let (stored, from) = match watermarks::load(dir)? {
        Some((m, p)) => (m, Some(p)),
        None => (Watermarks::new(), None),
    };
    let (mut marks, mut ship) = split_marks(&stored);
    let first = handle.first_position().as_u64();
    let latest = handle.latest_position().as_u64();
    let start = match from {
        Some(p) if p >= first && p <= latest => Start::At(Position::from_u64(p)),
        // the file holds every record up to its position, and the log lost its tail before it (a weaker
        // durability): nothing to raise, and reading older records would undo a rebase
        Some(p) if p > latest => return Ok((marks, ship)),
        _ => Start::Oldest,
    };
    let mut r = handle.reader(start)?;
    while let Some(item) = r.next()? {
        match item {
            Item::Entry(e) => {
                let h = e.header();
                if let Some(key) = h.dedup {
                    marks.observe(&String::from_utf8_lossy(key), h.id);
                }
                if let Some(src) = e.source() {
                    observe_ship(&mut ship, &String::from_utf8_lossy(src.key), src.pos);
                }
            }
            Item::Event(ev) if ev.name() == "reset" => marks.clear(),
            Item::Event(_) => {}
        }
    }
    Ok((marks, ship))
}

/// Raises publisher `key`'s mark to local position `pos`, kept as a non-negative id: a local session below 2^19
/// (one new session per publisher start), which no publisher reaches in practice.
fn observe_ship(ship: &mut Watermarks, key: &str, pos: u64) {
    ship.observe(key, i64::try_from(pos).unwrap_or(i64::MAX));
}

/// The dedup watermarks and the shipping marks as one set for the watermarks file.
fn join_marks(marks: &Watermarks, ship: &Watermarks) -> Watermarks {
    let mut all = marks.clone();
    for (k, w) in ship.iter() {
        all.observe(&format!("{SHIP_PREFIX}{k}"), i64::try_from(w).unwrap_or(i64::MAX));
    }
    all
}

fn split_marks(all: &Watermarks) -> (Watermarks, Watermarks) {
    let (mut marks, mut ship) = (Watermarks::new(), Watermarks::new());
    for (k, w) in all.iter() {
        let w = i64::try_from(w).unwrap_or(i64::MAX);
        match k.strip_prefix(SHIP_PREFIX) {
            Some(k) => ship.observe(k, w),
            None => marks.observe(k, w),
        }
    }
    (marks, ship)
}

fn refuse(reply: Reply, e: &WireError, stream: &str) {
    match reply {
        Reply::Sync(r) => {
            let _ = r.error(e.to_q_text());
        }
        Reply::Async(conn) => warn!(%conn, stream, error = %e, "async publish refused"),
        Reply::Shipped => warn!(stream, error = %e, "shipped record refused"),
    }
}

struct Writer {
    name: String,
    log: Log,
    /// Watermarks including appends not yet synced.
    marks: Watermarks,
    /// Shipping marks including appends not yet synced.
    ship: Watermarks,
    /// Shipped batches of this group, acknowledged after its sync.
    acks: Vec<(Peer, String)>,
    book: Arc<Mutex<Book>>,
    tip: watch::Sender<u64>,
    metrics: NodeMetrics,
    dir: PathBuf,
    /// The watermarks as last written to the file (`None`: not this run).
    stored: Option<Watermarks>,
    /// Appended, awaiting the group's sync: who to answer and the position.
    pending: Vec<(Reply, Position, String, Option<i64>)>,
    /// Where a full position space is reported (a fault until reset).
    health: qmesh_process::Health,
}

impl Writer {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let labels = NodeMetrics::stream(&self.name);
        let mut cmds = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            cmds.push(first);
            while cmds.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            for cmd in cmds.drain(..) {
                match cmd {
                    Cmd::Append(a) => self.append(a, &labels),
                    Cmd::Ship(b) => self.ship(b, &labels),
                    Cmd::Prune(pos, tx) => {
                        self.commit(&labels);
                        let _ = tx.send(self.prune(pos));
                    }
                    Cmd::Archive(policy, tx) => {
                        self.commit(&labels);
                        let _ = tx.send(self.archive(policy));
                    }
                    Cmd::Reset(tx) => {
                        self.commit(&labels);
                        let _ = tx.send(self.reset());
                    }
                    Cmd::Rebase(r, tx) => {
                        self.commit(&labels);
                        let _ = tx.send(self.rebase(r, &labels));
                    }
                    Cmd::Close(tx) => {
                        self.commit(&labels);
                        let latest = self.log.latest_position().as_u64();
                        let all = join_marks(&self.marks, &self.ship);
                        if let Err(e) = watermarks::store(&self.dir, &all, latest) {
                            warn!(stream = %self.name, error = %e, "cannot store the dedup watermarks");
                        }
                        if let Err(e) = self.log.sync() {
                            warn!(stream = %self.name, error = %e, "final sync failed");
                        }
                        // the log goes before the caller hears it is closed (the directory's lock with the last
                        // reader's handle)
                        drop(self);
                        let _ = tx.send(());
                        return;
                    }
                }
            }
            self.commit(&labels);
        }
    }

    fn append(&mut self, a: Append, labels: &Vec<(String, String)>) {
        let now = Instant::now();
        if let (Some(key), Some(id)) = (&a.dedup, a.id) {
            match self.marks.admit(key, id) {
                Verdict::Duplicate { watermark } => {
                    self.metrics.duplicates.get_or_create(labels).inc();
                    {
                        let mut b = self.book();
                        b.duplicates += 1;
                        b.publishers.duplicate(&a.on, id, now);
                    }
                    let e = WireError::with_detail(
                        ErrorKind::Duplicate,
                        format!("{key} id {id} at or below the watermark {watermark}"),
                    );
                    match a.reply {
                        Reply::Sync(r) => {
                            let _ = r.error(e.to_q_text());
                        }
                        Reply::Async(conn) => {
                            debug!(%conn, stream = %self.name, error = %e, "duplicate dropped")
                        }
                        Reply::Shipped => {}
                    }
                    return;
                }
                Verdict::Accept { gap } if gap > 0 => {
                    self.metrics.dedup_gaps.get_or_create(labels).inc_by(gap);
                }
                Verdict::Accept { .. } => {}
            }
        }
        let header = RecordHeader {
            on: a.on.as_bytes(),
            ts: a.ts.unwrap_or_else(now_ts),
            id: a.id.unwrap_or(i64::MIN),
            to: i64::MIN,
            dedup: a.dedup.as_deref().map(str::as_bytes),
        };
        match self.log.append(&header, &a.payload) {
            Ok(pos) => {
                self.metrics.appended_bytes.get_or_create(labels).inc_by(a.payload.len() as u64);
                self.pending.push((a.reply, pos, a.on, a.id));
            }
            Err(e) => {
                let err = match &e {
                    qmesh_log::Error::PayloadTooLarge { .. } => {
                        WireError::with_detail(ErrorKind::MessageTooLarge, e.to_string())
                    }
                    qmesh_log::Error::SymbolTooLong { .. } => {
                        WireError::with_detail(ErrorKind::BadRequest, e.to_string())
                    }
                    qmesh_log::Error::PositionSpaceExhausted(_) => self.exhausted(&e),
                    _ => internal(format!("log: {e}")),
                };
                self.metrics.error(err.kind.word());
                refuse(a.reply, &err, &self.name);
            }
        }
    }

    /// Syncs the group and answers it.
    fn commit(&mut self, labels: &Vec<(String, String)>) {
        if self.pending.is_empty() {
            let _gather = qmesh_ipc::batch::Gather::new();
            self.send_acks();
            return;
        }
        let started = Instant::now();
        let synced = self.log.sync();
        // the group's answers and acknowledgements leave in one write per connection, not one syscall each
        let _gather = qmesh_ipc::batch::Gather::new();
        self.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.fsyncs.get_or_create(labels).inc();
        self.metrics.group_commit_messages.observe(self.pending.len() as f64);
        match synced {
            Ok(latest) => {
                let now = Instant::now();
                {
                    let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
                    for (_, _, on, id) in &self.pending {
                        b.publishers.appended(on, *id, now);
                    }
                    if b.marks != self.marks {
                        b.marks = self.marks.clone();
                    }
                    if b.ship != self.ship {
                        b.ship = self.ship.clone();
                    }
                }
                self.metrics.appended.get_or_create(labels).inc_by(self.pending.len() as u64);
                self.metrics.latest_position.get_or_create(labels).set(latest.as_u64() as i64);
                for (reply, pos, _, _) in self.pending.drain(..) {
                    if let Reply::Sync(r) = reply {
                        let _ = r.reply(K::long(pos.as_u64() as i64));
                    }
                }
                self.tip.send_replace(latest.as_u64());
                self.send_acks();
            }
            Err(e) => {
                // every append since the last sync is void: so are their watermarks
                let (committed, ship) = {
                    let b = self.book();
                    (b.marks.clone(), b.ship.clone())
                };
                self.marks = committed;
                self.ship = ship;
                // no acknowledgement: the publishers resend from their last one
                self.acks.clear();
                let err = internal(format!("log: {e}"));
                warn!(stream = %self.name, error = %e, lost = self.pending.len(), "sync failed; the group is refused");
                for (reply, ..) in self.pending.drain(..) {
                    self.metrics.error(err.kind.word());
                    refuse(reply, &err, &self.name);
                }
            }
        }
    }

    /// Appends a publisher's shipped records: each record's header and payload as the publisher stored them, with
    /// a source block (key, local position); records at or below the key's mark are already held and skipped.
    fn ship(&mut self, b: ShipBatch, labels: &Vec<(String, String)>) {
        let now = Instant::now();
        for r in qmesh_rt::ship::records(&b.batch) {
            let (lpos, raw) = match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(stream = %self.name, key = %b.key, error = %e, "malformed shipped batch; the rest is dropped");
                    self.metrics.error(ErrorKind::BadRequest.word());
                    break;
                }
            };
            if self.ship.get(&b.key).is_some_and(|m| lpos <= m) {
                continue; // held already: a resend after a reconnect
            }
            let v = match qmesh_log::format::decode_record(raw) {
                Ok(v) if v.raw.len() == raw.len() => v,
                Ok(_) | Err(_) => {
                    warn!(stream = %self.name, key = %b.key, lpos, "corrupt shipped record; the rest of the batch is dropped");
                    self.metrics.error(ErrorKind::BadRequest.word());
                    break;
                }
            };
            let h = v.header;
            if let Some(dk) = h.dedup {
                let dk = String::from_utf8_lossy(dk);
                if let Verdict::Duplicate { .. } = self.marks.admit(&dk, h.id) {
                    self.metrics.duplicates.get_or_create(labels).inc();
                    let on = String::from_utf8_lossy(h.on).into_owned();
                    let mut bk = self.book();
                    bk.duplicates += 1;
                    bk.publishers.duplicate(&on, h.id, now);
                    drop(bk);
                    observe_ship(&mut self.ship, &b.key, lpos);
                    continue;
                }
            }
            let src = Source { key: b.key.as_bytes(), pos: lpos };
            match self.log.append_with_source(&h, Some(src), v.payload) {
                Ok(pos) => {
                    observe_ship(&mut self.ship, &b.key, lpos);
                    self.metrics.appended_bytes.get_or_create(labels).inc_by(v.payload.len() as u64);
                    let id = (h.id != i64::MIN).then_some(h.id);
                    self.pending.push((Reply::Shipped, pos, String::from_utf8_lossy(h.on).into_owned(), id));
                }
                Err(e) => {
                    let err = match &e {
                        qmesh_log::Error::PositionSpaceExhausted(_) => self.exhausted(&e),
                        _ => internal(format!("log: {e}")),
                    };
                    warn!(stream = %self.name, key = %b.key, error = %err, "shipped record refused; the rest of the batch is dropped");
                    self.metrics.error(err.kind.word());
                    break;
                }
            }
        }
        self.acks.push((b.peer, b.key));
    }

    /// Tells each publisher of the group the last local position now held.
    fn send_acks(&mut self) {
        for (peer, key) in self.acks.drain(..) {
            if let Some(m) = self.ship.get(&key) {
                let _ = peer.send_async(&qmesh_rt::ship::ack_k(&self.name, &key, m));
            }
        }
    }

    /// Stores the watermarks if they changed since the file was written:
    /// before segments go, so that removing records never lowers a
    /// watermark recovered on the next open.
    fn store_marks(&mut self) -> Result<(), WireError> {
        let all = join_marks(&self.marks, &self.ship);
        if self.stored.as_ref() != Some(&all) {
            let latest = self.log.latest_position().as_u64();
            watermarks::store(&self.dir, &all, latest).map_err(internal)?;
            self.stored = Some(all);
        }
        Ok(())
    }

    fn archived(&self, r: &ArchiveReport, reason: &str) -> usize {
        if !r.removed.is_empty() {
            self.metrics.archived(&self.name, reason, r.removed.len() as u64);
            info!(stream = %self.name, removed = r.removed.len(), bytes = r.bytes, reason, first = %r.first, "segments archived");
        }
        r.removed.len()
    }

    fn prune(&mut self, pos: u64) -> Result<usize, WireError> {
        self.store_marks()?;
        let r = self.log.prune(Position::from_u64(pos)).map_err(|e| internal(format!("log: {e}")))?;
        Ok(self.archived(&r, "prune"))
    }

    fn archive(&mut self, policy: ArchivePolicy) -> Result<usize, WireError> {
        self.store_marks()?;
        let r = self.log.archive(&policy, now_ts()).map_err(|e| internal(format!("log: {e}")))?;
        Ok(self.archived(&r, "policy"))
    }

    /// The log's position space is used up (every roll of the session, 16,384 segments): nothing more can be
    /// appended until a reset starts a new session. Reported once as an error in the log and as a `/healthz` fault
    /// until then; each refused append gets the catalog's `limit` with what to do.
    fn exhausted(&mut self, e: &qmesh_log::Error) -> WireError {
        let key = format!("stream {}", self.name);
        let reason = format!(
            "{e}: appends are refused until a reset starts a new session (`qmesh rt reset HOST:HTTP_PORT {0}`, or POST /api/streams/{0}/reset)",
            self.name
        );
        if self.health.set_fault(key, reason.clone()) {
            tracing::error!(stream = %self.name, error = %e, "position space exhausted: appends refused until the stream is reset");
        }
        WireError::with_detail(ErrorKind::Limit, reason)
    }

    /// Forgets a publisher's shipping mark (its local log was wiped: [`qmesh_rt::ship`]'s rebase) and stores the
    /// watermarks file at once, as of the latest position, so that recovery raises the key's mark only from the
    /// records shipped after this. Called between groups, so every batch queued before it is in the mark.
    fn rebase(&mut self, r: Rebase, labels: &Vec<(String, String)>) -> Result<(), WireError> {
        let refuse = |why: String| -> Result<(), WireError> {
            warn!(stream = %self.name, key = %r.key, %why, "rebase refused");
            Err(WireError::with_detail(ErrorKind::BadRequest, format!("rebase of {} refused: {why}", r.key)))
        };
        let held = self.ship.get(&r.key);
        if held != Some(r.mark) {
            // something was shipped for the key since the publisher's hello (or another publisher ships it)
            return refuse(format!("the node holds {held:?}, not {}; say hello again", r.mark));
        }
        if r.mark < r.session {
            return refuse(format!(
                "the mark {} is below the publisher's session start {}: nothing to forget",
                r.mark, r.session
            ));
        }
        self.ship.remove(&r.key);
        // stored even when the marks equal the file's (a second rebase of the key in one run): what counts is the
        // file's position, past the records that raised the key since
        self.stored = None;
        if let Err(e) = self.store_marks() {
            // not durable: keep the mark, the publisher asks again
            observe_ship(&mut self.ship, &r.key, r.mark);
            warn!(stream = %self.name, key = %r.key, error = %e, "rebase failed: cannot store the watermarks");
            return Err(e);
        }
        {
            let mut b = self.book();
            b.ship.remove(&r.key);
            *b.rebases.entry(r.key.clone()).or_default() += 1;
        }
        self.metrics.rebases.get_or_create(labels).inc();
        warn!(
            stream = %self.name, key = %r.key, mark = %Position::from_u64(r.mark),
            session_start = %Position::from_u64(r.session),
            "publisher's local log was wiped or replaced: its mark is forgotten and it ships its whole log again"
        );
        Ok(())
    }

    fn reset(&mut self) -> Result<(u64, u64), WireError> {
        let from = self.log.latest_position().as_u64();
        let to = self.log.new_session().map_err(|e| internal(format!("log: {e}")))?.as_u64();
        self.health.clear_fault(&format!("stream {}", self.name));
        self.marks.clear();
        self.book().marks.clear();
        let all = join_marks(&self.marks, &self.ship);
        watermarks::store(&self.dir, &all, to).map_err(internal)?;
        self.stored = Some(all);
        self.tip.send_replace(self.log.latest_position().as_u64());
        info!(stream = %self.name, from, to, "stream reset: new session");
        Ok((from, to))
    }
}

/// Runs the archiver's policy on `stream` every `interval` until shutdown.
pub async fn archive_loop(
    stream: Arc<Stream>,
    policy: ArchivePolicy,
    interval: Duration,
    shutdown: Shutdown,
) {
    if policy == ArchivePolicy::default() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.triggered() => return,
        }
        match stream.archive(policy).await {
            Ok(n) if n > 0 => debug!(stream = stream.name(), n, "archiver ran"),
            Ok(_) => {}
            Err(e) => warn!(stream = stream.name(), error = %e, "archiver failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "pub_a.host1.s";

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("qmesh-stream-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn opts(dir: &std::path::Path) -> StreamOptions {
        StreamOptions {
            dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
            durability: Durability::Always,
            health: qmesh_process::Health::default(),
        }
    }

    /// Appends `n` records shipped by [`KEY`] at local positions `from`, `from + 100`, …; returns the last.
    fn ship_records(log: &mut Log, from: u64, n: u64) -> u64 {
        let h = RecordHeader { on: b"pub_a", ts: 1, id: i64::MIN, to: i64::MIN, dedup: None };
        let mut last = 0;
        for i in 0..n {
            last = from + i * 100;
            log.append_with_source(&h, Some(Source { key: KEY.as_bytes(), pos: last }), b"\x01\x02")
                .expect("append");
        }
        log.sync().expect("sync");
        last
    }

    fn log_opts() -> LogOptions {
        LogOptions { segment_size: 1 << 20, durability: Durability::Always }
    }

    #[tokio::test]
    async fn a_rebase_forgets_the_mark_durably_and_is_refused_when_ambiguous() {
        let dir = tmpdir("rebase");
        let session = |n: u64| n << 44;
        // a publisher's first life: it shipped up to a high position of its session 1
        let old = {
            let (mut log, _) = Log::open(&dir, log_opts()).expect("open");
            ship_records(&mut log, session(1), 50)
        };
        let metrics = NodeMetrics::new(&qmesh_process::Metrics::new());
        let s = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || Stream::open("s".into(), opts(&dir), metrics)
        })
        .await
        .expect("join")
        .expect("open stream");
        assert_eq!(s.ship_mark(KEY), Some(old));
        let rebase = |mark, session| Rebase { key: KEY.into(), mark, session };
        // ambiguous: not the mark the node holds, or below the publisher's session (a normal restart)
        assert!(s.rebase(rebase(old - 100, session(1))).await.is_err());
        assert!(s.rebase(rebase(old, session(2))).await.is_err());
        assert!(s.rebase(Rebase { key: "other".into(), mark: old, session: session(1) }).await.is_err());
        assert_eq!(s.ship_mark(KEY), Some(old));
        // the wiped publisher starts again at session 1, below its old mark
        s.rebase(rebase(old, session(1))).await.expect("rebase");
        assert_eq!(s.ship_mark(KEY), None);
        assert_eq!(s.view()["shipping"][KEY], json!({"mark": null, "rebases": 1}));
        // stored at once: recovery (a restart, even after SIGKILL) reads only the records after the rebase
        let (_, stored_at) = watermarks::load(&dir).expect("load").expect("stored");
        assert_eq!(stored_at, s.latest());
        let (_, ship) = recover_watermarks(&dir, &s.handle).expect("recover");
        assert_eq!(ship.get(KEY), None, "the old records raised the mark back");
        s.close().await;
        drop(s);
        // the new life ships fewer records, all below the old mark; a restart recovers their mark, not the old one
        let new = {
            let (mut log, _) = Log::open(&dir, log_opts()).expect("reopen");
            let (_, ship) = recover_watermarks(&dir, &log.handle()).expect("recover");
            assert_eq!(ship.get(KEY), None);
            ship_records(&mut log, session(1), 10)
        };
        assert!(new < old);
        let (log, _) = Log::open(&dir, log_opts()).expect("reopen");
        let (_, ship) = recover_watermarks(&dir, &log.handle()).expect("recover");
        assert_eq!(ship.get(KEY), Some(new));
        drop(log);
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[test]
    fn a_watermarks_file_beyond_the_log_is_trusted_without_reading_older_records() {
        let dir = tmpdir("beyond");
        let (mut log, _) = Log::open(&dir, log_opts()).expect("open");
        ship_records(&mut log, 1 << 44, 5);
        // a file stored after the rebase at a position the log lost (its unsynced tail, a weaker durability)
        let beyond = log.latest_position().as_u64() + 1000;
        watermarks::store(&dir, &Watermarks::new(), beyond).expect("store");
        let (_, ship) = recover_watermarks(&dir, &log.handle()).expect("recover");
        assert_eq!(ship.get(KEY), None);
        // without a file every record counts
        std::fs::remove_file(dir.join(watermarks::FILE_NAME)).expect("rm");
        let (_, ship) = recover_watermarks(&dir, &log.handle()).expect("recover");
        assert_eq!(ship.get(KEY), Some((1 << 44) + 400));
        drop(log);
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
