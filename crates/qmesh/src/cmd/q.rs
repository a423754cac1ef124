//! `qmesh q HOST:PORT [EXPR]`.

use std::process::ExitCode;

use qmesh_console::{ConsoleOptions, DEFAULT_MAX_RESULT_BYTES, Session};

use super::flags::parse_bytes;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The endpoint: `host:port`, `:host:port:user:password` or `:unix://port`.
    #[arg(value_name = "HOST:PORT")]
    pub address: String,
    /// A q expression to send; without one, a `q)` prompt opens.
    #[arg(value_name = "EXPR")]
    pub expr: Option<String>,
    /// Largest result accepted, to bound memory (bytes; `512MiB`, `4GiB`: the
    /// whole message, after decompression); a larger one is not read: the
    /// connection closes (`message too large` is logged) and `qmesh q`
    /// exits 1. Default: what capability 6 can carry (1 TB), as a q client.
    #[arg(allow_negative_numbers = true, long, value_name = "BYTES", default_value_t = DEFAULT_MAX_RESULT_BYTES, value_parser = parse_bytes)]
    pub max_result_bytes: u64,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let options = ConsoleOptions { max_result_bytes: args.max_result_bytes };
    let session = Session::connect_with(&args.address, options).await?;
    let mut out = std::io::stdout();
    match args.expr {
        Some(expr) => {
            let ok = session.eval(&expr, &mut out).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        None => {
            session.repl(&mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
