//! Load generator for `bench/rt.sh`: publishes N messages of SIZE bytes to
//! a `qmesh rt` node, a Redis stream or a NATS JetStream stream, pipelining
//! up to WINDOW unacknowledged publishes per publisher, while one subscriber
//! receives them; prints throughput (messages acknowledged per second) and
//! publish→subscriber latency percentiles (each payload carries its send
//! time).
//!
//! `rt_bench serve DIR PORT` runs a node (`--durability always`, stream
//! `bench`) in this process, as `qmesh rt` would, so the benchmark needs no
//! build of the whole binary.
//!
//! usage: rt_bench rt|ship|redis|nats ADDR [--messages N] [--size BYTES]
//!        [--publishers P] [--window W] [--rate MSGS_PER_S] [--async]
//!        [--batch B] [--concurrency C] [--dir DIR]
//!
//! * rt: sync `` (`.rt.pub;`bench;payload) `` (a byte vector whose
//!   serialization is SIZE bytes); `--async` sends `neg[h]` and one sync
//!   call at the end (the batching publisher: without `--rate`, 1,000
//!   messages per write).
//! * ship: log shipping — each publisher a `qmesh_rt::publisher::Publisher`
//!   writing its local log in `DIR/pubs` (fsync per call, `--durability
//!   always`), shipped to the node; the subscriber a
//!   `qmesh_rt::subscriber::Subscriber` reading its local copy in
//!   `DIR/copy`. `--batch B` publishes B messages per call (one write, one
//!   fsync); 1 is unbatched. `--concurrency C` publishes from C threads per
//!   publisher (one `Publisher` shared), whose calls share fsyncs (the
//!   publisher's group commit; `syncs` in the output counts them).
//!   Throughput counts messages the node
//!   acknowledged (each publisher's `flush`), as for `rt`; latency is
//!   publish call → subscriber callback.
//! * redis: `XADD bench * d payload`, pipelined.
//! * nats: JetStream publish to subject `bench` with a reply inbox (the
//!   publish ack), pipelined; the subscriber is a push consumer.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use qmesh_codec::{Attr, K, Vector};
use qmesh_ipc::{Address, ClientOptions, Connection};
use qmesh_rt::From;
use qmesh_rt::client::{Delivery, Subscriber};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
struct Opts {
    kind: String,
    addr: String,
    messages: u64,
    size: usize,
    publishers: u64,
    window: usize,
    rate: Option<f64>,
    async_pub: bool,
    batch: usize,
    concurrency: usize,
    dir: String,
}

