//! `qmesh up` as a user runs it: the real binary starting real children on
//! free ports with a temporary data directory, checked through discovery's
//! API, the gateway (HTTP and PyKX, with the commands the summary prints),
//! `qmesh status`, a `kill -9` of one service instance, Ctrl-C (SIGINT) and
//! a SIGKILL of the supervisor itself, after each of which no process may
//! be left behind.
//!
//! Also what a new user met: a second `qmesh up` on the same data directory
//! (refused per process, its registry store left alone), a port taken at
//! bind (named with what it is for), config mistakes and ignored flags
//! (said), processes of other hosts (named when left out).
//!
//! `the_default_estate_flows_from_feed_to_query` runs the issue's estate (a
//! stream node, the demo feed, services fed from the stream); the other
//! supervision tests use an estate whose services hold demo tables
//! (`--demo`), which starts faster.
//!
//! `the_dashboard_shows_the_estate_and_a_restart` drives the dashboard in
//! headless Chromium (`tests/js/up_dashboard.cjs`, playwright-core; needs
//! what `tests/discovery_dashboard.rs` needs, and skips without it unless
//! `QMESH_REQUIRE_BROWSER` is set). `QMESH_SCREENSHOT=FILE` saves the
//! picture (`docs/up-dashboard.png` was taken so).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qmesh_testkit::python;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_qmesh");
const SERVICE: &str = "EQUITY_MARKET_RDB";
/// Bound on every wait: generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(90);

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let p = std::env::temp_dir().join(format!("qmesh-up-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A base port whose estate ports (N..=N+5, N+80..=N+85) are all free now.
fn free_base() -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    for i in 0..200u64 {
        let base = 20_000 + ((seed.wrapping_mul(2654435761).wrapping_add(i * 7919)) % 40_000) as u16;
        let all_free = (0..=5).chain(80..=85).all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free base port");
}

/// A running `qmesh up`: its stdout lines as they come; SIGKILLed if still
/// running when dropped (its children then get SIGTERM from the kernel).
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn start(args: &[&str]) -> Up {
        let mut child = Command::new(BIN)
            .arg("up")
            .args(args)
            .env("QMESH_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start qmesh up");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                eprintln!("up| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Up { child, lines: rx, seen: Vec::new() }
    }

    /// Waits for a line for which `f` holds; panics after [`WAIT`].
    fn wait_line(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line {what} (exit: {:?}); output:\n{}",
                    self.child.try_wait(),
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for "The estate is up." and returns every line before it.
    fn wait_up(&mut self) {
        self.wait_line("The estate is up.", |l| l == "The estate is up.");
        // the summary follows in the same write
        self.wait_line("the summary's last line", |l| l.contains("Ctrl-C stops the estate"));
    }

    /// Pids of processes as printed on `starting` lines (every start).
    fn pids(&self) -> HashMap<String, Vec<u32>> {
        let mut m: HashMap<String, Vec<u32>> = HashMap::new();
        for l in &self.seen {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() >= 4 && w[1] == "starting" && w[2] == "pid" {
                let pid = w[3].trim_end_matches(':').parse().unwrap();
                m.entry(w[0].to_string()).or_default().push(pid);
            }
        }
        m
    }

    /// The summary line starting with `label` (after its label).
    fn summary(&self, label: &str) -> String {
        let l = self
            .seen
            .iter()
            .rev()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line"));
        l.trim_start()[label.len()..].trim().to_string()
    }

    fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the supervisor to exit; panics after [`WAIT`].
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(l);
                }
                return s;
            }
            assert!(Instant::now() < deadline, "qmesh up did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: u32) -> bool {
    // a zombie is not a process left behind running; only its parent can reap it
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls until `f` gives `Some`; panics with `what` after [`WAIT`].
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn no_process_left(pids: &HashMap<String, Vec<u32>>) {
    for (name, ps) in pids {
        for &pid in ps {
            eventually(&format!("{name} (pid {pid}) gone"), || (!alive(pid)).then_some(()));
        }
    }
}

fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl").args(["-s", "-f", "--max-time", "10"]).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Discovery's rows by name.
fn processes(dashboard: u16) -> HashMap<String, Value> {
    let Some(body) = curl(&[&format!("http://127.0.0.1:{dashboard}/api/processes")]) else {
        return HashMap::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap();
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

fn state(rows: &HashMap<String, Value>, name: &str) -> String {
    rows.get(name).and_then(|r| r["state"].as_str()).unwrap_or("absent").to_string()
}

/// Runs the printed curl command through a shell, as a user pastes it.
fn run_printed_curl(cmd: &str) -> Option<Value> {
    let out = Command::new("sh").arg("-c").arg(format!("{cmd} --max-time 10 -f")).output().unwrap();
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Runs the printed PyKX one-liner with the venv's interpreter.
fn run_printed_pykx(py: &Path, cmd: &str) -> Option<String> {
    let cmd = cmd.replacen("python3", &py.display().to_string(), 1);
    let out = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    if !out.status.success() {
        eprintln!("pykx: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rows of a `select sym, count(*) as n, …` answer, summed.
fn total_n(answer: &Value) -> i64 {
    answer["result"].as_array().map_or(0, |rows| rows.iter().map(|r| r["n"].as_i64().unwrap_or(0)).sum())
}

/// An estate of discovery, a stream node, lb, gateway and two instances of the service
/// holding demo tables; restarts wait long enough that discovery is seen
/// showing a killed instance.
fn demo_config(base: u16) -> String {
    format!(
        r#"
[estate]
restart_initial_ms = 2000
startup_timeout_ms = 60000

[[process]]
name = "discovery"
kind = "discovery"
port = {d}
http = {dh}
args = ["--warn-after", "3s", "--error-after", "6s"]

[[process]]
name = "rt"
kind = "rt"
port = {rt}
http = {rth}
streams = ["trades"]

[[process]]
name = "lb"
kind = "lb"
port = {lb}
http = {lbh}

[[process]]
name = "gateway"
kind = "gateway"
port = {gw}
http = {gwh}
lb = "lb"

[[process]]
name = "rdb1"
kind = "service"
service = "{SERVICE}"
port = {s1}
http = {s1h}
lb = "lb"
args = ["--demo", "--demo-rows", "1000"]

[[process]]
name = "rdb2"
kind = "service"
service = "{SERVICE}"
port = {s2}
http = {s2h}
lb = "lb"
args = ["--demo", "--demo-rows", "1000"]

[service]
query-threads = 1
"#,
        gw = base,
        gwh = base + 80,
        d = base + 1,
        dh = base + 81,
        lb = base + 2,
        lbh = base + 82,
        rt = base + 3,
        rth = base + 83,
        s1 = base + 4,
        s1h = base + 84,
        s2 = base + 5,
        s2h = base + 85,
    )
}

#[test]
fn up_supervises_an_estate_restarts_a_killed_instance_and_stops_cleanly() {
    let base = free_base();
    let dir = TempDir::new("demo");
    let cfg = dir.0.join("qmesh.toml");
    std::fs::write(&cfg, demo_config(base)).unwrap();
    let data = dir.0.join("data");
    let mut up = Up::start(&["--config", cfg.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    up.wait_up();
    let dashboard = base + 81;
    assert_eq!(up.summary("dashboard"), format!("http://localhost:{dashboard}/"));
    assert!(up.summary("gateway").contains(&format!("kdb+ IPC localhost:{base}")));

    // every process active in discovery (the registry beats to itself)
    let s1 = format!("{SERVICE}:{}", base + 4);
    let s2 = format!("{SERVICE}:{}", base + 5);
    let names = ["discovery", "rt", "lb", "gateway", s1.as_str(), s2.as_str()];
    eventually("every process active", || {
        let rows = processes(dashboard);
        names.iter().all(|n| state(&rows, n) == "active").then_some(())
    });

    // `qmesh status` agrees, and exits 0
    let st = Command::new(BIN).args(["status", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{text}");
    assert!(text.lines().filter(|l| l.contains(" active ")).count() == 6, "{text}");

    // the printed curl works as printed
    let curl_cmd = up.summary("curl");
    let answer = eventually("the printed curl answers", || run_printed_curl(&curl_cmd));
    assert_eq!(total_n(&answer), 1000, "{answer}");
    // so does the printed PyKX snippet
    if let Some(py) = python() {
        let printed = up.summary("PyKX");
        let out = eventually("the printed PyKX snippet answers", || run_printed_pykx(&py, &printed));
        assert!(out.contains("sym") && out.contains("price"), "{out}");
    }
    // the log of each process is where the docs say
    assert!(data.join("logs/rdb1.log").exists() && data.join("discovery").is_dir());

    // kill -9 one instance
    let first = up.pids();
    let victim = first["rdb1"][0];
    assert!(Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());
    // discovery shows it down (disconnected: the registry saw its connection close)
    let seen = eventually("discovery shows rdb1 down", || {
        let s = state(&processes(dashboard), &s1);
        (s == "disconnected" || s == "error").then_some(s)
    });
    eprintln!("rdb1 in discovery after kill -9: {seen}");
    // `qmesh status` with a config that does not name rdb1 lists its row but judges only its own processes
    let subset: String = demo_config(base)
        .split("[[process]]")
        .filter(|block| !block.contains("name = \"rdb1\""))
        .collect::<Vec<_>>()
        .join("[[process]]");
    let subset_cfg = dir.0.join("subset.toml");
    std::fs::write(&subset_cfg, subset).unwrap();
    let st = Command::new(BIN).args(["status", "--config", subset_cfg.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "a process the config does not name changed the status:\n{text}");
    assert!(text.contains(&s1), "rdb1's row is still listed:\n{text}");
    // queries keep working on the other
    for _ in 0..5 {
        let a = eventually("the pool answers with one instance", || run_printed_curl(&curl_cmd));
        assert_eq!(total_n(&a), 1000);
    }
    // the supervisor logs and counts the restart, and it comes back healthy
    let exited = up.wait_line("rdb1 exited", |l| l.contains("rdb1") && l.contains("exited"));
    assert!(exited.contains("killed by signal 9") && exited.contains("restart 1"), "{exited}");
    up.wait_line("rdb1 restarted", |l| l.contains("rdb1") && l.contains("(restart 1)"));
    up.wait_line("rdb1 healthy again", |l| l.contains("rdb1") && l.contains("healthy"));
    eventually("rdb1 active again", || (state(&processes(dashboard), &s1) == "active").then_some(()));
    let again = up.pids();
    assert_eq!(again["rdb1"].len(), 2);
    assert_ne!(again["rdb1"][1], victim);
    // a complete table on the restarted instance
    let direct = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"query":"select count(*) as n from trade"}"#,
        &format!("http://127.0.0.1:{}/query", base + 84),
    ])
    .unwrap();
    assert!(direct.contains("1000"), "{direct}");

    // Ctrl-C: every process stopped, in reverse order, nothing left
    up.signal("INT");
    let status = up.wait_exit();
    assert!(status.success(), "{status:?}");
    let stopped: Vec<&str> = up
        .seen
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() > 1 && w[1] == "stopped").then(|| w[0])
        })
        .collect();
    assert_eq!(stopped, ["rdb2", "rdb1", "gateway", "lb", "rt", "discovery"]);
    assert!(up.seen.iter().any(|l| l.contains("stopped (1 restart)")), "{:?}", up.seen.last());
    no_process_left(&again);
}

#[test]
fn a_second_up_resumes_the_same_state_and_sigkill_of_the_supervisor_leaves_nothing() {
    let base = free_base();
    let dir = TempDir::new("resume");
    let data = dir.0.join("data");
    let args =
        ["--base-port", &base.to_string(), "--data", data.to_str().unwrap(), "--only", "discovery", "lb"];
    let args: Vec<&str> = args.iter().map(|s| &**s).collect();
    let mut up = Up::start(&args);
    up.wait_up();
    let pids = up.pids();
    assert_eq!(pids.len(), 2);
    // the supervisor dies without a word: the kernel tells its children
    up.signal("KILL");
    up.wait_exit();
    no_process_left(&pids);
    // the registry's store is in the data directory and a second run reads it
    assert!(data.join("discovery").read_dir().unwrap().next().is_some());
    let mut up = Up::start(&args);
    up.wait_up();
    let rows = processes(base + 81);
    assert!(rows.contains_key("lb"), "the registry kept its table: {rows:?}");
    up.signal("TERM");
    assert!(up.wait_exit().success());
    no_process_left(&up.pids());
}

#[test]
fn a_taken_port_is_a_clear_error_naming_it_and_its_holder() {
    let base = free_base();
    let _holder = TcpListener::bind(("127.0.0.1", base + 80)).unwrap();
    let dir = TempDir::new("taken");
    let out = Command::new(BIN)
        .args(["up", "--base-port", &base.to_string(), "--data", dir.0.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("port {} (gateway's HTTP port) is taken by pid {}", base + 80, std::process::id());
    assert!(err.contains(&want), "{err}");
    // nothing was started
    assert!(!dir.0.join("logs").exists());
}

#[test]
fn print_config_writes_the_default_and_reads_back() {
    let out = Command::new(BIN).args(["up", "--print-config", "--base-port", "7000"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in ["port = 7000", "http = 7080", "http = 7081", "streams = [\"trades\"]", "kind = \"feed\""] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    let dir = TempDir::new("print");
    let f = dir.0.join("estate.toml");
    std::fs::write(&f, &text).unwrap();
    let again =
        Command::new(BIN).args(["up", "--config", f.to_str().unwrap(), "--print-config"]).output().unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
    let bad = Command::new(BIN).args(["up", "--only", "nope", "--print-config"]).output().unwrap();
    assert!(bad.status.success(), "--print-config ignores --only");
    let bad = Command::new(BIN).args(["up", "--only", "nope", "--base-port", "7000"]).output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope: no such process"));
}

/// The issue's end-to-end proof on the embedded default estate.
/// `qmesh up --print-config` at `base`, with a restart delay long enough to see a killed instance in discovery.
fn default_config(base: u16) -> String {
    let out =
        Command::new(BIN).args(["up", "--print-config", "--base-port", &base.to_string()]).output().unwrap();
    assert!(out.status.success(), "print-config: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("restart_initial_ms = 500"), "the default's restart delay moved:\n{text}");
    text.replace("restart_initial_ms = 500", "restart_initial_ms = 2000")
}

#[test]
fn the_default_estate_flows_from_feed_to_query() {
    let base = free_base();
    let dir = TempDir::new("default");
    // the embedded default, with a restart delay long enough to see the
    // killed instance in discovery
    let cfg = dir.0.join("qmesh.toml");
    std::fs::write(&cfg, default_config(base)).unwrap();
    let data = dir.0.join("data");
    let mut up = Up::start(&["--config", cfg.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    up.wait_up();
    let dashboard = base + 81;
    let s1 = format!("{SERVICE}:{}", base + 4);
    let s2 = format!("{SERVICE}:{}", base + 5);
    eventually("every process active", || {
        let rows = processes(dashboard);
        let want = ["discovery", "rt", "lb", "gateway", s1.as_str(), s2.as_str()];
        let feed_active = rows.values().any(|r| r["kind"] == "feed" && r["state"] == "active");
        (want.iter().all(|n| state(&rows, n) == "active") && feed_active).then_some(())
    });

    // trades the feed published after start reach a query, through HTTP and PyKX
    let curl_cmd = up.summary("curl");
    let n1 = eventually("trades through the gateway", || {
        run_printed_curl(&curl_cmd).map(|a| total_n(&a)).filter(|n| *n > 0)
    });
    let n2 = eventually("more trades later", || {
        run_printed_curl(&curl_cmd).map(|a| total_n(&a)).filter(|n| *n > n1)
    });
    eprintln!("trades: {n1} then {n2}");
    if let Some(py) = python() {
        let printed = up.summary("PyKX");
        let out = eventually("the printed PyKX snippet answers", || run_printed_pykx(&py, &printed));
        assert!(out.contains("sym"), "{out}");
    }

    // kill -9 one instance: queries keep working, discovery shows it, it comes back complete
    let victim = up.pids()["rdb1"][0];
    assert!(Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());
    eventually("discovery shows rdb1 down", || {
        let s = state(&processes(dashboard), &s1);
        (s == "disconnected" || s == "error").then_some(())
    });
    for _ in 0..5 {
        eventually("the pool answers with one instance", || {
            run_printed_curl(&curl_cmd).filter(|a| total_n(a) > 0)
        });
    }
    up.wait_line("rdb1 restarted", |l| l.contains("rdb1") && l.contains("(restart 1)"));
    up.wait_line("rdb1 healthy again", |l| l.contains("rdb1") && l.contains("healthy"));
    eventually("rdb1 active again", || (state(&processes(dashboard), &s1) == "active").then_some(()));
    // pause the feed; both instances reach the same row count
    let feed = up.pids()["feed"][0];
    assert!(Command::new("kill").args(["-STOP", &feed.to_string()]).status().unwrap().success());
    let count = |port: u16| {
        curl(&[
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"query":"select count(*) as n from trade"}"#,
            &format!("http://127.0.0.1:{port}/query"),
        ])
        .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        .map(|v| total_n(&v))
    };
    let same = eventually("both instances hold the same trades", || {
        let (a, b) = (count(base + 84)?, count(base + 85)?);
        (a == b && a > 0).then_some(a)
    });
    eprintln!("both instances: {same} trades");
    assert!(Command::new("kill").args(["-CONT", &feed.to_string()]).status().unwrap().success());

    up.signal("INT");
    assert!(up.wait_exit().success());
    no_process_left(&up.pids());
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
    assert!(
        std::env::var_os("QMESH_REQUIRE_BROWSER").is_none(),
        "QMESH_REQUIRE_BROWSER is set but node, {} or {} is missing",
        pw.display(),
        chromium.display()
    );
    eprintln!("NOTICE: no node/chromium/playwright-core; skipping the up dashboard test (run .ci/run)");
    None
}

#[test]
fn the_dashboard_shows_the_estate_and_a_restart() {
    let Some((pw, chromium)) = node_setup() else { return };
    let base = free_base();
    let dir = TempDir::new("dash");
    // the whole default estate, feed included, with a restart delay long enough to see the killed instance
    let cfg = dir.0.join("qmesh.toml");
    std::fs::write(&cfg, default_config(base)).unwrap();
    let data = dir.0.join("data");
    let mut up = Up::start(&["--config", cfg.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    up.wait_up();
    let s1 = format!("{SERVICE}:{}", base + 4);
    let s2 = format!("{SERVICE}:{}", base + 5);
    let names = ["discovery", "rt", "lb", "gateway", "feed", s1.as_str(), s2.as_str()].join(",");

    let script = qmesh_testkit::manifest_dir().join("tests/js/up_dashboard.cjs");
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(format!("http://127.0.0.1:{}/", base + 81))
        .arg(&pw)
        .arg(&chromium)
        .arg(&names)
        .arg(&s1);
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
        if line == "CMD kill EQUITY_MARKET_RDB:".to_string() + &(base + 4).to_string() {
            let pid = up.pids()["rdb1"][0];
            assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
            writeln!(stdin, "OK").unwrap();
        }
        done |= line == "DONE";
    }
    let status = node.wait().unwrap();
    assert!(status.success() && done, "dashboard script failed:\n{transcript}");
    up.wait_line("rdb1 restarted", |l| l.contains("rdb1") && l.contains("(restart 1)"));
    up.signal("INT");
    assert!(up.wait_exit().success());
    no_process_left(&up.pids());
}

#[test]
fn a_process_failing_at_start_stops_the_estate_and_quotes_its_log() {
    let base = free_base();
    let dir = TempDir::new("fail");
    let cfg = dir.0.join("qmesh.toml");
    let text = format!(
        "[[process]]\nname = \"discovery\"\nkind = \"discovery\"\nport = {}\nhttp = {}\n\n\
         [[process]]\nname = \"lb\"\nkind = \"lb\"\nport = {}\nargs = [\"--no-such-flag\"]\n",
        base + 1,
        base + 81,
        base + 2
    );
    std::fs::write(&cfg, text).unwrap();
    let mut up = Up::start(&["--config", cfg.to_str().unwrap(), "--data", dir.0.to_str().unwrap()]);
    let status = up.wait_exit();
    assert!(!status.success());
    let out = Command::new(BIN)
        .args(["up", "--config", cfg.to_str().unwrap(), "--data", dir.0.to_str().unwrap()])
        .env("QMESH_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("lb exited (exit status 2)") && err.contains("--no-such-flag"), "{err}");
    assert!(err.contains(&dir.0.join("logs/lb.log").display().to_string()), "{err}");
    // the discovery started before it was stopped, and nothing is left
    assert!(up.seen.iter().any(|l| l.contains("discovery") && l.contains("stopped")), "{:?}", up.seen);
    no_process_left(&up.pids());
}

/// Files under `dir` (recursively) whose name contains `part`.
fn files_named(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_named(&p, part));
        } else if e.file_name().to_string_lossy().contains(part) {
            found.push(p);
        }
    }
    found
}

#[test]
fn a_second_up_on_the_same_data_is_refused_and_disjoint_only_runs_share_it() {
    let base = free_base();
    let dir = TempDir::new("twice");
    let data = dir.0.join("data");
    let data_s = data.to_str().unwrap();
    let base_s = base.to_string();
    let mut first = Up::start(&["--base-port", &base_s, "--data", data_s, "--only", "discovery", "lb"]);
    first.wait_up();

    // the whole default estate on other ports, same data: refused before
    // anything starts, naming the first process it shares
    let other = free_base();
    let out = Command::new(BIN)
        .args(["up", "--base-port", &other.to_string(), "--data", data_s])
        .env("QMESH_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!(
        "process discovery's data directory {} is in use by another `qmesh up` (pid {})",
        data.join("discovery").display(),
        first.child.id()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!data.join("logs/rdb1.log").exists(), "nothing was started");
    // the first is untouched: its registry still answers, its store in place
    eventually("the first estate still active", || {
        let rows = processes(base + 81);
        (state(&rows, "discovery") == "active" && state(&rows, "lb") == "active").then_some(())
    });
    assert!(data.join("discovery/registry.redb").exists());
    assert_eq!(files_named(&data, ".corrupt-"), Vec::<PathBuf>::new());

    // another process of the same estate, same data: starts beside it
    let mut second = Up::start(&["--base-port", &base_s, "--data", data_s, "--only", "rt"]);
    second.wait_up();
    eventually("rt active in the first's discovery", || {
        (state(&processes(base + 81), "rt") == "active").then_some(())
    });
    for up in [&mut second, &mut first] {
        up.signal("TERM");
        assert!(up.wait_exit().success());
        no_process_left(&up.pids());
    }
    assert_eq!(files_named(&data, ".corrupt-"), Vec::<PathBuf>::new());
}

#[test]
fn a_taken_port_at_bind_names_the_address_and_what_it_is_for() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for (args, what) in [
        (vec!["lb", "--bind", "127.0.0.1", "-p", &port], "kdb+ IPC"),
        (vec!["lb", "--bind", "127.0.0.1", "-p", "0", "--http", &port], "HTTP"),
    ] {
        let out = Command::new(BIN).args(&args).env("QMESH_LOG_LEVEL", "warn").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        let want = format!("cannot listen on 127.0.0.1:{port} ({what}): Address already in use");
        assert!(err.contains(&want), "{args:?}: {err}");
    }
}

#[test]
fn config_mistakes_and_ignored_flags_are_said() {
    let dir = TempDir::new("cfg");
    let cfg = dir.0.join("qmesh.toml");
    let one = "[[process]]\nname = \"discovery\"\nkind = \"discovery\"\nport = 1\nhttp = 2\n";
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).env("QMESH_LOG_LEVEL", "warn").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let cfg_s = cfg.to_str().unwrap();
    // a misspelt subcommand table, an unknown key of a real one: refused, naming them
    for (extra, want) in [
        ("[gatewy]\nlb = \"h:1\"\n", "[gatewy]: no such table (tables are named after a subcommand: "),
        ("[gateway]\nno_such_flag = 1\n", "[gateway] no_such_flag: no such key (the keys of [gateway]: "),
    ] {
        std::fs::write(&cfg, format!("{one}{extra}")).unwrap();
        for args in [&["up", "--config", cfg_s, "--print-config"][..], &["status", "--config", cfg_s]] {
            let (code, err) = run(args);
            assert_eq!(code, Some(2), "{args:?}: {err}");
            assert!(err.contains(&format!("config {cfg_s}: {want}")), "{args:?}: {err}");
        }
    }
    // --base-port with a config file: said, not silently dropped
    std::fs::write(&cfg, one).unwrap();
    let warning = format!("--base-port 7000 (or QMESH_BASE_PORT) ignored: ports come from {cfg_s}");
    let (code, err) = run(&["up", "--config", cfg_s, "--base-port", "7000", "--print-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&warning), "{err}");
    // status: the same warning; discovery (port 2) unreachable is exit 1
    let (code, err) = run(&["status", "--config", cfg_s, "--base-port", "7000"]);
    assert!(err.contains(&warning), "{err}");
    assert_eq!(code, Some(1), "{err}");
    let help = Command::new(BIN).args(["status", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("0 when every process of the config is active; 3 when one of them is not"),
        "{help}"
    );
    assert!(help.contains("1 when discovery cannot be reached"), "{help}");
    // base port 0: what is wrong with it, not arithmetic
    let (code, err) = run(&["up", "--base-port", "0", "--print-config"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("base port 0 is not usable") && !err.contains("past 65535"), "{err}");
}

#[test]
fn processes_of_other_hosts_are_named_when_left_out() {
    let base = free_base();
    let dir = TempDir::new("hosts");
    let cfg = dir.0.join("qmesh.toml");
    let text = format!(
        "[[process]]\nname = \"discovery\"\nkind = \"discovery\"\nport = {}\nhttp = {}\n\n\
         [[process]]\nname = \"lb\"\nkind = \"lb\"\nhost = \"b.example\"\nport = {}\n",
        base + 1,
        base + 81,
        base + 2
    );
    std::fs::write(&cfg, text).unwrap();
    let mut up = Up::start(&["--config", cfg.to_str().unwrap(), "--data", dir.0.to_str().unwrap()]);
    up.wait_line("the count", |l| l.starts_with("qmesh up: 1 process (discovery), state"));
    up.wait_line("the skipped ones", |l| {
        l == "qmesh up: not starting 1 process configured for other hosts: lb (b.example)"
    });
    up.wait_up();
    up.signal("TERM");
    assert!(up.wait_exit().success());
    no_process_left(&up.pids());
}
