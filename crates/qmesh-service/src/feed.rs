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
//! The publisher sends at most `rate` messages a second on average: every
//! tick it sends the messages due since the start (`elapsed × rate`), in
//! batches of at most `batch`. A batch is `batch` sync `.rt.pub` requests
//! written back to back on one connection, answered in order once durable
//! (the node's group commit makes one fsync of a whole batch), so the rate
//! is not bound by one round trip per message. The rate achieved is logged
//! every [`REPORT_EVERY`].
//!
//! # Delivery
//!
//! [`publish`] is the one function that touches the transport (today the
//! node's sync `.rt.pub` over IPC; later the local-log `Publisher`). When
//! the node goes away the feed reconnects with backoff and sends the
//! unanswered batch again: at least once — a batch the node stored before
//! the connection dropped is stored twice. A refusal by the node (`'unknown
//! stream`, `'message too large` …) stops the feed with that error.
//!
//! [`demo`]: crate::demo

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use qmesh_codec::{Atom, Attr, K, Message, Symbols, Table, Vector};
use qmesh_ipc::client::Backoff;
use qmesh_ipc::{Address, ClientOptions, Connection, IpcError, Sender};
use qmesh_process::Shutdown;
use tracing::{info, warn};

use crate::demo::{DEFAULT_SEED, DEMO_SYMS, Rng};
use crate::mapping::KDB_EPOCH_DAYS;

/// How often the achieved rate is logged.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Most messages in one batch: bounds the sync requests in flight on one
/// connection (a qmesh server disconnects a client with more than
/// `qmesh_ipc`'s `DEFAULT_MAX_PENDING`, 4096, unanswered) and the memory a
/// batch holds.
pub const MAX_BATCH: usize = 1024;

/// Most rows in one message.
pub const MAX_ROWS: usize = 100_000;

/// Shortest tick of the rate limiter (tokio's timer resolution).
const MIN_TICK: Duration = Duration::from_millis(1);

/// Longest tick, so a low rate still sends on time.
const MAX_TICK: Duration = Duration::from_millis(100);

/// Waits between attempts to reach the node.
const RETRY: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
    factor: 2.0,
    max_attempts: None,
};

/// Errors of the feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("address: {0}")]
    Address(#[from] qmesh_ipc::AddressError),
    /// The node refused a message (its q error text).
    #[error("the node refused a message: {0}")]
    Refused(String),
    /// The node could not be reached or the connection dropped.
    #[error("{0}")]
    Ipc(IpcError),
    #[error("the node answered .rt.pub with {0}, not a position")]
    Unexpected(String),
    #[error("bad spec: {0}")]
    Spec(String),
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

/// One sync request in flight.
type Call<'a> = Pin<Box<dyn Future<Output = Result<Message, IpcError>> + Send + 'a>>;

/// Publishes `msgs` to `stream`, in order, and returns the position the
/// node answered for the last (where it stored it) once all are durable: the one place the feed touches the
/// transport (the node's sync `.rt.pub` today).
///
/// All requests are written before the first answer is awaited: each call
/// is polled once, in order, which queues its request on the connection,
/// so the node receives them in `msgs` order and answers in that order.
pub async fn publish(sender: &Sender, stream: &str, msgs: &[K]) -> Result<i64, FeedError> {
    let mut calls: Vec<Call<'_>> = Vec::with_capacity(msgs.len());
    let mut done: Vec<Option<Result<Message, IpcError>>> = Vec::with_capacity(msgs.len());
    let mut cx = Context::from_waker(Waker::noop());
    for m in msgs {
        let req = K::list(vec![K::sym(".rt.pub"), K::sym(stream), m.clone()]);
        let mut call: Call<'_> = Box::pin(async move { sender.call(&req).await });
        // the first poll encodes and queues the request, in order
        match call.as_mut().poll(&mut cx) {
            Poll::Ready(r) => done.push(Some(r)),
            Poll::Pending => done.push(None),
        }
        calls.push(call);
    }
    let mut last = None;
    for (call, early) in calls.into_iter().zip(done) {
        let answer = match early {
            Some(r) => r,
            None => call.await,
        };
        let msg = answer.map_err(|e| match e {
            IpcError::Remote(text) => FeedError::Refused(text),
            other => FeedError::Ipc(other),
        })?;
        match msg.decode() {
            Ok(K::Atom(Atom::Long(p))) => last = Some(p),
            Ok(other) => return Err(FeedError::Unexpected(format!("{other:?}"))),
            Err(e) => return Err(FeedError::Unexpected(e.to_string())),
        }
    }
    last.ok_or_else(|| FeedError::Unexpected("an empty batch".into()))
}

/// How the feed runs.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// The node (`host:port`, `:host:port:user:password`).
    pub node: String,
    pub stream: String,
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
    /// Messages the node acknowledged.
    pub sent: u64,
    /// The position the node answered for the last acknowledged message
    /// (0: none).
    pub position: i64,
    pub elapsed: Duration,
}

