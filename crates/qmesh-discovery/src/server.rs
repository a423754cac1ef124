//! The registry process: the core behind one lock, its kdb+ IPC face, the
//! clock and persistence tasks, and the HTTP side ([`crate::http`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use qmesh_codec::{K, Message};
use qmesh_ipc::{Authenticator, ConnId, Handler, Peer, Responder, ServerConfig, ServerHandle};
use qmesh_process::{Feed, FeedConfig, Shell, ShellOptions, Shutdown};
use tracing::{debug, info, warn};

use crate::limits::{FEED_HISTORY, MAX_CONNECTIONS, MAX_MESSAGE_BYTES, MAX_WS_SUBSCRIBERS, WS_QUEUE};
use crate::metrics::{RegistryMetrics, StateGauges};
use crate::registry::{self, Accepted, Change, Millis, Registry, Reject};
use crate::store::Store;
use crate::wire::{self, Call};

/// How often changed rows (state, status, metadata) are written to the
/// store.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// How often rows whose only change is plain beats are written (their
/// counter and last-beat time; a restart ages rows from the restart, so
/// these need not be fresh).
pub const PERSIST_BEATS_INTERVAL: Duration = Duration::from_secs(15);

/// Shortest and longest pause of the clock task. It ticks ten times per
/// shortest warning threshold, within these bounds.
const TICK_MIN: Duration = Duration::from_millis(20);
const TICK_MAX: Duration = Duration::from_secs(1);

/// The registry's clock.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock that moves only when told ([`Handle::set_time`]): tests.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock at `ms`.
    pub fn manual(ms: Millis) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(ms)))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now(&self) -> Millis {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            Clock::Manual(t) => t.load(Ordering::Acquire),
        }
    }
}

/// How the registry runs.
#[derive(Clone)]
pub struct Options {
    /// The kdb+ IPC listening address (port 0: a free one).
    pub ipc: SocketAddr,
    /// The HTTP listening address, if any.
    pub http: Option<SocketAddr>,
    /// Where the store lives (`--data DIR`); `None` keeps nothing on disk.
    pub data: Option<PathBuf>,
    /// Thresholds per kind.
    pub config: registry::Config,
    /// The `-u` password file (`user:password` lines), loaded by the
    /// process shell.
    pub users: Option<PathBuf>,
    /// A password check on the IPC port given in code (tests, embedding);
    /// `users` wins when both are set.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// What `users` leaves open on HTTP, and the permissions file (the
    /// process shell's; see `qmesh_process::access`).
    pub access: qmesh_process::Access,
    /// TLS on the IPC and HTTP ports (`--tls`, `--tls-cert`, `--tls-key`;
    /// the process shell's, see `qmesh_ipc::tls`).
    pub tls: qmesh_ipc::TlsFiles,
    /// The clock (the system's, or a manual one in tests).
    pub clock: Clock,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("ipc", &self.ipc)
            .field("http", &self.http)
            .field("data", &self.data)
            .field("config", &self.config)
            .field("authenticator", &self.authenticator.is_some())
            .field("clock", &self.clock)
            .finish()
    }
}

impl Default for Options {
    /// Loopback, free ports, no HTTP, nothing on disk, the blog's thresholds.
    fn default() -> Options {
        Options {
            ipc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: None,
            data: None,
            config: registry::Config::default(),
            users: None,
            authenticator: None,
            access: qmesh_process::Access::default(),
            tls: qmesh_ipc::TlsFiles::default(),
            clock: Clock::System,
        }
    }
}

