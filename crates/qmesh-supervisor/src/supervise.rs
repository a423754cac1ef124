//! The supervisor: starts the selected processes one after another (each
//! once the one before is healthy), restarts any that dies with the backoff
//! of [`RestartPolicy`], and stops them in the reverse order when asked.
//!
//! A process is *listening* once it has printed a `<kind> listening <proto>
//! <addr>` line for each of its ports, and *healthy* once its `/healthz`
//! answers 200 (a process without an HTTP port: once listening; without any
//! port: once started). One thread runs the loop, polling every
//! [`POLL_INTERVAL`]; it alone starts, signals and reaps the children, so a
//! signal never reaches a reaped (and possibly reused) pid.
//!
//! Children leave no process behind: each runs in its own process group (a
//! Ctrl-C at the terminal reaches the supervisor only, which stops them in
//! order), and on Linux gets SIGTERM if the supervisor's thread dies
//! (`PR_SET_PDEATHSIG`), even by SIGKILL.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qmesh_process::Shutdown;

use crate::config::{Estate, ProcessSpec};
use crate::restart::{Restart, RestartPolicy};
use crate::{Error, launch};

/// How often the loop looks at its children.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How often a starting process's `/healthz` is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Lines of a process's log quoted when it fails to start.
pub const LOG_TAIL_LINES: usize = 15;

/// What `qmesh up` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The estate.
    pub estate: Estate,
    /// Names of the processes to start (in the estate's order).
    pub selected: Vec<String>,
    /// The state directory: `DATA/<name>/`, `DATA/logs/<name>.log`.
    pub data: PathBuf,
    /// The `qmesh` executable (`std::env::current_exe()`).
    pub exe: PathBuf,
    /// The config file the children read their kinds' flag defaults from
    /// (`QMESH_CONFIG`); `None`: none (`/dev/null`, so a `qmesh.toml` in
    /// the working directory is not read by surprise).
    pub config_file: Option<PathBuf>,
}

/// What happens, for the progress lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A process was started (`restart` 0 the first time).
    Starting { name: String, pid: u32, restart: u64, command: String },
    /// It printed a listening line.
    Listening { name: String, proto: String, addr: String },
    /// It is ready (`/healthz` 200, or see the module docs).
    Healthy { name: String, pid: u32 },
    /// Every selected process is healthy.
    AllHealthy,
    /// A process exited without being asked; it starts again after `delay`.
    Exited { name: String, pid: u32, status: String, delay: Duration, restart: u64 },
    /// It could not be started; tried again after `delay`.
    SpawnFailed { name: String, error: String, delay: Duration, restart: u64 },
    /// A process did not become healthy in time after a restart; killed,
    /// and handled as an exit.
    StartTimedOut { name: String, pid: u32 },
    /// Stopping: SIGTERM sent.
    Stopping { name: String, pid: u32 },
    /// It stopped (`killed`: it outlived the stop timeout and got SIGKILL).
    Stopped { name: String, pid: u32, status: String, killed: bool },
}

#[derive(Debug)]
enum State {
    /// Not started yet (bring-up goes in order).
    Idle,
    /// Started at `since`; not healthy yet.
    Starting {
        since: Duration,
        next_probe: Duration,
    },
    Healthy,
    /// Dead; start again at `until`.
    Waiting {
        until: Duration,
    },
}

#[derive(Debug)]
struct Child {
    spec: ProcessSpec,
    args: Vec<String>,
    log: PathBuf,
    state: State,
    proc: Option<std::process::Child>,
    lines: Option<mpsc::Receiver<String>>,
    seen: HashSet<String>,
    policy: RestartPolicy,
}

impl Child {
    fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, std::process::Child::id)
    }

    fn expected_protos(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.spec.port.is_some() {
            v.push("ipc");
        }
        if self.spec.http.is_some() {
            v.push("http");
        }
        v
    }
}

