//! `qmesh q HOST:PORT [EXPR]`.

use std::process::ExitCode;

use qmesh_console::Session;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The endpoint: `host:port`, `:host:port:user:password` or `:unix://port`.
    #[arg(value_name = "HOST:PORT")]
    pub address: String,
    /// A q expression to send; without one, a `q)` prompt opens.
    #[arg(value_name = "EXPR")]
    pub expr: Option<String>,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    let session = Session::connect(&args.address).await?;
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
