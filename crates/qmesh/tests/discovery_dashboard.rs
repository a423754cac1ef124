//! The discovery dashboard in headless Chromium: the real `qmesh discovery`
//! binary with short thresholds, heartbeats from kdb+ IPC clients, and
//! `tests/js/dashboard.cjs` (playwright-core) checking that processes
//! appear, go to warning and error and come back, that filters and the
//! subscription narrow the table, and that it works from the keyboard.
//!
//! Needs Debian's `chromium` and `playwright-core` from npm (both installed
//! by `.ci/run`; `QMESH_NPM` names the npm prefix, default
//! `~/.cache/qmesh-npm`). Without them the test says so and skips, unless
//! `QMESH_REQUIRE_BROWSER` is set (CI sets it). `QMESH_SCREENSHOT=FILE`
//! saves the picture (`docs/dashboard.png` was taken so).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qmesh_codec::{Atom, K};
use qmesh_ipc::{Address, ClientOptions, Connection};
use qmesh_testkit::Process;

struct Sim {
    name: &'static str,
    kind: &'static str,
    host: &'static str,
    port: u16,
    http: Option<i32>,
    status: &'static str,
    note: &'static str,
    attrs: &'static [(&'static str, &'static str)],
    version: &'static str,
}

const ESTATE: &[Sim] = &[
    Sim {
        name: "rdb_eq_1",
        kind: "rdb",
        host: "host-a",
        port: 5001,
        http: None,
        status: "ok",
        note: "",
        attrs: &[("region", "ldn"), ("tier", "1")],
        version: "4v2024.05.31",
    },
    Sim {
        name: "rdb_eq_2",
        kind: "rdb",
        host: "host-b",
        port: 5002,
        http: None,
        status: "ok",
        note: "",
        attrs: &[("region", "nyc"), ("tier", "1")],
        version: "4v2024.05.31",
    },
    Sim {
        name: "hdb_eq_1",
        kind: "hdb",
        host: "host-a",
        port: 5010,
        http: None,
        status: "ok",
        note: "",
        attrs: &[("region", "ldn")],
        version: "4v2023.01.20",
    },
    Sim {
        name: "hdb_eq_2",
        kind: "hdb",
        host: "host-b",
        port: 5011,
        http: None,
        status: "ok",
        note: "",
        attrs: &[("region", "nyc")],
        version: "4v2023.01.20",
    },
    Sim {
        name: "gw_main",
        kind: "gateway",
        host: "host-c",
        port: 5000,
        http: Some(8080),
        status: "ok",
        note: "",
        attrs: &[],
        version: "qmesh-0.1.0",
    },
    Sim {
        name: "lb_main",
        kind: "lb",
        host: "host-c",
        port: 5005,
        http: Some(8081),
        status: "ok",
        note: "",
        attrs: &[],
        version: "qmesh-0.1.0",
    },
    // A name near what people write when they encode the whole estate in
    // it: the table must stay in its box (tests/js/dashboard.cjs)
    Sim {
        name: LONG_NAME,
        kind: "analytics",
        host: "host-c.analytics.example-datacentre-with-a-long-domain.internal",
        port: 5040,
        http: None,
        status: "ok",
        note: "",
        attrs: &[("desk", "systematic-equities-europe"), ("owner", "quant-platform-team"), ("tier", "2")],
        version: "4v2024.05.31",
    },
    Sim {
        name: "feed_fx",
        kind: "feed",
        host: "host-c",
        port: 5020,
        http: None,
        status: "warn",
        note: "lagging 3.2 s behind the tickerplant",
        attrs: &[("venue", "ebs")],
        version: "4v2024.05.31",
    },
];

/// The long name of the estate's analytics process (the dashboard script
/// knows it too).
const LONG_NAME: &str =
    "analytics_systematic_equities_europe_intraday_signal_backtest_replay_worker_with_a_very_long_name_01";

