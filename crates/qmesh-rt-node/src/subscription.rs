//! Subscriptions: one task per subscribed (connection, stream), feeding the
//! connection from the log at its own pace.
//!
//! The task reads records from the stream's log, never past the durable
//! end (a subscriber never sees a message that a crash could still take
//! back), filters them by their leading symbols, and queues one frame per
//! message or event on the connection. When the connection has more than
//! [`SUB_QUEUE_BYTES`] queued and unwritten, the task waits until the
//! socket has taken it all and then reads on from the log: a slow
//! subscriber is fed from disk, holds no publisher back and costs the node
//! at most this much memory. Paused subscriptions read nothing; they resume
//! where they stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use qmesh_ipc::{ConnId, Peer};
use qmesh_rt::{SubOptions, push};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::metrics::NodeMetrics;
use qmesh_log::{Item, Reader};
use qmesh_rt::Event;

use crate::stream::Stream;

/// Bytes a subscription may have queued on its connection, unwritten,
/// before it stops reading the log and waits for the socket (a bound on the
/// node's memory per subscriber; the rest stays on disk).
pub const SUB_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// Frames a subscription may have sent since its connection last drained
/// before it waits for the socket: a quarter of the IPC server's bound on
/// queued frames ([`qmesh_ipc::server::DEFAULT_MAX_QUEUE_FRAMES`]), past which
/// the connection is dropped as a slow reader. Small messages reach that
/// bound long before [`SUB_QUEUE_BYTES`] (65,536 frames of 60 bytes are under
/// 4 MiB). Frames.
pub const SUB_QUEUE_FRAMES: usize = 16 * 1024;

/// Most bytes of records read from the log in one go before the task looks
/// at its connection's queue and its controls again.
pub const READ_BATCH_BYTES: usize = 1024 * 1024;

/// Most frames a subscription sends in one go (one poll of its task) before
/// it yields to the runtime. Each send may write to the socket, whose cost
/// grows with what is queued when the subscriber reads slower than the log
/// is read; a poll of tens of thousands of small messages (1 MiB of 20-byte
/// payloads) kept a worker busy long enough that the runtime's I/O driver
/// was not polled and the connection's writer never woke: the subscriber
/// saw nothing for more than 30 s. Frames.
pub const MAX_FRAMES_PER_POLL: usize = 4096;

/// The controls and progress of one subscription, shared by its task, the
/// connection's handler and the HTTP API.
#[derive(Debug)]
pub struct SubCtl {
    pub conn: ConnId,
    pub user: String,
    pub stream: String,
    pub filter: Option<Vec<String>>,
    paused: AtomicBool,
    stopped: AtomicBool,
    wake: Notify,
    /// The position the subscriber would resubscribe from (after the last
    /// message or event pushed).
    pos: AtomicU64,
    delivered: AtomicU64,
}

