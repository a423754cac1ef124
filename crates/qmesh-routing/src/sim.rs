//! A whole-estate simulation of the two cores (tests only).
//!
//! One load balancer, several gateways, several single-threaded service
//! instances that behave like the whitepaper's `service.q` (run one query at a
//! time, answer `returnRes` to the gateway, then `returnService` to the load
//! balancer; re-register from a timer only when idle). Messages travel over
//! simulated connections that keep FIFO order per connection and have random
//! latency. Gateways and services are killed and restarted at random.
//!
//! The services answer the load balancer's probe (q's `h""` chaser on their
//! load balancer connection) only once the queries they received before it
//! have finished, as q does; gateways may die at the moment an allocation
//! reaches them, before they dispatch its query.
//!
//! Checked on every step: an instance is never given a query while it is
//! running (or has queued) another one — the double booking the whitepaper's
//! load balancer allows — (with a concurrency of k: never more than k at
//! once), and at the end every client request got exactly one reply; with
//! gateways dying between allocation and dispatch, every instance is free
//! again once the load stops, long before the stuck grace.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::gw::{ClientRequest, Gateway, GatewayConfig, GwAction, LinkId};
use qmesh_codec::{EncodeOptions, Message, MsgType};

use crate::lb::{GatewayProtocol, LbAction, LbConfig, LoadBalancer, ProbeId};
use crate::proto::{self, ToLb};
use crate::types::{Address, ClientId, PeerId, Seq, ServiceName};

type Core = Gateway<u64, u64>;

/// A message to the load balancer travels as the whitepaper's bytes: built
/// with [`ToLb::to_k`], encoded, and read back with [`ToLb::parse`], as the
/// socket layer does; `None` is the connection closing.
fn over_the_wire(msg: ToLb) -> ToLb {
    let frame = Message::encode(MsgType::Async, &msg.to_k(), EncodeOptions::default()).expect("encodes");
    let msg = Message::from_frame(frame, 1 << 20).expect("a whole message");
    let call = proto::call_of(&msg).expect("a call");
    ToLb::parse(&call).expect("a load balancer call").expect("well formed")
}

#[derive(Debug)]
enum Ev {
    ClientQuery {
        gw: usize,
        timeout_ms: u64,
    },
    ToLb {
        from: PeerId,
        msg: Option<ToLb>,
    },
    LbToGw {
        gw: usize,
        epoch: u32,
        act: LbAction,
    },
    ToSvc {
        svc: usize,
        life: u32,
        gw: usize,
        gw_epoch: u32,
        seq: Seq,
    },
    SvcToGw {
        gw: usize,
        epoch: u32,
        from: Address,
        seq: Seq,
        result: u64,
    },
    LinkUp {
        gw: usize,
        epoch: u32,
        address: Address,
        link: LinkId,
    },
    SvcFinish {
        svc: usize,
        life: u32,
    },
    /// The load balancer's probe reaching a service.
    ProbeToSvc {
        svc: usize,
        life: u32,
        peer: PeerId,
        probe: ProbeId,
    },
    /// A service's answer to a probe reaching the load balancer.
    ProbeAnswer {
        from: PeerId,
        probe: ProbeId,
    },
    SvcRegister {
        svc: usize,
        life: u32,
    },
    KillGw {
        gw: usize,
    },
    StartGw {
        gw: usize,
    },
    KillSvc {
        svc: usize,
    },
    StartSvc {
        svc: usize,
    },
    Tick,
}

struct SimGw {
    core: Option<Core>,
    epoch: u32,
    peer: PeerId,
}

struct SimSvc {
    address: Address,
    alive: bool,
    life: u32,
    /// Current connection to the load balancer, if registered.
    lb_peer: Option<PeerId>,
    running: Option<(usize, u32, Seq)>,
    inbox: VecDeque<Item>,
    register_pending: bool,
}

/// What waits in a service's input, in arrival order.
#[derive(Debug)]
enum Item {
    /// `queryService` from a gateway (its index and epoch, the seq).
    Query(usize, u32, Seq),
    /// The load balancer's probe on this connection.
    Probe(PeerId, ProbeId),
}

