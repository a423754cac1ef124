//! The command line of each process: the `qmesh` subcommand of its kind and
//! the flags the estate implies (ports, `--bind`, `--lb`, `--rt`,
//! `--discovery`, `--data`). Pure: tested without starting anything.
//!
//! | kind | flags |
//! |---|---|
//! | discovery | `-p --http --bind --data DIR --discovery (itself)` |
//! | rt | `--name -p --http --bind --data DIR --stream S,… --discovery` |
//! | lb | `--name -p --http --bind --discovery` |
//! | gateway | `--name -p --http --bind --lb --discovery` |
//! | service | `--name SERVICE -p --http --bind --lb --discovery`, and with `rt`: `--rt --stream --data DIR` |
//! | feed | `--name --data DIR --rt --stream --rate --discovery` (its local log under `DIR/rt`) |
//!
//! then the process's `args` as they are.

use std::path::{Path, PathBuf};

use crate::config::{Estate, Kind, ProcessSpec};

/// The directory holding the state of process `p`: its `data` key (a
/// relative path is taken under `data`), else `data/<name>`.
pub fn data_dir(data: &Path, p: &ProcessSpec) -> PathBuf {
    match &p.data {
        Some(d) => data.join(d),
        None => data.join(&p.name),
    }
}

/// The log file (stderr and stdout) of the process called `name`.
pub fn log_file(data: &Path, name: &str) -> PathBuf {
    data.join("logs").join(format!("{name}.log"))
}

/// Whether the process keeps state in its data directory.
pub fn uses_data(p: &ProcessSpec) -> bool {
    match p.kind {
        // the feed's publisher keeps its local log there (messages the node has not taken yet)
        Kind::Discovery | Kind::Rt | Kind::Feed => true,
        Kind::Service => p.rt.is_some(),
        Kind::Lb | Kind::Gateway => false,
    }
}

/// The arguments after the `qmesh` executable for process `p` of `estate`,
/// its state under `data`.
pub fn args(estate: &Estate, p: &ProcessSpec, data: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![p.kind.as_str().into()];
    let mut flag = |name: &str, value: String| {
        a.push(name.into());
        a.push(value);
    };
    match p.kind {
        Kind::Discovery => {}
        Kind::Service => flag("--name", p.service.clone().unwrap_or_else(|| p.name.clone())),
        // a feed's name is its publisher id: stable across restarts, unique in the estate
        Kind::Rt | Kind::Lb | Kind::Gateway | Kind::Feed => flag("--name", p.name.clone()),
    }
    if let Some(port) = p.port {
        flag("-p", port.to_string());
        flag("--bind", estate.estate.bind.clone());
    }
    if let Some(http) = p.http {
        flag("--http", http.to_string());
    }
    if uses_data(p) {
        flag("--data", data_dir(data, p).display().to_string());
    }
    if p.kind == Kind::Rt && !p.streams.is_empty() {
        flag("--stream", p.streams.join(","));
    }
    if let Some(lb) = p.lb.as_deref().and_then(|n| estate.address_of(n)) {
        flag("--lb", lb);
    }
    if let Some(rt) = p.rt.as_deref().and_then(|n| estate.address_of(n)) {
        flag("--rt", rt);
    }
    if let Some(stream) = &p.stream {
        flag("--stream", stream.clone());
    }
    if let Some(rate) = p.rate {
        flag("--rate", rate.to_string());
    }
    if let Some(d) = estate.discovery().and_then(|d| estate.address_of(&d.name)) {
        flag("--discovery", d);
    }
    a.extend(p.args.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(e: &Estate, name: &str) -> String {
        args(e, e.process(name).unwrap(), Path::new("/d")).join(" ")
    }

    #[test]
    fn the_default_estate_command_lines() {
        let e = Estate::default_layout(5000).unwrap();
        let d = "--discovery localhost:5001";
        assert_eq!(
            line(&e, "discovery"),
            format!(
                "discovery -p 5001 --bind 127.0.0.1 --http 5081 --data /d/discovery {d} --warn-after 5s --error-after 10s"
            )
        );
        assert_eq!(
            line(&e, "rt"),
            format!("rt --name rt -p 5003 --bind 127.0.0.1 --http 5083 --data /d/rt --stream trades {d}")
        );
        assert_eq!(line(&e, "lb"), format!("lb --name lb -p 5002 --bind 127.0.0.1 --http 5082 {d}"));
        assert_eq!(
            line(&e, "gateway"),
            format!("gateway --name gateway -p 5000 --bind 127.0.0.1 --http 5080 --lb localhost:5002 {d}")
        );
        assert_eq!(
            line(&e, "rdb2"),
            format!(
                "service --name EQUITY_MARKET_RDB -p 5005 --bind 127.0.0.1 --http 5085 --data /d/rdb2 \
                 --lb localhost:5002 --rt localhost:5003 --stream trades {d}"
            )
        );
        assert_eq!(
            line(&e, "feed"),
            format!("feed --name feed --data /d/feed --rt localhost:5003 --stream trades --rate 100 {d}")
        );
    }

    #[test]
    fn a_data_key_moves_the_state() {
        let mut e = Estate::default_layout(5000).unwrap();
        e.processes[1].data = Some("/fast/rt".into());
        e.processes[0].data = Some("reg".into());
        assert!(line(&e, "rt").contains("--data /fast/rt "));
        assert!(line(&e, "discovery").contains("--data /d/reg "));
    }

    #[test]
    fn a_service_without_a_stream_gets_no_data_dir_and_keeps_its_args() {
        let text =
            "[[process]]\nname = \"s\"\nkind = \"service\"\nport = 7\nservice = \"X\"\nargs = [\"--demo\"]\n";
        let e = Estate::parse(text).unwrap();
        assert_eq!(line(&e, "s"), "service --name X -p 7 --bind 127.0.0.1 --demo");
    }
}
