//! The load balancer and gateway processes: the cores of [`crate::lb`] and
//! [`crate::gw`] wired to sockets with `qmesh-ipc`.
//!
//! # Concurrency
//!
//! One [`Router`] per process owns the state (the gateway core, the load
//! balancer core, or both) behind one `std::sync::Mutex`. Every event — a
//! message from a client, a service, a gateway or the load balancer, a link
//! going up or down, a timer — takes the lock, feeds the core(s), and carries
//! out the resulting actions: messages to the load balancer, gateways and
//! services are *queued* on their connections, so the lock is held for
//! microseconds and never across an `.await`. Within a read loop (every
//! message from a peer) queuing is a push and nothing more: the write
//! happens when the read's batch ends, after the lock is released
//! (`qmesh_ipc::batch`); elsewhere (timers, HTTP) it may be one
//! non-blocking `writev`. Replies to clients (which may involve joining or
//! encoding a large result) are sent after the lock is released.
//!
//! Why a mutex rather than an actor task: an actor costs a channel hop (a
//! task wake-up, often a cross-thread one) per event on the hot path, on top
//! of the connection's own reader task. With the lock, the reader task that
//! decoded the message runs the state machine itself — for client
//! connections, service links and the load balancer link alike — and the
//! writes it causes leave in batches: queries from many clients to one
//! instance share a `writev`, and so do the instance's answers. Contention
//! is low because each critical section is a few hash-map operations.
//!
//! Sending while holding the lock keeps each connection's messages in the
//! order the cores decided them (an `addResource` always precedes the
//! `serviceAlloc` that names the new instance).
//!
//! In `--embedded-lb` mode the gateway core's requests to the load balancer
//! are calls into the load balancer core in the same critical section: an
//! allocation costs no message at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use qmesh_codec::limits::{COMPRESS_MIN_BYTES, MAX_MESSAGE_BYTES};
use qmesh_codec::{K, Message, MsgType, RawObject};
use qmesh_ipc::{
    Authenticator, Backoff, ClientOptions, Connection, Handler, IpcError, Peer, Responder, Server,
    ServerConfig, pykx,
};
use qmesh_process::{Health, Metrics, Shutdown};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::gw::{ClientRequest, Gateway, GatewayConfig, GwAction, LinkId, Outcome};
use crate::lb::{GatewayProtocol, LbAction, LbConfig, LoadBalancer, ServiceRequest};
use crate::metrics::{GatewayMetrics, Labels, Mode, label, register_state};
use crate::proto::{self, ServiceReply, UserQuery};
use crate::types::{Address, ClientId, Failure, IdMap, PeerId, ServiceName};

/// Client ids at and above this belong to HTTP requests (IPC connection ids
/// count up from 1 and never get near it).
pub const HTTP_CLIENT_BASE: u64 = 1 << 62;

/// Default time, after SIGINT/SIGTERM, that requests in flight get to finish
/// before they are failed with `shutting down`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often shutdown checks whether requests in flight are done.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

/// Results larger than this (bytes) are converted to JSON on a blocking
/// thread, not on the runtime's.
const JSON_INLINE_MAX: usize = 64 * 1024;

/// Backoff for links to service instances and to the load balancer:
/// 50 ms doubling to 5 s, forever.
pub const DEFAULT_RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(50),
    max: Duration::from_secs(5),
    factor: 2.0,
    max_attempts: None,
};

/// Why a routing process could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("ipc: {0}")]
    Ipc(#[from] IpcError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Settings of `qmesh lb`.
#[derive(Clone)]
pub struct LbOptions {
    /// kdb+ IPC listen address (port 0 picks one).
    pub ipc: SocketAddr,
    /// HTTP listen address for `/healthz`, `/metrics`, `/api/services`.
    pub http: Option<SocketAddr>,
    pub lb: LbConfig,
    /// Largest message accepted, bytes.
    pub max_message_bytes: u64,
    /// The `-u` password check.
    pub authenticator: Option<Arc<dyn Authenticator>>,
}

impl std::fmt::Debug for LbOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbOptions")
            .field("ipc", &self.ipc)
            .field("http", &self.http)
            .field("lb", &self.lb)
            .finish()
    }
}

impl Default for LbOptions {
    fn default() -> LbOptions {
        LbOptions {
            ipc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: None,
            lb: LbConfig::default(),
            max_message_bytes: MAX_MESSAGE_BYTES,
            authenticator: None,
        }
    }
}

/// Where a gateway's load balancer is.
#[derive(Debug, Clone)]
pub enum LbLocation {
    /// A `qmesh lb` (or any process speaking the protocol) at this address.
    Remote(qmesh_ipc::Address),
    /// In this process; services register with the gateway's own port.
    Embedded(LbConfig),
}

/// Settings of `qmesh gateway`.
#[derive(Clone)]
pub struct GatewayOptions {
    /// kdb+ IPC listen address (port 0 picks one).
    pub ipc: SocketAddr,
    /// HTTP listen address for `/query`, `/healthz`, `/metrics`.
    pub http: Option<SocketAddr>,
    pub lb: LbLocation,
    pub gateway: GatewayConfig,
    /// Largest message accepted from clients and services, bytes.
    pub max_message_bytes: u64,
    /// Reconnection to the load balancer and to instances.
    pub reconnect: Backoff,
    /// Time requests in flight get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// The `-u` password check for clients.
    pub authenticator: Option<Arc<dyn Authenticator>>,
}

impl std::fmt::Debug for GatewayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayOptions")
            .field("ipc", &self.ipc)
            .field("http", &self.http)
            .field("lb", &self.lb)
            .field("gateway", &self.gateway)
            .finish()
    }
}

impl Default for GatewayOptions {
    fn default() -> GatewayOptions {
        GatewayOptions {
            ipc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: None,
            lb: LbLocation::Embedded(LbConfig::default()),
            gateway: GatewayConfig::default(),
            max_message_bytes: MAX_MESSAGE_BYTES,
            reconnect: DEFAULT_RECONNECT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            authenticator: None,
        }
    }
}

/// A result on its way to a client.
#[derive(Debug, Clone)]
pub enum Payload {
    /// As the service sent it, bytes untouched.
    Raw(RawObject),
    /// Built here (a joined fan-out).
    Value(K),
}

