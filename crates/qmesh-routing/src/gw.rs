//! The gateway as a state machine (sans-IO).
//!
//! A client request (`userQuery`) becomes one *part* per service (or per
//! instance, for a fan-out to every instance). Each part gets a fresh
//! [`Seq`] and is allocated by the load balancer (`requestService` →
//! `serviceAlloc`), dispatched to the instance (`queryService`) and answered
//! by it (`returnRes`). When every part has answered the client gets its
//! reply; if any part fails, or the deadline passes, the client gets an error
//! at once and the other parts are abandoned.
//!
//! The state machine is generic over the reply handle `R` (how to answer the
//! client: a sync responder, an async handle, an HTTP channel) and the payload
//! `P` (the query and the results, normally raw encoded objects that are never
//! decoded here). It never blocks and never sleeps: the caller feeds events
//! with the current time and carries out the [`GwAction`]s.
//!
//! Rules it keeps:
//!
//! * A request is keyed by a [`ReqId`] and its client by a [`ClientId`],
//!   neither ever reused: a result can only reach the client that asked.
//! * A client that goes away loses its waiting parts (released at the load
//!   balancer with `returnService[seq]`), and results of parts already
//!   dispatched are dropped when they arrive.
//! * An abandoned part that was dispatched still holds its instance: the
//!   lease is ended (`serviceDone[seq]`) only when the instance answers, so
//!   the instance is never handed to someone else while it is busy.
//! * An allocation the gateway cannot use (its link to the instance is down)
//!   is released and requested again, a bounded number of times.
//!
//! # Static instances
//!
//! Besides the instances the load balancer announces (registered ones,
//! speaking the protocol), the gateway can be given *static* instances
//! ([`Gateway::add_static_instance`], `qmesh gateway --instances`): plain
//! kdb+ processes that speak no protocol at all. The gateway keeps the link
//! itself ([`GwAction::Connect`], never disconnected), and the instance is
//! in the load balancer's pool exactly while the link is up: it joins
//! ([`GwAction::Join`]) when the link comes up — the process answered the
//! handshake — and leaves ([`GwAction::Leave`]) when it drops. Its
//! queries go out as sync requests of the query itself ([`GwAction::Call`]);
//! the answer (or the q error) is its result, fed back through
//! [`Gateway::return_res`] like a `returnRes`, and ends the lease
//! (`serviceDone`): the answer is what frees the instance. A link lost
//! with a query on it fails that query with `service disconnected` at once.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::types::{Address, ClientId, Failure, IdMap, ReqId, Seq, ServiceName};

/// Default time a client waits for a result (per request; a call can give
/// its own, up to [`DEFAULT_MAX_TIMEOUT`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default ceiling on a per-call timeout, so that a client cannot pin gateway
/// memory for days.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Default bound on requests in flight in one gateway (count): each holds a
/// reply handle and a copy of its query.
pub const DEFAULT_MAX_REQUESTS: usize = 65_536;

/// Default bound on the parts of one fan-out request (count).
pub const DEFAULT_MAX_FANOUT: usize = 256;

/// How many times an allocation the gateway cannot use (no link to that
/// instance) is released and requested again before the part fails.
pub const DEFAULT_ALLOC_RETRIES: u8 = 3;

/// How long a dispatched part whose client is gone is remembered, waiting for
/// its result so that its lease can be ended. Past it the load balancer's own
/// stuck-instance grace has long dropped the instance.
pub const DEFAULT_ABANDON_HORIZON: Duration = Duration::from_secs(300);

/// Settings of the gateway core.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_requests: usize,
    pub max_fanout: usize,
    pub alloc_retries: u8,
    pub abandon_horizon: Duration,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            default_timeout: DEFAULT_TIMEOUT,
            max_timeout: DEFAULT_MAX_TIMEOUT,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_fanout: DEFAULT_MAX_FANOUT,
            alloc_retries: DEFAULT_ALLOC_RETRIES,
            abandon_horizon: DEFAULT_ABANDON_HORIZON,
        }
    }
}

/// A client's request as parsed from `userQuery` (or HTTP).
#[derive(Debug, Clone)]
pub struct ClientRequest<R, P> {
    pub client: ClientId,
    pub reply: R,
    /// One name: a routed query. Several: one instance of each (fan-out).
    pub services: Vec<ServiceName>,
    /// Run on every instance of each named service (fan-out).
    pub all_instances: bool,
    pub query: P,
    /// Overrides [`GatewayConfig::default_timeout`] (capped at the maximum).
    pub timeout: Option<Duration>,
}

/// A successful result.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<P> {
    /// A single routed query: the result as the service sent it.
    One(P),
    /// A fan-out: one result per part, in the order of the request (services
    /// as listed; instances in registration order).
    Parts(Vec<P>),
}

/// Identifies one link (connection attempt series) to an instance, so that
/// news about an old link is not mistaken for the current one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LinkId(pub u64);

/// What the gateway wants done.
#[derive(Debug)]
pub enum GwAction<R, P> {
    /// To the load balancer: `requestService`.
    RequestService { seq: Seq, service: ServiceName, target: Option<Address>, timeout: Duration },
    /// To the load balancer: `returnService[seq]`, the allocation (or queued
    /// request) is not used.
    Release { seq: Seq },
    /// To the load balancer: `serviceDone[seq]`, the dispatched query is over.
    Done { seq: Seq },
    /// To the load balancer: `serviceLost[seq]`, the link to the instance
    /// running this query is gone; the lease ends when the instance reports
    /// back (or leaves the pool).
    Lost { seq: Seq },
    /// To the instance: `queryService (seq;query)`.
    Dispatch { address: Address, seq: Seq, query: P },
    /// Answer the client.
    Reply {
        reply: R,
        client: ClientId,
        /// The first service named, for labels.
        service: ServiceName,
        outcome: Result<Outcome<P>, Failure>,
        elapsed: Duration,
    },
    /// Keep a connection to this instance (reconnecting as needed) and report
    /// [`Gateway::link_up`] / [`Gateway::link_down`] with this link id.
    Connect { address: Address, link: LinkId },
    /// Close the connection to this instance and stop reconnecting.
    Disconnect { address: Address, link: LinkId },
    /// To a static instance: the query itself as a sync request; its
    /// answer is fed to [`Gateway::return_res`] under `seq` (a q error as
    /// `Err(text)`).
    Call { address: Address, seq: Seq, query: P },
    /// To the load balancer: the static instance behind `link` is up and
    /// joins the pool of `service`.
    Join { service: ServiceName, address: Address, link: LinkId },
    /// To the load balancer: the static instance behind `link` left the
    /// pool (its link dropped); it joins again when the link is back.
    Leave { address: Address, link: LinkId },
}

/// A service's gauges, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GwServiceSnapshot {
    pub service: ServiceName,
    /// Instances with a live link.
    pub instances_up: usize,
    /// Parts waiting for an allocation.
    pub waiting: usize,
    /// Parts dispatched and not yet answered (abandoned ones included).
    pub in_flight: usize,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Default)]
