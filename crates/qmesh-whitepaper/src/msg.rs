//! The typed messages: what the load balancer receives ([`ToLb`]) and
//! what it pushes to a gateway ([`ToGateway`]), each parsed from a
//! [`Call`] and built back into the kdb+ object that travels. The gateway,
//! the load balancer, the service and the simulation all speak through
//! these, so both ends of each message are read and written here only.

use std::time::Duration;

use qmesh_codec::{Atom, K};

use crate::names::{Address, Seq, ServiceName};
use crate::wire::{self, Call};

/// A call on the load balancer, from a gateway or a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToLb {
    /// `` (`registerGW;`) `` from a whitepaper gateway or
    /// `` (`registerGW;`qmesh) `` from a qmesh one (which gets
    /// `removeResource`, `serviceDenied` and reports `serviceDone` /
    /// `serviceLost`); answered with the resource table.
    RegisterGw { qmesh: bool },
    /// `` (`registerResource;`NAME;`:host:port) `` from a service.
    RegisterResource { service: ServiceName, address: Address },
    /// `` (`requestService;seq;`NAME) ``; a qmesh gateway adds the target
    /// instance (`` ` `` for any) and its timeout in milliseconds.
    RequestService { seq: Seq, service: ServiceName, target: Option<Address>, timeout: Option<Duration> },
    /// `` (`returnService;seq) `` from a gateway: the allocation (or the
    /// queued request) is not used.
    ReleaseService(Seq),
    /// `` (`returnService;`NAME) `` from a service: it finished a query
    /// and is free. Whatever is not a sequence number is taken as this
    /// form, as the whitepaper's load balancer does.
    ServiceFree,
    /// `` (`serviceDone;seq) `` from a qmesh gateway: the query dispatched
    /// under this allocation has answered.
    ServiceDone(Seq),
    /// `` (`serviceLost;seq) `` from a qmesh gateway: it lost its link to
    /// the instance running this query.
    ServiceLost(Seq),
}

impl ToLb {
    /// Whether `name` is a function of the load balancer.
    pub fn is_lb_function(name: &[u8]) -> bool {
        matches!(
            name,
            wire::REGISTER_GW
                | wire::REGISTER_RESOURCE
                | wire::REQUEST_SERVICE
                | wire::RETURN_SERVICE
                | wire::SERVICE_DONE
                | wire::SERVICE_LOST
        )
    }

    /// Reads a call; `None` when it is not a load balancer function, the
    /// q error text when its arguments are wrong.
    pub fn parse(call: &Call) -> Option<Result<ToLb, String>> {
        let name = &call.name[..];
        if !ToLb::is_lb_function(name) {
            return None;
        }
        Some(ToLb::parse_args(name, &call.args))
    }

    fn parse_args(name: &[u8], args: &[qmesh_codec::RawObject]) -> Result<ToLb, String> {
        match name {
            wire::REGISTER_GW => {
                let qmesh = matches!(args.first().map(wire::text_arg),
                    Some(Ok(t)) if &t[..] == wire::QMESH_GATEWAY_TAG.as_bytes());
                Ok(ToLb::RegisterGw { qmesh })
            }
            wire::REGISTER_RESOURCE => {
                let [n, a] = args else {
                    return Err("rank: registerResource takes [name;address]".into());
                };
                let service = wire::name_arg(n)?;
                let address = Address::from_bytes(wire::text_arg(a)?);
                if service.as_bytes().is_empty() || address.as_bytes().is_empty() {
                    return Err("bad request: registerResource needs a name and an address".into());
                }
                Ok(ToLb::RegisterResource { service, address })
            }
            wire::REQUEST_SERVICE => {
                let (seq, service, target, timeout) = match args {
                    [s, v] => (s, v, None, None),
                    [s, v, t, ms] => (s, v, Some(t), Some(ms)),
                    _ => return Err("rank: requestService takes [seq;service]".into()),
                };
                let target = match target.map(wire::text_arg).transpose()? {
                    Some(t) if !t.is_empty() => Some(Address::from_bytes(t)),
                    _ => None,
                };
                let timeout = match timeout.map(|t| t.decode()) {
                    Some(Ok(K::Atom(Atom::Long(ms)))) if ms >= 0 => Some(Duration::from_millis(ms as u64)),
                    _ => None,
                };
                Ok(ToLb::RequestService {
                    seq: wire::seq_arg(seq)?,
                    service: wire::name_arg(service)?,
                    target,
                    timeout,
                })
            }
            wire::RETURN_SERVICE => {
                let [x] = args else {
                    return Err("rank: returnService takes one argument".into());
                };
                Ok(match wire::seq_arg(x) {
                    Ok(seq) => ToLb::ReleaseService(seq),
                    Err(_) => ToLb::ServiceFree,
                })
            }
            _ => {
                let [x] = args else {
                    return Err("rank: serviceDone and serviceLost take [seq]".into());
                };
                let seq = wire::seq_arg(x)?;
                Ok(if name == wire::SERVICE_DONE { ToLb::ServiceDone(seq) } else { ToLb::ServiceLost(seq) })
            }
        }
    }

