//! The WebSocket change feed over real sockets: snapshot then changes,
//! resume after a dropped socket with no gap and no duplicate, filtered
//! subscriptions, a fresh snapshot for a number of another run, a slow
//! consumer told and dropped, and browser messages that try to run code.

mod common;

use std::collections::BTreeSet;

use common::*;
use futures::SinkExt;
use qmesh_discovery::Options;

#[tokio::test]
async fn snapshot_then_numbered_changes_then_resume_without_gap_or_duplicate() {
    let r = Registry::start(Options::default()).await;
    let conn = r.connect().await;
    for name in ["a", "b", "c"] {
        conn.call(&store_hb(blog_payload(name, 0))).await.unwrap();
    }
    let mut ws = Ws::connect(r.http).await;
    ws.send(r#"{"op":"subscribe"}"#).await;
    let snap = ws.next().await.unwrap();
    assert_eq!(snap["type"], "snapshot", "{snap}");
    assert_eq!(snap["fresh"], true);
    assert_eq!(snap["reason"], "new");
    assert_eq!(snap["processes"].as_array().unwrap().len(), 3);
    let epoch = snap["epoch"].as_str().unwrap().to_string();
    let mut seen: Vec<u64> = Vec::new();
    let mut last = snap["seq"].as_u64().unwrap();

    // 200 beats; read 50 of them and drop the socket mid-stream.
    for i in 1..=200 {
        conn.send_async(&store_hb(blog_payload(["a", "b", "c"][i % 3], i as i64))).unwrap();
    }
    for _ in 0..50 {
        let m = ws.next().await.unwrap();
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "no gap: {m}");
        last = seq;
        seen.push(seq);
    }
    drop(ws);
    // More changes while it is away.
    for i in 201..=300 {
        conn.send_async(&store_hb(blog_payload(["a", "b", "c"][i % 3], i as i64))).unwrap();
    }
    conn.call(&store_hb(blog_payload("d", 0))).await.unwrap();
    let head = r.handle.seq();

    let mut ws = Ws::connect(r.http).await;
    ws.send(&format!(r#"{{"op":"subscribe","after":{last},"epoch":"{epoch}"}}"#)).await;
    let resume = ws.next().await.unwrap();
    assert_eq!(resume["type"], "resume", "{resume}");
    while last < head {
        let m = ws.next().await.unwrap();
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "no gap, no duplicate: {m}");
        last = seq;
        seen.push(seq);
    }
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no change seen twice");
    // The last one is the new process.
    conn.call(&store_hb(blog_payload("d", 1))).await.unwrap();
    let m = ws.next().await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64(), m["process"]["state"].as_str()),
        (Some("upsert"), Some(head + 1), Some("active"))
    );

    // A number from another run of the registry: a fresh snapshot, marked.
    let mut ws2 = Ws::connect(r.http).await;
    ws2.send(r#"{"op":"subscribe","after":3,"epoch":"another-run"}"#).await;
    let snap = ws2.next().await.unwrap();
    assert_eq!(
        (snap["type"].as_str(), snap["fresh"].as_bool(), snap["reason"].as_str()),
        (Some("snapshot"), Some(true), Some("restart"))
    );
    // A number never issued: fresh snapshot too.
    ws2.send(&format!(r#"{{"op":"subscribe","after":{},"epoch":"{epoch}"}}"#, head + 1000)).await;
    let snap = ws2.next().await.unwrap();
    assert_eq!((snap["type"].as_str(), snap["reason"].as_str()), (Some("snapshot"), Some("unknown")));
    r.stop().await;
}

#[tokio::test]
async fn a_subscription_to_chosen_names_or_kinds_sees_only_those() {
    let r = Registry::start(Options::default()).await;
    let conn = r.connect().await;
    conn.call(&store_hb(rich_payload("r1", "rdb", 0, "ok", &[], None))).await.unwrap();
    conn.call(&store_hb(rich_payload("h1", "hdb", 0, "ok", &[], None))).await.unwrap();
    conn.call(&store_hb(rich_payload("g1", "gateway", 0, "ok", &[], None))).await.unwrap();
    let mut ws = Ws::connect(r.http).await;
    ws.send(r#"{"op":"subscribe","names":["g1"],"kinds":[]}"#).await;
    let snap = ws.next().await.unwrap();
    let names: Vec<&str> =
        snap["processes"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["g1"]);
    for n in 1..5 {
        conn.call(&store_hb(rich_payload("r1", "rdb", n, "ok", &[], None))).await.unwrap();
        conn.call(&store_hb(rich_payload("g1", "gateway", n, "ok", &[], None))).await.unwrap();
    }
    for _ in 1..5 {
        let m = ws.next().await.unwrap();
        let name = m["name"].as_str().or(m["process"]["name"].as_str());
        assert_eq!(name, Some("g1"), "{m}");
    }
    ws.send(r#"{"op":"subscribe","kinds":["rdb","hdb"]}"#).await;
    let snap = ws.next().await.unwrap();
    let mut names: Vec<&str> =
        snap["processes"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["h1", "r1"]);
    r.stop().await;
}

#[tokio::test]
async fn browser_messages_that_try_to_run_code_get_errors_and_run_nothing() {
    let r = Registry::start(Options::default()).await;
    let mut ws = Ws::connect(r.http).await;
    let attempts = [
        r#".master.loadPage[]"#,
        r#"value "system \"touch /tmp/qmesh-pwned\"""#,
        r#"{"op":"eval","q":"system \"touch /tmp/qmesh-pwned\""}"#,
        r#"{"op":"subscribe","names":"x;system \"id\""}"#,
        r#"{"op":"subscribe","after":1,"func":".master.getDiscovery"}"#,
        r#"{"op":"ping","extra":true}"#,
        r#"["subscribe"]"#,
        r#"<script>alert(1)</script>"#,
    ];
    for a in attempts {
        ws.send(a).await;
        let m = ws.next().await.expect("an answer");
        assert_eq!(m["type"], "error", "{a} -> {m}");
        assert_eq!(m["error"], "bad request", "{a} -> {m}");
    }
    ws.stream.send(tokio_tungstenite::tungstenite::Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(ws.next().await.unwrap()["type"], "error");
    // Still serving, and nothing ran.
    ws.send(r#"{"op":"ping"}"#).await;
    assert_eq!(ws.next().await.unwrap()["type"], "pong");
    assert!(!std::path::Path::new("/tmp/qmesh-pwned").exists());
    // Oversized messages close the socket, not the registry.
    ws.send(&format!(r#"{{"op":"subscribe","names":["{}"]}}"#, "x".repeat(100_000))).await;
    assert!(ws.next().await.is_none());
    let (status, _) = r.get("/healthz").await;
    assert_eq!(status, 200);
    let (_, metrics) = r.get("/metrics").await;
    assert!(metrics.contains(r#"qmesh_discovery_rejected_total{reason="ws"} 9"#), "{metrics}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_told_and_dropped_and_may_resume() {
    let r = Registry::start(Options::default()).await;
    let conn = r.connect().await;
    conn.call(&store_hb(blog_payload("p", 0))).await.unwrap();
    let mut slow = Ws::connect_small_buffer(r.http).await;
    slow.send(r#"{"op":"subscribe"}"#).await;
    let snap = slow.next().await.unwrap();
    let epoch = snap["epoch"].as_str().unwrap().to_string();
    let mut last = snap["seq"].as_u64().unwrap();
    // Far more changes than the socket's buffers (a 16 KiB receive buffer,
    // the server's send buffer of at most 4 MiB: ~40,000 beats) and the
    // queue (8,192) hold, while it reads nothing.
    for round in 0..24 {
        for i in 0..5_000 {
            conn.send_async(&store_hb(blog_payload("p", round * 5_000 + i + 1))).unwrap();
        }
        conn.call(&store_hb(blog_payload("p", 0))).await.unwrap();
    }
    // It reads what was queued, then the notice, then the close.
    let notice = loop {
        let m = slow.next().await.expect("the notice before the close");
        if m["type"] == "dropped" {
            break m;
        }
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1);
        last = seq;
    };
    assert_eq!(notice["reason"], "slow consumer");
    assert_eq!(notice["seq"].as_u64(), Some(last), "the notice names the last change delivered");
    assert!(slow.next().await.is_none());
    let (_, metrics) = r.get("/metrics").await;
    assert!(metrics.contains("qmesh_discovery_ws_dropped_total 1"), "{metrics}");
    // The registry is fine; the subscriber comes back (a replay or, if its
    // number fell out of the history, a fresh snapshot).
    let mut back = Ws::connect(r.http).await;
    back.send(&format!(r#"{{"op":"subscribe","after":{last},"epoch":"{epoch}"}}"#)).await;
    let m = back.next().await.unwrap();
    assert!(m["type"] == "resume" || (m["type"] == "snapshot" && m["reason"] == "too old"), "{m}");
    r.stop().await;
}
