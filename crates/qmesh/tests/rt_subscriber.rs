//! The `Subscriber` (rt.qpk's `.rt.sub` over a local copy of the merged log) against a real `qmesh rt` node, with
//! real files: filters with and without caching and `clear_cache`; pause, resume and unsub; each event
//! (`badtail` from a byte flipped in the local copy, `badmsg`, `reset`, `skip-forward`) with its two positions and
//! the default handler's log line; garbage collection opt-out (`REPLICATOR_*=0`) with `prune`, and a lead
//! subscriber truncating the node and the subscribers that follow it. Waiting is for states, never for a time.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::rt::{WAIT, call_long, connect, first, latest, node, publish, subscriber, until};
use qmesh_codec::{Atom, K, Vector};
use qmesh_rt::filter::Predicate;
use qmesh_rt::subscriber::{Control, Msg, Subscriber, SubscriberConfig, SubscriberError};
use qmesh_rt::{Event, From};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

fn tmpdir(name: &str) -> PathBuf {
    common::rt::tmpdir("rt-sub", name)
}

/// What a subscription handed its callbacks, in order.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    /// A message: its value, its own position, the position after it.
    Msg(K, u64, u64),
    /// An event and its two positions.
    Event(Event, u64, u64),
}

fn cfg(dir: &Path, port: u16) -> SubscriberConfig {
    let mut c = SubscriberConfig::new("s");
    c.dir = dir.to_path_buf();
    c.cluster = vec![format!("127.0.0.1:{port}")];
    // the test decides the garbage-collection flags, whatever the environment says
    c.exchange_archived = true;
    c.truncate_archived = true;
    c
}

fn on_msg(tx: UnboundedSender<Got>) -> impl FnMut(&Msg<'_>) + Send + 'static {
    move |m| {
        let _ = tx.send(Got::Msg(m.decode().unwrap(), m.at, m.pos));
    }
}

fn on_event(tx: UnboundedSender<Got>) -> impl FnMut(Event, u64, u64) + Send + 'static {
    move |e, p1, p2| {
        let _ = tx.send(Got::Event(e, p1, p2));
    }
}

async fn start(
    cfg: SubscriberConfig,
    from: From,
    filter: Option<Predicate>,
) -> (Subscriber, UnboundedReceiver<Got>) {
    let (tx, rx) = unbounded_channel();
    let sub = match filter {
        Some(f) => Subscriber::start_filtered(cfg, from, f, on_msg(tx.clone()), on_event(tx)).await,
        None => Subscriber::start_with(cfg, from, on_msg(tx.clone()), on_event(tx)).await,
    };
    (sub.unwrap(), rx)
}

async fn next(rx: &mut UnboundedReceiver<Got>) -> Got {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("a delivery in time").expect("subscription open")
}