pub struct GwStats {
    pub requests: u64,
    /// Results for a seq the gateway does not know (long gone).
    pub stale_results: u64,
    /// Results from an instance other than the one the part was sent to.
    pub misrouted_results: u64,
    pub alloc_retries: u64,
    pub abandoned_results: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PartState {
    /// `requestService` sent, no allocation yet.
    AwaitAlloc,
    /// Allocated to an instance whose link is being established.
    AwaitLink(Address),
    /// `queryService` sent.
    Dispatched(Address),
}

#[derive(Debug)]
struct SeqEntry {
    /// `None` once the request is gone (the part is abandoned).
    req: Option<ReqId>,
    part: usize,
    service: ServiceName,
    target: Option<Address>,
    state: PartState,
    retries: u8,
    /// When an abandoned, dispatched part is forgotten (its timer).
    forget_at: Option<Instant>,
}

#[derive(Debug)]
struct Part<P> {
    service: ServiceName,
    seq: Seq,
    result: Option<P>,
}

#[derive(Debug)]
struct Request<R, P> {
    client: ClientId,
    reply: R,
    started: Instant,
    timeout: Duration,
    query: P,
    parts: Vec<Part<P>>,
    remaining: usize,
    fanout: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// First connection attempt under way.
    Connecting,
    Up,
    /// Lost; the caller is reconnecting. Not counted as an instance.
    Retrying,
    /// Not wanted; no connection.
    Down,
}

impl LinkState {
    fn live(self) -> bool {
        matches!(self, LinkState::Connecting | LinkState::Up)
    }
}

#[derive(Debug)]
struct InstanceView {
    service: ServiceName,
    link: LinkId,
    state: LinkState,
    /// Announced by the load balancer and not removed since (a static
    /// instance is always wanted).
    wanted: bool,
    /// A static instance: the link is ours, queries are sync calls.
    fixed: bool,
}

/// How a link was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// The connection dropped; it may come back.
    LinkDown,
    /// The load balancer removed the instance from the pool.
    Removed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Deadline(ReqId),
    Forget(Seq),
}

/// The gateway state. See the module docs.
#[derive(Debug)]
pub struct Gateway<R, P> {
    cfg: GatewayConfig,
    lb_up: bool,
    next_seq: i64,
    next_req: u64,
    next_link: u64,
    /// Service → its instances' addresses, in announcement order. Names stay
    /// known after their instances leave (to tell "no instance" from
    /// "unknown service").
    services: HashMap<ServiceName, Vec<Address>>,
    instances: HashMap<Address, InstanceView>,
    requests: IdMap<ReqId, Request<R, P>>,
    seqs: IdMap<Seq, SeqEntry>,
    by_client: IdMap<ClientId, Vec<ReqId>>,
    /// Live timers only: an entry is removed when what it guards ends.
    timers: BTreeSet<(Instant, Timer)>,
    stats: GwStats,
}

