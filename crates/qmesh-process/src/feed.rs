//! A sequence-numbered, resumable, bounded change feed.
//!
//! A component that holds state (the discovery registry, a stream node)
//! numbers each change it makes — 1, 2, 3, … with no gap — and pushes it
//! here. The feed keeps the last [`FeedConfig::history`] changes and hands
//! each one to every subscriber's bounded queue.
//!
//! A subscriber says which change it saw last ([`Feed::subscribe`]'s
//! `after`), and the feed answers with a [`Start`]:
//!
//! * [`Start::Replay`]: the changes after that number are still kept; they
//!   come first, then live ones, with no gap and no duplicate.
//! * [`Start::Snapshot`]: the number is older than what is kept (or newer
//!   than anything issued: a number from before a restart), or the
//!   subscriber gave none. The caller sends a fresh snapshot of its state as
//!   of [`Start::Snapshot::seq`], marked as such, and live changes follow
//!   from the next number.
//!
//! For the snapshot to match its number, the caller must make the change
//! and push it under the same lock it holds while taking a snapshot and
//! subscribing (the feed cannot see the caller's state). The registry does
//! exactly that: one mutex around its state and its feed.
//!
//! # Slow consumers
//!
//! Nothing is buffered without bound. Each subscriber's queue holds at most
//! [`FeedConfig::queue`] changes; a subscriber whose queue is full when a
//! change arrives is dropped on the spot, and its [`Subscription::recv`]
//! then returns [`Delivery::Dropped`] with the last number it was given, so
//! it can be told why and may come back with that number. The number of
//! subscribers is bounded by [`FeedConfig::max_subscribers`].
//!
//! Etcd's watch is the model: revisioned changes, resume from a revision,
//! "compacted" when the revision is older than the kept history.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

/// Default number of changes kept for resuming subscribers. At 10,000
/// heartbeats a second that is a few seconds of history, enough for a
/// browser that reconnects at once; older numbers get a snapshot.
pub const DEFAULT_HISTORY: usize = 65_536;

/// Default most subscribers at once.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 256;

/// Default most changes queued for one subscriber before it is dropped.
pub const DEFAULT_QUEUE: usize = 8_192;

/// The bounds of a [`Feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedConfig {
    /// Changes kept for resuming, most recent last (≥ 1).
    pub history: usize,
    /// Subscribers at once; one more is refused with [`FeedError::TooManySubscribers`].
    pub max_subscribers: usize,
    /// Changes queued per subscriber (≥ 1); a full queue drops the subscriber.
    pub queue: usize,
}

impl Default for FeedConfig {
    fn default() -> FeedConfig {
        FeedConfig {
            history: DEFAULT_HISTORY,
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            queue: DEFAULT_QUEUE,
        }
    }
}

/// What can go wrong with a feed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// [`FeedConfig::max_subscribers`] are subscribed already.
    #[error("limit: {0} subscribers already")]
    TooManySubscribers(usize),
    /// A change was pushed with a number other than the next one.
    #[error("change {got} pushed after {head}: changes are numbered head + 1")]
    OutOfOrder {
        /// The last number pushed.
        head: u64,
        /// The number given.
        got: u64,
    },
}

/// How a new subscription starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start<T> {
    /// The changes after the subscriber's number, in order; live changes
    /// follow from the number after the last of these (or after `after`
    /// when the list is empty).
    Replay(Vec<(u64, T)>),
    /// Send a snapshot as of `seq`; live changes follow from `seq + 1`.
    Snapshot {
        /// The number of the last change the snapshot must include.
        seq: u64,
        /// Why: the subscriber gave no number, or one no longer kept.
        reason: SnapshotReason,
    },
}

/// Why a subscriber gets a snapshot rather than a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// The subscriber gave no number: a first subscription.
    New,
    /// The number is older than the oldest change kept.
    TooOld,
    /// The number is newer than the last change issued (a number from
    /// before a restart, or made up).
    Unknown,
}

