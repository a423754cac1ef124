//! A stand-in for a plain q process: a kdb+ IPC server that evaluates one
//! message at a time (q is single-threaded: a query that sleeps holds up
//! every other connection), speaking nothing but kdb+ IPC. It stands behind
//! `qmesh gateway --instances` / `qmesh mserve` in process tests where a
//! real q (licensed) is not available.
//!
//! Written on `std` alone (the test kit sits below the codec, which uses it),
//! so it decodes and encodes only the few shapes it needs, little-endian,
//! uncompressed. What it evaluates, as a string or as a function call:
//!
//! | query | answer |
//! |---|---|
//! | `"sleep MS"`, `` (`sleep;MS) `` | blocks MS ms, then `(port;start;end)` (longs; unix µs) |
//! | `"whoami"`, `` (`whoami) `` | the port it listens on (long) |
//! | `` (`add;x;y) `` | `x+y` (longs or ints) |
//! | `"echo TEXT"` | `"TEXT"` |
//! | `"'TEXT"`, `` (`fail;"TEXT") `` | the q error `'TEXT` |
//! | anything else | the q error `'nyi: standin` |
//!
//! A function name may be a symbol or a string (PyKX sends `("add";2;3)`).
//! A sync message is answered; an async one is evaluated and its result
//! dropped, as q does. Before evaluating it prints `plainq running QUERY`
//! (the query as it read it), so a test can wait for a query to run, and
//! see which ran and in what order. Run it as a process with [`plain_q_process`]: the
//! test binary itself re-executed, so that a test can kill it (SIGKILL)
//! mid-query and start it again on the same port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Process;

/// The environment variable that turns a test binary into a stand-in q
/// process (its value: the port to listen on, 0 for any).
pub const PLAIN_Q_PORT_ENV: &str = "QMESH_TESTKIT_PLAIN_Q_PORT";

/// Largest message the stand-in reads (bytes): it only ever gets short
/// queries; anything larger closes the connection.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Longest sleep a query may ask for (ms), so a runaway test cannot hang.
const MAX_SLEEP_MS: i64 = 60_000;

/// Call first thing in a `#[test]` named as the `test_name` given to
/// [`plain_q_process`]: when the test binary was started as a stand-in q,
/// this serves forever (never returns); otherwise it returns at once and
/// the test passes trivially.
pub fn serve_if_requested() {
    let Some(port) = std::env::var(PLAIN_Q_PORT_ENV).ok().and_then(|p| p.parse::<u16>().ok()) else {
        return;
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("stand-in q: bind");
    let local = listener.local_addr().expect("stand-in q: local address");
    // the line Process::start waits for
    say(&format!("plainq listening ipc {local}"));
    serve(listener, local.port());
}

/// Starts the current test binary as a stand-in q process listening on
/// `port` (0: any; its [`Process::port`] says which). `test_name` is the
/// full name of a test that calls [`serve_if_requested`].
pub fn plain_q_process(test_name: &str, port: u16) -> Process {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(PLAIN_Q_PORT_ENV, port.to_string());
    Process::start(cmd, &["ipc"])
}

/// One line on stdout, flushed: what the test reads (this is a process
/// whose output is its interface, not a library printing).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Serves connections, one thread each, evaluating under one lock: one
/// message at a time over all connections, as q does.
fn serve(listener: TcpListener, port: u16) -> ! {
    let gate = Arc::new(Mutex::new(()));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let gate = gate.clone();
        std::thread::spawn(move || {
            let _ = connection(stream, port, &gate);
        });
    }
    unreachable!("TcpListener::incoming never ends")
}

