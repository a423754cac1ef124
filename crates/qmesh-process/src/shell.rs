//! The process shell: the one way a qmesh server binds its ports, says where
//! it listens, serves kdb+ IPC and HTTP, and stops.
//!
//! See the crate docs for an example.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use qmesh_ipc::limiter::FailureLimiter;
use qmesh_ipc::tls::{ServerTls, TlsFiles, TlsMode};
use qmesh_ipc::{Handler, PasswordFile, Server, ServerConfig, ServerHandle};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::access::{Access, HttpGuard};
use crate::http::{Base, DEFAULT_MAX_HTTP_CONNECTIONS};
use crate::permissions::Permissions;
use crate::{Health, Identity, Metrics, Shutdown};

/// Why a process could not bind or serve.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The `-u` password file could not be read.
    #[error("-u {path}: {source}")]
    Users { path: String, source: qmesh_ipc::auth::AuthError },
    /// The kdb+ IPC side failed (bind, accept); a port that cannot be
    /// bound is `cannot listen on ADDR (kdb+ IPC): reason`.
    #[error("{0}")]
    Ipc(#[from] qmesh_ipc::IpcError),
    /// The permissions file could not be read or parsed.
    #[error("--permissions: {0}")]
    Permissions(#[from] crate::permissions::PermissionsError),
    /// TLS could not be set up (`--tls`, `--tls-cert`, `--tls-key`): a
    /// missing or bad file, named.
    #[error("tls: {0}")]
    Tls(#[from] qmesh_ipc::TlsError),
    /// SIGHUP (the TLS certificate reload) could not be listened for.
    #[error("tls: cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
    /// The HTTP port could not be bound.
    #[error("cannot listen on {addr} (HTTP): {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
}

/// How a server process listens: what every server kind takes from its
/// flags (`-p`, `--bind`, `--http`, `-u`, `--max-message-bytes`,
/// `--max-http-connections`, `--advertise`, `--name`, `--tls`,
/// `--tls-cert`, `--tls-key`).
#[derive(Debug, Clone)]
pub struct ShellOptions {
    /// The name it registers under (`--name`).
    pub name: String,
    /// Its kind: the subcommand (`gateway`, `lb`, `service`, `discovery`…);
    /// the first word of its listening lines.
    pub kind: String,
    /// The kdb+ IPC listener: its address (`-p`, `--bind`; port 0 picks a
    /// free one), `max_message_bytes` (`--max-message-bytes`), connection
    /// and queue bounds, and [`ServerConfig::answer_client_probes`].
    pub ipc: ServerConfig,
    /// The HTTP listening address (`--http`), if any.
    pub http: Option<SocketAddr>,
    /// Most HTTP connections open at once (`--max-http-connections`).
    pub max_http_connections: usize,
    /// The `-u` password file (`user:password` lines, as q's `-u`); loaded
    /// by [`Shell::bind`], the one place any server kind loads it.
    pub users: Option<PathBuf>,
    /// The host other processes reach this one at (`--advertise`); see
    /// [`Identity::bound`].
    pub advertise_host: Option<String>,
    /// What the HTTP side leaves open with `-u` (`--open-health`,
    /// `--open-metrics`) and the permissions file (`--permissions`); see
    /// [`crate::access`].
    pub access: Access,
    /// TLS on both ports (`--tls off|on|only`, `--tls-cert`, `--tls-key`;
    /// q's `-E`): loaded by [`Shell::bind`], which sets
    /// [`ServerConfig::tls`] of `ipc` from it (so both ports follow one
    /// setting), and reloaded on SIGHUP while the shell lives; see
    /// [`qmesh_ipc::tls`].
    pub tls: TlsFiles,
}

impl ShellOptions {
    /// A `kind` process called `name` on a free loopback port, no HTTP, with
    /// every default.
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> ShellOptions {
        ShellOptions {
            name: name.into(),
            kind: kind.into(),
            ipc: ServerConfig::loopback(),
            http: None,
            max_http_connections: DEFAULT_MAX_HTTP_CONNECTIONS,
            users: None,
            advertise_host: None,
            access: Access::default(),
            tls: TlsFiles::default(),
        }
    }
}

/// A bound server process: its ports are open (so the listening lines can
/// be printed and a supervisor can connect), nothing is served yet.
#[derive(Debug)]
pub struct Shell {
    identity: Identity,
    server: Server,
    http: Option<TcpListener>,
    max_http_connections: usize,
    metrics: Metrics,
    health: Health,
    guard: Option<Arc<HttpGuard>>,
    permissions: Option<Permissions>,
    tls: Option<Arc<ServerTls>>,
    /// The SIGHUP task — the reload of `tls`, or without TLS one that logs and ignores the signal — ended with the shell.
    _reload: Option<AbortOnDrop>,
}

/// A task aborted when this is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

/// Without TLS there is nothing to reload on SIGHUP, but the signal's
/// default action (terminate) must not apply: an operator who sends
/// `kill -HUP` across an estate after rotating certificates would kill
/// every process that runs without TLS. The signal is logged and ignored.
fn ignore_sighup() -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            info!("SIGHUP: nothing to reload (no TLS); ignored");
        }
    }))
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// File descriptors one kdb+ IPC connection with TLS holds: its socket and
/// the two ends of the socket pair its relay writes through
/// ([`qmesh_ipc::tls::relay`]). Used to fit the IPC cap under `ulimit -n`
/// when TLS is on.
pub const FDS_PER_TLS_CONNECTION: usize = 3;

