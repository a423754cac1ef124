//! Foreign clients against our server over real sockets: PyKX (KX's own C
//! serializer, unlicensed mode) and qPython3 (an independent pure-Python
//! codec). The scripts are in `tests/py/`; each gets the port and a mode,
//! prints one line per check and exits non-zero on a failure.
//!
//! Interpreters: `QMESH_PYTHON` (PyKX) and `QMESH_PYTHON_QP` (qPython3),
//! defaulting to `~/.cache/qmesh-venv/bin/python` and
//! `~/.cache/qmesh-venv-qp/bin/python` when those exist. Without either, a
//! test prints a loud notice and returns (CI sets the variables).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::TestServer;
use qmesh_ipc::echo::EchoHandler;
use qmesh_ipc::{PasswordFile, ServerConfig};

fn script(name: &str) -> PathBuf {
    qmesh_testkit::manifest_dir().join("tests/py").join(name)
}

fn config() -> ServerConfig {
    let users = PasswordFile::parse(b"user:pass\n").expect("users");
    ServerConfig { authenticator: Some(Arc::new(users)), ..ServerConfig::loopback() }
}

/// Runs `script PORT MODE` with `python` (skipped, loudly, when there is no
/// interpreter outside CI); panics with the script's output if it fails.
async fn run_python(python: Option<PathBuf>, name: &str, port: u16, mode: &str) {
    let Some(python) = python else { return };
    let mut cmd = qmesh_testkit::python_command(&python);
    cmd.arg(script(name)).arg(port.to_string()).arg(mode);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "done"),
        "{name} {mode} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let checks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    eprintln!("{name} {mode}: {checks} checks passed");
}

async fn pykx(mode: &str, config: ServerConfig) {
    let s = TestServer::start(config, EchoHandler).await;
    run_python(qmesh_testkit::python(), "pykx_client.py", s.addr.port(), mode).await;
    s.stop().await;
}

async fn qpython(mode: &str, config: ServerConfig) {
    let s = TestServer::start(config, EchoHandler).await;
    run_python(qmesh_testkit::python_qpython(), "qpython_client.py", s.addr.port(), mode).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykx_sync_with_default_ctx_probes() {
    pykx("sync", config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykx_sync_no_ctx() {
    pykx("noctx", config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykx_sync_compressed() {
    pykx("noctx", ServerConfig { force_compression: true, ..config() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykx_async_connection() {
    pykx("async", config()).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykx_unix_socket() {
    pykx("unix", ServerConfig { unix_port: Some(0), ..config() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pykx_wrong_password_refused() {
    pykx("badpass", config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qpython_round_trip() {
    qpython("roundtrip", config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qpython_round_trip_compressed() {
    qpython("roundtrip", ServerConfig { force_compression: true, ..config() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qpython_wrong_password_refused() {
    qpython("badpass", config()).await;
}
