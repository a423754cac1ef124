//! The load balancer as a state machine (sans-IO).
//!
//! It plays the whitepaper's load balancer: a registry of service instances
//! (`registerResource`), a subscriber list of gateways (`registerGW`, told of
//! new instances with `addResource`), and an allocator that hands a *free*
//! instance to one `(gateway, seq)` at a time (`requestService` →
//! `serviceAlloc`), queueing requests FIFO per service while every instance
//! is busy.
//!
//! What it does differently from the published script:
//!
//! * **A lease per allocation.** Every `serviceAlloc` creates a lease tied to
//!   `(gateway, seq)`. A gateway's `returnService[seq]` ends only the lease it
//!   names, so a late or repeated release is ignored (and counted) instead of
//!   freeing an instance that now runs someone else's query.
//! * **Busy until really free.** When a gateway dies its leases become
//!   *orphaned*, not free: the instance is handed out again only once it is
//!   known to have finished the orphaned query, or never to have received
//!   it (see *Orphaned allocations* below). A lease nobody ever ends (the
//!   service is stuck, or does not answer) is ended at its request deadline
//!   plus [`LbConfig::stuck_grace`] by dropping the instance: the connection
//!   is closed and it leaves the pool until it registers again (a
//!   whitepaper service does so from its reconnect timer, i.e. when idle).
//! * **Exact accounting with qmesh gateways.** A whitepaper service's
//!   `returnService[name]` does not say which query finished. A qmesh gateway
//!   therefore reports `serviceDone[seq]` when the result arrives (it knows
//!   the seq from `returnRes`); that ends the lease at once and the service's
//!   own anonymous `returnService` is then matched against it (an *echo*).
//!   Returns that arrive before the gateway's report are held as *credit*.
//!   Only an orphaned lease (or a lease of a whitepaper gateway, which sends
//!   no reports) is ended by a service's return itself.
//! * **Bounded, expiring queues.** At most [`LbConfig::queue_limit`] requests
//!   wait per service; beyond it the request is denied with `queue full`.
//!   Every queued request has a deadline; a dead gateway's queued requests
//!   are dropped.
//! * **Clear refusals.** Unknown service, no instance and queue full are told
//!   to qmesh gateways (`serviceDenied[seq;"…"]`); a whitepaper gateway has no
//!   message for that, so those are only logged.
//! * **Pinned requests** (a request for one named instance, used by fan-out
//!   to every instance) wait in the same FIFO and are served only by that
//!   instance.
//!
//!
//! # Orphaned allocations: the probe rule
//!
//! When a gateway dies (or reports `serviceLost`) holding an allocation,
//! the load balancer cannot tell from the gateway whether the query was
//! sent: the gateway may have died after `serviceAlloc` reached it and
//! before it sent `queryService` (for instance stopped, then killed). It
//! asks the instance instead, with what q itself guarantees: q runs one
//! thing at a time, so it answers a sync request on *any* of its handles
//! only once the query in progress (if any) has finished — and a query's
//! `returnService` is sent before that answer, on the same connection.
//!
//! So, for an instance holding an orphaned lease, the load balancer sends
//! a **probe**: q's own chaser, the sync request `""` (an empty string,
//! answered `::`; any answer, even an error, counts) on the instance's own
//! connection to the load balancer ([`LbAction::Probe`]), and when the
//! answer comes ([`LoadBalancer::probe_answered`]):
//!
//! * if the query had been received, it has finished and its
//!   `returnService` has already arrived and ended the lease: nothing is
//!   left to do;
//! * if the lease is still held, the query never reached the instance
//!   before the probe, and never will (its gateway is gone): the lease
//!   ends and the instance is handed out again.
//!
//! The instance is therefore free again within the time of the query it
//! is running (or at once, when idle), with an unmodified `service.q`; the
//! qmesh service answers its load balancer's sync requests by the same rule
//! (only after every `queryService` received before them has finished and
//! been reported). One probe per instance is in flight at a time; a lease
//! orphaned while one is out gets a new probe when the answer comes. An
//! instance that never answers is still dropped at the deadline plus the
//! stuck grace.
//!
//! The rule rests on the dead gateway's last `queryService` reaching the
//! instance before the probe does: the gateway wrote it before it died and
//! the load balancer sends the probe only after seeing that death, so on
//! one host (loopback) it always does; across a network a query still in
//! flight on another path could arrive later. Should that happen, the
//! query's late `returnService` is an anonymous return like any other:
//! it is absorbed as *credit* by the next lease, never taken as the end of
//! a qmesh gateway's lease.
//!
//! Time is a value passed in (`now`); the caller runs [`LoadBalancer::tick`]
//! at [`LoadBalancer::next_timer`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::proto::ToLb;
use crate::types::{Address, Failure, IdMap, LeaseId, PeerId, Seq, ServiceName};

/// Default bound on requests waiting for one service (count). Beyond it a
/// request is refused with `queue full` rather than letting memory and
/// latency grow without limit.
pub const DEFAULT_QUEUE_LIMIT: usize = 1024;

/// Default deadline (wall time) for a request whose gateway gives none (a
/// whitepaper gateway). Matches the usual 30 s kdb+ gateway timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Highest [`LbConfig::instance_concurrency`] accepted (queries per
/// instance); a bound on the per-instance lease list.
pub const MAX_INSTANCE_CONCURRENCY: usize = 1024;

/// Peer ids at and above this are the gateway's own links to static
/// instances (`qmesh gateway --instances`), never connections: a
/// connection's id counts up from 1 and never gets near it.
pub const STATIC_PEER_BASE: u64 = 1 << 61;

/// Default time (after a lease's request deadline) before an instance that
/// has not reported back is considered stuck and dropped from the pool.
pub const DEFAULT_STUCK_GRACE: Duration = Duration::from_secs(30);

/// Settings of the load balancer.
#[derive(Debug, Clone)]
pub struct LbConfig {
    /// Bound on queued requests per service.
    pub queue_limit: usize,
    /// Deadline of a request whose gateway gave none.
    pub default_timeout: Duration,
    /// Time after a lease's deadline before its instance is dropped.
    pub stuck_grace: Duration,
    /// Queries one instance may hold at once (leases per instance). 1 is the
    /// whitepaper's rule — a query goes only to a free instance, so a long
    /// query never holds up another; more lets an instance have its next
    /// query waiting in its socket (throughput for short queries, at the
    /// cost of that guarantee), like HAProxy's per-server `maxconn`.
    pub instance_concurrency: usize,
}

impl Default for LbConfig {
    fn default() -> LbConfig {
        LbConfig {
            queue_limit: DEFAULT_QUEUE_LIMIT,
            default_timeout: DEFAULT_REQUEST_TIMEOUT,
            stuck_grace: DEFAULT_STUCK_GRACE,
            instance_concurrency: 1,
        }
    }
}

/// Which dialect a gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayProtocol {
    /// The whitepaper's gateway: no refusals, no `serviceDone` reports.
    Whitepaper,
    /// A qmesh gateway: understands `serviceDenied` and `removeResource`,
    /// reports `serviceDone`, sends deadlines.
    Qmesh,
}

/// A gateway's `requestService`.
#[derive(Debug, Clone)]
pub struct ServiceRequest {
    pub seq: Seq,
    pub service: ServiceName,
    /// Only this instance may serve it (fan-out to every instance).
    pub target: Option<Address>,
    /// Time the gateway will wait; `None` uses [`LbConfig::default_timeout`].
    pub timeout: Option<Duration>,
}

/// Why an instance is dropped from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A lease outlived its deadline plus the stuck grace.
    Stuck,
    /// Another connection registered the same address.
    Replaced,
}

/// What the load balancer wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum LbAction {
    /// Send `serviceAlloc[seq;address]` to the gateway.
    Alloc { gw: PeerId, seq: Seq, address: Address },
    /// Send `serviceDenied[seq;"text"]` to a qmesh gateway.
    Deny { gw: PeerId, seq: Seq, failure: Failure },
    /// Send `addResource` (one row) to a subscribed gateway.
    AddResource { gw: PeerId, service: ServiceName, address: Address },
    /// Send `removeResource` to a subscribed qmesh gateway.
    RemoveResource { gw: PeerId, service: ServiceName, address: Address },
    /// Close this service connection; the instance has left the pool.
    DropInstance { peer: PeerId, service: ServiceName, address: Address, reason: DropReason },
    /// Send the sync request `""` (q's chaser) on this instance's
    /// connection and report its answer (any answer, even an error) with
    /// [`LoadBalancer::probe_answered`]; if the connection closes first,
    /// report nothing (the instance's removal ends the probe). See the
    /// module docs, *Orphaned allocations*.
    Probe { peer: PeerId, probe: ProbeId },
}

/// One probe of an instance ([`LbAction::Probe`]); never reused within a
/// process, so a late answer to an old probe is told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId(pub u64);