impl Payload {
    /// The value (decoding a raw result).
    pub fn to_k(&self) -> Result<K, qmesh_codec::DecodeError> {
        match self {
            Payload::Raw(r) => r.decode(),
            Payload::Value(k) => Ok(k.clone()),
        }
    }

    fn len_hint(&self) -> usize {
        match self {
            Payload::Raw(r) => r.bytes().len(),
            Payload::Value(k) => qmesh_codec::encoded_len(k),
        }
    }
}

/// How a client is answered.
#[derive(Debug)]
pub(crate) enum ReplyTo {
    /// A sync request: the response message (a q error on failure).
    Sync(Responder),
    /// An async request without callback (`neg[h]x; h[]`): the result as an
    /// async message, or an error object.
    Deferred(Peer),
    /// An async request naming a callback: `cb[hdr;payload]`.
    Callback { peer: Peer, name: Bytes, services: Vec<ServiceName>, query: RawObject },
    /// An HTTP request.
    Http(oneshot::Sender<Result<Payload, Failure>>),
}

type Core = Gateway<ReplyTo, RawObject>;

struct LinkSlot {
    link: LinkId,
    sender: Option<qmesh_ipc::Sender>,
    stop: CancellationToken,
}

struct Inner {
    gw: Option<Core>,
    lb: Option<LoadBalancer>,
    /// Server-side connections, for the load balancer to push to.
    peers: IdMap<PeerId, Peer>,
    /// Links to service instances.
    links: HashMap<Address, LinkSlot>,
    /// The connection to a remote load balancer.
    lb_sender: Option<qmesh_ipc::Sender>,
    /// The time the timer task sleeps until.
    armed: Option<Instant>,
}

#[derive(Default)]
struct Work {
    gw: Vec<GwAction<ReplyTo, RawObject>>,
    lb: Vec<LbAction>,
}

/// A reply to send once the lock is released: to whom, what, for which
/// service, after how long.
type PendingReply = (ReplyTo, Result<Outcome<RawObject>, Failure>, ServiceName, Duration);

#[derive(Default)]
struct Done {
    replies: Vec<PendingReply>,
    spawns: Vec<(Address, LinkId, CancellationToken)>,
}

/// The state of one routing process. See the module docs.
pub struct Router {
    inner: Mutex<Inner>,
    timer: Notify,
    embedded: bool,
    link_opts: ClientOptions,
    backoff: Backoff,
    stop: CancellationToken,
    closing: AtomicBool,
    health: Health,
    metrics: Option<GatewayMetrics>,
    next_http: AtomicU64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("embedded", &self.embedded).finish_non_exhaustive()
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn peer_id(peer: &Peer) -> PeerId {
    PeerId(peer.id().0)
}

impl Router {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding the lock; if it ever did, carry on
        // with the state as it is rather than take the process down.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the state, then every action it caused; delivers replies
    /// and starts link tasks after the lock is released.
    fn with<T>(self: &Arc<Self>, f: impl FnOnce(&mut Inner, Instant, &mut Work) -> T) -> T {
        let now = now();
        let mut work = Work::default();
        let mut done = Done::default();
        let r = {
            let mut inner = self.lock();
            let r = f(&mut inner, now, &mut work);
            self.run_work(&mut inner, now, &mut work, &mut done);
            self.rearm(&mut inner);
            r
        };
        self.finish(done);
        r
    }

    fn run_work(&self, inner: &mut Inner, now: Instant, work: &mut Work, done: &mut Done) {
        loop {
            if !work.lb.is_empty() {
                for a in std::mem::take(&mut work.lb) {
                    self.lb_action(inner, now, a, work);
                }
            } else if !work.gw.is_empty() {
                for a in std::mem::take(&mut work.gw) {
                    self.gw_action(inner, now, a, work, done);
                }
            } else {
                return;
            }
        }
    }

