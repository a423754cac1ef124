//! One open connection, either side: the outbound queue and the write
//! turn, the FIFO of sync requests awaiting our answer, the FIFO of our
//! calls awaiting the peer's answer, the writer task and the read loop.
//!
//! Locking: one `std::sync::Mutex` per connection guards all queues; it is
//! held only to push or pop, never across an `.await` or a syscall.
//!
//! Writing: one task at a time holds the connection's *write turn*
//! (`State::writing`) and only it writes to the socket, so frames never
//! interleave. A task that queues a message while nobody holds the turn
//! takes it and writes everything queued at once with one non-blocking
//! `writev`: a small message leaves from the task that produced it, with no
//! wake-up of another task. What the socket does not take (it is full)
//! stays at the front of the queue and the connection's writer task, which
//! can wait for the socket, finishes it. A task that finds the turn taken
//! only queues; the holder writes it before giving the turn back.
//!
//! Batching: while a read loop handles a batch of messages, the writes its
//! handlers cause are gathered and leave together ([`crate::batch`]).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use qmesh_codec::limits::COMPRESS_MIN_BYTES;
use qmesh_codec::{
    EncodeOptions, HEADER_LEN, Header, K, Message, MsgType, RawObject, check_encodable, types,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Notify, oneshot};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::batch;
use crate::error::IpcError;
use crate::framing::{FrameError, IpcCodec};
use crate::stream::WriteSock;

/// Most buffers handed to one `writev`, in slices. Linux allows 1024; 64
/// frames per syscall already amortises the call for small messages.
pub const MAX_IOVECS: usize = 64;

/// Smallest free space kept in the read buffer before a read, in bytes.
pub const MIN_READ_SPACE: usize = 8 * 1024;

/// The text of the error a client receives when its sync request's
/// [`Responder`] was dropped without an answer.
pub const DROPPED_RESPONSE_TEXT: &str = "service error: no response";

/// The text of the error a client receives for a sync request above the
/// server's message size limit (the catalog's `message too large`).
pub const TOO_LARGE_TEXT: &str = "message too large";

/// Largest number of input bytes discarded after refusing an oversized
/// message, in bytes: reading them (into a small scratch buffer, never
/// stored) lets the error response reach the client before the socket
/// closes, instead of a reset that could destroy it.
pub const MAX_DISCARD_BYTES: u64 = 64 * 1024 * 1024;

/// Size of the scratch buffer input is discarded into, in bytes.
const DISCARD_CHUNK: usize = 64 * 1024;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A connection's identity, the analogue of q's handle `.z.w`. Unlike q's
/// file-descriptor numbers, an id is never reused within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// A fresh id.
    pub(crate) fn next() -> ConnId {
        ConnId(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where the other end of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix domain socket peer (q's `.z.a` is 0 for these).
    Unix,
}

impl RemoteAddr {
    /// Whether q would treat the peer as local (never compress): a Unix
    /// socket or a loopback address.
    pub fn is_local(&self) -> bool {
        match self {
            RemoteAddr::Unix => true,
            RemoteAddr::Tcp(a) => a.ip().is_loopback() || a.ip().to_canonical().is_loopback(),
        }
    }
}

impl std::fmt::Display for RemoteAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteAddr::Tcp(a) => write!(f, "{a}"),
            RemoteAddr::Unix => f.write_str("unix"),
        }
    }
}

/// What is known about a connection once its handshake is done.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The connection's id (`.z.w`).
    pub id: ConnId,
    /// The peer's address (`.z.a`).
    pub remote: RemoteAddr,
    /// The user name from the handshake (`.z.u`); on the client side, the
    /// user we sent.
    pub user: String,
    /// The negotiated capability.
    pub capability: u8,
}

/// Per-connection bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkLimits {
    pub max_queue_bytes: usize,
    pub max_queue_frames: usize,
    pub max_pending: usize,
    pub max_message_bytes: u64,
    pub validate: bool,
}

/// One item for the writer.
pub(crate) enum Out {
    /// A whole wire message.
    Frame(Bytes),
    /// A header and a body written behind it without copying the body.
    Parts([u8; HEADER_LEN], Bytes),
    /// A marker: signal when everything before it is written.
    Flush(oneshot::Sender<()>),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Frame(b) => b.len(),
            Out::Parts(_, b) => HEADER_LEN + b.len(),
            Out::Flush(_) => 0,
        }
    }
}

type CallSlot = oneshot::Sender<Result<Message, IpcError>>;