impl Shell {
    /// Loads `-u`, binds the IPC port and then the HTTP port, and fills in
    /// the [`Identity`] with the ports bound.
    ///
    /// With `-u`, both ports check the same users: the IPC handshake and
    /// every HTTP route (HTTP Basic; `/healthz` and `/metrics` only unless
    /// [`Access`] opens them), with one [`FailureLimiter`] slowing down
    /// repeated failures from an address on either door (see
    /// [`crate::access`]).
    ///
    /// With TLS ([`ShellOptions::tls`]), both ports take it in the same
    /// mode, with one certificate reloaded on SIGHUP; a TLS-only process
    /// advertises `:tcps://host:port`, so the processes that learn its
    /// address (a gateway, from the load balancer) connect with TLS.
    pub async fn bind(opts: ShellOptions) -> Result<Shell, ShellError> {
        let ShellOptions {
            name,
            kind,
            mut ipc,
            http,
            max_http_connections,
            users,
            advertise_host,
            access,
            tls,
        } = opts;
        let tls = tls.load()?;
        let reload = match &tls {
            Some(t) => {
                info!(%kind, %name, mode = %t.mode(), "TLS on the IPC and HTTP ports; SIGHUP reloads the certificate");
                Some(AbortOnDrop(t.reload_on_sighup().map_err(ShellError::Signal)?))
            }
            None => Some(AbortOnDrop(ignore_sighup().map_err(ShellError::Signal)?)),
        };
        ipc.tls = tls.clone();
        let permissions = access.permissions.as_ref().map(Permissions::load).transpose()?;
        if permissions.is_some() && users.is_none() {
            warn!(%kind, %name, "--permissions without -u: user names are whatever clients say");
        }
        let mut guard = None;
        if let Some(path) = &users {
            let file = Arc::new(
                PasswordFile::load(path)
                    .map_err(|source| ShellError::Users { path: path.display().to_string(), source })?,
            );
            let limiter = Arc::new(Mutex::new(FailureLimiter::default()));
            ipc.authenticator = Some(file.clone());
            ipc.failure_limiter = Some(limiter.clone());
            guard = Some(Arc::new(HttpGuard::new(file, limiter, &access)));
        }
        let (max_ipc, max_http) =
            fit_caps(ipc.max_connections, max_http_connections, tls.is_some(), raise_fd_limit());
        if (max_ipc, max_http) != (ipc.max_connections, max_http_connections) {
            tracing::info!(
                %kind, %name,
                ipc = max_ipc, http = max_http,
                asked_ipc = ipc.max_connections, asked_http = max_http_connections,
                "connection caps lowered to fit the file-descriptor limit (ulimit -n)"
            );
        }
        ipc.max_connections = max_ipc;
        let max_http_connections = max_http;
        let server = Server::bind(ipc).await?;
        let http = match http {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.map_err(|source| ShellError::Http { addr, source })?)
            }
            None => None,
        };
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        let mut identity =
            Identity::new(name, kind).bound(server.local_addr(), http_addr, advertise_host.as_deref());
        if tls.as_ref().is_some_and(|t| t.mode() == TlsMode::Only) {
            // `:host:port` → `:tcps://host:port`: plain clients are refused here
            identity.advertised =
                identity.advertised.map(|a| format!(":tcps://{}", a.trim_start_matches(':')));
        }
        Ok(Shell {
            identity,
            server,
            http,
            max_http_connections,
            metrics: Metrics::new(),
            health: Health::new(),
            guard,
            permissions,
            tls,
            _reload: reload,
        })
    }

    /// Who this process is, with its bound ports.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The kdb+ IPC address it listens on.
    pub fn ipc_addr(&self) -> Option<SocketAddr> {
        self.server.local_addr()
    }

    /// The HTTP address it listens on, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The lines a process prints on stdout once bound, in order:
    /// `<kind> listening ipc <addr>` then `<kind> listening http <addr>`
    /// (scripts, supervisors and tests read them to learn ports picked with
    /// `-p 0`). The binary prints them; libraries never print.
    pub fn listening_lines(&self) -> Vec<String> {
        let kind = &self.identity.kind;
        [("ipc", self.ipc_addr()), ("http", self.http_addr())]
            .into_iter()
            .filter_map(|(proto, addr)| addr.map(|a| format!("{kind} listening {proto} {a}")))
            .collect()
    }

    /// The process's metric registry: register the component's metrics here
    /// before [`run`](Shell::run); `/metrics` serves it.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The readiness `/healthz` reports. Not ready until the component says
    /// so (`health().set_ready(true)`, e.g. once registered upstream).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The permissions file (`--permissions`), if any: components check
    /// their actions with [`Permissions::check`] (see
    /// [`crate::permissions`]).
    pub fn permissions(&self) -> Option<Permissions> {
        self.permissions.clone()
    }

    /// The IPC server's connections, to push to any of them while it runs.
    pub fn connections(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until `shutdown` triggers, then stops in order:
    ///
    /// 1. `drain` runs (the component refuses new work and finishes or fails
    ///    what is in flight) while both listeners stay open, so clients in
    ///    flight get their answers;
    /// 2. the IPC server stops accepting and lets each connection flush
    ///    what it owes (bounded by [`ServerConfig::drain_timeout`]);
    /// 3. the HTTP side, which stopped accepting at the trigger, finishes
    ///    the requests in progress;
    /// 4. `run` returns; the component then stops its own tasks.
    ///
    /// `handler` answers kdb+ IPC (the client probes are answered before
    /// it, see [`ServerConfig::answer_client_probes`]); `api` is the
    /// component's HTTP routes, served with `/healthz`, `/metrics` and
    /// `/api/identity`.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        api: axum::Router,
        shutdown: Shutdown,
        drain: impl Future<Output = ()> + Send,
    ) -> Result<(), ShellError> {
        let Shell {
            identity,
            server,
            http,
            max_http_connections,
            metrics,
            health,
            guard,
            permissions: _,
            tls,
            _reload,
        } = self;
        let kind = identity.kind.clone();
        let name = identity.name.clone();
        let http_task = http.map(|listener| {
            let base = Base { health: health.clone(), metrics, identity, guard };
            tokio::spawn(crate::http::serve(listener, api, base, max_http_connections, tls, shutdown.clone()))
        });
        let stop = async {
            shutdown.triggered().await;
            info!(%kind, %name, "shutting down");
            health.set_ready(false);
            drain.await;
        };
        let served = server.run(handler, stop).await;
        if let Some(t) = http_task {
            match t.await {
                Ok(Err(e)) => warn!(error = %e, "http server ended with an error"),
                Err(e) => warn!(error = %e, "http server task failed"),
                Ok(Ok(())) => {}
            }
        }
        info!(%kind, %name, "stopped");
        served.map_err(ShellError::from)
    }
}

