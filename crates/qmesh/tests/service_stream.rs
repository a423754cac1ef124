//! The query service fed from a stream, as real processes, over log
//! shipping: a `qmesh rt` node, `qmesh feed --count` (a publisher with a
//! local log), and `qmesh service --rt` instances (subscribers with a local
//! copy of the node's log) — one killed with SIGKILL mid-stream and
//! restarted from its snapshot and its copy. Its tables must equal, row for
//! row, those of an instance that never died and of one built afterwards
//! from the whole stream. The node killed with SIGKILL while the feed
//! publishes loses nothing once it returns. Waiting is for states
//! (positions in `/api/stream`, the local log growing), never for a time.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qmesh_codec::K;
use qmesh_ipc::{Address, ClientOptions, Connection};
use qmesh_testkit::Process;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qmesh")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qmesh-svc-stream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn service(node: &Process, dir: Option<&Path>, name: &str) -> Process {
    service_every(node, dir, name, "100ms")
}

/// A stream-fed service writing a snapshot every `interval`.
fn service_every(node: &Process, dir: Option<&Path>, name: &str, interval: &str) -> Process {
    let rt = format!("127.0.0.1:{}", node.port("ipc"));
    let mut args = vec![
        "service",
        "--name",
        name,
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--http",
        "0",
        "--rt",
        &rt,
        "--stream",
        "trades",
        "--snapshot-interval",
        interval,
    ];
    let d;
    if let Some(dir) = dir {
        d = dir.to_str().unwrap().to_string();
        args.extend_from_slice(&["--data", &d]);
    }
    Process::qmesh(bin(), &args, &["ipc", "http"])
}

fn stream_status(p: &Process) -> Value {
    get(p.addr("http"), "/api/stream")
}

fn wait_for(p: &Process, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = stream_status(p);
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "waiting for {what}; last status {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn query(p: &Process, sql: &str) -> K {
    let addr = Address::parse(&format!("127.0.0.1:{}", p.port("ipc"))).unwrap();
    let c = Connection::connect(&addr, ClientOptions::default()).await.unwrap();
    c.call(&K::string(sql)).await.unwrap().decode().unwrap()
}

