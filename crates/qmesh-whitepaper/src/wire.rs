//! The messages as kdb+ objects: parsing what arrives, building what is
//! sent. No I/O. See the crate docs for the table of messages.
//!
//! Function names may arrive as symbols (q's `` (`f;x) ``) or as strings
//! (`("f";x)`, as PyKX and some other libraries send them). Sequence
//! numbers are q longs; ints and shorts are accepted on the way in.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use qmesh_codec::{
    Atom, Attr, HEADER_LEN, Header, K, Message, MsgType, RawObject, Symbols, Table, Vector, types,
};

use crate::names::{Address, MAX_ADDRESS_BYTES, MAX_NAME_BYTES, Seq, ServiceName};

/// Most rows accepted in one `addResource` or `registerGW` table (count).
pub const MAX_RESOURCE_ROWS: usize = 100_000;

/// Most services one `userQuery` may name (count); the gateway's fan-out
/// bound applies after this.
pub const MAX_SERVICES_PER_QUERY: usize = 1024;

pub const REGISTER_GW: &[u8] = b"registerGW";
pub const REGISTER_RESOURCE: &[u8] = b"registerResource";
pub const ADD_RESOURCE: &[u8] = b"addResource";
pub const REMOVE_RESOURCE: &[u8] = b"removeResource";
pub const REQUEST_SERVICE: &[u8] = b"requestService";
pub const SERVICE_ALLOC: &[u8] = b"serviceAlloc";
pub const SERVICE_DENIED: &[u8] = b"serviceDenied";
pub const QUERY_SERVICE: &[u8] = b"queryService";
pub const RETURN_RES: &[u8] = b"returnRes";
pub const RETURN_SERVICE: &[u8] = b"returnService";
pub const SERVICE_DONE: &[u8] = b"serviceDone";
pub const SERVICE_LOST: &[u8] = b"serviceLost";
pub const USER_QUERY: &[u8] = b"userQuery";

/// The argument a qmesh gateway passes to `registerGW`.
pub const QMESH_GATEWAY_TAG: &str = "qmesh";

/// A function call: `(f;arg1;arg2…)` with `f` a symbol or a string.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: Bytes,
    pub args: Vec<RawObject>,
}

/// The call in `msg`, if its body is a general list headed by a name.
pub fn call_of(msg: &Message) -> Option<Call> {
    if msg.body().first().map(|&b| b as i8) != Some(types::LIST) {
        return None;
    }
    let mut items = msg.list_items().ok()?.into_iter();
    let head = items.next()?;
    let name = name_of(&head)?;
    Some(Call { name, args: items.collect() })
}

/// The name in a symbol atom or a string object, without decoding anything
/// else.
fn name_of(obj: &RawObject) -> Option<Bytes> {
    let b = obj.bytes();
    match b.first().map(|&t| t as i8)? {
        t if t == -types::SYMBOL => {
            let end = b[1..].iter().position(|&c| c == 0)? + 1;
            Some(b.slice(1..end))
        }
        types::CHAR => match obj.decode().ok()? {
            K::Vector(_, Vector::Char(c)) => Some(Bytes::from(c)),
            _ => None,
        },
        _ => None,
    }
}

/// A service name argument (a symbol or a string), bounded by
/// [`MAX_NAME_BYTES`].
pub fn name_arg(obj: &RawObject) -> Result<ServiceName, String> {
    let text = text_arg(obj)?;
    if text.len() > MAX_NAME_BYTES {
        return Err(format!("limit: service name longer than {MAX_NAME_BYTES} bytes"));
    }
    Ok(ServiceName::from_bytes(text))
}

