//! qmesh-routing (docs to come)

pub mod gw;
mod http;
pub mod join;
pub mod json;
pub mod lb;
pub mod metrics;
pub mod proto;
pub mod runtime;
pub mod types;

pub use runtime::{GatewayOptions, LbLocation, LbOptions, Routing, RoutingError, bind_gateway, bind_lb};
pub use types::{Address, ClientId, Failure, LeaseId, PeerId, ReqId, Seq, ServiceName};

#[cfg(test)]
mod sim;