/// Counters, for metrics.
#[derive(Debug, Clone, Default)]
pub struct LbStats {
    pub allocations: u64,
    pub queued: u64,
    pub denied_queue_full: u64,
    pub denied_unknown: u64,
    pub denied_no_instance: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Gateway releases that named no current lease (late or repeated).
    pub stale_gateway_releases: u64,
    /// Service returns with nothing to end (instance already free).
    pub stray_service_returns: u64,
    pub dropped_stuck: u64,
    pub duplicate_requests: u64,
    /// Probes sent to instances holding orphaned leases.
    pub probes: u64,
    /// Orphaned leases ended by a probe's answer (their query never
    /// reached the instance).
    pub orphans_released: u64,
}

/// One service as seen in [`LoadBalancer::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSnapshot {
    pub service: ServiceName,
    pub instances: usize,
    pub free: usize,
    pub busy: usize,
    pub queued: usize,
}

#[derive(Debug)]
struct Lease {
    id: LeaseId,
    gw: PeerId,
    seq: Seq,
    /// When the instance is declared stuck if this lease is still held.
    stuck_at: Instant,
    /// The gateway is gone (or lost its link); the service's own return
    /// ends the lease.
    orphaned: bool,
    /// The gateway sends no `serviceDone`; the service's return ends it.
    service_ends: bool,
}

#[derive(Debug)]
struct Instance {
    service: ServiceName,
    address: Address,
    /// Leases held, oldest first; at most [`LbConfig::instance_concurrency`].
    leases: Vec<Lease>,
    /// Service returns still to come for leases a gateway already ended.
    pending_echo: u32,
    /// Service returns received before the gateway's `serviceDone`.
    credit: u32,
    /// The probe in flight, if any, and the orphaned leases it covers
    /// (those held when it was sent).
    probe: Option<(ProbeId, Vec<LeaseId>)>,
    /// A static instance (`--instances`): the gateway holds the link and
    /// the answer to its sync request is what ends the lease; no
    /// `returnService` ever comes, so `serviceDone` expects no echo.
    answer_frees: bool,
}

impl Instance {
    fn lease_pos(&self, gw: PeerId, seq: Seq) -> Option<usize> {
        self.leases.iter().position(|l| l.gw == gw && l.seq == seq)
    }
}