/// Errors starting the registry.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("ipc: {0}")]
    Ipc(#[from] qmesh_ipc::IpcError),
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Shell(#[from] qmesh_process::ShellError),
}

struct Core {
    registry: Registry,
    gauges: StateGauges,
}

/// What every face of the registry shares.
pub(crate) struct Shared {
    core: Mutex<Core>,
    pub(crate) feed: Feed<Change>,
    pub(crate) metrics: RegistryMetrics,
    /// Names this run of the registry; a resume number from another run
    /// gets a fresh snapshot.
    pub(crate) epoch: String,
    pub(crate) clock: Clock,
    connections: Mutex<Option<ServerHandle>>,
    /// Set when the registry stops: connections it closes itself do not
    /// mark their processes disconnected (the registry went, not them).
    stopping: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic under this lock leaves the registry half-updated: stop
        // the process (a supervisor restarts it, the store has the rows)
        // rather than go on with it.
        match self.core.lock() {
            Ok(g) => g,
            Err(_) => {
                tracing::error!("a panic while holding the registry's state; exiting");
                std::process::abort();
            }
        }
    }

    /// Runs `f` on the registry at the clock's time and publishes the
    /// changes it made, under one lock (so a snapshot taken under the same
    /// lock matches its number).
    pub(crate) fn apply<R>(&self, f: impl FnOnce(&mut Registry, Millis) -> R) -> R {
        let now = self.clock.now();
        let mut core = self.lock();
        let r = f(&mut core.registry, now);
        let Core { registry, gauges } = &mut *core;
        for (seq, change) in registry.drain_changes() {
            gauges.apply(&self.metrics, &change);
            self.metrics.changes.inc();
            if let Err(e) = self.feed.push(seq, change) {
                // Cannot happen: the registry numbers 1, 2, 3 … under this lock.
                tracing::error!(error = %e, "feed out of step with the registry");
            }
        }
        r
    }

    /// Reads the registry under its lock (no change).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Registry) -> R) -> R {
        f(&self.lock().registry)
    }

    fn close_conn(&self, conn: u64) {
        let handle = self.connections.lock().ok().and_then(|h| h.clone());
        if let Some(peer) = handle.and_then(|h| h.peer(ConnId(conn))) {
            info!(conn, "a new connection took over this connection's process; closing the old one");
            peer.close();
        }
    }
}

/// A handle onto a running registry (tests, embedding).
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("epoch", &self.shared.epoch).finish()
    }
}

impl Handle {
    /// Moves a [`Clock::Manual`] clock to `ms` and ticks the registry at
    /// once (states age, rows are removed). Does nothing to the system clock.
    pub fn set_time(&self, ms: Millis) {
        if let Clock::Manual(t) = &self.shared.clock {
            t.store(ms, Ordering::Release);
        }
        self.shared.apply(|r, now| r.tick(now));
    }

    /// The process called `name`, if known.
    pub fn get(&self, name: &str) -> Option<registry::Process> {
        self.shared.read(|r| r.get(name).map(|p| (**p).clone()))
    }

    /// The number of the last change.
    pub fn seq(&self) -> u64 {
        self.shared.feed.head()
    }

    /// This run's epoch (what a WebSocket subscriber resumes within).
    pub fn epoch(&self) -> String {
        self.shared.epoch.clone()
    }
}

/// The IPC face: q's hooks.
#[derive(Clone)]
struct IpcFace {
    shared: Arc<Shared>,
    /// `--permissions`: who may heartbeat as which process name.
    permissions: Option<qmesh_process::Permissions>,
}

impl IpcFace {
    fn store_hb(&self, peer: &Peer, hb: registry::Heartbeat) -> Result<(Accepted, Millis), Reject> {
        let conn = peer.id().0;
        let r = self.shared.apply(|reg, now| reg.heartbeat(now, conn, hb).map(|a| (a, now)));
        if let Ok((Accepted { replaced: Some(old), .. }, _)) = &r {
            self.shared.close_conn(*old);
        }
        r
    }

    /// The permissions file's word on `peer` heartbeating as `name`: the
    /// `access` error's text when refused (no row changes).
    fn may_beat(&self, peer: &Peer, name: &str) -> Result<(), String> {
        match &self.permissions {
            Some(p) => {
                p.check(peer.user(), qmesh_process::Action::Heartbeat, [name]).map_err(|e| e.to_q_text())
            }
            None => Ok(()),
        }
    }

    fn reject_reason(e: &Reject) -> &'static str {
        match e {
            Reject::Name(_) => "name",
            Reject::TooLong { .. } => "too long",
            Reject::TooManyAttrs => "attrs",
            Reject::Full => "full",
        }
    }

    fn reject_text(e: &Reject) -> String {
        match e {
            Reject::Full => format!("limit: {e}"),
            _ => format!("bad request: {e}"),
        }
    }

    fn table(&self, filter: &registry::Filter) -> K {
        let now = self.shared.clock.now();
        let rows = self.shared.read(|r| r.lookup(filter));
        wire::discovery_table(&rows, now)
    }
}

fn answer(responder: Responder, r: Result<K, String>) {
    let sent = match r {
        Ok(k) => responder.reply(k),
        Err(e) => responder.error(e),
    };
    if let Err(e) = sent {
        debug!(error = %e, "the client went before its answer");
    }
}

