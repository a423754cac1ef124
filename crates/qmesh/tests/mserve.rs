//! mserve mode as real processes: `qmesh mserve` and `qmesh gateway
//! --instances` in front of stand-in plain q processes (the test kit's
//! `plain_q`: single-threaded, kdb+ IPC only; this test binary re-executed)
//! and a `qmesh service`, killed for real. Plain clients: sync strings,
//! function calls, deferred sync (`neg[h]x; h[]`), from Rust, PyKX and
//! qPython.
//!
//! Waiting is for states (`/api/services`, the stand-in's `running` lines),
//! never for a time; no timing is asserted (what shows that two instances
//! ran four queries two at a time is each query's own start and end).
#![allow(clippy::unwrap_used)]

use qmesh_codec::{Atom, K, Vector};
use qmesh_ipc::{Address, ClientOptions, Connection, Incoming, IpcError};
use qmesh_testkit::Process;
use qmesh_testkit::plain_q::{plain_q_process, serve_if_requested};
use serde_json::Value;

mod common;
use common::{REPLY, SETTLE, status, wait_for};
const POOL: &str = "mserve";

/// Not a test: the entry point of the stand-in q processes (this binary,
/// re-executed with the stand-in's environment variable set).
#[test]
fn standin_q() {
    serve_if_requested();
}

fn standin(port: u16) -> Process {
    plain_q_process("standin_q", port)
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qmesh")
}

fn mserve(instances: &[&Process]) -> Process {
    let addrs: Vec<String> = instances.iter().map(|p| format!("127.0.0.1:{}", p.port("ipc"))).collect();
    let mut args = vec!["mserve", "--bind", "127.0.0.1", "-p", "0", "--http", "0"];
    args.extend(addrs.iter().map(String::as_str));
    Process::qmesh(bin(), &args, &["ipc", "http"])
}

fn pool<'a>(s: &'a Value, side: &str, name: &str) -> Option<&'a Value> {
    s.get(side)?.get("services")?.as_array()?.iter().find(|e| e["service"] == name)
}

/// Waits until `n` instances of `name` are in the pool.
async fn wait_pool(g: &Process, name: &str, n: u64) {
    wait_for(g, &format!("{n} instances of {name} in the pool"), |s| {
        pool(s, "load_balancer", name).and_then(|e| e["instances"].as_u64()) == Some(n)
    })
    .await
}

/// Waits for the stand-in to print that it runs `query` (its `show` form);
/// returns the lines it printed before.
fn wait_running(s: &Process, query: &str) -> Vec<String> {
    let want = format!("plainq running {query}");
    let deadline = std::time::Instant::now() + SETTLE;
    let mut before = Vec::new();
    tokio::task::block_in_place(|| {
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match s.next_line(left) {
                Some(line) if line == want => return before,
                Some(line) => before.push(line),
                None => panic!("the stand-in did not print {want:?} in time (saw {before:?})"),
            }
        }
    })
}

async fn connect(p: &Process) -> Connection {
    let a = Address::parse(&p.addr("ipc").to_string()).unwrap();
    Connection::connect(&a, ClientOptions::default()).await.unwrap()
}

async fn call(c: &Connection, k: &K) -> Result<K, String> {
    match tokio::time::timeout(REPLY, c.call(k)).await.expect("a reply in time") {
        Ok(m) => Ok(m.decode().unwrap()),
        Err(IpcError::Remote(t)) => Err(t),
        Err(e) => Err(format!("connection: {e}")),
    }
}

async fn next_async(c: &mut Connection) -> K {
    match tokio::time::timeout(REPLY, c.receiver().recv()).await.expect("a message in time") {
        Some(Incoming::Async(m)) => m.decode().unwrap(),
        other => panic!("expected an async message, got {other:?}"),
    }
}

fn fcall(f: &str, args: Vec<K>) -> K {
    let mut items = vec![K::sym(f)];
    items.extend(args);
    K::list(items)
}

fn long(k: &K) -> i64 {
    match k {
        K::Atom(Atom::Long(x)) => *x,
        other => panic!("expected a long, got {other:?}"),
    }
}