#[derive(Debug)]
struct Queued {
    gw: PeerId,
    seq: Seq,
    target: Option<PeerId>,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct Service {
    /// Registration order.
    instances: Vec<PeerId>,
    /// Free slots, one entry per slot, the longest-free first (spreads load
    /// evenly; with a concurrency of 1 a slot is an instance).
    free: VecDeque<PeerId>,
    queue: VecDeque<Queued>,
}

#[derive(Debug)]
struct Gateway {
    proto: GatewayProtocol,
    /// Registered with `registerGW` (receives `addResource`).
    subscribed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Where {
    Queued(ServiceName),
    Leased(PeerId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Queue { gw: PeerId, seq: Seq },
    Lease { instance: PeerId, lease: LeaseId },
}

/// The load balancer state. See the module docs.
#[derive(Debug)]
pub struct LoadBalancer {
    cfg: LbConfig,
    services: HashMap<ServiceName, Service>,
    instances: IdMap<PeerId, Instance>,
    gateways: IdMap<PeerId, Gateway>,
    requests: IdMap<(PeerId, Seq), Where>,
    /// Live timers only: an entry is removed when what it guards ends.
    timers: BTreeSet<(Instant, Timer)>,
    next_lease: u64,
    next_probe: u64,
    stats: LbStats,
}

impl LoadBalancer {
    pub fn new(mut cfg: LbConfig) -> LoadBalancer {
        cfg.instance_concurrency = cfg.instance_concurrency.clamp(1, MAX_INSTANCE_CONCURRENCY);
        LoadBalancer {
            cfg,
            services: HashMap::new(),
            instances: IdMap::default(),
            gateways: IdMap::default(),
            requests: IdMap::default(),
            timers: BTreeSet::new(),
            next_lease: 1,
            next_probe: 1,
            stats: LbStats::default(),
        }
    }

    pub fn config(&self) -> &LbConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &LbStats {
        &self.stats
    }

    /// Whether `peer` is a registered service instance.
    pub fn is_instance(&self, peer: PeerId) -> bool {
        self.instances.contains_key(&peer)
    }

    /// Gateways connected (registered or having sent a request).
    pub fn gateway_count(&self) -> usize {
        self.gateways.keys().filter(|g| **g != PeerId::LOCAL).count()
    }

    /// Whether `peer` is a known gateway.
    pub fn is_gateway(&self, peer: PeerId) -> bool {
        self.gateways.contains_key(&peer)
    }

    /// `registerGW`: subscribe the gateway and return every registered
    /// instance as `(source, address)` rows, in registration order per
    /// service.
    pub fn register_gateway(&mut self, gw: PeerId, proto: GatewayProtocol) -> Vec<(ServiceName, Address)> {
        info!(gateway = gw.0, ?proto, "gateway registered");
        self.gateways.insert(gw, Gateway { proto, subscribed: true });
        let mut names: Vec<&ServiceName> = self.services.keys().collect();
        names.sort();
        let mut rows = Vec::new();
        for name in names {
            for peer in &self.services[name].instances {
                let inst = &self.instances[peer];
                rows.push((inst.service.clone(), inst.address.clone()));
            }
        }
        rows
    }

    /// `registerResource[name;address]` from a service connection.
    pub fn register_resource(
        &mut self,
        peer: PeerId,
        service: ServiceName,
        address: Address,
        now: Instant,
        out: &mut Vec<LbAction>,
    ) {
        if let Some(existing) = self.instances.get(&peer) {
            if existing.service == service && existing.address == address {
                debug!(peer = peer.0, %service, %address, "repeated registerResource ignored");
                return;
            }
            self.remove_instance(peer, now, out);
        }
        let replaced: Vec<PeerId> =
            self.instances.iter().filter(|(_, i)| i.address == address).map(|(p, _)| *p).collect();
        for old in replaced {
            warn!(%service, %address, old = old.0, new = peer.0, "address registered again; dropping the old connection");
            if let Some(inst) = self.remove_instance(old, now, out) {
                out.push(LbAction::DropInstance {
                    peer: old,
                    service: inst.service,
                    address: inst.address,
                    reason: DropReason::Replaced,
                });
            }
        }
        info!(peer = peer.0, %service, %address, "instance registered");
        self.instances.insert(
            peer,
            Instance {
                service: service.clone(),
                address: address.clone(),
                leases: Vec::new(),
                pending_echo: 0,
                credit: 0,
                probe: None,
                answer_frees: false,
            },
        );
        self.services.entry(service.clone()).or_default().instances.push(peer);
        for (gw, g) in &self.gateways {
            if g.subscribed {
                out.push(LbAction::AddResource {
                    gw: *gw,
                    service: service.clone(),
                    address: address.clone(),
                });
            }
        }
        for _ in 0..self.cfg.instance_concurrency {
            self.make_available(peer, now, out);
        }
    }

    /// A static instance joins the pool: one the gateway in this process
    /// keeps a link to (`qmesh gateway --instances`) and sends each query
    /// as a sync request, a plain q process that knows nothing of the
    /// protocol. `peer` is at or above [`STATIC_PEER_BASE`]. It shares the
    /// service's FIFO queue, free list and deadlines with registered
    /// instances; its lease ends with the gateway's `serviceDone` (the
    /// answer arrived), with no `returnService` echo to wait for. It leaves
    /// with [`LoadBalancer::connection_closed`] when the link drops.
    pub fn register_static(
        &mut self,
        peer: PeerId,
        service: ServiceName,
        address: Address,
        now: Instant,
        out: &mut Vec<LbAction>,
    ) {
        debug_assert!(peer.0 >= STATIC_PEER_BASE, "static instance ids are above the connection ids");
        // marked right after registering (which may grant a queued request
        // at once): only the gateway's `serviceDone` reads the mark
        self.register_resource(peer, service, address, now, out);
        if let Some(inst) = self.instances.get_mut(&peer) {
            inst.answer_frees = true;
        }
    }

    /// Makes a service name known with no instance yet (the service of
    /// static instances whose links are not up): a request for it is then
    /// refused with `no instance`, not `unknown service`.
    pub fn declare_service(&mut self, service: ServiceName) {
        self.services.entry(service).or_default();
    }

    /// Applies a call of the protocol from a gateway or a service (`from`):
    /// the one mapping from the whitepaper's messages to this core's events,
    /// used by the socket layer and the simulation alike. `registerGW`
    /// returns the resource rows its answer carries; every other call
    /// returns `None`.
    pub fn apply(
        &mut self,
        from: PeerId,
        msg: ToLb,
        now: Instant,
        out: &mut Vec<LbAction>,
    ) -> Option<Vec<(ServiceName, Address)>> {
        match msg {
            ToLb::RegisterGw { qmesh } => {
                let proto = if qmesh { GatewayProtocol::Qmesh } else { GatewayProtocol::Whitepaper };
                return Some(self.register_gateway(from, proto));
            }
            ToLb::RegisterResource { service, address } => {
                self.register_resource(from, service, address, now, out)
            }
            ToLb::RequestService { seq, service, target, timeout } => {
                self.request_service(from, ServiceRequest { seq, service, target, timeout }, now, out);
            }
            ToLb::ReleaseService(seq) => self.gateway_release(from, seq, now, out),
            ToLb::ServiceFree => self.service_return(from, now, out),
            ToLb::ServiceDone(seq) => self.gateway_done(from, seq, now, out),
            ToLb::ServiceLost(seq) => self.gateway_lost(from, seq, now, out),
        }
        None
    }

    /// `requestService[seq;service]` (and the qmesh form with a target and a
    /// timeout) from a gateway.
    pub fn request_service(
        &mut self,
        gw: PeerId,
        req: ServiceRequest,
        now: Instant,
        out: &mut Vec<LbAction>,
    ) {
        self.gateways.entry(gw).or_insert(Gateway { proto: GatewayProtocol::Whitepaper, subscribed: false });
        if self.requests.contains_key(&(gw, req.seq)) {
            warn!(gateway = gw.0, seq = req.seq.0, "duplicate requestService ignored");
            self.stats.duplicate_requests += 1;
            return;
        }
        let Some(svc) = self.services.get(&req.service) else {
            self.stats.denied_unknown += 1;
            self.deny(gw, req.seq, Failure::UnknownService(req.service), out);
            return;
        };
        if svc.instances.is_empty() {
            self.stats.denied_no_instance += 1;
            self.deny(gw, req.seq, Failure::NoInstance(req.service), out);
            return;
        }
        let target = match &req.target {
            None => None,
            Some(addr) => {
                match svc.instances.iter().find(|p| self.instances.get(p).is_some_and(|i| &i.address == addr))
                {
                    Some(p) => Some(*p),
                    None => {
                        self.stats.denied_no_instance += 1;
                        self.deny(gw, req.seq, Failure::NoInstance(req.service), out);
                        return;
                    }
                }
            }
        };
        let deadline = now + req.timeout.unwrap_or(self.cfg.default_timeout);
        let svc = self.services.get_mut(&req.service).expect("checked above");
        let pos = match target {
            // the longest-free slot of the least-loaded instance
            None => {
                let load = |p: &PeerId| self.instances.get(p).map_or(usize::MAX, |i| i.leases.len());
                svc.free.iter().enumerate().min_by_key(|(i, p)| (load(p), *i)).map(|(i, _)| i)
            }
            Some(t) => svc.free.iter().position(|p| *p == t),
        };
        let free = pos.and_then(|i| svc.free.remove(i));
        if let Some(instance) = free {
            self.grant(instance, gw, req.seq, deadline, out);
            return;
        }
        if svc.queue.len() >= self.cfg.queue_limit {
            self.stats.denied_queue_full += 1;
            self.deny(gw, req.seq, Failure::QueueFull(req.service), out);
            return;
        }
        debug!(gateway = gw.0, seq = req.seq.0, service = %req.service, "queued");
        svc.queue.push_back(Queued { gw, seq: req.seq, target, deadline });
        self.stats.queued += 1;
        self.requests.insert((gw, req.seq), Where::Queued(req.service));
        self.timers.insert((deadline, Timer::Queue { gw, seq: req.seq }));
    }

    /// `returnService[seq]` from a gateway: the whitepaper's "this allocation
    /// was not used" (the user went away). Also cancels a queued request.
    /// Ends only the lease `(gw, seq)`; anything else is a stale release and
    /// is ignored.
    pub fn gateway_release(&mut self, gw: PeerId, seq: Seq, now: Instant, out: &mut Vec<LbAction>) {
        debug!(gateway = gw.0, seq = seq.0, "release from the gateway");
        match self.requests.get(&(gw, seq)).cloned() {
            Some(Where::Queued(service)) => {
                self.unqueue(&service, gw, seq);
                self.stats.cancelled += 1;
            }
            Some(Where::Leased(instance)) => {
                self.stats.cancelled += 1;
                self.end_lease(instance, gw, seq, now, out);
            }
            None => {
                debug!(gateway = gw.0, seq = seq.0, "release names no current request; ignored");
                self.stats.stale_gateway_releases += 1;
            }
        }
    }

    /// `serviceDone[seq]` from a qmesh gateway: the query dispatched under
    /// this lease has answered. Ends the lease; the service's own
    /// `returnService` for it is expected as an echo.
    pub fn gateway_done(&mut self, gw: PeerId, seq: Seq, now: Instant, out: &mut Vec<LbAction>) {
        debug!(gateway = gw.0, seq = seq.0, "serviceDone from the gateway");
        match self.requests.get(&(gw, seq)).cloned() {
            Some(Where::Leased(instance)) => {
                if let Some(inst) = self.instances.get_mut(&instance) {
                    if inst.answer_frees {
                        // the answer was the instance's own report
                    } else if inst.credit > 0 {
                        inst.credit -= 1;
                    } else {
                        inst.pending_echo += 1;
                    }
                }
                self.end_lease(instance, gw, seq, now, out);
                self.settle(instance, now, out);
            }
            Some(Where::Queued(_)) => {
                warn!(gateway = gw.0, seq = seq.0, "serviceDone for a queued request; treated as a cancel");
                self.gateway_release(gw, seq, now, out);
            }
            None => {
                debug!(gateway = gw.0, seq = seq.0, "serviceDone names no current lease; ignored");
                self.stats.stale_gateway_releases += 1;
            }
        }
    }

    /// `serviceLost[seq]` from a qmesh gateway: its link to the instance
    /// running this query is gone, so it will never report the query done.
    /// The lease is orphaned: the instance's own `returnService` ends it (or
    /// the instance leaves the pool), never a new allocation.
    pub fn gateway_lost(&mut self, gw: PeerId, seq: Seq, now: Instant, out: &mut Vec<LbAction>) {
        match self.requests.get(&(gw, seq)).cloned() {
            Some(Where::Leased(instance)) => self.orphan(instance, gw, seq, now, out),
            Some(Where::Queued(_)) => self.gateway_release(gw, seq, now, out),
            None => self.stats.stale_gateway_releases += 1,
        }
    }

    /// `returnService[name]` from a service instance: it finished a query.
    pub fn service_return(&mut self, peer: PeerId, now: Instant, out: &mut Vec<LbAction>) {
        debug!(peer = peer.0, "returnService from the instance");
        let Some(inst) = self.instances.get_mut(&peer) else {
            warn!(
                peer = peer.0,
                "returnService from a connection that is not a registered instance; ignored"
            );
            self.stats.stray_service_returns += 1;
            return;
        };
        if inst.pending_echo > 0 {
            inst.pending_echo -= 1;
            return;
        }
        if inst.leases.is_empty() {
            debug!(peer = peer.0, "returnService while free; ignored");
            self.stats.stray_service_returns += 1;
            return;
        }
        inst.credit += 1;
        self.settle(peer, now, out);
    }

    /// A connection closed: a gateway, an instance, or neither.
    pub fn connection_closed(&mut self, peer: PeerId, now: Instant, out: &mut Vec<LbAction>) {
        if self.gateways.contains_key(&peer) {
            self.gateway_closed(peer, now, out);
        }
        if self.instances.contains_key(&peer) {
            self.remove_instance(peer, now, out);
        }
    }

    /// Expires queued requests and drops stuck instances whose time is due.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<LbAction>) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, timer));
            match timer {
                Timer::Queue { gw, seq } => {
                    if let Some(Where::Queued(service)) = self.requests.get(&(gw, seq)).cloned() {
                        self.unqueue(&service, gw, seq);
                        debug!(gateway = gw.0, seq = seq.0, %service, "queued request expired");
                        self.stats.expired += 1;
                    }
                }
                Timer::Lease { instance, lease } => {
                    let stuck =
                        self.instances.get(&instance).is_some_and(|i| i.leases.iter().any(|l| l.id == lease));
                    if stuck && let Some(inst) = self.remove_instance(instance, now, out) {
                        warn!(peer = instance.0, service = %inst.service, address = %inst.address,
                            "instance did not report back within its deadline plus the stuck grace; dropped");
                        self.stats.dropped_stuck += 1;
                        out.push(LbAction::DropInstance {
                            peer: instance,
                            service: inst.service,
                            address: inst.address,
                            reason: DropReason::Stuck,
                        });
                    }
                }
            }
        }
    }

