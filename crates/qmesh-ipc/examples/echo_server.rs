//! An echo server (see `qmesh_ipc::echo` for what it answers), for tests and
//! benchmarks.
//!
//! ```text
//! cargo run -p qmesh-ipc --example echo_server -- [PORT] [--unix] [--compress] [-u USERS_FILE]
//! ```
//!
//! Listens on 127.0.0.1:PORT (0 or absent: a free port) and prints
//! `echo listening ipc 127.0.0.1:PORT` (and `echo listening ipc unix:///tmp/kx.PORT`
//! with `--unix`) on stdout, then serves until SIGINT/SIGTERM.

use std::net::SocketAddr;

use qmesh_ipc::echo::EchoHandler;
use qmesh_ipc::{PasswordFile, Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut port = 0u16;
    let mut config = ServerConfig::loopback();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--unix" => config.unix_port = Some(0),
            "--compress" => config.force_compression = true,
            "-u" | "--users" => {
                let file = args.next().ok_or("-u needs a file")?;
                config.authenticator = Some(std::sync::Arc::new(PasswordFile::load(file)?));
            }
            p => port = p.parse()?,
        }
    }
    config.tcp = Some(SocketAddr::from(([127, 0, 0, 1], port)));
    let server = Server::bind(config).await?;
    let addr = server.local_addr().ok_or("no tcp listener")?;
    #[allow(clippy::print_stdout)]
    {
        println!("echo listening ipc {addr}");
        if let Some(name) = server.unix_name() {
            println!("echo listening ipc unix://{name}");
        }
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    server.run(EchoHandler, shutdown).await?;
    Ok(())
}
