//! Who may use a process's HTTP port: the same users as its kdb+ IPC port.
//!
//! With a users file (`-u`), every HTTP route of every server kind — the
//! component's API, `/api/identity`, discovery's `/ws` feed and dashboard,
//! `/healthz` and `/metrics` — asks for **HTTP Basic** credentials checked
//! against that file, exactly as the IPC handshake checks them (plain, MD5
//! or SHA-1 entries; see [`qmesh_ipc::auth`]):
//!
//! ```text
//! curl -u alice:secret -X POST http://gw:8080/query -d '{"service":"EQUITY","query":"select count(*) from trade"}'
//! ```
//!
//! Basic sends the password with every request, only base64-encoded: use it
//! over TLS or on a trusted network. There is no separate bearer token:
//! a token derived from the password file would be as secret as the
//! password and would have to be stored beside it; Basic keeps one secret
//! per user. A browser asks for the credentials once per origin and sends
//! them on every request, the dashboard's WebSocket upgrade included.
//!
//! `/healthz` and `/metrics` are answered without credentials only where a
//! flag says so ([`Access::open_health`], [`Access::open_metrics`]: a
//! Kubernetes probe, a Prometheus scrape without credentials). Without a
//! users file nothing is checked.
//!
//! Every refusal is logged (`warn`) with the remote address, the path and
//! the user name tried — never the password. Failed logins count per remote
//! address in the [`FailureLimiter`] the process shares with its IPC port;
//! an address past its free failures is answered `429 Too Many Requests`
//! (`Retry-After`) without its credentials being checked until its wait is
//! over. A request without credentials (a browser's first) is refused but
//! not counted.
//!
//! Refusals are the catalog's `access` word: `401` with
//! `WWW-Authenticate: Basic realm="qmesh"` and
//! `{"error":"access","detail":…}`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use qmesh_ipc::PasswordFile;
use qmesh_ipc::limiter::{FailureLimiter, Verdict};
use tracing::warn;

use crate::{ErrorKind, WireError};

/// Longest `Authorization` header looked at, in bytes: a user name and a
/// password of a few hundred bytes each, base64-encoded. A longer one is
/// refused without being decoded.
pub const MAX_AUTHORIZATION_BYTES: usize = 4096;

/// The realm browsers show when they ask for credentials.
const REALM: &str = r#"Basic realm="qmesh", charset="UTF-8""#;

/// What a process's HTTP side leaves open and who may do what: the flags
/// every server kind shares beside `-u` (`--open-health`,
/// `--open-metrics`, `--permissions`).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// With `-u`: answer `GET /healthz` without credentials.
    pub open_health: bool,
    /// With `-u`: answer `GET /metrics` without credentials.
    pub open_metrics: bool,
    /// The permissions file ([`crate::permissions`]): which users may query
    /// which services, publish or subscribe to which streams, heartbeat to
    /// discovery. `None`: every authenticated user may do everything.
    pub permissions: Option<PathBuf>,
}

/// The user an HTTP request was authenticated as: a request extension set
/// by the shell's HTTP layer when the process has a users file (absent
/// otherwise). Handlers read it for permission checks
/// (`Option<axum::Extension<AuthUser>>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser(pub String);

/// The HTTP side's check: the users file, the failed-login limiter shared
/// with the IPC port, and what stays open.
#[derive(Debug)]
pub struct HttpGuard {
    users: Arc<PasswordFile>,
    limiter: Arc<Mutex<FailureLimiter>>,
    open_health: bool,
    open_metrics: bool,
}

impl HttpGuard {
    /// A guard checking `users`, counting failures in `limiter`.
    pub fn new(users: Arc<PasswordFile>, limiter: Arc<Mutex<FailureLimiter>>, access: &Access) -> HttpGuard {
        HttpGuard { users, limiter, open_health: access.open_health, open_metrics: access.open_metrics }
    }

    /// Decides one request: `Ok(Some(user))` when it carries good
    /// credentials, `Ok(None)` for an open path, else the refusal to send.
    /// `now` is the request's arrival (injected for tests).
    pub fn decide(
        &self,
        remote: SocketAddr,
        path: &str,
        headers: &HeaderMap,
        now: Instant,
    ) -> Result<Option<AuthUser>, Refusal> {
        if (self.open_health && path == "/healthz") || (self.open_metrics && path == "/metrics") {
            return Ok(None);
        }
        let ip = remote.ip().to_canonical();
        let tried = basic_credentials(headers);
        let tried_user = tried.as_ref().map(|(u, _)| u.as_str()).unwrap_or_default();
        if let Verdict::Wait(wait) = lock(&self.limiter).verdict(ip, tried_user, now) {
            let user = tried_user;
            warn!(%remote, path, user = ?user, retry_in_ms = wait.as_millis() as u64,
                "http access denied: too many failed logins from this address");
            return Err(Refusal::Slowed {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            });
        }
        let Some((user, password)) = tried else {
            warn!(%remote, path, user = "", "http access denied: no credentials (HTTP Basic required)");
            return Err(Refusal::Unauthenticated);
        };
        if self.users.verify(&user, password.as_bytes()) {
            lock(&self.limiter).succeeded(ip, &user);
            return Ok(Some(AuthUser(user)));
        }
        let wait = lock(&self.limiter).failed(ip, &user, now);
        // `?`: the name a client sent, quoted and escaped (a newline in it must not forge a log line)
        warn!(%remote, path, user = ?user, wait_ms = wait.as_millis() as u64, "http access denied by the password file");
        Err(Refusal::Unauthenticated)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or wrong ones: `401` asking for Basic.
    Unauthenticated,
    /// Too many failures from this address: `429`, retry after this many
    /// seconds.
    Slowed {
        /// The wait, rounded up to whole seconds.
        retry_after_secs: u64,
    },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthenticated => {
                let body =
                    WireError::with_detail(ErrorKind::Access, "HTTP Basic credentials of a -u user required");
                let mut r = (StatusCode::UNAUTHORIZED, axum::Json(body.to_json())).into_response();
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
                r
            }
            Refusal::Slowed { retry_after_secs } => {
                let body = WireError::with_detail(
                    ErrorKind::Access,
                    format!("too many failed logins from this address; retry in {retry_after_secs}s"),
                );
                let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body.to_json())).into_response();
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                r
            }
        }
    }
}