/// A symbol or string argument, bounded by [`MAX_ADDRESS_BYTES`].
pub fn text_arg(obj: &RawObject) -> Result<Bytes, String> {
    let text = match obj.ty() {
        t if t == -i16::from(types::SYMBOL)
            || t == i16::from(types::CHAR)
            || t == -i16::from(types::CHAR) =>
        {
            let k = obj.decode().map_err(|e| format!("bad request: {e}"))?;
            Bytes::copy_from_slice(k.as_text().unwrap_or_default())
        }
        t => return Err(format!("type: expected a symbol or a string, got type {t}h")),
    };
    if text.len() > MAX_ADDRESS_BYTES {
        return Err(format!("limit: text longer than {MAX_ADDRESS_BYTES} bytes"));
    }
    if text.contains(&0) {
        // a q symbol ends at its first NUL: such a name could not be sent on
        return Err("type: a name cannot contain a NUL byte".to_string());
    }
    Ok(text)
}

/// A sequence number argument (long, int or short atom).
pub fn seq_arg(obj: &RawObject) -> Result<Seq, String> {
    match obj.decode().map_err(|e| format!("bad request: {e}"))? {
        K::Atom(Atom::Long(j)) => Ok(Seq(j)),
        K::Atom(Atom::Int(i)) => Ok(Seq(i64::from(i))),
        K::Atom(Atom::Short(h)) => Ok(Seq(i64::from(h))),
        k => Err(format!("type: expected a sequence number (long), got type {}h", k.ty())),
    }
}

/// Rows `(source;address)` of a `registerGW` answer or an `addResource` /
/// `removeResource` table. A dictionary (one row, `source`address!(…)`) and
/// a keyed table are accepted too.
pub fn resource_rows(k: &K) -> Result<Vec<(ServiceName, Address)>, String> {
    let table = match k {
        K::Table(t) => t,
        K::Dict(d) => match (&d.keys, &d.values) {
            (K::Table(_), K::Table(v)) => {
                // keyed table: the value columns carry source and address
                return resource_rows(&K::Table(v.clone()));
            }
            (K::Vector(_, Vector::Symbol(keys)), K::List(_, vals)) => {
                let get = |name: &[u8]| keys.iter().position(|n| n == name).and_then(|i| vals.get(i));
                let (Some(s), Some(a)) = (get(b"source"), get(b"address")) else {
                    return Err("type: expected source and address".into());
                };
                return Ok(vec![(
                    ServiceName::new(sym_text(s, MAX_NAME_BYTES)?),
                    Address::new(sym_text(a, MAX_ADDRESS_BYTES)?),
                )]);
            }
            _ => return Err("type: expected a table of source and address".into()),
        },
        _ => return Err(format!("type: expected a table of source and address, got type {}h", k.ty())),
    };
    let (Some(src), Some(addr)) = (table.column(b"source"), table.column(b"address")) else {
        return Err("type: the table needs columns source and address".into());
    };
    let n = table.row_count();
    if n > MAX_RESOURCE_ROWS {
        return Err(format!("limit: more than {MAX_RESOURCE_ROWS} resources"));
    }
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        rows.push((
            ServiceName::new(column_text(src, i, MAX_NAME_BYTES)?),
            Address::new(column_text(addr, i, MAX_ADDRESS_BYTES)?),
        ));
    }
    Ok(rows)
}

fn sym_text(k: &K, max: usize) -> Result<Vec<u8>, String> {
    match k.as_text() {
        Some(t) if t.len() <= max => Ok(t.to_vec()),
        Some(_) => Err(format!("limit: name longer than {max} bytes")),
        None => Err(format!("type: expected a symbol, got type {}h", k.ty())),
    }
}

fn column_text(col: &K, i: usize, max: usize) -> Result<Vec<u8>, String> {
    match col {
        K::Vector(_, Vector::Symbol(s)) => match s.get(i) {
            Some(t) if t.len() <= max => Ok(t.to_vec()),
            Some(_) => Err(format!("limit: name longer than {max} bytes")),
            None => Err("length".to_string()),
        },
        K::List(_, items) => sym_text(items.get(i).ok_or_else(|| "length".to_string())?, max),
        _ => Err(format!("type: expected a symbol column, got type {}h", col.ty())),
    }
}