impl SnapshotReason {
    /// A short word for the wire (`new`, `too old`, `unknown`).
    pub fn word(self) -> &'static str {
        match self {
            SnapshotReason::New => "new",
            SnapshotReason::TooOld => "too old",
            SnapshotReason::Unknown => "unknown",
        }
    }
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery<T> {
    /// The next change, with its number.
    Change(u64, T),
    /// The subscriber fell [`FeedConfig::queue`] changes behind and was
    /// dropped; `last` is the number of the last change it was given (it
    /// may subscribe again after it). Nothing follows.
    Dropped {
        /// The last number delivered before the drop.
        last: u64,
    },
}

/// A subscriber's choice of changes: `true` keeps one. Runs under the feed's lock;
/// keep it cheap, and it must not panic.
pub type Filter<T> = Box<dyn Fn(&T) -> bool + Send + Sync>;

struct Subscriber<T> {
    id: u64,
    tx: mpsc::Sender<(u64, T)>,
    filter: Option<Filter<T>>,
    dropped: Arc<AtomicBool>,
}

struct Inner<T> {
    config: FeedConfig,
    head: u64,
    history: VecDeque<(u64, T)>,
    subscribers: Vec<Subscriber<T>>,
    next_id: u64,
    dropped_total: u64,
}

/// The feed. Cloneable; clones share it.
pub struct Feed<T> {
    inner: Arc<Mutex<Inner<T>>>,
}

impl<T> Clone for Feed<T> {
    fn clone(&self) -> Self {
        Feed { inner: Arc::clone(&self.inner) }
    }
}

impl<T> std::fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Feed")
            .field("head", &inner.head)
            .field("kept", &inner.history.len())
            .field("subscribers", &inner.subscribers.len())
            .finish()
    }
}