impl<R, P: Clone> Gateway<R, P> {
    /// A gateway core; `lb_up` is true when the load balancer is in the same
    /// process (it is then never lost).
    pub fn new(cfg: GatewayConfig, lb_up: bool) -> Gateway<R, P> {
        Gateway {
            cfg,
            lb_up,
            next_seq: 1,
            next_req: 1,
            next_link: 1,
            services: HashMap::new(),
            instances: HashMap::new(),
            requests: IdMap::default(),
            seqs: IdMap::default(),
            by_client: IdMap::default(),
            timers: BTreeSet::new(),
            stats: GwStats::default(),
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &GwStats {
        &self.stats
    }

    pub fn lb_up(&self) -> bool {
        self.lb_up
    }

    /// Requests in flight.
    pub fn request_count(&self) -> usize {
        self.requests.len()
    }

    /// The current link id of an instance, if known.
    pub fn link_of(&self, address: &Address) -> Option<LinkId> {
        self.instances.get(address).map(|v| v.link)
    }

    /// The service an instance address belongs to, if known.
    pub fn service_of(&self, address: &Address) -> Option<&ServiceName> {
        self.instances.get(address).map(|i| &i.service)
    }

    /// A client request. Returns its id; a request refused at once is
    /// answered with a `Reply` action in `out`.
    pub fn client_query(
        &mut self,
        now: Instant,
        cr: ClientRequest<R, P>,
        out: &mut Vec<GwAction<R, P>>,
    ) -> ReqId {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        self.stats.requests += 1;
        let first = cr.services.first().cloned().unwrap_or_else(|| ServiceName::new(""));
        let refuse = |out: &mut Vec<GwAction<R, P>>, reply: R, failure: Failure| {
            out.push(GwAction::Reply {
                reply,
                client: cr.client,
                service: first.clone(),
                outcome: Err(failure),
                elapsed: Duration::ZERO,
            })
        };
        if cr.services.is_empty() {
            refuse(out, cr.reply, Failure::BadRequest("no service named".into()));
            return id;
        }
        if self.requests.len() >= self.cfg.max_requests {
            refuse(out, cr.reply, Failure::Limit(format!("{} requests in flight", self.requests.len())));
            return id;
        }
        if !self.lb_up {
            refuse(out, cr.reply, Failure::LbUnavailable);
            return id;
        }
        let mut targets: Vec<(ServiceName, Option<Address>)> = Vec::new();
        for name in &cr.services {
            let Some(addrs) = self.services.get(name) else {
                refuse(out, cr.reply, Failure::UnknownService(name.clone()));
                return id;
            };
            let live: Vec<&Address> = addrs
                .iter()
                .filter(|a| self.instances.get(*a).is_some_and(|i| i.wanted && i.state.live()))
                .collect();
            if live.is_empty() {
                refuse(out, cr.reply, Failure::NoInstance(name.clone()));
                return id;
            }
            if cr.all_instances {
                targets.extend(live.into_iter().map(|a| (name.clone(), Some(a.clone()))));
            } else {
                targets.push((name.clone(), None));
            }
        }
        if targets.len() > self.cfg.max_fanout {
            refuse(out, cr.reply, Failure::Limit(format!("fan-out of {} parts", targets.len())));
            return id;
        }
        let timeout = cr.timeout.unwrap_or(self.cfg.default_timeout).min(self.cfg.max_timeout);
        let fanout = cr.services.len() > 1 || cr.all_instances;
        let mut parts = Vec::with_capacity(targets.len());
        for (i, (service, target)) in targets.into_iter().enumerate() {
            let seq = self.new_seq();
            self.seqs.insert(
                seq,
                SeqEntry {
                    req: Some(id),
                    part: i,
                    service: service.clone(),
                    target: target.clone(),
                    state: PartState::AwaitAlloc,
                    retries: 0,
                    forget_at: None,
                },
            );
            out.push(GwAction::RequestService { seq, service: service.clone(), target, timeout });
            parts.push(Part { service, seq, result: None });
        }
        let remaining = parts.len();
        self.requests.insert(
            id,
            Request {
                client: cr.client,
                reply: cr.reply,
                started: now,
                timeout,
                query: cr.query,
                parts,
                remaining,
                fanout,
            },
        );
        self.by_client.entry(cr.client).or_default().push(id);
        self.timers.insert((now + timeout, Timer::Deadline(id)));
        id
    }

    /// A static instance of `service` at `address` (see the module docs):
    /// the gateway connects to it (a [`GwAction::Connect`] whose link is
    /// kept for good) and it joins the pool each time the link comes up.
    /// An address given twice is kept once; an address the load balancer
    /// announced already stays a registered instance.
    pub fn add_static_instance(
        &mut self,
        service: ServiceName,
        address: Address,
        out: &mut Vec<GwAction<R, P>>,
    ) {
        if self.instances.contains_key(&address) {
            warn!(%address, "static instance given twice; kept once");
            return;
        }
        let addrs = self.services.entry(service.clone()).or_default();
        addrs.push(address.clone());
        let link = LinkId(self.next_link);
        self.next_link += 1;
        self.instances.insert(
            address.clone(),
            InstanceView { service, link, state: LinkState::Connecting, wanted: true, fixed: true },
        );
        out.push(GwAction::Connect { address, link });
    }

    /// The static instances: service, address, and whether the link is up
    /// (so in the pool), by service then address.
    pub fn static_instances(&self) -> Vec<(ServiceName, Address, bool)> {
        let mut v: Vec<(ServiceName, Address, bool)> = self
            .instances
            .iter()
            .filter(|(_, i)| i.fixed)
            .map(|(a, i)| (i.service.clone(), a.clone(), i.state == LinkState::Up))
            .collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }

    /// `addResource`: an instance of `service` at `address`.
    pub fn add_resource(&mut self, service: ServiceName, address: Address, out: &mut Vec<GwAction<R, P>>) {
        if self.instances.get(&address).is_some_and(|v| v.fixed) {
            // our own static instance, announced back after it joined
            return;
        }
        let addrs = self.services.entry(service.clone()).or_default();
        if !addrs.contains(&address) {
            addrs.push(address.clone());
        }
        match self.instances.get_mut(&address) {
            Some(view) if view.wanted && view.state != LinkState::Down => {
                // connected, connecting or reconnecting already
                if view.service != service {
                    warn!(%address, old = %view.service, new = %service, "instance now registered under another name");
                    view.service = service;
                }
            }
            Some(view) => {
                view.wanted = true;
                view.service = service;
                if view.state == LinkState::Down {
                    let link = LinkId(self.next_link);
                    self.next_link += 1;
                    view.link = link;
                    view.state = LinkState::Connecting;
                    out.push(GwAction::Connect { address, link });
                }
            }
            None => {
                let link = LinkId(self.next_link);
                self.next_link += 1;
                self.instances.insert(
                    address.clone(),
                    InstanceView { service, link, state: LinkState::Connecting, wanted: true, fixed: false },
                );
                out.push(GwAction::Connect { address, link });
            }
        }
    }

    /// `removeResource` (qmesh load balancers): the instance left the pool.
    pub fn remove_resource(&mut self, now: Instant, address: &Address, out: &mut Vec<GwAction<R, P>>) {
        let Some(view) = self.instances.get_mut(address) else { return };
        if view.fixed {
            // a static instance left the pool (its link dropped, or the load
            // balancer found it stuck and the caller bounces the link): the
            // link stays ours and it joins again once the link is back up
            self.link_lost(now, address, Loss::Removed, out);
            return;
        }
        view.wanted = false;
        let link = view.link;
        if view.state != LinkState::Down {
            view.state = LinkState::Down;
            out.push(GwAction::Disconnect { address: address.clone(), link });
        }
        self.link_lost(now, address, Loss::Removed, out);
    }

    /// The link to an instance is established.
    pub fn link_up(&mut self, now: Instant, address: &Address, link: LinkId, out: &mut Vec<GwAction<R, P>>) {
        let Some(view) = self.instances.get_mut(address) else { return };
        if view.link != link || !view.wanted {
            return;
        }
        view.state = LinkState::Up;
        if view.fixed {
            out.push(GwAction::Join { service: view.service.clone(), address: address.clone(), link });
        }
        let waiting: Vec<Seq> = self
            .seqs
            .iter()
            .filter(|(_, e)| e.state == PartState::AwaitLink(address.clone()))
            .map(|(s, _)| *s)
            .collect();
        for seq in waiting {
            self.dispatch(now, seq, address.clone(), out);
        }
    }

    /// The link to an instance is lost (or could not be established). The
    /// caller keeps retrying while the instance is wanted.
    pub fn link_down(
        &mut self,
        now: Instant,
        address: &Address,
        link: LinkId,
        out: &mut Vec<GwAction<R, P>>,
    ) {
        let Some(view) = self.instances.get_mut(address) else { return };
        if view.link != link {
            return;
        }
        let was = view.state;
        let fixed = view.fixed;
        if view.wanted {
            // the caller reconnects under the same link id
            view.state = LinkState::Retrying;
        } else {
            view.state = LinkState::Down;
        }
        if was.live() {
            self.link_lost(now, address, Loss::LinkDown, out);
        }
        if fixed && was == LinkState::Up {
            out.push(GwAction::Leave { address: address.clone(), link });
        }
    }

    /// `serviceAlloc[seq;address]` from the load balancer.
    pub fn service_alloc(&mut self, now: Instant, seq: Seq, address: Address, out: &mut Vec<GwAction<R, P>>) {
        let Some(entry) = self.seqs.get(&seq) else {
            // not (or no longer) ours: give it back, as the whitepaper does
            debug!(seq = seq.0, %address, "allocation for a request that is gone; released");
            out.push(GwAction::Release { seq });
            return;
        };
        if entry.state != PartState::AwaitAlloc {
            warn!(seq = seq.0, %address, "second allocation for one seq; ignored");
            return;
        }
        let link = self.instances.get(&address).map(|v| (v.wanted, v.state));
        match link {
            Some((true, LinkState::Up)) => self.dispatch(now, seq, address, out),
            Some((true, LinkState::Connecting | LinkState::Retrying)) => {
                // wait for the link; if the instance is gone the load
                // balancer removes it and the part is requested again
                if let Some(e) = self.seqs.get_mut(&seq) {
                    e.state = PartState::AwaitLink(address);
                }
            }
            _ => {
                debug!(seq = seq.0, %address, "allocated an instance we have no link to; retrying");
                out.push(GwAction::Release { seq });
                self.retry(now, seq, out);
            }
        }
    }

    /// `serviceDenied[seq;"text"]` from a qmesh load balancer.
    pub fn service_denied(
        &mut self,
        now: Instant,
        seq: Seq,
        failure: Failure,
        out: &mut Vec<GwAction<R, P>>,
    ) {
        let Some(entry) = self.remove_seq(seq) else { return };
        if let Some(req) = entry.req {
            self.fail(now, req, failure, out);
        }
    }

    /// `returnRes (seq;result)` from the instance at `from`; `Err(text)` is a
    /// service error.
    pub fn return_res(
        &mut self,
        now: Instant,
        from: &Address,
        seq: Seq,
        result: Result<P, String>,
        out: &mut Vec<GwAction<R, P>>,
    ) {
        let Some(entry) = self.seqs.get(&seq) else {
            debug!(seq = seq.0, %from, "result for an unknown seq; dropped");
            self.stats.stale_results += 1;
            return;
        };
        if entry.state != PartState::Dispatched(from.clone()) {
            warn!(seq = seq.0, %from, "result from an instance the query was not sent to; dropped");
            self.stats.misrouted_results += 1;
            return;
        }
        let entry = self.remove_seq(seq).expect("present above");
        if self.lb_up {
            out.push(GwAction::Done { seq });
        }
        let Some(req_id) = entry.req else {
            self.stats.abandoned_results += 1;
            return;
        };
        let text = match result {
            Ok(value) => {
                let Some(req) = self.requests.get_mut(&req_id) else { return };
                req.parts[entry.part].result = Some(value);
                req.remaining -= 1;
                if req.remaining == 0 {
                    self.complete(now, req_id, out);
                }
                return;
            }
            Err(text) => text,
        };
        self.fail(now, req_id, Failure::ServiceError { service: entry.service, text }, out);
    }

    /// The connection to the load balancer is established (again);
    /// `resources` is the reply to `registerGW`.
    pub fn lb_connected(&mut self, resources: Vec<(ServiceName, Address)>, out: &mut Vec<GwAction<R, P>>) {
        self.lb_up = true;
        for (service, address) in resources {
            self.add_resource(service, address, out);
        }
    }

    /// The connection to the load balancer is lost. Parts waiting for an
    /// allocation fail with `lb unavailable`; dispatched parts carry on.
    pub fn lb_lost(&mut self, now: Instant, out: &mut Vec<GwAction<R, P>>) {
        self.lb_up = false;
        let mut failed: Vec<ReqId> = Vec::new();
        self.seqs.retain(|_, e| {
            if e.state == PartState::AwaitAlloc {
                if let Some(r) = e.req {
                    failed.push(r);
                }
                false
            } else {
                true
            }
        });
        failed.sort();
        failed.dedup();
        for req in failed {
            self.fail(now, req, Failure::LbUnavailable, out);
        }
    }

    /// A client went away: its requests are dropped without a reply.
    pub fn client_closed(&mut self, now: Instant, client: ClientId, out: &mut Vec<GwAction<R, P>>) {
        let Some(ids) = self.by_client.remove(&client) else { return };
        for id in ids {
            if let Some(req) = self.take_request(id) {
                self.abandon_parts(now, &req, out);
            }
        }
    }

    /// Fails every request (for shutdown).
    pub fn fail_all(&mut self, now: Instant, failure: Failure, out: &mut Vec<GwAction<R, P>>) {
        let mut ids: Vec<ReqId> = self.requests.keys().copied().collect();
        ids.sort();
        for id in ids {
            self.fail(now, id, failure.clone(), out);
        }
    }

    /// Times out requests past their deadline; forgets long-abandoned parts.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<GwAction<R, P>>) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, timer));
            match timer {
                Timer::Deadline(id) => {
                    if self.requests.contains_key(&id) {
                        self.fail(now, id, Failure::Timeout, out);
                    }
                }
                Timer::Forget(seq) => {
                    if self.seqs.get(&seq).is_some_and(|e| e.req.is_none()) {
                        debug!(seq = seq.0, "abandoned part never answered; forgotten");
                        self.remove_seq(seq);
                    }
                }
            }
        }
    }

