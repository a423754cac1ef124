//! TLS (rustls, the `ring` provider) for kdb+ IPC ports and the process
//! shell's HTTP port, and for outbound connections to `:tcps://` addresses.
//!
//! # Listening: q's `-E`
//!
//! A server port takes TLS in one of three modes ([`TlsMode`]), as q's `-E`
//! flag sets them:
//!
//! | [`TlsMode`] | q | a plain client | a TLS client |
//! |---|---|---|---|
//! | `off` (default) | `-E 0` | served | not understood (its hello is not a kdb+ hello) |
//! | `on` | `-E 1` | served | served |
//! | `only` | `-E 2` | refused, with a log line naming its address | served |
//!
//! Both kinds of client share one port: the first byte a client sends tells
//! them apart ([`sniff`]). A TLS client opens with a record of type
//! handshake, byte `0x16`; a kdb+ client opens with its user name (printable
//! text) or, with no user, its capability byte (0–6); an HTTP client opens
//! with a method name. None of these can start with `0x16`.
//!
//! The certificate chain and key are PEM files ([`ServerTls::load`]);
//! [`ServerTls::reload`] (on SIGHUP, [`ServerTls::reload_on_sighup`]) reads
//! them again: connections accepted afterwards get the new certificate,
//! open ones keep theirs, and a file that does not load leaves the previous
//! certificate in force (the reason is logged).
//!
//! TLS ends where a connection is accepted ([`ServerTls::accept`]): the
//! server's accept path hands protocol code a plain byte stream, so nothing
//! above it knows whether a client used TLS. For kdb+ IPC the decrypted
//! stream is carried to the connection over a local socket pair by a relay
//! task ([`relay`]), so the connection's non-blocking vectored writes work
//! as on any socket; this costs one more copy and two more file descriptors
//! per TLS connection (the process shell counts them when it fits its
//! connection caps under `ulimit -n`).
//!
//! # Connecting: `:tcps://host:port`
//!
//! An [`Address`](crate::Address) written `:tcps://host:port` (q's form for
//! a TLS `hopen`) is connected with TLS by [`crate::Connection::connect`]
//! and everything built on it (sessions, the gateway's links, discovery
//! heartbeats, publishers). The server's certificate is checked against the
//! CA certificates of one file ([`ClientTls::with_ca_file`], `--tls-ca`)
//! and the host name in the address; the system's roots are not used.
//! [`ClientTls::insecure`] (`--tls-insecure`) skips the check, for tests
//! only. The process's client TLS is installed once ([`install_client`]);
//! a `:tcps://` address without one is [`TlsError::NoClientConfig`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::{info, warn};

/// Time a client has, from its TCP connect, to send its first byte and
/// complete the TLS handshake, in seconds. As the kdb+ handshake's own
/// bound ([`crate::server::DEFAULT_HANDSHAKE_TIMEOUT`]): a connection that
/// stalls holds a connection slot only this long. Generous for any real
/// network (a handshake is two round trips).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest PEM file read (certificate chain, key, CA file), in bytes:
/// checked from the file's metadata before reading. A chain of a few
/// certificates is a few KiB; a CA bundle of every public root is ~200 KiB.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// Buffer of each direction of a [`relay`], in bytes: how much decrypted
/// (or to-be-encrypted) data one read moves. 64 KiB is four full TLS
/// records, and what one socket read of a busy connection returns.
pub const RELAY_BUFFER_BYTES: usize = 64 * 1024;

/// How long a relayed TLS connection stays open once its kdb+ side has
/// closed, in seconds, waiting for the remote end to close too (its
/// `close_notify` has been sent). A peer that never closes holds the socket
/// no longer than this.
pub const RELAY_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// The first byte of every TLS connection: the record type `handshake`
/// (RFC 8446 §5.1, RFC 5246 §6.2.1) of the ClientHello.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether a port takes TLS, as q's `-E` (see the module docs). Parses from
/// `off`, `on`, `only`, or q's `0`, `1`, `2`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Plain connections only (`-E 0`), the default.
    #[default]
    Off,
    /// TLS and plain connections on the same port (`-E 1`), told apart by
    /// their first byte ([`sniff`]).
    On,
    /// TLS connections only (`-E 2`): a plain client is closed at once, with
    /// a log line naming its address.
    Only,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TlsMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "0" => Ok(TlsMode::Off),
            "on" | "1" => Ok(TlsMode::On),
            "only" | "2" => Ok(TlsMode::Only),
            _ => Err(format!("TLS mode {s:?}: off, on or only (q's -E 0, 1, 2)")),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Off => "off",
            TlsMode::On => "on",
            TlsMode::Only => "only",
        })
    }
}

