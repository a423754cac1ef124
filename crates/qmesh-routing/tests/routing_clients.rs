//! Real client libraries against the gateway: PyKX (sync, and async with
//! poll), qPython3 (sync, deferred sync, callback). The seed's user never got
//! a result back from the whitepaper's gateway with any client; every one of
//! these must get its result, and errors as exceptions.

mod common;

use std::process::Command;

use common::*;
use qmesh_routing::lb::LbConfig;
use serde_json::{Value, json};

const EQ: &str = "EQUITY_MARKET_RDB";

fn run_client(python: &std::path::Path, lib: &str, port: u16, reqs: &Value) -> Vec<Value> {
    let out = qmesh_testkit::python_command(&python.to_path_buf())
        .arg(py_dir().join("clients.py"))
        .args([lib, &port.to_string(), &reqs.to_string()])
        .output()
        .expect("run the client");
    assert!(out.status.success(), "{lib} failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    let line = line.lines().last().unwrap_or_default();
    serde_json::from_str::<Vec<Value>>(line).unwrap_or_else(|e| panic!("{lib}: bad output {line:?}: {e}"))
}

fn sync_requests() -> Value {
    json!([
        {"mode": "sync", "service": EQ, "query": "til 3"},
        {"mode": "sync", "service": EQ, "query": "egTrade"},
        {"mode": "sync", "service": EQ, "query": "empty"},
        {"mode": "sync", "service": EQ, "query": "null"},
        {"mode": "sync", "service": "NOPE", "query": "x"},
        {"mode": "sync", "service": EQ, "query": "sleep 3000", "timeout": 100},
        {"mode": "sync", "service": "ERR", "query": "error boom"},
        {"mode": "sync", "service": [EQ, "ERR"], "query": "1+1"},
    ])
}

fn check_sync(lib: &str, out: &[Value]) {
    assert_eq!(out[0], json!({"ok": [0, 1, 2]}), "{lib}");
    assert_eq!(out[1], json!({"ok": {"table": 10}}), "{lib}");
    assert_eq!(out[2], json!({"ok": {"table": 0}}), "{lib}");
    assert!(out[3] == json!({"ok": null}) || out[3]["ok"].is_string(), "{lib}: null result {}", out[3]);
    assert_eq!(out[4], json!({"error": "unknown service: NOPE"}), "{lib}");
    assert_eq!(out[5], json!({"error": "timeout"}), "{lib}");
    assert_eq!(out[6], json!({"error": "service error: ERR: boom"}), "{lib}");
    assert_eq!(out[7], json!({"ok": [2, 2]}), "{lib}");
}

fn async_requests() -> Value {
    json!([
        {"mode": "deferred", "service": EQ, "query": "til 2"},
        {"mode": "deferred", "service": "NOPE", "query": "x"},
        {"mode": "callback", "service": EQ, "query": "til 2"},
        {"mode": "callback", "service": "NOPE", "query": "x"},
        {"mode": "deferred", "service": EQ, "query": "egTrade"},
        {"mode": "sync", "service": EQ, "query": "1+1"},
    ])
}

fn check_async(lib: &str, out: &[Value]) {
    assert_eq!(out[0], json!({"ok": [0, 1]}), "{lib}");
    assert_eq!(out[1], json!({"error": "unknown service: NOPE"}), "{lib}");
    let cb = &out[2]["ok"];
    assert_eq!(cb[0], "cb", "{lib}: {cb}");
    assert_eq!(cb[1]["ok"], true, "{lib}: {cb}");
    assert_eq!(cb[1]["error"], "", "{lib}: {cb}");
    assert_eq!(cb[1]["service"], EQ, "{lib}: {cb}");
    assert_eq!(cb[1]["query"], "til 2", "{lib}: {cb}");
    assert_eq!(cb[2], json!([0, 1]), "{lib}: {cb}");
    let cb = &out[3]["ok"];
    assert_eq!(cb[1]["ok"], false, "{lib}: {cb}");
    assert_eq!(cb[1]["error"], "unknown service: NOPE", "{lib}: {cb}");
    assert_eq!(out[4], json!({"ok": {"table": 10}}), "{lib}");
    assert_eq!(out[5], json!({"ok": 2}), "{lib}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykx_and_qpython_get_results_and_errors() {
    let gw = embedded(LbConfig::default(), fast_gateway()).await;
    let Some(_a) = wp_service(gw.port, EQ, &[]) else { return };
    let Some(_b) = wp_service(gw.port, EQ, &[]) else { return };
    let Some(_e) = wp_service(gw.port, "ERR", &["--error-flag"]) else { return };
    wait_instances(&gw.router, EQ, 2).await;
    wait_instances(&gw.router, "ERR", 1).await;
    let port = gw.port;

    let py = qmesh_testkit::python().expect("python found above");
    let (s, a) = tokio::task::spawn_blocking({
        let py = py.clone();
        move || {
            let s = run_client(&py, "pykx-sync", port, &sync_requests());
            let a = run_client(&py, "pykx-async", port, &async_requests());
            (s, a)
        }
    })
    .await
    .unwrap();
    check_sync("pykx-sync", &s);
    check_async("pykx-async", &a);

    if let Some(qp) = qmesh_testkit::python_qpython() {
        let (s, a) = tokio::task::spawn_blocking(move || {
            (
                run_client(&qp, "qpython", port, &sync_requests()),
                run_client(&qp, "qpython", port, &async_requests()),
            )
        })
        .await
        .unwrap();
        check_sync("qpython", &s);
        check_async("qpython", &a);
    }
    gw.stop().await;
}

#[test]
fn the_driver_refuses_unknown_libraries() {
    let Some(py) = qmesh_testkit::python() else { return };
    let st = Command::new(py).arg(py_dir().join("clients.py")).args(["nope", "1", "[]"]).status().unwrap();
    assert!(!st.success());
}
