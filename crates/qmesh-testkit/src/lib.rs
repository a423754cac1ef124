//! Test support shared by qmesh's crates. Used only as a dev-dependency.
//!
//! * [`python`] / [`python_qpython`]: the interpreters of the venvs that
//!   `.ci/run` builds, with PyKX (unlicensed) and qPython3, for interop tests.
//! * [`Process`]: a real `qmesh` process (or any command) started for a test,
//!   whose printed `… listening <proto> <addr>` lines give its ports, killed
//!   when dropped.
//! * [`plain_q`]: a stand-in for a plain q process (single-threaded, kdb+
//!   IPC only) run as a process, for what sits in front of q.
//! * [`tls`]: a test CA and server certificates, made with `openssl`.

pub mod plain_q;
pub mod tls;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a started process may take to print its listening lines.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory of the package under test, read when the test runs
/// (cargo sets `CARGO_MANIFEST_DIR` for it), not baked in when it was
/// compiled: a test binary reused from a build of another checkout (a
/// shared target directory) still finds this checkout's files.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// The interpreter with PyKX, aiokdb, duckdb and pyarrow: `$QMESH_PYTHON`,
/// else `~/.cache/qmesh-venv/bin/python` or `~/.cache/qmesh-ci-venv/bin/python`.
///
/// `None` when there is none — unless `QMESH_REQUIRE_PYTHON` is set (as
/// `.ci/run` sets it), in which case a missing interpreter panics: in CI an
/// interop test must run, not skip.
pub fn python() -> Option<PathBuf> {
    find_interpreter("QMESH_PYTHON", &[".cache/qmesh-venv/bin/python", ".cache/qmesh-ci-venv/bin/python"])
}

/// The interpreter with qPython3 (numpy < 2): `$QMESH_PYTHON_QP`, else the
/// default venv paths. Same rules as [`python`].
pub fn python_qpython() -> Option<PathBuf> {
    find_interpreter(
        "QMESH_PYTHON_QP",
        &[".cache/qmesh-venv-qp/bin/python", ".cache/qmesh-ci-venv-qp/bin/python"],
    )
}

fn find_interpreter(var: &str, defaults: &[&str]) -> Option<PathBuf> {
    let found = std::env::var_os(var).map(PathBuf::from).filter(|p| p.exists()).or_else(|| {
        let home = PathBuf::from(std::env::var_os("HOME")?);
        defaults.iter().map(|d| home.join(d)).find(|p| p.exists())
    });
    if found.is_none() {
        if std::env::var_os("QMESH_REQUIRE_PYTHON").is_some() {
            panic!("{var} is not set and no default venv exists, but QMESH_REQUIRE_PYTHON is set");
        }
        eprintln!(
            "NOTICE: no interpreter for {var}; skipping this interop test (run .ci/run to build the venvs)"
        );
    }
    found
}

/// A command such as `python` set up for PyKX in unlicensed mode.
pub fn python_command(interpreter: &PathBuf) -> Command {
    let mut cmd = Command::new(interpreter);
    cmd.env("PYKX_UNLICENSED", "true");
    cmd
}

/// A process started for a test. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Listening addresses by protocol (`ipc`, `http`, …), in the order printed.
    listening: HashMap<String, Vec<SocketAddr>>,
    /// Stdout lines after the listening lines, as they arrive.
    lines: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `cmd` and waits until it has printed `listening` lines for every
    /// protocol in `protos` (lines of the form `… listening <proto> <addr>`).
    pub fn start(mut cmd: Command, protos: &[&str]) -> Process {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Process { child, listening: HashMap::new(), lines: rx };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !protos.iter().all(|p| process.listening.contains_key(*p)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match process.lines.recv_timeout(left) {
                Ok(line) => process.note(&line),
                Err(_) => {
                    let status = process.child.try_wait();
                    panic!("{cmd:?} did not print listening lines for {protos:?} in time (status {status:?})")
                }
            }
        }
        process
    }

    /// Starts the `qmesh` binary with `args`; `bin` is
    /// `env!("CARGO_BIN_EXE_qmesh")` in the binary crate's tests.
    pub fn qmesh(bin: &str, args: &[&str], protos: &[&str]) -> Process {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Process::start(cmd, protos)
    }

    fn note(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "listening" {
                if let (Some(proto), Some(Ok(addr))) = (words.next(), words.next().map(str::parse)) {
                    self.listening.entry(proto.to_owned()).or_default().push(addr);
                }
                return;
            }
        }
    }

    /// The first address printed for `proto`.
    pub fn addr(&self, proto: &str) -> SocketAddr {
        self.listening
            .get(proto)
            .and_then(|a| a.first())
            .copied()
            .unwrap_or_else(|| panic!("no {proto} port"))
    }

    /// The port printed for `proto`.
    pub fn port(&self, proto: &str) -> u16 {
        self.addr(proto).port()
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL) and reaps it: what a crash looks
    /// like to its peers.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status (a graceful stop).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().expect("wait for child")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