/// What a connection's first byte says it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello ([`TLS_HANDSHAKE_RECORD`]).
    Tls,
    /// Anything else: a kdb+ hello (user name or capability byte), HTTP.
    Plain,
}

/// Tells a TLS client from a plain one by the first byte it sent (see the
/// module docs for why no kdb+ or HTTP client starts with `0x16`).
pub fn sniff(first: u8) -> Sniffed {
    if first == TLS_HANDSHAKE_RECORD { Sniffed::Tls } else { Sniffed::Plain }
}

/// Why TLS could not be set up, or a TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `--tls on|only` without both `--tls-cert` and `--tls-key`.
    #[error("TLS mode {mode} needs a certificate chain and a key (--tls-cert FILE --tls-key FILE)")]
    MissingFiles {
        /// The mode asked for.
        mode: TlsMode,
    },
    /// A PEM file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// `certificate chain`, `key` or `CA file`.
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// A PEM file larger than [`MAX_PEM_FILE_BYTES`].
    #[error("{what} {path} is {len} bytes, above the limit of {MAX_PEM_FILE_BYTES}")]
    TooLarge {
        /// `certificate chain`, `key` or `CA file`.
        what: &'static str,
        /// The file.
        path: String,
        /// Its size, in bytes.
        len: u64,
    },
    /// A file that is not valid PEM.
    #[error("{what} {path} is not valid PEM: {reason}")]
    Pem {
        /// `certificate chain`, `key` or `CA file`.
        what: &'static str,
        /// The file.
        path: String,
        /// The parser's reason.
        reason: String,
    },
    /// A certificate file (chain or CA) without a `CERTIFICATE` block.
    #[error("{what} {path} holds no CERTIFICATE")]
    NoCertificate {
        /// `certificate chain` or `CA file`.
        what: &'static str,
        /// The file.
        path: String,
    },
    /// A key file without a private key block (PKCS#8, PKCS#1 or SEC1).
    #[error("key {path} holds no PRIVATE KEY")]
    NoKey {
        /// The file.
        path: String,
    },
    /// The key cannot be used (an unsupported algorithm), does not match
    /// the chain's first certificate, or that certificate does not parse.
    #[error("certificate {cert} with key {key}: {source}")]
    Key {
        /// The certificate chain file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// A CA certificate rustls does not accept as a trust anchor.
    #[error("CA file {path}: {source}")]
    Ca {
        /// The file.
        path: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// rustls refused the configuration (no protocol version in common
    /// with the provider).
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// A `:tcps://` address while this process has no client TLS
    /// ([`install_client`]: `--tls-ca FILE`, or `--tls-insecure`).
    #[error("{addr} is a TLS address (tcps://) but no CA file was given (--tls-ca FILE)")]
    NoClientConfig {
        /// The address.
        addr: String,
    },
    /// The host of a `:tcps://` address is neither a DNS name nor an IP
    /// address, so no certificate can be checked against it.
    #[error("{host:?} is not a name a certificate can be checked against")]
    ServerName {
        /// The host as written.
        host: String,
    },
    /// [`install_client`] was called twice.
    #[error("client TLS is already installed in this process")]
    AlreadyInstalled,
    /// A plain client on a port in [`TlsMode::Only`].
    #[error("plain connection on a TLS-only port")]
    PlainRefused,
    /// The client closed before sending anything.
    #[error("closed before sending a byte")]
    ClosedEarly,
    /// The TLS handshake did not complete within [`TLS_HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake timed out after {}s", TLS_HANDSHAKE_TIMEOUT.as_secs())]
    Timeout,
    /// The TLS handshake failed: a certificate the other side does not
    /// accept (an unknown issuer, a name mismatch, expired), no protocol or
    /// cipher in common, or a socket error.
    #[error("TLS handshake with {peer} failed: {reason}")]
    Handshake {
        /// The other side's address.
        peer: String,
        /// The reason (rustls's, inside an I/O error); shown in the
        /// message, so not repeated as a source.
        reason: io::Error,
    },
    /// Unix socket pairs (the relay) do not exist on this platform.
    #[error("TLS relay: {0}")]
    Relay(io::Error),
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let name = || path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read { what, path: name(), source })?;
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge { what, path: name(), len: meta.len() });
    }
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: name(), source })
}

fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, path: path.display().to_string(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path: path.display().to_string() });
    }
    Ok(certs)
}

/// Reads a certificate chain (end-entity first) and its key, and checks
/// they belong together.
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert, "certificate chain")?;
    let pem = read_pem(key, "key")?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: key.display().to_string() },
        e => TlsError::Pem { what: "key", path: key.display().to_string(), reason: e.to_string() },
    })?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|source| TlsError::Key {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        source,
    })
}

/// The certificate in force: what every new handshake is given.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl CurrentCert {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
    fn set(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The settings of a listening port's TLS, as flags give them: the mode
/// (`--tls`) and the PEM files (`--tls-cert`, `--tls-key`). Loaded into a
/// [`ServerTls`] by [`TlsFiles::load`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// q's `-E`: off (default), on, only.
    pub mode: TlsMode,
    /// The certificate chain, PEM, end-entity certificate first.
    pub cert: Option<PathBuf>,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// `None` for [`TlsMode::Off`] (files given anyway are ignored, with a
    /// warning); otherwise the loaded [`ServerTls`]. Errors: the files are
    /// missing ([`TlsError::MissingFiles`]) or do not load.
    pub fn load(&self) -> Result<Option<Arc<ServerTls>>, TlsError> {
        match (self.mode, &self.cert, &self.key) {
            (TlsMode::Off, cert, key) => {
                if cert.is_some() || key.is_some() {
                    warn!("--tls-cert/--tls-key given but --tls is off: the ports stay plain");
                }
                Ok(None)
            }
            (mode, Some(cert), Some(key)) => Ok(Some(Arc::new(ServerTls::load(mode, cert, key)?))),
            (mode, _, _) => Err(TlsError::MissingFiles { mode }),
        }
    }
}

/// A listening port's TLS: the mode, the certificate in force (reloadable)
/// and the acceptor that uses it. One is shared by a process's IPC and HTTP
/// ports.
pub struct ServerTls {
    mode: TlsMode,
    cert_path: PathBuf,
    key_path: PathBuf,
    current: Arc<CurrentCert>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// A connection accepted on a TLS-enabled port: plain (its first byte was
/// not a TLS record, in [`TlsMode::On`]) or with TLS ended here. Reads and
/// writes the plain bytes either way.
#[derive(Debug)]
pub enum Inbound {
    /// A plain client.
    Plain(TcpStream),
    /// A TLS client, its handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Inbound {
    /// Whether the client used TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Inbound::Tls(_))
    }
}

