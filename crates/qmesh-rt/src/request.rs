//! The requests a q process sends the node, parsed from the message body
//! with the payload kept as the publisher's bytes (never decoded).
//!
//! | q | [`Request`] |
//! |---|---|
//! | `` h(`.rt.pub;`s;msg) `` / `` neg[h](…) `` | [`Request::Pub`] |
//! | `` h(`.rt.pub;`s;msg;`id`dedup!(5;`trade)) `` | [`Request::Pub`] with a [`PubHeader`] |
//! | `` neg[h](`.u.upd;`trade;data) `` | [`Request::Upd`], payload `` (`upd;`trade;data) `` |
//! | `` h(`.rt.sub;`s;pos;opts) `` | [`Request::Sub`] |
//! | `` h(`.rt.pause;`s) `` / `.rt.resume` / `.rt.unsub` | [`Request::Pause`] … (`::` for every stream of the connection) |
//! | `` h(`.rt.get_latest_position;`s) `` | [`Request::LatestPosition`] |
//! | `` h(`.rt.prune;`s;pos) `` | [`Request::Prune`] |

use bytes::{BufMut, Bytes, BytesMut};
use qmesh_codec::{Atom, K, Message, RawObject, Vector, nulls, types};

use crate::filter::Filter;
use crate::header::{HeaderError, PubHeader, item};
use crate::limits::{MAX_CALLBACK_NAME_BYTES, MAX_FILTER_SYMBOLS, MAX_PAYLOAD_BYTES, MAX_STREAM_NAME_BYTES};
use crate::push::{DEFAULT_EVENT_CALLBACK, DEFAULT_MSG_CALLBACK};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// `::` — the oldest message not archived.
    Start,
    /// `` `latest `` — only messages published from now on.
    Latest,
    /// A position the node handed out earlier.
    Position(i64),
}

/// `.rt.sub`'s options dictionary: `` `msg`event`filter ``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOptions {
    /// The function called with each message (default `.rt.msg`).
    pub msg: String,
    /// The function called with each event (default `.rt.event`).
    pub event: String,
    /// Only messages led by one of these symbols ([`crate::filter`]).
    pub filter: Option<Filter>,
}