    /// The message as sent. [`ToLb::ServiceFree`] needs the service's name:
    /// build it with [`crate::return_service_name`]; here it is sent as
    /// `` (`returnService;`) ``, which a load balancer reads the same way.
    /// A [`ToLb::RequestService`] without a timeout is the whitepaper's
    /// two-argument form.
    pub fn to_k(&self) -> K {
        match self {
            ToLb::RegisterGw { qmesh } => wire::register_gw(*qmesh),
            ToLb::RegisterResource { service, address } => wire::register_resource(service, address),
            ToLb::RequestService { seq, service, target, timeout: Some(t) } => {
                wire::request_service(*seq, service, target.as_ref(), *t)
            }
            ToLb::RequestService { seq, service, timeout: None, .. } => {
                K::list(vec![K::sym("requestService"), K::long(seq.0), K::sym(service.as_bytes())])
            }
            ToLb::ReleaseService(seq) => wire::return_service_seq(*seq),
            ToLb::ServiceFree => wire::return_service_name(&ServiceName::new("")),
            ToLb::ServiceDone(seq) => wire::service_done(*seq),
            ToLb::ServiceLost(seq) => wire::service_lost(*seq),
        }
    }
}

/// What a load balancer pushes to a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToGateway {
    /// `` (`addResource;([] source; address)) ``: instances registered.
    AddResource(Vec<(ServiceName, Address)>),
    /// `` (`removeResource;([] source; address)) `` (qmesh gateways):
    /// instances gone.
    RemoveResource(Vec<(ServiceName, Address)>),
    /// `` (`serviceAlloc;seq;`:host:port) ``: run request `seq` there.
    ServiceAlloc { seq: Seq, address: Address },
    /// `` (`serviceDenied;seq;"queue full: NAME") `` (qmesh gateways): the
    /// request will not be allocated; the text is a catalog error.
    ServiceDenied { seq: Seq, text: String },
}

impl ToGateway {
    /// Reads a push; the error says what is wrong with it.
    pub fn parse(call: &Call) -> Result<ToGateway, String> {
        let rows = |t: &qmesh_codec::RawObject| -> Result<Vec<(ServiceName, Address)>, String> {
            wire::resource_rows(&t.decode().map_err(|e| e.to_string())?)
        };
        match (&call.name[..], call.args.as_slice()) {
            (wire::ADD_RESOURCE, [t]) => Ok(ToGateway::AddResource(rows(t)?)),
            (wire::REMOVE_RESOURCE, [t]) => Ok(ToGateway::RemoveResource(rows(t)?)),
            (wire::SERVICE_ALLOC, [s, a]) => Ok(ToGateway::ServiceAlloc {
                seq: wire::seq_arg(s)?,
                address: Address::from_bytes(wire::text_arg(a)?),
            }),
            (wire::SERVICE_DENIED, [s, t]) => Ok(ToGateway::ServiceDenied {
                seq: wire::seq_arg(s)?,
                text: String::from_utf8_lossy(&wire::text_arg(t)?).into_owned(),
            }),
            (name, _) => Err(format!("unknown function `{}", String::from_utf8_lossy(name))),
        }
    }

