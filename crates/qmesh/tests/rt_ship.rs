//! Log shipping as real processes: `Publisher`s (`qmesh rt publish`, a hidden subcommand) write local logs that
//! are shipped to a `qmesh rt` node, and a `Subscriber` (`qmesh rt subscribe`, hidden too) copies the node's log and
//! reads its copy, while the node, a publisher and the subscriber are killed with SIGKILL and restarted. Nothing
//! acknowledged is lost or duplicated. Waiting is for states, never for a time.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::rt::{latest, tmpdir as tmp};
use qmesh_codec::{Atom, K};
use qmesh_rt::From;
use qmesh_rt::client::{Delivery, Subscriber};
use qmesh_testkit::Process;

fn tmpdir(name: &str) -> PathBuf {
    tmp("rt-ship", name)
}

fn node(dir: &std::path::Path, port: u16) -> Process {
    common::rt::node(dir, port, "4MiB", &[])
}

fn publisher(path: &std::path::Path, port: u16, id: &str, to: usize) -> Child {
    common::rt::publisher(path, port, id, to, rate())
}

/// A `qmesh rt subscribe` process and the messages it printed: `(pos after, publisher, id)`, sent by a thread
/// reading its stdout (a line cut by SIGKILL is dropped: it was never delivered as far as the test knows).
struct SubProc {
    child: Child,
    lines: std::thread::JoinHandle<()>,
}

fn sub_proc(
    copy: &std::path::Path,
    port: u16,
    from: &str,
    tx: std::sync::mpsc::Sender<(u64, String, i64)>,
) -> SubProc {
    let mut child = common::rt::subscriber(copy, port, from, &[], &[]);
    let out = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(out);
        let mut line = String::new();
        loop {
            line.clear();
            if std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) == 0 || !line.ends_with('\n') {
                return;
            }
            // `POS (`A;17)`
            let Some((pos, v)) = line.trim_end().split_once(' ') else { continue };
            let Some((key, id)) =
                v.strip_prefix("(`").and_then(|v| v.strip_suffix(')')).and_then(|v| v.split_once(';'))
            else {
                continue;
            };
            let _ = tx.send((pos.parse().unwrap(), key.to_string(), id.parse().unwrap()));
        }
    });
    SubProc { child, lines }
}

impl SubProc {
    /// SIGKILL, then every complete line it printed.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.lines.join();
    }
}

