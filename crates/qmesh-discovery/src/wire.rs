//! The registry's kdb+ IPC vocabulary: reading heartbeats and calls from q
//! values, and writing `.master.discovery` back as a keyed table.
//!
//! # Calls (every one with its q form)
//!
//! ```q
//! / the blog's heartbeat, async, exactly as its .client.publish sends it:
//! neg[h](`.master.storeHb;`process`ip`address`pid`qVersion`counter`lastHb!(`rdb1;`127.0.0.1;`:host1:5001;.z.i;`4v2021.07.12;0;.z.t))
//! / the same with our optional keys (any subset):
//! neg[h](`.master.storeHb;`process`kind`status`note`attrs`http`counter!(`rdb1;`rdb;`warn;"disk 91%";`region`tier!(`ldn;"t1");8080;1))
//! / sync: the registry's view of the caller (or an error naming what is wrong)
//! h(`.master.storeHb;`process`counter!(`rdb1;2))   / `process`state`time`warnAfter`errorAfter!(`rdb1;`active;2026.11.29D17:00:00.000;0D00:00:30;0D00:01:30)
//! / the table, the blog's columns first:
//! h".master.discovery"          / also h`.master.discovery
//! / a lookup: any of process (name), kind, state, host (symbol or symbol list), attrs (dictionary)
//! h(`.master.lookup;`kind`state!(`rdb;`active`warning))
//! h(`.master.lookup;enlist[`attrs]!enlist enlist[`region]!enlist`ldn)
//! ```
//!
//! Nothing else is run: any other sync message gets `'bad request: …`
//! naming the calls above; any other async message is logged and counted.

use std::collections::BTreeMap;

use qmesh_codec::{Atom, Attr, K, Symbols, Table, Vector};

use crate::registry::{Filter, Heartbeat, Millis, Process, State, Status};

/// The heartbeat function's name, as the blog's clients call it.
pub const STORE_HB: &str = ".master.storeHb";
/// The table's name.
pub const DISCOVERY: &str = ".master.discovery";
/// The lookup function's name.
pub const LOOKUP: &str = ".master.lookup";

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// Milliseconds between 1970.01.01 and kdb+'s epoch 2000.01.01.
const KDB_EPOCH_MS: i64 = 946_684_800_000;

/// A call the registry understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    StoreHb(Heartbeat),
    Discovery,
    Lookup(Filter),
}

/// A call that could not be read: the text of the q error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCall(pub String);

fn bad(s: impl Into<String>) -> BadCall {
    BadCall(s.into())
}

fn text(k: &K) -> Option<String> {
    match k {
        K::Atom(Atom::Symbol(s)) => Some(String::from_utf8_lossy(s).into_owned()),
        K::Vector(_, Vector::Char(c)) => Some(String::from_utf8_lossy(c).into_owned()),
        K::Atom(Atom::Char(c)) => Some((*c as char).to_string()),
        _ => None,
    }
}

/// `.z.a` sent as is (an int, the IPv4 address in host order, as q shows
/// it with `` `$"."sv string"i"$0x0 vs .z.a ``): the dotted form.
fn ip_of_int(k: &K) -> Option<String> {
    match k {
        K::Atom(Atom::Int(i)) => Some(std::net::Ipv4Addr::from(*i as u32).to_string()),
        _ => None,
    }
}

/// `.z.K` sent as is (a float, e.g. `4.1`): its text.
fn version_of_float(k: &K) -> Option<String> {
    match k {
        K::Atom(Atom::Float(f)) if f.is_finite() => Some(format!("{f}")),
        _ => None,
    }
}

