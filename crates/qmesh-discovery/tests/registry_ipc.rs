//! The registry over real sockets on 127.0.0.1: heartbeats (the blog's and
//! richer), sync answers, lookups, disconnects, the `expiredH` takeover,
//! flap damping on a manual clock, limits, `-u`, restarts with the store,
//! and PyKX sending exactly the blog's payload.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use qmesh_codec::{Atom, K, Vector};
use qmesh_discovery::registry::{KindPolicy, State};
use qmesh_discovery::{Clock, Config, Options};
use qmesh_ipc::{Address, ClientOptions, Connection, IpcError, PasswordFile};

fn dict_get<'a>(k: &'a K, key: &str) -> Option<&'a K> {
    let K::Dict(d) = k else { return None };
    let K::Vector(_, Vector::Symbol(keys)) = &d.keys else { return None };
    let i = keys.iter().position(|x| x == key.as_bytes())?;
    match &d.values {
        K::List(_, items) => items.get(i),
        _ => None,
    }
}

#[tokio::test]
async fn blog_heartbeats_then_the_blogs_table() {
    let r = Registry::start(Options::default()).await;
    let conn = r.connect().await;
    for i in 0..3 {
        conn.send_async(&store_hb(blog_payload("milg_11460", i))).unwrap();
    }
    r.wait_for("milg_11460", |p| p.is_some_and(|p| p.counter == 2)).await;
    let p = r.handle.get("milg_11460").unwrap();
    assert_eq!(
        (p.state, p.pid, p.host.as_str(), p.port),
        (State::Active, Some(4242), "testhost", Some(5001))
    );
    assert_eq!(p.client_time, Some(55_277_287), "the client's clock is recorded");

    // h".master.discovery": the keyed table, the blog's columns first.
    let t = conn.query(".master.discovery").await.unwrap();
    let K::Dict(d) = &t else { panic!("{t:?}") };
    let (K::Table(keys), K::Table(values)) = (&d.keys, &d.values) else { panic!() };
    assert_eq!(keys.column(b"process"), Some(&K::syms(["milg_11460"])));
    let cols: Vec<String> = values.names.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
    assert_eq!(
        cols[..9],
        ["handle", "ip", "address", "pid", "counter", "lastHb", "active", "warning", "error"]
    );
    assert!(cols.contains(&"state".to_string()) && cols.contains(&"kind".to_string()));
    assert_eq!(values.column(b"active"), Some(&K::Vector(Default::default(), Vector::Boolean(vec![true]))));
    r.stop().await;
}

