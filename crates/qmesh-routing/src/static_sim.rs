//! Static instances (`--instances`, `qmesh mserve`) through both cores at
//! once, wired as a gateway with an embedded load balancer wires them (the
//! gateway core's requests are calls into the load balancer core, the load
//! balancer's answers calls back), without sockets or time of its own: the
//! instances are the test, answering the `Call`s it chooses.
//!
//! What is checked: only a free instance gets a query (never two at once on
//! one, by default); the queue is FIFO; a busy instance is passed over for a
//! free one; an instance lost mid-query fails that query with `service
//! disconnected` at once, leaves the pool and joins again when its link is
//! back; a client that leaves loses its queued queries while its running
//! one still holds the instance until answered; static and registered
//! instances share one service; a stuck static instance is dropped and its
//! link bounced.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::gw::{ClientRequest, Gateway, GatewayConfig, GwAction, LinkId, Outcome};
use crate::lb::{LbAction, LbConfig, LoadBalancer, STATIC_PEER_BASE};
use crate::types::{Address, ClientId, Failure, PeerId, Seq, ServiceName};

type Q = &'static str;
type G = Gateway<u32, Q>;

fn svc(s: &str) -> ServiceName {
    ServiceName::new(s)
}

fn addr(s: &str) -> Address {
    Address::new(s)
}

/// A gateway core and an embedded load balancer core, wired together.
struct Estate {
    gw: G,
    lb: LoadBalancer,
    t0: Instant,
    ms: u64,
    links: HashMap<Address, LinkId>,
    /// Sync calls sent to static instances and not answered: address → seqs.
    running: HashMap<Address, Vec<(Seq, Q)>>,
    /// `queryService` sent to registered instances.
    dispatched: Vec<(Address, Seq, Q)>,
    /// Every call ever sent, in order: (address, query).
    log: Vec<(Address, Q)>,
    replies: Vec<(u32, Result<Outcome<Q>, Failure>)>,
    dropped: Vec<Address>,
}

impl Estate {
    fn new(cfg: LbConfig) -> Estate {
        let mut lb = LoadBalancer::new(cfg);
        lb.register_gateway(PeerId::LOCAL, crate::lb::GatewayProtocol::Qmesh);
        Estate {
            gw: Gateway::new(GatewayConfig::default(), true),
            lb,
            t0: Instant::now(),
            ms: 0,
            links: HashMap::new(),
            running: HashMap::new(),
            dispatched: Vec::new(),
            log: Vec::new(),
            replies: Vec::new(),
            dropped: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.ms)
    }

    /// Carries out actions until none is left, as the router does.
    fn pump(&mut self, mut gw_out: Vec<GwAction<u32, Q>>) {
        let now = self.now();
        let mut lb_out: Vec<LbAction> = Vec::new();
        loop {
            if !lb_out.is_empty() {
                for a in std::mem::take(&mut lb_out) {
                    match a {
                        LbAction::Alloc { gw, seq, address } => {
                            assert_eq!(gw, PeerId::LOCAL);
                            self.gw.service_alloc(now, seq, address, &mut gw_out);
                        }
                        LbAction::Deny { seq, failure, .. } => {
                            self.gw.service_denied(now, seq, failure, &mut gw_out)
                        }
                        LbAction::AddResource { service, address, .. } => {
                            self.gw.add_resource(service, address, &mut gw_out)
                        }
                        LbAction::RemoveResource { address, .. } => {
                            self.gw.remove_resource(now, &address, &mut gw_out)
                        }
                        LbAction::DropInstance { address, .. } => self.dropped.push(address),
                        // probes follow a gateway's death or serviceLost; the one embedded gateway here never
                        // dies and reports no loss for static instances (their link's answer frees them)
                        LbAction::Probe { peer, .. } => panic!("static instance {peer:?} probed"),
                    }
                }
            } else if !gw_out.is_empty() {
                for a in std::mem::take(&mut gw_out) {
                    match a {
                        GwAction::RequestService { seq, service, target, timeout } => {
                            let req =
                                crate::lb::ServiceRequest { seq, service, target, timeout: Some(timeout) };
                            self.lb.request_service(PeerId::LOCAL, req, now, &mut lb_out);
                        }
                        GwAction::Release { seq } => {
                            self.lb.gateway_release(PeerId::LOCAL, seq, now, &mut lb_out)
                        }
                        GwAction::Done { seq } => self.lb.gateway_done(PeerId::LOCAL, seq, now, &mut lb_out),
                        GwAction::Lost { seq } => self.lb.gateway_lost(PeerId::LOCAL, seq, now, &mut lb_out),
                        GwAction::Dispatch { address, seq, query } => {
                            self.log.push((address.clone(), query));
                            self.dispatched.push((address, seq, query));
                        }
                        GwAction::Call { address, seq, query } => {
                            let on = self.running.entry(address.clone()).or_default();
                            assert!(on.is_empty(), "{address} got a second query while running {on:?}");
                            on.push((seq, query));
                            self.log.push((address, query));
                        }
                        GwAction::Reply { reply, outcome, .. } => self.replies.push((reply, outcome)),
                        GwAction::Connect { address, link } => {
                            self.links.insert(address, link);
                        }
                        GwAction::Disconnect { address, .. } => {
                            panic!("a static instance's link is never given up ({address})")
                        }
                        GwAction::Join { service, address, link } => self.lb.register_static(
                            PeerId(STATIC_PEER_BASE + link.0),
                            service,
                            address,
                            now,
                            &mut lb_out,
                        ),
                        GwAction::Leave { link, .. } => {
                            self.lb.connection_closed(PeerId(STATIC_PEER_BASE + link.0), now, &mut lb_out)
                        }
                    }
                }
            } else {
                break;
            }
        }
        self.gw.check_invariants();
        self.lb.check_invariants();
    }

