//! Write batching: many small messages, few syscalls.
//!
//! A message normally leaves from the task that queued it, in one
//! non-blocking `writev` ([`crate::link`]). Two mechanisms, both per
//! thread, gather the writes of a burst:
//!
//! * **Deferral within a read.** While a read loop handles the messages of
//!   one read, the connections its handlers write to are noted, once each,
//!   instead of written. When the batch is handled (before the next read)
//!   or the task suspends, the connection just read from is written at
//!   once: forty answers to forty pipelined requests leave in one syscall.
//! * **Corking across reads.** Writes that a read caused on *other*
//!   connections stay corked on the thread until it runs out of work (the
//!   runtime calls [`on_thread_park`] just before the thread sleeps), or
//!   [`MAX_CORKED_READS`] reads later, or once [`MAX_CORK_DELAY`] has passed
//!   since the first (checked whenever this thread finishes a read or
//!   writes outside one). A gateway that reads one request from each of
//!   sixty-four clients then sends them on to a service in one `writev`,
//!   not sixty-four; the service reads them in one `read` and answers them
//!   in one `writev`. This is Redis's write of pending replies in
//!   `beforeSleep`.
//!
//! Corking needs [`on_thread_park`] installed on the runtime
//! (`tokio::runtime::Builder::on_thread_park`); a thread that has never
//! run it never corks (it writes other connections at the end of each
//! batch instead), so a runtime without the hook is correct, only less
//! batched. Nothing deferred outlives a suspension of its task, and
//! nothing corked outlives the thread's next park, so a handler that waits
//! for the answer to something it sent cannot wait on its own unwritten
//! output.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

// tokio's clock, so tests can move it (it is the system clock otherwise)
use tokio::time::Instant;

use crate::link::{ConnId, Link};

/// Most reads a thread finishes while writes stay corked: a bound on how
/// long a busy thread, which does not park, holds them (reads).
pub const MAX_CORKED_READS: u32 = 16;

/// Longest a write stays corked on a busy thread, checked when the thread
/// finishes a read or writes outside one. Well under one network round
/// trip between hosts.
pub const MAX_CORK_DELAY: Duration = Duration::from_micros(50);

/// The read loop being polled on this thread.
struct Scope {
    /// The connection it reads.
    own: ConnId,
    /// The connections its handlers wrote to, in first-write order.
    links: Vec<Arc<Link>>,
}

#[derive(Default)]
struct ThreadBatch {
    /// Set while a read loop is polled.
    scope: Option<Scope>,
    /// Connections written to by earlier reads, not yet written.
    corked: Vec<Arc<Link>>,
    /// When the first of `corked` was corked.
    corked_at: Option<Instant>,
    /// Reads finished since then.
    corked_reads: u32,
    /// The runtime runs [`on_thread_park`] on this thread.
    parks_flush: bool,
    /// An empty list kept for the next read loop poll, so that setting up
    /// a batch allocates nothing.
    spare: Vec<Arc<Link>>,
}

thread_local! {
    static BATCH: RefCell<ThreadBatch> = RefCell::new(ThreadBatch::default());
}

/// Install with `tokio::runtime::Builder::on_thread_park` on a runtime that
/// serves many connections: the thread writes what is corked before it
/// sleeps, and from then on corks (see the module docs).
pub fn on_thread_park() {
    BATCH.with_borrow_mut(|b| b.parks_flush = true);
    flush_corked();
}

/// Notes `link` in the running read loop's batch; false outside a read
/// loop (the caller writes at once).
pub(crate) fn defer(link: &Arc<Link>) -> bool {
    BATCH.with_borrow_mut(|b| match &mut b.scope {
        Some(scope) => {
            scope.links.push(link.clone());
            true
        }
        None => false,
    })
}

/// The running read loop has handled a batch: its own connection is
/// written now, others corked (or written, on a thread that does not
/// cork); corks that are due are written.
pub(crate) fn end_of_batch() {
    let mut write = BATCH.with_borrow_mut(|b| {
        let ThreadBatch { scope, corked, corked_at, corked_reads, parks_flush, .. } = b;
        let Some(scope) = scope else { return Vec::new() };
        let mut links = std::mem::take(&mut scope.links);
        if *parks_flush {
            let was_empty = corked.is_empty();
            let own = scope.own;
            corked.extend(links.extract_if(.., |l| l.info.id != own));
            if was_empty && !corked.is_empty() {
                *corked_at = Some(Instant::now());
                *corked_reads = 0;
            }
        }
        links
    });
    for link in write.drain(..) {
        link.write_queued();
    }
    let due = BATCH.with_borrow_mut(|b| {
        // give the allocation back for the next batch
        if let Some(scope) = &mut b.scope
            && scope.links.is_empty()
        {
            scope.links = write;
        }
        if b.corked.is_empty() {
            return false;
        }
        b.corked_reads += 1;
        b.corked_reads >= MAX_CORKED_READS || b.corked_at.is_some_and(|t| t.elapsed() >= MAX_CORK_DELAY)
    });
    if due {
        flush_corked();
    }
}