    /// When [`LoadBalancer::tick`] next has something to do.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Per-service gauges.
    pub fn snapshot(&self) -> Vec<ServiceSnapshot> {
        let mut out: Vec<ServiceSnapshot> = self
            .services
            .iter()
            .map(|(name, s)| {
                let busy = s
                    .instances
                    .iter()
                    .filter(|p| self.instances.get(p).is_some_and(|i| !i.leases.is_empty()))
                    .count();
                ServiceSnapshot {
                    service: name.clone(),
                    instances: s.instances.len(),
                    free: s.instances.len() - busy,
                    busy,
                    queued: s.queue.len(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    fn deny(&mut self, gw: PeerId, seq: Seq, failure: Failure, out: &mut Vec<LbAction>) {
        let proto = self.gateways.get(&gw).map_or(GatewayProtocol::Whitepaper, |g| g.proto);
        match proto {
            GatewayProtocol::Qmesh => out.push(LbAction::Deny { gw, seq, failure }),
            GatewayProtocol::Whitepaper => {
                warn!(gateway = gw.0, seq = seq.0, %failure, "request refused; a whitepaper gateway cannot be told")
            }
        }
    }

    /// Removes a queued request (its index entry and its timer).
    fn unqueue(&mut self, service: &ServiceName, gw: PeerId, seq: Seq) {
        debug!(gateway = gw.0, seq = seq.0, %service, "request leaves the queue unserved");
        self.requests.remove(&(gw, seq));
        if let Some(svc) = self.services.get_mut(service)
            && let Some(pos) = svc.queue.iter().position(|q| q.gw == gw && q.seq == seq)
            && let Some(q) = svc.queue.remove(pos)
        {
            self.timers.remove(&(q.deadline, Timer::Queue { gw, seq }));
        }
    }

    fn grant(&mut self, instance: PeerId, gw: PeerId, seq: Seq, deadline: Instant, out: &mut Vec<LbAction>) {
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        let service_ends = self.gateways.get(&gw).is_none_or(|g| g.proto == GatewayProtocol::Whitepaper);
        let stuck_at = deadline + self.cfg.stuck_grace;
        let inst = self.instances.get_mut(&instance).expect("granting a registered instance");
        assert!(inst.leases.len() < self.cfg.instance_concurrency, "granting a full instance");
        inst.leases.push(Lease { id, gw, seq, stuck_at, orphaned: false, service_ends });
        let address = inst.address.clone();
        self.requests.insert((gw, seq), Where::Leased(instance));
        self.timers.insert((stuck_at, Timer::Lease { instance, lease: id }));
        self.stats.allocations += 1;
        debug!(peer = instance.0, gateway = gw.0, seq = seq.0, lease = id.0, service_ends, "allocated");
        out.push(LbAction::Alloc { gw, seq, address });
    }

    /// Ends the lease `(gw, seq)` on `instance` and frees its slot.
    fn end_lease(&mut self, instance: PeerId, gw: PeerId, seq: Seq, now: Instant, out: &mut Vec<LbAction>) {
        let Some(inst) = self.instances.get_mut(&instance) else { return };
        let Some(pos) = inst.lease_pos(gw, seq) else { return };
        let lease = inst.leases.remove(pos);
        debug!(
            peer = instance.0,
            gateway = gw.0,
            seq = seq.0,
            lease = lease.id.0,
            credit = inst.credit,
            pending_echo = inst.pending_echo,
            "lease ended"
        );
        self.requests.remove(&(lease.gw, lease.seq));
        self.timers.remove(&(lease.stuck_at, Timer::Lease { instance, lease: lease.id }));
        self.make_available(instance, now, out);
    }

    /// Marks the lease `(gw, seq)` orphaned: from now on only the service's
    /// own return, or the answer to a probe, can end it.
    fn orphan(&mut self, instance: PeerId, gw: PeerId, seq: Seq, now: Instant, out: &mut Vec<LbAction>) {
        let Some(inst) = self.instances.get_mut(&instance) else { return };
        let Some(pos) = inst.lease_pos(gw, seq) else { return };
        inst.leases[pos].orphaned = true;
        debug!(peer = instance.0, seq = seq.0, "lease orphaned; it ends when the service reports back");
        self.settle(instance, now, out);
        self.probe(instance, out);
    }

    /// Sends a probe to `instance` if it holds orphaned leases and none is
    /// in flight (the answer to the one in flight sends the next).
    fn probe(&mut self, instance: PeerId, out: &mut Vec<LbAction>) {
        let Some(inst) = self.instances.get_mut(&instance) else { return };
        if inst.probe.is_some() {
            return;
        }
        let covers: Vec<LeaseId> = inst.leases.iter().filter(|l| l.orphaned).map(|l| l.id).collect();
        if covers.is_empty() {
            return;
        }
        let probe = ProbeId(self.next_probe);
        self.next_probe += 1;
        debug!(
            peer = instance.0,
            probe = probe.0,
            leases = covers.len(),
            "probing an instance holding orphaned leases"
        );
        inst.probe = Some((probe, covers));
        self.stats.probes += 1;
        out.push(LbAction::Probe { peer: instance, probe });
    }

    /// The instance `peer` answered the probe `probe` (with anything, even
    /// an error): every query it received before the probe has finished
    /// and been reported. The orphaned leases the probe covers that are
    /// still held were never received: they end, and the instance is handed
    /// out again. A stale answer (an older probe, an instance that has left
    /// and registered again) is ignored. See the module docs.
    pub fn probe_answered(&mut self, peer: PeerId, probe: ProbeId, now: Instant, out: &mut Vec<LbAction>) {
        let Some(inst) = self.instances.get_mut(&peer) else { return };
        if inst.probe.as_ref().is_none_or(|(id, _)| *id != probe) {
            debug!(peer = peer.0, probe = probe.0, "answer to a probe no longer in flight; ignored");
            return;
        }
        let (_, covers) = inst.probe.take().expect("checked above");
        for id in covers {
            let Some(inst) = self.instances.get_mut(&peer) else { return };
            let Some(l) = inst.leases.iter().find(|l| l.id == id) else { continue };
            let (gw, seq) = (l.gw, l.seq);
            // An unmatched return may be this lease's (with a concurrency
            // above 1 it can wait behind a live gateway's lease): spend it
            // here. If it was another lease's, returns are attributed one
            // late from now on, which only ever frees a slot late.
            inst.credit = inst.credit.saturating_sub(1);
            info!(peer = peer.0, gateway = gw.0, seq = seq.0, service = %inst.service, address = %inst.address,
                "the instance answered the probe without having run the orphaned query; allocation ended");
            self.stats.orphans_released += 1;
            self.end_lease(peer, gw, seq, now, out);
        }
        // leases orphaned while the probe was out
        self.probe(peer, out);
    }

    /// Spends the instance's unmatched service returns (credit) on leases
    /// that only a service return can end (orphaned, or of a whitepaper
    /// gateway), oldest first — but only once no lease a gateway will report
    /// on remains: an anonymous return may belong to one of those, and
    /// freeing a slot late is safe where freeing it early is not.
    fn settle(&mut self, instance: PeerId, now: Instant, out: &mut Vec<LbAction>) {
        loop {
            let Some(inst) = self.instances.get_mut(&instance) else { return };
            if inst.credit == 0 || inst.leases.iter().any(|l| !(l.orphaned || l.service_ends)) {
                return;
            }
            let Some(l) = inst.leases.first() else { return };
            let (gw, seq) = (l.gw, l.seq);
            inst.credit -= 1;
            self.end_lease(instance, gw, seq, now, out);
        }
    }

    /// Gives a just-freed slot of `instance` to the first eligible queued
    /// request, or puts it at the back of the free list.
    fn make_available(&mut self, instance: PeerId, now: Instant, out: &mut Vec<LbAction>) {
        let Some(inst) = self.instances.get(&instance) else { return };
        let service = inst.service.clone();
        let Some(svc) = self.services.get_mut(&service) else { return };
        loop {
            let pos = svc.queue.iter().position(|q| q.target.is_none_or(|t| t == instance));
            let Some(pos) = pos else {
                svc.free.push_back(instance);
                return;
            };
            let q = svc.queue.remove(pos).expect("position is in range");
            self.requests.remove(&(q.gw, q.seq));
            self.timers.remove(&(q.deadline, Timer::Queue { gw: q.gw, seq: q.seq }));
            if q.deadline <= now {
                debug!(gateway = q.gw.0, seq = q.seq.0, %service, "queued request expired");
                self.stats.expired += 1;
                continue;
            }
            self.grant(instance, q.gw, q.seq, q.deadline, out);
            return;
        }
    }

    fn gateway_closed(&mut self, gw: PeerId, now: Instant, out: &mut Vec<LbAction>) {
        info!(gateway = gw.0, "gateway disconnected");
        self.gateways.remove(&gw);
        // Queued requests first, so that a lease ended below cannot be
        // handed to a request of the gateway that is going away.
        let queued: Vec<(Seq, ServiceName)> = self
            .requests
            .iter()
            .filter_map(|((g, s), w)| match w {
                Where::Queued(svc) if *g == gw => Some((*s, svc.clone())),
                _ => None,
            })
            .collect();
        for (seq, service) in queued {
            self.unqueue(&service, gw, seq);
        }
        let leased: Vec<(Seq, PeerId)> = self
            .requests
            .iter()
            .filter_map(|((g, s), w)| match w {
                Where::Leased(i) if *g == gw => Some((*s, *i)),
                _ => None,
            })
            .collect();
        for (seq, instance) in leased {
            self.orphan(instance, gw, seq, now, out);
        }
    }

    /// Removes an instance from the pool; returns it. Requests that only it
    /// could serve are refused.
    fn remove_instance(&mut self, peer: PeerId, _now: Instant, out: &mut Vec<LbAction>) -> Option<Instance> {
        let inst = self.instances.remove(&peer)?;
        info!(peer = peer.0, service = %inst.service, address = %inst.address, "instance left the pool");
        for lease in &inst.leases {
            self.requests.remove(&(lease.gw, lease.seq));
            self.timers.remove(&(lease.stuck_at, Timer::Lease { instance: peer, lease: lease.id }));
        }
        let mut refused = Vec::new();
        if let Some(svc) = self.services.get_mut(&inst.service) {
            svc.instances.retain(|p| *p != peer);
            svc.free.retain(|p| *p != peer);
            let none_left = svc.instances.is_empty();
            svc.queue.retain(|q| {
                let orphan = none_left || q.target == Some(peer);
                if orphan {
                    refused.push((q.gw, q.seq, q.deadline));
                }
                !orphan
            });
        }
        for (gw, seq, deadline) in refused {
            self.requests.remove(&(gw, seq));
            self.timers.remove(&(deadline, Timer::Queue { gw, seq }));
            self.stats.denied_no_instance += 1;
            self.deny(gw, seq, Failure::NoInstance(inst.service.clone()), out);
        }
        for (gw, g) in &self.gateways {
            if g.subscribed && g.proto == GatewayProtocol::Qmesh {
                out.push(LbAction::RemoveResource {
                    gw: *gw,
                    service: inst.service.clone(),
                    address: inst.address.clone(),
                });
            }
        }
        Some(inst)
    }

    /// The invariants that cost O(1), checked after every event in release
    /// builds too (the socket layer calls this after each critical
    /// section): every request in the index has exactly one timer (its
    /// queue deadline or its lease's stuck time). A failure is a bug: the
    /// assertion panics and the process ends (fail fast) rather than
    /// allocate from state out of step.
    pub fn check_cheap_invariants(&self) {
        assert_eq!(self.timers.len(), self.requests.len(), "load balancer: timers out of step with requests");
    }

    /// Every invariant, O(instances + requests): the cheap ones, and free
    /// slots, queues, leases and timers agreeing one by one. Debug builds
    /// and tests only; too slow to run after every event in release.
    #[cfg(any(test, debug_assertions))]
    pub fn check_invariants(&self) {
        self.check_cheap_invariants();
        let k = self.cfg.instance_concurrency;
        for (name, svc) in &self.services {
            for p in &svc.instances {
                let inst = &self.instances[p];
                assert_eq!(&inst.service, name);
                let slots = svc.free.iter().filter(|f| *f == p).count();
                assert_eq!(slots + inst.leases.len(), k, "free slots out of step for {p:?}");
                if slots > 0 {
                    assert!(
                        !svc.queue.iter().any(|q| q.target.is_none_or(|t| t == *p)),
                        "instance {p:?} has a free slot while a request it could serve waits"
                    );
                }
            }
            assert!(svc.free.iter().all(|p| svc.instances.contains(p)), "free slot of an unknown instance");
            for q in &svc.queue {
                assert_eq!(self.requests.get(&(q.gw, q.seq)), Some(&Where::Queued(name.clone())));
                assert!(self.timers.contains(&(q.deadline, Timer::Queue { gw: q.gw, seq: q.seq })));
            }
        }
        let mut leased = 0;
        for (p, inst) in &self.instances {
            assert!(inst.leases.len() <= k);
            assert!(
                inst.probe.is_some() || !inst.leases.iter().any(|l| l.orphaned),
                "instance {p:?} holds an orphaned lease and no probe is in flight"
            );
            for l in &inst.leases {
                leased += 1;
                assert_eq!(self.requests.get(&(l.gw, l.seq)), Some(&Where::Leased(*p)));
                assert!(self.timers.contains(&(l.stuck_at, Timer::Lease { instance: *p, lease: l.id })));
            }
        }
        let queued: usize = self.services.values().map(|s| s.queue.len()).sum();
        assert_eq!(self.requests.len(), queued + leased, "request index out of step");
        assert_eq!(self.timers.len(), queued + leased, "timers out of step");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: PeerId = PeerId(100);
    const GW2: PeerId = PeerId(101);
    const A: PeerId = PeerId(1);
    const B: PeerId = PeerId(2);

    fn svc(s: &str) -> ServiceName {
        ServiceName::new(s)
    }

    fn addr(s: &str) -> Address {
        Address::new(s)
    }

    fn req(seq: i64, s: &str) -> ServiceRequest {
        ServiceRequest { seq: Seq(seq), service: svc(s), target: None, timeout: None }
    }

    struct Fixture {
        lb: LoadBalancer,
        t0: Instant,
        out: Vec<LbAction>,
    }

    impl Fixture {
        fn new(cfg: LbConfig) -> Fixture {
            Fixture { lb: LoadBalancer::new(cfg), t0: Instant::now(), out: Vec::new() }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn take(&mut self) -> Vec<LbAction> {
            self.lb.check_invariants();
            std::mem::take(&mut self.out)
        }

        fn register(&mut self, peer: PeerId, s: &str, a: &str) -> Vec<LbAction> {
            let now = self.at(0);
            self.lb.register_resource(peer, svc(s), addr(a), now, &mut self.out);
            self.take()
        }

        fn request(&mut self, gw: PeerId, seq: i64, s: &str) -> Vec<LbAction> {
            let now = self.at(0);
            self.lb.request_service(gw, req(seq, s), now, &mut self.out);
            self.take()
        }

        fn done(&mut self, gw: PeerId, seq: i64) -> Vec<LbAction> {
            let now = self.at(0);
            self.lb.gateway_done(gw, Seq(seq), now, &mut self.out);
            self.take()
        }

        fn release(&mut self, gw: PeerId, seq: i64) -> Vec<LbAction> {
            let now = self.at(0);
            self.lb.gateway_release(gw, Seq(seq), now, &mut self.out);
            self.take()
        }

        fn service_return(&mut self, peer: PeerId) -> Vec<LbAction> {
            let now = self.at(0);
            self.lb.service_return(peer, now, &mut self.out);
            self.take()
        }

        fn closed(&mut self, peer: PeerId) -> Vec<LbAction> {
            let now = self.at(0);
            self.lb.connection_closed(peer, now, &mut self.out);
            self.take()
        }

        fn tick(&mut self, ms: u64) -> Vec<LbAction> {
            let now = self.at(ms);
            self.lb.tick(now, &mut self.out);
            self.take()
        }

        fn answer(&mut self, peer: PeerId, probe: ProbeId) -> Vec<LbAction> {
            let now = self.at(0);
            self.lb.probe_answered(peer, probe, now, &mut self.out);
            self.take()
        }
    }

    /// The probe of `peer` among `acts` (exactly one).
    fn probe_of(acts: &[LbAction], peer: PeerId) -> ProbeId {
        let probes: Vec<ProbeId> = acts
            .iter()
            .filter_map(|a| match a {
                LbAction::Probe { peer: p, probe } if *p == peer => Some(*probe),
                _ => None,
            })
            .collect();
        assert_eq!(probes.len(), 1, "one probe of {peer:?} expected in {acts:?}");
        probes[0]
    }

    fn alloc(gw: PeerId, seq: i64, a: &str) -> LbAction {
        LbAction::Alloc { gw, seq: Seq(seq), address: addr(a) }
    }

    fn deny(gw: PeerId, seq: i64, failure: Failure) -> LbAction {
        LbAction::Deny { gw, seq: Seq(seq), failure }
    }

    fn qmesh() -> Fixture {
        let mut f = Fixture::new(LbConfig::default());
        assert!(f.lb.register_gateway(GW, GatewayProtocol::Qmesh).is_empty());
        f
    }

    #[test]
    fn registration_broadcasts_and_lists() {
        let mut f = qmesh();
        let acts = f.register(A, "EQ", ":h:1");
        assert_eq!(acts, vec![LbAction::AddResource { gw: GW, service: svc("EQ"), address: addr(":h:1") }]);
        f.register(B, "FX", ":h:2");
        let rows = f.lb.register_gateway(GW2, GatewayProtocol::Whitepaper);
        assert_eq!(rows, vec![(svc("EQ"), addr(":h:1")), (svc("FX"), addr(":h:2"))]);
        // repeated registration on the same connection is a no-op
        assert!(f.register(A, "EQ", ":h:1").is_empty());
    }

    #[test]
    fn allocates_free_instances_then_queues_fifo() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.register(B, "EQ", ":h:2");
        assert_eq!(f.request(GW, 1, "EQ"), vec![alloc(GW, 1, ":h:1")]);
        assert_eq!(f.request(GW, 2, "EQ"), vec![alloc(GW, 2, ":h:2")]);
        assert!(f.request(GW, 3, "EQ").is_empty());
        assert!(f.request(GW2, 4, "EQ").is_empty());
        assert_eq!(f.lb.snapshot()[0].queued, 2);
        // B finishes first: the oldest queued request gets it
        assert_eq!(f.done(GW, 2), vec![alloc(GW, 3, ":h:2")]);
        assert_eq!(f.done(GW, 1), vec![alloc(GW2, 4, ":h:1")]);
        assert_eq!(
            f.lb.snapshot()[0],
            ServiceSnapshot { service: svc("EQ"), instances: 2, free: 0, busy: 2, queued: 0 }
        );
    }

    #[test]
    fn least_recently_freed_instance_is_used_first() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.register(B, "EQ", ":h:2");
        assert_eq!(f.request(GW, 1, "EQ"), vec![alloc(GW, 1, ":h:1")]);
        f.done(GW, 1);
        // A went to the back of the free list: B is next
        assert_eq!(f.request(GW, 2, "EQ"), vec![alloc(GW, 2, ":h:2")]);
    }

    #[test]
    fn refusals_are_told_to_qmesh_gateways() {
        let mut f = Fixture::new(LbConfig { queue_limit: 1, ..LbConfig::default() });
        f.lb.register_gateway(GW, GatewayProtocol::Qmesh);
        assert_eq!(f.request(GW, 1, "NOPE"), vec![deny(GW, 1, Failure::UnknownService(svc("NOPE")))]);
        f.register(A, "EQ", ":h:1");
        f.request(GW, 2, "EQ");
        assert!(f.request(GW, 3, "EQ").is_empty());
        assert_eq!(f.request(GW, 4, "EQ"), vec![deny(GW, 4, Failure::QueueFull(svc("EQ")))]);
        assert_eq!(f.lb.stats().denied_queue_full, 1);
        // the service leaves: the queued request is refused, the name stays known
        let acts = f.closed(A);
        assert!(acts.contains(&deny(GW, 3, Failure::NoInstance(svc("EQ")))));
        assert!(acts.contains(&LbAction::RemoveResource {
            gw: GW,
            service: svc("EQ"),
            address: addr(":h:1")
        }));
        assert_eq!(f.request(GW, 5, "EQ"), vec![deny(GW, 5, Failure::NoInstance(svc("EQ")))]);
    }

    #[test]
    fn whitepaper_gateways_are_not_sent_refusals_or_removals() {
        let mut f = Fixture::new(LbConfig::default());
        f.lb.register_gateway(GW, GatewayProtocol::Whitepaper);
        assert!(f.request(GW, 1, "NOPE").is_empty());
        f.register(A, "EQ", ":h:1");
        assert!(f.closed(A).is_empty());
    }

    #[test]
    fn unregistered_gateway_is_served_as_whitepaper() {
        let mut f = Fixture::new(LbConfig::default());
        f.register(A, "EQ", ":h:1");
        assert_eq!(f.request(GW, 1, "EQ"), vec![alloc(GW, 1, ":h:1")]);
        // a whitepaper gateway sends no serviceDone: the service's return frees
        f.service_return(A);
        assert_eq!(f.request(GW, 2, "EQ"), vec![alloc(GW, 2, ":h:1")]);
    }

    #[test]
    fn new_instance_takes_queued_request_after_add_resource() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        assert!(f.request(GW, 2, "EQ").is_empty());
        let acts = f.register(B, "EQ", ":h:2");
        assert_eq!(
            acts,
            vec![
                LbAction::AddResource { gw: GW, service: svc("EQ"), address: addr(":h:2") },
                alloc(GW, 2, ":h:2"),
            ]
        );
    }

    #[test]
    fn gateway_release_ends_only_the_named_lease() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.request(GW2, 7, "EQ");
        // user gone before dispatch: seq 1 released, seq 7 gets A
        assert_eq!(f.release(GW, 1), vec![alloc(GW2, 7, ":h:1")]);
        // the same release again (late or duplicate) must not free A from GW2
        assert!(f.release(GW, 1).is_empty());
        assert_eq!(f.lb.stats().stale_gateway_releases, 1);
        assert!(f.request(GW, 2, "EQ").is_empty(), "A is still GW2's");
        // a release with another gateway's seq number does nothing either
        assert!(f.release(GW, 7).is_empty());
        assert!(f.request(GW, 3, "EQ").is_empty());
    }

    #[test]
    fn release_of_a_queued_request_cancels_it() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.request(GW, 2, "EQ");
        f.request(GW, 3, "EQ");
        assert!(f.release(GW, 2).is_empty());
        assert_eq!(f.done(GW, 1), vec![alloc(GW, 3, ":h:1")]);
    }

    #[test]
    fn service_return_echo_and_credit_accounting() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.request(GW, 2, "EQ");
        // gateway reports first: lease ends, A goes to seq 2
        assert_eq!(f.done(GW, 1), vec![alloc(GW, 2, ":h:1")]);
        // the service's own return for seq 1 is an echo: seq 2 keeps A
        assert!(f.service_return(A).is_empty());
        assert!(f.request(GW, 3, "EQ").is_empty());
        // now the service's return for seq 2 arrives before the gateway's report: credit
        assert!(f.service_return(A).is_empty());
        assert_eq!(f.done(GW, 2), vec![alloc(GW, 3, ":h:1")]);
        // and a stray return on top of all that: seq 3's lease survives
        f.done(GW, 3);
        f.service_return(A);
        assert!(f.service_return(A).is_empty());
        assert_eq!(f.lb.stats().stray_service_returns, 1);
    }

    #[test]
    fn duplicate_service_return_cannot_free_a_busy_instance() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.done(GW, 1);
        f.service_return(A); // the echo
        f.service_return(A); // a duplicate: A is free, ignored
        assert_eq!(f.request(GW, 2, "EQ"), vec![alloc(GW, 2, ":h:1")]);
        // a further duplicate while seq 2 runs is only credit, never a release
        assert!(f.service_return(A).is_empty());
        assert!(f.request(GW2, 9, "EQ").is_empty(), "A must stay with seq 2");
    }