/// The table `([] source:…; address:…)`.
pub fn resource_table(rows: &[(ServiceName, Address)]) -> K {
    let source: Symbols = rows.iter().map(|(s, _)| s.as_bytes()).collect();
    let address: Symbols = rows.iter().map(|(_, a)| a.as_bytes()).collect();
    K::Table(Table {
        attr: Attr::None,
        names: ["source", "address"].into_iter().collect(),
        columns: vec![
            K::Vector(Attr::None, Vector::Symbol(source)),
            K::Vector(Attr::None, Vector::Symbol(address)),
        ],
    })
}

fn call(name: &str, args: Vec<K>) -> K {
    let mut items = Vec::with_capacity(args.len() + 1);
    items.push(K::sym(name));
    items.extend(args);
    K::list(items)
}

/// `` (`registerGW;`qmesh) `` (or the whitepaper's `` (`registerGW;`) ``).
pub fn register_gw(qmesh: bool) -> K {
    call("registerGW", vec![K::sym(if qmesh { QMESH_GATEWAY_TAG } else { "" })])
}

/// `` (`registerResource;`name;`address) ``.
pub fn register_resource(name: &ServiceName, address: &Address) -> K {
    call("registerResource", vec![K::sym(name.as_bytes()), K::sym(address.as_bytes())])
}

/// `` (`addResource;table) `` / `` (`removeResource;table) ``.
pub fn resource_message(add: bool, service: &ServiceName, address: &Address) -> K {
    let name = if add { "addResource" } else { "removeResource" };
    call(name, vec![resource_table(&[(service.clone(), address.clone())])])
}

/// `` (`requestService;seq;`service) `` plus, from a qmesh gateway, the
/// target instance (`` ` `` for any) and the timeout in milliseconds.
pub fn request_service(seq: Seq, service: &ServiceName, target: Option<&Address>, timeout: Duration) -> K {
    let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    call(
        "requestService",
        vec![
            K::long(seq.0),
            K::sym(service.as_bytes()),
            K::sym(target.map(Address::as_bytes).unwrap_or_default()),
            K::long(ms),
        ],
    )
}

/// `` (`serviceAlloc;seq;`address) ``.
pub fn service_alloc(seq: Seq, address: &Address) -> K {
    call("serviceAlloc", vec![K::long(seq.0), K::sym(address.as_bytes())])
}

/// `` (`serviceDenied;seq;"text") ``.
pub fn service_denied(seq: Seq, text: &str) -> K {
    call("serviceDenied", vec![K::long(seq.0), K::string(text)])
}

/// `` (`returnService;seq) `` from a gateway.
pub fn return_service_seq(seq: Seq) -> K {
    call("returnService", vec![K::long(seq.0)])
}

/// `` (`returnService;`name) `` from a service.
pub fn return_service_name(name: &ServiceName) -> K {
    call("returnService", vec![K::sym(name.as_bytes())])
}

/// `` (`serviceDone;seq) ``.
pub fn service_done(seq: Seq) -> K {
    call("serviceDone", vec![K::long(seq.0)])
}

/// `` (`serviceLost;seq) ``.
pub fn service_lost(seq: Seq) -> K {
    call("serviceLost", vec![K::long(seq.0)])
}

/// Writes a little-endian symbol atom.
fn put_sym(out: &mut BytesMut, name: &[u8]) {
    out.put_u8(types::SYMBOL.wrapping_neg() as u8);
    out.put_slice(name);
    out.put_u8(0);
}

fn put_list_header(out: &mut BytesMut, n: u32) {
    out.put_u8(types::LIST as u8);
    out.put_u8(0);
    out.put_u32_le(n);
}

/// The whole async message `` (`queryService;(seq;query)) ``, built by hand
/// (one allocation, the query copied once). `None` when the query is
/// big-endian (rare; the caller then encodes it normally).
pub fn query_service_frame(seq: Seq, query: &RawObject) -> Option<Bytes> {
    if !query.is_little_endian() {
        return None;
    }
    let q = query.bytes();
    let body_len = 6 + 1 + QUERY_SERVICE.len() + 1 + 6 + 9 + q.len();
    let total = HEADER_LEN + body_len;
    let mut out = BytesMut::with_capacity(total);
    out.put_slice(&Header::new(MsgType::Async, total as u64).to_bytes());
    put_list_header(&mut out, 2);
    put_sym(&mut out, QUERY_SERVICE);
    put_list_header(&mut out, 2);
    out.put_u8(types::LONG.wrapping_neg() as u8);
    out.put_i64_le(seq.0);
    out.put_slice(q);
    Some(out.freeze())
}