#[tokio::test]
async fn sync_heartbeat_answers_the_callers_state_and_server_time() {
    let r = Registry::start(Options::default()).await;
    let conn = r.connect().await;
    let a = conn
        .call(&store_hb(rich_payload("g1", "gateway", 0, "ok", &[("region", "ldn")], Some(8080))))
        .await
        .unwrap();
    let a = a.decode().unwrap();
    assert_eq!(dict_get(&a, "process"), Some(&K::sym("g1")));
    assert_eq!(dict_get(&a, "state"), Some(&K::sym("starting")));
    assert!(matches!(dict_get(&a, "time"), Some(K::Atom(Atom::Timestamp(_)))));
    assert_eq!(dict_get(&a, "warnAfter"), Some(&K::Atom(Atom::Timespan(30_000_000_000))));
    let a = conn
        .call(&store_hb(rich_payload("g1", "gateway", 1, "ok", &[("region", "ldn")], Some(8080))))
        .await
        .unwrap();
    assert_eq!(dict_get(&a.decode().unwrap(), "state"), Some(&K::sym("active")));
    // Self-reported warn.
    let a = conn
        .call(&store_hb(rich_payload("g1", "gateway", 2, "warn", &[("region", "ldn")], Some(8080))))
        .await
        .unwrap();
    assert_eq!(dict_get(&a.decode().unwrap(), "state"), Some(&K::sym("warning")));
    let p = r.handle.get("g1").unwrap();
    assert_eq!((p.note.as_str(), p.http, &*p.kind), ("self-reported", Some(8080), "gateway"));

    // Lookups over IPC: by kind, by state, by attribute.
    conn.send_async(&store_hb(rich_payload("r1", "rdb", 0, "ok", &[("region", "nyc")], None))).unwrap();
    r.wait_for("r1", |p| p.is_some()).await;
    let lookup = |filter: K| K::list(vec![K::sym(".master.lookup"), filter]);
    let rows = |t: K| {
        let K::Dict(d) = t else { panic!() };
        let K::Table(k) = &d.keys else { panic!() };
        k.column(b"process").cloned().unwrap()
    };
    let t = conn.call(&lookup(K::dict(K::syms(["kind"]), K::list(vec![K::sym("rdb")])))).await.unwrap();
    assert_eq!(rows(t.decode().unwrap()), K::syms(["r1"]));
    let t =
        conn.call(&lookup(K::dict(K::syms(["state"]), K::list(vec![K::syms(["warning"])])))).await.unwrap();
    assert_eq!(rows(t.decode().unwrap()), K::syms(["g1"]));
    let by_attr = K::dict(
        K::syms(["attrs"]),
        K::list(vec![K::dict(K::syms(["region"]), K::list(vec![K::sym("ldn")]))]),
    );
    let t = conn.call(&lookup(by_attr)).await.unwrap();
    assert_eq!(rows(t.decode().unwrap()), K::syms(["g1"]));

    // Over HTTP, the same filters.
    let j = r.json("/api/processes?kind=rdb").await;
    assert_eq!(j["processes"].as_array().unwrap().len(), 1);
    assert_eq!(j["processes"][0]["name"], "r1");
    let j = r.json("/api/processes?attr=region:ldn&state=warning").await;
    assert_eq!(j["processes"][0]["name"], "g1");
    let j = r.json("/api/processes/g1").await;
    assert_eq!(
        (j["state"].as_str(), j["http"].as_u64(), j["attrs"]["region"].as_str()),
        (Some("warning"), Some(8080), Some("ldn"))
    );
    let (status, body) = r.get("/api/processes/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains(r#""error":"unknown service""#), "{body}");
    let (status, body) = r.get("/api/processes?colour=red").await;
    assert_eq!(status, 400, "{body}");
    r.stop().await;
}

#[tokio::test]
async fn malformed_heartbeats_are_refused_and_change_no_other_row() {
    let r = Registry::start(Options::default()).await;
    let conn = r.connect().await;
    conn.call(&store_hb(blog_payload("good", 7))).await.unwrap();
    let before = r.handle.get("good").unwrap();
    let bad = [
        store_hb(K::long(1)),
        store_hb(K::dict(K::syms(["process", "pid"]), K::list(vec![K::sym("good"), K::sym("notanint")]))),
        store_hb(K::dict(K::syms(["process"]), K::list(vec![K::sym("has space")]))),
        store_hb(K::dict(
            K::syms(["process", "note"]),
            K::list(vec![K::sym("good"), K::string("x".repeat(5000))]),
        )),
        K::string("system \"touch /tmp/pwned\""),
        K::list(vec![K::sym("value"), K::string("1+1")]),
    ];
    for b in &bad {
        let e = conn.call(b).await.unwrap_err();
        let IpcError::Remote(text) = e else { panic!("{e:?}") };
        assert!(text.starts_with("bad request"), "{text}");
        conn.send_async(b).unwrap();
    }
    // A sync call after the async ones: they have all been handled.
    conn.call(&store_hb(blog_payload("other", 0))).await.unwrap();
    let after = r.handle.get("good").unwrap();
    assert_eq!((after.counter, after.beats, after.pid), (before.counter, before.beats, before.pid));
    let (_, metrics) = r.get("/metrics").await;
    let rejected: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("qmesh_discovery_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, 12.0, "{metrics}");
    assert!(
        metrics.contains(r#"qmesh_discovery_process_state{process="good",kind="",state="starting"} 1"#),
        "{metrics}"
    );
    r.stop().await;
}

#[tokio::test]
async fn disconnect_and_reconnect() {
    let r = Registry::start(Options::default()).await;
    let conn = r.connect().await;
    conn.call(&store_hb(blog_payload("rdb1", 0))).await.unwrap();
    conn.call(&store_hb(blog_payload("rdb1", 1))).await.unwrap();
    drop(conn);
    r.wait_for("rdb1", |p| p.is_some_and(|p| p.state == State::Disconnected && p.conn.is_none())).await;
    let conn = r.connect().await;
    conn.call(&store_hb(blog_payload("rdb1", 2))).await.unwrap();
    assert_eq!(r.handle.get("rdb1").unwrap().state, State::Starting);
    conn.call(&store_hb(blog_payload("rdb1", 3))).await.unwrap();
    assert_eq!(r.handle.get("rdb1").unwrap().state, State::Active);
    r.stop().await;
}

#[tokio::test]
async fn a_new_connection_takes_the_name_over_without_flapping() {
    let r = Registry::start(Options::default()).await;
    let old = r.connect().await;
    old.call(&store_hb(blog_payload("x", 0))).await.unwrap();
    old.call(&store_hb(blog_payload("x", 1))).await.unwrap();
    let seq_before = r.handle.seq();
    let (old_sender, mut old_rx) = old.split();
    let new = r.connect().await;
    new.call(&store_hb(blog_payload("x", 2))).await.unwrap();
    // The registry closes the old handle, as the blog's storeHb does.
    assert!(tokio::time::timeout(WAIT, old_rx.recv()).await.unwrap().is_none());
    drop(old_sender);
    // Its close changes nothing: still active, on the new connection.
    new.call(&store_hb(blog_payload("x", 3))).await.unwrap();
    let p = r.handle.get("x").unwrap();
    assert_eq!(p.state, State::Active);
    let j = r.json("/api/processes/x").await;
    assert_eq!(j["state"], "active");
    // Two changes since: the takeover (new handle) and one beat, no disconnect.
    assert_eq!(r.handle.seq(), seq_before + 2);
    r.stop().await;
}

#[tokio::test]
async fn states_follow_the_registrys_clock_with_flap_damping() {
    let mut config = Config::default();
    config.kinds.insert(
        "rdb".into(),
        KindPolicy { warn_after: 1_000, error_after: 3_000, remove_after: 10_000, rise: 3 },
    );
    let clock = Clock::manual(1_000_000);
    let r = Registry::start(Options { config, clock, ..Options::default() }).await;
    let conn = r.connect().await;
    let beat = |n| store_hb(rich_payload("r", "rdb", n, "ok", &[], None));
    let t0 = 1_000_000;
    for n in 0..3 {
        conn.call(&beat(n)).await.unwrap();
    }
    assert_eq!(r.handle.get("r").unwrap().state, State::Active);
    r.handle.set_time(t0 + 1_000);
    assert_eq!(r.handle.get("r").unwrap().state, State::Warning);
    r.handle.set_time(t0 + 3_000);
    assert_eq!(r.handle.get("r").unwrap().state, State::Error);
    conn.call(&beat(3)).await.unwrap();
    conn.call(&beat(4)).await.unwrap();
    assert_eq!(r.handle.get("r").unwrap().state, State::Error, "two beats are not three");
    conn.call(&beat(5)).await.unwrap();
    assert_eq!(r.handle.get("r").unwrap().state, State::Active);
    r.handle.set_time(t0 + 3_000 + 10_000);
    assert!(r.handle.get("r").is_none(), "removed after remove_after");
    r.stop().await;
}

#[tokio::test]
async fn users_file_refuses_unknown_users() {
    let users = PasswordFile::parse(b"ops:secret\n").unwrap();
    let r = Registry::start(Options { authenticator: Some(Arc::new(users)), ..Options::default() }).await;
    let port = r.ipc.port();
    let anon = Connection::connect(&Address::tcp("127.0.0.1", port), ClientOptions::default()).await;
    assert!(anon.is_err());
    let wrong = Address::tcp("127.0.0.1", port).with_credentials("ops", "nope");
    assert!(Connection::connect(&wrong, ClientOptions::default()).await.is_err());
    let ok = Address::tcp("127.0.0.1", port).with_credentials("ops", "secret");
    let conn = Connection::connect(&ok, ClientOptions::default()).await.unwrap();
    conn.call(&store_hb(blog_payload("a", 0))).await.unwrap();
    r.stop().await;
}

#[tokio::test]
async fn sd_lists_every_process_with_an_http_port_whatever_its_state() {
    let r = Registry::start(Options {
        config: Config { default: KindPolicy { rise: 1, ..KindPolicy::default() }, ..Config::default() },
        ..Options::default()
    })
    .await;
    let conn = r.connect().await;
    conn.call(&store_hb(rich_payload("gw", "gateway", 0, "ok", &[("region", "ldn")], Some(8080))))
        .await
        .unwrap();
    conn.call(&store_hb(rich_payload("nohttp", "rdb", 0, "ok", &[], None))).await.unwrap();
    conn.call(&store_hb(rich_payload("sick", "rdb", 0, "fail", &[], Some(8081)))).await.unwrap();
    let (status, body) = r.get("/sd").await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    // the one reporting `fail` stays a target (its alerts must fire)
    let groups = j.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{j}");
    let by =
        |name: &str| groups.iter().find(|g| g["labels"]["__meta_qmesh_process"] == name).cloned().unwrap();
    assert_eq!(by("gw")["targets"][0], "host-gateway:8080");
    assert_eq!(by("gw")["labels"]["__meta_qmesh_attr_region"], "ldn");
    assert_eq!(by("sick")["labels"]["__meta_qmesh_status"], "fail");
    r.stop().await;
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qmesh-discovery-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn a_restarted_registry_shows_what_it_knew_as_stale_until_beats_resume() {
    let dir = tempdir("restart");
    let options = Options { data: Some(dir.clone()), ..Options::default() };
    let r = Registry::start(options.clone()).await;
    let conn = r.connect().await;
    for n in 0..2 {
        conn.call(&store_hb(rich_payload("rdb1", "rdb", n, "ok", &[("region", "ldn")], Some(9000))))
            .await
            .unwrap();
        conn.call(&store_hb(rich_payload("hdb1", "hdb", n, "warn", &[], None))).await.unwrap();
    }
    drop(conn);
    r.wait_for("rdb1", |p| p.is_some_and(|p| p.state == State::Disconnected)).await;
    let conn2 = r.connect().await;
    conn2.call(&store_hb(rich_payload("live", "rdb", 0, "ok", &[], None))).await.unwrap();
    conn2.call(&store_hb(rich_payload("live", "rdb", 1, "ok", &[], None))).await.unwrap();
    drop(conn2);
    // Stopping writes the last changes.
    let epoch = r.handle.epoch();
    r.stop().await;

    let r = Registry::start(options).await;
    assert_ne!(r.handle.epoch(), epoch);
    let rdb = r.handle.get("rdb1").expect("restored");
    assert!(rdb.stale);
    assert_eq!(
        (rdb.state, rdb.http, rdb.attrs.get("region").map(String::as_str)),
        (State::Disconnected, Some(9000), Some("ldn"))
    );
    assert_eq!(r.handle.get("hdb1").unwrap().state, State::Disconnected);
    let j = r.json("/api/processes/rdb1").await;
    assert_eq!(j["stale"], true);
    // Its beats resume: no longer stale.
    let conn = r.connect().await;
    conn.call(&store_hb(rich_payload("rdb1", "rdb", 2, "ok", &[("region", "ldn")], Some(9000))))
        .await
        .unwrap();
    let p = r.handle.get("rdb1").unwrap();
    assert!(!p.stale);
    assert_eq!(p.state, State::Starting);
    r.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// PyKX, as a q client would: the blog's payload, async, exactly the types
/// `.client.publish` sends, with the function name as a symbol (the whole
/// message one general list) and as PyKX's usual `(string; args)` form.
const PYKX_BLOG_CLIENT: &str = r#"
import sys, os, datetime
import numpy as np
import pykx as kx

port = int(sys.argv[1])
q = kx.SyncQConnection('127.0.0.1', port)

def payload(name, counter):
    return kx.toq({
        'process': kx.SymbolAtom(name),
        'ip': kx.SymbolAtom('127.0.0.1'),
        'address': kx.SymbolAtom(':pykxhost:8084'),
        'pid': kx.IntAtom(os.getpid()),
        'qVersion': kx.SymbolAtom('4v2021.07.12'),
        'counter': kx.LongAtom(counter),
        'lastHb': kx.TimeAtom(np.timedelta64(55277287, 'ms')),
    })

for i in range(3):
    q('.master.storeHb', payload('milg_py', i), wait=False)
for i in range(2):
    q(kx.toq([kx.SymbolAtom('.master.storeHb'), payload('milg_sym', i)], kx.List), wait=False)
view = q('.master.storeHb', payload('milg_py', 3))
print('state', view.py()['state'], flush=True)
t = q('.master.discovery')
rows = t.py()
print('rows', sorted(k[0] if isinstance(k, tuple) else k for k in rows.keys()), flush=True)
print('done', flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykx_sends_the_blogs_heartbeat_unchanged() {
    let Some(py) = qmesh_testkit::python() else { return };
    let r = Registry::start(Options::default()).await;
    let port = r.ipc.port();
    let out = tokio::task::spawn_blocking(move || {
        qmesh_testkit::python_command(&py)
            .arg("-c")
            .arg(PYKX_BLOG_CLIENT)
            .arg(port.to_string())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("done"), "{stdout}");
    assert!(stdout.contains("milg_py") && stdout.contains("milg_sym"), "{stdout}");
    assert!(stdout.contains("state active"), "the sync form answers the caller's state: {stdout}");
    let p = r.handle.get("milg_py").unwrap();
    assert_eq!(
        (p.counter, p.beats, p.address.as_str(), p.q_version.as_str()),
        (3, 4, ":pykxhost:8084", "4v2021.07.12")
    );
    assert_eq!(p.client_time, Some(55_277_287));
    assert_eq!(r.handle.get("milg_sym").unwrap().counter, 1);
    // PyKX's connection closed: disconnected.
    r.wait_for("milg_py", |p| p.is_some_and(|p| p.state == State::Disconnected)).await;
    r.stop().await;
    let _ = Duration::ZERO;
}