#[derive(Default)]
struct State {
    /// Frames not yet written, in order.
    queue: VecDeque<Out>,
    /// The buffer a direct write moves the queue into, kept (empty)
    /// between writes so that writing allocates nothing.
    spare: Vec<Out>,
    /// Bytes of `queue.front()` already written (the socket took part of
    /// it).
    head_written: usize,
    /// Bytes queued or being written.
    queued_bytes: usize,
    /// A task holds the write turn: it alone writes to the socket, and
    /// writes what is queued before giving the turn back.
    writing: bool,
    /// The link is in a read loop's batch or corked ([`crate::batch`]):
    /// whoever holds that list writes it.
    deferred: bool,
    /// The socket's write side; `None` once the connection is closed, so
    /// the socket closes when the tasks drop their halves even while
    /// handles on the connection remain.
    sock: Option<Arc<dyn WriteSock>>,
    /// Answers to the peer's sync requests, in request order; `None` until
    /// the [`Responder`] answers. Only a filled front slot moves to `queue`.
    replies: VecDeque<Option<Out>>,
    /// Sequence number of `replies[0]`.
    replies_base: u64,
    /// Our sync calls awaiting the peer's response, in send order.
    calls: VecDeque<CallSlot>,
    /// Nothing more is accepted or written.
    closed: bool,
    /// No more input is read; the writer exits once `queue` and `replies`
    /// are empty.
    draining: bool,
}

