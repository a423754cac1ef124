//! Addresses of kdb+ endpoints, in the forms q users write.
//!
//! Accepted (a leading `:` is optional everywhere, as in ``hopen `:host:port``):
//!
//! | form | meaning |
//! |---|---|
//! | `host:port` | TCP |
//! | `:host:port:user:password` | TCP with credentials (the password may contain `:`) |
//! | `:host:port:user` | a user without a password |
//! | `::port`, `:port`, `port` | TCP to `localhost` |
//! | `[::1]:port` | an IPv6 literal |
//! | `tcp://host:port[:user[:password]]` | explicit TCP |
//! | `:tcps://host:port[:user[:password]]` | TCP with TLS (q's form for a TLS `hopen`; see [`crate::tls`]) |
//! | `:unix://port[:user[:password]]` | a Unix domain socket, the q convention: on Linux the abstract name `\0/tmp/kx.PORT`, elsewhere the file `/tmp/kx.PORT` |

use std::fmt;

/// Longest address text accepted, in bytes. Addresses come from command
/// lines and config files; this only stops a pathological input from being
/// carried around (and logged) in full.
pub const MAX_ADDRESS_LEN: usize = 4096;

/// Where a kdb+ endpoint listens.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// TCP to a host name or IP literal (IPv6 without brackets) and a port.
    Tcp {
        /// Host name or IP literal.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// The Unix domain socket q opens for `-p PORT`: see [`unix_socket_name`].
    Unix {
        /// The q port number naming the socket.
        port: u16,
    },
}

/// A parsed address: an endpoint plus optional credentials.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// User name, if given.
    pub user: Option<String>,
    /// Password, if given. Never shown by `Display` or `Debug`.
    pub password: Option<String>,
    /// Connect with TLS (written `:tcps://host:port`); TCP endpoints only.
    pub tls: bool,
}

/// Why an address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing to parse.
    #[error("empty address")]
    Empty,
    /// Longer than [`MAX_ADDRESS_LEN`].
    #[error("address longer than {MAX_ADDRESS_LEN} bytes")]
    TooLong,
    /// No port where one is required.
    #[error("address {0:?} has no port")]
    MissingPort(String),
    /// The port is not a number in 1..=65535 (0 is allowed only for TCP
    /// listeners, which parse with [`Address::parse_listen`]).
    #[error("bad port {0:?}")]
    BadPort(String),
    /// An IPv6 literal without its closing `]`.
    #[error("unclosed '[' in {0:?}")]
    UnclosedBracket(String),
    /// `tcps://` in front of something that is not `host:port` (a Unix
    /// socket, another scheme).
    #[error("tcps:// needs host:port, not {0:?}")]
    BadTls(String),
    /// Credentials containing a NUL byte, which ends the q handshake.
    #[error("credentials contain a NUL byte")]
    NulInCredentials,
}

/// The path q uses for its Unix domain socket on `port`: `/tmp/kx.PORT`.
/// On Linux it is used as an abstract socket name (a leading NUL, no file),
/// as q does since 3.5; elsewhere it is a file path.
pub fn unix_socket_name(port: u16) -> String {
    format!("/tmp/kx.{port}")
}

impl Address {
    /// A TCP address without credentials.
    pub fn tcp(host: impl Into<String>, port: u16) -> Address {
        Address {
            endpoint: Endpoint::Tcp { host: host.into(), port },
            user: None,
            password: None,
            tls: false,
        }
    }

    /// q's Unix domain socket for `port`, without credentials.
    pub fn unix(port: u16) -> Address {
        Address { endpoint: Endpoint::Unix { port }, user: None, password: None, tls: false }
    }

    /// A TCP address connected with TLS (`:tcps://host:port`), without
    /// credentials.
    pub fn tcps(host: impl Into<String>, port: u16) -> Address {
        Address { tls: true, ..Address::tcp(host, port) }
    }

    /// The same address with credentials.
    pub fn with_credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Address {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Parses any of the forms in the module documentation. Port 0 is refused.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let a = Address::parse_listen(text)?;
        match a.endpoint {
            Endpoint::Tcp { port: 0, .. } | Endpoint::Unix { port: 0 } => {
                Err(AddressError::BadPort("0".into()))
            }
            _ => Ok(a),
        }
    }