/// A heartbeat's `address` as the registry shows and stores it: q's
/// `` `:host:port `` (also `` `:tcps://host:port `` and `` `:unix://port ``),
/// with any `:user:password` a client put in it (q's `hopen` form) left
/// out — the registry publishes addresses on its API and dashboard. Empty
/// stays empty; `None` when it is not an address (e.g. a port above 65535).
pub fn public_address(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some(String::new());
    }
    let with_colon = if text.starts_with(':') { text.to_string() } else { format!(":{text}") };
    let bare = &with_colon[1..];
    if !bare.is_empty() && !bare.contains([':', '/']) && !bare.bytes().all(|b| b.is_ascii_digit()) {
        // a host and no port: a process that listens on none (a feed)
        return Some(with_colon);
    }
    let a = qmesh_ipc::Address::parse_listen(&with_colon).ok()?;
    Some(match a.endpoint {
        qmesh_ipc::Endpoint::Tcp { host, port } => {
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            if a.tls { format!(":tcps://{host}:{port}") } else { format!(":{host}:{port}") }
        }
        qmesh_ipc::Endpoint::Unix { port } => format!(":unix://{port}"),
    })
}

fn int(k: &K) -> Option<Option<i64>> {
    let a = match k {
        K::Atom(a) => a,
        _ => return None,
    };
    if a.is_null() {
        return match a {
            Atom::Short(_) | Atom::Int(_) | Atom::Long(_) => Some(None),
            _ => None,
        };
    }
    match *a {
        Atom::Byte(v) => Some(Some(v.into())),
        Atom::Short(v) => Some(Some(v.into())),
        Atom::Int(v) => Some(Some(v.into())),
        Atom::Long(v) => Some(Some(v)),
        _ => None,
    }
}

/// A time of day in milliseconds from q's `time`, `second`, `minute`,
/// `timespan` or `timestamp` (its time of day).
fn time_of_day(k: &K) -> Option<Option<i32>> {
    let K::Atom(a) = k else { return None };
    if a.is_null() {
        return Some(None);
    }
    let ms: i64 = match *a {
        Atom::Time(t) => t.into(),
        Atom::Second(s) => i64::from(s) * 1000,
        Atom::Minute(m) => i64::from(m) * 60_000,
        Atom::Timespan(n) => n / 1_000_000,
        Atom::Timestamp(p) => (p / 1_000_000).rem_euclid(DAY_MS),
        _ => return None,
    };
    Some(Some(ms.rem_euclid(DAY_MS) as i32))
}

/// The values of a dictionary as one K per key.
fn dict_items(k: &K) -> Option<Vec<(String, K)>> {
    let K::Dict(d) = k else { return None };
    let K::Vector(_, Vector::Symbol(keys)) = &d.keys else { return None };
    let n = keys.len();
    let values: Vec<K> = match &d.values {
        K::List(_, items) if items.len() == n => items.clone(),
        K::Vector(_, v) if v.len() == n => (0..n).filter_map(|i| v.get(i).map(K::Atom)).collect(),
        _ => return None,
    };
    if values.len() != n {
        return None;
    }
    Some(keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).zip(values).collect())
}

/// Names from a symbol, a string, a symbol list or a list of strings.
fn names(k: &K) -> Option<Vec<String>> {
    if let Some(t) = text(k) {
        return Some(vec![t]);
    }
    match k {
        K::Vector(_, Vector::Symbol(s)) => {
            Some(s.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect())
        }
        K::List(_, items) => items.iter().map(text).collect(),
        _ => None,
    }
}