/// What goes wrong in a run.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// Gateways are killed at random times.
    kill_gateways: bool,
    /// Services are killed (and restarted) at random times.
    kill_services: bool,
    /// A gateway is killed as an allocation reaches it, one time in this
    /// many (0: never): it never dispatches that query.
    kill_at_alloc: u64,
    /// Some queries run past their deadline plus the stuck grace.
    stuck_queries: bool,
}

struct Sim {
    rng: u64,
    t: u64,
    n: u64,
    events: BinaryHeap<Reverse<(u64, u64)>>,
    payloads: HashMap<u64, Ev>,
    /// Last delivery time per directed connection, for FIFO order.
    chan: HashMap<(u64, u64), u64>,
    base: Instant,
    lb: LoadBalancer,
    gws: Vec<SimGw>,
    svcs: Vec<SimSvc>,
    next_peer: u64,
    next_client: u64,
    /// client request id → replies received
    replies: BTreeMap<u64, u32>,
    issued: u64,
    violations: Vec<String>,
    completed_ok: u64,
    /// Queries one instance may hold (the load balancer's concurrency).
    k: usize,
    faults: Faults,
    /// Gateways killed as an allocation reached them.
    killed_at_alloc: u64,
}

impl Sim {
    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.t)
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.n += 1;
        self.events.push(Reverse((t, self.n)));
        self.payloads.insert(self.n, ev);
    }

    /// Sends over the connection `chan` with FIFO order and 1–3 ms latency.
    fn send(&mut self, chan: (u64, u64), ev: Ev) {
        let lat = 1 + self.rand() % 3;
        let last = self.chan.get(&chan).copied().unwrap_or(0);
        let t = (self.t + lat).max(last);
        self.chan.insert(chan, t);
        self.at(t, ev);
    }

    fn lb_chan(from: PeerId) -> (u64, u64) {
        (from.0, 0)
    }

    fn new_peer(&mut self) -> PeerId {
        self.next_peer += 1;
        PeerId(self.next_peer)
    }

    fn run_lb(&mut self, acts: Vec<LbAction>) {
        for act in acts {
            match &act {
                LbAction::Alloc { gw, .. }
                | LbAction::Deny { gw, .. }
                | LbAction::AddResource { gw, .. }
                | LbAction::RemoveResource { gw, .. } => {
                    if let Some(i) = self.gws.iter().position(|g| g.peer == *gw && g.core.is_some()) {
                        let epoch = self.gws[i].epoch;
                        self.send((0, gw.0), Ev::LbToGw { gw: i, epoch, act });
                    }
                }
                LbAction::DropInstance { peer, .. } => {
                    if let Some(i) = self.svcs.iter().position(|s| s.lb_peer == Some(*peer)) {
                        // the service sees its LB connection close: it will
                        // register again from its timer, when idle
                        self.svcs[i].lb_peer = None;
                        self.schedule_register(i);
                    }
                }
                LbAction::Probe { peer, probe } => {
                    if let Some(i) = self.svcs.iter().position(|s| s.lb_peer == Some(*peer)) {
                        let life = self.svcs[i].life;
                        self.send((0, peer.0), Ev::ProbeToSvc { svc: i, life, peer: *peer, probe: *probe });
                    }
                }
            }
        }
    }

    fn schedule_register(&mut self, svc: usize) {
        if self.svcs[svc].register_pending {
            return;
        }
        self.svcs[svc].register_pending = true;
        let life = self.svcs[svc].life;
        let t = self.t + 5 + self.rand() % 20;
        self.at(t, Ev::SvcRegister { svc, life });
    }

    fn run_gw(&mut self, gw: usize, acts: Vec<GwAction<u64, u64>>) {
        let peer = self.gws[gw].peer;
        let epoch = self.gws[gw].epoch;
        for act in acts {
            match act {
                GwAction::RequestService { seq, service, target, timeout } => self.send(
                    Self::lb_chan(peer),
                    Ev::ToLb {
                        from: peer,
                        msg: Some(ToLb::RequestService { seq, service, target, timeout: Some(timeout) }),
                    },
                ),
                GwAction::Release { seq } => self
                    .send(Self::lb_chan(peer), Ev::ToLb { from: peer, msg: Some(ToLb::ReleaseService(seq)) }),
                GwAction::Done { seq } => {
                    self.send(Self::lb_chan(peer), Ev::ToLb { from: peer, msg: Some(ToLb::ServiceDone(seq)) })
                }
                GwAction::Lost { seq } => {
                    self.send(Self::lb_chan(peer), Ev::ToLb { from: peer, msg: Some(ToLb::ServiceLost(seq)) })
                }
                GwAction::Dispatch { address, seq, query: _ } => {
                    let svc = self.svcs.iter().position(|s| s.address == address).expect("known address");
                    let life = self.svcs[svc].life;
                    let chan = (peer.0 * 1000 + svc as u64, 1);
                    self.send(chan, Ev::ToSvc { svc, life, gw, gw_epoch: epoch, seq });
                }
                GwAction::Reply { reply, outcome, .. } => {
                    *self.replies.entry(reply).or_default() += 1;
                    if outcome.is_ok() {
                        self.completed_ok += 1;
                    }
                }
                GwAction::Connect { address, link } => {
                    let t = self.t + 1;
                    self.at(t, Ev::LinkUp { gw, epoch, address, link });
                }
                GwAction::Disconnect { .. } => {}
                // the simulation's estate has registered instances only
                GwAction::Call { .. } | GwAction::Join { .. } | GwAction::Leave { .. } => {
                    unreachable!("no static instance in the simulation")
                }
            }
        }
    }

    fn start_query(&mut self, svc: usize) {
        let next = loop {
            let s = &mut self.svcs[svc];
            if s.running.is_some() {
                return;
            }
            match s.inbox.pop_front() {
                None => {
                    if s.lb_peer.is_none() && s.alive {
                        self.schedule_register(svc);
                    }
                    return;
                }
                // q answers a sync request once what came before has run;
                // the answer follows every returnService on that connection
                Some(Item::Probe(peer, probe)) => {
                    if s.lb_peer == Some(peer) {
                        self.send(Self::lb_chan(peer), Ev::ProbeAnswer { from: peer, probe });
                    }
                }
                Some(Item::Query(gw, epoch, seq)) => break (gw, epoch, seq),
            }
        };
        let s = &mut self.svcs[svc];
        s.running = Some(next);
        let life = s.life;
        // mostly quick, sometimes slow enough to time out, rarely stuck
        let r = self.rand() % 100;
        let dur = if r < 85 {
            1 + self.rand() % 10
        } else if r < 98 || !self.faults.stuck_queries {
            40 + self.rand() % 80
        } else {
            400
        };
        let t = self.t + dur;
        self.at(t, Ev::SvcFinish { svc, life });
    }

    fn step(&mut self, ev: Ev) {
        let now = self.now();
        match ev {
            Ev::ClientQuery { gw, timeout_ms } => {
                let Some(core) = self.gws[gw].core.as_mut() else { return };
                self.issued += 1;
                let id = self.issued;
                self.replies.entry(id).or_default();
                self.next_client += 1;
                let mut out = Vec::new();
                core.client_query(
                    now,
                    ClientRequest {
                        client: ClientId(self.next_client),
                        reply: id,
                        services: vec![ServiceName::new("EQ")],
                        all_instances: false,
                        query: id,
                        timeout: Some(Duration::from_millis(timeout_ms)),
                    },
                    &mut out,
                );
                self.run_gw(gw, out);
            }
            Ev::ToLb { from, msg } => {
                let mut out = Vec::new();
                match msg {
                    Some(msg) => {
                        self.lb.apply(from, over_the_wire(msg), now, &mut out);
                    }
                    None => self.lb.connection_closed(from, now, &mut out),
                }
                self.run_lb(out);
            }
            Ev::LbToGw { gw, epoch, act } => {
                if self.gws[gw].epoch != epoch {
                    return;
                }
                if matches!(act, LbAction::Alloc { .. })
                    && self.faults.kill_at_alloc > 0
                    && self.rand().is_multiple_of(self.faults.kill_at_alloc)
                {
                    // dead between allocation and dispatch
                    self.killed_at_alloc += 1;
                    self.kill_gw(gw);
                    return;
                }
                let Some(core) = self.gws[gw].core.as_mut() else { return };
                let mut out = Vec::new();
                match act {
                    LbAction::Alloc { seq, address, .. } => core.service_alloc(now, seq, address, &mut out),
                    LbAction::Deny { seq, failure, .. } => core.service_denied(now, seq, failure, &mut out),
                    LbAction::AddResource { service, address, .. } => {
                        core.add_resource(service, address, &mut out)
                    }
                    LbAction::RemoveResource { address, .. } => core.remove_resource(now, &address, &mut out),
                    LbAction::DropInstance { .. } | LbAction::Probe { .. } => {}
                }
                self.run_gw(gw, out);
            }
            Ev::LinkUp { gw, epoch, address, link } => {
                if self.gws[gw].epoch != epoch {
                    return;
                }
                let alive = self.svcs.iter().any(|s| s.address == address && s.alive);
                let Some(core) = self.gws[gw].core.as_mut() else { return };
                let mut out = Vec::new();
                if alive {
                    core.link_up(now, &address, link, &mut out);
                } else {
                    core.link_down(now, &address, link, &mut out);
                    let t = self.t + 10;
                    self.at(t, Ev::LinkUp { gw, epoch, address, link });
                }
                self.run_gw(gw, out);
            }
            Ev::ToSvc { svc, life, gw, gw_epoch, seq } => {
                let s = &mut self.svcs[svc];
                if s.life != life || !s.alive {
                    return;
                }
                let queued = s.inbox.iter().filter(|i| matches!(i, Item::Query(..))).count();
                if usize::from(s.running.is_some()) + queued >= self.k {
                    self.violations.push(format!(
                        "t={} instance {} given seq {} while busy with {:?} (inbox {})",
                        self.t,
                        s.address,
                        seq.0,
                        s.running,
                        s.inbox.len()
                    ));
                }
                s.inbox.push_back(Item::Query(gw, gw_epoch, seq));
                self.start_query(svc);
            }
            Ev::ProbeToSvc { svc, life, peer, probe } => {
                let s = &mut self.svcs[svc];
                if s.life != life || !s.alive || s.lb_peer != Some(peer) {
                    return;
                }
                s.inbox.push_back(Item::Probe(peer, probe));
                self.start_query(svc);
            }
            Ev::ProbeAnswer { from, probe } => {
                let mut out = Vec::new();
                self.lb.probe_answered(from, probe, now, &mut out);
                self.run_lb(out);
            }
            Ev::SvcFinish { svc, life } => {
                let s = &mut self.svcs[svc];
                if s.life != life || !s.alive {
                    return;
                }
                let Some((gw, gw_epoch, seq)) = s.running.take() else { return };
                let address = s.address.clone();
                let lb_peer = s.lb_peer;
                if self.gws[gw].epoch == gw_epoch && self.gws[gw].core.is_some() {
                    let chan = (svc as u64 + 5000, gw as u64 * 1000 + u64::from(gw_epoch));
                    self.send(
                        chan,
                        Ev::SvcToGw { gw, epoch: gw_epoch, from: address, seq, result: seq.0 as u64 },
                    );
                }
                if let Some(p) = lb_peer {
                    self.send(Self::lb_chan(p), Ev::ToLb { from: p, msg: Some(ToLb::ServiceFree) });
                }
                self.start_query(svc);
            }
            Ev::SvcToGw { gw, epoch, from, seq, result } => {
                if self.gws[gw].epoch != epoch {
                    return;
                }
                let Some(core) = self.gws[gw].core.as_mut() else { return };
                let mut out = Vec::new();
                core.return_res(now, &from, seq, Ok(result), &mut out);
                self.run_gw(gw, out);
            }
            Ev::SvcRegister { svc, life } => {
                let s = &mut self.svcs[svc];
                s.register_pending = false;
                if s.life != life || !s.alive || s.lb_peer.is_some() {
                    return;
                }
                if s.running.is_some() || !s.inbox.is_empty() {
                    // q's timer cannot fire while a query runs: try later
                    self.schedule_register(svc);
                    return;
                }
                let peer = self.new_peer();
                self.svcs[svc].lb_peer = Some(peer);
                let address = self.svcs[svc].address.clone();
                self.send(
                    Self::lb_chan(peer),
                    Ev::ToLb {
                        from: peer,
                        msg: Some(ToLb::RegisterResource { service: ServiceName::new("EQ"), address }),
                    },
                );
            }
            Ev::KillGw { gw } => self.kill_gw(gw),
            Ev::StartGw { gw } => {
                let peer = self.new_peer();
                let g = &mut self.gws[gw];
                g.epoch += 1;
                g.peer = peer;
                let mut core = Core::new(
                    GatewayConfig {
                        abandon_horizon: Duration::from_millis(2_000),
                        ..GatewayConfig::default()
                    },
                    true,
                );
                let rows = self.lb.register_gateway(peer, GatewayProtocol::Qmesh);
                let mut out = Vec::new();
                core.lb_connected(rows, &mut out);
                self.gws[gw].core = Some(core);
                self.run_gw(gw, out);
            }
            Ev::KillSvc { svc } => {
                let s = &mut self.svcs[svc];
                if !s.alive {
                    return;
                }
                s.alive = false;
                s.life += 1;
                s.running = None;
                s.inbox.clear();
                let lb_peer = s.lb_peer.take();
                let address = s.address.clone();
                if let Some(p) = lb_peer {
                    self.send(Self::lb_chan(p), Ev::ToLb { from: p, msg: None });
                }
                for gw in 0..self.gws.len() {
                    let epoch = self.gws[gw].epoch;
                    let Some(core) = self.gws[gw].core.as_mut() else { continue };
                    let Some(link) = core_link(core, &address) else { continue };
                    let mut out = Vec::new();
                    core.link_down(now, &address, link, &mut out);
                    self.run_gw(gw, out);
                    let t = self.t + 10;
                    self.at(t, Ev::LinkUp { gw, epoch, address: address.clone(), link });
                }
                let t = self.t + 30 + self.rand() % 100;
                self.at(t, Ev::StartSvc { svc });
            }
            Ev::StartSvc { svc } => {
                let s = &mut self.svcs[svc];
                s.alive = true;
                s.life += 1;
                s.register_pending = false;
                self.schedule_register(svc);
            }
            Ev::Tick => {
                let mut out = Vec::new();
                self.lb.tick(now, &mut out);
                self.run_lb(out);
                for gw in 0..self.gws.len() {
                    let Some(core) = self.gws[gw].core.as_mut() else { continue };
                    let mut out = Vec::new();
                    core.tick(now, &mut out);
                    self.run_gw(gw, out);
                }
            }
        }
    }
}

