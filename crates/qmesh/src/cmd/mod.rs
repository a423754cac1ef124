//! One module per subcommand: its flags and the call into its library.

pub mod discovery;
pub mod feed;
pub mod flags;
pub mod gateway;
pub mod lb;
pub mod mserve;
pub mod q;
pub mod rt;
pub mod service;
pub mod up;

use std::io::Write;

/// Prints the process shell's `<kind> listening <proto> <addr>` lines
/// ([`qmesh_process::Shell::listening_lines`]; scripts and tests read them
/// to find ports chosen with `-p 0`).
pub fn announce(lines: &[String]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()
}
