//! The protocol's names and numbers: service names, instance addresses,
//! sequence numbers, and the bounds on them.

use std::fmt;

use bytes::Bytes;

/// Longest service name (and, at the service, table or function name)
/// accepted anywhere, in bytes: the load balancer, the gateway, the service
/// and its store all check this one bound.
///
/// 255: Linux's `NAME_MAX`. kdb+ estates name files and directories after
/// these names (a splayed table is a directory, a service's logs and
/// sym files are named for it), so a name that cannot be a file name is
/// refused at the door rather than failing later on disk. Real names are
/// tens of bytes (`EQUITY_MARKET_RDB`); the bound also keeps a hostile peer
/// from filling memory with one.
pub const MAX_NAME_BYTES: usize = 255;

/// Longest instance address (`:host:port`, `:host:port:user:password`)
/// or other text argument accepted, in bytes: a 253-byte DNS name, a port
/// and credentials fit with room to spare.
pub const MAX_ADDRESS_BYTES: usize = 1024;

/// A service name, the symbol instances register under (`EQUITY_MARKET_RDB`).
///
/// Kept as bytes: q symbols need not be UTF-8.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(Bytes);

impl ServiceName {
    pub fn new(name: impl AsRef<[u8]>) -> ServiceName {
        ServiceName(Bytes::copy_from_slice(name.as_ref()))
    }

    pub fn from_bytes(name: Bytes) -> ServiceName {
        ServiceName(name)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The name as text (lossy for non-UTF-8 symbols), for errors and logs.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{self}")
    }
}

/// An instance address exactly as the service registered it
/// (`` `:host:port `` in the whitepaper's `registerResource`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(Bytes);

impl Address {
    pub fn new(addr: impl AsRef<[u8]>) -> Address {
        Address(Bytes::copy_from_slice(addr.as_ref()))
    }

    pub fn from_bytes(addr: Bytes) -> Address {
        Address(addr)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{self}")
    }
}

/// A gateway's sequence number for one service request (one part of a client
/// request). Unique within one gateway process and never reused; a q long on
/// the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Seq(pub i64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
