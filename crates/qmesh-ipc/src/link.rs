//! One open connection, either side: the outbound queue and its writer task,
//! the FIFO of sync requests awaiting our answer, the FIFO of our calls
//! awaiting the peer's answer, and the read loop.
//!
//! Locking: one `std::sync::Mutex` per connection guards all queues; it is
//! held only to push or pop, never across an `.await` or a syscall.

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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::IpcError;
use crate::framing::{FrameError, IpcCodec};

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
    /// Frames for the writer, in order.
    queue: VecDeque<Out>,
    /// Bytes queued or being written.
    queued_bytes: usize,
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
    /// Wakes the writer.
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

enum Push {
    Ok { wake: bool },
    Slow { limit: usize },
}

impl Link {
    pub(crate) fn new(
        info: ConnInfo,
        compress: bool,
        limits: LinkLimits,
        closing: CancellationToken,
    ) -> Link {
        Link {
            info,
            compress,
            limits,
            state: Mutex::new(State::default()),
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

    /// Appends to the queue under the lock, checking the bounds. A frame
    /// always fits an empty queue, so one message larger than the byte
    /// bound can still be sent to a peer that keeps up.
    fn push_locked(&self, st: &mut State, out: Out) -> Push {
        let len = out.len();
        if st.queued_bytes > 0 && st.queued_bytes + len > self.limits.max_queue_bytes {
            return Push::Slow { limit: self.limits.max_queue_bytes };
        }
        if st.queue.len() >= self.limits.max_queue_frames {
            return Push::Slow { limit: self.limits.max_queue_frames };
        }
        let wake = st.queue.is_empty();
        st.queued_bytes += len;
        st.queue.push_back(out);
        Push::Ok { wake }
    }

    fn after_push(&self, p: Push) -> Result<(), IpcError> {
        match p {
            Push::Ok { wake } => {
                if wake {
                    self.wake.notify_one();
                }
                Ok(())
            }
            Push::Slow { limit } => {
                warn!(conn = %self.info.id, remote = %self.info.remote, limit,
                    "dropping connection: slow reader, outbound queue bound reached");
                self.abort_now();
                Err(IpcError::SlowPeer { limit })
            }
        }
    }

    /// Queues an outgoing frame.
    pub(crate) fn enqueue(&self, out: Out) -> Result<(), IpcError> {
        let p = {
            let mut st = self.state();
            if st.closed {
                return Err(IpcError::Closed);
            }
            self.push_locked(&mut st, out)
        };
        self.after_push(p)
    }

    /// Queues a sync request and registers the slot its response completes.
    pub(crate) fn enqueue_call(
        &self,
        out: Out,
    ) -> Result<oneshot::Receiver<Result<Message, IpcError>>, IpcError> {
        let (tx, rx) = oneshot::channel();
        let p = {
            let mut st = self.state();
            if st.closed || st.draining {
                return Err(IpcError::Closed);
            }
            if st.calls.len() >= self.limits.max_pending {
                return Err(IpcError::TooManyPending { limit: self.limits.max_pending });
            }
            let p = self.push_locked(&mut st, out);
            if matches!(p, Push::Ok { .. }) {
                st.calls.push_back(tx);
            }
            p
        };
        self.after_push(p)?;
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
    pub(crate) fn complete_reply(&self, seq: u64, out: Out) -> Result<(), IpcError> {
        let mut wake = false;
        let mut slow = None;
        {
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
                match self.push_locked(&mut st, o) {
                    Push::Ok { wake: w } => wake |= w,
                    Push::Slow { limit } => {
                        slow = Some(limit);
                        break;
                    }
                }
            }
            // A draining writer waits for the last reply; wake it even when
            // the queue was not empty before.
            wake |= st.draining && st.replies.is_empty();
        }
        match slow {
            Some(limit) => self.after_push(Push::Slow { limit }),
            None => self.after_push(Push::Ok { wake }),
        }
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
        let calls = {
            let mut st = self.state();
            st.closed = true;
            st.draining = true;
            st.queue.clear();
            st.queued_bytes = 0;
            st.replies.clear();
            std::mem::take(&mut st.calls)
        };
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

/// The text of an error object (`-128h`) filling `body`, if it is one.
pub(crate) fn error_text(body: &[u8]) -> Option<String> {
    let rest = body.strip_prefix(&[types::ERROR as u8])?;
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The writer task: takes everything queued, writes it with as few
/// `writev` calls as it takes, repeats. Exits when aborted, on a write
/// error, or once draining with nothing left to send.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(link: Arc<Link>, mut w: W) {
    let mut batch: Vec<Out> = Vec::new();
    loop {
        let done = {
            let mut st = link.state();
            if st.closed {
                return;
            }
            batch.extend(st.queue.drain(..));
            batch.is_empty() && st.draining && st.replies.is_empty()
        };
        if done {
            break;
        }
        if batch.is_empty() {
            tokio::select! {
                _ = link.wake.notified() => continue,
                _ = link.abort.cancelled() => return,
            }
        }
        let written: usize = batch.iter().map(Out::len).sum();
        let result = tokio::select! {
            r = write_batch(&mut w, &batch) => r,
            _ = link.abort.cancelled() => return,
        };
        if let Err(e) = result {
            debug!(conn = %link.info.id, error = %e, "write failed; closing");
            link.abort_now();
            return;
        }
        {
            let mut st = link.state();
            st.queued_bytes = st.queued_bytes.saturating_sub(written);
        }
        for out in batch.drain(..) {
            if let Out::Flush(tx) = out {
                let _ = tx.send(());
            }
        }
    }
    if let Err(e) = w.shutdown().await {
        debug!(conn = %link.info.id, error = %e, "shutdown of the write side failed");
    }
}

/// Writes every item of `batch`, several per `writev`.
async fn write_batch<W: AsyncWrite + Unpin>(w: &mut W, batch: &[Out]) -> std::io::Result<()> {
    // (item, bytes of the item already written)
    let mut item = 0usize;
    let mut off = 0usize;
    loop {
        while item < batch.len() && off >= batch[item].len() {
            item += 1;
            off = 0;
        }
        if item >= batch.len() {
            return Ok(());
        }
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
        let mut k = w.write_vectored(&slices[..n]).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while k > 0 && item < batch.len() {
            let left = batch[item].len() - off;
            if k >= left {
                k -= left;
                item += 1;
                off = 0;
            } else {
                off += k;
                k = 0;
            }
        }
    }
}

/// What the read loop does with requests (responses it matches itself).
pub(crate) trait Dispatch: Send + Sync {
    fn on_sync(&self, msg: Message, responder: Responder) -> impl Future<Output = ()> + Send;
    fn on_async(&self, msg: Message) -> impl Future<Output = ()> + Send;
}

/// Reads messages until the peer closes, the connection starts closing, or
/// the input is bad. Ends with the link draining (or aborted).
pub(crate) async fn read_loop<R, D>(link: &Arc<Link>, mut r: R, mut buf: BytesMut, dispatch: &D)
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
mod tests {
    use super::*;

    fn link(limits: LinkLimits) -> Arc<Link> {
        let info =
            ConnInfo { id: ConnId::next(), remote: RemoteAddr::Unix, user: String::new(), capability: 6 };
        Arc::new(Link::new(info, false, limits, CancellationToken::new()))
    }

    fn limits() -> LinkLimits {
        LinkLimits {
            max_queue_bytes: 1 << 20,
            max_queue_frames: 1000,
            max_pending: 100,
            max_message_bytes: 1 << 20,
            validate: true,
        }
    }

    fn queued(l: &Link) -> Vec<Vec<u8>> {
        l.state()
            .queue
            .iter()
            .map(|o| match o {
                Out::Frame(b) => b.to_vec(),
                Out::Parts(h, b) => [&h[..], &b[..]].concat(),
                Out::Flush(_) => vec![],
            })
            .collect()
    }

    #[test]
    fn replies_leave_in_request_order() {
        let l = link(limits());
        let r1 = Responder::new(l.clone()).unwrap();
        let r2 = Responder::new(l.clone()).unwrap();
        let r3 = Responder::new(l.clone()).unwrap();
        r3.reply(K::long(3)).unwrap();
        r2.reply(K::long(2)).unwrap();
        assert!(queued(&l).is_empty(), "held back behind the first request");
        r1.reply(K::long(1)).unwrap();
        let q = queued(&l);
        assert_eq!(q.len(), 3);
        let vals: Vec<K> = q
            .into_iter()
            .map(|f| Message::from_frame(f.into(), 1 << 20).unwrap().decode().unwrap())
            .collect();
        assert_eq!(vals, vec![K::long(1), K::long(2), K::long(3)]);
        assert_eq!(l.pending_replies(), 0);
    }

    #[test]
    fn dropped_responder_sends_an_error() {
        let l = link(limits());
        drop(Responder::new(l.clone()).unwrap());
        let q = queued(&l);
        assert_eq!(error_text(&q[0][HEADER_LEN..]).as_deref(), Some(DROPPED_RESPONSE_TEXT));
        assert_eq!(q[0][1], MsgType::Response as u8);
    }

    #[test]
    fn pending_bound() {
        let l = link(LinkLimits { max_pending: 2, ..limits() });
        let _a = Responder::new(l.clone()).unwrap();
        let _b = Responder::new(l.clone()).unwrap();
        assert!(matches!(Responder::new(l.clone()), Err(IpcError::TooManyPending { limit: 2 })));
    }

    #[test]
    fn queue_bound_aborts_the_link() {
        let l = link(LinkLimits { max_queue_bytes: 100, ..limits() });
        let p = Peer { link: l.clone() };
        // One frame larger than the bound fits an empty queue.
        p.send_async(&K::string(vec![b'x'; 200])).unwrap();
        // The next does not.
        assert!(matches!(p.send_async(&K::long(1)), Err(IpcError::SlowPeer { limit: 100 })));
        assert!(p.is_closed());
        assert!(matches!(p.send_async(&K::long(1)), Err(IpcError::Closed)));
    }

    #[test]
    fn raw_replies_are_not_copied() {
        let l = link(limits());
        let obj = RawObject::encode(&K::long(7));
        let body_ptr = obj.bytes().as_ptr();
        Responder::new(l.clone()).unwrap().reply_raw(obj).unwrap();
        match l.state().queue.front() {
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

    #[tokio::test]
    async fn writer_batches_parts_and_frames() {
        let l = link(limits());
        let p = Peer { link: l.clone() };
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let w = tokio::spawn(write_loop(l.clone(), server));
        for i in 0..100 {
            p.send_async(&K::long(i)).unwrap();
            p.send_raw(MsgType::Async, RawObject::encode(&K::long(i))).unwrap();
        }
        p.flush().await.unwrap();
        l.begin_drain();
        w.await.unwrap();
        let mut all = vec![];
        client.read_to_end(&mut all).await.unwrap();
        let mut buf = BytesMut::from(&all[..]);
        let mut codec = IpcCodec::new(1 << 20);
        let mut n = 0;
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            assert_eq!(m.decode().unwrap(), K::long(n / 2));
            n += 1;
        }
        assert_eq!(n, 200);
    }
}
