//! The service through real sockets: SQL over kdb+ IPC checked against
//! values computed here from the raw rows, `upd`, the whitepaper's
//! `queryService` with a load balancer, limits, and `POST /query`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qmesh_codec::{Atom, Attr, K, Message, Table, Vector};
use qmesh_ipc::{
    Address, ClientOptions, Connection, Handler, Incoming, IpcError, Peer, Responder, Server, ServerConfig,
};
use qmesh_process::Shutdown;
use qmesh_service::demo::DemoSpec;
use qmesh_service::{Config, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const NAME: &str = "EQUITY_MARKET_RDB";

struct Running {
    ipc: SocketAddr,
    http: Option<SocketAddr>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), qmesh_service::ServiceError>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("join").expect("service ran");
    }
}

async fn start(mut config: Config) -> Running {
    config.query_threads = 2;
    let bound = qmesh_service::bind(config).await.expect("bind");
    let ipc = bound.ipc_addr();
    let http = bound.http_addr();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    Running { ipc, http, shutdown, task }
}

fn demo_config(rows: usize) -> Config {
    let mut c = Config::new(NAME);
    c.demo = Some(DemoSpec { trades: rows, quotes: rows, date: 8766, seed: 42 });
    c
}

async fn connect(addr: SocketAddr) -> Connection {
    let a = Address::parse(&addr.to_string()).expect("address");
    Connection::connect(&a, ClientOptions::default()).await.expect("connect")
}

async fn sync(conn: &Connection, k: &K) -> Result<K, IpcError> {
    conn.call(k).await.and_then(|m| m.decode().map_err(|e| IpcError::Remote(e.to_string())))
}

async fn sql(conn: &Connection, q: &str) -> K {
    sync(conn, &K::string(q)).await.unwrap_or_else(|e| panic!("{q}: {e}"))
}

fn table(k: K) -> Table {
    match k {
        K::Table(t) => t,
        other => panic!("expected a table, got {other:?}"),
    }
}

/// A keyed table's keys and values as one table.
fn unkey(k: K) -> Table {
    match k {
        K::Dict(d) => match (d.keys, d.values) {
            (K::Table(mut a), K::Table(b)) => {
                let mut names: Vec<Vec<u8>> = a.names.iter().map(<[u8]>::to_vec).collect();
                names.extend(b.names.iter().map(<[u8]>::to_vec));
                a.names = names.iter().collect();
                a.columns.extend(b.columns);
                a
            }
            _ => panic!("not a keyed table"),
        },
        K::Table(t) => t,
        other => panic!("expected a table, got {other:?}"),
    }
}

fn col<'a>(t: &'a Table, name: &str) -> &'a K {
    t.column(name.as_bytes()).unwrap_or_else(|| panic!("no column {name}"))
}

fn syms(k: &K) -> Vec<String> {
    match k {
        K::Vector(_, Vector::Symbol(s)) => {
            s.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
        }
        other => panic!("not symbols: {other:?}"),
    }
}

fn floats(k: &K) -> Vec<f64> {
    match k {
        K::Vector(_, Vector::Float(v)) => v.clone(),
        other => panic!("not floats: {other:?}"),
    }
}

fn longs(k: &K) -> Vec<i64> {
    match k {
        K::Vector(_, Vector::Long(v)) => v.clone(),
        other => panic!("not longs: {other:?}"),
    }
}

