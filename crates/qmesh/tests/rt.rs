//! `qmesh rt` as a real process: publishers (PyKX and Rust) and subscribers
//! over kdb+ IPC, the node killed with SIGKILL and restarted, its data
//! directory damaged on purpose. Waiting is for states (positions, the
//! `/api/streams` view), never for a time.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qmesh_codec::{Atom, K, Vector};
use qmesh_ipc::{Address, ClientOptions, Connection, Incoming, IpcError, Receiver};
use qmesh_rt::From;
use qmesh_rt::client::{Delivery, Subscriber};
use qmesh_testkit::{Process, python, python_command};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qmesh")
}

fn script(name: &str) -> PathBuf {
    qmesh_testkit::manifest_dir().join("tests/py").join(name)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qmesh-rt-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn node(dir: &Path, port: u16, extra: &[&str]) -> Process {
    let port = port.to_string();
    let mut args =
        vec!["rt", "--bind", "127.0.0.1", "-p", &port, "--http", "0", "--data", dir.to_str().unwrap()];
    if !extra.contains(&"--stream") {
        args.extend_from_slice(&["--stream", "s"]);
    }
    args.extend_from_slice(extra);
    Process::qmesh(bin(), &args, &["ipc", "http"])
}

fn ipc(p: &Process) -> String {
    format!("127.0.0.1:{}", p.port("ipc"))
}

async fn connect(p: &Process) -> Connection {
    Connection::connect(&Address::parse(&ipc(p)).unwrap(), ClientOptions::default()).await.unwrap()
}

async fn call(c: &Connection, items: Vec<K>) -> Result<K, String> {
    match c.call(&K::list(items)).await {
        Ok(m) => Ok(m.decode().unwrap()),
        Err(IpcError::Remote(e)) => Err(e),
        Err(e) => panic!("call failed: {e}"),
    }
}

fn long(k: K) -> i64 {
    match k {
        K::Atom(Atom::Long(j)) => j,
        other => panic!("not a long: {other:?}"),
    }
}

async fn publish(c: &Connection, stream: &str, msg: K) -> i64 {
    long(call(c, vec![K::sym(".rt.pub"), K::sym(stream), msg]).await.unwrap())
}

fn upd(table: &str, x: i64) -> K {
    K::list(vec![K::sym("upd"), K::sym(table), K::long(x)])
}

async fn next(sub: &mut Subscriber) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
        .unwrap()
        .expect("connection open")
}

