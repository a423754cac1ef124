//! The reconnecting links of a gateway: a [`Session`] to each instance
//! (no hello; up and down reported to the gateway core) and one to a remote
//! load balancer (hello `registerGW`, whose answer is the resource table;
//! its pushes held back until that table is applied).

use std::sync::{Arc, Mutex, MutexGuard};

use qmesh_codec::Message;
use qmesh_ipc::session::{Down, Hello, Session, SessionEnd, SessionHooks, Up};
use qmesh_ipc::{Handler, Peer, Responder};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Router;
use crate::gw::LinkId;
use crate::proto::{self, ToLb};
use crate::types::Address;

impl Router {
    /// Keeps a link to one instance (a [`Session`]): connects (with
    /// backoff), reports it up, reads its results, reports it down,
    /// reconnects — until stopped.
    pub(super) async fn link_task(self: Arc<Self>, address: Address, link: LinkId, stop: CancellationToken) {
        let parsed = match self.statics.get(&address) {
            Some(t) => Ok(t.clone()),
            None => qmesh_ipc::Address::parse(&address.text()),
        };
        let target = match parsed {
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
        let session = Session::new(target, self.link_opts.clone(), self.backoff);
        session.run(ServiceLink { router: self, address, link }, stop).await;
    }

    /// Keeps the connection to a remote load balancer (a [`Session`] whose
    /// hello is `registerGW`): on each connect pull the resources, then
    /// read its pushes; on loss, fail what waits for it and start again.
    pub(crate) async fn lb_task(self: Arc<Self>, target: qmesh_ipc::Address) {
        let session = Session::new(target.clone(), self.link_opts.clone(), self.backoff);
        let stop = self.stop.clone();
        let hooks =
            LbLink { router: self, gate: Arc::new(Mutex::new(LbGate::Open)), target: target.to_string() };
        session.run(hooks, stop).await;
    }
}

impl Router {
    /// Keeps the connection to a load balancer found by `find`: ask where it
    /// is, keep a [`Session`] to it (as [`Router::lb_task`]), and when that
    /// address stays unreachable for [`crate::runtime::FOLLOW_ATTEMPTS`]
    /// attempts in a row, ask again — so the gateway follows a load balancer
    /// that moved. While none is found it asks again with the reconnect
    /// backoff.
    pub(crate) async fn lb_follow(self: Arc<Self>, find: crate::runtime::LbFinder) {
        let stop = self.stop.clone();
        let mut misses = 0u32;
        loop {
            let found = tokio::select! {
                _ = stop.cancelled() => return,
                found = (find.0)() => found,
            };
            let Some(target) = found else {
                if misses == 0 {
                    warn!("no load balancer found yet; looking again");
                }
                misses = misses.saturating_add(1);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(self.backoff.delay(misses)) => {}
                }
                continue;
            };
            misses = 0;
            info!(lb = %target, "load balancer found");
            let backoff =
                qmesh_ipc::Backoff { max_attempts: Some(crate::runtime::FOLLOW_ATTEMPTS), ..self.backoff };
            let session = Session::new(target.clone(), self.link_opts.clone(), backoff);
            let hooks = LbLink {
                router: self.clone(),
                gate: Arc::new(Mutex::new(LbGate::Open)),
                target: target.to_string(),
            };
            if session.run(hooks, stop.clone()).await == SessionEnd::Stopped {
                return;
            }
            info!(lb = %target, "load balancer unreachable; looking for it again");
        }
    }
}

/// What a service instance sends on the gateway's link to it, handled on
/// the link's reader task (no hop to another task).
struct ServiceLinkHandler {
    router: Arc<Router>,
    address: Address,
}

/// The session of a link to one instance.
struct ServiceLink {
    router: Arc<Router>,
    address: Address,
    link: LinkId,
}

impl SessionHooks for ServiceLink {
    type Handler = ServiceLinkHandler;

    fn handler(&self) -> ServiceLinkHandler {
        ServiceLinkHandler { router: self.router.clone(), address: self.address.clone() }
    }

    fn up(&self, sender: &qmesh_ipc::Sender, _answer: Option<Message>) -> Up {
        let (address, link) = (&self.address, self.link);
        let current = self.router.with(|inner, now, work| {
            let Some(slot) = inner.links.get_mut(address).filter(|s| s.link == link) else {
                return false;
            };
            slot.sender = Some(sender.clone());
            if let Some(gw) = inner.gw.as_mut() {
                gw.link_up(now, address, link, &mut work.gw);
            }
            true
        });
        if current {
            debug!(%address, "link to instance up");
            Up::Keep
        } else {
            Up::Stop
        }
    }

