//! Identifiers and the error catalogue shared by the load balancer and the
//! gateway cores.
//!
//! Every identifier is its own type so that a sequence number can never be
//! used where a lease or a connection is expected — the whitepaper's
//! int/long confusion (`sq:` declared `int`, `SEQ` a long) is impossible here.

use qmesh_process::{ErrorKind, WireError};
pub use qmesh_whitepaper::{Address, Seq, ServiceName};

/// The load balancer's identifier of one allocation. A lease is granted with
/// `serviceAlloc` and ended exactly once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct LeaseId(pub u64);

/// A peer of the load balancer: one connection (a gateway or a service
/// instance), or the gateway living in the same process ([`PeerId::LOCAL`]).
/// Never reused within a process, unlike q's handle numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PeerId(pub u64);

impl PeerId {
    /// The in-process gateway of `qmesh gateway --embedded-lb`.
    pub const LOCAL: PeerId = PeerId(u64::MAX);
}

/// A client of the gateway (one IPC connection or one HTTP request). Never
/// reused, so a result can never reach a later client that happens to get the
/// same socket.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ClientId(pub u64);

/// One client request inside the gateway (it may have several parts when it
/// fans out).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ReqId(pub u64);

/// A hasher for the maps keyed by ids this process generates itself
/// (sequence numbers, request, client and peer ids): one multiply and a
/// shift per word instead of SipHash. Keys never come from a peer, so
/// hash flooding is not a concern.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let x = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by process-generated ids.
pub type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Why a request failed. Each variant is one word of the error catalogue
/// (see the crate docs); [`Failure::to_q_text`] gives the text a q client
/// sees after `'`.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum Failure {
    /// The request's deadline passed before a result arrived.
    #[error("timeout")]
    Timeout,
    /// The service's queue at the load balancer is at its limit.
    #[error("queue full: {0}")]
    QueueFull(ServiceName),
    /// No instance of this name has ever registered.
    #[error("unknown service: {0}")]
    UnknownService(ServiceName),
    /// The service is known but no instance is registered (or reachable) now.
    #[error("no instance: {0}")]
    NoInstance(ServiceName),
    /// The service evaluated the query and reported an error.
    #[error("service error: {service}: {text}")]
    ServiceError { service: ServiceName, text: String },
    /// The instance running the query went away before answering.
    #[error("service disconnected: {0}")]
    ServiceDisconnected(ServiceName),
    /// The gateway has no connection to a load balancer.
    #[error("lb unavailable")]
    LbUnavailable,
    /// A gateway-wide bound was hit (requests in flight, fan-out width).
    #[error("limit: {0}")]
    Limit(String),
    /// The request itself is malformed (wrong shape or types).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The permissions file grants the user no `query` on a service the
    /// request names (`qmesh_process::permissions`).
    #[error("access: {0}")]
    Access(String),
    /// The gateway is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// Something that should not happen (a result that cannot be decoded
    /// for joining…); the detail says what.
    #[error("internal: {0}")]
    Internal(String),
}

