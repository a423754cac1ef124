//! Shipping the merged log to a subscriber's local copy (`.rt.ship.pull`): one task per copying connection reads
//! the log from the start of a segment and pushes its records, byte for byte and behind their positions, in
//! batches of at most [`qmesh_rt::ship::BATCH_BYTES`]. Like a subscription it reads only what is synced, and holds
//! at most [`crate::subscription::SUB_QUEUE_BYTES`] queued on the connection before it waits for
//! the socket. Every batch carries the node's first unarchived position; when the archiver moves it and nothing
//! else is new, an empty batch tells the copy within [`FIRST_CHECK`].
//!
//! Events: `skip-forward` and `reset` need no message (the copy sees the next record's position and mirrors the
//! jump); `badtail` does, since a roll looks the same to the copy as a corrupt record followed by the skipped rest
//! of its segment. The records read before it leave first, then `` (`.rt.ship.badtail;`s;at;next) ``, then the
//! records after it, so the copy marks the event exactly where the node's reader reports it. A corrupt record
//! *before* the position the copy asked from, in the same segment, does not cost the copy the rest of that
//! segment: the reader is reopened at that position (readable: the node's own reader from there would read on),
//! and the push says so with `next` = that position.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qmesh_codec::MsgType;
use qmesh_ipc::{ConnId, Peer};
use qmesh_log::{Event, Item, Position, Reader, Start};
use qmesh_rt::ship::{self, Batch};
use tracing::{debug, warn};

use crate::stream::Stream;
use crate::subscription::SUB_QUEUE_BYTES;

/// How often an idle copying connection checks whether the node's first unarchived position moved.
pub const FIRST_CHECK: Duration = Duration::from_secs(1);

/// A copying connection as `/api/streams` shows it (`copies`): whose copy, and how far it has been shipped.
#[derive(Debug)]
pub struct CopyCtl {
    /// The connection (`.z.w`).
    pub conn: ConnId,
    /// Its user name.
    pub user: String,
    /// Its address (`.z.a`).
    pub remote: String,
    /// The stream copied.
    pub stream: String,
    /// The position shipping has reached: every record before it was sent (queued on the connection).
    shipped: AtomicU64,
}

impl CopyCtl {
    /// A copy of `stream` for `peer`, shipped from `start`.
    pub fn new(peer: &Peer, stream: &str, start: u64) -> Arc<CopyCtl> {
        Arc::new(CopyCtl {
            conn: peer.id(),
            user: peer.user().to_string(),
            remote: peer.info().remote.to_string(),
            stream: stream.to_string(),
            shipped: AtomicU64::new(start),
        })
    }

    /// The position shipping has reached.
    pub fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Acquire)
    }
}

/// Feeds `peer`'s copy from `reader` (at the start of `resume`'s segment) until the connection closes; `resume` is
/// the position the copy asked from.
pub async fn ship_out(
    stream: Arc<Stream>,
    peer: Peer,
    mut reader: Reader,
    resume: Position,
    ctl: Arc<CopyCtl>,
) {
    let mut tip = stream.tip();
    let mut batch = Batch::new();
    let mut sent_first = u64::MAX;
    loop {
        if peer.is_closed() {
            break;
        }
        tip.borrow_and_update();
        let mut progressed = false;
        let mut badtail = None;
        while batch.len() < ship::BATCH_BYTES {
            match reader.next() {
                Ok(Some(Item::Entry(e))) => {
                    batch.push(e.position.as_u64(), e.raw());
                    progressed = true;
                }
                // the records before it leave first: the batch ends here
                Ok(Some(Item::Event(Event::Badtail { at, next }))) => {
                    // damage behind where the copy asked from, in the same segment: what follows is readable
                    let next = if at.segment() == resume.segment() && at < resume {
                        match stream.reader(Start::At(resume)) {
                            Ok(r) => {
                                reader = r;
                                resume
                            }
                            Err(e) => {
                                warn!(stream = stream.name(), conn = %peer.id(), error = %e, "reopening the stream failed; copy ended");
                                return;
                            }
                        }
                    } else {
                        next
                    };
                    badtail = Some((at, next));
                    progressed = true;
                    break;
                }
                // the copy sees the jump in the next record's position and mirrors it
                Ok(Some(Item::Event(ev))) => {
                    debug!(stream = stream.name(), conn = %peer.id(), event = ev.name(), "copy crosses an event");
                    progressed = true;
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(stream = stream.name(), conn = %peer.id(), error = %e, "reading the stream failed; copy ended");
                    return;
                }
            }
        }
        let first = stream.first();
        if !batch.is_empty() || first != sent_first {
            let obj = ship::raw_object(stream.name(), first, &batch.take());
            if peer.send_raw(MsgType::Async, obj).is_err() {
                break;
            }
            sent_first = first;
        }
        ctl.shipped.store(reader.position().as_u64(), Ordering::Release);
        if let Some((at, next)) = badtail {
            warn!(stream = stream.name(), conn = %peer.id(), %at, %next, "copy crosses a corrupt record (badtail)");
            if peer.send_async(&ship::badtail_k(stream.name(), at.as_u64(), next.as_u64())).is_err() {
                break;
            }
        }
        if peer.queued_bytes() > SUB_QUEUE_BYTES {
            if peer.flush().await.is_err() {
                break;
            }
            continue;
        }
        if !progressed {
            tokio::select! {
                r = tip.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(FIRST_CHECK) => {}
            }
        }
    }
    debug!(stream = stream.name(), conn = %peer.id(), "copy ended");
}