    fn add_static(&mut self, s: &str, a: &str) {
        self.lb.declare_service(svc(s));
        let mut out = Vec::new();
        self.gw.add_static_instance(svc(s), addr(a), &mut out);
        self.pump(out);
    }

    fn up(&mut self, a: &str) {
        let mut out = Vec::new();
        let now = self.now();
        let link = self.links[&addr(a)];
        self.gw.link_up(now, &addr(a), link, &mut out);
        self.pump(out);
    }

    fn down(&mut self, a: &str) {
        let mut out = Vec::new();
        let now = self.now();
        let link = self.links[&addr(a)];
        self.gw.link_down(now, &addr(a), link, &mut out);
        self.running.remove(&addr(a));
        self.pump(out);
    }

    fn query(&mut self, client: u64, reply: u32, q: Q) {
        let mut out = Vec::new();
        let now = self.now();
        let cr = ClientRequest {
            client: ClientId(client),
            reply,
            services: vec![svc("mserve")],
            all_instances: false,
            query: q,
            timeout: None,
        };
        self.gw.client_query(now, cr, &mut out);
        self.pump(out);
    }

    /// The instance at `a` answers the query it runs with `r`.
    fn answer(&mut self, a: &str, r: Result<Q, &str>) {
        let (seq, _) =
            self.running.get_mut(&addr(a)).and_then(|v| v.pop()).expect("a query is running there");
        let mut out = Vec::new();
        let now = self.now();
        self.gw.return_res(now, &addr(a), seq, r.map_err(str::to_string), &mut out);
        self.pump(out);
    }

    fn client_left(&mut self, client: u64) {
        let mut out = Vec::new();
        let now = self.now();
        self.gw.client_closed(now, ClientId(client), &mut out);
        self.pump(out);
    }

    fn busy(&self, a: &str) -> Option<Q> {
        self.running.get(&addr(a)).and_then(|v| v.first()).map(|(_, q)| *q)
    }

    fn instances_in_pool(&self) -> usize {
        self.lb.snapshot().iter().find(|s| s.service == svc("mserve")).map_or(0, |s| s.instances)
    }

    fn take_replies(&mut self) -> Vec<(u32, Result<Outcome<Q>, Failure>)> {
        std::mem::take(&mut self.replies)
    }
}

fn two_up() -> Estate {
    let mut e = Estate::new(LbConfig::default());
    e.add_static("mserve", ":h:1");
    e.add_static("mserve", ":h:2");
    e.up(":h:1");
    e.up(":h:2");
    assert_eq!(e.instances_in_pool(), 2);
    e
}