impl ServerTls {
    /// Reads the certificate chain `cert` (PEM, end-entity first) and the
    /// private key `key` (PEM) for a port in `mode` (`On` or `Only`; `Off`
    /// is treated as `On` — callers use [`TlsFiles::load`]). Errors name the
    /// file and what is wrong with it.
    pub fn load(mode: TlsMode, cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(load_certified_key(cert, key)?))));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        let mode = if mode == TlsMode::Off { TlsMode::On } else { mode };
        Ok(ServerTls {
            mode,
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The mode: [`TlsMode::On`] or [`TlsMode::Only`].
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Reads the certificate chain and key files again; handshakes from now
    /// on get the new certificate. On an error the certificate in force
    /// stays (and the error says which file is wrong).
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert_path, &self.key_path)?;
        self.current.set(key);
        Ok(())
    }

    /// Reloads on every SIGHUP until the returned task is aborted, logging
    /// the outcome: `TLS certificate reloaded`, or why the previous one is
    /// kept. Errors: the signal handler cannot be installed.
    #[cfg(unix)]
    pub fn reload_on_sighup(self: &Arc<Self>) -> io::Result<tokio::task::JoinHandle<()>> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let tls = self.clone();
        Ok(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => info!(cert = %tls.cert_path.display(), key = %tls.key_path.display(),
                        "SIGHUP: TLS certificate reloaded; new connections use it"),
                    Err(e) => {
                        warn!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the previous one")
                    }
                }
            }
        }))
    }

    /// Accepts a TCP connection on a port with TLS: reads (without taking)
    /// its first byte, then completes a TLS handshake or, in
    /// [`TlsMode::On`], hands the plain stream back. Within
    /// [`TLS_HANDSHAKE_TIMEOUT`]. Errors: [`TlsError::PlainRefused`] for a
    /// plain client in [`TlsMode::Only`]; [`TlsError::ClosedEarly`],
    /// [`TlsError::Timeout`], [`TlsError::Handshake`].
    pub async fn accept(&self, tcp: TcpStream) -> Result<Inbound, TlsError> {
        let peer = tcp.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let handshake = async {
            let mut first = [0u8; 1];
            match tcp.peek(&mut first).await {
                Ok(0) => return Err(TlsError::ClosedEarly),
                Ok(_) => {}
                Err(reason) => return Err(TlsError::Handshake { peer, reason }),
            }
            match (sniff(first[0]), self.mode) {
                (Sniffed::Plain, TlsMode::Only) => Err(TlsError::PlainRefused),
                (Sniffed::Plain, _) => Ok(Inbound::Plain(tcp)),
                (Sniffed::Tls, _) => match self.acceptor.accept(tcp).await {
                    Ok(s) => Ok(Inbound::Tls(Box::new(s))),
                    Err(reason) => Err(TlsError::Handshake { peer, reason }),
                },
            }
        };
        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await.unwrap_or(Err(TlsError::Timeout))
    }
}

impl AsyncRead for Inbound {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inbound::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inbound::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Inbound {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Inbound::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inbound::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Inbound::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inbound::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Inbound::Plain(s) => s.is_write_vectored(),
            Inbound::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inbound::Plain(s) => Pin::new(s).poll_flush(cx),
            Inbound::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inbound::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inbound::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A process's outbound TLS: how the server of a `:tcps://` address is
/// checked (see the module docs).
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    insecure: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("insecure", &self.insecure).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Servers must present a certificate chaining to one of the CA
    /// certificates in `path` (PEM) and valid for the address's host (a
    /// DNS name, or an IP address in the certificate's subjectAltName).
    /// Errors: the file cannot be read, holds no certificate, or one is
    /// not a usable trust anchor.
    pub fn with_ca_file(path: &Path) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certificates(path, "CA file")? {
            roots.add(cert).map_err(|source| TlsError::Ca { path: path.display().to_string(), source })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), insecure: false })
    }

    /// Accepts any server certificate (its handshake signatures are still
    /// checked, so the connection is encrypted, but to whoever answers).
    /// For tests only: logs a warning now and on every connection.
    /// Errors: [`TlsError::Config`] (rustls refuses its default versions).
    pub fn insecure() -> Result<ClientTls, TlsError> {
        warn!("--tls-insecure: server certificates of tcps:// addresses are NOT checked; for tests only");
        let provider = provider();
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth();
        Ok(ClientTls { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), insecure: true })
    }

    /// Whether server certificates go unchecked ([`ClientTls::insecure`]).
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The TLS handshake on a connected socket, checking the server's
    /// certificate against `host`. Errors: [`TlsError::ServerName`],
    /// [`TlsError::Handshake`] (a certificate not accepted names the reason,
    /// e.g. `invalid peer certificate: UnknownIssuer`).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| TlsError::ServerName { host: host.to_owned() })?;
        let peer = tcp.peer_addr().map_or_else(|_| host.to_owned(), |a: SocketAddr| a.to_string());
        if self.insecure {
            warn!(%peer, "TLS to {peer} without checking its certificate (--tls-insecure)");
        }
        self.connector.connect(name, tcp).await.map_err(|reason| TlsError::Handshake { peer, reason })
    }
}