impl Sim {
    fn kill_gw(&mut self, gw: usize) {
        if self.gws[gw].core.take().is_none() {
            return;
        }
        let peer = self.gws[gw].peer;
        self.send(Self::lb_chan(peer), Ev::ToLb { from: peer, msg: None });
        // its clients are gone with it: their requests count as answered
        let t = self.t + 50 + self.rand() % 100;
        self.at(t, Ev::StartGw { gw });
    }
}

fn core_link(core: &Core, address: &Address) -> Option<LinkId> {
    core.link_of(address)
}

fn run(seed: u64, steps_ms: u64, kill_gateways: bool, kill_services: bool, k: usize) -> Sim {
    let faults = Faults { kill_gateways, kill_services, kill_at_alloc: 0, stuck_queries: true };
    run_with(seed, steps_ms, faults, k, Duration::from_millis(300))
}

fn run_with(seed: u64, steps_ms: u64, faults: Faults, k: usize, stuck_grace: Duration) -> Sim {
    let Faults { kill_gateways, kill_services, .. } = faults;
    let mut sim = Sim {
        rng: seed,
        t: 0,
        n: 0,
        events: BinaryHeap::new(),
        payloads: HashMap::new(),
        chan: HashMap::new(),
        base: Instant::now(),
        lb: LoadBalancer::new(LbConfig {
            queue_limit: 64,
            default_timeout: Duration::from_millis(200),
            stuck_grace,
            instance_concurrency: k,
        }),
        gws: Vec::new(),
        svcs: Vec::new(),
        next_peer: 10,
        next_client: 0,
        replies: BTreeMap::new(),
        issued: 0,
        violations: Vec::new(),
        completed_ok: 0,
        k,
        faults,
        killed_at_alloc: 0,
    };
    for i in 0..3 {
        sim.svcs.push(SimSvc {
            address: Address::new(format!(":h:{i}")),
            alive: true,
            life: 0,
            lb_peer: None,
            running: None,
            inbox: VecDeque::new(),
            register_pending: false,
        });
        sim.schedule_register(i);
    }
    for gw in 0..2 {
        sim.gws.push(SimGw { core: None, epoch: 0, peer: PeerId(0) });
        sim.at(30, Ev::StartGw { gw });
    }
    let mut t = 40;
    while t < steps_ms {
        let gw = (sim.rand() % 2) as usize;
        let timeout_ms = 50 + sim.rand() % 200;
        sim.at(t, Ev::ClientQuery { gw, timeout_ms });
        if kill_gateways && sim.rand().is_multiple_of(400) {
            sim.at(t, Ev::KillGw { gw });
        }
        if kill_services && sim.rand().is_multiple_of(500) {
            let svc = (sim.rand() % 3) as usize;
            sim.at(t, Ev::KillSvc { svc });
        }
        if t % 5 == 0 {
            sim.at(t, Ev::Tick);
        }
        t += 1 + sim.rand() % 3;
    }
    // drain: keep ticking well past every deadline and grace
    let end = steps_ms + 5_000;
    let mut tt = steps_ms;
    while tt < end {
        sim.at(tt, Ev::Tick);
        tt += 5;
    }
    while let Some(Reverse((t, n))) = sim.events.pop() {
        sim.t = t;
        let ev = sim.payloads.remove(&n).expect("event payload");
        sim.step(ev);
    }
    sim
}