impl Default for SubOptions {
    fn default() -> SubOptions {
        SubOptions { msg: DEFAULT_MSG_CALLBACK.into(), event: DEFAULT_EVENT_CALLBACK.into(), filter: None }
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Append `payload` (one kdb+ object, little-endian, as serialized by
    /// the publisher) to `stream`.
    Pub { stream: String, payload: Bytes, header: PubHeader },
    /// kdb+tick's `.u.upd`: append `payload` = `` (`upd;`table;data) `` to
    /// the default stream.
    Upd { table: String, payload: Bytes },
    /// Subscribe this connection to `stream`.
    Sub { stream: String, from: From, opts: SubOptions },
    /// Pause delivery (`None`: every stream of the connection).
    Pause(Option<String>),
    /// Resume delivery.
    Resume(Option<String>),
    /// End the subscription.
    Unsub(Option<String>),
    /// `.rt.get_latest_position`: the position after the last durable message.
    LatestPosition(String),
    /// `.rt.prune`: remove rolled segments whose messages are all before `pos`.
    Prune { stream: String, pos: i64 },
}

/// Why a request was refused: `message too large` ([`RequestError::is_too_large`]) or `bad request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("payload of {0} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    TooLarge(u64),
    #[error("header: {0}")]
    Header(#[from] HeaderError),
}

impl RequestError {
    /// Whether this is `'message too large` rather than `'bad request`.
    pub fn is_too_large(&self) -> bool {
        matches!(self, RequestError::TooLarge(_))
    }
}

fn bad(s: impl Into<String>) -> RequestError {
    RequestError::BadRequest(s.into())
}

const USAGE: &str = "send (`.rt.pub;`stream;msg[;header]), (`.u.upd;`table;data), (`.rt.sub;`stream;pos;opts), \
(`.rt.pause|.rt.resume|.rt.unsub|.rt.get_latest_position;`stream) or (`.rt.prune;`stream;pos)";

/// The symbol atom at the start of `raw`, without decoding the rest.
fn raw_sym(raw: &RawObject) -> Option<&[u8]> {
    let b = raw.bytes();
    if b.first().map(|&t| t as i8) != Some(-types::SYMBOL) {
        return None;
    }
    let n = b[1..].iter().position(|&c| c == 0)?;
    Some(&b[1..1 + n])
}

/// The chars of a string (char vector) object, without decoding.
fn raw_string(raw: &RawObject) -> Option<&[u8]> {
    (raw.ty() == i16::from(types::CHAR)).then(|| raw.bytes().get(6..)).flatten()
}

fn small(raw: &RawObject) -> Result<K, RequestError> {
    raw.decode().map_err(|e| bad(format!("cannot decode an argument: {e}")))
}

fn stream_name(raw: &RawObject) -> Result<String, RequestError> {
    // a string names a stream as well as a symbol (rt.qpk takes strings)
    let s = raw_sym(raw).or_else(|| raw_string(raw)).ok_or_else(|| bad("the stream is a symbol"))?;
    if s.is_empty() || s.len() > MAX_STREAM_NAME_BYTES {
        return Err(bad(format!("a stream name is 1 to {MAX_STREAM_NAME_BYTES} bytes")));
    }
    Ok(String::from_utf8_lossy(s).into_owned())
}

fn opt_stream(raw: &RawObject) -> Result<Option<String>, RequestError> {
    if raw.ty() == i16::from(types::UNARY_PRIMITIVE) {
        return Ok(None);
    }
    stream_name(raw).map(Some)
}

/// The object's bytes, little-endian (a big-endian publisher's object is
/// rewritten; a little-endian one is shared, not copied).
fn le_bytes(raw: &RawObject) -> Bytes {
    if raw.is_little_endian() {
        raw.bytes().clone()
    } else {
        RawObject::encode(&K::Raw(raw.clone())).bytes().clone()
    }
}

/// Largest symbol-vector request read as a call, in bytes: calls whose
/// arguments are all symbols are a handful of names.
const MAX_SYMBOL_CALL_BYTES: usize = 64 * 1024;

/// The items of a request q sends as a symbol vector: `` h(`.rt.pause;`trades) ``
/// is a list of symbols only, which q encodes as one symbol vector (type 11),
/// not a general list. Each symbol becomes a symbol atom, as if sent in a
/// general list; `None` when the body is not a (small) symbol vector.
fn symbol_vector_items(msg: &Message) -> Option<Vec<RawObject>> {
    let body = msg.body();
    if body.first().copied() != Some(types::SYMBOL as u8) || body.len() > MAX_SYMBOL_CALL_BYTES {
        return None;
    }
    match msg.decode().ok()? {
        K::Vector(_, Vector::Symbol(syms)) => {
            Some(syms.iter().map(|s| RawObject::encode(&K::sym(s))).collect())
        }
        _ => None,
    }
}

/// Checks a payload's size against [`MAX_PAYLOAD_BYTES`].
pub fn check_payload_len(len: u64) -> Result<(), RequestError> {
    if len > MAX_PAYLOAD_BYTES { Err(RequestError::TooLarge(len)) } else { Ok(()) }
}

impl Request {
    /// Parses a request from a message (sync or async).
    pub fn parse(msg: &Message) -> Result<Request, RequestError> {
        let items = match msg.list_items() {
            Ok(items) => items,
            Err(_) => symbol_vector_items(msg).ok_or_else(|| bad(USAGE))?,
        };
        // q sends the function as a symbol; PyKX's `q('.rt.pub', …)` as a string
        let Some(f) = items.first().and_then(|i| raw_sym(i).or_else(|| raw_string(i))) else {
            return Err(bad(USAGE));
        };
        let args = &items[1..];
        let arity = |n: std::ops::RangeInclusive<usize>| {
            if n.contains(&args.len()) {
                Ok(())
            } else {
                let takes = if n.start() == n.end() {
                    format!("{} argument(s)", n.start())
                } else {
                    format!("{} to {} arguments", n.start(), n.end())
                };
                Err(bad(format!("{}: takes {takes}, got {}", String::from_utf8_lossy(f), args.len())))
            }
        };
        match f {
            b".rt.pub" => {
                arity(2..=3)?;
                let stream = stream_name(&args[0])?;
                check_payload_len(args[1].bytes().len() as u64)?;
                let header = match args.get(2) {
                    Some(h) => PubHeader::parse(&small(h)?)?,
                    None => PubHeader::default(),
                };
                Ok(Request::Pub { stream, payload: le_bytes(&args[1]), header })
            }
            b".u.upd" => {
                arity(2..=2)?;
                let table = raw_sym(&args[0]).ok_or_else(|| bad(".u.upd: the table is a symbol"))?;
                let table_bytes = le_bytes(&args[0]);
                let data = le_bytes(&args[1]);
                let len = 6 + 5 + table_bytes.len() + data.len();
                check_payload_len(len as u64)?;
                let mut b = BytesMut::with_capacity(len);
                b.put_i8(types::LIST);
                b.put_u8(0);
                b.put_i32_le(3);
                b.put_i8(-types::SYMBOL);
                b.put_slice(b"upd\0");
                b.put_slice(&table_bytes);
                b.put_slice(&data);
                Ok(Request::Upd { table: String::from_utf8_lossy(table).into_owned(), payload: b.freeze() })
            }
            b".rt.sub" => {
                arity(2..=3)?;
                let stream = stream_name(&args[0])?;
                let from = parse_from(&small(&args[1])?)?;
                let opts = match args.get(2) {
                    Some(o) => parse_opts(&small(o)?)?,
                    None => SubOptions::default(),
                };
                Ok(Request::Sub { stream, from, opts })
            }
            b".rt.pause" | b".rt.resume" | b".rt.unsub" => {
                arity(0..=1)?;
                let s = match args.first() {
                    Some(a) => opt_stream(a)?,
                    None => None,
                };
                Ok(match f {
                    b".rt.pause" => Request::Pause(s),
                    b".rt.resume" => Request::Resume(s),
                    _ => Request::Unsub(s),
                })
            }
            b".rt.get_latest_position" => {
                arity(1..=1)?;
                Ok(Request::LatestPosition(stream_name(&args[0])?))
            }
            b".rt.prune" => {
                arity(2..=2)?;
                let stream = stream_name(&args[0])?;
                match small(&args[1])? {
                    K::Atom(Atom::Long(p)) if p >= 0 => Ok(Request::Prune { stream, pos: p }),
                    _ => Err(bad(".rt.prune: the position is a non-negative long")),
                }
            }
            other => Err(bad(format!("unknown function {}; {USAGE}", String::from_utf8_lossy(other)))),
        }
    }
}

fn parse_from(k: &K) -> Result<From, RequestError> {
    match k {
        K::GenericNull => Ok(From::Start),
        K::Atom(Atom::Symbol(s)) if s.as_ref() == b"latest" => Ok(From::Latest),
        K::Atom(Atom::Symbol(s)) if s.is_empty() => Ok(From::Start),
        K::Atom(Atom::Long(p)) if *p >= 0 => Ok(From::Position(*p)),
        K::Atom(Atom::Int(p)) if *p >= 0 => Ok(From::Position(i64::from(*p))),
        K::Atom(Atom::Long(p)) if *p == nulls::LONG_NULL => Ok(From::Start),
        _ => Err(bad(".rt.sub: pos is ::, `latest or a position (a non-negative long)")),
    }
}

fn callback_name(field: &str, v: &K) -> Result<String, RequestError> {
    match v.as_text() {
        Some(t) if !t.is_empty() && t.len() <= MAX_CALLBACK_NAME_BYTES => {
            Ok(String::from_utf8_lossy(t).into_owned())
        }
        _ => Err(bad(format!(".rt.sub: option `{field}` names a function (a symbol)"))),
    }
}

fn parse_opts(k: &K) -> Result<SubOptions, RequestError> {
    let mut o = SubOptions::default();
    let d = match k {
        K::GenericNull => return Ok(o),
        K::Dict(d) => d,
        _ => return Err(bad(".rt.sub: opts is a dictionary (`msg`event`filter)")),
    };
    let keys: Vec<Vec<u8>> = match &d.keys {
        K::Vector(_, Vector::Symbol(s)) => s.iter().map(<[u8]>::to_vec).collect(),
        K::List(_, l) if l.is_empty() => Vec::new(),
        _ => return Err(bad(".rt.sub: opts has symbol keys")),
    };
    for (i, key) in keys.iter().enumerate() {
        let v = item(&d.values, i).ok_or_else(|| bad(".rt.sub: opts values"))?;
        match key.as_slice() {
            b"msg" => o.msg = callback_name("msg", &v)?,
            b"event" => o.event = callback_name("event", &v)?,
            b"filter" => {
                let syms: Vec<Vec<u8>> = match &v {
                    K::Vector(_, Vector::Symbol(s)) => s.iter().map(<[u8]>::to_vec).collect(),
                    K::Atom(Atom::Symbol(s)) => vec![s.to_vec()],
                    K::List(_, l) if l.is_empty() => Vec::new(),
                    _ => return Err(bad(".rt.sub: option `filter` is a symbol list")),
                };
                if syms.len() > MAX_FILTER_SYMBOLS {
                    return Err(bad(format!(".rt.sub: a filter holds at most {MAX_FILTER_SYMBOLS} symbols")));
                }
                o.filter = Some(Filter::new(syms));
            }
            other => {
                return Err(bad(format!(
                    ".rt.sub: unknown option `{}` (options: msg event filter)",
                    String::from_utf8_lossy(other)
                )));
            }
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::{Attr, MsgType};

    fn msg(k: K) -> Message {
        let frame =
            Message::encode(MsgType::Sync, &k, qmesh_codec::EncodeOptions::default()).expect("encode");
        Message::from_frame(frame, u64::MAX).expect("frame")
    }

    /// q sends `` h(`.rt.pause;`trades) `` (every item a symbol) as one
    /// symbol vector: it parses as the general-list form does.
    #[test]
    fn calls_sent_as_a_symbol_vector() {
        let p = |names: &[&str]| Request::parse(&msg(K::syms(names.iter().copied())));
        assert_eq!(p(&[".rt.pause", "trades"]).expect("pause"), Request::Pause(Some("trades".into())));
        assert_eq!(p(&[".rt.unsub", "trades"]).expect("unsub"), Request::Unsub(Some("trades".into())));
        assert_eq!(
            p(&[".rt.get_latest_position", "s"]).expect("latest"),
            Request::LatestPosition("s".into())
        );
        let Request::Pub { stream, payload, .. } = p(&[".rt.pub", "s", "abc"]).expect("pub") else {
            panic!("not pub")
        };
        assert_eq!((stream.as_str(), payload), ("s", RawObject::encode(&K::sym("abc")).bytes().clone()));
        assert!(p(&["nothing"]).is_err());
        // another vector type is still not a call
        assert!(Request::parse(&msg(K::Vector(Attr::None, Vector::Long(vec![1, 2])))).is_err());
    }

    #[test]
    fn pub_keeps_the_payload_bytes() {
        let payload = K::list(vec![K::sym("upd"), K::sym("trade"), K::long(1)]);
        let r = Request::parse(&msg(K::list(vec![K::sym(".rt.pub"), K::sym("s"), payload.clone()])))
            .expect("parse");
        let Request::Pub { stream, payload: p, header } = r else { panic!("not pub") };
        assert_eq!(stream, "s");
        assert_eq!(p, RawObject::encode(&payload).bytes().clone());
        assert_eq!(header, PubHeader::default());
    }

    #[test]
    fn pub_with_header() {
        let h = K::dict(K::syms(["id", "dedup"]), K::list(vec![K::long(3), K::sym("t")]));
        let r = Request::parse(&msg(K::list(vec![K::sym(".rt.pub"), K::sym("s"), K::long(1), h])))
            .expect("parse");
        let Request::Pub { header, .. } = r else { panic!("not pub") };
        assert_eq!(header.id, Some(3));
        assert_eq!(header.dedup.as_deref(), Some("t"));
    }

    #[test]
    fn upd_becomes_the_tick_message() {
        let data = K::list(vec![K::syms(["a"]), K::Vector(Attr::None, Vector::Float(vec![1.5]))]);
        let r = Request::parse(&msg(K::list(vec![K::sym(".u.upd"), K::sym("trade"), data.clone()])))
            .expect("parse");
        let Request::Upd { table, payload } = r else { panic!("not upd") };
        assert_eq!(table, "trade");
        assert_eq!(
            RawObject::new(payload, true).decode().expect("decode"),
            K::list(vec![K::sym("upd"), K::sym("trade"), data])
        );
    }

    #[test]
    fn sub_positions_and_options() {
        let opts = K::dict(
            K::syms(["msg", "event", "filter"]),
            K::list(vec![K::sym("onMsg"), K::sym("onEv"), K::syms(["trade"])]),
        );
        let r = Request::parse(&msg(K::list(vec![K::sym(".rt.sub"), K::sym("s"), K::sym("latest"), opts])))
            .expect("parse");
        let Request::Sub { from, opts, .. } = r else { panic!("not sub") };
        assert_eq!(from, From::Latest);
        assert_eq!(opts.msg, "onMsg");
        assert_eq!(opts.event, "onEv");
        assert_eq!(opts.filter, Some(Filter::new(["trade"])));
        let r = Request::parse(&msg(K::list(vec![K::sym(".rt.sub"), K::sym("s"), K::GenericNull])))
            .expect("parse");
        assert!(matches!(r, Request::Sub { from: From::Start, .. }));
        let empty = K::dict(K::list(vec![]), K::list(vec![]));
        let r = Request::parse(&msg(K::list(vec![K::sym(".rt.sub"), K::sym("s"), K::long(99), empty])))
            .expect("parse");
        assert!(matches!(r, Request::Sub { from: From::Position(99), .. }));
    }

    #[test]
    fn control_requests() {
        let p = |k: Vec<K>| Request::parse(&msg(K::list(k))).expect("parse");
        assert_eq!(p(vec![K::sym(".rt.pause"), K::sym("s")]), Request::Pause(Some("s".into())));
        assert_eq!(p(vec![K::sym(".rt.resume"), K::sym("s")]), Request::Resume(Some("s".into())));
        assert_eq!(p(vec![K::sym(".rt.unsub"), K::GenericNull]), Request::Unsub(None));
        assert_eq!(
            p(vec![K::sym(".rt.get_latest_position"), K::sym("s")]),
            Request::LatestPosition("s".into())
        );
        assert_eq!(
            p(vec![K::sym(".rt.prune"), K::sym("s"), K::long(5)]),
            Request::Prune { stream: "s".into(), pos: 5 }
        );
        assert_eq!(p(vec![K::sym(".rt.pause"), K::string("s")]), Request::Pause(Some("s".into())));
        // PyKX sends the function name as a string
        assert_eq!(p(vec![K::string(".rt.resume"), K::sym("s")]), Request::Resume(Some("s".into())));
    }

    #[test]
    fn refusals() {
        let e = |k: K| Request::parse(&msg(k)).expect_err("refused");
        assert!(matches!(e(K::string("1+1")), RequestError::BadRequest(_)));
        assert!(matches!(e(K::list(vec![K::sym(".rt.nope"), K::sym("s")])), RequestError::BadRequest(_)));
        assert!(matches!(e(K::list(vec![K::sym(".rt.pub"), K::sym("s")])), RequestError::BadRequest(_)));
        assert!(matches!(
            e(K::list(vec![K::sym(".rt.pub"), K::long(1), K::long(1)])),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            e(K::list(vec![K::sym(".rt.sub"), K::sym("s"), K::sym("oldest")])),
            RequestError::BadRequest(_)
        ));
    }

    #[test]
    fn payload_limit_is_exact() {
        assert!(check_payload_len(MAX_PAYLOAD_BYTES).is_ok());
        assert!(check_payload_len(MAX_PAYLOAD_BYTES + 1).expect_err("too large").is_too_large());
    }
}