    fn down(&self, why: Down<'_>) {
        let (address, link) = (&self.address, self.link);
        match why {
            Down::Lost => info!(%address, "link to instance lost"),
            Down::Unreachable { error, failures: 1 } | Down::HelloFailed { error, failures: 1 } => {
                info!(%address, %error, "cannot connect to instance; retrying");
            }
            _ => {}
        }
        self.router.with(|inner, now, work| {
            if let Some(slot) = inner.links.get_mut(address).filter(|s| s.link == link) {
                slot.sender = None;
            }
            if let Some(gw) = inner.gw.as_mut() {
                gw.link_down(now, address, link, &mut work.gw);
            }
        });
    }
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
}

/// The session to a remote load balancer.
struct LbLink {
    router: Arc<Router>,
    /// The gate of the current connection (one at a time: a session opens
    /// the next only after the last one's reader has ended).
    gate: Arc<Mutex<LbGate>>,
    /// The load balancer's address, for logs.
    target: String,
}

impl SessionHooks for LbLink {
    type Handler = LbLinkHandler;

    fn handler(&self) -> LbLinkHandler {
        *lock_gate(&self.gate) = LbGate::Registering(Vec::new());
        LbLinkHandler { router: self.router.clone(), gate: self.gate.clone() }
    }

    fn hello(&self) -> Hello {
        Hello::Call(ToLb::RegisterGw { qmesh: true }.to_k())
    }

    fn up(&self, sender: &qmesh_ipc::Sender, answer: Option<Message>) -> Up {
        let rows = match answer.map(|m| m.decode()) {
            Some(Ok(k)) => proto::resource_rows(&k),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no answer".to_string()),
        };
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                warn!(lb = %self.target, error = %e, "registerGW answered with no resource table; retrying");
                return Up::Reconnect;
            }
        };
        info!(lb = %self.target, resources = rows.len(), "registered with the load balancer");
        {
            // the resource list first, then what was pushed meanwhile, in
            // order; from here on the handler routes pushes itself
            let mut gate = lock_gate(&self.gate);
            self.router.with(|inner, _now, work| {
                inner.lb_sender = Some(sender.clone());
                if let Some(gw) = inner.gw.as_mut() {
                    gw.lb_connected(rows, &mut work.gw);
                }
            });
            if let LbGate::Registering(held) = std::mem::replace(&mut *gate, LbGate::Open) {
                for msg in held {
                    self.router.on_lb_message(msg);
                }
            }
        }
        self.router.health.set_ready(true);
        Up::Keep
    }

    fn down(&self, why: Down<'_>) {
        match why {
            Down::Lost => {
                warn!(lb = %self.target, "connection to the load balancer lost; reconnecting");
                self.router.health.set_ready(false);
                self.router.with(|inner, now, work| {
                    inner.lb_sender = None;
                    if let Some(gw) = inner.gw.as_mut() {
                        gw.lb_lost(now, &mut work.gw);
                    }
                });
            }
            Down::Unreachable { error, failures } if failures == 1 || failures.is_multiple_of(20) => {
                warn!(lb = %self.target, %error, failures, "cannot connect to the load balancer; retrying");
            }
            Down::HelloFailed { error, .. } => {
                warn!(lb = %self.target, %error, "registerGW failed; retrying")
            }
            _ => {}
        }
    }
}

/// The gate's lock. A panic while holding it is a bug that ends the
/// process (fail fast); a poisoned lock is never carried on with.
fn lock_gate(gate: &Mutex<LbGate>) -> MutexGuard<'_, LbGate> {
    gate.lock().expect("the load balancer gate's lock is poisoned: a panic while holding it")
}

impl Handler for LbLinkHandler {
    async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
        let _ = responder.error("bad request: a gateway answers no queries from its load balancer");
    }

    async fn on_async(&self, _peer: &Peer, msg: Message) {
        let mut gate = lock_gate(&self.gate);
        match &mut *gate {
            LbGate::Registering(held) => held.push(msg),
            LbGate::Open => self.router.on_lb_message(msg),
        }
    }
}
