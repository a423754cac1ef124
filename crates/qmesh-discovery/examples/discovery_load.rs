//! Load generator for `bench/discovery.sh`: N simulated processes
//! heartbeating at a fixed rate, either to the qmesh registry over kdb+ IPC
//! (the blog's async `.master.storeHb`, one connection per process, as q
//! clients do) or to etcd as leases kept alive (gRPC `LeaseKeepAlive`, one
//! HTTP/2 connection and stream per process, as one etcd client per process
//! would).
//!
//! ```text
//! discovery_load discovery --target 127.0.0.1:5050 --processes 10000 --hz 1 --seconds 30
//! discovery_load etcd      --target 127.0.0.1:2379 --processes 10000 --hz 1 --seconds 30
//! ```
//!
//! It prints `ready` once every process is connected (and, for etcd, holds
//! its lease) and has beaten once, then `done sent=N errors=E` when the
//! run ends. The script measures the server between the two lines.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use qmesh_codec::{Atom, K};
use qmesh_ipc::{Address, ClientOptions, Connection};

struct Args {
    mode: String,
    target: String,
    processes: usize,
    hz: f64,
    seconds: f64,
    connect_parallel: usize,
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        target: String::new(),
        processes: 10_000,
        hz: 1.0,
        seconds: 30.0,
        connect_parallel: 256,
    };
    let mut it = std::env::args().skip(1);
    a.mode = it.next().unwrap_or_default();
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--target" => a.target = v,
            "--processes" => a.processes = v.parse().expect("--processes N"),
            "--hz" => a.hz = v.parse().expect("--hz F"),
            "--seconds" => a.seconds = v.parse().expect("--seconds F"),
            "--connect-parallel" => a.connect_parallel = v.parse().expect("--connect-parallel N"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        a.mode == "discovery" || a.mode == "etcd",
        "usage: discovery_load discovery|etcd --target HOST:PORT …"
    );
    a
}

fn payload(i: usize, counter: i64) -> K {
    K::list(vec![
        K::sym(".master.storeHb"),
        K::dict(
            K::syms(["process", "ip", "address", "pid", "qVersion", "counter", "lastHb", "kind"]),
            K::list(vec![
                K::sym(format!("sim_{i:05}")),
                K::sym("127.0.0.1"),
                K::sym(format!(":simhost:{}", 10_000 + i)),
                K::Atom(Atom::Int(i as i32)),
                K::sym("4v2021.07.12"),
                K::long(counter),
                K::Atom(Atom::Time(0)),
                K::sym(["rdb", "hdb", "gateway", "feed"][i % 4]),
            ]),
        ),
    ])
}

fn main() {
    let a = args();
    // One thread: the load generator should leave the other core to the
    // server being measured.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / a.hz);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.connect_parallel));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(a.processes.max(1));
    let start = Arc::new(tokio::sync::Notify::new());
    let stop_at = Arc::new(std::sync::Mutex::new(None::<tokio::time::Instant>));
    let mut tasks = Vec::with_capacity(a.processes);
    for i in 0..a.processes {
        let (target, sem, ready, sent, errors, start, stop_at, mode) = (
            a.target.clone(),
            Arc::clone(&sem),
            ready_tx.clone(),
            Arc::clone(&sent),
            Arc::clone(&errors),
            Arc::clone(&start),
            Arc::clone(&stop_at),
            a.mode.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let beater: Box<dyn Beater> = {
                let _permit = sem.acquire().await.expect("semaphore");
                if mode == "discovery" {
                    Box::new(Ipc::connect(&target, i).await)
                } else {
                    Box::new(Etcd::connect(&target).await)
                }
            };
            let mut beater = beater;
            beater.beat(0).await.expect("first beat");
            let _ = ready.send(()).await;
            start.notified().await;
            // Spread the processes over the period, as independent timers are.
            let phase = period.mul_f64((i as f64 * 0.618_033_988_75).fract());
            tokio::time::sleep(phase).await;
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut counter = 1;
            loop {
                interval.tick().await;
                let stop = *stop_at.lock().expect("lock");
                if stop.is_some_and(|s| tokio::time::Instant::now() >= s) {
                    break;
                }
                match beater.beat(counter).await {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("beat failed: {e}");
                        }
                        0
                    }
                };
                counter += 1;
            }
            drop(beater);
        }));
    }
    drop(ready_tx);
    for _ in 0..a.processes {
        ready_rx.recv().await.expect("every process ready");
    }
    *stop_at.lock().expect("lock") =
        Some(tokio::time::Instant::now() + Duration::from_secs_f64(a.seconds) + period);
    println!("ready");
    start.notify_waiters();
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    println!("done sent={} errors={}", sent.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    for t in tasks {
        let _ = t.await;
    }
}