/// Runs the estate until `stop` is triggered, then stops every process in
/// the reverse order and returns. A process that exits or does not become
/// healthy while the estate first comes up is an error (after stopping the
/// ones already started) quoting its log; once the estate is up, a process
/// that dies is restarted.
///
/// Call from a thread that lives until this returns (the children's death
/// signal follows the thread that started them).
pub fn run(opts: Options, stop: &Shutdown, on_event: &mut dyn FnMut(Event)) -> Result<(), Error> {
    let Options { estate, selected, data, exe, config_file } = opts;
    let mut children: Vec<Child> = estate
        .processes
        .iter()
        .filter(|p| selected.contains(&p.name))
        .map(|p| Child {
            args: launch::args(&estate, p, &data),
            log: launch::log_file(&data, &p.name),
            spec: p.clone(),
            state: State::Idle,
            proc: None,
            lines: None,
            seen: HashSet::new(),
            policy: RestartPolicy::new(estate.estate.backoff()),
        })
        .collect();
    let io = |path: &Path, e: std::io::Error| Error::Io { path: path.to_path_buf(), source: e };
    std::fs::create_dir_all(data.join("logs")).map_err(|e| io(&data.join("logs"), e))?;
    for c in &children {
        if launch::uses_data(&c.spec) {
            let d = launch::data_dir(&data, &c.spec);
            std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
        }
    }
    let probe_ip = match estate.estate.bind.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let startup_timeout = Duration::from_millis(estate.estate.startup_timeout_ms);
    let stop_timeout = Duration::from_millis(estate.estate.stop_timeout_ms);
    let env = ChildEnv { exe, config_file };

    let t0 = Instant::now();
    let now = || t0.elapsed();
    // bring-up: the index of the next process to start in order
    let mut next = 0;
    let mut up = false;
    let result = 'run: loop {
        if stop.is_triggered() {
            break Ok(());
        }
        if !up {
            let ready = next == 0 || matches!(children[next - 1].state, State::Healthy);
            if ready && next < children.len() {
                let c = &mut children[next];
                if let Err(e) = env.spawn(c, now(), on_event) {
                    break Err(e);
                }
                next += 1;
            } else if ready {
                up = true;
                on_event(Event::AllHealthy);
            }
        }
        for c in children.iter_mut() {
            let t = now();
            // listening lines
            if let Some(rx) = &c.lines {
                while let Ok(line) = rx.try_recv() {
                    if let Some((proto, addr)) = listening(&line)
                        && c.seen.insert(proto.to_string())
                    {
                        on_event(Event::Listening {
                            name: c.spec.name.clone(),
                            proto: proto.into(),
                            addr: addr.into(),
                        });
                    }
                }
            }
            // exits
            if let Some(p) = c.proc.as_mut() {
                match p.try_wait() {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        let pid = p.id();
                        c.proc = None;
                        let was_up = matches!(c.state, State::Healthy);
                        if !up {
                            break 'run Err(Error::StartFailed {
                                name: c.spec.name.clone(),
                                why: format!("exited ({})", describe(status)),
                                log: c.log.clone(),
                                tail: tail(&c.log),
                            });
                        }
                        let r = c.policy.exited(t);
                        tracing::warn!(process = %c.spec.name, pid, status = %describe(status), was_up, restart = r.count, "process exited; restarting after {:?}", r.delay);
                        on_event(Event::Exited {
                            name: c.spec.name.clone(),
                            pid,
                            status: describe(status),
                            delay: r.delay,
                            restart: r.count,
                        });
                        c.state = State::Waiting { until: r.at };
                        continue;
                    }
                    Err(e) => tracing::warn!(process = %c.spec.name, "cannot wait for the process: {e}"),
                }
            }
            match c.state {
                State::Starting { since, next_probe } => {
                    let listening = c.expected_protos().iter().all(|p| c.seen.contains(*p));
                    if listening && t >= next_probe {
                        let healthy = match c.spec.http {
                            Some(port) => matches!(
                                crate::http::get(SocketAddr::new(probe_ip, port), "localhost", "/healthz"),
                                Ok((200, _))
                            ),
                            None => true,
                        };
                        if healthy {
                            c.state = State::Healthy;
                            on_event(Event::Healthy { name: c.spec.name.clone(), pid: c.pid() });
                            continue;
                        }
                        c.state = State::Starting { since, next_probe: t + PROBE_INTERVAL };
                    }
                    if t.saturating_sub(since) > startup_timeout {
                        if !up {
                            let why = if listening {
                                format!("not healthy after {startup_timeout:?} (GET /healthz)")
                            } else {
                                format!(
                                    "no listening lines for {:?} after {startup_timeout:?}",
                                    c.expected_protos()
                                )
                            };
                            break 'run Err(Error::StartFailed {
                                name: c.spec.name.clone(),
                                why,
                                log: c.log.clone(),
                                tail: tail(&c.log),
                            });
                        }
                        on_event(Event::StartTimedOut { name: c.spec.name.clone(), pid: c.pid() });
                        kill_now(c);
                        let r = c.policy.exited(t);
                        c.state = State::Waiting { until: r.at };
                    }
                }
                State::Waiting { until } if t >= until => {
                    if let Err(e) = env.spawn(c, t, on_event) {
                        let r: Restart = c.policy.exited(t);
                        on_event(Event::SpawnFailed {
                            name: c.spec.name.clone(),
                            error: e.to_string(),
                            delay: r.delay,
                            restart: r.count,
                        });
                        c.state = State::Waiting { until: r.at };
                    }
                }
                _ => {}
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    stop_all(&mut children, stop_timeout, on_event);
    result
}

/// How children are started.
#[derive(Debug)]
struct ChildEnv {
    exe: PathBuf,
    config_file: Option<PathBuf>,
}