#[test]
fn four_queries_on_two_instances_run_two_at_a_time_in_order() {
    let mut e = two_up();
    for (i, q) in ["q1", "q2", "q3", "q4"].into_iter().enumerate() {
        e.query(i as u64 + 1, i as u32 + 1, q);
    }
    // the first two run, one per instance; the others wait at the gateway
    assert_eq!((e.busy(":h:1"), e.busy(":h:2")), (Some("q1"), Some("q2")));
    assert_eq!(e.log.len(), 2);
    e.answer(":h:2", Ok("r2"));
    assert_eq!(e.busy(":h:2"), Some("q3"), "FIFO: the oldest waiting query takes the freed instance");
    e.answer(":h:1", Ok("r1"));
    assert_eq!(e.busy(":h:1"), Some("q4"));
    e.answer(":h:1", Ok("r4"));
    e.answer(":h:2", Ok("r3"));
    let mut replies = e.take_replies();
    replies.sort_by_key(|r| r.0);
    let want: Vec<(u32, Result<Outcome<Q>, Failure>)> = vec![
        (1, Ok(Outcome::One("r1"))),
        (2, Ok(Outcome::One("r2"))),
        (3, Ok(Outcome::One("r3"))),
        (4, Ok(Outcome::One("r4"))),
    ];
    assert_eq!(replies, want);
    assert_eq!(e.lb.snapshot()[0].free, 2, "the answers freed both instances");
}

#[test]
fn a_busy_instance_is_passed_over_for_a_free_one() {
    let mut e = two_up();
    e.query(1, 1, "long");
    e.query(2, 2, "short");
    assert_eq!((e.busy(":h:1"), e.busy(":h:2")), (Some("long"), Some("short")));
    e.answer(":h:2", Ok("s"));
    // h:1 still runs the long query: the next query goes to h:2, not behind it
    e.query(3, 3, "next");
    assert_eq!((e.busy(":h:1"), e.busy(":h:2")), (Some("long"), Some("next")));
}

#[test]
fn the_instances_error_comes_back_as_a_service_error() {
    let mut e = two_up();
    e.query(1, 1, "'boom");
    e.answer(":h:1", Err("boom"));
    assert_eq!(
        e.take_replies(),
        vec![(1, Err(Failure::ServiceError { service: svc("mserve"), text: "boom".into() }))]
    );
    assert_eq!(e.lb.snapshot()[0].free, 2, "an error answer frees the instance too");
}

#[test]
fn an_instance_lost_mid_query_fails_it_at_once_and_leaves_the_pool_until_back() {
    let mut e = two_up();
    e.query(1, 1, "a");
    e.query(2, 2, "b");
    e.query(3, 3, "c"); // waits
    e.down(":h:1");
    assert_eq!(e.take_replies(), vec![(1, Err(Failure::ServiceDisconnected(svc("mserve"))))]);
    assert_eq!(e.instances_in_pool(), 1);
    // the waiting query is still waiting, for h:2
    assert_eq!(e.busy(":h:1"), None);
    e.answer(":h:2", Ok("rb"));
    assert_eq!(e.busy(":h:2"), Some("c"));
    // h:1 answers again (the link is back): it rejoins and takes work
    e.up(":h:1");
    assert_eq!(e.instances_in_pool(), 2);
    e.query(4, 4, "d");
    assert_eq!(e.busy(":h:1"), Some("d"));
    // both down: a query is refused at once, not queued forever
    e.down(":h:1");
    e.down(":h:2");
    e.take_replies();
    e.query(5, 5, "e");
    assert_eq!(e.take_replies(), vec![(5, Err(Failure::NoInstance(svc("mserve"))))]);
}

#[test]
fn a_client_that_leaves_loses_its_queued_queries() {
    let mut e = two_up();
    e.query(1, 1, "a1"); // h:1
    e.query(2, 2, "b"); // h:2
    e.query(1, 11, "a2"); // queued
    e.query(1, 12, "a3"); // queued
    e.query(3, 3, "c"); // queued
    e.client_left(1);
    // a1 still runs: h:1 stays busy until it answers; then c (not a2, a3)
    assert_eq!(e.busy(":h:1"), Some("a1"));
    e.answer(":h:1", Ok("dropped"));
    assert_eq!(e.busy(":h:1"), Some("c"));
    e.answer(":h:2", Ok("rb"));
    assert_eq!(e.busy(":h:2"), None, "nothing else waits");
    let sent: Vec<Q> = e.log.iter().map(|(_, q)| *q).collect();
    assert_eq!(sent, vec!["a1", "b", "c"]);
    assert_eq!(e.take_replies(), vec![(2, Ok(Outcome::One("rb")))]);
}