/// The shared core of one connection.
pub(crate) struct Link {
    pub(crate) info: ConnInfo,
    /// Whether outgoing messages may be compressed (peer not local, or
    /// forced).
    compress: bool,
    pub(crate) limits: LinkLimits,
    state: Mutex<State>,
    /// Wakes the writer task.
    wake: Notify,
    /// Cancelled when the connection starts closing: the reader stops.
    pub(crate) closing: CancellationToken,
    /// Cancelled when the connection must stop writing at once.
    abort: CancellationToken,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("info", &self.info)
            .field("compress", &self.compress)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) fn new(
        info: ConnInfo,
        compress: bool,
        limits: LinkLimits,
        closing: CancellationToken,
        sock: Arc<dyn WriteSock>,
    ) -> Link {
        Link {
            info,
            compress,
            limits,
            state: Mutex::new(State { sock: Some(sock), ..State::default() }),
            wake: Notify::new(),
            closing,
            abort: CancellationToken::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one ever did, the queues
        // are still structurally valid, so carry on.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn encode_options(&self) -> EncodeOptions {
        EncodeOptions { capability: self.info.capability, compress: self.compress }
    }

    /// Appends to the queue under the lock, checking the bounds (`Err` is
    /// the bound reached). A frame always fits an empty queue, so one
    /// message larger than the byte bound can still be sent to a peer that
    /// keeps up.
    fn push_locked(&self, st: &mut State, out: Out) -> Result<(), usize> {
        let len = out.len();
        if st.queued_bytes > 0 && st.queued_bytes + len > self.limits.max_queue_bytes {
            return Err(self.limits.max_queue_bytes);
        }
        if st.queue.len() >= self.limits.max_queue_frames {
            return Err(self.limits.max_queue_frames);
        }
        st.queued_bytes += len;
        st.queue.push_back(out);
        Ok(())
    }

    /// The outbound queue bound was reached: the peer does not read fast
    /// enough. Drops the connection.
    fn slow_peer(&self, limit: usize) -> IpcError {
        warn!(conn = %self.info.id, remote = %self.info.remote, limit,
            "dropping connection: slow reader, outbound queue bound reached");
        self.abort_now();
        IpcError::SlowPeer { limit }
    }

    /// Called after queuing, with the lock held. If nobody holds the write
    /// turn, either notes the link on the running read loop's deferred list
    /// or, outside one, writes at once ([`Link::write_now`]).
    fn kick(self: &Arc<Self>, st: MutexGuard<'_, State>) {
        if !st.closed && !st.writing && !st.queue.is_empty() && !st.deferred {
            let mut st = st;
            if batch::defer(self) {
                st.deferred = true;
                return;
            }
            drop(st);
            batch::check_corks();
            return self.write_queued();
        }
        let wake = !st.closed && !st.writing && !st.deferred && st.draining;
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Writes what is queued, now (see [`Link::write_now`]).
    pub(crate) fn write_queued(&self) {
        let st = self.state();
        self.write_now(st);
    }

    /// Unless someone holds the write turn, takes it and writes what is
    /// queued with one non-blocking `writev`; what the socket does not take
    /// goes back to the front of the queue and the writer task is woken to
    /// finish it.
    fn write_now<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        st.deferred = false;
        if st.closed {
            return;
        }
        if !st.writing
            && !st.queue.is_empty()
            && let Some(sock) = st.sock.clone()
        {
            st.writing = true;
            let off = std::mem::take(&mut st.head_written);
            let mut batch = std::mem::take(&mut st.spare);
            batch.extend(st.queue.drain(..));
            drop(st);
            let result = write_once(&*sock, &batch, 0, off);
            drop(sock);
            let k = match result {
                Ok(k) => k,
                Err(e) => {
                    self.state().writing = false;
                    debug!(conn = %self.info.id, error = %e, "write failed; closing");
                    self.abort_now();
                    return;
                }
            };
            let (done, rest) = advance(&batch, 0, off, k);
            let written: usize = batch[..done].iter().map(Out::len).sum();
            let rest_items = batch.split_off(done);
            resolve_flushes(&mut batch);
            st = self.state();
            st.writing = false;
            if st.closed {
                return;
            }
            st.queued_bytes = st.queued_bytes.saturating_sub(written);
            for out in rest_items.into_iter().rev() {
                st.queue.push_front(out);
            }
            st.head_written = rest;
            // the emptied buffer serves the next write: no allocation per message
            st.spare = batch;
            let wake = !st.queue.is_empty() || st.draining;
            drop(st);
            if wake {
                self.wake.notify_one();
            }
            return;
        }
        let wake = !st.writing && st.draining;
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Queues an outgoing frame (and writes it at once if the connection
    /// is idle).
    pub(crate) fn enqueue(self: &Arc<Self>, out: Out) -> Result<(), IpcError> {
        let mut st = self.state();
        if st.closed {
            return Err(IpcError::Closed);
        }
        if let Err(limit) = self.push_locked(&mut st, out) {
            drop(st);
            return Err(self.slow_peer(limit));
        }
        self.kick(st);
        Ok(())
    }

    /// Queues a sync request and registers the slot its response completes.
    pub(crate) fn enqueue_call(
        self: &Arc<Self>,
        out: Out,
    ) -> Result<oneshot::Receiver<Result<Message, IpcError>>, IpcError> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state();
        if st.closed || st.draining {
            return Err(IpcError::Closed);
        }
        if st.calls.len() >= self.limits.max_pending {
            return Err(IpcError::TooManyPending { limit: self.limits.max_pending });
        }
        if let Err(limit) = self.push_locked(&mut st, out) {
            drop(st);
            return Err(self.slow_peer(limit));
        }
        // registered before the request can be written
        st.calls.push_back(tx);
        self.kick(st);
        Ok(rx)
    }

    /// Hands a response to the oldest call awaiting one.
    fn complete_call(&self, msg: Message) {
        let slot = self.state().calls.pop_front();
        let Some(tx) = slot else {
            warn!(conn = %self.info.id, "ignoring a response to no pending request");
            return;
        };
        let result = match error_text(msg.body()) {
            Some(text) => Err(IpcError::Remote(text)),
            None => Ok(msg),
        };
        // The caller may have given up (timeout); its answer is dropped.
        let _ = tx.send(result);
    }

    /// Reserves the next reply slot for an incoming sync request.
    pub(crate) fn reserve_reply(&self) -> Result<u64, IpcError> {
        let mut st = self.state();
        if st.closed {
            return Err(IpcError::Closed);
        }
        if st.replies.len() >= self.limits.max_pending {
            return Err(IpcError::TooManyPending { limit: self.limits.max_pending });
        }
        st.replies.push_back(None);
        Ok(st.replies_base + st.replies.len() as u64 - 1)
    }

    /// Fills reply slot `seq` and moves every filled slot at the front of
    /// the FIFO to the queue, so answers leave in request order.
    pub(crate) fn complete_reply(self: &Arc<Self>, seq: u64, out: Out) -> Result<(), IpcError> {
        let mut st = self.state();
        if st.closed {
            return Err(IpcError::Closed);
        }
        let Some(idx) = seq.checked_sub(st.replies_base).map(|i| i as usize) else {
            return Err(IpcError::Protocol("reply slot answered twice".into()));
        };
        match st.replies.get_mut(idx) {
            Some(slot @ None) => *slot = Some(out),
            _ => return Err(IpcError::Protocol("reply slot answered twice".into())),
        }
        while matches!(st.replies.front(), Some(Some(_))) {
            let Some(Some(o)) = st.replies.pop_front() else { break };
            st.replies_base += 1;
            if let Err(limit) = self.push_locked(&mut st, o) {
                drop(st);
                return Err(self.slow_peer(limit));
            }
        }
        // (a draining writer waits for the last reply: kick wakes it)
        self.kick(st);
        Ok(())
    }

    /// Stops reading; the writer sends what is queued and every reply still
    /// owed, then closes (bounded by the owner's drain timeout).
    pub(crate) fn begin_drain(&self) {
        {
            let mut st = self.state();
            if st.draining || st.closed {
                return;
            }
            st.draining = true;
        }
        self.closing.cancel();
        self.wake.notify_one();
    }

    /// Closes at once: queued output is dropped, calls in flight fail.
    pub(crate) fn abort_now(&self) {
        let (calls, sock) = {
            let mut st = self.state();
            st.closed = true;
            st.draining = true;
            st.queue.clear();
            st.queued_bytes = 0;
            st.head_written = 0;
            st.replies.clear();
            (std::mem::take(&mut st.calls), st.sock.take())
        };
        drop(sock);
        for c in calls {
            let _ = c.send(Err(IpcError::Closed));
        }
        self.closing.cancel();
        self.abort.cancel();
        self.wake.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        let st = self.state();
        st.closed || st.draining
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.state().queued_bytes
    }

    pub(crate) fn pending_replies(&self) -> usize {
        self.state().replies.len()
    }

    /// An outgoing message from a body that is already encoded: header and
    /// body go out without copying the body, unless q's compression rule
    /// applies (then the message is built whole and compressed).
    pub(crate) fn raw_out(&self, msg_type: MsgType, obj: &RawObject) -> Result<Out, IpcError> {
        let body = obj.bytes();
        if self.info.capability < 6 {
            check_encodable(&K::Raw(obj.clone()), self.info.capability)?;
        }
        let total = (HEADER_LEN + body.len()) as u64;
        let header =
            Header { little_endian: obj.is_little_endian(), ..Header::new(msg_type, total) }.to_bytes();
        if self.compress && self.info.capability >= 1 && total as usize > COMPRESS_MIN_BYTES {
            return Ok(Out::Frame(Message::encode(msg_type, &K::Raw(obj.clone()), self.encode_options())?));
        }
        Ok(Out::Parts(header, body.clone()))
    }
}

/// Signals the flush markers among items that are written.
fn resolve_flushes(written: &mut Vec<Out>) {
    for out in written.drain(..) {
        if let Out::Flush(tx) = out {
            let _ = tx.send(());
        }
    }
}

/// The position `k` bytes after byte `off` of `batch[item]`, as (item,
/// offset), stepping over items that are done (flush markers included).
fn advance(batch: &[Out], mut item: usize, mut off: usize, mut k: usize) -> (usize, usize) {
    while item < batch.len() {
        let left = batch[item].len() - off;
        if k < left {
            return (item, off + k);
        }
        k -= left;
        item += 1;
        off = 0;
    }
    (item, 0)
}

/// One non-blocking `writev` of `batch` from byte `off` of `batch[item]`,
/// at most [`MAX_IOVECS`] slices. A full socket writes nothing (`Ok(0)`).
fn write_once(sock: &dyn WriteSock, batch: &[Out], item: usize, off: usize) -> std::io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
    let mut n = 0;
    let (mut i, mut o) = (item, off);
    while i < batch.len() && n + 2 <= MAX_IOVECS {
        match &batch[i] {
            Out::Frame(b) => {
                if o < b.len() {
                    slices[n] = IoSlice::new(&b[o..]);
                    n += 1;
                }
            }
            Out::Parts(h, b) => {
                if o < HEADER_LEN {
                    slices[n] = IoSlice::new(&h[o..]);
                    n += 1;
                    if !b.is_empty() {
                        slices[n] = IoSlice::new(b);
                        n += 1;
                    }
                } else if o - HEADER_LEN < b.len() {
                    slices[n] = IoSlice::new(&b[o - HEADER_LEN..]);
                    n += 1;
                }
            }
            Out::Flush(_) => {}
        }
        i += 1;
        o = 0;
    }
    if n == 0 {
        return Ok(0);
    }
    match sock.try_write_vectored(&slices[..n]) {
        Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
        Ok(k) => Ok(k),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Writes all of `batch` from byte `off` of its first item, waiting for
/// the socket whenever it is full.
async fn write_all(sock: &dyn WriteSock, batch: &[Out], off: usize) -> std::io::Result<()> {
    let (mut item, mut off) = advance(batch, 0, off, 0);
    while item < batch.len() {
        let k = write_once(sock, batch, item, off)?;
        if k == 0 {
            std::future::poll_fn(|cx| sock.poll_write_ready(cx)).await?;
            continue;
        }
        (item, off) = advance(batch, item, off, k);
    }
    Ok(())
}

/// The text of an error object (`-128h`) filling `body`, if it is one.
pub(crate) fn error_text(body: &[u8]) -> Option<String> {
    let rest = body.strip_prefix(&[types::ERROR as u8])?;
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The writer task: whenever the queue holds what a direct write left
/// (the socket was full) or nobody else holds the write turn, it takes the
/// turn and writes everything queued, waiting for the socket as needed.
/// Exits when aborted, on a write error, or once draining with nothing
/// left to send (then the write side is shut: the peer reads end of file).
pub(crate) async fn write_loop(link: Arc<Link>) {
    let mut batch: Vec<Out> = Vec::new();
    loop {
        let turn = {
            let mut st = link.state();
            if st.closed {
                return;
            }
            if st.writing || st.queue.is_empty() {
                if !st.writing && st.draining && st.replies.is_empty() {
                    break;
                }
                None
            } else {
                match st.sock.clone() {
                    Some(sock) => {
                        st.writing = true;
                        batch.extend(st.queue.drain(..));
                        Some((sock, std::mem::take(&mut st.head_written)))
                    }
                    None => return,
                }
            }
        };
        let Some((sock, off)) = turn else {
            tokio::select! {
                _ = link.wake.notified() => continue,
                _ = link.abort.cancelled() => return,
            }
        };
        let result = tokio::select! {
            r = write_all(&*sock, &batch, off) => r,
            _ = link.abort.cancelled() => return,
        };
        drop(sock);
        if let Err(e) = result {
            debug!(conn = %link.info.id, error = %e, "write failed; closing");
            link.abort_now();
            return;
        }
        let written: usize = batch.iter().map(Out::len).sum();
        {
            let mut st = link.state();
            st.writing = false;
            st.queued_bytes = st.queued_bytes.saturating_sub(written);
        }
        resolve_flushes(&mut batch);
    }
    let sock = link.state().sock.clone();
    if let Some(sock) = sock
        && let Err(e) = sock.shutdown_write()
    {
        debug!(conn = %link.info.id, error = %e, "shutdown of the write side failed");
    }
}

/// What the read loop does with requests (responses it matches itself).
pub(crate) trait Dispatch: Send + Sync {
    fn on_sync(&self, msg: Message, responder: Responder) -> impl Future<Output = ()> + Send;
    fn on_async(&self, msg: Message) -> impl Future<Output = ()> + Send;
}

/// Reads messages until the peer closes, the connection starts closing, or
/// the input is bad. Ends with the link draining (or aborted). What the
/// handlers write while a batch of messages is handled is deferred to the
/// batch's end (see the module docs).
pub(crate) async fn read_loop<R, D>(link: &Arc<Link>, r: R, buf: BytesMut, dispatch: &D)
where
    R: AsyncRead + Unpin,
    D: Dispatch,
{
    batch::Batched::new(link.info.id, read_messages(link, r, buf, dispatch)).await
}

async fn read_messages<R, D>(link: &Arc<Link>, mut r: R, mut buf: BytesMut, dispatch: &D)
where
    R: AsyncRead + Unpin,
    D: Dispatch,
{
    let mut codec =
        IpcCodec { max_message_bytes: link.limits.max_message_bytes, validate: link.limits.validate };
    let id = link.info.id;
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => {
                    match msg.msg_type() {
                        MsgType::Response => link.complete_call(msg),
                        MsgType::Async => dispatch.on_async(msg).await,
                        MsgType::Sync => match Responder::new(link.clone()) {
                            Ok(responder) => dispatch.on_sync(msg, responder).await,
                            Err(e) => {
                                warn!(conn = %id, remote = %link.info.remote, error = %e, "closing connection");
                                link.abort_now();
                                return;
                            }
                        },
                    }
                    if link.closing.is_cancelled() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max, msg_type }) => {
                    warn!(conn = %id, remote = %link.info.remote, len, max, ?msg_type,
                        "closing connection: message too large (body not read)");
                    if msg_type == MsgType::Sync
                        && let Ok(responder) = Responder::new(link.clone())
                    {
                        let _ = responder.error(TOO_LARGE_TEXT);
                    }
                    link.begin_drain();
                    discard_input(&mut r, len.min(MAX_DISCARD_BYTES), &link.abort).await;
                    return;
                }
                Err(e) => {
                    warn!(conn = %id, remote = %link.info.remote, error = %e, "closing connection: bad input");
                    link.begin_drain();
                    return;
                }
            }
        }
        // the batch is handled: its answers leave before the next read
        batch::end_of_batch();
        if buf.capacity() - buf.len() < MIN_READ_SPACE {
            buf.reserve(MIN_READ_SPACE);
        }
        tokio::select! {
            biased;
            _ = link.closing.cancelled() => return,
            res = r.read_buf(&mut buf) => match res {
                Ok(0) => {
                    debug!(conn = %id, "peer closed");
                    link.begin_drain();
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(conn = %id, error = %e, "read failed; closing");
                    link.abort_now();
                    return;
                }
            }
        }
    }
}