impl ChildEnv {
    fn spawn(&self, c: &mut Child, now: Duration, on_event: &mut dyn FnMut(Event)) -> Result<(), Error> {
        let io = |path: &Path, e: std::io::Error| Error::Io { path: path.to_path_buf(), source: e };
        let mut log = OpenOptions::new().create(true).append(true).open(&c.log).map_err(|e| io(&c.log, e))?;
        let restart = c.policy.count();
        let _ = writeln!(
            log,
            "--- qmesh up: starting {} (restart {restart}): {} {}",
            c.spec.name,
            self.exe.display(),
            c.args.join(" ")
        );
        let mut cmd = Command::new(&self.exe);
        cmd.args(&c.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().map_err(|e| io(&c.log, e))?);
        // the estate's flags are on the command line; the user's QMESH_*
        // settings for `qmesh up` must not leak into every child
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("QMESH_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("QMESH_CONFIG", self.config_file.as_deref().unwrap_or(Path::new("/dev/null")));
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id();
            // SAFETY: between fork and exec only async-signal-safe calls:
            // prctl and getppid, no allocation.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // the supervisor died before prctl took effect
                    if libc::getppid() as u32 != parent {
                        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
        let mut proc = cmd.spawn().map_err(|e| io(&self.exe, e))?;
        let stdout = proc.stdout.take();
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = stdout {
            let name = c.spec.name.clone();
            std::thread::Builder::new()
                .name(format!("up-{name}"))
                .spawn(move || copy_lines(stdout, log, &tx))
                .map_err(|e| io(&c.log, e))?;
        }
        c.policy.started(now);
        c.seen.clear();
        c.lines = Some(rx);
        c.state = State::Starting { since: now, next_probe: now };
        on_event(Event::Starting {
            name: c.spec.name.clone(),
            pid: proc.id(),
            restart,
            command: format!("qmesh {}", c.args.join(" ")),
        });
        c.proc = Some(proc);
        Ok(())
    }
}

/// Copies a child's stdout to its log, handing each line to the loop too.
fn copy_lines(stdout: std::process::ChildStdout, mut log: File, tx: &mpsc::Sender<String>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        // the loop stops listening once the child is replaced; keep copying
        let _ = tx.send(line);
    }
}

/// `(proto, addr)` of a `<kind> listening <proto> <addr>` line.
fn listening(line: &str) -> Option<(&str, &str)> {
    let mut w = line.split_whitespace();
    w.find(|x| *x == "listening")?;
    Some((w.next()?, w.next()?))
}

/// `exit status 1`, `killed by signal 9`.
fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// The last [`LOG_TAIL_LINES`] lines of a log.
fn tail(path: &Path) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let mut last: VecDeque<&str> = VecDeque::with_capacity(LOG_TAIL_LINES);
    for l in text.lines() {
        if last.len() == LOG_TAIL_LINES {
            last.pop_front();
        }
        last.push_back(l);
    }
    last.into_iter().collect::<Vec<_>>().join("\n")
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory effects; the pid is a child this
        // thread has not reaped, so it names that child.
        unsafe { libc::kill(pid, sig) };
    }
}

fn kill_now(c: &mut Child) {
    if let Some(mut p) = c.proc.take() {
        signal(p.id(), libc::SIGKILL);
        let _ = p.wait();
    }
}

/// SIGTERM to each running child, last started first, each waited for up to
/// `timeout` (then SIGKILL) before the next.
fn stop_all(children: &mut [Child], timeout: Duration, on_event: &mut dyn FnMut(Event)) {
    for c in children.iter_mut().rev() {
        let Some(mut p) = c.proc.take() else { continue };
        let pid = p.id();
        on_event(Event::Stopping { name: c.spec.name.clone(), pid });
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        let mut killed = false;
        let status = loop {
            match p.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    killed = true;
                    signal(pid, libc::SIGKILL);
                    break p.wait().ok();
                }
                Err(_) => break None,
            }
        };
        let status = status.map_or_else(|| "unknown".into(), describe);
        on_event(Event::Stopped { name: c.spec.name.clone(), pid, status, killed });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_lines() {
        assert_eq!(listening("gateway listening ipc 127.0.0.1:5000"), Some(("ipc", "127.0.0.1:5000")));
        assert_eq!(listening("rt listening http [::1]:80"), Some(("http", "[::1]:80")));
        assert_eq!(listening("hello"), None);
        assert_eq!(listening("x listening"), None);
    }

    #[test]
    fn tails_logs() {
        let dir = std::env::temp_dir().join(format!("qmesh-up-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.log");
        let text: String = (0..40).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&f, text).unwrap();
        let t = tail(&f);
        assert!(t.starts_with("line 25\n") && t.ends_with("line 39"), "{t}");
        assert_eq!(tail(&dir.join("none")), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