impl Failure {
    /// The leading word of the error, as in the shared catalogue.
    pub fn word(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::QueueFull(_) => "queue full",
            Failure::UnknownService(_) => "unknown service",
            Failure::NoInstance(_) => "no instance",
            Failure::ServiceError { .. } => "service error",
            Failure::ServiceDisconnected(_) => "service disconnected",
            Failure::LbUnavailable => "lb unavailable",
            Failure::Limit(_) => "limit",
            Failure::BadRequest(_) => "bad request",
            Failure::ShuttingDown => "shutting down",
            Failure::Internal(_) => "internal",
            Failure::Access(_) => "access",
        }
    }

    /// The detail after the colon, if any.
    pub fn detail(&self) -> Option<String> {
        match self {
            Failure::Timeout | Failure::LbUnavailable | Failure::ShuttingDown => None,
            Failure::QueueFull(s)
            | Failure::UnknownService(s)
            | Failure::NoInstance(s)
            | Failure::ServiceDisconnected(s) => Some(s.text()),
            Failure::ServiceError { service, text } => Some(format!("{service}: {text}")),
            Failure::Limit(d) | Failure::BadRequest(d) | Failure::Internal(d) | Failure::Access(d) => {
                Some(d.clone())
            }
        }
    }

    /// The catalog entry shared with every qmesh component.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Failure::Timeout => ErrorKind::Timeout,
            Failure::QueueFull(_) => ErrorKind::QueueFull,
            Failure::UnknownService(_) => ErrorKind::UnknownService,
            Failure::NoInstance(_) => ErrorKind::NoInstance,
            Failure::ServiceError { .. } => ErrorKind::ServiceError,
            Failure::ServiceDisconnected(_) => ErrorKind::ServiceDisconnected,
            Failure::LbUnavailable => ErrorKind::LbUnavailable,
            Failure::Limit(_) => ErrorKind::Limit,
            Failure::BadRequest(_) => ErrorKind::BadRequest,
            Failure::ShuttingDown => ErrorKind::ShuttingDown,
            Failure::Internal(_) => ErrorKind::Internal,
            Failure::Access(_) => ErrorKind::Access,
        }
    }

    /// As a [`WireError`] (for HTTP statuses and JSON).
    pub fn to_wire(&self) -> WireError {
        WireError { kind: self.kind(), detail: self.detail() }
    }

    /// The failure for a `userQuery` that does not parse: a text that starts
    /// with a catalog word the gateway answers (`limit: …`, `bad request: …`)
    /// keeps it; any other (`type: …`, `length: …`, q-style) is a
    /// `bad request` with the whole text as detail.
    pub fn from_parse_error(text: String) -> Failure {
        let w = WireError::from_q_text(&text);
        match w.kind {
            ErrorKind::Limit => Failure::Limit(w.detail.unwrap_or_default()),
            ErrorKind::BadRequest => Failure::BadRequest(w.detail.unwrap_or_default()),
            _ => Failure::BadRequest(text),
        }
    }

    /// Reads a q error text from a peer back into a failure (for
    /// `serviceDenied` from a load balancer).
    pub fn from_q_text(text: &str) -> Failure {
        let w = WireError::from_q_text(text);
        let name = || ServiceName::new(w.detail.clone().unwrap_or_default());
        match w.kind {
            ErrorKind::Timeout => Failure::Timeout,
            ErrorKind::QueueFull => Failure::QueueFull(name()),
            ErrorKind::UnknownService => Failure::UnknownService(name()),
            ErrorKind::NoInstance => Failure::NoInstance(name()),
            ErrorKind::ServiceDisconnected => Failure::ServiceDisconnected(name()),
            ErrorKind::LbUnavailable => Failure::LbUnavailable,
            ErrorKind::Limit => Failure::Limit(w.detail.unwrap_or_default()),
            ErrorKind::BadRequest => Failure::BadRequest(w.detail.unwrap_or_default()),
            ErrorKind::ShuttingDown => Failure::ShuttingDown,
            _ => Failure::Internal(text.to_string()),
        }
    }

    /// The text of the q error (`'queue full: EQUITY`), without the quote.
    pub fn to_q_text(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_texts_follow_the_catalogue() {
        let s = ServiceName::new("EQUITY");
        assert_eq!(Failure::Timeout.to_q_text(), "timeout");
        assert_eq!(Failure::QueueFull(s.clone()).to_q_text(), "queue full: EQUITY");
        assert_eq!(Failure::UnknownService(s.clone()).to_q_text(), "unknown service: EQUITY");
        assert_eq!(Failure::NoInstance(s.clone()).to_q_text(), "no instance: EQUITY");
        assert_eq!(
            Failure::ServiceError { service: s.clone(), text: "type".into() }.to_q_text(),
            "service error: EQUITY: type"
        );
        assert_eq!(Failure::ServiceDisconnected(s).to_q_text(), "service disconnected: EQUITY");
        assert_eq!(Failure::LbUnavailable.to_q_text(), "lb unavailable");
        assert_eq!(Failure::LbUnavailable.word(), "lb unavailable");
        assert_eq!(Failure::LbUnavailable.detail(), None);
    }

    #[test]
    fn id_hasher_spreads_sequential_ids() {
        use std::hash::BuildHasher;
        let b = std::hash::BuildHasherDefault::<IdHasher>::default();
        let hashes: std::collections::HashSet<u64> = (0..10_000i64).map(|i| b.hash_one(Seq(i))).collect();
        assert_eq!(hashes.len(), 10_000);
        let low_bits: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0xff).collect();
        assert!(low_bits.len() > 200, "low bits used: {}", low_bits.len());
        let mut m: IdMap<(PeerId, Seq), u8> = IdMap::default();
        m.insert((PeerId(1), Seq(2)), 3);
        assert_eq!(m.get(&(PeerId(1), Seq(2))), Some(&3));
    }

    #[test]
    fn words_are_the_shared_catalog() {
        let s = ServiceName::new("FX");
        let all = [
            Failure::Timeout,
            Failure::QueueFull(s.clone()),
            Failure::UnknownService(s.clone()),
            Failure::NoInstance(s.clone()),
            Failure::ServiceError { service: s.clone(), text: "type".into() },
            Failure::ServiceDisconnected(s.clone()),
            Failure::LbUnavailable,
            Failure::Limit("x".into()),
            Failure::BadRequest("x".into()),
            Failure::ShuttingDown,
            Failure::Internal("x".into()),
            Failure::Access("x".into()),
        ];
        for f in all {
            assert_eq!(f.word(), f.kind().word(), "{f:?}");
            assert_eq!(f.to_wire().to_q_text(), f.to_q_text(), "{f:?}");
        }
        assert_eq!(Failure::from_q_text("queue full: FX"), Failure::QueueFull(s.clone()));
        assert_eq!(Failure::from_q_text("no instance: FX"), Failure::NoInstance(s));
    }
}