fn connection(mut s: TcpStream, port: u16, gate: &Mutex<()>) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    // handshake: "user:password\cap\0", answered with one capability byte
    let mut hello = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b)?;
        if b[0] == 0 {
            break;
        }
        hello.push(b[0]);
        if hello.len() > 1024 {
            return Ok(());
        }
    }
    s.write_all(&[3])?;
    loop {
        let mut header = [0u8; 8];
        s.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if header[0] != 1 || header[2] != 0 || !(9..=MAX_MESSAGE_BYTES).contains(&len) {
            // big-endian, compressed or oversized: not for this stand-in
            return Ok(());
        }
        let mut body = vec![0u8; len - 8];
        s.read_exact(&mut body)?;
        let answer = {
            // a poisoned lock only means another connection's thread died
            let _one_at_a_time = gate.lock().unwrap_or_else(|e| e.into_inner());
            let mut pos = 0;
            match decode(&body, &mut pos) {
                Some(v) => say(&format!("plainq running {}", v.show())),
                None => say("plainq running (unreadable)"),
            }
            eval(&body, port)
        };
        if header[1] == 1 {
            let bytes = match answer {
                Ok(v) => v.encode(),
                Err(text) => Value::Error(text).encode(),
            };
            let mut out = Vec::with_capacity(8 + bytes.len());
            out.extend_from_slice(&[1, 2, 0, 0]);
            out.extend_from_slice(&((8 + bytes.len()) as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
            s.write_all(&out)?;
        }
    }
}

/// The values the stand-in reads and writes.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Long(i64),
    Longs(Vec<i64>),
    Sym(String),
    Str(String),
    List(Vec<Value>),
    Error(String),
}