/// `--tls-insecure`'s verifier: every certificate is taken; the handshake's
/// signatures are checked with the provider's algorithms.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

static CLIENT: OnceLock<Arc<ClientTls>> = OnceLock::new();

/// Makes `tls` the process's client TLS: every connection opened afterwards
/// to a `:tcps://` address uses it (unless
/// [`ClientOptions::tls`](crate::ClientOptions::tls) gives another). Once
/// per process (the binary calls it at start from `--tls-ca` or
/// `--tls-insecure`); a second call is [`TlsError::AlreadyInstalled`].
pub fn install_client(tls: ClientTls) -> Result<(), TlsError> {
    CLIENT.set(Arc::new(tls)).map_err(|_| TlsError::AlreadyInstalled)
}

/// The process's client TLS, if [`install_client`]ed.
pub fn installed_client() -> Option<Arc<ClientTls>> {
    CLIENT.get().cloned()
}

/// Carries a TLS stream's plain bytes to and from a local socket pair and
/// returns the other end, which protocol code reads and writes as any
/// socket (non-blocking vectored writes included). A task moves the bytes,
/// [`RELAY_BUFFER_BYTES`] at a time in each direction; when the returned
/// end is closed the TLS side is shut down (`close_notify`) and kept at
/// most [`RELAY_CLOSE_GRACE`] for the peer to close; when the peer closes,
/// the returned end reads end of file. Errors: the socket pair cannot be
/// created ([`TlsError::Relay`]).
#[cfg(unix)]
pub fn relay<S>(tls: S) -> Result<tokio::net::UnixStream, TlsError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    use tokio::io::{AsyncWriteExt, BufReader};
    let (ours, theirs) = tokio::net::UnixStream::pair().map_err(TlsError::Relay)?;
    tokio::spawn(async move {
        let (tls_read, mut tls_write) = tokio::io::split(tls);
        let (plain_read, mut plain_write) = theirs.into_split();
        let mut tls_read = BufReader::with_capacity(RELAY_BUFFER_BYTES, tls_read);
        let mut plain_read = BufReader::with_capacity(RELAY_BUFFER_BYTES, plain_read);
        // remote → connection; end of file (or a TLS error) → the connection reads end of file
        let inbound = async {
            let r = tokio::io::copy_buf(&mut tls_read, &mut plain_write).await;
            let _ = plain_write.shutdown().await;
            r
        };
        // connection → remote; its close → close_notify and FIN to the remote
        let outbound = async {
            let r = tokio::io::copy_buf(&mut plain_read, &mut tls_write).await;
            let _ = tls_write.shutdown().await;
            r
        };
        tokio::pin!(inbound, outbound);
        tokio::select! {
            r = &mut outbound => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "TLS relay: writing to the peer failed");
                }
                let _ = tokio::time::timeout(RELAY_CLOSE_GRACE, inbound).await;
            }
            r = &mut inbound => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "TLS relay: reading from the peer failed");
                }
                // the connection closes once it has read end of file
                let _ = outbound.await;
            }
        }
    });
    Ok(ours)
}