#[cfg(test)]
mod tests {
    use qmesh_codec::{K, Message};
    use qmesh_ipc::{Address, ClientOptions, Connection, Peer, Responder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    struct Answer;
    impl Handler for Answer {
        async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
            let _ = responder.reply(K::long(42));
        }
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn binds_serves_both_sides_and_stops_in_order() {
        let mut opts = ShellOptions::new("test", "t1");
        opts.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let shell = Shell::bind(opts).await.unwrap();
        let ipc = shell.ipc_addr().unwrap();
        let http = shell.http_addr().unwrap();
        assert_eq!(
            shell.listening_lines(),
            vec![format!("test listening ipc {ipc}"), format!("test listening http {http}")]
        );
        assert_eq!(shell.identity().ipc_port, Some(ipc.port()));
        assert_eq!(shell.identity().advertised, Some(format!(":127.0.0.1:{}", ipc.port())));
        shell.health().set_ready(true);
        let shutdown = Shutdown::new();
        let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(shell.run(Answer, axum::Router::new(), shutdown.clone(), async move {
            let _ = drained_tx.send(());
        }));

        let conn = Connection::connect(&Address::parse(&ipc.to_string()).unwrap(), ClientOptions::default())
            .await
            .unwrap();
        assert_eq!(conn.call(&K::string("anything")).await.unwrap().decode().unwrap(), K::long(42));
        // q's `h""` is answered by the server, not the handler
        assert_eq!(conn.call(&K::string("")).await.unwrap().decode().unwrap(), K::GenericNull);
        let id = http_get(http, "/api/identity").await;
        assert!(id.contains(r#""name":"t1","kind":"test""#), "{id}");
        assert!(http_get(http, "/healthz").await.starts_with("HTTP/1.1 200"));

        shutdown.trigger();
        drained.await.unwrap();
        run.await.unwrap().unwrap();
        assert!(TcpStream::connect(ipc).await.is_err(), "the IPC port is closed after run");
    }

    #[tokio::test]
    async fn a_bad_password_file_is_a_typed_error() {
        let mut opts = ShellOptions::new("test", "t");
        opts.users = Some(PathBuf::from("/nonexistent/qmesh-users.txt"));
        let e = Shell::bind(opts).await.unwrap_err();
        assert!(matches!(e, ShellError::Users { .. }), "{e}");
    }
}

/// File descriptors kept for everything but accepted connections: the
/// listeners, log and store files, outbound links (to a load balancer,
/// instances, discovery), the stream's segment files. A cap on connections
/// past `ulimit -n` minus this would let idle sockets take the descriptors
/// those need and fail `accept` and `open` for everyone.
pub const FD_RESERVE: usize = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what nats-server and
/// redis do at start) and returns the soft limit now in force, or `None`
/// when it cannot be read (treated as no limit).
fn raise_fd_limit() -> Option<usize> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    usize::try_from(lim.rlim_cur).ok()
}

/// The IPC and HTTP connection caps that fit in `fd_limit` descriptors with
/// [`FD_RESERVE`] kept back: unchanged when they fit; otherwise HTTP gets at
/// most a quarter of what is left and IPC (q's handles, heartbeats) the rest.
fn fit_to_fds(ipc: usize, http: usize, fd_limit: Option<usize>) -> (usize, usize) {
    let Some(limit) = fd_limit else { return (ipc, http) };
    let room = limit.saturating_sub(FD_RESERVE).max(2);
    if ipc.saturating_add(http) <= room {
        return (ipc, http);
    }
    let http = http.min((room / 4).max(1));
    (ipc.min(room - http).max(1), http)
}

/// [`fit_to_fds`] with an IPC connection counted as
/// [`FDS_PER_TLS_CONNECTION`] descriptors when TLS is on (its relay's
/// socket pair); the caps unchanged when they fit.
fn fit_caps(ipc: usize, http: usize, tls: bool, fd_limit: Option<usize>) -> (usize, usize) {
    let per_ipc = if tls { FDS_PER_TLS_CONNECTION } else { 1 };
    let ipc_fds = ipc.saturating_mul(per_ipc);
    let (fitted, http) = fit_to_fds(ipc_fds, http, fd_limit);
    let ipc = if fitted == ipc_fds { ipc } else { (fitted / per_ipc).max(1) };
    (ipc, http)
}

#[cfg(test)]
mod fd_tests {
    use super::{FDS_PER_TLS_CONNECTION, fit_caps, fit_to_fds};

    #[test]
    fn tls_connections_count_their_relay_descriptors() {
        assert_eq!(fit_caps(1022, 1022, true, Some(1 << 20)), (1022, 1022));
        assert_eq!(fit_caps(1022, 1022, false, Some(4096)), (1022, 1022));
        let (ipc, http) = fit_caps(1022, 1022, true, Some(4096));
        assert!(ipc * FDS_PER_TLS_CONNECTION + http <= 4096 - super::FD_RESERVE, "{ipc} {http}");
        assert!(ipc < 1022 && ipc > 0, "{ipc}");
        assert!(fit_caps(1022, 1022, true, Some(10)).0 >= 1);
    }

    #[test]
    fn connection_caps_fit_in_the_descriptor_limit() {
        assert_eq!(fit_to_fds(1022, 1022, Some(1 << 20)), (1022, 1022));
        assert_eq!(fit_to_fds(1022, 1022, None), (1022, 1022));
        // discovery's 101,024 IPC connections under ulimit -n 20,000
        let (ipc, http) = fit_to_fds(101_024, 1022, Some(20_000));
        assert!(ipc + http <= 20_000 - super::FD_RESERVE, "{ipc} {http}");
        assert_eq!(http, 1022);
        let (ipc, http) = fit_to_fds(1022, 1022, Some(1024));
        assert_eq!((ipc + http, http), (1024 - super::FD_RESERVE, (1024 - super::FD_RESERVE) / 4));
        assert!(fit_to_fds(1022, 1022, Some(10)).0 >= 1);
    }
}