/// The axum middleware the shell puts in front of every route when the
/// process has a users file.
pub(crate) async fn middleware(
    State(guard): State<Arc<HttpGuard>>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    match guard.decide(remote.0, req.uri().path(), req.headers(), Instant::now()) {
        Ok(Some(user)) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// The remote address of an HTTP connection (axum's connect info for the
/// shell's capped listener).
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// `Authorization: Basic base64(user:password)` → (user, password); `None`
/// when absent, too long, or not that form.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?;
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return None;
    }
    let text = value.to_str().ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn lock(l: &Mutex<FailureLimiter>) -> std::sync::MutexGuard<'_, FailureLimiter> {
    // each call is one short table update: a panicking holder aborts the
    // process (fail_fast) before anyone could see a half-updated table
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn basic(user: &str, pw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {enc}")).unwrap());
        h
    }

    fn guard(access: Access) -> HttpGuard {
        let users =
            Arc::new(PasswordFile::parse(b"alice:secret\nbob:210d53992dff432ec1b1a9698af9da16").unwrap());
        HttpGuard::new(users, Arc::new(Mutex::new(FailureLimiter::default())), &access)
    }

    const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 40000);
    const B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)), 40000);

    #[test]
    fn basic_credentials_parse() {
        assert_eq!(basic_credentials(&basic("u", "p:w")), Some(("u".into(), "p:w".into())));
        let mut h = HeaderMap::new();
        assert_eq!(basic_credentials(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(basic_credentials(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("basic dTpw")); // u:p
        assert_eq!(basic_credentials(&h), Some(("u".into(), "p".into())));
        let long = format!("Basic {}", "A".repeat(MAX_AUTHORIZATION_BYTES));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&long).unwrap());
        assert_eq!(basic_credentials(&h), None);
    }

    #[test]
    fn every_path_needs_a_user_unless_opened() {
        let now = Instant::now();
        let g = guard(Access::default());
        for path in ["/api/identity", "/healthz", "/metrics", "/ws", "/", "/query"] {
            assert_eq!(g.decide(A, path, &HeaderMap::new(), now), Err(Refusal::Unauthenticated), "{path}");
            assert_eq!(g.decide(A, path, &basic("alice", "secret"), now), Ok(Some(AuthUser("alice".into()))));
        }
        assert_eq!(
            g.decide(A, "/x", &basic("bob", "this is my password"), now),
            Ok(Some(AuthUser("bob".into())))
        );
        assert_eq!(g.decide(A, "/x", &basic("alice", "wrong"), now), Err(Refusal::Unauthenticated));
        assert_eq!(g.decide(A, "/x", &basic("nobody", "secret"), now), Err(Refusal::Unauthenticated));

        let open = guard(Access { open_health: true, open_metrics: true, permissions: None });
        assert_eq!(open.decide(A, "/healthz", &HeaderMap::new(), now), Ok(None));
        assert_eq!(open.decide(A, "/metrics", &HeaderMap::new(), now), Ok(None));
        assert_eq!(open.decide(A, "/api/identity", &HeaderMap::new(), now), Err(Refusal::Unauthenticated));
        let health_only = guard(Access { open_health: true, ..Access::default() });
        assert_eq!(health_only.decide(A, "/metrics", &HeaderMap::new(), now), Err(Refusal::Unauthenticated));
    }

    #[test]
    fn repeated_failures_from_one_address_are_slowed() {
        let t0 = Instant::now();
        let g = guard(Access::default());
        // asking without credentials (a browser's first request) is not a failure
        for _ in 0..20 {
            assert_eq!(g.decide(A, "/", &HeaderMap::new(), t0), Err(Refusal::Unauthenticated));
        }
        for _ in 0..=qmesh_ipc::limiter::DEFAULT_FREE_FAILURES {
            assert_eq!(g.decide(A, "/", &basic("alice", "guess"), t0), Err(Refusal::Unauthenticated));
        }
        // now even the right password waits: it is not checked
        assert_eq!(
            g.decide(A, "/", &basic("alice", "secret"), t0),
            Err(Refusal::Slowed { retry_after_secs: 1 })
        );
        assert_eq!(g.decide(B, "/", &basic("alice", "secret"), t0), Ok(Some(AuthUser("alice".into()))));
        // after the wait, the right password gets in and clears the count
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(g.decide(A, "/", &basic("alice", "secret"), t1), Ok(Some(AuthUser("alice".into()))));
        assert_eq!(g.decide(A, "/", &basic("alice", "guess"), t1), Err(Refusal::Unauthenticated));
        assert_eq!(g.decide(A, "/", &basic("alice", "secret"), t1), Ok(Some(AuthUser("alice".into()))));
    }
}