impl Handler for IpcFace {
    async fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) {
        let Some(responder) = qmesh_ipc::pykx::try_answer(&msg, responder) else { return };
        let started = Instant::now();
        let k = match msg.decode() {
            Ok(k) => k,
            Err(e) => {
                self.shared.metrics.reject("decode");
                return answer(responder, Err(format!("bad request: {e}")));
            }
        };
        let call = wire::call(&k);
        if let Ok(Call::StoreHb(hb)) = &call
            && let Err(refused) = self.may_beat(peer, &hb.name)
        {
            self.shared.metrics.reject("access");
            return answer(responder, Err(refused));
        }
        match call {
            Ok(Call::StoreHb(hb)) => match self.store_hb(peer, hb) {
                Ok((acc, now)) => {
                    self.shared.metrics.heartbeat("sync");
                    self.shared.metrics.heartbeat_seconds.observe(started.elapsed().as_secs_f64());
                    let policy = self.shared.read(|r| r.config().policy(&acc.process.kind));
                    answer(
                        responder,
                        Ok(wire::view(&acc.process, now, policy.warn_after, policy.error_after)),
                    );
                }
                Err(e) => {
                    self.shared.metrics.reject(Self::reject_reason(&e));
                    answer(responder, Err(Self::reject_text(&e)));
                }
            },
            Ok(Call::Discovery) => answer(responder, Ok(self.table(&registry::Filter::default()))),
            Ok(Call::Lookup(f)) => answer(responder, Ok(self.table(&f))),
            Err(e) => {
                self.shared.metrics.reject("call");
                answer(responder, Err(e.0));
            }
        }
    }

    async fn on_async(&self, peer: &Peer, msg: Message) {
        let started = Instant::now();
        let k = match msg.decode() {
            Ok(k) => k,
            Err(e) => {
                self.shared.metrics.reject("decode");
                warn!(conn = %peer.id(), error = %e, "async message not decoded; ignored");
                return;
            }
        };
        let call = wire::call(&k);
        if let Ok(Call::StoreHb(hb)) = &call
            && self.may_beat(peer, &hb.name).is_err()
        {
            // (the permissions file logged the refusal)
            self.shared.metrics.reject("access");
            return;
        }
        match call {
            Ok(Call::StoreHb(hb)) => {
                let name = hb.name.clone();
                match self.store_hb(peer, hb) {
                    Ok(_) => {
                        self.shared.metrics.heartbeat("async");
                        self.shared.metrics.heartbeat_seconds.observe(started.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        self.shared.metrics.reject(Self::reject_reason(&e));
                        warn!(conn = %peer.id(), process = %name.chars().take(64).collect::<String>(),
                            error = %e, "async heartbeat refused; no row changed");
                    }
                }
            }
            Ok(_) => debug!(conn = %peer.id(), "async lookup ignored: there is no one to answer"),
            Err(e) => {
                self.shared.metrics.reject("call");
                warn!(conn = %peer.id(), error = %e, "async message refused");
            }
        }
    }

    async fn on_close(&self, peer: &Peer) {
        if self.shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let conn = peer.id().0;
        self.shared.apply(|r, now| r.closed(now, conn));
    }
}

/// A registry with its ports bound, ready to [`run`](Bound::run).
pub struct Bound {
    shared: Arc<Shared>,
    shell: Shell,
    store: Option<Arc<Store>>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound").field("ipc", &self.ipc_addr()).field("http", &self.http_addr()).finish()
    }
}

/// Opens the store, restores its rows and binds the ports.
pub async fn bind(options: Options) -> Result<Bound, DiscoveryError> {
    let mut ipc = ServerConfig::tcp(options.ipc);
    ipc.max_connections = MAX_CONNECTIONS;
    ipc.max_message_bytes = MAX_MESSAGE_BYTES;
    ipc.authenticator = options.authenticator.clone();
    let shell = Shell::bind(ShellOptions {
        ipc,
        http: options.http,
        users: options.users.clone(),
        access: options.access.clone(),
        tls: options.tls.clone(),
        ..ShellOptions::new("discovery", "discovery")
    })
    .await?;
    let rmetrics = RegistryMetrics::new(shell.metrics());
    let now = options.clock.now();
    let mut registry = Registry::new(options.config.clone(), 0);
    let mut gauges = StateGauges::default();
    let store = match &options.data {
        Some(dir) => {
            let dir = dir.clone();
            let (store, rows, bad) = tokio::task::spawn_blocking(move || -> Result<_, DiscoveryError> {
                let store = Store::open(&dir)?;
                let (rows, bad) = store.load()?;
                Ok((store, rows, bad))
            })
            .await
            .map_err(|e| DiscoveryError::Http(std::io::Error::other(e.to_string())))??;
            info!(path = %store.path().display(), rows = rows.len(), unreadable = bad, "registry restored (rows stale until they beat)");
            registry.restore(now, rows);
            for p in registry.iter() {
                gauges.restore(&rmetrics, p);
            }
            Some(Arc::new(store))
        }
        None => None,
    };
    let feed = Feed::new(
        FeedConfig { history: FEED_HISTORY, max_subscribers: MAX_WS_SUBSCRIBERS, queue: WS_QUEUE },
        registry.seq(),
    );
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let shared = Arc::new(Shared {
        core: Mutex::new(Core { registry, gauges }),
        feed,
        metrics: rmetrics,
        epoch: format!("{started:x}-{}", std::process::id()),
        clock: options.clock.clone(),
        connections: Mutex::new(None),
        stopping: AtomicBool::new(false),
    });
    if let Ok(mut h) = shared.connections.lock() {
        *h = Some(shell.connections());
    }
    Ok(Bound { shared, shell, store })
}

