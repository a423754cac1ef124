//! The gateway and load balancer over real sockets, against whitepaper
//! services (tests/py/wp_service.py, which behaves as the paper's service.q),
//! with qmesh-ipc clients in the three reply modes.
//!
//! Timeouts are real here (other processes are involved, so the clock cannot
//! be paused); tests assert what happens, never how long it took.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use qmesh_codec::{Atom, K, MsgType, Vector};
use qmesh_routing::LbLocation;
use qmesh_routing::gw::GatewayConfig;
use qmesh_routing::lb::LbConfig;

const EQ: &str = "EQUITY_MARKET_RDB";

fn opts(pairs: Vec<(&str, K)>) -> K {
    let (keys, vals): (Vec<&str>, Vec<K>) = pairs.into_iter().unzip();
    K::dict(K::syms(keys), K::list(vals))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_deferred_and_callback_all_get_their_result() {
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let Some(_s1) = wp_service(gw.port, EQ, &[]) else { return };
    let Some(_s2) = wp_service(gw.port, EQ, &[]) else { return };
    wait_instances(&gw.router, EQ, 2).await;
    let mut c = connect(gw.port).await;

    // sync: the result is the response
    assert_eq!(
        sync(&c, EQ, "til 3").await,
        Ok(K::Vector(qmesh_codec::Attr::None, Vector::Long(vec![0, 1, 2])))
    );
    let t = sync(&c, EQ, "egTrade").await.unwrap();
    assert_eq!((t.ty(), t.count()), (98, 10));

    // deferred sync: neg[h](`userQuery;…); h[]
    c.send_async(&user_query(EQ, "til 2")).unwrap();
    let m = next_async(&mut c).await;
    assert_eq!(m.msg_type(), MsgType::Async);
    assert_eq!(result_or_error(&m), Ok(K::Vector(qmesh_codec::Attr::None, Vector::Long(vec![0, 1]))));

    // callback: neg[h](`userQuery;(`svc;"q");`cb) → cb[hdr;result]
    c.send_async(&K::list(vec![K::sym("userQuery"), args(K::sym(EQ), "til 1", None), K::sym("cb")])).unwrap();
    let m = next_async(&mut c).await;
    let K::List(_, items) = m.decode().unwrap() else { panic!("callback is a list") };
    assert_eq!(items[0], K::sym("cb"));
    let K::Dict(hdr) = &items[1] else { panic!("header is a dictionary") };
    assert_eq!(hdr.keys, K::syms(["ok", "error", "service", "query"]));
    assert_eq!(
        hdr.values,
        K::list(vec![K::Atom(Atom::Boolean(true)), K::string(""), K::sym(EQ), K::string("til 1")])
    );
    assert_eq!(items[2], K::Vector(qmesh_codec::Attr::None, Vector::Long(vec![0])));

    // the function name may be a string, as PyKX sends it
    let by_string = K::list(vec![K::string("userQuery"), args(K::sym(EQ), "1+1", None)]);
    assert_eq!(sync_k(&c, &by_string).await, Ok(K::long(2)));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_real_errors_in_every_mode() {
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let Some(_s) = wp_service(gw.port, EQ, &["--error-flag"]) else { return };
    wait_instances(&gw.router, EQ, 1).await;
    let mut c = connect(gw.port).await;

    assert_eq!(sync(&c, "NOPE", "x").await, Err("unknown service: NOPE".into()));
    assert_eq!(sync(&c, EQ, "error boom").await, Err(format!("service error: {EQ}: boom")));
    // the whitepaper's errProj path ((seq;`stop), no function name) is an error too
    assert_eq!(sync(&c, EQ, "stop").await, Err(format!("service error: {EQ}: stop")));
    // malformed requests
    let bad = K::list(vec![K::sym("userQuery"), K::long(1)]);
    assert!(sync_k(&c, &bad).await.unwrap_err().starts_with("bad request"));
    assert!(sync_k(&c, &K::string("userQuery[(`a;\"b\")]")).await.unwrap_err().starts_with("bad request"));
    assert!(
        sync_k(&c, &K::list(vec![K::sym("frobnicate"), K::long(1)]))
            .await
            .unwrap_err()
            .starts_with("bad request")
    );
    // q's chaser h"" is answered (::)
    assert_eq!(sync_k(&c, &K::string("")).await, Ok(K::GenericNull));

    // deferred: an error object, which q's h[] (and PyKX, qPython) raise
    c.send_async(&user_query("NOPE", "x")).unwrap();
    let m = next_async(&mut c).await;
    assert_eq!(m.body()[0], 0x80, "an error object");
    assert_eq!(result_or_error(&m), Err("unknown service: NOPE".into()));

    // callback: ok is 0b, the error text in the header, the payload (::)
    c.send_async(&K::list(vec![K::sym("userQuery"), args(K::sym(EQ), "error boom", None), K::sym("cb")]))
        .unwrap();
    let K::List(_, items) = next_async(&mut c).await.decode().unwrap() else { panic!() };
    let K::Dict(hdr) = &items[1] else { panic!() };
    let K::List(_, v) = &hdr.values else { panic!() };
    assert_eq!(v[0], K::Atom(Atom::Boolean(false)));
    assert_eq!(v[1], K::string(format!("service error: {EQ}: boom")));
    assert_eq!(items[2], K::GenericNull);
    gw.stop().await;
}

/// Issue 13: a `userQuery` whose argument is not `(service;query[;options])`
/// gets `'bad request: …` — the response to a sync call, one async error
/// message to an async one — and is never taken for a callback (the
/// two-argument slip `` (`userQuery;`EQ;"select …") `` used to be answered
/// as a callback named after the query text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_user_query_is_a_bad_request_never_a_callback() {
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let mut c = connect(gw.port).await;
    let uq = |args: Vec<K>| {
        let mut items = vec![K::sym("userQuery")];
        items.extend(args);
        K::list(items)
    };
    let malformed = [
        // the service and the query as two arguments
        uq(vec![K::sym(EQ), K::string("select from trade")]),
        uq(vec![K::string(EQ), K::string("select from trade")]),
        uq(vec![K::long(1)]),
        uq(vec![]),
        uq(vec![K::list(vec![K::sym(EQ)])]),
        uq(vec![K::list(vec![K::sym(EQ), K::string("q"), K::long(1), K::long(2)])]),
        uq(vec![K::list(vec![K::long(1), K::string("q")])]),
        // a well-formed pair with a callback name that is not a name
        uq(vec![args(K::sym(EQ), "q", None), K::long(42)]),
        uq(vec![args(K::sym(EQ), "q", None), K::sym("cb"), K::sym("more")]),
    ];
    for m in &malformed {
        let e = sync_k(&c, m).await.unwrap_err();
        assert!(e.starts_with("bad request: "), "sync {m:?}: {e}");
    }
    for m in &malformed {
        c.send_async(m).unwrap();
        let reply = next_async(&mut c).await;
        let e = result_or_error(&reply).unwrap_err();
        assert!(e.starts_with("bad request: "), "async {m:?}: {e}");
    }
    // exactly one message each: the next one answers the next request
    c.send_async(&user_query("NOPE", "x")).unwrap();
    assert_eq!(result_or_error(&next_async(&mut c).await), Err("unknown service: NOPE".into()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitepaper_service_errors_arrive_as_the_paper_sends_them() {
    // service.q's execRequest turns an error into its text: @[value;q;{x}].
    // Without the qmesh flag the gateway cannot tell it from a string result;
    // it is forwarded as sent (documented).
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let Some(_s) = wp_service(gw.port, EQ, &[]) else { return };
    wait_instances(&gw.router, EQ, 1).await;
    let c = connect(gw.port).await;
    assert_eq!(sync(&c, EQ, "error boom").await, Ok(K::string("boom")));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_empty_and_500mb_results_arrive_unchanged() {
    let gw = embedded(LbConfig::default(), GatewayConfig::default()).await;
    let Some(_s) = wp_service(gw.port, EQ, &[]) else { return };
    let Some(direct) = lone_service() else { return };
    wait_instances(&gw.router, EQ, 1).await;
    let c = connect(gw.port).await;
    assert_eq!(sync(&c, EQ, "null").await, Ok(K::GenericNull));
    let empty = sync(&c, EQ, "empty").await.unwrap();
    assert_eq!((empty.ty(), empty.count()), (98, 0));

    // byte for byte what the service itself answers
    let d = connect(direct.port("ipc")).await;
    for q in ["egTrade", "empty", "null", "til 1000"] {
        let routed = c.call(&user_query(EQ, q)).await.unwrap();
        let straight = d.call(&K::string(q)).await.unwrap();
        assert_eq!(routed.body(), straight.body(), "{q}");
    }

    // the call's own deadline: moving 500 MB through a Python service may
    // pass the default 30 s on a loaded machine
    let n = 500_000_000usize;
    let big = user_query_opts(K::sym(EQ), &format!("bytes {n}"), K::long(300_000));
    let m =
        tokio::time::timeout(Duration::from_secs(300), c.call(&big)).await.expect("500 MB in time").unwrap();
    let body = m.body();
    assert_eq!(body.len(), 6 + n);
    assert_eq!(&body[..6], &[4, 0, 0x00, 0x65, 0xcd, 0x1d], "byte vector of 500,000,000");
    assert!(body[6..].iter().all(|&b| b == 0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_keeps_the_instance_until_it_is_really_free() {
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let Some(_s) = wp_service(gw.port, EQ, &[]) else { return };
    wait_instances(&gw.router, EQ, 1).await;
    let c = connect(gw.port).await;
    let slow = user_query_opts(K::sym(EQ), "sleep 3000", K::long(100));
    assert_eq!(sync_k(&c, &slow).await, Err("timeout".into()));
    // the query still runs: the instance is not handed to anyone else
    assert_eq!(lb_gauges(&gw.router, EQ), (1, 0, 1, 0));
    // a later request waits for it and succeeds
    let who = sync(&c, EQ, "whoami").await.unwrap();
    assert!(sym(&who).starts_with(":127.0.0.1:"));
    // per-call timeout as a timespan and in an options dictionary
    let o = opts(vec![("timeout", K::Atom(Atom::Timespan(100_000_000)))]);
    assert_eq!(sync_k(&c, &user_query_opts(K::sym(EQ), "sleep 800", o)).await, Err("timeout".into()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_instance_is_dropped_after_the_grace_and_comes_back() {
    let lb = LbConfig { stuck_grace: Duration::from_millis(200), ..LbConfig::default() };
    let gw = embedded(lb, fast_gateway()).await;
    let Some(_s) = wp_service(gw.port, EQ, &[]) else { return };
    wait_instances(&gw.router, EQ, 1).await;
    let c = connect(gw.port).await;
    let stuck = user_query_opts(K::sym(EQ), "sleep 4000", K::long(100));
    assert_eq!(sync_k(&c, &stuck).await, Err("timeout".into()));
    // deadline + grace: dropped from the pool (its connection closed)
    wait_registered(&gw.router, EQ, 0).await;
    assert_eq!(sync(&c, EQ, "whoami").await, Err(format!("no instance: {EQ}")));
    // when its query ends it finds the load balancer gone and registers again
    wait_registered(&gw.router, EQ, 1).await;
    wait_instances(&gw.router, EQ, 1).await;
    assert!(sync(&c, EQ, "whoami").await.is_ok());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_dying_mid_query_fails_its_client_and_the_queue_moves_on() {
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let Some(_s1) = wp_service(gw.port, EQ, &[]) else { return };
    let Some(_s2) = wp_service(gw.port, EQ, &[]) else { return };
    wait_instances(&gw.router, EQ, 2).await;
    let mut c = connect(gw.port).await;
    // one instance sleeps, the other dies; three more wait in the queue
    c.send_async(&user_query(EQ, "sleep 300")).unwrap();
    c.send_async(&user_query(EQ, "die")).unwrap();
    for _ in 0..3 {
        c.send_async(&user_query(EQ, "whoami")).unwrap();
    }
    let mut errors = Vec::new();
    let mut whoamis = Vec::new();
    for _ in 0..5 {
        match result_or_error(&next_async(&mut c).await) {
            Err(e) => errors.push(e),
            Ok(K::Atom(Atom::Symbol(s))) => whoamis.push(s),
            Ok(_) => {}
        }
    }
    assert_eq!(errors, vec![format!("service disconnected: {EQ}")]);
    assert_eq!(whoamis.len(), 3);
    assert!(whoamis.windows(2).all(|w| w[0] == w[1]), "the survivor ran them all");
    wait_registered(&gw.router, EQ, 1).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_bounded_fifo_and_disconnect_drops_queued_work() {
    let lb = LbConfig { queue_limit: 2, ..LbConfig::default() };
    let gw = embedded(lb, fast_gateway()).await;
    let Some(_s) = wp_service(gw.port, EQ, &[]) else { return };
    wait_instances(&gw.router, EQ, 1).await;
    let mut busy = connect(gw.port).await;
    busy.send_async(&user_query(EQ, "sleep 3000")).unwrap();
    wait_for(&gw.router, "the instance busy", |_| lb_gauges(&gw.router, EQ).2 == 1).await;

    // a client queues one request and leaves: its request leaves the queue
    let leaver = connect(gw.port).await;
    leaver.send_async(&user_query(EQ, "1+1")).unwrap();
    wait_for(&gw.router, "one queued", |_| lb_gauges(&gw.router, EQ).3 == 1).await;
    drop(leaver);
    wait_for(&gw.router, "queue emptied", |_| lb_gauges(&gw.router, EQ).3 == 0).await;

    // FIFO and the bound: two wait, the third is refused
    let mut c = connect(gw.port).await;
    c.send_async(&user_query(EQ, "1+1")).unwrap();
    c.send_async(&user_query(EQ, "2+2")).unwrap();
    wait_for(&gw.router, "two queued", |_| lb_gauges(&gw.router, EQ).3 == 2).await;
    assert_eq!(sync(&c, EQ, "3+3").await, Err(format!("queue full: {EQ}")));
    assert_eq!(result_or_error(&next_async(&mut c).await), Ok(K::long(2)));
    assert_eq!(result_or_error(&next_async(&mut c).await), Ok(K::long(4)));
    assert_eq!(result_or_error(&next_async(&mut busy).await), Ok(K::long(3000)));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_never_receives_an_old_clients_result() {
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let Some(_s) = wp_service(gw.port, EQ, &[]) else { return };
    wait_instances(&gw.router, EQ, 1).await;
    for _ in 0..3 {
        let old = connect(gw.port).await;
        old.send_async(&user_query(EQ, "sleep 200")).unwrap();
        old.flush().await.unwrap();
        drop(old);
        // likely the same socket number: q would hand it the old result
        let mut new = connect(gw.port).await;
        new.send_async(&user_query(EQ, "whoami")).unwrap();
        let first = result_or_error(&next_async(&mut new).await).unwrap();
        assert_eq!(first.ty(), -11, "got {first:?}, not its own result");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_joins_tables_and_reports_partial_failure() {
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let Some(_a) = wp_service(gw.port, EQ, &["--error-flag"]) else { return };
    let Some(_b) = wp_service(gw.port, EQ, &["--error-flag"]) else { return };
    let Some(_f) = wp_service(gw.port, "FX", &["--error-flag"]) else { return };
    wait_instances(&gw.router, EQ, 2).await;
    wait_instances(&gw.router, "FX", 1).await;
    let c = connect(gw.port).await;
    let two = K::syms([EQ, "FX"]);
    // tables concatenated
    let t =
        sync_k(&c, &K::list(vec![K::sym("userQuery"), args(two.clone(), "egTrade", None)])).await.unwrap();
    assert_eq!((t.ty(), t.count()), (98, 20));
    // otherwise a list, in the order of the services
    let l = sync_k(&c, &K::list(vec![K::sym("userQuery"), args(two.clone(), "1+1", None)])).await.unwrap();
    assert_eq!(l, K::list(vec![K::long(2), K::long(2)]));
    // every instance of one service
    let all = opts(vec![("all", K::Atom(Atom::Boolean(true)))]);
    let K::List(_, who) = sync_k(&c, &user_query_opts(K::sym(EQ), "whoami", all)).await.unwrap() else {
        panic!("a list")
    };
    let mut who: Vec<String> = who.iter().map(sym).collect();
    who.dedup();
    assert_eq!(who.len(), 2, "both instances answered");
    // one part fails: the request fails
    let err =
        sync_k(&c, &K::list(vec![K::sym("userQuery"), args(two, "error boom", None)])).await.unwrap_err();
    assert!(err.starts_with("service error: ") && err.ends_with(": boom"), "{err}");
    // an unknown service among several
    let mixed = K::list(vec![K::sym("userQuery"), args(K::syms([EQ, "NOPE"]), "1+1", None)]);
    assert_eq!(sync_k(&c, &mixed).await, Err("unknown service: NOPE".into()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_gateways_share_one_load_balancer() {
    let lb = lb(LbConfig::default()).await;
    let lb_addr = qmesh_ipc::Address::parse(&format!("127.0.0.1:{}", lb.port)).unwrap();
    let g1 = gateway(LbLocation::Remote(lb_addr.clone()), fast_gateway()).await;
    let g2 = gateway(LbLocation::Remote(lb_addr), fast_gateway()).await;
    let Some(_s1) = wp_service(lb.port, EQ, &[]) else { return };
    let Some(_s2) = wp_service(lb.port, EQ, &[]) else { return };
    wait_registered(&lb.router, EQ, 2).await;
    wait_instances(&g1.router, EQ, 2).await;
    wait_instances(&g2.router, EQ, 2).await;
    let c1 = connect(g1.port).await;
    let c2 = connect(g2.port).await;
    let (a, b) = tokio::join!(
        async {
            let mut v = Vec::new();
            for _ in 0..20 {
                v.push(sync(&c1, EQ, "whoami").await.unwrap());
            }
            v
        },
        async {
            let mut v = Vec::new();
            for _ in 0..20 {
                v.push(sync(&c2, EQ, "whoami").await.unwrap());
            }
            v
        }
    );
    assert_eq!(a.len() + b.len(), 40);
    // one instance busy in gateway 1 makes gateway 2 use the other
    let slow = connect(g1.port).await;
    slow.send_async(&user_query(EQ, "sleep 500")).unwrap();
    wait_for(&lb.router, "one busy", |_| lb_gauges(&lb.router, EQ).2 == 1).await;
    assert!(sync(&c2, EQ, "whoami").await.is_ok());
    assert_eq!(sync(&c2, "NOPE", "x").await, Err("unknown service: NOPE".into()));
    g1.stop().await;
    g2.stop().await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_speaks_to_a_whitepaper_gateway() {
    // The paper's gateway: registerGW sync, requestService[seq;serv] with an
    // int seq, serviceAlloc back, returnService[seq] when the user is gone.
    let lb = lb(LbConfig::default()).await;
    let Some(_s) = wp_service(lb.port, EQ, &[]) else { return };
    wait_registered(&lb.router, EQ, 1).await;
    let mut g = connect(lb.port).await;
    let rows = g.call(&K::list(vec![K::sym("registerGW"), K::sym("")])).await.unwrap().decode().unwrap();
    assert_eq!(rows.ty(), 98);
    assert_eq!(rows.count(), 1);
    g.send_async(&K::list(vec![K::sym("requestService"), K::Atom(Atom::Int(7)), K::sym(EQ)])).unwrap();
    let K::List(_, alloc) = next_async(&mut g).await.decode().unwrap() else { panic!() };
    assert_eq!(alloc[0], K::sym("serviceAlloc"));
    assert_eq!(alloc[1], K::long(7));
    let addr = sym(&alloc[2]);
    assert!(addr.starts_with(":127.0.0.1:"));
    // busy: a second request waits
    g.send_async(&K::list(vec![K::sym("requestService"), K::Atom(Atom::Int(8)), K::sym(EQ)])).unwrap();
    wait_for(&lb.router, "queued", |_| lb_gauges(&lb.router, EQ).3 == 1).await;
    // the user of 7 went away: returnService[7] frees it for 8
    g.send_async(&K::list(vec![K::sym("returnService"), K::Atom(Atom::Int(7))])).unwrap();
    let K::List(_, alloc) = next_async(&mut g).await.decode().unwrap() else { panic!() };
    assert_eq!(alloc[1], K::long(8));
    // a late duplicate of the same release changes nothing
    g.send_async(&K::list(vec![K::sym("returnService"), K::Atom(Atom::Int(7))])).unwrap();
    g.flush().await.unwrap();
    wait_for(&lb.router, "still busy", |_| lb_gauges(&lb.router, EQ) == (1, 0, 1, 0)).await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_query_answers_json_and_catalog_errors() {
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let Some(_s) = wp_service(gw.port, EQ, &["--error-flag"]) else { return };
    wait_instances(&gw.router, EQ, 1).await;
    let http = gw.http.unwrap();
    let post = |body: String| async move { http_post(http, "/query", &body).await };
    let (status, v) = post(format!(r#"{{"service":"{EQ}","query":"egTrade"}}"#)).await;
    assert_eq!(status, 200);
    assert_eq!(v["type"], 98);
    assert_eq!(v["result"].as_array().unwrap().len(), 10);
    assert_eq!(v["result"][0]["sym"], "FDP");
    let (status, v) = post(format!(r#"{{"service":"{EQ}","query":"egTrade","format":"columns"}}"#)).await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["price"].as_array().unwrap().len(), 10);
    let (status, v) = post(r#"{"service":"NOPE","query":"x"}"#.into()).await;
    assert_eq!(
        (status, v["error"].as_str(), v["detail"].as_str()),
        (404, Some("unknown service"), Some("NOPE"))
    );
    let (status, v) = post(format!(r#"{{"service":"{EQ}","query":"sleep 1000","timeout_ms":50}}"#)).await;
    assert_eq!((status, v["error"].as_str()), (504, Some("timeout")));
    let (status, v) = post(format!(r#"{{"service":"{EQ}","query":"error boom"}}"#)).await;
    assert_eq!((status, v["error"].as_str()), (422, Some("service error")));
    let (status, v) = post("not json".into()).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("bad request")));
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    for m in [
        "qmesh_gateway_requests_total{mode=\"http\"}",
        "qmesh_gateway_errors_total{kind=\"timeout\"}",
        "qmesh_gateway_request_duration_seconds_bucket",
        "qmesh_gateway_waiting_requests{service=",
        "qmesh_gateway_in_flight_requests{service=",
        "qmesh_lb_queue_depth_requests{service=",
        "qmesh_lb_instances{service=",
    ] {
        assert!(body.contains(m), "{m} missing from\n{body}");
    }
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    gw.stop().await;
}

async fn http_request(addr: std::net::SocketAddr, req: String) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(REPLY, s.read_to_string(&mut out)).await.unwrap().unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await
}

async fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = http_request(addr, req).await;
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}