/// Reads and throws away up to `limit` bytes, until EOF or abort.
async fn discard_input<R: AsyncRead + Unpin>(r: &mut R, limit: u64, abort: &CancellationToken) {
    let mut scratch = vec![0u8; DISCARD_CHUNK];
    let mut left = limit;
    while left > 0 {
        let want = scratch.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        tokio::select! {
            _ = abort.cancelled() => return,
            res = r.read(&mut scratch[..want]) => match res {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n as u64,
            }
        }
    }
}

/// The answer owed to one sync request (q's deferred response, `-30!`).
///
/// Answer exactly once with [`reply`](Responder::reply),
/// [`reply_raw`](Responder::reply_raw), [`forward`](Responder::forward) or
/// [`error`](Responder::error), from any task, at any time. Answers on one
/// connection are written in request order whatever order they are given
/// in. Dropping a `Responder` unanswered sends the client the error
/// [`DROPPED_RESPONSE_TEXT`]: a client never waits forever.
#[must_use = "a dropped Responder answers the client with an error"]
pub struct Responder {
    link: Arc<Link>,
    seq: u64,
    answered: bool,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").field("conn", &self.link.info.id).field("seq", &self.seq).finish()
    }
}

impl Responder {
    pub(crate) fn new(link: Arc<Link>) -> Result<Responder, IpcError> {
        let seq = link.reserve_reply()?;
        Ok(Responder { link, seq, answered: false })
    }

