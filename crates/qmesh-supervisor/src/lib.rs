//! `qmesh up`: one command starts a whole estate.
//!
//! * [`config`] — the estate config (`[estate]`, `[[process]]` in TOML), the
//!   embedded default laid out from one base port ([`config::layout`]), the
//!   `--only` selection and the checks of names, ports and references.
//! * [`launch`] — each process's `qmesh <kind> …` command line: the
//!   supervisor knows the kinds by name and does not link their crates.
//! * [`lock`] — one `qmesh up` per process and data directory (a `flock`
//!   per process, held while the supervisor runs).
//! * [`ports`] — the free-port check before anything starts; a taken port
//!   names the process holding it.
//! * [`restart`] — the restart policy, a sans-IO state machine (exponential
//!   backoff, reset after a stable run).
//! * [`supervise`] — the loop: start in order, wait for listening lines and
//!   `/healthz`, restart the dead, stop in the reverse order.
//! * [`status`] — `qmesh status`: the estate as discovery sees it.
//!
//! It stands on the process shell only ([`qmesh_process::Shutdown`] is the
//! stop signal); the binary prints the [`supervise::Event`]s.

pub mod config;
mod http;
pub mod launch;
pub mod lock;
pub mod ports;
pub mod restart;
pub mod status;
pub mod supervise;

use std::path::PathBuf;

pub use config::{Estate, Kind, ProcessSpec};
pub use supervise::{Event, Options, run};

/// What can go wrong before or while running an estate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is not valid: what and where.
    #[error("config: {0}")]
    Config(String),
    /// A port the estate needs is taken.
    #[error("port {port} ({process}'s {what} port) is taken by {holder}")]
    PortTaken { port: u16, process: String, what: String, holder: String },
    /// A process failed while the estate was coming up.
    #[error("{name} {why}; its log {log}:\n{tail}", log = log.display())]
    StartFailed { name: String, why: String, log: PathBuf, tail: String },
    /// Another `qmesh up` runs this process on the same data directory.
    #[error("process {name}'s data directory {} is in use by another `qmesh up` ({holder})", dir.display())]
    InUse { name: String, dir: PathBuf, holder: String },
    /// A file or directory could not be used.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Discovery could not be asked.
    #[error("discovery: {0}")]
    Discovery(String),
}