    /// As [`Address::parse`], but port 0 ("pick a free port") is allowed, for
    /// listeners.
    pub fn parse_listen(text: &str) -> Result<Address, AddressError> {
        if text.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        let rest = text.strip_prefix(':').unwrap_or(text);
        if rest.is_empty() {
            return Err(AddressError::MissingPort(text.into()));
        }
        if let Some(after) = rest.strip_prefix("unix://") {
            let (port, creds) = split_once_opt(after, ':');
            let port = parse_port(port)?;
            return Address::unix(port).with_creds(creds);
        }
        if let Some(after) = rest.strip_prefix("tcps://") {
            if ["tcp://", "tcps://", "unix://"].iter().any(|s| after.trim_start_matches(':').starts_with(s)) {
                return Err(AddressError::BadTls(text.into()));
            }
            let mut a = Address::parse_listen(after)?;
            a.tls = true;
            return Ok(a);
        }
        let rest = rest.strip_prefix("tcp://").unwrap_or(rest);
        // `port` alone (q: `hopen 5001`).
        if rest.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Address::tcp("localhost", parse_port(rest)?));
        }
        let (host, after_host) = if let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']').ok_or_else(|| AddressError::UnclosedBracket(text.into()))?;
            let after = &inner[close + 1..];
            let after = after.strip_prefix(':').ok_or_else(|| AddressError::MissingPort(text.into()))?;
            (&inner[..close], after)
        } else {
            match rest.split_once(':') {
                Some((h, after)) => (h, after),
                None => return Err(AddressError::MissingPort(text.into())),
            }
        };
        let (port, creds) = split_once_opt(after_host, ':');
        let port = parse_port(port)?;
        let host = if host.is_empty() { "localhost" } else { host };
        Address::tcp(host, port).with_creds(creds)
    }

    fn with_creds(mut self, creds: Option<&str>) -> Result<Address, AddressError> {
        if let Some(creds) = creds {
            if creds.contains('\0') {
                return Err(AddressError::NulInCredentials);
            }
            let (user, password) = split_once_opt(creds, ':');
            self.user = Some(user.to_owned());
            self.password = password.map(str::to_owned);
        }
        Ok(self)
    }

    /// The credential string sent in the handshake: `user:password`
    /// (`:` when neither is set, as PyKX sends).
    pub fn credentials(&self) -> String {
        format!("{}:{}", self.user.as_deref().unwrap_or(""), self.password.as_deref().unwrap_or(""))
    }

    /// The port number (TCP port, or the q port naming the Unix socket).
    pub fn port(&self) -> u16 {
        match self.endpoint {
            Endpoint::Tcp { port, .. } | Endpoint::Unix { port } => port,
        }
    }

    /// Whether q would treat this peer as local (no IPC compression): a Unix
    /// socket, `localhost`, or a loopback IP literal.
    pub fn is_local(&self) -> bool {
        match &self.endpoint {
            Endpoint::Unix { .. } => true,
            Endpoint::Tcp { host, .. } => {
                host.eq_ignore_ascii_case("localhost")
                    || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

fn split_once_opt(s: &str, c: char) -> (&str, Option<&str>) {
    match s.split_once(c) {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

fn parse_port(s: &str) -> Result<u16, AddressError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::BadPort(s.into()));
    }
    s.parse::<u16>().map_err(|_| AddressError::BadPort(s.into()))
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Address, AddressError> {
        Address::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix { port } => write!(f, "unix://{port}"),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Shows `host:port` (`tcps://host:port` with TLS, or `unix://port`) and
/// the user, never the password.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tcps://" } else { "" };
        match &self.user {
            Some(u) => write!(f, ":{scheme}{}:{u}", self.endpoint),
            None => write!(f, "{scheme}{}", self.endpoint),
        }
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Address")
            .field("endpoint", &self.endpoint)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp { host: host.into(), port }
    }

    #[test]
    fn plain_and_colon_forms() {
        assert_eq!(Address::parse("host:5001").unwrap(), Address::tcp("host", 5001));
        assert_eq!(Address::parse(":host:5001").unwrap(), Address::tcp("host", 5001));
        assert_eq!(Address::parse("tcp://h:1").unwrap(), Address::tcp("h", 1));
        assert_eq!(
            Address::parse(":tcp://h:1:u:p").unwrap(),
            Address::tcp("h", 1).with_credentials("u", "p")
        );
    }

    #[test]
    fn credentials_forms() {
        let a = Address::parse(":h:5001:user:pass").unwrap();
        assert_eq!(a.user.as_deref(), Some("user"));
        assert_eq!(a.password.as_deref(), Some("pass"));
        assert_eq!(a.credentials(), "user:pass");
        // password containing colons
        let a = Address::parse(":h:5001:user:pa:ss").unwrap();
        assert_eq!(a.password.as_deref(), Some("pa:ss"));
        // user only
        let a = Address::parse(":h:5001:user").unwrap();
        assert_eq!((a.user.as_deref(), a.password.as_deref()), (Some("user"), None));
        assert_eq!(a.credentials(), "user:");
        // none
        assert_eq!(Address::parse("h:1").unwrap().credentials(), ":");
        // empty user and password
        let a = Address::parse(":h:1::").unwrap();
        assert_eq!((a.user.as_deref(), a.password.as_deref()), (Some(""), Some("")));
    }

    #[test]
    fn tcps_forms() {
        let a = Address::parse(":tcps://db1:5001").unwrap();
        assert_eq!(a, Address::tcps("db1", 5001));
        assert!(a.tls);
        assert_eq!(a.to_string(), "tcps://db1:5001");
        assert_eq!(Address::parse(&a.to_string()).unwrap(), a);
        let a = Address::parse("tcps://[::1]:5001:u:p").unwrap();
        assert_eq!((a.endpoint.clone(), a.user.as_deref(), a.tls), (tcp("::1", 5001), Some("u"), true));
        assert_eq!(a.to_string(), ":tcps://[::1]:5001:u");
        assert_eq!(Address::parse(":tcps://5001").unwrap(), Address::tcps("localhost", 5001));
        assert!(!Address::parse("db1:5001").unwrap().tls);
        assert_eq!(Address::parse("tcps://tcphost:1").unwrap(), Address::tcps("tcphost", 1));
        assert!(matches!(Address::parse(":tcps://unix://5001"), Err(AddressError::BadTls(_))));
        assert!(matches!(Address::parse(":tcps://tcp://h:1"), Err(AddressError::BadTls(_))));
        assert!(matches!(Address::parse(":tcps://h"), Err(AddressError::MissingPort(_))));
        assert!(matches!(Address::parse(":tcps://h:0"), Err(AddressError::BadPort(_))));
    }

    #[test]
    fn localhost_shorthands() {
        assert_eq!(Address::parse("::5001").unwrap().endpoint, tcp("localhost", 5001));
        assert_eq!(Address::parse(":5001").unwrap().endpoint, tcp("localhost", 5001));
        assert_eq!(Address::parse("5001").unwrap().endpoint, tcp("localhost", 5001));
        assert_eq!(
            Address::parse("::5001:u:p").unwrap(),
            Address::tcp("localhost", 5001).with_credentials("u", "p")
        );
    }

    #[test]
    fn ipv6_literals() {
        assert_eq!(Address::parse("[::1]:5001").unwrap().endpoint, tcp("::1", 5001));
        assert_eq!(Address::parse(":[::1]:5001:u:p").unwrap().user.as_deref(), Some("u"));
        assert_eq!(Address::parse("[::1]:5001").unwrap().to_string(), "[::1]:5001");
        assert!(matches!(Address::parse("[::1:5001"), Err(AddressError::UnclosedBracket(_))));
        assert!(matches!(Address::parse("[::1]"), Err(AddressError::MissingPort(_))));
    }

    #[test]
    fn unix_forms() {
        assert_eq!(Address::parse(":unix://5010").unwrap(), Address::unix(5010));
        assert_eq!(Address::parse("unix://5010").unwrap(), Address::unix(5010));
        assert_eq!(
            Address::parse(":unix://5010:u:p").unwrap(),
            Address::unix(5010).with_credentials("u", "p")
        );
        assert_eq!(unix_socket_name(5010), "/tmp/kx.5010");
        assert!(Address::unix(1).is_local());
    }

    #[test]
    fn errors() {
        assert_eq!(Address::parse(""), Err(AddressError::Empty));
        assert_eq!(Address::parse("  "), Err(AddressError::Empty));
        assert!(matches!(Address::parse(":"), Err(AddressError::MissingPort(_))));
        assert!(matches!(Address::parse("host"), Err(AddressError::MissingPort(_))));
        assert!(matches!(Address::parse("host:"), Err(AddressError::BadPort(_))));
        assert!(matches!(Address::parse("host:x1"), Err(AddressError::BadPort(_))));
        assert!(matches!(Address::parse("host:65536"), Err(AddressError::BadPort(_))));
        assert!(matches!(Address::parse("host:-1"), Err(AddressError::BadPort(_))));
        assert!(matches!(Address::parse("host:0"), Err(AddressError::BadPort(_))));
        assert!(matches!(Address::parse(":unix://"), Err(AddressError::BadPort(_))));
        assert_eq!(Address::parse("h:1:u\0:p"), Err(AddressError::NulInCredentials));
        assert_eq!(Address::parse(&"x".repeat(MAX_ADDRESS_LEN + 1)), Err(AddressError::TooLong));
        assert_eq!(Address::parse_listen("0.0.0.0:0").unwrap().port(), 0);
    }

    #[test]
    fn locality() {
        assert!(Address::parse("localhost:1").unwrap().is_local());
        assert!(Address::parse("127.0.0.1:1").unwrap().is_local());
        assert!(Address::parse("127.1.2.3:1").unwrap().is_local());
        assert!(Address::parse("[::1]:1").unwrap().is_local());
        assert!(!Address::parse("10.0.0.1:1").unwrap().is_local());
        assert!(!Address::parse("db.example:1").unwrap().is_local());
    }

    #[test]
    fn display_hides_password() {
        let a = Address::parse(":h:1:user:secret").unwrap();
        assert_eq!(a.to_string(), ":h:1:user");
        assert!(!format!("{a:?}").contains("secret"));
        assert_eq!(Address::unix(7).to_string(), "unix://7");
    }
}