fn check(sim: &Sim, label: &str) {
    assert!(
        sim.violations.is_empty(),
        "{label}: {} double bookings, first: {}",
        sim.violations.len(),
        sim.violations[0]
    );
    // every request got at most one reply; those whose gateway survived got exactly one
    let twice: Vec<_> = sim.replies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{label}: requests answered twice: {twice:?}");
    for g in &sim.gws {
        if let Some(core) = &g.core {
            assert_eq!(core.request_count(), 0, "{label}: requests left hanging");
        }
    }
    assert!(sim.completed_ok > 100, "{label}: only {} requests succeeded", sim.completed_ok);
}

#[test]
fn estate_without_failures_never_double_books() {
    for seed in [1u64, 2, 3] {
        let sim = run(0x1234_5678 + seed, 4_000, false, false, 1);
        check(&sim, "steady");
        let unanswered = sim.replies.values().filter(|n| **n == 0).count();
        assert_eq!(unanswered, 0, "every request answered when nothing dies");
    }
}

#[test]
fn estate_with_gateway_deaths_never_double_books() {
    for seed in [11u64, 12, 13, 14] {
        let sim = run(0xdead_beef + seed, 6_000, true, false, 1);
        check(&sim, "gateway deaths");
    }
}

#[test]
fn estate_with_gateway_and_service_deaths_never_double_books() {
    for seed in [21u64, 22, 23, 24] {
        let sim = run(0xfeed_f00d + seed, 6_000, true, true, 1);
        check(&sim, "gateway and service deaths");
    }
}