/// `` (`queryService;(seq;query)) `` as a value.
pub fn query_service(seq: Seq, query: &RawObject) -> K {
    call("queryService", vec![K::list(vec![K::long(seq.0), K::Raw(query.clone())])])
}

/// What a service sent the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceReply {
    /// `returnRes (seq;result)`: the result, untouched.
    Result(Seq, RawObject),
    /// An error for `seq`: `returnRes (seq;"text";1b)`, a result of type
    /// -128, or the whitepaper's `errProj` form, a bare `(seq;`text)`.
    Error(Seq, String),
}

/// Reads a message from a service: `returnRes`, or the whitepaper's bare
/// `(seq;`error)` that its `errProj` sends without a function name.
pub fn service_reply(msg: &Message) -> Result<ServiceReply, String> {
    let items = msg.list_items().map_err(|e| format!("bad request: {e}"))?;
    let Some(head) = items.first() else { return Err("bad request: empty list".into()) };
    match name_of(head) {
        Some(name) if &name[..] == RETURN_RES => {
            if items.len() != 2 {
                return Err("rank: returnRes takes one argument".into());
            }
            return_res_arg(&items[1])
        }
        Some(name) => Err(format!("bad request: a service may not call {}", String::from_utf8_lossy(&name))),
        None => {
            // errProj: nh(sq;`$er) — (seq;`error) with no function name
            if items.len() == 2
                && let Ok(seq) = seq_arg(&items[0])
                && let Ok(text) = text_arg(&items[1])
            {
                return Ok(ServiceReply::Error(seq, String::from_utf8_lossy(&text).into_owned()));
            }
            Err("bad request: expected (`returnRes;(seq;result))".into())
        }
    }
}

fn return_res_arg(arg: &RawObject) -> Result<ServiceReply, String> {
    let parts = arg.list_items().map_err(|_| "type: returnRes expects (seq;result)".to_string())?;
    let (seq, result) = match &parts[..] {
        [seq, result] => (seq_arg(seq)?, result.clone()),
        [seq, result, flag] => {
            let seq = seq_arg(seq)?;
            let is_err = matches!(flag.decode(), Ok(K::Atom(Atom::Boolean(true))));
            if is_err {
                let text = match result.decode() {
                    Ok(k) => k.as_text().map(|t| String::from_utf8_lossy(t).into_owned()),
                    Err(_) => None,
                }
                .unwrap_or_else(|| "error".to_string());
                return Ok(ServiceReply::Error(seq, text));
            }
            (seq, result.clone())
        }
        _ => return Err("type: returnRes expects (seq;result)".into()),
    };
    if result.ty() == i16::from(types::ERROR) {
        let text = match result.decode() {
            Ok(K::Error(t)) => String::from_utf8_lossy(&t).into_owned(),
            _ => "error".into(),
        };
        return Ok(ServiceReply::Error(seq, text));
    }
    Ok(ServiceReply::Result(seq, result))
}

/// `` (`returnRes;(seq;result)) `` as a service sends it or, for an error,
/// `` (`returnRes;(seq;"text";1b)) ``: a whitepaper gateway reads items 0
/// and 1 and so forwards the error text as the paper's service does
/// (`@[value;q;{x}]` gives a string), while a qmesh gateway sees the third
/// item and raises it as a q error. `seq` is echoed as the gateway sent it.
pub fn return_res(seq: K, result: Result<K, String>) -> K {
    let payload = match result {
        Ok(k) => K::list(vec![seq, k]),
        Err(e) => K::list(vec![seq, K::string(e), K::Atom(Atom::Boolean(true))]),
    };
    call("returnRes", vec![payload])
}

