//! `qmesh feed`: a publisher of realistic trades and quotes, for `qmesh up`,
//! demos and benchmarks.
//!
//! ```text
//! qmesh feed --rt HOST:PORT --stream NAME --rate N [--symbols a,b,c] [--seed S] [--count N] [--batch N] [--rows N]
//! ```
//!
//! Each message is `` (`upd;`trade;t) `` or `` (`upd;`quote;t) `` (one in
//! four a trade), `t` a table of [`FeedSpec::rows`] rows in the shape of
//! the whitepaper's `egTrade`/`egQuote` and of the service's [`demo`]
//! tables, so the same SQL runs on either:
//!
//! | table | columns (kdb+ types) |
//! |---|---|
//! | `trade` | `date` (d) `sym` (s) `time` (t) `price` (f) `size` (j) |
//! | `quote` | `date` (d) `sym` (s) `time` (t) `bid` (f) `ask` (f) |
//!
//! Prices are a random walk per symbol in cents (never below $1); a quote
//! is a bid/ask around the symbol's mid with a spread of 1–5 cents, a trade
//! happens at the bid or the ask, 100–1000 shares. `date` and `time` are
//! the wall clock (UTC) when the message is made; everything else follows
//! from `--seed`, so two runs with one seed publish the same symbols,
//! prices and sizes.
//!
//! # Rate and batches
//!
//! The feed publishes at most `rate` messages a second on average: every
//! tick it publishes the messages due since the start (`elapsed × rate`),
//! in batches of at most `batch`. A batch is one write and one fsync of the
//! local log ([`Publisher::publish_batch`], group commit), and publishing
//! returns once the batch is there, so the rate is bound by the local disk,
//! not by a round trip to the node. The rate achieved is logged every
//! [`REPORT_EVERY`].
//!
//! # Delivery: a publisher with a local log
//!
//! The feed is an rt.qpk publisher ([`qmesh_rt::publisher::Publisher`]):
//! every message goes to its local log
//! `PATH/PUBLISHER_ID.HOSTNAME.STREAM` first, and a background task ships
//! the log to the node, resuming from what the node acknowledged after any
//! disconnect. So the feed keeps publishing while the node is down and
//! loses nothing: what the node has not taken stays in the local log and is
//! shipped when it returns — or by the next start of a feed with the same
//! `publisher_id` (the directory is locked: two feeds with one id on one
//! host refuse to run). Nothing is stored twice. A refusal (a message over
//! the size limit) stops the feed with that error.
//!
//! With [`FeedConfig::count`], [`run`] returns once the node has
//! acknowledged every message ([`Publisher::flush`]), or at `stop`.
//!
//! [`demo`]: crate::demo

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use qmesh_codec::{Attr, K, RawObject, Symbols, Table, Vector};
use qmesh_process::Shutdown;
use qmesh_rt::publisher::{Header, Publisher, PublisherConfig, PublisherError};
use qmesh_rt::{backlog, probe};
use tracing::{info, warn};

use crate::demo::{DEFAULT_SEED, DEMO_SYMS, Rng};
use crate::mapping::KDB_EPOCH_DAYS;

/// Longest a stopped feed waits for the node to acknowledge the messages it
/// has not yet taken before it exits: enough for a connected node to take
/// the last batches, short enough not to hold up a SIGTERM. What is still
/// unacknowledged then stays in the local log, and the next start ships it.
pub const STOP_ACK_WAIT: Duration = Duration::from_secs(3);

/// How often the achieved rate is logged.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Most messages in one batch (one write and one fsync of the local log):
/// bounds the memory a batch holds and the time one batch takes.
pub const MAX_BATCH: usize = 8192;

/// Most rows in one message.
pub const MAX_ROWS: usize = 100_000;

/// Shortest tick of the rate limiter (tokio's timer resolution).
const MIN_TICK: Duration = Duration::from_millis(1);

/// Longest tick, so a low rate still sends on time.
const MAX_TICK: Duration = Duration::from_millis(100);