    fn rearm(&self, inner: &mut Inner) {
        let next = [
            inner.gw.as_ref().and_then(Core::next_timer),
            inner.lb.as_ref().and_then(LoadBalancer::next_timer),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(n) = next
            && inner.armed.is_none_or(|a| n < a)
        {
            inner.armed = Some(n);
            self.timer.notify_one();
        }
    }

    fn lb_action(&self, inner: &mut Inner, now: Instant, a: LbAction, work: &mut Work) {
        let local = |gw: PeerId| gw == PeerId::LOCAL;
        match a {
            LbAction::Alloc { gw, seq, address } => {
                if local(gw) {
                    if let Some(core) = inner.gw.as_mut() {
                        core.service_alloc(now, seq, address, &mut work.gw);
                    }
                } else {
                    send(inner.peers.get(&gw), &proto::service_alloc(seq, &address));
                }
            }
            LbAction::Deny { gw, seq, failure } => {
                if local(gw) {
                    if let Some(core) = inner.gw.as_mut() {
                        core.service_denied(now, seq, failure, &mut work.gw);
                    }
                } else {
                    send(inner.peers.get(&gw), &proto::service_denied(seq, &failure.to_q_text()));
                }
            }
            LbAction::AddResource { gw, service, address } => {
                if local(gw) {
                    if let Some(core) = inner.gw.as_mut() {
                        core.add_resource(service, address, &mut work.gw);
                    }
                } else {
                    send(inner.peers.get(&gw), &proto::resource_message(true, &service, &address));
                }
            }
            LbAction::RemoveResource { gw, service, address } => {
                if local(gw) {
                    if let Some(core) = inner.gw.as_mut() {
                        core.remove_resource(now, &address, &mut work.gw);
                    }
                } else {
                    send(inner.peers.get(&gw), &proto::resource_message(false, &service, &address));
                }
            }
            LbAction::DropInstance { peer, service, address, reason } => {
                warn!(%service, %address, ?reason, "closing the connection of an instance dropped from the pool");
                if let Some(p) = inner.peers.get(&peer) {
                    p.abort();
                }
            }
        }
    }

    fn gw_action(
        &self,
        inner: &mut Inner,
        now: Instant,
        a: GwAction<ReplyTo, RawObject>,
        work: &mut Work,
        done: &mut Done,
    ) {
        match a {
            GwAction::RequestService { seq, service, target, timeout } => {
                if let Some(lb) = inner.lb.as_mut() {
                    let req = ServiceRequest { seq, service, target, timeout: Some(timeout) };
                    lb.request_service(PeerId::LOCAL, req, now, &mut work.lb);
                } else {
                    send(
                        inner.lb_sender.as_deref(),
                        &proto::request_service(seq, &service, target.as_ref(), timeout),
                    );
                }
            }
            GwAction::Release { seq } => match inner.lb.as_mut() {
                Some(lb) => lb.gateway_release(PeerId::LOCAL, seq, now, &mut work.lb),
                None => send(inner.lb_sender.as_deref(), &proto::return_service_seq(seq)),
            },
            GwAction::Done { seq } => match inner.lb.as_mut() {
                Some(lb) => lb.gateway_done(PeerId::LOCAL, seq, now, &mut work.lb),
                None => send(inner.lb_sender.as_deref(), &proto::service_done(seq)),
            },
            GwAction::Lost { seq } => match inner.lb.as_mut() {
                Some(lb) => lb.gateway_lost(PeerId::LOCAL, seq, now, &mut work.lb),
                None => send(inner.lb_sender.as_deref(), &proto::service_lost(seq)),
            },
            GwAction::Dispatch { address, seq, query } => {
                let Some(sender) = inner.links.get(&address).and_then(|s| s.sender.as_ref()) else {
                    // the link task reports the loss, which fails the part
                    debug!(%address, seq = seq.0, "dispatch to an instance without a live link");
                    return;
                };
                let r = match proto::query_service_frame(seq, &query) {
                    Some(frame) if frame.len() <= COMPRESS_MIN_BYTES => sender.send_frame(frame),
                    _ => sender.send_async(&proto::query_service(seq, &query)),
                };
                if let Err(e) = r {
                    debug!(%address, seq = seq.0, error = %e, "could not send queryService");
                }
            }
            GwAction::Reply { reply, service, outcome, elapsed, .. } => {
                done.replies.push((reply, outcome, service, elapsed));
            }
            GwAction::Connect { address, link } => {
                if let Some(old) = inner.links.remove(&address) {
                    old.stop.cancel();
                }
                let stop = self.stop.child_token();
                inner.links.insert(address.clone(), LinkSlot { link, sender: None, stop: stop.clone() });
                done.spawns.push((address, link, stop));
            }
            GwAction::Disconnect { address, link } => {
                if inner.links.get(&address).is_some_and(|s| s.link == link)
                    && let Some(slot) = inner.links.remove(&address)
                {
                    slot.stop.cancel();
                    if let Some(s) = slot.sender {
                        s.close();
                    }
                }
            }
        }
    }

    fn finish(self: &Arc<Self>, done: Done) {
        for (address, link, stop) in done.spawns {
            tokio::spawn(self.clone().link_task(address, link, stop));
        }
        for (reply, outcome, service, elapsed) in done.replies {
            self.deliver(reply, outcome, &service, elapsed);
        }
    }

    /// Sends a reply to its client.
    fn deliver(
        &self,
        reply: ReplyTo,
        outcome: Result<Outcome<RawObject>, Failure>,
        service: &ServiceName,
        elapsed: Duration,
    ) {
        let result = match outcome {
            Ok(Outcome::One(r)) => Ok(Payload::Raw(r)),
            Ok(Outcome::Parts(parts)) => crate::join::join(parts).map(Payload::Value),
            Err(f) => Err(f),
        };
        if let Some(m) = &self.metrics {
            m.observe(service, elapsed.as_secs_f64());
            if let Err(f) = &result {
                m.error(f.word());
            }
        }
        send_reply(reply, result);
    }

    fn on_call(self: &Arc<Self>, peer: &Peer, call: proto::Call, responder: Option<Responder>) {
        let id = peer_id(peer);
        let name = &call.name[..];
        let is_lb_fn = matches!(
            name,
            proto::REGISTER_GW
                | proto::REGISTER_RESOURCE
                | proto::REQUEST_SERVICE
                | proto::RETURN_SERVICE
                | proto::SERVICE_DONE
                | proto::SERVICE_LOST
        );
        if name == proto::USER_QUERY {
            self.user_query(peer, &call.args, responder);
            return;
        }
        if !is_lb_fn {
            let text = format!(
                "bad request: unknown function `{}; send (`userQuery;(service;query))",
                String::from_utf8_lossy(name)
            );
            match responder {
                Some(r) => {
                    let _ = r.error(text);
                }
                None => warn!(conn = id.0, "{text}"),
            }
            return;
        }
        let result: Result<Option<K>, String> = self.with(|inner, now, work| {
            let Some(lb) = inner.lb.as_mut() else {
                return Err("bad request: this gateway uses a separate load balancer; register there".into());
            };
            let args = &call.args;
            match name {
                proto::REGISTER_GW => {
                    let proto_kind = match args.first().map(proto::text_arg) {
                        Some(Ok(t)) if &t[..] == proto::QMESH_GATEWAY_TAG.as_bytes() => {
                            GatewayProtocol::Qmesh
                        }
                        _ => GatewayProtocol::Whitepaper,
                    };
                    let rows = lb.register_gateway(id, proto_kind);
                    Ok(Some(proto::resource_table(&rows)))
                }
                proto::REGISTER_RESOURCE => {
                    let [n, a] = args.as_slice() else {
                        return Err("rank: registerResource takes [name;address]".into());
                    };
                    let service = ServiceName::from_bytes(proto::text_arg(n)?);
                    let address = Address::from_bytes(proto::text_arg(a)?);
                    if service.as_bytes().is_empty() || address.as_bytes().is_empty() {
                        return Err("bad request: registerResource needs a name and an address".into());
                    }
                    lb.register_resource(id, service, address, now, &mut work.lb);
                    Ok(None)
                }
                proto::REQUEST_SERVICE => {
                    let (seq, service, target, timeout) = match args.as_slice() {
                        [s, v] => (s, v, None, None),
                        [s, v, t, ms] => (s, v, Some(t), Some(ms)),
                        _ => return Err("rank: requestService takes [seq;service]".into()),
                    };
                    let target = match target.map(proto::text_arg).transpose()? {
                        Some(t) if !t.is_empty() => Some(Address::from_bytes(t)),
                        _ => None,
                    };
                    let timeout = match timeout.map(|t| t.decode()) {
                        Some(Ok(K::Atom(qmesh_codec::Atom::Long(ms)))) if ms >= 0 => {
                            Some(Duration::from_millis(ms as u64))
                        }
                        _ => None,
                    };
                    let req = ServiceRequest {
                        seq: proto::seq_arg(seq)?,
                        service: ServiceName::from_bytes(proto::text_arg(service)?),
                        target,
                        timeout,
                    };
                    lb.request_service(id, req, now, &mut work.lb);
                    Ok(None)
                }
                proto::RETURN_SERVICE => {
                    let [x] = args.as_slice() else {
                        return Err("rank: returnService takes one argument".into());
                    };
                    match proto::seq_arg(x) {
                        Ok(seq) => lb.gateway_release(id, seq, now, &mut work.lb),
                        Err(_) => lb.service_return(id, now, &mut work.lb),
                    }
                    Ok(None)
                }
                _ => {
                    let [x] = args.as_slice() else {
                        return Err("rank: serviceDone and serviceLost take [seq]".into());
                    };
                    let seq = proto::seq_arg(x)?;
                    if name == proto::SERVICE_DONE {
                        lb.gateway_done(id, seq, now, &mut work.lb);
                    } else {
                        lb.gateway_lost(id, seq, now, &mut work.lb);
                    }
                    Ok(None)
                }
            }
        });
        match (result, responder) {
            (Ok(v), Some(r)) => {
                let _ = r.reply(v.unwrap_or(K::GenericNull));
            }
            (Err(e), Some(r)) => {
                let _ = r.error(e);
            }
            (Err(e), None) => warn!(conn = id.0, function = %String::from_utf8_lossy(name), "{e}"),
            (Ok(_), None) => {}
        }
    }

    fn user_query(self: &Arc<Self>, peer: &Peer, args: &[RawObject], responder: Option<Responder>) {
        let parsed = proto::user_query(args);
        let (mode, reply) = match (&parsed, responder) {
            (_, Some(r)) => (Mode::Sync, ReplyTo::Sync(r)),
            (Ok(uq), None) if uq.callback.is_some() => (
                Mode::Callback,
                ReplyTo::Callback {
                    peer: peer.clone(),
                    name: uq.callback.clone().unwrap_or_default(),
                    services: uq.services.clone(),
                    query: uq.query.clone(),
                },
            ),
            (Err(_), None) => match args
                .get(1)
                .and_then(|cb| proto::text_arg(cb).ok())
                .filter(|n| !n.is_empty())
            {
                Some(name) => (
                    Mode::Callback,
                    ReplyTo::Callback {
                        peer: peer.clone(),
                        name,
                        services: Vec::new(),
                        query: args.first().cloned().unwrap_or_else(|| RawObject::encode(&K::GenericNull)),
                    },
                ),
                None => (Mode::Deferred, ReplyTo::Deferred(peer.clone())),
            },
            (Ok(_), None) => (Mode::Deferred, ReplyTo::Deferred(peer.clone())),
        };
        if let Some(m) = &self.metrics {
            m.request(mode);
        }
        match parsed {
            Ok(uq) => self.submit(ClientId(peer.id().0), reply, uq),
            Err(text) => {
                let f = Failure::BadRequest(text);
                if let Some(m) = &self.metrics {
                    m.error(f.word());
                }
                send_reply(reply, Err(f));
            }
        }
    }

    /// Submits a client request to the gateway core.
    fn submit(self: &Arc<Self>, client: ClientId, reply: ReplyTo, uq: UserQuery) {
        if self.closing.load(Ordering::Acquire) {
            send_reply(reply, Err(Failure::ShuttingDown));
            return;
        }
        let refused = self.with(move |inner, now, work| {
            let Some(gw) = inner.gw.as_mut() else {
                return Some(reply);
            };
            let req = ClientRequest {
                client,
                reply,
                services: uq.services,
                all_instances: uq.all_instances,
                query: uq.query,
                timeout: uq.timeout,
            };
            gw.client_query(now, req, &mut work.gw);
            None
        });
        if let Some(reply) = refused {
            send_reply(
                reply,
                Err(Failure::BadRequest("this is a load balancer; send userQuery to a gateway".into())),
            );
        }
    }

    /// Submits an HTTP request; the receiver gets the result.
    pub(crate) fn submit_http(
        self: &Arc<Self>,
        uq: UserQuery,
    ) -> (ClientId, oneshot::Receiver<Result<Payload, Failure>>) {
        let id = ClientId(HTTP_CLIENT_BASE + self.next_http.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        if let Some(m) = &self.metrics {
            m.request(Mode::Http);
        }
        self.submit(id, ReplyTo::Http(tx), uq);
        (id, rx)
    }

    /// A client is gone (connection closed, HTTP request abandoned).
    pub(crate) fn client_closed(self: &Arc<Self>, client: ClientId) {
        self.with(|inner, now, work| {
            if let Some(gw) = inner.gw.as_mut() {
                gw.client_closed(now, client, &mut work.gw);
            }
        });
    }

    fn on_close(self: &Arc<Self>, peer: &Peer) {
        let id = peer_id(peer);
        self.with(|inner, now, work| {
            inner.peers.remove(&id);
            if let Some(lb) = inner.lb.as_mut() {
                lb.connection_closed(id, now, &mut work.lb);
            }
            if let Some(gw) = inner.gw.as_mut() {
                gw.client_closed(now, ClientId(id.0), &mut work.gw);
            }
        });
    }

    /// A message from a service instance on our link to it.
    fn on_service_message(self: &Arc<Self>, address: &Address, msg: &Message) {
        let reply = match proto::service_reply(msg) {
            Ok(r) => r,
            Err(e) => {
                warn!(%address, error = %e, "unexpected message from a service; ignored");
                return;
            }
        };
        self.with(|inner, now, work| {
            let Some(gw) = inner.gw.as_mut() else { return };
            match reply {
                ServiceReply::Result(seq, raw) => gw.return_res(now, address, seq, Ok(raw), &mut work.gw),
                ServiceReply::Error(seq, text) => gw.return_res(now, address, seq, Err(text), &mut work.gw),
            }
        });
    }

    /// A message the load balancer pushed to us.
    fn on_lb_message(self: &Arc<Self>, msg: Message) {
        let Some(call) = proto::call_of(&msg) else {
            warn!("unexpected message from the load balancer; ignored");
            return;
        };
        let r: Result<(), String> = self.with(|inner, now, work| {
            let Some(gw) = inner.gw.as_mut() else { return Ok(()) };
            match (&call.name[..], call.args.as_slice()) {
                (proto::ADD_RESOURCE, [t]) => {
                    let rows = proto::resource_rows(&t.decode().map_err(|e| e.to_string())?)?;
                    for (service, address) in rows {
                        gw.add_resource(service, address, &mut work.gw);
                    }
                }
                (proto::REMOVE_RESOURCE, [t]) => {
                    let rows = proto::resource_rows(&t.decode().map_err(|e| e.to_string())?)?;
                    for (_, address) in rows {
                        gw.remove_resource(now, &address, &mut work.gw);
                    }
                }
                (proto::SERVICE_ALLOC, [s, a]) => {
                    let seq = proto::seq_arg(s)?;
                    gw.service_alloc(now, seq, Address::from_bytes(proto::text_arg(a)?), &mut work.gw);
                }
                (proto::SERVICE_DENIED, [s, t]) => {
                    let seq = proto::seq_arg(s)?;
                    let text = String::from_utf8_lossy(&proto::text_arg(t)?).into_owned();
                    gw.service_denied(now, seq, Failure::from_q_text(&text), &mut work.gw);
                }
                (name, _) => return Err(format!("unknown function `{}", String::from_utf8_lossy(name))),
            }
            Ok(())
        });
        if let Err(e) = r {
            warn!(error = %e, "bad message from the load balancer; ignored");
        }
    }

    /// Keeps a link to one instance: connects (with backoff), reports it up,
    /// reads its results, reports it down, reconnects — until stopped.
    async fn link_task(self: Arc<Self>, address: Address, link: LinkId, stop: CancellationToken) {
        let target = match qmesh_ipc::Address::parse(&address.text()) {
            Ok(t) => t,
            Err(e) => {
                warn!(%address, error = %e, "instance address cannot be parsed; it will not be used");
                self.with(|inner, now, work| {
                    if let Some(gw) = inner.gw.as_mut() {
                        gw.link_down(now, &address, link, &mut work.gw);
                    }
                });
                return;
            }
        };
        let mut failures = 0u32;
        loop {
            let delay = self.backoff.delay(failures);
            if !delay.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            let (closed_tx, closed) = oneshot::channel::<()>();
            let handler =
                ServiceLinkHandler { router: self.clone(), address: address.clone(), _closed: closed_tx };
            let conn = tokio::select! {
                _ = stop.cancelled() => return,
                c = Connection::connect_with_handler(&target, self.link_opts.clone(), handler) => c,
            };
            let conn = match conn {
                Ok(c) => (c, closed),
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        info!(%address, error = %e, "cannot connect to instance; retrying");
                    }
                    self.with(|inner, now, work| {
                        if let Some(gw) = inner.gw.as_mut() {
                            gw.link_down(now, &address, link, &mut work.gw);
                        }
                    });
                    continue;
                }
            };
            let (sender, closed) = conn;
            let current = self.with(|inner, now, work| {
                let Some(slot) = inner.links.get_mut(&address).filter(|s| s.link == link) else {
                    return false;
                };
                slot.sender = Some(sender.clone());
                if let Some(gw) = inner.gw.as_mut() {
                    gw.link_up(now, &address, link, &mut work.gw);
                }
                true
            });
            if !current {
                sender.close();
                return;
            }
            debug!(%address, "link to instance up");
            tokio::select! {
                _ = stop.cancelled() => {
                    sender.close();
                    return;
                }
                // the handler is dropped when the connection's reader ends
                _ = closed => {}
            }
            info!(%address, "link to instance lost");
            self.with(|inner, now, work| {
                if let Some(slot) = inner.links.get_mut(&address).filter(|s| s.link == link) {
                    slot.sender = None;
                }
                if let Some(gw) = inner.gw.as_mut() {
                    gw.link_down(now, &address, link, &mut work.gw);
                }
            });
            failures = 1;
        }
    }