/// The argument of `queryService` as a service reads it, decoded:
/// `(seq;query)`, the sequence number echoed back untouched in `returnRes`.
pub fn query_service_arg(arg: K) -> Result<(K, K), String> {
    let K::List(_, pair) = arg else {
        return Err("type: queryService takes (seq;query)".to_string());
    };
    let [seq, query]: [K; 2] =
        pair.try_into().map_err(|_| "length: queryService takes (seq;query)".to_string())?;
    Ok((seq, query))
}

/// Options of one `userQuery`.
#[derive(Debug, Clone, PartialEq)]
pub struct UserQuery {
    pub services: Vec<ServiceName>,
    /// Run on every instance of each service.
    pub all_instances: bool,
    /// The query, forwarded untouched.
    pub query: RawObject,
    pub timeout: Option<Duration>,
    /// The callback name for an async request (`None`: deferred sync).
    pub callback: Option<Bytes>,
}

/// Reads the arguments of `userQuery`: `((service;query))`,
/// `((service;query;opts))`, with a callback name as a second argument.
pub fn user_query(args: &[RawObject]) -> Result<UserQuery, String> {
    let (x, callback) = match args {
        [x] => (x, None),
        [x, cb] => {
            let name = text_arg(cb)?;
            if name.is_empty() { (x, None) } else { (x, Some(name)) }
        }
        _ => return Err("rank: userQuery takes (service;query) and optionally a callback name".into()),
    };
    let (service, query, opts) = match x.ty() {
        0 => {
            let items = x.list_items().map_err(|e| format!("bad request: {e}"))?;
            match items.len() {
                2 | 3 => {
                    let service = items[0].decode().map_err(|e| format!("bad request: {e}"))?;
                    let opts = match items.get(2) {
                        Some(o) => Some(o.decode().map_err(|e| format!("bad request: {e}"))?),
                        None => None,
                    };
                    (service, items[1].clone(), opts)
                }
                n => return Err(format!("length: userQuery expects (service;query), got {n} items")),
            }
        }
        11 => {
            // PyKX sends a list of Python strings as a symbol vector:
            // `SVC`query → the query as a string, as the whitepaper's are
            match x.decode().map_err(|e| format!("bad request: {e}"))? {
                K::Vector(_, Vector::Symbol(s)) if s.len() == 2 => {
                    let q = s.get(1).unwrap_or_default();
                    (K::sym(s.get(0).unwrap_or_default()), RawObject::encode(&K::string(q)), None)
                }
                _ => return Err("length: userQuery expects (service;query)".into()),
            }
        }
        t => return Err(format!("type: userQuery expects (service;query), got type {t}h")),
    };
    let services: Vec<ServiceName> = match &service {
        K::Atom(Atom::Symbol(s)) => vec![ServiceName::from_bytes(s.clone())],
        K::Vector(_, Vector::Char(c)) => vec![ServiceName::new(c)],
        K::Vector(_, Vector::Symbol(s)) => {
            if s.len() > MAX_SERVICES_PER_QUERY {
                return Err(format!("limit: more than {MAX_SERVICES_PER_QUERY} services"));
            }
            s.iter().map(ServiceName::new).collect()
        }
        k => return Err(format!("type: the service must be a symbol (or symbols), got type {}h", k.ty())),
    };
    if services.is_empty() || services.iter().any(|s| s.as_bytes().is_empty()) {
        return Err("bad request: no service named".into());
    }
    if services.iter().any(|s| s.as_bytes().len() > MAX_NAME_BYTES) {
        return Err(format!("limit: service name longer than {MAX_NAME_BYTES} bytes"));
    }
    let mut uq = UserQuery { services, all_instances: false, query, timeout: None, callback };
    if let Some(opts) = opts {
        apply_options(&mut uq, &opts)?;
    }
    Ok(uq)
}

