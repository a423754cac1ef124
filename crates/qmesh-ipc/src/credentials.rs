//! Client credentials: the user and password this process sends to an
//! endpoint whose address carries none.
//!
//! A process opens connections of its own — a gateway to each service
//! instance and to its load balancer, a service to its load balancer, every
//! server to discovery, `qmesh q`, `qmesh rt tail` — and the addresses it
//! learns (an instance registers `:host:port`) carry no password. When those
//! endpoints run with `-u`, the credentials come from a file given once per
//! process (`--credentials FILE`, `QMESH_CREDENTIALS`), installed with
//! [`install`]; [`crate::Connection::connect`] looks every address without a
//! user up there, so every caller gets it.
//!
//! # The credentials file
//!
//! One endpoint per line, in the form q users write in `hopen` addresses:
//!
//! ```text
//! # host:port:user:password
//! db1.example:5001:gw:s3cret
//! 127.0.0.1:5000:alice:pa:ss       (the password runs to the end of the line)
//! [::1]:5002:bob:pw                (an IPv6 literal in brackets)
//! unix://5010:svc:pw               (q's Unix socket for port 5010)
//! *:6000:estate:pw                 (any host, port 6000)
//! *:*:estate:pw                    (anything else)
//! ```
//!
//! A leading `:` is allowed (``:host:port:user:password``). `*` as host or
//! port matches any. The first line that matches wins, so write exact lines
//! before wildcards. The host is compared as written (case-insensitive):
//! `localhost` and `127.0.0.1` are different lines. Blank lines and lines
//! starting with `#` are ignored; any other line without a user is an error
//! naming the line. Keep the file readable by the process's user only: it
//! holds passwords in plain text, as q's `hopen` strings do.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::address::{Address, Endpoint};

/// Largest credentials file read, in bytes: checked from the file's
/// metadata before reading. An estate's endpoints fit in far less.
pub const MAX_CREDENTIALS_FILE_BYTES: u64 = 1024 * 1024;

/// Why a credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read credentials file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Larger than [`MAX_CREDENTIALS_FILE_BYTES`].
    #[error("credentials file {path} is {len} bytes, above the limit of {MAX_CREDENTIALS_FILE_BYTES}")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        len: u64,
    },
    /// A line that is not `host:port:user:password`.
    #[error("credentials file line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// [`install`] was called twice.
    #[error("client credentials are already installed in this process")]
    AlreadyInstalled,
}

#[derive(Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Name(String),
    Unix,
}

#[derive(Clone)]
struct Line {
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
    user: String,
    password: String,
}

impl Line {
    fn matches(&self, e: &Endpoint) -> bool {
        let (host_ok, port) = match e {
            Endpoint::Tcp { host, port } => (
                match &self.host {
                    HostPattern::Any => true,
                    HostPattern::Name(h) => h.eq_ignore_ascii_case(host),
                    HostPattern::Unix => false,
                },
                *port,
            ),
            Endpoint::Unix { port } => (matches!(self.host, HostPattern::Any | HostPattern::Unix), *port),
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// The lines of a credentials file; see the module docs.
#[derive(Clone, Default)]
pub struct Credentials {
    lines: Vec<Line>,
}

/// Lists the endpoints and users, never a password.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self
            .lines
            .iter()
            .map(|l| {
                let host = match &l.host {
                    HostPattern::Any => "*".to_owned(),
                    HostPattern::Name(h) => h.clone(),
                    HostPattern::Unix => "unix://".to_owned(),
                };
                let port = l.port.map_or_else(|| "*".to_owned(), |p| p.to_string());
                format!("{host}:{port}:{}", l.user)
            })
            .collect();
        f.debug_struct("Credentials").field("lines", &shown).finish()
    }
}

impl Credentials {
    /// Reads and parses a credentials file.
    pub fn load(path: impl AsRef<Path>) -> Result<Credentials, CredentialsError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io = |source| CredentialsError::Io { path: shown.clone(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CREDENTIALS_FILE_BYTES {
            return Err(CredentialsError::TooLarge { path: shown, len });
        }
        let text = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(text)
            .map_err(|_| CredentialsError::BadLine { line: 0, reason: "the file is not UTF-8".into() })?;
        Credentials::parse(&text)
    }

    /// Parses the text of a credentials file.
    pub fn parse(text: &str) -> Result<Credentials, CredentialsError> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let bad = |reason: &str| CredentialsError::BadLine { line: i + 1, reason: reason.to_owned() };
            lines.push(parse_line(line.trim_start()).map_err(|r| bad(&r))?);
        }
        Ok(Credentials { lines })
    }

    /// How many lines the file has.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether the file has no line.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The user and password of the first line matching `endpoint`.
    pub fn lookup(&self, endpoint: &Endpoint) -> Option<(&str, &str)> {
        self.lines.iter().find(|l| l.matches(endpoint)).map(|l| (l.user.as_str(), l.password.as_str()))
    }

    /// `addr` itself when it carries a user; otherwise `addr` with the
    /// credentials of its endpoint's line, if any.
    pub fn apply(&self, addr: &Address) -> Address {
        if addr.user.is_some() {
            return addr.clone();
        }
        match self.lookup(&addr.endpoint) {
            Some((u, p)) => addr.clone().with_credentials(u, p),
            None => addr.clone(),
        }
    }
}