    #[test]
    fn dead_gateway_leaves_instance_busy_until_service_reports() {
        // §8-5: gateway dies mid-query, a new query arrives, then the old one finishes.
        let mut f = qmesh();
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        f.take();
        assert_eq!(f.request(GW, 1, "EQ"), vec![alloc(GW, 1, ":h:1")]);
        f.request(GW, 2, "EQ"); // queued, must vanish with GW
        let probe = probe_of(&f.closed(GW), A);
        assert!(f.request(GW2, 1, "EQ").is_empty(), "A still runs the orphaned query");
        // the old query finishes: A goes to GW2
        assert_eq!(f.service_return(A), vec![alloc(GW2, 1, ":h:1")]);
        // then the probe's answer (after the return, on the same connection): nothing to end
        assert!(f.answer(A, probe).is_empty());
        // GW2 finishes and reports; the echo is absorbed; A is free
        f.done(GW2, 1);
        assert!(f.service_return(A).is_empty());
        assert_eq!(f.request(GW2, 2, "EQ"), vec![alloc(GW2, 2, ":h:1")]);
    }

    #[test]
    fn lost_link_orphans_the_lease_until_the_service_reports() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.request(GW, 2, "EQ");
        let now = f.at(0);
        f.lb.gateway_lost(GW, Seq(1), now, &mut f.out);
        let acts = f.take();
        assert_eq!(acts.len(), 1, "A may still run seq 1: nothing allocated, only a probe: {acts:?}");
        let probe = probe_of(&acts, A);
        assert_eq!(f.service_return(A), vec![alloc(GW, 2, ":h:1")]);
        assert!(f.answer(A, probe).is_empty());
        // lost after the service already reported: ends at once
        f.service_return(A);
        f.request(GW, 3, "EQ");
        let now = f.at(0);
        f.lb.gateway_lost(GW, Seq(2), now, &mut f.out);
        assert_eq!(f.take(), vec![alloc(GW, 3, ":h:1")]);
    }

