//! The kdb+ IPC handler of a routing process's own port: clients'
//! `userQuery`, plain queries for the default service, and the load
//! balancer's calls from gateways and services.

use std::sync::Arc;

use qmesh_codec::Message;
use qmesh_ipc::{Handler, Peer, Responder};

use super::{Router, peer_id};
use crate::proto;

/// The kdb+ IPC handler of a routing process.
pub(crate) struct RouterHandler {
    pub(crate) router: Arc<Router>,
    /// Whether this process is (or embeds) the load balancer: it keeps
    /// every connection to push to.
    pub(crate) lb_role: bool,
}

impl Handler for RouterHandler {
    async fn on_open(&self, peer: &Peer) {
        if self.lb_role {
            self.router.lock().peers.insert(peer_id(peer), peer.clone());
        }
    }

    async fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) {
        // (PyKX's probes and q's `h""` were answered by the server)
        // a call (`userQuery`, the protocol, or a plain function call), or
        // a plain query (a string…) for the default service
        match proto::call_of(&msg) {
            Some(call) => self.router.on_call(peer, &msg, call, Some(responder)),
            None => self.router.plain_query(peer, &msg, Some(responder)),
        }
    }

    async fn on_async(&self, peer: &Peer, msg: Message) {
        match proto::call_of(&msg) {
            Some(call) => self.router.on_call(peer, &msg, call, None),
            None => self.router.plain_query(peer, &msg, None),
        }
    }

    async fn on_close(&self, peer: &Peer) {
        self.router.on_close(peer);
    }
}
