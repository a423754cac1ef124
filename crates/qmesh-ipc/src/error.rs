//! The errors of connections, calls and servers.

use qmesh_codec::{DecodeError, EncodeError};

use crate::address::AddressError;
use crate::handshake::HandshakeError;
use crate::tls::TlsError;

/// Why a connection, a call or a send failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// An operating-system error on the socket.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A server could not listen: the address (`host:port`, or the Unix
    /// socket's name), what the listener is for (`kdb+ IPC`, `HTTP`) and
    /// the system's reason (a port taken: `Address already in use`).
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        /// Where it tried to listen.
        addr: String,
        /// What the listener is for.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The server closed the connection during the handshake without a
    /// reply byte: wrong credentials (q reports `'access`), or the server is
    /// at its connection limit.
    #[error("access")]
    Access,
    /// Connecting (TCP connect and handshake) took longer than allowed.
    #[error("timeout: connecting to {0}")]
    ConnectTimeout(String),
    /// The peer answered a sync request with a q error (`'text`).
    #[error("'{0}")]
    Remote(String),
    /// The connection is closed (or closing): nothing more can be sent, and
    /// a call in flight will get no answer.
    #[error("connection closed")]
    Closed,
    /// The peer does not read fast enough: its outbound queue passed its
    /// bound and the connection was dropped.
    #[error("slow peer: outbound queue above {limit} bytes/frames, connection dropped")]
    SlowPeer {
        /// The bound that was passed.
        limit: usize,
    },
    /// Too many requests awaiting an answer on one connection.
    #[error("limit: more than {limit} requests pending on one connection")]
    TooManyPending {
        /// The bound in force.
        limit: usize,
    },
    /// A message could not be encoded for this peer.
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    /// A message could not be decoded.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// A bad address.
    #[error("address: {0}")]
    Address(#[from] AddressError),
    /// A handshake failure other than a refusal.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer broke the protocol (for example a response nobody asked for).
    #[error("protocol: {0}")]
    Protocol(String),
    /// TLS to a `:tcps://` address failed: no client TLS installed, or the
    /// handshake failed (a certificate not accepted, and why).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A feature this platform lacks (Unix sockets off Unix).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

impl IpcError {
    /// Whether the connection is gone (the caller may reconnect).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, IpcError::Closed | IpcError::Io(_) | IpcError::SlowPeer { .. })
    }

    /// The text of a q error response (`Remote`), if this is one.
    pub fn remote_text(&self) -> Option<&str> {
        match self {
            IpcError::Remote(t) => Some(t),
            _ => None,
        }
    }
}