fn times(k: &K) -> Vec<i32> {
    match k {
        K::Vector(_, Vector::Time(v)) => v.clone(),
        other => panic!("not times: {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

struct Trades {
    sym: Vec<String>,
    time: Vec<i32>,
    price: Vec<f64>,
    size: Vec<i64>,
}

struct Quotes {
    sym: Vec<String>,
    time: Vec<i32>,
    bid: Vec<f64>,
}

#[tokio::test]
async fn sql_answers_match_values_computed_from_the_rows() {
    let svc = start(demo_config(20_000)).await;
    let conn = connect(svc.ipc).await;
    let raw = table(sql(&conn, "select * from trade").await);
    let tr = Trades {
        sym: syms(col(&raw, "sym")),
        time: times(col(&raw, "time")),
        price: floats(col(&raw, "price")),
        size: longs(col(&raw, "size")),
    };
    assert_eq!(tr.sym.len(), 20_000);
    let raw = table(sql(&conn, "select * from quote").await);
    let qu =
        Quotes { sym: syms(col(&raw, "sym")), time: times(col(&raw, "time")), bid: floats(col(&raw, "bid")) };

    // Aggregation by symbol: a keyed table, as q's select … by sym.
    let got = sql(&conn, "select sym, count(*) as n, sum(size) as vol, avg(price) as avgpx, min(price) as lo, max(price) as hi from trade group by sym order by sym").await;
    assert!(matches!(got, K::Dict(_)), "a group-by answers a keyed table");
    let got = unkey(got);
    let mut want: BTreeMap<&str, (i64, i64, f64, f64, f64)> = BTreeMap::new();
    for i in 0..tr.sym.len() {
        let e = want.entry(&tr.sym[i]).or_insert((0, 0, 0.0, f64::MAX, f64::MIN));
        e.0 += 1;
        e.1 += tr.size[i];
        e.2 += tr.price[i];
        e.3 = e.3.min(tr.price[i]);
        e.4 = e.4.max(tr.price[i]);
    }
    assert_eq!(syms(col(&got, "sym")), want.keys().map(|s| s.to_string()).collect::<Vec<_>>());
    let (n, vol, avg, lo, hi) = (
        longs(col(&got, "n")),
        longs(col(&got, "vol")),
        floats(col(&got, "avgpx")),
        floats(col(&got, "lo")),
        floats(col(&got, "hi")),
    );
    for (i, (_, w)) in want.iter().enumerate() {
        assert_eq!(n[i], w.0);
        assert_eq!(vol[i], w.1);
        assert!(close(avg[i], w.2 / w.0 as f64), "{} vs {}", avg[i], w.2 / w.0 as f64);
        assert_eq!(lo[i], w.3);
        assert_eq!(hi[i], w.4);
    }

    // A filter.
    let got = table(
        sql(&conn, "select count(*) as n, sum(size) as s from trade where sym = 'IBM' and price > 130").await,
    );
    let idx: Vec<usize> = (0..tr.sym.len()).filter(|&i| tr.sym[i] == "IBM" && tr.price[i] > 130.0).collect();
    assert_eq!(longs(col(&got, "n")), vec![idx.len() as i64]);
    let s = longs(col(&got, "s"));
    if idx.is_empty() {
        assert_eq!(s, vec![i64::MIN], "sum of nothing is null");
    } else {
        assert_eq!(s, vec![idx.iter().map(|&i| tr.size[i]).sum::<i64>()]);
    }

    // A join of trades with the quote at the same symbol and time.
    let got = table(sql(&conn, "select count(*) as n, sum(t.price - q.bid) as d from trade t join quote q on t.sym = q.sym and t.time = q.time").await);
    let mut quotes: HashMap<(&str, i32), Vec<f64>> = HashMap::new();
    for i in 0..qu.sym.len() {
        quotes.entry((&qu.sym[i], qu.time[i])).or_default().push(qu.bid[i]);
    }
    let (mut jn, mut jd) = (0i64, 0.0f64);
    for i in 0..tr.sym.len() {
        if let Some(bids) = quotes.get(&(tr.sym[i].as_str(), tr.time[i])) {
            for b in bids {
                jn += 1;
                jd += tr.price[i] - b;
            }
        }
    }
    assert!(jn > 0, "the demo data has matching rows");
    assert_eq!(longs(col(&got, "n")), vec![jn]);
    assert!(close(floats(col(&got, "d"))[0], jd));

    // Half-hour buckets of the time column.
    let got = unkey(sql(&conn, "select date_bin(interval '30 minutes', time) as b, count(*) as n, max(price) as hi from trade group by b order by b").await);
    let mut buckets: BTreeMap<i32, (i64, f64)> = BTreeMap::new();
    for i in 0..tr.time.len() {
        let e = buckets.entry(tr.time[i] - tr.time[i] % 1_800_000).or_insert((0, f64::MIN));
        e.0 += 1;
        e.1 = e.1.max(tr.price[i]);
    }
    assert_eq!(times(col(&got, "b")), buckets.keys().copied().collect::<Vec<_>>());
    assert_eq!(longs(col(&got, "n")), buckets.values().map(|v| v.0).collect::<Vec<_>>());
    assert_eq!(floats(col(&got, "hi")), buckets.values().map(|v| v.1).collect::<Vec<_>>());

    // An as-of lookup: the prevailing bid of each symbol at 12:00.
    let got = unkey(sql(&conn, "select sym, last_value(bid order by time) as bid from quote where time <= '12:00:00' group by sym order by sym").await);
    let mut asof: BTreeMap<&str, (i32, f64)> = BTreeMap::new();
    for i in 0..qu.sym.len() {
        if qu.time[i] <= 12 * 3_600_000 {
            let e = asof.entry(&qu.sym[i]).or_insert((i32::MIN, 0.0));
            if qu.time[i] >= e.0 {
                *e = (qu.time[i], qu.bid[i]);
            }
        }
    }
    assert_eq!(syms(col(&got, "sym")), asof.keys().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(floats(col(&got, "bid")), asof.values().map(|v| v.1).collect::<Vec<_>>());

    // Errors are q errors with DataFusion's message.
    let err = sync(&conn, &K::string("select nope from trade")).await.unwrap_err();
    let IpcError::Remote(text) = err else { panic!("q error expected") };
    assert!(text.starts_with("bad request: ") && text.contains("nope"), "{text}");
    let err = sync(&conn, &K::long(1)).await.unwrap_err();
    assert!(matches!(err, IpcError::Remote(t) if t.starts_with("bad request:")));
    svc.stop().await;
}

fn trade_table(sym: &[&str], price: &[f64], size: &[i64]) -> K {
    K::Table(Table {
        attr: Attr::None,
        names: ["sym", "price", "size"].into_iter().collect(),
        columns: vec![
            K::syms(sym.iter().copied()),
            K::from(Vector::Float(price.to_vec())),
            K::from(Vector::Long(size.to_vec())),
        ],
    })
}

async fn count(conn: &Connection, t: &str) -> i64 {
    longs(col(&table(sql(conn, &format!("select count(*) as n from {t}")).await), "n"))[0]
}

#[tokio::test]
async fn upd_appends_and_a_bad_schema_changes_nothing() {
    let svc = start(Config::new(NAME)).await;
    let conn = connect(svc.ipc).await;
    let upd = |t: &str, data: K| K::list(vec![K::sym("upd"), K::sym(t), data]);

    // a table creates `t`
    sync(&conn, &upd("t", trade_table(&["a", "b"], &[1.0, 2.0], &[10, 20]))).await.expect("create");
    // a tickerplant's list of columns, async, then a single row
    conn.send_async(&upd(
        "t",
        K::list(vec![
            K::syms(["c", "d"]),
            K::from(Vector::Float(vec![3.0, 4.0])),
            K::from(Vector::Long(vec![30, 40])),
        ]),
    ))
    .expect("async upd");
    conn.send_async(&K::list(vec![
        K::sym(".u.upd"),
        K::sym("t"),
        K::list(vec![K::sym("e"), K::Atom(Atom::Float(5.0)), K::long(50)]),
    ]))
    .expect("async row");
    assert_eq!(count(&conn, "t").await, 5);
    let before = sql(&conn, "select * from t").await;

    // price sent as longs: a clear error, and nothing changes
    let bad = upd(
        "t",
        K::list(vec![K::syms(["x"]), K::from(Vector::Long(vec![1])), K::from(Vector::Long(vec![1]))]),
    );
    let err = sync(&conn, &bad).await.unwrap_err();
    assert!(
        matches!(&err, IpcError::Remote(t) if t == "schema mismatch: `t`: column `price` is float, got long"),
        "{err}"
    );
    // the same, async: refused, logged, nothing changes
    conn.send_async(&bad).expect("async bad");
    // a column missing
    let err = sync(&conn, &upd("t", K::list(vec![K::syms(["x"])]))).await.unwrap_err();
    assert!(
        matches!(&err, IpcError::Remote(t) if t.starts_with("schema mismatch: `t`: table has 3 columns")),
        "{err}"
    );
    // columns of different lengths
    let ragged =
        K::list(vec![K::syms(["x", "y"]), K::from(Vector::Float(vec![1.0])), K::from(Vector::Long(vec![1]))]);
    let err = sync(&conn, &upd("t", ragged)).await.unwrap_err();
    assert!(
        matches!(&err, IpcError::Remote(t) if t.starts_with("bad request: column `price` has 1 rows")),
        "{err}"
    );
    assert_eq!(sql(&conn, "select * from t").await, before);
    assert_eq!(count(&conn, "t").await, 5);
    svc.stop().await;
}

/// A load balancer that records what services send it.
struct FakeLb {
    tx: mpsc::UnboundedSender<(u64, K)>,
}

impl Handler for FakeLb {
    async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
        let _ = responder.error("nyi");
    }

    async fn on_async(&self, peer: &Peer, msg: Message) {
        let _ = self.tx.send((peer.id().0, msg.decode().expect("decodes")));
    }
}

struct LbRunning {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<(u64, K)>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), IpcError>>,
}

impl LbRunning {
    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("join").expect("lb ran");
    }
}

async fn fake_lb(addr: SocketAddr) -> LbRunning {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = Server::bind(ServerConfig::tcp(addr)).await.expect("lb bind");
    let addr = server.local_addr().expect("tcp");
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(server.run(FakeLb { tx }, async move { stop.triggered().await }));
    LbRunning { addr, rx, shutdown, task }
}

#[tokio::test]
async fn query_service_answers_return_res_then_return_service_and_reregisters() {
    let mut lb = fake_lb(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let lb_addr = lb.addr;
    let mut config = demo_config(1000);
    config.lb = Some(Address::parse(&lb_addr.to_string()).expect("lb address"));
    let svc = start(config).await;
    let advertised = format!(":127.0.0.1:{}", svc.ipc.port());
    let register = K::list(vec![K::sym("registerResource"), K::sym(NAME), K::sym(&advertised)]);
    let return_service = K::list(vec![K::sym("returnService"), K::sym(NAME)]);

    let (lb_conn, msg) = lb.rx.recv().await.expect("registration");
    assert_eq!(msg, register);

    // Act as a gateway: async queryService, read returnRes on the same connection.
    let (gw, mut gw_rx) = connect(svc.ipc).await.split();
    let ask = |seq: i64, q: K| K::list(vec![K::sym("queryService"), K::list(vec![K::long(seq), q])]);
    gw.send_async(&ask(7, K::string("select count(*) as n from trade"))).expect("send");
    let Some(Incoming::Async(m)) = gw_rx.recv().await else { panic!("returnRes expected") };
    let K::List(_, items) = m.decode().expect("decode") else { panic!("list") };
    assert_eq!(items[0], K::sym("returnRes"));
    let K::List(_, res) = &items[1] else { panic!("(seq;result)") };
    assert_eq!(res.len(), 2);
    assert_eq!(res[0], K::long(7));
    assert_eq!(longs(col(&table(res[1].clone()), "n")), vec![1000]);
    // then the instance is returned to the load balancer, on its own connection
    assert_eq!(lb.rx.recv().await.expect("returnService"), (lb_conn, return_service.clone()));

    // A failing query: (seq;"text";1b), and the instance is still returned.
    gw.send_async(&ask(8, K::string("select nope from trade"))).expect("send");
    let Some(Incoming::Async(m)) = gw_rx.recv().await else { panic!("returnRes expected") };
    let K::List(_, items) = m.decode().expect("decode") else { panic!("list") };
    let K::List(_, res) = &items[1] else { panic!("(seq;text;1b)") };
    assert_eq!(res[0], K::long(8));
    assert!(res[1].as_text().is_some_and(|t| t.starts_with(b"bad request: ")), "{:?}", res[1]);
    assert_eq!(res[2], K::Atom(Atom::Boolean(true)));
    assert_eq!(lb.rx.recv().await.expect("returnService"), (lb_conn, return_service.clone()));

    // A query that is not a string.
    gw.send_async(&ask(9, K::long(1))).expect("send");
    let Some(Incoming::Async(m)) = gw_rx.recv().await else { panic!("returnRes expected") };
    let K::List(_, items) = m.decode().expect("decode") else { panic!("list") };
    let K::List(_, res) = &items[1] else { panic!("(seq;text;1b)") };
    assert!(res[1].as_text().is_some_and(|t| t.starts_with(b"type: ")), "{:?}", res[1]);
    assert_eq!(lb.rx.recv().await.expect("returnService").1, return_service);

    // The load balancer goes away and comes back on the same port: the
    // service registers again.
    lb.stop().await;
    let mut lb = fake_lb(lb_addr).await;
    let (_, msg) = lb.rx.recv().await.expect("registration again");
    assert_eq!(msg, register);
    lb.stop().await;
    svc.stop().await;
}

#[tokio::test]
async fn limits_hold_over_ipc_and_the_instance_is_free_again() {
    // each limit on its own service: with both tight, a loaded machine can
    // make the endless query's buffered batches hit 4 MiB before 2 s pass
    let mut config = demo_config(1000);
    config.limits = Limits { timeout: Duration::from_secs(2), ..Limits::default() };
    let svc = start(config).await;
    let conn = connect(svc.ipc).await;
    // Would run for hours.
    let err =
        sync(&conn, &K::string("select count(*) from generate_series(1, 100000000000) where value % 7 = 3"))
            .await
            .unwrap_err();
    assert!(matches!(&err, IpcError::Remote(t) if t.starts_with("timeout")), "{err}");
    assert_eq!(count(&conn, "trade").await, 1000, "free again after the timeout");
    svc.stop().await;

    let mut config = demo_config(1000);
    config.limits = Limits { memory_bytes: 4 << 20, ..Limits::default() };
    let svc = start(config).await;
    let conn = connect(svc.ipc).await;
    let err =
        sync(&conn, &K::string("select value, count(*) from generate_series(1, 5000000) group by value"))
            .await
            .unwrap_err();
    assert!(
        matches!(&err, IpcError::Remote(t) if t.starts_with("limit: query memory of 4194304 bytes exhausted")),
        "{err}"
    );
    assert_eq!(count(&conn, "trade").await, 1000, "free again after the memory limit");
    svc.stop().await;
}

async fn http_post(addr: SocketAddr, path: &str, content_type: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

/// The body of a chunked HTTP response, or the body as is.
fn dechunk(body: &str) -> String {
    if body.trim_start().starts_with('{') {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else { return body.to_string() };
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

#[tokio::test]
async fn post_query_over_http() {
    let mut config = demo_config(1000);
    config.shell.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let svc = start(config).await;
    let http = svc.http.expect("http");
    let (status, body) = http_post(
        http,
        "/query",
        "text/plain",
        "select sym, count(*) as n from trade group by sym order by sym",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&dechunk(&body)).expect("JSON");
    assert_eq!(v["keys"], 1);
    assert_eq!(v["types"], serde_json::json!(["symbol", "long"]));
    let total: i64 = v["data"].as_array().expect("rows").iter().map(|r| r["n"].as_i64().expect("n")).sum();
    assert_eq!(total, 1000);
    let (status, body) =
        http_post(http, "/api/query", "application/json", r#"{"sql":"select nope from trade"}"#).await;
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_str(&dechunk(&body)).expect("JSON");
    assert_eq!(v["error"], "bad request");
    assert!(v["detail"].as_str().expect("detail").contains("nope"));
    // the shared body and answer
    let (status, body) = http_post(
        http,
        "/query",
        "application/json",
        r#"{"query":"select sym, count(*) as n from trade group by sym order by sym","format":"columns"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&dechunk(&body)).expect("JSON");
    assert_eq!(v["type"], 99);
    let total: i64 =
        v["result"]["n"].as_array().expect("column").iter().map(|n| n.as_i64().expect("n")).sum();
    assert_eq!(total, 1000);
    let (status, body) = http_post(http, "/query", "text/plain", r#"{"query":"select * from nope"}"#).await;
    assert_eq!(status, 404, "{body}");
    let v: serde_json::Value = serde_json::from_str(&dechunk(&body)).expect("JSON");
    assert_eq!(v, serde_json::json!({"error": "unknown table", "detail": "nope"}));
    svc.stop().await;
}

#[tokio::test]
async fn many_clients_at_once() {
    let svc = start(demo_config(5000)).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = svc.ipc;
        tasks.push(tokio::spawn(async move {
            let conn = connect(addr).await;
            let q = format!("select count(*) as n from trade where size >= {}", 100 * (i % 3 + 1));
            table(sql(&conn, &q).await)
        }));
    }
    let conn = connect(svc.ipc).await;
    let all = Arc::new(table(sql(&conn, "select size from trade").await));
    let sizes = longs(col(&all, "size"));
    for (i, t) in tasks.into_iter().enumerate() {
        let t = t.await.expect("task");
        let want = sizes.iter().filter(|&&s| s >= 100 * (i as i64 % 3 + 1)).count() as i64;
        assert_eq!(longs(col(&t, "n")), vec![want]);
    }
    svc.stop().await;
}

/// A load balancer that probes: on each registration it hands the test the
/// service's connection, so the test can send sync requests on it.
struct ProbingLb {
    tx: mpsc::UnboundedSender<Result<Peer, K>>,
}

impl Handler for ProbingLb {
    async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
        let _ = responder.error("nyi");
    }

    async fn on_async(&self, peer: &Peer, msg: Message) {
        let k = msg.decode().expect("decodes");
        if matches!(&k, K::List(_, items) if items.first() == Some(&K::sym("registerResource"))) {
            let _ = self.tx.send(Ok(peer.clone()));
        }
        let _ = self.tx.send(Err(k));
    }
}

/// Issue 13: the load balancer's probe (q's `h""` on the service's own
/// connection) is answered as q answers it — only once the `queryService`
/// in progress has finished and its `returnService` has been sent, ahead of
/// the answer on that connection; at once when nothing runs.
#[tokio::test]
async fn probe_from_the_load_balancer_is_answered_after_the_query_in_progress() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server =
        Server::bind(ServerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))).await.expect("lb bind");
    let lb_addr = server.local_addr().expect("tcp");
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let lb_task = tokio::spawn(server.run(ProbingLb { tx }, async move { stop.triggered().await }));
    let mut config = demo_config(1000);
    config.lb = Some(Address::parse(&lb_addr.to_string()).expect("lb address"));
    // the endless query below ends at this limit
    config.limits = Limits { timeout: Duration::from_secs(1), ..Limits::default() };
    config.shell.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let svc = start(config).await;
    let Some(Ok(service_conn)) = rx.recv().await else { panic!("registration") };
    let Some(Err(_register)) = rx.recv().await else { panic!("registerResource") };

    // idle: answered (::) at once
    assert_eq!(service_conn.call(&K::string("")).await.expect("answer").decode().expect("k"), K::GenericNull);

    // a gateway's query runs (until the 1 s limit); the probe sent meanwhile
    // is answered only after its returnService
    let (gw, mut gw_rx) = connect(svc.ipc).await.split();
    let endless = "select count(*) from generate_series(1, 100000000000) where value % 7 = 3";
    gw.send_async(&K::list(vec![K::sym("queryService"), K::list(vec![K::long(1), K::string(endless)])]))
        .expect("send");
    // the probe must reach the service after the query did (they travel on
    // different connections): wait until the service has it running
    let http = svc.http.expect("http");
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(tokio::time::Instant::now() < give_up, "the query never showed as running");
        let mut s = tokio::net::TcpStream::connect(http).await.expect("http");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("get");
        let mut page = String::new();
        s.read_to_string(&mut page).await.expect("read");
        if page.lines().any(|l| l == "qmesh_service_queries_running 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let probe_conn = service_conn.clone();
    let e = events_tx.clone();
    let probe = tokio::spawn(async move {
        let r = probe_conn.call(&K::string("")).await;
        let _ = e.send("probe answered".to_string());
        r
    });
    let forward = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if let Err(k) = m {
                let _ = events_tx.send(format!("{k:?}"));
            }
        }
    });
    let Some(Incoming::Async(res)) = gw_rx.recv().await else { panic!("returnRes expected") };
    let K::List(_, items) = res.decode().expect("decode") else { panic!("list") };
    assert_eq!(items[0], K::sym("returnRes"));
    let first = events.recv().await.expect("an event");
    assert!(first.contains("returnService"), "the query's returnService comes first, got {first}");
    assert_eq!(events.recv().await.as_deref(), Some("probe answered"));
    assert_eq!(probe.await.expect("join").expect("answer").decode().expect("k"), K::GenericNull);
    forward.abort();
    svc.stop().await;
    shutdown.trigger();
    let _ = lb_task.await;
}