    /// Keeps the connection to a remote load balancer: connect (with
    /// backoff), `registerGW`, pull the resources, read its pushes; on loss,
    /// fail what waits for it and start again.
    async fn lb_task(self: Arc<Self>, target: qmesh_ipc::Address) {
        let mut failures = 0u32;
        loop {
            let delay = self.backoff.delay(failures);
            if !delay.is_zero() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            let (closed_tx, closed) = oneshot::channel::<()>();
            let gate = Arc::new(Mutex::new(LbGate::Registering(Vec::new())));
            let handler = LbLinkHandler { router: self.clone(), gate: gate.clone(), _closed: closed_tx };
            let conn = tokio::select! {
                _ = self.stop.cancelled() => return,
                c = Connection::connect_with_handler(&target, self.link_opts.clone(), handler) => c,
            };
            let sender = match conn {
                Ok(c) => c,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(20) {
                        warn!(lb = %target, error = %e, failures, "cannot connect to the load balancer; retrying");
                    }
                    continue;
                }
            };
            let rows = match sender.call(&proto::register_gw(true)).await {
                Ok(msg) => msg.decode().map_err(|e| e.to_string()).and_then(|k| proto::resource_rows(&k)),
                Err(e) => Err(e.to_string()),
            };
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    warn!(lb = %target, error = %e, "registerGW failed; retrying");
                    sender.close();
                    failures = failures.saturating_add(1);
                    continue;
                }
            };
            info!(lb = %target, resources = rows.len(), "registered with the load balancer");
            {
                // the resource list first, then what was pushed meanwhile,
                // in order; from here on the handler routes pushes itself
                let mut gate = gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                self.with(|inner, _now, work| {
                    inner.lb_sender = Some(sender.clone());
                    if let Some(gw) = inner.gw.as_mut() {
                        gw.lb_connected(rows, &mut work.gw);
                    }
                });
                if let LbGate::Registering(held) = std::mem::replace(&mut *gate, LbGate::Open) {
                    for msg in held {
                        self.on_lb_message(msg);
                    }
                }
            }
            self.health.set_ready(true);
            tokio::select! {
                _ = self.stop.cancelled() => {
                    sender.close();
                    return;
                }
                // the handler is dropped when the connection's reader ends
                _ = closed => {}
            }
            warn!(lb = %target, "connection to the load balancer lost; reconnecting");
            self.health.set_ready(false);
            self.with(|inner, now, work| {
                inner.lb_sender = None;
                if let Some(gw) = inner.gw.as_mut() {
                    gw.lb_lost(now, &mut work.gw);
                }
            });
            failures = 1;
        }
    }

    /// Runs the cores' timers.
    async fn timer_task(self: Arc<Self>) {
        loop {
            let armed = self.lock().armed;
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.timer.notified() => continue,
                _ = sleep_until(armed) => {}
            }
            self.with(|inner, now, work| {
                inner.armed = None;
                if let Some(gw) = inner.gw.as_mut() {
                    gw.tick(now, &mut work.gw);
                }
                if let Some(lb) = inner.lb.as_mut() {
                    lb.tick(now, &mut work.lb);
                }
            });
        }
    }

    /// Refuses new requests, gives those in flight `grace` to finish, then
    /// fails the rest with `shutting down`.
    async fn drain(self: &Arc<Self>, grace: Duration) {
        self.closing.store(true, Ordering::Release);
        self.health.set_ready(false);
        let deadline = tokio::time::Instant::now() + grace;
        while self.requests_in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(SHUTDOWN_POLL).await;
        }
        let left = self.requests_in_flight();
        if left > 0 {
            warn!(requests = left, "shutting down: failing requests still in flight");
        }
        self.with(|inner, now, work| {
            if let Some(gw) = inner.gw.as_mut() {
                gw.fail_all(now, Failure::ShuttingDown, &mut work.gw);
            }
        });
    }

    /// Client requests in flight.
    pub fn requests_in_flight(&self) -> usize {
        self.lock().gw.as_ref().map_or(0, Core::request_count)
    }

    /// The state as JSON (`/api/services`).
    pub fn status(&self) -> serde_json::Value {
        let inner = self.lock();
        let mut out = serde_json::Map::new();
        if let Some(gw) = &inner.gw {
            let services: Vec<serde_json::Value> = gw
                .snapshot()
                .into_iter()
                .map(|s| {
                    serde_json::json!({
                        "service": s.service.text(), "instances_up": s.instances_up,
                        "waiting": s.waiting, "in_flight": s.in_flight,
                    })
                })
                .collect();
            out.insert(
                "gateway".into(),
                serde_json::json!({
                    "lb_connected": gw.lb_up(), "requests_in_flight": gw.request_count(), "services": services,
                }),
            );
        }
        if let Some(lb) = &inner.lb {
            let services: Vec<serde_json::Value> = lb
                .snapshot()
                .into_iter()
                .map(|s| {
                    serde_json::json!({
                        "service": s.service.text(), "instances": s.instances, "free": s.free,
                        "busy": s.busy, "queued": s.queued,
                    })
                })
                .collect();
            out.insert(
                "load_balancer".into(),
                serde_json::json!({ "gateways": lb.gateway_count(), "services": services }),
            );
        }
        serde_json::Value::Object(out)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Queues an async message on a connection, if there is one (a failure
/// means the connection is closing; its owner handles that).
fn send(peer: Option<&Peer>, k: &K) {
    if let Some(p) = peer
        && let Err(e) = p.send_async(k)
    {
        debug!(conn = %p.id(), error = %e, "could not queue a message");
    }
}

/// Answers a client in its mode (see the crate docs for the forms).
fn send_reply(reply: ReplyTo, result: Result<Payload, Failure>) {
    let r = match reply {
        ReplyTo::Sync(responder) => match result {
            Ok(Payload::Raw(raw)) => responder.reply_raw(raw),
            Ok(Payload::Value(k)) => responder.reply(k),
            Err(f) => responder.error(f.to_q_text()),
        },
        ReplyTo::Deferred(peer) => match result {
            Ok(Payload::Raw(raw)) => peer.send_raw(MsgType::Async, raw),
            Ok(Payload::Value(k)) => peer.send_async(&k),
            Err(f) => peer.send_async(&K::error(f.to_q_text())),
        },
        ReplyTo::Callback { peer, name, services, query } => {
            let (hdr, payload) = match result {
                Ok(p) => {
                    let payload = match p {
                        Payload::Raw(r) => K::Raw(r),
                        Payload::Value(k) => k,
                    };
                    (proto::callback_header(true, "", &services, &query), payload)
                }
                Err(f) => (proto::callback_header(false, &f.to_q_text(), &services, &query), K::GenericNull),
            };
            peer.send_async(&proto::callback_call(&name, hdr, payload))
        }
        ReplyTo::Http(tx) => {
            let _ = tx.send(result);
            Ok(())
        }
    };
    if let Err(e) = r {
        debug!(error = %e, "could not answer a client (gone?)");
    }
}

/// What a service instance sends on the gateway's link to it, handled on
/// the link's reader task (no hop to another task).
struct ServiceLinkHandler {
    router: Arc<Router>,
    address: Address,
    /// Dropped with the handler when the connection's reader ends: tells
    /// the link task the link is down.
    _closed: oneshot::Sender<()>,
}

impl Handler for ServiceLinkHandler {
    async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
        let _ = responder.error("bad request: a gateway answers no queries on its links to services");
    }

    async fn on_async(&self, _peer: &Peer, msg: Message) {
        self.router.on_service_message(&self.address, &msg);
    }
}

/// Whether pushes from the load balancer can be routed yet.
enum LbGate {
    /// `registerGW` has not been answered: pushes wait here, in order, so
    /// none is applied before the resource list it follows.
    Registering(Vec<Message>),
    Open,
}

/// What a remote load balancer pushes to the gateway (`serviceAlloc`,
/// `addResource`…), handled on the connection's reader task.
struct LbLinkHandler {
    router: Arc<Router>,
    gate: Arc<Mutex<LbGate>>,
    /// Dropped with the handler when the connection's reader ends.
    _closed: oneshot::Sender<()>,
}

impl Handler for LbLinkHandler {
    async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
        let _ = responder.error("bad request: a gateway answers no queries from its load balancer");
    }

    async fn on_async(&self, _peer: &Peer, msg: Message) {
        let mut gate = self.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &mut *gate {
            LbGate::Registering(held) => held.push(msg),
            LbGate::Open => self.router.on_lb_message(msg),
        }
    }
}

