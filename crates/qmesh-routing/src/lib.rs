//! Query routing for kdb+ estates: the load balancer and the gateway of
//! KX's "Query Routing" whitepaper, speaking its protocol, with its bugs
//! fixed.
//!
//! Processes: `qmesh lb` (a load balancer, [`bind_lb`]) and `qmesh gateway`
//! ([`bind_gateway`]); several gateways can share one load balancer, or a
//! gateway can run one itself (`qmesh gateway --embedded-lb`,
//! [`LbLocation::Embedded`]), in which case services register with the
//! gateway's own port.
//!
//! # For clients
//!
//! Clients call `userQuery` on a gateway with `(service;query)`. The query
//! (usually a string) is forwarded to an instance of the service untouched;
//! the gateway runs no q. The function name may be a symbol or a string
//! (`("userQuery";…)`, as PyKX sends it).
//!
//! | the client sends | it receives |
//! |---|---|
//! | sync `` h(`userQuery;(`EQ;"select from trade")) `` | the result as the response; a failure as a q error (`'timeout`) |
//! | async `` neg[h](`userQuery;(`EQ;"…")) `` then `h[]` (deferred sync) | the result as an async message; a failure as an async message holding an error object, which `h[]`, PyKX and qPython raise as an error |
//! | async `` neg[h](`userQuery;(`EQ;"…");`cb) `` (callback) | the async message `` (`cb;hdr;payload) ``, i.e. q runs `cb[hdr;payload]` |
//!
//! A `userQuery` whose argument is not `(service;query[;options])`
//! (optionally followed by a callback name) — say
//! `` neg[h](`userQuery;`EQ;"select …") ``, two arguments instead of one
//! pair — gets `'bad request: …`: as the response to a sync call, and as one
//! async error message to an async call, whatever its second argument: a
//! malformed call is never answered in the callback form.
//!
//! The callback's `hdr` is the dictionary
//! `` `ok`error`service`query!(ok;error;service;query) ``: `ok` a boolean,
//! `error` the error text (`""` on success), `service` the service name
//! (symbol, or symbols for a fan-out) and `query` the query as sent, to tell
//! concurrent requests apart. On success `payload` is the result; on failure
//! it is `::` and `hdr`ok` is `0b` — an error never looks like a result.
//! A sync request that also names a callback is answered as a sync request.
//!
//! Options, as a third item of the argument: `(`EQ;"query";5000)` (a timeout
//! in milliseconds; a timespan also works) or a dictionary
//! `` (`EQ;"query";`timeout`all!(0D00:00:05;1b)) `` (`all`: run on every
//! instance of the service). Naming several services, `` (`EQ`FX;"query") ``,
//! runs the query on one instance of each.
//!
//! A fan-out's results are joined: unkeyed tables with the same columns are
//! concatenated (keyed tables likewise, rows appended); anything else gives
//! a general list of the results in the order of the services (and, with
//! `all`, of the instances). If any part fails, the request fails with that
//! part's error ([`join`]).
//!
//! Results are forwarded as the service encoded them (a null, an empty
//! table, a 500 MB vector arrive byte for byte); only a joined fan-out and a
//! callback's wrapper are built by the gateway.
//!
//! PyKX's connect-time probes are answered, so a plain
//! `pykx.SyncQConnection` works; q's `h""` chaser gets `::`; anything else
//! that is not `userQuery` gets `'bad request: …` (unless the gateway has a
//! default service: see mserve mode below).
//!
//! # Plain q processes and plain queries (mserve mode)
//!
//! A gateway can also balance processes that speak nothing but kdb+ IPC
//! (a plain q, an RDB, an HDB, a `qmesh service`): *static instances*,
//! `qmesh gateway --instances SERVICE=HOST:PORT[,HOST:PORT…]` (repeatable;
//! `:host:port:user:password` for credentials; the embedded load balancer
//! only). The gateway opens the connections itself and reconnects with
//! backoff; an instance is in the pool while its link is up, and its link
//! coming up — the process answering the handshake — is what brings it
//! (back) in. Each query goes to it as a sync request of the query itself,
//! and the answer is what frees it: no `returnService`. Static instances
//! share the per-service FIFO queue, deadlines, metrics and
//! `/api/services` with registered instances; one service may have both.
//!
//! With `--default-service SERVICE`, anything a client sends that is not
//! `userQuery` (nor a message of the protocol: `registerResource` and the
//! rest keep their meaning at a gateway with an embedded load balancer) is a
//! *plain query* for that service, forwarded as the client sent it (the
//! same bytes, not re-encoded):
//!
//! | the client sends | it receives |
//! |---|---|
//! | sync `h"select from t"` or `` h(`f;x;y) `` | the answer as the response; the instance's error as that q error (`'type`, not wrapped); a gateway failure in the catalog's words (`'service disconnected: EQ`) |
//! | async `neg[h]x` then `h[]` (mserve.q's deferred sync) | the answer as an async message; an error as an async error object |
//!
//! Every async plain message is a request and gets an answer, as with
//! mserve.q. The gateway evaluates nothing: with no default service such
//! messages are refused (`'bad request`; async ones are logged and
//! dropped). Dispatch goes only to a free instance (one query at a time by
//! default, as q runs one at a time), never to a queue behind a long query;
//! an instance that dies mid-query gives its caller `'service disconnected:
//! SERVICE` at once and leaves the pool until its link is back; a client
//! that leaves loses its queued queries. `qmesh mserve -p PORT HOST:PORT…`
//! is the short form, one pool (`--service`, default `mserve`) and plain
//! queries routed to it:
//!
//! | mserve.q | qmesh |
//! |---|---|
//! | `q mserve.q -p 5000 4 tq` (spawns the 4 secondaries on 5001–5004) | `qmesh mserve -p 5000 localhost:5001 localhost:5002 localhost:5003 localhost:5004` (the q processes started as you like, any host) |
//! | `(neg h)x; h[]` | the same, or `h x`, or `` h(`f;x;y) `` |
//! | the shortest queue, at once | only a free instance; FIFO otherwise |
//! | errors become `` `error `` | the instance's q error |
//!
//! # Errors
//!
//! The words of the shared catalog (`qmesh-process`), with the HTTP status
//! the HTTP API gives them:
//!
//! | q error | when | HTTP |
//! |---|---|---|
//! | `unknown service: EQ` | no instance of that name has ever registered | 404 |
//! | `no instance: EQ` | the service is known but no instance is registered (or reachable) | 404 |
//! | `queue full: EQ` | the service's queue at the load balancer is at its limit | 429 |
//! | `timeout` | the deadline passed (default `--timeout`, or the call's own) | 504 |
//! | `service error: EQ: text` | the service reported an error | 422 |
//! | `service disconnected: EQ` | the instance running the query went away | 502 |
//! | `lb unavailable` | the gateway has no load balancer (it reconnects on its own) | 503 |
//! | `limit: …` | too many requests in flight, or a fan-out too wide | 507 |
//! | `bad request: …` | not `(service;query)`, an unknown option | 400 |
//! | `shutting down` | the gateway is stopping | 503 |
//!
//! A service reports an error, and the gateway raises it, when it sends
//! `` (`returnRes;(seq;"text";1b)) `` (qmesh's service does), a result of
//! type -128, or the whitepaper's `errProj` message `` (seq;`text) `` (the
//! paper sends it without a function name; it is recognised anyway). The
//! paper's `execRequest` catches errors with `@[value;query;{x}]`, which
//! turns an error into its text as a string: from an unmodified `service.q`
//! such an error arrives as that string, indistinguishable from a string
//! result. Changing `{x}` to return `(sq;x;1b)` fixes it.
//!
//! # HTTP
//!
//! On the gateway's `--http` port: `POST /query` (also `/api/query`) with
//! `{"service":"EQ","query":"select from trade","timeout_ms":5000}`
//! (`service` may be a list; `"all_instances":true`;
//! `"format":"columns"`), answered `{"type":98,"result":…}`; tables are an
//! array of records, or with `format=columns` an object of column arrays.
//! The body and the JSON forms are the ones every qmesh HTTP API shares
//! ([`qmesh_process::json`]; [`json`] re-exports them): a qmesh service
//! instance answers the same query with the same JSON. Errors: `{"error":"timeout","detail":null}`
//! with the status above. `GET /api/services` shows each service's state;
//! `/healthz` is 200 while the gateway has its load balancer; `/metrics` is
//! Prometheus text ([`metrics`] lists the metrics).
//!
//! # The protocol
//!
//! The whitepaper's messages, unchanged, so its `service.q` works as it is
//! ([`proto`], the `qmesh-whitepaper` crate, has every form): services send the load balancer
//! `registerResource[name;address]` and, after each query,
//! `returnService[name]`; gateways call `registerGW` (sync; answered with the
//! `([] source; address)` table) and receive `addResource`; a gateway asks
//! `requestService[seq;service]`, gets `serviceAlloc[seq;address]`, sends
//! `queryService (seq;query)` to the instance, which answers
//! `returnRes (seq;result)`. A gateway that no longer needs an allocation
//! sends `returnService[seq]`.
//!
//! qmesh gateways and load balancers add, between themselves: the
//! `` `qmesh `` argument to `registerGW`; a target instance and a timeout in
//! `requestService`; `serviceDenied[seq;"text"]` (refusals);
//! `removeResource` (an instance left); `serviceDone[seq]` (the query's
//! result arrived) and `serviceLost[seq]` (the link to its instance broke).
//!
//! The load balancer sends a service one message of its own: the sync
//! request `""` (q's `h""` chaser) on the service's connection, when a
//! gateway died holding an allocation of that instance. q answers it only
//! once the query in progress has finished, which tells the load balancer
//! whether the dead gateway's query ever arrived ([`lb`], *Orphaned
//! allocations*); an unmodified `service.q` answers it, and so does qmesh's
//! service.
//!
//! # What is fixed (see the research note's list of the paper's bugs)
//!
//! * Typed sequence numbers ([`Seq`], a q long; ints accepted), typed ids
//!   for leases, connections and clients: no int/long mismatch.
//! * A **lease per allocation** ([`lb`]): a gateway's release ends only the
//!   lease it names, so a late or repeated `returnService` cannot free an
//!   instance busy with another query. A dead gateway's instances stay busy
//!   until they report back, or — when the gateway died between the
//!   allocation and sending the query — until they answer the load
//!   balancer's probe (within the running query's time, at once when
//!   idle); a timed-out query keeps its instance until it has really
//!   finished; an instance that never reports back nor answers is dropped
//!   (its connection closed) at its deadline plus `--stuck-grace`, and is
//!   back when it registers again (service.q does, from its timer, when
//!   idle). A whole-estate simulation (the crate's `sim` tests) checks that no
//!   instance is ever double-booked with gateways and services dying, and
//!   none is lost when gateways die between allocation and dispatch.
//! * Sync clients get a response (a deferred response; the gateway never
//!   blocks), deferred-sync and callback clients get async messages, and
//!   errors are errors in every mode.
//! * Bounded FIFO queues per service with deadlines; a client that leaves
//!   loses its queued requests and frees instances allocated to it; client
//!   and connection ids are never reused, so a new client on a reused socket
//!   never receives an old result.
//! * Losing the load balancer fails only the requests still waiting for an
//!   allocation (`lb unavailable`); queries already running complete. The
//!   gateway reconnects with backoff, registers again and pulls the
//!   resource list; the load balancer rebuilds its state from the
//!   registrations.
//! * Ports, names and peers come from flags, environment and `qmesh.toml`.
//!
//! # Instance concurrency
//!
//! The whitepaper's rule — a query goes only to a free instance — is the
//! default (`--instance-concurrency 1`): a long query never holds up another
//! one while an instance is idle. For many short queries it leaves every
//! instance idle for a round trip through the gateway between queries; a
//! higher value lets each instance hold that many queries (the next one
//! waits in its socket), as HAProxy's per-server `maxconn` does. The lease
//! accounting stays exact (anonymous `returnService`s only ever free a slot
//! late, never early). `bench/routing.sh` measures both against HAProxy in
//! TCP mode (figures in `bench/routing-results.txt`): with trivial queries
//! from 64 clients, one query per instance gets under half of HAProxy's
//! throughput (each instance idles for a round trip between queries); 16
//! per instance gets as much as HAProxy, for less CPU per request, because
//! the queries of many clients reach an instance, and its answers come back,
//! a batch per `writev`.
//!
//! # Design
//!
//! The load balancer ([`lb`]) and the gateway ([`gw`]) are plain state
//! machines: events in (with the time as a value), actions out; they are
//! tested without sockets. The `router` module holds a process's state and
//! wires it to `qmesh-ipc` (its submodules: the reconnecting links, the IPC
//! handler, the metric samplers): one mutex per process, held for
//! microseconds and never across an `.await`, is taken by whichever
//! connection task has an event (its reasons are in that module's docs);
//! [`runtime`] binds and runs a process on the process shell. Results are
//! forwarded as raw bytes
//! ([`qmesh_codec::RawObject`]), never decoded on the hot path.

pub mod gw;
mod http;
pub mod join;
pub mod json;
pub mod lb;
pub mod metrics;
pub use qmesh_whitepaper as proto;
mod router;
pub mod runtime;
pub mod types;

pub use runtime::{
    FOLLOW_ATTEMPTS, GatewayOptions, LbFinder, LbLocation, LbOptions, Routing, RoutingError, StaticInstance,
    bind_gateway, bind_lb, parse_instances,
};
pub use types::{Address, ClientId, Failure, LeaseId, PeerId, ReqId, Seq, ServiceName};

#[cfg(test)]
mod sim;
#[cfg(test)]
mod static_sim;