/// Errors of the feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The publisher failed: its local log, a refused message, its directory locked by another feed.
    #[error("{0}")]
    Publisher(#[from] PublisherError),
    /// The blocking task writing the local log failed.
    #[error("publishing task: {0}")]
    Task(String),
    #[error("bad spec: {0}")]
    Spec(String),
    /// The node answered that it has no such stream: a configuration error, not retried.
    #[error("{0}")]
    UnknownStream(#[from] probe::UnknownStream),
}

/// What the generator makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSpec {
    /// The symbols, each with its own random walk.
    pub symbols: Vec<String>,
    /// Seed of prices, sizes and symbol choices.
    pub seed: u64,
    /// Rows in each message's table.
    pub rows: usize,
}

impl Default for FeedSpec {
    /// The demo's symbols, its seed, one row a message.
    fn default() -> FeedSpec {
        FeedSpec { symbols: DEMO_SYMS.iter().map(|s| s.to_string()).collect(), seed: DEFAULT_SEED, rows: 1 }
    }
}

impl FeedSpec {
    fn check(&self) -> Result<(), FeedError> {
        if self.symbols.is_empty() {
            return Err(FeedError::Spec("no symbols".into()));
        }
        if self.rows == 0 || self.rows > MAX_ROWS {
            return Err(FeedError::Spec(format!(
                "rows per message must be 1..={MAX_ROWS}, got {}",
                self.rows
            )));
        }
        Ok(())
    }
}

/// The wall clock as kdb+ `date` (days since 2000.01.01) and `time`
/// (milliseconds since midnight), UTC.
pub fn kdb_now() -> (i32, i32) {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let ms = d.as_millis() as i64;
    let days = ms.div_euclid(86_400_000);
    ((days - i64::from(KDB_EPOCH_DAYS)) as i32, ms.rem_euclid(86_400_000) as i32)
}

/// The random walks: one mid price per symbol, in cents.
#[derive(Debug, Clone)]
pub struct Generator {
    spec: FeedSpec,
    rng: Rng,
    mids: Vec<i64>,
    made: u64,
}

impl Generator {
    pub fn new(spec: FeedSpec) -> Result<Generator, FeedError> {
        spec.check()?;
        let mids = (0..spec.symbols.len() as i64).map(|i| 10_000 + 1_000 * (i % 50)).collect();
        Ok(Generator { rng: Rng(spec.seed), mids, spec, made: 0 })
    }

    /// Messages made so far.
    pub fn made(&self) -> u64 {
        self.made
    }

    /// The next message, dated `date` at `time` (kdb+ date and time):
    /// `` (`upd;`quote;t) `` three times in four, else `` (`upd;`trade;t) ``.
    pub fn next_message(&mut self, date: i32, time: i32) -> K {
        self.made += 1;
        let trade = self.rng.below(4) == 0;
        let n = self.spec.rows;
        let mut syms = Symbols::with_capacity(n, n * 5);
        let (mut a, mut b, mut sizes) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let s = self.rng.below(self.mids.len() as u64) as usize;
            let step = self.rng.below(21) as i64 - 10;
            self.mids[s] = (self.mids[s] + step).max(100);
            let spread = 1 + self.rng.below(5) as i64;
            let bid = self.mids[s] - spread / 2;
            let ask = bid + spread;
            syms.push(self.spec.symbols[s].as_bytes());
            if trade {
                let px = if self.rng.below(2) == 0 { bid } else { ask };
                a.push(px as f64 / 100.0);
                sizes.push(100 * (1 + self.rng.below(10) as i64));
            } else {
                a.push(bid as f64 / 100.0);
                b.push(ask as f64 / 100.0);
            }
        }
        let (name, cols, last) = if trade {
            ("trade", ["date", "sym", "time", "price", "size"], K::from(Vector::Long(sizes)))
        } else {
            ("quote", ["date", "sym", "time", "bid", "ask"], K::from(Vector::Float(b)))
        };
        let table = K::Table(Table {
            attr: Attr::None,
            names: cols.into_iter().collect(),
            columns: vec![
                K::from(Vector::Date(vec![date; n])),
                K::from(Vector::Symbol(syms)),
                K::from(Vector::Time(vec![time; n])),
                K::from(Vector::Float(a)),
                last,
            ],
        });
        K::list(vec![K::sym("upd"), K::sym(name), table])
    }
}