impl FeedReport {
    /// Messages per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn connect(addr: &Address, stop: &Shutdown) -> Option<Sender> {
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = stop.triggered() => return None,
            _ = tokio::time::sleep(RETRY.delay(failures)) => {}
        }
        match Connection::connect(addr, ClientOptions::default()).await {
            Ok(c) => {
                info!(node = %addr, "feed connected");
                return Some(c.split().0);
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    warn!(node = %addr, error = %e, "feed cannot reach the node; retrying");
                }
            }
        }
    }
}

/// Publishes until `config.count` messages are acknowledged or `stop`
/// triggers; a batch in flight at `stop` is finished first.
pub async fn run(config: FeedConfig, stop: Shutdown) -> Result<FeedReport, FeedError> {
    let addr = Address::parse(&config.node)?;
    if !(config.rate > 0.0 && config.rate.is_finite()) {
        return Err(FeedError::Spec(format!(
            "rate must be a positive number of messages a second, got {}",
            config.rate
        )));
    }
    if config.batch == 0 || config.batch > MAX_BATCH {
        return Err(FeedError::Spec(format!("batch must be 1..={MAX_BATCH}, got {}", config.batch)));
    }
    let mut generator = Generator::new(config.spec.clone())?;
    let started = Instant::now();
    let mut report = FeedReport { sent: 0, position: 0, elapsed: Duration::ZERO };
    let Some(mut sender) = connect(&addr, &stop).await else {
        return Ok(report);
    };
    let tick = Duration::from_secs_f64(1.0 / config.rate).clamp(MIN_TICK, MAX_TICK);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut window_at, mut window_sent) = (Instant::now(), 0u64);
    let limit = config.count.unwrap_or(u64::MAX);
    let begun = Instant::now();
    'outer: while report.sent < limit {
        tokio::select! {
            _ = stop.triggered() => break,
            _ = ticker.tick() => {}
        }
        let due = ((begun.elapsed().as_secs_f64() * config.rate) as u64).min(limit);
        while report.sent < due {
            let n = (due - report.sent).min(config.batch as u64) as usize;
            let (date, time) = kdb_now();
            let msgs: Vec<K> = (0..n).map(|_| generator.next_message(date, time)).collect();
            loop {
                match publish(&sender, &config.stream, &msgs).await {
                    Ok(pos) => {
                        report.sent += n as u64;
                        report.position = pos;
                        break;
                    }
                    Err(FeedError::Ipc(e)) => {
                        warn!(node = %addr, error = %e, "feed lost the node; reconnecting to send the batch again");
                        match connect(&addr, &stop).await {
                            Some(s) => sender = s,
                            None => break 'outer,
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if window_at.elapsed() >= REPORT_EVERY {
                let secs = window_at.elapsed().as_secs_f64();
                info!(
                    sent = report.sent,
                    rate = format!("{:.0}", (report.sent - window_sent) as f64 / secs),
                    target = config.rate,
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
    info!(
        sent = report.sent,
        rate = format!("{:.0}", report.rate()),
        position = report.position,
        "feed done"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Ingest, Store};

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
