//! The registry alone, for `bench/discovery.sh`: the same library
//! `qmesh discovery` calls, without building the whole binary in release.
//!
//! ```text
//! discovery_server [--data DIR]      # prints "discovery listening ipc ADDR" and "… http ADDR"
//! ```
#![allow(clippy::print_stdout)]

use qmesh_discovery::Options;
use qmesh_process::Shutdown;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut data = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => data = args.next().map(std::path::PathBuf::from),
            other => panic!("unknown flag {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .on_thread_park(qmesh_ipc::on_thread_park)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let options =
            Options { http: Some("127.0.0.1:0".parse().expect("addr")), data, ..Options::default() };
        let shutdown = Shutdown::on_signals().expect("signals");
        let bound = qmesh_discovery::bind(options).await.expect("bind");
        println!("discovery listening ipc {}", bound.ipc_addr());
        if let Some(h) = bound.http_addr() {
            println!("discovery listening http {h}");
        }
        bound.run(shutdown).await.expect("run");
    });
}