/// How the feed runs.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// The nodes the local log is shipped to (`host:port`, `:host:port:user:password`), tried in turn.
    pub cluster: Vec<String>,
    /// The stream.
    pub stream: String,
    /// The parent of the local log's directory (rt.qpk's `path`).
    pub path: PathBuf,
    /// The publisher's stable id (rt.qpk's `publisher_id`): names the local
    /// log and the publisher on the node, so a restarted feed resumes its log.
    pub publisher_id: String,
    /// Messages per second, on average.
    pub rate: f64,
    /// Stop after this many messages (`None`: until stopped).
    pub count: Option<u64>,
    /// Most messages in one batch.
    pub batch: usize,
    pub spec: FeedSpec,
}

/// What a feed did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedReport {
    /// Messages published this run: written (and synced) to the local log.
    pub sent: u64,
    /// How many of them the node acknowledged (holds durably) by the end of
    /// the run; the rest stay in the local log for the next start.
    pub acknowledged_messages: u64,
    /// The local log's position of the last message (0: none).
    pub position: u64,
    /// Whether the node acknowledged every message published (`false`: some
    /// wait in the local log for the node, or for the next start).
    pub acknowledged: bool,
    /// From the start to the last message written.
    pub elapsed: Duration,
}

impl FeedReport {
    /// Messages per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Writes `msgs` (at least one) to the local log as one batch, off the
/// async threads; returns the local positions of the first and the last.
async fn publish(publisher: &Arc<Publisher>, msgs: Vec<K>) -> Result<(u64, u64), FeedError> {
    let p = Arc::clone(publisher);
    tokio::task::spawn_blocking(move || {
        let raw: Vec<RawObject> = msgs.iter().map(RawObject::encode).collect();
        let header = Header::default();
        let positions = p.publish_batch(raw.iter().map(|r| (r.bytes().as_ref(), &header)))?;
        Ok((positions.first().map_or(0, |p| p.as_u64()), positions.last().map_or(0, |p| p.as_u64())))
    })
    .await
    .map_err(|e| FeedError::Task(e.to_string()))?
}

/// Publishes until `config.count` messages are acknowledged by the node or
/// `stop` triggers; a batch being written at `stop` is finished first.
///
/// Before the local log is opened the node is asked whether it hosts the
/// stream ([`qmesh_rt::probe`]): `'unknown stream` fails at once
/// ([`FeedError::UnknownStream`]), nothing written. A node that cannot be
/// reached is not an error (the local log is for that): it is asked again
/// in the background until it answers, and an `'unknown stream` then stops
/// the feed with the same error (what was published stays in the local
/// log).
///
/// Stopped without `count` (or before the node acknowledged everything),
/// it waits at most [`STOP_ACK_WAIT`] for the node to take the rest, then
/// reports how many of this run's messages the node has not acknowledged:
/// they stay in the local log, and the next start of a feed with the same
/// `publisher_id` ships them.
pub async fn run(config: FeedConfig, stop: Shutdown) -> Result<FeedReport, FeedError> {
    if !(config.rate > 0.0 && config.rate.is_finite()) {
        return Err(FeedError::Spec(format!(
            "rate must be a positive number of messages a second, got {}",
            config.rate
        )));
    }
    if config.batch == 0 || config.batch > MAX_BATCH {
        return Err(FeedError::Spec(format!("batch must be 1..={MAX_BATCH}, got {}", config.batch)));
    }
    if config.cluster.is_empty() {
        return Err(FeedError::Spec("no node to publish to".into()));
    }
    let mut generator = Generator::new(config.spec.clone())?;
    let mut pc = PublisherConfig::new(&config.stream);
    pc.path = config.path.clone();
    pc.publisher_id = Some(config.publisher_id.clone());
    pc.cluster = config.cluster.clone();
    let role = probe::Role::Publisher { key: pc.dir_name() };
    // a stream the node does not host is a configuration error; a node that is down is not
    let mut asking = match probe::ask_once(&config.cluster, &config.stream, &role).await {
        probe::Answer::Answered => None,
        probe::Answer::Unknown(e) => return Err(FeedError::UnknownStream(e)),
        probe::Answer::Unreachable(why) => {
            warn!(stream = config.stream, error = %why, "the stream node cannot be reached yet; publishing to the local log");
            let (cluster, stream) = (config.cluster.clone(), config.stream.clone());
            Some(Box::pin(async move { probe::until_answered(&cluster, &stream, &role).await }))
        }
    };
    let publisher = Arc::new(Publisher::start(pc).await?);
    info!(
        key = publisher.key(),
        dir = %publisher.dir().display(),
        cluster = ?config.cluster,
        "feed publishing through its local log"
    );
    let started = Instant::now();
    let mut report = FeedReport {
        sent: 0,
        acknowledged_messages: 0,
        position: 0,
        acknowledged: false,
        elapsed: Duration::ZERO,
    };
    // the local position of this run's first message
    let mut first: Option<u64> = None;
    let tick = Duration::from_secs_f64(1.0 / config.rate).clamp(MIN_TICK, MAX_TICK);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut window_at, mut window_sent) = (Instant::now(), 0u64);
    let limit = config.count.unwrap_or(u64::MAX);
    let mut refused: Option<probe::UnknownStream> = None;
    'outer: while report.sent < limit {
        tokio::select! {
            _ = stop.triggered() => break,
            _ = ticker.tick() => {}
            r = async { asking.as_mut().expect("guarded").await }, if asking.is_some() => {
                asking = None;
                if let Err(e) = r {
                    refused = Some(e);
                    break;
                }
                continue;
            }
        }
        let due = ((started.elapsed().as_secs_f64() * config.rate) as u64).min(limit);
        while report.sent < due {
            let n = (due - report.sent).min(config.batch as u64) as usize;
            let (date, time) = kdb_now();
            let msgs: Vec<K> = (0..n).map(|_| generator.next_message(date, time)).collect();
            let (head, last) = publish(&publisher, msgs).await?;
            first.get_or_insert(head);
            report.position = last;
            report.sent += n as u64;
            if window_at.elapsed() >= REPORT_EVERY {
                let secs = window_at.elapsed().as_secs_f64();
                info!(
                    sent = report.sent,
                    rate = format!("{:.0}", (report.sent - window_sent) as f64 / secs),
                    target = config.rate,
                    acked = ?publisher.acked().map(|p| p.as_u64()),
                    position = report.position,
                    "feed rate (messages/s over the last window)"
                );
                (window_at, window_sent) = (Instant::now(), report.sent);
            }
            if stop.is_triggered() {
                break 'outer;
            }
        }
    }
    report.elapsed = started.elapsed();
    let all_acked =
        |p: &Publisher| report.sent == 0 || p.acked().is_some_and(|a| a.as_u64() >= report.position);
    if refused.is_none() && !all_acked(&publisher) {
        // with --count: until the node has everything (or a stop); stopped: a bounded wait
        let bound = if config.count.is_some() && !stop.is_triggered() { None } else { Some(STOP_ACK_WAIT) };
        let wait = bound.map_or_else(|| "until it has everything".to_string(), |b| format!("at most {b:?}"));
        info!(
            sent = report.sent,
            rate = format!("{:.0}", report.rate()),
            position = report.position,
            acked = ?publisher.acked().map(|p| p.as_u64()),
            "feed done writing; waiting {wait} for the node to acknowledge the rest"
        );
        let flushed = async {
            match bound {
                Some(b) => tokio::time::timeout(b, publisher.flush()).await.unwrap_or(Ok(())),
                None => publisher.flush().await,
            }
        };
        tokio::select! {
            _ = stop.triggered(), if bound.is_none() => {}
            r = flushed => r?,
            r = async { asking.as_mut().expect("guarded").await }, if asking.is_some() => {
                if let Err(e) = r {
                    refused = Some(e);
                }
            }
        }
    }
    report.acknowledged = all_acked(&publisher);
    let left = match first {
        Some(from) if !report.acknowledged => {
            let (log, acked) = (publisher.local_log().clone(), publisher.acked().map(|p| p.as_u64()));
            tokio::task::spawn_blocking(move || backlog::unacknowledged(&log, from, acked))
                .await
                .map_err(|e| FeedError::Task(e.to_string()))?
                .map_err(PublisherError::Log)?
        }
        _ => 0,
    };
    report.acknowledged_messages = report.sent - left.min(report.sent);
    if report.acknowledged {
        info!(
            sent = report.sent,
            position = report.position,
            "the node acknowledged every message published"
        );
    } else if refused.is_none() {
        warn!(
            dir = %publisher.dir().display(),
            unacknowledged = left,
            position = report.position,
            acked = ?publisher.acked().map(|p| p.as_u64()),
            "stopped with {left} of the {} messages published not yet acknowledged by the node: they stay in the \
             local log, and the next start of this feed (same --name) ships them",
            report.sent
        );
    }
    if let Ok(p) = Arc::try_unwrap(publisher) {
        p.close().await;
    }
    match refused {
        Some(e) => Err(FeedError::UnknownStream(e)),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Ingest, Store};
    use qmesh_codec::Atom;

    #[test]
    fn messages_fit_the_demo_tables() {
        let demo = Store::default();
        crate::demo::generate(&demo, crate::demo::DemoSpec { trades: 10, quotes: 10, date: 9000, seed: 1 })
            .expect("demo");
        let mut g = Generator::new(FeedSpec { rows: 3, ..FeedSpec::default() }).expect("gen");
        let (mut trades, mut quotes) = (0, 0);
        for _ in 0..200 {
            let m = g.next_message(9000, 34_200_000);
            let K::List(_, items) = m else { panic!("a list") };
            let [_, K::Atom(Atom::Symbol(t)), data] = <[K; 3]>::try_from(items).expect("3 items") else {
                panic!("upd shape")
            };
            let t = String::from_utf8(t.to_vec()).expect("utf8");
            // appends to the demo's tables: same columns, same types
            assert_eq!(demo.upd(&t, data).expect("fits the demo table"), 3);
            if t == "trade" { trades += 1 } else { quotes += 1 }
        }
        assert!(trades > 20 && quotes > 100, "{trades} trades, {quotes} quotes");
    }

    #[test]
    fn seeded() {
        let spec = FeedSpec { symbols: vec!["A".into(), "B".into()], seed: 9, rows: 2 };
        let mut a = Generator::new(spec.clone()).expect("a");
        let mut b = Generator::new(spec).expect("b");
        for _ in 0..100 {
            assert_eq!(a.next_message(1, 2), b.next_message(1, 2));
        }
        assert!(Generator::new(FeedSpec { symbols: vec![], ..FeedSpec::default() }).is_err());
        assert!(Generator::new(FeedSpec { rows: 0, ..FeedSpec::default() }).is_err());
    }

    #[test]
    fn quotes_have_a_positive_spread() {
        let mut g = Generator::new(FeedSpec::default()).expect("g");
        for _ in 0..1000 {
            let K::List(_, items) = g.next_message(0, 0) else { panic!() };
            if items[1] == K::sym("quote") {
                let K::Table(t) = &items[2] else { panic!() };
                let (K::Vector(_, Vector::Float(bid)), K::Vector(_, Vector::Float(ask))) =
                    (&t.columns[3], &t.columns[4])
                else {
                    panic!()
                };
                assert!(bid.iter().zip(ask).all(|(b, a)| a > b && *b >= 0.99));
            }
        }
    }
}