    /// The connection the request came on.
    pub fn conn_id(&self) -> ConnId {
        self.link.info.id
    }

    /// The negotiated capability of the requesting connection.
    pub fn capability(&self) -> u8 {
        self.link.info.capability
    }

    fn finish(mut self, out: Out) -> Result<(), IpcError> {
        self.answered = true;
        self.link.complete_reply(self.seq, out)
    }

    /// Answers with a value. If it cannot be encoded for this peer (a guid
    /// to a capability-0 client…), the client gets the error
    /// `type: <reason>` instead and this returns the encode error.
    pub fn reply(self, value: impl std::borrow::Borrow<K>) -> Result<(), IpcError> {
        match Message::encode(MsgType::Response, value.borrow(), self.link.encode_options()) {
            Ok(frame) => self.finish(Out::Frame(frame)),
            Err(e) => {
                let text = format!("type: {e}");
                self.error(text)?;
                Err(IpcError::Encode(e))
            }
        }
    }

    /// Answers with an already-encoded object, written behind a new header
    /// without copying it (unless compression applies).
    pub fn reply_raw(self, obj: RawObject) -> Result<(), IpcError> {
        match self.link.raw_out(MsgType::Response, &obj) {
            Ok(out) => self.finish(out),
            Err(e) => {
                let text = format!("type: {e}");
                self.error(text)?;
                Err(e)
            }
        }
    }