#[test]
fn estate_with_concurrency_k_never_exceeds_k_per_instance() {
    for (seed, k) in [(31u64, 2), (32, 2), (33, 2), (34, 3), (35, 3)] {
        let sim = run(0xabcd_ef01 + seed, 6_000, true, true, k);
        check(&sim, &format!("concurrency {k} with deaths"));
    }
}

/// Gateways dying between allocation and dispatch (the orphaned allocation
/// of issue 13), with a stuck grace far beyond the run: only the probes can
/// free those instances. At the end every instance is registered and free,
/// none was dropped, and nothing was double-booked.
#[test]
fn estate_with_gateways_dying_at_allocation_loses_no_instance() {
    for (seed, k, kill_services) in
        [(41u64, 1, false), (42, 1, false), (43, 1, true), (44, 2, false), (45, 3, true)]
    {
        let faults = Faults { kill_gateways: false, kill_services, kill_at_alloc: 40, stuck_queries: false };
        let sim = run_with(0x0bad_cafe + seed, 6_000, faults, k, Duration::from_secs(3_600));
        let label = format!("gateways dying at allocation (seed {seed}, k {k})");
        check(&sim, &label);
        assert!(
            sim.killed_at_alloc >= 5,
            "{label}: only {} gateways died at an allocation",
            sim.killed_at_alloc
        );
        let stats = sim.lb.stats();
        assert!(stats.orphans_released > 0, "{label}: no probe ended an orphaned allocation");
        assert_eq!(stats.dropped_stuck, 0, "{label}: an instance was dropped as stuck");
        for snap in sim.lb.snapshot() {
            assert_eq!((snap.instances, snap.busy, snap.queued), (3, 0, 0), "{label}: {snap:?}");
        }
    }
}