/// Reads a heartbeat dictionary (`.master.storeHb`'s argument).
pub fn heartbeat(payload: &K) -> Result<Heartbeat, BadCall> {
    let items = dict_items(payload)
        .ok_or_else(|| bad("bad request: .master.storeHb takes a dictionary with symbol keys"))?;
    let mut hb = Heartbeat::default();
    let mut named = false;
    for (key, v) in items {
        let want = |what: &str| bad(format!("bad request: {key} must be {what}"));
        match key.as_str() {
            "process" => {
                hb.name = text(&v).ok_or_else(|| want("a symbol"))?;
                named = true;
            }
            "ip" => hb.ip = text(&v).or_else(|| ip_of_int(&v)).ok_or_else(|| want("a symbol"))?,
            "address" => {
                let a = text(&v).ok_or_else(|| want("a symbol `:host:port"))?;
                hb.address =
                    public_address(&a).ok_or_else(|| want("a symbol `:host:port (port 0 to 65535)"))?;
            }
            "pid" => hb.pid = int(&v).ok_or_else(|| want("an int"))?,
            "qVersion" => {
                hb.q_version = text(&v).or_else(|| version_of_float(&v)).ok_or_else(|| want("a symbol"))?
            }
            "counter" => hb.counter = int(&v).ok_or_else(|| want("an integer"))?.unwrap_or(0),
            "lastHb" => hb.client_time = time_of_day(&v).ok_or_else(|| want("a time"))?,
            "kind" => hb.kind = Some(text(&v).ok_or_else(|| want("a symbol"))?).filter(|k| !k.is_empty()),
            "status" => {
                let w = text(&v).ok_or_else(|| want("`ok, `warn or `fail"))?;
                hb.status = Status::from_word(&w).ok_or_else(|| want("`ok, `warn or `fail"))?;
            }
            "note" => hb.note = text(&v).ok_or_else(|| want("a string"))?,
            "http" => {
                let p = int(&v).ok_or_else(|| want("a port number"))?;
                hb.http = match p {
                    None | Some(0) => None,
                    Some(p) => Some(u16::try_from(p).map_err(|_| want("a port number"))?),
                };
            }
            "attrs" => hb.attrs = attrs(&v).ok_or_else(|| want("a dictionary of symbols or strings"))?,
            // Unknown keys are ignored: a newer client may send more.
            _ => {}
        }
    }
    if !named {
        return Err(bad("bad request: the heartbeat has no `process key"));
    }
    Ok(hb)
}

fn attrs(k: &K) -> Option<BTreeMap<String, String>> {
    // `()` or `(::)`: none.
    match k {
        K::List(_, items) if items.is_empty() => return Some(BTreeMap::new()),
        K::GenericNull => return Some(BTreeMap::new()),
        _ => {}
    }
    let items = dict_items(k)?;
    let mut out = BTreeMap::new();
    for (key, v) in items {
        let value = match &v {
            K::Atom(a @ (Atom::Short(_) | Atom::Int(_) | Atom::Long(_))) if !a.is_null() => {
                int(&v)??.to_string()
            }
            _ => text(&v)?,
        };
        out.insert(key, value);
    }
    Some(out)
}

/// Reads a lookup filter dictionary (`.master.lookup`'s argument); `::` or
/// an empty dictionary matches everything.
pub fn filter(arg: &K) -> Result<Filter, BadCall> {
    let mut f = Filter::default();
    if matches!(arg, K::GenericNull) || matches!(arg, K::List(_, v) if v.is_empty()) {
        return Ok(f);
    }
    let items = dict_items(arg).ok_or_else(|| {
        bad("bad request: .master.lookup takes a dictionary of process, kind, state, host, attrs")
    })?;
    for (key, v) in items {
        let want = |what: &str| bad(format!("bad request: {key} must be {what}"));
        match key.as_str() {
            "process" | "name" => f.names = names(&v).ok_or_else(|| want("a symbol or symbol list"))?,
            "kind" => f.kinds = names(&v).ok_or_else(|| want("a symbol or symbol list"))?,
            "host" => f.hosts = names(&v).ok_or_else(|| want("a symbol or symbol list"))?,
            "state" => {
                f.states = names(&v)
                    .ok_or_else(|| want("a symbol or symbol list"))?
                    .iter()
                    .map(|s| State::from_word(s).ok_or_else(|| bad(format!("bad request: no state {s}"))))
                    .collect::<Result<_, _>>()?
            }
            "attrs" => {
                f.attrs =
                    attrs(&v).ok_or_else(|| want("a dictionary of symbols or strings"))?.into_iter().collect()
            }
            other => return Err(bad(format!("bad request: {LOOKUP} has no filter {other}"))),
        }
    }
    Ok(f)
}