    /// Answers with the body of a message received elsewhere (a response
    /// from an upstream server, error responses included), without copying.
    pub fn forward(self, msg: &Message) -> Result<(), IpcError> {
        self.reply_raw(msg.as_object())
    }

    /// Answers with a q error: the client raises `'text`. By convention
    /// a short lowercase word, then `: detail`.
    pub fn error(self, text: impl AsRef<[u8]>) -> Result<(), IpcError> {
        let out = error_frame(text.as_ref());
        self.finish(out)
    }
}

fn error_frame(text: &[u8]) -> Out {
    let text = match text.iter().position(|&b| b == 0) {
        Some(i) => &text[..i],
        None => text,
    };
    let total = HEADER_LEN + 2 + text.len();
    let mut v = Vec::with_capacity(total);
    v.extend_from_slice(&Header::new(MsgType::Response, total as u64).to_bytes());
    v.push(types::ERROR as u8);
    v.extend_from_slice(text);
    v.push(0);
    Out::Frame(Bytes::from(v))
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered {
            self.answered = true;
            debug!(conn = %self.link.info.id, "sync request dropped unanswered; sending an error");
            let _ = self.link.complete_reply(self.seq, error_frame(DROPPED_RESPONSE_TEXT.as_bytes()));
        }
    }
}

/// A handle on one connection, cloneable and usable from any task: on a
/// server, the peer behind `.z.w`; on a client, the [`crate::client::Sender`]
/// derefs to it.
#[derive(Clone)]
pub struct Peer {
    pub(crate) link: Arc<Link>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("info", &self.link.info).finish()
    }
}

impl Peer {
    /// The connection's id (`.z.w`).
    pub fn id(&self) -> ConnId {
        self.link.info.id
    }

    /// Everything known about the connection.
    pub fn info(&self) -> &ConnInfo {
        &self.link.info
    }

    /// The user name from the handshake (`.z.u`).
    pub fn user(&self) -> &str {
        &self.link.info.user
    }

    /// The negotiated capability.
    pub fn capability(&self) -> u8 {
        self.link.info.capability
    }

    /// The options messages to this peer are encoded with.
    pub fn encode_options(&self) -> EncodeOptions {
        self.link.encode_options()
    }