    #[test]
    fn dead_gateway_whose_service_already_returned_frees_at_once() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.service_return(A); // credit: the service answered before GW reported
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        f.closed(GW);
        assert_eq!(f.request(GW2, 1, "EQ"), vec![alloc(GW2, 1, ":h:1")]);
    }

    #[test]
    fn orphan_whose_instance_never_answers_is_dropped_after_deadline_and_grace() {
        let cfg = LbConfig {
            default_timeout: Duration::from_millis(100),
            stuck_grace: Duration::from_millis(50),
            ..LbConfig::default()
        };
        let mut f = Fixture::new(cfg);
        f.lb.register_gateway(GW, GatewayProtocol::Qmesh);
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        f.register(B, "EQ", ":h:2");
        f.request(GW, 1, "EQ");
        // died before dispatching; the instance is stuck and never answers the probe
        probe_of(&f.closed(GW), A);
        assert!(f.tick(149).is_empty());
        let acts = f.tick(150);
        assert!(acts.contains(&LbAction::DropInstance {
            peer: A,
            service: svc("EQ"),
            address: addr(":h:1"),
            reason: DropReason::Stuck
        }));
        assert!(acts.contains(&LbAction::RemoveResource {
            gw: GW2,
            service: svc("EQ"),
            address: addr(":h:1")
        }));
        assert!(!f.lb.is_instance(A));
        assert_eq!(f.lb.stats().dropped_stuck, 1);
        // the service comes back (re-registers when idle) and is free
        f.register(A, "EQ", ":h:1");
        assert_eq!(f.lb.snapshot()[0].free, 2);
    }

    #[test]
    fn lease_ended_in_time_is_not_dropped() {
        let cfg = LbConfig {
            default_timeout: Duration::from_millis(100),
            stuck_grace: Duration::from_millis(50),
            ..LbConfig::default()
        };
        let mut f = Fixture::new(cfg);
        f.lb.register_gateway(GW, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.done(GW, 1);
        let later = f.at(100);
        f.lb.request_service(GW, req(2, "EQ"), later, &mut f.out);
        assert!(f.tick(150).iter().all(|a| !matches!(a, LbAction::DropInstance { .. })));
        assert!(f.lb.is_instance(A));
    }

    #[test]
    fn queued_requests_expire_at_their_deadline() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        let now = f.at(0);
        f.lb.request_service(
            GW,
            ServiceRequest {
                seq: Seq(2),
                service: svc("EQ"),
                target: None,
                timeout: Some(Duration::from_millis(10)),
            },
            now,
            &mut f.out,
        );
        f.request(GW, 3, "EQ");
        assert!(f.tick(10).is_empty());
        assert_eq!(f.lb.stats().expired, 1);
        assert_eq!(f.done(GW, 1), vec![alloc(GW, 3, ":h:1")]);
    }

    #[test]
    fn expired_entry_is_skipped_when_an_instance_frees_before_the_timer() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        let now = f.at(0);
        f.lb.request_service(
            GW,
            ServiceRequest {
                seq: Seq(2),
                service: svc("EQ"),
                target: None,
                timeout: Some(Duration::from_millis(10)),
            },
            now,
            &mut f.out,
        );
        f.request(GW, 3, "EQ");
        let later = f.at(20);
        f.lb.gateway_done(GW, Seq(1), later, &mut f.out);
        assert_eq!(f.take(), vec![alloc(GW, 3, ":h:1")]);
    }

    #[test]
    fn pinned_requests_wait_for_their_instance_only() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.register(B, "EQ", ":h:2");
        f.request(GW, 1, "EQ"); // A
        let now = f.at(0);
        let pin = |seq, a: &str| ServiceRequest {
            seq: Seq(seq),
            service: svc("EQ"),
            target: Some(addr(a)),
            timeout: None,
        };
        f.lb.request_service(GW, pin(2, ":h:1"), now, &mut f.out);
        assert!(f.take().is_empty(), "A busy: pinned request waits even though B is free");
        f.lb.request_service(GW, pin(3, ":h:2"), now, &mut f.out);
        assert_eq!(f.take(), vec![alloc(GW, 3, ":h:2")]);
        f.request(GW, 4, "EQ"); // queued behind the pinned one
        // B frees: seq 2 is pinned to A, so seq 4 takes B
        assert_eq!(f.done(GW, 3), vec![alloc(GW, 4, ":h:2")]);
        assert_eq!(f.done(GW, 1), vec![alloc(GW, 2, ":h:1")]);
        f.lb.request_service(GW, pin(5, ":h:9"), now, &mut f.out);
        assert_eq!(f.take(), vec![deny(GW, 5, Failure::NoInstance(svc("EQ")))]);
    }

    #[test]
    fn pinned_request_refused_when_its_instance_leaves() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.register(B, "EQ", ":h:2");
        f.request(GW, 1, "EQ");
        let now = f.at(0);
        f.lb.request_service(
            GW,
            ServiceRequest { seq: Seq(2), service: svc("EQ"), target: Some(addr(":h:1")), timeout: None },
            now,
            &mut f.out,
        );
        f.take();
        let acts = f.closed(A);
        assert!(acts.contains(&deny(GW, 2, Failure::NoInstance(svc("EQ")))));
    }

    #[test]
    fn service_death_mid_query_sends_queue_to_other_instances() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.register(B, "EQ", ":h:2");
        f.request(GW, 1, "EQ"); // A
        f.request(GW, 2, "EQ"); // B
        f.request(GW, 3, "EQ"); // queued
        let acts = f.closed(A);
        assert!(!acts.iter().any(|a| matches!(a, LbAction::Deny { .. })), "B remains: nothing refused");
        // the gateway reports seq 1 done (it lost the service): nothing to end
        assert!(f.done(GW, 1).is_empty());
        assert_eq!(f.done(GW, 2), vec![alloc(GW, 3, ":h:2")]);
    }

    #[test]
    fn same_address_from_a_new_connection_replaces_the_old() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        let acts = f.register(B, "EQ", ":h:1");
        assert!(acts.contains(&LbAction::DropInstance {
            peer: A,
            service: svc("EQ"),
            address: addr(":h:1"),
            reason: DropReason::Replaced
        }));
        assert_eq!(f.lb.snapshot()[0].instances, 1);
    }

    #[test]
    fn duplicate_request_is_ignored() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        assert!(f.request(GW, 1, "EQ").is_empty());
        assert_eq!(f.lb.stats().duplicate_requests, 1);
    }

    #[test]
    fn rebuilds_from_re_registrations_after_restart() {
        // A fresh LB (restart): services and gateways register again in any order.
        let mut f = Fixture::new(LbConfig::default());
        f.register(A, "EQ", ":h:1");
        let rows = f.lb.register_gateway(GW, GatewayProtocol::Qmesh);
        assert_eq!(rows, vec![(svc("EQ"), addr(":h:1"))]);
        assert_eq!(f.request(GW, 41, "EQ"), vec![alloc(GW, 41, ":h:1")]);
    }

    #[test]
    fn instance_concurrency_gives_each_instance_k_slots() {
        let mut f = Fixture::new(LbConfig { instance_concurrency: 2, ..LbConfig::default() });
        f.lb.register_gateway(GW, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        f.register(B, "EQ", ":h:2");
        // slots interleave: A, B, A, B
        assert_eq!(f.request(GW, 1, "EQ"), vec![alloc(GW, 1, ":h:1")]);
        assert_eq!(f.request(GW, 2, "EQ"), vec![alloc(GW, 2, ":h:2")]);
        assert_eq!(f.request(GW, 3, "EQ"), vec![alloc(GW, 3, ":h:1")]);
        assert_eq!(f.request(GW, 4, "EQ"), vec![alloc(GW, 4, ":h:2")]);
        assert!(f.request(GW, 5, "EQ").is_empty(), "two queries per instance at most");
        assert_eq!(f.done(GW, 3), vec![alloc(GW, 5, ":h:1")]);
        // anonymous service returns end the oldest orphaned lease only
        let acts = f.closed(GW);
        probe_of(&acts, A);
        probe_of(&acts, B);
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        assert!(f.request(GW2, 1, "EQ").is_empty(), "orphans still hold every slot");
        assert_eq!(f.service_return(A), vec![], "echo of seq 3");
        assert_eq!(f.service_return(A), vec![alloc(GW2, 1, ":h:1")]);
        assert_eq!(f.lb.snapshot()[0].busy, 2);
    }

    // Orphaned allocations (issue 13): every order of the events around a
    // gateway dying while it holds an allocation.

    /// Died between allocation and dispatch: the instance, idle, answers
    /// the probe at once, and the allocation ends.
    #[test]
    fn orphan_never_dispatched_ends_at_the_probe_answer() {
        let mut f = qmesh();
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        assert_eq!(f.request(GW, 1, "EQ"), vec![alloc(GW, 1, ":h:1")]);
        assert!(f.request(GW2, 1, "EQ").is_empty(), "queued behind GW's allocation");
        let acts = f.closed(GW);
        assert_eq!(acts, vec![LbAction::Probe { peer: A, probe: probe_of(&acts, A) }]);
        assert_eq!(f.answer(A, probe_of(&acts, A)), vec![alloc(GW2, 1, ":h:1")]);
        assert_eq!(f.lb.stats().orphans_released, 1);
        // GW2's lease is a normal one: its report and the echo free A
        f.done(GW2, 1);
        assert!(f.service_return(A).is_empty());
        assert_eq!(f.lb.snapshot()[0].free, 1);
        assert_eq!(f.lb.stats().stray_service_returns, 0);
    }

    /// Died after dispatching, the query still running: the instance's
    /// `returnService` comes first and ends the lease; the probe's answer,
    /// behind it on the same connection, finds nothing to end.
    #[test]
    fn orphan_dispatched_ends_at_the_report_before_the_probe_answer() {
        let mut f = qmesh();
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.request(GW2, 1, "EQ");
        let probe = probe_of(&f.closed(GW), A);
        assert_eq!(f.service_return(A), vec![alloc(GW2, 1, ":h:1")]);
        assert!(f.answer(A, probe).is_empty(), "GW2's allocation must survive the answer");
        assert_eq!(f.lb.stats().orphans_released, 0);
        assert!(f.request(GW2, 2, "EQ").is_empty(), "A is GW2's");
        assert_eq!(f.done(GW2, 1), vec![alloc(GW2, 2, ":h:1")]);
    }

    /// Died after its query and the instance's report had both happened
    /// (the report held as credit): the lease ends at the gateway's death,
    /// no probe is needed.
    #[test]
    fn orphan_already_reported_needs_no_probe() {
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.service_return(A);
        assert!(f.closed(GW).is_empty(), "ended at once: no probe");
        assert_eq!(f.lb.stats().probes, 0);
        assert_eq!(f.lb.snapshot()[0].free, 1);
    }

    /// The query reaches the instance only after the probe (in flight on
    /// another path): the answer ends the lease, and the query's late
    /// report must not end the next gateway's lease — it is held as credit.
    #[test]
    fn report_after_the_probe_answer_cannot_free_the_next_lease() {
        let mut f = qmesh();
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.request(GW2, 1, "EQ");
        let probe = probe_of(&f.closed(GW), A);
        assert_eq!(f.answer(A, probe), vec![alloc(GW2, 1, ":h:1")]);
        assert!(f.service_return(A).is_empty(), "the late report is credit");
        assert!(f.request(GW2, 2, "EQ").is_empty(), "A is still GW2's");
        assert_eq!(f.done(GW2, 1), vec![alloc(GW2, 2, ":h:1")]);
        // and with A free, a late report is a stray, ignored
        let mut f = qmesh();
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        let probe = probe_of(&f.closed(GW), A);
        assert!(f.answer(A, probe).is_empty());
        assert!(f.service_return(A).is_empty());
        assert_eq!(f.lb.stats().stray_service_returns, 1);
        assert_eq!(f.lb.snapshot()[0].free, 1);
    }

    /// The instance dies with the probe in flight: it leaves the pool,
    /// waiting requests are refused, and the answer that never comes (or a
    /// stale one, to a new registration of the same address) changes nothing.
    #[test]
    fn instance_dying_with_the_probe_in_flight() {
        let mut f = qmesh();
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.request(GW2, 1, "EQ");
        let probe = probe_of(&f.closed(GW), A);
        let acts = f.closed(A);
        assert!(acts.contains(&deny(GW2, 1, Failure::NoInstance(svc("EQ")))), "{acts:?}");
        assert!(f.answer(A, probe).is_empty(), "answer from a connection that is gone");
        // the instance comes back on a new connection, and the old answer arrives late
        f.register(B, "EQ", ":h:1");
        assert!(f.answer(B, probe).is_empty(), "another connection's probe");
        assert_eq!(f.request(GW2, 2, "EQ"), vec![alloc(GW2, 2, ":h:1")]);
    }

    /// A whitepaper gateway (no reports) dying before dispatching, and a
    /// qmesh gateway reporting `serviceLost`: both probe.
    #[test]
    fn whitepaper_gateway_death_and_service_lost_probe_too() {
        let mut f = Fixture::new(LbConfig::default());
        f.lb.register_gateway(GW, GatewayProtocol::Whitepaper);
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.request(GW2, 1, "EQ");
        let probe = probe_of(&f.closed(GW), A);
        assert_eq!(f.answer(A, probe), vec![alloc(GW2, 1, ":h:1")]);
        f.request(GW2, 2, "EQ");
        let now = f.at(0);
        f.lb.gateway_lost(GW2, Seq(1), now, &mut f.out);
        let probe = probe_of(&f.take(), A);
        assert_eq!(f.answer(A, probe), vec![alloc(GW2, 2, ":h:1")]);
    }

    /// A lease orphaned while a probe is out is not covered by it (its
    /// query may reach the instance after the probe): the answer ends only
    /// the leases it covers and sends a new probe for the rest.
    #[test]
    fn lease_orphaned_while_a_probe_is_out_gets_the_next_probe() {
        let mut f = Fixture::new(LbConfig { instance_concurrency: 2, ..LbConfig::default() });
        f.lb.register_gateway(GW, GatewayProtocol::Qmesh);
        f.lb.register_gateway(GW2, GatewayProtocol::Qmesh);
        f.register(A, "EQ", ":h:1");
        f.request(GW, 1, "EQ");
        f.request(GW2, 1, "EQ");
        let first = probe_of(&f.closed(GW), A);
        let now = f.at(0);
        f.lb.gateway_lost(GW2, Seq(1), now, &mut f.out);
        assert!(f.take().is_empty(), "one probe in flight per instance");
        let acts = f.answer(A, first);
        let second = probe_of(&acts, A);
        assert_ne!(first, second);
        assert_eq!(f.lb.snapshot()[0].busy, 1, "GW2's lease waits for the second answer");
        assert!(f.answer(A, first).is_empty(), "a repeated answer is stale");
        f.answer(A, second);
        assert_eq!(f.lb.snapshot()[0].busy, 0);
        assert_eq!(f.lb.stats().orphans_released, 2);
    }

    /// A deterministic pseudo-random walk over all events, checking the
    /// invariants after every step.
    #[test]
    fn random_walk_keeps_invariants() {
        for k in [1, 2, 3] {
            random_walk(k);
        }
    }

    fn random_walk(k: usize) {
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let cfg = LbConfig {
            queue_limit: 4,
            default_timeout: Duration::from_millis(50),
            stuck_grace: Duration::from_millis(20),
            instance_concurrency: k,
        };
        let mut f = Fixture::new(cfg);
        let gws = [PeerId(100), PeerId(101), PeerId(102)];
        let insts = [PeerId(1), PeerId(2), PeerId(3), PeerId(4)];
        let mut seq = 0i64;
        let mut ms = 0u64;
        for _ in 0..20_000 {
            let now = f.at(ms);
            match next() % 9 {
                0 => {
                    let g = gws[(next() % 3) as usize];
                    let proto =
                        if next() % 4 == 0 { GatewayProtocol::Whitepaper } else { GatewayProtocol::Qmesh };
                    f.lb.register_gateway(g, proto);
                }
                1 => {
                    let i = insts[(next() % 4) as usize];
                    let s = if next() % 2 == 0 { "EQ" } else { "FX" };
                    let a = format!(":h:{}", next() % 5);
                    f.lb.register_resource(i, svc(s), addr(&a), now, &mut f.out);
                }
                2 | 3 => {
                    seq += 1;
                    let g = gws[(next() % 3) as usize];
                    let s = if next() % 2 == 0 { "EQ" } else { "FX" };
                    let target =
                        if next() % 5 == 0 { Some(addr(&format!(":h:{}", next() % 5))) } else { None };
                    f.lb.request_service(
                        g,
                        ServiceRequest { seq: Seq(seq), service: svc(s), target, timeout: None },
                        now,
                        &mut f.out,
                    );
                }
                4 => {
                    let g = gws[(next() % 3) as usize];
                    let s = Seq((next() % (seq as u64 + 1)) as i64);
                    f.lb.gateway_done(g, s, now, &mut f.out);
                }
                5 => {
                    let g = gws[(next() % 3) as usize];
                    let s = Seq((next() % (seq as u64 + 1)) as i64);
                    if next() % 3 == 0 {
                        f.lb.gateway_lost(g, s, now, &mut f.out);
                    } else {
                        f.lb.gateway_release(g, s, now, &mut f.out);
                    }
                }
                6 => {
                    let i = insts[(next() % 4) as usize];
                    if next() % 3 == 0 {
                        // an answer to a probe: the latest, or a stale one
                        let p = ProbeId(f.lb.next_probe.saturating_sub(next() % 3));
                        f.lb.probe_answered(i, p, now, &mut f.out);
                    } else {
                        f.lb.service_return(i, now, &mut f.out);
                    }
                }
                7 => {
                    let p = if next() % 2 == 0 {
                        gws[(next() % 3) as usize]
                    } else {
                        insts[(next() % 4) as usize]
                    };
                    f.lb.connection_closed(p, now, &mut f.out);
                }
                _ => {
                    ms += next() % 15;
                    let now = f.at(ms);
                    f.lb.tick(now, &mut f.out);
                }
            }
            f.take();
        }
        assert!(f.lb.stats().allocations > 100);
    }
}