/// Called before a write outside a read loop: writes the corks if they are
/// overdue (a thread busy with other work).
pub(crate) fn check_corks() {
    let due = BATCH
        .with_borrow(|b| !b.corked.is_empty() && b.corked_at.is_some_and(|t| t.elapsed() >= MAX_CORK_DELAY));
    if due {
        flush_corked();
    }
}

/// Writes every corked connection, in the order they were corked.
fn flush_corked() {
    let mut corked = BATCH.with_borrow_mut(|b| {
        b.corked_at = None;
        std::mem::take(&mut b.corked)
    });
    if corked.is_empty() {
        return;
    }
    for link in corked.drain(..) {
        link.write_queued();
    }
    // give the allocation back for the next cork (writing corks nothing)
    BATCH.with_borrow_mut(|b| {
        if b.corked.is_empty() {
            b.corked = corked;
        }
    });
}

/// Gathers the messages this thread queues on any connection until it is dropped, then writes each of those
/// connections once (one `writev` per connection, up to [`crate::link::MAX_IOVECS`] frames each; the writer task
/// takes the rest). For a synchronous stretch of code outside a read loop that sends many messages: a stream's
/// writer thread answering a group-committed batch of publishers, a subscription task pushing a batch of records.
/// Without it each message is its own `writev` (a syscall per message).
///
/// Hold it only across code that does not wait: it must be dropped before an `.await` or a blocking wait, or the
/// gathered messages wait with it. Inside a read loop (or another `Gather`) it does nothing: the enclosing batch
/// already gathers. Not `Send`: it belongs to the thread that made it.
#[must_use = "a Gather writes when it is dropped"]
#[derive(Debug)]
pub struct Gather {
    active: bool,
    _thread: std::marker::PhantomData<*const ()>,
}

/// The connection id a [`Gather`] scope stands under: no read loop's, so no connection is treated as "the one
/// read from".
const GATHER_OWNER: ConnId = ConnId(u64::MAX);

impl Gather {
    /// Starts gathering on this thread (a no-op inside an enclosing batch).
    pub fn new() -> Gather {
        let active = BATCH.with_borrow_mut(|b| {
            if b.scope.is_some() {
                return false;
            }
            let links = std::mem::take(&mut b.spare);
            b.scope = Some(Scope { own: GATHER_OWNER, links });
            true
        });
        Gather { active, _thread: std::marker::PhantomData }
    }
}

impl Default for Gather {
    fn default() -> Gather {
        Gather::new()
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let mut links = BATCH.with_borrow_mut(|b| b.scope.take().map(|s| s.links).unwrap_or_default());
        for link in links.drain(..) {
            link.write_queued();
        }
        BATCH.with_borrow_mut(|b| {
            if b.spare.is_empty() {
                b.spare = links;
            }
        });
    }
}

/// A read loop's future, run with its writes batched: the scope is set up
/// around each poll and its batch ended when the poll returns (even by
/// panic), so nothing deferred outlives a suspension.
pub(crate) struct Batched<F> {
    inner: Pin<Box<F>>,
    own: ConnId,
}

impl<F: Future> Batched<F> {
    pub(crate) fn new(own: ConnId, inner: F) -> Batched<F> {
        Batched { inner: Box::pin(inner), own }
    }
}