fn payload(s: &Sim, counter: i64) -> K {
    let mut keys = vec![
        "process", "ip", "address", "pid", "qVersion", "counter", "lastHb", "kind", "status", "note", "attrs",
    ];
    let mut vals = vec![
        K::sym(s.name),
        K::sym("10.0.0.1"),
        K::sym(format!(":{}:{}", s.host, s.port)),
        K::Atom(Atom::Int(10_000 + i32::from(s.port))),
        K::sym(s.version),
        K::long(counter),
        K::Atom(Atom::Time(((counter * 250) % 86_400_000) as i32)),
        K::sym(s.kind),
        K::sym(s.status),
        K::string(s.note),
        K::dict(
            K::syms(s.attrs.iter().map(|(k, _)| *k)),
            K::list(s.attrs.iter().map(|(_, v)| K::sym(v)).collect()),
        ),
    ];
    if let Some(h) = s.http {
        keys.push("http");
        vals.push(K::Atom(Atom::Int(h)));
    }
    K::list(vec![K::sym(".master.storeHb"), K::dict(K::syms(keys), K::list(vals))])
}

fn node_setup() -> Option<(PathBuf, PathBuf)> {
    let npm = std::env::var_os("QMESH_NPM")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/qmesh-npm")))?;
    let pw = npm.join("node_modules/playwright-core");
    let chromium = PathBuf::from("/usr/bin/chromium");
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if pw.exists() && chromium.exists() && node_ok {
        return Some((pw, chromium));
    }
    if std::env::var_os("QMESH_REQUIRE_BROWSER").is_some() {
        panic!(
            "QMESH_REQUIRE_BROWSER is set but node, {} or {} is missing",
            pw.display(),
            chromium.display()
        );
    }
    eprintln!("NOTICE: no node/chromium/playwright-core; skipping the dashboard test (run .ci/run)");
    None
}

#[test]
fn the_dashboard_shows_the_estate_live() {
    let Some((pw, chromium)) = node_setup() else { return };
    let bin = env!("CARGO_BIN_EXE_qmesh");
    let registry = Process::qmesh(
        bin,
        &[
            "discovery",
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--http",
            "0",
            "--warn-after",
            "1s",
            "--error-after",
            "2500ms",
            "--remove-after",
            "5m",
            "--rise",
            "2",
        ],
        &["ipc", "http"],
    );
    let ipc_port = registry.port("ipc");
    let url = format!("http://{}/", registry.addr("http"));

    let paused: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let beater = {
        let (paused, stop) = (Arc::clone(&paused), Arc::clone(&stop));
        rt.spawn(async move {
            let addr = Address::tcp("127.0.0.1", ipc_port);
            // A process that beat and went away: disconnected.
            let gone = Connection::connect(&addr, ClientOptions::default()).await.unwrap();
            let tp = Sim {
                name: "tp_old",
                kind: "tickerplant",
                host: "host-d",
                port: 5030,
                http: None,
                status: "ok",
                note: "",
                attrs: &[],
                version: "3v2020.03.17",
            };
            gone.call(&payload(&tp, 0)).await.unwrap();
            gone.call(&payload(&tp, 1)).await.unwrap();
            drop(gone);
            let conn = Connection::connect(&addr, ClientOptions::default()).await.unwrap();
            let mut counter = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let skip = paused.lock().unwrap().clone();
                for s in ESTATE.iter().filter(|s| !skip.contains(s.name)) {
                    conn.send_async(&payload(s, counter)).unwrap();
                }
                counter += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let script = qmesh_testkit::manifest_dir().join("tests/js/dashboard.cjs");
    let mut cmd = Command::new("node");
    cmd.arg(&script).arg(&url).arg(&pw).arg(&chromium);
    if let Some(shot) = std::env::var_os("QMESH_SCREENSHOT") {
        cmd.arg(shot);
    }
    let mut node = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("node");
    let mut stdin = node.stdin.take().unwrap();
    let mut transcript = String::new();
    let mut done = false;
    for line in BufReader::new(node.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        eprintln!("{line}");
        transcript.push_str(&line);
        transcript.push('\n');
        if let Some(c) = line.strip_prefix("CMD ") {
            let (verb, name) = c.split_once(' ').unwrap();
            let mut p = paused.lock().unwrap();
            match verb {
                "pause" => p.insert(name.to_string()),
                "resume" => p.remove(name),
                _ => panic!("{line}"),
            };
            drop(p);
            writeln!(stdin, "OK").unwrap();
        }
        if line == "DONE" {
            done = true;
        }
    }
    let status = node.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = rt.block_on(beater);
    assert!(status.success() && done, "dashboard script failed:\n{transcript}");
}
