//! Helpers shared by the log-shipping process tests (`rt_ship.rs`, `rt_subscriber.rs`): a `qmesh rt` node, the
//! hidden `qmesh rt publish` and `qmesh rt subscribe` commands, the node's positions over IPC and HTTP, and bounded
//! waits for a state.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qmesh_codec::{Atom, K};
use qmesh_ipc::{Address, ClientOptions, Connection};
use qmesh_testkit::Process;

/// Longest wait for a state (never a timing assertion).
pub const WAIT: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qmesh")
}

/// A fresh directory for one test (`prefix` names the test file).
pub fn tmpdir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qmesh-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A node serving stream `s` from `dir`, rolling at `segment` (`4MiB`, `4096`), on `port` (0: any).
pub fn node(dir: &Path, port: u16, segment: &str, extra: &[&str]) -> Process {
    let port = port.to_string();
    let mut args = vec![
        "rt",
        "--bind",
        "127.0.0.1",
        "-p",
        &port,
        "--http",
        "0",
        "--data",
        dir.to_str().unwrap(),
        "--stream",
        "s",
        "--segment-bytes",
        segment,
    ];
    args.extend_from_slice(extra);
    Process::qmesh(bin(), &args, &["ipc", "http"])
}

/// `qmesh rt publish`: publisher `id` publishes `(`id;n)` up to n = `to`, at most `rate` messages a second.
pub fn publisher(path: &Path, port: u16, id: &str, to: usize, rate: usize) -> Child {
    publisher_with(path, port, id, to, rate, &[])
}

/// [`publisher`] with more flags (`--first-id N`).
pub fn publisher_with(path: &Path, port: u16, id: &str, to: usize, rate: usize, extra: &[&str]) -> Child {
    Command::new(bin())
        .args(["rt", "publish", "--stream", "s", "--cluster", &format!("127.0.0.1:{port}")])
        .args(["--path", path.to_str().unwrap(), "--publisher-id", id, "--to", &to.to_string()])
        .args(["--batch", "200", "--segment-bytes", "1MiB", "--rate", &rate.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `qmesh rt subscribe` copying into `dir` from the node on `port`, from `from`, with `env` set.
pub fn subscriber(dir: &Path, port: u16, from: &str, extra: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(bin())
        .args(["rt", "subscribe", "--stream", "s", "--cluster", &format!("127.0.0.1:{port}")])
        .args(["--dir", dir.to_str().unwrap(), "--from", from])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub async fn connect(port: u16) -> Option<Connection> {
    let addr = Address::parse(&format!("127.0.0.1:{port}")).ok()?;
    Connection::connect(&addr, ClientOptions::default()).await.ok()
}

/// A sync `` h(f;`s;args…) `` answering a long.
pub async fn call_long(c: &Connection, f: &str, args: Vec<K>) -> i64 {
    let mut items = vec![K::sym(f), K::sym("s")];
    items.extend(args);
    match c.call(&K::list(items)).await.unwrap().decode().unwrap() {
        K::Atom(Atom::Long(j)) => j,
        other => panic!("{f}: not a long: {other:?}"),
    }
}

/// Publishes `msg` with a sync `.rt.pub`; its own position.
pub async fn publish(c: &Connection, msg: K) -> u64 {
    call_long(c, ".rt.pub", vec![msg]).await as u64
}

/// The node's latest position (`None` while it is down).
pub async fn latest(port: u16) -> Option<i64> {
    let c = connect(port).await?;
    let m = c.call(&K::list(vec![K::sym(".rt.get_latest_position"), K::sym("s")])).await.ok()?;
    match m.decode().ok()? {
        K::Atom(Atom::Long(j)) => Some(j),
        _ => None,
    }
}

/// The node's first unarchived position of stream `s`, from `/api/streams`.
pub async fn first(p: &Process) -> u64 {
    let (status, body) = super::http_get(p.addr("http"), "/api/streams").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["streams"]["s"]["first"].as_u64().unwrap()
}

/// Waits, at most [`WAIT`], until `f` holds.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
