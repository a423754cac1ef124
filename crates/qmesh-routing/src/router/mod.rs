//! The state of a routing process — the cores of [`crate::lb`] and
//! [`crate::gw`] behind one lock — and how events reach it and actions
//! leave it. [`crate::runtime`] binds and runs a process around it.
//!
//! Modules by concern: this one holds the state, the actions and the client
//! paths; `links` the reconnecting sessions to instances and to a remote load
//! balancer; `handler` the kdb+ IPC handler of the process's own port;
//! `samplers` the metrics read from the cores.
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

mod handler;
mod links;
mod samplers;

pub(crate) use handler::RouterHandler;
pub(crate) use samplers::{register_gw_metrics, register_lb_metrics};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use qmesh_codec::limits::COMPRESS_MIN_BYTES;
use qmesh_codec::{K, Message, MsgType, RawObject};
use qmesh_ipc::{Backoff, ClientOptions, Peer, Responder};
use qmesh_process::Health;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::gw::{ClientRequest, Gateway, GwAction, LinkId, Outcome};
use crate::lb::{LbAction, LoadBalancer, ProbeId, STATIC_PEER_BASE, ServiceRequest};
use crate::metrics::{GatewayMetrics, Mode};
use crate::proto::{self, ServiceReply, ToGateway, ToLb, UserQuery};
use crate::types::{Address, ClientId, Failure, IdMap, PeerId, ServiceName};
/// Client ids at and above this belong to HTTP requests (IPC connection ids
/// count up from 1 and never get near it).
pub const HTTP_CLIENT_BASE: u64 = 1 << 62;

/// How often shutdown checks whether requests in flight are done.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

/// Results larger than this (bytes) are converted to JSON on a blocking
/// thread, not on the runtime's.
const JSON_INLINE_MAX: usize = 64 * 1024;

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
    /// A plain sync query (`h"select …"`, `` h(`f;x) ``) routed to the
    /// default service: the answer as the response, the instance's own q
    /// error as that error (`'type`, not wrapped), a gateway failure as
    /// its catalog error.
    PlainSync(Responder),
    /// A plain async query (`neg[h]x; h[]`, mserve.q's deferred sync):
    /// the answer as an async message, an error as an async error object.
    PlainDeferred(Peer),
}

pub(crate) type Core = Gateway<ReplyTo, RawObject>;

/// A sync request to a static instance, sent once the lock is released;
/// its answer is fed back to the gateway core.
struct PendingCall {
    sender: qmesh_ipc::Sender,
    address: Address,
    seq: crate::types::Seq,
    query: RawObject,
}

struct LinkSlot {
    link: LinkId,
    sender: Option<qmesh_ipc::Sender>,
    stop: CancellationToken,
}

pub(crate) struct Inner {
    pub(crate) gw: Option<Core>,
    pub(crate) lb: Option<LoadBalancer>,
    /// Server-side connections, for the load balancer to push to.
    peers: IdMap<PeerId, Peer>,
    /// Links to service instances.
    links: HashMap<Address, LinkSlot>,
    /// The connection to a remote load balancer.
    lb_sender: Option<qmesh_ipc::Sender>,
    /// The time the timer task sleeps until.
    armed: Option<Instant>,
}