/// The kdb+ IPC handler of a routing process.
struct RouterHandler {
    router: Arc<Router>,
    lb_role: bool,
}

impl Handler for RouterHandler {
    async fn on_open(&self, peer: &Peer) {
        if self.lb_role {
            self.router.lock().peers.insert(peer_id(peer), peer.clone());
        }
    }

    async fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) {
        let Some(responder) = pykx::try_answer(&msg, responder) else { return };
        match proto::call_of(&msg) {
            Some(call) => self.router.on_call(peer, call, Some(responder)),
            None => {
                // q's `h""` chaser, or text we cannot evaluate
                let empty_string = msg.body().len() == 6 && msg.body()[0] == 10;
                let _ = if empty_string {
                    responder.reply(K::GenericNull)
                } else {
                    responder
                        .error("bad request: this gateway runs no q; send (`userQuery;(`service;\"query\"))")
                };
            }
        }
    }

    async fn on_async(&self, peer: &Peer, msg: Message) {
        match proto::call_of(&msg) {
            Some(call) => self.router.on_call(peer, call, None),
            None => debug!(conn = %peer.id(), "async message that is not a function call; ignored"),
        }
    }

    async fn on_close(&self, peer: &Peer) {
        self.router.on_close(peer);
    }
}

/// A bound routing process: its listeners are open, nothing runs yet.
pub struct Routing {
    kind: &'static str,
    server: Server,
    http: Option<TcpListener>,
    router: Arc<Router>,
    lb_target: Option<qmesh_ipc::Address>,
    metrics: Metrics,
    health: Health,
    lb_role: bool,
    grace: Duration,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("kind", &self.kind)
            .field("ipc", &self.ipc_addr())
            .finish_non_exhaustive()
    }
}