    /// The message as sent.
    pub fn to_k(&self) -> K {
        let table = |name: &str, rows: &[(ServiceName, Address)]| {
            K::list(vec![K::sym(name), wire::resource_table(rows)])
        };
        match self {
            ToGateway::AddResource(rows) => table("addResource", rows),
            ToGateway::RemoveResource(rows) => table("removeResource", rows),
            ToGateway::ServiceAlloc { seq, address } => wire::service_alloc(*seq, address),
            ToGateway::ServiceDenied { seq, text } => wire::service_denied(*seq, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use qmesh_codec::{EncodeOptions, Message, MsgType};

    use super::*;
    use crate::names::MAX_NAME_BYTES;

    fn call(k: &K) -> Call {
        let frame = Message::encode(MsgType::Async, k, EncodeOptions::default()).unwrap();
        wire::call_of(&Message::from_frame(frame, 1 << 30).unwrap()).unwrap()
    }

    fn round_trip_lb(m: ToLb) {
        assert_eq!(ToLb::parse(&call(&m.to_k())), Some(Ok(m.clone())), "{m:?}");
    }

    #[test]
    fn load_balancer_calls_round_trip() {
        let svc = ServiceName::new("EQUITY_MARKET_RDB");
        let addr = Address::new(":h:5002");
        round_trip_lb(ToLb::RegisterGw { qmesh: true });
        round_trip_lb(ToLb::RegisterGw { qmesh: false });
        round_trip_lb(ToLb::RegisterResource { service: svc.clone(), address: addr.clone() });
        round_trip_lb(ToLb::RequestService {
            seq: Seq(7),
            service: svc.clone(),
            target: Some(addr.clone()),
            timeout: Some(Duration::from_millis(1500)),
        });
        round_trip_lb(ToLb::RequestService { seq: Seq(7), service: svc, target: None, timeout: None });
        round_trip_lb(ToLb::ReleaseService(Seq(3)));
        round_trip_lb(ToLb::ServiceFree);
        round_trip_lb(ToLb::ServiceDone(Seq(4)));
        round_trip_lb(ToLb::ServiceLost(Seq(5)));
    }

    #[test]
    fn a_service_frees_itself_by_name() {
        let m = wire::return_service_name(&ServiceName::new("EQ"));
        assert_eq!(ToLb::parse(&call(&m)), Some(Ok(ToLb::ServiceFree)));
    }

    #[test]
    fn bad_calls_are_q_errors_and_others_are_not_ours() {
        let bad = K::list(vec![K::sym("registerResource"), K::sym("EQ")]);
        assert_eq!(ToLb::parse(&call(&bad)), Some(Err("rank: registerResource takes [name;address]".into())));
        let long = "N".repeat(MAX_NAME_BYTES + 1);
        let bad = K::list(vec![K::sym("registerResource"), K::sym(long.as_str()), K::sym(":h:1")]);
        let e = ToLb::parse(&call(&bad)).unwrap().unwrap_err();
        assert!(e.starts_with("limit: service name longer than 255 bytes"), "{e}");
        let ok = "N".repeat(MAX_NAME_BYTES);
        let fine = K::list(vec![K::sym(ok.as_str()), K::sym(":h:1")]);
        let mut items = vec![K::sym("registerResource")];
        if let K::List(_, v) = fine {
            items.extend(v);
        }
        assert!(matches!(ToLb::parse(&call(&K::list(items))), Some(Ok(ToLb::RegisterResource { .. }))));
        assert_eq!(ToLb::parse(&call(&K::list(vec![K::sym("userQuery"), K::long(1)]))), None);
        // a name given as a string with a NUL could never be sent on as a symbol
        let nul = K::list(vec![K::sym("registerResource"), K::string(b"E\0Q".as_slice()), K::sym(":h:1")]);
        assert!(ToLb::parse(&call(&nul)).unwrap().unwrap_err().starts_with("type:"));
    }

    #[test]
    fn gateway_pushes_round_trip() {
        let rows = vec![
            (ServiceName::new("EQ"), Address::new(":h:1")),
            (ServiceName::new("FX"), Address::new(":h:2")),
        ];
        for m in [
            ToGateway::AddResource(rows.clone()),
            ToGateway::RemoveResource(rows),
            ToGateway::ServiceAlloc { seq: Seq(9), address: Address::new(":h:1") },
            ToGateway::ServiceDenied { seq: Seq(9), text: "queue full: EQ".into() },
        ] {
            assert_eq!(ToGateway::parse(&call(&m.to_k())), Ok(m.clone()), "{m:?}");
        }
        let e = ToGateway::parse(&call(&K::list(vec![K::sym("hopen"), K::long(1)]))).unwrap_err();
        assert_eq!(e, "unknown function `hopen");
    }
}