#[test]
fn static_and_registered_instances_share_one_service() {
    let mut e = Estate::new(LbConfig::default());
    e.add_static("mserve", ":h:1");
    e.up(":h:1");
    // a registered instance (it sent registerResource on its own connection)
    let mut lb_out = Vec::new();
    let now = e.now();
    e.lb.register_resource(PeerId(7), svc("mserve"), addr(":h:9"), now, &mut lb_out);
    let mut gw_out = Vec::new();
    for a in lb_out {
        if let LbAction::AddResource { service, address, .. } = a {
            e.gw.add_resource(service, address, &mut gw_out);
        }
    }
    let link = match gw_out.pop() {
        Some(GwAction::Connect { link, .. }) => link,
        other => panic!("{other:?}"),
    };
    e.gw.link_up(now, &addr(":h:9"), link, &mut gw_out);
    e.pump(gw_out);
    assert_eq!(e.instances_in_pool(), 2);
    e.query(1, 1, "x");
    e.query(2, 2, "y");
    assert_eq!(e.busy(":h:1"), Some("x"));
    assert_eq!(e.dispatched.len(), 1, "the registered instance gets queryService");
    e.query(3, 3, "z"); // waits for either
    e.answer(":h:1", Ok("rx"));
    assert_eq!(e.busy(":h:1"), Some("z"));
    assert_eq!(e.lb.snapshot()[0].busy, 2);
}

#[test]
fn before_any_link_is_up_a_query_gets_no_instance() {
    let mut e = Estate::new(LbConfig::default());
    e.add_static("mserve", ":h:1");
    e.query(1, 1, "x");
    assert_eq!(e.take_replies(), vec![(1, Err(Failure::NoInstance(svc("mserve"))))]);
}

#[test]
fn a_stuck_static_instance_is_dropped_and_rejoins_after_its_link_is_back() {
    let cfg = LbConfig {
        default_timeout: Duration::from_millis(100),
        stuck_grace: Duration::from_millis(50),
        ..LbConfig::default()
    };
    let mut e = Estate::new(cfg);
    e.add_static("mserve", ":h:1");
    e.add_static("mserve", ":h:2");
    e.up(":h:1");
    e.up(":h:2");
    // the gateway's own deadline is 30 s; the load balancer's lease, 100 ms
    let mut out = Vec::new();
    let now = e.now();
    let cr = ClientRequest {
        client: ClientId(1),
        reply: 1,
        services: vec![svc("mserve")],
        all_instances: false,
        query: "hangs",
        timeout: Some(Duration::from_millis(100)),
    };
    e.gw.client_query(now, cr, &mut out);
    e.pump(out);
    assert_eq!(e.busy(":h:1"), Some("hangs"));
    e.ms = 100;
    let mut out = Vec::new();
    let now = e.now();
    e.gw.tick(now, &mut out);
    e.pump(out);
    assert_eq!(e.take_replies(), vec![(1, Err(Failure::Timeout))]);
    assert_eq!(e.busy(":h:1"), Some("hangs"), "timed out, but the instance still runs it");
    e.ms = 150;
    let mut lb_out = Vec::new();
    let now = e.now();
    e.lb.tick(now, &mut lb_out);
    let mut gw_out = Vec::new();
    for a in lb_out {
        match a {
            LbAction::DropInstance { address, .. } => e.dropped.push(address),
            LbAction::RemoveResource { address, .. } => e.gw.remove_resource(now, &address, &mut gw_out),
            other => panic!("{other:?}"),
        }
    }
    e.pump(gw_out);
    assert_eq!(e.dropped, vec![addr(":h:1")]);
    assert_eq!(e.instances_in_pool(), 1);
    // the router bounces the link; the process answers again once free
    e.down(":h:1");
    e.up(":h:1");
    assert_eq!(e.instances_in_pool(), 2);
}