/// What a sync or async message asks for.
pub fn call(k: &K) -> Result<Call, BadCall> {
    if let Some(t) = text(k) {
        let t = t.trim();
        if t == DISCOVERY {
            return Ok(Call::Discovery);
        }
        return Err(unknown());
    }
    let K::List(_, items) = k else { return Err(unknown()) };
    let (Some(head), Some(arg), 2) = (items.first(), items.get(1), items.len()) else {
        return Err(unknown());
    };
    match text(head).as_deref() {
        Some(STORE_HB) => heartbeat(arg).map(Call::StoreHb),
        Some(LOOKUP) => filter(arg).map(Call::Lookup),
        Some(DISCOVERY) => Ok(Call::Discovery),
        _ => Err(unknown()),
    }
}

fn unknown() -> BadCall {
    bad(format!(
        "bad request: the registry runs no q; it answers ({STORE_HB};dict), \"{DISCOVERY}\", ({LOOKUP};dict)"
    ))
}

/// A Unix-epoch millisecond count as a kdb+ timestamp.
pub fn timestamp(ms: Millis) -> K {
    K::Atom(Atom::Timestamp((ms - KDB_EPOCH_MS).saturating_mul(1_000_000)))
}

/// A millisecond duration as a kdb+ timespan.
pub fn timespan(ms: Millis) -> K {
    K::Atom(Atom::Timespan(ms.saturating_mul(1_000_000)))
}

/// The sync `storeHb` answer: the registry's view of the caller.
pub fn view(p: &Process, now: Millis, warn_after: Millis, error_after: Millis) -> K {
    K::dict(
        K::syms(["process", "state", "time", "warnAfter", "errorAfter"]),
        K::list(vec![
            K::sym(&*p.name),
            K::sym(p.state.word()),
            timestamp(now),
            timespan(warn_after),
            timespan(error_after),
        ]),
    )
}

fn sym_col<'a>(vals: impl Iterator<Item = &'a str>) -> K {
    K::Vector(Attr::None, Vector::Symbol(vals.collect::<Symbols>()))
}