fn duration_of(k: &K) -> Result<Option<Duration>, String> {
    let ms = |v: f64| {
        if v.is_nan() || v < 0.0 {
            Err("domain: timeout must be a positive number of milliseconds".to_string())
        } else {
            Ok(Some(Duration::from_secs_f64((v / 1000.0).min(1e9))))
        }
    };
    match k {
        K::Atom(Atom::Long(j)) if *j == i64::MIN => Ok(None),
        K::Atom(Atom::Int(i)) if *i == i32::MIN => Ok(None),
        K::Atom(Atom::Long(j)) => ms(*j as f64),
        K::Atom(Atom::Int(i)) => ms(f64::from(*i)),
        K::Atom(Atom::Short(h)) => ms(f64::from(*h)),
        K::Atom(Atom::Float(f)) => ms(*f),
        K::Atom(Atom::Real(f)) => ms(f64::from(*f)),
        K::Atom(Atom::Timespan(n)) if *n == i64::MIN => Ok(None),
        K::Atom(Atom::Timespan(n)) => ms(*n as f64 / 1e6),
        K::Atom(Atom::Time(t)) => ms(f64::from(*t)),
        K::GenericNull => Ok(None),
        k => Err(format!("type: timeout must be milliseconds or a timespan, got type {}h", k.ty())),
    }
}

fn apply_options(uq: &mut UserQuery, opts: &K) -> Result<(), String> {
    match opts {
        K::Dict(d) => {
            let keys = match &d.keys {
                K::Vector(_, Vector::Symbol(s)) => s.clone(),
                _ => return Err("type: options must be a dictionary keyed by symbols".into()),
            };
            let value = |i: usize| -> Option<K> {
                match &d.values {
                    K::List(_, v) => v.get(i).cloned(),
                    K::Vector(_, v) => v.get(i).map(K::Atom),
                    _ => None,
                }
            };
            for (i, key) in keys.iter().enumerate() {
                let v = value(i).ok_or_else(|| "length: options".to_string())?;
                match key {
                    b"timeout" => uq.timeout = duration_of(&v)?,
                    b"all" => {
                        uq.all_instances = match v {
                            K::Atom(Atom::Boolean(b)) => b,
                            k => return Err(format!("type: all must be a boolean, got type {}h", k.ty())),
                        }
                    }
                    other => {
                        return Err(format!(
                            "bad request: unknown option `{}",
                            String::from_utf8_lossy(other)
                        ));
                    }
                }
            }
            Ok(())
        }
        k => {
            uq.timeout = duration_of(k)?;
            Ok(())
        }
    }
}

/// The header dictionary a callback gets first:
/// `` `ok`error`service`query!(ok;"error text";services;query) ``.
pub fn callback_header(ok: bool, error: &str, services: &[ServiceName], query: &RawObject) -> K {
    let services = if services.len() == 1 {
        K::sym(services[0].as_bytes())
    } else {
        K::syms(services.iter().map(ServiceName::as_bytes))
    };
    K::dict(
        K::syms(["ok", "error", "service", "query"]),
        K::list(vec![K::Atom(Atom::Boolean(ok)), K::string(error), services, K::Raw(query.clone())]),
    )
}