impl SubCtl {
    pub fn new(conn: ConnId, user: &str, stream: &str, opts: &SubOptions, start: u64) -> Arc<SubCtl> {
        let filter = opts.filter.as_ref().map(|f| {
            let mut v: Vec<String> = f.symbols().map(|s| String::from_utf8_lossy(s).into_owned()).collect();
            v.sort();
            v
        });
        Arc::new(SubCtl {
            conn,
            user: user.to_string(),
            stream: stream.to_string(),
            filter,
            paused: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            wake: Notify::new(),
            pos: AtomicU64::new(start),
            delivered: AtomicU64::new(0),
        })
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub fn position(&self) -> u64 {
        self.pos.load(Ordering::Acquire)
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// Feeds `peer` from `start` until the subscription stops or the
/// connection closes.
pub async fn deliver(
    stream: Arc<Stream>,
    peer: Peer,
    mut reader: Reader,
    opts: SubOptions,
    ctl: Arc<SubCtl>,
    metrics: NodeMetrics,
) {
    let labels = NodeMetrics::stream(stream.name());
    let delivered = metrics.delivered.get_or_create(&labels).clone();
    let mut tip = stream.tip();
    // frames sent since the connection last drained: at least what is queued
    let mut unflushed = 0usize;
    loop {
        if ctl.is_stopped() || peer.is_closed() {
            break;
        }
        if ctl.is_paused() {
            ctl.wake.notified().await;
            continue;
        }
        tip.borrow_and_update();
        let mut bytes = 0usize;
        let mut frames = 0usize;
        let mut progressed = false;
        // the frames of this batch leave in one write (up to MAX_IOVECS frames), not one syscall each
        let gather = qmesh_ipc::batch::Gather::new();
        // a pause or unsub answered before a record is read stops it from going out; a full connection queue
        // stops the reading too (the outer loop waits for the socket)
        while bytes < READ_BATCH_BYTES
            && frames < MAX_FRAMES_PER_POLL
            && peer.queued_bytes() <= SUB_QUEUE_BYTES
            && unflushed < SUB_QUEUE_FRAMES
            && !ctl.is_paused()
            && !ctl.is_stopped()
        {
            let item = match reader.next() {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => {
                    warn!(stream = stream.name(), conn = %peer.id(), error = %e, "reading the stream failed; subscription ended");
                    return;
                }
            };
            progressed = true;
            let (frame, next) = match item {
                Item::Entry(e) => {
                    let payload = e.payload();
                    let next = e.next.as_u64();
                    if let Some(f) = &opts.filter
                        && !f.matches(payload)
                    {
                        bytes += payload.len();
                        ctl.pos.store(next, Ordering::Release);
                        continue;
                    }
                    if !well_formed(payload) {
                        // a record whose payload q could not decode: skip it, say so
                        metrics.event(stream.name(), Event::BadMsg.name());
                        let p1 = e.position.as_u64() as i64;
                        (push::event_frame(&opts.event, stream.name(), Event::BadMsg, p1, next as i64), next)
                    } else {
                        delivered.inc();
                        ctl.delivered.fetch_add(1, Ordering::Relaxed);
                        (push::msg_frame(&opts.msg, stream.name(), payload, next as i64), next)
                    }
                }
                Item::Event(ev) => {
                    let (p1, p2) = ev.positions();
                    let event = match ev.name() {
                        "badtail" => Event::BadTail,
                        "reset" => Event::Reset,
                        _ => Event::SkipForward,
                    };
                    metrics.event(stream.name(), event.name());
                    debug!(stream = stream.name(), conn = %peer.id(), %event, %p1, %p2, "event");
                    let next = ev.next().as_u64();
                    (
                        push::event_frame(
                            &opts.event,
                            stream.name(),
                            event,
                            p1.as_u64() as i64,
                            p2.as_u64() as i64,
                        ),
                        next,
                    )
                }
            };
            bytes += frame.len();
            frames += 1;
            unflushed += 1;
            if peer.send_frame(frame).is_err() {
                return;
            }
            ctl.pos.store(next, Ordering::Release);
        }
        drop(gather);
        if peer.queued_bytes() > SUB_QUEUE_BYTES || unflushed >= SUB_QUEUE_FRAMES {
            // the socket drains the queue; the log keeps the rest
            if peer.flush().await.is_err() {
                break;
            }
            unflushed = 0;
            continue;
        }
        if !progressed {
            tokio::select! {
                r = tip.changed() => if r.is_err() { break },
                _ = ctl.wake.notified() => {}
            }
        } else {
            // let the runtime poll its I/O driver and other tasks (the connection's writer among them)
            tokio::task::yield_now().await;
        }
    }
    debug!(stream = stream.name(), conn = %peer.id(), "subscription ended");
}

/// Whether `payload` is exactly one well-formed little-endian kdb+ object
/// (what q's deserializer would accept), checked without building it.
pub fn well_formed(payload: &[u8]) -> bool {
    matches!(qmesh_codec::object_extent(payload, true), Ok(n) if n == payload.len())
}