fn rows(k: &K) -> usize {
    match k {
        K::Table(t) => t.row_count(),
        other => panic!("not a table: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_comes_back_from_its_snapshot_without_gap_or_duplicate() {
    const MESSAGES: u64 = 12_000;
    const ROWS: u64 = 2;
    let root = tmpdir("kill");
    let node = Process::qmesh(
        bin(),
        &[
            "rt",
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--http",
            "0",
            "--data",
            root.join("node").to_str().unwrap(),
            "--stream",
            "trades",
        ],
        &["ipc", "http"],
    );
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let a = service(&node, Some(&dir_a), "FEEDA");
    let mut b = service(&node, Some(&dir_b), "FEEDB");

    let rt = format!("127.0.0.1:{}", node.port("ipc"));
    let feed_path = root.join("feed").to_str().unwrap().to_string();
    let count = MESSAGES.to_string();
    let rows_arg = ROWS.to_string();
    let feed = Process::qmesh(
        bin(),
        &[
            "feed", "--rt", &rt, "--stream", "trades", "--rate", "3000", "--count", &count, "--batch", "50",
            "--rows", &rows_arg, "--seed", "7", "--path", &feed_path,
        ],
        &[],
    );

    // B has written a snapshot holding part of the stream: kill it hard
    let before = wait_for(&b, "a snapshot of part of the stream", |s| {
        s["snapshot"]["position"].as_i64().unwrap_or(0) > 0
    });
    b.kill();
    let killed_at = before["position"].as_i64().unwrap();

    // the copy of the stream is kept beside the snapshot
    assert!(dir_b.join("rt").join("trades").is_dir(), "B's local copy under its data dir");
    // restarted on the same directory: it loads the snapshot (not the start)
    let b = service(&node, Some(&dir_b), "FEEDB");
    let restored = stream_status(&b);
    let restored_pos = restored["restored_position"].as_i64().expect("restored from a snapshot");
    assert!(restored_pos > 0, "{restored}");

    // the feed finishes; A, which never died, says where the stream ends
    let line = feed.next_line(WAIT).expect("the feed's report line");
    assert!(line.starts_with(&format!("feed published {MESSAGES} messages")), "{line}");
    let sa = wait_for(&a, "A at the end of the stream", |s| s["applied"].as_u64() == Some(MESSAGES));
    let end = sa["position"].as_i64().unwrap();
    assert!(end > killed_at, "B was killed mid-stream ({killed_at} < {end})");

    let at_end = |s: &Value| s["position"].as_i64() == Some(end);
    let sb = wait_for(&b, "B at the end of the stream", at_end);
    // the restarted B applied only what came after its snapshot
    let applied_after = sb["applied"].as_u64().unwrap();
    assert!(applied_after < MESSAGES, "B replayed only the rest of the stream: {sb}");

    // C starts after the fact with no snapshot: the whole stream from its start
    let c = service(&node, None, "FEEDC");
    let sc = wait_for(&c, "C at the end of the stream", at_end);
    assert_eq!(sc["applied"].as_u64(), Some(MESSAGES), "{sc}");
    assert_eq!(sc["rejected"].as_u64(), Some(0), "{sc}");

    let mut total = 0;
    for table in ["trade", "quote"] {
        let sql = format!("select * from {table}");
        let (ta, tb, tc) = (query(&a, &sql).await, query(&b, &sql).await, query(&c, &sql).await);
        total += rows(&tc);
        assert_eq!(rows(&tb), rows(&tc), "{table}: B's rows");
        assert!(tb == tc, "{table}: B (killed and restarted) equals the whole stream, row for row");
        assert!(ta == tc, "{table}: A (never died) equals the whole stream, row for row");
    }
    assert_eq!(total as u64, MESSAGES * ROWS, "every row once");

    // the two instances agree on the same query
    let q = "select sym, count(*) as n, sum(size) as v, min(price) as lo, max(price) as hi from trade group by sym order by sym";
    assert_eq!(query(&a, q).await, query(&b, q).await);

    // an upd over IPC is refused: the stream is the only writer
    let addr = Address::parse(&format!("127.0.0.1:{}", a.port("ipc"))).unwrap();
    let conn = Connection::connect(&addr, ClientOptions::default()).await.unwrap();
    let err = conn.call(&K::list(vec![K::sym("upd"), K::sym("trade"), K::long(1)])).await.unwrap_err();
    assert!(err.to_string().contains("fed from stream"), "{err}");

    // metrics name the position and the snapshot's age
    let mut s = TcpStream::connect(a.addr("http")).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut m = String::new();
    s.read_to_string(&mut m).unwrap();
    assert!(m.contains(&format!("qmesh_service_stream_position {end}")), "{m}");
    assert!(m.contains("qmesh_service_stream_snapshot_age_seconds"), "{m}");
    assert!(m.contains(&format!("qmesh_service_stream_messages_total {MESSAGES}")), "{m}");

    drop((a, b, c, feed, node));
    let _ = std::fs::remove_dir_all(&root);
}

/// The node killed and restarted under a subscribed service: it
/// resubscribes from its position and misses nothing. SIGTERM writes a last
/// snapshot: a clean restart resubscribes from the very end, applying
/// nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_snapshots_the_end_and_the_node_going_away_is_survived() {
    let root = tmpdir("term");
    let node_dir = root.join("node");
    let node_args = |port: &str| -> Vec<String> {
        [
            "rt",
            "--bind",
            "127.0.0.1",
            "-p",
            port,
            "--http",
            "0",
            "--data",
            node_dir.to_str().unwrap(),
            "--stream",
            "trades",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = node_args("0");
    let mut node =
        Process::qmesh(bin(), &args.iter().map(String::as_str).collect::<Vec<_>>(), &["ipc", "http"]);
    let port = node.port("ipc").to_string();
    let rt = format!("127.0.0.1:{port}");
    let dir = root.join("svc");
    // no periodic snapshot within the test: only the one written at shutdown
    let mut svc = service_every(&node, Some(&dir), "TERM", "1h");
    let feed_path = root.join("feed").to_str().unwrap().to_string();
    let feed = |n: &str| {
        Process::qmesh(
            bin(),
            &[
                "feed", "--rt", &rt, "--stream", "trades", "--rate", "5000", "--count", n, "--path",
                &feed_path,
            ],
            &[],
        )
    };
    let f = feed("500");
    assert!(f.next_line(WAIT).unwrap().starts_with("feed published 500"));
    wait_for(&svc, "the end of the first batch", |s| s["applied"].as_u64() == Some(500));

    // the node goes away and comes back on the same port: the service resubscribes
    node.kill();
    wait_for(&svc, "the service to notice", |s| s["connected"] == false);
    let args = node_args(&port);
    let _node = Process::qmesh(bin(), &args.iter().map(String::as_str).collect::<Vec<_>>(), &["ipc", "http"]);
    wait_for(&svc, "the service to resubscribe", |s| s["connected"] == true);
    let f = feed("300");
    assert!(f.next_line(WAIT).unwrap().starts_with("feed published 300"));
    let s = wait_for(&svc, "the end of the second batch", |s| s["applied"].as_u64() == Some(800));
    let end = s["position"].as_i64().unwrap();
    let n = rows(&query(&svc, "select * from quote").await) + rows(&query(&svc, "select * from trade").await);
    assert_eq!(n, 800, "every message once across the node's restart");

    assert!(svc.terminate().success());
    let svc = service(&_node, Some(&dir), "TERM");
    let s = stream_status(&svc);
    assert_eq!(s["restored_position"].as_i64(), Some(end), "the last snapshot holds the end: {s}");
    let s = wait_for(&svc, "resubscribed", |s| s["connected"] == true);
    assert_eq!(s["applied"].as_u64(), Some(0), "nothing applied twice: {s}");
    let n = rows(&query(&svc, "select * from quote").await) + rows(&query(&svc, "select * from trade").await);
    assert_eq!(n, 800);
    drop(svc);
    let _ = std::fs::remove_dir_all(&root);
}

/// Bytes in the feed's local log directories under `path`.
fn local_log_bytes(path: &Path) -> u64 {
    let mut n = 0;
    for d in std::fs::read_dir(path).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            n += f.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    n
}

/// The node killed with SIGKILL while the feed publishes: the feed keeps
/// writing its local log while the node is down, the node restarted on the
/// same data directory takes the rest, and the service — which kept
/// serving its copy meanwhile — ends with every message exactly once, equal
/// row for row to an instance built afterwards from the whole stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_publishing_while_the_node_is_down_loses_nothing() {
    const MESSAGES: u64 = 6_000;
    let root = tmpdir("nodedown");
    let node_dir = root.join("node");
    let node_args = |port: &str| -> Vec<String> {
        [
            "rt",
            "--bind",
            "127.0.0.1",
            "-p",
            port,
            "--http",
            "0",
            "--data",
            node_dir.to_str().unwrap(),
            "--stream",
            "trades",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let start_node = |port: &str| {
        let args = node_args(port);
        Process::qmesh(bin(), &args.iter().map(String::as_str).collect::<Vec<_>>(), &["ipc", "http"])
    };
    let mut node = start_node("0");
    let port = node.port("ipc").to_string();
    let rt = format!("127.0.0.1:{port}");
    let svc = service(&node, Some(&root.join("svc")), "DOWN");
    let feed_path = root.join("feed");
    let count = MESSAGES.to_string();
    let fp = feed_path.to_str().unwrap().to_string();
    let feed = Process::qmesh(
        bin(),
        &[
            "feed", "--rt", &rt, "--stream", "trades", "--rate", "1000", "--count", &count, "--path", &fp,
            "--name", "downfeed",
        ],
        &[],
    );

    // the node has taken part of the stream: kill it hard, mid-feed
    wait_for(&svc, "part of the stream", |s| s["applied"].as_u64().unwrap_or(0) > 200);
    node.kill();
    let s = wait_for(&svc, "the service to see the node gone", |s| s["connected"] == false);
    let applied_at_kill = s["applied"].as_u64().unwrap();
    assert!(applied_at_kill < MESSAGES, "killed mid-feed: {s}");

    // the feed keeps publishing into its local log while the node is down
    let at_kill = local_log_bytes(&feed_path);
    let deadline = Instant::now() + WAIT;
    while local_log_bytes(&feed_path) <= at_kill + 4096 {
        assert!(Instant::now() < deadline, "the feed's local log did not grow while the node was down");
        std::thread::sleep(Duration::from_millis(20));
    }
    // the service still serves what it applied
    assert!(rows(&query(&svc, "select * from quote").await) > 0);

    // the node comes back on its data directory and port: the feed ships the rest
    let node = start_node(&port);
    let line = feed.next_line(WAIT).expect("the feed's report line");
    assert!(line.starts_with(&format!("feed published {MESSAGES} messages")), "{line}");
    let s = wait_for(&svc, "every message", |s| s["applied"].as_u64() == Some(MESSAGES));
    assert_eq!(s["rejected"].as_u64(), Some(0), "{s}");
    assert_eq!(s["connected"], true, "{s}");
    let end = s["position"].as_i64().unwrap();

    // an instance built afterwards from the whole stream holds the same rows
    let c = service(&node, None, "DOWNC");
    let sc = wait_for(&c, "C at the end of the stream", |s| s["position"].as_i64() == Some(end));
    assert_eq!(sc["applied"].as_u64(), Some(MESSAGES), "nothing lost, nothing twice: {sc}");
    let mut total = 0;
    for table in ["trade", "quote"] {
        let sql = format!("select * from {table}");
        let (a, c) = (query(&svc, &sql).await, query(&c, &sql).await);
        total += rows(&a);
        assert!(a == c, "{table}: the service across the node's crash equals the whole stream, row for row");
    }
    assert_eq!(total as u64, MESSAGES, "every message once");
    drop((svc, c, feed, node));
    let _ = std::fs::remove_dir_all(&root);
}

/// A service down while the node archives past its snapshot's position
/// gets a `skip-forward` event at restart — logged, counted and shown in
/// `/api/stream` — not silence; it then follows the stream from the first
/// position the node still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_into_archived_segments_says_skip_forward() {
    let root = tmpdir("archived");
    let node = Process::qmesh(
        bin(),
        &[
            "rt",
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--http",
            "0",
            "--data",
            root.join("node").to_str().unwrap(),
            "--stream",
            "trades",
            "--segment-bytes",
            "64KiB",
            "--archive-max-bytes",
            "256KiB",
            "--archive-interval",
            "100ms",
        ],
        &["ipc", "http"],
    );
    let rt = format!("127.0.0.1:{}", node.port("ipc"));
    let fp = root.join("feed").to_str().unwrap().to_string();
    let feed = |n: &str| {
        Process::qmesh(
            bin(),
            &["feed", "--rt", &rt, "--stream", "trades", "--rate", "20000", "--count", n, "--path", &fp],
            &[],
        )
    };
    let dir = root.join("svc");
    let mut svc = service(&node, Some(&dir), "ARCH");
    assert!(feed("300").next_line(WAIT).unwrap().starts_with("feed published 300"));
    let s = wait_for(&svc, "a snapshot of the first messages", |s| {
        s["applied"].as_u64() == Some(300) && s["snapshot"]["position"] == s["position"]
    });
    let snap = s["position"].as_i64().unwrap();
    svc.kill();

    // while it is down the node rolls and archives past the snapshot's position
    let f = feed("20000");
    let deadline = Instant::now() + WAIT;
    loop {
        let v = get(node.addr("http"), "/api/streams");
        if v["streams"]["trades"]["first"].as_i64().unwrap_or(0) > snap {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not archive past {snap}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(f.next_line(WAIT).unwrap().starts_with("feed published 20000"));

    let svc = service(&node, Some(&dir), "ARCH");
    let s = wait_for(&svc, "the skip-forward event", |s| s["events"]["skip-forward"].as_u64() >= Some(1));
    assert_eq!(s["restored_position"].as_i64(), Some(snap), "{s}");
    // then it follows what the node still holds (the archiver may still be
    // removing segments as the service catches up: compare as it settles)
    let _ = s;
    let latest = get(node.addr("http"), "/api/streams")["streams"]["trades"]["latest"].as_i64().unwrap();
    wait_for(&svc, "the service caught up with the node after skipping forward", |s| {
        s["position"].as_i64() == Some(latest)
    });
    // the metric names the event too
    let mut c = TcpStream::connect(svc.addr("http")).unwrap();
    write!(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut m = String::new();
    c.read_to_string(&mut m).unwrap();
    assert!(m.contains("qmesh_service_stream_events_total{event=\"skip-forward\"}"), "{m}");
    drop((svc, node));
    let _ = std::fs::remove_dir_all(&root);
}