fn parse() -> Opts {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        kind: a[0].clone(),
        addr: a[1].clone(),
        messages: 100_000,
        size: 100,
        publishers: 1,
        window: 1000,
        rate: None,
        async_pub: false,
        batch: 1,
        concurrency: 1,
        dir: std::env::temp_dir().join(format!("rt-bench-{}", std::process::id())).display().to_string(),
    };
    let mut i = 2;
    while i < a.len() {
        match a[i].as_str() {
            "--messages" => o.messages = a[i + 1].parse().unwrap(),
            "--size" => o.size = a[i + 1].parse().unwrap(),
            "--publishers" => o.publishers = a[i + 1].parse().unwrap(),
            "--window" => o.window = a[i + 1].parse().unwrap(),
            "--rate" => o.rate = Some(a[i + 1].parse().unwrap()),
            "--batch" => o.batch = a[i + 1].parse().unwrap(),
            "--concurrency" => o.concurrency = a[i + 1].parse().unwrap(),
            "--dir" => o.dir = a[i + 1].clone(),
            "--async" => {
                o.async_pub = true;
                i += 1;
                continue;
            }
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    o
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A payload of `len` bytes starting with the send time.
fn stamped(len: usize) -> Vec<u8> {
    let mut v = vec![0x5a; len.max(8)];
    v[..8].copy_from_slice(&now_ns().to_le_bytes());
    v
}

fn stamp_of(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

/// Waits until message `i` of a publisher may be sent under `--rate`.
async fn pace(start: Instant, i: u64, per_publisher_rate: Option<f64>) {
    if let Some(r) = per_publisher_rate {
        let due = start + Duration::from_secs_f64(i as f64 / r);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
    }
}

struct Report {
    latencies: Vec<u64>,
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

async fn serve(dir: &str, port: u16) {
    let mut config = qmesh_rt_node::Config::new(dir, vec!["bench".to_string()]);
    config.shell.ipc = qmesh_ipc::ServerConfig::tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let bound = qmesh_rt_node::bind(config).await.unwrap();
    println!("rt listening ipc {}", bound.ipc_addr());
    bound.run(qmesh_process::Shutdown::on_signals().unwrap()).await.unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        return serve(&args[2], args[3].parse().unwrap()).await;
    }
    let o = parse();
    if o.kind == "ship" {
        return ship(&o).await;
    }
    let per_rate = o.rate.map(|r| r / o.publishers as f64);
    let n_per = o.messages / o.publishers;
    let total = n_per * o.publishers;
    let (sub_tx, sub_rx) = tokio::sync::oneshot::channel::<()>();
    let subscriber = {
        let o = o.clone();
        tokio::spawn(async move {
            match o.kind.as_str() {
                "rt" => sub_rt(&o, total, sub_tx).await,
                "redis" => sub_redis(&o, total, sub_tx).await,
                "nats" => sub_nats(&o, total, sub_tx).await,
                k => panic!("unknown kind {k}"),
            }
        })
    };
    sub_rx.await.unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut pubs = Vec::new();
    for p in 0..o.publishers {
        let o = o.clone();
        let acked = acked.clone();
        pubs.push(tokio::spawn(async move {
            match o.kind.as_str() {
                "rt" => pub_rt(&o, n_per, per_rate, start, &acked).await,
                "redis" => pub_redis(&o, n_per, per_rate, start, &acked).await,
                _ => pub_nats(&o, p, n_per, per_rate, start, &acked).await,
            }
        }));
    }
    for p in pubs {
        p.await.unwrap();
    }
    let pub_secs = start.elapsed().as_secs_f64();
    let mut r =
        tokio::time::timeout(Duration::from_secs(600), subscriber).await.expect("subscriber done").unwrap();
    r.latencies.sort_unstable();
    println!(
        "kind={} messages={} size={} publishers={} window={} rate={} async={} throughput_msgs_per_s={:.0} p50_us={:.1} p99_us={:.1} max_us={:.1}",
        o.kind,
        acked.load(Ordering::Relaxed),
        o.size,
        o.publishers,
        o.window,
        o.rate.map_or("max".into(), |r| format!("{r}")),
        o.async_pub,
        acked.load(Ordering::Relaxed) as f64 / pub_secs,
        pct(&r.latencies, 0.5),
        pct(&r.latencies, 0.99),
        pct(&r.latencies, 1.0),
    );
}

// ---------- qmesh rt ----------

fn rt_msg(size: usize) -> K {
    // a byte vector's serialization is 6 bytes of header plus its bytes
    let payload = K::Vector(Attr::None, Vector::Byte(stamped(size.saturating_sub(6))));
    K::list(vec![K::sym(".rt.pub"), K::sym("bench"), payload])
}

async fn pub_rt(o: &Opts, n: u64, rate: Option<f64>, start: Instant, acked: &AtomicU64) {
    let conn =
        Connection::connect(&Address::parse(&o.addr).unwrap(), ClientOptions::default()).await.unwrap();
    let (sender, _rx) = conn.split();
    if o.async_pub {
        if rate.is_none() {
            // a batching publisher: up to BATCHED messages per write (`qmesh_ipc::batch::Gather`), as a kdb+
            // publisher's buffered async writes; yield between chunks so the reader and the node's answers run
            const BATCHED: u64 = 1000;
            let mut i = 0;
            while i < n - 1 {
                {
                    let _gather = qmesh_ipc::batch::Gather::new();
                    for _ in i..(i + BATCHED).min(n - 1) {
                        sender.send_async(&rt_msg(o.size)).unwrap();
                    }
                }
                i = (i + BATCHED).min(n - 1);
                // q's `neg[h][]` now and then: bounded memory, and the node reads at its own pace
                if sender.queued_bytes() > 4 << 20 {
                    sender.flush().await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        }
        for i in (0..n - 1).filter(|_| rate.is_some()) {
            pace(start, i, rate).await;
            sender.send_async(&rt_msg(o.size)).unwrap();
        }
        sender.call(&rt_msg(o.size)).await.unwrap();
        acked.fetch_add(n, Ordering::Relaxed);
        return;
    }
    let sender = &sender;
    futures::stream::iter(0..n)
        .map(|i| async move {
            pace(start, i, rate).await;
            sender.call(&rt_msg(o.size)).await.unwrap();
        })
        .buffer_unordered(o.window)
        .for_each(|()| async {
            acked.fetch_add(1, Ordering::Relaxed);
        })
        .await;
}

async fn sub_rt(o: &Opts, total: u64, ready: tokio::sync::oneshot::Sender<()>) -> Report {
    let mut sub = Subscriber::connect(&o.addr, "bench", From::Latest).await.unwrap();
    ready.send(()).unwrap();
    let mut latencies = Vec::with_capacity(total as usize);
    while (latencies.len() as u64) < total {
        match sub.next().await.unwrap().unwrap() {
            Delivery::Message { value: K::Vector(_, Vector::Byte(b)), .. } => {
                latencies.push(now_ns().saturating_sub(stamp_of(&b)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    Report { latencies }
}

// ---------- qmesh rt, log shipping ----------

/// A serialized byte vector (the payload `rt_msg` publishes) of `size` bytes carrying its send time.
fn ship_payload(size: usize) -> Vec<u8> {
    qmesh_codec::RawObject::encode(&K::Vector(Attr::None, Vector::Byte(stamped(size.saturating_sub(6)))))
        .bytes()
        .to_vec()
}

async fn ship(o: &Opts) {
    use qmesh_rt::publisher::{Header, Publisher, PublisherConfig};
    use qmesh_rt::subscriber::{Subscriber as CopySubscriber, SubscriberConfig, latest_position};
    let _ = std::fs::remove_dir_all(&o.dir);
    let per_rate = o.rate.map(|r| r / o.publishers as f64);
    let n_per = o.messages / o.publishers;
    let total = n_per * o.publishers;
    // the subscriber: a local copy from the node's current end
    let mut sc = SubscriberConfig::new("bench");
    sc.dir = std::path::Path::new(&o.dir).join("copy");
    std::fs::create_dir_all(&sc.dir).unwrap();
    sc.cluster = vec![o.addr.clone()];
    let from = latest_position(&o.addr, "bench").await.unwrap();
    let lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let mut done_tx = Some(done_tx);
    let l = lat.clone();
    let _sub = CopySubscriber::start(sc, From::Position(from as i64), move |m| {
        // a byte vector: type, attribute, length (6 bytes), then the stamp
        let t = now_ns().saturating_sub(stamp_of(&m.payload[6..]));
        let mut v = l.lock().unwrap();
        v.push(t);
        if v.len() as u64 == total
            && let Some(tx) = done_tx.take()
        {
            let _ = tx.send(());
        }
    })
    .await
    .unwrap();
    let mut pubs = Vec::new();
    for p in 0..o.publishers {
        let mut pc = PublisherConfig::new("bench");
        pc.path = std::path::Path::new(&o.dir).join("pubs");
        std::fs::create_dir_all(&pc.path).unwrap();
        // ids unique to this run: a node remembers what each id shipped before
        pc.publisher_id = Some(format!("bench{p}x{}", std::process::id()));
        pc.cluster = vec![o.addr.clone()];
        pubs.push(Arc::new(Publisher::start(pc).await.unwrap()));
    }
    let start = Instant::now();
    let batch = o.batch.max(1) as u64;
    let mut threads = Vec::new();
    let size = o.size;
    let callers = o.concurrency.max(1) as u64;
    for (p, c) in pubs.iter().flat_map(|p| (0..callers).map(move |c| (p, c))) {
        let p = p.clone();
        // this caller's share of the publisher's messages and rate
        let n_per = n_per / callers + u64::from(c < n_per % callers);
        let per_rate = per_rate.map(|r| r / callers as f64);
        threads.push(std::thread::spawn(move || {
            let header = Header::default();
            let mut sent = 0u64;
            while sent < n_per {
                // what is due now (everything, without a rate), at most one batch
                let due = per_rate.map_or(n_per, |r| ((start.elapsed().as_secs_f64() * r) as u64).min(n_per));
                if due <= sent {
                    let next = Duration::from_secs_f64((sent + 1) as f64 / per_rate.unwrap_or(f64::INFINITY));
                    std::thread::sleep(next.saturating_sub(start.elapsed()));
                    continue;
                }
                let k = (due - sent).min(batch);
                let msgs: Vec<Vec<u8>> = (0..k).map(|_| ship_payload(size)).collect();
                p.publish_batch(msgs.iter().map(|m| (m.as_slice(), &header))).unwrap();
                sent += k;
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let local_secs = start.elapsed().as_secs_f64();
    for p in &pubs {
        p.flush().await.unwrap();
    }
    let acked_secs = start.elapsed().as_secs_f64();
    tokio::time::timeout(Duration::from_secs(600), done_rx).await.expect("subscriber done").unwrap();
    let e2e_secs = start.elapsed().as_secs_f64();
    let mut v = std::mem::take(&mut *lat.lock().unwrap());
    v.sort_unstable();
    let syncs: u64 = pubs.iter().map(|p| p.syncs()).sum();
    println!(
        "kind=ship messages={total} size={} publishers={} batch={} concurrency={callers} syncs={syncs} rate={} throughput_msgs_per_s={:.0} local_msgs_per_s={:.0} e2e_msgs_per_s={:.0} p50_us={:.1} p99_us={:.1} max_us={:.1}",
        o.size,
        o.publishers,
        batch,
        o.rate.map_or("max".into(), |r| format!("{r}")),
        total as f64 / acked_secs,
        total as f64 / local_secs,
        total as f64 / e2e_secs,
        pct(&v, 0.5),
        pct(&v, 0.99),
        pct(&v, 1.0),
    );
    let _ = std::fs::remove_dir_all(&o.dir);
}

// ---------- Redis streams (RESP) ----------

fn resp_cmd(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A RESP value (the fields are read by `Debug` in panics).
#[derive(Debug)]
#[allow(dead_code)]
enum Resp {
    Simple(Vec<u8>),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

async fn read_resp<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Resp {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).await.unwrap();
    assert!(line.len() >= 3, "connection closed");
    let body = &line[1..line.len() - 2];
    match line[0] {
        b'+' => Resp::Simple(body.to_vec()),
        b'-' => Resp::Error(String::from_utf8_lossy(body).into_owned()),
        b':' => Resp::Int(std::str::from_utf8(body).unwrap().parse().unwrap()),
        b'$' => {
            let n: i64 = std::str::from_utf8(body).unwrap().parse().unwrap();
            if n < 0 {
                return Resp::Bulk(None);
            }
            let mut b = vec![0u8; n as usize + 2];
            r.read_exact(&mut b).await.unwrap();
            b.truncate(n as usize);
            Resp::Bulk(Some(b))
        }
        b'*' => {
            let n: i64 = std::str::from_utf8(body).unwrap().parse().unwrap();
            if n < 0 {
                return Resp::Array(None);
            }
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(Box::pin(read_resp(r)).await);
            }
            Resp::Array(Some(v))
        }
        other => panic!("bad RESP byte {other}"),
    }
}

async fn pub_redis(o: &Opts, n: u64, rate: Option<f64>, start: Instant, acked: &AtomicU64) {
    let s = TcpStream::connect(&o.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (r, mut w) = s.into_split();
    let window = Arc::new(Semaphore::new(o.window));
    let reader = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut r = BufReader::with_capacity(1 << 16, r);
            for _ in 0..n {
                match read_resp(&mut r).await {
                    Resp::Bulk(Some(_)) => {}
                    other => panic!("XADD answered {other:?}"),
                }
                window.add_permits(1);
            }
        })
    };
    for i in 0..n {
        pace(start, i, rate).await;
        window.acquire().await.unwrap().forget();
        let payload = stamped(o.size);
        w.write_all(&resp_cmd(&[b"XADD", b"bench", b"*", b"d", &payload])).await.unwrap();
    }
    reader.await.unwrap();
    acked.fetch_add(n, Ordering::Relaxed);
}

async fn sub_redis(o: &Opts, total: u64, ready: tokio::sync::oneshot::Sender<()>) -> Report {
    let s = TcpStream::connect(&o.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(1 << 16, r);
    let mut last = b"$".to_vec();
    let mut latencies = Vec::with_capacity(total as usize);
    let mut first = Some(ready);
    while (latencies.len() as u64) < total {
        w.write_all(&resp_cmd(&[b"XREAD", b"COUNT", b"10000", b"BLOCK", b"0", b"STREAMS", b"bench", &last]))
            .await
            .unwrap();
        if let Some(tx) = first.take() {
            // the first XREAD is on its way: publishing may start
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(()).unwrap();
        }
        let Resp::Array(Some(streams)) = read_resp(&mut r).await else { continue };
        for st in streams {
            let Resp::Array(Some(mut kv)) = st else { panic!() };
            let Resp::Array(Some(entries)) = kv.remove(1) else { panic!() };
            let now = now_ns();
            for e in entries {
                let Resp::Array(Some(mut e)) = e else { panic!() };
                let Resp::Array(Some(fields)) = e.remove(1) else { panic!() };
                let Resp::Bulk(Some(id)) = e.remove(0) else { panic!() };
                let Resp::Bulk(Some(v)) = &fields[1] else { panic!() };
                latencies.push(now.saturating_sub(stamp_of(v)));
                last = id;
            }
        }
    }
    Report { latencies }
}

// ---------- NATS JetStream (text protocol) ----------

async fn nats_connect(
    addr: &str,
) -> (BufReader<tokio::net::tcp::OwnedReadHalf>, tokio::net::tcp::OwnedWriteHalf) {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(1 << 16, r);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap(); // INFO
    w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\nPING\r\n")
        .await
        .unwrap();
    line.clear();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("PONG"), "{line}");
    (r, w)
}

/// Reads the next MSG or HMSG (answering PING, skipping +OK); returns (subscription id, payload without
/// headers). A JetStream push consumer delivers with the stream's subject (`bench`), not the deliver subject:
/// the subscription id tells deliveries apart.
async fn nats_msg(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
) -> (String, Vec<u8>) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).await.unwrap();
        assert!(n > 0, "nats connection closed");
        let t: Vec<&str> = line.split_whitespace().collect();
        match t.first().copied() {
            Some("MSG") => {
                let len: usize = t.last().unwrap().parse().unwrap();
                let mut b = vec![0u8; len + 2];
                r.read_exact(&mut b).await.unwrap();
                b.truncate(len);
                return (t[2].to_string(), b);
            }
            Some("HMSG") => {
                let total: usize = t.last().unwrap().parse().unwrap();
                let hdr: usize = t[t.len() - 2].parse().unwrap();
                let mut b = vec![0u8; total + 2];
                r.read_exact(&mut b).await.unwrap();
                b.truncate(total);
                return (t[2].to_string(), b[hdr..].to_vec());
            }
            Some("PING") => w.write_all(b"PONG\r\n").await.unwrap(),
            Some("-ERR") => panic!("nats: {line}"),
            _ => {}
        }
    }
}

async fn nats_request(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    subject: &str,
    body: &str,
) -> String {
    w.write_all(
        format!("SUB _INBOX.api 99\r\nPUB {subject} _INBOX.api {}\r\n{body}\r\n", body.len()).as_bytes(),
    )
    .await
    .unwrap();
    let (_, b) = nats_msg(r, w).await;
    w.write_all(b"UNSUB 99\r\n").await.unwrap();
    String::from_utf8_lossy(&b).into_owned()
}

async fn pub_nats(o: &Opts, p: u64, n: u64, rate: Option<f64>, start: Instant, acked: &AtomicU64) {
    let (mut r, mut w) = nats_connect(&o.addr).await;
    let inbox = format!("_INBOX.p{p}");
    w.write_all(format!("SUB {inbox} 1\r\n").as_bytes()).await.unwrap();
    let window = Arc::new(Semaphore::new(o.window));
    let (wtx, mut wrx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let reader = {
        let window = window.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                let mut line = String::new();
                loop {
                    line.clear();
                    r.read_line(&mut line).await.unwrap();
                    if line.starts_with("MSG") {
                        let len: usize = line.split_whitespace().last().unwrap().parse().unwrap();
                        let mut b = vec![0u8; len + 2];
                        r.read_exact(&mut b).await.unwrap();
                        assert!(!b.starts_with(b"{\"error\""), "{}", String::from_utf8_lossy(&b));
                        break;
                    }
                    if line.starts_with("PING") {
                        let _ = wtx.send(b"PONG\r\n".to_vec());
                    }
                    assert!(!line.starts_with("-ERR"), "{line}");
                }
                window.add_permits(1);
            }
        })
    };
    for i in 0..n {
        pace(start, i, rate).await;
        window.acquire().await.unwrap().forget();
        while let Ok(b) = wrx.try_recv() {
            w.write_all(&b).await.unwrap();
        }
        let payload = stamped(o.size);
        let mut m = format!("PUB bench {inbox} {}\r\n", payload.len()).into_bytes();
        m.extend_from_slice(&payload);
        m.extend_from_slice(b"\r\n");
        w.write_all(&m).await.unwrap();
    }
    reader.await.unwrap();
    acked.fetch_add(n, Ordering::Relaxed);
}

async fn sub_nats(o: &Opts, total: u64, ready: tokio::sync::oneshot::Sender<()>) -> Report {
    let (mut r, mut w) = nats_connect(&o.addr).await;
    let created = nats_request(
        &mut r,
        &mut w,
        "$JS.API.STREAM.CREATE.bench",
        r#"{"name":"bench","subjects":["bench"],"storage":"file","retention":"limits"}"#,
    )
    .await;
    assert!(!created.contains("\"error\""), "{created}");
    let consumer = nats_request(
        &mut r,
        &mut w,
        "$JS.API.CONSUMER.CREATE.bench",
        r#"{"stream_name":"bench","config":{"deliver_subject":"deliv","deliver_policy":"new","ack_policy":"none"}}"#,
    )
    .await;
    assert!(!consumer.contains("\"error\""), "{consumer}");
    w.write_all(b"SUB deliv 3\r\nPING\r\n").await.unwrap();
    ready.send(()).unwrap();
    let mut latencies = Vec::with_capacity(total as usize);
    while (latencies.len() as u64) < total {
        let (sid, b) = nats_msg(&mut r, &mut w).await;
        // sid 3: the deliver subscription; an idle heartbeat or flow-control message has no payload
        if sid == "3" && b.len() >= 8 {
            latencies.push(now_ns().saturating_sub(stamp_of(&b)));
        }
    }
    Report { latencies }
}