/// Unix socket pairs do not exist here: TLS is unsupported.
#[cfg(not(unix))]
pub fn relay<S>(_tls: S) -> Result<crate::stream::UnixStream, TlsError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    Err(TlsError::Relay(io::Error::new(io::ErrorKind::Unsupported, "no Unix socket pairs")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_tls_from_kdb_and_http() {
        assert_eq!(sniff(0x16), Sniffed::Tls);
        // a kdb+ hello: a user name, or the capability byte when there is none
        for b in [b'a', b'Z', b'_', b':', 0, 1, 3, 6] {
            assert_eq!(sniff(b), Sniffed::Plain, "{b}");
        }
        // HTTP methods
        for m in ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"] {
            assert_eq!(sniff(m.as_bytes()[0]), Sniffed::Plain, "{m}");
        }
    }

    #[test]
    fn modes_parse_by_name_and_by_q_number() {
        for (text, mode) in [
            ("off", TlsMode::Off),
            ("0", TlsMode::Off),
            ("on", TlsMode::On),
            ("1", TlsMode::On),
            ("only", TlsMode::Only),
            ("2", TlsMode::Only),
            (" ONLY ", TlsMode::Only),
        ] {
            assert_eq!(text.parse::<TlsMode>(), Ok(mode), "{text}");
        }
        assert!("yes".parse::<TlsMode>().is_err());
        assert!("3".parse::<TlsMode>().is_err());
        for m in [TlsMode::Off, TlsMode::On, TlsMode::Only] {
            assert_eq!(m.to_string().parse::<TlsMode>(), Ok(m));
        }
        assert_eq!(TlsMode::default(), TlsMode::Off);
    }

    #[test]
    fn files_needed_unless_off() {
        assert!(TlsFiles::default().load().unwrap().is_none());
        let only_cert = TlsFiles { mode: TlsMode::Only, cert: Some("c.pem".into()), key: None };
        assert!(matches!(only_cert.load(), Err(TlsError::MissingFiles { mode: TlsMode::Only })));
        let missing = TlsFiles {
            mode: TlsMode::On,
            cert: Some("/nonexistent/qmesh-c.pem".into()),
            key: Some("/nonexistent/qmesh-k.pem".into()),
        };
        let e = missing.load().unwrap_err();
        assert!(matches!(e, TlsError::Read { what: "certificate chain", .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/qmesh-c.pem"), "{e}");
    }

    fn der(tls: &ServerTls) -> Vec<u8> {
        tls.current.get().cert[0].to_vec()
    }

    #[test]
    fn reload_takes_a_new_certificate_and_keeps_the_old_one_when_the_new_files_are_bad() {
        let dir = std::env::temp_dir().join(format!("qmesh-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = qmesh_testkit::tls::make_ca(&dir, "ca");
        let a = qmesh_testkit::tls::make_server_cert(&dir, &ca, "a");
        let b = qmesh_testkit::tls::make_server_cert(&dir, &ca, "b");
        let (cert, key) = (dir.join("live.pem"), dir.join("live.key"));
        std::fs::copy(&a.cert, &cert).unwrap();
        std::fs::copy(&a.key, &key).unwrap();
        let files = TlsFiles { mode: TlsMode::Only, cert: Some(cert.clone()), key: Some(key.clone()) };
        let tls = files.load().unwrap().unwrap();
        assert_eq!(tls.mode(), TlsMode::Only);
        let first = der(&tls);

        // a new pair: taken
        std::fs::copy(&b.cert, &cert).unwrap();
        std::fs::copy(&b.key, &key).unwrap();
        tls.reload().unwrap();
        let second = der(&tls);
        assert_ne!(first, second);

        // a certificate whose key is another's: refused, the previous pair stays
        std::fs::copy(&a.cert, &cert).unwrap();
        let e = tls.reload().unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
        assert_eq!(der(&tls), second);
        // a file that is not PEM: refused, named
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").unwrap();
        let e = tls.reload().unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }) && e.to_string().contains("live.pem"), "{e}");
        assert_eq!(der(&tls), second);
        // a key file with no key
        std::fs::copy(&b.cert, &cert).unwrap();
        std::fs::write(&key, "").unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::NoKey { .. })));
        assert_eq!(der(&tls), second);
        // a CA file loads
        assert!(!ClientTls::with_ca_file(&ca.cert).unwrap().is_insecure());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_pem_files_are_named() {
        let dir = std::env::temp_dir().join(format!("qmesh-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = ServerTls::load(TlsMode::On, &junk, &junk).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = ClientTls::with_ca_file(&junk).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { what: "CA file", .. }), "{e}");
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'x'; MAX_PEM_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(ClientTls::with_ca_file(&big), Err(TlsError::TooLarge { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