/// `.master.discovery` for `rows`: keyed by `process`, the blog's columns
/// (`handle ip address pid counter lastHb active warning error`) then ours
/// (`kind state age status note qVersion host port http since lastSeen
/// stale attrs`).
pub fn discovery_table(rows: &[std::sync::Arc<Process>], now: Millis) -> K {
    let v = |vec: Vector| K::Vector(Attr::None, vec);
    let key = Table {
        attr: Attr::None,
        names: ["process"].into_iter().collect(),
        columns: vec![sym_col(rows.iter().map(|p| &*p.name))],
    };
    let int_or_null = |x: Option<i64>| x.and_then(|x| i32::try_from(x).ok()).unwrap_or(i32::MIN);
    let columns = vec![
        v(Vector::Int(rows.iter().map(|p| int_or_null(p.conn.map(|c| c as i64))).collect())),
        sym_col(rows.iter().map(|p| p.ip.as_str())),
        sym_col(rows.iter().map(|p| p.address.as_str())),
        v(Vector::Int(rows.iter().map(|p| int_or_null(p.pid)).collect())),
        v(Vector::Long(rows.iter().map(|p| p.counter).collect())),
        v(Vector::Time(rows.iter().map(|p| p.client_time.unwrap_or(i32::MIN)).collect())),
        v(Vector::Boolean(rows.iter().map(|p| p.is_active()).collect())),
        v(Vector::Boolean(rows.iter().map(|p| p.state == State::Warning).collect())),
        v(Vector::Boolean(rows.iter().map(|p| p.state == State::Error).collect())),
        sym_col(rows.iter().map(|p| &*p.kind)),
        sym_col(rows.iter().map(|p| p.state.word())),
        v(Vector::Timespan(rows.iter().map(|p| p.age(now).saturating_mul(1_000_000)).collect())),
        sym_col(rows.iter().map(|p| p.status.word())),
        K::list(rows.iter().map(|p| K::string(&p.note)).collect()),
        sym_col(rows.iter().map(|p| p.q_version.as_str())),
        sym_col(rows.iter().map(|p| p.host.as_str())),
        v(Vector::Int(rows.iter().map(|p| p.port.map_or(i32::MIN, i32::from)).collect())),
        v(Vector::Int(rows.iter().map(|p| p.http.map_or(i32::MIN, i32::from)).collect())),
        v(Vector::Timestamp(
            rows.iter().map(|p| (p.since - KDB_EPOCH_MS).saturating_mul(1_000_000)).collect(),
        )),
        v(Vector::Timestamp(
            rows.iter().map(|p| (p.last_beat - KDB_EPOCH_MS).saturating_mul(1_000_000)).collect(),
        )),
        v(Vector::Boolean(rows.iter().map(|p| p.stale).collect())),
        K::list(
            rows.iter()
                .map(|p| {
                    K::dict(
                        sym_col(p.attrs.keys().map(String::as_str)),
                        K::list(p.attrs.values().map(K::string).collect()),
                    )
                })
                .collect(),
        ),
    ];
    let names: Symbols = [
        "handle", "ip", "address", "pid", "counter", "lastHb", "active", "warning", "error", "kind", "state",
        "age", "status", "note", "qVersion", "host", "port", "http", "since", "lastSeen", "stale", "attrs",
    ]
    .into_iter()
    .collect();
    let value = Table { attr: Attr::None, names, columns };
    K::dict(K::Table(key), K::Table(value))
}

#[cfg(test)]
mod tests {

    /// What a client put in `address` is published without its
    /// credentials, and a port out of range is refused.
    #[test]
    fn addresses_are_published_without_credentials() {
        assert_eq!(public_address(":h1:5001").as_deref(), Some(":h1:5001"));
        assert_eq!(public_address(":h1:5001:user:secret").as_deref(), Some(":h1:5001"));
        assert_eq!(public_address("h1:5001").as_deref(), Some(":h1:5001"));
        assert_eq!(public_address(":tcps://h1:5001:u:p").as_deref(), Some(":tcps://h1:5001"));
        assert_eq!(public_address(":h1:0").as_deref(), Some(":h1:0"), "a process with no port (\\p 0)");
        assert_eq!(public_address("").as_deref(), Some(""));
        assert_eq!(public_address(":h:99999"), None);
        assert_eq!(public_address(":feedhost").as_deref(), Some(":feedhost"), "no port: listens on none");
        assert_eq!(ip_of_int(&K::Atom(Atom::Int(0x7f00_0001))).as_deref(), Some("127.0.0.1"));
        assert_eq!(version_of_float(&K::Atom(Atom::Float(4.1))).as_deref(), Some("4.1"));
    }

    use super::*;

    /// The blog's payload, with the types its `.client.publish` sends.
    pub(crate) fn blog_payload() -> K {
        K::dict(
            K::syms(["process", "ip", "address", "pid", "qVersion", "counter", "lastHb"]),
            K::list(vec![
                K::sym("milg_11460"),
                K::sym("127.0.0.1"),
                K::sym(":macbook.local:8084"),
                K::Atom(Atom::Int(11460)),
                K::sym("4v2021.07.12"),
                K::long(125),
                K::Atom(Atom::Time(55_277_287)),
            ]),
        )
    }

    #[test]
    fn reads_the_blogs_heartbeat() {
        let call = call(&K::list(vec![K::sym(STORE_HB), blog_payload()])).unwrap();
        let Call::StoreHb(hb) = call else { panic!() };
        assert_eq!(hb.name, "milg_11460");
        assert_eq!(hb.address, ":macbook.local:8084");
        assert_eq!(hb.pid, Some(11460));
        assert_eq!(hb.counter, 125);
        assert_eq!(hb.client_time, Some(55_277_287));
        assert_eq!(hb.status, Status::Ok);
    }