    /// When [`Gateway::tick`] next has something to do.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Per-service gauges.
    pub fn snapshot(&self) -> Vec<GwServiceSnapshot> {
        let mut map: HashMap<&ServiceName, GwServiceSnapshot> = HashMap::new();
        for name in self.services.keys() {
            map.insert(
                name,
                GwServiceSnapshot { service: name.clone(), instances_up: 0, waiting: 0, in_flight: 0 },
            );
        }
        for view in self.instances.values() {
            if view.state == LinkState::Up
                && let Some(s) = map.get_mut(&view.service)
            {
                s.instances_up += 1;
            }
        }
        for e in self.seqs.values() {
            if let Some(s) = map.get_mut(&e.service) {
                match e.state {
                    PartState::AwaitAlloc | PartState::AwaitLink(_) => s.waiting += 1,
                    PartState::Dispatched(_) => s.in_flight += 1,
                }
            }
        }
        let mut out: Vec<GwServiceSnapshot> = map.into_values().collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    fn new_seq(&mut self) -> Seq {
        let s = Seq(self.next_seq);
        self.next_seq += 1;
        s
    }

    fn dispatch(&mut self, _now: Instant, seq: Seq, address: Address, out: &mut Vec<GwAction<R, P>>) {
        let Some(entry) = self.seqs.get_mut(&seq) else { return };
        let Some(req) = entry.req.and_then(|r| self.requests.get(&r)) else {
            // the client is gone: the allocation is not used
            self.remove_seq(seq);
            out.push(GwAction::Release { seq });
            return;
        };
        entry.state = PartState::Dispatched(address.clone());
        let query = req.query.clone();
        if self.instances.get(&address).is_some_and(|v| v.fixed) {
            out.push(GwAction::Call { address, seq, query });
        } else {
            out.push(GwAction::Dispatch { address, seq, query });
        }
    }

    /// Requests a new allocation for the part that `seq` was, under a new seq.
    fn retry(&mut self, now: Instant, seq: Seq, out: &mut Vec<GwAction<R, P>>) {
        let Some(entry) = self.remove_seq(seq) else { return };
        let Some(req_id) = entry.req else { return };
        if entry.retries >= self.cfg.alloc_retries || !self.lb_up {
            let failure =
                if self.lb_up { Failure::NoInstance(entry.service.clone()) } else { Failure::LbUnavailable };
            self.fail(now, req_id, failure, out);
            return;
        }
        let Some(req) = self.requests.get_mut(&req_id) else { return };
        self.stats.alloc_retries += 1;
        let new = Seq(self.next_seq);
        self.next_seq += 1;
        req.parts[entry.part].seq = new;
        let remaining = (req.started + req.timeout).saturating_duration_since(now);
        out.push(GwAction::RequestService {
            seq: new,
            service: entry.service.clone(),
            target: entry.target.clone(),
            timeout: remaining,
        });
        self.seqs.insert(
            new,
            SeqEntry {
                req: Some(req_id),
                part: entry.part,
                service: entry.service,
                target: entry.target,
                state: PartState::AwaitAlloc,
                retries: entry.retries + 1,
                forget_at: None,
            },
        );
    }

    /// Parts on `address` lose their link: dispatched ones fail with
    /// `service disconnected` (their lease is reported lost, so that the
    /// instance is not handed out before it reports back); parts allocated
    /// to it and waiting for the link keep waiting while it may come back,
    /// and are requested again when the instance has left the pool.
    fn link_lost(&mut self, now: Instant, address: &Address, loss: Loss, out: &mut Vec<GwAction<R, P>>) {
        let mut affected: Vec<(Seq, bool)> = self
            .seqs
            .iter()
            .filter_map(|(s, e)| match &e.state {
                PartState::Dispatched(a) if a == address => Some((*s, true)),
                PartState::AwaitLink(a) if a == address => Some((*s, false)),
                _ => None,
            })
            .collect();
        affected.sort();
        // a static instance's leases end when it leaves the pool (the
        // `Leave` that follows), so nothing is reported lost
        let fixed = self.instances.get(address).is_some_and(|v| v.fixed);
        for (seq, dispatched) in affected {
            if dispatched {
                let Some(entry) = self.remove_seq(seq) else { continue };
                if loss == Loss::LinkDown && self.lb_up && !fixed {
                    out.push(GwAction::Lost { seq });
                }
                if let Some(req) = entry.req {
                    self.fail(now, req, Failure::ServiceDisconnected(entry.service), out);
                }
            } else if loss == Loss::Removed {
                // the lease left the pool with the instance
                self.retry(now, seq, out);
            }
        }
    }

    /// Removes a request and its deadline.
    fn take_request(&mut self, id: ReqId) -> Option<Request<R, P>> {
        let req = self.requests.remove(&id)?;
        self.timers.remove(&(req.started + req.timeout, Timer::Deadline(id)));
        Some(req)
    }

    /// Removes a part's entry and its forget timer.
    fn remove_seq(&mut self, seq: Seq) -> Option<SeqEntry> {
        let e = self.seqs.remove(&seq)?;
        if let Some(at) = e.forget_at {
            self.timers.remove(&(at, Timer::Forget(seq)));
        }
        Some(e)
    }

    fn complete(&mut self, now: Instant, id: ReqId, out: &mut Vec<GwAction<R, P>>) {
        let Some(req) = self.take_request(id) else { return };
        self.forget_client_req(req.client, id);
        let service = req.parts.first().map(|p| p.service.clone()).unwrap_or_else(|| ServiceName::new(""));
        let mut results: Vec<P> = Vec::with_capacity(req.parts.len());
        for p in req.parts {
            match p.result {
                Some(r) => results.push(r),
                None => {
                    // cannot happen: remaining reached zero
                    warn!("request completed with a part missing");
                    return;
                }
            }
        }
        let outcome = if req.fanout {
            Outcome::Parts(results)
        } else {
            match results.pop() {
                Some(r) => Outcome::One(r),
                None => return,
            }
        };
        out.push(GwAction::Reply {
            reply: req.reply,
            client: req.client,
            service,
            outcome: Ok(outcome),
            elapsed: now.saturating_duration_since(req.started),
        });
    }

    /// Answers the request with `failure` and abandons its other parts.
    fn fail(&mut self, now: Instant, id: ReqId, failure: Failure, out: &mut Vec<GwAction<R, P>>) {
        let Some(req) = self.take_request(id) else { return };
        self.forget_client_req(req.client, id);
        self.abandon_parts(now, &req, out);
        let service = req.parts.first().map(|p| p.service.clone()).unwrap_or_else(|| ServiceName::new(""));
        out.push(GwAction::Reply {
            reply: req.reply,
            client: req.client,
            service,
            outcome: Err(failure),
            elapsed: now.saturating_duration_since(req.started),
        });
    }

    /// The request is gone: waiting parts are released, dispatched parts
    /// stay until their instance answers (so the lease is ended correctly).
    fn abandon_parts(&mut self, now: Instant, req: &Request<R, P>, out: &mut Vec<GwAction<R, P>>) {
        for part in &req.parts {
            let Some(entry) = self.seqs.get_mut(&part.seq) else { continue };
            match entry.state {
                PartState::AwaitAlloc | PartState::AwaitLink(_) => {
                    self.remove_seq(part.seq);
                    if self.lb_up {
                        out.push(GwAction::Release { seq: part.seq });
                    }
                }
                PartState::Dispatched(_) => {
                    entry.req = None;
                    let at = now + self.cfg.abandon_horizon;
                    entry.forget_at = Some(at);
                    self.timers.insert((at, Timer::Forget(part.seq)));
                }
            }
        }
    }

    fn forget_client_req(&mut self, client: ClientId, id: ReqId) {
        if let Some(ids) = self.by_client.get_mut(&client) {
            ids.retain(|r| *r != id);
            if ids.is_empty() {
                self.by_client.remove(&client);
            }
        }
    }

    /// The invariants that cost O(1), checked after every event in release
    /// builds too (the socket layer calls this after each critical
    /// section): every request has its deadline timer, and the only other
    /// timers are the forget times of answered sequence numbers. A failure
    /// is a bug: the assertion panics and the process ends (fail fast).
    pub fn check_cheap_invariants(&self) {
        assert!(
            self.requests.len() <= self.timers.len()
                && self.timers.len() <= self.requests.len() + self.seqs.len(),
            "gateway: timers out of step with requests and sequence numbers"
        );
    }

    /// Every invariant, O(requests + parts): the cheap ones, and each part,
    /// sequence number and client index agreeing one by one. Debug builds
    /// and tests only; too slow to run after every event in release.
    #[cfg(any(test, debug_assertions))]
    pub fn check_invariants(&self) {
        self.check_cheap_invariants();
        let forgets = self.seqs.values().filter(|e| e.forget_at.is_some()).count();
        assert_eq!(self.timers.len(), self.requests.len() + forgets, "timers out of step");
        for (seq, e) in &self.seqs {
            if let Some(r) = e.req {
                let req = self.requests.get(&r).expect("live part of a missing request");
                assert_eq!(req.parts[e.part].seq, *seq, "part seq out of step");
            }
        }
        for (id, req) in &self.requests {
            assert!(self.by_client.get(&req.client).is_some_and(|v| v.contains(id)));
            let missing = req.parts.iter().filter(|p| p.result.is_none()).count();
            assert_eq!(missing, req.remaining);
            for p in &req.parts {
                if p.result.is_none() {
                    assert!(self.seqs.contains_key(&p.seq), "unanswered part without a seq entry");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type G = Gateway<u32, &'static str>;
    type A = GwAction<u32, &'static str>;

    fn svc(s: &str) -> ServiceName {
        ServiceName::new(s)
    }

    fn addr(s: &str) -> Address {
        Address::new(s)
    }

    struct Fx {
        g: G,
        t0: Instant,
        ms: u64,
        out: Vec<A>,
    }

    impl Fx {
        fn new() -> Fx {
            Fx::with(GatewayConfig::default(), true)
        }

        fn with(cfg: GatewayConfig, lb_up: bool) -> Fx {
            Fx { g: Gateway::new(cfg, lb_up), t0: Instant::now(), ms: 0, out: Vec::new() }
        }

        fn now(&self) -> Instant {
            self.t0 + Duration::from_millis(self.ms)
        }

        fn take(&mut self) -> Vec<A> {
            self.g.check_invariants();
            std::mem::take(&mut self.out)
        }

        /// Announces and brings up an instance.
        fn instance(&mut self, s: &str, a: &str) {
            self.g.add_resource(svc(s), addr(a), &mut self.out);
            let link = match self.take().pop() {
                Some(GwAction::Connect { link, .. }) => link,
                other => panic!("expected Connect, got {other:?}"),
            };
            let now = self.now();
            self.g.link_up(now, &addr(a), link, &mut self.out);
            assert!(self.take().is_empty());
        }

        fn link_of(&self, a: &str) -> LinkId {
            self.g.instances[&addr(a)].link
        }

        fn query(&mut self, client: u64, reply: u32, services: &[&str], q: &'static str) -> Vec<A> {
            self.query_with(client, reply, services, false, None, q)
        }

        fn query_with(
            &mut self,
            client: u64,
            reply: u32,
            services: &[&str],
            all: bool,
            timeout: Option<Duration>,
            q: &'static str,
        ) -> Vec<A> {
            let now = self.now();
            self.g.client_query(
                now,
                ClientRequest {
                    client: ClientId(client),
                    reply,
                    services: services.iter().map(|s| svc(s)).collect(),
                    all_instances: all,
                    query: q,
                    timeout,
                },
                &mut self.out,
            );
            self.take()
        }

        fn alloc(&mut self, seq: i64, a: &str) -> Vec<A> {
            let now = self.now();
            self.g.service_alloc(now, Seq(seq), addr(a), &mut self.out);
            self.take()
        }

        fn res(&mut self, a: &str, seq: i64, r: Result<&'static str, &str>) -> Vec<A> {
            let now = self.now();
            self.g.return_res(now, &addr(a), Seq(seq), r.map_err(str::to_string), &mut self.out);
            self.take()
        }

        fn advance(&mut self, ms: u64) -> Vec<A> {
            self.ms += ms;
            let now = self.now();
            self.g.tick(now, &mut self.out);
            self.take()
        }
    }

    fn is_request(a: &A, seq: i64, s: &str) -> bool {
        matches!(a, GwAction::RequestService { seq: q, service, .. } if q.0 == seq && service == &svc(s))
    }

    fn reply_of(a: &A) -> (u32, Result<Outcome<&'static str>, Failure>) {
        match a {
            GwAction::Reply { reply, outcome, .. } => (*reply, outcome.clone()),
            other => panic!("expected Reply, got {other:?}"),
        }
    }

    fn only_reply(acts: &[A]) -> (u32, Result<Outcome<&'static str>, Failure>) {
        let replies: Vec<&A> = acts.iter().filter(|a| matches!(a, GwAction::Reply { .. })).collect();
        assert_eq!(replies.len(), 1, "{acts:?}");
        reply_of(replies[0])
    }

    #[test]
    fn routed_query_round_trip() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        let acts = f.query(1, 10, &["EQ"], "select from t");
        assert_eq!(acts.len(), 1);
        assert!(is_request(&acts[0], 1, "EQ"));
        let acts = f.alloc(1, ":h:1");
        assert!(
            matches!(&acts[..], [GwAction::Dispatch { address, seq: Seq(1), query: "select from t" }] if address == &addr(":h:1"))
        );
        f.ms = 5;
        let acts = f.res(":h:1", 1, Ok("result"));
        assert!(matches!(acts[0], GwAction::Done { seq: Seq(1) }));
        match &acts[1] {
            GwAction::Reply {
                reply: 10,
                client: ClientId(1),
                outcome: Ok(Outcome::One("result")),
                elapsed,
                ..
            } => {
                assert_eq!(*elapsed, Duration::from_millis(5))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.g.request_count(), 0);
    }

    #[test]
    fn null_and_empty_results_are_just_results() {
        // no sentinel values: whatever the service sends is the result (TorQ#128)
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "::");
        f.alloc(1, ":h:1");
        assert_eq!(only_reply(&f.res(":h:1", 1, Ok(""))), (1, Ok(Outcome::One(""))));
    }

    #[test]
    fn immediate_refusals() {
        let mut f = Fx::new();
        assert_eq!(only_reply(&f.query(1, 1, &["NOPE"], "q")).1, Err(Failure::UnknownService(svc("NOPE"))));
        assert_eq!(
            only_reply(&f.query(1, 2, &[], "q")).1,
            Err(Failure::BadRequest("no service named".into()))
        );
        f.instance("EQ", ":h:1");
        let now = f.now();
        let link = f.link_of(":h:1");
        f.g.link_down(now, &addr(":h:1"), link, &mut f.out);
        f.take();
        assert_eq!(only_reply(&f.query(1, 3, &["EQ"], "q")).1, Err(Failure::NoInstance(svc("EQ"))));
        let mut f = Fx::with(GatewayConfig::default(), false);
        assert_eq!(only_reply(&f.query(1, 4, &["EQ"], "q")).1, Err(Failure::LbUnavailable));
        let mut f = Fx::with(GatewayConfig { max_requests: 1, ..GatewayConfig::default() }, true);
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "q");
        assert!(matches!(only_reply(&f.query(1, 2, &["EQ"], "q")).1, Err(Failure::Limit(_))));
    }

    #[test]
    fn denial_from_lb_reaches_client() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(1, 7, &["EQ"], "q");
        let now = f.now();
        f.g.service_denied(now, Seq(1), Failure::QueueFull(svc("EQ")), &mut f.out);
        assert_eq!(only_reply(&f.take()), (7, Err(Failure::QueueFull(svc("EQ")))));
    }

    #[test]
    fn service_error_is_an_error() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "1+`a");
        f.alloc(1, ":h:1");
        let acts = f.res(":h:1", 1, Err("type"));
        assert!(matches!(acts[0], GwAction::Done { seq: Seq(1) }));
        assert_eq!(
            reply_of(&acts[1]).1,
            Err(Failure::ServiceError { service: svc("EQ"), text: "type".into() })
        );
    }