/// `host:port:user:password` (see the module docs) → a line; the reason
/// when it is not one.
fn parse_line(line: &str) -> Result<Line, String> {
    let rest = line.strip_prefix(':').unwrap_or(line);
    if let Some(after) = rest.strip_prefix("unix://") {
        let a = Address::parse(&format!(":unix://{after}")).map_err(|e| e.to_string())?;
        let port = a.port();
        let user = a.user.filter(|u| !u.is_empty()).ok_or("no user after unix://PORT")?;
        return Ok(Line {
            host: HostPattern::Unix,
            port: Some(port),
            user,
            password: a.password.unwrap_or_default(),
        });
    }
    let (host, after_host) = if let Some(inner) = rest.strip_prefix('[') {
        let (h, after) = inner.split_once(']').ok_or("unclosed '['")?;
        (h, after.strip_prefix(':').ok_or("no port after ']'")?)
    } else {
        rest.split_once(':').ok_or("expected host:port:user:password")?
    };
    let (port, creds) = after_host.split_once(':').ok_or("expected host:port:user:password")?;
    let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
    if user.is_empty() {
        return Err("empty user name".into());
    }
    if user.contains('\0') || password.contains('\0') {
        return Err("credentials contain a NUL byte".into());
    }
    let host = match host {
        "" => return Err("empty host (write localhost, or * for any)".into()),
        "*" => HostPattern::Any,
        h => HostPattern::Name(h.to_owned()),
    };
    let port = match port {
        "*" => None,
        p => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("bad port {p:?} (a number, or * for any)"))?,
        ),
    };
    Ok(Line { host, port, user: user.to_owned(), password: password.to_owned() })
}

static INSTALLED: OnceLock<Arc<Credentials>> = OnceLock::new();

/// Makes `credentials` the process's client credentials: every connection
/// opened afterwards to an address without a user sends the matching
/// line's user and password. Once per process (the binary calls it at start
/// from `--credentials`); a second call is
/// [`CredentialsError::AlreadyInstalled`].
pub fn install(credentials: Credentials) -> Result<(), CredentialsError> {
    INSTALLED.set(Arc::new(credentials)).map_err(|_| CredentialsError::AlreadyInstalled)
}

/// The process's client credentials, if [`install`]ed.
pub fn installed() -> Option<Arc<Credentials>> {
    INSTALLED.get().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(h: &str, p: u16) -> Endpoint {
        Endpoint::Tcp { host: h.into(), port: p }
    }

    #[test]
    fn lines_and_first_match_wins() {
        let c = Credentials::parse(
            "# estate\n\n:db1:5001:gw:s3cret\n127.0.0.1:5000:alice:pa:ss\r\n[::1]:5002:bob:pw\nunix://5010:svc:\n*:6000:six:pw6\n*:*:any:pwany\n",
        )
        .unwrap();
        assert_eq!(c.len(), 6);
        assert_eq!(c.lookup(&tcp("db1", 5001)), Some(("gw", "s3cret")));
        assert_eq!(c.lookup(&tcp("DB1", 5001)), Some(("gw", "s3cret")));
        assert_eq!(c.lookup(&tcp("127.0.0.1", 5000)), Some(("alice", "pa:ss")));
        assert_eq!(c.lookup(&tcp("::1", 5002)), Some(("bob", "pw")));
        assert_eq!(c.lookup(&Endpoint::Unix { port: 5010 }), Some(("svc", "")));
        assert_eq!(c.lookup(&tcp("db2", 6000)), Some(("six", "pw6")));
        assert_eq!(c.lookup(&tcp("localhost", 5000)), Some(("any", "pwany")), "hosts compare as written");
        assert!(Credentials::parse("db1:5001:gw:x").unwrap().lookup(&tcp("db1", 5002)).is_none());
    }

    #[test]
    fn an_address_with_a_user_keeps_it() {
        let c = Credentials::parse("*:*:estate:pw").unwrap();
        let bare = Address::parse("h:1").unwrap();
        assert_eq!(c.apply(&bare).credentials(), "estate:pw");
        let own = Address::parse(":h:1:me:mine").unwrap();
        assert_eq!(c.apply(&own).credentials(), "me:mine");
        let none = Credentials::default();
        assert_eq!(none.apply(&bare).credentials(), ":");
    }

    #[test]
    fn bad_lines_are_named() {
        let line = |t: &str| match Credentials::parse(t) {
            Err(CredentialsError::BadLine { line, .. }) => line,
            other => panic!("{t:?}: {other:?}"),
        };
        assert_eq!(line("h:1:u:p\nh:1"), 2);
        assert_eq!(line("h:1:"), 1);
        assert_eq!(line("h:x:u:p"), 1);
        assert_eq!(line("h:0:u:p"), 1);
        assert_eq!(line(":1:u:p"), 1);
        assert_eq!(line("[::1:1:u:p"), 1);
        assert_eq!(line("unix://5:"), 1);
        assert_eq!(line("h:1:u\0:p"), 1);
    }

    #[test]
    fn debug_shows_no_password() {
        let c = Credentials::parse("h:1:user:secret\n*:*:u2:hidden").unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("h:1:user") && d.contains("*:*:u2"), "{d}");
        assert!(!d.contains("secret") && !d.contains("hidden"), "{d}");
    }

    #[test]
    fn load_checks_the_file() {
        let dir = std::env::temp_dir().join(format!("qmesh-ipc-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("creds");
        std::fs::write(&p, "h:1:u:p\n").unwrap();
        assert_eq!(Credentials::load(&p).unwrap().len(), 1);
        assert!(matches!(Credentials::load(dir.join("missing")), Err(CredentialsError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