    /// Whether the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.link.is_closed()
    }

    /// Bytes queued for this peer and not yet written (q's `.z.W`).
    pub fn queued_bytes(&self) -> usize {
        self.link.queued_bytes()
    }

    /// Sync requests from this peer not yet answered.
    pub fn pending_replies(&self) -> usize {
        self.link.pending_replies()
    }

    /// Sends an async message (q's `neg[h] x`). Returns once queued.
    pub fn send_async(&self, value: &K) -> Result<(), IpcError> {
        let frame = Message::encode(MsgType::Async, value, self.link.encode_options())?;
        self.link.enqueue(Out::Frame(frame))
    }

    /// Sends an already-encoded object as a message of `msg_type`, written
    /// behind a new header without copying (unless compression applies).
    pub fn send_raw(&self, msg_type: MsgType, obj: RawObject) -> Result<(), IpcError> {
        let out = self.link.raw_out(msg_type, &obj)?;
        self.link.enqueue(out)
    }

    /// Sends a whole wire message as it is (for example one frame encoded
    /// once, with [`Message::encode`] at the lowest capability of its
    /// receivers, and sent to many peers, as q's `-25!`).
    pub fn send_frame(&self, frame: Bytes) -> Result<(), IpcError> {
        let ok =
            frame.get(..HEADER_LEN).and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok()).map(Header::parse);
        match ok {
            Some(Ok(h)) if h.length == frame.len() as u64 && h.msg_type != MsgType::Sync => {
                self.link.enqueue(Out::Frame(frame))
            }
            _ => Err(IpcError::Protocol("send_frame needs one whole async or response message".into())),
        }
    }

    /// A sync request: sends `value` and waits for the response. A q error
    /// response is `Err(IpcError::Remote(text))`. Calls from many tasks may
    /// be in flight at once; responses are matched in order.
    pub async fn call(&self, value: &K) -> Result<Message, IpcError> {
        let frame = Message::encode(MsgType::Sync, value, self.link.encode_options())?;
        self.call_out(Out::Frame(frame)).await
    }

    /// As [`call`](Peer::call) with an already-encoded request, written
    /// without copying.
    pub async fn call_raw(&self, obj: RawObject) -> Result<Message, IpcError> {
        let out = self.link.raw_out(MsgType::Sync, &obj)?;
        self.call_out(out).await
    }

    async fn call_out(&self, out: Out) -> Result<Message, IpcError> {
        let rx = self.link.enqueue_call(out)?;
        rx.await.unwrap_or(Err(IpcError::Closed))
    }

    /// Sends the text `q` as a sync request and decodes the result
    /// (`h "1+1"`).
    pub async fn query(&self, q: &str) -> Result<K, IpcError> {
        Ok(self.call(&K::string(q)).await?.decode()?)
    }

    /// Waits until everything queued before this call is written to the
    /// socket (q's `neg[h][]`).
    pub async fn flush(&self) -> Result<(), IpcError> {
        let (tx, rx) = oneshot::channel();
        self.link.enqueue(Out::Flush(tx))?;
        rx.await.map_err(|_| IpcError::Closed)
    }

    /// Closes the connection gracefully: stops reading, sends what is
    /// queued and the answers still owed (within the drain timeout), then
    /// closes.
    pub fn close(&self) {
        self.link.begin_drain();
    }

    /// Closes at once, dropping anything queued.
    pub fn abort(&self) {
        self.link.abort_now();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stream::IntoHalves;
    use std::io::Read;
    use std::time::Duration;

    /// A link over one end of a real Unix socket pair, and the other end
    /// (blocking, with a read timeout) to see what was written. The read
    /// half of the link's end is returned so the socket stays open.
    pub(crate) async fn link(limits: LinkLimits) -> (Arc<Link>, std::os::unix::net::UnixStream, impl Sized) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (r, w) = tokio::net::UnixStream::from_std(ours).unwrap().into_halves();
        // until the reactor has seen the new socket writable, a direct
        // write finds it "full" and leaves the message to the writer task
        w.writable().await.unwrap();
        let info =
            ConnInfo { id: ConnId::next(), remote: RemoteAddr::Unix, user: String::new(), capability: 6 };
        let l = Arc::new(Link::new(info, false, limits, CancellationToken::new(), Arc::new(w)));
        (l, theirs, r)
    }

    pub(crate) fn limits() -> LinkLimits {
        LinkLimits {
            max_queue_bytes: 64 << 20,
            max_queue_frames: 1000,
            max_pending: 100,
            max_message_bytes: 1 << 30,
            validate: true,
        }
    }

    /// Reads `n` whole messages from the other end.
    pub(crate) fn read_messages(theirs: &mut std::os::unix::net::UnixStream, n: usize) -> Vec<Message> {
        let mut codec = IpcCodec::new(1 << 30);
        let mut buf = BytesMut::new();
        let mut out = vec![];
        let mut chunk = vec![0u8; 1 << 16];
        while out.len() < n {
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                out.push(m);
            }
            if out.len() >= n {
                break;
            }
            let k = theirs.read(&mut chunk).expect("more output");
            assert!(k > 0, "end of file after {} messages", out.len());
            buf.extend_from_slice(&chunk[..k]);
        }
        out
    }

    pub(crate) fn nothing_written(theirs: &mut std::os::unix::net::UnixStream) -> bool {
        theirs.set_nonblocking(true).unwrap();
        let r = theirs.read(&mut [0u8; 16]);
        theirs.set_nonblocking(false).unwrap();
        matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    fn queued_len(l: &Link) -> usize {
        l.state().queue.len()
    }

    #[tokio::test]
    async fn replies_leave_in_request_order() {
        let (l, mut theirs, _r) = link(limits()).await;
        let r1 = Responder::new(l.clone()).unwrap();
        let r2 = Responder::new(l.clone()).unwrap();
        let r3 = Responder::new(l.clone()).unwrap();
        r3.reply(K::long(3)).unwrap();
        r2.reply(K::long(2)).unwrap();
        assert!(nothing_written(&mut theirs), "held back behind the first request");
        r1.reply(K::long(1)).unwrap();
        let vals: Vec<K> = read_messages(&mut theirs, 3).iter().map(|m| m.decode().unwrap()).collect();
        assert_eq!(vals, vec![K::long(1), K::long(2), K::long(3)]);
        assert_eq!(l.pending_replies(), 0);
        assert_eq!(queued_len(&l), 0, "written by the answering task, not queued");
    }

    #[tokio::test]
    async fn dropped_responder_sends_an_error() {
        let (l, mut theirs, _r) = link(limits()).await;
        drop(Responder::new(l.clone()).unwrap());
        let m = read_messages(&mut theirs, 1).remove(0);
        assert_eq!(error_text(m.body()).as_deref(), Some(DROPPED_RESPONSE_TEXT));
        assert_eq!(m.msg_type(), MsgType::Response);
    }

    #[tokio::test]
    async fn pending_bound() {
        let (l, _theirs, _r) = link(LinkLimits { max_pending: 2, ..limits() }).await;
        let _a = Responder::new(l.clone()).unwrap();
        let _b = Responder::new(l.clone()).unwrap();
        assert!(matches!(Responder::new(l.clone()), Err(IpcError::TooManyPending { limit: 2 })));
    }

    /// A message larger than the socket buffers: the first write takes part
    /// of it, the rest waits in the queue (nobody reads the other end).
    fn big() -> K {
        K::string(vec![b'x'; 8 << 20])
    }

    #[tokio::test]
    async fn queue_bound_aborts_the_link() {
        let (l, _theirs, _r) = link(LinkLimits { max_queue_bytes: 100, ..limits() }).await;
        let p = Peer { link: l.clone() };
        // One frame larger than the bound fits an empty queue; the socket
        // takes only part of it.
        p.send_async(&big()).unwrap();
        assert_eq!(queued_len(&l), 1);
        assert!(l.queued_bytes() > 100);
        // The next does not.
        assert!(matches!(p.send_async(&K::long(1)), Err(IpcError::SlowPeer { limit: 100 })));
        assert!(p.is_closed());
        assert!(matches!(p.send_async(&K::long(1)), Err(IpcError::Closed)));
    }

    #[tokio::test]
    async fn raw_replies_are_not_copied() {
        let (l, _theirs, _r) = link(limits()).await;
        let p = Peer { link: l.clone() };
        p.send_async(&big()).unwrap();
        let obj = RawObject::encode(&K::long(7));
        let body_ptr = obj.bytes().as_ptr();
        Responder::new(l.clone()).unwrap().reply_raw(obj).unwrap();
        match l.state().queue.back() {
            Some(Out::Parts(h, b)) => {
                assert_eq!(b.as_ptr(), body_ptr);
                assert_eq!(Header::parse(h).unwrap().length, 17);
            }
            _ => panic!("expected header + body parts"),
        }
    }

    #[test]
    fn error_frames() {
        let Out::Frame(f) = error_frame(b"type") else { panic!() };
        assert_eq!(&f[..], &[1, 2, 0, 0, 14, 0, 0, 0, 0x80, b't', b'y', b'p', b'e', 0]);
        assert_eq!(error_text(&f[8..]).as_deref(), Some("type"));
        assert_eq!(error_text(&[0xf9, 0, 0]), None);
    }

    #[test]
    fn advance_steps_over_written_items_and_markers() {
        let (tx, _rx) = oneshot::channel();
        let batch = vec![
            Out::Frame(Bytes::from_static(b"abc")),
            Out::Flush(tx),
            Out::Parts([0; HEADER_LEN], Bytes::from_static(b"de")),
        ];
        assert_eq!(advance(&batch, 0, 0, 0), (0, 0));
        assert_eq!(advance(&batch, 0, 0, 2), (0, 2));
        assert_eq!(advance(&batch, 0, 0, 3), (2, 0), "the marker after written bytes is passed");
        assert_eq!(advance(&batch, 0, 2, 5), (2, 4));
        assert_eq!(advance(&batch, 0, 0, 13), (3, 0));
    }

    /// With the socket full, messages queue behind the partly written one
    /// and the writer task finishes them all, in order, once the other end
    /// reads; frames and header + body parts are batched alike.
    #[tokio::test]
    async fn writer_task_finishes_what_the_full_socket_left() {
        let (l, mut theirs, _r) = link(limits()).await;
        let p = Peer { link: l.clone() };
        let w = tokio::spawn(write_loop(l.clone()));
        p.send_async(&big()).unwrap();
        for i in 0..100 {
            p.send_async(&K::long(i)).unwrap();
            p.send_raw(MsgType::Async, RawObject::encode(&K::long(i))).unwrap();
        }
        let reader = std::thread::spawn(move || {
            theirs.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msgs = read_messages(&mut theirs, 201);
            let mut rest = vec![];
            theirs.read_to_end(&mut rest).unwrap();
            (msgs, rest)
        });
        p.flush().await.unwrap();
        assert_eq!(l.queued_bytes(), 0);
        l.begin_drain();
        w.await.unwrap();
        let (msgs, rest) = reader.join().unwrap();
        assert!(rest.is_empty(), "end of file after the last message");
        assert_eq!(msgs[0].decode().unwrap(), big());
        for (n, m) in msgs[1..].iter().enumerate() {
            assert_eq!(m.decode().unwrap(), K::long(n as i64 / 2));
        }
    }

    /// An idle connection's flush resolves at once: nothing is queued.
    #[tokio::test]
    async fn flush_of_an_idle_connection() {
        let (l, mut theirs, _r) = link(limits()).await;
        let p = Peer { link: l.clone() };
        p.send_async(&K::long(5)).unwrap();
        p.flush().await.unwrap();
        assert_eq!(read_messages(&mut theirs, 1)[0].decode().unwrap(), K::long(5));
    }
}
