//! The KX query-routing whitepaper's protocol, with qmesh's extensions, in
//! one place: every message the gateway, the load balancer and the service
//! exchange is parsed and built here, so the two ends of each message cannot
//! drift apart. No I/O, no state: the routing cores decide, the socket layers
//! carry; this crate only turns kdb+ objects into typed messages and back.
//!
//! * [`ToLb`]: the calls a load balancer receives (`registerGW`,
//!   `registerResource`, `requestService`, `returnService`, `serviceDone`,
//!   `serviceLost`); [`ToGateway`]: what it pushes (`addResource`,
//!   `removeResource`, `serviceAlloc`, `serviceDenied`).
//! * `queryService` / `returnRes` between gateway and service:
//!   [`query_service`] and [`query_service_frame`] (built by hand, the
//!   query's bytes copied once), [`query_service_arg`] (the service's
//!   reading), [`return_res`] and [`service_reply`] (the gateway's reading,
//!   including the whitepaper's `errProj` form).
//! * `userQuery` from clients: [`user_query`], and the callback forms
//!   [`callback_header`] / [`callback_call`].
//! * [`ServiceName`], [`Address`], [`Seq`] and their bounds
//!   ([`MAX_NAME_BYTES`], the one limit on a service name everywhere).
//!
//! | message | from → to | form |
//! |---|---|---|
//! | `registerGW` | gateway → LB, sync | `` (`registerGW;`) `` (whitepaper) or `` (`registerGW;`qmesh) ``; answered with the table `([] source; address)` |
//! | `registerResource` | service → LB | `` (`registerResource;`NAME;`:host:port) `` |
//! | `addResource` | LB → gateway | `` (`addResource;([] source:enlist`NAME; address:enlist`:host:port)) `` |
//! | `removeResource` | LB → qmesh gateway | the same table form |
//! | `requestService` | gateway → LB | `` (`requestService;seq;`NAME) ``; qmesh adds `` ;`:host:port or `;timeout_ms `` |
//! | `serviceAlloc` | LB → gateway | `` (`serviceAlloc;seq;`:host:port) `` |
//! | `serviceDenied` | LB → qmesh gateway | `` (`serviceDenied;seq;"queue full: NAME") `` |
//! | `queryService` | gateway → service | `` (`queryService;(seq;query)) `` |
//! | `returnRes` | service → gateway | `` (`returnRes;(seq;result)) ``, or `` (`returnRes;(seq;"text";1b)) `` for an error |
//! | `returnService` | service → LB | `` (`returnService;`NAME) ``: the instance is free |
//! | `returnService` | gateway → LB | `` (`returnService;seq) ``: the allocation (or queued request) is not used |
//! | `serviceDone` | qmesh gateway → LB | `` (`serviceDone;seq) ``: the dispatched query has answered |
//! | `serviceLost` | qmesh gateway → LB | `` (`serviceLost;seq) ``: the gateway lost its link to the instance running it |
//! | `userQuery` | client → gateway | `` (`userQuery;(`NAME;query)) ``, options and a callback name: see [`user_query`] |
//!
//! Sequence numbers are q longs; ints and shorts are accepted on the way in.
//! Function names may arrive as symbols or as strings.
//!
//! **Architecture Invariant:** no other crate builds or parses these
//! messages by hand; a new message is added here, with both directions
//! tested.

mod msg;
mod names;
mod wire;

pub use msg::{ToGateway, ToLb};
pub use names::{Address, MAX_ADDRESS_BYTES, MAX_NAME_BYTES, Seq, ServiceName};
pub use wire::*;