/// [`bind`] then [`Bound::run`].
pub async fn run(options: Options, shutdown: Shutdown) -> Result<(), DiscoveryError> {
    bind(options).await?.run(shutdown).await
}

impl Bound {
    /// The kdb+ IPC address.
    pub fn ipc_addr(&self) -> SocketAddr {
        self.shell.ipc_addr().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The HTTP address, if serving HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.shell.http_addr()
    }

    /// The `discovery listening …` lines the binary prints.
    pub fn listening_lines(&self) -> Vec<String> {
        self.shell.listening_lines()
    }

    /// A handle for tests and embedding.
    pub fn handle(&self) -> Handle {
        Handle { shared: Arc::clone(&self.shared) }
    }

    /// The HTTP routes (API, WebSocket, `/sd`, the dashboard), without
    /// `/healthz` and `/metrics`, for a process shell to serve.
    pub fn router(&self) -> axum::Router {
        crate::http::router(Arc::clone(&self.shared))
    }

    /// Serves until `shutdown` triggers, then stops accepting, writes the
    /// last changes to the store and returns.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), DiscoveryError> {
        let shared = Arc::clone(&self.shared);
        let tick = {
            let shared = Arc::clone(&shared);
            let stop = shutdown.clone();
            let every =
                Duration::from_millis((shared.read(|r| r.config().shortest_warn()) / 10).max(0) as u64)
                    .clamp(TICK_MIN, TICK_MAX);
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = interval.tick() => shared.apply(|r, now| r.tick(now)),
                        _ = stop.triggered() => break,
                    }
                }
            })
        };
        let persist = self.store.clone().map(|store| {
            let shared = Arc::clone(&shared);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(PERSIST_INTERVAL);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_beats = Instant::now();
                loop {
                    let stopping = tokio::select! {
                        _ = interval.tick() => false,
                        _ = stop.triggered() => true,
                    };
                    let beats = stopping || last_beats.elapsed() >= PERSIST_BEATS_INTERVAL;
                    if beats {
                        last_beats = Instant::now();
                    }
                    persist_once(&shared, &store, beats).await;
                    if stopping {
                        break;
                    }
                }
            })
        });
        self.shell.health().set_ready(true);
        info!(ipc = %self.ipc_addr(), processes = shared.read(Registry::len), "discovery ready");
        let face = IpcFace { shared: Arc::clone(&shared), permissions: self.shell.permissions() };
        let api = crate::http::router(Arc::clone(&shared));
        let flag = Arc::clone(&shared);
        self.shell
            .run(face, api, shutdown.clone(), async move {
                flag.stopping.store(true, Ordering::Release);
            })
            .await?;
        let _ = tick.await;
        if let Some(p) = persist {
            let _ = p.await;
        }
        info!("discovery stopped");
        Ok(())
    }
}

async fn persist_once(shared: &Arc<Shared>, store: &Arc<Store>, beats: bool) {
    let (changed, removed) = shared.apply(|r, _| r.take_dirty(beats));
    if changed.is_empty() && removed.is_empty() {
        return;
    }
    let n = changed.len() as u64;
    let store = Arc::clone(store);
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || store.write(&changed, &removed)).await {
        Ok(Ok(())) => {
            shared.metrics.persist_seconds.observe(started.elapsed().as_secs_f64());
            shared.metrics.persisted_rows.inc_by(n);
        }
        Ok(Err(e)) => {
            warn!(error = %e, "cannot write the registry's store; will retry with the next changes")
        }
        Err(e) => warn!(error = %e, "store task failed"),
    }
}
