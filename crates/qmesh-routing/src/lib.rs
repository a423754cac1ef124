//! qmesh-routing (docs to come)

pub mod gw;
pub mod lb;
pub mod types;

pub use types::{Address, ClientId, Failure, LeaseId, PeerId, ReqId, Seq, ServiceName};

#[cfg(test)]
mod sim;