impl Value {
    /// A short q-like rendering for the `running` lines.
    fn show(&self) -> String {
        match self {
            Value::Long(x) => x.to_string(),
            Value::Longs(xs) => xs.iter().map(i64::to_string).collect::<Vec<_>>().join(" "),
            Value::Sym(s) => format!("`{s}"),
            Value::Str(s) => format!("{s:?}"),
            Value::List(items) => {
                format!("({})", items.iter().map(Value::show).collect::<Vec<_>>().join(";"))
            }
            Value::Error(t) => format!("'{t}"),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    fn encode_into(&self, v: &mut Vec<u8>) {
        match self {
            Value::Long(x) => {
                v.push((-7i8) as u8);
                v.extend_from_slice(&x.to_le_bytes());
            }
            Value::Longs(xs) => {
                v.extend_from_slice(&[7, 0]);
                v.extend_from_slice(&(xs.len() as u32).to_le_bytes());
                for x in xs {
                    v.extend_from_slice(&x.to_le_bytes());
                }
            }
            Value::Sym(s) => {
                v.push((-11i8) as u8);
                v.extend_from_slice(s.as_bytes());
                v.push(0);
            }
            Value::Str(s) => {
                v.extend_from_slice(&[10, 0]);
                v.extend_from_slice(&(s.len() as u32).to_le_bytes());
                v.extend_from_slice(s.as_bytes());
            }
            Value::List(items) => {
                v.extend_from_slice(&[0, 0]);
                v.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for i in items {
                    i.encode_into(v);
                }
            }
            Value::Error(t) => {
                v.push((-128i8) as u8);
                v.extend_from_slice(t.as_bytes());
                v.push(0);
            }
        }
    }
}

/// Decodes one value of the shapes above (ints read as longs); `None` for
/// anything else.
fn decode(b: &[u8], pos: &mut usize) -> Option<Value> {
    let t = *b.get(*pos)? as i8;
    *pos += 1;
    let take = |pos: &mut usize, n: usize| -> Option<&[u8]> {
        let s = b.get(*pos..*pos + n)?;
        *pos += n;
        Some(s)
    };
    match t {
        -7 => Some(Value::Long(i64::from_le_bytes(take(pos, 8)?.try_into().ok()?))),
        -6 => Some(Value::Long(i32::from_le_bytes(take(pos, 4)?.try_into().ok()?) as i64)),
        -11 => {
            let end = b.get(*pos..)?.iter().position(|&c| c == 0)?;
            let s = String::from_utf8_lossy(take(pos, end)?).into_owned();
            *pos += 1;
            Some(Value::Sym(s))
        }
        10 | 0 => {
            take(pos, 1)?; // attributes
            let n = u32::from_le_bytes(take(pos, 4)?.try_into().ok()?) as usize;
            if n > b.len() {
                return None;
            }
            if t == 10 {
                return Some(Value::Str(String::from_utf8_lossy(take(pos, n)?).into_owned()));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(decode(b, pos)?);
            }
            Some(Value::List(items))
        }
        _ => None,
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn sleep(ms: i64, port: u16) -> Result<Value, String> {
    if !(0..=MAX_SLEEP_MS).contains(&ms) {
        return Err("domain".into());
    }
    let start = now_us();
    std::thread::sleep(Duration::from_millis(ms as u64));
    Ok(Value::Longs(vec![port as i64, start, now_us()]))
}

fn eval(body: &[u8], port: u16) -> Result<Value, String> {
    let mut pos = 0;
    let nyi = || "nyi: standin".to_string();
    match decode(body, &mut pos).ok_or_else(nyi)? {
        Value::Str(q) => {
            let q = q.trim();
            if let Some(e) = q.strip_prefix('\'') {
                return Err(e.to_string());
            }
            if q == "whoami" {
                return Ok(Value::Long(port as i64));
            }
            if let Some(t) = q.strip_prefix("echo ") {
                return Ok(Value::Str(t.to_string()));
            }
            if let Some(ms) = q.strip_prefix("sleep ") {
                return sleep(ms.trim().parse().map_err(|_| "type".to_string())?, port);
            }
            Err(nyi())
        }
        Value::List(mut items) => {
            // a string names a function as a symbol does
            if let Some(Value::Str(f)) = items.first() {
                items[0] = Value::Sym(f.clone());
            }
            call(&items, port)
        }
        _ => Err(nyi()),
    }
}

fn call(items: &[Value], port: u16) -> Result<Value, String> {
    let nyi = || "nyi: standin".to_string();
    match items {
        [Value::Sym(f)] if f == "whoami" => Ok(Value::Long(port as i64)),
        [Value::Sym(f), Value::Long(ms)] if f == "sleep" => sleep(*ms, port),
        [Value::Sym(f), Value::Long(x), Value::Long(y)] if f == "add" => Ok(Value::Long(x + y)),
        [Value::Sym(f), Value::Str(t)] if f == "fail" => Err(t.clone()),
        [Value::Sym(_), ..] => Err("type".into()),
        _ => Err(nyi()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: Value) -> Result<Value, String> {
        eval(&v.encode(), 5001)
    }

    #[test]
    fn evaluates_its_small_language() {
        assert_eq!(q(Value::Str("whoami".into())), Ok(Value::Long(5001)));
        assert_eq!(q(Value::Str("echo hi".into())), Ok(Value::Str("hi".into())));
        assert_eq!(q(Value::Str("'boom".into())), Err("boom".into()));
        let add = Value::List(vec![Value::Sym("add".into()), Value::Long(2), Value::Long(3)]);
        assert_eq!(q(add), Ok(Value::Long(5)));
        let add = Value::List(vec![Value::Str("add".into()), Value::Long(2), Value::Long(3)]);
        assert_eq!(q(add.clone()), Ok(Value::Long(5)));
        assert_eq!(add.show(), "(\"add\";2;3)");
        let fail = Value::List(vec![Value::Sym("fail".into()), Value::Str("x".into())]);
        assert_eq!(q(fail), Err("x".into()));
        match q(Value::List(vec![Value::Sym("sleep".into()), Value::Long(1)])) {
            Ok(Value::Longs(v)) => assert!(v[0] == 5001 && v[1] <= v[2]),
            other => panic!("{other:?}"),
        }
        assert!(q(Value::Str("1+1".into())).is_err());
        assert!(eval(&[0xff], 1).is_err());
        assert!(eval(&[0, 0, 255, 255, 255, 255], 1).is_err());
    }
}