    #[test]
    fn timeout_in_queue_releases_at_lb() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query_with(1, 1, &["EQ"], false, Some(Duration::from_millis(100)), "q");
        assert!(f.advance(99).is_empty());
        let acts = f.advance(1);
        assert!(matches!(acts[0], GwAction::Release { seq: Seq(1) }));
        assert_eq!(reply_of(&acts[1]).1, Err(Failure::Timeout));
        // the allocation that crossed the release on the wire is released again
        assert!(matches!(&f.alloc(1, ":h:1")[..], [GwAction::Release { seq: Seq(1) }]));
    }

    #[test]
    fn timeout_while_running_keeps_the_lease_until_the_answer() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "long");
        f.alloc(1, ":h:1");
        let acts = f.advance(DEFAULT_TIMEOUT.as_millis() as u64);
        assert_eq!(only_reply(&acts).1, Err(Failure::Timeout));
        assert!(!acts.iter().any(|a| matches!(a, GwAction::Release { .. } | GwAction::Done { .. })));
        // the late answer ends the lease and goes nowhere else
        let acts = f.res(":h:1", 1, Ok("late"));
        assert!(matches!(&acts[..], [GwAction::Done { seq: Seq(1) }]));
        assert_eq!(f.g.stats().abandoned_results, 1);
    }

    #[test]
    fn per_call_timeout_is_capped() {
        let mut f =
            Fx::with(GatewayConfig { max_timeout: Duration::from_millis(50), ..Default::default() }, true);
        f.instance("EQ", ":h:1");
        let acts = f.query_with(1, 1, &["EQ"], false, Some(Duration::from_secs(10)), "q");
        assert!(
            matches!(acts[0], GwAction::RequestService { timeout, .. } if timeout == Duration::from_millis(50))
        );
        assert_eq!(only_reply(&f.advance(50)).1, Err(Failure::Timeout));
    }

    #[test]
    fn client_disconnect_drops_waiting_and_abandons_running() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "a"); // seq 1: will be dispatched
        f.query(1, 2, &["EQ"], "b"); // seq 2: waits for allocation
        f.query(2, 3, &["EQ"], "c"); // seq 3: another client
        f.alloc(1, ":h:1");
        let now = f.now();
        f.g.client_closed(now, ClientId(1), &mut f.out);
        let acts = f.take();
        assert!(matches!(&acts[..], [GwAction::Release { seq: Seq(2) }]), "{acts:?}");
        // the running query's answer ends the lease but reaches nobody
        assert!(matches!(&f.res(":h:1", 1, Ok("r"))[..], [GwAction::Done { seq: Seq(1) }]));
        // an allocation for the dropped request is given back unused
        assert!(matches!(&f.alloc(2, ":h:1")[..], [GwAction::Release { seq: Seq(2) }]));
        // the other client is unaffected
        f.alloc(3, ":h:1");
        assert_eq!(only_reply(&f.res(":h:1", 3, Ok("c"))), (3, Ok(Outcome::One("c"))));
    }

    #[test]
    fn result_from_the_wrong_instance_is_ignored() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.instance("EQ", ":h:2");
        f.query(1, 1, &["EQ"], "q");
        f.alloc(1, ":h:1");
        assert!(f.res(":h:2", 1, Ok("forged")).is_empty());
        assert_eq!(f.g.stats().misrouted_results, 1);
        assert!(f.res(":h:2", 99, Ok("stale")).is_empty());
        assert_eq!(f.g.stats().stale_results, 1);
        assert_eq!(only_reply(&f.res(":h:1", 1, Ok("real"))).1, Ok(Outcome::One("real")));
    }

    #[test]
    fn service_disconnect_fails_running_queries() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.instance("EQ", ":h:2");
        f.query(1, 1, &["EQ"], "q");
        f.query(1, 2, &["EQ"], "q");
        f.alloc(1, ":h:1");
        f.alloc(2, ":h:2");
        let now = f.now();
        let link = f.link_of(":h:1");
        f.g.link_down(now, &addr(":h:1"), link, &mut f.out);
        let acts = f.take();
        // the lease is reported lost, not done: the instance stays busy at
        // the load balancer until it reports back or leaves the pool
        assert!(matches!(acts[0], GwAction::Lost { seq: Seq(1) }));
        assert_eq!(reply_of(&acts[1]), (1, Err(Failure::ServiceDisconnected(svc("EQ")))));
        // the other instance still answers
        assert_eq!(only_reply(&f.res(":h:2", 2, Ok("ok"))), (2, Ok(Outcome::One("ok"))));
        // an allocation of the reconnecting instance waits for its link
        f.query(1, 3, &["EQ"], "q");
        assert!(f.alloc(3, ":h:1").is_empty());
        assert_eq!(only_reply(&f.query(1, 4, &["NOPE"], "q")).0, 4);
        let now = f.now();
        f.g.link_up(now, &addr(":h:1"), link, &mut f.out);
        assert!(matches!(&f.take()[..], [GwAction::Dispatch { seq: Seq(3), .. }]));
    }

    #[test]
    fn allocation_waiting_for_a_removed_instance_is_requested_again() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.instance("EQ", ":h:2");
        let now = f.now();
        let link = f.link_of(":h:2");
        f.g.link_down(now, &addr(":h:2"), link, &mut f.out);
        f.take();
        f.query(1, 1, &["EQ"], "q");
        assert!(f.alloc(1, ":h:2").is_empty(), "waits: the instance may come back");
        let now = f.now();
        f.g.remove_resource(now, &addr(":h:2"), &mut f.out);
        let acts = f.take();
        assert!(acts.iter().any(|a| is_request(a, 2, "EQ")), "{acts:?}");
        assert!(!acts.iter().any(|a| matches!(a, GwAction::Reply { .. })));
        assert!(matches!(&f.alloc(2, ":h:1")[..], [GwAction::Dispatch { .. }]));
    }

    #[test]
    fn allocation_of_a_removed_instance_is_retried_then_fails() {
        let mut f = Fx::with(GatewayConfig { alloc_retries: 1, ..Default::default() }, true);
        f.instance("EQ", ":h:1");
        f.instance("EQ", ":h:2");
        let now = f.now();
        f.g.remove_resource(now, &addr(":h:2"), &mut f.out);
        f.take();
        f.query(1, 1, &["EQ"], "q");
        let acts = f.alloc(1, ":h:2");
        assert!(matches!(acts[0], GwAction::Release { seq: Seq(1) }));
        assert!(is_request(&acts[1], 2, "EQ"));
        let acts = f.alloc(2, ":h:2");
        assert!(matches!(acts[0], GwAction::Release { seq: Seq(2) }));
        assert_eq!(reply_of(&acts[1]).1, Err(Failure::NoInstance(svc("EQ"))));
        assert_eq!(f.g.stats().alloc_retries, 1);
    }

    #[test]
    fn allocation_waits_for_a_link_being_established() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.g.add_resource(svc("EQ"), addr(":h:2"), &mut f.out);
        let link = match f.take().pop() {
            Some(GwAction::Connect { link, .. }) => link,
            other => panic!("{other:?}"),
        };
        f.query(1, 1, &["EQ"], "q");
        assert!(f.alloc(1, ":h:2").is_empty());
        let now = f.now();
        f.g.link_up(now, &addr(":h:2"), link, &mut f.out);
        assert!(matches!(&f.take()[..], [GwAction::Dispatch { seq: Seq(1), .. }]));
    }

    #[test]
    fn remove_resource_disconnects_and_forgets_the_instance() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "q");
        f.alloc(1, ":h:1");
        let now = f.now();
        f.g.remove_resource(now, &addr(":h:1"), &mut f.out);
        let acts = f.take();
        assert!(matches!(acts[0], GwAction::Disconnect { .. }));
        assert_eq!(reply_of(&acts[1]).1, Err(Failure::ServiceDisconnected(svc("EQ"))));
        assert_eq!(only_reply(&f.query(1, 2, &["EQ"], "q")).1, Err(Failure::NoInstance(svc("EQ"))));
        // it registers again
        f.instance("EQ", ":h:1");
        assert!(f.query(1, 3, &["EQ"], "q").iter().all(|a| !matches!(a, GwAction::Reply { .. })));
    }

    #[test]
    fn lb_loss_fails_waiting_parts_and_keeps_running_ones() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "running");
        f.query(2, 2, &["EQ"], "waiting");
        f.alloc(1, ":h:1");
        let now = f.now();
        f.g.lb_lost(now, &mut f.out);
        let acts = f.take();
        assert_eq!(only_reply(&acts), (2, Err(Failure::LbUnavailable)));
        assert!(!acts.iter().any(|a| matches!(a, GwAction::Release { .. })), "no LB to tell");
        assert_eq!(only_reply(&f.query(3, 3, &["EQ"], "new")).1, Err(Failure::LbUnavailable));
        // the running query still completes; no Done while the LB is away
        let acts = f.res(":h:1", 1, Ok("r"));
        assert_eq!(acts.len(), 1);
        assert_eq!(reply_of(&acts[0]), (1, Ok(Outcome::One("r"))));
        // the LB comes back: known instances are kept, new ones connected
        f.g.lb_connected(vec![(svc("EQ"), addr(":h:1")), (svc("FX"), addr(":h:9"))], &mut f.out);
        let acts = f.take();
        assert!(matches!(&acts[..], [GwAction::Connect { address, .. }] if address == &addr(":h:9")));
        assert!(f.query(3, 4, &["EQ"], "new").iter().all(|a| !matches!(a, GwAction::Reply { .. })));
    }

    #[test]
    fn fan_out_over_services_joins_in_order() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.instance("FX", ":h:2");
        let acts = f.query(1, 1, &["EQ", "FX"], "q");
        assert!(is_request(&acts[0], 1, "EQ") && is_request(&acts[1], 2, "FX"));
        f.alloc(2, ":h:2");
        f.alloc(1, ":h:1");
        assert!(f.res(":h:2", 2, Ok("fx")).iter().all(|a| !matches!(a, GwAction::Reply { .. })));
        assert_eq!(only_reply(&f.res(":h:1", 1, Ok("eq"))).1, Ok(Outcome::Parts(vec!["eq", "fx"])));
    }

    #[test]
    fn fan_out_to_every_instance_pins_each() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.instance("EQ", ":h:2");
        let acts = f.query_with(1, 1, &["EQ"], true, None, "q");
        let targets: Vec<Option<Address>> = acts
            .iter()
            .map(|a| match a {
                GwAction::RequestService { target, .. } => target.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(targets, vec![Some(addr(":h:1")), Some(addr(":h:2"))]);
        f.alloc(1, ":h:1");
        f.alloc(2, ":h:2");
        f.res(":h:1", 1, Ok("a"));
        assert_eq!(only_reply(&f.res(":h:2", 2, Ok("b"))).1, Ok(Outcome::Parts(vec!["a", "b"])));
    }

    #[test]
    fn fan_out_partial_failure_fails_the_whole_request() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.instance("FX", ":h:2");
        f.instance("RT", ":h:3");
        f.query(1, 1, &["EQ", "FX", "RT"], "q");
        f.alloc(1, ":h:1");
        f.alloc(2, ":h:2");
        // seq 3 still waits for an allocation
        let acts = f.res(":h:2", 2, Err("length"));
        let (_, outcome) = only_reply(&acts);
        assert_eq!(outcome, Err(Failure::ServiceError { service: svc("FX"), text: "length".into() }));
        assert!(acts.iter().any(|a| matches!(a, GwAction::Release { seq: Seq(3) })));
        // EQ's part is still running: its answer only ends the lease
        assert!(matches!(&f.res(":h:1", 1, Ok("eq"))[..], [GwAction::Done { seq: Seq(1) }]));
    }

    #[test]
    fn fan_out_width_is_bounded() {
        let mut f = Fx::with(GatewayConfig { max_fanout: 1, ..Default::default() }, true);
        f.instance("EQ", ":h:1");
        f.instance("FX", ":h:2");
        assert!(matches!(only_reply(&f.query(1, 1, &["EQ", "FX"], "q")).1, Err(Failure::Limit(_))));
    }

    #[test]
    fn abandoned_parts_are_forgotten_after_the_horizon() {
        let mut f = Fx::with(
            GatewayConfig {
                default_timeout: Duration::from_millis(10),
                abandon_horizon: Duration::from_millis(100),
                ..Default::default()
            },
            true,
        );
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "q");
        f.alloc(1, ":h:1");
        f.advance(10);
        assert_eq!(f.g.snapshot()[0].in_flight, 1);
        f.advance(100);
        assert_eq!(f.g.snapshot()[0].in_flight, 0);
        assert!(f.res(":h:1", 1, Ok("very late")).is_empty());
    }

    #[test]
    fn client_ids_are_never_confused() {
        // a new client with a "reused handle" is a new ClientId: it never gets
        // the old client's result
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(5, 1, &["EQ"], "old");
        f.alloc(1, ":h:1");
        let now = f.now();
        f.g.client_closed(now, ClientId(5), &mut f.out);
        f.take();
        f.query(6, 2, &["EQ"], "new");
        let acts = f.res(":h:1", 1, Ok("old result"));
        assert!(!acts.iter().any(|a| matches!(a, GwAction::Reply { .. })));
    }

    #[test]
    fn shutdown_fails_everything() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "q");
        f.query(1, 2, &["EQ"], "q");
        f.alloc(1, ":h:1");
        let now = f.now();
        f.g.fail_all(now, Failure::ShuttingDown, &mut f.out);
        let replies: Vec<_> = f
            .take()
            .iter()
            .filter_map(|a| match a {
                GwAction::Reply { reply, outcome, .. } => Some((*reply, outcome.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(replies, vec![(1, Err(Failure::ShuttingDown)), (2, Err(Failure::ShuttingDown))]);
    }

    #[test]
    fn snapshot_counts() {
        let mut f = Fx::new();
        f.instance("EQ", ":h:1");
        f.query(1, 1, &["EQ"], "q");
        f.query(1, 2, &["EQ"], "q");
        f.alloc(1, ":h:1");
        assert_eq!(
            f.g.snapshot(),
            vec![GwServiceSnapshot { service: svc("EQ"), instances_up: 1, waiting: 1, in_flight: 1 }]
        );
    }
}