async fn next_msg(sub: &mut Subscriber) -> (K, i64) {
    match next(sub).await {
        Delivery::Message { value, pos, .. } => (value, pos),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn streams(p: &Process) -> Value {
    let (status, body) = http(p.addr("http"), "GET", "/api/streams").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `/api/streams` until `f` holds for stream `s`.
async fn wait_for(p: &Process, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = streams(p).await;
        if f(&v["streams"]["s"]) {
            return v["streams"]["s"].clone();
        }
        assert!(Instant::now() < deadline, "waited too long for {what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn empty_dict() -> K {
    K::dict(K::list(vec![]), K::list(vec![]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_sync_async_latest() {
    let dir = tmpdir("basic");
    let p = node(&dir, 0, &["--stream", "s", "--stream", "t"]);
    let c = connect(&p).await;
    let p1 = publish(&c, "s", upd("trade", 1)).await;
    assert_eq!(p1, 0, "the first session is 0, as in RT's reset example (130 -> 2^44)");
    // async: no answer, but on the same connection it is appended before what follows
    c.send_async(&K::list(vec![K::sym(".rt.pub"), K::sym("s"), upd("trade", 2)])).unwrap();
    let p3 = publish(&c, "s", upd("quote", 3)).await;
    assert!(p3 > p1);
    let latest = long(call(&c, vec![K::sym(".rt.get_latest_position"), K::sym("s")]).await.unwrap());
    assert!(latest > p3);

    // from the start: all three, each with the position after it
    let mut sub = Subscriber::connect(&ipc(&p), "s", From::Start).await.unwrap();
    assert_eq!(sub.start(), p1);
    let (m1, after1) = next_msg(&mut sub).await;
    assert_eq!(m1, upd("trade", 1));
    let (m2, _) = next_msg(&mut sub).await;
    assert_eq!(m2, upd("trade", 2));
    let (m3, after3) = next_msg(&mut sub).await;
    assert_eq!((m3, after3), (upd("quote", 3), latest));
    // from a position handed out: that message again; from `latest`: only new ones
    let mut again = Subscriber::connect(&ipc(&p), "s", From::Position(after1)).await.unwrap();
    assert_eq!(next_msg(&mut again).await.0, upd("trade", 2));
    let mut new = Subscriber::connect(&ipc(&p), "s", From::Latest).await.unwrap();
    assert_eq!(new.start(), latest);
    publish(&c, "s", upd("trade", 4)).await;
    assert_eq!(next_msg(&mut new).await.0, upd("trade", 4));
    assert_eq!(next_msg(&mut sub).await.0, upd("trade", 4));
    // streams are separate
    let t1 = publish(&c, "t", K::long(9)).await;
    assert_eq!(t1, 0);

    // refusals, with the catalog's words
    let e = call(&c, vec![K::sym(".rt.pub"), K::sym("nosuch"), K::long(1)]).await.unwrap_err();
    assert_eq!(e, "unknown stream: nosuch");
    let e = c.query("1+1").await.unwrap_err().to_string();
    assert!(e.contains("bad request"), "{e}");
    let e = call(&c, vec![K::sym(".rt.sub"), K::sym("s"), K::long(latest + (1 << 20)), empty_dict()])
        .await
        .unwrap_err();
    assert!(e.starts_with("bad request"), "{e}");
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

/// The subscriber's pushes on a raw connection: (callback; stream; x; y).
async fn raw_push(r: &mut Receiver) -> Vec<K> {
    let m = tokio::time::timeout(WAIT, r.recv()).await.expect("a push in time").expect("open");
    let Incoming::Async(m) = m else { panic!("not async") };
    match m.decode().unwrap() {
        K::List(_, items) => items,
        other => panic!("not a list: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_callbacks_pause_resume_unsub() {
    let dir = tmpdir("filters");
    let p = node(&dir, 0, &[]);
    let c = connect(&p).await;
    let (sender, mut r) = connect(&p).await.split();
    let opts = K::dict(
        K::syms(["msg", "event", "filter"]),
        K::list(vec![K::sym("onMsg"), K::sym("onEvent"), K::syms(["trade", "quote"])]),
    );
    let start =
        sender.call(&K::list(vec![K::sym(".rt.sub"), K::sym("s"), K::sym("latest"), opts])).await.unwrap();
    assert!(matches!(start.decode().unwrap(), K::Atom(Atom::Long(_))));
    for (t, x) in [("trade", 1), ("news", 2), ("quote", 3)] {
        publish(&c, "s", upd(t, x)).await;
    }
    publish(&c, "s", K::long(4)).await; // no leading symbol: filtered out
    publish(&c, "s", K::list(vec![K::sym("trade"), K::long(5)])).await; // one leading symbol
    let got: Vec<K> = vec![raw_push(&mut r).await, raw_push(&mut r).await, raw_push(&mut r).await]
        .into_iter()
        .map(|items| {
            assert_eq!(items[0], K::sym("onMsg"));
            assert_eq!(items[1], K::sym("s"));
            items[2].clone()
        })
        .collect();
    assert_eq!(got, vec![upd("trade", 1), upd("quote", 3), K::list(vec![K::sym("trade"), K::long(5)])]);

    // pause: nothing published afterwards arrives until resume
    sender.call(&K::list(vec![K::sym(".rt.pause"), K::sym("s")])).await.unwrap();
    let v = wait_for(&p, "the subscription paused", |s| s["subscribers"][0]["paused"] == true).await;
    assert_eq!(v["subscribers"][0]["filter"], serde_json::json!(["quote", "trade"]));
    publish(&c, "s", upd("trade", 6)).await;
    let latest = publish(&c, "s", upd("trade", 7)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.try_recv().is_none(), "a paused subscription got a message");
    sender.call(&K::list(vec![K::sym(".rt.resume"), K::sym("s")])).await.unwrap();
    assert_eq!(raw_push(&mut r).await[2], upd("trade", 6));
    assert_eq!(raw_push(&mut r).await[2], upd("trade", 7));
    assert!(latest > 0);

    // unsub: nothing more; pausing what is not subscribed is an error
    sender.call(&K::list(vec![K::sym(".rt.unsub"), K::sym("s")])).await.unwrap();
    publish(&c, "s", upd("trade", 8)).await;
    let e = sender.call(&K::list(vec![K::sym(".rt.pause"), K::sym("s")])).await.unwrap_err().to_string();
    assert!(e.contains("not subscribed to s"), "{e}");
    wait_for(&p, "no subscriber", |s| s["subscribers"].as_array().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.try_recv().is_none(), "an unsubscribed connection got a message");
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

fn hdr(id: i64, key: &str) -> K {
    K::dict(K::syms(["id", "dedup"]), K::list(vec![K::long(id), K::sym(key)]))
}

async fn pub_dedup(c: &Connection, x: i64, id: i64, key: &str) -> Result<K, String> {
    call(c, vec![K::sym(".rt.pub"), K::sym("s"), K::long(x), hdr(id, key)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_drops_repeats_and_watermarks_survive_restarts() {
    let dir = tmpdir("dedup");
    let mut p = node(&dir, 0, &[]);
    let port = p.port("ipc");
    let c = connect(&p).await;
    for id in [1, -2, 3] {
        pub_dedup(&c, id, id, "k").await.unwrap();
    }
    let e = pub_dedup(&c, 99, 2, "k").await.unwrap_err();
    assert_eq!(e, "duplicate: k id 2 at or below the watermark 3");
    pub_dedup(&c, 1, 1, "other").await.unwrap(); // keys are independent
    let v = streams(&p).await;
    assert_eq!(v["streams"]["s"]["dedup_watermarks"], serde_json::json!({"k": 3, "other": 1}));
    assert_eq!(v["streams"]["s"]["duplicates"], 1);

    // SIGKILL: the watermarks come back from the log
    p.kill();
    let p = node(&dir, port, &[]);
    let c = connect(&p).await;
    assert!(pub_dedup(&c, 0, 3, "k").await.unwrap_err().starts_with("duplicate"));
    pub_dedup(&c, 4, -4, "k").await.unwrap();
    // SIGTERM: stored in the watermarks file, and still there after
    let mut p = p;
    assert!(p.terminate().success());
    assert!(dir.join("s/dedup.watermarks").exists());
    let p = node(&dir, port, &[]);
    let c = connect(&p).await;
    assert!(pub_dedup(&c, 0, 4, "k").await.unwrap_err().starts_with("duplicate"));
    pub_dedup(&c, 5, 5, "k").await.unwrap();
    // the subscriber sees each accepted message once
    let mut sub = Subscriber::connect(&ipc(&p), "s", From::Start).await.unwrap();
    let mut xs = Vec::new();
    for _ in 0..6 {
        xs.push(long(next_msg(&mut sub).await.0));
    }
    assert_eq!(xs, vec![1, -2, 3, 1, 4, 5]);
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_event_and_tail() {
    let dir = tmpdir("reset");
    let p = node(&dir, 0, &[]);
    let c = connect(&p).await;
    publish(&c, "s", upd("trade", 1)).await;
    let mut sub = Subscriber::connect(&ipc(&p), "s", From::Start).await.unwrap();
    let (_, end) = next_msg(&mut sub).await;
    // `qmesh rt reset` through the HTTP API
    let out = std::process::Command::new(bin())
        .args(["rt", "reset", &p.addr("http").to_string(), "s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["from"], end);
    let to = answer["to"].as_i64().unwrap();
    assert_eq!(to, 1 << 44, "a reset starts session 1: {to}");
    match next(&mut sub).await {
        Delivery::Event { event, p1, p2, .. } => assert_eq!((event.as_str(), p1, p2), ("reset", end, to)),
        other => panic!("expected reset, got {other:?}"),
    }
    let p2 = publish(&c, "s", upd("trade", 2)).await;
    assert_eq!(p2, to);
    assert_eq!(next_msg(&mut sub).await.0, upd("trade", 2));
    // an unknown stream is a 404 with the catalog's word
    let (status, body) = http(p.addr("http"), "POST", "/api/streams/nope/reset").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown stream"), "{body}");

    // `qmesh rt tail` replays the same sequence: message, event, message
    let out = std::process::Command::new(bin())
        .args(["rt", "tail", &ipc(&p), "s", "--from", "start", "--count", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let first = 0.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("subscribed to s from {first}"), "{text}");
    assert_eq!(lines[1], end.to_string(), "{text}");
    assert_eq!(&lines[2..5], &["`upd", "`trade", "1"], "{text}");
    assert_eq!(lines[5], format!("reset {end} {to}"), "{text}");

    // A node that goes away under a tail is an error, not a clean end.
    let mut tail = std::process::Command::new(bin())
        .args(["rt", "tail", &ipc(&p), "s", "--from", "start", "--count", "100"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(tail.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first_line).unwrap();
    assert!(first_line.starts_with("subscribed to s"), "{first_line}");
    drop(p);
    // Keep reading stdout so the tail never writes into a closed pipe.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = tail.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tail must fail when the node goes away: {err}");
    assert!(err.contains("connection closed"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Publishes `n` messages of about `bytes` bytes each; returns their positions.
async fn fill(c: &Connection, n: usize, bytes: usize, header: Option<K>) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..n {
        let x = K::list(vec![
            K::sym("upd"),
            K::sym("t"),
            K::Vector(qmesh_codec::Attr::None, Vector::Byte(vec![i as u8; bytes])),
        ]);
        let mut req = vec![K::sym(".rt.pub"), K::sym("s"), x];
        if let Some(h) = &header {
            req.push(h.clone());
        }
        out.push(long(call(c, req).await.unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_skip_forward() {
    let dir = tmpdir("prune");
    let p = node(&dir, 0, &["--segment-bytes", "4096"]);
    let c = connect(&p).await;
    let pos = fill(&c, 60, 200, None).await;
    let before = streams(&p).await["streams"]["s"]["segments"].as_u64().unwrap();
    assert!(before >= 3, "{before} segments");
    // a lead subscriber prunes everything before message 40
    let n = long(call(&c, vec![K::sym(".rt.prune"), K::sym("s"), K::long(pos[40])]).await.unwrap());
    assert!(n >= 1, "pruned {n}");
    let v = streams(&p).await["streams"]["s"].clone();
    let first = v["first"].as_i64().unwrap();
    assert!(first > pos[0] && first <= pos[40], "first {first}");
    assert_eq!(v["segments"].as_u64().unwrap(), before - n as u64);
    // a subscriber at an archived position skips forward to the first unarchived segment
    let mut sub = Subscriber::connect(&ipc(&p), "s", From::Position(pos[1])).await.unwrap();
    match next(&mut sub).await {
        Delivery::Event { event, p1, p2, .. } => {
            assert_eq!((event.as_str(), p1, p2), ("skip-forward", pos[1], first))
        }
        other => panic!("expected skip-forward, got {other:?}"),
    }
    let k = pos.iter().position(|&x| x == first).unwrap();
    let (m, _) = next_msg(&mut sub).await;
    let K::List(_, items) = m else { panic!() };
    assert_eq!(items[2], K::Vector(qmesh_codec::Attr::None, Vector::Byte(vec![k as u8; 200])));
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_size_age_and_disk_policies() {
    // size: at most ~3 segments' worth is kept
    let dir = tmpdir("arch-size");
    let p = node(
        &dir,
        0,
        &["--segment-bytes", "4096", "--archive-max-bytes", "12000", "--archive-interval", "50ms"],
    );
    let c = connect(&p).await;
    let pos = fill(&c, 80, 200, None).await;
    let v = wait_for(&p, "the size policy", |s| s["bytes"].as_u64().unwrap() <= 12000).await;
    assert!(v["first"].as_i64().unwrap() > pos[0]);
    drop(p);

    // age: segments of old messages (ts 2001) go, new ones stay
    let dir2 = tmpdir("arch-age");
    let p =
        node(&dir2, 0, &["--segment-bytes", "4096", "--archive-max-age", "1h", "--archive-interval", "50ms"]);
    let c = connect(&p).await;
    let old = K::dict(K::syms(["ts"]), K::list(vec![K::Atom(Atom::Timestamp(366 * 86_400 * 1_000_000_000))]));
    fill(&c, 40, 200, Some(old)).await;
    let new = fill(&c, 40, 200, None).await;
    let v = wait_for(&p, "the age policy", |s| s["first"].as_i64().unwrap() >= new[0] - 4096).await;
    assert!(v["first"].as_i64().unwrap() <= new[0], "a segment of new messages was archived: {v:#}");
    drop(p);

    // disk: any use above 0.0001 % removes every rolled segment
    let dir3 = tmpdir("arch-disk");
    let p = node(
        &dir3,
        0,
        &["--segment-bytes", "4096", "--archive-max-disk-percent", "0.0001", "--archive-interval", "50ms"],
    );
    let c = connect(&p).await;
    fill(&c, 40, 200, None).await;
    wait_for(&p, "the disk policy", |s| s["segments"] == 1).await;
    drop(p);
    for d in [dir, dir2, dir3] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badtail_and_badmsg_events() {
    let dir = tmpdir("bad");
    let mut p = node(&dir, 0, &["--segment-bytes", "4096"]);
    let port = p.port("ipc");
    let c = connect(&p).await;
    let pos = fill(&c, 40, 200, None).await;
    assert!(p.terminate().success());
    // flip a payload byte of message 3 (in the first, rolled, segment)
    let seg = dir.join("s/log.0000000.00000");
    let mut bytes = std::fs::read(&seg).unwrap();
    let off = 32 + (pos[3] as usize & ((1 << 30) - 1)) + 100;
    bytes[off] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    // a record whose checksum is right but whose payload is no kdb+ object
    {
        let (mut log, _) = qmesh_log::Log::open(
            dir.join("s"),
            qmesh_log::LogOptions { segment_size: 4096, ..Default::default() },
        )
        .unwrap();
        let h = qmesh_log::RecordHeader { on: b"test", ts: 0, id: i64::MIN, to: i64::MIN, dedup: None };
        log.append(&h, &[0x63, 0x0b, 0x00, 0xff, 0xff, 0xff, 0x7f]).unwrap();
        log.append(&h, &qmesh_codec::RawObject::encode(&K::long(77)).bytes()[..]).unwrap();
        log.sync().unwrap();
    }
    let p = node(&dir, port, &["--segment-bytes", "4096"]);
    let mut sub = Subscriber::connect(&ipc(&p), "s", From::Start).await.unwrap();
    for _ in 0..3 {
        next_msg(&mut sub).await;
    }
    let second_segment = 1i64 << 30;
    match next(&mut sub).await {
        Delivery::Event { event, p1, p2, .. } => {
            assert_eq!((event.as_str(), p1, p2), ("badtail", pos[3], second_segment))
        }
        other => panic!("expected badtail, got {other:?}"),
    }
    // on through the rest, to the bad message and the good one after it
    let mut last = None;
    loop {
        match next(&mut sub).await {
            Delivery::Message { value, .. } if value == K::long(77) => break,
            Delivery::Message { .. } => {}
            Delivery::Event { event, p1, p2, .. } => {
                assert_eq!(event, "badmsg");
                assert!(p2 > p1);
                last = Some(p1);
            }
        }
    }
    assert!(last.is_some(), "no badmsg event");
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

/// A position inside a record (a client's typo: a real position + 3) is a clear error, never read as a corrupt
/// record (which would report `badtail` and skip the rest of the segment): `.rt.sub`, `.rt.prune` and
/// `.rt.ship.pull` answer `bad request: position … is not the start of a record …`, the connection stays usable, and
/// `qmesh rt tail --from` fails with the same words. The real position, and a corrupt record's own position, work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_inside_a_record_is_refused() {
    let dir = tmpdir("inside");
    let mut p = node(&dir, 0, &["--segment-bytes", "4096"]);
    let c = connect(&p).await;
    let pos = fill(&c, 30, 200, None).await;
    let bad = pos[5] + 3;
    for req in [
        vec![K::sym(".rt.sub"), K::sym("s"), K::long(bad), empty_dict()],
        vec![K::sym(".rt.prune"), K::sym("s"), K::long(bad)],
        vec![K::sym(".rt.ship.pull"), K::sym("s"), K::long(bad)],
    ] {
        let what = format!("{:?}", req[0]);
        let e = call(&c, req).await.expect_err(&what);
        assert!(
            e.starts_with(&format!("bad request: position {bad} is not the start of a record")),
            "{what}: {e}"
        );
        assert!(e.contains(&format!("inside the record at {}", pos[5])), "{what}: {e}");
        assert!(e.contains(&format!("the next record boundary is {}", pos[6])), "{what}: {e}");
    }
    // the connection is still usable, and nothing was pruned
    let latest = long(call(&c, vec![K::sym(".rt.get_latest_position"), K::sym("s")]).await.unwrap());
    assert!(latest > pos[29]);
    assert_eq!(streams(&p).await["streams"]["s"]["first"], 0);
    // the Rust client gets the node's error; from the real position it gets message 5
    match Subscriber::connect(&ipc(&p), "s", From::Position(bad)).await {
        Err(qmesh_rt::client::ClientError::Ipc(IpcError::Remote(e))) => {
            assert!(e.contains("is not the start of a record"), "{e}")
        }
        other => panic!("expected the node's refusal, got {other:?}"),
    }
    let mut sub = Subscriber::connect(&ipc(&p), "s", From::Position(pos[5])).await.unwrap();
    assert_eq!(sub.start(), pos[5]);
    let (m, _) = next_msg(&mut sub).await;
    let K::List(_, items) = m else { panic!() };
    assert_eq!(items[2], K::Vector(qmesh_codec::Attr::None, Vector::Byte(vec![5; 200])));
    drop(sub);
    // `qmesh rt tail --from` a position inside a record: an error naming it, not a badtail
    let out = std::process::Command::new(bin())
        .args(["rt", "tail", &ipc(&p), "s", "--from", &bad.to_string(), "--count", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("position {bad} is not the start of a record")), "{err}");
    // a corrupt record's own position is still a start: it reads as badtail there
    let port = p.port("ipc");
    assert!(p.terminate().success());
    let seg = dir.join("s/log.0000000.00000");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[32 + (pos[5] as usize & ((1 << 30) - 1)) + 100] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let p = node(&dir, port, &["--segment-bytes", "4096"]);
    let mut sub = Subscriber::connect(&ipc(&p), "s", From::Position(pos[5])).await.unwrap();
    match next(&mut sub).await {
        Delivery::Event { event, p1, p2, .. } => {
            assert_eq!((event.as_str(), p1, p2), ("badtail", pos[5], 1 << 30))
        }
        other => panic!("expected badtail, got {other:?}"),
    }
    let c = connect(&p).await;
    let e = call(&c, vec![K::sym(".rt.sub"), K::sym("s"), K::long(bad), empty_dict()]).await.unwrap_err();
    assert!(e.contains("is not the start of a record"), "{e}");
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_too_large_is_refused_from_the_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tmpdir("large");
    let p = node(&dir, 0, &[]);
    // a sync message whose header claims more than the payload limit plus
    // the envelope: refused before the body is read (no 1 GiB is sent)
    let mut s = tokio::net::TcpStream::connect(p.addr("ipc")).await.unwrap();
    s.write_all(b"big:\x03\x00").await.unwrap();
    let mut cap = [0u8; 1];
    s.read_exact(&mut cap).await.unwrap();
    let total = qmesh_rt::limits::MAX_PAYLOAD_BYTES + qmesh_rt::limits::MAX_ENVELOPE_BYTES + 1;
    let mut h = vec![1u8, 1, 0, (total >> 32) as u8];
    h.extend_from_slice(&(total as u32).to_le_bytes());
    s.write_all(&h).await.unwrap();
    s.write_all(&[0u8; 4096]).await.unwrap();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).await.unwrap();
    let n = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
    let mut body = vec![0u8; n - 8];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(body[0], 0x80);
    assert!(body[1..].starts_with(b"message too large"), "{:?}", String::from_utf8_lossy(&body));
    // nothing was written
    let c = connect(&p).await;
    let latest = long(call(&c, vec![K::sym(".rt.get_latest_position"), K::sym("s")]).await.unwrap());
    assert_eq!(latest, 0);
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykx_publishers_and_u_upd() {
    let Some(py) = python() else { return };
    let dir = tmpdir("pykx");
    let p = node(&dir, 0, &["--stream", "s", "--stream", "other"]);
    let out = python_command(&py)
        .arg(script("rt_pykx_publisher.py"))
        .arg(p.port("ipc").to_string())
        .arg("s")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "PyKX checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut sub = Subscriber::connect(&ipc(&p), "s", From::Start).await.unwrap();
    let (m1, _) = next_msg(&mut sub).await;
    let (m2, _) = next_msg(&mut sub).await;
    let (m3, _) = next_msg(&mut sub).await;
    let (m4, _) = next_msg(&mut sub).await;
    let K::List(_, items) = &m1 else { panic!("{m1:?}") };
    assert_eq!(&items[..2], &[K::sym("upd"), K::sym("trade")]);
    assert!(matches!(items[2], K::Table(_)), "{m1:?}");
    assert_eq!(m2, upd("quote", 7));
    // kdb+tick's .u.upd became (`upd;`trade;data) on the default stream
    assert_eq!(m3, m1);
    assert_eq!(m4, K::long(42));
    let v = streams(&p).await;
    assert_eq!(v["default"], "s");
    assert_eq!(v["streams"]["s"]["publishers"]["pykx"]["last_id"], 1);
    let (_, metrics) = http(p.addr("http"), "GET", "/metrics").await;
    assert!(metrics.contains("qmesh_rt_appended_messages_total{stream=\"s\"} 4"), "{metrics}");
    assert!(metrics.contains("qmesh_rt_duplicates_total{stream=\"s\"} 1"), "{metrics}");
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

/// The number of messages the crash test sends (`QMESH_RT_CRASH_MESSAGES`;
/// the figure is 1,000,000).
fn crash_messages() -> usize {
    std::env::var("QMESH_RT_CRASH_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_two_sync_publishers_node_killed_repeatedly() {
    let Some(py) = python() else { return };
    const KILLS: usize = 4;
    let total = crash_messages();
    let per = total / 2;
    let dir = tmpdir("crash");
    let mut p = node(&dir, 0, &["--segment-bytes", "8MiB"]);
    let port = p.port("ipc");
    let publishers: Vec<std::process::Child> = ["A", "B"]
        .iter()
        .map(|key| {
            python_command(&py)
                .arg(script("rt_crash_publisher.py"))
                .args([port.to_string(), "s".into(), format!("pub{key}"), per.to_string(), "2000".into()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();

    // the subscriber: reconnects from its last position whenever the node goes
    let addr = format!("127.0.0.1:{port}");
    let sub = tokio::spawn(async move {
        let mut seen: Vec<(Vec<u8>, i64)> = Vec::with_capacity(total);
        let mut pos: Option<i64> = None;
        let mut resubscribes = 0;
        while seen.len() < total {
            let from = pos.map_or(From::Start, From::Position);
            let mut s = match Subscriber::connect(&addr, "s", from).await {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            resubscribes += 1;
            while let Ok(Some(d)) = s.next().await {
                let Delivery::Message { value, pos: after, .. } = d else { panic!("unexpected event {d:?}") };
                let K::List(_, items) = value else { panic!("{value:?}") };
                let (K::Atom(Atom::Symbol(key)), K::Atom(Atom::Long(id))) = (&items[0], &items[1]) else {
                    panic!()
                };
                seen.push((key.to_vec(), *id));
                pos = Some(after);
                if seen.len() == total {
                    break;
                }
            }
        }
        (seen, resubscribes)
    });

    // kill the node whenever the log has grown by another share, then restart it
    let step = total / (KILLS + 1);
    for k in 1..=KILLS {
        let target = (k * step) as i64;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let v = streams(&p).await;
            let n: i64 = ["pubA", "pubB"]
                .iter()
                .map(|key| v["streams"]["s"]["dedup_watermarks"][key].as_i64().unwrap_or(0))
                .sum();
            if n >= target {
                break;
            }
            assert!(Instant::now() < deadline, "publishers stalled at {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.kill();
        p = node(&dir, port, &["--segment-bytes", "8MiB"]);
    }
    for child in publishers {
        let status = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
        assert!(status.status.success(), "a publisher failed: {}", String::from_utf8_lossy(&status.stdout));
        eprintln!("publisher: {}", String::from_utf8_lossy(&status.stdout).trim());
    }
    let (seen, resubscribes) =
        tokio::time::timeout(Duration::from_secs(300), sub).await.expect("all delivered").unwrap();
    eprintln!("crash test: {total} messages, {KILLS} kills, subscriber (re)subscribed {resubscribes} times");
    // every message exactly once, each publisher's in its own order
    let mut next_id = std::collections::HashMap::new();
    for (key, id) in &seen {
        let want = next_id.entry(key.clone()).or_insert(1i64);
        assert_eq!(*id, *want, "publisher {} out of order or repeated", String::from_utf8_lossy(key));
        *want += 1;
    }
    assert_eq!(next_id.values().map(|n| n - 1).sum::<i64>() as usize, total);
    // one order: a fresh subscriber from the start sees the same sequence
    let mut fresh = Subscriber::connect(&format!("127.0.0.1:{port}"), "s", From::Start).await.unwrap();
    for (i, (key, id)) in seen.iter().enumerate() {
        let (m, _) = next_msg(&mut fresh).await;
        assert_eq!(m, K::list(vec![K::sym(key), K::long(*id)]), "message {i} differs on replay");
    }
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

/// A stream whose position space is used up (every one of a session's
/// 16,384 rolls taken: here one record per 64-byte segment) refuses appends
/// with the catalog's `limit` and what to do, `/healthz` names the fault,
/// and a reset (a new session) clears both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_position_space_is_a_health_fault_until_reset() {
    let dir = tmpdir("exhausted");
    let p = node(&dir, 0, &["--segment-bytes", "64", "--durability", "never"]);
    let c = connect(&p).await;
    let rolls = qmesh_log::MAX_ROLL as i64 + 1;
    for x in 0..rolls - 1 {
        c.send_async(&K::list(vec![K::sym(".rt.pub"), K::sym("s"), upd("trade", x)])).unwrap();
    }
    // the last roll's record, answered after every async one before it
    let last = publish(&c, "s", upd("trade", rolls - 1)).await;
    assert_eq!(last >> 30, rolls - 1, "the session's last roll: {last:#x}");
    assert_eq!(http(p.addr("http"), "GET", "/healthz").await.0, 200);

    let refused = call(&c, vec![K::sym(".rt.pub"), K::sym("s"), upd("trade", rolls)]).await.unwrap_err();
    assert!(refused.starts_with("limit"), "{refused}");
    assert!(refused.contains("qmesh rt reset HOST:HTTP_PORT s"), "says what to do: {refused}");
    let (status, body) = http(p.addr("http"), "GET", "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("fault stream s: position space exhausted"), "{body}");

    let (status, body) = http(p.addr("http"), "POST", "/api/streams/s/reset").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(p.addr("http"), "GET", "/healthz").await.0, 200);
    assert_eq!(publish(&c, "s", upd("trade", rolls)).await, 1 << 44, "session 1, roll 0, offset 0");
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}