/// A `sleep` answer: (port; start µs; end µs).
fn span(k: &K) -> (i64, i64, i64) {
    match k {
        K::Vector(_, Vector::Long(v)) if v.len() == 3 => (v[0], v[1], v[2]),
        other => panic!("expected (port;start;end), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_queries_in_every_form_reach_a_free_instance_and_come_back_in_that_form() {
    let a = standin(0);
    let b = standin(0);
    let ports = [a.port("ipc") as i64, b.port("ipc") as i64];
    let g = mserve(&[&a, &b]);
    wait_pool(&g, POOL, 2).await;
    let mut c = connect(&g).await;

    // sync string, as `h"whoami"`
    let who = long(&call(&c, &K::string("whoami")).await.unwrap());
    assert!(ports.contains(&who), "{who} not in {ports:?}");
    // a function call, `h(`add;2;3)`, forwarded as sent
    assert_eq!(call(&c, &fcall("add", vec![K::long(2), K::long(3)])).await, Ok(K::long(5)));
    // the instance's error, as it raised it
    assert_eq!(call(&c, &K::string("'boom")).await, Err("boom".into()));
    assert_eq!(call(&c, &fcall("fail", vec![K::string("nope")])).await, Err("nope".into()));
    // deferred sync, mserve.q's `(neg h)x; h[]`: the answer as an async message
    c.send_async(&K::string("echo hi")).unwrap();
    assert_eq!(next_async(&mut c).await, K::string("hi"));
    c.send_async(&fcall("add", vec![K::long(40), K::long(2)])).unwrap();
    assert_eq!(next_async(&mut c).await, K::long(42));
    c.send_async(&K::string("'oops")).unwrap();
    assert_eq!(next_async(&mut c).await, K::error("oops"));
    // userQuery still works, through the same pool
    let uq = fcall("userQuery", vec![K::list(vec![K::sym(POOL), K::string("whoami")])]);
    assert!(ports.contains(&long(&call(&c, &uq).await.unwrap())));
    // what the gateway shows
    let s = status(&g).await;
    assert_eq!(s["gateway"]["default_service"], POOL);
    assert_eq!(s["gateway"]["static_instances"].as_array().map(Vec::len), Some(2));
    assert_eq!(pool(&s, "load_balancer", POOL).unwrap()["free"], 2, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_one_second_queries_on_two_instances_run_two_at_a_time() {
    let a = standin(0);
    let b = standin(0);
    let g = mserve(&[&a, &b]);
    wait_pool(&g, POOL, 2).await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = connect(&g).await;
        tasks.push(tokio::spawn(async move { call(&c, &fcall("sleep", vec![K::long(1000)])).await }));
    }
    let mut spans = Vec::new();
    for t in tasks {
        spans.push(span(&t.await.unwrap().unwrap()));
    }
    eprintln!("4 one-second queries on 2 instances took {:?}", started.elapsed());
    for port in [a.port("ipc") as i64, b.port("ipc") as i64] {
        let mut on: Vec<(i64, i64)> = spans.iter().filter(|s| s.0 == port).map(|s| (s.1, s.2)).collect();
        assert_eq!(on.len(), 2, "each instance ran two: {spans:?}");
        on.sort();
        assert!(on[0].1 <= on[1].0, "an instance ran two queries at once: {spans:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_instance_is_passed_over_for_a_free_one() {
    let a = standin(0);
    let b = standin(0);
    let g = mserve(&[&a, &b]);
    wait_pool(&g, POOL, 2).await;
    let mut long_client = connect(&g).await;
    long_client.send_async(&fcall("sleep", vec![K::long(3000)])).unwrap();
    // whichever instance took it runs it now
    wait_for(&g, "one instance busy", |s| {
        pool(s, "load_balancer", POOL).and_then(|e| e["busy"].as_u64()) == Some(1)
    })
    .await;
    let c = connect(&g).await;
    let mut answered = Vec::new();
    for _ in 0..3 {
        answered.push(long(&call(&c, &K::string("whoami")).await.unwrap()));
    }
    let (busy_port, _, end) = span(&next_async(&mut long_client).await);
    assert!(answered.iter().all(|p| *p != busy_port), "a query waited behind the long one: {answered:?}");
    let now_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    assert!(end <= now_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_query_fails_it_and_rejoins_when_restarted_on_its_port() {
    let mut a = standin(0);
    let port = a.port("ipc");
    let g = mserve(&[&a]);
    wait_pool(&g, POOL, 1).await;
    let c = connect(&g).await;
    let running = tokio::spawn(async move {
        let r = call(&c, &fcall("sleep", vec![K::long(20_000)])).await;
        (c, r)
    });
    wait_running(&a, "(`sleep;20000)");
    a.kill();
    let (c, r) = running.await.unwrap();
    assert_eq!(r, Err(format!("service disconnected: {POOL}")));
    wait_pool(&g, POOL, 0).await;
    assert_eq!(call(&c, &K::string("whoami")).await, Err(format!("no instance: {POOL}")));
    // back on the same port: it answers the handshake, so it rejoins
    let _a2 = standin(port);
    wait_pool(&g, POOL, 1).await;
    assert_eq!(call(&c, &K::string("whoami")).await, Ok(K::long(port as i64)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_loses_its_queued_queries() {
    let a = standin(0);
    let g = mserve(&[&a]);
    wait_pool(&g, POOL, 1).await;
    let mut first = connect(&g).await;
    first.send_async(&fcall("sleep", vec![K::long(1500)])).unwrap();
    wait_running(&a, "(`sleep;1500)");
    let leaver = connect(&g).await;
    for ms in [1001, 1002, 1003] {
        leaver.send_async(&fcall("sleep", vec![K::long(ms)])).unwrap();
    }
    wait_for(&g, "three queued", |s| {
        pool(s, "load_balancer", POOL).and_then(|e| e["queued"].as_u64()) == Some(3)
    })
    .await;
    drop(leaver);
    wait_for(&g, "the queue emptied", |s| {
        pool(s, "load_balancer", POOL).and_then(|e| e["queued"].as_u64()) == Some(0)
    })
    .await;
    let c = connect(&g).await;
    let who = tokio::spawn(async move { call(&c, &K::string("whoami")).await });
    span(&next_async(&mut first).await);
    assert_eq!(who.await.unwrap(), Ok(K::long(a.port("ipc") as i64)));
    // the stand-in ran the first query and then whoami: none of the leaver's
    let between = wait_running(&a, "\"whoami\"");
    assert!(between.is_empty(), "ran queries of a client that left: {between:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qmesh_service_as_a_static_instance_answers_plain_sql() {
    let svc = Process::qmesh(
        bin(),
        &["service", "--name", "SQL", "--bind", "127.0.0.1", "-p", "0", "--demo", "--demo-rows", "100"],
        &["ipc"],
    );
    let inst = format!("SQL=127.0.0.1:{}", svc.port("ipc"));
    let g = Process::qmesh(
        bin(),
        &[
            "gateway",
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--http",
            "0",
            "--instances",
            &inst,
            "--default-service",
            "SQL",
        ],
        &["ipc", "http"],
    );
    wait_pool(&g, "SQL", 1).await;
    let mut c = connect(&g).await;
    let r = call(&c, &K::string("select count(*) as n from trade")).await.unwrap();
    assert!(matches!(r, K::Table(_)), "{r:?}");
    c.send_async(&K::string("select count(*) as n from trade")).unwrap();
    assert!(matches!(next_async(&mut c).await, K::Table(_)));
    let e = call(&c, &K::string("select nope from trade")).await.unwrap_err();
    assert!(e.contains("nope"), "{e}");
    // userQuery through a static instance: the catalog's `service error`
    let uq =
        fcall("userQuery", vec![K::list(vec![K::sym("SQL"), K::string("select count(*) as n from trade")])]);
    assert!(matches!(call(&c, &uq).await, Ok(K::Table(_))));
}

#[test]
fn pykx_and_qpython_send_plain_queries_through_mserve() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let a = standin(0);
    let b = standin(0);
    let g = mserve(&[&a, &b]);
    rt.block_on(wait_pool(&g, POOL, 2));
    let ports = [a.port("ipc") as i64, b.port("ipc") as i64];
    let script = qmesh_testkit::manifest_dir().join("tests/py/plain_clients.py");
    let mut ran = 0;
    for (lib, python) in [
        ("pykx", qmesh_testkit::python()),
        ("pykx-async", qmesh_testkit::python()),
        ("qpython", qmesh_testkit::python_qpython()),
    ] {
        let Some(python) = python else { continue };
        let out = qmesh_testkit::python_command(&python)
            .arg(&script)
            .args([lib, &g.port("ipc").to_string()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{lib}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
        eprintln!("{lib}: {v}");
        assert!(ports.contains(&v["whoami"].as_i64().unwrap()), "{lib}: {v}");
        assert_eq!(v["add"], 5, "{lib}: {v}");
        assert!(v["error"].as_str().unwrap().contains("boom"), "{lib}: {v}");
        assert!(ports.contains(&v["deferred"].as_i64().unwrap()), "{lib}: {v}");
        ran += 1;
    }
    eprintln!("{ran} client libraries ran");
}