/// Messages the test publishes (`QMESH_RT_SHIP_MESSAGES`; the figure is 1,000,000).
fn messages() -> usize {
    std::env::var("QMESH_RT_SHIP_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000)
}

/// Messages per second per publisher: the publishers run for a few seconds, so the node is killed while they
/// publish.
fn rate() -> usize {
    (messages() / 8).max(1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_ship_through_node_and_publisher_crashes() {
    const KILLS: usize = 3;
    let total = messages();
    let per = total / 2;
    let dir = tmpdir("node");
    let logs = tmpdir("pubs");
    let mut n = node(&dir, 0);
    let port = n.port("ipc");

    let mut a = publisher(&logs, port, "A", per);
    let b = publisher(&logs, port, "B", per);
    // a subscriber process with a local copy, killed and restarted from its last printed position below
    let copy = tmpdir("copy");
    let (sub_tx, sub_rx) = std::sync::mpsc::channel();
    let mut sp = Some(sub_proc(&copy, port, "start", sub_tx.clone()));
    let mut from_sub: Vec<(u64, String, i64)> = Vec::new();

    // the same publisher id on the same host cannot run twice: the directory is locked
    let wait_for = |dir: PathBuf| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("LOCK").exists() {
            assert!(Instant::now() < deadline, "publisher did not create {}", dir.display());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let host = qmesh_process::host_name();
    wait_for(logs.join(format!("A.{host}.s"))).await;
    let twin = publisher(&logs, port, "A", per).wait_with_output().unwrap();
    assert!(!twin.status.success(), "a second publisher A started");
    let err = String::from_utf8_lossy(&twin.stderr);
    assert!(err.contains("locked by another running publisher"), "{err}");

    // kill the node whenever its log has grown again, and publisher A once, then restart them
    // bytes of merged log so far: rolls of 4 MiB plus the offset
    let bytes = |l: i64| (l & ((1 << 30) - 1)) + ((l >> 30) & 0x3fff) * (4 << 20);
    // records are over 60 bytes (79 with this test's keys and host names): the k-th kill comes at k steps of 50
    // bytes per message, fixed thresholds well before the publishers finish. (Thresholds measured from the last
    // kill's reading accumulate the overshoot of every burst after a restart, when the publishers ship what they
    // wrote while the node was down, and can pass the log's final size: the test then waits for growth that never
    // comes.)
    let step_bytes = (total as i64 * 50) / (KILLS as i64 + 1);
    for k in 0..KILLS {
        let deadline = Instant::now() + Duration::from_secs(120);
        let threshold = (k as i64 + 1) * step_bytes;
        loop {
            if let Some(l) = latest(port).await
                && bytes(l) >= threshold
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the node's log stopped growing before {threshold} bytes (kill {k})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n.kill();
        if k == KILLS - 1 {
            // the subscriber dies too, and restarts from the last position it printed while the node is down
            sp.take().unwrap().kill();
            from_sub.extend(sub_rx.try_iter());
            let from = from_sub.last().map_or("start".to_string(), |m| m.0.to_string());
            sp = Some(sub_proc(&copy, port, &from, sub_tx.clone()));
        }
        if k == 1 {
            // a publisher crash too: the restarted one resumes from its local log and the node's mark
            let _ = a.kill();
            let _ = a.wait();
            a = publisher(&logs, port, "A", per);
        }
        // the publishers keep writing their local logs while the node is down
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = node(&dir, port);
    }
    for (name, child) in [("A", a), ("B", b)] {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
        assert!(
            out.status.success(),
            "publisher {name} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("acked {per}")));
    }

    // every message exactly once, each publisher's in its own order
    let mut sub = Subscriber::connect(&format!("127.0.0.1:{port}"), "s", From::Start).await.unwrap();
    let mut next_id = std::collections::HashMap::new();
    let mut seen = 0usize;
    let mut after = 0i64;
    let mut order: Vec<(String, i64)> = Vec::new();
    while seen < 2 * per {
        let Ok(d) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await else {
            // what the node says about this subscription (its position, what it delivered) tells a stall in the
            // node's reading from one in the connection
            let node_view = common::http_get(n.addr("http"), "/api/streams").await;
            panic!(
                "no message after {seen} of {} (last position {after}): {next_id:?}\nnode: {node_view:?}",
                2 * per
            );
        };
        let d = d.unwrap().unwrap();
        let Delivery::Message { value, pos, .. } = d else { panic!("unexpected event {d:?}") };
        after = pos;
        let K::List(_, items) = value else { panic!("{value:?}") };
        let (K::Atom(Atom::Symbol(key)), K::Atom(Atom::Long(id))) = (&items[0], &items[1]) else { panic!() };
        order.push((String::from_utf8_lossy(key).into_owned(), *id));
        let want = next_id.entry(key.to_vec()).or_insert(1i64);
        assert_eq!(*id, *want, "publisher {} out of order or repeated", String::from_utf8_lossy(key));
        *want += 1;
        seen += 1;
    }
    // and nothing else: the last message ends the log
    assert_eq!(latest(port).await, Some(after), "the node holds more than the published messages");
    // the subscriber process, killed once, delivered each message exactly once, in the node's order
    let deadline = Instant::now() + Duration::from_secs(300);
    while from_sub.len() < 2 * per {
        match sub_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => from_sub.push(m),
            Err(_) => assert!(
                Instant::now() < deadline,
                "the subscriber process stopped at {} of {} messages",
                from_sub.len(),
                2 * per
            ),
        }
    }
    sp.take().unwrap().kill();
    from_sub.extend(sub_rx.try_iter());
    assert_eq!(from_sub.len(), 2 * per, "the subscriber process got messages twice");
    assert_eq!(from_sub.last().unwrap().0, after as u64);
    assert!(
        from_sub.iter().map(|m| (m.1.as_str(), m.2)).eq(order.iter().map(|(k, i)| (k.as_str(), *i))),
        "the subscriber process saw another order than the node's"
    );
    // the publishers' acknowledged local segments were truncated (1 MiB segments, ~6 MB each)
    for id in ["A", "B"] {
        let d = logs.join(format!("{id}.{host}.s"));
        let segs = std::fs::read_dir(&d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("log."))
            .count();
        assert!(segs <= 3, "{} holds {segs} segments", d.display());
    }
    eprintln!(
        "ship test: {total} messages ({} bytes of merged log each), {KILLS} node kills, 1 publisher kill, 1 subscriber kill",
        bytes(after) / total as i64
    );
    drop(n);
    for d in [dir, logs, copy] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A `Subscriber` copies the node's log into its own directory and reads from there: it restarts from its position
/// while the node is down (served by the copy), then catches up once the node is back; every message exactly once,
/// in one order; the copy is the node's log byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_restarts_from_its_position_while_the_node_is_down() {
    use qmesh_rt::subscriber::{Subscriber as Sub, SubscriberConfig};
    let dir = tmpdir("sub-node");
    let logs = tmpdir("sub-pubs");
    let copy = tmpdir("sub-copy");
    let mut n = node(&dir, 0);
    let port = n.port("ipc");
    let total = 20_000usize;
    let out = publisher(&logs, port, "P", total).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let cfg = || {
        let mut c = SubscriberConfig::new("s");
        c.dir = copy.join("s");
        c.cluster = vec![format!("127.0.0.1:{port}")];
        c
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i64, u64)>();
    let t = tx.clone();
    let sub = Sub::start(cfg(), From::Start, move |m| {
        let K::List(_, items) = m.decode().unwrap() else { panic!() };
        let K::Atom(Atom::Long(id)) = items[1] else { panic!() };
        let _ = t.send((id, m.pos));
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < total / 2 {
        got.push(tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap());
    }
    sub.unsub();
    drop(sub);
    while let Ok(x) = rx.try_recv() {
        got.push(x);
    }
    let pos = got.last().unwrap().1;
    // the node goes away; the subscriber restarts from its position and the copy serves the rest
    n.kill();
    let t = tx.clone();
    let sub = Sub::start(cfg(), From::Position(pos as i64), move |m| {
        let K::List(_, items) = m.decode().unwrap() else { panic!() };
        let K::Atom(Atom::Long(id)) = items[1] else { panic!() };
        let _ = t.send((id, m.pos));
    })
    .await
    .unwrap();
    let copied = sub.copy_latest_position();
    while got.last().unwrap().1 < copied {
        got.push(tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap());
    }
    // the node returns with more messages; the subscriber catches up
    n = node(&dir, port);
    let out = publisher(&logs, port, "P", total + 1000).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    while got.len() < total + 1000 {
        got.push(tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap());
    }
    let ids: Vec<i64> = got.iter().map(|g| g.0).collect();
    assert_eq!(ids, (1..=(total + 1000) as i64).collect::<Vec<_>>(), "every message once, in order");
    drop(sub);
    // the copy is the node's log, byte for byte
    for e in std::fs::read_dir(dir.join("s")).unwrap() {
        let name = e.unwrap().file_name();
        if name.to_string_lossy().starts_with("log.") {
            let a = std::fs::read(dir.join("s").join(&name)).unwrap();
            let b = std::fs::read(copy.join("s").join(&name)).unwrap();
            assert!(a == b, "{name:?} differs");
        }
    }
    drop(n);
    for d in [dir, logs, copy] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The node's mark for publisher `key` (`.rt.ship.hello`'s answer; `None`: it holds nothing of the key).
async fn ship_mark(port: u16, key: &str) -> Option<u64> {
    let c = common::rt::connect(port).await.unwrap();
    let j = common::rt::call_long(&c, qmesh_rt::ship::HELLO, vec![K::sym(key)]).await;
    (j != qmesh_codec::nulls::LONG_NULL).then_some(j as u64)
}

/// The node's `/api/streams`.
async fn streams_view(n: &Process) -> serde_json::Value {
    let (status, body) = common::http_get(n.addr("http"), "/api/streams").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Runs `qmesh rt publish` for publisher `W` from id `first` to `to` until the node acknowledged everything.
async fn publish_ids(logs: &std::path::Path, port: u16, first: usize, to: usize) {
    let first = first.to_string();
    let child = common::rt::publisher_with(logs, port, "W", to, 0, &["--first-id", first.as_str()]);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "publisher failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("acked {to}")), "{stdout}");
}

/// Reads the node's whole stream: publisher `W`'s ids must be 1..=`total`, once each, in order, and nothing after.
async fn assert_every_id_once(port: u16, total: usize) {
    let mut sub = Subscriber::connect(&format!("127.0.0.1:{port}"), "s", From::Start).await.unwrap();
    let mut after = 0;
    for want in 1..=total as i64 {
        let Ok(d) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await else {
            panic!("no message after id {} of {total}", want - 1);
        };
        let d = d.unwrap().unwrap();
        let Delivery::Message { value, pos, .. } = d else { panic!("unexpected event {d:?}") };
        let K::List(_, items) = value else { panic!("{value:?}") };
        let (K::Atom(Atom::Symbol(key)), K::Atom(Atom::Long(id))) = (&items[0], &items[1]) else { panic!() };
        assert_eq!((key.as_ref(), *id), (&b"W"[..], want), "a message lost, repeated or out of order");
        after = pos;
    }
    assert_eq!(latest(port).await, Some(after), "the node holds more than the published messages");
}

/// A publisher whose local log directory is deleted starts again at a low session, at or below the node's mark for
/// its key. It rebases (the node forgets the mark, durably) and every message of its new log reaches the node once;
/// a node restart (SIGKILL) after the rebase neither raises the old mark back nor loses or repeats a message, and a
/// normal publisher restart after it does not rebase again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_whose_directory_was_wiped_rebases_and_loses_nothing() {
    let dir = tmpdir("wipe-node");
    let logs = tmpdir("wipe-pubs");
    let mut n = node(&dir, 0);
    let port = n.port("ipc");
    let key = format!("W.{}.s", qmesh_process::host_name());
    // first life: more messages than the second, so the old mark is above everything the second ships
    let (first, second, third) = (3000, 1000, 500);
    publish_ids(&logs, port, 1, first).await;
    let old = ship_mark(port, &key).await.expect("a mark");
    std::fs::remove_dir_all(logs.join(&key)).unwrap();
    publish_ids(&logs, port, first + 1, first + second).await;
    let new = ship_mark(port, &key).await.expect("a mark");
    assert!(new < old, "the new life's mark {new} is not below the old {old}");
    // what /api/streams shows of the publisher: its mark and its rebases since the node started
    let shipping = |v: serde_json::Value| v["streams"]["s"]["shipping"][&key].clone();
    assert_eq!(shipping(streams_view(&n).await), serde_json::json!({"mark": new, "rebases": 1}));
    assert_every_id_once(port, first + second).await;

    // the node dies at once after the rebase: its restart recovers the new mark, not the old one
    n.kill();
    n = node(&dir, port);
    assert_eq!(ship_mark(port, &key).await, Some(new));
    assert_every_id_once(port, first + second).await;
    // a normal restart of the publisher ships what is new, without a rebase
    publish_ids(&logs, port, first + second + 1, first + second + third).await;
    assert_eq!(shipping(streams_view(&n).await)["rebases"], 0);
    assert_every_id_once(port, first + second + third).await;
    drop(n);
    for d in [dir, logs] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Two publishers with one id (the same `publisher_id` on one host, another `path`): the second's handshake is
/// refused while the first ships, so their positions never share one mark; once the first stops, the second
/// ships its whole log. Every message of both arrives once. (Without the guard the second rebases the first's mark
/// away, the first raises it past the second's positions, and the second's later messages are dropped as held.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_with_one_id_lose_none_of_each_others_messages() {
    use qmesh_rt::publisher::{Publisher, PublisherConfig};
    let dir = tmpdir("dupid-node");
    let (pa, pb) = (tmpdir("dupid-a"), tmpdir("dupid-b"));
    let n = node(&dir, 0);
    let port = n.port("ipc");
    let cfg = |path: &PathBuf| {
        let mut c = PublisherConfig::new("s");
        c.path = path.clone();
        c.publisher_id = Some("D".into());
        c.cluster = vec![format!("127.0.0.1:{port}")];
        c
    };
    let msg = |who: &str, i: i64| K::list(vec![K::sym(who), K::long(i)]);
    let a = Publisher::start(cfg(&pa)).await.unwrap();
    for i in 1..=10 {
        a.publish(&msg("A", i)).unwrap();
    }
    a.flush().await.unwrap();
    let b = Publisher::start(cfg(&pb)).await.unwrap();
    for i in 1..=5 {
        b.publish(&msg("B", i)).unwrap();
    }
    // the first goes on undisturbed while the second is refused
    for i in 11..=20 {
        a.publish(&msg("A", i)).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), a.flush()).await.expect("A acknowledged").unwrap();
    for i in 6..=10 {
        b.publish(&msg("B", i)).unwrap();
    }
    a.close().await;
    tokio::time::timeout(Duration::from_secs(30), b.flush())
        .await
        .expect("B acknowledged once A stopped")
        .unwrap();
    b.close().await;

    let end = latest(port).await.expect("a latest position");
    let mut sub = Subscriber::connect(&format!("127.0.0.1:{port}"), "s", From::Start).await.unwrap();
    let mut got = Vec::new();
    loop {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("a message")
            .unwrap()
            .unwrap();
        let Delivery::Message { value, pos, .. } = d else { panic!("unexpected event {d:?}") };
        let K::List(_, items) = value else { panic!("{value:?}") };
        let (K::Atom(Atom::Symbol(who)), K::Atom(Atom::Long(i))) = (&items[0], &items[1]) else { panic!() };
        got.push((String::from_utf8_lossy(who).into_owned(), *i));
        if pos == end {
            break;
        }
    }
    got.sort();
    let mut want: Vec<(String, i64)> = (1..=20).map(|i| ("A".to_string(), i)).collect();
    want.extend((1..=10).map(|i| ("B".to_string(), i)));
    want.sort();
    assert_eq!(got, want, "every message of both publishers, once");
    drop(n);
    for d in [dir, pa, pb] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A publisher wiped twice in one run of the node: the second rebase leaves the same marks as the first, and is
/// stored all the same (the file's position must pass the records of the second life), so a SIGKILLed node does
/// not raise the mark back from them and the third life loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_wipe_in_one_node_run_is_durable_too() {
    let dir = tmpdir("wipe2-node");
    let logs = tmpdir("wipe2-pubs");
    let mut n = node(&dir, 0);
    let port = n.port("ipc");
    let key = format!("W.{}.s", qmesh_process::host_name());
    publish_ids(&logs, port, 1, 300).await;
    std::fs::remove_dir_all(logs.join(&key)).unwrap();
    publish_ids(&logs, port, 301, 500).await;
    std::fs::remove_dir_all(logs.join(&key)).unwrap();
    publish_ids(&logs, port, 501, 600).await;
    let mark = ship_mark(port, &key).await.expect("a mark");
    n.kill();
    n = node(&dir, port);
    assert_eq!(ship_mark(port, &key).await, Some(mark), "the restart raised the mark back");
    publish_ids(&logs, port, 601, 650).await;
    assert_every_id_once(port, 650).await;
    drop(n);
    for d in [dir, logs] {
        let _ = std::fs::remove_dir_all(d);
    }
}