trait Beater: Send {
    fn beat(
        &mut self,
        counter: i64,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

struct Ipc {
    conn: Connection,
    i: usize,
}

impl Ipc {
    async fn connect(target: &str, i: usize) -> Ipc {
        let addr = Address::parse(target).expect("--target HOST:PORT");
        let opts = ClientOptions { push_queue: 4, ..ClientOptions::default() };
        loop {
            match Connection::connect(&addr, opts.clone()).await {
                Ok(conn) => return Ipc { conn, i },
                Err(e) => {
                    eprintln!("connect: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

impl Beater for Ipc {
    fn beat(
        &mut self,
        counter: i64,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.conn.send_async(&payload(self.i, counter)).map_err(|e| e.to_string()) })
    }
}

/// One etcd client: an HTTP/2 connection, a lease, and a LeaseKeepAlive
/// stream on which each beat is one request and one response (what etcd's
/// own clients do).
struct Etcd {
    tx: h2::SendStream<Bytes>,
    rx: Option<h2::RecvStream>,
    buf: BytesMut,
    id: i64,
    _client: h2::client::SendRequest<Bytes>,
}

fn varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Field `want` (a varint) of a protobuf message.
fn field_varint(mut m: &[u8], want: u32) -> Option<u64> {
    let read = |m: &mut &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *m.first()?;
            *m = &m[1..];
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    while !m.is_empty() {
        let key = read(&mut m)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                let v = read(&mut m)?;
                if field == want {
                    return Some(v);
                }
            }
            2 => {
                let n = read(&mut m)? as usize;
                m = m.get(n..)?;
            }
            1 => m = m.get(8..)?,
            5 => m = m.get(4..)?,
            _ => return None,
        }
    }
    None
}

fn request(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://etcd{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// Reads one gRPC message from `rx` (buffering in `buf`).
async fn read_message(rx: &mut h2::RecvStream, buf: &mut BytesMut) -> Result<Bytes, String> {
    loop {
        if buf.len() >= 5 {
            let n = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() >= 5 + n {
                buf.advance(5);
                return Ok(buf.split_to(n).freeze());
            }
        }
        match rx.data().await {
            Some(Ok(d)) => {
                let _ = rx.flow_control().release_capacity(d.len());
                buf.extend_from_slice(&d);
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("stream ended".into()),
        }
    }
}

impl Etcd {
    async fn connect(target: &str) -> Etcd {
        let tcp = loop {
            match tokio::net::TcpStream::connect(target).await {
                Ok(s) => break s,
                Err(e) => {
                    eprintln!("connect: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // LeaseGrant { TTL: 60 } → LeaseGrantResponse { ID (2) }
        let mut msg = BytesMut::new();
        msg.put_u8(0x08);
        varint(&mut msg, 60);
        let mut client: h2::client::SendRequest<Bytes> = client.ready().await.expect("h2 ready");
        let (resp, mut tx) =
            client.send_request(request("/etcdserverpb.Lease/LeaseGrant"), false).expect("grant");
        tx.send_data(grpc_frame(&msg), true).expect("grant body");
        let mut rx = resp.await.expect("grant response").into_body();
        let mut buf = BytesMut::new();
        let body = read_message(&mut rx, &mut buf).await.expect("grant message");
        let id = field_varint(&body, 2).expect("lease ID") as i64;
        let mut client = client.ready().await.expect("h2 ready");
        let (resp, tx) = client
            .send_request(request("/etcdserverpb.Lease/LeaseKeepAlive"), false)
            .expect("keepalive stream");
        let mut e = Etcd { tx, rx: None, buf: BytesMut::new(), id, _client: client };
        // The response headers arrive with the first answer.
        e.send_keepalive().expect("first keepalive");
        let mut rx = resp.await.expect("keepalive response").into_body();
        read_message(&mut rx, &mut e.buf).await.expect("first keepalive answer");
        e.rx = Some(rx);
        e
    }

    fn send_keepalive(&mut self) -> Result<(), String> {
        let mut msg = BytesMut::new();
        msg.put_u8(0x08);
        varint(&mut msg, self.id as u64);
        self.tx.reserve_capacity(16);
        self.tx.send_data(grpc_frame(&msg), false).map_err(|e| e.to_string())
    }
}

impl Beater for Etcd {
    fn beat(
        &mut self,
        counter: i64,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            if counter == 0 {
                return Ok(()); // connect already sent and answered one
            }
            self.send_keepalive()?;
            let rx = self.rx.as_mut().ok_or("no stream")?;
            let m = read_message(rx, &mut self.buf).await?;
            match field_varint(&m, 3) {
                Some(ttl) if ttl > 0 => Ok(()),
                _ => Err("lease expired".into()),
            }
        })
    }
}