/// The async message `` (`cb;hdr;payload) `` that calls `` cb[hdr;payload] ``.
pub fn callback_call(callback: &[u8], hdr: K, payload: K) -> K {
    K::list(vec![K::sym(callback), hdr, payload])
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::EncodeOptions;

    fn msg(k: &K) -> Message {
        let frame = Message::encode(MsgType::Async, k, EncodeOptions::default()).unwrap();
        Message::from_frame(frame, 1 << 30).unwrap()
    }

    #[test]
    fn calls_by_symbol_or_string() {
        let c = call_of(&msg(&K::list(vec![K::sym("returnService"), K::sym("EQ")]))).unwrap();
        assert_eq!(&c.name[..], b"returnService");
        assert_eq!(c.args.len(), 1);
        let c = call_of(&msg(&K::list(vec![K::string("userQuery"), K::long(1)]))).unwrap();
        assert_eq!(&c.name[..], b"userQuery");
        assert!(call_of(&msg(&K::string("userQuery[(`a;\"b\")]"))).is_none());
        assert!(call_of(&msg(&K::list(vec![K::long(1), K::long(2)]))).is_none());
    }

    #[test]
    fn query_service_frame_matches_the_encoder() {
        let q = RawObject::encode(&K::string("select from trade"));
        let by_hand = query_service_frame(Seq(42), &q).unwrap();
        let encoded =
            Message::encode(MsgType::Async, &query_service(Seq(42), &q), EncodeOptions::default()).unwrap();
        assert_eq!(by_hand, encoded);
    }

    #[test]
    fn return_res_forms() {
        let r = service_reply(&msg(&return_res(K::long(7), Ok(K::long(3))))).unwrap();
        assert_eq!(r, ServiceReply::Result(Seq(7), RawObject::encode(&K::long(3))));
        // the int seq a whitepaper LB column would hold
        let k = K::list(vec![K::sym("returnRes"), K::list(vec![K::Atom(Atom::Int(7)), K::GenericNull])]);
        assert_eq!(
            service_reply(&msg(&k)).unwrap(),
            ServiceReply::Result(Seq(7), RawObject::encode(&K::GenericNull))
        );
        // qmesh service error form
        let k = K::list(vec![
            K::sym("returnRes"),
            K::list(vec![K::long(7), K::string("type"), K::Atom(Atom::Boolean(true))]),
        ]);
        assert_eq!(service_reply(&msg(&k)).unwrap(), ServiceReply::Error(Seq(7), "type".into()));
        // an explicit false flag is a result
        let k = K::list(vec![
            K::sym("returnRes"),
            K::list(vec![K::long(7), K::string("type"), K::Atom(Atom::Boolean(false))]),
        ]);
        assert_eq!(
            service_reply(&msg(&k)).unwrap(),
            ServiceReply::Result(Seq(7), RawObject::encode(&K::string("type")))
        );
        // error object as result
        let k = K::list(vec![K::sym("returnRes"), K::list(vec![K::long(7), K::error("length")])]);
        assert_eq!(service_reply(&msg(&k)).unwrap(), ServiceReply::Error(Seq(7), "length".into()));
        // the whitepaper's errProj: nh(sq;`$er)
        let k = K::list(vec![K::Atom(Atom::Int(9)), K::sym("stop")]);
        assert_eq!(service_reply(&msg(&k)).unwrap(), ServiceReply::Error(Seq(9), "stop".into()));
        assert!(service_reply(&msg(&K::list(vec![K::sym("userQuery"), K::long(1)]))).is_err());
    }

    #[test]
    fn resource_tables_round_trip() {
        let rows = vec![
            (ServiceName::new("EQ"), Address::new(":h:1")),
            (ServiceName::new("FX"), Address::new(":h:2")),
        ];
        assert_eq!(resource_rows(&resource_table(&rows)).unwrap(), rows);
        // the whitepaper's enlist `source`address!(name;addr)` is a one-row table;
        // a bare dictionary is accepted too
        let d = K::dict(K::syms(["source", "address"]), K::list(vec![K::sym("EQ"), K::sym(":h:1")]));
        assert_eq!(resource_rows(&d).unwrap(), vec![rows[0].clone()]);
        assert!(resource_rows(&K::long(1)).is_err());
    }

    fn uq(args: Vec<K>) -> Result<UserQuery, String> {
        let raws: Vec<RawObject> = args.iter().map(RawObject::encode).collect();
        user_query(&raws)
    }

    #[test]
    fn user_query_forms() {
        let q = uq(vec![K::list(vec![K::sym("EQ"), K::string("select from t")])]).unwrap();
        assert_eq!(q.services, vec![ServiceName::new("EQ")]);
        assert_eq!(q.query, RawObject::encode(&K::string("select from t")));
        assert_eq!((q.timeout, q.all_instances, q.callback), (None, false, None));

        let q = uq(vec![K::list(vec![K::sym("EQ"), K::string("q")]), K::sym("cb")]).unwrap();
        assert_eq!(q.callback.as_deref(), Some(&b"cb"[..]));

        let q = uq(vec![K::list(vec![K::syms(["EQ", "FX"]), K::string("q"), K::long(250)])]).unwrap();
        assert_eq!(q.services.len(), 2);
        assert_eq!(q.timeout, Some(Duration::from_millis(250)));

        let opts = K::dict(
            K::syms(["timeout", "all"]),
            K::list(vec![K::Atom(Atom::Timespan(2_000_000_000)), K::Atom(Atom::Boolean(true))]),
        );
        let q = uq(vec![K::list(vec![K::sym("EQ"), K::string("q"), opts])]).unwrap();
        assert_eq!(q.timeout, Some(Duration::from_secs(2)));
        assert!(q.all_instances);

        // PyKX: a list of two Python strings arrives as a symbol vector
        let q = uq(vec![K::syms(["EQ", "til 10"])]).unwrap();
        assert_eq!(q.query, RawObject::encode(&K::string("til 10")));

        assert!(uq(vec![K::long(1)]).unwrap_err().starts_with("type"));
        assert!(uq(vec![K::list(vec![K::long(1), K::string("q")])]).unwrap_err().starts_with("type"));
        assert!(uq(vec![K::list(vec![K::sym(""), K::string("q")])]).is_err());
        assert!(uq(vec![]).unwrap_err().starts_with("rank"));
        let bad = K::dict(K::syms(["bogus"]), K::list(vec![K::long(1)]));
        assert!(uq(vec![K::list(vec![K::sym("EQ"), K::string("q"), bad])]).is_err());
    }

    #[test]
    fn request_service_carries_target_and_timeout() {
        let k = request_service(Seq(3), &ServiceName::new("EQ"), None, Duration::from_millis(1500));
        let c = call_of(&msg(&k)).unwrap();
        assert_eq!(&c.name[..], REQUEST_SERVICE);
        assert_eq!(seq_arg(&c.args[0]).unwrap(), Seq(3));
        assert_eq!(&text_arg(&c.args[1]).unwrap()[..], b"EQ");
        assert_eq!(&text_arg(&c.args[2]).unwrap()[..], b"");
        assert_eq!(c.args[3].decode().unwrap(), K::long(1500));
    }

    #[test]
    fn service_side_messages_follow_service_q() {
        assert_eq!(
            register_resource(&ServiceName::new("EQUITY_MARKET_RDB"), &Address::new(":127.0.0.1:5002")),
            K::list(vec![K::sym("registerResource"), K::sym("EQUITY_MARKET_RDB"), K::sym(":127.0.0.1:5002")])
        );
        assert_eq!(
            return_service_name(&ServiceName::new("EQUITY_MARKET_RDB")),
            K::list(vec![K::sym("returnService"), K::sym("EQUITY_MARKET_RDB")])
        );
        assert_eq!(
            return_res(K::long(3), Ok(K::long(1))),
            K::list(vec![K::sym("returnRes"), K::list(vec![K::long(3), K::long(1)])])
        );
        assert_eq!(
            return_res(K::long(3), Err("timeout".into())),
            K::list(vec![
                K::sym("returnRes"),
                K::list(vec![K::long(3), K::string("timeout"), K::Atom(Atom::Boolean(true))])
            ])
        );
        // both ends agree: what a service sends, a gateway reads
        let frame = Message::encode(
            MsgType::Async,
            &return_res(K::long(3), Err("timeout".into())),
            EncodeOptions::default(),
        )
        .unwrap();
        let msg = Message::from_frame(frame, 1 << 20).unwrap();
        assert_eq!(service_reply(&msg), Ok(ServiceReply::Error(Seq(3), "timeout".into())));
    }

    #[test]
    fn query_service_as_the_service_reads_it() {
        let arg = K::list(vec![K::long(7), K::string("select 1")]);
        assert_eq!(query_service_arg(arg), Ok((K::long(7), K::string("select 1"))));
        assert!(query_service_arg(K::long(1)).unwrap_err().starts_with("type:"));
        assert!(query_service_arg(K::list(vec![K::long(1)])).unwrap_err().starts_with("length:"));
    }
}
