//! One module per subcommand: its flags and the call into its library.

pub mod discovery;
pub mod flags;
pub mod gateway;
pub mod lb;
pub mod q;
pub mod service;

use std::io::Write;
use std::net::SocketAddr;

/// Prints the `<kind> listening <proto> <addr>` lines the conventions ask
/// for (scripts and tests read them to find ports chosen with `-p 0`).
pub fn announce(kind: &str, ipc: Option<SocketAddr>, http: Option<SocketAddr>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for (proto, addr) in [("ipc", ipc), ("http", http)] {
        if let Some(addr) = addr {
            writeln!(out, "{kind} listening {proto} {addr}")?;
        }
    }
    out.flush()
}