fn server_config(
    ipc: SocketAddr,
    max_message_bytes: u64,
    auth: Option<Arc<dyn Authenticator>>,
) -> ServerConfig {
    let mut cfg = ServerConfig::tcp(ipc);
    cfg.max_message_bytes = max_message_bytes;
    cfg.authenticator = auth;
    cfg
}

async fn bind_http(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, RoutingError> {
    Ok(match addr {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    })
}

fn register_lb_metrics(metrics: &Metrics, router: &Arc<Router>) {
    fn lb_sample(r: &Router, f: impl Fn(&LoadBalancer) -> Vec<(Labels, i64)>) -> Vec<(Labels, i64)> {
        r.lock().lb.as_ref().map(f).unwrap_or_default()
    }
    register_state(
        metrics,
        "qmesh_lb_queue_depth_requests",
        "Requests waiting for a free instance",
        router,
        false,
        |r| {
            lb_sample(r, |lb| {
                lb.snapshot()
                    .into_iter()
                    .map(|s| (label("service", s.service.text()), s.queued as i64))
                    .collect()
            })
        },
    );
    register_state(metrics, "qmesh_lb_instances", "Registered instances, free or busy", router, false, |r| {
        lb_sample(r, |lb| {
            lb.snapshot()
                .into_iter()
                .flat_map(|s| {
                    let name = s.service.text();
                    [
                        (
                            vec![
                                ("service".to_string(), name.clone()),
                                ("state".to_string(), "free".to_string()),
                            ],
                            s.free as i64,
                        ),
                        (
                            vec![("service".to_string(), name), ("state".to_string(), "busy".to_string())],
                            s.busy as i64,
                        ),
                    ]
                })
                .collect()
        })
    });
    register_state(metrics, "qmesh_lb_allocations", "Leases granted", router, true, |r| {
        lb_sample(r, |lb| vec![(Vec::new(), lb.stats().allocations as i64)])
    });
    register_state(metrics, "qmesh_lb_denied", "Requests refused, by reason", router, true, |r| {
        lb_sample(r, |lb| {
            let s = lb.stats();
            vec![
                (label("reason", "queue full"), s.denied_queue_full as i64),
                (label("reason", "unknown service"), s.denied_unknown as i64),
                (label("reason", "no instance"), s.denied_no_instance as i64),
            ]
        })
    });
    register_state(
        metrics,
        "qmesh_lb_stale_releases",
        "Releases that named no current lease (ignored)",
        router,
        true,
        |r| {
            lb_sample(r, |lb| {
                let s = lb.stats();
                vec![
                    (label("from", "gateway"), s.stale_gateway_releases as i64),
                    (label("from", "service"), s.stray_service_returns as i64),
                ]
            })
        },
    );
    register_state(
        metrics,
        "qmesh_lb_dropped_instances",
        "Instances dropped from the pool as stuck",
        router,
        true,
        |r| lb_sample(r, |lb| vec![(Vec::new(), lb.stats().dropped_stuck as i64)]),
    );
}

fn register_gw_metrics(metrics: &Metrics, router: &Arc<Router>) {
    fn gw_sample(r: &Router, f: impl Fn(&Core) -> Vec<(Labels, i64)>) -> Vec<(Labels, i64)> {
        r.lock().gw.as_ref().map(f).unwrap_or_default()
    }
    register_state(
        metrics,
        "qmesh_gateway_waiting_requests",
        "Request parts waiting for an allocation",
        router,
        false,
        |r| {
            gw_sample(r, |g| {
                g.snapshot()
                    .into_iter()
                    .map(|s| (label("service", s.service.text()), s.waiting as i64))
                    .collect()
            })
        },
    );
    register_state(
        metrics,
        "qmesh_gateway_in_flight_requests",
        "Request parts running on an instance",
        router,
        false,
        |r| {
            gw_sample(r, |g| {
                g.snapshot()
                    .into_iter()
                    .map(|s| (label("service", s.service.text()), s.in_flight as i64))
                    .collect()
            })
        },
    );
    register_state(metrics, "qmesh_gateway_instances_up", "Instances with a live link", router, false, |r| {
        gw_sample(r, |g| {
            g.snapshot()
                .into_iter()
                .map(|s| (label("service", s.service.text()), s.instances_up as i64))
                .collect()
        })
    });
    register_state(
        metrics,
        "qmesh_gateway_stale_results",
        "Results for requests long gone",
        router,
        true,
        |r| gw_sample(r, |g| vec![(Vec::new(), g.stats().stale_results as i64)]),
    );
}

fn new_router(
    gw: Option<Core>,
    lb: Option<LoadBalancer>,
    link_opts: ClientOptions,
    backoff: Backoff,
    health: Health,
    metrics: Option<GatewayMetrics>,
) -> Arc<Router> {
    let embedded = gw.is_some() && lb.is_some();
    Arc::new(Router {
        inner: Mutex::new(Inner {
            gw,
            lb,
            peers: IdMap::default(),
            links: HashMap::new(),
            lb_sender: None,
            armed: None,
        }),
        timer: Notify::new(),
        embedded,
        link_opts,
        backoff,
        stop: CancellationToken::new(),
        closing: AtomicBool::new(false),
        health,
        metrics,
        next_http: AtomicU64::new(0),
    })
}

/// Binds `qmesh lb`'s listeners.
pub async fn bind_lb(opts: LbOptions) -> Result<Routing, RoutingError> {
    let server =
        Server::bind(server_config(opts.ipc, opts.max_message_bytes, opts.authenticator.clone())).await?;
    let http = bind_http(opts.http).await?;
    let metrics = Metrics::new();
    let health = Health::new();
    let router = new_router(
        None,
        Some(LoadBalancer::new(opts.lb)),
        ClientOptions::default(),
        DEFAULT_RECONNECT,
        health.clone(),
        None,
    );
    register_lb_metrics(&metrics, &router);
    Ok(Routing {
        kind: "lb",
        server,
        http,
        router,
        lb_target: None,
        metrics,
        health,
        lb_role: true,
        grace: Duration::ZERO,
    })
}

/// Binds `qmesh gateway`'s listeners.
pub async fn bind_gateway(opts: GatewayOptions) -> Result<Routing, RoutingError> {
    let server =
        Server::bind(server_config(opts.ipc, opts.max_message_bytes, opts.authenticator.clone())).await?;
    let http = bind_http(opts.http).await?;
    let metrics = Metrics::new();
    let health = Health::new();
    let link_opts = ClientOptions { max_message_bytes: opts.max_message_bytes, ..ClientOptions::default() };
    let gm = GatewayMetrics::register(&metrics);
    let (core, lb, target) = match opts.lb {
        LbLocation::Embedded(cfg) => {
            let mut lb = LoadBalancer::new(cfg);
            lb.register_gateway(PeerId::LOCAL, GatewayProtocol::Qmesh);
            (Core::new(opts.gateway, true), Some(lb), None)
        }
        LbLocation::Remote(addr) => (Core::new(opts.gateway, false), None, Some(addr)),
    };
    let lb_role = lb.is_some();
    let router = new_router(Some(core), lb, link_opts, opts.reconnect, health.clone(), Some(gm));
    register_gw_metrics(&metrics, &router);
    if lb_role {
        register_lb_metrics(&metrics, &router);
    }
    Ok(Routing {
        kind: "gateway",
        server,
        http,
        router,
        lb_target: target,
        metrics,
        health,
        lb_role,
        grace: opts.shutdown_grace,
    })
}

impl Routing {
    /// The kdb+ IPC address it listens on.
    pub fn ipc_addr(&self) -> Option<SocketAddr> {
        self.server.local_addr()
    }

    /// The HTTP address it listens on, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The process's metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The shared state (for tests and status).
    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// Serves until `shutdown` triggers; then refuses new requests, lets
    /// those in flight finish (within the grace), fails the rest with
    /// `shutting down`, flushes every connection and returns.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RoutingError> {
        let Routing { kind, server, http, router, lb_target, metrics, health, lb_role, grace } = self;
        tokio::spawn(router.clone().timer_task());
        match lb_target {
            Some(t) => {
                tokio::spawn(router.clone().lb_task(t));
            }
            None => health.set_ready(true),
        }
        let http_task = http.map(|listener| {
            let api = crate::http::routes(router.clone(), kind == "gateway");
            tokio::spawn(qmesh_process::http::serve(
                listener,
                api,
                health.clone(),
                metrics.clone(),
                shutdown.clone(),
            ))
        });
        let handler = RouterHandler { router: router.clone(), lb_role };
        let drain_router = router.clone();
        let stop_signal = async move {
            shutdown.triggered().await;
            info!(kind, "shutting down");
            drain_router.drain(grace).await;
        };
        let r = server.run(handler, stop_signal).await;
        router.stop.cancel();
        if let Some(t) = http_task {
            match t.await {
                Ok(Err(e)) => warn!(error = %e, "http server ended with an error"),
                Err(e) => warn!(error = %e, "http server task failed"),
                Ok(Ok(())) => {}
            }
        }
        r.map_err(RoutingError::from)
    }
}

/// Turns a payload into JSON, off the runtime threads when it is large.
pub(crate) async fn payload_json(
    p: Payload,
    form: crate::json::TableForm,
) -> Result<serde_json::Value, Failure> {
    let small = p.len_hint() <= JSON_INLINE_MAX;
    let convert = move || -> Result<serde_json::Value, Failure> {
        let k = p.to_k().map_err(|e| Failure::Internal(format!("cannot decode the result: {e}")))?;
        Ok(serde_json::json!({ "type": k.ty(), "result": crate::json::to_json(&k, form) }))
    };
    if small {
        convert()
    } else {
        tokio::task::spawn_blocking(convert).await.map_err(|e| Failure::Internal(e.to_string()))?
    }
}