impl<F: Future> Future for Batched<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Ends the batch and restores an enclosing scope (none in
        /// practice: each read loop is its own task).
        struct Exit(Option<Scope>);
        impl Drop for Exit {
            fn drop(&mut self) {
                end_of_batch();
                let outer = self.0.take();
                BATCH.with_borrow_mut(|b| {
                    if let Some(done) = std::mem::replace(&mut b.scope, outer)
                        && done.links.is_empty()
                    {
                        b.spare = done.links;
                    }
                });
            }
        }
        let own = self.own;
        let outer = BATCH.with_borrow_mut(|b| {
            let links = std::mem::take(&mut b.spare);
            b.scope.replace(Scope { own, links })
        });
        let _exit = Exit(outer);
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::tests::{limits, link, nothing_written, read_messages};
    use crate::link::{Peer, Responder};
    use qmesh_codec::K;

    fn values(theirs: &mut std::os::unix::net::UnixStream, n: usize) -> Vec<K> {
        read_messages(theirs, n).iter().map(|m| m.decode().unwrap()).collect()
    }

    /// Inside a read loop's batch nothing is written until the batch ends;
    /// then each connection gets one write, in order.
    #[tokio::test]
    async fn a_batch_is_written_when_it_ends() {
        BATCH.with_borrow_mut(|b| b.parks_flush = false);
        let (own, mut own_far, _r1) = link(limits()).await;
        let (other, mut other_far, _r2) = link(limits()).await;
        let (own_peer, other_peer) = (Peer { link: own.clone() }, Peer { link: other.clone() });
        Batched::new(own.info.id, async {
            for i in 0..3 {
                Responder::new(own.clone()).unwrap().reply(K::long(i)).unwrap();
                other_peer.send_async(&K::long(10 + i)).unwrap();
            }
            own_peer.send_async(&K::long(3)).unwrap();
            assert!(nothing_written(&mut own_far), "deferred to the end of the batch");
            assert!(nothing_written(&mut other_far));
        })
        .await;
        // this thread never ran on_thread_park: nothing is corked
        assert_eq!(values(&mut own_far, 4), vec![K::long(0), K::long(1), K::long(2), K::long(3)]);
        assert_eq!(values(&mut other_far, 3), vec![K::long(10), K::long(11), K::long(12)]);
    }

    /// A `Gather` outside a read loop holds every message until it is dropped; then each connection gets one
    /// write, in order. Nested inside another it does nothing.
    #[tokio::test]
    async fn a_gather_writes_when_dropped() {
        let (a, mut a_far, _r1) = link(limits()).await;
        let (b, mut b_far, _r2) = link(limits()).await;
        let (pa, pb) = (Peer { link: a.clone() }, Peer { link: b.clone() });
        {
            let _g = Gather::new();
            let inner = Gather::new();
            assert!(!inner.active, "an enclosing scope already gathers");
            drop(inner);
            // fewer than MAX_IOVECS frames: the one write at the end takes them all (no writer task needed here)
            for i in 0..20 {
                pa.send_async(&K::long(i)).unwrap();
                pb.send_async(&K::long(1000 + i)).unwrap();
            }
            assert!(nothing_written(&mut a_far), "held until the gather ends");
            assert!(nothing_written(&mut b_far));
        }
        assert_eq!(values(&mut a_far, 20), (0..20).map(K::long).collect::<Vec<_>>());
        assert_eq!(values(&mut b_far, 20), (1000..1020).map(K::long).collect::<Vec<_>>());
        // without one, a message leaves at once
        pa.send_async(&K::long(7)).unwrap();
        assert_eq!(values(&mut a_far, 1), vec![K::long(7)]);
    }

    /// On a thread whose runtime flushes at park, writes to other
    /// connections stay corked past the batch until the thread parks; the
    /// connection read from is written at the batch's end.
    // paused clock: the cork deadline must not pass while the test runs
    #[tokio::test(start_paused = true)]
    async fn other_connections_are_corked_until_park() {
        on_thread_park();
        let (own, mut own_far, _r1) = link(limits()).await;
        let (other, mut other_far, _r2) = link(limits()).await;
        let other_peer = Peer { link: other.clone() };
        Batched::new(own.info.id, async {
            Responder::new(own.clone()).unwrap().reply(K::long(1)).unwrap();
            other_peer.send_async(&K::long(2)).unwrap();
        })
        .await;
        assert_eq!(values(&mut own_far, 1), vec![K::long(1)]);
        assert!(nothing_written(&mut other_far), "corked");
        // a second batch writing the same connection joins the cork
        Batched::new(own.info.id, async { other_peer.send_async(&K::long(3)).unwrap() }).await;
        assert!(nothing_written(&mut other_far));
        on_thread_park();
        assert_eq!(values(&mut other_far, 2), vec![K::long(2), K::long(3)]);
    }

    /// A thread that never parks still writes its corks after
    /// MAX_CORKED_READS reads.
    // paused clock: the cork deadline must not pass while the test runs
    #[tokio::test(start_paused = true)]
    async fn corks_are_bounded_by_reads() {
        on_thread_park();
        let (own, _own_far, _r1) = link(limits()).await;
        let (other, mut other_far, _r2) = link(limits()).await;
        let other_peer = Peer { link: other.clone() };
        Batched::new(own.info.id, async { other_peer.send_async(&K::long(7)).unwrap() }).await;
        // the batch that corked counts as the first read
        for _ in 1..MAX_CORKED_READS - 1 {
            Batched::new(own.info.id, async {}).await;
        }
        assert!(nothing_written(&mut other_far));
        Batched::new(own.info.id, async {}).await;
        assert_eq!(values(&mut other_far, 1), vec![K::long(7)]);
    }

    /// Outside a read loop a write goes out at once, and first writes what
    /// is corked past its deadline.
    #[tokio::test(start_paused = true)]
    async fn overdue_corks_go_with_the_next_write() {
        on_thread_park();
        let (own, _own_far, _r1) = link(limits()).await;
        let (other, mut other_far, _r2) = link(limits()).await;
        let (third, mut third_far, _r3) = link(limits()).await;
        let other_peer = Peer { link: other.clone() };
        Batched::new(own.info.id, async { other_peer.send_async(&K::long(1)).unwrap() }).await;
        assert!(nothing_written(&mut other_far));
        tokio::time::advance(MAX_CORK_DELAY).await;
        Peer { link: third.clone() }.send_async(&K::long(2)).unwrap();
        assert_eq!(values(&mut third_far, 1), vec![K::long(2)]);
        assert_eq!(values(&mut other_far, 1), vec![K::long(1)]);
    }
}