impl<T: Clone + Send + 'static> Feed<T> {
    /// An empty feed whose last issued number is `head` (0 for a new
    /// component): the first change pushed is `head + 1`.
    pub fn new(config: FeedConfig, head: u64) -> Feed<T> {
        let config = FeedConfig {
            history: config.history.max(1),
            queue: config.queue.max(1),
            max_subscribers: config.max_subscribers,
        };
        Feed {
            inner: Arc::new(Mutex::new(Inner {
                config,
                head,
                history: VecDeque::with_capacity(config.history.min(1024)),
                subscribers: Vec::new(),
                next_id: 0,
                dropped_total: 0,
            })),
        }
    }

    /// Pushes change number `seq`, which must be the one after the last
    /// pushed. Every subscriber whose filter accepts it gets it; one whose
    /// queue is full is dropped.
    pub fn push(&self, seq: u64, change: T) -> Result<(), FeedError> {
        Self::push_locked(&mut self.lock(), seq, change)
    }

    fn push_locked(inner: &mut Inner<T>, seq: u64, change: T) -> Result<(), FeedError> {
        if seq != inner.head.wrapping_add(1) {
            return Err(FeedError::OutOfOrder { head: inner.head, got: seq });
        }
        inner.head = seq;
        if inner.history.len() == inner.config.history {
            inner.history.pop_front();
        }
        inner.history.push_back((seq, change.clone()));
        let before = inner.subscribers.len();
        inner.subscribers.retain(|s| {
            if s.filter.as_ref().is_some_and(|f| !f(&change)) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send((seq, change.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.dropped.store(true, Ordering::Release);
                    tracing::warn!(subscriber = s.id, seq, "feed subscriber too slow; dropped");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        let gone = before - inner.subscribers.len();
        if gone > 0 {
            // Closed ones are counted too: harmless, and dropped ones dominate.
            inner.dropped_total += gone as u64;
        }
        Ok(())
    }

    /// Numbers and pushes `change` as the next one; returns its number.
    pub fn publish(&self, change: T) -> u64 {
        let mut inner = self.lock();
        let seq = inner.head.wrapping_add(1);
        // Numbered under the same lock, so always the next one.
        let _ = Self::push_locked(&mut inner, seq, change);
        seq
    }

    /// Subscribes after change number `after` (`None`: from now, with a
    /// snapshot). `filter`, if given, chooses the changes this subscriber
    /// wants (a replay is filtered too).
    pub fn subscribe(
        &self,
        after: Option<u64>,
        filter: Option<Filter<T>>,
    ) -> Result<(Start<T>, Subscription<T>), FeedError> {
        let mut inner = self.lock();
        inner.subscribers.retain(|s| !s.tx.is_closed());
        if inner.subscribers.len() >= inner.config.max_subscribers {
            return Err(FeedError::TooManySubscribers(inner.config.max_subscribers));
        }
        let head = inner.head;
        let oldest = inner.history.front().map_or(head + 1, |(s, _)| *s);
        let start = match after {
            None => Start::Snapshot { seq: head, reason: SnapshotReason::New },
            Some(a) if a > head => Start::Snapshot { seq: head, reason: SnapshotReason::Unknown },
            // `a + 1` must still be kept (or be the next to come).
            Some(a) if a + 1 < oldest => Start::Snapshot { seq: head, reason: SnapshotReason::TooOld },
            Some(a) => Start::Replay(
                inner
                    .history
                    .iter()
                    .filter(|(s, c)| *s > a && filter.as_ref().is_none_or(|f| f(c)))
                    .cloned()
                    .collect(),
            ),
        };
        let (tx, rx) = mpsc::channel(inner.config.queue);
        let dropped = Arc::new(AtomicBool::new(false));
        let id = inner.next_id;
        inner.next_id += 1;
        inner.subscribers.push(Subscriber { id, tx, filter, dropped: Arc::clone(&dropped) });
        // Snapshot or replay, the subscriber is up to date with `head`.
        Ok((start, Subscription { rx, dropped, last: AtomicU64::new(head) }))
    }

    /// The number of the last change pushed.
    pub fn head(&self) -> u64 {
        self.lock().head
    }

    /// The oldest number still kept (`head + 1` when none is).
    pub fn oldest(&self) -> u64 {
        let inner = self.lock();
        inner.history.front().map_or(inner.head + 1, |(s, _)| *s)
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        let mut inner = self.lock();
        inner.subscribers.retain(|s| !s.tx.is_closed());
        inner.subscribers.len()
    }

    /// Subscribers removed so far (dropped as too slow, or gone).
    pub fn removed_total(&self) -> u64 {
        self.lock().dropped_total
    }
}

impl<T> Feed<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Nothing in the feed panics while holding the lock (no user code
        // runs under it but the filters, which must not panic); a poisoned
        // lock means a filter did, and the feed's own fields are still whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One subscriber's end of a [`Feed`]. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription<T> {
    rx: mpsc::Receiver<(u64, T)>,
    dropped: Arc<AtomicBool>,
    last: AtomicU64,
}

impl<T> Subscription<T> {
    /// The next change, or [`Delivery::Dropped`] once this subscriber has
    /// been dropped as too slow (after every change queued before the drop
    /// was delivered), or `None` when the feed is gone.
    pub async fn recv(&mut self) -> Option<Delivery<T>> {
        match self.rx.recv().await {
            Some((seq, change)) => {
                self.last.store(seq, Ordering::Relaxed);
                Some(Delivery::Change(seq, change))
            }
            None if self.dropped.load(Ordering::Acquire) => {
                // Say it once.
                self.dropped.store(false, Ordering::Release);
                Some(Delivery::Dropped { last: self.last.load(Ordering::Relaxed) })
            }
            None => None,
        }
    }

    /// The number of the last change delivered (or the start point).
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(history: usize, queue: usize) -> Feed<u32> {
        Feed::new(FeedConfig { history, max_subscribers: 4, queue }, 0)
    }

    async fn drain(sub: &mut Subscription<u32>, n: usize) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for _ in 0..n {
            match sub.recv().await {
                Some(Delivery::Change(s, c)) => out.push((s, c)),
                other => panic!("expected a change, got {other:?}"),
            }
        }
        out
    }

    #[tokio::test]
    async fn new_subscriber_gets_a_snapshot_point_then_live_changes() {
        let f = feed(8, 8);
        f.push(1, 10).unwrap();
        let (start, mut sub) = f.subscribe(None, None).unwrap();
        assert_eq!(start, Start::Snapshot { seq: 1, reason: SnapshotReason::New });
        f.push(2, 20).unwrap();
        f.push(3, 30).unwrap();
        assert_eq!(drain(&mut sub, 2).await, vec![(2, 20), (3, 30)]);
    }

    #[tokio::test]
    async fn resume_replays_without_gap_or_duplicate() {
        let f = feed(100, 100);
        let (_, mut first) = f.subscribe(None, None).unwrap();
        for i in 1..=10 {
            f.push(i, i as u32).unwrap();
        }
        // The subscriber read 4 changes, then its socket dropped.
        let seen = drain(&mut first, 4).await;
        let last = seen.last().unwrap().0;
        drop(first);
        for i in 11..=15 {
            f.push(i, i as u32).unwrap();
        }
        let (start, mut again) = f.subscribe(Some(last), None).unwrap();
        let Start::Replay(replayed) = start else { panic!("expected a replay") };
        f.push(16, 16).unwrap();
        let mut all: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        all.extend(replayed.iter().map(|(s, _)| *s));
        all.extend(drain(&mut again, 1).await.iter().map(|(s, _)| *s));
        assert_eq!(all, (1..=16).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn numbers_older_than_the_history_get_a_fresh_snapshot() {
        let f = feed(3, 8);
        for i in 1..=10 {
            f.push(i, 0).unwrap();
        }
        assert_eq!(f.oldest(), 8);
        // After 7: 8, 9, 10 are kept — a replay.
        assert!(matches!(f.subscribe(Some(7), None).unwrap().0, Start::Replay(v) if v.len() == 3));
        // After 6: 7 is gone.
        assert_eq!(
            f.subscribe(Some(6), None).unwrap().0,
            Start::Snapshot { seq: 10, reason: SnapshotReason::TooOld }
        );
        // A number never issued (from before a restart).
        assert_eq!(
            f.subscribe(Some(99), None).unwrap().0,
            Start::Snapshot { seq: 10, reason: SnapshotReason::Unknown }
        );
        // Up to date: an empty replay.
        assert_eq!(f.subscribe(Some(10), None).unwrap().0, Start::Replay(vec![]));
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_and_dropped_and_others_go_on() {
        let f = feed(100, 2);
        let (_, mut slow) = f.subscribe(None, None).unwrap();
        let (_, mut fast) = f.subscribe(None, None).unwrap();
        f.push(1, 1).unwrap();
        f.push(2, 2).unwrap();
        assert_eq!(drain(&mut fast, 2).await.len(), 2);
        f.push(3, 3).unwrap(); // slow's queue (2) is full: dropped
        assert_eq!(f.subscribers(), 1);
        assert_eq!(drain(&mut slow, 2).await, vec![(1, 1), (2, 2)]);
        assert_eq!(slow.recv().await, Some(Delivery::Dropped { last: 2 }));
        assert_eq!(slow.recv().await, None);
        assert_eq!(drain(&mut fast, 1).await, vec![(3, 3)]);
        // It may come back after the last number it got, and miss nothing.
        let (start, _) = f.subscribe(Some(2), None).unwrap();
        assert_eq!(start, Start::Replay(vec![(3, 3)]));
    }

    #[tokio::test]
    async fn subscribers_are_bounded() {
        let f = feed(4, 4);
        let subs: Vec<_> = (0..4).map(|_| f.subscribe(None, None).unwrap()).collect();
        assert_eq!(f.subscribe(None, None).unwrap_err(), FeedError::TooManySubscribers(4));
        drop(subs);
        assert!(f.subscribe(None, None).is_ok());
    }

    #[tokio::test]
    async fn filters_choose_changes_in_replay_and_live() {
        let f = feed(100, 100);
        for i in 1..=6 {
            f.push(i, i as u32).unwrap();
        }
        let even: Filter<u32> = Box::new(|c| c % 2 == 0);
        let (start, mut sub) = f.subscribe(Some(1), Some(even)).unwrap();
        assert_eq!(start, Start::Replay(vec![(2, 2), (4, 4), (6, 6)]));
        f.push(7, 7).unwrap();
        f.push(8, 8).unwrap();
        assert_eq!(drain(&mut sub, 1).await, vec![(8, 8)]);
    }

    #[test]
    fn pushes_must_be_in_order() {
        let f = feed(4, 4);
        assert_eq!(f.push(2, 0), Err(FeedError::OutOfOrder { head: 0, got: 2 }));
        assert_eq!(f.publish(5), 1);
        assert_eq!(f.publish(6), 2);
        let resumed: Feed<u32> = Feed::new(FeedConfig::default(), 41);
        assert_eq!(resumed.publish(0), 42);
    }
}