/// The next delivery, which must be a message: its value.
async fn next_value(rx: &mut UnboundedReceiver<Got>) -> K {
    match next(rx).await {
        Got::Msg(v, ..) => v,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The subscription's control, set by the test right after `start` returns (a callback may run before that).
fn control_of(c: &OnceLock<Control>) -> &Control {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(c) = c.get() {
            return c;
        }
        assert!(std::time::Instant::now() < deadline, "the control was never set");
        std::thread::yield_now();
    }
}

fn upd(table: &str, x: i64) -> K {
    K::list(vec![K::sym("upd"), K::sym(table), K::long(x)])
}

/// `(`upd;`t;bytes)` messages of about `bytes` bytes each; their own positions.
async fn fill(port: u16, from: usize, n: usize, bytes: usize) -> Vec<u64> {
    let c = connect(port).await.unwrap();
    let mut out = Vec::new();
    for i in from..from + n {
        let x = K::list(vec![
            K::sym("upd"),
            K::sym("t"),
            K::Vector(qmesh_codec::Attr::None, Vector::Byte(vec![i as u8; bytes])),
        ]);
        out.push(publish(&c, x).await);
    }
    out
}

/// The byte-vector message `fill` published as number `i`.
fn filled(i: usize, bytes: usize) -> K {
    K::list(vec![
        K::sym("upd"),
        K::sym("t"),
        K::Vector(qmesh_codec::Attr::None, Vector::Byte(vec![i as u8; bytes])),
    ])
}

async fn wait_copied(sub: &Subscriber, port: u16) {
    let want = latest(port).await.unwrap() as u64;
    until("the local copy to reach the node's latest position", || sub.copy_latest_position() >= want).await;
}

/// The first position a prune at `pos` leaves: the start of the first segment that is not rolled and wholly before
/// `pos` (the segments as they were before the prune).
fn first_after_prune(segs: &[qmesh_log::SegmentInfo], pos: u64) -> u64 {
    let keep = segs.iter().find(|g| !g.rolled || g.end.as_u64() > pos).unwrap();
    keep.start.as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_with_and_without_caching_and_clear_cache() {
    let dir = tmpdir("filter");
    let n = node(&dir, 0, "1MiB", &[]);
    let port = n.port("ipc");
    let c = connect(port).await.unwrap();
    const ROUNDS: i64 = 30;
    for i in 0..ROUNDS {
        for m in [
            upd("trade", i),
            upd("quote", i),
            upd("news", i),
            K::list(vec![K::sym("hb"), K::long(i)]),
            K::long(i),
        ] {
            publish(&c, m).await;
        }
    }
    // rt.qpk's example: t:enlist`quote; f:filter[{$[x=`upd;y in t;0b]};callback]
    let predicate = |tables: Arc<Mutex<Vec<&'static str>>>, asked: Arc<AtomicUsize>| {
        move |x: &[u8], y: &[u8]| {
            asked.fetch_add(1, Ordering::Relaxed);
            x == b"upd" && tables.lock().unwrap().iter().any(|t| t.as_bytes() == y)
        }
    };
    let (t_cached, asked_cached) = (Arc::new(Mutex::new(vec!["quote"])), Arc::new(AtomicUsize::new(0)));
    let (t_plain, asked_plain) = (Arc::new(Mutex::new(vec!["quote"])), Arc::new(AtomicUsize::new(0)));
    let cached = Predicate::cached(predicate(t_cached.clone(), asked_cached.clone()));
    let p = predicate(t_plain.clone(), asked_plain.clone());
    let plain = Predicate::uncached(move |x, y| i64::from(p(x, y)));
    let copy_a = tmpdir("filter-a");
    let (a, mut ra) = start(cfg(&copy_a, port), From::Start, Some(cached)).await;
    let (b, mut rb) = start(cfg(&tmpdir("filter-b"), port), From::Start, Some(plain)).await;
    for i in 0..ROUNDS {
        assert_eq!(next_value(&mut ra).await, upd("quote", i));
        assert_eq!(next_value(&mut rb).await, upd("quote", i));
    }
    // filtered-out messages move the position: both reach the node's latest, which ends with a filtered `long`
    let end = latest(port).await.unwrap() as u64;
    until("the filtered subscriptions' positions to reach the end", || {
        a.position() == end && b.position() == end
    })
    .await;
    // cached: one question per symbol pair (upd trade, upd quote, upd news, hb with a null, two nulls);
    // uncached: one per message
    assert_eq!(asked_cached.load(Ordering::Relaxed), 5);
    assert_eq!(asked_plain.load(Ordering::Relaxed), 5 * ROUNDS as usize);

    // t,:`trade — the cached answer for (upd;trade) stands until the cache is cleared
    t_cached.lock().unwrap().push("trade");
    t_plain.lock().unwrap().push("trade");
    publish(&c, upd("trade", 100)).await;
    publish(&c, upd("quote", 100)).await;
    assert_eq!(
        next_value(&mut ra).await,
        upd("quote", 100),
        "a cached filter answered again without clear_cache"
    );
    assert_eq!(next_value(&mut rb).await, upd("trade", 100));
    assert_eq!(next_value(&mut rb).await, upd("quote", 100));
    a.clear_cache();
    publish(&c, upd("trade", 101)).await;
    publish(&c, upd("quote", 101)).await;
    assert_eq!(next_value(&mut ra).await, upd("trade", 101), "clear_cache did not take the new list");
    assert_eq!(next_value(&mut ra).await, upd("quote", 101));
    assert_eq!(asked_cached.load(Ordering::Relaxed), 7, "after clear_cache each pair is asked once more");

    // a restart from the position given after filtered-out messages delivers none of them, even unfiltered
    publish(&c, upd("news", 102)).await;
    publish(&c, upd("news", 103)).await;
    let end = latest(port).await.unwrap() as u64;
    until("the cached subscription to pass the filtered tail", || a.position() == end).await;
    let pos = a.position();
    a.unsub();
    drop(a);
    drop(b);
    let (_a2, mut ra2) = start(cfg(&copy_a, port), From::Position(pos as i64), None).await;
    publish(&c, upd("quote", 104)).await;
    assert_eq!(next_value(&mut ra2).await, upd("quote", 104), "a filtered-out message was delivered again");
    drop(n);
    for d in ["filter", "filter-a", "filter-b"] {
        let _ = std::fs::remove_dir_all(tmpdir(d));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_unsub() {
    let dir = tmpdir("pause");
    let n = node(&dir, 0, "64KiB", &[]);
    let port = n.port("ipc");
    let c = connect(port).await.unwrap();
    for i in 1..=100 {
        publish(&c, upd("t", i)).await;
    }
    // pause from the callback at 50 and unsub from it at 180 (rt.qpk's .rt.pause[] and .rt.unsub[])
    let control: Arc<OnceLock<Control>> = Arc::new(OnceLock::new());
    let delivered = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = unbounded_channel::<(i64, u64)>();
    let (ctl, count) = (control.clone(), delivered.clone());
    let sub = Subscriber::start(cfg(&tmpdir("pause-copy"), port), From::Start, move |m| {
        let K::List(_, items) = m.decode().unwrap() else { panic!() };
        let K::Atom(Atom::Long(i)) = items[2] else { panic!() };
        count.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send((i, m.pos));
        match i {
            50 => control_of(&ctl).pause(),
            180 => control_of(&ctl).unsub(),
            _ => {}
        }
    })
    .await
    .unwrap();
    let _ = control.set(sub.control());
    let mut got = Vec::new();
    while got.len() < 50 {
        got.push(tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap());
    }
    // the callback sends before it pauses and the position moves once it returns
    let paused_at = got[49].1;
    until("the callback's pause", || sub.control().is_paused() && sub.position() == paused_at).await;
    // the copy keeps growing while paused; nothing is delivered
    for i in 101..=200 {
        publish(&c, upd("t", i)).await;
    }
    wait_copied(&sub, port).await;
    assert_eq!(delivered.load(Ordering::SeqCst), 50, "delivered while paused");
    assert_eq!(sub.position(), paused_at);
    assert!(rx.try_recv().is_err());
    // resume: in order from where it paused, nothing lost, until the callback unsubscribes at 180
    sub.resume();
    while got.len() < 180 {
        got.push(tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap());
    }
    let ids: Vec<i64> = got.iter().map(|g| g.0).collect();
    assert_eq!(ids, (1..=180).collect::<Vec<_>>());
    // after unsub: more messages, which a witness receives, reach no callback and do not move the position
    for i in 201..=220 {
        publish(&c, upd("t", i)).await;
    }
    let (_w, mut rw) = start(cfg(&tmpdir("pause-witness"), port), From::Start, None).await;
    for i in 1..=220 {
        assert_eq!(next_value(&mut rw).await, upd("t", i));
    }
    assert_eq!(delivered.load(Ordering::SeqCst), 180, "a callback ran after unsub");
    until("the position after the last callback", || sub.position() == got[179].1).await;
    drop(sub);
    assert!(rx.try_recv().is_err());
    drop(n);
    for d in ["pause", "pause-copy", "pause-witness"] {
        let _ = std::fs::remove_dir_all(tmpdir(d));
    }
}

/// `badtail`: a byte flipped in the subscriber's own copy (not the node's log); `badmsg`: a record whose checksum
/// holds but whose payload is no kdb+ object, shipped from the node byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badtail_in_the_local_copy_and_badmsg() {
    let dir = tmpdir("bad");
    let copy = tmpdir("bad-copy");
    let mut n = node(&dir, 0, "4096", &[]);
    let port = n.port("ipc");
    let pos = fill(port, 0, 40, 200).await;
    let (sub, mut rx) = start(cfg(&copy, port), From::Start, None).await;
    for i in 0..40 {
        assert_eq!(next_value(&mut rx).await, filled(i, 200));
    }
    drop(sub);
    // flip a payload byte of message 3, in the copy's first (rolled) segment
    let seg = copy.join("log.0000000.00000");
    let mut bytes = std::fs::read(&seg).unwrap();
    let off = 32 + (pos[3] as usize & ((1 << 30) - 1)) + 100;
    bytes[off] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    // a bad payload with a good checksum in the node's log, then a good message
    assert!(n.terminate().success());
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
    let n = node(&dir, port, "4096", &[]);
    let (sub, mut rx) = start(cfg(&copy, port), From::Start, None).await;
    for i in 0..3 {
        assert_eq!(next_value(&mut rx).await, filled(i, 200));
    }
    assert_eq!(
        next(&mut rx).await,
        Got::Event(Event::BadTail, pos[3], 1 << 30),
        "badtail: the record, the next segment"
    );
    // the rest of the copy, from the second segment on, then the bad message and the good one after it
    let k = pos.iter().position(|&p| p == 1 << 30).unwrap();
    for i in k..40 {
        assert_eq!(next_value(&mut rx).await, filled(i, 200));
    }
    let Got::Event(Event::BadMsg, p1, p2) = next(&mut rx).await else { panic!("expected badmsg") };
    let Got::Msg(v, at, _) = next(&mut rx).await else { panic!("expected the message after the bad one") };
    assert_eq!((v, at), (K::long(77), p2), "badmsg: the bad record, then the next");
    assert!(p1 < p2 && p1 >= pos[39]);
    drop(sub);
    drop(n);
    for d in [dir, copy] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `reset` through `qmesh rt reset`, seen by a `qmesh rt subscribe` process whose default event handler logs it
/// as rt.qpk's `.rt.on_event` prints it, and by an in-process subscriber with its own handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_event_and_the_default_handler() {
    let dir = tmpdir("reset");
    let n = node(&dir, 0, "1MiB", &[]);
    let port = n.port("ipc");
    let c = connect(port).await.unwrap();
    for i in 0..5 {
        publish(&c, upd("t", i)).await;
    }
    let end = latest(port).await.unwrap() as u64;
    let (sub, mut rx) = start(cfg(&tmpdir("reset-copy"), port), From::Start, None).await;
    let child = subscriber(&tmpdir("reset-proc"), port, "start", &["--count", "6"], &[]);
    for i in 0..5 {
        assert_eq!(next_value(&mut rx).await, upd("t", i));
    }
    let out = std::process::Command::new(common::rt::bin())
        .args(["rt", "reset", &n.addr("http").to_string(), "s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let to = 1u64 << 44;
    let at = publish(&c, upd("t", 5)).await;
    assert_eq!(at, to, "the new session starts at 2^44");
    assert_eq!(
        next(&mut rx).await,
        Got::Event(Event::Reset, end, to),
        "reset: end of the last message, the new session"
    );
    let Got::Msg(v, at, _) = next(&mut rx).await else { panic!() };
    assert_eq!((v, at), (upd("t", 5), to));
    drop(sub);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    for (i, l) in lines[..6].iter().enumerate() {
        assert!(l.ends_with(&format!(" (`upd;`t;{i})")), "{stdout}");
    }
    assert!(lines[6].starts_with("position "), "{stdout}");
    let want = format!("Reset event in s, rolling position from {end} to {to}");
    assert!(stderr.contains(&want), "the default handler did not log {want:?}:\n{stderr}");
    drop(n);
    for d in ["reset", "reset-copy", "reset-proc"] {
        let _ = std::fs::remove_dir_all(tmpdir(d));
    }
}

/// `skip-forward`: a paused subscriber's position is archived under it (a lead's prune on the node, which the
/// copy follows); on resume it skips to the first unarchived segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_forward_when_the_position_is_archived() {
    let dir = tmpdir("skip");
    let n = node(&dir, 0, "4096", &[]);
    let port = n.port("ipc");
    let pos = fill(port, 0, 60, 200).await;
    let control: Arc<OnceLock<Control>> = Arc::new(OnceLock::new());
    let (tx, mut rx) = unbounded_channel();
    let ctl = control.clone();
    let mut deliver = on_msg(tx.clone());
    let pause_at = pos[5];
    let sub = Subscriber::start_with(
        cfg(&tmpdir("skip-copy"), port),
        From::Start,
        move |m| {
            deliver(m);
            if m.at == pause_at {
                control_of(&ctl).pause();
            }
        },
        on_event(tx),
    )
    .await
    .unwrap();
    let _ = control.set(sub.control());
    for i in 0..5 {
        assert_eq!(next_value(&mut rx).await, filled(i, 200));
    }
    let Got::Msg(v, _, paused_at) = next(&mut rx).await else { panic!() };
    assert_eq!(v, filled(5, 200));
    until("the callback's pause", || sub.control().is_paused() && sub.position() == paused_at).await;
    wait_copied(&sub, port).await;
    let c = connect(port).await.unwrap();
    let removed = call_long(&c, ".rt.prune", vec![K::long(pos[40] as i64)]).await;
    assert!(removed >= 2, "pruned {removed}");
    let node_first = first(&n).await;
    assert!(node_first > paused_at && node_first <= pos[40]);
    // the copy follows the node's archiver (an empty batch carries the new first position)
    until("the copy to follow the node's archiver", || {
        sub.local_copy().first_position().as_u64() == node_first
    })
    .await;
    sub.resume();
    assert_eq!(next(&mut rx).await, Got::Event(Event::SkipForward, paused_at, node_first));
    let k = pos.iter().position(|&p| p == node_first).unwrap();
    assert_eq!(next_value(&mut rx).await, filled(k, 200));
    drop(sub);
    drop(n);
    for d in ["skip", "skip-copy"] {
        let _ = std::fs::remove_dir_all(tmpdir(d));
    }
}

/// Opt-out (`REPLICATOR_EXCHANGE_ARCHIVED=0`, `REPLICATOR_TRUNCATE_ARCHIVED=0`): the copy ignores the node's
/// archiver and `prune(pos)` removes only its own rolled segments wholly before `pos`. A lead subscriber's prune
/// truncates the node and every subscriber following it, but not the opted-out ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_prune_and_the_lead_subscriber() {
    let dir = tmpdir("gc");
    let n = node(&dir, 0, "4096", &[]);
    let port = n.port("ipc");
    let pos = fill(port, 0, 60, 200).await;
    let node_first0 = first(&n).await;
    let follower = start(cfg(&tmpdir("gc-follower"), port), From::Start, None).await.0;
    let lead = start(cfg(&tmpdir("gc-lead"), port), From::Start, None).await.0;
    let mut o = cfg(&tmpdir("gc-optout"), port);
    (o.exchange_archived, o.truncate_archived) = (false, false);
    let optout = start(o, From::Start, None).await.0;
    // the same opt-out from the environment, in a process of its own
    let env_dir = tmpdir("gc-env");
    let env = [("REPLICATOR_EXCHANGE_ARCHIVED", "0"), ("REPLICATOR_TRUNCATE_ARCHIVED", "0")];
    let mut env_sub = subscriber(&env_dir, port, "start", &[], &env);
    for s in [&follower, &lead, &optout] {
        wait_copied(s, port).await;
    }
    // the process copies too before the lead prunes (started late on a loaded machine, it would rightly start
    // its copy at the node's new first segment)
    until("the environment's opted-out copy to hold the first segment", || {
        env_dir.join("log.0000000.00000").exists()
    })
    .await;
    let segs = optout.local_copy().segments();
    assert!(segs.len() >= 4, "{} segments", segs.len());

    // the opted-out subscriber prunes its own copy: rolled segments wholly before pos[20], nothing else
    optout.prune(pos[20]);
    let want = first_after_prune(&segs, pos[20]);
    assert!(want > node_first0 && want <= pos[20]);
    until("the opted-out copy to be pruned", || optout.local_copy().first_position().as_u64() == want).await;
    let left: Vec<u64> = optout.local_copy().segments().iter().map(|g| g.start.as_u64()).collect();
    let kept: Vec<u64> = segs.iter().map(|g| g.start.as_u64()).filter(|&s| s >= want).collect();
    assert_eq!(left, kept, "prune removed a segment holding a message at or after pos");
    assert_eq!(first(&n).await, node_first0, "an opted-out subscriber's prune reached the node");

    // the lead's prune truncates the node, and the follower follows; the opted-out copies keep theirs
    lead.prune(pos[40]);
    let lead_first = first_after_prune(&segs, pos[40]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while first(&n).await != lead_first {
        assert!(tokio::time::Instant::now() < deadline, "the lead's prune did not reach the node");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until("the lead's copy to be pruned", || lead.local_copy().first_position().as_u64() == lead_first).await;
    until("the follower to follow", || follower.local_copy().first_position().as_u64() == lead_first).await;
    // one more message: every copy has taken the batch that carries the node's new first position
    let last = fill(port, 60, 1, 200).await[0];
    for s in [&follower, &lead, &optout] {
        wait_copied(s, port).await;
    }
    assert_eq!(optout.local_copy().first_position().as_u64(), want, "the opted-out copy followed the node");
    // the environment's opt-out: the process delivered the last message, and its copy still starts at the start
    let mut out = std::io::BufReader::new(env_sub.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "the subscriber process ended"
        );
        let at_end = line.split(' ').next().unwrap().parse::<u64>().unwrap();
        if at_end > last {
            break;
        }
    }
    assert!(
        env_dir.join("log.0000000.00000").exists(),
        "the REPLICATOR_*=0 copy followed the node's archiver"
    );
    let _ = env_sub.kill();
    let _ = env_sub.wait();
    drop((follower, lead, optout));
    drop(n);
    for d in ["gc", "gc-follower", "gc-lead", "gc-optout", "gc-env"] {
        let _ = std::fs::remove_dir_all(tmpdir(d));
    }
}

/// `skip-forward` for a fresh copy: a subscriber with an empty directory asks for a position in a segment the node
/// archived (here only the first segment, so the next one follows it directly) and skips to the first unarchived
/// segment, rather than silently going on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_forward_from_an_archived_position_into_a_fresh_copy() {
    let dir = tmpdir("skip-fresh");
    let n = node(&dir, 0, "4096", &[]);
    let port = n.port("ipc");
    let pos = fill(port, 0, 60, 200).await;
    let seg1 = pos.iter().position(|&p| p == 1 << 30).unwrap();
    let c = connect(port).await.unwrap();
    // prune exactly the first segment: every message before the second segment's first
    assert_eq!(call_long(&c, ".rt.prune", vec![K::long(pos[seg1] as i64)]).await, 1);
    assert_eq!(first(&n).await, 1 << 30);
    let (sub, mut rx) =
        start(cfg(&tmpdir("skip-fresh-copy"), port), From::Position(pos[1] as i64), None).await;
    assert_eq!(next(&mut rx).await, Got::Event(Event::SkipForward, pos[1], 1 << 30));
    assert_eq!(next_value(&mut rx).await, filled(seg1, 200));
    drop(sub);
    drop(n);
    for d in ["skip-fresh", "skip-fresh-copy"] {
        let _ = std::fs::remove_dir_all(tmpdir(d));
    }
}

/// Dropping a `Subscriber` closes its local copy before `drop` returns (the copying task and the watch are waited
/// for), so a subscriber restarted in the same process at once opens the same directory, whose lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_same_process_right_after_drop() {
    let dir = tmpdir("restart");
    let copy = tmpdir("restart-copy");
    let n = node(&dir, 0, "64KiB", &[]);
    let port = n.port("ipc");
    let c = connect(port).await.unwrap();
    let mut pos = 0u64;
    for i in 0..20 {
        publish(&c, upd("t", i)).await;
        let from = if i == 0 { From::Start } else { From::Position(pos as i64) };
        let (sub, mut rx) = start(cfg(&copy, port), from, None).await;
        let Got::Msg(v, _, after) = next(&mut rx).await else { panic!() };
        assert_eq!(v, upd("t", i), "restart {i}");
        pos = after;
        drop(sub);
    }
    drop(n);
    for d in [dir, copy] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// One item of a sequence as both kinds of subscriber see it: a message's value and the position after it, or an
/// event's name and two positions.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Msg(K, u64),
    Event(String, u64, u64),
}

fn seen(g: Got) -> Seen {
    match g {
        Got::Msg(v, _, pos) => Seen::Msg(v, pos),
        Got::Event(e, p1, p2) => Seen::Event(e.name().to_string(), p1, p2),
    }
}

/// Where reading continues after `s`.
fn after(s: &Seen) -> u64 {
    match s {
        Seen::Msg(_, pos) | Seen::Event(_, _, pos) => *pos,
    }
}

/// Takes the messages `fill` published as numbers `0..n`; the position after the last.
async fn delivered(rx: &mut UnboundedReceiver<Got>, n: usize) -> u64 {
    let mut after = 0;
    for i in 0..n {
        let Got::Msg(v, _, pos) = next(rx).await else { panic!("expected message {i}") };
        assert_eq!(v, filled(i, 200));
        after = pos;
    }
    after
}

/// What a subscription delivers until it reaches `latest`.
async fn collect(rx: &mut UnboundedReceiver<Got>, latest: u64) -> Vec<Seen> {
    let mut out = Vec::new();
    while out.last().map(after) != Some(latest) {
        out.push(seen(next(rx).await));
    }
    out
}

/// What a direct `.rt.sub` subscriber (plain IPC, no copy) gets from `from` until `latest`.
async fn direct(port: u16, from: From, latest: u64) -> Vec<Seen> {
    use qmesh_rt::client::{Delivery, Subscriber as Direct};
    let mut sub = Direct::connect(&format!("127.0.0.1:{port}"), "s", from).await.unwrap();
    let mut out = Vec::new();
    while out.last().map(after) != Some(latest) {
        let d = tokio::time::timeout(WAIT, sub.next()).await.expect("in time").unwrap().expect("open");
        out.push(match d {
            Delivery::Message { value, pos, .. } => Seen::Msg(value, pos as u64),
            Delivery::Event { event, p1, p2, .. } => Seen::Event(event, p1 as u64, p2 as u64),
        });
    }
    out
}

/// `badtail` in the NODE's log (a byte flipped mid-record in a rolled segment while the node was stopped) reaches
/// the copies: a subscriber whose copy was behind the damage, one with a fresh copy, and one restarted on its copy
/// with the node gone each get the event with the node's two positions, then the next segment's messages: exactly
/// the sequence a direct `.rt.sub` subscriber gets. A copy that held records past the damage, and a fresh copy
/// from a position past it, read on in that segment, as a direct subscriber from there does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badtail_in_the_node_log_reaches_the_copies() {
    let dir = tmpdir("node-bad");
    let copy = tmpdir("node-bad-copy");
    let fresh = tmpdir("node-bad-fresh");
    let ahead = tmpdir("node-bad-ahead");
    let fresh_after = tmpdir("node-bad-fresh-after");
    let mut n = node(&dir, 0, "4096", &[]);
    let port = n.port("ipc");
    // a copy holding the first ten messages (all in the first segment)
    let mut pos = fill(port, 0, 10, 200).await;
    assert!(pos.iter().all(|p| *p < 1 << 30));
    let (sub, mut rx) = start(cfg(&copy, port), From::Start, None).await;
    let resume = delivered(&mut rx, 10).await;
    drop(sub);
    // a second copy holding twenty messages: past the record that will be damaged, in the same segment
    pos.extend(fill(port, 10, 10, 200).await);
    let (sub, mut rx) = start(cfg(&ahead, port), From::Start, None).await;
    let resume_ahead = delivered(&mut rx, 20).await;
    drop(sub);
    pos.extend(fill(port, 20, 40, 200).await);
    // damage the third record of the second segment (rolled; the copy has not seen it)
    let seg1 = pos.iter().position(|&p| p == 1 << 30).unwrap();
    let seg2 = pos.iter().position(|&p| p == 2 << 30).unwrap();
    let victim = seg1 + 2;
    assert!(victim + 1 < seg2, "the damaged record has records after it in its segment");
    assert!(victim < 20 && 21 < seg2 && victim + 2 < seg2, "records past the damaged one: {victim} {seg2}");
    assert!(n.terminate().success());
    let file = dir.join("s/log.0000000.00001");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[32 + (pos[victim] as usize & ((1 << 30) - 1)) + 100] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let n = node(&dir, port, "4096", &[]);
    let latest = latest(port).await.unwrap() as u64;
    let want = direct(port, From::Start, latest).await;
    let bad = Seen::Event("badtail".into(), pos[victim], 2 << 30);
    let at = want.iter().position(|s| *s == bad).expect("the direct subscriber gets badtail");
    assert_eq!(want[at - 1], Seen::Msg(filled(victim - 1, 200), pos[victim]));
    assert_eq!(want[at + 1], Seen::Msg(filled(seg2, 200), pos[seg2 + 1]));
    assert_eq!(
        want.len(),
        60 - (seg2 - victim) + 1,
        "every message but the damaged segment's rest, one event"
    );
    // the copy that was behind: pulled again, it marks the damage where the node's reader reports it
    let (sub, mut rx) = start(cfg(&copy, port), From::Position(resume as i64), None).await;
    assert_eq!(collect(&mut rx, latest).await, want[10..].to_vec());
    drop(sub);
    // a fresh copy made after the damage: the same
    let (sub, mut rx) = start(cfg(&fresh, port), From::Start, None).await;
    assert_eq!(collect(&mut rx, latest).await, want);
    drop(sub);
    // the copy that held records past the damage: the node's reader reopens where it asked from, and the rest of
    // the segment arrives, as a direct subscriber from there reads it
    let (sub, mut rx) = start(cfg(&ahead, port), From::Position(resume_ahead as i64), None).await;
    let got = collect(&mut rx, latest).await;
    assert_eq!(got, direct(port, From::Position(resume_ahead as i64), latest).await);
    assert_eq!(got[0], Seen::Msg(filled(20, 200), pos[21]));
    drop(sub);
    // a fresh copy from a position after the damaged record, in the same segment: marks it, fills the gap, reads on
    let from = From::Position(pos[victim + 1] as i64);
    let (sub, mut rx) = start(cfg(&fresh_after, port), from, None).await;
    let got = collect(&mut rx, latest).await;
    assert_eq!(got, direct(port, from, latest).await);
    assert_eq!(got[0], Seen::Msg(filled(victim + 1, 200), pos[victim + 2]));
    drop(sub);
    // restarted with the node gone: the copy alone replays the same sequence (the mark survived the reopen)
    drop(n);
    let mut alone = cfg(&copy, port);
    alone.cluster.clear();
    let (sub, mut rx) = start(alone, From::Start, None).await;
    assert_eq!(collect(&mut rx, latest).await, want);
    drop(sub);
    for d in [dir, copy, fresh, ahead, fresh_after] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A start position inside a record (a real position + 3) is refused, never read as `badtail`: by the node when the
/// copy is fresh (its first pull carries the position), by the copy when it holds the position (no node needed).
/// The directory is free again after the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_position_inside_a_record_is_refused() {
    let dir = tmpdir("inside");
    let copy = tmpdir("inside-copy");
    let n = node(&dir, 0, "4096", &[]);
    let port = n.port("ipc");
    let pos = fill(port, 0, 20, 200).await;
    let bad = pos[5] + 3;
    let (tx, _rx) = unbounded_channel();
    let r = Subscriber::start_with(
        cfg(&copy, port),
        From::Position(bad as i64),
        on_msg(tx.clone()),
        on_event(tx),
    )
    .await;
    match r {
        Err(SubscriberError::Refused(e)) => {
            assert!(e.contains(&format!("position {bad} is not the start of a record")), "{e}")
        }
        other => panic!("expected the node's refusal, got {other:?}"),
    }
    let (sub, mut rx) = start(cfg(&copy, port), From::Position(pos[5] as i64), None).await;
    assert_eq!(next_value(&mut rx).await, filled(5, 200));
    wait_copied(&sub, port).await;
    drop(sub);
    drop(n);
    let mut alone = cfg(&copy, port);
    alone.cluster.clear();
    let (tx, _rx) = unbounded_channel();
    match Subscriber::start_with(alone, From::Position(bad as i64), on_msg(tx.clone()), on_event(tx)).await {
        Err(SubscriberError::Log(qmesh_log::Error::NotARecordStart { pos: p, inside, next })) => {
            assert_eq!((p.as_u64(), inside.map(|r| r.as_u64()), next.as_u64()), (bad, Some(pos[5]), pos[6]))
        }
        other => panic!("expected the copy's refusal, got {other:?}"),
    }
    for d in [dir, copy] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The node's `/api/streams` lists a Subscriber's copying connection (`copies`: how far its copy is shipped, its
/// lag) and `/metrics` counts it; both forget it when the Subscriber goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_lists_copying_subscribers() {
    let dir = tmpdir("copies");
    let n = node(&dir, 0, "64KiB", &[]);
    let port = n.port("ipc");
    let c = connect(port).await.unwrap();
    for i in 1..=20 {
        publish(&c, upd("t", i)).await;
    }
    let sub = Subscriber::start(cfg(&tmpdir("copies-copy"), port), From::Start, |_| {}).await.unwrap();
    wait_copied(&sub, port).await;
    let want = latest(port).await.unwrap();
    let view = || async {
        let (status, body) = common::http_get(n.addr("http"), "/api/streams").await.unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["streams"]["s"]["copies"].clone()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let copies = view().await;
        if copies[0]["shipped"] == want && copies[0]["lag_bytes"] == 0 {
            assert_eq!(copies.as_array().map(Vec::len), Some(1), "{copies}");
            assert!(copies[0]["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1")), "{copies}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy is not listed as shipped to {want}: {copies}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = common::http_get(n.addr("http"), "/metrics").await.unwrap();
    assert!(metrics.contains("qmesh_rt_copies{stream=\"s\"} 1"), "{metrics}");
    drop(sub);
    let deadline = tokio::time::Instant::now() + WAIT;
    while view().await.as_array().is_none_or(|a| !a.is_empty()) {
        assert!(tokio::time::Instant::now() < deadline, "the closed copy is still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(n);
    for d in ["copies", "copies-copy"] {
        let _ = std::fs::remove_dir_all(tmpdir(d));
    }
}