    #[test]
    fn reads_the_richer_keys() {
        let payload = K::dict(
            K::syms(["process", "kind", "status", "note", "attrs", "http"]),
            K::list(vec![
                K::sym("g1"),
                K::sym("gateway"),
                K::sym("warn"),
                K::string("slow disk"),
                K::dict(K::syms(["region", "tier"]), K::list(vec![K::sym("ldn"), K::string("t1")])),
                K::Atom(Atom::Int(8080)),
            ]),
        );
        let hb = heartbeat(&payload).unwrap();
        assert_eq!(hb.kind.as_deref(), Some("gateway"));
        assert_eq!(hb.status, Status::Warn);
        assert_eq!(hb.note, "slow disk");
        assert_eq!(hb.attrs.get("tier").map(String::as_str), Some("t1"));
        assert_eq!(hb.http, Some(8080));
    }

    #[test]
    fn bad_heartbeats_say_what_is_wrong() {
        let cases = [
            (K::long(1), "dictionary"),
            (K::dict(K::syms(["ip"]), K::list(vec![K::sym("x")])), "no `process"),
            (K::dict(K::syms(["process", "pid"]), K::list(vec![K::sym("a"), K::sym("x")])), "pid must be"),
            (K::dict(K::syms(["process", "status"]), K::list(vec![K::sym("a"), K::sym("meh")])), "status"),
            (K::dict(K::syms(["process", "http"]), K::list(vec![K::sym("a"), K::long(70_000)])), "http"),
        ];
        for (payload, says) in cases {
            let e = heartbeat(&payload).unwrap_err();
            assert!(e.0.starts_with("bad request: ") && e.0.contains(says), "{e}");
        }
    }

    #[test]
    fn only_the_documented_calls() {
        assert_eq!(call(&K::string(".master.discovery")), Ok(Call::Discovery));
        assert_eq!(call(&K::sym(".master.discovery")), Ok(Call::Discovery));
        for k in [
            K::string("system \"rm -rf /\""),
            K::string("1+1"),
            K::list(vec![K::sym("value"), K::string("1")]),
        ] {
            assert!(call(&k).unwrap_err().0.starts_with("bad request"));
        }
        let f = call(&K::list(vec![
            K::sym(LOOKUP),
            K::dict(K::syms(["kind", "state"]), K::list(vec![K::sym("rdb"), K::syms(["active", "warning"])])),
        ]))
        .unwrap();
        assert_eq!(
            f,
            Call::Lookup(Filter {
                kinds: vec!["rdb".into()],
                states: vec![State::Active, State::Warning],
                ..Filter::default()
            })
        );
    }

    #[test]
    fn the_table_is_keyed_with_the_blogs_columns_first() {
        let mut r = crate::registry::Registry::new(Default::default(), 0);
        let hb = heartbeat(&blog_payload()).unwrap();
        r.heartbeat(1_000, 8, hb).unwrap();
        let rows: Vec<_> = r.iter().cloned().collect();
        let K::Dict(d) = discovery_table(&rows, 2_000) else { panic!() };
        let (K::Table(k), K::Table(v)) = (&d.keys, &d.values) else { panic!() };
        assert_eq!(k.names.iter().collect::<Vec<_>>(), vec![&b"process"[..]]);
        let names: Vec<String> = v.names.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        assert_eq!(&names[..8], ["handle", "ip", "address", "pid", "counter", "lastHb", "active", "warning"]);
        assert_eq!(v.row_count(), 1);
        // Encodes as q would accept it.
        qmesh_codec::check_encodable(&K::dict(d.keys.clone(), d.values.clone()), 3).unwrap();
    }
}
