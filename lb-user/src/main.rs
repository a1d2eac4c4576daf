//! `lb`: the agent and the operator CLI (see `lb_user::cli`).
//!
//! Exit status: 0 success, 1 failure, 2 usage error (clap's own for bad arguments, and ours for
//! a `--vip`/`--client` that does not name a flow of the datapath).

use std::process::ExitCode;

use clap::Parser as _;
use lb_user::cli::{self, Cli, ReportError};

/// Exit status of a usage error, as clap uses for bad arguments.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(cli::escapes_allowed(std::io::IsTerminal::is_terminal(
            &std::io::stderr(),
        )))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            match error.downcast_ref::<ReportError>() {
                Some(ReportError::Usage(_)) => ExitCode::from(USAGE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