impl Inner {
    /// The cores' O(1) invariants, after every critical section, in
    /// release too. The O(n) ones (`check_invariants`, debug builds only)
    /// are not run here, where they would make each event cost O(n); the
    /// cores' own tests and the simulation run them after every step.
    fn check_invariants(&self) {
        if let Some(gw) = &self.gw {
            gw.check_cheap_invariants();
        }
        if let Some(lb) = &self.lb {
            lb.check_cheap_invariants();
        }
    }
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
    /// Probes of instances to send ([`LbAction::Probe`]).
    probes: Vec<(Peer, PeerId, ProbeId)>,
    calls: Vec<PendingCall>,
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
    /// Static instances: the address the cores know them by (no password)
    /// → the address connected to (with the credentials, if any).
    statics: HashMap<Address, qmesh_ipc::Address>,
    /// Where plain queries (anything not `userQuery` nor the protocol) go;
    /// `None`: they are refused with `bad request`.
    default_service: Option<ServiceName>,
    /// The process's permissions file, if any: checked for every service a
    /// client request names (set once after bind).
    pub(crate) permissions: std::sync::OnceLock<qmesh_process::Permissions>,
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
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock may have left the cores
        // half-updated: that is a bug, and the process ends (fail fast,
        // `qmesh_process::fail_fast`) rather than route from such state.
        self.inner.lock().expect("the routing state's lock is poisoned: a panic while holding it")
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
            inner.check_invariants();
            r
        };
        self.finish(done);
        r
    }

    fn run_work(&self, inner: &mut Inner, now: Instant, work: &mut Work, done: &mut Done) {
        loop {
            if !work.lb.is_empty() {
                for a in std::mem::take(&mut work.lb) {
                    self.lb_action(inner, now, a, work, done);
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

    fn lb_action(&self, inner: &mut Inner, now: Instant, a: LbAction, work: &mut Work, done: &mut Done) {
        let local = |gw: PeerId| gw == PeerId::LOCAL;
        match a {
            LbAction::Alloc { gw, seq, address } => {
                if local(gw) {
                    if let Some(core) = inner.gw.as_mut() {
                        core.service_alloc(now, seq, address, &mut work.gw);
                    }
                } else {
                    send(inner.peers.get(&gw), &ToGateway::ServiceAlloc { seq, address }.to_k());
                }
            }
            LbAction::Deny { gw, seq, failure } => {
                if local(gw) {
                    if let Some(core) = inner.gw.as_mut() {
                        core.service_denied(now, seq, failure, &mut work.gw);
                    }
                } else {
                    send(
                        inner.peers.get(&gw),
                        &ToGateway::ServiceDenied { seq, text: failure.to_q_text() }.to_k(),
                    );
                }
            }
            LbAction::AddResource { gw, service, address } => {
                if local(gw) {
                    if let Some(core) = inner.gw.as_mut() {
                        core.add_resource(service, address, &mut work.gw);
                    }
                } else {
                    send(inner.peers.get(&gw), &ToGateway::AddResource(vec![(service, address)]).to_k());
                }
            }
            LbAction::RemoveResource { gw, service, address } => {
                if local(gw) {
                    if let Some(core) = inner.gw.as_mut() {
                        core.remove_resource(now, &address, &mut work.gw);
                    }
                } else {
                    send(inner.peers.get(&gw), &ToGateway::RemoveResource(vec![(service, address)]).to_k());
                }
            }
            LbAction::DropInstance { peer, service, address, reason } => {
                warn!(%service, %address, ?reason, "closing the connection of an instance dropped from the pool");
                if peer.0 >= STATIC_PEER_BASE {
                    // our own link to a static instance: dropped, it
                    // reconnects and joins again once the process answers
                    let link = LinkId(peer.0 - STATIC_PEER_BASE);
                    if let Some(s) =
                        inner.links.values().find(|s| s.link == link).and_then(|s| s.sender.as_ref())
                    {
                        s.abort();
                    }
                } else if let Some(p) = inner.peers.get(&peer) {
                    p.abort();
                }
            }
            LbAction::Probe { peer, probe } => match inner.peers.get(&peer) {
                Some(p) => done.probes.push((p.clone(), peer, probe)),
                None => debug!(peer = peer.0, "probe of an instance whose connection is gone"),
            },
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
                    let msg = ToLb::RequestService { seq, service, target, timeout: Some(timeout) };
                    send(inner.lb_sender.as_deref(), &msg.to_k());
                }
            }
            GwAction::Release { seq } => match inner.lb.as_mut() {
                Some(lb) => lb.gateway_release(PeerId::LOCAL, seq, now, &mut work.lb),
                None => send(inner.lb_sender.as_deref(), &ToLb::ReleaseService(seq).to_k()),
            },
            GwAction::Done { seq } => match inner.lb.as_mut() {
                Some(lb) => lb.gateway_done(PeerId::LOCAL, seq, now, &mut work.lb),
                None => send(inner.lb_sender.as_deref(), &ToLb::ServiceDone(seq).to_k()),
            },
            GwAction::Lost { seq } => match inner.lb.as_mut() {
                Some(lb) => lb.gateway_lost(PeerId::LOCAL, seq, now, &mut work.lb),
                None => send(inner.lb_sender.as_deref(), &ToLb::ServiceLost(seq).to_k()),
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
            GwAction::Call { address, seq, query } => {
                match inner.links.get(&address).and_then(|s| s.sender.clone()) {
                    Some(sender) => done.calls.push(PendingCall { sender, address, seq, query }),
                    // the link task reports the loss, which fails the part
                    None => debug!(%address, seq = seq.0, "call to a static instance without a live link"),
                }
            }
            GwAction::Join { service, address, link } => {
                if let Some(lb) = inner.lb.as_mut() {
                    lb.register_static(
                        PeerId(STATIC_PEER_BASE + link.0),
                        service,
                        address,
                        now,
                        &mut work.lb,
                    );
                }
            }
            GwAction::Leave { link, .. } => {
                if let Some(lb) = inner.lb.as_mut() {
                    lb.connection_closed(PeerId(STATIC_PEER_BASE + link.0), now, &mut work.lb);
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
        for (peer, id, probe) in done.probes {
            tokio::spawn(self.clone().probe_task(peer, id, probe));
        }
        for call in done.calls {
            tokio::spawn(self.clone().call_task(call));
        }
        for (reply, outcome, service, elapsed) in done.replies {
            self.deliver(reply, outcome, &service, elapsed);
        }
    }

    /// Sends the probe `""` (q's chaser) to an instance and reports the
    /// answer to the load balancer core: the instance answers only once the
    /// query it is running (if any) has finished (the rule in the
    /// [`crate::lb`] docs). No timeout: an instance that never answers is
    /// dropped by the core's stuck timer, which closes the connection and so
    /// ends this task.
    async fn probe_task(self: Arc<Self>, peer: Peer, id: PeerId, probe: ProbeId) {
        let chaser = K::string("");
        let answer = tokio::select! {
            _ = self.stop.cancelled() => return,
            a = peer.call(&chaser) => a,
        };
        match answer {
            // an error answer is an answer: the instance has finished all it received before
            Ok(_) | Err(qmesh_ipc::IpcError::Remote(_)) => self.with(|inner, now, work| {
                if let Some(lb) = inner.lb.as_mut() {
                    lb.probe_answered(id, probe, now, &mut work.lb);
                }
            }),
            Err(e) => {
                debug!(peer = id.0, probe = probe.0, error = %e, "probe not answered; the connection closed")
            }
        }
    }

    /// Carries out the core's first actions (the `Connect`s of static
    /// instances, made before the router existed): the link tasks start.
    /// Call from within the runtime.
    pub(crate) fn start_links(self: &Arc<Self>, actions: Vec<GwAction<ReplyTo, RawObject>>) {
        self.with(|_inner, _now, work| work.gw.extend(actions));
    }

    /// Sends one query to a static instance as a sync request (the query's
    /// bytes as the client sent them) and feeds the answer back: the
    /// result, or the instance's q error. A lost connection is not an
    /// answer: the link's `down` fails the query (`service disconnected`).
    async fn call_task(self: Arc<Self>, call: PendingCall) {
        let PendingCall { sender, address, seq, query } = call;
        let result = match sender.call_raw(query).await {
            Ok(msg) => Ok(msg.as_object()),
            Err(qmesh_ipc::IpcError::Remote(text)) => Err(text),
            Err(e @ (qmesh_ipc::IpcError::Closed | qmesh_ipc::IpcError::Io(_))) => {
                debug!(%address, seq = seq.0, error = %e, "no answer from a static instance (link lost)");
                return;
            }
            Err(e) => Err(e.to_string()),
        };
        self.with(|inner, now, work| {
            if let Some(gw) = inner.gw.as_mut() {
                gw.return_res(now, &address, seq, result, &mut work.gw);
            }
        });
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

    /// A plain query (neither `userQuery` nor the protocol) for the default
    /// service: forwarded as the client sent it, bytes untouched, answered
    /// in the client's form. Without a default service it is refused.
    pub(crate) fn plain_query(self: &Arc<Self>, peer: &Peer, msg: &Message, responder: Option<Responder>) {
        let Some(service) = self.default_service.clone() else {
            match responder {
                Some(r) => {
                    let _ = r.error(NO_DEFAULT_SERVICE);
                }
                None => debug!(conn = %peer.id(), "async message that is not a function call; ignored"),
            }
            return;
        };
        let (mode, reply) = match responder {
            Some(r) => (Mode::Sync, ReplyTo::PlainSync(r)),
            None => (Mode::Deferred, ReplyTo::PlainDeferred(peer.clone())),
        };
        if let Some(m) = &self.metrics {
            m.request(mode);
        }
        let uq = UserQuery {
            services: vec![service],
            all_instances: false,
            query: msg.as_object(),
            timeout: None,
            callback: None,
        };
        self.submit(ClientId(peer.id().0), reply, uq);
    }

    fn on_call(
        self: &Arc<Self>,
        peer: &Peer,
        msg: &Message,
        call: proto::Call,
        responder: Option<Responder>,
    ) {
        let id = peer_id(peer);
        if &call.name[..] == proto::USER_QUERY {
            self.user_query(peer, &call.args, responder);
            return;
        }
        let parsed = match ToLb::parse(&call) {
            Some(p) => p,
            None if self.default_service.is_some() => {
                self.plain_query(peer, msg, responder);
                return;
            }
            None => {
                let text = format!(
                    "bad request: unknown function `{}; send (`userQuery;(service;query))",
                    String::from_utf8_lossy(&call.name)
                );
                match responder {
                    Some(r) => {
                        let _ = r.error(text);
                    }
                    None => warn!(conn = id.0, "{text}"),
                }
                return;
            }
        };
        let result: Result<Option<K>, String> = parsed.and_then(|msg| {
            self.with(|inner, now, work| {
                let Some(lb) = inner.lb.as_mut() else {
                    return Err(
                        "bad request: this gateway uses a separate load balancer; register there".into()
                    );
                };
                Ok(lb.apply(id, msg, now, &mut work.lb).map(|rows| proto::resource_table(&rows)))
            })
        });
        match (result, responder) {
            (Ok(v), Some(r)) => {
                let _ = r.reply(v.unwrap_or(K::GenericNull));
            }
            (Err(e), Some(r)) => {
                let _ = r.error(e);
            }
            (Err(e), None) => warn!(conn = id.0, function = %String::from_utf8_lossy(&call.name), "{e}"),
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
            // A malformed call is never answered as a callback: its second
            // argument may be anything (`` (`userQuery;`EQ;"select …") `` puts
            // the query there), and calling a function named after it on the
            // client would be wrong. One async error message, which a
            // deferred-sync client's `h[]` raises.
            (Err(_), None) | (Ok(_), None) => (Mode::Deferred, ReplyTo::Deferred(peer.clone())),
        };
        if let Some(m) = &self.metrics {
            m.request(mode);
        }
        match parsed {
            Ok(uq) => match self.may_query(peer.user(), &uq.services) {
                Ok(()) => self.submit(ClientId(peer.id().0), reply, uq),
                Err(f) => {
                    if let Some(m) = &self.metrics {
                        m.error(f.word());
                    }
                    send_reply(reply, Err(f));
                }
            },
            Err(text) => {
                let f = Failure::from_parse_error(text);
                if let Some(m) = &self.metrics {
                    m.error(f.word());
                }
                send_reply(reply, Err(f));
            }
        }
    }

    /// Whether `user` may query every one of `services` (the permissions
    /// file; everyone may without one).
    pub(crate) fn may_query(&self, user: &str, services: &[ServiceName]) -> Result<(), Failure> {
        let Some(p) = self.permissions.get() else { return Ok(()) };
        let names: Vec<String> = services.iter().map(ServiceName::text).collect();
        p.check(user, qmesh_process::Action::Query, names.iter().map(String::as_str))
            .map_err(|e| Failure::Access(e.detail.unwrap_or_default()))
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
        let push = match ToGateway::parse(&call) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "bad message from the load balancer; ignored");
                return;
            }
        };
        self.with(|inner, now, work| {
            let Some(gw) = inner.gw.as_mut() else { return };
            match push {
                ToGateway::AddResource(rows) => {
                    for (service, address) in rows {
                        gw.add_resource(service, address, &mut work.gw);
                    }
                }
                ToGateway::RemoveResource(rows) => {
                    for (_, address) in rows {
                        gw.remove_resource(now, &address, &mut work.gw);
                    }
                }
                ToGateway::ServiceAlloc { seq, address } => gw.service_alloc(now, seq, address, &mut work.gw),
                ToGateway::ServiceDenied { seq, text } => {
                    gw.service_denied(now, seq, Failure::from_q_text(&text), &mut work.gw);
                }
            }
        });
    }

    /// Runs the cores' timers.
    pub(crate) async fn timer_task(self: Arc<Self>) {
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

    /// Stops the process's own tasks (timers, links, the load balancer
    /// session); the driver calls it once the servers have stopped.
    pub(crate) fn stop_tasks(&self) {
        self.stop.cancel();
    }

    /// Refuses new requests, gives those in flight `grace` to finish, then
    /// fails the rest with `shutting down`.
    pub(crate) async fn drain(self: &Arc<Self>, grace: Duration) {
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
            let statics: Vec<serde_json::Value> = gw
                .static_instances()
                .into_iter()
                .map(|(service, address, up)| {
                    serde_json::json!({ "service": service.text(), "address": address.text(), "up": up })
                })
                .collect();
            out.insert(
                "gateway".into(),
                serde_json::json!({
                    "lb_connected": gw.lb_up(), "requests_in_flight": gw.request_count(), "services": services,
                    "static_instances": statics,
                    "default_service": self.default_service.as_ref().map(ServiceName::text),
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

/// The refusal of a sync message that is not a call when the gateway has
/// no default service.
pub(crate) const NO_DEFAULT_SERVICE: &str = "bad request: this gateway runs no q; send (`userQuery;(`service;\"query\")), or start it with --default-service";

/// The text a plain client gets for a failure: the instance's own error as
/// it raised it (a transparent balancer), anything else in the catalog's
/// words.
fn plain_error_text(f: Failure) -> String {
    match f {
        Failure::ServiceError { text, .. } => text,
        f => f.to_q_text(),
    }
}

/// Answers a client in its mode (see the crate docs for the forms).
fn send_reply(reply: ReplyTo, result: Result<Payload, Failure>) {
    let r = match reply {
        ReplyTo::PlainSync(responder) => match result {
            Ok(Payload::Raw(raw)) => responder.reply_raw(raw),
            Ok(Payload::Value(k)) => responder.reply(k),
            Err(f) => responder.error(plain_error_text(f)),
        },
        ReplyTo::PlainDeferred(peer) => match result {
            Ok(Payload::Raw(raw)) => peer.send_raw(MsgType::Async, raw),
            Ok(Payload::Value(k)) => peer.send_async(&k),
            Err(f) => peer.send_async(&K::error(plain_error_text(f))),
        },
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

/// What a gateway needs for mserve mode: the connect addresses of its static
/// instances (with credentials) and where plain queries go.
#[derive(Debug, Default)]
pub(crate) struct PlainSetup {
    pub(crate) statics: HashMap<Address, qmesh_ipc::Address>,
    pub(crate) default_service: Option<ServiceName>,
}

pub(crate) fn new_router(
    gw: Option<Core>,
    lb: Option<LoadBalancer>,
    link_opts: ClientOptions,
    backoff: Backoff,
    health: Health,
    metrics: Option<GatewayMetrics>,
    plain: PlainSetup,
) -> Arc<Router> {
    let PlainSetup { statics, default_service } = plain;
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
        statics,
        default_service,
        permissions: std::sync::OnceLock::new(),
    })
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
