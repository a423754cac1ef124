//! Configuration errors of the stream's clients, as real processes: `qmesh feed` and `qmesh service --rt` refuse
//! what cannot work instead of retrying it forever — a bad `--rt` address, a stream the node does not host (at
//! start, or once a node that was down answers), a data directory another service holds — and still start and
//! keep working while the node is merely down. A feed stopped before the node acknowledged says so, with counts.
//! Waiting is for states (a process's exit, a local log growing), never for a time.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::rt::{WAIT, bin, tmpdir};
use qmesh_testkit::Process;

/// A `qmesh` process with stdout and stderr captured.
fn spawn(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits, at most [`WAIT`], for `child` to exit; its status, stdout and stderr.
fn exit_of(mut child: Child, what: &str) -> (ExitStatus, String, String) {
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status, out, err)
}

/// A node hosting only stream `trades`, on `port` (0: any).
fn node(dir: &Path, port: u16) -> Process {
    let port = port.to_string();
    Process::qmesh(
        bin(),
        &[
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
            "trades",
        ],
        &["ipc", "http"],
    )
}

/// A port nothing listens on (bound, then freed).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn service_args<'a>(rt: &'a str, stream: &'a str, data: &'a str) -> Vec<&'a str> {
    vec![
        "service",
        "--name",
        "CFG",
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--http",
        "0",
        "--rt",
        rt,
        "--stream",
        stream,
        "--data",
        data,
    ]
}

fn feed_args<'a>(rt: &'a str, stream: &'a str, path: &'a str) -> Vec<&'a str> {
    vec!["feed", "--rt", rt, "--stream", stream, "--rate", "200", "--batch", "10", "--path", path]
}

/// Bytes under `dir`, one level of subdirectories deep (a feed's `--path`).
fn bytes_under(dir: &Path) -> u64 {
    let mut n = 0;
    for d in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            n += f.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    n
}

fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Flag values that cannot work are refused when the flags are read: an address with a bad port (in a list too),
/// and negative numbers get the flag's own range message rather than clap's "unexpected argument".
#[test]
fn bad_addresses_and_negative_numbers_are_refused_at_parse() {
    let root = tmpdir("cfg", "flags");
    let path = root.join("feed");
    let p = path.to_str().unwrap();
    for args in [
        vec!["feed", "--rt", "localhost:99999", "--stream", "s", "--path", p],
        vec!["feed", "--rt", "127.0.0.1:5010,localhost:99999", "--stream", "s", "--path", p],
        vec!["service", "--name", "X", "--rt", "localhost:99999", "--stream", "s"],
    ] {
        let (status, _, err) = exit_of(spawn(&args), "a bad --rt");
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("'--rt <RT>'") && err.contains("bad port") && err.contains("99999"), "{err}");
    }
    let (status, _, err) = exit_of(
        spawn(&["feed", "--rt", "127.0.0.1:1", "--stream", "s", "--path", p, "--rate", "-5"]),
        "--rate -5",
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("rate must be a positive number of messages a second, got -5"), "{err}");
    let node_dir = root.join("node");
    let args =
        ["rt", "--data", node_dir.to_str().unwrap(), "--stream", "s", "--archive-max-disk-percent", "-1"];
    let (status, _, err) = exit_of(spawn(&args), "--archive-max-disk-percent -1");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("--archive-max-disk-percent -1: give a percentage above 0"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

/// A second service on a data directory another service holds refuses before it serves, naming the first's pid;
/// the first keeps running, and the directory is free again once it stops.
#[test]
fn a_second_service_on_the_same_data_directory_refuses() {
    let root = tmpdir("cfg", "datalock");
    let node = node(&root.join("node"), 0);
    let rt = format!("127.0.0.1:{}", node.port("ipc"));
    let data = root.join("svc");
    let d = data.to_str().unwrap();
    let mut first = Process::qmesh(bin(), &service_args(&rt, "trades", d), &["ipc", "http"]);
    let (status, out, err) = exit_of(spawn(&service_args(&rt, "trades", d)), "the second service");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(!out.contains("listening"), "refused before serving: {out}");
    let expected = format!("data directory {} is in use by another process (pid {})", d, first.pid());
    assert!(err.contains(&expected), "{err}");
    // the first still serves
    assert!(std::net::TcpStream::connect(first.addr("ipc")).is_ok(), "the first service still listens");
    assert!(first.terminate().success());
    // free again
    let again = Process::qmesh(bin(), &service_args(&rt, "trades", d), &["ipc", "http"]);
    drop((again, node));
    let _ = std::fs::remove_dir_all(&root);
}

/// A stream the node does not host: the feed and the service exit 1 at start naming the stream and the node, and
/// the feed writes nothing.
#[test]
fn an_unknown_stream_is_refused_at_start() {
    let root = tmpdir("cfg", "unknown");
    let node = node(&root.join("node"), 0);
    let rt = format!("127.0.0.1:{}", node.port("ipc"));
    let path = root.join("feed");
    let expected = format!("the stream node {rt} has no stream `nosuch`");
    let (status, out, err) = exit_of(spawn(&feed_args(&rt, "nosuch", path.to_str().unwrap())), "the feed");
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains(&expected), "{err}");
    assert_eq!(bytes_under(&path), 0, "nothing written for a stream the node does not host");
    let data = root.join("svc");
    let (status, out, err) =
        exit_of(spawn(&service_args(&rt, "nosuch", data.to_str().unwrap())), "the service");
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(!out.contains("listening"), "refused before serving: {out}");
    assert!(err.contains(&expected), "{err}");
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

/// While the node is down the feed publishes to its local log and the service serves: both started. Once the
/// node answers that it has no such stream, both exit 1 with that error.
#[test]
fn an_unknown_stream_is_refused_once_a_down_node_answers() {
    let root = tmpdir("cfg", "downunknown");
    let port = free_port();
    let rt = format!("127.0.0.1:{port}");
    let path = root.join("feed");
    let feed = spawn(&feed_args(&rt, "nosuch", path.to_str().unwrap()));
    let data = root.join("svc");
    let svc = spawn(&service_args(&rt, "nosuch", data.to_str().unwrap()));
    until("the feed's local log to grow while the node is down", || bytes_under(&path) > 4096);
    // the service serves and subscribes (its copy's directory) while the node is down
    until("the service to subscribe", || data.join("rt").join("nosuch").is_dir());
    let node = node(&root.join("node"), port);
    let expected = format!("the stream node {rt} has no stream `nosuch`");
    let (status, out, err) = exit_of(feed, "the feed");
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains(&expected), "{err}");
    let (status, out, err) = exit_of(svc, "the service");
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(out.contains("listening ipc"), "it served while the node was down: {out}");
    assert!(err.contains(&expected), "{err}");
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

/// A feed stopped (SIGTERM) while the node is down waits a bounded time, exits 0 and says what it published and
/// that the node acknowledged none of it.
#[test]
fn a_feed_stopped_while_the_node_is_down_says_nothing_was_acknowledged() {
    let root = tmpdir("cfg", "stopdown");
    let rt = format!("127.0.0.1:{}", free_port());
    let path = root.join("feed");
    let feed = spawn(&feed_args(&rt, "trades", path.to_str().unwrap()));
    until("the feed's local log to grow", || bytes_under(&path) > 4096);
    assert!(Command::new("kill").arg("-TERM").arg(feed.id().to_string()).status().unwrap().success());
    let (status, out, err) = exit_of(feed, "the stopped feed");
    assert!(status.success(), "{err}");
    let line = out.lines().next().unwrap_or_default();
    let sent: u64 = line
        .strip_prefix("feed published ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(sent > 0, "{line}");
    assert!(line.contains(" messages to its local log, 0 acknowledged by the node, position "), "{line}");
    assert!(
        err.contains(&format!(
            "stopped with {sent} of the {sent} messages published not yet acknowledged by the node"
        )),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
