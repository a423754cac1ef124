//! Sockets: TCP tuning, q's Unix domain socket (abstract on Linux), and
//! splitting a stream into an owned read half for the reader task and a
//! shared write side.

use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::error::IpcError;

/// The write side of a connected socket, used through `&self`: whichever
/// task holds the connection's write turn (see [`crate::link`]) writes
/// with non-blocking vectored writes, and the writer task waits for
/// readiness when the socket is full.
pub(crate) trait WriteSock: Send + Sync + 'static {
    /// One non-blocking `writev`; `WouldBlock` when the socket is full.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Ready when the socket may take more bytes.
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Sends FIN: the peer reads end of file after what was written.
    fn shutdown_write(&self) -> io::Result<()>;
}

/// A stream that splits into an independently owned read half and a write
/// side (no lock between them).
pub(crate) trait IntoHalves: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: WriteSock;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl IntoHalves for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl WriteSock for tokio::net::tcp::OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        tokio::net::tcp::OwnedWriteHalf::try_write_vectored(self, bufs)
    }
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_write_ready(cx)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self.as_ref()).shutdown(std::net::Shutdown::Write)
    }
}

/// TCP_NODELAY (every message goes out at once) and keepalive (a vanished
/// peer is noticed), as c.java does.
pub(crate) fn tune_tcp(s: &TcpStream) {
    if let Err(e) = s.set_nodelay(true) {
        debug!(error = %e, "could not set TCP_NODELAY");
    }
    if let Err(e) = socket2::SockRef::from(s).set_keepalive(true) {
        debug!(error = %e, "could not set SO_KEEPALIVE");
    }
}

#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(unix)]
mod unix {
    use super::*;
    use crate::address::unix_socket_name;

    pub(crate) type UnixListener = tokio::net::UnixListener;
    pub(crate) type UnixStream = tokio::net::UnixStream;

    impl IntoHalves for UnixStream {
        type Read = tokio::net::unix::OwnedReadHalf;
        type Write = tokio::net::unix::OwnedWriteHalf;
        fn into_halves(self) -> (Self::Read, Self::Write) {
            self.into_split()
        }
    }

    impl WriteSock for tokio::net::unix::OwnedWriteHalf {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            tokio::net::unix::OwnedWriteHalf::try_write_vectored(self, bufs)
        }
        fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.as_ref().poll_write_ready(cx)
        }
        fn shutdown_write(&self) -> io::Result<()> {
            socket2::SockRef::from(self.as_ref()).shutdown(std::net::Shutdown::Write)
        }
    }

    #[cfg(target_os = "linux")]
    fn socket_addr(port: u16) -> std::io::Result<std::os::unix::net::SocketAddr> {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(unix_socket_name(port).as_bytes())
    }

    #[cfg(not(target_os = "linux"))]
    fn socket_addr(port: u16) -> std::io::Result<std::os::unix::net::SocketAddr> {
        std::os::unix::net::SocketAddr::from_pathname(unix_socket_name(port))
    }

    /// Binds q's Unix socket for `port`; returns it and its name.
    pub(crate) fn bind_unix(port: u16) -> Result<(UnixListener, String), IpcError> {
        let addr = socket_addr(port)?;
        let std = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        std.set_nonblocking(true)?;
        Ok((UnixListener::from_std(std)?, unix_socket_name(port)))
    }

    pub(crate) async fn accept_unix(l: Option<&UnixListener>) -> std::io::Result<UnixStream> {
        match l {
            Some(l) => l.accept().await.map(|(s, _)| s),
            None => std::future::pending().await,
        }
    }

    /// Connects to q's Unix socket for `port`. A local connect does not
    /// wait on the network; it completes or fails at once.
    pub(crate) fn connect_unix(port: u16) -> Result<UnixStream, IpcError> {
        let addr = socket_addr(port)?;
        let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        std.set_nonblocking(true)?;
        Ok(UnixStream::from_std(std)?)
    }
}

#[cfg(not(unix))]
pub(crate) use nounix::*;

#[cfg(not(unix))]
mod nounix {
    use super::*;

    /// Unix sockets do not exist here; these types are never constructed.
    pub(crate) type UnixListener = std::convert::Infallible;
    pub(crate) type UnixStream = TcpStream;

    pub(crate) fn bind_unix(_port: u16) -> Result<(UnixListener, String), IpcError> {
        Err(IpcError::Unsupported("Unix domain sockets"))
    }

    pub(crate) async fn accept_unix(_l: Option<&UnixListener>) -> std::io::Result<UnixStream> {
        std::future::pending().await
    }

    pub(crate) fn connect_unix(_port: u16) -> Result<UnixStream, IpcError> {
        Err(IpcError::Unsupported("Unix domain sockets"))
    }
}
